"""Is a structure inside what a model was trained on? Checked before any prediction.

* elements the model has no channel for (it knows C, O, Ca; water H and O are ignored by
  the descriptor) -> :class:`InputError`, one line; no Ca -> :class:`InputError` (the
  surface plane the model is referenced to cannot be placed);
* a known element set on a surface the model was not trained on (``atoms.info["surface"]``
  against the checkpoint's ``training.surfaces``), or whose top layer is far from every
  trained surface (Ca and carbonate areal densities, > 25 % off, :func:`top_layer_fingerprint`)
  -> ``UserWarning`` saying why; a checkpoint that does not record its training surfaces
  cannot be checked (noted, no warning).

A checkpoint should carry ``training: {"surfaces": [...]}`` (builder names, e.g.
``"calcite-104"``) in its metadata (``models.save_checkpoint(..., extra)``).
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

import numpy as np

from .conventions import CATIONS, outer_layers, surface_planes
from .util import InputError

if TYPE_CHECKING:  # a type only: domain checks need no network
    from .inference import Predictor

__all__ = ["IGNORED_ELEMENTS", "FAR_TOLERANCE", "top_layer_fingerprint", "reference_fingerprint", "check_domain"]

IGNORED_ELEMENTS = ("H",)  # water in the file: the descriptor ignores it
FAR_TOLERANCE = 0.25  # relative difference of top-layer areal densities that triggers a warning
CARBONATE_BAND = 2.0  # Å: carbonate C this close in z to the surface plane counts as top layer


def top_layer_fingerprint(atoms, face: str = "top") -> dict:
    """Areal densities (per 100 Å^2) of the outermost layer of ``face``: ``"Ca"``, the cations
    of the surface plane (``conventions.surface_planes``), and ``"C"``, the carbonate C within
    :data:`CARBONATE_BAND` Å of that plane; ``{}`` without Ca."""
    sym = np.array(atoms.get_chemical_symbols())
    if not (sym == "Ca").any():
        return {}
    z = atoms.positions[:, 2] if face == "top" else -atoms.positions[:, 2]
    top, bottom = surface_planes(atoms)
    z_s = top if face == "top" else -bottom
    area = float(np.linalg.norm(np.cross(atoms.cell[0], atoms.cell[1])))
    cat = np.isin(sym, CATIONS)
    plane = np.zeros(len(z), bool)
    plane[cat] = outer_layers(z[cat])[0]  # the cations that make z_s (z is mirrored for the bottom face)
    c = (sym == "C") & (np.abs(z - z_s) <= CARBONATE_BAND)
    return {"Ca": 100.0 * plane.sum() / area, "C": 100.0 * c.sum() / area}


@functools.lru_cache(maxsize=None)
def reference_fingerprint(surface: str) -> dict:
    """The top-layer fingerprint of a pristine built-in surface ({} if the builder does not
    know the name); cached: building a slab takes about a second."""
    from .structures import build_surface

    try:
        return top_layer_fingerprint(build_surface(surface, size=(1, 1), layers=2))
    except Exception:  # a training-set name the builder does not know: cannot compare
        return {}


def check_domain(atoms, predictor: Predictor, source: str = "<structure>", face: str = "top") -> list[str]:
    """Refuse what the model cannot describe; return (and warn about) what it may get wrong."""
    _check_elements(atoms, predictor, source)
    trained = predictor.training_surfaces
    if trained is None:
        return ["the checkpoint does not record its training surfaces: facet not checked"]
    notes: list[str] = []
    name = atoms.info.get("surface") if hasattr(atoms, "info") else None
    if name and name not in trained:
        notes.append(
            f"{source}: surface {name!r} (from the file's info) is not one the model was trained on "
            f"({', '.join(trained)}); the prediction is an extrapolation"
        )
    far = _far_from_training(atoms, trained, source, face)
    if far:
        notes.append(far)
    for n in notes:
        warnings.warn(n, stacklevel=3)
    return notes


def _check_elements(atoms, predictor: Predictor, source: str) -> None:
    syms = set(atoms.get_chemical_symbols())
    bad = sorted(syms - set(predictor.elements) - set(IGNORED_ELEMENTS))
    if bad:
        raise InputError(
            f"{source}: the model {predictor.name} knows only {', '.join(predictor.elements)} "
            f"(water H ignored); this structure has {', '.join(bad)}"
        )
    if "Ca" not in syms:
        raise InputError(f"{source}: no Ca atoms: cannot place the surface plane the model is referenced to")


def _far_from_training(atoms, trained: list[str], source: str, face: str) -> str | None:
    """A note when the top layer is more than :data:`FAR_TOLERANCE` off every trained surface."""
    fp = top_layer_fingerprint(atoms, face)
    refs = {t: r for t in trained if (r := reference_fingerprint(t))}
    if not (refs and fp):
        return None

    def dist(r):
        return max(abs(fp[k] - r[k]) / r[k] for k in ("Ca", "C") if r.get(k))

    best = min(refs, key=lambda t: dist(refs[t]))
    d = dist(refs[best])
    if d <= FAR_TOLERANCE:
        return None
    return (
        f"{source}: the top layer is far from every training surface: Ca {fp['Ca']:.2f} and "
        f"CO3 {fp['C']:.2f} per 100 Å^2 vs {refs[best]['Ca']:.2f} and {refs[best]['C']:.2f} for "
        f"{best} ({100 * d:.0f}% off); an unknown facet, termination or a heavily defective "
        "surface: treat the prediction as an extrapolation"
    )
