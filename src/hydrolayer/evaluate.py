"""Evaluation: the paper's Table 1 with the MD noise floor and a height-only baseline, peaks, figures.

``evaluate(runs, db, out)`` (``hydrolayer evaluate RUN [RUN ...] --db DB --out REPORT``)
writes ``report.md``, ``metrics.csv``, ``metrics.json`` and PNG figures into ``out``.

Rows (the paper's Table 1): the run's own test split (simulations never seen in training or
validation), then each named test surface found in the database: calcite (10-14) with a
CO3 2- vacancy and with a Ca2+ vacancy (MAE only within 3 Å of the defect sites, in windows
centred on them), pristine aragonite (010), aragonite (001), vaterite (010) (all windows of
a fixed grid tiling the cell). Both faces of every slab are used (the bottom mirrored).

Columns: the MD noise floor, the height-only baseline and one column per model (for a run
trained with ``loss: compare``, the L1 and the L2 network each). Models trained on different
data (the paper's (c) and (c+a)): each column's own test split joins the test set (the first
run's first; one test row per facet when they hold several), the labels name the training
data, and a cell whose simulations that column was trained or selected on says "in training
data" (the paper's wording) with the number in brackets; it is never a row's best. The
height-only baseline is the first run's. Each MAE is given in
rho/rho_bulk and in water-O number density (Å^-3, the paper's unit: MAE x rho_bulk).

Reference and noise floor: the reference is the mean of the two half-run densities, both
smoothed with the model's ``sigma_target`` (the same as its training targets). The noise
floor is ``0.5 <|half1 - half2|>`` over the same voxels: for independent noise in the two
halves it equals the expected MAE of the *exact* density against the full-run reference, so
no model can be expected to beat it on average.

Pristine surfaces (the aragonite and vaterite test surfaces, pristine calcite) are periodic in
their surface unit cell: both halves are averaged over the simulated cell's lateral unit
cells before anything is compared (``data.average_unit_cells``), which lowers their noise
floor. The report shows by how much: for these groups the noise floor and each model's MAE
are also computed against the unaveraged halves, over the same windows and voxels.

Groups: the run's test split; "new simulations", training-pool rows of the database that
are in none of the run's train/val/test lists (finished after the training started, so
never used for training or model selection); each of these also near its defects (voxels
within 3 Å of a removed ion); and the named test surfaces.

Height-only baseline: the mean training target at each height above the surface plane
(``baseline.json`` of the run), the same at every lateral position.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .conventions import hydration_peaks, noise_floor_map
from .inference import run_batches, window_latents
from .scoring import score_windows
from .uncertainty import (
    calibration,
    latent_distance,
    latent_reference,
    ood_scores,
    rank_correlation,
    read_latents,
    write_latents,
    youden_threshold,
)
from .util import InputError, atomic_output

__all__ = ["evaluate", "DEFECT_RADIUS", "training_latents", "write_training_latents"]

DEFECT_RADIUS = 3.0  # Å, as the paper
MODEL_LABELS = {"unet": "U-Net", "attention-unet": "Att U-Net"}
# The paper's Table 1 (Ranawat, Jaques & Foster 2021): MAE in water-O number density (Å^-3)
# by row (this module's group names) and column (network, training data: c = calcite,
# c+a = calcite + aragonite (010)); None: "in training data"; the paper has no aragonite
# (001) row in its table.
PAPER_TABLE1 = {
    "test set": {
        "U-Net (c)": 1.1015e-3,
        "Att U-Net (c)": 1.1433e-3,
        "U-Net (c+a)": 8.8640e-4,
        "Att U-Net (c+a)": 1.0575e-3,
    },
    "calcite-104 CO3 vacancy": {
        "U-Net (c)": 2.7288e-3,
        "Att U-Net (c)": 3.0565e-3,
        "U-Net (c+a)": 2.8357e-3,
        "Att U-Net (c+a)": 3.1721e-3,
    },
    "calcite-104 Ca vacancy": {
        "U-Net (c)": 2.6579e-3,
        "Att U-Net (c)": 2.6496e-3,
        "U-Net (c+a)": 2.9125e-3,
        "Att U-Net (c+a)": 2.8362e-3,
    },
    "aragonite-010": {"U-Net (c)": 9.4199e-3, "Att U-Net (c)": 1.0148e-2, "U-Net (c+a)": None, "Att U-Net (c+a)": None},
    "vaterite-010": {
        "U-Net (c)": 6.4501e-3,
        "Att U-Net (c)": 7.4893e-3,
        "U-Net (c+a)": 6.6732e-3,
        "Att U-Net (c+a)": 7.9105e-3,
    },
}


def training_surfaces(meta: dict) -> list[str]:
    """The surfaces a checkpoint was trained on; calcite (10-14) when it does not record
    them (every model before data set v1)."""
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    return list(training.get("surfaces") or ["calcite-104"])


def training_data(meta: dict) -> str:
    """The paper's name for a checkpoint's training data: "c+a" when its training surfaces
    include aragonite, else "c"."""
    return "c+a" if any(str(x).startswith("aragonite") for x in training_surfaces(meta)) else "c"


def paper_column(meta: dict) -> str:
    """The paper's Table 1 column that a checkpoint corresponds to: its network, and its
    training data (:func:`training_data`)."""
    return f"{MODEL_LABELS.get(meta.get('model'), meta.get('model'))} ({training_data(meta)})"


def checkpoint_splits(metas) -> list[dict]:
    """The training splits recorded in checkpoints' metadata (an ensemble: every member's,
    their bootstrap resamples differ)."""
    return [split for m in metas if (split := (m.get("training") or {}).get("split"))]


def trained_on(splits) -> set:
    """Unique ids of the simulations that training splits trained or selected on (train + val)."""
    return {u for split in splits for key in ("train", "val") for u in split.get(key, [])}


PREDICT_BATCH = 4  # windows per network call
LATENT_STRIDE = 16  # grid points (half a window) between the training windows whose latents are kept
NOT_NAMED = ("test set", "new simulations")  # group names starting so are not named test surfaces


def md_and_prediction(db, uids, pred, cache_dir, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The MD split halves (n, 2, X, Y, Z) and the loaded predictor ``pred``'s windows
    (n, X, Y, Z) over the whole-window plan of simulations ``uids`` in ``db`` (windows
    cached in ``cache_dir``), with the descriptor and target smoothing the model was
    trained with: the one place the benchmarks get a model's windows beside MD's."""
    from . import data

    bank = data.build_bank(
        db,
        uids,
        cache_dir,
        sigma=pred.sigma,
        sigma_target=float(pred.meta.get("sigma_target") or data.DEFAULT_SIGMA_TARGET),
    )
    x, halves = bank.batch(bank.grid_plan())
    return halves, run_batches(pred.net, x, batch)


