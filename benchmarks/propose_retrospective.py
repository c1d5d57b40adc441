"""Retrospective check of ``hydrolayer campaign propose`` (issue 14): does the spread of an
ensemble rank simulations it never saw by its actual error on them?

    OMP_NUM_THREADS=1 python benchmarks/propose_retrospective.py runs/ens/ensemble.json --db data/simulations.db
    OMP_NUM_THREADS=1 python benchmarks/propose_retrospective.py ENSEMBLE.json --db DB --rows 14-18 --json retro.json

For each row (default: every row after the last row the ensemble's members were split from,
i.e. finished after its training data; ``--rows 14-18`` or ``--rows 14,16``), on the row's own
stored slab (``store.get_row(db, i).toatoms()``):

- spread: exactly the proposal's score (``proposal.surface_spread``): the members' standard
  deviation (ddof 0, rho/rho_bulk), mean over every voxel 0-10 Å above the surface plane of
  both faces; and the largest 10 x 10 Å window spread;
- error: the MAE (rho/rho_bulk) of the ensemble mean against the row's MD density over the
  same voxels. The reference is as in training and evaluation: the two half-run densities
  smoothed with the ensemble's ``sigma_target`` (Å), averaged over the lateral unit cells for a
  pristine row (``data.average_unit_cells``), sampled (trilinear, periodic) at the prediction's
  points (the bottom face mirrored back). Beside it the split-half noise floor
  (``conventions.noise_floor``) over the same voxels, and the excess error MAE - floor.

Printed: one line per row and Spearman's rank correlation (``scipy.stats.spearmanr``) of the
spread against the MAE and against the excess error (n/a below 3 rows). Single thread
recommended: the MD campaign shares the cores. Nothing here writes to the database.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

MIRROR = np.array([1.0, 1.0, -1.0])


def parse_rows(text: str) -> list[int]:
    """``"14-18"`` -> [14, ..., 18]; ``"3,5,9"`` -> [3, 5, 9]; both may be combined."""
    out = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"rows must look like 14-18 or 14,15,17, got {text!r}") from None
    return out


def default_rows(ens, db) -> list[int]:
    """The finished rows after the last row named in any member's split (train, val, test,
    named: the database as it was when the ensemble was trained)."""
    from hydrolayer import store
    from hydrolayer.util import InputError

    seen = set()
    for m in ens.members:
        split = (m.meta.get("training") or {}).get("split")
        if not split:
            raise InputError(f"{m.source}: records no training split; give the rows with --rows")
        seen.update(split["train"] + split["val"] + split["test"])
        seen.update(u for ids in (split.get("named") or {}).values() for u in ids)
    rows = list(store.iter_rows(db))
    last = max((r.id for r in rows if r.unique_id in seen), default=0)
    return [r.id for r in rows if r.id > last]


def md_reference(db, row, sigma_target: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The row's two half-run densities (rho/rho_bulk) smoothed with ``sigma_target`` (Å) and,
    for a pristine row, averaged over its lateral unit cells; and the cell (Å)."""
    from hydrolayer import data, store

    d = store.load_density(db, row)
    reps = data.unit_cell_repeats(row)
    halves = [
        data.average_unit_cells(data.smooth_periodic(h, d["cell"], sigma_target), reps)
        for h in (d["half1"], d["half2"])
    ]
    return halves[0], halves[1], d["cell"]


def md_points(grid, atoms, face: str) -> np.ndarray:
    """The prediction grid's points (Å, (nx, ny, nz, 3)) in the MD frame: for the bottom face
    the grid is in the mirrored frame (``q = R p + t``, R = diag(1, 1, -1)), mapped back."""
    q = grid.spec.points()
    if face == "top":
        return q
    d = np.asarray(grid.atoms.positions) - np.asarray(atoms.positions) * MIRROR
    if np.ptp(d[:, 2]) > 1e-4:
        raise RuntimeError("the bottom face's grid is not a z -> -z reflection of the slab")
    return (q - d[0]) * MIRROR


