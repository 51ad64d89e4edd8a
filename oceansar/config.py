"""One config system for every stage: YAML files + `section.key=value` overrides, validated against SCHEMA.

    python prepare.py configs/demo.yaml data.num_samples=2000 data.seed=3
    python prune.py configs/demo.yaml checkpoint=runs/demo/checkpoint.pt    # bare key -> the stage's section
    python pretrain.py configs/demo.yaml --resume                          # --flag  -> <stage section>.flag=true

SCHEMA below is the single place where defaults, types and allowed values live. A YAML file only overrides what
it names; every key it names must exist here. Unknown key, wrong type, out-of-range value or a missing file gives
a one-line error naming the key and what is allowed, and exit code 2 (no traceback). The resolved config is plain
data (dicts, lists, numbers, strings) so it can be printed, saved beside outputs and stored in checkpoints.
"""

import json
import math
import os
import tempfile

import yaml

from . import atomic
from .errors import EXIT_CONFIG, UserError


class ConfigError(UserError, ValueError):
    """A bad config value, file or path named by a config key (exit code 2)."""
    code = EXIT_CONFIG


class Key:
    """One config entry: default, type, and the values it may take."""

    def __init__(self, default, kind, doc, lo=None, hi=None, choices=None, length=None, optional=False,
                 nonempty=False):
        self.default, self.kind, self.doc = default, kind, doc
        self.lo, self.hi, self.choices, self.length, self.optional = lo, hi, choices, length, optional
        self.nonempty = nonempty

    def allowed(self):
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        kind = {int: "an integer", float: "a number", bool: "true/false", str: "a string",
                "ints": "a list of integers", "floats": "a list of numbers", "strs": "a list of strings",
                "variants": "a list of names or a mapping name -> overrides"}[self.kind]
        if self.length:
            kind += f" of length {self.length}"
        elif self.nonempty:
            kind = "a non-empty " + kind[2:]
        if self.lo is not None or self.hi is not None:
            kind += f" in [{'-inf' if self.lo is None else self.lo}, {'inf' if self.hi is None else self.hi}]"
        return kind + (" or null" if self.optional else "")

    def check(self, name, value):
        """Return the value coerced to the key's type, or raise ConfigError naming the key."""
        bad = ConfigError(f"config key '{name}': got {value!r}, expected {self.allowed()}")
        if value is None:
            if self.optional:
                return None
            raise bad
        if self.kind == "variants":  # study.variants: names, or name -> {section.key: value} (study.py checks them)
            if isinstance(value, dict) and all(isinstance(k, str) and (v is None or isinstance(v, dict))
                                               for k, v in value.items()):
                return {k: dict(v or {}) for k, v in value.items()}
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return list(value)
            raise bad
        if self.kind in ("ints", "floats", "strs"):
            elem = {"ints": int, "floats": float, "strs": str}[self.kind]
            if not isinstance(value, (list, tuple)) or (self.length and len(value) != self.length) or \
                    (self.nonempty and not value):
                raise bad
            return [self._scalar(elem, v, bad) for v in value]
        value = self._scalar(self.kind, value, bad)
        if self.choices is not None and value not in self.choices:
            raise bad
        return value

    def _scalar(self, kind, value, bad):
        if kind is bool:
            if not isinstance(value, bool):
                raise bad
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
        elif kind is float:
            if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    raise bad
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad
            value = float(value)
        elif kind is str:
            if not isinstance(value, str):
                raise bad
        if kind in (int, float):
            if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
                raise bad
        return value


def _k(default, kind, doc, **kw):
    return Key(default, kind, doc, **kw)



# The backbones model.build_backbone builds (torch-free here, so that reading a config never imports torch).
ARCHS = ("vit_nano", "vit_tiny", "vit_small", "vit_base", "resnet18", "resnet50")
RESNET_STEMS = ("imagenet", "half", "cifar")  # resnet.RESNET_STEM_LAYOUT says what each is

