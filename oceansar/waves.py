"""Ocean waves as a Sentinel-1 Wave Mode imagette sees them: a directional wave spectrum and its SAR image.

The sea state of an imagette is a few wave systems (arrays [n, S], one column per system; a system of zero
height is absent): system 0 the wind sea, the others swell. Each system is a JONSWAP frequency spectrum with
peak frequency omega_p and peak enhancement gamma, spread in direction as cos^2s((theta - theta0) / 2), scaled
to its significant height: its variance is m0 = hs^2 / 16, so the total Hs = 4 sqrt(m0) = sqrt(sum hs^2).

- Wind sea: the JONSWAP fetch laws (Hasselmann et al. 1973) with chi = g X / U10^2: g^2 m0 / U^4 = 1.6e-7 chi
  and omega_p U / g = 22 chi^-0.33, capped at full development, omega_p U / g = 0.877 (Pierson-Moskowitz),
  reached at chi = CHI_FULLY_DEVELOPED ~ 1.7e4 where Hs = 0.0215 U^2 (PM gives 0.0246 U^2).
- Deep water: omega^2 = g k. On the (range x, azimuth y) wavenumber plane the elevation spectrum is
  F(k) = m0 s(omega / omega_p) / (omega_p C0) * g / (2 omega) * D(theta) / k, which integrates to m0.
- Line-of-sight orbital velocity variance (vertical and range components in quadrature):
  sigma_r^2 = sum m0 omega_p^2 (C2 / C0) [cos^2 inc + sin^2 inc E(cos^2 theta)], C_n the JONSWAP moments.
- Azimuth smearing (velocity bunching): the image power spectrum is multiplied by exp(-(k_az beta sigma_r)^2),
  beta = R / V (slant range over platform velocity), i.e. cut off at lambda_c = 2 pi beta sigma_r. It smears
  everything on the surface, so it applies to the whole sea-surface modulation below.
- Real-aperture and velocity-bunching transfer (per metre of elevation, k_r range, k_a azimuth):
  tilt 4 i k_r cot(inc) / (1 + sin^2 inc) (VV), hydrodynamic 4.5 omega k_r^2 / k (omega - i mu) /
  (omega^2 + mu^2) with mu = 0.5 s^-1, velocity bunching -beta k_a omega (sin(inc) k_r / k + i cos(inc)).
  The image spectrum is the quasi-linear 1/2 (|T(k)|^2 F(k) + |T(-k)|^2 F(-k)) x cut-off.
- Broadband background, cut off in azimuth with the waves: short-wave texture (wave groups, breaking and the
  nonlinear part of velocity bunching, parametrised as a broad isotropic band 100 m - 2 km whose strength grows
  with the wind) and atmospheric texture (wind gusts: a k^-11/3 spectrum of ln U10 with a 3 km outer scale,
  times d ln sigma0 / d ln U). Speckle comes on top in synthetic.py.

The modulation is applied in log intensity (sigma0 x exp(m), renormalised to unit mean): a strong swell makes
the image saturate in dB, never negative, and nothing is clipped.
"""
import math

import numpy as np
from scipy.special import gammaln

from . import fields

G = 9.81
ORBIT_HEIGHT_M, PLATFORM_SPEED = 693e3, 7.59e3        # Sentinel-1: beta = R / V ~ 100 s (WV1), 114 s (WV2)
HYDRO_GAIN, HYDRO_RELAXATION = 4.5, 0.5                # hydrodynamic MTF magnitude and relaxation rate mu (1/s)
WINDSEA_GAMMA, SWELL_GAMMA = 3.3, 6.0                 # JONSWAP peak enhancement: mean JONSWAP; narrow swell
WINDSEA_SPREAD = 4.0                                   # cos^2s spreading exponent of the wind sea (broad)
EPSILON_COEF, OMEGA_COEF, OMEGA_EXP, OMEGA_PM = 1.6e-7, 22.0, -0.33, 0.877
CHI_FULLY_DEVELOPED = (OMEGA_COEF / OMEGA_PM) ** (-1 / OMEGA_EXP)
ATMOSPHERE_OUTER_M, ATMOSPHERE_SLOPE = 3000.0, 11.0 / 3.0


