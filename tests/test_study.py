"""study.py: the smoke study (two variants, one seed, tiny) with its tables, plot, equal iterations, pairing,
resume without redoing and refusal of a changed config; the variant validation; the report's statistics."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

import study
from oceansar import config
from oceansar import dino
from oceansar import epochs
from oceansar import study_report
from helpers import ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CFG = """
data: {{source: synthetic, root: {root}/data, image_size: 32, pixel_spacing: 200.0, num_samples: 256,
        samples_per_shard: 128, eval_per_class: 20, regression_samples: 60, workers: 1, montage: false}}
model: {{arch: vit_nano, patch_size: 8, drop_path: 0.0, out_dim: 64, head_hidden_dim: 32, head_bottleneck_dim: 16}}
train: {{data: {root}/data/archive, out: {root}/run, epochs: 3, batch_size_per_gpu: 16, warmup_epochs: 1,
         warmup_teacher_temp_epochs: 1, global_crops_size: 32, local_crops_number: 2, local_crops_size: 16,
         device: cpu}}
prune: {{mode: dynamic, rho: 0.25, warmup_epochs: 1, every: 1, levels: [6, 2], iters: 3}}
eval: {{classification: {root}/data/tengeop, regression: {root}/data/regression}}
study: {{out: {root}/study, seeds: [0], variants: [none, dynamic], rare_classes: 3}}
"""


def run_study(path, *args):
    return subprocess.run([sys.executable, "study.py", str(path), *args], capture_output=True, text=True, env=ENV,
                          timeout=600, cwd=ROOT)


def read_log(path):
    return [json.loads(line) for line in open(path)]


def stamps(out):
    """mtime of every run's run.json and log.jsonl: unchanged means not redone."""
    return {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in
            ("none/seed0/run.json", "none/seed0/log.jsonl", "dynamic/seed0/run.json", "dynamic/seed0/log.jsonl")}


