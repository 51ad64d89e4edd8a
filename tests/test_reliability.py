"""Issue 15: every bad config is one line, every corruption is caught or refused, no traceback for a user's mistake.

Each case runs the real stage script (or the real function, where a whole run would only add minutes) and checks
the exit code and the one-line message. Configs are test_pretrain's tiny ones; the datasets are a few kB."""
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from oceansar import errors
from oceansar import model as models
from oceansar import shards
from oceansar.synthetic import generate
from s1_fixtures import make_netcdf
from helpers import ENV, ROOT, make_dataset, pruning_config, read_log, write_config


def run(script, *args, cwd=ROOT, env=ENV, prefix=(), **kw):
    return subprocess.run([*prefix, sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, **kw)


@pytest.fixture
def call(monkeypatch, capsys):
    """A stage's main in this process (no interpreter start-up): returns what run() returns."""
    def main(script, *args):
        argv = [str(a) for a in args]
        monkeypatch.setattr(sys, "argv", [script, *argv])
        module = importlib.import_module(script[:-3])
        with pytest.raises(SystemExit) as e:
            errors.main(module.run, argv)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(script, e.value.code, out.out, out.err)
    return main


def one_line(r, code, needle):
    """Exit code `code` and a single stderr line `error: ...` that contains `needle`, no traceback."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and lines and lines[-1].startswith("error: "), r.stderr[-2000:]
    assert needle in lines[-1], lines[-1]
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and "\n" not in errors[0]
    return lines[-1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("rel") / "archive", n=24, size=32, per_shard=10)


@pytest.fixture
def cfg(tmp_path, data):
    return write_config(tmp_path, data, tmp_path / "run", train__epochs=1)


def corrupt_copy(data, tmp_path, name="images_00001.npy", how="flip"):
    folder = tmp_path / "bad"
    shutil.copytree(data, folder)
    path = folder / name
    raw = bytearray(path.read_bytes())
    if how == "flip":
        raw[-7] ^= 0x40  # one bit of one pixel: a few dB, no header change
    else:
        raw = raw[:len(raw) // 2] + bytes(40)
    path.write_bytes(bytes(raw))
    return folder


def backbone_file(tmp_path):
    path = tmp_path / "backbone.pt"
    torch.save(models.build_backbone("vit_nano", 8, 32).state_dict(), path)
    return path


# ---------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("script, text, args, needle", [
    ("prepare.py", "data:\n  seed: 1\n  seed: 2\n", [], "key 'data.seed' appears twice (lines 2 and 3)"),
    ("pretrain.py", "train:\n  epochs: 1\nprune:\n  rho: 0.5\ntrain:\n  lr: 0.1\n", [],
     "section 'train' appears twice (lines 1 and 5)"),
    ("prepare.py", "", [], "is empty"),
    ("pretrain.py", "prune:\n  levels: []\n", [], "config key 'prune.levels': got [], expected a non-empty list"),
    ("prepare.py", "data:\n  split_fractions: [0.9, 0.9, 0.9]\n", [], "sums to 2.7, expected 1"),
    ("pretrain.py", "model:\n  arch: vit_small\n  patch_size: 32\n",
     ["train.global_crops_size=64", "train.local_crops_number=2", "train.local_crops_size=16"],
     "config keys 'train.local_crops_size' (16) and 'model.patch_size' (32)"),
    ("prepare.py", "data:\n  class_prior: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]\n", [],
     "config key 'data.class_prior': all weights are 0"),
    ("prepare.py", "data:\n  class_prior: [-1, 0, 0, 0, 0, 0, 0, 0, 0, 0]\n", [], "config key 'data.class_prior'"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, monkeypatch, call, script, text, args, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    monkeypatch.chdir(tmp_path)
    one_line(call(script, path, *args), 2, needle)
    assert sorted(os.listdir(tmp_path)) == ["c.yaml"]  # nothing was written (an empty config used to make data/)


def test_a_directory_as_config(tmp_path):
    one_line(run("pretrain.py", tmp_path), 2, "is a directory, not a YAML file")  # and no traceback, for real


@pytest.mark.parametrize("script, args, needle", [
    ("pretrain.py", ["train.data={t}/nowhere"], "config key 'train.data': {t}/nowhere does not exist"),
    ("pretrain.py", ["train.data={t}"], "config key 'train.data': {t} is not a prepared dataset"),
    ("pretrain.py", ["train.eval_every=1", "train.eval_data={t}/none"], "config key 'train.eval_data'"),
    ("evaluate.py", ["checkpoint={t}/none.pt"], "config key 'eval.checkpoint': {t}/none.pt does not exist"),
    ("evaluate.py", ["checkpoint={t}", "regression=", "classification={d}"], "config key 'eval.checkpoint': {t} is a "
     "folder but not a Hugging Face model folder"),
    ("evaluate.py", ["train.out={t}/empty_run"], "config key 'eval.checkpoint': not set, and train.out"),
    ("evaluate.py", ["checkpoint={b}", "classification={t}/none", "regression="], "config key 'eval.classification'"),
    ("prune.py", [], "config key 'prune.checkpoint'"),
    ("prune.py", ["checkpoint={t}/none.pt"], "config key 'prune.checkpoint': {t}/none.pt does not exist"),
    ("prune.py", ["checkpoint={b}", "data={t}/none"], "config key 'prune.data': {t}/none does not exist"),
    ("prepare.py", ["data.source=netcdf"], "config key 'data.input'"),
    ("prepare.py", ["data.source=netcdf", "data.input={t}/none"], "config key 'data.input': {t}/none does not exist"),
    ("prepare.py", ["data.source=netcdf", "data.input={t}", "data.ocn_dir={t}/ocn"], "config key 'data.ocn_dir'"),
])
def test_missing_inputs_name_the_key_exit_2(tmp_path, cfg, data, call, script, args, needle):
    b = backbone_file(tmp_path)
    fill = {"t": tmp_path, "d": data, "b": b}
    one_line(call(script, cfg, *[a.format(**fill) for a in args]), 2, needle.format(**fill))


def test_read_only_output_stops_every_stage_before_work(tmp_path, data):
    """root ignores file modes, so as root the scripts run without CAP_DAC_OVERRIDE (setpriv); without setpriv
    the output is a path below a regular file instead."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    out, prefix, reason = ro / "out", (), "Permission denied"
    if os.geteuid() == 0:
        if shutil.which("setpriv"):
            prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
        else:
            (tmp_path / "file").write_text("")
            out, reason = tmp_path / "file" / "out", "Not a directory"
    cfg = write_config(tmp_path, data, out, train__epochs=1)
    b = backbone_file(tmp_path)
    for script, args, key in [("prepare.py", [f"data.root={out}"], "data.root"),
                              ("pretrain.py", [], "train.out"),
                              ("prune.py", [f"checkpoint={b}", f"out={out}"], "prune.out"),
                              ("evaluate.py", [f"checkpoint={b}", f"out={out}", f"classification={data}",
                                               "regression="], "eval.out")]:
        r = run(script, cfg, *args, prefix=prefix)
        one_line(r, 2, f"config key '{key}': cannot write to {out} ({reason})")
        assert "features" not in r.stdout and "curated" not in r.stdout  # no work was done first


# ---------------------------------------------------------------------------------------------- data integrity
def test_bit_flip_is_caught_with_and_without_verify(tmp_path, data):
    bad = corrupt_copy(data, tmp_path)
    b = backbone_file(tmp_path)
    needle = "images_00001.npy: sha256 does not match the manifest"
    for script, args in [("pretrain.py", ["--verify"]), ("prune.py", [f"checkpoint={b}", "--verify"]),
                         ("evaluate.py", [f"checkpoint={b}", f"classification={bad}", "regression=", "--verify"])]:
        cfg = write_config(tmp_path, str(bad), tmp_path / script, train__epochs=1)
        one_line(run(script, cfg, *args), 1, needle)
    # Without --verify the lazy check catches it when the shard is first read.
    cfg = write_config(tmp_path, str(bad), tmp_path / "lazy", train__epochs=1, prune__rho=1.0)
    one_line(run("pretrain.py", cfg), 1, needle)


def test_truncated_shard_and_corrupt_meta_are_one_line(tmp_path, data):
    cfg = write_config(tmp_path, str(corrupt_copy(data, tmp_path, how="truncate")), tmp_path / "t", train__epochs=1)
    one_line(run("pretrain.py", cfg), 1, "images_00001.npy: ")
    shutil.rmtree(tmp_path / "bad")
    cfg = write_config(tmp_path, str(corrupt_copy(data, tmp_path, "meta_00002.npz", how="truncate")), tmp_path / "m",
                       train__epochs=1)
    one_line(run("pretrain.py", cfg), 1, "meta_00002.npz: sha256 does not match the manifest")


def test_lazy_check_costs_one_hash_per_shard(tmp_path, data):
    ds = shards.ShardDataset(data)
    ds.read_batch(np.arange(len(ds)))
    ds.read_batch(np.arange(len(ds)))
    assert ds._hashed == {0, 1, 2}


def test_changed_inputs_are_refused_on_resume(tmp_path):
    """An interrupted prepare rerun after the input folder (or the data config) changed: refused, not mixed."""
    nc = tmp_path / "nc"
    for i in range(3):
        make_netcdf(nc / f"s1a-wv1-slc-vv-2021010{i}t000000-2021010{i}t000003-000001-000001-00{i}.nc", seed=i)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": "netcdf", "input": str(nc), "root": str(tmp_path / "out"),
                                            "image_size": 16, "samples_per_shard": 2, "workers": 1,
                                            "montage": False}}))
    assert run("prepare.py", cfg).returncode == 0
    folder = tmp_path / "out" / "archive"
    os.remove(folder / "manifest.json")
    os.remove(folder / "images_00001.npy")  # interrupted in the second shard
    make_netcdf(nc / "s1a-wv1-slc-vv-20201231t000000-20201231t000003-000001-000001-009.nc", seed=9)
    one_line(run("prepare.py", cfg), 2, f"config key 'data.root': {folder} was prepared from other inputs or "
                                        f"data.* settings (3 input files then, 4 now")
    os.remove(nc / "s1a-wv1-slc-vv-20201231t000000-20201231t000003-000001-000001-009.nc")
    one_line(run("prepare.py", cfg, "data.image_size=32"), 2, "was prepared from other inputs")
    r = run("prepare.py", cfg, "data.workers=2")  # what does not change the output may change
    assert r.returncode == 0 and "3 ok, 0 failed" in r.stdout, r.stderr[-2000:]


