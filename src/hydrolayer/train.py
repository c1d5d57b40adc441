"""Training: :func:`fit` a U-Net or attention U-Net on the simulation database.

Run directory (``--out RUN``)::

    config.json          the resolved TrainConfig (a resumed run reads it back)
    split.json           train/val/test unique ids + the named test surfaces (data.make_split)
    baseline.json        height-only baseline: mean training target profile along z
    <loss>/checkpoint.pt training state after the last finished epoch (model, Adam, LR
                         schedule, early-stopping counters, torch RNG, metrics history)
    <loss>/best.pt       the best epoch on validation MAE (models.save_checkpoint format)
    <loss>/metrics.jsonl one JSON line per epoch (train loss, val MAE, lr, windows/s, ...)
    model.pt             the better of the trained losses on validation MAE
    summary.json         best validation MAE per loss and which one was kept
    cache/               the per-row window bank (data.build_bank), unless cache_dir is set

``loss: compare`` (the default) trains the same initial network twice, with L1 (the paper)
and with L2 (MSE) on the same windows, and keeps the better on validation MAE: with noisy
targets L1 learns the median and L2 the mean. ``loss: l1+l2`` trains once on
L1 + ``l2_weight`` x MSE (:func:`loss_function`): the mean's pull on the high first-layer
maxima that L1 alone under-fills, with L1's robustness elsewhere (benchmarks/RESULTS.md); ``loss:
l1+l2-layer`` uses the squared error in the first layer's planes only and L1 elsewhere.
``loss: l2+log`` adds to the MSE ``log_weight`` x the MSE of ln(rho + 0.1) (``LOG_EPS``): the
density's squared error is ruled by the first layer's maxima (tens of rho_bulk on 0.1 Å
targets), while AFM maps are made of ln(rho) (W = -kT ln rho) at 2.5-5 Å, where the density's
lateral contrast is a few tenths of rho_bulk. ``loss: l2+df`` adds ``df_weight`` x the squared
error of what the AFM matcher compares (:func:`df_pattern`): -d²/dz² ln rho, the
frequency-shift-like map of the solvent-tip force up to kT, blurred laterally like a tip and
with each plane's mean taken out, in the planes 2-6 Å above the surface (``DF_BAND``).
Adam, ReduceLROnPlateau on the validation MAE,
early stopping after ``patience`` epochs without improvement. Every epoch is a checkpoint;
``resume=True`` continues exactly (same split, windows, optimiser state, RNG state).

Ensembles (:func:`fit_ensemble`, ``hydrolayer train --ensemble N [--bootstrap]``): N
ordinary runs ``RUN/member-<k>/`` one after another, member k with seed ``seed + k`` and,
with ``bootstrap``, its own resample of the training simulations (by simulation, with
replacement, as many as the split has; a simulation drawn twice weighs twice); validation
and test simulations are the same for every member (``RUN/split.json``; the bootstrap splits
in ``RUN/splits/``). ``RUN/ensemble-plan.json`` holds the settings, ``RUN/ensemble.json`` (the
manifest ``hydrolayer predict --model`` takes) is written when every member is done; a
killed ensemble resumes member by member (``resume=True``). One process (not under torchrun).

Several processes: launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the
same command uses DistributedDataParallel with the gloo backend (CPU); every global batch
is cut into one share per process, so the result matches one process with the same global
batch (up to floating-point summation order and BatchNorm statistics).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .conventions import WINDOW_SHAPE, WINDOW_SIZE, Z_BELOW, first_layer_planes
from .util import InputError, atomic_output

__all__ = [
    "TrainConfig",
    "TrainState",
    "Training",
    "CheckpointIO",
    "FitContext",
    "load_config",
    "fit",
    "validation_score",
    "checkpoint_extra",
    "check_db",
    "d4",
    "LOSSES",
    "MIXED_LOSS",
    "LAYER_LOSS",
    "LOG_LOSS",
    "DF_LOSS",
    "df_pattern",
    "loss_function",
    "fit_ensemble",
    "is_ensemble_run",
    "bootstrap_split",
    "ENSEMBLE_PLAN",
]

LOSSES = ("l1", "l2")  # what loss: compare trains and compares
MIXED_LOSS = "l1+l2"  # L1 + l2_weight * MSE, one network
LAYER_LOSS = "l1+l2-layer"  # L1, but l2_weight * squared error in the first layer (conventions.FIRST_LAYER)
LOG_LOSS = "l2+log"  # MSE + log_weight * MSE of ln(rho + LOG_EPS)
LOG_EPS = 0.1  # rho/rho_bulk: below it (inside the slab, the gap under the first layer) ln hardly counts
DF_LOSS = "l2+df"  # MSE + df_weight * squared error of df_pattern (what the AFM matcher compares)
DF_BAND = (2.0, 6.0)  # Å above the surface plane: the match trials' heights (2.5-5 Å) and a margin
DF_BLUR = 0.5  # Å: the lateral Gaussian of df_pattern (the match trials' tip blur is 0.3-0.7 Å)
ENSEMBLE_PLAN = "ensemble-plan.json"  # in an ensemble's run folder: members, bootstrap, config, splits


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on (lengths in Å)."""

    model: str = "unet"  # "unet" or "attention-unet"
    channels: tuple = (16, 32, 64, 128)  # widths of the four levels
    kernel_size: int = 3
    norm: str = "batch"  # "batch" or "none"
    dropout: float = 0.0
    loss: str = "compare"  # "l1", "l2", "l1+l2" (mixed), "l1+l2-layer", "l2+log", "l2+df" or "compare" (l1 and l2; keep the better)
    l2_weight: float = 1.0  # losses "l1+l2" and "l1+l2-layer": weight of the squared-error term
    log_weight: float = 1.0  # loss "l2+log": weight of the squared error of ln(rho + LOG_EPS)
    df_weight: float = 1.0  # loss "l2+df": weight of the squared error of df_pattern
    epochs: int = 60
    batch_size: int = 4  # global batch (split across torchrun processes)
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0
    lr_factor: float = 0.5  # ReduceLROnPlateau factor on validation MAE
    lr_patience: int = 3  # epochs without improvement before the LR drops
    patience: int = 10  # early stopping: epochs without a better validation MAE
    windows_per_interface: int = 16  # random windows per slab face per epoch
    symmetry: bool = True  # random lateral reflections / 90 degree turns of each window (D4, see below)
    sigma: float | None = None  # descriptor Gaussian width; None: descriptors.DEFAULT_SIGMA
    sigma_target: float | None = None  # target smoothing; None: data.DEFAULT_SIGMA_TARGET (0.4)
    seed: int = 0  # model init, window offsets, dropout
    split_seed: int | None = None  # None: seed
    split_fractions: tuple = (0.7, 0.2, 0.1)  # train/val/test of the pool, by simulation (test 0: see data.make_split)
    split_file: str | None = None  # use this split.json (e.g. an earlier run's) instead of making one
    train_surfaces: tuple = ("calcite-104",)
    cache_dir: str | None = None  # None: RUN/cache
    grids_dir: str | None = None  # the database's grid folder if not beside it
    max_val_windows: int | None = None  # cap validation windows (speed), None: all
    threads: int | None = None  # torch CPU threads per process; None: torch's default
    precision: str = (
        "float32"  # training forward pass: "float32" or "bfloat16" (CPU autocast; validation stays float32)
    )
    init_from: str | None = (
        None  # fine-tune: start from this checkpoint's weights (a shipped name or .pt; same network)
    )

    def __post_init__(self):
        from .models import MODELS

        self.channels = tuple(int(c) for c in self.channels)
        self.train_surfaces = tuple(self.train_surfaces)
        try:
            self.split_fractions = tuple(float(f) for f in self.split_fractions)
        except (TypeError, ValueError):
            raise ValueError(
                f"split_fractions must be three numbers (train, val, test), got {self.split_fractions!r}"
            ) from None
        f = self.split_fractions
        if len(f) != 3 or min(f) < 0 or f[0] <= 0 or f[1] <= 0 or abs(sum(f) - 1) > 1e-6:
            raise ValueError(
                f"split_fractions must be three numbers >= 0 summing to 1 with train and val > 0, got {self.split_fractions!r}"
            )
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.loss not in (*LOSSES, MIXED_LOSS, LAYER_LOSS, LOG_LOSS, DF_LOSS, "compare"):
            raise ValueError(
                f"loss must be 'l1', 'l2', 'l1+l2', 'l1+l2-layer', 'l2+log', 'l2+df' or 'compare', got {self.loss!r}"
            )
        for name in ("l2_weight", "log_weight", "df_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in ("epochs", "batch_size", "windows_per_interface", "patience", "lr_patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "lr_factor"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {self.precision!r}")
        if self.sigma is not None and not self.sigma > 0:
            raise ValueError(f"sigma must be positive, got {self.sigma!r}")
        if self.sigma_target is not None and self.sigma_target < 0:
            raise ValueError(f"sigma_target must be >= 0, got {self.sigma_target!r}")

    @property
    def losses(self) -> tuple[str, ...]:
        return LOSSES if self.loss == "compare" else (self.loss,)

    def model_kwargs(self) -> dict:
        return dict(channels=self.channels, kernel_size=self.kernel_size, norm=self.norm, dropout=self.dropout)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        d["train_surfaces"] = list(self.train_surfaces)
        d["split_fractions"] = list(self.split_fractions)
        return d


def load_config(path=None, **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML (or JSON) file plus keyword overrides (None: keep)."""
    values: dict[str, Any] = {}
    if path is not None:
        import yaml

        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: a config file must be a mapping of TrainConfig fields")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(
            f"{path or 'config'}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    try:
        return TrainConfig(**values)
    except (ValueError, TypeError) as err:
        raise InputError(f"{path or 'config'}: {err}") from None


# ------------------------------------------------------------------ distributed helpers
class _Dist:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.active = False

    def init(self):
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")
            self.active = True

    def barrier(self):
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def close(self):
        if self.active:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
            self.active = False


# ------------------------------------------------------------------ helpers
def check_db(db) -> None:
    """A database path that does not exist is a user error (ase.db would create an empty one);
    a missing index beside its ``rows/`` folder is fine (``store.connect`` builds it)."""
    from .store import database_exists

    if not database_exists(db):
        raise InputError(f"{db}: database not found")


def d4(arr: np.ndarray, ops) -> np.ndarray:
    """Apply one of the 8 symmetry operations of a square window to each window of ``arr``
    (N, C, X, Y, Z): op & 1 reflects x, op & 2 reflects y, op & 4 swaps x and y.

    A valid augmentation: the force field is achiral and isotropic in the surface plane, so
    a reflected or turned surface has the reflected or turned water density (descriptor and
    target are transformed together; z is untouched).
    """
    ops = np.asarray(ops)
    if not ops.any():
        return arr
    out = np.empty_like(arr)
    for n, op in enumerate(ops):
        w = arr[n]
        if op & 1:
            w = w[:, ::-1]
        if op & 2:
            w = w[:, :, ::-1]
        if op & 4:
            w = w.transpose(0, 2, 1, 3)
        out[n] = w
    return out


def _log(msg: str, rank: int = 0):
    if rank == 0:
        print(msg, file=sys.stderr, flush=True)


def _write_json(path: Path, obj):
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


def _write_jsonl(path: Path, records):
    with atomic_output(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def window_spec_dict() -> dict:
    """The GridSpec of a window, origin relative to (x0, y0, z_s)."""
    from .grids import GridSpec

    return GridSpec.orthogonal(WINDOW_SIZE, WINDOW_SHAPE, origin=(0.0, 0.0, -Z_BELOW)).to_dict()


def checkpoint_extra(
    cfg: TrainConfig, loss: str, db=None, split: dict | None = None, baseline: dict | None = None
) -> dict:
    """Checkpoint metadata beside the weights. ``training`` carries the split (unique ids)
    and the height-only baseline so that a checkpoint alone can be evaluated."""
    from .data import DEFAULT_SIGMA_TARGET

    return {
        "descriptor": {"sigma": cfg.sigma, "channels": ["C", "O", "Ca"], "units": "A^-3"},
        "window": window_spec_dict(),
        "window_origin": "relative to (x0, y0, z_s): z_s is the surface plane of the face",
        "sigma_target": DEFAULT_SIGMA_TARGET if cfg.sigma_target is None else cfg.sigma_target,
        "output_units": "rho/rho_bulk",
        "loss": loss,
        "train_config": cfg.to_dict(),
        "training": {
            "surfaces": list(cfg.train_surfaces),
            "db": None if db is None else str(db),
            "simulations": None if split is None else len(split["train"]),
            "held_out": None if split is None else sorted(split["named"]),
            "split": None
            if split is None
            else {k: split[k] for k in ("seed", "train", "val", "test", "named") if k in split},
            "baseline": baseline,
        },
    }


def _progress(prefix, done, total, rate, loss, tty):
    if not tty:
        return
    width = 24
    fill = int(width * done / max(total, 1))
    sys.stderr.write(
        f"\r{prefix} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} windows  {rate:5.1f} windows/s  loss {loss:.4f} "
    )
    sys.stderr.flush()


# ------------------------------------------------------------------ the state of a training
@dataclasses.dataclass
class TrainState:
    """Progress of one loss's training, plain JSON types; saved in every checkpoint.

    ``epoch``: epochs finished; ``best_val_mae`` (rho/rho_bulk) and ``best_epoch``: the best
    validation so far; ``bad_epochs``: epochs since then (early stopping); ``done`` and ``why``
    ("epochs" or "early stopping"); ``history``: one record per epoch (metrics.jsonl)."""

    epoch: int = 0
    best_val_mae: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    done: bool = False
    why: str | None = None
    history: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["why"] is None:
            del d["why"]
        return json.loads(json.dumps(d))  # plain types for torch.load(weights_only=True)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def end_epoch(self, val_mae: float, cfg: TrainConfig) -> bool:
        """Count a finished epoch with its validation MAE; return whether it is the best so far."""
        improved = val_mae < self.best_val_mae
        self.epoch += 1
        if improved:
            self.best_val_mae, self.best_epoch, self.bad_epochs = val_mae, self.epoch, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= cfg.patience:
            self.done, self.why = True, "early stopping"
        elif self.epoch >= cfg.epochs:
            self.done, self.why = True, "epochs"
        return improved

    def result(self, folder: Path) -> dict:
        return {
            "best_val_mae": self.best_val_mae,
            "best_epoch": self.best_epoch,
            "epochs": self.epoch,
            "why_stopped": self.why,
            "checkpoint": str(folder / "best.pt"),
        }


@dataclasses.dataclass
class Training:
    """What one loss trains: the network, its Adam optimiser and LR schedule, its state."""

    model: Any
    optimizer: Any
    scheduler: Any
    state: TrainState

    @classmethod
    def build(cls, cfg: TrainConfig, initial_state: dict | None = None) -> "Training":
        """A fresh network from ``cfg`` (seeded with ``cfg.seed``; ``initial_state``: the
        weights it starts from instead, :func:`initial_weights`), Adam and ReduceLROnPlateau."""
        import torch

        from .models import build_model

        torch.manual_seed(cfg.seed)
        # channels-last (NDHWC) weights and inputs: oneDNN's fast 3D layout on CPU, ~1.8x faster
        # per step; the same arithmetic up to summation order (benchmarks/RESULTS.md)
        model = build_model(cfg.model, **cfg.model_kwargs()).to(memory_format=torch.channels_last_3d)
        if initial_state is not None:
            model.load_state_dict(initial_state)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience
        )
        return cls(model, opt, sched, TrainState())

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def initial_weights(cfg: TrainConfig) -> dict:
    """The weights of ``cfg.init_from`` (a shipped model's name or a checkpoint path) that a
    fine-tuning run starts from. The checkpoint must hold the network ``cfg`` builds (name and
    kwargs); an ensemble manifest is refused (which member?)."""
    from .models import _plain, build_model, load_model
    from .registry import is_ensemble_path, resolve_model

    path = resolve_model(cfg.init_from)
    if is_ensemble_path(path):
        raise InputError(f"{path}: init_from takes one checkpoint, not an ensemble manifest")
    source, meta = load_model(path)
    model = build_model(cfg.model, **cfg.model_kwargs())
    want = {"model": model.name, "kwargs": _plain(model.hparams)}
    have = {"model": meta["model"], "kwargs": _plain(meta["kwargs"])}
    if want != have:
        raise InputError(
            f"{path}: init_from holds a {have['model']} network {have['kwargs']}, "
            f"this run builds a {want['model']} network {want['kwargs']}"
        )
    return source.state_dict()


class CheckpointIO:
    """The files of one loss's folder: ``checkpoint.pt`` (everything :class:`Training` needs to
    continue exactly: weights, optimiser, schedule, torch RNG, state), ``best.pt`` (the best
    epoch, ``models.save_checkpoint`` format) and ``metrics.jsonl`` (one line per epoch)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.checkpoint = self.folder / "checkpoint.pt"
        self.metrics = self.folder / "metrics.jsonl"

    def save(self, training: Training, extra: dict, improved: bool) -> None:
        """After an epoch: best.pt if it ``improved``, checkpoint.pt, its metrics line."""
        import torch

        from .models import checkpoint_payload, save_checkpoint

        if improved:
            save_checkpoint(self.folder / "best.pt", training.model, extra)
        payload = checkpoint_payload(training.model, extra)
        payload.update(
            optimizer=training.optimizer.state_dict(),
            scheduler=training.scheduler.state_dict(),
            torch_rng=torch.get_rng_state(),
            train_state=training.state.to_dict(),
        )
        with atomic_output(self.checkpoint) as tmp:
            torch.save(payload, tmp)
        with open(self.metrics, "a") as fh:
            fh.write(json.dumps(training.state.history[-1]) + "\n")

    def restore(self, training: Training, cfg: TrainConfig, rank: int = 0) -> None:
        """Load checkpoint.pt into ``training``; metrics.jsonl is rewritten from its history
        (dropping lines of an epoch that never reached its checkpoint). More ``cfg.epochs``
        than the run had reopens a run that ended on its number of epochs."""
        import torch

        ck = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        training.model.load_state_dict(ck["state_dict"])
        training.optimizer.load_state_dict(ck["optimizer"])
        training.scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"])
        state = training.state = TrainState.from_dict(ck["train_state"])
        if state.done and state.epoch < cfg.epochs and state.why == "epochs":
            state.done = False  # extended with --epochs
        if rank == 0:
            _write_jsonl(self.metrics, state.history)


# ------------------------------------------------------------------ fit
@dataclasses.dataclass
class FitContext:
    """Everything the losses of one run share: the settings, the data and the run options."""

    db: Any
    out: Path
    cfg: TrainConfig
    dist: _Dist
    split: dict | None = None
    baseline: dict | None = None
    train_bank: Any = None
    val_bank: Any = None
    val_plan: list = dataclasses.field(default_factory=list)
    resume: bool = False
    progress: bool = True
    stop_after: int | None = None  # end after this many epochs of this call (tests: a "kill")
    initial_state: dict | None = None  # init_from's weights (a new fine-tuning run), else None

    def log(self, msg: str) -> None:
        _log(msg, self.dist.rank)


def fit(
    db,
    out,
    config: TrainConfig | None = None,
    resume: bool = False,
    epochs: int | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Train (or resume) a run in ``out``; return the summary (also ``out/summary.json``).

    ``epochs`` overrides the configured number (e.g. to extend a resumed run).
    ``stop_after`` ends the call after that many epochs of this call (for tests: a "kill"
    between two epochs).
    """
    import torch

    out = Path(out)
    check_db(db)
    dist = _Dist()
    cfg = _run_config(out, config, resume, epochs, dist)
    if cfg.batch_size % dist.world:
        raise InputError(f"{out}: batch_size {cfg.batch_size} is not divisible by the {dist.world} processes")
    # read once, before anything is written (a wrong checkpoint fails here); a resumed run restores its own
    initial_state = initial_weights(cfg) if cfg.init_from and not resume else None
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    dist.init()
    try:
        ctx = FitContext(
            db, out, cfg, dist, resume=resume, progress=progress, stop_after=stop_after, initial_state=initial_state
        )
        return _fit(ctx)
    finally:
        dist.close()


def _run_config(out: Path, config: TrainConfig | None, resume: bool, epochs: int | None, dist: _Dist) -> TrainConfig:
    """The run's settings: its own config.json when resuming (only the number of epochs may
    change), else ``config``; descriptor and target sigmas resolved to numbers."""
    from . import data

    cfg_path = out / "config.json"
    if resume:
        if not cfg_path.exists():
            raise InputError(f"{out}: nothing to resume (no config.json)")
        cfg = TrainConfig(**json.loads(cfg_path.read_text()))
    else:
        cfg = config or TrainConfig()
        if out.exists() and any(out.iterdir()) and dist.rank == 0:
            if cfg_path.exists():
                raise InputError(f"{out}: a run is already there; use --resume to continue it or choose another --out")
            raise InputError(f"{out}: folder is not empty; choose another --out")
    if epochs is not None:
        cfg.epochs = int(epochs)
    if cfg.sigma is None:
        from .descriptors import DEFAULT_SIGMA

        cfg.sigma = float(DEFAULT_SIGMA)
    if cfg.sigma_target is None:
        cfg.sigma_target = float(data.DEFAULT_SIGMA_TARGET)
    return cfg


def _fit(ctx: FitContext) -> dict:
    if ctx.dist.rank == 0:
        ctx.out.mkdir(parents=True, exist_ok=True)
        _write_json(ctx.out / "config.json", ctx.cfg.to_dict())
    _prepare_split(ctx)
    _prepare_banks(ctx)
    _prepare_baseline(ctx)
    results = {}
    for loss_name in ctx.cfg.losses:
        results[loss_name] = _fit_one(ctx, loss_name)
        if results[loss_name].get("stopped"):
            return {"stopped": True, "losses": results}
    return _conclude(ctx, results)


def _prepare_split(ctx: FitContext) -> None:
    """split.json: an earlier run's (``cfg.split_file``) or a new one; read back on every process."""
    from . import data

    cfg, db = ctx.cfg, ctx.db
    split_path = ctx.out / "split.json"
    if ctx.dist.rank == 0 and not split_path.exists():
        split = _new_split(db, cfg)
        data.save_split(split, split_path)
        ctx.log(
            f"split: {len(split['train'])} train, {len(split['val'])} val, {len(split['test'])} test simulations; "
            f"held out by name: {', '.join(f'{k} ({len(v)})' for k, v in split['named'].items()) or 'none'}"
        )
    ctx.dist.barrier()
    ctx.split = data.load_split(split_path)


def _new_split(db, cfg: TrainConfig) -> dict:
    """The split of a new run: ``cfg.split_file`` (checked against ``db``) or a new one."""
    from . import data, store

    rows = list(store.iter_rows(db))
    if not rows:
        raise InputError(f"{db}: no finished simulations in the database")
    if cfg.split_file:  # the split of an earlier run: models trained on the same simulations
        split = data.load_split(cfg.split_file)
        known = {r.unique_id for r in rows}
        missing = [u for u in split["train"] + split["val"] + split["test"] if u not in known]
        if missing:
            raise InputError(
                f"{cfg.split_file}: {len(missing)} simulation(s) of the split are not in {db} (e.g. {missing[0]})"
            )
    else:
        split = data.make_split(
            rows,
            seed=cfg.seed if cfg.split_seed is None else cfg.split_seed,
            fractions=cfg.split_fractions,
            train_surfaces=cfg.train_surfaces,
        )
    split["db"] = str(db)
    return split


def _prepare_banks(ctx: FitContext) -> None:
    """The training and validation window banks (rank 0 fills the cache, the others read it)."""
    from . import data

    cfg, rank = ctx.cfg, ctx.dist.rank
    cache = Path(cfg.cache_dir) if cfg.cache_dir else ctx.out / "cache"
    kw = dict(
        sigma=cfg.sigma, sigma_target=cfg.sigma_target, grids_dir=cfg.grids_dir, train_surfaces=cfg.train_surfaces
    )
    t0 = time.perf_counter()
    if rank == 0:
        ctx.train_bank = data.build_bank(ctx.db, ctx.split["train"], cache, log=ctx.log, **kw)
        ctx.val_bank = data.build_bank(ctx.db, ctx.split["val"], cache, log=ctx.log, **kw)
    ctx.dist.barrier()
    if rank != 0:
        ctx.train_bank = data.build_bank(ctx.db, ctx.split["train"], cache, **kw)
        ctx.val_bank = data.build_bank(ctx.db, ctx.split["val"], cache, **kw)
    ctx.log(
        f"window bank ready in {time.perf_counter() - t0:.1f} s: {len(ctx.train_bank)} training and "
        f"{len(ctx.val_bank)} validation interfaces"
    )
    ctx.val_plan = ctx.val_bank.grid_plan()
    if cfg.max_val_windows:
        ctx.val_plan = ctx.val_plan[: cfg.max_val_windows]


def _prepare_baseline(ctx: FitContext) -> None:
    """baseline.json: the height-only baseline (mean training target per height)."""
    path = ctx.out / "baseline.json"
    if ctx.dist.rank == 0 and not path.exists():
        _write_json(
            path,
            {
                "what": "height-only baseline: mean training target (rho/rho_bulk) per height above the surface plane",
                "height": ctx.train_bank.heights().tolist(),
                "profile": ctx.train_bank.mean_profile().tolist(),
                "sigma_target": ctx.cfg.sigma_target,
            },
        )
    ctx.dist.barrier()
    ctx.baseline = json.loads(path.read_text())


def _conclude(ctx: FitContext, results: dict) -> dict:
    """model.pt = the better loss on validation MAE; summary.json."""
    best = min(results, key=lambda k: results[k]["best_val_mae"])
    summary = {
        "model": ctx.cfg.model,
        "losses": results,
        "kept": best,
        "why": f"lower validation MAE ({results[best]['best_val_mae']:.4g} rho/rho_bulk)"
        if len(results) > 1
        else "only loss trained",
        "split": "split.json",
    }
    if ctx.dist.rank == 0:
        with atomic_output(ctx.out / "model.pt") as tmp:
            shutil.copyfile(ctx.out / best / "best.pt", tmp)
        _write_json(ctx.out / "summary.json", summary)
        ctx.log(
            f"kept {best}: "
            + ", ".join(
                f"{k} best val MAE {v['best_val_mae']:.4g} (epoch {v['best_epoch']})" for k, v in results.items()
            )
            + f" -> {ctx.out / 'model.pt'}"
        )
    return summary


def df_pattern(rho):
    """What the AFM matcher compares, on a batch of windows (..., nx, ny, 64), as a torch
    tensor: -d²/dz² ln(max(rho, afm.DEFAULT_FLOOR)) (per Å², the derivative of the
    solvent-tip F_z = kT d ln rho/dz up to kT, both z-derivatives as ``np.gradient``'s
    central differences, as ``match.df_from_force`` takes them), blurred laterally by a
    Gaussian of :data:`DF_BLUR` (valid part only: a window is not periodic), in the planes of
    :data:`DF_BAND`, each plane's mean taken out (the matcher fits a scale and a plane to every
    map, so only the lateral pattern counts)."""
    import torch

    from .afm import DEFAULT_FLOOR
    from .conventions import SPACING, window_heights

    z = window_heights()
    keep = np.flatnonzero((z >= DF_BAND[0]) & (z <= DF_BAND[1]))
    lo, hi = int(keep[0]), int(keep[-1]) + 1
    if lo < 2 or hi + 2 > rho.shape[-1]:
        raise ValueError(f"df_pattern needs windows of {len(z)} planes, got {rho.shape[-1]}")
    w = torch.log(rho[..., lo - 2 : hi + 2].clamp(min=DEFAULT_FLOOR))
    g = (w[..., 2:] - w[..., :-2]) / (2 * SPACING)
    d = -(g[..., 2:] - g[..., :-2]) / (2 * SPACING)  # planes lo..hi-1
    r = int(np.ceil(3 * DF_BLUR / SPACING))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=d.dtype) * SPACING / DF_BLUR) ** 2)
    k = k / k.sum()
    shape = d.shape
    d = d.reshape(-1, 1, *shape[-3:])
    d = torch.nn.functional.conv3d(d, k.view(1, 1, -1, 1, 1))  # x, valid
    d = torch.nn.functional.conv3d(d, k.view(1, 1, 1, -1, 1))  # y, valid
    d = d - d.mean(dim=(-3, -2), keepdim=True)
    return d.reshape(*shape[:-3], *d.shape[-3:])


