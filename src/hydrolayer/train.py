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
targets L1 learns the median and L2 the mean. Adam, ReduceLROnPlateau on the validation MAE,
early stopping after ``patience`` epochs without improvement. Every epoch is a checkpoint;
``resume=True`` continues exactly (same split, windows, optimiser state, RNG state).

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

from .util import InputError, atomic_output

__all__ = ["TrainConfig", "load_config", "fit", "LOSSES"]

LOSSES = ("l1", "l2")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on (lengths in Å)."""

    model: str = "unet"  # "unet" or "attention-unet"
    channels: tuple = (16, 32, 64, 128)  # widths of the four levels
    kernel_size: int = 3
    norm: str = "batch"  # "batch" or "none"
    dropout: float = 0.0
    loss: str = "compare"  # "l1", "l2" or "compare" (both; keep the better on validation)
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
    precision: str = "float32"  # training forward pass: "float32" or "bfloat16" (CPU autocast; validation stays float32)

    def __post_init__(self):
        from .models import MODELS

        self.channels = tuple(int(c) for c in self.channels)
        self.train_surfaces = tuple(self.train_surfaces)
        try:
            self.split_fractions = tuple(float(f) for f in self.split_fractions)
        except (TypeError, ValueError):
            raise ValueError(f"split_fractions must be three numbers (train, val, test), got {self.split_fractions!r}") from None
        f = self.split_fractions
        if len(f) != 3 or min(f) < 0 or f[0] <= 0 or f[1] <= 0 or abs(sum(f) - 1) > 1e-6:
            raise ValueError(f"split_fractions must be three numbers >= 0 summing to 1 with train and val > 0, got {self.split_fractions!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.loss not in (*LOSSES, "compare"):
            raise ValueError(f"loss must be 'l1', 'l2' or 'compare', got {self.loss!r}")
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
        raise InputError(f"{path or 'config'}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
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
    """A database path that does not exist is a user error (ase.db would create an empty one)."""
    from .store import is_url

    if not is_url(str(db)) and not Path(db).is_file():
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
    from .data import Z_BELOW, _window_constants
    from .grids import GridSpec

    shape, size = _window_constants()
    return GridSpec.orthogonal(size, shape, origin=(0.0, 0.0, -Z_BELOW)).to_dict()


def checkpoint_extra(cfg: TrainConfig, loss: str, db=None, split: dict | None = None, baseline: dict | None = None) -> dict:
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
            "split": None if split is None else {k: split[k] for k in ("seed", "train", "val", "test", "named") if k in split},
            "baseline": baseline,
        },
    }


def _predict_mae(model, bank, plan, batch_size, torch, dist: _Dist) -> tuple[float, float, int]:
    """Mean absolute error over the windows of ``plan`` (rho/rho_bulk and Å^-3)."""
    mine = plan[dist.rank :: dist.world]
    s_abs, s_abs_a3, n = 0.0, 0.0, 0
    model.eval()
    with torch.no_grad():
        for k in range(0, len(mine), batch_size):
            part = mine[k : k + batch_size]
            x, halves = bank.batch(part)
            y = torch.from_numpy(0.5 * (halves[:, 0:1] + halves[:, 1:2]))
            pred = model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last_3d))
            err = (pred - y).abs().mean(dim=(1, 2, 3, 4)).double().numpy()
            rho = np.array([bank.entries[p[0]].interface.rho_bulk for p in part])
            s_abs += float(err.sum())
            s_abs_a3 += float((err * rho).sum())
            n += len(part)
    s_abs, s_abs_a3, n = dist.all_sum([s_abs, s_abs_a3, float(n)])
    return s_abs / max(n, 1), s_abs_a3 / max(n, 1), int(n)


def _progress(prefix, done, total, rate, loss, tty):
    if not tty:
        return
    width = 24
    fill = int(width * done / max(total, 1))
    sys.stderr.write(f"\r{prefix} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} windows  {rate:5.1f} windows/s  loss {loss:.4f} ")
    sys.stderr.flush()


# ------------------------------------------------------------------ fit
def fit(db, out, config: TrainConfig | None = None, resume: bool = False, epochs: int | None = None,
        progress: bool = True, stop_after: int | None = None) -> dict:
    """Train (or resume) a run in ``out``; return the summary (also ``out/summary.json``).

    ``epochs`` overrides the configured number (e.g. to extend a resumed run).
    ``stop_after`` ends the call after that many epochs of this call (for tests: a "kill"
    between two epochs).
    """
    import torch

    from . import data
    from .models import build_model, checkpoint_payload, save_checkpoint

    out = Path(out)
    check_db(db)
    dist = _Dist()
    cfg_path = out / "config.json"
    if resume:
        if not cfg_path.exists():
            raise InputError(f"{out}: nothing to resume (no config.json)")
        saved = json.loads(cfg_path.read_text())
        cfg = TrainConfig(**saved)  # the run's own settings; only the number of epochs may change
        if epochs is not None:
            cfg.epochs = int(epochs)
    else:
        cfg = config or TrainConfig()
        if epochs is not None:
            cfg.epochs = int(epochs)
        if out.exists() and any(out.iterdir()) and dist.rank == 0:
            if cfg_path.exists():
                raise InputError(f"{out}: a run is already there; use --resume to continue it or choose another --out")
            raise InputError(f"{out}: folder is not empty; choose another --out")

    if cfg.sigma is None:
        from .descriptors import DEFAULT_SIGMA

        cfg.sigma = float(DEFAULT_SIGMA)
    if cfg.sigma_target is None:
        cfg.sigma_target = float(data.DEFAULT_SIGMA_TARGET)
    if cfg.batch_size % dist.world:
        raise InputError(f"{out}: batch_size {cfg.batch_size} is not divisible by the {dist.world} processes")

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    dist.init()
    try:
        return _fit(db, out, cfg, resume, progress, stop_after, dist, torch, data, build_model, checkpoint_payload, save_checkpoint)
    finally:
        dist.close()


def _fit(db, out, cfg, resume, progress, stop_after, dist, torch, data, build_model, checkpoint_payload, save_checkpoint):
    from . import store

    rank = dist.rank
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", cfg.to_dict())
    split_path = out / "split.json"
    if rank == 0 and not split_path.exists():
        rows = list(store.iter_rows(db))
        if not rows:
            raise InputError(f"{db}: no finished simulations in the database")
        if cfg.split_file:  # the split of an earlier run: models trained on the same simulations
            split = data.load_split(cfg.split_file)
            known = {r.unique_id for r in rows}
            missing = [u for u in split["train"] + split["val"] + split["test"] if u not in known]
            if missing:
                raise InputError(f"{cfg.split_file}: {len(missing)} simulation(s) of the split are not in {db} (e.g. {missing[0]})")
        else:
            split = data.make_split(rows, seed=cfg.seed if cfg.split_seed is None else cfg.split_seed,
                                    fractions=cfg.split_fractions, train_surfaces=cfg.train_surfaces)
        split["db"] = str(db)
        data.save_split(split, split_path)
        _log(f"split: {len(split['train'])} train, {len(split['val'])} val, {len(split['test'])} test simulations; "
             f"held out by name: {', '.join(f'{k} ({len(v)})' for k, v in split['named'].items()) or 'none'}", rank)
    dist.barrier()
    split = data.load_split(split_path)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    bank_kw = dict(sigma=cfg.sigma, sigma_target=cfg.sigma_target, grids_dir=cfg.grids_dir, train_surfaces=cfg.train_surfaces)
    t0 = time.perf_counter()
    if rank == 0:
        train_bank = data.build_bank(db, split["train"], cache, log=lambda m: _log(m, rank), **bank_kw)
        val_bank = data.build_bank(db, split["val"], cache, log=lambda m: _log(m, rank), **bank_kw)
    dist.barrier()
    if rank != 0:
        train_bank = data.build_bank(db, split["train"], cache, **bank_kw)
        val_bank = data.build_bank(db, split["val"], cache, **bank_kw)
    _log(f"window bank ready in {time.perf_counter() - t0:.1f} s: {len(train_bank)} training and {len(val_bank)} validation interfaces", rank)
    baseline_path = out / "baseline.json"
    if rank == 0 and not baseline_path.exists():
        _write_json(baseline_path, {
            "what": "height-only baseline: mean training target (rho/rho_bulk) per height above the surface plane",
            "height": train_bank.heights().tolist(),
            "profile": train_bank.mean_profile().tolist(),
            "sigma_target": cfg.sigma_target,
        })
    dist.barrier()
    baseline = json.loads(baseline_path.read_text())
    val_plan = val_bank.grid_plan()
    if cfg.max_val_windows:
        val_plan = val_plan[: cfg.max_val_windows]

    results = {}
    for loss_name in cfg.losses:
        results[loss_name] = _fit_one(out / loss_name, db, split, baseline, cfg, loss_name, train_bank, val_bank, val_plan, resume,
                                      progress, stop_after, dist, torch, build_model, checkpoint_payload, save_checkpoint)
        if results[loss_name].get("stopped"):
            return {"stopped": True, "losses": results}

    best = min(results, key=lambda k: results[k]["best_val_mae"])
    summary = {
        "model": cfg.model,
        "losses": results,
        "kept": best,
        "why": f"lower validation MAE ({results[best]['best_val_mae']:.4g} rho/rho_bulk)" if len(results) > 1 else "only loss trained",
        "split": "split.json",
    }
    if rank == 0:
        with atomic_output(out / "model.pt") as tmp:
            shutil.copyfile(out / best / "best.pt", tmp)
        _write_json(out / "summary.json", summary)
        _log(f"kept {best}: " + ", ".join(f"{k} best val MAE {v['best_val_mae']:.4g} (epoch {v['best_epoch']})" for k, v in results.items())
             + f" -> {out / 'model.pt'}", rank)
    return summary


def _fit_one(folder: Path, db, split, baseline, cfg, loss_name, train_bank, val_bank, val_plan, resume, progress, stop_after, dist,
             torch, build_model, checkpoint_payload, save_checkpoint) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    rank, world = dist.rank, dist.world
    ckpt_path = folder / "checkpoint.pt"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.seed)
    # channels-last (NDHWC) weights and inputs: oneDNN's fast 3D layout on CPU, ~1.8x faster
    # per step here; the same arithmetic up to summation order (benchmarks/RESULTS.md)
    model = build_model(cfg.model, **cfg.model_kwargs()).to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience)
    state = {"epoch": 0, "best_val_mae": math.inf, "best_epoch": -1, "bad_epochs": 0, "done": False, "history": []}
    dist.barrier()
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"])
        state = dict(ck["train_state"])
        if state["done"] and state["epoch"] < cfg.epochs and state.get("why") == "epochs":
            state["done"] = False  # extended with --epochs
        _log(f"[{loss_name}] resumed after epoch {state['epoch']} (best val MAE {state['best_val_mae']:.4g} at epoch {state['best_epoch']})", rank)
        if rank == 0:  # metrics.jsonl = the checkpoint's history (drops lines of an epoch that never reached its checkpoint)
            _write_jsonl(folder / "metrics.jsonl", state["history"])
    if state["done"] or state["epoch"] >= cfg.epochs:
        state["done"] = True
        return _result(state, folder)

    n_plan = len(train_bank) * cfg.windows_per_interface
    if n_plan < cfg.batch_size:
        raise InputError(f"{folder.parent}: {n_plan} training windows per epoch ({len(train_bank)} slab faces x "
                         f"windows_per_interface {cfg.windows_per_interface}) is less than batch_size {cfg.batch_size}")
    net = DistributedDataParallel(model) if dist.active else model
    lossf = torch.nn.L1Loss() if loss_name == "l1" else torch.nn.MSELoss()
    local_b = cfg.batch_size // world
    tty = progress and rank == 0 and sys.stderr.isatty()
    n_run = 0
    for epoch in range(state["epoch"], cfg.epochs):
        plan = train_bank.random_plan(np.random.default_rng([cfg.seed, epoch]), cfg.windows_per_interface)
        ops = np.random.default_rng([cfg.seed, epoch, 1]).integers(0, 8, size=len(plan)) if cfg.symmetry else np.zeros(len(plan), int)
        nb = max(1, len(plan) // cfg.batch_size)
        net.train()
        t_load = t_step = 0.0
        s_loss = 0.0
        t_ep = time.perf_counter()
        for b in range(nb):
            glob = plan[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            mine = glob[rank * local_b : (rank + 1) * local_b]
            t1 = time.perf_counter()
            x, halves = train_bank.batch(mine)
            mine_ops = ops[b * cfg.batch_size + rank * local_b : b * cfg.batch_size + (rank + 1) * local_b]
            x, halves = d4(x, mine_ops), d4(halves, mine_ops)
            xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last_3d)
            yt = torch.from_numpy(0.5 * (halves[:, 0:1] + halves[:, 1:2]))
            t2 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bfloat16"):
                out = net(xt)
            loss = lossf(out.float(), yt)  # the loss in float32 whatever the forward pass ran in
            loss.backward()
            opt.step()
            t3 = time.perf_counter()
            t_load += t2 - t1
            t_step += t3 - t2
            s_loss += float(loss.detach())
            done = (b + 1) * cfg.batch_size
            _progress(f"[{loss_name}] epoch {epoch + 1}/{cfg.epochs}", done, nb * cfg.batch_size, done / (t3 - t_ep), s_loss / (b + 1), tty)
        if tty:
            sys.stderr.write("\n")
        t_train = time.perf_counter() - t_ep
        train_loss = dist.all_sum([s_loss / nb])[0] / world
        t4 = time.perf_counter()
        val_mae, val_mae_a3, n_val = _predict_mae(model, val_bank, val_plan, max(1, local_b), torch, dist)
        t_val = time.perf_counter() - t4
        sched.step(val_mae)
        improved = val_mae < state["best_val_mae"]
        state["epoch"] = epoch + 1
        if improved:
            state.update(best_val_mae=val_mae, best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        if state["bad_epochs"] >= cfg.patience:
            state.update(done=True, why="early stopping")
        elif state["epoch"] >= cfg.epochs:
            state.update(done=True, why="epochs")
        windows = nb * cfg.batch_size
        rec = {
            "epoch": epoch + 1,
            "loss": loss_name,
            "train_loss": train_loss,
            "val_mae": val_mae,
            "val_mae_A3": val_mae_a3,
            "val_windows": n_val,
            "lr": opt.param_groups[0]["lr"],
            "windows": windows,
            "windows_per_s": windows / t_train,
            "load_s": t_load,
            "step_s": t_step,
            "val_s": t_val,
            "best": improved,
            "processes": world,
        }
        state["history"] = state["history"] + [rec]
        if rank == 0:
            extra = checkpoint_extra(cfg, loss_name, db, split, baseline)
            extra["epoch"] = epoch + 1
            extra["val_mae"] = val_mae
            if improved:
                save_checkpoint(folder / "best.pt", model, extra)
            payload = checkpoint_payload(model, extra)
            payload.update(optimizer=opt.state_dict(), scheduler=sched.state_dict(), torch_rng=torch.get_rng_state(),
                           train_state=json.loads(json.dumps(state)))
            with atomic_output(ckpt_path) as tmp:
                torch.save(payload, tmp)
            with open(folder / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            _log(f"[{loss_name}] epoch {epoch + 1}/{cfg.epochs}: train {loss_name} {train_loss:.4f}, val MAE {val_mae:.4f} rho/rho_bulk "
                 f"({val_mae_a3:.3e} A^-3){' *' if improved else ''}, lr {rec['lr']:.2e}, {rec['windows_per_s']:.1f} windows/s "
                 f"(loading {t_load:.2f} s of {t_train:.1f} s)", rank)
        dist.barrier()
        n_run += 1
        if state["done"]:
            if state.get("why") == "early stopping":
                _log(f"[{loss_name}] early stopping: no better validation MAE for {cfg.patience} epochs", rank)
            break
        if stop_after is not None and n_run >= stop_after:
            return {**_result(state, folder), "stopped": True}
    return _result(state, folder)


def _result(state, folder) -> dict:
    return {
        "best_val_mae": state["best_val_mae"],
        "best_epoch": state["best_epoch"],
        "epochs": state["epoch"],
        "why_stopped": state.get("why"),
        "checkpoint": str(folder / "best.pt"),
    }


def train_command(db, out, model=None, epochs=None, resume=False, config=None, loss=None, seed=None, progress=True) -> dict:
    """What ``hydrolayer train`` does (the CLI only parses arguments)."""
    out = Path(out)
    if resume:
        given = [n for n, v in (("--model", model), ("--config", config), ("--loss", loss), ("--seed", seed)) if v is not None]
        if given:
            raise InputError(f"{out}: --resume continues with the run's own config.json; only --epochs may change (drop {', '.join(given)})")
        return fit(db, out, resume=True, epochs=epochs, progress=progress)
    cfg = load_config(config, model=model, epochs=epochs, loss=loss, seed=seed)
    return fit(db, out, cfg, progress=progress)
