"""Tests for hydrolayer.match and ``hydrolayer match``: the registration recovers a known
offset, rotation and height from a synthetic map made from an MD density of the database;
the ranking puts the right polymorph first; the df forward model; candidate parsing; bad
input gives one line, exit 2 and nothing written."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from hydrolayer import match, store
from hydrolayer.util import InputError

ROOT = Path(__file__).resolve().parents[1]
DB = ROOT / "data" / "simulations.db"
EXAMPLE = ROOT / "examples" / "afm" / "calcite-co3-vacancy-df.gwy"
needs_db = pytest.mark.skipif(not store.database_exists(DB), reason="data/simulations.db (or data/rows/) not present")


def _md(row: int, which: str = "mean"):
    """The MD density of a row (mean or one half) as a Grid with its atoms, and as a
    Simulated "candidate" (the MD itself as the forward model)."""
    from hydrolayer import store
    from hydrolayer.afm import sta_force, surface_z_of
    from hydrolayer.grids import Grid, GridSpec

    r = store.get_row(DB, row)
    d = store.load_density(DB, r)
    v = 0.5 * (d["half1"] + d["half2"]) if which == "mean" else d[which]
    atoms = r.toatoms()
    atoms.info["defect_sites"] = json.dumps(r.data.get("defect_sites", []))
    g = Grid(GridSpec(d["cell"], v.shape), v, ("water",), units="rho/rho_bulk", atoms=atoms)
    zs, _ = surface_z_of(g)
    sim = match.Simulated(
        match.Candidate(f"row{row}", g.atoms, (5.0, 8.0)),
        np.asarray(sta_force(g, units="nN").channel("Fz"), float),
        g.spec,
        zs,
    )
    return g, sim


def _wrapped_distance(a, b, cell2):
    f = (np.asarray(a) - np.asarray(b)) @ np.linalg.inv(cell2)
    f -= np.round(f)
    return float(np.linalg.norm(f @ cell2))


@pytest.fixture(scope="module")
def predictor():
    import torch

    torch.set_num_threads(1)
    from hydrolayer.predict import load_predictor

    return load_predictor()


# ------------------------------------------------------------------ registration
@needs_db
@pytest.mark.parametrize("quantity", ["df", "force"])
def test_registration_recovers_offset_rotation_height(quantity):
    """A map from the first half of MD row 14 (CO3 vacancy), matched against the second
    half (independent MD noise): the known registration comes back."""
    g1, _ = _md(14, "half1")
    _, sim2 = _md(14, "half2")
    truth = dict(height=3.4, angle=-1.7, offset=(13.2, 5.9))
    meas = match.synthetic_measurement(
        g1,
        truth["height"],
        shape=(72, 72),
        pixel_size=0.42,
        angle=truth["angle"],
        offset=truth["offset"],
        blur=0.4,
        snr=5,
        drift=1.0,
        quantity=quantity,
        amplitude=0.3,
        gain=30.0 if quantity == "df" else 1.0,
        rng=3,
    )
    prep = match.prepare(meas)
    reg = match.register(prep, sim2, heights=(1.5, 7.0), quantity=quantity)
    assert abs(reg.height - truth["height"]) <= 0.3
    assert abs(reg.angle - truth["angle"]) <= 0.5
    # the map centre's cell point, up to a lattice vector of the 5x3 cell
    assert _wrapped_distance(reg.offset, truth["offset"], sim2.cell2) < 0.5
    assert reg.score > 0.7  # SNR 5 and the two halves' own MD noise
    # the vacancy is located where the true registration puts it: within 1 Å
    site = np.asarray(json.loads(g1.atoms.info["defect_sites"])[0]["position"][:2])
    truth_reg = match.Registration("t", 1, truth["height"], truth["offset"], truth["angle"], 0, None, 0, None, 1)
    want = match._to_map(sim2, prep, truth_reg, site)[:, 2:]
    got = np.array([[d["x_A"], d["y_A"]] for d in reg.defects])
    assert len(want) and len(got) == len(want)
    assert np.linalg.norm(got[:, None] - want[None], axis=-1).min(axis=1).max() < 1.0


@needs_db
def test_a_3d_stack_is_matched_as_a_whole():
    g1, _ = _md(16, "half1")
    _, sim2 = _md(16, "half2")
    meas = match.synthetic_measurement(
        g1,
        2.6,
        shape=(64, 64),
        pixel_size=0.45,
        angle=1.0,
        offset=(4.0, 9.0),
        blur=0.4,
        snr=4,
        quantity="df",
        z_planes=[10.0, 10.5, 11.0, 11.5],
        rng=5,
    )
    assert meas.values.shape == (64, 64, 4)
    reg = match.register(match.prepare(meas), sim2, heights=(1.5, 6.0), quantity="df")
    assert abs(reg.height - 2.6) <= 0.3 and abs(reg.angle - 1.0) <= 0.5
    assert reg.simulated.shape == (64 * 64, 4)


def test_df_small_amplitude_limit_is_minus_dfdz():
    from hydrolayer.grids import GridSpec

    spec = GridSpec.orthogonal((6.0, 6.0, 20.0), (8, 8, 200), origin=(0, 0, -5.0))
    z = spec.z_values()
    fz = np.broadcast_to(np.sin(z), (8, 8, 200)).copy()
    h = np.array([2.0, 3.0])
    small = match.df_from_force(fz, spec, 0.0, h, amplitude=0.02)
    np.testing.assert_allclose(small[:, 0, 0], -np.cos(h), atol=2e-3)
    np.testing.assert_allclose(match.df_from_force(fz, spec, 0.0, h)[:, 0, 0], -np.cos(h), atol=2e-3)
    big = match.df_from_force(fz, spec, 0.0, h, amplitude=1.0)  # a weighted average: smaller than the peak
    assert np.all(np.abs(big[:, 0, 0]) < np.abs(np.cos(h)))


# ------------------------------------------------------------------ height range and noise-aware score
def _layered_sim(contrast):
    """A fake candidate: F_z = contrast(h) cos(2 pi x / 6 Å) on a 6 x 6 x 20 Å grid, h Å
    above the surface plane z = 0."""
    from hydrolayer.grids import GridSpec

    spec = GridSpec.orthogonal((6.0, 6.0, 20.0), (12, 12, 200), origin=(0, 0, -5.0))
    x = spec.points()[..., 0]
    fz = contrast(spec.z_values())[None, None, :] * np.cos(2 * np.pi * x / 6.0)
    return match.Simulated(match.Candidate("fake", None, (6.0, 6.0)), fz, spec, 0.0)


def test_contrast_ceiling_stops_where_the_model_predicts_bulk_water():
    sim = _layered_sim(lambda h: np.where(h < 4.1, 1.0, 0.05))
    assert match.contrast_ceiling(sim, 1.5, 8.0, "force", 0.0, 0.2) == pytest.approx(4.0)
    assert match.contrast_ceiling(sim, 1.5, 8.0, "force", 0.0, 0.01) == pytest.approx(8.0)
    decay = _layered_sim(lambda h: np.exp(-h / 2.0))  # 0.2 of its largest at h = 1.5 + 2 ln 5 = 4.72 Å
    assert match.contrast_ceiling(decay, 1.5, 8.0, "force", 0.0, 0.2) == pytest.approx(4.5)  # 0.25 Å steps


def test_noise_aware_fit_trusts_the_pixels_the_model_is_sure_of():
    """raw = 2 s + plane + noise, but the model is wrong on a fifth of the pixels (and its
    members say so): with the spread, the gain comes back and the likelihood is higher."""
    rng = np.random.default_rng(3)
    n = 2000
    basis = np.column_stack([np.ones(n), rng.uniform(-0.5, 0.5, (n, 2))])
    s = rng.normal(size=(n, 1))
    raw = 2.0 * s + basis @ np.array([[0.3], [1.0], [-0.5]]) + rng.normal(0, 0.1, (n, 1))
    bad = np.arange(n) < n // 5
    s_model = s.copy()
    s_model[bad] = rng.normal(size=(bad.sum(), 1))
    spread = np.where(bad, 2.0, 1e-4)[:, None]  # a^2 x 2 = 8: the variance of 2 (s - s_model)
    ll_aware, gain_aware, chi2 = match.noise_aware_fit(raw, s_model, spread, basis)
    ll_blind, gain_blind, _ = match.noise_aware_fit(raw, s_model, np.zeros_like(spread), basis)
    assert gain_aware == pytest.approx(2.0, rel=0.05)
    assert abs(gain_blind - 2.0) > 0.2  # the wrong pixels pull an unweighted fit
    assert ll_aware > ll_blind
    assert chi2 == pytest.approx(1.0, rel=0.2)


def test_likelihood_score_needs_an_ensemble():
    sim = _layered_sim(lambda h: np.ones_like(h))
    with pytest.raises(InputError, match="needs an ensemble"):
        match.ranking_key("df", "likelihood", [sim])
    with pytest.raises(InputError, match="score must be one of"):
        match.ranking_key("df", "best", [sim])
    sim.members = np.stack([sim.fz, 1.1 * sim.fz])
    r = match.Registration("fake", 0.5, 3.0, (0, 0), 0, 0, None, 1.0, None, 1.0, loglik=-2.0)
    assert match.ranking_key("df", "likelihood", [sim])(r) == 2.0
    assert match.ranking_key("df", "ncc", [sim])(r) == -0.5


def test_an_ensemble_gives_each_members_force():
    """``simulate`` with the shipped ensemble: F_z of the members' mean density, and each
    member's F_z for the spread."""
    import torch

    from hydrolayer.afm import sta_force
    from hydrolayer.predict import load_predictor, predict_density

    torch.set_num_threads(1)
    ens = load_predictor("unet-ens-c")
    cand = match.parse_candidate("calcite-104:size=4x3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = match.simulate(cand, ens)
        mean = predict_density(cand.atoms, model=ens)
    assert sim.members.shape == (len(ens.members), *sim.fz.shape)
    want = sta_force(mean, units="nN").channel("Fz")
    np.testing.assert_allclose(sim.fz, want, atol=1e-3 * np.abs(want).max())
    assert np.abs(sim.members - sim.fz).max() > 0  # the members differ


# ------------------------------------------------------------------ ranking with the model
@needs_db
def test_ranking_puts_the_right_polymorph_first(predictor):
    """A df map from MD row 17 (aragonite (001), a named test surface never used in
    training) against three polymorphs predicted by the shipped model."""
    g, _ = _md(17)
    meas = match.synthetic_measurement(
        g, 3.0, shape=(72, 72), pixel_size=0.4, angle=2.0, offset=(6.0, 3.0), blur=0.5, snr=5, drift=1.0, rng=11
    )
    cands = [match.parse_candidate(c) for c in ("calcite-104", "aragonite-001", "vaterite-010")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        regs, sims, prep = match.rank(meas, cands, predictor, heights=(2.0, 5.0), angles=(0.0, 2.0))
    assert regs[0].label == "aragonite-001"
    assert regs[0].score > regs[1].score
    assert set(sims) >= {"calcite-104", "aragonite-001", "vaterite-010"}


# ------------------------------------------------------------------ candidates
def test_candidate_syntax():
    c = match.parse_candidate("calcite-104:size=5x3,vacancy=CO3")
    assert c.atoms.info["size"] == "5x3" and "CO3 vacancy" in c.atoms.info["defects"]
    assert c.unit_cell[0] == pytest.approx(4.99, abs=0.02)
    assert len(c.variants) == 1  # the carbonate on the other glide-related site
    assert "pair" in match.parse_candidate("calcite-104:pairs=1,seed=2").atoms.info["defects"]
    auto = match.parse_candidate("aragonite-010")  # repeated to >= 20 Å a side
    assert min(np.linalg.norm(auto.atoms.cell[:2], axis=1)) >= 20.0
    with pytest.raises(InputError, match="unknown candidate option 'colour'"):
        match.parse_candidate("calcite-104:colour=red")
    with pytest.raises(InputError, match="neither a structure file nor a surface name"):
        match.parse_candidate("dolomite")


# ------------------------------------------------------------------ the command
def _run_cli(argv) -> int:
    from hydrolayer.commands.match import CLICommand

    p = argparse.ArgumentParser(prog="hydrolayer match")
    CLICommand.add_arguments(p)
    args = p.parse_args([str(a) for a in argv])
    try:
        CLICommand.run(args)
    except InputError as err:
        import sys

        print(f"hydrolayer: error: {err}", file=sys.stderr)
        return 2
    return 0


def test_command_class_layout():
    from hydrolayer.commands.match import CLICommand

    assert CLICommand.name == "match"
    assert CLICommand.__doc__.splitlines()[0] == "rank candidate surfaces against a measured AFM map"
    assert CLICommand.example.startswith("hydrolayer match ")


@pytest.mark.skipif(not EXAMPLE.exists(), reason="example measurement missing")
def test_cli_on_the_bundled_example(tmp_path, capsys):
    out = tmp_path / "match"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _run_cli([EXAMPLE, "calcite-104:vacancy=CO3", "vaterite-010", "--out", out, "--heights", "2:4.5"]) == 0
    doc = json.loads((out / "ranking.json").read_text())
    assert [r["candidate"] for r in doc["ranking"]] == ["calcite-104:vacancy=CO3", "vaterite-010"]
    assert doc["quantity"] == "df" and doc["unit"] == "Hz"
    assert doc["ranking"][0]["defects_in_map"] and doc["ranking"][0]["defects_in_map"][0]["species"] == "CO3"
    assert (out / "ranking.csv").read_text().startswith("rank,candidate,score_ncc,height_A")
    assert (out / "01-calcite-104_vacancy_CO3.png").stat().st_size > 10_000
    assert "calcite-104:vacancy=CO3" in capsys.readouterr().out


@pytest.mark.skipif(not EXAMPLE.exists(), reason="example measurement missing")
def test_readme_example_with_the_matching_model_ranks_the_right_calcite_candidate_first(tmp_path):
    """The README's match command (``--model unet-v1ca-sharp``) on the bundled example (made
    from MD row 14: a CO3 2- vacancy at 3.0 Å, rotated 2°; its truth in the .json beside
    it), among calcite's four candidates: the right one first, at the right height."""
    truth = json.loads(EXAMPLE.with_suffix(".json").read_text())
    out = tmp_path / "match"
    cands = ["calcite-104", "calcite-104:vacancy=CO3", "calcite-104:vacancy=Ca", "calcite-104:pairs=1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _run_cli([EXAMPLE, *cands, "--model", "unet-v1ca-sharp", "--out", out]) == 0
    first = json.loads((out / "ranking.json").read_text())["ranking"][0]
    assert first["candidate"] == "calcite-104:vacancy=CO3"
    assert abs(first["height_A"] - truth["height_A"]) <= 0.3


@pytest.mark.skipif(not EXAMPLE.exists(), reason="example measurement missing")
def test_cli_with_the_ensemble_and_the_noise_aware_score(tmp_path):
    out = tmp_path / "match"
    argv = [EXAMPLE, "calcite-104:vacancy=CO3", "vaterite-010", "--out", out, "--heights", "2:4.5"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _run_cli(argv + ["--model", "unet-ens-c", "--score", "likelihood", "--contrast-floor", "0"]) == 0
    doc = json.loads((out / "ranking.json").read_text())
    assert doc["model"] == "unet-ens-c" and doc["score"] == "likelihood" and doc["contrast_floor"] == 0
    assert doc["ranking"][0]["candidate"] == "calcite-104:vacancy=CO3"


def _tiny_map(tmp_path, n=8, px=0.4):
    path = tmp_path / "tiny.npy"
    np.save(path, np.random.default_rng(0).normal(size=(n, n)))
    return path


@pytest.mark.parametrize("case", ["small map", "no pixel size", "unknown element", "bad file", "bad option"])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    from hydrolayer.structures import build_surface, write_structure

    out = tmp_path / "out"
    meas = _tiny_map(tmp_path, n=60)
    args = [meas, "calcite-104", "--out", out, "--pixel-size", "0.4"]
    if case == "small map":
        args[0] = _tiny_map(tmp_path, n=8)  # 3.2 Å < one calcite cell (8.1 Å)
        want = "smaller than one surface unit cell"
    elif case == "no pixel size":
        args = args[:4]
        want = "pass --pixel-size"
    elif case == "unknown element":
        write_structure(build_surface("magnesite-104", size=(5, 3), layers=2), tmp_path / "mgco3.extxyz")
        args[1] = tmp_path / "mgco3.extxyz"
        want = "Mg"
    elif case == "bad file":
        (tmp_path / "cut.sxm").write_bytes(b":NANONIS_VERSION:\n2\n")
        args[0] = tmp_path / "cut.sxm"
        want = "SCANIT_END"
    else:
        args[1] = "calcite-104:vacancy=CO3,colour=red"
        want = "unknown candidate option"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _run_cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and want in err, err
    assert not out.exists()
