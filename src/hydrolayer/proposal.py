"""Where to simulate next: rank candidate surfaces by an ensemble's disagreement over them and
write the top K as a campaign spec (issue 14, ``hydrolayer campaign propose``).

Candidates
    Pair-vacancy surfaces of the training facets, both faces defective (as the campaigns
    simulate them): for each facet (surface, lateral size, layers), each number of pairs per
    face and each placement (``random``, ``adjacent``, ``separated``) with its structure
    seeds. Defaults (:data:`DEFAULT_FACETS`, :data:`DEFAULT_PAIRS`, :data:`DEFAULT_SEEDS`):
    calcite (10-14) 5 x 3 cells, 4 layers and aragonite (010) 5 x 4 cells, 3 layers (the sizes
    of ``examples/dataset-v1.yaml``), 1-6 pairs per face, random placement with structure seeds
    1-6, adjacent and separated with seeds 1-2. A YAML file can give its own::

        candidates:
          - surface: calcite-104
            size: [5, 3]
            layers: 4
            pairs: [1, 2, 3]
            placements: {random: [1, 2, 3], adjacent: [1]}   # placement: structure seeds
        defaults: {equil_ps: 50}                              # optional: the spec's defaults

    Each candidate's slab is the one the campaign would build (``campaign.build_job_structure``:
    the force field's lattice). Candidates whose removed ions are the same as an earlier
    candidate's up to a lateral translation of the surface lattice (e.g. two seeds that give
    the same pit) are *duplicates* and not scored (:func:`configuration_key`).

Already simulated
    A candidate is already simulated when a database row has the same ``surface``, ``defects``
    string (it names the placement, e.g. ``2 pair vacancies (top, adjacent); ...``) and
    ``structure_seed`` as ``store.provenance`` gives for the candidate's slab (and the same
    ``structure_size`` and ``layers`` where the row records them). Such candidates are
    reported, not scored.

Score (:func:`surface_spread`)
    ``predict.predict_density(slab, ensemble, face=f, uncertainty=True)`` for both faces; the
    *mean spread* is the members' standard deviation (``uncertainty``: ddof 0, rho/rho_bulk)
    averaged over every voxel from 0 to 10 Å above the surface plane
    (``uncertainty.FLAG_HEIGHTS``) of both faces; the *max window spread* is the largest
    10 x 10 Å window spread (``uncertainty.window_spreads``) of either face. Candidates are
    ranked by mean spread (then max window spread, then label), highest first.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np

from .util import InputError, atomic_output

__all__ = [
    "DEFAULT_FACETS",
    "DEFAULT_PAIRS",
    "DEFAULT_SEEDS",
    "SPEC_DEFAULTS",
    "Candidate",
    "enumerate_candidates",
    "load_candidates",
    "candidate_slab",
    "simulated_rows",
    "configuration_key",
    "band_mask",
    "surface_spread",
    "load_ensemble_model",
    "propose",
    "format_ranking",
]

DEFAULT_FACETS = (
    {"surface": "calcite-104", "size": (5, 3), "layers": 4},
    {"surface": "aragonite-010", "size": (5, 4), "layers": 3},
)
DEFAULT_PAIRS = (1, 2, 3, 4, 5, 6)  # pairs removed per face (a count)
DEFAULT_SEEDS = {"random": (1, 2, 3, 4, 5, 6), "adjacent": (1, 2), "separated": (1, 2)}  # structure seeds
SPEC_DEFAULTS = {"equil_ps": 50, "temperature": 300, "seed": 1}  # the data sets' protocol (dataset-v1.yaml)
ROW_KEYS = ("surface", "defects", "structure_seed")  # the row keys that identify a simulated surface


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One candidate surface: ``pairs`` neutral pairs removed from each face (a count),
    ``size`` lateral cells, ``layers`` layers, ``placement`` and its ``structure_seed``."""

    surface: str
    size: tuple[int, int]
    layers: int
    pairs: int
    placement: str
    structure_seed: int

    @property
    def defects(self) -> dict:
        """The spec's ``defects`` entry (placement explicit, also when random)."""
        return {"pair_vacancies": self.pairs, "both_faces": True, "placement": self.placement}

    @property
    def label(self) -> str:
        a, b = self.size
        return f"{self.surface} {a}x{b}x{self.layers} {self.pairs} pairs {self.placement} sseed={self.structure_seed}"

    def run(self) -> dict:
        """The campaign spec's run entry (``campaign.load_spec``/``expand`` format)."""
        return {
            "surface": self.surface,
            "size": list(self.size),
            "layers": self.layers,
            "defects": self.defects,
            "structure_seed": self.structure_seed,
        }


