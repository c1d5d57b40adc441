"""Validation scores of trained networks on one split's validation windows: the density's MAE
and the squared error of the frequency-shift-like pattern (``train.df_pattern``).

    python benchmarks/val_score.py --db data/simulations.db --split examples/split-v2-ca.json \
        --sigma-target 0.1 --models unet-v1ca-sharp,runs/unet-v2ca-sharp-wide/model.pt

The windows are those a training run with ``max_val_windows`` (``--max-windows``) validates
on (``WindowBank.grid_plan`` of the split's validation rows), against the mean of the MD
halves smoothed at ``--sigma-target``; ``train.validation_score`` scores them, so the numbers
are those a run logs. The last line is the MD's own floor for the df term: the df-pattern MSE
that the halves' noise alone leaves against their mean, (d1 - d2)² / 4 (a perfect model of
the mean MD density scores this, in expectation). One torch thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="data/simulations.db")
    p.add_argument("--split", required=True, help="a split.json (its 'val' rows)")
    p.add_argument("--sigma-target", type=float, default=0.4, help="target smoothing (Å) of the models' training")
    p.add_argument("--models", required=True, help="comma-separated model names or checkpoint files")
    p.add_argument("--max-windows", type=int, default=64)
    p.add_argument("--cache", default="runs/val-score-cache", help="window bank cache folder")
    p.add_argument("--surfaces", default="calcite-104,aragonite-010", help="train_surfaces of the runs")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from hydrolayer import data, train
    from hydrolayer.models import load_model
    from hydrolayer.registry import resolve_model

    split = json.loads(Path(args.split).read_text())
    bank = data.build_bank(
        args.db,
        split["val"],
        args.cache,
        sigma_target=args.sigma_target,
        train_surfaces=tuple(args.surfaces.split(",")),
    )
    plan = bank.grid_plan()[: args.max_windows]
    print(f"{len(plan)} validation windows of {len(split['val'])} rows, targets smoothed at {args.sigma_target} Å")
    print(f"{'model':48s} {'MAE (rho/rho_bulk)':>20s} {'df MSE':>8s}")
    for name in args.models.split(","):
        net = load_model(resolve_model(name))
        net = net[0] if isinstance(net, tuple) else net
        v = train.validation_score(net, bank, plan, 4)
        print(f"{name:48s} {v['mae']:20.4f} {v['df_mse']:8.3f}")
    sq, n = 0.0, 0
    for k in range(0, len(plan), 8):
        _, halves = bank.batch(plan[k : k + 8])
        d = [train.df_pattern(torch.from_numpy(np.ascontiguousarray(halves[:, h]))) for h in (0, 1)]
        e = (d[0] - d[1]) / 2
        sq, n = sq + float((e * e).sum()), n + e.numel()
    print(f"{'MD halves against their mean (noise floor)':48s} {'':>20s} {sq / n:8.3f}")


if __name__ == "__main__":
    main()