SCHEMA = {
    # ---------------------------------------------------------------- prepare.py
    "data": {
        "source": _k("synthetic", str, "where imagettes come from", choices=["synthetic", "safe", "netcdf", "tengeop"]),
        "input": _k(None, str, "input folder for real sources (SAFE dirs/zips, netCDF, TenGeoP root)", optional=True),
        "root": _k("data/demo", str, "output folder: one sub-folder per dataset (archive/, tengeop/, regression/)"),
        "image_size": _k(64, int, "imagette side in pixels after preparation", lo=16, hi=2048),
        "pixel_spacing": _k(100.0, float, "ground pixel spacing in metres", lo=5.0, hi=2000.0),
        "num_samples": _k(8192, int, "synthetic pretraining archive size", lo=1),
        "samples_per_shard": _k(2048, int, "samples per .npy shard (bounds shard size)", lo=1),
        "class_prior": _k(None, "floats", "synthetic class prior over the 10 TenGeoP classes (null: heavy-tailed "
                          "archive default)", length=10, optional=True, lo=0.0),
        "eval_per_class": _k(200, int, "synthetic TenGeoP-like set: images per class (split 80/5/15)", lo=0),
        "regression_samples": _k(4000, int, "synthetic wind/Hs regression set size (split 80/5/15)", lo=0),
        "seed": _k(0, int, "seed; the evaluation sets use disjoint seeds derived from it", lo=0),
        "workers": _k(2, int, "parallel worker processes", lo=1, hi=256),
        "montage": _k(True, bool, "write montage.png of random imagettes per class"),
        "strict": _k(False, bool, "any unreadable input file is fatal (default: skip and log in failures.jsonl)"),
        # ---- real Sentinel-1 readers (sentinel1.py)
        "split_fractions": _k([0.8, 0.05, 0.15], "floats", "train/val/test fractions of real labelled sets "
                              "(TenGeoP: stratified by class; SAFE/netCDF: hash of the id; synthetic evaluation sets); must sum to 1",
                              length=3, lo=0.0, hi=1.0),
        "noise_removal": _k(True, bool, "SAFE: subtract the thermal noise LUT before calibration"),
        "max_invalid": _k(0.25, float, "largest fraction of invalid (NaN/inf/no-data) output pixels before the "
                          "imagette is rejected; fewer are filled with the median", lo=0.0, hi=1.0),
        "min_coverage": _k(0.5, float, "real sources: smallest fraction of the output image real data must cover "
                           "(smaller imagettes are rejected and listed in failures.jsonl)", lo=0.0, hi=1.0),
        "nc_variable": _k("sigma0", str, "netCDF imagettes: image variable (sigma0 linear or dB, or digital_number)"),
        "tengeop_units": _k("auto", str, "TenGeoP GeoTIFF pixel units (auto: float with negatives = dB, else linear)",
                            choices=["auto", "linear", "db"]),
        "tengeop_spacing": _k([41.0, 45.0], "floats", "TenGeoP GeoTIFF native spacing (m): azimuth, ground range",
                              length=2, lo=1.0),
        "ocn_dir": _k(None, str, "folder of Level-2 OCN netCDF files joined by id for wind/Hs labels", optional=True),
        "ocn_max_quality": _k(None, int, "keep OCN labels with oswQualityFlag <= this (0 good .. 3 poor; unknown "
                              "flags are kept; null: no filter)", lo=0, hi=3, optional=True),
        "ocn_drop_land": _k(True, bool, "drop OCN labels whose oswLandFlag is set"),
    },
    # ---------------------------------------------------------------- model.py (vit.py, resnet.py)
    "model": {
        "arch": _k("resnet18", str, "backbone", choices=ARCHS),
        "patch_size": _k(16, int, "ViT patch size (14: the DINOv2 releases)", choices=[4, 8, 14, 16, 32]),
        "drop_path": _k(0.1, float, "stochastic depth rate (ViT)", lo=0.0, hi=0.9),
        "width": _k(8, int, "ResNet: channels of the first stage (torchvision: 64; stage k has width * 2^(k-1))",
                    lo=4, hi=512),
        "stem": _k("imagenet", str, "ResNet stem: imagenet (7x7/2 conv + max pool: image / 4 before layer1), half "
                   "(3x3/1 conv + max pool: / 2), cifar (3x3/1 conv: every pixel)", choices=RESNET_STEMS),
        "out_dim": _k(256, int, "DINO head output dimension", lo=2),
        "head_hidden_dim": _k(256, int, "DINO head hidden size", lo=8),
        "head_bottleneck_dim": _k(64, int, "DINO head bottleneck size", lo=8),
        "norm_last_layer": _k(True, bool, "weight-normalised last layer with frozen magnitude"),
        "layerscale": _k(0.0, float, "ViT LayerScale initial value (DINOv2: 1e-5; 0: no LayerScale)", lo=0.0),
        "registers": _k(0, int, "ViT register tokens (DINOv2 with registers: 4)", lo=0),
    },
    # ---------------------------------------------------------------- pretrain.py
    "train": {
        "data": _k("data/demo/archive", str, "prepared pretraining dataset folder"),
        "out": _k("runs/demo", str, "run folder: checkpoints, logs, backbone.pt"),
        "epochs": _k(40, int, "epochs; one epoch = ceil(prune.rho * N / global_batch) iterations", lo=1),
        "batch_size_per_gpu": _k(256, int, "images per process per step", lo=1),
        "lr": _k(0.01, float, "peak lr at global batch 256 (scaled linearly)", lo=0.0),
        "min_lr": _k(1e-6, float, "final lr of the cosine schedule", lo=0.0),
        "warmup_epochs": _k(2, int, "linear lr warm-up epochs", lo=0),
        "weight_decay": _k(0.04, float, "initial weight decay", lo=0.0),
        "weight_decay_end": _k(0.4, float, "final weight decay (cosine)", lo=0.0),
        "momentum_teacher": _k(0.98, float, "initial teacher EMA momentum (cosine to 1)", lo=0.0, hi=1.0),
        "teacher_temp": _k(0.07, float, "final teacher temperature", lo=1e-4),
        "warmup_teacher_temp": _k(0.04, float, "initial teacher temperature", lo=1e-4),
        "warmup_teacher_temp_epochs": _k(6, int, "teacher temperature warm-up epochs", lo=0),
        "student_temp": _k(0.1, float, "student temperature", lo=1e-4),
        "center_momentum": _k(0.9, float, "momentum of the DINO centre", lo=0.0, hi=1.0),
        "clip_grad": _k(3.0, float, "per-parameter gradient norm clip (0: off)", lo=0.0),
        "freeze_last_layer": _k(1, int, "epochs during which the head's last layer is frozen", lo=0),
        "global_crops_size": _k(32, int, "global crop side (px)", lo=8),
        "global_crops_scale": _k([0.25, 0.25], "floats", "area fraction range of global crops", length=2, lo=0.01, hi=1.0),
        "local_crops_number": _k(0, int, "local crops per image", lo=0),
        "local_crops_size": _k(96, int, "local crop side (px)", lo=8),
        "local_crops_scale": _k([0.05, 0.32], "floats", "area fraction range of local crops", length=2, lo=0.01, hi=1.0),
        "seed": _k(0, int, "seed of everything in the run", lo=0),
        "prefetch": _k(4, int, "batches read ahead by the background reader thread", lo=1),
        "compile": _k(False, bool, "torch.compile the student and teacher"),
        "checkpoint_every": _k(10, int, "keep a snapshot checkpoint every N epochs (latest is always kept)", lo=1),
        "eval_every": _k(2, int, "kNN on the validation split every N epochs (0: off)", lo=0),
        "eval_data": _k("data/demo/tengeop", str, "labelled dataset for the in-training kNN", optional=True),
        "resume": _k(True, bool, "resume from <out>/checkpoint.pt when it exists"),
        "max_iters": _k(None, int, "stop after this many iterations (schedules unchanged; for tests)", lo=1, optional=True),
        "log_every": _k(4, int, "write a log.jsonl record every N iterations (and one per epoch)", lo=1),
        "checkpoint_iters": _k(0, int, "also checkpoint every N iterations inside an epoch (0: at epoch ends only)",
                               lo=0),
        "device": _k("auto", str, "auto: one CUDA device per local rank when available, else cpu",
                     choices=["auto", "cpu", "cuda"]),
        "verify": _k(False, bool, "check the sha256 of every shard of train.data before training (shards are "
                     "always checked lazily, once per process, when first read)"),
        # ---- the objective (dinov2.py)
        "objective": _k("dino", str, "dino: OceanSAR-1 (DINO); dinov2: OceanSAR-2 (DINO + iBOT + KoLeo, ViT only)",
                        choices=["dino", "dinov2"]),
        "centering": _k("ema", str, "dinov2 teacher centring: ema (DINO centre) or sinkhorn (Sinkhorn-Knopp)",
                        choices=["ema", "sinkhorn"]),
        "mask_probability": _k(0.5, float, "dinov2: fraction of the student's global crops that are masked",
                               lo=0.0, hi=1.0),
        "mask_ratio": _k([0.1, 0.5], "floats", "dinov2: range of the masked patch fraction of a masked crop",
                         length=2, lo=0.0, hi=0.5),
        "ibot_separate_head": _k(False, bool, "dinov2: a separate iBOT head (false: the DINO head is shared)"),
        "ibot_weight": _k(1.0, float, "dinov2: weight of the iBOT masked-patch loss", lo=0.0),
        "ibot_student_temp": _k(0.1, float, "dinov2: iBOT student temperature", lo=1e-4),
        "ibot_teacher_temp": _k(0.07, float, "dinov2: final iBOT teacher temperature", lo=1e-4),
        "ibot_warmup_teacher_temp": _k(0.04, float, "dinov2: initial iBOT teacher temperature (warm-up over "
                                       "train.warmup_teacher_temp_epochs)", lo=1e-4),
        "koleo_weight": _k(0.1, float, "dinov2: weight of the KoLeo regulariser on the student CLS tokens", lo=0.0),
    },
    # ---------------------------------------------------------------- SAR augmentations (pretrain.py)
    "aug": {
        "flip": _k(True, bool, "random horizontal and vertical flips"),
        "rot90": _k(False, bool, "random 90 degree rotations"),
        "gain_db": _k(1.0, float, "std of the additive dB gain jitter", lo=0.0),
        "contrast": _k(0.1, float, "std of the multiplicative dB contrast jitter", lo=0.0, hi=0.9),
        "blur_prob": _k(0.5, float, "probability of Gaussian blur per crop", lo=0.0, hi=1.0),
        "blur_sigma": _k([0.1, 1.5], "floats", "blur sigma range (px)", length=2, lo=0.0),
        "speckle_prob": _k(0.0, float, "probability of speckle re-noising per crop", lo=0.0, hi=1.0),
        "speckle_looks": _k(8.0, float, "looks of the re-noising speckle", lo=1.0),
    },
    # ---------------------------------------------------------------- prune.py
    "prune": {
        "mode": _k("dynamic", str, "none: uniform random subset per epoch; static: cluster once after warm-up; "
                   "dynamic: re-cluster every `every` epochs", choices=["none", "static", "dynamic"]),
        "rho": _k(0.5, float, "fraction of the archive seen per epoch", lo=1e-4, hi=1.0),
        "eta": _k(0.0, float, "within-cluster diversity: >0 favours atypical points, <0 prototypes", lo=-10.0, hi=10.0),
        "warmup_epochs": _k(4, int, "T_w: plain DINO epochs on uniform subsets before the first curation", lo=0),
        "every": _k(4, int, "T_s: epochs between curations (dynamic mode)", lo=1),
        "pool_fraction": _k(1.0, float, "pool P embedded at each curation, as a fraction of the archive: "
                            "|P| = ceil(pool_fraction * N), at least the kept ceil(rho * N) (1.0: whole archive)",
                            lo=1e-4, hi=1.0),
        "pool_size": _k(None, int, "pool P as a number of images; when set it replaces pool_fraction", lo=1,
                        optional=True),
        "kmeans_sample": _k(None, int, "points the k-means is fitted on (null: whole pool)", lo=1, optional=True),
        "levels": _k([40, 8], "ints", "clusters per level, finest first", lo=1, nonempty=True),
        "resample_steps": _k(1, int, "Vo et al. resampling steps per level", lo=0),
        "resample_size": _k(None, int, "points taken per cluster in a resampling step (null: half the mean size)",
                            lo=1, optional=True),
        "resample_rule": _k("closest", str, "which points a resampling step takes", choices=["closest", "random"]),
        "iters": _k(10, int, "Lloyd iterations per k-means", lo=1),
        "metric": _k("cosine", str, "k-means distance", choices=["cosine", "l2"]),
        "init": _k("kmeans++", str, "k-means init", choices=["kmeans++", "random"]),
        "init_sample_factor": _k(4, int, "k-means++ runs on a random subsample of max(4096, factor x k) points",
                                 lo=1),
        "batch_size": _k(256, int, "images per forward pass when embedding the pool", lo=1),
        "memory_mb": _k(512, int, "memory budget of one distance chunk", lo=1),
        "checkpoint": _k(None, str, "curation CLI: checkpoint or backbone.pt whose features are clustered", optional=True),
        "data": _k(None, str, "curation CLI: dataset to curate (null: train.data)", optional=True),
        "out": _k(None, str, "curation CLI: output folder (null: <train.out>/curation)", optional=True),
        "verify": _k(False, bool, "curation CLI: check the sha256 of every shard before any work"),
    },
    # ---------------------------------------------------------------- evaluate.py
    "eval": {
        "checkpoint": _k(None, str, "checkpoint.pt, backbone.pt, external weights (.pth/.pth.tar/.safetensors) "
                         "or a Hugging Face model folder to evaluate (null: <train.out>/checkpoint.pt)", optional=True),
        "weights_key": _k(None, str, "external weights: the container or key prefix holding the backbone, e.g. "
                          "student or student_backbone (null: the teacher)", optional=True),
        "release_head": _k(None, str, "also score the checkpoint's own released linear head (classifier.1 of "
                           "OceanSAR-1-wind / -wave) on this target, unfitted", choices=["wind", "hs"],
                           optional=True),
        "out": _k(None, str, "report folder (null: <train.out>/eval)", optional=True),
        "classification": _k("data/demo/tengeop", str, "labelled classification dataset (null/'' to skip)",
                             optional=True),
        "regression": _k("data/demo/regression", str, "wind/Hs regression dataset (null/'' to skip)", optional=True),
        "n_last_blocks": _k(1, int, "ViT: concatenate the CLS of the last n blocks", lo=1, hi=12),
        "avgpool": _k(False, bool, "ViT: also concatenate the mean patch token"),
        "probe_incidence": _k(True, bool, "wind/Hs linear probes of the networks also see incidence and its square "
                              "(the physics features include incidence)"),
        "knn_k": _k(20, int, "kNN neighbours", lo=1),
        "knn_temperature": _k(0.07, float, "kNN vote temperature", lo=1e-4),
        "batch_size": _k(256, int, "images per forward pass", lo=1),
        "baselines": _k(True, bool, "also evaluate a random-init backbone and physics features"),
        "seed": _k(0, int, "seed of the first random-init baseline and of the bootstrap", lo=0),
        "random_seeds": _k(3, int, "random initialisations averaged in the random_init row (seeds seed, seed+1, ..)",
                            lo=1, hi=100),
        "bootstrap": _k(1000, int, "bootstrap resamples of the test images for the 95 % intervals (0: none)",
                        lo=0, hi=100000),
        "split_seed": _k(0, int, "seed of the stratified split made for samples with an empty split column", lo=0),
        "refit": _k("train", str, "probes after choosing λ on val: keep the train fit, or refit on train+val",
                    choices=["train", "train+val"]),
        "device": _k("auto", str, "auto: cuda when available, else cpu", choices=["auto", "cpu", "cuda"]),
        "verify": _k(False, bool, "check the sha256 of every shard of the evaluation datasets before any work"),
    },
    # ---------------------------------------------------------------- study.py
    "study": {
        "out": _k("runs/study", str, "study folder"),
        "seeds": _k([0, 1, 2], "ints", "seeds per variant", lo=0, nonempty=True),
        "base": _k(None, str, "config file whose sections are the study's base; the study file's own sections "
                   "override it (null: the study file alone)", optional=True),
        "variants": _k(["none", "static", "dynamic"], "variants",
                       "variants to run: names from study.py VARIANTS (none, static, dynamic, rho0.1, rho0.5, "
                       "eta-1, eta1), or a mapping name -> {prune.key: value} (null: a known name); prune.* only"),
        "scale": _k("cpu", str, "cpu: the config as it is; gpu: a larger archive and ViT-S/16 (study.py SCALES)",
                    choices=["cpu", "gpu"]),
        "rare_classes": _k(5, int, "report the mean linear recall of the archive's N least frequent classes", lo=0, hi=10),
    },
}


