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
from pathlib import Path

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
  hydrolayer <command> --help      (each command shows a worked example)
"""

# modules of hydrolayer.commands, in help order
COMMANDS = ["surface", "describe", "simulate", "relax_bulk", "db", "campaign", "train", "evaluate", "predict", "afm", "models"]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit code 2, like every other input error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser(sub, name, help, example, description=None):
    """(legacy commands below) a sub-command parser whose help ends with a worked example."""
    return sub.add_parser(name, help=help, description=description or help,
                          epilog="example:\n  " + example.strip().replace("\n", "\n  "), formatter_class=formatter)


def add_command(sub, command) -> None:
    """Register one ``CLICommand`` class under ``sub``."""
    doc = (command.__doc__ or "").strip()
    p = sub.add_parser(command.name, help=doc.splitlines()[0], description=doc, formatter_class=formatter,
                       epilog="example:\n  " + command.example.strip().replace("\n", "\n  "))
    command.add_arguments(p)
    if hasattr(command, "run"):
        p.set_defaults(func=command.run)


# --------------------------------------------------------------------------- predict
def _cmd_predict(sub):
    p = _parser(
        sub,
        "predict",
        "predict the 3D water density over a whole surface with a trained U-Net (seconds, not days of MD)",
        "hydrolayer predict examples/calcite-co3-vacancy.extxyz --out pred\n"
        "hydrolayer predict slab.extxyz --model runs/l1/best.pt --out pred   # your own checkpoint\n"
        "hydrolayer afm pred/water.cube --out pred/afm                       # then the AFM maps",
        description="Writes water.cube (with the atoms; VESTA/OVITO/ASE), water.npz, profile.png, slices.png "
        "and xz.png into --out. Density in rho/rho_bulk over the whole lateral cell, z from 5 Å below to 15 Å "
        "above the surface Ca plane. `hydrolayer models` lists the shipped models.",
    )
    p.add_argument("structure", type=Path, help="any structure file ASE reads: a slab with its surface normal along +z (a skewed lateral cell is predicted on an orthogonal supercell)")
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--model", default=None, metavar="NAME|PATH", help="shipped model name or checkpoint path (default: the best shipped U-Net)")
    p.add_argument("--method", choices=["tiles", "cell"], default="tiles", help="blend 10 x 10 Å windows (default, as trained) or run once over the periodically padded cell")
    p.add_argument("--stride", type=int, default=None, metavar="N", help="tiles: window step in grid points, 16-31 (default 24 = three quarters of a window; 16 = half a window, 2x the work)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="network arithmetic: auto (default) = bfloat16 where the CPU supports it natively (~1.7x faster, "
                   "density within ~1e-3 on average), else float32")
    p.add_argument("--face", choices=["top", "bottom"], default="top", help="which face (default top)")
    p.add_argument("--format", default=None, help="input format for ASE when the extension does not tell")
    p.set_defaults(func=_run_predict)


def _run_predict(args):
    from .predict import predict_file

    grid, written = predict_file(
        args.structure, args.out, model=args.model, method=args.method, face=args.face, format=args.format, stride=args.stride,
        precision=args.precision, warn=lambda m: print(f"hydrolayer: warning: {m}", file=sys.stderr),
    )
    m = grid.meta
    print(f"predicted with {m['model']} ({m['method']}, {m['precision']}) in {m['predict_seconds']:.2f} s (model load {m['load_seconds']:.2f} s)")
    print("wrote " + "\n      ".join(str(w) for w in written))


# --------------------------------------------------------------------------- models
def _cmd_models(sub):
    p = _parser(
        sub,
        "models",
        "list the trained models shipped with hydrolayer, with their model cards",
        "hydrolayer models\nhydrolayer models --card unet-l1",
    )
    p.add_argument("--card", default=None, metavar="NAME", help="print the full model card of NAME")
    p.set_defaults(func=_run_models)


def _run_models(args):
    from .predict import models_text

    print(models_text(card=args.card))


# --------------------------------------------------------------------------- train
def _cmd_train(sub):
    p = _parser(
        sub,
        "train",
        "train a U-Net or attention U-Net on the simulation database (L1 and L2 compared, a checkpoint every epoch)",
        "hydrolayer train --db data/simulations.db --model unet --out runs/unet --epochs 60\n"
        "hydrolayer train --db data/simulations.db --out runs/unet --resume          # after a kill: continues exactly\n"
        "hydrolayer train --db data/simulations.db --model attention-unet --out runs/att --config train.yaml\n"
        "torchrun --standalone --nproc_per_node 2 -m hydrolayer.cli train --db data/simulations.db --out runs/ddp",
    )
    p.add_argument("--db", required=True, help="the simulation database (SQLite file or postgresql:// URL)")
    p.add_argument("--model", choices=["unet", "attention-unet"], default=None, help="network (default unet)")
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, metrics.jsonl, split.json, model.pt)")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (default 60; with --resume: extend the run)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--config", type=Path, default=None, help="YAML file of TrainConfig settings (see hydrolayer.train.TrainConfig)")
    p.add_argument("--loss", choices=["l1", "l2", "compare"], default=None, help="loss (default compare: train both, keep the better)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (per-epoch lines only)")
    p.set_defaults(func=_run_train)


def _run_train(args):
    from .train import train_command

    train_command(args.db, args.out, model=args.model, epochs=args.epochs, resume=args.resume, config=args.config,
                  loss=args.loss, seed=args.seed, progress=not args.no_progress)


# --------------------------------------------------------------------------- evaluate
def _cmd_evaluate(sub):
    p = _parser(
        sub,
        "evaluate",
        "Table-1 metrics (MAE with the MD noise floor and a height-only baseline), peaks and figures for trained runs",
        "hydrolayer evaluate runs/unet --db data/simulations.db --out report/\n"
        "hydrolayer evaluate runs/unet runs/att --db data/simulations.db --out report/   # one column per model",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories of hydrolayer train (or checkpoint .pt files)")
    p.add_argument("--db", required=True, help="the simulation database")
    p.add_argument("--out", required=True, type=Path, help="report folder: report.md, metrics.csv, metrics.json, figures")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument("--max-row", type=int, default=None, metavar="N",
                   help="use only rows 1..N of the database (the database as it was then; keeps a report reproducible)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args):
    from .evaluate import evaluate_command

    evaluate_command(args.runs, args.db, args.out, figures=not args.no_figures, max_row=args.max_row)


LEGACY = {"predict": _cmd_predict, "models": _cmd_models, "train": _cmd_train, "evaluate": _cmd_evaluate}


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
        if name in LEGACY:
            LEGACY[name](sub)
        else:
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
