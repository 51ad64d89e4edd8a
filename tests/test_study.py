"""study.py smoke test: two variants, one seed, a few iterations; the table and the plot come out."""
import json
import math
import os
import subprocess
import sys

import config
import study

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


def test_study_runs_two_variants_and_writes_table_and_plot(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(CFG.format(root=tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "study.py", str(path)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    table = (tmp_path / "study" / "results.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows == ["none", "dynamic", "baseline: random_init", "baseline: physics"]
    assert (tmp_path / "study" / "convergence.png").stat().st_size > 5000
    results = json.load(open(tmp_path / "study" / "results.json"))
    assert set(results["runs"]) == {"none", "dynamic"} and len(results["rare_classes"]) == 3
    # Both variants ran the same number of iterations (equal compute), and dynamic curated.
    logs = {v: [json.loads(line) for line in open(tmp_path / "study" / v / "seed0" / "log.jsonl")]
            for v in ("none", "dynamic")}
    last = {v: max(r["iteration"] for r in recs) for v, recs in logs.items()}
    assert last["none"] == last["dynamic"]
    assert any("curation" in r for r in logs["dynamic"]) and not any("curation" in r for r in logs["none"])
    assert all("knn" in r for r in logs["dynamic"] if r.get("event") == "epoch")


def test_rho_variants_keep_total_iterations_equal():
    cfg = config.load(["configs/study.yaml"])
    n, batch = cfg["data"]["num_samples"], cfg["train"]["batch_size_per_gpu"]

    def iterations(overrides):  # epochs x ceil(ceil(rho N) / batch), METHOD.md's epoch
        rho = overrides.get("prune.rho", cfg["prune"]["rho"])
        return overrides.get("train.epochs", cfg["train"]["epochs"]) * math.ceil(math.ceil(rho * n) / batch)

    base = iterations({})
    for name in study.VARIANTS:
        assert abs(iterations(study.variant_overrides(name, cfg)) - base) <= 0.1 * base, name
