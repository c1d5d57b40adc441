"""Campaigns on real clusters (issue 17): a Dask cluster of separate processes (``dask
scheduler`` + two ``dask worker``), with SQLite and with a real PostgreSQL server, and a real
single-node SLURM (slurmctld + slurmd, started by .ci/start-slurm.sh). Each kills or cancels
a running simulation and checks that running the same command again stores every job
exactly once, resumed from its checkpoint."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_store import postgres  # noqa: F401  (the fixture: a throw-away PostgreSQL server)

from hydrolayer import store
from hydrolayer.campaign import campaign_status, expand, format_status, load_spec

SRC = str(Path(store.__file__).resolve().parent.parent)
BIN = Path(sys.executable).parent

SPEC = """\
name: {name}
defaults:
  size: [3, 2]
  layers: 2
  equil_ps: 0.3
  production_ps: {ps}
  checkpoint_ps: 0.2
  gap: 16
  gap_tolerance: 0.5
  lattice: {{a: 4.937, c: 17.22}}
runs:
{runs}
"""
THREE = (
    "  - surface: calcite-104\n    defects: [pristine, {pair_vacancies: 1}]\n  - surface: calcite-104\n    seed: 2\n"
)
ONE = "  - surface: calcite-104\n"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _campaign(*args, cwd):
    """``hydrolayer campaign ...``"""
    return subprocess.Popen(
        [sys.executable, "-m", "hydrolayer.cli", "campaign", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        cwd=cwd,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(cond, timeout, what, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the campaign ended while waiting for {what}:\n{proc.stdout.read()}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _in_production(workroot: Path, keys):
    """The first job (key) with a production checkpoint, or None."""
    for k in keys:
        if _read(workroot / k / "state.json").get("prod_steps", 0) > 0:
            return k
    return None


def _stop(proc, sig=signal.SIGTERM, timeout=20):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _assert_exactly_once(db, jobs, grids=None):
    rows = list(store.iter_rows(db))
    keys = sorted(r.job_key for r in rows)
    assert keys == sorted(j.key for j in jobs), keys  # every job, each exactly once
    for r in rows:
        d = store.load_density(db, r, grids_dir=grids)
        assert d["half1"].shape == d["half2"].shape
    assert store.orphan_grids(db, grids_dir=grids) == []


# =========================================================================== Dask, separate processes
@pytest.fixture
def dask_cluster(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes (no nanny: a worker is one
    process, so SIGKILL really kills it), on a free port of 127.0.0.1."""
    dask = BIN / "dask"
    cli = [str(dask)] if dask.exists() else [sys.executable, "-m", "distributed.cli.dask"]
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                cli + ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                stdout=open(logs / "scheduler.log", "w"),
                stderr=subprocess.STDOUT,
                env=_env(),
            )
        )
        workers = []
        for n in (1, 2):
            w = subprocess.Popen(
                cli
                + [
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--name",
                    f"w{n}",
                    "--no-dashboard",
                    "--death-timeout",
                    "60",
                    "--local-directory",
                    str(tmp_path / f"dw{n}"),
                ],
                stdout=open(logs / f"worker{n}.log", "w"),
                stderr=subprocess.STDOUT,
                env=_env(),
            )
            procs.append(w)
            workers.append(w)
        from dask.distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(2, timeout=60)
        yield address, workers
    finally:
        for p in reversed(procs):  # only the processes this fixture started, by their PIDs
            _stop(p, timeout=10)