def defaults():
    return {s: {k: v.default for k, v in keys.items()} for s, keys in SCHEMA.items()}


def _set(cfg, dotted, value, origin):
    if "." not in dotted:
        raise ConfigError(f"config key '{dotted}' ({origin}): expected section.key, sections: {', '.join(SCHEMA)}")
    section, key = dotted.split(".", 1)
    if section not in SCHEMA:
        raise ConfigError(f"config section '{section}' ({origin}) is unknown; sections: {', '.join(SCHEMA)}")
    if key not in SCHEMA[section]:
        raise ConfigError(f"config key '{dotted}' ({origin}) is unknown; keys of '{section}': "
                          f"{', '.join(SCHEMA[section])}")
    spec = SCHEMA[section][key]
    cfg[section][key] = spec.check(dotted, value)


def _read_file(path):
    """The YAML mapping of a config file; refuses a directory, an empty file and duplicated keys or sections."""
    if os.path.isdir(path):
        raise ConfigError(f"config file '{path}' is a directory, not a YAML file")
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        with open(path) as f:
            text = f.read()
        _refuse_duplicates(yaml.compose(text, Loader=yaml.SafeLoader), path)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file '{path}' cannot be read: {e}")
    if data is None or data == {}:
        # An empty file would run everything on defaults (prepare.py would write 4,096 images into data/demo).
        raise ConfigError(f"config file '{path}' is empty: name at least one section (e.g. start from "
                          f"configs/demo.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must be a mapping of sections")
    return data


