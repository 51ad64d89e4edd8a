"""What one curation costs, as a share of training (the paper claims "no additional compute"; goal <= 5 % at
paper scale), and what the pool size does to the kept set's balance.

    python benchmarks/bench_curation.py [configs/demo.yaml] [configs/oceansar1.yaml] [checkpoint.pt]

1. Projected, for the paper-scale config at N = 12 M imagettes, from FLOP counts (model.flops_per_image,
   mfu.train_flops_per_image), at the config's pool (prune.pool_fraction, prune.pool_size) and at the
   whole archive:
       epoch      = ceil(rho N)                    x  training FLOPs per image (student fwd+bwd on all crops,
                                                      teacher fwd on the globals)
       curation   = |P| x forward FLOPs of one centre view  +  k-means: 2 x d x (points x k) x iterations per
                    level (+ one more pass per resampling step and for assigning the pool)
   printed term by term, then the share over a run (one curation every T_s epochs) against the 5 % goal.
   Assumes the same FLOP/s for training and embedding, which favours training slightly (embedding runs at a
   larger batch, no backward).
2. Measured, at the demo config on this machine: one epoch of training and one prune.curate (embed the pool
   with the teacher backbone + hierarchical k-means + balanced sampling) on the prepared demo archive (run
   `python prepare.py configs/demo.yaml` first).
3. Pool size vs balance, measured: prune.curate at several pool fractions with the same teacher (after the
   one-epoch run, or the teacher of checkpoint.pt when given): curation time, and the kept set's top-class share
   and class entropy (ln 10 = perfectly balanced over the 10 TenGeoP classes) and leaf-cluster entropy.
"""
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pretrain  # noqa: E402
import prune  # noqa: E402
from oceansar import config  # noqa: E402
from oceansar import mfu  # noqa: E402
from oceansar import model as models  # noqa: E402
from oceansar import weights  # noqa: E402
from oceansar.epochs import subset_size  # noqa: E402

N_ARCHIVE = 12_000_000  # the real WV archive (DATA.md)


def measured_fraction(cfg_path):
    cfg = config.load([cfg_path, "train.out=/tmp/bench_curation", "train.resume=false", "train.epochs=1",
                       "prune.mode=none", "train.log_every=1000"])
    trainer = pretrain.Trainer(cfg)
    start = time.perf_counter()
    trainer.fit()
    epoch_s = time.perf_counter() - start
    backbone = trainer.teacher.backbone
    start = time.perf_counter()
    _, info, pool, _ = prune.curate(backbone, trainer.dataset, cfg, epoch=1)
    curation_s = time.perf_counter() - start
    print(f"\ndemo ({cfg_path}): N = {len(trainer.dataset)}, one epoch = {trainer.ipe} iterations in {epoch_s:.1f} s; "
          f"one curation of |P| = {len(pool)} ({len(pool) / len(trainer.dataset):.0%}) = {curation_s:.1f} s (embed "
          f"{info['embed_s']:.1f} s, k-means + sampling {info['cluster_s']:.1f} s) = {curation_s / epoch_s:.0%} of an "
          f"epoch; every {cfg['prune']['every']} epochs -> {curation_s / epoch_s / cfg['prune']['every']:.1%} extra "
          f"wall time")
    return cfg, trainer, epoch_s


def class_entropy(hist):
    p = np.asarray(hist, dtype=float)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def pool_balance(cfg, trainer, epoch_s, checkpoint=None):
    """Kept-set balance and curation time at several pool fractions, same teacher, same seed."""
    backbone = trainer.teacher.backbone
    if checkpoint:
        backbone, _, _ = weights.load_backbone(checkpoint, cfg)
        backbone.to(trainer.device)
    rho = cfg["prune"]["rho"]
    print(f"\npool size vs balance (teacher: {checkpoint or 'after the one-epoch run'}; rho = {rho}; "
          f"class entropy ln 10 = {np.log(10):.2f} is perfectly balanced):")
    print("  pool fraction | curation s | share of an epoch | top-class share kept (pool) | class entropy kept "
          "(pool) | leaf entropy/ln K kept")
    for fraction in sorted({rho, 0.375, 0.5, 0.75, 1.0}):
        over = config.apply(cfg, {"prune.pool_fraction": fraction}, "bench")
        start = time.perf_counter()
        _, info, _, _ = prune.curate(backbone, trainer.dataset, over, epoch=1)
        took, c = time.perf_counter() - start, info["classes"]
        print(f"  {fraction:13.3f} | {took:10.1f} | {took / epoch_s:16.0%} | {c['top_share_kept']:14.1%} "
              f"({c['top_share_pool']:.1%}) | {class_entropy(c['kept']):11.2f} ({class_entropy(c['pool']):.2f}) | "
              f"{info['clusters_kept']['entropy_norm']:.3f}")


def projected_fraction(cfg_path, n=N_ARCHIVE):
    cfg = config.load([cfg_path])
    m, t, p = cfg["model"], cfg["train"], cfg["prune"]
    with torch.device("meta"):
        backbone = models.build_backbone(m["arch"], m["patch_size"], t["global_crops_size"], 0.0)
        head = models.DINOHead(backbone.embed_dim, m["out_dim"], m["head_hidden_dim"], m["head_bottleneck_dim"])
    train_img = mfu.train_flops_per_image(backbone, head, t)
    embed_img = backbone.flops_per_image(t["global_crops_size"])
    kept = subset_size(p["rho"], n)
    d = backbone.embed_dim
    epoch = kept * train_img
    print(f"\nprojection ({cfg_path}, N = {n:,}, rho = {p['rho']}, T_s = {p['every']}):")
    print(f"  training, per image and step : {train_img / 1e9:8.1f} GFLOP   x ceil(rho N) = {kept:,} -> "
          f"epoch {epoch / 1e15:9.1f} PFLOP")
    for label, pool in (("config's pool", prune.pool_size(p, n)), ("whole archive", n)):
        fit = min(p["kmeans_sample"] or pool, pool)
        embed = pool * embed_img
        kmeans, points = 0.0, fit
        for k in p["levels"]:
            kmeans += 2 * d * points * k * p["iters"] * (1 + p["resample_steps"])  # Lloyd + resampled re-fits
            points = k
        kmeans += 2 * d * pool * p["levels"][0]  # assigning the whole pool to the leaves
        total = (embed + kmeans) / epoch
        print(f"  {label}: |P| = {pool:,} ({pool / n:.0%} of N), k-means fit on {fit:,}")
        print(f"    embedding (fwd, {embed_img / 1e9:.1f} GFLOP per image): {embed / 1e15:9.1f} PFLOP "
              f"({embed / epoch:.1%} of an epoch)")
        print(f"    hierarchical k-means {p['levels']} x {p['iters']} iters (+{p['resample_steps']} resampling) + "
              f"assignment: {kmeans / 1e15:.2f} PFLOP ({kmeans / epoch:.1%} of an epoch)")
        print(f"    one curation = {total:.1%} of an epoch; every {p['every']} epochs -> {total / p['every']:.1%} "
              f"extra compute over the run (goal <= 5 %: {'met' if total / p['every'] <= 0.05 else 'NOT met'})")


if __name__ == "__main__":
    torch.manual_seed(0)
    np.random.seed(0)
    demo, paper = (sys.argv[1:] + ["configs/demo.yaml", "configs/oceansar1.yaml"])[:2]
    projected_fraction(paper)
    cfg, trainer, epoch_s = measured_fraction(demo)
    pool_balance(cfg, trainer, epoch_s, sys.argv[3] if len(sys.argv) > 3 else None)
