"""Paired windows from the simulation database: descriptor (C, O, Ca) -> water density.

One *interface* is one face of one simulated slab: the top face as is, the bottom face
mirrored (z -> -z on the atoms and on the density; a reflection, valid for this achiral
force field). Each interface gives windows of 10 x 10 x 20 Å (32 x 32 x 64 points) at any
lateral offset in the periodic cell.

Targets
-------
The stored half-run densities (rho/rho_bulk on the full periodic MD cell) are smoothed with
a periodic Gaussian of width ``sigma_target`` (Å, in Fourier space, exact for any cell) and
sampled at the window points (trilinear, periodic). Both halves are kept: the training
target is their mean, the evaluation also uses them apart for the noise floor.

A pristine slab is periodic in its surface unit cell, so its halves are also averaged over
the ``na x nb`` lateral unit cells of the simulated cell (``structure_size``), each half on
its own (:func:`average_unit_cells`: a projection in Fourier space, exact for any grid).
This is the reference for the pristine test surfaces (aragonite, vaterite) and the pristine
calcite training row; the split-half noise floor then refers to the averaged reference.
Slabs with defects are not averaged (no translation symmetry).

Why ``DEFAULT_SIGMA_TARGET = 0.4`` Å: the measured split-half noise of 50 ps halves
(``reference/forcefield.md``) is ~100% of bulk density in raw voxels, 54% at 0.2 Å, 43% at
0.3 Å, 34% at 0.4 Å and 27% at 0.5 Å, falling as 1/sqrt(time). For the 200 ps training runs
(100 ps halves) that is ~24% at 0.4 Å, so the full-run target is off its infinite-time
value by about half of that (~12% of bulk) per voxel; at 0.2-0.3 Å the target would be mostly
noise. Wider is quieter but the layers (first peak at ~2.1 Å, next at ~3.4 Å, minima in
between ~0.6 Å away) start to merge beyond ~0.5 Å. 0.4 Å keeps the layering and the
lateral sites resolved at roughly a third of the raw noise. It is a parameter: the
evaluation always compares prediction, reference and the noise floor at the same width.

Windows bank (speed)
--------------------
Per interface the descriptor and both target halves are precomputed once on an *extended*
lateral lattice of the window's own spacing (0.3125 Å), covering offsets [0, L) plus one
window width, by tiling exact windows from :func:`hydrolayer.descriptors.describe_windows`
(windows at offsets 10 Å apart line up point for point). A window at lateral offset
``(mx * 0.3125, my * 0.3125)`` is then a slice. The bank is cached on disk per row (``.npy``,
memory-mapped), keyed by the row's unique id, face and both widths. Augmentation draws
random lattice offsets; evaluation uses a fixed grid of offsets that tiles the cell.

Splits
------
By simulation, never by window: named test surfaces (anything that is not a training
surface, and the charged slabs with a single vacancy on the top face) are held out by name; the rest is
split 70/20/10 (train/val/test) with a seeded generator and saved as ``split.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .conventions import WINDOW_SHAPE, WINDOW_SIZE, Z_BELOW, window_heights, window_starts
from .util import InputError, atomic_output

__all__ = [
    "DEFAULT_SIGMA_TARGET",
    "smooth_periodic",
    "average_unit_cells",
    "unit_cell_repeats",
    "sample_periodic",
    "Interface",
    "interfaces_of_row",
    "classify_row",
    "make_split",
    "save_split",
    "load_split",
    "WindowBank",
    "build_bank",
]

DEFAULT_SIGMA_TARGET = 0.4  # Å, see the module docstring
CACHE_VERSION = 3  # 2: pristine rows averaged over their lateral unit cells; 3: z_s skips ions out of the surface
SPLIT_FRACTIONS = (0.7, 0.2, 0.1)
TRAIN_SURFACES = ("calcite-104",)
NAMED_TESTS = {
    "calcite-104 CO3 vacancy": "calcite (10-14) with a CO3 2- vacancy",
    "calcite-104 Ca vacancy": "calcite (10-14) with a Ca2+ vacancy",
    "aragonite-010": "aragonite (010)",
    "aragonite-010 pair vacancies": "aragonite (010) with pair vacancies",
    "aragonite-001": "aragonite (001)",
    "vaterite-010": "vaterite (010)",
}


# ------------------------------------------------------------------ periodic grids
def smooth_periodic(values: np.ndarray, cell: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing (width ``sigma`` Å, normalised) of a periodic grid on ``cell``.

    Done in Fourier space with the cell's reciprocal metric, so it is exact for any cell
    shape and grid spacing; ``sigma <= 0`` returns the values unchanged (as float32).
    """
    values = np.asarray(values, dtype=np.float32)
    if sigma is None or sigma <= 0:
        return values.copy()
    n = values.shape
    recip = 2 * np.pi * np.linalg.inv(np.asarray(cell, dtype=float)).T  # rows b_i, a_i . b_j = 2 pi delta
    g = recip @ recip.T
    m0 = np.fft.fftfreq(n[0]) * n[0]
    m1 = np.fft.fftfreq(n[1]) * n[1]
    m2 = np.fft.rfftfreq(n[2]) * n[2]
    a, b, c = m0[:, None, None], m1[None, :, None], m2[None, None, :]
    k2 = g[0, 0] * a * a + g[1, 1] * b * b + g[2, 2] * c * c + 2 * (g[0, 1] * a * b + g[0, 2] * a * c + g[1, 2] * b * c)
    spec = np.fft.rfftn(values)
    spec *= np.exp(-0.5 * sigma * sigma * k2)
    return np.fft.irfftn(spec, s=n, axes=(0, 1, 2)).astype(np.float32)


