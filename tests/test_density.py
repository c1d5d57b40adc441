"""The density science of an MD run on synthetic frames with known answers (no LAMMPS)."""

import numpy as np
import pytest

from hydrolayer.density import (
    PROFILE_EDGES,
    DensityAccumulator,
    face_profiles,
    first_layer_counts,
    normalise,
    relative_drift,
)

CELL = np.diag([10.0, 8.0, 30.0])
SHAPE = (20, 16, 60)  # 0.5 Å spacing


def slab_and_water(rng):
    """A toy slab: 4 'cations' in a top plane at z = 12 and a bottom plane at z = 8, plus 4
    other atoms; water O at known heights above and below."""
    xy = rng.uniform(0, 8, (4, 2))
    cations = np.c_[np.r_[xy, xy], np.r_[np.full(4, 12.0), np.full(4, 8.0)]]
    others = np.c_[rng.uniform(0, 8, (4, 2)), np.full(4, 10.0)]
    slab = np.r_[cations, others]
    water = np.array(
        [[1.0, 1.0, 14.0], [3.0, 2.0, 14.5], [5.0, 5.0, 20.0], [2.0, 6.0, 6.0]]
    )  # +2, +2.5, +8, -2 (bottom)
    return slab, water


def new_acc(slab):
    n = len(slab)
    return DensityAccumulator(
        cell=CELL, shape=SHAPE, weights=np.full(n, 1.0 / n), centres=np.arange(n), cations=np.arange(8)
    )


def expected_counts(water, frames):
    counts = np.zeros(SHAPE, np.int64)
    idx = np.rint(water / np.diag(CELL) * np.array(SHAPE)).astype(int) % np.array(SHAPE)
    for i in idx:
        counts[tuple(i)] += frames
    return counts


def run(acc, slab, water, frames, velocity=np.zeros(3), start=0, jitter=None):
    """Frames of a slab and its water translated together by ``velocity`` per frame (wrapped
    into the box, as LAMMPS reports them); the first half of 2 * frames total into half 0."""
    for t in range(start, start + frames):
        shift = velocity * t
        s = (slab + shift) % np.diag(CELL)
        w = (water + shift) % np.diag(CELL)
        if jitter is not None and t == jitter[0]:
            s = s.copy()
            s[jitter[1]] += jitter[2]
        acc.add_frame(s, w, half=0 if t < 4 else 1)


def test_static_frames_bin_exactly():
    slab, water = slab_and_water(np.random.default_rng(0))
    acc = new_acc(slab)
    acc.start(slab)
    run(acc, slab, water, 8)
    r = acc.result()
    assert r["n1"] == r["n2"] == 4
    np.testing.assert_array_equal(r["counts1"], expected_counts(water, 4))
    np.testing.assert_array_equal(r["counts2"], expected_counts(water, 4))
    np.testing.assert_allclose(r["mean_slab"], slab)
    assert r["maxdisp"] == 0.0


def test_drift_is_removed_across_the_periodic_boundary():
    # slab and water drift together by 0.7 Å per frame in x and y and 0.3 Å in z: more than a
    # box length in x over the run, so the slab is re-wrapped on the way; in the slab's frame
    # nothing moves, so the counts are those of the first frame, every time
    slab, water = slab_and_water(np.random.default_rng(1))
    acc = new_acc(slab)
    acc.start(slab)
    run(acc, slab, water, 8, velocity=np.array([1.7, 0.7, 0.3]))
    r = acc.result()
    np.testing.assert_array_equal(r["counts1"] + r["counts2"], expected_counts(water, 8))
    assert r["maxdisp"] == pytest.approx(0.0, abs=1e-9)
    # without drift removal the water would have been smeared along the drift
    assert acc.com0 is not None and np.allclose(acc.prev - slab, 7 * np.array([1.7, 0.7, 0.3]), atol=1e-9)


def test_displacement_of_one_ion_is_tracked():
    slab, water = slab_and_water(np.random.default_rng(2))
    acc = new_acc(slab)
    acc.start(slab)
    kick = np.array([0.0, 1.6, 1.2])  # 2.0 Å
    run(acc, slab, water, 8, jitter=(5, 9, kick))
    # the kicked atom also moves the centre of mass by kick / n: its displacement in the
    # slab's frame is kick (1 - 1/n)
    assert acc.maxdisp == pytest.approx(2.0 * (1 - 1 / len(slab)))


