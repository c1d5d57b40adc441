import numpy as np
import pytest
from ase import Atoms

from hydrolayer import descriptors as D
from hydrolayer.structures import build_surface
from hydrolayer.util import InputError


@pytest.fixture(scope="module")
def slab():
    return build_surface("calcite-104", size=(3, 2), layers=4, pair_vacancies=1, seed=4)


def _toy(positions, symbols, cell=(30.0, 30.0, 60.0)):
    """A tiny 'slab' with one Ca as the surface plane at z = 20 plus the given atoms."""
    return Atoms(["Ca", *symbols], positions=[[25.0, 25.0, 20.0], *positions], cell=cell, pbc=True)


def test_window_geometry(slab):
    g = D.describe_window(slab, 1.0, 2.0)
    assert g.values.shape == (3, 32, 32, 64) and g.channels == ("C", "O", "Ca")
    assert np.allclose(g.spec.spacing, 0.3125)
    assert np.allclose(g.spec.origin, [1.0, 2.0, slab.info["z_top"] - 5.0])
    assert g.units == "A^-3" and g.sigma == D.DEFAULT_SIGMA


def test_integral_counts_atoms_inside():
    """Atoms far (> 4 sigma) from every face contribute exactly 1 each; atoms far outside 0."""
    inside = [[3.0, 4.0, 20.5], [6.1, 7.3, 25.0], [5.0, 5.0, 30.2]]
    outside = [[20.0, 20.0, 22.0], [5.0, 5.0, 40.0]]
    atoms = _toy(inside + outside, ["C", "O", "O", "C", "O"])
    g = D.describe_window(atoms, 0.0, 0.0)
    n = g.values.sum(axis=(1, 2, 3)) * g.spec.voxel_volume
    assert np.allclose(n, [1, 2, 0], atol=1e-3)


def test_atoms_below_the_window_count():
    """An atom 1 sigma below the window bottom adds its Gaussian tail (about 16%)."""
    sigma = D.DEFAULT_SIGMA
    atoms = _toy([[5.0, 5.0, 15.0 - sigma]], ["O"])  # window starts at z_s - 5 = 15
    g = D.describe_window(atoms, 0.0, 0.0)
    n = g.channel("O").sum() * g.spec.voxel_volume
    from scipy.stats import norm

    # the grid sum over planes z >= 15 is the integral from half a spacing below z = 15
    expected = 1 - norm.cdf(1.0 - 0.5 * D.SPACING / sigma)
    assert 0.1 < n < 0.3 and abs(n - expected) < 0.01


def test_periodic_images_are_included():
    """An atom just across the lateral cell boundary shows up at the window's edge."""
    atoms = _toy([[29.9, 5.0, 22.0]], ["C"])
    g = D.describe_window(atoms, 0.0, 0.0)
    assert g.channel("C")[0].sum() > 0  # x = 0 plane sees the image at x = -0.1
    assert np.isclose(g.channel("C").sum() * g.spec.voxel_volume, 0.5, atol=0.05)


def test_invariant_under_lattice_translation_and_rewrapping(slab):
    offsets = np.array([[0.0, 0.0], [3.3, 7.1], [11.0, 2.5]])
    ref = D.describe_windows(slab, offsets)
    moved = slab.copy()
    moved.positions[:, :2] += 3 * slab.cell[0, :2] - 2 * slab.cell[1, :2]
    assert np.allclose(D.describe_windows(moved, offsets), ref, atol=1e-6)
    wrapped = slab.copy()
    wrapped.positions[:, :2] += [0.37, -1.2]
    wrapped.wrap()
    wrapped.positions[:, :2] -= [0.37, -1.2]  # same atoms, re-wrapped differently
    assert np.allclose(D.describe_windows(wrapped, offsets), ref, atol=1e-6)
    shifted = offsets + slab.cell[0, :2] - slab.cell[1, :2]  # a window a lattice vector away
    assert np.allclose(D.describe_windows(slab, shifted), ref, atol=1e-6)


def test_windows_batch_matches_single(slab):
    g = D.describe_window(slab, 2.0, 3.0)
    w = D.describe_windows(slab, [[2.0, 3.0]])
    assert np.allclose(w[0], g.values, atol=1e-6)


