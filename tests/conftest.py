import os

import pytest

# keep every test run on 2 cores predictable: one BLAS/OpenMP thread per process
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _chdir_tmp(tmp_path, monkeypatch):
    """No test writes into the working directory: each runs inside its own tmp_path."""
    monkeypatch.chdir(tmp_path)


# ------------------------------------------------------------------ shared by several test modules
@pytest.fixture(scope="module")
def slab():
    """A small calcite (10-14) slab (3 x 2 cells, 2 layers) to predict on."""
    pytest.importorskip("hydrolayer.descriptors")
    from hydrolayer.structures import build_surface

    return build_surface("calcite-104", size=(3, 2), layers=2)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The synthetic toy database of ``test_data.make_synthetic_db`` (4 training-pool rows)
    and a window-cache folder: ``(db, cache)``."""
    pytest.importorskip("torch")
    pytest.importorskip("hydrolayer.descriptors")
    from test_data import make_synthetic_db

    root = tmp_path_factory.mktemp("train")
    return make_synthetic_db(root, n_train=4), root / "cache"


@pytest.fixture(scope="session")
def tiny():
    """``tiny(cache, **overrides)``: the TrainConfig of a tiny, fast training run."""
    from hydrolayer.train import TrainConfig

    def make(cache, **kw):
        base = dict(
            channels=(2, 4, 4, 4),
            epochs=2,
            batch_size=2,
            windows_per_interface=1,
            max_val_windows=2,
            dropout=0.1,
            cache_dir=str(cache),
            seed=1,
            threads=1,
        )
        base.update(kw)
        return TrainConfig(**base)

    return make


@pytest.fixture(scope="session")
def tiny_member():
    """``tiny_member(path, seed, sigma=0.5, split=None)``: a tiny *untrained* U-Net saved as a
    checkpoint with the metadata training writes (``split``: the training split it records)."""
    torch = pytest.importorskip("torch")

    def make(path, seed, sigma=0.5, split=None):
        from hydrolayer.models import UNet3D, save_checkpoint
        from hydrolayer.train import TrainConfig, checkpoint_extra

        torch.manual_seed(seed)
        extra = checkpoint_extra(TrainConfig(sigma=sigma), "l1", split=split)
        return save_checkpoint(path, UNet3D(channels=(2, 4, 4, 8)).eval(), extra)

    return make


@pytest.fixture(scope="module")
def members(tmp_path_factory, tiny_member):
    """Three tiny untrained members (seeds 0, 1, 2): checkpoint paths."""
    root = tmp_path_factory.mktemp("members")
    return [tiny_member(root / f"m{k}.pt", seed=k) for k in range(3)]
