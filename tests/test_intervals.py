"""Intervals (intervals.py): bootstrap coverage, vectorised replicates = the probes' metrics, seeds."""

import torch

from oceansar import intervals
from oceansar import probes


def test_classification_replicates_equal_the_metrics_on_each_resample():
    g = torch.Generator().manual_seed(0)
    y, p = torch.randint(0, 4, (300,), generator=g), torch.randint(0, 4, (300,), generator=g)
    p[:150] = y[:150]
    idx = intervals.bootstrap_indices(300, 20, seed=1)
    reps = intervals.classification_replicates(y, p, 4, idx)
    for b in range(20):
        m = probes.classification_metrics(y[idx[b]], p[idx[b]], 4)
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert abs(reps[key][b].item() - m[key]) < 1e-9, key


def test_regression_replicates_equal_the_metrics_on_each_resample():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(200, generator=g, dtype=torch.float64)
    p = y + 0.3 * torch.randn(200, generator=g, dtype=torch.float64) + 0.1
    idx = intervals.bootstrap_indices(200, 10, seed=2)
    reps = intervals.regression_replicates(y, p, idx)
    for b in range(10):
        m = probes.regression_metrics(y[idx[b]], p[idx[b]])
        for key in ("rmse", "bias", "r2"):
            assert abs(reps[key][b].item() - m[key]) < 1e-9, key


def test_bootstrap_is_seeded():
    assert torch.equal(intervals.bootstrap_indices(50, 5, 3), intervals.bootstrap_indices(50, 5, 3))
    assert not torch.equal(intervals.bootstrap_indices(50, 5, 3), intervals.bootstrap_indices(50, 5, 4))


def test_bootstrap_interval_covers_a_known_accuracy_at_the_nominal_rate():
    # 200 test sets of 400 Bernoulli(0.7) "correct" flags: the 95 % interval must cover 0.7 in ~95 % of them.
    g, covered, trials = torch.Generator().manual_seed(0), 0, 200
    for t in range(trials):
        correct = torch.rand(400, generator=g) < 0.7
        y = torch.zeros(400, dtype=torch.long)
        reps = intervals.classification_replicates(y, torch.where(correct, 0, 1), 2,
                                                   intervals.bootstrap_indices(400, 400, seed=t))
        lo, hi = intervals.percentile(reps["accuracy"])
        covered += lo <= 0.7 <= hi
    assert 0.89 <= covered / trials <= 0.99, covered / trials


def test_t_interval_covers_a_known_mean_at_the_nominal_rate():
    g, covered = torch.Generator().manual_seed(0), 0
    for _ in range(400):
        mean, (lo, hi) = intervals.t_interval(5 + torch.randn(3, generator=g, dtype=torch.float64))
        covered += lo <= 5 <= hi
    assert 0.92 <= covered / 400 <= 0.98, covered / 400


def test_seed_interval_shrinks_as_seeds_are_added():
    # Seeds differ a lot (sd 0.05), the test set little: the half-width must fall with the number of seeds.
    g = torch.Generator().manual_seed(0)
    point = 0.5 + 0.05 * torch.randn(40, generator=g, dtype=torch.float64)
    reps = point[:, None] + 0.005 * torch.randn(1, 500, generator=g, dtype=torch.float64)
    widths = []
    for s in (3, 10, 40):
        _, (lo, hi) = intervals.across_seeds(point[:s], reps[:s])
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2] > 0
    # and never narrower than the test-set part alone
    lo1, hi1 = intervals.percentile(reps.mean(0))
    assert widths[2] >= hi1 - lo1


def test_disjoint():
    assert intervals.disjoint([0, 1], [1.5, 2]) and intervals.disjoint([1.5, 2], [0, 1])
    assert not intervals.disjoint([0, 1], [0.5, 2])