def average_unit_cells(values: np.ndarray, repeats: tuple[int, int]) -> np.ndarray:
    """Average of a periodic grid over the ``na x nb`` lateral unit cells of its cell.

    The cell is ``na x nb`` repeats of a surface unit cell along its first two vectors. The
    mean over the ``na * nb`` unit-cell translations keeps exactly the Fourier components
    whose lateral indices are multiples of ``na`` and ``nb`` (a translation by 1/na of the
    cell multiplies component ``k`` by ``exp(2 pi i k / na)``, and the mean of those phases
    is 0 unless ``na`` divides ``k``). So it is done in Fourier space, exact for any grid
    shape, with no resampling; the result is periodic in the unit cell and has the same
    mean. ``(1, 1)`` returns the values unchanged (as float32).
    """
    na, nb = (int(r) for r in repeats)
    values = np.asarray(values, dtype=np.float32)
    if na < 1 or nb < 1:
        raise ValueError(f"repeats must be positive, got {repeats!r}")
    if (na, nb) == (1, 1):
        return values.copy()
    n = values.shape
    spec = np.fft.rfftn(values)
    ka = np.rint(np.fft.fftfreq(n[0]) * n[0]).astype(int)
    kb = np.rint(np.fft.fftfreq(n[1]) * n[1]).astype(int)
    keep = (ka[:, None] % na == 0) & (kb[None, :] % nb == 0)
    spec *= keep[:, :, None]
    return np.fft.irfftn(spec, s=n, axes=(0, 1, 2)).astype(np.float32)


def unit_cell_repeats(row) -> tuple[int, int]:
    """``(na, nb)`` lateral unit cells of a *pristine* row (its ``structure_size``), else
    ``(1, 1)``: a slab with defects has no lateral translation symmetry to average over."""
    if str(row.get("defects", "")).strip().lower() not in ("pristine", ""):
        return (1, 1)
    size = str(row.get("structure_size", "")).lower().split("x")
    try:
        na, nb = int(size[0]), int(size[1])
    except (IndexError, ValueError):
        return (1, 1)
    return (na, nb) if na >= 1 and nb >= 1 else (1, 1)


