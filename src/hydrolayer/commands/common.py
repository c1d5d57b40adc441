"""Argument types and shared options of the command line (``hydrolayer.commands``).

Every command is one module of this package holding one ``CLICommand`` class (ASE's
layout): its docstring's first line is the help line, ``example`` the worked example that
ends its ``--help``, ``add_arguments(parser)`` its options and ``run(args)`` the call into
the library. No science here: a command parses, calls one library function, prints.
"""

from __future__ import annotations

import argparse


def size_arg(text: str) -> tuple[int, int]:
    """``5x3`` -> (5, 3), positive."""
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 5x3, got {text!r}") from None
    if a < 1 or b < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return a, b


def pair_arg(text: str) -> tuple[float, float]:
    """``X0,Y0`` (Å) -> (x0, y0)."""
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X0,Y0 in Å, got {text!r}") from None
    return x, y


def floats_arg(text: str) -> list[float]:
    """``2.3,3.4`` -> [2.3, 3.4]."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_md_parallel_args(parser) -> None:
    """``--ranks`` / ``--threads`` of the MD commands."""
    parser.add_argument("--ranks", type=int, default=None, help="MPI ranks per simulation (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="OpenMP threads instead of MPI ranks")


def add_action(sub, name: str, help: str, example: str, func):
    """A sub-action parser (``db list``, ``campaign run`` ...) whose help ends with a worked
    example; ``func(args)`` runs it."""
    p = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog="example:\n  " + example.strip().replace("\n", "\n  "),
        formatter_class=formatter,
    )
    p.set_defaults(func=func)
    return p


def formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)
