"""Reproduction study: does dynamic pruning help, at equal compute? Runs the stages for every variant and seed.

Reads   a config (configs/study.yaml on CPU); its data/model/train/prune/eval sections are the shared base.
Writes  <study.out>/<variant>/seed<S>/      one pretraining run each (log.jsonl, checkpoint.pt, backbone.pt)
        <study.out>/<variant>/seed<S>/eval/ its evaluation (report.json, report.md, plots)
        <study.out>/baselines/eval/         random-init and physics baselines, evaluated once
        <study.out>/results.md              mean +- std over seeds per variant, with the baselines
        <study.out>/results.json            the same numbers, plus every run's
        <study.out>/convergence.png         kNN accuracy on the validation split vs epoch, all variants

Commands:
    python study.py configs/study.yaml                                    # the CPU study (~1 h on 2 cores)
    python study.py configs/study.yaml study.variants=[none,dynamic] study.seeds=[0]   # a quick look
    python study.py configs/study.yaml study.scale=gpu                    # larger archive and ViT-S/16, one GPU
    torchrun is not needed: each stage is launched as a subprocess with the command a user would type.
The study resumes: a run whose report.json exists is not redone (delete the folder to redo it).

Variants (all at equal compute: every run does the same number of iterations of the same global batch):
    none      a fresh uniform random subset of rho*N images every epoch
    static    clustered once after the warm-up, that subset kept to the end
    dynamic   re-clustered every prune.every epochs after the warm-up (the paper's method)
    rho0.1, rho0.5   dynamic with another kept fraction; an epoch is ceil(rho*N/batch) iterations, so the
              number of epochs is set to keep the total iterations as equal as whole epochs allow, and the
              warm-up, curation period and teacher warm-up (all in epochs) are scaled with it
    eta-1, eta1      dynamic with within-cluster sampling favouring prototypes (-1) or atypical points (+1)
"""

import json
import math
import os
import subprocess
import sys
import time

import numpy as np

import config

VARIANTS = {
    "none": {"prune.mode": "none"},
    "static": {"prune.mode": "static"},
    "dynamic": {"prune.mode": "dynamic"},
    "rho0.1": {"prune.mode": "dynamic", "prune.rho": 0.1},
    "rho0.5": {"prune.mode": "dynamic", "prune.rho": 0.5},
    "eta-1": {"prune.mode": "dynamic", "prune.eta": -1.0},
    "eta1": {"prune.mode": "dynamic", "prune.eta": 1.0},
}

# study.scale=gpu: a larger archive at the paper's resolution and a ViT-S/16, for one GPU.
SCALES = {
    "cpu": {},
    "gpu": {"data.num_samples": 200_000, "data.image_size": 128, "data.pixel_spacing": 50.0, "data.workers": 16,
            "data.eval_per_class": 400, "data.regression_samples": 8000, "model.arch": "vit_small",
            "model.patch_size": 16, "model.out_dim": 65536, "model.head_hidden_dim": 2048,
            "model.head_bottleneck_dim": 256, "train.global_crops_size": 128, "train.local_crops_size": 48,
            "train.local_crops_number": 8, "train.batch_size_per_gpu": 256, "train.epochs": 40,
            "train.warmup_epochs": 4, "train.warmup_teacher_temp_epochs": 10, "prune.warmup_epochs": 5,
            "prune.every": 5, "prune.levels": [1000, 100], "prune.kmeans_sample": 100_000},
}

METRICS = [  # (column, task, probe, metric)
    ("balanced acc (linear)", "classification", "linear", "balanced_accuracy"),
    ("acc (linear)", "classification", "linear", "accuracy"),
    ("acc (kNN)", "classification", "knn", "accuracy"),
    ("wind RMSE m/s (linear)", "wind", "linear", "rmse"),
    ("Hs RMSE m (linear)", "hs", "linear", "rmse"),
]


