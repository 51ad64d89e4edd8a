"""Vision Transformers in the DINO/timm key layout, 1-channel input: vit_nano (a CPU-sized ViT for tests and smoke
runs), vit_tiny, vit_small, vit_base; with the DINOv2 options (LayerScale, register tokens, a mask token).

    backbone = vit("vit_small", patch_size=16, img_size=256, drop_path=0.1)
    backbone.get_features(x, n_last_blocks=4, avgpool=True)   # the DINO linear-probe features
    resize_pos_embed(pos_embed, (gh, gw))                     # a stored position embedding at another grid
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import Backbone, DropPath, init_generator, trunc_normal_

# name -> (embed_dim, depth, num_heads); the MLP hidden size is always 4 x embed_dim.
VIT_SIZES = {
    "vit_nano": (96, 4, 3),
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}


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
        g = init_generator(generator)
        trunc_normal_(self.cls_token, 0.02, g)
        trunc_normal_(self.pos_embed, 0.02, g)
        # The patch projection is a linear map of the flattened patch: initialise it like the other linears.
        trunc_normal_(self.patch_embed.proj.weight, 0.02, g)
        nn.init.zeros_(self.patch_embed.proj.bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, 0.02, g)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.num_registers:  # drawn last, so a model without registers initialises exactly as before
            trunc_normal_(self.register_tokens, 1e-6, g)   # DINOv2: registers start near zero

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
