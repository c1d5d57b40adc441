"""``hydrolayer surface build``: a slab by name, written to a structure file."""

from __future__ import annotations

from pathlib import Path

from .common import add_action, size_arg


class CLICommand:
    """build surface slabs of the carbonate polymorphs (pristine or with vacancies)"""

    name = "surface"
    example = "hydrolayer surface build calcite-104 --size 5x3 --layers 4 --pair-vacancies 2 --seed 1 -o slab.extxyz"

    @staticmethod
    def add_arguments(parser):
        from ..structures import PLACEMENTS, SURFACES

        sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        b = add_action(
            sub,
            "build",
            "build a slab by name and write it (format from the extension; .extxyz keeps atoms.info)",
            "hydrolayer surface build calcite-104 --size 5x3 --layers 4 --pair-vacancies 2 --seed 1 -o slab.extxyz\n"
            "hydrolayer surface build calcite-104 --size 5x3 --vacancy CO3 -o co3-vacancy.extxyz\n"
            "hydrolayer surface build aragonite-010 --size 5x4 --layers 3 --pair-vacancies 2 --both-faces -o ar.extxyz",
            CLICommand.build,
        )
        b.add_argument("name", choices=sorted(SURFACES), metavar="NAME", help="one of: " + ", ".join(sorted(SURFACES)))
        b.add_argument(
            "--size", type=size_arg, default=(1, 1), help="lateral repeats of the surface cell, AxB (default 1x1)"
        )
        b.add_argument("--layers", type=int, default=4, help="number of stoichiometric layers (default 4)")
        b.add_argument(
            "--pair-vacancies",
            type=int,
            default=0,
            metavar="K",
            help="remove K neutral Ca2+/CO3 2- pairs from the top face",
        )
        b.add_argument(
            "--placement",
            choices=PLACEMENTS,
            default="random",
            help="pair placement: random (default), adjacent (one compact pit) or separated (pairs spread apart)",
        )
        b.add_argument(
            "--vacancy",
            choices=["Ca", "CO3"],
            help="remove one Ca2+ or one CO3 2- from the top face (leaves a net charge)",
        )
        b.add_argument(
            "--both-faces", action="store_true", help="also remove the same number of pairs from the bottom face"
        )
        b.add_argument("--vacuum", type=float, default=30.0, help="gap above the slab, Å (default 30)")
        b.add_argument("--seed", type=int, default=0, help="random seed for the defect positions (default 0)")
        b.add_argument("-o", "--output", required=True, type=Path, help="output structure file")

    @staticmethod
    def build(args):
        from ..structures import build_surface, write_structure

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
        print(
            f"wrote {args.output}: {atoms.get_chemical_formula()} ({len(atoms)} atoms), net charge {atoms.info['net_charge']:+d} e"
        )
