"""Prediction over whole surfaces: checkpoint + ``Atoms`` -> water density :class:`Grid`, and
the figures of a prediction (:func:`write_outputs`).

The model is loaded by :mod:`hydrolayer.inference` (:func:`load_predictor`; shipped models:
:mod:`hydrolayer.registry`), checked against the structure by :mod:`hydrolayer.domain`
(:func:`check_domain`) and run over the cell by ``inference.tile_predict`` (default: blended
10 x 10 Å windows, as trained) or ``inference.cell_predict``; the module notes of
:mod:`hydrolayer.inference` say how and why.

Symmetry: the descriptor is periodic and the windows sit at fixed grid indices of the cell,
so a surface shifted by a lattice vector, or with atoms re-wrapped, gives the same density
(to float round-off), and a shift by a multiple of the stride rolls the density exactly.

Non-orthogonal lateral cells: the windows are rectangular 10 x 10 Å boxes of grid points, and
a skewed grid would shear them. So the prediction is made on the smallest orthogonal supercell
(e.g. a, a + 2b for a hexagonal cell; up to 8 cells, :func:`orthogonal_supercell`) and
interpolated back (periodic bilinear) onto the grid of the cell as given; an oblique lattice
without such a supercell is refused with :class:`InputError`. Windows follow the cell's a axis:
a surface rotated in the plane relative to the training data is presented rotated to the model.

Heights and layers follow :mod:`hydrolayer.conventions` (``heights_above``, ``grid_peaks``):
``profile.png`` names the same layer heights as the evaluation report for the same density.

Ensembles (a ``.json`` manifest as the model, :class:`~hydrolayer.inference.EnsemblePredictor`):
one descriptor, every member on the same windows; the result is the members' mean, and with
``uncertainty=True`` also their spread (:mod:`hydrolayer.uncertainty`: its definition, the
per-window flag and the summary, which both grids carry in ``meta["uncertainty"]``).
``write_outputs(..., spread=)`` adds ``uncertainty.cube``, ``uncertainty.npz`` and
``uncertainty.png``. A single model runs exactly as before (no extra work).

Out of domain: when the model ships its training windows' latents (``Predictor.latents``:
a manifest's ``"latents"``, or ``<stem>.latents.npz`` beside a checkpoint), every 10 x 10 Å
flag window of the grid predicted on also gets its latent distance
(:mod:`hydrolayer.uncertainty`; one encoder pass per member over those windows), carried in
the grids' ``meta["ood"]`` (corners in Å, scores, the flagged windows). For a skewed cell
these are the windows of the orthogonal supercell predicted on.
"""

from __future__ import annotations

import itertools
import time
import warnings
from pathlib import Path

import numpy as np

from .conventions import PLANE_TOL, Z_BELOW, grid_peaks, heights_above
from .domain import check_domain
from .grids import Grid, bilinear_periodic
from .inference import (
    EnsemblePredictor,
    Predictor,
    bf16_supported,
    blend_weight,
    cell_latents,
    cell_predict,
    default_stride,
    load_predictor,
    resolve_precision,
    tile_predict,
)
from .registry import PRETRAINED_DIR, ShippedModel, default_model_name, list_models, models_text
from .util import InputError, atomic_output

__all__ = [
    "predict_density",
    "write_outputs",
    "orthogonal_supercell",
    "lateral_supercell",
    # re-exported for user code written against the single predict module
    "PRETRAINED_DIR",
    "Predictor",
    "ShippedModel",
    "list_models",
    "default_model_name",
    "models_text",
    "load_predictor",
    "resolve_precision",
    "bf16_supported",
    "tile_predict",
    "default_stride",
    "cell_predict",
    "blend_weight",
    "check_domain",
]

ORTHO_TOL = 1e-4  # |cos(gamma)| below this counts as a right angle (0.006 deg)


