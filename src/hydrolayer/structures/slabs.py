"""Crystal structures, surface slabs and defects of the CaCO3 polymorphs (and magnesite).

Everything returns plain :class:`ase.Atoms`; provenance lives in ``atoms.info``.

Bulk structures (sources in ``../shared/reference/structures.md``, repeated here):

* calcite, R-3c (167), hexagonal setting, a 4.991, c 17.062 Å; Ca (0,0,0), C (0,0,1/4),
  O (0.2573,0,1/4).
* aragonite, Pmcn (62, non-standard setting of Pnma), a 4.96062, b 7.97006, c 5.74181 Å
  (Antao & Hassan 2009); Ca (1/4,0.41502,0.75770), C (1/4,0.76160,-0.08080),
  O1 (1/4,0.92200,-0.09440), O2 (0.47500,0.68240,-0.09050).
* magnesite, R-3c, a 4.6338, c 15.0192 Å; Mg (0,0,0), C (0,0,1/4), O (0.279,0,1/4)
  (Bromiley et al. 2007).
* vaterite: the P3_221 model used by the paper. Its published coordinates were not
  available to us, so it is *derived*: start from the neutron-refined P6_522 model of the
  Wang-Becker type (Sci. Rep. 6, 36799 (2016), Table 1: a 7.1443, c 25.350 Å), and break the
  symmetry down to its index-2 subgroup P3_221 by a small displacement field that is
  invariant under exactly the P3_221 operations (a random field projected onto that
  subgroup, seeded, 0.08 Å), then make every carbonate ion an ideal planar triangle
  (C-O 1.284 Å, the calcite value) with the same orientation, and move Ca ions away from
  O closer than 2.3 Å (the P6_522 model itself has Ca-O down to 2.15 Å). spglib finds P3_221 (154) for
  the result (a test checks it). The force field's relaxed lattice and positions come from
  ``hydrolayer relax-bulk vaterite`` (MD stage).

Surfaces are cut so that both faces are related by a symmetry operation of the bulk that
reverses the surface normal (an inversion centre or a two-fold axis in the surface plane),
so both faces carry the same termination and the slab has no dipole. For dipolar
(Tasker type III) stackings such as aragonite (001), the outermost ion plane of each face is
half occupied (the other half moved to the far face), which keeps the slab stoichiometric,
neutral and symmetric.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from .util import InputError, atomic_output

__all__ = [
    "POLYMORPHS",
    "SURFACES",
    "SUPPORTED_ELEMENTS",
    "bulk",
    "build_surface",
    "add_pair_vacancies",
    "add_vacancy",
    "enumerate_pair_vacancies",
    "find_carbonates",
    "find_waters",
    "surface_planes",
    "top_layer_units",
    "read_structure",
    "write_structure",
    "defect_sites",
]

SUPPORTED_ELEMENTS = ("Ca", "Mg", "C", "O", "H")
CO_BOND = 1.284  # Å, ideal carbonate C-O used to regularise the derived vaterite model
FORMAL_CHARGE = {"Ca": 2, "Mg": 2, "CO3": -2}


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
            ((0.25, 0.41502, 0.75770), (0.25, 0.76160, -0.08080), (0.25, 0.92200, -0.09440), (0.475, 0.68240, -0.09050)),
        ),
        "Pmcn; Antao & Hassan 2009, AMCSD 0006301",
    ),
    "vaterite": Polymorph(
        179,
        {"a": 7.1443, "c": 25.350},
        (
            ("Ca", "Ca", "Ca", "C", "C", "O", "O", "O", "O", "O"),
            (
                (0.007, -0.007, 1 / 12), (0.681, -0.681, 1 / 12), (0.343, -0.343, 1 / 12),
                (0.375, 0.327, 0.1658), (0.691, 0, 0.5),
                (0.859, 0, 0.5), (0.602, -0.008, 0.5409), (0.556, 0.337, 0.1714),
                (0.270, 0.326, 0.2059), (0.300, 0.317, 0.1201),
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


# ============================================================================ bulk
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
    """The conventional cell of ``polymorph`` at ``lattice`` (dict of a, b, c in Å; missing
    entries take the experimental values). ``atoms.info`` records the source."""
    from ase.spacegroup import crystal

    if polymorph not in POLYMORPHS:
        raise ValueError(f"unknown polymorph {polymorph!r}; known: {sorted(POLYMORPHS)}")
    p = POLYMORPHS[polymorph]
    lat = _lattice(polymorph, lattice)
    symbols, basis = p.basis
    if polymorph == "aragonite":
        # Pmcn (x, y, z) is Pnma with axes (z, x, y): build in Pnma, permute back.
        at = crystal(symbols, [(z, x, y) for x, y, z in basis], spacegroup=62,
                     cellpar=[lat["c"], lat["a"], lat["b"], 90, 90, 90])
        atoms = Atoms(at.numbers, scaled_positions=at.get_scaled_positions()[:, [1, 2, 0]],
                      cell=[lat["a"], lat["b"], lat["c"]], pbc=True)
    else:
        cellpar = [lat["a"], lat["a"], lat["c"], 90, 90, 120]
        atoms = crystal(symbols, basis, spacegroup=p.spacegroup, cellpar=cellpar)
        atoms = Atoms(atoms.numbers, scaled_positions=atoms.get_scaled_positions(), cell=atoms.cell, pbc=True)
        if polymorph == "vaterite":
            atoms = _vaterite_p3221(atoms)
    atoms.info.update(polymorph=polymorph, source=p.source, lattice=json.dumps(lat))
    return atoms


def _vaterite_p3221(p6522: Atoms, amplitude: float = 0.08, seed: int = 3221) -> Atoms:
    """Break the P6_522 model down to P3_221 (see the module docstring)."""
    import spglib

    cell = (p6522.cell[:], p6522.get_scaled_positions(), p6522.numbers)
    ds = spglib.get_symmetry_dataset(cell, symprec=1e-3)
    frac = p6522.get_scaled_positions()
    # keep the operations of P6_522 that belong to P3_221: those that map z to +-z + t with
    # t a multiple of 1/3 for the +z ones and the 2-folds that keep cos(6 pi z) (see docs)
    keep = []
    zs = np.array([0.013, 0.171, 0.402])
    for rot, trans in zip(ds.rotations, ds.translations):
        znew = rot[2, 2] * zs + trans[2]
        if np.allclose(np.cos(6 * np.pi * znew), np.cos(6 * np.pi * zs), atol=1e-6):
            keep.append((rot, trans))
    if len(keep) != 6:
        raise RuntimeError(f"expected 6 P3_221 operations inside P6_522, found {len(keep)}")
    rng = np.random.default_rng(seed)
    cart = rng.normal(size=frac.shape)
    lat = p6522.cell[:]
    sym = np.zeros_like(cart)
    for rot, trans in keep:
        mapped = frac @ rot.T + trans  # image of atom i under the op
        rot_cart = lat.T @ rot @ np.linalg.inv(lat.T)
        for i, f in enumerate(mapped):
            d = frac - f
            d -= np.round(d)
            j = int(np.argmin(np.linalg.norm(d @ lat, axis=1)))
            sym[j] += rot_cart @ cart[i]
    sym /= len(keep)
    sym *= amplitude / np.sqrt((sym**2).sum(axis=1).mean())
    atoms = p6522.copy()
    atoms.positions += sym
    _regularise_carbonates(atoms)
    _push_cations(atoms, 2.3)
    atoms.wrap()
    return atoms


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


# ============================================================================ molecules
def find_carbonates(atoms: Atoms, cutoff: float = 1.6) -> list[tuple[int, list[int]]]:
    """Carbonate ions as ``(c_index, [o1, o2, o3])``: each C with its three nearest O within
    ``cutoff`` Å (minimum image). Raises ``ValueError`` if a C does not have three O."""
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
    """Water molecules as ``(o_index, h1, h2)``: an O with exactly two H within ``cutoff`` Å."""
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
    """Boolean mask of atoms that belong to water molecules."""
    mask = np.zeros(len(atoms), bool)
    for w in find_waters(atoms):
        mask[list(w)] = True
    return mask


# ============================================================================ units
@dataclass
class _Units:
    """Ions of a crystal as rigid units: ``kind[u]`` is 'Ca'/'Mg'/'CO3'; ``ref[u]`` the
    cation or C position; ``offsets[u]`` the atom positions relative to ``ref``."""

    kind: list
    ref: np.ndarray
    symbols: list
    offsets: list


def _units(atoms: Atoms) -> _Units:
    sym = atoms.get_chemical_symbols()
    kind, ref, symbols, offsets = [], [], [], []
    used = set()
    for c, os_ in find_carbonates(atoms):
        vec = atoms.get_distances(c, os_, mic=True, vector=True)
        kind.append("CO3")
        ref.append(atoms.positions[c])
        symbols.append(["C", "O", "O", "O"])
        offsets.append(np.vstack([np.zeros(3), vec]))
        used.update([c, *os_])
    for i, s in enumerate(sym):
        if s in ("Ca", "Mg"):
            kind.append(s)
            ref.append(atoms.positions[i])
            symbols.append([s])
            offsets.append(np.zeros((1, 3)))
            used.add(i)
    if len(used) != len(atoms):
        raise ValueError("bulk contains atoms that are neither cations nor carbonate ions")
    return _Units(kind, np.array(ref), symbols, offsets)


def _lattice_vectors(atoms: Atoms, nmax: int) -> np.ndarray:
    """All lattice translations (Å) of the crystal ``atoms`` with conventional-cell
    coordinates in [-nmax, nmax], centring translations included, zero excluded."""
    import spglib

    ds = spglib.get_symmetry_dataset((atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers), symprec=1e-3)
    centring = [np.mod(t, 1.0) for r, t in zip(ds.rotations, ds.translations) if (r == np.eye(3)).all()]
    r = np.arange(-nmax, nmax + 1)
    ijk = np.array(list(itertools.product(r, r, r)), float)
    frac = np.concatenate([ijk + t for t in centring])
    frac = frac[np.any(np.abs(frac) > 1e-9, axis=1)]
    return frac @ atoms.cell[:]


def _surface_basis(conv: Atoms, miller) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """In-plane vectors u, v (shortest, v orthogonal to u where the mesh allows), unit
    normal n and the layer repeat d along n (smallest positive n.T over lattice T)."""
    recip = np.linalg.inv(conv.cell[:]).T  # rows: conventional reciprocal vectors (no 2 pi)
    g = np.asarray(miller, float) @ recip
    n = g / np.linalg.norm(g)
    vecs = _lattice_vectors(conv, 6)
    h = vecs @ n
    inplane = vecs[np.abs(h) < 1e-6]
    inplane = inplane[np.argsort(np.linalg.norm(inplane, axis=1), kind="stable")]
    u = inplane[0]
    lu = np.linalg.norm(u)
    cands = [w for w in inplane if np.linalg.norm(np.cross(u, w)) > 1e-6 * lu * np.linalg.norm(w)]
    ortho = [w for w in cands if abs(w @ u) < 1e-6 * lu * np.linalg.norm(w) and np.linalg.norm(w) < 4 * lu]
    v = ortho[0] if ortho else cands[0]
    if not ortho:  # reduce to the shortest non-orthogonal partner with |cos| <= 1/2
        v = v - np.round(v @ u / lu**2) * u
    if np.cross(u, v) @ n < 0:
        v = -v
    d = float(np.min(h[h > 1e-6]))
    return u, v, n, _layer_spacing(conv, n, d)


def _layer_spacing(conv: Atoms, n: np.ndarray, d: float) -> float:
    """The repeat of equivalent layers along n: the lattice repeat d, or a fraction of it
    when a screw axis or glide plane maps a layer onto the next (aragonite)."""
    import spglib

    ds = spglib.get_symmetry_dataset((conv.cell[:], conv.get_scaled_positions(), conv.numbers), symprec=1e-3)
    lat = conv.cell[:]
    best = d
    for rot, trans in zip(ds.rotations, ds.translations):
        rc = lat.T @ rot @ np.linalg.inv(lat.T)
        if np.allclose(rc @ n, n, atol=1e-6):
            h = float(np.mod(n @ (trans @ lat), d))
            if 1e-6 < h < best - 1e-6:
                best = h
    return best


def _normal_flip_ops(conv: Atoms, n: np.ndarray, d: float):
    """Bulk symmetry operations that reverse the normal n: their Cartesian rotations and
    the heights (along n) of their fixed planes, modulo d/2. A slab cut symmetric about one
    of these heights has two equivalent faces."""
    import spglib

    ds = spglib.get_symmetry_dataset((conv.cell[:], conv.get_scaled_positions(), conv.numbers), symprec=1e-3)
    lat = conv.cell[:]
    heights, rots = [], []
    for rot, trans in zip(ds.rotations, ds.translations):
        rc = lat.T @ rot @ np.linalg.inv(lat.T)
        if np.allclose(rc @ n, -n, atol=1e-6):
            heights.append(0.5 * float(n @ (trans @ lat)))
            if not any(np.allclose(rc, r, atol=1e-6) for r in rots):
                rots.append(rc)
    if not rots:
        raise ValueError("no bulk symmetry reverses the surface normal: cannot make equivalent faces")
    return np.unique(np.round(np.mod(np.array(heights), d / 2), 6)), rots


def _flip_map(pos: np.ndarray, kinds: np.ndarray, U, V, rots, tol: float = 0.05):
    """A permutation p with unit i mapped onto unit p[i] by a symmetry of the slab that
    reverses its normal (one of ``rots`` followed by a translation, modulo the lateral
    cell U, V), or None when the slab has no such symmetry."""
    n = np.cross(U, V)
    n /= np.linalg.norm(n)
    basis = np.array([U, V, n])
    inv = np.linalg.inv(basis)
    first = np.flatnonzero(kinds == kinds[0])
    for rc in rots:
        img = pos @ rc.T
        probe = slice(0, min(8, len(pos)))
        for j in first:
            moved = img + (pos[j] - img[0])
            f = (moved[probe, None, :] - pos[None, :, :]) @ inv
            f[..., :2] -= np.round(f[..., :2])
            if np.linalg.norm(f @ basis, axis=-1).min(axis=1).max() > tol:
                continue  # cheap rejection on a few units first
            f = (moved[:, None, :] - pos[None, :, :]) @ inv
            f[..., :2] -= np.round(f[..., :2])
            dist = np.linalg.norm(f @ basis, axis=-1)
            dist[kinds[:, None] != kinds[None, :]] = np.inf
            p = np.argmin(dist, axis=1)
            if np.all(dist[np.arange(len(p)), p] < tol) and len(np.unique(p)) == len(p):
                return p
    return None


# ============================================================================ slabs
def build_surface(
    name: str,
    size: tuple[int, int] = (1, 1),
    layers: int = 4,
    lattice: dict | None = None,
    pair_vacancies: int = 0,
    vacancy: str | None = None,
    both_faces: bool = False,
    seed: int = 0,
    vacuum: float = 30.0,
    placement: str = "random",
) -> Atoms:
    """A surface slab by name (see :data:`SURFACES`), surface normal +z.

    ``size``: lateral repeats (A, B) of the surface cell; ``layers``: stoichiometric layers
    (one layer = one repeat of the stacking along the normal); ``lattice``: lattice
    parameters (defaults: experiment; pass the force field's relaxed lattice for MD);
    ``pair_vacancies``: K neutral Ca2+/CO3 2- pairs removed at random (``seed``) from the
    outermost layer of the top face (and the bottom face with ``both_faces``);
    ``placement``: how the pairs are placed (``random``, ``adjacent``: one compact pit,
    ``separated``: nearest-neighbour pairs spread apart; see :func:`add_pair_vacancies`);
    ``vacancy``: "Ca" or "CO3" removes one ion of that kind (a charged slab; the net charge
    is recorded); ``vacuum``: the gap between the slab and its periodic image (Å).

    ``atoms.info`` holds surface, polymorph, facet, size, layers, seed, defects,
    defect_sites (JSON: species and positions of the removed ions), net_charge, z_top,
    z_bottom (surface planes) and the lattice used.
    """
    if name not in SURFACES:
        raise InputError(f"unknown surface {name!r}; known: {', '.join(sorted(SURFACES))}")
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be two positive integers, got {size}")
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    if vacancy not in (None, "Ca", "CO3"):
        raise ValueError(f"vacancy must be 'Ca' or 'CO3', got {vacancy!r}")
    if vacuum < 0:
        raise ValueError(f"vacuum must be >= 0, got {vacuum}")
    sd = SURFACES[name]
    conv = bulk(sd.polymorph, lattice)
    try:  # cut one surface cell and tile it; half-occupied planes may need the full size
        slab = _cut_slab(conv, sd, (1, 1), layers, vacuum).repeat((size[0], size[1], 1))
    except RuntimeError:
        try:
            slab = _cut_slab(conv, sd, size, layers, vacuum)
        except RuntimeError:
            raise InputError(f"{name}: no symmetric, neutral slab of {layers} layer(s) at this lattice; try another number of layers") from None
    slab.info.update(z_top=surface_planes(slab)[0], z_bottom=surface_planes(slab)[1])
    slab.info.update(
        surface=name,
        polymorph=sd.polymorph,
        facet="".join(str(m) for m in sd.miller),
        size=f"{size[0]}x{size[1]}",
        layers=layers,
        seed=seed,
        lattice=conv.info["lattice"],
        defects="pristine",
        defect_sites="[]",
        net_charge=0,
    )
    rng = np.random.default_rng(seed)
    if pair_vacancies:
        faces = ("top", "bottom") if both_faces else ("top",)
        for face in faces:
            slab = add_pair_vacancies(slab, pair_vacancies, rng=rng, face=face, placement=placement)
    if vacancy:
        faces = ("top", "bottom") if both_faces else ("top",)
        for face in faces:
            slab = add_vacancy(slab, vacancy, rng=rng, face=face)
    return slab


def _cut_slab(conv: Atoms, sd: SurfaceDef, size, layers: int, vacuum: float) -> Atoms:
    units = _units(conv)
    u, v, n, d = _surface_basis(conv, sd.miller)
    U, V = size[0] * u, size[1] * v
    centres, rots = _normal_flip_ops(conv, n, d)
    cation = "Mg" if "Mg" in units.kind else "Ca"
    target = round(layers * _fu_per_layer(units, conv, u, v, d) * size[0] * size[1])
    best = None
    for hc in np.concatenate([centres, centres + d / 2]):
        for extra in np.arange(-0.5, 0.51, 0.125):  # thicknesses around layers * d
            half = 0.5 * (layers + extra) * d
            sel = _select_units(conv, units, U, V, n, hc - half - 1.0, hc + half + 1.0)
            sel = sel[np.abs(sel["h"] - hc) <= half + 1e-6]
            cand = _symmetric_neutral(sel, U, V, rots, sd.termination)
            if cand is None:
                continue
            score = (abs(int(np.sum(cand["kind"] == cation)) - target), abs(extra))
            if best is None or score < best[0]:
                best = (score, cand, hc)
    if best is None or best[0][0] != 0:
        raise RuntimeError(f"could not cut a symmetric, neutral {layers}-layer slab of {sd}")
    _, sel, hc = best
    return _assemble(sel, units, U, V, n, hc, vacuum)


def _fu_per_layer(units: _Units, conv: Atoms, u, v, d) -> float:
    """Formula units per surface cell per layer repeat d."""
    ncat = sum(k != "CO3" for k in units.kind)
    vol = abs(np.linalg.det(conv.cell[:]))
    area = np.linalg.norm(np.cross(u, v))
    return ncat * area * d / vol


def _select_units(conv, units: _Units, U, V, n, hmin, hmax):
    """All units with height in [hmin, hmax] and lateral fractional coordinates in [0, 1)
    of the (U, V) cell (each lattice-equivalent unit exactly once)."""
    lat = conv.cell[:]
    basis = np.array([U, V, n])
    corners = np.array([s * U + t * V + h * n for s in (0, 1) for t in (0, 1) for h in (hmin, hmax)])
    fc = corners @ np.linalg.inv(lat)
    lo = np.floor(fc.min(axis=0)) - 1
    hi = np.ceil(fc.max(axis=0)) + 1
    shifts = np.array(list(itertools.product(*[np.arange(a, b + 1) for a, b in zip(lo, hi)]))) @ lat
    pos = (units.ref[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    idx = np.tile(np.arange(len(units.kind)), len(shifts))
    coords = pos @ np.linalg.inv(basis)  # (s, t, h)
    eps = 1e-6
    m = (coords[:, 0] >= -eps) & (coords[:, 0] < 1 - eps) & (coords[:, 1] >= -eps) & (coords[:, 1] < 1 - eps)
    m &= (coords[:, 2] >= hmin) & (coords[:, 2] <= hmax)
    kinds = np.array(units.kind)[idx[m]]
    out = np.zeros(m.sum(), dtype=[("unit", int), ("kind", "U3"), ("pos", float, 3), ("h", float)])
    out["unit"], out["kind"], out["pos"], out["h"] = idx[m], kinds, pos[m], coords[m, 2]
    return out


def _planes(h: np.ndarray, tol: float = 0.3) -> np.ndarray:
    """Plane index of each height: heights closer than ``tol`` Å share a plane."""
    order = np.argsort(h)
    labels = np.empty(len(h), int)
    label = 0
    for rank, i in enumerate(order):
        if rank and h[i] - h[order[rank - 1]] > tol:
            label += 1
        labels[i] = label
    return labels


def _symmetric_neutral(sel, U, V, rots, termination: str | None):
    """The selection if it has two equivalent faces (a normal-reversing symmetry) and no
    net charge; a charged selection is made neutral by half-occupying its outermost planes
    (Tasker type III: every other ion of the top plane and its symmetry images on the
    bottom plane are removed). None when neither works or the termination is wrong."""
    if len(sel) == 0:
        return None
    flip = _flip_map(sel["pos"], sel["kind"], U, V, rots)
    if flip is None:
        return None
    charge = sum(FORMAL_CHARGE[k] for k in sel["kind"])
    if charge != 0:
        top = np.flatnonzero(sel["h"] >= sel["h"].max() - 0.3)
        kinds = set(sel["kind"][top])
        if len(kinds) != 1:
            return None
        q = FORMAL_CHARGE[kinds.pop()]
        if charge % (2 * q) or charge // q <= 0:
            return None
        n_each = charge // q // 2
        if 2 * n_each != len(top):
            return None  # only the half-occupied outer plane is supported
        top = top[np.lexsort((sel["pos"][top, 1], sel["pos"][top, 0]))]
        gone = top[::2]
        keep = np.ones(len(sel), bool)
        keep[gone] = False
        keep[flip[gone]] = False
        sel = sel[keep]
        if sum(FORMAL_CHARGE[k] for k in sel["kind"]) != 0:
            return None
    if termination is not None:
        # the outermost plane (units within 0.3 Å of the extreme height) must hold the
        # termination species; vaterite (010)'s outer plane is a corrugated mixed Ca/CO3
        # plane whose single highest unit changes with the lattice parameters
        top = sel["kind"][sel["h"] >= sel["h"].max() - 0.3]
        bottom = sel["kind"][sel["h"] <= sel["h"].min() + 0.3]
        if termination not in top or termination not in bottom:
            return None
    return sel


def _assemble(sel, units: _Units, U, V, n, hc, vacuum) -> Atoms:
    """Atoms of the selected units in a cell (x along U, z along n), slab centred in z."""
    ex = U / np.linalg.norm(U)
    ez = n
    ey = np.cross(ez, ex)
    rot = np.array([ex, ey, ez])  # rows: new axes
    symbols, positions, layer_h = [], [], []
    for rec in sel:
        for s, off in zip(units.symbols[rec["unit"]], units.offsets[rec["unit"]]):
            symbols.append(s)
            positions.append(rec["pos"] + off)
            layer_h.append(rec["h"])
    pos = (np.array(positions) - hc * n) @ rot.T
    Uc, Vc = U @ rot.T, V @ rot.T
    zmin, zmax = pos[:, 2].min(), pos[:, 2].max()
    lz = zmax - zmin + vacuum
    pos[:, 2] += lz / 2 - 0.5 * (zmin + zmax)
    cell = np.array([Uc, Vc, [0, 0, lz]])
    cell[np.abs(cell) < 1e-10] = 0.0
    atoms = Atoms(symbols, positions=pos, cell=cell, pbc=True)
    z_top, z_bottom = surface_planes(atoms)
    atoms.info.update(z_top=float(z_top), z_bottom=float(z_bottom))
    return atoms


# ============================================================================ faces, defects
def _solid(atoms: Atoms) -> np.ndarray:
    return ~water_mask(atoms)


def surface_planes(atoms: Atoms, tol: float = 1.0) -> tuple[float, float]:
    """Heights (Å) of the top and bottom surface planes: the mean z of the outermost cation
    layer of each face (cations within ``tol`` Å of the outermost one). Water is ignored;
    the slab must be contiguous in z inside the cell."""
    cat = np.flatnonzero(np.isin(atoms.numbers, (20, 12)) & _solid(atoms))  # Ca, Mg
    if len(cat) == 0:
        raise ValueError("no Ca or Mg atoms: cannot place the surface plane")
    z = atoms.positions[cat, 2]
    return float(z[z >= z.max() - tol].mean()), float(z[z <= z.min() + tol].mean())


def top_layer_units(atoms: Atoms, face: str = "top", depth: float | None = None) -> dict:
    """Ions of the outermost layer of a face: ``{"Ca": [idx...], "CO3": [(c, [o...]), ...]}``.

    The layer is anchored on the outermost cation plane: every cation within ``depth`` Å
    of the outermost cation (default: half the spacing between the two outermost cation
    planes, at least 1 Å), and every carbonate C above the plane ``depth`` Å below it. On
    calcite (10-14) the carbonates sit in the cation plane; on aragonite (010) the
    outermost carbonate plane is about 1.2 Å above the outermost Ca plane, and those two
    planes together are the ions that face the water.
    """
    sym = np.array(atoms.get_chemical_symbols())
    solid = _solid(atoms)
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


def _record_defect(atoms: Atoms, species: str, position, face: str) -> None:
    sites = json.loads(atoms.info.get("defect_sites", "[]"))
    sites.append({"species": species, "position": [float(x) for x in position], "face": face})
    atoms.info["defect_sites"] = json.dumps(sites)


def defect_sites(atoms: Atoms) -> list[dict]:
    """The removed ions recorded in ``atoms.info``: dicts with species, position (Å), face."""
    return json.loads(atoms.info.get("defect_sites", "[]"))


def _remove(atoms: Atoms, cations: list[int], carbonates: list[tuple[int, list[int]]], face: str, label: str) -> Atoms:
    sym = atoms.get_chemical_symbols()
    gone = list(cations) + [i for c, os_ in carbonates for i in (c, *os_)]
    sites = [("Ca" if sym[i] == "Ca" else sym[i], atoms.positions[i]) for i in cations]
    sites += [("CO3", atoms.positions[c]) for c, _ in carbonates]
    out = atoms.copy()
    del out[gone]
    out.info = dict(atoms.info)
    for species, p in sites:
        _record_defect(out, species, p, face)
    out.info["defects"] = label if atoms.info.get("defects", "pristine") == "pristine" else f"{atoms.info['defects']}; {label}"
    charge = 2 * len(carbonates) - 2 * len(cations)
    out.info["net_charge"] = int(atoms.info.get("net_charge", 0)) + charge
    return out


PLACEMENTS = ("random", "adjacent", "separated")


def _lateral_distances(atoms: Atoms, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Minimum-image lateral distances (Å) between the atoms ``a`` and ``b`` (index arrays)."""
    cell2 = atoms.cell[:2, :2]
    f = (atoms.positions[a, None, :2] - atoms.positions[None, b, :2]) @ np.linalg.inv(cell2)
    f -= np.round(f)
    return np.linalg.norm(f @ cell2, axis=-1)


def _placed_sites(atoms: Atoms, layer: dict, k: int, placement: str, rng) -> tuple[list[int], list[int]]:
    """Indices into the layer's cation and carbonate lists for ``k`` pairs placed as asked.

    ``adjacent``: one compact pit, the ``k`` cations and ``k`` carbonates nearest to a
    random cation. ``separated``: each pair a cation and its nearest free carbonate, the
    cations spread by farthest-point sampling (each next one as far as possible from those
    already taken) from a random start."""
    cat = np.asarray(layer["cation"])
    co3 = np.asarray([c for c, _ in layer["CO3"]])
    start = int(rng.integers(len(cat)))
    d_cc = _lateral_distances(atoms, cat, cat)
    d_co = _lateral_distances(atoms, cat, co3)
    if placement == "adjacent":
        return sorted(np.argsort(d_cc[start], kind="stable")[:k].tolist()), sorted(np.argsort(d_co[start], kind="stable")[:k].tolist())
    ci = [start]
    while len(ci) < k:
        far = d_cc[:, ci].min(axis=1)
        far[ci] = -1.0
        ci.append(int(np.argmax(far)))
    oi: list[int] = []
    for i in ci:
        order = [j for j in np.argsort(d_co[i], kind="stable").tolist() if j not in oi]
        oi.append(order[0])
    return sorted(ci), sorted(oi)


def add_pair_vacancies(atoms: Atoms, k: int, rng=None, face: str = "top", sites=None, placement: str = "random") -> Atoms:
    """Remove ``k`` cations and ``k`` carbonate ions (neutral pairs) from the outermost
    layer of ``face``, chosen by ``rng`` (a seed or ``numpy.random.Generator``), or the
    given ``sites`` = (cation indices, carbonate C indices) into that layer's lists.

    ``placement``: ``random`` (cations and carbonates drawn independently), ``adjacent``
    (one compact pit) or ``separated`` (nearest-neighbour pairs spread over the face)."""
    layer = top_layer_units(atoms, face)
    ncat, nco3 = len(layer["cation"]), len(layer["CO3"])
    if k < 0 or k > min(ncat, nco3):
        raise InputError(f"cannot remove {k} pairs: the {face} layer has {ncat} cations and {nco3} carbonates")
    if placement not in PLACEMENTS:
        raise InputError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if k == 0:
        return atoms.copy()
    if sites is None:
        rng = np.random.default_rng(rng)
        if placement == "random":
            ci = sorted(rng.choice(ncat, size=k, replace=False).tolist())
            oi = sorted(rng.choice(nco3, size=k, replace=False).tolist())
        else:
            ci, oi = _placed_sites(atoms, layer, k, placement, rng)
    else:
        ci, oi = sites
    how = "" if placement == "random" or sites is not None else f", {placement}"
    return _remove(atoms, [layer["cation"][i] for i in ci], [layer["CO3"][i] for i in oi], face,
                   f"{k} pair vacanc{'y' if k == 1 else 'ies'} ({face}{how})")


def add_vacancy(atoms: Atoms, species: str, rng=None, face: str = "top") -> Atoms:
    """Remove one Ca2+ (``species="Ca"``) or one CO3 2- (``"CO3"``) from the outermost layer
    of ``face``: a charged slab (net charge -2 or +2 e, recorded in ``info['net_charge']``)."""
    layer = top_layer_units(atoms, face)
    rng = np.random.default_rng(rng)
    if species == "Ca":
        i = int(rng.integers(len(layer["cation"])))
        return _remove(atoms, [layer["cation"][i]], [], face, f"Ca vacancy ({face})")
    if species == "CO3":
        i = int(rng.integers(len(layer["CO3"])))
        return _remove(atoms, [], [layer["CO3"][i]], face, f"CO3 vacancy ({face})")
    raise ValueError(f"species must be 'Ca' or 'CO3', got {species!r}")


def enumerate_pair_vacancies(atoms: Atoms, k: int, face: str = "top", max_count: int | None = None,
                             seed: int = 0) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Distinct ways of removing ``k`` pairs from the outermost layer of ``face``, one
    representative per class of configurations equivalent under a lateral translation of
    the surface lattice. Returns ``(cation_sites, carbonate_sites)`` index tuples into that
    layer's lists (pass one as ``sites=`` to :func:`add_pair_vacancies`).

    When the number of combinations is large, ``max_count`` distinct classes are drawn at
    random (seeded) instead of enumerated exhaustively.
    """
    layer = top_layer_units(atoms, face)
    cat_pos = atoms.positions[layer["cation"], :2]
    co3_pos = atoms.positions[[c for c, _ in layer["CO3"]], :2]
    # a carbonate is only equivalent to another if its orientation is the same too
    co3_dir = np.array([atoms.get_distances(c, os_, mic=True, vector=True)[:, :2].round(2).tolist() for c, os_ in layer["CO3"]])
    co3_dir = np.array([sorted(map(tuple, d)) for d in co3_dir]).reshape(len(co3_pos), -1) if len(co3_pos) else co3_dir
    ncat, nco3 = len(cat_pos), len(co3_pos)
    if k < 1 or k > min(ncat, nco3):
        raise ValueError(f"k must be in 1..{min(ncat, nco3)}, got {k}")
    cell2 = atoms.cell[:2, :2]
    # lateral translations that map the layer onto itself (cations and oriented carbonates)
    trans = [cat_pos[j] - cat_pos[0] for j in range(ncat)]
    perms_cat, perms_co3 = [], []
    for t in trans:
        pc = _match(cat_pos + t, cat_pos, cell2)
        po = _match(co3_pos + t, co3_pos, cell2, co3_dir)
        if pc is not None and po is not None:
            perms_cat.append(pc)
            perms_co3.append(po)

    def canonical(ci, oi):
        return min((tuple(sorted(pc[list(ci)])), tuple(sorted(po[list(oi)]))) for pc, po in zip(perms_cat, perms_co3))

    from math import comb

    total = comb(ncat, k) * comb(nco3, k)
    seen = {}
    if max_count is None or total <= 20 * max_count:
        for ci in itertools.combinations(range(ncat), k):
            for oi in itertools.combinations(range(nco3), k):
                key = canonical(ci, oi)
                seen.setdefault(key, key)
                if max_count is not None and len(seen) >= max_count:
                    return sorted(seen)
        return sorted(seen)
    rng = np.random.default_rng(seed)
    tries = 0
    while len(seen) < max_count and tries < 50 * max_count:
        tries += 1
        ci = tuple(sorted(rng.choice(ncat, k, replace=False).tolist()))
        oi = tuple(sorted(rng.choice(nco3, k, replace=False).tolist()))
        key = canonical(ci, oi)
        seen.setdefault(key, key)
    return sorted(seen)


def _match(moved: np.ndarray, target: np.ndarray, cell2: np.ndarray, labels=None, tol: float = 0.2):
    """Permutation p with moved[i] == target[p[i]] modulo the lateral cell (and equal
    ``labels`` rows, if given), or None."""
    inv = np.linalg.inv(cell2)
    d = moved[:, None, :] - target[None, :, :]
    f = d @ inv
    f -= np.round(f)
    dist = np.linalg.norm(f @ cell2, axis=-1)
    if labels is not None:
        dist = dist + np.abs(labels[:, None, :] - labels[None, :, :]).max(axis=-1) * 1e3
    p = np.argmin(dist, axis=1)
    if np.all(dist[np.arange(len(p)), p] < tol) and len(set(p.tolist())) == len(p):
        return p
    return None


# ============================================================================ file I/O
def read_structure(path, format: str | None = None, require_slab: bool = True) -> Atoms:
    """Read any structure file ASE reads, and check it is a usable surface slab.

    One-line :class:`InputError` naming the file for: a missing file, an unknown format, an
    unreadable or garbled file, no periodic lateral cell, unsupported elements (named),
    atoms closer than 0.5 Å, and (``require_slab``) no gap above the top face to place water
    in. Water already in the file is recognised (:func:`find_waters`) and kept; the
    descriptor ignores it. The surface normal must be +z: a and b in the xy plane.
    """
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    try:
        atoms = ase.io.read(path, format=format)
    except UnknownFileTypeError as err:
        raise InputError(f"{path}: unknown structure format ({err})") from None
    except Exception as err:  # ASE raises many kinds on garbled files
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: cannot read structure ({type(err).__name__}: {msg})") from None
    if isinstance(atoms, list):
        atoms = atoms[-1]
    if len(atoms) == 0:
        raise InputError(f"{path}: no atoms in file")
    validate_structure(atoms, path, require_slab=require_slab)
    return atoms


def validate_structure(atoms: Atoms, path="<structure>", require_slab: bool = True) -> None:
    """The checks of :func:`read_structure` on an in-memory ``Atoms``."""
    from ase.neighborlist import neighbor_list

    cell = atoms.cell[:]
    if not atoms.pbc[:2].all() or np.linalg.norm(np.cross(cell[0], cell[1])) < 1e-6:
        raise InputError(f"{path}: no periodic lateral cell (need periodic a and b vectors)")
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6:
        raise InputError(f"{path}: cell vectors a and b must lie in the xy plane (surface normal along +z)")
    if abs(cell[2, 2]) < 1e-6:
        raise InputError(f"{path}: cell has no extent along z")
    bad = sorted(set(atoms.get_chemical_symbols()) - set(SUPPORTED_ELEMENTS))
    if bad:
        raise InputError(f"{path}: unsupported elements {', '.join(bad)} (supported: {', '.join(SUPPORTED_ELEMENTS)})")
    if not np.all(np.isfinite(atoms.positions)):
        raise InputError(f"{path}: non-finite atom positions")
    probe = atoms.copy()
    probe.pbc = True
    i, j, d = neighbor_list("ijd", probe, 0.5)
    if len(i):
        k = int(np.argmin(d))
        raise InputError(f"{path}: overlapping atoms {i[k]} and {j[k]} are {d[k]:.3f} Å apart (< 0.5 Å)")
    if require_slab:
        solid = ~water_mask(atoms)
        z = atoms.positions[solid, 2]
        lz = cell[2, 2]
        zs = np.sort(np.mod(z - z.min(), lz))
        gaps = np.diff(np.concatenate([zs, [zs[0] + lz]]))
        if gaps.max() < 6.0:
            raise InputError(f"{path}: not a slab: no gap of at least 6 Å above the top face to place water in "
                             f"(largest gap along z is {gaps.max():.1f} Å)")
        if not np.isin(atoms.get_chemical_symbols(), ("Ca", "Mg")).any():
            raise InputError(f"{path}: no Ca or Mg atoms: cannot place the surface plane")
        if np.argmax(gaps) != len(zs) - 1:  # the widest gap must be the one across the boundary
            raise InputError(f"{path}: the slab crosses the cell boundary along z; "
                             "shift it so that the gap (vacuum or water) is above the top face")


def write_structure(atoms: Atoms, path, format: str | None = None) -> Path:
    """Write ``atoms`` by extension (``.extxyz`` keeps ``atoms.info``), atomically."""
    import ase.io

    path = Path(path)
    if format is None and path.suffix == ".extxyz":
        format = "extxyz"
    try:
        with atomic_output(path) as tmp:
            ase.io.write(tmp, atoms, format=format or _format_from_name(path))
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{path}: cannot write this format ({type(err).__name__}: {err})") from None
    return path


def _format_from_name(path: Path) -> str:
    from ase.io.formats import filetype

    try:
        return filetype(path, read=False)
    except Exception:
        raise InputError(f"{path}: unknown output format {path.suffix!r}") from None
