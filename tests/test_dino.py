"""Tests of oceansar/dino.py: the DINO loss against a loop reference, schedules, EMA, per-parameter clipping and the
weight-decay groups."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oceansar import config
from oceansar import dino
from oceansar import model as models


# ---------------------------------------------------------------------------------------------- pure functions
def reference_dino_loss(student_out, teacher_out, center, n_crops, student_temp, teacher_temp):
    s = student_out.chunk(n_crops)
    q = F.softmax((teacher_out - center) / teacher_temp, dim=-1).chunk(2)
    total, terms = 0.0, 0
    for i in range(2):
        for v in range(n_crops):
            if v == i:
                continue
            total = total + torch.sum(-q[i] * F.log_softmax(s[v] / student_temp, dim=-1), dim=-1).mean()
            terms += 1
    return total / terms


def test_dino_loss_matches_reference_and_skips_same_view():
    g = torch.Generator().manual_seed(0)
    b, k, n_crops = 5, 17, 4
    student, teacher = torch.randn(n_crops * b, k, generator=g), torch.randn(2 * b, k, generator=g)
    loss_fn = dino.DINOLoss(k, n_crops, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(0.3 * torch.randn(1, k, generator=g))
    center = loss_fn.center.clone()
    loss, (entropy, batch_entropy) = loss_fn(student, teacher, teacher_temp=0.05)
    ref = reference_dino_loss(student, teacher, center, n_crops, 0.1, 0.05)
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)
    q = F.softmax((teacher - center) / 0.05, dim=-1)
    assert torch.allclose(entropy, -torch.special.xlogy(q, q).sum(-1).mean(), rtol=1e-5)
    q_bar = q.mean(0)
    assert torch.allclose(batch_entropy, -torch.special.xlogy(q_bar, q_bar).sum(), rtol=1e-5)
    assert torch.allclose(loss_fn.center, 0.9 * center + 0.1 * teacher.mean(0, keepdim=True), atol=1e-6)
    # Same-view pairs are skipped: with only 2 crops the loss is the mean of CE(q0, p1) and CE(q1, p0).
    two = dino.DINOLoss(k, 2, student_temp=0.1, center_momentum=0.9)
    s2 = torch.randn(2 * b, k, generator=g)
    loss2, _ = two(s2, teacher, teacher_temp=0.05)
    q0, q1 = F.softmax(teacher / 0.05, -1).chunk(2)
    p0, p1 = F.log_softmax(s2 / 0.1, -1).chunk(2)
    expected = 0.5 * ((-q0 * p1).sum(-1).mean() + (-q1 * p0).sum(-1).mean())
    assert torch.allclose(loss2, expected, rtol=1e-5)
    with_same = 0.25 * ((-q0 * p0).sum(-1).mean() + (-q1 * p1).sum(-1).mean()) + 0.5 * expected
    assert not torch.allclose(loss2, with_same, rtol=1e-3)


def test_schedules_lengths_and_end_values():
    t = config.defaults()["train"]
    t.update(epochs=7, warmup_epochs=2, warmup_teacher_temp_epochs=3, lr=5e-4, min_lr=1e-6, momentum_teacher=0.996)
    ipe, global_batch = 5, 512
    s = dino.build_schedules(t, ipe, global_batch)
    assert all(len(v) == 35 for v in s.values())
    peak = 5e-4 * global_batch / 256
    assert s["lr"][0] == 0.0 and s["lr"][10] == pytest.approx(peak) and s["lr"].max() == pytest.approx(peak)
    assert np.all(np.diff(s["lr"][:11]) > 0) and np.all(np.diff(s["lr"][10:]) <= 0)
    assert s["lr"][-1] == pytest.approx(1e-6)
    assert s["wd"][0] == pytest.approx(0.04) and s["wd"][-1] == pytest.approx(0.4)
    assert s["momentum"][0] == pytest.approx(0.996) and s["momentum"][-1] == pytest.approx(1.0)
    assert s["teacher_temp"][0] == pytest.approx(0.04) and s["teacher_temp"][14] == pytest.approx(0.07)
    assert np.all(s["teacher_temp"][15:] == 0.07)


def test_ema_update_and_per_parameter_clipping():
    g = torch.Generator().manual_seed(1)
    teacher = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    student = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    expected = [0.9 * t + 0.1 * s for t, s in zip(teacher, student)]
    dino.ema_update(teacher, student, 0.9)
    assert all(torch.allclose(t, e) for t, e in zip(teacher, expected))

    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in (4, (2, 2), 3)]
    params[0].grad = torch.tensor([3.0, 4.0, 0.0, 0.0])        # norm 5 -> clipped to 1
    params[1].grad = torch.full((2, 2), 0.1)                    # norm 0.2 -> untouched
    norms = dino.clip_gradients(params, 1.0)
    assert torch.allclose(norms, torch.tensor([5.0, 0.2]))
    assert params[0].grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(params[1].grad, torch.full((2, 2), 0.1)) and params[2].grad is None


def test_param_groups_exclude_biases_and_norms():
    net = models.MultiCropWrapper(models.build_backbone("vit_nano", 8, 32), models.DINOHead(96, 16, 32, 16))
    decay, no_decay = dino.param_groups(net)
    assert decay["decay"] and all(p.ndim > 1 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in no_decay["params"])
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert sum(p.numel() for p in decay["params"] + no_decay["params"]) == trainable
