"""kNN on hand-crafted features: standardised with train-split statistics (fair physics baseline)."""

import torch

from oceansar import probes


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
    ia, _ = probes.knn_neighbours(a[0], a[1], k=10)
    ib, _ = probes.knn_neighbours(b[0], b[1], k=10)
    assert torch.equal(ia, ib)
    # without standardisation the largest column decides the neighbours
    ic, _ = probes.knn_neighbours(X[tr] * scale, X[te] * scale, k=10)
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
    raw = probes.classification_probes(*parts, 3, grid=[1e-3])
    std = probes.classification_probes(*parts, 3, grid=[1e-3], standardise_knn=True)
    assert torch.equal(raw["linear"]["pred"], std["linear"]["pred"])    # the linear probe standardises anyway
    assert std["knn"]["accuracy"] > raw["knn"]["accuracy"]
