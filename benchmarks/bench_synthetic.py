"""Synthetic archive generation speed: imagettes/s in one process, default archive prior, and per class.

    python benchmarks/bench_synthetic.py [--sizes 64:100 256:50] [--seconds 5] [--per-class] [--reference DIR]

--reference DIR times the synthetic.py found in DIR (e.g. an older checkout: `git worktree add /tmp/v1 <commit>`)
in a subprocess right after this one, and prints the ratio (goal for the v2 archive: no more than 2x slower).
"""
import argparse
import importlib
import json
import os
import subprocess
import sys
import time

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def rate(synthetic, seconds, batch, **kwargs):
    """Imagettes per second over at least `seconds`, after one warm-up batch."""
    synthetic.generate(0, batch, **kwargs)
    done, start, t0 = 0, batch, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        synthetic.generate(start, batch, **kwargs)
        done, start = done + batch, start + batch
    return done / (time.perf_counter() - t0)


def measure(root, sizes, seconds, per_class):
    """{size:spacing: imagettes/s} for the synthetic.py under `root` (imported from there)."""
    sys.path.insert(0, root)
    synthetic = importlib.import_module("oceansar.synthetic")  # the tree under comparison, not this one
    letters = importlib.import_module("oceansar.tengeop").CLASS_LETTERS
    out = {}
    for pair in sizes:
        size, spacing = int(pair.split(":")[0]), float(pair.split(":")[1])
        batch = max(8, 2 ** 20 // size ** 2)
        kw = dict(image_size=size, pixel_spacing=spacing, seed=0)
        out[pair] = rate(synthetic, seconds, batch, **kw)
        if per_class:
            for k, name in enumerate(synthetic.CLASS_NAMES):
                out[f"{pair} {letters[k]} {name}"] = rate(synthetic, seconds / 5, batch, force_class=k, **kw)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", nargs="+", default=["64:100", "256:50"], help="image_size:pixel_spacing pairs")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--per-class", action="store_true", help="also time each class alone")
    p.add_argument("--reference", default=None, help="a directory with another synthetic.py to compare against")
    p.add_argument("--json-from", default=None, help=argparse.SUPPRESS)   # subprocess mode: time that root
    args = p.parse_args()
    if args.json_from:
        print(json.dumps(measure(args.json_from, args.sizes, args.seconds, args.per_class)))
        return
    print(f"synthetic.generate, one process, {os.cpu_count()} CPU(s) visible")
    ours = measure(HERE, args.sizes, args.seconds, args.per_class)
    ref = None
    if args.reference:
        cmd = [sys.executable, __file__, "--json-from", os.path.abspath(args.reference), "--seconds",
               str(args.seconds), "--sizes", *args.sizes] + (["--per-class"] if args.per_class else [])
        ref = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    for key, value in ours.items():
        line = f"{key:40s} {value:8.1f} imagettes/s"
        if ref and key in ref:
            line += f"   reference {ref[key]:8.1f}/s   this / reference = {value / ref[key]:.2f}"
        print(line)


if __name__ == "__main__":
    main()
