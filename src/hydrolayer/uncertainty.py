"""An ensemble's spread: what it is, the per-window flag, and the one-line summary.

Spread
    Per voxel, the standard deviation over the M members of their predictions, population
    form (ddof = 0: sqrt(mean_k (rho_k - mean)^2)), in rho/rho_bulk; 0 for one member. The
    ensemble's prediction is the members' mean. Both come from
    ``predict.predict_density(..., uncertainty=True)``.

Windows
    The cell is covered by windows of :data:`WINDOW_A` = 10 x 10 Å (the model's training
    window), laid as ``WindowBank.grid_plan`` lays the evaluation's windows: along each
    lateral axis of n grid points, k = ceil(n / w) windows of w points starting at
    round(m n / k), m = 0..k-1 (periodic; they touch or overlap slightly, never leave a gap).
    A window's *spread* is the mean spread over its points from :data:`FLAG_HEIGHTS` = 0 to
    10 Å above the surface plane z_s (where the hydration layers are). Positions are the
    window's lower-left corner (x0, y0) in Å, in the grid's frame.

Flag
    A window is *flagged* when its spread exceeds :data:`FLAG_SPREAD` rho/rho_bulk, or (a
    model that ships its training latents) its latent distance exceeds
    :data:`FLAG_DISTANCE`. Both thresholds are set the same way, from the calibration of the
    shipped calcite-only ensemble ``unet-ens-c`` (``hydrolayer evaluate
    runs/ens-c/ensemble.json src/hydrolayer/pretrained/unet-v1.pt --db data/simulations.db
    --max-row 22 --out reports/ens-c``, section "Calibration", ``metrics.json["ood"]``): over
    every evaluated window (test set, its defect regions, the named test surfaces; 228
    windows, 103 failing, i.e. MAE > :data:`FAIL_FACTOR` x the window's MD noise floor) the
    threshold that maximises Youden's J = TPR - FPR (:func:`youden_threshold`), rounded to
    two significant figures. Spread: 0.098 (flags 52% of the failing windows, 8% of the
    others: all the defect regions, none of the pristine polymorphs). Latent distance: 1.25
    (95% of the failing, 72% of the others: every aragonite and vaterite window and the
    calcite defect regions, but also 17% of the whole test-set windows). The two flag
    different windows; neither is a good failure detector on its own (ROC AUC 0.77 and 0.57
    over those windows; benchmarks/RESULTS.md).

Latent distance (the out-of-domain score of issue 14)
    A window's latent vector is its bottleneck features averaged and maximised over the
    cells from 5 Å below to 10 Å above z_s (``inference.window_latents``). The training
    windows' latents (every 16 grid points over both faces of each training simulation)
    travel with the model (``<name>.latents.npz``: ``evaluate.write_training_latents``,
    ``tools/ship_ensemble.py latents``). Per member the features are standardised by the
    training windows' mean and std; the distance is the mean Euclidean distance to the
    :data:`LATENT_K` nearest training windows, divided by the median of the same distance
    between training simulations (leave one simulation out), so 1 is a typical new
    simulation of the training kind; an ensemble's score is the mean over its members.
    Measured on the calibration above (benchmarks/RESULTS.md): k = 1, 5, 20 nearest
    neighbours, a shrunk Mahalanobis distance, and pooling 0-10 Å or the whole window all
    tell the held-out calcite windows from the other polymorphs' (ROC AUC 0.98-1.00) and
    none tells the failing windows (0.56-0.62 over every window); k = 5 over -5-10 Å was
    kept (perfect polymorph separation, no Gaussian assumption about 128 features from 450
    windows).

Summary (:func:`summarize`, :func:`summary_line`): the mean spread over the first layer
(``conventions.FIRST_LAYER``, 1-3 Å above z_s, the whole lateral cell) and the share of
windows flagged. No torch here.
"""

from __future__ import annotations

import numpy as np

from .conventions import FIRST_LAYER, WINDOW_SIZE, heights_above, noise_floor, window_starts

