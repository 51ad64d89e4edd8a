"""The study: does dynamic pruning converge faster than uniform subsets, at equal compute? Pretrains and evaluates
every variant x seed, then reports convergence (iterations to a kNN target) and final metrics with intervals.

Reads   a study config (configs/study.yaml). `study.base` names a config whose sections are the base (the
        study file's own sections override it, then the command line); the resolved result is written to
        <study.out>/config.yaml and is the file every stage reads.
Writes  <study.out>/<variant>/seed<S>/      one pretraining run (log.jsonl with the validation kNN at iteration 0
                                            and after every epoch, checkpoint.pt, backbone.pt), run.json (its
                                            config hash, status, wall times) and eval/ (report.json, report.md)
        <study.out>/baselines/              random-init and physics baselines, evaluated once
        <study.out>/results.md, results.json, convergence.png

Commands:
    python study.py configs/study.yaml                                        # none / static / dynamic x 3 seeds
    python study.py configs/study.yaml study.variants=[none,dynamic] study.seeds=[0]   # a quick look
    python study.py configs/study.yaml "study.variants=[none,dynamic,rho0.1,rho0.5,eta-1,eta1]"   # the sweeps
    python study.py configs/study.yaml "study.variants={none: null, p1: {prune.pool_fraction: 1.0}}"  # your own
    python study.py configs/study.yaml study.scale=gpu                        # larger archive and ViT-S/16, one GPU
Each stage runs as the subprocess a user would type (no torchrun needed).

Variants (study.variants: names, or name -> {prune.key: value}; a variant may set only prune.* keys (and
train.objective: "study.variants={dynamic: null, dynamic_v2: {prune.mode: dynamic, train.objective: dinov2}}"), so every
variant runs the same iterations of the same batch on the same model; the curation it adds is timed, not hidden):
    none      a fresh uniform random subset of rho*N images every epoch (the reference)
    static    clustered once after the warm-up, that subset kept to the end
    dynamic   re-clustered every prune.every epochs after the warm-up (the paper's method)
    rho0.1, rho0.5   dynamic with another kept fraction: train.epochs (and the warm-ups, prune.every,
              freeze_last_layer) are rescaled to ceil(base iterations / iterations per epoch) and train.max_iters
              stops the run at exactly the base's iterations (its schedules then end < 1 epoch early)
    eta-1, eta1      dynamic with within-cluster sampling favouring prototypes (-1) or atypical points (+1)
The same seed gives every variant the same initial weights and the same warm-up subsets, so differences to
`none` are paired by seed.

Resume: a run is identified by a hash of its stage configs, the code (the stage scripts and oceansar/, the
study's own two files aside) and the prepared data's manifests, stored in run.json. Rerunning skips finished runs
with the same hash, resumes unfinished ones (pretrain.py resumes from its checkpoint) and refuses, before running
anything, when a run folder holds a run made with other code or config (delete that folder to redo it, or use
another study.out).

results.md: per variant, iterations and images seen to reach 90 % and 95 % of `none`'s final validation kNN
accuracy (linear interpolation between evaluations; "not reached" when a seed never gets there), final test
metrics (linear accuracy, balanced accuracy, kNN accuracy, mean recall of the rarest classes, wind and Hs RMSE),
each as mean ± 95 % t-interval over seeds, the paired difference to `none` with its interval, and the wall time of
training with the curation cost (embedding + k-means + sampling) as a share of it.
"""

import os

# Before torch loads OpenMP: threads that spin while idle slow a small shared CPU several-fold. A wait
# policy the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import glob
import hashlib
import json
import math
import subprocess
import sys
import time

import yaml

from oceansar import atomic
from oceansar import config
from oceansar import errors
from oceansar import shards
from oceansar import study_report
from oceansar.epochs import iters_per_epoch

VARIANTS = {
    "none": {"prune.mode": "none"},
    "static": {"prune.mode": "static"},
    "dynamic": {"prune.mode": "dynamic"},
    "rho0.1": {"prune.mode": "dynamic", "prune.rho": 0.1},
    "rho0.5": {"prune.mode": "dynamic", "prune.rho": 0.5, "prune.pool_fraction": 1.0},  # the pool must exceed rho
    "eta-1": {"prune.mode": "dynamic", "prune.eta": -1.0},
    "eta1": {"prune.mode": "dynamic", "prune.eta": 1.0},
}
# Keys outside prune.* a variant may set: the objective (OceanSAR-1 dino vs OceanSAR-2 dinov2) keeps the iterations,
# batch and backbone; dinov2's extra cost per step (masked patch tokens through the head) is in its images/s.
COMPARABLE_KEYS = ("train.objective",)
# Epoch-counted settings rescaled with the epoch count when a variant changes prune.rho.
EPOCH_KEYS = ("train.warmup_epochs", "train.warmup_teacher_temp_epochs", "prune.warmup_epochs", "prune.every",
              "train.freeze_last_layer")

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


