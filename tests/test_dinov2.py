"""Tests of the OceanSAR-2 objective (dinov2.py) and the ViT's DINOv2 options: iBOT loss, block masking, KoLeo,
Sinkhorn-Knopp against loop references; DINOv2-layout weights; dinov2 runs, resume after kill -9, torchrun."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage


import study
from oceansar import config
from oceansar import dino
from oceansar import dinov2
from oceansar import model as models
from oceansar import weights
from oceansar import probes
from helpers import kill_at_first_checkpoint, read_log, run_pretrain, state_hash, two_rank_run, write_config

V2 = {"train__objective": "dinov2", "model__patch_size": 4}   # 32 px globals -> an 8 x 8 patch grid


# ---------------------------------------------------------------------------------------------- the pieces
def test_ibot_loss_equals_loop_reference():
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(5, 12, dtype=torch.bool)
    masks[0, [1, 2, 3]] = True
    masks[2, [0, 11]] = True
    masks[3, :] = True                                   # images 1 and 4 unmasked: they count as zero
    n, k, temp = int(masks.sum()), 7, 0.1
    student = torch.randn(n, k, generator=g)
    teacher = torch.softmax(torch.randn(n, k, generator=g) / 0.05, dim=-1)
    got = dinov2.ibot_loss(student, teacher, masks, temp)
    total, row = 0.0, 0
    for i in range(len(masks)):
        image = 0.0
        for j in range(masks.shape[1]):
            if masks[i, j]:
                log_p = [float(student[row, c]) / temp for c in range(k)]
                top = max(log_p)
                log_z = top + math.log(sum(math.exp(v - top) for v in log_p))
                image += -sum(float(teacher[row, c]) * (log_p[c] - log_z) for c in range(k))
                row += 1
        total += image / max(int(masks[i].sum()), 1)
    assert math.isclose(float(got), total / len(masks), rel_tol=1e-5)
    assert float(dinov2.ibot_loss(student[:0], teacher[:0], torch.zeros(3, 12, dtype=torch.bool), temp)) == 0.0


def test_block_masks_have_the_requested_ratio_and_are_contiguous():
    rng = np.random.default_rng(0)
    short = []
    for count in range(8, 129, 4):                       # 16 x 16 grid: 3 % .. 50 %
        mask = dinov2.block_mask((16, 16), count, rng, max_block=128)
        short.append(count - int(mask.sum()))
        padded = np.pad(mask, 1)
        neighbours = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
        assert not np.any(mask & ~neighbours), "a masked patch without a masked neighbour: not block-wise"
        blocks = ndimage.label(mask)[1]
        assert blocks <= max(1, count // 4)              # a few rectangles, not scattered patches
    # Never more than asked; short only by what a block of >= 4 patches cannot fill (as in BEiT / DINOv2).
    assert min(short) >= 0 and max(short) < dinov2.MIN_BLOCK_PATCHES and np.mean(short) < 1
    masks = dinov2.sample_masks(64, (16, 16), 0.5, (0.1, 0.5), np.random.default_rng(1))
    assert masks.shape == (64, 256) and masks.dtype == torch.bool
    ratios = masks.float().mean(1)
    masked = ratios[ratios > 0]
    assert len(masked) == 32                             # floor(64 * 0.5) images masked
    assert masked.min() >= 0.09 and masked.max() <= 0.5
    assert abs(float(masked.mean()) - 0.3) < 0.02        # one target per bin of [0.1, 0.5]: mean 0.3
    again = dinov2.sample_masks(64, (16, 16), 0.5, (0.1, 0.5), np.random.default_rng(1))
    assert torch.equal(masks, again)                     # a pure function of the generator


def test_koleo_equals_brute_force_nearest_neighbour():
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(2))
    got = float(dinov2.koleo_loss(x))
    u = (x / x.norm(dim=1, keepdim=True)).double().numpy()
    nearest = [min(np.linalg.norm(u[i] - u[j]) for j in range(len(u)) if j != i) for i in range(len(u))]
    assert math.isclose(got, -np.mean(np.log(np.asarray(nearest) + 1e-8)), rel_tol=1e-5)
    assert float(dinov2.koleo_loss(x[:1])) == 0.0


def test_sinkhorn_knopp_rows_and_columns():
    logits = torch.randn(12, 6, generator=torch.Generator().manual_seed(3))
    q = dinov2.sinkhorn_knopp(logits, 0.5, iterations=3)
    assert torch.allclose(q.sum(1), torch.ones(12), atol=1e-5)          # every sample: a distribution
    ref = np.exp(logits.double().numpy() / 0.5).T                        # loop reference, float64
    ref /= ref.sum()
    for _ in range(3):
        for r in range(6):
            ref[r] /= ref[r].sum() * 6
        for c in range(12):
            ref[:, c] /= ref[:, c].sum() * 12
    assert np.allclose(q.numpy(), ref.T * 12, atol=1e-5)
    converged = dinov2.sinkhorn_knopp(logits, 0.5, iterations=200)
    assert torch.allclose(converged.sum(0), torch.full((6,), 2.0), rtol=1e-4)   # every prototype: B / K
    assert dinov2.sinkhorn_knopp(logits[:0], 0.5).shape == (0, 6)        # no masked patch on this rank


def test_dino_term_equals_the_dino_loss():
    g = torch.Generator().manual_seed(4)
    s_cls, t_cls = torch.randn(4 * 3, 10, generator=g), torch.randn(2 * 3, 10, generator=g)
    masks = torch.zeros(6, 4, dtype=torch.bool)
    masks[1, :2] = True
    patch = torch.randn(2, 10, generator=g)
    v2 = dinov2.DINOv2Loss(10, 4, 0.1, 0.1, 0.9, "ema", ibot_weight=1.0, koleo_weight=0.0)
    total, entropy, terms = v2((s_cls, patch, torch.randn(6, 3, generator=g)), (t_cls, patch.flip(0), None),
                               masks, 0.04, 0.05)
    dino_term, dino_entropies = dino.DINOLoss(10, 4, 0.1, 0.9)(s_cls, t_cls, 0.04)
    assert torch.allclose(terms["loss_dino"], dino_term) and torch.allclose(entropy, dino_entropies)
    q = torch.softmax(patch.flip(0) / 0.05, dim=-1)
    assert torch.allclose(terms["loss_ibot"], dinov2.ibot_loss(patch, q, masks, 0.1))
    assert torch.allclose(total, dino_term + terms["loss_ibot"])
    assert torch.allclose(v2.center, 0.1 * t_cls.mean(0, keepdim=True))
    assert torch.allclose(v2.ibot_center, 0.1 * patch.flip(0).mean(0, keepdim=True))


# ---------------------------------------------------------------------------------------------- the ViT options
def dinov2_layout_state_dict(dim=384, depth=12, grid=14, patch=16, registers=4, seed=5):
    """A ViT-S state dict with the DINOv2 key names, an RGB patch kernel and 4 registers (as the releases)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    sd = {"cls_token": r(1, 1, dim), "pos_embed": r(1, 1 + grid * grid, dim), "register_tokens": r(1, registers, dim),
          "mask_token": r(1, dim), "patch_embed.proj.weight": r(dim, 3, patch, patch), "patch_embed.proj.bias": r(dim),
          "norm.weight": r(dim), "norm.bias": r(dim)}
    for n in range(depth):
        for name, shape in (("norm1.weight", (dim,)), ("norm1.bias", (dim,)), ("attn.qkv.weight", (3 * dim, dim)),
                            ("attn.qkv.bias", (3 * dim,)), ("attn.proj.weight", (dim, dim)), ("attn.proj.bias", (dim,)),
                            ("ls1.gamma", (dim,)), ("norm2.weight", (dim,)), ("norm2.bias", (dim,)),
                            ("mlp.fc1.weight", (4 * dim, dim)), ("mlp.fc1.bias", (4 * dim,)),
                            ("mlp.fc2.weight", (dim, 4 * dim)), ("mlp.fc2.bias", (dim,)), ("ls2.gamma", (dim,))):
            sd[f"blocks.{n}.{name}"] = r(*shape)
    return sd


