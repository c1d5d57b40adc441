"""What more data buys: the U-Net's test error against the number of training simulations.

    python benchmarks/learning_curve.py --db data/simulations.db --config examples/train-v1.yaml \
        --sizes 3,6,12,all --out runs/learning-curve [--max-row N] [--figure docs/images/learning-curve.png]

One fixed split (``--split FILE``, else ``data.make_split`` of the rows 1..``--max-row`` with
the config's seed and fractions): the same validation and test simulations for every point,
and nested training sets (the first N of the training simulations in a seeded random
order, so each set holds the smaller ones). For each N a run is trained in ``OUT/n<N>/``
(resumable: run the command again after a kill) with the config (``--epochs`` overrides),
then scored on the test split, as ``hydrolayer evaluate`` scores it:

* the test MAE (rho/rho_bulk) and the MD noise floor over the same voxels, and their ratio;
* the first layer's water: the mean density 1-3 Å above the surface plane
  (``conventions.FIRST_LAYER``), model over MD, minus 1.

Prints a table, writes ``OUT/learning-curve.json`` and, with ``--figure``, a PNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np


def nested_splits(split: dict, sizes: list[int | None], seed: int) -> dict[int, dict]:
    """Per training-set size, the split with the first N training simulations of a seeded
    order (None: all of them); validation, test and named groups unchanged."""
    order = [split["train"][i] for i in np.random.default_rng(seed).permutation(len(split["train"]))]
    out = {}
    for n in sizes:
        n = len(order) if n is None else min(n, len(order))
        out[n] = dict(split, train=sorted(order[:n]))
    return out


def first_layer_error(db, run: Path, test: list[str]) -> dict:
    """Mean density 1-3 Å above the plane over the test windows: MD, model, model/MD - 1."""
    from hydrolayer.conventions import first_layer_planes
    from hydrolayer.evaluate import md_and_prediction
    from hydrolayer.inference import load_predictor

    pred = load_predictor(run / "model.pt", precision="float32")
    halves, model = md_and_prediction(db, test, pred, run / "cache")
    md = 0.5 * (halves[:, 0] + halves[:, 1])
    band = first_layer_planes()
    m, p = float(md[..., band].mean()), float(model[..., band].mean())
    return {"md": m, "model": p, "ratio_minus_1": p / m - 1}


def point(db, out: Path, cfg, split: dict, n: int, max_row, epochs) -> dict:
    """Train (or resume) the run of size ``n`` and score it on the test split."""
    from hydrolayer import train
    from hydrolayer.data import save_split
    from hydrolayer.evaluate import evaluate

    run = out / f"n{n}"
    split_file = out / f"split-n{n}.json"
    if not split_file.exists():
        out.mkdir(parents=True, exist_ok=True)
        save_split(split, split_file)
    if not (run / "model.pt").exists():  # a finished run is kept; an interrupted one resumes
        resume = (run / "config.json").exists()
        train.fit(db, run, dataclasses.replace(cfg, split_file=str(split_file)), resume=resume, epochs=epochs)
    rep = evaluate([run], db, run / "eval", figures=False, max_row=max_row, log=lambda m: None)
    test = next(g for g in rep["groups"] if g["name"] == "test set")
    (label,) = rep["models"]
    mae, floor = test["models"][label]["mae"], test["noise_floor"]["mae"]
    return {
        "n_train": n,
        "mae": mae,
        "noise_floor": floor,
        "mae_over_floor": mae / floor,
        "first_layer": first_layer_error(db, run, split["test"]),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--config", required=True, type=Path, help="training YAML (e.g. examples/train-v1.yaml)")
    ap.add_argument("--sizes", default="3,6,12,all", help="training-set sizes, comma-separated ('all': every one)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--split", type=Path, default=None, help="a split.json to use (default: data.make_split)")
    ap.add_argument(
        "--max-row", type=int, default=None, help="rows 1..N only (the database as it was then; with --split too)"
    )
    ap.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    ap.add_argument("--order-seed", type=int, default=0, help="seed of the order the training sets are taken in")
    ap.add_argument("--figure", type=Path, default=None)
    args = ap.parse_args(argv)
    from hydrolayer import data, store, train

    cfg = train.load_config(args.config)
    if args.split:
        split = data.load_split(args.split)
        if args.max_row is not None:  # the split as the database was then: later rows' simulations dropped
            ids = {r.unique_id: r.id for r in store.iter_rows(args.db)}
            split = {
                k: [u for u in v if ids[u] <= args.max_row] if k in ("train", "val", "test") else v
                for k, v in split.items()
            }
    else:
        rows = [r for r in store.iter_rows(args.db) if args.max_row is None or r.id <= args.max_row]
        split = data.make_split(
            rows, seed=cfg.split_seed or cfg.seed, fractions=cfg.split_fractions, train_surfaces=cfg.train_surfaces
        )
    if not split["test"]:
        raise SystemExit(f"{args.db}: the split has no test simulations")
    sizes = [None if s.strip() == "all" else int(s) for s in args.sizes.split(",")]
    points = [
        point(args.db, args.out, cfg, sp, n, args.max_row, args.epochs)
        for n, sp in nested_splits(split, sizes, args.order_seed).items()
    ]
    res = {"config": str(args.config), "test": split["test"], "points": points}
    print("n_train  test MAE  noise floor  MAE/floor  first layer (model/MD - 1)")
    for p in points:
        print(
            f"{p['n_train']:7d}  {p['mae']:8.4f}  {p['noise_floor']:11.4f}  {p['mae_over_floor']:9.2f}  "
            f"{p['first_layer']['ratio_minus_1']:+.3f}"
        )
    (args.out / "learning-curve.json").write_text(json.dumps(res, indent=1))
    if args.figure:
        figure(points, args.figure)
    return res


def figure(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [p["n_train"] for p in points]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    a.plot(n, [p["mae_over_floor"] for p in points], "o-")
    a.axhline(1.0, color="grey", lw=0.8)
    a.set(xlabel="training simulations", ylabel="test MAE / MD noise floor")
    b.plot(n, [100 * p["first_layer"]["ratio_minus_1"] for p in points], "o-")
    b.axhline(0.0, color="grey", lw=0.8)
    b.set(xlabel="training simulations", ylabel="first-layer water, model vs MD (%)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