def _dask_campaign_killed_and_resumed(tmp_path, address, workers, db, extra):
    spec = tmp_path / "three.yaml"
    spec.write_text(SPEC.format(name="dask-mp", ps=0.6, runs=THREE))
    jobs = expand(load_spec(spec))
    assert len(jobs) == 3
    workroot = tmp_path / "work"
    run = ["run", spec, "--db", db, "--scheduler", address, "--ranks", "1", *extra]
    status_args = dict(workdir=workroot)

    # 1. the campaign on the two workers; a job in production: where it runs is recorded
    proc = _campaign(*run, cwd=tmp_path)
    key = _wait_for(lambda: _in_production(workroot, [j.key for j in jobs]), 240, "a job in production", proc)
    where = _read(workroot / key / "where.json")
    pids = {w.pid: w for w in workers}
    assert where["pid"] in pids and where["worker"].startswith("tcp://127.0.0.1:"), where
    table = format_status(spec, db, **status_args)
    assert f"runs on: worker {where['worker']}" in table and "last: " in table, table
    st = {s["key"]: s for s in campaign_status(spec, db, **status_args)}[key]
    assert st["state"] == "running" and 0 < st["ps_done"] < st["ps_total"] == 0.6 and st["last"], st

    # 2. SIGKILL that worker mid-job, then the client
    victim = pids[where["pid"]]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not _has_rows(db) or len(list(store.iter_rows(db))) < 3

    # 3. the same command again, on the surviving worker: finishes, every job exactly once
    out = _campaign(*run, cwd=tmp_path).communicate(timeout=300)[0]
    assert "FAILED" not in out and "Traceback" not in out, out
    assert [s["state"] for s in campaign_status(spec, db, **status_args)] == ["done"] * 3
    _assert_exactly_once(db, jobs, grids=extra[extra.index("--grids") + 1] if "--grids" in extra else None)
    log = (workroot / key / "progress.log").read_text()
    assert log.count("minimised") == 1, log  # the killed job resumed from its checkpoint
    assert log.count("running on worker") >= 2, log

    # 4. and again: nothing to do, nothing duplicated
    out = _campaign(*run, cwd=tmp_path).communicate(timeout=120)[0]
    assert "0 stored, 0 failed, 3 already done" in out, out
    assert len(list(store.iter_rows(db))) == 3


def _has_rows(db):
    try:
        return bool(list(store.iter_rows(db)))
    except Exception:
        return False


@pytest.mark.lammps
@pytest.mark.slow
def test_dask_processes_sigkill_and_resume_sqlite(tmp_path, dask_cluster):
    address, workers = dask_cluster
    _dask_campaign_killed_and_resumed(
        tmp_path, address, workers, tmp_path / "sims.db", ["--workdir", tmp_path / "work"]
    )


@pytest.mark.lammps
@pytest.mark.slow
@pytest.mark.postgres
def test_dask_processes_sigkill_and_resume_postgres(tmp_path, postgres, dask_cluster):  # noqa: F811
    address, workers = dask_cluster
    grids = tmp_path / "grids-pg"
    _dask_campaign_killed_and_resumed(
        tmp_path, address, workers, postgres, ["--grids", grids, "--workdir", tmp_path / "work"]
    )


