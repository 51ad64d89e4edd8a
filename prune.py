"""Stage 3: cluster-balanced dynamic dataset pruning (Kerdreux et al. 2025 with Vo et al. 2024), and the
offline curation CLI.

What it does (../shared/docs/METHOD.md): a curation embeds a uniform random pool P of the archive (|P| =
ceil(prune.pool_fraction * N), or prune.pool_size, never below the kept ceil(rho * N)) with the
*current* teacher backbone (CLS token / pooled features, one centre view, no augmentation), fits hierarchical
k-means on a subsample of P (oceansar/hierarchy.py, with Vo et al.'s resampling steps), assigns every pool image
to its leaf cluster, and keeps exactly ceil(rho * N) images: top-down water-filling over the hierarchy (each node
gives every child min(t, size) with t the largest cap that fits, the remainder one by one to random larger
children), then inside each leaf n images drawn without replacement with weights (d / mean d)**eta
(Gumbel-top-k): eta = 0 is uniform, eta > 0 favours atypical images, eta < 0 prototypes. Every random draw comes from a generator seeded by
(train.seed, epoch); under torchrun each rank embeds its slice of the pool, k-means sums are all-reduced, and
every rank returns the identical sorted index list. Vectorised over clusters (segment sorts); the only Python
loop is over hierarchy levels.

The policy (prune.mode none|static|dynamic, prune.warmup_epochs, prune.every) is `Pruner`: pretrain.py asks it
once per epoch for that epoch's subset, `Pruner(cfg).indices(epoch, backbone, dataset)`, and saves its
`state_dict()` in every checkpoint. One curation with a model is `curate(backbone, dataset, cfg, epoch)`; on
features alone `cluster_and_sample(features, target, options, eta, generator)`. The same curation runs from the
command line on any prepared dataset with any checkpoint:

    python prune.py configs/demo.yaml checkpoint=runs/demo/checkpoint.pt out=runs/demo/curation
    python prune.py configs/oceansar1.yaml checkpoint=runs/oceansar1/backbone.pt data=data/s1wv/archive --verify

The CLI writes, in `out` (default <train.out>/curation): indices.npy (the kept dataset indices, sorted),
assignments.npy ([2, |P|]: pool dataset index, leaf cluster), diagnostics.json (cluster sizes and entropy pool vs
kept, class histogram and top-class share, mean wind / Hs / incidence pool vs kept), clusters.png (random clusters
as rows x random members) and cluster_sizes.png (leaf sizes before and after balancing), config.yaml.
Before any work it checks that prune.checkpoint and the dataset exist and the output folder is writable (exit 2
naming the key); --verify hashes every shard first; a corrupt shard or checkpoint is one line (exit 1). In
training, every curation draws <train.out>/curation_e<NNNN>.png (random clusters x kept members), at most
MAX_CURATION_MONTAGES per run (evenly spread over a dynamic run).

Edge cases: fewer pool images than clusters reduces k (warning); duplicates are fine; non-finite features stop
with a ValueError naming how many rows; a target larger than the pool keeps the whole pool (warning); k = 1
degenerates to a uniform draw.
"""

import os

# Before torch loads OpenMP: threads that spin while idle slow a small shared CPU several-fold. A wait
# policy the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from oceansar import atomic
from oceansar import config
from oceansar import curation_plots
from oceansar import distributed
from oceansar import errors
from oceansar import hierarchy
from oceansar import kmeans
from oceansar import shards
from oceansar import streams
from oceansar import weights
from oceansar.epochs import pool_size, subset_size
from oceansar.kmeans import rank_in_segment

MAX_CURATION_MONTAGES = 4    # curation_e<NNNN>.png files a training run writes at most (evenly spread; ~3 s each)


# ----------------------------------------------------------------------------- the policy

