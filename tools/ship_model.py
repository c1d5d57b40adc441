"""Ship a trained network into the package, with a model card written from measured numbers.

    python tools/ship_model.py RUN --eval REPORT_DIR --db data/simulations.db --name unet-v0 [--default]

Copies the run's kept checkpoint (``RUN/model.pt``) to ``src/hydrolayer/pretrained/NAME.pt``
and writes ``NAME.md``. Every number in the card is read from somewhere, never typed: the
checkpoint (architecture, descriptor, target smoothing), the run's ``summary.json`` and
``split.json`` (losses compared, epochs, validation MAE, which simulations), the database
rows (what each simulation is and how long it ran) and the evaluation's ``metrics.json``
(written by ``hydrolayer evaluate``; its command is quoted in the card). The paper's Table 1
numbers are quoted beside ours for the same rows. Both files are written atomically.
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hydrolayer import store  # noqa: E402
from hydrolayer.evaluate import (  # noqa: E402
    PAPER_TABLE1,
    facet_title,
    is_named_group,
    paper_column,
    training_data,
    training_surfaces,
)
from hydrolayer.util import InputError, atomic_output  # noqa: E402

LABELS = {"unet": "U-Net", "attention-unet": "Attention U-Net"}
# the paper's Table 1 (Ranawat, Jaques & Foster 2021), Å^-3, and which of its columns a
# checkpoint is (network, (c) or (c+a)): one home each, in hydrolayer.evaluate
PAPER_ROWS = {"new simulations": "test set", "test set": "test set", "test set calcite-104": "test set"}


def _rows(db, uids):
    out = []
    for uid in uids:
        r = store.get_row(db, uid)
        out.append(f"| {r.id} | {r.get('surface')} | {r.get('defects')} | {r.get('production_ps'):g} | `{uid[:8]}` |")
    return out


def _split_origin(cfg: dict, split: dict) -> str:
    """Where the run's split came from: a split file named in its config ``cfg`` (with the
    note that file carries), else the seeded random split."""
    if cfg.get("split_file"):
        return f"from `{cfg['split_file']}`" + (f" ({split['note']})" if split.get("note") else "")
    return f"(seed {split['seed']}, fractions {split['fractions']})"


def card(run: Path, eval_dir: Path, db, name: str, settings: str | None = None) -> str:
    import torch

    ckpt = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    summary = json.loads((run / "summary.json").read_text())
    split = json.loads((run / "split.json").read_text())
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    model = ckpt["model"]
    kept = summary["kept"]
    label = [
        lab
        for lab, path in metrics["checkpoints"].items()
        if Path(path).exists() and filecmp.cmp(path, run / "model.pt", shallow=False)
    ]  # the kept network, wherever it was evaluated
    if not label:
        raise InputError(
            f"{eval_dir / 'metrics.json'}: does not evaluate {run}'s kept checkpoint ({kept}); run hydrolayer evaluate on {run}"
        )
    label = label[0]
    n_par = sum(
        v.numel()
        for k, v in ckpt["state_dict"].items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    kw = ckpt["kwargs"]
    cfg_path = run / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    train_ps = sum(float(store.get_row(db, uid).get("production_ps")) for uid in split["train"])
    surfaces, data = training_surfaces(ckpt), training_data(ckpt)
    paper = {row: cells[paper_column(ckpt)] for row, cells in PAPER_TABLE1.items()}

    L = [
        f"# {name}: {LABELS.get(model, model)}, widths {'-'.join(map(str, kw['channels']))}, "
        f"trained on {len(split['train'])} simulations of {' and '.join(facet_title(f) for f in surfaces)} ({data})",
        "",
        f"Shipped {datetime.date.today().isoformat()} with hydrolayer {ckpt.get('version')}. Input: C, O, Ca densities (Gaussian sigma "
        f"{ckpt['descriptor']['sigma']} Å, Å^-3) in a 10 x 10 x 20 Å window (32 x 32 x 64), from 5 Å below the surface Ca plane; "
        f"output: water-O density in rho/rho_bulk, trained against MD densities smoothed with sigma_target = {ckpt['sigma_target']} Å. "
        f"{n_par} parameters, kernel {kw['kernel_size']}, {kw['norm']} norm.",
        "",
        "## Training data",
        "",
        "From `data/simulations.db` (force-field lattice, 300 K, SPC/Fw water, both faces of every slab used; "
        f"see the README's data-set section). Split by simulation {_split_origin(cfg, split)}:",
        "",
        "| split | row | surface | defects | production (ps) | unique id |",
        "|---|---|---|---|---|---|",
    ]
    for part in ("train", "val", "test"):
        for line in _rows(db, split[part]):
            L.append(f"| {part} " + line)
    L += [
        "",
        f"Training simulations: {len(split['train'])} ({train_ps:g} ps of production in all, "
        f"{2 * len(split['train'])} interfaces); validation: {len(split['val'])}. Named test surfaces held out by rule: "
        + (", ".join(sorted(metrics_named(metrics, label))) or "none in the database yet")
        + ".",
        "",
        "## Training",
        "",
        f"Settings: `{settings or (run / 'config.json')}` "
        f"(epochs {cfg.get('epochs')}, batch {cfg.get('batch_size')}, Adam lr {cfg.get('lr')}, "
        f"{cfg.get('windows_per_interface')} random windows per interface per epoch with D4 lateral symmetry).",
        "",
        "| loss | best validation MAE (rho/rho_bulk) | best epoch | epochs run | why stopped |",
        "|---|---|---|---|---|",
    ]
    for loss, s in summary["losses"].items():
        L.append(
            f"| {loss.upper()}{' (kept)' if loss == kept else ''} | {s['best_val_mae']:.4f} | {s['best_epoch']} | "
            f"{s['epochs']} | {s['why_stopped']} |"
        )
    L += [
        "",
        f"Kept: {kept.upper()} ({summary['why']}).",
        "",
        "## Evaluation (Table 1 layout)",
        "",
        f"Command: `{metrics['command']}`",
        "",
        "MAE in rho/rho_bulk (Å^-3 in brackets). MD noise floor: 0.5 <|half1 - half2|> of the two half-runs, what the exact "
        "density would score against this reference. Height-only baseline: the mean training profile along z. "
        "Paper: Ranawat et al. 2021, Table 1, the same row for their network trained on the same facets "
        f"({data}; Å^-3; 'in training data' where they trained on it). A cell whose simulations this model was "
        "trained or selected on reads 'in training data', its number in brackets.",
        "",
        "| rows | windows | MD noise floor | height-only baseline | this model | beats baseline | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in metrics["groups"]:
        if not g.get("windows"):
            continue
        m = g["models"][label]
        ref = paper.get(PAPER_ROWS.get(g["name"], g["name"]), "")
        f = lambda d: f"{d['mae']:.4f} ({d['mae_A3']:.2e})"  # noqa: E731
        ours = f"in training data [{f(m)}]" if m.get("in_training") else f(m)
        rows = ", ".join(str(i) for i in sorted(store.get_row(db, u).id for u in g["simulations"]))
        L.append(
            f"| {g['title']}: row{'s' if len(g['simulations']) > 1 else ''} {rows} | {g['windows']} | "
            f"{f(g['noise_floor'])} | {f(g['baseline'])} | {ours} | "
            f"{'yes' if m.get('beats_baseline') else 'no'} | {'in training data' if ref is None else (f'{ref:.2e}' if ref else '')} |"
        )
    avg = [g for g in metrics["groups"] if g.get("unit_cell_averaging")]
    if avg:
        L += [
            "",
            "Pristine surfaces: each half-run density is averaged over the lateral unit cells of the simulated cell "
            "(exact, in Fourier space) before the comparison, which lowers the noise floor (before -> after averaging, "
            "same voxels), and this model's MAE against the unaveraged reference:",
            "",
        ]
        for g in avg:
            u = g["unit_cell_averaging"]
            cells = ", ".join(sorted({f"{a}x{b}" for a, b in u["unit_cells"].values()}))
            b, a = u["noise_floor_before"]["mae"], u["noise_floor_after"]["mae"]
            L.append(
                f"- {g['title']}: {cells} unit cells; noise floor {b:.4f} -> {a:.4f} ({b / a:.2f}x lower); "
                f"MAE against the unaveraged reference {u['models_before'][label]['mae']:.4f}"
            )
    missing = [n for n in paper if n not in {g["name"] for g in metrics["groups"]} and n != "test set"]
    if missing:
        L += ["", "Not evaluated yet (not in the database when this card was written): " + ", ".join(missing) + "."]
    L += [
        "",
        "Peaks of the window-mean profile (position above the surface Ca plane in Å and height in rho/rho_bulk; simulated / predicted):",
        "",
    ]
    for g in metrics["groups"]:
        if g.get("windows"):
            pk = g["models"][label].get("peaks") or []
            txt = "; ".join(
                f"{p['z_sim']:.2f} / {p['z_pred']:.2f} Å (height {p['height_sim']:.2f} / {p['height_pred']:.2f})"
                if p.get("z_pred") is not None
                else f"{p['z_sim']:.2f} / none"
                for p in pk
            )
            L.append(f"- {g['title']}: {txt or 'no peaks found'}")
    if metrics.get("max_row") is not None:
        repro = (
            f"The command above reproduces these numbers from the shipped data: `--max-row {metrics['max_row']}` "
            "evaluates the database as it was when these rows were all it held, so rows added later do not change them; "
        )
    else:
        repro = (
            "The command above reproduces these numbers from the shipped data while the database holds the same rows; "
        )
    L += [
        "",
        f"Report and figures: `{eval_dir}/report.md`. " + repro + '"new simulations" are the training-pool rows '
        "that are in none of this model's train/validation/test lists (the rows are listed in the table).",
    ]
    return "\n".join(L) + "\n"


def metrics_named(metrics, label: str | None = None) -> list[str]:
    """The named test surfaces of the report; with ``label``, only those that model was not
    trained or selected on (a (c+a) model trains on aragonite (010))."""
    return [
        g["name"]
        for g in metrics["groups"]
        if is_named_group(g["name"])
        and "near defects" not in g["name"]
        and not (label and g["models"].get(label, {}).get("in_training"))
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--eval", type=Path, required=True, help="hydrolayer evaluate output folder (metrics.json)")
    ap.add_argument("--db", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--settings", default=None, help="the --config file the run was trained with, named in the card")
    ap.add_argument("--notes", type=Path, default=None, help="a Markdown file appended to the card (limits, caveats)")
    ap.add_argument("--default", action="store_true", help="make it the default model (pretrained/DEFAULT)")
    ap.add_argument(
        "--dest",
        type=Path,
        default=ROOT / "src" / "hydrolayer" / "pretrained",
        help="registry folder (default: the package's)",
    )
    a = ap.parse_args(argv)
    dest = a.dest
    dest.mkdir(exist_ok=True)
    text = card(a.run, a.eval, a.db, a.name, a.settings)
    if a.notes:
        text += "\n" + a.notes.read_text()
    with atomic_output(dest / f"{a.name}.pt") as tmp:
        shutil.copyfile(a.run / "model.pt", tmp)
    with atomic_output(dest / f"{a.name}.md") as tmp:
        tmp.write_text(text)
    if a.default:
        with atomic_output(dest / "DEFAULT") as tmp:
            tmp.write_text(a.name + "\n")
    print(f"shipped {dest / (a.name + '.pt')} with {dest / (a.name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
