"""Readers for real Sentinel-1 Wave Mode data: L1 SLC SAFE (folders or zips), netCDF imagettes, TenGeoP-SARwv,
and the L2 OCN wind/wave labels (ocn.py). SOURCES maps each data.source to its lister, reader and output dataset;
a new source is one entry there. prepare.py drives them through:

    items = list_inputs(data_cfg)                 # small picklable dicts {"path", "id"[, "member"]...}, sorted
    labels, failures = ocn.load_labels(data_cfg)  # id -> label dict from data.ocn_dir; [(file, reason)] unreadable
    image_db, meta = read_item(item, data_cfg, labels, timings=None)  # float32 [S, S] dB, finite; scalar meta
    InputError                                    # read_item: corrupt/truncated/malformed input, one-line message

Every imagette becomes S x S pixels (S = data.image_size) at data.pixel_spacing metres: the linear intensity is
area-averaged onto a centred grid of cells of that ground size (exact overlap weights, non-integer factors fine),
the central S x S cells are kept, missing ones are padded with the median (column valid_frac = fraction of real
data), then dB. Invalid pixels (NaN/inf, linear <= 0, GeoTIFF nodata, SLC cells without signal): a cell less than
half valid is invalid; above data.max_invalid invalid cells -> InputError, else they take the valid median.

- "safe": *.SAFE folders and *.zip files under data.input (recursive), one item per measurement TIFF (complex
  int16); zip members are read in place (stored) or inflated in memory (deflated). sigma0 = (|DN|^2 - eta) / A^2,
  A = bilinear sigmaNought LUT, eta = bilinear noise LUT (noiseRangeVector/noiseRangeLut, IPF >= 2.9, or
  noiseVector/noiseLut; data.noise_removal), clipped at SIGMA0_FLOOR_DB. Ground range spacing = slant spacing /
  sin(incidenceAngleMidSwath); rows are azimuth. The TIFF is streamed as raw int16 in row blocks (bounded memory,
  only the crop's rows), |DN|^2 is computed in float32 and summed per cell. A and eta vary slowly (a few LUT
  vectors over 20 km), so they are applied per cell: mean(|DN|^2) / A(centre)^2 differs from the cell mean of
  |DN|^2 / A^2 by at most the relative change of A^2 across the cell (and ~0 for a linear A); past CAL_TOLERANCE
  (1 %, < 0.05 dB) the LUTs are applied at full resolution instead.
- "netcdf": *.nc imagettes (e.g. from xsar; data.ocn_dir is skipped). data.nc_variable "sigma0" (linear, or dB
  when its units say so) or "digital_number" (|DN|^2, uncalibrated); dims (line, sample) or (atrack, xtrack); a pol
  dim takes VV when a `pol` variable names it, else the first. Spacing from attributes pixel_line_m/pixel_sample_m
  (or line_spacing/sample_spacing) of the variable or file; without them the centred square is area-resized to
  S x S. Optional incidence/latitude/longitude variables give the centre values.
- "tengeop": 58682.txt (letter, class name), 58683.txt (path, letter, beam, time, two coordinates: a column with
  any |value| > 90 is the longitude) and GeoTIFF/<letter>/<stem>.tiff (one band, ~10x decimated SLC, native
  spacing data.tengeop_spacing; data.tengeop_units auto = dB for float images with negatives, else linear;
  integer images are linear of unknown scale). No official split: seeded, stratified by class, with
  data.split_fractions. Classes F..O are class_idx 0..9.
"safe"/"netcdf" splits are a hash of (data.seed, id) against data.split_fractions, so a labelled archive can serve
as a regression set.

Labels (data.ocn_dir): every L2 OCN netCDF below it, any IPF version: variables read raw, fills compared by value,
missing variables and fills -> NaN (never invented; the summary line counts them). id = stem with "-ocn-" ->
"-slc-". wind = oswEcmwfWindSpeed, sar_wind = oswWindSpeed, hs = oswTotalHs, ocn_nrcs (dB), ocn_nv, az_cutoff (m),
land_flag, quality_flag (0 good .. 3 poor, NaN unknown), wave partitions sorted by Hs, largest first: hs_p1..3,
wl_p1..3. data.ocn_drop_land / data.ocn_max_quality blank (NaN) the labels of filtered imagettes (unknown quality
is kept); the samples stay. OCN incidence/lat/lon fill in only where the image has none.
Extra shard columns, the same for every item and source: EXTRA_COLUMNS (platform, valid_frac, label columns).
"""
import hashlib
import io
import os
import struct
import time
import xml.etree.ElementTree as ET
import zipfile
from contextlib import contextmanager
from typing import Callable, NamedTuple

import netCDF4
import numpy as np
import scipy.sparse as sp
import tifffile

from . import ocn
from .errors import UserError
from . import shards
from . import tengeop

