"""The conventions of hydrolayer, in one place: units, bulk water, the surface plane, the
window, heights, hydration-layer peaks, the first layer and the MD noise floor.

Every other module imports these; none re-derives them. The architecture page
(``docs/architecture.md``) says which stage uses which.

Units
    Å, ps, K, e, eV (ASE's units, :mod:`ase.units`); forces in eV/Å, converted to nN only
    for display (:data:`NN_PER_EV_PER_A`). Water density is stored and learned as
    rho/rho_bulk (dimensionless); number densities are in Å^-3.

Bulk water
    The MD water is SPC/Fw, whose density at 300 K and 1 bar is 1.012 g/cm3 (Wu, Tepper &
    Voth 2006): :data:`RHO_BULK` = 1.012 x :data:`WATER_NUMBER_DENSITY` Å^-3. Each MD run
    measures its own rho_bulk in the middle of its water gap and normalises with it
    (``density.normalise``); :data:`RHO_BULK` is only the reference for checks and for
    grids given in Å^-3 without their own bulk value.

Surface plane z_s
    The mean height of the outermost cation layer of a face (:func:`surface_planes`,
    :func:`outer_layers`): the Ca (or Mg) atoms within :data:`PLANE_TOL` Å inward of the
    outermost cation that starts a layer. A cation starts a layer when the cations within
    :data:`PLANE_TOL` inward of it number at least :data:`PLANE_MIN_SHARE` of the slab's
    fullest such layer; so an ion that left the surface during MD (an adatom in the time-
    averaged slab, 1-3 Å out on many aragonite (010) faces) does not define the plane on
    its own. Heights "above the surface" are z - z_s on the top face; the bottom face is
    mirrored (z -> -z) first.

Window
    A 10 x 10 x 20 Å box, 32 x 32 x 64 points at 0.3125 Å, laterally at (x0, y0) and from
    z_s - :data:`Z_BELOW` to z_s + 15 Å (:func:`window_heights`). Grid points follow the
    cube convention: point (i, j, k) sits at origin + (i/nx) a + (j/ny) b + (k/nz) c.

Hydration-layer peaks
    Maxima of a laterally averaged profile with a prominence of at least
    :data:`PEAK_PROMINENCE` (rho/rho_bulk), between :data:`PEAK_MIN_HEIGHT` and
    :data:`HYDRATION_RANGE` Å above z_s and at least 1 Å from the top of the profile,
    refined to sub-grid precision by a parabola through log(rho) (:func:`hydration_peaks`).

First layer
    Water 1-3 Å above z_s (:data:`FIRST_LAYER`): its mean density is the first layer's water
    content (the first maximum of calcite (10-14) is at 2.2 Å).

Noise
    The two halves h1, h2 of an MD run (rho/rho_bulk) give the *split-half difference*
    mean|h1 - h2| (:func:`split_half_difference`). The *noise floor* of the run's mean
    (h1 + h2) / 2 is half of it (:func:`noise_floor`): for independent halves with
    symmetric errors e1, e2 the mean's error (e1 + e2) / 2 has the distribution of
    (e1 - e2) / 2, so no model can be expected to come closer to the truth than that.
"""

from __future__ import annotations

import numpy as np
from ase import units

__all__ = [
    "KB",
    "NN_PER_EV_PER_A",
    "WATER_NUMBER_DENSITY",
    "SPCFW_DENSITY",
    "RHO_BULK",
    "CATIONS",
    "PLANE_TOL",
    "PLANE_MIN_SHARE",
    "outer_layers",
    "SPACING",
    "WINDOW_SHAPE",
    "WINDOW_SIZE",
    "Z_BELOW",
    "HYDRATION_RANGE",
    "PEAK_MIN_HEIGHT",
    "PEAK_PROMINENCE",
    "FIRST_LAYER",
    "first_layer_planes",
    "surface_planes",
    "planes_from_heights",
    "grid_peaks",
    "window_heights",
    "heights_above",
    "hydration_peaks",
    "split_half_difference",
    "noise_floor",
    "noise_floor_map",
]

