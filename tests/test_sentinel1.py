"""Real Sentinel-1 readers on small real-format fixtures: calibration and noise removal give known sigma0, area
averaging matches a brute-force reference, zips read like folders, netCDF namings agree, TenGeoP labels/splits,
the two real OCN files give DATA.md's values, and every kind of damage raises a one-line InputError."""

import os
import zipfile

import numpy as np
import tifffile
import pytest

from oceansar import config
from oceansar import imagette
from oceansar import ocn
from oceansar import safe
from oceansar import sentinel1 as s1
from oceansar import shards
import s1_fixtures as fx


def data_cfg(source, folder, **kw):
    cfg = config.defaults()["data"]
    cfg.update(source=source, input=str(folder), **kw)
    return cfg


def read_all(cfg, labels=None):
    return [s1.read_item(it, cfg, labels or {}) for it in s1.list_inputs(cfg)]


def constant_dn(lines, samples, i=300, q=400):
    return np.full((lines, samples), i + 1j * q)  # |DN|^2 = 250000


def overlap_matrix(edges, n):
    """Brute-force reference of the area weights: loops, no cleverness."""
    m = np.zeros((len(edges) - 1, n))
    for k in range(len(edges) - 1):
        for j in range(n):
            m[k, j] = max(0.0, min(edges[k + 1], j + 1) - max(edges[k], j))
    return m


@pytest.mark.parametrize("factor", [0.7, 1.0, 2.3, 24.39])
def test_area_weights_match_brute_force(factor):
    rng = np.random.default_rng(0)
    x = rng.random((60, 5))
    edges = imagette.output_edges(60, factor, 100) if factor > 1 else 3.3 + factor * np.arange(40)
    ref = overlap_matrix(edges, 60) @ x
    np.testing.assert_allclose(imagette.sum_rows(x.astype(np.float32), edges), ref, rtol=1e-5)
    np.testing.assert_allclose(imagette.area_matrix(edges, 60).toarray(), overlap_matrix(edges, 60), atol=1e-6)


# ---------------------------------------------------------------- SAFE: calibration, noise, geometry
@pytest.mark.parametrize("variant", ["range", "legacy"])
def test_calibration_and_noise_known_sigma0(tmp_path, variant):
    fx.make_safe(tmp_path / "in", n_imagettes=1, dn=constant_dn(300, 400), amplitude=500.0, noise=50000.0,
                 noise_variant=variant)
    cfg = data_cfg("safe", tmp_path / "in", image_size=16, pixel_spacing=50.0)
    (image, meta), = read_all(cfg)
    assert image.dtype == np.float32 and image.shape == (16, 16)
    np.testing.assert_allclose(image, 10 * np.log10(200000 / 500.0 ** 2), atol=1e-4)  # (|DN|^2 - eta) / A^2
    (plain, _), = read_all({**cfg, "noise_removal": False})
    np.testing.assert_allclose(plain, 0.0, atol=1e-4)  # 250000 / 500^2 = 1
    assert meta["valid_frac"] == 1.0


def test_noise_removal_clips_to_floor(tmp_path):
    fx.make_safe(tmp_path / "in", n_imagettes=1, dn=constant_dn(300, 400), amplitude=500.0, noise=400000.0)
    (image, _), = read_all(data_cfg("safe", tmp_path / "in", image_size=16, pixel_spacing=50.0))
    np.testing.assert_allclose(image, imagette.SIGMA0_FLOOR_DB, atol=1e-4)


@pytest.mark.parametrize("slope", [0.02, 2.0])  # gentle LUT: per-cell calibration; steep: full resolution
def test_calibration_matches_full_resolution_reference(tmp_path, slope):
    """Integer factor 10 (5 m pixels, 50 m output): sigma0 = mean over 10x10 blocks of |DN|^2 / A(pixel)^2."""
    rng = np.random.default_rng(1)
    dn = fx.speckle_dn(300, 400, rng)
    amp = lambda line, pixel: 300.0 + slope * pixel + 0.05 * line
    rg_slant = 5.0 * np.sin(np.radians(23.5))
    fx.make_safe(tmp_path / "in", n_imagettes=1, dn=dn, amplitude=amp, noise=100.0, az_spacing=5.0,
                 rg_spacing=rg_slant)
    cfg = data_cfg("safe", tmp_path / "in", image_size=24, pixel_spacing=50.0)
    (image, _), = read_all(cfg)
    iq = np.rint(dn.real) ** 2 + np.rint(dn.imag) ** 2
    lines, pixels = np.meshgrid(np.arange(300.0), np.arange(400.0), indexing="ij")
    lut = safe.interp_lut(safe.parse_lut(safe._xml(fx.calibration_xml(300, 400, amp), ""), "calibrationVectorList/"
                                     "calibrationVector", "sigmaNought", ""), np.arange(300.0), np.arange(400.0))
    np.testing.assert_allclose(lut, amp(lines, pixels), rtol=1e-5)  # the LUT is bilinear-exact for a bilinear A
    sigma0 = (iq - 100.0) / lut ** 2
    ref = 10 * np.log10(sigma0.reshape(30, 10, 40, 10).mean(axis=(1, 3)))[3:27, 8:32]
    np.testing.assert_allclose(image, ref, atol=2e-3)