# =========================================================================== predict
def predict_density(
    atoms,
    model: "str | Path | Predictor | None" = None,
    method: str = "tiles",
    stride: int | None = None,
    batch: int = 8,
    face: str = "top",
    source: str | None = None,
    uncertainty: bool = False,
) -> "Grid | tuple[Grid, Grid]":
    """Water density over the whole lateral cell of ``atoms`` (rho/rho_bulk, one channel "water").

    ``model``: a shipped model's or ensemble's name, a checkpoint or ensemble-manifest path, a
    :class:`Predictor`, or ``None`` for the default shipped model. ``source`` names the
    structure in messages (a file name). ``method``: ``"tiles"`` (default) or ``"cell"``
    (:mod:`hydrolayer.inference`). ``stride``: tile step in grid points. The grid spans the
    lateral cell and z from z_s - 5 to z_s + 15 Å (the descriptor grid of
    ``descriptors.describe_cell``); ``grid.atoms`` are the input atoms and ``grid.meta`` holds
    the model, method, surface plane and domain notes. For ``face="bottom"`` the slab is
    mirrored (z -> -z) first: the grid and its atoms are in that mirrored frame, the bottom
    face pointing up.

    An ensemble gives the members' mean. ``uncertainty=True`` (an ensemble only) returns
    ``(mean_grid, spread_grid)``: the spread is the members' standard deviation (ddof 0,
    rho/rho_bulk, channel "spread"); both grids' ``meta["uncertainty"]`` hold the first-layer
    spread, each 10 x 10 Å window's spread and the flagged windows' corners (Å)
    (:func:`hydrolayer.uncertainty.summarize`).
    """
    src = source or "<structure>"
    if method not in ("tiles", "cell"):
        raise ValueError(f"method must be 'tiles' or 'cell', got {method!r}")
    if face not in ("top", "bottom"):
        raise ValueError(f"face must be 'top' or 'bottom', got {face!r}")
    pred = model if isinstance(model, Predictor) else load_predictor(model)
    ensemble = isinstance(pred, EnsemblePredictor)
    if uncertainty and not ensemble:
        raise InputError(
            f"{pred.source or pred.name}: uncertainty needs an ensemble (a .json manifest of several "
            f"checkpoints); {pred.name} is a single network"
        )
    M = lateral_supercell(atoms, src)
    kw = dict(method=method, stride=stride, batch=batch)
    if M is None:
        grids = _predict_cell(atoms, pred, src, face, **kw)
    else:
        grids = _predict_via_supercell(atoms, M, pred, src, face, **kw)
    if not ensemble:
        return grids[0]
    from .uncertainty import summarize

    mean, spread = grids
    mean.meta["uncertainty"] = spread.meta["uncertainty"] = summarize(mean, spread, len(pred.members))
    return (mean, spread) if uncertainty else mean


