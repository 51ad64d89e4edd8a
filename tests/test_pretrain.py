"""Tests of pretrain.py: checkpoints, resume after kill -9, 2-process gloo DDP, the collapse warning, the
in-training kNN hook, a non-finite loss and the train-step benchmark. CPU only, tiny sizes."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import pretrain
from oceansar import checkpoint
from oceansar import config
from oceansar import dino
from oceansar import errors
from oceansar import model as models
from oceansar import probes
from helpers import kill_at_first_checkpoint, read_log, run_pretrain, state_hash, two_rank_run, write_config


def test_resume_after_kill_is_bitwise_exact_and_checkpoint_round_trips(tmp_path, data_dir):
    full_out, cut_out = tmp_path / "full", tmp_path / "cut"
    # 3 iterations per epoch; the interrupted run checkpoints every 2 iterations (mid-epoch) and at epoch ends.
    full_cfg = write_config(tmp_path, data_dir, full_out)
    cut_cfg = write_config(tmp_path, data_dir, cut_out, train__checkpoint_iters=2)
    done = run_pretrain(full_cfg)
    assert done.returncode == 0, done.stderr[-2000:]

    ckpt = kill_at_first_checkpoint(cut_cfg, cut_out)
    killed_at = torch.load(ckpt, weights_only=True)["iteration"]
    assert 0 < killed_at < 9
    resumed = run_pretrain(cut_cfg)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout

    a = torch.load(full_out / "checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["iteration"] == b["iteration"] == 9 and a["epoch"] == 2
    for key in ("student", "teacher", "dino_loss"):
        assert state_hash(a[key]) == state_hash(b[key]), f"{key} differs after resume"
    assert state_hash(torch.load(full_out / "backbone.pt")) == state_hash(torch.load(cut_out / "backbone.pt"))

    # Checkpoint contents: full state as plain data, snapshot at epoch 2, logs with the promised fields.
    assert set(a) >= {"optimizer", "rng", "config", "indices", "pruner", "iters_per_epoch", "global_batch"}
    assert a["config"]["model"]["arch"] == "vit_nano" and len(a["indices"]) == 24 and a["pruner"] == {}
    assert os.path.exists(full_out / "checkpoint_e0002.pt") and os.path.exists(full_out / "config.yaml")
    records = read_log(full_out)
    iters = [r for r in records if "event" not in r]
    assert len(iters) == 9 and {"loss", "loss_norm", "teacher_entropy", "batch_entropy", "kl_teacher_student",
                                "feature_std", "prototypes_in_use", "lr", "wd", "momentum", "teacher_temp",
                                "student_temp", "images_per_s", "mfu"} <= set(iters[0])
    epochs = [r for r in records if r.get("event") == "epoch"]
    assert len(epochs) == 3 and not any("warning" in r for r in epochs)
    assert all(0 < r["mfu"] < 1 and np.isfinite(r["loss"]) for r in iters)

    # Round trip: the teacher loads strictly into a freshly built model, backbone.pt into a plain backbone.
    cfg = config.load([full_cfg])
    student, teacher = dino.build_student_teacher(cfg, torch.device("cpu"))
    checkpoint.load_strict(teacher, a["teacher"], "teacher", "checkpoint.pt")
    assert state_hash({k: v for k, v in teacher.state_dict().items()}) == state_hash(a["teacher"])
    backbone = models.build_backbone("vit_nano", 8, 32)
    backbone.load_state_dict(torch.load(full_out / "backbone.pt", weights_only=True))
    cfg["model"]["out_dim"] = 64
    _, other = dino.build_student_teacher(cfg, torch.device("cpu"))
    with pytest.raises(checkpoint.CheckpointError, match="does not match the configured model"):
        checkpoint.load_strict(other, a["teacher"], "teacher", "checkpoint.pt")
    # Resuming with another global batch is refused with a clear message.
    bad = run_pretrain(full_cfg, "batch_size_per_gpu=4", "epochs=4")
    assert bad.returncode == 1 and "global batch" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_pretrain(full_cfg, f"data={tmp_path / 'nowhere'}")
    assert missing.returncode == 2 and "config key 'train.data'" in missing.stderr and "Traceback" not in missing.stderr


def test_two_process_gloo_ranks_keep_identical_teachers(tmp_path, data_dir):
    out = tmp_path / "ddp"
    cfg = write_config(tmp_path, data_dir, out, train__epochs=2, train__batch_size_per_gpu=4)
    ck = two_rank_run(cfg, out)
    assert ck["global_batch"] == 8 and ck["iteration"] == 6
    init = dino.build_student_teacher(config.load([cfg]), torch.device("cpu"))[1]
    assert state_hash(ck["teacher"]) != state_hash(init.state_dict())  # it trained


def test_collapse_warning_and_eval_hook(tmp_path, data_dir, one_thread, capsys, monkeypatch):
    calls = []

    class Monitor:  # the in-training kNN, recording what it is given
        def __init__(self, dataset_dir, k, temperature, split_seed, batch_size):
            calls.append((dataset_dir, k, temperature, split_seed))

        def __call__(self, backbone, device):
            calls.append((backbone.embed_dim, str(device), backbone.training))
            return {"top1": 0.5}

    monkeypatch.setattr(probes, "KnnMonitor", Monitor)
    # A huge student temperature makes the student uniform: the loss is ln(out_dim) whatever the teacher says.
    cfg = config.load([write_config(tmp_path, data_dir, tmp_path / "flat", train__epochs=1, train__student_temp=1000.0,
                                    train__eval_every=1, train__eval_data=data_dir)])
    cfg["eval"].update(knn_k=7, knn_temperature=0.1, split_seed=3)  # the monitor follows the eval.* keys
    trainer = pretrain.Trainer(cfg).fit()
    epoch = [r for r in read_log(cfg["train"]["out"]) if r.get("event") == "epoch"]
    assert epoch[0]["warning"] == "collapse" and abs(epoch[0]["loss_norm"] - 1) < 0.01
    assert "collapsed" in capsys.readouterr().err
    # the hook runs on the initial teacher (iteration 0: the curve's start) and after the epoch
    assert calls == [(data_dir, 7, 0.1, 3)] + [(96, "cpu", True)] * 2 and epoch[0]["knn"] == {"top1": 0.5}
    start = [r for r in read_log(cfg["train"]["out"]) if r.get("event") == "eval"]
    assert len(start) == 1 and start[0]["iteration"] == 0 and start[0]["knn"] == {"top1": 0.5}
    assert trainer.teacher.backbone.training


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, data_dir, one_thread, monkeypatch):
    cfg_path = write_config(tmp_path, data_dir, tmp_path / "nan", train__epochs=2)
    ipe = 3
    real_forward = dino.DINOLoss.forward
    calls = {"n": 0}

    def poisoned(self, student_out, teacher_out, teacher_temp):
        calls["n"] += 1
        loss, entropy = real_forward(self, student_out, teacher_out, teacher_temp)
        return (loss * float("nan") if calls["n"] > ipe + 1 else loss), entropy

    monkeypatch.setattr(dino.DINOLoss, "forward", poisoned)
    with pytest.raises(SystemExit) as exit_info:
        errors.main(pretrain.run, [cfg_path])
    assert exit_info.value.code == errors.EXIT_NON_FINITE
    out = tmp_path / "nan"
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["iteration"] == ipe and ck["epoch"] == 0  # the epoch-0 checkpoint, untouched
    assert all(torch.isfinite(v).all() for v in ck["student"].values())
    assert not os.path.exists(out / "backbone.pt") and not os.path.exists(out / "checkpoint.pt.tmp")


def test_train_benchmark_runs_the_demo_model_at_one_step():
    """benchmarks/bench_train.py builds its trainers from today's config (its "demo" is the SCHEMA defaults)."""
    cmd = [sys.executable, os.path.join("benchmarks", "bench_train.py"), "--models", "demo", "--batch", "16",
           "--steps", "1", "--warmup", "1", "--wait-policies", "PASSIVE"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "demo     batch  16: step" in done.stdout and "step images/s by wait policy: PASSIVE" in done.stdout
    assert "0.2M backbone parameters" in done.stdout  # ResNet-18 at width 8, not the vit_nano of old demos
