"""``hydrolayer simulate``: one LAMMPS run of a slab file, stored as a database row."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..util import InputError
from .common import add_md_parallel_args

RESUME_KEYS = ("production_ps", "equil_ps", "seed", "temperature", "spacing")


def parallel_settings(ranks=None, threads=None) -> dict:
    """``SimulationParams`` fields for ``--ranks`` / ``--threads`` (``forcefield.parallel_layout``)."""
    from ..forcefield import parallel_layout

    layout = parallel_layout(ranks, threads)
    return {k: layout[k] for k in ("mode", "ranks", "threads")}


def default_workdir(structure: Path, db, params) -> Path:
    """A job folder beside the database named by the input file and the settings, so that
    running the same command again resumes instead of starting over."""
    from ..store import is_url

    if is_url(str(db)):
        raise InputError(f"{structure}: with a PostgreSQL database give --workdir")
    h = hashlib.sha256(Path(structure).read_bytes())
    h.update(json.dumps({k: getattr(params, k) for k in RESUME_KEYS}, sort_keys=True).encode())
    return Path(db).resolve().parent / "work" / f"simulate-{h.hexdigest()[:16]}"


class CLICommand:
    """one LAMMPS run of a slab in water -> water density grid, stored as a database row"""

    name = "simulate"
    example = (
        "hydrolayer surface build calcite-104 --size 5x3 --layers 4 -o calcite.extxyz\n"
        "hydrolayer simulate calcite.extxyz --db sims.db --ps 100 --equil-ps 50 --seed 1 --workdir run1\n"
        "# interrupted? the same command resumes from the last checkpoint in the job folder"
    )

    @staticmethod
    def add_arguments(p):
        p.add_argument(
            "structure", type=Path, help="slab structure file (surface normal +z; water already in it is kept)"
        )
        p.add_argument(
            "--db", required=True, help="database: a .db file (grids/ beside it) or a postgresql:// URL (needs --grids)"
        )
        p.add_argument("--ps", type=float, default=100.0, help="production length, ps (default 100)")
        p.add_argument("--equil-ps", type=float, default=50.0, help="equilibration: z-NPT + NVT, ps (default 50)")
        p.add_argument("--seed", type=int, default=1, help="velocity seed (default 1)")
        p.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
        p.add_argument("--spacing", type=float, default=0.3, help="grid spacing, Å (default 0.3)")
        p.add_argument(
            "--workdir",
            type=Path,
            default=None,
            help="job folder with checkpoints (default: work/simulate-<hash> beside the database)",
        )
        p.add_argument("--grids", type=Path, default=None, help="grids folder (default: grids/ beside the database)")
        add_md_parallel_args(p)

    @staticmethod
    def run(args):
        from ..simulate import SimulationFailed, SimulationParams, simulate
        from ..structures import read_structure

        for name, v in (
            ("--ps", args.ps),
            ("--equil-ps", args.equil_ps),
            ("--temperature", args.temperature),
            ("--spacing", args.spacing),
        ):
            if not v > 0:
                raise InputError(f"{args.structure}: {name} must be positive, got {v}")
        atoms = read_structure(args.structure)
        par = parallel_settings(args.ranks, args.threads)
        params = SimulationParams(
            production_ps=args.ps,
            equil_ps=args.equil_ps,
            seed=args.seed,
            temperature=args.temperature,
            spacing=args.spacing,
            **par,
        )
        workdir = args.workdir
        if workdir is None:
            workdir = default_workdir(args.structure, args.db, params)
            workdir.parent.mkdir(exist_ok=True)
            print(f"job folder {workdir} (run the same command again to resume)")
        if (Path(workdir) / "job.json").exists():
            old = json.loads((Path(workdir) / "job.json").read_text())["params"]
            if {k: old.get(k) for k in RESUME_KEYS} != {k: getattr(params, k) for k in RESUME_KEYS}:
                raise InputError(
                    f"{workdir}: holds a run with other settings; resume it with the same options or use a new --workdir"
                )
            params = SimulationParams(**{**old, **par})
        try:
            row = simulate(atoms, args.db, params, workdir=workdir, grids_dir=args.grids, source=str(args.structure))
        except SimulationFailed as err:
            raise InputError(
                f"{args.structure}: simulation failed, nothing stored ({err}); job folder {workdir}"
            ) from None
        print(f"stored row {row} in {args.db}")
