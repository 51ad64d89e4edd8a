"""Tests of oceansar/kmeans.py against a numpy Lloyd reference: fixed points, the bounds switch, k-means++ on a
subsample, balanced Yinyang groups, edge cases, empty-cluster reseeding, and a smoke run of
benchmarks/bench_kmeans.py. CPU, tiny sizes."""


import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from oceansar import kmeans
from helpers import ENV, ROOT, heavy_tailed_blobs

pytestmark = pytest.mark.usefixtures("one_thread")


def numpy_lloyd(x, c, n_iter, metric):
    """Plain Lloyd in float64, one assignment after the last update (the kmeans() convention)."""
    x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
    for it in range(n_iter + 1):
        d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        a = d2.argmin(1)
        inertia = d2[np.arange(len(x)), a].sum()
        if it == n_iter:
            return c, a, inertia
        for j in range(len(c)):
            if (a == j).any():
                s = x[a == j].sum(0)
                c[j] = s / (a == j).sum() if metric == "l2" else s / np.linalg.norm(s)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("group_size, density, mem_bytes, plain_above", [
    (4, kmeans.TUNING.full_pass_density, kmeans.DEFAULT_MEM_BYTES, 2.0),  # Yinyang groups, full or group passes
    (4, 2.0, 3_000, 2.0),                                                # group passes only, chunks of a few rows
    (10**9, kmeans.TUNING.full_pass_density, 3_000, 2.0),                # a single group (Hamerly's bounds)
    (4, kmeans.TUNING.full_pass_density, 3_000, -1.0),                   # bounds dropped after the probe: plain Lloyd
])
def test_kmeans_matches_numpy_lloyd_and_inertia_never_increases(metric, group_size, density, mem_bytes, plain_above):
    # plain_above 2.0: the bounds are always kept
    tuning = kmeans.Tuning(group_size=group_size, full_pass_density=density, plain_above=plain_above)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(0, 1, (2000, 16)).astype(np.float32))  # no structure: many moves
    init = x[torch.from_numpy(rng.choice(2000, 40, replace=False))]
    res = kmeans.kmeans(x, 40, generator=kmeans.make_generator(0), n_iter=12, metric=metric,
                       init_centroids=init, mem_bytes=mem_bytes, tuning=tuning)
    c_ref, a_ref, inertia_ref = numpy_lloyd(x.numpy(), init.numpy(), 12, metric)
    assert np.array_equal(res.assignments.numpy(), a_ref)
    np.testing.assert_allclose(res.centroids.numpy(), c_ref, atol=2e-5)
    assert res.inertia == pytest.approx(inertia_ref, rel=1e-5)
    assert res.history[-1] == pytest.approx(res.inertia, rel=1e-5)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(res.history, res.history[1:]))
    assert res.history[0] > res.history[-1] * 1.05  # it did move
    d_ref = np.sqrt(((kmeans.prepare_points(x, metric).numpy() - res.centroids.numpy()[a_ref]) ** 2).sum(1))
    np.testing.assert_allclose(res.distances.numpy(), d_ref, atol=1e-5)
    plain_steps = [w == 1.0 for w in res.work[tuning.probe_iters + 1:]]
    assert all(plain_steps) if plain_above < 0 else not all(plain_steps)


def test_bounds_are_dropped_where_they_do_not_pay_and_kept_where_they_do():
    rng = np.random.default_rng(2)
    noise = torch.from_numpy(rng.normal(0, 1, (3000, 16)).astype(np.float32))
    probe, above = kmeans.TUNING.probe_iters, kmeans.TUNING.plain_above
    res = kmeans.kmeans(noise, 60, generator=kmeans.make_generator(0), n_iter=8, metric="l2")
    assert min(res.work[1:probe + 1]) > above                 # measured: the bounds searched ~all
    assert all(w == 1.0 for w in res.work[probe + 1:])        # so plain Lloyd from there on
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 3, (60, 16))  # separated, but close enough that Lloyd takes a few steps
    blobs = torch.from_numpy((centres[rng.integers(0, 60, 3000)] + rng.normal(0, 1, (3000, 16))).astype(np.float32))
    res = kmeans.kmeans(blobs, 60, generator=kmeans.make_generator(0), n_iter=8, metric="l2")
    assert len(res.work) > probe + 1 and max(res.work[1:]) < above  # bounds kept


def test_kmeanspp_runs_on_a_seeded_subsample_of_factor_times_k():
    tuning = kmeans.Tuning(init_min_candidates=1)
    x = torch.from_numpy(np.random.default_rng(3).normal(0, 1, (3000, 8)).astype(np.float32))
    runs = [kmeans.kmeans(x, 10, generator=kmeans.make_generator(4), n_iter=0, metric="l2", init_sample_factor=f,
                          tuning=tuning) for f in (5, 5, 50)]
    assert torch.equal(runs[0].centroids, runs[1].centroids)  # same seed, same centroids
    sample = x[torch.randperm(3000, generator=kmeans.make_generator(4))[:50]]  # the init's first draw
    assert all(bool((sample == c).all(dim=1).any()) for c in runs[0].centroids)
    assert not torch.equal(runs[0].centroids, runs[2].centroids)
    with pytest.raises(ValueError, match="init_sample_factor"):
        kmeans.kmeans(x, 10, generator=kmeans.make_generator(4), init_sample_factor=0)


