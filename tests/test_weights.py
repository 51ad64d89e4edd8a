"""Tests of weights.py: every published layout loads strictly into our backbones, and DINO parity (position
embedding resampling, head init). Fixtures are state dicts built here with exactly the published key names and
shapes (random values): nothing is downloaded."""

import argparse
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from oceansar import model as M
from oceansar import resnet as resnets
from oceansar import vit as vits
from oceansar import weights
from helpers import ROOT, model_cfg, write_dataset

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def nano(img_size=64, patch_size=8, seed=0):
    return M.build_backbone("vit_nano", patch_size, img_size, 0.0, generator=gen(seed)).eval()


def eval_cfg(arch, patch_size=16, crops=256, **eval_keys):
    """helpers.model_cfg (a ResNet at torchvision's width) with some eval.* keys."""
    cfg = model_cfg(arch, patch_size, crops)
    cfg["eval"].update(eval_keys)
    return cfg


@pytest.fixture(scope="module")
def resnet():
    return M.build_backbone("resnet50", 16, 64, 0.0).eval()


@pytest.fixture(scope="module")
def release_state():
    """The OceanSAR-1-wind layout (one output): built once, tests copy it before changing it."""
    return transformers_resnet50(num_labels=1)


# ------------------------------------------------------------------------------ published layouts, built by hand

def conv_bn(sd, prefix, conv, bn, out_c, in_c, k, g):
    """A convolution's weight and a BatchNorm's five entries under the given names (random values, scaled so
    that 50 layers of them stay finite)."""
    sd[f"{prefix}{conv}.weight"] = torch.randn(out_c, in_c, k, k, generator=g) * math.sqrt(2 / (in_c * k * k))
    for name in BN_KEYS:
        sd[f"{prefix}{bn}.{name}"] = (torch.tensor(7) if name == "num_batches_tracked"
                                      else 0.2 * torch.rand(out_c, generator=g) + 0.4)


