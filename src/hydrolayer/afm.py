"""AFM force maps from a water density: the solvent-tip approximation (STA).

The tip apex is treated as one water molecule. Its potential of mean force and the force
on it follow from the water density alone (Watkins & Reischl, J. Chem. Phys. 138, 154703
(2013); Amano et al., J. Chem. Phys. 139, 224710 (2013)):

    W(r) = -k_B T ln( max(rho(r), floor) / rho_bulk )           (eV)
    F(r) = -grad W = k_B T grad ln max(rho, floor)                (eV/Å; 1 eV/Å = 1.602 nN)
    F_z  =  k_B T d/dz ln max(rho, floor)

Conventions fixed here:

* ``rho`` is water density as rho/rho_bulk (what ``hydrolayer predict`` writes). A grid
  whose units are ``"A^-3"`` (an MD number density) is divided by ``conventions.RHO_BULK`` first;
  only the floor depends on rho_bulk, the force does not (a constant drops out of grad).
* The floor: rho is clipped at ``floor * rho_bulk`` (default ``DEFAULT_FLOOR`` = 1e-3,
  i.e. W <= 6.9 k_B T) so that W stays finite inside the solid; where rho is clipped W is
  flat and the force is 0. The clip edge is where the hard repulsive wall appears.
* Sign: z points out of the surface into the water, so F_z > 0 pushes the tip away from
  the surface (repulsive) and F_z < 0 pulls it towards the surface (attractive). This is
  the top face; for a grid of a whole MD cell the bottom face's water has the opposite
  sense (predict that face with ``hydrolayer predict --face bottom``, which mirrors it).
* Gradients: central differences, periodic along a and b (the lateral cell), second-order
  one-sided at the bottom and top of the grid. Any lateral cell works (the gradient is
  taken along the grid axes and transformed with the inverse voxel vectors); heights,
  images and curves need c along z and a, b in the xy plane (every hydrolayer grid is so).
* Heights are measured from the surface plane z_s: the mean height of the outermost Ca
  layer (Ca atoms within 1 Å of the topmost one) when the density file carries the atoms,
  else ``grid.meta["surface_z"]``, else the hydrolayer grid convention (grids start 5 Å
  below the surface plane), with a warning; ``surface_z=`` overrides all of these.
* A finite tip (``tip_radius=R``): the force field is convolved with a 3D Gaussian of
  standard deviation R (Å), periodic laterally (exact for any lateral cell, done by FFT),
  clamped at the z ends. This is the usual crude stand-in for a blunt, hydrated tip
  (Miyazawa et al., Nanoscale 2016, 2020); R = 0 or None means a point-like tip.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .conventions import (
    CATIONS,
    KB,
    NN_PER_EV_PER_A,
    RHO_BULK,
    Z_BELOW,
    grid_peaks,
    heights_above,
    outer_layers,
    surface_planes,
)
from .grids import Grid, GridSpec, bilinear_periodic
from .util import InputError, atomic_output

__all__ = [
    "DEFAULT_FLOOR",
    "DEFAULT_TEMPERATURE",
    "free_energy",
    "sta_force",
    "surface_z_of",
    "surface_sites",
    "constant_height",
    "force_distance",
    "hydration_peaks",
    "afm_maps",
]

DEFAULT_FLOOR = 1e-3  # rho is clipped at this fraction of rho_bulk
DEFAULT_TEMPERATURE = 300.0  # K


# --------------------------------------------------------------------------- basics
def _check_geometry(spec: GridSpec, what: str = "grid") -> None:
    cell = spec.cell
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6 or abs(cell[2, 0]) > 1e-6 or abs(cell[2, 1]) > 1e-6:
        raise InputError(
            f"{what}: AFM maps need the grid's c axis along z and a, b in the xy plane "
            f"(got cell rows {np.round(cell, 3).tolist()})"
        )
    if cell[2, 2] <= 0:
        raise InputError(f"{what}: the grid's c axis must point along +z (out of the surface)")


def _normalised_density(grid: Grid, rho_bulk: float | None, what: str) -> tuple[np.ndarray, float]:
    """The density channel as rho/rho_bulk, and the rho_bulk that was used (in grid units)."""
    rho = np.asarray(grid.values[0], dtype=float)
    if rho_bulk is None:
        units = (grid.units or "").replace("Å", "A").strip()
        if units in ("A^-3", "A-3", "1/A^3"):
            rho_bulk = RHO_BULK
        else:
            rho_bulk = 1.0
            if not units and np.nanmax(rho) < 0.5:
                warnings.warn(
                    f"{what}: no units in the file and the density never exceeds 0.5; if it is a "
                    f"number density in Å^-3 pass rho_bulk={RHO_BULK:.5f} (--rho-bulk), "
                    "otherwise the floor is applied at the wrong level",
                    stacklevel=3,
                )
    if not rho_bulk > 0:
        raise InputError(f"{what}: rho_bulk must be positive, got {rho_bulk}")
    if not np.all(np.isfinite(rho)):
        raise InputError(f"{what}: the density contains NaN or infinite values")
    return rho / rho_bulk, float(rho_bulk)


def free_energy(rho: np.ndarray, temperature: float = DEFAULT_TEMPERATURE, floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """W = -k_B T ln(max(rho, floor)) in eV, for ``rho`` already in units of rho_bulk."""
    _check_params(temperature, floor)
    return -KB * temperature * np.log(np.maximum(rho, floor))


def _check_params(temperature, floor):
    if not temperature > 0:
        raise InputError(f"temperature must be positive (K), got {temperature}")
    if not 0 < floor < 1:
        raise InputError(f"floor must be between 0 and 1 (a fraction of rho_bulk), got {floor}")


def _index_gradient(f: np.ndarray) -> np.ndarray:
    """Derivatives along the three grid axes per index step: periodic in i, j; not in k."""
    di = 0.5 * (np.roll(f, -1, axis=0) - np.roll(f, 1, axis=0))
    dj = 0.5 * (np.roll(f, -1, axis=1) - np.roll(f, 1, axis=1))
    dk = np.gradient(f, axis=2, edge_order=2) if f.shape[2] >= 3 else np.zeros_like(f)
    return np.stack([di, dj, dk])


def _cartesian_gradient(f: np.ndarray, spec: GridSpec) -> np.ndarray:
    """grad f in Cartesian components (per Å), shape (3, nx, ny, nz), any cell."""
    d = _index_gradient(f)
    # f(origin + i va + j vb + k vc): df/di = va . grad f  ->  grad f = V^-1 (df/di, df/dj, df/dk)
    vinv = np.linalg.inv(spec.voxel_vectors)
    return np.einsum("xy,y...->x...", vinv, d)


def _blur(field: np.ndarray, spec: GridSpec, radius: float) -> np.ndarray:
    """3D Gaussian blur (std ``radius`` Å) of each channel: periodic FFT laterally, clamped in z."""
    from scipy.ndimage import gaussian_filter1d

    nx, ny, nz = spec.shape
    lat = spec.cell[:2, :2]
    recip = 2 * np.pi * np.linalg.inv(lat).T  # rows: lateral reciprocal vectors (1/Å)
    m = np.fft.fftfreq(nx) * nx
    n = np.fft.fftfreq(ny) * ny
    kvec = m[:, None, None] * recip[0] + n[None, :, None] * recip[1]
    kernel = np.exp(-0.5 * radius**2 * np.sum(kvec**2, axis=-1))[..., None]  # (nx, ny, 1)
    out = np.fft.ifft2(np.fft.fft2(field, axes=(-3, -2)) * kernel, axes=(-3, -2)).real
    dz = spec.cell[2, 2] / nz
    return gaussian_filter1d(out, radius / dz, axis=-1, mode="nearest")


def sta_force(
    grid: Grid,
    temperature: float = DEFAULT_TEMPERATURE,
    floor: float = DEFAULT_FLOOR,
    tip_radius: float | None = None,
    rho_bulk: float | None = None,
    units: str = "eV/A",
) -> Grid:
    """The solvent-tip force field of a water-density grid.

    Returns a Grid with channels ``("Fx", "Fy", "Fz")`` in ``units`` (``"eV/A"`` or
    ``"nN"``) on the same points as ``grid``; ``meta`` records temperature, floor,
    tip radius and rho_bulk. See the module docstring for the conventions.
    """
    _check_params(temperature, floor)
    what = str(grid.meta.get("source", "density grid")) if isinstance(grid.meta, dict) else "density grid"
    rho, rho_bulk = _normalised_density(grid, rho_bulk, what)
    if units not in ("eV/A", "nN"):
        raise ValueError(f"units must be 'eV/A' or 'nN', got {units!r}")
    if tip_radius is not None and tip_radius < 0:
        raise InputError(f"{what}: tip radius must be >= 0 Å, got {tip_radius}")
    w = free_energy(rho, temperature, floor)
    force = -_cartesian_gradient(w, grid.spec)
    if tip_radius:
        force = _blur(force, grid.spec, float(tip_radius))
    if units == "nN":
        force = force * NN_PER_EV_PER_A
    meta = {
        "method": "solvent-tip approximation: W = -kT ln(max(rho, floor)/rho_bulk), F = -grad W",
        "temperature_K": float(temperature),
        "floor_rho_bulk": float(floor),
        "rho_bulk": rho_bulk,
        "tip_radius_A": float(tip_radius or 0.0),
        "units": units,
        "sign": "F_z > 0 repulsive (pushes the tip away from the surface)",
    }
    if isinstance(grid.meta, dict) and "surface_z" in grid.meta:
        meta["surface_z"] = grid.meta["surface_z"]
    return Grid(grid.spec, force.astype(np.float32), ("Fx", "Fy", "Fz"), units=units, meta=meta, atoms=grid.atoms)


# --------------------------------------------------------------------------- geometry
def _surface_plane_atoms(atoms) -> float | None:
    """z_s of the top face (``conventions.surface_planes``); ``None`` without atoms or cations."""
    if atoms is None or len(atoms) == 0:
        return None
    try:
        return float(surface_planes(atoms)[0])
    except ValueError:  # no cations
        return None


def surface_z_of(grid: Grid, surface_z: float | None = None, what: str = "density grid") -> tuple[float, str]:
    """The surface plane z_s (Å) for ``grid`` and a phrase saying where it came from."""
    if surface_z is not None:
        return float(surface_z), "given"
    zs = _surface_plane_atoms(grid.atoms)
    if zs is not None:
        return zs, "mean z of the top Ca layer of the atoms in the file"
    if isinstance(grid.meta, dict) and grid.meta.get("surface_z") is not None:
        return float(grid.meta["surface_z"]), "grid metadata"
    zs = float(grid.spec.origin[2] + Z_BELOW)
    warnings.warn(
        f"{what}: no Ca atoms in the file, so the surface plane is taken as the grid bottom + "
        f"{Z_BELOW:g} Å (z = {zs:.2f} Å, the hydrolayer grid convention); pass surface_z "
        "(--surface-z) if that is wrong",
        stacklevel=2,
    )
    return zs, f"grid bottom + {Z_BELOW:g} Å (assumed)"


def _interp_z(values: np.ndarray, spec: GridSpec, z: float, what: str) -> np.ndarray:
    """Linear interpolation of a (nx, ny, nz) field at height z (Å)."""
    zs = spec.z_values()
    if not zs[0] - 1e-9 <= z <= zs[-1] + 1e-9:
        raise InputError(f"{what}: height z = {z:.2f} Å is outside the grid ({zs[0]:.2f} to {zs[-1]:.2f} Å)")
    t = (z - zs[0]) / (zs[1] - zs[0]) if len(zs) > 1 else 0.0
    k = min(int(np.floor(t)), len(zs) - 2) if len(zs) > 1 else 0
    if len(zs) == 1:
        return values[:, :, 0].copy()
    w = t - k
    return (1 - w) * values[:, :, k] + w * values[:, :, k + 1]


def hydration_peaks(grid: Grid, surface_z: float, n: int = 3, rho_bulk: float | None = None) -> list[float]:
    """Heights (Å above ``surface_z``) of up to ``n`` hydration-layer maxima of the laterally
    averaged density (``conventions.hydration_peaks``)."""
    rho, _ = _normalised_density(grid, rho_bulk, "density grid")
    return grid_peaks(rho, grid.spec, surface_z, n=n)


def _lateral_frac(xy: np.ndarray, spec: GridSpec) -> np.ndarray:
    """Fractional lateral coordinates (wrapped to [0, 1)) of Cartesian xy points."""
    xy = np.atleast_2d(np.asarray(xy, float))[:, :2] - spec.origin[:2]
    return np.mod(xy @ np.linalg.inv(spec.cell[:2, :2]), 1.0)


def surface_sites(grid: Grid, surface_z: float, max_sites: int | None = None, rho_bulk: float | None = None):
    """Lateral sites for force-distance curves: ``(xy (n, 2) Å, labels, kind)``.

    Each cation of the top face's outermost layer (the layer that makes z_s,
    ``conventions.outer_layers``; all of them unless ``max_sites``) if the grid carries atoms;
    else the lateral maxima of the density in the first hydration layer (``kind="density
    maxima"``, at most ``max_sites or 12``, highest first).
    """
    atoms = grid.atoms
    if atoms is not None and len(atoms) and set(CATIONS) & set(atoms.get_chemical_symbols()):
        sym = atoms.get_chemical_symbols()
        idx = np.array([i for i, s in enumerate(sym) if s in CATIONS])
        top = [int(i) for i in idx[outer_layers(atoms.positions[idx, 2])[0]]]
        top = top[:max_sites] if max_sites else top
        return atoms.positions[top, :2].copy(), [f"{sym[i]}{i}" for i in top], "surface Ca"
    from scipy.ndimage import maximum_filter

    rho, _ = _normalised_density(grid, rho_bulk, "density grid")
    peaks = hydration_peaks(grid, surface_z, n=1, rho_bulk=rho_bulk)
    h0 = peaks[0] if peaks else 3.0
    plane = _interp_z(rho, grid.spec, float(np.clip(surface_z + h0, *grid.spec.z_values()[[0, -1]])), "density grid")
    size = max(3, int(round(1.5 / max(grid.spec.spacing[0], 1e-9))) | 1)
    is_max = (plane == maximum_filter(plane, size=size, mode="wrap")) & (plane > plane.mean())
    ii, jj = np.nonzero(is_max)
    order = np.argsort(-plane[ii, jj])[: max_sites or 12]
    ii, jj = ii[order], jj[order]
    frac = np.stack([ii / grid.spec.shape[0], jj / grid.spec.shape[1]], axis=1)
    xy = grid.spec.origin[:2] + frac @ grid.spec.cell[:2, :2]
    return xy, [f"max{n}" for n in range(len(xy))], f"density maxima at h = {h0:.2f} Å"


def constant_height(fz: np.ndarray, spec: GridSpec, surface_z: float, heights: Sequence[float]) -> np.ndarray:
    """F_z images (n_heights, nx, ny) at ``heights`` Å above ``surface_z`` (linear in z)."""
    return np.stack([_interp_z(fz, spec, surface_z + h, f"height {h:g} Å") for h in heights])


def force_distance(fz: np.ndarray, spec: GridSpec, xy: np.ndarray, surface_z: float) -> tuple[np.ndarray, np.ndarray]:
    """F_z(z) above lateral points ``xy`` (n, 2): returns ``(h, curves (n, nz))``, h in Å above z_s."""
    frac = _lateral_frac(xy, spec)
    curves = bilinear_periodic(fz, frac)  # (n, nz)
    return heights_above(spec, surface_z), np.atleast_2d(curves)


# --------------------------------------------------------------------------- pictures
def _save_figure(fig, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    return path


def _plot_image(img, spec: GridSpec, title: str, path: Path, label: str, marks=None) -> Path:
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    nx, ny = spec.shape[:2]
    # cell-corner mesh in Cartesian coordinates (handles skewed lateral cells)
    fi = (np.arange(nx + 1) - 0.5) / nx
    fj = (np.arange(ny + 1) - 0.5) / ny
    F = np.stack(np.meshgrid(fi, fj, indexing="ij"), axis=-1)
    XY = spec.origin[:2] + F @ spec.cell[:2, :2]
    vmax = float(np.max(np.abs(img))) or 1e-12
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(
        XY[..., 0], XY[..., 1], img, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -vmax, vmax), shading="flat"
    )
    if marks is not None and len(marks):
        ax.plot(marks[:, 0], marks[:, 1], "o", mfc="none", mec="k", ms=6, label="surface Ca")
        ax.legend(loc="upper right", fontsize=8, framealpha=0.7)
    ax.set_aspect("equal")
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(mesh, ax=ax, label=label)
    return _save_figure(fig, path)


def _plot_curves(h, curves, labels, title, path: Path, units: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for c, lab in zip(curves, labels):
        ax.plot(h, c, lw=1.2, label=lab)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xlabel("height above the surface Ca plane (Å)")
    ax.set_ylabel(f"F_z ({units}); > 0 repulsive")
    ax.set_title(title, fontsize=10)
    if len(labels) <= 12:
        ax.legend(fontsize=7, ncol=2)
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- the job
def afm_maps(
    density: Grid | str | Path,
    out_dir: str | Path,
    heights: Sequence[float] | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    tip_radius: float | None = None,
    floor: float = DEFAULT_FLOOR,
    surface_z: float | None = None,
    rho_bulk: float | None = None,
) -> list[Path]:
    """Everything ``hydrolayer afm`` writes, into ``out_dir`` (created if missing):

    * ``fz.cube``, ``fz.npz``: the 3D F_z map (nN), on the density's grid, with the atoms;
    * ``fz_h<h>A.png`` per height and ``fz_heights.npz`` (keys ``heights_A``, ``z_A``,
      ``fz_nN``, ``x_A``, ``y_A``, ``surface_z_A``): constant-height F_z images;
    * ``force_curves.png`` and ``force_curves.npz`` (keys ``h_A``, ``fz_nN``, ``xy_A``,
      ``labels``): F_z versus height above each surface site.

    ``heights`` default to the peaks of the laterally averaged density (the hydration
    layers; up to three). Returns the written paths.
    """
    from .grids import read_grid

    source = str(density) if not isinstance(density, Grid) else "density grid"
    grid = read_grid(Path(density)) if not isinstance(density, Grid) else density
    _check_geometry(grid.spec, source)
    if grid.spec.shape[2] < 3:
        raise InputError(f"{source}: need at least 3 points along z, got {grid.spec.shape[2]}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    zs, zs_from = surface_z_of(grid, surface_z, source)
    force = sta_force(grid, temperature, floor, tip_radius, rho_bulk, units="nN")
    fz = force.channel("Fz")
    meta = dict(force.meta, surface_z=zs, surface_z_from=zs_from, source=source)
    fz_grid = Grid(grid.spec, fz[None], ("Fz",), units="nN", meta=meta, atoms=grid.atoms)
    written = [fz_grid.write_cube(out / "fz.cube"), fz_grid.write_npz(out / "fz.npz")]
    if heights is None:
        heights = hydration_peaks(grid, zs, n=3, rho_bulk=rho_bulk) or [3.0]
    sites_xy, labels, kind = surface_sites(grid, zs, rho_bulk=rho_bulk)
    tip = f", tip radius {tip_radius:g} Å" if tip_radius else ""
    notes = dict(meta=meta, temperature=temperature, tip=tip)
    written += _write_images(
        fz, grid.spec, zs, [float(h) for h in heights], sites_xy if kind == "surface Ca" else None, out, notes
    )
    written += _write_curves(fz, grid.spec, zs, (sites_xy, labels, kind), out, notes)
    return written


def _write_images(fz, spec: GridSpec, zs: float, heights: list[float], marks, out: Path, notes: dict) -> list[Path]:
    """Constant-height F_z images (nN) at ``heights`` Å above the plane ``zs``: a PNG each
    and ``fz_heights.npz``."""
    imgs = constant_height(fz, spec, zs, heights)
    written = []
    for h, img in zip(heights, imgs):
        title = (
            f"STA F_z at {h:.2f} Å above the surface Ca plane (z = {zs + h:.2f} Å)\n"
            f"T = {notes['temperature']:g} K{notes['tip']}"
        )
        written.append(_plot_image(img, spec, title, out / f"fz_h{h:.2f}A.png", "F_z (nN); > 0 repulsive", marks))
    pts = spec.points()[:, :, 0, :2]
    written.append(
        _write_npz(
            out / "fz_heights.npz",
            heights_A=np.array(heights),
            z_A=zs + np.array(heights),
            fz_nN=imgs.astype(np.float32),
            x_A=pts[..., 0],
            y_A=pts[..., 1],
            surface_z_A=np.array(zs),
            meta=np.array(json.dumps(notes["meta"])),
        )
    )
    return written


def _write_curves(fz, spec: GridSpec, zs: float, sites, out: Path, notes: dict) -> list[Path]:
    """Force-distance curves (nN against Å above ``zs``) above each site: PNG and npz."""
    sites_xy, labels, kind = sites
    h, curves = force_distance(fz, spec, sites_xy, zs)
    keep = h >= -1.0
    title = f"STA force-distance curves above {kind}\nT = {notes['temperature']:g} K{notes['tip']}"
    png = _plot_curves(h[keep], curves[:, keep], labels, title, out / "force_curves.png", "nN")
    npz = _write_npz(
        out / "force_curves.npz",
        h_A=h,
        fz_nN=curves.astype(np.float32),
        xy_A=np.asarray(sites_xy),
        labels=np.array(labels),
        site_kind=np.array(kind),
        surface_z_A=np.array(zs),
        meta=np.array(json.dumps(notes["meta"])),
    )
    return [png, npz]


def _write_npz(path: Path, **arrays) -> Path:
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path
