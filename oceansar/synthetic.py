"""A physics-based synthetic Sentinel-1 Wave Mode (WV) archive: imagettes of the 10 TenGeoP classes.

The manual
----------
    from oceansar import synthetic
    images, meta = synthetic.generate(0, 1024, image_size=64, pixel_spacing=100.0, seed=0)
    images   float32 [count, H, W], sigma0 in dB (speckled, noise floor included), H = W = image_size
    meta     dict of numpy arrays, one row per imagette:
             class_idx int16 (0..9 = TenGeoP letters F..O), class_name str, beam 'wv1'/'wv2',
             incidence (deg), wind (U10, m/s; area mean where the wind varies), wind_dir (deg, relative to the
             radar look, 0 = wind blowing towards the radar), hs (total significant wave height, m),
             swell_wavelength (m), swell_dir (deg, relative to the look), swell_period (s), lat, lon (deg),
             time (ISO 8601 UTC), nesz (dB, the thermal noise floor of that imagette), hs_windsea (m),
             windsea_period (s), n_swell (0-2; the swell_* columns are NaN without swell), azimuth_cutoff (m).
    synthetic.conditions(0, 1024, seed=0)   the same draws without rendering, wave systems included

Determinism: for given options, imagette i of an archive depends on (seed, i) only. Every imagette draws all of
its randomness (condition uniforms, white-noise fields, speckle) from np.random.default_rng([seed, i]), so
generate(0, 100) equals generate(0, 40) followed by generate(40, 60), whatever the cut into shards. The short
loop that draws those numbers is the only loop over samples; every transform is vectorised over the batch.

Geometry: columns are ground range (the radar looks along +x), rows are azimuth. Every length is in metres and
every texture is built in metres, so a feature keeps its physical size at any pixel spacing. Random fields are
complex white noise shaped in the Fourier domain and include the pixel's box average (a sinc transfer), so
what a coarse pixel cannot resolve (short swell, 50 m slicks) fades out as it would in a decimated imagette.

Physics of one imagette (see ../shared/docs/DATA.md):
- beam WV1 23.5 +- 1 deg or WV2 36.5 +- 1 deg; wind Weibull (shape 2.2, mean 8 m/s: a redundant archive) cut to
  each class's plausible range; `balanced_conditions=True` draws wind uniform in 1-20 m/s and total Hs uniform in
  0.5-10 m instead (regression sets).
- sea state (waves.py, docs/SYNTHETIC.md): a JONSWAP wind sea on the fetch laws + 0-2 swell systems with cos^2s
  spreading; total Hs = 4 sqrt(m0) of that spectrum. SAR imaging in the Fourier domain: tilt + hydrodynamic +
  velocity-bunching transfer, second-order bunching clutter, atmospheric gust texture, all smeared by the
  azimuth cut-off lambda_c = 2 pi beta sigma_r (the orbital velocity of the whole sea state); applied in log
  intensity, never clipped.
- mean sigma0 = CMOD5.n(U10, phi, theta) in linear units; textures multiply it (unit mean where they should not
  change the mean); observed intensity = (sigma0 + NESZ) x Gamma(L, 1/L) speckle; output 10 log10.
- speckle looks L = max(1, (spacing / 6 m)^2): an independent SLC resolution cell is about 6 m x 6 m (4-5 m
  pixels, oversampled), so a 50 m pixel averages ~69 looks, a 100 m pixel ~280.
- classes: streaks (rolls 0.8-3 km, within 15 deg of the wind, ~8 % wind modulation, weaker crosswind); micro
  convective cells (irregular 1-4 km network, bright gust fronts, 10-30 %); rain cells (5-10 km, bright gust
  arc +2..+5 dB, dark core -2..-6 dB, rough); biological slicks (long dark filaments along the wind, 50-500 m
  wide, -3..-10 dB, U 2-7); sea ice (no swell; Voronoi floe mosaic, bright ridges, open branching leads dark or
  bright); icebergs (compact targets +10..+20 dB, 40-600 m); low wind (graded calm patches where U < 2 m/s:
  sigma0 at the noise floor); atmospheric front (a sharp curved wind step: a few dB); oceanic front (always a
  thin bright or dark line, 100-400 m, sides 0.5-2 dB apart).

Below ~2 m/s CMOD5.n is unreliable; rendering uses surface_sigma0 = CMOD5.n x 1 / (1 + (1.8 / U)^10), which
equals CMOD5.n above 3 m/s and sinks to the noise floor in calm water (the short waves need ~2 m/s to grow).

Options: class_prior (10 weights, default ARCHIVE_PRIOR); balanced_classes=True cycles through the classes of
non-zero prior by imagette index (exactly balanced evaluation sets); balanced_conditions=True (regression sets);
a class's physics overrides the draws where they conflict (slicks need 2-7 m/s, pack ice damps the waves).
Test hooks: force_class=k renders only class k; with_speckle=False returns the speckle-free expected
intensity, sigma0 + NESZ, in dB (same imagettes otherwise).
"""
import math

import numpy as np
from scipy.special import ndtri

