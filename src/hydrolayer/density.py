"""The density science of an MD run, in plain numpy: frames in, water density out.

:class:`DensityAccumulator` is what the LAMMPS worker (``simulate.py``) feeds every
``sample_every`` steps of production. Per frame (:meth:`DensityAccumulator.add_frame`):

1. the slab is unwrapped by continuity (it moves far less than half a box between
   samples), its mass-weighted centre is followed, and its drift since the first frame is
   **subtracted** from every position (drift removal at every sample, no restraint);
2. the largest displacement of a slab Ca or C from its first-frame position in that frame
   is tracked (the "dissolving slab" check of the caller);
3. the water O are binned nearest-grid-point on the full periodic cell from its corner (cube
   convention: ``counts[i, j, k]`` belongs to ``(i/nx) a + (j/ny) b + (k/nz) c``), into the
   accumulator of the frame's half of the run (two halves: the noise estimate);
4. each face's water-O height profile above its surface plane (``PROFILE_EDGES``; the plane
   follows the ions of the face's outermost layer in the first frame) is added
   to the current block; :meth:`end_block` closes a block (one checkpoint interval), so a row
   carries the first-layer water over time (the equilibration record).

:meth:`state` / :meth:`from_state` save and restore everything (the worker checkpoints it
beside the LAMMPS restart); :meth:`result` gives the counts, the time-averaged slab and the
profiles; :func:`normalise` turns counts into rho/rho_bulk. Positions are in Å, in the box
frame (LAMMPS positions minus the box's lower corner).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .conventions import FIRST_LAYER, outer_layers

__all__ = [
    "PROFILE_EDGES",
    "BULK_MARGIN",
    "DensityAccumulator",
    "grid_shape",
    "bin_positions",
    "face_profiles",
    "first_layer_counts",
    "relative_drift",
    "normalise",
    "split_half_noise",
]

PROFILE_EDGES = np.round(np.arange(0.0, 12.0 + 1e-9, 0.1), 6)  # Å above each face's cation plane
BULK_MARGIN = 8.0  # Å: water this far from both surface planes counts as bulk
STATE_KEYS = (
    "counts1",
    "counts2",
    "n1",
    "n2",
    "prev",
    "ref",
    "com0",
    "sum_pos",
    "maxdisp",
    "cell",
    "profiles",
    "block_ps",
)


def grid_shape(cell, spacing: float) -> tuple[int, int, int]:
    """Points per axis so that the spacing (Å) along each cell vector (rows of ``cell``, Å)
    is at most ``spacing`` (rounded up to an even number)."""
    lengths = np.linalg.norm(np.asarray(cell, float), axis=1)
    return tuple(int(2 * math.ceil(L / spacing / 2)) for L in lengths)


def bin_positions(counts: np.ndarray, positions: np.ndarray, cell) -> None:
    """Add one count per position (Å) to ``counts`` (nx, ny, nz) at the nearest grid point of
    the periodic cell (cube convention: point (i, j, k) at (i/nx) a + (j/ny) b + (k/nz) c)."""
    shape = np.asarray(counts.shape)
    f = (np.asarray(positions) @ np.linalg.inv(cell)) % 1.0
    idx = np.rint(f * shape).astype(np.int64) % shape
    np.add.at(counts, (idx[:, 0], idx[:, 1], idx[:, 2]), 1)


def face_profiles(
    z_water: np.ndarray, z_top: float, z_bottom: float, lz: float, edges: np.ndarray = PROFILE_EDGES
) -> np.ndarray:
    """Histogram (2, len(edges) - 1) of water-O heights (Å) above the top face's plane and
    below the bottom face's plane, periodic in z with period ``lz`` (Å)."""
    z = np.asarray(z_water, float)
    up = np.histogram((z - z_top) % lz, bins=edges)[0]
    down = np.histogram((z_bottom - z) % lz, bins=edges)[0]
    return np.stack([up, down])


def first_layer_counts(profiles: np.ndarray, edges=PROFILE_EDGES, layer=FIRST_LAYER) -> np.ndarray:
    """Mean number of water O in the first layer (``layer``, Å above the plane) of each
    face, per block: profiles (nblocks, 2, nbins) -> (nblocks, 2)."""
    centres = 0.5 * (np.asarray(edges)[1:] + np.asarray(edges)[:-1])
    sel = (centres > layer[0]) & (centres < layer[1])
    return np.asarray(profiles)[..., sel].sum(-1)