CLASS_NAMES = tengeop.NAME_OF_LETTER  # TenGeoP letter -> class name
SIGMA0_FLOOR_DB = -40.0  # below any NESZ: what noise removal may leave
CAL_TOLERANCE = 0.01     # largest relative change of A^2 across an output cell for per-cell calibration
BLOCK_ROWS = 128         # SLC rows per block: 2.8 MB int16 + 5.6 MB float32 at full width, stays in cache
SPLITS = ("train", "val", "test")
EXTRA_COLUMNS = ("platform", "valid_frac") + ocn.LABEL_COLUMNS


class InputError(Exception):
    """A corrupt, truncated or malformed input item; prepare.py skips it and lists the one-line message (the item
    and the reason) in failures.jsonl."""


class ListingError(UserError, ValueError):
    """The inputs cannot be listed at all (a malformed TenGeoP index, an empty or missing data.input): exit 1."""


@contextmanager
def _timed(timings, stage):
    t = time.perf_counter()
    yield
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t


# ---------------------------------------------------------------- resampling
def output_edges(n_in, factor, size):
    """Edges (input pixel units) of min(size, n_in // factor) centred output cells of `factor` input pixels."""
    n = int(min(size, np.floor(n_in / factor + 1e-6)))
    if n < 1:
        raise InputError(f"{n_in} input pixels make less than one output pixel (factor {factor:.2f})")
    return (n_in - n * factor) / 2 + factor * np.arange(n + 1)


def _span(edges):
    """The input pixels [first, last) the cells touch."""
    return int(np.floor(edges[0])), int(np.ceil(edges[-1] - 1e-9))


def area_matrix(edges, n_in):
    """Sparse [cells, n_in]: overlap length of cell [edges[k], edges[k+1]) with input pixel [j, j+1)."""
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.floor(lo).astype(np.int64) + np.arange(int(np.ceil((hi - lo).max())) + 2)
    w = np.minimum(hi, j + 1) - np.maximum(lo, j)
    keep = (w > 1e-9) & (j >= 0) & (j < n_in)
    rows = np.broadcast_to(np.arange(len(lo))[:, None], j.shape)
    return sp.csr_matrix((w[keep].astype(np.float32), (rows[keep], j[keep])), shape=(len(lo), n_in))


def sum_rows(x, edges):
    """Overlap-weighted sums of the rows of x over cells [edges[k], edges[k+1]) (row units): whole rows minus
    the part of the first row before the cell plus the part of the row where it ends. A loop over output rows
    (a few per block), each vectorised over whole rows while the block is in cache; no matrix to build."""
    lo = np.floor(edges).astype(np.int64)
    frac = (edges - lo).astype(np.float32)
    out = np.empty((len(edges) - 1, x.shape[1]), dtype=np.float32)
    for k in range(len(out)):
        np.sum(x[lo[k]:lo[k + 1]], axis=0, out=out[k])
        out[k] -= frac[k] * x[lo[k]]
        if frac[k + 1] > 0:
            out[k] += frac[k + 1] * x[lo[k + 1]]
    return out


