"""The surface descriptor: Gaussian-smeared C, O and Ca number densities (Å^-3).

Each atom contributes a normalised 3D Gaussian ``(2 pi sigma^2)^(-3/2) exp(-r^2 / 2 sigma^2)``
(integral 1) to the channel of its element; periodic images in x and y are included, and
every atom within 4 sigma of the grid counts, including atoms below it. Water (an O with two
H within 1.25 Å) is recognised and ignored: water O is not carbonate O.

Windows follow ``ARCHITECTURE.md``: 10 x 10 Å laterally at (x0, y0), z from z_s - 5 Å to
z_s + 15 Å, 32 x 32 x 64 points at 0.3125 Å, cube sampling (``values[c, i, j, k]`` at
``(x0 + 0.3125 i, y0 + 0.3125 j, z_s - 5 + 0.3125 k)``), where z_s is the mean height of
the outermost Ca layer of the face. The bottom face is mirrored (z -> -z) first and is then a
window like any other.

Why ``DEFAULT_SIGMA = 0.5`` Å: (1) it is 1.6 grid spacings, so a sampled Gaussian sums to
its integral to better than 1e-9 (the aliasing error ~ exp(-2 pi^2 sigma^2 / h^2)) and an
atom looks the same wherever it sits between grid points, which keeps the descriptor smooth
under lateral shifts; (2) it stays well below the closest same-channel distances in a
carbonate (O-O 2.2 Å, Ca-Ca ~4 Å), so atoms remain resolved; (3) it is of the order of the
thermal displacement plus the water-density smoothing used for the targets (0.3-0.5 Å),
so input and target have comparable resolution. The paper does not state its sigma.
"""

from __future__ import annotations

import itertools

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from threadpoolctl import threadpool_limits

from .conventions import SPACING, WINDOW_SHAPE, WINDOW_SIZE, Z_BELOW, surface_planes
from .grids import Grid, GridSpec
from .structures import water_mask
from .util import InputError

__all__ = [
    "CHANNELS",
    "DEFAULT_SIGMA",
    "SPACING",
    "WINDOW_SHAPE",
    "WINDOW_SIZE",
    "Z_BELOW",
    "surface_plane",
    "mirror",
    "window_spec",
    "cell_spec",
    "describe_window",
    "describe_windows",
    "describe_cell",
    "describe",
    "plot_descriptor",
]

CHANNELS = ("C", "O", "Ca")
DEFAULT_SIGMA = 0.5  # Å; see the module docstring for why
CUTOFF_SIGMAS = 4.0
BLOCK_MIN_POINTS = 4 * 32 * 32  # lateral grid points above which a grid is smeared in blocks (_smear_blocks)


def surface_plane(atoms: Atoms, face: str = "top") -> float:
    """z_s of ``face`` (Å): the mean height of its outermost Ca layer
    (``conventions.surface_planes``), in the frame of ``atoms`` (not mirrored)."""
    top, bottom = surface_planes(atoms)
    if face == "top":
        return top
    if face == "bottom":
        return bottom
    raise ValueError(f"face must be 'top' or 'bottom', got {face!r}")


def mirror(atoms: Atoms) -> Atoms:
    """The slab reflected through z = 0 (z -> -z), so that its bottom face faces +z.
    A reflection, valid for an achiral force field. Recorded defect sites and surface
    planes in ``info`` are mirrored too."""
    from .structures import defect_sites, set_defect_sites

    out = atoms.copy()
    out.positions[:, 2] *= -1
    info = dict(atoms.info)
    if "z_top" in info and "z_bottom" in info:
        info["z_top"], info["z_bottom"] = -float(atoms.info["z_bottom"]), -float(atoms.info["z_top"])
    out.info = info
    if "defect_sites" in info:
        set_defect_sites(out, [s.mirrored() for s in defect_sites(atoms)])
    return out


