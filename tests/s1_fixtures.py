"""Small but real-format Sentinel-1 inputs for tests and benchmarks (used by test_sentinel1.py and prepare.py's
integration tests): WV L1 SLC SAFE folders (complex int16 TIFF, annotation, calibration and noise XML in the
product layout), the same zipped, netCDF imagettes, a TenGeoP-SARwv tree and L2 OCN label files.

    safe, ids = make_safe(tmp_path, n_imagettes=2)          # -> path of the .SAFE folder, measurement stems
    zip_path = zip_safe(safe)                                # -> <safe without .SAFE>.zip next to it
    make_netcdf(tmp_path / "a.nc", naming="atrack", pol=True, db=True)
    entries = make_tengeop(tmp_path / "tengeop", per_class=20)
    make_ocn(tmp_path / "ocn" / "s1a-wv1-ocn-vv-....nc", wind=7.5, hs=2.0)
"""
import os
import zipfile

import netCDF4
import numpy as np
import tifffile

BEAMS = {"wv1": {"incidence": 23.5, "rg_spacing": 1.8}, "wv2": {"incidence": 36.5, "rg_spacing": 2.7}}
T0, T1 = "20210201t083307", "20210201t083310"


def imagette_id(index, beam, mission="s1a", kind="slc"):
    return f"{mission}-{beam}-{kind}-vv-{T0}-{T1}-036394-044589-{index:03d}"


def speckle_dn(lines, samples, rng, power=40000.0):
    """Complex DN of an ocean-like scene: circular Gaussian speckle under a gentle swell modulation."""
    y, x = np.meshgrid(np.arange(lines), np.arange(samples), indexing="ij")
    mod = 1 + 0.3 * np.sin(2 * np.pi * (x / 60 + y / 90)).astype(np.float32)
    scale = np.sqrt(power / 2 * mod)
    return (rng.standard_normal((lines, samples), np.float32) * scale
            + 1j * rng.standard_normal((lines, samples), np.float32) * scale)


def write_complex_int16_tiff(path, dn, rowsperstrip=16):
    """A TIFF like the SLC measurement: one band, SampleFormat 5 (complex int), 32 bits, uncompressed strips.
    tifffile cannot write complex int, so the I/Q pairs are written as int32 and the SampleFormat tag patched."""
    iq = np.empty(dn.shape + (2,), dtype="<i2")
    iq[..., 0] = np.clip(np.rint(dn.real), -32768, 32767)
    iq[..., 1] = np.clip(np.rint(dn.imag), -32768, 32767)
    tifffile.imwrite(path, iq.view("<i4")[..., 0], rowsperstrip=rowsperstrip, photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        where = tif.pages[0].tags[339].valueoffset
    with open(path, "r+b") as f:
        f.seek(where)
        f.write(np.uint16(5).tobytes())
    return iq


def _vectors(list_tag, vector_tag, value_tag, lines, pixels, value_fn):
    out = [f'<{list_tag} count="{len(lines)}">']
    for line in lines:
        values = value_fn(np.full(len(pixels), float(line)), pixels.astype(float))
        out.append(f"<{vector_tag}><azimuthTime>2021-02-01T08:33:07.000000</azimuthTime><line>{int(line)}</line>"
                   f'<pixel count="{len(pixels)}">{" ".join(str(int(p)) for p in pixels)}</pixel>'
                   f'<{value_tag} count="{len(pixels)}">{" ".join(f"{v:.6e}" for v in values)}</{value_tag}>'
                   f"</{vector_tag}>")
    out.append(f"</{list_tag}>")
    return "".join(out)


def annotation_xml(lines, samples, beam, mission, lat0=58.0, lon0=-32.0, incidence=None, az_spacing=4.1,
                   rg_spacing=None):
    inc = BEAMS[beam]["incidence"] if incidence is None else incidence
    rg = BEAMS[beam]["rg_spacing"] if rg_spacing is None else rg_spacing
    grid_lines, grid_pixels = np.linspace(0, lines - 1, 5).round(), np.linspace(0, samples - 1, 6).round()
    points = []
    for gl in grid_lines:
        for gp in grid_pixels:
            points.append(f"<geolocationGridPoint><azimuthTime>2021-02-01T08:33:07</azimuthTime><slantRangeTime>"
                          f"5.3e-03</slantRangeTime><line>{gl:.0f}</line><pixel>{gp:.0f}</pixel><latitude>"
                          f"{lat0 + 1e-3 * gl:.8f}</latitude><longitude>{lon0 + 2e-3 * gp:.8f}</longitude><height>0"
                          f"</height><incidenceAngle>{inc + 0.001 * gp:.6f}</incidenceAngle><elevationAngle>20."
                          f"</elevationAngle></geolocationGridPoint>")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<product><adsHeader><missionId>{mission.upper()}</missionId>'
            f"<productType>SLC</productType><polarisation>VV</polarisation><mode>WV</mode><swath>{beam.upper()}"
            f"</swath><startTime>2021-02-01T08:33:07.123456</startTime><stopTime>2021-02-01T08:33:10.000000"
            f"</stopTime><absoluteOrbitNumber>36394</absoluteOrbitNumber><missionDataTakeId>280969"
            f"</missionDataTakeId><imageNumber>1</imageNumber></adsHeader><imageAnnotation><imageInformation>"
            f"<productFirstLineUtcTime>2021-02-01T08:33:07.123456</productFirstLineUtcTime><rangePixelSpacing>{rg}"
            f"</rangePixelSpacing><azimuthPixelSpacing>{az_spacing}</azimuthPixelSpacing><numberOfSamples>{samples}"
            f"</numberOfSamples><numberOfLines>{lines}</numberOfLines><incidenceAngleMidSwath>{inc}"
            f"</incidenceAngleMidSwath></imageInformation></imageAnnotation><geolocationGrid>"
            f'<geolocationGridPointList count="{len(points)}">{"".join(points)}</geolocationGridPointList>'
            f"</geolocationGrid></product>")


