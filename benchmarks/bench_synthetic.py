"""Synthetic archive generation speed: imagettes/s in one process, default archive prior, and per class.

    python benchmarks/bench_synthetic.py [--sizes 64:100 256:50] [--seconds 5] [--per-class]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import synthetic  # noqa: E402


def rate(seconds, batch, **kwargs):
    """Imagettes per second over at least `seconds`, after one warm-up batch."""
    synthetic.generate(0, batch, **kwargs)
    done, start, t0 = 0, batch, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        synthetic.generate(start, batch, **kwargs)
        done, start = done + batch, start + batch
    return done / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", nargs="+", default=["64:100", "256:50"], help="image_size:pixel_spacing pairs")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--per-class", action="store_true", help="also time each class alone")
    args = p.parse_args()
    print(f"synthetic.generate, one process, {os.cpu_count()} CPU(s) visible")
    for pair in args.sizes:
        size, spacing = int(pair.split(":")[0]), float(pair.split(":")[1])
        batch = max(8, 2 ** 20 // size ** 2)
        kw = dict(image_size=size, pixel_spacing=spacing, seed=0)
        print(f"{size:4d} px at {spacing:5.0f} m, archive prior: {rate(args.seconds, batch, **kw):8.1f} imagettes/s")
        if args.per_class:
            for k, name in enumerate(synthetic.CLASS_NAMES):
                r = rate(args.seconds / 5, batch, force_class=k, **kw)
                print(f"    {synthetic.CLASS_LETTERS[k]} {name:24s} {r:8.1f} imagettes/s")


if __name__ == "__main__":
    main()
