"""Frozen-feature probes and the physics baseline, in torch (CPU or CUDA, on the device of the inputs).

The protocol of ../shared/docs/METHOD.md, used by evaluate.py:
- fit_logistic: multinomial logistic regression on standardised features, full-batch L-BFGS, the L2 strength
  chosen on the validation split (best accuracy, ties to the lower validation cross-entropy), warm-started from
  strong to weak regularisation. The features are rotated into their covariance eigenbasis and preconditioned,
  and the gradient is written by hand: about 3x fewer evaluations and 2x cheaper ones than plain autograd.
- fit_ridge: closed-form ridge regression, one eigendecomposition for the whole λ grid, λ per output on val.
- knn_classify / knn_regress: cosine similarity, k = 20, weights exp(sim / T) with T = 0.07 (DINO protocol),
  queries in memory-bounded chunks. Hand-crafted features are z-scored with train statistics first
  (standardise_like_train); network features are used as they are.
- classification_metrics (accuracy, balanced accuracy, macro-F1, confusion) and regression_metrics (RMSE,
  bias = mean(pred - true), R²). Unknown labels (class < 0, NaN target) never enter a fit or a metric.
- extract_features: frozen backbone features of a dataset's rows, one centre view (physics.py's hand-crafted
  features beside them on request); dataset_splits / class_names: the train/val/test split and class names of
  a labelled dataset; KnnMonitor: the in-training kNN on a labelled dataset (pretrain.py's curve).
"""

import functools
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .physics import physics_features
from . import shards

LOGISTIC_GRID = tuple(10.0 ** e for e in torch.linspace(-6, 0, 13).tolist())
RIDGE_GRID = tuple(10.0 ** e for e in torch.linspace(-6, 3, 19).tolist())


# ----------------------------------------------------------------------------------------------- input checks

def _as_features(X, name, dtype=torch.float32):
    X = torch.as_tensor(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty [n, d] feature matrix, got shape {tuple(X.shape)}")
    X = X.to(dtype)
    if not torch.isfinite(X).all():
        raise ValueError(f"{name}: {int((~torch.isfinite(X)).sum())} non-finite feature values")
    return X


def _known_classes(X, y, n_classes, name):
    """Features and int64 labels of the samples whose class is known (label >= 0)."""
    X = _as_features(X, f"{name} features")
    y = torch.as_tensor(y, device=X.device).long().reshape(-1)
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"{name}: {X.shape[0]} feature rows but {y.shape[0]} labels")
    if (y >= n_classes).any():
        raise ValueError(f"{name}: label {int(y.max())} out of range for n_classes={n_classes}")
    keep = y >= 0
    if not keep.any():
        raise ValueError(f"{name}: no sample with a known class label")
    return X[keep], y[keep]


def _known_targets(X, y, name, dtype=torch.float32):
    """Features and float64 targets [n, m] of the rows whose targets are all finite."""
    X = _as_features(X, f"{name} features", dtype)
    y = torch.as_tensor(y, device=X.device).double()
    y2 = y.reshape(y.shape[0], -1) if y.ndim > 0 else y.reshape(1, 1)
    if y2.shape[0] != X.shape[0]:
        raise ValueError(f"{name}: {X.shape[0]} feature rows but {y2.shape[0]} targets")
    keep = torch.isfinite(y2).all(1)
    if not keep.any():
        raise ValueError(f"{name}: no sample with a finite regression target")
    return X[keep], y2[keep]


def _check_probe_args(name, grid, refit):
    if refit not in ("train", "train+val") or len(grid) == 0 or min(grid) < 0:
        raise ValueError(f"{name}: refit must be 'train' or 'train+val' (got {refit!r}) and grid a non-empty "
                         f"list of λ >= 0 (got {list(grid)})")


def _single_threaded_when_small(fit, small=1 << 22):
    """Decorator: a fit on a small CPU matrix (first argument) runs single-threaded. Its ops are too small to
    split, and OpenMP workers spinning between thousands of tiny ops stall a shared machine (10x slower
    measured on a busy 2-core CPU). The caller's thread count is restored afterwards."""
    @functools.wraps(fit)
    def wrapped(X, *args, **kwargs):
        before, X_t = torch.get_num_threads(), torch.as_tensor(X)
        if X_t.device.type == "cpu" and X_t.numel() < small:
            torch.set_num_threads(1)
        try:
            return fit(X, *args, **kwargs)
        finally:
            torch.set_num_threads(before)
    return wrapped


