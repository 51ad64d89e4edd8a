"""Stage 1: turn Sentinel-1 Wave Mode imagettes into sharded, memory-mappable datasets (oceansar/shards.py).

Reads (data.source):
    synthetic   nothing: generates the embedded physics-based WV archive (oceansar/synthetic.py, DATA.md)
    safe        data.input: Level-1 SLC products, as .SAFE folders or .zip downloads (oceansar/safe.py)
    netcdf      data.input: netCDF imagettes (e.g. saved by xsar)
    tengeop     data.input: the TenGeoP-SARwv tree (58682.txt, 58683.txt, GeoTIFF/<letter>/*.tiff)
  safe and netcdf join L2 OCN wind and wave labels by imagette id when data.ocn_dir is set.

Writes, under data.root:
    synthetic   archive/     the unlabelled-in-spirit pretraining archive (heavy-tailed class prior; the true
                             class, wind and Hs are stored so pruning diagnostics can show the rebalancing)
                tengeop/     class-balanced TenGeoP-like set, split column train/val/test (80/5/15)
                regression/  wind speed and Hs set over a wide range of conditions, split 80/5/15
    safe/netcdf archive/     every readable imagette, with OCN labels and an id-hash split
    tengeop     tengeop/     the benchmark, stratified seeded 80/5/15 split
  Each dataset folder holds manifest.json, images_*.npy, meta_*.npz, config.yaml, montage.png (data.montage),
  and for real sources failures.jsonl (one line per skipped file: file, reason).

Commands:
    python prepare.py configs/demo.yaml                                  # synthetic demo archive, ~seconds
    python prepare.py configs/demo.yaml data.num_samples=100000 data.workers=8
    python prepare.py configs/oceansar1.yaml data.source=safe data.input=/data/S1_WV_SLC data.ocn_dir=/data/OCN
    python prepare.py configs/oceansar1.yaml data.source=tengeop data.input=/data/TenGeoP-SARwv --strict
Interrupted runs resume: rerun the same command; complete shards are kept, the manifest is written last.
Each dataset folder records what it is made of in inputs.json (a sha256 of the input listing, relative paths and
sizes, and of the data.* keys that shape the output); a rerun over a changed listing or config is refused
instead of mixing two preparations. Unreadable inputs are skipped and listed in failures.jsonl, and so are
imagettes whose real data cover less than data.min_coverage of the output; --strict makes the first one fatal.
Exit codes: 0 done, 1 nothing readable or a --strict failure, 2 bad config (a missing data.input, an
unwritable data.root, a changed input listing).
"""

import os

# Before torch loads OpenMP: threads that spin while idle slow a small shared CPU several-fold. A wait
# policy the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hashlib
import json
import multiprocessing as mp

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from oceansar import atomic
from oceansar import config
from oceansar import errors
from oceansar import ocn
from oceansar import sentinel1
from oceansar import shards
from oceansar import synthetic

EVAL_SEED_OFFSETS = {"archive": 0, "tengeop": 1_000_003, "regression": 2_000_029}  # disjoint synthetic seeds
# data.* keys that change what a shard holds; workers, montage, strict and the folders themselves do not.
OUTPUT_KEYS = ("source", "image_size", "pixel_spacing", "samples_per_shard", "seed", "num_samples", "class_prior",
               "eval_per_class", "regression_samples", "split_fractions", "noise_removal", "max_invalid",
               "min_coverage", "nc_variable", "tengeop_units", "tengeop_spacing", "ocn_max_quality", "ocn_drop_land")


# ------------------------------------------------------------------------------------------------ resuming
def listing_of(folder):
    """(relative path, size) of every file under `folder`, sorted: what a resumed run must find unchanged."""
    if not folder:
        return []
    return sorted((os.path.relpath(os.path.join(d, f), folder), os.path.getsize(os.path.join(d, f)))
                  for d, _, files in os.walk(folder) for f in files)


