"""What every backbone shares: the Backbone protocol the rest of the project relies on, deterministic
initialisation, stochastic depth, and a parameter count. vit.py and resnet.py hold the architectures, model.py
builds them by name.

Initialisation is deterministic: every constructor takes an optional `generator` (a CPU torch.Generator); when it
is None a generator seeded with 0 is used (init_generator), so two models built with the same arguments are
identical. Drop-path draws its per-sample masks from the generator given to Backbone.set_drop_path_generator; the
training loop owns that generator and reseeds it every iteration.
"""

import math

import torch
import torch.nn as nn


def init_generator(generator):
    return generator if generator is not None else torch.Generator().manual_seed(0)


def trunc_normal_(tensor, std, generator):
    """Zero-mean normal(std) truncated at +-2 std, by inverse CDF in one vectorised pass.

    (torch.nn.init.trunc_normal_ rejection-samples and is ~10x slower; ViT-B init would take seconds.)
    """
    bound = math.erf(2.0 / math.sqrt(2.0))          # the uniform range that maps to +-2 std
    with torch.no_grad():
        tensor.uniform_(-bound, bound, generator=generator).erfinv_()
        return tensor.mul_(std * math.sqrt(2.0)).clamp_(-2 * std, 2 * std)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in `module` (only those with requires_grad if trainable_only)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------------------
# The backbone protocol


class Backbone(nn.Module):
    """What every backbone offers the rest of the project; a new one subclasses this (README, "Layout").

    embed_dim                  the width of forward's output (the DINO head's input, the curation features)
    forward(x)                 [B, 1, H, W] normalised σ0 -> [B, embed_dim] (ViT: CLS token, CNN: pooled map)
    get_features(x, n, pool)   the linear-probe features (a ViT may concatenate its last n CLS tokens and the
                               mean patch token; the default is forward's output)
    feature_dim(n, pool)       the width of get_features' output
    flops_per_image(size)      forward matmul FLOPs of one size x size image (for MFU)
    """
    embed_dim: int

    def get_features(self, x: torch.Tensor, n_last_blocks: int = 1, avgpool: bool = False) -> torch.Tensor:
        return self(x)

    def feature_dim(self, n_last_blocks: int = 1, avgpool: bool = False) -> int:
        return self.embed_dim

    def flops_per_image(self, img_size) -> int:
        raise NotImplementedError(f"{type(self).__name__} defines no FLOP formula (Backbone.flops_per_image)")

    def set_drop_path_generator(self, generator):
        """Stochastic depth draws from `generator` (a backbone without DropPath modules ignores it)."""
        for m in self.modules():
            if isinstance(m, DropPath):
                m.generator = generator


# ----------------------------------------------------------------------------------------------------------
# Stochastic depth


def drop_path(x: torch.Tensor, drop_prob: float, training: bool, generator=None) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability drop_prob.

    Survivors are scaled by 1/keep so the expected value matches eval mode, where this is the identity.
    The mask is drawn from `generator` (on x's device; None: torch's global generator).
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep, generator=generator)
    return x * mask / keep


class DropPath(nn.Module):
    """drop_path as a module; `generator` is set by Backbone.set_drop_path_generator (the training loop owns it)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob, self.generator = drop_prob, None

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training, self.generator)

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"
