"""Tests of the probe library in evaluate.py against independent references (numpy, brute force, by hand)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oceansar import config
import evaluate
from oceansar import probes
from oceansar import model as models
from oceansar import shards
from oceansar import weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def one_thread():
    """These problems are tiny: on a busy 2-core machine a second OpenMP thread only adds scheduling stalls
    (10 ms per parallel op measured). Results do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gaussian_classes(n, dim, n_classes, separation, generator):
    """Features around random class centres `separation` apart (in units of the noise std) and their labels."""
    labels = torch.randint(0, n_classes, (n,), generator=generator)
    centres = separation * torch.randn(n_classes, dim, generator=generator)
    return centres[labels] + torch.randn(n, dim, generator=generator) + 5.0, labels


# ------------------------------------------------------------------------------------------------------ logistic

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


# --------------------------------------------------------------------------------------------------------- ridge

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


# ----------------------------------------------------------------------------------------------------------- kNN

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
    pred = probes.knn_regress(train_x, torch.tensor([float("nan"), 2.0, 5.0]), torch.tensor([[1.0, 0.0]]), k=1)
    assert pred.item() == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------------------- metrics

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
    out = probes.classification_probes(*parts, 3, grid=[1e-2, 1e-3])
    assert out["linear"]["accuracy"] > 0.9 and out["knn"]["accuracy"] > 0.9 and "lam" in out["linear"]
    parts = [(X[:300], target[:300]), (X[300:350], target[300:350]), (X[350:], target[350:])]
    out = probes.regression_probes(*parts)
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
    (lambda: probes.physics_features(torch.zeros(2, 8, 8), 50.0, 30.0), "[n, 1, H, W]"),
    (lambda: probes.physics_features(torch.zeros(2, 1, 8, 8), -1.0, 30.0), "pixel_spacing"),
])
def test_bad_input_gives_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()


# -------------------------------------------------------------------------------------------------------- splits

def test_dataset_splits_fill_empty_entries_and_ensure_a_val_split():
    classes = np.array([0] * 200 + [1] * 40 + [2] * 20 + [-1] * 8)
    meta = {"class_idx": classes, "split": np.array([""] * len(classes))}
    split = evaluate.dataset_splits(meta, seed=0)
    for cls, count in ((0, 200), (1, 40), (2, 20)):          # 80/5/15 inside every class
        sizes = [int(((classes == cls) & (split == s)).sum()) for s in ("train", "val", "test")]
        assert sizes == [round(0.8 * count), round(0.05 * count), count - round(0.8 * count) - round(0.05 * count)]
    assert np.array_equal(split, evaluate.dataset_splits(meta, seed=0))
    assert not np.array_equal(split, evaluate.dataset_splits(meta, seed=1))
    # given splits are kept; without any val sample, 1/16 of train (per class) becomes val
    given = np.where(np.arange(len(classes)) % 4 == 0, "test", "train")
    split = evaluate.dataset_splits({"class_idx": classes, "split": given}, seed=0)
    assert np.array_equal(split == "test", given == "test")
    assert int(((classes == 0) & (split == "val")).sum()) == round(150 / 16)


# ---------------------------------------------------------------------------------------------- physics features

def sinusoid(size, spacing, wavelength, angle_deg, amplitude_db=2.0, base_db=-15.0):
    y, x = torch.meshgrid(torch.arange(size) * spacing, torch.arange(size) * spacing, indexing="ij")
    a = math.radians(angle_deg)
    phase = 2 * math.pi * (x * math.cos(a) + y * math.sin(a)) / wavelength
    return base_db + amplitude_db * torch.cos(phase)


