"""Gaussian random fields and shapes on a square imagette grid, in metres (used by synthetic.py and waves.py).

Grid: pixel coordinates (m) and half-plane wavenumbers (rad/m). field(): a real Gaussian field from complex white
noise shaped by a spectral density (variance per (rad/m)^2, its integral over the plane is the variance), with
the pixel's box average (a sinc transfer) included. The spectra below are unit-integral shapes; line(), sigmoid()
and voronoi() draw the sharp parts of textures.
"""
import math

import numpy as np
import scipy.fft
from scipy.special import erf

class Grid:
    """Pixel coordinates (m) and the half-plane wavenumbers (rad/m) of a square imagette."""

    def __init__(self, size, spacing):
        self.size, self.spacing, self.extent = size, spacing, size * spacing
        c = ((np.arange(size) - (size - 1) / 2) * spacing).astype(np.float32)
        self.x, self.y = c[None, None, :], c[None, :, None]
        fx, fy = np.fft.rfftfreq(size), np.fft.fftfreq(size)  # cycles per pixel
        self.kx = (2 * np.pi * fx / spacing).astype(np.float32)[None, None, :]
        self.ky = (2 * np.pi * fy / spacing).astype(np.float32)[None, :, None]
        self.k = np.hypot(self.kx, self.ky)
        self.transfer2 = ((np.sinc(fy)[:, None] * np.sinc(fx)[None, :]) ** 2).astype(np.float32)[None]
        self.dk2 = (2 * np.pi / self.extent) ** 2
        # pairs of N(0,1) become complex white noise of unit power: x sqrt(1/2); the self-mirrored columns
        # (kx = 0, Nyquist) keep only their real part in irfft2, so they keep full power to stay white
        self.noise_gain = np.where((fx == 0) | (fx == 0.5), 1.0, math.sqrt(0.5)).astype(np.float32)[None, None, :]


def field(z, density, g, gradient=False):
    """Real Gaussian field from white noise z [n,H,Wr,2] (pairs of N(0,1)) shaped by a spectral density
    [n,H,Wr] on the half-plane (variance per (rad/m)^2). Its variance is the density's integral over what the
    grid resolves: a unit-integral density gives unit variance when its scales fit between two pixels and the
    imagette, and fades where they do not (short swell on coarse pixels, a 5 km pattern in a 3 km imagette),
    as in real data. gradient=True also returns d/dx and d/dy (per metre)."""
    power = density * g.transfer2 * np.float32(g.dk2 * g.size ** 2)
    spectrum = z.view(np.complex64)[..., 0] * (np.sqrt(power) * g.noise_gain).astype(np.float32)
    if gradient:
        spectrum = np.stack([spectrum, 1j * g.kx * spectrum, 1j * g.ky * spectrum])
    out = scipy.fft.irfft2(spectrum, s=(g.size, g.size), norm="ortho")
    return tuple(out) if gradient else out


def peak_pair(g, k0, direction_deg, sigma):
    """Unit-integral pair of Gaussian peaks at +-k0 along direction (deg from +x): a real field's spectrum."""
    kx0, ky0 = k0 * np.cos(np.radians(direction_deg)), k0 * np.sin(np.radians(direction_deg))
    plus = np.exp(-((g.kx - kx0) ** 2 + (g.ky - ky0) ** 2) / (2 * sigma ** 2))
    minus = np.exp(-((g.kx + kx0) ** 2 + (g.ky + ky0) ** 2) / (2 * sigma ** 2))
    return (plus + minus) / (4 * np.pi * sigma ** 2)


def ring(g, k0, rel_width):
    """Unit-integral isotropic band around wavenumber k0 (cells, meanders, roughness)."""
    sigma = rel_width * k0
    area = 2 * np.pi * (sigma ** 2 * np.exp(-0.5 / rel_width ** 2)
                        + k0 * sigma * math.sqrt(np.pi / 2) * (1 + erf(1 / (rel_width * math.sqrt(2)))))
    return np.exp(-0.5 * ((g.k - k0) / sigma) ** 2) / area


def lowpass(g, scale):
    """Unit-integral smooth spectrum: features larger than about `scale` metres (blobs, outlines, bends)."""
    return np.exp(-(g.k * scale / (2 * np.pi)) ** 2) * scale ** 2 / (4 * np.pi ** 3)


