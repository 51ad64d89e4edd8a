"""Tests of oceansar/augment.py: seeded, batched SAR augmentations that keep the physics."""


import pytest
import torch

from oceansar import augment
from oceansar import config


def test_augmentation_is_seeded_batched_and_physical():
    cfg = config.defaults()
    cfg["train"].update(global_crops_size=32, local_crops_number=3, local_crops_size=16)
    cfg["aug"].update(rot90=True, speckle_prob=0.5, blur_prob=0.5)
    aug = augment.SARAugment(cfg, norm_std=3.0)
    x = torch.randn(6, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert [v.shape for v in a] == [(6, 1, 32, 32)] * 2 + [(6, 1, 16, 16)] * 3
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not torch.equal(a[0], c[0])
    assert all(torch.isfinite(v).all() for v in a)
    # Geometry alone (no photometric jitter): a constant image stays constant, a ramp keeps its range.
    cfg["aug"].update(gain_db=0.0, contrast=0.0, blur_prob=0.0, speckle_prob=0.0)
    geo = augment.SARAugment(cfg, norm_std=3.0)
    flat = geo(torch.full((4, 1, 64, 64), 2.5), torch.Generator().manual_seed(1))
    assert all(torch.allclose(v, torch.full_like(v, 2.5)) for v in flat)
    ramp = torch.linspace(-1, 1, 64).view(1, 1, 1, 64).expand(4, 1, 64, 64).contiguous()
    crops = geo(ramp, torch.Generator().manual_seed(2))
    assert all(v.min() >= -1 - 1e-5 and v.max() <= 1 + 1e-5 for v in crops)
    # Gain jitter: per-crop additive offsets with std gain_db / norm_std.
    cfg["aug"].update(gain_db=3.0)
    shifted = augment.SARAugment(cfg, norm_std=3.0)(torch.zeros(400, 1, 64, 64), torch.Generator().manual_seed(3))
    offsets = torch.cat([v.mean(dim=(1, 2, 3)) for v in shifted])
    assert offsets.std().item() == pytest.approx(1.0, rel=0.1)


def test_gaussian_blur_per_sample_sigma_and_gamma_sampler():
    x = torch.zeros(3, 1, 33, 33)
    x[:, :, 16, 16] = 1.0
    sigma = torch.tensor([0.0, 1.0, 2.0])
    y = augment.gaussian_blur(x, sigma, radius=8)
    assert torch.allclose(y.sum(dim=(1, 2, 3)), torch.ones(3), atol=1e-5)
    assert torch.equal(y[0], x[0])  # sigma 0 is the identity
    d2 = ((torch.arange(33) - 16.0) ** 2).view(1, 1, 1, 33)
    variance = (y * d2).sum(dim=(1, 2, 3))
    assert torch.allclose(variance[1:], sigma[1:] ** 2, rtol=0.02)
    g = augment.sample_gamma(200_000, 4.0, torch.Generator().manual_seed(0), "cpu")
    assert g.min() > 0 and g.mean().item() == pytest.approx(4.0, rel=0.01)
    assert g.var().item() == pytest.approx(4.0, rel=0.03)