# ------------------------------------------------------------------------------------------------ the spectrum
def fetch_law(u10, chi):
    """Wind-sea Hs (m) and peak angular frequency (rad/s) of JONSWAP's fetch laws at dimensionless fetch chi,
    capped at full development."""
    chi = np.minimum(chi, CHI_FULLY_DEVELOPED)
    hs = 4 * np.sqrt(EPSILON_COEF * chi) * u10 ** 2 / G
    return hs, OMEGA_COEF * chi ** OMEGA_EXP * G / u10


def fetch_for_height(u10, hs):
    """The dimensionless fetch at which the wind sea of u10 reaches hs (the inverse of fetch_law's height)."""
    return (hs * G / (4 * u10 ** 2)) ** 2 / EPSILON_COEF


def jonswap_shape(x, gamma):
    """JONSWAP spectral shape at x = omega / omega_p (peak 1 at x = 1 for gamma = 1), unnormalised."""
    x = np.maximum(x, 0.05)                            # below, exp(-1.25 x^-4) is 0 anyway
    inv4 = (1 / x) ** 2
    inv4 = inv4 * inv4
    sigma2 = np.where(x <= 1, 2 * 0.07 ** 2, 2 * 0.09 ** 2)
    return inv4 / x * np.exp(-1.25 * inv4 + np.log(gamma) * np.exp(-(x - 1) ** 2 / sigma2))


def jonswap_moments(gamma):
    """C0 = int s(x) dx and C2 = int x^2 s(x) dx of the JONSWAP shape (the x^-5 tail beyond 20 analytically)."""
    x = np.linspace(0.3, 20.0, 20000)
    s = jonswap_shape(x, gamma)
    dx = x[1] - x[0]
    return (s.sum() * dx + 20.0 ** -4 / 4, (x ** 2 * s).sum() * dx + 20.0 ** -2 / 2)


def _moments_of(gamma):
    """(C0, C2) of each entry of an array of peak enhancements (computed once per distinct value)."""
    values, inverse = np.unique(gamma, return_inverse=True)
    table = np.array([jonswap_moments(v) for v in values]).reshape(-1, 2)
    return table[inverse.ravel(), 0].reshape(np.shape(gamma)), table[inverse.ravel(), 1].reshape(np.shape(gamma))


def spreading_norm(s):
    """Normalisation of cos^2s(theta / 2) over a full turn: Gamma(s+1) / (2 sqrt(pi) Gamma(s+1/2))."""
    return np.exp(gammaln(s + 1) - gammaln(s + 0.5)) / (2 * math.sqrt(math.pi))


def _system_parts(kx, ky, sea):
    """Per wave system j: its radial density R_j(k) (m^2 per (rad/m)^2 per radian of direction), the cosine of
    the angle between k and its mean direction, and its spreading exponent, all broadcast to [n, ...grid]."""
    k = np.maximum(np.hypot(kx, ky), np.float32(1e-9))
    omega = np.sqrt(np.float32(G) * k)
    radial_common = np.float32(G / 2) / (omega * k)
    parts = []
    for j in range(sea["hs"].shape[1]):   # a loop over the few wave systems, vectorised over imagettes
        col = {name: np.asarray(values[:, j, None, None], np.float32) for name, values in sea.items()}
        if not col["hs"].any():
            continue
        m0_over_c0 = col["hs"] ** 2 / 16 / _moments_of(col["gamma"])[0].astype(np.float32)
        radial = m0_over_c0 / col["omega_p"] * jonswap_shape(omega / col["omega_p"], col["gamma"]) * radial_common
        direction = np.radians(col["direction"])
        cos_delta = (kx * np.cos(direction) + ky * np.sin(direction)) / k
        parts.append((radial, cos_delta, col["spread"]))
    return parts


def _spreading(cos_delta, spread):
    """cos^2s(delta / 2) = ((1 + cos delta) / 2)^s, normalised over a full turn."""
    return spreading_norm(spread).astype(np.float32) * (np.maximum(1 + cos_delta, 0) / 2) ** spread