def test_a_too_small_imagette_is_rejected_and_listed(tmp_path):
    nc = tmp_path / "nc"
    make_netcdf(nc / "s1a-wv1-slc-vv-20210101t000000-20210101t000003-000001-000001-001.nc", seed=1)
    make_netcdf(nc / "s1a-wv1-slc-vv-20210102t000000-20210102t000003-000001-000001-002.nc", shape=(2, 2),
                spacing=(100.0, 100.0), seed=2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": "netcdf", "input": str(nc), "root": str(tmp_path / "out"),
                                            "image_size": 16, "workers": 1, "montage": False}}))
    r = run("prepare.py", cfg)
    assert r.returncode == 0 and "1 ok, 1 failed" in r.stdout, r.stdout + r.stderr
    failures = [json.loads(line) for line in open(tmp_path / "out" / "archive" / "failures.jsonl")]
    assert len(failures) == 1 and failures[0]["file"].endswith("-002.nc")
    assert "cover 1.6% of the 16 x 16 output, data.min_coverage is 50%" in failures[0]["reason"]
    one_line(run("prepare.py", cfg, "--strict", "data.root=" + str(tmp_path / "strict")), 1, "data.min_coverage")


def test_near_constant_training_data_is_warned_at_load(tmp_path, data):
    flat = tmp_path / "flat"
    writer = shards.ShardWriter(str(flat), 32, 100.0, 10)
    writer.write(0, np.full((10, 32, 32), -20.0) + 0.01 * np.arange(10)[:, None, None], shards.standard_meta(10))
    writer.finalize(1)
    assert shards.near_constant_warning(shards.ShardDataset(str(flat))) == (
        f"{flat}: 100% of 10 sampled imagettes are near-constant (per-image std < 0.1 dB; median 0 dB): check "
        f"what prepare.py read")
    assert shards.near_constant_warning(shards.ShardDataset(data)) is None
    cfg = write_config(tmp_path, str(flat), tmp_path / "run", train__epochs=1, train__max_iters=1)
    r = run("pretrain.py", cfg)  # the warning at load, and the run goes on
    assert r.returncode == 0 and f"warning: train.data {flat}: 100% of 10 sampled" in r.stderr, r.stderr[-2000:]


