"""An ensemble's spread: what it is, the per-window flag, and the one-line summary.

Spread
    Per voxel, the standard deviation over the M members of their predictions, population
    form (ddof = 0: sqrt(mean_k (rho_k - mean)^2)), in rho/rho_bulk; 0 for one member. The
    ensemble's prediction is the members' mean. Both come from
    ``predict.predict_density(..., uncertainty=True)``.

Windows
    The cell is covered by windows of :data:`WINDOW_A` = 10 x 10 Å (the model's training
    window), laid as ``WindowBank.grid_plan`` lays the evaluation's windows: along each
    lateral axis of n grid points, k = ceil(n / w) windows of w points starting at
    round(m n / k), m = 0..k-1 (periodic; they touch or overlap slightly, never leave a gap).
    A window's *spread* is the mean spread over its points from :data:`FLAG_HEIGHTS` = 0 to
    10 Å above the surface plane z_s (where the hydration layers are). Positions are the
    window's lower-left corner (x0, y0) in Å, in the grid's frame.

Flag
    A window is *flagged* when its spread exceeds :data:`FLAG_SPREAD` rho/rho_bulk. The one
    threshold of the package; provisional until the calibration of issue 14 (spread against
    the actual error per window on the test surfaces) sets it from data. Its scale: the
    shipped v0 and v1 networks taken together as a makeshift 4-member ensemble give window
    spreads of about 0.03 on calcite (10-14), where they agree, and 0.13 on aragonite (010),
    where the calcite-only models fail (benchmarks/RESULTS.md, "Ensemble prediction speed").

Summary (:func:`summarize`, :func:`summary_line`): the mean spread over the first layer
(``conventions.FIRST_LAYER``, 1-3 Å above z_s, the whole lateral cell) and the share of
windows flagged. No torch here.
"""

from __future__ import annotations

import numpy as np

from .conventions import FIRST_LAYER, WINDOW_SIZE, heights_above, noise_floor, window_starts

__all__ = [
    "FLAG_SPREAD",
    "FLAG_HEIGHTS",
    "WINDOW_A",
    "window_spreads",
    "summarize",
    "summary_line",
    "calibration",
    "ood_auc",
    "rank_correlation",
    "flag_warning",
]

FLAG_SPREAD = 0.10  # rho/rho_bulk: a window whose mean spread (0-10 Å above z_s) exceeds this is flagged
FLAG_HEIGHTS = (0.0, 10.0)  # Å above z_s: the heights a window's spread is averaged over
WINDOW_A = float(WINDOW_SIZE[0])  # Å: the side of a flag window (the model's training window, 10 Å)


def window_spreads(spread, z_s: float) -> list[dict]:
    """Per window (module notes): ``{"x0", "y0"}`` (Å, the lower-left corner), ``"spread"``
    (rho/rho_bulk, the mean over 0-10 Å above ``z_s``, Å). ``spread``: a :class:`Grid`."""
    values, spec = spread.values[0], spread.spec
    nx, ny, _ = values.shape
    h = heights_above(spec, z_s)
    band = values[..., (h >= FLAG_HEIGHTS[0]) & (h <= FLAG_HEIGHTS[1])].mean(axis=2)  # (nx, ny)
    step = np.linalg.norm(spec.cell[:2, :2], axis=1) / np.array([nx, ny])
    wx, wy = (max(1, int(round(WINDOW_A / s))) for s in step)
    out = []
    for i0 in window_starts(nx, wx):
        for j0 in window_starts(ny, wy):
            ii, jj = (i0 + np.arange(min(wx, nx))) % nx, (j0 + np.arange(min(wy, ny))) % ny
            corner = spec.origin[:2] + (i0 / nx) * spec.cell[0, :2] + (j0 / ny) * spec.cell[1, :2]
            out.append(
                {
                    "x0": round(float(corner[0]), 3),
                    "y0": round(float(corner[1]), 3),
                    "spread": float(band[np.ix_(ii, jj)].mean()),
                }
            )
    return out


def summarize(mean, spread, members: int, threshold: float = FLAG_SPREAD) -> dict:
    """What goes into the grids' ``meta["uncertainty"]``: the spread's definition, the mean
    spread in the first layer (rho/rho_bulk), every window's spread and the flagged windows'
    corners (Å). ``mean``, ``spread``: :class:`Grid` (rho/rho_bulk); ``members``: M."""
    z_s = float(mean.meta["surface_z"])
    h = heights_above(spread.spec, z_s)
    first = (h >= FIRST_LAYER[0]) & (h <= FIRST_LAYER[1])
    windows = window_spreads(spread, z_s)
    flagged = [[w["x0"], w["y0"]] for w in windows if w["spread"] > threshold]
    return {
        "spread": f"standard deviation over the {members} members (ddof 0), rho/rho_bulk",
        "members": int(members),
        "first_layer_A": list(FIRST_LAYER),
        "first_layer_mean_spread": float(spread.values[0][..., first].mean()),
        "window_A": WINDOW_A,
        "window_heights_A": list(FLAG_HEIGHTS),
        "flag_threshold": float(threshold),
        "windows": windows,
        "flagged_windows_A": flagged,
        "flagged_share": len(flagged) / len(windows),
    }


def flag_warning(summary: dict, source: str = "structure") -> str | None:
    """The out-of-domain warning for the flagged windows (None when none is flagged): how
    many, and where on the surface (their lower-left corners, Å)."""
    flagged = summary["flagged_windows_A"]
    if not flagged:
        return None
    where = "; ".join(f"({x:.1f}, {y:.1f})" for x, y in flagged[:8]) + (" ..." if len(flagged) > 8 else "")
    return (
        f"{source}: the ensemble disagrees (mean spread > {summary['flag_threshold']:g} rho/rho_bulk over "
        f"{summary['window_heights_A'][0]:g}-{summary['window_heights_A'][1]:g} Å) in {len(flagged)} of "
        f"{len(summary['windows'])} {summary['window_A']:g} x {summary['window_A']:g} Å windows, likely out of its "
        f"training domain there; window corners (x, y Å): {where}"
    )


