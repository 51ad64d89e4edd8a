"""Tests of oceansar/epochs.py: one formula for the epoch subset, its iterations and a curation's pool."""

from oceansar import epochs


def test_subset_iterations_and_pool_follow_one_formula():
    # iterations per epoch: ceil(ceil(rho * N) / global_batch), the same for every pruning mode
    assert epochs.iters_per_epoch(0.25, 4096, 64) == 16 and epochs.iters_per_epoch(0.1, 1000, 64) == 2
    assert epochs.subset_size(0.1, 1000) == 100 and epochs.subset_size(1e-4, 10) == 1
    assert 0.07 * 100 == 7.000000000000001 and epochs.subset_size(0.07, 100) == 7  # float fuzz adds no image
    p = {"rho": 0.25, "pool_size": None, "pool_fraction": 0.5}
    assert epochs.pool_size(p, 1000) == 500
    assert epochs.pool_size({**p, "pool_size": 100}, 1000) == 250   # never below the kept subset
    assert epochs.pool_size({**p, "pool_size": 5000}, 1000) == 1000  # never above the archive
    assert epochs.pool_size({**p, "rho": 0.07, "pool_fraction": 0.07}, 100) == 7