from . import fields
from . import waves
from .tengeop import CLASS_NAMES

# The real archive is open ocean almost everywhere; rare phenomena are a few percent each (heavy tail).
ARCHIVE_PRIOR = (0.45, 0.25, 0.12, 0.04, 0.02, 0.03, 0.015, 0.04, 0.02, 0.015)

G = 9.81                       # m/s^2
RESOLUTION_CELL_M = 6.0        # side of one independent SLC look on the ground
NESZ_RANGE_DB = (-26.0, -22.0)
BEAM_INCIDENCE = {"wv1": 23.5, "wv2": 36.5}
WIND_WEIBULL_SHAPE, WIND_MEAN = 2.2, 8.0
# Plausible U10 per class (m/s): (archive low, archive high, balanced low, balanced high).
WIND_RANGE = [(2, 25, 1, 20), (3, 20, 2, 20), (3, 18, 2, 20), (5, 20, 5, 20), (2, 7, 2, 7),
              (2, 20, 2, 20), (4, 20, 4, 20), (2, 5, 2, 5), (4, 14, 4, 14), (3, 12, 3, 12)]
TIME_RANGE = (np.datetime64("2016-01-01T00:00:00"), np.datetime64("2025-01-01T00:00:00"))
CHUNK_PIXELS = 1 << 21         # samples rendered together: bounds memory, never changes the result

# The uniforms of one imagette: the shared conditions first, then a block each class renderer reads its own way.
_CONDITIONS = ["class", "beam", "incidence", "wind", "wind_dir", "fetch", "hs_target", "n_swell", "swell_split",
               "period", "swell_dir", "swell_hs", "swell_spread", "period2", "swell2_dir", "swell2_hs",
               "swell2_spread", "gust", "lat", "lon", "hemisphere", "time", "nesz"]
_U = {name: j for j, name in enumerate(_CONDITIONS)}
_CLASS_UNIFORMS = 40


# ------------------------------------------------------------------------------------------------ CMOD5.n
# Hersbach (2010), CMOD5.n: the CMOD5 form refitted to neutral winds. c[1..28]; c[0] unused.
_C = (0.0, -0.6878, -0.7957, 0.3380, -0.1728, 0.0000, 0.0040, 0.1103, 0.0159, 6.7329, 2.7713, -2.2885,
      0.4971, -0.7250, 0.0450, 0.0066, 0.3222, 0.0120, 22.7000, 2.0813, 3.0000, 8.3659, -3.3428, 1.3236,
      6.2437, 2.3893, 0.3249, 4.1590, 1.6930)


def cmod5n(u10, phi_deg, theta_deg):
    """VV C-band sigma0 (linear) for neutral wind u10 (m/s), direction phi relative to the look (0 = upwind,
    wind blowing towards the radar) and incidence theta (deg). Broadcasts numpy arrays."""
    c = _C
    dtype = np.result_type(np.asarray(u10).dtype, np.asarray(theta_deg).dtype, np.float32)  # float32 stays float32
    v = np.maximum(np.asarray(u10, dtype=dtype), 1e-3)
    x = (np.asarray(theta_deg, dtype=dtype) - 40.0) / 25.0
    cos_phi = np.cos(np.radians(phi_deg))
    # isotropic term B0: a saturating function of a2*v, raised to gamma, times a power of ten
    a0 = c[1] + c[2] * x + c[3] * x ** 2 + c[4] * x ** 3
    a1, a2 = c[5] + c[6] * x, c[7] + c[8] * x
    gam = c[9] + c[10] * x + c[11] * x ** 2
    s0 = c[12] + c[13] * x
    s = a2 * v
    g0 = 1.0 / (1.0 + np.exp(-np.maximum(s, s0)))
    # below s0 the logistic is replaced by a power law that meets it at s0 (keeps low winds monotone)
    f = np.where(s < s0, g0 * (np.minimum(s, s0) / s0) ** (s0 * (1.0 - g0)), g0)
    b0 = f ** gam * 10.0 ** (a0 + a1 * v)
    # upwind/downwind asymmetry B1
    b1 = c[14] * (1.0 + x) - c[15] * v * (0.5 + x - np.tanh(4.0 * (x + c[16] + c[17] * v)))
    b1 = b1 / (1.0 + np.exp(0.34 * (v - c[18])))
    # upwind/crosswind anisotropy B2
    y0, n = c[19], c[20]
    y = v / (c[21] + c[22] * x + c[23] * x ** 2) + 1.0
    y = np.where(y < y0, y0 - (y0 - 1.0) / n + (np.maximum(y, 1.0) - 1.0) ** n / (n * (y0 - 1.0) ** (n - 1.0)), y)
    b2 = (-(c[24] + c[25] * x + c[26] * x ** 2) + (c[27] + c[28] * x) * y) * np.exp(-y)
    return b0 * (1.0 + b1 * cos_phi + b2 * (2.0 * cos_phi ** 2 - 1.0)) ** 1.6


