"""A run's picture: curves.png drawn from its log.jsonl (pretrain.py redraws it at every snapshot and the end).

    python -m oceansar.curves runs/demo        # redraw runs/demo/curves.png now, e.g. while the run trains
    curves.draw_run("runs/demo")               # what pretrain.py calls; returns the path

Panels, each drawn only when the log has its keys (older logs and new diagnostics both work), against the
iteration: the DINO loss (per logged iteration, and the epoch mean); loss / ln K, whose 1.0 line is the uniform
collapse (records with a collapse warning are marked); the teacher's per-sample entropy and the entropy of its
batch-mean distribution next to their ln K ceiling (both near ln K: uniform collapse; batch entropy near 0: one
prototype); the prototypes in use (exp of the batch-mean entropy); KL(teacher || student); the spread of the
teacher's features (-> 0 is a feature collapse); the learning rate; the in-training kNN accuracy when
train.eval_every is on. Every panel marks the curations (dashed, blue: the start of the epoch whose subset was
re-curated) and resumes (dotted, grey). ln K is read from the log itself (loss / loss_norm). Written atomically
(a reader never sees a half-drawn file) with matplotlib's object API: no pyplot, no global backend switch.
"""

import math
import os

from matplotlib.figure import Figure

from . import atomic
from . import runlog
from .errors import EXIT_CONFIG, UserError, main

# (title, [(log key, label)], ln K reference line?) in drawing order; a panel without any of its keys is left out.
PANELS = [
    ("DINO loss", [("loss", "loss")], False),
    ("loss / ln K (1 = uniform collapse)", [("loss_norm", "loss / ln K")], False),
    ("teacher entropy (nats)", [("teacher_entropy", "per sample"), ("batch_entropy", "of the batch mean")], True),
    ("prototypes in use, exp H(batch mean)", [("prototypes_in_use", "prototypes")], False),
    ("KL(teacher || student) (nats)", [("kl_teacher_student", "KL")], False),
    ("teacher feature spread (about 1: spread out, 0: collapsed)", [("feature_std", "spread")], False),
    ("learning rate", [("lr", "lr")], False),
]


def run_events(records):
    """(iteration records, epoch records, curation start iterations, resume iterations, records with a collapse
    warning: an iteration's list of kinds, or an epoch's "collapse")."""
    steps = [r for r in records if "event" not in r and "loss" in r]
    epochs = [r for r in records if r.get("event") == "epoch"]
    ends = {}                                   # epoch -> last iteration logged before it began
    for r in epochs:
        ends[r["epoch"]] = r["iteration"]
    starts = {e: max([ends[p] for p in ends if p < e], default=0) for e in ends}
    curations = [starts[r["epoch"]] for r in epochs if r.get("curation")]
    resumes = [r["iteration"] for r in records if r.get("event") == "resumed"]
    collapsed = [r for r in records if r.get("warning") and "loss_norm" in r]
    return steps, epochs, curations, resumes, collapsed


def _ln_k(steps):
    for r in steps:
        if r.get("loss_norm"):
            return r["loss"] / r["loss_norm"]
    return None


def _mark_events(ax, curations, resumes):
    for i, it in enumerate(curations):
        ax.axvline(it, color="tab:blue", ls="--", lw=0.8, alpha=0.6, label="curation" if i == 0 else None)
    for i, it in enumerate(resumes):
        ax.axvline(it, color="0.5", ls=":", lw=0.8, label="resumed" if i == 0 else None)


def present_panels(steps):
    """The PANELS entries with at least one key in the iteration records, keeping only the keys present."""
    panels = [(t, [(k, lab) for k, lab in keys if any(k in r for r in steps)], ref) for t, keys, ref in PANELS]
    return [p for p in panels if p[1]]


def draw(records, path, title=None):
    """Draw the panels of `records` (log.jsonl records) into the PNG `path`, atomically; returns the path
    (None when the log has no iteration record yet)."""
    steps, epochs, curations, resumes, collapsed = run_events(records)
    if not steps:
        return None
    panels = present_panels(steps)
    knn = [(r["iteration"], r["knn"]["knn_acc"]) for r in epochs if "knn_acc" in (r.get("knn") or {})]
    n_panels = len(panels) + bool(knn)
    rows = math.ceil(n_panels / 2)
    fig = Figure(figsize=(12, 2.8 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False, sharex=True).ravel()
    ln_k = _ln_k(steps)
    for ax, (panel_title, keys, ln_k_line) in zip(axes, panels):
        for key, label in keys:
            points = [(r["iteration"], r[key]) for r in steps if r.get(key) is not None]
            ax.plot(*zip(*points), lw=1, label=label)
        if keys[0][0] == "loss" and epochs:
            ax.plot([r["iteration"] for r in epochs], [r["loss"] for r in epochs], "o-", ms=3, lw=1,
                    color="k", label="epoch mean")
        if keys[0][0] == "loss_norm":
            ax.axhline(1.0, color="tab:red", lw=0.8, alpha=0.6)
            if collapsed:
                ax.plot([r["iteration"] for r in collapsed], [r["loss_norm"] for r in collapsed], "x",
                        color="tab:red", ms=7, label="collapse warning")
        if ln_k_line and ln_k:
            ax.axhline(ln_k, color="tab:red", lw=0.8, alpha=0.6, label=f"ln K = {ln_k:.2f}")
        if keys[0][0] == "lr":
            ax.set_yscale("log")
        ax.set_title(panel_title, fontsize=10)
    if knn:
        ax = axes[len(panels)]
        ax.plot(*zip(*knn), "o-", ms=4, color="tab:green", label="kNN accuracy")
        ax.set_title("in-training kNN accuracy", fontsize=10)
    for ax in axes[:n_panels]:
        _mark_events(ax, curations, resumes)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    return atomic.save_figure(fig, path, dpi=90)


def draw_run(out):
    """Redraw <out>/curves.png from <out>/log.jsonl; returns its path, or None before the first record."""
    log = os.path.join(out, "log.jsonl")
    if not os.path.isfile(log):
        return None
    return draw(runlog.read(log), os.path.join(out, "curves.png"), title=os.path.normpath(out))


def run(argv):
    if len(argv) != 1 or not os.path.isfile(os.path.join(argv[0], "log.jsonl")):
        raise UserError("usage: python -m oceansar.curves <run folder with log.jsonl>", EXIT_CONFIG)
    path = draw_run(argv[0])
    print(f"wrote {path}" if path else f"{argv[0]}/log.jsonl has no iteration record yet")


if __name__ == "__main__":
    main(run)