def test_state_restore_continues_exactly():
    slab, water = slab_and_water(np.random.default_rng(3))
    v = np.array([0.9, -0.4, 0.1])
    whole = new_acc(slab)
    whole.start(slab)
    run(whole, slab, water, 4, velocity=v)
    whole.end_block(0.2)
    run(whole, slab, water, 4, velocity=v, start=4)
    whole.end_block(0.2)
    first = new_acc(slab)
    first.start(slab)
    run(first, slab, water, 4, velocity=v)
    first.end_block(0.2)
    state = {k: np.array(val) for k, val in first.state().items()}  # what np.savez keeps
    second = DensityAccumulator.from_state(state, weights=first.weights, centres=first.centres, cations=first.cations)
    run(second, slab, water, 4, velocity=v, start=4)
    second.end_block(0.2)
    a, b = whole.result(), second.result()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_face_profiles_and_first_layer():
    slab, water = slab_and_water(np.random.default_rng(4))
    acc = new_acc(slab)
    acc.start(slab)
    run(acc, slab, water, 8)
    acc.end_block(0.4)
    (prof,) = acc.result()["profiles"]
    centres = 0.5 * (PROFILE_EDGES[1:] + PROFILE_EDGES[:-1])
    top = dict(zip(np.round(centres[prof[0] > 0], 2), prof[0][prof[0] > 0]))
    assert top == {2.05: 1.0, 2.55: 1.0, 8.05: 1.0}  # 2, 2.5 and 8 Å above the plane at z = 12
    bottom = dict(zip(np.round(centres[prof[1] > 0], 2), prof[1][prof[1] > 0]))
    assert bottom[2.05] == 1.0  # 2 Å below the plane at z = 8
    # first layer (1-3 Å): two water O on the top face, one on the bottom
    np.testing.assert_array_equal(first_layer_counts(acc.result()["profiles"]), [[2.0, 1.0]])
    # periodic in z: a molecule just above the bottom plane's periodic image
    h = face_profiles(np.array([29.0]), 12.0, 8.0, 30.0)
    assert h[1].sum() == 1 and h[1][int((8.0 + 30.0 - 29.0) / 0.1)] == 1


def test_relative_drift():
    t = np.full(10, 10.0)
    assert relative_drift(np.full(10, 5.0), t) == pytest.approx(0.0, abs=1e-12)
    assert relative_drift(np.linspace(9, 11, 10), t) == pytest.approx(0.2)
    assert relative_drift([1.0, 2.0], [10, 10]) == 0.0


def test_normalise_uniform_water():
    # 3 samples per half of a uniform 2 molecules per voxel: rho/rho_bulk = 1 everywhere,
    # rho_bulk = 2 / voxel volume
    counts = np.full(SHAPE, 6, np.int64)
    halves, rho_bulk, gap = normalise(counts, counts, [3, 3], CELL, z_top=12.0, z_bottom=8.0)
    vox = np.prod(np.diag(CELL)) / np.prod(SHAPE)
    assert rho_bulk == pytest.approx(2 / vox)
    assert gap == pytest.approx(26.0)
    np.testing.assert_allclose(halves[0], 1.0)
    np.testing.assert_allclose(halves[1], 1.0)
    # the bulk value comes from the middle of the gap only: water elsewhere does not count
    counts2 = counts.copy()
    counts2[:, :, 24] = 600  # z = 12 Å, at the top plane
    _, rho_bulk2, _ = normalise(counts2, counts2, [3, 3], CELL, z_top=12.0, z_bottom=8.0)
    assert rho_bulk2 == pytest.approx(rho_bulk)


def test_an_ion_leaving_the_surface_moves_the_plane_by_its_share():
    # one of the 4 top-layer cations rises 2 Å out of the surface for the whole run after
    # the first frame: the top plane follows the first frame's outer layer, 12 + 2/4 Å,
    # not the risen ion alone (which would put the water at 14 Å *in* the plane)
    slab, water = slab_and_water(np.random.default_rng(5))
    acc = new_acc(slab)
    acc.start(slab)
    acc.add_frame(slab, water, half=0)
    risen = slab.copy()
    risen[0, 2] += 2.0
    for _ in range(3):
        acc.add_frame(risen, water, half=0)
    acc.end_block(0.2)
    (prof,) = acc.result()["profiles"]
    centres = 0.5 * (PROFILE_EDGES[1:] + PROFILE_EDGES[:-1])
    # the slab's centre of mass rose by 2/12 Å: in the slab's frame the water sits 2/12 Å lower
    shift = 2.0 / len(slab)
    expected_first = 14.0 - 12.0  # frame 1: plane at 12
    expected_later = 14.0 - shift - (12.0 - shift + 2.0 / 4)  # later frames: the plane 12 + 0.5 in the old frame
    top = centres[prof[0] > 0]
    assert np.isclose(top, expected_first + 0.05, atol=0.051).any()
    assert np.isclose(top, expected_later, atol=0.051).any()
    assert (top > 1.0).all()  # never at 0-0.5 Å, where the old rule (the risen ion's plane) put it
