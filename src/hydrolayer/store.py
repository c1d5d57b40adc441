"""The simulation database: an ``ase.db`` index plus one ``.npz`` density grid per row.

Layout on disk (SQLite, the default)::

    simulations.db          the ase.db index: one row per finished simulation
    rows/<id>-<uid>.json    each row on its own (ase.db JSON), written once: what git keeps
    grids/<unique_id>.npz   water_density_half1, water_density_half2 (float16), cell

Every file in git is written once and never rewritten: the grids and the row files. The
SQLite index is derived from the row files (not kept in git): :func:`connect` builds it
when it is missing and adds the rows of new row files (say, after ``git pull``); rows
written to the index (by this process or an older one) get their row files at the next
:func:`connect` too (:func:`sync_rows`).

A row holds the slab ``Atoms`` (no water, time-averaged positions, in the grid's frame),
key-value pairs ``surface``, ``defects``, ``temperature``, ``production_ps``, ``seed``,
``status``, ``rho_bulk`` (Å^-3), ``z_top``, ``z_bottom``, ``net_charge``, ``ns_per_day``,
``grid_file`` (relative to the database's folder) and ``grid_sha256``; everything else that
reproduces the run (LAMMPS input, version, defect sites) is in the row's ``data``.

The grids are the water-O density in units of rho/rho_bulk on the full periodic cell from its
corner, cube sampling convention: ``values[i, j, k]`` at ``(i/nx) a + (j/ny) b + (k/nz) c``.
Two accumulators, one per half of the production run, so that every consumer can estimate
the sampling noise.

Crash safety: the grid is written first (atomically, to a new name, never rewritten), then
the row in one transaction. A crash in between leaves at most an orphan grid file, never a
row without its grid (:func:`orphan_grids` lists them). Only one process should write.

A ``postgresql://`` URL works as well; the grids folder must then be given explicitly.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import uuid
from pathlib import Path, PurePath
from typing import Any, Iterator

import numpy as np

from .util import InputError, atomic_output

__all__ = [
    "connect",
    "database_exists",
    "write_simulation",
    "load_density",
    "density_grid",
    "iter_rows",
    "get_row",
    "grids_folder",
    "orphan_grids",
    "is_url",
    "GRID_KEYS",
]

GRID_KEYS = ("water_density_half1", "water_density_half2", "cell")
GRID_DTYPE = np.float16

# keys ase.db reserves for itself (they cannot be key-value pairs)
_RESERVED = {
    "id",
    "unique_id",
    "ctime",
    "mtime",
    "user",
    "calculator",
    "energy",
    "free_energy",
    "forces",
    "stress",
    "dipole",
    "charges",
    "magmom",
    "magmoms",
    "natoms",
    "formula",
    "age",
    "pbc",
    "numbers",
    "positions",
    "cell",
    "fmax",
    "smax",
    "volume",
    "mass",
    "charge",
}
# atoms.info keys renamed when they become key-value pairs (the MD seed owns ``seed``)
_INFO_RENAME = {"seed": "structure_seed", "size": "structure_size"}
# atoms.info keys that go to the row's data (parsed if JSON), not to key-value pairs
_INFO_DATA = ("defect_sites", "lattice", "source", "frame_shift")


def is_url(db) -> bool:
    return isinstance(db, str) and (db.startswith("postgresql://") or db.startswith("postgres://"))


def _name(db) -> str:
    if isinstance(db, PurePath):
        return str(db)
    if isinstance(db, str):
        return db
    # an open ase.db connection
    name = getattr(db, "filename", None)
    if name is None:
        raise TypeError(f"expected a database path, URL or ase.db connection, got {type(db).__name__}")
    return str(name)


def connect(db):
    """An ``ase.db`` connection to ``db``: a file path (SQLite), a ``postgresql://`` URL,
    or an already open connection (returned unchanged)."""
    import ase.db
    from ase.db.core import Database

    if isinstance(db, Database):
        return db
    name = _name(db)
    if is_url(name):
        try:
            return ase.db.connect(name, type="postgresql")
        except ImportError as err:  # psycopg2 missing
            raise InputError(
                f"{name}: PostgreSQL needs psycopg2 and ase-db-backends (pip install psycopg2-binary ase-db-backends): {err}"
            ) from None
    path = Path(name)
    if path.parent and not path.parent.exists():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    con = ase.db.connect(str(path), type="db")
    if (path.parent / ROWS_DIR).is_dir():
        sync_rows(con, path)
    return con


def database_exists(db) -> bool:
    """True for a URL, an open connection, a database file, or a database file's ``rows/``
    folder with row files in it (the index is then built by :func:`connect`)."""
    name = db if isinstance(db, (str, PurePath)) else None
    if name is None or is_url(str(name)):
        return True
    path = Path(name)
    return path.is_file() or (path.parent.is_dir() and bool(_row_files(path.parent / ROWS_DIR)))


ROWS_DIR = "rows"  # beside a database file: one JSON file per row, written once
_ROW_FILE = re.compile(r"^(\d{5,})-([0-9a-f]+)\.json$")


def _row_files(folder: Path) -> dict[int, Path]:
    files = {}
    for f in folder.glob("*.json"):
        m = _ROW_FILE.match(f.name)
        if m:
            files[int(m.group(1))] = f
    return files


def sync_rows(con, path: Path) -> None:
    """Bring a database file and its ``rows/`` folder together: rows of the index without a
    row file get one (written once); row files beyond the index's last row are added to it,
    in id order, keeping their ids and unique ids. A mismatch (a row file whose id the
    index holds with another unique id) is an :class:`InputError`."""
    folder = path.parent / ROWS_DIR
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        files = _row_files(folder)
        n = con.count()
        for row in con.select() if len(files) < n else ():
            if row.id not in files:
                export_row(row, folder)
        for i in sorted(k for k in files if k > n):
            _import_row(con, files[i], i, path)


def export_row(row, folder: Path) -> Path:
    """Write one row to ``folder/<id>-<unique_id>.json`` (ase.db JSON), once."""
    import ase.db

    target = Path(folder) / f"{row.id:05d}-{row.unique_id}.json"
    if target.exists():
        return target
    with atomic_output(target) as tmp:
        ase.db.connect(str(tmp), type="json", append=False).write(
            row, key_value_pairs=row.key_value_pairs, data=row.data
        )
        os.chmod(tmp, 0o644)
    return target


def _import_row(con, file: Path, row_id: int, path: Path) -> None:
    import ase.db

    row = ase.db.connect(str(file), type="json").get(id=1)
    if row.unique_id != _ROW_FILE.match(file.name).group(2):
        raise InputError(f"{file}: holds row {row.unique_id}, not the one its name says")
    new = con.write(row, key_value_pairs=row.key_value_pairs, data=row.data)
    if new != row_id:
        raise InputError(f"{path}: row file {file.name} became row {new}; the index and {file.parent} disagree")


def grids_folder(db, grids_dir=None) -> Path:
    """The folder holding the grid files of ``db``: ``grids_dir`` if given, else ``grids/``
    beside the SQLite file. A PostgreSQL database needs ``grids_dir``."""
    if grids_dir is not None:
        return Path(grids_dir)
    name = _name(db)
    if is_url(name):
        raise InputError(
            f"{_redact(name)}: a PostgreSQL database needs the grids folder given explicitly (--grids DIR)"
        )
    return Path(name).resolve().parent / "grids"


def _redact(url: str) -> str:
    # never print a password from a URL
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _kvp_value(v):
    """A key-value-pair value ase.db accepts, or None if ``v`` is not a scalar."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, str):
        try:  # ase.db refuses strings that read as numbers ("104", "010")
            float(v)
        except ValueError:
            return v
        return None
    return None