def row_check(db, row_id: int, ens) -> dict:
    """Spread (as the proposal scores it), MAE and noise floor (rho/rho_bulk, 0-10 Å above the
    surface plane of both faces) of one row."""
    from hydrolayer import conventions, data, proposal, store

    row = store.get_row(db, row_id)
    atoms = row.toatoms()
    s = proposal.surface_spread(atoms, ens)
    h1, h2, cell = md_reference(db, row, float(ens.meta.get("sigma_target") or 0.0))
    pred, ref1, ref2 = [], [], []
    for face, p in s["faces"].items():
        mean = p["grids"][0]
        pts = md_points(mean, atoms, face)[:, :, proposal.band_mask(mean)]
        pred.append(mean.values[0][:, :, proposal.band_mask(mean)].ravel())
        ref1.append(data.sample_periodic(h1, cell, pts).ravel())
        ref2.append(data.sample_periodic(h2, cell, pts).ravel())
    pred, ref1, ref2 = (np.concatenate(v) for v in (pred, ref1, ref2))
    mae = float(np.abs(pred - 0.5 * (ref1 + ref2)).mean())
    floor = conventions.noise_floor(ref1, ref2)
    kv = row.key_value_pairs
    return {
        "row": int(row.id),
        "surface": kv.get("surface"),
        "defects": kv.get("defects"),
        "structure_seed": kv.get("structure_seed"),
        "mean_spread": s["mean_spread"],
        "max_window_spread": s["max_window_spread"],
        "mae": mae,
        "noise_floor": floor,
        "excess": mae - floor,
    }


def spearman(x, y) -> float | None:
    """Spearman's rank correlation, None below 3 values or when one side is constant."""
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def retrospective(model, db, rows=None, log=print) -> dict:
    """Every row's check (:func:`row_check`) and the rank correlations of the spread with
    the MAE and with the excess error."""
    from hydrolayer.proposal import load_ensemble_model

    ens = load_ensemble_model(model)
    rows = rows or default_rows(ens, db)
    if not rows:
        from hydrolayer.util import InputError

        raise InputError(f"{db}: no rows after the ensemble's training rows; give them with --rows")
    records = []
    for n, i in enumerate(rows, 1):
        records.append(row_check(db, i, ens))
        r = records[-1]
        log(f"[{n}/{len(rows)}] row {i}: spread {r['mean_spread']:.4f}, MAE {r['mae']:.4f}")
    spread = [r["mean_spread"] for r in records]
    return {
        "ensemble": ens.name,
        "manifest": ens.source,
        "db": str(db),
        "rows": records,
        "spearman_spread_mae": spearman(spread, [r["mae"] for r in records]),
        "spearman_spread_excess": spearman(spread, [r["excess"] for r in records]),
    }


def format_result(res: dict) -> str:
    """The table (rho/rho_bulk) and the two rank correlations."""
    lines = [
        f"ensemble {res['ensemble']} ({res['manifest']}) on {res['db']}; 0-10 Å above the surface plane, both faces",
        f"{'row':>4}  {'surface':<14} {'defects':<50} {'sseed':>5}  {'spread':>7} {'max win':>7}  {'MAE':>6} "
        f"{'floor':>6} {'excess':>7}",
    ]
    for r in res["rows"]:
        lines.append(
            f"{r['row']:>4}  {str(r['surface']):<14} {str(r['defects'])[:50]:<50} {str(r['structure_seed']):>5}  "
            f"{r['mean_spread']:>7.4f} {r['max_window_spread']:>7.4f}  {r['mae']:>6.3f} {r['noise_floor']:>6.3f} "
            f"{r['excess']:>7.3f}"
        )

    def fmt(v):
        return "n/a (fewer than 3 rows or constant)" if v is None else f"{v:.3f}"

    lines.append(f"Spearman rank correlation, spread vs MAE: {fmt(res['spearman_spread_mae'])}")
    lines.append(f"Spearman rank correlation, spread vs MAE - noise floor: {fmt(res['spearman_spread_excess'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from hydrolayer.util import InputError, atomic_output

    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("model", help="ensemble manifest (.json) or a shipped ensemble's name")
    ap.add_argument("--db", required=True, help="simulation database")
    ap.add_argument("--rows", type=parse_rows, default=None, help="rows to check, e.g. 14-18 (default: after training)")
    ap.add_argument("--json", type=Path, default=None, help="write the result as JSON too")
    args = ap.parse_args(argv)
    try:
        res = retrospective(args.model, args.db, args.rows, log=lambda line: print(line, file=sys.stderr, flush=True))
        if args.json:
            with atomic_output(args.json) as tmp:
                tmp.write_text(json.dumps(res, indent=1) + "\n")
    except InputError as err:
        print(f"propose_retrospective: error: {err}", file=sys.stderr)
        return 2
    print(format_result(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
