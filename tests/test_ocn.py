"""Tests of oceansar/ocn.py: Level-2 OCN labels read from the real fixtures (when ../shared is present) and from
small netCDF files in the real layout."""

import os

import netCDF4
import numpy as np
import pytest

from oceansar import ocn
import s1_fixtures as fx


OCN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "fixtures", "ocn")


# ---------------------------------------------------------------- OCN labels
@pytest.mark.skipif(not os.path.isdir(OCN_DIR), reason="real OCN fixtures absent")
def test_real_ocn_fixtures():
    labels, failures = ocn.load_labels({"ocn_dir": OCN_DIR, "ocn_max_quality": 1, "ocn_drop_land": True})
    assert failures == [] and len(labels) == 2
    old = labels["s1a-wv2-slc-vv-20210201t083307-20210201t083310-036394-044589-004"]
    new = labels["s1a-wv2-slc-vv-20231003t122403-20231003t122406-050600-061886-006"]
    assert old["wind"] == pytest.approx(13.69, abs=0.01) and old["sar_wind"] == pytest.approx(13.51, abs=0.01)
    assert np.isnan(old["hs"])  # -999 fill: missing, never invented
    assert [old[f"hs_p{i}"] for i in (1, 2, 3)] == pytest.approx([2.88, 1.89, 0.99], abs=0.01)
    assert [old[f"wl_p{i}"] for i in (1, 2, 3)] == pytest.approx([208, 438, 208], abs=1)
    assert (old["ocn_nrcs"], old["incidence"], old["ocn_nv"]) == (pytest.approx(-10.98, abs=0.01),
                                                                  pytest.approx(36.9, abs=0.05),
                                                                  pytest.approx(1.259, abs=1e-3))
    assert (old["lat"], old["lon"]) == (pytest.approx(58.76, abs=0.01), pytest.approx(-32.57, abs=0.01))
    assert new["wind"] == pytest.approx(23.02, abs=0.01) and new["sar_wind"] == pytest.approx(22.00, abs=0.01)
    assert new["hs"] == pytest.approx(13.58, abs=0.01) and new["ocn_nrcs"] == pytest.approx(-7.18, abs=0.01)
    assert (new["incidence"], new["ocn_nv"]) == (pytest.approx(35.9, abs=0.05), pytest.approx(1.566, abs=1e-3))
    assert (new["lat"], new["lon"]) == (pytest.approx(-55.79, abs=0.01), pytest.approx(104.13, abs=0.01))
    assert np.isnan(new["hs_p3"]) and np.isnan(old["quality_flag"]) and old["land_flag"] == 0  # fill flag: unknown


def test_ocn_dir_missing(tmp_path):
    with pytest.raises(ValueError, match="ocn_dir"):
        ocn.load_labels({"ocn_dir": str(tmp_path / "none")})
    assert ocn.load_labels({"ocn_dir": None}) == ({}, [])


def test_ocn_variable_absent_is_tolerated(tmp_path):
    path = tmp_path / "ocn" / (fx.imagette_id(1, "wv1", kind="ocn") + ".nc")
    fx.make_ocn(path)
    with netCDF4.Dataset(str(tmp_path / "ocn" / "s1a-wv1-ocn-vv-x-002.nc"), "w") as ds:
        ds.createDimension("oswAzSize", 1)
        ds.createDimension("oswRaSize", 1)
        v = ds.createVariable("oswWindSpeed", "f4", ("oswAzSize", "oswRaSize"))
        v[:] = 9.0
    labels, failures = ocn.load_labels({"ocn_dir": str(tmp_path / "ocn")})
    lab = labels["s1a-wv1-slc-vv-x-002"]
    assert failures == [] and lab["sar_wind"] == 9.0 and np.isnan(lab["wind"]) and np.isnan(lab["hs_p1"])