def summary_line(summary: dict) -> str:
    """The one line ``hydrolayer predict`` prints for an ensemble."""
    s = summary
    n, k = len(s["windows"]), len(s["flagged_windows_A"])
    lo, hi = s["first_layer_A"]
    return (
        f"uncertainty ({s['members']} members): mean spread {s['first_layer_mean_spread']:.3f} rho/rho_bulk in the "
        f"first layer ({lo:g}-{hi:g} Å); {k} of {n} {s['window_A']:g} x {s['window_A']:g} Å windows flagged "
        f"({100 * s['flagged_share']:.0f}%: mean spread over {s['window_heights_A'][0]:g}-{s['window_heights_A'][1]:g} Å "
        f"above {s['flag_threshold']:g})"
    )


# ------------------------------------------------------------------ calibration against MD
RELIABILITY_BINS = 8  # quantile bins of the predicted spread in the reliability diagram
FAIL_FACTOR = 2.0  # a window "fails" when its MAE exceeds this many times its MD noise floor


def calibration(pred, spread, halves, masks) -> dict:
    """How well an ensemble's spread tells its actual error, on windows with MD references.

    ``pred``, ``spread``: (N, X, Y, Z) ensemble mean and spread (rho/rho_bulk); ``halves``:
    (N, 2, X, Y, Z) the MD half-run densities; ``masks``: per window a boolean (X, Y, Z) of
    the voxels that count, or None for all. The MD reference is the halves' mean; its own
    noise is taken out of the error: per voxel, e2 = (pred - ref)^2 - ((h1 - h2) / 2)^2 is an
    unbiased estimate of the squared error against the exact density (the halves' half
    difference has the reference's variance). Returns

    * ``window_spearman``: rank correlation of the window mean spread with the window's
      corrected RMS error sqrt(max(0, mean e2)); ``voxel_spearman``: of the spread with e2;
    * ``coverage_2sigma``: share of voxels with |pred - ref| <= 2 sqrt(spread^2 + s_ref^2),
      s_ref^2 the window's mean ((h1 - h2) / 2)^2 (the band a calibrated Gaussian error
      would fall in 95% of the time);
    * ``reliability``: per quantile bin of the spread, its mean and the corrected RMS error;
    * ``windows``: per window, the mean spread, MAE and MD noise floor (0.5 mean|h1 - h2|),
      for the out-of-domain test (:func:`ood_auc`).
    """
    ref = 0.5 * (halves[:, 0] + halves[:, 1])
    half_diff2 = (0.5 * (halves[:, 0] - halves[:, 1])) ** 2
    s_all, e2_all, covered, windows = [], [], [], []
    for w in range(len(pred)):
        m = np.ones(pred[w].shape, bool) if masks[w] is None else masks[w]
        s, d, hd2 = spread[w][m], (pred[w] - ref[w])[m], half_diff2[w][m]
        e2 = d**2 - hd2
        s_all.append(s)
        e2_all.append(e2)
        covered.append(np.abs(d) <= 2.0 * np.sqrt(s**2 + hd2.mean()))
        windows.append(
            {
                "spread": float(s.mean()),
                "mae": float(np.abs(d).mean()),
                "noise_floor": noise_floor(halves[w, 0], halves[w, 1], m),
                "rms_error": float(np.sqrt(max(0.0, e2.mean()))),
            }
        )
    s_all, e2_all = np.concatenate(s_all), np.concatenate(e2_all)
    ws = [w["spread"] for w in windows]
    return {
        "window_spearman": rank_correlation(ws, [w["rms_error"] for w in windows]),
        "voxel_spearman": rank_correlation(s_all, e2_all),
        "coverage_2sigma": float(np.concatenate(covered).mean()),
        "reliability": _reliability(s_all, e2_all),
        "windows": windows,
    }


def rank_correlation(a, b) -> float | None:
    """Spearman's rank correlation; None for fewer than 3 values or a constant input."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a), np.asarray(b)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b)[0])


def _reliability(s: np.ndarray, e2: np.ndarray) -> list[dict]:
    """Per quantile bin of the spread ``s``: its mean spread and the corrected RMS error."""
    edges = np.quantile(s, np.linspace(0, 1, RELIABILITY_BINS + 1))
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, RELIABILITY_BINS - 1)
    out = []
    for b in range(RELIABILITY_BINS):
        sel = idx == b
        if sel.any():
            out.append(
                {
                    "spread": float(s[sel].mean()),
                    "rms_error": float(np.sqrt(max(0.0, e2[sel].mean()))),
                    "voxels": int(sel.sum()),
                }
            )
    return out


def ood_auc(windows: list[dict], factor: float = FAIL_FACTOR) -> dict:
    """Area under the ROC curve of the window spread as a score for the windows where the
    model fails (MAE > ``factor`` x the window's MD noise floor): the probability that a
    failing window has a larger spread than a passing one (ties count half). None when all
    windows pass or all fail."""
    score = np.array([w["spread"] for w in windows])
    fail = np.array([w["mae"] > factor * w["noise_floor"] for w in windows])
    n_fail, n_pass = int(fail.sum()), int((~fail).sum())
    if n_fail == 0 or n_pass == 0:
        return {"auc": None, "failing": n_fail, "windows": len(windows)}
    diff = score[fail][:, None] - score[~fail][None, :]
    auc = float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (n_fail * n_pass))
    return {"auc": auc, "failing": n_fail, "windows": len(windows)}