# ------------------------------------------------------------------ units and bulk water
KB = units.kB  # Boltzmann constant, eV/K
NN_PER_EV_PER_A = units._e * 1e19  # 1 eV/Å in nN (1.602176634)
WATER_NUMBER_DENSITY = 0.033428  # Å^-3: water molecules at 1.000 g/cm3 (18.015 g/mol)
SPCFW_DENSITY = 1.012  # g/cm3: SPC/Fw at 300 K, 1 bar (Wu, Tepper & Voth 2006)
RHO_BULK = SPCFW_DENSITY * WATER_NUMBER_DENSITY  # Å^-3: SPC/Fw bulk water-O number density

# ------------------------------------------------------------------ the surface plane
CATIONS = ("Ca", "Mg")
PLANE_TOL = 1.0  # Å: cations this close inward of a layer's outermost one make the layer
PLANE_MIN_SHARE = 0.25  # a layer holds at least this share of the fullest layer's cations

# ------------------------------------------------------------------ the window
SPACING = 0.3125  # Å
WINDOW_SHAPE = (32, 32, 64)
WINDOW_SIZE = (10.0, 10.0, 20.0)  # Å
Z_BELOW = 5.0  # Å of the window below the surface plane

# ------------------------------------------------------------------ layers and peaks
HYDRATION_RANGE = 10.0  # Å above z_s: the hydration layers
PEAK_MIN_HEIGHT = 0.5  # Å above z_s
PEAK_PROMINENCE = 0.05  # rho/rho_bulk
FIRST_LAYER = (1.0, 3.0)  # Å above z_s


def surface_planes(atoms, tol: float = PLANE_TOL) -> tuple[float, float]:
    """Heights (Å) of the top and bottom surface planes of a slab: the mean z of the
    cations (Ca, Mg) within ``tol`` Å of the highest and of the lowest one. Cations are
    never water, so water in ``atoms`` is ignored; the slab must be contiguous in z."""
    symbols = np.asarray(atoms.get_chemical_symbols())
    return planes_from_heights(atoms.positions[np.isin(symbols, CATIONS), 2], tol)


def planes_from_heights(z_cations, tol: float = PLANE_TOL) -> tuple[float, float]:
    """:func:`surface_planes` from the cations' heights (Å) alone."""
    z = np.asarray(z_cations, float)
    top, bottom = outer_layers(z, tol)
    return float(z[top].mean()), float(z[bottom].mean())


