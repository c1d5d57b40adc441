"""Volumetric grids: :class:`GridSpec`, :class:`Grid`, Gaussian cube and ``.npz`` I/O.

Conventions (fixed for the whole package):

* lengths in Å; the cell rows are the lattice vectors a, b, c;
* cube-file sampling: ``values[..., i, j, k]`` is sampled at
  ``origin + (i/nx) a + (j/ny) b + (k/nz) c`` (the last point of an axis is one spacing
  short of the far face, so a periodic axis tiles without a duplicated plane);
* ``values`` are channels first: shape ``(n_channels, nx, ny, nz)``;
* periodic in x and y (a and b), not in z.

A cube file holds one channel; :meth:`Grid.write_cube` writes channel ``i`` (default 0) and
:func:`write_channel_cubes` writes one file per channel. Cube files store lengths in Bohr;
ASE converts, so ``ase.io.cube.read_cube_data`` gives back the same values and a cell in Å.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .util import InputError, atomic_output

__all__ = ["GridSpec", "Grid", "read_grid", "write_channel_cubes", "bilinear_periodic"]


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """Where the points of a grid are: ``cell`` (3x3, Å, rows a b c), ``shape``, ``origin`` (Å)."""

    cell: np.ndarray
    shape: tuple[int, int, int]
    origin: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))

    def __post_init__(self):
        cell = np.asarray(self.cell, dtype=float)
        if cell.shape != (3, 3):
            raise ValueError(f"GridSpec.cell must be 3x3, got shape {cell.shape}")
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"GridSpec.shape must be three positive integers, got {self.shape}")
        origin = np.asarray(self.origin, dtype=float).reshape(3)
        object.__setattr__(self, "cell", cell)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "origin", origin)

    @classmethod
    def orthogonal(cls, lengths: Sequence[float], shape: Sequence[int], origin=(0.0, 0.0, 0.0)):
        """An orthogonal box with edge ``lengths`` (Å)."""
        return cls(np.diag(np.asarray(lengths, dtype=float)), tuple(shape), np.asarray(origin, float))

    @property
    def voxel_vectors(self) -> np.ndarray:
        """Rows: the step between neighbouring points along each axis (Å)."""
        return self.cell / np.asarray(self.shape, dtype=float)[:, None]

    @property
    def spacing(self) -> np.ndarray:
        """Length of each voxel vector (Å)."""
        return np.linalg.norm(self.voxel_vectors, axis=1)

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel (Å^3)."""
        return float(abs(np.linalg.det(self.voxel_vectors)))

    def axis(self, i: int) -> np.ndarray:
        """Fractional positions 0, 1/n, ..., (n-1)/n along axis ``i`` (cube convention)."""
        return np.arange(self.shape[i]) / self.shape[i]

    def points(self) -> np.ndarray:
        """Cartesian coordinates of every point, shape ``(nx, ny, nz, 3)``."""
        f = np.stack(np.meshgrid(self.axis(0), self.axis(1), self.axis(2), indexing="ij"), axis=-1)
        return self.origin + f @ self.cell

    def z_values(self) -> np.ndarray:
        """Heights of the k planes (Å), for a cell whose c vector is along z."""
        return self.origin[2] + self.axis(2) * self.cell[2, 2]

    def to_dict(self) -> dict:
        return {"cell": self.cell.tolist(), "shape": list(self.shape), "origin": self.origin.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "GridSpec":
        return cls(np.asarray(d["cell"]), tuple(d["shape"]), np.asarray(d["origin"]))

    def __eq__(self, other):
        return (
            isinstance(other, GridSpec)
            and self.shape == other.shape
            and np.allclose(self.cell, other.cell)
            and np.allclose(self.origin, other.origin)
        )

    __hash__ = None  # mutable numpy members


@dataclasses.dataclass
class Grid:
    """Values on a :class:`GridSpec`, channels first, with units and provenance.

    ``units`` is one string for all channels (``"A^-3"`` for descriptors and number
    densities, ``"rho/rho_bulk"`` for normalised water density). ``sigma`` is the Gaussian
    width (Å) used to make the values, if any. ``meta`` is JSON-serialisable provenance.
    ``atoms`` (optional) is written into cube files so that viewers show the structure.
    """

    spec: GridSpec
    values: np.ndarray
    channels: tuple[str, ...] = ("value",)
    units: str = ""
    sigma: float | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    atoms: Any = None

    def __post_init__(self):
        values = np.asarray(self.values)
        if values.ndim == 3:
            values = values[None]
        if values.ndim != 4 or tuple(values.shape[1:]) != self.spec.shape:
            raise ValueError(f"Grid.values must have shape (channels, {self.spec.shape}), got {values.shape}")
        self.channels = tuple(self.channels)
        if len(self.channels) != values.shape[0]:
            raise ValueError(f"Grid has {values.shape[0]} channels but {len(self.channels)} names")
        self.values = values

    def channel(self, name: str) -> np.ndarray:
        """The 3D array of channel ``name``."""
        try:
            return self.values[self.channels.index(name)]
        except ValueError:
            raise KeyError(f"no channel {name!r}; channels are {self.channels}") from None

    # ------------------------------------------------------------------ npz
    def write_npz(self, path) -> Path:
        """Write a compressed ``.npz`` (keys ``values``, ``channels``, ``cell``, ``origin``,
        ``sigma``, ``units``, ``meta``); atomic: nothing is left behind on failure."""
        path = Path(path)
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh,
                    values=self.values,
                    channels=np.array(self.channels),
                    cell=self.spec.cell,
                    origin=self.spec.origin,
                    sigma=np.array(np.nan if self.sigma is None else self.sigma),
                    units=np.array(self.units),
                    meta=np.array(json.dumps(self.meta, default=_json_default)),
                )
        return path

    @classmethod
    def read_npz(cls, path) -> "Grid":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                values = z["values"]
                spec = GridSpec(z["cell"], values.shape[1:], z["origin"])
                sigma = float(z["sigma"]) if "sigma" in z else float("nan")
                return cls(
                    spec,
                    values,
                    tuple(str(c) for c in z["channels"]),
                    units=str(z["units"]) if "units" in z else "",
                    sigma=None if np.isnan(sigma) else sigma,
                    meta=json.loads(str(z["meta"])) if "meta" in z else {},
                )
        except FileNotFoundError:
            raise InputError(f"{path}: file not found") from None
        except (KeyError, ValueError, OSError) as err:
            raise InputError(f"{path}: not a hydrolayer grid .npz ({err})") from None

    # ----------------------------------------------------------------- cube
    def write_cube(self, path, channel: int | str = 0) -> Path:
        """Write one channel as a Gaussian cube file (lengths in Bohr inside the file,
        values unchanged). Atomic: nothing is left behind on failure."""
        from ase import Atoms
        from ase.io.cube import write_cube

        idx = self.channels.index(channel) if isinstance(channel, str) else int(channel)
        atoms = self.atoms.copy() if self.atoms is not None else Atoms()
        atoms.set_cell(self.spec.cell)
        atoms.pbc = True
        comment = f"hydrolayer {self.channels[idx]} [{self.units}] sigma={self.sigma}"
        path = Path(path)
        with atomic_output(path) as tmp:
            with open(tmp, "w") as fh:
                write_cube(fh, atoms, data=self.values[idx], origin=self.spec.origin, comment=comment)
        return path

    @classmethod
    def read_cube(cls, path) -> "Grid":
        """Read a cube file (any program's) into a one-channel grid; cell and origin in Å."""
        from ase.io.cube import read_cube

        path = Path(path)
        try:
            with open(path) as fh:
                d = read_cube(fh, read_data=True)
        except FileNotFoundError:
            raise InputError(f"{path}: file not found") from None
        except Exception as err:  # garbled file: ASE raises many kinds
            raise InputError(f"{path}: not a readable cube file ({type(err).__name__}: {err})") from None
        data = np.asarray(d["data"])
        atoms = d["atoms"]
        spec = GridSpec(np.asarray(d["spacing"]) * np.asarray(data.shape)[:, None], data.shape, d["origin"])
        name, units, sigma = "value", "", None
        first = _first_line(path)
        if first.startswith("hydrolayer "):
            parts = first.split()
            name = parts[1]
            if "[" in first and "]" in first:
                units = first[first.index("[") + 1 : first.index("]")]
            for p in parts:
                if p.startswith("sigma=") and p[6:] not in ("None", ""):
                    sigma = float(p[6:])
        return cls(spec, data[None], (name,), units=units, sigma=sigma, atoms=atoms if len(atoms) else None)

    # ---------------------------------------------------------------- generic
    def write(self, path, channel: int | str | None = None) -> list[Path]:
        """Write by extension: ``.npz`` (all channels) or ``.cube`` (one file per channel
        when there are several: ``stem.<channel>.cube``)."""
        path = Path(path)
        if path.suffix == ".npz":
            return [self.write_npz(path)]
        if path.suffix == ".cube":
            if channel is not None or len(self.channels) == 1:
                return [self.write_cube(path, 0 if channel is None else channel)]
            return write_channel_cubes(self, path)
        raise InputError(f"{path}: unknown grid format {path.suffix!r} (use .npz or .cube)")


