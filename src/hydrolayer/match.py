"""Interpret a measured AFM map: rank candidate surfaces against it.

For each candidate surface: the predicted water density (:func:`predict.predict_density`),
its solvent-tip F_z (:func:`afm.sta_force`, optionally with the 3D tip blur
``tip_radius``), and the simulated quantity at constant heights (:func:`afm.constant_height`):

* ``quantity="force"``: F_z (nN), compared by value;
* ``quantity="df"``: a frequency-shift-like map, ``-dF_z/dz`` (the small-amplitude limit of
  FM-AFM, Δf = -f0/(2k) dF_z/dz), or with ``amplitude=A`` (Å) the large-amplitude average
  ``-(2/(A n)) Σ u_i F_z(h + A u_i)`` over Gauss-Chebyshev nodes u_i (Giessibl's weighting,
  centred on the mean tip height h; it tends to -dF_z/dz for A -> 0). Compared by pattern
  only (normalised): the instrument's f0/k and offset are unknown.

Then the registration that fits the measurement best. The measured map ``M`` (a crop of a
periodic surface, any size, not aligned to the cell) pixel ``p`` (Å, from the map centre
``c``) is compared with the simulated map at the cell point ``q = R(theta) (p - c) + t``:

* lateral offset ``t``: for one rotation, the measured pixels are splatted (bilinear
  weights) onto the candidate's periodic cell grid, and the normalised cross-correlation
  (NCC) at every grid offset is three FFT correlations (of M, of the footprint with S and
  with S^2: the NCC is normalised under each offset's own footprint); sub-grid offsets by
  a parabola through the peak;
* height ``h`` above the surface Ca plane (``afm.surface_z_of``): constant-height slices
  every ``COARSE_DZ`` Å in the range, then ``FINE_DZ`` around the best. The range stops at
  the candidate's contrast ceiling (``contrast_floor``, default ``DEFAULT_CONTRAST_FLOOR``):
  above the last height where its simulated map keeps that fraction of its largest lateral
  contrast, the model predicts bulk-like water whose faint lattice pattern, scaled up by
  the NCC, fits any lattice-like map; without the ceiling most best fits landed there
  (benchmarks/RESULTS.md, "AFM matching");
* rotation ``theta``: ``angles`` (default -3..3°, 1° apart), then ±0.5° around the best;
* pixel-size calibration: the refinement also tries ``scales`` (default ±1.5%): the map's
  pixels are taken as ``scale`` times the file's (real scanners are calibrated to a few %);
* blur: a lateral periodic Gaussian (std ``blurs`` Å) of each constant-height map, for the
  tip and the instrument's resolution;
* a 3D stack (x, y, z) is matched as a whole: its planes at ``h + (z_k - z_0)``, one NCC
  over all of them; the height is that of its lowest plane.

Before matching, a plane (a + b x + c y; a linear drift of the signal) is fitted to the
measurement (to the mean of its planes) and removed. The score is the NCC of the
measurement and the best-registered simulated map (1 is a perfect match). With the map's
noise known (``noise``, in the map's units) a chi^2 per pixel is reported as well:
residual of ``M = a S + plane`` (``a`` fitted for df, 1 for force) over noise^2. Force maps
are ranked by that residual (RMS, nN), everything else by NCC.

An ensemble model (``--model unet-ens-c``): the forward model is the members' mean density;
each member's F_z is kept too, and ``score="likelihood"`` ranks by the Gaussian likelihood
of ``M = a S + plane + e`` with var(e) = noise^2 + a^2 var_members(S) per pixel
(:func:`noise_aware_fit`): pixels where the members disagree count less. In the trials it
ranked no better than the NCC (the members' spread is far smaller than the model's error),
so NCC is the default.

A defect candidate's removed ions (``structures.defect_sites``) are mapped back into the
measurement through the best registration: where in the measured map the defect sits.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .util import InputError, atomic_output

__all__ = [
    "Candidate",
    "Simulated",
    "Registration",
    "parse_candidate",
    "simulate",
    "simulated_maps",
    "df_from_force",
    "prepare",
    "register",
    "rank",
    "locate_defects",
    "write_results",
    "match_files",
    "DEFAULT_HEIGHTS",
    "DEFAULT_ANGLES",
    "DEFAULT_BLURS",
    "DEFAULT_CONTRAST_FLOOR",
    "simulate_candidates",
    "SCORES",
    "contrast_ceiling",
    "member_maps",
    "noise_aware_fit",
    "ranking_key",
]

DEFAULT_HEIGHTS = (1.5, 8.0)  # Å above the surface Ca plane
DEFAULT_ANGLES = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)  # degrees
DEFAULT_BLURS = (0.0, 0.4, 0.8)  # Å, lateral Gaussian std
DEFAULT_SCALES = (0.985, 1.0, 1.015)  # pixel-size calibration factors tried in the refinement
# Heights where a candidate's simulated map has less than this fraction of its largest
# lateral contrast are not searched (contrast_ceiling; benchmarks/RESULTS.md, "AFM matching").
DEFAULT_CONTRAST_FLOOR = 0.2
COARSE_DZ = 0.25  # Å, first height scan
FINE_DZ = 0.05  # Å, refined height scan
CHEBYSHEV_NODES = 16
MIN_CANDIDATE_SIDE = 20.0  # Å: a named candidate is repeated until each lateral side is this long
CANDIDATE_KEYS = ("size", "layers", "vacancy", "pairs", "both", "seed", "placement")
QUANTITIES = ("force", "df")
SCORES = ("ncc", "likelihood")


# =========================================================================== candidates
@dataclasses.dataclass
class Candidate:
    """A candidate surface: ``label`` (as given), ``atoms``, ``unit_cell`` (the lateral
    lengths of its primitive surface cell, Å)."""

    label: str
    atoms: object
    unit_cell: tuple[float, float]
    variants: list = dataclasses.field(default_factory=list)  # the same defect on other sublattices


def _auto_size(name: str) -> tuple[int, int]:
    from .structures import build_surface

    cell = build_surface(name, size=(1, 1), layers=1).cell
    return tuple(max(1, math.ceil(MIN_CANDIDATE_SIDE / float(np.linalg.norm(cell[i])))) for i in (0, 1))


def _candidate_options(text: str, opts: str) -> dict:
    """``size=5x3,vacancy=CO3,pairs=2,both,seed=1,layers=4,placement=adjacent`` -> kwargs."""
    kw: dict = {}
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, _, value = item.partition("=")
        if key not in CANDIDATE_KEYS:
            raise InputError(f"{text}: unknown candidate option {key!r} (known: {', '.join(CANDIDATE_KEYS)})")
        try:
            if key == "size":
                kw["size"] = tuple(int(v) for v in value.lower().split("x"))
                if len(kw["size"]) != 2 or min(kw["size"]) < 1:
                    raise ValueError(f"size must look like 5x3, got {value!r}")
            elif key in ("layers", "seed"):
                kw[key] = int(value)
            elif key == "pairs":
                kw["pair_vacancies"] = int(value)
            elif key == "both":
                kw["both_faces"] = value.lower() not in ("0", "no", "false")
            else:
                kw[key] = value
        except Exception as err:
            raise InputError(f"{text}: bad value for {key!r}: {err}") from None
    return kw


def parse_candidate(text: str) -> Candidate:
    """A structure file, or ``NAME[:OPTIONS]`` built like ``hydrolayer surface build``:
    ``calcite-104``, ``calcite-104:vacancy=CO3``, ``calcite-104:size=5x3,pairs=1,seed=2``,
    ``aragonite-010:size=5x4`` (options: size, layers, vacancy=Ca|CO3, pairs=K, both,
    seed, placement). A named surface without ``size`` is repeated to at least 20 Å a side."""
    from .structures import SURFACES, build_surface, read_structure

    name, _, opts = text.partition(":")
    if name not in SURFACES:
        path = Path(text)
        if not path.exists() and ("." not in path.name and "/" not in text):
            raise InputError(
                f"{text}: neither a structure file nor a surface name (known: {', '.join(sorted(SURFACES))})"
            )
        atoms = read_structure(path)
        size = str(atoms.info.get("size", atoms.info.get("structure_size", "1x1")))
        return Candidate(text, atoms, _unit_cell(atoms, size))
    kw = _candidate_options(text, opts)
    kw.setdefault("size", _auto_size(name))
    try:
        atoms = build_surface(name, **kw)
    except ValueError as err:
        raise InputError(f"{text}: {err}") from None
    cand = Candidate(text, atoms, _unit_cell(atoms, atoms.info["size"]))
    if kw.get("vacancy") and not kw.get("pair_vacancies"):
        cand.variants = _vacancy_variants(name, kw, cand)
    return cand


def _site_class(atoms, unit_cell) -> tuple:
    """The top-face defect sites' lateral positions modulo the surface unit cell (0.5 Å)."""
    from .structures import defect_sites

    out = []
    for site in defect_sites(atoms):
        d = site.to_dict() if hasattr(site, "to_dict") else dict(site)
        if d.get("face", "top") == "top":
            xy = np.mod(np.asarray(d["position"][:2], float), unit_cell)
            out.append(tuple(np.round(xy / 0.5).astype(int) % np.round(np.asarray(unit_cell) / 0.5).astype(int)))
    return tuple(sorted(out))