class Pruner:
    """Which images of the archive each epoch trains on (prune.mode).

    none: a fresh uniform random subset every epoch. static: uniform for prune.warmup_epochs, then one curation
    kept to the end. dynamic: uniform in warm-up, then a re-curation every prune.every epochs with the current
    teacher's own features. Every subset has subset_size(rho, N) images, so the modes differ only in which ones.
    The state (the curated indices, the epoch they were drawn at, the leaf centroids and the diagnostics) is
    tensors and plain data, saved in every checkpoint, so a resumed run continues the same curation."""

    def __init__(self, cfg):
        self.cfg, self.p, self.state = cfg, cfg["prune"], {}

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)

    def uniform(self, epoch):
        return self.p["mode"] == "none" or epoch < self.p["warmup_epochs"]

    def curates(self, epoch):
        """Whether `epoch` starts with a curation."""
        p = self.p
        return not self.uniform(epoch) and (
            "indices" not in self.state or (p["mode"] == "dynamic" and (epoch - p["warmup_epochs"]) % p["every"] == 0))

    def indices(self, epoch, backbone, dataset):
        """(the epoch's subset as sorted int64 dataset indices, identical on every rank; the diagnostics of the
        curation it ran, or None). backbone: the teacher's, used only when this epoch curates."""
        if self.uniform(epoch):
            return uniform_subset(len(dataset), self.p["rho"], self.cfg["train"]["seed"], epoch), None
        if not self.curates(epoch):
            return self.state["indices"].numpy(), None
        indices, info, pool, clusters = curate(backbone, dataset, self.cfg, epoch)
        if distributed.is_main():
            curation_montage(dataset, pool, clusters.leaf.numpy(), indices, self.cfg, epoch)
        self.state = {"indices": torch.from_numpy(indices), "epoch": epoch, "centroids": clusters.centroids,
                      "info": info}
        return indices, info

    def curation_info(self, epoch):
        """The diagnostics of the curation drawn at `epoch`, if any (a run resumed inside it logs them again)."""
        return self.state.get("info") if self.state.get("epoch") == epoch else None


def uniform_subset(n, rho, seed, epoch):
    """A uniform random subset_size(rho, n) of range(n), sorted, from a (seed, epoch) generator."""
    rng = np.random.default_rng([seed, epoch, streams.SUBSET])
    return np.sort(rng.choice(n, size=subset_size(rho, n), replace=False)).astype(np.int64)


@dataclass
class Clusters:
    centroids: torch.Tensor   # [k, D] leaf centroids (CPU)
    leaf: torch.Tensor        # [|P|] leaf cluster of every pool position (CPU, int64)


# ----------------------------------------------------------------------------- balanced sampling

def waterfill(sizes: torch.Tensor, parent: torch.Tensor, quota: torch.Tensor, generator: torch.Generator):
    """Split each parent's quota over its children: child i gets min(t_p, size_i) with t_p the largest integer
    with sum_i min(t_p, size_i) <= quota_p (binary search, all parents at once); the remainder goes one by one
    to random children larger than t_p. Requires quota_p <= total size of p's children."""
    sizes, parent, quota = sizes.long().cpu(), parent.long().cpu(), quota.long().cpu()
    n_par = len(quota)

    def filled(t):  # sum over each parent's children of min(t_parent, size)
        return torch.zeros(n_par, dtype=torch.int64).index_add_(0, parent, torch.minimum(sizes, t[parent]))

    if bool((torch.zeros(n_par, dtype=torch.int64).index_add_(0, parent, sizes) < quota).any()):
        raise ValueError("waterfill: a quota exceeds the size of its subtree")
    lo = torch.zeros(n_par, dtype=torch.int64)
    hi = torch.zeros(n_par, dtype=torch.int64).scatter_reduce_(0, parent, sizes, "amax")
    while bool((hi > lo).any()):  # invariant: filled(lo) <= quota, answer in [lo, hi]
        mid = (lo + hi + 1) // 2
        ok = filled(mid) <= quota
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid - 1)
    give = torch.minimum(sizes, lo[parent])
    rest = quota - torch.zeros(n_par, dtype=torch.int64).index_add_(0, parent, give)
    larger = sizes > lo[parent]
    key = torch.rand(len(sizes), generator=generator, dtype=torch.float64) + (~larger).double()  # eligible first
    return give + (larger & (rank_in_segment(parent, key, n_par) < rest[parent])).long()


