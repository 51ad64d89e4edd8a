"""Tests for model.py, vit.py, resnet.py and backbone.py: backbones, DINO head, multi-crop wrapper, FLOP formulas
(CPU, small); weight loading: test_weights.py."""

import copy
import math

import pytest
import torch
import torch.nn as nn

from oceansar import backbone as backbones
from oceansar import config
from oceansar import model as M
from oceansar import resnet as resnets
from oceansar import vit as vits


def gen(seed):
    return torch.Generator().manual_seed(seed)


def nano(img_size=64, patch_size=8, drop_path=0.0, seed=0):
    return M.build_backbone("vit_nano", patch_size, img_size, drop_path, generator=gen(seed)).eval()


@pytest.fixture(scope="module")
def resnet():
    return M.build_backbone("resnet50", 16, 64, 0.0).eval()


# ---------------------------------------------------------------------------------------------------- ViT


def test_archs_and_unknown_arch():
    assert set(M.ARCHS) == {"vit_nano", "vit_tiny", "vit_small", "vit_base", "resnet18", "resnet50"}
    with pytest.raises(ValueError, match="vit_huge"):
        M.build_backbone("vit_huge", 16, 224, 0.0)


def test_vit_nano_and_tiny_shapes():
    x = torch.randn(2, 1, 64, 64)
    b = nano()
    assert b.embed_dim == 96
    assert b(x).shape == (2, 96)
    assert b.get_features(x, n_last_blocks=4, avgpool=True).shape == (2, b.feature_dim(4, True)) == (2, 5 * 96)
    tiny = M.build_backbone("vit_tiny", 16, 32, 0.1).eval()
    assert tiny.embed_dim == 192 and len(tiny.blocks) == 12 and tiny.blocks[0].attn.num_heads == 3
    assert tiny(torch.randn(1, 1, 32, 32)).shape == (1, 192)


def test_vit_get_features_last_block_equals_forward():
    b, x = nano(), torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(b.get_features(x), b(x))
        two = b.get_features(x, n_last_blocks=2, avgpool=True)
    torch.testing.assert_close(two[:, 96:192], b(x))       # last block's CLS comes second
    with pytest.raises(ValueError, match="n_last_blocks"):
        b.get_features(x, n_last_blocks=5)


def test_vit_key_layout():
    keys = set(nano().state_dict())
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "norm.weight", "norm.bias"}
    for i in range(4):
        for sub in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{sub}.weight", f"blocks.{i}.{sub}.bias"}
    assert keys == expected


def test_vit_small_and_base_param_counts():
    with torch.device("meta"):                              # shapes only: counting needs no weights
        small = M.build_backbone("vit_small", 16, 224, 0.1)
        base = M.build_backbone("vit_base", 16, 224, 0.1)
    d, n_tok = 384, 1 + 14 * 14
    per_block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d
    expected = 16 * 16 * d + d + d + n_tok * d + 12 * per_block + 2 * d
    assert backbones.count_params(small) == expected == 21_469_056
    assert abs(backbones.count_params(small) - 21.5e6) / 21.5e6 < 0.01
    assert small.blocks[0].norm1.eps == 1e-6 and small.blocks[0].attn.qkv.bias is not None
    assert base.embed_dim == 768 and 85e6 < backbones.count_params(base) < 86.5e6
    with torch.no_grad():
        for arch, dim in [("vit_small", 384), ("vit_base", 768)]:
            real = M.build_backbone(arch, 16, 32, 0.1).eval()
            assert real(torch.randn(1, 1, 32, 32)).shape == (1, dim)


def test_pos_embed_interpolation_other_sizes():
    b = nano(img_size=64)
    with torch.no_grad():
        for hw in [(32, 32), (96, 96), (48, 40)]:
            assert b(torch.randn(2, 1, *hw)).shape == (2, 96)
    assert vits.resize_pos_embed(b.pos_embed, (8, 8)) is b.pos_embed
    # Bicubic resampling of a constant-per-channel grid keeps it constant; the CLS slot is untouched.
    const = torch.cat([torch.full((1, 1, 3), 7.0), torch.arange(3.0).expand(1, 64, 3)], dim=1)
    out = vits.resize_pos_embed(const, (3, 5))
    assert out.shape == (1, 16, 3)
    torch.testing.assert_close(out[0, 0], torch.full((3,), 7.0))
    torch.testing.assert_close(out[0, 1:], torch.arange(3.0).expand(15, 3))


def test_bad_input_channels_raise():
    with pytest.raises(ValueError, match="expects input"):
        nano()(torch.randn(1, 3, 64, 64))


def test_init_is_deterministic_per_generator():
    a, b, c = nano(seed=1), nano(seed=1), nano(seed=2)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)


