"""MD pipeline benchmarks (results in benchmarks/RESULTS.md, section "## MD").

    python benchmarks/bench_md.py speed  --ps 5 --out /tmp/bench-md      # pipeline vs bare LAMMPS, ranks vs threads
    python benchmarks/bench_md.py validate --db data/simulations.db --row 1   # peaks, gap density, split-half noise
    python benchmarks/bench_md.py validate --workdir data/work/<job_key>     # the same from a running job's checkpoint

``speed``: calcite (10-14) 5 x 3 x 4 layers on the force field's lattice, 25 Å water. One short
equilibration, then from the same restart file: (1) the pipeline's production (2 MPI ranks,
on-the-fly density, checkpoints), (2) a bare LAMMPS run of the same input (``mpiexec -n 2
lmp -in``, no sampling), (3) the pipeline with 2 OpenMP threads instead of ranks. Reported:
ns/day of each and the ratio pipeline / bare.

``validate``: for a stored row, the water-O density profile above the top surface Ca plane
(laterally averaged; both faces averaged, the bottom one mirrored), its first three peaks
(height above the plane, rho/rho_bulk), the gap density in g/cm3, and the split-half noise
(mean |half1 - half2| over 0-10 Å above each surface) raw and after 0.3 / 0.5 Å smoothing,
in rho/rho_bulk and in Å^-3.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _lammps_time(log: Path) -> float:
    """Seconds of the last 'Loop time' line of a LAMMPS log."""
    t = [float(ln.split()[3]) for ln in log.read_text().splitlines() if ln.startswith("Loop time of")]
    return t[-1]


def speed(args):
    from hydrolayer import forcefield as ff
    from hydrolayer.simulate import SimulationParams, default_lattice, prepare, run_worker
    from hydrolayer.structures import build_surface

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slab = build_surface("calcite-104", size=(5, 3), layers=4, lattice=default_lattice("calcite"))
    base = SimulationParams(production_ps=args.ps, equil_ps=args.equil_ps, checkpoint_ps=args.ps, seed=1)
    eq = out / "equil"
    if not (eq / "equil.restart").exists():
        shutil.rmtree(eq, ignore_errors=True)
        prepare(slab, eq, base)
        # equilibration only: a zero-length production is not allowed, so stop after equil
        p = SimulationParams(**{**base.to_dict(), "production_ps": 0.1, "checkpoint_ps": 0.1})
        (eq / "job.json").write_text(json.dumps({**json.loads((eq / "job.json").read_text()), "params": p.to_dict()}))
        run_worker(eq, p, progress=print)
    n_atoms = json.loads((eq / "job.json").read_text())["n_atoms"]
    results = {"n_atoms": n_atoms, "production_ps": args.ps}

    def pipeline(name, **par):
        d = out / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        for f in ("job.json", "system.data", "system.extxyz", "equil.restart", "npt.restart"):
            shutil.copy(eq / f, d / f)
        p = SimulationParams(**{**base.to_dict(), **par})
        job = json.loads((d / "job.json").read_text())
        job["params"] = p.to_dict()
        (d / "job.json").write_text(json.dumps(job))
        (d / "state.json").write_text(json.dumps({"stage": "equil_done", "prod_steps": 0}))
        t = time.time()
        run_worker(d, p, progress=print)
        wall = time.time() - t
        with np.load(d / "result.npz") as r:
            nsd = float(r["ns_per_day"])
        return {"ns_per_day": nsd, "wall_s": wall}

    def bare(name, ranks=2):
        d = out / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        steps = int(round(args.ps * 1000))
        job = json.loads((eq / "job.json").read_text())
        lines = ["units metal", "atom_style full", "boundary p p p", f"read_restart {eq / 'equil.restart'}"]
        lines += job["settings"]
        lines += [
            "timestep 0.001",
            "thermo_style custom step temp pe etotal press lz density",
            "thermo 1000",
            "fix ens all nvt temp 300.0 300.0 0.1",
            f"run {steps}",
        ]
        (d / "in.lammps").write_text("\n".join(lines) + "\n")
        lmp = str(Path(sys.executable).parent / "lmp")
        cmd = [ff.mpiexec_path(), "-n", str(ranks), lmp, "-in", "in.lammps", "-log", "log.lammps", "-screen", "none"]
        t = time.time()
        subprocess.run(cmd, cwd=d, env=ff.worker_env(1), check=True)
        wall = time.time() - t
        loop = _lammps_time(d / "log.lammps")
        return {"ns_per_day": args.ps * 1e-3 / (loop / 86400), "wall_s": wall, "loop_s": loop}

    # alternate the variants (A B C A B C ...) so that a changing machine load hits all alike
    runs = {"pipeline_mpi2": [], "bare_mpi2": [], "pipeline_omp2": []}
    for rep in range(args.repeats):
        runs["pipeline_mpi2"].append(pipeline("pipeline-mpi2", mode="mpi", ranks=2))
        runs["bare_mpi2"].append(bare("bare-mpi2"))
        if not args.no_omp:
            runs["pipeline_omp2"].append(pipeline("pipeline-omp2", mode="omp", ranks=1, threads=2))
    for name, rs in runs.items():
        if rs:
            results[name] = {
                "ns_per_day": [round(r["ns_per_day"], 3) for r in rs],
                "median": float(np.median([r["ns_per_day"] for r in rs])),
            }
    results["ratio_pipeline_over_bare"] = results["pipeline_mpi2"]["median"] / results["bare_mpi2"]["median"]
    if "pipeline_omp2" in results:
        results["ratio_mpi_over_omp"] = results["pipeline_mpi2"]["median"] / results["pipeline_omp2"]["median"]
    import os

    results["load_average"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    (out / "speed.json").write_text(json.dumps(results, indent=1))


def profile(d: dict, row) -> dict:
    """Laterally averaged profiles above each surface plane (bottom face mirrored)."""
    cell = d["cell"]
    lz = cell[2, 2]
    nz = d["half1"].shape[2]
    z = np.arange(nz) / nz * lz
    out = {}
    for face, zs, sign in (("top", row.z_top, 1.0), ("bottom", row.z_bottom, -1.0)):
        h = (sign * (z - zs)) % lz  # height above the face, periodic
        out[face] = (h, d["half1"].mean(axis=(0, 1)), d["half2"].mean(axis=(0, 1)))
    return out


def peaks(h, rho, hmax=6.0):
    """First three local maxima of the histogram rho(h) for 0.5 < h < hmax Å (h sorted),
    each refined by a parabola through the maximum and its two neighbours."""
    o = np.argsort(h)
    h, rho = h[o], rho[o]
    out = []
    for i in range(1, len(h) - 1):
        if not (0.5 < h[i] < hmax) or not (rho[i] > rho[i - 1] and rho[i] >= rho[i + 1] and rho[i] > 1.05):
            continue
        a, b, c = rho[i - 1], rho[i], rho[i + 1]
        den = a - 2 * b + c
        x = 0.5 * (a - c) / den if den < 0 else 0.0
        dh = h[i + 1] - h[i]
        out.append((round(float(h[i] + x * dh), 2), round(float(b - 0.25 * (a - c) * x), 2)))
        if len(out) == 3:
            break
    return out


class _Row(dict):
    __getattr__ = dict.get


def _from_workdir(workdir: Path):
    """Densities of a running (or finished) job from its checkpoint: (dict like
    store.load_density, row-like metadata)."""
    from ase.io import read

    from hydrolayer.density import normalise
    from hydrolayer.structures import surface_planes

    workdir = Path(workdir)
    job = json.loads((workdir / "job.json").read_text())
    f = workdir / ("result.npz" if (workdir / "result.npz").exists() else "accumulators.npz")
    with np.load(f) as r:
        r = {k: r[k] for k in r.files}
    n = [int(r["n1"]), int(r["n2"])]
    system = read(workdir / "system.extxyz")
    slab = system[job["slab"]]
    mean = r["mean_slab"] if "mean_slab" in r else r["sum_pos"] / sum(n)
    cell = r["cell"] if "cell" in r else None
    if cell is None:  # accumulators carry no cell: the production cell is the restart's box
        lz = json.loads((workdir / "state.json").read_text())["lz"]
        cell = np.array(system.cell[:])
        cell[2] = [0, 0, lz]
    slab.set_cell(cell)
    slab.positions = mean
    z_top, z_bottom = surface_planes(slab)
    halves, rho_bulk, gap = normalise(r["counts1"], r["counts2"], n, cell, z_top, z_bottom)
    ps = [k * job["params"]["sample_every"] * job["params"]["timestep_fs"] / 1000 for k in n]
    meta = _Row(
        id=str(workdir),
        surface=json.loads((workdir / "settings.json").read_text())["surface"]
        if (workdir / "settings.json").exists()
        else "?",
        production_ps=sum(ps),
        half_ps=ps,
        rho_bulk=rho_bulk,
        z_top=z_top,
        z_bottom=z_bottom,
        defects=None,
    )
    return {"half1": halves[0], "half2": halves[1], "cell": cell}, meta


SIGMAS = (0.0, 0.3, 0.4, 0.5)  # 0.4: the training targets' smoothing


def validate(args):
    from hydrolayer import store
    from hydrolayer.conventions import WATER_NUMBER_DENSITY as WATER_DENSITY
    from hydrolayer.density import split_half_noise

    if args.workdir:
        d, row = _from_workdir(args.workdir)
    else:
        row = store.get_row(args.db, args.row)
        d = store.load_density(args.db, row)
    prof = profile(d, row)
    res = {
        "row": row.id,
        "surface": row.surface,
        "defects": row.get("defects"),
        "production_ps": row.production_ps,
        "half_ps": row.get("half_ps"),
        "rho_bulk_A3": row.rho_bulk,
        "gap_density_g_cm3": round(row.rho_bulk / WATER_DENSITY, 4),
    }
    w = row.get("half_ps") or [1.0, 1.0]
    for face, (h, a, b) in prof.items():
        res[f"peaks_{face}"] = peaks(h, (w[0] * a + w[1] * b) / (w[0] + w[1]))
        res[f"peaks_{face}_half1"] = peaks(h, a)
        res[f"peaks_{face}_half2"] = peaks(h, b)
    # split-half noise 0-10 Å above each face
    cell = d["cell"]
    lz = cell[2, 2]
    nz = d["half1"].shape[2]
    z = np.arange(nz) / nz * lz
    above = ((z - row.z_top) % lz < 10.0) | ((row.z_bottom - z) % lz < 10.0)
    mask = np.broadcast_to(above[None, None, :], d["half1"].shape)
    noise = split_half_noise(d["half1"], d["half2"], cell, sigmas=SIGMAS, mask=mask)
    res["noise_rho_over_bulk"] = {str(k): round(v, 4) for k, v in noise.items()}
    whole = split_half_noise(d["half1"], d["half2"], cell, sigmas=SIGMAS)
    res["noise_whole_cell_rho_over_bulk"] = {str(k): round(v, 4) for k, v in whole.items()}
    # a pristine surface is laterally periodic: average over its lateral unit cells first
    if args.unit_cells:
        from hydrolayer.data import average_unit_cells

        reps = tuple(int(v) for v in args.unit_cells.split("x"))
        h1, h2 = (average_unit_cells(d[k], reps) for k in ("half1", "half2"))
        folded = split_half_noise(h1, h2, cell, sigmas=SIGMAS, mask=mask)
        res["noise_unit_cell_averaged_rho_over_bulk"] = {str(k): round(v, 4) for k, v in folded.items()}
    res["noise_A3"] = {str(k): round(v * row.rho_bulk, 5) for k, v in noise.items()}
    print(json.dumps(res, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--ps", type=float, default=5.0)
    s.add_argument("--equil-ps", type=float, default=5.0)
    s.add_argument("--out", default="/tmp/bench-md")
    s.add_argument("--repeats", type=int, default=2)
    s.add_argument("--no-omp", action="store_true", help="skip the OpenMP variant")
    s.set_defaults(func=speed)
    v = sub.add_parser("validate")
    v.add_argument("--db", default=None)
    v.add_argument("--workdir", default=None, help="a job folder (running or finished): validate from its checkpoint")
    v.add_argument("--row", default="1")
    v.add_argument(
        "--unit-cells",
        default=None,
        metavar="AxB",
        help="also the noise after averaging over AxB lateral unit cells (pristine surfaces)",
    )
    v.set_defaults(func=validate)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