def sample_periodic(values: np.ndarray, cell: np.ndarray, points: np.ndarray, order: int = 1) -> np.ndarray:
    """Values of a periodic grid (cube convention, from the cell's corner) at Cartesian
    ``points`` (..., 3), interpolated with ``order`` (1: trilinear) and wrapped periodically."""
    from scipy.ndimage import map_coordinates

    points = np.asarray(points, dtype=float)
    frac = points.reshape(-1, 3) @ np.linalg.inv(np.asarray(cell, dtype=float))
    idx = (frac * np.asarray(values.shape, dtype=float)).T
    out = map_coordinates(np.asarray(values, dtype=np.float32), idx, order=order, mode="grid-wrap")
    return out.reshape(points.shape[:-1]).astype(np.float32)


# ------------------------------------------------------------------ interfaces
@dataclasses.dataclass
class Interface:
    """One face of one simulated slab, as a source of windows (lengths in Å)."""

    unique_id: str
    row_id: int
    face: str  # "top" or "bottom" (bottom: mirrored to face +z)
    surface: str
    defects: str
    name: str  # named test surface or "" for the training pool
    rho_bulk: float  # Å^-3, to convert rho/rho_bulk to number density

    @property
    def key(self) -> str:
        return f"{self.unique_id}-{self.face}"


def classify_row(row, train_surfaces: Sequence[str] = TRAIN_SURFACES) -> str:
    """The named test group a row belongs to, or ``""`` for the training pool.

    Rule: a slab with a net charge and its vacancy on the top face only (the named tests'
    form: one CO3 2- vacancy, +2 e, or one Ca2+ vacancy, -2 e) is ``"<surface> CO3
    vacancy"`` or ``"<surface> Ca vacancy"``; a charged slab of a training facet with a
    vacancy on each face (``both_faces``, +-4 e: ``examples/dataset-sv.yaml``, issue 15's
    single-vacancy training runs) is in the pool, as other slabs of that facet; a pristine slab of a
    facet named in :data:`NAMED_TESTS` (aragonite (010), (001), vaterite (010): the paper's
    named test surfaces) is ``"<surface>"``, held out even when its facet is trained on; a
    neutral defect slab of a facet that is not trained on is ``"<surface> pair vacancies"``.
    Everything else (neutral slabs of the training facets) is the pool.
    """
    surface = str(row.get("surface", "unknown"))
    defects = str(row.get("defects", "")).lower()
    q = row.get("net_charge")
    if q is None:  # fall back to the defect label
        single = "pair" not in defects
        q = 2 if (single and "co3 vacancy" in defects) else -2 if (single and "ca vacancy" in defects) else 0
    both_faces = "(bottom)" in defects
    if abs(q) > 0.5 and both_faces and surface in train_surfaces:
        return ""
    if q > 0.5:
        return f"{surface} CO3 vacancy"
    if q < -0.5:
        return f"{surface} Ca vacancy"
    pristine = defects in ("", "pristine")
    if pristine and surface in NAMED_TESTS:
        return surface
    if surface not in train_surfaces:
        return surface if pristine else f"{surface} pair vacancies"
    return ""


def interfaces_of_row(row, faces=("top", "bottom"), train_surfaces=TRAIN_SURFACES) -> list[Interface]:
    rho_bulk = row.get("rho_bulk")
    if rho_bulk is None:
        raise InputError(f"row {row.id}: no rho_bulk key-value pair")
    return [
        Interface(
            row.unique_id,
            int(row.id),
            face,
            str(row.get("surface", "unknown")),
            str(row.get("defects", "")),
            classify_row(row, train_surfaces),
            float(rho_bulk),
        )
        for face in faces
    ]


