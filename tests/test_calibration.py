"""Calibration of an ensemble's spread against MD (``uncertainty.calibration``, ``ood_auc``)
on synthetic windows with known answers, and the section of ``hydrolayer evaluate``."""

from __future__ import annotations

import numpy as np
import pytest

from hydrolayer.uncertainty import calibration, ood_auc

SHAPE = (6, 6, 8)


def synthetic(spread_of_window, error_scale, rng, noise=0.1):
    """Windows whose true error is error_scale[w] x N(0, 1) per voxel and whose stated spread
    is spread_of_window[w]; the MD halves carry independent noise of sd ``noise``."""
    n = len(spread_of_window)
    truth = 1.0 + rng.normal(0, 0.3, (n, *SHAPE))
    halves = truth[:, None] + rng.normal(0, noise, (n, 2, *SHAPE))
    pred = truth + np.asarray(error_scale)[:, None, None, None] * rng.normal(0, 1, (n, *SHAPE))
    spread = np.broadcast_to(np.asarray(spread_of_window)[:, None, None, None], pred.shape)
    return pred, spread, halves


def test_a_calibrated_spread_ranks_and_covers():
    rng = np.random.default_rng(0)
    s = np.linspace(0.05, 0.6, 24)
    pred, spread, halves = synthetic(s, s, rng)  # the spread is the true error's sd
    cal = calibration(pred, spread, halves, [None] * len(s))
    assert cal["window_spearman"] > 0.95
    assert cal["voxel_spearman"] > 0.2  # per voxel: |error| is one draw of a wide distribution
    # +-2 sigma of a Gaussian error (the reference's noise included in sigma): 95.4%
    assert cal["coverage_2sigma"] == pytest.approx(0.954, abs=0.02)
    # reliability: the corrected RMS error follows the spread (the MD noise, 0.1/sqrt(2), removed)
    for b in cal["reliability"]:
        assert b["rms_error"] == pytest.approx(b["spread"], rel=0.15, abs=0.02)
    # the noise floor of a window: 0.5 <|h1 - h2|> = 0.1 * sqrt(2) * sqrt(2/pi) / 2 ... = 0.0564
    assert np.mean([w["noise_floor"] for w in cal["windows"]]) == pytest.approx(0.1 / np.sqrt(np.pi), rel=0.05)


def test_a_spread_that_says_nothing_does_not_rank():
    rng = np.random.default_rng(1)
    s = np.linspace(0.05, 0.6, 24)
    pred, spread, halves = synthetic(rng.permutation(s), s, rng)
    cal = calibration(pred, spread, halves, [None] * len(s))
    assert abs(cal["window_spearman"]) < 0.5
    # too small where the error is large and vice versa: the coverage falls short of 95%
    assert cal["coverage_2sigma"] < 0.9


def test_masks_select_the_voxels():
    rng = np.random.default_rng(2)
    pred, spread, halves = synthetic([0.1, 0.1, 0.1], [0.1, 0.1, 0.1], rng)
    pred = pred.copy()
    mask = np.zeros(SHAPE, bool)
    mask[:2] = True
    pred[:, 2:] += 5.0  # huge errors outside the masks
    cal = calibration(pred, spread, halves, [mask] * 3)
    assert all(w["mae"] < 0.5 for w in cal["windows"])


def test_ood_auc():
    win = [{"spread": s, "mae": m, "noise_floor": 0.1} for s, m in [(0.1, 0.1), (0.2, 0.15), (0.5, 0.4), (0.6, 0.5)]]
    assert ood_auc(win) == {"auc": 1.0, "failing": 2, "windows": 4}  # failing (> 0.2): the two largest spreads
    swapped = [dict(w, spread=1 - w["spread"]) for w in win]
    assert ood_auc(swapped)["auc"] == 0.0
    assert ood_auc(win[:2])["auc"] is None  # nothing fails: no ROC


def test_evaluate_reports_the_calibration_of_an_ensemble(toy, tiny_member, tmp_path):
    pytest.importorskip("torch")
    from hydrolayer import data, store
    from hydrolayer.evaluate import evaluate
    from hydrolayer.registry import write_ensemble

    db, _ = toy
    split = data.make_split(list(store.iter_rows(db)), seed=0, fractions=(0.5, 0.25, 0.25))
    members = [tiny_member(tmp_path / f"m{k}.pt", seed=k, split=split) for k in range(3)]
    manifest = write_ensemble(tmp_path / "ens.json", members)
    res = evaluate([manifest, members[0]], db, tmp_path / "report", figures=True, log=lambda m: None)
    (label,) = [lab for lab in res["models"] if "ensemble of 3" in lab]
    test = next(g for g in res["groups"] if g["name"] == "test set")
    cal = test["models"][label]["calibration"]
    assert len(cal["windows"]) == test["windows"] and 0.0 <= cal["coverage_2sigma"] <= 1.0
    assert "calibration" not in test["models"][next(lab for lab in res["models"] if lab != label)]
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"## Calibration of the ensemble spread: {label}" in md
    assert (tmp_path / "report" / "figures" / res["calibration_figures"][0]).is_file()


def test_flag_warning_names_the_windows():
    from hydrolayer.uncertainty import flag_warning

    summary = {
        "flagged_windows_A": [[0.0, 0.0], [10.2, 0.0]],
        "windows": [{}] * 9,
        "flag_threshold": 0.1,
        "window_heights_A": [0.0, 10.0],
        "window_A": 10.0,
    }
    text = flag_warning(summary, "slab.extxyz")
    assert text.startswith("slab.extxyz: ") and "in 2 of 9 10 x 10 Å windows" in text and "(10.2, 0.0)" in text
    assert flag_warning(dict(summary, flagged_windows_A=[])) is None
