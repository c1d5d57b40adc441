import numpy as np
import pytest

from hydrolayer.grids import Grid, GridSpec, read_grid
from hydrolayer.util import InputError, atomic_output


def _grid(channels=("C", "O", "Ca")):
    rng = np.random.default_rng(0)
    spec = GridSpec(np.array([[10.0, 0, 0], [2.0, 9.0, 0], [0, 0, 20.0]]), (8, 6, 12), (1.0, -2.0, 3.5))
    return Grid(spec, rng.random((len(channels), 8, 6, 12)).astype(np.float32), channels, units="A^-3", sigma=0.5)


def test_points_follow_cube_convention():
    spec = GridSpec.orthogonal((10, 10, 20), (32, 32, 64), (1, 2, 3))
    p = spec.points()
    assert np.allclose(p[1, 0, 0] - p[0, 0, 0], [0.3125, 0, 0])
    assert np.allclose(p[-1, -1, -1], [1 + 9.6875, 2 + 9.6875, 3 + 19.6875])


def test_cube_roundtrip_with_ase(tmp_path):
    from ase.build import molecule
    from ase.io.cube import read_cube_data

    g = _grid(("water",))
    g.atoms = molecule("H2O")
    g.write_cube(tmp_path / "w.cube")
    data, atoms = read_cube_data(str(tmp_path / "w.cube"))
    assert np.allclose(data, g.values[0], rtol=1e-5)
    assert np.allclose(atoms.cell[:], g.spec.cell, atol=1e-5)  # cell comes back in Å
    assert np.allclose(atoms.positions, g.atoms.positions, atol=1e-5)
    back = read_grid(tmp_path / "w.cube")
    assert back.channels == ("water",) and back.units == "A^-3" and back.sigma == 0.5
    assert back.spec == g.spec


def test_multichannel_cube_writes_one_file_per_channel(tmp_path):
    g = _grid()
    written = g.write(tmp_path / "d.cube")
    assert [p.name for p in written] == ["d.C.cube", "d.O.cube", "d.Ca.cube"]
    assert np.allclose(read_grid(written[2]).values[0], g.channel("Ca"), rtol=1e-5)


def test_npz_roundtrip(tmp_path):
    g = _grid()
    g.meta["note"] = "x"
    g.write(tmp_path / "d.npz")
    with np.load(tmp_path / "d.npz") as z:
        assert set(z.files) >= {"values", "channels", "cell", "origin", "sigma", "units"}
    back = read_grid(tmp_path / "d.npz")
    assert np.array_equal(back.values, g.values) and back.spec == g.spec
    assert back.channels == g.channels and back.units == "A^-3" and back.sigma == 0.5 and back.meta == {"note": "x"}


def test_bad_files(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(InputError, match="x.npz: not a hydrolayer grid"):
        read_grid(tmp_path / "x.npz")
    (tmp_path / "x.cube").write_text("only\ntwo lines\n")
    with pytest.raises(InputError, match="x.cube: not a readable cube file"):
        read_grid(tmp_path / "x.cube")
    with pytest.raises(InputError, match="unknown grid format"):
        read_grid(tmp_path / "x.txt")


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.npz"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            raise RuntimeError
    assert target.read_text() == "old"


def test_shape_mismatch_is_an_error():
    spec = GridSpec.orthogonal((1, 1, 1), (2, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        Grid(spec, np.zeros((1, 3, 2, 2)))
