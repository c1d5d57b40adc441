"""Where to simulate next (``hydrolayer.proposal``, ``hydrolayer campaign propose``) and its
retrospective check (``benchmarks/propose_retrospective.py``).

Tiny untrained members (tests/conftest.py) on small calcite (10-14) slabs: the ranking is a
property of the machinery (every score recomputed independently from
``predict_density(..., uncertainty=True)``), not of the weights.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hydrolayer.descriptors")

from hydrolayer import proposal  # noqa: E402
from hydrolayer.cli import main  # noqa: E402
from hydrolayer.registry import write_ensemble  # noqa: E402
from hydrolayer.util import InputError  # noqa: E402

# fixtures toy, tiny_member and members: tests/conftest.py

CANDIDATES = """\
candidates:
  - surface: calcite-104
    size: [3, 2]
    layers: 2
    pairs: [1, 2]
    placements: {random: [1, 2], adjacent: [1]}
defaults: {equil_ps: 20}
"""
SIMULATED = proposal.Candidate("calcite-104", (3, 2), 2, 2, "random", 2)  # the one row of the test database


@pytest.fixture(scope="module")
def setup(tmp_path_factory, members):
    """A candidates file, a 3-member ensemble manifest and a database holding one candidate."""
    from hydrolayer import store

    root = tmp_path_factory.mktemp("propose")
    (root / "cand.yaml").write_text(CANDIDATES)
    manifest = write_ensemble(root / "ens.json", members)
    atoms = proposal.candidate_slab(SIMULATED)
    cell = np.diag([atoms.cell[0, 0], atoms.cell[1, 1], 40.0])
    halves = np.ones((2, 8, 8, 16), np.float32)
    kvp = {"rho_bulk": 1.0, "production_ps": 1.0, "seed": 1}
    store.write_simulation(root / "sims.db", atoms, halves[0], halves[1], cell, kvp)
    return root, manifest


@pytest.fixture(scope="module")
def proposed(setup):
    root, manifest = setup
    lines = []
    result = proposal.propose(
        manifest, root / "sims.db", 2, root / "next.yaml", candidates=root / "cand.yaml", log=lines.append
    )
    return result, lines


def test_candidates_enumerate_deterministically(setup):
    root, _ = setup
    a, defaults = proposal.load_candidates(root / "cand.yaml")
    b, _ = proposal.load_candidates(root / "cand.yaml")
    assert a == b and defaults == {"equil_ps": 20}
    assert [(c.pairs, c.placement, c.structure_seed) for c in a] == [
        (k, p, s) for k in (1, 2) for p, s in (("random", 1), ("random", 2), ("adjacent", 1))
    ]
    full = proposal.enumerate_candidates()
    assert full == proposal.enumerate_candidates() and len(full) == 2 * 6 * (6 + 2 + 2)
    assert {(c.surface, c.size, c.layers) for c in full} == {("calcite-104", (5, 3), 4), ("aragonite-010", (5, 4), 3)}
    # the same slab twice (same seed): the same configuration key; another seed: another key
    k1 = proposal.configuration_key(proposal.candidate_slab(a[0]), a[0].size)
    assert k1 == proposal.configuration_key(proposal.candidate_slab(a[0]), a[0].size)
    assert k1 != proposal.configuration_key(proposal.candidate_slab(a[1]), a[1].size)


def test_ranking_follows_the_spread_and_skips_the_simulated(setup, proposed):
    from hydrolayer.inference import load_predictor
    from hydrolayer.predict import predict_density

    result, lines = proposed
    recs = {r["label"]: r for r in result["records"]}
    assert len(lines) == len(recs) == 6 and all(line.startswith("[") for line in lines)
    assert recs[SIMULATED.label]["status"] == "already simulated" and recs[SIMULATED.label]["row"] == 1
    scored = [r for r in result["records"] if r["status"] == "scored"]
    ens = load_predictor(setup[1], precision="float32")
    for r in scored:  # independent recomputation: both faces, heights 0-10 Å above z_s
        c = proposal.Candidate(
            r["surface"], tuple(r["size"]), r["layers"], r["pairs"], r["placement"], r["structure_seed"]
        )
        band, wins = [], []
        for face in ("top", "bottom"):
            _, spread = predict_density(proposal.candidate_slab(c), model=ens, face=face, uncertainty=True)
            h = spread.spec.z_values() - spread.meta["surface_z"]
            band.append(spread.values[0][..., (h >= 0) & (h <= 10)].ravel())
            wins += [w["spread"] for w in spread.meta["uncertainty"]["windows"]]
        assert r["mean_spread"] == pytest.approx(np.concatenate(band).mean(), rel=1e-5)
        assert r["max_window_spread"] == pytest.approx(max(wins), rel=1e-6) and r["mean_spread"] > 0
    order = sorted(scored, key=lambda r: -r["mean_spread"])
    assert [r["rank"] for r in order] == list(range(1, len(scored) + 1))
    assert [r["label"] for r in result["chosen"]] == [r["label"] for r in order[:2]]


def test_spec_loads_and_gives_the_top_k(setup, proposed):
    from hydrolayer.campaign import expand, load_spec

    result, _ = proposed
    jobs = expand(load_spec(result["spec"]))
    assert len(jobs) == 2
    for job, r in zip(jobs, result["chosen"]):
        s = job.settings
        assert (s["surface"], s["size"], s["layers"], s["structure_seed"]) == (
            "calcite-104",
            [3, 2],
            2,
            r["structure_seed"],
        )
        want = {"pair_vacancies": r["pairs"], "both_faces": True}
        if r["placement"] != "random":
            want["placement"] = r["placement"]
        assert s["defects"] == want and s["production_ps"] == 200.0 and s["equil_ps"] == 20.0
    assert SIMULATED.label not in result["spec"].read_text()
    rows = result["scores_csv"].read_text().splitlines()
    assert len(rows) == 7 and rows[0].startswith("rank,label,")
    doc = json.loads(result["scores_json"].read_text())
    assert len(doc["candidates"]) == 6 and len(doc["members"]) == 3


def test_cli_prints_the_table_and_fails_in_one_line(setup, members, tmp_path, capsys):
    root, manifest = setup
    base = ["campaign", "propose", "--db", str(root / "sims.db"), "--candidates", str(root / "cand.yaml")]
    out = tmp_path / "spec.yaml"
    assert main(base + ["--model", str(manifest), "--top", "1", "--out", str(out), "--production-ps", "100"]) == 0
    text = capsys.readouterr().out
    assert "rank  candidate" in text and "mean spread" in text and "max window spread" in text
    assert f"spec of the top 1: {out}" in text and "1 already simulated" in text
    assert text.count("] calcite-104 3x2x2") == 6  # one progress line per candidate
    job = __import__("hydrolayer.campaign", fromlist=["expand"])
    assert job.expand(job.load_spec(out))[0].settings["production_ps"] == 100.0
    for bad in (["--model", str(members[0]), "--top", "1"], ["--model", str(manifest), "--top", "0"]):
        target = tmp_path / "no.yaml"
        assert main(base + bad + ["--out", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("hydrolayer: error: "), err
        assert not list(tmp_path.glob("no*")), "nothing written"
    with pytest.raises(InputError, match="single network"):
        proposal.load_ensemble_model(members[0])


def _retro_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "propose_retrospective.py"
    spec = importlib.util.spec_from_file_location("propose_retrospective", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_retrospective_check_on_a_toy_database(toy, tiny_member, tmp_path, capsys):
    from hydrolayer import store

    retro = _retro_module()
    db, _ = toy
    rows = list(store.iter_rows(db))
    early = [r.unique_id for r in rows[:3]]
    split = {"seed": 0, "train": early[:2], "val": early[2:], "test": [], "named": {}}
    ens = write_ensemble(tmp_path / "e.json", [tiny_member(tmp_path / f"r{k}.pt", k, split=split) for k in range(2)])
    assert retro.parse_rows("2-4,6") == [2, 3, 4, 6]
    assert retro.main([str(ens), "--db", str(db), "--json", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert [r["row"] for r in res["rows"]] == [r.id for r in rows[3:]]  # after the training rows
    for r in res["rows"]:
        assert r["mean_spread"] > 0 and r["mae"] > 0 and r["noise_floor"] > 0
        assert r["excess"] == pytest.approx(r["mae"] - r["noise_floor"])
    assert res["spearman_spread_mae"] is not None and -1 <= res["spearman_spread_mae"] <= 1
    out = capsys.readouterr().out
    assert "Spearman rank correlation, spread vs MAE:" in out and out.count("calcite-104") >= 2