def test_cell_descriptor_matches_windows():
    """On a cell whose sides are multiples of the spacing, the full-cell grid and a window
    at the origin sample the same points."""
    s = build_surface("calcite-104", size=(2, 1), layers=3)
    s.set_cell([20.0, 10.0, s.cell[2, 2]], scale_atoms=False)  # toy: lateral 64 x 32 points
    s.wrap()
    c = D.describe_cell(s)
    assert c.values.shape == (3, 64, 32, 64)
    w = D.describe_window(s, 0.0, 0.0)
    assert np.allclose(c.values[:, :32, :32, :], w.values, atol=1e-6)


@pytest.mark.parametrize("skew", [0.0, 3.0])
def test_large_grids_in_blocks_match_one_dense_product(monkeypatch, skew):
    """A whole-cell grid above BLOCK_MIN_POINTS is smeared in 32 x 32 blocks, each with only
    the atoms near it; the result must be the dense sum up to the far tails (< 3e-4 of the
    largest value), orthogonal or not, including partial blocks at the edges."""
    s = build_surface("calcite-104", size=(5, 3), layers=3)
    cell = s.cell[:].copy()
    cell[1, 0] = skew
    s.set_cell(cell, scale_atoms=False)
    spec = D.cell_spec(s, D.surface_plane(s))
    assert spec.shape[0] * spec.shape[1] > D.BLOCK_MIN_POINTS and spec.shape[0] % 32 != 0
    blocks = D.describe(s, spec).values
    monkeypatch.setattr(D, "BLOCK_MIN_POINTS", 10**12)
    dense = D.describe(s, spec).values
    assert np.abs(blocks - dense).max() < 3e-4 * dense.max()
    assert np.abs(blocks.sum() - dense.sum()) < 1e-4 * dense.sum()


def test_non_orthogonal_cell_translation_invariance():
    s = build_surface("calcite-104", size=(2, 1), layers=3)
    cell = s.cell[:].copy()
    cell[1, 0] = 3.0  # shear b: a legal, non-orthogonal lateral cell
    s.set_cell(cell, scale_atoms=False)
    a = D.describe_windows(s, [[1.0, 1.0]])
    t = s.copy()
    t.positions[:, :2] += cell[1, :2]
    assert np.allclose(D.describe_windows(t, [[1.0, 1.0]]), a, atol=1e-6)
    full = D.describe_cell(s)
    assert full.values.shape[1:3] == (32, round(np.linalg.norm(cell[1]) / D.SPACING))
    moved = D.describe_cell(t)
    assert np.allclose(moved.values, full.values, atol=1e-6)


def test_bottom_face_is_mirrored(slab):
    """The bottom face's window is the top face's window of the slab reflected through a
    horizontal plane, built here by hand (z -> Lz - z, x and y unchanged), not by D.mirror."""
    lz = slab.cell[2, 2]
    by_hand = Atoms(
        slab.numbers, positions=slab.positions * [1.0, 1.0, -1.0] + [0.0, 0.0, lz], cell=slab.cell, pbc=True
    )
    for x0, y0 in ((1.0, 1.0), (6.5, 3.0)):
        b = D.describe_window(slab, x0, y0, face="bottom")
        top = D.describe_window(by_hand, x0, y0)
        assert b.values.max() > 0.01 and np.abs(b.values - top.values).max() < 1e-4 * b.values.max()
        batched = D.describe_windows(slab, [[x0, y0]], face="bottom")[0]  # the path the data sets use
        assert np.abs(batched - top.values).max() < 1e-4 * b.values.max()
        assert np.isclose(b.meta["z_s"], -slab.info["z_bottom"]) and np.isclose(
            top.meta["z_s"], lz - slab.info["z_bottom"]
        )
        # and it is not the top face's window (a face mix-up would fail here)
        assert np.abs(D.describe_window(slab, x0, y0).values - b.values).max() > 0.1 * b.values.max()


def test_water_is_ignored(slab):
    w = Atoms("OH2", positions=[[0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]])
    w.positions += [4.0, 4.0, slab.info["z_top"] + 3.0]
    wet = slab + w
    assert np.allclose(D.describe_window(wet, 0.0, 0.0).values, D.describe_window(slab, 0.0, 0.0).values)


def test_unsupported_element_and_bad_sigma(slab):
    mg = slab.copy()
    mg[0].symbol = "Mg"
    with pytest.raises(InputError, match="Mg have no descriptor channel"):
        D.describe_window(mg, 0.0, 0.0)
    with pytest.raises(ValueError, match="sigma must be positive"):
        D.describe_window(slab, 0.0, 0.0, sigma=0.0)
