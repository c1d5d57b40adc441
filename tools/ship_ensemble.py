"""Ship a trained ensemble into the package, with a card written from measured numbers.

    python tools/ship_ensemble.py RUN --eval REPORT_DIR --db data/simulations.db --name unet-ens-c [--settings CONFIG]

RUN is the folder of ``hydrolayer train --ensemble N`` (``member-<k>/model.pt``,
``ensemble.json``, ``ensemble-plan.json``); REPORT_DIR the output of ``hydrolayer evaluate``
with RUN/ensemble.json among its runs. Copies the members to
``src/hydrolayer/pretrained/NAME-m<k>.pt``, writes ``NAME.ensemble.json`` (the manifest,
paths relative to it) and ``NAME.md``: every number read from the runs' ``summary.json``,
the plan and the evaluation's ``metrics.json`` (its command quoted), never typed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hydrolayer import store  # noqa: E402
from hydrolayer.registry import read_ensemble, write_ensemble  # noqa: E402
from hydrolayer.uncertainty import ood_auc  # noqa: E402
from hydrolayer.util import InputError, atomic_output  # noqa: E402


def _label(metrics: dict, manifest: Path) -> str:
    for label, path in metrics["checkpoints"].items():
        if Path(path).resolve() == manifest.resolve():
            return label
    raise InputError(f"{manifest}: not among the evaluated runs of metrics.json; run hydrolayer evaluate on it")


def card(run: Path, metrics: dict, db, name: str, settings: str | None) -> str:
    plan = json.loads((run / "ensemble-plan.json").read_text())
    label = _label(metrics, run / "ensemble.json")
    members = [json.loads((run / f"member-{k}" / "summary.json").read_text()) for k in range(plan["members"])]
    L = [
        f"# {name}: an ensemble of {plan['members']} U-Nets trained on calcite (10-14)",
        "",
        f"Members: seeds {plan['seeds']}"
        + (
            ", each trained on a bootstrap resample (by simulation) of the training simulations"
            if plan["bootstrap"]
            else ""
        )
        + "; the same validation and test simulations. Prediction: the "
        "members' mean; uncertainty: their standard deviation (`hydrolayer predict --model " + name + "`, "
        "`predict_density(..., uncertainty=True)`). Settings: " + f"`{settings or run / 'ensemble-plan.json'}`.",
        "",
        "| member | best validation MAE (rho/rho_bulk) | best epoch | epochs run | why stopped |",
        "|---|---|---|---|---|",
    ]
    for k, s in enumerate(members):
        loss = s["losses"][s["kept"]]
        L.append(
            f"| {k} | {loss['best_val_mae']:.4f} | {loss['best_epoch']} | {loss['epochs']} | {loss['why_stopped']} |"
        )
    L += [
        "",
        "## Evaluation",
        "",
        f"Command: `{metrics['command']}`",
        "",
        "MAE in rho/rho_bulk of the members' mean; MD noise floor 0.5 <|half1 - half2|>; calibration of the spread "
        "(rank correlations with the error, the reference's noise taken out; coverage of +-2 sigma; ROC AUC of the "
        "window spread for windows with MAE > 2x their noise floor; `hydrolayer.uncertainty`).",
        "",
        "| rows | windows | MD noise floor | ensemble MAE | per-window rank correlation | per-voxel rank correlation "
        "| coverage +-2 sigma | failing windows | ROC AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in metrics["groups"]:
        m = g.get("models", {}).get(label)
        if not g.get("windows") or not m or "calibration" not in m:
            continue
        cal, ood = m["calibration"], ood_auc(m["calibration"]["windows"])
        rows = ", ".join(str(i) for i in sorted(store.get_row(db, u).id for u in g["simulations"]))
        f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        L.append(
            f"| {g['title']}: rows {rows} | {g['windows']} | {g['noise_floor']['mae']:.4f} | {m['mae']:.4f} | "
            f"{f(cal['window_spearman'])} | {f(cal['voxel_spearman'])} | {cal['coverage_2sigma']:.2f} | "
            f"{ood['failing']} | {f(ood['auc'])} |"
        )
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--eval", type=Path, required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--settings", default=None)
    args = ap.parse_args(argv)
    metrics = json.loads((args.eval / "metrics.json").read_text())
    text = card(args.run, metrics, args.db, args.name, args.settings)
    dest = ROOT / "src" / "hydrolayer" / "pretrained"
    copies = []
    for k, member in enumerate(read_ensemble(args.run / "ensemble.json").members):
        copies.append(dest / f"{args.name}-m{k}.pt")
        shutil.copyfile(member, copies[-1])
    plan = json.loads((args.run / "ensemble-plan.json").read_text())
    write_ensemble(
        dest / f"{args.name}.ensemble.json",
        copies,
        name=args.name,
        seeds=plan["seeds"],
        bootstrap=plan["bootstrap"],
        note=f"{len(copies)} U-Nets, calcite (10-14); card: {args.name}.md",
    )
    with atomic_output(dest / f"{args.name}.md") as tmp:
        tmp.write_text(text)
    print(f"shipped {args.name}: {len(copies)} members, manifest and card in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
