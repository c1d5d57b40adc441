"""Data: periodic smoothing/sampling, the window bank, the mirrored bottom face, splits.

The database rows here are synthetic (:func:`make_synthetic_db`, also used by the training
and evaluation tests): a toy carbonate slab (Ca and CO3 on a 5 Å square lattice, two layers)
and an analytic water density that depends on the atom positions: zero inside the slab, a
sharp peak 2.1 Å above (below, for the bottom face) every outermost Ca, a laterally uniform
layer 3.4 Å out, bulk 1 beyond; the two halves carry independent seeded noise.

What this checks: the geometry of the pairs (descriptor and target windows in the same
frame, bottom face mirrored, lateral offsets periodic), the target smoothing, the split by
simulation and the held-out names. What it does not check: anything about real water
(no MD here) or the real force field.
"""

import json

import numpy as np
import pytest

from hydrolayer import data

RHO_BULK = 0.0334  # Å^-3
PEAK_H, LAYER_H = 2.1, 3.4


def toy_slab(lateral=(10.0, 15.0), lz=40.0, z_bottom=12.0, z_top=21.0, remove=(), surface="calcite-104"):
    """Four layers of Ca + CO3 on a 5 Å square lattice, outer Ca planes at ``z_bottom`` and
    ``z_top``; ``remove`` = indices of outermost top-face Ca to drop (a defect)."""
    from ase import Atoms

    pos, sym = [], []
    for z in np.linspace(z_bottom, z_top, 4):
        for i in range(int(round(lateral[0] / 5))):
            for j in range(int(round(lateral[1] / 5))):
                pos.append((5 * i + 1.0, 5 * j + 1.0, z))
                sym.append("Ca")
                c = np.array((5 * i + 3.5, 5 * j + 3.5, z))
                pos.append(c)
                sym.append("C")
                for a in (0, 2 * np.pi / 3, 4 * np.pi / 3):
                    pos.append(c + 1.3 * np.array((np.cos(a), np.sin(a), 0)))
                    sym.append("O")
    atoms = Atoms(sym, positions=pos, cell=[lateral[0], lateral[1], lz], pbc=True)
    sites = []
    if remove:
        outer = [k for k, (s, p) in enumerate(zip(sym, pos)) if s == "Ca" and p[2] == z_top]
        gone = [outer[r] for r in remove]
        sites = [{"species": "Ca", "position": list(map(float, atoms.positions[g])), "face": "top"} for g in gone]
        del atoms[gone]
    atoms.info["surface"] = surface
    return atoms, sites


def analytic_density(atoms, cell, shape, z_bottom, z_top):
    """rho/rho_bulk of the toy rule on the periodic grid (cube convention)."""
    f = [np.arange(n) / n for n in shape]
    g = np.stack(np.meshgrid(*f, indexing="ij"), -1) @ cell
    z = g[..., 2]
    lz = cell[2, 2]
    mid = 0.5 * (z_top + z_bottom)
    dz = (z - mid + lz / 2) % lz - lz / 2  # height relative to the slab centre, periodic
    half = 0.5 * (z_top - z_bottom)
    d = np.abs(dz) - half  # distance out of the outer Ca plane on either side
    env = 1 / (1 + np.exp(-(d - 1.5) / 0.15))
    rho = 1 + 0.8 * np.exp(-((d - LAYER_H) ** 2) / (2 * 0.3**2))
    sym = np.array(atoms.get_chemical_symbols())
    ca = atoms.positions[sym == "Ca"]
    for p in ca:
        if abs(p[2] - z_top) < 0.1:
            q0 = p + (0, 0, PEAK_H)
        elif abs(p[2] - z_bottom) < 0.1:
            q0 = p - (0, 0, PEAK_H)
        else:
            continue
        # separable Gaussian (the toy cell is orthogonal), periodic images laterally
        w = 2 * 0.35**2
        gx = sum(np.exp(-((f[0] * cell[0, 0] - q0[0] - i * cell[0, 0]) ** 2) / w) for i in (-1, 0, 1))
        gy = sum(np.exp(-((f[1] * cell[1, 1] - q0[1] - j * cell[1, 1]) ** 2) / w) for j in (-1, 0, 1))
        gz = np.exp(-((f[2] * lz - q0[2]) ** 2) / w)
        rho += 2.5 * gx[:, None, None] * gy[None, :, None] * gz[None, None, :]
    return env * rho


