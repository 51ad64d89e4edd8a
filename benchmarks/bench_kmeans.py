"""Benchmark kmeans.kmeans against faiss-cpu and scikit-learn KMeans: same data, same initial centroids, same
number of Lloyd iterations, on this machine's CPU (torch's default thread count, the same for all three; with
--repeats the libraries take turns and the best run of each is compared, which damps load from elsewhere).

    pip install faiss-cpu scikit-learn        # benchmark only: prune.py and the tests never import them
    python benchmarks/bench_kmeans.py                         # N=200k, d=384, k=1000, 20 iterations
    python benchmarks/bench_kmeans.py --data noise --n 50000  # worst case for the bounds: no cluster structure

Data "blobs": 2k Gaussian modes of Zipf-distributed sizes and varied spreads (clustered, heavy-tailed, like
image embeddings); "noise": one isotropic Gaussian. The initial centroids come from prune's k-means++ (timed
separately) and are handed to all three. Each library's final centroids are scored by the same evaluator
(squared Euclidean distance of every point to its nearest centroid, float64 sum), so the inertia ratio compares
solutions, not bookkeeping conventions. kmeans.kmeans performs one extra assignment after the last update (its
returned labels match its centroids); that is included in its time.

On a shared machine OpenMP's default spin-waiting slows every library down, and the bounded Lloyd (many
smaller parallel regions) most: run with OMP_WAIT_POLICY=PASSIVE, or --threads 1, to compare the algorithms.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kmeans


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


def run_prune(x, init, args):
    t = time.perf_counter()
    res = kmeans.kmeans(x, args.k, generator=kmeans.make_generator(args.seed), n_iter=args.iters, metric="l2",
                       init_centroids=init, mem_bytes=args.mem_mb * 2**20)
    return time.perf_counter() - t, res.centroids.numpy(), f"{len(res.history) - 1} updates"


def run_faiss(x, init, args):
    import faiss
    faiss.omp_set_num_threads(torch.get_num_threads())
    km = faiss.Kmeans(x.shape[1], args.k, niter=args.iters, seed=args.seed, max_points_per_centroid=len(x) + 1,
                      min_points_per_centroid=1, verbose=False)
    xn = x.numpy()
    t = time.perf_counter()
    km.train(xn, init_centroids=init.numpy())
    return time.perf_counter() - t, km.centroids, f"{args.iters} updates"


def run_sklearn(x, init, args):
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits
    km = KMeans(args.k, init=init.numpy(), n_init=1, max_iter=args.iters, tol=0.0, algorithm="lloyd",
                random_state=args.seed)
    with threadpool_limits(torch.get_num_threads()):
        t = time.perf_counter()
        km.fit(x.numpy())
        took = time.perf_counter() - t
    return took, km.cluster_centers_, f"{km.n_iter_} updates"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["blobs", "noise"], default="blobs")
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mem-mb", type=int, default=512, help="kmeans.kmeans distance-chunk budget")
    p.add_argument("--only", nargs="*", default=["prune", "faiss", "sklearn"])
    p.add_argument("--threads", type=int, default=None, help="default: torch's default (all cores)")
    p.add_argument("--repeats", type=int, default=1, help="runs per library; the best one is compared")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"data={args.data} N={args.n} d={args.d} k={args.k} iters={args.iters} "
          f"threads={torch.get_num_threads()} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    x = torch.from_numpy(make_data(args.data, args.n, args.d, args.k, args.seed))
    t = time.perf_counter()  # n_iter=0: the k-means++ centroids themselves
    init = kmeans.kmeans(x, args.k, generator=kmeans.make_generator(args.seed, 1), n_iter=0, metric="l2").centroids
    print(f"shared init: prune's greedy k-means++ ({time.perf_counter() - t:.1f} s, incl. one assignment pass)")
    print(f"init inertia {score(x, init):.6g}")

    runners = {"prune": run_prune, "faiss": run_faiss, "sklearn": run_sklearn}
    times, inertia = {}, {}
    for rep in range(args.repeats):  # interleaved, so that a burst of load elsewhere hits every library
        for name in args.only:
            try:
                took, centroids, note = runners[name](x, init, args)
            except ImportError as err:
                print(f"{name:8s} skipped: {err} (pip install faiss-cpu scikit-learn)")
                continue
            times.setdefault(name, []).append(took)
            inertia[name] = score(x, centroids)
            print(f"{name:8s} {took:8.2f} s  inertia {inertia[name]:.6g}  ({note}, load {os.getloadavg()[0]:.1f})",
                  flush=True)
    best = {name: min(t) for name, t in times.items()}  # the least disturbed run of each
    if "prune" in best:
        for name in ("faiss", "sklearn"):
            if name in best:
                print(f"prune vs {name:8s}: {best[name] / best['prune']:5.2f}x faster (best of {args.repeats}: "
                      f"{best['prune']:.2f} s vs {best[name]:.2f} s), inertia ratio "
                      f"{inertia['prune'] / inertia[name]:.5f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