def _vacancy_variants(name: str, kw: dict, cand: Candidate, max_seeds: int = 16) -> list:
    """The single vacancy on each symmetry-distinct site of its kind (e.g. the two
    glide-related carbonates of calcite (10-14)): a translation cannot map one onto the
    other, so each is its own candidate structure. Found by trying seeds (at most
    ``max_seeds``) until every site class of the pristine top layer is covered."""
    from .structures import build_surface, top_layer_units

    pristine = build_surface(name, size=(1, 1), layers=kw.get("layers", 4))
    layer = top_layer_units(pristine)
    n_classes = len(layer["cation"] if kw["vacancy"] in ("Ca", "Mg") else layer["CO3"])
    found = {_site_class(cand.atoms, cand.unit_cell): cand.atoms}
    for seed in range(max_seeds):
        if len(found) >= n_classes:
            break
        atoms = build_surface(name, **{**kw, "seed": kw.get("seed", 0) + 1 + seed})
        found.setdefault(_site_class(atoms, cand.unit_cell), atoms)
    return [a for a in found.values() if a is not cand.atoms]


def _unit_cell(atoms, size: str) -> tuple[float, float]:
    try:
        na, nb = (int(v) for v in size.lower().split("x"))
    except ValueError:
        na, nb = 1, 1
    return float(np.linalg.norm(atoms.cell[0])) / na, float(np.linalg.norm(atoms.cell[1])) / nb


# =========================================================================== forward model
@dataclasses.dataclass
class Simulated:
    """A candidate's F_z field (nN, on the density grid) and what the maps need."""

    candidate: Candidate
    fz: np.ndarray
    spec: object  # GridSpec
    surface_z: float
    seconds: float = 0.0
    members: np.ndarray | None = None  # an ensemble: each member's F_z (n_members, nx, ny, nz)

    @property
    def cell2(self) -> np.ndarray:
        return self.spec.cell[:2, :2]

    @property
    def shape2(self) -> tuple[int, int]:
        return self.spec.shape[:2]

    def height_range(self) -> tuple[float, float]:
        z = self.spec.z_values() - self.surface_z
        return float(z[0]), float(z[-1])


def simulate(candidate: Candidate, predictor, tip_radius: float | None = None) -> Simulated:
    """Predict the density and the STA F_z (nN) of a candidate (the 3D tip blur optional).

    An ensemble (``inference.EnsemblePredictor``): F_z of the members' mean density, and
    each member's own F_z in ``members`` (for the spread of the simulated map: the STA is
    not linear in the density, so the spread is taken over the members' maps)."""
    from .afm import sta_force, surface_z_of
    from .predict import predict_density

    def force(grid):
        return np.asarray(sta_force(grid, tip_radius=tip_radius, units="nN").channel("Fz"), float)

    t0 = time.perf_counter()
    nets = getattr(predictor, "members", None) or [predictor]
    grids = [predict_density(candidate.atoms, model=m, source=candidate.label) for m in nets]
    mean = np.mean([g.values for g in grids], axis=0)  # the ensemble's prediction (same windows)
    grid = dataclasses.replace(grids[0], values=mean)
    zs, _ = surface_z_of(grid, grid.meta.get("surface_z"), candidate.label)
    members = np.stack([force(g) for g in grids]) if len(grids) > 1 else None
    return Simulated(candidate, force(grid), grid.spec, float(zs), time.perf_counter() - t0, members)