def write_channel_cubes(grid: Grid, path) -> list[Path]:
    """One cube file per channel, named ``<stem>.<channel>.cube`` beside ``path``."""
    path = Path(path)
    return [grid.write_cube(path.with_name(f"{path.stem}.{c}.cube"), i) for i, c in enumerate(grid.channels)]


def bilinear_periodic(field2d: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Periodic bilinear interpolation of a lateral field (nx, ny[, nz]) on the cube grid
    convention (point (i, j) at fractional (i/nx, j/ny)) at fractional points ``frac`` (n, 2);
    returns (n[, nz])."""
    nx, ny = field2d.shape[:2]
    u = frac[:, 0] * nx
    v = frac[:, 1] * ny
    i0 = np.floor(u).astype(int)
    j0 = np.floor(v).astype(int)
    wu = (u - i0)[:, None] if field2d.ndim == 3 else u - i0
    wv = (v - j0)[:, None] if field2d.ndim == 3 else v - j0
    i0 %= nx
    j0 %= ny
    i1 = (i0 + 1) % nx
    j1 = (j0 + 1) % ny
    return (
        (1 - wu) * (1 - wv) * field2d[i0, j0]
        + wu * (1 - wv) * field2d[i1, j0]
        + (1 - wu) * wv * field2d[i0, j1]
        + wu * wv * field2d[i1, j1]
    )


def read_grid(path) -> Grid:
    """Read a ``.npz`` or ``.cube`` grid by extension."""
    path = Path(path)
    if path.suffix == ".npz":
        return Grid.read_npz(path)
    if path.suffix == ".cube":
        return Grid.read_cube(path)
    raise InputError(f"{path}: unknown grid format {path.suffix!r} (use .npz or .cube)")


def _first_line(path: Path) -> str:
    with open(path) as fh:
        return fh.readline().strip()


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
