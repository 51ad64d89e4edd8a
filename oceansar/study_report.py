"""The study's statistics and report (study.py): convergence curves from the runs' log.jsonl, iterations to a kNN
target, mean ± 95 % t-intervals over seeds, paired differences to `none`, results.md / results.json /
convergence.png. Reads only what the runs wrote; recomputes nothing.
"""

import json
import os

import numpy as np
from matplotlib.figure import Figure

from . import atomic
from . import intervals
from . import runlog
from . import shards

TARGETS = (0.90, 0.95)  # fractions of `none`'s final validation kNN accuracy
FINAL = [  # (column, task, probe, metric, scale, digits): test-split metrics from each run's eval/report.json
    ("acc (linear) %", "classification", "linear", "accuracy", 100, 1),
    ("balanced acc (linear) %", "classification", "linear", "balanced_accuracy", 100, 1),
    ("acc (kNN) %", "classification", "knn", "accuracy", 100, 1),
    ("wind RMSE m/s (linear)", "wind", "linear", "rmse", 1, 2),
    ("Hs RMSE m (linear)", "hs", "linear", "rmse", 1, 2),
]


def knn_curve(records):
    """(iterations, validation kNN accuracy) of a run: the initial evaluation and every epoch's (pretrain.py
    evaluates at complete epochs and at the run's last iteration)."""
    points = {r["iteration"]: r["knn"]["knn_acc"] for r in records
              if r.get("event") in ("eval", "epoch") and isinstance(r.get("knn"), dict)}
    its = sorted(points)
    return np.array(its, dtype=float), np.array([points[i] for i in its], dtype=float)


def iterations_to(its, acc, target):
    """First iteration where the curve reaches `target`, linearly interpolated between evaluations; nan if never."""
    hit = np.flatnonzero(acc >= target)
    if len(hit) == 0:
        return float("nan")
    i = hit[0]
    if i == 0:
        return float(its[0])
    return float(its[i - 1] + (target - acc[i - 1]) / (acc[i] - acc[i - 1]) * (its[i] - its[i - 1]))


def t_interval(values):
    """(mean, half-width of the 95 % t-interval, n) over the finite values; half-width nan when n < 2."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), intervals.t_half_width(v) if len(v) > 1 else float("nan"), len(v)


def cell(values, digits=1, missing="–"):
    """'mean ± half' (95 % t); `missing` when no value is finite; '(k/n)' when only k of n are."""
    mean, half, n = t_interval(values)
    if n == 0:
        return missing
    text = f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if np.isfinite(half) else "")
    return text + (f" ({n}/{len(values)})" if n < len(values) else "")


def rarest_classes(cfg, count):
    """The archive's `count` least frequent classes: the tail the pruner is meant to rebalance."""
    meta = shards.ShardDataset(cfg["train"]["data"]).meta
    names, counts = np.unique(meta["class_name"][meta["class_idx"] >= 0], return_counts=True)
    return [str(n) for n in names[np.argsort(counts, kind="stable")][:count]]


def metric(result, task, probe, key):
    try:
        return float(result[task][probe][key])
    except (KeyError, TypeError):
        return float("nan")


def final_metrics(result, rare):
    """The test-split columns of one evaluated model (a report.json 'results' entry)."""
    m = {col: metric(result, task, probe, key) * scale for col, task, probe, key, scale, _ in FINAL}
    per_class = (result.get("classification") or {}).get("linear", {}).get("per_class", {})
    m["rare-class recall (linear) %"] = 100 * float(np.mean([per_class.get(c, np.nan) for c in rare])) if rare \
        else float("nan")
    return m


def run_metrics(folder, rare, batch):
    """Everything the report needs from one run folder: its curve, final metrics and timings."""
    log = os.path.join(folder, "log.jsonl")
    records = runlog.read(log) if os.path.exists(log) else []
    its, acc = knn_curve(records)
    m = final_metrics(json.load(open(os.path.join(folder, "eval", "report.json")))["results"]["pretrained"], rare)
    done = [r for r in records if r.get("event") == "done"]
    timing = done[-1] if done else {}
    m["train + curation s"] = timing.get("train_s", np.nan) + timing.get("curation_s", np.nan)
    m["curation share %"] = 100 * timing.get("curation_share", np.nan)
    return {"iterations": its.tolist(), "knn": acc.tolist(), "batch": batch,
            "last_iteration": max((r.get("iteration", 0) for r in records), default=0), "metrics": m}


def summarise(runs, seeds):
    """Targets from `none`, then per variant: iterations/images to each target, final metrics, paired diffs."""
    none = runs.get("none")
    final_none = np.mean([r["knn"][-1] for r in none.values()]) if none else float("nan")
    targets = {f"{int(f * 100)} %": f * final_none for f in TARGETS}
    out = {}
    for name, by_seed in runs.items():
        row = {}
        for label, target in targets.items():
            row[f"iterations to {label}"] = [iterations_to(np.array(r["iterations"]), np.array(r["knn"]), target)
                                             for r in by_seed.values()]
            row[f"images to {label}"] = [v * r["batch"] for v, r in zip(row[f"iterations to {label}"],
                                                                         by_seed.values())]
        row["init kNN (val) %"] = [100 * r["knn"][0] for r in by_seed.values()]
        row["final kNN (val) %"] = [100 * r["knn"][-1] for r in by_seed.values()]
        for col in next(iter(by_seed.values()))["metrics"]:
            row[col] = [r["metrics"][col] for r in by_seed.values()]
        out[name] = row
    paired = {}
    for name in runs:
        if none and name != "none":
            common = [i for i, s in enumerate(seeds) if s in runs[name] and s in none]
            paired[name] = {col: [out[name][col][i] - out["none"][col][i] for i in common]
                            for col in out[name] if not col.startswith("images")}
    return targets, out, paired


