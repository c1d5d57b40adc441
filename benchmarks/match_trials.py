"""Trials of ``hydrolayer match`` (issue 15, "Proof that it works").

    python benchmarks/match_trials.py --db data/simulations.db --out benchmarks/match_trials.json \
        --figure docs/images/match-trials.png [--trials 3] [--snr 1.5,3,5,10] [--seed 2026] [--model M]

Explore (choose settings) on other seeds than the reported run's (the default, 2026).

Measurements the method never saw, made from MD: for each case, the first half of the
production run of a database row (``water_density_half1``) goes through the STA forward
model and what real maps have (``match.synthetic_measurement``): a random crop (80 x 80
pixels of 0.4 Å, 32 Å, at a random offset on the periodic surface), a random rotation
within ±3°, a random height 2.5-5 Å above the surface Ca plane, a lateral blur of 0.3-0.7 Å,
a df-like contrast (0.3 Å oscillation amplitude, gain), a linear drift (0-2 signal standard
deviations across the map), white noise at the given SNR plus scan-line offsets.

Cases (rows never used in training or model selection; a case whose row the model was
trained or selected on is skipped and named in the output): 14 calcite (10-14) with a CO3
2- vacancy, 15 with a Ca2+ vacancy, 10 with 3 pair vacancies per face (a test-split row),
16 aragonite (010), 17 aragonite (001), 18 vaterite (010), 25 aragonite (010) with 2 pair
vacancies per face (a test row of data set v1; its candidate is the same build,
structure_seed 9). Candidates (8): calcite (10-14) pristine, CO3 vacancy, Ca vacancy, the
3-pair-vacancy configuration of row 10, aragonite (010), aragonite (001), vaterite (010),
row 25's configuration. Each trial ranks all 8 in each mode:

* ``model``: the real method as shipped (the registry's default model or ``--model``, the
  default score and contrast ceiling), candidates built with ``parse_candidate``
  (experimental lattices);
* ``before``: the method as first shipped (unet-v1, NCC, the whole height range: no
  contrast ceiling), on the same measurements;
* ``oracle``: the same matcher with the forward model replaced by MD itself, the *second*
  half of each candidate row's run (independent MD noise; pristine calcite is row 1, which
  was used in training, irrelevant here since no model is involved). It separates what the
  registration can do from what the model's accuracy allows. The two halves of one run
  share its slow features; ``--oracle-from 14=ROW`` takes a case's candidate from another
  run of the same structure instead (its whole run; ``14=R1+R2+...``: the mean of several
  such runs, each moved onto R1's grid with the slabs aligned); ``--oracle-smooth S`` smooths every
  oracle density with a Gaussian of S Å first (``data.smooth_periodic``), as the models'
  training targets are (``sigma_target``): MD as a perfect model of that target would draw it.

``--measure-from 14=ROW+ROW...`` makes a case's measurements from the mean of several whole
runs of its structure (:func:`mean_grid`) instead of the first half of its own run: what an
AFM image, milliseconds per pixel, sees where a run stays in one of several water arrangements
for its whole length (the CO3 2- vacancy, benchmarks/RESULTS.md). The trials' random draws are
the same; a case is skipped if the model saw any of its measurement rows.

Reported per mode and SNR: the fraction of trials where the right candidate ranks first,
and the height error |h_found - h_true| (median, and the fraction within 0.3 Å) of the
right candidate; each trial's record keeps every candidate's score. One core
(``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

CASES = {
    14: "calcite-104:size=5x3,vacancy=CO3",
    15: "calcite-104:size=5x3,vacancy=Ca",
    10: "calcite-104:size=5x3,pairs=3,both,seed=3",
    16: "aragonite-010:size=5x4",
    17: "aragonite-001:size=5x3",
    18: "vaterite-010:size=3x1",
    25: "aragonite-010:size=5x4,layers=3,pairs=2,both,seed=9",
}
CANDIDATES = ["calcite-104:size=5x3", *CASES.values()]
ORACLE_ROWS = {"calcite-104:size=5x3": 1, **{v: k for k, v in CASES.items()}}
MODES = ("model", "before", "oracle")
BEFORE_MODEL = "unet-v1"  # the method as first shipped: one U-Net, NCC, the whole height range
BEFORE_OPTIONS = {"score": "ncc", "contrast_floor": None}


def half_grid(db, row, which):
    """Row ``row``'s water density as a Grid: ``which`` = half1, half2 or whole (their mean)."""
    from hydrolayer import store
    from hydrolayer.grids import Grid, GridSpec

    r = store.get_row(db, row)
    d = store.load_density(db, r)
    values = (d["half1"] + d["half2"]) / 2 if which == "whole" else d[which]
    return Grid(
        GridSpec(d["cell"], values.shape),
        values,
        ("water",),
        units="rho/rho_bulk",
        meta={"surface_z": r.get("z_top")},
        atoms=r.toatoms(),
    )