def transformers_resnet50(num_labels=1000, in_chans=1, depths=(3, 4, 6, 3), seed=0):
    """A ResNetForImageClassification state dict (transformers): `resnet.embedder.embedder.*`,
    `resnet.encoder.stages.{s}.layers.{i}.layer.{0,1,2}` (1x1 reduce, 3x3, 1x1 expand), `.shortcut` on the
    first layer of each stage, `classifier.1` the linear head on the pooled 2048-d feature."""
    g, sd = gen(seed), {}
    conv_bn(sd, "resnet.embedder.embedder.", "convolution", "normalization", 64, in_chans, 7, g)
    in_c = 64
    for s, (depth, out_c) in enumerate(zip(depths, (256, 512, 1024, 2048))):
        for i in range(depth):
            p = f"resnet.encoder.stages.{s}.layers.{i}."
            if i == 0:
                conv_bn(sd, p + "shortcut.", "convolution", "normalization", out_c, in_c, 1, g)
            for j, (o, c, k) in enumerate([(out_c // 4, in_c, 1), (out_c // 4, out_c // 4, 3), (out_c, out_c // 4, 1)]):
                conv_bn(sd, p + f"layer.{j}.", "convolution", "normalization", o, c, k, g)
            in_c = out_c
    sd["classifier.1.weight"] = torch.randn(num_labels, 2048, generator=g) * 0.01
    sd["classifier.1.bias"] = torch.randn(num_labels, generator=g)
    return sd


def transformers_resnet18(seed=0):
    """ResNetModel with layer_type "basic" (microsoft/resnet-18's layout): `layer.{0,1}` are two 3x3 convs, and
    the first stage (64 -> 64, stride 1) has no shortcut."""
    g, sd = gen(seed), {}
    conv_bn(sd, "embedder.embedder.", "convolution", "normalization", 64, 1, 7, g)
    in_c = 64
    for s, out_c in enumerate((64, 128, 256, 512)):
        for i in range(2):
            p = f"encoder.stages.{s}.layers.{i}."
            if i == 0 and s > 0:
                conv_bn(sd, p + "shortcut.", "convolution", "normalization", out_c, in_c, 1, g)
            conv_bn(sd, p + "layer.0.", "convolution", "normalization", out_c, in_c, 3, g)
            conv_bn(sd, p + "layer.1.", "convolution", "normalization", out_c, out_c, 3, g)
            in_c = out_c
    return sd


def hf_config(**changes):
    """config.json of galeio-research/OceanSAR-1 as transformers writes a ResNetConfig (1 channel, ResNet50)."""
    cfg = {"architectures": ["ResNetForImageClassification"], "model_type": "resnet", "num_channels": 1,
           "embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 4, 6, 3],
           "layer_type": "bottleneck", "hidden_act": "relu", "downsample_in_first_stage": False,
           "downsample_in_bottleneck": False, "torch_dtype": "float32"}
    cfg.update(changes)
    return cfg


def hf_folder(path, state, **config_changes):
    os.makedirs(path, exist_ok=True)
    save_file(state, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config(**config_changes), f)
    return str(path)


def lightly_checkpoint(student, teacher):
    """Galeio's lightly DINO checkpoint: `{student,teacher}_backbone.backbone.{0,1,4,5,6,7}.*` (an
    nn.Sequential of the torchvision ResNet's children), projection heads, in a Lightning-style container."""
    children = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    sd = {}
    for net, resnet_sd in (("student", student), ("teacher", teacher)):
        for key, value in resnet_sd.items():
            child, rest = key.split(".", 1)
            sd[f"{net}_backbone.backbone.{children[child]}.{rest}"] = value
        sd[f"{net}_head.layers.0.weight"] = torch.zeros(2048, 2048)
        sd[f"{net}_head.last_layer.weight_v"] = torch.zeros(65536, 256)
    return {"epoch": 164, "global_step": 1000, "state_dict": sd, "optimizer_states": [{"lr": 0.1}]}


# ------------------------------------------------------------------------------ transformers / Hugging Face

def test_hf_model_folder_loads_the_transformers_layout_strictly(tmp_path, release_state):
    state = release_state
    folder = hf_folder(tmp_path / "OceanSAR-1", state)
    backbone, spec, summary = weights.load_backbone(folder, eval_cfg("resnet50"))
    assert spec[0] == "resnet50"
    got = backbone.state_dict()
    pairs = {"conv1.weight": "resnet.embedder.embedder.convolution.weight",
             "bn1.running_var": "resnet.embedder.embedder.normalization.running_var",
             "layer1.0.downsample.0.weight": "resnet.encoder.stages.0.layers.0.shortcut.convolution.weight",
             "layer3.0.downsample.1.bias": "resnet.encoder.stages.2.layers.0.shortcut.normalization.bias",
             "layer2.3.conv2.weight": "resnet.encoder.stages.1.layers.3.layer.1.convolution.weight",
             "layer4.2.bn3.running_mean": "resnet.encoder.stages.3.layers.2.layer.2.normalization.running_mean",
             "layer3.5.bn1.num_batches_tracked": "resnet.encoder.stages.2.layers.5.layer.0.normalization."
                                                 "num_batches_tracked"}
    for ours, theirs in pairs.items():
        assert torch.equal(got[ours], state[theirs]), ours
    # Every tensor but the classifier lands somewhere, and the summary names what was left out.
    assert len(got) == len(state) - 2
    assert summary == f"loaded {len(got)} tensors; left out classifier.* (2)"


def test_hf_config_that_describes_another_network_is_refused_in_one_line(tmp_path, release_state):
    folder = hf_folder(tmp_path / "deep", release_state, depths=[3, 4, 23, 3])
    with pytest.raises(weights.WeightsError, match=re.escape("config.json: depths=[3, 4, 23, 3] does not match model.arch="
                                                             "resnet50 at model.width=64 (depths=[3, 4, 6, 3])")) as err:
        weights.load_backbone(folder, eval_cfg("resnet50"))
    assert "\n" not in str(err.value)
    with pytest.raises(weights.WeightsError, match="downsample_in_bottleneck=True"):
        weights.load_backbone(hf_folder(tmp_path / "msra", release_state, downsample_in_bottleneck=True),
                              eval_cfg("resnet50"))
    with pytest.raises(weights.WeightsError, match="describes a transformers ResNet but model.arch=vit_small"):
        weights.load_backbone(folder, eval_cfg("vit_small"))
    with pytest.raises(weights.WeightsError, match="model_type 'vit'"):
        weights.load_backbone(hf_folder(tmp_path / "vit", {"x": torch.zeros(1)}, model_type="vit"),
                              eval_cfg("resnet50"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(weights.WeightsError, match="not a Hugging Face model folder: no config.json, model.safetensors"):
        weights.load_backbone(str(tmp_path / "empty"), eval_cfg("resnet50"))


def test_hf_resnet18_basic_layout_loads_into_resnet18(tmp_path):
    state = transformers_resnet18()
    folder = hf_folder(tmp_path / "resnet-18", state, depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
                       layer_type="basic")
    backbone, spec, summary = weights.load_backbone(folder, eval_cfg("resnet18"))
    got = backbone.state_dict()
    assert torch.equal(got["layer3.1.conv2.weight"], state["encoder.stages.2.layers.1.layer.1.convolution.weight"])
    assert torch.equal(got["layer2.0.downsample.1.running_var"],
                       state["encoder.stages.1.layers.0.shortcut.normalization.running_var"])
    assert summary == f"loaded {len(state)} tensors; left out nothing"
    with pytest.raises(weights.WeightsError, match=re.escape("depths=[2, 2, 2, 2] does not match model.arch=resnet50")):
        weights.load_backbone(folder, eval_cfg("resnet50"))


def test_rgb_hf_release_sums_its_stem_and_a_lost_tensor_is_named(tmp_path):
    state = transformers_resnet50(in_chans=3)
    folder = hf_folder(tmp_path / "rgb", state, num_channels=3)
    backbone, _, _ = weights.load_backbone(folder, eval_cfg("resnet50"))
    torch.testing.assert_close(backbone.conv1.weight,
                               state["resnet.embedder.embedder.convolution.weight"].sum(1, keepdim=True))
    del state["resnet.encoder.stages.1.layers.2.layer.1.normalization.weight"]
    save_file(state, str(tmp_path / "partial.safetensors"))         # a bare .safetensors file: no config check
    with pytest.raises(weights.WeightsError, match=r"missing 1 \[layer2\.2\.bn2\.weight\]; unexpected 0"):
        weights.load_backbone(str(tmp_path / "partial.safetensors"), eval_cfg("resnet50"))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(weights.WeightsError, match="not a readable .safetensors file"):
        weights.load_backbone(str(tmp_path / "junk.safetensors"), eval_cfg("resnet50"))


def test_release_head_reads_classifier_1(tmp_path, release_state):
    state = release_state
    folder = hf_folder(tmp_path / "OceanSAR-1-wind", state)
    W, b = weights.release_head(folder)
    assert torch.equal(W, state["classifier.1.weight"]) and torch.equal(b, state["classifier.1.bias"])
    save_file({"conv1.weight": torch.zeros(64, 1, 7, 7)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(weights.WeightsError, match="needs the linear head classifier.1.weight"):
        weights.release_head(str(tmp_path / "bare.safetensors"))


# ------------------------------------------------------------------------------ lightly DINO (.pth.tar)

def test_lightly_checkpoint_loads_the_teacher_or_the_named_network(tmp_path, resnet):
    teacher = {k: v for k, v in resnets.resnet50(generator=gen(1)).state_dict().items()}
    student = {k: torch.zeros_like(v) for k, v in teacher.items()}
    path = str(tmp_path / "checkpoint_164_linear=75.50_knn=73.15.pth.tar")
    torch.save(lightly_checkpoint(student, teacher), path)
    backbone, _, summary = weights.load_backbone(path, eval_cfg("resnet50"))
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in teacher.items())
    n = len(teacher)
    assert summary == (f"loaded {n} tensors; left out student_backbone.* ({n}), student_head.* (2), "
                       f"teacher_head.* (2)")
    backbone, _, summary = weights.load_backbone(path, eval_cfg("resnet50", weights_key="student_backbone"))
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in student.items())
    assert "teacher_backbone.*" in summary
    with pytest.raises(weights.WeightsError, match=r"weights_key=ema: no container or key prefix.*student_backbone"):
        weights.load_backbone(path, eval_cfg("resnet50", weights_key="ema"))
    # Something that is neither backbone nor a known head is listed, and nothing loads.
    ck = lightly_checkpoint(student, teacher)
    ck["state_dict"]["teacher_backbone.backbone.4.0.se.fc.weight"] = torch.zeros(4, 4)
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    with pytest.raises(weights.WeightsError, match=r"unexpected 1 \[layer1\.0\.se\.fc\.weight\]"):
        weights.load_backbone_weights(resnet, ck)
    assert all(torch.equal(before[k], v) for k, v in resnet.state_dict().items())


def test_weights_key_picks_a_container_of_a_dino_checkpoint():
    teacher, student = nano(seed=1), nano(seed=2)
    ck = {"teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()},
          "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()}}
    target = nano(seed=3)
    weights.load_backbone_weights(target, ck)
    assert torch.equal(target.pos_embed, teacher.pos_embed)
    weights.load_backbone_weights(target, ck, weights_key="student")
    assert torch.equal(target.pos_embed, student.pos_embed)
    with pytest.raises(weights.WeightsError, match="weights_key=ema"):
        weights.load_backbone_weights(target, ck, weights_key="ema")


# ------------------------------------------------------------------------------ torchvision, DINO, this project

def test_load_prefixed_checkpoint_and_pos_embed_resize():
    source = nano(img_size=32, seed=1)
    target = nano(img_size=64, seed=2)
    ckpt = {"epoch": 3, "teacher": {f"module.backbone.{k}": v for k, v in source.state_dict().items()}}
    ckpt["teacher"]["module.head.last_layer.weight_g"] = torch.ones(4, 1)
    weights.load_backbone_weights(target, ckpt)
    torch.testing.assert_close(target.blocks[2].mlp.fc2.weight, source.blocks[2].mlp.fc2.weight)
    assert target.pos_embed.shape == (1, 65, 96)
    torch.testing.assert_close(target.pos_embed, vits.resize_pos_embed(source.pos_embed, (8, 8)))
    other = nano(img_size=64, seed=3)
    weights.load_backbone_weights(other, {"state_dict": {f"backbone.module._orig_mod.{k}": v
                                                         for k, v in target.state_dict().items()}})
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), target.state_dict().values()))


def test_load_sums_three_channel_first_conv(resnet):
    sd = dict(nano(seed=1).state_dict())
    rgb = torch.randn(96, 3, 8, 8)
    sd["patch_embed.proj.weight"] = rgb
    sd["head.weight"], sd["head.bias"] = torch.zeros(1000, 96), torch.zeros(1000)   # timm classifier: dropped
    target = nano(seed=2)
    assert weights.load_backbone_weights(target, sd).endswith("left out head.* (2)")
    torch.testing.assert_close(target.patch_embed.proj.weight, rgb.sum(1, keepdim=True))
    tv = {k: v.clone() for k, v in resnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    tv["conv1.weight"] = torch.randn(64, 3, 7, 7)
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    r2 = resnets.resnet50()
    weights.load_backbone_weights(r2, tv)
    torch.testing.assert_close(r2.conv1.weight, tv["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(r2.layer2[1].conv2.weight, resnet.layer2[1].conv2.weight)
    assert r2.bn1.num_batches_tracked.item() == 0


def test_load_wrong_dict_raises_listing_keys_and_loads_nothing(resnet):
    target = nano(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    sd = dict(nano(seed=1).state_dict())
    del sd["norm.weight"]
    sd["foo.bar"] = torch.zeros(3)
    with pytest.raises(weights.WeightsError) as err:
        weights.load_backbone_weights(target, sd)
    msg = str(err.value)
    assert "norm.weight" in msg and "foo.bar" in msg and "missing 1" in msg and "unexpected 1" in msg
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    with pytest.raises(weights.WeightsError, match=re.escape("more)")) as err:
        weights.load_backbone_weights(target, resnet.state_dict())
    assert len(str(err.value)) < 2000
    tiny_sd = M.build_backbone("vit_tiny", 8, 64, 0.0).state_dict()
    with pytest.raises(weights.WeightsError, match="shape mismatch"):
        weights.load_backbone_weights(target, {k: v for k, v in tiny_sd.items() if not k.startswith("blocks.")})
    with pytest.raises(weights.WeightsError, match="state dict"):
        weights.load_backbone_weights(target, [1, 2, 3])
    with pytest.raises(weights.WeightsError, match="top-level keys"):
        weights.load_backbone_weights(target, {"epoch": 3, "args": None})


def test_torchvision_resnet50_with_rgb_conv1_and_module_prefix_loads():
    rgb = resnets.resnet50(in_chans=3, generator=gen(1)).state_dict()
    release = {f"module.{k}": v for k, v in rgb.items() if not k.endswith("num_batches_tracked")}
    release.update({"module.fc.weight": torch.zeros(1000, 2048), "module.fc.bias": torch.zeros(1000)})
    backbone, spec, _ = weights.backbone_from_weights(release, eval_cfg("resnet50"))
    state = backbone.state_dict()
    assert spec[0] == "resnet50" and backbone.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.equal(state["conv1.weight"], rgb["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(state["layer4.2.bn3.running_var"], rgb["layer4.2.bn3.running_var"])


def test_dino_vit_checkpoint_with_teacher_backbone_prefixes_and_head_loads_at_its_own_grid():
    rgb = vits.vit("vit_nano", patch_size=8, img_size=32, in_chans=3, generator=gen(2))
    teacher = {f"backbone.{k}": v for k, v in rgb.state_dict().items()}
    teacher.update({"head.mlp.0.weight": torch.zeros(8, 96), "head.last_layer.weight_g": torch.ones(16, 1)})
    student = {f"module.{k}": torch.zeros_like(v) for k, v in teacher.items()}
    checkpoint = {"student": student, "teacher": teacher, "epoch": 3, "args": argparse.Namespace(arch="vit_small")}
    backbone, spec, _ = weights.backbone_from_weights(checkpoint, eval_cfg("vit_nano", 8, crops=256))
    assert spec == ("vit_nano", 8, 32)                      # built at the stored 4x4 grid, not at 256 px
    assert torch.equal(backbone.pos_embed, rgb.pos_embed)   # teacher weights, not the zero student
    assert torch.equal(backbone.patch_embed.proj.weight, rgb.patch_embed.proj.weight.sum(1, keepdim=True))


def test_weights_of_another_architecture_fail_with_the_key_lists(tmp_path):
    path = str(tmp_path / "resnet.pth")
    torch.save({"conv1.weight": torch.zeros(64, 1, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}, path)
    with pytest.raises(weights.WeightsError, match=r"resnet\.pth \(vit_nano\).*missing 54 \[blocks\.0\.attn.*"
                                                   r"unexpected 2 \[conv1\.weight, layer1\.0\.conv1\.weight\]"):
        weights.load_backbone(path, eval_cfg("vit_nano", 8))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(weights.WeightsError, match="not a readable torch checkpoint"):
        weights.load_backbone(str(tmp_path / "junk.pt"), eval_cfg("vit_nano", 8))
    with pytest.raises(weights.WeightsError, match="does not exist"):
        weights.load_backbone(str(tmp_path / "nowhere.pt"), eval_cfg("vit_nano", 8))


# ------------------------------------------------------------------------------ DINO parity

def dino_interpolate_pos_encoding(pos_embed, h, w, patch):
    """facebookresearch/dino VisionTransformer.interpolate_pos_encoding, restated: bicubic with
    scale_factor = (grid + 0.1) / sqrt(N) per axis (h, then w)."""
    n = pos_embed.shape[1] - 1
    h0, w0 = h // patch, w // patch
    if h0 * w0 == n and h == w:
        return pos_embed
    side, dim = int(math.sqrt(n)), pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / math.sqrt(n), (w0 + 0.1) / math.sqrt(n)), mode="bicubic")
    assert grid.shape[-2:] == (h0, w0)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def dino_reference_features(vit, x):
    """DINO's forward (prepare_tokens with its resampling, the blocks, the norm, CLS) on our modules."""
    tokens = torch.cat([vit.cls_token.expand(len(x), -1, -1), vit.patch_embed(x)], dim=1)
    tokens = tokens + dino_interpolate_pos_encoding(vit.pos_embed, x.shape[-2], x.shape[-1], vit.patch_size)
    for block in vit.blocks:
        tokens = block(tokens)
    return vit.norm(tokens)[:, 0]


@pytest.mark.parametrize("built", [224, 256])
def test_vit_small_features_equal_dino_reference_at_96_224_256(built):
    vit = M.build_backbone("vit_small", 16, built, 0.0, generator=gen(0)).eval()
    with torch.no_grad():
        vit.pos_embed.normal_(generator=gen(1))      # a pos_embed with structure at every scale, like a trained one
        for side in (96, 224, 256):
            x = torch.randn(1, 1, side, side, generator=gen(side))
            torch.testing.assert_close(vit(x), dino_reference_features(vit, x), atol=1e-5, rtol=0)
        x = torch.randn(1, 1, 96, 160, generator=gen(5))        # non-square: each axis has its own scale
        torch.testing.assert_close(vit(x), dino_reference_features(vit, x), atol=1e-5, rtol=0)


def test_size_based_resampling_is_not_dinos():
    """The resampling DINO uses is a different function from interpolating to a size (what this project did):
    the parity above is not automatic."""
    pos = torch.randn(1, 1 + 14 * 14, 8, generator=gen(0))
    ours = vits.resize_pos_embed(pos, (6, 6))
    grid = pos[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(6, 6), mode="bicubic").permute(0, 2, 3, 1).reshape(1, -1, 8)
    assert (ours[:, 1:] - by_size).abs().max() > 1e-2


def test_dino_head_last_layer_v_has_dinos_row_norm():
    """DINO builds the last layer as a default nn.Linear: v ~ U(+-1/sqrt(bottleneck)), row norm sqrt(1/3)."""
    head = M.DINOHead(384, 4096, hidden_dim=64, bottleneck_dim=256, generator=gen(0))
    v = head.last_layer.parametrizations.weight.original1
    bound = 1 / math.sqrt(256)
    assert v.abs().max() <= bound and v.abs().max() > 0.99 * bound
    assert v.norm(dim=1).mean().item() == pytest.approx(math.sqrt(1 / 3), rel=0.02)
    reference = torch.nn.Linear(256, 4096, bias=False).weight
    assert v.norm(dim=1).mean().item() == pytest.approx(reference.norm(dim=1).mean().item(), rel=0.02)
    torch.testing.assert_close(head.last_layer.weight, v / v.norm(dim=1, keepdim=True))


# ------------------------------------------------------------------------------ the evaluate.py command

def test_evaluate_cli_on_a_hf_folder_with_its_release_head(tmp_path, release_state):
    rng = np.random.default_rng(0)
    wind = rng.uniform(2, 20, 80)
    images = -25 + wind[:, None, None, None] + rng.standard_normal((80, 1, 32, 32))
    reg = write_dataset(tmp_path / "reg", images, wind=wind, incidence=np.full(80, 35.0))
    folder = hf_folder(tmp_path / "OceanSAR-1-wind", release_state)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, os.path.join(ROOT, "evaluate.py"), os.path.join(ROOT, "configs", "resnet50.yaml"),
            f"checkpoint={folder}", "eval.classification=", f"eval.regression={reg}", "eval.baselines=false",
            "eval.device=cpu", "eval.bootstrap=0"]
    proc = subprocess.run(base + [f"out={tmp_path / 'eval'}", "eval.release_head=wind"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "left out classifier.* (2)" in proc.stdout
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["arch"] == "resnet50" and report["feature_dim"] == 2048
    release = report["results"]["pretrained"]["wind"]["release"]
    assert set(release) == {"rmse", "bias", "r2", "n"}
    assert release["n"] == report["results"]["pretrained"]["wind"]["linear"]["n"] > 0     # the same test split
    # A config.json for another network: exit 1, one line, no traceback.
    bad = hf_folder(tmp_path / "bad", {"x": torch.zeros(1)}, hidden_sizes=[64, 128, 256, 512])
    proc = subprocess.run(base[:3] + [f"checkpoint={bad}", f"eval.regression={reg}", "eval.classification="],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "hidden_sizes=[64, 128, 256, 512]" in proc.stderr