def test_sinusoid_peak_wavelength_and_band():
    size, spacing = 128, 50.0                                  # 6.4 km: frequency bins every 1/6400 m⁻¹
    cases = [(400.0, 0.0), (6400 / 15, math.degrees(math.atan2(9, 12))), (300.0, 90.0), (250.0, 33.0)]
    images = torch.stack([sinusoid(size, spacing, wl, ang) for wl, ang in cases])[:, None]
    feats = probes.physics_features(images, spacing, 36.0)
    col = {name: i for i, name in enumerate(probes.PHYSICS_FEATURES)}
    for (wl, _), row in zip(cases, feats):
        # off-grid wavelengths land on the nearest bin: error at most ~half a bin, 0.5 / (6400 / wl)
        assert row[col["peak_wl_m"]].item() == pytest.approx(wl, rel=0.5 * wl / 6400 + 0.02)
    assert feats[0, col["peak_wl_m"]].item() == pytest.approx(400.0, rel=1e-5)      # exactly on the grid
    assert feats[2, col["band_200_400"]] > 0.95 and feats[3, col["band_200_400"]] > 0.9
    fractions = feats[:, col["band_0_100"]:col["band_4000_inf"] + 1]
    assert torch.allclose(fractions.sum(1), torch.ones(len(cases)), atol=1e-5)
    assert torch.allclose(feats[:, col["incidence"]], torch.full((len(cases),), 36.0))
    # the same pixels read at half the spacing are a wave of half the wavelength
    half = probes.physics_features(images[:1], spacing / 2, 36.0)
    assert half[0, col["peak_wl_m"]].item() == pytest.approx(200.0, rel=1e-5)


def test_intensity_statistics_against_numpy():
    rng = np.random.default_rng(8)
    db = -14 + 10 * np.log10(rng.gamma(4.0, 1 / 4.0, size=(3, 1, 32, 48)))       # 4-look speckle
    feats = probes.physics_features(torch.tensor(db, dtype=torch.float32), 50.0, [20.0, 30.0, 40.0]).numpy()
    lin = 10 ** (db[:, 0] / 10)
    assert np.allclose(feats[:, 0], 10 * np.log10(lin.mean((1, 2))), atol=1e-4)
    assert np.allclose(feats[:, 1], db[:, 0].std((1, 2)), atol=1e-4)
    assert np.allclose(feats[:, 2], lin.var((1, 2)) / lin.mean((1, 2)) ** 2, rtol=1e-4)
    assert np.allclose(feats[:, 2], 0.25, atol=0.05)                         # Gamma(L) speckle: NV = 1/L
    assert np.allclose(feats[:, -1], [20.0, 30.0, 40.0])
    # a cosine of amplitude a dB: the mean linear intensity is I0(a·ln10/10) times the base (Bessel I0)
    wave = probes.physics_features(sinusoid(64, 50.0, 400.0, 0.0)[None, None], 50.0, 30.0)
    assert wave[0, 0].item() == pytest.approx(-15 + 10 * math.log10(np.i0(2 * math.log(10) / 10)), abs=1e-4)


# ------------------------------------------------------------------------------------------- external weights

def model_cfg(arch, patch_size=16, crops=256):
    cfg = config.defaults()
    cfg["model"].update(arch=arch, patch_size=patch_size)
    cfg["train"]["global_crops_size"] = crops
    return cfg


# ------------------------------------------------------------------------------------------------- end to end

