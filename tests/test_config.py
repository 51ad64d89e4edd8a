"""The config system: defaults, overrides, and one-line errors naming the key (exit code 2, no traceback)."""
import glob
import os
import subprocess
import sys

import pytest
import yaml

from oceansar import config
from helpers import ROOT


BASE = "data:\n  seed: 0\n"


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_are_valid():
    for section, keys in config.SCHEMA.items():
        for name, key in keys.items():
            assert key.check(f"{section}.{name}", key.default) == key.default


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "data:\n  image_size: 32\nprune:\n  levels: [8, 2]\n")
    cfg = config.load([path, "data.seed=7", "checkpoint=x.pt", "train.lr=1e-3"], stage="prune")
    assert cfg["data"]["image_size"] == 32 and cfg["data"]["seed"] == 7
    assert cfg["prune"]["levels"] == [8, 2] and cfg["prune"]["checkpoint"] == "x.pt"
    assert config.load([path, "--strict"], stage="data")["data"]["strict"] is True
    assert cfg["train"]["lr"] == 1e-3 and isinstance(cfg["train"]["lr"], float)
    assert cfg["model"] == config.defaults()["model"]


@pytest.mark.parametrize("text,override,needle", [
    ("data:\n  imagesize: 3\n", [], "'data.imagesize'"),
    ("dat:\n  image_size: 3\n", [], "section 'dat'"),
    (BASE, ["data.image_size=abc"], "'data.image_size'"),
    (BASE, ["data.image_size=4"], "in [16, 2048]"),
    (BASE, ["prune.mode=sometimes"], "one of 'none', 'static', 'dynamic'"),
    (BASE, ["train.global_crops_scale=[0.5]"], "length 2"),
    (BASE, ["data.montage=1"], "true/false"),
    (BASE, ["model.out_dim=2.5"], "an integer"),
    # the cases of issue 15
    ("data:\n  seed: 1\n  image_size: 32\n  seed: 2\n", [], "key 'data.seed' appears twice (lines 2 and 4)"),
    ("data:\n  seed: 1\nmodel:\n  arch: vit_nano\ndata:\n  image_size: 32\n", [],
     "section 'data' appears twice (lines 1 and 5)"),
    ("", [], "is empty"),
    ("# only a comment\n", [], "is empty"),
    ("{}\n", [], "is empty"),
    (BASE, ["prune.levels=[]"], "config key 'prune.levels': got [], expected a non-empty list of integers"),
    (BASE, ["study.seeds=[]"], "'study.seeds'"),
    (BASE, ["data.split_fractions=[0.9,0.9,0.9]"], "config key 'data.split_fractions': [0.9, 0.9, 0.9] sums to 2.7"),
    (BASE, ["model.arch=vit_small", "model.patch_size=32", "train.global_crops_size=64", "train.local_crops_number=8",
            "train.local_crops_size=16"],
     "config keys 'train.local_crops_size' (16) and 'model.patch_size' (32)"),
    (BASE, ["model.arch=vit_small", "model.patch_size=32", "train.global_crops_size=16", "train.local_crops_number=0"],
     "config keys 'train.global_crops_size' (16) and 'model.patch_size' (32)"),
    (BASE, ["data.class_prior=[0,0,0,0,0,0,0,0,0,0]"], "config key 'data.class_prior': all weights are 0"),
    (BASE, ["data.class_prior=[-1,1,1,1,1,1,1,1,1,1]"], "config key 'data.class_prior': got [-1"),
])
def test_errors_name_the_key(tmp_path, text, override, needle):
    with pytest.raises(config.ConfigError) as e:
        config.load([write(tmp_path, text)] + override)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load([str(tmp_path / "nope.yaml")])
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load([write(tmp_path, "data: [unclosed\n")])
    with pytest.raises(config.ConfigError, match="is a directory, not a YAML file"):
        config.load([str(tmp_path)])


def test_a_crop_check_ignores_resnet_and_unused_local_crops(tmp_path):
    path = write(tmp_path, BASE)
    config.load([path, "model.arch=resnet50", "model.patch_size=32", "train.local_crops_number=8", "train.local_crops_size=16"])
    config.load([path, "model.arch=vit_small", "model.patch_size=32", "train.local_crops_size=16", "train.local_crops_number=0"])


def test_input_and_output_checks_name_the_key(tmp_path):
    cfg = config.load([write(tmp_path, BASE), f"train.data={tmp_path / 'nowhere'}", f"eval.checkpoint={tmp_path}"])
    with pytest.raises(config.ConfigError, match="config key 'train.data': .*nowhere does not exist"):
        config.check_inputs(cfg, {"train.data": "dataset"})
    with pytest.raises(config.ConfigError, match="config key 'eval.checkpoint': .* is a folder, expected a file"):
        config.check_inputs(cfg, {"eval.checkpoint": "file"})
    cfg["train"]["data"] = str(tmp_path)
    with pytest.raises(config.ConfigError, match="not a prepared dataset .no manifest.json"):
        config.check_inputs(cfg, {"train.data": "dataset"})
    (tmp_path / "afile").write_text("x")
    with pytest.raises(config.ConfigError, match="config key 'train.out': cannot write to .*afile/run"):
        config.check_writable(str(tmp_path / "afile" / "run"), "train.out")
    assert config.check_writable(str(tmp_path / "ok"), "train.out") and not list((tmp_path / "ok").iterdir())


def test_cli_exit_code_2_without_traceback(tmp_path):
    path = write(tmp_path, "data:\n  image_size: 5\n")
    r = subprocess.run([sys.executable, "prepare.py", path], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "data.image_size" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_save_is_plain_data(tmp_path):
    cfg = config.load([write(tmp_path, BASE)])
    path = config.save(cfg, str(tmp_path / "out"))
    assert yaml.safe_load(open(path)) == cfg


def test_shipped_configs_are_valid():
    paths = glob.glob(os.path.join(ROOT, "configs", "*.yaml"))
    assert len(paths) >= 8, paths  # a run from another folder must not pass with nothing checked
    for path in paths:
        config.load([path])


def test_readme_reference_table_matches_the_schema():
    """The README's config reference is generated from SCHEMA: regenerate it when a key changes."""
    assert config.markdown_table() in open("README.md").read()