def _standardisation(X):
    """Column mean and std; a constant column (std at rounding level of its mean) gets std 1, not 1/0."""
    mean = X.mean(0)
    std = X.std(0, unbiased=False)
    return mean, torch.where((std > 0) & (std > 1e-5 * mean.abs()), std, torch.ones_like(std))


# ------------------------------------------------------------------------------------------ logistic regression

class LogisticProbe:
    """A fitted multinomial logistic regression on standardised features."""

    def __init__(self, weight, bias, mean, std, lam, grid, val_accuracy, val_loss, n_evals):
        self.weight, self.bias, self.mean, self.std = weight, bias, mean, std
        self.lam, self.grid = lam, grid                      # chosen λ; the grid as swept (strong → weak)
        self.val_accuracy, self.val_loss = val_accuracy, val_loss   # per grid value
        self.n_evals = n_evals                               # loss/gradient evaluations, all fits together

    def logits(self, X):
        X = _as_features(X, "features").to(self.weight.device)
        return ((X - self.mean) / self.std) @ self.weight + self.bias

    def predict_proba(self, X):
        return self.logits(X).softmax(1)

    def predict(self, X):
        return self.logits(X).argmax(1)


def _lbfgs_fit(Xr, onehot, W, b, lam, curvature, max_iter, tol):
    """Minimise mean CE + (λ/2)‖W‖² from (W, b), in place; returns the number of loss evaluations.

    Xr are the standardised features rotated into the eigenbasis of their covariance (eigenvalues `curvature`);
    a rotation leaves ‖W‖ unchanged, so the problem is the same. L-BFGS runs on U = W·sqrt(e + λ) per
    direction: preconditioning with the ridge Hessian XᵀX/n + λI, which makes the problem well conditioned and
    cuts the iterations about 3x. The gradient is written by hand: autograd would form Xᵀ·G with a transposed
    operand, which MKL runs 2-3x slower than the (Gᵀ·X)ᵀ used here, and passes over X are the whole cost."""
    scale = (curvature + lam).rsqrt()[:, None]
    U = W / scale
    opt = torch.optim.LBFGS([U, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=tol,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")
    n, evals = Xr.shape[0], 0

    @torch.no_grad()
    def closure():
        nonlocal evals
        evals += 1
        Wc = scale * U
        log_p = torch.addmm(b, Xr, Wc).log_softmax(1)
        loss = -(log_p * onehot).sum() / n + 0.5 * lam * Wc.pow(2).sum()
        dlogits = (log_p.exp() - onehot) / n                     # d mean-CE / d logits
        U.grad = (scale * ((dlogits.T @ Xr).T + lam * Wc)).contiguous()
        b.grad = dlogits.sum(0)
        return loss

    opt.step(closure)
    W.copy_(scale * U)
    return evals


@_single_threaded_when_small
def fit_logistic(Xtr, ytr, Xva, yva, n_classes, grid=LOGISTIC_GRID, refit="train", max_iter=200, tol=1e-5):
    """Multinomial logistic regression, λ = argmax val accuracy (ties: lower val cross-entropy).

    Minimises mean CE + (λ/2)·‖W‖² (bias free) on train-standardised features with _lbfgs_fit; the grid is
    swept from strong to weak regularisation, each fit warm-started from the previous one (strong λ converge
    in a few iterations and give a good start). A fit stops when the largest preconditioned gradient entry is
    below `tol` or after `max_iter` iterations. refit="train" keeps the train fit (val only selects);
    "train+val" refits on both with the chosen λ and the train statistics."""
    _check_probe_args("fit_logistic", grid, refit)
    Xtr, ytr = _known_classes(Xtr, ytr, n_classes, "logistic train")
    Xva, yva = _known_classes(Xva, yva, n_classes, "logistic val")
    if Xva.shape[1] != Xtr.shape[1]:
        raise ValueError(f"fit_logistic: train has {Xtr.shape[1]} features, val {Xva.shape[1]}")
    Xva, yva = Xva.to(Xtr.device), yva.to(Xtr.device)
    mean, std = _standardisation(Xtr)
    Xtr = (Xtr - mean) / std
    curvature, V = torch.linalg.eigh((Xtr.T @ Xtr / Xtr.shape[0]).double())
    curvature, V = curvature.clamp_min(0).float(), V.float()
    Xtr, Xva = Xtr @ V, ((Xva - mean) / std) @ V                  # rotated: the solver's coordinates
    onehot = F.one_hot(ytr, n_classes).float()
    grid = sorted((float(g) for g in grid), reverse=True)
    W = torch.zeros(Xtr.shape[1], n_classes, device=Xtr.device)
    b = torch.zeros(n_classes, device=Xtr.device)
    accs, losses, fits, evals = [], [], [], 0
    for lam in grid:                                          # warm start: each fit starts where the last ended
        evals += _lbfgs_fit(Xtr, onehot, W, b, lam, curvature, max_iter, tol)
        logits = Xva @ W + b
        accs.append((logits.argmax(1) == yva).float().mean().item())
        losses.append(F.cross_entropy(logits, yva).item())
        fits.append((W.clone(), b.clone()))
    best = max(range(len(grid)), key=lambda i: (accs[i], -losses[i]))
    W_best, b_best = fits[best]
    if refit == "train+val":
        evals += _lbfgs_fit(torch.cat([Xtr, Xva]), torch.cat([onehot, F.one_hot(yva, n_classes).float()]),
                            W_best, b_best, grid[best], curvature, max_iter, tol)
    return LogisticProbe(V @ W_best, b_best, mean, std, grid[best], grid, accs, losses, evals)


# --------------------------------------------------------------------------------------------- ridge regression

class RidgeProbe:
    """A fitted ridge regression (one λ per output) on standardised features."""

    def __init__(self, weight, bias, mean, std, lam, grid, val_mse, squeeze):
        self.weight, self.bias, self.mean, self.std = weight, bias, mean, std   # weight [d, m] float64
        self.lam, self.grid, self.val_mse = lam, grid, val_mse   # lam [m]; val_mse [len(grid), m]
        self.squeeze = squeeze                                   # fitted on a 1-D target: predict returns [n]

    def predict(self, X):
        X = _as_features(X, "features").to(self.weight.device).double()
        out = ((X - self.mean) / self.std) @ self.weight + self.bias
        return (out[:, 0] if self.squeeze else out).float()


def _ridge_eig(Xs, Yc):
    """Eigenbasis of the train covariance XᵀX/n and the projected cross-covariance Vᵀ XᵀY/n."""
    n = Xs.shape[0]
    evals, V = torch.linalg.eigh(Xs.T @ Xs / n)
    return evals.clamp_min(0), V, V.T @ (Xs.T @ Yc / n)


@_single_threaded_when_small
def fit_ridge(Xtr, ytr, Xva, yva, grid=RIDGE_GRID, refit="train"):
    """Ridge regression per output, λ = argmin val MSE (ties: the larger λ), equal to separate fits.

    Minimises (1/2n)·‖Y − XW − b‖² + (λ/2)·‖W‖², i.e. W = (XᵀX/n + λI)⁻¹XᵀY/n on train-standardised X and
    centred Y, in float64; one eigendecomposition of XᵀX/n makes every λ of the grid a diagonal rescaling."""
    _check_probe_args("fit_ridge", grid, refit)
    squeeze = torch.as_tensor(ytr).ndim == 1
    Xtr, Ytr = _known_targets(Xtr, ytr, "ridge train", torch.float64)
    Xva, Yva = _known_targets(Xva, yva, "ridge val", torch.float64)
    if Xva.shape[1] != Xtr.shape[1] or Yva.shape[1] != Ytr.shape[1]:
        raise ValueError(f"fit_ridge: train/val shapes differ: {tuple(Xtr.shape)}/{tuple(Ytr.shape)} vs "
                         f"{tuple(Xva.shape)}/{tuple(Yva.shape)}")
    Xva, Yva = Xva.to(Xtr.device), Yva.to(Xtr.device)
    mean, std = _standardisation(Xtr)
    Xtr_s, Xva_s = (Xtr - mean) / std, (Xva - mean) / std
    y_mean = Ytr.mean(0)
    evals, V, P = _ridge_eig(Xtr_s, Ytr - y_mean)
    grid_t = torch.tensor(sorted(map(float, grid), reverse=True), dtype=torch.float64, device=Xtr.device)
    coef = P[None] / (evals[None, :, None] + grid_t[:, None, None])        # [G, d, m] in the eigenbasis
    pred = torch.einsum("nd,gdm->gnm", Xva_s @ V, coef) + y_mean           # [G, n_val, m]
    val_mse = (pred - Yva[None]).pow(2).mean(1)                            # [G, m]
    best = val_mse.argmin(0)                                               # first = largest λ on ties
    lam = grid_t[best]
    if refit == "train+val":
        Xtr_s, Ytr = torch.cat([Xtr_s, Xva_s]), torch.cat([Ytr, Yva])
        y_mean = Ytr.mean(0)
        evals, V, P = _ridge_eig(Xtr_s, Ytr - y_mean)
    weight = V @ (P / (evals[:, None] + lam[None]))
    return RidgeProbe(weight, y_mean, mean, std, lam, grid_t, val_mse, squeeze)


# -------------------------------------------------------------------------------------------------------- kNN

@_single_threaded_when_small
def knn_neighbours(train_x, query_x, k, temperature, max_elems=1 << 25):
    """Indices [nq, k] of the k most cosine-similar training rows and their vote weights exp(sim/T).

    The weights are scaled per query by exp(-max_sim/T) (no overflow for small T); every use of them here
    normalises per query, so this changes nothing."""
    train_x = F.normalize(_as_features(train_x, "kNN train features"), dim=1)
    query_x = F.normalize(_as_features(query_x, "kNN query features"), dim=1).to(train_x.device)
    if query_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"kNN: train has {train_x.shape[1]} features, queries {query_x.shape[1]}")
    if temperature <= 0:
        raise ValueError(f"kNN: temperature must be > 0, got {temperature}")
    k = min(int(k), train_x.shape[0])
    chunk = max(1, max_elems // train_x.shape[0])
    sims, idx = [], []
    for q in query_x.split(chunk):                    # bounded [chunk, n_train] similarity block
        s, i = (q @ train_x.T).topk(k, dim=1)
        sims.append(s)
        idx.append(i)
    sims, idx = torch.cat(sims), torch.cat(idx)
    return idx, ((sims - sims[:, :1]) / temperature).exp()


def knn_classify(train_x, train_y, query_x, n_classes, k, temperature, max_elems=1 << 25):
    """Class probabilities [nq, n_classes]: normalised exp(sim/T)-weighted votes of the k nearest neighbours."""
    train_x, train_y = _known_classes(train_x, train_y, n_classes, "kNN train")
    idx, w = knn_neighbours(train_x, query_x, k, temperature, max_elems)
    votes = torch.zeros(idx.shape[0], n_classes, device=w.device).scatter_add_(1, train_y[idx], w)
    return votes / votes.sum(1, keepdim=True)


def knn_regress(train_x, train_y, query_x, k, temperature, max_elems=1 << 25):
    """exp(sim/T)-weighted mean target of the k nearest neighbours: [nq] for a 1-D target, else [nq, m]."""
    squeeze = torch.as_tensor(train_y).ndim == 1
    train_x, train_y = _known_targets(train_x, train_y, "kNN train")
    idx, w = knn_neighbours(train_x, query_x, k, temperature, max_elems)
    w = w.double()
    out = (w[:, :, None] * train_y[idx]).sum(1) / w.sum(1, keepdim=True)
    return (out[:, 0] if squeeze else out).float()


# ---------------------------------------------------------------------------------------------------- metrics

def classification_metrics(y_true, y_pred, n_classes):
    """accuracy, balanced_accuracy, macro_f1 (floats), n, and confusion [true, pred] (int64 tensor)."""
    y_true = torch.as_tensor(y_true).long().reshape(-1)
    y_pred = torch.as_tensor(y_pred).long().reshape(-1).to(y_true.device)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"classification_metrics: {y_true.numel()} labels but {y_pred.numel()} predictions")
    keep = y_true >= 0
    y_true, y_pred = y_true[keep], y_pred[keep]
    if y_true.numel() == 0:
        raise ValueError("classification_metrics: no sample with a known class label")
    if max(int(y_true.max()), int(y_pred.max())) >= n_classes or int(y_pred.min()) < 0:
        raise ValueError(f"classification_metrics: a label or prediction is outside [0, {n_classes})")
    confusion = torch.bincount(y_true * n_classes + y_pred, minlength=n_classes ** 2).reshape(n_classes, n_classes)
    tp = confusion.diagonal().double()
    support, predicted = confusion.sum(1).double(), confusion.sum(0).double()
    recall = tp / support.clamp_min(1)
    f1 = 2 * tp / (support + predicted).clamp_min(1)              # 2TP / (2TP + FP + FN); 0 when undefined
    present = support > 0
    return {"accuracy": (tp.sum() / support.sum()).item(),
            "balanced_accuracy": recall[present].mean().item(),
            "macro_f1": f1[present | (predicted > 0)].mean().item(),
            "n": int(support.sum()),
            "confusion": confusion}


def regression_metrics(y_true, y_pred):
    """rmse, bias = mean(pred − true), r2, and n over the samples with a finite true value (1-D inputs)."""
    y_true = torch.as_tensor(y_true).double()
    y_pred = torch.as_tensor(y_pred).double().to(y_true.device)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"regression_metrics: expected two 1-D tensors of equal length, got "
                         f"{tuple(y_true.shape)} and {tuple(y_pred.shape)}")
    keep = torch.isfinite(y_true)
    y_true, y_pred = y_true[keep], y_pred[keep]
    if y_true.numel() == 0:
        raise ValueError("regression_metrics: no sample with a finite target")
    err = y_pred - y_true
    ss_tot = (y_true - y_true.mean()).pow(2).sum()
    return {"rmse": err.pow(2).mean().sqrt().item(),
            "bias": err.mean().item(),
            "r2": (1 - err.pow(2).sum() / ss_tot).item() if ss_tot > 0 else float("nan"),
            "n": int(y_true.numel())}


