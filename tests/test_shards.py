"""The shard format: what is written is read back, and every kind of damage gives a clear error."""
import json

import numpy as np
import pytest

import shards


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
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        shards.ShardDataset(str(tmp_path))


def test_truncated_shard(tmp_path):
    build(tmp_path)
    path = tmp_path / "images_00001.npy"
    path.write_bytes(path.read_bytes()[:200])
    ds = shards.ShardDataset(str(tmp_path))
    ds.raw(0)
    with pytest.raises(ValueError, match="images_00001.npy"):
        ds.raw(6)


def test_shape_mismatch(tmp_path):
    build(tmp_path)
    np.save(tmp_path / "images_00002.npy", np.zeros((3, 1, 4, 4), np.float16))
    with pytest.raises(ValueError, match=r"shape \(3, 1, 4, 4\).*manifest says \(3, 1, 8, 8\)"):
        shards.ShardDataset(str(tmp_path)).raw(11)


def test_wrong_checksum(tmp_path):
    build(tmp_path)
    path = tmp_path / "images_00000.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    shards.ShardDataset(str(tmp_path))  # opening does not hash (fast) ...
    with pytest.raises(ValueError, match="sha256 does not match"):
        shards.ShardDataset(str(tmp_path), verify=True)  # ... verification does


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
    import pickle
    build(tmp_path)
    ds = shards.ShardDataset(str(tmp_path))
    ds.raw(0)
    assert ds._maps
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._maps == {} and np.array_equal(clone.raw(3), ds.raw(3))
