"""Evaluation of a pretrained backbone: frozen features, linear probes and kNN, next to two baselines.

Reads   eval.checkpoint       pretrain.py's checkpoint.pt (its teacher backbone; architecture from the config
                              saved in it), a backbone.pt, or published weights in any layout oceansar/weights.py reads
                              (.pth/.pth.tar/.safetensors, Hugging Face folders; architecture from model.*).
                              null: <train.out>/checkpoint.pt, or <train.out>/backbone.pt when there is none
        eval.classification   prepared dataset with class_idx/class_name (TenGeoP, data/demo/tengeop)
        eval.regression       prepared dataset with wind and/or hs (OCN-labelled archive, data/demo/regression)
Writes  eval.out (null: <train.out>/eval):  report.json, report.md (the table, also printed), confusion.png
        (pretrained linear probe, rows normalised), scatter_wind.png / scatter_hs.png (predicted vs true:
        pretrained and physics linear probes), config.yaml (the resolved config). report.json is
        {"checkpoint", "arch", "feature_dim", "results": {model: {"classification": {"linear"|"knn": {accuracy,
        balanced_accuracy, macro_f1, n, ci, confusion, per_class: {name: recall}}}, "wind"|"hs": {"linear"|"knn":
        {rmse, bias, r2, n, ci}}, "wind_dir": {"linear"|"knn": {mae_deg, mae_axis_deg, n, ci}}}}} with model in
        pretrained, random_init, physics; absent tasks are left out.
        ci = {metric: [lo, hi]}, the 95 % interval; random_init entries are means over seeds, with "seeds".

Commands (exit codes: 0 done, 1 unusable input (a corrupt shard or checkpoint), one line; 2 bad config, a
missing input or an unwritable eval.out, checked before any work; --verify hashes every shard first)
    python evaluate.py configs/demo.yaml                 # CPU, runs/demo/checkpoint.pt (~15 s on 2 cores)
    OMP_NUM_THREADS=1 python evaluate.py configs/demo.yaml   # faster when other jobs share a small CPU
    python evaluate.py configs/oceansar1.yaml eval.batch_size=1024        # GPU when present (bf16 autocast)
    python evaluate.py configs/resnet50.yaml checkpoint=OceanSAR-1 out=runs/release/eval   # HF model folder
    python evaluate.py configs/resnet50.yaml checkpoint=OceanSAR-1-wind eval.release_head=wind
The last two evaluate published weights (README, "Published weights"; oceansar/weights.py reads every layout: the
transformers ResNet of the hub release, Galeio's lightly DINO .pth.tar, DINO/timm ViTs, torchvision ResNets;
the teacher unless eval.weights_key names another network). The model.* section must name that architecture;
weights that do not fit it stop with the missing and unexpected keys. A ViT is built at the grid of the stored
position embedding and resamples it to the image as DINO does. eval.release_head=wind|hs also scores the
checkpoint's own linear head (classifier.1) on the test split, unfitted: results.pretrained.<target>.release.

Protocol (README, "The method"). One centre view: the whole imagette, normalised by the dataset's own mean/std.
Features: ViT CLS token (eval.n_last_blocks > 1: CLS of the last n blocks; eval.avgpool: plus the mean
patch token), ResNet pooled feature. Models: "pretrained"; with eval.baselines also "random_init" (same
architecture, eval.random_seeds initialisations from seed eval.seed on, averaged) and "physics" (hand-crafted
features), all through the same probes: logistic regression and ridge with λ chosen on val, kNN k=20, T=0.07,
fitted on train, scored on test. The physics features are z-scored with train-split statistics before kNN
(their units differ by orders of magnitude; the linear probes standardise every input anyway).
Wind and Hs linear probes of the networks see the imagette's incidence angle (and its square) beside the
features when eval.probe_incidence is on: every σ0 wind retrieval needs it, and the physics features carry it;
their kNN uses the network features alone.
Intervals (intervals.py): every metric carries a 95 % interval from eval.bootstrap seeded resamples of the test
images (the same resamples for every row); the random_init interval also counts the spread over its seeds. Samples with
an empty split column get a seeded 80/5/15 split stratified by class (eval.split_seed); a dataset with no
val sample gives 1/16 of its train split to val. A regression target with no finite label is skipped.

Reading the table: rows are models; classification columns are test accuracy, balanced accuracy (mean
recall: what the rare TenGeoP classes weigh) and macro-F1 of the linear probe, then kNN accuracy; wind
(m/s) and Hs (m) columns give test RMSE of the linear probe / of kNN. A pretrained number only means
something next to random_init (what the architecture and probe get for free) and physics (what classical
hand-crafted SAR statistics get). Where the regression set has a `wind_dir` column
(degrees relative to the radar look, as synthetic.py writes), the wind direction is a circular target: probes on
(cos, sin), mean absolute angular error in [0, 180] (chance 90); SAR sees the wind axis better than its sense
(the 180° ambiguity), so report.json adds mae_axis_deg from probes on (cos 2θ, sin 2θ), in [0, 90] (chance 45).
report.json adds per-class recall, confusions, bias, R² and n.

The probes, feature extraction and splits live in oceansar/probes.py, the physics features in
oceansar/physics.py, weight files -> backbones in oceansar/weights.py, the report's table and plots in
oceansar/eval_report.py; this script runs them.
"""