def seen_rows(db, predictor) -> set[int]:
    """Database rows the model (every member of an ensemble) was trained or selected on:
    their cases are skipped (a (c+a) model trained on the pristine aragonite (010) row 16)."""
    from hydrolayer import store
    from hydrolayer.evaluate import checkpoint_splits, trained_on

    metas = [m.meta for m in getattr(predictor, "members", None) or [predictor]]
    return {store.get_row(db, u).id for u in trained_on(checkpoint_splits(metas))}


def onto(src, dst_spec, shift) -> np.ndarray:
    """``src``'s water at ``dst_spec``'s points moved by ``shift`` (x, y, z in Å;
    ``data.sample_periodic``: trilinear, periodic in x and y; NaN outside ``src`` in z):
    ``shift`` = where the source's lattice and surface plane lie minus where the destination's
    do, so that the two slabs meet (each row's frame is shifted by its own ``frame_shift``, and
    the rows' water boxes, hence their z grids and planes, differ)."""
    from hydrolayer import data

    pts = dst_spec.points() + np.asarray(shift, float) - np.asarray(src.spec.origin)
    v = data.sample_periodic(src.values[0], src.spec.cell, pts).astype(float)
    k = pts[..., 2] / src.spec.spacing[2]
    return np.where((k >= 0) & (k <= src.spec.shape[2] - 1), v, np.nan)


def frame_offset(db, row: int, base_row: int) -> np.ndarray:
    """Where row ``row``'s slab lies against row ``base_row``'s (Å): the difference of their
    ``frame_shift`` laterally (every row is the same lattice moved by its own shift), of their
    surface planes (``z_top``) vertically."""
    from hydrolayer import store

    a, b = store.get_row(db, row), store.get_row(db, base_row)
    dxy = np.asarray(a.data["frame_shift"][:2], float) - np.asarray(b.data["frame_shift"][:2], float)
    return np.array([dxy[0], dxy[1], float(a.get("z_top")) - float(b.get("z_top"))])


def mean_grid(db, rows):
    """The mean water density of several whole runs of one structure, on the first's grid:
    each run moved so that its slab meets the first's (:func:`frame_offset`, :func:`onto`;
    where a run's box ends in z, the mean of the others)."""
    first = half_grid(db, rows[0], "whole")
    stack = [np.asarray(first.values[0], float)]
    for row in rows[1:]:
        stack.append(onto(half_grid(db, row, "whole"), first.spec, frame_offset(db, row, rows[0])))
    first.values = np.nanmean(np.stack(stack), axis=0)[None]
    return first


def oracle_sims(db, replicas=None, smooth: float = 0.0):
    """MD as the forward model: each candidate's map from the second half of its row's run, or,
    for a case in ``replicas`` ({case row: (replica rows)}), from the whole of another run of
    the same structure or the mean of several (independent MD: not the measurement's own
    run); ``smooth`` > 0: the density smoothed first (Gaussian, Å)."""
    from hydrolayer import match
    from hydrolayer.afm import sta_force, surface_z_of
    from hydrolayer.data import smooth_periodic

    sims = {}
    for label, row in ORACLE_ROWS.items():
        g = mean_grid(db, replicas[row]) if row in (replicas or {}) else half_grid(db, row, "half2")
        if smooth:
            g.values = smooth_periodic(g.values[0], g.spec.cell, smooth)[None]
        zs, _ = surface_z_of(g)
        cand = match.Candidate(label, g.atoms, (5.0, 8.0))
        sims[label] = match.Simulated(cand, np.asarray(sta_force(g, units="nN").channel("Fz"), float), g.spec, zs)
    return sims


def one_trial(meas_grid, rng, snr, stack=None):
    """One synthetic measurement and its truth; ``stack`` (planes, spacing in Å): a 3D-AFM
    stack of that many constant-height planes from the drawn height up, else one 2D map."""
    from hydrolayer import match

    cell = np.diag(meas_grid.spec.cell)[:2]
    truth = {
        "height": float(rng.uniform(2.5, 5.0)),
        "angle": float(rng.uniform(-3, 3)),
        "offset": (rng.uniform(0, 1, 2) * cell).tolist(),
        "blur": float(rng.uniform(0.3, 0.7)),
        "drift": float(rng.uniform(0, 2)),
        "snr": snr,
    }
    meas = match.synthetic_measurement(
        meas_grid,
        truth["height"],
        shape=(80, 80),
        pixel_size=0.4,
        angle=truth["angle"],
        offset=truth["offset"],
        blur=truth["blur"],
        snr=snr,
        drift=truth["drift"],
        quantity="df",
        amplitude=0.3,
        gain=40.0,
        z_planes=None if stack is None else truth["height"] + stack[1] * np.arange(stack[0]),
        rng=rng,
    )
    return meas, truth


