"""Make the bundled example AFM measurement, a synthetic frequency-shift map made from MD.

    python tools/make_example_measurement.py [--db data/simulations.db] [--row 14] [--out examples/afm]

Row 14 of data set v0 (calcite (10-14) with one CO3 2- vacancy on the top face, 1 ns of
MD, a named test surface never used in training or model selection): its MD water density
goes through the solvent-tip forward model (``afm.sta_force``; F_z, then a frequency-shift-
like map with a 0.3 Å oscillation amplitude, ``match.df_from_force``) and what real maps
have (``match.synthetic_measurement``): a crop of the periodic surface at a random offset,
a 2° rotation, a 0.5 Å lateral blur, a linear drift, white noise at SNR 5 with scan-line
offsets, and a gain and offset in Hz. Written as Gwyddion ``.gwy`` (SI units inside) with
the true registration in a ``.json`` beside it. The model never sees any of this.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hydrolayer import match
from hydrolayer.measurements import write_gwy

TRUTH = {
    "height_A": 3.0,
    "rotation_deg": 2.0,
    "blur_A": 0.5,
    "snr": 5.0,
    "drift": 1.5,
    "pixel_size_A": 0.4,
    "shape": [96, 96],
    "amplitude_A": 0.3,
    "gain_Hz_per_nN_per_A": 40.0,
    "offset_Hz": -120.0,
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="data/simulations.db")
    p.add_argument("--row", type=int, default=14)
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--out", type=Path, default=Path("examples/afm"))
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    dens = match.md_density(args.db, args.row)
    cell = np.diag(dens.spec.cell)[:2]
    offset = rng.uniform(0, 1, 2) * cell  # a random crop of the periodic surface
    t = TRUTH
    meas = match.synthetic_measurement(
        dens,
        t["height_A"],
        shape=tuple(t["shape"]),
        pixel_size=t["pixel_size_A"],
        angle=t["rotation_deg"],
        offset=offset,
        blur=t["blur_A"],
        snr=t["snr"],
        drift=t["drift"],
        quantity="df",
        amplitude=t["amplitude_A"],
        gain=t["gain_Hz_per_nN_per_A"],
        rng=rng,
        source=f"MD row {args.row}",
    )
    meas.values = meas.values + t["offset_Hz"]
    args.out.mkdir(parents=True, exist_ok=True)
    name = "calcite-co3-vacancy-df"
    write_gwy(meas, args.out / f"{name}.gwy", title="Frequency shift (synthetic, from MD row 14)")
    truth = dict(
        t,
        db_row=args.row,
        surface="calcite-104, one CO3 2- vacancy (top)",
        seed=args.seed,
        offset_A=[round(float(v), 3) for v in offset],
        convention="map pixel p (Å from the map centre) shows the MD cell point R(rotation) p + offset",
    )
    (args.out / f"{name}.json").write_text(json.dumps(truth, indent=1) + "\n")
    print(f"wrote {args.out / name}.gwy and .json")


if __name__ == "__main__":
    main()
