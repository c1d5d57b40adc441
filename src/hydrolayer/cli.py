"""The ``hydrolayer`` command line: a thin layer over the library.

Every command is one module of :mod:`hydrolayer.commands` with one ``CLICommand`` class
(ASE's layout): the first line of its docstring is its help line, ``example`` the worked
example that ends its ``--help``, ``add_arguments(parser)`` its options and ``run(args)``
the call into the library (commands with actions, such as ``db list``, set ``args.func``
per action). ``COMMANDS`` lists them in help order. User errors
(:class:`hydrolayer.util.InputError`) print one line on stderr and exit with 2;
``--traceback`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .commands.common import formatter
from .util import InputError

EPILOG = """\
examples:
  hydrolayer surface build calcite-104 --size 5x3 --layers 4 -o calcite.extxyz
  hydrolayer describe calcite.extxyz -o descriptor.npz
  hydrolayer simulate calcite.extxyz --db sims.db --ps 100
  hydrolayer train --db sims.db --model unet --out runs/unet
  hydrolayer predict calcite.extxyz --model runs/unet/model.pt --out pred
  hydrolayer afm pred/water.cube --out pred/afm
  hydrolayer match measured.gwy calcite-104 calcite-104:vacancy=CO3 --out match
  hydrolayer <command> --help      (each command shows a worked example)
"""

# modules of hydrolayer.commands, in help order
COMMANDS = [
    "surface",
    "describe",
    "simulate",
    "relax_bulk",
    "db",
    "campaign",
    "train",
    "evaluate",
    "predict",
    "afm",
    "match",
    "models",
]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit code 2, like every other input error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_command(sub, command) -> None:
    """Register one ``CLICommand`` class under ``sub``."""
    doc = (command.__doc__ or "").strip()
    p = sub.add_parser(
        command.name,
        help=doc.splitlines()[0],
        description=doc,
        formatter_class=formatter,
        epilog="example:\n  " + command.example.strip().replace("\n", "\n  "),
    )
    command.add_arguments(p)
    if hasattr(command, "run"):
        p.set_defaults(func=command.run)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hydrolayer",
        description="Hydration layers over mineral surfaces: surfaces, MD ground truth, 3D U-Nets, AFM maps.",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"hydrolayer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        add_command(sub, importlib.import_module(f".commands.{name}", __package__).CLICommand)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except InputError as err:
        if args.traceback:
            raise
        print(f"hydrolayer: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hydrolayer: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