def standardise_like_train(train_x, *others):
    """Each matrix z-scored with the train matrix's column mean and std (constant columns left unscaled).

    For kNN on hand-crafted features, whose units differ by orders of magnitude (dB, metres, degrees): cosine
    on the raw columns is dominated by the largest. Network features are used as they are (DINO protocol).
    Only train statistics are used, so nothing of a query leaks into the bank."""
    train_x = _as_features(train_x, "standardise train features")
    mean, std = _standardisation(train_x)
    return [(train_x - mean) / std] + [(_as_features(x, "standardise features").to(train_x.device) - mean) / std
                                       for x in others]


def classification_probes(train, val, test, n_classes, k, temperature, standardise_knn=False,
                          **logistic_kw):
    """Logistic probe and kNN on (X, y) pairs; returns {"linear": metrics + lam + pred, "knn": metrics + pred}.

    standardise_knn: z-score the kNN features with train statistics first (hand-crafted features)."""
    probe = fit_logistic(*train, *val, n_classes, **logistic_kw)
    (Xtr, ytr), (X, y) = train, test
    pred = probe.predict(X)
    linear = {**classification_metrics(y, pred, n_classes), "lam": probe.lam, "pred": pred}
    bank, query = standardise_like_train(Xtr, X) if standardise_knn else (Xtr, X)
    knn_pred = knn_classify(bank, ytr, query, n_classes, k, temperature).argmax(1)
    return {"linear": linear, "knn": {**classification_metrics(y, knn_pred, n_classes), "pred": knn_pred}}


