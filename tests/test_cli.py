"""The command line as a user meets it: a real subprocess, exit codes, stderr, files left."""

import subprocess
import sys

import numpy as np
import pytest

from hydrolayer.cli import main
from hydrolayer.structures import build_surface, write_structure


def run(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "hydrolayer", *map(str, args)], cwd=cwd, capture_output=True, text=True
    )


def test_build_and_describe(tmp_path):
    r = run(
        "surface",
        "build",
        "calcite-104",
        "--size",
        "3x2",
        "--layers",
        "3",
        "--pair-vacancies",
        "1",
        "--seed",
        "2",
        "-o",
        "s.extxyz",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    r = run("describe", "s.extxyz", "-o", "d.npz", "--picture", "d.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "d.npz") as z:
        assert z["values"].shape[0] == 3 and list(z["channels"]) == ["C", "O", "Ca"]
    assert (tmp_path / "d.png").stat().st_size > 1000
    r = run("describe", "s.extxyz", "-o", "w.cube", "--window", "1.5,2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.glob("w.*.cube")) == ["w.C.cube", "w.Ca.cube", "w.O.cube"]


def test_vacancy_and_formats(tmp_path):
    from hydrolayer.structures import read_structure

    r = run(
        "surface",
        "build",
        "calcite-104",
        "--size",
        "3x2",
        "--layers",
        "3",
        "--vacancy",
        "CO3",
        "--seed",
        "5",
        "-o",
        "v.cif",
        cwd=tmp_path,
    )
    assert r.returncode == 0 and "net charge +2 e" in r.stdout
    # the CIF holds the slab the library builds: same atoms, species, cell and positions
    back = read_structure(tmp_path / "v.cif")
    ref = build_surface("calcite-104", size=(3, 2), layers=3, vacancy="CO3", seed=5)
    assert len(back) == len(ref) == len(build_surface("calcite-104", size=(3, 2), layers=3)) - 4  # C + 3 O gone
    assert sorted(back.get_chemical_symbols()) == sorted(ref.get_chemical_symbols())
    np.testing.assert_allclose(back.cell.cellpar(), ref.cell.cellpar(), atol=1e-3)
    # CIF keeps fractional coordinates (atoms may be re-wrapped): match every atom modulo the cell
    d = back.get_scaled_positions()[:, None, :] - ref.get_scaled_positions()[None, :, :]
    d = (d - np.round(d)) @ ref.cell[:]
    dist = np.linalg.norm(d, axis=-1)
    same = np.array(back.get_chemical_symbols())[:, None] == np.array(ref.get_chemical_symbols())[None, :]
    dist[~same] = np.inf
    assert dist.min(axis=1).max() < 1e-3 and len(set(dist.argmin(axis=1))) == len(ref)


@pytest.mark.parametrize("cmd", [[], ["surface", "build"], ["describe"]])
def test_help_shows_a_worked_example(tmp_path, cmd):
    r = run(*cmd, "--help", cwd=tmp_path)
    assert r.returncode == 0 and "example" in r.stdout and "hydrolayer " in r.stdout.split("example", 1)[1]


def _slab_file(tmp_path):
    path = tmp_path / "ok.extxyz"
    write_structure(build_surface("calcite-104", size=(2, 1), layers=2), path)
    return path


BAD_INPUTS = {
    "missing file": (lambda d: d / "nope.cif", "file not found"),
    "unknown format": (lambda d: (d / "a.qqq").write_text("x") and d / "a.qqq", "unknown structure format"),
    "garbled": (
        lambda d: (d / "g.extxyz").write_text("5\nLattice=\n Ca 0 0\n") and d / "g.extxyz",
        "cannot read structure",
    ),
    "no cell": (
        lambda d: (d / "m.xyz").write_text("2\n\nCa 0 0 0\nC 0 0 3\n") and d / "m.xyz",
        "no periodic lateral cell",
    ),
    "elements": (
        lambda d: (
            (d / "e.xyz").write_text('2\nLattice="9 0 0 0 9 0 0 0 30" pbc="T T T"\nFe 0 0 1\nCa 0 0 4\n')
            and d / "e.xyz"
        ),
        "unsupported elements Fe",
    ),
    "overlap": (
        lambda d: (
            (d / "o.xyz").write_text('2\nLattice="9 0 0 0 9 0 0 0 30" pbc="T T T"\nCa 0 0 1\nC 0 0 1.2\n')
            and d / "o.xyz"
        ),
        "overlapping atoms",
    ),
    "not a slab": (
        lambda d: (
            (d / "b.xyz").write_text('2\nLattice="9 0 0 0 9 0 0 0 4" pbc="T T T"\nCa 0 0 1\nC 0 0 3\n') and d / "b.xyz"
        ),
        "not a slab",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, case):
    make, msg = BAD_INPUTS[case]
    path = make(tmp_path)
    before = set(tmp_path.iterdir())
    r = run("describe", path, "-o", "out.npz", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0] and path.name in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert set(tmp_path.iterdir()) == before  # no output, no temporary left behind


def test_traceback_flag(tmp_path):
    r = run("--traceback", "describe", tmp_path / "nope.cif", "-o", "o.npz", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_bad_arguments_are_one_line(tmp_path):
    r = run("surface", "build", "calcite-104", "--size", "5by3", "-o", "x.xyz", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "5by3" in r.stderr
    r = run("surface", "build", "quartz-001", "-o", "x.xyz", cwd=tmp_path)
    assert r.returncode == 2 and "quartz-001" in r.stderr
    slab = _slab_file(tmp_path)
    r = run("describe", slab, "-o", "d.txt", cwd=tmp_path)
    assert r.returncode == 2 and "d.txt" in r.stderr and not (tmp_path / "d.txt").exists()
    r = run("describe", slab, "-o", "missing_dir/d.npz", cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run("describe", slab, "-o", "d.npz", "--sigma", "-1", cwd=tmp_path)
    assert r.returncode == 2 and "--sigma" in r.stderr and not (tmp_path / "d.npz").exists()


def test_relax_bulk_dry_run_runs_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from hydrolayer import simulate

    before = simulate.LATTICES_FILE.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main(["relax-bulk", "calcite", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "nothing run" in out and "1440 atoms" in out
    assert simulate.LATTICES_FILE.read_bytes() == before and not list(tmp_path.iterdir())
