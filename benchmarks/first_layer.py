"""How much water a model puts in the first hydration layer, against MD, window by window.

    python benchmarks/first_layer.py --db data/simulations.db --rows 5,6,7 --model unet-v0
    python benchmarks/first_layer.py --db data/simulations.db --rows 1,2,4 --model runs/unet/model.pt
    python benchmarks/first_layer.py --db data/simulations.db --rows 8,10 --model unet-v1 --scale-from 1,2,4,5,6,7,11,12,13

For both faces of the given rows, the evaluation's fixed grid of windows (as ``hydrolayer
evaluate``: targets = mean of the two MD halves smoothed with sigma_target, pristine rows
averaged over their unit cells), the model in float32 (or --precision bfloat16), and:
  * the lateral distribution of rho/rho_bulk in the plane nearest 2.12 Å above the surface
    Ca plane (the first peak of calcite (10-14)), averaged over +-1 grid point in z:
    mean, median, 90th and 99th percentile, max;
  * the mean density 1-3 Å above the plane (the first layer's water content) and -1..1 Å,
    MD vs model, and the correlation of the per-window first-layer means;
  * the MAE in the first layer's planes (1-3 Å) and elsewhere in the window;
  * the whole-window MAE and the MD noise floor of the same windows (as in the report), to
    compare how close a model comes to the noise on its training rows and on unseen rows.
A model that puts the layer at the right height but with too little water shows a ratio
below 1 at every percentile, not only at the maxima.

``--scale-from ROWS``: a per-height correction measured, not shipped. On the windows of ROWS
(e.g. the model's training rows) the ratio of MD's to the model's mean density in each
first-layer plane; the same numbers are then reported for ``--rows`` with the model's
first-layer planes multiplied by those ratios (``"scaled"``).
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--rows", required=True, help="comma-separated row ids")
    ap.add_argument("--model", default=None, help="shipped name or checkpoint (default: the default shipped model)")
    ap.add_argument("--cache", default=None, help="window cache folder (default: a temporary one)")
    ap.add_argument(
        "--precision",
        default="float32",
        choices=["float32", "bfloat16"],
        help="network precision (default float32, as hydrolayer evaluate; predict's default is bfloat16 where supported)",
    )
    ap.add_argument("--scale-from", default=None, help="comma-separated row ids to measure a first-layer scale on")
    args = ap.parse_args(argv)

    from hydrolayer import predict, store
    from hydrolayer.conventions import SPACING, WINDOW_SHAPE, Z_BELOW, first_layer_planes, noise_floor
    from hydrolayer.evaluate import md_and_prediction

    pred = predict.load_predictor(args.model, precision=args.precision)

    def md_and_model(rows: str):
        uids = [store.get_row(args.db, int(r)).unique_id for r in rows.split(",")]
        if args.cache:
            return md_and_prediction(args.db, uids, pred, args.cache)
        with tempfile.TemporaryDirectory() as tmp:
            return md_and_prediction(args.db, uids, pred, tmp)

    halves, model = md_and_model(args.rows)
    md = 0.5 * (halves[:, 0] + halves[:, 1])
    z = -Z_BELOW + SPACING * np.arange(WINDOW_SHAPE[2])
    k = int(np.argmin(np.abs(z - 2.12)))
    res: dict = {
        "model": pred.name,
        "precision": pred.precision,
        "rows": args.rows,
        "windows": len(md),
        "plane_height_A": round(float(z[k]), 3),
        "mae": float(np.abs(model - md).mean()),
        "md_noise_floor": noise_floor(halves[:, 0], halves[:, 1]),
    }
    for name, a in (("md", md), ("model", model)):
        s = a[..., k - 1 : k + 2].mean(-1)
        res[f"{name}_plane"] = {
            "mean": float(s.mean()),
            "median": float(np.median(s)),
            "p90": float(np.percentile(s, 90)),
            "p99": float(np.percentile(s, 99)),
            "max": float(s.max()),
        }
    first = first_layer_planes()
    res["md_mean_1_3A"], res["model_mean_1_3A"] = float(md[..., first].mean()), float(model[..., first].mean())
    # where the whole-window MAE comes from: the first layer's planes and the rest
    res["mae_1_3A"], res["mae_elsewhere"] = (float(np.abs(model - md)[..., m].mean()) for m in (first, ~first))
    low = (z > -1.0) & (z < 1.0)
    res["md_mean_-1_1A"], res["model_mean_-1_1A"] = float(md[..., low].mean()), float(model[..., low].mean())
    mw, pw = md[..., first].mean(axis=(1, 2, 3)), model[..., first].mean(axis=(1, 2, 3))
    res["per_window_first_layer_corr"] = float(np.corrcoef(mw, pw)[0, 1])
    res["per_window_first_layer_md_range"] = [float(mw.min()), float(mw.max())]
    res["per_window_first_layer_model_range"] = [float(pw.min()), float(pw.max())]
    if args.scale_from:
        h_fit, m_fit = md_and_model(args.scale_from)
        fit = 0.5 * (h_fit[:, 0] + h_fit[:, 1])
        scale = np.where(first, fit.mean((0, 1, 2)) / np.maximum(m_fit.mean((0, 1, 2)), 1e-6), 1.0)
        scaled = model * scale
        res["scaled"] = {
            "from_rows": args.scale_from,
            "scale_per_plane": [round(float(v), 4) for v in scale[first]],
            "mae": float(np.abs(scaled - md).mean()),
            "model_mean_1_3A": float(scaled[..., first].mean()),
            "first_layer_vs_md": float(scaled[..., first].mean() / md[..., first].mean() - 1),
        }
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
