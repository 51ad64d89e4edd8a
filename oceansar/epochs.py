"""What an epoch is, in one place: its subset size, its iteration count and a curation's pool size.

One epoch trains on ceil(prune.rho * N) images (every pruning mode, warm-up included) in
ceil(ceil(rho * N) / global_batch) iterations, so variants with the same rho run the same schedule.
"""

import math


def subset_size(rho, n):
    """Images in one epoch's training subset: ceil(rho * N), at least 1. The 1e-9 keeps float fuzz (0.07 * 100
    = 7.000000000000001) from adding an image."""
    return min(n, max(1, math.ceil(rho * n - 1e-9)))


def iters_per_epoch(rho, n, global_batch):
    return math.ceil(subset_size(rho, n) / global_batch)


def pool_size(p, n):
    """Images embedded at one curation: prune.pool_size when set, else ceil(pool_fraction * N); never fewer than
    the kept subset (a smaller pool could not fill it), never more than N."""
    size = p["pool_size"] if p["pool_size"] is not None else math.ceil(p["pool_fraction"] * n - 1e-9)
    return int(min(n, max(size, subset_size(p["rho"], n))))