__all__ = [
    "FLAG_SPREAD",
    "FLAG_HEIGHTS",
    "WINDOW_A",
    "window_spreads",
    "summarize",
    "summary_line",
    "calibration",
    "ood_auc",
    "rank_correlation",
    "flag_warning",
    "flag_windows",
    "FLAG_DISTANCE",
    "LATENT_K",
    "latent_reference",
    "latent_distance",
    "write_latents",
    "read_latents",
    "rank_average",
    "youden_threshold",
    "ood_scores",
    "ood_summary",
    "ood_warning",
]

FLAG_SPREAD = 0.098  # rho/rho_bulk: a window whose mean spread (0-10 Å above z_s) exceeds this is flagged (notes)
FLAG_HEIGHTS = (0.0, 10.0)  # Å above z_s: the heights a window's spread is averaged over
WINDOW_A = float(WINDOW_SIZE[0])  # Å: the side of a flag window (the model's training window, 10 Å)


def flag_windows(spec) -> list[tuple[int, int, float, float]]:
    """The flag windows of a grid (module notes): per window its first grid indices
    (i0, j0) and its lower-left corner (x0, y0) in Å. ``spec``: a :class:`GridSpec`."""
    nx, ny = spec.shape[:2]
    step = np.linalg.norm(spec.cell[:2, :2], axis=1) / np.array([nx, ny])
    wx, wy = (max(1, int(round(WINDOW_A / s))) for s in step)
    out = []
    for i0 in window_starts(nx, wx):
        for j0 in window_starts(ny, wy):
            corner = spec.origin[:2] + (i0 / nx) * spec.cell[0, :2] + (j0 / ny) * spec.cell[1, :2]
            out.append((i0, j0, round(float(corner[0]), 3), round(float(corner[1]), 3)))
    return out


def window_spreads(spread, z_s: float) -> list[dict]:
    """Per window (module notes): ``{"x0", "y0"}`` (Å, the lower-left corner), ``"spread"``
    (rho/rho_bulk, the mean over 0-10 Å above ``z_s``, Å). ``spread``: a :class:`Grid`."""
    values, spec = spread.values[0], spread.spec
    nx, ny, _ = values.shape
    h = heights_above(spec, z_s)
    band = values[..., (h >= FLAG_HEIGHTS[0]) & (h <= FLAG_HEIGHTS[1])].mean(axis=2)  # (nx, ny)
    step = np.linalg.norm(spec.cell[:2, :2], axis=1) / np.array([nx, ny])
    wx, wy = (max(1, int(round(WINDOW_A / s))) for s in step)
    out = []
    for i0, j0, x0, y0 in flag_windows(spec):
        ii, jj = (i0 + np.arange(min(wx, nx))) % nx, (j0 + np.arange(min(wy, ny))) % ny
        out.append({"x0": x0, "y0": y0, "spread": float(band[np.ix_(ii, jj)].mean())})
    return out


def summarize(mean, spread, members: int, threshold: float = FLAG_SPREAD) -> dict:
    """What goes into the grids' ``meta["uncertainty"]``: the spread's definition, the mean
    spread in the first layer (rho/rho_bulk), every window's spread and the flagged windows'
    corners (Å). ``mean``, ``spread``: :class:`Grid` (rho/rho_bulk); ``members``: M."""
    z_s = float(mean.meta["surface_z"])
    h = heights_above(spread.spec, z_s)
    first = (h >= FIRST_LAYER[0]) & (h <= FIRST_LAYER[1])
    windows = window_spreads(spread, z_s)
    flagged = [[w["x0"], w["y0"]] for w in windows if w["spread"] > threshold]
    return {
        "spread": f"standard deviation over the {members} members (ddof 0), rho/rho_bulk",
        "members": int(members),
        "first_layer_A": list(FIRST_LAYER),
        "first_layer_mean_spread": float(spread.values[0][..., first].mean()),
        "window_A": WINDOW_A,
        "window_heights_A": list(FLAG_HEIGHTS),
        "flag_threshold": float(threshold),
        "windows": windows,
        "flagged_windows_A": flagged,
        "flagged_share": len(flagged) / len(windows),
    }


