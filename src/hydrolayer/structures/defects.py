"""Vacancies in the outermost layer of a slab, and the record of the removed ions.

Every removed ion is a :class:`DefectSite` (species, position in Å, face). They are kept in
``atoms.info["defect_sites"]`` as a JSON string of dicts with exactly the keys species,
position and face, e.g. ``[{"species": "CO3", "position": [1.0, 2.0, 21.4], "face": "top"}]``
(the format of the database rows and of the extxyz files). Read it with
:func:`defect_sites`, write it with :func:`set_defect_sites`; nothing else parses it.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from ..util import InputError
from .faces import top_layer_units

__all__ = [
    "DEFECT_SPECIES",
    "FACES",
    "PLACEMENTS",
    "DefectSite",
    "add_pair_vacancies",
    "add_vacancy",
    "defect_sites",
    "enumerate_pair_vacancies",
    "parse_defect_sites",
    "set_defect_sites",
]

DEFECT_SPECIES = ("Ca", "Mg", "CO3")  # the ions a vacancy removes
FACES = ("top", "bottom")
PLACEMENTS = ("random", "adjacent", "separated")
_KEYS = ("species", "position", "face")


@dataclass(frozen=True)
class DefectSite:
    """One removed ion: ``species`` ("Ca", "Mg" or "CO3"), ``position`` (x, y, z in Å, the
    cation or carbonate C position in the slab's frame) and ``face`` ("top" or "bottom")."""

    species: str
    position: tuple[float, float, float]
    face: str

    def __post_init__(self):
        if self.species not in DEFECT_SPECIES:
            raise InputError(f"unknown species {self.species!r} (known: {', '.join(DEFECT_SPECIES)})")
        if self.face not in FACES:
            raise InputError(f"unknown face {self.face!r} (known: {', '.join(FACES)})")
        try:
            pos = tuple(float(v) for v in self.position)
        except (TypeError, ValueError):
            raise InputError(f"position {self.position!r} is not three numbers (Å)") from None
        if len(pos) != 3 or not all(math.isfinite(v) for v in pos):
            raise InputError(f"position {self.position!r} is not three finite numbers (Å)")
        object.__setattr__(self, "position", pos)

    def to_dict(self) -> dict:
        """``{"species": ..., "position": [x, y, z], "face": ...}`` (Å), the stored form."""
        return {"species": self.species, "position": list(self.position), "face": self.face}

    @classmethod
    def from_dict(cls, d) -> DefectSite:
        """The site stored as the dict ``d`` (keys exactly species, position in Å, face);
        :class:`InputError` naming the problem otherwise."""
        if not isinstance(d, dict):
            raise InputError(f"{_short(d)} is not a record with keys {', '.join(_KEYS)} (a plain position?)")
        missing = [k for k in _KEYS if k not in d]
        extra = sorted(set(d) - set(_KEYS))
        if missing or extra:
            what = (
                f"missing key(s) {', '.join(missing)}" if missing else f"unexpected key(s) {', '.join(map(str, extra))}"
            )
            raise InputError(f"{_short(d)}: {what} (need exactly {', '.join(_KEYS)})")
        return cls(d["species"], d["position"], d["face"])

    def shifted(self, delta) -> DefectSite:
        """The same site moved by ``delta`` (3 numbers, Å)."""
        return DefectSite(self.species, tuple(float(v) for v in np.asarray(self.position) + delta), self.face)

    def mirrored(self) -> DefectSite:
        """The site reflected through z = 0 (z -> -z): the bottom face becomes the top."""
        x, y, z = self.position
        return DefectSite(self.species, (x, y, -z), "bottom" if self.face == "top" else "top")


def _short(value, n: int = 60) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= n else text[: n - 3] + "..."


def parse_defect_sites(value, where: str = "<structure>") -> list[DefectSite]:
    """Defect sites from their stored form ``value``: a JSON string or an already parsed
    list of dicts (positions in Å). Anything else, or a malformed site, raises
    :class:`InputError` ``"<where>: info defect_sites ..."`` naming the problem."""
    prefix = f"{where}: info defect_sites"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InputError(f"{prefix} is not JSON: {_short(value)}") from None
    if isinstance(value, np.ndarray):
        if value.size == 0:
            return []
        raise InputError(
            f"{prefix} is an array of numbers {_short(value)}; need a list of records with keys {', '.join(_KEYS)}"
        )
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{prefix} is {_short(value)}, not a list of records with keys {', '.join(_KEYS)}")
    out = []
    for k, item in enumerate(value):
        try:
            out.append(DefectSite.from_dict(item))
        except InputError as err:
            raise InputError(f"{prefix} item {k}: {err}") from None
    return out


def defect_sites(atoms: Atoms, where: str = "<structure>") -> list[DefectSite]:
    """The removed ions recorded in ``atoms.info["defect_sites"]`` (none if absent);
    ``where`` (a file name) prefixes the :class:`InputError` of a malformed record."""
    return parse_defect_sites(atoms.info.get("defect_sites", "[]"), where)


def set_defect_sites(atoms: Atoms, sites) -> None:
    """Record ``sites`` (:class:`DefectSite`, positions in Å) in ``atoms.info`` as JSON."""
    atoms.info["defect_sites"] = json.dumps([s.to_dict() for s in sites])


# ------------------------------------------------------------------ removing ions
def _remove(atoms: Atoms, cations: list[int], carbonates: list[tuple[int, list[int]]], face: str, label: str) -> Atoms:
    """``atoms`` without the given cations and carbonate ions (C index, O indices), with the
    removed ions recorded as ``face`` defect sites and ``label`` added to ``defects``."""
    sym = atoms.get_chemical_symbols()
    gone = list(cations) + [i for c, os_ in carbonates for i in (c, *os_)]
    new = [DefectSite(sym[i], atoms.positions[i], face) for i in cations]
    new += [DefectSite("CO3", atoms.positions[c], face) for c, _ in carbonates]
    out = atoms.copy()
    del out[gone]
    out.info = dict(atoms.info)
    set_defect_sites(out, defect_sites(atoms) + new)
    out.info["defects"] = (
        label if atoms.info.get("defects", "pristine") == "pristine" else f"{atoms.info['defects']}; {label}"
    )
    charge = 2 * len(carbonates) - 2 * len(cations)
    out.info["net_charge"] = int(atoms.info.get("net_charge", 0)) + charge
    return out


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
        return sorted(np.argsort(d_cc[start], kind="stable")[:k].tolist()), sorted(
            np.argsort(d_co[start], kind="stable")[:k].tolist()
        )
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


def add_pair_vacancies(
    atoms: Atoms, k: int, rng=None, face: str = "top", sites=None, placement: str = "random"
) -> Atoms:
    """Remove ``k`` cations and ``k`` carbonate ions (neutral pairs) from the outermost
    layer of ``face`` ("top" or "bottom") of the slab ``atoms`` (positions in Å), chosen by
    ``rng`` (a seed or ``numpy.random.Generator``), or the given ``sites`` = (cation
    indices, carbonate C indices) into that layer's lists
    (:func:`~hydrolayer.structures.top_layer_units`).

    ``k``: a number of pairs; ``placement``: ``random`` (cations and carbonates drawn
    independently), ``adjacent`` (one compact pit) or ``separated`` (nearest-neighbour
    pairs spread over the face). The removed ions are recorded as :class:`DefectSite`."""
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
    return _remove(
        atoms,
        [layer["cation"][i] for i in ci],
        [layer["CO3"][i] for i in oi],
        face,
        f"{k} pair vacanc{'y' if k == 1 else 'ies'} ({face}{how})",
    )


def add_vacancy(atoms: Atoms, species: str, rng=None, face: str = "top") -> Atoms:
    """Remove one Ca2+ (``species="Ca"``) or one CO3 2- (``"CO3"``) from the outermost layer
    of ``face`` ("top" or "bottom") of the slab ``atoms`` (positions in Å), chosen by ``rng`` (a seed or
    ``numpy.random.Generator``): a charged slab (net charge -2 or +2 e, recorded in
    ``info['net_charge']``)."""
    layer = top_layer_units(atoms, face)
    rng = np.random.default_rng(rng)
    if species == "Ca":
        i = int(rng.integers(len(layer["cation"])))
        return _remove(atoms, [layer["cation"][i]], [], face, f"Ca vacancy ({face})")
    if species == "CO3":
        i = int(rng.integers(len(layer["CO3"])))
        return _remove(atoms, [], [layer["CO3"][i]], face, f"CO3 vacancy ({face})")
    raise ValueError(f"species must be 'Ca' or 'CO3', got {species!r}")


# ------------------------------------------------------------------ enumeration
def enumerate_pair_vacancies(
    atoms: Atoms, k: int, face: str = "top", max_count: int | None = None, seed: int = 0
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Distinct ways of removing ``k`` pairs (a count) from the outermost layer of ``face``
    ("top" or "bottom"), one representative per class of configurations equivalent under a
    lateral translation of the surface lattice. Returns ``(cation_sites, carbonate_sites)``
    index tuples into that layer's lists (pass one as ``sites=`` to
    :func:`add_pair_vacancies`).

    When the number of combinations is large, ``max_count`` (a count) distinct classes are
    drawn at random (``seed``, an integer) instead of enumerated exhaustively.
    """
    layer = top_layer_units(atoms, face)
    ncat, nco3 = len(layer["cation"]), len(layer["CO3"])
    if k < 1 or k > min(ncat, nco3):
        raise ValueError(f"k must be in 1..{min(ncat, nco3)}, got {k}")
    perms = _layer_translations(atoms, layer)

    def canonical(ci, oi):
        return min((tuple(sorted(pc[list(ci)])), tuple(sorted(po[list(oi)]))) for pc, po in perms)

    seen = {}
    if max_count is None or math.comb(ncat, k) * math.comb(nco3, k) <= 20 * max_count:
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


def _layer_translations(atoms: Atoms, layer: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """The lateral translations that map the layer onto itself (cations and carbonates of
    the same orientation), as (cation permutation, carbonate permutation) pairs."""
    cat_pos = atoms.positions[layer["cation"], :2]
    co3_pos = atoms.positions[[c for c, _ in layer["CO3"]], :2]
    # a carbonate is only equivalent to another if its orientation is the same too
    co3_dir = np.array(
        [atoms.get_distances(c, os_, mic=True, vector=True)[:, :2].round(2).tolist() for c, os_ in layer["CO3"]]
    )
    co3_dir = np.array([sorted(map(tuple, d)) for d in co3_dir]).reshape(len(co3_pos), -1) if len(co3_pos) else co3_dir
    cell2 = atoms.cell[:2, :2]
    perms = []
    for j in range(len(cat_pos)):
        t = cat_pos[j] - cat_pos[0]
        pc = _match(cat_pos + t, cat_pos, cell2)
        po = _match(co3_pos + t, co3_pos, cell2, co3_dir)
        if pc is not None and po is not None:
            perms.append((pc, po))
    return perms


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