def _eta_keys(leaf, distance, eta, k, generator):
    """Gumbel-top-k keys: log w_i + Gumbel noise, w_i = (d_i / mean d of i's cluster)**eta."""
    u = torch.rand(len(leaf), generator=generator, dtype=torch.float64).clamp_(1e-300, 1 - 1e-16)
    gumbel = -torch.log(-torch.log(u))
    if eta == 0:
        return gumbel
    d = distance.double()
    mean = torch.zeros(k, dtype=torch.float64).index_add_(0, leaf, d) / torch.bincount(leaf, minlength=k).clamp_min(1)
    ratio = torch.where(mean[leaf] > 0, d / mean[leaf], torch.ones_like(d))  # a cluster of duplicates: uniform
    return eta * torch.log(ratio.clamp_min(1e-12)) + gumbel


def balanced_sample(leaf, distance, target: int, *, k, parents=(), eta: float = 0.0,
                    generator: torch.Generator) -> np.ndarray:
    """Sorted int64 positions of `target` pool points, balanced top-down over the hierarchy (see manual).
    leaf: leaf cluster of every pool point; distance: its distance to the leaf centroid; k: clusters per level
    (finest first); parents: Hierarchy.parents (empty for a flat clustering)."""
    leaf, distance = torch.as_tensor(leaf).long().cpu(), torch.as_tensor(distance).cpu()
    k = [int(v) for v in (k if isinstance(k, (list, tuple)) else [k])]
    if len(parents) != len(k) - 1:
        raise ValueError(f"balanced_sample: {len(k)} levels need {len(k) - 1} parent arrays, got {len(parents)}")
    if len(leaf) and (int(leaf.min()) < 0 or int(leaf.max()) >= k[0]):
        raise ValueError(f"balanced_sample: leaf labels must lie in [0, {k[0]})")
    if target < 0:
        raise ValueError(f"balanced_sample: target must be >= 0, got {target}")
    if target >= len(leaf):
        if target > len(leaf):
            warnings.warn(f"balanced_sample: target {target} exceeds the pool ({len(leaf)}); keeping the whole pool")
        return np.arange(len(leaf), dtype=np.int64)
    sizes = [torch.bincount(leaf, minlength=k[0])]
    for level, par in enumerate(parents):
        sizes.append(torch.zeros(k[level + 1], dtype=torch.int64).index_add_(0, par.long().cpu(), sizes[level]))
    quota = waterfill(sizes[-1], torch.zeros(k[-1], dtype=torch.int64), torch.tensor([target]), generator)
    for level in reversed(range(len(parents))):
        quota = waterfill(sizes[level], parents[level], quota, generator)
    rank = rank_in_segment(leaf, -_eta_keys(leaf, distance, float(eta), k[0], generator), k[0])
    return (rank < quota[leaf]).nonzero().squeeze(1).numpy().astype(np.int64)


# ----------------------------------------------------------------------------- diagnostics