def test_dinov2_layout_loads_strictly_into_vit_small_with_registers_and_layerscale():
    sd = dinov2_layout_state_dict()
    vit = models.build_backbone("vit_small", 16, 224, registers=4, layerscale=1e-5, mask_token=True)
    assert set(vit.state_dict()) == set(sd)                                   # the same key layout, exactly
    weights.load_backbone_weights(vit, {"teacher": {f"backbone.{k}": v for k, v in sd.items()}})
    assert torch.equal(vit.patch_embed.proj.weight, sd["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert torch.equal(vit.blocks[3].ls2.gamma, sd["blocks.3.ls2.gamma"])
    assert torch.equal(vit.register_tokens, sd["register_tokens"]) and torch.equal(vit.mask_token, sd["mask_token"])
    x = torch.randn(2, 1, 64, 64)
    assert vit.forward_tokens(x).shape == (2, 1 + 4 + 16, 384)
    assert vit.get_features(x, avgpool=True).shape == (2, 768)
    # For evaluation the training-only mask token is dropped; anything else missing is an error.
    plain = models.build_backbone("vit_small", 16, 224, registers=4, layerscale=1e-5)
    weights.load_backbone_weights(plain, sd)
    assert torch.equal(plain.blocks[0].ls1.gamma, sd["blocks.0.ls1.gamma"])
    with pytest.raises(ValueError, match="unexpected 25"):      # register_tokens + 24 ls gammas
        weights.load_backbone_weights(models.build_backbone("vit_small", 16, 224), sd)


def test_masked_tokens_registers_and_default_layout():
    vit = models.build_backbone("vit_nano", 8, 32, registers=2, layerscale=0.1, mask_token=True)
    with torch.no_grad():
        vit.mask_token.fill_(3.0)
    x = torch.randn(2, 1, 32, 32)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, 5] = True
    tokens = vit.prepare_tokens(x, masks)
    plain = vit.prepare_tokens(x)
    assert tokens.shape == (2, 1 + 2 + 16, 96)
    changed = (tokens != plain).any(-1)
    assert changed[0, 3 + 5] and changed.sum() == 1                       # only the masked patch moved
    assert torch.allclose(tokens[0, 3 + 5] - vit.pos_embed[0, 1 + 5], torch.full((96,), 3.0))
    assert vit.flops_per_image(32) > models.build_backbone("vit_nano", 8, 32).flops_per_image(32)
    default = models.build_backbone("vit_nano", 8, 32)
    assert not any(k.startswith(("register", "mask")) or ".ls" in k for k in default.state_dict())


# ---------------------------------------------------------------------------------------------- runs
def test_dinov2_refuses_a_cnn_in_one_line(tmp_path, data_dir):
    cfg = write_config(tmp_path, data_dir, tmp_path / "cnn", **V2)
    done = run_pretrain(cfg, "model.arch=resnet50")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and "train.objective" in line and "model.arch" in line
    sink = run_pretrain(cfg, "train.objective=dino", "train.centering=sinkhorn")
    assert sink.returncode == 2 and "train.centering" in sink.stderr


def test_dinov2_run_resumes_bitwise_after_kill(tmp_path, data_dir):
    full_out, cut_out = tmp_path / "full", tmp_path / "cut"
    extra = {**V2, "train__ibot_separate_head": True}
    full_cfg = write_config(tmp_path, data_dir, full_out, **extra)
    cut_cfg = write_config(tmp_path, data_dir, cut_out, train__checkpoint_iters=2, **extra)
    done = run_pretrain(full_cfg)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = kill_at_first_checkpoint(cut_cfg, cut_out)
    assert 0 < torch.load(ckpt, weights_only=True)["iteration"] < 9
    resumed = run_pretrain(cut_cfg)
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-2000:]
    a, b = torch.load(full_out / "checkpoint.pt", weights_only=True), torch.load(ckpt, weights_only=True)
    assert a["iteration"] == b["iteration"] == 9
    for key in ("student", "teacher", "dino_loss"):
        assert state_hash(a[key]) == state_hash(b[key]), f"{key} differs after resume"
    assert {"center", "ibot_center"} == set(a["dino_loss"]) and a["dino_loss"]["ibot_center"].abs().sum() > 0
    assert any(k.startswith("ibot_head.") for k in a["teacher"]) and "backbone.mask_token" in a["teacher"]
    iters = [r for r in read_log(full_out) if "event" not in r]
    assert len(iters) == 9 and all(np.isfinite(r[k]) for r in iters
                                   for k in ("loss", "loss_dino", "loss_ibot", "loss_koleo", "loss_total"))
    assert all(r["loss"] == r["loss_dino"] and r["loss_ibot"] > 0 for r in iters)
    # The exported backbone and the checkpoint's teacher load for evaluation (mask token and iBOT head dropped).
    plain = models.build_backbone("vit_nano", 4, 32)
    weights.load_backbone_weights(plain, a)
    weights.load_backbone_weights(models.build_backbone("vit_nano", 4, 32), torch.load(full_out / "backbone.pt"))


