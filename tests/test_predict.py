"""Tests for hydrolayer.predict: tiling/blending, periodicity, domain checks, the registry,
the outputs and the CLI.

No trained weights are needed (or used) here: the networks are tiny *untrained* U-Nets built
with a fixed seed and saved with ``models.save_checkpoint`` inside ``tmp_path``, or plain
callables. Seams, periodicity, symmetry and I/O are properties of the prediction machinery,
not of the weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from hydrolayer import predict
from hydrolayer.inference import run_batches
from hydrolayer.util import InputError

torch = pytest.importorskip("torch")


def _pointwise(x):
    """A 'network' with no spatial extent: tiling must reproduce it exactly everywhere."""
    return (x[:, :1] * 2.0 + x[:, 1:2] - 0.5 * x[:, 2:3]).clone()


@pytest.fixture(scope="module")
def tiny_net():
    from hydrolayer.models import UNet3D

    torch.manual_seed(0)
    net = UNet3D(channels=(2, 4, 4, 8)).eval()
    return net


def test_blend_weight_partition_of_unity():
    w = predict.blend_weight(32)
    assert w[0] < 0.01 and w[-1] < 0.01 and w.max() <= 1
    np.testing.assert_allclose(w[:16] + w[16:], 1.0, atol=1e-12)


@pytest.mark.parametrize("nx,ny", [(64, 48), (78, 50), (20, 16), (33, 7)])
def test_tiles_reproduce_a_pointwise_map_exactly(nx, ny):
    """No seams: blending normalises to exactly the per-window value, for any cell size,
    including cells smaller than a window (the window wraps onto itself)."""
    rng = np.random.default_rng(1)
    desc = rng.random((3, nx, ny, 16)).astype(np.float32)
    out = predict.tile_predict(desc, _pointwise, window=32, batch=5)
    expected = _pointwise(torch.from_numpy(desc[None]))[0, 0].numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    out = predict.cell_predict(desc, _pointwise, pad=16)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_tiles_are_shift_equivariant_by_whole_strides(tiny_net):
    """Rolling the descriptor by a multiple of the stride rolls the prediction exactly."""
    rng = np.random.default_rng(2)
    desc = rng.random((3, 64, 48, 16)).astype(np.float32) * 0.05
    a = predict.tile_predict(desc, tiny_net, window=32, stride=16)
    b = predict.tile_predict(np.roll(desc, (16, 32), axis=(1, 2)), tiny_net, window=32, stride=16)
    np.testing.assert_allclose(np.roll(a, (16, 32), axis=(0, 1)), b, atol=1e-5)
    desc = rng.random((3, 72, 48, 16)).astype(np.float32) * 0.05  # the default stride, 24: starts 0, 24, 48 / 0, 24
    assert predict.default_stride(32) == 24
    a = predict.tile_predict(desc, tiny_net, window=32)
    b = predict.tile_predict(np.roll(desc, (24, 24), axis=(1, 2)), tiny_net, window=32)
    np.testing.assert_allclose(np.roll(a, (24, 24), axis=(0, 1)), b, atol=1e-5)
    c = predict.cell_predict(desc, tiny_net, pad=16)
    d = predict.cell_predict(np.roll(desc, (8, 5), axis=(1, 2)), tiny_net, pad=16)
    np.testing.assert_allclose(np.roll(c, (8, 5), axis=(0, 1)), d, atol=1e-5)


# --------------------------------------------------------------------------- registry
def test_empty_registry_says_so(tmp_path):
    assert predict.list_models(tmp_path) == []
    with pytest.raises(InputError, match="no trained model is shipped yet") as err:
        predict.load_predictor(None, directory=tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="no such model"):
        predict.load_predictor("unet-l1", directory=tmp_path)
    assert "no trained models shipped yet" in predict.models_text(directory=tmp_path)


def _save(tmp_path, net, name="tiny", training=None):
    from hydrolayer.grids import GridSpec
    from hydrolayer.models import save_checkpoint

    extra = {
        "descriptor": {"sigma": 0.5, "channels": ["C", "O", "Ca"], "units": "A^-3"},
        "window": GridSpec.orthogonal((10.0, 10.0, 20.0), (32, 32, 64), (0, 0, -5.0)).to_dict(),
        "sigma_target": 0.4,
    }
    if training is not None:
        extra["training"] = {"surfaces": training}
    return save_checkpoint(tmp_path / f"{name}.pt", net, extra)


def test_registry_lists_cards_and_default(tmp_path, tiny_net):
    _save(tmp_path, tiny_net, "attention-a")
    _save(tmp_path, tiny_net, "unet-b")
    (tmp_path / "unet-b.md").write_text("# unet-b: untrained test model\n\nno numbers\n")
    names = [m.name for m in predict.list_models(tmp_path)]
    assert names == ["attention-a", "unet-b"]
    assert predict.default_model_name(tmp_path) == "unet-b"
    (tmp_path / "DEFAULT").write_text("attention-a\n")
    assert predict.default_model_name(tmp_path) == "attention-a"
    text = predict.models_text(directory=tmp_path)
    assert "attention-a (default)" in text and "unet-b: untrained test model" in text and "unet-b: unet-b" not in text
    assert "no numbers" in predict.models_text("unet-b", directory=tmp_path)
    p = predict.load_predictor("unet-b", directory=tmp_path)
    assert p.name == "unet-b" and p.sigma == 0.5 and p.window_shape == (32, 32, 64)


# --------------------------------------------------------------------------- with structures (fixture slab: conftest.py)
@pytest.fixture()
def predictor(tmp_path, tiny_net):
    return predict.load_predictor(_save(tmp_path, tiny_net, training=["calcite-104"]))


def test_lattice_shift_and_rewrap_give_the_same_density(slab, predictor):
    base = predict.predict_density(slab, model=predictor)
    from hydrolayer import descriptors

    assert base.values.shape[1:] == descriptors.describe_cell(slab, sigma=0.5).values.shape[1:]
    assert base.units == "rho/rho_bulk" and base.channels == ("water",)
    shifted = slab.copy()
    shifted.positions += slab.cell[0] - 2 * slab.cell[1]
    moved = predict.predict_density(shifted, model=predictor)
    np.testing.assert_allclose(moved.values, base.values, atol=1e-5)
    wrapped = shifted.copy()
    wrapped.wrap()
    again = predict.predict_density(wrapped, model=predictor)
    np.testing.assert_allclose(again.values, base.values, atol=1e-5)
    up = slab.copy()
    up.positions[:, 2] += 1.7  # a vertical shift moves the grid with the surface
    high = predict.predict_density(up, model=predictor)
    np.testing.assert_allclose(high.values, base.values, atol=1e-5)
    np.testing.assert_allclose(high.spec.origin[2] - base.spec.origin[2], 1.7, atol=1e-6)


def test_unknown_element_refused_in_one_line(slab, predictor):
    bad = slab.copy()
    i = bad.get_chemical_symbols().index("Ca")
    bad.symbols[i] = "Mg"
    with pytest.raises(InputError, match="Mg") as err:
        predict.predict_density(bad, model=predictor, source="mg.xyz")
    assert "\n" not in str(err.value) and str(err.value).startswith("mg.xyz:")


def test_unknown_facet_and_far_from_training_warn(slab, predictor):
    other = slab.copy()
    other.info["surface"] = "aragonite-010"
    with pytest.warns(UserWarning, match="not one the model was trained on"):
        predict.predict_density(other, model=predictor)
    from hydrolayer.structures import build_surface

    holes = build_surface("calcite-104", size=(2, 2), layers=2, pair_vacancies=2, seed=1)
    with pytest.warns(UserWarning, match="far from every training surface"):
        predict.predict_density(holes, model=predictor)


def test_orthogonal_supercell_search():
    hexa = np.array([[1.0, 0.0], [-0.5, np.sqrt(3) / 2]])
    M = predict.orthogonal_supercell(hexa)
    assert round(np.linalg.det(M)) == 2 and tuple(M[0]) == (1, 0)
    v = M @ hexa
    assert abs(v[0] @ v[1]) < 1e-9
    assert predict.orthogonal_supercell(np.array([[4.991, 0.0], [1.2345678, 8.0]])) is None


def test_non_orthogonal_cell_predicted_via_supercell(tmp_path, slab, predictor):
    """The same surface given with a sheared basis (b' = b + a): predicted on the orthogonal
    supercell and interpolated back; where the grids coincide the numbers are the same."""
    rect = predict.predict_density(slab, model=predictor)
    sheared = slab.copy()
    cell = sheared.cell[:].copy()
    cell[1] = cell[1] + cell[0]
    sheared.set_cell(cell)  # same lattice, same atoms, oblique basis
    out = predict.predict_density(sheared, model=predictor)
    assert out.meta["supercell"] == [[1, 0], [-1, 1]]
    assert np.allclose(out.spec.cell[1, :2], cell[1, :2])
    assert out.spec.shape[0] == rect.spec.shape[0]
    np.testing.assert_allclose(out.values[0, :, 0], rect.values[0, :, 0], atol=1e-5)  # j = 0 rows coincide
    np.testing.assert_allclose(out.values[0].mean(axis=(0, 1)), rect.values[0].mean(axis=(0, 1)), rtol=0.02, atol=1e-3)
    predict.write_outputs(out, tmp_path / "skew")  # pictures of a skewed grid
    oblique = slab.copy()
    cell = oblique.cell[:].copy()
    cell[1, 0] = 1.2345678
    oblique.set_cell(cell)
    with pytest.raises(InputError, match="oblique lateral cell"):
        predict.predict_density(oblique, model=predictor)


def test_outputs_and_cli(tmp_path, slab, predictor, capsys):
    import argparse

    from ase.io.cube import read_cube_data

    from hydrolayer.structures import write_structure

    grid = predict.predict_density(slab, model=predictor, method="cell")
    written = predict.write_outputs(grid, tmp_path / "out")
    assert {p.name for p in written} == {"water.cube", "water.npz", "profile.png", "slices.png", "xz.png"}
    data, atoms = read_cube_data(str(tmp_path / "out" / "water.cube"))
    np.testing.assert_allclose(data, grid.values[0], rtol=1e-4, atol=1e-6)
    assert len(atoms) == len(slab)

    path = write_structure(slab, tmp_path / "slab.extxyz")
    from hydrolayer.commands import models
    from hydrolayer.commands import predict as predict_command

    parser = argparse.ArgumentParser(prog="hydrolayer")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (predict_command.CLICommand, models.CLICommand):
        command.add_arguments(sub.add_parser(command.name))
        sub.choices[command.name].set_defaults(func=command.run)
    args = parser.parse_args(["predict", str(path), "--model", str(predictor.source), "--out", str(tmp_path / "cli")])
    args.func(args)
    out = capsys.readouterr().out
    assert "water.cube" in out and "xz.png" in out
    args = parser.parse_args(["models"])
    args.func(args)
    assert capsys.readouterr().out.strip()


def test_blend_weight_with_smaller_overlap():
    w = predict.blend_weight(32, 8)
    np.testing.assert_allclose(w[8:24], 1.0)
    np.testing.assert_allclose(w[:8] + w[24:], 1.0, atol=1e-12)  # neighbours at stride 24
    rng = np.random.default_rng(3)
    desc = rng.random((3, 72, 50, 8)).astype(np.float32)
    out = predict.tile_predict(desc, _pointwise, window=32, stride=24)
    np.testing.assert_allclose(out, _pointwise(torch.from_numpy(desc[None]))[0, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_optimised_network_gives_the_same_numbers(tmp_path, tiny_net):
    path = _save(tmp_path, tiny_net)
    fast = predict.load_predictor(path, precision="float32")
    plain = predict.load_predictor(path, optimise=False, precision="float32")
    rng = np.random.default_rng(4)
    desc = (rng.random((3, 40, 36, 64)) * 0.05).astype(np.float32)
    a = predict.tile_predict(desc, fast.net)
    b = predict.tile_predict(desc, plain.net)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    one = desc[None, :, :32, :32]
    np.testing.assert_allclose(run_batches(fast.net, one, 8), run_batches(plain.net, one, 8), atol=1e-5)


def test_precision_choices(tmp_path, tiny_net):
    path = _save(tmp_path, tiny_net)
    assert predict.resolve_precision("float32") == "float32"
    assert predict.resolve_precision("auto") == ("bfloat16" if predict.bf16_supported() else "float32")
    with pytest.raises(ValueError, match="precision must be one of"):
        predict.load_predictor(path, precision="float16")
    lo = predict.load_predictor(path, precision="bfloat16")
    hi = predict.load_predictor(path, precision="float32")
    assert (lo.precision, hi.precision) == ("bfloat16", "float32")
    rng = np.random.default_rng(5)
    desc = (rng.random((3, 40, 36, 64)) * 0.05).astype(np.float32)
    a = predict.tile_predict(desc, lo.net)
    b = predict.tile_predict(desc, hi.net)
    assert a.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: close to float32, but not the same numbers
    assert np.abs(a - b).mean() < 1e-2 * np.abs(b).mean()
    assert not np.array_equal(a, b)