def df_from_force(fz: np.ndarray, spec, surface_z: float, heights, amplitude: float = 0.0) -> np.ndarray:
    """The frequency-shift-like maps (n_heights, nx, ny) at ``heights`` (Å above the surface
    plane) from F_z: ``-dF_z/dz`` for ``amplitude`` 0, else the large-amplitude average
    (module docstring), in nN/Å (the units of -dF/dz)."""
    from .afm import constant_height

    heights = np.asarray(heights, float)
    if not amplitude:
        dz = spec.cell[2, 2] / spec.shape[2]
        return -constant_height(np.gradient(fz, dz, axis=2), spec, surface_z, heights)
    u = np.cos((2 * np.arange(1, CHEBYSHEV_NODES + 1) - 1) * np.pi / (2 * CHEBYSHEV_NODES))
    hs = (heights[:, None] + amplitude * u[None, :]).ravel()
    f = constant_height(fz, spec, surface_z, hs).reshape(len(heights), len(u), *fz.shape[:2])
    return -(2.0 / (amplitude * len(u))) * np.einsum("u,huxy->hxy", u, f)


def simulated_maps(sim: Simulated, heights, quantity: str, amplitude: float = 0.0) -> np.ndarray:
    """(n_heights, nx, ny) maps of the quantity the measurement holds."""
    from .afm import constant_height

    lo, hi = sim.height_range()
    heights = np.asarray(heights, float)
    if heights.min() < lo + amplitude or heights.max() > hi - amplitude:
        raise InputError(
            f"{sim.candidate.label}: heights {heights.min():.2f}-{heights.max():.2f} Å are outside the "
            f"predicted grid ({lo + amplitude:.2f} to {hi - amplitude:.2f} Å above the surface)"
        )
    if quantity == "df":
        return df_from_force(sim.fz, sim.spec, sim.surface_z, heights, amplitude)
    return constant_height(sim.fz, sim.spec, sim.surface_z, heights)


def _blur_kernel(spec, shape2, sigma: float) -> np.ndarray:
    """Periodic lateral Gaussian (std ``sigma`` Å) as an rfft2 multiplier on the cell grid."""
    nx, ny = shape2
    recip = 2 * np.pi * np.linalg.inv(spec.cell[:2, :2]).T
    m = np.fft.fftfreq(nx) * nx
    n = np.fft.rfftfreq(ny) * ny
    k = m[:, None, None] * recip[0] + n[None, :, None] * recip[1]
    return np.exp(-0.5 * sigma**2 * np.sum(k**2, axis=-1))


def _blurred(maps: np.ndarray, spec, sigma: float) -> np.ndarray:
    if not sigma:
        return maps
    k = _blur_kernel(spec, maps.shape[-2:], sigma)
    return np.fft.irfft2(np.fft.rfft2(maps) * k, s=maps.shape[-2:])


# =========================================================================== measurement
@dataclasses.dataclass
class Prepared:
    """A measurement ready for matching: ``m`` (N, nz) detrended and normalised (zero mean,
    unit norm), ``raw`` (N, nz) detrended, in its units; ``xy`` (N, 2) pixel positions from
    the map centre (Å); ``dz`` (nz,) plane heights above the lowest plane; ``basis`` (N, 3)
    the plane's design matrix."""

    m: np.ndarray
    raw: np.ndarray
    xy: np.ndarray
    dz: np.ndarray
    basis: np.ndarray
    measurement: object


def prepare(meas) -> Prepared:
    """Remove a plane (fitted to the mean of the planes) and normalise the measurement."""
    v = meas.values if meas.values.ndim == 3 else meas.values[..., None]
    nx, ny, nz = v.shape
    dx, dy = meas.pixel_size
    x = (np.arange(nx) - (nx - 1) / 2) * dx
    y = (np.arange(ny) - (ny - 1) / 2) * dy
    xy = np.stack(np.meshgrid(x, y, indexing="ij"), axis=-1).reshape(-1, 2)
    basis = np.column_stack([np.ones(len(xy)), xy / max(nx * dx, ny * dy)])
    flat = v.reshape(-1, nz)
    coef, *_ = np.linalg.lstsq(basis, flat.mean(axis=1), rcond=None)
    raw = flat - (basis @ coef)[:, None]
    m = raw - raw.mean()
    norm = float(np.sqrt(np.sum(m**2)))
    if norm == 0:
        raise InputError(f"{meas.source}: the map is flat after removing a plane: nothing to match")
    dz = np.zeros(1) if meas.z is None else np.asarray(meas.z, float) - float(meas.z[0])
    return Prepared(m / norm, raw, xy, dz, basis, meas)


def check_size(meas, candidates: Sequence[Candidate]) -> None:
    """A map must hold at least one surface unit cell of every candidate."""
    wx, wy = meas.extent
    for c in candidates:
        need = max(c.unit_cell)
        if min(wx, wy) < need:
            raise InputError(
                f"{meas.source}: the map ({wx:.1f} x {wy:.1f} Å) is smaller than one surface unit cell "
                f"of {c.label} ({c.unit_cell[0]:.1f} x {c.unit_cell[1]:.1f} Å)"
            )


