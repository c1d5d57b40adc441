"""Reading, checking and writing structure files.

:func:`read_structure` reads any file ASE reads and checks it with
:func:`validate_structure`: the geometry (a periodic slab, normal +z, supported elements,
no overlapping atoms) and the metadata in ``atoms.info`` that the pipeline parses later
(:func:`validate_info`), so that a bad file fails in a second, not after the MD.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import numpy as np
from ase import Atoms

from ..util import InputError, atomic_output
from .defects import parse_defect_sites
from .molecules import water_mask

__all__ = ["SUPPORTED_ELEMENTS", "read_structure", "validate_info", "validate_structure", "write_structure"]

SUPPORTED_ELEMENTS = ("Ca", "Mg", "C", "O", "H")


def read_structure(path, format: str | None = None, require_slab: bool = True) -> Atoms:
    """Read any structure file ASE reads (``format``: an ASE format name, default: guessed
    from ``path``), and check it is a usable surface slab (lengths in Å).

    One-line :class:`InputError` naming the file for: a missing file, an unknown format, an
    unreadable or garbled file, no periodic lateral cell, unsupported elements (named),
    atoms closer than 0.5 Å, (``require_slab``) no gap above the top face to place water
    in, and malformed metadata (:func:`validate_info`). Water already in the file is
    recognised (:func:`~hydrolayer.structures.find_waters`) and kept; the descriptor
    ignores it. The surface normal must be +z: a and b in the xy plane.
    """
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    try:
        atoms = ase.io.read(path, format=format)
    except UnknownFileTypeError as err:
        raise InputError(f"{path}: unknown structure format ({err})") from None
    except Exception as err:  # ASE raises many kinds on garbled files
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: cannot read structure ({type(err).__name__}: {msg})") from None
    if isinstance(atoms, list):
        atoms = atoms[-1]
    if len(atoms) == 0:
        raise InputError(f"{path}: no atoms in file")
    validate_structure(atoms, path, require_slab=require_slab)
    return atoms


def validate_structure(atoms: Atoms, path="<structure>", require_slab: bool = True) -> None:
    """The checks of :func:`read_structure` on an in-memory ``Atoms`` (positions and cell
    in Å); ``path`` (a file name) starts every :class:`InputError` message."""
    _check_cell(atoms, path)
    _check_atoms(atoms, path)
    if require_slab:
        _check_slab(atoms, path)
    validate_info(atoms, path)


def _check_cell(atoms: Atoms, path) -> None:
    cell = atoms.cell[:]
    if not atoms.pbc[:2].all() or np.linalg.norm(np.cross(cell[0], cell[1])) < 1e-6:
        raise InputError(f"{path}: no periodic lateral cell (need periodic a and b vectors)")
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6:
        raise InputError(f"{path}: cell vectors a and b must lie in the xy plane (surface normal along +z)")
    if abs(cell[2, 2]) < 1e-6:
        raise InputError(f"{path}: cell has no extent along z")


def _check_atoms(atoms: Atoms, path) -> None:
    from ase.neighborlist import neighbor_list

    bad = sorted(set(atoms.get_chemical_symbols()) - set(SUPPORTED_ELEMENTS))
    if bad:
        raise InputError(f"{path}: unsupported elements {', '.join(bad)} (supported: {', '.join(SUPPORTED_ELEMENTS)})")
    if not np.all(np.isfinite(atoms.positions)):
        raise InputError(f"{path}: non-finite atom positions")
    probe = atoms.copy()
    probe.pbc = True
    i, j, d = neighbor_list("ijd", probe, 0.5)
    if len(i):
        k = int(np.argmin(d))
        raise InputError(f"{path}: overlapping atoms {i[k]} and {j[k]} are {d[k]:.3f} Å apart (< 0.5 Å)")


def _check_slab(atoms: Atoms, path) -> None:
    solid = ~water_mask(atoms)
    z = atoms.positions[solid, 2]
    lz = atoms.cell[2, 2]
    zs = np.sort(np.mod(z - z.min(), lz))
    gaps = np.diff(np.concatenate([zs, [zs[0] + lz]]))
    if gaps.max() < 6.0:
        raise InputError(
            f"{path}: not a slab: no gap of at least 6 Å above the top face to place water in "
            f"(largest gap along z is {gaps.max():.1f} Å)"
        )
    if not np.isin(atoms.get_chemical_symbols(), ("Ca", "Mg")).any():
        raise InputError(f"{path}: no Ca or Mg atoms: cannot place the surface plane")
    if np.argmax(gaps) != len(zs) - 1:  # the widest gap must be the one across the boundary
        raise InputError(
            f"{path}: the slab crosses the cell boundary along z; "
            "shift it so that the gap (vacuum or water) is above the top face"
        )


# atoms.info keys the pipeline parses after the MD (simulate, store, data, descriptors,
# predict), with what each must hold; any other key is provenance, stored as it is
_NUMBER_KEYS = ("z_top", "z_bottom", "net_charge")  # Å, Å, e


def validate_info(atoms, path="<structure>") -> None:
    """Check the metadata in ``atoms.info`` (``atoms``: an ``Atoms`` or its info dict)
    that the pipeline parses later, before any work starts: ``defect_sites`` (a JSON list
    of records, :func:`~hydrolayer.structures.defect_sites`), ``frame_shift`` (three
    numbers, Å), ``z_top``/``z_bottom`` (numbers, Å), ``net_charge`` (a number, e) and
    ``surface`` (a name). One-line :class:`InputError` ``"<path>: ..."`` otherwise."""
    info = atoms if isinstance(atoms, dict) else atoms.info
    if "defect_sites" in info:
        parse_defect_sites(info["defect_sites"], str(path))
    for key in _NUMBER_KEYS:
        if key in info and not _is_number(info[key]):
            raise InputError(f"{path}: info {key} must be a number, got {_short(info[key])}")
    if "frame_shift" in info:
        value = info["frame_shift"]
        try:
            value = json.loads(value) if isinstance(value, str) else value
            ok = len(value) == 3 and all(_is_number(v) for v in value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{path}: info frame_shift must be three numbers (Å), got {_short(info['frame_shift'])}")
    if "surface" in info and not (isinstance(info["surface"], str) and info["surface"].strip()):
        raise InputError(f"{path}: info surface must be a name such as calcite-104, got {_short(info['surface'])}")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def _short(value, n: int = 60) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= n else text[: n - 3] + "..."


def write_structure(atoms: Atoms, path, format: str | None = None) -> Path:
    """Write ``atoms`` (positions in Å) to ``path`` in ``format`` (an ASE format name;
    default: by extension, ``.extxyz`` keeps ``atoms.info``), atomically."""
    import ase.io

    path = Path(path)
    if format is None and path.suffix == ".extxyz":
        format = "extxyz"
    try:
        with atomic_output(path) as tmp:
            ase.io.write(tmp, atoms, format=format or _format_from_name(path))
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{path}: cannot write this format ({type(err).__name__}: {err})") from None
    return path


def _format_from_name(path: Path) -> str:
    from ase.io.formats import filetype

    try:
        return filetype(path, read=False)
    except Exception:
        raise InputError(f"{path}: unknown output format {path.suffix!r}") from None