def make_synthetic_db(folder, n_train=5, named=True, spacing=0.3, noise=0.3, seed=0):
    """A small database of toy rows: ``n_train`` neutral calcite-104 toys (0-2 Ca removed
    from the top face, so the peaks move), plus (``named``) one charged "CO3 vacancy" and
    one "aragonite-010" toy. Returns the database path."""
    from hydrolayer import store

    db = folder / "toy.db"
    rng = np.random.default_rng(seed)
    z_bottom, z_top = 12.0, 21.0
    specs = [dict(remove=tuple(sorted(rng.choice(6, size=k % 3, replace=False).tolist()))) for k in range(n_train)]
    if named:
        specs.append(dict(remove=(2,), net_charge=2, defects="CO3 vacancy (top)"))
        # pristine: periodic in its 5 x 5 Å cell, 2 x 3 of them (averaged over in the evaluation)
        specs.append(dict(remove=(), surface="aragonite-010", defects="pristine", structure_size="2x3"))
    for k, s in enumerate(specs):
        atoms, sites = toy_slab(remove=s["remove"], surface=s.get("surface", "calcite-104"))
        cell = np.asarray(atoms.cell)
        shape = tuple(int(round(L / spacing)) for L in cell.diagonal())
        rho = analytic_density(atoms, cell, shape, z_bottom, z_top)
        h1 = np.clip(rho + noise * rng.standard_normal(shape) * (rho > 0.05), 0, None)
        h2 = np.clip(rho + noise * rng.standard_normal(shape) * (rho > 0.05), 0, None)
        kvp = dict(
            surface=s.get("surface", "calcite-104"),
            defects=s.get("defects", f"{len(s['remove'])} Ca removed"),
            rho_bulk=RHO_BULK,
            z_top=z_top,
            z_bottom=z_bottom,
            net_charge=s.get("net_charge", 0),
            production_ps=100.0,
            seed=k,
        )
        if "structure_size" in s:
            kvp["structure_size"] = s["structure_size"]
        store.write_simulation(db, atoms, h1, h2, cell, kvp, {"defect_sites": sites})
    return db


# ----------------------------------------------------------------------------- tests
def test_smooth_periodic_is_a_normalised_gaussian_on_an_oblique_cell():
    cell = np.array([[8.0, 0, 0], [3.0, 7.0, 0], [0, 0, 9.0]])
    shape = (40, 35, 45)
    v = np.zeros(shape, np.float32)
    v[20, 17, 22] = 1.0
    s = data.smooth_periodic(v, cell, 0.6)
    assert s.sum() == pytest.approx(1.0, rel=1e-5)
    # second moment along z of the smoothed peak = sigma^2 (z is orthogonal to a, b)
    zf = (np.arange(shape[2]) - 22) * cell[2, 2] / shape[2]
    pz = s.sum((0, 1))
    assert (pz * zf**2).sum() == pytest.approx(0.36, rel=0.02)
    # lateral Cartesian moments are isotropic although the cell is oblique
    f = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), -1) @ cell
    d = f - np.array([20 / 40, 17 / 35, 22 / 45]) @ cell
    assert (s * d[..., 0] ** 2).sum() == pytest.approx(0.36, rel=0.03)
    assert (s * d[..., 1] ** 2).sum() == pytest.approx(0.36, rel=0.03)
    assert (s * d[..., 0] * d[..., 1]).sum() == pytest.approx(0.0, abs=0.01)


def test_sample_periodic_wraps_and_interpolates():
    cell = np.diag([4.0, 5.0, 6.0])
    shape = (8, 10, 12)
    f = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), -1)
    v = np.sin(2 * np.pi * f[..., 0]) + np.cos(2 * np.pi * f[..., 2])
    pts = np.array([[0.0, 0, 0], [1.0, 0.5, 1.5], [4.5, -5.0, 12.0 + 1.5]])
    got = data.sample_periodic(v, cell, pts)
    assert got[0] == pytest.approx(0 + 1.0, abs=1e-5)
    assert got[1] == pytest.approx(np.sin(2 * np.pi * 0.25) + np.cos(2 * np.pi * 0.25), abs=1e-5)
    assert got[2] == pytest.approx(np.sin(2 * np.pi * 0.125) + np.cos(2 * np.pi * 0.25), abs=0.05)


def test_unit_cell_average_equals_the_mean_over_translations_and_keeps_periodic_parts():
    rng = np.random.default_rng(3)
    # grid divisible by the repeats: the explicit mean over the 3 x 2 unit-cell translations
    v = rng.random((12, 10, 7)).astype(np.float32)
    explicit = np.mean([np.roll(v, (i * 4, j * 5), axis=(0, 1)) for i in range(3) for j in range(2)], axis=0)
    got = data.average_unit_cells(v, (3, 2))
    np.testing.assert_allclose(got, explicit, atol=1e-5)
    # any grid: a function periodic in the unit cell is unchanged, the rest is removed
    shape = (25, 19, 6)
    f = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), -1)
    periodic = 1 + np.cos(2 * np.pi * 5 * f[..., 0]) * np.sin(2 * np.pi * 3 * f[..., 1]) + f[..., 2]
    other = np.sin(2 * np.pi * 2 * f[..., 0]) + np.cos(2 * np.pi * f[..., 1])
    got = data.average_unit_cells(periodic + other, (5, 3))
    np.testing.assert_allclose(got, periodic, atol=1e-4)
    np.testing.assert_allclose(data.average_unit_cells(v, (1, 1)), v)
    # noise falls by about sqrt(number of unit cells)
    noise = rng.standard_normal((40, 30, 8)).astype(np.float32)
    assert data.average_unit_cells(noise, (5, 3)).std() == pytest.approx(noise.std() / np.sqrt(15), rel=0.1)