# =========================================================================== registration
@dataclasses.dataclass
class Registration:
    """The best fit of one candidate: NCC ``score``, ``height`` (Å above the surface Ca
    plane, of the lowest plane), ``offset`` (Å: the cell point under the map centre),
    ``angle`` (degrees), ``blur`` (Å), ``scale`` (the map's pixel size is taken as
    ``scale`` x the file's), the simulated map at the measured pixels (N, nz), the residual
    RMS (map units) and chi^2 of ``M = gain S + plane`` (an ensemble: with the members'
    spread added to the noise, and ``loglik``, :func:`noise_aware_fit`), the defects in the map."""

    label: str
    score: float
    height: float
    offset: tuple[float, float]
    angle: float
    blur: float
    simulated: np.ndarray
    rms: float
    chi2: float | None
    gain: float
    scale: float = 1.0
    defects: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    variant: str = ""  # which form of the candidate fitted best (label#k: a defect variant)
    loglik: float | None = None  # noise-aware score (an ensemble): Gaussian log-likelihood per pixel


def _rotation(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _grid_coords(sim: Simulated, q: np.ndarray) -> np.ndarray:
    """Cell-grid index coordinates (float, unwrapped) of lateral cell points q (N, 2)."""
    return (q - sim.spec.origin[:2]) @ np.linalg.inv(sim.cell2) * np.asarray(sim.shape2, float)


def _splat(u: np.ndarray, weights: np.ndarray, shape2) -> np.ndarray:
    """Bilinear splat of per-point weights (N, K) onto a periodic grid: (K, nx, ny)."""
    nx, ny = shape2
    i0 = np.floor(u).astype(int)
    f = u - i0
    out = np.zeros((weights.shape[1], nx * ny))
    for di, dj in ((0, 0), (1, 0), (0, 1), (1, 1)):
        w = (f[:, 0] if di else 1 - f[:, 0]) * (f[:, 1] if dj else 1 - f[:, 1])
        idx = ((i0[:, 0] + di) % nx) * ny + (i0[:, 1] + dj) % ny
        for k in range(weights.shape[1]):
            out[k] += np.bincount(idx, weights=w * weights[:, k], minlength=nx * ny)
    return out.reshape(-1, nx, ny)


def _stack_spectra(maps: np.ndarray, dz: np.ndarray, step: float):
    """Fourier sums over the stack's planes for every base height: the plane k of base
    height index b is maps[b + round(dz_k / step)]. Returns (planes (B, nz, ...), sum S, sum S^2)."""
    off = np.rint(dz / step).astype(int)
    nb = maps.shape[0] - off.max()
    f = np.fft.rfft2(maps)
    f2 = np.fft.rfft2(maps**2)
    planes = np.stack([f[off + b] for b in range(nb)])
    return planes, planes.sum(axis=1), np.stack([f2[off + b] for b in range(nb)]).sum(axis=1)


def _ncc_maps(fa, fw, spectra, n_points: int, shape2) -> np.ndarray:
    """NCC at every (base height, grid offset): (B, nx, ny)."""
    planes, s1, s2 = spectra
    num = np.fft.irfft2(np.einsum("kxy,bkxy->bxy", np.conj(fa), planes), s=shape2)
    m1 = np.fft.irfft2(np.conj(fw) * s1, s=shape2)
    m2 = np.fft.irfft2(np.conj(fw) * s2, s=shape2)
    var = np.maximum(m2 - m1**2 / n_points, 1e-30)
    return num / np.sqrt(var)


def _scan(prep: Prepared, sim: Simulated, poses, spectra_by_blur: dict) -> tuple:
    """Best (score, (angle, scale), blur, base index, offset index, NCC map) over the poses."""
    best = (-np.inf, None, None, None, None, None)
    n_points = prep.m.size
    for ang in poses:
        u = _grid_coords(sim, ang[1] * prep.xy @ _rotation(ang[0]).T)
        splat = _splat(u, np.column_stack([prep.m, np.ones(len(u))]), sim.shape2)
        fa, fw = np.fft.rfft2(splat[:-1]), np.fft.rfft2(splat[-1])
        for blur, spectra in spectra_by_blur.items():
            ncc = _ncc_maps(fa, fw, spectra, n_points, sim.shape2)
            k = int(np.argmax(ncc))
            if ncc.flat[k] > best[0]:
                b, i, j = np.unravel_index(k, ncc.shape)
                best = (float(ncc.flat[k]), ang, blur, int(b), (int(i), int(j)), ncc[b])
    return best


def _subgrid(ncc2: np.ndarray, ij) -> np.ndarray:
    """Parabolic sub-grid peak position around integer ``ij`` of a periodic 2D map."""
    out = []
    for axis in (0, 1):
        n = ncc2.shape[axis]
        idx = [list(ij), list(ij), list(ij)]
        idx[0][axis] = (ij[axis] - 1) % n
        idx[2][axis] = (ij[axis] + 1) % n
        a, b, c = (ncc2[tuple(t)] for t in idx)
        den = a - 2 * b + c
        out.append(ij[axis] + (0.5 * (a - c) / den if den < 0 else 0.0))
    return np.array(out)


def _spectra(sim, heights, prep, quantity, amplitude, blurs, step):
    maps = simulated_maps(sim, heights, quantity, amplitude)
    return {b: _stack_spectra(_blurred(maps, sim.spec, b), prep.dz, step) for b in blurs}


def _heights(lo: float, hi: float, span: float, step: float) -> np.ndarray:
    """Slice heights: base heights lo..hi every ``step`` plus the stack's span above them."""
    nb = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return lo + np.arange(nb + int(np.ceil(span / step - 1e-9))) * step


def register(
    prep: Prepared,
    sim: Simulated,
    heights=DEFAULT_HEIGHTS,
    quantity: str = "df",
    angles=DEFAULT_ANGLES,
    blurs=DEFAULT_BLURS,
    amplitude: float = 0.0,
    noise: float | None = None,
    scales=DEFAULT_SCALES,
    contrast_floor: float | None = DEFAULT_CONTRAST_FLOOR,
) -> Registration:
    """The best registration of one candidate (module docstring): a coarse scan, then the
    height and angle refined around the best, the offset to a fraction of a grid step."""
    t0 = time.perf_counter()
    lo, hi = float(heights[0]), float(heights[-1])
    if contrast_floor:
        hi = contrast_ceiling(sim, lo, hi, quantity, amplitude, contrast_floor)
    span = float(prep.dz[-1])
    coarse = _heights(lo, hi, span, COARSE_DZ)
    poses = [(float(a), 1.0) for a in angles]
    _, (ang, _), blur, b, _, _ = _scan(
        prep, sim, poses, _spectra(sim, coarse, prep, quantity, amplitude, blurs, COARSE_DZ)
    )
    h0 = float(coarse[b])
    lo_f, hi_f = max(lo, h0 - COARSE_DZ), min(hi, h0 + COARSE_DZ)
    fine = _heights(lo_f, hi_f, span, FINE_DZ)
    turns = (-0.5, -0.25, 0.0, 0.25, 0.5) if len(angles) > 1 else (0.0,)
    poses = [(ang + d, sc) for d in turns for sc in scales]
    _, (ang, sc), blur, b, ij, ncc2 = _scan(
        prep, sim, poses, _spectra(sim, fine, prep, quantity, amplitude, [blur], FINE_DZ)
    )
    d = _subgrid(ncc2, ij)
    offset = sim.spec.origin[:2] + (d / np.asarray(sim.shape2)) @ sim.cell2
    pose = (float(fine[b]), offset, ang, sc, blur)
    return _finish(prep, sim, pose, quantity, amplitude, noise, time.perf_counter() - t0)


def contrast_ceiling(sim: Simulated, lo: float, hi: float, quantity: str, amplitude: float, floor: float) -> float:
    """The highest height in lo..hi where the candidate's simulated map still has lateral
    contrast (std) of at least ``floor`` x its largest in the range: above it the model
    predicts bulk-like water, a pattern that matches any lattice-like noise."""
    hs = _heights(lo, hi, 0.0, COARSE_DZ)
    std = simulated_maps(sim, hs, quantity, amplitude).std(axis=(1, 2))
    return float(hs[np.nonzero(std >= floor * std.max())[0][-1]])


def sample(
    sim: Simulated, prep: Prepared, height, offset, angle, blur, quantity, amplitude=0.0, scale: float = 1.0
) -> np.ndarray:
    """The simulated map at the measured pixels under a registration: (N, nz)."""
    from scipy.ndimage import map_coordinates

    maps = _blurred(simulated_maps(sim, height + prep.dz, quantity, amplitude), sim.spec, blur)
    u = _grid_coords(sim, scale * prep.xy @ _rotation(angle).T + np.asarray(offset) - sim.spec.origin[:2])
    cols = [map_coordinates(m, u.T, order=1, mode="grid-wrap") for m in maps]
    return np.column_stack(cols)


def _finish(prep, sim, pose, quantity, amplitude, noise, seconds) -> Registration:
    h0, offset, ang, scale, blur = pose
    s = sample(sim, prep, h0, offset, ang, blur, quantity, amplitude, scale)
    sc = s - s.mean()
    score = float(np.sum(prep.m * sc) / max(np.sqrt(np.sum(sc**2)), 1e-30))
    # residual of M = a S + plane (a = 1 for force, by value)
    target = (prep.raw - s) if quantity == "force" else prep.raw
    resid, gain = _fit_residual(target, s, prep.basis, fit_scale=quantity != "force")
    rms = float(np.sqrt(np.mean(resid**2)))
    dof = max(resid.size - (3 if quantity == "force" else 4), 1)
    chi2 = float(np.sum(resid**2) / noise**2 / dof) if noise else None
    loglik = None
    if sim.members is not None:  # an ensemble: the noise-aware likelihood (and chi^2 with the spread)
        spread = member_maps(sim, prep, pose, quantity, amplitude).var(axis=0)
        loglik, _, chi2_aware = noise_aware_fit(prep.raw, s, spread, prep.basis, noise, quantity != "force")
        chi2 = chi2_aware if noise else None
    reg = Registration(
        sim.candidate.label,
        score,
        h0,
        (float(offset[0]), float(offset[1])),
        float(ang),
        float(blur),
        s,
        rms,
        chi2,
        gain,
        float(scale),
        seconds=seconds,
        loglik=loglik,
    )
    reg.defects = locate_defects(sim, prep, reg)
    return reg


def member_maps(sim: Simulated, prep: Prepared, pose, quantity, amplitude=0.0) -> np.ndarray:
    """Each ensemble member's simulated map at the measured pixels under ``pose`` (height,
    offset, angle, scale, blur): (n_members, N, nz)."""
    h0, offset, ang, scale, blur = pose
    return np.stack(
        [
            sample(
                dataclasses.replace(sim, fz=f, members=None), prep, h0, offset, ang, blur, quantity, amplitude, scale
            )
            for f in sim.members
        ]
    )


def noise_aware_fit(raw, s, spread, basis, noise: float | None = None, fit_scale: bool = True, iterations: int = 6):
    """The Gaussian likelihood of ``raw = a s + plane + e`` with var(e) = noise^2 + a^2
    spread per pixel: the measurement's noise plus the model's own uncertainty (the
    ensemble's spread of the simulated map, scaled like the map). Pixels where the members
    disagree count less. ``noise`` None: fitted (maximum likelihood). Weighted least squares
    for a and the plane, iterated with the noise. Returns (log-likelihood per pixel, a,
    chi^2 per pixel at the fitted noise)."""
    y, sv, v = raw.T.reshape(-1), s.T.reshape(-1), spread.T.reshape(-1)
    nz = raw.shape[1]
    cols = [np.kron(np.ones((nz, 1)), basis)] + ([sv[:, None]] if fit_scale else [])
    design = np.hstack(cols)
    target = y if fit_scale else y - sv
    scale_y = float(np.var(target)) or 1.0
    w = np.ones_like(y)
    a, s2 = 1.0, noise**2 if noise else scale_y
    for _ in range(iterations):
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(design * sw[:, None], target * sw, rcond=None)
        a = float(coef[-1]) if fit_scale else 1.0
        r2 = (target - design @ coef) ** 2
        s2 = noise**2 if noise else _ml_noise(r2, a * a * v, scale_y)
        w = 1.0 / (s2 + a * a * v)
    var = s2 + a * a * v
    loglik = -0.5 * float(np.mean(np.log(2 * np.pi * var) + r2 / var))
    return loglik, a, float(np.mean(r2 / var))


def _ml_noise(r2: np.ndarray, model_var: np.ndarray, scale: float) -> float:
    """The noise variance that maximises the likelihood of residuals ``r2`` (squared) with
    per-pixel variance noise^2 + ``model_var``; searched within 1e-6..e x ``scale``."""
    from scipy.optimize import minimize_scalar

    def nll(log_s2):
        var = math.exp(log_s2) + model_var
        return float(np.mean(np.log(var) + r2 / var))

    lo, hi = math.log(scale) - 14.0, math.log(scale) + 1.0
    return math.exp(minimize_scalar(nll, bounds=(lo, hi), method="bounded").x)


def _fit_residual(target, s, basis, fit_scale: bool):
    """Least squares of ``target`` (N, nz) on a plane (shared by all planes) [+ a * s]."""
    nz = target.shape[1]
    cols = [np.kron(np.ones((nz, 1)), basis)]
    if fit_scale:
        cols.append(s.T.reshape(-1, 1))
    a = np.hstack(cols)
    y = target.T.reshape(-1)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return y - a @ coef, float(coef[-1]) if fit_scale else 1.0


# =========================================================================== where things are
def _to_map(sim: Simulated, prep: Prepared, reg: Registration, xy_cell: np.ndarray) -> np.ndarray:
    """All periodic images of lateral cell points inside the measured map, in map pixels
    (float i, j) and Å from the map's first pixel: (n, 4) rows i, j, x, y."""
    meas = prep.measurement
    nx, ny = meas.values.shape[:2]
    dx, dy = meas.pixel_size
    centre = np.array([(nx - 1) / 2 * dx, (ny - 1) / 2 * dy])
    rinv = _rotation(-reg.angle)
    lat = sim.cell2
    reach = int(np.ceil(np.hypot(nx * dx, ny * dy) / min(np.linalg.norm(lat, axis=1)))) + 1
    rows = []
    for a in range(-reach, reach + 1):
        for b in range(-reach, reach + 1):
            q = np.atleast_2d(xy_cell) + a * lat[0] + b * lat[1] - np.asarray(reg.offset)
            p = q @ rinv.T / reg.scale + centre
            i, j = p[:, 0] / dx, p[:, 1] / dy
            ok = (i >= -0.5) & (i <= nx - 0.5) & (j >= -0.5) & (j <= ny - 0.5)
            rows += [(ii, jj, xx, yy) for ii, jj, xx, yy in zip(i[ok], j[ok], p[ok, 0], p[ok, 1])]
    return np.array(rows).reshape(-1, 4)


def locate_defects(sim: Simulated, prep: Prepared, reg: Registration) -> list[dict]:
    """Where the candidate's top-face defect sites fall in the measured map (every periodic
    image inside it): species, x, y (Å from the map's first pixel) and pixel i, j."""
    from .structures import defect_sites

    out = []
    for site in defect_sites(sim.candidate.atoms):
        d = site.to_dict() if hasattr(site, "to_dict") else dict(site)  # DefectSite or its stored dict
        if d.get("face", "top") != "top":
            continue
        for i, j, x, y in _to_map(sim, prep, reg, np.asarray(d["position"], float)[:2]):
            out.append(
                {
                    "species": d["species"],
                    "x_A": round(float(x), 2),
                    "y_A": round(float(y), 2),
                    "i": int(round(i)),
                    "j": int(round(j)),
                }
            )
    return out


def _surface_atoms(sim: Simulated, prep: Prepared, reg: Registration) -> dict:
    """Top-layer Ca and carbonate C of the candidate, in the measured map (Å)."""
    from .structures import top_layer_units

    atoms = sim.candidate.atoms
    layer = top_layer_units(atoms)
    pos = atoms.positions[:, :2]
    ca = _to_map(sim, prep, reg, pos[layer["cation"]]) if layer["cation"] else np.zeros((0, 4))
    c = [ci for ci, _ in layer["CO3"]]
    co3 = _to_map(sim, prep, reg, pos[c]) if c else np.zeros((0, 4))
    return {"Ca": ca[:, 2:], "C": co3[:, 2:]}


# =========================================================================== ranking
def rank(
    meas,
    candidates: Sequence[Candidate],
    predictor,
    heights=DEFAULT_HEIGHTS,
    quantity: str | None = None,
    angles=DEFAULT_ANGLES,
    blurs=DEFAULT_BLURS,
    amplitude: float = 0.0,
    noise: float | None = None,
    tip_radius: float | None = None,
    simulated: dict | None = None,
    scales=DEFAULT_SCALES,
    score: str = "ncc",
    contrast_floor: float | None = DEFAULT_CONTRAST_FLOOR,
):
    """Register every candidate; returns (registrations best first, {label: Simulated})."""
    quantity = resolve_quantity(meas, quantity)
    check_size(meas, candidates)
    prep = prepare(meas)
    sims = simulate_candidates(candidates, predictor, tip_radius, simulated)
    regs = []
    key = ranking_key(quantity, score, [sims[c.label] for c in candidates])
    for c in candidates:
        best = None
        for form in _forms(c):
            reg = register(
                prep, sims[form.label], heights, quantity, angles, blurs, amplitude, noise, scales, contrast_floor
            )
            if best is None or key(reg) < key(best):
                best = reg
        best.variant, best.label = best.label, c.label
        regs.append(best)
    return sorted(regs, key=key), sims, prep


def simulate_candidates(candidates, predictor, tip_radius: float | None = None, simulated: dict | None = None) -> dict:
    """``{label: Simulated}`` of every candidate and its defect variants (:func:`simulate`),
    reusing those already in ``simulated`` (e.g. across many measurements)."""
    sims = dict(simulated or {})
    for form in (f for c in candidates for f in _forms(c)):
        if form.label not in sims:
            sims[form.label] = simulate(form, predictor, tip_radius)
    return sims


def _forms(c: Candidate) -> list[Candidate]:
    """A candidate and its defect variants (labels ``label#k``)."""
    return [c] + [Candidate(f"{c.label}#{k + 1}", a, c.unit_cell) for k, a in enumerate(c.variants)]


def ranking_key(quantity: str, score: str, sims: Sequence[Simulated]):
    """What orders the candidates (smaller first): ``score`` "ncc" (df: -NCC; force: the
    residual RMS), "likelihood" (-log-likelihood of :func:`noise_aware_fit`, needs an
    ensemble; measured no better than NCC in the trials, RESULTS.md)."""
    if score not in SCORES:
        raise InputError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if score == "likelihood":
        if not all(s.members is not None for s in sims):
            raise InputError(
                "the likelihood score needs an ensemble model (its members' spread), e.g. --model unet-ens-c"
            )
        return lambda r: -r.loglik
    return (lambda r: r.rms) if quantity == "force" else (lambda r: -r.score)


def resolve_quantity(meas, quantity: str | None) -> str:
    """``force`` or ``df``: as asked, else from the file's unit (force for N, else df)."""
    if quantity is None:
        return "force" if meas.quantity == "force" else "df"
    if quantity not in QUANTITIES:
        raise InputError(f"{meas.source}: quantity must be one of {', '.join(QUANTITIES)}, got {quantity!r}")
    if quantity == "force" and meas.quantity != "force":
        raise InputError(
            f"{meas.source}: --quantity force needs a force map (N or nN), this one is in {meas.unit or 'no unit'!r}"
        )
    return quantity


# =========================================================================== synthetic maps
def synthetic_measurement(
    density,
    height: float,
    shape=(96, 96),
    pixel_size: float = 0.4,
    angle: float = 0.0,
    offset=(0.0, 0.0),
    blur: float = 0.5,
    snr: float | None = 5.0,
    drift: float = 0.0,
    quantity: str = "df",
    amplitude: float = 0.3,
    gain: float = 1.0,
    line_noise: float = 0.3,
    z_planes: Sequence[float] | None = None,
    rng=None,
    source: str = "synthetic",
):
    """A measurement made from a water density (an MD grid): the STA forward model plus what
    real maps have. The map's pixel ``p`` (from its centre) shows the surface at
    ``R(angle) p + offset`` (a crop of the periodic surface), at ``height`` Å above the top
    Ca plane (or at ``height + z_planes`` for a 3D stack), blurred laterally (std ``blur``
    Å), as F_z (nN) or a df-like map (``amplitude``, times ``gain``), with a linear drift
    (a plane rising by ``drift`` signal standard deviations across the map), white noise at
    ``snr`` (signal std / noise std) and scan-line offsets (``line_noise`` x the noise std).
    Returns a :class:`measurements.Measurement` (its ``unit`` nN or Hz)."""
    from .afm import sta_force, surface_z_of
    from .measurements import Measurement

    rng = np.random.default_rng(rng)
    zs, _ = surface_z_of(density)
    sim = Simulated(
        Candidate(source, density.atoms, (0.0, 0.0)),
        np.asarray(sta_force(density, units="nN").channel("Fz"), float),
        density.spec,
        float(zs),
    )
    dz = np.zeros(1) if z_planes is None else np.asarray(z_planes, float) - float(z_planes[0])
    nx, ny = shape
    fake = Prepared(np.zeros((nx * ny, len(dz))), None, None, dz, None, None)
    x = (np.arange(nx) - (nx - 1) / 2) * pixel_size
    y = (np.arange(ny) - (ny - 1) / 2) * pixel_size
    fake.xy = np.stack(np.meshgrid(x, y, indexing="ij"), axis=-1).reshape(-1, 2)
    amp = amplitude if quantity == "df" else 0.0
    values = sample(sim, fake, height, offset, angle, blur, quantity, amp).reshape(nx, ny, len(dz)) * gain
    std = float(values.std())
    values = values + drift * std * (
        fake.xy[:, 0] / (nx * pixel_size) + 0.5 * fake.xy[:, 1] / (ny * pixel_size)
    ).reshape(nx, ny, 1)
    if snr:
        sigma = std / snr
        values = values + rng.normal(0.0, sigma, values.shape) + rng.normal(0.0, line_noise * sigma, (1, ny, len(dz)))
    values = values if z_planes is not None else values[..., 0]
    unit = "nN" if quantity == "force" else "Hz"
    z = None if z_planes is None else np.asarray(z_planes, float)
    return Measurement(
        values,
        (pixel_size, pixel_size),
        z,
        "force" if quantity == "force" else "df",
        unit,
        "F_z" if quantity == "force" else "df",
        source,
    )


def md_density(db, row):
    """The mean MD water density of a database row (rho/rho_bulk, with the slab atoms)."""
    from .store import density_grid

    return density_grid(db, row)


# =========================================================================== outputs
FIELDS = (
    "rank",
    "candidate",
    "score_ncc",
    "height_A",
    "offset_x_A",
    "offset_y_A",
    "rotation_deg",
    "blur_A",
    "pixel_scale",
    "rms",
    "chi2",
    "variant",
    "defects_in_map",
)


def _row(k: int, r: Registration) -> dict:
    return {
        "rank": k,
        "candidate": r.label,
        "score_ncc": round(r.score, 4),
        "height_A": round(r.height, 2),
        "offset_x_A": round(r.offset[0], 2),
        "offset_y_A": round(r.offset[1], 2),
        "rotation_deg": round(r.angle, 2),
        "blur_A": r.blur,
        "pixel_scale": r.scale,
        "rms": float(f"{r.rms:.4g}"),
        "chi2": None if r.chi2 is None else round(r.chi2, 3),
        "variant": r.variant or r.label,
        "defects_in_map": r.defects,
    }


def table(regs: Sequence[Registration], unit: str) -> str:
    """The ranked table printed on stdout."""
    lines = [
        f"{'rank':>4}  {'candidate':36s} {'NCC':>6} {'h (Å)':>6} {'offset x, y (Å)':>16} {'rot (°)':>7} "
        f"{'blur':>5} {'rms (' + unit + ')':>12}  defect in the map (x, y Å)"
    ]
    for k, r in enumerate(regs, 1):
        d = "; ".join(f"{s['species']} {s['x_A']:.1f}, {s['y_A']:.1f}" for s in r.defects[:3])
        lines.append(
            f"{k:>4}  {r.label[:36]:36s} {r.score:6.3f} {r.height:6.2f} {r.offset[0]:7.2f}, {r.offset[1]:6.2f} "
            f"{r.angle:7.2f} {r.blur:5.2f} {r.rms:12.4g}  {d or '-'}"
        )
    return "\n".join(lines)


def _csv_text(regs) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    for k, r in enumerate(regs, 1):
        row = _row(k, r)
        row["defects_in_map"] = "; ".join(f"{s['species']} ({s['x_A']}, {s['y_A']})" for s in r.defects)
        w.writerow(row)
    return buf.getvalue()


def _write_text(path: Path, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in text).strip("_")[:60]


def plot_registration(prep: Prepared, sim: Simulated, reg: Registration, path: Path, rank_no: int) -> Path:
    """Measurement, best-registered simulated map, difference (measurement - gain x
    simulation - plane), the candidate's surface Ca and C and its defects overlaid."""
    from matplotlib.figure import Figure

    meas = prep.measurement
    nx, ny = meas.values.shape[:2]
    dx, dy = meas.pixel_size
    m = prep.raw[:, 0].reshape(nx, ny)
    s = reg.simulated[:, 0].reshape(nx, ny)
    resid, _ = _fit_residual(prep.raw[:, :1], reg.simulated[:, :1], prep.basis, fit_scale=True)
    ext = (-0.5 * dx, (nx - 0.5) * dx, -0.5 * dy, (ny - 0.5) * dy)
    fig = Figure(figsize=(13.5, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    atoms_xy = _surface_atoms(sim, prep, reg)
    panels = (
        (m, f"measurement ({meas.channel}, {meas.unit or 'arb.'})"),
        (s, f"simulated, h = {reg.height:.2f} Å, rot {reg.angle:.2f}°, blur {reg.blur:.1f} Å"),
        (resid.reshape(nx, ny), "difference (measured - fitted simulation)"),
    )
    for ax, (img, title) in zip(axes, panels):
        im = ax.imshow(img.T, origin="lower", extent=ext, cmap="RdBu_r" if "diff" in title else "viridis")
        fig.colorbar(im, ax=ax, shrink=0.8)
        for el, style in (("Ca", dict(mfc="none", mec="w", ms=5)), ("C", dict(mfc="k", mec="none", ms=2.5))):
            xy = atoms_xy[el]
            if len(xy):
                ax.plot(xy[:, 0], xy[:, 1], "o", label=f"surface {el}", **style)
        for d in reg.defects:
            ax.plot(d["x_A"], d["y_A"], "x", color="r", ms=11, mew=2.5)
        ax.set_xlim(ext[:2]), ax.set_ylim(ext[2:])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x (Å)")
    axes[0].set_ylabel("y (Å)")
    axes[1].legend(loc="upper right", fontsize=7, framealpha=0.6)
    fig.suptitle(
        f"#{rank_no} {reg.label}: NCC {reg.score:.3f}" + ("  (x: its defect)" if reg.defects else ""), fontsize=11
    )
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write_results(regs, sims, prep, out_dir, meta: dict | None = None) -> list[Path]:
    """``ranking.csv``, ``ranking.json`` and ``<rank>-<candidate>.png`` per candidate."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "measurement": prep.measurement.source,
        **(meta or {}),
        "ranking": [_row(k, r) for k, r in enumerate(regs, 1)],
    }
    written = [
        _write_text(out / "ranking.csv", _csv_text(regs)),
        _write_text(out / "ranking.json", json.dumps(doc, indent=1)),
    ]
    for k, r in enumerate(regs, 1):
        written.append(plot_registration(prep, sims[r.variant or r.label], r, out / f"{k:02d}-{_slug(r.label)}.png", k))
    return written


def match_files(
    measurement,
    candidates: Sequence[str],
    out_dir,
    model=None,
    heights=DEFAULT_HEIGHTS,
    pixel_size=None,
    quantity: str | None = None,
    channel: str | None = None,
    z_step=None,
    noise: float | None = None,
    amplitude: float = 0.0,
    tip_radius: float | None = None,
    angles=DEFAULT_ANGLES,
    blurs=DEFAULT_BLURS,
    score: str = "ncc",
    contrast_floor: float | None = DEFAULT_CONTRAST_FLOOR,
    log=print,
):
    """``hydrolayer match``: read, check everything, rank, then write (nothing is written
    when any input is bad). ``model`` None: the registry's default. Returns (registrations
    best first, written paths)."""
    from .measurements import read_measurement
    from .predict import load_predictor

    meas = read_measurement(measurement, pixel_size=pixel_size, channel=channel, z_step=z_step)
    cands = [parse_candidate(c) for c in candidates]
    labels = [c.label for c in cands]
    if len(set(labels)) != len(labels):
        raise InputError(f"{measurement}: a candidate is given twice")
    if contrast_floor is not None and not 0 <= contrast_floor < 1:
        raise InputError(f"{measurement}: the contrast floor must be in [0, 1), got {contrast_floor}")
    predictor = load_predictor(model)
    t0 = time.perf_counter()
    regs, sims, prep = rank(
        meas,
        cands,
        predictor,
        heights,
        quantity,
        angles,
        blurs,
        amplitude,
        noise,
        tip_radius,
        score=score,
        contrast_floor=contrast_floor,
    )
    seconds = time.perf_counter() - t0
    q = resolve_quantity(meas, quantity)
    meta = {
        "quantity": q,
        "unit": meas.unit,
        "channel": meas.channel,
        "pixel_size_A": list(meas.pixel_size),
        "shape": list(meas.values.shape),
        "model": predictor.name,
        "score": score,
        "contrast_floor": contrast_floor,
        "heights_A": [float(h) for h in heights],
        "seconds": round(seconds, 2),
    }
    written = write_results(regs, sims, prep, out_dir, meta)
    log(table(regs, meas.unit or "arb."))
    return regs, written
