"""Tests of pretrain.py: DINO loss, schedules, EMA, clipping, augmentation, data order, checkpoints, resume after
kill -9, 2-process gloo DDP, collapse warning and non-finite loss. CPU only, tiny sizes."""

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from oceansar import augment
from oceansar import config
from oceansar import model as models
import pretrain
from oceansar import shards

# Subprocesses get one thread each: deterministic, and no OpenMP oversubscription on a small shared machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def make_dataset(folder, n=48, size=64, seed=0, per_shard=20):
    """A tiny shard dataset of random dB images (-15 dB +- 3), several shards."""
    rng = np.random.default_rng(seed)
    writer = shards.ShardWriter(str(folder), size, 100.0, per_shard)
    for k, start in enumerate(range(0, n, per_shard)):
        m = min(per_shard, n - start)
        writer.write(k, -15 + 3 * rng.standard_normal((m, size, size)), shards.standard_meta(m))
    writer.finalize(math.ceil(n / per_shard))
    return str(folder)


def write_config(tmp_path, data, out, **overrides):
    """Tiny ViT, 32 px globals, 2 local crops of 16 px; 3 epochs of 3 iterations at batch 8."""
    cfg = {"model": {"arch": "vit_nano", "patch_size": 8, "drop_path": 0.1, "out_dim": 128,
                     "head_hidden_dim": 32, "head_bottleneck_dim": 16},
           "train": {"data": data, "out": str(out), "epochs": 3, "batch_size_per_gpu": 8, "warmup_epochs": 1,
                     "warmup_teacher_temp_epochs": 1, "global_crops_size": 32, "local_crops_number": 2,
                     "local_crops_size": 16, "log_every": 1, "checkpoint_every": 2, "device": "cpu"},
           "aug": {"rot90": True, "speckle_prob": 0.5},
           "prune": {"mode": "none", "rho": 0.5}}
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    path = tmp_path / f"{os.path.basename(str(out))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "archive")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def state_hash(state):
    h = hashlib.sha256()
    for name, value in sorted(state.items()):
        h.update(name.encode())
        h.update(value.contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- pure functions
def reference_dino_loss(student_out, teacher_out, center, n_crops, student_temp, teacher_temp):
    s = student_out.chunk(n_crops)
    q = F.softmax((teacher_out - center) / teacher_temp, dim=-1).chunk(2)
    total, terms = 0.0, 0
    for i in range(2):
        for v in range(n_crops):
            if v == i:
                continue
            total = total + torch.sum(-q[i] * F.log_softmax(s[v] / student_temp, dim=-1), dim=-1).mean()
            terms += 1
    return total / terms


def test_dino_loss_matches_reference_and_skips_same_view():
    g = torch.Generator().manual_seed(0)
    b, k, n_crops = 5, 17, 4
    student, teacher = torch.randn(n_crops * b, k, generator=g), torch.randn(2 * b, k, generator=g)
    loss_fn = pretrain.DINOLoss(k, n_crops, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(0.3 * torch.randn(1, k, generator=g))
    center = loss_fn.center.clone()
    loss, (entropy, batch_entropy) = loss_fn(student, teacher, teacher_temp=0.05)
    ref = reference_dino_loss(student, teacher, center, n_crops, 0.1, 0.05)
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)
    q = F.softmax((teacher - center) / 0.05, dim=-1)
    assert torch.allclose(entropy, -torch.special.xlogy(q, q).sum(-1).mean(), rtol=1e-5)
    q_bar = q.mean(0)
    assert torch.allclose(batch_entropy, -torch.special.xlogy(q_bar, q_bar).sum(), rtol=1e-5)
    assert torch.allclose(loss_fn.center, 0.9 * center + 0.1 * teacher.mean(0, keepdim=True), atol=1e-6)
    # Same-view pairs are skipped: with only 2 crops the loss is the mean of CE(q0, p1) and CE(q1, p0).
    two = pretrain.DINOLoss(k, 2, student_temp=0.1)
    s2 = torch.randn(2 * b, k, generator=g)
    loss2, _ = two(s2, teacher, teacher_temp=0.05)
    q0, q1 = F.softmax(teacher / 0.05, -1).chunk(2)
    p0, p1 = F.log_softmax(s2 / 0.1, -1).chunk(2)
    expected = 0.5 * ((-q0 * p1).sum(-1).mean() + (-q1 * p0).sum(-1).mean())
    assert torch.allclose(loss2, expected, rtol=1e-5)
    with_same = 0.25 * ((-q0 * p0).sum(-1).mean() + (-q1 * p1).sum(-1).mean()) + 0.5 * expected
    assert not torch.allclose(loss2, with_same, rtol=1e-3)


def test_schedules_lengths_and_end_values():
    t = config.defaults()["train"]
    t.update(epochs=7, warmup_epochs=2, warmup_teacher_temp_epochs=3, lr=5e-4, min_lr=1e-6)
    ipe, global_batch = 5, 512
    s = pretrain.build_schedules(t, ipe, global_batch)
    assert all(len(v) == 35 for v in s.values())
    peak = 5e-4 * global_batch / 256
    assert s["lr"][0] == 0.0 and s["lr"][10] == pytest.approx(peak) and s["lr"].max() == pytest.approx(peak)
    assert np.all(np.diff(s["lr"][:11]) > 0) and np.all(np.diff(s["lr"][10:]) <= 0)
    assert s["lr"][-1] == pytest.approx(1e-6)
    assert s["wd"][0] == pytest.approx(0.04) and s["wd"][-1] == pytest.approx(0.4)
    assert s["momentum"][0] == pytest.approx(0.996) and s["momentum"][-1] == pytest.approx(1.0)
    assert s["teacher_temp"][0] == pytest.approx(0.04) and s["teacher_temp"][14] == pytest.approx(0.07)
    assert np.all(s["teacher_temp"][15:] == 0.07)
    # iterations per epoch: ceil(ceil(rho * N) / global_batch), the same for every pruning mode
    assert pretrain.iters_per_epoch(0.25, 4096, 64) == 16 and pretrain.iters_per_epoch(0.1, 1000, 64) == 2
    assert pretrain.subset_size(0.1, 1000) == 100 and pretrain.subset_size(1e-4, 10) == 1


def test_ema_update_and_per_parameter_clipping():
    g = torch.Generator().manual_seed(1)
    teacher = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    student = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    expected = [0.9 * t + 0.1 * s for t, s in zip(teacher, student)]
    pretrain.ema_update(teacher, student, 0.9)
    assert all(torch.allclose(t, e) for t, e in zip(teacher, expected))

    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in (4, (2, 2), 3)]
    params[0].grad = torch.tensor([3.0, 4.0, 0.0, 0.0])        # norm 5 -> clipped to 1
    params[1].grad = torch.full((2, 2), 0.1)                    # norm 0.2 -> untouched
    norms = pretrain.clip_gradients(params, 1.0)
    assert torch.allclose(norms, torch.tensor([5.0, 0.2]))
    assert params[0].grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(params[1].grad, torch.full((2, 2), 0.1)) and params[2].grad is None


