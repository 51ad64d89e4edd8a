"""Tests of oceansar/physics.py: the hand-crafted baseline features on images whose answer is known."""

import math

import numpy as np
import pytest
import torch

from oceansar import physics
from helpers import sinusoid


pytestmark = pytest.mark.usefixtures("one_thread")


def test_sinusoid_peak_wavelength_and_band():
    size, spacing = 128, 50.0                                  # 6.4 km: frequency bins every 1/6400 m⁻¹
    cases = [(400.0, 0.0), (6400 / 15, math.degrees(math.atan2(9, 12))), (300.0, 90.0), (250.0, 33.0)]
    images = torch.stack([sinusoid(size, spacing, wl, ang) for wl, ang in cases])[:, None]
    feats = physics.physics_features(images, spacing, 36.0)
    col = {name: i for i, name in enumerate(physics.PHYSICS_FEATURES)}
    for (wl, _), row in zip(cases, feats):
        # off-grid wavelengths land on the nearest bin: error at most ~half a bin, 0.5 / (6400 / wl)
        assert row[col["peak_wl_m"]].item() == pytest.approx(wl, rel=0.5 * wl / 6400 + 0.02)
    assert feats[0, col["peak_wl_m"]].item() == pytest.approx(400.0, rel=1e-5)      # exactly on the grid
    assert feats[2, col["band_200_400"]] > 0.95 and feats[3, col["band_200_400"]] > 0.9
    fractions = feats[:, col["band_0_100"]:col["band_4000_inf"] + 1]
    assert torch.allclose(fractions.sum(1), torch.ones(len(cases)), atol=1e-5)
    assert torch.allclose(feats[:, col["incidence"]], torch.full((len(cases),), 36.0))
    # the same pixels read at half the spacing are a wave of half the wavelength
    half = physics.physics_features(images[:1], spacing / 2, 36.0)
    assert half[0, col["peak_wl_m"]].item() == pytest.approx(200.0, rel=1e-5)


def test_intensity_statistics_against_numpy():
    rng = np.random.default_rng(8)
    db = -14 + 10 * np.log10(rng.gamma(4.0, 1 / 4.0, size=(3, 1, 32, 48)))       # 4-look speckle
    feats = physics.physics_features(torch.tensor(db, dtype=torch.float32), 50.0, [20.0, 30.0, 40.0]).numpy()
    lin = 10 ** (db[:, 0] / 10)
    assert np.allclose(feats[:, 0], 10 * np.log10(lin.mean((1, 2))), atol=1e-4)
    assert np.allclose(feats[:, 1], db[:, 0].std((1, 2)), atol=1e-4)
    assert np.allclose(feats[:, 2], lin.var((1, 2)) / lin.mean((1, 2)) ** 2, rtol=1e-4)
    assert np.allclose(feats[:, 2], 0.25, atol=0.05)                         # Gamma(L) speckle: NV = 1/L
    assert np.allclose(feats[:, -1], [20.0, 30.0, 40.0])
    # a cosine of amplitude a dB: the mean linear intensity is I0(a·ln10/10) times the base (Bessel I0)
    wave = physics.physics_features(sinusoid(64, 50.0, 400.0, 0.0)[None, None], 50.0, 30.0)
    assert wave[0, 0].item() == pytest.approx(-15 + 10 * math.log10(np.i0(2 * math.log(10) / 10)), abs=1e-4)
