"""Batched SAR augmentations for DINO multi-crop, on the training device (pretrain.py uses them).

SAR imagettes are not RGB photographs: colour jitter and solarisation make no sense, while the radiometry has
its own nuisances. So the views differ by geometry (random resized crops, flips, optional 90 degree rotations),
by calibration (an additive gain and a contrast factor, both in dB), by resolution (Gaussian blur) and,
optionally, by a fresh speckle draw. Everything runs on whole batches, one affine grid_sample per crop set, and
every random draw comes from an explicit torch.Generator so that a resumed run repeats an interrupted one.
"""

import math

import torch
import torch.nn.functional as F


def sample_gamma(n, shape_k, gen, device):
    """n draws of Gamma(shape_k >= 1, scale 1) from an explicit generator (Marsaglia-Tsang, vectorised).

    Each round proposes for every undecided draw; >95 % are accepted per round, so a few rounds suffice.
    """
    d = shape_k - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, device=device)
    todo = torch.arange(n, device=device)
    while todo.numel():
        z = torch.randn(todo.numel(), generator=gen, device=device)
        u = torch.rand(todo.numel(), generator=gen, device=device)
        v = (1 + c * z) ** 3
        ok = (v > 0) & (u.log() < 0.5 * z * z + d - d * v + d * v.clamp_min(1e-12).log())
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    return out


class SARAugment:
    """Batched multi-crop SAR augmentation: [B,1,H,W] normalised images -> list of 2 global + n local crops.

    Per crop: random resized crop (area fraction in `scale`, aspect ratio log-uniform in [3/4, 4/3]) with random
    flips and optional 90 degree rotations, all folded into one affine map, so a whole crop set is ONE
    grid_sample; then optional speckle re-noising, additive gain and contrast jitter (in dB, converted to
    normalised units with the dataset std) and a per-crop Gaussian blur (grouped separable convolution).
    Every draw comes from the generator passed to __call__.
    """

    def __init__(self, cfg, norm_std):
        t, self.a = cfg["train"], cfg["aug"]
        self.norm_std = norm_std
        self.sets = [(2, t["global_crops_size"], t["global_crops_scale"])]
        if t["local_crops_number"] > 0:
            self.sets.append((t["local_crops_number"], t["local_crops_size"], t["local_crops_scale"]))

    def __call__(self, x, gen):
        crops = []
        for k, size, scale in self.sets:
            views = self.photometric(self.resized_crops(x, k, size, scale, gen), gen)
            crops.extend(views.chunk(k))
        return crops

    def resized_crops(self, x, k, size, scale, gen):
        """k crops of every image as [k*B, 1, size, size] (crop-major), from one grid_sample."""
        b, dev = len(x), x.device
        rand = lambda: torch.rand(b, k, generator=gen, device=dev)  # noqa: E731
        area = scale[0] + (scale[1] - scale[0]) * rand()
        ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * rand())
        w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)  # half-extents in [-1, 1]
        cx, cy = (1 - w) * (2 * rand() - 1), (1 - h) * (2 * rand() - 1)
        ones = torch.ones(b, k, device=dev)
        fx = torch.where(rand() < 0.5, -1.0, 1.0) if self.a["flip"] else ones
        fy = torch.where(rand() < 0.5, -1.0, 1.0) if self.a["flip"] else ones
        quarter = torch.randint(0, 4, (b, k), generator=gen, device=dev) if self.a["rot90"] else 0 * ones
        cos, sin = torch.cos(quarter * math.pi / 2).round(), torch.sin(quarter * math.pi / 2).round()
        # input = scale . flip . rotation . output + centre, for output coordinates u, v in [-1, 1]
        a00, a01, a10, a11 = w * fx * cos, -w * fx * sin, h * fy * sin, h * fy * cos
        lin = (2 * torch.arange(size, device=dev) + 1) / size - 1
        u, v = lin.view(1, 1, 1, size), lin.view(1, 1, size, 1)
        e = lambda t: t[..., None, None]  # noqa: E731
        gx = e(a00) * u + e(a01) * v + e(cx)
        gy = e(a10) * u + e(a11) * v + e(cy)
        grid = torch.stack([gx, gy], dim=-1).view(b, k * size, size, 2)  # k crops stacked along the height
        out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=False)
        return out.view(b, k, size, size).transpose(0, 1).reshape(k * b, 1, size, size)

    def photometric(self, x, gen):
        a, n, dev = self.a, len(x), x.device
        if a["speckle_prob"] > 0:
            pick = (torch.rand(n, generator=gen, device=dev) < a["speckle_prob"]).nonzero().squeeze(1)
            if pick.numel():
                # Multiplicative Gamma(L, 1/L) speckle in linear intensity is an additive 10 log10 term in dB.
                looks, m = a["speckle_looks"], pick.numel() * x[0].numel()
                noise_db = 10 * torch.log10(sample_gamma(m, looks, gen, dev) / looks)
                x[pick] += noise_db.view(-1, *x.shape[1:]) / self.norm_std
        if a["gain_db"] > 0:
            x = x + (a["gain_db"] / self.norm_std) * torch.randn(n, 1, 1, 1, generator=gen, device=dev)
        if a["contrast"] > 0:
            # Log-normal factor: always positive, about 1 +- contrast; scales dB deviations about the crop mean.
            factor = torch.exp(a["contrast"] * torch.randn(n, 1, 1, 1, generator=gen, device=dev))
            mean = x.mean(dim=(2, 3), keepdim=True)
            x = mean + (x - mean) * factor
        lo, hi = a["blur_sigma"]
        if a["blur_prob"] > 0 and hi > 0:
            chosen = torch.rand(n, generator=gen, device=dev) < a["blur_prob"]
            sigma = lo + (hi - lo) * torch.rand(n, generator=gen, device=dev)
            pick = chosen.nonzero().squeeze(1)
            if pick.numel():
                x[pick] = gaussian_blur(x[pick], sigma[pick], radius=min(math.ceil(3 * hi), x.shape[-1] - 1))
        return x


def gaussian_blur(x, sigma, radius):
    """Blur each image of x [n,1,H,W] with its own sigma [n]: separable grouped convolution, reflect padding."""
    n, _, h, w = x.shape
    d = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-d**2 / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)
    y = F.pad(x.reshape(1, n, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(n, 1, -1, 1), groups=n)
    y = F.conv2d(y, k.view(n, 1, 1, -1), groups=n)
    return y.view(n, 1, h, w)
