"""The synthetic WV archive: CMOD5.n, speckle statistics, swell spectra, one physical signature per class,
determinism and the class prior. Small imagettes, a few dozen per check: the whole file runs in seconds."""
import numpy as np
import pytest

import synthetic as s

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
    images, meta = make(F, count=60, size=128)
    resolved = meta["swell_wavelength"] >= 4 * 50.0   # shorter swell is averaged out by 50 m pixels
    error = np.abs(peak_wavelength(images, 50.0) / meta["swell_wavelength"] - 1)[resolved]
    assert resolved.sum() >= 40 and (error < 0.10).mean() >= 0.9


def test_swell_fades_where_pixels_cannot_resolve_it():
    fine, meta = make(F, count=40, size=128, spacing=25.0, with_speckle=False)
    coarse, _ = make(F, count=40, size=16, spacing=200.0, with_speckle=False)
    short = meta["swell_wavelength"] < 300   # under 1.5 coarse pixels
    assert fine.std(axis=(1, 2))[short].mean() > 3 * coarse.std(axis=(1, 2))[short].mean()


def test_azimuth_cutoff_removes_azimuth_travelling_waves():
    images, _ = make(F, count=60, size=128, with_speckle=False)
    p, kx, ky = periodogram(images, 50.0)
    p = np.where(np.hypot(kx, ky) > 2 * np.pi / 1000, p, 0)
    # swell directions are uniform, so without the cut-off both sums would be about equal
    assert (p * ky ** 2).sum() < 0.5 * (p * kx ** 2).sum()


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
    np.testing.assert_allclose(meta["swell_wavelength"], 9.81 * meta["swell_period"] ** 2 / (2 * np.pi), rtol=1e-5)
    assert meta["swell_period"].min() >= 8 and meta["swell_period"].max() <= 18


# ------------------------------------------------------------------------------------------------ class signatures
def test_wind_streaks_are_elongated_along_the_wind():
    images, meta = make(G)
    ratio = across_over_along(images, 50.0, meta["wind_dir"])
    assert (ratio > 3).mean() >= 0.9
    waves, wmeta = make(F)
    assert 0.5 < np.median(across_over_along(waves, 50.0, wmeta["wind_dir"])) < 2


def test_convective_cells_are_strong_and_isotropic():
    images, meta = make(H)
    spread = percentile(blocks_db(images, 4), 95) - percentile(blocks_db(images, 4), 5)
    waves, _ = make(F)
    flat = percentile(blocks_db(waves, 4), 95) - percentile(blocks_db(waves, 4), 5)
    assert np.median(spread) > 2 * np.median(flat) and np.median(spread) > 1.5
    assert 0.4 < np.median(across_over_along(images, 50.0, meta["wind_dir"])) < 2.5


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


def test_sea_ice_has_no_swell_peak():
    ice, meta = make(K)
    waves, _ = make(F)
    assert np.median(swell_peak_ratio(ice, 50.0)) < 40 < 100 < np.median(swell_peak_ratio(waves, 50.0))
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
