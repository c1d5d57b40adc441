"""Training on the synthetic toy database of ``test_data.make_synthetic_db``.

What this checks: the run directory (config, split, baseline, checkpoints, metrics.jsonl,
model.pt, summary), the L1/L2 comparison, exact resume after a "kill" between epochs
(bit-identical weights and metrics), config files, refusal to overwrite a run, and two
processes through ``torchrun`` (DDP, gloo) giving the same weights as one process with the
same global batch. What it does not check: that the network learns real hydration layers
(tiny widths, a couple of windows, one or two epochs).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hydrolayer.descriptors")

from hydrolayer.models import load_model  # noqa: E402
from hydrolayer.train import fit, load_config  # noqa: E402
from hydrolayer.util import InputError  # noqa: E402

# fixtures toy (the synthetic database) and tiny (a tiny TrainConfig): tests/conftest.py


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_d4_augmentation_is_the_descriptor_of_the_reflected_surface():
    """Reflecting a window (op 1: x -> -x) gives the descriptor of the reflected slab."""
    from test_data import toy_slab

    from hydrolayer.descriptors import SPACING, describe_windows
    from hydrolayer.train import d4

    atoms, _ = toy_slab(remove=(1,))
    refl = atoms.copy()
    refl.positions[:, 0] *= -1
    x0, y0 = 1.3, 2.2
    a = describe_windows(atoms, [(x0, y0)])
    b = describe_windows(refl, [(-(x0 + 31 * SPACING), y0)])
    np.testing.assert_allclose(d4(a, [1]), b, atol=2e-4 * a.max())
    swapped = d4(a, [4])
    assert swapped.shape == a.shape and np.array_equal(d4(swapped, [4]), a)
    assert np.array_equal(d4(d4(a, [3]), [3]), a)


def test_fit_writes_the_run_and_compares_losses(toy, tiny, tmp_path):
    db, cache = toy
    out = tmp_path / "run"
    summary = fit(db, out, tiny(cache), progress=False)
    for name in (
        "config.json",
        "split.json",
        "baseline.json",
        "model.pt",
        "summary.json",
        "l1/checkpoint.pt",
        "l1/best.pt",
        "l1/metrics.jsonl",
        "l2/best.pt",
        "l2/metrics.jsonl",
    ):
        assert (out / name).exists(), name
    assert set(summary["losses"]) == {"l1", "l2"} and summary["kept"] in ("l1", "l2")
    recs = [json.loads(line) for line in (out / "l1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]
    assert all(r["windows_per_s"] > 0 and r["val_mae"] > 0 and r["val_mae_A3"] > 0 for r in recs)
    model, meta = load_model(out / "model.pt")
    assert meta["model"] == "unet" and meta["loss"] == summary["kept"]
    assert meta["descriptor"]["sigma"] == 0.5 and meta["sigma_target"] == 0.4
    assert meta["window"]["shape"] == [32, 32, 64] and meta["training"]["surfaces"] == ["calcite-104"]
    split = json.loads((out / "split.json").read_text())
    assert "calcite-104 CO3 vacancy" in split["named"] and len(split["train"]) == 2
    base = json.loads((out / "baseline.json").read_text())
    assert len(base["profile"]) == 64 and max(base["profile"]) > 1
    with pytest.raises(InputError, match="already there"):
        fit(db, out, tiny(cache), progress=False)


def test_resume_after_a_kill_is_exact(toy, tiny, tmp_path):
    db, cache = toy
    cfg = dict(loss="l1", epochs=3)
    fit(db, tmp_path / "straight", tiny(cache, **cfg), progress=False)
    killed = fit(db, tmp_path / "resumed", tiny(cache, **cfg), progress=False, stop_after=1)
    assert killed.get("stopped")
    fit(db, tmp_path / "resumed", resume=True, progress=False)
    a, b = (
        _weights(tmp_path / "straight" / "l1" / "checkpoint.pt"),
        _weights(tmp_path / "resumed" / "l1" / "checkpoint.pt"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def strip(p):
        return [
            {k: v for k, v in json.loads(x).items() if k not in ("windows_per_s", "load_s", "step_s", "val_s")}
            for x in p.read_text().splitlines()
        ]

    assert strip(tmp_path / "straight" / "l1" / "metrics.jsonl") == strip(tmp_path / "resumed" / "l1" / "metrics.jsonl")
    # extending a finished run continues from its last epoch
    fit(db, tmp_path / "resumed", resume=True, epochs=4, progress=False)
    assert len((tmp_path / "resumed" / "l1" / "metrics.jsonl").read_text().splitlines()) == 4


def test_config_file_and_errors(toy, tmp_path):
    db, cache = toy
    f = tmp_path / "train.yaml"
    f.write_text("model: attention-unet\nchannels: [2, 4, 4, 4]\nloss: l2\nepochs: 1\n")
    cfg = load_config(f, seed=5)
    assert cfg.model == "attention-unet" and cfg.channels == (2, 4, 4, 4) and cfg.seed == 5
    (tmp_path / "bad.yaml").write_text("epochs: 1\nlearning_rate: 0.1\n")
    with pytest.raises(InputError, match="bad.yaml.*learning_rate"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "half.yaml").write_text("precision: float16\n")
    with pytest.raises(InputError, match="half.yaml.*precision"):
        load_config(tmp_path / "half.yaml")
    (tmp_path / "neg.yaml").write_text("epochs: -1\n")
    with pytest.raises(InputError, match="neg.yaml.*epochs"):
        load_config(tmp_path / "neg.yaml")
    with pytest.raises(InputError, match="database not found"):
        _train_command(["--db", str(tmp_path / "missing.db"), "--out", str(tmp_path / "r")])
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(InputError, match="nothing to resume"):
        _train_command(["--db", str(db), "--out", str(tmp_path / "none"), "--resume"])
    with pytest.raises(InputError, match="only --epochs"):
        _train_command(["--db", str(db), "--out", str(tmp_path / "none"), "--resume", "--model", "unet"])


def _train_command(argv):
    """``hydrolayer train ARGV`` through its command class, errors raised (not printed)."""
    import argparse

    from hydrolayer.commands.train import CLICommand

    parser = argparse.ArgumentParser(prog="hydrolayer train")
    CLICommand.add_arguments(parser)
    return CLICommand.run(parser.parse_args(argv))


def test_cli_train_attention_unet(toy, tmp_path):
    from hydrolayer.cli import main

    db, cache = toy
    f = tmp_path / "c.yaml"
    f.write_text(
        f"channels: [2, 4, 4, 4]\nthreads: 1\nloss: l1\nwindows_per_interface: 1\nbatch_size: 2\nmax_val_windows: 2\ncache_dir: {cache}\n"
    )
    assert (
        main(
            [
                "train",
                "--db",
                str(db),
                "--model",
                "attention-unet",
                "--out",
                str(tmp_path / "att"),
                "--epochs",
                "1",
                "--config",
                str(f),
                "--no-progress",
            ]
        )
        == 0
    )
    model, meta = load_model(tmp_path / "att" / "model.pt")
    assert meta["model"] == "attention-unet"
    assert main(["train", "--db", str(db), "--out", str(tmp_path / "att"), "--resume", "--model", "unet"]) == 2


def test_torchrun_two_processes_match_one(toy, tmp_path):
    """DDP with gloo, 2 processes x 1 window == 1 process x 2 windows (norm none, no dropout)."""
    db, cache = toy
    f = tmp_path / "c.yaml"
    f.write_text(
        f"channels: [2, 4, 4, 4]\nnorm: none\ndropout: 0.0\nloss: l1\nepochs: 1\nwindows_per_interface: 1\n"
        f"batch_size: 2\nmax_val_windows: 2\ncache_dir: {cache}\nseed: 2\nthreads: 1\n"
    )
    fit(db, tmp_path / "one", load_config(f), progress=False)
    src = str(Path(__import__("hydrolayer").__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "hydrolayer.cli",
        "train",
        "--db",
        str(db),
        "--out",
        str(tmp_path / "two"),
        "--config",
        str(f),
        "--no-progress",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(x) for x in (tmp_path / "two" / "l1" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["processes"] == 2
    a, b = _weights(tmp_path / "one" / "l1" / "checkpoint.pt"), _weights(tmp_path / "two" / "l1" / "checkpoint.pt")
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-4, atol=1e-6, err_msg=k)
    one = json.loads((tmp_path / "one" / "l1" / "metrics.jsonl").read_text())
    assert recs[0]["val_mae"] == pytest.approx(one["val_mae"], rel=1e-4)


def test_a_second_model_can_reuse_an_earlier_split(toy, tiny, tmp_path):
    db, cache = toy
    fit(db, tmp_path / "a", tiny(cache, epochs=1, loss="l1", split_fractions=(0.75, 0.25, 0.0)), progress=False)
    a = json.loads((tmp_path / "a" / "split.json").read_text())
    assert a["test"] == [] and len(a["val"]) == 1 and len(a["train"]) == 3  # 4 pool rows, no pool test set
    fit(
        db,
        tmp_path / "b",
        tiny(cache, epochs=1, loss="l1", split_file=str(tmp_path / "a" / "split.json")),
        progress=False,
    )
    b = json.loads((tmp_path / "b" / "split.json").read_text())
    assert (b["train"], b["val"], b["test"]) == (a["train"], a["val"], a["test"])
    bad = dict(a, train=a["train"] + ["0" * 32])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match="bad.json: 1 simulation"):
        fit(db, tmp_path / "c", tiny(cache, epochs=1, loss="l1", split_file=str(tmp_path / "bad.json")), progress=False)
    with pytest.raises(ValueError, match="split_fractions"):
        tiny(cache, split_fractions=(0.5, 0.0, 0.5))


def test_bfloat16_training_runs_and_stays_close_to_float32(toy, tiny, tmp_path):
    """bfloat16 autocast in the training forward pass gives the float32 run (same seed, one
    epoch = two Adam steps) up to bfloat16 rounding.

    Measured (seeds 1-3, 2026-11-30; bfloat16 against float32): first-epoch training loss
    within 4.5e-4 (relative), weights within 4.8e-3 (relative L2; another seed moves them by
    0.63), validation MAE (always float32) within 5e-6. Bounds: the loss within 2e-3,
    bfloat16's unit roundoff 2^-9 (the loss averages many voxels, so rounding mostly
    cancels); the weights within 1e-2, 2x the measured value: Adam moves a weight by up to
    lr = 1e-3 a step however small its gradient, so rounding that flips tiny gradients gives
    differences of order lr, and uncorrelated gradients would give about 2e-2; the
    validation MAE within 1e-4, 20x the measured value."""
    db, cache = toy
    fit(db, tmp_path / "f32", tiny(cache, loss="l1", epochs=1), progress=False)
    fit(db, tmp_path / "bf16", tiny(cache, loss="l1", epochs=1, precision="bfloat16"), progress=False)
    a, b = _weights(tmp_path / "f32" / "l1" / "checkpoint.pt"), _weights(tmp_path / "bf16" / "l1" / "checkpoint.pt")
    assert all(torch.isfinite(b[k].float()).all() for k in b)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the forward pass really ran in bfloat16
    learned = [k for k in a if a[k].is_floating_point() and "running_" not in k]
    wa = torch.cat([a[k].flatten() for k in learned])
    wb = torch.cat([b[k].float().flatten() for k in learned])
    assert float((wb - wa).norm() / wa.norm()) < 1e-2
    _, meta = load_model(tmp_path / "bf16" / "model.pt")
    assert meta["train_config"]["precision"] == "bfloat16"
    ra, rb = (json.loads((tmp_path / r / "l1" / "metrics.jsonl").read_text().splitlines()[0]) for r in ("f32", "bf16"))
    assert rb["val_mae"] > 0
    assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=2e-3)
    assert rb["val_mae"] == pytest.approx(ra["val_mae"], rel=1e-4)


def test_mixed_loss_is_l1_plus_weighted_mse_and_trains_one_network(toy, tiny, tmp_path):
    """``loss: l1+l2``: L1 + l2_weight x MSE on known numbers, one network in ``l1+l2/``."""
    from hydrolayer.train import loss_function

    pred, target = torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.0, 0.0, 1.0])
    # L1 = (0 + 1 + 2) / 3 = 1; MSE = (0 + 1 + 4) / 3 = 5/3
    assert loss_function("l1")(pred, target).item() == pytest.approx(1.0)
    assert loss_function("l2")(pred, target).item() == pytest.approx(5 / 3)
    assert loss_function("l1+l2", 0.5)(pred, target).item() == pytest.approx(1 + 0.5 * 5 / 3)
    with pytest.raises(ValueError, match="l2_weight"):
        tiny(toy[1], loss="l1+l2", l2_weight=0)
    db, cache = toy
    summary = fit(db, tmp_path / "mix", tiny(cache, loss="l1+l2", l2_weight=0.5, epochs=1), progress=False)
    assert set(summary["losses"]) == {"l1+l2"}
    assert (tmp_path / "mix" / "l1+l2" / "best.pt").exists()
    _, meta = load_model(tmp_path / "mix" / "model.pt")
    assert meta["loss"] == "l1+l2" and meta["train_config"]["l2_weight"] == 0.5


def test_layer_loss_is_squared_error_in_the_first_layer_only():
    """``loss: l1+l2-layer``: absolute error per voxel, l2_weight x squared error in the
    planes 1-3 Å above the surface (and only there), on known numbers; wrong depth refused."""
    from hydrolayer.conventions import FIRST_LAYER, WINDOW_SHAPE, window_heights
    from hydrolayer.train import loss_function

    z = window_heights()
    band = (z > FIRST_LAYER[0]) & (z < FIRST_LAYER[1])
    assert 0 < band.sum() < len(z)
    target = torch.zeros((1, 1, 2, 2, WINDOW_SHAPE[2]))
    pred = torch.full_like(target, 3.0)  # error 3 everywhere: 3 outside the layer, 0.5 * 9 inside
    expected = (3.0 * (~band).sum() + 4.5 * band.sum()) / len(z)
    assert loss_function("l1+l2-layer", 0.5)(pred, target).item() == pytest.approx(float(expected))
    pred_out = target.clone()
    pred_out[..., ~torch.from_numpy(band)] = 2.0  # errors only outside the layer: plain L1 there
    assert loss_function("l1+l2-layer", 0.5)(pred_out, target).item() == pytest.approx(2.0 * (~band).sum() / len(z))
    with pytest.raises(ValueError, match="planes"):
        loss_function("l1+l2-layer")(torch.zeros(1, 1, 2, 2, 10), torch.zeros(1, 1, 2, 2, 10))


def test_init_from_fine_tunes_the_given_weights(toy, tiny, tmp_path):
    """``init_from`` starts the run from a checkpoint's weights: with a vanishing learning rate
    the run's weights stay the source's (a fresh start with the same seed is elsewhere); a
    checkpoint of another network is refused, naming the file."""
    db, cache = toy
    fit(db, tmp_path / "a", tiny(cache, loss="l1", epochs=1), progress=False)
    source = tmp_path / "a" / "model.pt"
    fit(db, tmp_path / "b", tiny(cache, loss="l1", epochs=1, seed=2, lr=1e-12, init_from=str(source)), progress=False)
    fit(db, tmp_path / "c", tiny(cache, loss="l1", epochs=1, seed=2, lr=1e-12), progress=False)
    a, b, c = (_weights(tmp_path / r / "l1" / "checkpoint.pt") for r in "abc")
    learned = [k for k in a if a[k].is_floating_point() and "running_" not in k]
    assert all(torch.allclose(a[k], b[k], atol=1e-8) for k in learned)
    assert not all(torch.allclose(a[k], c[k], atol=1e-3) for k in learned)
    _, meta = load_model(tmp_path / "b" / "model.pt")
    assert meta["train_config"]["init_from"] == str(source)
    with pytest.raises(InputError, match=r"model\.pt: init_from holds a unet network"):
        fit(
            db,
            tmp_path / "d",
            tiny(cache, loss="l1", epochs=1, channels=(2, 4, 4, 8), init_from=str(source)),
            progress=False,
        )
    assert not (tmp_path / "d").exists()


def test_log_loss_adds_the_squared_error_of_ln_rho(toy, tiny, tmp_path):
    """``loss: l2+log``: MSE + log_weight x MSE of ln(max(rho, 0) + LOG_EPS), on known numbers
    (a negative prediction counts as 0 in the log term); a run with it trains one network."""
    from hydrolayer.train import LOG_EPS, loss_function

    pred, target = torch.tensor([-1.0, 1.0, 3.0]), torch.tensor([0.0, 0.0, 1.0])
    logs = [
        (math.log(0 + LOG_EPS) - math.log(0 + LOG_EPS)) ** 2,
        (math.log(1 + LOG_EPS) - math.log(0 + LOG_EPS)) ** 2,
        (math.log(3 + LOG_EPS) - math.log(1 + LOG_EPS)) ** 2,
    ]
    expected = (1 + 1 + 4) / 3 + 2.0 * sum(logs) / 3
    assert loss_function("l2+log", log_weight=2.0)(pred, target).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="log_weight"):
        tiny(toy[1], loss="l2+log", log_weight=-1)
    db, cache = toy
    summary = fit(db, tmp_path / "log", tiny(cache, loss="l2+log", log_weight=2.0, epochs=1), progress=False)
    assert list(summary["losses"]) == ["l2+log"] and (tmp_path / "log" / "l2+log" / "best.pt").exists()


def test_df_pattern_is_minus_the_second_z_derivative_of_ln_rho_blurred_and_demeaned():
    """``df_pattern`` on ln rho = c(x) z²/2 with c linear in x: central differences are exact
    on a quadratic, so -d²/dz² ln rho = -c(x) in every plane; a symmetric blur keeps a linear
    c (valid part: the window loses the kernel's radius on each side), and taking out each
    plane's mean leaves -(c - mean c)."""
    from hydrolayer.conventions import SPACING, WINDOW_SHAPE, window_heights
    from hydrolayer.train import DF_BAND, DF_BLUR, df_pattern

    nx, ny, nz = WINDOW_SHAPE
    z = window_heights()
    c = 0.05 * np.arange(nx)
    rho = np.exp(c[:, None, None] * (z[None, None, :] - 3.0) ** 2 / 2) * np.ones((nx, ny, nz))
    d = df_pattern(torch.from_numpy(rho[None, None]))[0, 0].numpy()
    r = int(np.ceil(3 * DF_BLUR / SPACING))
    band = int(np.sum((z >= DF_BAND[0]) & (z <= DF_BAND[1])))
    assert d.shape == (nx - 2 * r, ny - 2 * r, band)
    inner = c[r : nx - r]
    expected = -(inner - inner.mean())
    assert np.allclose(d, expected[:, None, None], atol=1e-6)
    with pytest.raises(ValueError, match="64 planes"):
        df_pattern(torch.ones(1, 1, nx, ny, 8))


def test_df_loss_adds_the_squared_error_of_the_df_pattern(toy, tiny, tmp_path):
    """``loss: l2+df``: MSE + df_weight x MSE of df_pattern; a run with it trains one network
    and logs the validation's df-pattern MSE beside its MAE."""
    from hydrolayer.train import df_pattern, loss_function

    g = torch.Generator().manual_seed(0)
    target = 1 + torch.rand(2, 1, 32, 32, 64, generator=g)
    pred = target * (1 + 0.1 * torch.rand(2, 1, 32, 32, 64, generator=g))
    mse = torch.mean((pred - target) ** 2)
    dmse = torch.mean((df_pattern(pred) - df_pattern(target)) ** 2)
    assert dmse > 0
    got = loss_function("l2+df", df_weight=3.0)(pred, target)
    assert got.item() == pytest.approx((mse + 3.0 * dmse).item(), rel=1e-6)
    with pytest.raises(ValueError, match="df_weight"):
        tiny(toy[1], loss="l2+df", df_weight=0)
    db, cache = toy
    summary = fit(db, tmp_path / "df", tiny(cache, loss="l2+df", epochs=1), progress=False)
    assert list(summary["losses"]) == ["l2+df"]
    rec = json.loads((tmp_path / "df" / "l2+df" / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["val_df_mse"] > 0