def loss_function(name: str, l2_weight: float = 1.0, log_weight: float = 1.0, df_weight: float = 1.0):
    """The training loss called ``name``: ``"l1"`` (mean absolute error), ``"l2"`` (mean
    squared error), ``"l1+l2"`` (their sum, the MSE weighted by ``l2_weight``) or
    ``"l1+l2-layer"``: per voxel the absolute error, except in the first layer (the planes
    of a window 1-3 Å above the surface, :data:`conventions.FIRST_LAYER`, the last axis)
    where it is ``l2_weight`` x the squared error; averaged over all voxels. A voxel's
    L1 optimum is the median of what the input leaves open and its L2 optimum the mean;
    the first layer's sharp maxima make that distribution skewed, so L1 under-fills them.
    ``"l2+log"``: the MSE plus ``log_weight`` x the MSE of ln(max(rho, 0) + LOG_EPS).
    ``"l2+df"``: the MSE plus ``df_weight`` x the MSE of :func:`df_pattern`."""
    import torch

    l1, l2 = torch.nn.L1Loss(), torch.nn.MSELoss()
    if name == "l1":
        return l1
    if name == "l2":
        return l2
    if name == MIXED_LOSS:
        return lambda pred, target: l1(pred, target) + l2_weight * l2(pred, target)
    if name == LAYER_LOSS:
        band = torch.from_numpy(first_layer_planes())

        def layer_loss(pred, target):
            if pred.shape[-1] != band.numel():
                raise ValueError(f"loss {name!r} needs windows of {band.numel()} planes, got {pred.shape[-1]}")
            e = pred - target
            return torch.where(band, l2_weight * e * e, e.abs()).mean()

        return layer_loss
    if name == LOG_LOSS:

        def log_loss(pred, target):
            lp = torch.log(pred.clamp(min=0) + LOG_EPS)
            return l2(pred, target) + log_weight * l2(lp, torch.log(target.clamp(min=0) + LOG_EPS))

        return log_loss
    if name == DF_LOSS:

        def df_loss(pred, target):
            return l2(pred, target) + df_weight * l2(df_pattern(pred), df_pattern(target))

        return df_loss
    raise ValueError(f"unknown loss {name!r}")