def oriented(g, k0, across_deg, rel_across, rel_along):
    """Unit-integral pair of bands at +-k0 along across_deg, narrow in the perpendicular direction: parallel
    crests elongated perpendicular to across_deg (streaks, leads)."""
    a = np.radians(across_deg)
    k_across = g.kx * np.cos(a) + g.ky * np.sin(a)
    k_along = -g.kx * np.sin(a) + g.ky * np.cos(a)
    s_across, s_along = rel_across * k0, rel_along * k0
    return (np.exp(-0.5 * ((np.abs(k_across) - k0) / s_across) ** 2 - 0.5 * (k_along / s_along) ** 2)
            / (4 * np.pi * s_across * s_along))


def stretched_lowpass(g, across, along, angle_deg):
    """Unit-integral smooth spectrum of features about `along` m long and `across` m wide, elongated along
    angle_deg: its zero lines are long, sparse, roughly parallel cracks (leads)."""
    a = np.radians(angle_deg)
    k_along = g.kx * np.cos(a) + g.ky * np.sin(a)
    k_across = -g.kx * np.sin(a) + g.ky * np.cos(a)
    return (np.exp(-(k_across * across / (2 * np.pi)) ** 2 - (k_along * along / (2 * np.pi)) ** 2)
            * across * along / (4 * np.pi ** 3))


def unit_mean(m):
    return m / m.mean(axis=(-2, -1), keepdims=True)


def line(dist, width, spacing):
    """Pixel-averaged cross-section (peak 1 at full resolution) of a line `width` m wide at distance `dist`:
    a line thinner than a pixel spreads over the pixel with its area kept, so its contrast drops."""
    w_eff = np.sqrt(width ** 2 + spacing ** 2)
    return (width / w_eff) * np.exp(-(2 * dist / w_eff) ** 2)


def sigmoid(t):
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _hash01(ix, iy, key, salt):
    """Deterministic uniform [0, 1) per integer lattice cell (a 64-bit integer mix), for Voronoi floes."""
    h = ix.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    h = h ^ key ^ np.uint64(salt * 0x165667B19E3779F9 & 0xFFFFFFFFFFFFFFFF)
    for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h = (h ^ (h >> np.uint64(33))) * np.uint64(mult)
    return ((h ^ (h >> np.uint64(33))) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def voronoi(x, y, cell, key):
    """Jittered-grid Voronoi of cell size `cell` (m): distance to the nearest and second-nearest seed, and a
    uniform value attached to the nearest seed. Each lattice cell holds one seed; only the 3x3 neighbouring
    cells can hold a pixel's two nearest, so seeds are tabulated once per cell and gathered 9 times."""
    n = len(x)
    fx, fy = np.floor(x / cell), np.floor(y / cell)              # lattice cell of each pixel (float32)
    lo_x = fx.min(axis=(1, 2), keepdims=True) - 1
    lo_y = fy.min(axis=(1, 2), keepdims=True) - 1
    span = int(max((fx - lo_x).max(), (fy - lo_y).max())) + 2
    cells = np.arange(span)
    jitter_x, jitter_y, values = (
        _hash01(lo_x.astype(np.int64) + cells[None, None, :], lo_y.astype(np.int64) + cells[None, :, None], key,
                salt).astype(np.float32).ravel() for salt in (1, 2, 3))
    # flat table row of each pixel's own cell; a neighbour is a constant offset away
    row = (np.arange(n)[:, None, None] * span * span + ((fy - lo_y) * span + (fx - lo_x)).astype(np.int64))
    at = np.empty_like(row)
    u, v = x / cell - fx, y / cell - fy                          # position inside the cell, in cells
    d1 = np.full(x.shape, np.inf, np.float32)                    # squared distances, in cells^2
    d2, value = d1.copy(), np.zeros(x.shape, np.float32)
    for ox in (-1, 0, 1):
        for oy in (-1, 0, 1):
            np.add(row, oy * span + ox, out=at)
            d = (u - ox - jitter_x.take(at)) ** 2 + (v - oy - jitter_y.take(at)) ** 2
            nearer = d < d1
            d2 = np.minimum(d2, np.maximum(d1, d))
            value = np.where(nearer, values.take(at), value)
            d1 = np.minimum(d1, d)
    return np.sqrt(d1) * cell, np.sqrt(d2) * cell, value