class StudyError(errors.UserError):
    """A study folder that cannot be resumed safely (one line, exit code 2)."""
    code = errors.EXIT_CONFIG


def as_args(overrides):
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


# ---------------------------------------------------------------------------------------------- config
def load_study(argv):
    """(resolved cfg, {variant: overrides}); raises config.ConfigError naming the key."""
    cfg = config.load(argv, stage="study")
    base, layers = cfg["study"]["base"], [argv[0]]
    if base:
        if not os.path.isfile(base):
            raise config.ConfigError(f"config key 'study.base': config file '{base}' does not exist")
        with open(argv[0]) as f:
            own = yaml.safe_load(f) or {}
        layers = [base] + as_args({f"{s}.{k}": v for s, keys in own.items() for k, v in (keys or {}).items()})
    cfg = config.load(layers + as_args(SCALES[cfg["study"]["scale"]]) + argv[1:], stage="study")
    seeds = cfg["study"]["seeds"]
    if not seeds or len(set(seeds)) != len(seeds):
        raise config.ConfigError(f"config key 'study.seeds': got {seeds}, expected a non-empty list of distinct seeds")
    names = cfg["study"]["variants"]
    names = {n: {} for n in names} if isinstance(names, list) else names  # the default is a list
    if not names:
        raise config.ConfigError("config key 'study.variants': empty; name at least one variant")
    return cfg, {name: variant_overrides(name, given, cfg) for name, given in names.items()}


def archive_size(cfg):
    if cfg["data"]["source"] == "synthetic":
        return cfg["data"]["num_samples"]
    if os.path.isfile(os.path.join(cfg["train"]["data"], "manifest.json")):
        return len(shards.ShardDataset(cfg["train"]["data"]))
    raise config.ConfigError("config key 'study.variants': a prune.rho variant needs the archive size: "
                             "data.source=synthetic or a prepared train.data")


def variant_overrides(name, given, cfg):
    """The variant's overrides, with the epoch counts rescaled so it runs exactly the base's iterations."""
    key = f"study.variants.{name}"
    if not given:
        if name not in VARIANTS:
            raise config.ConfigError(f"config key 'study.variants': unknown variant '{name}'; known: "
                                     f"{', '.join(VARIANTS)} (or define it as {name}: {{prune.key: value}})")
        given = VARIANTS[name]
    for k in given:
        if not k.startswith("prune.") and k not in COMPARABLE_KEYS:
            raise config.ConfigError(f"config key '{key}': '{k}' would change the compute budget; a variant may "
                                     f"only set prune.* keys and {', '.join(COMPARABLE_KEYS)} (the epochs follow "
                                     f"prune.rho)")
    trial = config.apply(cfg, given, f"config key '{key}'")
    over = dict(given)
    rho, base_rho = trial["prune"]["rho"], cfg["prune"]["rho"]
    if rho != base_rho:
        n, batch = archive_size(cfg), cfg["train"]["batch_size_per_gpu"]
        ipe = lambda r: iters_per_epoch(r, n, batch)  # noqa: E731
        total = cfg["train"]["epochs"] * ipe(base_rho)
        epochs = math.ceil(total / ipe(rho))
        factor = epochs / cfg["train"]["epochs"]
        over["train.epochs"] = epochs
        over["train.max_iters"] = total  # the schedules span whole epochs; the run stops at the base's iterations
        for k in EPOCH_KEYS:
            section, sub = k.split(".")
            over[k] = max(1 if k == "prune.every" else 0, int(round(trial[section][sub] * factor)))
    return over


# ---------------------------------------------------------------------------------------------- runs
def code_hash():
    """The code every run depends on: the stage scripts and the oceansar package, but the study's own files
    (which only orchestrate and report)."""
    h = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for path in sorted(glob.glob(os.path.join(here, "*.py")) + glob.glob(os.path.join(here, "oceansar", "*.py"))):
        name = os.path.relpath(path, here)
        if name not in ("study.py", os.path.join("oceansar", "study_report.py")):
            h.update(name.encode() + open(path, "rb").read())
    return h.hexdigest()