def provenance(atoms) -> tuple[dict, dict]:
    """Split ``atoms.info`` into key-value pairs (scalars) and data (everything else).

    ``defects`` becomes a short string key (``"none"`` if there are none); ``seed`` and
    ``size`` of the structure are renamed ``structure_seed``/``structure_size`` so that the
    MD seed owns ``seed``. The whole info is also kept in ``data["structure_info"]``.
    """
    import json

    kvp: dict[str, Any] = {}
    info = dict(atoms.info)
    data: dict[str, Any] = {}
    for key in _INFO_DATA:
        if key in info:
            value = info[key]
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            data[key] = json.loads(json.dumps(value, default=_json_default))
    for key, value in info.items():
        if key in _INFO_DATA:
            continue
        key = _INFO_RENAME.get(key, key)
        if key in _RESERVED or not key.isidentifier():
            continue
        if key == "defects":
            kvp["defects"] = _defects_string(value)
            continue
        v = _kvp_value(value)
        if v is not None:
            kvp[key] = v
    if "surface" not in kvp and "polymorph" in info and "facet" in info:
        kvp["surface"] = f"{info['polymorph']}-{info['facet']}"
    kvp.setdefault("defects", "none")
    data["structure_info"] = json.loads(json.dumps(info, default=_json_default))
    return kvp, data


