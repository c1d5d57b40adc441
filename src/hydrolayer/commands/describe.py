"""``hydrolayer describe``: the model's input, the Gaussian-smeared C, O, Ca densities."""

from __future__ import annotations

from pathlib import Path

from ..util import InputError
from .common import pair_arg


class CLICommand:
    """Gaussian-smeared C, O, Ca densities (Å^-3) of a surface: one window or the whole lateral cell"""

    name = "describe"
    example = (
        "hydrolayer describe slab.extxyz -o descriptor.npz              # whole lateral cell\n"
        "hydrolayer describe slab.extxyz -o window.cube --window 2.5,0  # one 10 x 10 x 20 Å window\n"
        "hydrolayer describe POSCAR -o descriptor.npz --sigma 0.5 --picture descriptor.png"
    )

    @staticmethod
    def add_arguments(p):
        p.add_argument("structure", type=Path, help="any structure file ASE reads (a slab, surface normal +z)")
        p.add_argument(
            "-o",
            "--output",
            required=True,
            type=Path,
            help=".npz (all channels) or .cube (one file per channel: OUT.C.cube, ...)",
        )
        p.add_argument(
            "--sigma", type=float, default=None, help="Gaussian width in Å (default: descriptors.DEFAULT_SIGMA)"
        )
        p.add_argument(
            "--window", type=pair_arg, default=None, metavar="X0,Y0", help="lateral corner of one 10 x 10 Å window, Å"
        )
        p.add_argument(
            "--face",
            choices=["top", "bottom"],
            default="top",
            help="which face (the bottom face is mirrored to face +z)",
        )
        p.add_argument("--format", default=None, help="input format for ASE when the extension does not tell")
        p.add_argument("--picture", type=Path, default=None, help="also write a PNG of the descriptor")

    @staticmethod
    def run(args):
        from ..descriptors import DEFAULT_SIGMA, describe_cell, describe_window, plot_descriptor
        from ..structures import read_structure

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
