"""Checkpoint I/O shared by pretrain, prune and evaluate: atomic save, RNG state, readable-or-one-line load, strict
state-dict loads.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so `torch.load(path, weights_only=True)`
reads it; pretrain.py's module docstring lists its keys.
"""

import os
import random

import numpy as np
import torch

from . import atomic
from .errors import UserError


class CheckpointError(UserError):
    """An unreadable checkpoint, or one that does not fit the configured model (exit code 1)."""


def save(state, path):
    """torch.save, atomically (atomic.py): a reader never sees half a checkpoint."""
    with atomic.open_atomic(path, "wb") as f:
        torch.save(state, f)


def load(path):
    """The checkpoint at `path` on the CPU, or a CheckpointError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0]}); move it away to start "
                              f"over") from None


def load_strict(module, state, what, path):
    """module.load_state_dict(state, strict=True), or one line saying which part of which file does not fit."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the {what} in the checkpoint does not match the configured model "
                              f"(different model.* settings?): {str(e).splitlines()[0]}") from None


def rng_states():
    """The process's global RNG states (torch, numpy, python, CUDA) as checkpoint-safe data. The run draws from
    explicit generators; the global states are saved so that library code that uses them resumes alike."""
    s = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [s[0], torch.from_numpy(s[1].astype(np.int64)), *s[2:]],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state((s["numpy"][0], s["numpy"][1].numpy().astype(np.uint32), *s["numpy"][2:]))
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in s["python"]))
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


# ---------------------------------------------------------------------------------------------- a training run's
def training_state(modules, optimizer, cfg, pruner, epoch, iteration, iters_per_epoch, global_batch, indices):
    """The full state of a pretraining run as checkpoint.pt holds it (pretrain.py's docstring lists the keys).
    modules: {"student", "teacher", "dino_loss"} -> nn.Module."""
    return {**{key: m.state_dict() for key, m in modules.items()}, "optimizer": optimizer.state_dict(),
            "epoch": epoch, "iteration": iteration, "iters_per_epoch": iters_per_epoch, "global_batch": global_batch,
            "rng": rng_states(), "config": cfg, "pruner": pruner.state_dict(),
            "indices": torch.from_numpy(np.asarray(indices, dtype=np.int64))}


def restore_training(ck, path, modules, optimizer, pruner, iters_per_epoch, global_batch):
    """Load a training_state into the run's modules (strictly), optimizer, pruner and RNGs; returns the iteration
    to continue from. A run with another epoch length or global batch cannot continue it (one line)."""
    if (ck["iters_per_epoch"], ck["global_batch"]) != (iters_per_epoch, global_batch):
        raise CheckpointError(f"{path}: saved with {ck['iters_per_epoch']} iterations/epoch at global batch "
                              f"{ck['global_batch']}, this run has {iters_per_epoch} at {global_batch} (resuming "
                              f"needs the same world size, batch and prune.rho; train.resume=false starts over)")
    for key, module in modules.items():
        load_strict(module, ck[key], {"dino_loss": "DINO centre"}.get(key, key), path)
    optimizer.load_state_dict(ck["optimizer"])
    pruner.load_state_dict(ck["pruner"])
    set_rng_states(ck["rng"])
    return ck["iteration"]


def save_snapshot(path, snapshot):
    """`snapshot` becomes a hard link to the checkpoint at `path`: the rolling file is replaced by rename, so the
    link keeps this version at no extra disk space."""
    if os.path.exists(snapshot):
        os.remove(snapshot)
    os.link(path, snapshot)
