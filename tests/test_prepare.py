"""prepare.py end to end on the synthetic source: datasets, splits, heavy tail, idempotent resumable writes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import shards

TINY = """
data:
  source: synthetic
  root: {root}
  image_size: 32
  pixel_spacing: 100.0
  num_samples: 300
  samples_per_shard: 64
  eval_per_class: 8
  regression_samples: 40
  workers: {workers}
  montage: {montage}
"""


def run_prepare(tmp_path, name="data", workers=1, montage=False, extra=()):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(TINY.format(root=tmp_path / name, workers=workers, montage=str(montage).lower()))
    r = subprocess.run([sys.executable, "prepare.py", str(cfg), *extra], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return tmp_path / name, r.stdout


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return run_prepare(tmp_path_factory.mktemp("prep"), montage=True)


def test_three_datasets(prepared):
    root, out = prepared
    archive, tengeop, regression = (shards.ShardDataset(str(root / n), verify=True)
                                    for n in ("archive", "tengeop", "regression"))
    assert (len(archive), len(tengeop), len(regression)) == (300, 80, 40)
    assert archive.shape == (1, 32, 32) and archive.pixel_spacing == 100.0
    assert (root / "archive" / "montage.png").stat().st_size > 10_000
    assert (root / "archive" / "config.yaml").exists()
    # The archive's class prior is heavy-tailed; the printed histogram says so.
    counts = np.bincount(archive.meta["class_idx"], minlength=10)
    assert counts.max() / counts.sum() > 0.3 and (counts / counts.sum()).min() < 0.05
    assert "Pure Ocean Waves" in out and "%" in out
    # The TenGeoP-like set is exactly balanced and split 80/5/15 inside every class.
    assert (np.bincount(tengeop.meta["class_idx"], minlength=10) == 8).all()
    for c in range(10):
        split = tengeop.meta["split"][tengeop.meta["class_idx"] == c]
        assert sorted(split.tolist()) == sorted(["train"] * 6 + ["val"] * 1 + ["test"] * 1) or \
            (split == "train").sum() >= 6
    assert set(regression.meta["split"]) == {"train", "val", "test"}
    assert np.isfinite(regression.meta["wind"]).all() and np.isfinite(regression.meta["hs"]).all()
    assert regression.meta["wind"].std() > archive.meta["wind"].std()  # wide conditions, not the archive's band
    # Disjoint seeds: no evaluation image is an archive image.
    assert not set(tengeop.meta["id"]) & set(archive.meta["id"])


def test_worker_count_does_not_change_the_data(prepared, tmp_path):
    root, _ = prepared
    other, _ = run_prepare(tmp_path, workers=2)
    a = json.load(open(root / "archive" / "manifest.json"))["shards"]
    b = json.load(open(other / "archive" / "manifest.json"))["shards"]
    assert [s["sha256"] for s in a] == [s["sha256"] for s in b]


def test_rerun_resumes_and_is_idempotent(prepared, tmp_path):
    root, _ = prepared
    reference = json.load(open(root / "archive" / "manifest.json"))
    folder, _ = run_prepare(tmp_path)
    archive = folder / "archive"
    # An interrupted run: one shard gone, a half-written temporary left behind, no manifest yet.
    os.remove(archive / "images_00002.npy")
    (archive / "images_00003.npy.tmp").write_bytes(b"half")
    os.remove(archive / "manifest.json")
    before = os.stat(archive / "images_00001.npy").st_mtime_ns
    run_prepare(tmp_path)
    assert os.stat(archive / "images_00001.npy").st_mtime_ns == before  # complete shards are skipped
    resumed = json.load(open(archive / "manifest.json"))
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in reference["shards"]]
    ds = shards.ShardDataset(str(archive), verify=True)
    assert len(set(ds.meta["id"])) == len(ds) == 300