def calibration_xml(lines, samples, amplitude_fn):
    vec_lines, pixels = np.array([0, lines // 2, lines - 1]), np.unique(np.r_[np.arange(0, samples, 40), samples - 1])
    body = _vectors("calibrationVectorList", "calibrationVector", "sigmaNought", vec_lines, pixels, amplitude_fn)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<calibration><adsHeader><swath>WV1</swath></adsHeader>'
            f"<calibrationInformation><absoluteCalibrationConstant>1.0</absoluteCalibrationConstant>"
            f"</calibrationInformation>{body}</calibration>")


def noise_xml(lines, samples, noise_fn, variant="range"):
    vec_lines, pixels = np.array([0, lines - 1]), np.unique(np.r_[np.arange(0, samples, 50), samples - 1])
    if variant == "range":  # IPF >= 2.9
        body = _vectors("noiseRangeVectorList", "noiseRangeVector", "noiseRangeLut", vec_lines, pixels, noise_fn)
        body += ('<noiseAzimuthVectorList count="1"><noiseAzimuthVector><swath>WV1</swath><firstAzimuthLine>0'
                 f'</firstAzimuthLine><lastAzimuthLine>{lines - 1}</lastAzimuthLine><line count="1">0</line>'
                 '<noiseAzimuthLut count="1">1.0</noiseAzimuthLut></noiseAzimuthVector></noiseAzimuthVectorList>')
    else:
        body = _vectors("noiseVectorList", "noiseVector", "noiseLut", vec_lines, pixels, noise_fn)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<noise><adsHeader><swath>WV1</swath></adsHeader>{body}</noise>'


def make_safe(folder, name=None, n_imagettes=2, lines=300, samples=400, beams=None, mission="s1a", seed=0,
              dn=None, amplitude=500.0, noise=0.0, noise_variant="range", rowsperstrip=16, **annotation):
    """Write a WV SLC .SAFE folder with n imagettes; returns (SAFE path, measurement stems).

    dn: complex [lines, samples] array, or callable (index, rng) -> such an array (default: speckle).
    amplitude / noise: sigmaNought / noise LUT values, a number or a callable (line, pixel arrays) -> values.
    beams: one beam per imagette (default alternating wv1, wv2 for odd/even indices, like the real files).
    annotation: extra keywords of annotation_xml (incidence, az_spacing, rg_spacing, lat0, lon0)."""
    name = name or f"{mission.upper()}_WV_SLC__1SSV_20210201T083223_20210201T084818_036394_044589_B735.SAFE"
    safe = os.path.join(str(folder), name)
    for sub in ("measurement", "annotation/calibration"):
        os.makedirs(os.path.join(safe, sub), exist_ok=True)
    amp_fn = amplitude if callable(amplitude) else (lambda l, p: np.full(len(p), float(amplitude)))
    noise_fn = noise if callable(noise) else (lambda l, p: np.full(len(p), float(noise)))
    rng, stems = np.random.default_rng(seed), []
    for i in range(1, n_imagettes + 1):
        beam = beams[i - 1] if beams else ("wv1" if i % 2 else "wv2")
        stem = imagette_id(i, beam, mission)
        data = dn(i, rng) if callable(dn) else dn if dn is not None else speckle_dn(lines, samples, rng)
        write_complex_int16_tiff(os.path.join(safe, "measurement", stem + ".tiff"), data, rowsperstrip)
        files = {f"annotation/{stem}.xml": annotation_xml(lines, samples, beam, mission, **annotation),
                 f"annotation/calibration/calibration-{stem}.xml": calibration_xml(lines, samples, amp_fn),
                 f"annotation/calibration/noise-{stem}.xml": noise_xml(lines, samples, noise_fn, noise_variant)}
        for rel, text in files.items():
            with open(os.path.join(safe, rel), "w") as f:
                f.write(text)
        stems.append(stem)
    with open(os.path.join(safe, "manifest.safe"), "w") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" '
                'version="esa/safe/sentinel-1.0/sentinel-1/sar/level-1/slc/standard/wv"/>')
    return safe, stems


