"""The lattice pattern of the frequency-shift map: MD run against run, smoothed against raw,
and a model against MD.

    python benchmarks/df_lattice.py --db data/simulations.db [--models unet-v1ca,runs/unet-v1ca-sharp/model.pt]

The matcher compares -dF_z/dz of the solvent-tip force (``afm.sta_force``), which takes the
second z-derivative of ln(rho): fine vertical structure of the density decides it. For the
calcite (10-14) rows 1 (pristine), 14/53 (CO3 2- vacancy, two runs) and 15/52 (Ca2+
vacancy, two runs), each whole run's density goes to that map on row 1's grid (lattices
aligned, ``match_trials.onto``/``frame_offset``) and is projected onto its lattice-periodic
part (the Fourier components of the surface unit cell: the mean over the cell's 5 x 3 unit
cells, which also averages the MD noise 15-fold). Printed: the correlation of two such
patterns per height band above the surface plane, for

* two MD runs (how far MD reproduces its own lattice pattern);
* a run against itself smoothed with a Gaussian of S Å (``--smooth``, the models' training
  targets are smoothed at their ``sigma_target``): what the smoothing does to the map;
* each model (on row 1's atoms) against raw MD and against MD smoothed at the model's own
  ``sigma_target``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import defect_delta as dd  # noqa: E402
import match_trials as mt  # noqa: E402

BANDS = ((2.5, 3.0), (3.0, 3.5), (3.5, 4.0), (4.0, 4.5), (4.5, 5.0))  # Å above the surface Ca plane
RUN_PAIRS = ((15, 52), (14, 53), (14, 15), (1, 15), (1, 52), (1, 14), (1, 53))


def periodic(v: np.ndarray, repeats=(5, 3)) -> np.ndarray:
    """The lattice-periodic part of (nx, ny, nz) ``v``: the lateral Fourier components whose
    indices are multiples of the cell's unit-cell repeats (``data.average_unit_cells``)."""
    f = np.fft.fft2(np.nan_to_num(v - np.nanmean(v, axis=(0, 1))), axes=(0, 1))
    kx = np.round(np.fft.fftfreq(v.shape[0]) * v.shape[0])
    ky = np.round(np.fft.fftfreq(v.shape[1]) * v.shape[1])
    keep = ((kx % repeats[0] == 0)[:, None] & (ky % repeats[1] == 0)[None, :])[..., None]
    return np.real(np.fft.ifft2(f * keep, axes=(0, 1)))


def smoothed_grid(g, sigma: float):
    from hydrolayer.data import smooth_periodic
    from hydrolayer.grids import Grid

    if not sigma:
        return g
    v = smooth_periodic(np.asarray(g.values[0], float), g.spec.cell, sigma)
    return Grid(g.spec, v[None], ("water",), units=g.units, meta=g.meta, atoms=g.atoms)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="data/simulations.db")
    ap.add_argument("--models", default="unet-v1ca", help="comma-separated model names or checkpoint files")
    ap.add_argument("--smooth", default="0.1,0.2,0.4", help="Gaussian widths (Å) to compare the raw runs with")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    from hydrolayer.predict import load_predictor, predict_density

    base = dd.as_quantity(mt.half_grid(args.db, 1, "whole"), "df")
    z = base.spec.points()[0, 0, :, 2] - float(base.meta["surface_z"])
    grids = {row: mt.half_grid(args.db, row, "whole") for row in sorted({r for p in RUN_PAIRS for r in p})}

    def pattern(g, row):
        shift = mt.frame_offset(args.db, row, 1) if row != 1 else np.zeros(3)
        return periodic(mt.onto(dd.as_quantity(g, "df"), base.spec, shift))

    def corr(a, b):
        out = []
        for lo, hi in BANDS:
            k = (z >= lo) & (z < hi)
            out.append(float(np.corrcoef(a[:, :, k].ravel(), b[:, :, k].ravel())[0, 1]))
        return out

    raw = {row: pattern(g, row) for row, g in grids.items()}
    results = {}
    print(f"{'df lattice pattern':52}  " + "  ".join(f"{lo:g}-{hi:g} Å" for lo, hi in BANDS))

    def report(name, values):
        results[name] = values
        print(f"{name[:52]:52}  " + "  ".join(f"{v:>7.2f}" for v in values))

    for a, b in RUN_PAIRS:
        report(f"MD row {a} vs MD row {b}", corr(raw[a], raw[b]))
    smooth = [float(s) for s in args.smooth.split(",") if s]
    for s in smooth:
        for row in (1, 15):
            report(f"MD row {row} smoothed {s:g} Å vs raw", corr(pattern(smoothed_grid(grids[row], s), row), raw[row]))
    for name in filter(None, args.models.split(",")):
        pred = load_predictor(name)
        st = float(pred.meta.get("sigma_target") or 0.4)
        m = pattern(predict_density(grids[1].atoms, pred), 1)
        report(f"{name} vs MD row 1", corr(m, raw[1]))
        report(f"{name} vs MD row 1 smoothed {st:g} Å", corr(m, pattern(smoothed_grid(grids[1], st), 1)))
    return results


if __name__ == "__main__":
    main()