# ------------------------------------------------------------------ splits
def make_split(rows, seed: int = 0, fractions=SPLIT_FRACTIONS, train_surfaces=TRAIN_SURFACES) -> dict:
    """Split rows by simulation: ``{"train", "val", "test": [unique_id], "named": {name: [unique_id]}}``.

    The named test surfaces (:func:`classify_row`) are held out first; the remaining pool is
    shuffled with ``numpy.random.default_rng(seed)`` (after sorting by unique id, so the
    split does not depend on the database's row order) and cut by ``fractions`` (default
    70/20/10), with at least one validation simulation, and at least one test simulation
    when the pool has four or more and the test fraction is not 0. A test fraction of 0 is
    for a small pool: the test set is then the named surfaces and the simulations finished
    after the split (``hydrolayer evaluate`` reports those as "new simulations").
    """
    pool, named = [], {}
    row_ids = {}
    for row in rows:
        row_ids[row.unique_id] = int(row.id)
        name = classify_row(row, train_surfaces)
        if name:
            named.setdefault(name, []).append(row.unique_id)
        else:
            pool.append(row.unique_id)
    pool.sort()
    n = len(pool)
    if n < 2:
        raise InputError(
            f"the database has {n} training-pool simulation(s) of {list(train_surfaces)}; need at least 2 (train + validation)"
        )
    perm = [pool[i] for i in np.random.default_rng(seed).permutation(n)]
    n_val = max(1, int(round(fractions[1] * n)))
    n_test = int(round(fractions[2] * n)) if n >= 3 else 0
    if n >= 4 and fractions[2] > 0:
        n_test = max(1, n_test)
    n_train = n - n_val - n_test
    if n_train < 1:
        n_val, n_test = 1, max(0, n - 2)
        n_train = n - n_val - n_test
    return {
        "seed": int(seed),
        "fractions": list(fractions),
        "train_surfaces": list(train_surfaces),
        "train": sorted(perm[:n_train]),
        "val": sorted(perm[n_train : n_train + n_val]),
        "test": sorted(perm[n_train + n_val :]),
        "named": {k: sorted(v) for k, v in sorted(named.items())},
        "row_ids": row_ids,
    }


def save_split(split: dict, path) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(split, indent=1) + "\n")
    return path


def load_split(path) -> dict:
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: split file not found") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not a split file ({err})") from None
    for key in ("train", "val", "test", "named"):
        if key not in split:
            raise InputError(f"{path}: split file has no {key!r}")
    return split


# ------------------------------------------------------------------ geometry helpers
def _mirror_map(atoms, mirrored) -> np.ndarray:
    """Translation t with ``mirrored = R atoms + t`` (R = diag(1, 1, -1)), checked atom by atom
    modulo the lateral lattice; raises if ``descriptors.mirror`` is not such a reflection."""
    if len(atoms) == 0:
        return np.zeros(3)
    r = atoms.positions * np.array([1.0, 1.0, -1.0])
    d = mirrored.positions - r
    t = d[0].copy()
    rest = d - t
    cell = np.asarray(atoms.cell)
    frac = rest @ np.linalg.pinv(cell) if np.linalg.matrix_rank(cell) == 3 else rest
    if np.abs(rest[:, 2]).max() > 1e-4 or np.abs(frac[:, :2] - np.round(frac[:, :2])).max() > 1e-4:
        raise RuntimeError("descriptors.mirror is not a z -> -z reflection plus a translation; cannot map the density")
    return t


def _defect_positions(row, face: str, t_mirror: np.ndarray) -> np.ndarray:
    """Removed-ion positions (Å) of ``face`` in the interface's frame (mirrored for the
    bottom), from the row's ``defect_sites`` (:func:`hydrolayer.structures.parse_defect_sites`)."""
    from .structures import parse_defect_sites

    data = getattr(row, "data", {}) or {}
    sites = data.get("defect_sites")
    if sites is None:
        info = data.get("structure_info", {}) or {}
        sites = info.get("defect_sites")
    if sites is None:
        return np.zeros((0, 3))
    sites = parse_defect_sites(sites, f"row {row.get('id')}")
    out = np.array([s.position for s in sites if s.face == face], dtype=float).reshape(-1, 3)
    if face == "bottom" and len(out):
        out = out * np.array([1.0, 1.0, -1.0]) + t_mirror
    return out


