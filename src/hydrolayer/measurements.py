"""Measured AFM maps: readers for the formats AFM users have, into one small dataclass.

Formats (the reader is picked by the file's extension):

* Gwyddion ``.gwy`` (``gwyfile``): a data field (2D) or a brick (3D, ``/brick/N``);
  ``channel`` picks a field by its title (default: the first one);
* Nanonis ``.sxm`` (``nanonispy2``): a 2D scan, the forward direction of ``channel``
  (default: the first channel), lines ordered by ``SCAN_DIR``;
* Nanonis ``.3ds`` (``nanonispy2``): grid spectroscopy, the usual 3D-AFM container; the
  sweep signal (e.g. ``Z (m)``) is the third axis;
* TIFF ``.tif``/``.tiff`` (``tifffile``): one 2D image; the pixel size from the
  resolution tags (cm or inch) or ImageJ's ``unit`` (nm, micron, Å), else ``pixel_size``;
* ``.npy`` and ``.csv``: plain arrays, ``pixel_size`` (Å) required; 3D ``.npy`` needs
  ``z_step`` (Å).

Conventions of :class:`Measurement` (the same as every hydrolayer grid):

* ``values[i, j]`` (2D) or ``values[i, j, k]`` (3D): ``i`` along x, ``j`` along y, at
  ``x = i dx``, ``y = j dy``; ``k`` along z at ``z[k]`` (Å, increasing away from the
  surface, an unknown constant apart from the height above it). Gwyddion fields and
  images (rows = y) are transposed into this; ``.npy`` and ``.csv`` arrays are taken as
  they are: first index x (a CSV's rows are x).
* lengths in Å; forces in nN (a file in N or pN is converted), frequency shifts in Hz.
  ``quantity`` is ``"force"``, ``"df"`` or ``"unknown"`` (from the unit).

Bad input raises :class:`hydrolayer.util.InputError` naming the file: a missing, unknown,
truncated or garbled file, a missing channel, no physical size and no ``pixel_size``.
The optional readers install with ``pip install "hydrolayer[afm]"``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .util import InputError

__all__ = ["Measurement", "read_measurement", "write_gwy", "FORMATS", "LENGTH_TO_A", "value_unit"]

FORMATS = (".gwy", ".sxm", ".3ds", ".tif", ".tiff", ".npy", ".csv")
LENGTH_TO_A = {
    "m": 1e10,
    "cm": 1e8,
    "mm": 1e7,
    "um": 1e4,
    "µm": 1e4,
    "micron": 1e4,
    "nm": 10.0,
    "A": 1.0,
    "Å": 1.0,
    "pm": 1e-2,
}
_VALUE_UNITS = {  # unit in the file -> (quantity, factor to the hydrolayer unit, that unit)
    "N": ("force", 1e9, "nN"),
    "nN": ("force", 1.0, "nN"),
    "pN": ("force", 1e-3, "nN"),
    "Hz": ("df", 1.0, "Hz"),
    "mHz": ("df", 1e-3, "Hz"),
    "kHz": ("df", 1e3, "Hz"),
}


@dataclasses.dataclass
class Measurement:
    """A measured map: ``values`` (nx, ny) or (nx, ny, nz), ``pixel_size`` (dx, dy) in Å,
    ``z`` (Å, 3D only), ``quantity`` (force / df / unknown), ``unit``, ``channel``, ``source``."""

    values: np.ndarray
    pixel_size: tuple[float, float]
    z: np.ndarray | None = None
    quantity: str = "unknown"
    unit: str = ""
    channel: str = ""
    source: str = ""

    @property
    def extent(self) -> tuple[float, float]:
        """Lateral size (Å) covered by the pixels."""
        return self.values.shape[0] * self.pixel_size[0], self.values.shape[1] * self.pixel_size[1]

    @property
    def is_3d(self) -> bool:
        return self.values.ndim == 3


def value_unit(unit: str) -> tuple[str, float, str]:
    """(quantity, factor, hydrolayer unit) for a value unit of a file; unknown units pass."""
    u = (unit or "").strip()
    return _VALUE_UNITS.get(u, ("unknown", 1.0, u))


def _length_factor(unit: str, path) -> float:
    u = (unit or "").strip()
    if u not in LENGTH_TO_A:
        raise InputError(f"{path}: unknown length unit {unit!r} for the pixel size")
    return LENGTH_TO_A[u]


def _finish(path, values, pixel_size, z=None, unit="", channel="") -> Measurement:
    """Convert units, check shapes and values, and build the :class:`Measurement`."""
    values = np.asarray(values, dtype=float)
    if values.ndim not in (2, 3) or min(values.shape[:2]) < 2:
        raise InputError(f"{path}: expected a 2D map or a 3D stack of at least 2 x 2 pixels, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path}: the map contains NaN or infinite values")
    if pixel_size is None:
        raise InputError(f"{path}: the file gives no physical pixel size; pass --pixel-size (Å)")
    dx, dy = (float(pixel_size), float(pixel_size)) if np.isscalar(pixel_size) else (float(p) for p in pixel_size)
    if not (dx > 0 and dy > 0):
        raise InputError(f"{path}: pixel size must be positive, got {dx:g} x {dy:g} Å")
    if values.ndim == 3 and (z is None or len(z) != values.shape[2]):
        raise InputError(f"{path}: a 3D stack needs its z values ({values.shape[2]} planes)")
    quantity, factor, unit_out = value_unit(unit)
    zz = None if z is None else np.asarray(z, float)
    if zz is not None and zz[-1] < zz[0]:  # planes ordered away from the surface
        zz, values = zz[::-1].copy(), values[:, :, ::-1]
    return Measurement(values * factor, (dx, dy), zz, quantity, unit_out, channel, str(path))


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")


def _need(module: str, path):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f'{path}: reading this format needs {module!r}: pip install "hydrolayer[afm]"') from None


def read_measurement(path, pixel_size=None, channel: str | None = None, z_step: float | None = None) -> Measurement:
    """Read a measured map by extension (see the module docstring). ``pixel_size`` (Å, one
    number or (dx, dy)) overrides the file's; ``z_step`` (Å) gives the planes of a 3D .npy."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{path}: unknown measurement format {path.suffix!r} (known: {', '.join(FORMATS)})")
    _check_file(path)
    reader = {
        ".gwy": _read_gwy,
        ".sxm": _read_sxm,
        ".3ds": _read_3ds,
        ".tif": _read_tiff,
        ".tiff": _read_tiff,
        ".npy": _read_npy,
        ".csv": _read_csv,
    }[suffix]
    try:
        raw = reader(path, channel, z_step)
    except InputError:
        raise
    except Exception as err:  # the libraries raise many kinds on garbled or truncated files
        msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise InputError(
            f"{path}: cannot read this {suffix} file, truncated or garbled ({type(err).__name__}: {msg})"
        ) from None
    if pixel_size is not None:
        raw["pixel_size"] = pixel_size
    return _finish(path, **raw)


