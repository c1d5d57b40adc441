"""Bulk crystal data of the CaCO3 polymorphs (and magnesite), and the named surfaces.

Sources (also in ``../shared/reference/structures.md``):

* calcite, R-3c (167), hexagonal setting, a 4.991, c 17.062 Å; Ca (0,0,0), C (0,0,1/4),
  O (0.2573,0,1/4).
* aragonite, Pmcn (62, non-standard setting of Pnma), a 4.96062, b 7.97006, c 5.74181 Å
  (Antao & Hassan 2009); Ca (1/4,0.41502,0.75770), C (1/4,0.76160,-0.08080),
  O1 (1/4,0.92200,-0.09440), O2 (0.47500,0.68240,-0.09050).
* magnesite, R-3c, a 4.6338, c 15.0192 Å; Mg (0,0,0), C (0,0,1/4), O (0.279,0,1/4)
  (Bromiley et al. 2007).
* vaterite: the P3_221 model used by the paper, derived from a P6_522 model
  (:mod:`hydrolayer.structures.vaterite`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ase import Atoms

from .vaterite import vaterite_p3221

__all__ = ["FORMAL_CHARGE", "POLYMORPHS", "SURFACES", "Polymorph", "SurfaceDef", "bulk"]

FORMAL_CHARGE = {"Ca": 2, "Mg": 2, "CO3": -2}  # e, of each rigid ion


@dataclass(frozen=True)
class Polymorph:
    spacegroup: int
    lattice: dict  # experimental lattice parameters (Å)
    basis: tuple  # (symbols, fractional positions)
    source: str


POLYMORPHS = {
    "calcite": Polymorph(
        167,
        {"a": 4.991, "c": 17.062},
        (("Ca", "C", "O"), ((0, 0, 0), (0, 0, 0.25), (0.2573, 0, 0.25))),
        "R-3c; praiteri/GPTA examples/calcite.gin (standard values)",
    ),
    "aragonite": Polymorph(
        62,
        {"a": 4.96062, "b": 7.97006, "c": 5.74181},
        (
            ("Ca", "C", "O", "O"),
            (
                (0.25, 0.41502, 0.75770),
                (0.25, 0.76160, -0.08080),
                (0.25, 0.92200, -0.09440),
                (0.475, 0.68240, -0.09050),
            ),
        ),
        "Pmcn; Antao & Hassan 2009, AMCSD 0006301",
    ),
    "vaterite": Polymorph(
        179,
        {"a": 7.1443, "c": 25.350},
        (
            ("Ca", "Ca", "Ca", "C", "C", "O", "O", "O", "O", "O"),
            (
                (0.007, -0.007, 1 / 12),
                (0.681, -0.681, 1 / 12),
                (0.343, -0.343, 1 / 12),
                (0.375, 0.327, 0.1658),
                (0.691, 0, 0.5),
                (0.859, 0, 0.5),
                (0.602, -0.008, 0.5409),
                (0.556, 0.337, 0.1714),
                (0.270, 0.326, 0.2059),
                (0.300, 0.317, 0.1201),
            ),
        ),
        "P3_221 derived from the P6_522 model of Sci. Rep. 6, 36799 (2016), Table 1",
    ),
    "magnesite": Polymorph(
        167,
        {"a": 4.6338, "c": 15.0192},
        (("Mg", "C", "O"), ((0, 0, 0), (0, 0, 0.25), (0.279, 0, 0.25))),
        "R-3c; Bromiley et al. 2007, AMCSD 0004331",
    ),
}


@dataclass(frozen=True)
class SurfaceDef:
    polymorph: str
    miller: tuple  # in the conventional cell of the polymorph
    termination: str | None = None  # "CO3": carbonate in the outermost plane (within 0.3 Å) of both faces


SURFACES = {
    "calcite-104": SurfaceDef("calcite", (1, 0, 4)),
    "aragonite-010": SurfaceDef("aragonite", (0, 1, 0)),
    "aragonite-001": SurfaceDef("aragonite", (0, 0, 1)),
    "vaterite-010": SurfaceDef("vaterite", (0, 1, 0), termination="CO3"),
    "magnesite-104": SurfaceDef("magnesite", (1, 0, 4)),
}


def _lattice(polymorph: str, lattice: dict | None) -> dict:
    p = POLYMORPHS[polymorph]
    out = dict(p.lattice)
    for key, value in (lattice or {}).items():
        if key not in out:
            raise ValueError(f"lattice parameter {key!r} is not one of {sorted(out)} for {polymorph}")
        if not value > 0:
            raise ValueError(f"lattice parameter {key} must be positive, got {value}")
        out[key] = float(value)
    return out


def bulk(polymorph: str, lattice: dict | None = None) -> Atoms:
    """The conventional cell of ``polymorph`` (a name in :data:`POLYMORPHS`).

    ``lattice``: dict of the lattice parameters a, b, c (Å); missing entries take the
    experimental values. ``atoms.info`` records the polymorph, the source and the lattice.
    """
    from ase.spacegroup import crystal

    if polymorph not in POLYMORPHS:
        raise ValueError(f"unknown polymorph {polymorph!r}; known: {sorted(POLYMORPHS)}")
    p = POLYMORPHS[polymorph]
    lat = _lattice(polymorph, lattice)
    symbols, basis = p.basis
    if polymorph == "aragonite":
        # Pmcn (x, y, z) is Pnma with axes (z, x, y): build in Pnma, permute back.
        at = crystal(
            symbols, [(z, x, y) for x, y, z in basis], spacegroup=62, cellpar=[lat["c"], lat["a"], lat["b"], 90, 90, 90]
        )
        atoms = Atoms(
            at.numbers,
            scaled_positions=at.get_scaled_positions()[:, [1, 2, 0]],
            cell=[lat["a"], lat["b"], lat["c"]],
            pbc=True,
        )
    else:
        cellpar = [lat["a"], lat["a"], lat["c"], 90, 90, 120]
        atoms = crystal(symbols, basis, spacegroup=p.spacegroup, cellpar=cellpar)
        atoms = Atoms(atoms.numbers, scaled_positions=atoms.get_scaled_positions(), cell=atoms.cell, pbc=True)
        if polymorph == "vaterite":
            atoms = vaterite_p3221(atoms)
    atoms.info.update(polymorph=polymorph, source=p.source, lattice=json.dumps(lat))
    return atoms
