"""Helpers the test files share: tiny datasets and configs in the real formats, log and state readers, and the
stage scripts run as subprocesses (one OpenMP thread each)."""

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch
import yaml

import prune
from oceansar import config
from oceansar import shards


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
                     "local_crops_size": 16, "log_every": 1, "checkpoint_every": 2, "device": "cpu",
                     "lr": 5e-4, "momentum_teacher": 0.996, "global_crops_scale": [0.32, 1.0], "eval_every": 0},
           "aug": {"rot90": True, "speckle_prob": 0.5},
           "prune": {"mode": "none", "rho": 0.5}}
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    path = tmp_path / f"{os.path.basename(str(out))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def state_hash(state):
    h = hashlib.sha256()
    for name, value in sorted(state.items()):
        h.update(name.encode())
        h.update(value.contiguous().numpy().tobytes())
    return h.hexdigest()


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


def heavy_tailed_blobs(sizes=(2000, 600, 200, 60, 20), d=8, seed=0, spacing=12.0):
    """Well separated Gaussian blobs (centres on orthogonal axes) with heavy-tailed sizes."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([spacing * np.eye(d)[i] + rng.normal(0, 1, (n, d)) for i, n in enumerate(sizes)])
    blob = np.repeat(np.arange(len(sizes)), sizes)
    return torch.from_numpy(x.astype(np.float32)), blob


def model_cfg(arch, patch_size=16, crops=256, width=64):
    """The defaults with another backbone (a ResNet at torchvision's width unless told)."""
    cfg = config.defaults()
    cfg["model"].update(arch=arch, patch_size=patch_size, width=width)
    cfg["train"]["global_crops_size"] = crops
    return cfg


def write_dataset(folder, images, **columns):
    writer = shards.ShardWriter(str(folder), images.shape[-1], 50.0, samples_per_shard=64)
    n_shards = (len(images) + 63) // 64
    for k in range(n_shards):
        part = slice(64 * k, 64 * (k + 1))
        writer.write(k, images[part], shards.standard_meta(len(images[part]),
                                                           **{c: v[part] for c, v in columns.items()}))
    writer.finalize(n_shards)
    return str(folder)


def gaussian_classes(n, dim, n_classes, separation, generator):
    """Features around random class centres `separation` apart (in units of the noise std) and their labels."""
    labels = torch.randint(0, n_classes, (n,), generator=generator)
    centres = separation * torch.randn(n_classes, dim, generator=generator)
    return centres[labels] + torch.randn(n, dim, generator=generator) + 5.0, labels


def sinusoid(size, spacing, wavelength, angle_deg, amplitude_db=2.0, base_db=-15.0):
    y, x = torch.meshgrid(torch.arange(size) * spacing, torch.arange(size) * spacing, indexing="ij")
    a = math.radians(angle_deg)
    phase = 2 * math.pi * (x * math.cos(a) + y * math.sin(a)) / wavelength
    return base_db + amplitude_db * torch.cos(phase)


def pruning_config(tmp_path, data, out, **overrides):
    """write_config's tiny config as 6 epochs of 4 iterations at batch 16 (rho 0.2 of 300), dynamic pruning."""
    pruning = {"model__drop_path": 0.0, "train__epochs": 6, "train__batch_size_per_gpu": 16, "train__log_every": 4,
               "prune__mode": "dynamic", "prune__rho": 0.2, "prune__warmup_epochs": 2, "prune__every": 2,
               "prune__levels": [12, 3], "prune__iters": 5, "prune__batch_size": 64,
               "prune__pool_fraction": 1.0}
    return write_config(tmp_path, data, out, **{**pruning, **overrides})


def curation_options(**prune_keys):
    """hierarchy.Options from the prune.* defaults of the SCHEMA, with some prune keys changed."""
    return prune.kmeans_options({**config.defaults()["prune"], **prune_keys})


def two_rank_run(cfg_path, out):
    """pretrain.py on 2 gloo ranks through tests/dist_pretrain_check.py; both ranks must end with the same teacher.
    Returns the run's checkpoint."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "dist_pretrain_check.py"), cfg_path]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    hashes = [(out / f"teacher_rank{r}.sha256").read_text() for r in range(2)]
    assert hashes[0] == hashes[1]
    return torch.load(out / "checkpoint.pt", weights_only=True)
