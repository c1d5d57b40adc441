"""Running a trained network: the loaded :class:`Predictor`, its precision, the one batched
inference path (:func:`run_batches`, used by prediction, training's validation and the
evaluation) and the two ways of covering a whole periodic cell (:func:`tile_predict`,
:func:`cell_predict`).

Tiles (the default of ``predict_density``): windows of the training size (32 x 32 points =
10 x 10 Å) are cut from the periodic descriptor of the whole cell (indices wrap, so any cell
size works, smaller than a window too) at a stride of three quarters of a window (24 points,
:func:`default_stride`; 16, half a window, is the denser choice), the network is run on each,
and the windows are blended with :func:`blend_weight`: along each axis a sin^2 ramp over the
overlapping points at each edge and 1 in between. It falls to ~0 at the window edges and sums
to exactly 1 where neighbouring windows overlap (sin^2 + cos^2 = 1); the sum is divided out
anyway for cells that are not a multiple of the stride. Why tiles and not the network once
over a periodically padded cell: the network was trained on isolated 10 x 10 Å windows whose
borders are zero-padded, and its receptive field (92 grid points, about 29 Å) is larger than
a window, so every training voxel saw those borders. Tiling shows the network exactly what
it was trained on and gives most weight to window centres; :func:`cell_predict` (once over
the cell padded periodically by half a window) is seamless by construction but out of the
training distribution, offered for speed and comparison.

Ensembles (:class:`EnsemblePredictor`, loaded from a JSON manifest, see
:mod:`hydrolayer.registry`): every member runs on the same descriptor windows (one descriptor
computation, the windows cut once per batch): :func:`tile_predict` and :func:`cell_predict`
take a list of networks and return one blended prediction per member, (M, NX, NY, NZ).
``EnsemblePredictor.net`` is the members' mean as one network, for code that runs windows
itself (:func:`run_batches`). All members must share descriptor settings (sigma, channels)
and window (shape, spacing); their architectures may differ.

Latent vectors (:func:`window_latents`, :func:`cell_latents`): a window's position in the
network's own feature space, for the out-of-domain score of :mod:`hydrolayer.uncertainty`.
The bottleneck (the encoder's deepest level, 4 x 4 x 8 cells of 2.5 Å for a 32 x 32 x 64
window) is averaged and maximised over its cells from 5 Å below to 10 Å above the surface
plane (:data:`LATENT_HEIGHTS`): the slab's top and the hydration layers, where the surfaces
differ; the bulk water above looks alike on every surface and would only dilute the
difference. The mean says what the window is made of, the maximum catches one odd site (a
vacancy). ``Predictor.latents`` holds the training windows' latents when the model ships
them (``<stem>.latents.npz`` beside a checkpoint, ``"latents"`` in a manifest).

Precision: ``"float32"``, or ``"bfloat16"`` (CPU autocast: convolutions in bfloat16 with
float32 accumulation, output float32), or ``"auto"``: bfloat16 where the CPU runs it natively.
torch is imported only when a model is loaded or run.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from .conventions import SPACING, WINDOW_SHAPE
from .registry import is_ensemble_path, latents_path, read_ensemble, resolve_model
from .util import InputError

__all__ = [
    "MODEL_ELEMENTS",
    "PRECISIONS",
    "Predictor",
    "EnsemblePredictor",
    "load_predictor",
    "load_ensemble",
    "mean_net",
    "bf16_supported",
    "resolve_precision",
    "autocast",
    "run_batches",
    "tile_predict",
    "cell_predict",
    "blend_weight",
    "default_stride",
    "LATENT_HEIGHTS",
    "window_latents",
    "cell_latents",
]

MODEL_ELEMENTS = ("C", "O", "Ca")  # descriptor channels of every hydrolayer model so far
PRECISIONS = ("auto", "float32", "bfloat16")


# =========================================================================== the predictor
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
    latents: dict | None = None  # the training windows' latents (uncertainty.read_latents), if shipped

    @property
    def sigma(self) -> float:
        """Gaussian width (Å) of the descriptor the network was trained on."""
        s = (self.meta.get("descriptor") or {}).get("sigma")
        if s is None:
            from .descriptors import DEFAULT_SIGMA

            return float(DEFAULT_SIGMA)
        return float(s)

    @property
    def window_shape(self) -> tuple[int, int, int]:
        w = self.meta.get("window")
        return tuple(int(v) for v in w["shape"]) if w else tuple(WINDOW_SHAPE)

    @property
    def spacing(self) -> float:
        """Lateral grid spacing of the training windows (Å)."""
        w = self.meta.get("window")
        if w:
            return float(np.linalg.norm(np.asarray(w["cell"], float)[0]) / int(w["shape"][0]))
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

    @property
    def nets(self) -> tuple:
        """The networks to run: this one (an ensemble: its members')."""
        return (self.net,)


@dataclasses.dataclass
class EnsemblePredictor(Predictor):
    """Several loaded :class:`Predictor` members that share descriptor and window (checked by
    :func:`load_ensemble`). ``net`` is their mean as one network; ``nets`` the members' networks;
    ``meta`` the first member's metadata plus ``"ensemble"`` (names, sources, note)."""

    members: list = dataclasses.field(default_factory=list)

    @property
    def nets(self) -> tuple:
        return tuple(m.net for m in self.members)

    @property
    def training_surfaces(self) -> list[str] | None:
        """The union of the members' training surfaces (None if one does not record them)."""
        per = [m.training_surfaces for m in self.members]
        if any(s is None for s in per):
            return None
        return list(dict.fromkeys(s for surfaces in per for s in surfaces))


def load_predictor(
    model: str | Path | None = None,
    directory=None,
    threads: int | None = None,
    optimise: bool = True,
    precision: str | None = "auto",
) -> Predictor:
    """Load a shipped model by name, a checkpoint by path, or the default shipped model.

    ``optimise``: fold batch norms into the convolutions and use the channels-last layout
    (same predictions to ~1e-6, faster on CPU). ``precision``: ``"auto"`` (default) runs the
    convolutions in bfloat16 where the CPU has native support (the density moves by ~1e-3
    rho/rho_bulk on average, see benchmarks/RESULTS.md), else in float32; ``"float32"`` or
    ``"bfloat16"`` force one (the evaluation uses float32)."""
    precision = resolve_precision(precision)
    path = resolve_model(model, directory)
    if is_ensemble_path(path):
        return load_ensemble(path, threads=threads, optimise=optimise, precision=precision)
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
        net = autocast(net)
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    for n in notes:
        warnings.warn(n, stacklevel=2)
    return Predictor(
        net,
        meta,
        name=path.stem,
        source=str(path),
        load_seconds=time.perf_counter() - t0,
        notes=notes,
        precision=precision,
        latents=_read_reference(latents_path(path), 1) if latents_path(path).is_file() else None,
    )


def _read_reference(path: Path, members: int) -> dict:
    """The training latents of ``path`` (``uncertainty.read_latents``), checked to have one
    set per member: one-line :class:`InputError` otherwise."""
    from .uncertainty import read_latents

    ref, _ = read_latents(path)
    if len(ref["latents"]) != members:
        raise InputError(f"{path}: training latents of {len(ref['latents'])} members, the model has {members}")
    return ref


def load_ensemble(
    path: str | Path, threads: int | None = None, optimise: bool = True, precision: str | None = "auto"
) -> EnsemblePredictor:
    """Load every member of the ensemble manifest ``path`` (:func:`registry.read_ensemble`) as
    :func:`load_predictor` would, and check that they share descriptor sigma (Å), channels,
    window shape and spacing (Å): one-line :class:`InputError` otherwise."""
    manifest = read_ensemble(path)
    members = [load_predictor(m, threads=threads, optimise=optimise, precision=precision) for m in manifest.members]
    first = members[0]

    def key(p: Predictor):
        return p.sigma, p.elements, p.window_shape, round(p.spacing, 6)

    for m in members[1:]:
        if key(m) != key(first):
            raise InputError(
                f"{manifest.path}: members do not match: {m.source} has descriptor sigma {m.sigma} Å, channels "
                f"{','.join(m.elements)}, window {m.window_shape} at {m.spacing:.4f} Å; {first.source} has "
                f"{first.sigma} Å, {','.join(first.elements)}, {first.window_shape} at {first.spacing:.4f} Å"
            )
    meta = dict(
        first.meta,
        ensemble={"members": [m.name for m in members], "sources": [m.source for m in members], "note": manifest.note},
    )
    notes = list(dict.fromkeys(n for m in members for n in m.notes))
    return EnsemblePredictor(
        mean_net([m.net for m in members]),
        meta,
        name=manifest.name,
        source=str(manifest.path),
        load_seconds=sum(m.load_seconds for m in members),
        notes=notes,
        precision=first.precision,
        members=members,
        latents=_read_reference(manifest.latents, len(members)) if manifest.latents else None,
    )


def mean_net(nets):
    """One network that returns the mean of ``nets``' outputs (an ensemble's mean)."""
    return _mean_class()(nets).eval()


@functools.cache
def _mean_class():
    """The mean-of-networks class, defined once on first use (torch imported only when needed)."""
    from torch import nn

    class MeanNet(nn.Module):
        def __init__(self, nets):
            super().__init__()
            self.nets = nn.ModuleList(nets)

        def forward(self, x):
            out = self.nets[0](x)
            for net in self.nets[1:]:
                out = out + net(x)
            return out / len(self.nets)

    return MeanNet


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


# =========================================================================== precision
def bf16_supported() -> bool:
    """Whether this CPU runs oneDNN bfloat16 convolutions natively (AVX512-BF16 or AMX);
    elsewhere bfloat16 is emulated and slower than float32.

    oneDNN's own check (``_is_mkldnn_bf16_supported``) also says yes on AVX-512 CPUs without
    BF16 instructions, where it emulates them: there a 3D U-Net step ran 2.1x slower in
    bfloat16 than in float32 (benchmarks/RESULTS.md, 2026-12-01). So on Linux the CPU's own
    flags decide (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo); elsewhere oneDNN's check."""
    try:
        import torch

        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
    except Exception:  # private torch API: any failure means "do not use it"
        return False
    flags = cpu_flags()
    return True if flags is None else bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def resolve_precision(precision: str | None) -> str:
    """``"auto"`` (or None) -> ``"bfloat16"`` where the CPU supports it natively, else ``"float32"``."""
    precision = precision or "auto"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if bf16_supported() else "float32"
    return precision


def autocast(net):
    """``net`` wrapped to run under CPU autocast to bfloat16 (weights stay float32;
    convolutions compute in bfloat16 with float32 accumulation), returning float32; in eval mode."""
    return _bfloat16_class()(net).eval()


@functools.cache
def _bfloat16_class():
    """The wrapper class, defined once on first use (torch is imported only when needed)."""
    from torch import nn

    class BFloat16Net(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            import torch

            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = self.net(x)
            return y.float()

    return BFloat16Net


# =========================================================================== batched inference
def run_batches(net: Callable, windows: np.ndarray, batch: int, attention: bool = False):
    """Run ``net`` over (N, C, X, Y, Z) windows in batches of ``batch``: returns (N, X, Y, Z)
    float32 (the first output channel). The one batched-inference path of the package
    (prediction, training's validation, the evaluation): inference mode, float32 input in the
    channels-last memory layout.

    ``attention=True`` (an :class:`~hydrolayer.models.AttentionUNet3D`): returns
    ``(pred, maps)`` with the attention coefficients of each pooling scale, (N, x, y, z) each.

    A lone window is run as a batch of two (itself twice): PyTorch's CPU convolution picks
    its slow reference kernel for batch 1 at window size (the oneDNN kernel needs N > 1 or a
    larger plane), and two windows through oneDNN cost ~3x less than one through the other.
    """
    import torch

    outs, atts = [], []
    with torch.inference_mode():
        for s in range(0, len(windows), batch):
            part = np.ascontiguousarray(windows[s : s + batch], dtype=np.float32)
            lone = len(part) == 1 and part.shape[2] * part.shape[3] * part.shape[1] <= 20480
            x = torch.from_numpy(np.concatenate([part, part]) if lone else part)
            x = x.contiguous(memory_format=torch.channels_last_3d)
            keep = slice(0, 1 if lone else len(part))
            if attention:
                y, maps = net(x, return_attention=True)
                atts.append([m[keep, 0].detach().cpu().numpy() for m in maps])
            else:
                y = net(x)
            outs.append(y[keep, 0].detach().cpu().numpy())
    pred = np.concatenate(outs) if outs else np.zeros((0,) + windows.shape[2:], np.float32)
    if not attention:
        return pred
    return pred, [np.concatenate([a[k] for a in atts]) for k in range(len(atts[0]))] if atts else []


# =========================================================================== whole cells
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
    the same MAE against MD (benchmarks/RESULTS.md)."""
    return (3 * int(window)) // 4


def _offsets(n: int, window: int, stride: int) -> np.ndarray:
    """Window starts along an axis of ``n`` periodic points: about every ``stride`` points,
    spread evenly so that the same cell always gets the same starts."""
    k = max(1, -(-n // stride))  # ceil
    if n <= window and k < 2:
        k = 2 if n > 1 else 1
    return np.array(sorted({int(round(m * n / k)) % n for m in range(k)}))


def tile_predict(
    desc: np.ndarray, net: Callable, window: int = 32, stride: int | None = None, batch: int = 8
) -> np.ndarray:
    """Blend window predictions over a periodic descriptor ``desc`` (C, NX, NY, NZ).

    Windows of ``window`` x ``window`` lateral points at about ``stride`` (default
    :func:`default_stride`: three quarters of a window) are cut with periodic wrap, run
    through ``net`` in batches and blended with :func:`blend_weight`. Returns (NX, NY, NZ)
    float32. ``net`` a list or tuple of networks (an ensemble's members): each runs on the
    same windows, returns (M, NX, NY, NZ), each member's exactly as it would be alone.
    """
    nets = list(net) if isinstance(net, (list, tuple)) else [net]
    desc = np.asarray(desc, dtype=np.float32)
    _, nx, ny, nz = desc.shape
    stride = stride or default_stride(window)
    if not window // 2 <= stride < window:
        raise ValueError(f"stride must be in {window // 2}..{window - 1} points, got {stride}")
    ox, oy = _offsets(nx, window, stride), _offsets(ny, window, stride)
    w1 = blend_weight(window, window - stride).astype(np.float32)
    w2 = w1[:, None] * w1[None, :]
    acc = np.zeros((len(nets), nx, ny, nz), np.float32)
    wsum = np.zeros((nx, ny), np.float32)
    starts = [(i0, j0) for i0 in ox for j0 in oy]
    dup = window > nx or window > ny  # a window wraps onto itself: accumulate with add.at
    for s in range(0, len(starts), batch):
        idx = [((i0 + np.arange(window)) % nx, (j0 + np.arange(window)) % ny) for i0, j0 in starts[s : s + batch]]
        win = np.stack([desc[:, ii][:, :, jj] for ii, jj in idx])
        for k, one in enumerate(nets):
            for (ii, jj), p in zip(idx, run_batches(one, win, batch)):
                sel = np.ix_(ii, jj)
                if dup:
                    np.add.at(acc[k], sel, w2[..., None] * p)
                else:
                    acc[k][sel] += w2[..., None] * p
        for ii, jj in idx:
            if dup:
                np.add.at(wsum, np.ix_(ii, jj), w2)
            else:
                wsum[np.ix_(ii, jj)] += w2
    out = acc / wsum[None, ..., None]
    return out if isinstance(net, (list, tuple)) else out[0]


def cell_predict(desc: np.ndarray, net: Callable, pad: int = 16, multiple: int = 8) -> np.ndarray:
    """The network once over the whole cell, padded periodically by ``pad`` points laterally
    (and up to a multiple of ``multiple``), cropped back. Returns (NX, NY, NZ) float32.

    Every point sees at least ``pad`` points of real periodic context on each side and the
    network's zero padding beyond that (the receptive field of the U-Net is larger), so
    periodicity and shift symmetry are exact only as far as the network ignores context
    beyond the margin; the tiles method has no such limit (each window is what the network
    was trained on). Memory grows with the cell area (one activation map of the whole padded
    cell per layer), while tiles need a fixed amount per batch of windows. ``net`` a list or
    tuple of networks: (M, NX, NY, NZ), one per network, as in :func:`tile_predict`."""
    desc = np.asarray(desc, dtype=np.float32)
    _, nx, ny, nz = desc.shape
    if nz % multiple:
        raise ValueError(f"the descriptor has {nz} points along z; need a multiple of {multiple}")
    px = pad + (-(nx + 2 * pad)) % multiple
    py = pad + (-(ny + 2 * pad)) % multiple
    big = np.pad(desc, ((0, 0), (pad, px), (pad, py), (0, 0)), mode="wrap")
    nets = list(net) if isinstance(net, (list, tuple)) else [net]
    out = np.stack([run_batches(one, big[None], 1)[0][pad : pad + nx, pad : pad + ny] for one in nets])
    return out if isinstance(net, (list, tuple)) else np.ascontiguousarray(out[0])


# =========================================================================== latent vectors
LATENT_HEIGHTS = (-5.0, 10.0)  # Å above z_s: the bottleneck cells pooled into a window's latent vector


def window_latents(net: Callable, windows: np.ndarray, batch: int = 8, heights=LATENT_HEIGHTS) -> np.ndarray:
    """The latent vector of each (N, C, X, Y, Z) window: the encoder's deepest level (the
    U-Net's bottleneck, 1/8 of the window per axis) averaged and maximised over its cells
    whose centre lies ``heights`` (Å above the surface plane; default the slab's top 5 Å and
    the hydration layers, not the bulk water above, which looks the same everywhere).
    Returns (N, 2 D) float32, D the bottleneck's channels: the means, then the maxima.
    A bfloat16-wrapped network is run in float32 (its wrapped network)."""
    import torch
    import torch.nn.functional as F

    core = getattr(net, "net", net)  # the bfloat16 wrapper (autocast): its float32 network
    levels = len(core.enc)
    outs = []
    with torch.inference_mode():
        for s in range(0, len(windows), batch):
            part = np.ascontiguousarray(windows[s : s + batch], dtype=np.float32)
            h = torch.from_numpy(part).contiguous(memory_format=torch.channels_last_3d)
            for i, block in enumerate(core.enc):
                h = block(h)
                if i < levels - 1:
                    h = F.max_pool3d(h, 2)
            h = h[..., _latent_cells(windows.shape[-1], h.shape[-1], heights)]
            outs.append(torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1).float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def _latent_cells(nz: int, nz_deep: int, heights) -> np.ndarray:
    """Indices of the bottleneck's z cells whose centre height (Å above z_s) is in ``heights``."""
    from .conventions import window_heights

    h = window_heights()[:nz].reshape(nz_deep, -1).mean(axis=1)
    keep = np.nonzero((h >= heights[0]) & (h <= heights[1]))[0]
    if not len(keep):
        raise ValueError(f"no bottleneck cell between {heights[0]} and {heights[1]} Å")
    return keep


def cell_latents(desc: np.ndarray, nets, starts, window: int = 32, batch: int = 8) -> np.ndarray:
    """Latent vectors (M, n, 2 D) of the windows of ``window`` x ``window`` lateral points
    starting at grid indices ``starts`` [(i0, j0), ...] of the periodic descriptor ``desc``
    (C, NX, NY, NZ), one row per network of ``nets`` (:func:`window_latents`)."""
    desc = np.asarray(desc, dtype=np.float32)
    _, nx, ny, _ = desc.shape
    idx = [((i0 + np.arange(window)) % nx, (j0 + np.arange(window)) % ny) for i0, j0 in starts]
    win = np.stack([desc[:, ii][:, :, jj] for ii, jj in idx])
    return np.stack([window_latents(net, win, batch) for net in nets])
