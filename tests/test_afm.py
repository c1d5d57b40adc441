"""Tests for hydrolayer.afm: the solvent-tip approximation against densities whose force is
known analytically (rho = exp(-U/kT) gives F = -grad U exactly), the floor, the tip blur,
the outputs of afm_maps and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from hydrolayer import afm
from hydrolayer.conventions import KB, RHO_BULK
from hydrolayer.grids import Grid, GridSpec
from hydrolayer.util import InputError

T = 300.0
KT = KB * T


def _grid_from_u(spec: GridSpec, u_func, atoms=None, units="rho/rho_bulk") -> Grid:
    pts = spec.points()
    u = u_func(pts[..., 0], pts[..., 1], pts[..., 2])
    return Grid(spec, np.exp(-u / KT)[None], ("rho",), units=units, atoms=atoms)


def _orthogonal_case(n=(32, 32, 128)):
    L = (10.0, 8.0, 20.0)
    spec = GridSpec.orthogonal(L, n, origin=(0.0, 0.0, -5.0))
    a, b, lam = 2.0 * KT, 1.5 * KT, 5.0

    def u(x, y, z):
        return a * np.sin(2 * np.pi * z / lam) + b * np.cos(2 * np.pi * x / L[0]) * np.cos(2 * np.pi * y / L[1])

    def grad(x, y, z):
        gx = -b * 2 * np.pi / L[0] * np.sin(2 * np.pi * x / L[0]) * np.cos(2 * np.pi * y / L[1])
        gy = -b * 2 * np.pi / L[1] * np.cos(2 * np.pi * x / L[0]) * np.sin(2 * np.pi * y / L[1])
        gz = a * 2 * np.pi / lam * np.cos(2 * np.pi * z / lam)
        return np.stack([gx, gy, gz])

    return spec, u, grad


def test_force_matches_analytic_potential():
    """rho = exp(-U/kT): F = -grad U, to the accuracy of second-order differences."""
    spec, u, grad = _orthogonal_case()
    grid = _grid_from_u(spec, u)
    f = afm.sta_force(grid, temperature=T).values
    pts = spec.points()
    expected = -grad(pts[..., 0], pts[..., 1], pts[..., 2])
    scale = np.abs(expected).max()
    # interior in z (one-sided differences at the ends are second order too, but looser)
    err = np.abs(f[..., 1:-1] - expected[..., 1:-1]).max() / scale
    assert err < 0.02, err
    assert np.abs(f - expected).max() / scale < 0.05


def test_force_units_nN():
    spec, u, _ = _orthogonal_case((16, 16, 64))
    grid = _grid_from_u(spec, u)
    ev = afm.sta_force(grid, temperature=T, units="eV/A")
    nn = afm.sta_force(grid, temperature=T, units="nN")
    assert nn.units == "nN" and ev.units == "eV/A"
    np.testing.assert_allclose(nn.values, ev.values * 1.602176634, rtol=1e-5, atol=1e-9)


def test_force_skewed_lateral_cell():
    """A hexagonal lateral cell: the gradient is transformed with the inverse voxel vectors."""
    cell = np.array([[10.0, 0, 0], [-5.0, 10.0 * np.sqrt(3) / 2, 0], [0, 0, 12.0]])
    spec = GridSpec(cell, (48, 48, 48), np.zeros(3))
    b = 1.0 * KT
    inv = np.linalg.inv(cell)
    g = 2 * np.pi * inv[:, 1]  # d f_b / d r, f_b the fractional coordinate along b

    def u(x, y, z):
        fb = (np.stack([x, y, z], -1) @ inv)[..., 1]
        return b * np.cos(2 * np.pi * fb) + 0.5 * KT * (z / 12.0) ** 2

    grid = _grid_from_u(spec, u)
    f = afm.sta_force(grid, temperature=T).values
    pts = spec.points()
    fb = (pts @ inv)[..., 1]
    expected = np.stack(
        [
            b * np.sin(2 * np.pi * fb) * g[0],
            b * np.sin(2 * np.pi * fb) * g[1],
            -KT * pts[..., 2] / 144.0,
        ]
    )
    assert np.abs(f - expected).max() / np.abs(expected).max() < 0.01


def test_rescaling_density_does_not_change_force_and_floor_zeroes_solid():
    spec, u, _ = _orthogonal_case((16, 16, 64))
    grid = _grid_from_u(spec, u)
    # a solid region: zero density in the lowest 10 planes
    grid.values[0, :, :, :10] = 0.0
    f1 = afm.sta_force(grid, temperature=T).values
    assert np.all(np.isfinite(f1))
    assert np.abs(f1[..., :9]).max() < 1e-12  # flat W under the floor: no force (one-sided differences: round-off)
    dens = Grid(spec, grid.values * RHO_BULK, ("rho",), units="A^-3")
    f2 = afm.sta_force(dens, temperature=T).values
    np.testing.assert_allclose(f1, f2, atol=1e-5)


def test_free_energy_floor():
    w = afm.free_energy(np.array([0.0, 1e-3, 1.0, np.e]), temperature=T, floor=1e-3)
    np.testing.assert_allclose(w, [KT * np.log(1e3), KT * np.log(1e3), 0.0, -KT], rtol=1e-6)


def test_tip_blur_damps_lateral_modulation_exactly():
    """A z-independent field: the blur multiplies a lateral cosine by exp(-R^2 k^2 / 2)."""
    L = 10.0
    spec = GridSpec.orthogonal((L, L, 10.0), (40, 40, 32))
    b = 1.0 * KT

    grid = _grid_from_u(spec, lambda x, y, z: b * np.cos(2 * np.pi * x / L))
    R = 1.0
    f0 = afm.sta_force(grid, temperature=T).channel("Fx")
    f1 = afm.sta_force(grid, temperature=T, tip_radius=R).channel("Fx")
    # Fx is a pure sine along x only for small b; compare the first Fourier component
    c0 = np.fft.fft(f0[:, 0, 5])[1]
    c1 = np.fft.fft(f1[:, 0, 5])[1]
    np.testing.assert_allclose(abs(c1) / abs(c0), np.exp(-0.5 * R**2 * (2 * np.pi / L) ** 2), rtol=1e-6)


def test_geometry_and_parameter_errors(tmp_path):
    spec = GridSpec(np.array([[10.0, 0, 0], [0, 10.0, 0], [1.0, 0, 10.0]]), (8, 8, 8))
    grid = Grid(spec, np.ones((1, 8, 8, 8)))
    with pytest.raises(InputError, match="c axis along z"):
        afm.afm_maps(grid, tmp_path / "unused")
    assert not (tmp_path / "unused").exists()
    ok = Grid(GridSpec.orthogonal((10, 10, 10), (8, 8, 8)), np.ones((1, 8, 8, 8)))
    with pytest.raises(InputError, match="temperature"):
        afm.sta_force(ok, temperature=-1)
    with pytest.raises(InputError, match="outside the grid"):
        afm.constant_height(np.zeros((8, 8, 8)), ok.spec, 0.0, [50.0])


def _slab_grid():
    """A water-like density over a toy surface: two Ca on top at z = 0, layers at 2.3, 3.45 Å."""
    spec = GridSpec.orthogonal((10.0, 10.0, 20.0), (32, 32, 64), origin=(0.0, 0.0, -5.0))
    pts = spec.points()
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]
    lateral = 1 + 0.5 * np.cos(2 * np.pi * x / 5.0) * np.cos(2 * np.pi * y / 5.0)
    layers = 1 + 2.0 * np.exp(-((z - 2.3) ** 2) / 0.1) * lateral + 1.0 * np.exp(-((z - 3.45) ** 2) / 0.15)
    rho = np.where(z > 1.0, layers, 0.0)
    atoms = Atoms(
        "Ca2CO3", positions=[[0, 0, 0], [5, 5, -0.1], [2.5, 2.5, 0], [2.5, 2.5, 1.3], [3.6, 2.5, 0], [1.4, 2.5, 0]]
    )
    return Grid(spec, rho[None], ("rho",), units="rho/rho_bulk", atoms=atoms)


def test_afm_maps_outputs(tmp_path):
    grid = _slab_grid()
    path = grid.write_cube(tmp_path / "water.cube")
    out = tmp_path / "afm"
    written = afm.afm_maps(path, out, heights=[2.0, 3.0], tip_radius=0.5)
    names = {p.name for p in written}
    assert {
        "fz.cube",
        "fz.npz",
        "fz_h2.00A.png",
        "fz_h3.00A.png",
        "fz_heights.npz",
        "force_curves.png",
        "force_curves.npz",
    } <= names
    assert all(p.exists() and p.stat().st_size > 0 for p in written)
    fz = Grid.read_cube(out / "fz.cube")
    assert fz.units == "nN" and fz.atoms is not None and len(fz.atoms) == 6
    with np.load(out / "fz_heights.npz") as z:
        assert z["fz_nN"].shape == (2, 32, 32)
        np.testing.assert_allclose(z["heights_A"], [2.0, 3.0])
        # the surface plane is the mean z of the top Ca layer: (0 + -0.1) / 2
        np.testing.assert_allclose(float(z["surface_z_A"]), -0.05, atol=1e-6)
    with np.load(out / "force_curves.npz") as z:
        assert list(z["labels"]) == ["Ca0", "Ca1"]
        assert z["fz_nN"].shape == (2, 64)
        # below the first layer the density rises with z: attractive? no: rho grows -> F_z > 0 ... at
        # h just below the 2.3 Å peak d ln rho / dz > 0, so F_z > 0 (repulsive side of the layer)
        h = z["h_A"]
        k = int(np.argmin(np.abs(h - 2.0)))
        assert np.all(z["fz_nN"][:, k] > 0)


def test_afm_maps_without_atoms_uses_density_maxima_and_warns(tmp_path):
    grid = _slab_grid()
    grid.atoms = None
    with pytest.warns(UserWarning, match="surface plane"):
        written = afm.afm_maps(grid, tmp_path / "afm")  # default heights: the density peaks
    with np.load(tmp_path / "afm" / "force_curves.npz") as z:
        assert str(z["site_kind"]).startswith("density maxima")
        assert len(z["labels"]) >= 1
    with np.load(tmp_path / "afm" / "fz_heights.npz") as z:
        assert len(z["heights_A"]) >= 1
        assert abs(z["heights_A"][0] - 2.3) < 0.35
    assert any(p.suffix == ".png" for p in written)


def _run_cli(argv):
    """Run one sub-command through its own parser (independent of the other commands)."""
    import argparse

    from hydrolayer import cli
    from hydrolayer.commands.afm import CLICommand

    parser = argparse.ArgumentParser(prog="hydrolayer")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_command(sub, CLICommand)
    args = parser.parse_args(argv)
    args.func(args)


def test_cli_afm(tmp_path, capsys):
    path = _slab_grid().write_cube(tmp_path / "water.cube")
    _run_cli(["afm", str(path), "--out", str(tmp_path / "out"), "--heights", "2.5,3.5", "--tip-radius", "0.4"])
    text = capsys.readouterr().out
    assert "fz.cube" in text and "fz_h2.50A.png" in text
    with pytest.raises(InputError, match="missing.cube"):
        _run_cli(["afm", str(tmp_path / "missing.cube"), "--out", str(tmp_path / "o2")])


def test_images_and_curves_sample_the_analytic_force():
    """Constant-height images and force-distance curves of rho = exp(-U/kT) carry F_z = -dU/dz."""
    spec, u, grad = _orthogonal_case()
    grid = _grid_from_u(spec, u)
    fz = afm.sta_force(grid, temperature=T).channel("Fz")
    z_s = 0.0
    heights = [2.0, 3.3]
    imgs = afm.constant_height(fz, spec, z_s, heights)
    pts = spec.points()
    for h, img in zip(heights, imgs):
        expected = -grad(pts[..., 0, 0], pts[..., 0, 1], np.full(pts.shape[:2], z_s + h))[2]
        assert np.abs(img - expected).max() < 0.03 * np.abs(expected).max() + 1e-4
    xy = np.array([[2.5, 1.0], [12.5, -7.0]])  # the second is the first's periodic image
    h, curves = afm.force_distance(fz, spec, xy, z_s)
    np.testing.assert_allclose(curves[0], curves[1], atol=1e-6)
    zz = h + z_s
    expected = -grad(np.full_like(zz, 2.5), np.full_like(zz, 1.0), zz)[2]
    assert np.abs(curves[0][1:-1] - expected[1:-1]).max() < 0.03 * np.abs(expected).max()
