"""The config system: defaults, overrides, and one-line errors naming the key (exit code 2, no traceback)."""
import subprocess
import sys

import pytest
import yaml

import config


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
    ("", ["data.image_size=abc"], "'data.image_size'"),
    ("", ["data.image_size=4"], "in [16, 2048]"),
    ("", ["prune.mode=sometimes"], "one of 'none', 'static', 'dynamic'"),
    ("", ["train.global_crops_scale=[0.5]"], "length 2"),
    ("", ["data.montage=1"], "true/false"),
    ("", ["model.out_dim=2.5"], "an integer"),
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


def test_cli_exit_code_2_without_traceback(tmp_path):
    path = write(tmp_path, "data:\n  image_size: 5\n")
    r = subprocess.run([sys.executable, "prepare.py", path], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "data.image_size" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_save_is_plain_data(tmp_path):
    cfg = config.load([write(tmp_path, "")])
    path = config.save(cfg, str(tmp_path / "out"))
    assert yaml.safe_load(open(path)) == cfg


def test_shipped_configs_are_valid():
    import glob
    for path in glob.glob("configs/*.yaml"):
        config.load([path])


def test_readme_reference_table_matches_the_schema():
    """The README's config reference is generated from SCHEMA: regenerate it when a key changes."""
    assert config.markdown_table() in open("README.md").read()
