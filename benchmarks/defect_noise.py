"""Where the split-half noise near a vacancy comes from, by height.

    python benchmarks/defect_noise.py --db data/simulations.db --rows 14,15

For the top face of each row, the window the evaluation centres on each recorded defect site
(``hydrolayer evaluate``'s near-defect region: voxels within 3 Å of the site, targets
smoothed with sigma_target), the MD noise floor 0.5 <|half1 - half2|> and the two halves'
means, over the whole region and in height bands relative to the surface Ca plane: inside
the hole (-3 to 0 Å), 0-1.5 Å and 1.5-3 Å.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np

BANDS = ((-3.0, 0.0), (0.0, 1.5), (1.5, 3.0))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--rows", required=True, help="comma-separated row ids")
    ap.add_argument("--cache", default=None, help="window cache folder (default: a temporary one)")
    args = ap.parse_args(argv)

    from hydrolayer import data, store
    from hydrolayer.conventions import noise_floor
    from hydrolayer.evaluate import DEFECT_RADIUS

    ids = {int(r) for r in args.rows.split(",")}
    rows = [r for r in store.iter_rows(args.db) if r.id in ids]
    cache = args.cache or tempfile.mkdtemp(prefix="defect-noise-")
    out = {}
    for row in rows:
        bank = data.build_bank(args.db, [row.unique_id], cache)
        top = next(i for i, e in enumerate(bank.entries) if e.interface.face == "top")
        sites = np.asarray(bank.entries[top].meta["defect_sites"])
        z = bank.heights(top)
        res = {"defects": row.get("defects"), "windows": []}
        for p in bank.centred_plan(top, sites):
            mask = bank.defect_mask(*p, radius=DEFECT_RADIUS)
            _, h = bank.batch([p])
            h1, h2 = h[0, 0], h[0, 1]
            w = {
                "all": {
                    "voxels": int(mask.sum()),
                    "half1": float(h1[mask].mean()),
                    "half2": float(h2[mask].mean()),
                    "noise_floor": noise_floor(h1, h2, mask),
                }
            }
            for lo, hi in BANDS:
                m = mask & ((z >= lo) & (z < hi))[None, None, :]
                if m.any():
                    w[f"{lo:g}..{hi:g} A"] = {
                        "voxels": int(m.sum()),
                        "half1": float(h1[m].mean()),
                        "half2": float(h2[m].mean()),
                        "noise_floor": noise_floor(h1, h2, m),
                    }
            res["windows"].append(w)
        out[row.id] = res
        print(f"row {row.id} ({res['defects']}):")
        for w in res["windows"]:
            for band, v in w.items():
                print(
                    f"  {band:>12}: {v['voxels']:5d} voxels, halves {v['half1']:.3f} / {v['half2']:.3f}, noise floor {v['noise_floor']:.3f}"
                )
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
