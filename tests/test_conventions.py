"""The surface plane convention (conventions.surface_planes / outer_layers)."""

import numpy as np
import pytest

from hydrolayer.conventions import CATIONS, PLANE_TOL, outer_layers, surface_planes
from hydrolayer.structures import build_surface


def _cation_z(atoms):
    return atoms.positions[np.isin(atoms.get_chemical_symbols(), CATIONS), 2]


@pytest.mark.parametrize("name, size, layers", [("calcite-104", (3, 2), 3), ("aragonite-010", (2, 2), 3)])
def test_an_ideal_slab_plane_is_its_outermost_cation_layer(name, size, layers):
    slab = build_surface(name, size=size, layers=layers)
    z = _cation_z(slab)
    top, bottom = surface_planes(slab)
    # on a built slab the rule is the plain one: every cation within PLANE_TOL of the outermost
    assert top == pytest.approx(z[z >= z.max() - PLANE_TOL].mean())
    assert bottom == pytest.approx(z[z <= z.min() + PLANE_TOL].mean())


def test_one_cell_slab_keeps_its_plane():
    # calcite (10-14) 1 x 1: two Ca per plane; the fullest layer is small too, so the outer one counts
    slab = build_surface("calcite-104", size=(1, 1), layers=3)
    z = _cation_z(slab)
    top, bottom = surface_planes(slab)
    assert top == pytest.approx(z.max(), abs=0.05) and bottom == pytest.approx(z.min(), abs=0.05)


def test_an_ion_out_of_the_surface_does_not_define_the_plane():
    """Ca ions that left the surface (2-3 Å out, as in the time-averaged MD slabs of
    aragonite (010)) belong to no layer: the plane stays where the rest of the outer layer
    is, on both faces; the old rule put z_s at the ion. The MD cells' size: 30 Ca a plane."""
    slab = build_surface("calcite-104", size=(5, 3), layers=3)
    top0, bottom0 = surface_planes(slab)
    ca = np.flatnonzero(np.array(slab.get_chemical_symbols()) == "Ca")
    order = ca[np.argsort(slab.positions[ca, 2])]  # distinct ions, lowest first
    moved = slab.copy()
    moved.positions[order[-1], 2] += 2.5
    moved.positions[order[0], 2] -= 3.0
    top, bottom = surface_planes(moved)
    assert abs(top - top0) < 0.01 and abs(bottom - bottom0) < 0.01
    top_mask, bottom_mask = outer_layers(moved.positions[ca, 2])
    assert top_mask.sum() == bottom_mask.sum() == 29
    assert not top_mask[ca == order[-1]].any() and not bottom_mask[ca == order[0]].any()
    # three ions out together on the top face (3 of 30, under PLANE_MIN_SHARE): still not a layer
    moved.positions[order[-3:-1], 2] += 2.5
    assert abs(surface_planes(moved)[0] - top0) < 0.01
    # ten out together (a third of the plane) are a layer: the rule is about share, not height
    moved.positions[order[-10:-3], 2] += 2.5
    assert surface_planes(moved)[0] == pytest.approx(top0 + 2.5, abs=0.01)


def test_no_cations_is_refused():
    with pytest.raises(ValueError, match="no Ca or Mg"):
        outer_layers([])