import os

# Before torch loads OpenMP: threads that spin while idle slow a small shared CPU several-fold. A wait
# policy the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time

import numpy as np
import torch

from oceansar import config
from oceansar import errors
from oceansar import eval_report
from oceansar import intervals
from oceansar import model as models
from oceansar import probes
from oceansar import shards
from oceansar import vit
from oceansar import weights


class EvalError(errors.UserError, RuntimeError):
    """Missing or unusable input, reported by the CLI as one line (exit code 1)."""


# --------------------------------------------------------------------------------------------------- features

# ------------------------------------------------------------------------------------------------------ tasks

def model_groups(names):
    """Report rows -> the feature sets behind them: the random-init seeds ("random_init#<seed>") form one row."""
    groups = {}
    for name in names:
        groups.setdefault(name.split("#")[0], []).append(name)
    return groups


def _summary(entries, replicates, keys):
    """One report entry from the probe results of a row's S members (S > 1: random-init seeds).

    Each key gets its value (the mean over members) and, when replicates are given, its 95 % interval in
    "ci" (bootstrap over test images; across_seeds for S > 1); members' own values go to "seeds"."""
    out = {key: float(np.mean([en[key] for en in entries])) for key in keys}
    out["n"] = entries[0]["n"]
    if replicates is not None:
        out["ci"] = {}
        for key in keys:
            reps = torch.stack([r[key] for r in replicates])
            point = [en[key] for en in entries]
            out["ci"][key] = intervals.percentile(reps[0]) if len(entries) == 1 else \
                intervals.across_seeds(point, reps)[1]
    if len(entries) > 1:
        out["seeds"] = {key: [en[key] for en in entries] for key in keys}
    return out


def _class_entry(entries, names, y_test, idx):
    """A probe's classification metrics for report.json: the summary, summed confusion, recall per class."""
    keys = ("accuracy", "balanced_accuracy", "macro_f1")
    reps = None if idx is None else \
        [intervals.classification_replicates(y_test, en["pred"], len(names), idx) for en in entries]
    conf = sum(en["confusion"].cpu() for en in entries)
    support = conf.sum(1)
    recall = conf.diagonal().double() / support.clamp_min(1)
    return {**_summary(entries, reps, keys), "confusion": conf.tolist(),
            "per_class": {names[c]: recall[c].item() for c in range(len(names)) if support[c] > 0}}


def _regression_entry(entries, y_test, idx):
    known = torch.isfinite(y_test)
    reps = None if idx is None else \
        [intervals.regression_replicates(y_test[known], en["pred"].cpu()[known], idx) for en in entries]
    return _summary(entries, reps, ("rmse", "bias", "r2"))


def _bootstrap(n, e):
    return intervals.bootstrap_indices(n, e["bootstrap"], e["seed"]) if e["bootstrap"] else None


def _classification(report, feats, ds, rows, masks, e):
    cls = torch.from_numpy(ds.meta["class_idx"][rows].astype(np.int64))
    if not all(((cls >= 0) & m).any() for m in masks):
        raise EvalError(f"{ds.folder}: classification needs samples with class_idx >= 0 in train, val and test")
    names = probes.class_names(ds.meta, int(cls.max()) + 1)
    results = {}
    for name, X in feats.items():
        y = cls.to(X.device)
        res = probes.classification_probes(*[(X[m], y[m]) for m in masks], len(names), e["knn_k"],
                                           e["knn_temperature"], standardise_knn=name == "physics", refit=e["refit"])
        results[name] = res
        print(f"classification  {name:<14s} linear acc {res['linear']['accuracy']:.3f} "
              f"(λ={res['linear']['lam']:.0e})  kNN acc {res['knn']['accuracy']:.3f}  n_test={res['linear']['n']}")
    y_test = cls[masks[2]]
    idx = _bootstrap(len(y_test), e)
    for row, members in model_groups(feats).items():
        report["results"][row]["classification"] = {
            p: _class_entry([results[m][p] for m in members], names, y_test, idx) for p in ("linear", "knn")}
    return names


