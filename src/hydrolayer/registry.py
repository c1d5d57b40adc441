"""The shipped models: ``src/hydrolayer/pretrained/<name>.pt`` with its model card ``<name>.md``.

``pretrained/DEFAULT`` (one line, a name) picks the default, else the first U-Net by name.
:func:`resolve_model` turns what a user gives (a shipped name, a checkpoint path or nothing)
into a checkpoint path; :func:`models_text` is what ``hydrolayer models`` prints. No torch here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .util import InputError

__all__ = ["PRETRAINED_DIR", "ShippedModel", "list_models", "default_model_name", "resolve_model", "models_text"]

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


@dataclasses.dataclass(frozen=True)
class ShippedModel:
    """A checkpoint shipped in ``pretrained/``: ``name``, ``path`` (.pt), ``card`` (.md or None)."""

    name: str
    path: Path
    card: Path | None

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
    """Checkpoints in the registry folder (default: the package's ``pretrained/``), by name."""
    d = _folder(directory)
    if not d.is_dir():
        return []
    out = []
    for pt in sorted(d.glob("*.pt")):
        card = pt.with_suffix(".md")
        out.append(ShippedModel(pt.stem, pt, card if card.exists() else None))
    return out


def default_model_name(directory: Path | str | None = None) -> str | None:
    """``pretrained/DEFAULT`` if present, else the first shipped model whose name starts with
    ``unet`` (the U-Net family), else the first one; ``None`` when nothing is shipped."""
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
    unets = [n for n in names if n.startswith("unet")]
    return (unets or names)[0]


def resolve_model(model: str | Path | None, directory: Path | str | None = None) -> Path:
    """The checkpoint path of ``model``: a shipped model's name, a path to a ``.pt`` file, or
    ``None`` for the default shipped model. :class:`InputError` when there is none."""
    d = _folder(directory)
    if model is None:
        name = default_model_name(d)
        if name is None:
            raise InputError(
                f"{d}: no trained model is shipped yet; pass --model PATH to a checkpoint (.pt) written by training"
            )
        return d / f"{name}.pt"
    p = Path(model)
    if p.suffix == ".pt" or p.exists() or "/" in str(model):
        if not p.exists():
            raise InputError(f"{p}: checkpoint not found")
        return p
    names = [m.name for m in list_models(d)]
    if str(model) in names:
        return d / f"{model}.pt"
    shipped = ", ".join(names) if names else "none shipped yet"
    raise InputError(f"{model}: no such model (shipped: {shipped}); or give a path to a .pt checkpoint")


def models_text(card: str | None = None, directory: Path | str | None = None) -> str:
    """What ``hydrolayer models`` prints: one entry per shipped model, or one full card."""
    d = _folder(directory)
    models = {m.name: m for m in list_models(d)}
    if card is not None:
        if card not in models:
            raise InputError(f"{card}: no such shipped model (shipped: {', '.join(models) or 'none yet'})")
        return models[card].card_text().rstrip()
    if not models:
        return f"no trained models shipped yet ({d} has no .pt files)"
    default = default_model_name(d)
    lines = []
    for name, m in models.items():
        lines.append(f"{name}{' (default)' if name == default else ''}: {m.summary()}")
        lines.append(f"    checkpoint {m.path}")
        lines.append(f"    card       {m.card if m.card else '(missing)'}")
    lines.append("(hydrolayer models --card NAME prints a card)")
    return "\n".join(lines)
