"""Campaigns: many simulations from one YAML spec, run as Dask jobs, stored by one writer.

Spec (YAML)::

    name: dataset-v0
    defaults:                 # apply to every run (all optional)
      size: [5, 3]
      layers: 4
      equil_ps: 50
      temperature: 300
    runs:                     # each entry is a matrix: list values expand as a product
      - surface: calcite-104
        production_ps: 500
      - surface: calcite-104
        defects: [{vacancy: CO3}, {vacancy: Ca}]
        production_ps: 1000
      - surface: calcite-104
        defects: [{pair_vacancies: 1, both_faces: true}, {pair_vacancies: 2, both_faces: true}]
        structure_seed: [1, 2, 3]
        production_ps: 200

Keys of a run: ``surface``, ``size`` ([A, B]), ``layers``, ``defects`` (``pristine`` or a
dict of ``pair_vacancies``/``vacancy``/``both_faces``/``placement``: random, adjacent or separated), ``structure_seed`` (defect placement),
``seed`` (MD velocities), ``production_ps``, ``equil_ps``, ``temperature``, ``spacing``,
``gap``, ``lattice`` (default: the force field's relaxed lattice from ``relax-bulk``).

Each expanded job has a ``job_key`` (a hash of its canonical settings), stored with its row.
Running a spec again skips jobs with a finished row and re-queues the rest. Every job runs
in ``<db folder>/work/<job_key>/`` with checkpoints, so an interrupted job resumes where it
stopped; a job that failed is moved aside (``work/<job_key>.failed-N``) and started afresh.
Only the process that runs :func:`run_campaign` writes to the database: the Dask workers
return results, they never touch the index. A SIGKILL at any moment loses no finished result
(the worker's ``result.npz`` stays in its work folder and is stored on the next run) and
leaves no corrupt row (grid file first, then one row transaction).

On a cluster (README, "On a cluster"): ``--scheduler tcp://HOST:PORT`` runs the jobs on an
existing Dask cluster (``dask scheduler`` + ``dask worker`` processes, anywhere);
``--slurm`` (optional extra ``pip install 'hydrolayer[slurm]'``, dask-jobqueue) starts a
``dask_jobqueue.SLURMCluster`` itself: one SLURM job per Dask worker, one node each, each
job ``cores`` CPUs (default: the MPI ranks of one simulation) running ``cores // ranks``
simulations side by side. Its options come from the command line or from the spec's
``cluster:`` section (the command line wins)::

    cluster:
      kind: slurm          # run on SLURM without --slurm (--local or --scheduler overrides)
      partition: compute
      account: proj42
      cores: 4             # CPUs per SLURM job: 2 simulations of 2 ranks each
      memory: 8GB          # per SLURM job
      walltime: "24:00:00" # per SLURM job; a job that reaches it resumes in a new one
      jobs: 8              # at most this many SLURM jobs at once
      extra: ["--qos=normal"]          # more #SBATCH lines
      prologue: ["module load gcc"]    # shell lines before the worker starts

Inside a SLURM job the MPI ranks of a simulation are started by the wheel's ``mpiexec`` with
the fork launcher (``HYDRA_LAUNCHER=fork``): they are children of the Dask worker, inside the
job's allocation (its CPUs, its process tracking: ``scancel`` ends them), never a second
``srun`` step; a job whose CPUs cannot hold ``ranks`` x simulations is refused. A SLURM job
that ends early (``scancel``, walltime, node failure) is replaced while the campaign runs and
its simulation resumes from its last checkpoint; if the campaign itself was stopped, the
next run of the same command resumes it. The work folders (``work/`` beside the database,
or ``--workdir``) must be on a file system the workers share; the grids folder too when the
database is PostgreSQL. Only the process that called :func:`run_campaign` writes the
database. ``run_job`` records where it runs (host, pid, Dask worker, SLURM job id) in
``where.json`` in its job folder; ``campaign status`` shows it with the job's progress and
its last log line.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import time
from pathlib import Path

from .util import InputError

__all__ = ["Job", "load_spec", "expand", "run_campaign", "campaign_status", "run_job"]

RUN_KEYS = {
    "surface",
    "size",
    "layers",
    "defects",
    "structure_seed",
    "seed",
    "production_ps",
    "equil_ps",
    "temperature",
    "spacing",
    "gap",
    "lattice",
    "checkpoint_ps",
    "kspace_accuracy",
    "gap_tolerance",
}
DEFAULTS = {
    "size": [5, 3],
    "layers": 4,
    "defects": "pristine",
    "structure_seed": 0,
    "seed": 1,
    "production_ps": 100.0,
    "equil_ps": 50.0,
    "temperature": 300.0,
    "spacing": 0.3,
    "gap": 25.0,
}
DEFECT_KEYS = {"pair_vacancies", "vacancy", "both_faces", "placement"}


@dataclasses.dataclass
class Job:
    key: str
    settings: dict  # canonical, JSON-serialisable

    @property
    def label(self) -> str:
        s = self.settings
        d = s["defects"]
        dtxt = "pristine" if d == "pristine" else ",".join(f"{k}={v}" for k, v in sorted(d.items()))
        size = f"{s['size'][0]}x{s['size'][1]}x{s['layers']}"
        return f"{s['surface']} {size} {dtxt} sseed={s['structure_seed']} seed={s['seed']} {s['production_ps']:g} ps"


# --------------------------------------------------------------------------- spec
def load_spec(path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("runs"), list) or not spec["runs"]:
        raise InputError(f"{path}: a campaign spec needs a non-empty 'runs' list")
    spec["_path"] = str(path)
    return spec


def _as_list(key, value):
    if key == "size":
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
            return [list(value)]
        return [list(v) for v in value] if isinstance(value, (list, tuple)) else [value]
    if key == "lattice":
        return [value] if not isinstance(value, list) else value
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _canonical_defects(d, where):
    if d in (None, "pristine", "none", {}):
        return "pristine"
    if not isinstance(d, dict) or not set(d) <= DEFECT_KEYS:
        raise InputError(f"{where}: defects must be 'pristine' or a dict of {sorted(DEFECT_KEYS)}, got {d!r}")
    out = {}
    if d.get("pair_vacancies"):
        out["pair_vacancies"] = int(d["pair_vacancies"])
    if d.get("vacancy"):
        if d["vacancy"] not in ("Ca", "CO3"):
            raise InputError(f"{where}: vacancy must be Ca or CO3, got {d['vacancy']!r}")
        out["vacancy"] = d["vacancy"]
    if d.get("both_faces"):
        out["both_faces"] = True
    if d.get("placement", "random") != "random":  # absent when random: old job keys stay valid
        from .structures import PLACEMENTS

        if d["placement"] not in PLACEMENTS or not out.get("pair_vacancies"):
            raise InputError(f"{where}: placement must be one of {PLACEMENTS} and needs pair_vacancies, got {d!r}")
        out["placement"] = d["placement"]
    return out or "pristine"


def expand(spec: dict) -> list[Job]:
    """All jobs of a spec (a product over the list values of every run entry)."""
    from .structures import SURFACES

    where = spec.get("_path", "spec")
    defaults = dict(DEFAULTS)
    defaults.update(spec.get("defaults") or {})
    jobs, seen = [], set()
    for n, run in enumerate(spec["runs"]):
        if not isinstance(run, dict):
            raise InputError(f"{where}: runs[{n}] must be a mapping")
        unknown = set(run) - RUN_KEYS
        unknown |= set(spec.get("defaults") or {}) - RUN_KEYS
        if unknown:
            raise InputError(f"{where}: runs[{n}]: unknown keys {sorted(unknown)} (known: {sorted(RUN_KEYS)})")
        merged = dict(defaults)
        merged.update(run)
        if "surface" not in merged:
            raise InputError(f"{where}: runs[{n}] has no surface")
        keys = sorted(merged)
        for combo in itertools.product(*[_as_list(k, merged[k]) for k in keys]):
            s = dict(zip(keys, combo))
            if s["surface"] not in SURFACES:
                raise InputError(f"{where}: runs[{n}]: unknown surface {s['surface']!r}")
            s["defects"] = _canonical_defects(s["defects"], f"{where}: runs[{n}]")
            s["size"] = [int(v) for v in s["size"]]
            for k in ("production_ps", "equil_ps", "temperature", "spacing", "gap"):
                s[k] = float(s[k])
            for k in ("layers", "structure_seed", "seed"):
                s[k] = int(s[k])
            if s["production_ps"] <= 0:
                raise InputError(f"{where}: runs[{n}]: production_ps must be positive")
            key = hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:16]
            if key not in seen:
                seen.add(key)
                jobs.append(Job(key, s))
    return jobs


# --------------------------------------------------------------------------- one job
def build_job_structure(settings: dict):
    from .simulate import default_lattice
    from .structures import SURFACES, build_surface

    lattice = settings.get("lattice")
    if lattice is None:
        lattice = default_lattice(SURFACES[settings["surface"]].polymorph)
    d = settings["defects"]
    d = {} if d == "pristine" else d
    atoms = build_surface(
        settings["surface"],
        size=tuple(settings["size"]),
        layers=settings["layers"],
        lattice=lattice,
        pair_vacancies=d.get("pair_vacancies", 0),
        vacancy=d.get("vacancy"),
        both_faces=d.get("both_faces", False),
        seed=settings["structure_seed"],
        placement=d.get("placement", "random"),
    )
    return atoms, lattice


def job_params(settings: dict, mode=None, ranks=None, threads=None):
    from .forcefield import DEFAULT_PARALLEL
    from .simulate import SimulationParams

    p = SimulationParams(
        production_ps=settings["production_ps"],
        equil_ps=settings["equil_ps"],
        temperature=settings["temperature"],
        seed=settings["seed"],
        spacing=settings["spacing"],
        gap=settings["gap"],
        mode=mode or DEFAULT_PARALLEL["mode"],
        ranks=ranks or DEFAULT_PARALLEL["ranks"],
        threads=threads or DEFAULT_PARALLEL["threads"],
    )
    if "checkpoint_ps" in settings:
        p.checkpoint_ps = float(settings["checkpoint_ps"])
    if "gap_tolerance" in settings:
        p.gap_tolerance = float(settings["gap_tolerance"])
    if "kspace_accuracy" in settings:
        p.kspace_accuracy = float(settings["kspace_accuracy"])
    return p


def run_job(job_key: str, settings: dict, workroot: str, mode=None, ranks=None, threads=None):
    """Run (or resume) one job in ``workroot/job_key``; executed on a Dask worker.

    Returns ``("done", payload)`` with everything the writer needs, or ``("failed", reason)``.
    Holds an exclusive lock on the job folder while it runs, so a job left running by a killed
    campaign is never run twice at once (the next campaign waits for it, then stores it).
    """
    from .simulate import SimulationFailed, SimulationInterrupted, run_simulation

    workdir = Path(workroot) / job_key
    snap = Path(workroot).parent / "checkpoints" / job_key
    if not workdir.exists() and snap.is_dir():
        # a snapshot carried over from another machine (hydrolayer campaign snapshot): carry on from it
        shutil.copytree(snap, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lock = open(workdir / "lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with open(workdir / "settings.json", "w") as f:
            json.dump(settings, f, indent=1)
        atoms, lattice = build_job_structure(settings)
        params = job_params(settings, mode, ranks, threads)
        log = open(workdir / "progress.log", "a")

        def progress(line):
            log.write(time.strftime("%H:%M:%S ") + line + "\n")
            log.flush()

        where = _record_where(workdir, params)
        progress("running on " + describe_where(where))
        if where.get("refused"):
            progress(f"FAILED {where['refused']}")
            log.close()
            return ("failed", where["refused"])
        try:
            for attempt in range(3):
                try:
                    res = run_simulation(atoms, workdir, params, progress=progress, source=f"job {job_key}")
                    break
                except SimulationInterrupted as err:  # stopped from outside: resume from the checkpoint
                    if where.get("slurm_job_id"):
                        # scancel, walltime, preemption: this SLURM job is ending. Not here: Dask
                        # gives the job to another worker, which resumes from the checkpoint
                        progress(
                            f"INTERRUPTED {err}; SLURM job {where['slurm_job_id']} is ending, "
                            "the job resumes on another worker"
                        )
                        from dask.distributed import Reschedule

                        raise Reschedule() from None
                    if attempt == 2:
                        progress(f"INTERRUPTED {err}; giving up after 3 attempts")
                        return ("failed", str(err))
                    progress(f"INTERRUPTED {err}; resuming (attempt {attempt + 2} of 3)")
        except SimulationFailed as err:
            progress(f"FAILED {err}")
            return ("failed", str(err))
        finally:
            log.close()
        kvp = dict(res.info)
        kvp["job_key"] = job_key
        data = dict(res.data)
        data["campaign_settings"] = settings
        data["lattice"] = lattice
        return ("done", dict(atoms=res.atoms, half1=res.half1, half2=res.half2, cell=res.cell, kvp=kvp, data=data))
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _record_where(workdir: Path, params) -> dict:
    """Write ``where.json`` (host, pid, Dask worker address, SLURM job id, CPUs) in the job
    folder. Inside a SLURM job, make the wheel's mpiexec start the ranks with the fork
    launcher (children of this worker, inside the allocation) and refuse a job whose CPUs
    cannot hold the ranks of every simulation this worker runs at once (``refused``)."""
    import socket

    where = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "ranks": params.ranks if params.mode == "mpi" else 1,
        "threads": params.threads if params.mode == "omp" else 1,
    }
    slots = 1
    try:
        from dask.distributed import get_worker

        w = get_worker()
        where["worker"] = w.address
        slots = int(getattr(w.state, "nthreads", None) or getattr(w, "nthreads", 1) or 1)
    except (ImportError, ValueError, AttributeError):
        pass
    where["slots"] = slots
    try:
        where["cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        where["cpus"] = os.cpu_count() or 1
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id:
        where["slurm_job_id"] = job_id
        os.environ.setdefault("HYDRA_LAUNCHER", "fork")  # never an srun step of its own
        where["launcher"] = os.environ["HYDRA_LAUNCHER"]
        alloc = int(os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE") or where["cpus"])
        where["slurm_cpus"] = alloc
        need = slots * where["ranks"] * where["threads"]
        if need > alloc:
            where["refused"] = (
                f"SLURM job {job_id} has {alloc} CPUs for {slots} simulation(s) of "
                f"{where['ranks'] * where['threads']} cores each: it would oversubscribe "
                "(raise --cores or lower --ranks)"
            )
    tmp = workdir / ".where.json.tmp"
    tmp.write_text(json.dumps(where, indent=1))
    os.replace(tmp, workdir / "where.json")
    return where


def describe_where(where: dict) -> str:
    """``slurm job 12 on vm`` / ``worker tcp://10.0.0.5:40123 (vm, pid 77)``."""
    if not where:
        return ""
    txt = f"slurm job {where['slurm_job_id']} " if where.get("slurm_job_id") else ""
    if where.get("worker"):
        txt += f"worker {where['worker']} "
    return txt + f"({where.get('host')}, pid {where.get('pid')})"