def test_downsampling_factor_and_padding(tmp_path):
    """WV1 geometry (4.1 m azimuth, 1.8 m slant at 23.5 deg) to 50 m: 24 x 36 cells of non-integer size."""
    rng = np.random.default_rng(2)
    dn = fx.speckle_dn(300, 400, rng)
    fx.make_safe(tmp_path / "in", n_imagettes=1, dn=dn, amplitude=400.0, noise=0.0)
    (image, meta), = read_all(data_cfg("safe", tmp_path / "in", image_size=40, pixel_spacing=50.0))
    fa, fr = 50.0 / 4.1, 50.0 / (1.8 / np.sin(np.radians(23.5)))
    assert (int(300 / fa), int(400 / fr)) == (24, 36)
    az, rg = (300 - 24 * fa) / 2 + fa * np.arange(25), (400 - 36 * fr) / 2 + fr * np.arange(37)
    power = np.rint(dn.real) ** 2 + np.rint(dn.imag) ** 2
    ref = 10 * np.log10(overlap_matrix(az, 300) @ power @ overlap_matrix(rg, 400).T / (fa * fr) / 400.0 ** 2)
    np.testing.assert_allclose(image[8:32, 2:38], ref, atol=2e-3)
    assert meta["valid_frac"] == pytest.approx(24 * 36 / 40 ** 2)
    pad = np.ones((40, 40), bool)
    pad[8:32, 2:38] = False
    np.testing.assert_allclose(image[pad], np.median(10 * np.log10(10 ** (ref / 10))), atol=1e-3)


def test_annotation_metadata_and_split(tmp_path):
    product, ids = fx.make_safe(tmp_path / "in", n_imagettes=2, lines=120, samples=160, lat0=10.0, lon0=179.9)
    cfg = data_cfg("safe", tmp_path / "in", image_size=8, pixel_spacing=50.0)
    items = s1.list_inputs(cfg)
    assert [it["id"] for it in items] == ids and items[0]["member"] == f"measurement/{ids[0]}.tiff"
    (_, m1), (_, m2) = [s1.read_item(it, cfg, {}) for it in items]
    assert (m1["beam"], m2["beam"], m1["incidence"], m2["incidence"]) == ("wv1", "wv2", 23.5, 36.5)
    assert m1["lat"] == pytest.approx(10.0 + 1e-3 * 59.5) and m1["platform"] == "s1a"
    assert m1["lon"] == pytest.approx(179.9 + 2e-3 * 79.5 - 360)  # interpolated across the date line
    assert m1["time"] == "2021-02-01T08:33:07.123456" and m1["class_idx"] == -1 and m1["source"] == "safe"
    assert m1["split"] == s1.hash_split(ids[0], cfg["seed"], cfg["split_fractions"])
    splits = [s1.hash_split(f"id{i}", 0, [0.8, 0.05, 0.15]) for i in range(20000)]
    assert [splits.count(s) / 20000 for s in ("train", "val", "test")] == pytest.approx([0.8, 0.05, 0.15], abs=0.01)
    assert splits != [s1.hash_split(f"id{i}", 1, [0.8, 0.05, 0.15]) for i in range(20000)]


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_reads_like_folder(tmp_path, compression):
    product, ids = fx.make_safe(tmp_path / "dir", n_imagettes=2, lines=160, samples=200, rowsperstrip=7)
    fx.zip_safe(product, str(tmp_path / "zip" / "product.zip"), compression)
    cfg = data_cfg("safe", tmp_path / "dir", image_size=12, pixel_spacing=40.0)
    from_dir = read_all(cfg)
    from_zip = read_all({**cfg, "input": str(tmp_path / "zip")})
    assert len(from_zip) == 2 and [it["id"] for it in s1.list_inputs({**cfg, "input": str(tmp_path)})] == ids * 2
    for (a, ma), (b, mb) in zip(from_dir, from_zip):
        np.testing.assert_array_equal(a, b)
        assert {k: str(v) for k, v in ma.items()} == {k: str(v) for k, v in mb.items()}


