"""Models: shapes, non-negativity, attention outputs, hyper-parameter checks, checkpoints.

Tiny widths so that the whole file runs in a few seconds on 2 cores.
"""

import pytest

torch = pytest.importorskip("torch")

from hydrolayer import __version__  # noqa: E402
from hydrolayer.models import AttentionUNet3D, UNet3D, build_model, load_model, save_checkpoint  # noqa: E402
from hydrolayer.util import InputError  # noqa: E402

TINY = dict(channels=(2, 4, 4, 8))


@pytest.mark.parametrize("cls", [UNet3D, AttentionUNet3D])
def test_window_shape_and_non_negative(cls):
    torch.manual_seed(0)
    m = cls(**TINY).eval()
    x = torch.rand(2, 3, 32, 32, 64)
    with torch.no_grad():
        y = m(x)
    assert y.shape == (2, 1, 32, 32, 64)
    assert (y >= 0).all()


@pytest.mark.parametrize("cls", [UNet3D, AttentionUNet3D])
def test_fully_convolutional_on_larger_lateral_input(cls):
    m = cls(**TINY).eval()
    with torch.no_grad():
        y = m(torch.rand(1, 3, 64, 96, 64))
    assert y.shape == (1, 1, 64, 96, 64)


def test_attention_coefficients_per_scale():
    m = AttentionUNet3D(**TINY).eval()
    with torch.no_grad():
        y, att = m(torch.rand(1, 3, 32, 32, 64), return_attention=True)
    assert [tuple(a.shape) for a in att] == [(1, 1, 32, 32, 64), (1, 1, 16, 16, 32), (1, 1, 8, 8, 16)]
    assert all(((a >= 0) & (a <= 1)).all() for a in att)
    with pytest.raises(ValueError, match="AttentionUNet3D"):
        UNet3D(**TINY)(torch.rand(1, 3, 8, 8, 8), return_attention=True)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(channels=(4, 8, 16)), "channels"),
        (dict(channels=(4, 8, 0, 16)), "channels"),
        (dict(in_channels=0), "in_channels"),
        (dict(out_channels=1.5), "out_channels"),
        (dict(kernel_size=2), "kernel_size"),
        (dict(norm="layer"), "norm"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_bad_hyper_parameters_name_the_parameter(kwargs, word):
    for cls in (UNet3D, AttentionUNet3D):
        with pytest.raises(ValueError, match=word):
            cls(**kwargs)


def test_bad_input_shape():
    m = UNet3D(**TINY)
    with pytest.raises(ValueError, match="divisible by 8"):
        m(torch.rand(1, 3, 30, 32, 64))
    with pytest.raises(ValueError, match="in_channels"):
        m(torch.rand(1, 2, 32, 32, 64))


@pytest.mark.parametrize("name", ["unet", "attention-unet"])
def test_checkpoint_round_trip(tmp_path, name):
    torch.manual_seed(1)
    m = build_model(name, **TINY, norm="batch").eval()
    extra = {
        "descriptor": {"sigma": 0.5},
        "window": {"cell": [[10, 0, 0], [0, 10, 0], [0, 0, 20]], "shape": [32, 32, 64], "origin": [0, 0, -5]},
        "sigma_target": 0.4,
    }
    path = save_checkpoint(tmp_path / "m.pt", m, extra)
    # the file is plain data: weights_only loading works
    raw = torch.load(path, weights_only=True)
    assert raw["model"] == name and raw["version"] == __version__ and raw["kwargs"]["channels"] == [2, 4, 4, 8]
    m2, meta = load_model(path)
    assert type(m2) is type(m) and not m2.training
    assert meta["sigma_target"] == 0.4 and meta["descriptor"]["sigma"] == 0.5 and "state_dict" not in meta
    x = torch.rand(1, 3, 32, 32, 64)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left behind


def test_load_model_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(InputError, match="bad.pt"):
        load_model(bad)
    torch.save({"model": "resnet", "kwargs": {}, "state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="unknown model"):
        load_model(tmp_path / "other.pt")