# --------------------------------------------------------------------------- campaign
def _done_keys(db) -> dict:
    from . import store

    try:
        con = store.connect(db)
        return {r.get("job_key"): r.id for r in con.select("job_key", status="done")}
    except InputError:
        raise
    except Exception:  # an empty/new database
        return {}


def workroot_for(db, workdir=None) -> Path:
    if workdir is not None:
        return Path(workdir)
    from .store import is_url

    if is_url(str(db)):
        raise InputError(f"{db}: a PostgreSQL campaign needs --workdir")
    return Path(db).resolve().parent / "work"


def _retire_failed(workdir: Path):
    """Move a failed job's folder aside so that the job starts afresh."""
    if (workdir / "failed.json").exists() and not (workdir / "result.npz").exists():
        n = 1
        while workdir.with_name(f"{workdir.name}.failed-{n}").exists():
            n += 1
        os.replace(workdir, workdir.with_name(f"{workdir.name}.failed-{n}"))


# --------------------------------------------------------------------------- SLURM
CLUSTER_KEYS = {"kind", "partition", "account", "cores", "memory", "walltime", "jobs", "extra", "prologue"}


def cluster_options(spec: dict, overrides: dict | None = None) -> dict:
    """The spec's ``cluster:`` section, checked, with ``overrides`` (the command line; None
    values ignored) on top."""
    where = spec.get("_path", "spec")
    sec = spec.get("cluster") or {}
    if not isinstance(sec, dict):
        raise InputError(f"{where}: 'cluster' must be a mapping of {sorted(CLUSTER_KEYS)}")
    unknown = set(sec) - CLUSTER_KEYS
    if unknown:
        raise InputError(f"{where}: cluster: unknown keys {sorted(unknown)} (known: {sorted(CLUSTER_KEYS)})")
    if sec.get("kind", "local") not in ("local", "slurm"):
        raise InputError(f"{where}: cluster: kind must be local or slurm, got {sec['kind']!r}")
    opts = dict(sec)
    opts.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for k in ("cores", "jobs"):
        if k in opts and (not isinstance(opts[k], int) or opts[k] < 1):
            raise InputError(f"{where}: cluster: {k} must be a positive integer, got {opts[k]!r}")
    for k in ("extra", "prologue"):
        if isinstance(opts.get(k), str):
            opts[k] = [opts[k]]
    return opts


