"""Tests of evaluate.py: the report from a pretrain checkpoint or a backbone file, and its CLI errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from oceansar import config
from oceansar import model as models
from oceansar import physics
from oceansar import probes
from oceansar import weights
from helpers import ROOT, gaussian_classes, model_cfg, sinusoid, write_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 classes of 32 px imagettes told apart by their brightness (40 each, split 28/4/8), a wind set whose
    brightness follows the wind (no Hs, no split column), a vit_nano backbone.pt and a pretrain-like
    checkpoint.pt (config + a teacher different from the student) with the same teacher backbone."""
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    classes = np.repeat(np.arange(3), 40)
    speckle = 10 * np.log10(rng.gamma(4.0, 1 / 4.0, size=(120, 1, 32, 32)))
    split = np.tile(np.array(["train"] * 28 + ["val"] * 4 + ["test"] * 8), 3)
    names = np.array(["Pure Ocean Waves", "Sea Ice", "Rain Cells"])[classes]
    cls_dir = write_dataset(root / "cls", np.array([-22.0, -14.0, -6.0])[classes, None, None, None] + speckle,
                            class_idx=classes, class_name=names, split=split, incidence=np.full(120, 35.0))
    wind = rng.uniform(2, 20, 96)
    reg_dir = write_dataset(root / "reg", -25 + wind[:, None, None, None] + speckle[:96], wind=wind,
                            incidence=rng.uniform(30, 40, 96))
    cfg = model_cfg("vit_nano", 8, crops=32)
    teacher, student = (models.MultiCropWrapper(models.build_backbone("vit_nano", 8, 32, generator=g),
                                                models.DINOHead(96, 16, hidden_dim=16, bottleneck_dim=8))
                        for g in (torch.Generator().manual_seed(3), None))
    torch.save({"student": student.state_dict(), "teacher": teacher.state_dict(), "iteration": 5,
                "config": config.as_json(cfg)}, root / "checkpoint.pt")
    torch.save(teacher.backbone.state_dict(), root / "backbone.pt")
    yaml_path = root / "eval.yaml"                       # model.* left at its defaults (vit_small/16)
    yaml_path.write_text(f"eval:\n  classification: {cls_dir}\n  regression: {reg_dir}\n  batch_size: 50\n")
    return {"root": root, "cls": cls_dir, "reg": reg_dir, "yaml": str(yaml_path), "teacher": teacher.backbone}


def test_a_pretrain_checkpoint_gives_its_teacher_backbone_in_the_saved_architecture(tiny):
    backbone, spec, _ = weights.load_backbone(str(tiny["root"] / "checkpoint.pt"), config.defaults())
    assert spec == ("vit_nano", 8, 32)
    for key, value in tiny["teacher"].state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value), key


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}         # tiny problems: one thread each on a shared machine
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def test_cli_report_from_a_pretrain_checkpoint(tiny):
    out = tiny["root"] / "report_ckpt"
    proc = run_cli(tiny["yaml"], f"checkpoint={tiny['root'] / 'checkpoint.pt'}", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"checkpoint", "arch", "feature_dim", "results"}
    assert report["arch"] == "vit_nano" and report["feature_dim"] == 96      # from the checkpoint's config
    assert list(report["results"]) == ["pretrained", "random_init", "physics"]
    for name, result in report["results"].items():
        assert set(result) == {"classification", "wind"}                     # no Hs label: skipped
        for probe in ("linear", "knn"):
            c = result["classification"][probe]
            seeds = {"seeds"} if name == "random_init" else set()           # 3 random inits, averaged
            assert set(c) == {"accuracy", "balanced_accuracy", "macro_f1", "n", "ci", "confusion", "per_class"} | seeds
            for key in ("accuracy", "balanced_accuracy", "macro_f1"):
                assert c["ci"][key][0] <= c[key] <= c["ci"][key][1]
                assert not seeds or c[key] == pytest.approx(np.mean(c["seeds"][key]))
            assert c["n"] == 24 and np.array(c["confusion"]).sum() == 24 * (3 if seeds else 1)
            assert set(c["per_class"]) == {"Pure Ocean Waves", "Sea Ice", "Rain Cells"}
            assert np.mean(list(c["per_class"].values())) == pytest.approx(c["balanced_accuracy"])
            assert set(result["wind"][probe]) == {"rmse", "bias", "r2", "n", "ci"} | seeds
    physics = report["results"]["physics"]
    assert physics["classification"]["linear"]["accuracy"] == 1.0             # brightness separates the classes
    assert physics["wind"]["linear"]["r2"] > 0.9                               # and predicts the wind
    assert "hs: skipped" in proc.stdout
    rows = (out / "report.md").read_text().splitlines()
    assert [r.split("|")[1].strip() for r in rows if r.startswith("| ") and "model" not in r] == \
        ["pretrained", "random_init", "physics"]
    for png in ("confusion.png", "scatter_wind.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert not (out / "scatter_hs.png").exists()
    assert config.load([str(out / "config.yaml")])["eval"]["out"] == str(out)


def test_cli_report_from_a_backbone_file_with_more_features_and_no_baselines(tiny):
    out = tiny["root"] / "report_backbone"
    proc = run_cli(tiny["yaml"], f"checkpoint={tiny['root'] / 'backbone.pt'}", f"out={out}", "model.arch=vit_nano",
                   "model.patch_size=8", "eval.n_last_blocks=2", "eval.avgpool=true", "eval.baselines=false")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["feature_dim"] == 3 * 96 and list(report["results"]) == ["pretrained"]
    assert str(out / "report.md") in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["checkpoint=/nonexistent/ckpt.pt"], "config key 'eval.checkpoint': /nonexistent/ckpt.pt does not exist"),
    (["eval.regression=/nonexistent/set"], "config key 'eval.regression': /nonexistent/set does not exist"),
])
def test_cli_missing_input_is_one_line_and_exit_2(tiny, args, message):
    proc = run_cli(tiny["yaml"], f"checkpoint={tiny['root'] / 'checkpoint.pt'}", *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(9)
    X, y = gaussian_classes(600, 16, 4, 1.0, g)
    cpu = probes.fit_logistic(X[:400], y[:400], X[400:500], y[400:500], 4, grid=[1e-2, 1e-3])
    gpu = probes.fit_logistic(X[:400].cuda(), y[:400].cuda(), X[400:500].cuda(), y[400:500].cuda(), 4,
                                grid=[1e-2, 1e-3])
    assert gpu.lam == cpu.lam
    assert torch.allclose(gpu.predict_proba(X[500:].cuda()).cpu(), cpu.predict_proba(X[500:]), atol=1e-3)
    probs = probes.knn_classify(X[:400].cuda(), y[:400].cuda(), X[500:].cuda(), 4, 20, 0.07)
    assert torch.allclose(probs.cpu(), probes.knn_classify(X[:400], y[:400], X[500:], 4, 20, 0.07), atol=1e-5)
    images = torch.stack([sinusoid(64, 50.0, 400.0, 0.0), sinusoid(64, 50.0, 250.0, 30.0)])[:, None]
    assert torch.allclose(physics.physics_features(images.cuda(), 50.0, 30.0).cpu(),
                          physics.physics_features(images, 50.0, 30.0), rtol=1e-4, atol=1e-4)