def test_strip_reader_and_timings(tmp_path):
    product, ids = fx.make_safe(tmp_path / "in", n_imagettes=1, lines=120, samples=160, rowsperstrip=7)
    path = os.path.join(product, "measurement", ids[0] + ".tiff")
    with open(path, "rb") as fh:
        tiff = safe.SlcTiff(fh, 0, os.path.getsize(path))
        assert tiff.contiguous and (tiff.lines, tiff.samples, tiff.rps) == (120, 160, 7)
        whole, pieces = np.empty((40, 320), np.int16), np.empty((40, 320), np.int16)
        tiff.read_rows(5, 45, whole)
        tiff.contiguous = False  # the strip-by-strip path must read the same rows
        tiff.read_rows(5, 45, pieces)
    np.testing.assert_array_equal(whole, pieces)
    np.testing.assert_array_equal(whole[:, 0::2] + 1j * whole[:, 1::2], tifffile.imread(path)[5:45])
    timings = {}
    cfg = data_cfg("safe", tmp_path / "in", image_size=8, pixel_spacing=50.0)
    s1.read_item(s1.list_inputs(cfg)[0], cfg, {}, timings)
    assert {"parse", "read", "power", "downsample", "calibrate", "finish"} <= set(timings)


# ---------------------------------------------------------------- damaged SAFE inputs
def _one_safe(tmp_path, **kw):
    product, ids = fx.make_safe(tmp_path / "in", n_imagettes=1, lines=120, samples=160, **kw)
    return product, ids[0], data_cfg("safe", tmp_path / "in", image_size=8, pixel_spacing=50.0)


def _raises(cfg, match, labels=None):
    items = s1.list_inputs(cfg)
    with pytest.raises(s1.InputError, match=match) as err:
        s1.read_item(items[0], cfg, labels or {})
    assert "\n" not in str(err.value) and items[0]["path"] in str(err.value)


def test_truncated_tiff(tmp_path):
    product, stem, cfg = _one_safe(tmp_path)
    path = os.path.join(product, "measurement", stem + ".tiff")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    _raises(cfg, "truncated|TiffFileError")


