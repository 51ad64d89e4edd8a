"""Every test sees the repository on sys.path and runs with the repository root as its working directory, so
the stage scripts, `oceansar` and the shipped configs resolve the same way from wherever pytest is started."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def repo_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)