def surface_sigma0(u10, phi_deg, theta_deg):
    """The sea-surface model used for rendering: CMOD5.n, tapered below the ~2 m/s onset of the short
    gravity-capillary waves (where CMOD5.n is unreliable and real sigma0 drops to the noise floor):
    x 1 / (1 + (1.8 / U)^10): -0.03 dB at 3 m/s, -1.3 dB at 2 m/s, -8.6 dB at 1.5 m/s, -25 dB at 1 m/s."""
    u = np.maximum(np.asarray(u10, dtype=np.result_type(np.asarray(u10).dtype, np.float32)), 1e-3)
    return cmod5n(u, phi_deg, theta_deg) / (1.0 + (1.8 / u) ** 10)


def wind_sensitivity(u10, phi_deg, theta_deg):
    """d ln sigma0 / d ln U10 of the surface model: turns a wind modulation into a sigma0 modulation."""
    up, down = surface_sigma0(u10 * 1.1, phi_deg, theta_deg), surface_sigma0(u10 / 1.1, phi_deg, theta_deg)
    return (np.log(up / down) / np.log(1.21)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ speckle, noise
def looks_for_spacing(pixel_spacing):
    """Equivalent number of looks of a pixel of that spacing: the independent 6 m SLC cells it averages."""
    return max(1.0, (float(pixel_spacing) / RESOLUTION_CELL_M) ** 2)


def speckle(intensity, looks, rng):
    """Multiplicative L-look speckle: intensity x Gamma(L, 1/L) (unit mean, normalised variance 1/L)."""
    return intensity * rng.standard_gamma(looks, size=np.shape(intensity)) / looks


# ------------------------------------------------------------------------------------------------ conditions
def _draw_classes(u_class, first, prior, balanced_classes, force_class):
    """Class of each imagette: forced, cycled over the classes of non-zero prior (exactly balanced sets), or
    drawn from the prior by inverse CDF."""
    n = len(u_class)
    if force_class is not None:
        return np.full(n, force_class, np.int16)
    present = np.flatnonzero(prior > 0)
    if balanced_classes:
        return present[(first + np.arange(n)) % len(present)].astype(np.int16)
    cdf = np.cumsum(prior) / prior.sum()
    return np.minimum(np.searchsorted(cdf, u_class, side="right"), present[-1]).astype(np.int16)


def _draw_wind(u, class_idx, balanced):
    """U10 inside the class's plausible range: Weibull (archive) or uniform (balanced) by inverse CDF."""
    table = np.asarray(WIND_RANGE, np.float64)[class_idx]
    if balanced:
        return table[:, 2] + u * (table[:, 3] - table[:, 2])
    k = WIND_WEIBULL_SHAPE
    scale = WIND_MEAN / math.gamma(1 + 1 / k)
    lo, hi = [1 - np.exp(-(table[:, j] / scale) ** k) for j in (0, 1)]
    return scale * (-np.log1p(-(lo + u * (hi - lo)))) ** (1 / k)


def _draw_latitude(u_lat, u_hemisphere, class_idx):
    """Open ocean spread evenly over the sphere within +-60 deg; sea ice and icebergs at high latitude."""
    lat = np.degrees(np.arcsin(np.sin(np.radians(60.0)) * (2 * u_lat - 1)))
    north = u_hemisphere < 0.5
    ice = np.where(north, 65 + 15 * u_lat, -72 + 12 * u_lat)    # Arctic / Antarctic pack edge
    berg = np.where(north, 55 + 20 * u_lat, -65 + 20 * u_lat)   # Greenland, Labrador / Southern Ocean
    return np.select([class_idx == 5, class_idx == 6], [ice, berg], lat)


def _swell_period_from_steepness(hs, u):
    """Regression sets: a swell's period tied to its height by a steepness Hs / lambda of 0.004-0.03."""
    wavelength = hs / (0.004 * 7.5 ** u)
    return np.clip(np.sqrt(2 * np.pi * wavelength / G), 8, 18)


def _draw_sea_state(col, wind, wind_dir, class_idx, balanced):
    """Wind sea (fetch law, chi log-uniform over the 20x below full development) + 0-2 swells, as [n, 3] wave
    systems (column 0 the wind sea; a zero height is an absent swell). Balanced: total Hs uniform 0.5-10 m
    whatever the wind: the wind sea is younger (shorter fetch) where it would exceed 90 % of it, swell makes up
    the rest and its period follows its height."""
    n = len(wind)
    n_swell = np.searchsorted([0.2, 0.7], col["n_swell"], side="right")
    n_swell = np.where(class_idx == 0, 1 + (col["n_swell"] < 0.4), n_swell)   # pure waves: 1 or 2 swells
    chi = waves.CHI_FULLY_DEVELOPED * 20.0 ** (col["fetch"] - 1)
    if balanced:
        hs_total = 0.5 + 9.5 * col["hs_target"]
        chi = np.minimum(chi, waves.fetch_for_height(wind, 0.9 * hs_total))
        n_swell = np.maximum(n_swell, 1)
    hs_sea, omega_sea = waves.fetch_law(wind, chi)
    if balanced:
        share = np.where(n_swell == 2, 0.6 + 0.4 * col["swell_split"], 1.0)
        swell_var = np.maximum(hs_total ** 2 - hs_sea ** 2, 0)
        hs1, hs2 = np.sqrt(share * swell_var), np.sqrt((1 - share) * swell_var)
        t1, t2 = _swell_period_from_steepness(hs1, col["period"]), _swell_period_from_steepness(hs2, col["period2"])
    else:
        hs1 = np.clip(1.5 * np.exp(0.5 * ndtri(col["swell_hs"])), 0.2, 8.0)
        hs2 = np.clip(0.8 * np.exp(0.5 * ndtri(col["swell2_hs"])), 0.1, 5.0)
        t1, t2 = np.clip(12.5 + 2.0 * ndtri(col["period"]), 8, 18), 8 + 8 * col["period2"]
    damp = np.where(class_idx == 5, 0.05, 1.0)[:, None]   # pack ice damps the waves
    return {"hs": damp * np.stack([hs_sea, hs1 * (n_swell >= 1), hs2 * (n_swell >= 2)], 1),
            "omega_p": np.stack([omega_sea, 2 * np.pi / t1, 2 * np.pi / t2], 1),
            "direction": np.stack([wind_dir + 180, 360 * col["swell_dir"], 360 * col["swell2_dir"]], 1) % 360,
            "spread": np.stack([np.full(n, waves.WINDSEA_SPREAD), 10 * 6 ** col["swell_spread"],
                                10 * 6 ** col["swell2_spread"]], 1),
            "gamma": np.stack([np.full(n, waves.WINDSEA_GAMMA)] + [np.full(n, waves.SWELL_GAMMA)] * 2, 1)}


def _draw_conditions(u, class_idx, balanced):
    """Every per-imagette condition from its uniforms u [n, K], vectorised (inverse-CDF transforms)."""
    col = {name: u[:, j] for name, j in _U.items()}
    wv2 = col["beam"] >= 0.5
    incidence = np.where(wv2, BEAM_INCIDENCE["wv2"], BEAM_INCIDENCE["wv1"]) + 2 * col["incidence"] - 1
    wind = _draw_wind(col["wind"], class_idx, balanced)
    wind_dir = 360 * col["wind_dir"]
    # annotators label streaks where rolls show, i.e. not crosswind: within 60 deg of up- or downwind
    v = 240 * col["wind_dir"]
    wind_dir = np.where(class_idx == 1, np.where(v < 120, v - 60, v), wind_dir) % 360
    sea = _draw_sea_state(col, wind, wind_dir, class_idx, balanced)
    hs = waves.significant_height(sea)
    swell = sea["hs"][:, 1] > 0
    period = np.where(swell, 2 * np.pi / sea["omega_p"][:, 1], np.nan)
    seconds = (TIME_RANGE[1] - TIME_RANGE[0]).astype(np.int64)
    time = TIME_RANGE[0] + (col["time"] * seconds).astype("timedelta64[s]")
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return {
        "class_idx": class_idx, "class_name": np.asarray(CLASS_NAMES)[class_idx],
        "beam": np.where(wv2, "wv2", "wv1"), "incidence": f32(incidence), "wind": f32(wind),
        "wind_dir": f32(wind_dir), "hs": f32(hs), "swell_wavelength": f32(G * period ** 2 / (2 * np.pi)),
        "swell_dir": f32(np.where(swell, sea["direction"][:, 1], np.nan)), "swell_period": f32(period),
        "lat": f32(_draw_latitude(col["lat"], col["hemisphere"], class_idx)), "lon": f32(360 * col["lon"] - 180),
        "time": np.datetime_as_string(time, unit="s").astype("<U19"), "nesz": f32(NESZ_RANGE_DB[0] + 4 * col["nesz"]),
        "hs_windsea": f32(sea["hs"][:, 0]), "windsea_period": f32(2 * np.pi / sea["omega_p"][:, 0]),
        "n_swell": (sea["hs"][:, 1:] > 0).sum(axis=1).astype(np.int16),
        "azimuth_cutoff": f32(waves.azimuth_cutoff(sea, incidence)),
        # internal (not returned): the wave systems [n, 3] and the gustiness (std of ln U10)
        "gust_std": f32(0.04 + 0.08 * col["gust"]), **{f"sea_{key}": value for key, value in sea.items()},
    }


META_KEYS = ["class_idx", "class_name", "beam", "incidence", "wind", "wind_dir", "hs", "swell_wavelength",
             "swell_dir", "swell_period", "lat", "lon", "time", "nesz", "hs_windsea", "windsea_period", "n_swell",
             "azimuth_cutoff"]


# ------------------------------------------------------------------------------------------------ rendering
class _Scene:
    """The imagettes of one class inside a chunk: numeric conditions as [n,1,1] arrays, their white noise
    z [n, FIELDS_USED[class], H, Wr, 2] (a renderer cannot read a field it did not declare), their class
    uniforms and the grid."""

    def __init__(self, cond, idx, u, z, g):
        self.g, self.z, self.u = g, z, u[idx, len(_CONDITIONS):]
        for name, values in cond.items():
            if values.dtype == np.float32:
                setattr(self, name, values[idx][:, None, None])
        self.sea = {name[4:]: values[idx] for name, values in cond.items() if name.startswith("sea_")}

    def uniform(self, j, lo, hi):
        return (lo + (hi - lo) * self.u[:, j, None, None]).astype(np.float32)

    def log_uniform(self, j, lo, hi):
        return (lo * (hi / lo) ** self.u[:, j, None, None]).astype(np.float32)

    def sign(self, j):
        return np.where(self.u[:, j, None, None] < 0.5, -1.0, 1.0).astype(np.float32)

    def cmod(self, wind=None, wind_dir=None):
        """Mean sigma0 (linear) of the imagettes' own wind, or of a wind (and direction) field."""
        wind, wind_dir = self.wind if wind is None else wind, self.wind_dir if wind_dir is None else wind_dir
        return surface_sigma0(wind, wind_dir, self.incidence).astype(np.float32)

    def wind_sensitivity(self):
        return wind_sensitivity(self.wind, self.wind_dir, self.incidence)

    def sea_surface(self):
        """Waves, short-wave and atmospheric texture as the SAR sees them (waves.py): unit-mean modulation."""
        return waves.sea_surface_modulation(self.z[:, 0], self.g, self.sea, self.incidence, self.gust_std,
                                            self.wind_sensitivity())

    def ocean(self):
        """Open-ocean sigma0 under the class's own features: CMOD5.n x the sea surface."""
        return self.cmod() * self.sea_surface()


def _render_waves(s):
    """Open ocean with nothing but waves (1 or 2 swell systems and the wind sea)."""
    return s.ocean(), s.wind


def _render_streaks(s):
    """Boundary-layer rolls: bands 0.8-3 km apart, elongated within 15 deg of the wind."""
    g = s.g
    spacing = s.log_uniform(0, 800, 3000)
    axis = s.wind_dir + s.uniform(1, -15, 15)
    rolls = fields.field(s.z[:, 1], fields.oriented(g, 2 * np.pi / spacing, axis + 90, 0.4, 0.1), g)
    crosswind = 0.25 + 0.75 * np.cos(np.radians(s.wind_dir)) ** 2   # 3-10x weaker seen crosswind
    onset = np.clip(s.wind - 2.0, 0.0, 1.0)                          # no rolls below ~2 m/s
    a_wind = s.uniform(2, 0.045, 0.115) * crosswind * onset
    m = fields.unit_mean(np.maximum(1 + a_wind * rolls, 0.2) ** s.wind_sensitivity())
    return s.ocean() * m, s.wind


def _render_cells(s):
    """Micro-convective cells: an irregular (warped Voronoi) network of 1-4 km cells of uneven brightness,
    bright gust fronts along parts of their edges where the downdraft outflows meet, 10-30 % modulation."""
    g = s.g
    size = s.log_uniform(0, 1000, 4000)
    warp = fields.field(s.z[:, 1], fields.lowpass(g, size), g) * 0.35 * size
    key = (s.u[:, 2, None, None] * 2.0 ** 53).astype(np.uint64)
    d1, d2, value = fields.voronoi(g.x + warp, g.y + np.roll(warp, g.size // 2, axis=-1), size, key)
    gusty = fields.sigmoid(3 * np.roll(warp / (0.35 * size), g.size // 2, axis=-2) + 1)   # fronts in segments
    front = fields.line((d2 - d1) / 2, s.log_uniform(3, 150, 400), g.spacing) * gusty
    ln_mod = s.uniform(1, 0.1, 0.3) * (3.0 * front + 2.0 * (value - 0.5) - 0.6 * np.exp(-(d1 / (0.3 * size)) ** 2))
    return s.ocean() * fields.unit_mean(np.exp(ln_mod)), s.wind


def _render_rain(s):
    """A 5-10 km rain cell: bright gust-front arc on one side, dark damped core, rough texture inside."""
    g = s.g
    radius = s.uniform(0, 2500, 5000)
    psi = np.radians(s.uniform(1, 0, 360))
    # place a point of the arc inside the imagette, so that arc and core both show
    cx = s.uniform(2, -0.2, 0.2) * g.extent - radius * np.cos(psi)
    cy = s.uniform(3, -0.2, 0.2) * g.extent - radius * np.sin(psi)
    outline = 1 + 0.08 * fields.field(s.z[:, 2], fields.lowpass(g, 3000.0), g)
    r = np.hypot(g.x - cx, g.y - cy) * outline
    width = s.uniform(4, 0.1, 0.2) * radius
    facing = (1 + np.cos(np.arctan2(g.y - cy, g.x - cx) - psi)) / 2
    arc = np.exp(-((r - radius) / width) ** 2) * facing ** s.uniform(5, 2, 6)
    core = fields.sigmoid(-(r - 0.7 * radius) / (0.06 * radius))
    rough = fields.field(s.z[:, 1], fields.ring(g, 2 * np.pi / s.uniform(6, 150, 400), 0.5), g)
    db = s.uniform(7, 2, 5) * arc - s.uniform(8, 2, 6) * core + s.uniform(9, 0.5, 1.5) * rough * core
    return s.ocean() * 10 ** (db / 10), s.wind


def _render_slicks(s):
    """Surfactant filaments: long zero lines of a field stretched along the wind (within 20 deg: currents and
    Langmuir circulation align them), 50-500 m wide, damping 3-10 dB, in patches."""
    g = s.g
    along = s.wind_dir + s.uniform(4, -20, 20)
    stretch = fields.oriented(g, 2 * np.pi / s.log_uniform(0, 800, 3000), along + 90, 0.5, 0.07)
    f, fx, fy = fields.field(s.z[:, 1], stretch, g, gradient=True)
    dist = np.abs(f) / np.maximum(np.hypot(fx, fy), 1e-9)   # distance to the zero line, metres
    patches = fields.sigmoid(4 * (fields.field(s.z[:, 2], fields.lowpass(g, 3000.0), g) - s.uniform(2, -0.8, 0.2)))
    damping = 1 - 10 ** (-s.uniform(3, 3, 10) / 10)
    return s.ocean() * (1 - damping * fields.line(dist, s.log_uniform(1, 50, 500), g.spacing) * patches), s.wind


def _render_sea_ice(s):
    """Pack ice: no waves; a warped Voronoi floe mosaic of piecewise-constant sigma0, bright pressure ridges
    along floe edges, long leads of dark calm water or bright wind-roughened water."""
    g = s.g
    floe = s.log_uniform(0, 300, 3000)
    warp = fields.field(s.z[:, 1], fields.lowpass(g, floe), g) * 0.3 * floe   # irregular floe edges
    key = (s.u[:, 1, None, None] * 2.0 ** 53).astype(np.uint64)
    x = g.x + warp
    y = g.y + np.roll(warp, g.size // 2, axis=-1)                 # a shifted copy: nearly independent
    d1, d2, value = fields.voronoi(x, y, floe, key)
    level_db = (s.uniform(2, -19, -13) - 0.3 * (s.incidence - 23.5)) + s.uniform(3, 1.5, 4) * (2 * value - 1)
    ridged = fields.sigmoid(3 * np.roll(warp / (0.3 * floe), g.size // 2, axis=-2))
    ridge_db = s.uniform(4, 3, 6) * fields.line((d2 - d1) / 2, s.log_uniform(5, 30, 120), g.spacing) * ridged
    rough = fields.unit_mean(np.exp(0.2 * fields.field(s.z[:, 0], fields.ring(g, 2 * np.pi / 250.0, 0.5), g)))
    ice = 10 ** ((level_db + ridge_db) / 10) * rough
    has_leads = (s.u[:, 8, None, None] < 0.7).astype(np.float32)
    lead = has_leads * np.maximum(_leads(s, 2, s.log_uniform(7, 2000, 8000), s.uniform(6, 0, 180), 11),
                                  _leads(s, 3, s.log_uniform(12, 800, 3000), s.uniform(6, 40, 140) + s.uniform(13, 0, 1), 14))
    water = np.where(s.u[:, 10, None, None] < 0.5, np.float32(10 ** -2.8), s.cmod())  # calm or rough
    return ice * (1 - lead) + water * lead, s.wind


def _leads(s, field, gap, angle, j):
    """Open cracks: zero lines of a field stretched along `angle` (about `gap` m apart), kept only where a
    second, smooth field is positive, so each lead ends somewhere in the pack; two families of different
    spacing and direction (the second at 40-140 deg to the first) branch off and cross each other."""
    g = s.g
    lf, lfx, lfy = fields.field(s.z[:, field], fields.stretched_lowpass(g, gap, 4 * gap, angle), g, gradient=True)
    open_ends = fields.sigmoid(6 * np.roll(lf / (lf.std(axis=(-2, -1), keepdims=True) + 1e-9), g.size // 3, axis=-1)
                               + s.uniform(j + 1, 0, 4) - 1)
    return fields.line(np.abs(lf) / np.maximum(np.hypot(lfx, lfy), 1e-9), s.log_uniform(j, 50, 400), g.spacing) * open_ends


def _render_icebergs(s, max_count=6):
    """1-6 compact targets 40-600 m, +10..+20 dB over the sea clutter (the primary one >= 150 m, >= 12 dB)."""
    g = s.g
    ocean = s.ocean()
    clutter = ocean.mean(axis=(-2, -1), keepdims=True) + 10 ** (s.nesz / 10)
    count = 1 + np.floor(s.u[:, 0, None, None] * max_count)
    pixel2 = g.spacing ** 2 / (2 * np.pi)   # a pixel's box average ~ Gaussian blur of that variance
    excess = np.zeros_like(ocean)
    for j in range(max_count):   # a loop over targets, vectorised over imagettes and pixels
        c = 1 + 6 * j
        size = s.log_uniform(c, 150, 600) if j == 0 else s.log_uniform(c, 40, 300)
        contrast_db = s.uniform(c + 1, 12, 20) if j == 0 else s.uniform(c + 1, 10, 20)
        dx = g.x - s.uniform(c + 2, -0.45, 0.45) * g.extent
        dy = g.y - s.uniform(c + 3, -0.45, 0.45) * g.extent
        aspect, turn = s.uniform(c + 4, 1, 2.5), np.radians(s.uniform(c + 5, 0, 180))
        a2 = (size / 2) ** 2 * aspect / 2                      # Gaussian of the target's area
        b2 = (size / 2) ** 2 / aspect / 2
        along, across = dx * np.cos(turn) + dy * np.sin(turn), -dx * np.sin(turn) + dy * np.cos(turn)
        peak = np.sqrt(a2 * b2 / ((a2 + pixel2) * (b2 + pixel2)))
        shape = peak * np.exp(-along ** 2 / (2 * (a2 + pixel2)) - across ** 2 / (2 * (b2 + pixel2)))
        excess += (j < count) * (10 ** (contrast_db / 10) - 1) * shape
    return ocean + clutter * excess, s.wind


def _quantile(f, q):
    """Per-imagette quantile q [n,1,1] of f [n,H,W]."""
    flat = np.sort(f.reshape(len(f), -1), axis=1)
    rank = np.round(q.reshape(-1, 1) * (flat.shape[1] - 1)).astype(np.int64)
    return np.take_along_axis(flat, rank, axis=1)[:, :, None]


def _render_low_wind(s):
    """Calm blobs of several km (U < 2 m/s: sigma0 sinks to the noise floor) in a light breeze."""
    g = s.g
    f = fields.field(s.z[:, 1], fields.lowpass(g, s.log_uniform(0, 1500, 5000)), g)
    threshold = _quantile(f, 1 - s.uniform(1, 0.35, 0.8))        # the calm covers 35-80 % of the imagette
    # a soft, graded edge: the wind falls over ~a third of the field's spread, not in one step
    calm = fields.sigmoid((f - threshold) / (s.uniform(3, 0.25, 0.5) * f.std(axis=(-2, -1), keepdims=True) + 1e-6))
    inner = s.uniform(2, 0.3, 1.2) * np.maximum(1 + 0.3 * fields.field(s.z[:, 2], fields.lowpass(g, 800.0), g), 0.2)
    wind = s.wind * (1 - calm) + inner * calm
    return s.cmod(wind) * s.sea_surface(), wind.mean(axis=(-2, -1))


def _front_distance(s, j):
    """Signed distance (m) to a gently bent line crossing the imagette (class uniforms j..j+2)."""
    g = s.g
    normal = np.radians(s.uniform(j, 0, 360))
    bend = s.uniform(j + 2, 0, 0.12) * g.extent * fields.field(s.z[:, 1], fields.lowpass(g, 6000.0), g)
    return g.x * np.cos(normal) + g.y * np.sin(normal) - s.uniform(j + 1, -0.25, 0.25) * g.extent + bend


def _render_atmospheric_front(s):
    """Two air masses: the wind changes by a factor 1.5-2.5 (and turns) across a 100 m-1 km wide front."""
    side = fields.sigmoid(4 * _front_distance(s, 0) / s.log_uniform(3, 100, 1000))
    other = np.clip(s.wind * s.uniform(4, 1.5, 2.5) ** s.sign(5), 1.5, 25)
    wind = s.wind + (other - s.wind) * side
    wind_dir = s.wind_dir + s.uniform(6, -40, 40) * side
    return s.cmod(wind, wind_dir) * s.sea_surface(), wind.mean(axis=(-2, -1))


def _render_oceanic_front(s):
    """A current or temperature front: sides 0.5-2 dB apart and always the thin bright or dark line of the
    current shear along it (100-400 m wide, 2-5 dB: visible at 100 m pixels)."""
    dist = _front_distance(s, 0)
    step = s.sign(3) * s.uniform(4, 0.5, 2.0) * (fields.sigmoid(4 * dist / s.log_uniform(5, 100, 400)) - 0.5)
    line = s.sign(6) * s.uniform(7, 2.0, 5.0) * fields.line(dist, s.log_uniform(8, 100, 400), s.g.spacing)
    return s.ocean() * 10 ** ((step + line) / 10), s.wind


FIELDS_USED = (1, 2, 2, 3, 3, 4, 1, 3, 2, 2)   # white-noise fields each renderer reads (z[:, 0..])
RENDERERS = [_render_waves, _render_streaks, _render_cells, _render_rain, _render_slicks, _render_sea_ice,
             _render_icebergs, _render_low_wind, _render_atmospheric_front, _render_oceanic_front]


# ------------------------------------------------------------------------------------------------ generate
def _draw_uniforms(seed, first, n):
    """One generator per imagette, seeded by (seed, index), and its condition uniforms: they are drawn first."""
    rngs = [np.random.default_rng([seed, first + j]) for j in range(n)]
    return rngs, np.stack([r.random(len(_CONDITIONS) + _CLASS_UNIFORMS) for r in rngs]).reshape(n, -1)


def _draw_noise(rngs, class_idx, size, looks, with_speckle):
    """Then each imagette's white-noise fields (only as many as its class uses) and its speckle. The loop only
    fills buffers, a few calls per imagette; all the work on them is vectorised."""
    n = len(rngs)
    noise = np.zeros((n, max(FIELDS_USED), size, size // 2 + 1, 2), np.float32)
    gamma = np.empty((n, size, size), np.float32) if with_speckle else None
    for j, rng in enumerate(rngs):
        rng.standard_normal(dtype=np.float32, out=noise[j, :FIELDS_USED[class_idx[j]]])
        if with_speckle:
            rng.standard_gamma(looks, dtype=np.float32, out=gamma[j])
    return noise, (gamma / np.float32(looks) if with_speckle else None)


def _check_arguments(start, count, image_size, pixel_spacing, seed, class_prior, force_class):
    for name, value, lo in (("start", start, 0), ("count", count, 0), ("seed", seed, 0), ("image_size", image_size, 8)):
        if not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"synthetic.generate: {name} must be an integer >= {lo}, got {value!r}")
    if not 0.5 <= float(pixel_spacing) <= 5000:
        raise ValueError(f"synthetic.generate: pixel_spacing must be in [0.5, 5000] m, got {pixel_spacing!r}")
    prior = np.asarray(ARCHIVE_PRIOR if class_prior is None else class_prior, dtype=np.float64)
    if prior.shape != (10,) or not np.isfinite(prior).all() or (prior < 0).any() or prior.sum() <= 0:
        raise ValueError(f"synthetic.generate: class_prior must be 10 non-negative numbers with a positive sum, "
                         f"got {class_prior!r}")
    if force_class is not None and force_class not in range(10):
        raise ValueError(f"synthetic.generate: force_class must be a class index 0..9, got {force_class!r}")
    return prior


def conditions(start, count, *, seed, class_prior=None, balanced_conditions=False, balanced_classes=False,
               force_class=None):
    """The physical state of imagettes start..start+count-1 without rendering them: the meta columns plus the
    internal ones (sea_hs, sea_omega_p, sea_direction, sea_spread, sea_gamma: the wave systems [n, 3] of
    waves.py, column 0 the wind sea; gust_std). Same draws as generate() (before a class edits the wind)."""
    prior = _check_arguments(start, count, 8, 100.0, seed, class_prior, force_class)
    _, u = _draw_uniforms(seed, start, count)
    class_idx = _draw_classes(u[:, _U["class"]], start, prior, balanced_classes, force_class)
    return _draw_conditions(u, class_idx, balanced_conditions)


def generate(start, count, *, image_size, pixel_spacing, seed, class_prior=None, balanced_conditions=False,
             balanced_classes=False, force_class=None, with_speckle=True):
    """Imagettes start..start+count-1 of the synthetic archive `seed`: (images float32 [count, H, W] in dB,
    meta dict of numpy arrays, see the module docstring). class_prior: 10 weights (default ARCHIVE_PRIOR);
    balanced_classes: cycle through the classes of non-zero prior by index instead (exactly balanced sets);
    balanced_conditions: wind uniform 1-20 m/s and Hs uniform 0.5-10 m (within each class's physics)."""
    prior = _check_arguments(start, count, image_size, pixel_spacing, seed, class_prior, force_class)
    g = fields.Grid(image_size, float(pixel_spacing))
    looks = looks_for_spacing(pixel_spacing)
    images = np.empty((count, image_size, image_size), np.float32)
    parts = []
    chunk = max(1, CHUNK_PIXELS // image_size ** 2)
    for c0 in range(0, count, chunk):   # chunks bound memory only: imagette i depends on (seed, i) alone
        n = min(chunk, count - c0)
        rngs, u = _draw_uniforms(seed, start + c0, n)
        class_idx = _draw_classes(u[:, _U["class"]], start + c0, prior, balanced_classes, force_class)
        z, gamma = _draw_noise(rngs, class_idx, image_size, looks, with_speckle)
        cond = _draw_conditions(u, class_idx, balanced_conditions)
        sigma0 = np.empty((n, image_size, image_size), np.float32)
        for k in np.unique(class_idx):   # a loop over at most 10 classes
            idx = np.flatnonzero(class_idx == k)
            sigma0[idx], wind = RENDERERS[k](_Scene(cond, idx, u, z[idx, :FIELDS_USED[k]], g))
            cond["wind"][idx] = np.ravel(wind)
        intensity = sigma0 + 10 ** (cond["nesz"][:, None, None] / 10)
        images[c0:c0 + n] = 10 * np.log10(intensity * gamma if with_speckle else intensity)
        parts.append(cond)
    if not parts:   # count == 0: empty columns of the right types
        parts.append(_draw_conditions(np.zeros((0, len(_CONDITIONS) + _CLASS_UNIFORMS)), np.zeros(0, np.int16), False))
    return images, {k: np.concatenate([p[k] for p in parts]) for k in META_KEYS}
