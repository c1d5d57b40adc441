"""Speed of prediction: one 10 x 10 x 20 Å window and a ~50 x 50 Å surface, after load.

    python benchmarks/bench_predict.py                      # default model or untrained (16,32,64,128)
    python benchmarks/bench_predict.py --channels 8,16,32,64 --repeats 5
    python benchmarks/bench_predict.py --model runs/l1/best.pt --json bench.json

Reports (min and median of ``--repeats`` runs, wall clock, on this machine's cores):
  * interpreter start + ``import hydrolayer.predict`` and ``import torch`` (fresh processes);
  * model load (``predict.load_predictor``);
  * one window: network only (descriptor window precomputed), and descriptor + network;
  * all of it for each ``--precision`` (default float32 and bfloat16, one after the other);
  * the surface (calcite (10-14) 10 x 6 = 49.9 x 48.6 Å): ``predict_density`` end to end,
    split into descriptor and network+blend, for ``method="tiles"`` and ``method="cell"``.

Speed does not depend on the weights, so without a shipped model an *untrained* seeded
network of the training default width is timed (said in the output). The load average is
printed before and after: other jobs on the machine slow every number down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _timeit(f, repeats: int, warmup: int = 1):
    for _ in range(warmup):
        f()
    ts, cs = [], []
    for _ in range(repeats):
        c = time.process_time()
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    # cpu_s: CPU seconds of this process (all threads); less sensitive to other jobs than wall
    return {"min_s": min(ts), "median_s": statistics.median(ts), "cpu_min_s": min(cs), "n": repeats}


def _fresh(code: str, repeats: int = 3) -> dict:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        ts.append(time.perf_counter() - t)
    return {"min_s": min(ts), "median_s": statistics.median(ts), "n": repeats}


def _fresh_cmd(cmd: list, repeats: int = 1) -> dict:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        ts.append(time.perf_counter() - t)
    return {"min_s": min(ts), "median_s": statistics.median(ts), "n": repeats}


def _versus_md(db, row_id, pred) -> dict:
    """A database row's own slab: prediction time vs the row's MD production time
    (production_ps / ns_per_day; equilibration not counted, so the ratio is a lower bound),
    and the whole-surface MAE (rho/rho_bulk) of tiles at stride 16 and 24 and ``cell`` against the row's MD
    density (mean of the two halves, smoothed with the model's sigma_target, sampled at the
    prediction's points), over the whole grid and 0-10 Å above the surface plane."""
    import numpy as np

    from hydrolayer import data, predict, store

    row = store.get_row(db, row_id) if row_id else next(store.iter_rows(db), None)
    if row is None:
        return {"versus_md": f"{db}: no finished rows"}
    atoms = row.toatoms()
    kv = row.key_value_pairs
    md = store.load_density(db, row)
    ref = data.smooth_periodic(
        0.5 * (md["half1"] + md["half2"]), md["cell"], float(pred.meta.get("sigma_target") or 0.0)
    )
    out = {
        "row": row.id,
        "surface": kv.get("surface"),
        "defects": kv.get("defects"),
        "md_production_s": float(kv["production_ps"]) * 1e-3 / float(kv["ns_per_day"]) * 86400.0,
    }
    for key, method, stride in (("tiles16", "tiles", 16), ("tiles24", "tiles", 24), ("cell", "cell", None)):
        predict.predict_density(atoms, model=pred, method=method, stride=stride)  # warm-up
        t = time.perf_counter()
        grid = predict.predict_density(atoms, model=pred, method=method, stride=stride)
        out[f"predict_{key}_s"] = time.perf_counter() - t
        out[f"faster_than_md_{key}"] = out["md_production_s"] / out[f"predict_{key}_s"]
        target = data.sample_periodic(ref, md["cell"], grid.spec.points())
        err = np.abs(grid.values[0] - target)
        h = grid.spec.z_values() - grid.meta["surface_z"]
        out[f"mae_{key}"] = float(err.mean())
        out[f"mae_{key}_0_10A"] = float(err[..., (h >= 0) & (h <= 10)].mean())
    return {"versus_md": out}


def _macs(net, shape) -> float:
    """Multiply-accumulates of one window through the (3D) convolutions, from layer shapes."""
    import torch

    total = 0

    def hook(mod, inp, out):
        nonlocal total
        k = mod.weight[0, 0].numel()
        if isinstance(mod, torch.nn.ConvTranspose3d):
            total += inp[0].numel() * mod.out_channels * k // mod.groups
        else:
            total += out.numel() * (mod.in_channels // mod.groups) * k

    hooks = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))
    ]
    try:
        with torch.inference_mode():
            net(torch.zeros(2, 3, *shape).contiguous(memory_format=torch.channels_last_3d))
    finally:
        for h in hooks:
            h.remove()
    return total / 2


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default=None, help="checkpoint path or shipped name (default: shipped default, else untrained)"
    )
    ap.add_argument("--channels", default="16,32,64,128", help="widths of the untrained stand-in network")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", default="10x6", help="calcite-104 repeats for the surface (10x6 = 49.9 x 48.6 Å)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--db", default=None, help="simulation database: compare with the MD time of --row")
    ap.add_argument("--row", default=None, help="row id or unique_id in --db (default: the first done row)")
    ap.add_argument(
        "--precision",
        default="float32,bfloat16",
        help="comma-separated precisions to time in this run (default float32,bfloat16: the ratio)",
    )
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from hydrolayer import predict
    from hydrolayer.descriptors import describe_window
    from hydrolayer.inference import run_batches
    from hydrolayer.structures import build_surface

    res: dict = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{_cpu()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}",
        "command": "python benchmarks/bench_predict.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "loadavg_before": os.getloadavg(),
    }
    res["start_import_hydrolayer_predict"] = _fresh("import hydrolayer.predict")
    res["start_import_torch"] = _fresh("import torch")

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None and predict.default_model_name() is None:
            from hydrolayer.models import UNet3D, save_checkpoint

            torch.manual_seed(0)
            ch = tuple(int(c) for c in args.channels.split(","))
            path = save_checkpoint(Path(tmp) / "untrained.pt", UNet3D(channels=ch), {"descriptor": {"sigma": None}})
            res["model"] = f"untrained UNet3D channels={ch} (no shipped model; speed does not depend on weights)"
        else:
            path = args.model
            res["model"] = str(args.model or predict.default_model_name())
        slab = build_surface("calcite-104", size=tuple(int(v) for v in args.size.split("x")), layers=3)
        cell = slab.cell.lengths()
        res["surface"] = f"calcite-104 {args.size}: {cell[0]:.1f} x {cell[1]:.1f} Å, {len(slab)} atoms"
        res["auto_precision"] = predict.resolve_precision("auto")
        res["by_precision"] = {}
        precisions = [p.strip() for p in args.precision.split(",")]
        for prec in precisions:  # the same measurements for each precision, one after the other
            r: dict = {}
            t = time.perf_counter()
            pred = predict.load_predictor(path, precision=prec)
            r["model_load_s"] = time.perf_counter() - t
            if "parameters" not in res:
                res["parameters"] = int(sum(p.numel() for p in pred.net.parameters()))
                res["gmac_per_window"] = _macs(pred.net, pred.window_shape) / 1e9
            win = describe_window(slab, 0.0, 0.0, sigma=pred.sigma)

            def net_window():
                run_batches(pred.net, win.values[None], 8)

            def full_window():
                w = describe_window(slab, 0.0, 0.0, sigma=pred.sigma)
                run_batches(pred.net, w.values[None], 8)

            def batch_of_8():
                run_batches(pred.net, np.repeat(win.values[None], 8, axis=0), 8)

            r["window_network"] = _timeit(net_window, args.repeats, warmup=2)
            r["window_descriptor_plus_network"] = _timeit(full_window, args.repeats)
            r["eight_windows_one_batch"] = _timeit(batch_of_8, max(2, args.repeats // 2))

            from hydrolayer import descriptors

            r["surface_descriptor"] = _timeit(
                lambda: descriptors.describe_cell(slab, sigma=pred.sigma), max(2, args.repeats // 2)
            )
            for method, stride in (("cell", None), ("tiles", 24), ("tiles", 16)):
                key = method if stride is None else f"{method}_stride{stride}"
                grid = predict.predict_density(slab, model=pred, method=method, stride=stride)  # warm-up
                net_s = []

                def run():
                    g = predict.predict_density(slab, model=pred, method=method, stride=stride)
                    net_s.append(g.meta["predict_seconds"])

                r[f"surface_{key}_total"] = _timeit(run, max(2, args.repeats // 2), warmup=0)
                r[f"surface_{key}_network_and_blend"] = {
                    "min_s": min(net_s),
                    "median_s": statistics.median(net_s),
                    "n": len(net_s),
                }
            res["surface_grid_shape"] = list(grid.spec.shape)
            if args.db:
                r.update(_versus_md(args.db, args.row, pred))

            # end to end from a shell: interpreter start, imports, model load, read, predict, write
            from hydrolayer.structures import write_structure

            sfile = write_structure(slab, Path(tmp) / "surface.extxyz")
            cmd = [
                sys.executable,
                "-m",
                "hydrolayer.cli",
                "predict",
                str(sfile),
                "--model",
                str(pred.source),
                "--precision",
                prec,
                "--out",
                str(Path(tmp) / "cli"),
            ]
            r["cli_predict_end_to_end"] = _fresh_cmd(cmd, 1)
            res["by_precision"][prec] = r
    res["loadavg_after"] = os.getloadavg()

    print(json.dumps(res, indent=1, default=str))
    print()
    print(summary(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return res


def summary(res: dict) -> str:
    """The plain-text block that goes into RESULTS.md: one column per precision."""
    la = lambda v: " ".join(f"{x:.1f}" for x in v)  # noqa: E731
    precs = list(res["by_precision"])
    lines = [
        f"machine: {res['machine']}; load average {la(res['loadavg_before'])} before, {la(res['loadavg_after'])} after",
        f"model: {res['model']}, {res['parameters']} parameters, {res['gmac_per_window']:.2f} GMAC per window; "
        f"surface: {res['surface']}, grid {res['surface_grid_shape']}",
        f"interpreter + import hydrolayer.predict: {res['start_import_hydrolayer_predict']['min_s']:.2f} s; "
        f"interpreter + import torch: {res['start_import_torch']['min_s']:.2f} s; "
        + "; ".join(f"model load ({p}): {res['by_precision'][p]['model_load_s']:.3f} s" for p in precs),
        f"precision 'auto' on this machine: {res['auto_precision']}",
        "wall clock, min / median (s)".ljust(40) + "".join(f"{p:>22}" for p in precs),
    ]
    for key, label in (
        ("window_network", "one window, network"),
        ("window_descriptor_plus_network", "one window, descriptor + network"),
        ("eight_windows_one_batch", "8 windows in one batch"),
        ("surface_descriptor", "surface: descriptor (describe_cell)"),
        ("surface_cell_total", "surface: predict, method=cell"),
        ("surface_tiles_stride24_total", "surface: predict, tiles stride 24"),
        ("surface_tiles_stride16_total", "surface: predict, tiles stride 16"),
        ("cli_predict_end_to_end", "CLI predict (tiles), end to end"),
    ):
        cells = []
        for p in precs:
            v = res["by_precision"][p].get(key)
            cells.append(f"{v['min_s']:.3f} / {v['median_s']:.3f}" if v else "-")
        lines.append(f"{label:<40}" + "".join(f"{c:>22}" for c in cells))
    for p in precs:
        m = res["by_precision"][p].get("versus_md")
        if isinstance(m, dict):
            lines.append(
                f"[{p}] versus MD (row {m['row']}, {m['surface']}, {m['defects']}): MD production {m['md_production_s']:.0f} s; "
                + ", ".join(
                    f"{k} {m[f'predict_{k}_s']:.2f} s ({m[f'faster_than_md_{k}']:.0f}x faster)"
                    for k in ("tiles16", "tiles24", "cell")
                )
            )
            lines.append(
                f"[{p}] MAE vs MD (rho/rho_bulk): "
                + ", ".join(
                    f"{k} {m[f'mae_{k}']:.4f} (0-10 Å: {m[f'mae_{k}_0_10A']:.4f})"
                    for k in ("tiles16", "tiles24", "cell")
                )
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
