"""One simulation: solvation, binning convention, a real (tiny) LAMMPS run, resume, failures."""

import json
import shutil

import numpy as np
import pytest
from ase.neighborlist import neighbor_list

from hydrolayer import store
from hydrolayer.conventions import WATER_NUMBER_DENSITY as WATER_DENSITY
from hydrolayer.density import bin_positions, first_layer_counts, split_half_noise
from hydrolayer.simulate import (
    SimulationFailed,
    SimulationParams,
    finish,
    run_simulation,
    run_worker,
    simulate,
    solvate,
)
from hydrolayer.structures import build_surface, find_waters, surface_planes

LATTICE = {"a": 4.937, "c": 17.22}


def tiny_slab(**kw):
    return build_surface("calcite-104", size=(3, 2), layers=2, lattice=LATTICE, **kw)


def tiny_params(**kw):
    base = dict(
        production_ps=0.4,
        equil_ps=0.5,
        checkpoint_ps=0.2,
        minimize_steps=100,
        gap=16.0,
        gap_tolerance=0.5,
        sample_every=20,
    )
    base.update(kw)
    return SimulationParams(**base)


# --------------------------------------------------------------------------- no LAMMPS
def test_solvate_sandwich():
    slab = build_surface("calcite-104", size=(5, 3), layers=4, lattice=LATTICE)
    sys_ = solvate(slab, gap=25.0, seed=3)
    waters = find_waters(sys_)
    n = len(waters)
    area = sys_.cell[0, 0] * sys_.cell[1, 1]
    assert (
        n == sys_.info["n_water"] == int(round(WATER_DENSITY * area * (25.0 - 2 * 1.2)))
    )  # 1 g/cm3 over gap - 2 x 1.2 Å
    assert 440 < n < 470  # the reference system had 444 for about 25 Å
    # the cell: a, b kept; c along z; Ca plane to Ca plane of the next image = gap
    np.testing.assert_allclose(sys_.cell[:2], slab.cell[:2])
    z_top, z_bottom = surface_planes(sys_)
    assert (z_bottom + sys_.cell[2, 2]) - z_top == pytest.approx(25.0, abs=1e-6)
    # no overlaps: water-slab > 1.8 Å, water O-O > 2.3 Å
    i, j, d = neighbor_list("ijd", sys_, 2.3)
    nslab = len(slab)
    assert not np.any((i >= nslab) & (j < nslab) & (d < 1.8))
    sym = np.array(sys_.get_chemical_symbols())
    oo = (i >= nslab) & (j >= nslab) & (sym[i] == "O") & (sym[j] == "O")
    assert not np.any(oo)
    # both faces wet: water above the top face and below the bottom face (within the cell)
    zo = sys_.positions[[w[0] for w in waters], 2]
    assert (zo > z_top + 2).any() and (zo < z_bottom - 2).any()
    # water already in a structure is kept as it is
    again = solvate(sys_, gap=30.0)
    assert len(again) == len(sys_) and np.allclose(again.positions, sys_.positions)


def test_binning_follows_the_cube_convention():
    cell = np.array([[4.0, 0, 0], [1.0, 5.0, 0], [0, 0, 6.0]])
    counts = np.zeros((4, 5, 6), np.int32)
    # exactly on grid point (1, 2, 3) and a hair off it; one just below the far corner
    p = np.array([1, 2, 3]) / np.array([4, 5, 6]) @ cell
    bin_positions(counts, np.array([p, p + 0.01, cell.sum(0) - 0.01]), cell)
    assert counts[1, 2, 3] == 2 and counts[0, 0, 0] == 1 and counts.sum() == 3


def test_split_half_noise_falls_with_smoothing():
    rng = np.random.default_rng(0)
    a, b = rng.poisson(3, (20, 20, 40)) / 3.0, rng.poisson(3, (20, 20, 40)) / 3.0
    noise = split_half_noise(a, b, np.diag([6.0, 6.0, 12.0]))
    assert noise[0.0] > noise[0.3] > noise[0.5] > 0


