"""Evaluation on the synthetic toy database of ``test_data.make_synthetic_db``.

What this checks: the report files (report.md with the Table-1 layout, metrics.csv,
metrics.json, figures incl. attention), the rows (test split, the named CO3-vacancy and
aragonite toys), the noise floor and the baseline computed as documented (recomputed here
independently from the window bank), MAE within 3 Å of the defect site only, the Å^-3
conversion, and peak finding on an analytic profile. What it does not check: whether the
numbers are good (the networks are tiny and trained for one epoch on toy data).
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hydrolayer.descriptors")

from test_data import RHO_BULK, analytic_density, make_synthetic_db, toy_slab  # noqa: E402

from hydrolayer import data  # noqa: E402
from hydrolayer.conventions import hydration_peaks  # noqa: E402
from hydrolayer.train import TrainConfig, fit  # noqa: E402
from hydrolayer.util import InputError  # noqa: E402


def test_hydration_peaks_sub_grid():
    z = -5 + np.arange(64) * 0.3125
    prof = 1 + 2.4 * np.exp(-((z - 2.07) ** 2) / (2 * 0.3**2)) + 0.8 * np.exp(-((z - 3.38) ** 2) / (2 * 0.3**2))
    prof[z < 1] = 0
    peaks = hydration_peaks(z, prof)
    assert [round(p["z"], 1) for p in peaks] == [2.1, 3.4]
    assert abs(peaks[0]["z"] - 2.07) < 0.03 and abs(peaks[0]["height"] - 3.4) < 0.05


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    db = make_synthetic_db(root, n_train=4)
    common = dict(
        channels=(2, 4, 4, 4),
        epochs=1,
        batch_size=2,
        windows_per_interface=1,
        max_val_windows=2,
        cache_dir=str(root / "cache"),
        seed=0,
        threads=1,
    )
    fit(db, root / "unet", TrainConfig(loss="l1", **common), progress=False)
    fit(db, root / "att", TrainConfig(model="attention-unet", loss="l2", **common), progress=False)
    return db, root


def test_evaluate_cli_writes_the_report(runs, tmp_path):
    from hydrolayer import store
    from hydrolayer.cli import main

    db, root = runs
    out = tmp_path / "report"
    assert main(["evaluate", str(root / "unet"), str(root / "att"), "--db", str(db), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| | windows | MD noise floor | height-only baseline | U-Net (L1) | Att U-Net (L2) |" in md
    for title in ("test set (1 simulation)", "calcite (10-14) with a CO3 2- vacancy", "aragonite (010)"):
        assert f"| {title} |" in md
    assert "## Unit-cell averaging of the pristine references" in md
    assert "| aragonite (010) | 2x3 |" in md
    # the paper's Table 1 beside ours, in Å^-3: each model's value and the paper's for its column
    paper_part = md[md.index("## The paper's Table 1 beside ours") :]
    paper_rows = [
        line for line in paper_part.splitlines() if line.startswith("| calcite (10-14) with a CO3 2- vacancy | ")
    ]
    assert len(paper_rows) == 1 and "paper U-Net (c)" in paper_part
    assert "| 2.729e-03 |" in paper_rows[0]  # the paper's U-Net (c) at the CO3 2- vacancy, beside ours
    res = json.loads((out / "metrics.json").read_text())
    names = [g["name"] for g in res["groups"]]
    # the test row is drawn at random (unique ids are random): it has a defect group iff Ca was removed from it
    test_rows = [r for r in store.iter_rows(db) if r.unique_id in res["groups"][0]["simulations"]]
    test_defects = any(not str(r.get("defects")).startswith("0 ") for r in test_rows)
    assert names == ["test set"] + ["test set near defects"] * test_defects + [
        "calcite-104 CO3 vacancy",
        "aragonite-010",
    ]
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("row,column,mae_rho_over_rho_bulk,mae_A^-3")
    assert len(csv_lines) == 1 + 4 * len(names)  # groups x (noise floor, baseline, 2 models)
    figs = {p.name for p in (out / "figures").iterdir()}
    assert {
        "learning_curves.png",
        "profile_aragonite-010.png",
        "xz_aragonite-010.png",
        "slices_aragonite-010.png",
        "attention_aragonite-010_att-u-net-l2.png",
    } <= figs
    assert not any(f.startswith("attention_") and "u-net-l1" in f and "att" not in f for f in figs)

    for g in res["groups"]:
        for col in [g["noise_floor"], g["baseline"], *g["models"].values()]:
            assert col["mae_A3"] == pytest.approx(col["mae"] * RHO_BULK, rel=1e-6)
            assert col["mae"] > 0


def test_noise_floor_baseline_and_defect_region_as_documented(runs, tmp_path):
    from hydrolayer.evaluate import evaluate

    db, root = runs
    res = evaluate([root / "unet"], db, tmp_path / "r", figures=False, log=lambda m: None)
    groups = {g["name"]: g for g in res["groups"]}
    base = json.loads((root / "unet" / "baseline.json").read_text())
    # pristine aragonite toy: every window of the fixed grid, both faces
    uid = groups["aragonite-010"]["simulations"][0]
    bank = data.build_bank(db, [uid], tmp_path / "c")
    plan = bank.grid_plan()
    _, h = bank.batch(plan)
    ref = 0.5 * (h[:, 0] + h[:, 1])
    g = groups["aragonite-010"]
    assert g["windows"] == len(plan) == 4
    assert g["noise_floor"]["mae"] == pytest.approx(0.5 * np.abs(h[:, 0] - h[:, 1]).mean(), rel=1e-5)
    assert g["baseline"]["mae"] == pytest.approx(np.abs(ref - np.asarray(base["profile"])).mean(), rel=1e-5)
    # the pristine toy is averaged over its 2 x 3 unit cells; the same windows without averaging
    u = g["unit_cell_averaging"]
    assert list(u["unit_cells"].values()) == [[2, 3]]
    raw = data.build_bank(db, [uid], tmp_path / "c", unit_cells=False)
    _, rh = raw.batch(plan)
    before = 0.5 * np.abs(rh[:, 0] - rh[:, 1]).mean()
    after = 0.5 * np.abs(h[:, 0] - h[:, 1]).mean()  # the averaged bank's halves, computed here
    assert u["noise_floor_before"]["mae"] == pytest.approx(before, rel=1e-5)
    assert u["noise_floor_after"]["mae"] == pytest.approx(after, rel=1e-5)
    # the report's unit-cell averaging table shows these two numbers, in this order, and their ratio
    rows = [
        r for r in (tmp_path / "r" / "report.md").read_text().splitlines() if r.startswith(f"| {g['title']} | 2x3 |")
    ]
    assert len(rows) == 1, rows
    cols = [c.strip() for c in rows[0].strip().strip("|").split("|")]
    assert float(cols[2].split()[0]) == pytest.approx(before, abs=1e-4)
    assert float(cols[3].split()[0]) == pytest.approx(after, abs=1e-4)
    assert float(cols[4]) == pytest.approx(before / after, abs=0.01)
    # independent voxel noise, smoothed over less than a 5 Å cell: close to sqrt(6) = 2.45 lower
    assert 2.0 < before / g["noise_floor"]["mae"] < 2.7
    # the averaged reference is the mean of the unaveraged one over the six translations
    assert ref.mean() == pytest.approx(0.5 * (rh[:, 0] + rh[:, 1]).mean(), rel=0.02)
    # CO3-vacancy toy: only voxels within 3 Å of the recorded site, in one window centred on it
    d = groups["calcite-104 CO3 vacancy"]
    uid = d["simulations"][0]
    bank = data.build_bank(db, [uid], tmp_path / "c")
    top = [i for i, e in enumerate(bank.entries) if e.interface.face == "top"][0]
    p = bank.centred_plan(top, np.asarray(bank.entries[top].meta["defect_sites"]))[0]
    mask = bank.defect_mask(*p)
    _, h = bank.batch([p])
    assert d["windows"] == 1 and d["voxels"] == int(mask.sum())
    assert d["noise_floor"]["mae"] == pytest.approx(0.5 * np.abs(h[0, 0] - h[0, 1])[mask].mean(), rel=1e-5)
    assert "within 3 A" in d["region"]


def test_evaluate_errors(tmp_path, runs):
    from hydrolayer.evaluate import evaluate

    db, _ = runs
    with pytest.raises(InputError, match="no such run"):
        evaluate([tmp_path / "missing"], db, tmp_path / "r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="summary.json"):
        evaluate([tmp_path / "empty"], db, tmp_path / "r")


def test_a_lone_checkpoint_carries_its_split_and_baseline(runs, tmp_path):
    from hydrolayer.evaluate import evaluate

    db, root = runs
    a = evaluate([root / "unet"], db, tmp_path / "a", figures=False, log=lambda m: None)
    b = evaluate([root / "unet" / "l1" / "best.pt"], db, tmp_path / "b", figures=False, log=lambda m: None)
    assert [g["name"] for g in a["groups"]] == [g["name"] for g in b["groups"]]
    for ga, gb in zip(a["groups"], b["groups"]):
        assert ga["baseline"] == gb["baseline"] and ga["noise_floor"] == gb["noise_floor"]
        assert list(ga["models"].values())[0]["mae"] == pytest.approx(list(gb["models"].values())[0]["mae"], rel=1e-6)


def test_simulations_finished_after_the_split_are_reported_as_new(runs, tmp_path):
    import shutil

    from hydrolayer import store
    from hydrolayer.evaluate import evaluate

    db, root = runs
    shutil.copy(db, tmp_path / "toy.db")
    shutil.copytree(db.parent / "grids", tmp_path / "grids")
    db2 = tmp_path / "toy.db"
    atoms, sites = toy_slab(remove=(1, 4))
    cell = np.asarray(atoms.cell)
    rho = analytic_density(atoms, cell, tuple(int(round(L / 0.3)) for L in cell.diagonal()), 12.0, 21.0)
    kvp = dict(
        surface="calcite-104",
        defects="2 Ca removed",
        rho_bulk=RHO_BULK,
        z_top=21.0,
        z_bottom=12.0,
        net_charge=0,
        production_ps=100.0,
        seed=99,
    )
    store.write_simulation(db2, atoms, rho, rho, cell, kvp, {"defect_sites": sites})
    new_uid = list(store.iter_rows(db2, seed=99))[0].unique_id
    split = json.loads((root / "unet" / "split.json").read_text())
    assert new_uid not in split["train"] + split["val"] + split["test"]
    res = evaluate([root / "unet"], db2, tmp_path / "r", figures=False, log=lambda m: None)
    groups = {g["name"]: g for g in res["groups"]}
    assert groups["new simulations"]["simulations"] == [new_uid]
    assert groups["new simulations near defects"]["windows"] >= 1
    assert "finished after the split" in groups["new simulations"]["title"]
    # identical halves: the noise floor of the new row is 0
    assert groups["new simulations"]["noise_floor"]["mae"] == 0
    # --max-row: the database as it was before the new row: the same groups as on the old file
    new_id = list(store.iter_rows(db2, seed=99))[0].id
    then = evaluate([root / "unet"], db2, tmp_path / "r0", figures=False, log=lambda m: None, max_row=new_id - 1)
    old = evaluate([root / "unet"], db, tmp_path / "r1", figures=False, log=lambda m: None)
    assert [g["name"] for g in then["groups"]] == [g["name"] for g in old["groups"]]
    assert [g["models"] for g in then["groups"]] == [g["models"] for g in old["groups"]]
    assert then["command"].endswith(f"--max-row {new_id - 1} --out {tmp_path / 'r0'}")
    assert f"rows 1-{new_id - 1}" in (tmp_path / "r0" / "report.md").read_text()


def test_ship_tool_writes_a_card_from_the_measured_numbers(runs, tmp_path):
    """tools/ship_model.py: the card quotes the evaluation's numbers and command, the
    checkpoint lands in the registry and loads as the default model."""
    import importlib.util
    from pathlib import Path

    from hydrolayer.evaluate import evaluate
    from hydrolayer.predict import default_model_name, list_models

    db, root = runs
    res = evaluate([root / "unet"], db, tmp_path / "r", figures=False, log=lambda m: None)
    spec = importlib.util.spec_from_file_location(
        "ship_model", Path(__file__).resolve().parents[1] / "tools" / "ship_model.py"
    )
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    dest = tmp_path / "pretrained"
    assert (
        ship.main(
            [
                str(root / "unet"),
                "--eval",
                str(tmp_path / "r"),
                "--db",
                str(db),
                "--name",
                "unet-toy",
                "--dest",
                str(dest),
                "--default",
            ]
        )
        == 0
    )
    assert [m.name for m in list_models(dest)] == ["unet-toy"] and default_model_name(dest) == "unet-toy"
    text = (dest / "unet-toy.md").read_text()
    assert res["command"] in text
    assert text.splitlines()[0].endswith("simulations of calcite (10-14) (c)")  # its facets and paper column
    g = res["groups"][0]
    m = list(g["models"].values())[0]
    assert f" | {g['windows']} | {g['noise_floor']['mae']:.4f} " in text and f"| {g['title']}: row" in text
    assert f"{m['mae']:.4f} ({m['mae_A3']:.2e})" in text
    u = {g["name"]: g for g in res["groups"]}["aragonite-010"]["unit_cell_averaging"]
    assert (
        f"- aragonite (010): 2x3 unit cells; noise floor {u['noise_floor_before']['mae']:.4f} -> {u['noise_floor_after']['mae']:.4f}"
        in text
    )


def test_paper_columns_follow_network_and_training_data():
    from hydrolayer.evaluate import PAPER_TABLE1, paper_column

    assert paper_column({"model": "unet", "training": {"surfaces": ["calcite-104"]}}) == "U-Net (c)"
    assert (
        paper_column({"model": "attention-unet", "training": {"surfaces": ["calcite-104", "aragonite-010"]}})
        == "Att U-Net (c+a)"
    )
    assert (
        paper_column({"model": "unet"}) == "U-Net (c)"
    )  # no record of the training surfaces: calcite, as every model before v1
    # every paper cell names a column that paper_column can produce
    for row in PAPER_TABLE1.values():
        assert set(row) == {"U-Net (c)", "Att U-Net (c)", "U-Net (c+a)", "Att U-Net (c+a)"}


def test_each_columns_own_test_split_and_in_training_cells(runs, tmp_path):
    """Columns trained on different splits: the test set is the union of their test lists
    (the first run's first), and a cell whose rows a column trained on says so (the paper's
    "In training data") and is never the row's best."""
    db, root = runs
    first = json.loads((root / "unet" / "split.json").read_text())
    moved = first["train"][0]  # a training simulation of the first run, a test one of the second
    other = dict(
        first, train=first["train"][1:], test=first["test"] + [moved], train_surfaces=["calcite-104", "aragonite-010"]
    )
    (tmp_path / "other-split.json").write_text(json.dumps(other))
    cfg = dict(channels=(2, 4, 4, 4), epochs=1, batch_size=2, windows_per_interface=1, max_val_windows=2)
    cfg.update(
        cache_dir=str(root / "cache"), seed=0, threads=1, loss="l1", split_file=str(tmp_path / "other-split.json")
    )
    cfg.update(train_surfaces=("calcite-104", "aragonite-010"))  # a (c+a) model, as far as the labels go
    fit(db, tmp_path / "other", TrainConfig(**cfg), progress=False)

    from hydrolayer.evaluate import evaluate

    res = evaluate([root / "unet", tmp_path / "other"], db, tmp_path / "report", figures=False, log=lambda *a: None)
    test = next(g for g in res["groups"] if g["name"] == "test set")
    assert sorted(test["simulations"]) == sorted(first["test"] + [moved])
    a, b = res["models"]
    assert (a, b) == ("U-Net (L1) (c)", "U-Net (L1) (c+a)")  # training data named when the columns differ in it
    assert test["models"][a].get("in_training") is True  # the first run trained on `moved`
    assert not test["models"][b].get("in_training")
    md = (tmp_path / "report" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| test set ("))
    assert row.count("in training data") == 1 and "**" not in row  # one tested column: no best marked
