"""``hydrolayer train``."""

from __future__ import annotations

from pathlib import Path


class CLICommand:
    """train a U-Net or attention U-Net on the simulation database (L1 and L2 compared, a checkpoint every epoch)"""

    name = "train"
    example = (
        "hydrolayer train --db data/simulations.db --model unet --out runs/unet --epochs 60\n"
        "hydrolayer train --db data/simulations.db --out runs/unet --resume          # after a kill: continues exactly\n"
        "hydrolayer train --db data/simulations.db --model attention-unet --out runs/att --config train.yaml\n"
        "hydrolayer train --db data/simulations.db --out runs/ens --ensemble 5 --bootstrap   # then --model runs/ens/ensemble.json\n"
        "torchrun --standalone --nproc_per_node 2 -m hydrolayer.cli train --db data/simulations.db --out runs/ddp"
    )

    @staticmethod
    def add_arguments(parser):
        add = parser.add_argument
        add("--db", required=True, help="the simulation database (SQLite file or postgresql:// URL)")
        add("--model", choices=["unet", "attention-unet"], default=None, help="network (default unet)")
        add("--out", required=True, type=Path, help="run directory (checkpoints, metrics.jsonl, split.json, model.pt)")
        add("--epochs", type=int, default=None, help="number of epochs (default 60; with --resume: extend the run)")
        add("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
        add(
            "--config",
            type=Path,
            default=None,
            help="YAML file of TrainConfig settings (see hydrolayer.train.TrainConfig)",
        )
        add(
            "--loss",
            choices=["l1", "l2", "l1+l2", "l1+l2-layer", "l2+log", "compare"],
            default=None,
            help="loss (default compare: train l1 and l2, keep the better; l1+l2: their sum, one network; "
            "l1+l2-layer: L1 with squared error in the first layer; l2+log: MSE plus the MSE of ln(rho + 0.1))",
        )
        add("--seed", type=int, default=None, help="random seed (default 0)")
        add("--no-progress", action="store_true", help="no progress bar (per-epoch lines only)")
        add(
            "--ensemble",
            type=int,
            default=None,
            metavar="N",
            help="train N members (seeds seed..seed+N-1) into --out/member-<k>/, then --out/ensemble.json; "
            "--resume continues a killed ensemble",
        )
        add(
            "--bootstrap",
            action="store_true",
            help="with --ensemble: each member trains on its own bootstrap resample of the training simulations "
            "(validation and test stay the same)",
        )

    @staticmethod
    def run(args):
        from ..train import fit, fit_ensemble, is_ensemble_run, load_config
        from ..util import InputError

        progress = not args.no_progress
        if args.bootstrap and not args.ensemble and not args.resume:
            raise InputError(f"{args.out}: --bootstrap needs --ensemble N")
        if args.resume:
            given = [
                n
                for n, v in (
                    ("--model", args.model),
                    ("--config", args.config),
                    ("--loss", args.loss),
                    ("--seed", args.seed),
                    ("--ensemble", args.ensemble),
                    ("--bootstrap", args.bootstrap or None),
                )
                if v is not None
            ]
            if given:
                raise InputError(
                    f"{args.out}: --resume continues with the run's own config.json; only --epochs may change "
                    f"(drop {', '.join(given)})"
                )
            if is_ensemble_run(args.out):
                return fit_ensemble(args.db, args.out, resume=True, epochs=args.epochs, progress=progress)
            return fit(args.db, args.out, resume=True, epochs=args.epochs, progress=progress)
        cfg = load_config(args.config, model=args.model, epochs=args.epochs, loss=args.loss, seed=args.seed)
        if args.ensemble is not None:
            return fit_ensemble(
                args.db, args.out, cfg, members=args.ensemble, bootstrap=args.bootstrap, progress=progress
            )
        return fit(args.db, args.out, cfg, progress=progress)
