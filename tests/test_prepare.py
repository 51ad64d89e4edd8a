"""prepare.py end to end on the synthetic source: datasets, splits, heavy tail, idempotent resumable writes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from oceansar import shards

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


# ------------------------------------------------------------------------------------------------ real sources
from s1_fixtures import make_ocn, make_safe, make_tengeop, zip_safe  # noqa: E402

REAL = """
data:
  source: {source}
  input: {input}
  root: {root}
  image_size: 16
  pixel_spacing: 20.0
  samples_per_shard: 2
  workers: 1
  montage: false
  ocn_dir: {ocn}
"""


def real_inputs(tmp_path):
    """Two SAFE products (a folder and a zip), OCN labels for some imagettes, and damaged inputs."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    _, ids_a = make_safe(inputs, n_imagettes=2, lines=120, samples=160, seed=1)
    safe_b, ids_b = make_safe(tmp_path / "zipme", n_imagettes=2, lines=120, samples=160, seed=2, mission="s1b")
    zip_safe(safe_b, inputs / (os.path.basename(str(safe_b))[:-5] + ".zip"))
    (inputs / "S1A_WV_SLC__1SSV_20210401T000000_20210401T000100_037000_045000_DEAD.zip").write_bytes(b"not a zip")
    ocn = tmp_path / "ocn"
    for i, sid in enumerate(ids_a):
        make_ocn(ocn / (sid.replace("-slc-", "-ocn-") + ".nc"), wind=5.0 + i, hs=1.0 + i)
    return inputs, ocn, ids_a + ids_b


def run_real(tmp_path, inputs, ocn, extra=(), source="safe"):
    cfg = tmp_path / "real.yaml"
    cfg.write_text(REAL.format(source=source, input=inputs, root=tmp_path / "out", ocn=ocn or "null"))
    return subprocess.run([sys.executable, "prepare.py", str(cfg), *extra], capture_output=True, text=True)


def test_safe_dirs_and_zips_with_labels_and_failures(tmp_path):
    inputs, ocn, ids = real_inputs(tmp_path)
    r = run_real(tmp_path, inputs, ocn)
    assert r.returncode == 0, r.stderr
    assert "4 ok, 1 failed" in r.stdout
    ds = shards.ShardDataset(str(tmp_path / "out" / "archive"), verify=True)
    assert sorted(ds.meta["id"]) == sorted(ids)
    wind = dict(zip(ds.meta["id"], ds.meta["wind"]))
    assert wind[ids[0]] == pytest.approx(5.0) and wind[ids[1]] == pytest.approx(6.0)
    assert np.isnan(wind[ids[2]])  # no OCN file: the label stays missing, the imagette stays
    assert set(ds.meta["split"]) <= {"train", "val", "test"}
    failures = [json.loads(line) for line in open(tmp_path / "out" / "archive" / "failures.jsonl")]
    assert len(failures) == 1 and "DEAD.zip" in failures[0]["file"] and failures[0]["reason"]


def test_duplicate_products_are_listed_not_repeated(tmp_path):
    inputs, ocn, ids = real_inputs(tmp_path)
    zip_safe(make_safe(tmp_path / "again", n_imagettes=2, lines=120, samples=160, seed=1)[0],
             inputs / "copy_of_first_product.zip")
    r = run_real(tmp_path, inputs, ocn)
    assert r.returncode == 0 and "4 ok, 3 failed" in r.stdout
    ds = shards.ShardDataset(str(tmp_path / "out" / "archive"))
    assert sorted(ds.meta["id"]) == sorted(ids)
    reasons = [json.loads(line)["reason"] for line in open(tmp_path / "out" / "archive" / "failures.jsonl")]
    assert sum(r.startswith("duplicate") for r in reasons) == 2, reasons


def test_strict_makes_a_failure_fatal(tmp_path):
    inputs, ocn, _ = real_inputs(tmp_path)
    r = run_real(tmp_path, inputs, ocn, extra=["--strict"])
    assert r.returncode != 0 and "DEAD.zip" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "archive" / "manifest.json").exists()


def test_nothing_readable_exits_nonzero(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "S1A_WV_SLC__1SSV_20210401T000000_20210401T000100_037000_045000_DEAD.zip").write_bytes(b"junk")
    r = run_real(tmp_path, inputs, None)
    assert r.returncode != 0 and "0 ok, 1 failed" in r.stdout and "no input could be read" in r.stderr


def test_interrupted_real_run_resumes_exactly(tmp_path):
    inputs, ocn, _ = real_inputs(tmp_path)
    assert run_real(tmp_path / "", inputs, ocn).returncode == 0
    folder = tmp_path / "out" / "archive"
    reference = json.load(open(folder / "manifest.json"))
    # Interrupt: the last shard and the manifest are gone, a temporary is left over.
    last = len(reference["shards"]) - 1
    os.remove(folder / reference["shards"][last]["images"])
    os.remove(folder / "manifest.json")
    (folder / "images_00000.npy.tmp").write_bytes(b"x")
    r = run_real(tmp_path, inputs, ocn)
    assert r.returncode == 0 and "4 ok, 1 failed" in r.stdout
    resumed = json.load(open(folder / "manifest.json"))
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in reference["shards"]]
    assert len(open(folder / "failures.jsonl").readlines()) == 1  # no failure listed twice


def test_tengeop_source(tmp_path):
    make_tengeop(tmp_path / "tengeop", per_class=20)
    r = run_real(tmp_path, tmp_path / "tengeop", None, source="tengeop")
    assert r.returncode == 0, r.stderr
    ds = shards.ShardDataset(str(tmp_path / "out" / "tengeop"))
    assert len(ds) == 200 and (np.bincount(ds.meta["class_idx"], minlength=10) == 20).all()
    assert set(ds.meta["split"]) == {"train", "val", "test"}