def _fit_one(ctx: FitContext, loss_name: str) -> dict:
    """Train one loss to its end (or ``ctx.stop_after`` epochs), a checkpoint every epoch."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    cfg, dist = ctx.cfg, ctx.dist
    io = CheckpointIO(ctx.out / loss_name)
    if dist.rank == 0:
        io.folder.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True, warn_only=True)
    training = Training.build(cfg, ctx.initial_state)
    dist.barrier()
    if ctx.resume and io.checkpoint.exists():
        io.restore(training, cfg, dist.rank)
        s = training.state
        ctx.log(
            f"[{loss_name}] resumed after epoch {s.epoch} (best val MAE {s.best_val_mae:.4g} at epoch {s.best_epoch})"
        )
    state = training.state
    if state.done or state.epoch >= cfg.epochs:
        state.done = True
        return state.result(io.folder)
    _check_plan_size(ctx)
    net = DistributedDataParallel(training.model) if dist.active else training.model
    lossf = loss_function(loss_name, cfg.l2_weight, cfg.log_weight, cfg.df_weight)
    for n_run, epoch in enumerate(range(state.epoch, cfg.epochs), start=1):
        rec = _run_epoch(ctx, training, net, lossf, loss_name)
        if dist.rank == 0:
            extra = dict(
                checkpoint_extra(cfg, loss_name, ctx.db, ctx.split, ctx.baseline),
                epoch=epoch + 1,
                val_mae=rec["val_mae"],
            )
            io.save(training, extra, rec["best"])
            _log_epoch(ctx, rec)
        dist.barrier()
        if state.done:
            if state.why == "early stopping":
                ctx.log(f"[{loss_name}] early stopping: no better validation MAE for {cfg.patience} epochs")
            break
        if ctx.stop_after is not None and n_run >= ctx.stop_after:
            return {**state.result(io.folder), "stopped": True}
    return state.result(io.folder)


def _check_plan_size(ctx: FitContext) -> None:
    cfg = ctx.cfg
    n_plan = len(ctx.train_bank) * cfg.windows_per_interface
    if n_plan < cfg.batch_size:
        raise InputError(
            f"{ctx.out}: {n_plan} training windows per epoch ({len(ctx.train_bank)} slab faces x "
            f"windows_per_interface {cfg.windows_per_interface}) is less than batch_size {cfg.batch_size}"
        )


def _run_epoch(ctx: FitContext, training: Training, net, lossf, loss_name: str) -> dict:
    """One epoch: a training pass, validation, the LR schedule and the state; its record."""
    dist, state = ctx.dist, training.state
    epoch = state.epoch
    t = _train_pass(ctx, training, net, lossf, loss_name)
    train_loss = dist.all_sum([t["loss_sum"] / t["batches"]])[0] / dist.world
    t4 = time.perf_counter()
    val = validation_score(training.model, ctx.val_bank, ctx.val_plan, max(1, ctx.cfg.batch_size // dist.world), dist)
    t_val = time.perf_counter() - t4
    training.scheduler.step(val["mae"])
    improved = state.end_epoch(val["mae"], ctx.cfg)
    rec = {
        "epoch": epoch + 1,
        "loss": loss_name,
        "train_loss": train_loss,
        "val_mae": val["mae"],
        "val_mae_A3": val["mae_A3"],
        "val_df_mse": val["df_mse"],
        "val_windows": val["windows"],
        "lr": training.lr,
        "windows": t["windows"],
        "windows_per_s": t["windows"] / t["train_s"],
        "load_s": t["load_s"],
        "step_s": t["step_s"],
        "val_s": t_val,
        "best": improved,
        "processes": dist.world,
    }
    state.history = state.history + [rec]
    return rec


def _train_pass(ctx: FitContext, training: Training, net, lossf, loss_name: str) -> dict:
    """One pass over this epoch's random windows (D4-augmented), each process its share of
    every global batch; loss sums and timings."""
    import torch

    cfg, rank, epoch = ctx.cfg, ctx.dist.rank, training.state.epoch
    local_b = cfg.batch_size // ctx.dist.world
    plan = ctx.train_bank.random_plan(np.random.default_rng([cfg.seed, epoch]), cfg.windows_per_interface)
    ops = (
        np.random.default_rng([cfg.seed, epoch, 1]).integers(0, 8, size=len(plan))
        if cfg.symmetry
        else np.zeros(len(plan), int)
    )
    nb = max(1, len(plan) // cfg.batch_size)
    tty = ctx.progress and rank == 0 and sys.stderr.isatty()
    t = {"loss_sum": 0.0, "load_s": 0.0, "step_s": 0.0, "batches": nb, "windows": nb * cfg.batch_size}
    net.train()
    t_ep = time.perf_counter()
    for b in range(nb):
        first = b * cfg.batch_size + rank * local_b
        t1 = time.perf_counter()
        x, halves = ctx.train_bank.batch(plan[first : first + local_b])
        x, halves = d4(x, ops[first : first + local_b]), d4(halves, ops[first : first + local_b])
        xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last_3d)
        yt = torch.from_numpy(0.5 * (halves[:, 0:1] + halves[:, 1:2]))
        t2 = time.perf_counter()
        training.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bfloat16"):
            out = net(xt)
        loss = lossf(out.float(), yt)  # the loss in float32 whatever the forward pass ran in
        loss.backward()
        training.optimizer.step()
        t3 = time.perf_counter()
        t["load_s"] += t2 - t1
        t["step_s"] += t3 - t2
        t["loss_sum"] += float(loss.detach())
        done = (b + 1) * cfg.batch_size
        _progress(
            f"[{loss_name}] epoch {epoch + 1}/{cfg.epochs}",
            done,
            t["windows"],
            done / (t3 - t_ep),
            t["loss_sum"] / (b + 1),
            tty,
        )
    if tty:
        sys.stderr.write("\n")
    t["train_s"] = time.perf_counter() - t_ep
    return t


def validation_score(model, bank, plan, batch: int, dist: _Dist | None = None) -> dict:
    """MAE of ``model`` over the windows ``plan`` of ``bank`` against the mean of the MD halves
    (``scoring``, through ``inference.run_batches``), and the mean squared error of
    :func:`df_pattern` (what the AFM matcher compares): ``{"mae", "mae_A3", "df_mse",
    "windows"}``. Under torchrun every process scores its share and the sums are added up."""
    import torch

    from .inference import run_batches
    from .scoring import ErrorSums

    dist = dist or _Dist()
    mine = plan[dist.rank :: dist.world]
    sums = ErrorSums()
    df_sq, df_n = 0.0, 0
    model.eval()
    for k in range(0, len(mine), batch):
        part = mine[k : k + batch]
        x, halves = bank.batch(part)
        pred = run_batches(model, x, batch)
        ref = 0.5 * (halves[:, 0] + halves[:, 1])
        for w, p in enumerate(part):
            sums.add(np.abs(pred[w] - ref[w]), bank.entries[p[0]].interface.rho_bulk)
        e = df_pattern(torch.from_numpy(np.asarray(pred, np.float32))) - df_pattern(torch.from_numpy(ref))
        df_sq, df_n = df_sq + float((e * e).sum()), df_n + e.numel()
    total = dist.all_sum(sums.as_list() + [float(len(mine)), df_sq, float(df_n)])
    return {
        **ErrorSums.from_list(total[:3]).result(),
        "df_mse": total[4] / max(total[5], 1.0),
        "windows": int(total[3]),
    }


def _log_epoch(ctx: FitContext, rec: dict) -> None:
    ctx.log(
        f"[{rec['loss']}] epoch {rec['epoch']}/{ctx.cfg.epochs}: train {rec['loss']} {rec['train_loss']:.4f}, "
        f"val MAE {rec['val_mae']:.4f} rho/rho_bulk ({rec['val_mae_A3']:.3e} A^-3){' *' if rec['best'] else ''}, "
        f"val df MSE {rec['val_df_mse']:.3f}, "
        f"lr {rec['lr']:.2e}, {rec['windows_per_s']:.1f} windows/s (loading {rec['load_s']:.2f} s of "
        f"{rec['windows'] / rec['windows_per_s']:.1f} s)"
    )


# ------------------------------------------------------------------ ensembles
def is_ensemble_run(out) -> bool:
    """Whether ``out`` is an ensemble's run folder (it has :data:`ENSEMBLE_PLAN`)."""
    return (Path(out) / ENSEMBLE_PLAN).is_file()


