"""Campaigns: spec expansion, and a real (tiny) Dask campaign killed with SIGKILL and resumed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hydrolayer import store
from hydrolayer.campaign import campaign_status, expand, load_spec, snapshot_campaign
from hydrolayer.util import InputError

SRC = str(Path(store.__file__).resolve().parent.parent)

TINY = """\
name: test-tiny
defaults:
  size: [3, 2]
  layers: 2
  equil_ps: 0.3
  production_ps: 1.0
  checkpoint_ps: 0.2
  gap: 16
  gap_tolerance: 0.5
  lattice: {a: 4.937, c: 17.22}
runs:
  - surface: calcite-104
    defects: [pristine, {pair_vacancies: 1}]
"""


def test_expand_matrix(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("""\
runs:
  - surface: calcite-104
    defects: [pristine, {vacancy: CO3}, {pair_vacancies: 2, both_faces: true}]
    structure_seed: [1, 2]
    production_ps: 200
  - surface: [calcite-104, aragonite-010]
    size: [[4, 3], [2, 2]]
""")
    jobs = expand(load_spec(spec))
    assert len(jobs) == 3 * 2 + 2 * 2
    assert len({j.key for j in jobs}) == len(jobs)
    # keys are stable (a re-run finds the same jobs) and independent of the spec's order
    assert [j.key for j in expand(load_spec(spec))] == [j.key for j in jobs]
    j = jobs[0].settings
    assert j["equil_ps"] == 50.0 and j["temperature"] == 300.0 and j["size"] == [5, 3]


@pytest.mark.parametrize(
    "text, msg",
    [
        ("runs: []", "non-empty 'runs'"),
        ("runs:\n  - surface: calcite-104\n    colour: red", "unknown keys"),
        ("runs:\n  - surface: quartz-001", "unknown surface"),
        ("runs:\n  - surface: calcite-104\n    defects: [{vacancy: Mg}]", "vacancy must be"),
        ("runs: [", "not valid YAML"),
    ],
)
def test_bad_specs(tmp_path, text, msg):
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    with pytest.raises(InputError, match=msg):
        expand(load_spec(spec))


def _campaign(spec, db, **kw):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "hydrolayer.cli", "campaign", "run", str(spec), "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=spec.parent,
        **kw,
    )


@pytest.mark.lammps
@pytest.mark.slow
def test_sigkill_and_resume(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    db = tmp_path / "sims.db"
    jobs = expand(load_spec(spec))
    # 1. start, and SIGKILL the campaign process in the middle of production. Its workers and
    # their LAMMPS ranks die with it, but not at once: production is five checkpoints long so
    # that the kill, seen after the first, lands before the last (with two, one CI run in
    # about 300 saw the job finish first)
    proc = _campaign(spec, db)
    deadline = time.time() + 240
    killed_in = None
    while time.time() < deadline and proc.poll() is None:
        st = campaign_status(spec, db) if db.exists() else []
        if any(s["ps_done"] for s in st):
            killed_in = [s["state"] for s in st]
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed_in is not None
    time.sleep(1.0)
    # whatever was stored is complete: every row has its grid and the checksum matches
    for row in store.iter_rows(db):
        store.load_density(db, row)
    assert store.orphan_grids(db) == []
    # 2. snapshot the checkpoints and drop the work folders (a new session on a fresh clone)
    snaps = snapshot_campaign(spec, db, log=lambda *_: None)
    assert snaps and all((s / "state.json").exists() for s in snaps)
    resumed = [s.name for s in snaps if json.loads((s / "state.json").read_text())["stage"] == "production"]
    assert resumed
    shutil.rmtree(tmp_path / "work")
    # 3. run again: finishes the rest, carrying on from the snapshots
    out = _campaign(spec, db).communicate(timeout=300)[0]
    assert "FAILED" not in out, out
    st = campaign_status(spec, db)
    assert [s["state"] for s in st] == ["done", "done"], st
    rows = list(store.iter_rows(db))
    assert len(rows) == 2 and {r.job_key for r in rows} == {j.key for j in jobs}
    for row in rows:
        d = store.load_density(db, row)
        assert d["half1"].shape == d["half2"].shape
    assert store.orphan_grids(db) == []
    for key in resumed:  # no second equilibration for a job that was in production
        assert "minimised" not in (tmp_path / "work" / key / "progress.log").read_text()
    # 4. and again: nothing to do, nothing duplicated
    out = _campaign(spec, db).communicate(timeout=120)[0]
    assert "0 stored, 0 failed, 2 already done" in out
    assert len(list(store.iter_rows(db))) == 2


# --------------------------------------------------------------------------- clusters (no LAMMPS)
def test_cluster_section_checked(tmp_path):
    from hydrolayer.campaign import cluster_options, run_campaign

    spec = tmp_path / "s.yaml"
    spec.write_text(
        "cluster:\n  kind: slurm\n  partition: short\n  cores: 4\n  extra: --qos=low\nruns:\n  - surface: calcite-104\n"
    )
    opts = cluster_options(load_spec(spec), {"cores": 8, "memory": None, "walltime": "01:00:00"})
    assert opts == {"kind": "slurm", "partition": "short", "cores": 8, "walltime": "01:00:00", "extra": ["--qos=low"]}
    # the job keys ignore the cluster section: moving a spec to SLURM keeps its finished rows
    plain = tmp_path / "p.yaml"
    plain.write_text("runs:\n  - surface: calcite-104\n")
    assert [j.key for j in expand(load_spec(spec))] == [j.key for j in expand(load_spec(plain))]
    for text, msg in [
        ("cluster:\n  nodes: 3\n", "unknown keys"),
        ("cluster:\n  kind: pbs\n", "kind must be"),
        ("cluster:\n  cores: 0\n", "positive integer"),
    ]:
        spec.write_text(text + "runs:\n  - surface: calcite-104\n")
        with pytest.raises(InputError, match=msg):
            run_campaign(spec, tmp_path / "x.db")
    # a SLURM job smaller than one simulation's ranks is refused before anything is submitted
    spec.write_text("runs:\n  - surface: calcite-104\n")
    with pytest.raises(InputError, match="cannot hold one simulation"):
        run_campaign(spec, tmp_path / "x.db", slurm=True, ranks=2, slurm_options={"cores": 1})


def test_campaign_command_class(tmp_path, capsys):
    from hydrolayer.cli import build_parser, main
    from hydrolayer.commands.campaign import CLICommand

    assert CLICommand.name == "campaign" and CLICommand.__doc__.startswith("many simulations")
    p = build_parser()
    a = p.parse_args(
        ["campaign", "run", "s.yaml", "--db", "x.db", "--slurm", "--partition", "p", "--cores", "4", "--jobs", "2"]
    )
    assert a.slurm is True and a.cores == 4 and a.jobs == 2 and a.func.__name__ == "_run"
    assert p.parse_args(["campaign", "run", "s.yaml", "--db", "x.db", "--local"]).slurm is False
    assert p.parse_args(["campaign", "run", "s.yaml", "--db", "x.db"]).slurm is None
    with pytest.raises(SystemExit):
        p.parse_args(["campaign", "run", "s.yaml", "--db", "x.db", "--slurm", "--local"])
    with pytest.raises(SystemExit):
        p.parse_args(["campaign", "run", "--help"])
    assert "--slurm --partition compute" in capsys.readouterr().out  # the worked example
    assert main(["campaign", "status", str(tmp_path / "missing.yaml"), "--db", str(tmp_path / "x.db")]) == 2


def test_status_shows_where_progress_and_last_line(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("runs:\n  - surface: calcite-104\n    production_ps: 20\n")
    (job,) = expand(load_spec(spec))
    d = tmp_path / "work" / job.key
    d.mkdir(parents=True)
    (d / "state.json").write_text(json.dumps({"stage": "production", "prod_steps": 7500}))
    (d / "where.json").write_text(
        json.dumps({"host": "node7", "pid": 42, "worker": "tcp://10.0.0.7:4000", "slurm_job_id": "1234"})
    )
    (d / "progress.log").write_text("08:00:00 minimised\n08:10:00 production 7.5/20.0 ps  9.1 ns/day\n\n")
    (st,) = campaign_status(spec, tmp_path / "sims.db")
    assert st["state"] == "interrupted (production)" and (st["ps_done"], st["ps_total"]) == (7.5, 20.0)
    assert st["where"]["slurm_job_id"] == "1234" and st["last"].endswith("9.1 ns/day")
    from hydrolayer.campaign import format_status

    table = format_status(spec, tmp_path / "sims.db")
    assert "7.5/20" in table and "last ran on: slurm job 1234 worker tcp://10.0.0.7:4000 (node7, pid 42)" in table
    assert "last: 08:10:00 production 7.5/20.0 ps" in table