def elevation_density(kx, ky, sea):
    """Directional elevation spectrum F (m^2 per (rad/m)^2) of the waves travelling towards (kx, ky), rad/m,
    summed over the systems of `sea` (dict of [n, S] arrays hs, omega_p, direction (deg from +x, the look),
    spread, gamma); kx, ky broadcast against [n, 1, 1]. Zero at k = 0."""
    total = sum((radial * _spreading(c, s) for radial, c, s in _system_parts(kx, ky, sea)), np.float32(0))
    return np.where(np.hypot(kx, ky) > 0, total, np.float32(0))


def significant_height(sea):
    """Total Hs = 4 sqrt(m0) of the sea state [n]."""
    return 4 * np.sqrt((sea["hs"] ** 2 / 16).sum(axis=1))


def beta(incidence_deg):
    """R / V (s) of Sentinel-1 at that incidence (flat-Earth slant range from the orbit height)."""
    return ORBIT_HEIGHT_M / np.cos(np.radians(incidence_deg)) / PLATFORM_SPEED


def los_velocity_std(sea, incidence_deg):
    """Standard deviation (m/s) of the line-of-sight orbital velocity of the whole sea state [n]."""
    inc = np.radians(np.asarray(incidence_deg, np.float64))[:, None]
    s = sea["spread"]
    cos2 = 0.5 * (1 + np.cos(2 * np.radians(sea["direction"])) * s * (s - 1) / ((s + 1) * (s + 2)))
    c0, c2 = _moments_of(sea["gamma"])
    ratio = c2 / c0
    var = sea["hs"] ** 2 / 16 * sea["omega_p"] ** 2 * ratio * (np.cos(inc) ** 2 + np.sin(inc) ** 2 * cos2)
    return np.sqrt(var.sum(axis=1))


def azimuth_cutoff(sea, incidence_deg):
    """The azimuth cut-off wavelength lambda_c = 2 pi beta sigma_r (m) [n]."""
    return 2 * np.pi * beta(incidence_deg) * los_velocity_std(sea, incidence_deg)


# ------------------------------------------------------------------------------------------------ SAR imaging
def transfer(kx, ky, incidence_deg, beta_s):
    """Complex SAR modulation transfer (per metre of elevation) of a wave travelling towards (kx, ky):
    tilt + hydrodynamic (real aperture) + velocity bunching. incidence, beta broadcast like [n, 1, 1]."""
    inc = np.radians(incidence_deg)
    k = np.maximum(np.hypot(kx, ky), 1e-9)
    omega = np.sqrt(G * k)
    tilt = 4j * kx / np.tan(inc) / (1 + np.sin(inc) ** 2)
    hydro = HYDRO_GAIN * omega * kx ** 2 / k * (omega - 1j * HYDRO_RELAXATION) / (omega ** 2 + HYDRO_RELAXATION ** 2)
    bunching = -beta_s * ky * omega * (np.sin(inc) * kx / k + 1j * np.cos(inc))
    return tilt + hydro + bunching


def wave_image_density(g, sea, incidence_deg):
    """Quasi-linear image spectrum of the waves alone (before the cut-off), on the grid's half-plane:
    1/2 (|T(k)|^2 F(k) + |T(-k)|^2 F(-k)); F(-k) is the same radial part with the opposite direction."""
    inc = np.asarray(incidence_deg, np.float32).reshape(-1, 1, 1)
    b = beta(inc)
    forward = np.abs(transfer(g.kx, g.ky, inc, b)) ** 2
    backward = np.abs(transfer(-g.kx, -g.ky, inc, b)) ** 2
    total = np.float32(0)
    for radial, c, s in _system_parts(g.kx, g.ky, sea):
        total = total + radial * (forward * _spreading(c, s) + backward * _spreading(-c, s))
    return np.where(g.k > 0, 0.5 * total, np.float32(0)).astype(np.float32)