def regression_probes(train, val, test, k, temperature, standardise_knn=False, knn_columns=None, **ridge_kw):
    """Ridge probe and kNN regression on (X, y) pairs with a 1-D target: {"linear", "knn"}, each metrics +
    pred (test predictions); standardise_knn as in classification_probes; knn_columns: kNN on the first n
    columns only (the linear probe sees them all: e.g. features plus appended metadata)."""
    probe = fit_ridge(*train, *val, **ridge_kw)
    (Xtr, ytr), (X, y) = train, test
    pred = probe.predict(X)
    linear = {**regression_metrics(y, pred), "lam": probe.lam.item(), "pred": pred}
    Xtr, X = (Xtr, X) if knn_columns is None else (Xtr[:, :knn_columns], X[:, :knn_columns])
    bank, query = standardise_like_train(Xtr, X) if standardise_knn else (Xtr, X)
    knn_pred = knn_regress(bank, ytr, query, k, temperature)
    return {"linear": linear, "knn": {**regression_metrics(y, knn_pred), "pred": knn_pred}}


def angular_error(true_deg, pred_deg, period=360.0):
    """Absolute difference of angles on a circle of `period` degrees, in [0, period / 2]."""
    d = torch.remainder(torch.as_tensor(pred_deg).double() - torch.as_tensor(true_deg).double(), period)
    return torch.minimum(d, period - d)


