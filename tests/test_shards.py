"""The shard format: what is written is read back, and every kind of damage gives a clear error."""
import copy
import json
import pickle

import numpy as np
import pytest

from oceansar import shards


def build(folder, counts=(5, 5, 3), size=8, seed=0):
    rng = np.random.default_rng(seed)
    writer = shards.ShardWriter(str(folder), size, 50.0, samples_per_shard=5)
    images = rng.normal(-15, 3, (sum(counts), size, size)).astype(np.float32)
    start = 0
    for k, n in enumerate(counts):
        meta = shards.standard_meta(n, id=[f"img{start + i}" for i in range(n)], wind=np.arange(start, start + n),
                                    class_idx=np.full(n, k), extra=np.ones(n))
        writer.write(k, images[start:start + n], meta)
        start += n
    writer.finalize(len(counts))
    return images.astype(np.float16).astype(np.float32)


def test_roundtrip_random_access(tmp_path):
    images = build(tmp_path)
    ds = shards.ShardDataset(str(tmp_path), verify=True)
    assert len(ds) == 13 and ds.shape == (1, 8, 8)
    assert np.isclose(ds.mean, images.mean(), atol=1e-4) and np.isclose(ds.std, images.std(), rtol=1e-4)
    for i in [0, 4, 5, 12]:
        np.testing.assert_array_equal(ds.raw(i)[0], images[i])
        np.testing.assert_allclose(ds[i][0], (images[i] - ds.mean) / ds.std, rtol=1e-6)
    idx = np.array([12, 0, 7, 7, 3])
    np.testing.assert_array_equal(ds.read_batch(idx, raw=True)[:, 0], images[idx])
    assert list(ds.meta["id"][idx]) == [f"img{i}" for i in idx]
    assert ds.meta["wind"][7] == 7 and ds.meta["class_idx"][12] == 2 and np.isnan(ds.meta["hs"]).all()
    assert ds.meta["extra"].shape == (13,)
    with pytest.raises(IndexError):
        ds.read_batch([13])


def test_manifest_contents(tmp_path):
    build(tmp_path)
    m = json.load(open(tmp_path / "manifest.json"))
    assert m["shape"] == [1, 8, 8] and m["dtype"] == "float16" and m["unit"] == "dB" and m["count"] == 13
    assert m["pixel_spacing_m"] == 50.0 and [s["count"] for s in m["shards"]] == [5, 5, 3]
    assert all(len(s["sha256"]) == 64 for s in m["shards"])


def test_missing_manifest(tmp_path):
    with pytest.raises(shards.DataError, match="no manifest.json"):
        shards.ShardDataset(str(tmp_path))


def test_truncated_shard(tmp_path):
    build(tmp_path)
    path = tmp_path / "images_00001.npy"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(shards.DataError, match=r"images_00001.npy: 200 bytes, its header needs 768"):
        shards.ShardDataset(str(tmp_path))  # the always-on check: sizes and headers, no data read


def test_shape_mismatch(tmp_path):
    build(tmp_path)
    np.save(tmp_path / "images_00002.npy", np.zeros((3, 1, 4, 4), np.float16))
    with pytest.raises(shards.DataError, match=r"shape \(3, 1, 4, 4\).*manifest says \(3, 1, 8, 8\)"):
        shards.ShardDataset(str(tmp_path))


def test_wrong_checksum(tmp_path):
    build(tmp_path)
    path = tmp_path / "images_00000.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    ds = shards.ShardDataset(str(tmp_path))  # opening does not hash the images (fast) ...
    ds.raw(12)                                # ... nor does reading an intact shard ...
    with pytest.raises(shards.DataError, match="images_00000.npy: sha256 does not match"):
        ds.raw(0)                             # ... the first read of the flipped one does
    with pytest.raises(shards.DataError, match="images_00000.npy: sha256 does not match"):
        shards.ShardDataset(str(tmp_path), verify=True)  # and --verify refuses before any work