def variant_overrides(name, cfg):
    """Overrides of one variant, with the epoch counts rescaled so every variant runs the same iterations."""
    if name not in VARIANTS:
        raise config.ConfigError(f"config key 'study.variants': unknown variant '{name}'; "
                                 f"known: {', '.join(VARIANTS)}")
    over = dict(VARIANTS[name])
    rho = over.get("prune.rho", cfg["prune"]["rho"])
    if rho != cfg["prune"]["rho"]:
        n = cfg["data"]["num_samples"] if cfg["data"]["source"] == "synthetic" else None
        if n is None:
            raise config.ConfigError("config key 'study.variants': the rho sweep needs data.source=synthetic "
                                     "(the archive size sets the epoch length)")
        batch = cfg["train"]["batch_size_per_gpu"]
        ipe = lambda r: math.ceil(math.ceil(r * n) / batch)  # noqa: E731  iterations per epoch (METHOD.md)
        total = cfg["train"]["epochs"] * ipe(cfg["prune"]["rho"])
        epochs = max(1, round(total / ipe(rho)))
        factor = epochs / cfg["train"]["epochs"]
        over["train.epochs"] = epochs
        for key in ("train.warmup_epochs", "train.warmup_teacher_temp_epochs", "prune.warmup_epochs",
                    "prune.every", "train.freeze_last_layer"):
            section, k = key.split(".")
            over[key] = max(1 if key == "prune.every" else 0, int(round(cfg[section][k] * factor)))
    return over


def as_args(overrides):
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def run_stage(script, cfg_path, args, log_path):
    """One stage as a subprocess (the command a user would type); its output goes to a log file."""
    cmd = [sys.executable, script, cfg_path, *args]
    t = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        print(f"error: {' '.join(cmd)} failed with exit code {r.returncode}; see {log_path}", file=sys.stderr)
        sys.exit(1)
    return time.perf_counter() - t


def run_variant(cfg_path, cfg, base, name, seed):
    """Pretrain and evaluate one (variant, seed), unless its report already exists."""
    out = os.path.join(cfg["study"]["out"], name, f"seed{seed}")
    report = os.path.join(out, "eval", "report.json")
    if os.path.exists(report):
        return report
    os.makedirs(out, exist_ok=True)
    over = {**base, **variant_overrides(name, cfg), "train.out": out, "train.seed": seed,
            "train.eval_every": 1, "train.eval_data": cfg["eval"]["classification"]}
    t = run_stage("pretrain.py", cfg_path, as_args(over), os.path.join(out, "pretrain.out"))
    e = run_stage("evaluate.py", cfg_path, as_args({**base, "eval.checkpoint": os.path.join(out, "checkpoint.pt"),
                                                    "eval.out": os.path.join(out, "eval"),
                                                    "eval.baselines": False}), os.path.join(out, "evaluate.out"))
    print(f"  {name} seed {seed}: pretrain {t:.0f} s, evaluate {e:.0f} s")
    return report


def metric(result, task, probe, key):
    try:
        return float(result[task][probe][key])
    except (KeyError, TypeError):
        return float("nan")


def rarest_classes(cfg, count):
    """The archive's `count` least frequent classes: the tail the pruner is meant to rebalance."""
    import shards
    meta = shards.ShardDataset(os.path.join(cfg["data"]["root"], "archive")).meta
    names, counts = np.unique(meta["class_name"][meta["class_idx"] >= 0], return_counts=True)
    return [str(n) for n in names[np.argsort(counts)][:count]]


def fmt(values, scale=1.0, digits=1):
    v = np.asarray(values, dtype=float) * scale
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return "–"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if len(v) > 1 else f"{v.mean():.{digits}f}"