def run_mode(meas, cands, sims, options):
    from hydrolayer import match

    regs, _, _ = match.rank(meas, cands, None, simulated=sims, **options)
    return regs


def main(argv=None, oracle=oracle_sims):
    """``oracle(db, replicas)``: the oracle mode's simulated maps ({label: match.Simulated})."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="data/simulations.db")
    # no default paths: an exploratory run never overwrites the reported benchmarks/match_trials.json
    # or docs/images/match-trials.png (the docstring's command names them)
    p.add_argument("--out", type=Path, default=None, help="JSON of every trial (default: the summary on stdout only)")
    p.add_argument("--figure", type=Path, default=None, help="PNG of right-first and height against SNR")
    p.add_argument("--trials", type=int, default=3, help="trials per case and SNR")
    p.add_argument("--snr", default="1.5,3,5,10")
    p.add_argument("--seed", type=int, default=2026, help="trials' random seed (explore on others)")
    p.add_argument("--model", default=None, help="the model of the 'model' mode (default: match's default)")
    p.add_argument(
        "--stack",
        default=None,
        help="N:DZ: each measurement a 3D-AFM stack of N planes DZ Å apart from the drawn height up (default: 2D maps)",
    )
    p.add_argument(
        "--oracle-from",
        action="append",
        default=[],
        metavar="CASE=ROW[+ROW...]",
        help="the oracle's candidate for case CASE from row ROW's whole run (another run of the same structure; "
        "several joined by +: their mean) instead of the second half of CASE's own run; repeatable",
    )
    p.add_argument(
        "--oracle-smooth",
        type=float,
        default=0.0,
        metavar="S",
        help="smooth the oracle's MD densities with a Gaussian of S Å (the models' sigma_target is 0.4)",
    )
    p.add_argument(
        "--measure-from",
        action="append",
        default=[],
        metavar="CASE=ROW[+ROW...]",
        help="case CASE's measurements from the mean of these rows' whole runs (independent runs of its structure, "
        "mean_grid) instead of the first half of CASE's own run; repeatable",
    )
    p.add_argument("--cases", default=None, help="only these case rows, comma-separated (exploring; default: all)")
    p.add_argument("--modes", default=",".join(MODES), help=f"which of {','.join(MODES)} to run (exploring: model)")
    args = p.parse_args(argv)
    wanted = args.modes.split(",")
    stack = None
    if args.stack:
        n, _, dz = args.stack.partition(":")
        stack = (int(n), float(dz))
    if not wanted or set(wanted) - set(MODES):
        p.error(f"--modes: choose from {', '.join(MODES)}")

    def rows_of(values, flag):
        try:
            return {int(a): tuple(int(r) for r in b.split("+")) for a, b in (x.split("=") for x in values)}
        except ValueError:
            p.error(f"{flag}: CASE=ROW or CASE=ROW+ROW+..., row numbers")

    replicas = rows_of(args.oracle_from, "--oracle-from")
    measure_from = rows_of(args.measure_from, "--measure-from")
    try:
        cases = CASES if not args.cases else {int(r): CASES.get(int(r)) for r in args.cases.split(",")}
    except ValueError:
        p.error("--cases: row numbers, comma-separated")
    if None in cases.values():
        p.error(f"--cases: the cases are rows {', '.join(map(str, CASES))}")
    for flag, given in (("--oracle-from", replicas), ("--measure-from", measure_from)):
        if set(given) - set(CASES):
            p.error(f"{flag}: the cases are rows {', '.join(map(str, CASES))}")
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from hydrolayer import match
    from hydrolayer.predict import load_predictor

    t0 = time.perf_counter()
    predictor = load_predictor(args.model)
    cands = [match.parse_candidate(c) for c in CANDIDATES]
    modes = []
    if "model" in wanted:
        modes.append(("model", cands, match.simulate_candidates(cands, predictor), {}))
    if "before" in wanted:
        modes.append(("before", cands, match.simulate_candidates(cands, load_predictor(BEFORE_MODEL)), BEFORE_OPTIONS))
    if "oracle" in wanted:
        md = oracle(args.db, replicas, **({"smooth": args.oracle_smooth} if args.oracle_smooth else {}))
        oracle_cands = [match.Candidate(c.label, md[c.label].candidate.atoms, c.unit_cell) for c in cands]
        modes.append(("oracle", oracle_cands, md, {}))
    rng = np.random.default_rng(args.seed)
    snrs = [float(s) for s in args.snr.split(",")]
    records = []
    seen = seen_rows(args.db, predictor) if "model" in wanted else set()
    skipped = sorted(c for c in CASES if {c, *measure_from.get(c, ())} & seen)
    if skipped:
        print(
            f"skipped: rows {skipped}, {predictor.name} was trained or selected on them (or their measurements' rows)",
            flush=True,
        )
    for row, right in cases.items():
        if row in skipped:
            continue
        grid = mean_grid(args.db, measure_from[row]) if row in measure_from else half_grid(args.db, row, "half1")
        for snr in snrs:
            for _ in range(args.trials):
                meas, truth = one_trial(grid, rng, snr, stack)
                for mode, cs, sims, options in modes:
                    regs = run_mode(meas, cs, sims, options)
                    mine = next(r for r in regs if r.label == right)
                    records.append(
                        {
                            "row": row,
                            "right": right,
                            "mode": mode,
                            **truth,
                            "first": regs[0].label,
                            "ok": regs[0].label == right,
                            "rank_of_right": [r.label for r in regs].index(right) + 1,
                            "height_found": mine.height,
                            "height_error": abs(mine.height - truth["height"]),
                            "angle_found": mine.angle,
                            "score": mine.score,
                            "margin": mine.score - max(r.score for r in regs if r.label != right),
                            "scores": {r.label: r.score for r in regs},
                        }
                    )
            print(f"row {row} done, {time.perf_counter() - t0:.0f} s", flush=True)
    summary = summarise(records, snrs)
    doc = {
        "seconds": round(time.perf_counter() - t0, 1),
        "seed": args.seed,
        "model": predictor.name,
        "before": {"model": BEFORE_MODEL, **BEFORE_OPTIONS},
        "trials_per_case_and_snr": args.trials,
        "oracle_from": {str(k): list(v) for k, v in replicas.items()},
        "oracle_smooth_A": args.oracle_smooth,
        "measure_from": {str(k): list(v) for k, v in measure_from.items()},
        "stack": stack,
        "cases": {str(k): v for k, v in cases.items() if k not in skipped},
        "skipped_cases_seen_in_training": skipped,
        "candidates": CANDIDATES,
        "summary": summary,
        "records": records,
    }
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))
    if args.figure:
        figure(summary, snrs, args.figure, model=predictor.name)
    print(json.dumps(summary, indent=1))
    print(f"total {time.perf_counter() - t0:.0f} s")


def summarise(records, snrs):
    out = {}
    for mode in MODES:
        for snr in snrs + ["all"]:
            rs = [r for r in records if r["mode"] == mode and (snr == "all" or r["snr"] == snr)]
            if not rs:
                continue
            err = np.array([r["height_error"] for r in rs])
            per_case = {}
            for row in CASES:
                sub = [r for r in rs if r["row"] == row]
                if sub:  # a case skipped as seen in training has no trials
                    per_case[str(row)] = round(float(np.mean([r["ok"] for r in sub])), 3)
            out[f"{mode} snr={snr}"] = {
                "n": len(rs),
                "ranked_first": round(float(np.mean([r["ok"] for r in rs])), 3),
                "height_err_median_A": round(float(np.median(err)), 3),
                "height_within_0.3A": round(float(np.mean(err <= 0.3)), 3),
                "ranked_first_by_case": per_case,
            }
    return out


def figure(summary, snrs, path: Path, model: str = "default model"):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.5, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    names = {
        "model": f"as shipped ({model}, NCC, contrast ceiling)",
        "before": "before: unet-v1, NCC, whole height range",
        "oracle": "oracle: MD (other half) as forward model",
    }
    for mode, style in (("model", "o-"), ("before", "^:"), ("oracle", "s--")):
        if f"{mode} snr={snrs[0]}" not in summary:
            continue
        first = [summary[f"{mode} snr={s}"]["ranked_first"] for s in snrs]
        within = [summary[f"{mode} snr={s}"]["height_within_0.3A"] for s in snrs]
        name = names[mode]
        ax1.plot(snrs, first, style, label=name)
        ax2.plot(snrs, within, style, label=name)
    for ax, title in (
        (ax1, f"right candidate ranked first (of {len(CANDIDATES)})"),
        (ax2, "height within 0.3 Å (right candidate)"),
    ):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(snrs, [f"{s:g}" for s in snrs])
        ax.set_ylim(-0.02, 1.02)
        ax.axhline(0.9, color="0.6", lw=0.8, ls=":")
        ax.set_xlabel("signal-to-noise ratio of the map")
        ax.set_title(title, fontsize=10)
    ax1.set_ylabel("fraction of trials")
    ax1.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