def flag_warning(summary: dict, source: str = "structure") -> str | None:
    """The out-of-domain warning for the flagged windows (None when none is flagged): how
    many, and where on the surface (their lower-left corners, Å)."""
    flagged = summary["flagged_windows_A"]
    if not flagged:
        return None
    where = _corners_text(flagged)
    return (
        f"{source}: the ensemble disagrees (mean spread > {summary['flag_threshold']:g} rho/rho_bulk over "
        f"{summary['window_heights_A'][0]:g}-{summary['window_heights_A'][1]:g} Å) in {len(flagged)} of "
        f"{len(summary['windows'])} {summary['window_A']:g} x {summary['window_A']:g} Å windows, likely out of its "
        f"training domain there; window corners (x, y Å): {where}"
    )


def _corners_text(corners, most: int = 8) -> str:
    """Window corners (x, y in Å) as a warning lists them: the first ``most``, then "..."."""
    return "; ".join(f"({x:.1f}, {y:.1f})" for x, y in corners[:most]) + (" ..." if len(corners) > most else "")


def summary_line(summary: dict) -> str:
    """The one line ``hydrolayer predict`` prints for an ensemble."""
    s = summary
    n, k = len(s["windows"]), len(s["flagged_windows_A"])
    lo, hi = s["first_layer_A"]
    return (
        f"uncertainty ({s['members']} members): mean spread {s['first_layer_mean_spread']:.3f} rho/rho_bulk in the "
        f"first layer ({lo:g}-{hi:g} Å); {k} of {n} {s['window_A']:g} x {s['window_A']:g} Å windows flagged "
        f"({100 * s['flagged_share']:.0f}%: mean spread over {s['window_heights_A'][0]:g}-{s['window_heights_A'][1]:g} Å "
        f"above {s['flag_threshold']:g})"
    )


# ------------------------------------------------------------------ calibration against MD
RELIABILITY_BINS = 8  # quantile bins of the predicted spread in the reliability diagram
FAIL_FACTOR = 2.0  # a window "fails" when its MAE exceeds this many times its MD noise floor


def calibration(pred, spread, halves, masks) -> dict:
    """How well an ensemble's spread tells its actual error, on windows with MD references.

    ``pred``, ``spread``: (N, X, Y, Z) ensemble mean and spread (rho/rho_bulk); ``halves``:
    (N, 2, X, Y, Z) the MD half-run densities; ``masks``: per window a boolean (X, Y, Z) of
    the voxels that count, or None for all. The MD reference is the halves' mean; its own
    noise is taken out of the error: per voxel, e2 = (pred - ref)^2 - ((h1 - h2) / 2)^2 is an
    unbiased estimate of the squared error against the exact density (the halves' half
    difference has the reference's variance). Returns

    * ``window_spearman``: rank correlation of the window mean spread with the window's
      corrected RMS error sqrt(max(0, mean e2)); ``voxel_spearman``: of the spread with e2;
    * ``coverage_2sigma``: share of voxels with |pred - ref| <= 2 sqrt(spread^2 + s_ref^2),
      s_ref^2 the window's mean ((h1 - h2) / 2)^2 (the band a calibrated Gaussian error
      would fall in 95% of the time);
    * ``reliability``: per quantile bin of the spread, its mean and the corrected RMS error;
    * ``windows``: per window, the mean spread, MAE and MD noise floor (0.5 mean|h1 - h2|),
      for the out-of-domain test (:func:`ood_auc`).
    """
    ref = 0.5 * (halves[:, 0] + halves[:, 1])
    half_diff2 = (0.5 * (halves[:, 0] - halves[:, 1])) ** 2
    s_all, e2_all, covered, windows = [], [], [], []
    for w in range(len(pred)):
        m = np.ones(pred[w].shape, bool) if masks[w] is None else masks[w]
        s, d, hd2 = spread[w][m], (pred[w] - ref[w])[m], half_diff2[w][m]
        e2 = d**2 - hd2
        s_all.append(s)
        e2_all.append(e2)
        covered.append(np.abs(d) <= 2.0 * np.sqrt(s**2 + hd2.mean()))
        windows.append(
            {
                "spread": float(s.mean()),
                "mae": float(np.abs(d).mean()),
                "noise_floor": noise_floor(halves[w, 0], halves[w, 1], m),
                "rms_error": float(np.sqrt(max(0.0, e2.mean()))),
            }
        )
    s_all, e2_all = np.concatenate(s_all), np.concatenate(e2_all)
    ws = [w["spread"] for w in windows]
    return {
        "window_spearman": rank_correlation(ws, [w["rms_error"] for w in windows]),
        "voxel_spearman": rank_correlation(s_all, e2_all),
        "coverage_2sigma": float(np.concatenate(covered).mean()),
        "reliability": _reliability(s_all, e2_all),
        "windows": windows,
    }


