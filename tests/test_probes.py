"""Tests of oceansar/probes.py against independent references (numpy, brute force, by hand), the split helpers and
the in-training kNN monitor."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oceansar import model as models
from oceansar import physics
from oceansar import probes
from oceansar import shards
from helpers import gaussian_classes, write_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


def test_logistic_separable_classes_are_learnt():
    g = torch.Generator().manual_seed(0)
    X, y = gaussian_classes(900, 16, 4, 4.0, g)
    probe = probes.fit_logistic(X[:500], y[:500], X[500:600], y[500:600], 4)
    assert (probe.predict(X[600:]) == y[600:]).float().mean() >= 0.99
    proba = probe.predict_proba(X[600:])
    assert proba.shape == (300, 4) and torch.allclose(proba.sum(1), torch.ones(300))
    assert probe.lam in probe.grid and len(probe.val_accuracy) == len(probes.LOGISTIC_GRID)


def test_logistic_on_noise_is_at_chance():
    # labels independent of the features: test accuracy ~ Binomial(n, 1/C) / n whatever the classifier does,
    # so 4 standard deviations of that binomial is a tolerance that fails by chance with probability < 1e-4
    g = torch.Generator().manual_seed(1)
    n_test, C = 2000, 4
    X = torch.randn(1300 + n_test, 20, generator=g)
    y = torch.randint(0, C, (1300 + n_test,), generator=g)
    probe = probes.fit_logistic(X[:1000], y[:1000], X[1000:1300], y[1000:1300], C)
    acc = (probe.predict(X[1300:]) == y[1300:]).float().mean().item()
    assert abs(acc - 1 / C) <= 4 * math.sqrt((1 / C) * (1 - 1 / C) / n_test)


def test_logistic_returns_the_regularised_optimum_of_the_chosen_lambda():
    # the solver works in a rotated, preconditioned space with a hand-written gradient: check with autograd,
    # in the original standardised coordinates, that the returned weights are a stationary point
    g = torch.Generator().manual_seed(2)
    X, y = gaussian_classes(700, 12, 3, 0.6, g)
    probe = probes.fit_logistic(X[:500], y[:500], X[500:], y[500:], 3, grid=[1e-1, 1e-2, 1e-3], tol=1e-7,
                                  max_iter=500)
    Xs = (X[:500] - X[:500].mean(0)) / X[:500].std(0, unbiased=False)
    W = probe.weight.clone().requires_grad_(True)
    b = probe.bias.clone().requires_grad_(True)
    loss = F.cross_entropy(Xs @ W + b, y[:500]) + 0.5 * probe.lam * W.pow(2).sum()
    loss.backward()
    assert W.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4
    # the chosen λ is the best on validation, and that score is what the returned model achieves there
    val_acc = (probe.predict(X[500:]) == y[500:]).float().mean().item()
    assert val_acc == pytest.approx(max(probe.val_accuracy), abs=1e-6)
    assert probe.val_accuracy[probe.grid.index(probe.lam)] == max(probe.val_accuracy)


def test_logistic_drops_unknown_labels_and_refits_on_train_val():
    g = torch.Generator().manual_seed(3)
    X, y = gaussian_classes(600, 8, 3, 1.0, g)
    y_unknown = y.clone()
    y_unknown[::7] = -1
    keep = y_unknown >= 0
    a = probes.fit_logistic(X[:400], y_unknown[:400], X[400:], y[400:], 3, grid=[1e-2, 1e-3])
    b = probes.fit_logistic(X[:400][keep[:400]], y[:400][keep[:400]], X[400:], y[400:], 3, grid=[1e-2, 1e-3])
    assert torch.allclose(a.weight, b.weight, atol=1e-5)
    c = probes.fit_logistic(X[:400], y[:400], X[400:], y[400:], 3, grid=[1e-2, 1e-3], refit="train+val")
    assert not torch.allclose(c.weight, probes.fit_logistic(X[:400], y[:400], X[400:], y[400:], 3,
                                                              grid=[1e-2, 1e-3]).weight, atol=1e-3)


def numpy_ridge(X, Y, lam, Xq):
    """Reference: standardise with train stats, centre Y, solve the augmented least-squares system
    [X; sqrt(n·λ)·I] W = [Yc; 0] (the minimiser of (1/2n)‖Yc − XW‖² + (λ/2)‖W‖²) with numpy lstsq."""
    X, Y, Xq = (np.asarray(a, dtype=np.float64) for a in (X, Y, Xq))
    mean, std = X.mean(0), X.std(0)
    Xs = (X - mean) / std
    n, d = Xs.shape
    A = np.vstack([Xs, math.sqrt(n * lam) * np.eye(d)])
    B = np.vstack([Y - Y.mean(0), np.zeros((d, Y.shape[1]))])
    W = np.linalg.lstsq(A, B, rcond=None)[0]
    return ((Xq - mean) / std) @ W + Y.mean(0)


def test_ridge_equals_numpy_least_squares_with_per_output_lambda():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(160, 10)) * rng.uniform(0.5, 3, 10) + 2
    W_true = rng.normal(size=(10, 2)) * np.array([1.0, 0.05])
    Y = X @ W_true + rng.normal(size=(160, 2)) * np.array([0.1, 3.0])    # one easy, one mostly noise
    grid = [10.0, 1.0, 0.1, 0.01, 1e-4]
    tr, va = slice(0, 100), slice(100, 160)
    probe = probes.fit_ridge(torch.tensor(X[tr]), torch.tensor(Y[tr]), torch.tensor(X[va]),
                               torch.tensor(Y[va]), grid=grid)
    for j in range(2):                                   # λ = argmin over the grid of the reference's val MSE
        mse = [np.mean((numpy_ridge(X[tr], Y[tr, j:j + 1], lam, X[va])[:, 0] - Y[va, j]) ** 2) for lam in grid]
        assert probe.lam[j].item() == grid[int(np.argmin(mse))]
        ref = numpy_ridge(X[tr], Y[tr, j:j + 1], probe.lam[j].item(), X)[:, 0]
        assert np.allclose(probe.predict(torch.tensor(X))[:, j].numpy(), ref, atol=1e-4)
    assert probe.lam[0] < probe.lam[1]                    # the noisy target wants more shrinkage


def test_ridge_one_dimensional_target_with_nans_and_train_val_refit():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(120, 6))
    y = X @ rng.normal(size=6) + 0.5 * rng.normal(size=120)
    y_nan = y.copy()
    y_nan[::5] = np.nan
    keep = np.isfinite(y_nan)
    probe = probes.fit_ridge(X[:80], y_nan[:80], X[80:], y[80:], grid=[1.0, 0.1], refit="train+val")
    lam = probe.lam.item()
    rows = np.concatenate([np.flatnonzero(keep[:80]), np.arange(80, 120)])
    Xtv = np.concatenate([X[:80], X[80:]])[rows]
    # train+val refit keeps the train standardisation: fold it into the reference by standardising first
    mean, std = X[:80][keep[:80]].mean(0), X[:80][keep[:80]].std(0)
    Xs = (Xtv - mean) / std
    n, d = Xs.shape
    A = np.vstack([Xs, math.sqrt(n * lam) * np.eye(d)])
    yt = y[rows]
    W = np.linalg.lstsq(A, np.concatenate([yt - yt.mean(), np.zeros(d)]), rcond=None)[0]
    pred = probe.predict(torch.tensor(X))
    assert pred.shape == (120,)
    assert np.allclose(pred.numpy(), ((X - mean) / std) @ W + yt.mean(), atol=1e-4)


def brute_force_knn(train_x, train_y, query_x, k, T, n_classes=None):
    """Reference: one query at a time, plain numpy, exp(sim/T) weights without any rescaling."""
    out = []
    for q in query_x:
        sims = np.array([q @ t / (np.linalg.norm(q) * np.linalg.norm(t)) for t in train_x])
        nearest = np.argsort(-sims)[:k]
        w = np.exp(sims[nearest] / T)
        if n_classes is None:
            out.append(np.sum(w * train_y[nearest]) / np.sum(w))
        else:
            votes = np.zeros(n_classes)
            for i, wi in zip(nearest, w):
                votes[train_y[i]] += wi
            out.append(votes / votes.sum())
    return np.array(out)


def test_knn_equals_brute_force_reference():
    rng = np.random.default_rng(6)
    train_x, query_x = rng.normal(size=(40, 5)), rng.normal(size=(9, 5))
    labels, targets = rng.integers(0, 3, 40), rng.normal(size=40)
    for k, T in ((5, 0.07), (40, 0.5), (1, 0.1)):
        ref = brute_force_knn(train_x, labels, query_x, k, T, n_classes=3)
        probs = probes.knn_classify(torch.tensor(train_x), torch.tensor(labels), torch.tensor(query_x), 3, k, T,
                                      max_elems=100)           # chunks of 2 queries
        assert np.allclose(probs.numpy(), ref, atol=1e-5)
        ref = brute_force_knn(train_x, targets, query_x, k, T)
        pred = probes.knn_regress(torch.tensor(train_x), torch.tensor(targets), torch.tensor(query_x), k, T)
        assert np.allclose(pred.numpy(), ref, atol=1e-5)


def test_knn_excludes_unknown_training_labels_and_survives_tiny_temperature():
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    probs = probes.knn_classify(train_x, torch.tensor([-1, 1, 0]), torch.tensor([[1.0, 0.05]]), 2, k=2,
                                  temperature=1e-3)           # exp(1/1e-3) overflows without rescaling
    assert torch.isfinite(probs).all() and probs.argmax(1).item() == 1
    pred = probes.knn_regress(train_x, torch.tensor([float("nan"), 2.0, 5.0]), torch.tensor([[1.0, 0.0]]), k=1,
                               temperature=0.07)
    assert pred.item() == pytest.approx(2.0)


def test_classification_metrics_by_hand():
    # confusion (rows true, cols predicted), class 3 absent everywhere, one unknown label (-1) ignored:
    #   [[1, 1, 0], [1, 2, 0], [1, 0, 0]]
    # accuracy 3/6; recalls 1/2, 2/3, 0; F1 = 2TP/(2TP+FP+FN): 2/5, 4/6, 0
    m = probes.classification_metrics([0, 0, 1, 1, 1, 2, -1], [0, 1, 1, 1, 0, 0, 3], 4)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 5 + 2 / 3 + 0) / 3)
    assert m["n"] == 6
    assert m["confusion"].tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_regression_metrics_by_hand():
    # errors 0.5, 0, -1 (the NaN label is skipped); SS_res 1.25, SS_tot 2
    m = probes.regression_metrics(torch.tensor([1.0, 2.0, 3.0, float("nan")]), torch.tensor([1.5, 2.0, 2.0, 9.0]))
    assert m["rmse"] == pytest.approx(math.sqrt(1.25 / 3))
    assert m["bias"] == pytest.approx(-0.5 / 3)
    assert m["r2"] == pytest.approx(1 - 1.25 / 2)
    assert m["n"] == 3


def test_probe_suites_report_every_metric():
    g = torch.Generator().manual_seed(7)
    X, y = gaussian_classes(500, 8, 3, 2.0, g)
    target = X[:, 0] * 2 + 0.1 * torch.randn(500, generator=g)
    parts = [(X[:300], y[:300]), (X[300:350], y[300:350]), (X[350:], y[350:])]
    out = probes.classification_probes(*parts, 3, 20, 0.07, grid=[1e-2, 1e-3])
    assert out["linear"]["accuracy"] > 0.9 and out["knn"]["accuracy"] > 0.9 and "lam" in out["linear"]
    parts = [(X[:300], target[:300]), (X[300:350], target[300:350]), (X[350:], target[350:])]
    out = probes.regression_probes(*parts, 20, 0.07)
    pred = out["linear"]["pred"]
    assert out["linear"]["r2"] > 0.99 and set(out["knn"]) == {"rmse", "bias", "r2", "n", "pred"}
    assert probes.regression_metrics(target[350:], pred)["rmse"] == pytest.approx(out["linear"]["rmse"])


def test_small_fits_run_single_threaded_and_restore_the_thread_count():
    seen = []
    probe = probes._single_threaded_when_small(lambda X: seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    probe(torch.ones(10, 4))
    probe(torch.ones(1 << 22, 1))                     # large: the caller's threads are kept
    assert seen == [1, 2] and torch.get_num_threads() == 2


@pytest.mark.parametrize("call, message", [
    (lambda: probes.fit_logistic(torch.ones(4), [0, 1, 0, 1], torch.ones(2, 1), [0, 1], 2), "feature matrix"),
    (lambda: probes.fit_logistic(torch.ones(4, 2), [0, 1, 0, 5], torch.ones(2, 2), [0, 1], 2), "out of range"),
    (lambda: probes.fit_ridge(torch.full((3, 2), float("nan")), [1, 2, 3], torch.ones(2, 2), [1, 2]),
     "non-finite"),
    (lambda: probes.fit_ridge(torch.ones(3, 2), [float("nan")] * 3, torch.ones(2, 2), [1, 2]), "finite"),
    (lambda: probes.regression_metrics([1.0, 2.0], [1.0]), "equal length"),
    (lambda: physics.physics_features(torch.zeros(2, 8, 8), 50.0, 30.0), "[n, 1, H, W]"),
    (lambda: physics.physics_features(torch.zeros(2, 1, 8, 8), -1.0, 30.0), "pixel_spacing"),
])
def test_bad_input_gives_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_dataset_splits_fill_empty_entries_and_ensure_a_val_split():
    classes = np.array([0] * 200 + [1] * 40 + [2] * 20 + [-1] * 8)
    meta = {"class_idx": classes, "split": np.array([""] * len(classes))}
    split = probes.dataset_splits(meta, seed=0)
    for cls, count in ((0, 200), (1, 40), (2, 20)):          # 80/5/15 inside every class
        sizes = [int(((classes == cls) & (split == s)).sum()) for s in ("train", "val", "test")]
        assert sizes == [round(0.8 * count), round(0.05 * count), count - round(0.8 * count) - round(0.05 * count)]
    assert np.array_equal(split, probes.dataset_splits(meta, seed=0))
    assert not np.array_equal(split, probes.dataset_splits(meta, seed=1))
    # given splits are kept; without any val sample, 1/16 of train (per class) becomes val
    given = np.where(np.arange(len(classes)) % 4 == 0, "test", "train")
    split = probes.dataset_splits({"class_idx": classes, "split": given}, seed=0)
    assert np.array_equal(split == "test", given == "test")
    assert int(((classes == 0) & (split == "val")).sum()) == round(150 / 16)


def brightness_classes(folder, n_per_class=40):
    """3 classes of 32 px imagettes told apart by their brightness, split 28/4/8 per class."""
    rng = np.random.default_rng(0)
    classes = np.repeat(np.arange(3), n_per_class)
    speckle = 10 * np.log10(rng.gamma(4.0, 1 / 4.0, size=(len(classes), 1, 32, 32)))
    split = np.tile(np.array(["train"] * 28 + ["val"] * 4 + ["test"] * 8), 3)
    return write_dataset(folder, np.array([-22.0, -14.0, -6.0])[classes, None, None, None] + speckle,
                         class_idx=classes, split=split)


def test_knn_monitor_matches_a_direct_computation_and_keeps_the_images(tmp_path):
    folder = brightness_classes(tmp_path / "cls")
    backbone = models.build_backbone("vit_nano", 8, 32, generator=torch.Generator().manual_seed(3))
    backbone.train()
    monitor = probes.KnnMonitor(folder, k=20, temperature=0.07, split_seed=0, batch_size=50)
    result = monitor(backbone, "cpu")
    assert backbone.training                                    # the caller's mode is restored
    ds = shards.ShardDataset(folder)
    bank, query = np.flatnonzero(ds.meta["split"] == "train"), np.flatnonzero(ds.meta["split"] == "test")
    with torch.no_grad():                                       # val has 12 < 100 samples: test is the query set
        backbone.eval()
        fb, fq = (backbone(torch.from_numpy(ds.read_batch(rows))) for rows in (bank, query))
        backbone.train()
    labels = torch.from_numpy(ds.meta["class_idx"].astype(np.int64))
    ref = probes.classification_metrics(labels[query], probes.knn_classify(fb, labels[bank], fq, 3, 20, 0.07).argmax(1), 3)
    assert result["knn_acc"] == pytest.approx(ref["accuracy"]) and result["knn_queries"] == 24
    assert result["knn_balanced_acc"] == pytest.approx(ref["balanced_accuracy"])
    assert result["knn_acc"] > 0.9                             # brightness classes: easy even for random weights
    assert monitor.images is not None and monitor.images.dtype == torch.float16   # read once, kept as float16
    assert monitor(backbone, "cpu") == result
    unlabelled = write_dataset(tmp_path / "none", np.zeros((8, 1, 32, 32)))
    with pytest.raises(shards.DataError, match="kNN needs labelled samples"):
        probes.KnnMonitor(unlabelled, 20, 0.07, 0, 50)


def _features(seed=0, n=300, d=6):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    X = torch.randn(n, d, generator=g) + y[:, None].float()
    return X, y


def test_standardised_knn_is_invariant_to_column_units():
    X, y = _features()
    scale = torch.tensor([1e-3, 1.0, 50.0, 1e4, 0.2, 7.0])      # dB, m, degrees ... any positive factors
    tr, te = slice(0, 200), slice(200, None)
    a = probes.standardise_like_train(X[tr], X[te])
    b = probes.standardise_like_train(X[tr] * scale, X[te] * scale)
    ia, _ = probes.knn_neighbours(a[0], a[1], k=10, temperature=0.07)
    ib, _ = probes.knn_neighbours(b[0], b[1], k=10, temperature=0.07)
    assert torch.equal(ia, ib)
    # without standardisation the largest column decides the neighbours
    ic, _ = probes.knn_neighbours(X[tr] * scale, X[te] * scale, k=10, temperature=0.07)
    assert not torch.equal(ia, ic)


def test_standardisation_uses_train_statistics_only():
    X, _ = _features()
    tr, te = X[:200], X[200:].clone()
    before = probes.standardise_like_train(tr, te)
    te2 = te.clone()
    te2[0] += 1000.0                                            # a wild test row
    after = probes.standardise_like_train(tr, te2)
    assert torch.equal(before[0], after[0])                     # the bank is unchanged
    torch.testing.assert_close(before[1][1:], after[1][1:])     # so are all other queries
    mean, std = tr.mean(0), tr.std(0, unbiased=False)
    torch.testing.assert_close(before[1], (te - mean) / std)


def test_probes_standardise_knn_only_when_asked():
    X, y = _features()
    X = X * torch.tensor([1e-3, 1.0, 50.0, 1e4, 0.2, 7.0])
    parts = [(X[:200], y[:200]), (X[200:240], y[200:240]), (X[240:], y[240:])]
    raw = probes.classification_probes(*parts, 3, 20, 0.07, grid=[1e-3])
    std = probes.classification_probes(*parts, 3, 20, 0.07, grid=[1e-3], standardise_knn=True)
    assert torch.equal(raw["linear"]["pred"], std["linear"]["pred"])    # the linear probe standardises anyway
    assert std["knn"]["accuracy"] > raw["knn"]["accuracy"]
