"""The OceanSAR-2 objective: DINOv2-style training = DINO on the class token + iBOT on masked patch tokens + KoLeo.

Manual
------
    from oceansar import dinov2
    masks = dinov2.sample_masks(2 * B, (gh, gw), probability=0.5, ratio=(0.1, 0.5), rng=np.random.default_rng(0))
    student = dinov2.DINOv2Wrapper(backbone, head, ibot_head=None, mask_input=True)   # None: iBOT shares `head`
    teacher = dinov2.DINOv2Wrapper(backbone_t, head_t, None, mask_input=False)
    s = student(crops, masks)            # (class logits of every crop, patch logits at masked positions, global CLS)
    t = teacher(crops[:2], masks)        # the teacher sees the globals unmasked; its patch logits at the same places
    loss_fn = dinov2.DINOv2Loss(out_dim, n_crops, student_temp=0.1, ibot_student_temp=0.1, center_momentum=0.9,
                                centering="ema", ibot_weight=1.0, koleo_weight=0.1)
    loss, entropies, terms = loss_fn(s, t, masks, teacher_temp, ibot_teacher_temp)   # entropies: [H(q), H(q̄)]

The pieces (Oquab et al. 2023, "DINOv2"; Zhou et al. 2022, "iBOT"; Sablayrolles et al. 2019, "KoLeo"):
- block-wise masking (BEiT): a fraction `probability` of the student's global crops get masked; their target
  ratios are spread evenly over `ratio` (one per equal-width bin, drawn uniformly inside it); each mask grows by
  random rectangles (area >= 4 patches, aspect ratio in [0.3, 1/0.3]) until it reaches its count. A masked patch
  embedding is replaced by the backbone's learnable `mask_token`.
- iBOT: cross-entropy between the teacher's centred, sharpened patch distribution (teacher input unmasked) and
  the student's at each masked position; averaged over an image's masked patches, then over all global-crop
  images (unmasked images count as zero, as in DINOv2).
- KoLeo: -mean log(distance to the nearest neighbour) of the L2-normalised student CLS tokens, per global crop,
  summed over the two crops (on this rank's batch).
- centring: `ema` (DINO's running mean subtracted before the teacher softmax, a separate centre for the patch
  tokens) or `sinkhorn` (3 Sinkhorn-Knopp iterations over the global batch: every sample's distribution sums to
  1 and every prototype gets an equal share of the batch).
Under torchrun the centres, the Sinkhorn-Knopp sums and the masked-token counts are all-reduced.
"""

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from . import collapse
from .distributed import all_reduce_

MIN_BLOCK_PATCHES = 4
BLOCK_ASPECT = (0.3, 1 / 0.3)
BLOCK_TRIES = 10


# ---------------------------------------------------------------------------------------------- masking
def block_mask(grid_hw, count, rng, max_block=None):
    """[gh, gw] bool mask with at most `count` (usually exactly) patches set, as a union of random rectangles.

    Each rectangle adds only new patches and never more than are still missing; a mask that cannot grow in
    BLOCK_TRIES draws stops short (rare, and only for counts near the grid size)."""
    gh, gw = grid_hw
    mask = np.zeros((gh, gw), dtype=bool)
    max_block = max_block or count
    log_aspect = np.log(BLOCK_ASPECT)
    done = 0
    while done < count:
        budget = min(count - done, max_block)
        added = 0
        for _ in range(BLOCK_TRIES):
            area = rng.uniform(MIN_BLOCK_PATCHES, max(budget, MIN_BLOCK_PATCHES))
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if h >= gh or w >= gw:
                continue
            top, left = rng.integers(0, gh - h + 1), rng.integers(0, gw - w + 1)
            new = h * w - int(mask[top:top + h, left:left + w].sum())
            if 0 < new <= budget:
                mask[top:top + h, left:left + w] = True
                added = new
                break
        if added == 0:
            break
        done += added
    return mask


