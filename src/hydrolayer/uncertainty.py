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

from .conventions import FIRST_LAYER, WINDOW_SIZE, heights_above, window_starts

__all__ = ["FLAG_SPREAD", "FLAG_HEIGHTS", "WINDOW_A", "window_spreads", "summarize", "summary_line"]

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
