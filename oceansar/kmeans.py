"""Distributed exact k-means in torch: Lloyd with Yinyang bounds, k-means++ on a subsample (hierarchy.py stacks
it into Vo et al.'s hierarchical k-means for prune.py).

    g = make_generator(seed, epoch)                         # every random draw comes from this generator
    res = kmeans(x, k, generator=g, n_iter=20)              # centroids, labels, distances, inertia
    leaf, distance = assign(x_pool, res.centroids)          # every point to its nearest centroid

- `kmeans(x, k, ...)`: Lloyd iterations, exact (the same fixed points as plain Lloyd) but accelerated with
  Yinyang bounds (Ding et al. 2015): centroids are put in equal groups of ~Tuning.group_size (a balanced
  clustering of the centroids); each point keeps an upper bound on the distance to its centroid and one lower
  bound per group, moved by the centroid drifts after each update, and only the groups a point's bounds cannot
  exclude are searched. Where the bounds do not pay (no cluster structure: after Tuning.probe_iters bounded
  steps whose bounds each left more than Tuning.plain_above of a plain step's distance work) the remaining steps
  are plain blocked Lloyd, one distance product + argmin per chunk; `work` records each step's share, `left`
  what the bounds left. Distances are matrix products (||c||^2 - 2 x.c, fp32) in
  row chunks bounded by `mem_bytes`; per-cluster sums are accumulated in float64 and updated only for points
  that changed cluster. Init "kmeans++" (greedy k-means++ on a seeded random subsample of
  max(Tuning.init_min_candidates, init_sample_factor x k) points, or `init_candidates` of them) or "random". A
  cluster left empty is re-seeded with the point farthest from its centroid (ties broken by the generator).
  Metric "cosine" (points and centroids L2-normalised: spherical k-means, nearest = max dot) or "l2". Inertia =
  sum of squared Euclidean distances (for cosine: between unit vectors, 2 - 2 cos), float64.

Edge cases: non-finite features raise ValueError naming how many rows; fewer points than clusters reduces k
with a warning; duplicates are fine (clusters that cannot be filled stay empty, with a warning); k = 1 works.

Distributed: when torch.distributed is initialised, `kmeans` treats `x` as this rank's
contiguous block of the points (rank 0 first, so global index = rank offset + local index). Sums and counts
are all-reduced, the init draws candidates by global index with the shared generator, so every rank ends with
identical centroids, and the result does not depend on the number of ranks (up to float rounding of the sums).
Every collective is guarded by torch.distributed.is_initialized(). Randomness is drawn on the CPU, so CPU and
CUDA runs consume the generator identically.
"""


import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .distributed import all_reduce_

METRICS = ("cosine", "l2")
DEFAULT_MEM_BYTES = 512 * 2**20
# k-means++ runs on a random subsample of max(Tuning.init_min_candidates, factor * k) points: its cost is k x
# that, memory-bound, so the factor sets the init's price (the floor keeps small k from missing small modes)
INIT_SAMPLE_FACTOR = 4


@dataclass(frozen=True)
class Tuning:
    """Speed knobs of the Lloyd iterations and the init; none changes the fixed points (tests set them to reach
    every code path)."""
    group_size: int = 20            # Yinyang: centroids per group of lower bounds (blobs: 20-30 best, 12-15 +5-10 %)
    full_pass_density: float = 0.25  # above this fraction of (point, group) pairs to search, a full product is cheaper
    probe_iters: int = 1            # bounded steps measured before deciding whether the bounds pay
    plain_above: float = 0.4        # work the bounds leave (a group pass costs ~2x a plain step per unit): above, plain
    init_min_candidates: int = 4096  # the floor of the k-means++ subsample


TUNING = Tuning()


# ----------------------------------------------------------------------------- randomness and collectives