def relative_drift(series, block_ps) -> float:
    """Relative change of a block series over a run from a least-squares line: (fitted last
    - fitted first) / mean. ``block_ps``: each block's length (ps). 0 for fewer than 3 blocks."""
    y = np.asarray(series, float)
    if len(y) < 3 or y.mean() == 0:
        return 0.0
    t = np.cumsum(block_ps) - 0.5 * np.asarray(block_ps, float)
    slope = np.polyfit(t, y, 1)[0]
    return float(slope * (t[-1] - t[0]) / y.mean())


@dataclasses.dataclass
class DensityAccumulator:
    """Water-O counts of one production run in the slab's frame (see the module docstring).

    ``cell``: the (fixed, NVT) box, rows a, b, c in Å; ``shape``: grid points per axis;
    ``weights``: the slab atoms' masses normalised to sum 1 (centre of mass); ``centres``:
    indices into the slab of its Ca and C (the displacement check follows ion centres, not
    carbonate O, which move 2.2 Å when a carbonate turns); ``cations``: indices into the slab
    of its Ca/Mg (the face planes of the profiles).

    The face planes of the profiles follow the outermost cation layer of each face as it was
    in the first frame (``conventions.outer_layers`` then): the mean
    height of those same ions in every frame, so that one ion leaving the surface moves the
    plane by its share only, instead of redefining the layer."""

    cell: np.ndarray
    shape: tuple[int, int, int]
    weights: np.ndarray
    centres: np.ndarray
    cations: np.ndarray
    counts: list = None
    n: list = None
    prev: np.ndarray | None = None
    ref: np.ndarray | None = None
    com0: np.ndarray | None = None
    sum_pos: np.ndarray | None = None
    maxdisp: float = 0.0
    profiles: list = None
    block_ps: list = None

    def __post_init__(self):
        self.cell = np.asarray(self.cell, float)
        self.inv = np.linalg.inv(self.cell)
        self.shape = tuple(int(v) for v in self.shape)
        self.counts = self.counts or [np.zeros(self.shape, np.int32), np.zeros(self.shape, np.int32)]
        self.n = self.n or [0, 0]
        self.profiles = self.profiles or []
        self.block_ps = self.block_ps or []
        self.block = np.zeros((2, len(PROFILE_EDGES) - 1))
        self.block_n = 0
        self._outer = None
        if self.sum_pos is None:
            self.sum_pos = np.zeros((len(self.weights), 3))

    def start(self, slab_positions: np.ndarray) -> None:
        """The slab's positions (Å, box frame) at the start of production."""
        self.prev = np.asarray(slab_positions, float).copy()

    def slab_frame(self, slab_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unwrap the slab by continuity; return its positions in the slab's frame and the
        drift (Å) of its centre of mass since the first frame."""
        d = (np.asarray(slab_positions, float) - self.prev) @ self.inv
        d -= np.round(d)
        self.prev = self.prev + d @ self.cell
        com = self.weights @ self.prev
        if self.com0 is None:
            self.com0 = com.copy()
        drift = com - self.com0
        return self.prev - drift, drift

    def add_frame(self, slab_positions: np.ndarray, water_o: np.ndarray, half: int) -> None:
        """One sample: slab and water-O positions (Å, box frame); ``half``: 0 or 1."""
        frame, drift = self.slab_frame(slab_positions)
        if self.ref is None:
            self.ref = frame.copy()
        moved = np.sqrt(((frame[self.centres] - self.ref[self.centres]) ** 2).sum(axis=1))
        self.maxdisp = max(self.maxdisp, float(moved.max()) if len(moved) else 0.0)
        self.sum_pos += frame
        water = np.asarray(water_o, float) - drift
        bin_positions(self.counts[half], water, self.cell)
        self.n[half] += 1
        if len(self.cations):
            top, bottom = self.outer_ions()
            z_top, z_bottom = float(frame[top, 2].mean()), float(frame[bottom, 2].mean())
            self.block += face_profiles(water[:, 2], z_top, z_bottom, self.cell[2, 2])
            self.block_n += 1

    def outer_ions(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices into the slab of the outermost cation layer of the top and of the bottom
        face in the first frame (``conventions.surface_planes``' rule, applied once)."""
        if self._outer is None:
            z = self.ref[self.cations, 2]
            top, bottom = outer_layers(z)
            self._outer = (self.cations[top], self.cations[bottom])
        return self._outer

    def end_block(self, block_ps: float) -> None:
        """Close the current block of ``block_ps`` ps: its mean profile joins the record."""
        if self.block_n:
            self.profiles.append(self.block / self.block_n)
            self.block_ps.append(float(block_ps))
        self.block, self.block_n = np.zeros_like(self.block), 0

    def _profiles_array(self) -> np.ndarray:
        return np.asarray(self.profiles, float).reshape(-1, 2, len(PROFILE_EDGES) - 1)

    def state(self) -> dict:
        """Everything needed to carry on (the checkpoint; arrays and numbers only). Call it
        at a block boundary: an open block is not saved."""
        return dict(
            counts1=self.counts[0],
            counts2=self.counts[1],
            n1=self.n[0],
            n2=self.n[1],
            prev=self.prev,
            ref=self.ref,
            com0=self.com0,
            sum_pos=self.sum_pos,
            maxdisp=self.maxdisp,
            cell=self.cell,
            profiles=self._profiles_array(),
            block_ps=np.asarray(self.block_ps, float),
        )

    @classmethod
    def from_state(cls, state, weights, centres, cations) -> "DensityAccumulator":
        """The accumulator as :meth:`state` left it (a dict or an open ``.npz``)."""
        get = state.__getitem__
        has = (lambda k: k in state.files) if hasattr(state, "files") else (lambda k: k in state)
        return cls(
            cell=get("cell"),
            shape=get("counts1").shape,
            weights=weights,
            centres=centres,
            cations=cations,
            counts=[np.asarray(get("counts1")).astype(np.int32), np.asarray(get("counts2")).astype(np.int32)],
            n=[int(get("n1")), int(get("n2"))],
            prev=np.asarray(get("prev")),
            ref=np.asarray(get("ref")),
            com0=np.asarray(get("com0")),
            sum_pos=np.asarray(get("sum_pos")),
            maxdisp=float(get("maxdisp")),
            profiles=list(get("profiles")) if has("profiles") else [],
            block_ps=[float(b) for b in get("block_ps")] if has("block_ps") else [],
        )

    def result(self) -> dict:
        """Counts of the two halves, samples, the time-averaged slab (slab frame), the largest
        displacement (Å) and the per-block face profiles."""
        return dict(
            counts1=self.counts[0],
            counts2=self.counts[1],
            n1=self.n[0],
            n2=self.n[1],
            cell=self.cell,
            mean_slab=self.sum_pos / max(1, sum(self.n)),
            maxdisp=self.maxdisp,
            profiles=self._profiles_array(),
            block_ps=np.asarray(self.block_ps, float),
        )


def normalise(counts1, counts2, n, cell, z_top, z_bottom):
    """Half-run counts -> (rho/rho_bulk halves, rho_bulk in Å^-3, gap in Å).

    ``n``: samples per half; ``cell``: Å; ``z_top``/``z_bottom``: the surface planes (Å).
    rho_bulk: the water-O number density in the k-planes of the middle of the gap (farther
    than ``BULK_MARGIN`` Å from both surface planes; at least +-2 Å around the middle)."""
    counts = [np.asarray(counts1, np.float64), np.asarray(counts2, np.float64)]
    shape = counts[0].shape
    vox = abs(np.linalg.det(cell)) / np.prod(shape)
    lz = cell[2, 2]
    gap = (z_bottom + lz) - z_top
    mid = z_top + gap / 2
    half_w = max(2.0, gap / 2 - BULK_MARGIN)
    kz = np.arange(shape[2]) / shape[2] * lz
    dz = (kz - mid + lz / 2) % lz - lz / 2
    sel = np.abs(dz) <= half_w
    nn = [max(1, int(v)) for v in n]
    total = sum(c[:, :, sel].sum() for c in counts)
    rho_bulk = float(total / (sum(n) * vox * sel.sum() * shape[0] * shape[1]))
    halves = [c / (ni * vox * rho_bulk) for c, ni in zip(counts, nn)]
    return halves, rho_bulk, float(gap)


def split_half_noise(half1, half2, cell, sigmas=(0.0, 0.3, 0.5), mask=None) -> dict:
    """The split-half difference mean|h1 - h2| (``conventions.split_half_difference``;
    rho/rho_bulk) after a periodic Gaussian smoothing of width sigma (Å) per axis, for each
    sigma; ``mask`` selects the voxels averaged. The noise floor is half of it."""
    from scipy.ndimage import gaussian_filter

    from .conventions import split_half_difference

    spacing = np.linalg.norm(np.asarray(cell, float), axis=1) / np.array(half1.shape)
    out = {}
    for s in sigmas:
        a, b = half1.astype(np.float64), half2.astype(np.float64)
        if s > 0:
            a = gaussian_filter(a, sigma=s / spacing, mode="wrap")
            b = gaussian_filter(b, sigma=s / spacing, mode="wrap")
        out[float(s)] = split_half_difference(a, b, mask)
    return out
