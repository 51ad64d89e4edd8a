"""Readers for real Sentinel-1 Wave Mode data: L1 SLC SAFE (folders or zips: safe.py), netCDF imagettes,
TenGeoP-SARwv, and the L2 OCN wind/wave labels (ocn.py). SOURCES maps each data.source to its lister, reader
and output dataset; a new source is one entry there. prepare.py drives them through:

    items = list_inputs(data_cfg)                 # small picklable dicts {"path", "id"[, "member"]...}, sorted
    labels, failures = ocn.load_labels(data_cfg)  # id -> label dict from data.ocn_dir; [(file, reason)] unreadable
    image_db, meta = read_item(item, data_cfg, labels, timings=None)  # float32 [S, S] dB, finite; scalar meta
    InputError                                    # read_item: corrupt/truncated/malformed input, one-line message

Every imagette becomes S x S dB pixels at data.pixel_spacing metres (imagette.py says how).

- "safe": Level-1 SLC *.SAFE folders and *.zip files, calibrated to sigma0 (safe.py says how).
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
import os
from typing import Callable, NamedTuple

import netCDF4
import numpy as np
import tifffile

from . import ocn
from . import safe
from . import shards
from . import tengeop
from .errors import UserError
from .imagette import InputError, area_mean, finish_image, output_edges, span, timed

CLASS_NAMES = tengeop.NAME_OF_LETTER  # TenGeoP letter -> class name
SPLITS = ("train", "val", "test")
EXTRA_COLUMNS = ("platform", "valid_frac") + ocn.LABEL_COLUMNS


class ListingError(UserError, ValueError):
    """The inputs cannot be listed at all (a malformed TenGeoP index, an empty or missing data.input): exit 1."""


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
    with timed(timings, "read"), netCDF4.Dataset(item["path"], auto_complex=True) as ds:
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
        (r0, r1), (c0, c1) = span(az), span(rg)
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
    with timed(timings, "downsample"):
        sigma0 = area_mean(x.astype(np.float32), az - r0, rg - c0)
    with timed(timings, "finish"):
        image, valid_frac = finish_image(sigma0, size, cfg["max_invalid"])
    item_id = item.get("id") or os.path.splitext(os.path.basename(item["path"]))[0]
    tokens = item_id.lower().split("-")
    meta["beam"] = meta["beam"] or (tokens[1] if len(tokens) > 1 and tokens[1].startswith("wv") else "")
    return image, {**meta, "id": item_id, "platform": tokens[0] if tokens[0].startswith("s1") else "",
                   "valid_frac": valid_frac}


def read_tengeop(item, cfg, timings=None):
    with timed(timings, "read"):
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
    with timed(timings, "downsample"):
        az, rg = output_edges(x.shape[0], fa, cfg["image_size"]), output_edges(x.shape[1], fr, cfg["image_size"])
        sigma0 = area_mean(x.astype(np.float32), az, rg)
    with timed(timings, "finish"):
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
READ_ERRORS = (OSError, ValueError, KeyError, IndexError, EOFError, RuntimeError, tifffile.TiffFileError) \
    + safe.READ_ERRORS


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


SOURCES = {"safe": Source(safe.list_imagettes, safe.read_imagette, "archive", "*.SAFE folders or *.zip"),
           "netcdf": Source(_list_netcdf, read_netcdf, "archive", "*.nc files"),
           "tengeop": Source(_list_tengeop, read_tengeop, "tengeop", "58682.txt, 58683.txt and GeoTIFF/")}
