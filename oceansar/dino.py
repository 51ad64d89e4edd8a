"""The DINO objective (Caron et al. 2021), as facebookresearch/dino trains it: the loss with its centre, the
per-iteration schedules, the student/teacher pair, AdamW parameter groups, per-parameter gradient clipping and
the EMA teacher update. pretrain.py runs one step of it per iteration; dinov2.py adds the OceanSAR-2 terms.

    student, teacher = dino.build_student_teacher(cfg, device)      # identical initial weights
    loss_fn = dino.DINOLoss(out_dim, n_crops, student_temp=0.1, center_momentum=0.9)
    loss, (H_q, H_mean_q) = loss_fn(student(crops), teacher(crops[:2]), teacher_temp)
    dino.ema_update(list(teacher.parameters()), list(student.parameters()), momentum)
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import collapse
from . import dinov2
from . import distributed
from . import model as models


# ---------------------------------------------------------------------------------------------- schedules
def cosine_schedule(start, end, total, warmup=0, warmup_start=0.0):
    """Per-iteration values: linear warmup_start -> start over `warmup` iterations, then cosine start -> end.

    The first post-warm-up iteration is exactly `start` and the last iteration exactly `end`.
    """
    warmup = min(warmup, total)
    ramp = warmup_start + (start - warmup_start) * np.arange(warmup) / max(warmup, 1)
    n = total - warmup
    cos = end + 0.5 * (start - end) * (1 + np.cos(np.pi * np.arange(n) / max(n - 1, 1)))
    return np.concatenate([ramp, cos])


def build_schedules(t, ipe, global_batch):
    """lr, wd, momentum and teacher_temp as float64 arrays of length epochs * iters_per_epoch."""
    total = t["epochs"] * ipe
    lr = cosine_schedule(t["lr"] * global_batch / 256, t["min_lr"], total, warmup=t["warmup_epochs"] * ipe)
    wd = cosine_schedule(t["weight_decay"], t["weight_decay_end"], total)
    momentum = cosine_schedule(t["momentum_teacher"], 1.0, total)
    warm = min(t["warmup_teacher_temp_epochs"] * ipe, total)
    temp = np.full(total, t["teacher_temp"])
    temp[:warm] = np.linspace(t["warmup_teacher_temp"], t["teacher_temp"], warm)
    ibot_temp = np.full(total, t["ibot_teacher_temp"])  # dinov2's patch-token teacher, same warm-up length
    ibot_temp[:warm] = np.linspace(t["ibot_warmup_teacher_temp"], t["ibot_teacher_temp"], warm)
    return {"lr": lr, "wd": wd, "momentum": momentum, "teacher_temp": temp, "ibot_teacher_temp": ibot_temp}


def set_schedule(optimizer, sched, it):
    """Iteration `it`'s lr on every group and weight decay on the decaying one (param_groups)."""
    for group in optimizer.param_groups:
        group["lr"] = float(sched["lr"][it])
        if group["decay"]:
            group["weight_decay"] = float(sched["wd"][it])