def slurm_cluster(opts: dict, per_job: int, name: str, log_dir: Path, max_jobs: int):
    """A ``dask_jobqueue.SLURMCluster`` for simulations of ``per_job`` cores: one worker per
    SLURM job (one node), ``cores // per_job`` simulations side by side in it. Returns
    ``(cluster, jobs)``; the cluster is not scaled yet."""
    import sys

    cores = int(opts.get("cores") or per_job)
    if cores < per_job:
        raise InputError(
            f"--slurm: {cores} cores per SLURM job cannot hold one simulation of {per_job} cores "
            "(raise --cores or lower --ranks)"
        )
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise InputError("--slurm needs dask-jobqueue: pip install 'hydrolayer[slurm]'") from None
    if shutil.which("sbatch") is None:
        raise InputError("--slurm: sbatch not found on PATH (run the campaign on a SLURM login node)")
    slots = cores // per_job
    memory = str(opts.get("memory") or f"{2 * slots}GB")
    jobs = max(1, min(int(opts.get("jobs") or 16), max_jobs))
    log_dir.mkdir(parents=True, exist_ok=True)
    cluster = SLURMCluster(
        cores=slots,  # Dask threads: simulations at once in one SLURM job
        job_cpu=cores,  # --cpus-per-task: what those simulations' ranks need
        processes=1,
        memory=memory,
        walltime=str(opts.get("walltime") or "24:00:00"),
        queue=opts.get("partition"),
        account=opts.get("account"),
        job_name=f"hl-{name}"[:40],
        job_extra_directives=["--nodes=1", "--ntasks=1"] + list(opts.get("extra") or []),
        job_script_prologue=list(opts.get("prologue") or [])
        + ["export HYDRA_LAUNCHER=fork", "export OMP_NUM_THREADS=1"],
        # exec: the worker is the job's main process, not a child of the batch shell, so SLURM's
        # SIGKILL after KillWait reaches it even where process tracking follows the process
        # tree (proctrack/linuxproc) and the shell has already exited
        python=f"exec {sys.executable}",
        log_directory=str(log_dir),
        scheduler_options={"dashboard_address": ":0"},  # never 8787: another campaign may have it
        worker_extra_args=["--no-nanny"],  # the worker is the job's process: scancel ends it with its simulations
    )
    # a job SLURM would refuse (partition, account, memory, ...) fails here, not as a silent hang
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="hl-worker-", delete=False) as f:
        f.write(cluster.job_script())
    try:
        check = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(f.name)
    if check.returncode != 0:
        cluster.close()
        err = [ln for ln in check.stderr.splitlines() if ln.strip()] or [f"exit code {check.returncode}"]
        raise InputError(f"--slurm: SLURM refuses the worker job: {err[-1].strip()}")
    return cluster, jobs, slots