def _faced(atoms: Atoms, face: str) -> Atoms:
    if face == "top":
        return atoms
    if face == "bottom":
        return mirror(atoms)
    raise ValueError(f"face must be 'top' or 'bottom', got {face!r}")


def window_spec(x0: float, y0: float, z_s: float) -> GridSpec:
    """The GridSpec of a window with lateral corner (x0, y0) over a surface plane z_s."""
    return GridSpec(np.diag(WINDOW_SIZE), WINDOW_SHAPE, (x0, y0, z_s - Z_BELOW))


def cell_spec(atoms: Atoms, z_s: float, spacing: float = SPACING) -> GridSpec:
    """A grid over the whole lateral cell of ``atoms`` (about ``spacing`` Å between points,
    commensurate with the cell) and the window's z range."""
    cell = atoms.cell[:]
    nx = max(1, int(round(np.linalg.norm(cell[0]) / spacing)))
    ny = max(1, int(round(np.linalg.norm(cell[1]) / spacing)))
    lateral = np.array([cell[0], cell[1], [0.0, 0.0, WINDOW_SIZE[2]]])
    return GridSpec(lateral, (nx, ny, WINDOW_SHAPE[2]), (0.0, 0.0, z_s - Z_BELOW))


def _channel_positions(atoms: Atoms, where: str = "structure") -> dict[str, np.ndarray]:
    num = atoms.numbers
    solid = ~water_mask(atoms)
    extra = sorted({chemical_symbols[z] for z in np.unique(num[solid])} - set(CHANNELS))
    if extra:
        raise InputError(
            f"{where}: element(s) {', '.join(extra)} have no descriptor channel (channels: {', '.join(CHANNELS)})"
        )
    return {c: atoms.positions[solid & (num == atomic_numbers[c])] for c in CHANNELS}


def _images(pos: np.ndarray, cell: np.ndarray, lo: np.ndarray, hi: np.ndarray, margin: float) -> np.ndarray:
    """Periodic images (in a and b) of ``pos`` inside the box [lo - margin, hi + margin].
    Columns beyond the first three (labels) are carried along unchanged."""
    a, b = cell[0, :2], cell[1, :2]
    inv = np.linalg.inv(np.array([a, b]))
    if len(pos) == 0:
        return np.zeros((0, pos.shape[1]))
    corners = np.array([[x, y] for x in (lo[0] - margin, hi[0] + margin) for y in (lo[1] - margin, hi[1] + margin)])
    f = pos[:, :2] @ inv  # fractional lateral coordinates of the atoms
    fc = corners @ inv
    mmin = np.floor(fc.min(axis=0) - f.max(axis=0)).astype(int)
    mmax = np.ceil(fc.max(axis=0) - f.min(axis=0)).astype(int)
    shifts = np.array(
        [m * a + n * b for m, n in itertools.product(range(mmin[0], mmax[0] + 1), range(mmin[1], mmax[1] + 1))]
    )
    q = np.repeat(pos[None], len(shifts), axis=0)
    q[:, :, :2] += shifts[:, None, :]
    q = q.reshape(-1, pos.shape[1])
    return q[np.all((q[:, :3] >= lo - margin) & (q[:, :3] <= hi + margin), axis=1)]


