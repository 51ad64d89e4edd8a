"""The evaluation's report (evaluate.py): the markdown table of every model with its 95 % intervals and the verdict
pretrained vs random_init, the confusion matrix and the scatter plots, written with report.json and the config.

    paths = write_report(report, cfg, out, class_names, scatter)   # report.json, report.md, *.png, config.yaml
    print(markdown_table(report))
"""

import os

import numpy as np
import torch
from matplotlib.figure import Figure

from . import atomic
from . import config
from . import intervals


def _cell(entry, key, digits):
    """'value [lo, hi]' (or 'value' without an interval, '–' when absent)."""
    if entry is None or key not in entry:
        return "–"
    value = f"{entry[key]:.{digits}f}"
    ci = entry.get("ci", {}).get(key)
    return f"{value} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else value


COLUMNS = (("linear acc", "classification", "linear", "accuracy", 3),
           ("linear bal. acc", "classification", "linear", "balanced_accuracy", 3),
           ("linear macro-F1", "classification", "linear", "macro_f1", 3),
           ("kNN acc", "classification", "knn", "accuracy", 3),
           ("wind RMSE m/s linear", "wind", "linear", "rmse", 2), ("wind RMSE m/s kNN", "wind", "knn", "rmse", 2),
           ("Hs RMSE m linear", "hs", "linear", "rmse", 2), ("Hs RMSE m kNN", "hs", "knn", "rmse", 2),
           ("wind dir. MAE ° linear", "wind_dir", "linear", "mae_deg", 1))
LOWER_IS_BETTER = ("rmse", "mae_deg")


def markdown_table(report):
    """Rows = models, columns = COLUMNS, each 'value [95 % interval]'; then which pretrained vs random_init
    intervals are disjoint."""
    results = report["results"]
    lines = ["| model | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(_cell(r.get(t, {}).get(p), k, d) for _, t, p, k, d in COLUMNS) + " |")
    if "pretrained" in results and "random_init" in results:
        verdicts = []
        for label, t, p, k, _ in COLUMNS:
            a, b = results["pretrained"].get(t, {}).get(p), results["random_init"].get(t, {}).get(p)
            if a and b and "ci" in a and "ci" in b:
                better = a[k] < b[k] if k in LOWER_IS_BETTER else a[k] > b[k]
                verdicts.append(f"{label} {'disjoint' if intervals.disjoint(a['ci'][k], b['ci'][k]) else 'overlap'}"
                                f" ({'pretrained better' if better else 'random_init better'})")
        if verdicts:
            lines += ["", "pretrained vs random_init, 95 % intervals: " + "; ".join(verdicts) + "."]
    return "\n".join(lines)


def plot_confusion(confusion, names, title):
    """Row-normalised confusion matrix (rows: true class) with class names and the fraction in each cell."""
    c = np.asarray(confusion, dtype=np.float64)
    c = c / np.maximum(c.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(2 + 0.7 * len(names), 1.5 + 0.6 * len(names)))
    ax = fig.subplots()
    fig.colorbar(ax.imshow(c, cmap="Blues", vmin=0, vmax=1), ax=ax, fraction=0.046)
    for i, j in zip(*np.nonzero(c >= 0.005)):
        ax.text(j, i, f"{c[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w" if c[i, j] > 0.5 else "k")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return fig


def plot_scatter(series, label):
    """Predicted vs true (test split) for each name -> (true, pred) series, with the 1:1 line."""
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ends = []
    for (name, (y, p)), colour in zip(series.items(), ("tab:blue", "tab:orange")):
        y, p = y[torch.isfinite(y)], p[torch.isfinite(y)]
        ax.scatter(y, p, s=6, alpha=0.5, color=colour, label=f"{name} (linear)")
        ends += [y.min().item(), p.min().item(), y.max().item(), p.max().item()]
    ax.plot([min(ends), max(ends)], [min(ends), max(ends)], color="k", lw=1)
    ax.set(xlabel=f"true {label}", ylabel=f"predicted {label}", title=f"{label}: linear probe, test split")
    ax.legend()
    return fig


def write_report(report, cfg, out, names, scatter):
    """report.json, report.md (printed too), the plots and config.yaml into `out`; returns the paths."""
    table = markdown_table(report)
    print(table)
    paths = [atomic.write_json(report, os.path.join(out, "report.json")),
             atomic.write_text(f"Evaluation of `{report['checkpoint']}` ({report['arch']}, {report['feature_dim']} "
                               f"features)\n\n{table}\n", os.path.join(out, "report.md"))]
    figures = {}
    linear = report["results"]["pretrained"].get("classification", {}).get("linear")
    if linear:
        figures["confusion.png"] = plot_confusion(linear["confusion"], names,
                                                  f"pretrained linear probe: accuracy {linear['accuracy']:.3f}")
    for target, label in (("wind", "wind speed (m/s)"), ("hs", "Hs (m)")):
        series = {k: v for k, v in scatter.get(target, {}).items() if k in ("pretrained", "physics")}
        if series:
            figures[f"scatter_{target}.png"] = plot_scatter(series, label)
    for name, fig in figures.items():
        fig.tight_layout()
        paths.append(atomic.save_figure(fig, os.path.join(out, name), dpi=120))
    return paths + [config.save(cfg, out)]
