"""Reader speed: random single-sample reads/s from the page cache (goal >= 20,000/s at 64x64 on one core).

    python benchmarks/bench_shards.py [--size 64] [--count 20000]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from oceansar import shards  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--per-shard", type=int, default=1024)
    args = p.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        writer = shards.ShardWriter(folder, args.size, 100.0, args.per_shard)
        n_shards = -(-args.count // args.per_shard)
        t = time.perf_counter()
        for k in range(n_shards):
            n = min(args.per_shard, args.count - k * args.per_shard)
            writer.write(k, rng.normal(-15, 3, (n, args.size, args.size)).astype(np.float32), shards.standard_meta(n))
        writer.finalize(n_shards)
        print(f"write: {args.count / (time.perf_counter() - t):,.0f} img/s ({args.size}x{args.size})")
        ds = shards.ShardDataset(folder)
        ds.read_batch(np.arange(len(ds)))  # warm the page cache: the goal is about reads from it
        idx = rng.integers(0, len(ds), 100_000)
        t = time.perf_counter()
        for i in idx:
            ds[i]
        single = len(idx) / (time.perf_counter() - t)
        print(f"random single-sample reads (normalised float32): {single:,.0f} /s "
              f"-> {single / 20000:.1f}x the 20,000/s goal")
        t = time.perf_counter()
        for start in range(0, len(idx), 256):
            ds.read_batch(idx[start:start + 256])
        print(f"random batched reads (256 per call): {len(idx) / (time.perf_counter() - t):,.0f} img/s")


if __name__ == "__main__":
    main()
