"""Tests of oceansar/loader.py: each rank's batches of an epoch and the background shard reader."""

import numpy as np
import pytest
import torch

from oceansar import loader
from oceansar import shards


def test_rank_batches_deal_every_index_once_and_cycle_a_short_subset():
    subset = np.arange(100, 124)
    # 2 ranks x batch 4 x 3 iterations = 24: each index exactly once over the ranks, same step count per rank.
    per_rank = [loader.rank_batches(subset, 0, 0, 3, 4, r, 2) for r in range(2)]
    assert all(p.shape == (3, 4) for p in per_rank)
    assert np.array_equal(np.sort(np.concatenate([p.ravel() for p in per_rank])), subset)
    assert not np.array_equal(loader.rank_batches(subset, 1, 0, 3, 4, 0, 2), per_rank[0])  # reshuffled per epoch
    short = loader.rank_batches(subset[:5], 0, 0, 2, 4, 0, 1)
    assert short.shape == (2, 4) and set(short.ravel()) == set(subset[:5])


def test_the_reader_yields_the_batches_from_start_and_hands_on_a_read_error(data_dir):
    ds = shards.ShardDataset(data_dir)
    batches = loader.rank_batches(np.arange(24), 0, 0, 3, 4, 0, 2)
    reader = loader.Prefetcher(ds, batches, 1, depth=2, pin=False)
    got = [reader.next() for _ in range(2)]
    reader.close()
    assert all(torch.equal(g, torch.from_numpy(ds.read_batch(i))) for g, i in zip(got, batches[1:]))
    broken = loader.Prefetcher(ds, np.array([[0, 1], [0, 10_000]]), 0, depth=2, pin=False)
    broken.next()
    with pytest.raises(shards.DataError, match="out of range"):
        broken.next()
    broken.close()