def cluster_size_stats(sizes) -> dict:
    """min / median / max cluster size, entropy of the size distribution (nats) and entropy / ln(K)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    p = sizes[sizes > 0] / max(sizes.sum(), 1.0)
    entropy = float(-(p * np.log(p)).sum())
    return {"k": int(len(sizes)), "min": int(sizes.min()), "median": float(np.median(sizes)),
            "max": int(sizes.max()), "entropy": entropy,
            "entropy_norm": entropy / math.log(len(sizes)) if len(sizes) > 1 else 1.0}


def _nanmean(v):
    v = np.asarray(v, dtype=np.float64)
    ok = np.isfinite(v)
    return float(v[ok].mean()) if ok.any() else None


def diagnostics(leaf, kept, n_clusters: int, labels=None, meta=None, columns=("wind", "hs", "incidence")) -> dict:
    """Pool vs kept: leaf-cluster sizes, class histogram (labels: int, -1 unknown) and NaN-aware metadata means.
    leaf, labels and meta columns are indexed by pool position, kept holds pool positions."""
    leaf, kept = np.asarray(leaf, dtype=np.int64), np.asarray(kept, dtype=np.int64)
    out = {"n_pool": int(len(leaf)), "n_kept": int(len(kept)),
           "clusters_pool": cluster_size_stats(np.bincount(leaf, minlength=n_clusters)),
           "clusters_kept": cluster_size_stats(np.bincount(leaf[kept], minlength=n_clusters))}
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        n_cls = int(labels.max(initial=-1)) + 1
        classes = {}
        for name, lab in (("pool", labels), ("kept", labels[kept])):
            hist = np.bincount(lab[lab >= 0], minlength=n_cls)
            classes[name] = hist.tolist()
            classes[f"top_share_{name}"] = float(hist.max() / hist.sum()) if hist.sum() else None
            classes[f"unknown_{name}"] = float((lab < 0).mean()) if len(lab) else None
        out["classes"] = classes
    if meta is not None:
        out["meta"] = {col: {"pool": _nanmean(meta[col]), "kept": _nanmean(np.asarray(meta[col])[kept])}
                       for col in columns if col in meta}
    return out


# ----------------------------------------------------------------------------- one curation

def kmeans_options(p):
    """The prune.* keys that reach k-means."""
    return hierarchy.Options(levels=tuple(p["levels"]), n_iter=p["iters"], resample_steps=p["resample_steps"],
                             sample_size=p["resample_size"], sample_rule=p["resample_rule"], metric=p["metric"],
                             init=p["init"], init_sample_factor=p["init_sample_factor"],
                             fit_sample=p["kmeans_sample"], mem_bytes=p["memory_mb"] << 20)


def cluster_and_sample(features, target, options, eta, generator, labels=None, meta=None):
    """Cluster the pool hierarchically and draw `target` points balanced over the clusters.

    features: this rank's contiguous block of the pool. Returns (sorted int64 pool positions, identical on every
    rank; diagnostics dict; Clusters). labels / meta: whole-pool arrays for the diagnostics."""
    hier, leaf, distance, fitted = hierarchy.fit_and_assign(features, options, generator)
    kept = balanced_sample(leaf, distance, target, k=hier.k, parents=hier.parents, eta=eta, generator=generator)
    info = diagnostics(leaf.numpy(), kept, hier.k[0], labels, meta)
    info["levels"] = hier.k
    info["fit_points"] = fitted
    return kept, info, Clusters(hier.centroids[0].cpu(), leaf)


def embed_pool(backbone, dataset, pool, batch_size, device):
    """CLS (ViT) or pooled (ResNet) features of the images at `pool`, this rank's contiguous block of it.

    One centre view (the whole imagette, no augmentation), inference mode, bf16 autocast on CUDA only."""
    rank, world = distributed.rank_world()
    mine = np.array_split(pool, world)[rank]
    was_training = backbone.training
    backbone.eval()
    feats = []
    try:
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
            for start in tqdm(range(0, len(mine), batch_size), desc="embed pool", disable=rank != 0, leave=False):
                x = torch.from_numpy(dataset.read_batch(mine[start:start + batch_size])).to(device)
                feats.append(backbone(x).float())
    finally:
        backbone.train(was_training)
    dim = backbone.embed_dim
    return torch.cat(feats) if feats else torch.empty(0, dim, device=device)


def curate(backbone, dataset, cfg, epoch):
    """Re-curate the training set with the model's own features: embed a uniform random pool of the archive
    with `backbone`, cluster it hierarchically, draw a cluster-balanced subset_size(rho, N) subset.

    Returns (indices, diagnostics, pool, clusters): the kept dataset indices (sorted int64, identical on every
    rank), a JSON-ready diagnostics dict for the log, the pool's dataset indices and its Clusters."""
    p, n = cfg["prune"], len(dataset)
    device = next(backbone.parameters()).device
    g = kmeans.make_generator(cfg["train"]["seed"], epoch)
    size = pool_size(p, n)
    pool = np.sort(torch.randperm(n, generator=g)[:size].numpy()) if size < n else np.arange(n)
    start = time.perf_counter()
    features = embed_pool(backbone, dataset, pool, p["batch_size"], device)
    embed_s = time.perf_counter() - start
    meta = {col: dataset.meta[col][pool] for col in ("wind", "hs", "incidence") if col in dataset.meta}
    kept, info, clusters = cluster_and_sample(features, subset_size(p["rho"], n), kmeans_options(p), p["eta"], g,
                                              labels=dataset.meta["class_idx"][pool], meta=meta)
    info.update(epoch=epoch, embed_s=embed_s, cluster_s=time.perf_counter() - start - embed_s,
                pool_fraction=len(pool) / n)
    return np.sort(pool[kept]).astype(np.int64), info, pool, clusters


