"""How much of a run's water structure is the run's own: the first layer far from any defect,
half against half and run against run.

    python benchmarks/run_to_run.py --db data/simulations.db --rows 1,2,3,4,14,15,39,46,47,48,49,50,51

For each row (calcite (10-14), 5 x 3 cells): the water density averaged over the lateral grid
columns farther than ``--radius`` Å (default 8) from every top-face vacancy (all columns of
a pristine row), as a profile in height above the row's surface plane (``z_top``), for each
half of the production run; printed: the first layer's peak (its height in rho/rho_bulk,
and where it lies) in each half. If the halves agree much better than the runs do, each run
carries a state of its own that its two halves share (slow physics), and a comparison of the
two halves of one run overstates how reproducible that run's map is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import match_hybrid as mh  # noqa: E402
import match_trials as mt  # noqa: E402


def far_profile(db, row: int, which: str, radius: float, z: np.ndarray) -> tuple[np.ndarray, float]:
    """The laterally averaged density of ``which`` half at heights ``z`` (Å above the surface
    plane) over the columns farther than ``radius`` from the row's top-face vacancies, and
    the fraction of columns that are."""
    g = mt.half_grid(db, row, which)
    v = np.asarray(g.values[0], float)
    sites = mh.top_sites_xy(db, row)
    far = ~mh.near(g.spec, sites, radius)[..., 0]
    if not far.any():
        raise SystemExit(f"row {row}: no column is {radius} Å from its {len(sites)} top-face vacancies")
    zz = g.spec.points()[0, 0, :, 2] - float(g.meta["surface_z"])
    return np.interp(z, zz, v[far].mean(0)), float(far.mean())


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="data/simulations.db")
    ap.add_argument("--rows", required=True, help="comma-separated row ids (calcite (10-14), 5 x 3)")
    ap.add_argument("--radius", type=float, default=8.0, help="columns this far (Å) from the vacancies")
    args = ap.parse_args(argv)
    from hydrolayer import store

    z = np.arange(1.0, 3.5, 0.05)  # the first layer of calcite (10-14) lies near 2.1-2.2 Å
    out = []
    print(f"{'row':>4}  {'defects':52}  {'ps':>5}  {'far':>4}  {'peak half1':>10}  {'half2':>6}  {'at (Å)':>6}")
    for row in (int(r) for r in args.rows.split(",")):
        r = store.get_row(args.db, row)
        peaks, at = [], []
        for which in ("half1", "half2"):
            p, frac = far_profile(args.db, row, which, args.radius, z)
            peaks.append(float(p.max()))
            at.append(float(z[np.argmax(p)]))
        rec = {"row": row, "defects": r.get("defects"), "production_ps": r.get("production_ps"), "far": frac}
        rec.update(peak_half1=peaks[0], peak_half2=peaks[1], at=float(np.mean(at)))
        out.append(rec)
        print(
            f"{row:>4}  {str(rec['defects'])[:52]:52}  {rec['production_ps']:>5.0f}  {frac:>4.2f}  "
            f"{peaks[0]:>10.3f}  {peaks[1]:>6.3f}  {rec['at']:>6.2f}"
        )
    h = np.array([[o["peak_half1"], o["peak_half2"]] for o in out])
    within = np.sqrt(np.mean((h[:, 0] - h[:, 1]) ** 2) / 2)  # the SD of one half's peak about its run's
    between = np.std(h.mean(1), ddof=1)  # the SD of the runs' means
    expected = within / np.sqrt(2)  # what the runs' means would scatter by with no run state
    print(
        f"first-layer peak: SD within a run (one half) {within:.3f}; SD of the runs' means {between:.3f}, "
        f"against {expected:.3f} if the runs differed only by the halves' noise ({len(out)} runs)"
    )
    return out


if __name__ == "__main__":
    main()
