"""Tests for hydrolayer.measurements: every reader on a small file the test writes (with the
format library's own writer where it has one, else the bytes of the format), units and
pixel sizes from the file, the [x, y] orientation, and one-line errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest

from hydrolayer.measurements import Measurement, read_measurement, write_gwy
from hydrolayer.util import InputError

pytest.importorskip("gwyfile")
pytest.importorskip("nanonispy2")


def _ramp(nx=12, ny=8, nz=None):
    """values[i, j(, k)] = 100 i + j (+ 1000 k): any transposition or flip shows."""
    i, j = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    v = 100.0 * i + j
    return v if nz is None else v[..., None] + 1000.0 * np.arange(nz)


# ------------------------------------------------------------------ Gwyddion
def test_gwy_roundtrip_units_and_orientation(tmp_path):
    m = Measurement(_ramp() * 1e-3, (0.25, 0.5), None, "force", "nN", "F_z", "x")
    path = write_gwy(m, tmp_path / "map.gwy")
    r = read_measurement(path)
    assert r.values.shape == (12, 8)
    np.testing.assert_allclose(r.values, m.values, rtol=1e-12)  # stored in N, read back in nN
    assert r.pixel_size == pytest.approx((0.25, 0.5))
    assert (r.quantity, r.unit) == ("force", "nN")


def test_gwy_brick_3d_and_channel_by_title(tmp_path):
    import gwyfile
    from gwyfile.objects import GwyContainer, GwyDataField, GwyObject, GwySIUnit

    v = _ramp(6, 5, 4)  # (x, y, z); a brick stores data[k][j][i]
    brick = GwyObject(
        "GwyBrick",
        {
            "xres": 6,
            "yres": 5,
            "zres": 4,
            "xreal": 6e-10,
            "yreal": 5e-10,
            "zreal": 2e-10,
            "zoff": 1e-10,
            "si_unit_x": GwySIUnit(unitstr="m"),
            "si_unit_w": GwySIUnit(unitstr="Hz"),
            "data": np.ascontiguousarray(v.transpose(2, 1, 0)).ravel(),
        },
    )
    c = GwyContainer()
    c["/0/data"] = GwyDataField(np.zeros((5, 6)), xreal=6e-10, yreal=5e-10, si_unit_xy="m", si_unit_z="m")
    c["/0/data/title"] = "Topography"
    c["/brick/0"] = brick
    c["/brick/0/title"] = "Frequency shift"
    c.tofile(str(tmp_path / "stack.gwy"))
    r = read_measurement(tmp_path / "stack.gwy", channel="Frequency shift")
    assert r.is_3d and r.values.shape == (6, 5, 4)
    np.testing.assert_allclose(r.values, v)
    np.testing.assert_allclose(r.z, [1.0, 1.5, 2.0, 2.5])  # zoff + k zreal / zres, in Å
    assert r.pixel_size == pytest.approx((1.0, 1.0)) and r.quantity == "df"
    assert read_measurement(tmp_path / "stack.gwy").channel == "Topography"  # default: the first
    with pytest.raises(InputError, match="no channel 'Phase'"):
        read_measurement(tmp_path / "stack.gwy", channel="Phase")
    assert gwyfile is not None


def test_gwy_without_lateral_unit_needs_pixel_size(tmp_path):
    from gwyfile.objects import GwyContainer, GwyDataField

    c = GwyContainer()
    c["/0/data"] = GwyDataField(np.ones((4, 4)) + np.eye(4))  # no si_unit_xy: no physical size
    c["/0/data/title"] = "Z"
    c.tofile(str(tmp_path / "nosize.gwy"))
    with pytest.raises(InputError, match="no physical pixel size; pass --pixel-size"):
        read_measurement(tmp_path / "nosize.gwy")
    assert read_measurement(tmp_path / "nosize.gwy", pixel_size=0.3).pixel_size == (0.3, 0.3)


# ------------------------------------------------------------------ Nanonis .sxm
def _write_sxm(path, img_fwd, scan_dir="up", unit="Hz", truncate=0):
    """A minimal Nanonis scan: text header, ':SCANIT_END:', 0x1A 0x04, big-endian float32
    data, per channel forward then backward, each (ny, nx) in recording order."""
    ny, nx = img_fwd.shape
    header = (
        ":NANONIS_VERSION:\n2\n:SCAN_PIXELS:\n       %d       %d\n:SCAN_RANGE:\n  %e  %e\n"
        ":SCAN_OFFSET:\n 0.0 0.0\n:SCAN_ANGLE:\n0\n:SCAN_DIR:\n%s\n:SCAN_TIME:\n1.0 1.0\n:BIAS:\n0.0\n"
        ":ACQ_TIME:\n10.0\n:DATA_INFO:\n\tChannel\tName\tUnit\tDirection\tCalibration\tOffset\n"
        "\t14\tFrequency_Shift\t%s\tboth\t1.0\t0.0\n\n:SCANIT_END:\n"
    ) % (nx, ny, nx * 0.5e-10, ny * 0.25e-10, scan_dir, unit)
    data = np.stack([img_fwd, img_fwd[:, ::-1]]).astype(">f4").tobytes()
    raw = header.encode() + b"\n\x1a\x04" + b"\x00" + data
    path.write_bytes(raw[: len(raw) - truncate] if truncate else raw)
    return path


def test_sxm_reads_forward_channel_and_scan_direction(tmp_path):
    v = _ramp(10, 6)  # (x, y)
    # "up": the first recorded line is the lowest y; stored rows (ny, nx)
    r = read_measurement(_write_sxm(tmp_path / "up.sxm", v.T))
    np.testing.assert_allclose(r.values, v)
    assert r.pixel_size == pytest.approx((0.5, 0.25)) and r.quantity == "df" and r.channel == "Frequency_Shift"
    # "down": the first recorded line is the top one
    r = read_measurement(_write_sxm(tmp_path / "down.sxm", v.T[::-1], scan_dir="down"))
    np.testing.assert_allclose(r.values, v)


def test_sxm_truncated_is_one_line_error(tmp_path):
    with pytest.raises(InputError, match="truncated"):
        read_measurement(_write_sxm(tmp_path / "cut.sxm", _ramp(10, 6).T, truncate=40))
    (tmp_path / "nohdr.sxm").write_bytes(b":NANONIS_VERSION:\n2\n" + b"\x00" * 64)
    with pytest.raises(InputError, match="SCANIT_END"):
        read_measurement(tmp_path / "nohdr.sxm")


# ------------------------------------------------------------------ Nanonis .3ds
def _write_3ds(path, stack, z_m, truncate=0):
    """A minimal Nanonis grid: '\\r\\n'-separated key=value header ending ':HEADER_END:',
    then per pixel (rows from the bottom) 8 parameters and the channel's sweep, big-endian
    float32. ``stack``: (nx, ny, nz)."""
    nx, ny, nz = stack.shape
    lines = [
        f'Grid dim="{nx} x {ny}"',
        f"Grid settings={0:e};{0:e};{nx * 0.4e-10:e};{ny * 0.4e-10:e};0.0",
        'Sweep Signal="Z (m)"',
        'Fixed parameters="Sweep Start;Sweep End"',
        'Experiment parameters="X (m);Y (m);Z (m);Z offset (m);Settling time (s);Integration time (s)"',
        "# Parameters (4 byte)=8",
        f"Experiment size (bytes)={4 * nz}",
        f"Points={nz}",
        'Channels="Frequency Shift (Hz)"',
        "Delay before measuring (s)=0",
        "Experiment=Grid Spectroscopy",
        'Start time="01.01.2026 00:00:00"',
        'End time="01.01.2026 01:00:00"',
        "User=",
        "Comment=",
        ":HEADER_END:",
        "",
    ]
    params = np.zeros(8)
    params[:2] = z_m[0], z_m[-1]
    pix = [np.concatenate([params, stack[i, j]]) for j in range(ny) for i in range(nx)]
    raw = "\r\n".join(lines).encode() + np.asarray(pix).astype(">f4").tobytes()
    path.write_bytes(raw[: len(raw) - truncate] if truncate else raw)
    return path


def test_3ds_stack_axes_and_z(tmp_path):
    v = _ramp(5, 4, 6)
    z = np.linspace(2e-10, 4.5e-10, 6)
    r = read_measurement(_write_3ds(tmp_path / "grid.3ds", v, z))
    assert r.is_3d and r.values.shape == (5, 4, 6)
    np.testing.assert_allclose(r.values, v)
    np.testing.assert_allclose(r.z, z * 1e10, rtol=1e-6)
    assert r.pixel_size == pytest.approx((0.4, 0.4)) and r.quantity == "df"
    # z decreasing in the file (approach curves): planes are put in increasing z
    r = read_measurement(_write_3ds(tmp_path / "down.3ds", v, z[::-1]))
    np.testing.assert_allclose(r.z, z * 1e10, rtol=1e-6)
    np.testing.assert_allclose(r.values, v[:, :, ::-1])


def test_3ds_truncated_is_not_zero_padded(tmp_path):
    with pytest.raises(InputError, match="truncated"):
        read_measurement(_write_3ds(tmp_path / "cut.3ds", _ramp(5, 4, 6), np.linspace(0, 1e-10, 6), truncate=12))


# ------------------------------------------------------------------ TIFF, arrays, bad files
def test_tiff_pixel_size_from_resolution_tags(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    v = _ramp(9, 7).astype(np.float32)
    # 0.5 Å per pixel = 2e8 pixels per cm
    tifffile.imwrite(tmp_path / "map.tif", v.T, resolution=(2e8, 2e8), resolutionunit="CENTIMETER")
    r = read_measurement(tmp_path / "map.tif")
    np.testing.assert_allclose(r.values, v)
    assert r.pixel_size == pytest.approx((0.5, 0.5), rel=1e-6)
    tifffile.imwrite(tmp_path / "plain.tif", v.T)
    with pytest.raises(InputError, match="pass --pixel-size"):
        read_measurement(tmp_path / "plain.tif")


def test_npy_and_csv_need_pixel_size(tmp_path):
    v = _ramp(6, 5)
    np.save(tmp_path / "map.npy", v)
    np.savetxt(tmp_path / "map.csv", v, delimiter=",")
    for name in ("map.npy", "map.csv"):
        with pytest.raises(InputError, match=f"{name}: the file gives no physical pixel size"):
            read_measurement(tmp_path / name)
        r = read_measurement(tmp_path / name, pixel_size=0.3)
        np.testing.assert_allclose(r.values, v)
        assert r.pixel_size == (0.3, 0.3)
    np.save(tmp_path / "stack.npy", _ramp(6, 5, 3))
    with pytest.raises(InputError, match="--z-step"):
        read_measurement(tmp_path / "stack.npy", pixel_size=0.3)
    r = read_measurement(tmp_path / "stack.npy", pixel_size=0.3, z_step=0.5)
    np.testing.assert_allclose(r.z, [0.0, 0.5, 1.0])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("map.xyz", b"1 2 3", "unknown measurement format"),
        ("missing.gwy", None, "file not found"),
        ("empty.sxm", b"", "empty file"),
        ("garbled.gwy", b"GWYPnot really a gwyddion file", "cannot read this .gwy file"),
        ("garbled.npy", b"\x93NUMPY\x01\x00garbage", "cannot read this .npy file"),
    ],
)
def test_bad_files_are_one_line_input_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        read_measurement(path, pixel_size=0.4)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))
