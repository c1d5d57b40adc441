"""The models shipped inside the package (src/hydrolayer/pretrained/).

What this checks: every shipped checkpoint has a model card with the evaluation command
and its Table-1 rows, loads with the descriptor settings the package uses, and the default
model does what the README's main job relies on: on the bundled example (calcite (10-14),
5 x 3 cells, one CO3 2- vacancy) it predicts a non-negative density that goes to the bulk
value far from the surface and has its first water layer where MD puts it over calcite
(2.09 Å above the surface Ca plane in row 1 of data/simulations.db, benchmarks/RESULTS.md).
"""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from hydrolayer import predict  # noqa: E402
from hydrolayer.conventions import heights_above  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "calcite-co3-vacancy.extxyz"
SHIPPED = predict.list_models()


def test_something_is_shipped_with_a_default():
    if not SHIPPED:
        pytest.skip("no model shipped in src/hydrolayer/pretrained")
    assert predict.default_model_name() in [m.name for m in SHIPPED]


@pytest.mark.parametrize("name", [m.name for m in SHIPPED])
def test_card_and_checkpoint(name):
    from hydrolayer import descriptors

    m = {m.name: m for m in SHIPPED}[name]
    card = m.card_text()
    assert "## Evaluation" in card and "hydrolayer evaluate" in card and "MD noise floor" in card
    p = predict.load_predictor(name)
    assert p.elements == tuple(descriptors.CHANNELS)
    assert p.sigma == pytest.approx(descriptors.DEFAULT_SIGMA)
    assert p.window_shape == tuple(descriptors.WINDOW_SHAPE)


def test_default_model_on_the_bundled_example():
    if not SHIPPED:
        pytest.skip("no model shipped in src/hydrolayer/pretrained")
    from hydrolayer.structures import read_structure

    atoms = read_structure(EXAMPLE)
    grid = predict.predict_density(atoms)
    rho = grid.values[0]
    assert np.isfinite(rho).all() and rho.min() >= 0
    h = heights_above(grid.spec, float(grid.meta["surface_z"]))  # height above the surface Ca plane
    prof = rho.mean(axis=(0, 1))
    far = (h > 11) & (h < 14.5)
    assert prof[far].mean() == pytest.approx(1.0, abs=0.1)  # bulk water, rho/rho_bulk
    near = (h > 1.0) & (h < 3.0)
    first = h[near][np.argmax(prof[near])]
    assert abs(first - 2.09) < 0.35, f"first layer predicted at {first:.2f} A, MD 2.09 A"
    # a layer, not a flat profile: MD's laterally averaged first peak is 1.55-1.6 rho_bulk at the
    # targets' 0.4 Å smoothing (reports/v0, reports/v1); the shipped models under-predict it
    # (v0 1.2-1.3, v1 1.3, said in their cards)
    assert prof[near].max() > 1.2


def test_bfloat16_default_stays_close_to_float32():
    """The default precision (bfloat16 where the CPU supports it) must not change the
    answer beyond round-off that is small against the models' error (MAE ~0.2)."""
    if not SHIPPED:
        pytest.skip("no model shipped in src/hydrolayer/pretrained")
    from hydrolayer.structures import read_structure

    atoms = read_structure(EXAMPLE)
    a = predict.predict_density(atoms, model=predict.load_predictor(None, precision="bfloat16")).values[0]
    b = predict.predict_density(atoms, model=predict.load_predictor(None, precision="float32")).values[0]
    assert np.abs(a - b).mean() < 5e-3
    assert np.abs(a - b).max() < 0.25