def is_named_group(name: str) -> bool:
    """Whether a report group is a named test surface (not a test split, per facet or not,
    and not the simulations finished after the split, with or without "near defects")."""
    return not name.startswith(NOT_NAMED)


# ------------------------------------------------------------------ peaks
def _match_peaks(sim: list[dict], pred: list[dict], tol: float = 0.6) -> list[dict]:
    rows = []
    for p in sim:
        near = [q for q in pred if abs(q["z"] - p["z"]) <= tol]
        q = min(near, key=lambda q: abs(q["z"] - p["z"])) if near else None
        rows.append(
            {
                "z_sim": p["z"],
                "height_sim": p["height"],
                "z_pred": None if q is None else q["z"],
                "height_pred": None if q is None else q["height"],
            }
        )
    return rows


# ------------------------------------------------------------------ models of the runs
def _columns(runs: Sequence[Path]) -> list[dict]:
    """One column per network: label, checkpoint path, run folder (for split/baseline)."""
    cols = []
    for run in runs:
        run = Path(run)
        if run.is_file():
            tag = run.name.removesuffix(".ensemble.json").removesuffix(".json") if run.suffix == ".json" else run.stem
            cols.append({"path": run, "run": run.parent, "tag": tag, "loss": None, "kept": True})
            continue
        if not run.is_dir():
            raise InputError(f"{run}: no such run directory or checkpoint")
        summary = run / "summary.json"
        if summary.exists():
            s = json.loads(summary.read_text())
            for loss in s["losses"]:
                cols.append(
                    {
                        "path": run / loss / "best.pt",
                        "run": run,
                        "tag": run.name,
                        "loss": loss,
                        "kept": loss == s["kept"],
                    }
                )
        elif (run / "model.pt").exists():
            cols.append({"path": run / "model.pt", "run": run, "tag": run.name, "loss": None, "kept": True})
        else:
            raise InputError(
                f"{run}: no summary.json or model.pt (is the training finished? 'hydrolayer train --resume')"
            )
    return cols


def _load_columns(cols: list[dict]) -> None:
    from .models import load_model
    from .registry import is_ensemble_path, read_ensemble

    for c in cols:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if is_ensemble_path(c["path"]):  # an ensemble: its members' mean, and their spread
                manifest = read_ensemble(c["path"])
                loaded = [load_model(p) for p in manifest.members]
                c["nets"], c["metas"] = [net for net, _ in loaded], [meta for _, meta in loaded]
                c["net"], c["meta"] = loaded[0]
                c["latents_file"] = manifest.latents
            else:
                c["net"], c["meta"] = load_model(c["path"])
        c["seen"] = _seen_in_training(c)
    data_tags = [f"({training_data(c['meta'])})" for c in cols]
    names = {}
    for c, data_tag in zip(cols, data_tags):
        loss = c["loss"] or c["meta"].get("loss")
        label = MODEL_LABELS.get(c["meta"]["model"], c["meta"]["model"]) + (f" ({loss.upper()})" if loss else "")
        if "nets" in c:
            label = f"{label} ensemble of {len(c['nets'])}"
        if len(set(data_tags)) > 1:  # (c) beside (c+a): say which
            label = f"{label} {data_tag}"
        names.setdefault(label, []).append(c)
    for label, cs in names.items():
        for c in cs:
            c["label"] = label if len(cs) == 1 else f"{label} [{c['tag']}]"
        if len(cs) > 1 and len({c["label"] for c in cs}) < len(cs):
            for i, c in enumerate(cs):
                c["label"] = f"{label} #{i + 1}"


def _column_splits(c: dict) -> list[dict]:
    """The training splits behind a column: its run's ``split.json``, or each checkpoint's
    (every member's, for an ensemble: their bootstrap resamples differ)."""
    from . import data

    path = Path(c["run"]) / "split.json"
    return ([data.load_split(path)] if path.exists() else []) + checkpoint_splits(c.get("metas") or [c["meta"]])


def _seen_in_training(c: dict) -> set:
    """Unique ids of the simulations a column was trained or selected on (train + val)."""
    return trained_on(_column_splits(c))


# ------------------------------------------------------------------ one group of windows
def _group_windows(bank, defect: bool) -> tuple[list, list]:
    """(plan, masks): the windows of a row group and the voxels that count in each."""
    plan, masks = [], []
    if defect:
        for i, e in enumerate(bank.entries):
            sites = np.asarray(e.meta["defect_sites"]).reshape(-1, 3)
            if not len(sites):
                continue
            for p in bank.centred_plan(i, sites):
                m = bank.defect_mask(*p, radius=DEFECT_RADIUS)
                if m.any():
                    plan.append(p)
                    masks.append(m)
    else:
        plan = bank.grid_plan()
        masks = [None] * len(plan)
    return plan, masks