def _predict_cell(
    atoms, pred: Predictor, src: str, face: str, method: str, stride: int | None, batch: int
) -> tuple[Grid, ...]:
    """The prediction on the cell as given (orthogonal): ``(grid,)`` for one network,
    ``(mean, spread)`` for an ensemble (every member on the same descriptor windows)."""
    from . import descriptors

    notes = check_domain(atoms, pred, src, face)
    desc = descriptors.describe_cell(atoms, sigma=pred.sigma, face=face, spacing=pred.spacing)
    _check_grid(desc.spec, pred, stride, src)
    window = pred.window_shape
    ensemble = isinstance(pred, EnsemblePredictor)
    nets = list(pred.nets) if ensemble else pred.net
    t0 = time.perf_counter()
    if method == "tiles":
        rho = tile_predict(desc.values, nets, window=window[0], stride=stride, batch=batch)
    else:
        rho = cell_predict(desc.values, nets, pad=window[0] // 2)
    values = [rho.mean(axis=0), rho.std(axis=0)] if ensemble else [rho]  # over the members, ddof 0
    meta = {
        "model": pred.name,
        "checkpoint": pred.source,
        "architecture": pred.meta.get("model"),
        "method": method,
        "precision": pred.precision,
        "stride": (stride or default_stride(window[0])) if method == "tiles" else None,
        "face": face,
        "surface_z": float(desc.meta["z_s"]),  # in the frame of the face (mirrored for the bottom face)
        "descriptor_sigma": pred.sigma,
        "domain_notes": notes,
        "model_notes": list(pred.notes),
        "predict_seconds": time.perf_counter() - t0,
        "source": src,
    }
    if ensemble:
        meta["members"] = [m.source for m in pred.members]
    if pred.latents is not None:
        meta["ood"] = _window_distances(desc, pred)
    grids = [
        Grid(
            desc.spec,
            v[None],
            (name,),
            units="rho/rho_bulk",
            sigma=pred.meta.get("sigma_target"),
            meta=dict(meta),
            atoms=desc.atoms,
        )
        for v, name in zip(values, ("water", "spread"))
    ]
    return tuple(grids)


def _window_distances(desc: Grid, pred: Predictor) -> dict:
    """The latent distance (out-of-domain score) of each flag window of the descriptor grid
    ``desc`` against the model's training latents: ``uncertainty.ood_summary``."""
    from .uncertainty import flag_windows, latent_distance, ood_summary

    windows = flag_windows(desc.spec)
    lat = cell_latents(desc.values, pred.nets, [(i0, j0) for i0, j0, _, _ in windows], pred.window_shape[0])
    return ood_summary([(x0, y0) for _, _, x0, y0 in windows], latent_distance(pred.latents, lat))


def _check_grid(spec, pred: Predictor, stride: int | None, src: str) -> None:
    """The descriptor grid against the model's window: z points (error), lateral spacing
    (warning beyond 2 %), and the stride (half a window to one less than a window)."""
    window = pred.window_shape
    if spec.shape[2] != window[2]:
        raise InputError(f"{src}: descriptor has {spec.shape[2]} z points, the model's window {window[2]}")
    spacing = spec.spacing[:2]
    if np.any(np.abs(spacing / pred.spacing - 1) > 0.02):
        warnings.warn(
            f"{src}: the cell's grid spacing {np.round(spacing, 4).tolist()} Å differs from the model's "
            f"{pred.spacing} Å by more than 2%",
            stacklevel=3,
        )
    if stride is not None and not window[0] // 2 <= stride < window[0]:
        raise InputError(
            f"{src}: stride must be {window[0] // 2}..{window[0] - 1} grid points "
            f"(half a window to one less than a window), got {stride}"
        )


# =========================================================================== skewed cells
def orthogonal_supercell(lat: np.ndarray, nmax: int = 4, max_det: int = 8) -> np.ndarray | None:
    """The smallest integer 2x2 ``M`` (det > 0) whose rows combine the lateral cell rows
    ``lat`` (2x2) into two orthogonal vectors; ties prefer keeping ``a`` and short vectors.
    ``None`` when no such M with entries up to ``nmax`` and det up to ``max_det`` exists."""
    best, best_key = None, None
    for m in itertools.product(range(-nmax, nmax + 1), repeat=4):
        M = np.array(m, dtype=int).reshape(2, 2)
        det = int(round(np.linalg.det(M)))
        if det <= 0 or det > max_det:
            continue
        v = M @ lat
        n0, n1 = np.linalg.norm(v[0]), np.linalg.norm(v[1])
        if abs(v[0] @ v[1]) > ORTHO_TOL * n0 * n1:
            continue
        key = (det, 0 if tuple(M[0]) == (1, 0) else 1, round(max(n0, n1), 6), tuple(-M.ravel()))
        if best_key is None or key < best_key:
            best, best_key = M, key
    return best


def lateral_supercell(atoms, source: str) -> np.ndarray | None:
    """``None`` for an orthogonal lateral cell; else the supercell matrix that makes it
    orthogonal; :class:`InputError` when there is none (an oblique lattice)."""
    cell = atoms.cell[:]
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6:
        raise InputError(f"{source}: cell vectors a and b must lie in the xy plane (surface normal along +z)")
    cosg = float(np.dot(cell[0], cell[1]) / (np.linalg.norm(cell[0]) * np.linalg.norm(cell[1])))
    if abs(cosg) <= ORTHO_TOL:
        return None
    M = orthogonal_supercell(cell[:2, :2])
    if M is None:
        gamma = float(np.degrees(np.arccos(cosg)))
        raise InputError(
            f"{source}: oblique lateral cell (gamma = {gamma:.2f} deg) with no orthogonal supercell of up to 8 "
            "cells: the model's 10 x 10 Å windows need a rectangular periodic cell"
        )
    return M


def _predict_via_supercell(atoms, M, pred, src, face, **kw) -> tuple[Grid, ...]:
    """Predict on the orthogonal supercell ``M`` of a non-orthogonal cell and interpolate
    each grid (density; an ensemble's mean and spread) back onto the grid of the original
    cell (periodic bilinear, laterally; the z planes coincide)."""
    from ase.build import make_supercell

    from . import descriptors

    P = np.eye(3, dtype=int)
    P[:2, :2] = M
    big = make_supercell(atoms, P, wrap=True)
    big.info = dict(atoms.info)
    inner = _predict_cell(big, pred, src, face, **kw)
    own = descriptors.mirror(atoms) if face == "bottom" else atoms
    spec = inner[0].spec
    target = descriptors.cell_spec(own, inner[0].meta["surface_z"], spacing=pred.spacing)
    if target.shape[2] != spec.shape[2] or not np.isclose(target.origin[2], spec.origin[2]):
        raise RuntimeError("supercell and cell grids have different z planes")
    nx, ny, nz = target.shape
    pts = target.points()[:, :, 0, :2].reshape(-1, 2)
    frac = np.mod((pts - spec.origin[:2]) @ np.linalg.inv(spec.cell[:2, :2]), 1.0)
    out = []
    for g in inner:
        rho = bilinear_periodic(g.values[0], frac).reshape(nx, ny, nz).astype(np.float32)
        meta = dict(
            g.meta,
            supercell=M.tolist(),
            supercell_note="non-orthogonal cell: predicted on this orthogonal supercell, interpolated back",
        )
        out.append(Grid(target, rho[None], g.channels, units=g.units, sigma=g.sigma, meta=meta, atoms=own))
    return tuple(out)


# =========================================================================== outputs
def write_outputs(grid: Grid, out_dir: str | Path, spread: Grid | None = None) -> list[Path]:
    """``water.cube`` (with the atoms), ``water.npz``, ``profile.png``, ``slices.png``, ``xz.png``;
    with an ensemble's ``spread`` (``predict_density(..., uncertainty=True)``) also
    ``uncertainty.cube``, ``uncertainty.npz`` and ``uncertainty.png`` (the spread at the
    predicted layer heights, flagged windows outlined)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written = [grid.write_cube(out / "water.cube"), grid.write_npz(out / "water.npz")]
    z_s = float(grid.meta.get("surface_z", grid.spec.origin[2] + Z_BELOW))
    peaks = grid_peaks(grid.values[0], grid.spec, z_s)
    written.append(_save(_profile_figure(grid, z_s, peaks), out / "profile.png"))
    written.append(_save(_slices_figure(grid, z_s, peaks or [2.5]), out / "slices.png"))
    written.append(_save(_xz_figure(grid, z_s), out / "xz.png"))
    if spread is not None:
        written += [spread.write_cube(out / "uncertainty.cube"), spread.write_npz(out / "uncertainty.npz")]
        written.append(_save(_uncertainty_figure(spread, z_s, peaks or [2.5]), out / "uncertainty.png"))
    return written


def _save(fig, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    return path


def _title_model(grid: Grid) -> str:
    return f"model {grid.meta.get('model', '?')}"


def _vmax(grid: Grid, h: np.ndarray) -> float:
    rho = grid.values[0]
    return float(np.percentile(rho[..., h > 0], 99.9)) if np.any(h > 0) else float(rho.max())


def _top_cations(atoms, z_s: float) -> np.ndarray:
    """Mask of the surface Ca: within :data:`~hydrolayer.conventions.PLANE_TOL` below z_s or above."""
    sym = np.array(atoms.get_chemical_symbols())
    return (sym == "Ca") & (atoms.positions[:, 2] >= z_s - PLANE_TOL)


def _profile_figure(grid: Grid, z_s: float, peaks: list[float]):
    from matplotlib.figure import Figure

    h = heights_above(grid.spec, z_s)
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(h, grid.values[0].mean(axis=(0, 1)), color="C0")
    ax.axhline(1.0, color="0.6", lw=0.8, ls="--", label="bulk")
    ax.axvline(0.0, color="0.3", lw=0.8, label="surface Ca plane")
    for p in peaks:
        ax.axvline(p, color="C3", lw=0.6, ls=":")
    ax.set_xlabel("height above the surface Ca plane (Å)")
    ax.set_ylabel("laterally averaged water density (rho / rho_bulk)")
    peak_text = ("peaks at " + ", ".join(f"{p:.2f}" for p in peaks) + " Å") if peaks else "no peaks found"
    ax.set_title(f"Predicted hydration layers ({_title_model(grid)}); {peak_text}", fontsize=9)
    ax.legend(fontsize=8)
    return fig


def _slices_figure(grid: Grid, z_s: float, heights: list[float], what: str = "water density", cmap: str = "viridis"):
    """xy slices through the grid planes nearest to ``heights`` (Å above z_s) of ``what``."""
    from matplotlib.figure import Figure

    h = heights_above(grid.spec, z_s)
    rho = grid.values[0]
    nx, ny = grid.spec.shape[:2]
    F = np.stack(np.meshgrid((np.arange(nx + 1) - 0.5) / nx, (np.arange(ny + 1) - 0.5) / ny, indexing="ij"), axis=-1)
    XY = grid.spec.origin[:2] + F @ grid.spec.cell[:2, :2]
    vmax = _vmax(grid, h)
    fig = Figure(figsize=(4.6 * len(heights), 4.4), layout="constrained")
    axes = fig.subplots(1, len(heights), squeeze=False)[0]
    atoms = grid.atoms
    for ax, hh in zip(axes, heights):
        k = int(np.argmin(np.abs(h - hh)))
        mesh = ax.pcolormesh(XY[..., 0], XY[..., 1], rho[:, :, k], cmap=cmap, vmin=0, vmax=vmax, shading="flat")
        if atoms is not None and len(atoms):
            top = _top_cations(atoms, z_s)
            ax.plot(
                atoms.positions[top, 0], atoms.positions[top, 1], "o", mfc="none", mec="w", ms=5, label="surface Ca"
            )
        ax.set_aspect("equal")
        ax.set_xlabel("x (Å)")
        ax.set_ylabel("y (Å)")
        ax.set_title(f"h = {h[k]:.2f} Å above the Ca plane", fontsize=9)
    fig.colorbar(mesh, ax=list(axes), label=f"{what} (rho / rho_bulk)")
    fig.suptitle(f"Predicted {what}, xy slices ({_title_model(grid)})", fontsize=10)
    return fig


def _uncertainty_figure(spread: Grid, z_s: float, heights: list[float]):
    """The ensemble spread in xy slices at ``heights`` (Å above z_s), the flagged 10 x 10 Å
    windows outlined (``meta["uncertainty"]``)."""
    from matplotlib.patches import Rectangle

    info = spread.meta.get("uncertainty") or {}
    fig = _slices_figure(spread, z_s, heights, what="ensemble spread (std over members)", cmap="magma")
    side = info.get("window_A", 10.0)
    for ax in fig.axes[: len(heights)]:
        for x0, y0 in info.get("flagged_windows_A", []):
            ax.add_patch(Rectangle((x0, y0), side, side, fill=False, ec="c", lw=1.2, ls="--"))
        ax.set_title(ax.get_title() + f"; {len(info.get('flagged_windows_A', []))} windows flagged", fontsize=8)
    return fig


def _xz_figure(grid: Grid, z_s: float):
    """An xz slice through a defect site (or a surface Ca), with the atoms near it."""
    from matplotlib.figure import Figure

    spec, atoms = grid.spec, grid.atoms
    h = heights_above(spec, z_s)
    nx, ny = spec.shape[:2]
    y0, why = _site_for_xz(atoms, z_s) if atoms is not None else (0.0, "")
    j = int(round((((y0 - spec.origin[1]) / spec.cell[1, 1]) % 1.0) * ny)) % ny
    row = spec.origin[0] + (np.arange(nx) / nx) * spec.cell[0, 0] + (j / ny) * spec.cell[1, 0]
    step = spec.cell[0, 0] / nx
    x = np.concatenate([row - step / 2, [row[-1] + step / 2]])
    dz = spec.cell[2, 2] / spec.shape[2]
    zedges = np.concatenate([h - dz / 2, [h[-1] + dz / 2]])
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(
        x, zedges, grid.values[0][:, j, :].T, cmap="viridis", vmin=0, vmax=_vmax(grid, h), shading="flat"
    )
    yj = spec.origin[1] + j / ny * spec.cell[1, 1]
    if atoms is not None and len(atoms):
        _mark_atoms_near_row(ax, atoms, spec, row, yj, z_s, h[0])
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("height above the surface Ca plane (Å)")
    ax.set_title(f"Predicted water density, xz slice at y = {yj:.2f} Å {why}", fontsize=9)
    fig.colorbar(mesh, ax=ax, label="water density (rho / rho_bulk)")
    return fig


def _mark_atoms_near_row(ax, atoms, spec, row: np.ndarray, yj: float, z_s: float, hmin: float) -> None:
    """Ca, C and O within 1 Å (in y, periodic) of the slice, above the bottom of the grid."""
    sym = np.array(atoms.get_chemical_symbols())
    ly = spec.cell[1, 1]
    dy = (atoms.positions[:, 1] - yj + 0.5 * ly) % ly - 0.5 * ly
    near = np.abs(dy) < 1.0
    styles = (
        ("Ca", dict(mfc="none", mec="w", ms=7)),
        ("C", dict(mfc="0.2", mec="w", ms=4)),
        ("O", dict(mfc="r", mec="w", ms=4)),
    )
    for el, style in styles:
        m = near & (sym == el) & (atoms.positions[:, 2] - z_s > hmin)
        if m.any():
            xs = row[0] + ((atoms.positions[m, 0] - row[0]) % spec.cell[0, 0])
            ax.plot(xs, atoms.positions[m, 2] - z_s, "o", label=el, **style)
    ax.legend(fontsize=8, loc="upper right")


def _site_for_xz(atoms, z_s: float) -> tuple[float, str]:
    """A y for the xz slice: through the first recorded defect, else the first top Ca."""
    from .structures import defect_sites

    try:
        sites = defect_sites(atoms) if hasattr(atoms, "info") else []
    except InputError:  # an unchecked in-memory Atoms: the slice goes through a Ca instead
        sites = []
    if sites:
        return float(sites[0].position[1]), f"through the {sites[0].species} vacancy"
    top = np.nonzero(_top_cations(atoms, z_s))[0]
    if len(top):
        return float(atoms.positions[top[0], 1]), "through a surface Ca"
    return 0.0, ""
