"""benchmarks/gpu_check.py: its CPU dry run goes through every step, and its synthetic path needs no netCDF4."""
import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT

SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_dry_run_goes_through_every_step_and_writes_the_table(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(tmp_path)], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=1800)  # ~1 min of CPU; a loaded machine stretches it
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = (tmp_path / "gpu_check.md").read_text()
    assert table in out.stdout
    assert "| vit_s16 | False |" in table and "| demo | False |" in table and "failed" not in table
    assert "CUDA tests:" in table and "curation of 3000 pool features" in table
    assert "evaluation (demo checkpoint, 100 labelled images): ok" in table
    assert (tmp_path / "eval" / "report.md").exists() and (tmp_path / "run_demo" / "checkpoint.pt").exists()


def test_the_check_and_its_synthetic_path_never_import_netcdf4():
    code = ("import sys; sys.path[:0] = [%r, %r]; import gpu_check; "
            "assert 'netCDF4' not in sys.modules, 'netCDF4 imported'" % (ROOT, os.path.join(ROOT, "benchmarks")))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the full check runs on a GPU")
def test_the_full_check_refuses_a_machine_without_cuda(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path)], cwd=ROOT, env=ENV,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: no CUDA device")