def test_unit_cell_repeats_only_for_pristine_rows():
    assert data.unit_cell_repeats({"defects": "pristine", "structure_size": "5x3"}) == (5, 3)
    assert data.unit_cell_repeats({"defects": "1 pair vacancy (top)", "structure_size": "5x3"}) == (1, 1)
    assert data.unit_cell_repeats({"defects": "pristine"}) == (1, 1)


@pytest.fixture(scope="module")
def toy_db(tmp_path_factory):
    pytest.importorskip("hydrolayer.descriptors")
    return make_synthetic_db(tmp_path_factory.mktemp("db"))


def test_split_by_simulation_and_named_holdouts(toy_db):
    from hydrolayer import store

    rows = list(store.iter_rows(toy_db))
    s1 = data.make_split(rows, seed=3)
    s2 = data.make_split(list(reversed(rows)), seed=3)
    assert s1 == s2  # seeded, independent of row order
    assert set(s1["named"]) == {"calcite-104 CO3 vacancy", "aragonite-010"}
    pool = s1["train"] + s1["val"] + s1["test"]
    assert len(pool) == len(set(pool)) == 5
    assert (len(s1["train"]), len(s1["val"]), len(s1["test"])) == (3, 1, 1)
    named = {u for v in s1["named"].values() for u in v}
    assert not named & set(pool)


def test_bank_windows_match_the_density_in_both_faces(toy_db, tmp_path):
    from hydrolayer import descriptors, store

    row = next(store.iter_rows(toy_db, surface="calcite-104", net_charge=0))
    bank = data.build_bank(toy_db, [row.unique_id], tmp_path / "cache", sigma_target=0.3)
    assert [e.interface.face for e in bank.entries] == ["top", "bottom"]
    d = store.load_density(toy_db, row)
    sm = [data.smooth_periodic(d[h], d["cell"], 0.3) for h in ("half1", "half2")]
    atoms = row.toatoms()
    heights = bank.heights()
    for i, e in enumerate(bank.entries):
        mx, my = 7, 13
        x, t = bank.window(i, mx, my)
        assert x.shape == (3, 32, 32, 64) and t.shape == (2, 32, 32, 64)
        # the cached descriptor is the descriptor of that window (up to the descriptor's own
        # 4-sigma Gaussian cutoff, which depends on where a window sits: <= 3e-4 of a peak)
        surf = atoms if e.interface.face == "top" else descriptors.mirror(atoms)
        ref = descriptors.describe_windows(surf, np.array([bank.offset(i, mx, my)]), sigma=e.meta["sigma"], face="top")[
            0
        ]
        np.testing.assert_allclose(x, ref, rtol=0, atol=2e-4 * ref.max())
        # the target is the smoothed density at the window points (mirrored back for the bottom)
        pts = bank.window_points(i, mx, my)[::5, ::7, ::9]
        if e.interface.face == "bottom":
            t_m = np.asarray(atoms.positions[0]) * [1, 1, -1]
            shift = descriptors.mirror(atoms).positions[0] - t_m
            pts = (pts - shift) * np.array([1, 1, -1])
        np.testing.assert_allclose(t[0][::5, ::7, ::9], data.sample_periodic(sm[0], d["cell"], pts), atol=1e-5)
        # physics of the pair: zero density in the slab, a peak 2.1 Å over an outer Ca
        mean = 0.5 * (t[0] + t[1])
        assert mean[:, :, heights < -1].mean() < 0.05
        k_ca = int(np.argmin(np.abs(heights - 0.0)))
        k_pk = int(np.argmin(np.abs(heights - PEAK_H)))
        ca_xy = np.unravel_index(np.argmax(x[2, :, :, k_ca]), (32, 32))
        assert mean[ca_xy[0], ca_xy[1], k_pk] > 1.5 * mean[:, :, k_pk].mean()