def test_calibration_without_lut(tmp_path):
    product, stem, cfg = _one_safe(tmp_path)
    path = os.path.join(product, "annotation", "calibration", f"calibration-{stem}.xml")
    text = open(path).read()
    start, end = text.index("<sigmaNought"), text.index("</sigmaNought>") + len("</sigmaNought>")
    open(path, "w").write(text[:start] + text[end:])
    _raises(cfg, "sigmaNought")
    open(path, "w").write(text[:len(text) // 2])
    _raises(cfg, "malformed XML")


def test_other_damage(tmp_path):
    product, stem, cfg = _one_safe(tmp_path)
    os.remove(os.path.join(product, "annotation", "calibration", f"noise-{stem}.xml"))
    _raises(cfg, "missing annotation/calibration/noise")
    read_all({**cfg, "noise_removal": False})  # without noise removal the noise file is not needed
    ann = os.path.join(product, "annotation", stem + ".xml")
    text = open(ann).read()
    open(ann, "w").write(text.replace("<numberOfLines>120", "<numberOfLines>121"))
    _raises({**cfg, "noise_removal": False}, "annotation says 121")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "S1A_broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    _raises(data_cfg("safe", bad), "BadZipFile")
    (bad / "S1A_broken.zip").unlink()
    (bad / "S1A_EMPTY.SAFE" / "measurement").mkdir(parents=True)
    _raises(data_cfg("safe", bad), "no measurement TIFF")


def test_all_nodata_imagette_is_rejected(tmp_path):
    _, _, cfg = _one_safe(tmp_path, dn=np.zeros((120, 160), complex))
    _raises(cfg, "invalid")


def test_list_inputs_errors(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        s1.list_inputs(data_cfg("safe", tmp_path / "nope"))
    with pytest.raises(ValueError, match="no safe inputs"):
        s1.list_inputs(data_cfg("safe", tmp_path))
    with pytest.raises(ValueError, match="split_fractions"):
        fx.make_netcdf(tmp_path / "a.nc")
        s1.list_inputs(data_cfg("netcdf", tmp_path, split_fractions=[0.5, 0.1, 0.1]))


# ---------------------------------------------------------------- netCDF imagettes
def test_netcdf_namings_pol_and_db_agree(tmp_path):
    x = fx.make_netcdf(tmp_path / "nc" / "a.nc", naming="line")
    fx.make_netcdf(tmp_path / "nc" / "b.nc", naming="atrack")
    fx.make_netcdf(tmp_path / "nc" / "c.nc", naming="atrack", pol=True, db=True)
    fx.make_netcdf(tmp_path / "nc" / "d.nc", naming="line", pol=True)
    cfg = data_cfg("netcdf", tmp_path / "nc", image_size=8, pixel_spacing=50.0)
    out = read_all(cfg)
    for image, meta in out[1:]:
        np.testing.assert_allclose(image, out[0][0], atol=1e-4)
    # 10 m pixels -> factor 5, centred 8 x 8 cells of the 120 x 150 image
    ref = 10 * np.log10(x[40:80, 55:95].reshape(8, 5, 8, 5).mean(axis=(1, 3)))
    np.testing.assert_allclose(out[0][0], ref, atol=1e-4)
    meta = out[2][1]
    assert (meta["incidence"], meta["lat"], meta["beam"]) == (pytest.approx(36.5), pytest.approx(-55.8), "wv2")
    fx.make_ocn(tmp_path / "nc" / "ocn" / (fx.imagette_id(1, "wv2", kind="ocn") + ".nc"))  # labels, not imagettes
    assert len(s1.list_inputs({**cfg, "ocn_dir": str(tmp_path / "nc" / "ocn")})) == 4


def test_netcdf_without_spacing_and_digital_number(tmp_path):
    x = fx.make_netcdf(tmp_path / "nc" / "a.nc", spacing=None)
    cfg = data_cfg("netcdf", tmp_path / "nc", image_size=8)
    (image, _), = read_all(cfg)
    ref = 10 * np.log10(x[:, 15:135].reshape(8, 15, 8, 15).mean(axis=(1, 3)))  # centred square, area-resized
    np.testing.assert_allclose(image, ref, atol=1e-4)
    amp = np.sqrt(x)
    fx.make_netcdf(tmp_path / "dn" / "a.nc", variable="digital_number", values=amp, spacing=None)
    (image_dn, _), = read_all(data_cfg("netcdf", tmp_path / "dn", image_size=8, nc_variable="digital_number"))
    np.testing.assert_allclose(image_dn, ref, atol=1e-3)


def test_netcdf_invalid_pixels_and_missing_variable(tmp_path):
    rng = np.random.default_rng(3)
    x = (0.05 * rng.gamma(4.0, 0.25, (120, 150))).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan  # scattered: averaged around
    x[:10, :] = np.inf
    fx.make_netcdf(tmp_path / "ok" / "a.nc", values=x)
    (image, meta), = read_all(data_cfg("netcdf", tmp_path / "ok", image_size=16, pixel_spacing=50.0))
    assert np.isfinite(image).all()
    x[:70] = np.nan  # most of the crop: rejected
    fx.make_netcdf(tmp_path / "bad" / "a.nc", values=x)
    _raises(data_cfg("netcdf", tmp_path / "bad", image_size=16, pixel_spacing=50.0), "invalid")
    _raises(data_cfg("netcdf", tmp_path / "ok", nc_variable="sigma0_raw"), "no variable 'sigma0_raw'")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.nc").write_bytes(b"garbage, not netCDF")
    _raises(data_cfg("netcdf", tmp_path / "junk"), "OSError")


# ---------------------------------------------------------------- TenGeoP
@pytest.mark.parametrize("lonlat", [False, True])
def test_tengeop_labels_split_and_coordinates(tmp_path, capsys, lonlat):
    entries = fx.make_tengeop(tmp_path / "tg", per_class=20, lonlat=lonlat, missing={"x"})
    cfg = data_cfg("tengeop", tmp_path / "tg", image_size=16, pixel_spacing=50.0)
    items = s1.list_inputs(cfg)
    assert "F Pure Ocean Waves" in capsys.readouterr().out
    assert len(items) == 200 and items == s1.list_inputs(cfg)
    by_id = {e["id"]: e for e in entries}
    for it in items:
        e = by_id[it["id"]]
        assert (it["class_idx"], it["lat"], it["lon"]) == (e["class_idx"], pytest.approx(e["lat"], abs=1e-4),
                                                           pytest.approx(e["lon"], abs=1e-4))
    for k in range(10):
        split = [it["split"] for it in items if it["class_idx"] == k]
        assert (split.count("train"), split.count("val"), split.count("test")) == (16, 1, 3)
    other = s1.list_inputs({**cfg, "seed": 5})
    assert [it["split"] for it in other] != [it["split"] for it in items]
    image, meta = s1.read_item(items[0], cfg, {})
    assert image.shape == (16, 16) and np.isfinite(image).all()
    assert abs(image.mean() - (-15.0)) < 1.0 and meta["class_name"] == "Pure Ocean Waves"
    assert meta["split"] == items[0]["split"] and meta["source"] == "tengeop"


def test_tengeop_units_missing_and_malformed(tmp_path):
    entries = fx.make_tengeop(tmp_path / "tg", per_class={"F": 3, "K": 2}, missing={"s"})
    cfg = data_cfg("tengeop", tmp_path / "tg", image_size=16, pixel_spacing=50.0)
    items = s1.list_inputs(cfg)
    linear, _ = s1.read_item(items[0], cfg, {})
    path = items[0]["path"]
    tifffile.imwrite(path, 10 * np.log10(tifffile.imread(path)))  # the same image stored in dB: auto-detected
    np.testing.assert_allclose(s1.read_item(items[0], cfg, {})[0], linear, atol=1e-4)
    os.remove(path)
    with pytest.raises(s1.InputError, match="missing"):
        s1.read_item(items[0], cfg, {})
    with open(tmp_path / "tg" / "58683.txt", "a") as f:
        f.write("F/broken.png F wv1\n")
    with pytest.raises(ValueError, match="58683.txt line 6"):
        s1.list_inputs(cfg)
    os.remove(tmp_path / "tg" / "58682.txt")
    with pytest.raises(ValueError, match="58682.txt is missing"):
        s1.list_inputs(cfg)
    assert len(entries) == 5


def test_ocn_filters_failures_and_join(tmp_path, capsys):
    folder = tmp_path / "ocn"
    fx.make_ocn(folder / (fx.imagette_id(1, "wv1", kind="ocn") + ".nc"), wind=7.5, hs=2.0, partitions=(0.9, 1.5),
                wavelengths=(400.0, 250.0), quality=None)
    fx.make_ocn(folder / (fx.imagette_id(2, "wv2", kind="ocn") + ".nc"), land=1)
    fx.make_ocn(folder / (fx.imagette_id(3, "wv1", kind="ocn") + ".nc"), quality=3)
    (folder / "broken-ocn.nc").write_bytes(b"not netcdf")
    cfg = data_cfg("safe", tmp_path / "in", image_size=8, pixel_spacing=50.0, ocn_dir=str(folder), ocn_max_quality=2)
    labels, failures = ocn.load_labels(cfg)
    assert [os.path.basename(f) for f, _ in failures] == ["broken-ocn.nc"] and "unreadable" in failures[0][1]
    assert "1 dropped as land, 1 for quality" in capsys.readouterr().out
    land, poor = labels[fx.imagette_id(2, "wv2")], labels[fx.imagette_id(3, "wv1")]
    assert np.isnan(land["wind"]) and land["land_flag"] == 1 and np.isnan(poor["hs"]) and poor["quality_flag"] == 3
    labels_all, _ = ocn.load_labels({**cfg, "ocn_max_quality": None, "ocn_drop_land": False})
    assert labels_all[fx.imagette_id(3, "wv1")]["wind"] == pytest.approx(7.5)
    fx.make_safe(tmp_path / "in", n_imagettes=2, lines=120, samples=160)
    (_, m1), (_, m2) = read_all(cfg, labels)
    assert (m1["wind"], m1["hs"], m1["hs_p1"], m1["wl_p1"], m1["hs_p2"]) == \
        (pytest.approx(7.5), pytest.approx(2.0), pytest.approx(1.5), pytest.approx(250.0), pytest.approx(0.9))
    assert np.isnan(m1["quality_flag"]) and np.isnan(m2["wind"]) and m2["land_flag"] == 1
    assert set(m1) == set(m2)  # identical columns whether labelled or not
    columns = {k: [m1[k], m2[k]] for k in m1}
    meta = shards.standard_meta(2, **columns)
    assert set(shards.STANDARD_COLUMNS) <= set(meta) and set(s1.EXTRA_COLUMNS) <= set(meta)
    assert meta["wind"][0] == pytest.approx(7.5) and meta["class_idx"].tolist() == [-1, -1]
