"""What one curation costs, as a fraction of one training epoch (the paper claims "no additional compute").

    python benchmarks/bench_curation.py [configs/demo.yaml] [configs/oceansar1.yaml]

1. Measured, at the demo config on this machine: the wall time of one epoch of training and of one
   prune.rebalance (embed the pool with the teacher backbone + hierarchical k-means + balanced sampling) on the
   prepared demo archive (run `python prepare.py configs/demo.yaml` first).
2. Projected, for the paper-scale config, from FLOP counts (model.flops_per_image, pretrain.train_flops_per_image):
       epoch      = ceil(rho N)                    x  training FLOPs per image (student fwd+bwd on all crops,
                                                      teacher fwd on the globals)
       curation   = |P| x forward FLOPs of one centre view  +  k-means: 2 x d x (points x k) x iterations per
                    level (+ one more pass per resampling step and for assigning the pool)
   printed term by term. Assumes the same FLOP/s for training and embedding, which favours training slightly
   (embedding runs at a larger batch, no backward).
"""
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import config  # noqa: E402
import model as models  # noqa: E402
import pretrain  # noqa: E402
import prune  # noqa: E402

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
    _, info, _, _ = prune.rebalance(backbone, trainer.dataset, cfg, epoch=1, device=trainer.device)
    curation_s = time.perf_counter() - start
    print(f"demo ({cfg_path}): N = {len(trainer.dataset)}, one epoch = {trainer.ipe} iterations in {epoch_s:.1f} s; "
          f"one curation = {curation_s:.1f} s (embed {info['embed_s']:.1f} s, k-means + sampling "
          f"{info['cluster_s']:.1f} s) = {curation_s / epoch_s:.0%} of an epoch; every {cfg['prune']['every']} "
          f"epochs -> {curation_s / epoch_s / cfg['prune']['every']:.1%} extra wall time")


def projected_fraction(cfg_path, n=N_ARCHIVE):
    cfg = config.load([cfg_path])
    m, t, p = cfg["model"], cfg["train"], cfg["prune"]
    with torch.device("meta"):
        backbone = models.build_backbone(m["arch"], m["patch_size"], t["global_crops_size"], 0.0)
        head = models.DINOHead(backbone.embed_dim, m["out_dim"], m["head_hidden_dim"], m["head_bottleneck_dim"])
    train_img = pretrain.train_flops_per_image(backbone, head, t)
    embed_img = models.flops_per_image(backbone, t["global_crops_size"])
    kept = math.ceil(p["rho"] * n)
    pool = min(p["pool_size"] or n, n)
    fit = min(p["kmeans_sample"] or pool, pool)
    d = backbone.embed_dim
    epoch = kept * train_img
    embed = pool * embed_img
    kmeans, points = 0.0, fit
    for k in p["levels"]:
        kmeans += 2 * d * points * k * p["iters"] * (1 + p["resample_steps"])  # Lloyd + resampled re-fits
        points = k
    kmeans += 2 * d * pool * p["levels"][0]  # assigning the whole pool to the leaves
    print(f"\nprojection ({cfg_path}, N = {n:,}, rho = {p['rho']}, |P| = {pool:,}, k-means fit on {fit:,}):")
    print(f"  training, per image and step : {train_img / 1e9:8.1f} GFLOP   x ceil(rho N) = {kept:,} -> "
          f"epoch {epoch / 1e15:9.1f} PFLOP")
    print(f"  embedding, per image (fwd)   : {embed_img / 1e9:8.1f} GFLOP   x |P| = {pool:,} -> "
          f"{embed / 1e15:9.1f} PFLOP ({embed / epoch:.1%} of an epoch)")
    print(f"  hierarchical k-means {p['levels']} x {p['iters']} iters (+{p['resample_steps']} resampling) + "
          f"assignment: {kmeans / 1e15:.2f} PFLOP ({kmeans / epoch:.1%} of an epoch)")
    total = (embed + kmeans) / epoch
    print(f"  one curation = {total:.1%} of an epoch; every {p['every']} epochs -> {total / p['every']:.1%} extra "
          f"compute over the run (the paper: 'no additional compute')")


if __name__ == "__main__":
    torch.manual_seed(0)
    np.random.seed(0)
    demo, paper = (sys.argv[1:] + ["configs/demo.yaml", "configs/oceansar1.yaml"])[:2]
    projected_fraction(paper)
    measured_fraction(demo)
