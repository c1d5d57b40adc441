"""The simulation database: ase.db index + grids/<unique_id>.npz (no LAMMPS needed)."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from hydrolayer import store
from hydrolayer.cli import main
from hydrolayer.util import InputError


def _slab():
    a = bulk("Cu", cubic=True) * (2, 2, 2)
    a.info.update(
        surface="calcite-104",
        polymorph="calcite",
        facet="104",
        seed=3,
        size="2x2",
        defects="CO3 vacancy (top)",
        defect_sites=json.dumps([{"species": "CO3", "position": [1, 2, 3], "face": "top"}]),
        net_charge=2,
        z_top=5.0,
        z_bottom=1.0,
        lattice=json.dumps({"a": 4.937, "c": 17.22}),
    )
    return a


def _halves(shape=(8, 9, 10), seed=0):
    rng = np.random.default_rng(seed)
    h1 = rng.gamma(2.0, 0.5, size=shape)
    h2 = rng.gamma(2.0, 0.5, size=shape)
    return h1, h2


KVP = dict(
    temperature=300.0,
    production_ps=5.0,
    seed=1,
    rho_bulk=0.0338,
    ns_per_day=12.5,
    z_top=5.0,
    z_bottom=1.0,
    net_charge=2,
)


def test_roundtrip_sqlite(tmp_path):
    db = tmp_path / "sims.db"
    h1, h2 = _halves()
    cell = np.diag([7.2, 7.3, 30.0])
    row_id = store.write_simulation(db, _slab(), h1, h2, cell, KVP, {"lammps_version": "test"})
    row = store.get_row(db, row_id)
    # key-value pairs from the call and from atoms.info
    for k in (
        "surface",
        "defects",
        "temperature",
        "production_ps",
        "seed",
        "status",
        "rho_bulk",
        "z_top",
        "z_bottom",
        "net_charge",
        "ns_per_day",
        "grid_file",
        "grid_sha256",
    ):
        assert k in row.key_value_pairs, k
    assert row.status == "done" and row.seed == 1 and row.structure_seed == 3
    assert row.grid_file == f"grids/{row.unique_id}.npz"
    assert row.data.defect_sites[0]["species"] == "CO3"
    assert row.data.lattice == {"a": 4.937, "c": 17.22}
    # the grid file: float16 halves and the cell, beside the database
    path = tmp_path / row.grid_file
    with np.load(path) as f:
        assert sorted(f.files) == ["cell", "water_density_half1", "water_density_half2"]
        assert f["water_density_half1"].dtype == np.float16
    d = store.load_density(db, row_id)
    assert d["half1"].dtype == np.float32 and d["half1"].shape == (8, 9, 10)
    np.testing.assert_allclose(d["half1"], h1, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(d["cell"], cell)
    # by unique_id and by row, too
    assert np.array_equal(store.load_density(db, row.unique_id)["half2"], d["half2"])
    # the slab atoms come back; info is not duplicated into the Atoms
    assert len(row.toatoms()) == len(_slab())
    assert [r.id for r in store.iter_rows(db, surface="calcite-104")] == [row_id]
    assert list(store.iter_rows(db, surface="aragonite-010")) == []
    assert store.orphan_grids(db) == []


def test_checksum_and_missing_grid(tmp_path):
    db = tmp_path / "sims.db"
    h1, h2 = _halves()
    row_id = store.write_simulation(db, _slab(), h1, h2, np.eye(3) * 10, KVP)
    path = tmp_path / store.get_row(db, row_id).grid_file
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="SHA-256"):
        store.load_density(db, row_id)
    path.unlink()
    with pytest.raises(InputError, match="missing"):
        store.load_density(db, row_id)
    with pytest.raises(InputError, match="no row 99"):
        store.load_density(db, 99)


def test_refuses_bad_data_and_leaves_nothing(tmp_path):
    db = tmp_path / "sims.db"
    h1, h2 = _halves()
    with pytest.raises(ValueError, match="NaN"):
        store.write_simulation(db, _slab(), h1 * np.nan, h2, np.eye(3), KVP)
    with pytest.raises(ValueError, match="same shape"):
        store.write_simulation(db, _slab(), h1, h2[:-1], np.eye(3), KVP)
    # a row that ase.db refuses: its grid file is removed again, no row, no orphan
    with pytest.raises(ValueError):
        store.write_simulation(db, _slab(), h1, h2, np.eye(3), {**KVP, "bad key": 1})
    assert list(store.connect(db).select()) == []
    assert list((tmp_path / "grids").glob("*.npz")) == []


def test_grids_folder_given_explicitly(tmp_path):
    db = tmp_path / "index" / "sims.db"
    db.parent.mkdir()
    grids = tmp_path / "elsewhere"
    h1, h2 = _halves()
    row_id = store.write_simulation(db, _slab(), h1, h2, np.eye(3) * 9, KVP, grids_dir=grids)
    assert len(list(grids.glob("*.npz"))) == 1
    assert store.load_density(db, row_id, grids_dir=grids)["half1"].shape == h1.shape


def test_postgres_url_needs_grids_folder():
    with pytest.raises(InputError, match="grids folder"):
        store.grids_folder("postgresql://user:secret@localhost/db")
    # and the password is not printed
    try:
        store.grids_folder("postgresql://user:secret@localhost/db")
    except InputError as err:
        assert "secret" not in str(err)


def test_cli_list_and_export(tmp_path, capsys):
    db = tmp_path / "sims.db"
    h1, h2 = _halves()
    row_id = store.write_simulation(db, _slab(), h1, h2, np.diag([7.2, 7.3, 30.0]), KVP)
    assert main(["db", "list", str(db)]) == 0
    out = capsys.readouterr().out
    assert "calcite-104" in out and "CO3 vacancy" in out
    assert main(["db", "export", str(db), str(row_id), "-o", str(tmp_path / "water.cube")]) == 0
    from ase.io.cube import read_cube_data

    data, atoms = read_cube_data(str(tmp_path / "water.cube"))
    np.testing.assert_allclose(data, 0.5 * (h1 + h2), rtol=2e-3, atol=2e-3)
    assert main(["db", "export", str(db), "7", "-o", str(tmp_path / "x.cube")]) == 2


# --------------------------------------------------------------------------- PostgreSQL
def _pg_bin():
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists():
            return d
    return None


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server from Debian's postgresql package, in a temporary folder."""
    pytest.importorskip("psycopg2", reason="psycopg2 not installed (pip install psycopg2-binary)")
    pytest.importorskip("ase_db_backends", reason="ase-db-backends not installed (ASE >= 3.24 keeps PostgreSQL there)")
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL server not installed (Debian package 'postgresql'; .ci/run installs it)")
    # the server's files in a folder of its own directly under the temporary directory (which
    # every user can traverse): as root the server runs as 'postgres', which must not need
    # pytest's 0700 folders (changing their modes raced with other pytest runs)
    base = Path(tempfile.mkdtemp(prefix="hydrolayer-pg-"))
    data, sockdir = base / "pgdata", base / "pgsock"
    data.mkdir()
    sockdir.mkdir()
    run_as = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the 'postgres' user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        for p in (base, data, sockdir):
            shutil.chown(p, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        run_as + [str(pg / "initdb"), "-D", str(data), "-U", "hl", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        run_as
        + [
            str(pg / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(data / "log"),
            "-w",
            "-o",
            f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        import psycopg2

        for _ in range(50):
            try:
                c = psycopg2.connect(host="127.0.0.1", port=port, user="hl", dbname="postgres")
                break
            except psycopg2.OperationalError:
                time.sleep(0.2)
        c.autocommit = True
        c.cursor().execute("CREATE DATABASE sims")
        c.close()
        yield f"postgresql://hl@127.0.0.1:{port}/sims"
    finally:
        subprocess.run(run_as + [str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.postgres
def test_postgres_roundtrip(postgres, tmp_path):
    grids = tmp_path / "grids-pg"
    h1, h2 = _halves(seed=4)
    row_id = store.write_simulation(postgres, _slab(), h1, h2, np.eye(3) * 11, KVP, {"x": 1}, grids_dir=grids)
    row = store.get_row(postgres, row_id)
    assert row.surface == "calcite-104" and row.status == "done"
    d = store.load_density(postgres, row_id, grids_dir=grids)
    np.testing.assert_allclose(d["half2"], h2, rtol=1e-3, atol=1e-3)
    assert [r.id for r in store.iter_rows(postgres, defects="CO3 vacancy (top)")] == [row_id]
    with pytest.raises(InputError, match="grids folder"):
        store.load_density(postgres, row_id)


def test_row_files_are_what_git_keeps_and_rebuild_the_index(tmp_path):
    # every row also goes to rows/<id>-<uid>.json, written once; the SQLite index is derived
    db = tmp_path / "sims.db"
    ids = []
    for seed in (1, 2, 3):
        h1, h2 = _halves(seed=seed)
        ids.append(store.write_simulation(db, _slab(), h1, h2, np.diag([8.0, 9.0, 10.0]), KVP))
    files = sorted((tmp_path / "rows").glob("*.json"))
    assert [f.name[:5] for f in files] == ["00001", "00002", "00003"]
    stamp = [f.stat().st_mtime_ns for f in files]
    before = {r.id: (r.unique_id, r.key_value_pairs, r.positions.copy()) for r in store.connect(db).select()}
    # a fresh clone: no index, only rows/ and grids/ -> the index is rebuilt, same ids and rows
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copytree(tmp_path / "rows", clone / "rows")
    shutil.copytree(tmp_path / "grids", clone / "grids")
    con = store.connect(clone / "sims.db")
    assert con.count() == 3
    for r in con.select():
        uid, kvp, pos = before[r.id]
        assert r.unique_id == uid and r.key_value_pairs == kvp and np.array_equal(r.positions, pos)
        np.testing.assert_array_equal(
            store.load_density(clone / "sims.db", r.id)["half1"], store.load_density(db, r.id)["half1"]
        )
    # a row written elsewhere arrives as a new row file (git pull): the next connect adds it
    h1, h2 = _halves(seed=4)
    store.write_simulation(db, _slab(), h1, h2, np.diag([8.0, 9.0, 10.0]), KVP)
    new = next((tmp_path / "rows").glob("00004-*.json"))
    shutil.copy(new, clone / "rows")
    shutil.copy(tmp_path / store.get_row(db, 4).grid_file, clone / "grids")
    assert store.connect(clone / "sims.db").count() == 4 and store.get_row(clone / "sims.db", 4).unique_id in new.name
    # a row in the index without its file (written by older code): the file appears
    new.unlink()
    store.connect(db)
    assert len(list((tmp_path / "rows").glob("00004-*.json"))) == 1
    assert [f.stat().st_mtime_ns for f in files] == stamp  # the other row files were never rewritten
    # row files that disagree with the index are refused
    bad = clone / "rows" / "00005-0123abcd.json"
    shutil.copy(files[0], bad)
    with pytest.raises(InputError, match="holds row"):
        store.connect(clone / "sims.db")
