"""Print the README's data-set table from the database (every number read from the rows).

    python tools/dataset_table.py data/simulations.db
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hydrolayer import store  # noqa: E402


def table(db) -> str:
    lines = ["| row | surface | cells x layers | defects | production (ps) | atoms (slab + water) | speed (ns/day) | production wall time (h) | max slab displacement (Å) | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    total = 0.0
    for r in store.iter_rows(db):
        total += float(r.production_ps) + float(r.get("equil_ps", 0))
        seed = r.get("structure_seed")
        defects = r.get("defects") + (f", placement seed {seed}" if r.get("defects") != "pristine" and seed else "")
        lines.append(f"| {r.id} | {r.surface} | {r.get('structure_size')} x {r.get('layers')} | {defects} | {r.production_ps:g} | "
                     f"{r.natoms} + {3 * int(r.n_water)} | {r.ns_per_day:.1f} | {r.production_ps / 1000 / r.ns_per_day * 24:.2f} | "
                     f"{r.get('max_slab_displacement', float('nan')):.1f} | {r.get('status')} |")
    lines.append("")
    lines.append(f"{total / 1000:.2f} ns simulated in all (equilibration included). Max slab displacement: the largest "
                 "distance any slab Ca or C moved from its position at the start of production (slab frame); the stored "
                 "slab is the time average, so an ion that changed site is stored between its sites.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