# --------------------------------------------------------------------------- real LAMMPS
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("md") / "run"
    slab = tiny_slab()
    lines = []
    res = run_simulation(slab, work, tiny_params(), progress=lines.append)
    return slab, work, res, lines


@pytest.mark.lammps
def test_tiny_simulation(tiny_run, tmp_path):
    slab, work, res, lines = tiny_run
    assert any("ns/day" in ln and "min left" in ln for ln in lines)  # progress
    h1, h2 = res.half1, res.half2
    assert h1.shape == h2.shape and h1.ndim == 3
    spacing = np.linalg.norm(res.cell, axis=1) / np.array(h1.shape)
    assert np.all(spacing <= 0.3 + 1e-9) and np.all(spacing > 0.25)
    # rho_bulk near water's number density; normalised density ~1 in the gap, ~0 in the slab
    assert 0.6 * WATER_DENSITY < res.rho_bulk < 1.4 * WATER_DENSITY
    lz = res.cell[2, 2]
    z = np.arange(h1.shape[2]) / h1.shape[2] * lz
    zt, zb = res.info["z_top"], res.info["z_bottom"]
    prof = 0.5 * (h1 + h2).mean(axis=(0, 1))
    inside = (z > zb + 0.5) & (z < zt - 0.5)
    assert prof[inside].mean() < 0.05
    mid = np.abs(((z - (zt + res.info["gap"] / 2)) + lz / 2) % lz - lz / 2) < 3.0
    assert 0.7 < prof[mid].mean() < 1.3
    # the slab: no water, time-averaged, same count as the input; planes inside the cell
    assert len(res.atoms) == len(slab) and not find_waters(res.atoms)
    assert 0 < zb < zt < lz
    # samples in both halves, every sample_every steps
    with np.load(work / "result.npz") as r:
        assert int(r["n1"]) == int(r["n2"]) == 10
    # the per-block face profiles (the equilibration record) agree with the binned density:
    # the mean water-O count 0-6 Å above the top plane, two routes (the grid's z bins are
    # nearest-point, so the band edges differ by up to half a grid step: a loose bound)
    fp = res.data["face_profiles"]
    prof_blocks = np.asarray(fp["mean_counts"])
    assert prof_blocks.shape == (len(fp["block_ps"]), 2, len(fp["edges"]) - 1) and len(fp["block_ps"]) >= 2
    assert sum(fp["block_ps"]) == pytest.approx(0.4)
    w = np.asarray(fp["block_ps"]) / sum(fp["block_ps"])
    mean_top = (w[:, None] * prof_blocks[:, 0]).sum(0)
    centres = 0.5 * (np.asarray(fp["edges"])[1:] + np.asarray(fp["edges"])[:-1])
    vox = abs(np.linalg.det(res.cell)) / h1.size
    dens = 0.5 * (h1 + h2) * res.rho_bulk * vox  # water O per voxel per sample
    band = ((z - zt) % lz > 0.15) & ((z - zt) % lz < 6.0)
    via_grid = dens[:, :, band].sum()
    via_profile = mean_top[(centres > 0.15) & (centres < 6.0)].sum()
    assert via_profile > 1 and via_profile == pytest.approx(via_grid, rel=0.25)
    assert "first_layer_drift" in res.info
    # store it
    row_id = store.write_simulation(tmp_path / "s.db", res.atoms, h1, h2, res.cell, res.info, res.data)
    row = store.get_row(tmp_path / "s.db", row_id)
    assert row.surface == "calcite-104" and row.production_ps == pytest.approx(0.4)
    assert row.data.lammps_settings and row.data.lammps_version
    assert np.asarray(row.data.face_profiles["mean_counts"]).shape == prof_blocks.shape
    # hydrolayer db show: the first-layer count of each face per block, from the stored profiles
    shown = store.format_row(tmp_path / "s.db", row_id).splitlines()
    i = next(k for k, line in enumerate(shown) if line.strip().startswith("t (ps)"))
    table = [[float(v) for v in line.split()] for line in shown[i + 1 :]]
    expected = first_layer_counts(prof_blocks)
    np.testing.assert_allclose([r[1:] for r in table], expected, atol=0.05)
    np.testing.assert_allclose([r[0] for r in table], np.cumsum(fp["block_ps"]), atol=0.05)