def sample_masks(n, grid_hw, probability, ratio, rng):
    """[n, gh * gw] bool masks for n global-crop images (row-major over the patch grid, as the ViT's tokens).

    floor(n * probability) images are masked, with target ratios one per equal-width bin of [ratio[0],
    ratio[1]]; the others are unmasked; the order is shuffled. A block never covers more than half the grid."""
    gh, gw = grid_hw
    patches = gh * gw
    n_masked = int(n * probability)
    edges = np.linspace(ratio[0], ratio[1], n_masked + 1)
    masks = np.zeros((n, patches), dtype=bool)
    for i in range(n_masked):
        count = int(patches * rng.uniform(edges[i], edges[i + 1]))
        masks[i] = block_mask(grid_hw, count, rng, max_block=patches // 2).reshape(-1)
    return torch.from_numpy(masks[rng.permutation(n)])


# ---------------------------------------------------------------------------------------------- losses
def ibot_loss(student_patch, teacher_probs, masks, student_temp):
    """iBOT cross-entropy, vectorised: rows of student_patch / teacher_probs are masks' True positions in order.

    loss = (1 / n_images) * sum_images (1 / max(m_i, 1)) * sum_{masked j} -sum_k q_ijk log softmax(s_ij / T)_k
    """
    if student_patch.shape[0] == 0:
        return student_patch.sum() * 0.0
    ce = -(teacher_probs * F.log_softmax(student_patch.float() / student_temp, dim=-1)).sum(-1)
    per_image = masks.sum(1, keepdim=True).clamp(min=1).float()
    weight = (1.0 / per_image).expand_as(masks)[masks]
    return (ce * weight).sum() / masks.shape[0]


def koleo_loss(x, eps=1e-8):
    """KoLeo: -mean_i log ||x_i - x_nn(i)|| over L2-normalised rows; nn(i) is the nearest other row."""
    if len(x) < 2:
        return x.sum() * 0.0
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)                # below any cosine: a row is never its own neighbour
        nearest = dots.argmax(dim=1)             # max inner product = min distance on the unit sphere
    return -torch.log((x - x[nearest]).norm(dim=-1) + eps).mean()


@torch.no_grad()
def sinkhorn_knopp(logits, temp, iterations=3):
    """[B, K] teacher logits -> [B, K] targets: each row sums to 1, each column to about B_global / K.

    Starts from exp(logits / temp) (shifted by the global max, which the first normalisation removes) and
    alternates prototype (column) and sample (row) normalisation over the global batch of every rank."""
    z = logits.float() / temp
    local_top = z.max() if z.numel() else z.new_tensor(-math.inf)       # a rank may have no masked patch
    top = all_reduce_(local_top.reshape(1), dist.ReduceOp.MAX)
    q = torch.exp(z - top).t()                                         # [K, B]
    count = all_reduce_(torch.tensor([float(q.shape[1])], device=q.device))
    k = q.shape[0]
    q /= all_reduce_(q.sum().reshape(1))
    for _ in range(iterations):
        q /= all_reduce_(q.sum(dim=1, keepdim=True)) * k                # every prototype: mass 1/K
        q /= q.sum(dim=0, keepdim=True) * count                        # every sample: mass 1/B
    return (q * count).t()


def cross_view_ce(teacher_probs, student_logits, n_crops, student_temp):
    """DINO: mean over (teacher global i, student view v != i) of the batch-mean cross-entropy."""
    batch = len(student_logits) // n_crops
    log_p = F.log_softmax(student_logits.float() / student_temp, dim=-1).view(n_crops, batch, -1)
    q = teacher_probs.view(-1, batch, teacher_probs.shape[-1])
    ce = -torch.einsum("ibk,vbk->iv", q, log_p) / batch
    same_view = torch.eye(len(q), n_crops, dtype=torch.bool, device=ce.device)
    return ce[~same_view].mean()


