"""Force field data, typing, LAMMPS input, and LAMMPS + MPI found without LD_LIBRARY_PATH."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hydrolayer import forcefield as ff
from hydrolayer.structures import bulk
from hydrolayer.util import InputError

SRC = str(Path(ff.__file__).resolve().parent.parent)


def test_parameters_match_the_reference():
    # Raiteri 2015 + SPC/Fw, as in ../shared/reference/forcefield.md
    f = ff.FORCEFIELD
    assert f["charges"] == {"Ca": 2.0, "C": 1.123285, "Oc": -1.041095, "Ow": -0.82, "Hw": 0.41}
    assert f["bonds"][("C", "Oc")] == (20.42465, 1.3042)
    assert f["bonds"][("Ow", "Hw")] == (22.965, 1.012)
    assert f["buckingham"][("Oc", "Oc")] == (63840.199, 0.198913, 27.89901)
    assert f["lj_plain"][("Ow", "Ow")] == (0.00674, 3.165492)
    assert f["taper"] == (6.0, 9.0)
    # carbonate is neutral as -2, water neutral
    q = f["charges"]
    assert q["C"] + 3 * q["Oc"] == pytest.approx(-2.0, abs=1e-6)
    assert q["Ow"] + 2 * q["Hw"] == pytest.approx(0.0)
    assert "Raiteri" in ff.CITATION and "Voth" in ff.CITATION


def test_typing_bulk_calcite():
    atoms = bulk("calcite")  # 6 CaCO3
    topo = ff.type_atoms(atoms)
    assert sorted(np.bincount(topo.types, minlength=6)[1:].tolist()) == sorted([6, 6, 18, 0, 0])
    assert len(topo.bonds) == 18 and len(topo.angles) == 18 and len(topo.impropers) == 6
    sym = atoms.get_chemical_symbols()
    for _, c, o1, o2, o3 in topo.impropers:  # C first
        assert sym[c] == "C" and {sym[o1], sym[o2], sym[o3]} == {"O"}
    assert topo.net_charge == pytest.approx(0.0, abs=1e-9)


def test_unsupported_elements():
    atoms = bulk("magnesite")
    with pytest.raises(InputError, match="2023 revision"):
        ff.type_atoms(atoms, source="magnesite.cif")


def test_data_file_and_settings(tmp_path):
    atoms = bulk("calcite")
    topo = ff.type_atoms(atoms)
    path = ff.write_data(atoms, topo, tmp_path / "calcite.data")
    text = path.read_text()
    for section in ("Masses", "Atoms # full", "Bonds", "Angles", "Impropers", "xy xz yz"):
        assert section in text
    cmds = "\n".join(ff.settings())
    for s in (
        "buck/mdf 6.0 9.0",
        "lj/mdf 6.0 9.0",
        "lj/cut 9.0",
        "coul/long 9.0",
        "pppm",
        "special_bonds lj/coul 0.0 0.0 0.0",
        "class2",
        "improper_style distance",
        "pair_coeff 4 4 lj/cut 0.00674 3.165492",
        "pair_coeff 1 4 lj/mdf 0.00095 3.35",
    ):
        assert s in cmds, s


def test_lammps_found_without_ld_library_path(tmp_path):
    """A fresh interpreter without LD_LIBRARY_PATH starts LAMMPS through load_lammps()."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["PYTHONPATH"] = SRC
    code = (
        "from hydrolayer.forcefield import load_lammps\n"
        "L = load_lammps()(cmdargs=['-log', 'none', '-screen', 'none'])\n"
        "print(L.version(), L.has_style('pair', 'buck/mdf'), L.has_style('improper', 'distance'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    version, buck, imp = out.split()
    assert int(version) > 20230000 and buck == "True" and imp == "True"


@pytest.mark.lammps
def test_energy_and_forces_bulk_calcite(tmp_path):
    """The force field in LAMMPS: bulk calcite at the experimental lattice is bound and
    nearly at rest (forces small, both carbonate terms active)."""
    atoms = bulk("calcite") * (2, 2, 1)
    atoms = _orthogonalise(atoms)
    topo = ff.type_atoms(atoms)
    ff.write_data(atoms, topo, tmp_path / "c.data")
    L = ff.load_lammps()(cmdargs=["-log", "none", "-screen", "none"])
    try:
        for c in ["units metal", "atom_style full", "boundary p p p", f"read_data {tmp_path / 'c.data'}"] + ff.settings(
            1e-5
        ):
            L.command(c)
        L.command("run 0")
        pe = L.get_thermo("pe")
        n = len(atoms) // 5
        assert np.isfinite(pe) and -32 < pe / n < -28  # about -29.9 eV per CaCO3 (includes the intramolecular terms)
        f = np.ctypeslib.as_array(L.gather_atoms("f", 1, 3)).reshape(-1, 3)
        assert np.abs(f).max() < 5.0  # eV/Å: near equilibrium
    finally:
        L.close()


def _orthogonalise(atoms):
    from ase.build import make_supercell

    return make_supercell(atoms, [[1, 0, 0], [1, 2, 0], [0, 0, 1]])


@pytest.mark.lammps
def test_two_mpi_ranks_relax_bulk(tmp_path):
    """mpiexec from the mpich wheel runs the LAMMPS worker on 2 ranks (bulk NPT, tiny)."""
    from hydrolayer.simulate import SimulationParams, relax_bulk

    p = SimulationParams(production_ps=0.2, equil_ps=0.1, mode="mpi", ranks=2)
    entry = relax_bulk("calcite", tmp_path / "bulk", p, min_length=9.0, progress=None)
    assert 4.8 < entry["lattice"]["a"] < 5.1 and 16.5 < entry["lattice"]["c"] < 17.8
    log = (tmp_path / "bulk" / "log.lammps").read_text()
    assert "on 2 procs" in log
