"""Print the README's data-set table from the database (every number read from the rows).

python tools/dataset_table.py data/simulations.db
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hydrolayer import store  # noqa: E402


def _drift(row) -> str:
    from hydrolayer.density import relative_drift

    s = store.first_layer_series(row)
    if s is None:
        return "-"
    return " / ".join(f"{100 * relative_drift(s[f], s['block_ps']):+.0f}%" for f in ("top", "bottom"))


def table(db) -> str:
    lines = [
        "| row | surface | cells x layers | defects | production (ps) | atoms (slab + water) | speed (ns/day) "
        "| production wall time (h) | max slab displacement (Å) | first-layer water drift (top / bottom) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    total = 0.0
    for r in store.iter_rows(db):
        total += float(r.production_ps) + float(r.get("equil_ps", 0))
        seed = r.get("structure_seed")
        defects = r.get("defects") + (f", placement seed {seed}" if r.get("defects") != "pristine" and seed else "")
        lines.append(
            f"| {r.id} | {r.surface} | {r.get('structure_size')} x {r.get('layers')} | {defects} | {r.production_ps:g} | "
            f"{r.natoms} + {3 * int(r.n_water)} | {r.ns_per_day:.1f} | {r.production_ps / 1000 / r.ns_per_day * 24:.2f} | "
            f"{r.get('max_slab_displacement', float('nan')):.1f} | {_drift(r)} | {r.get('status')} |"
        )
    lines.append("")
    lines.append(
        f"{total / 1000:.2f} ns simulated in all (equilibration included). Max slab displacement: the largest "
        "distance any slab Ca or C moved from its position at the start of production (slab frame); the stored "
        "slab is the time average, so an ion that changed site is stored between its sites. First-layer water "
        "drift: the relative change of the water O count 1-3 Å above each face's Ca plane over production, from "
        "a straight line through its 10 ps blocks (`hydrolayer db show DB ROW` prints the blocks; recorded from "
        'data set v1 on, "-" before).'
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
