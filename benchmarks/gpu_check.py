"""GPU check: run every CUDA code path once and measure it, as a markdown table the README can carry.

    python benchmarks/gpu_check.py                  # one CUDA GPU, about 5 minutes; writes <out>/gpu_check.md
    python benchmarks/gpu_check.py --dry-run        # CPU, well under a minute: the same steps at toy sizes
    python benchmarks/gpu_check.py --out runs/gpu_check --skip-compile

Steps, each in its own subprocess (a failing step is reported in the table and the others still run):
  tests      pytest -k cuda on the test files that hold CUDA tests (bf16 multi-crop, k-means, evaluation)
  archives   synthetic imagettes (synthetic.py -> shards.py; this path never imports netCDF4): a 256 px / 50 m
             archive for ViT-S/16, a 64 px / 100 m one for the demo backbone, a labelled 64 px evaluation set
  train      configs/oceansar1.yaml (ViT-S/16, 2 x 256 px + 8 x 96 px crops, bf16 autocast) and configs/demo.yaml,
             --iters iterations each (prune.mode=none), with and without train.compile, every run under
             `torchrun --nproc_per_node=1` with a process group joined by the worker (NCCL on CUDA, gloo on CPU;
             one rank builds no DDP, but the loss all-reduce runs through it). Reported: images/s and MFU (median
             of the log.jsonl windows after the first, which holds the warm-up and compilation; MFU against
             pretrain.py's measured bf16 matmul peak), peak GPU memory, and the data path (background shard
             reads + augmentation, bench_train.bench_data) over the step's demand (goal >= 5x)
  curation   prune.cluster_and_sample on --pool features (ViT-S width, clustered) on the device, oceansar1's levels, and the
             pool-embedding rate of the ViT-S backbone (prune.embed_pool): the curation time of --pool images is
             the clustering + sampling time plus --pool / that rate (goal <= 30 s at 100 k)
  evaluate   evaluate.py on the demo run's checkpoint and the labelled set (linear probe, kNN, baselines)
--dry-run shrinks every size (crops, heads, images, pool, iterations), skips compilation (a CPU compile
takes minutes) and runs on the CPU with gloo: it checks the script, not the GPU. tests/test_gpu_check.py runs it.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench_kmeans  # noqa: E402
import bench_train  # noqa: E402
import pretrain  # noqa: E402
import prune  # noqa: E402
from oceansar import config  # noqa: E402
from oceansar import kmeans  # noqa: E402
from oceansar import mfu  # noqa: E402
from oceansar import shards  # noqa: E402
from oceansar import synthetic  # noqa: E402
from oceansar.epochs import subset_size  # noqa: E402

# name -> (base config, archive (image px, pixel spacing m), overrides; dry-run overrides on top)
RUNS = {
    "vit_s16": ("configs/oceansar1.yaml", (256, 50.0), ["train.batch_size_per_gpu=64"],
                ["train.batch_size_per_gpu=2", "train.global_crops_size=32", "train.local_crops_number=2",
                 "train.local_crops_size=16", "model.out_dim=256", "model.head_hidden_dim=64",
                 "model.head_bottleneck_dim=32"]),
    "demo": ("configs/demo.yaml", (64, 100.0), ["train.batch_size_per_gpu=64"], ["train.batch_size_per_gpu=4"]),
}
SIZES = {  # full check / dry run
    "archive": (2048, 16), "eval_set": (600, 100), "pool": (100_000, 3000), "iters": (100, 3), "log_every": (10, 1),
}


# ----------------------------------------------------------------------------- archives (no netCDF4 here)

def write_synthetic(folder, n, size, spacing, seed, labelled=False):
    """n synthetic imagettes in shards of 512, written like prepare.py's synthetic path; labelled: balanced
    classes and a stratified train/val/test split column (an evaluation set)."""
    writer, per = shards.ShardWriter(folder, size, spacing, 512), 512
    for k, start in enumerate(range(0, n, per)):
        count = min(per, n - start)
        images, meta = synthetic.generate(start, count, image_size=size, pixel_spacing=spacing, seed=seed,
                                          balanced_classes=labelled)
        if labelled:  # every shard cycles through the classes, so a per-shard split is stratified too
            meta["split"] = shards.stratified_split(meta["class_idx"], seed + k, (0.6, 0.2, 0.2))
        writer.write(k, images, shards.standard_meta(count, source=["synthetic"] * count, **meta))
    writer.finalize(-(-n // per))
    return folder


def make_archives(work, args):
    n, n_eval = SIZES["archive"][args.dry_run], SIZES["eval_set"][args.dry_run]
    out = {}
    for name, (_, (size, spacing), _, _) in RUNS.items():
        size = 32 if args.dry_run and name == "vit_s16" else size
        out[name] = write_synthetic(os.path.join(work, f"archive_{size}px"), n, size, spacing, seed=0)
    out["eval"] = write_synthetic(os.path.join(work, "eval_64px"), n_eval, 64, 100.0, seed=1, labelled=True)
    return out


# ----------------------------------------------------------------------------- workers (under torchrun)

def join_group():
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def train_worker(spec):
    """One pretraining run through pretrain.Trainer; its log, peak memory and data-path rate to spec['result']."""
    join_group()
    trainer = pretrain.Trainer(config.load(spec["config"]))
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    start = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - start
    with open(os.path.join(trainer.out, "log.jsonl")) as f:
        windows = [r for r in map(json.loads, f) if "images_per_s" in r]
    steady = windows[1:] or windows
    result = {"images_per_s": float(np.median([r["images_per_s"] for r in steady])),
              "mfu": float(np.median([r["mfu"] for r in steady])),
              "peak_tflops": mfu.peak_flops(trainer.device) / 1e12,
              "wall_s": wall, "peak_mem_gib": (torch.cuda.max_memory_allocated(trainer.device) / 2**30
                                               if trainer.device.type == "cuda" else None),
              "data_per_s": bench_train.bench_data(trainer, 8)}
    if spec.get("embed"):
        pool = np.arange(len(trainer.dataset))
        start = time.perf_counter()
        prune.embed_pool(trainer.teacher.backbone, trainer.dataset, pool, 512, trainer.device)
        result["embed_per_s"] = len(pool) / (time.perf_counter() - start)
    if trainer.main:
        with open(spec["result"], "w") as f:
            json.dump(result, f)


def curate_worker(spec):
    """prune.cluster_and_sample on spec['pool'] clustered features on the device: seconds of clustering +
    sampling."""
    join_group()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    p = config.load([os.path.join(ROOT, "configs/oceansar1.yaml")])["prune"]
    levels = p["levels"] = spec.get("levels") or p["levels"]
    x = torch.from_numpy(bench_kmeans.make_data("blobs", spec["pool"], 384, levels[0], 0)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    kept, info, _ = prune.cluster_and_sample(x, subset_size(p["rho"], spec["pool"]), prune.kmeans_options(p),
                                             p["eta"], kmeans.make_generator(0, 1))
    sync()
    with open(spec["result"], "w") as f:
        json.dump({"curate_s": time.perf_counter() - start, "kept": len(kept), "levels": info["levels"]}, f)


# ----------------------------------------------------------------------------- steps (subprocesses)

def run_step(name, cmd, timeout, log_dir):
    """Run one step; (ok, seconds, last line of its output). Its whole output goes to <log_dir>/<name>.log."""
    start = time.perf_counter()
    with open(os.path.join(log_dir, f"{name}.log"), "w") as log:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    took = time.perf_counter() - start
    with open(os.path.join(log_dir, f"{name}.log")) as log:
        lines = [line.strip() for line in log if line.strip()]
    tail = lines[-1] if lines else ""
    print(f"{name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {took:.0f} s  {tail[:150]}", flush=True)
    return rc == 0, took, tail


def torchrun(worker, spec, work):
    path = os.path.join(work, f"{spec['name']}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
            os.path.abspath(__file__), "--worker", worker, path]


def cuda_test_files():
    """The test files holding CUDA tests (those skip with reason "needs CUDA"); -k cuda picks the tests."""
    return sorted(f for f in glob.glob(os.path.join(ROOT, "tests", "test_*.py")) if '"needs CUDA"' in open(f).read())


def train_spec(name, compiled, archives, work, args):
    base, _, full, dry = RUNS[name]
    out = os.path.join(work, f"run_{name}{'_compiled' if compiled else ''}")
    overrides = full + (dry if args.dry_run else []) + [
        f"train.data={archives[name]}", f"train.out={out}", f"train.max_iters={SIZES['iters'][args.dry_run]}",
        f"train.log_every={SIZES['log_every'][args.dry_run]}", "train.epochs=100", "train.eval_every=0",
        "train.checkpoint_iters=0", "train.resume=false", f"train.compile={str(compiled).lower()}",
        "prune.mode=none", "prune.rho=1.0", "train.warmup_epochs=1"]
    return {"name": os.path.basename(out), "config": [os.path.join(ROOT, base)] + overrides, "out": out,
            "result": out + ".json", "embed": name == "vit_s16" and not compiled}


def main_check(args):
    work = args.out or tempfile.mkdtemp(prefix="gpu_check_")
    os.makedirs(work, exist_ok=True)
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}"
          f"{' (' + torch.cuda.get_device_name() + ')' if torch.cuda.is_available() else ''}, work dir {work}")
    start = time.perf_counter()
    rows, notes = [], []
    ok, took, tail = run_step("tests", [sys.executable, "-m", "pytest", "-q", "-k", "cuda", *cuda_test_files()],
                              args.timeout, work)
    notes.append(f"CUDA tests: {tail} ({took:.0f} s)")
    archives = make_archives(work, args)
    notes.append(f"archives: {SIZES['archive'][args.dry_run]} images per model, "
                 f"{SIZES['eval_set'][args.dry_run]} labelled ({time.perf_counter() - start - took:.0f} s)")
    embed = None
    for name in RUNS:
        for compiled in (False, True):
            if compiled and (args.dry_run or args.skip_compile):
                continue
            spec = train_spec(name, compiled, archives, work, args)
            ok, took, _ = run_step(spec["name"], torchrun("train", spec, work), args.timeout, work)
            if not ok:
                rows.append(f"| {name} | {compiled} | failed, see {spec['name']}.log | | | | |")
                continue
            with open(spec["result"]) as f:
                r = json.load(f)
            embed = r.get("embed_per_s", embed)
            mem = "n/a (CPU)" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.1f}"
            rows.append(f"| {name} | {compiled} | {r['images_per_s']:.0f} | {100 * r['mfu']:.1f} % of "
                        f"{r['peak_tflops']:.0f} TFLOP/s | {mem} | {r['data_per_s'] / r['images_per_s']:.1f}x | "
                        f"{took:.0f} |")
    spec = {"name": "curation", "pool": SIZES["pool"][args.dry_run], "result": os.path.join(work, "curate.json"),
            "levels": [30, 6, 2] if args.dry_run else None}
    ok, took, _ = run_step("curation", torchrun("curate", spec, work), args.timeout, work)
    if ok:
        with open(spec["result"]) as f:
            c = json.load(f)
        total = c["curate_s"] + (spec["pool"] / embed if embed else float("nan"))
        notes.append(f"curation of {spec['pool']} pool features, levels {c['levels']}: {c['curate_s']:.1f} s "
                     f"clustering + sampling; embedding {embed or float('nan'):.0f} images/s (ViT-S/16, 256 px): "
                     f"{total:.1f} s for {spec['pool']} images (goal <= 30 s at 100 k)")
    else:
        notes.append("curation: failed, see curation.log")
    demo = train_spec("demo", False, archives, work, args)["out"]
    evaluate = [sys.executable, "evaluate.py", os.path.join(demo, "config.yaml"),
                f"eval.checkpoint={demo}/checkpoint.pt", f"eval.classification={archives['eval']}",
                "eval.regression=null", f"eval.out={work}/eval"]
    ok, took, tail = run_step("evaluate", evaluate, args.timeout, work)
    notes.append(f"evaluation (demo checkpoint, {SIZES['eval_set'][args.dry_run]} labelled images): "
                 f"{'ok' if ok else 'failed, see evaluate.log'} in {took:.0f} s")
    table = "\n".join(["| model | train.compile | images/s | bf16 MFU | peak GPU GiB | data path / step demand | "
                       "run s |", "|---|---|---|---|---|---|---|", *rows, "", *[f"- {n}" for n in notes],
                       f"- whole check: {time.perf_counter() - start:.0f} s"])
    with open(os.path.join(work, "gpu_check.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0 if all("failed" not in line for line in rows + notes) else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, no compilation: checks the script")
    p.add_argument("--out", default=None, help="work dir (default: a new temporary folder); the table lands here")
    p.add_argument("--skip-compile", action="store_true", help="leave out the train.compile=true runs")
    p.add_argument("--timeout", type=int, default=600, help="seconds per step")
    p.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)  # set by torchrun()
    args = p.parse_args()
    if args.worker:
        kind, path = args.worker
        with open(path) as f:
            {"train": train_worker, "curate": curate_worker}[kind](json.load(f))
        if dist.is_initialized():
            dist.destroy_process_group()
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run to check the script on a CPU)", file=sys.stderr)
        return 2
    return main_check(args)


if __name__ == "__main__":
    sys.exit(main())
