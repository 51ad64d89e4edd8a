"""Pictures of a curation: random clusters as rows x random members, and leaf sizes before/after balancing.

prune.py draws them: <train.out>/curation_e<NNNN>.png during training, clusters.png and cluster_sizes.png from
the offline CLI.
"""

import os

import numpy as np
from matplotlib.figure import Figure

from . import atomic


def montage(dataset, pool, leaf, kept, n_clusters, seed, from_kept=False, rows=8, per_row=10):
    """A Figure of random clusters (rows) x random members (from the kept pool positions when from_kept),
    each row titled with the cluster's pool size and how many of it were kept."""
    rng = np.random.default_rng(seed)
    sizes = np.bincount(leaf, minlength=n_clusters)
    kept_sizes = np.bincount(leaf[kept], minlength=n_clusters)
    candidates = np.flatnonzero((kept_sizes if from_kept else sizes) > 0)
    chosen = np.sort(rng.choice(candidates, size=min(rows, len(candidates)), replace=False))
    fig = Figure(figsize=(1.4 * per_row, 1.5 * max(len(chosen), 1)), layout="constrained")
    axes = fig.subplots(max(len(chosen), 1), per_row, squeeze=False)
    in_kept = np.zeros(len(leaf), dtype=bool)
    in_kept[kept] = True
    for ax in axes.ravel():
        ax.axis("off")
    for r, c in enumerate(chosen):
        members = np.flatnonzero((leaf == c) & (in_kept if from_kept else True))
        pick = np.sort(rng.choice(members, size=min(per_row, len(members)), replace=False))
        images = dataset.read_batch(pool[pick], raw=True)[:, 0]
        for ax, image in zip(axes[r], images):
            lo, hi = np.percentile(image, [2, 98])
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        axes[r][0].set_title(f"cluster {c}: {sizes[c]} images, {kept_sizes[c]} kept", fontsize=8, loc="left")
    return fig


def cluster_pictures(dataset, pool, leaf, kept, n_clusters, out, seed, rows=8, per_row=10):
    """clusters.png: random clusters (rows) x random members; cluster_sizes.png: sizes before/after balancing."""
    atomic.save_figure(montage(dataset, pool, leaf, kept, n_clusters, seed, rows=rows, per_row=per_row),
                       os.path.join(out, "clusters.png"), dpi=100)
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    sizes = np.bincount(leaf, minlength=n_clusters)
    order = np.argsort(-sizes)
    ax.bar(np.arange(n_clusters), sizes[order], width=1.0, color="0.7", label="pool")
    ax.bar(np.arange(n_clusters), np.bincount(leaf[kept], minlength=n_clusters)[order], width=1.0,
           color="tab:blue", label="kept (balanced)")
    ax.set_xlabel("leaf cluster, largest first")
    ax.set_ylabel("images")
    ax.set_yscale("log")
    ax.legend()
    atomic.save_figure(fig, os.path.join(out, "cluster_sizes.png"), dpi=110)
