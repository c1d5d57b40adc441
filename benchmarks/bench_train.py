"""Training speed: windows/s and whether loading starves the network.

    python benchmarks/bench_train.py                          # synthetic calcite rows, default widths
    python benchmarks/bench_train.py --db data/simulations.db # real rows
    python benchmarks/bench_train.py --channels 8,16,32,64 --batch 4 --steps 12 --threads 2
    python benchmarks/bench_train.py --rows 6 --learn 20 --channels 8,16,32,64 --threads 1 --out /tmp/learn

Measures, on this machine's cores:
  * the window bank: time to precompute (descriptor + smoothed target halves) per slab face;
  * training steps (Adam, L1) of the network with real loading (``WindowBank.batch`` of
    random lattice offsets from the memory-mapped cache + tensor conversion) and with the
    same batches pre-loaded as tensors, interleaved step by step so that the machine's
    other load hits both alike; the ratio of the medians is the starvation test (<= 1.2);
  * the same pre-loaded steps with the forward pass in bfloat16 (``precision: bfloat16``),
    and in float32 with the default contiguous layout instead of the channels-last one that
    ``train.fit`` uses, interleaved too: the speed-ups;
  * validation/inference windows/s (no gradient);
  * with ``--learn EPOCHS``: a full ``train.fit`` (L1 and L2) on the rows and ``evaluate``
    on the held-out test split: the fit loop's own loading/step times, and whether the
    network beats the height-only baseline (a pipeline check on the synthetic density).

Without ``--db`` the rows are synthetic: real calcite (10-14) slabs (5 x 3 cells, 4 layers,
0-2 pair vacancies, from ``structures.build_surface``) with a layered analytic water
density. Speed does not depend on the values, only on the sizes, which match the planned
data set (about 25 x 24 Å lateral cells, 0.25 Å MD grid). The load average is printed:
other jobs on the machine (MD runs, tests) slow every number down.
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

import numpy as np


def synthetic_db(folder: Path, n: int = 3) -> Path:
    """``n`` calcite (10-14) slab rows (0-2 pair vacancies per face, seeded) with an analytic
    water density that depends on the atoms: zero in the slab, a peak 2.1 Å out from every
    outermost Ca of either face (so vacancies move the peaks), a uniform layer 3.4 Å out,
    bulk 1 beyond; independent noise in the two halves. Not MD: for speed and for a
    pipeline check (can the network learn where the peaks sit?)."""
    from hydrolayer import store
    from hydrolayer.data import smooth_periodic
    from hydrolayer.structures import build_surface, surface_planes

    db = folder / "bench.db"
    rng = np.random.default_rng(0)
    for k in range(n):
        atoms = build_surface(
            "calcite-104", size=(5, 3), layers=4, pair_vacancies=k % 3, both_faces=True, seed=k, vacuum=25.0
        )
        top, bottom = surface_planes(atoms)
        cell = np.asarray(atoms.cell)
        shape = tuple(int(round(L / 0.25)) for L in np.linalg.norm(cell, axis=1))
        lz = cell[2, 2]
        z = (np.arange(shape[2]) / shape[2]) * lz
        mid, half = 0.5 * (top + bottom), 0.5 * (top - bottom)
        d = np.abs((z - mid + lz / 2) % lz - lz / 2) - half  # distance out of the nearer face (< 0 inside)
        env = 1 / (1 + np.exp(-(d - 1.5) / 0.15))
        prof = 1 + 0.8 * np.exp(-((d - 3.4) ** 2) / (2 * 0.3**2))
        # delta peaks 2.1 Å out from each outermost Ca, Gaussian-smoothed periodically
        peaks = np.zeros(shape, np.float32)
        sym = np.array(atoms.get_chemical_symbols())
        for p in atoms.positions[sym == "Ca"]:
            for plane, sign in ((top, 1), (bottom, -1)):
                if abs(p[2] - plane) < 1.0:
                    f = (p + (0, 0, sign * 2.1)) @ np.linalg.inv(cell)
                    idx = tuple(int(round(v)) % n_ for v, n_ in zip(f * shape, shape))
                    peaks[idx] += 1.0
        vox = abs(np.linalg.det(cell)) / np.prod(shape)
        peaks = smooth_periodic(peaks, cell, 0.35) / vox * 2.5 * (2 * np.pi * 0.35**2) ** 1.5  # peak height 2.5
        rho = (env[None, None, :] * (prof[None, None, :] + peaks)).astype(np.float32)
        h1 = np.clip(rho + 0.5 * rng.standard_normal(shape, dtype=np.float32) * (rho > 0.05), 0, None)
        h2 = np.clip(rho + 0.5 * rng.standard_normal(shape, dtype=np.float32) * (rho > 0.05), 0, None)
        kvp = dict(
            surface="calcite-104",
            rho_bulk=0.0334,
            z_top=top,
            z_bottom=bottom,
            net_charge=0,
            production_ps=0.0,
            seed=k,
            defects=f"{k % 3} pair vacancies per face (synthetic density)",
        )
        store.write_simulation(db, atoms, h1, h2, cell, kvp, {})
    return db


def learn(db: Path, out: Path, channels, epochs: int, batch: int, threads, loss: str = "compare") -> dict:
    """Train (L1 and L2) on the rows of ``db`` and evaluate: does the network beat the
    height-only baseline on the held-out test simulations?"""
    from hydrolayer.evaluate import evaluate
    from hydrolayer.train import TrainConfig, fit

    cfg = TrainConfig(
        channels=channels,
        epochs=epochs,
        batch_size=batch,
        windows_per_interface=4,
        patience=epochs,
        threads=threads,
        seed=0,
        loss=loss,
    )
    t = time.perf_counter()
    summary = fit(db, out / "run", cfg, progress=False)
    t_fit = time.perf_counter() - t
    res = evaluate([out / "run"], db, out / "report", figures=True, log=lambda m: None)
    g = res["groups"][0]
    recs = [json.loads(x) for x in (out / "run" / summary["kept"] / "metrics.jsonl").read_text().splitlines()]
    return {
        "fit_s": round(t_fit, 1),
        "epochs": epochs,
        "kept": summary["kept"],
        "val_mae": {k: round(v["best_val_mae"], 4) for k, v in summary["losses"].items()},
        "test_windows": g["windows"],
        "test_noise_floor": round(g["noise_floor"]["mae"], 4),
        "test_baseline": round(g["baseline"]["mae"], 4),
        "test_models": {k: round(v["mae"], 4) for k, v in g["models"].items()},
        "fit_loop_load_s_over_step_s": round(sum(r["load_s"] for r in recs) / sum(r["step_s"] for r in recs), 4),
        "fit_loop_windows_per_s_median": round(statistics.median(r["windows_per_s"] for r in recs), 2),
        "report": str(out / "report" / "report.md"),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=None, help="simulation database (default: synthetic calcite rows in a temp folder)")
    ap.add_argument("--model", default="unet", choices=["unet", "attention-unet"])
    ap.add_argument("--channels", default="16,32,64,128")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10, help="measured steps of each kind (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    ap.add_argument("--rows", type=int, default=3, help="synthetic rows (default 3; --learn needs >= 4)")
    ap.add_argument(
        "--learn",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="also train for EPOCHS on the rows and evaluate against the height-only baseline",
    )
    ap.add_argument(
        "--loss", default="compare", choices=["l1", "l2", "compare"], help="loss for --learn (default compare)"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="folder for the --learn run and report (default: a temp folder)"
    )
    args = ap.parse_args(argv)

    import torch

    from hydrolayer import data, store
    from hydrolayer.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    load0 = os.getloadavg()
    t = time.perf_counter()
    db = Path(args.db) if args.db else synthetic_db(tmp, args.rows)
    t_db = time.perf_counter() - t
    uids = [r.unique_id for r in store.iter_rows(db)][:3]
    t = time.perf_counter()
    bank = data.build_bank(db, uids, tmp / "cache")
    t_bank = time.perf_counter() - t
    n_faces = len(bank)

    channels = tuple(int(c) for c in args.channels.split(","))
    torch.manual_seed(0)
    cl = torch.channels_last_3d  # the layout train.fit uses
    model = build_model(args.model, channels=channels).to(memory_format=cl)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    torch.manual_seed(0)
    plain = build_model(args.model, channels=channels)  # the default (contiguous NCDHW) layout, for the ratio
    opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-4)
    lossf = torch.nn.L1Loss()
    rng = np.random.default_rng(0)
    n = args.steps + 2
    plan = bank.random_plan(rng, max(1, (n * args.batch) // n_faces + 1))[: n * args.batch]
    batches = [plan[i * args.batch : (i + 1) * args.batch] for i in range(n)]
    pre = []
    for b in batches:
        x, h = bank.batch(b)
        pre.append(
            (torch.from_numpy(x.copy()).contiguous(memory_format=cl), torch.from_numpy(0.5 * (h[:, 0:1] + h[:, 1:2])))
        )

    def step(xt, yt, bf16=False, net=model, optim=opt):
        optim.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as train.fit with precision: bfloat16
            out = net(xt)
        loss = lossf(out.float(), yt)
        loss.backward()
        optim.step()

    loaded, preloaded, load_only, bf16_steps, plain_steps = [], [], [], [], []
    model.train()
    plain.train()
    for i, b in enumerate(batches):
        # with loading: slice the memory-mapped bank, convert, step
        t0 = time.perf_counter()
        x, h = bank.batch(b)
        xt, yt = torch.from_numpy(x).contiguous(memory_format=cl), torch.from_numpy(0.5 * (h[:, 0:1] + h[:, 1:2]))
        t1 = time.perf_counter()
        step(xt, yt)
        t2 = time.perf_counter()
        # pre-loaded tensors
        step(*pre[i])
        t3 = time.perf_counter()
        # pre-loaded tensors, bfloat16 forward pass
        step(*pre[i], bf16=True)
        t4 = time.perf_counter()
        # pre-loaded tensors, float32, the contiguous layout
        step(pre[i][0].contiguous(), pre[i][1], net=plain, optim=opt_plain)
        t5 = time.perf_counter()
        if i >= 2:
            loaded.append(t2 - t0)
            load_only.append(t1 - t0)
            preloaded.append(t3 - t2)
            bf16_steps.append(t4 - t3)
            plain_steps.append(t5 - t4)
    model.eval()
    with torch.no_grad():
        xt = pre[0][0]
        model(xt)
        t = time.perf_counter()
        for _ in range(3):
            model(xt)
        t_inf = (time.perf_counter() - t) / 3
    med_l, med_p = statistics.median(loaded), statistics.median(preloaded)
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads",
        "loadavg_before": [round(v, 2) for v in load0],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "db": str(db) if args.db else "synthetic calcite-104 5x3 rows",
        "model": args.model,
        "channels": list(channels),
        "batch": args.batch,
        "steps": args.steps,
        "synthetic_db_s": round(t_db, 2) if not args.db else None,
        "bank_s_per_face": round(t_bank / n_faces, 2),
        "bank_lateral_points": list(bank.entries[0].desc.shape[1:3]),
        "step_loaded_median_s": round(med_l, 4),
        "step_preloaded_median_s": round(med_p, 4),
        "loading_median_s": round(statistics.median(load_only), 5),
        "ratio_loaded_over_preloaded": round(med_l / med_p, 3),
        "train_windows_per_s": round(args.batch / med_l, 2),
        "step_bf16_preloaded_median_s": round(statistics.median(bf16_steps), 4),
        "bf16_speedup_over_float32": round(med_p / statistics.median(bf16_steps), 2),
        "step_contiguous_float32_median_s": round(statistics.median(plain_steps), 4),
        "channels_last_speedup_float32": round(statistics.median(plain_steps) / med_p, 2),
        "inference_windows_per_s": round(args.batch / t_inf, 2),
    }
    if args.learn:
        res["learn"] = learn(db, args.out or tmp, channels, args.learn, args.batch, args.threads, args.loss)
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
