"""torchrun worker for tests/test_prune.py: distributed k-means and curation must equal the single-process run.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_kmeans_worker.py OUT_DIR

Every rank builds the same points, keeps its own contiguous block (blocks of unequal size on purpose), runs
`work` and writes OUT_DIR/rank<r>.npz. The test calls `work` on all the points in one process and compares.
"""

import dataclasses
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import prune  # noqa: E402
from oceansar import config  # noqa: E402
from oceansar import kmeans  # noqa: E402

SMALL_GROUPS = kmeans.Tuning(group_size=3)  # small Yinyang groups, so that the group search runs too


def make_points(n=900, d=12, seed=3):
    """Heavy-tailed blobs: a few big modes and many small ones."""
    rng = np.random.default_rng(seed)
    sizes = np.maximum(3, (n * 0.5 ** np.arange(1, 10)).astype(int))
    centres = rng.normal(0, 4, (len(sizes), d))
    x = np.concatenate([c + rng.normal(0, 1, (s, d)) for c, s in zip(centres, sizes)])
    return torch.from_numpy(x.astype(np.float32))


def block(n, world, rank):
    """Contiguous block of rank `rank`; rank r gets a share proportional to r + 1."""
    edges = np.round(n * np.cumsum([0] + [r + 1 for r in range(world)]) / sum(r + 1 for r in range(world)))
    return int(edges[rank]), int(edges[rank + 1])


def work(x_local):
    out = _work(x_local)
    # the plain blocked Lloyd after the probe steps, from a factor-sized init sample
    plain = kmeans.kmeans(x_local, 7, generator=kmeans.make_generator(12, 0), n_iter=15, metric="l2",
                          init_sample_factor=30, mem_bytes=20_000,
                          tuning=dataclasses.replace(SMALL_GROUPS, plain_above=-1.0))
    out.update(plain_centroids=plain.centroids.numpy(), plain_work=np.asarray(plain.work))
    return out


def _work(x_local):
    res = kmeans.kmeans(x_local, 7, generator=kmeans.make_generator(11, 0), n_iter=15, metric="l2",
                        init_candidates=200, mem_bytes=20_000, tuning=SMALL_GROUPS)
    options = dataclasses.replace(prune.kmeans_options({**config.defaults()["prune"], "levels": [10, 3],
                                                        "kmeans_sample": 500}), mem_bytes=20_000, tuning=SMALL_GROUPS)
    kept, info, _ = prune.cluster_and_sample(x_local, 120, options, 1.0, kmeans.make_generator(11, 1))
    return {"centroids": res.centroids.numpy(), "inertia": np.float64(res.inertia),
            "assignments": kmeans.all_gather_rows(res.assignments).numpy(), "kept": kept}


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    points = make_points()
    lo, hi = block(len(points), world, rank)
    np.savez(os.path.join(sys.argv[1], f"rank{rank}.npz"), **work(points[lo:hi]))
    dist.destroy_process_group()
