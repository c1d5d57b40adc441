"""Does 50 ps of equilibration leave a drift in production? The first layer's water, measured.

    python benchmarks/equilibration.py --db data/simulations.db [--rows 1-18] [--json out.json]

Two measurements, both of the first layer's water (water O 1-3 Å above each face's Ca
plane, ``conventions.FIRST_LAYER``):

* every row (data set v0 too): its mean density in the first and in the second half of
  production, per face. A drift left by too short an equilibration shows as a change of
  one sign between the halves, the same in most rows; slow fluctuations show as changes of
  either sign. Reported: the mean relative change over all faces with its standard error,
  and the spread.
* rows that record per-block face profiles (data set v1 on): the block series (one block
  per 10 ps checkpoint) of each face, its relative drift over production from a straight-line
  fit (``density.relative_drift``), and the mean of the first 50 ps against the rest.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def half_change(db, row) -> list[float]:
    """Relative change (second half / first half - 1) of the first-layer mean density, per face."""
    from hydrolayer import store
    from hydrolayer.conventions import FIRST_LAYER, surface_planes

    d = store.load_density(db, row)
    z_top, z_bottom = surface_planes(row.toatoms())  # today's rule (a row's z_top is the rule of its day)
    h1, h2 = d["half1"].astype(float), d["half2"].astype(float)
    lz = d["cell"][2, 2]
    z = np.arange(h1.shape[2]) / h1.shape[2] * lz
    out = []
    for dz in ((z - z_top) % lz, (z_bottom - z) % lz):
        sel = (dz > FIRST_LAYER[0]) & (dz < FIRST_LAYER[1])
        out.append(float(h2[:, :, sel].mean() / h1[:, :, sel].mean() - 1))
    return out


def block_summary(row) -> dict | None:
    from hydrolayer.density import relative_drift
    from hydrolayer.store import first_layer_series

    s = first_layer_series(row)
    if s is None:
        return None
    t = np.asarray(s["t_ps"])
    out = {}
    for face in ("top", "bottom"):
        y = np.asarray(s[face])
        early = y[t <= 50.0 + 1e-6]
        out[face] = {
            "drift": relative_drift(y, s["block_ps"]),
            "first_50ps_vs_rest": float(early.mean() / y[t > 50.0 + 1e-6].mean() - 1)
            if len(early) and (t > 50).any()
            else None,
            "mean_count": float(y.mean()),
            "blocks": len(y),
        }
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--rows", default=None, help="A-B or comma-separated ids (default: every row)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from hydrolayer import store

    if args.rows and "-" in args.rows:
        a, b = (int(v) for v in args.rows.split("-"))
        ids = list(range(a, b + 1))
    elif args.rows:
        ids = [int(v) for v in args.rows.split(",")]
    else:
        ids = [r.id for r in store.iter_rows(args.db)]
    res = {"rows": {}}
    changes = []
    print("row  surface         production  equil  half2/half1-1 top  bottom   block drift top  bottom")
    for i in ids:
        row = store.get_row(args.db, i)
        ch = half_change(args.db, row)
        blk = block_summary(row)
        changes += ch
        res["rows"][i] = {
            "surface": row.surface,
            "production_ps": row.production_ps,
            "equil_ps": row.get("equil_ps"),
            "half_change": ch,
            "blocks": blk,
        }
        drift = f"{blk['top']['drift']:+.3f}  {blk['bottom']['drift']:+.3f}" if blk else "(not recorded)"
        print(
            f"{i:3d}  {row.surface:14s}  {row.production_ps:7.0f} ps  {row.get('equil_ps', 0):4.0f}  "
            f"{ch[0]:+17.3f}  {ch[1]:+6.3f}   {drift}"
        )
    c = np.asarray(changes)
    res["summary"] = {
        "faces": len(c),
        "mean_change": float(c.mean()),
        "sem": float(c.std(ddof=1) / np.sqrt(len(c))),
        "sd": float(c.std(ddof=1)),
        "positive": int((c > 0).sum()),
    }
    s = res["summary"]
    print(
        f"\nfirst-layer change between the halves over {s['faces']} faces: mean {s['mean_change']:+.4f} "
        f"+- {s['sem']:.4f} (standard error), sd {s['sd']:.4f}, {s['positive']} of {s['faces']} positive"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
