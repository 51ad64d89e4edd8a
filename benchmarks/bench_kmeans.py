"""Benchmark kmeans.kmeans against faiss-cpu (and scikit-learn) on clustered and unstructured data, in one run.

    pip install faiss-cpu scikit-learn        # benchmark only: prune.py and the tests never import them
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_kmeans.py               # blobs N=100k and noise N=50k, k=1000
    python benchmarks/bench_kmeans.py --data blobs --n 1000000 --k 10000 --factors 4 --only-ours --no-random

Per data set it prints
- init: every initialisation option (k-means++ on a subsample of max(4096, factor x k) points for each
  --factors, and random), its time and the inertia after the full Lloyd run from it, next to faiss's default
  (k random points of a subsample; its time includes its init). Ratios: init time / our Lloyd time, and our
  final inertia / faiss's final inertia.
- Lloyd: the same initial centroids (our default init) handed to every library, the same number of updates;
  time ratio library / ours (above 1: ours is faster), and which path our Lloyd took (work per step as a fraction
  of a plain Lloyd step: Yinyang bounds while they pay, plain blocked Lloyd once they do not).
- goals: ours >= 1.0x faiss on noise, >= 2.5x on blobs, init <= 0.5x our Lloyd, inertia within 1 % of faiss.

Data "blobs": 2k Gaussian modes of Zipf-distributed sizes and varied spreads (clustered, heavy-tailed, like
image embeddings); "noise": one isotropic Gaussian (no structure: the worst case for the bounds). All inertias
are scored by the same evaluator (squared distance of every point to its nearest centroid, float64 sum). With
--repeats the libraries take turns and the best run of each is compared, which damps load from elsewhere; all
use torch's thread count. On a shared machine run with OMP_WAIT_POLICY=PASSIVE (spin-waiting threads slow every
library down, the bounded Lloyd with its many small parallel regions most); only ratios within one run count.
"""

import argparse
import importlib.util
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from oceansar import kmeans  # noqa: E402

HAVE = {name: importlib.util.find_spec(name) is not None for name in ("faiss", "sklearn")}
GOAL_SPEED = {"noise": 1.0, "blobs": 2.5}


def make_data(kind, n, d, k, seed):
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.standard_normal((n, d), dtype=np.float32)
    n_modes = 2 * k
    weights = 1.0 / np.arange(1, n_modes + 1)
    mode = rng.choice(n_modes, n, p=weights / weights.sum())
    centres = rng.standard_normal((n_modes, d), dtype=np.float32)
    spread = rng.uniform(0.2, 0.6, n_modes).astype(np.float32)
    return centres[mode] + spread[mode, None] * rng.standard_normal((n, d), dtype=np.float32)


def score(x, centroids):
    """Inertia of `centroids` on x: every point to its nearest centroid, float64 sum."""
    _, dist = kmeans.assign(x, torch.as_tensor(centroids, dtype=torch.float32), "l2")
    return float(dist.double().pow(2).sum())


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def our_init(x, args, init, factor):
    return timed(lambda: kmeans.initial_centroids(x, args.k, generator=kmeans.make_generator(args.seed, 1),
                                                  init=init, metric="l2", init_sample_factor=factor))


def run_ours(x, init, args):
    took, res = timed(lambda: kmeans.kmeans(x, args.k, generator=kmeans.make_generator(args.seed),
                                            n_iter=args.iters, metric="l2", init_centroids=init,
                                            mem_bytes=args.mem_mb * 2**20))
    work = res.work[1:]
    full = sum(w == 1.0 for w in work)
    return took, res.centroids.numpy(), f"{len(work)} updates, mean work {np.mean(work):.2f}, {full} at full work", None


def run_faiss(x, init, args):
    import faiss
    faiss.omp_set_num_threads(torch.get_num_threads())
    km = faiss.Kmeans(x.shape[1], args.k, niter=args.iters, seed=args.seed, verbose=False,
                      **({} if init is None else {"max_points_per_centroid": len(x) + 1, "min_points_per_centroid": 1}))
    took, _ = timed(lambda: km.train(x.numpy(), init_centroids=None if init is None else init.numpy()))
    if init is None:
        return took, km.centroids, f"{args.iters} updates, its default init", None
    # faiss's train ends on an update; the labels of its final centroids take one more assignment pass, which
    # our kmeans does inside (it returns labels that match its centroids)
    search, _ = timed(lambda: km.index.search(x.numpy(), 1))
    return took, km.centroids, f"{args.iters} updates; + {search:.2f} s for the labels of its final centroids", search


def run_sklearn(x, init, args):
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits
    km = KMeans(args.k, init=init.numpy(), n_init=1, max_iter=args.iters, tol=0.0, algorithm="lloyd",
                random_state=args.seed)
    with threadpool_limits(torch.get_num_threads()):
        took, _ = timed(lambda: km.fit(x.numpy()))
    return took, km.cluster_centers_, f"{km.n_iter_} updates", None