def _raw(values, size, z=None, unit="", channel="") -> dict:
    """What a reader returns: the arguments of :func:`_finish` besides the path."""
    return dict(values=values, pixel_size=size, z=z, unit=unit, channel=channel)


def _pick(names: list[str], channel: str | None, path) -> int:
    if channel is None:
        return 0
    for i, n in enumerate(names):
        if n == channel:
            return i
    low = [n.lower() for n in names]
    hits = [i for i, n in enumerate(low) if channel.lower() in n]
    if len(hits) == 1:
        return hits[0]
    raise InputError(f"{path}: no channel {channel!r} (channels: {', '.join(names)})")


# --------------------------------------------------------------------------- Gwyddion
def _gwy_objects(obj) -> tuple[list[str], list]:
    """Titles and objects of the data fields (``/N/data``) and bricks (``/brick/N``)."""
    names, objs = [], []
    for key in obj:
        if key.endswith("/data") and key.count("/") == 2 and key[1:-5].isdigit():
            names.append(str(obj.get(f"{key}/title", f"field {key[1:-5]}")))
            objs.append(obj[key])
        elif key.startswith("/brick/") and key[7:].isdigit():
            names.append(str(obj.get(f"{key}/title", f"brick {key[7:]}")))
            objs.append(obj[key])
    return names, objs