def _evaluate_group(name, bank, defect, cols, baseline, figdir, figures, raw_bank=None) -> dict:
    """MAE of every model, the noise floor and the baseline on one group. ``raw_bank``: the
    same rows without unit-cell averaging (pristine rows); the noise floor and the models'
    MAE against that reference are then reported too (``unit_cell_averaging``)."""
    plan, masks = _group_windows(bank, defect)
    if not plan:
        return {"name": name, "windows": 0, "note": "no windows (no defect sites recorded)" if defect else "no windows"}
    x, halves = bank.batch(plan)
    ref = 0.5 * (halves[:, 0] + halves[:, 1])
    rho_b = np.array([bank.entries[p[0]].interface.rho_bulk for p in plan])
    z = bank.heights()

    def mae(pred, reference=ref):
        return score_windows([np.abs(pred[w] - reference[w]) for w in range(len(plan))], rho_b, masks)

    def noise_floor(h):
        return score_windows([noise_floor_map(h[w, 0], h[w, 1]) for w in range(len(plan))], rho_b, masks)

    res: dict[str, Any] = {
        "name": name,
        "windows": len(plan),
        "voxels": int(sum(m.sum() if m is not None else ref[0].size for m in masks)),
        "simulations": sorted({bank.entries[p[0]].interface.unique_id for p in plan}),
        "region": f"within {DEFECT_RADIUS:g} A of the defect sites"
        if defect
        else "whole windows (fixed grid over the cell, both faces)",
        "noise_floor": noise_floor(halves),
        "models": {},
    }
    sim_prof = ref.mean(axis=(0, 1, 2))
    sim_peaks = hydration_peaks(z, sim_prof)
    res["profile"] = {"height": z.tolist(), "simulated": sim_prof.tolist()}
    res["peaks_simulated"] = sim_peaks
    if baseline is not None:
        bp = np.interp(z, baseline["height"], baseline["profile"])
        res["baseline"] = mae(np.broadcast_to(bp, ref.shape))
        res["profile"]["baseline"] = bp.tolist()
    preds, spreads = _predict_columns(cols, x)
    for c in cols:
        pred = preds[c["label"]][0]
        m = mae(pred)
        if c["label"] in spreads:
            m["calibration"] = calibration(pred, spreads[c["label"]], halves, masks)
            if c.get("latent_ref") is not None:
                lat = np.stack([window_latents(net, x, PREDICT_BATCH) for net in c["nets"]])
                for w, d in zip(m["calibration"]["windows"], latent_distance(c["latent_ref"], lat)):
                    w["latent_distance"] = float(d)
            m["calibration"]["ood"] = ood_scores(m["calibration"]["windows"])
        prof = pred.mean(axis=(0, 1, 2))
        m["peaks"] = _match_peaks(sim_peaks, hydration_peaks(z, prof))
        if baseline is not None:
            m["beats_baseline"] = bool(m["mae"] < res["baseline"]["mae"])
        if set(res["simulations"]) & c.get("seen", set()):
            m["in_training"] = True  # the paper's "In training data": not a test of this column
        res["models"][c["label"]] = m
        res["profile"][c["label"]] = prof.tolist()
    if raw_bank is not None:
        _, rh = raw_bank.batch(plan)
        rref = 0.5 * (rh[:, 0] + rh[:, 1])
        res["unit_cell_averaging"] = {
            "unit_cells": {e.interface.unique_id: e.meta.get("unit_cells_averaged", [1, 1]) for e in bank.entries},
            "noise_floor_before": noise_floor(rh),
            "noise_floor_after": res["noise_floor"],
            "models_before": {c["label"]: mae(preds[c["label"]][0], rref) for c in cols},
        }
    if figures:
        res["figures"] = _figures(name, figdir, z, ref, x, preds, res, plan, masks)
    return res


def _predict_columns(cols: list[dict], x: np.ndarray) -> tuple[dict, dict]:
    """``{label: (prediction (N, X, Y, Z), attention maps or None)}`` of every column on ``x``,
    and ``{label: spread (N, X, Y, Z)}`` of the ensemble columns (members' std, ddof 0)."""
    preds, spreads = {}, {}
    for c in cols:
        if "nets" in c:
            outs = np.stack([run_batches(net, x, PREDICT_BATCH) for net in c["nets"]])
            preds[c["label"]] = (outs.mean(axis=0), None)
            spreads[c["label"]] = outs.std(axis=0)
        elif c["meta"]["model"] == "attention-unet":
            preds[c["label"]] = run_batches(c["net"], x, PREDICT_BATCH, attention=True)
        else:
            preds[c["label"]] = (run_batches(c["net"], x, PREDICT_BATCH), None)
    return preds, spreads


# ------------------------------------------------------------------ figures
def _slug(name: str) -> str:
    import re

    return re.sub(r"-+", "-", "".join(ch if ch.isalnum() else "-" for ch in name.lower())).strip("-")


def _figures(name, figdir: Path, z, ref, x, preds, res, plan, masks) -> list[str]:
    """The figures of one group (file names in ``figdir``): the 1D profile, an xz and xy slices
    of the window with the most counted voxels (MD and the first model), the attention maps."""
    import matplotlib

    matplotlib.use("Agg")
    slug = _slug(name)
    w = int(np.argmax([m.sum() if m is not None else 0 for m in masks])) if masks[0] is not None else 0
    first = next(iter(preds))
    files = [
        _save_figure(_profile_figure(name, z, preds, res), figdir, f"profile_{slug}.png"),
        _save_figure(_xz_figure(name, z, ref[w], preds[first][0][w], first), figdir, f"xz_{slug}.png"),
        _save_figure(
            _slices_figure(name, z, ref[w], preds[first][0][w], first, res["peaks_simulated"]),
            figdir,
            f"slices_{slug}.png",
        ),
    ]
    for label, (pred, att) in preds.items():
        if att is not None:
            files.append(
                _save_figure(_attention_figure(name, z, x, label, att), figdir, f"attention_{slug}_{_slug(label)}.png")
            )
    return files


def _save_figure(fig, figdir: Path, fname: str) -> str:
    import matplotlib.pyplot as plt

    with atomic_output(figdir / fname) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return fname


