import os

import pytest

# keep every test run on 2 cores predictable: one BLAS/OpenMP thread per process
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _chdir_tmp(tmp_path, monkeypatch):
    """No test writes into the working directory: each runs inside its own tmp_path."""
    monkeypatch.chdir(tmp_path)
