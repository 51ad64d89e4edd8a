"""Sentinel-1 Wave Mode L1 SLC products, calibrated to sigma0 on the training grid (imagette.py): data.source
"safe" in sentinel1.py's SOURCES table.

    items = list_imagettes(folder, data_cfg)      # one item per measurement TIFF, zip members included
    image_db, meta = read_imagette(item, data_cfg, timings=None)

*.SAFE folders and *.zip files under data.input (recursive), one item per measurement TIFF (complex int16); zip
members are read in place (stored) or inflated in memory (deflated). sigma0 = (|DN|^2 - eta) / A^2, A = bilinear
sigmaNought LUT, eta = bilinear noise LUT (noiseRangeVector/noiseRangeLut, IPF >= 2.9, or noiseVector/noiseLut;
data.noise_removal), clipped at SIGMA0_FLOOR_DB. Ground range spacing = slant spacing / sin(incidenceAngleMidSwath);
rows are azimuth. The TIFF is streamed as raw int16 in row blocks (bounded memory, only the crop's rows), |DN|^2
is computed in float32 and summed per cell. A and eta vary slowly (a few LUT vectors over 20 km), so they are
applied per cell: mean(|DN|^2) / A(centre)^2 differs from the cell mean of |DN|^2 / A^2 by at most the relative
change of A^2 across the cell (and ~0 for a linear A); past CAL_TOLERANCE (1 %, < 0.05 dB) the LUTs are applied at
full resolution instead.
"""
import io
import os
import struct
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import scipy.sparse as sp
import tifffile

from .imagette import SIGMA0_FLOOR_DB, InputError, area_matrix, finish_image, output_edges, span, sum_rows, timed

CAL_TOLERANCE = 0.01     # largest relative change of A^2 across an output cell for per-cell calibration
BLOCK_ROWS = 128         # SLC rows per block: 2.8 MB int16 + 5.6 MB float32 at full width, stays in cache
# what a damaged product may raise beyond the errors of every reader (sentinel1.READ_ERRORS)
READ_ERRORS = (struct.error, zipfile.BadZipFile, ET.ParseError)


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
    c0, c1 = span(rg)
    mr = sp.kron(area_matrix(rg - c0, c1 - c0), np.ones((1, 2), np.float32), format="csr")
    n_out, per_block = len(az) - 1, max(1, int(BLOCK_ROWS / (az[1] - az[0])))
    max_rows = int(np.ceil(per_block * (az[1] - az[0]))) + 2
    raw = np.empty((max_rows, 2 * tiff.samples), dtype=tiff.dtype)
    power = np.empty((max_rows, 2 * (c1 - c0)), dtype=np.float32)
    sums = np.empty((2 if full_res else 1, n_out, 2 * (c1 - c0)), dtype=np.float32)
    for k0 in range(0, n_out, per_block):
        k1 = min(n_out, k0 + per_block)
        r0, r1 = int(np.floor(az[k0])), min(tiff.lines, int(np.ceil(az[k1] - 1e-9)))
        with timed(timings, "read"):
            tiff.read_rows(r0, r1, raw[:r1 - r0])
        with timed(timings, "power"):
            p = np.square(raw[:r1 - r0, 2 * c0:2 * c1], out=power[:r1 - r0], dtype=np.float32)  # casts once
        with timed(timings, "downsample"):
            sums[0, k0:k1] = sum_rows(p, az[k0:k1 + 1] - r0)
        if full_res:
            with timed(timings, "calibrate"):
                gain, noise = full_res(np.arange(r0, r1, dtype=np.float64))
                p -= np.repeat(noise.astype(np.float32) / 2, 2, axis=1)  # I^2 + Q^2 - eta, half on each
                p *= np.repeat(gain.astype(np.float32), 2, axis=1)
            with timed(timings, "downsample"):
                sums[1, k0:k1] = sum_rows(p, az[k0:k1 + 1] - r0)
    with timed(timings, "downsample"):
        return [(mr @ s.T).T for s in sums]


def calibrated_slc(tiff, ann, cal, noise, cfg, timings=None):
    """SLC -> (dB image [S, S], valid fraction): sigma0 block-averaged to data.pixel_spacing."""
    size = cfg["image_size"]
    fa = cfg["pixel_spacing"] / ann["az_spacing"]
    fr = cfg["pixel_spacing"] * np.sin(np.radians(ann["incidence"])) / ann["rg_spacing"]
    az, rg = output_edges(tiff.lines, fa, size), output_edges(tiff.samples, fr, size)
    noise = noise or (np.zeros(1), [np.zeros(1)], [np.zeros(1)])
    with timed(timings, "calibrate"):
        amp = interp_lut(cal, az - 0.5, rg - 0.5)  # at the cell edges; LUT pixel j is the centre of [j, j+1)
        change = max(np.abs(np.diff(amp, axis=0)).max(initial=0), np.abs(np.diff(amp, axis=1)).max(initial=0))
        full_res = None
        if 2 * change / amp.min() > CAL_TOLERANCE:
            cols = np.arange(*span(rg), dtype=np.float64)
            (cal_lines, cal_rows), (noise_lines, noise_rows) = lut_rows(cal, cols), lut_rows(noise, cols)
            full_res = lambda lines: (lut_at_lines(cal_lines, cal_rows, lines) ** -2.0,
                                      lut_at_lines(noise_lines, noise_rows, lines))
    sums = slc_power_sums(tiff, az, rg, timings, full_res)
    with timed(timings, "calibrate"):
        if full_res:
            sigma0 = sums[1] / (fa * fr)
        else:
            centre_az, centre_rg = (az[:-1] + az[1:]) / 2 - 0.5, (rg[:-1] + rg[1:]) / 2 - 0.5
            sigma0 = (sums[0] / (fa * fr) - interp_lut(noise, centre_az, centre_rg)) \
                / interp_lut(cal, centre_az, centre_rg) ** 2
        sigma0 = np.where(sums[0] > 0, np.maximum(sigma0, 10 ** (SIGMA0_FLOOR_DB / 10)), np.nan)  # 0: no data
    with timed(timings, "finish"):
        return finish_image(sigma0, size, cfg["max_invalid"])


def read_imagette(item, cfg, timings=None):
    """One measurement TIFF of a SAFE product -> (dB image [S, S], meta)."""
    with timed(timings, "parse"):
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
        with timed(timings, "parse"):
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


# ---------------------------------------------------------------- listing
def list_imagettes(folder, cfg):
    """One item per measurement TIFF of every .SAFE folder and .zip below folder; a product without one is
    still listed (member ""), so that read_item reports it."""
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
