"""Collapse diagnostics (collapse.py): each failure is named on constructed outputs, a healthy batch is not,
and a tiny real run's teacher moves away from its initialisation."""
import math

import torch
import torch.nn.functional as F

import pretrain
from oceansar import collapse
from oceansar import config
from oceansar import dino
from helpers import write_config

K, N, D = 256, 128, 32
LN_K = math.log(K)


def record(logits, features):
    log_q = F.log_softmax(logits, dim=-1)
    h, h_bar = collapse.teacher_entropies(log_q.exp(), log_q)
    return {"teacher_entropy": h.item(), "batch_entropy": h_bar.item(),
            "feature_std": collapse.feature_spread(features).item()}


def test_uniform_one_prototype_and_feature_collapse_are_named():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(N, D, generator=g)
    flat = record(1e-3 * torch.randn(N, K, generator=g), features)
    assert collapse.warnings(flat, LN_K) == ["uniform"]
    one = torch.full((N, K), -10.0)
    one[:, 7] = 10.0
    assert collapse.warnings(record(one, features), LN_K) == ["one prototype"]
    same = torch.randn(1, D, generator=g).expand(N, D) + 1e-4 * torch.randn(N, D, generator=g)
    healthy_logits = torch.full((N, K), -10.0)
    healthy_logits[torch.arange(N), torch.randint(0, K, (N,), generator=g)] = 10.0
    assert collapse.warnings(record(healthy_logits, same), LN_K) == ["feature collapse"]


def test_a_healthy_batch_raises_nothing():
    g = torch.Generator().manual_seed(1)
    logits = torch.full((N, K), -5.0)
    logits[torch.arange(N), torch.randint(0, K, (N,), generator=g)] = 5.0    # sharp per image, many prototypes
    r = record(logits, torch.randn(N, D, generator=g))
    assert r["teacher_entropy"] < 0.1 * LN_K and r["batch_entropy"] > 0.6 * LN_K and r["feature_std"] > 0.9
    assert collapse.warnings(r, LN_K) == []


def test_feature_spread_scale():
    g = torch.Generator().manual_seed(2)
    assert abs(collapse.feature_spread(torch.randn(4096, 64, generator=g)).item() - 1.0) < 0.05
    assert collapse.feature_spread(torch.ones(16, 64)).item() < 1e-6


def test_a_tiny_run_moves_its_teacher(tmp_path, data_dir):
    cfg = config.load([write_config(tmp_path, data_dir, tmp_path / "moves", train__epochs=3,
                                    train__momentum_teacher=0.9, train__lr=0.05, train__warmup_epochs=0)])
    init = dino.build_student_teacher(cfg, torch.device("cpu"))[1].backbone.state_dict()
    teacher = pretrain.Trainer(cfg).fit().teacher.backbone.state_dict()
    moved = sum((teacher[k] - init[k]).float().norm() ** 2 for k in init if init[k].is_floating_point()) ** 0.5
    size = sum(init[k].float().norm() ** 2 for k in init if init[k].is_floating_point()) ** 0.5
    assert moved / size > 1e-3, (moved / size).item()   # measured 4e-5 at the default lr and warm-up