# =========================================================================== SLURM
def _slurm_state():
    """None when a SLURM node is up here with >= 2 CPUs, else the reason to skip."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "SLURM not installed (bash .ci/start-slurm.sh installs and starts a single-node SLURM)"
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        return "dask-jobqueue not installed (pip install 'hydrolayer[slurm]')"
    out = subprocess.run(["sinfo", "-h", "-o", "%T %c"], capture_output=True, text=True)
    states = [line.split() for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not any(s[0].rstrip("*") in ("idle", "mixed", "allocated") for s in states):
        return f"SLURM is not running ({(out.stderr or out.stdout).strip()[:120]}; bash .ci/start-slurm.sh starts it)"
    if max(int(s[1].rstrip("+")) for s in states) < 2:
        return "the SLURM node has fewer than 2 CPUs"
    return None


def _squeue_ids(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-t", "PD,R,CF", "-o", "%i"], capture_output=True, text=True)
    return out.stdout.split()


def _workers_left(folder: Path) -> list[int]:
    """PIDs of Dask worker processes started in ``folder`` (the campaign's SLURM jobs)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes()
                cwd = os.readlink(d / "cwd")
            except OSError:
                continue
            if b"distributed.cli.dask_worker" in argv and cwd.startswith(str(folder)):
                pids.append(int(d.name))
    return pids


def _rank_pids(workdir: Path) -> list[int]:
    """PIDs of the LAMMPS ranks of one job folder (``python -m hydrolayer.simulate --worker DIR``)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"hydrolayer.simulate" in argv and str(workdir).encode() in argv and b"mpiexec" not in argv[0]:
                pids.append(int(d.name))
    return pids


@pytest.mark.slurm
@pytest.mark.lammps
@pytest.mark.slow
def test_slurm_scancel_and_resume(tmp_path):
    reason = _slurm_state()
    if reason:
        pytest.skip(reason)
    name = f"slurm-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "one.yaml"
    spec.write_text(SPEC.format(name=name, ps=1.6, runs=ONE))
    (job,) = expand(load_spec(spec))
    db = tmp_path / "sims.db"
    workdir = tmp_path / "work" / job.key
    run = [
        "run",
        spec,
        "--db",
        db,
        "--slurm",
        "--cores",
        "2",
        "--memory",
        "1GB",
        "--walltime",
        "00:15:00",
        "--jobs",
        "1",
    ]
    slurm_name = f"hl-{name}"
    # a worker job SLURM would refuse is an input error (exit 2), not a campaign waiting forever
    bad = _campaign(*run, "--partition", "no-such-partition", cwd=tmp_path)
    out = bad.communicate(timeout=120)[0]
    assert bad.returncode == 2 and "SLURM refuses the worker job" in out and "partition" in out, out
    proc = _campaign(*run, cwd=tmp_path)
    try:
        # 1. production has started in SLURM job J1; the 2 MPI ranks run inside its allocation
        _wait_for(lambda: _in_production(tmp_path / "work", [job.key]), 240, "production on SLURM", proc)
        where = _read(workdir / "where.json")
        j1 = where["slurm_job_id"]
        assert j1 in _squeue_ids(slurm_name)
        assert where["launcher"] == "fork" and where["slurm_cpus"] == 2 and where["ranks"] == 2, where
        ranks = _rank_pids(workdir)
        listed = subprocess.run(["scontrol", "listpids", j1], capture_output=True, text=True).stdout
        job_pids = {int(line.split()[0]) for line in listed.splitlines()[1:] if line.split()}
        assert len(ranks) == 2 and set(ranks) <= job_pids, (ranks, listed)
        assert f"runs on: slurm job {j1} " in format_status(spec, db)

        # 2. scancel J1 mid-run: the campaign replaces it with J2, which resumes the job
        subprocess.run(["scancel", j1], check=True)
        _wait_for(
            lambda: _read(workdir / "where.json").get("slurm_job_id") not in (None, j1),
            120,
            "the job on a new SLURM job",
            proc,
        )

        # 3. stop the campaign (SIGTERM, as a scheduler or Ctrl-C would): it cancels its SLURM jobs
        _stop(proc, signal.SIGTERM, timeout=60)
        out = proc.stdout.read()
        assert f"slurm: job {j1} ended" in out, out
        _wait_for(lambda: not _squeue_ids(slurm_name), 60, "no SLURM job of the campaign left")
        assert not _has_rows(db)  # nothing stored yet: the job was never finished

        # 4. the same command again: resumes from the checkpoint, stores the row once
        proc = _campaign(*run, cwd=tmp_path)
        out = proc.communicate(timeout=300)[0]
        assert "1 stored, 0 failed, 0 already done" in out, out
        log = (workdir / "progress.log").read_text()
        assert log.count("minimised") == 1, log  # no second equilibration: resumed from checkpoints
        assert (
            len({line.split("slurm job ")[1].split()[0] for line in log.splitlines() if "running on slurm job" in line})
            >= 3
        ), log
        _assert_exactly_once(db, [job])
        out = _campaign(*run, cwd=tmp_path).communicate(timeout=120)[0]
        assert "0 stored, 0 failed, 1 already done" in out, out
        assert len(list(store.iter_rows(db))) == 1
        # every SLURM job ended with its worker: no Dask worker process outlives its job
        _wait_for(
            lambda: not _squeue_ids(slurm_name) and not _workers_left(tmp_path),
            60,
            "the campaign's SLURM workers to end with their jobs",
        )
    finally:
        _stop(proc, signal.SIGTERM, timeout=60)
        for jid in _squeue_ids(slurm_name):  # only the jobs of this test's campaign (its unique job name)
            subprocess.run(["scancel", jid], capture_output=True)
