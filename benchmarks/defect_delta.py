"""How well does a model draw a defect's change of the water, where an AFM tip sees it?

    python benchmarks/defect_delta.py --db data/simulations.db --models unet-v1ca,runs/unet-v1ca-sv/model.pt \
        [--replica 14=53,15=52] [--figure docs/images/co3-vacancy-runs.png]

For the calcite (10-14) test rows 14 (CO3 2- vacancy), 15 (Ca2+ vacancy) and 10 (3 pair
vacancies per face): the defect's delta, the row's water density minus pristine calcite's
(row 1), both whole runs smoothed like the training targets (sigma_target 0.4 Å), on row 1's
grid with the lattices aligned (``match_trials.frame_offset``); and each model's delta, the
model on the row's atoms minus the model on row 1's. Within ``--radius`` Å (default 6) of the
row's top-face vacancies and per height band above the surface plane: the correlation r of
the model's delta with MD's, and its amplitude (standard deviation) against MD's.
``--quantity df``: the same for the map the matcher compares, -dF_z/dz of the solvent-tip
force (``afm.sta_force``) of each density, instead of the density. ``--replica K=R``: row R
is another run of row K's structure; its delta against row K's is how far MD reproduces its
own picture of the defect. ``--figure``: the density (smoothed)
of the first replica pair's two runs and of pristine calcite at four heights, the row's
vacancy marked.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import match_hybrid as mh  # noqa: E402
import match_trials as mt  # noqa: E402

ROWS = (14, 15, 10)
BANDS = ((0.5, 2.0), (2.0, 3.5), (3.5, 5.0), (5.0, 7.0))  # Å above the surface Ca plane


def smoothed(db, row):
    from hydrolayer.data import DEFAULT_SIGMA_TARGET, smooth_periodic
    from hydrolayer.grids import Grid

    g = mt.half_grid(db, row, "whole")
    v = smooth_periodic(np.asarray(g.values[0], float), g.spec.cell, DEFAULT_SIGMA_TARGET)
    return Grid(g.spec, v[None], ("water",), units=g.units, meta=g.meta, atoms=g.atoms)


def as_quantity(grid, quantity: str):
    """``grid`` (a water density) as ``quantity``: itself, or -dF_z/dz (nN/Å) of its
    solvent-tip force, the small-amplitude frequency-shift map the matcher compares."""
    if quantity == "density":
        return grid
    from hydrolayer.afm import sta_force
    from hydrolayer.grids import Grid

    fz = np.asarray(sta_force(grid, units="nN").channel("Fz"), float)
    df = -np.gradient(fz, grid.spec.spacing[2], axis=2)
    return Grid(grid.spec, df[None], ("df",), units="nN/A", meta=grid.meta, atoms=grid.atoms)


def compare(a: np.ndarray, b: np.ndarray, mask: np.ndarray, z: np.ndarray) -> list[tuple[float, float]]:
    """(r, std(b)/std(a)) of the deltas ``b`` against ``a`` in ``mask``'s columns, per band."""
    out = []
    for lo, hi in BANDS:
        x, y = a[mask][:, (z >= lo) & (z < hi)].ravel(), b[mask][:, (z >= lo) & (z < hi)].ravel()
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        out.append((float(np.corrcoef(x, y)[0, 1]), float(np.std(y) / np.std(x))))
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="data/simulations.db")
    ap.add_argument("--models", default="unet-v1ca", help="comma-separated model names or checkpoint files")
    ap.add_argument("--replica", default="", help="K=R[,K=R]: row R is another run of row K's structure")
    ap.add_argument("--radius", type=float, default=6.0, help="columns within this distance (Å) of the vacancies")
    ap.add_argument("--quantity", choices=("density", "df"), default="density", help="compare densities or df maps")
    ap.add_argument("--figure", type=Path, default=None, help="slices of the first replica pair's runs (PNG)")
    args = ap.parse_args(argv)
    if args.figure and args.quantity != "density":
        ap.error("--figure draws densities: leave out --quantity df")
    warnings.simplefilter("ignore")
    from hydrolayer.predict import load_predictor, predict_density

    replicas = {int(k): int(r) for k, r in (x.split("=") for x in args.replica.split(",") if x)}
    base = as_quantity(smoothed(args.db, 1), args.quantity)
    md1 = np.asarray(base.values[0], float)
    z = base.spec.points()[0, 0, :, 2] - float(base.meta["surface_z"])
    md, atoms, shift = {}, {}, {}
    for row in ROWS + tuple(replicas.values()):
        shift[row] = mt.frame_offset(args.db, row, 1)
        g = as_quantity(smoothed(args.db, row), args.quantity)
        md[row] = mt.onto(g, base.spec, shift[row]) - md1
        atoms[row] = g.atoms
    masks = {
        row: mh.near(base.spec, mh.top_sites_xy(args.db, row) - shift[row][:2], args.radius)[..., 0] for row in ROWS
    }
    bands = "  ".join(f"{lo:g}-{hi:g} Å r / amp" for lo, hi in BANDS)
    print(f"{'forward model':34} {'row':>4}  {bands}")
    out = []

    def report(name, row, res):
        out.append({"model": name, "row": row, "bands": BANDS, "r_amp": res})
        print(f"{name[:34]:34} {row:>4}  " + "  ".join(f"{r:>9.2f} / {a:.2f}  " for r, a in res))

    for row, rep in replicas.items():
        report(f"MD, another run (row {rep})", row, compare(md[row], md[rep], masks[row], z))
    for name in args.models.split(","):
        pred = load_predictor(name)
        p1 = mt.onto(as_quantity(predict_density(base.atoms, pred), args.quantity), base.spec, np.zeros(3))
        for row in ROWS:
            pk = mt.onto(as_quantity(predict_density(atoms[row], pred), args.quantity), base.spec, shift[row])
            report(name, row, compare(md[row], pk - p1, masks[row], z))
    if args.figure and replicas:
        k, r = next(iter(replicas.items()))
        figure(args.figure, {row: md[row] + md1 for row in (k, r)} | {1: md1}, z, masks[k])
    return out


def figure(path: Path, maps: dict, z: np.ndarray, mask: np.ndarray, heights=(0.0, 1.3, 2.2, 3.1)) -> None:
    """Rows of x-y slices (rho/rho_bulk, row 1's grid) at ``heights`` Å above the surface plane,
    one row of panels per run; the vacancy's neighbourhood (``mask``) outlined."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.4 * len(heights), 2.3 * len(maps)), layout="constrained")
    axs = fig.subplots(len(maps), len(heights), squeeze=False)
    for i, (row, v) in enumerate(maps.items()):
        for j, h in enumerate(heights):
            k = int(np.argmin(np.abs(z - h)))
            ax = axs[i, j]
            im = ax.imshow(np.nan_to_num(v[:, :, k]).T, origin="lower", vmin=0, vmax=4, cmap="viridis")
            ax.contour(mask.T.astype(float), levels=[0.5], colors="r", linewidths=0.8)
            ax.set_title(f"row {row}, {z[k]:.1f} Å", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axs, shrink=0.6, label="rho/rho_bulk")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