def _defects_string(value) -> str:
    import json

    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return "none"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=_json_default, separators=(",", ":"), sort_keys=True)


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def _checked_halves(half1, half2, cell):
    """The two halves (rho/rho_bulk) and the cell (Å) as arrays, or ValueError."""
    half1, half2, cell = np.asarray(half1), np.asarray(half2), np.asarray(cell, dtype=float)
    if half1.ndim != 3 or half1.shape != half2.shape:
        raise ValueError(f"half1 and half2 must be 3D arrays of the same shape, got {half1.shape} and {half2.shape}")
    if cell.shape != (3, 3):
        raise ValueError(f"cell must be 3x3, got {cell.shape}")
    if not (np.isfinite(half1).all() and np.isfinite(half2).all()):
        raise ValueError("half-run densities contain NaN or inf; refusing to store them")
    if max(float(half1.max(initial=0)), float(half2.max(initial=0))) > float(np.finfo(GRID_DTYPE).max):
        raise ValueError("half-run densities overflow float16; are they normalised by rho_bulk?")
    return half1, half2, cell


def write_simulation(db, atoms, half1, half2, cell, key_value_pairs, data=None, grids_dir=None) -> int:
    """Store one finished simulation; return the new row id.

    ``atoms``: the slab without water (time-averaged positions, in the grid's frame); its
    ``info`` is added as provenance (see :func:`provenance`; explicit ``key_value_pairs``
    win). ``half1``/``half2``: rho/rho_bulk arrays (nx, ny, nz) on ``cell`` (3x3, Å), stored
    as float16. The grid file is written first and atomically under a fresh name; the row
    follows with ``status="done"`` unless ``key_value_pairs`` says otherwise.
    """
    from ase.db.core import now
    from ase.db.row import AtomsRow

    half1, half2, cell = _checked_halves(half1, half2, cell)

    con = connect(db)
    folder = grids_folder(db, grids_dir)
    folder.mkdir(parents=True, exist_ok=True)

    uid = uuid.uuid4().hex
    target = folder / f"{uid}.npz"
    if target.exists():  # never rewrite a grid
        raise FileExistsError(f"{target}: grid file already exists")
    with atomic_output(target) as tmp:
        np.savez_compressed(
            tmp,
            water_density_half1=half1.astype(GRID_DTYPE),
            water_density_half2=half2.astype(GRID_DTYPE),
            cell=cell,
        )
        os.chmod(tmp, 0o644)
    sha = _sha256(target)

    kvp, prov_data = provenance(atoms)
    for k, v in dict(key_value_pairs).items():
        v2 = _kvp_value(v)
        if v2 is None:
            if v is None:
                continue
            raise ValueError(f"key-value pair {k}={v!r} is not a string or number")
        kvp[k] = v2
    kvp.setdefault("status", "done")
    kvp["grid_file"] = f"grids/{uid}.npz"
    kvp["grid_sha256"] = sha
    all_data = dict(prov_data)
    all_data.update(data or {})
    all_data["grid_shape"] = list(half1.shape)

    slab = atoms.copy()
    slab.info = {}
    row = AtomsRow(slab)
    row.unique_id = uid
    row.ctime = now()
    row.user = os.getenv("USER")
    try:
        row_id = con.write(row, key_value_pairs=kvp, data=all_data)
    except BaseException:
        # the row did not make it: the grid would be an orphan, remove it
        target.unlink(missing_ok=True)
        raise
    if not is_url(_name(db)):
        rows = Path(_name(db)).resolve().parent / ROWS_DIR
        rows.mkdir(exist_ok=True)
        export_row(con.get(id=row_id), rows)
    return row_id


