"""The shipped models: ``src/hydrolayer/pretrained/<name>.pt`` with its model card ``<name>.md``,
and ensembles: ``<name>.ensemble.json`` (card ``<name>.md`` too).

``pretrained/DEFAULT`` (one line, a name) picks the default, else the first single U-Net by
name. :func:`resolve_model` turns what a user gives (a shipped name, a checkpoint or manifest
path, or nothing) into a path; :func:`models_text` is what ``hydrolayer models`` prints.

An ensemble is a small JSON manifest (:func:`read_ensemble`, :func:`write_ensemble`)::

    {"name": "unet-v1-ens", "members": ["member-0/model.pt", "member-1/model.pt"], "note": "..."}

member paths relative to the manifest's folder (absolute paths work too), and optionally
``"latents": "<name>.latents.npz"``: the training windows' latent vectors for the
out-of-domain score (:mod:`hydrolayer.uncertainty`, written by
``evaluate.write_training_latents``). A single checkpoint ``<stem>.pt`` has its latents in
``<stem>.latents.npz`` beside it (:func:`latents_path`). Any ``.json`` path
given as a model is read as a manifest (``hydrolayer train --ensemble`` writes
``RUN/ensemble.json``); shipped ones are named ``<name>.ensemble.json``. No torch here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .util import InputError, atomic_output

__all__ = [
    "PRETRAINED_DIR",
    "ENSEMBLE_SUFFIX",
    "ShippedModel",
    "EnsembleManifest",
    "list_models",
    "default_model_name",
    "resolve_model",
    "is_ensemble_path",
    "read_ensemble",
    "write_ensemble",
    "latents_path",
    "set_ensemble_latents",
    "models_text",
]

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
ENSEMBLE_SUFFIX = ".ensemble.json"  # a shipped ensemble's manifest: pretrained/<name>.ensemble.json
LATENTS_SUFFIX = ".latents.npz"  # the training latents beside a checkpoint or a manifest


@dataclasses.dataclass(frozen=True)
class ShippedModel:
    """A checkpoint shipped in ``pretrained/``: ``name``, ``path`` (.pt), ``card`` (.md or None)."""

    name: str
    path: Path
    card: Path | None

    @property
    def is_ensemble(self) -> bool:
        return is_ensemble_path(self.path)

    def card_text(self) -> str:
        return self.card.read_text() if self.card is not None and self.card.exists() else "(no model card)"

    def summary(self) -> str:
        """The first heading or line of the card."""
        for line in self.card_text().splitlines():
            line = line.strip().lstrip("#").strip()
            if line.startswith(f"{self.name}:"):  # a card titled "NAME: what it is"
                line = line[len(self.name) + 1 :].strip()
            if line:
                return line
        return ""


def _folder(directory) -> Path:
    return Path(directory) if directory is not None else PRETRAINED_DIR


def list_models(directory: Path | str | None = None) -> list[ShippedModel]:
    """Checkpoints and ensemble manifests in the registry folder (default: the package's
    ``pretrained/``), by name."""
    d = _folder(directory)
    if not d.is_dir():
        return []
    manifests = {m.name[: -len(ENSEMBLE_SUFFIX)]: m for m in d.glob(f"*{ENSEMBLE_SUFFIX}")}
    members = {Path(p).resolve() for m in manifests.values() for p in _member_paths(m)}
    found = {pt.stem: pt for pt in d.glob("*.pt") if pt.resolve() not in members}  # members listed with their ensemble
    found.update(manifests)
    out = []
    for name in sorted(found):
        card = d / f"{name}.md"
        out.append(ShippedModel(name, found[name], card if card.exists() else None))
    return out


def _member_paths(manifest: Path) -> list[Path]:
    """The member checkpoints a manifest names (unchecked; empty if it does not parse)."""
    try:
        doc = json.loads(manifest.read_text())
        return [manifest.parent / m for m in doc.get("members", []) if isinstance(m, str)]
    except (OSError, ValueError, AttributeError):
        return []


def default_model_name(directory: Path | str | None = None) -> str | None:
    """``pretrained/DEFAULT`` if present (a single model or an ensemble), else the first shipped
    single model whose name starts with ``unet`` (the U-Net family), else the first single
    model; ``None`` when nothing is shipped."""
    d = _folder(directory)
    models = list_models(d)
    if not models:
        return None
    names = [m.name for m in models]
    marker = d / "DEFAULT"
    if marker.exists():
        name = marker.read_text().strip()
        if name in names:
            return name
    singles = [m.name for m in models if not m.is_ensemble] or names
    unets = [n for n in singles if n.startswith("unet")]
    return (unets or singles)[0]


def resolve_model(model: str | Path | None, directory: Path | str | None = None) -> Path:
    """The path of ``model``: a shipped model's or ensemble's name, a path to a ``.pt``
    checkpoint or a ``.json`` ensemble manifest, or ``None`` for the default shipped model.
    :class:`InputError` when there is none."""
    d = _folder(directory)
    shipped = {m.name: m.path for m in list_models(d)}
    if model is None:
        name = default_model_name(d)
        if name is None:
            raise InputError(
                f"{d}: no trained model is shipped yet; pass --model PATH to a checkpoint (.pt) written by training"
            )
        return shipped[name]
    p = Path(model)
    if p.suffix in (".pt", ".json") or p.exists() or "/" in str(model):
        if not p.exists():
            raise InputError(f"{p}: {'ensemble manifest' if is_ensemble_path(p) else 'checkpoint'} not found")
        return p
    if str(model) in shipped:
        return shipped[str(model)]
    names = ", ".join(shipped) if shipped else "none shipped yet"
    raise InputError(
        f"{model}: no such model (shipped: {names}); or give a path to a .pt checkpoint or an ensemble .json"
    )


# =========================================================================== ensembles
def is_ensemble_path(path: str | Path) -> bool:
    """Whether a resolved model path is an ensemble manifest (any ``.json``)."""
    return Path(path).suffix == ".json"


@dataclasses.dataclass(frozen=True)
class EnsembleManifest:
    """A read ensemble manifest: ``name``, member checkpoint ``members`` (absolute paths,
    checked to exist), ``note``, the manifest's own ``path`` and its training-latents file
    ``latents`` (None when it names none)."""

    name: str
    members: tuple
    note: str
    path: Path
    latents: Path | None = None


def read_ensemble(path: str | Path) -> EnsembleManifest:
    """Read and check an ensemble manifest: JSON with a non-empty ``members`` list of ``.pt``
    paths (relative to the manifest's folder), each existing. One-line :class:`InputError`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: ensemble manifest not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not an ensemble manifest (not JSON: {str(err).splitlines()[0]})") from None
    members = doc.get("members") if isinstance(doc, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise InputError(f'{path}: an ensemble manifest needs "members": a non-empty list of checkpoint paths')
    resolved = []
    for m in members:
        p = Path(m) if os.path.isabs(m) else path.parent / m
        if is_ensemble_path(p):
            raise InputError(f"{path}: member {m} is itself a manifest; members must be .pt checkpoints")
        if not p.is_file():
            raise InputError(f"{path}: member {m} not found ({p})")
        resolved.append(p)
    name = str(doc.get("name") or path.name.removesuffix(ENSEMBLE_SUFFIX).removesuffix(".json"))
    latents = doc.get("latents")
    if latents is not None:
        if not isinstance(latents, str):
            raise InputError(f'{path}: "latents" must be a file name (the training latents, .npz)')
        latents = Path(latents) if os.path.isabs(latents) else path.parent / latents
        if not latents.is_file():
            raise InputError(f"{path}: training-latents file {doc['latents']} not found ({latents})")
    return EnsembleManifest(name, tuple(resolved), str(doc.get("note") or ""), path, latents)


def write_ensemble(path: str | Path, members, name: str | None = None, note: str = "", **extra) -> Path:
    """Write a manifest at ``path`` listing the checkpoints ``members`` (stored relative to
    the manifest's folder when they are inside it); ``extra`` keys are kept as they are."""
    path = Path(path)
    base = path.parent.resolve()
    rel = []
    for m in members:
        m = Path(m).resolve()
        rel.append(str(m.relative_to(base)) if m.is_relative_to(base) else str(m))
    doc = {
        "name": name or path.name.removesuffix(ENSEMBLE_SUFFIX).removesuffix(".json"),
        "members": rel,
        "note": note,
        **extra,
    }
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def latents_path(model_path: str | Path) -> Path:
    """Where the training latents of a model go: ``<stem>.latents.npz`` beside a checkpoint
    ``<stem>.pt``; beside a manifest ``<name>.ensemble.json`` (or ``<name>.json``),
    ``<name>.latents.npz``."""
    p = Path(model_path)
    stem = p.name.removesuffix(ENSEMBLE_SUFFIX).removesuffix(".json") if is_ensemble_path(p) else p.stem
    return p.parent / f"{stem}{LATENTS_SUFFIX}"


def set_ensemble_latents(manifest: str | Path, latents: str | Path) -> Path:
    """Name the training-latents file ``latents`` in the manifest (relative to it when beside
    it), keeping every other key."""
    manifest = Path(manifest)
    doc = json.loads(manifest.read_text())
    lat = Path(latents).resolve()
    base = manifest.parent.resolve()
    doc["latents"] = str(lat.relative_to(base)) if lat.is_relative_to(base) else str(lat)
    with atomic_output(manifest) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
    return manifest


def models_text(card: str | None = None, directory: Path | str | None = None) -> str:
    """What ``hydrolayer models`` prints: one entry per shipped model, or one full card."""
    d = _folder(directory)
    models = {m.name: m for m in list_models(d)}
    if card is not None:
        if card not in models:
            raise InputError(f"{card}: no such shipped model (shipped: {', '.join(models) or 'none yet'})")
        return models[card].card_text().rstrip()
    if not models:
        return f"no trained models shipped yet ({d} has no .pt files or {ENSEMBLE_SUFFIX} manifests)"
    default = default_model_name(d)
    lines = []
    for name, m in models.items():
        lines.append(f"{name}{' (default)' if name == default else ''}: {m.summary()}")
        lines.append(f"    {'ensemble  ' if m.is_ensemble else 'checkpoint'} {m.path}")
        lines.append(f"    card       {m.card if m.card else '(missing)'}")
    lines.append("(hydrolayer models --card NAME prints a card)")
    return "\n".join(lines)
