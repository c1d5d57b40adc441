"""Ship a trained ensemble into the package, with a card written from measured numbers.

    python tools/ship_ensemble.py RUN --eval REPORT_DIR --db data/simulations.db --name unet-ens-c [--settings CONFIG] [--cache DIR]
    python tools/ship_ensemble.py latents MODEL --db data/simulations.db [--cache DIR] [--max-row N]

RUN is the folder of ``hydrolayer train --ensemble N`` (``member-<k>/model.pt``,
``ensemble.json``, ``ensemble-plan.json``); REPORT_DIR the output of ``hydrolayer evaluate``
with RUN/ensemble.json among its runs. Copies the members to
``src/hydrolayer/pretrained/NAME-m<k>.pt``, writes ``NAME.ensemble.json`` (the manifest,
paths relative to it), ``NAME.latents.npz`` (the training windows' latent vectors for the
out-of-domain score, named in the manifest; ``evaluate.write_training_latents``) and
``NAME.md``: every number read from the runs' ``summary.json``, the plan and the
evaluation's ``metrics.json`` (its command quoted), never typed.

``latents MODEL``: only (re)write the training latents of a checkpoint or manifest beside it.
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
from hydrolayer.evaluate import write_training_latents  # noqa: E402
from hydrolayer.registry import read_ensemble, write_ensemble  # noqa: E402
from hydrolayer.uncertainty import ood_scores  # noqa: E402
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
        "window spread, of the latent distance and of the two combined for windows with MAE > 2x their noise floor; "
        "`hydrolayer.uncertainty`).",
        "",
        "| rows | windows | MD noise floor | ensemble MAE | per-window rank correlation | per-voxel rank correlation "
        "| coverage +-2 sigma | failing windows | ROC AUC spread | latent distance | combined |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in metrics["groups"]:
        m = g.get("models", {}).get(label)
        if not g.get("windows") or not m or "calibration" not in m:
            continue
        cal = m["calibration"]
        ood = cal.get("ood") or ood_scores(cal["windows"])  # evaluate stores them; older reports did not
        rows = ", ".join(str(i) for i in sorted(store.get_row(db, u).id for u in g["simulations"]))
        f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        L.append(
            f"| {g['title']}: rows {rows} | {g['windows']} | {g['noise_floor']['mae']:.4f} | {m['mae']:.4f} | "
            f"{f(cal['window_spearman'])} | {f(cal['voxel_spearman'])} | {cal['coverage_2sigma']:.2f} | "
            f"{ood['spread']['failing']} | "
            + " | ".join(f((ood.get(k) or {}).get("auc")) for k in ("spread", "latent_distance", "combined"))
            + " |"
        )
    ood = (metrics.get("ood") or {}).get(label)
    if ood:
        L += ["", *_ood_lines(name, ood)]
    return "\n".join(L) + "\n"


def _ood_lines(name: str, ood: dict) -> list[str]:
    """The card's out-of-domain paragraph: pooled ROC AUCs and the Youden thresholds."""
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    auc = {k: (ood["named_pooled"].get(k) or {}).get("auc") for k in ("spread", "latent_distance", "combined")}
    out = [
        f"Out of domain: `{name}.latents.npz` holds the training windows' latent vectors; `hydrolayer predict` "
        "scores every 10 x 10 Å window's latent distance to them (`hydrolayer.uncertainty`). ROC AUC for the "
        f"windows failing (MAE > 2x noise floor) pooled over the {ood['named_windows']} named-surface windows: "
        f"spread {f(auc['spread'])}, latent distance {f(auc['latent_distance'])}, combined {f(auc['combined'])}."
    ]
    for key, t in ood["thresholds"].items():
        if t:
            out.append(
                f"Youden threshold of the {key.replace('_', ' ')} over all {ood['all_windows']} windows: "
                f"{t['threshold']:.3g} (TPR {t['tpr']:.2f}, FPR {t['fpr']:.2f})."
            )
    return [" ".join(out)]


def latents_main(argv) -> int:
    """``latents MODEL --db DB``: write MODEL's training latents beside it."""
    ap = argparse.ArgumentParser(description="write a model's training latents beside it (out-of-domain score)")
    ap.add_argument("model", type=Path)
    ap.add_argument("--db", required=True)
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "latents-cache", help="window cache folder")
    ap.add_argument("--max-row", type=int, default=None)
    args = ap.parse_args(argv)
    write_training_latents(args.model, args.db, args.cache, args.max_row)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["latents"]:
        try:
            return latents_main(argv[1:])
        except InputError as err:
            print(f"ship_ensemble: error: {err}", file=sys.stderr)
            return 2
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--eval", type=Path, required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--settings", default=None)
    ap.add_argument(
        "--cache", type=Path, default=None, help="window cache for the training latents (default RUN/cache)"
    )
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
    write_training_latents(dest / f"{args.name}.ensemble.json", args.db, args.cache or args.run / "cache")
    with atomic_output(dest / f"{args.name}.md") as tmp:
        tmp.write_text(text)
    print(f"shipped {args.name}: {len(copies)} members, manifest and card in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