def _unit(obj, key: str) -> str:
    u = obj.get(key)
    return str(u.get("unitstr", "")) if hasattr(u, "get") else ""


def _read_gwy(path: Path, channel, z_step) -> dict:
    gwyfile = _need("gwyfile", path)
    obj = gwyfile.load(str(path))
    names, objs = _gwy_objects(obj)
    if not objs:
        raise InputError(f"{path}: no data field or brick in this Gwyddion file")
    i = _pick(names, channel, path)
    f = objs[i]
    xres, yres = int(f["xres"]), int(f["yres"])
    if "zres" in f:  # GwyBrick: data[k][j][i]
        zres = int(f["zres"])
        data = np.asarray(f["data"], float).reshape(zres, yres, xres).transpose(2, 1, 0)
        lu = _unit(f, "si_unit_x")
        z = float(f.get("zoff", 0.0)) + np.arange(zres) * float(f["zreal"]) / zres
        z = z * _length_factor(_unit(f, "si_unit_z") or lu or "m", path)
        vu = _unit(f, "si_unit_w")
    else:
        data = np.asarray(f["data"], float).reshape(yres, xres).T
        lu, z, vu = _unit(f, "si_unit_xy"), None, _unit(f, "si_unit_z")
    size = None
    if lu and "xreal" in f:
        s = _length_factor(lu, path)
        size = (float(f["xreal"]) * s / xres, float(f["yreal"]) * s / yres)
    return _raw(data, size, z, vu, names[i])


# --------------------------------------------------------------------------- Nanonis
def _read_sxm(path: Path, channel, z_step) -> dict:
    nanonis = _need("nanonispy2.read", path)
    expected_header(path, b":SCANIT_END:")
    scan = nanonis.Scan(str(path))
    h = scan.header
    names = list(scan.signals)
    i = _pick(names, channel, path)
    img = np.asarray(scan.signals[names[i]]["forward"], float)  # (ny, nx), first recorded line first
    if str(h.get("scan_dir", "")).strip().lower() == "down":
        img = img[::-1]  # first recorded line is the top one: put row 0 at the lowest y
    info = h.get("data_info", {})
    units = list(info.get("Unit", []))
    nx, ny = (int(v) for v in h["scan_pixels"])
    w, hh = (float(v) * LENGTH_TO_A["m"] for v in h["scan_range"])
    return _raw(img.T, (w / nx, hh / ny), None, units[i] if i < len(units) else "", names[i])