def record_inputs(folder, d, name, listing):
    """Write <folder>/inputs.json on the first run; refuse to resume a folder prepared from other inputs."""
    plan = {"dataset": name, **{k: d[k] for k in OUTPUT_KEYS}, "listing": listing}
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    path = os.path.join(folder, "inputs.json")
    if os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        if before.get("sha256") != digest:
            raise config.ConfigError(
                f"config key 'data.root': {folder} was prepared from other inputs or data.* settings "
                f"({before.get('files')} input files then, {len(listing)} now; recorded in {path}); delete the "
                f"folder to start over, or choose another data.root")
        return
    os.makedirs(folder, exist_ok=True)
    atomic.write_json({"sha256": digest, "files": len(listing), "keys": {k: d[k] for k in OUTPUT_KEYS}}, path)


# ------------------------------------------------------------------------------------------------ synthetic
def synthetic_plan(d):
    """The three synthetic datasets: name -> (number of samples, class prior, generator options)."""
    prior = d["class_prior"] or synthetic.ARCHIVE_PRIOR
    uniform = [0.1] * 10
    return {
        "archive": (d["num_samples"], prior, {}),
        "tengeop": (10 * d["eval_per_class"], uniform, {"balanced_classes": True}),
        # Wind and Hs labels are only meaningful over open ocean: waves, streaks and cells.
        "regression": (d["regression_samples"], [0.5, 0.3, 0.2] + [0.0] * 7, {"balanced_conditions": True}),
    }


def synthetic_shard_job(job):
    """Generate and write one shard (runs in a worker process)."""
    folder, k, start, count, d, prior, options, seed = job
    images, meta = synthetic.generate(start, count, image_size=d["image_size"], pixel_spacing=d["pixel_spacing"],
                                      seed=seed, class_prior=prior, **options)
    ids = [f"synthetic-{seed}-{start + i:08d}" for i in range(count)]
    meta = shards.standard_meta(count, id=ids, source=["synthetic"] * count, **meta)
    writer = shards.ShardWriter(folder, d["image_size"], d["pixel_spacing"], d["samples_per_shard"])
    writer.write(k, images, meta)
    return count