def _lateral_extent(cell) -> tuple[float, float]:
    """Size of the bounding box of the cell's lateral parallelogram (any offset inside it,
    moved by lattice vectors, covers every window)."""
    a, b = np.asarray(cell)[0, :2], np.asarray(cell)[1, :2]
    corners = np.array([[0, 0], a, b, a + b])
    ext = corners.max(0) - corners.min(0)
    return float(ext[0]), float(ext[1])


# ------------------------------------------------------------------ the bank
@dataclasses.dataclass
class BankEntry:
    interface: Interface
    desc: np.ndarray  # (3, X, Y, nz) Å^-3, memory-mapped
    target: np.ndarray  # (2, X, Y, nz) rho/rho_bulk, halves, memory-mapped
    meta: dict  # n_offsets (nx, ny), step, z_s, origin, lateral cell, defects

    @property
    def n_offsets(self) -> tuple[int, int]:
        return tuple(self.meta["n_offsets"])


def _bank_paths(cache_dir: Path, iface: Interface, sigma: float, sigma_target: float, raw: bool = False) -> dict:
    """Cache files of one interface. ``raw``: the targets without unit-cell averaging; the
    descriptor does not depend on the targets, so both share one ``desc.npy``."""
    stem = f"{iface.key}-s{sigma:g}-t{sigma_target:g}-v{CACHE_VERSION}"
    paths = {k: cache_dir / f"{stem}{'-raw' if raw else ''}.{k}" for k in ("target.npy", "json")}
    paths["desc.npy"] = cache_dir / f"{stem}.desc.npy"
    return paths


def _compute_bank(row, atoms, smoothed_halves, cell_grid, iface: Interface, sigma: float, describe: bool = True):
    """Descriptor and target halves on the extended lattice of one interface
    (``describe=False``: the descriptor is already cached; it is returned as None)."""
    from . import descriptors

    shape, size = WINDOW_SHAPE, WINDOW_SIZE
    step = size[0] / shape[0]
    if abs(size[1] / shape[1] - step) > 1e-9:
        raise RuntimeError("window spacing must be the same along x and y")
    if iface.face == "bottom":
        surf = descriptors.mirror(atoms)
        t = _mirror_map(atoms, surf)
    else:
        surf, t = atoms, np.zeros(3)
    z_s = float(descriptors.surface_plane(surf, "top"))
    lx, ly = _lateral_extent(atoms.cell)
    nx, ny = max(1, math.ceil(lx / step - 1e-6)), max(1, math.ceil(ly / step - 1e-6))
    ext = (nx + shape[0] - 1, ny + shape[1] - 1)
    tx, ty = math.ceil(ext[0] / shape[0]), math.ceil(ext[1] / shape[1])
    desc = None
    if describe:
        offsets = np.array([[p * size[0], q * size[1]] for p in range(tx) for q in range(ty)], dtype=float)
        win = np.asarray(descriptors.describe_windows(surf, offsets, sigma=sigma, face="top"), dtype=np.float32)
        nch = win.shape[1]
        desc = (
            win.reshape(tx, ty, nch, *shape)
            .transpose(2, 0, 3, 1, 4, 5)
            .reshape(nch, tx * shape[0], ty * shape[1], shape[2])
        )
        desc = np.ascontiguousarray(desc[:, : ext[0], : ext[1]])
    # target: the window points of the extended lattice, in the interface frame
    xs = np.arange(ext[0]) * step
    ys = np.arange(ext[1]) * step
    zs = z_s + window_heights()
    pts = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), axis=-1)
    if iface.face == "bottom":  # interface frame -> MD frame: p = R (q - t)
        pts = (pts - t) * np.array([1.0, 1.0, -1.0])
    target = np.stack([sample_periodic(h, cell_grid, pts) for h in smoothed_halves])
    defects = _defect_positions(row, iface.face, t)
    meta = {
        "unique_id": iface.unique_id,
        "face": iface.face,
        "n_offsets": [nx, ny],
        "step": step,
        "z_s": z_s,
        "z0": z_s - Z_BELOW,
        "dz": size[2] / shape[2],
        "lateral_cell": np.asarray(atoms.cell)[:2, :2].tolist(),
        "defect_sites": defects.tolist(),
        "sigma": sigma,
        "version": CACHE_VERSION,
    }
    return desc, target, meta


