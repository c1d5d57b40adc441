"""Speed of prediction: one 10 x 10 x 20 Å window and a ~50 x 50 Å surface, after load.

    python benchmarks/bench_predict.py                      # default model or untrained (16,32,64,128)
    python benchmarks/bench_predict.py --channels 8,16,32,64 --repeats 5
    python benchmarks/bench_predict.py --model runs/l1/best.pt --json bench.json

Reports (min and median of ``--repeats`` runs, wall clock, on this machine's cores):
  * interpreter start + ``import hydrolayer.predict`` and ``import torch`` (fresh processes);
  * model load (``predict.load_predictor``);
  * one window: network only (descriptor window precomputed), and descriptor + network;
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
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return {"min_s": min(ts), "median_s": statistics.median(ts), "n": repeats}


def _fresh(code: str, repeats: int = 3) -> dict:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        ts.append(time.perf_counter() - t)
    return {"min_s": min(ts), "median_s": statistics.median(ts), "n": repeats}


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
    ap.add_argument("--model", default=None, help="checkpoint path or shipped name (default: shipped default, else untrained)")
    ap.add_argument("--channels", default="16,32,64,128", help="widths of the untrained stand-in network")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", default="10x6", help="calcite-104 repeats for the surface (10x6 = 49.9 x 48.6 Å)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from hydrolayer import predict
    from hydrolayer.descriptors import describe_window
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
        t = time.perf_counter()
        pred = predict.load_predictor(path)
        res["model_load_s"] = time.perf_counter() - t
        res["parameters"] = int(sum(p.numel() for p in pred.net.parameters()))

        slab = build_surface("calcite-104", size=tuple(int(v) for v in args.size.split("x")), layers=3)
        cell = slab.cell.lengths()
        res["surface"] = f"calcite-104 {args.size}: {cell[0]:.1f} x {cell[1]:.1f} Å, {len(slab)} atoms"

        win = describe_window(slab, 0.0, 0.0, sigma=pred.sigma)
        x = torch.from_numpy(np.ascontiguousarray(win.values[None], dtype=np.float32))

        def net_window():
            with torch.inference_mode():
                pred.net(x)

        def full_window():
            w = describe_window(slab, 0.0, 0.0, sigma=pred.sigma)
            with torch.inference_mode():
                pred.net(torch.from_numpy(np.ascontiguousarray(w.values[None], dtype=np.float32)))

        res["window_network"] = _timeit(net_window, args.repeats, warmup=2)
        res["window_descriptor_plus_network"] = _timeit(full_window, args.repeats)

        from hydrolayer import descriptors

        res["surface_descriptor"] = _timeit(lambda: descriptors.describe_cell(slab, sigma=pred.sigma), max(2, args.repeats // 2))
        for method in ("tiles", "cell"):
            grid = predict.predict_density(slab, model=pred, method=method)  # warm-up
            net_s = []

            def run():
                net_s.append(predict.predict_density(slab, model=pred, method=method).meta["predict_seconds"])

            res[f"surface_{method}_total"] = _timeit(run, max(2, args.repeats // 2), warmup=0)
            res[f"surface_{method}_network_and_blend"] = {"min_s": min(net_s), "median_s": statistics.median(net_s), "n": len(net_s)}
            res[f"surface_{method}_shape"] = list(grid.spec.shape)
    res["loadavg_after"] = os.getloadavg()

    print(json.dumps(res, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