def _velocity_self_overlap(gamma, spread):
    """J = int s_u(x)^2 d^2x of a unit-variance orbital-velocity spectrum s_u = omega^2 F / var in units of the
    peak wavenumber (x = k / k_p): how concentrated it is. sum of J / k_p^2 is (S_u * S_u)(0) / sigma_u^4."""
    x = np.geomspace(0.2, 40.0, 400)[:, None]
    theta = np.linspace(-np.pi, np.pi, 181)[None, :]
    omega = np.sqrt(x)                                   # in units of omega_p
    s = jonswap_shape(omega, gamma) / (2 * omega) * spreading_norm(spread) * np.abs(np.cos(theta / 2)) ** (2 * spread) / x
    s_u = omega ** 2 * s
    weight = np.gradient(x[:, 0])[:, None] * x * (theta[0, 1] - theta[0, 0])   # k dk dtheta
    return float((s_u ** 2 * weight).sum() / (s_u * weight).sum() ** 2)


def bunching_clutter_density(g, sea, incidence_deg, beta_s):
    """Second-order velocity bunching of the wind sea: the short waves' random azimuth displacements bunch the
    scatterers into a broadband clutter, 1/2 (beta k_a)^4 (S_u * S_u)(k) (the n = 2 term of the nonlinear
    SAR mapping, Hasselmann & Hasselmann 1991). The wind sea's velocity spectrum convolved with itself is a
    plateau of height sigma_u^4 J / k_p^2 out to about k_p: white in range, rising as k_a^4 in azimuth until
    the cut-off (applied by the caller) takes it down, so it peaks at k_a ~ 1.4 / (beta sigma_r)."""
    windsea = {name: values[:, :1] for name, values in sea.items()}
    sigma = los_velocity_std(windsea, incidence_deg).reshape(-1, 1, 1)
    k_p = (windsea["omega_p"][:, 0] ** 2 / G).reshape(-1, 1, 1)
    plateau = sigma ** 4 * _velocity_self_overlap(WINDSEA_GAMMA, WINDSEA_SPREAD) / k_p ** 2
    return 0.5 * (beta_s * g.ky) ** 4 * plateau * np.exp(-(g.k / k_p) ** 2)


def atmosphere_density(g, gust_std, sensitivity):
    """Wind gusts: ln U10 with a k^-11/3 spectrum (outer scale 3 km), as ln sigma0 via d ln sigma0 / d ln U."""
    k0 = 2 * np.pi / ATMOSPHERE_OUTER_M
    p = ATMOSPHERE_SLOPE
    unit = (p - 2) / (2 * np.pi * k0 ** 2) * (1 + (g.k / k0) ** 2) ** (-p / 2)
    return (np.asarray(gust_std).reshape(-1, 1, 1) * sensitivity) ** 2 * unit


def surface_density(g, sea, incidence_deg, gust_std, sensitivity):
    """Spectral density of the sea-surface log-modulation before the azimuth smearing: waves + bunching clutter
    + atmospheric texture, on the grid's half-plane [n, H, Wr]."""
    inc = np.asarray(incidence_deg, np.float64).reshape(-1)
    return (wave_image_density(g, sea, inc) + bunching_clutter_density(g, sea, inc, beta(inc).reshape(-1, 1, 1))
            + atmosphere_density(g, gust_std, sensitivity))


def cutoff_transfer(g, sea, incidence_deg):
    """The azimuth smearing of the image power spectrum, exp(-(k_a beta sigma_r)^2), on the grid [n, H, 1]."""
    inc = np.asarray(incidence_deg, np.float64).reshape(-1)
    rho = (beta(inc) * los_velocity_std(sea, inc)).reshape(-1, 1, 1)
    return np.exp(-(g.ky * rho) ** 2)


def sea_surface_modulation(z, g, sea, incidence_deg, gust_std, sensitivity):
    """Unit-mean multiplicative sigma0 modulation [n, H, W] of the sea surface: waves + short-wave clutter and
    atmospheric texture, all smeared in azimuth by the cut-off of this sea state; z is white noise."""
    density = surface_density(g, sea, incidence_deg, gust_std, sensitivity) * cutoff_transfer(g, sea, incidence_deg)
    return fields.unit_mean(np.exp(fields.field(z, density.astype(np.float32), g)))