def curation_montage(dataset, pool, leaf, indices, cfg, epoch, limit=MAX_CURATION_MONTAGES):
    """In training (rank 0 calls it): <train.out>/curation_e<epoch>.png, the kept set of this curation by cluster.

    Every curation of a static run and at most `limit` of a dynamic one, evenly spread over the
    run and always the first. Returns the path, or None when this curation is not drawn."""
    p, t = cfg["prune"], cfg["train"]
    n_curations = len(range(p["warmup_epochs"], t["epochs"], p["every"])) if p["mode"] == "dynamic" else 1
    stride = math.ceil(n_curations / limit)
    if p["mode"] == "dynamic" and ((epoch - p["warmup_epochs"]) // p["every"]) % stride:
        return None
    kept = np.flatnonzero(np.isin(pool, indices))
    fig = curation_plots.montage(dataset, pool, leaf, kept, int(leaf.max()) + 1, [t["seed"], epoch], from_kept=True)
    fig.suptitle(f"epoch {epoch}: the curated subset ({len(indices)} images), random clusters x kept members",
                 fontsize=10)
    return atomic.save_figure(fig, os.path.join(t["out"], f"curation_e{epoch:04d}.png"), dpi=80)


def curation_line(info):
    """One line: how much a curation flattened the archive's heavy tail."""
    pool, kept = info["clusters_pool"], info["clusters_kept"]
    line = (f"curated {info['n_kept']} of {info['n_pool']} images over {pool['k']} clusters (sizes "
            f"{pool['min']}-{pool['max']} -> {kept['min']}-{kept['max']}) "
            f"in {info['embed_s'] + info['cluster_s']:.1f} s")
    classes = info.get("classes") or {}
    if classes.get("top_share_pool") is not None:
        line += f"; top-class share {classes['top_share_pool']:.0%} -> {classes['top_share_kept']:.0%}"
    return line



# ----------------------------------------------------------------------------- the offline curation CLI

def check_cli_inputs(cfg):
    """(dataset key, output folder): every input and the output folder are checked before any work."""
    p = cfg["prune"]
    data_key, out_key = "prune.data" if p["data"] else "train.data", "prune.out" if p["out"] else "train.out"
    out = p["out"] or os.path.join(cfg["train"]["out"], "curation")
    if not p["checkpoint"]:
        raise config.ConfigError("config key 'prune.checkpoint': the curation CLI needs checkpoint=<checkpoint.pt "
                                 "or backbone.pt>")
    config.check_inputs(cfg, {"prune.checkpoint": "weights", data_key: "dataset"})
    return data_key, config.check_writable(out, out_key)


def run(argv):
    """The CLI: curate config.get(cfg, data_key) with prune.checkpoint's backbone and write the outputs."""
    cfg = config.load(argv, stage="prune")
    config.show(cfg, ["prune"])
    data_key, out = check_cli_inputs(cfg)
    dataset = shards.ShardDataset(config.get(cfg, data_key), verify=cfg["prune"]["verify"])
    backbone, _, _ = weights.load_backbone(cfg["prune"]["checkpoint"], cfg)
    backbone.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    indices, info, pool, clusters = curate(backbone, dataset, cfg, epoch=0)
    leaf = clusters.leaf.numpy()
    with atomic.open_atomic(os.path.join(out, "indices.npy"), "wb") as f:
        np.save(f, indices)
    with atomic.open_atomic(os.path.join(out, "assignments.npy"), "wb") as f:
        np.save(f, np.stack([pool, leaf]))
    atomic.write_json(info, os.path.join(out, "diagnostics.json"))
    kept = np.flatnonzero(np.isin(pool, indices))
    curation_plots.cluster_pictures(dataset, pool, leaf, kept, info["clusters_pool"]["k"], out, cfg["train"]["seed"])
    config.save(cfg, out)
    print(curation_line(info))
    print(f"wrote {out}/: indices.npy ({len(indices)} of {len(dataset)}), assignments.npy, diagnostics.json, "
          f"clusters.png, cluster_sizes.png")


if __name__ == "__main__":
    errors.main(run)
