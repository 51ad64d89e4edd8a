"""Checkpoint I/O shared by pretrain, prune and evaluate: atomic save, RNG state, readable-or-one-line load, strict
state-dict loads.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so `torch.load(path, weights_only=True)`
reads it; pretrain.py's module docstring lists its keys.
"""

import random

import numpy as np
import torch

from . import atomic
from .errors import UserError


class CheckpointError(UserError):
    """An unreadable checkpoint, or one that does not fit the configured model (exit code 1)."""


def save(state, path):
    atomic.save_torch(state, path)


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
