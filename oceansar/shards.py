"""The shard format: the contract between prepare.py and every other stage.

A dataset is a folder:

    manifest.json              written last; its presence means the dataset is complete
    images_00000.npy           float16 [n, 1, H, W] imagettes in dB, memory-mappable (np.load(mmap_mode="r"))
    meta_00000.npz             per-sample metadata columns of that shard + the shard's pixel sums
    ...

manifest.json holds the format version, the image shape [1, H, W], dtype, pixel spacing (m), unit "dB", the
normalisation mean/std (dB, over all pixels of the dataset; applied at load), the sample count, the metadata
column names, and per shard: images file, meta file, count, sha256 of both files.

Metadata columns (one value per sample; missing = NaN for numbers, "" for strings, -1 for class_idx):
    id, source, beam, time, class_name, split          strings
    incidence, lat, lon, wind, hs                      float32 (deg, deg, deg, m/s, m)
    class_idx                                          int16
A writer may add further columns (numbers or strings); readers ignore what they do not know.

Writing is idempotent and resumable: shard k is written under temporary names and renamed when complete (meta
first, images last, so an images file only exists for a complete shard); a rerun skips complete shards; the
manifest is written last, from the shards' own metadata files. Pixels beyond the float16 range (|x| > 65504 dB)
are refused, and so is a non-finite normalisation.

Integrity when reading (ShardDataset): opening always checks the manifest against the files (every shard's
images file has the right .npy header and byte size, every meta file its sha256 and row count; a few ms per
shard) and the first time a process maps a shard its images file is hashed (sha256) once; a mismatch is a
DataError naming the file. verify=True hashes every shard up front instead.
"""

import bisect
import hashlib
import io
import json
import os
import zipfile

import numpy as np

from . import atomic
from .errors import UserError

FORMAT_VERSION = 1
STRING_COLUMNS = ("id", "source", "beam", "time", "class_name", "split")
FLOAT_COLUMNS = ("incidence", "lat", "lon", "wind", "hs")
INT_COLUMNS = ("class_idx",)
STANDARD_COLUMNS = STRING_COLUMNS + FLOAT_COLUMNS + INT_COLUMNS
STATS_KEYS = ("_pixel_sum", "_pixel_sumsq", "_pixel_count")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504: larger finite float32 values become inf
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
NEAR_CONSTANT_DB = 0.1   # an imagette whose pixels vary less than this (std, dB) carries no texture


class DataError(UserError, ValueError):
    """A prepared dataset that is missing, corrupt or inconsistent: one line naming the file."""


