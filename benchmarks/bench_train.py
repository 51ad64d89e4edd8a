"""Throughput of pretrain.py's training step and data path, and MFU against a measured matmul peak.

    python benchmarks/bench_train.py                          # the demo, demo_vit and ViT-S/16 (batch 4), CPU
    python benchmarks/bench_train.py --models demo --steps 20
    python benchmarks/bench_train.py --device cuda --models vit_s16 --batch 64

For each model it builds a throw-away shard dataset of random dB images, a pretrain.Trainer on it (the exact
training code: augmentation, teacher and student passes, DINO loss, clipping, AdamW, EMA), and reports:
  step      images/s of Trainer.step and MFU = images/s * FLOPs per image and step / peak FLOP/s
            (peak: a large fp32 matmul on CPU, bf16 on CUDA, measured at start, as in pretrain.py)
  augment   the share of the step spent in SARAugment
  data      images/s of the data path alone (Prefetcher reading memory-mapped shards + SARAugment on the
            device), and its ratio to what the step consumes (the goal is >= 5x)
On a shared machine other processes steal cores: the load average is printed with the results.

OpenMP wait policy: the stage scripts default OMP_WAIT_POLICY to PASSIVE (threads sleep instead of spinning
when idle). Each policy in --wait-policies (default ACTIVE, then PASSIVE) runs the whole benchmark in its own
subprocess (the policy is read once, when torch loads OpenMP), and the step rates are compared at the end.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pretrain  # noqa: E402
from oceansar import config  # noqa: E402
from oceansar import loader  # noqa: E402
from oceansar import mfu  # noqa: E402
from oceansar import shards  # noqa: E402

MODELS = {
    # the demo: the SCHEMA defaults (ResNet-18 at width 8 on 32 px native crops of 64 px imagettes)
    "demo": {"model": {}, "train": {}, "image_size": 64, "batch": 256},
    # configs/demo_vit.yaml's kind of model: tiny ViT on 64 px globals with local crops
    "demo_vit": {"model": {"arch": "vit_nano", "patch_size": 8, "drop_path": 0.0, "out_dim": 4096,
                       "head_hidden_dim": 512, "head_bottleneck_dim": 128},
             "train": {"global_crops_size": 64, "local_crops_number": 4, "local_crops_size": 32},
             "image_size": 64, "batch": 128},
    # OceanSAR-1: ViT-S/16, 256 px globals, 8 local crops of 96 px, DINO head out_dim 65536
    "vit_s16": {"model": {"arch": "vit_small", "patch_size": 16, "drop_path": 0.1, "out_dim": 65536},
                "train": {"global_crops_size": 256, "local_crops_number": 8, "local_crops_size": 96},
                "image_size": 256, "batch": 4},
}


def make_dataset(folder, n, size, seed=0):
    rng = np.random.default_rng(seed)
    writer = shards.ShardWriter(folder, size, 100.0, n)
    writer.write(0, -15 + 3 * rng.standard_normal((n, size, size)), shards.standard_meta(n))
    writer.finalize(1)
    return folder


def make_trainer(workdir, name, batch, device):
    spec = MODELS[name]
    data = make_dataset(os.path.join(workdir, f"data_{name}"), max(4 * batch, 64), spec["image_size"])
    cfg = {"model": spec["model"],
           "train": {**spec["train"], "data": data, "out": os.path.join(workdir, f"run_{name}"), "epochs": 10,
                     "batch_size_per_gpu": batch, "warmup_epochs": 1, "device": device, "resume": False,
                     "eval_every": 0, "eval_data": None},  # no in-training kNN: the step alone
           "prune": {"mode": "none", "rho": 1.0}}
    path = os.path.join(workdir, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return pretrain.Trainer(config.load([path])), data


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_step(trainer, steps, warmup):
    """images/s of full training steps (epoch 1: the head's last layer trains too) and the augment share."""
    ds, b, dev = trainer.dataset, trainer.t["batch_size_per_gpu"], trainer.device
    batches = [torch.from_numpy(ds.read_batch(np.arange(i * b, (i + 1) * b) % len(ds))).to(dev)
               for i in range(steps + warmup)]
    trainer.iteration = trainer.ipe  # inside epoch 1
    for x in batches[:warmup]:
        trainer.step(x, epoch=1)
    sync(dev)
    start = time.perf_counter()
    for x in batches[warmup:]:
        trainer.step(x, epoch=1)
    sync(dev)
    step_s = (time.perf_counter() - start) / steps
    gen = torch.Generator(dev).manual_seed(0)
    trainer.augment(batches[0], gen)
    sync(dev)
    start = time.perf_counter()
    for x in batches[warmup:]:
        trainer.augment(x, gen)
    sync(dev)
    augment_s = (time.perf_counter() - start) / steps
    return b / step_s, augment_s / step_s


def bench_data(trainer, n_batches):
    """images/s of the data path alone: background shard reads + augmentation on the training device."""
    ds, b, dev = trainer.dataset, trainer.t["batch_size_per_gpu"], trainer.device
    batches = loader.rank_batches(np.arange(len(ds)), 0, 0, n_batches, b, 0, 1)
    gen = torch.Generator(dev).manual_seed(0)
    reader = loader.Prefetcher(ds, batches, 0, trainer.t["prefetch"], pin=dev.type == "cuda")
    start = time.perf_counter()
    try:
        for _ in range(n_batches):
            trainer.augment(reader.next().to(dev, non_blocking=True), gen)
        sync(dev)
    finally:
        reader.close()
    return n_batches * b / (time.perf_counter() - start)


def run_policies(args, argv):
    """The benchmark once per wait policy, each in a subprocess; then the step rate of each policy side by side."""
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for policy in args.wait_policies:
            out = os.path.join(workdir, f"{policy}.json")
            print(f"--- OMP_WAIT_POLICY={policy}", flush=True)
            subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--result", out], check=True,
                           env={**os.environ, "OMP_WAIT_POLICY": policy})
            with open(out) as f:
                results[policy] = json.load(f)
    first, *others = args.wait_policies
    for name in args.models:
        rates = ", ".join(f"{p} {results[p][name]:.2f}" for p in args.wait_policies)
        gains = ", ".join(f"{p} {results[p][name] / results[first][name]:.2f}x {first}" for p in others)
        print(f"{name:8s} step images/s by wait policy: {rates}" + (f" ({gains})" if gains else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="batch per model, in --models order (default: demo 256, demo_vit 128, vit_s16 4)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--wait-policies", nargs="+", default=["ACTIVE", "PASSIVE"], choices=["ACTIVE", "PASSIVE"])
    parser.add_argument("--result", help=argparse.SUPPRESS)  # set by run_policies: run here, write step rates
    args = parser.parse_args()
    if args.batch and len(args.batch) != len(args.models):
        parser.error(f"--batch: {len(args.batch)} values for {len(args.models)} models")
    if args.result is None:
        return run_policies(args, [a for a in sys.argv[1:]])
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    rates = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as workdir:
        for i, name in enumerate(args.models):
            batch = args.batch[i] if args.batch else MODELS[name]["batch"]
            trainer, _ = make_trainer(workdir, name, batch, args.device)
            ips, augment_share = bench_step(trainer, args.steps, args.warmup)
            peak = mfu.peak_flops(trainer.device)
            utilisation = ips * trainer.flops_img / peak
            data_ips = bench_data(trainer, max(args.steps, 4))
            rates[name] = ips
            print(f"{name:8s} batch {batch:3d}: step {ips:8.2f} images/s, {trainer.flops_img / 1e9:6.2f} GFLOP/image, "
                  f"MFU {100 * utilisation:5.1f}% of {peak / 1e9:.0f} GFLOP/s; augment {100 * augment_share:4.1f}% "
                  f"of the step; data path {data_ips:8.1f} images/s = {data_ips / ips:5.1f}x the step")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    with open(args.result, "w") as f:
        json.dump(rates, f)


if __name__ == "__main__":
    main()
