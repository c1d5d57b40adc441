"""3D U-Net and attention U-Net: descriptor window (C, O, Ca densities) -> water density.

Both networks share the constructor words (``in_channels``, ``out_channels``, ``channels``,
``kernel_size``, ``norm``, ``dropout``) and keep them in ``model.hparams``, so one
checkpoint format rebuilds either (:func:`save_checkpoint`, :func:`load_model`).

Architecture (the paper's, Ranawat et al., Nanoscale Adv. 2021): an encoder of four levels
with widths ``channels`` and three 2x max-pooling steps (three pooling scales), a decoder
with transposed-convolution up-sampling and a skip connection at each of the three scales,
a 1x1x1 output convolution and a softplus so the density is never negative. The attention
U-Net gates each skip connection with an additive attention gate (Oktay et al. 2018,
arXiv:1804.03999): ``a = sigmoid(psi(relu(W_x x + W_g g)))``, with ``g`` the up-sampled
decoder signal at the skip's resolution; ``a`` is returned per scale on request
(``a0`` at full resolution, ``a1`` at 1/2, ``a2`` at 1/4).

Fully convolutional: any input whose three spatial sizes are divisible by 8 works, e.g. the
(N, 3, 32, 32, 64) training window or a whole surface (N, 3, 32 k, 32 m, 64) for prediction.
Convolutions pad with zeros. ``norm="batch"`` (the default) uses running statistics at
evaluation time, so a prediction does not depend on the size of the input.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .util import InputError, atomic_output

__all__ = ["UNet3D", "AttentionUNet3D", "MODELS", "build_model", "save_checkpoint", "load_model", "model_name"]

NORMS = ("batch", "none")


def _check_hparams(in_channels, out_channels, channels, kernel_size, norm, dropout) -> dict:
    """Validate the shared constructor words; return them as plain JSON-able values."""
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    try:
        chans = tuple(channels)
    except TypeError:
        raise ValueError(f"channels must be a sequence of 4 positive integers, got {channels!r}") from None
    if len(chans) != 4 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in chans):
        raise ValueError(
            f"channels must be 4 positive integers (one per level: three pooling scales + bottleneck), got {channels!r}"
        )
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if any(chans[i + 1] < chans[i] for i in range(3)):
        warnings.warn(f"channels {chans} shrink with depth; a U-Net usually widens as it pools", stacklevel=3)
    return {
        "in_channels": int(in_channels),
        "out_channels": int(out_channels),
        "channels": list(chans),
        "kernel_size": int(kernel_size),
        "norm": norm,
        "dropout": float(dropout),
    }


class _ConvBlock(nn.Sequential):
    """(conv -> norm -> ReLU) x 2, optional dropout at the end."""

    def __init__(self, cin, cout, k, norm, dropout):
        layers: list[nn.Module] = []
        for a, b in ((cin, cout), (cout, cout)):
            layers.append(nn.Conv3d(a, b, k, padding=k // 2, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm3d(b))
            layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        super().__init__(*layers)


class _AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) at one scale; returns (x * a, a)."""

    def __init__(self, x_channels, g_channels, inter_channels, norm):
        super().__init__()
        self.wx = nn.Conv3d(x_channels, inter_channels, 1, bias=False)
        self.wg = nn.Conv3d(g_channels, inter_channels, 1, bias=True)
        psi: list[nn.Module] = [nn.Conv3d(inter_channels, 1, 1, bias=True)]
        if norm == "batch":
            psi.append(nn.BatchNorm3d(1))
        self.psi = nn.Sequential(*psi)

    def forward(self, x, g):
        a = torch.sigmoid(self.psi(F.relu(self.wx(x) + self.wg(g))))
        return x * a, a


