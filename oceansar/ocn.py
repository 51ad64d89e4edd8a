"""Sentinel-1 Level-2 OCN labels: wind speed, wave height and their quality flags, by imagette id.

    labels, failures = ocn.load_labels(data_cfg)     # {imagette id: {column: value}}, [(file, reason)]
    image_id, labels, lacks = ocn.read_ocn(path)     # one *-ocn-*.nc file (its SLC twin's id)

Each OCN netCDF holds the osw* variables on an (oswAzSize, oswRaSize[, partition]) grid; the imagette's value is
the centre cell, read raw: fills, -999 and values outside flag_values become NaN. Wave partitions are sorted by
energy (most energetic first) into hs_p1..3 / wl_p1..3. prepare.py joins them to the SAFE or netCDF imagettes;
land (data.ocn_drop_land) and quality-flagged (data.ocn_max_quality) cells keep only their flags.
"""

import os

import netCDF4
import numpy as np

from .config import ConfigError

N_PARTITIONS = 3
LABEL_COLUMNS = ("sar_wind", "ocn_nrcs", "ocn_nv", "az_cutoff", "hs_p1", "hs_p2", "hs_p3", "wl_p1", "wl_p2", "wl_p3",
                 "land_flag", "quality_flag")
OCN_SCALARS = {"wind": "oswEcmwfWindSpeed", "sar_wind": "oswWindSpeed", "hs": "oswTotalHs", "ocn_nrcs": "oswNrcs",
               "ocn_nv": "oswNv", "az_cutoff": "oswAzCutoff", "land_flag": "oswLandFlag",
               "quality_flag": "oswQualityFlag", "incidence": "oswIncidenceAngle", "lat": "oswLat", "lon": "oswLon"}


def _ocn_value(ds, name):
    """Centre-cell value(s) of an osw variable, read raw; fills and values outside flag_values -> NaN."""
    if name not in ds.variables:
        return None
    v = ds.variables[name]
    v.set_auto_maskandscale(False)  # the int8 quality flag's fill need not fit int8: compare by value
    x = np.asarray(v[...]).astype(np.float64)
    bad = ~np.isfinite(x) | (x == -999.0)
    for attr in ("_FillValue", "missing_value"):
        if attr in v.ncattrs():
            bad |= x == float(np.ravel(np.asarray(v.getncattr(attr), dtype=np.float64))[0])
    if "flag_values" in v.ncattrs():
        bad |= ~np.isin(x, np.asarray(v.getncattr("flag_values"), dtype=np.float64))
    x = np.where(bad, np.nan, x * float(getattr(v, "scale_factor", 1.0)) + float(getattr(v, "add_offset", 0.0)))
    return x[x.shape[0] // 2, x.shape[1] // 2] if x.ndim >= 2 else x  # (oswAzSize, oswRaSize[, partition])


def read_ocn(path):
    """One OCN netCDF -> (imagette id, labels, names of the variables it lacks)."""
    with netCDF4.Dataset(path) as ds:
        values = {key: _ocn_value(ds, var) for key, var in OCN_SCALARS.items()}
        hs, wl = _ocn_value(ds, "oswHs"), _ocn_value(ds, "oswWl")
    lacks = [OCN_SCALARS[k] for k, v in values.items() if v is None] + [n for n, v in (("oswHs", hs), ("oswWl", wl))
                                                                        if v is None]
    if all(values[k] is None for k in ("wind", "sar_wind", "hs")) and hs is None:
        raise ValueError("no osw wind or wave variables")
    labels = {k: float(np.ravel(v)[0]) if v is not None and np.size(v) else np.nan for k, v in values.items()}
    hs = np.full(N_PARTITIONS, np.nan) if hs is None else np.ravel(hs)
    wl = np.ravel(wl) if wl is not None and np.size(wl) == len(hs) else np.full(len(hs), np.nan)
    order = np.argsort(np.where(np.isnan(hs), np.inf, -hs), kind="stable")  # most energetic partition first
    hs, wl = np.r_[hs[order], [np.nan] * N_PARTITIONS], np.r_[wl[order], [np.nan] * N_PARTITIONS]
    for i in range(N_PARTITIONS):
        labels[f"hs_p{i + 1}"], labels[f"wl_p{i + 1}"] = float(hs[i]), float(wl[i]) if np.isfinite(hs[i]) else np.nan
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem.replace("-ocn-", "-slc-", 1), labels, lacks


def load_labels(data_cfg):
    """Labels of every OCN file under data.ocn_dir -> ({id: labels}, [(file, reason)] for unreadable files)."""
    folder = data_cfg.get("ocn_dir")
    if not folder:
        return {}, []
    if not os.path.isdir(folder):
        raise ConfigError(f"config key 'data.ocn_dir': {folder} is not a folder")
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".nc"))
    labels, failures, lacking, dropped = {}, [], {}, {"land": 0, "quality": 0}
    max_q, drop_land = data_cfg.get("ocn_max_quality"), data_cfg.get("ocn_drop_land", True)
    for path in paths:
        try:
            key, lab, lacks = read_ocn(path)
        except (OSError, RuntimeError, ValueError, KeyError, IndexError) as e:
            failures.append((path, " ".join(f"unreadable OCN file: {e}".split())))
            print(f"skip {path}: {failures[-1][1]}")
            continue
        for name in lacks:
            lacking[name] = lacking.get(name, 0) + 1
        reason = "land" if drop_land and lab["land_flag"] == 1 else \
            "quality" if max_q is not None and lab["quality_flag"] > max_q else None
        if reason:  # blank every label, keep the flags that explain why
            dropped[reason] += 1
            lab = {k: (v if k in ("land_flag", "quality_flag") else np.nan) for k, v in lab.items()}
        labels[key] = lab
    unusable = ", ".join(f"{k} {sum(np.isnan(l[k]) for l in labels.values())}" for k in ("wind", "sar_wind", "hs"))
    print(f"OCN labels: {len(labels)} of {len(paths)} files, {len(failures)} unreadable, {dropped['land']} dropped "
          f"as land, {dropped['quality']} for quality; NaN (missing/fill/filtered): {unusable}"
          + "".join(f"; {k} absent in {n}" for k, n in sorted(lacking.items())))
    return labels, failures
