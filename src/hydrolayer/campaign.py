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

On a SLURM cluster (optional extra ``pip install 'hydrolayer[slurm]'``, dask-jobqueue), one
SLURM job per Dask worker, each worker running one simulation on ``ranks`` cores::

    from dask_jobqueue import SLURMCluster
    from hydrolayer.campaign import run_campaign

    cluster = SLURMCluster(cores=2, processes=1, memory="4GB", walltime="24:00:00",
                           job_extra_directives=["--ntasks=2"])
    cluster.scale(jobs=8)
    run_campaign("examples/dataset-v0.yaml", "data/simulations.db", scheduler=cluster)

or start the cluster elsewhere and pass its address: ``hydrolayer campaign run SPEC --db DB
--scheduler tcp://HOST:8786``. The work folders (``work/`` beside the database, or
``--workdir``) must be on a file system the workers share; only the process that called
``run_campaign`` writes the database.
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
    "surface", "size", "layers", "defects", "structure_seed", "seed", "production_ps", "equil_ps",
    "temperature", "spacing", "gap", "lattice", "checkpoint_ps", "kspace_accuracy", "gap_tolerance",
}
DEFAULTS = {
    "size": [5, 3], "layers": 4, "defects": "pristine", "structure_seed": 0, "seed": 1,
    "production_ps": 100.0, "equil_ps": 50.0, "temperature": 300.0, "spacing": 0.3, "gap": 25.0,
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
        return f"{s['surface']} {s['size'][0]}x{s['size'][1]}x{s['layers']} {dtxt} sseed={s['structure_seed']} seed={s['seed']} {s['production_ps']:g} ps"


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
        settings["surface"], size=tuple(settings["size"]), layers=settings["layers"], lattice=lattice,
        pair_vacancies=d.get("pair_vacancies", 0), vacancy=d.get("vacancy"), both_faces=d.get("both_faces", False),
        seed=settings["structure_seed"], placement=d.get("placement", "random"),
    )
    return atoms, lattice


def job_params(settings: dict, mode=None, ranks=None, threads=None):
    from .forcefield import DEFAULT_PARALLEL
    from .simulate import SimulationParams

    p = SimulationParams(
        production_ps=settings["production_ps"], equil_ps=settings["equil_ps"], temperature=settings["temperature"],
        seed=settings["seed"], spacing=settings["spacing"], gap=settings["gap"],
        mode=mode or DEFAULT_PARALLEL["mode"], ranks=ranks or DEFAULT_PARALLEL["ranks"],
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

        try:
            for attempt in range(3):
                try:
                    res = run_simulation(atoms, workdir, params, progress=progress, source=f"job {job_key}")
                    break
                except SimulationInterrupted as err:  # stopped from outside: resume from the checkpoint
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


def run_campaign(spec_path, db, scheduler=None, workers=None, ranks=None, threads=None, grids_dir=None,
                 workdir=None, log=print) -> dict:
    """Run every unfinished job of the spec on Dask; store each result as it arrives.

    ``scheduler``: address of an existing Dask scheduler (default: a LocalCluster with
    ``cores // ranks`` single-threaded workers). ``ranks``: MPI ranks per job; ``threads``:
    OpenMP threads per job instead of ranks. Returns counts of done/failed/skipped jobs.
    """
    from dask.distributed import Client, LocalCluster, as_completed

    from . import store
    from .forcefield import DEFAULT_PARALLEL

    spec = load_spec(spec_path)
    jobs = expand(spec)
    if threads:
        mode, ranks, per_job = "omp", 1, threads
    else:
        mode, ranks = DEFAULT_PARALLEL["mode"], ranks or DEFAULT_PARALLEL["ranks"]
        per_job = ranks if mode == "mpi" else DEFAULT_PARALLEL["threads"]
        threads = None if mode == "mpi" else DEFAULT_PARALLEL["threads"]
    root = workroot_for(db, workdir)
    root.mkdir(parents=True, exist_ok=True)
    store.connect(db)  # fail early on a bad path
    done = _done_keys(db)
    todo = [j for j in jobs if j.key not in done]
    log(f"campaign {spec.get('name', Path(spec_path).stem)}: {len(jobs)} jobs, {len(jobs) - len(todo)} done, {len(todo)} to run")
    counts = {"done": 0, "failed": 0, "skipped": len(jobs) - len(todo)}
    if not todo:
        return counts
    for j in todo:
        _retire_failed(root / j.key)
    cluster = None
    if scheduler is not None and not isinstance(scheduler, str):
        client = Client(scheduler)  # a cluster object, e.g. dask_jobqueue.SLURMCluster
    elif scheduler:
        client = Client(scheduler)
    else:
        ncores = os.cpu_count() or 1
        nworkers = workers or max(1, ncores // per_job)
        cluster = LocalCluster(n_workers=nworkers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = {}
        for j in todo:
            fut = client.submit(run_job, j.key, j.settings, str(root), mode, ranks, threads, key=f"md-{j.key}", pure=False)
            futures[fut] = j
        for fut in as_completed(futures):
            j = futures[fut]
            try:
                status, payload = fut.result()
            except Exception as err:  # worker crash, pickling, ...
                status, payload = "failed", f"{type(err).__name__}: {err}"
            if status == "done":
                if j.key in _done_keys(db):  # stored meanwhile by another run
                    continue
                row = store.write_simulation(db, payload["atoms"], payload["half1"], payload["half2"], payload["cell"],
                                             payload["kvp"], payload["data"], grids_dir=grids_dir)
                counts["done"] += 1
                log(f"done   {j.key} {j.label} -> row {row} ({payload['kvp']['ns_per_day']:.1f} ns/day)")
            else:
                counts["failed"] += 1
                log(f"FAILED {j.key} {j.label}: {payload}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return counts


def campaign_status(spec_path, db, workdir=None) -> list[dict]:
    """One dict per job: key, label, state (done/running/queued/failed/interrupted), row id,
    ps of production done."""
    spec = load_spec(spec_path)
    jobs = expand(spec)
    done = _done_keys(db)
    root = workroot_for(db, workdir)
    out = []
    for j in jobs:
        d = root / j.key
        st = {"key": j.key, "label": j.label, "row": done.get(j.key), "ps_done": None, "state": "queued"}
        if j.key in done:
            st["state"] = "done"
        elif d.exists():
            state = {}
            if (d / "state.json").exists():
                try:
                    state = json.loads((d / "state.json").read_text())
                except json.JSONDecodeError:
                    pass
            if "prod_steps" in state:
                st["ps_done"] = state["prod_steps"] / 1000.0
            if (d / "failed.json").exists():
                st["state"] = "failed"
                st["reason"] = json.loads((d / "failed.json").read_text()).get("message")
            elif _locked(d / "lock"):
                st["state"] = "running"
            elif (d / "result.npz").exists():
                st["state"] = "finished, not stored"
            else:
                st["state"] = f"interrupted ({state.get('stage', 'start')})"
        out.append(st)
    return out


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
    """``campaign status`` as a table."""
    rows = campaign_status(spec_path, db, workdir)
    lines = [f"{'key':16}  {'state':22}  {'row':>4}  {'ps':>7}  job"]
    for r in rows:
        ps = "" if r["ps_done"] is None else f"{r['ps_done']:.1f}"
        lines.append(f"{r['key']:16}  {r['state'][:22]:22}  {r['row'] or '':>4}  {ps:>7}  {r['label']}")
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