def _regression(report, feats, ds, rows, masks, e, scatter):
    if e["probe_incidence"]:                 # the network rows' linear probes see the incidence too (physics has it)
        inc = probes.incidence(ds, rows)
        extra = torch.stack([inc, inc ** 2], 1)
        feats = {name: X if name == "physics" else torch.cat([X, extra.to(X.device)], 1) for name, X in feats.items()}
    for target in ("wind", "hs"):
        y_all = torch.from_numpy(ds.meta[target][rows].astype(np.float64))
        counts = [int((torch.isfinite(y_all) & m).sum()) for m in masks]
        if min(counts) == 0:
            print(f"{target}: skipped, finite labels in train/val/test of {ds.folder}: {counts}")
            continue
        results = {}
        for name, X in feats.items():
            y = y_all.to(X.device)
            knn_columns = X.shape[1] - 2 if e["probe_incidence"] and name != "physics" else None
            res = probes.regression_probes(*[(X[m], y[m]) for m in masks], e["knn_k"], e["knn_temperature"],
                                           standardise_knn=name == "physics", knn_columns=knn_columns,
                                           refit=e["refit"])
            results[name] = res
            print(f"{target:<15s} {name:<14s} linear RMSE {res['linear']['rmse']:.3f} "
                  f"(λ={res['linear']['lam']:.0e})  kNN RMSE {res['knn']['rmse']:.3f}  n_test={res['linear']['n']}")
        y_test = y_all[masks[2]]
        idx = _bootstrap(counts[2], e)
        for row, members in model_groups(feats).items():
            report["results"][row][target] = {p: _regression_entry([results[m][p] for m in members], y_test, idx)
                                              for p in ("linear", "knn")}
            if row in ("pretrained", "physics"):
                scatter.setdefault(target, {})[row] = (y_test, results[row]["linear"]["pred"].cpu())
    if "wind_dir" in ds.meta:
        _wind_direction(report, feats, ds, rows, masks, e)


def _wind_direction(report, feats, ds, rows, masks, e):
    """Wind direction relative to the look (circular; probes.direction_probes), where the meta has it."""
    t_all = torch.from_numpy(ds.meta["wind_dir"][rows].astype(np.float64))
    n_test = int((torch.isfinite(t_all) & masks[2]).sum())
    if min(int((torch.isfinite(t_all) & m).sum()) for m in masks) == 0:
        return print(f"wind_dir: skipped, no finite labels in some split of {ds.folder}")
    results, keys, idx = {}, ("mae_deg", "mae_axis_deg"), _bootstrap(n_test, e)
    for name, X in feats.items():
        t = t_all.to(X.device)
        results[name] = res = probes.direction_probes(*[(X[m], t[m]) for m in masks], e["knn_k"],
                                                      e["knn_temperature"], refit=e["refit"])
        print(f"{'wind_dir':<15s} {name:<14s} MAE linear {res['linear']['mae_deg']:.1f} deg (axis "
              f"{res['linear']['mae_axis_deg']:.1f})  kNN {res['knn']['mae_deg']:.1f} deg (axis "
              f"{res['knn']['mae_axis_deg']:.1f})  n_test={res['linear']['n']}")
    for row, members in model_groups(feats).items():
        entries = {p: [results[m][p] for m in members] for p in ("linear", "knn")}
        report["results"][row]["wind_dir"] = {p: _summary(en, None if idx is None else [
            {k: en_m["errors"][k][idx].mean(1) for k in keys} for en_m in en], keys) for p, en in entries.items()}


def _release_head(report, feats, ds, rows, masks, target, head):
    """Score a released linear head (OceanSAR-1-wind / -wave, classifier.1) on the pretrained features of the
    test split as they are: no fit. Adds results.pretrained.<target>.release = {rmse, bias, r2, n}."""
    W, b = head
    X = feats["pretrained"]
    if W.shape != (1, X.shape[1]):
        raise EvalError(f"eval.release_head: the head maps {W.shape[1]} features to {W.shape[0]} outputs; "
                        f"expected one output from the backbone's {X.shape[1]} features")
    y = torch.from_numpy(ds.meta[target][rows].astype(np.float64))[masks[2]]
    if not torch.isfinite(y).any():
        raise EvalError(f"eval.release_head={target}: no finite {target} label in the test split of {ds.folder}")
    pred = (X[masks[2].to(X.device)].double() @ W.double().T.to(X.device) + b.double().to(X.device))[:, 0]
    res = probes.regression_metrics(y, pred.cpu())
    report["results"]["pretrained"].setdefault(target, {})["release"] = res
    print(f"{target:<15s} {'pretrained':<12s} release head RMSE {res['rmse']:.3f}  bias {res['bias']:+.3f}  "
          f"n_test={res['n']}")