def test_drop_path_train_vs_eval():
    x = torch.randn(4, 1, 64, 64)
    dropped, plain = nano(drop_path=0.5), nano(drop_path=0.0)
    assert dropped.blocks[0].drop_path.drop_prob == 0.0 and dropped.blocks[-1].drop_path.drop_prob == 0.5
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), plain(x))   # eval: identity, same weights (same generator)
        dropped.train()
        torch.manual_seed(0)
        assert not torch.allclose(dropped(x), dropped(x))
    # Per sample: every sample is either zeroed or scaled by 1/keep, never partially.
    y = torch.ones(64, 5, 7)
    torch.manual_seed(0)
    out = backbones.drop_path(y, 0.25, training=True)
    per_sample = out.flatten(1)
    assert torch.all((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(4 / 3)).all(1))
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    assert torch.equal(backbones.drop_path(y, 0.25, training=False), y)


# ------------------------------------------------------------------------------------------------- ResNet


def test_resnet18_torchvision_layout_and_width():
    r18 = M.build_backbone("resnet18")
    keys = set(r18.state_dict())
    for k in ["conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer1.1.bn2.bias",
              "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_mean", "layer4.1.conv2.weight"]:
        assert k in keys, k
    assert "layer1.0.downsample.0.weight" not in keys and not any(".conv3." in k for k in keys)
    # torchvision's resnet18 has 11,689,512 parameters: minus fc (513,000) and 2 of conv1's 3 input channels
    assert backbones.count_params(r18) == 11_689_512 - 513_000 - 2 * 64 * 49 and r18.embed_dim == 512
    narrow = M.build_backbone("resnet18", width=16)
    assert set(narrow.state_dict()) == keys and narrow.embed_dim == 128
    assert narrow.layer3[0].conv1.weight.shape == (64, 32, 3, 3)
    with torch.no_grad():
        assert narrow(torch.randn(2, 1, 48, 48)).shape == (2, 128)
    assert narrow.flops_per_image(48) == _hooked_matmul_flops(narrow, 48)


@pytest.mark.parametrize("stem, conv1, first_map", [("imagenet", (8, 1, 7, 7), 8), ("half", (8, 1, 3, 3), 16),
                                                    ("cifar", (8, 1, 3, 3), 32)])
def test_resnet_stems_keep_the_key_layout(stem, conv1, first_map):
    assert tuple(resnets.RESNET_STEM_LAYOUT) == config.RESNET_STEMS  # the config's choices are the stems the model builds
    net = M.build_backbone("resnet18", width=8, stem=stem)
    assert set(net.state_dict()) == set(M.build_backbone("resnet18", width=8).state_dict())
    assert net.conv1.weight.shape == conv1
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert net.maxpool(net.relu(net.bn1(net.conv1(x)))).shape[-1] == first_map
        assert net(x).shape == (2, 64)
    assert net.flops_per_image(48) == _hooked_matmul_flops(net, 48)
    with pytest.raises(ValueError, match="stem"):
        M.build_backbone("resnet18", stem="tiny")


def test_resnet50_layout_params_shape(resnet):
    keys = set(resnet.state_dict())
    for k in ["conv1.weight", "bn1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.bn3.bias",
              "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight", "layer3.5.conv2.weight",
              "layer4.2.conv3.weight", "layer4.0.downsample.1.running_var"]:
        assert k in keys, k
    assert not any(k.startswith("fc.") for k in keys) and "layer1.1.downsample.0.weight" not in keys
    assert len([k for k in keys if k.endswith("conv1.weight") and k.startswith("layer")]) == 16
    assert resnet.conv1.weight.shape == (64, 1, 7, 7)
    assert backbones.count_params(resnet) == 23_501_760
    assert abs(backbones.count_params(resnet) - 23.5e6) / 23.5e6 < 0.01
    assert resnet.embed_dim == 2048
    with torch.no_grad():
        x = torch.randn(2, 1, 32, 32)
        assert resnet(x).shape == (2, 2048)
        torch.testing.assert_close(resnet.get_features(x, n_last_blocks=4, avgpool=True), resnet(x))


# -------------------------------------------------------------------------------------------------- FLOPs


