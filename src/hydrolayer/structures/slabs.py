"""Surface slabs cut from the bulk crystals: :func:`build_surface`.

Surfaces are cut so that both faces are related by a symmetry operation of the bulk that
reverses the surface normal (an inversion centre or a two-fold axis in the surface plane),
so both faces carry the same termination and the slab has no dipole. For dipolar
(Tasker type III) stackings such as aragonite (001), the outermost ion plane of each face is
half occupied (the other half moved to the far face), which keeps the slab stoichiometric,
neutral and symmetric.

The crystal is handled as rigid ions (:class:`RigidIons`: each Ca2+/Mg2+ and each CO3 2-
moves as one unit), so a cut never breaks a carbonate.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from ..util import InputError
from .crystals import FORMAL_CHARGE, SURFACES, SurfaceDef, bulk
from .defects import add_pair_vacancies, add_vacancy
from .faces import surface_planes
from .molecules import find_carbonates

__all__ = ["RigidIons", "build_surface", "rigid_ions"]


# ============================================================================ rigid ions
@dataclass
class RigidIons:
    """The ions of a crystal as rigid units, one per Ca2+/Mg2+ or CO3 2- (formula-unit
    ions): ``kind[u]`` is 'Ca'/'Mg'/'CO3'; ``ref[u]`` the cation or C position (Å);
    ``symbols[u]`` the unit's elements; ``offsets[u]`` its atom positions relative to
    ``ref`` (Å)."""

    kind: list
    ref: np.ndarray
    symbols: list
    offsets: list


def rigid_ions(atoms: Atoms) -> RigidIons:
    """The ions of the crystal ``atoms`` (positions in Å) as :class:`RigidIons`; raises
    ``ValueError`` if an atom is neither a cation nor part of a carbonate ion."""
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
    return RigidIons(kind, np.array(ref), symbols, offsets)


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

    ``size``: lateral repeats (A, B) of the surface cell (counts); ``layers``:
    stoichiometric layers (a count; one layer = one repeat of the stacking along the
    normal); ``lattice``: lattice parameters a, b, c in Å (defaults: experiment; pass the
    force field's relaxed lattice for MD); ``pair_vacancies``: K (a count) neutral
    Ca2+/CO3 2- pairs removed at random (``seed``, an integer) from the outermost layer of
    the top face (and the bottom face with ``both_faces``); ``placement``: how the pairs
    are placed (``random``, ``adjacent``: one compact pit, ``separated``: nearest-neighbour
    pairs spread apart; see :func:`add_pair_vacancies`); ``vacancy``: "Ca" or "CO3"
    removes one ion of that kind (a charged slab; the net charge is recorded in e);
    ``vacuum``: the gap between the slab and its periodic image (Å).

    ``atoms.info`` holds surface, polymorph, facet, size, layers, seed, defects,
    defect_sites (JSON: species and positions of the removed ions, see
    :func:`defect_sites`), net_charge, z_top, z_bottom (surface planes) and the lattice used.
    """
    size = _check_build_args(name, size, layers, vacancy, vacuum)
    sd = SURFACES[name]
    conv = bulk(sd.polymorph, lattice)
    try:  # cut one surface cell and tile it; half-occupied planes may need the full size
        slab = _cut_slab(conv, sd, (1, 1), layers, vacuum).repeat((size[0], size[1], 1))
    except RuntimeError:
        try:
            slab = _cut_slab(conv, sd, size, layers, vacuum)
        except RuntimeError:
            raise InputError(
                f"{name}: no symmetric, neutral slab of {layers} layer(s) at this lattice; try another number of layers"
            ) from None
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
    faces = ("top", "bottom") if both_faces else ("top",)
    if pair_vacancies:
        for face in faces:
            slab = add_pair_vacancies(slab, pair_vacancies, rng=rng, face=face, placement=placement)
    if vacancy:
        for face in faces:
            slab = add_vacancy(slab, vacancy, rng=rng, face=face)
    return slab


def _check_build_args(name: str, size, layers: int, vacancy: str | None, vacuum: float) -> tuple[int, int]:
    """The arguments of :func:`build_surface` checked; returns ``size`` as two ints."""
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
    return size


def _cut_slab(conv: Atoms, sd: SurfaceDef, size, layers: int, vacuum: float) -> Atoms:
    units = rigid_ions(conv)
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


def _fu_per_layer(units: RigidIons, conv: Atoms, u, v, d) -> float:
    """Formula units per surface cell per layer repeat d."""
    ncat = sum(k != "CO3" for k in units.kind)
    vol = abs(np.linalg.det(conv.cell[:]))
    area = np.linalg.norm(np.cross(u, v))
    return ncat * area * d / vol


def _select_units(conv, units: RigidIons, U, V, n, hmin, hmax):
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


def _assemble(sel, units: RigidIons, U, V, n, hc, vacuum) -> Atoms:
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