def rank_correlation(a, b) -> float | None:
    """Spearman's rank correlation; None for fewer than 3 values or a constant input."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a), np.asarray(b)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b)[0])


def _reliability(s: np.ndarray, e2: np.ndarray) -> list[dict]:
    """Per quantile bin of the spread ``s``: its mean spread and the corrected RMS error."""
    edges = np.quantile(s, np.linspace(0, 1, RELIABILITY_BINS + 1))
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, RELIABILITY_BINS - 1)
    out = []
    for b in range(RELIABILITY_BINS):
        sel = idx == b
        if sel.any():
            out.append(
                {
                    "spread": float(s[sel].mean()),
                    "rms_error": float(np.sqrt(max(0.0, e2[sel].mean()))),
                    "voxels": int(sel.sum()),
                }
            )
    return out


def _failing(windows: list[dict], factor: float = FAIL_FACTOR) -> np.ndarray:
    """Which windows the model fails on: MAE > ``factor`` x the window's MD noise floor."""
    return np.array([w["mae"] > factor * w["noise_floor"] for w in windows], dtype=bool)


def ood_auc(windows: list[dict], factor: float = FAIL_FACTOR, key: str = "spread") -> dict:
    """Area under the ROC curve of the window score ``key`` (the spread, or the
    ``"latent_distance"``) for the windows where the model fails (MAE > ``factor`` x the
    window's MD noise floor): the probability that a failing window has a larger score than
    a passing one (ties count half). None when all windows pass or all fail."""
    score = np.array([w[key] for w in windows])
    fail = _failing(windows, factor)
    n_fail, n_pass = int(fail.sum()), int((~fail).sum())
    if n_fail == 0 or n_pass == 0:
        return {"auc": None, "failing": n_fail, "windows": len(windows)}
    diff = score[fail][:, None] - score[~fail][None, :]
    auc = float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (n_fail * n_pass))
    return {"auc": auc, "failing": n_fail, "windows": len(windows)}


# ------------------------------------------------------------------ latent distance (issue 14)
FLAG_DISTANCE = 1.25  # latent distance (1 = a typical training simulation) above which a window is flagged (notes)
LATENT_K = 5  # nearest training windows whose mean distance is a window's latent distance
LATENT_SHRINK = 0.1  # Mahalanobis: covariance shrunk this far toward its mean diagonal (few windows, many features)
LATENT_METRICS = ("knn", "mahalanobis")


def latent_reference(latents, simulations, metric: str = "knn", k: int = LATENT_K) -> dict:
    """The training side of the latent distance, per member, from the training windows'
    latent vectors ``latents`` (M, N, D) (M members, N windows, D features) and each
    window's simulation index ``simulations`` (N,). Per member the features are
    standardised (training mean and std); ``metric`` "knn": the distance is the mean
    Euclidean distance to the ``k`` nearest training windows; "mahalanobis": the Mahalanobis
    distance to the training mean (covariance shrunk by :data:`LATENT_SHRINK`). Each member's
    distances are divided by its ``scale``: the median, over the training windows, of the
    distance to the windows of the *other* training simulations (leave one simulation out),
    so a score of 1 is a typical new simulation of the training kind. Plain arrays: what
    :func:`write_latents` stores."""
    if metric not in LATENT_METRICS:
        raise ValueError(f"metric must be one of {LATENT_METRICS}, got {metric!r}")
    lat = np.asarray(latents, dtype=np.float32)
    sims = np.asarray(simulations, dtype=np.int64)
    if len(np.unique(sims)) < 2:
        raise ValueError("the latent distance's scale needs the windows of at least 2 training simulations")
    mean, std = lat.mean(axis=1), lat.std(axis=1) + 1e-6
    ref = {"latents": lat, "simulations": sims, "mean": mean, "std": std, "metric": metric, "k": int(k)}
    ref["scale"] = np.ones(len(lat), np.float32)
    raw = np.stack([_member_distance(ref, m, lat[m], exclude=sims) for m in range(len(lat))])
    ref["scale"] = np.median(raw, axis=1).astype(np.float32) + 1e-12
    return ref


