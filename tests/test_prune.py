"""Tests of prune.py: k-means against a numpy reference, hierarchical k-means + balanced sampling on heavy-tailed
blobs, water-filling, the eta draw (statistical tests with fixed seeds), determinism, edge cases, diagnostics,
and a 2-process gloo run that must equal the single-process one. CPU, tiny sizes."""

import importlib.util
import os
import subprocess
import sys
import warnings

from scipy import stats
import numpy as np
import pytest
import torch

import prune
from oceansar import config
from oceansar import kmeans
from oceansar import shards
from helpers import ENV, ROOT, curation_options, heavy_tailed_blobs, make_dataset


def test_balanced_sampling_evens_out_blobs_where_uniform_sampling_does_not():
    x, blob = heavy_tailed_blobs()
    kept, info, _ = prune.cluster_and_sample(x, 100, curation_options(levels=[20, 5], metric="l2"), 0.0,
                                             kmeans.make_generator(0, 1), labels=blob)
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
        return prune.cluster_and_sample(x, 60, curation_options(levels=[8, 3], kmeans_sample=300), -0.5,
                                        kmeans.make_generator(seed, epoch))[0]
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
    options = curation_options(levels=[20, 5])
    cpu = prune.cluster_and_sample(x, 100, options, 1.0, kmeans.make_generator(0, 1))[0]
    gpu = prune.cluster_and_sample(x.cuda(), 100, options, 1.0, kmeans.make_generator(0, 1))[0]
    assert len(gpu) == 100 and len(np.intersect1d(cpu, gpu)) >= 95


def test_curation_montages_are_bounded_and_spread(tmp_path, one_thread):
    data = shards.ShardDataset(make_dataset(tmp_path / "archive", n=40, size=16))
    pool = np.arange(len(data))
    leaf = np.arange(40) % 4
    cfg = config.defaults()
    cfg["train"].update(out=str(tmp_path), epochs=10)
    cfg["prune"].update(mode="dynamic", warmup_epochs=0, every=1)
    drawn = [e for e in range(10) if prune.curation_montage(data, pool, leaf, pool[::3], cfg, e, limit=2)]
    assert drawn == [0, 5]
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".png")) == ["curation_e0000.png",
                                                                            "curation_e0005.png"]
    cfg["prune"]["mode"] = "static"
    assert prune.curation_montage(data, pool, leaf, pool[::3], cfg, 7).endswith("curation_e0007.png")
