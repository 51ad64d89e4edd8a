"""95 % intervals for evaluation metrics: a seeded bootstrap over test images, and intervals across seeds.

A number from a probe means little without its uncertainty, and two of them can only be told apart when their
intervals say so. evaluate.py uses:
- bootstrap_indices(n, n_boot, seed): [n_boot, n] resampling of the test images, one seeded generator, shared by
  every model of a report so that all rows see the same resamples;
- classification_replicates / regression_replicates: every metric of probes.classification_metrics /
  probes.regression_metrics on each resample at once (vectorised: one bincount for all confusions);
- percentile(samples): the 2.5 / 97.5 % percentile interval of bootstrap replicates;
- across_seeds(point [S], replicates [S, B]): the interval of a mean over S seeds (e.g. random initialisations).
  Two independent sources of noise add up: which test images were drawn (the bootstrap of the seed-mean) and
  which seeds were drawn (Student t over the S per-seed values). Their half-widths are added in quadrature, so
  the interval shrinks as seeds are added and never gets narrower than the test set allows.
- t_interval(values): mean and Student-t interval over independent runs (seeds of a study, paired differences).
"""

import math

import torch
from scipy import stats

LEVEL = 0.95


def bootstrap_indices(n, n_boot, seed):
    """[n_boot, n] int64 indices drawn with replacement from range(n) by a generator seeded with `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (n_boot, n), generator=gen)


def classification_replicates(y_true, y_pred, n_classes, idx):
    """{accuracy, balanced_accuracy, macro_f1: float64 [B]} on each resample idx[b] of (y_true, y_pred).

    Same definitions as probes.classification_metrics: recall averaged over the classes present in the
    resample, F1 over the classes present or predicted."""
    y_true, y_pred = torch.as_tensor(y_true).long().cpu(), torch.as_tensor(y_pred).long().cpu()
    n_boot = idx.shape[0]
    cells = (y_true[idx] * n_classes + y_pred[idx]) + torch.arange(n_boot)[:, None] * n_classes ** 2
    conf = torch.bincount(cells.reshape(-1), minlength=n_boot * n_classes ** 2).view(n_boot, n_classes, n_classes)
    tp = conf.diagonal(dim1=1, dim2=2).double()
    support, predicted = conf.sum(2).double(), conf.sum(1).double()
    present, f1_set = support > 0, (support > 0) | (predicted > 0)
    recall = tp / support.clamp_min(1)
    f1 = 2 * tp / (support + predicted).clamp_min(1)
    return {"accuracy": tp.sum(1) / support.sum(1),
            "balanced_accuracy": (recall * present).sum(1) / present.sum(1),
            "macro_f1": (f1 * f1_set).sum(1) / f1_set.sum(1)}


def regression_replicates(y_true, y_pred, idx):
    """{rmse, bias, r2: float64 [B]} on each resample idx[b]; rows with a non-finite truth are left out first."""
    y_true, y_pred = torch.as_tensor(y_true).double().cpu(), torch.as_tensor(y_pred).double().cpu()
    keep = torch.isfinite(y_true)
    if not keep.all():
        raise ValueError("regression_replicates: give the finite-target rows only (idx indexes them)")
    t, p = y_true[idx], y_pred[idx]
    err = p - t
    ss_tot = (t - t.mean(1, keepdim=True)).pow(2).sum(1)
    return {"rmse": err.pow(2).mean(1).sqrt(), "bias": err.mean(1),
            "r2": torch.where(ss_tot > 0, 1 - err.pow(2).sum(1) / ss_tot.clamp_min(1e-300), torch.nan)}


def percentile(samples, level=LEVEL):
    """[lo, hi]: the central `level` percentile interval of bootstrap replicates (NaNs ignored)."""
    s = torch.as_tensor(samples, dtype=torch.float64)
    s = s[torch.isfinite(s)]
    if s.numel() == 0:
        return [math.nan, math.nan]
    a = (1 - level) / 2
    return torch.quantile(s, torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()


def t_half_width(values, level=LEVEL):
    """Student-t half-width of the mean of `values` (0 for a single value: no spread can be estimated)."""
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.numel() < 2:
        return 0.0
    return float(stats.t.ppf(0.5 + level / 2, v.numel() - 1) * v.std() / math.sqrt(v.numel()))


def t_interval(values, level=LEVEL):
    """(mean, [lo, hi]) of independent values (runs with different seeds, or paired differences)."""
    v = torch.as_tensor(values, dtype=torch.float64)
    mean, half = v.mean().item(), t_half_width(v, level)
    return mean, [mean - half, mean + half]


def across_seeds(point, replicates, level=LEVEL):
    """(mean over seeds, [lo, hi]) of a metric measured for S seeds on the same test set.

    point: [S] the metric per seed; replicates: [S, B] its bootstrap replicates with the same resamples for
    every seed. Half-width = sqrt(h_test^2 + h_seed^2): h_test from the bootstrap of the seed-mean, h_seed the
    Student-t half-width over the S values."""
    point = torch.as_tensor(point, dtype=torch.float64)
    lo, hi = percentile(torch.as_tensor(replicates, dtype=torch.float64).mean(0), level)
    mean = point.mean().item()
    half = math.hypot((hi - lo) / 2, t_half_width(point, level))
    return mean, [mean - half, mean + half]


def disjoint(a, b):
    """True when the intervals a = [lo, hi] and b do not overlap."""
    return a[1] < b[0] or b[1] < a[0]