# --------------------------------------------------------------------------- candidates
def enumerate_candidates(facets=DEFAULT_FACETS, pairs=DEFAULT_PAIRS, seeds=None) -> list[Candidate]:
    """Every candidate of ``facets`` (dicts of surface, size, layers; each may carry its own
    ``pairs`` and ``placements``: {placement: [structure seeds]}), in a fixed order: facet,
    pairs, placement (random, adjacent, separated), seed."""
    from .structures import PLACEMENTS

    out = []
    for f in facets:
        seeds_f = dict(f.get("placements") or seeds or DEFAULT_SEEDS)
        for k in f.get("pairs") or pairs:
            for placement in PLACEMENTS:
                for s in seeds_f.get(placement, ()):
                    out.append(
                        Candidate(
                            f["surface"], tuple(int(v) for v in f["size"]), int(f["layers"]), int(k), placement, int(s)
                        )
                    )
    return out


def load_candidates(path) -> tuple[list[Candidate], dict]:
    """``(candidates, spec defaults)`` from a YAML file with a ``candidates`` list (module
    notes) and optional ``defaults``; one-line :class:`InputError` on anything malformed."""
    import yaml

    from .structures import PLACEMENTS, SURFACES

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    entries = doc.get("candidates") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{path}: needs a non-empty 'candidates' list")
    facets = []
    for n, e in enumerate(entries):
        where = f"{path}: candidates[{n}]"
        if not isinstance(e, dict) or e.get("surface") not in SURFACES:
            raise InputError(f"{where}: needs a known surface ({', '.join(sorted(SURFACES))})")
        placements = e.get("placements") or DEFAULT_SEEDS
        if isinstance(placements, list):  # a list of placement names: the default seeds of each
            placements = {p: DEFAULT_SEEDS.get(p, ()) for p in placements}
        if not isinstance(placements, dict) or not set(placements) <= set(PLACEMENTS):
            raise InputError(f"{where}: placements must be among {', '.join(PLACEMENTS)}, got {placements!r}")
        try:
            facets.append(
                {
                    "surface": e["surface"],
                    "size": [int(v) for v in e.get("size", (5, 3))][:2],
                    "layers": int(e.get("layers", 4)),
                    "pairs": [int(k) for k in _listed(e.get("pairs", DEFAULT_PAIRS))],
                    "placements": {p: [int(s) for s in _listed(v)] for p, v in placements.items()},
                }
            )
        except (TypeError, ValueError):
            raise InputError(f"{where}: size, layers, pairs and seeds must be integers, got {e!r}") from None
        if any(k < 1 for k in facets[-1]["pairs"]):
            raise InputError(f"{where}: pairs must be at least 1")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise InputError(f"{path}: defaults must be a mapping")
    return enumerate_candidates(facets), defaults


