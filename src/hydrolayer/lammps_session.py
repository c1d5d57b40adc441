"""A LAMMPS session inside one MPI rank of the MD worker: the job folder's files, the MPI
start-up, commands, restarts and the state file. No MD protocol (``simulate.py``) and no
density science (``density.py``) here.

Rank 0 does the bookkeeping and writes the files; every rank runs the LAMMPS commands.
Files of a job folder: ``job.json`` (written by ``simulate.prepare``), ``state.json`` (the
stage reached), ``*.restart`` (LAMMPS restarts), ``log.lammps``, ``failed.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from .util import atomic_output

__all__ = ["LammpsSession", "SimulationFailed"]


class SimulationFailed(RuntimeError):
    """A simulation that must not be stored; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class LammpsSession:
    """One rank's LAMMPS instance on a job folder (see the module docstring)."""

    def __init__(self, workdir: Path, params_class):
        from . import forcefield as ff

        self.dir = Path(workdir)
        self._lock_worker()
        self.job = json.loads((self.dir / "job.json").read_text())
        self.p = params_class(**self.job["params"])
        args = ["-log", str(self.dir / "log.lammps"), "-screen", "none", "-nocite"]
        if self.p.mode == "omp" and self.p.threads > 1:
            args += ["-sf", "omp", "-pk", "omp", str(self.p.threads)]
        self.lmp = ff.load_lammps()(cmdargs=args)
        self.rank = self.lmp.extract_setting("world_rank")
        self.state_file = self.dir / "state.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {"stage": "start"}

    def _lock_worker(self):
        """One worker per job folder at a time: rank 0 holds worker.lock for its whole life (a
        worker orphaned by a killed campaign finishes first; the new one then resumes from its
        files). The rank is known from the PMI environment before MPI starts; the other ranks
        wait inside the (collective) MPI start-up until rank 0 has the lock."""
        if int(os.environ.get("PMI_RANK", "0")) == 0:
            import fcntl

            self._lock = open(self.dir / "worker.lock", "w")
            fcntl.flock(self._lock, fcntl.LOCK_EX)

    def cmd(self, *lines: str) -> None:
        for line in lines:
            self.lmp.command(line)

    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(msg, flush=True)

    def save_state(self, **kw) -> None:
        self.state.update(kw)
        if self.rank == 0:
            with atomic_output(self.state_file) as tmp:
                tmp.write_text(json.dumps(self.state, indent=1))

    def restart(self, name: str) -> None:
        """Write a restart file (every rank takes part; rank 0 renames it into place)."""
        tmp = self.dir / f".{name}.tmp"
        self.cmd(f"write_restart {tmp}")
        if self.rank == 0:
            os.replace(tmp, self.dir / name)

    def setup(self, restart: str | None) -> None:
        """A fresh LAMMPS system from ``system.data`` or a restart, with the force field, the
        time step, thermo output and the ``slab`` / ``water`` groups."""
        p = self.p
        self.cmd("units metal", "atom_style full", "boundary p p p")
        self.cmd(f"read_restart {self.dir / restart}" if restart else f"read_data {self.dir / 'system.data'}")
        self.cmd(*self.job["settings"])
        self.cmd(f"timestep {p.timestep_fs / 1000.0}")
        self.cmd(
            "thermo_style custom step temp pe etotal press lz density",
            f"thermo {p.thermo_every}",
            "thermo_modify lost error flush yes",
        )
        if self.job["kind"] == "slab":
            slab_ids = " ".join(str(i + 1) for i in self.job["slab"])
            self.cmd(f"group slab id {slab_ids}", "group water subtract all slab")

    def check_finite(self) -> float:
        pe = self.lmp.get_thermo("pe")
        if not math.isfinite(pe):
            raise SimulationFailed("nan", f"potential energy is {pe}")
        return pe

    def positions(self) -> np.ndarray:
        """All positions (Å), gathered in atom-id order (a collective call: every rank)."""
        x = self.lmp.gather_atoms("x", 1, 3)
        return np.ctypeslib.as_array(x).reshape(-1, 3).copy()

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """The box's lower corner and its cell (rows a, b, c; Å)."""
        boxlo, boxhi, xy, yz, xz, _, _ = self.lmp.extract_box()
        lx, ly, lz = (boxhi[i] - boxlo[i] for i in range(3))
        return np.array(boxlo), np.array([[lx, 0, 0], [xy, ly, 0], [xz, yz, lz]])

    def barrier(self) -> None:
        """Every rank waits here (a collective gather): rank 0 must finish its files before
        any rank exits, or mpiexec ends the job while rank 0 is still writing."""
        self.lmp.gather_atoms("x", 1, 3)

    def fail(self, reason: str, msg: str) -> None:
        """Record the failure and leave at once (only rank 0 may know, e.g. the slab check);
        mpiexec then ends the other ranks."""
        if self.rank == 0:
            with atomic_output(self.dir / "failed.json") as tmp:
                tmp.write_text(json.dumps({"reason": reason, "message": msg}))
            print(f"FAILED {reason}: {msg}", flush=True)
        sys.stdout.flush()
        os._exit(3)

    def close(self) -> None:
        self.lmp.close()
        with contextlib.suppress(Exception):
            self.lmp.finalize()  # MPI_Finalize: the ranks leave together
