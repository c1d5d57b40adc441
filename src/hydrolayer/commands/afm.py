"""``hydrolayer afm``: solvent-tip force maps from a water density."""

from __future__ import annotations

from pathlib import Path

from .common import floats_arg


class CLICommand:
    """AFM force maps from a water density (solvent-tip approximation): 3D F_z, constant-height images, force-distance curves

    W = -kT ln(max(rho, floor)/rho_bulk), F = -grad W (F_z = kT d ln rho/dz), forces in nN
    (1 eV/Å = 1.602 nN), F_z > 0 repulsive. Heights are in Å above the surface plane (mean z
    of the top Ca layer of the atoms in the file)."""

    name = "afm"
    example = (
        "hydrolayer afm pred/water.cube --out afm                       # heights: the hydration-layer peaks\n"
        "hydrolayer afm pred/water.cube --out afm --heights 2.3,3.4,5 --temperature 300 --tip-radius 0.5"
    )

    @staticmethod
    def add_arguments(p):
        p.add_argument("density", type=Path, help="water density grid: .cube (e.g. from hydrolayer predict) or .npz")
        p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
        p.add_argument(
            "--heights",
            type=floats_arg,
            default=None,
            metavar="H1,H2,...",
            help="image heights above the surface plane, Å (default: the density peaks)",
        )
        p.add_argument("--temperature", type=float, default=300.0, help="temperature in K (default 300)")
        p.add_argument(
            "--tip-radius",
            type=float,
            default=None,
            metavar="R",
            help="Gaussian tip blur, std in Å (default: none, point tip)",
        )
        p.add_argument(
            "--floor", type=float, default=1e-3, help="density floor as a fraction of rho_bulk (default 1e-3)"
        )
        p.add_argument(
            "--surface-z",
            type=float,
            default=None,
            help="surface plane z in Å (default: from the Ca atoms in the file)",
        )
        p.add_argument(
            "--rho-bulk",
            type=float,
            default=None,
            help="bulk density in the file's units (default: 1, or conventions.RHO_BULK if units are Å^-3)",
        )

    @staticmethod
    def run(args):
        from ..afm import afm_maps

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