class WindowBank:
    """Windows of a list of interfaces; slices of cached, memory-mapped arrays."""

    def __init__(self, entries: list[BankEntry], window_shape=(32, 32, 64)):
        self.entries = entries
        self.window_shape = tuple(window_shape)

    def __len__(self):
        return len(self.entries)

    def window(self, i: int, mx: int, my: int):
        """(descriptor (3, 32, 32, 64), target halves (2, 32, 32, 64)) at offset (mx, my) steps."""
        e = self.entries[i]
        wx, wy = self.window_shape[:2]
        return e.desc[:, mx : mx + wx, my : my + wy], e.target[:, mx : mx + wx, my : my + wy]

    def offset(self, i: int, mx: int, my: int) -> tuple[float, float]:
        s = self.entries[i].meta["step"]
        return mx * s, my * s

    def random_plan(self, rng: np.random.Generator, per_interface: int) -> list[tuple[int, int, int]]:
        """``per_interface`` random lattice offsets for each interface, shuffled."""
        plan = []
        for i, e in enumerate(self.entries):
            nx, ny = e.n_offsets
            mx = rng.integers(0, nx, size=per_interface)
            my = rng.integers(0, ny, size=per_interface)
            plan += [(i, int(a), int(b)) for a, b in zip(mx, my)]
        order = rng.permutation(len(plan))
        return [plan[j] for j in order]

    def grid_plan(self, indices: Iterable[int] | None = None) -> list[tuple[int, int, int]]:
        """Fixed offsets that tile each interface's cell with windows (slight overlap)."""
        plan = []
        wx, wy = self.window_shape[:2]
        for i in range(len(self.entries)) if indices is None else indices:
            nx, ny = self.entries[i].n_offsets
            plan += [(i, a, b) for a in window_starts(nx, wx) for b in window_starts(ny, wy)]
        return plan

    def centred_plan(self, i: int, points: np.ndarray) -> list[tuple[int, int, int]]:
        """Offsets (snapped to the lattice) of windows centred laterally on ``points``."""
        e = self.entries[i]
        s = e.meta["step"]
        nx, ny = e.n_offsets
        wx, wy = self.window_shape[:2]
        lat = np.asarray(e.meta["lateral_cell"])
        plan = []
        for p in np.asarray(points).reshape(-1, 3):
            c = p[:2] - np.array([wx * s / 2, wy * s / 2])
            f = c @ np.linalg.inv(lat)
            c = (f - np.floor(f)) @ lat
            plan.append((i, int(round(c[0] / s)) % nx, int(round(c[1] / s)) % ny))
        return sorted(set(plan))

    def window_points(self, i: int, mx: int, my: int) -> np.ndarray:
        """Cartesian points (32, 32, 64, 3) of a window in the interface frame (Å)."""
        e = self.entries[i]
        s, z0, dz = e.meta["step"], e.meta["z0"], e.meta["dz"]
        wx, wy, wz = self.window_shape
        xs, ys, zs = (mx + np.arange(wx)) * s, (my + np.arange(wy)) * s, z0 + np.arange(wz) * dz
        return np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), axis=-1)

    def defect_mask(self, i: int, mx: int, my: int, radius: float = 3.0) -> np.ndarray:
        """Window points within ``radius`` Å of a defect site (periodic laterally)."""
        e = self.entries[i]
        sites = np.asarray(e.meta["defect_sites"]).reshape(-1, 3)
        pts = self.window_points(i, mx, my)
        mask = np.zeros(pts.shape[:-1], dtype=bool)
        lat = np.asarray(e.meta["lateral_cell"])
        inv = np.linalg.inv(lat)
        for p in sites:
            d = pts - p
            f = d[..., :2] @ inv
            f -= np.round(f)
            dxy = f @ lat
            r2 = (dxy**2).sum(-1) + d[..., 2] ** 2
            mask |= r2 <= radius * radius
        return mask

    def heights(self, i: int = 0) -> np.ndarray:
        """Height of each z plane above the surface plane (Å), the same for every window."""
        return window_heights()

    def batch(self, plan: Sequence[tuple[int, int, int]]):
        """Stacked float32 arrays (x (B,3,...), halves (B,2,...)) for a list of offsets."""
        xs, ys = zip(*(self.window(*p) for p in plan))
        return np.stack(xs).astype(np.float32, copy=False), np.stack(ys).astype(np.float32, copy=False)

    def mean_profile(self) -> np.ndarray:
        """Mean target (mean of halves) along z over every interface's cell, each interface
        weighted equally: the height-only baseline."""
        profs = []
        for e in self.entries:
            nx, ny = e.n_offsets
            t = np.asarray(e.target[:, :nx, :ny], dtype=np.float64)
            profs.append(t.mean(axis=(0, 1, 2)))
        return np.mean(profs, axis=0) if profs else np.zeros(self.window_shape[2])