class DINOv2Loss(nn.Module):
    """DINO + iBOT + KoLeo with EMA or Sinkhorn-Knopp centring; buffers `center` and `ibot_center` [1, K]."""

    def __init__(self, out_dim, n_crops, student_temp, ibot_student_temp, center_momentum, centering, ibot_weight,
                 koleo_weight):
        super().__init__()
        if centering not in ("ema", "sinkhorn"):
            raise ValueError(f"centering must be 'ema' or 'sinkhorn', got {centering!r}")
        self.n_crops, self.student_temp, self.ibot_student_temp = n_crops, student_temp, ibot_student_temp
        self.center_momentum, self.centering = center_momentum, centering
        self.ibot_weight, self.koleo_weight = ibot_weight, koleo_weight
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("ibot_center", torch.zeros(1, out_dim))

    def teacher_probs(self, logits, temp, center):
        logits = logits.float().detach()
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(logits, temp)
        return F.softmax((logits - center) / temp, dim=-1)

    def forward(self, student, teacher, masks, teacher_temp, ibot_teacher_temp):
        """student = (class logits of all crops, masked patch logits, global CLS tokens), teacher likewise
        (globals only); returns (total loss, [H(q), H(q̄)] of the class-token teacher (collapse.py; q̄ over all
        ranks), {"loss_dino", "loss_ibot", "loss_koleo"})."""
        s_cls, s_patch, s_global = student
        t_cls, t_patch, _ = teacher
        q = self.teacher_probs(t_cls, teacher_temp, self.center)
        dino = cross_view_ce(q, s_cls, self.n_crops, self.student_temp)
        q_patch = self.teacher_probs(t_patch, ibot_teacher_temp, self.ibot_center)
        ibot = ibot_loss(s_patch, q_patch, masks.to(s_patch.device), self.ibot_student_temp)
        koleo = sum(koleo_loss(c) for c in s_global.chunk(2))
        total = dino + self.ibot_weight * ibot + self.koleo_weight * koleo
        with torch.no_grad():
            q_bar = all_reduce_(torch.cat([q.sum(0), q.new_tensor([len(q)])]))
            entropies = torch.stack(collapse.teacher_entropies(q, q.clamp_min(1e-30).log(), q_bar[:-1] / q_bar[-1]))
            if self.centering == "ema":
                self.update(self.center, t_cls.float())
                self.update(self.ibot_center, t_patch.float())
        terms = {"loss_dino": dino.detach(), "loss_ibot": ibot.detach(), "loss_koleo": koleo.detach()}
        return total, entropies, terms

    @torch.no_grad()
    def update(self, center, teacher_out):
        """EMA of the teacher's mean output over the global batch (summed and counted over ranks)."""
        stats = torch.cat([teacher_out.sum(0), teacher_out.new_tensor([len(teacher_out)])])
        stats = all_reduce_(stats)
        if stats[-1] > 0:
            center.mul_(self.center_momentum).add_(stats[None, :-1] / stats[-1], alpha=1 - self.center_momentum)


# ---------------------------------------------------------------------------------------------- wrapper
class DINOv2Wrapper(nn.Module):
    """Backbone + DINO head (+ a separate iBOT head, or None to share the DINO head) over a list of crops.

    forward(crops, masks): crops[0:2] are the global crops (one size), the rest local crops (one size);
    masks [2B, N] marks the global crops' masked patches. The student (mask_input=True) replaces them by the
    mask token; the teacher (mask_input=False) sees them intact. Returns (class logits [n_crops * B, K] in crop
    order, patch logits [masks.sum(), K] at the masked positions, global CLS tokens [2B, D]); with
    return_backbone_features also the global CLS tokens again (MultiCropWrapper's (out, features) form)."""

    def __init__(self, backbone, head, ibot_head=None, mask_input=True):
        super().__init__()
        self.backbone, self.head = backbone, head
        if ibot_head is not None:
            self.ibot_head = ibot_head
        self.mask_input = mask_input

    def forward(self, crops, masks, return_backbone_features=False):
        out = self.outputs(crops, masks)
        return (out, out[2]) if return_backbone_features else out

    def outputs(self, crops, masks):
        tokens = self.backbone.forward_tokens(torch.cat(crops[:2]), masks if self.mask_input else None)
        cls = [tokens[:, 0]]
        if len(crops) > 2:
            cls.append(self.backbone(torch.cat(crops[2:])))
        cls = torch.cat(cls)
        patches = tokens[:, 1 + self.backbone.num_registers:][masks]
        if hasattr(self, "ibot_head"):
            return self.head(cls), self.ibot_head(patches), tokens[:, 0]
        out = self.head(torch.cat([cls, patches]))
        return out[:len(cls)], out[len(cls):], tokens[:, 0]
