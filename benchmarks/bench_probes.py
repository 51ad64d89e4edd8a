"""Time the probes of oceansar/probes.py at TenGeoP-SARwv size on random-but-structured features, and the feature
extraction (shard reading + frozen backbone forward, and the physics features) in images/s.

    python benchmarks/bench_probes.py                       # 37,553 x 384, 10 classes, 80/5/15 split, CPU
    python benchmarks/bench_probes.py --n 5000 --dim 768 --device cuda
    python benchmarks/bench_probes.py --device cuda --feat-n 8192 --batch 512   # bf16 autocast on CUDA

The features imitate a frozen backbone: 10 classes with heavy-tailed sizes (like TenGeoP, where pure ocean waves
dominate), class means in a random 32-dimensional subspace, anisotropic Gaussian noise, and a common offset
(features are not centred). Two regression targets (a wind-like and an Hs-like number) are linear functions of
a few latent factors plus noise, with 10 % of the Hs labels missing (NaN). Prints wall time of each probe and
its test metrics (sanity: they must be well above chance, but the numbers themselves mean nothing; isotropic
noise in all dimensions makes cosine kNN far weaker than the linear probe here, unlike clustered backbone
features). On a busy 2-core machine --threads 1 is faster: OpenMP threads stall on each other.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from oceansar import model as models  # noqa: E402
from oceansar import physics  # noqa: E402
from oceansar import probes  # noqa: E402
from oceansar import shards  # noqa: E402


def structured_features(n, dim, n_classes, generator, device):
    """Features [n, dim], class labels [n], regression targets [n, 2] (wind, Hs; some Hs NaN)."""
    sizes = 1.0 / torch.arange(1, n_classes + 1, dtype=torch.float64) ** 0.8       # heavy-tailed class sizes
    labels = torch.multinomial(sizes / sizes.sum(), n, replacement=True, generator=generator)
    basis = torch.linalg.qr(torch.randn(dim, 32, generator=generator))[0]           # class subspace
    centres = 0.45 * torch.randn(n_classes, 32, generator=generator) @ basis.T
    latent = torch.randn(n, 4, generator=generator)                                 # wind/sea-state factors
    scales = torch.linspace(0.2, 1.0, dim)                                          # anisotropic noise
    X = (centres[labels] + torch.randn(n, dim, generator=generator) * scales
         + latent @ torch.randn(4, dim, generator=generator) * 0.5 + 1.0)
    wind = 8 + 3 * latent[:, 0] + latent[:, 1] + 0.8 * torch.randn(n, generator=generator)
    hs = 2.5 + 0.8 * latent[:, 0] + 0.6 * latent[:, 2] + 0.3 * torch.randn(n, generator=generator)
    hs[torch.rand(n, generator=generator) < 0.1] = float("nan")
    return X.to(device), labels.to(device), torch.stack([wind, hs], 1).to(device)


def timed(name, fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    print(f"{name:<34s} {seconds:8.2f} s")
    return out, seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=37553)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--arch", default="vit_small", help="backbone of the feature-extraction timing")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--img", type=int, default=256, help="imagette side (px) of the feature-extraction timing")
    p.add_argument("--feat-n", type=int, default=128, help="images of the feature-extraction timing (0: skip)")
    p.add_argument("--batch", type=int, default=64, help="feature-extraction batch size")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    X, y, targets = structured_features(args.n, args.dim, args.classes, g, args.device)
    split = shards.stratified_split(y.cpu().numpy(), args.seed)
    tr, va, te = (torch.from_numpy(np.flatnonzero(split == s)).to(args.device) for s in ("train", "val", "test"))
    print(f"n={args.n} dim={args.dim} classes={args.classes} train/val/test={len(tr)}/{len(va)}/{len(te)} "
          f"device={args.device} threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f}")

    probe, _ = timed(f"logistic ({len(probes.LOGISTIC_GRID)} λ, warm start)",
                     lambda: probes.fit_logistic(X[tr], y[tr], X[va], y[va], args.classes))
    m = probes.classification_metrics(y[te], probe.predict(X[te]), args.classes)
    print(f"    λ={probe.lam:.1e} evals={probe.n_evals} test acc={m['accuracy']:.3f} "
          f"bal={m['balanced_accuracy']:.3f} F1={m['macro_f1']:.3f}")

    ridge, _ = timed(f"ridge ({len(probes.RIDGE_GRID)} λ, 2 outputs)",
                     lambda: probes.fit_ridge(X[tr], targets[tr], X[va], targets[va]))
    pred = ridge.predict(X[te])
    for j, name in enumerate(("wind", "hs")):
        r = probes.regression_metrics(targets[te, j], pred[:, j])
        print(f"    {name}: λ={ridge.lam[j].item():.1e} rmse={r['rmse']:.3f} bias={r['bias']:+.3f} "
              f"r2={r['r2']:.3f} n={r['n']}")

    probs, _ = timed(f"kNN classify ({len(te)} queries)",
                     lambda: probes.knn_classify(X[tr], y[tr], X[te], args.classes, 20, 0.07))
    m = probes.classification_metrics(y[te], probs.argmax(1), args.classes)
    print(f"    test acc={m['accuracy']:.3f} bal={m['balanced_accuracy']:.3f} F1={m['macro_f1']:.3f}")
    wind_hat, _ = timed("kNN regress (wind)", lambda: probes.knn_regress(X[tr], targets[tr, 0], X[te], 20, 0.07))
    r = probes.regression_metrics(targets[te, 0], wind_hat)
    print(f"    wind rmse={r['rmse']:.3f} r2={r['r2']:.3f}")

    images = torch.randn(512, 1, 256, 256, generator=g).to(args.device) - 15
    timed("physics features (512 x 256²)", lambda: physics.physics_features(images, 50.0, 36.0))
    if args.feat_n:
        bench_extraction(args, g)


def bench_extraction(args, generator):
    """extract_features end to end on a temporary shard dataset: memory-mapped reads, normalisation, forward."""
    with tempfile.TemporaryDirectory() as folder:
        writer = shards.ShardWriter(folder, args.img, 50.0, samples_per_shard=1024)
        n_shards = (args.feat_n + 1023) // 1024
        for k in range(n_shards):
            n = min(1024, args.feat_n - 1024 * k)
            images = -15 + 3 * torch.randn(n, 1, args.img, args.img, generator=generator)
            writer.write(k, images.numpy(), shards.standard_meta(n, incidence=np.full(n, 36.0)))
        writer.finalize(n_shards)
        ds, rows = shards.ShardDataset(folder), np.arange(args.feat_n)
        net = models.build_backbone(args.arch, args.patch, args.img).to(args.device)
        print(f"feature extraction: {args.arch}/{args.patch} at {args.img} px, batch {args.batch}, "
              f"{net.flops_per_image(args.img) / 1e9:.2f} GFLOP/image")
        probes.extract_features(ds, rows[:args.batch], {"net": net}, args.device, args.batch, progress=False)
        runs = [("backbone (CLS)", {"nets": {"net": net}}), ("physics", {"nets": {}, "physics": True})]
        if args.arch != "resnet50":
            runs.insert(1, ("backbone (4 blocks + avgpool)",
                            {"nets": {"net": net}, "n_last_blocks": 4, "avgpool": True}))
        for name, kw in runs:                        # after one warm-up batch above
            _, seconds = timed(f"  {name}", lambda: probes.extract_features(
                ds, rows, device=args.device, batch_size=args.batch, progress=False, **kw))
            print(f"    {args.feat_n / seconds:.1f} images/s")


if __name__ == "__main__":
    main()