def _live_slurm_jobs() -> set | None:
    """Ids of this user's SLURM jobs that are pending or running (None: squeue failed)."""
    import getpass
    import subprocess

    try:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i", "-u", getpass.getuser()], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return {line.strip() for line in out.stdout.split() if line.strip()}


def _replace_ended_jobs(cluster, target: int, log) -> None:
    """Forget the SLURM jobs of ``cluster`` that ended (scancel, walltime, node failure) and
    submit new ones up to ``target``; their simulations resume from their checkpoints."""
    live = _live_slurm_jobs()
    if live is None:
        return
    for name, job in list(cluster.workers.items()):
        job_id = getattr(job, "job_id", None)
        if job_id and str(job_id) not in live:
            log(f"slurm: job {job_id} ended; its simulation resumes from its checkpoint in a new job")
            cluster.worker_spec.pop(name, None)
            cluster.workers.pop(name, None)
    if len(cluster.worker_spec) < target:
        cluster.scale(jobs=target)


def run_campaign(
    spec_path,
    db,
    scheduler=None,
    workers=None,
    ranks=None,
    threads=None,
    grids_dir=None,
    workdir=None,
    log=print,
    slurm=None,
    slurm_options=None,
) -> dict:
    """Run every unfinished job of the spec on Dask; store each result as it arrives.

    ``scheduler``: address of an existing Dask scheduler, or a cluster object (default: a
    LocalCluster with ``cores // ranks`` single-threaded workers). ``slurm``: True: start a
    ``dask_jobqueue.SLURMCluster``; None: SLURM when the spec says ``cluster: {kind: slurm}``
    and no scheduler is given; False: never. ``slurm_options``: ``partition``, ``account``,
    ``cores``, ``memory``, ``walltime``, ``jobs``, ``extra``, ``prologue`` on top of the
    spec's ``cluster:`` section (None values ignored). ``ranks``: MPI ranks per job; ``threads``:
    OpenMP threads per job instead of ranks. Returns counts of done/failed/skipped jobs.
    """
    from dask.distributed import as_completed

    from . import store
    from .forcefield import parallel_layout

    spec = load_spec(spec_path)
    jobs = expand(spec)
    cluster_options(spec)  # a bad cluster: section fails before anything runs
    layout = parallel_layout(ranks, threads)
    mode, ranks, threads, per_job = layout["mode"], layout["ranks"], layout["threads"], layout["cores"]
    root = workroot_for(db, workdir)
    root.mkdir(parents=True, exist_ok=True)
    store.connect(db)  # fail early on a bad path
    done = _done_keys(db)
    todo = [j for j in jobs if j.key not in done]
    log(
        f"campaign {spec.get('name', Path(spec_path).stem)}: {len(jobs)} jobs, {len(jobs) - len(todo)} done, {len(todo)} to run"
    )
    counts = {"done": 0, "failed": 0, "skipped": len(jobs) - len(todo)}
    if not todo:
        return counts
    for j in todo:
        _retire_failed(root / j.key)
    cluster = None
    use_slurm = bool(slurm)
    if slurm is None and scheduler is None and (spec.get("cluster") or {}).get("kind") == "slurm":
        use_slurm = True
    if use_slurm:
        if scheduler is not None:
            raise InputError("--slurm and --scheduler exclude each other")
        return _run_on_slurm(
            spec, spec_path, db, todo, counts, root, mode, ranks, threads, per_job, grids_dir, log, slurm_options
        )
    client, cluster = _client(scheduler, workers, per_job)
    try:
        futures = {}
        for j in todo:
            fut = client.submit(
                run_job, j.key, j.settings, str(root), mode, ranks, threads, key=f"md-{j.key}", pure=False
            )
            futures[fut] = j
        for fut in as_completed(futures):
            _store_result(fut, futures[fut], db, grids_dir, counts, log)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return counts


