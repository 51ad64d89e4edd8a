"""Backbones and the DINO projection head for 1-channel SAR imagettes.

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

Every backbone is a `Backbone` (the protocol the rest of the project relies on: see that class).

Architectures (`ARCHS`): vit_nano (a CPU-sized ViT for tests and smoke runs), vit_tiny, vit_small,
vit_base, resnet50. The ViT state-dict keys follow the DINO/timm layout and the ResNet keys follow the
torchvision layout; weights.py loads the public DINO / torchvision / transformers / lightly checkpoints into them.

Initialisation is deterministic: every constructor takes an optional `generator` (a CPU torch.Generator); when
it is None a generator seeded with 0 is used, so two models built with the same arguments are identical.
Drop-path draws its per-sample masks from the generator given to Backbone.set_drop_path_generator; the
training loop owns that generator and reseeds it every iteration.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from .config import ARCHS, RESNET_STEMS  # the names a config may choose; build_backbone builds each

# name -> (embed_dim, depth, num_heads); the MLP hidden size is always 4 x embed_dim.
VIT_SIZES = {
    "vit_nano": (96, 4, 3),
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}


def _init_generator(generator):
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _trunc_normal_(tensor, std, generator):
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
# Vision Transformer


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


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens, as a strided convolution (key `patch_embed.proj`)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        x = self.proj(x)                          # [B, D, H/p, W/p]
        return x.flatten(2).transpose(1, 2)       # [B, N, D]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)           # each [B, heads, N, head_dim]
        x = F.scaled_dot_product_attention(q, k, v)              # fused kernel where available
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch (CaiT, DINOv2): key `gamma`, initialised to init_value."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)), each branch drop-pathed.

    With layerscale > 0 each branch is scaled by a LayerScale (`ls1`, `ls2`: the DINOv2 key layout) starting at
    that value; with 0 there is no scale and no key (the DINO layout)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path_prob: float, layerscale: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, layerscale) if layerscale > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layerscale) if layerscale > 0 else nn.Identity()
        self.drop_path = DropPath(drop_path_prob)

    def forward(self, x):
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def resize_pos_embed(pos_embed: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubically resample the patch part of a [1, 1+g*g, D] position embedding to a (h, w) grid, like DINO.

    facebookresearch/dino interpolates with scale_factor = (h + 0.1) / g (and (w + 0.1) / g) rather than to
    size (h, w): the scale enters the source-coordinate mapping, so the two give different embeddings (2.5e-2
    apart at 96 px on a 224 px ViT-S/16). Doing as DINO does makes a public DINO checkpoint give DINO's features
    at every input size; the 0.1 keeps floor(g * scale) == h against floating-point error.
    The CLS slot is kept as is. The stored grid must be square (it is for every model built here and for
    the public DINO checkpoints).
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    g = math.isqrt(patch_pos.shape[1])
    if g * g != patch_pos.shape[1]:
        raise ValueError(f"pos_embed has {patch_pos.shape[1]} patch positions, not a square grid")
    if (g, g) == tuple(grid_hw):
        return pos_embed
    dim = patch_pos.shape[-1]
    grid = patch_pos.reshape(1, g, g, dim).permute(0, 3, 1, 2)
    scale = tuple((n + 0.1) / g for n in grid_hw)
    # Interpolate in fp32: bicubic is not implemented for every low-precision dtype/device pair.
    grid = F.interpolate(grid.float(), scale_factor=scale, mode="bicubic", align_corners=False)
    patch_pos = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([cls_pos, patch_pos], dim=1)


class VisionTransformer(Backbone):
    """ViT with a CLS token and learned position embeddings, DINO/timm key layout, 1 input channel.

    Built for `img_size`; other input sizes work by resampling the position embeddings (bicubic), so
    96 px local crops go through a model built for 256 px. H and W need not be multiples of the patch:
    the patch convolution drops the remainder.

    DINOv2 options, in the DINOv2 key layout: `registers` extra learned tokens (`register_tokens` [1, R, D],
    inserted after the CLS token, without position embedding, dropped from every output), `layerscale` > 0
    (`blocks.N.ls1.gamma`, `blocks.N.ls2.gamma`), and `mask_token` ([1, D]: the embedding that replaces
    masked patches in forward_tokens(x, masks); a training-only parameter of the DINOv2 objective).
    Token order: [CLS, registers..., patches...].
    """

    def __init__(self, img_size=256, patch_size=16, in_chans=1, embed_dim=384, depth=12, num_heads=6,
                 mlp_ratio=4.0, drop_path=0.0, layerscale=0.0, registers=0, mask_token=False, generator=None):
        super().__init__()
        if img_size < patch_size:
            raise ValueError(f"img_size {img_size} is smaller than patch_size {patch_size}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim, self.depth, self.num_heads, self.mlp_ratio = embed_dim, depth, num_heads, mlp_ratio
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.num_registers, self.layerscale = registers, layerscale
        if registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, registers, embed_dim))
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))      # DINOv2 initialises it to zero
        # Stochastic depth grows linearly with depth: the first block is never dropped.
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, r, layerscale) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator=None):
        g = _init_generator(generator)
        _trunc_normal_(self.cls_token, 0.02, g)
        _trunc_normal_(self.pos_embed, 0.02, g)
        # The patch projection is a linear map of the flattened patch: initialise it like the other linears.
        _trunc_normal_(self.patch_embed.proj.weight, 0.02, g)
        nn.init.zeros_(self.patch_embed.proj.bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _trunc_normal_(m.weight, 0.02, g)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.num_registers:  # drawn last, so a model without registers initialises exactly as before
            _trunc_normal_(self.register_tokens, 1e-6, g)   # DINOv2: registers start near zero

    def prepare_tokens(self, x: torch.Tensor, masks=None) -> torch.Tensor:
        """[B, C, H, W] image -> [B, 1+R+N, D] tokens (CLS, registers, patches) with position embeddings added.

        masks ([B, N] bool over the row-major patch grid, optional) replaces those patch embeddings by the
        mask token before the position embedding is added (DINOv2 / iBOT masked image modelling)."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"ViT expects input [B,{self.in_chans},H,W], got {tuple(x.shape)}")
        grid_hw = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if min(grid_hw) < 1:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than one {self.patch_size} px patch")
        tokens = self.patch_embed(x)
        if masks is not None:
            if not hasattr(self, "mask_token"):
                raise ValueError("masked input needs a ViT built with mask_token=True")
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + resize_pos_embed(self.pos_embed, grid_hw)
        if self.num_registers:
            x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        return x

    def forward_tokens(self, x: torch.Tensor, masks=None) -> torch.Tensor:
        """[B, 1, H, W] -> final-normed tokens [B, 1+R+N, D]: CLS at 0, patches at 1+R: (see prepare_tokens)."""
        x = self.prepare_tokens(x, masks)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] -> normalised CLS feature [B, embed_dim]."""
        return self.forward_tokens(x)[:, 0]

    def get_features(self, x: torch.Tensor, n_last_blocks: int = 1, avgpool: bool = False) -> torch.Tensor:
        """Linear-probe features: [CLS of each of the last n blocks (final-normed), mean patch token].

        The mean patch token (only if avgpool) is taken from the last block. Output width is
        `self.feature_dim(n_last_blocks, avgpool)`.
        """
        if not 1 <= n_last_blocks <= self.depth:
            raise ValueError(f"n_last_blocks must be in [1, {self.depth}], got {n_last_blocks}")
        x = self.prepare_tokens(x)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= self.depth - n_last_blocks:
                outputs.append(self.norm(x))
        feats = [out[:, 0] for out in outputs]
        if avgpool:
            feats.append(outputs[-1][:, 1 + self.num_registers:].mean(dim=1))
        return torch.cat(feats, dim=-1)

    def feature_dim(self, n_last_blocks: int = 1, avgpool: bool = False) -> int:
        return self.embed_dim * (n_last_blocks + int(avgpool))

    def flops_per_image(self, img_size) -> int:
        """Forward matmul FLOPs (2 per multiply-add) for one image of img_size (int or (H, W)).

        With N = 1 + R + (H/p)(W/p) tokens (R registers), D = embed_dim, M = mlp hidden size, L = depth:
            patch embedding     (N-1) * p^2 * C * D
            per block, linears  N * (3D*D + D*D + 2*D*M)        (qkv, proj, fc1, fc2; = 12*N*D^2 at M=4D)
            per block, attention 2 * N^2 * D                     (Q K^T and attn @ V, summed over heads)
        FLOPs = 2 * (patch + L * (linears + attention)). Norms, softmax, GELU and biases are ignored.
        """
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        patches = (h // self.patch_size) * (w // self.patch_size)
        n, d, p = patches + 1 + self.num_registers, self.embed_dim, self.patch_size
        hidden = int(d * self.mlp_ratio)
        patch_macs = patches * p * p * self.in_chans * d
        block_macs = n * (4 * d * d + 2 * d * hidden) + 2 * n * n * d
        return 2 * (patch_macs + self.depth * block_macs)


def vit(arch: str, patch_size: int = 16, img_size: int = 256, drop_path: float = 0.0, in_chans: int = 1,
        generator=None, **options) -> VisionTransformer:
    """Build one of the named ViT sizes (see VIT_SIZES); options: layerscale, registers, mask_token."""
    if arch not in VIT_SIZES:
        raise ValueError(f"unknown ViT arch {arch!r}; expected one of {sorted(VIT_SIZES)}")
    embed_dim, depth, heads = VIT_SIZES[arch]
    return VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                             depth=depth, num_heads=heads, drop_path=drop_path, generator=generator, **options)


# ----------------------------------------------------------------------------------------------------------
# ResNets (torchvision layout)


def _conv_out(hw, conv):
    """Output (H, W) of a convolution: floor((in + 2p - k) / s) + 1 per axis."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(hw, conv.kernel_size, conv.stride, conv.padding))


