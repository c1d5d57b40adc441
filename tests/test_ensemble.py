"""Ensembles: the manifest, the per-voxel mean and spread, the CLI's uncertainty files, bad
manifests, and training an ensemble (seeds, bootstrap, resume).

The networks are tiny *untrained* U-Nets with different seeds (prediction) or trained for an
epoch or two on the synthetic toy database (training): the mean and spread are properties of
the machinery, not of the weights. Spread convention checked here: the population standard
deviation over the members (ddof = 0), so one member gives exactly 0.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hydrolayer.descriptors")

from hydrolayer import predict  # noqa: E402
from hydrolayer.cli import main  # noqa: E402
from hydrolayer.inference import EnsemblePredictor, load_predictor  # noqa: E402
from hydrolayer.registry import list_models, read_ensemble, write_ensemble  # noqa: E402
from hydrolayer.util import InputError  # noqa: E402

# fixtures slab, toy, tiny, tiny_member and members: tests/conftest.py


def test_mean_and_spread_are_those_of_the_members(tmp_path, slab, members):
    manifest = write_ensemble(tmp_path / "ens.json", members, note="three untrained seeds")
    assert read_ensemble(manifest).members == tuple(m.resolve() for m in members)
    ens = load_predictor(manifest, precision="float32")
    assert isinstance(ens, EnsemblePredictor) and len(ens.members) == 3 and ens.name == "ens"
    for method in ("tiles", "cell"):
        alone = np.stack(
            [
                predict.predict_density(slab, model=load_predictor(m, precision="float32"), method=method).values[0]
                for m in members
            ]
        )
        mean, spread = predict.predict_density(slab, model=ens, method=method, uncertainty=True)
        assert mean.values.dtype == np.float32 and mean.channels == ("water",) and spread.channels == ("spread",)
        np.testing.assert_allclose(mean.values[0], alone.mean(axis=0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(spread.values[0], alone.std(axis=0, ddof=0), rtol=1e-5, atol=1e-7)
        assert spread.values.max() > 1e-3  # the seeds really differ
        plain = predict.predict_density(slab, model=ens, method=method)  # without uncertainty=True: the mean alone
        np.testing.assert_array_equal(plain.values, mean.values)
    info = mean.meta["uncertainty"]
    assert info == spread.meta["uncertainty"] and info["members"] == 3
    assert len(info["windows"]) >= 1 and all({"x0", "y0", "spread"} <= set(w) for w in info["windows"])
    assert info["flagged_windows_A"] == [
        [w["x0"], w["y0"]] for w in info["windows"] if w["spread"] > info["flag_threshold"]
    ]
    with pytest.raises(InputError, match="needs an ensemble"):
        predict.predict_density(slab, model=load_predictor(members[0]), uncertainty=True)


def test_one_member_ensemble_is_the_single_model(tmp_path, slab, members):
    one = load_predictor(write_ensemble(tmp_path / "one.json", members[:1]), precision="float32")
    mean, spread = predict.predict_density(slab, model=one, uncertainty=True)
    single = predict.predict_density(slab, model=load_predictor(members[0], precision="float32"))
    np.testing.assert_array_equal(mean.values, single.values)
    assert not spread.values.any()
    assert (
        mean.meta["uncertainty"]["flagged_windows_A"] == [] and mean.meta["uncertainty"]["first_layer_mean_spread"] == 0
    )


def test_registry_ships_ensembles_by_name(tmp_path, members):
    import shutil

    for k, m in enumerate(members[:2]):
        shutil.copy(m, tmp_path / f"unet-m{k}.pt")
    write_ensemble(tmp_path / "unet-ens.ensemble.json", [tmp_path / "unet-m0.pt", tmp_path / "unet-m1.pt"])
    assert json.loads((tmp_path / "unet-ens.ensemble.json").read_text())["members"] == ["unet-m0.pt", "unet-m1.pt"]
    shutil.copy(members[2], tmp_path / "unet-solo.pt")
    shipped = {m.name: m.is_ensemble for m in list_models(tmp_path)}
    assert shipped == {"unet-ens": True, "unet-solo": False}  # members are listed with their ensemble only
    assert predict.default_model_name(tmp_path) == "unet-solo"  # a single model unless DEFAULT names the ensemble
    ens = load_predictor("unet-ens", directory=tmp_path)
    assert isinstance(ens, EnsemblePredictor) and [m.name for m in ens.members] == ["unet-m0", "unet-m1"]
    assert "unet-ens" in predict.models_text(directory=tmp_path)


def test_cli_writes_the_uncertainty_files_and_summary(tmp_path, slab, members, capsys):
    from hydrolayer.grids import Grid
    from hydrolayer.structures import write_structure

    path = write_structure(slab, tmp_path / "slab.extxyz")
    (tmp_path / "ens").mkdir()
    manifest = write_ensemble(tmp_path / "ens" / "ensemble.json", members)
    assert (
        main(["predict", str(path), "--model", str(manifest), "--out", str(tmp_path / "out"), "--precision", "float32"])
        == 0
    )
    captured = capsys.readouterr()
    out = captured.out
    lines = [x for x in out.splitlines() if x.startswith("uncertainty (3 members): mean spread ")]
    assert len(lines) == 1 and "first layer (1-3 Å)" in lines[0] and "windows flagged" in lines[0]
    for name in ("water.cube", "water.npz", "uncertainty.cube", "uncertainty.npz", "uncertainty.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    spread, mean = Grid.read_npz(tmp_path / "out" / "uncertainty.npz"), Grid.read_npz(tmp_path / "out" / "water.npz")
    assert spread.channels == ("spread",) and spread.values.shape == mean.values.shape
    assert mean.meta["uncertainty"]["windows"] and "flagged_windows_A" in spread.meta["uncertainty"]
    # the out-of-domain warning names the flagged windows (on stderr), or says nothing when none is flagged
    flagged = mean.meta["uncertainty"]["flagged_windows_A"]
    warned = [x for x in captured.err.splitlines() if "the ensemble disagrees" in x]
    assert len(warned) == (1 if flagged else 0)
    if flagged:
        x0, y0 = flagged[0]
        assert f"({x0:.1f}, {y0:.1f})" in warned[0] and f"in {len(flagged)} of" in warned[0]


def test_bad_manifests_fail_in_one_line(tmp_path, slab, members, tiny_member, capsys):
    from hydrolayer.structures import write_structure

    path = write_structure(slab, tmp_path / "slab.extxyz")
    other = tiny_member(tmp_path / "wide.pt", seed=9, sigma=0.7)
    cases = {
        "missing": ({"members": [str(members[0]), "gone.pt"]}, "member gone.pt not found"),
        "mismatch": ({"members": [str(members[0]), str(other)]}, "members do not match.*sigma 0.7"),
        "empty": ({"members": []}, 'needs "members"'),
    }
    for name, (doc, message) in cases.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        out = tmp_path / f"out-{name}"
        assert main(["predict", str(path), "--model", str(tmp_path / f"{name}.json"), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("hydrolayer: error: ") and f"{name}.json" in err, err
        assert re.search(message, err), err
        assert not out.exists()
    (tmp_path / "garbled.json").write_text("{not json")
    with pytest.raises(InputError, match="garbled.json: not an ensemble manifest"):
        load_predictor(tmp_path / "garbled.json")


def test_train_an_ensemble_with_bootstrap_and_resume(toy, tiny, tmp_path):
    from hydrolayer.models import load_model
    from hydrolayer.train import fit_ensemble

    db, cache = toy
    cfg = tiny(cache, loss="l1", epochs=2, split_fractions=(0.75, 0.25, 0.0))
    out = tmp_path / "ens"
    killed = fit_ensemble(db, out, cfg, members=2, bootstrap=True, progress=False, stop_after=1)
    assert killed.get("stopped") and not (out / "ensemble.json").exists()
    with pytest.raises(InputError, match="already there"):
        fit_ensemble(db, out, cfg, members=2, progress=False)
    assert main(["train", "--db", str(db), "--out", str(out), "--resume", "--no-progress"]) == 0
    splits = [json.loads((out / f"member-{k}" / "split.json").read_text()) for k in range(2)]
    base = json.loads((out / "split.json").read_text())
    assert splits[0]["train"] != splits[1]["train"]  # different bootstrap draws of the training simulations
    for s in splits:
        assert (s["val"], s["test"], s["named"]) == (base["val"], base["test"], base["named"])
        assert set(s["train"]) <= set(base["train"]) and len(s["train"]) == len(base["train"])
    for k in range(2):
        _, meta = load_model(out / f"member-{k}" / "model.pt")
        assert meta["training"]["split"]["train"] == splits[k]["train"] and meta["train_config"]["seed"] == 1 + k
    assert len((out / "member-0" / "l1" / "metrics.jsonl").read_text().splitlines()) == 2  # resumed, not restarted
    ens = load_predictor(out / "ensemble.json")
    assert isinstance(ens, EnsemblePredictor) and len(ens.members) == 2
    assert json.loads((out / "ensemble.json").read_text())["members"] == ["member-0/model.pt", "member-1/model.pt"]


def test_train_ensemble_command_line(toy, tmp_path):
    db, cache = toy
    f = tmp_path / "c.yaml"
    f.write_text(
        f"channels: [2, 4, 4, 4]\nthreads: 1\nloss: l1\nwindows_per_interface: 1\nbatch_size: 2\nmax_val_windows: 2\n"
        f"cache_dir: {cache}\n"
    )
    args = [
        "train",
        "--db",
        str(db),
        "--out",
        str(tmp_path / "e"),
        "--config",
        str(f),
        "--epochs",
        "1",
        "--no-progress",
    ]
    assert main(args + ["--bootstrap"]) == 2  # --bootstrap alone: needs --ensemble
    assert main(args + ["--ensemble", "0"]) == 2 and not (tmp_path / "e").exists()
    assert main(args + ["--ensemble", "2"]) == 0
    doc = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    assert doc["bootstrap"] is False and doc["seeds"] == [0, 1] and len(doc["members"]) == 2
    a, b = (json.loads((tmp_path / "e" / f"member-{k}" / "split.json").read_text()) for k in range(2))
    assert a["train"] == b["train"]  # without --bootstrap: one training set, different seeds
    assert main(["train", "--db", str(db), "--out", str(tmp_path / "e"), "--resume", "--ensemble", "2"]) == 2
