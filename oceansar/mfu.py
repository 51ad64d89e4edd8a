"""Model FLOPs utilisation: the matmul FLOPs one training image costs, and the device's measured matmul peak.

MFU = images/s per device x FLOPs per image / peak. The peak is measured (not a datasheet number), once per
process and device, and only when a run logs MFU (pretrain.py at its first log step).
"""

import functools
import time

import torch



def train_flops_per_image(backbone, head, t):
    """Matmul FLOPs one image costs in a step: student fwd+bwd (3x) on all crops, teacher fwd on globals."""
    g = backbone.flops_per_image(t["global_crops_size"])
    loc = backbone.flops_per_image(t["local_crops_size"]) if t["local_crops_number"] else 0
    h = head.flops_per_sample()
    student = 2 * g + t["local_crops_number"] * loc + (2 + t["local_crops_number"]) * h
    return 3 * student + 2 * (g + h)


@functools.lru_cache(maxsize=None)
def peak_flops(device, seconds=0.5):
    """Best achieved FLOP/s of a large matmul (fp32 on CPU, bf16 on CUDA: the precisions training runs in).

    The best single product, not the average, so a busy machine lowers the estimate as little as possible.
    `device` is a torch.device (hashable: the cache holds one value per device)."""
    n, dtype = (2048, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, generator=torch.Generator(device).manual_seed(0)).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ a
    sync()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ a
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
