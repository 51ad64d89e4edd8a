"""SLC ingest speed: full-size WV imagettes (4900 x 5471 complex int16, real SAFE layout, synthetic speckle
written once to --dir) through sentinel1.read_item, one process. Goal: >= 3 imagettes/s per process, with the
TIFF byte read the largest share of the time.

    python benchmarks/bench_ingest.py [--imagettes 4] [--rounds 3] [--dir /tmp/s1_bench]

Prints, per (image_size, pixel_spacing) setting, imagettes/s and the time split per read_item stage
(parse: XML + TIFF header, read: TIFF bytes, power: |DN|^2, downsample, calibrate, finish: dB/crop/pad), plus
two references: reading the whole file's bytes, and tifffile's own decode to complex64. The numbers are from
the page cache (the files were just written): a cold archive adds the disk read.
"""
import argparse
import os
import resource
import sys
import time

import tifffile


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import s1_fixtures  # noqa: E402
from oceansar import config  # noqa: E402
from oceansar import sentinel1  # noqa: E402

LINES, SAMPLES = 4900, 5471


def build(folder, n):
    """Write the benchmark SAFE once (about 107 MB per imagette); reuse it when complete."""
    safe = os.path.join(folder, "S1A_WV_SLC__1SSV_20210201T083223_20210201T084818_036394_044589_B735.SAFE")
    done = os.path.join(folder, f"complete_{n}")
    if not os.path.exists(done):
        t = time.perf_counter()
        lut = lambda line, pixel: 480.0 + 20.0 * pixel / SAMPLES  # a slowly varying sigmaNought, like real ones
        noise = lambda line, pixel: 900.0 + 100.0 * pixel / SAMPLES
        s1_fixtures.make_safe(folder, n_imagettes=n, lines=LINES, samples=SAMPLES, beams=["wv1"] * n,
                              amplitude=lut, noise=noise, rowsperstrip=1)
        open(done, "w").close()
        print(f"wrote {n} imagettes to {safe} in {time.perf_counter() - t:.0f} s")
    return folder


def references(items):
    """Whole-file byte read and tifffile decode times per imagette (warm page cache)."""
    paths = [os.path.join(it["path"], it["member"]) for it in items]
    t = time.perf_counter()
    for p in paths:
        with open(p, "rb") as f:
            f.read()
    read_all = (time.perf_counter() - t) / len(paths)
    t = time.perf_counter()
    for p in paths[:2]:
        tifffile.imread(p)
    decode = (time.perf_counter() - t) / min(2, len(paths))
    print(f"reference: read whole TIFF bytes {read_all * 1e3:.0f} ms/imagette, tifffile decode to complex64 "
          f"{decode * 1e3:.0f} ms/imagette")


def run(items, cfg, rounds):
    timings, count = {}, 0
    t = time.perf_counter()
    for _ in range(rounds):
        for it in items:
            sentinel1.read_item(it, cfg, {}, timings)
            count += 1
    wall = time.perf_counter() - t
    split = ", ".join(f"{k} {v / count * 1e3:.0f} ms ({v / wall:.0%})"
                      for k, v in sorted(timings.items(), key=lambda kv: -kv[1]))
    print(f"image_size {cfg['image_size']:4d} @ {cfg['pixel_spacing']:5.1f} m, noise_removal "
          f"{cfg['noise_removal']}: {count / wall:.2f} imagettes/s ({wall / count * 1e3:.0f} ms each) | {split}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--imagettes", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default="/tmp/s1_bench")
    args = p.parse_args()
    cfg = config.defaults()["data"]
    cfg.update(source="safe", input=build(args.dir, args.imagettes))
    items = sentinel1.list_inputs(cfg)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for size, spacing, noise in ((64, 100.0, True), (256, 100.0, True), (256, 100.0, False), (512, 50.0, True)):
        cfg.update(image_size=size, pixel_spacing=spacing, noise_removal=noise)
        run(items, cfg, args.rounds)
    print(f"peak RSS through read_item: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
          f"(before: {rss:.0f} MB{', inflated by writing the fixtures' if rss > 300 else ''})")
    references(items)


if __name__ == "__main__":
    main()
