"""Speed of ensemble prediction: a 5-member ensemble against the single model, same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_ensemble.py                 # unet-v1 x 5, float32 and auto
    python benchmarks/bench_ensemble.py --members 5 --repeats 3 --json bench-ensemble.json
    python benchmarks/bench_ensemble.py --ensemble runs/ens-c-small/ensemble.json --threads 2 --precision auto

The surface is calcite (10-14) 10 x 6 cells (49.9 x 48.6 Å), as in bench_predict.py. The
ensemble is the shipped default checkpoint (unet-v1) listed ``--members`` times in a
temporary manifest: the timing does not depend on the weights (same architecture, same
arithmetic), so this measures what a trained 5-member ensemble of unet-v1 costs; or, with
``--ensemble MANIFEST``, a trained ensemble as it is (its own members and architectures). Timed
after loading, interleaved (single, ensemble, single, ...) so that a change in the machine's
load hits both: ``predict_density(slab, model=single)`` against
``predict_density(slab, model=ensemble, uncertainty=True)`` end to end (descriptor, every
member on the windows, blending, mean, spread and window summary), and the network part
alone (``meta["predict_seconds"]``). For each precision in ``--precision`` (default
float32 and auto; auto is skipped when it resolves to float32). The load average is
printed before and after: the MD campaign shares the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _stats(ts: list[float]) -> dict:
    return {"min_s": min(ts), "median_s": statistics.median(ts), "n": len(ts)}


def _time_pair(slab, single, ensemble, repeats: int) -> dict:
    """Interleaved timings (s) of the single model and the ensemble (with uncertainty)."""
    from hydrolayer.predict import predict_density

    predict_density(slab, model=single)  # warm-up
    predict_density(slab, model=ensemble, uncertainty=True)
    t = {"single": [], "ensemble": [], "single_net": [], "ensemble_net": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        g = predict_density(slab, model=single)
        t["single"].append(time.perf_counter() - t0)
        t["single_net"].append(g.meta["predict_seconds"])
        t0 = time.perf_counter()
        mean, _spread = predict_density(slab, model=ensemble, uncertainty=True)
        t["ensemble"].append(time.perf_counter() - t0)
        t["ensemble_net"].append(mean.meta["predict_seconds"])
    out = {k: _stats(v) for k, v in t.items()}
    out["ratio_median"] = out["ensemble"]["median_s"] / out["single"]["median_s"]
    out["ratio_min"] = out["ensemble"]["min_s"] / out["single"]["min_s"]
    out["first_layer_mean_spread"] = mean.meta["uncertainty"]["first_layer_mean_spread"]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="member checkpoint (default: the shipped default, unet-v1)")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument(
        "--ensemble", type=Path, default=None, help="time this ensemble manifest instead of --model x --members"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", default="10x6", help="calcite-104 repeats (10x6 = 49.9 x 48.6 Å)")
    ap.add_argument("--precision", default="float32,auto", help="comma-separated precisions")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from hydrolayer.inference import load_predictor, resolve_precision
    from hydrolayer.registry import read_ensemble, resolve_model, write_ensemble
    from hydrolayer.structures import build_surface

    member = resolve_model(args.model)
    slab = build_surface("calcite-104", size=tuple(int(v) for v in args.size.split("x")), layers=3)
    cell = slab.cell.lengths()
    res: dict = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{_cpu()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}",
        "command": "python benchmarks/bench_ensemble.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "members": f"{args.ensemble}: {len(read_ensemble(args.ensemble).members)} members"
        if args.ensemble
        else f"{member.name} repeated {args.members} times (the timing does not depend on the weights)",
        "surface": f"calcite-104 {args.size}: {cell[0]:.1f} x {cell[1]:.1f} Å, {len(slab)} atoms",
        "loadavg_before": os.getloadavg(),
        "by_precision": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        manifest = args.ensemble or write_ensemble(
            Path(tmp) / "bench.ensemble.json", [member] * args.members, note="benchmark"
        )
        done = set()
        for prec in (p.strip() for p in args.precision.split(",")):
            actual = resolve_precision(prec)
            if actual in done:
                continue
            done.add(actual)
            single = load_predictor(member, precision=actual)
            ensemble = load_predictor(manifest, precision=actual)
            label = prec if prec == actual else f"{prec} ({actual})"
            res["by_precision"][label] = _time_pair(slab, single, ensemble, args.repeats)
    res["loadavg_after"] = os.getloadavg()
    print(json.dumps(res, indent=1, default=str))
    print()
    print(summary(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return res


def summary(res: dict) -> str:
    """The plain-text block for RESULTS.md."""
    la = lambda v: " ".join(f"{x:.1f}" for x in v)  # noqa: E731
    lines = [
        f"machine: {res['machine']}; load average {la(res['loadavg_before'])} before, {la(res['loadavg_after'])} after",
        f"members: {res['members']}; surface: {res['surface']}",
    ]
    for prec, r in res["by_precision"].items():
        lines.append(
            f"{prec}: single {r['single']['min_s']:.2f} / {r['single']['median_s']:.2f} s, "
            f"ensemble with uncertainty {r['ensemble']['min_s']:.2f} / {r['ensemble']['median_s']:.2f} s (min / median), "
            f"ratio {r['ratio_median']:.2f} (medians), {r['ratio_min']:.2f} (minima); network part "
            f"{r['single_net']['median_s']:.2f} vs {r['ensemble_net']['median_s']:.2f} s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
