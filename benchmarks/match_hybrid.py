"""Which part of the model's forward map decides the calcite ranking in the match trials?

    python benchmarks/match_hybrid.py {defect|lattice|control} [--model M] [--radius R] [--gain G] \
        --trials 2 --snr 3,10 --seed 7 --modes oracle --out X.json --figure X.png

Runs ``benchmarks/match_trials.py`` with its "oracle" mode's calcite candidates replaced by
hybrids of MD and the model (``--model``, default: the shipped default), on MD's own grid of
pristine calcite (row 1, half 2):

- ``defect``: MD's pristine density plus the model's defect delta (the model on row k's atoms
  minus the model on row 1's atoms, k = 14, 15, 10 for the CO3 2-, Ca2+ and pair-vacancy
  candidates): is the model's picture of the defect good enough where the lattice is exact?
- ``lattice``: the model's pristine density plus MD's defect delta (row k's half 2 minus row
  1's): is the model's pristine lattice good enough where the defect is exact?
- ``control``: MD's pristine density plus MD's own delta, i.e. row k's MD moved onto row 1's
  grid the same way (the machinery's check: it should rank like the oracle).

``--gain G`` (``defect``): the model's delta times G (does its amplitude decide?).
``--rows K=R,...``: row R in place of row K for a candidate (another run of the same
structure, e.g. ``15=52``: the delta is then not from the measurement's own run).
``--radius R`` (``defect`` and ``control``): the delta only within R Å (laterally) of the row's
top-layer vacancies. The other candidates stay MD (the oracle). Grids meet by linear
interpolation in Å (periodic in x and y) with their lattices and surface planes aligned
(``frame_offset``: each row's slab sits in its own frame, up to 1.2 Å apart laterally);
densities are clipped at 1e-3 before the solvent-tip force.
"""

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import match_trials as mt  # noqa: E402

CALCITE = {
    "calcite-104:size=5x3": 1,
    "calcite-104:size=5x3,vacancy=CO3": 14,
    "calcite-104:size=5x3,vacancy=Ca": 15,
    "calcite-104:size=5x3,pairs=3,both,seed=3": 10,
}


def lateral_distance(xy: np.ndarray, q, cell2: np.ndarray) -> np.ndarray:
    """Minimum-image lateral distances (Å) from the points ``xy`` (..., 2) to ``q``, in an
    orthogonal cell of lateral lengths ``cell2``."""
    d = (xy - q + cell2 / 2) % cell2 - cell2 / 2
    return np.hypot(d[..., 0], d[..., 1])


def top_sites_xy(db, row: int) -> np.ndarray:
    """Lateral positions (Å, in the row's grid frame) of the ions removed from the row's top
    face, as the row records them (``defect_sites``)."""
    from hydrolayer import store

    sites = store.get_row(db, row).data.get("defect_sites") or []
    return np.array([s["position"][:2] for s in sites if s.get("face", "top") == "top"], float).reshape(-1, 2)


def near(spec, sites: np.ndarray, radius: float) -> np.ndarray:
    """(nx, ny, 1) mask of the grid columns within ``radius`` Å (laterally, periodic) of ``sites``."""
    xy = spec.points()[:, :, 0, :2]
    cell2 = np.diag(spec.cell)[:2]
    m = np.zeros(xy.shape[:2], bool)
    for q in sites:
        m |= lateral_distance(xy, q, cell2) <= radius
    return m[..., None]


def hybrid_sims(
    db, which: str, model_name: str | None = None, radius: float | None = None, gain: float = 1.0, rows=None
) -> dict:
    from hydrolayer import match
    from hydrolayer.afm import sta_force, surface_z_of
    from hydrolayer.grids import Grid
    from hydrolayer.predict import load_predictor, predict_density

    sims = mt.oracle_sims(db)  # MD for every candidate; the calcite ones are then replaced
    base = mt.half_grid(db, 1, "half2")
    md1 = np.asarray(base.values[0], float)
    rows = {lab: (rows or {}).get(row, row) for lab, row in CALCITE.items()}
    halves = {lab: mt.half_grid(db, row, "half2" if row == CALCITE[lab] else "whole") for lab, row in rows.items()}
    shift = {lab: mt.frame_offset(db, row, 1) for lab, row in rows.items()}
    # the model where the mode uses it: every candidate for ``defect``, pristine for ``lattice``
    used = {"defect": list(halves), "lattice": ["calcite-104:size=5x3"], "control": []}[which]
    predictor = load_predictor(model_name) if used else None
    model = {lab: mt.onto(predict_density(halves[lab].atoms, predictor), base.spec, shift[lab]) for lab in used}
    p1 = model.get("calcite-104:size=5x3")
    zs, _ = surface_z_of(base)
    for lab, g in halves.items():
        md_delta = np.nan_to_num(mt.onto(g, base.spec, shift[lab]) - md1)  # none where row k has no water grid
        if which == "lattice":
            rho = np.where(np.isnan(p1), md1, p1) + md_delta
        else:  # defect: the model's delta on MD's pristine; control: MD's own delta on it
            delta = gain * np.nan_to_num(model[lab] - p1) if which == "defect" else md_delta
            if radius is not None:  # only the defect's neighbourhood: no delta from the slabs' small differences
                sites = top_sites_xy(db, rows[lab]) - shift[lab][:2]  # in row 1's frame
                delta = delta * near(base.spec, sites, radius)
            rho = md1 + delta
        atoms = g.atoms.copy()
        atoms.positions -= shift[lab]  # in row 1's frame, as the map (the pictures' overlay)
        grid = Grid(
            base.spec,
            np.clip(rho, 1e-3, None)[None].astype(np.float32),
            ("water",),
            units="rho/rho_bulk",
            meta=dict(base.meta),
            atoms=atoms,
        )
        fz = np.asarray(sta_force(grid, units="nN").channel("Fz"), float)
        sims[lab] = match.Simulated(match.Candidate(lab, atoms, (5.0, 8.0)), fz, base.spec, zs)
    return sims


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("defect", "lattice", "control"):
        sys.exit(__doc__)
    warnings.simplefilter("ignore")
    which = argv[0]
    model_name = argv[argv.index("--model") + 1] if "--model" in argv else None  # default: the shipped default
    ours = {"--radius": None, "--gain": "1", "--rows": ""}  # ours, not match_trials'
    for flag in ours:
        if flag in argv:
            k = argv.index(flag)
            ours[flag] = argv[k + 1]
            argv = argv[:k] + argv[k + 2 :]
    radius = None if ours["--radius"] is None else float(ours["--radius"])
    rows = {int(k): int(r) for k, r in (x.split("=") for x in ours["--rows"].split(",") if x)}
    mt.main(
        argv[1:],
        oracle=lambda db, _replicas, **_: hybrid_sims(db, which, model_name, radius, float(ours["--gain"]), rows),
    )


if __name__ == "__main__":
    main()
