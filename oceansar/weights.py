"""Weight files -> backbones: this project's checkpoints and every published layout, loaded strictly.

Manual
------
    from oceansar import weights
    backbone, (arch, patch, img), summary = weights.load_backbone(path, cfg)   # a file or a HF model folder
    summary = weights.load_backbone_weights(backbone, state_or_checkpoint)      # strict, or WeightsError
    W, b = weights.release_head(path)                                           # classifier.1 of a hub head

What `path` may be (README, "Published weights"):
- pretrain.py's checkpoint.pt (teacher backbone; the architecture comes from the config saved in it) or
  backbone.pt; a DINO (facebookresearch) checkpoint {'student', 'teacher', ...} or a bare timm/DINO ViT state
  dict; a torchvision ResNet state dict. Read with torch.load(weights_only=True): no pickled code runs.
- a `.safetensors` file holding any of the layouts below.
- a Hugging Face model folder (config.json + model.safetensors), e.g. galeio-research/OceanSAR-1: its
  config.json must describe the configured ResNet (num_channels, depths, hidden_sizes, embedding_size, layer
  type and stride placement), else one line says which key differs.

Key layouts mapped onto this project's (torchvision / DINO-timm) names:
- transformers ResNetModel / ResNetForImageClassification: [resnet.]embedder.embedder.{convolution,
  normalization} -> conv1 / bn1; encoder.stages.{s}.layers.{i}.layer.{j}.{convolution,normalization} ->
  layer{s+1}.{i}.conv{j+1} / bn{j+1}; ...layers.{i}.shortcut.{convolution,normalization} -> downsample.{0,1}.
- lightly DINO (Galeio's earlier checkpoints): {student,teacher}_backbone.[backbone.]{0,1,4,5,6,7}.* is an
  nn.Sequential of the torchvision ResNet's children: 0 conv1, 1 bn1, 4..7 layer1..layer4.
- `module.`, `backbone.`, `teacher.`, `_orig_mod.` prefixes are stripped; containers 'teacher', 'state_dict',
  'model', 'backbone' are descended (teacher first).
Which network: the teacher (the 'teacher' container or the teacher_backbone.* keys), unless `weights_key`
(eval.weights_key) names a container or a key prefix, e.g. `student` or `student_backbone`.

Strict: after mapping, every backbone key must be matched with the right shape. Known heads (`head.`, `fc.`,
`classifier.`, `student_head.`, `teacher_head.`) and the other network of a student/teacher pair are left out
and named in the summary; anything else left over is an error that lists it. An RGB first layer is summed into
the 1-channel one (the paper's recipe); a ViT position embedding is resampled to the model's grid like DINO.
"""

import argparse
import json
import math
import os
import re
from collections.abc import Mapping

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import UserError
from . import model as models
from . import vit

CONTAINER_KEYS = ("teacher", "state_dict", "model", "backbone")
PREFIXES = ("module.", "backbone.", "teacher.", "_orig_mod.")
HEAD_PREFIXES = ("head.", "ibot_head.", "fc.", "classifier.", "student_head.", "teacher_head.")
TRAINING_ONLY = ("mask_token",)   # used only by masked-image training (DINOv2): dropped when the model has none
NETWORK_PREFIXES = ("teacher_backbone.", "student_backbone.")      # lightly: the teacher is preferred
FIRST_CONVS = ("patch_embed.proj.weight", "conv1.weight")
LIGHTLY_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
HF_FILES = ("config.json", "model.safetensors")
RELEASE_HEAD = ("classifier.1.weight", "classifier.1.bias")

_TRANSFORMERS_STEM = re.compile(r"^(?:resnet\.)?embedder\.embedder\.(convolution|normalization)\.(.+)$")
_TRANSFORMERS_BLOCK = re.compile(
    r"^(?:resnet\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.(?:layer\.(\d+)|(shortcut))\.(convolution|normalization)\.(.+)$")


