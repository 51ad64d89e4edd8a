"""Tests of prune.py: k-means against a numpy reference, hierarchical k-means + balanced sampling on heavy-tailed
blobs, water-filling, the eta draw (statistical tests with fixed seeds), determinism, edge cases, diagnostics,
and a 2-process gloo run that must equal the single-process one. CPU, tiny sizes."""

import importlib.util
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from oceansar import kmeans
import prune

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: OpenMP synchronisation would dominate (and thrash on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def heavy_tailed_blobs(sizes=(2000, 600, 200, 60, 20), d=8, seed=0, spacing=12.0):
    """Well separated Gaussian blobs (centres on orthogonal axes) with heavy-tailed sizes."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([spacing * np.eye(d)[i] + rng.normal(0, 1, (n, d)) for i, n in enumerate(sizes)])
    blob = np.repeat(np.arange(len(sizes)), sizes)
    return torch.from_numpy(x.astype(np.float32)), blob


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


# ----------------------------------------------------------------------------- k-means

@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("group_size, density, mem_bytes, plain_above", [
    (4, kmeans.FULL_PASS_DENSITY, kmeans.DEFAULT_MEM_BYTES, 2.0),  # Yinyang groups, full or group passes as chosen
    (4, 2.0, 3_000, 2.0),                                        # group passes only, chunks of a few rows
    (10**9, kmeans.FULL_PASS_DENSITY, 3_000, 2.0),                # a single group (Hamerly's bounds)
    (4, kmeans.FULL_PASS_DENSITY, 3_000, -1.0),                   # bounds dropped after the probe: plain Lloyd
])
def test_kmeans_matches_numpy_lloyd_and_inertia_never_increases(metric, group_size, density, mem_bytes, plain_above,
                                                               monkeypatch):
    monkeypatch.setattr(kmeans, "GROUP_SIZE", group_size)
    monkeypatch.setattr(kmeans, "FULL_PASS_DENSITY", density)
    monkeypatch.setattr(kmeans, "PLAIN_ABOVE", plain_above)  # 2.0: the bounds are always kept
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(0, 1, (2000, 16)).astype(np.float32))  # no structure: many moves
    init = x[torch.from_numpy(rng.choice(2000, 40, replace=False))]
    res = kmeans.kmeans(x, 40, generator=kmeans.make_generator(0), n_iter=12, metric=metric,
                       init_centroids=init, mem_bytes=mem_bytes)
    c_ref, a_ref, inertia_ref = numpy_lloyd(x.numpy(), init.numpy(), 12, metric)
    assert np.array_equal(res.assignments.numpy(), a_ref)
    np.testing.assert_allclose(res.centroids.numpy(), c_ref, atol=2e-5)
    assert res.inertia == pytest.approx(inertia_ref, rel=1e-5)
    assert res.history[-1] == pytest.approx(res.inertia, rel=1e-5)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(res.history, res.history[1:]))
    assert res.history[0] > res.history[-1] * 1.05  # it did move
    d_ref = np.sqrt(((kmeans.prepare_points(x, metric).numpy() - res.centroids.numpy()[a_ref]) ** 2).sum(1))
    np.testing.assert_allclose(res.distances.numpy(), d_ref, atol=1e-5)
    plain_steps = [w == 1.0 for w in res.work[kmeans.PROBE_ITERS + 1:]]
    assert all(plain_steps) if plain_above < 0 else not all(plain_steps)


def test_bounds_are_dropped_where_they_do_not_pay_and_kept_where_they_do():
    rng = np.random.default_rng(2)
    noise = torch.from_numpy(rng.normal(0, 1, (3000, 16)).astype(np.float32))
    res = kmeans.kmeans(noise, 60, generator=kmeans.make_generator(0), n_iter=8, metric="l2")
    assert min(res.work[1:kmeans.PROBE_ITERS + 1]) > kmeans.PLAIN_ABOVE  # measured: the bounds searched ~all
    assert all(w == 1.0 for w in res.work[kmeans.PROBE_ITERS + 1:])       # so plain Lloyd from there on
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 3, (60, 16))  # separated, but close enough that Lloyd takes a few steps
    blobs = torch.from_numpy((centres[rng.integers(0, 60, 3000)] + rng.normal(0, 1, (3000, 16))).astype(np.float32))
    res = kmeans.kmeans(blobs, 60, generator=kmeans.make_generator(0), n_iter=8, metric="l2")
    assert len(res.work) > kmeans.PROBE_ITERS + 1 and max(res.work[1:]) < kmeans.PLAIN_ABOVE  # bounds kept


def test_kmeanspp_runs_on_a_seeded_subsample_of_factor_times_k(monkeypatch):
    monkeypatch.setattr(kmeans, "INIT_MIN_CANDIDATES", 1)
    x = torch.from_numpy(np.random.default_rng(3).normal(0, 1, (3000, 8)).astype(np.float32))
    runs = [kmeans.kmeans(x, 10, generator=kmeans.make_generator(4), n_iter=0, metric="l2", init_sample_factor=f)
            for f in (5, 5, 50)]
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


# ----------------------------------------------------------------------------- hierarchy and sampling

def test_resampling_takes_the_truly_closest_points_not_the_lowest_indices():
    label = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    dist = torch.tensor([4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0])
    lay = kmeans._Layout(False, 0, 8)
    union = kmeans._resample_union(label, dist, 2, 2, "closest", kmeans.make_generator(0), lay)
    assert union.tolist() == [2, 3, 4, 5]
    rand = kmeans._resample_union(label, dist, 2, 3, "random", kmeans.make_generator(0), lay)
    assert len(rand) == 6 and (label[rand] == 0).sum() == 3


def test_balanced_sampling_evens_out_blobs_where_uniform_sampling_does_not():
    x, blob = heavy_tailed_blobs()
    kept, info, _ = prune.curate(x, 100, levels=[20, 5], generator=kmeans.make_generator(0, 1), metric="l2",
                              labels=blob)
    assert len(kept) == 100 and np.all(np.diff(kept) > 0)
    balanced = np.bincount(blob[kept], minlength=5)
    assert balanced.min() >= 15 and balanced.max() <= 25, balanced  # ideal: 20 per blob (the smallest has 20)
    uniform = prune.balanced_sample(np.zeros(len(x)), np.ones(len(x)), 100, k=[1], generator=kmeans.make_generator(0))
    uniform = np.bincount(blob[uniform], minlength=5)
    assert uniform.max() >= 50 and uniform.min() <= 3, uniform  # expected 69 and 0.7
    assert info["classes"]["kept"] == balanced.tolist() and info["classes"]["top_share_pool"] == 2000 / 2880
    assert info["levels"] == [20, 5] and info["n_kept"] == 100


def brute_force_cap(sizes, quota):
    return max(t for t in range(max(sizes) + 1) if np.minimum(sizes, t).sum() <= quota)


def test_waterfill_is_exact_capped_and_fair():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n_par = rng.integers(1, 6)
        parent = np.sort(rng.integers(0, n_par, 40))
        parent[:n_par] = np.arange(n_par)  # every parent has a child
        sizes = rng.geometric(0.05, 40) * (rng.random(40) > 0.2)  # heavy tail, some empty children
        totals = np.bincount(parent, sizes, minlength=n_par).astype(int)
        quota = np.array([rng.integers(0, t + 1) for t in totals])
        give = prune.waterfill(torch.from_numpy(sizes), torch.from_numpy(parent), torch.from_numpy(quota),
                               kmeans.make_generator(trial)).numpy()
        assert np.array_equal(np.bincount(parent, give, minlength=n_par).astype(int), quota)
        assert np.all(give >= 0) and np.all(give <= sizes)
        for p in range(n_par):
            s, g = sizes[parent == p], give[parent == p]
            t = brute_force_cap(s, quota[p])
            assert np.all((g == np.minimum(s, t)) | ((g == t + 1) & (s > t)))
    with pytest.raises(ValueError, match="exceeds"):
        prune.waterfill(torch.tensor([1, 2]), torch.tensor([0, 0]), torch.tensor([4]), kmeans.make_generator(0))


def test_hierarchical_sampling_hits_every_target_exactly():
    rng = np.random.default_rng(1)
    k = [30, 6, 2]
    parents = [torch.from_numpy(rng.integers(0, 6, 30)), torch.from_numpy(rng.integers(0, 2, 6))]
    leaf = rng.choice(30, 3000, p=rng.dirichlet(np.full(30, 0.3)))  # very uneven leaves, some empty
    dist = rng.random(3000)
    sizes = np.bincount(leaf, minlength=30)
    for target in [0, 1, 7, 500, 2999, 3000]:
        kept = prune.balanced_sample(leaf, dist, target, k=k, parents=parents, eta=0.5,
                                     generator=kmeans.make_generator(target))
        assert len(kept) == target == len(np.unique(kept))
        assert np.all(np.bincount(leaf[kept], minlength=30) <= sizes)
    with pytest.warns(UserWarning, match="exceeds the pool"):
        assert len(prune.balanced_sample(leaf, dist, 5000, k=k, parents=parents,
                                         generator=kmeans.make_generator(0))) == 3000
    with pytest.raises(ValueError, match="target"):
        prune.balanced_sample(leaf, dist, -1, k=k, parents=parents, generator=kmeans.make_generator(0))
    with pytest.raises(ValueError, match="parent arrays"):
        prune.balanced_sample(leaf, dist, 10, k=k, parents=parents[:1], generator=kmeans.make_generator(0))


def test_eta_favours_far_or_central_points_and_zero_is_uniform():
    rng = np.random.default_rng(2)
    n_pool, n_draw, repeats = 400, 40, 300
    dist = rng.exponential(1.0, n_pool)
    leaf = np.zeros(n_pool, np.int64)

    def inclusion_counts(eta):
        counts = np.zeros(n_pool)
        for epoch in range(repeats):
            kept = prune.balanced_sample(leaf, dist, n_draw, k=[1], eta=eta, generator=kmeans.make_generator(5, epoch))
            counts[kept] += 1
        return counts

    means = {eta: (inclusion_counts(eta) * dist).sum() / (n_draw * repeats) for eta in (-2.0, 2.0)}
    assert means[2.0] > 1.5 * dist.mean() and means[-2.0] < 0.5 * dist.mean(), means
    # eta = 0: each point's inclusion count is Binomial(repeats, n_draw / n_pool); the Pearson statistic is then
    # ~ (1 - p) chi2(n_pool - 1) or smaller (draws without replacement are negatively correlated), so the chi2
    # p-value is conservative. A 1e-3 threshold with a fixed seed; the same test must reject eta = 0.5.
    expected = repeats * n_draw / n_pool
    p_value = {eta: stats.chi2.sf(((inclusion_counts(eta) - expected) ** 2 / expected).sum(), n_pool - 1)
               for eta in (0.0, 0.5)}
    assert p_value[0.0] > 1e-3 and p_value[0.5] < 1e-6, p_value
    # and the mean distance of uniform draws matches the pool mean within 4 standard errors
    kept_mean = (inclusion_counts(0.0) * dist).sum() / (n_draw * repeats)
    se = dist.std() * np.sqrt((1 - n_draw / n_pool) / (n_draw * repeats))
    assert abs(kept_mean - dist.mean()) < 4 * se


def test_same_seed_same_indices_other_epoch_other_indices():
    x, _ = heavy_tailed_blobs((300, 100, 30))

    def run(seed, epoch):
        return prune.curate(x, 60, levels=[8, 3], generator=kmeans.make_generator(seed, epoch), kmeans_sample=300,
                            eta=-0.5)[0]
    first = run(4, 1)
    assert np.array_equal(first, run(4, 1))
    assert not np.array_equal(first, run(4, 2)) and not np.array_equal(first, run(5, 1))


def test_diagnostics_report_sizes_classes_and_metadata():
    leaf = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    labels = np.array([0, 0, 0, 1, 1, -1, 2, 2])
    meta = {"wind": np.array([1.0, 2, 3, 4, 5, 6, 7, np.nan]), "hs": np.full(8, np.nan)}
    info = prune.diagnostics(leaf, np.array([0, 4, 6, 7]), 4, labels=labels, meta=meta)
    assert info["clusters_pool"] == pytest.approx({"k": 4, "min": 0, "median": 2.0, "max": 4,
                                                    "entropy": 1.0397207708, "entropy_norm": 0.75})
    assert info["clusters_kept"]["max"] == 2 and info["clusters_kept"]["entropy"] == pytest.approx(1.0397207708)
    assert info["classes"]["pool"] == [3, 2, 2] and info["classes"]["top_share_pool"] == pytest.approx(3 / 7)
    assert info["classes"]["kept"] == [1, 1, 2] and info["classes"]["unknown_pool"] == pytest.approx(1 / 8)
    assert info["meta"]["wind"] == pytest.approx({"pool": 4.0, "kept": 13 / 3})
    assert info["meta"]["hs"] == {"pool": None, "kept": None} and "incidence" not in info["meta"]


# ----------------------------------------------------------------------------- devices and ranks

def load_worker():
    spec = importlib.util.spec_from_file_location("dist_kmeans_worker", os.path.join(ROOT, "tests",
                                                                                     "dist_kmeans_worker.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_gloo_ranks_equal_one_process(tmp_path):
    worker = load_worker()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "dist_kmeans_worker.py"), str(tmp_path)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single = worker.work(worker.make_points())
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    for name in ["centroids", "assignments", "kept", "inertia", "plain_centroids", "plain_work"]:
        assert np.array_equal(ranks[0][name], ranks[1][name]), name  # bitwise identical across ranks
    np.testing.assert_allclose(ranks[0]["centroids"], single["centroids"], atol=1e-5)
    np.testing.assert_allclose(ranks[0]["plain_centroids"], single["plain_centroids"], atol=1e-5)
    assert ranks[0]["plain_work"][-1] == single["plain_work"][-1] == 1.0  # both took the plain path
    assert ranks[0]["inertia"] == pytest.approx(single["inertia"], rel=1e-6)
    assert np.array_equal(ranks[0]["assignments"], single["assignments"])
    assert np.array_equal(ranks[0]["kept"], single["kept"]) and len(single["kept"]) == 120


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    # same generator stream on both devices; only float rounding (and TF32, if enabled) differs
    x, blob = heavy_tailed_blobs()
    res = [kmeans.kmeans(v, 5, generator=kmeans.make_generator(0), metric="l2") for v in (x, x.cuda())]
    np.testing.assert_allclose(res[0].centroids.numpy(), res[1].centroids.cpu().numpy(), atol=1e-2)
    cpu = prune.curate(x, 100, levels=[20, 5], generator=kmeans.make_generator(0, 1), eta=1.0)[0]
    gpu = prune.curate(x.cuda(), 100, levels=[20, 5], generator=kmeans.make_generator(0, 1), eta=1.0)[0]
    assert len(gpu) == 100 and len(np.intersect1d(cpu, gpu)) >= 95
