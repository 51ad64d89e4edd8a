"""Hierarchical k-means with resampling (Vo et al. 2024), the clustering half of prune.py, on kmeans.py's Lloyd.

    hier = fit_hierarchy(x_fit, [k1, k2], generator=g)      # leaves -> level-2 clusters -> ...
    hier, leaf, distance, fitted = fit_and_assign(x, Options(...), g)   # what a curation calls (prune.py)

- `fit_hierarchy`: level 1 clusters the points, level l > 1 the centroids of level l-1. Each level runs
  `resample_steps` Vo resampling steps: take `sample_size` points per cluster (the closest to the centroid,
  properly sorted by distance, or random; default half the mean cluster size), run a fresh k-means on that
  union, re-assign all points.
- `fit_and_assign`: fit on a random `Options.fit_sample` of the points, then every point to its leaf.

Distributed as kmeans.py: `x` is this rank's contiguous block of the points; level 1 is spread over the ranks,
higher levels cluster centroids every rank holds identically, and every rank ends with the same hierarchy.
"""

from dataclasses import dataclass

import torch

from .kmeans import (DEFAULT_MEM_BYTES, TUNING, KMeansResult, Tuning, all_gather_rows, assign_prepared,
                     check_features, is_distributed, kmeans_prepared, layout, owned_rows, prepare_points,
                     rank_in_segment, sum_over_ranks)