@pytest.mark.lammps
def test_failures_are_detected(tiny_run, tmp_path):
    slab, work, res, _ = tiny_run
    # gap density off bulk (tolerance made impossible): refused, nothing to store
    with pytest.raises(SimulationFailed, match="gap_density"):
        finish(work, slab, tiny_params(gap_tolerance=1e-6))
    # slab "dissolving": restart production from the equilibrated state with a 0.01 Å limit
    d = tmp_path / "dissolve"
    shutil.copytree(work, d, ignore=shutil.ignore_patterns("result.npz", "prod.restart", "accumulators.npz", "*.lock"))
    job = json.loads((d / "job.json").read_text())
    job["params"]["max_displacement"] = 0.01
    (d / "job.json").write_text(json.dumps(job))
    (d / "state.json").write_text(json.dumps({"stage": "equil_done", "prod_steps": 0}))
    with pytest.raises(SimulationFailed, match="slab_dissolving"):
        run_worker(d, tiny_params(), progress=None)
    assert not (d / "result.npz").exists()
    # a LAMMPS error (bad command in the settings)
    job["settings"] = job["settings"] + ["pair_coeff 1 9 lj/cut 1.0 1.0"]
    job["params"]["max_displacement"] = 5.0
    (d / "job.json").write_text(json.dumps(job))
    with pytest.raises(SimulationFailed, match="lammps_error"):
        run_worker(d, tiny_params(), progress=None)


@pytest.mark.lammps
def test_resume_after_interruption(tmp_path):
    """Interrupt during production, run again: it resumes from the checkpoint and the
    accumulators carry on (the same number of samples as an uninterrupted run)."""
    work = tmp_path / "run"
    slab = tiny_slab(pair_vacancies=1)
    params = tiny_params(production_ps=0.6, equil_ps=0.3)

    class Stop(Exception):
        pass

    def stop_at_first_checkpoint(line):
        if line.startswith("production 0.2/"):
            raise Stop

    with pytest.raises(Stop):
        run_simulation(slab, work, params, progress=stop_at_first_checkpoint)
    state = json.loads((work / "state.json").read_text())
    assert state["stage"] == "production" and state["prod_steps"] == 200
    lines = []
    row = simulate(slab, tmp_path / "s.db", params, workdir=work, progress=lines.append)
    assert not any("minimised" in ln for ln in lines)  # no equilibration again
    assert lines[0].startswith("production 0.4/")
    with np.load(work / "result.npz") as r:
        assert int(r["n1"]) + int(r["n2"]) == 30
    r = store.get_row(tmp_path / "s.db", row)
    assert r.defects != "pristine" and len(r.data.defect_sites) == 2  # a Ca and a CO3


def test_cli_simulate_user_errors(tmp_path, capsys):
    from hydrolayer.cli import main

    assert main(["simulate", str(tmp_path / "missing.extxyz"), "--db", str(tmp_path / "s.db")]) == 2
    assert "file not found" in capsys.readouterr().err
    slab = tiny_slab()
    slab.write(tmp_path / "slab.extxyz")
    assert main(["simulate", str(tmp_path / "slab.extxyz"), "--db", str(tmp_path / "s.db"), "--ps", "-1"]) == 2
    assert "--ps must be positive" in capsys.readouterr().err
    assert main(["relax-bulk", "quartz", "--dry-run"]) == 2
    assert "unknown polymorph" in capsys.readouterr().err
