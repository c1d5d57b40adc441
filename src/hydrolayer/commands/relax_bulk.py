"""``hydrolayer relax-bulk``: the force field's own lattice of a polymorph (NPT)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .common import add_md_parallel_args


class CLICommand:
    """the force field's own 300 K / 1 bar lattice of a polymorph (NPT of the bulk crystal)"""

    name = "relax-bulk"
    example = (
        "hydrolayer relax-bulk calcite --dry-run              # what would run, without running it\n"
        "hydrolayer relax-bulk calcite -o lattices.json     # run, and merge the result into lattices.json\n"
        "hydrolayer relax-bulk aragonite --store            # developers: update the package's lattices.json"
    )

    @staticmethod
    def add_arguments(p):
        p.add_argument("polymorph", help="calcite, aragonite, vaterite, magnesite")
        p.add_argument("--ps", type=float, default=10.0, help="NPT averaging, ps (default 10)")
        p.add_argument(
            "--equil-ps", type=float, default=10.0, help="NPT equilibration before averaging, ps (default 10)"
        )
        p.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
        p.add_argument("--workdir", type=Path, default=None, help="LAMMPS folder (default: temporary)")
        p.add_argument("-o", "--output", type=Path, default=None, help="merge the result into this lattices JSON file")
        p.add_argument(
            "--store",
            action="store_true",
            help="merge the result into the package's own data/lattices.json, which the MD stage reads",
        )
        p.add_argument("--dry-run", action="store_true", help="print the supercell and the run's length, run nothing")
        add_md_parallel_args(p)

    @staticmethod
    def run(args):
        from ..simulate import LATTICES_FILE, SimulationParams, bulk_supercell, relax_bulk
        from .simulate import parallel_settings

        params = SimulationParams(
            production_ps=args.ps,
            equil_ps=args.equil_ps,
            temperature=args.temperature,
            **parallel_settings(args.ranks, args.threads),
        )
        if args.dry_run:
            sc, reps, _ = bulk_supercell(args.polymorph)
            print(
                f"{args.polymorph}: {len(sc)} atoms ({'x'.join(map(str, reps))} orthogonal cells), "
                f"{args.equil_ps:g} ps NPT equilibration + {args.ps:g} ps NPT averaging at {args.temperature:g} K; nothing run"
            )
            return
        target = LATTICES_FILE if args.store else args.output
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"hydrolayer-bulk-{args.polymorph}-"))
        entry = relax_bulk(args.polymorph, workdir, params, lattices_file=target)
        print(json.dumps({args.polymorph: entry}, indent=1))
        print(
            f"{args.polymorph}: {entry['lattice']} (experiment {entry['experiment']})"
            + (f" -> {target}" if target else "")
        )