def prepare_synthetic(cfg):
    d = cfg["data"]
    for name, (count, prior, options) in synthetic_plan(d).items():
        if count == 0:
            continue
        folder = os.path.join(d["root"], name)
        seed = d["seed"] + EVAL_SEED_OFFSETS[name]
        sps = d["samples_per_shard"]
        record_inputs(folder, d, name, [])
        writer = shards.ShardWriter(folder, d["image_size"], d["pixel_spacing"], sps)
        num_shards = -(-count // sps)
        jobs = [(folder, k, k * sps, min(sps, count - k * sps), d, prior, options, seed)
                for k in range(num_shards) if not writer.is_complete(k)]
        run_jobs(synthetic_shard_job, jobs, d["workers"], total=sum(j[3] for j in jobs), desc=name)
        if name != "archive":
            add_split_column(writer, num_shards, seed, d["split_fractions"])
        manifest = writer.finalize(num_shards, extra={"source": "synthetic", "name": name})
        finish_dataset(cfg, folder, manifest)


def add_split_column(writer, num_shards, seed, fractions):
    """Evaluation sets get a stratified split; it needs every class_idx, so it is added once all shards exist."""
    metas = []
    for k in range(num_shards):
        with np.load(writer.paths(k)[1]) as z:
            metas.append({n: z[n] for n in z.files})
    class_idx = np.concatenate([m["class_idx"] for m in metas])
    split = shards.stratified_split(class_idx, seed, fractions)
    offset = 0
    for k, m in enumerate(metas):
        n = len(m["class_idx"])
        m["split"] = split[offset:offset + n]
        offset += n
        with atomic.open_atomic(writer.paths(k)[1], "wb") as f:
            np.savez(f, **m)


# ------------------------------------------------------------------------------------------------ real data
def real_shard_job(job):
    """Read the items of one shard, skipping unreadable ones; write the shard and its failure list."""
    folder, k, items, d, labels = job
    images, rows, failures = [], [], []
    for item in items:
        try:
            image, meta = sentinel1.read_item(item, d, labels)
            if meta["valid_frac"] < d["min_coverage"]:  # e.g. a 2 x 2 pixel imagette padded to the output
                where = item["path"] + (f"[{item['member']}]" if item.get("member") else "")
                raise sentinel1.InputError(f"{where}: its data cover {meta['valid_frac']:.1%} of the "
                                           f"{d['image_size']} x {d['image_size']} output, data.min_coverage is "
                                           f"{d['min_coverage']:.0%}")
        except sentinel1.InputError as e:  # its message starts with the file (and zip member)
            if d["strict"]:
                return {"fatal": str(e)}
            where = item["path"] + (f"[{item['member']}]" if item.get("member") else "")
            failures.append({"file": where, "reason": str(e)})
            continue
        images.append(image)
        rows.append(meta)
    writer = shards.ShardWriter(folder, d["image_size"], d["pixel_spacing"], d["samples_per_shard"])
    # The failure list is written before the shard, so a complete shard always has its failures on disk.
    atomic.write_text("".join(json.dumps(r) + "\n" for r in failures), failures_path(folder, k))
    columns = {name: [r[name] for r in rows] for name in (rows[0] if rows else {})}
    size = d["image_size"]
    writer.write(k, np.stack(images) if images else np.zeros((0, size, size), np.float32),
                 shards.standard_meta(len(rows), **columns))
    return len(items)


def drop_duplicate_ids(items):
    """The same imagette can arrive twice (a .SAFE and its .zip, a re-download): keep the first in sorted order."""
    seen, kept, duplicates = {}, [], []
    for item in items:
        key = item.get("id")
        if key and key in seen:
            where = item["path"] + (f"[{item['member']}]" if item.get("member") else "")
            duplicates.append({"file": where, "reason": f"duplicate of imagette {key} in {seen[key]}"})
            continue
        if key:
            seen[key] = item["path"]
        kept.append(item)
    return kept, duplicates


def failures_path(folder, k):
    return os.path.join(folder, f"failures_{k:05d}.jsonl")


def prepare_real(cfg):
    """List data.input, join the OCN labels, read every imagette into shards (skipping and listing failures)."""
    d = cfg["data"]
    name = sentinel1.SOURCES[d["source"]].dataset
    folder = os.path.join(d["root"], name)
    items = sentinel1.list_inputs(d)
    labels, label_failures = ocn.load_labels(d)
    items, duplicates = drop_duplicate_ids(items)
    if duplicates and d["strict"]:
        raise errors.UserError(f"--strict: {duplicates[0]['file']}: {duplicates[0]['reason']}")
    if label_failures and d["strict"]:
        raise errors.UserError(f"{label_failures[0][0]}: {label_failures[0][1]}")
    inputs = [(os.path.relpath(it["path"], d["input"]), it.get("member", ""), os.path.getsize(it["path"])
               if os.path.isfile(it["path"]) else -1) for it in items]
    record_inputs(folder, d, name, inputs + [("ocn_dir", *f) for f in listing_of(d["ocn_dir"])])
    num_shards = read_real_shards(folder, items, d, labels)
    item_failures = []
    for k in range(num_shards):
        with open(failures_path(folder, k)) as f:
            item_failures += [json.loads(line) for line in f]
    failures = [{"file": f, "reason": r} for f, r in label_failures] + duplicates + item_failures
    atomic.write_text("".join(json.dumps(r) + "\n" for r in failures), os.path.join(folder, "failures.jsonl"))
    ok = len(items) - len(item_failures)
    print(f"{ok} ok, {len(failures)} failed" + (f" (listed in {folder}/failures.jsonl)" if failures else ""))
    if ok == 0:
        raise errors.UserError("no input could be read")
    writer = shards.ShardWriter(folder, d["image_size"], d["pixel_spacing"], d["samples_per_shard"])
    finish_dataset(cfg, folder, writer.finalize(num_shards, extra={"source": d["source"], "name": name}))


def read_real_shards(folder, items, d, labels):
    """Read the shards that are not complete yet (in data.workers processes); returns the shard count."""
    sps = d["samples_per_shard"]
    writer = shards.ShardWriter(folder, d["image_size"], d["pixel_spacing"], sps)
    num_shards = -(-len(items) // sps)
    jobs = [(folder, k, items[k * sps:(k + 1) * sps], d, labels)
            for k in range(num_shards) if not writer.is_complete(k)]
    for result in run_jobs(real_shard_job, jobs, d["workers"], total=sum(len(j[2]) for j in jobs),
                           desc=os.path.basename(folder), unit_of=lambda r: 0 if isinstance(r, dict) else r):
        if isinstance(result, dict):
            raise errors.UserError(f"--strict: {result['fatal']}")
    return num_shards


# ------------------------------------------------------------------------------------------------ common
def run_jobs(fn, jobs, workers, total, desc, unit_of=lambda r: r):
    """Run jobs in a process pool (inline for one worker) under a progress bar; stop at the first fatal result."""
    bar = tqdm(total=total, desc=f"prepare {desc}", unit="img", dynamic_ncols=True)
    if workers == 1 or len(jobs) <= 1:
        results = map(fn, jobs)
    else:
        pool = mp.get_context("spawn").Pool(min(workers, len(jobs)))
        results = pool.imap_unordered(fn, jobs)
    out = []
    for r in results:
        bar.update(unit_of(r))
        out.append(r)
        if isinstance(r, dict) and "fatal" in r:
            break
    bar.close()
    if workers > 1 and len(jobs) > 1:
        pool.terminate()
    return out


def class_histogram(meta):
    """Printable per-class counts, largest first: the heavy tail pruning exists to fix."""
    names, counts = np.unique(meta["class_name"][meta["class_idx"] >= 0], return_counts=True)
    if len(names) == 0:
        return "  (no class labels)"
    order = np.argsort(-counts)
    total, top = counts.sum(), counts.max()
    return "\n".join(f"  {names[i]:<24s}{counts[i]:>8d} {100 * counts[i] / total:5.1f}% "
                     + "#" * max(1, int(40 * counts[i] / top)) for i in order)


def finish_dataset(cfg, folder, manifest):
    config.save(cfg, folder)
    ds = shards.ShardDataset(folder)
    print(f"{folder}: {len(ds)} samples of {manifest['shape']} {manifest['dtype']} dB, "
          f"mean {ds.mean:.2f} dB, std {ds.std:.2f} dB, {len(manifest['shards'])} shard(s)")
    print(class_histogram(ds.meta))
    if cfg["data"]["montage"]:
        print(f"  montage: {write_montage(ds, os.path.join(folder, 'montage.png'), seed=cfg['data']['seed'])}")


def write_montage(ds, path, seed=0, per_row=8):
    """PNG grid of random imagettes: one row per class (or random rows without labels), each stretched 2-98 %."""
    rng = np.random.default_rng(seed)
    labels = ds.meta["class_idx"]
    classes = [c for c in np.unique(labels) if c >= 0] or [None]
    rows = []
    for c in classes:
        pool = np.flatnonzero(labels == c) if c is not None else np.arange(len(ds))
        pick = rng.choice(pool, size=min(per_row, len(pool)), replace=False)
        title = ds.meta["class_name"][pool[0]] if c is not None else "random imagettes"
        rows.append((title, np.sort(pick)))
    if classes == [None]:
        rows = [("random imagettes", np.sort(rng.choice(len(ds), size=min(per_row, len(ds)), replace=False)))
                for _ in range(min(4, -(-len(ds) // per_row)))]
    fig = Figure(figsize=(1.6 * per_row, 1.7 * len(rows)))
    axes = fig.subplots(len(rows), per_row, squeeze=False)
    for r, (title, idx) in enumerate(rows):
        images = ds.read_batch(idx, raw=True)[:, 0]
        for col, ax in enumerate(axes[r]):
            ax.axis("off")
            if col < len(images):
                lo, hi = np.percentile(images[col], [2, 98])
                ax.imshow(images[col], cmap="gray", vmin=lo, vmax=hi)
        axes[r][0].set_title(title, fontsize=8, loc="left")
    spacing = ds.pixel_spacing * ds.shape[-1] / 1000
    fig.suptitle(f"{os.path.basename(os.path.dirname(path) or '.')}: {spacing:.1f} km imagettes, dB, 2-98 % stretch",
                 fontsize=9)
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110)


def run(argv):
    cfg = config.load(argv, stage="data")
    config.show(cfg, ["data"])
    d = cfg["data"]
    if d["source"] != "synthetic" and not d["input"]:
        raise config.ConfigError(f"config key 'data.input': source '{d['source']}' needs an input folder")
    if d["source"] != "synthetic":
        config.check_inputs(cfg, {"data.input": "folder", "data.ocn_dir": "folder"})
    config.check_writable(d["root"], "data.root")
    if d["source"] == "synthetic":
        prepare_synthetic(cfg)
    else:
        prepare_real(cfg)


if __name__ == "__main__":
    errors.main(run)