def _client(scheduler, workers, per_job: int) -> tuple:
    """A Dask client: to ``scheduler`` (an address or a cluster object, e.g. a
    ``dask_jobqueue.SLURMCluster``), else to a new LocalCluster of ``workers`` (default
    cores // ``per_job``) single-threaded worker processes; and the LocalCluster (or None)."""
    from dask.distributed import Client, LocalCluster

    if scheduler is not None and (not isinstance(scheduler, str) or scheduler):
        return Client(scheduler), None
    nworkers = workers or max(1, (os.cpu_count() or 1) // per_job)
    cluster = LocalCluster(n_workers=nworkers, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster


def _store_result(fut, j: Job, db, grids_dir, counts: dict, log) -> None:
    """The single writer: store one finished job's result (unless a row has it already)."""
    from . import store

    try:
        status, payload = fut.result()
    except Exception as err:  # worker crash, pickling, ...
        status, payload = "failed", f"{type(err).__name__}: {err}"
    if status == "done":
        if j.key in _done_keys(db):  # stored meanwhile by another run
            return
        row = store.write_simulation(
            db,
            payload["atoms"],
            payload["half1"],
            payload["half2"],
            payload["cell"],
            payload["kvp"],
            payload["data"],
            grids_dir=grids_dir,
        )
        counts["done"] += 1
        log(f"done   {j.key} {j.label} -> row {row} ({payload['kvp']['ns_per_day']:.1f} ns/day)")
    else:
        counts["failed"] += 1
        log(f"FAILED {j.key} {j.label}: {payload}")


def _run_on_slurm(spec, spec_path, db, todo, counts, root, mode, ranks, threads, per_job, grids_dir, log, overrides):
    """run_campaign on a SLURMCluster started here; SLURM jobs that end early are replaced."""
    import asyncio
    import math
    import signal
    import threading

    from dask.distributed import Client, wait

    opts = cluster_options(spec, overrides)
    name = spec.get("name", Path(spec_path).stem)
    cluster, max_jobs, slots = slurm_cluster(opts, per_job, name, root.parent / "slurm-logs", len(todo))
    target = lambda n: max(1, min(max_jobs, math.ceil(n / slots)))  # noqa: E731
    old_term = None
    term = {"storing": False, "pending": False}
    if threading.current_thread() is threading.main_thread():

        def _term(signum, frame):  # SIGTERM as Ctrl-C: close the cluster (scancel its jobs) on the way out
            if term["storing"]:  # never between a grid file and its row
                term["pending"] = True
                return
            raise KeyboardInterrupt

        old_term = signal.signal(signal.SIGTERM, _term)
    client = None
    try:
        client = Client(cluster)
        cluster.scale(jobs=target(len(todo)))
        log(
            f"slurm: {target(len(todo))} job(s) of {int(opts.get('cores') or per_job)} CPUs, "
            f"{slots} simulation(s) of {per_job} cores each per job"
        )
        futures = {}
        for j in todo:
            fut = client.submit(
                run_job, j.key, j.settings, str(root), mode, ranks, threads, key=f"md-{j.key}", pure=False
            )
            futures[fut] = j
        pending = set(futures)
        while pending:
            try:
                wait(list(pending), timeout=SLURM_POLL_S, return_when="FIRST_COMPLETED")
            except (TimeoutError, asyncio.TimeoutError):
                pass
            for fut in [f for f in pending if f.done()]:
                pending.discard(fut)
                term["storing"] = True
                try:
                    _store_result(fut, futures[fut], db, grids_dir, counts, log)
                finally:
                    term["storing"] = False
                if term["pending"]:
                    raise KeyboardInterrupt
            if pending:
                _replace_ended_jobs(cluster, target(len(pending)), log)
    finally:
        if client is not None:
            client.close()
        cluster.close()  # scancel of every job still queued or running
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return counts


SLURM_POLL_S = 5.0


def campaign_status(spec_path, db, workdir=None) -> list[dict]:
    """One dict per job: key, label, state (done/running/queued/failed/interrupted), row id,
    ps of production done and in all, where it runs or ran (``where``: the job folder's
    ``where.json``, see :func:`describe_where`) and the last line of its progress log."""
    spec = load_spec(spec_path)
    jobs = expand(spec)
    done = _done_keys(db)
    root = workroot_for(db, workdir)
    out = []
    for j in jobs:
        d = root / j.key
        st = {
            "key": j.key,
            "label": j.label,
            "row": done.get(j.key),
            "ps_done": None,
            "ps_total": j.settings["production_ps"],
            "state": "queued",
            "where": {},
            "last": "",
        }
        if d.exists():
            st["where"] = _read_json(d / "where.json")
            st["last"] = _last_line(d / "progress.log")
        if j.key in done:
            st["state"] = "done"
            st["ps_done"] = st["ps_total"]
        elif d.exists():
            state = _read_json(d / "state.json")
            if "prod_steps" in state:
                st["ps_done"] = state["prod_steps"] / 1000.0
            if (d / "failed.json").exists():
                st["state"] = "failed"
                st["reason"] = _read_json(d / "failed.json").get("message")
            elif _locked(d / "lock"):
                st["state"] = "running"
            elif (d / "result.npz").exists():
                st["state"] = "finished, not stored"
            else:
                st["state"] = f"interrupted ({state.get('stage', 'start')})"
        out.append(st)
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _last_line(path: Path, tail: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _locked(path: Path) -> bool:
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def format_status(spec_path, db, workdir=None) -> str:
    """``campaign status`` as a table; under every job that is not done, where it runs (or
    ran: the Dask worker, the SLURM job) and its last log line."""
    rows = campaign_status(spec_path, db, workdir)
    lines = [f"{'key':16}  {'state':22}  {'row':>4}  {'production ps':>13}  job"]
    for r in rows:
        ps = "" if r["ps_done"] is None else f"{r['ps_done']:g}/{r['ps_total']:g}"
        lines.append(f"{r['key']:16}  {r['state'][:22]:22}  {r['row'] or '':>4}  {ps:>13}  {r['label']}")
        if r["state"] != "done":
            if r["where"]:
                verb = "runs on" if r["state"] == "running" else "last ran on"
                lines.append(f"{'':16}  {verb}: {describe_where(r['where'])}")
            if r["last"]:
                lines.append(f"{'':16}  last: {r['last'][:150]}")
        if r.get("reason"):
            lines.append(f"{'':16}  reason: {r['reason']}")
    n = {s: sum(r["state"] == s for r in rows) for s in ("done", "running", "failed")}
    lines.append(f"{len(rows)} jobs: {n['done']} done, {n['running']} running, {n['failed']} failed")
    return "\n".join(lines)


# --------------------------------------------------------------------------- snapshots
STAGE_FILES = {
    "npt_done": ["npt.restart"],
    "equil_done": ["equil.restart"],
    "production": ["prod.restart", "accumulators.npz"],
    "finished": ["result.npz"],
}
COMMON_FILES = ["job.json", "settings.json", "system.data", "system.extxyz", "state.json"]


def snapshot_job(workdir, dest, tries: int = 20) -> Path | None:
    """Copy the files that resume a job (state, inputs and the current stage's restart and
    accumulators, about 1.5 MB for calcite 5 x 3) from ``workdir`` to ``dest``, consistently
    with a running worker (retried until state.json did not change during the copy).
    Returns ``dest``, or None when the job has no checkpoint yet."""
    workdir, dest = Path(workdir), Path(dest)
    for _ in range(tries):
        sf = workdir / "state.json"
        if not sf.exists():
            return None
        before = sf.read_bytes()
        stage = json.loads(before).get("stage")
        if stage not in STAGE_FILES:
            return None
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for f in COMMON_FILES + STAGE_FILES[stage]:
                if (workdir / f).exists():
                    shutil.copy2(workdir / f, tmp / f)
        except FileNotFoundError:
            time.sleep(1)
            continue
        (tmp / "state.json").write_bytes(before)
        if sf.read_bytes() == before:
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
            return dest
        time.sleep(1)
    raise RuntimeError(f"{workdir}: could not take a consistent snapshot (checkpoints too frequent?)")


def snapshot_campaign(spec_path, db, workdir=None, dest=None, log=print) -> list[Path]:
    """Snapshot every unfinished job with a checkpoint into ``<db folder>/checkpoints/``
    (copy that folder to carry the jobs over to a machine without the work
    folders); :func:`run_job` resumes from it. Snapshots of finished jobs are removed."""
    spec = load_spec(spec_path)
    root = workroot_for(db, workdir)
    dest = Path(dest) if dest else root.parent / "checkpoints"
    done = _done_keys(db)
    out = []
    for j in expand(spec):
        target = dest / j.key
        if j.key in done:
            if target.exists():
                shutil.rmtree(target)
                log(f"removed snapshot of finished job {j.key}")
            continue
        if (root / j.key).is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            snap = snapshot_job(root / j.key, target)
            if snap is not None:
                st = json.loads((snap / "state.json").read_text())
                ps = st.get("prod_steps", 0) / 1000.0
                log(f"snapshot {j.key} ({st['stage']}, {ps:g} ps of production) -> {snap}")
                out.append(snap)
    return out