def test_kmeans_plus_plus_finds_separated_blobs_and_k1_is_the_mean():
    # far enough apart that merging two small blobs costs more than splitting the big one
    x, blob = heavy_tailed_blobs(spacing=40.0)
    res = kmeans.kmeans(x, 5, generator=kmeans.make_generator(0), metric="l2")
    confusion = np.zeros((5, 5), int)
    np.add.at(confusion, (blob, res.assignments.numpy()), 1)
    assert (confusion > 0).sum() == 5  # every blob is exactly one cluster
    one = kmeans.kmeans(x, 1, generator=kmeans.make_generator(0), metric="l2")
    np.testing.assert_allclose(one.centroids[0].numpy(), x.double().mean(0).numpy(), atol=1e-4)
    assert one.assignments.max() == 0 and len(one.history) == 2  # converged after one update


def test_kmeans_edge_cases_have_defined_behaviour():
    x, _ = heavy_tailed_blobs((30, 30))
    bad = x.clone()
    bad[3, 1], bad[7, 0] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="2 of 60 rows"):
        kmeans.kmeans(bad, 3, generator=kmeans.make_generator(0))
    with pytest.raises(ValueError, match="metric"):
        kmeans.kmeans(x, 3, generator=kmeans.make_generator(0), metric="manhattan")
    with pytest.warns(UserWarning, match="reducing k to 4"):
        few = kmeans.kmeans(x[:4], 6, generator=kmeans.make_generator(0))
    assert few.centroids.shape == (4, 8) and few.inertia == pytest.approx(0, abs=1e-9)
    dup = x[torch.tensor([0, 40] * 50)]  # 100 rows, 2 distinct points, 5 clusters
    for init in ["kmeans++", "random"]:
        with pytest.warns(UserWarning, match="stayed empty"):
            res = kmeans.kmeans(dup, 5, generator=kmeans.make_generator(0), init=init, metric="l2")
        assert res.inertia == pytest.approx(0, abs=1e-8) and torch.isfinite(res.centroids).all()


def test_empty_cluster_is_reseeded_with_the_farthest_point():
    x = torch.tensor([[0.0, 0], [0.1, 0], [0.2, 0], [10, 0], [10.1, 0], [30, 0]])
    init = torch.tensor([[0.0, 0], [10.05, 0], [-50, 0]])  # the third centre attracts nothing
    res = kmeans.kmeans(x, 3, generator=kmeans.make_generator(0), metric="l2", init_centroids=init, n_iter=5)
    # after the first update the farthest point (30, from centroid 10.05) takes the empty cluster
    np.testing.assert_allclose(sorted(res.centroids[:, 0].tolist()), [0.1, 10.05, 30.0], atol=1e-5)
    assert res.inertia == pytest.approx(2 * 0.01 + 2 * 0.0025, rel=1e-4)


def test_yinyang_groups_are_balanced_and_hold_every_centroid_once():
    c = torch.from_numpy(np.random.default_rng(6).normal(0, 1, (103, 8)).astype(np.float32))
    c[:60] += 8.0  # one dense region: an unbalanced clustering of the centroids would give it few large groups
    perm, lengths = kmeans._group_centroids(c, kmeans.make_generator(0), 10)
    assert sorted(perm.tolist()) == list(range(103))
    assert lengths.tolist() == [11, 11, 11] + [10] * 7  # S+1 first, then S; sums to k
    dist = torch.cdist(c, c[:7])
    owner = kmeans._balanced_owner(dist, torch.tensor([20, 20, 20, 20, 10, 10, 3]))
    assert torch.bincount(owner, minlength=7).tolist() == [20, 20, 20, 20, 10, 10, 3]
    assert owner[:7].tolist() == list(range(7))  # a column's own point is its closest: always kept


def test_group_minima_from_strided_views_equal_a_segment_reduction():
    score = torch.from_numpy(np.random.default_rng(7).normal(0, 1, (5, 23)).astype(np.float32))
    for lengths in ([8, 8, 7], [12, 11], [23]):
        lengths = torch.tensor(lengths)
        ref = torch.segment_reduce(score, "min", lengths=lengths.expand(5, -1), axis=1)
        assert torch.equal(kmeans._group_min(score, lengths), ref)


def test_benchmark_runs_at_toy_size():
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_kmeans.py"), "--n", "1500", "800", "--k", "12",
           "--iters", "3", "--factors", "4", "--only-ours"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "init kmeans++ x4" in done.stdout and "then Lloyd" in done.stdout and "our Lloyd time" in done.stdout