def bootstrap_split(split: dict, seed) -> dict:
    """``split`` with its training simulations resampled by simulation, with replacement (as
    many as there are; duplicates kept, sorted), by ``numpy.random.default_rng(seed)``;
    validation, test and named sets unchanged. The draw is recorded in ``"bootstrap"``."""
    train = list(split["train"])
    rng = np.random.default_rng(seed)
    drawn = sorted(train[i] for i in rng.integers(0, len(train), size=len(train)))
    seed_list = [int(v) for v in np.atleast_1d(seed)]
    return dict(split, train=drawn, bootstrap={"seed": seed_list, "of": train, "distinct": len(set(drawn))})


def fit_ensemble(
    db,
    out,
    config: TrainConfig | None = None,
    members: int = 4,
    bootstrap: bool = False,
    resume: bool = False,
    epochs: int | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Train (or resume) an ensemble of ``members`` runs in ``out/member-<k>/`` (module notes),
    then write ``out/ensemble.json``; return ``{"members": [summary, ...], "manifest": path}``
    (``{"stopped": True, ...}`` when ``stop_after`` ended a member early, as in :func:`fit`).
    ``epochs`` overrides the configured number (resume: extends every member)."""
    from .registry import write_ensemble

    out = Path(out)
    check_db(db)
    if _Dist().world > 1:
        raise InputError(f"{out}: an ensemble trains its members one after another in one process; not under torchrun")
    plan = _load_plan(out) if resume else _new_plan(db, out, config, members, bootstrap)
    results = []
    for k in range(plan["members"]):
        run = out / f"member-{k}"
        if resume and (run / "summary.json").exists() and epochs is None:
            results.append(json.loads((run / "summary.json").read_text()))
            continue
        _log(f"ensemble member {k + 1} of {plan['members']}: {run}")
        if (run / "config.json").exists():
            r = fit(db, run, resume=True, epochs=epochs, progress=progress, stop_after=stop_after)
        else:
            cfg = TrainConfig(**dict(plan["config"], seed=plan["seeds"][k], split_file=str(out / plan["splits"][k])))
            r = fit(db, run, cfg, epochs=epochs, progress=progress, stop_after=stop_after)
        if r.get("stopped"):
            return {"stopped": True, "member": k, "members": results}
        results.append(r)
    note = (
        f"{plan['members']} members, seeds {plan['seeds']}"
        + (", each on a bootstrap resample of the training simulations" if plan["bootstrap"] else ", one training set")
        + "; the same validation and test simulations (split.json)"
    )
    manifest = write_ensemble(
        out / "ensemble.json",
        [out / f"member-{k}" / "model.pt" for k in range(plan["members"])],
        name=out.name,
        note=note,
        bootstrap=plan["bootstrap"],
        seeds=plan["seeds"],
    )
    _log(f"ensemble of {plan['members']} written: {manifest}")
    return {"members": results, "manifest": str(manifest)}


def _new_plan(db, out: Path, config: TrainConfig | None, members: int, bootstrap: bool) -> dict:
    """A new ensemble's plan: the shared split (``out/split.json``), the members' seeds and
    splits (bootstrap: ``out/splits/member-<k>.json``), one window cache (``out/cache``)."""
    from . import data

    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise InputError(f"{out}: --ensemble needs a number of members >= 1, got {members!r}")
    if out.exists() and any(out.iterdir()):
        what = (
            "an ensemble is already there; use --resume to continue it"
            if is_ensemble_run(out)
            else "folder is not empty"
        )
        raise InputError(f"{out}: {what} or choose another --out")
    cfg = dataclasses.replace(config or TrainConfig())
    if cfg.cache_dir is None:
        cfg.cache_dir = str(out / "cache")  # one window bank for all members
    split = _new_split(db, cfg)
    out.mkdir(parents=True, exist_ok=True)
    data.save_split(split, out / "split.json")
    base_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    splits = ["split.json"] * members
    if bootstrap:
        (out / "splits").mkdir(exist_ok=True)
        for k in range(members):
            splits[k] = f"splits/member-{k}.json"
            data.save_split(bootstrap_split(split, [base_seed, k]), out / splits[k])
    plan = {
        "members": members,
        "bootstrap": bool(bootstrap),
        "seeds": [cfg.seed + k for k in range(members)],
        "splits": splits,
        "config": cfg.to_dict(),
    }
    _write_json(out / ENSEMBLE_PLAN, plan)
    return plan


def _load_plan(out: Path) -> dict:
    if not is_ensemble_run(out):
        raise InputError(f"{out}: nothing to resume (no {ENSEMBLE_PLAN})")
    return json.loads((out / ENSEMBLE_PLAN).read_text())