def _profile_figure(name, z, preds, res):
    """1D mean density along z: MD, every model, the baseline."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    ax.plot(z, res["profile"]["simulated"], "k-", lw=2, label="MD (reference)")
    for label in preds:
        ax.plot(z, res["profile"][label], lw=1.4, label=label)
    if "baseline" in res["profile"]:
        ax.plot(z, res["profile"]["baseline"], ":", color="grey", label="height-only baseline")
    ax.set_xlabel("height above the surface Ca plane z - z_s (Å)")
    ax.set_ylabel("mean water density ρ/ρ_bulk")
    ax.set_title(f"{name}: 1D mean density")
    ax.legend(fontsize=8)
    return fig


def _xz_figure(name, z, ref_w, pred_w, first):
    """xz mean density (over y) of one window: MD against the first model."""
    import matplotlib.pyplot as plt

    ext_x = (0, 10.0, z[0], z[-1] + (z[1] - z[0]))
    vmax = float(max(ref_w.mean(1).max(), pred_w.mean(1).max()))
    fig, axs = plt.subplots(1, 2, figsize=(8, 4.2), sharey=True, layout="constrained")
    for ax, arr, t in ((axs[0], ref_w, "MD"), (axs[1], pred_w, first)):
        im = ax.imshow(arr.mean(1).T, origin="lower", extent=ext_x, aspect="auto", vmin=0, vmax=vmax, cmap="viridis")
        ax.set_title(t)
        ax.set_xlabel("x (Å, window)")
    axs[0].set_ylabel("z - z_s (Å)")
    fig.colorbar(im, ax=axs, label="ρ/ρ_bulk (mean over y)")
    fig.suptitle(f"{name}: xz mean density")
    return fig


def _slices_figure(name, z, ref_w, pred_w, first, peaks):
    """xy slices of one window at the simulated peaks: MD above, the first model below."""
    import matplotlib.pyplot as plt

    peaks = peaks or [{"z": 2.0}]
    fig, axs = plt.subplots(2, len(peaks), figsize=(3.6 * len(peaks) + 0.8, 6.6), squeeze=False, layout="constrained")
    for j, p in enumerate(peaks):
        k = int(np.argmin(np.abs(z - p["z"])))
        vmax = float(max(ref_w[:, :, k].max(), pred_w[:, :, k].max()))
        for i, (arr, t) in enumerate(((ref_w, "MD"), (pred_w, first))):
            im = axs[i, j].imshow(
                arr[:, :, k].T, origin="lower", extent=(0, 10, 0, 10), vmin=0, vmax=vmax, cmap="viridis"
            )
            axs[i, j].set_title(f"{t}, z - z_s = {z[k]:.2f} Å", fontsize=9)
            axs[i, j].set_xlabel("x (Å)")
            axs[i, j].set_ylabel("y (Å)")
        fig.colorbar(im, ax=axs[:, j], label="ρ/ρ_bulk", shrink=0.8)
    fig.suptitle(f"{name}: xy slices at the simulated peaks")
    return fig


def _attention_figure(name, z, x, label, att):
    """Mean attention along z per pooling scale, and weighted by the C, O, Ca densities."""
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2, figsize=(10, 4.0), layout="constrained")
    for s, a in enumerate(att):
        nz = a.shape[-1]
        zs = z[0] + (np.arange(nz) + 0.5) * (z[-1] - z[0] + (z[1] - z[0])) / nz
        axs[0].plot(zs, a.mean(axis=(0, 1, 2)), label=f"scale {s} ({a.shape[1]}x{a.shape[2]}x{nz})")
    axs[0].set_xlabel("z - z_s (Å)")
    axs[0].set_ylabel("mean attention coefficient")
    axs[0].set_title("attention along z per pooling scale")
    axs[0].legend(fontsize=8)
    a0 = att[0]
    for c, el in enumerate(("C", "O", "Ca")):
        d = x[:, c]
        wsum = d.sum(axis=(0, 1, 2))
        prof = np.where(wsum > 1e-6 * wsum.max(), (a0 * d).sum(axis=(0, 1, 2)) / np.maximum(wsum, 1e-30), np.nan)
        axs[1].plot(z, prof, label=el)
    axs[1].set_xlabel("z - z_s (Å)")
    axs[1].set_ylabel("atom-density-weighted attention (scale 0)")
    axs[1].set_title("attention weighted by C, O, Ca density")
    axs[1].legend(fontsize=8)
    fig.suptitle(f"{name}: {label}")
    return fig


def _learning_curves(runs: Sequence[Path], figdir: Path) -> str | None:
    """Train loss and validation MAE per epoch of every run and loss (from metrics.jsonl)."""
    curves = []
    for run in runs:
        for f in sorted(Path(run).glob("*/metrics.jsonl")):
            recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
            if recs:
                curves.append((f"{Path(run).name} {f.parent.name.upper()}", recs))
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for label, recs in curves:
        ep = [r["epoch"] for r in recs]
        axs[0].plot(ep, [r["train_loss"] for r in recs], label=label)
        axs[1].plot(ep, [r["val_mae"] for r in recs], label=label)
    axs[0].set_ylabel("training loss (L1: rho/rho_bulk, L2: its square)")
    axs[1].set_ylabel("validation MAE (rho/rho_bulk)")
    for ax in axs:
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fname = "learning_curves.png"
    with atomic_output(figdir / fname) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return fname


# ------------------------------------------------------------------ report
def _fmt(m: dict | None) -> str:
    if not m:
        return "-"
    return f"{m['mae']:.4f} ({m['mae_A3']:.3e})"


def _report(result: dict) -> str:
    """report.md: Table 1, unit-cell averaging, verdicts, peaks, training."""
    lines = _table1(result) + _paper(result) + _calibration(result) + _averaging(result) + _verdicts(result)
    lines += _peaks(result) + _training(result)
    return "\n".join(lines) + "\n"


def _table1(result: dict) -> list[str]:
    labels = result["models"]
    lines = [
        "# hydrolayer evaluation",
        "",
        f"Database: `{result['db']}`"
        + (f", rows 1-{result['max_row']}" if result.get("max_row") is not None else "")
        + f". Runs: {', '.join(f'`{r}`' for r in result['runs'])}.",
        "",
        "## Table 1: mean absolute error",
        "",
        "Each cell: MAE in rho/rho_bulk (and in water-O number density, Å^-3, as the paper). "
        f"Reference: mean of the two MD half-runs, smoothed with sigma_target = {result['sigma_target']} Å like the training targets. "
        "MD noise floor: 0.5 <|half1 - half2|> over the same voxels, the MAE the exact density would have against this reference. "
        "Height-only baseline: the mean training profile along z, the same at every lateral position. "
        "Pristine surfaces: reference and noise floor after averaging each half over the simulated cell's lateral unit cells.",
        "",
        "| | windows | MD noise floor | height-only baseline | " + " | ".join(labels) + " |",
        "|---|---|---|---|" + "---|" * len(labels),
    ]
    for g in result["groups"]:
        if not g.get("windows"):
            lines.append(f"| {g['title']} | 0 | {g.get('note', '')} | | " + " | ".join("" for _ in labels) + " |")
            continue
        cells = []
        tested = [lab for lab in labels if not g["models"][lab].get("in_training")]
        best = min(tested, key=lambda lab: g["models"][lab]["mae"]) if tested else None
        for lab in labels:
            s = _fmt(g["models"][lab])
            if g["models"][lab].get("in_training"):
                s = f"in training data ({s})"
            cells.append(f"**{s}**" if lab == best and len(tested) > 1 else s)
        lines.append(
            f"| {g['title']} | {g['windows']} | {_fmt(g['noise_floor'])} | {_fmt(g.get('baseline'))} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "Regions: " + "; ".join(f"{g['title']}: {g.get('region', '-')}" for g in result["groups"]) + ".", ""]
    if any(m.get("in_training") for g in result["groups"] for m in g.get("models", {}).values()):
        lines += [
            '"in training data": the row holds simulations that model was trained or selected on (its split\'s '
            'train or validation lists), so the number in brackets is not a test of it (the paper\'s "In training data").',
            "",
        ]
    return lines


def _paper(result: dict) -> list[str]:
    """The paper's Table 1 beside ours, in its unit (Å^-3): each model next to the paper's
    value for the same network and training data."""
    labels, cols = result["models"], result.get("paper_columns") or {}
    lines = [
        "## The paper's Table 1 beside ours (MAE in Å^-3)",
        "",
        "Each model next to the paper's value for the same network and training data (c: calcite, "
        "c+a: calcite + aragonite (010)). The paper's references are single MD runs without a stated noise floor; "
        "ours are compared at the same smoothing as the training targets.",
        "",
        "| | MD noise floor | height-only baseline | "
        + " | ".join(f"{lab} | paper {cols.get(lab, '?')}" for lab in labels)
        + " |",
        "|---|---|---|" + "---|---|" * len(labels),
    ]
    for g in result["groups"]:
        paper = PAPER_TABLE1.get("test set" if g["name"] == "test set calcite-104" else g["name"])
        if not g.get("windows") or paper is None:
            continue
        cells = []
        for lab in labels:
            m = g["models"][lab]
            ours = "in training data" if m.get("in_training") else f"{m['mae_A3']:.3e}"
            ref = paper.get(cols.get(lab), "?")
            cells += [
                ours,
                "in training data" if ref is None else (f"{ref:.3e}" if isinstance(ref, float) else ref),
            ]
        base = f"{g['baseline']['mae_A3']:.3e}" if g.get("baseline") else "-"
        lines.append(f"| {g['title']} | {g['noise_floor']['mae_A3']:.3e} | {base} | " + " | ".join(cells) + " |")
    return lines + ["", "The paper's table has no aragonite (001) row.", ""]


def _ensemble_labels(result: dict) -> list[str]:
    return [
        lab
        for lab in result["models"]
        if any("calibration" in g.get("models", {}).get(lab, {}) for g in result["groups"])
    ]


def _calibration(result: dict) -> list[str]:
    """Does an ensemble's spread tell its error, and do the spread and the latent distance
    tell the windows where it fails? Per group and pooled over the named test surfaces
    (``uncertainty.calibration``, ``uncertainty.ood_scores``)."""
    lines = []
    for lab in _ensemble_labels(result):
        ood = (result.get("ood") or {}).get(lab) or {}
        lines += [
            f"## Calibration of the ensemble spread: {lab}",
            "",
            "Spread: the members' standard deviation; error: against the MD reference with the reference's own "
            "split-half noise taken out (module notes of `hydrolayer.uncertainty`). Rank correlations (Spearman) of "
            "the spread with the error per window and per voxel; coverage: share of voxels within +-2 sigma "
            "(sigma^2 = spread^2 + the reference's noise); out of domain: area under the ROC curve of a window score "
            "for the windows whose MAE is more than twice their MD noise floor: the window spread, the latent "
            "distance (the members' bottleneck features against their training windows', k nearest neighbours; "
            "`hydrolayer.uncertainty`) and the two combined (mean of their ranks within the row).",
            "",
            f"Training latents: {ood.get('latents') or '-'}.",
            "",
            "| | windows | per-window rank correlation | per-voxel rank correlation | coverage of +-2 sigma | "
            "failing windows | ROC AUC spread | ROC AUC latent distance | ROC AUC combined |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for g in result["groups"]:
            cal = g.get("models", {}).get(lab, {}).get("calibration")
            if cal is not None:
                ood_g = cal.get("ood") or ood_scores(cal["windows"])
                lines.append(_calibration_row(g["title"], len(cal["windows"]), cal, ood_g))
        if ood.get("named_windows"):
            lines.append(
                _calibration_row(
                    "named test surfaces, pooled",
                    ood["named_windows"],
                    {},
                    ood["named_pooled"],
                    ood["named_window_spearman"],
                )
            )
        if ood.get("all_pooled"):
            lines.append(_calibration_row("every window above, pooled", ood["all_windows"], {}, ood["all_pooled"]))
        lines += ["", *_threshold_lines(ood), f"Reliability diagram: `figures/reliability_{_slug(lab)}.png`.", ""]
    return lines


def _threshold_lines(ood: dict) -> list[str]:
    """The measured flag thresholds (Youden's J over every window) as report lines."""
    out = []
    for key, t in (ood.get("thresholds") or {}).items():
        if t:
            out.append(
                f"- {key.replace('_', ' ')}: the threshold maximising Youden's J over every window is "
                f"{t['threshold']:.3g} (flags {t['tpr']:.0%} of the failing windows and {t['fpr']:.0%} of the others)."
            )
    return out + [""] if out else []


def _calibration_row(title: str, n_windows: int, cal: dict, ood: dict, window_rho="cal") -> str:
    """One row of the calibration table; ``cal`` is empty for a pooled row."""
    rho = cal.get("window_spearman") if window_rho == "cal" else window_rho
    cover = f"{cal['coverage_2sigma']:.2f}" if "coverage_2sigma" in cal else ""
    auc = [_num((ood.get(k) or {}).get("auc")) for k in ("spread", "latent_distance", "combined")]
    return (
        f"| {title} | {n_windows} | {_num(rho)} | {_num(cal.get('voxel_spearman'))} | {cover} | "
        f"{ood['spread']['failing']} | " + " | ".join(auc) + " |"
    )


def _num(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _reliability_figures(result: dict, figdir: Path) -> list[str]:
    """Per ensemble: the corrected RMS error against the mean spread, per quantile bin of the
    spread, one line per group (a calibrated spread lies on the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for lab in _ensemble_labels(result):
        fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
        top = 0.0
        for g in result["groups"]:
            cal = g.get("models", {}).get(lab, {}).get("calibration")
            if cal:
                x, y = [b["spread"] for b in cal["reliability"]], [b["rms_error"] for b in cal["reliability"]]
                ax.plot(x, y, "o-", ms=3, label=g["title"])
                top = max(top, max(x), max(y))
        ax.plot([0, top], [0, top], "k:", lw=1, label="calibrated")
        ax.set(xlabel="ensemble spread (ρ/ρ_bulk)", ylabel="RMS error, MD noise removed (ρ/ρ_bulk)", title=lab)
        ax.legend(fontsize=7)
        files.append(_save_figure(fig, figdir, f"reliability_{_slug(lab)}.png"))
    return files


def _verdicts(result: dict) -> list[str]:
    labels = result["models"]
    verdicts = []
    for g in result["groups"]:
        for lab in labels:
            m = g.get("models", {}).get(lab)
            if m and m.get("in_training"):
                continue
            if m and "beats_baseline" in m and not m["beats_baseline"]:
                verdicts.append(
                    f"- **{lab} does not beat the height-only baseline on {g['title']}** "
                    f"({m['mae']:.4f} vs {g['baseline']['mae']:.4f} rho/rho_bulk)."
                )
            if m and m["mae"] < g["noise_floor"]["mae"]:
                verdicts.append(
                    f"- {lab} on {g['title']} is below the MD noise floor ({m['mae']:.4f} < {g['noise_floor']['mae']:.4f}): "
                    "the reference is too noisy to rank models there."
                )
    return ["## Verdicts", ""] + (verdicts or ["- Every model beats the height-only baseline on every row."]) + [""]


def _averaging(result: dict) -> list[str]:
    labels = result["models"]
    lines = []
    avg = [g for g in result["groups"] if g.get("unit_cell_averaging")]
    if avg:
        lines += [
            "## Unit-cell averaging of the pristine references",
            "",
            "A pristine slab is periodic in its surface unit cell, so each half-run density is averaged over the "
            "na x nb lateral unit cells of the simulated cell (a projection onto the Fourier components whose lateral "
            "indices are multiples of na and nb: the exact mean over the unit-cell translations, no resampling) "
            "before the halves are compared. Same windows and voxels before and after. For noise independent from "
            "cell to cell the floor would drop by sqrt(na nb); a difference between the halves that is the same in "
            "every cell (a whole layer slightly fuller in one half) is not reduced at all.",
            "",
            "| | unit cells | MD noise floor before | after | ratio | sqrt(na nb) | "
            + " | ".join(f"{lab} vs unaveraged reference" for lab in labels)
            + " |",
            "|---|---|---|---|---|---|" + "---|" * len(labels),
        ]
        for g in avg:
            u = g["unit_cell_averaging"]
            cells = sorted({f"{a}x{b}" for a, b in u["unit_cells"].values()})
            n = [a * b for a, b in u["unit_cells"].values()]
            before, after = u["noise_floor_before"], u["noise_floor_after"]
            lines.append(
                f"| {g['title']} | {', '.join(cells)} | {_fmt(before)} | {_fmt(after)} | "
                f"{before['mae'] / after['mae']:.2f} | {math.sqrt(min(n)):.2f}{'' if min(n) == max(n) else f'-{math.sqrt(max(n)):.2f}'} | "
                + " | ".join(_fmt(u["models_before"].get(lab)) for lab in labels)
                + " |"
            )
        lines.append("")
    return lines


def _peaks(result: dict) -> list[str]:
    labels = result["models"]
    lines = ["## Peaks of the 1D mean profile (height above z_s in Å, density in rho/rho_bulk)", ""]
    for g in result["groups"]:
        if not g.get("windows"):
            continue
        lines += [
            f"### {g['title']}",
            "",
            "| peak | MD z | MD height | " + " | ".join(f"{lab} z | {lab} height" for lab in labels) + " |",
            "|---|---|---|" + "---|---|" * len(labels),
        ]
        for i, p in enumerate(g["peaks_simulated"]):
            row = f"| {i + 1} | {p['z']:.2f} | {p['height']:.2f} |"
            for lab in labels:
                q = g["models"][lab]["peaks"][i]
                row += " - | - |" if q["z_pred"] is None else f" {q['z_pred']:.2f} | {q['height_pred']:.2f} |"
            lines.append(row)
        if not g["peaks_simulated"]:
            lines.append("| - | no peak found | | " + " | ".join("| " for _ in labels) + "|")
        lines.append("")
        for f in g.get("figures", []):
            lines.append(f"![{f}](figures/{f})")
        lines.append("")
    return lines


def _training(result: dict) -> list[str]:
    lines = ["## Training (validation MAE per loss, from the runs' summaries)", ""]
    for r, s in result["training"].items():
        if s:
            lines.append(
                f"- `{r}`: "
                + ", ".join(
                    f"{k}: best val MAE {v['best_val_mae']:.4f} at epoch {v['best_epoch']}"
                    for k, v in s["losses"].items()
                )
                + f"; kept {s['kept']}."
            )
    if result.get("learning_curves"):
        lines += ["", f"![learning curves](figures/{result['learning_curves']})"]
    lines.append("")
    lines.append(f"Regenerate: `{result['command']}`")
    return lines


def _csv(result: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["row", "column", "mae_rho_over_rho_bulk", "mae_A^-3", "windows", "region"])
    for g in result["groups"]:
        if not g.get("windows"):
            continue
        entries = [("MD noise floor", g["noise_floor"])]
        if "baseline" in g:
            entries.append(("height-only baseline", g["baseline"]))
        entries += list(g["models"].items())
        for col, m in entries:
            w.writerow([g["title"], col, f"{m['mae']:.6g}", f"{m['mae_A3']:.6g}", g["windows"], g["region"]])
    return buf.getvalue()


# ------------------------------------------------------------------ entry points
def evaluate(runs: Sequence, db, out, figures: bool = True, log=print, max_row: int | None = None) -> dict:
    """Evaluate the networks of ``runs`` on ``db``; write the report into ``out``.

    ``max_row``: use only database rows with id <= ``max_row`` (the database is append-only,
    so this is the database as it was when row ``max_row`` was the newest: a report, and a
    model card quoting it, stay reproducible while rows are added)."""
    from . import data
    from .train import check_db

    runs = [Path(r) for r in runs]
    out = Path(out)
    check_db(db)
    cols = _columns(runs)
    _load_columns(cols)
    st = _run_settings(cols)
    out.mkdir(parents=True, exist_ok=True)
    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    # reuse a shared window cache of the training if there is one; never write into the run
    cfg = st["train_config"]
    cache = Path(cfg["cache_dir"]) if cfg.get("cache_dir") and Path(cfg["cache_dir"]).is_dir() else out / "cache"
    bank_kw = dict(sigma=st["sigma"], sigma_target=st["sigma_target"], train_surfaces=st["train_surfaces"])
    for c in cols:
        if "nets" in c:  # an ensemble: the training latents of its out-of-domain score
            c["latent_ref"], c["latents_source"] = _column_latents(c, db, cache, max_row, log)

    results = []
    for name, title, uids, defect in _groups(db, cols, st, max_row, log):
        log(f"evaluating {title}: {len(uids)} simulation{'s' if len(uids) > 1 else ''}")
        bank = data.build_bank(db, uids, cache, **bank_kw)
        raw_bank = None
        if not defect and any(tuple(e.meta.get("unit_cells_averaged", (1, 1))) != (1, 1) for e in bank.entries):
            raw_bank = data.build_bank(db, uids, cache, unit_cells=False, **bank_kw)
        g = _evaluate_group(name, bank, defect, cols, st["baseline"], figdir, figures, raw_bank)
        if name.endswith(" near defects") and not g["windows"]:
            log(f"  (no defect sites in {title}: left out)")
            continue
        g["title"] = title
        results.append(g)
    result = _result(runs, db, out, cols, st, results, max_row, figdir if figures else None)
    result["ood"] = {c["label"]: _ood_summary(results, c) for c in cols if "nets" in c}
    if figures:
        result["calibration_figures"] = _reliability_figures(result, figdir)
    _write(out, result)
    log(
        f"wrote {out / 'report.md'}, metrics.csv, metrics.json"
        + (f" and {sum(len(g.get('figures', [])) for g in results)} figures" if figures else "")
    )
    return result


def _column_latents(c: dict, db, cache: Path, max_row, log) -> tuple[dict, str]:
    """An ensemble column's training latents: the manifest's file, or computed now from the
    members' training simulations (:func:`training_latents`); and where they came from."""
    if c.get("latents_file"):
        return read_latents(c["latents_file"])[0], str(c["latents_file"])
    log(f"{c['path']}: no training-latents file; computing the training windows' latents")
    ref, meta = _training_reference(c["nets"], c["metas"], db, cache, max_row)
    return ref, f"computed from {len(meta['simulations'])} training simulations ({meta['windows']} windows)"


def _ood_summary(groups: list[dict], c: dict) -> dict:
    """The out-of-domain scores of an ensemble column over the groups: ROC AUCs pooled over
    the named test surfaces (and there the per-window rank correlation of spread and
    error) and over every window, and the thresholds of the spread and the
    latent distance that maximise Youden's J over every window (``uncertainty.youden_threshold``)."""
    named, every = [], []
    for g in groups:
        cal = g.get("models", {}).get(c["label"], {}).get("calibration")
        if cal:
            every += cal["windows"]
            named += cal["windows"] if is_named_group(g["name"]) else []
    keys = ["spread"] + (["latent_distance"] if every and "latent_distance" in every[0] else [])
    return {
        "latents": c.get("latents_source"),
        "named_pooled": ood_scores(named),
        "named_windows": len(named),
        "named_window_spearman": rank_correlation([w["spread"] for w in named], [w["rms_error"] for w in named]),
        "all_pooled": ood_scores(every),
        "all_windows": len(every),
        "thresholds": {k: youden_threshold(every, k) for k in keys},
    }


def _training_reference(nets, metas: list[dict], db, cache_dir, max_row=None, log=None) -> tuple[dict, dict]:
    """``uncertainty.latent_reference`` of the networks ``nets`` on the windows of their
    training simulations (the union of the members' ``training.split.train``; database rows
    up to ``max_row``), both faces, every :data:`LATENT_STRIDE` grid points; and what it was
    made from (simulations, windows, pooling)."""
    from . import data, store
    from .conventions import window_starts
    from .inference import LATENT_HEIGHTS

    known = {r.unique_id for r in store.iter_rows(db) if max_row is None or int(r.id) <= int(max_row)}
    uids = sorted({u for m in metas for u in ((m.get("training") or {}).get("split") or {}).get("train", [])} & known)
    if len(uids) < 2:
        raise InputError(
            f"{db}: {len(uids)} of the model's training simulations (its checkpoints' training.split) found; "
            "the latent distance needs at least 2"
        )
    meta0 = metas[0]
    cfg = meta0.get("train_config") or {}
    bank = data.build_bank(
        db,
        uids,
        cache_dir,
        sigma=(meta0.get("descriptor") or {}).get("sigma"),
        sigma_target=meta0.get("sigma_target", data.DEFAULT_SIGMA_TARGET),
        train_surfaces=tuple(cfg.get("train_surfaces", data.TRAIN_SURFACES)),
        log=log,
    )
    plan = [
        (i, a, b)
        for i, e in enumerate(bank.entries)
        for a in window_starts(e.n_offsets[0], LATENT_STRIDE)
        for b in window_starts(e.n_offsets[1], LATENT_STRIDE)
    ]
    sims = [uids.index(bank.entries[i].interface.unique_id) for i, _, _ in plan]
    x, _ = bank.batch(plan)
    lat = np.stack([window_latents(net, x, PREDICT_BATCH) for net in nets])
    info = {
        "simulations": uids,
        "windows": len(plan),
        "stride_points": LATENT_STRIDE,
        "heights_A": list(LATENT_HEIGHTS),
        "pooling": "mean and max over the bottleneck cells in heights_A",
    }
    return latent_reference(lat, sims), info


def training_latents(model, db, cache_dir, max_row: int | None = None, log=None) -> tuple[dict, dict]:
    """The training latents of a checkpoint or ensemble manifest ``model`` (path), from its
    training simulations in ``db`` (windows cached in ``cache_dir``): (reference, meta), as
    :func:`write_training_latents` stores them."""
    from .models import load_model
    from .registry import is_ensemble_path, read_ensemble

    paths = read_ensemble(model).members if is_ensemble_path(model) else (Path(model),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaded = [load_model(p) for p in paths]
    return _training_reference([n.eval() for n, _ in loaded], [m for _, m in loaded], db, cache_dir, max_row, log)


def write_training_latents(model, db, cache_dir, max_row: int | None = None, log=print) -> Path:
    """Compute and store the training latents of ``model`` (a ``.pt`` checkpoint or an
    ensemble manifest) beside it (``registry.latents_path``); a manifest then names the file
    (``"latents"``). Returns the file's path."""
    from .registry import is_ensemble_path, latents_path, set_ensemble_latents
    from .train import check_db

    check_db(db)
    ref, info = training_latents(model, db, cache_dir, max_row, log)
    out = latents_path(model)
    write_latents(out, ref, model=Path(model).name, db=str(db), max_row=max_row, **info)
    if is_ensemble_path(model):
        set_ensemble_latents(model, out)
    log(
        f"wrote {out} ({out.stat().st_size / 1024:.0f} KB: {info['windows']} windows of {len(info['simulations'])} simulations)"
    )
    return out


def _run_settings(cols: list[dict]) -> dict:
    """From the first column's run (or checkpoint): split, baseline, training config, the
    descriptor and target sigmas (every column must share them) and the training surfaces."""
    from . import data

    run0 = cols[0]["run"]
    training0 = cols[0]["meta"].get("training") or {}
    split_path = run0 / "split.json"
    base_path = run0 / "baseline.json"
    meta0 = cols[0]["meta"]
    cfg = meta0.get("train_config", {}) or {}
    sigma = (meta0.get("descriptor") or {}).get("sigma")
    sigma_target = meta0.get("sigma_target", data.DEFAULT_SIGMA_TARGET)
    for c in cols[1:]:
        if (c["meta"].get("descriptor") or {}).get("sigma") != sigma or c["meta"].get("sigma_target") != sigma_target:
            raise InputError(
                f"{c['path']}: descriptor sigma / sigma_target differ from {cols[0]['path']}; evaluate them separately"
            )
    return {
        "run0": run0,
        "split": data.load_split(split_path) if split_path.exists() else training0.get("split"),
        "baseline": json.loads(base_path.read_text()) if base_path.exists() else training0.get("baseline"),
        "train_config": cfg,
        "sigma": sigma,
        "sigma_target": sigma_target,
        "train_surfaces": tuple(cfg.get("train_surfaces", data.TRAIN_SURFACES)),
    }


def _groups(db, cols: list[dict], st: dict, max_row: int | None, log) -> list[tuple]:
    """The rows of the report: (name, title, unique ids, near defects only)."""
    from . import data, store

    split = st["split"]
    groups = []
    rows_then = [row for row in store.iter_rows(db) if max_row is None or int(row.id) <= int(max_row)]
    known = {row.unique_id for row in rows_then}
    test = [u for u in (split["test"] if split else []) if u in known]
    for c in cols[1:]:  # each column's own test split ("respective test set"), first run's first
        for other in _column_splits(c):
            test += [u for u in other.get("test", []) if u in known and u not in test]
    surfaces = {row.unique_id: str(row.get("surface", "unknown")) for row in rows_then}
    by_surface: dict[str, list[str]] = {}
    for u in test:
        by_surface.setdefault(surfaces[u], []).append(u)
    for surface, uids in by_surface.items():
        n = len(uids)
        key = "test set" if len(by_surface) == 1 else f"test set {surface}"
        title = "test set" if len(by_surface) == 1 else f"test set, {facet_title(surface)}"
        groups.append((key, f"{title} ({n} simulation{'s' if n > 1 else ''})", sorted(uids), False))
        groups.append((f"{key} near defects", f"{title}, near defects", sorted(uids), True))
    named: dict[str, list[str]] = {}
    in_split = set(split["train"]) | set(split["val"]) | set(split["test"]) if split else None
    new_rows = []
    for row in rows_then:
        name = data.classify_row(row, st["train_surfaces"])
        if name:
            named.setdefault(name, []).append(row.unique_id)
        elif in_split is not None and row.unique_id not in in_split:
            new_rows.append(row.unique_id)
    if new_rows:  # training-pool simulations finished after the split: never seen in training or selection
        n = len(new_rows)
        title = f"new simulations ({n} finished after the split)"
        groups.append(("new simulations", title, sorted(new_rows), False))
        groups.append(("new simulations near defects", f"{title}, near defects", sorted(new_rows), True))
    order = list(data.NAMED_TESTS) + sorted(set(named) - set(data.NAMED_TESTS))
    for name in order:
        if name not in named:
            continue
        title = data.NAMED_TESTS.get(name, name)
        if name.endswith("pair vacancies"):  # whole windows, and again near the vacancies
            groups.append((name, title, sorted(named[name]), False))
            groups.append((f"{name} near defects", f"{title}, near defects", sorted(named[name]), True))
        else:
            groups.append((name, title, sorted(named[name]), "vacancy" in name))
    if not groups:
        raise InputError(f"{db}: nothing to evaluate (no test split and no named test surfaces)")
    return groups


def facet_title(surface: str) -> str:
    """ "calcite-104" -> "calcite (10-14)", "aragonite-010" -> "aragonite (010)"."""
    mineral, _, index = surface.partition("-")
    if index == "104":
        index = "10-14"  # the hexagonal (10-14) of calcite's cleavage plane
    return f"{mineral} ({index})" if index else surface


def _result(runs, db, out, cols, st, results, max_row, figdir) -> dict:
    """metrics.json's content."""
    training = {}
    for r in runs:
        s = Path(r) / "summary.json"
        training[str(r)] = json.loads(s.read_text()) if s.exists() else None
    return {
        "db": str(db),
        "runs": [str(r) for r in runs],
        "models": [c["label"] for c in cols],
        "checkpoints": {c["label"]: str(c["path"]) for c in cols},
        "paper_columns": {c["label"]: paper_column(c["meta"]) for c in cols},
        "kept": {c["label"]: c["kept"] for c in cols},
        "sigma": st["sigma"],
        "sigma_target": st["sigma_target"],
        "defect_radius": DEFECT_RADIUS,
        "groups": results,
        "training": training,
        "max_row": max_row,
        "command": f"hydrolayer evaluate {' '.join(str(r) for r in runs)} --db {db}"
        + (f" --max-row {max_row}" if max_row is not None else "")
        + f" --out {out}",
        "learning_curves": _learning_curves([r for r in runs if Path(r).is_dir()], figdir)
        if figdir is not None
        else None,
    }


def _write(out: Path, result: dict) -> None:
    with atomic_output(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    with atomic_output(out / "metrics.csv") as tmp:
        tmp.write_text(_csv(result))
    with atomic_output(out / "report.md") as tmp:
        tmp.write_text(_report(result))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and math.isnan(o):
        return None
    raise TypeError(type(o).__name__)