def _hooked_matmul_flops(backbone, img_size):
    """Independent count: 2 * MACs of every conv/linear from the real output shapes, + ViT attention."""
    macs = []

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            macs.append(out.numel() * k)
        else:
            macs.append(out.numel() * mod.in_features)

    x = torch.zeros(1, 1, img_size, img_size)
    with torch.no_grad():
        tokens = backbone.prepare_tokens(x).shape[1] if hasattr(backbone, "blocks") else 0
    handles = [m.register_forward_hook(hook) for m in backbone.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        backbone(x)
    for h in handles:
        h.remove()
    attention = len(getattr(backbone, "blocks", [])) * 2 * tokens * tokens * getattr(backbone, "embed_dim", 0)
    return 2 * (sum(macs) + attention)


def test_flops_match_hooked_count(resnet):
    b = nano()
    assert b.flops_per_image(64) == _hooked_matmul_flops(b, 64)
    assert resnet.flops_per_image(64) == _hooked_matmul_flops(resnet, 64)
    assert resnet.flops_per_image((64, 64)) == resnet.flops_per_image(64)
    # Published orders of magnitude: ViT-S/16 ~4.6 GMACs, ResNet50 ~4.1 GMACs at 224 px.
    with torch.device("meta"):
        small = M.build_backbone("vit_small", 16, 224, 0.0)
    assert 2 * 4.4e9 < small.flops_per_image(224) < 2 * 4.7e9
    assert 2 * 3.9e9 < resnet.flops_per_image(224) < 2 * 4.2e9

    class NoFormula(backbones.Backbone):  # the protocol names what a new backbone forgot
        embed_dim = 2
    with pytest.raises(NotImplementedError, match="FLOP formula"):
        NoFormula().flops_per_image(64)


# --------------------------------------------------------------------------------------------------- Head


def test_dino_head_weight_norm_and_frozen_magnitude():
    head = M.DINOHead(96, 512, hidden_dim=64, bottleneck_dim=32, nlayers=3)
    g = head.last_layer.parametrizations.weight.original0
    assert torch.equal(g, torch.ones(512, 1)) and not g.requires_grad
    assert head.last_layer.bias is None
    assert "last_layer.parametrizations.weight.original1" in head.state_dict()
    w = head.last_layer.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(512))
    x = torch.randn(8, 96)
    out = head(x)
    assert out.shape == (8, 512)
    assert out.abs().max() <= 1 + 1e-5                      # cosine similarities of unit vectors
    torch.testing.assert_close(out, nn.functional.normalize(head.mlp(x), dim=-1) @ w.t())
    # A training step moves the directions, never the frozen magnitude.
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(x).pow(2).sum().backward()
    assert g.grad is None and head.last_layer.parametrizations.weight.original1.grad is not None
    opt.step()
    assert torch.equal(g, torch.ones(512, 1))
    assert head.flops_per_sample() == 2 * (96 * 64 + 64 * 64 + 64 * 32 + 32 * 512)


def test_dino_head_trainable_magnitude_and_one_layer():
    head = M.DINOHead(16, 10, nlayers=1, norm_last_layer=False)
    assert head.last_layer.parametrizations.weight.original0.requires_grad
    assert [type(m) for m in head.mlp] == [nn.Linear] and head.mlp[0].out_features == 256
    with pytest.raises(ValueError, match="nlayers"):
        M.DINOHead(16, 10, nlayers=0)


# ------------------------------------------------------------------------------------------ Multi-crop


def test_multicrop_equals_separate_runs_with_one_pass_per_resolution():
    b = nano()
    wrapper = M.MultiCropWrapper(b, M.DINOHead(96, 64, hidden_dim=32, bottleneck_dim=16)).eval()
    crops = [torch.randn(3, 1, 64, 64) for _ in range(2)] + [torch.randn(3, 1, 32, 32) for _ in range(3)]
    calls = []
    handle = b.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    with torch.no_grad():
        out, feats = wrapper(crops, return_backbone_features=True)
    handle.remove()
    assert calls == [6, 9]
    assert out.shape == (15, 64) and feats.shape == (15, 96)
    with torch.no_grad():
        separate = torch.cat([wrapper.head(b(c)) for c in crops])
    torch.testing.assert_close(out, separate, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(wrapper(crops[0]), separate[:3], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        wrapper([])


def test_wrapper_deepcopy_teacher_is_independent():
    student = M.MultiCropWrapper(nano(), M.DINOHead(96, 64, hidden_dim=32, bottleneck_dim=16))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        teacher.head.last_layer.parametrizations.weight.original1.add_(1.0)
    assert not torch.equal(teacher.head.last_layer.weight, student.head.last_layer.weight)
    assert set(teacher.state_dict()) == set(student.state_dict())


# ---------------------------------------------------------------------------------------------------- GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_multicrop_matches_fp32():
    wrapper = M.MultiCropWrapper(nano(), M.DINOHead(96, 64, hidden_dim=32, bottleneck_dim=16)).cuda().eval()
    crops = [torch.randn(4, 1, 64, 64, device="cuda")] * 2 + [torch.randn(4, 1, 32, 32, device="cuda")] * 2
    with torch.no_grad():
        ref = wrapper(crops)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = wrapper(crops)
    assert out.shape == ref.shape and math.isfinite(out.float().abs().max().item())
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