def _per_level(value, n_levels: int, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n_levels
    if len(values) != n_levels:
        raise ValueError(f"{name}: expected one value per level ({n_levels}), got {values}")
    return values


@dataclass
class Hierarchy:
    centroids: list  # per level, finest first: [k_l, d] float32
    parents: list    # parents[l][j]: cluster of level l+1 that level-l cluster j belongs to (int64, CPU)
    metric: str

    @property
    def k(self) -> list:
        return [len(c) for c in self.centroids]


def _resample_union(label, distance, k, size, rule, generator, lay):
    """Sorted global indices of `size` points per cluster: the closest to the centroid or random ones."""
    label, distance = all_gather_rows(label, lay.on).cpu(), all_gather_rows(distance, lay.on).cpu()
    key = distance.double() if rule == "closest" else torch.rand(len(label), generator=generator,
                                                                  dtype=torch.float64)
    return (rank_in_segment(label, key, k) < size).nonzero().squeeze(1)


def _kmeans_resampled(x, k, steps, size, rule, lay, **kw) -> KMeansResult:
    res = kmeans_prepared(x, k, distributed=lay.on, **kw)
    for _ in range(steps):
        k = len(res.centroids)  # may have been reduced
        take = size or max(1, round(lay.n_total / (2 * k)))  # Vo et al.: about half the mean cluster size
        union = _resample_union(res.assignments, res.distances, k, take, rule, kw["generator"], lay)
        sub = kmeans_prepared(x[owned_rows(union.to(x.device), lay, len(x))], k, distributed=lay.on, **kw)
        label, d = assign_prepared(x, sub.centroids, kw["mem_bytes"])  # every point to the new centroids
        inertia = float(sum_over_ranks(d.double().pow(2).sum().reshape(1), lay.on))
        res = KMeansResult(sub.centroids, label, d, inertia, sub.history, sub.work, sub.left)
    return res


def fit_hierarchy(x: torch.Tensor, levels, *, generator: torch.Generator, n_iter: int = 20, resample_steps=1,
                  sample_size=None, sample_rule: str = "closest", metric: str = "cosine", init: str = "kmeans++",
                  init_candidates=None, init_sample_factor=None, mem_bytes: int = DEFAULT_MEM_BYTES,
                  distributed=None, tuning: Tuning = TUNING) -> Hierarchy:
    """Hierarchical k-means with resampling (Vo et al. 2024). levels: clusters per level, finest first;
    resample_steps / sample_size: one value or one per level (sample_size None: half the mean cluster size)."""
    check_features(x, "fit_hierarchy input", distributed)
    return fit_prepared_hierarchy(prepare_points(x, metric), levels, generator=generator, n_iter=n_iter,
                          resample_steps=resample_steps, sample_size=sample_size, sample_rule=sample_rule,
                          metric=metric, init=init, init_candidates=init_candidates,
                          init_sample_factor=init_sample_factor, mem_bytes=mem_bytes,
                          distributed=distributed, tuning=tuning)


def fit_prepared_hierarchy(points, levels, *, resample_steps, sample_size, sample_rule, distributed, **kw) -> Hierarchy:
    """fit_hierarchy() on already prepared points."""
    levels = [int(k) for k in (levels if isinstance(levels, (list, tuple)) else [levels])]
    if not levels or min(levels) < 1:
        raise ValueError(f"levels must be a non-empty list of cluster counts >= 1, got {levels}")
    if sample_rule not in ("closest", "random"):
        raise ValueError(f"sample_rule must be 'closest' or 'random', got {sample_rule!r}")
    steps = _per_level(resample_steps, len(levels), "resample_steps")
    sizes = _per_level(sample_size, len(levels), "sample_size")
    on = is_distributed(distributed)
    centroids, parents = [], []
    for level, k in enumerate(levels):
        # level 1 is spread over the ranks; higher levels cluster centroids every rank holds identically
        lay = layout(len(points), points.device, on and level == 0)
        res = _kmeans_resampled(points, k, steps[level], sizes[level], sample_rule, lay, **kw)
        if level > 0:
            parents.append(res.assignments.cpu())
        centroids.append(res.centroids)
        points = res.centroids
    return Hierarchy(centroids, parents, kw["metric"])


# ----------------------------------------------------------------------------- the one entry a curation uses

@dataclass(frozen=True)
class Options:
    """How a curation clusters (prune.py builds it from the prune.* keys)."""
    levels: tuple                 # clusters per level, finest first
    n_iter: int                   # Lloyd updates per k-means
    resample_steps: int           # Vo et al. resampling steps per level
    sample_size: object           # points kept per cluster at a resampling step (None: half the mean size)
    sample_rule: str              # "closest" or "random"
    metric: str                   # "cosine" or "l2"
    init: str                     # "kmeans++" or "random"
    init_sample_factor: object    # k-means++ candidates = max(tuning.init_min_candidates, factor x k) (None: 4)
    fit_sample: object            # fit on this many random points of all ranks' rows (None: on all of them)
    mem_bytes: int = DEFAULT_MEM_BYTES
    tuning: Tuning = TUNING


def fit_and_assign(features: torch.Tensor, options: Options, generator: torch.Generator, distributed=None):
    """Fit the hierarchy on a random `options.fit_sample` of the points, assign every point to its leaf.

    features: this rank's contiguous block of the points. Returns (Hierarchy, leaf [n_total] int64, distance to
    the leaf centroid [n_total], number of points fitted), all on the CPU and identical on every rank."""
    check_features(features, "curation features", distributed)
    x = prepare_points(features, options.metric)
    lay = layout(len(x), x.device, distributed)
    fit = x
    if options.fit_sample is not None and options.fit_sample < lay.n_total:
        chosen = torch.randperm(lay.n_total, generator=generator)[:options.fit_sample].sort().values
        fit = x[owned_rows(chosen.to(x.device), lay, len(x))]
    hier = fit_prepared_hierarchy(fit, list(options.levels), generator=generator, n_iter=options.n_iter,
                                  resample_steps=options.resample_steps, sample_size=options.sample_size,
                                  sample_rule=options.sample_rule, metric=options.metric, init=options.init,
                                  init_candidates=None, init_sample_factor=options.init_sample_factor,
                                  mem_bytes=options.mem_bytes, distributed=lay.on, tuning=options.tuning)
    leaf, distance = assign_prepared(x, hier.centroids[0], options.mem_bytes)
    leaf, distance = all_gather_rows(leaf, lay.on).cpu(), all_gather_rows(distance, lay.on).cpu()
    return hier, leaf, distance, min(lay.n_total, options.fit_sample or lay.n_total)