def build_bank(
    db,
    unique_ids: Sequence[str],
    cache_dir,
    sigma: float | None = None,
    sigma_target: float = DEFAULT_SIGMA_TARGET,
    faces=("top", "bottom"),
    grids_dir=None,
    train_surfaces=TRAIN_SURFACES,
    log=None,
    unit_cells: bool = True,
) -> WindowBank:
    """The :class:`WindowBank` of the given rows (both faces), computing and caching what
    is missing in ``cache_dir``. Each row's density is read and smoothed once; a pristine
    row's halves are also averaged over its lateral unit cells (:func:`average_unit_cells`,
    each half apart, so the split-half noise floor is that of the averaged reference).
    ``unit_cells=False``: no averaging (the evaluation uses it to show what the averaging
    gains; cached apart)."""
    from . import descriptors, store

    if sigma is None:
        sigma = float(descriptors.DEFAULT_SIGMA)
    shape = WINDOW_SHAPE
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for uid in unique_ids:
        row = store.get_row(db, uid)
        ifaces = interfaces_of_row(row, faces, train_surfaces)
        periodic = unit_cell_repeats(row)
        reps = periodic if unit_cells else (1, 1)
        raw = reps != periodic  # unaveraged targets of a pristine row: cached apart
        todo = [f for f in ifaces if not _bank_paths(cache_dir, f, sigma, sigma_target, raw)["json"].exists()]
        if todo:
            d = store.load_density(db, row, grids_dir)
            halves = [
                average_unit_cells(smooth_periodic(d[h], d["cell"], sigma_target), reps) for h in ("half1", "half2")
            ]
            atoms = row.toatoms()
            for f in todo:
                paths = _bank_paths(cache_dir, f, sigma, sigma_target, raw)
                describe = not paths["desc.npy"].exists()  # written atomically: present means complete
                desc, target, meta = _compute_bank(row, atoms, halves, d["cell"], f, sigma, describe)
                meta["sigma_target"] = sigma_target
                meta["unit_cells_averaged"] = list(reps)
                for key, arr in (("desc.npy", desc), ("target.npy", target)):
                    if arr is not None:
                        with atomic_output(paths[key]) as tmp:
                            np.save(tmp, arr)
                with atomic_output(paths["json"]) as tmp:  # last: marks the entry complete
                    tmp.write_text(json.dumps(meta))
                if log:
                    log(
                        f"cached windows of row {row.id} ({f.face} face): {target.shape[1]}x{target.shape[2]} lateral points"
                    )
        for f in ifaces:
            paths = _bank_paths(cache_dir, f, sigma, sigma_target, raw)
            meta = json.loads(paths["json"].read_text())
            entries.append(
                BankEntry(
                    f, np.load(paths["desc.npy"], mmap_mode="r"), np.load(paths["target.npy"], mmap_mode="r"), meta
                )
            )
    return WindowBank(entries, shape)