class UNet3D(nn.Module):
    """3D U-Net with three pooling scales and skip connections; non-negative output.

    Parameters: ``in_channels`` (3: C, O, Ca), ``out_channels`` (1: water), ``channels``
    (widths of the four levels, e.g. ``(16, 32, 64, 128)``), ``kernel_size`` (odd),
    ``norm`` ("batch" or "none"), ``dropout`` (after each decoder block, in [0, 1)).
    Input (N, in_channels, X, Y, Z) with X, Y, Z divisible by 8 -> (N, out_channels, X, Y, Z)
    in rho/rho_bulk.
    """

    name = "unet"
    attention = False

    def __init__(
        self, in_channels=3, out_channels=1, channels=(16, 32, 64, 128), kernel_size=3, norm="batch", dropout=0.0
    ):
        super().__init__()
        self.hparams = _check_hparams(in_channels, out_channels, channels, kernel_size, norm, dropout)
        c = self.hparams["channels"]
        k = kernel_size
        self.enc = nn.ModuleList(
            [_ConvBlock(in_channels if i == 0 else c[i - 1], c[i], k, norm, 0.0) for i in range(4)]
        )
        self.up = nn.ModuleList([nn.ConvTranspose3d(c[i + 1], c[i], 2, stride=2) for i in range(3)])
        self.dec = nn.ModuleList([_ConvBlock(2 * c[i], c[i], k, norm, dropout) for i in range(3)])
        if self.attention:
            self.gates = nn.ModuleList([_AttentionGate(c[i], c[i], max(1, c[i] // 2), norm) for i in range(3)])
        self.head = nn.Conv3d(c[0], out_channels, 1)
        # start at the bulk density: softplus(log(e - 1)) = 1, most of a window is bulk water
        nn.init.constant_(self.head.bias, math.log(math.e - 1))

    def _check_input(self, x):
        if x.ndim != 5:
            raise ValueError(f"input must be 5D (N, C, X, Y, Z), got shape {tuple(x.shape)}")
        if x.shape[1] != self.hparams["in_channels"]:
            raise ValueError(
                f"input has {x.shape[1]} channels, the model expects in_channels={self.hparams['in_channels']}"
            )
        if any(s % 8 for s in x.shape[2:]):
            raise ValueError(f"input spatial shape {tuple(x.shape[2:])} must be divisible by 8 (three pooling scales)")

    def forward(self, x, return_attention: bool = False):
        self._check_input(x)
        if return_attention and not self.attention:
            raise ValueError("return_attention=True needs an AttentionUNet3D")
        skips = []
        h = x
        for i in range(4):
            h = self.enc[i](h)
            if i < 3:
                skips.append(h)
                h = F.max_pool3d(h, 2)
        att: list[torch.Tensor] = [None, None, None]  # type: ignore[list-item]
        for i in (2, 1, 0):
            g = self.up[i](h)
            s = skips[i]
            if self.attention:
                s, att[i] = self.gates[i](s, g)
            h = self.dec[i](torch.cat([s, g], dim=1))
        y = F.softplus(self.head(h))
        if return_attention:
            return y, att
        return y


class AttentionUNet3D(UNet3D):
    """:class:`UNet3D` with additive attention gates on the three skip connections.

    ``forward(x, return_attention=True)`` returns ``(y, [a0, a1, a2])``: the attention
    coefficients in [0, 1], shape (N, 1, X/2^s, Y/2^s, Z/2^s) at scale s (a0 at full size).
    """

    name = "attention-unet"
    attention = True


MODELS = {"unet": UNet3D, "attention-unet": AttentionUNet3D}


def build_model(name: str, **kwargs) -> UNet3D:
    """A model by its registry name (``"unet"`` or ``"attention-unet"``)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}") from None
    return cls(**kwargs)


def _unwrap(model):
    return getattr(model, "module", model)  # DistributedDataParallel


def model_name(model) -> str:
    return _unwrap(model).name


def _plain(obj):
    """JSON round trip: numpy scalars/arrays become Python numbers/lists (weights_only-safe)."""

    def default(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"checkpoint metadata must be JSON-serialisable, got {type(o).__name__}")

    return json.loads(json.dumps(obj, default=default))


def checkpoint_payload(model, extra: dict | None = None) -> dict:
    """The checkpoint dictionary: ``state_dict`` + ``model`` + ``kwargs`` + ``extra`` + ``version``."""
    from . import __version__

    m = _unwrap(model)
    payload: dict[str, Any] = {"model": m.name, "kwargs": _plain(m.hparams)}
    payload.update(_plain(dict(extra or {})))
    payload["version"] = __version__
    payload["state_dict"] = {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
    return payload


def save_checkpoint(path, model, extra: dict | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (never a half-written file).

    The file holds ``state_dict`` plus ``{"model": "unet"|"attention-unet", "kwargs": {...},
    "version": hydrolayer.__version__}`` and everything in ``extra`` (expected:
    ``"descriptor": {"sigma": ...}``, ``"window": GridSpec.to_dict()``, ``"sigma_target"``),
    all plain Python types so that ``torch.load(..., weights_only=True)`` reads it.
    """
    path = Path(path)
    payload = checkpoint_payload(model, extra)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_model(path, map_location="cpu"):
    """Rebuild the model of a checkpoint: ``(model in eval mode, meta)``.

    ``meta`` is the checkpoint dictionary without the ``state_dict``. Loaded with
    ``weights_only=True``. A checkpoint from another package version loads with a warning.
    """
    from . import __version__

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # garbled or foreign file
        raise InputError(f"{path}: not a readable hydrolayer checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or not {"model", "kwargs", "state_dict"} <= set(ckpt):
        raise InputError(f"{path}: not a hydrolayer checkpoint (needs model, kwargs, state_dict)")
    if ckpt["model"] not in MODELS:
        raise InputError(f"{path}: unknown model {ckpt['model']!r} (known: {', '.join(sorted(MODELS))})")
    kwargs = dict(ckpt["kwargs"])
    if "channels" in kwargs:
        kwargs["channels"] = tuple(kwargs["channels"])
    try:
        model = MODELS[ckpt["model"]](**kwargs)
        model.load_state_dict(ckpt["state_dict"])
    except (ValueError, TypeError, RuntimeError) as err:
        raise InputError(f"{path}: checkpoint does not match its model ({err})") from None
    if ckpt.get("version") != __version__:
        warnings.warn(f"{path}: written by hydrolayer {ckpt.get('version')}, this is {__version__}", stacklevel=2)
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model, meta
