"""The P3_221 vaterite model, derived from the published P6_522 one.

The paper used a P3_221 model whose published coordinates were not available to us, so it
is *derived*: start from the neutron-refined P6_522 model of the Wang-Becker type (Sci.
Rep. 6, 36799 (2016), Table 1: a 7.1443, c 25.350 Å), and break the symmetry down to its
index-2 subgroup P3_221 by a small displacement field that is invariant under exactly the
P3_221 operations (a random field projected onto that subgroup, seeded, 0.08 Å), then make
every carbonate ion an ideal planar triangle (C-O 1.284 Å, the calcite value) with the same
orientation, and move Ca ions away from O closer than 2.3 Å (the P6_522 model itself has
Ca-O down to 2.15 Å). spglib finds P3_221 (154) for the result (a test checks it). The
force field's relaxed lattice and positions come from ``hydrolayer relax-bulk vaterite``
(MD stage); ``tools/derive_vaterite.py`` checks a 0 K relaxation of this model.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from .molecules import find_carbonates

__all__ = ["CO_BOND", "vaterite_p3221"]

CO_BOND = 1.284  # Å, ideal carbonate C-O used to regularise the derived vaterite model


def vaterite_p3221(p6522: Atoms, amplitude: float = 0.08, seed: int = 3221) -> Atoms:
    """The P6_522 model ``p6522`` (positions in Å) broken down to P3_221 (module docstring).

    ``amplitude``: RMS length (Å) of the symmetry-breaking displacement field; ``seed``: the
    random generator's seed (an integer) for that field.
    """
    import spglib

    ds = spglib.get_symmetry_dataset((p6522.cell[:], p6522.get_scaled_positions(), p6522.numbers), symprec=1e-3)
    keep = _p3221_operations(ds.rotations, ds.translations)
    field = _invariant_field(p6522, keep, np.random.default_rng(seed).normal(size=(len(p6522), 3)))
    field *= amplitude / np.sqrt((field**2).sum(axis=1).mean())
    atoms = p6522.copy()
    atoms.positions += field
    _regularise_carbonates(atoms)
    _push_cations(atoms, 2.3)
    atoms.wrap()
    return atoms


def _p3221_operations(rotations, translations) -> list:
    """The operations of P6_522 that belong to P3_221: those that map z to +-z + t with t a
    multiple of 1/3 for the +z ones and the 2-folds that keep cos(6 pi z)."""
    zs = np.array([0.013, 0.171, 0.402])
    keep = []
    for rot, trans in zip(rotations, translations):
        znew = rot[2, 2] * zs + trans[2]
        if np.allclose(np.cos(6 * np.pi * znew), np.cos(6 * np.pi * zs), atol=1e-6):
            keep.append((rot, trans))
    if len(keep) != 6:
        raise RuntimeError(f"expected 6 P3_221 operations inside P6_522, found {len(keep)}")
    return keep


def _invariant_field(atoms: Atoms, ops, cart: np.ndarray) -> np.ndarray:
    """The random vectors ``cart`` (one per atom) averaged over the group ``ops``: a
    displacement field invariant under exactly those operations."""
    frac = atoms.get_scaled_positions()
    lat = atoms.cell[:]
    sym = np.zeros_like(cart)
    for rot, trans in ops:
        mapped = frac @ rot.T + trans  # image of atom i under the op
        rot_cart = lat.T @ rot @ np.linalg.inv(lat.T)
        for i, f in enumerate(mapped):
            d = frac - f
            d -= np.round(d)
            j = int(np.argmin(np.linalg.norm(d @ lat, axis=1)))
            sym[j] += rot_cart @ cart[i]
    return sym / len(ops)


def _push_cations(atoms: Atoms, dmin: float, steps: int = 200) -> None:
    """Push cations and carbonate ions (rigidly) apart where Ca-O < ``dmin`` Å, in place.
    Each move depends only on the local environment, so every symmetry is kept."""
    from ase.neighborlist import neighbor_list

    sym = np.array(atoms.get_chemical_symbols())
    groups = [[c, *os_] for c, os_ in find_carbonates(atoms)]
    for _ in range(steps):
        i, j, d, D = neighbor_list("ijdD", atoms, dmin)
        m = np.isin(sym[i], ("Ca", "Mg")) & (sym[j] == "O")
        if not m.any():
            return
        step = 0.25 * (dmin - d[m])[:, None] * D[m] / d[m][:, None]
        shift = np.zeros_like(atoms.positions)
        np.add.at(shift, i[m], -step)
        np.add.at(shift, j[m], step)
        for g in groups:
            shift[g] = shift[g].sum(axis=0) / 4
        atoms.positions += shift


def _regularise_carbonates(atoms: Atoms) -> None:
    """Make every carbonate an ideal planar, trigonal ion (C-O = CO_BOND) in place: same C
    position and best-fit plane, in-plane orientation from the three-fold circular mean of
    the O directions. Independent of atom order, so it keeps every symmetry of the input."""
    for c, os_ in find_carbonates(atoms):
        vec = atoms.get_distances(c, os_, mic=True, vector=True)
        normal = np.linalg.svd(vec - vec.mean(axis=0))[2][2]
        e1 = np.cross(normal, [1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(normal, e1)
        theta = np.arctan2(vec @ e2, vec @ e1)
        phi = np.angle(np.exp(3j * theta).sum()) / 3
        ideal = [phi + 2 * np.pi * m / 3 for m in range(3)]
        for k, o in enumerate(os_):
            diff = np.angle(np.exp(1j * (theta[k] - np.array(ideal))))
            a = ideal[int(np.argmin(np.abs(diff)))]
            atoms.positions[o] = atoms.positions[c] + CO_BOND * (np.cos(a) * e1 + np.sin(a) * e2)