def table(rows, columns, digits):
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            cell(row[c], digits.get(c, 1), "not reached" if c.startswith(("iterations", "images")) else "–")
            for c in columns) + " |")
    return "\n".join(lines)


def convergence_plot(runs, targets, path):
    """Validation kNN accuracy vs iteration: every seed thin, the mean over seeds thick, the targets dashed."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    for k, (name, by_seed) in enumerate(runs.items()):
        color = f"C{k % 10}"
        for r in by_seed.values():
            ax.plot(r["iterations"], 100 * np.array(r["knn"]), color=color, lw=0.8, alpha=0.35)
        common = sorted(set.intersection(*(set(r["iterations"]) for r in by_seed.values())))
        mean = [np.mean([r["knn"][r["iterations"].index(i)] for r in by_seed.values()]) for i in common]
        ax.plot(common, 100 * np.array(mean), color=color, lw=2, marker="o", ms=3,
                label=f"{name} (mean of {len(by_seed)})")
    for label, target in targets.items():
        if np.isfinite(target):
            ax.axhline(100 * target, color="0.4", ls="--", lw=0.8)
            ax.text(ax.get_xlim()[0], 100 * target, f" {label} of none's final", fontsize=7, va="bottom")
    ax.set_xlabel("iteration (equal for every variant)")
    ax.set_ylabel("kNN accuracy, validation split (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=120)


def write(cfg, names, minutes):
    """results.md, results.json and convergence.png in study.out; returns the Markdown text."""
    s, out = cfg["study"], cfg["study"]["out"]
    rare = rarest_classes(cfg, s["rare_classes"])
    batch = cfg["train"]["batch_size_per_gpu"]  # study runs are single-process: global batch = per-process batch
    runs = {n: {seed: run_metrics(os.path.join(out, n, f"seed{seed}"), rare, batch) for seed in s["seeds"]}
            for n in names}
    targets, rows, paired = summarise(runs, s["seeds"])
    conv = ["init kNN (val) %", "final kNN (val) %"] + [f"{w} to {t}" for t in targets for w in ("iterations",
                                                                                                  "images")]
    final = [c for c, *_ in FINAL] + ["rare-class recall (linear) %"]
    cost = ["train + curation s", "curation share %"]
    digits = {c: 0 for c in conv if c.startswith(("iterations", "images"))} | {"wind RMSE m/s (linear)": 2,
                                                                              "Hs RMSE m (linear)": 2}
    last = {n: sorted({r["last_iteration"] for r in by_seed.values()}) for n, by_seed in runs.items()}
    baseline = json.load(open(os.path.join(out, "baselines", "eval", "report.json")))["results"]
    base_rows = {f"baseline: {m}": {c: [v] for c, v in final_metrics(baseline[m], rare).items()}
                 for m in ("random_init", "physics") if m in baseline}
    early = [n for n, row in rows.items() if any(np.nanmax(row["init kNN (val) %"]) >= 100 * t
                                                 for t in targets.values())]
    target_text = ", ".join(f"{k} = {100 * v:.1f} %" for k, v in targets.items()) if "none" in runs else \
        "no `none` variant in this study: no targets and no paired differences"
    text = "\n\n".join([
        f"# Study results ({', '.join(names)} x seeds {s['seeds']})",
        f"Every run: {', '.join(f'{n} {v}' for n, v in last.items())} iterations of batch {batch}. kNN targets from "
        f"`none`'s final validation kNN accuracy (mean over seeds): {target_text}. Cells: mean ± 95 % t-interval "
        f"over seeds; '(k/n)': only k of n seeds reached the target; 'not reached': none did."
        + (f" In {', '.join(early)} a target is at or below the initial kNN accuracy of some seed, so it is reached "
           f"at iteration 0: the target says nothing there." if early else ""),
        "## Convergence (validation kNN)", table(rows, conv, digits),
        "## Final metrics (test split)", table({**rows, **base_rows}, final, digits),
        f"Rare classes: the {len(rare)} least frequent in the archive ({', '.join(rare)}); their mean linear recall.",
        "## Paired differences to `none` (same seed, same initial weights): variant − none",
        table(paired, [c for c in conv + final if not c.startswith("images")], digits) if paired else "–",
        "## Cost", table(rows, cost, {"train + curation s": 0}),
        "train + curation s: the wall time of the training epochs including the curations (embedding + k-means + "
        "sampling), not the periodic kNN; curation share = curation time / the rest of training. Study wall time "
        f"this invocation: {minutes:.1f} min."])
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"targets": targets, "rows": rows, "paired": paired, "rare_classes": rare, "seeds": s["seeds"],
                   "runs": {n: {str(k): v for k, v in r.items()} for n, r in runs.items()},
                   "baselines": {m: baseline[m] for m in ("random_init", "physics") if m in baseline}}, f,
                  indent=1, default=float)
    convergence_plot(runs, targets, os.path.join(out, "convergence.png"))
    return text
