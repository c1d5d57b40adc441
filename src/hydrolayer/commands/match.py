"""``hydrolayer match``: rank candidate surfaces against a measured AFM map."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import floats_arg


def heights_arg(text: str) -> tuple[float, float]:
    """``A:B`` (Å) -> (A, B) with A <= B."""
    try:
        a, b = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A:B in Å, got {text!r}") from None
    if b < a:
        raise argparse.ArgumentTypeError(f"expected A <= B, got {text!r}")
    return a, b


def pixel_arg(text: str):
    """``S`` or ``SX,SY`` (Å)."""
    v = floats_arg(text)
    if len(v) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected S or SX,SY in Å, got {text!r}")
    return v[0] if len(v) == 1 else tuple(v)


class CLICommand:
    """rank candidate surfaces against a measured AFM map

    For each candidate: the predicted water density, its solvent-tip F_z, and the
    registration that fits the measured map best (lateral offset by FFT cross-correlation
    on the periodic simulated map, height above the surface Ca plane, rotation within
    ±3°, pixel-size calibration within ±1.5%, lateral blur), scored by normalised
    cross-correlation. Writes ranking.csv, ranking.json and one picture per candidate
    (measurement, best-registered simulation, difference, surface atoms); a defect
    candidate's defect is located in the map. MEASUREMENT: .gwy, .sxm, .3ds (3D stack),
    .tif, .npy, .csv (the last two with --pixel-size; arrays indexed [x, y(, z)]).
    CANDIDATE: a structure file, or NAME[:OPTIONS] built like `surface build`: options
    size=AxB, layers=N, vacancy=Ca|CO3, pairs=K, both, seed=S, placement=P, comma
    separated (calcite-104:size=5x3,vacancy=CO3); without size a surface is repeated to
    at least 20 Å a side.
    """

    name = "match"
    example = (
        "hydrolayer match examples/afm/calcite-co3-vacancy-df.gwy calcite-104 calcite-104:vacancy=CO3 "
        "calcite-104:vacancy=Ca calcite-104:pairs=1 aragonite-010 aragonite-001 vaterite-010 --out match"
    )

    @staticmethod
    def add_arguments(parser):
        parser.add_argument("measurement", type=Path, help="the measured map (.gwy .sxm .3ds .tif .npy .csv)")
        parser.add_argument(
            "candidates",
            nargs="+",
            metavar="CANDIDATE",
            help="structure file or NAME[:size=AxB,vacancy=Ca|CO3,pairs=K,both,seed=S,layers=N]",
        )
        parser.add_argument("--out", type=Path, required=True, help="output folder")
        parser.add_argument(
            "--model", default=None, help="shipped model name or checkpoint path (default: the default model)"
        )
        h = parser.add_mutually_exclusive_group()
        h.add_argument(
            "--height", type=float, default=None, help="the map's height above the surface Ca plane, Å, if known"
        )
        h.add_argument(
            "--heights",
            type=heights_arg,
            default=None,
            metavar="A:B",
            help="height range searched, Å above the surface Ca plane (default 1.5:8; a 3D stack: its lowest plane)",
        )
        parser.add_argument(
            "--pixel-size",
            type=pixel_arg,
            default=None,
            metavar="S",
            help="pixel size in Å (S or SX,SY); needed for .npy/.csv, overrides the file's",
        )
        parser.add_argument(
            "--quantity",
            choices=["force", "df"],
            default=None,
            help="force: F_z compared by value (map in N or nN); df: frequency shift, compared by "
            "pattern (default: force for maps in N, else df)",
        )
        parser.add_argument("--channel", default=None, help="channel (by title or name) of a multi-channel file")
        parser.add_argument("--z-step", type=float, default=None, help="plane spacing of a 3D .npy stack, Å")
        parser.add_argument(
            "--noise", type=float, default=None, help="the map's noise (std, in its units): report chi^2 per pixel"
        )
        parser.add_argument(
            "--amplitude",
            type=float,
            default=0.0,
            help="df: oscillation amplitude, Å (0: the small-amplitude limit -dF_z/dz)",
        )
        parser.add_argument("--tip-radius", type=float, default=None, help="3D Gaussian tip blur of the STA force, Å")
        parser.add_argument(
            "--contrast-floor",
            type=float,
            default=None,
            metavar="F",
            help="search only heights where the candidate's simulated map has at least F x its largest "
            "lateral contrast in the range (default: match.DEFAULT_CONTRAST_FLOOR; 0: the whole range)",
        )
        parser.add_argument(
            "--score",
            choices=["ncc", "likelihood"],
            default="ncc",
            help="rank by NCC (default), or (an ensemble model, e.g. --model unet-ens-c) by the likelihood "
            "with the members' spread added to the map's noise",
        )

    @staticmethod
    def run(args):
        from ..match import DEFAULT_CONTRAST_FLOOR, DEFAULT_HEIGHTS, match_files

        heights = (args.height, args.height) if args.height is not None else (args.heights or DEFAULT_HEIGHTS)
        regs, written = match_files(
            args.measurement,
            args.candidates,
            args.out,
            model=args.model,
            heights=heights,
            pixel_size=args.pixel_size,
            quantity=args.quantity,
            channel=args.channel,
            z_step=args.z_step,
            noise=args.noise,
            amplitude=args.amplitude,
            tip_radius=args.tip_radius,
            score=args.score,
            contrast_floor=DEFAULT_CONTRAST_FLOOR if args.contrast_floor is None else args.contrast_floor,
        )
        print(f"wrote {len(written)} files to {args.out} (best: {regs[0].label})")
