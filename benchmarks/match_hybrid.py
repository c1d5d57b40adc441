"""Which part of the model's forward map decides the calcite ranking in the match trials?

    python benchmarks/match_hybrid.py {defect|lattice|control} [--model M] [--radius R] \
        --trials 2 --snr 3,10 --seed 7 --modes oracle --out X.json --figure X.png

Runs ``benchmarks/match_trials.py`` with its "oracle" mode's calcite candidates replaced by
hybrids of MD and the model (``--model``, default: the shipped default), on MD's own grid of pristine calcite (row 1, half 2):

- ``defect``: MD's pristine density plus the model's defect delta (the model on row k's atoms
  minus the model on row 1's atoms, k = 14, 15, 10 for the CO3 2-, Ca2+ and pair-vacancy
  candidates): is the model's picture of the defect good enough where the lattice is exact?
  ``--radius R``: the delta only within R Å (laterally) of the row's top-layer vacancies
  (also for ``control``: MD's own delta so restricted).
- ``lattice``: the model's pristine density plus MD's defect delta (row k's half 2 minus row
  1's): is the model's pristine lattice good enough where the defect is exact?

- ``control``: MD's own row k, moved onto row 1's grid the same way (the machinery's check:
  it should rank like the oracle).

The other candidates stay MD (the oracle). Grids meet by linear interpolation in Å
(periodic in x and y) with their surface planes aligned; densities are clipped at 1e-3 before the solvent-tip force.
"""

import sys
import warnings
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates

sys.path.insert(0, str(Path(__file__).resolve().parent))

import match_trials as mt  # noqa: E402

ORACLE = mt.oracle_sims  # MD for every candidate; the calcite ones are then replaced
CALCITE = {
    "calcite-104:size=5x3": 1,
    "calcite-104:size=5x3,vacancy=CO3": 14,
    "calcite-104:size=5x3,vacancy=Ca": 15,
    "calcite-104:size=5x3,pairs=3,both,seed=3": 10,
}


def onto(src, dst_spec, dz: float = 0.0) -> np.ndarray:
    """``src``'s water at ``dst_spec``'s points raised by ``dz`` Å (orthogonal grids, periodic in x
    and y, NaN outside in z): ``dz`` = the source's surface plane minus the destination's, so that
    the two surfaces meet (the rows' water boxes, hence their z grids and planes, differ)."""
    pts = dst_spec.points().reshape(-1, 3) + np.array([0.0, 0.0, dz])
    idx = (pts - np.asarray(src.spec.origin)) / (np.diag(src.spec.cell) / np.asarray(src.spec.shape))
    v = map_coordinates(np.asarray(src.values[0], float), idx.T, order=1, mode="grid-wrap")
    inside = (idx[:, 2] >= 0) & (idx[:, 2] <= src.spec.shape[2] - 1)
    return np.where(inside, v, np.nan).reshape(dst_spec.shape)


def vacancies_xy(atoms, pristine) -> np.ndarray:
    """Lateral positions (Å) of the top layer's Ca and C of ``pristine`` with no ion of the same
    kind within 1.5 Å laterally in ``atoms``'s top layer: the vacancies of a row's slab."""
    from hydrolayer.structures import top_layer_units

    cell2 = np.diag(np.asarray(pristine.cell))[:2]
    out = []
    for key, symbol in (("cation", "Ca"), ("CO3", "C")):

        def xy(a, key=key):
            idx = [i if key == "cation" else i[0] for i in top_layer_units(a)[key]]
            return a.positions[idx][:, :2]

        here, there = xy(atoms), xy(pristine)
        for q in there:
            d = (here - q + cell2 / 2) % cell2 - cell2 / 2
            if len(here) == 0 or np.min(np.hypot(d[:, 0], d[:, 1])) > 1.5:
                out.append(q)
    return np.array(out).reshape(-1, 2)


def near(spec, sites: np.ndarray, radius: float) -> np.ndarray:
    """(nx, ny, 1) mask of the grid columns within ``radius`` Å (laterally, periodic) of ``sites``."""
    pts = spec.points()[:, :, 0, :2]
    cell2 = np.diag(spec.cell)[:2]
    m = np.zeros(pts.shape[:2], bool)
    for q in sites:
        d = (pts - q + cell2 / 2) % cell2 - cell2 / 2
        m |= np.hypot(d[..., 0], d[..., 1]) <= radius
    return m[..., None]


def hybrid_sims(db, which: str, model_name: str | None = None, radius: float | None = None) -> dict:
    from hydrolayer import match
    from hydrolayer.afm import sta_force, surface_z_of
    from hydrolayer.grids import Grid
    from hydrolayer.predict import load_predictor, predict_density

    sims = ORACLE(db)
    predictor = load_predictor(model_name)
    base = mt.half_grid(db, 1, "half2")
    md1 = np.asarray(base.values[0], float)
    halves = {lab: mt.half_grid(db, row, "half2") for lab, row in CALCITE.items()}
    dz = {lab: float(g.meta["surface_z"]) - float(base.meta["surface_z"]) for lab, g in halves.items()}
    model = {lab: onto(predict_density(g.atoms, predictor), base.spec, dz[lab]) for lab, g in halves.items()}
    p1 = model["calcite-104:size=5x3"]
    zs, _ = surface_z_of(base)
    for lab, g in halves.items():
        if which == "defect":
            delta = np.nan_to_num(model[lab] - p1)
            if radius is not None:  # only the defect's neighbourhood: no delta from the slabs' small differences
                delta = delta * near(base.spec, vacancies_xy(g.atoms, base.atoms), radius)
            rho = md1 + delta
        elif which == "control":  # MD's pristine plus MD's delta: row k's own MD through the same machinery
            rho = np.where(np.isnan(md_k := onto(g, base.spec, dz[lab])), md1, md_k)
            if radius is not None:  # MD's delta only near the vacancies, as --radius does for the model's
                rho = md1 + (rho - md1) * near(base.spec, vacancies_xy(g.atoms, base.atoms), radius)
        else:
            md_k = onto(g, base.spec, dz[lab])
            rho = np.where(np.isnan(p1), md1, p1) + np.nan_to_num(md_k - md1)
        grid = Grid(
            base.spec,
            np.clip(rho, 1e-3, None)[None].astype(np.float32),
            ("water",),
            units="rho/rho_bulk",
            meta=dict(base.meta),
            atoms=g.atoms,
        )
        fz = np.asarray(sta_force(grid, units="nN").channel("Fz"), float)
        sims[lab] = match.Simulated(match.Candidate(lab, g.atoms, (5.0, 8.0)), fz, base.spec, zs)
    return sims


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("defect", "lattice", "control"):
        sys.exit(__doc__)
    warnings.simplefilter("ignore")
    which = argv[0]
    model_name = argv[argv.index("--model") + 1] if "--model" in argv else None  # default: the shipped default
    radius = None
    if "--radius" in argv:  # ours, not match_trials'
        k = argv.index("--radius")
        radius = float(argv[k + 1])
        argv = argv[:k] + argv[k + 2 :]
    mt.oracle_sims = lambda db: hybrid_sims(db, which, model_name, radius)
    mt.main(argv[1:])


if __name__ == "__main__":
    main()