def _conv_macs(conv, hw):
    """(multiply-adds, output (H, W)) of one convolution on an hw input."""
    out = _conv_out(hw, conv)
    k_h, k_w = conv.kernel_size
    return out[0] * out[1] * conv.out_channels * (conv.in_channels // conv.groups) * k_h * k_w, out


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3x3 (carries the stride) -> 3x3, plus a projected shortcut when the shape changes."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def convs(self):
        return [self.conv1, self.conv2]

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), plus a projected shortcut when needed."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != outplanes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(outplanes))

    def convs(self):
        return [self.conv1, self.conv2, self.conv3]

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# name -> (block, blocks per stage)
RESNETS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}
# conv1 kernel, conv1 stride, 3x3/2 max pool: "imagenet" divides the image by 4 before layer1 (torchvision),
# "cifar" keeps every pixel (the small-image ResNets of SimCLR / solo-learn / lightly), "half" divides by 2
RESNET_STEM_LAYOUT = {"imagenet": (7, 2, True), "half": (3, 1, True), "cifar": (3, 1, False)}


class ResNet(Backbone):
    """torchvision-layout ResNet, 1-channel stem, no `fc`: returns the globally pooled feature.

    `width` is the channel count of the first stage (torchvision: 64); stage k has width * 2^(k-1) planes.
    `stem` (RESNET_STEM_LAYOUT) sets how much conv1 + max pool shrink the image before layer1: 4x (torchvision),
    2x or 1x (the small-image ResNets of CIFAR recipes). A narrower net or another stem keeps every key name and
    only changes shapes, so the layout still reads as torchvision's.
    """

    def __init__(self, block=Bottleneck, layers=(3, 4, 6, 3), in_chans: int = 1, width: int = 64, generator=None,
                 stem: str = "imagenet"):
        super().__init__()
        if stem not in RESNET_STEM_LAYOUT:
            raise ValueError(f"unknown ResNet stem {stem!r}; expected one of {list(RESNET_STEMS)}")
        self.in_chans, self.width, self.stem = in_chans, width, stem
        kernel, stride, pool = RESNET_STEM_LAYOUT[stem]
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if pool else nn.Identity()
        inplanes = width
        for k, n_blocks in enumerate(layers, start=1):
            planes = width * 2 ** (k - 1)
            blocks = []
            for i in range(n_blocks):
                blocks.append(block(inplanes, planes, (1 if k == 1 else 2) if i == 0 else 1))
                inplanes = planes * block.expansion
            setattr(self, f"layer{k}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embed_dim = inplanes
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator=None):
        g = _init_generator(generator)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] -> globally average-pooled feature [B, embed_dim]."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"ResNet expects input [B,{self.in_chans},H,W], got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def flops_per_image(self, img_size) -> int:
        """Forward FLOPs = 2 * sum over convolutions of (out_h * out_w * C_out * C_in/groups * k_h * k_w).

        Spatial sizes are propagated with the convolution arithmetic out = floor((in + 2p - k) / s) + 1.
        BatchNorm, ReLU, pooling and the residual additions are ignored (no multiply-adds of a matmul).
        """
        hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        total, hw = _conv_macs(self.conv1, hw)
        if isinstance(self.maxpool, nn.MaxPool2d):
            hw = tuple((n + 2 - 3) // 2 + 1 for n in hw)              # max pool 3x3, stride 2, padding 1
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                block_in = hw
                for conv in block.convs():
                    macs, hw = _conv_macs(conv, hw)
                    total += macs
                if block.downsample is not None:
                    total += _conv_macs(block.downsample[0], block_in)[0]
        return 2 * total


def resnet(arch: str, in_chans: int = 1, width: int = 64, generator=None, stem: str = "imagenet") -> ResNet:
    block, layers = RESNETS[arch]
    return ResNet(block, layers, in_chans=in_chans, width=width, generator=generator, stem=stem)


def resnet50(in_chans: int = 1, generator=None) -> ResNet:
    return resnet("resnet50", in_chans, generator=generator)


def build_backbone(arch: str, patch_size: int = 16, img_size: int = 256, drop_path: float = 0.0,
                   generator=None, width: int = 64, layerscale: float = 0.0, registers: int = 0,
                   mask_token: bool = False, stem: str = "imagenet") -> nn.Module:
    """Build a 1-channel backbone by name (one of ARCHS). Every backbone has `.embed_dim`.

    patch_size, img_size, drop_path and the DINOv2 options (layerscale, registers, mask_token: see
    VisionTransformer) only apply to ViTs; the torchvision ResNet50 has no stochastic depth.
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
        g = _init_generator(generator)
        with torch.no_grad():
            for m in self.mlp:
                if isinstance(m, nn.Linear):
                    _trunc_normal_(m.weight, 0.02, g)
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