def sha256_file(path, block=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def standard_meta(count, **columns):
    """Fill the standard metadata columns for `count` samples; missing ones get their 'unknown' value."""
    meta = {}
    for name in STRING_COLUMNS:
        meta[name] = np.asarray(columns.pop(name, [""] * count), dtype=str)
    for name in FLOAT_COLUMNS:
        meta[name] = np.asarray(columns.pop(name, np.full(count, np.nan)), dtype=np.float32)
    meta["class_idx"] = np.asarray(columns.pop("class_idx", np.full(count, -1)), dtype=np.int16)
    for name, values in columns.items():
        values = np.asarray(values)
        meta[name] = values.astype(str) if values.dtype.kind in "OUS" else values
    for name, values in meta.items():
        if values.shape != (count,):
            raise ValueError(f"metadata column '{name}' has shape {values.shape}, expected ({count},)")
    return meta


def stratified_split(class_idx, seed, fractions=(0.8, 0.05, 0.15)):
    """The split column of a labelled set: inside every class a seeded permutation is cut at the train/val
    fractions (rounded), the rest is test. Returns a str array of 'train'/'val'/'test'."""
    class_idx = np.asarray(class_idx)
    rng = np.random.default_rng(seed)
    split = np.full(len(class_idx), "test", dtype="<U5")
    for c in np.unique(class_idx):  # a loop over classes, not samples
        members = rng.permutation(np.flatnonzero(class_idx == c))
        n_train = int(round(len(members) * fractions[0]))
        n_val = min(int(round(len(members) * fractions[1])), len(members) - n_train)
        split[members[:n_train]] = "train"
        split[members[n_train:n_train + n_val]] = "val"
    return split


def near_constant_warning(dataset, threshold=0.1):
    """A warning (str) when at least `threshold` of a sample of imagettes are near-constant, else None: such data
    trains without any error and teaches nothing."""
    std = dataset.image_std()
    share = float((std < NEAR_CONSTANT_DB).mean())
    if share < threshold:
        return None
    return (f"{dataset.folder}: {share:.0%} of {len(std)} sampled imagettes are near-constant (per-image std < "
            f"{NEAR_CONSTANT_DB} dB; median {np.median(std):.3g} dB): check what prepare.py read")


class ShardWriter:
    """Writes a dataset folder shard by shard; safe to interrupt and rerun."""

    def __init__(self, folder, image_size, pixel_spacing, samples_per_shard):
        self.folder, self.samples_per_shard = folder, samples_per_shard
        self.shape = [1, image_size, image_size]
        self.pixel_spacing = float(pixel_spacing)
        os.makedirs(folder, exist_ok=True)

    def paths(self, k):
        return (os.path.join(self.folder, f"images_{k:05d}.npy"), os.path.join(self.folder, f"meta_{k:05d}.npz"))

    def is_complete(self, k):
        images, meta = self.paths(k)
        return os.path.exists(images) and os.path.exists(meta)

    def write(self, k, images_db, meta):
        """Write shard k: images_db float [n, H, W] or [n, 1, H, W] in dB (finite), meta from standard_meta()."""
        images = np.asarray(images_db, dtype=np.float32).reshape(-1, *self.shape)
        n = len(images)
        if not np.isfinite(images).all():
            raise ValueError(f"shard {k}: non-finite pixels must be handled before writing")
        over = np.abs(images) > FLOAT16_MAX
        if over.any():  # float16 would store inf and poison the dataset's mean/std
            raise DataError(f"shard {k} of {self.folder}: {int(over.sum())} pixel(s) in "
                            f"{int(over.reshape(n, -1).any(1).sum())} image(s) exceed the float16 range "
                            f"(|x| > {FLOAT16_MAX:.0f}, largest {float(np.abs(images).max()):.3g}): not dB values?")
        if any(len(v) != n for v in meta.values()):
            raise ValueError(f"shard {k}: metadata columns do not all have {n} rows")
        half = images.astype(np.float16)
        buf = io.BytesIO()
        np.save(buf, half)
        image_bytes = buf.getvalue()
        pixels = half.astype(np.float64)  # statistics of what readers will see, not of the float32 originals
        stats = {"_pixel_sum": pixels.sum(), "_pixel_sumsq": np.square(pixels).sum(), "_pixel_count": pixels.size,
                 "_images_sha256": hashlib.sha256(image_bytes).hexdigest()}
        images_path, meta_path = self.paths(k)
        with atomic.open_atomic(meta_path, "wb") as f:
            np.savez(f, **meta, **{key: np.asarray(v) for key, v in stats.items()})
        with atomic.open_atomic(images_path, "wb") as f:
            f.write(image_bytes)

    def finalize(self, num_shards, extra=None):
        """Write manifest.json from the complete shards 0..num_shards-1 (raises if one is missing)."""
        shards, total, s, ss, columns = [], 0, 0.0, 0.0, None
        for k in range(num_shards):
            images_path, meta_path = self.paths(k)
            if not self.is_complete(k):
                raise RuntimeError(f"shard {k} of {self.folder} is missing: rerun to complete it")
            with np.load(meta_path) as z:
                count = int(z["_pixel_count"]) // int(np.prod(self.shape))
                s += float(z["_pixel_sum"])
                ss += float(z["_pixel_sumsq"])
                images_sha = str(z["_images_sha256"])
                names = [n for n in z.files if not n.startswith("_")]
            if count == 0:  # every input of this shard failed: nothing to list
                continue
            columns = columns or names
            if names != columns:
                raise RuntimeError(f"shard {k} of {self.folder} has columns {names}, shard 0 has {columns}")
            shards.append({"images": os.path.basename(images_path), "meta": os.path.basename(meta_path),
                           "count": count, "sha256": images_sha, "meta_sha256": sha256_file(meta_path)})
            total += count
        if total == 0:
            raise RuntimeError(f"{self.folder}: no samples were written")
        mean = s / (total * np.prod(self.shape))
        std = max(np.sqrt(max(ss / (total * np.prod(self.shape)) - mean * mean, 0.0)), 1e-6)
        if not (np.isfinite(mean) and np.isfinite(std)):
            raise DataError(f"{self.folder}: the pixel statistics are not finite (mean {mean}, std {std}); "
                            f"refusing to write a manifest that would make every image NaN")
        manifest = {"format_version": FORMAT_VERSION, "shape": self.shape, "dtype": "float16", "unit": "dB",
                    "pixel_spacing_m": self.pixel_spacing, "norm_mean": float(mean), "norm_std": float(std),
                    "count": total, "columns": columns, "shards": shards, **(extra or {})}
        atomic.write_json(manifest, os.path.join(self.folder, "manifest.json"))
        return manifest


class ShardDataset:
    """Random access by global index into a prepared dataset, through memory-mapped shards.

    Shards are opened lazily with np.load(mmap_mode="r") and kept in a small cache. Pages a memmap has touched
    count in the process's RSS until the mapping is dropped, so a long-lived reader (a prefetch thread, a worker)
    should call release() now and then (pretrain.py does it every epoch); pickling drops the mappings too.
    """

    def __init__(self, folder, verify=False, max_open=64):
        self.folder, self.max_open = folder, max_open
        path = os.path.join(folder, "manifest.json")
        if not os.path.isfile(path):
            raise DataError(f"{folder}: no manifest.json (not a prepared dataset, or preparation did not finish)")
        try:
            with open(path) as f:
                self.manifest = m = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: manifest is not valid JSON ({e})")
        missing = {"format_version", "shape", "count", "shards", "norm_mean", "norm_std"} - set(m)
        if missing:
            raise DataError(f"{path}: manifest lacks {sorted(missing)}")
        if m["format_version"] != FORMAT_VERSION:
            raise DataError(f"{path}: format version {m['format_version']}, this code reads {FORMAT_VERSION}")
        self.shape = tuple(m["shape"])
        self.mean, self.std = float(m["norm_mean"]), float(m["norm_std"])
        if not (np.isfinite(self.mean) and np.isfinite(self.std) and self.std > 0):
            raise DataError(f"{path}: normalisation mean {self.mean} / std {self.std} is not usable; rerun prepare.py")
        self.pixel_spacing = float(m.get("pixel_spacing_m", float("nan")))
        counts = [s["count"] for s in m["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self.offsets[-1] != m["count"]:
            raise DataError(f"{path}: shard counts sum to {self.offsets[-1]}, manifest says {m['count']}")
        self._offsets_list = self.offsets.tolist()
        self._maps = {}
        self._hashed = set()  # shards whose images sha256 was checked; shared by copies (Prefetcher's thread)
        if verify:
            self.verify()
        self._check_images_files()
        self.meta = self._load_meta()

    # ---------------------------------------------------------------- integrity and metadata
    def _file(self, k, key):
        path = os.path.join(self.folder, self.manifest["shards"][k][key])
        if not os.path.isfile(path):
            raise DataError(f"{path}: shard file listed in the manifest is missing; rerun prepare.py")
        return path

    def _check_images_files(self):
        """Cheap, always: each images file's .npy header and byte size match the manifest (no data read)."""
        for k, s in enumerate(self.manifest["shards"]):
            path = self._file(k, "images")
            expected = (s["count"], *self.shape)
            try:
                with open(path, "rb") as f:
                    version = np.lib.format.read_magic(f)
                    read_header = NPY_HEADER_READERS.get(version)
                    if read_header is None:
                        raise ValueError(f".npy format version {version}")
                    shape, _, dtype = read_header(f)
                    data_start = f.tell()
            except (ValueError, OSError, SyntaxError) as e:
                raise DataError(f"{path}: unreadable shard header ({e}); rerun prepare.py to rewrite it")
            if tuple(shape) != expected or dtype != np.float16:
                raise DataError(f"{path}: shape {tuple(shape)} {dtype}, manifest says "
                                f"({', '.join(map(str, expected))}) float16")
            size, want = os.path.getsize(path), data_start + 2 * int(np.prod(expected))
            if size != want:
                raise DataError(f"{path}: {size} bytes, its header needs {want} (truncated or padded shard)")

    def _load_meta(self):
        """The metadata columns of all shards; each meta file is checked against its sha256 and row count."""
        columns = {}
        for k, s in enumerate(self.manifest["shards"]):
            path = self._file(k, "meta")
            if "meta_sha256" in s and sha256_file(path) != s["meta_sha256"]:
                raise DataError(f"{path}: sha256 does not match the manifest (corrupt or modified metadata)")
            try:
                with np.load(path) as z:
                    parts = {name: z[name] for name in z.files if not name.startswith("_")}
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
                raise DataError(f"{path}: unreadable metadata ({type(e).__name__}: {e}); rerun prepare.py")
            for name, values in parts.items():
                if len(values) != s["count"]:
                    raise DataError(f"{path}: column '{name}' has {len(values)} rows, the manifest says "
                                    f"{s['count']}")
                columns.setdefault(name, []).append(values)
        return {name: np.concatenate(parts) for name, parts in columns.items()}

    def _check_hash(self, k):
        path = self._file(k, "images")
        if sha256_file(path) != self.manifest["shards"][k]["sha256"]:
            raise DataError(f"{path}: sha256 does not match the manifest (corrupt or modified shard); rerun "
                            f"prepare.py to rewrite it")
        self._hashed.add(k)

    def verify(self):
        """Check every shard's sha256 (images and metadata) against the manifest; raise on the first mismatch."""
        for k, s in enumerate(self.manifest["shards"]):
            self._check_hash(k)
            path = self._file(k, "meta")
            if sha256_file(path) != s["meta_sha256"]:
                raise DataError(f"{path}: sha256 does not match the manifest (corrupt or modified metadata)")

    def image_std(self, n=256, seed=0, max_shards=4):
        """Per-image std (dB) of up to n random imagettes from up to max_shards random shards (so a large archive
        hashes only those at load): near zero means the data carries no texture."""
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(self.manifest["shards"]), size=min(max_shards, len(self.manifest["shards"])),
                            replace=False)
        pool = np.concatenate([np.arange(self.offsets[k], self.offsets[k + 1]) for k in picked])
        idx = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
        with np.errstate(invalid="ignore", over="ignore"):
            return self.read_batch(idx, raw=True).reshape(len(idx), -1).std(1)

    # ---------------------------------------------------------------- images
    def _open(self, k):
        mm = self._maps.get(k)
        if mm is None:
            s = self.manifest["shards"][k]
            if k not in self._hashed:  # once per shard and process: ~2 ms per MB
                self._check_hash(k)
            path = self._file(k, "images")
            try:
                mm = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as e:
                raise DataError(f"{path}: unreadable shard ({e}); rerun prepare.py to rewrite it")
            if mm.shape != (s["count"], *self.shape) or mm.dtype != np.float16:
                raise DataError(f"{path}: shape {mm.shape} {mm.dtype}, manifest says "
                                f"({s['count']}, {', '.join(map(str, self.shape))}) float16")
            if len(self._maps) >= self.max_open:
                self._maps.pop(next(iter(self._maps)))
            self._maps[k] = mm
        return mm

    def release(self):
        """Drop all memory maps (frees the RSS their touched pages hold)."""
        self._maps = {}

    def __getstate__(self):
        return {**self.__dict__, "_maps": {}}

    def __len__(self):
        return int(self.offsets[-1])

    def locate(self, i):
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples in {self.folder}")
        k = bisect.bisect_right(self._offsets_list, i) - 1
        return k, i - self._offsets_list[k]

    def raw(self, i):
        """Sample i as float32 dB, [1, H, W]."""
        k, j = self.locate(int(i))
        return self._open(k)[j].astype(np.float32)

    def __getitem__(self, i):
        x = self.raw(i)
        x -= self.mean
        x /= self.std
        return x

    def read_batch(self, indices, raw=False):
        """Samples at `indices` (any order, repeats allowed) as float32 [n, 1, H, W]; normalised unless raw."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} samples in {self.folder}")
        out = np.empty((len(idx), *self.shape), dtype=np.float32)
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        order = np.argsort(shard, kind="stable")
        bounds = np.searchsorted(shard[order], np.arange(len(self.offsets)))
        for k in np.unique(shard):  # a loop over touched shards, not over samples
            rows = order[bounds[k]:bounds[k + 1]]
            local = idx[rows] - self.offsets[k]
            sort = np.argsort(local)
            out[rows[sort]] = self._open(k)[local[sort]]  # sorted reads walk the memmap forwards
        if not raw:
            out -= self.mean
            out /= self.std
        return out

    def labels(self, column):
        return self.meta[column]