# -------------------------------------------------------------------------------------------- I/O and state
DISK_FULL = """
import os, resource, signal, sys, torch
sys.path.insert(0, {root!r})
from oceansar import checkpoint, errors
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
with errors.reported():
    checkpoint.save({{"w": torch.zeros(1 << 20)}}, {path!r})
"""


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"w": torch.ones(3)}, path)  # the previous checkpoint
    r = subprocess.run([sys.executable, "-c", DISK_FULL.format(root=ROOT, path=str(path))], capture_output=True,
                       text=True, env=ENV)
    line = one_line(r, 1, f"could not write {path} (")  # torch reports EFBIG / ENOSPC as a short write
    assert "(File too large); " in line or "(the write was cut short); " in line
    assert "MiB free on its disk; the partial checkpoint.pt.tmp was removed" in line
    assert os.listdir(tmp_path) == ["checkpoint.pt"] and torch.equal(torch.load(path)["w"], torch.ones(3))


def test_exit_3_names_non_finite_input_and_what_exists(tmp_path, data):
    bad = tmp_path / "inf"
    shutil.copytree(data, bad)
    images = np.load(bad / "images_00000.npy")
    images[:, :, 3, 3] = np.inf  # a shard written by something else than our writer, with matching checksums
    np.save(bad / "images_00000.npy", images)
    m = json.loads((bad / "manifest.json").read_text())
    m["shards"][0]["sha256"] = shards.sha256_file(bad / "images_00000.npy")
    (bad / "manifest.json").write_text(json.dumps(m))
    cfg = write_config(tmp_path, str(bad), tmp_path / "run", train__epochs=1, prune__rho=1.0, aug__speckle_prob=0.0)
    line = one_line(run("pretrain.py", cfg), 3, "; stopping. the input batch holds ")
    assert "non-finite pixel(s)" in line and f"no checkpoint was written yet in {tmp_path / 'run'}" in line