def _listed(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def candidate_slab(c: Candidate):
    """The slab the campaign would simulate for ``c`` (``campaign.build_job_structure``)."""
    from .campaign import build_job_structure

    settings = {"surface": c.surface, "size": list(c.size), "layers": c.layers, "structure_seed": c.structure_seed}
    try:
        atoms, _ = build_job_structure(dict(settings, defects=c.defects))
    except ValueError as err:  # more pairs than the outer layer holds
        raise InputError(f"{c.label}: {err}") from None
    return atoms


def simulated_rows(db) -> dict:
    """``{(surface, defects, structure_seed): [(row id, structure_size, layers), ...]}`` of
    every row of ``db`` (an ``ase.db`` path or connection)."""
    from . import store

    out: dict = {}
    for row in store.connect(db).select():
        kv = row.key_value_pairs
        key = tuple(kv.get(k) for k in ROW_KEYS)
        out.setdefault(key, []).append((row.id, kv.get("structure_size"), kv.get("layers")))
    return out


def simulated_row(atoms, rows: dict) -> int | None:
    """The id of a row of ``rows`` (:func:`simulated_rows`) that holds the slab ``atoms``."""
    from .store import provenance

    kv, _ = provenance(atoms)
    for row_id, size, layers in rows.get(tuple(kv.get(k) for k in ROW_KEYS), ()):
        if size in (None, kv.get("structure_size")) and layers in (None, kv.get("layers")):
            return row_id
    return None


def configuration_key(atoms, size) -> tuple:
    """The removed ions of ``atoms`` (``structures.defect_sites``) as a key that is the same for
    configurations equal up to a lateral translation of the surface lattice: the smallest, over
    the ``size`` = (A, B) surface-cell translations, of the sorted (species, face, fractional x,
    fractional y rounded to 1e-3) records."""
    from .structures import defect_sites

    sites = defect_sites(atoms)
    if not sites:
        return ()
    inv = np.linalg.inv(np.asarray(atoms.cell)[:2, :2])
    frac = np.array([s.position[:2] for s in sites]) @ inv
    keys = []
    for i in range(int(size[0])):
        for j in range(int(size[1])):
            f = np.round((frac + [i / size[0], j / size[1]]) % 1.0, 3) % 1.0
            keys.append(tuple(sorted((s.species, s.face, float(x), float(y)) for s, (x, y) in zip(sites, f))))
    return min(keys)


# --------------------------------------------------------------------------- the score
def band_mask(grid) -> np.ndarray:
    """The z planes of ``grid`` from 0 to 10 Å above its surface plane (``meta["surface_z"]``,
    Å; ``uncertainty.FLAG_HEIGHTS``): a boolean array over the grid's third axis."""
    from .conventions import heights_above
    from .uncertainty import FLAG_HEIGHTS

    h = heights_above(grid.spec, float(grid.meta["surface_z"]))
    return (h >= FLAG_HEIGHTS[0]) & (h <= FLAG_HEIGHTS[1])


def surface_spread(atoms, ensemble, faces=("top", "bottom")) -> dict:
    """The ensemble's disagreement over a slab (module notes): ``mean_spread`` (rho/rho_bulk,
    every voxel 0-10 Å above the surface plane of each face in ``faces``), ``max_window_spread``
    (rho/rho_bulk, the largest 10 x 10 Å window) and per face ``{"mean", "max_window",
    "grids": (mean, spread)}`` (the :class:`Grid` pair of ``predict_density``)."""
    from .predict import predict_density

    per = {}
    for face in faces:
        mean, spread = predict_density(atoms, model=ensemble, face=face, uncertainty=True)
        band = spread.values[0][..., band_mask(spread)]
        windows = spread.meta["uncertainty"]["windows"]
        per[face] = {
            "mean": float(band.mean()),
            "voxels": int(band.size),
            "max_window": max(w["spread"] for w in windows),
            "grids": (mean, spread),
        }
    n = sum(p["voxels"] for p in per.values())
    return {
        "mean_spread": sum(p["mean"] * p["voxels"] for p in per.values()) / n,
        "max_window_spread": max(p["max_window"] for p in per.values()),
        "faces": per,
    }


def load_ensemble_model(model, precision: str = "float32"):
    """An :class:`~hydrolayer.inference.EnsemblePredictor` of at least two members from a name
    or manifest path; a single network (or one member) is a one-line :class:`InputError`."""
    from .inference import EnsemblePredictor, load_predictor

    pred = model if hasattr(model, "nets") else load_predictor(model, precision=precision)
    if not isinstance(pred, EnsemblePredictor) or len(pred.members) < 2:
        what = "a single network" if not isinstance(pred, EnsemblePredictor) else "an ensemble of one member"
        raise InputError(
            f"{pred.source or pred.name}: proposing needs an ensemble of at least 2 members (a .json manifest), "
            f"this is {what}"
        )
    return pred


# --------------------------------------------------------------------------- propose
def propose(
    model,
    db,
    top: int,
    out,
    candidates=None,
    production_ps: float = 200.0,
    scores=None,
    log=print,
) -> dict:
    """Score every candidate, rank them and write the top ``top`` (a count) as a campaign
    spec at ``out`` (YAML) and all scores beside it (``scores``: a path stem, default ``out``
    without its suffix, + ``.scores.csv`` and ``.scores.json``).

    ``model``: an ensemble's name, manifest path or loaded predictor; ``db``: the simulation
    database (its rows are the surfaces already simulated); ``candidates``: a YAML file
    (module notes) or ``None`` for the defaults; ``production_ps``: each proposed run's
    production time (ps). ``log``: one progress line per candidate. Returns ``{"records":
    [per candidate, in enumeration order], "chosen": [records, ranked], "spec", "scores_csv",
    "scores_json", "model"}``. Nothing is written when an input is wrong (InputError)."""
    from . import store

    out = Path(out)
    if int(top) < 1:
        raise InputError(f"--top must be at least 1, got {top}")
    if not production_ps > 0:
        raise InputError(f"--production-ps must be positive, got {production_ps}")
    if not store.database_exists(db):
        raise InputError(f"{db}: database not found")
    if not out.parent.is_dir():
        raise InputError(f"{out}: output folder {out.parent} does not exist")
    cands, defaults = load_candidates(candidates) if candidates else (enumerate_candidates(), {})
    ens = load_ensemble_model(model)
    records = _score_all(cands, ens, simulated_rows(db), log)
    ranked = sorted(
        (r for r in records if r["status"] == "scored"),
        key=lambda r: (-r["mean_spread"], -r["max_window_spread"], r["label"]),
    )
    for rank, r in enumerate(ranked, 1):
        r["rank"] = rank
    chosen = ranked[: int(top)]
    spec_defaults = dict(SPEC_DEFAULTS, **defaults, production_ps=float(production_ps))
    stem = Path(scores) if scores else out.with_suffix("")
    paths = {"scores_csv": Path(f"{stem}.scores.csv"), "scores_json": Path(f"{stem}.scores.json")}
    _write_spec(out, chosen, spec_defaults, ens, len(records))
    _write_scores(paths, records, ens)
    return {"records": records, "chosen": chosen, "spec": out, "model": ens.name, **paths}


def _score_all(cands: list[Candidate], ens, rows: dict, log) -> list[dict]:
    """One record per candidate: scored, already simulated (its row) or a duplicate."""
    seen: dict = {}
    records = []
    for n, c in enumerate(cands, 1):
        rec = {"label": c.label, **dataclasses.asdict(c), "size": list(c.size), "rank": None}
        atoms = candidate_slab(c)
        row = simulated_row(atoms, rows)
        key = (c.surface, c.size, c.layers, configuration_key(atoms, c.size))
        if row is not None:
            rec.update(status="already simulated", row=row)
            log(f"[{n}/{len(cands)}] {c.label}: already simulated (row {row})")
        elif key in seen:
            rec.update(status="duplicate", duplicate_of=seen[key])
            log(f"[{n}/{len(cands)}] {c.label}: same removed ions as {seen[key]} (up to a translation), skipped")
        else:
            seen[key] = c.label
            t0 = time.perf_counter()
            s = surface_spread(atoms, ens)
            rec.update(
                status="scored",
                mean_spread=s["mean_spread"],
                max_window_spread=s["max_window_spread"],
                **{f"{f}_mean_spread": p["mean"] for f, p in s["faces"].items()},
                seconds=time.perf_counter() - t0,
            )
            log(
                f"[{n}/{len(cands)}] {c.label}: mean spread {rec['mean_spread']:.4f}, max window "
                f"{rec['max_window_spread']:.4f} rho/rho_bulk ({rec['seconds']:.1f} s)"
            )
        records.append(rec)
    return records


def _write_spec(out: Path, chosen: list[dict], defaults: dict, ens, n_candidates: int) -> None:
    """The campaign spec (``examples/dataset-v1.yaml`` format), one explicit run per choice."""
    import yaml

    lines = [
        f"# Proposed by `hydrolayer campaign propose` with the ensemble {ens.name} ({len(ens.members)} members,",
        f"# {ens.source}): the {len(chosen)} of {n_candidates} candidate surfaces where its members disagree most",
        "# (mean spread, rho/rho_bulk, 0-10 Å above the surface plane of both faces; hydrolayer.proposal).",
        f"name: proposal-{ens.name}",
        yaml.safe_dump({"defaults": defaults}, sort_keys=False, default_flow_style=False).rstrip(),
        "runs:",
    ]
    for r in chosen:
        c = Candidate(r["surface"], tuple(r["size"]), r["layers"], r["pairs"], r["placement"], r["structure_seed"])
        lines.append(
            f"  # rank {r['rank']}: mean spread {r['mean_spread']:.4f}, max window spread {r['max_window_spread']:.4f}"
        )
        entry = yaml.safe_dump([c.run()], sort_keys=False, default_flow_style=None).rstrip()
        lines.extend("  " + line for line in entry.splitlines())
    with atomic_output(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


SCORE_COLUMNS = (
    "rank",
    "label",
    "surface",
    "size",
    "layers",
    "pairs",
    "placement",
    "structure_seed",
    "status",
    "mean_spread",
    "max_window_spread",
    "top_mean_spread",
    "bottom_mean_spread",
    "row",
    "duplicate_of",
    "seconds",
)


def _write_scores(paths: dict, records: list[dict], ens) -> None:
    """Every candidate's record as CSV (``SCORE_COLUMNS``; spreads in rho/rho_bulk, time in s)
    and as JSON with the ensemble's name and members."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SCORE_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({**r, "size": "x".join(str(v) for v in r["size"])})
    doc = {
        "ensemble": ens.name,
        "manifest": ens.source,
        "members": [m.source for m in ens.members],
        "spread": "members' standard deviation (ddof 0), rho/rho_bulk, mean over 0-10 Å above z_s, both faces",
        "candidates": records,
    }
    with atomic_output(paths["scores_csv"]) as tmp:
        tmp.write_text(buf.getvalue())
    with atomic_output(paths["scores_json"]) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")


def format_ranking(result: dict, limit: int | None = None) -> str:
    """The ranked table (rank, candidate, mean spread, max window spread; rho/rho_bulk) of the
    chosen candidates (``limit``: more of the ranking), the skipped counts and the files."""
    ranked = sorted((r for r in result["records"] if r["rank"]), key=lambda r: r["rank"])
    shown = ranked[: max(limit or 0, len(result["chosen"]))]
    width = max([len("candidate")] + [len(r["label"]) for r in shown])
    lines = [f"{'rank':>4}  {'candidate':<{width}}  {'mean spread':>11}  {'max window spread':>17}"]
    for r in shown:
        lines.append(
            f"{r['rank']:>4}  {r['label']:<{width}}  {r['mean_spread']:>11.4f}  {r['max_window_spread']:>17.4f}"
        )
    done = [r for r in result["records"] if r["status"] == "already simulated"]
    dup = sum(r["status"] == "duplicate" for r in result["records"])
    rows = ", ".join(f"{r['label']} = row {r['row']}" for r in done)
    lines.append(
        f"{len(ranked)} candidates scored, {len(done)} already simulated"
        + (f" ({rows})" if done else "")
        + f", {dup} duplicate configurations skipped"
    )
    lines.append(f"spec of the top {len(result['chosen'])}: {result['spec']}")
    lines.append(f"all scores: {result['scores_csv']}, {result['scores_json']}")
    return "\n".join(lines)
