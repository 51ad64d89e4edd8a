"""Every test sees the repository on sys.path and runs with the repository root as its working directory, so
the stage scripts, `oceansar` and the shipped configs resolve the same way from wherever pytest is started.
Shared fixtures: data_dir (a tiny shard dataset per test module) and one_thread (one OpenMP thread)."""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from helpers import make_dataset  # noqa: E402  (needs the repository on sys.path)


@pytest.fixture(autouse=True)
def repo_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "archive")


@pytest.fixture
def one_thread():
    """Tiny tensors: a second OpenMP thread only adds synchronisation (and thrashes on a shared 2-core machine);
    results do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
