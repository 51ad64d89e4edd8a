"""Backbones by name and the DINO projection head, for 1-channel SAR imagettes.

Manual
------
    from oceansar import model
    backbone = model.build_backbone("vit_small", patch_size=16, img_size=256, drop_path=0.1)
    head = model.DINOHead(backbone.embed_dim, out_dim=65536)
    student = model.MultiCropWrapper(backbone, head)
    logits = student([global_a, global_b, local_1, ..., local_8])   # crops are [B,1,h,w]

    feats = backbone(x)                      # [B, embed_dim]: CLS token (ViT) / pooled map (ResNet)
    feats = backbone.get_features(x, n_last_blocks=4, avgpool=True)   # linear-probe features
    backbone.flops_per_image(256)            # forward matmul FLOPs of one image, for MFU

Every backbone is a `backbone.Backbone` (the protocol the rest of the project relies on: see that class).

Architectures (`ARCHS`): the ViTs of vit.py (vit_nano, vit_tiny, vit_small, vit_base) in the DINO/timm key layout
and the ResNets of resnet.py (resnet18 at any width, resnet50) in the torchvision key layout; weights.py loads the
public DINO / torchvision / transformers / lightly checkpoints into them. Initialisation is deterministic
(backbone.py says how).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from .backbone import init_generator, trunc_normal_
from .config import ARCHS  # the names a config may choose; build_backbone builds each
from .resnet import RESNETS, resnet
from .vit import VIT_SIZES, vit


def build_backbone(arch: str, patch_size: int = 16, img_size: int = 256, drop_path: float = 0.0,
                   generator=None, width: int = 64, layerscale: float = 0.0, registers: int = 0,
                   mask_token: bool = False, stem: str = "imagenet") -> nn.Module:
    """Build a 1-channel backbone by name (one of ARCHS). Every backbone has `.embed_dim`.

    patch_size, img_size, drop_path and the DINOv2 options (layerscale, registers, mask_token: see
    VisionTransformer) only apply to ViTs; the torchvision ResNets have no stochastic depth.
    """
    if arch in RESNETS:
        return resnet(arch, width=width, generator=generator, stem=stem)
    if arch in VIT_SIZES:
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        return vit(arch, patch_size=patch_size, img_size=img_size, drop_path=drop_path, generator=generator,
                   layerscale=layerscale, registers=registers, mask_token=mask_token)
    raise ValueError(f"unknown arch {arch!r}; expected one of {list(ARCHS)}")


def backbone_options(arch: str, model_cfg) -> dict:
    """build_backbone's options for `arch` from a config's model section; a key that an older saved config lacks
    takes build_backbone's default."""
    if arch in VIT_SIZES:
        return {"layerscale": model_cfg.get("layerscale", 0.0), "registers": model_cfg.get("registers", 0)}
    return {"width": model_cfg.get("width", 64), "stem": model_cfg.get("stem", "imagenet")}


# ----------------------------------------------------------------------------------------------------------
# DINO head and multi-crop wrapper


class DINOHead(nn.Module):
    """MLP (GELU) -> bottleneck -> L2 normalise -> weight-normalised bias-free linear to out_dim logits.

    The last layer uses torch.nn.utils.parametrizations.weight_norm: weight = g * v / ||v|| per output row,
    stored as `last_layer.parametrizations.weight.original0` (g, the magnitude) and `.original1` (v).
    g starts at 1; with norm_last_layer it stays 1 (requires_grad False), so every logit is a cosine
    similarity, which is what keeps DINO stable. The trainer zeroes `head.last_layer` grads during the
    first epoch(s).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True, generator=None):
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead nlayers must be >= 1, got {nlayers}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers = []
        for i in range(nlayers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        g = init_generator(generator)
        with torch.no_grad():
            for m in self.mlp:
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight, 0.02, g)
                    nn.init.zeros_(m.bias)
            last = nn.Linear(bottleneck_dim, out_dim, bias=False)
            # v as DINO has it (nn.Linear's default, U(+-1/sqrt(bottleneck_dim)): row norm sqrt(1/3)). Only the
            # row directions enter the logits, but the norm sets the step: the gradient on v scales as 1/||v||,
            # so a 0.02-std init (row norm ~0.3) would rotate the prototypes ~2x faster in the first updates.
            bound = 1.0 / math.sqrt(bottleneck_dim)
            last.weight.uniform_(-bound, bound, generator=g)
        self.last_layer = weight_norm(last)
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)
        self.norm_last_layer = norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)

    def flops_per_sample(self) -> int:
        """Forward matmul FLOPs per input vector: 2 * sum of the weight sizes of all linear layers."""
        macs = sum(m.in_features * m.out_features for m in self.mlp if isinstance(m, nn.Linear))
        v = self.last_layer.parametrizations.weight.original1
        return 2 * (macs + v.numel())


class MultiCropWrapper(nn.Module):
    """Run a list of crops of possibly different resolutions through backbone + head.

    Consecutive crops of the same (H, W) are concatenated along the batch and go through the backbone in one
    pass (so 2 globals + 8 locals = 2 backbone passes); all features then go through the head in one pass.
    Output rows are in crop order: crop 0's batch, then crop 1's, ...
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops, return_backbone_features: bool = False):
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        if len(crops) == 0:
            raise ValueError("MultiCropWrapper got an empty list of crops")
        features, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            features.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        features = torch.cat(features)
        out = self.head(features)
        return (out, features) if return_backbone_features else out