def test_each_shard_is_hashed_once_per_process(tmp_path, monkeypatch):
    build(tmp_path)
    ds = shards.ShardDataset(str(tmp_path))
    hashed = []
    real = shards.sha256_file
    monkeypatch.setattr(shards, "sha256_file", lambda p: hashed.append(p) or real(p))
    ds.read_batch([0, 6, 7, 12])
    ds.release()
    copy.copy(ds).read_batch([1, 8])  # a copy (the prefetch thread's) shares what was checked
    assert sorted(map(str, hashed)) == [str(tmp_path / f"images_0000{k}.npy") for k in range(3)]


def test_corrupt_meta_is_one_line_naming_the_file(tmp_path):
    build(tmp_path)
    path = tmp_path / "meta_00001.npz"
    path.write_bytes(b"PK" + path.read_bytes()[2:-40])
    with pytest.raises(shards.DataError, match="meta_00001.npz: sha256 does not match") as e:
        shards.ShardDataset(str(tmp_path))
    assert "\n" not in str(e.value)
    m = json.load(open(tmp_path / "manifest.json"))
    del m["shards"][1]["meta_sha256"]  # without a checksum the reader still names the file
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(shards.DataError, match="meta_00001.npz: unreadable metadata"):
        shards.ShardDataset(str(tmp_path))


def test_values_beyond_float16_are_refused_and_the_norm_stays_finite(tmp_path):
    writer = shards.ShardWriter(str(tmp_path), 4, 50.0, 5)
    big = np.full((2, 4, 4), -10.0, np.float32)
    big[1, 0, :2] = 7e4
    with pytest.raises(shards.DataError, match=r"shard 0 of .*: 2 pixel\(s\) in 1 image\(s\) exceed the float16"):
        writer.write(0, big, shards.standard_meta(2))
    assert not list(tmp_path.glob("*.np*"))
    m_path = tmp_path / "manifest.json"
    build(tmp_path / "ok")
    m = json.load(open(tmp_path / "ok" / "manifest.json"))
    m["norm_std"] = float("nan")
    (tmp_path / "ok" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(shards.DataError, match="std nan is not usable"):
        shards.ShardDataset(str(tmp_path / "ok"))
    assert not m_path.exists()


def test_interrupted_write_resumes_without_duplicates(tmp_path):
    reference = build(tmp_path / "ref")
    # Simulate a crash: shard 0 complete, shard 1 left as a temporary file, nothing else, no manifest.
    rng = np.random.default_rng(0)
    images = rng.normal(-15, 3, (13, 8, 8)).astype(np.float32)
    writer = shards.ShardWriter(str(tmp_path / "run"), 8, 50.0, 5)
    writer.write(0, images[:5], shards.standard_meta(5, id=[f"img{i}" for i in range(5)]))
    (tmp_path / "run" / "images_00001.npy.tmp").write_bytes(b"partial")
    with pytest.raises(RuntimeError, match="shard 1 .* missing"):
        writer.finalize(3)
    assert [k for k in range(3) if not writer.is_complete(k)] == [1, 2]
    for k, (a, b) in [(1, (5, 10)), (2, (10, 13))]:
        writer.write(k, images[a:b], shards.standard_meta(b - a, id=[f"img{i}" for i in range(a, b)]))
    writer.finalize(3)
    ds = shards.ShardDataset(str(tmp_path / "run"), verify=True)
    assert len(ds) == 13 and len(set(ds.meta["id"])) == 13
    np.testing.assert_array_equal(ds.read_batch(np.arange(13), raw=True)[:, 0], reference)


def test_nonfinite_pixels_rejected(tmp_path):
    writer = shards.ShardWriter(str(tmp_path), 4, 50.0, 5)
    bad = np.zeros((1, 4, 4), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        writer.write(0, bad, shards.standard_meta(1))


def test_pickle_drops_memmaps(tmp_path):
    build(tmp_path)
    ds = shards.ShardDataset(str(tmp_path))
    ds.raw(0)
    assert ds._maps
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._maps == {} and np.array_equal(clone.raw(3), ds.raw(3))
