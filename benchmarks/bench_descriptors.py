"""Descriptor throughput: windows per second on a 4-layer 5 x 3 calcite (10-14) slab.

Baseline in the same run: the straightforward evaluation (every grid point against every
periodic image of every atom within 4 sigma, no separability), on a few windows; the
package's result must agree with it. Run:

    python benchmarks/bench_descriptors.py [--windows 400]
"""

import argparse
import os
import platform
import time

import numpy as np

from hydrolayer import descriptors as D
from hydrolayer.structures import build_surface


def naive_window(atoms, x0, y0, sigma):
    """Reference: dense direct sum, every grid point against every periodic image of every
    atom within the 4-sigma box (vectorised NumPy, but no separable trick)."""
    z_s = D.surface_plane(atoms)
    spec = D.window_spec(x0, y0, z_s)
    pts = spec.points().reshape(-1, 3)
    lo, hi = pts.min(axis=0) - 4 * sigma, pts.max(axis=0) + 4 * sigma
    chans = D._channel_positions(atoms)
    out = np.zeros((3, pts.shape[0]))
    a, b = atoms.cell[0], atoms.cell[1]
    norm = (2 * np.pi * sigma**2) ** -1.5
    for c, name in enumerate(D.CHANNELS):
        imgs = np.concatenate([chans[name] + m * a + n * b for m in range(-2, 3) for n in range(-2, 3)])
        imgs = imgs[np.all((imgs >= lo) & (imgs <= hi), axis=1)]
        for q in np.array_split(imgs, max(1, len(imgs) // 16)):
            d2 = ((pts[:, None, :] - q[None, :, :]) ** 2).sum(-1)
            out[c] += norm * np.exp(-0.5 * d2 / sigma**2).sum(axis=1)
    return out.reshape(3, *spec.shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=400)
    ap.add_argument("--baseline-windows", type=int, default=3)
    args = ap.parse_args()
    slab = build_surface("calcite-104", size=(5, 3), layers=4)
    rng = np.random.default_rng(0)
    offsets = rng.uniform(0, 25, (args.windows, 2))
    D.describe_windows(slab, offsets[:5])  # warm-up
    t, c = time.perf_counter(), time.process_time()
    fast = D.describe_windows(slab, offsets)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    t = time.perf_counter()
    D.describe_windows(slab, offsets, workers=2)
    rate2 = args.windows / (time.perf_counter() - t)
    t = time.perf_counter()
    ref = [naive_window(slab, *o, D.DEFAULT_SIGMA) for o in offsets[: args.baseline_windows]]
    dt_ref = (time.perf_counter() - t) / args.baseline_windows
    err = max(np.abs(fast[i] - r).max() for i, r in enumerate(ref))
    rate = args.windows / dt
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    print(f"slab: calcite-104 5x3, 4 layers, {len(slab)} atoms; sigma {D.DEFAULT_SIGMA} Å")
    print(
        f"hydrolayer.describe_windows: {rate:.0f} windows/s wall ({1e3 / rate:.2f} ms/window, {args.windows} windows); "
        f"{args.windows / cpu:.0f} windows per CPU-second (one process)"
    )
    print(f"hydrolayer.describe_windows(workers=2): {rate2:.0f} windows/s wall")
    print(f"naive baseline: {1 / dt_ref:.2f} windows/s ({dt_ref * 1e3:.0f} ms/window)")
    print(f"speed-up over baseline: {rate * dt_ref:.0f}x; max |difference| {err:.2e} Å^-3")


if __name__ == "__main__":
    main()