def get_row(db, row_or_id):
    """The row ``row_or_id`` (an id, a unique_id string, or a row, returned as is)."""
    if hasattr(row_or_id, "key_value_pairs"):
        return row_or_id
    con = connect(db)
    try:
        if isinstance(row_or_id, str) and not row_or_id.isdigit():
            return con.get(unique_id=row_or_id)
        return con.get(id=int(row_or_id))
    except KeyError:
        raise InputError(f"{_redact(_name(db))}: no row {row_or_id}") from None


def grid_path(db, row, grids_dir=None) -> Path:
    rel = row.get("grid_file")
    if not rel:
        raise InputError(f"{_redact(_name(db))}: row {row.id} has no grid_file")
    if grids_dir is not None:
        return Path(grids_dir) / Path(rel).name
    name = _name(db)
    if is_url(name):
        raise InputError(f"{_redact(name)}: a PostgreSQL database needs the grids folder given explicitly")
    return Path(name).resolve().parent / rel


def load_density(db, row_or_id, grids_dir=None) -> dict:
    """The two half-run water densities of a row: ``dict(half1, half2, cell)``.

    ``half1``/``half2``: float32 arrays (nx, ny, nz), rho/rho_bulk on the full periodic cell
    from its corner (``values[i, j, k]`` at ``(i/nx) a + (j/ny) b + (k/nz) c``); ``cell``: 3x3
    (Å). The file's SHA-256 is checked against the row's ``grid_sha256``.
    """
    row = get_row(db, row_or_id)
    path = grid_path(db, row, grids_dir)
    if not path.exists():
        raise InputError(f"{path}: grid file of row {row.id} is missing")
    sha = _sha256(path)
    if sha != row.get("grid_sha256"):
        raise InputError(
            f"{path}: SHA-256 {sha[:12]}... does not match row {row.id} ({str(row.get('grid_sha256'))[:12]}...)"
        )
    with np.load(path) as f:
        missing = [k for k in GRID_KEYS if k not in f.files]
        if missing:
            raise InputError(f"{path}: missing arrays {missing}")
        return {
            "half1": f["water_density_half1"].astype(np.float32),
            "half2": f["water_density_half2"].astype(np.float32),
            "cell": np.asarray(f["cell"], dtype=float),
        }


def density_grid(db, row_or_id, grids_dir=None):
    """The mean of the two halves as a :class:`hydrolayer.grids.Grid` (rho/rho_bulk), with
    the slab atoms attached so that cube viewers show the structure."""
    from .grids import Grid, GridSpec

    row = get_row(db, row_or_id)
    d = load_density(db, row, grids_dir)
    mean = 0.5 * (d["half1"] + d["half2"])
    meta = {k: row.get(k) for k in ("surface", "defects", "rho_bulk", "production_ps", "seed", "z_top", "z_bottom")}
    meta["row_id"] = row.id
    meta["unique_id"] = row.unique_id
    return Grid(
        spec=GridSpec(d["cell"], mean.shape),
        values=mean,
        channels=("water",),
        units="rho/rho_bulk",
        meta={k: v for k, v in meta.items() if v is not None},
        atoms=row.toatoms(),
    )