def direction_probes(train, val, test, k, temperature, **ridge_kw):
    """Ridge and kNN for a circular target in degrees (e.g. wind direction relative to the look).

    Two fits of each probe: on (cos t, sin t), scored by the mean absolute angular error in [0, 180]
    ("mae_deg"; chance 90), and on (cos 2t, sin 2t), the axis with the 180 deg ambiguity folded out, scored
    in [0, 90] ("mae_axis_deg"; chance 45). The prediction is the atan2 of the predicted vector.
    Returns {"linear", "knn"} -> {mae_deg, mae_axis_deg, n, errors: {mae_deg, mae_axis_deg: the per-image
    errors of the test images with a finite angle, for intervals}}."""
    (Xtr, ttr), (Xva, tva), (Xte, tte) = train, val, test
    tte = torch.as_tensor(tte).double()
    keep = torch.isfinite(tte)
    result = {p: {"n": int(keep.sum()), "errors": {}} for p in ("linear", "knn")}
    for harmonic, key, period in ((1, "mae_deg", 360.0), (2, "mae_axis_deg", 180.0)):
        vec = lambda t: torch.stack([torch.cos(torch.deg2rad(torch.as_tensor(t).double() * harmonic)),  # noqa: E731
                                     torch.sin(torch.deg2rad(torch.as_tensor(t).double() * harmonic))], 1)
        probe = fit_ridge(Xtr, vec(ttr), Xva, vec(tva), **ridge_kw)
        preds = {"linear": probe.predict(Xte), "knn": knn_regress(Xtr, vec(ttr), Xte, k, temperature)}
        for name, p in preds.items():
            angle = torch.rad2deg(torch.atan2(p[:, 1].double(), p[:, 0].double())).cpu() / harmonic
            errors = angular_error(tte[keep], angle[keep], period)
            result[name][key], result[name]["errors"][key] = errors.mean().item(), errors
    return result


