"""The synthetic WV archive: CMOD5.n, speckle statistics, swell spectra, one physical signature per class,
determinism and the class prior. Small imagettes, a few dozen per check: the whole file runs in seconds."""
import numpy as np
import pytest
import torch

from oceansar import fields
from oceansar import physics
from oceansar import probes
from oceansar import synthetic as s
from oceansar import waves

F, G, H, I, J, K, L, M, N, O = range(10)


def make(cls, count=24, size=128, spacing=50.0, seed=11, **kw):
    return s.generate(0, count, image_size=size, pixel_spacing=spacing, seed=seed, force_class=cls, **kw)


def blocks_db(images, b):
    """b x b block means in linear units, back in dB: suppresses speckle and swell, keeps km-scale features."""
    n, h, w = images.shape
    lin = 10 ** (images / 10)
    return 10 * np.log10(lin.reshape(n, h // b, b, w // b, b).mean(axis=(2, 4)))


def background_db(meta):
    """The expected open-ocean level: CMOD5.n plus the noise floor."""
    return 10 * np.log10(s.cmod5n(meta["wind"], meta["wind_dir"], meta["incidence"]) + 10 ** (meta["nesz"] / 10))


def percentile(x, q):
    return np.percentile(x, q, axis=(1, 2))


def periodogram(images, spacing):
    """Power spectrum of the relative intensity fluctuations, with the wavenumbers (rad/m) of its bins."""
    lin = 10 ** (images / 10)
    p = np.abs(np.fft.fft2(lin / lin.mean(axis=(1, 2), keepdims=True) - 1)) ** 2
    k = 2 * np.pi * np.fft.fftfreq(images.shape[-1], spacing)
    return p, k[None, :], k[:, None]


def peak_wavelength(images, spacing, longest=1000.0):
    p, kx, ky = periodogram(images, spacing)
    k = np.hypot(kx, ky)
    p = np.where(k > 2 * np.pi / longest, p, 0)
    return 2 * np.pi / k.ravel()[p.reshape(len(p), -1).argmax(axis=1)]


def swell_peak_ratio(images, spacing, shortest=100.0, longest=600.0):
    """Largest spectral bin of the swell band over the median of its own wavenumber ring: a narrow swell peak
    stands hundreds of times above its ring, a broadband texture about ln(ring size) times."""
    p, kx, ky = periodogram(images, spacing)
    dk = 2 * np.pi / (images.shape[-1] * spacing)
    ring = np.round(np.hypot(kx, ky) / dk).astype(int)
    band = (ring * dk > 2 * np.pi / longest) & (ring * dk < 2 * np.pi / shortest)
    ratios = []
    for q in p:
        medians = np.array([np.median(q[ring == r]) for r in range(ring.max() + 1)])
        ratios.append((q / medians[ring])[band].max())
    return np.array(ratios)


def across_over_along(images, spacing, wind_dir, shortest=600.0, longest=4000.0, half_width=25.0):
    """Spectral energy of 0.6-4 km scales whose wavevector is across the wind, over that along the wind:
    bands elongated along the wind put their energy across it."""
    p, kx, ky = periodogram(images, spacing)
    k, angle = np.hypot(kx, ky), np.degrees(np.arctan2(ky, kx))
    band = (k > 2 * np.pi / longest) & (k < 2 * np.pi / shortest)

    def wedge(direction):
        off = np.abs((angle[None] - direction[:, None, None] + 90) % 180 - 90)
        return (p * ((off < half_width) & band[None])).sum(axis=(1, 2))
    return wedge(wind_dir + 90) / wedge(wind_dir)


# ------------------------------------------------------------------------------------------------ CMOD5.n
CHECK_POINTS = [  # DATA.md: theta, U10, (upwind, crosswind, downwind) dB
    (23.5, 5, (-7.7, -8.9, -7.6)), (23.5, 10, (-4.4, -6.4, -4.1)), (36.5, 5, (-16.9, -19.6, -17.5)),
    (36.5, 10, (-11.6, -16.1, -12.4)), (36.5, 15, (-8.4, -13.3, -9.3))]


@pytest.mark.parametrize("theta,u10,expected", CHECK_POINTS)
def test_cmod5n_check_points(theta, u10, expected):
    got = 10 * np.log10(s.cmod5n(u10, np.array([0.0, 90.0, 180.0]), theta))
    np.testing.assert_allclose(got, expected, atol=0.1)


def test_cmod5n_shape_and_monotone_wind():
    u = np.linspace(3, 25, 45)[:, None]
    sigma = s.cmod5n(u, np.array([0.0, 90.0]), 30.0)
    assert sigma.shape == (45, 2) and (np.diff(sigma, axis=0) > 0).all()
    # the surface model follows CMOD5.n above 3 m/s and sinks towards the noise floor below 2 m/s
    ratio_db = 10 * np.log10(s.surface_sigma0([1.0, 3.0, 10.0], 90.0, 23.5) / s.cmod5n([1.0, 3.0, 10.0], 90.0, 23.5))
    assert ratio_db[0] < -15 and abs(ratio_db[1]) < 0.1 and abs(ratio_db[2]) < 0.01


# ------------------------------------------------------------------------------------------------ radiometry
def test_mean_sigma0_follows_cmod5n():
    images, meta = make(F, count=60, size=64)
    mean_db = 10 * np.log10((10 ** (images / 10)).mean(axis=(1, 2)))
    above_onset = meta["wind"] >= 3.0
    assert above_onset.sum() > 40
    assert np.abs(mean_db - background_db(meta))[above_onset].max() < 0.5


def test_speckle_normalised_variance_is_one_over_looks():
    rng = np.random.default_rng(0)
    for looks in (1.0, 4.0, s.looks_for_spacing(50.0)):
        x = s.speckle(np.full((64, 64, 64), 2.0), looks, rng)
        assert abs(x.mean() / 2.0 - 1) < 0.01
        assert abs(x.var() / x.mean() ** 2 * looks - 1) < 0.03
    assert 50 <= s.looks_for_spacing(50.0) <= 80 and s.looks_for_spacing(2.0) == 1.0


def test_generated_speckle_is_gamma_with_the_spacing_looks():
    # same imagettes with and without speckle: their intensity ratio is the speckle alone
    speckled, _ = make(G, count=8, size=64)
    clean, _ = make(G, count=8, size=64, with_speckle=False)
    ratio = 10 ** ((speckled - clean) / 10)
    assert abs(ratio.mean() - 1) < 0.01
    assert abs(ratio.var() * s.looks_for_spacing(50.0) - 1) < 0.05


def test_noise_floor_and_finite_values():
    images, meta = s.generate(0, 300, image_size=32, pixel_spacing=100.0, seed=2)
    assert images.dtype == np.float32 and np.isfinite(images).all()
    assert ((meta["nesz"] >= s.NESZ_RANGE_DB[0]) & (meta["nesz"] <= s.NESZ_RANGE_DB[1])).all()
    clean, _ = s.generate(0, 300, image_size=32, pixel_spacing=100.0, seed=2, with_speckle=False)
    assert (clean.min(axis=(1, 2)) >= meta["nesz"] - 1e-3).all()   # sigma0 + NESZ never below NESZ


# ------------------------------------------------------------------------------------------------ waves
def test_swell_peak_at_the_drawn_wavelength():
    images, meta = make(F, count=80, size=128)
    hs_swell = np.sqrt(meta["hs"] ** 2 - meta["hs_windsea"] ** 2)
    # one swell system of at least 1 m, long enough for 50 m pixels (a lower one can sink into the background)
    single = (meta["n_swell"] == 1) & (hs_swell >= 1.0) & (meta["swell_wavelength"] >= 4 * 50.0)
    error = np.abs(peak_wavelength(images, 50.0) / meta["swell_wavelength"] - 1)[single]
    assert single.sum() >= 15 and (error < 0.10).mean() >= 0.8


def test_swell_fades_where_pixels_cannot_resolve_it():
    fine, meta = make(F, count=40, size=128, spacing=25.0, with_speckle=False)
    coarse, _ = make(F, count=40, size=16, spacing=200.0, with_speckle=False)
    short = meta["swell_wavelength"] < 300   # under 1.5 coarse pixels
    assert fine.std(axis=(1, 2))[short].mean() > 2 * coarse.std(axis=(1, 2))[short].mean()


def polar_integral(sea, density=waves.elevation_density):
    """m0 of each imagette's drawn spectrum by direct quadrature on a fine polar grid (omega 0.05-60 rad/s)."""
    omega = np.geomspace(0.05, 60.0, 1500)
    k = omega ** 2 / 9.81
    theta = np.linspace(-np.pi, np.pi, 181)[:-1]
    kx, ky = k[:, None] * np.cos(theta), k[:, None] * np.sin(theta)
    weight = (np.gradient(k) * k)[:, None] * (theta[1] - theta[0])
    return (density(kx[None], ky[None], sea) * weight).sum(axis=(1, 2))


def sea_of(cond):
    return {name[4:]: values for name, values in cond.items() if name.startswith("sea_")}


@pytest.mark.parametrize("balanced", [False, True])
def test_hs_is_four_root_m0_of_the_drawn_spectrum(balanced):
    kw = dict(seed=12, class_prior=[0.5, 0.3, 0.2] + [0] * 7, balanced_conditions=balanced)
    cond = s.conditions(0, 24, **kw)
    m0 = polar_integral(sea_of(cond))
    np.testing.assert_allclose(4 * np.sqrt(m0), cond["hs"], rtol=0.02)
    _, meta = s.generate(0, 24, image_size=8, pixel_spacing=100.0, **kw)
    np.testing.assert_array_equal(meta["hs"], cond["hs"])
    assert (cond["sea_hs"][:, 1:] > 0).sum(1).max() == 2 and (meta["n_swell"] == (cond["sea_hs"][:, 1:] > 0).sum(1)).all()


def test_wind_sea_follows_the_jonswap_fetch_law():
    u = np.array([5.0, 10.0, 15.0, 20.0])
    hs, omega = waves.fetch_law(u, np.full(4, 1e9))                      # fully developed: the cap
    np.testing.assert_allclose(omega * u / 9.81, 0.877, rtol=1e-6)       # Pierson-Moskowitz peak
    np.testing.assert_allclose(hs / u ** 2, 0.0246, rtol=0.15)           # PM height, within JONSWAP's 13 %
    chi = np.array([1e2, 1e3, 1e4])
    hs, omega = waves.fetch_law(10.0, chi)
    np.testing.assert_allclose(9.81 ** 2 * (hs / 4) ** 2 / 10.0 ** 4, 1.6e-7 * chi, rtol=1e-6)
    np.testing.assert_allclose(omega * 10.0 / 9.81, 22.0 * chi ** -0.33, rtol=1e-6)
    # the generated wind seas sit on that law: the fetch implied by their height gives their peak period
    cond = s.conditions(0, 300, seed=13, class_prior=[1] + [0] * 9)
    chi = waves.fetch_for_height(cond["wind"], cond["hs_windsea"])
    assert (chi <= waves.CHI_FULLY_DEVELOPED * 1.0001).all() and (chi >= waves.CHI_FULLY_DEVELOPED / 20.01).all()
    np.testing.assert_allclose(cond["windsea_period"], 2 * np.pi / waves.fetch_law(cond["wind"], chi)[1], rtol=1e-3)
    # and the spectrum drawn for them peaks at that period
    sea = {name: values[:5, :1] for name, values in sea_of(cond).items()}
    omega = np.geomspace(0.1, 30.0, 4000)
    k = omega ** 2 / 9.81
    theta = np.linspace(-np.pi, np.pi, 181)
    spectrum = (waves.elevation_density(k[None, :, None] * np.cos(theta), k[None, :, None] * np.sin(theta), sea)
                * (k * np.gradient(k) / np.gradient(omega))[None, :, None]).sum(-1)
    np.testing.assert_allclose(omega[spectrum.argmax(1)], 2 * np.pi / cond["windsea_period"][:5], rtol=0.01)


def log_image_spectrum(images):
    """Periodogram of the natural-log image on the half-plane layout of fields.Grid (rfft2, rows = azimuth)."""
    x = images * (np.log(10) / 10)
    return np.abs(np.fft.rfft2(x - x.mean(axis=(1, 2), keepdims=True))) ** 2


def test_image_azimuth_spectrum_is_cut_off_at_the_drawn_cutoff():
    size, spacing = 128, 50.0
    kw = dict(seed=14, force_class=F)
    images, meta = s.generate(0, 30, image_size=size, pixel_spacing=spacing, with_speckle=False, **kw)
    cond = s.conditions(0, 30, **kw)
    g = fields.Grid(size, spacing)
    sens = s.wind_sensitivity(cond["wind"], cond["wind_dir"], cond["incidence"]).reshape(-1, 1, 1)
    expected = waves.surface_density(g, sea_of(cond), cond["incidence"], cond["gust_std"], sens) * g.transfer2
    observed = log_image_spectrum(images)
    ky2 = np.broadcast_to(g.ky[0] ** 2, observed.shape[1:])
    measured = []
    for obs, exp in zip(observed, expected):   # fit ln(observed / expected) = c - rho^2 ky^2 on well-sampled bins
        use = (exp > 1e-3 * exp.max()) & (ky2 > 0)
        design = np.c_[np.ones(use.sum()), -ky2[use]]
        coef = np.linalg.lstsq(design, np.log(obs[use] / exp[use]), rcond=None)[0]
        measured.append(2 * np.pi * np.sqrt(max(coef[1], 0)))
    measured = np.array(measured)
    visible = (meta["azimuth_cutoff"] > 3 * spacing) & (meta["azimuth_cutoff"] < size * spacing / 4)
    error = np.abs(measured / meta["azimuth_cutoff"] - 1)[visible]
    assert visible.sum() >= 20 and np.median(error) < 0.15 and (error < 0.15).mean() >= 0.7


def test_cutoff_grows_with_orbital_velocity():
    cond = s.conditions(0, 400, seed=15, class_prior=[1] + [0] * 9, balanced_conditions=True)
    lam = cond["azimuth_cutoff"]
    np.testing.assert_allclose(lam, 2 * np.pi * waves.beta(cond["incidence"])
                               * waves.los_velocity_std(sea_of(cond), cond["incidence"]), rtol=1e-5)
    assert 100 < np.median(lam) < 600 and np.corrcoef(lam, np.sqrt(cond["hs"]))[0, 1] > 0.7
    assert 95 < waves.beta(23.5) < 105 and 110 < waves.beta(36.5) < 120     # R / V of Sentinel-1 WV


def swell_only(hs, wavelength, direction, n=1):
    one = lambda v: np.full((n, 2), [0.0, v])   # noqa: E731  (an absent wind sea, then the swell)
    return {"hs": one(hs), "omega_p": np.full((n, 2), np.sqrt(9.81 * 2 * np.pi / wavelength)),
            "direction": one(direction), "spread": np.full((n, 2), 30.0), "gamma": np.full((n, 2), 6.0)}


@pytest.mark.parametrize("incidence", [23.5, 36.5])
def test_range_travelling_swell_is_clearer_than_azimuth_travelling(incidence):
    # Velocity bunching images azimuth-travelling swell (beta k omega) far more strongly than tilt images range
    # swell; the cut-off exp(-(lambda_c / lambda)^2) wins once the swell is shorter than about half lambda_c.
    g = fields.Grid(128, 25.0)
    cases = 0
    for hs in (2.0, 4.0, 6.0, 8.0):
        for wavelength in (100.0, 150.0, 200.0, 250.0):
            contrast = []
            for direction in (0.0, 90.0):
                sea = swell_only(hs, wavelength, direction)
                lam = waves.azimuth_cutoff(sea, [incidence])[0]
                density = waves.wave_image_density(g, sea, [incidence]) * waves.cutoff_transfer(g, sea, [incidence])
                contrast.append((density * g.transfer2).sum() * g.dk2)   # variance of the log modulation
            if wavelength < lam / 2:
                cases += 1
                assert contrast[0] > contrast[1], (hs, wavelength, lam, contrast)
    assert cases >= 6


def test_no_clipping_waves_saturate_in_db():
    # doubling the swell height quadruples the log-modulation variance: nothing caps it
    g = fields.Grid(64, 50.0)
    v = [(waves.wave_image_density(g, swell_only(h, 300.0, 30.0), [30.0]) * g.transfer2).sum() for h in (2.0, 4.0)]
    assert v[1] / v[0] == pytest.approx(4.0, rel=1e-4)


def test_broadband_red_background():
    # the quick-look spectrum of wave imagettes falls with wavenumber (red), far from white speckle
    images, _ = s.generate(0, 40, image_size=64, pixel_spacing=100.0, seed=16, force_class=F)
    p, kx, ky = periodogram(images, 100.0)
    k = np.hypot(kx, ky)
    bins = np.geomspace(2 * np.pi / 3000, 2 * np.pi / 250, 7)
    level = [p[:, (k >= a) & (k < b)].mean() for a, b in zip(bins, bins[1:])]
    slope = np.polyfit(np.log(np.sqrt(bins[1:] * bins[:-1])), np.log(level), 1)[0]
    assert slope < -1.0


def test_physics_baseline_recovers_hs_and_wind():
    # the demo's regression set (64 px at 100 m, 1,200 open-ocean imagettes) and the evaluation's ridge probe
    images, meta = s.generate(0, 1200, image_size=64, pixel_spacing=100.0, seed=2_000_029,
                              class_prior=[0.5, 0.3, 0.2] + [0] * 7, balanced_conditions=True)
    X = physics.physics_features(torch.tensor(images[:, None]), 100.0, torch.tensor(meta["incidence"]))
    order = np.random.default_rng(0).permutation(len(X))
    train, val, test = order[:960], order[960:1020], order[1020:]
    r2 = {}
    for name in ("hs", "wind"):
        y = torch.tensor(meta[name])
        probe = probes.fit_ridge(X[train], y[train], X[val], y[val])
        r2[name] = probes.regression_metrics(y[test], probe.predict(X[test]))["r2"]
    print(f"physics baseline on the regression set: Hs R2 {r2['hs']:.3f}, wind R2 {r2['wind']:.3f}")
    assert r2["hs"] >= 0.6 and r2["wind"] >= 0.75


def test_balanced_conditions_cover_the_ranges():
    _, meta = s.generate(0, 1500, image_size=8, pixel_spacing=100.0, seed=3, class_prior=[0.5, 0.3, 0.2] + [0] * 7,
                         balanced_conditions=True)
    assert meta["wind"].min() < 1.5 and meta["wind"].max() > 19.5 and meta["wind"].max() <= 20
    assert meta["hs"].min() >= 0.5 and meta["hs"].max() <= 10 and meta["hs"].max() > 9.5
    assert abs(np.corrcoef(meta["wind"], meta["hs"])[0, 1]) < 0.15     # labels not predictable from each other
    counts, _ = np.histogram(meta["hs"], bins=5, range=(0.5, 10))
    assert counts.min() > 0.7 * counts.max()
    _, archive = s.generate(0, 1500, image_size=8, pixel_spacing=100.0, seed=3)
    assert 7 < archive["wind"].mean() < 9 and np.corrcoef(archive["wind"], archive["hs"])[0, 1] > 0.3


def test_swell_wavelength_is_deep_water_dispersion():
    _, meta = s.generate(0, 500, image_size=8, pixel_spacing=100.0, seed=4)
    swell = meta["n_swell"] > 0
    assert np.isnan(meta["swell_period"][~swell]).all() and 0.1 < (~swell).mean() < 0.3   # no swell: NaN
    np.testing.assert_allclose(meta["swell_wavelength"][swell], 9.81 * meta["swell_period"][swell] ** 2 / (2 * np.pi),
                               rtol=1e-5)
    assert meta["swell_period"][swell].min() >= 8 and meta["swell_period"][swell].max() <= 18


# ------------------------------------------------------------------------------------------------ class signatures
def test_wind_streaks_are_elongated_along_the_wind():
    images, meta = make(G)
    ratio = across_over_along(images, 50.0, meta["wind_dir"])
    # the isotropic atmospheric texture and the swell under the rolls dilute the ratio of some imagettes
    assert np.median(ratio) > 3 and (ratio > 1.5).mean() >= 0.9
    waves, wmeta = make(F)
    assert 0.5 < np.median(across_over_along(waves, 50.0, wmeta["wind_dir"])) < 2


def test_convective_cells_are_strong_isotropic_with_bright_gust_fronts():
    images, meta = make(H)
    b = blocks_db(images, 4)
    spread = percentile(b, 95) - percentile(b, 5)
    ocean = blocks_db(make(F)[0], 4)
    background = percentile(ocean, 95) - percentile(ocean, 5)
    assert np.median(spread) > np.median(background) + 0.5 and np.median(spread) > 1.5
    assert 0.4 < np.median(across_over_along(images, 50.0, meta["wind_dir"])) < 2.5
    # thin bright fronts: the bright tail reaches further above the median than the dark tail below it
    bright, dark = percentile(b, 99) - percentile(b, 50), percentile(b, 50) - percentile(b, 1)
    assert np.median(bright - dark) > 0.2


@pytest.mark.parametrize("spacing", [50.0, 100.0])
def test_rain_cells_have_bright_arc_and_dark_core(spacing):
    images, meta = make(I, spacing=spacing)
    b = blocks_db(images, 4 if spacing == 50 else 2)
    bright = percentile(b, 99) - background_db(meta)
    dark = background_db(meta) - percentile(b, 1)
    assert ((bright > 1.5) & (dark > 1.5)).mean() >= 0.9


def test_slicks_are_thin_dark_filaments():
    images, meta = make(J)
    b = blocks_db(images, 4)
    depth = percentile(b, 50) - percentile(b, 1)
    assert np.median(depth) > 1.5
    assert (b < percentile(b, 50)[:, None, None] - 3).mean() < 0.05          # thin: a small area
    assert (meta["wind"] >= 2).all() and (meta["wind"] <= 7).all()
    # long filaments along the wind: their energy is across it
    assert np.median(across_over_along(images, 50.0, meta["wind_dir"], shortest=300.0)) > 3


def test_sea_ice_has_no_swell_peak():
    ice, meta = make(K)
    waves, _ = make(F)
    # (the broadband sea under the swell lowers its peak ratio from hundreds to ~100; ice has neither)
    ice_ratio, wave_ratio = np.median(swell_peak_ratio(ice, 50.0)), np.median(swell_peak_ratio(waves, 50.0))
    assert ice_ratio < 25 and wave_ratio > 3 * ice_ratio
    assert (meta["hs"] < 0.6).all() and (np.abs(meta["lat"]) >= 60).all()
    # a mosaic of floes at plausible C-band ice levels, with bright ridges
    b = blocks_db(ice, 4)
    assert -25 < np.median(ice) < -10 and np.median(percentile(b, 95) - percentile(b, 5)) > 2
    assert (ice.max(axis=(1, 2)) - np.median(ice, axis=(1, 2)) > 4).all()


def test_icebergs_stand_out_of_the_clutter():
    images, meta = make(L)
    assert (images.max(axis=(1, 2)) - np.median(images, axis=(1, 2)) >= 10).all()
    assert (np.abs(meta["lat"]) >= 45).all()


def test_low_wind_areas_sit_at_the_noise_floor():
    images, meta = make(M)
    darkest = percentile(blocks_db(images, 4), 10)
    assert (np.abs(darkest - meta["nesz"]) < 1.5).mean() >= 0.9
    assert (meta["wind"] < 5).all()


def test_fronts_step_atmospheric_more_than_oceanic():
    def spread(cls):
        b = blocks_db(make(cls)[0], 4)
        return percentile(b, 95) - percentile(b, 5)
    atmospheric, oceanic, waves = spread(N), spread(O), spread(F)
    assert np.median(atmospheric) > 2.5 and (atmospheric > 1.2).mean() >= 0.9
    assert np.median(waves) < np.median(oceanic) < np.median(atmospheric)


def test_class_signatures_survive_coarse_pixels():
    # textures are in metres: at 200 m pixels rain cells and icebergs still show
    rain, meta = make(I, size=64, spacing=200.0)
    assert np.median(background_db(meta) - percentile(rain, 1)) > 1.5
    bergs, _ = make(L, size=64, spacing=200.0)
    assert np.median(bergs.max(axis=(1, 2)) - np.median(bergs, axis=(1, 2))) > 8


# ------------------------------------------------------------------------------------------------ archive
def test_deterministic_and_independent_of_how_the_archive_is_cut(monkeypatch):
    kw = dict(image_size=32, pixel_spacing=100.0, seed=5)
    a, ma = s.generate(3, 12, **kw)
    b, mb = s.generate(3, 12, **kw)
    np.testing.assert_array_equal(a, b)
    first, m1 = s.generate(3, 5, **kw)
    monkeypatch.setattr(s, "CHUNK_PIXELS", 2 * 32 * 32)   # several chunks inside one call
    rest, m2 = s.generate(8, 7, **kw)
    np.testing.assert_array_equal(np.concatenate([first, rest]), a)
    for key in ma:
        np.testing.assert_array_equal(np.concatenate([m1[key], m2[key]]), ma[key])
    other, _ = s.generate(3, 12, image_size=32, pixel_spacing=100.0, seed=6)
    assert not np.allclose(other, a)


def test_class_prior_is_respected():
    prior = np.array(s.ARCHIVE_PRIOR)
    assert abs(prior.sum() - 1) < 1e-9 and prior[:3].sum() > 0.75 and prior[3:].max() <= 0.05
    n = 2000
    _, meta = s.generate(0, n, image_size=8, pixel_spacing=100.0, seed=7)
    counts = np.bincount(meta["class_idx"], minlength=10)
    assert (np.abs(counts - n * prior) <= 4 * np.sqrt(n * prior * (1 - prior)) + 2).all()
    _, meta = s.generate(0, 300, image_size=8, pixel_spacing=100.0, seed=7, class_prior=[0, 1, 0, 0, 0, 0, 0, 0, 0, 3])
    assert set(np.unique(meta["class_idx"])) == {1, 9}
    _, meta = s.generate(5, 40, image_size=8, pixel_spacing=100.0, seed=7, class_prior=[1] * 10, balanced_classes=True)
    assert (np.bincount(meta["class_idx"], minlength=10) == 4).all()


def test_metadata_columns():
    images, meta = s.generate(0, 50, image_size=16, pixel_spacing=100.0, seed=8)
    assert set(meta) == set(s.META_KEYS) and all(v.shape == (50,) for v in meta.values())
    assert meta["class_idx"].dtype == np.int16
    assert [s.CLASS_NAMES[c] for c in meta["class_idx"]] == list(meta["class_name"])
    wv1 = meta["beam"] == "wv1"
    assert set(meta["beam"]) == {"wv1", "wv2"}
    assert (np.abs(meta["incidence"][wv1] - 23.5) <= 1).all() and (np.abs(meta["incidence"][~wv1] - 36.5) <= 1).all()
    assert (meta["hs"] > 0).all() and (meta["wind"] > 0).all() and (np.abs(meta["lat"]) <= 80).all()
    years = np.array([t[:4] for t in meta["time"]], int)
    assert (years >= 2016).all() and (years <= 2024).all() and all(len(t) == 19 and t[10] == "T" for t in meta["time"])
    empty, meta0 = s.generate(0, 0, image_size=16, pixel_spacing=100.0, seed=8)
    assert empty.shape == (0, 16, 16) and all(len(v) == 0 for v in meta0.values())


@pytest.mark.parametrize("kwargs,match", [
    (dict(start=-1), "start"), (dict(count=2.5), "count"), (dict(image_size=4), "image_size"),
    (dict(pixel_spacing=0.0), "pixel_spacing"), (dict(seed=-3), "seed"), (dict(class_prior=[1, 2]), "class_prior"),
    (dict(class_prior=[0] * 10), "class_prior"), (dict(force_class=10), "force_class")])
def test_bad_arguments(kwargs, match):
    args = dict(start=0, count=2, image_size=16, pixel_spacing=100.0, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        s.generate(args.pop("start"), args.pop("count"), **args)
