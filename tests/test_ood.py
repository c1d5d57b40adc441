"""The out-of-domain score (issue 14): the latent distance of a window to the training
windows (``uncertainty.latent_reference`` / ``latent_distance``), its ROC AUC against the
failing windows, the threshold choice, the training-latents file and its round trip, and
``hydrolayer predict`` carrying the per-window scores.

Known answers on synthetic latents: two well-separated clusters give an AUC of 1, two
draws of one distribution about 0.5; a reference equal to the predicted windows' own
latents gives distance 0 everywhere, one shifted far away flags every window.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hydrolayer.uncertainty import (
    latent_distance,
    latent_reference,
    ood_auc,
    ood_scores,
    ood_summary,
    ood_warning,
    rank_average,
    read_latents,
    write_latents,
    youden_threshold,
)
from hydrolayer.util import InputError


def _cluster(rng, centre, n, d=16, members=2):
    return centre + rng.normal(size=(members, n, d))


def _train(rng, n=60, d=16, members=2):
    """Training latents of 6 'simulations' around the origin, and their simulation indices."""
    return _cluster(rng, 0.0, n, d, members), np.repeat(np.arange(6), n // 6)


@pytest.mark.parametrize("metric", ["knn", "mahalanobis"])
def test_separated_clusters_give_auc_one_and_one_distribution_half(metric):
    rng = np.random.default_rng(0)
    lat, sims = _train(rng)
    ref = latent_reference(lat, sims, metric=metric)
    near, far = latent_distance(ref, _cluster(rng, 0.0, 40)), latent_distance(ref, _cluster(rng, 8.0, 40))
    assert np.median(near) < 1.5 and far.min() > 3 * np.median(near)  # 1 = a typical new training simulation
    windows = [{"latent_distance": d, "mae": 0.1, "noise_floor": 0.1} for d in near]  # passing
    windows += [{"latent_distance": d, "mae": 1.0, "noise_floor": 0.1} for d in far]  # failing
    assert ood_auc(windows, key="latent_distance")["auc"] == 1.0
    t = youden_threshold(windows, "latent_distance")
    assert near.max() < t["threshold"] < far.min() and t["tpr"] == 1.0 and t["fpr"] == 0.0
    same = latent_distance(ref, _cluster(rng, 0.0, 200))
    fail = rng.random(200) < 0.5  # labels independent of the score
    mixed = [{"latent_distance": d, "mae": 1.0 if f else 0.1, "noise_floor": 0.1} for d, f in zip(same, fail)]
    assert abs(ood_auc(mixed, key="latent_distance")["auc"] - 0.5) < 0.12


def test_ensemble_distance_is_the_mean_of_the_members():
    rng = np.random.default_rng(1)
    lat, sims = _train(rng, members=3)
    ref = latent_reference(lat, sims)
    x = _cluster(rng, 2.0, 5, members=3)
    per = [latent_distance(latent_reference(lat[m : m + 1], sims), x[m : m + 1]) for m in range(3)]
    np.testing.assert_allclose(latent_distance(ref, x), np.mean(per, axis=0), rtol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        latent_distance(ref, x[:2])
    with pytest.raises(ValueError, match="at least 2 training simulations"):
        latent_reference(lat, np.zeros(len(sims), int))


def test_combined_score_and_scores_of_windows():
    assert rank_average([1, 2, 3], [3, 2, 1]).tolist() == [0.5, 0.5, 0.5]
    assert rank_average([0.1, 5.0, 2.0], [10, 30, 20]).tolist() == [0.0, 1.0, 0.5]
    windows = [
        {"spread": s, "latent_distance": d, "mae": m, "noise_floor": 0.1}
        for s, d, m in ((0.01, 1.0, 0.1), (0.02, 3.0, 0.5), (0.03, 2.0, 0.1), (0.04, 4.0, 0.5))
    ]
    scores = ood_scores(windows)
    assert scores["spread"]["auc"] == 0.75 and scores["latent_distance"]["auc"] == 1.0
    assert scores["combined"]["auc"] == 0.875 and scores["spread"]["failing"] == 2  # ranks (0, .5, .5, 1): one tie
    assert set(ood_scores([{k: w[k] for k in ("spread", "mae", "noise_floor")} for w in windows])) == {"spread"}


def test_latents_file_round_trip_and_bad_file(tmp_path):
    rng = np.random.default_rng(2)
    lat, sims = _train(rng)
    ref = latent_reference(lat, sims, k=3)
    write_latents(tmp_path / "m.latents.npz", ref, simulations_ids=["a", "b"], note="test")
    back, meta = read_latents(tmp_path / "m.latents.npz")
    assert meta == {"simulations_ids": ["a", "b"], "note": "test"} and back["k"] == 3 and back["metric"] == "knn"
    x = _cluster(rng, 1.0, 7)
    np.testing.assert_allclose(latent_distance(back, x), latent_distance(ref, x), rtol=2e-2)  # latents in float16
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="bad.npz: not a training-latents file"):
        read_latents(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="not found"):
        read_latents(tmp_path / "missing.npz")


def test_warning_names_the_windows_above_the_threshold():
    info = ood_summary([(0.0, 0.0), (10.2, 0.0), (0.0, 9.8)], [0.5, 3.0, 1.0], threshold=2.0)
    assert info["flagged_windows_A"] == [[10.2, 0.0]] and info["flag_threshold"] == 2.0
    text = ood_warning(info, "slab.extxyz")
    assert text.startswith("slab.extxyz: ") and "in 1 of 3 10 x 10 Å windows" in text and "(10.2, 0.0)" in text
    spread = {"flagged_windows_A": [[0.0, 9.8]], "flag_threshold": 0.1}
    both = ood_warning(info, "slab.extxyz", spread)
    assert "in 2 of 3" in both and "(0.0, 9.8)" in both and "spread > 0.1 rho/rho_bulk: 1" in both
    assert ood_warning(ood_summary([(0.0, 0.0)], [0.5], threshold=2.0)) is None


# ------------------------------------------------------------------ with networks
def _cell_reference(slab, members, shift: float):
    """A reference made of the slab's own window latents: 6 'simulations', each a copy with
    its own small noise (1% of each feature's spread), all shifted by ``shift`` feature
    spreads. Unshifted, a window's 5 nearest training windows are its own noisy copies, at
    about 1/sqrt(2) of the copy-to-copy distance that sets the scale: distance ~0.7."""
    from hydrolayer import descriptors
    from hydrolayer.inference import cell_latents, load_predictor
    from hydrolayer.uncertainty import flag_windows

    nets = [load_predictor(m, precision="float32").net for m in members]
    desc = descriptors.describe_cell(slab, sigma=0.5)
    lat = cell_latents(desc.values, nets, [(i0, j0) for i0, j0, _, _ in flag_windows(desc.spec)])
    width = lat.std(axis=1, keepdims=True) + 1e-3
    rng = np.random.default_rng(0)
    copies = [lat + 0.01 * width * rng.normal(size=lat.shape) for _ in range(6)]
    sims = np.repeat(np.arange(6), lat.shape[1])
    return latent_reference(np.concatenate(copies, axis=1) + shift * width, sims)


@pytest.mark.parametrize("shift, flagged", [(0.0, False), (50.0, True)])
def test_predict_writes_the_scores_and_warns(tmp_path, slab, members, shift, flagged, capsys):
    pytest.importorskip("torch")
    from hydrolayer.cli import main
    from hydrolayer.grids import Grid
    from hydrolayer.registry import read_ensemble, write_ensemble
    from hydrolayer.structures import write_structure

    path = write_structure(slab, tmp_path / "slab.extxyz")
    (tmp_path / "ens").mkdir()
    manifest = write_ensemble(tmp_path / "ens" / "ens.json", members)
    write_latents(tmp_path / "ens" / "ens.latents.npz", _cell_reference(slab, members, shift))
    doc = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(dict(doc, latents="ens.latents.npz")))
    assert read_ensemble(manifest).latents == tmp_path / "ens" / "ens.latents.npz"
    out = tmp_path / "out"
    assert main(["predict", str(path), "--model", str(manifest), "--out", str(out), "--precision", "float32"]) == 0
    err = capsys.readouterr().err
    for name in ("water.npz", "uncertainty.npz"):
        ood = Grid.read_npz(out / name).meta["ood"]
        corners = [[w["x0"], w["y0"]] for w in Grid.read_npz(out / name).meta["uncertainty"]["windows"]]
        assert [[w["x0"], w["y0"]] for w in ood["windows"]] == corners  # the same windows as the spread's
        d = np.array([w["latent_distance"] for w in ood["windows"]])
        assert (d > 10).all() if flagged else (d < 1.0).all()
        assert len(ood["flagged_windows_A"]) == (len(d) if flagged else 0)
    warned = [x for x in err.splitlines() if "out of the model's training domain" in x]
    spread_flagged = Grid.read_npz(out / "water.npz").meta["uncertainty"]["flagged_windows_A"]
    assert len(warned) == (1 if flagged or spread_flagged else 0)
    if flagged:
        x0, y0 = ood["flagged_windows_A"][0]
        assert (
            f"({x0:.1f}, {y0:.1f})" in warned[0]
            and f"latent distance > {ood['flag_threshold']:g}: {len(d)}" in warned[0]
        )


def test_single_model_uses_latents_beside_its_checkpoint(tmp_path, slab, members):
    pytest.importorskip("torch")
    import shutil

    from hydrolayer import predict
    from hydrolayer.inference import load_predictor

    ckpt = tmp_path / "solo.pt"
    shutil.copy(members[0], ckpt)
    assert "ood" not in predict.predict_density(slab, model=load_predictor(ckpt)).meta  # no file: no extra work
    write_latents(tmp_path / "solo.latents.npz", _cell_reference(slab, members[:1], 50.0))
    grid = predict.predict_density(slab, model=load_predictor(ckpt, precision="float32"))
    assert grid.meta["ood"]["flagged_windows_A"] and len(grid.meta["ood"]["windows"]) >= 1
    write_latents(tmp_path / "solo.latents.npz", _cell_reference(slab, members[:2], 0.0))
    with pytest.raises(InputError, match="training latents of 2 members, the model has 1"):
        load_predictor(ckpt)


def test_training_latents_file_travels_with_the_manifest(tmp_path, toy, tiny_member):
    pytest.importorskip("torch")
    from hydrolayer import store
    from hydrolayer.evaluate import write_training_latents
    from hydrolayer.inference import load_predictor
    from hydrolayer.registry import read_ensemble, write_ensemble

    db, cache = toy
    uids = [r.unique_id for r in store.iter_rows(db)][:2]
    split = {"seed": 0, "train": uids, "val": [], "test": [], "named": {}}
    members = [tiny_member(tmp_path / f"m{k}.pt", seed=k, split=split) for k in range(2)]
    manifest = write_ensemble(tmp_path / "toy.ensemble.json", members)
    out = write_training_latents(manifest, db, cache, log=lambda *_: None)
    assert out == tmp_path / "toy.latents.npz" and read_ensemble(manifest).latents == out
    ref, meta = read_latents(out)
    assert meta["simulations"] == sorted(uids) and ref["latents"].shape == (2, meta["windows"], 16)  # 2 x 8 channels
    assert out.stat().st_size < 1_000_000
    assert load_predictor(manifest).latents["latents"].shape == ref["latents"].shape
    empty = write_ensemble(
        tmp_path / "none.json", [tiny_member(tmp_path / "n.pt", seed=0, split=dict(split, train=["nope"]))]
    )
    with pytest.raises(InputError, match="0 of the model's training simulations"):
        write_training_latents(empty, db, cache, log=lambda *_: None)
