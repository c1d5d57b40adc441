"""``hydrolayer db``: the simulation database (list, show, export)."""

from __future__ import annotations

from pathlib import Path

from .common import add_action


class CLICommand:
    """the simulation database: list rows, show one (with its first-layer water over time), export densities"""

    name = "db"
    example = (
        "hydrolayer db list data/simulations.db\n"
        "hydrolayer db show data/simulations.db 19\n"
        "hydrolayer db export data/simulations.db 1 -o water.cube"
    )

    @staticmethod
    def add_arguments(parser):
        sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        p = add_action(sub, "list", "a table of every row", "hydrolayer db list data/simulations.db", CLICommand.list)
        p.add_argument("db", help="database file or postgresql:// URL")
        p = add_action(
            sub,
            "show",
            "one row: its settings and results, and the first-layer water count of each face per production block",
            "hydrolayer db show data/simulations.db 19",
            CLICommand.show,
        )
        p.add_argument("db", help="database file or postgresql:// URL")
        p.add_argument("id", help="row id")
        p = add_action(
            sub,
            "export",
            "the mean of the two half-run densities of a row (rho/rho_bulk) as .cube or .npz",
            "hydrolayer db export data/simulations.db 1 -o water.cube",
            CLICommand.export,
        )
        p.add_argument("db", help="database file or postgresql:// URL")
        p.add_argument("id", help="row id")
        p.add_argument("-o", "--output", required=True, type=Path, help=".cube or .npz")
        p.add_argument("--grids", type=Path, default=None, help="grids folder (default: grids/ beside the database)")

    @staticmethod
    def list(args):
        from ..store import format_table

        print(format_table(args.db))

    @staticmethod
    def show(args):
        from ..store import format_row

        print(format_row(args.db, args.id))

    @staticmethod
    def export(args):
        from ..store import export_cube

        written = export_cube(args.db, args.id, args.output, grids_dir=args.grids)
        print("wrote " + ", ".join(str(w) for w in written))