def bench_init(x, args):
    """Every init option, the Lloyd run from it; returns {option: (init s, Lloyd s, inertia)} and the default init."""
    options = [(f"kmeans++ x{f}", "kmeans++", f) for f in args.factors] + ([("random", "random", None)] if args.random
                                                                           else [])
    out, default = {}, None
    for name, init, factor in options:
        t_init, c = our_init(x, args, init, factor)
        t_lloyd, centroids, note, _ = run_ours(x, c, args)
        out[name] = (t_init, t_lloyd, score(x, centroids))
        if default is None:
            default = c
        print(f"  init {name:14s} {t_init:7.2f} s, then Lloyd {t_lloyd:7.2f} s: inertia {out[name][2]:.6g} ({note})",
              flush=True)
    if args.only_ours or not HAVE["faiss"]:
        return out, default
    took, centroids, note, _ = run_faiss(x, None, args)
    out["faiss default"] = (0.0, took, score(x, centroids))
    print(f"  faiss default       {took:7.2f} s in all: inertia {out['faiss default'][2]:.6g} ({note})", flush=True)
    return out, default


def bench_lloyd(x, init, args):
    """The same init for all libraries, interleaved repeats; returns the best time of each."""
    runners = {"ours": run_ours, "faiss": run_faiss, "sklearn": run_sklearn}
    names = ["ours"] + [n for n, m in (("faiss", "faiss"), ("sklearn", "sklearn")) if HAVE[m] and not args.only_ours]
    times = {}
    for _ in range(args.repeats):
        for name in names:
            took, centroids, note, labels = runners[name](x, init, args)
            times.setdefault(name, []).append(took)
            if labels is not None:
                times.setdefault(name + " + labels", []).append(took + labels)
            print(f"  Lloyd {name:8s} {took:7.2f} s  inertia {score(x, centroids):.6g}  ({note}, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
    return {name: min(t) for name, t in times.items()}


def report(kind, inits, lloyd, args):
    default = f"kmeans++ x{args.factors[0]}"
    t_init, t_lloyd, inertia = inits[default]
    t_lloyd = min(t_lloyd, lloyd.get("ours", t_lloyd))  # the same Lloyd from the same init: the less disturbed run
    print(f"  init {default}: {t_init / t_lloyd:.2f}x our Lloyd time (goal <= 0.5): {t_init:.2f} s vs {t_lloyd:.2f} s")
    if "faiss" in lloyd:
        print(f"  Lloyd, same init: ours {lloyd['faiss'] / lloyd['ours']:.2f}x faster than faiss "
              f"(goal >= {GOAL_SPEED[kind]}), best of {args.repeats}: {lloyd['ours']:.2f} s vs {lloyd['faiss']:.2f} s")
        print(f"  Lloyd with the labels of the final centroids (ours: {args.iters + 1} assignment passes, faiss: "
              f"{args.iters} + 1 search): ours {lloyd['faiss + labels'] / lloyd['ours']:.2f}x faster")
    if "sklearn" in lloyd:
        print(f"  Lloyd, same init: ours {lloyd['sklearn'] / lloyd['ours']:.2f}x faster than scikit-learn")
    if "faiss default" in inits:
        _, t_faiss, inertia_faiss = inits["faiss default"]
        print(f"  end to end (our default init + Lloyd vs faiss default): {t_faiss / (t_init + t_lloyd):.2f}x faster, "
              f"inertia ratio {inertia / inertia_faiss:.4f} (goal <= 1.01)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", choices=["blobs", "noise"], default=["blobs", "noise"])
    p.add_argument("--n", type=int, nargs="+", default=None, help="per data set (default blobs 100k, noise 50k)")
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--factors", type=int, nargs="+", default=[kmeans.INIT_SAMPLE_FACTOR, 16],
                   help="k-means++ subsample factors to compare; the first is the one the ratios use")
    p.add_argument("--mem-mb", type=int, default=512, help="kmeans.kmeans distance-chunk budget")
    p.add_argument("--only-ours", action="store_true", help="skip faiss and scikit-learn")
    p.add_argument("--no-random", dest="random", action="store_false",
                   help="skip the Lloyd run from a random init (all plain steps: long at large n and k)")
    p.add_argument("--threads", type=int, default=None, help="default: torch's default (all cores)")
    p.add_argument("--repeats", type=int, default=1, help="Lloyd runs per library; the best one is compared")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.n or [{"blobs": 100_000, "noise": 50_000}[kind] for kind in args.data]
    if len(sizes) != len(args.data):
        p.error(f"--n: one size per --data entry ({len(args.data)}), got {len(sizes)}")
    print(f"d={args.d} k={args.k} iters={args.iters} threads={torch.get_num_threads()} cpus={os.cpu_count()} "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} load={os.getloadavg()[0]:.1f}")
    for name, found in HAVE.items():
        if not found and not args.only_ours:
            print(f"{name} is not installed: its reference is skipped (pip install faiss-cpu scikit-learn)")
    start = time.perf_counter()
    for kind, n in zip(args.data, sizes):
        print(f"{kind}: N={n}", flush=True)
        x = torch.from_numpy(make_data(kind, n, args.d, args.k, args.seed))
        inits, default = bench_init(x, args)
        # --only-ours: the Lloyd from the default init already ran once, in bench_init
        report(kind, inits, {} if args.only_ours else bench_lloyd(x, default, args), args)
    print(f"whole run {time.perf_counter() - start:.0f} s, load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