def test_resumed_curated_epoch_logs_its_curation(tmp_path):
    folder = tmp_path / "archive"
    writer = shards.ShardWriter(str(folder), 32, 200.0, 100)
    images, meta = generate(0, 100, image_size=32, pixel_spacing=200.0, seed=5)
    writer.write(0, images, shards.standard_meta(100, **meta))
    writer.finalize(1)
    # 100 images, rho 0.32 at batch 16: 2 iterations per epoch; epoch 1 curates, the run stops inside it.
    cfg = pruning_config(tmp_path, str(folder), tmp_path / "run", train__epochs=2, prune__warmup_epochs=1,
                       prune__rho=0.32, prune__levels=[4, 2], train__max_iters=3, train__checkpoint_iters=1)
    assert run("pretrain.py", cfg).returncode == 0
    assert run("pretrain.py", cfg, "train.max_iters=null").returncode == 0
    log = read_log(tmp_path / "run")
    resumed = [i for i, r in enumerate(log) if r.get("event") == "resumed"][-1]
    after = [r for r in log[resumed:] if r.get("event") == "epoch" and r["epoch"] == 1]
    assert len(after) == 1 and after[0]["complete"] and after[0]["curation"]["n_kept"] == 32


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PEER = "import os, torch.distributed as dist; dist.init_process_group('gloo'); os._exit(0)"


def test_a_lost_gloo_peer_outside_torchrun_is_one_line_naming_the_rank(cfg):
    env = {**ENV, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    peer = subprocess.Popen([sys.executable, "-c", PEER], env={**env, "RANK": "1", "LOCAL_RANK": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = run("pretrain.py", cfg, env={**env, "RANK": "0", "LOCAL_RANK": "0"}, timeout=300)
    finally:
        peer.wait(timeout=60)
    one_line(r, 1, "rank 0 of 2: lost contact with another process of the group")