def write_dataset(folder, images, **columns):
    writer = shards.ShardWriter(str(folder), images.shape[-1], 50.0, samples_per_shard=64)
    n_shards = (len(images) + 63) // 64
    for k in range(n_shards):
        part = slice(64 * k, 64 * (k + 1))
        writer.write(k, images[part], shards.standard_meta(len(images[part]),
                                                           **{c: v[part] for c, v in columns.items()}))
    writer.finalize(n_shards)
    return str(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 classes of 32 px imagettes told apart by their brightness (40 each, split 28/4/8), a wind set whose
    brightness follows the wind (no Hs, no split column), a vit_nano backbone.pt and a pretrain-like
    checkpoint.pt (config + a teacher different from the student) with the same teacher backbone."""
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    classes = np.repeat(np.arange(3), 40)
    speckle = 10 * np.log10(rng.gamma(4.0, 1 / 4.0, size=(120, 1, 32, 32)))
    split = np.tile(np.array(["train"] * 28 + ["val"] * 4 + ["test"] * 8), 3)
    names = np.array(["Pure Ocean Waves", "Sea Ice", "Rain Cells"])[classes]
    cls_dir = write_dataset(root / "cls", np.array([-22.0, -14.0, -6.0])[classes, None, None, None] + speckle,
                            class_idx=classes, class_name=names, split=split, incidence=np.full(120, 35.0))
    wind = rng.uniform(2, 20, 96)
    reg_dir = write_dataset(root / "reg", -25 + wind[:, None, None, None] + speckle[:96], wind=wind,
                            incidence=rng.uniform(30, 40, 96))
    cfg = model_cfg("vit_nano", 8, crops=32)
    teacher, student = (models.MultiCropWrapper(models.build_backbone("vit_nano", 8, 32, generator=g),
                                                models.DINOHead(96, 16, hidden_dim=16, bottleneck_dim=8))
                        for g in (torch.Generator().manual_seed(3), None))
    torch.save({"student": student.state_dict(), "teacher": teacher.state_dict(), "iteration": 5,
                "config": config.as_json(cfg)}, root / "checkpoint.pt")
    torch.save(teacher.backbone.state_dict(), root / "backbone.pt")
    yaml_path = root / "eval.yaml"                       # model.* left at its defaults (vit_small/16)
    yaml_path.write_text(f"eval:\n  classification: {cls_dir}\n  regression: {reg_dir}\n  batch_size: 50\n")
    return {"root": root, "cls": cls_dir, "reg": reg_dir, "yaml": str(yaml_path), "teacher": teacher.backbone}


def test_a_pretrain_checkpoint_gives_its_teacher_backbone_in_the_saved_architecture(tiny):
    backbone, spec, _ = weights.load_backbone(str(tiny["root"] / "checkpoint.pt"), config.defaults())
    assert spec == ("vit_nano", 8, 32)
    for key, value in tiny["teacher"].state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value), key


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}         # tiny problems: one thread each on a shared machine
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def test_cli_report_from_a_pretrain_checkpoint(tiny):
    out = tiny["root"] / "report_ckpt"
    proc = run_cli(tiny["yaml"], f"checkpoint={tiny['root'] / 'checkpoint.pt'}", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"checkpoint", "arch", "feature_dim", "results"}
    assert report["arch"] == "vit_nano" and report["feature_dim"] == 96      # from the checkpoint's config
    assert list(report["results"]) == ["pretrained", "random_init", "physics"]
    for name, result in report["results"].items():
        assert set(result) == {"classification", "wind"}                     # no Hs label: skipped
        for probe in ("linear", "knn"):
            c = result["classification"][probe]
            seeds = {"seeds"} if name == "random_init" else set()           # 3 random inits, averaged
            assert set(c) == {"accuracy", "balanced_accuracy", "macro_f1", "n", "ci", "confusion", "per_class"} | seeds
            for key in ("accuracy", "balanced_accuracy", "macro_f1"):
                assert c["ci"][key][0] <= c[key] <= c["ci"][key][1]
                assert not seeds or c[key] == pytest.approx(np.mean(c["seeds"][key]))
            assert c["n"] == 24 and np.array(c["confusion"]).sum() == 24 * (3 if seeds else 1)
            assert set(c["per_class"]) == {"Pure Ocean Waves", "Sea Ice", "Rain Cells"}
            assert np.mean(list(c["per_class"].values())) == pytest.approx(c["balanced_accuracy"])
            assert set(result["wind"][probe]) == {"rmse", "bias", "r2", "n", "ci"} | seeds
    physics = report["results"]["physics"]
    assert physics["classification"]["linear"]["accuracy"] == 1.0             # brightness separates the classes
    assert physics["wind"]["linear"]["r2"] > 0.9                               # and predicts the wind
    assert "hs: skipped" in proc.stdout
    rows = (out / "report.md").read_text().splitlines()
    assert [r.split("|")[1].strip() for r in rows if r.startswith("| ") and "model" not in r] == \
        ["pretrained", "random_init", "physics"]
    for png in ("confusion.png", "scatter_wind.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert not (out / "scatter_hs.png").exists()
    assert config.load([str(out / "config.yaml")])["eval"]["out"] == str(out)


def test_cli_report_from_a_backbone_file_with_more_features_and_no_baselines(tiny):
    out = tiny["root"] / "report_backbone"
    proc = run_cli(tiny["yaml"], f"checkpoint={tiny['root'] / 'backbone.pt'}", f"out={out}", "model.arch=vit_nano",
                   "model.patch_size=8", "eval.n_last_blocks=2", "eval.avgpool=true", "eval.baselines=false")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["feature_dim"] == 3 * 96 and list(report["results"]) == ["pretrained"]
    assert str(out / "report.md") in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["checkpoint=/nonexistent/ckpt.pt"], "config key 'eval.checkpoint': /nonexistent/ckpt.pt does not exist"),
    (["eval.regression=/nonexistent/set"], "config key 'eval.regression': /nonexistent/set does not exist"),
])
def test_cli_missing_input_is_one_line_and_exit_2(tiny, args, message):
    proc = run_cli(tiny["yaml"], f"checkpoint={tiny['root'] / 'checkpoint.pt'}", *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_knn_eval_matches_a_direct_computation_and_caches_the_images(tiny):
    backbone = tiny["teacher"]
    backbone.train()
    result = evaluate.knn_eval(backbone, tiny["cls"], "cpu")
    assert backbone.training                                    # the caller's mode is restored
    ds = shards.ShardDataset(tiny["cls"])
    bank, query = np.flatnonzero(ds.meta["split"] == "train"), np.flatnonzero(ds.meta["split"] == "test")
    with torch.no_grad():                                       # val has 12 < 100 samples: test is the query set
        backbone.eval()
        fb, fq = (backbone(torch.from_numpy(ds.read_batch(rows))) for rows in (bank, query))
        backbone.train()
    labels = torch.from_numpy(ds.meta["class_idx"].astype(np.int64))
    ref = probes.classification_metrics(labels[query], probes.knn_classify(fb, labels[bank], fq, 3).argmax(1), 3)
    assert result["knn_acc"] == pytest.approx(ref["accuracy"]) and result["knn_queries"] == 24
    assert result["knn_balanced_acc"] == pytest.approx(ref["balanced_accuracy"])
    assert result["knn_acc"] > 0.9                             # brightness classes: easy even for random weights
    cached = evaluate._KNN_CACHE[os.path.abspath(tiny["cls"])]
    assert cached[4] is not None and cached[4].dtype == torch.float16
    assert evaluate.knn_eval(backbone, tiny["cls"], "cpu") == result
    assert evaluate._KNN_CACHE[os.path.abspath(tiny["cls"])] is cached


# --------------------------------------------------------------------------------------------------------- CUDA

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(9)
    X, y = gaussian_classes(600, 16, 4, 1.0, g)
    cpu = probes.fit_logistic(X[:400], y[:400], X[400:500], y[400:500], 4, grid=[1e-2, 1e-3])
    gpu = probes.fit_logistic(X[:400].cuda(), y[:400].cuda(), X[400:500].cuda(), y[400:500].cuda(), 4,
                                grid=[1e-2, 1e-3])
    assert gpu.lam == cpu.lam
    assert torch.allclose(gpu.predict_proba(X[500:].cuda()).cpu(), cpu.predict_proba(X[500:]), atol=1e-3)
    probs = probes.knn_classify(X[:400].cuda(), y[:400].cuda(), X[500:].cuda(), 4)
    assert torch.allclose(probs.cpu(), probes.knn_classify(X[:400], y[:400], X[500:], 4), atol=1e-5)
    images = torch.stack([sinusoid(64, 50.0, 400.0, 0.0), sinusoid(64, 50.0, 250.0, 30.0)])[:, None]
    assert torch.allclose(probes.physics_features(images.cuda(), 50.0, 30.0).cpu(),
                          probes.physics_features(images, 50.0, 30.0), rtol=1e-4, atol=1e-4)