def zip_safe(safe, zip_path=None, compression=zipfile.ZIP_STORED):
    """Zip a SAFE folder like the archive distributes it: members under '<name>.SAFE/'."""
    safe = str(safe).rstrip("/")
    zip_path = zip_path or safe[:-len(".SAFE")] + ".zip"
    base = os.path.dirname(safe)
    os.makedirs(os.path.dirname(os.path.abspath(zip_path)), exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression) as zf:
        for d, _, files in sorted(os.walk(safe)):
            for f in sorted(files):
                full = os.path.join(d, f)
                zf.write(full, os.path.relpath(full, base))
    return zip_path


def make_netcdf(path, naming="line", shape=(120, 150), pol=False, db=False, variable="sigma0", spacing=(10.0, 10.0),
                values=None, seed=0, geometry=True):
    """A netCDF imagette: `variable` [line, sample] (or [atrack, xtrack]), linear sigma0 (dB if db), optional
    pol dim (VH first, VV second: a reader must pick VV), spacing attributes (None: no spacing given)."""
    dims = {"line": ("line", "sample"), "atrack": ("atrack", "xtrack")}[naming]
    rng = np.random.default_rng(seed)
    x = values if values is not None else (0.05 * rng.gamma(4.0, 0.25, shape)).astype(np.float32)
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    with netCDF4.Dataset(str(path), "w") as ds:
        ds.createDimension(dims[0], shape[0])
        ds.createDimension(dims[1], shape[1])
        var_dims = dims
        data = 10 * np.log10(x) if db else x
        if pol:
            ds.createDimension("pol", 2)
            p = ds.createVariable("pol", str, ("pol",))
            p[0], p[1] = "VH", "VV"
            var_dims = ("pol",) + dims
            data = np.stack([data - 7.0 if db else data * 0.05, data])
        v = ds.createVariable(variable, "f4", var_dims, fill_value=np.float32(np.nan))
        v[:] = data
        v.units = "dB" if db else "m2/m2"
        if spacing:
            v.pixel_line_m, v.pixel_sample_m = spacing
        if geometry:
            for name, value in (("incidence", 36.5), ("latitude", -55.8), ("longitude", 104.1)):
                g = ds.createVariable(name, "f4", dims)
                g[:] = np.full(shape, value, np.float32)
        ds.swath = "WV2"
        ds.start_date = "2021-02-01 08:33:07.123456"
    return x