def test_param_groups_exclude_biases_and_norms():
    net = models.MultiCropWrapper(models.build_backbone("vit_nano", 8, 32), models.DINOHead(96, 16, 32, 16))
    decay, no_decay = pretrain.param_groups(net)
    assert decay["decay"] and all(p.ndim > 1 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in no_decay["params"])
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert sum(p.numel() for p in decay["params"] + no_decay["params"]) == trainable


def test_augmentation_is_seeded_batched_and_physical():
    cfg = config.defaults()
    cfg["train"].update(global_crops_size=32, local_crops_number=3, local_crops_size=16)
    cfg["aug"].update(rot90=True, speckle_prob=0.5, blur_prob=0.5)
    aug = augment.SARAugment(cfg, norm_std=3.0)
    x = torch.randn(6, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert [v.shape for v in a] == [(6, 1, 32, 32)] * 2 + [(6, 1, 16, 16)] * 3
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not torch.equal(a[0], c[0])
    assert all(torch.isfinite(v).all() for v in a)
    # Geometry alone (no photometric jitter): a constant image stays constant, a ramp keeps its range.
    cfg["aug"].update(gain_db=0.0, contrast=0.0, blur_prob=0.0, speckle_prob=0.0)
    geo = augment.SARAugment(cfg, norm_std=3.0)
    flat = geo(torch.full((4, 1, 64, 64), 2.5), torch.Generator().manual_seed(1))
    assert all(torch.allclose(v, torch.full_like(v, 2.5)) for v in flat)
    ramp = torch.linspace(-1, 1, 64).view(1, 1, 1, 64).expand(4, 1, 64, 64).contiguous()
    crops = geo(ramp, torch.Generator().manual_seed(2))
    assert all(v.min() >= -1 - 1e-5 and v.max() <= 1 + 1e-5 for v in crops)
    # Gain jitter: per-crop additive offsets with std gain_db / norm_std.
    cfg["aug"].update(gain_db=3.0)
    shifted = augment.SARAugment(cfg, norm_std=3.0)(torch.zeros(400, 1, 64, 64), torch.Generator().manual_seed(3))
    offsets = torch.cat([v.mean(dim=(1, 2, 3)) for v in shifted])
    assert offsets.std().item() == pytest.approx(1.0, rel=0.1)


def test_gaussian_blur_per_sample_sigma_and_gamma_sampler():
    x = torch.zeros(3, 1, 33, 33)
    x[:, :, 16, 16] = 1.0
    sigma = torch.tensor([0.0, 1.0, 2.0])
    y = augment.gaussian_blur(x, sigma, radius=8)
    assert torch.allclose(y.sum(dim=(1, 2, 3)), torch.ones(3), atol=1e-5)
    assert torch.equal(y[0], x[0])  # sigma 0 is the identity
    d2 = ((torch.arange(33) - 16.0) ** 2).view(1, 1, 1, 33)
    variance = (y * d2).sum(dim=(1, 2, 3))
    assert torch.allclose(variance[1:], sigma[1:] ** 2, rtol=0.02)
    g = augment.sample_gamma(200_000, 4.0, torch.Generator().manual_seed(0), "cpu")
    assert g.min() > 0 and g.mean().item() == pytest.approx(4.0, rel=0.01)
    assert g.var().item() == pytest.approx(4.0, rel=0.03)


def test_epoch_subsets_and_rank_batches(data_dir):
    cfg = config.defaults()
    cfg["prune"]["rho"] = 0.5
    ds = shards.ShardDataset(data_dir)
    a, state, curation = pretrain.epoch_indices(0, ds, cfg, {})  # a warm-up epoch: uniform random
    b, _, _ = pretrain.epoch_indices(0, ds, cfg, {})
    c, _, _ = pretrain.epoch_indices(1, ds, cfg, {})
    assert len(a) == 24 and len(np.unique(a)) == 24 and np.array_equal(a, b) and not np.array_equal(a, c)
    assert state == {} and curation is None and np.all(np.diff(a) > 0)
    # 2 ranks x batch 4 x 3 iterations = 24: each index exactly once over the ranks, same step count per rank.
    per_rank = [pretrain.rank_batches(a, 0, 0, 3, 4, r, 2) for r in range(2)]
    assert all(p.shape == (3, 4) for p in per_rank)
    assert np.array_equal(np.sort(np.concatenate([p.ravel() for p in per_rank])), a)
    # A subset shorter than an epoch is cycled.
    short = pretrain.rank_batches(a[:5], 0, 0, 2, 4, 0, 1)
    assert short.shape == (2, 4) and set(short.ravel()) == set(a[:5])
    # The background reader yields exactly those batches, from `start` on; a read error reaches the consumer.
    loader = pretrain.Prefetcher(ds, per_rank[0], 1, depth=2, pin=False)
    got = [loader.next() for _ in range(2)]
    loader.close()
    assert all(torch.equal(g, torch.from_numpy(ds.read_batch(i))) for g, i in zip(got, per_rank[0][1:]))
    broken = pretrain.Prefetcher(ds, np.array([[0, 1], [0, 10_000]]), 0, depth=2, pin=False)
    broken.next()
    with pytest.raises(pretrain.PretrainError, match="out of range"):
        broken.next()
    broken.close()


# ---------------------------------------------------------------------------------------------- runs
def run_pretrain(cfg_path, *extra):
    return subprocess.run([sys.executable, os.path.join(ROOT, "pretrain.py"), cfg_path, *extra], env=ENV,
                          capture_output=True, text=True, timeout=300)


def kill_at_first_checkpoint(cfg_path, out):
    """Start pretrain.py on cfg_path, SIGKILL it as soon as <out>/checkpoint.pt exists; returns that path."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "pretrain.py"), cfg_path], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return ckpt


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
    assert set(a) >= {"optimizer", "rng", "config", "indices", "pruner_state", "iters_per_epoch", "global_batch"}
    assert a["config"]["model"]["arch"] == "vit_nano" and len(a["indices"]) == 24 and a["pruner_state"] == {}
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
    student, teacher = pretrain.build_student_teacher(cfg, torch.device("cpu"))
    pretrain.load_strict(teacher, a["teacher"], "teacher", "checkpoint.pt")
    assert state_hash({k: v for k, v in teacher.state_dict().items()}) == state_hash(a["teacher"])
    backbone = models.build_backbone("vit_nano", 8, 32)
    backbone.load_state_dict(torch.load(full_out / "backbone.pt", weights_only=True))
    cfg["model"]["out_dim"] = 64
    _, other = pretrain.build_student_teacher(cfg, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="does not match the configured model"):
        pretrain.load_strict(other, a["teacher"], "teacher", "checkpoint.pt")
    # Resuming with another global batch is refused with a clear message.
    bad = run_pretrain(full_cfg, "batch_size_per_gpu=4", "epochs=4")
    assert bad.returncode == 1 and "global batch" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_pretrain(full_cfg, f"data={tmp_path / 'nowhere'}")
    assert missing.returncode == 2 and "config key 'train.data'" in missing.stderr and "Traceback" not in missing.stderr


def test_two_process_gloo_ranks_keep_identical_teachers(tmp_path, data_dir):
    out = tmp_path / "ddp"
    cfg = write_config(tmp_path, data_dir, out, train__epochs=2, train__batch_size_per_gpu=4)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "dist_pretrain_check.py"), cfg]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    hashes = [(out / f"teacher_rank{r}.sha256").read_text() for r in range(2)]
    assert hashes[0] == hashes[1]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["global_batch"] == 8 and ck["iteration"] == 6
    init = pretrain.build_student_teacher(config.load([cfg]), torch.device("cpu"))[1]
    assert state_hash(ck["teacher"]) != state_hash(init.state_dict())  # it trained


def test_collapse_warning_and_eval_hook(tmp_path, data_dir, one_thread, capsys, monkeypatch):
    calls = []

    def knn_eval(backbone, dataset_dir, device):
        calls.append((backbone.embed_dim, dataset_dir, str(device), backbone.training))
        backbone.eval()
        return {"top1": 0.5}

    monkeypatch.setitem(sys.modules, "evaluate", type(sys)("evaluate"))
    monkeypatch.setattr(sys.modules["evaluate"], "knn_eval", knn_eval, raising=False)
    # A huge student temperature makes the student uniform: the loss is ln(out_dim) whatever the teacher says.
    cfg = config.load([write_config(tmp_path, data_dir, tmp_path / "flat", train__epochs=1, train__student_temp=1000.0,
                                    train__eval_every=1, train__eval_data=data_dir)])
    result = pretrain.train(cfg)
    epoch = [r for r in read_log(cfg["train"]["out"]) if r.get("event") == "epoch"]
    assert epoch[0]["warning"] == "collapse" and abs(epoch[0]["loss_norm"] - 1) < 0.01
    assert "collapsed" in capsys.readouterr().err
    # the hook runs on the initial teacher (iteration 0: the curve's start) and after the epoch
    assert calls == [(96, data_dir, "cpu", True)] * 2 and epoch[0]["knn"] == {"top1": 0.5}
    start = [r for r in read_log(cfg["train"]["out"]) if r.get("event") == "eval"]
    assert len(start) == 1 and start[0]["iteration"] == 0 and start[0]["knn"] == {"top1": 0.5}
    assert result["teacher"].backbone.training  # the hook's eval() is undone


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, data_dir, one_thread, monkeypatch):
    cfg_path = write_config(tmp_path, data_dir, tmp_path / "nan", train__epochs=2)
    ipe = 3
    real_forward = pretrain.DINOLoss.forward
    calls = {"n": 0}

    def poisoned(self, student_out, teacher_out, teacher_temp):
        calls["n"] += 1
        loss, entropy = real_forward(self, student_out, teacher_out, teacher_temp)
        return (loss * float("nan") if calls["n"] > ipe + 1 else loss), entropy

    monkeypatch.setattr(pretrain.DINOLoss, "forward", poisoned)
    monkeypatch.setattr(sys, "argv", ["pretrain.py", cfg_path])
    with pytest.raises(SystemExit) as exit_info:
        pretrain.main()
    assert exit_info.value.code == pretrain.EXIT_NON_FINITE
    out = tmp_path / "nan"
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["iteration"] == ipe and ck["epoch"] == 0  # the epoch-0 checkpoint, untouched
    assert all(torch.isfinite(v).all() for v in ck["student"].values())
    assert not os.path.exists(out / "backbone.pt") and not os.path.exists(out / "checkpoint.pt.tmp")