def latent_distance(ref: dict, latents) -> np.ndarray:
    """Each window's latent distance (the out-of-domain score): ``latents`` (M, n, D), the
    windows' latent vectors from the M members; per member the distance of
    :func:`latent_reference` over the member's scale, then the mean over the members."""
    lat = np.asarray(latents, dtype=np.float32)
    if lat.shape[0] != len(ref["latents"]) or lat.shape[2] != ref["latents"].shape[2]:
        raise ValueError(f"latents of shape {lat.shape} do not match the reference {ref['latents'].shape}")
    return np.mean([_member_distance(ref, m, lat[m]) for m in range(len(lat))], axis=0)


def _member_distance(ref: dict, m: int, lat: np.ndarray, exclude=None) -> np.ndarray:
    """One member's distances of ``lat`` (n, D) to the training windows, over its scale.
    ``exclude`` (n,): each row's simulation index, whose training windows are left out."""
    z = (lat - ref["mean"][m]) / ref["std"][m]
    train = (ref["latents"][m] - ref["mean"][m]) / ref["std"][m]
    if ref["metric"] == "mahalanobis":
        d = _mahalanobis(z, train, ref["simulations"], exclude)
    else:
        d2 = (z**2).sum(1)[:, None] + (train**2).sum(1)[None, :] - 2.0 * z @ train.T
        if exclude is not None:
            d2[np.asarray(exclude)[:, None] == ref["simulations"][None, :]] = np.inf
        k = min(ref["k"], int(np.isfinite(d2).sum(1).min()))
        d = np.sqrt(np.maximum(np.sort(d2, axis=1)[:, :k], 0.0)).mean(axis=1)
    return d / ref["scale"][m]


def _mahalanobis(z: np.ndarray, train: np.ndarray, sims: np.ndarray, exclude) -> np.ndarray:
    """Mahalanobis distance of the rows of ``z`` to the training windows' mean; with
    ``exclude``, each row against the training windows of the other simulations."""

    def one(x, t):
        cov = np.cov(t, rowvar=False)
        cov = (1 - LATENT_SHRINK) * cov + LATENT_SHRINK * np.trace(cov) / len(cov) * np.eye(len(cov))
        d = x - t.mean(0)
        return np.sqrt(np.einsum("ij,ij->i", d @ np.linalg.inv(cov), d))

    if exclude is None:
        return one(z, train)
    out = np.empty(len(z))
    for s in np.unique(exclude):
        rows = np.asarray(exclude) == s
        out[rows] = one(z[rows], train[sims != s])
    return out


def write_latents(path, ref: dict, **meta) -> None:
    """Store a :func:`latent_reference` as ``.npz`` (latents in float16: KB-MB) with
    ``meta`` (JSON-able: the simulations' ids, the pooling, the command)."""
    import json

    from .util import atomic_output

    arrays = {k: ref[k] for k in ("simulations", "mean", "std", "scale")}
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            latents=ref["latents"].astype(np.float16),
            **arrays,
            info=np.array(json.dumps(dict(meta, metric=ref["metric"], k=ref["k"]))),
        )


def read_latents(path) -> tuple[dict, dict]:
    """(reference, meta) from a file of :func:`write_latents`; one-line ``InputError``
    when it is not one."""
    import json

    from .util import InputError

    try:
        with np.load(path) as f:
            info = json.loads(str(f["info"]))
            ref = {k: f[k] for k in ("simulations", "mean", "std", "scale")}
            ref["latents"] = f["latents"].astype(np.float32)
    except FileNotFoundError:
        raise InputError(f"{path}: training-latents file not found") from None
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{path}: not a training-latents file ({type(err).__name__}: {err})") from None
    ref["metric"], ref["k"] = info.pop("metric"), int(info.pop("k"))
    return ref, info