def check_inputs(cfg):
    """(checkpoint path, {task: dataset}, output folder); every input and the output folder are checked before
    any work (exit 2 naming the key). Without eval.checkpoint: <train.out>/checkpoint.pt, else backbone.pt."""
    e, run_out = cfg["eval"], cfg["train"]["out"]
    ckpt = e["checkpoint"] or os.path.join(run_out, "checkpoint.pt")
    if not e["checkpoint"] and not os.path.isfile(ckpt) and os.path.isfile(os.path.join(run_out, "backbone.pt")):
        ckpt = os.path.join(run_out, "backbone.pt")
    tasks = {key: e[key] for key in ("classification", "regression") if e[key]}
    if not tasks:
        raise EvalError("nothing to evaluate: eval.classification and eval.regression are both empty")
    if not e["checkpoint"] and not os.path.isfile(ckpt):
        raise config.ConfigError(f"config key 'eval.checkpoint': not set, and train.out {run_out} holds neither "
                                 f"checkpoint.pt nor backbone.pt")
    config.check_inputs(cfg, {"eval.checkpoint": "weights", **{f"eval.{key}": "dataset" for key in tasks}})
    out = config.check_writable(e["out"] or os.path.join(run_out, "eval"), "eval.out" if e["out"] else "train.out")
    return ckpt, tasks, out


def networks(backbone, spec, e, device):
    """{row name: backbone}: the pretrained one and, with eval.baselines, eval.random_seeds random
    initialisations of the same architecture ("random_init#<seed>")."""
    nets = {"pretrained": backbone.to(device)}
    if e["baselines"]:
        is_vit = isinstance(backbone, vit.VisionTransformer)
        options = ({"layerscale": backbone.layerscale, "registers": backbone.num_registers} if is_vit
                   else {"width": backbone.width, "stem": backbone.stem})
        for seed in range(e["seed"], e["seed"] + e["random_seeds"]):
            nets[f"random_init#{seed}"] = models.build_backbone(
                *spec, generator=torch.Generator().manual_seed(seed), **options).to(device)
    return nets


def dataset_features(path, nets, e, device):
    """(dataset, labelled rows in a split, [train, val, test] masks over them, {row: features}): one feature pass
    per dataset, shared by its tasks."""
    ds = shards.ShardDataset(path, verify=e["verify"])
    split, m = probes.dataset_splits(ds.meta, e["split_seed"]), ds.meta
    labelled = (m["class_idx"] >= 0) | np.isfinite(m["wind"]) | np.isfinite(m["hs"])
    rows = np.flatnonzero(labelled & np.isin(split, ("train", "val", "test")))
    masks = [torch.from_numpy(split[rows] == s) for s in ("train", "val", "test")]
    feats = probes.extract_features(ds, rows, nets, device, e["batch_size"], e["n_last_blocks"], e["avgpool"],
                                    physics=e["baselines"])
    return ds, rows, masks, feats


def run_evaluation(cfg):
    """Evaluate eval.checkpoint on the configured tasks and write the report (module docstring); returns it."""
    e, t0 = cfg["eval"], time.perf_counter()
    if e["device"] == "cuda" and not torch.cuda.is_available():
        raise EvalError("eval.device=cuda but no CUDA device is available")
    device = torch.device("cuda" if e["device"] != "cpu" and torch.cuda.is_available() else "cpu")
    ckpt, tasks, out = check_inputs(cfg)
    backbone, spec, loaded = weights.load_backbone(ckpt, cfg)
    head = weights.release_head(ckpt) if e["release_head"] else None
    if head is not None and not e["regression"]:
        raise EvalError(f"eval.release_head={e['release_head']} needs eval.regression (a dataset with that label)")
    nets = networks(backbone, spec, e, device)
    print(f"evaluating {ckpt}: {spec[0]} (patch {spec[1]}, built at {spec[2]} px) on {device}; {loaded}")
    report = {"checkpoint": ckpt, "arch": spec[0],
              "feature_dim": backbone.feature_dim(e["n_last_blocks"], e["avgpool"]),
              "results": {row: {} for row in model_groups([*nets, *(["physics"] if e["baselines"] else [])])}}
    cache, names, scatter = {}, None, {}
    for key, path in tasks.items():
        if path not in cache:
            cache[path] = dataset_features(path, nets, e, device)
        ds, rows, masks, feats = cache[path]
        if key == "classification":
            names = _classification(report, feats, ds, rows, masks, e)
        else:
            _regression(report, feats, ds, rows, masks, e, scatter)
            if head is not None:
                _release_head(report, feats, ds, rows, masks, e["release_head"], head)
    paths = eval_report.write_report(report, cfg, out, names, scatter)
    print(f"evaluated in {time.perf_counter() - t0:.1f} s; wrote\n  " + "\n  ".join(paths))
    return report


def run(argv):
    cfg = config.load(argv, stage="eval")
    config.show(cfg, ["model", "eval"])
    return run_evaluation(cfg)


if __name__ == "__main__":
    errors.main(run)
