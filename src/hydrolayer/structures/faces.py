"""The two faces of a slab: their surface planes and their outermost ions.

``surface_planes`` is :func:`hydrolayer.conventions.surface_planes`, the package's one
definition of the surface plane z_s (heights in Å), re-exported here.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from ..conventions import surface_planes
from .molecules import find_carbonates, solid_mask

__all__ = ["surface_planes", "top_layer_units"]


def top_layer_units(atoms: Atoms, face: str = "top", depth: float | None = None) -> dict:
    """Ions of the outermost layer of a face: ``{"cation": [idx...], "CO3": [(c, [o...]), ...]}``.

    ``face``: "top" (+z) or "bottom"; ``depth`` (Å): the thickness of the layer below the
    outermost cation. The layer is anchored on the outermost cation plane: every cation
    within ``depth`` Å of the outermost cation (default: half the spacing between the two
    outermost cation planes, at least 1 Å), and every carbonate C above the plane ``depth``
    Å below it. On calcite (10-14) the carbonates sit in the cation plane; on aragonite
    (010) the outermost carbonate plane is about 1.2 Å above the outermost Ca plane, and
    those two planes together are the ions that face the water.
    """
    sym = np.array(atoms.get_chemical_symbols())
    solid = solid_mask(atoms)
    sign = 1.0 if face == "top" else -1.0
    z = sign * atoms.positions[:, 2]
    cat = np.flatnonzero(np.isin(sym, ("Ca", "Mg")) & solid)
    carb = [c for c in find_carbonates(atoms) if solid[c[0]]]
    if depth is None:
        zc = np.sort(np.unique(np.round(z[cat], 1)))[::-1]
        below = zc[zc < zc[0] - 1.0]
        depth = max(1.0, 0.5 * (zc[0] - below[0])) if len(below) else 1.0
    zcat = z[cat].max()
    return {
        "cation": [int(i) for i in cat if z[i] >= zcat - depth],
        "CO3": [c for c in carb if z[c[0]] >= zcat - depth],
    }