# ---------------------------------------------------------------------------------------------- the loss
class DINOLoss(nn.Module):
    """Cross-entropy between each centred, sharpened teacher global view and every *other* student view."""

    def __init__(self, out_dim, n_crops, student_temp, center_momentum):
        super().__init__()
        self.n_crops, self.student_temp, self.center_momentum = n_crops, student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out, teacher_out, teacher_temp):
        """Returns (loss, [H(q), H(q̄)]): the loss and the teacher's per-image and batch-mean entropies (q̄ over
        all ranks); updates the centre from this batch's teacher output."""
        batch = len(student_out) // self.n_crops
        log_p = F.log_softmax(student_out.float() / self.student_temp, dim=-1).view(self.n_crops, batch, -1)
        log_q = F.log_softmax((teacher_out.float().detach() - self.center) / teacher_temp, dim=-1)
        q = log_q.exp().view(-1, batch, log_q.shape[-1])
        # ce[i, v] = mean over the batch of -sum_k q_i log p_v: one batched contraction for all view pairs.
        ce = -torch.einsum("ibk,vbk->iv", q, log_p) / batch
        same_view = torch.eye(len(q), self.n_crops, dtype=torch.bool, device=ce.device)
        loss = ce[~same_view].mean()
        with torch.no_grad():
            q_flat = q.view(-1, q.shape[-1])
            entropies = collapse.teacher_entropies(q_flat, log_q, distributed.all_reduce_mean(q_flat.mean(0)))
            self.update_center(teacher_out.float())
        return loss, torch.stack(entropies)

    @torch.no_grad()
    def update_center(self, teacher_out):
        """EMA of the teacher's mean output over the global batch (all ranks have the same batch size)."""
        batch_center = distributed.all_reduce_(teacher_out.sum(0, keepdim=True))
        count = len(teacher_out) * distributed.rank_world()[1]
        self.center.mul_(self.center_momentum).add_(batch_center / count, alpha=1 - self.center_momentum)


# ---------------------------------------------------------------------------------------------- model and optimiser
def build_student_teacher(cfg, device):
    """Student (with drop-path) and teacher (without) MultiCropWrappers (DINOv2Wrappers for objective dinov2)
    with identical initial weights."""
    m, t = cfg["model"], cfg["train"]
    gen = lambda: torch.Generator().manual_seed(t["seed"])  # noqa: E731
    v2 = t["objective"] == "dinov2"
    options = models.backbone_options(m["arch"], m)
    make_head = lambda dim: models.DINOHead(dim, m["out_dim"], m["head_hidden_dim"], m["head_bottleneck_dim"],  # noqa: E731
                                            norm_last_layer=m["norm_last_layer"], generator=gen())
    nets = []
    for is_student, drop in ((True, m["drop_path"]), (False, 0.0)):
        backbone = models.build_backbone(m["arch"], m["patch_size"], t["global_crops_size"], drop, generator=gen(),
                                         mask_token=v2, **options)  # mask_token: iBOT's masked patches (ViT only)
        head = make_head(backbone.embed_dim)
        if v2:
            ibot_head = make_head(backbone.embed_dim) if t["ibot_separate_head"] else None
            nets.append(dinov2.DINOv2Wrapper(backbone, head, ibot_head, mask_input=is_student).to(device))
        else:
            nets.append(models.MultiCropWrapper(backbone, head).to(device))
    student, teacher = nets
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def param_groups(net):
    """AdamW groups: weight decay on matrices/kernels only, never on biases and norm scales (ndim <= 1)."""
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in trainable if p.ndim > 1], "decay": True},
            {"params": [p for n, p in trainable if p.ndim <= 1], "decay": False, "weight_decay": 0.0}]


def clip_gradients(params, clip):
    """DINO-style: scale each parameter's gradient to norm <= clip separately; returns the pre-clip norms."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack(torch._foreach_norm(grads))
    if clip > 0:
        torch._foreach_mul_(grads, list((clip / (norms + 1e-6)).clamp(max=1.0).unbind()))
    return norms


@torch.no_grad()
def ema_update(teacher_params, student_params, momentum):
    """teacher <- momentum * teacher + (1 - momentum) * student, over all parameters at once."""
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)


def build_loss(cfg, device):
    """The objective's loss module: DINOLoss, or DINOv2Loss for train.objective=dinov2 (its centres are the
    loss state either way, kept under the checkpoint key dino_loss)."""
    m, t = cfg["model"], cfg["train"]
    n_crops = 2 + t["local_crops_number"]
    if t["objective"] == "dinov2":
        loss = dinov2.DINOv2Loss(m["out_dim"], n_crops, t["student_temp"], t["ibot_student_temp"],
                                 t["center_momentum"], t["centering"], t["ibot_weight"], t["koleo_weight"])
    else:
        loss = DINOLoss(m["out_dim"], n_crops, t["student_temp"], t["center_momentum"])
    return loss.to(device)