def outer_layers(z_cations, tol: float = PLANE_TOL, share: float = PLANE_MIN_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the cations (heights ``z_cations``, Å) in the outermost layer of the top
    and of the bottom face: from the outside in, the first cation with at least ``share``
    of the fullest layer's count within ``tol`` inward of it starts the layer, which is
    every cation within ``tol`` inward of that one. Cations further out (ions that left
    the surface) belong to no layer."""
    z = np.asarray(z_cations, float)
    if len(z) == 0:
        raise ValueError("no Ca or Mg atoms: cannot place the surface plane")
    zs = np.sort(z)
    below = np.searchsorted(zs, zs, side="right") - np.searchsorted(zs, zs - tol, side="left")  # in [z - tol, z]
    above = np.searchsorted(zs, zs + tol, side="right") - np.searchsorted(zs, zs, side="left")  # in [z, z + tol]
    need = share * max(below.max(), above.max())
    z_top = zs[::-1][np.argmax(below[::-1] >= need)]
    z_bottom = zs[np.argmax(above >= need)]
    return (z >= z_top - tol) & (z <= z_top), (z <= z_bottom + tol) & (z >= z_bottom)


def window_starts(n: int, w: int) -> list[int]:
    """Start indices of the windows of ``w`` points that tile a periodic axis of ``n``
    points with a slight overlap: k = ceil(n / w) windows at round(m n / k) (one window
    when n <= w). The evaluation's fixed window grid and the uncertainty flags use it."""
    k = max(1, -(-n // w))
    return [int(round(m * n / k)) % n for m in range(k)]


def window_heights() -> np.ndarray:
    """Height above the surface plane (Å) of each k plane of a window (64 values)."""
    return -Z_BELOW + SPACING * np.arange(WINDOW_SHAPE[2])


def first_layer_planes() -> np.ndarray:
    """Mask of a window's k planes inside the first layer (:data:`FIRST_LAYER`, open interval)."""
    z = window_heights()
    return (z > FIRST_LAYER[0]) & (z < FIRST_LAYER[1])


def heights_above(spec, z_s: float) -> np.ndarray:
    """Height above the surface plane ``z_s`` (Å) of each k plane of a grid (``GridSpec``
    with c along z)."""
    return spec.z_values() - float(z_s)


def hydration_peaks(heights: np.ndarray, profile: np.ndarray, n: int = 3, zmax: float = HYDRATION_RANGE) -> list[dict]:
    """The first ``n`` hydration-layer maxima of a profile: ``[{"z": Å above z_s, "height":
    rho/rho_bulk}, ...]`` in order of height. ``heights``: Å above z_s, evenly spaced;
    ``profile``: rho/rho_bulk at those heights. See the module docstring for the rule."""
    from scipy.signal import find_peaks

    z = np.asarray(heights, float)
    y = np.asarray(profile, float)
    idx, _ = find_peaks(y, prominence=PEAK_PROMINENCE)
    dz = float(z[1] - z[0])
    out = []
    for i in idx:
        if not (PEAK_MIN_HEIGHT < z[i] <= zmax and z[i] < z[-1] - 1.0) or i == 0:
            continue
        s, h = _refine(y[i - 1 : i + 2])
        out.append({"z": float(z[i] + s * dz), "height": h})
    return out[:n]


def _refine(y3: np.ndarray) -> tuple[float, float]:
    """Sub-grid offset (in grid steps) and height of a maximum from three samples: a
    parabola through log(y), exact for a Gaussian peak (through y where y <= 0)."""
    y0, y1, y2 = (float(v) for v in y3)
    if min(y0, y1, y2) > 0:
        l0, l1, l2 = np.log([y0, y1, y2])
        den = l0 - 2 * l1 + l2
        s = 0.5 * (l0 - l2) / den if den < 0 else 0.0
        return s, float(np.exp(l1 - 0.25 * (l0 - l2) * s))
    den = y0 - 2 * y1 + y2
    s = 0.5 * (y0 - y2) / den if den < 0 else 0.0
    return s, float(y1 - 0.25 * (y0 - y2) * s)


def grid_peaks(values: np.ndarray, spec, z_s: float, n: int = 3) -> list[float]:
    """Heights above ``z_s`` (Å) of the first ``n`` hydration-layer maxima of a density
    (nx, ny, nz; rho/rho_bulk) on ``spec``, laterally averaged (:func:`hydration_peaks`)."""
    profile = np.asarray(values, float).mean(axis=(0, 1))
    return [p["z"] for p in hydration_peaks(heights_above(spec, z_s), profile, n=n)]


# ------------------------------------------------------------------ noise
def split_half_difference(half1, half2, mask=None) -> float:
    """mean|h1 - h2| (rho/rho_bulk) over the voxels selected by ``mask`` (all by default)."""
    d = np.abs(np.asarray(half1, np.float64) - np.asarray(half2, np.float64))
    return float(d[mask].mean() if mask is not None else d.mean())


def noise_floor(half1, half2, mask=None) -> float:
    """The MD noise floor of the mean of two halves: 0.5 mean|h1 - h2| (rho/rho_bulk)."""
    return 0.5 * split_half_difference(half1, half2, mask)


def noise_floor_map(half1, half2) -> np.ndarray:
    """The per-voxel noise floor 0.5 |h1 - h2| (rho/rho_bulk), in the halves' own dtype: its
    mean over any set of voxels is :func:`noise_floor` over them (for masks that differ from
    window to window, e.g. near defects, where the means must be pooled over windows)."""
    return 0.5 * np.abs(np.asarray(half1) - np.asarray(half2))