def test_dinov2_sinkhorn_under_two_process_torchrun(tmp_path, data_dir):
    out = tmp_path / "ddp"
    cfg = write_config(tmp_path, data_dir, out, train__epochs=2, train__batch_size_per_gpu=4,
                       train__centering="sinkhorn", model__registers=1, model__layerscale=0.1, **V2)
    ck = two_rank_run(cfg, out)
    init = dino.build_student_teacher(config.load([cfg]), torch.device("cpu"))[1]
    assert ck["iteration"] == 6 and state_hash(ck["teacher"]) != state_hash(init.state_dict())
    assert not ck["dino_loss"]["center"].any()          # sinkhorn: the EMA centre is never used
    assert "backbone.register_tokens" in ck["teacher"] and "backbone.blocks.0.ls1.gamma" in ck["teacher"]


# ---------------------------------------------------------------------------------------------- wind direction
def test_angular_error_and_direction_probes():
    assert torch.allclose(probes.angular_error(torch.tensor([350.0, 10.0, 0.0]), torch.tensor([10.0, 350.0, 180.0])),
                          torch.tensor([20.0, 20.0, 180.0], dtype=torch.float64))
    assert float(probes.angular_error(torch.tensor([10.0]), torch.tensor([175.0]), period=180.0)) == 15.0
    rng = np.random.default_rng(6)
    theta = torch.from_numpy(rng.uniform(0, 360, 400))
    r = torch.deg2rad(theta)
    noise = torch.from_numpy(rng.normal(0, 0.05, (400, 3)))
    split = lambda X: [(X[a:b].float(), theta[a:b]) for a, b in ((0, 300), (300, 340), (340, 400))]  # noqa: E731
    sense = probes.direction_probes(*split(torch.cat([torch.stack([r.cos(), r.sin()], 1), noise], 1)), 20, 0.07)
    assert sense["linear"]["mae_deg"] < 5 and sense["knn"]["mae_deg"] < 10 and sense["linear"]["n"] == 60
    # Features that know only the axis (SAR's 180 deg ambiguity): the axis is found, the sense is a coin toss.
    axis = probes.direction_probes(*split(torch.cat([torch.stack([(2 * r).cos(), (2 * r).sin()], 1), noise], 1)),
                                   20, 0.07)
    assert axis["linear"]["mae_axis_deg"] < 5 and axis["linear"]["mae_deg"] > 45


def test_a_study_variant_can_set_the_objective():
    cfg = config.defaults()
    cfg["model"]["arch"] = "vit_small"
    over = study.variant_overrides("v2", {"prune.mode": "dynamic", "train.objective": "dinov2"}, cfg)
    assert over["train.objective"] == "dinov2"
    with pytest.raises(config.ConfigError, match="train.lr"):
        study.variant_overrides("lr", {"train.lr": 1.0}, cfg)