def iter_rows(db, query=None, **selection) -> Iterator:
    """Rows with ``status="done"`` (unless ``status`` is given) matching ``selection``
    (key=value filters) and the optional ase.db ``query`` string."""
    con = connect(db)
    selection.setdefault("status", "done")
    yield from con.select(query, **selection)


def orphan_grids(db, grids_dir=None) -> list[Path]:
    """Grid files no row refers to (left by a crash between grid and row writes)."""
    folder = grids_folder(db, grids_dir)
    if not folder.exists():
        return []
    con = connect(db)
    used = {Path(r.get("grid_file", "")).name for r in con.select()}
    return sorted(p for p in folder.glob("*.npz") if p.name not in used)


LIST_COLUMNS = (
    "id",
    "surface",
    "defects",
    "production_ps",
    "temperature",
    "seed",
    "rho_bulk",
    "ns_per_day",
    "net_charge",
    "first_layer_drift",
    "status",
)


def format_table(db, columns=LIST_COLUMNS, **selection) -> str:
    """A plain-text table of every row (any status) for ``hydrolayer db list``."""
    con = connect(db)
    rows = []
    for r in con.select(**selection):
        cells = []
        for c in columns:
            v = r.id if c == "id" else r.get(c, "")
            if isinstance(v, float):
                v = f"{v:.5f}" if c == "rho_bulk" else f"{v:+.3f}" if c == "first_layer_drift" else f"{v:g}"
            cells.append(str(v))
        cells[columns.index("defects")] = cells[columns.index("defects")][:40] if "defects" in columns else ""
        rows.append(cells)
    if not rows:
        return f"{_redact(_name(db))}: no rows"
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]

    def line(cells):
        return "  ".join(s.ljust(w) for s, w in zip(cells, widths)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in rows])


def first_layer_series(row) -> dict | None:
    """A row's first-layer water over production: ``{"t_ps": block ends, "block_ps": block
    lengths, "top": counts, "bottom": counts}`` (mean number of water O 1-3 Å above each face's plane per block;
    ``conventions.FIRST_LAYER``), or None for rows made before it was recorded."""
    import numpy as np

    from .density import first_layer_counts

    fp = (row.data or {}).get("face_profiles")
    if not fp:
        return None
    counts = first_layer_counts(np.asarray(fp["mean_counts"], float), np.asarray(fp["edges"], float))
    return {
        "t_ps": np.cumsum(fp["block_ps"]).tolist(),
        "block_ps": list(fp["block_ps"]),
        "top": counts[:, 0].tolist(),
        "bottom": counts[:, 1].tolist(),
    }


def format_row(db, row_id) -> str:
    """One row as text for ``hydrolayer db show``: its key-value pairs and, where recorded,
    the first-layer water count of each face per production block."""
    row = get_row(db, row_id)
    lines = [f"row {row.id} of {_redact(_name(db))}"]
    lines += [f"  {k}: {v}" for k, v in sorted(row.key_value_pairs.items())]
    series = first_layer_series(row)
    if series is None:
        lines.append("first-layer water per block: not recorded (rows made before data set v1)")
        return "\n".join(lines)
    lines.append(
        f"first-layer water (water O 1-3 Å above each face's Ca plane), per block; relative drift over "
        f"production {row.get('first_layer_drift', 0.0):+.3f}:"
    )
    lines.append("  t (ps)    top  bottom")
    lines += [f"  {t:6.1f}  {a:5.1f}  {b:6.1f}" for t, a, b in zip(series["t_ps"], series["top"], series["bottom"])]
    return "\n".join(lines)


def export_cube(db, row_id, output, grids_dir=None) -> list[Path]:
    """Write the mean of the two halves of row ``row_id`` (rho/rho_bulk) to ``output``
    (.cube or .npz, through :meth:`hydrolayer.grids.Grid.write`)."""
    output = Path(output)
    if output.suffix not in (".cube", ".npz"):
        raise InputError(f"{output}: unknown output format {output.suffix!r} (use .cube or .npz)")
    grid = density_grid(db, row_id, grids_dir)
    return grid.write(output)