def results_table(runs, baselines, rare):
    """Markdown: one row per variant (mean ± std over seeds), then the baselines (one evaluation)."""
    pct = lambda col: "acc" in col  # noqa: E731  accuracies in %, RMSEs in their units
    header = ["variant", "seeds"] + [c for c, *_ in METRICS] + [f"{r} (linear)" for r in rare]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [(name, [r["results"]["pretrained"] for r in reports]) for name, reports in runs.items()]
    rows += [(f"baseline: {m}", [res]) for m, res in baselines.items()]
    for name, results in rows:
        cells = [name, str(len(results))]
        for col, task, probe, key in METRICS:
            cells.append(fmt([metric(r, task, probe, key) for r in results], 100 if pct(col) else 1,
                             1 if pct(col) else 2))
        for cls in rare:
            cells.append(fmt([r.get("classification", {}).get("linear", {}).get("per_class", {}).get(cls, np.nan)
                              for r in results], 100, 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def convergence_plot(cfg, names, seeds, path):
    """kNN accuracy on the validation split after every epoch, mean over seeds, one line per variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in names:
        curves = []
        for seed in seeds:
            log = os.path.join(cfg["study"]["out"], name, f"seed{seed}", "log.jsonl")
            records = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
            points = {r["iteration"]: r["knn"]["knn_acc"] for r in records
                      if r.get("event") == "epoch" and isinstance(r.get("knn"), dict) and "knn_acc" in r["knn"]}
            if points:
                curves.append(points)
        if not curves:
            continue
        iters = sorted(set.intersection(*(set(c) for c in curves)))
        mean = np.array([[c[i] for i in iters] for c in curves]).mean(0)
        ax.plot(iters, 100 * mean, marker="o", ms=3, label=f"{name} ({len(curves)} seed{'s' * (len(curves) > 1)})")
    ax.set_xlabel("iteration (equal compute across variants)")
    ax.set_ylabel("kNN accuracy on the validation split (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv):
    cfg = config.load_or_exit(argv, stage="study")
    s = cfg["study"]
    base = SCALES[s["scale"]]
    cfg = config.load_or_exit(argv + as_args(base), stage="study")  # the base config every stage will see
    for name in s["variants"]:
        try:
            variant_overrides(name, cfg)
        except config.ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    # The study's own config file, with the scale applied, is what every stage reads.
    cfg_path = argv[0]
    os.makedirs(s["out"], exist_ok=True)
    config.save(cfg, s["out"])
    print(f"study: {len(s['variants'])} variants x {len(s['seeds'])} seeds, scale {s['scale']}, in {s['out']}")
    start = time.perf_counter()
    data_args = as_args({k: v for k, v in base.items() if k.startswith("data.")})
    if not os.path.exists(os.path.join(cfg["data"]["root"], "archive", "manifest.json")):
        run_stage("prepare.py", cfg_path, data_args, os.path.join(s["out"], "prepare.out"))
    baseline_dir = os.path.join(s["out"], "baselines")
    reports = {}
    for name in s["variants"]:
        reports[name] = [run_variant(cfg_path, cfg, base, name, seed) for seed in s["seeds"]]
    baseline_report = os.path.join(baseline_dir, "eval", "report.json")
    if not os.path.exists(baseline_report):
        first = os.path.join(s["out"], s["variants"][0], f"seed{s['seeds'][0]}", "checkpoint.pt")
        os.makedirs(baseline_dir, exist_ok=True)
        run_stage("evaluate.py", cfg_path, as_args({**base, "eval.checkpoint": first,
                                                    "eval.out": os.path.join(baseline_dir, "eval")}),
                  os.path.join(baseline_dir, "evaluate.out"))
    runs = {name: [json.load(open(p)) for p in paths] for name, paths in reports.items()}
    results = json.load(open(baseline_report))["results"]
    baselines = {m: results[m] for m in ("random_init", "physics") if m in results}
    rare = rarest_classes(cfg, s["rare_classes"])
    table = results_table(runs, baselines, rare)
    minutes = (time.perf_counter() - start) / 60
    text = (f"{table}\n\nMean ± std over seeds {s['seeds']} (population std). Accuracies in % on the test split; "
            f"RMSE on the test split. Rare classes = the {len(rare)} least frequent in the archive. "
            f"Baselines evaluated once (seed {cfg['eval']['seed']}). Study wall time this invocation: "
            f"{minutes:.1f} min.\n")
    with open(os.path.join(s["out"], "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(s["out"], "results.json"), "w") as f:
        json.dump({"runs": {n: [r["results"]["pretrained"] for r in rs] for n, rs in runs.items()},
                   "baselines": baselines, "rare_classes": rare, "seeds": s["seeds"]}, f, indent=1)
    plot = convergence_plot(cfg, s["variants"], s["seeds"], os.path.join(s["out"], "convergence.png"))
    print(text)
    print(f"results: {os.path.join(s['out'], 'results.md')}\nconvergence: {plot}")


if __name__ == "__main__":
    main(sys.argv[1:])