def make_generator(seed: int, epoch: int = 0) -> torch.Generator:
    """CPU generator seeded by (seed, epoch), mixed by numpy's SeedSequence so nearby pairs do not collide."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"make_generator: seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def is_distributed(flag=None) -> bool:
    """Whether to reduce over ranks: the process group is up and `flag` (None: whenever it is up) allows it."""
    on = dist.is_available() and dist.is_initialized()
    return on if flag is None else (bool(flag) and on)


def sum_over_ranks(t: torch.Tensor, on: bool) -> torch.Tensor:
    """t summed over the ranks in place when `on` (a layout's flag), else t as it is."""
    return all_reduce_(t) if on else t


def _rank_counts(n_local: int, device, on: bool) -> list:
    if not (on and dist.is_initialized()):
        return [n_local]
    mine = torch.tensor([n_local], dtype=torch.int64, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [int(c) for c in out]


def all_gather_rows(t: torch.Tensor, on=None) -> torch.Tensor:
    """Every rank's rows concatenated in rank order (row counts may differ between ranks)."""
    on = is_distributed(on)
    if not on:
        return t
    counts = _rank_counts(t.shape[0], t.device, on)
    padded = t.new_zeros((max(counts),) + tuple(t.shape[1:]))
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(out, padded)
    return torch.cat([o[:c] for o, c in zip(out, counts)])


@dataclass
class _Layout:
    """Where this rank's rows sit among all ranks' rows."""
    on: bool
    offset: int
    n_total: int


def layout(n_local: int, device, on=None) -> _Layout:
    on = is_distributed(on)
    counts = _rank_counts(n_local, device, on)
    rank = dist.get_rank() if on else 0
    return _Layout(on, sum(counts[:rank]), sum(counts))


def _rows_by_global_index(x, lay: _Layout, idx: torch.Tensor) -> torch.Tensor:
    """Rows `idx` (global indices) of the rank-concatenated matrix, on every rank: owners fill, then sum."""
    idx = idx.to(x.device)
    if not lay.on:
        return x[idx]
    out = x.new_zeros(len(idx), x.shape[1])
    own = (idx >= lay.offset) & (idx < lay.offset + len(x))
    out[own] = x[idx[own] - lay.offset]
    return sum_over_ranks(out, True)


def owned_rows(idx_sorted: torch.Tensor, lay: _Layout, n_local: int) -> torch.Tensor:
    """Local row numbers of the global indices this rank holds."""
    own = (idx_sorted >= lay.offset) & (idx_sorted < lay.offset + n_local)
    return idx_sorted[own] - lay.offset


# ----------------------------------------------------------------------------- input checks

def check_features(x: torch.Tensor, name: str = "features", on=None) -> None:
    """Raise ValueError for a non-2-D tensor or rows with NaN/inf (counted over all ranks)."""
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D [n, d] tensor, got shape {tuple(x.shape)}")
    suspect = (~torch.isfinite(x.sum(dim=1))).nonzero().squeeze(1)  # one cheap pass; then exact on those rows
    bad = (~torch.isfinite(x[suspect])).any(dim=1).sum().to(torch.int64).reshape(1)
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    both = sum_over_ranks(torch.cat([bad, n]), is_distributed(on))
    if int(both[0]):
        raise ValueError(f"{name}: {int(both[0])} of {int(both[1])} rows contain NaN/inf values; "
                         "drop or impute them before clustering")


def prepare_points(x: torch.Tensor, metric: str) -> torch.Tensor:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    x = x.float()
    return F.normalize(x, dim=1) if metric == "cosine" else x.contiguous()


# ----------------------------------------------------------------------------- distance kernels
# A chunk's score block is preallocated once and reused (a fresh block per chunk would be page-faulted in on
# every call, which costs more than the matrix product on a small machine) and sized to stay in the last-level
# cache. mem_bytes only ever lowers the chunk.
CHUNK_BYTES = 16 * 2**20


def _chunk_rows(width: int, mem_bytes: int, target: int = CHUNK_BYTES) -> int:
    return max(1, min(target, int(mem_bytes)) // (4 * (width + 8)))


def _sqrt_dist(score, xsq):
    """Euclidean distance from score = ||c||^2 - 2 x.c (the per-row constant ||x||^2 is added only here)."""
    return (score + xsq).clamp_min_(0).sqrt_()


def _nearest(x, c, rows):
    """Index of the nearest centroid of every row of x."""
    label = torch.empty(len(x), dtype=torch.int64, device=x.device)
    csq, score = (c * c).sum(1), torch.empty(min(rows, len(x)), len(c), device=x.device)
    for s in range(0, len(x), rows):
        e = min(s + rows, len(x))
        # min(dim).indices, not argmin: the same first-minimum index, but a 2.5x faster reduction kernel on CPU
        # (torch 2.13), a fifth of a plain Lloyd step at k = 1000
        label[s:e] = torch.addmm(csq, x[s:e], c.t(), alpha=-2.0, out=score[: e - s]).min(dim=1).indices
    return label


def _distance_to_own(x, idx, c, label, rows):
    """Exact ||x_i - c_label(i)|| for rows idx (None: all); the difference form stays accurate near 0."""
    n = x.shape[0] if idx is None else len(idx)
    out = torch.empty(n, device=x.device)
    xbuf, cbuf = (torch.empty(min(rows, n), x.shape[1], device=x.device) for _ in range(2))
    for s in range(0, n, rows):
        e = min(s + rows, n)
        sel = slice(s, e) if idx is None else idx[s:e]
        xb = x[sel] if idx is None else torch.index_select(x, 0, sel, out=xbuf[: e - s])
        cb = torch.index_select(c, 0, label[sel], out=cbuf[: e - s])
        out[s:e] = torch.linalg.vector_norm(cb.sub_(xb), dim=1)
    return out


def assign(x: torch.Tensor, centroids: torch.Tensor, metric: str = "cosine", mem_bytes: int = DEFAULT_MEM_BYTES):
    """Nearest centroid of every row of x (local, no collectives): (labels int64 [n], distances float32 [n])."""
    return assign_prepared(prepare_points(x, metric), centroids.to(x.device, torch.float32), mem_bytes)


def assign_prepared(x, c, mem_bytes):
    label = _nearest(x, c, _chunk_rows(len(c), mem_bytes))
    return label, _distance_to_own(x, None, c, label, _chunk_rows(x.shape[1], mem_bytes, CHUNK_BYTES // 4))


# Lloyd with Yinyang bounds. The centroids are split into groups (consecutive after a permutation); every point
# keeps an upper bound on the distance to its own centroid and, per group, a lower bound on the distance to the
# group's other centroids. After an update the bounds move by the centroid drifts. A point whose upper bound is
# below all its lower bounds keeps its cluster; otherwise only the groups whose bound it crosses are searched.

def _group_min(score, lengths):
    """Per group, the minimum of each row of score [r, k] (groups are consecutive columns; sizes S+1 then S, see
    _group_centroids): two strided views and one amin each, cheaper than a segment reduction."""
    big, size = int((lengths == lengths[0]).sum()), int(lengths[-1])
    if big == len(lengths):
        return score.unflatten(1, (big, int(lengths[0]))).amin(2)
    cut = big * int(lengths[0])
    return torch.cat([score[:, :cut].unflatten(1, (big, int(lengths[0]))).amin(2),
                      score[:, cut:].unflatten(1, (len(lengths) - big, size)).amin(2)], dim=1)


@dataclass
class _Groups:
    """Yinyang groups of the (permuted) centroids: group g is the consecutive columns starts[g]:starts[g + 1]."""
    lengths: torch.Tensor  # [G] centroids per group: S+1 for the first ones, then S
    starts: list           # [G + 1] python ints
    first: torch.Tensor    # [G] starts[:-1] as a tensor
    of: torch.Tensor       # [k] the group of every centroid

    @classmethod
    def of_lengths(cls, lengths):
        starts = [0] + torch.cumsum(lengths, 0).tolist()
        of = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
        return cls(lengths, starts, torch.tensor(starts[:-1], device=lengths.device), of)


def _full_pass(x, xsq, idx, c, csq, groups, rows):
    """Nearest centroid of rows idx (None: all), its distance, and per group the distance to the nearest other
    centroid of the group. The group minima give the nearest centroid's group; only that group's columns are
    searched again for the centroid itself and the runner-up inside it."""
    n, k, lengths = (len(x) if idx is None else len(idx)), len(c), groups.lengths
    width = int(lengths.max())
    label = torch.empty(n, dtype=torch.int64, device=x.device)
    upper, lower = torch.empty(n, device=x.device), torch.empty(n, len(lengths), device=x.device)
    score = torch.empty(min(rows, n), k, device=x.device)
    offsets = torch.arange(width, device=x.device)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        sc = torch.addmm(csq, x[s:e] if idx is None else x[idx[s:e]], c.t(), alpha=-2.0, out=score[: e - s])
        gmin = _group_min(sc, lengths)
        own = gmin.min(dim=1).indices
        cols = groups.first[own, None] + offsets  # the own group's columns (past its end: masked)
        inside = offsets < lengths[own, None]
        block = sc.gather(1, cols.clamp_max_(k - 1)).masked_fill_(~inside, math.inf)
        best, at = block.min(dim=1)  # equal distances: the lowest index, as a full argmin would give
        upper[s:e], label[s:e] = best, cols.gather(1, at[:, None]).squeeze(1)
        gmin[torch.arange(e - s, device=x.device), own] = block.scatter_(1, at[:, None], math.inf).amin(dim=1)
        lower[s:e] = gmin
    xsq = xsq if idx is None else xsq[idx]  # few large element-wise ops rather than many small ones
    return label, _sqrt_dist(upper, xsq), _sqrt_dist(lower, xsq[:, None])


def _group_pass(x, xsq, idx, need, label, upper, lower, c, csq, groups, rows):
    """Search, for the points idx, only the groups g with need[i, g]. Updates their rows of `lower` in place and
    returns their new labels and upper bounds. Work is organised as (group, point) pairs, one run per group."""
    n_groups, k, starts = need.shape[1], len(c), groups.starts
    g_of, p_of = need.t().nonzero().unbind(1)
    runs = [0] + torch.bincount(g_of, minlength=n_groups).cumsum(0).tolist()
    v1, v2 = torch.empty(len(p_of), device=x.device), torch.full((len(p_of),), math.inf, device=x.device)
    a1 = torch.empty(len(p_of), dtype=torch.int64, device=x.device)
    rows_buf = torch.empty(min(rows, max(1, len(p_of))), x.shape[1], device=x.device)
    for g in range(n_groups):  # a loop over groups of centroids (k / group_size), vectorised over points
        s, e = starts[g], starts[g + 1]
        for r in range(runs[g], runs[g + 1], rows):
            r2 = min(r + rows, runs[g + 1])
            xb = torch.index_select(x, 0, idx[p_of[r:r2]], out=rows_buf[: r2 - r])
            # [group, points] rather than [points, group]: the faster layout for a narrow product
            sc = torch.addmm(csq[s:e, None], c[s:e], xb.t(), alpha=-2.0)
            best, arg = sc.min(dim=0)  # min, mask, min: faster than topk(2) on narrow blocks
            v1[r:r2], a1[r:r2] = best, arg + s
            if e - s > 1:
                v2[r:r2] = sc.scatter_(0, arg[None], math.inf).min(dim=0).values
    # every point's best searched centroid (equal distances: the lowest index)
    best = torch.full((len(idx),), math.inf, device=x.device).scatter_reduce_(0, p_of, v1, "amin")
    best_at = torch.where(v1 == best[p_of], a1, k)
    best_at = torch.full((len(idx),), k, device=x.device).scatter_reduce_(0, p_of, best_at, "amin")
    xsq_i = xsq[idx]
    d_best = _sqrt_dist(best, xsq_i)
    closer = d_best < upper  # upper is exact here; a tie keeps the current cluster
    new_label, new_upper = torch.where(closer, best_at, label), torch.where(closer, d_best, upper)
    # a searched group's bound is its nearest centroid other than the (new) own one
    lower[idx[p_of], g_of] = _sqrt_dist(torch.where(a1 == new_label[p_of], v2, v1), xsq_i[p_of])
    moved = (new_label != label).nonzero().squeeze(1)  # the old centroid became an "other" one of its group
    at = (idx[moved], groups.of[label[moved]])
    lower[at] = torch.minimum(lower[at], upper[moved])
    return new_label, new_upper


def _balanced_owner(dist, capacity):
    """Each row of dist [k, G] to a column, column j taking exactly capacity[j] rows (sum = k), closest pairs
    first: in each round every unplaced row asks its nearest column with room, the column keeps the closest."""
    k, n_cols = dist.shape
    owner = torch.full((k,), -1, dtype=torch.int64, device=dist.device)
    room = capacity.clone()
    while (owner < 0).any():
        free = (owner < 0).nonzero().squeeze(1)
        d = dist[free].masked_fill(room[None] == 0, math.inf)
        want = d.argmin(dim=1)
        keep = rank_in_segment(want, d.gather(1, want[:, None]).squeeze(1), n_cols) < room[want]
        owner[free[keep]] = want[keep]
        room -= torch.bincount(want[keep], minlength=n_cols)
    return owner


def _group_centroids(c, generator, group_size):
    """Yinyang groups of the centroids: a few Lloyd steps on the centroids themselves, then a balanced
    assignment so that the groups hold S+1 (the first ones) or S centroids: a group pass then costs what its
    pairs say, and a full pass takes the group minima from two strided views. Returns the permutation that
    makes every group consecutive, and the group lengths."""
    k, n_groups = len(c), max(1, len(c) // group_size)
    if n_groups == 1:
        return torch.arange(k, device=c.device), torch.tensor([k], device=c.device)
    seeds = c[torch.randperm(k, generator=generator)[:n_groups].to(c.device)]
    for _ in range(5):
        owner = torch.cdist(c, seeds).argmin(dim=1)
        count = torch.bincount(owner, minlength=n_groups)[:, None]
        mean = torch.zeros_like(seeds).index_add_(0, owner, c) / count.clamp_min(1)
        seeds = torch.where(count > 0, mean, seeds)
    lengths = torch.full((n_groups,), k // n_groups, device=c.device)
    lengths[: k % n_groups] += 1
    owner = _balanced_owner(torch.cdist(c, seeds), lengths)
    return torch.argsort(owner, stable=True), lengths


# ----------------------------------------------------------------------------- k-means

@dataclass
class KMeansResult:
    centroids: torch.Tensor    # [k, d] float32 (unit rows for cosine)
    assignments: torch.Tensor  # [n_local] int64
    distances: torch.Tensor    # [n_local] float32, Euclidean distance to the assigned centroid
    inertia: float             # sum over all ranks of squared distances, float64
    history: list              # inertia after each assignment step (non-increasing)
    work: list                 # per assignment step, distance work done as a fraction of a plain Lloyd step
    left: list                 # per assignment step, the work the bounds left (what decides bounded vs plain)


def _kmeanspp(p: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ on candidate rows p (identical on every rank): each step draws 2 + ln k trials with
    probability proportional to D^2 and keeps the one that lowers the potential most."""
    m, trials = p.shape[0], 2 + int(math.log(k))
    psq = (p * p).sum(1, keepdim=True)

    def sq_dist(q):  # [m, len(q)] squared distances, float64 for the sums. Each step reads all of p once: the
        # [m, d] x [d, t] layout of F.linear streams it ~2.5x faster than [t, d] x [d, m] (measured, t = 9-11)
        return F.linear(p, q).mul_(-2.0).add_(psq).add_((q * q).sum(1)).clamp_min_(0).double()

    chosen = [int(torch.randint(m, (1,), generator=generator))]
    best = sq_dist(p[chosen])[:, 0]
    uniforms = torch.rand(k, trials, generator=generator, dtype=torch.float64).to(p.device)  # drawn at once: one op
    for step in range(1, k):
        u = uniforms[step]
        total = best.sum()
        if total > 0:
            trial = torch.searchsorted(best.cumsum(0), u * total, right=True).clamp_max_(m - 1)
        else:  # every candidate sits on a centre already (duplicates): any point will do
            trial = (u * m).long().clamp_max_(m - 1)
        after = torch.minimum(best[:, None], sq_dist(p[trial]))
        pick = int(after.sum(0).argmin())
        chosen.append(int(trial[pick]))
        best = after[:, pick].contiguous()
    return p[torch.tensor(chosen, device=p.device)].clone()


def initial_centroids(x, k, *, generator, init="kmeans++", metric="cosine", init_candidates=None,
                      init_sample_factor=None, distributed=None, tuning=TUNING) -> torch.Tensor:
    """The k starting centroids `kmeans` would use (x: this rank's rows when distributed): k-means++ on a
    seeded subsample (see kmeans) or k random points; identical on every rank."""
    x = prepare_points(x, metric)
    return _init_centroids(x, k, init, generator, layout(len(x), x.device, distributed), init_candidates,
                           init_sample_factor, tuning.init_min_candidates)


def _init_centroids(x, k, init, generator, lay, candidates, factor, min_candidates):
    if init == "random":
        return _rows_by_global_index(x, lay, torch.randperm(lay.n_total, generator=generator)[:k])
    if init != "kmeans++":
        raise ValueError(f"init must be 'kmeans++' or 'random', got {init!r}")
    if factor is not None and factor < 1:
        raise ValueError(f"init_sample_factor must be >= 1, got {factor}")
    m = min(lay.n_total, candidates or max(min_candidates, (factor or INIT_SAMPLE_FACTOR) * k))
    idx = torch.randperm(lay.n_total, generator=generator)[:m]
    return _kmeanspp(_rows_by_global_index(x, lay, idx), k, generator)


def _accumulate_(sums, x, idx, label, rows, sign=1.0):
    """sums[label[j]] += sign * x[idx[j]] in float64, chunk by chunk."""
    for s in range(0, len(idx), rows):
        sums.index_add_(0, label[s:s + rows], x[idx[s:s + rows]].double(), alpha=sign)


def _full_sums(x, label, k, rows):
    # float64 index_add_ is ~10x slower than float32 on CPU: sum each chunk in float32 (a few rows per cluster)
    # and accumulate the chunk partials in float64.
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    part = torch.empty(k, x.shape[1], device=x.device)
    for s in range(0, x.shape[0], rows):
        sums += part.zero_().index_add_(0, label[s:s + rows], x[s:s + rows])
    return sums


def _update_centroids(sums, counts, c, metric):
    """Mean (l2) or normalised sum (cosine) of each cluster; clusters with nothing to average keep theirs."""
    new = sums / counts.clamp_min(1)[:, None].double() if metric == "l2" else F.normalize(sums, dim=1)
    keep = (counts == 0) if metric == "l2" else (sums.norm(dim=1) == 0)
    return torch.where(keep[:, None], c, new.float())


def _farthest_first(far, tie, m):
    """Positions of the m largest `far`, equal distances ordered by the random `tie` (lexicographic sort)."""
    order = torch.argsort(tie, descending=True, stable=True)
    order = order[torch.argsort(far[order], descending=True, stable=True)]
    return order[:m]


def _reseed_empty(x, c, label, empty, generator, lay, rows):
    """Move each empty cluster onto one of the points farthest from their centroid (ties: random order).
    Returns the new centroids and every local point's exact distance to its centroid (which did not move)."""
    far = _distance_to_own(x, None, c, label, rows)
    tie = torch.rand(lay.n_total, generator=generator, dtype=torch.float64)[lay.offset: lay.offset + len(x)]
    tie = tie.to(x.device)
    top = _farthest_first(far, tie, len(empty))  # this rank's candidates, then the global choice among them
    cand_far, cand_tie = all_gather_rows(far[top], lay.on), all_gather_rows(tie[top], lay.on)
    cand_idx = all_gather_rows(top + lay.offset, lay.on)
    pick = _farthest_first(cand_far, cand_tie, len(empty))
    pick = pick[cand_far[pick] > 0]  # a point sitting on its centroid cannot help
    c = c.clone()
    c[empty[: len(pick)]] = _rows_by_global_index(x, lay, cand_idx[pick])
    return c, far


def _bounded_step(x, xsq, label, upper, lower, c, csq, groups, rows_k, rows_d, full_pass_density):
    """One Yinyang assignment step. Updates upper/lower in place; returns (searched rows, their new labels,
    the work done and the work the bounds left, in units of full rows: a group pass costs its (point, group)
    pairs / number of groups, exact up to the S vs S+1 group sizes; a full pass, chosen when the pairs are
    dense, costs its rows)."""
    bound = lower.min(dim=1).values
    active = (upper > bound).nonzero().squeeze(1)
    upper[active] = _distance_to_own(x, active, c, label, rows_d)  # tighten: one row, not k
    active = active[upper[active] > bound[active]]
    need = lower[active] < upper[active, None]
    pairs = int(need.sum())
    left = pairs / len(groups.lengths)
    if len(active) and pairs > full_pass_density * need.numel():
        new, upper[active], lower[active] = _full_pass(x, xsq, active, c, csq, groups, rows_k)
        return active, new, len(active), left
    new, upper[active] = _group_pass(x, xsq, active, need, label[active], upper[active], lower, c, csq, groups,
                                     rows_d)
    return active, new, left, left


def _lloyd(x, c, n_iter, metric, generator, lay, mem_bytes, tuning):
    """Lloyd iterations, bounded (Yinyang) while the bounds pay, plain blocked Lloyd once they do not: after
    tuning.probe_iters bounded steps whose bounds left more than tuning.plain_above of the full work, the remaining
    steps are one distance product + argmin per chunk (the decision uses all-reduced counts: every rank takes it)."""
    n, k, d = x.shape[0], c.shape[0], x.shape[1]
    rows_k, rows_d = _chunk_rows(k, mem_bytes), _chunk_rows(d, mem_bytes, CHUNK_BYTES // 4)
    perm, lengths = _group_centroids(c, generator, tuning.group_size)
    c, groups = c[perm], _Groups.of_lengths(lengths)
    xsq = (x * x).sum(1)
    total_sq = float(sum_over_ranks(xsq.double().sum().reshape(1), lay.on))
    history, work, left, bounded = [], [], [], True
    for it in range(n_iter + 1):
        csq = (c * c).sum(1)
        if it == 0:
            label, upper, lower = _full_pass(x, xsq, None, c, csq, groups, rows_k)
            local_sums, local_counts = _full_sums(x, label, k, rows_d), torch.bincount(label, minlength=k)
            moved = done = needed = n
        else:
            if bounded:
                active, new, done, needed = _bounded_step(x, xsq, label, upper, lower, c, csq, groups, rows_k, rows_d,
                                                  tuning.full_pass_density)
            else:
                active, new, done = torch.arange(n, device=x.device), _nearest(x, c, rows_k), n
                needed = n
            moved = _move_(local_sums, local_counts, x, label, active, new, rows_d)
        sums = sum_over_ranks(local_sums.clone(), lay.on)
        counts = sum_over_ranks(local_counts.clone(), lay.on)
        moved, done, needed = sum_over_ranks(torch.tensor([moved, done, needed], dtype=torch.float64, device=x.device),
                                           lay.on).tolist()
        work.append(done / lay.n_total)
        left.append(needed / lay.n_total)
        # sum_i ||x_i - c_a(i)||^2 = sum ||x||^2 - 2 sum_j c_j.S_j + sum_j n_j ||c_j||^2, exact from the sums
        cross, own = float((c.double() * sums).sum()), float((counts * csq.double()).sum())
        history.append(max(0.0, total_sq - 2 * cross + own))
        if it == n_iter or (it > 0 and moved == 0):
            break
        if it == tuning.probe_iters and min(left[1:]) > tuning.plain_above:
            bounded = False  # the bounds cost more than they save: plain Lloyd from here on
        new_c = _update_centroids(sums, counts, c, metric)
        empty = (counts == 0).nonzero().squeeze(1)
        reseed = len(empty) > 0 and lay.n_total > k
        if reseed:  # the exact distances it computes are the new upper bounds
            new_c, exact = _reseed_empty(x, new_c, label, empty, generator, lay, rows_d)
        if bounded:
            drift = (new_c - c).norm(dim=1)
            upper = exact if reseed else upper.add_(drift[label])
            lower -= torch.segment_reduce(drift, "max", lengths=lengths)[None]
        c = new_c
    inverse = torch.argsort(perm)
    return c[inverse], perm[label], history, (work, left), int((counts == 0).sum())


def _move_(sums, counts, x, label, active, new, rows):
    """Relabel the points `active` to `new`; only points that changed cluster change the sums and counts."""
    old = label[active]
    label[active] = new
    changed = new != old
    idx, src, dst = active[changed], old[changed], new[changed]
    _accumulate_(sums, x, idx, dst, rows, 1.0)
    _accumulate_(sums, x, idx, src, rows, -1.0)
    counts += torch.bincount(dst, minlength=len(counts)) - torch.bincount(src, minlength=len(counts))
    return len(idx)


def kmeans(x: torch.Tensor, k: int, *, generator: torch.Generator, n_iter: int = 20, metric: str = "cosine",
           init: str = "kmeans++", init_centroids=None, init_candidates=None, init_sample_factor=None,
           mem_bytes: int = DEFAULT_MEM_BYTES, distributed=None, tuning: Tuning = TUNING) -> KMeansResult:
    """Lloyd's k-means of the rows of x [n, d] (this rank's rows when distributed; see the module manual).
    n_iter: centroid updates (then one last assignment, so the labels match the centroids; stops early when no
    point moves); init_centroids [k, d] overrides `init`; init_candidates: k-means++ candidate count (default
    max(tuning.init_min_candidates, init_sample_factor k), factor default INIT_SAMPLE_FACTOR); mem_bytes: bound
    of a distance chunk; distributed: None = when initialised; tuning: speed knobs (Tuning)."""
    check_features(x, "kmeans input", distributed)
    return kmeans_prepared(prepare_points(x, metric), k, generator=generator, n_iter=n_iter, metric=metric, init=init,
                   init_centroids=init_centroids, init_candidates=init_candidates,
                   init_sample_factor=init_sample_factor, mem_bytes=mem_bytes,
                   distributed=distributed, tuning=tuning)


def kmeans_prepared(x, k, *, generator, n_iter=20, metric="cosine", init="kmeans++", init_centroids=None,
            init_candidates=None, init_sample_factor=None, mem_bytes=DEFAULT_MEM_BYTES,
            distributed=None, tuning=TUNING) -> KMeansResult:
    """kmeans() on already prepared (float32, normalised for cosine) points."""
    if k < 1 or n_iter < 0:
        raise ValueError(f"kmeans: need k >= 1 and n_iter >= 0, got k={k}, n_iter={n_iter}")
    lay = layout(x.shape[0], x.device, distributed)
    if lay.n_total == 0:
        raise ValueError("kmeans: no points to cluster")
    if lay.n_total < k:
        warnings.warn(f"kmeans: {lay.n_total} points for k={k} clusters; reducing k to {lay.n_total}")
        k = lay.n_total
    if init_centroids is not None:
        c = prepare_points(init_centroids.to(x.device), metric)
        if c.shape != (k, x.shape[1]):
            raise ValueError(f"kmeans: init_centroids has shape {tuple(c.shape)}, expected {(k, x.shape[1])}")
    else:
        c = _init_centroids(x, k, init, generator, lay, init_candidates, init_sample_factor,
                            tuning.init_min_candidates)
    c, label, history, (work, left), n_empty = _lloyd(x, c, n_iter, metric, generator, lay, mem_bytes, tuning)
    if n_empty:
        warnings.warn(f"kmeans: {n_empty} of {k} clusters stayed empty (duplicate points?)")
    d = _distance_to_own(x, None, c, label, _chunk_rows(x.shape[1], mem_bytes))
    inertia = float(sum_over_ranks(d.double().pow(2).sum().reshape(1), lay.on))
    return KMeansResult(c, label, d, inertia, history, work, left)


# ----------------------------------------------------------------------------- segment helpers

def rank_in_segment(segment: torch.Tensor, key: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Rank of every element inside its segment when the segment is ordered by ascending key (ties: position).
    Two stable sorts give the (segment, key) order; the rank is the position minus the segment's start."""
    order = torch.argsort(key, stable=True)
    order = order[torch.argsort(segment[order], stable=True)]
    counts = torch.bincount(segment, minlength=n_segments)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device) - start[segment[order]]
    return rank
