"""Timing of ``hydrolayer match``: ranking 10 candidates against one 2D map.

    python benchmarks/bench_match.py [--threads 1] [--repeat 2]

The bundled example (``examples/afm/calcite-co3-vacancy-df.gwy``, 96 x 96 pixels of 0.4 Å)
against 10 candidates (calcite (10-14) pristine, CO3 2- and Ca2+ vacancy, 1-3 pair
vacancies, aragonite (010) and (001), vaterite (010), magnesite is left out: the model has
no Mg channel). After loading (model, measurement, candidate structures), timed: the whole
ranking (prediction + STA + registration of every candidate and its defect variants),
and in the same run the baseline of predicting the densities alone, as a ratio.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [
    "calcite-104",
    "calcite-104:vacancy=CO3",
    "calcite-104:vacancy=Ca",
    "calcite-104:pairs=1,seed=1",
    "calcite-104:pairs=2,seed=1",
    "calcite-104:pairs=3,seed=1",
    "calcite-104:pairs=1,placement=adjacent",
    "aragonite-010",
    "aragonite-001",
    "vaterite-010",
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from hydrolayer import match
    from hydrolayer.measurements import read_measurement
    from hydrolayer.predict import load_predictor, predict_density

    meas = read_measurement(ROOT / "examples/afm/calcite-co3-vacancy-df.gwy")
    pred = load_predictor()
    cands = [match.parse_candidate(c) for c in CANDIDATES]
    forms = [a for c in cands for a in [c.atoms, *c.variants]]
    predict_density(cands[0].atoms, model=pred)  # warm-up
    for rep in range(args.repeat):
        t0 = time.perf_counter()
        for a in forms:
            predict_density(a, model=pred)
        t_pred = time.perf_counter() - t0
        t0 = time.perf_counter()
        regs, sims, _ = match.rank(meas, cands, pred)
        t_rank = time.perf_counter() - t0
        t_sim = sum(s.seconds for s in sims.values())
        print(
            f"run {rep + 1}: ranking {len(cands)} candidates ({len(forms)} structures with the defect variants): "
            f"{t_rank:.2f} s; of which prediction + STA {t_sim:.2f} s, registration {t_rank - t_sim:.2f} s; "
            f"predicting the densities alone {t_pred:.2f} s; ratio ranking / prediction alone {t_rank / t_pred:.2f}; "
            f"first: {regs[0].label}",
            flush=True,
        )


if __name__ == "__main__":
    main()