# ------------------------------------------------------------------------------------------- features and splits

def incidence(dataset, rows):
    """float32 [len(rows)] incidence angles (degrees); unknown ones get the dataset median (a neutral value)."""
    inc = np.asarray(dataset.meta["incidence"], dtype=np.float32)
    known = np.isfinite(inc)
    return torch.from_numpy(np.where(known, inc, np.median(inc[known]) if known.any() else 0.0)[rows])


def extract_features(dataset, rows, nets, device, batch_size=256, n_last_blocks=1, avgpool=False,
                     physics=False, images=None, progress=True):
    """{name: float32 [len(rows), d] on device} for each backbone of `nets`, plus "physics" if asked.

    One pass: each batch is read once as raw dB (or taken from `images`, raw dB aligned with rows), normalised
    with the dataset's mean/std for the networks and kept in dB for the physics features."""
    device, rows = torch.device(device), np.asarray(rows, dtype=np.int64)
    if physics:
        inc = incidence(dataset, rows)
    out = {name: [] for name in [*nets, *(["physics"] if physics else [])]}
    for net in nets.values():
        net.eval()
    name = os.path.basename(os.path.normpath(dataset.folder))
    with torch.inference_mode(), tqdm(total=len(rows), unit="img", desc=f"features {name}", mininterval=1.0,
                                      disable=not progress) as bar:
        for s in range(0, len(rows), batch_size):
            raw = images[s:s + batch_size] if images is not None else \
                torch.from_numpy(dataset.read_batch(rows[s:s + batch_size], raw=True))
            raw = raw.to(device, non_blocking=True).float()
            x = (raw - dataset.mean) / dataset.std
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                for key, net in nets.items():
                    out[key].append(net.get_features(x, n_last_blocks=n_last_blocks, avgpool=avgpool).float())
            if physics:
                out["physics"].append(physics_features(raw, dataset.pixel_spacing, inc[s:s + batch_size]))
            bar.update(len(raw))
    return {key: torch.cat(parts) for key, parts in out.items()}


