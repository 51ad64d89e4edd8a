"""One imagette on the training grid, whatever its source: the resampling every reader (sentinel1.py, safe.py)
shares, the last step to dB, and the error a reader raises for an unreadable item.

Every imagette becomes S x S pixels (S = data.image_size) at data.pixel_spacing metres: the linear intensity is
area-averaged onto a centred grid of cells of that ground size (exact overlap weights, non-integer factors fine),
the central S x S cells are kept, missing ones are padded with the median (column valid_frac = fraction of real
data), then dB. Invalid pixels (NaN/inf, linear <= 0, GeoTIFF nodata, SLC cells without signal): a cell less than
half valid is invalid; above data.max_invalid invalid cells -> InputError, else they take the valid median.

    az, rg = output_edges(lines, factor_az, S), output_edges(samples, factor_rg, S)   # cell edges, pixel units
    sigma0 = area_mean(linear, az, rg)                  # or sum_rows / area_matrix for a streamed reader
    image_db, valid_frac = finish_image(sigma0, S, max_invalid)
"""
import time
from contextlib import contextmanager

import numpy as np
import scipy.sparse as sp

SIGMA0_FLOOR_DB = -40.0  # below any NESZ: what noise removal may leave


class InputError(Exception):
    """A corrupt, truncated or malformed input item; prepare.py skips it and lists the one-line message (the item
    and the reason) in failures.jsonl."""


@contextmanager
def timed(timings, stage):
    """Adds the block's seconds to timings[stage] (timings None: not timed)."""
    t = time.perf_counter()
    yield
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t


def output_edges(n_in, factor, size):
    """Edges (input pixel units) of min(size, n_in // factor) centred output cells of `factor` input pixels."""
    n = int(min(size, np.floor(n_in / factor + 1e-6)))
    if n < 1:
        raise InputError(f"{n_in} input pixels make less than one output pixel (factor {factor:.2f})")
    return (n_in - n * factor) / 2 + factor * np.arange(n + 1)


def span(edges):
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