def make_tengeop(root, per_class=20, size=(48, 52), lonlat=False, seed=0, missing=()):
    """A TenGeoP-SARwv tree: 58682.txt, 58683.txt and GeoTIFF/<letter>/<stem>.tiff (float32 linear sigma0).
    per_class: int or {letter: count}; lonlat: write coordinates as 'lon lat'; missing: stems with no GeoTIFF."""
    letters = "FGHIJKLMNO"
    names = ["Pure Ocean Waves", "Wind Streaks", "Micro Convective Cells", "Rain Cells", "Biological Slicks",
             "Sea Ice", "Iceberg", "Low Wind Area", "Atmospheric Front", "Oceanic Front"]
    counts = per_class if isinstance(per_class, dict) else {c: per_class for c in letters}
    rng = np.random.default_rng(seed)
    os.makedirs(str(root), exist_ok=True)
    with open(os.path.join(str(root), "58682.txt"), "w") as f:
        f.writelines(f"{c} {n}\n" for c, n in zip(letters, names))
    entries, lines = [], []
    for k, c in enumerate(letters):
        os.makedirs(os.path.join(str(root), "GeoTIFF", c), exist_ok=True)
        for j in range(counts.get(c, 0)):
            beam = "wv1" if j % 2 == 0 else "wv2"
            day = f"2016{k + 1:02d}{j % 28 + 1:02d}"
            stem = f"s1a-{beam}-slc-vv-{day}t000000-{day}t000003-0{10000 + j:05d}-00e{k:03d}-{j + 1:03d}"
            lat, lon = float(rng.uniform(-60, 60)), float(rng.uniform(100, 179)) * (1 if j % 2 else -1)
            coords = f"{lon:.4f} {lat:.4f}" if lonlat else f"{lat:.4f} {lon:.4f}"
            lines.append(f"{c}/{stem}.png {c} {beam} 2016-{k + 1:02d}-01T00:00:00 {coords}\n")
            if stem not in missing:
                image = (10 ** ((-15 + 2 * k) / 10) * rng.gamma(8.0, 1 / 8.0, size)).astype(np.float32)
                tifffile.imwrite(os.path.join(str(root), "GeoTIFF", c, stem + ".tiff"), image)
            entries.append({"id": stem, "letter": c, "class_idx": k, "lat": lat, "lon": lon, "beam": beam})
    with open(os.path.join(str(root), "58683.txt"), "w") as f:
        f.writelines(lines)
    return entries


def make_ocn(path, wind=7.5, sar_wind=7.0, hs=2.0, partitions=(1.5, 0.9), wavelengths=(250.0, 400.0), land=0,
             quality=0, nrcs=-12.0, lat=58.0, lon=-32.0, incidence=23.5):
    """A minimal L2 OCN netCDF (osw variables on (oswAzSize, oswRaSize[, oswPartitions]), fills like the IPF)."""
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    with netCDF4.Dataset(str(path), "w", format="NETCDF3_CLASSIC") as ds:
        for d, n in (("oswAzSize", 1), ("oswRaSize", 1), ("oswPartitions", 5)):
            ds.createDimension(d, n)
        scalars = {"oswEcmwfWindSpeed": wind, "oswWindSpeed": sar_wind, "oswTotalHs": hs, "oswNrcs": nrcs,
                   "oswNv": 1.3, "oswAzCutoff": 400.0, "oswLat": lat, "oswLon": lon, "oswIncidenceAngle": incidence}
        for name, value in scalars.items():
            v = ds.createVariable(name, "f4", ("oswAzSize", "oswRaSize"), fill_value=np.float32(-999.0))
            v[:] = np.full((1, 1), -999.0 if value is None else value, np.float32)
        for name, values in (("oswHs", partitions), ("oswWl", wavelengths)):
            v = ds.createVariable(name, "f4", ("oswAzSize", "oswRaSize", "oswPartitions"),
                                  fill_value=np.float32(-999.0))
            v[:] = np.array(list(values) + [-999.0] * (5 - len(values)), np.float32).reshape(1, 1, 5)
        for name, value, flags in (("oswLandFlag", land, [0, 1]), ("oswQualityFlag", quality, [0, 1, 2, 3])):
            v = ds.createVariable(name, "i1", ("oswAzSize", "oswRaSize"), fill_value=np.int8(-128))
            v.flag_values = np.array(flags, np.int8)
            v[:] = np.full((1, 1), -128 if value is None else value, np.int8)
