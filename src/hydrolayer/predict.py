"""Prediction over whole surfaces: checkpoint + ``Atoms`` -> water density :class:`Grid`.

How a whole periodic surface is covered (``method="tiles"``, the default)
---------------------------------------------------------------------------
The descriptor of the whole lateral cell is computed once (``descriptors.describe_cell``:
C, O, Ca densities, z from z_s - 5 to z_s + 15 Å, the window spacing). Windows of the
training size (32 x 32 points = 10 x 10 Å) are cut from it *periodically* (indices wrap, so
any cell size works, smaller than a window too) at a stride of three quarters of a window
(24 points, :func:`default_stride`; ``stride=16``, half a window, is the denser choice), the
model is run on each, and the windows are blended with the weight ``blend_weight``: along
each axis a sin^2 ramp over the 8 overlapping points at each edge and 1 in between (for
half-window stride, sin^2(pi (i + 1/2) / 32)). It falls to ~0 at the window edges and sums
to exactly 1 where neighbouring windows overlap (sin^2 + cos^2 = 1); the sum is divided out
anyway for cells that are not a multiple of the stride. Why tiles and not the network once
over a periodically padded cell: the network was trained on isolated 10 x 10 Å windows
whose borders are zero-padded, and its receptive field (92 grid points, about 29 Å) is
larger than a window, so every training voxel saw those borders.
Tiling shows the network exactly what it was trained on, and the blend gives most weight to
window centres, where the border is farthest; a window's edge region, where it is least
accurate, is down-weighted to zero, so there are no seams. ``method="cell"`` (the network
once over the cell padded periodically by half a window) is offered for speed and for
comparison: seamless by construction, but out of the training distribution.

Symmetry: the descriptor is periodic and the windows sit at fixed grid indices of the cell,
so a surface shifted by a lattice vector, or with atoms re-wrapped, gives the same density
(to float round-off), and a shift by a multiple of the stride rolls the density exactly.

Domain checks (before any prediction)
-------------------------------------
* elements the model has no channel for (it knows C, O, Ca; water H and O are ignored by
  the descriptor) -> :class:`InputError`, one line;
* a known element set on a surface the model was not trained on (``atoms.info["surface"]``
  against the checkpoint's ``training.surfaces``), or whose top layer is far from every
  trained surface (Ca and carbonate areal densities, > 25 % off) -> ``UserWarning`` saying
  why; a checkpoint that does not record its training surfaces cannot be checked (noted in
  the grid metadata, no warning);
* a lateral cell whose a and b are not orthogonal: the windows are rectangular 10 x 10 Å
  boxes of grid points, and a skewed grid would shear them. So the prediction is made on
  the smallest orthogonal supercell (e.g. a, a + 2b for a hexagonal cell; up to 8 cells)
  and interpolated back (periodic bilinear) onto the grid of the cell as given; an oblique
  lattice without such a supercell is refused with :class:`InputError`. Windows follow the
  cell's a axis: a surface rotated in the plane relative to the training data is presented
  rotated to the model too.

Shipped models: ``src/hydrolayer/pretrained/<name>.pt`` with its model card ``<name>.md``;
``pretrained/DEFAULT`` (one line, a name) picks the default, else the first U-Net by name.
A checkpoint should carry ``training: {"surfaces": [...]}`` (builder names, e.g.
``"calcite-104"``) in its metadata (``models.save_checkpoint(..., extra)``); without it the
facet check above cannot run and ``grid.meta["domain_notes"]`` says so.
torch is imported only when a model is loaded or run.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .grids import Grid, GridSpec
from .util import InputError, atomic_output

__all__ = [
    "PRETRAINED_DIR",
    "Predictor",
    "ShippedModel",
    "list_models",
    "load_predictor",
    "resolve_precision",
    "predict_density",
    "tile_predict",
    "default_stride",
    "cell_predict",
    "blend_weight",
    "write_outputs",
    "check_domain",
]

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
MODEL_ELEMENTS = ("C", "O", "Ca")  # descriptor channels of every hydrolayer model so far
IGNORED_ELEMENTS = ("H",)  # water in the file: the descriptor ignores it
FAR_TOLERANCE = 0.25  # relative difference of top-layer areal densities that triggers a warning


# =========================================================================== registry
@dataclasses.dataclass(frozen=True)
class ShippedModel:
    """A checkpoint shipped in ``pretrained/``: ``name``, ``path`` (.pt), ``card`` (.md or None)."""

    name: str
    path: Path
    card: Path | None

    def card_text(self) -> str:
        return self.card.read_text() if self.card is not None and self.card.exists() else "(no model card)"

    def summary(self) -> str:
        """The first heading or line of the card."""
        for line in self.card_text().splitlines():
            line = line.strip().lstrip("#").strip()
            if line.startswith(f"{self.name}:"):  # a card titled "NAME: what it is"
                line = line[len(self.name) + 1 :].strip()
            if line:
                return line
        return ""


def list_models(directory: Path | str | None = None) -> list[ShippedModel]:
    """Checkpoints in the registry folder (default: the package's ``pretrained/``), by name."""
    d = Path(directory) if directory is not None else PRETRAINED_DIR
    if not d.is_dir():
        return []
    out = []
    for pt in sorted(d.glob("*.pt")):
        card = pt.with_suffix(".md")
        out.append(ShippedModel(pt.stem, pt, card if card.exists() else None))
    return out


def default_model_name(directory: Path | str | None = None) -> str | None:
    """``pretrained/DEFAULT`` if present, else the first shipped model whose name starts with
    ``unet`` (the U-Net family), else the first one; ``None`` when nothing is shipped."""
    d = Path(directory) if directory is not None else PRETRAINED_DIR
    models = list_models(d)
    if not models:
        return None
    names = [m.name for m in models]
    marker = d / "DEFAULT"
    if marker.exists():
        name = marker.read_text().strip()
        if name in names:
            return name
    unets = [n for n in names if n.startswith("unet")]
    return (unets or names)[0]


def _resolve(model: str | Path | None, directory=None) -> Path:
    d = Path(directory) if directory is not None else PRETRAINED_DIR
    if model is None:
        name = default_model_name(d)
        if name is None:
            raise InputError(
                f"{d}: no trained model is shipped yet; pass --model PATH to a checkpoint (.pt) written by training"
            )
        return d / f"{name}.pt"
    p = Path(model)
    if p.suffix == ".pt" or p.exists() or "/" in str(model):
        if not p.exists():
            raise InputError(f"{p}: checkpoint not found")
        return p
    names = [m.name for m in list_models(d)]
    if str(model) in names:
        return d / f"{model}.pt"
    shipped = ", ".join(names) if names else "none shipped yet"
    raise InputError(f"{model}: no such model (shipped: {shipped}); or give a path to a .pt checkpoint")


# =========================================================================== predictor
@dataclasses.dataclass
class Predictor:
    """A loaded model plus what it needs to know: descriptor sigma, window shape, training set.

    ``net`` is any callable ``(N, 3, X, Y, Z) tensor -> (N, 1, X, Y, Z) tensor`` in rho/rho_bulk
    (a :class:`hydrolayer.models.UNet3D` in eval mode); ``meta`` the checkpoint metadata.
    """

    net: Callable
    meta: dict
    name: str = "model"
    source: str = ""
    load_seconds: float = 0.0
    notes: list = dataclasses.field(default_factory=list)  # e.g. "written by another version"
    precision: str = "float32"  # what the network computes in: "float32" or "bfloat16"

    @property
    def sigma(self) -> float:
        s = (self.meta.get("descriptor") or {}).get("sigma")
        if s is None:
            from .descriptors import DEFAULT_SIGMA

            return float(DEFAULT_SIGMA)
        return float(s)

    @property
    def window_shape(self) -> tuple[int, int, int]:
        w = self.meta.get("window")
        if w:
            return tuple(int(v) for v in w["shape"])
        from .descriptors import WINDOW_SHAPE

        return tuple(WINDOW_SHAPE)

    @property
    def spacing(self) -> float:
        """Lateral grid spacing of the training windows (Å)."""
        w = self.meta.get("window")
        if w:
            return float(np.linalg.norm(np.asarray(w["cell"], float)[0]) / int(w["shape"][0]))
        from .descriptors import SPACING

        return float(SPACING)

    @property
    def elements(self) -> tuple[str, ...]:
        ch = (self.meta.get("descriptor") or {}).get("channels")
        return tuple(ch) if ch else MODEL_ELEMENTS

    @property
    def training_surfaces(self) -> list[str] | None:
        t = self.meta.get("training") or {}
        s = t.get("surfaces") if isinstance(t, dict) else None
        return list(s) if s else None

    def predict(self, atoms, **kwargs) -> Grid:
        return predict_density(atoms, model=self, **kwargs)


def _optimise(net):
    """Inference-only speed-ups that keep the numbers (to float round-off): each Conv3d
    followed by a BatchNorm3d in a Sequential is folded into one Conv3d (eval statistics),
    and the weights go channels-last (oneDNN's fast 3D layout on CPU)."""
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for mod in list(net.modules()):
        if isinstance(mod, nn.Sequential):
            items = list(mod._modules.items())
            for (n1, a), (n2, b) in zip(items, items[1:]):
                if isinstance(a, nn.Conv3d) and isinstance(b, nn.BatchNorm3d) and not b.training:
                    mod._modules[n1] = fuse_conv_bn_eval(a, b)
                    mod._modules[n2] = nn.Identity()
    return net.to(memory_format=torch.channels_last_3d)


PRECISIONS = ("auto", "float32", "bfloat16")


def bf16_supported() -> bool:
    """Whether this CPU runs oneDNN bfloat16 convolutions natively (AVX512-BF16 or AMX);
    elsewhere bfloat16 is emulated and slower than float32."""
    try:
        import torch

        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # private API: any failure means "do not use it"
        return False


def resolve_precision(precision: str | None) -> str:
    """``"auto"`` (or None) -> ``"bfloat16"`` where the CPU supports it natively, else ``"float32"``."""
    precision = precision or "auto"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if bf16_supported() else "float32"
    return precision


@functools.cache
def _autocast_module():
    """The wrapper class, defined once on first use (torch is imported only when needed)."""
    from torch import nn

    class BFloat16Net(nn.Module):
        """Runs the wrapped network under CPU autocast to bfloat16 (weights stay float32;
        convolutions compute in bfloat16 with float32 accumulation) and returns float32."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            import torch

            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = self.net(x)
            return y.float()

    return BFloat16Net


def load_predictor(model: str | Path | None = None, directory=None, threads: int | None = None, optimise: bool = True,
                   precision: str | None = "auto") -> Predictor:
    """Load a shipped model by name, a checkpoint by path, or the default shipped model.

    ``optimise``: fold batch norms into the convolutions and use the channels-last layout
    (same predictions to ~1e-6, faster on CPU). ``precision``: ``"auto"`` (default) runs the
    convolutions in bfloat16 where the CPU has native support (1.7x faster here; the
    density moves by ~1e-3 rho/rho_bulk on average, see benchmarks/RESULTS.md), else in
    float32; ``"float32"`` or ``"bfloat16"`` force one (the evaluation uses float32)."""
    precision = resolve_precision(precision)
    path = _resolve(model, directory)
    t0 = time.perf_counter()
    import torch

    from .models import load_model

    if threads:
        torch.set_num_threads(int(threads))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        net, meta = load_model(path)
    net.eval()
    if optimise:
        net = _optimise(net)
    if precision == "bfloat16":
        net = _autocast_module()(net).eval()
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    for n in notes:
        warnings.warn(n, stacklevel=2)
    return Predictor(net, meta, name=path.stem, source=str(path), load_seconds=time.perf_counter() - t0, notes=notes,
                     precision=precision)


# =========================================================================== tiling
def blend_weight(n: int, overlap: int | None = None) -> np.ndarray:
    """Blend weight along one window axis of ``n`` points for windows that overlap by
    ``overlap`` points (default n // 2): sin^2 ramps over the ``overlap`` points at each
    edge (~0 at the edge) and 1 in between. Where two windows at that stride overlap, their
    ramps are sin^2 and cos^2 of the same angle: they sum to exactly 1. With the default
    this is sin^2(pi (i + 1/2) / n)."""
    overlap = n // 2 if overlap is None else int(overlap)
    if not 0 < overlap <= n // 2:
        raise ValueError(f"overlap must be in 1..{n // 2}, got {overlap}")
    i = np.arange(n) + 0.5
    up = np.sin(0.5 * np.pi * np.clip(i / overlap, 0, 1)) ** 2
    return up * up[::-1]


def default_stride(window: int) -> int:
    """The default tile step: three quarters of a window (24 of 32 points, 7.5 Å), an
    overlap of a quarter window on each side. Half a window (16) covers every point with
    4 windows instead of ~1.8 and takes twice as long; on row 5 of data set v0 both give
    the same MAE against MD (0.2084 vs 0.2083 rho/rho_bulk for unet-v0,
    benchmarks/RESULTS.md)."""
    return (3 * int(window)) // 4


def _offsets(n: int, window: int, stride: int) -> np.ndarray:
    """Window starts along an axis of ``n`` periodic points: about every ``stride`` points,
    spread evenly so that the same cell always gets the same starts."""
    k = max(1, -(-n // stride))  # ceil
    if n <= window and k < 2:
        k = 2 if n > 1 else 1
    return np.array(sorted({int(round(m * n / k)) % n for m in range(k)}))


def _run_batches(net: Callable, windows: np.ndarray, batch: int) -> np.ndarray:
    """Run ``net`` over (N, C, X, Y, Z) windows in batches; channels-last memory layout.

    A lone window is run as a batch of two (itself twice): PyTorch's CPU convolution picks
    its slow reference kernel for batch 1 at window size (the oneDNN kernel needs N > 1 or a
    larger plane), and two windows through oneDNN cost ~3x less than one through the other.
    """
    import torch

    outs = []
    with torch.inference_mode():
        for s in range(0, len(windows), batch):
            part = np.ascontiguousarray(windows[s : s + batch], dtype=np.float32)
            lone = len(part) == 1 and part.shape[2] * part.shape[3] * part.shape[1] <= 20480
            x = torch.from_numpy(np.concatenate([part, part]) if lone else part)
            x = x.contiguous(memory_format=torch.channels_last_3d)
            y = net(x)[:1] if lone else net(x)
            outs.append(y[:, 0].detach().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,) + windows.shape[2:], np.float32)


def tile_predict(desc: np.ndarray, net: Callable, window: int = 32, stride: int | None = None, batch: int = 8) -> np.ndarray:
    """Blend window predictions over a periodic descriptor ``desc`` (C, NX, NY, NZ).

    Windows of ``window`` x ``window`` lateral points at about ``stride`` (default
    :func:`default_stride`: three quarters of a window) are cut with periodic wrap, run
    through ``net`` in batches and blended with :func:`blend_weight`. Returns (NX, NY, NZ)
    float32.
    """
    desc = np.asarray(desc, dtype=np.float32)
    _, nx, ny, nz = desc.shape
    stride = stride or default_stride(window)
    if not window // 2 <= stride < window:
        raise ValueError(f"stride must be in {window // 2}..{window - 1} points, got {stride}")
    ox, oy = _offsets(nx, window, stride), _offsets(ny, window, stride)
    w1 = blend_weight(window, window - stride).astype(np.float32)
    w2 = w1[:, None] * w1[None, :]
    acc = np.zeros((nx, ny, nz), np.float32)
    wsum = np.zeros((nx, ny), np.float32)
    starts = [(i0, j0) for i0 in ox for j0 in oy]
    dup = window > nx or window > ny  # a window wraps onto itself: accumulate with add.at
    for s in range(0, len(starts), batch):
        part = starts[s : s + batch]
        idx = [((i0 + np.arange(window)) % nx, (j0 + np.arange(window)) % ny) for i0, j0 in part]
        win = np.stack([desc[:, ii][:, :, jj] for ii, jj in idx])
        pred = _run_batches(net, win, batch)
        for (ii, jj), p in zip(idx, pred):
            sel = np.ix_(ii, jj)
            if dup:
                np.add.at(acc, sel, w2[..., None] * p)
                np.add.at(wsum, sel, w2)
            else:
                acc[sel] += w2[..., None] * p
                wsum[sel] += w2
    return acc / wsum[..., None]


def cell_predict(desc: np.ndarray, net: Callable, pad: int = 16, multiple: int = 8) -> np.ndarray:
    """The network once over the whole cell, padded periodically by ``pad`` points laterally
    (and up to a multiple of ``multiple``), cropped back. Returns (NX, NY, NZ) float32.

    Every point sees at least ``pad`` points of real periodic context on each side and the
    network's zero padding beyond that (the receptive field of the U-Net is larger), so
    periodicity and shift symmetry are exact only as far as the network ignores context
    beyond the margin; the tiles method has no such limit (each window is what the network
    was trained on). Memory grows with the cell area (one activation map of the whole padded
    cell per layer), while tiles need a fixed amount per batch of windows."""
    desc = np.asarray(desc, dtype=np.float32)
    _, nx, ny, nz = desc.shape
    if nz % multiple:
        raise ValueError(f"the descriptor has {nz} points along z; need a multiple of {multiple}")
    px = pad + (-(nx + 2 * pad)) % multiple
    py = pad + (-(ny + 2 * pad)) % multiple
    big = np.pad(desc, ((0, 0), (pad, px), (pad, py), (0, 0)), mode="wrap")
    out = _run_batches(net, big[None], 1)[0]
    return np.ascontiguousarray(out[pad : pad + nx, pad : pad + ny])


# =========================================================================== domain checks
def _top_layer_fingerprint(atoms, face: str = "top") -> dict:
    """Areal densities (per 100 Å^2) of the outermost layer: Ca within 1 Å of the top Ca,
    C within 2 Å below to 2 Å above the Ca plane; and the Ca plane z."""
    pos = atoms.get_positions()
    sym = np.array(atoms.get_chemical_symbols())
    z = pos[:, 2] if face == "top" else -pos[:, 2]
    area = float(np.linalg.norm(np.cross(atoms.cell[0], atoms.cell[1])))
    ca = sym == "Ca"
    if not ca.any():
        return {}
    ztop = z[ca].max()
    top_ca = ca & (z >= ztop - 1.0)
    zs = z[top_ca].mean()
    c = (sym == "C") & (np.abs(z - zs) <= 2.0)
    return {"Ca": 100.0 * top_ca.sum() / area, "C": 100.0 * c.sum() / area}


@functools.lru_cache(maxsize=None)
def _reference_fingerprint(surface: str) -> dict:
    """The top-layer fingerprint of a pristine built-in surface ({} if the builder does not
    know the name); cached: building a slab takes about a second."""
    from .structures import build_surface

    try:
        return _top_layer_fingerprint(build_surface(surface, size=(1, 1), layers=2))
    except Exception:  # a training-set name the builder does not know: cannot compare
        return {}


def check_domain(atoms, predictor: Predictor, source: str = "<structure>", face: str = "top") -> list[str]:
    """Refuse what the model cannot describe; return (and warn about) what it may get wrong."""
    syms = set(atoms.get_chemical_symbols())
    known = set(predictor.elements) | set(IGNORED_ELEMENTS)
    bad = sorted(syms - known)
    if bad:
        raise InputError(
            f"{source}: the model {predictor.name} knows only {', '.join(predictor.elements)} "
            f"(water H ignored); this structure has {', '.join(bad)}"
        )
    if "Ca" not in syms:
        raise InputError(f"{source}: no Ca atoms: cannot place the surface plane the model is referenced to")
    notes: list[str] = []
    trained = predictor.training_surfaces
    if trained is None:
        return ["the checkpoint does not record its training surfaces: facet not checked"]
    name = atoms.info.get("surface") if hasattr(atoms, "info") else None
    if name and name not in trained:
        notes.append(
            f"{source}: surface {name!r} (from the file's info) is not one the model was trained on "
            f"({', '.join(trained)}); the prediction is an extrapolation"
        )
    fp = _top_layer_fingerprint(atoms, face)
    refs = {t: r for t in trained if (r := _reference_fingerprint(t))}
    if refs and fp:
        def dist(r):
            return max(abs(fp[k] - r[k]) / r[k] for k in ("Ca", "C") if r.get(k))

        best = min(refs, key=lambda t: dist(refs[t]))
        d = dist(refs[best])
        if d > FAR_TOLERANCE:
            notes.append(
                f"{source}: the top layer is far from every training surface: Ca {fp['Ca']:.2f} and "
                f"CO3 {fp['C']:.2f} per 100 Å^2 vs {refs[best]['Ca']:.2f} and {refs[best]['C']:.2f} for "
                f"{best} ({100 * d:.0f}% off); an unknown facet, termination or a heavily defective "
                "surface: treat the prediction as an extrapolation"
            )
    for n in notes:
        warnings.warn(n, stacklevel=3)
    return notes


ORTHO_TOL = 1e-4  # |cos(gamma)| below this counts as a right angle (0.006 deg)


def _orthogonal_supercell(lat: np.ndarray, nmax: int = 4, max_det: int = 8) -> np.ndarray | None:
    """The smallest integer 2x2 ``M`` (det > 0) whose rows combine the lateral cell rows
    ``lat`` (2x2) into two orthogonal vectors; ties prefer keeping ``a`` and short vectors.
    ``None`` when no such M with entries up to ``nmax`` and det up to ``max_det`` exists."""
    import itertools

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


def _lateral_supercell(atoms, source: str) -> np.ndarray | None:
    """``None`` for an orthogonal lateral cell; else the supercell matrix that makes it
    orthogonal; :class:`InputError` when there is none (an oblique lattice)."""
    cell = atoms.cell[:]
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6:
        raise InputError(f"{source}: cell vectors a and b must lie in the xy plane (surface normal along +z)")
    cosg = float(np.dot(cell[0], cell[1]) / (np.linalg.norm(cell[0]) * np.linalg.norm(cell[1])))
    if abs(cosg) <= ORTHO_TOL:
        return None
    M = _orthogonal_supercell(cell[:2, :2])
    if M is None:
        gamma = float(np.degrees(np.arccos(cosg)))
        raise InputError(
            f"{source}: oblique lateral cell (gamma = {gamma:.2f} deg) with no orthogonal supercell of up to 8 "
            "cells: the model's 10 x 10 Å windows need a rectangular periodic cell"
        )
    return M


def _predict_via_supercell(atoms, M, pred, src, face, **kw) -> Grid:
    """Predict on the orthogonal supercell ``M`` of a non-orthogonal cell and interpolate
    the density (periodic bilinear, laterally; the z planes coincide) back onto the grid of
    the original cell."""
    from ase.build import make_supercell

    from . import descriptors
    from .afm import _bilinear_periodic

    P = np.eye(3, dtype=int)
    P[:2, :2] = M
    big = make_supercell(atoms, P, wrap=True)
    big.info = dict(atoms.info)
    inner = predict_density(big, model=pred, face=face, source=src, **kw)
    own = descriptors.mirror(atoms) if face == "bottom" else atoms
    target = descriptors.cell_spec(own, inner.meta["surface_z"], spacing=pred.spacing)
    if target.shape[2] != inner.spec.shape[2] or not np.isclose(target.origin[2], inner.spec.origin[2]):
        raise RuntimeError("supercell and cell grids have different z planes")
    nx, ny, nz = target.shape
    pts = target.points()[:, :, 0, :2].reshape(-1, 2)
    frac = np.mod((pts - inner.spec.origin[:2]) @ np.linalg.inv(inner.spec.cell[:2, :2]), 1.0)
    rho = _bilinear_periodic(inner.values[0], frac).reshape(nx, ny, nz).astype(np.float32)
    meta = dict(inner.meta, supercell=M.tolist(),
                supercell_note="non-orthogonal cell: predicted on this orthogonal supercell, interpolated back")
    return Grid(target, rho[None], ("water",), units=inner.units, sigma=inner.sigma, meta=meta, atoms=own)


# =========================================================================== predict
def predict_density(
    atoms,
    model: "str | Path | Predictor | None" = None,
    method: str = "tiles",
    stride: int | None = None,
    batch: int = 8,
    face: str = "top",
    source: str | None = None,
) -> Grid:
    """Water density over the whole lateral cell of ``atoms`` (rho/rho_bulk, one channel "water").

    ``model``: a shipped model's name, a checkpoint path, a :class:`Predictor`, or ``None``
    for the default shipped model. ``source`` names the structure in messages (a file name). ``method``: ``"tiles"`` (default; see the module notes)
    or ``"cell"``. The grid spans the lateral cell and z from z_s - 5 to z_s + 15 Å (the
    descriptor grid of ``descriptors.describe_cell``); ``grid.atoms`` are the input atoms
    and ``grid.meta`` holds the model, method, surface plane and domain notes. For
    ``face="bottom"`` the slab is mirrored (z -> -z) first: the grid and its atoms are in
    that mirrored frame, the bottom face pointing up.
    """
    from . import descriptors

    src = source or "<structure>"
    if method not in ("tiles", "cell"):
        raise ValueError(f"method must be 'tiles' or 'cell', got {method!r}")
    if face not in ("top", "bottom"):
        raise ValueError(f"face must be 'top' or 'bottom', got {face!r}")
    pred = model if isinstance(model, Predictor) else load_predictor(model)
    M = _lateral_supercell(atoms, src)
    if M is not None:
        return _predict_via_supercell(atoms, M, pred, src, face, method=method, stride=stride, batch=batch)
    notes = check_domain(atoms, pred, src, face)
    desc = descriptors.describe_cell(atoms, sigma=pred.sigma, face=face, spacing=pred.spacing)
    window = pred.window_shape
    spec = desc.spec
    if spec.shape[2] != window[2]:
        raise InputError(f"{src}: descriptor has {spec.shape[2]} z points, the model's window {window[2]}")
    spacing = spec.spacing[:2]
    want = pred.spacing
    if np.any(np.abs(spacing / want - 1) > 0.02):
        warnings.warn(
            f"{src}: the cell's grid spacing {np.round(spacing, 4).tolist()} Å differs from the model's "
            f"{want} Å by more than 2%", stacklevel=2
        )
    if stride is not None and not window[0] // 2 <= stride < window[0]:
        raise InputError(f"{src}: stride must be {window[0] // 2}..{window[0] - 1} grid points (half a window to one less than a window), got {stride}")
    t0 = time.perf_counter()
    if method == "tiles":
        rho = tile_predict(desc.values, pred.net, window=window[0], stride=stride, batch=batch)
    else:
        rho = cell_predict(desc.values, pred.net, pad=window[0] // 2)
    seconds = time.perf_counter() - t0
    z_s = float(desc.meta["z_s"])  # in the frame of the face (mirrored for the bottom face)
    meta = {
        "model": pred.name,
        "checkpoint": pred.source,
        "architecture": pred.meta.get("model"),
        "method": method,
        "precision": pred.precision,
        "stride": (stride or default_stride(window[0])) if method == "tiles" else None,
        "face": face,
        "surface_z": z_s,
        "descriptor_sigma": pred.sigma,
        "domain_notes": notes,
        "model_notes": list(pred.notes),
        "predict_seconds": seconds,
        "source": src,
    }
    return Grid(spec, rho[None], ("water",), units="rho/rho_bulk", sigma=pred.meta.get("sigma_target"), meta=meta, atoms=desc.atoms)


# =========================================================================== outputs
def _save(fig, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    return path


def _z_rel(grid: Grid, z_s: float) -> np.ndarray:
    return grid.spec.origin[2] + np.arange(grid.spec.shape[2]) * grid.spec.cell[2, 2] / grid.spec.shape[2] - z_s


def peak_heights(grid: Grid, z_s: float, n: int = 3) -> list[float]:
    """Heights above z_s (Å) of up to ``n`` peaks of the laterally averaged density, between
    0.5 and 10 Å (the hydration layers; the grid's top edge is ignored)."""
    from scipy.signal import find_peaks

    from .afm import HYDRATION_RANGE

    prof = grid.values[0].mean(axis=(0, 1))
    h = _z_rel(grid, z_s)
    peaks, _ = find_peaks(prof, prominence=0.05)
    return [float(h[p]) for p in peaks if 0.5 < h[p] <= HYDRATION_RANGE and h[p] < h[-1] - 1.0][:n]


def _site_for_xz(atoms, z_s: float) -> tuple[float, str]:
    """A y for the xz slice: through the first recorded defect, else the first top Ca."""
    from .structures import defect_sites

    try:
        sites = defect_sites(atoms) if hasattr(atoms, "info") else []
    except InputError:  # an unchecked in-memory Atoms: the slice goes through a Ca instead
        sites = []
    if sites:
        return float(sites[0].position[1]), f"through the {sites[0].species} vacancy"
    sym = np.array(atoms.get_chemical_symbols())
    z = atoms.positions[:, 2]
    top = np.nonzero((sym == "Ca") & (z >= z_s - 1.0))[0]
    if len(top):
        return float(atoms.positions[top[0], 1]), "through a surface Ca"
    return 0.0, ""


def write_outputs(grid: Grid, out_dir: str | Path) -> list[Path]:
    """``water.cube`` (with the atoms), ``water.npz``, ``profile.png``, ``slices.png``, ``xz.png``."""
    from matplotlib.figure import Figure

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written = [grid.write_cube(out / "water.cube"), grid.write_npz(out / "water.npz")]
    z_s = float(grid.meta.get("surface_z", grid.spec.origin[2] + 5.0))
    h = _z_rel(grid, z_s)
    rho = grid.values[0]
    title_model = f"model {grid.meta.get('model', '?')}"

    # --- profile
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(h, rho.mean(axis=(0, 1)), color="C0")
    ax.axhline(1.0, color="0.6", lw=0.8, ls="--", label="bulk")
    ax.axvline(0.0, color="0.3", lw=0.8, label="surface Ca plane")
    peaks = peak_heights(grid, z_s)
    for p in peaks:
        ax.axvline(p, color="C3", lw=0.6, ls=":")
    ax.set_xlabel("height above the surface Ca plane (Å)")
    ax.set_ylabel("laterally averaged water density (rho / rho_bulk)")
    peak_text = ("peaks at " + ", ".join(f"{p:.2f}" for p in peaks) + " Å") if peaks else "no peaks found"
    ax.set_title(f"Predicted hydration layers ({title_model}); {peak_text}", fontsize=9)
    ax.legend(fontsize=8)
    written.append(_save(fig, out / "profile.png"))

    # --- xy slices at the peak heights
    heights = peaks or [2.5]
    nx, ny = grid.spec.shape[:2]
    fi = (np.arange(nx + 1) - 0.5) / nx
    fj = (np.arange(ny + 1) - 0.5) / ny
    F = np.stack(np.meshgrid(fi, fj, indexing="ij"), axis=-1)
    XY = grid.spec.origin[:2] + F @ grid.spec.cell[:2, :2]
    vmax = float(np.percentile(rho[..., h > 0], 99.9)) if np.any(h > 0) else float(rho.max())
    fig = Figure(figsize=(4.6 * len(heights), 4.4), layout="constrained")
    axes = fig.subplots(1, len(heights), squeeze=False)[0]
    atoms = grid.atoms
    sym = np.array(atoms.get_chemical_symbols()) if atoms is not None else np.array([])
    for ax, hh in zip(axes, heights):
        k = int(np.argmin(np.abs(h - hh)))
        mesh = ax.pcolormesh(XY[..., 0], XY[..., 1], rho[:, :, k], cmap="viridis", vmin=0, vmax=vmax, shading="flat")
        if atoms is not None and len(sym):
            top = (sym == "Ca") & (atoms.positions[:, 2] >= z_s - 1.0)
            ax.plot(atoms.positions[top, 0], atoms.positions[top, 1], "o", mfc="none", mec="w", ms=5, label="surface Ca")
        ax.set_aspect("equal")
        ax.set_xlabel("x (Å)")
        ax.set_ylabel("y (Å)")
        ax.set_title(f"h = {h[k]:.2f} Å above the Ca plane", fontsize=9)
    fig.colorbar(mesh, ax=list(axes), label="water density (rho / rho_bulk)")
    fig.suptitle(f"Predicted water density, xy slices ({title_model})", fontsize=10)
    written.append(_save(fig, out / "slices.png"))

    # --- xz slice
    y0, why = _site_for_xz(atoms, z_s) if atoms is not None else (0.0, "")
    frac_b = ((y0 - grid.spec.origin[1]) / grid.spec.cell[1, 1]) % 1.0
    j = int(round(frac_b * ny)) % ny
    row = grid.spec.origin[0] + (np.arange(nx) / nx) * grid.spec.cell[0, 0] + (j / ny) * grid.spec.cell[1, 0]
    step = grid.spec.cell[0, 0] / nx
    x = np.concatenate([row - step / 2, [row[-1] + step / 2]])
    dz = grid.spec.cell[2, 2] / grid.spec.shape[2]
    zedges = np.concatenate([h - dz / 2, [h[-1] + dz / 2]])
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(x, zedges, rho[:, j, :].T, cmap="viridis", vmin=0, vmax=vmax, shading="flat")
    if atoms is not None and len(sym):
        yj = grid.spec.origin[1] + j / ny * grid.spec.cell[1, 1]
        dy = (atoms.positions[:, 1] - yj + 0.5 * grid.spec.cell[1, 1]) % grid.spec.cell[1, 1] - 0.5 * grid.spec.cell[1, 1]
        near = np.abs(dy) < 1.0
        for el, style in (("Ca", dict(mfc="none", mec="w", ms=7)), ("C", dict(mfc="0.2", mec="w", ms=4)), ("O", dict(mfc="r", mec="w", ms=4))):
            m = near & (sym == el) & (atoms.positions[:, 2] - z_s > h[0])
            if m.any():
                xs = row[0] + ((atoms.positions[m, 0] - row[0]) % grid.spec.cell[0, 0])
                ax.plot(xs, atoms.positions[m, 2] - z_s, "o", label=el, **style)
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("height above the surface Ca plane (Å)")
    ax.set_title(f"Predicted water density, xz slice at y = {grid.spec.origin[1] + j / ny * grid.spec.cell[1, 1]:.2f} Å {why}", fontsize=9)
    fig.colorbar(mesh, ax=ax, label="water density (rho / rho_bulk)")
    written.append(_save(fig, out / "xz.png"))
    return written


def predict_file(
    structure: str | Path,
    out_dir: str | Path,
    model: "str | Path | Predictor | None" = None,
    method: str = "tiles",
    face: str = "top",
    format: str | None = None,
    warn: Callable[[str], Any] | None = None,
    stride: int | None = None,
    precision: str | None = "auto",
) -> tuple[Grid, list[Path]]:
    """``hydrolayer predict``: read a structure file, predict, write :func:`write_outputs`.

    Domain warnings are passed to ``warn`` (one line each) instead of the warnings module
    when given. Returns the grid (``grid.meta`` has timings) and the written paths.
    """
    from .structures import read_structure

    atoms = read_structure(structure, format=format)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = model if isinstance(model, Predictor) else load_predictor(model, precision=precision)
        grid = predict_density(atoms, model=pred, method=method, stride=stride, face=face, source=str(structure))
    for w in caught:
        if warn is not None and issubclass(w.category, UserWarning):
            warn(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    grid.meta["load_seconds"] = pred.load_seconds
    return grid, write_outputs(grid, out_dir)


def models_text(card: str | None = None, directory=None) -> str:
    """What ``hydrolayer models`` prints: one entry per shipped model, or one full card."""
    d = Path(directory) if directory is not None else PRETRAINED_DIR
    models = {m.name: m for m in list_models(d)}
    if card is not None:
        if card not in models:
            raise InputError(f"{card}: no such shipped model (shipped: {', '.join(models) or 'none yet'})")
        return models[card].card_text().rstrip()
    if not models:
        return f"no trained models shipped yet ({d} has no .pt files)"
    default = default_model_name(d)
    lines = []
    for name, m in models.items():
        lines.append(f"{name}{' (default)' if name == default else ''}: {m.summary()}")
        lines.append(f"    checkpoint {m.path}")
        lines.append(f"    card       {m.card if m.card else '(missing)'}")
    lines.append("(hydrolayer models --card NAME prints a card)")
    return "\n".join(lines)