def _refuse_duplicates(node, path, prefix=""):
    """YAML lets a later key silently replace an earlier one (a second section drops the first entirely)."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen = {}
    for key_node, value_node in node.value:
        key, line = str(key_node.value), key_node.start_mark.line + 1
        if key in seen:
            what = "key" if prefix else "section"
            raise ConfigError(f"config file '{path}': {what} '{prefix}{key}' appears twice (lines {seen[key]} and "
                              f"{line}); keep one")
        seen[key] = line
        _refuse_duplicates(value_node, path, f"{prefix}{key}.")


def check_together(cfg):
    """Rules that involve more than one value or a whole list: one line naming the keys."""
    d, m, t = cfg["data"], cfg["model"], cfg["train"]
    if abs(sum(d["split_fractions"]) - 1) > 1e-6:
        raise ConfigError(f"config key 'data.split_fractions': {d['split_fractions']} sums to "
                          f"{sum(d['split_fractions']):g}, expected 1 (train, val, test)")
    if d["class_prior"] is not None and sum(d["class_prior"]) <= 0:
        raise ConfigError("config key 'data.class_prior': all weights are 0, at least one must be positive")
    if t["objective"] == "dinov2" and not m["arch"].startswith("vit"):
        raise ConfigError(f"config keys 'train.objective' and 'model.arch': objective dinov2 (masked patch tokens) "
                          f"needs a ViT, got model.arch={m['arch']}")
    if t["centering"] == "sinkhorn" and t["objective"] != "dinov2":
        raise ConfigError("config keys 'train.centering' and 'train.objective': sinkhorn centring is part of "
                          "objective dinov2 (objective dino uses the EMA centre)")
    if t["mask_ratio"][0] > t["mask_ratio"][1]:
        raise ConfigError(f"config key 'train.mask_ratio': got {t['mask_ratio']}, expected [low, high] with "
                          f"low <= high")
    if m["arch"].startswith("vit"):                   # a ResNet has no patches
        crops = [("train.global_crops_size", t["global_crops_size"])]
        if t["local_crops_number"]:
            crops.append(("train.local_crops_size", t["local_crops_size"]))
        for key, size in crops:
            if size < m["patch_size"]:
                raise ConfigError(f"config keys '{key}' ({size}) and 'model.patch_size' ({m['patch_size']}): a crop "
                                  f"smaller than one patch has no tokens; raise the crop or lower the patch")


def load(argv, stage=None):
    """Parse `<config.yaml> [section.key=value | key=value | --flag]...` into a validated nested dict.

    A bare `key=value` or `--flag` refers to `stage`'s own section (e.g. prune.py's `checkpoint=`).
    Raises ConfigError with a one-line message.
    """
    if not argv or "=" in argv[0] or argv[0].startswith("--"):
        raise ConfigError("usage: <script> <config.yaml> [section.key=value ...]")
    path, overrides = argv[0], argv[1:]
    data = _read_file(path)
    cfg = defaults()
    for section, keys in data.items():
        if not isinstance(keys, dict):
            raise ConfigError(f"config section '{section}' in {path} must be a mapping of keys")
        for key, value in keys.items():
            _set(cfg, f"{section}.{key}", value, path)
    for item in overrides:
        if item.startswith("--"):
            dotted, value = item[2:].replace("-", "_"), True
        elif "=" in item:
            dotted, raw = item.split("=", 1)
            try:
                value = yaml.safe_load(raw) if raw != "" else None
            except yaml.YAMLError:
                value = raw
        else:
            raise ConfigError(f"argument '{item}' is not key=value or --flag")
        if "." not in dotted and stage is not None:
            dotted = f"{stage}.{dotted}"
        _set(cfg, dotted, value, "command line")
    check_pool(cfg)
    check_together(cfg)
    return cfg


def apply(cfg, overrides, origin):
    """A copy of a resolved cfg with {section.key: value} overrides validated and set (study.py's variants)."""
    out = json.loads(json.dumps(cfg))
    for dotted, value in overrides.items():
        _set(out, dotted, value, origin)
    check_pool(out)
    check_together(out)
    return out


def check_pool(cfg):
    """The kept ceil(rho * N) images are drawn from the pool, so a curating run needs pool_fraction >= rho."""
    p = cfg["prune"]
    if p["mode"] != "none" and p["pool_size"] is None and p["pool_fraction"] < p["rho"]:
        raise ConfigError(f"config key 'prune.pool_fraction': {p['pool_fraction']} is below prune.rho={p['rho']}; "
                          f"the kept ceil(rho * N) images are drawn from the pool (1.0: the whole archive)")


def get(cfg, dotted):
    section, key = dotted.split(".", 1)
    return cfg[section][key]


def check_inputs(cfg, keys):
    """Every `section.key: kind` of `keys` that is set must exist: kind "dataset" (a folder with manifest.json),
    "folder", "file" or "weights" (a file, or a Hugging Face model folder: config.json + model.safetensors).
    Raises ConfigError naming the key (exit 2) before a stage does any work."""
    for dotted, kind in keys.items():
        path = get(cfg, dotted)
        if not path:
            continue
        if not os.path.exists(path):
            raise ConfigError(f"config key '{dotted}': {path} does not exist")
        if kind == "file" and os.path.isdir(path):
            raise ConfigError(f"config key '{dotted}': {path} is a folder, expected a file")
        if kind == "weights" and os.path.isdir(path) and not all(
                os.path.isfile(os.path.join(path, name)) for name in ("config.json", "model.safetensors")):
            raise ConfigError(f"config key '{dotted}': {path} is a folder but not a Hugging Face model folder "
                              f"(config.json + model.safetensors); expected a weights file or such a folder")
        if kind in ("folder", "dataset") and not os.path.isdir(path):
            raise ConfigError(f"config key '{dotted}': {path} is a file, expected a folder")
        if kind == "dataset" and not os.path.isfile(os.path.join(path, "manifest.json")):
            raise ConfigError(f"config key '{dotted}': {path} is not a prepared dataset (no manifest.json: run "
                              f"prepare.py, or let it finish)")


def check_writable(folder, dotted):
    """Create `folder` and write a probe file in it, so a read-only or full output stops before any work."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_probe_"):
            pass
    except OSError as e:
        raise ConfigError(f"config key '{dotted}': cannot write to {folder} ({e.strerror or e})")
    return folder


def dump(cfg):
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


def save(cfg, folder, name="config.yaml"):
    """Write the resolved config beside an output (atomically)."""
    os.makedirs(folder, exist_ok=True)
    return atomic.write_text(dump(cfg), os.path.join(folder, name))


def show(cfg, sections=None):
    """Print the resolved config (only the sections a stage uses, when given)."""
    shown = {s: cfg[s] for s in (sections or cfg)}
    print("config:\n" + "\n".join("  " + line for line in dump(shown).splitlines()))


def as_json(cfg):
    return json.loads(json.dumps(cfg))


def markdown_table():
    """Every key with its default and allowed values, as Markdown (the README's config reference)."""
    lines = []
    for section, keys in SCHEMA.items():
        lines += [f"\n**{section}**\n", "| key | default | allowed | meaning |", "|---|---|---|---|"]
        for name, key in keys.items():
            default = json.dumps(key.default)
            lines.append(f"| `{section}.{name}` | `{default}` | {key.allowed()} | {key.doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