def test_bank_cache_is_reused(toy_db, tmp_path):
    from hydrolayer import store

    uid = next(store.iter_rows(toy_db)).unique_id
    data.build_bank(toy_db, [uid], tmp_path / "c")
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c").iterdir()}
    bank = data.build_bank(toy_db, [uid], tmp_path / "c")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c").iterdir()} == stamp
    assert len(bank) == 2


def test_plans_and_defect_mask(toy_db, tmp_path):
    from hydrolayer import store

    row = next(store.iter_rows(toy_db, net_charge=2))
    bank = data.build_bank(toy_db, [row.unique_id], tmp_path / "c")
    top = [i for i, e in enumerate(bank.entries) if e.interface.face == "top"][0]
    sites = np.asarray(bank.entries[top].meta["defect_sites"])
    assert sites.shape == (1, 3)
    plan = bank.centred_plan(top, sites)
    mask = bank.defect_mask(*plan[0], radius=3.0)
    pts = bank.window_points(*plan[0])
    assert mask.any()
    d = pts[mask] - sites[0]
    d[:, :2] -= np.round(d[:, :2] / [10.0, 15.0]) * [10.0, 15.0]  # minimum image in the 10 x 15 Å cell
    assert np.linalg.norm(d, axis=-1).max() <= 3.0 + 1e-9
    # centred: the mask sits in the middle of the window
    ii, jj, _ = np.nonzero(mask)
    assert abs(ii.mean() - 15.5) < 1.5 and abs(jj.mean() - 15.5) < 1.5
    bottom = 1 - top
    assert len(bank.entries[bottom].meta["defect_sites"]) == 0
    # the fixed grid covers the cell; random plans are seeded
    grid = bank.grid_plan()
    assert len(grid) == 2 * 1 * 2  # 10 x 15 Å cell: 1 x 2 windows per face
    a = bank.random_plan(np.random.default_rng(1), 4)
    b = bank.random_plan(np.random.default_rng(1), 4)
    assert a == b and len(a) == 8


def test_split_file_round_trip(tmp_path, toy_db):
    from hydrolayer import store
    from hydrolayer.util import InputError

    split = data.make_split(list(store.iter_rows(toy_db)), seed=0)
    p = data.save_split(split, tmp_path / "split.json")
    assert data.load_split(p) == json.loads(p.read_text())
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="bad.json"):
        data.load_split(tmp_path / "bad.json")


def test_classify_rows_for_calcite_and_calcite_plus_aragonite_models():
    from hydrolayer.data import classify_row

    c, ca = ("calcite-104",), ("calcite-104", "aragonite-010")
    rows = {
        "calcite pristine": ({"surface": "calcite-104", "defects": "pristine", "net_charge": 0}, "", ""),
        "calcite pairs": ({"surface": "calcite-104", "defects": "2 pair vacancies (top)", "net_charge": 0}, "", ""),
        "calcite CO3": (
            {"surface": "calcite-104", "defects": "CO3 vacancy (top)", "net_charge": 2},
            "calcite-104 CO3 vacancy",
            "calcite-104 CO3 vacancy",
        ),
        # a vacancy on each face (+-4 e, the single-vacancy training runs): the pool; on the top
        # face only (the named tests' form): held out
        "calcite CO3 both faces": (
            {"surface": "calcite-104", "defects": "CO3 vacancy (top); CO3 vacancy (bottom)", "net_charge": 4},
            "",
            "",
        ),
        "calcite Ca both faces": (
            {"surface": "calcite-104", "defects": "Ca vacancy (top); Ca vacancy (bottom)", "net_charge": -4},
            "",
            "",
        ),
        "calcite Ca": (
            {"surface": "calcite-104", "defects": "Ca vacancy (top)", "net_charge": -2},
            "calcite-104 Ca vacancy",
            "calcite-104 Ca vacancy",
        ),
        "aragonite (001) CO3 both faces": (
            {"surface": "aragonite-001", "defects": "CO3 vacancy (top); CO3 vacancy (bottom)", "net_charge": 4},
            "aragonite-001 CO3 vacancy",
            "aragonite-001 CO3 vacancy",
        ),
        # the paper's named pristine surfaces stay held out even when their facet is trained on
        "aragonite pristine": (
            {"surface": "aragonite-010", "defects": "pristine", "net_charge": 0},
            "aragonite-010",
            "aragonite-010",
        ),
        "aragonite pairs": (
            {"surface": "aragonite-010", "defects": "1 pair vacancy (top)", "net_charge": 0},
            "aragonite-010 pair vacancies",
            "",
        ),
        "vaterite": (
            {"surface": "vaterite-010", "defects": "pristine", "net_charge": 0},
            "vaterite-010",
            "vaterite-010",
        ),
    }
    for what, (row, for_c, for_ca) in rows.items():
        assert classify_row(row, c) == for_c, what
        assert classify_row(row, ca) == for_ca, what