def run_hash(resolved, overrides, code, ignore=()):
    """Hash of what a run's stages see: their resolved configs (study.* and `ignore` aside), code and data."""
    cfg = config.apply(config.load([resolved]), overrides, "run")
    cfg.pop("study")
    for dotted in ignore:
        section, key = dotted.split(".")
        cfg[section].pop(key)
    manifests = []
    for folder in (cfg["train"]["data"], cfg["eval"]["classification"], cfg["eval"]["regression"]):
        path = os.path.join(folder or "", "manifest.json")
        manifests.append(open(path).read() if folder and os.path.isfile(path) else "")
    return hashlib.sha256(json.dumps([cfg, code, manifests], sort_keys=True).encode()).hexdigest()


def run_status(folder, digest):
    """'new', 'running' or 'done'; raises StudyError when the folder holds a run made with other config/code."""
    path = os.path.join(folder, "run.json")
    if not os.path.exists(path):
        if os.path.isdir(folder) and os.listdir(folder):
            raise StudyError(f"{folder} holds a run without run.json (an older study.py)")
        return "new"
    record = json.load(open(path))
    if record.get("hash") != digest:
        raise StudyError(f"{folder} was made with a different config or code (hash {record.get('hash', '')[:10]}, "
                         f"now {digest[:10]})")
    return record["status"]


def run_stage(script, cfg_path, args, log_path):
    """One stage as a subprocess (the command a user would type); its output goes to a log file."""
    cmd = [sys.executable, script, cfg_path, *args]
    t = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise errors.UserError(f"{' '.join(cmd)} failed with exit code {r.returncode}; see {log_path}")
    return time.perf_counter() - t


def plan_runs(cfg, resolved, variants):
    """[(folder, stages, hash)] for every variant x seed, then the baselines; stages = [(script, overrides)]."""
    out, code, runs = cfg["study"]["out"], code_hash(), []
    for name, over in variants.items():
        for seed in cfg["study"]["seeds"]:
            folder = os.path.join(out, name, f"seed{seed}")
            train = {**over, "train.out": folder, "train.seed": seed, "train.eval_every": 1,
                     "train.eval_data": cfg["eval"]["classification"]}
            evaluate = {"eval.checkpoint": os.path.join(folder, "checkpoint.pt"),
                        "eval.out": os.path.join(folder, "eval"), "eval.baselines": False}
            digest = run_hash(resolved, {**train, **evaluate}, code)
            runs.append((folder, [("pretrain.py", train), ("evaluate.py", evaluate)], digest))
    # The baselines evaluate random-init and physics features; the checkpoint only gives the architecture.
    first = os.path.join(runs[0][0], "checkpoint.pt")
    base = {"eval.checkpoint": first, "eval.out": os.path.join(out, "baselines", "eval"), "eval.baselines": True}
    runs.append((os.path.join(out, "baselines"), [("evaluate.py", base)],
                 run_hash(resolved, base, code, ignore=("eval.checkpoint",))))
    return runs


def execute(runs, resolved):
    """Check every run folder first (refuse before any work), then run what is not done."""
    status, bad = {}, []
    for folder, _, digest in runs:
        try:
            status[folder] = run_status(folder, digest)
        except StudyError as e:
            bad.append(str(e))
    if bad:
        raise StudyError(f"{len(bad)} run folder(s) cannot be resumed: {bad[0]}{'; ...' if len(bad) > 1 else ''}; "
                         f"delete them to redo them, or set study.out to a new folder")
    for folder, stages, digest in runs:
        if status[folder] == "done":
            print(f"  {folder}: done (same hash), skipped")
            continue
        os.makedirs(folder, exist_ok=True)
        record = {"hash": digest, "status": "running"}
        atomic.write_json(record, os.path.join(folder, "run.json"))
        for script, over in stages:
            record[script.replace(".py", "_s")] = run_stage(script, resolved, as_args(over),
                                                           os.path.join(folder, script.replace(".py", ".out")))
        atomic.write_json({**record, "status": "done"}, os.path.join(folder, "run.json"))
        print(f"  {folder}: " + ", ".join(f"{k} {v:.0f} s" for k, v in record.items() if k.endswith("_s")))


def run(argv):
    cfg, variants = load_study(argv)
    s = cfg["study"]
    resolved = config.save(cfg, s["out"])  # what every stage reads
    print(f"study: {', '.join(variants)} x seeds {s['seeds']}, scale {s['scale']}, in {s['out']}")
    start = time.perf_counter()
    if not os.path.exists(os.path.join(cfg["train"]["data"], "manifest.json")):
        run_stage("prepare.py", resolved, [], os.path.join(s["out"], "prepare.out"))
    execute(plan_runs(cfg, resolved, variants), resolved)
    text = study_report.write(cfg, list(variants), (time.perf_counter() - start) / 60)
    print(text)
    print(f"results: {os.path.join(s['out'], 'results.md')}\nconvergence: {os.path.join(s['out'], 'convergence.png')}")


if __name__ == "__main__":
    errors.main(run)