class WeightsError(UserError, ValueError):
    """Weights that cannot be read or do not fit the configured backbone (one line for the user, exit 1)."""


# ----------------------------------------------------------------------------------------------- reading files

def read_weights(path):
    """(mapping of the file's contents, the HF config.json dict or None) for a file or a HF model folder."""
    if os.path.isdir(path):
        missing = [f for f in HF_FILES if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise WeightsError(f"{path} is a folder but not a Hugging Face model folder: no {', '.join(missing)} "
                               f"(expected {' + '.join(HF_FILES)})")
        with open(os.path.join(path, "config.json")) as f:
            try:
                hf_config = json.load(f)
            except json.JSONDecodeError as e:
                raise WeightsError(f"{path}/config.json is not valid JSON ({e})") from None
        return _read_safetensors(os.path.join(path, "model.safetensors")), hf_config
    if not os.path.isfile(path):
        raise WeightsError(f"checkpoint {path} does not exist")
    if path.endswith(".safetensors"):
        return _read_safetensors(path), None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):   # DINO checkpoints store their args
            weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                   # unpickling fails with many exception types
        raise WeightsError(f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(weights, Mapping):
        raise WeightsError(f"{path}: expected a state dict or a checkpoint dict, got {type(weights).__name__}")
    return weights, None


def _read_safetensors(path):
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{path}: not a readable .safetensors file ({str(e).splitlines()[0][:200]})") from None


def resnet_layout(backbone):
    """The transformers ResNetConfig fields that describe `backbone` (None if it is not a ResNet)."""
    stages = [getattr(backbone, f"layer{k}") for k in range(1, 5) if hasattr(backbone, f"layer{k}")]
    if not stages or not hasattr(backbone, "conv1"):
        return None
    return {"num_channels": backbone.conv1.in_channels, "embedding_size": backbone.conv1.out_channels,
            "depths": [len(s) for s in stages],
            "hidden_sizes": [s[0].convs()[-1].out_channels for s in stages],
            "layer_type": "bottleneck" if len(stages[0][0].convs()) == 3 else "basic",
            "downsample_in_first_stage": False, "downsample_in_bottleneck": False}


def check_hf_config(hf_config, backbone, arch, source):
    """Refuse, in one line naming the key, a config.json that does not describe the configured backbone."""
    if hf_config.get("model_type", "resnet") != "resnet":
        raise WeightsError(f"{source}/config.json: model_type {hf_config['model_type']!r} is not a transformers "
                           f"ResNet, the only Hugging Face layout read here")
    expected = resnet_layout(backbone)
    if expected is None:
        raise WeightsError(f"{source}/config.json describes a transformers ResNet but model.arch={arch}: set "
                           f"model.arch to the ResNet it describes")
    rgb_ok = hf_config.get("num_channels") == 3 and expected["num_channels"] == 1   # summed into one channel
    for key, want in expected.items():
        if key in hf_config and hf_config[key] != want and not (key == "num_channels" and rgb_ok):
            raise WeightsError(f"{source}/config.json: {key}={hf_config[key]} does not match model.arch={arch} "
                               f"at model.width={expected['embedding_size']} ({key}={want})")


# ----------------------------------------------------------------------------------------------- key mapping

def _short_list(keys, limit=8):
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + "]" + more


def _unwrap(obj, weights_key):
    """(flat name -> tensor mapping, whether weights_key was one of the containers descended).

    Containers are descended weights_key first, then CONTAINER_KEYS (so the teacher of a DINO checkpoint)."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"expected a state dict or checkpoint dict, got {type(obj).__name__}")
    order, used = ((weights_key,) if weights_key else ()) + CONTAINER_KEYS, False
    while not all(torch.is_tensor(v) for v in obj.values()):
        key = next((k for k in order if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise WeightsError(f"checkpoint has no state dict under any of {order}; "
                               f"top-level keys: {_short_list(list(obj))}")
        obj, used = obj[key], used or key == weights_key
    return obj, used


def _strip(key):
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def _pick_network(flat, weights_key):
    """(the chosen network's keys with its prefix removed plus every key outside the student/teacher prefixes,
    {left-out prefix: count}) for a student/teacher pair stored side by side (lightly). A dict without such
    prefixes is returned whole; weights_key, when given, must be one of its prefixes."""
    chosen = f"{weights_key}." if weights_key and any(k.startswith(f"{weights_key}.") for k in flat) else None
    if chosen is None:
        chosen = next((p for p in NETWORK_PREFIXES if any(k.startswith(p) for k in flat)), None)
    if weights_key and chosen != f"{weights_key}.":
        prefixes = sorted({k.split(".")[0] for k in flat})
        raise WeightsError(f"eval.weights_key={weights_key}: no container or key prefix of that name; the weights "
                           f"hold the prefixes {_short_list(prefixes)}")
    if chosen is None:
        return flat, {}
    others = tuple({*NETWORK_PREFIXES} - {chosen})
    picked = {(k[len(chosen):] if k.startswith(chosen) else k): v for k, v in flat.items()
              if not k.startswith(others)}
    counts = {p + "*": sum(k.startswith(p) for k in flat) for p in others}
    return picked, {p: n for p, n in counts.items() if n}


def _map_key(key):
    """One key in the transformers or lightly layout -> the torchvision name (other keys unchanged)."""
    m = _TRANSFORMERS_STEM.match(key)
    if m:
        return f"{'conv1' if m[1] == 'convolution' else 'bn1'}.{m[2]}"
    m = _TRANSFORMERS_BLOCK.match(key)
    if m:
        stage, block, j, shortcut, kind, rest = m.groups()
        if shortcut:
            return f"layer{int(stage) + 1}.{block}.downsample.{0 if kind == 'convolution' else 1}.{rest}"
        return f"layer{int(stage) + 1}.{block}.{'conv' if kind == 'convolution' else 'bn'}{int(j) + 1}.{rest}"
    child, _, rest = key.partition(".")
    if child in LIGHTLY_CHILDREN and rest:
        return f"{LIGHTLY_CHILDREN[child]}.{rest}"
    return key


def backbone_state(weights, weights_key=None):
    """(flat state dict in this project's key layout, {left-out group: count}) of a state dict or checkpoint.

    Known heads and the other network of a student/teacher pair are removed and counted; everything else is
    kept for the strict match."""
    flat, used = _unwrap(weights, weights_key)
    flat, left_out = _pick_network({_strip(k): v for k, v in flat.items()}, None if used else weights_key)
    state = {}
    for key, value in flat.items():
        key = _map_key(_strip(key))
        head = next((p for p in HEAD_PREFIXES if key.startswith(p)), None)
        if head:
            left_out[head + "*"] = left_out.get(head + "*", 0) + 1
        else:
            state[key] = value
    return state, left_out


def _adapt_tensor(key, value, target):
    """Sum an RGB first-layer kernel into one channel; resample a position embedding to the model's grid."""
    if key in FIRST_CONVS and value.ndim == 4 and value.shape[1] != target.shape[1] and target.shape[1] == 1:
        return value.sum(dim=1, keepdim=True)
    if key == "pos_embed" and value.ndim == 3 and value.shape != target.shape:
        g = math.isqrt(target.shape[1] - 1)
        return vit.resize_pos_embed(value, (g, g))
    return value


def load_backbone_weights(backbone: nn.Module, weights, weights_key=None) -> str:
    """Load a backbone strictly from a state dict or checkpoint in any layout of the module docstring.

    BatchNorm `num_batches_tracked` counters absent from older checkpoints are set to 0. Any missing,
    unexpected or wrongly shaped key raises WeightsError listing them; nothing is loaded then. Returns a one-line
    summary of what was loaded and left out."""
    state, left_out = backbone_state(weights, weights_key)
    expected = backbone.state_dict()
    for key in TRAINING_ONLY:
        if key in state and key not in expected:
            del state[key]
            left_out[key] = 1
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(expected[key])
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    mismatched = []
    for key in set(expected) & set(state):
        state[key] = _adapt_tensor(key, state[key], expected[key])
        if state[key].shape != expected[key].shape:
            mismatched.append(f"{key}: {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}")
    if missing or unexpected or mismatched:
        raise WeightsError(f"state dict does not match {type(backbone).__name__}: "
                           f"missing {len(missing)} {_short_list(missing)}; "
                           f"unexpected {len(unexpected)} {_short_list(unexpected)}; "
                           f"shape mismatch {len(mismatched)} {_short_list(mismatched, limit=4)}")
    backbone.load_state_dict(state, strict=True)
    dropped = ", ".join(f"{group} ({n})" for group, n in sorted(left_out.items())) or "nothing"
    return f"loaded {len(state)} tensors; left out {dropped}"


# ----------------------------------------------------------------------------------------------- file -> backbone

def stored_grid(weights):
    """Side of the patch grid of the first `pos_embed` in a (nested) state dict, or None."""
    for key, value in weights.items():
        found = stored_grid(value) if isinstance(value, Mapping) else None
        if torch.is_tensor(value) and key.endswith("pos_embed") and value.ndim == 3:
            found = math.isqrt(value.shape[1] - 1)
        if found:
            return found
    return None


def backbone_from_weights(weights, cfg, source="weights", hf_config=None):
    """(backbone, (arch, patch, img_size), summary) built for and loaded with a state dict or checkpoint dict.

    The architecture comes from the config saved in a pretrain.py checkpoint, else from cfg["model"]; a ViT
    is built at the grid of the stored position embedding, so the weights load unresampled."""
    saved = weights.get("config")
    if isinstance(saved, Mapping) and "model" in saved:
        arch, patch, img = saved["model"]["arch"], saved["model"]["patch_size"], saved["train"]["global_crops_size"]
        m = saved["model"]
    else:
        arch, patch, grid = cfg["model"]["arch"], cfg["model"]["patch_size"], stored_grid(weights)
        img = grid * patch if grid else cfg["train"]["global_crops_size"]
        m = cfg["model"]
    backbone = models.build_backbone(arch, patch, img, **models.backbone_options(arch, m))
    if hf_config is not None:
        check_hf_config(hf_config, backbone, arch, source)
    try:
        summary = load_backbone_weights(backbone, weights, cfg["eval"]["weights_key"])
    except WeightsError as e:
        raise WeightsError(f"{source} ({arch}): {e}") from None
    return backbone, (arch, patch, img), summary


def load_backbone(path, cfg):
    """(backbone, (arch, patch, img_size), summary) holding the teacher / backbone weights stored at `path`."""
    weights, hf_config = read_weights(path)
    return backbone_from_weights(weights, cfg, path, hf_config)


def release_head(path):
    """(W [n_out, d], b [n_out]) of the linear head of a released ResNetForImageClassification (classifier.1)."""
    weights, _ = read_weights(path)
    flat = {_strip(k): v for k, v in _unwrap(weights, None)[0].items()}
    missing = [k for k in RELEASE_HEAD if k not in flat]
    if missing:
        raise WeightsError(f"{path}: eval.release_head needs the linear head {', '.join(RELEASE_HEAD)} of a "
                           f"Hugging Face ResNetForImageClassification (OceanSAR-1-wind / -wave); missing "
                           f"{', '.join(missing)}")
    W, b = flat[RELEASE_HEAD[0]].float(), flat[RELEASE_HEAD[1]].float()
    if W.ndim != 2 or b.shape != W.shape[:1]:
        raise WeightsError(f"{path}: classifier.1 has weight {tuple(W.shape)} and bias {tuple(b.shape)}, "
                           f"not a linear layer")
    return W, b