def test_smoke_study_tables_plot_equal_compute_resume_and_hash(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(CFG.format(root=tmp_path))
    r = run_study(path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = tmp_path / "study"
    text = (out / "results.md").read_text()
    sections = text.split("## ")
    final = next(s for s in sections if s.startswith("Final metrics"))
    rows = [line.split("|")[1].strip() for line in final.splitlines() if line.startswith("| ")][1:]
    assert rows == ["none", "dynamic", "baseline: random_init", "baseline: physics"]
    assert "iterations to 90 %" in text and "Paired differences" in text and "curation share %" in text
    assert (out / "convergence.png").stat().st_size > 5000
    results = json.load(open(out / "results.json"))
    assert set(results["runs"]) == {"none", "dynamic"} and len(results["rare_classes"]) == 3
    logs = {v: read_log(out / v / "seed0" / "log.jsonl") for v in ("none", "dynamic")}
    # Equal compute: both ran the same iterations. Paired: the same seed gives the same initial weights and the
    # same warm-up subset, so the kNN at iteration 0 and after the warm-up epoch are identical.
    assert max(r["iteration"] for r in logs["none"]) == max(r["iteration"] for r in logs["dynamic"]) == 12
    knn = {v: {r["iteration"]: r["knn"]["knn_acc"] for r in recs if "knn" in r} for v, recs in logs.items()}
    assert sorted(knn["none"]) == sorted(knn["dynamic"]) == [0, 4, 8, 12]
    assert knn["none"][0] == knn["dynamic"][0] and knn["none"][4] == knn["dynamic"][4]
    assert any("curation" in r for r in logs["dynamic"]) and not any("curation" in r for r in logs["none"])
    done = {v: [r for r in recs if r.get("event") == "done"][-1] for v, recs in logs.items()}
    assert done["none"]["curation_share"] == 0 and done["dynamic"]["curation_share"] > 0

    before = stamps(out)  # a rerun redoes nothing and writes the same tables
    r = run_study(path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert stamps(out) == before and r.stdout.count("skipped") == 3
    record = json.load(open(out / "dynamic" / "seed0" / "run.json"))  # interrupted after pretraining
    json.dump({**record, "status": "running"}, open(out / "dynamic" / "seed0" / "run.json", "w"))
    r = run_study(path)
    assert r.returncode == 0, r.stderr[-2000:]
    after = stamps(out)
    assert all(after[p] == before[p] for p in before if p.startswith("none/"))
    assert json.load(open(out / "dynamic" / "seed0" / "run.json"))["status"] == "done"
    assert max(r["iteration"] for r in read_log(out / "dynamic" / "seed0" / "log.jsonl")) == 12  # not retrained

    r = run_study(path, "train.lr=0.002")  # other config, same folders: refused before any work
    assert r.returncode == 2 and "different config or code" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and stamps(out) == after


@pytest.fixture()
def cfg(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(CFG.format(root=tmp_path))
    return str(path)


@pytest.mark.parametrize("override, key", [
    ("study.variants=[none,bogus]", "'study.variants'"),
    ("study.variants={x: {train.epochs: 9}}", "'study.variants.x'"),
    ("study.variants={x: {model.arch: vit_tiny}}", "'study.variants.x'"),
    ("study.variants={x: {prune.rho: fast}}", "'prune.rho'"),
    ("study.variants={x: {prune.pool_fraction: 0.1}}", "'prune.pool_fraction'"),
    ("study.variants=[]", "'study.variants'"),
    ("study.seeds=[]", "'study.seeds'"),
    ("study.seeds=[1,1]", "'study.seeds'"),
    ("study.base=nowhere.yaml", "'study.base'"),
])
def test_bad_study_config_is_a_config_error_naming_the_key(cfg, override, key):
    with pytest.raises(config.ConfigError, match=key):
        study.load_study([cfg, override])


def test_bad_variant_from_the_command_line_is_one_line_exit_2(cfg):
    r = run_study(cfg, "study.variants={x: {train.batch_size_per_gpu: 8}}")
    assert r.returncode == 2 and "compute budget" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_variant_mapping_and_base_config(cfg, tmp_path):
    _, variants = study.load_study([cfg, "study.variants={none: null, wide: {prune.pool_fraction: 1.0}}"])
    assert variants == {"none": {"prune.mode": "none"}, "wide": {"prune.pool_fraction": 1.0}}
    child = tmp_path / "child.yaml"
    child.write_text(f"study: {{base: {cfg}, seeds: [4]}}\ntrain: {{epochs: 5}}\n")
    resolved, _ = study.load_study([str(child), "train.lr=0.003"])
    assert resolved["train"]["epochs"] == 5 and resolved["train"]["lr"] == 0.003  # own sections, then the CLI
    assert resolved["model"]["out_dim"] == 64 and resolved["study"]["seeds"] == [4]  # the rest from the base


def test_every_variant_runs_exactly_the_base_iterations():
    cfg, variants = study.load_study(["configs/study.yaml", "study.variants=[" + ",".join(study.VARIANTS) + "]"])
    n, batch = cfg["data"]["num_samples"], cfg["train"]["batch_size_per_gpu"]

    def iterations(over):  # min(epochs x ceil(ceil(rho N) / batch), max_iters): what pretrain.py runs
        v = config.apply(cfg, over, "test")
        total = v["train"]["epochs"] * epochs.iters_per_epoch(v["prune"]["rho"], n, batch)
        return min(total, v["train"]["max_iters"] or total)

    base = iterations({})
    assert {name: iterations(over) for name, over in variants.items()} == {name: base for name in variants}


def test_the_same_seed_gives_every_variant_the_same_initial_weights(cfg):
    resolved, variants = study.load_study([cfg])
    nets = [dino.build_student_teacher(config.apply(resolved, {**over, "train.seed": 3}, "t"), "cpu")[1]
            for over in variants.values()]
    other = dino.build_student_teacher(config.apply(resolved, {"train.seed": 4}, "t"), "cpu")[1]
    a, b, c = (n.state_dict() for n in (*nets, other))
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


def test_iterations_to_target_interpolates_and_says_not_reached():
    its, acc = np.array([0, 10, 20, 30.0]), np.array([0.2, 0.3, 0.5, 0.6])
    assert study_report.iterations_to(its, acc, 0.4) == pytest.approx(15.0)
    assert study_report.iterations_to(its, acc, 0.1) == 0.0
    assert math.isnan(study_report.iterations_to(its, acc, 0.7))
    assert study_report.cell([float("nan")] * 3, missing="not reached") == "not reached"
    assert study_report.cell([10.0, float("nan")], digits=0) == "10 (1/2)"


def test_t_interval_matches_scipy():
    v = [1.0, 2.0, 4.0]
    mean, half, n = study_report.t_interval(v)
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(v), scale=stats.sem(v))
    assert (mean, n) == (pytest.approx(7 / 3), 3) and half == pytest.approx((hi - lo) / 2)
    assert math.isnan(study_report.t_interval([5.0])[1])


def test_pool_fraction_rule():
    p = {"pool_size": None, "pool_fraction": 0.5, "rho": 0.25}
    assert epochs.pool_size(p, 1000) == 500 and epochs.pool_size({**p, "pool_fraction": 1.0}, 1000) == 1000
    assert epochs.pool_size({**p, "pool_size": 100}, 1000) == 250  # never below the kept ceil(rho N)
    assert epochs.pool_size({**p, "pool_size": 700}, 1000) == 700
    with pytest.raises(config.ConfigError, match="'prune.pool_fraction'"):
        config.load(["configs/demo.yaml", "prune.pool_fraction=0.2"])
    config.load(["configs/demo.yaml", "prune.pool_fraction=0.2", "prune.mode=none"])  # no curation, no pool
