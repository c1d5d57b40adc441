"""The MD noise floor of each row, on whole windows, beside its production length.

    python benchmarks/noise_floor.py --db data/simulations.db --rows 5,6,7,27,28,45

For each row: the split-half noise floor 0.5 <|half1 - half2|> (rho/rho_bulk) over the
evaluation's whole-window grid of both faces, targets smoothed with the training's
sigma_target (``hydrolayer evaluate``'s "MD noise floor" of a row, before any unit-cell
averaging), and the production length. How the floor falls with longer runs: for noise
independent in time it would fall as 1/sqrt(production).
"""

from __future__ import annotations

import argparse
import json
import tempfile


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--rows", required=True, help="comma-separated row ids")
    args = ap.parse_args(argv)

    from hydrolayer import data, store
    from hydrolayer.conventions import noise_floor

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in args.rows.split(","):
            row = store.get_row(args.db, int(r))
            bank = data.build_bank(args.db, [row.unique_id], tmp)
            _, halves = bank.batch(bank.grid_plan())
            out.append(
                {
                    "row": int(r),
                    "surface": row.get("surface"),
                    "defects": row.get("defects"),
                    "production_ps": row.get("production_ps"),
                    "windows": len(halves),
                    "noise_floor": round(noise_floor(halves[:, 0], halves[:, 1]), 4),
                }
            )
            print(f"row {r}: {row.get('production_ps'):g} ps, noise floor {out[-1]['noise_floor']:.4f}", flush=True)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
