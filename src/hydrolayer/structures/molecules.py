"""Molecules inside a structure: carbonate ions and water molecules, found by distance."""

from __future__ import annotations

import numpy as np
from ase import Atoms

__all__ = ["find_carbonates", "find_waters", "solid_mask", "water_mask"]


def find_carbonates(atoms: Atoms, cutoff: float = 1.6) -> list[tuple[int, list[int]]]:
    """Carbonate ions as ``(c_index, [o1, o2, o3])``: each C with its three nearest O.

    ``cutoff``: the largest C-O distance (Å, minimum image) of a carbonate ion.
    Raises ``ValueError`` if a C does not have three O within ``cutoff``.
    """
    from ase.neighborlist import neighbor_list

    sym = np.array(atoms.get_chemical_symbols())
    cs = np.flatnonzero(sym == "C")
    if len(cs) == 0:
        return []
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    out = []
    for c in cs:
        m = (i == c) & (sym[j] == "O")
        nbr = j[m][np.argsort(d[m])]
        if len(nbr) < 3:
            raise ValueError(f"C atom {c} has {len(nbr)} O within {cutoff} Å, not a carbonate ion")
        out.append((int(c), [int(o) for o in nbr[:3]]))
    return out


def find_waters(atoms: Atoms, cutoff: float = 1.25) -> list[tuple[int, int, int]]:
    """Water molecules as ``(o_index, h1, h2)``: an O with exactly two H within ``cutoff``
    (Å, minimum image)."""
    from ase.neighborlist import neighbor_list

    z = atoms.numbers
    if not (z == 1).any():
        return []
    i, j = neighbor_list("ij", atoms, cutoff)
    m = (z[i] == 8) & (z[j] == 1)  # O -> H pairs
    i, j = i[m], j[m]
    out = []
    for o in np.unique(i):
        hs = j[i == o]
        if len(hs) == 2:
            out.append((int(o), int(min(hs)), int(max(hs))))
    return out


def water_mask(atoms: Atoms) -> np.ndarray:
    """Boolean mask of the atoms of ``atoms`` that belong to water molecules
    (:func:`find_waters`, default cutoff)."""
    mask = np.zeros(len(atoms), bool)
    for w in find_waters(atoms):
        mask[list(w)] = True
    return mask


def solid_mask(atoms: Atoms) -> np.ndarray:
    """Boolean mask of the atoms of ``atoms`` that are not water (the mineral)."""
    return ~water_mask(atoms)
