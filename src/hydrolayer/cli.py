"""The ``hydrolayer`` command line: sub-commands only, the logic lives in the library.

Each sub-command is one ``_cmd_<name>(sub)`` function that adds its parser (with a worked
example in its epilog) and sets ``func``; ``COMMANDS`` lists them in help order. User
errors (:class:`hydrolayer.util.InputError`) print one line on stderr and exit with 2;
``--traceback`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit code 2, like every other input error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _parser(sub, name, help, example, description=None):
    """Add a sub-command parser whose help ends with a worked example."""
    return sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog="example:\n  " + example.strip().replace("\n", "\n  "),
        formatter_class=_formatter,
    )


def _size(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 5x3, got {text!r}") from None
    if a < 1 or b < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return a, b


def _pair(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X0,Y0 in Å, got {text!r}") from None
    return x, y


# --------------------------------------------------------------------------- surface
def _cmd_surface(sub):
    from .structures import SURFACES

    p = sub.add_parser(
        "surface",
        help="build surface slabs",
        description="Build a surface slab of a carbonate polymorph.",
        formatter_class=_formatter,
        epilog="example:\n  hydrolayer surface build calcite-104 --size 5x3 --layers 4 --pair-vacancies 2 --seed 1 -o slab.extxyz",
    )
    ssub = p.add_subparsers(dest="surface_command", metavar="ACTION", required=True)
    b = _parser(
        ssub,
        "build",
        "build a slab by name and write it (format from the extension; .extxyz keeps atoms.info)",
        "hydrolayer surface build calcite-104 --size 5x3 --layers 4 --pair-vacancies 2 --seed 1 -o slab.extxyz\n"
        "hydrolayer surface build calcite-104 --size 5x3 --vacancy CO3 -o co3-vacancy.extxyz\n"
        "hydrolayer surface build aragonite-010 --size 4x3 -o aragonite.cif",
    )
    b.add_argument("name", choices=sorted(SURFACES), metavar="NAME", help="one of: " + ", ".join(sorted(SURFACES)))
    b.add_argument("--size", type=_size, default=(1, 1), help="lateral repeats of the surface cell, AxB (default 1x1)")
    b.add_argument("--layers", type=int, default=4, help="number of stoichiometric layers (default 4)")
    b.add_argument("--pair-vacancies", type=int, default=0, metavar="K", help="remove K neutral Ca2+/CO3 2- pairs from the top face")
    b.add_argument("--vacancy", choices=["Ca", "CO3"], help="remove one Ca2+ or one CO3 2- from the top face (leaves a net charge)")
    b.add_argument("--both-faces", action="store_true", help="also remove the same number of pairs from the bottom face")
    b.add_argument("--placement", choices=["random", "adjacent", "separated"], default="random",
                   help="pair placement: random (default), adjacent (one compact pit) or separated (pairs spread apart)")
    b.add_argument("--vacuum", type=float, default=30.0, help="gap above the slab, Å (default 30)")
    b.add_argument("--seed", type=int, default=0, help="random seed for the defect positions (default 0)")
    b.add_argument("-o", "--output", required=True, type=Path, help="output structure file")
    b.set_defaults(func=_run_surface_build)


def _run_surface_build(args):
    from .structures import build_surface, write_structure

    atoms = build_surface(
        args.name,
        size=args.size,
        layers=args.layers,
        pair_vacancies=args.pair_vacancies,
        vacancy=args.vacancy,
        both_faces=args.both_faces,
        seed=args.seed,
        vacuum=args.vacuum,
        placement=args.placement,
    )
    write_structure(atoms, args.output)
    print(f"wrote {args.output}: {atoms.get_chemical_formula()} ({len(atoms)} atoms), net charge {atoms.info['net_charge']:+d} e")


# --------------------------------------------------------------------------- describe
def _cmd_describe(sub):
    p = _parser(
        sub,
        "describe",
        "Gaussian-smeared C, O, Ca densities (Å^-3) of a surface: one window or the whole lateral cell",
        "hydrolayer describe slab.extxyz -o descriptor.npz              # whole lateral cell\n"
        "hydrolayer describe slab.extxyz -o window.cube --window 2.5,0  # one 10 x 10 x 20 Å window\n"
        "hydrolayer describe POSCAR -o descriptor.npz --sigma 0.5 --picture descriptor.png",
    )
    p.add_argument("structure", type=Path, help="any structure file ASE reads (a slab, surface normal +z)")
    p.add_argument("-o", "--output", required=True, type=Path, help=".npz (all channels) or .cube (one file per channel: OUT.C.cube, ...)")
    p.add_argument("--sigma", type=float, default=None, help="Gaussian width in Å (default: descriptors.DEFAULT_SIGMA)")
    p.add_argument("--window", type=_pair, default=None, metavar="X0,Y0", help="lateral corner of one 10 x 10 Å window, Å")
    p.add_argument("--face", choices=["top", "bottom"], default="top", help="which face (the bottom face is mirrored to face +z)")
    p.add_argument("--format", default=None, help="input format for ASE when the extension does not tell")
    p.add_argument("--picture", type=Path, default=None, help="also write a PNG of the descriptor")
    p.set_defaults(func=_run_describe)


def _run_describe(args):
    from .descriptors import DEFAULT_SIGMA, describe_cell, describe_window, plot_descriptor
    from .structures import read_structure

    atoms = read_structure(args.structure, format=args.format)
    sigma = DEFAULT_SIGMA if args.sigma is None else args.sigma
    if sigma <= 0:
        raise InputError(f"{args.structure}: --sigma must be positive, got {sigma}")
    if args.output.suffix not in (".npz", ".cube"):
        raise InputError(f"{args.output}: unknown output format {args.output.suffix!r} (use .npz or .cube)")
    if args.window is None:
        grid = describe_cell(atoms, sigma=sigma, face=args.face)
    else:
        grid = describe_window(atoms, *args.window, sigma=sigma, face=args.face)
    written = grid.write(args.output)
    if args.picture:
        plot_descriptor(grid, args.picture)
        written.append(args.picture)
    print("wrote " + ", ".join(str(w) for w in written))


# --------------------------------------------------------------------------- afm
def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in Å, got {text!r}") from None


def _cmd_afm(sub):
    p = _parser(
        sub,
        "afm",
        "AFM force maps from a water density (solvent-tip approximation): 3D F_z, constant-height images, force-distance curves",
        "hydrolayer afm pred/water.cube --out afm                       # heights: the hydration-layer peaks\n"
        "hydrolayer afm pred/water.cube --out afm --heights 2.3,3.4,5 --temperature 300 --tip-radius 0.5",
        description="W = -kT ln(max(rho, floor)/rho_bulk), F = -grad W (F_z = kT d ln rho/dz), forces in nN "
        "(1 eV/Å = 1.602 nN), F_z > 0 repulsive. Heights are in Å above the surface plane (mean z of the top "
        "Ca layer of the atoms in the file).",
    )
    p.add_argument("density", type=Path, help="water density grid: .cube (e.g. from hydrolayer predict) or .npz")
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--heights", type=_floats, default=None, metavar="H1,H2,...", help="image heights above the surface plane, Å (default: the density peaks)")
    p.add_argument("--temperature", type=float, default=300.0, help="temperature in K (default 300)")
    p.add_argument("--tip-radius", type=float, default=None, metavar="R", help="Gaussian tip blur, std in Å (default: none, point tip)")
    p.add_argument("--floor", type=float, default=1e-3, help="density floor as a fraction of rho_bulk (default 1e-3)")
    p.add_argument("--surface-z", type=float, default=None, help="surface plane z in Å (default: from the Ca atoms in the file)")
    p.add_argument("--rho-bulk", type=float, default=None, help="bulk density in the file's units (default: 1, or 0.0334 if units are Å^-3)")
    p.set_defaults(func=_run_afm)


def _run_afm(args):
    from .afm import afm_maps

    written = afm_maps(
        args.density,
        args.out,
        heights=args.heights,
        temperature=args.temperature,
        tip_radius=args.tip_radius,
        floor=args.floor,
        surface_z=args.surface_z,
        rho_bulk=args.rho_bulk,
    )
    print("wrote " + "\n      ".join(str(w) for w in written))


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


# --------------------------------------------------------------------------- MD: simulate, relax-bulk, db, campaign
def _md_parallel_args(p):
    p.add_argument("--ranks", type=int, default=None, help="MPI ranks per simulation (default: forcefield.DEFAULT_PARALLEL, 2)")
    p.add_argument("--threads", type=int, default=None, help="use OpenMP threads instead of MPI ranks (slower for this force field)")


def _cmd_simulate(sub):
    p = _parser(
        sub,
        "simulate",
        "one LAMMPS run of a slab in water -> water density grid, stored as a database row",
        "hydrolayer surface build calcite-104 --size 5x3 --layers 4 -o calcite.extxyz\n"
        "hydrolayer simulate calcite.extxyz --db sims.db --ps 100 --equil-ps 50 --seed 1 --workdir run1\n"
        "# interrupted? the same command resumes from the last checkpoint in the job folder",
    )
    p.add_argument("structure", type=Path, help="slab structure file (surface normal +z; water already in it is kept)")
    p.add_argument("--db", required=True, help="database: a .db file (grids/ beside it) or a postgresql:// URL (needs --grids)")
    p.add_argument("--ps", type=float, default=100.0, help="production length, ps (default 100)")
    p.add_argument("--equil-ps", type=float, default=50.0, help="equilibration: z-NPT + NVT, ps (default 50)")
    p.add_argument("--seed", type=int, default=1, help="velocity seed (default 1)")
    p.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    p.add_argument("--spacing", type=float, default=0.3, help="grid spacing, Å (default 0.3)")
    p.add_argument("--workdir", type=Path, default=None, help="job folder with checkpoints (default: work/simulate-<hash> beside the database)")
    p.add_argument("--grids", type=Path, default=None, help="grids folder (default: grids/ beside the database)")
    _md_parallel_args(p)
    p.set_defaults(func=_run_simulate)


def _run_simulate(args):
    from .simulate import simulate_file

    row = simulate_file(args.structure, args.db, production_ps=args.ps, equil_ps=args.equil_ps, seed=args.seed,
                        temperature=args.temperature, spacing=args.spacing, workdir=args.workdir,
                        grids_dir=args.grids, ranks=args.ranks, threads=args.threads)
    print(f"stored row {row} in {args.db}")


def _cmd_relax_bulk(sub):
    p = _parser(
        sub,
        "relax-bulk",
        "the force field's own 300 K / 1 bar lattice of a polymorph (NPT), stored in the package",
        "hydrolayer relax-bulk calcite            # writes src/hydrolayer/data/lattices.json\n"
        "hydrolayer relax-bulk aragonite --ps 20 --equil-ps 10",
    )
    p.add_argument("polymorph", help="calcite, aragonite, vaterite")
    p.add_argument("--ps", type=float, default=10.0, help="NPT averaging, ps (default 10)")
    p.add_argument("--equil-ps", type=float, default=10.0, help="NPT equilibration before averaging, ps (default 10)")
    p.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    p.add_argument("--workdir", type=Path, default=None, help="LAMMPS folder (default: temporary)")
    p.add_argument("--dry-run", action="store_true", help="print the lattice, do not store it")
    _md_parallel_args(p)
    p.set_defaults(func=_run_relax_bulk)


def _run_relax_bulk(args):
    from .simulate import relax_bulk_cli

    entry = relax_bulk_cli(args.polymorph, production_ps=args.ps, equil_ps=args.equil_ps, temperature=args.temperature,
                           workdir=args.workdir, write=not args.dry_run, ranks=args.ranks, threads=args.threads)
    print(f"{args.polymorph}: {entry['lattice']} (experiment {entry['experiment']})" + ("" if args.dry_run else " -> lattices.json"))


def _cmd_db(sub):
    p = sub.add_parser("db", help="the simulation database: list rows, export densities",
                       description="The simulation database (ase.db index + grids/).", formatter_class=_formatter,
                       epilog="example:\n  hydrolayer db list data/simulations.db\n  hydrolayer db export data/simulations.db 1 -o water.cube")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    l = _parser(dsub, "list", "a table of every row", "hydrolayer db list data/simulations.db")
    l.add_argument("db", help="database file or postgresql:// URL")
    l.set_defaults(func=_run_db_list)
    e = _parser(dsub, "export", "the mean of the two half-run densities of a row (rho/rho_bulk) as .cube or .npz",
                "hydrolayer db export data/simulations.db 1 -o water.cube")
    e.add_argument("db", help="database file or postgresql:// URL")
    e.add_argument("id", help="row id")
    e.add_argument("-o", "--output", required=True, type=Path, help=".cube or .npz")
    e.add_argument("--grids", type=Path, default=None, help="grids folder (default: grids/ beside the database)")
    e.set_defaults(func=_run_db_export)


def _run_db_list(args):
    from .store import format_table

    print(format_table(args.db))


def _run_db_export(args):
    from .store import export_cube

    written = export_cube(args.db, args.id, args.output, grids_dir=args.grids)
    print("wrote " + ", ".join(str(w) for w in written))


def _cmd_campaign(sub):
    p = sub.add_parser("campaign", help="many simulations from a YAML spec on Dask, resumable",
                       description="Campaigns: surfaces x defects x seeds x run length, run as Dask jobs.",
                       formatter_class=_formatter,
                       epilog="example:\n  hydrolayer campaign run examples/campaign-tiny.yaml --db /tmp/tiny/sim.db\n"
                              "  hydrolayer campaign status examples/campaign-tiny.yaml --db /tmp/tiny/sim.db")
    csub = p.add_subparsers(dest="campaign_command", metavar="ACTION", required=True)
    r = _parser(csub, "run", "run every unfinished job of a spec (again: skips finished, resumes interrupted)",
                "hydrolayer campaign run examples/dataset-v0.yaml --db data/simulations.db\n"
                "hydrolayer campaign run spec.yaml --db sims.db --scheduler tcp://10.0.0.5:8786")
    r.add_argument("spec", type=Path, help="campaign YAML")
    r.add_argument("--db", required=True, help="database file or postgresql:// URL (then also --grids and --workdir)")
    r.add_argument("--scheduler", default=None, metavar="ADDRESS", help="an existing Dask scheduler (default: a LocalCluster fitted to the cores)")
    r.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: cores // ranks)")
    r.add_argument("--grids", type=Path, default=None, help="grids folder (default: grids/ beside the database)")
    r.add_argument("--workdir", type=Path, default=None, help="job folders (default: work/ beside the database)")
    _md_parallel_args(r)
    r.set_defaults(func=_run_campaign_run)
    s = _parser(csub, "status", "state of every job of a spec", "hydrolayer campaign status examples/dataset-v0.yaml --db data/simulations.db")
    s.add_argument("spec", type=Path, help="campaign YAML")
    s.add_argument("--db", required=True, help="database file or postgresql:// URL")
    s.add_argument("--workdir", type=Path, default=None, help="job folders (default: work/ beside the database)")
    s.set_defaults(func=_run_campaign_status)
    k = _parser(csub, "snapshot", "copy the checkpoints of unfinished jobs to checkpoints/ beside the database (to move jobs to another machine; the next run resumes from it)",
                "hydrolayer campaign snapshot examples/dataset-v0.yaml --db data/simulations.db\n"
                "rsync -a data/checkpoints/ other-machine:hydrolayer/data/checkpoints/   # then campaign run there")
    k.add_argument("spec", type=Path, help="campaign YAML")
    k.add_argument("--db", required=True, help="database file")
    k.add_argument("--workdir", type=Path, default=None, help="job folders (default: work/ beside the database)")
    k.set_defaults(func=_run_campaign_snapshot)


def _run_campaign_run(args):
    from .campaign import run_campaign

    counts = run_campaign(args.spec, args.db, scheduler=args.scheduler, workers=args.workers, ranks=args.ranks,
                          threads=args.threads, grids_dir=args.grids, workdir=args.workdir)
    print(f"campaign: {counts['done']} stored, {counts['failed']} failed, {counts['skipped']} already done")


def _run_campaign_snapshot(args):
    from .campaign import snapshot_campaign

    snaps = snapshot_campaign(args.spec, args.db, workdir=args.workdir)
    print(f"{len(snaps)} job snapshot(s) written")


def _run_campaign_status(args):
    from .campaign import format_status

    print(format_status(args.spec, args.db, workdir=args.workdir))


# --------------------------------------------------------------------------- main
COMMANDS = [
    _cmd_surface, _cmd_describe,
    _cmd_simulate, _cmd_relax_bulk, _cmd_db, _cmd_campaign,
    _cmd_train, _cmd_evaluate,
    _cmd_predict, _cmd_afm, _cmd_models,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hydrolayer",
        description="Hydration layers over mineral surfaces: surfaces, MD ground truth, 3D U-Nets, AFM maps.",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"hydrolayer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
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