def rank_average(*scores) -> np.ndarray:
    """The mean of the scores' ranks scaled to [0, 1] (ties: mean rank): a combination of
    scores on different scales that only uses their order (within the windows given)."""
    from scipy.stats import rankdata

    n = len(scores[0])
    return np.mean([(rankdata(s) - 1) / max(1, n - 1) for s in scores], axis=0)


def youden_threshold(windows: list[dict], key: str, factor: float = FAIL_FACTOR) -> dict | None:
    """The threshold on ``windows[i][key]`` that best separates the failing windows (MAE >
    ``factor`` x noise floor) from the others: the one maximising Youden's J = TPR - FPR,
    placed halfway between two consecutive distinct scores. Returns threshold, TPR, FPR;
    None when all windows pass or all fail."""
    score = np.array([w[key] for w in windows], dtype=float)
    fail = _failing(windows, factor)
    if fail.all() or not fail.any():
        return None
    cuts = np.unique(score)
    cuts = np.concatenate([[cuts[0] - 1.0], 0.5 * (cuts[1:] + cuts[:-1])])
    tpr = np.array([(score[fail] > c).mean() for c in cuts])
    fpr = np.array([(score[~fail] > c).mean() for c in cuts])
    best = int(np.argmax(tpr - fpr))
    return {"threshold": float(cuts[best]), "tpr": float(tpr[best]), "fpr": float(fpr[best]), "key": key}


def ood_scores(windows: list[dict], factor: float = FAIL_FACTOR) -> dict:
    """:func:`ood_auc` of the spread, and when every window carries a ``"latent_distance"``
    also of it and of the two combined (:func:`rank_average`, over these windows)."""
    out = {"spread": ood_auc(windows, factor)}
    if windows and all("latent_distance" in w for w in windows):
        out["latent_distance"] = ood_auc(windows, factor, key="latent_distance")
        comb = rank_average([w["spread"] for w in windows], [w["latent_distance"] for w in windows])
        out["combined"] = ood_auc([dict(w, combined=float(c)) for w, c in zip(windows, comb)], factor, key="combined")
    return out


def ood_summary(corners, distances, threshold: float | None = None) -> dict:
    """What goes into the grids' ``meta["ood"]``: the latent distance's definition, every
    window's corner (Å) and latent distance, and the corners of the windows above
    ``threshold`` (default :data:`FLAG_DISTANCE`). ``corners``: [(x0, y0), ...] in Å."""
    threshold = FLAG_DISTANCE if threshold is None else float(threshold)
    windows = [
        {"x0": float(x0), "y0": float(y0), "latent_distance": float(d)} for (x0, y0), d in zip(corners, distances)
    ]
    flagged = [[w["x0"], w["y0"]] for w in windows if w["latent_distance"] > threshold]
    return {
        "score": f"latent distance: mean over the members of the mean distance to the {LATENT_K} nearest training "
        "windows (standardised bottleneck features), over its median between training simulations (1 = typical)",
        "window_A": WINDOW_A,
        "flag_threshold": threshold,
        "windows": windows,
        "flagged_windows_A": flagged,
        "flagged_share": len(flagged) / len(windows) if windows else 0.0,
    }


def ood_warning(ood: dict, source: str = "structure", summary: dict | None = None) -> str | None:
    """The one-line out-of-domain warning when the latent distance is known: the windows
    whose latent distance (``ood``, :func:`ood_summary`) or, for an ensemble, whose spread
    (``summary``, :func:`summarize`) is above its threshold, by corner (Å); None when none is."""
    far = {tuple(c) for c in ood["flagged_windows_A"]}
    wide = {tuple(c) for c in (summary or {}).get("flagged_windows_A", [])}
    flagged = sorted(far | wide)
    if not flagged:
        return None
    where = _corners_text(flagged)
    why = f"latent distance > {ood['flag_threshold']:g}: {len(far)}"
    if summary is not None:
        why += f"; ensemble spread > {summary['flag_threshold']:g} rho/rho_bulk: {len(wide)}"
    return (
        f"{source}: likely out of the model's training domain in {len(flagged)} of {len(ood['windows'])} "
        f"{ood['window_A']:g} x {ood['window_A']:g} Å windows ({why}); window corners (x, y Å): {where}"
    )