def area_mean(x, az_edges, rg_edges):
    """Area means of linear x [H, W] (NaN/<=0 invalid) over the cells; NaN where under half a cell is valid."""
    valid = np.isfinite(x) & (x > 0)
    ma, mr = area_matrix(az_edges, x.shape[0]), area_matrix(rg_edges, x.shape[1])
    total = (mr @ (ma @ np.where(valid, x, 0).astype(np.float32)).T).T
    weight = (mr @ (ma @ valid.astype(np.float32)).T).T
    area = (az_edges[1] - az_edges[0]) * (rg_edges[1] - rg_edges[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight >= 0.5 * area, total / weight, np.nan)


def finish_image(sigma0, size, max_invalid):
    """Linear sigma0 cells [h, w] (NaN invalid) -> (dB [size, size] float32 finite, fraction of real data)."""
    valid = np.isfinite(sigma0)
    bad = 1.0 - valid.mean()
    if not valid.any() or bad > max_invalid:
        raise InputError(f"{bad:.0%} of the output pixels are invalid (NaN/inf/no data); data.max_invalid is "
                         f"{max_invalid:.0%}")
    floor = 10 ** (SIGMA0_FLOOR_DB / 10)
    fill = max(float(np.median(sigma0[valid])), floor)
    db = 10 * np.log10(np.maximum(np.where(valid, sigma0, fill), floor))
    (h, w), top, left = db.shape, (size - db.shape[0]) // 2, (size - db.shape[1]) // 2
    out = np.full((size, size), 10 * np.log10(fill), dtype=np.float32)
    out[top:top + h, left:left + w] = db
    return out, float(valid.sum()) / size ** 2


# ---------------------------------------------------------------- XML annotation, calibration and noise LUTs
def _xml(data, what):
    try:
        return ET.fromstring(data)
    except ET.ParseError as e:
        raise InputError(f"{what}: malformed XML ({e})")


def _text(node, path, what):
    found = node.find(path)
    if found is None or not (found.text or "").strip():
        raise InputError(f"{what}: missing <{path}>")
    return found.text.strip()


def parse_lut(root, vector_path, value_tag, what):
    """LUT vectors -> (lines [n], [pixels of each vector], [values of each vector]); raises if absent/inconsistent."""
    vectors = root.findall(vector_path)
    if not vectors:
        raise InputError(f"{what}: no <{vector_path}> with a <{value_tag}> LUT")
    lines, pixels, values = [], [], []
    for v in vectors:
        try:
            p, val = (np.array(_text(v, tag, what).split(), dtype=np.float64) for tag in ("pixel", value_tag))
        except ValueError:
            raise InputError(f"{what}: <pixel> or <{value_tag}> is not a list of numbers")
        if len(p) == 0 or len(p) != len(val) or not np.isfinite(val).all():
            raise InputError(f"{what}: <{value_tag}> has {len(val)} values for {len(p)} pixels")
        lines.append(float(_text(v, "line", what)))
        pixels.append(p)
        values.append(val)
    return np.array(lines), pixels, values


def lut_rows(lut, at_pixels):
    """Each LUT vector interpolated at the given pixels, vectors sorted by line: (lines, rows [n, P])."""
    lines, pixels, values = lut
    order = np.argsort(lines, kind="stable")
    return lines[order], np.stack([np.interp(at_pixels, pixels[i], values[i]) for i in order])


def lut_at_lines(lines, rows, at_lines):
    """Linear interpolation between LUT vectors along lines (clamped outside): [len(at_lines), P]."""
    if len(lines) == 1:
        return np.repeat(rows, len(at_lines), axis=0)
    i = np.clip(np.searchsorted(lines, at_lines, side="right") - 1, 0, len(lines) - 2)
    gap = lines[i + 1] - lines[i]
    t = np.clip((at_lines - lines[i]) / np.where(gap > 0, gap, 1.0), 0.0, 1.0)[:, None]
    return rows[i] * (1 - t) + rows[i + 1] * t


def interp_lut(lut, at_lines, at_pixels):
    """Bilinear interpolation of a LUT on the grid at_lines x at_pixels (separable: vectors, then lines)."""
    lines, rows = lut_rows(lut, np.asarray(at_pixels, dtype=np.float64))
    return lut_at_lines(lines, rows, np.asarray(at_lines, dtype=np.float64))


def grid_value(lines, pixels, values, line, pixel):
    """A geolocation-grid field at (line, pixel): bilinear on a rectilinear grid, else the nearest point."""
    ul, up = np.unique(lines), np.unique(pixels)
    if len(ul) > 1 and len(up) > 1 and len(ul) * len(up) == len(lines):
        grid = values[np.lexsort((pixels, lines))].reshape(len(ul), len(up))
        return float(interp_lut((ul, [up] * len(ul), list(grid)), [line], [pixel])[0, 0])
    scale = max(np.ptp(lines), 1.0), max(np.ptp(pixels), 1.0)
    return float(values[np.argmin(((lines - line) / scale[0]) ** 2 + ((pixels - pixel) / scale[1]) ** 2)])


def parse_annotation(root, what):
    info = "imageAnnotation/imageInformation/"
    num = lambda path: float(_text(root, info + path, what))
    ann = {"lines": int(num("numberOfLines")), "samples": int(num("numberOfSamples")),
           "rg_spacing": num("rangePixelSpacing"), "az_spacing": num("azimuthPixelSpacing"),
           "incidence": num("incidenceAngleMidSwath"), "time": _text(root, "adsHeader/startTime", what),
           "beam": _text(root, "adsHeader/swath", what).lower(),
           "platform": (root.findtext("adsHeader/missionId") or "").strip().lower()}
    if min(ann["rg_spacing"], ann["az_spacing"]) <= 0 or not 0 < ann["incidence"] < 90:
        raise InputError(f"{what}: bad pixel spacing or incidence angle")
    points = root.findall("geolocationGrid/geolocationGridPointList/geolocationGridPoint")
    if not points:
        raise InputError(f"{what}: no geolocation grid points")
    line, pixel, lat, lon = (np.array([float(_text(p, k, what)) for p in points])
                             for k in ("line", "pixel", "latitude", "longitude"))
    lon = (lon - lon[0] + 180) % 360 - 180 + lon[0]  # continuous across the date line before interpolating
    centre = (ann["lines"] - 1) / 2, (ann["samples"] - 1) / 2
    ann["lat"] = grid_value(line, pixel, lat, *centre)
    ann["lon"] = (grid_value(line, pixel, lon, *centre) + 180) % 360 - 180
    return ann


# ---------------------------------------------------------------- SAFE products and the SLC TIFF
class SafeFiles:
    """The files of one imagette in a .SAFE folder or a .zip, by path relative to the SAFE root."""

    def __init__(self, path, member):
        self.path, self.zip = path, None
        if not member:
            if os.path.isfile(path):
                zipfile.ZipFile(path).close()  # a damaged zip says so
            raise InputError("no measurement TIFF in the product")
        cut = member.rfind("measurement/")
        self.root, self.measurement = member[:cut], member[cut:]
        self.stem = os.path.splitext(os.path.basename(member))[0]
        if not os.path.isdir(path):
            self.zip = zipfile.ZipFile(path)

    def read(self, rel):
        try:
            if self.zip is not None:
                return self.zip.read(self.root + rel)
            with open(os.path.join(self.path, rel), "rb") as f:
                return f.read()
        except (KeyError, FileNotFoundError):
            raise InputError(f"missing {rel}")

    def open_measurement(self):
        """(binary file, offset of the TIFF in it, TIFF size); the caller closes the file."""
        if self.zip is None:
            full = os.path.join(self.path, self.measurement)
            return open(full, "rb"), 0, os.path.getsize(full)
        info = self.zip.getinfo(self.root + self.measurement)
        if info.compress_type != zipfile.ZIP_STORED:
            return io.BytesIO(self.zip.read(info)), 0, info.file_size  # deflated: inflate to memory
        fh = open(self.path, "rb")  # stored: read in place, after the member's local header
        fh.seek(info.header_offset)
        head = fh.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            fh.close()
            raise InputError(f"corrupt zip local header for {info.filename}")
        return fh, info.header_offset + 30 + sum(struct.unpack("<HH", head[26:30])), info.file_size

    def close(self):
        if self.zip is not None:
            self.zip.close()


class SlcTiff:
    """Row reader of an uncompressed complex int16 (I, Q interleaved) strip TIFF: raw int16 bytes, no decoding."""

    def __init__(self, fh, offset, size):
        self.fh, self.offset = fh, offset
        tif = tifffile.TiffFile(fh, offset=offset, size=size)
        page = tif.pages[0]
        cint16 = (page.sampleformat, page.bitspersample, page.samplesperpixel) in ((5, 32, 1), (2, 16, 2))
        if not cint16 or page.compression != 1 or page.is_tiled:
            raise InputError(f"measurement TIFF is not uncompressed complex int16 strips (sampleformat "
                             f"{int(page.sampleformat)}, {page.bitspersample} bits, compression "
                             f"{int(page.compression)})")
        self.lines, self.samples = page.imagelength, page.imagewidth
        self.dtype, self.row_bytes = np.dtype(tif.byteorder + "i2"), 4 * page.imagewidth
        self.rps = page.rowsperstrip or self.lines
        self.starts = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        rows = np.minimum(self.rps, self.lines - self.rps * np.arange(len(counts)))
        if len(counts) != -(-self.lines // self.rps) or (counts < rows * self.row_bytes).any():
            raise InputError(f"measurement TIFF strips ({len(counts)}) do not hold its {self.lines} lines")
        self.contiguous = bool((self.starts[1:] == self.starts[:-1] + counts[:-1]).all())

    def read_rows(self, r0, r1, out):
        """Rows [r0, r1) into out (int16 [r1 - r0, 2 * samples]): one read when the strips are contiguous."""
        strips = range(r0 // self.rps, (r1 - 1) // self.rps + 1)
        pieces = [(r0, r1)] if self.contiguous else [(max(r0, s * self.rps), min(r1, s * self.rps + self.rps))
                                                     for s in strips]
        buf, pos = memoryview(out).cast("B"), 0
        for a, b in pieces:
            n = (b - a) * self.row_bytes
            self.fh.seek(self.offset + int(self.starts[a // self.rps]) + (a % self.rps) * self.row_bytes)
            got = self.fh.readinto(buf[pos:pos + n])
            if got != n:
                raise InputError(f"truncated measurement TIFF: {got} of {n} bytes at line {a}")
            pos += n


def slc_power_sums(tiff, az, rg, timings=None, full_res=None):
    """Cell sums of |DN|^2, streaming the TIFF in blocks of whole output rows; with full_res (lines ->
    (gain, noise) [rows, cols]) also the cell sums of (|DN|^2 - eta) * gain. I^2 and Q^2 stay interleaved: the
    range matrix adds each pair while it averages."""
    c0, c1 = _span(rg)
    mr = sp.kron(area_matrix(rg - c0, c1 - c0), np.ones((1, 2), np.float32), format="csr")
    n_out, per_block = len(az) - 1, max(1, int(BLOCK_ROWS / (az[1] - az[0])))
    max_rows = int(np.ceil(per_block * (az[1] - az[0]))) + 2
    raw = np.empty((max_rows, 2 * tiff.samples), dtype=tiff.dtype)
    power = np.empty((max_rows, 2 * (c1 - c0)), dtype=np.float32)
    sums = np.empty((2 if full_res else 1, n_out, 2 * (c1 - c0)), dtype=np.float32)
    for k0 in range(0, n_out, per_block):
        k1 = min(n_out, k0 + per_block)
        r0, r1 = int(np.floor(az[k0])), min(tiff.lines, int(np.ceil(az[k1] - 1e-9)))
        with _timed(timings, "read"):
            tiff.read_rows(r0, r1, raw[:r1 - r0])
        with _timed(timings, "power"):
            p = np.square(raw[:r1 - r0, 2 * c0:2 * c1], out=power[:r1 - r0], dtype=np.float32)  # casts once
        with _timed(timings, "downsample"):
            sums[0, k0:k1] = sum_rows(p, az[k0:k1 + 1] - r0)
        if full_res:
            with _timed(timings, "calibrate"):
                gain, noise = full_res(np.arange(r0, r1, dtype=np.float64))
                p -= np.repeat(noise.astype(np.float32) / 2, 2, axis=1)  # I^2 + Q^2 - eta, half on each
                p *= np.repeat(gain.astype(np.float32), 2, axis=1)
            with _timed(timings, "downsample"):
                sums[1, k0:k1] = sum_rows(p, az[k0:k1 + 1] - r0)
    with _timed(timings, "downsample"):
        return [(mr @ s.T).T for s in sums]


def calibrated_slc(tiff, ann, cal, noise, cfg, timings=None):
    """SLC -> (dB image [S, S], valid fraction): sigma0 block-averaged to data.pixel_spacing."""
    size = cfg["image_size"]
    fa = cfg["pixel_spacing"] / ann["az_spacing"]
    fr = cfg["pixel_spacing"] * np.sin(np.radians(ann["incidence"])) / ann["rg_spacing"]
    az, rg = output_edges(tiff.lines, fa, size), output_edges(tiff.samples, fr, size)
    noise = noise or (np.zeros(1), [np.zeros(1)], [np.zeros(1)])
    with _timed(timings, "calibrate"):
        amp = interp_lut(cal, az - 0.5, rg - 0.5)  # at the cell edges; LUT pixel j is the centre of [j, j+1)
        change = max(np.abs(np.diff(amp, axis=0)).max(initial=0), np.abs(np.diff(amp, axis=1)).max(initial=0))
        full_res = None
        if 2 * change / amp.min() > CAL_TOLERANCE:
            cols = np.arange(*_span(rg), dtype=np.float64)
            (cal_lines, cal_rows), (noise_lines, noise_rows) = lut_rows(cal, cols), lut_rows(noise, cols)
            full_res = lambda lines: (lut_at_lines(cal_lines, cal_rows, lines) ** -2.0,
                                      lut_at_lines(noise_lines, noise_rows, lines))
    sums = slc_power_sums(tiff, az, rg, timings, full_res)
    with _timed(timings, "calibrate"):
        if full_res:
            sigma0 = sums[1] / (fa * fr)
        else:
            centre_az, centre_rg = (az[:-1] + az[1:]) / 2 - 0.5, (rg[:-1] + rg[1:]) / 2 - 0.5
            sigma0 = (sums[0] / (fa * fr) - interp_lut(noise, centre_az, centre_rg)) \
                / interp_lut(cal, centre_az, centre_rg) ** 2
        sigma0 = np.where(sums[0] > 0, np.maximum(sigma0, 10 ** (SIGMA0_FLOOR_DB / 10)), np.nan)  # 0: no data
    with _timed(timings, "finish"):
        return finish_image(sigma0, size, cfg["max_invalid"])


def read_safe(item, cfg, timings=None):
    with _timed(timings, "parse"):
        safe = SafeFiles(item["path"], item.get("member", ""))
        try:
            stem, xml = safe.stem, lambda rel, what: _xml(safe.read(rel), what)
            ann = parse_annotation(xml(f"annotation/{stem}.xml", "annotation"), "annotation XML")
            cal = parse_lut(xml(f"annotation/calibration/calibration-{stem}.xml", "calibration"),
                            "calibrationVectorList/calibrationVector", "sigmaNought", "calibration XML")
            if min(v.min() for v in cal[2]) <= 0:
                raise InputError("calibration XML: non-positive sigmaNought values")
            noise = xml(f"annotation/calibration/noise-{stem}.xml", "noise") if cfg["noise_removal"] else None
            if noise is not None:  # IPF >= 2.9 names it a range vector
                new = noise.find("noiseRangeVectorList/noiseRangeVector") is not None
                noise = parse_lut(noise, f"noise{'Range' if new else ''}VectorList/noise{'Range' if new else ''}Vector",
                                  "noiseRangeLut" if new else "noiseLut", "noise XML")
            fh, offset, size = safe.open_measurement()
        finally:
            safe.close()
    try:
        with _timed(timings, "parse"):
            tiff = SlcTiff(fh, offset, size)
        if (tiff.lines, tiff.samples) != (ann["lines"], ann["samples"]):
            raise InputError(f"measurement TIFF is {tiff.lines} x {tiff.samples}, annotation says "
                             f"{ann['lines']} x {ann['samples']}")
        image, valid_frac = calibrated_slc(tiff, ann, cal, noise, cfg, timings)
    finally:
        fh.close()
    return image, {"id": stem, "beam": ann["beam"], "incidence": ann["incidence"], "lat": ann["lat"],
                   "lon": ann["lon"], "time": ann["time"], "platform": ann["platform"] or stem[:3],
                   "valid_frac": valid_frac}


# ---------------------------------------------------------------- netCDF imagettes and TenGeoP GeoTIFFs
SPACING_ATTRS = (("pixel_line_m", "pixel_sample_m"), ("line_spacing", "sample_spacing"))
SPATIAL_DIMS = (("line", "sample"), ("atrack", "xtrack"))


def _nc_centre(ds, name):
    if name not in ds.variables:
        return np.nan
    v = ds.variables[name]
    return float(np.ravel(np.ma.filled(np.ma.asarray(v[tuple(n // 2 for n in v.shape)], np.float64), np.nan))[0])


def _nc_index(ds, var, spatial, rows, cols):
    """Index of var: the crop on the spatial dims, VV (or the first) on a pol dim, 0 on size-1 dims."""
    index = []
    for d in var.dimensions:
        if d in spatial:
            index.append(rows if d == spatial[0] else cols)
        elif "pol" in d.lower():
            names = [str(p).upper() for p in np.ravel(ds.variables["pol"][:])] if "pol" in ds.variables else []
            index.append(names.index("VV") if "VV" in names else 0)
        elif len(ds.dimensions[d]) == 1:
            index.append(0)
        else:
            raise InputError(f"variable '{var.name}' has an unexpected dim '{d}' of size {len(ds.dimensions[d])}")
    return tuple(index)


def read_netcdf(item, cfg, timings=None):
    size, name = cfg["image_size"], cfg["nc_variable"]
    with _timed(timings, "read"), netCDF4.Dataset(item["path"], auto_complex=True) as ds:
        if name not in ds.variables:
            raise InputError(f"no variable '{name}' (data.nc_variable); it has: {', '.join(list(ds.variables)[:12])}")
        var = ds.variables[name]
        spatial = next((pair for pair in SPATIAL_DIMS if set(pair) <= set(var.dimensions)), None)
        if spatial is None:
            raise InputError(f"variable '{name}' has dims {var.dimensions}, not (line, sample) or (atrack, xtrack)")
        h, w = (len(ds.dimensions[d]) for d in spatial)
        spacing = next(((float(o.getncattr(a)), float(o.getncattr(b))) for o in (var, ds) for a, b in SPACING_ATTRS
                        if a in o.ncattrs() and b in o.ncattrs()), None)
        fa, fr = (cfg["pixel_spacing"] / s for s in spacing) if spacing else (min(h, w) / size,) * 2  # square
        az, rg = output_edges(h, fa, size), output_edges(w, fr, size)
        (r0, r1), (c0, c1) = _span(az), _span(rg)
        x = np.ma.filled(np.ma.asarray(var[_nc_index(ds, var, spatial, slice(r0, r1), slice(c0, c1))]), np.nan)
        if [d for d in var.dimensions if d in spatial] != list(spatial):
            x = x.T
        units = str(getattr(var, "units", "")).strip().lower()
        meta = {"incidence": _nc_centre(ds, "incidence"), "lat": _nc_centre(ds, "latitude"),
                "lon": _nc_centre(ds, "longitude"), "time": str(getattr(ds, "start_date", "")),
                "beam": str(getattr(ds, "swath", "")).lower()}
    if name == "digital_number" or np.iscomplexobj(x):
        x = np.abs(x).astype(np.float64) ** 2
    elif units in ("db", "decibel", "decibels"):
        x = 10 ** (x.astype(np.float64) / 10)
    with _timed(timings, "downsample"):
        sigma0 = area_mean(x.astype(np.float32), az - r0, rg - c0)
    with _timed(timings, "finish"):
        image, valid_frac = finish_image(sigma0, size, cfg["max_invalid"])
    item_id = item.get("id") or os.path.splitext(os.path.basename(item["path"]))[0]
    tokens = item_id.lower().split("-")
    meta["beam"] = meta["beam"] or (tokens[1] if len(tokens) > 1 and tokens[1].startswith("wv") else "")
    return image, {**meta, "id": item_id, "platform": tokens[0] if tokens[0].startswith("s1") else "",
                   "valid_frac": valid_frac}


def read_tengeop(item, cfg, timings=None):
    with _timed(timings, "read"):
        if not os.path.isfile(item["path"]):
            raise InputError("GeoTIFF listed in 58683.txt is missing")
        with tifffile.TiffFile(item["path"]) as tif:
            x, nodata = tif.pages[0].asarray(), tif.pages[0].tags.get(42113)  # GDAL_NODATA
    if x.ndim == 3:  # first band, samples first or last
        x = x[..., 0] if x.shape[-1] <= 4 else x[0]
    if x.ndim != 2:
        raise InputError(f"GeoTIFF has shape {x.shape}, expected one band")
    is_float, x = x.dtype.kind == "f", x.astype(np.float64)
    if nodata is not None:
        try:
            x[x == float(str(nodata.value).strip("\x00 "))] = np.nan
        except ValueError:
            pass  # an unparsable nodata tag: no nodata value
    if cfg["tengeop_units"] == "db" or (cfg["tengeop_units"] == "auto" and is_float and (x < 0).any()):
        x = 10 ** (x / 10)
    fa, fr = (cfg["pixel_spacing"] / s for s in cfg["tengeop_spacing"])
    with _timed(timings, "downsample"):
        az, rg = output_edges(x.shape[0], fa, cfg["image_size"]), output_edges(x.shape[1], fr, cfg["image_size"])
        sigma0 = area_mean(x.astype(np.float32), az, rg)
    with _timed(timings, "finish"):
        image, valid_frac = finish_image(sigma0, cfg["image_size"], cfg["max_invalid"])
    keys = ("id", "beam", "lat", "lon", "time", "class_idx", "class_name", "split")
    return image, {**{k: item[k] for k in keys}, "platform": item["id"][:3], "valid_frac": valid_frac}


# ---------------------------------------------------------------- listing inputs, splits
def _fractions(cfg):
    f = cfg.get("split_fractions", [0.8, 0.05, 0.15])
    if abs(sum(f) - 1) > 1e-6:
        raise ListingError(f"data.split_fractions {f} must sum to 1")
    return f


def hash_split(item_id, seed, fractions):
    """Deterministic split of an id: a hash of (seed, id) in [0, 1) against the cumulative fractions."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest(), "little") / 2.0 ** 64
    return "train" if h < fractions[0] else "val" if h < fractions[0] + fractions[1] else "test"


def _list_safe(folder, cfg):
    items = []
    for d, subdirs, files in os.walk(folder):
        subdirs.sort()
        for s in [s for s in subdirs if s.endswith(".SAFE")]:
            mdir = os.path.join(d, s, "measurement")
            tiffs = sorted(f for f in os.listdir(mdir) if f.endswith((".tiff", ".tif"))) if os.path.isdir(mdir) else []
            items += [{"path": os.path.join(d, s), "member": f"measurement/{t}"} for t in tiffs] or \
                     [{"path": os.path.join(d, s), "member": ""}]  # read_item reports it
        subdirs[:] = [s for s in subdirs if not s.endswith(".SAFE")]
        for z in sorted(f for f in files if f.endswith(".zip")):
            try:
                with zipfile.ZipFile(os.path.join(d, z)) as zf:
                    names = sorted(n for n in zf.namelist() if "/measurement/" in n and n.endswith((".tiff", ".tif")))
            except (zipfile.BadZipFile, OSError):
                names = []  # read_item reports why
            items += [{"path": os.path.join(d, z), "member": n} for n in names] or [{"path": os.path.join(d, z),
                                                                                     "member": ""}]
    return [{**it, "id": os.path.splitext(os.path.basename(it["member"] or it["path"]))[0]} for it in items]


def _read_lines(path):
    if not os.path.isfile(path):
        raise ListingError(f"TenGeoP: {path} is missing")
    with open(path, encoding="utf-8", errors="replace") as f:
        return [(n + 1, line.split()) for n, line in enumerate(f) if line.strip() and not line.startswith("#")]


def _list_tengeop(folder, cfg):
    classes = {}
    for n, fields in _read_lines(os.path.join(folder, "58682.txt")):
        if fields[0] not in CLASS_NAMES or len(fields) < 2:
            raise ListingError(f"TenGeoP 58682.txt line {n}: expected '<letter F..O> <name>', got {' '.join(fields)!r}")
        classes[fields[0]] = " ".join(fields[1:])
    rows = []
    for n, fields in _read_lines(os.path.join(folder, "58683.txt")):
        try:
            coords = [float(v) for v in fields[-2:]]
        except ValueError:
            coords = None
        if coords is None or len(fields) < 6 or fields[1] not in classes:
            if n == 1 and coords is None:
                continue  # a header line
            raise ListingError(f"TenGeoP 58683.txt line {n}: expected 'path letter beam time c1 c2' with a class letter "
                             f"of 58682.txt, got {' '.join(fields)!r}")
        rows.append((fields[0], fields[1], fields[2].lower(), " ".join(fields[3:-2]), *coords))
    if not rows:
        raise ListingError(f"TenGeoP: {folder}/58683.txt lists no images")
    big = np.abs(np.array([r[4:] for r in rows])).max(axis=0) > 90
    if big.all():
        raise ListingError("TenGeoP 58683.txt: both coordinate columns have values beyond +-90")
    lon_first = bool(big[0])
    tif_root = os.path.join(folder, "GeoTIFF") if os.path.isdir(os.path.join(folder, "GeoTIFF")) else folder
    letters = sorted(CLASS_NAMES)
    items = sorted(({"path": os.path.join(tif_root, letter, os.path.splitext(os.path.basename(p))[0] + ".tiff"),
                     "id": os.path.splitext(os.path.basename(p))[0], "beam": beam, "time": when,
                     "lat": b if lon_first else a, "lon": a if lon_first else b, "class_idx": letters.index(letter),
                     "class_name": classes[letter]} for p, letter, beam, when, a, b in rows),
                   key=lambda it: (it["class_idx"], it["id"]))
    split = shards.stratified_split([it["class_idx"] for it in items], cfg["seed"], _fractions(cfg))
    for it, s in zip(items, split):
        it["split"] = str(s)
    print(f"TenGeoP: {len(items)} images, coordinates '{'lon lat' if lon_first else 'lat lon'}'; per class "
          f"(train/val/test):")
    for k, letter in enumerate(letters):
        split = [it["split"] for it in items if it["class_idx"] == k]
        counts = "/".join(str(split.count(s)) for s in SPLITS)
        print(f"  {letter} {CLASS_NAMES[letter]:<24s} {len(split):6d}  ({counts})")
    return items


def _list_netcdf(folder, cfg):
    skip = os.path.realpath(cfg["ocn_dir"]) + os.sep if cfg.get("ocn_dir") else None
    return [{"path": os.path.join(d, f), "id": os.path.splitext(f)[0]} for d, _, files in os.walk(folder)
            for f in files if f.endswith(".nc") and not (skip and (os.path.realpath(d) + os.sep).startswith(skip))]


def list_inputs(data_cfg):
    """All imagettes of data.source under data.input, sorted deterministically, as small picklable dicts."""
    source, folder = data_cfg["source"], data_cfg.get("input")
    if source not in SOURCES:
        raise ListingError(f"data.source '{source}' is not a real-data source ({', '.join(SOURCES)})")
    if not folder or not os.path.isdir(folder):
        raise ListingError(f"data.input '{folder}' is not a folder (needed for data.source={source})")
    _fractions(data_cfg)
    items = SOURCES[source].list(folder, data_cfg)
    if not items:
        raise ListingError(f"data.input '{folder}' holds no {source} inputs ({SOURCES[source].holds})")
    return items if source == "tengeop" else sorted(items, key=lambda it: (it["path"], it.get("member", "")))


# ---------------------------------------------------------------- one item
READ_ERRORS = (OSError, ValueError, KeyError, IndexError, EOFError, RuntimeError, struct.error, zipfile.BadZipFile,
               ET.ParseError, tifffile.TiffFileError)


def read_item(item, data_cfg, labels, timings=None):
    """One imagette -> (dB image float32 [S, S], finite; meta: standard shard columns + EXTRA_COLUMNS).
    Raises InputError naming the item for anything unreadable. `timings` (dict) accumulates seconds per stage."""
    source = data_cfg["source"]
    where = item["path"] + (f"[{item['member']}]" if item.get("member") else "")
    try:
        image, meta = SOURCES[source].read(item, data_cfg, timings)
    except InputError as e:
        raise InputError(" ".join(f"{where}: {e}".split()))
    except READ_ERRORS as e:
        raise InputError(" ".join(f"{where}: {type(e).__name__}: {e}".split()))
    lab = labels.get(meta["id"], {})
    out = {"id": meta["id"], "source": source, "beam": meta.get("beam", ""), "time": meta.get("time", ""),
           "class_idx": int(meta.get("class_idx", -1)), "class_name": meta.get("class_name", ""),
           "split": meta.get("split") or hash_split(meta["id"], data_cfg["seed"], _fractions(data_cfg)),
           "wind": float(lab.get("wind", np.nan)), "hs": float(lab.get("hs", np.nan)),
           "platform": meta.get("platform", ""), "valid_frac": meta["valid_frac"]}
    for key in ("incidence", "lat", "lon"):  # the image's own geometry, the OCN cell's where it has none
        value = float(meta.get(key, np.nan))
        out[key] = value if np.isfinite(value) else float(lab.get(key, np.nan))
    out.update({k: float(lab.get(k, np.nan)) for k in ocn.LABEL_COLUMNS})
    return image, out


# ---------------------------------------------------------------- the sources
class Source(NamedTuple):
    list: Callable      # (data.input folder, data cfg) -> items
    read: Callable      # (item, data cfg, timings) -> (dB image, meta)
    dataset: str        # the folder under data.root that prepare.py writes
    holds: str          # what data.input should contain (for the message when it is empty)


SOURCES = {"safe": Source(_list_safe, read_safe, "archive", "*.SAFE folders or *.zip"),
           "netcdf": Source(_list_netcdf, read_netcdf, "archive", "*.nc files"),
           "tengeop": Source(_list_tengeop, read_tengeop, "tengeop", "58682.txt, 58683.txt and GeoTIFF/")}
