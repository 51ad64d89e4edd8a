"""The physics baseline: hand-crafted SAR statistics every probe row is compared with.

physics_features: mean σ0 (dB of the mean linear intensity), std (dB), normalised variance of the linear
intensity, spectral peak wavelength (≤ PEAK_MAX_M) and energy fractions in BAND_EDGES_M wavelength bands
(Hann-windowed spectrum of the mean-removed dB image), azimuth / range spectral levels in SECTOR_BANDS_M, and
the incidence angle. Torch, on the device of the images.
"""

import math

import torch
import torch.nn.functional as F

BAND_EDGES_M = (0.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 4000.0, math.inf)
PEAK_MAX_M = 1600.0
# wavelength bands (m) of the azimuth / range spectral levels: the azimuth cut-off (which grows with Hs) takes
# the short azimuth scales down first, range keeps them
SECTOR_BANDS_M = ((0.0, 300.0), (300.0, 600.0), (600.0, 1200.0), (1200.0, 3000.0))
PHYSICS_FEATURES = tuple(["mean_db", "std_db", "nv", "peak_wl_m"]
                         + [f"band_{int(a)}_{'inf' if math.isinf(b) else int(b)}"
                            for a, b in zip(BAND_EDGES_M, BAND_EDGES_M[1:])]
                         + [f"spec_{side}_{int(a)}_{int(b)}" for side in ("az", "rg") for a, b in SECTOR_BANDS_M]
                         + ["incidence"])


def _per_image(value, n, name, device):
    """A scalar or per-image value as a float32 [n] tensor."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n or not torch.isfinite(t).all():
        raise ValueError(f"physics_features: {name} must be finite, a scalar or one value per image ({n})")
    return t


def _spectral_layout(H, W, spacing, device):
    """Per frequency bin of an H×W FFT: wavelength (m) [H·W], band one-hot [H·W, bands], peak-search mask, and
    the bin indices of the sectors within 30° of the azimuth axis (rows), then of the range axis, per band."""
    fy, fx = torch.fft.fftfreq(H, device=device)[:, None], torch.fft.fftfreq(W, device=device)[None, :]
    f = torch.sqrt(fy ** 2 + fx ** 2).reshape(-1)                                    # cycles / pixel
    wavelength = spacing / f                                                         # inf at DC
    azimuth = (fy.abs() > fx.abs() * math.tan(math.radians(60))).expand(H, W).reshape(-1)
    range_ = (fx.abs() > fy.abs() * math.tan(math.radians(60))).expand(H, W).reshape(-1)
    in_band = [(wavelength >= lo) & (wavelength < hi) for lo, hi in SECTOR_BANDS_M]
    sectors = [torch.nonzero(b & side).reshape(-1) for side in (azimuth, range_) for b in in_band]
    edges = torch.tensor(BAND_EDGES_M, device=device)
    band = torch.bucketize(wavelength, edges, right=True) - 1
    onehot = F.one_hot(band.clamp_max(len(BAND_EDGES_M) - 2), len(BAND_EDGES_M) - 1).float()
    onehot[0] = 0                                                                    # DC is in no band
    return wavelength, onehot, wavelength > PEAK_MAX_M, sectors


def _sector_levels(power, sectors):
    """log10 of the median spectral level in each sector [n, sectors] (a median: one swell peak does not set
    it, the broadband texture does); an empty sector (a small image) gets the median of the whole spectrum."""
    whole = power.median(1).values
    return torch.log10(torch.stack([power[:, idx].median(1).values if len(idx) else whole for idx in sectors], 1)
                       .clamp_min(1e-12))


def _spectral_features(x_db, layout):
    """Peak wavelength (m) [n], band energy fractions [n, bands] and azimuth / range sector levels [n, 2·bands]
    of a chunk of dB images [n, H, W]."""
    n, H, W = x_db.shape
    wavelength, band_onehot, peak_excluded, sectors = layout
    window = torch.outer(torch.hann_window(H, periodic=False, device=x_db.device),
                         torch.hann_window(W, periodic=False, device=x_db.device))
    # remove the window-weighted mean so the windowed image has exactly zero mean (no DC leakage)
    mean = (x_db * window).sum((1, 2), keepdim=True) / window.sum()
    power = torch.view_as_real(torch.fft.fft2((x_db - mean) * window)).pow(2).sum(-1)     # [n, H, W]
    bands = power.reshape(n, -1) @ band_onehot
    fractions = bands / bands.sum(1, keepdim=True).clamp_min(1e-30)
    # 3×3 box smoothing for the peak search, periodic like the spectrum itself
    smooth = F.avg_pool2d(F.pad(power[:, None], (1, 1, 1, 1), mode="circular"), 3, stride=1)
    smooth = smooth.reshape(n, -1).masked_fill(peak_excluded, -1.0)
    return wavelength[smooth.argmax(1)], fractions, _sector_levels(power.reshape(n, -1) / window.pow(2).sum(), sectors)


def physics_features(images_db, pixel_spacing, incidence, chunk=256):
    """Hand-crafted features [n, len(PHYSICS_FEATURES)] (float32) from raw dB images [n, 1, H, W].

    mean_db = 10·log10 of the mean linear intensity; std_db; nv = var(I)/mean(I)² (1 for single-look speckle);
    peak_wl_m = wavelength of the spectral maximum at <= 1600 m; band_* = energy fractions (DC excluded) in
    wavelength bands: <100 m wind sea and speckle, 100-800 m swell, 800-4000 m wind streaks and convective
    cells, >4000 m rain cells, fronts, low-wind areas and ice; incidence. The spectrum is the periodogram of
    the dB image (so one bright target does not dominate) minus its mean under a 2-D Hann window; the peak is
    searched after a 3×3 smoothing. pixel_spacing: metres, one number (square pixels, as in a shard dataset);
    incidence: degrees, a scalar or [n]. float32, in chunks of `chunk` images, on the images' device."""
    x = torch.as_tensor(images_db)
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[0] == 0 or min(x.shape[2:]) < 3:
        raise ValueError(f"physics_features: expected dB images [n, 1, H, W], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"physics_features: {int((~torch.isfinite(x)).sum())} non-finite pixel values")
    spacing = torch.as_tensor(pixel_spacing, dtype=torch.float32)
    if spacing.numel() != 1 or not spacing.item() > 0 or not math.isfinite(spacing.item()):
        raise ValueError(f"physics_features: pixel_spacing must be one positive number (m), got {pixel_spacing}")
    n, device = x.shape[0], x.device
    inc = _per_image(incidence, n, "incidence", device)
    layout = _spectral_layout(x.shape[2], x.shape[3], spacing.item(), device)
    rows = []
    for s in range(0, n, chunk):                          # chunks bound the FFT memory, vectorised inside
        xc = x[s:s + chunk, 0].float()
        lin = torch.exp(xc * (math.log(10) / 10))        # dB -> linear intensity
        lin_mean = lin.mean((1, 2))
        nv = (lin - lin_mean[:, None, None]).pow(2).mean((1, 2)) / lin_mean ** 2
        peak, fractions, levels = _spectral_features(xc, layout)
        rows.append(torch.cat([torch.stack([10 * torch.log10(lin_mean), xc.std((1, 2), unbiased=False), nv, peak],
                                           1), fractions, levels, inc[s:s + chunk, None]], 1))
    return torch.cat(rows)
