"""``hydrolayer evaluate``."""

from __future__ import annotations

import sys
from pathlib import Path


class CLICommand:
    """Table-1 metrics (MAE with the MD noise floor and a height-only baseline), peaks and figures for trained runs"""

    name = "evaluate"
    example = (
        "hydrolayer evaluate runs/unet --db data/simulations.db --out report/\n"
        "hydrolayer evaluate runs/unet runs/att --db data/simulations.db --out report/   # one column per model"
    )

    @staticmethod
    def add_arguments(parser):
        add = parser.add_argument
        add(
            "runs",
            nargs="+",
            type=Path,
            metavar="RUN",
            help="run directories of hydrolayer train (or checkpoint .pt files)",
        )
        add("--db", required=True, help="the simulation database")
        add("--out", required=True, type=Path, help="report folder: report.md, metrics.csv, metrics.json, figures")
        add("--no-figures", action="store_true", help="tables only")
        add(
            "--max-row",
            type=int,
            default=None,
            metavar="N",
            help="use only rows 1..N of the database (the database as it was then; keeps a report reproducible)",
        )

    @staticmethod
    def run(args):
        from ..evaluate import evaluate

        evaluate(
            args.runs,
            args.db,
            args.out,
            figures=not args.no_figures,
            max_row=args.max_row,
            log=lambda m: print(m, file=sys.stderr),
        )