def _labelled_images(pos, chan, cell, lo, hi, margin) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_images` of ``pos`` with each image's channel index carried along."""
    idx = np.arange(len(pos), dtype=float)[:, None]
    q = _images(np.hstack([pos, idx]), cell, lo, hi, margin)
    return q[:, :3], chan[q[:, 3].astype(int)]


def _bounds(spec: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper corners of the bounding box of the grid points."""
    va, vb = spec.voxel_vectors[0, :2], spec.voxel_vectors[1, :2]
    nx, ny, nz = spec.shape
    o = spec.origin
    corners = np.array([o[:2] + i * va * (nx - 1) + j * vb * (ny - 1) for i in (0, 1) for j in (0, 1)])
    dz = spec.voxel_vectors[2, 2]
    return np.array([*corners.min(axis=0), o[2]]), np.array([*corners.max(axis=0), o[2] + dz * (nz - 1)])


def _smear(
    pos: np.ndarray, chan: np.ndarray, nchan: int, spec: GridSpec, sigma: float, cell: np.ndarray, imaged: bool = False
) -> np.ndarray:
    """Channel densities ``(nchan, nx, ny, nz)``: the sum of normalised Gaussians of all
    periodic images of the atoms at ``pos`` (channel index ``chan``) on ``spec``, whose a
    and b vectors lie in the xy plane and whose c vector is along z. With ``imaged``,
    ``pos`` already holds every image that can reach the grid."""
    va, vb = spec.voxel_vectors[0, :2], spec.voxel_vectors[1, :2]
    nx, ny, nz = spec.shape
    dz = spec.voxel_vectors[2, 2]
    o = spec.origin
    lo, hi = _bounds(spec)
    margin = CUTOFF_SIGMAS * sigma
    if imaged:
        keep = np.all((pos >= lo - margin) & (pos <= hi + margin), axis=1)
        p, ch = pos[keep], chan[keep]
    else:
        p, ch = _labelled_images(pos, chan, cell, lo, hi, margin)
    if len(p) == 0:
        return np.zeros((nchan, *spec.shape), dtype=np.float32)
    inv2s2 = 0.5 / sigma**2
    norm = (2 * np.pi * sigma**2) ** -1.5
    if nx * ny > BLOCK_MIN_POINTS:
        return _smear_blocks(p, ch, nchan, spec, sigma, cell)
    orthogonal = abs(va[1]) < 1e-12 and abs(vb[0]) < 1e-12
    z = o[2] + dz * np.arange(nz)
    gz = np.exp(-((z[None, :] - p[:, 2:3]) ** 2) * inv2s2) * norm  # (na, nz)
    if orthogonal:  # separable in x and y
        x = o[0] + va[0] * np.arange(nx)
        y = o[1] + vb[1] * np.arange(ny)
        gx = np.exp(-((x[None, :] - p[:, 0:1]) ** 2) * inv2s2)
        gy = np.exp(-((y[None, :] - p[:, 1:2]) ** 2) * inv2s2)
        gxy = (gx[:, :, None] * gy[:, None, :]).reshape(len(p), nx * ny)
    else:
        ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
        xy = (o[:2] + ii[..., None] * va + jj[..., None] * vb).reshape(-1, 2)
        gxy = np.empty((len(p), nx * ny))
        for s in range(0, len(p), 256):  # chunks keep memory bounded on large cells
            d2 = ((xy[None, :, :] - p[s : s + 256, None, :2]) ** 2).sum(-1)
            gxy[s : s + 256] = np.exp(-d2 * inv2s2)
    gxy, gz = gxy.astype(np.float32), gz.astype(np.float32)  # float32: faster, ample precision
    out = np.zeros((nchan, nx * ny, nz), dtype=np.float32)
    for c in range(nchan):
        m = ch == c
        if m.any():
            out[c] = gxy[m].T @ gz[m]
    return out.reshape(nchan, nx, ny, nz)


def _smear_blocks(
    p: np.ndarray,
    ch: np.ndarray,
    nchan: int,
    spec: GridSpec,
    sigma: float,
    cell: np.ndarray,
    block: int = 32,
    workers: int = 2,
) -> np.ndarray:
    """:func:`_smear` of a large grid in lateral blocks of ``block`` x ``block`` points, each
    with only the atoms within the cutoff of the block (as every window is made), on
    ``workers`` threads (the callers, :func:`describe` and :func:`describe_windows`, hold BLAS
    at one thread). ``p`` already holds every image that can reach the grid. Same
    numbers as one dense product except the far tails (beyond ``CUTOFF_SIGMAS`` sigma of a
    block, below exp(-8) = 3e-4 of an atom's peak); faster on a whole surface cell
    where most atoms are far from most grid points."""
    from concurrent.futures import ThreadPoolExecutor

    nx, ny, nz = spec.shape
    va, vb = spec.voxel_vectors[0], spec.voxel_vectors[1]
    out = np.empty((nchan, nx, ny, nz), dtype=np.float32)
    jobs = [(i0, j0) for i0 in range(0, nx, block) for j0 in range(0, ny, block)]

    def work(part):
        for i0, j0 in part:
            bx, by = min(block, nx - i0), min(block, ny - j0)
            sub = GridSpec(np.array([va * bx, vb * by, spec.cell[2]]), (bx, by, nz), spec.origin + i0 * va + j0 * vb)
            out[:, i0 : i0 + bx, j0 : j0 + by] = _smear(p, ch, nchan, sub, sigma, cell, imaged=True)

    workers = max(1, min(int(workers), len(jobs)))
    if workers == 1:
        work(jobs)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, [jobs[k::workers] for k in range(workers)]))
    return out


def _stack(chans: dict) -> tuple[np.ndarray, np.ndarray]:
    pos = np.concatenate([chans[c] for c in CHANNELS])
    ch = np.concatenate([np.full(len(chans[c]), i) for i, c in enumerate(CHANNELS)])
    return pos, ch


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return sigma


def describe(atoms: Atoms, spec: GridSpec, sigma: float = DEFAULT_SIGMA, where: str = "structure") -> Grid:
    """The three-channel descriptor of ``atoms`` on any ``spec`` (a, b in the xy plane,
    c along z), in the frame of ``atoms``."""
    sigma = _check_sigma(sigma)
    pos, ch = _stack(_channel_positions(atoms, where))
    lo, hi = _bounds(spec)
    near = (pos[:, 2] >= lo[2] - CUTOFF_SIGMAS * sigma) & (pos[:, 2] <= hi[2] + CUTOFF_SIGMAS * sigma)
    # window-sized products (a large grid is done in window-sized blocks): BLAS threads only add overhead
    with threadpool_limits(1, user_api="blas"):
        values = _smear(pos[near], ch[near], len(CHANNELS), spec, sigma, atoms.cell[:]).astype(np.float32)
    return Grid(spec, values, CHANNELS, units="A^-3", sigma=sigma)


def describe_window(atoms: Atoms, x0: float, y0: float, sigma: float = DEFAULT_SIGMA, face: str = "top") -> Grid:
    """One 10 x 10 x 20 Å window with lateral corner (x0, y0) (Å, in the frame of the face:
    for ``face="bottom"`` the slab is mirrored first, lateral coordinates unchanged)."""
    at = _faced(atoms, face)
    z_s = surface_plane(at, "top")
    grid = describe(at, window_spec(x0, y0, z_s), sigma)
    grid.meta.update(face=face, z_s=z_s, x0=float(x0), y0=float(y0))
    grid.atoms = at
    return grid


def describe_windows(
    atoms: Atoms, offsets, sigma: float = DEFAULT_SIGMA, face: str = "top", workers: int = 1
) -> np.ndarray:
    """Many windows at once: ``offsets`` is (N, 2) lateral corners (Å); returns
    ``(N, 3, 32, 32, 64)`` float32 in Å^-3. The slab is prepared once; windows are spread
    over ``workers`` threads (NumPy releases the GIL in the heavy parts)."""
    sigma = _check_sigma(sigma)
    at = _faced(atoms, face)
    z_s = surface_plane(at, "top")
    chans = _channel_positions(at)
    # only atoms that can reach the window's z range matter
    zlo, zhi = z_s - Z_BELOW - CUTOFF_SIGMAS * sigma, z_s - Z_BELOW + WINDOW_SIZE[2] + CUTOFF_SIGMAS * sigma
    chans = {c: p[(p[:, 2] >= zlo) & (p[:, 2] <= zhi)] for c, p in chans.items()}
    cell = at.cell[:]
    offsets = np.asarray(offsets, dtype=float).reshape(-1, 2)
    # windows are periodic in the lateral cell: wrap the corners into it, then every image
    # that can reach any window is found once
    lat = cell[:2, :2]
    frac = offsets @ np.linalg.inv(lat)
    wrapped = (frac - np.floor(frac)) @ lat
    spec0 = window_spec(0.0, 0.0, z_s)
    lo0, hi0 = _bounds(spec0)
    corners = np.array([[x, y] for x in (0, 1) for y in (0, 1)]) @ lat
    lo = np.array([*(corners.min(axis=0) + lo0[:2]), lo0[2]])
    hi = np.array([*(corners.max(axis=0) + hi0[:2]), hi0[2]])
    ipos, ich = _labelled_images(*_stack(chans), cell, lo, hi, CUTOFF_SIGMAS * sigma)
    out = np.empty((len(offsets), len(CHANNELS), *WINDOW_SHAPE), dtype=np.float32)
    from concurrent.futures import ThreadPoolExecutor

    def work(rows):
        for n in rows:
            x0, y0 = wrapped[n]
            out[n] = _smear(ipos, ich, len(CHANNELS), window_spec(x0, y0, z_s), sigma, cell, imaged=True)

    workers = max(1, min(int(workers), len(offsets)))
    # one window is a small matrix product: BLAS threads only add overhead (10x here);
    # NumPy releases the GIL in exp and matmul, so windows run in parallel on threads
    with threadpool_limits(1, user_api="blas"):
        if workers == 1:
            work(range(len(offsets)))
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, np.array_split(np.arange(len(offsets)), workers)))
    return out


def describe_cell(atoms: Atoms, sigma: float = DEFAULT_SIGMA, face: str = "top", spacing: float = SPACING) -> Grid:
    """The descriptor over the whole lateral cell (for whole-surface prediction), same z
    range as a window; grid from the cell corner, about ``spacing`` Å between points."""
    at = _faced(atoms, face)
    z_s = surface_plane(at, "top")
    grid = describe(at, cell_spec(at, z_s, spacing), sigma)
    grid.meta.update(face=face, z_s=z_s)
    grid.atoms = at
    return grid


def plot_descriptor(grid: Grid, path) -> None:
    """A PNG: for each channel, the maximum over y in the xz plane, and a top view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .util import atomic_output

    spec = grid.spec
    x = spec.origin[0] + spec.axis(0) * np.linalg.norm(spec.cell[0])
    z = spec.z_values() - grid.meta.get("z_s", 0.0)
    fig, axes = plt.subplots(2, len(grid.channels), figsize=(4 * len(grid.channels), 6.5), squeeze=False)
    for c, name in enumerate(grid.channels):
        v = grid.values[c]
        ax = axes[0, c]
        im = ax.pcolormesh(x, z, v.max(axis=1).T, shading="auto", cmap="viridis")
        ax.set(title=f"{name}: max over y", xlabel="x (Å)", ylabel="z - z_s (Å)")
        fig.colorbar(im, ax=ax, label=f"density ({grid.units.replace('A^-3', 'Å⁻³')})")
        ax = axes[1, c]
        y = spec.origin[1] + spec.axis(1) * np.linalg.norm(spec.cell[1])
        im = ax.pcolormesh(x, y, v.max(axis=2).T, shading="auto", cmap="viridis")
        ax.set(title=f"{name}: max over z (top view)", xlabel="x (Å)", ylabel="y (Å)", aspect="equal")
        fig.colorbar(im, ax=ax, label=f"density ({grid.units.replace('A^-3', 'Å⁻³')})")
    fig.suptitle(f"descriptor, sigma = {grid.sigma} Å")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
