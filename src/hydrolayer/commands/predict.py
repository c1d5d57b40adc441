"""``hydrolayer predict``."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path


class CLICommand:
    """predict the 3D water density over a whole surface with a trained U-Net (seconds, not days of MD)

    Writes water.cube (with the atoms; VESTA/OVITO/ASE), water.npz, profile.png, slices.png
    and xz.png into --out. Density in rho/rho_bulk over the whole lateral cell, z from 5 Å below to 15 Å
    above the surface Ca plane. `hydrolayer models` lists the shipped models. With an ensemble
    (--model ENSEMBLE.json) the density is the members' mean, and uncertainty.cube, uncertainty.npz
    (the members' standard deviation) and uncertainty.png are written too, with a one-line summary.
    A model that ships its training latents (the shipped ensemble does) also scores each 10 x 10 Å
    window's distance from its training data (water.npz metadata "ood"); one warning line names the
    windows above the threshold.
    """

    name = "predict"
    example = (
        "hydrolayer predict examples/calcite-co3-vacancy.extxyz --out pred\n"
        "hydrolayer predict slab.extxyz --model runs/l1/best.pt --out pred   # your own checkpoint\n"
        "hydrolayer predict slab.extxyz --model runs/ens/ensemble.json --out pred   # an ensemble: + uncertainty\n"
        "hydrolayer afm pred/water.cube --out pred/afm                       # then the AFM maps"
    )

    @staticmethod
    def add_arguments(parser):
        add = parser.add_argument
        add(
            "structure",
            type=Path,
            help="any structure file ASE reads: a slab with its surface normal along +z "
            "(a skewed lateral cell is predicted on an orthogonal supercell)",
        )
        add("--out", required=True, type=Path, help="output folder (created if missing)")
        add(
            "--model",
            default=None,
            metavar="NAME|PATH",
            help="shipped model or ensemble name, checkpoint (.pt) or ensemble manifest (.json) path (default: the best shipped U-Net)",
        )
        add(
            "--method",
            choices=["tiles", "cell"],
            default="tiles",
            help="blend 10 x 10 Å windows (default, as trained) or run once over the periodically padded cell",
        )
        add(
            "--stride",
            type=int,
            default=None,
            metavar="N",
            help="tiles: window step in grid points, 16-31 (default 24 = three quarters of a window; 16 = half a window, 2x the work)",
        )
        add(
            "--precision",
            choices=["auto", "float32", "bfloat16"],
            default="auto",
            help="network arithmetic: auto (default) = bfloat16 where the CPU supports it natively (~1.7x faster, "
            "density within ~1e-3 on average), else float32",
        )
        add("--face", choices=["top", "bottom"], default="top", help="which face (default top)")
        add("--format", default=None, help="input format for ASE when the extension does not tell")

    @staticmethod
    def run(args):
        from ..inference import EnsemblePredictor, load_predictor
        from ..predict import predict_density, write_outputs
        from ..structures import read_structure
        from ..uncertainty import flag_warning, ood_warning, summary_line

        atoms = read_structure(args.structure, format=args.format)
        with warnings.catch_warnings(record=True) as caught:  # domain warnings: one line each
            warnings.simplefilter("always")
            pred = load_predictor(args.model, precision=args.precision)
            ensemble = isinstance(pred, EnsemblePredictor)
            result = predict_density(
                atoms,
                model=pred,
                method=args.method,
                stride=args.stride,
                face=args.face,
                source=str(args.structure),
                uncertainty=ensemble,
            )
        grid, spread = result if ensemble else (result, None)
        for w in caught:
            if issubclass(w.category, UserWarning):
                print(f"hydrolayer: warning: {w.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        grid.meta["load_seconds"] = pred.load_seconds
        written = write_outputs(grid, args.out, spread=spread)
        m = grid.meta
        print(
            f"predicted with {m['model']} ({m['method']}, {m['precision']}) in {m['predict_seconds']:.2f} s "
            f"(model load {m['load_seconds']:.2f} s)"
        )
        if spread is not None:
            print(summary_line(m["uncertainty"]))
        if "ood" in m:  # the model ships its training latents: the latent distance per window
            warning = ood_warning(m["ood"], str(args.structure), m.get("uncertainty"))
        else:
            warning = flag_warning(m["uncertainty"], str(args.structure)) if spread is not None else None
        if warning:
            print(f"hydrolayer: warning: {warning}", file=sys.stderr)
        print("wrote " + "\n      ".join(str(w) for w in written))