def dataset_splits(meta, seed):
    """The split column; empty entries are dealt train/val/test (seeded 80/5/15, stratified by class) and
    a dataset without any val sample gives 1/16 of its train split (seeded, stratified) to val."""
    split, cls = np.asarray(meta["split"]).astype("U16"), np.asarray(meta["class_idx"])
    empty = np.flatnonzero(split == "")
    if empty.size:
        split[empty] = shards.stratified_split(cls[empty], seed)
    if not (split == "val").any():
        train = np.flatnonzero(split == "train")
        split[train[shards.stratified_split(cls[train], seed + 1, (15 / 16, 1 / 16, 0.0)) == "val"]] = "val"
    return split


def class_names(meta, n_classes):
    """Name of each class index (its first sample's class_name; 'class_<i>' when unnamed or absent)."""
    cls, names = np.asarray(meta["class_idx"]), np.asarray(meta["class_name"])
    first = [np.flatnonzero(cls == c)[:1] for c in range(n_classes)]          # a loop over classes
    return [str(names[f[0]]) if f.size and names[f[0]] else f"class_{c}" for c, f in enumerate(first)]


# ------------------------------------------------------------------------------------------- the in-training kNN

class KnnMonitor:
    """kNN (k, T) accuracy of a backbone's CLS / pooled features on a labelled dataset, cheap to repeat: the
    train split is the bank, the val split the queries (test instead when val has fewer than `min_queries`
    samples and test more). The labelled images are read once and kept as float16 dB (up to `cache_bytes`;
    larger sets are re-read), so each call only runs the backbone. pretrain.py owns one per run."""

    def __init__(self, dataset_dir, k, temperature, split_seed, batch_size, min_queries=100, cache_bytes=2 << 30):
        self.k, self.temperature, self.batch_size = k, temperature, batch_size
        self.dataset = shards.ShardDataset(dataset_dir)
        split, cls = dataset_splits(self.dataset.meta, split_seed), self.dataset.meta["class_idx"].astype(np.int64)
        bank, val, test = (np.flatnonzero((cls >= 0) & (split == s)) for s in ("train", "val", "test"))
        query = val if len(val) >= min_queries or len(test) <= len(val) else test
        if not len(bank) or not len(query):
            raise shards.DataError(f"{dataset_dir}: kNN needs labelled samples in the train and val (or test) splits")
        self.rows, self.n_bank, self.images = np.concatenate([bank, query]), len(bank), None
        self.labels = torch.from_numpy(cls[self.rows])
        if self.rows.size * math.prod(self.dataset.shape) * 2 <= cache_bytes:
            self.images = torch.cat([torch.from_numpy(self.dataset.read_batch(self.rows[s:s + 1024], raw=True)).half()
                                     for s in range(0, len(self.rows), 1024)])
            self.dataset.release()

    def __call__(self, backbone, device):
        """{"knn_acc", "knn_balanced_acc", "knn_macro_f1", "knn_queries"}; the backbone's train/eval mode is kept."""
        was_training = backbone.training
        with torch.no_grad():
            X = extract_features(self.dataset, self.rows, {"x": backbone}, device, self.batch_size,
                                 images=self.images, progress=False)["x"]
        backbone.train(was_training)
        y, n_classes, n = self.labels.to(X.device), int(self.labels.max()) + 1, self.n_bank
        pred = knn_classify(X[:n], y[:n], X[n:], n_classes, self.k, self.temperature).argmax(1)
        m = classification_metrics(y[n:], pred, n_classes)
        return {"knn_acc": m["accuracy"], "knn_balanced_acc": m["balanced_accuracy"], "knn_macro_f1": m["macro_f1"],
                "knn_queries": m["n"]}