def expected_header(path: Path, tag: bytes) -> None:
    """A Nanonis file must carry its end-of-header tag (else it is not one, or is cut short)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    if tag not in head:
        raise InputError(f"{path}: no {tag.decode()} tag: not a Nanonis file, or truncated in its header")


def _read_3ds(path: Path, channel, z_step) -> dict:
    nanonis = _need("nanonispy2.read", path)
    expected_header(path, b":HEADER_END:")
    grid = nanonis.Grid(str(path))
    h = grid.header
    nx, ny = h["dim_px"]
    per_pixel = h["num_parameters"] + h["num_sweep_signal"] * h["num_channels"]
    have = path.stat().st_size - grid.byte_offset
    if have < 4 * nx * ny * per_pixel:
        raise InputError(
            f"{path}: truncated: {have} data bytes for {nx} x {ny} pixels of {per_pixel} values "
            f"({4 * nx * ny * per_pixel} bytes)"
        )
    names = list(h["channels"])
    i = _pick(names, channel, path)
    data = np.asarray(grid.signals[names[i]], float).transpose(1, 0, 2)  # (ny, nx, nz) -> (nx, ny, nz)
    sweep = str(h["sweep_signal"])
    z_unit = sweep[sweep.rfind("(") + 1 : sweep.rfind(")")] if "(" in sweep else ""
    z = np.asarray(grid.signals["sweep_signal"], float) * _length_factor(z_unit or "m", path)
    w, hh = (float(v) * LENGTH_TO_A["m"] for v in h["size_xy"])
    name = names[i]
    unit = name[name.rfind("(") + 1 : name.rfind(")")] if "(" in name else ""
    return _raw(data, (w / nx, hh / ny), z, unit, name)


# --------------------------------------------------------------------------- TIFF, arrays
def _tiff_pixel_size(tif) -> tuple[float, float] | None:
    page = tif.pages[0]
    ij = tif.imagej_metadata or {}
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    rx, ry = (tags[k].value for k in ("XResolution", "YResolution"))
    px = rx[0] / rx[1] if rx[0] else 0.0
    py = ry[0] / ry[1] if ry[0] else 0.0
    unit = int(getattr(tags.get("ResolutionUnit"), "value", 1) or 1)
    per = {2: 2.54e8, 3: 1e8}.get(unit)  # Å per inch / cm
    if per is None and ij.get("unit"):
        u = str(ij["unit"]).replace("\\u00B5", "µ")
        per = LENGTH_TO_A.get(u)
    if per is None or not (px > 0 and py > 0):
        return None
    return per / px, per / py


def _read_tiff(path: Path, channel, z_step) -> dict:
    tifffile = _need("tifffile", path)
    with tifffile.TiffFile(str(path)) as tif:
        img = tif.asarray()
        size = _tiff_pixel_size(tif)
    img = np.squeeze(np.asarray(img, float))
    if img.ndim != 2:
        raise InputError(
            f"{path}: expected one 2D grey image, got shape {img.shape} (3D stacks: use .gwy, .3ds or .npy)"
        )
    return _raw(img.T, size, None, "", channel or "image")


def _read_npy(path: Path, channel, z_step) -> dict:
    arr = np.load(path, allow_pickle=False)
    z = None
    if arr.ndim == 3:
        if not z_step:
            raise InputError(f"{path}: a 3D .npy stack needs the plane spacing: pass --z-step (Å)")
        z = np.arange(arr.shape[2]) * float(z_step)
    return _raw(arr, None, z, "", channel or "array")


def _read_csv(path: Path, channel, z_step) -> dict:
    with open(path) as fh:
        head = fh.read(4096)
    arr = np.loadtxt(path, delimiter="," if "," in head else None, comments="#", ndmin=2)
    return _raw(arr, None, None, "", channel or "csv")


# --------------------------------------------------------------------------- writing
def write_gwy(m: Measurement, path, title: str | None = None) -> Path:
    """Write a 2D :class:`Measurement` as a Gwyddion ``.gwy`` file (SI units inside: m, and N
    or Hz), atomically; what ``tools/make_example_measurement.py`` ships."""
    from .util import atomic_output

    gwyfile = _need("gwyfile", path)
    if m.values.ndim != 2:
        raise InputError(f"{path}: only 2D maps are written as .gwy here")
    si = {"nN": ("N", 1e-9), "Hz": ("Hz", 1.0)}.get(m.unit, (m.unit, 1.0))
    nx, ny = m.values.shape
    field = gwyfile.objects.GwyDataField(
        np.ascontiguousarray(m.values.T * si[1], dtype=float),  # Gwyddion: rows are y
        xreal=nx * m.pixel_size[0] / LENGTH_TO_A["m"],
        yreal=ny * m.pixel_size[1] / LENGTH_TO_A["m"],
        si_unit_xy="m",
        si_unit_z=si[0],
    )
    container = gwyfile.objects.GwyContainer()
    container["/0/data"] = field
    container["/0/data/title"] = title or m.channel or "map"
    path = Path(path)
    with atomic_output(path) as tmp:
        container.tofile(str(tmp))
    return path
