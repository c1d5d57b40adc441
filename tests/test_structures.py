import dataclasses
import json

import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list

from hydrolayer import structures as S
from hydrolayer.util import InputError

SMALL = {  # (size, layers) small enough for a quick test, big enough for two ions per face layer
    "calcite-104": ((2, 1), 3),
    "aragonite-010": ((2, 2), 3),
    "aragonite-001": ((2, 1), 3),
    "vaterite-010": ((1, 1), 2),
    "magnesite-104": ((2, 1), 3),
}


@pytest.fixture(scope="module", params=sorted(S.SURFACES))
def slab(request):
    size, layers = SMALL[request.param]
    return S.build_surface(request.param, size=size, layers=layers)


def _pairs(atoms, a, b, cutoff=3.0):
    sym = np.array(atoms.get_chemical_symbols())
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    return d[np.isin(sym[i], a) & np.isin(sym[j], b)]


def test_every_surface_stoichiometric_neutral(slab):
    sym = slab.get_chemical_symbols()
    ncat = sum(s in ("Ca", "Mg") for s in sym)
    assert ncat == sym.count("C") and sym.count("O") == 3 * sym.count("C") > 0
    assert slab.info["net_charge"] == 0
    assert len(S.find_carbonates(slab)) == sym.count("C")  # no carbonate cut by the cell


def test_every_surface_bond_lengths(slab):
    co = _pairs(slab, ["C"], ["O"], 1.6)
    assert len(co) == 3 * slab.get_chemical_symbols().count("C")
    assert co.min() >= 1.26 and co.max() <= 1.32
    assert _pairs(slab, ["Ca", "Mg"], ["O"]).min() >= (2.2 if "Ca" in slab.symbols else 2.0)


def test_every_surface_geometry(slab):
    cell = slab.cell[:]
    assert np.allclose(cell[:2, 2], 0) and np.allclose(cell[2, :2], 0)  # normal along +z
    assert abs(cell[0] @ cell[1]) < 1e-6  # the named surfaces all have rectangular meshes
    z = slab.positions[:, 2]
    assert z.min() > 0 and z.max() < cell[2, 2]  # contiguous, gap above the top face
    assert slab.info["z_top"] > slab.info["z_bottom"]


def test_both_faces_same_termination(slab):
    """The two faces are related by a normal-reversing symmetry: per element, the set of
    heights about the slab centre is symmetric, and so is each face's outer layer."""
    centre = 0.5 * (slab.info["z_top"] + slab.info["z_bottom"])
    for el in set(slab.get_chemical_symbols()):
        h = np.sort(slab.positions[np.array(slab.get_chemical_symbols()) == el, 2] - centre)
        assert np.allclose(h, -h[::-1], atol=1e-4), el


def test_vaterite_space_group():
    import spglib

    v = S.bulk("vaterite")
    cell = (v.cell[:], v.get_scaled_positions(), v.numbers)
    assert spglib.get_spacegroup(cell, symprec=1e-3) == "P3_221 (154)"
    assert spglib.get_spacegroup(cell, symprec=0.05) == "P3_221 (154)"
    assert v.get_chemical_formula() == "C18Ca18O54"


def test_vaterite_surface_is_carbonate_terminated():
    s = S.build_surface("vaterite-010", size=(1, 1), layers=2)
    sym = np.array(s.get_chemical_symbols())
    z = s.positions[:, 2]
    assert sym[np.argmax(np.where(sym == "O", -np.inf, z))] == "C"  # highest ion centre is a carbonate
    assert sym[np.argmin(np.where(sym == "O", np.inf, z))] == "C"


@pytest.mark.parametrize("lattice", [{"a": 7.2109, "c": 24.9307}, {"a": 7.0, "c": 25.8}])
def test_vaterite_surface_at_other_lattices(lattice):
    """The force field's 300 K lattice (a 7.211, c 24.931 Å) and a strained one: the outer
    plane is a corrugated mixed Ca/CO3 plane (0.3 Å), carbonate within it on both faces."""
    s = S.build_surface("vaterite-010", size=(1, 1), layers=2, lattice=lattice)
    sym = np.array(s.get_chemical_symbols())
    z = s.positions[:, 2]
    c = sym == "C"
    assert z[c].max() >= z[sym == "Ca"].max() - 0.3 and z[c].min() <= z[sym == "Ca"].min() + 0.3
    assert s.get_chemical_formula() == "C36Ca36O108"
    assert np.allclose(np.sort(z - z.mean()), np.sort(-(z - z.mean())), atol=1e-6)  # symmetric faces


@pytest.mark.parametrize("name", ["calcite", "aragonite", "magnesite", "vaterite"])
def test_bulk_distances(name):
    b = S.bulk(name)
    co = _pairs(b, ["C"], ["O"], 1.6)
    assert co.min() >= 1.26 and co.max() <= 1.32
    assert _pairs(b, ["Ca", "Mg"], ["O"]).min() >= (2.2 if name != "magnesite" else 2.0)


def test_calcite_layer_spacing():
    s = S.build_surface("calcite-104", size=(1, 1), layers=5)
    zca = np.unique(np.round(s.positions[np.array(s.get_chemical_symbols()) == "Ca", 2], 2))
    assert len(zca) == 5
    assert np.allclose(np.diff(zca), 3.03, atol=0.02)


def test_lattice_argument_strains_the_slab():
    s0 = S.build_surface("calcite-104", size=(1, 1), layers=2)
    s1 = S.build_surface("calcite-104", size=(1, 1), layers=2, lattice={"a": 4.937, "c": 17.21})
    assert s1.cell[0, 0] < s0.cell[0, 0]
    assert s1.info["lattice"] != s0.info["lattice"]
    with pytest.raises(ValueError, match="lattice parameter .b. is not one of"):
        S.build_surface("calcite-104", lattice={"b": 5.0})


def test_supercell_and_layers_scale():
    a = S.build_surface("calcite-104", size=(1, 1), layers=2)
    b = S.build_surface("calcite-104", size=(3, 2), layers=4)
    assert len(b) == len(a) * 6 * 2
    assert np.allclose(b.cell[0], 3 * a.cell[0]) and np.allclose(b.cell[1], 2 * a.cell[1])


def test_pair_vacancies_counts_neutral_reproducible():
    kw = dict(size=(4, 2), layers=3, pair_vacancies=2, seed=7)
    s = S.build_surface("calcite-104", **kw)
    p = S.build_surface("calcite-104", size=(4, 2), layers=3)
    assert len(p) - len(s) == 2 * (1 + 4)
    assert s.info["net_charge"] == 0
    sym = s.get_chemical_symbols()
    assert sym.count("Ca") == sym.count("C")
    assert np.array_equal(s.positions, S.build_surface("calcite-104", **kw).positions)
    other = S.build_surface("calcite-104", **{**kw, "seed": 8})
    assert not (len(other) == len(s) and np.allclose(other.positions, s.positions))
    sites = S.defect_sites(s)
    assert len(sites) == 4 and {x.species for x in sites} == {"Ca", "CO3"}
    assert all(abs(x.position[2] - s.info["z_top"]) < 1.0 for x in sites)  # outermost layer


def test_pair_vacancies_both_faces():
    s = S.build_surface("calcite-104", size=(4, 2), layers=3, pair_vacancies=1, both_faces=True, seed=1)
    faces = [x.face for x in S.defect_sites(s)]
    assert faces.count("top") == 2 and faces.count("bottom") == 2
    assert s.info["net_charge"] == 0


@pytest.mark.parametrize("species,charge", [("Ca", -2), ("CO3", +2)])
def test_single_vacancy_is_charged(species, charge):
    s = S.build_surface("calcite-104", size=(3, 2), vacancy=species, seed=3)
    assert s.info["net_charge"] == charge
    (site,) = S.defect_sites(s)
    assert site.species == species
    p = S.build_surface("calcite-104", size=(3, 2))
    assert len(p) - len(s) == (1 if species == "Ca" else 4)


def test_aragonite_010_pairs_come_from_the_ions_facing_the_water():
    # the outermost carbonate plane sits ~1.2 Å above the outermost Ca plane on this facet:
    # the layer is both planes, one Ca per carbonate (it used to find 0 cations)
    p = S.build_surface("aragonite-010", size=(5, 4), layers=3)
    for face, sign in (("top", 1), ("bottom", -1)):
        layer = S.top_layer_units(p, face)
        assert len(layer["cation"]) == len(layer["CO3"]) == 20
        z_ca = sign * p.positions[layer["cation"], 2]
        z_c = sign * p.positions[[c for c, _ in layer["CO3"]], 2]
        assert 1.0 < z_c.mean() - z_ca.mean() < 1.5
        # no other cation between the layer's cations and the carbonates above them
        z_all = sign * p.positions[p.numbers == 20, 2]
        assert (z_all >= z_ca.min() - 1e-6).sum() == 20
    s = S.build_surface("aragonite-010", size=(5, 4), layers=3, pair_vacancies=6, both_faces=True, seed=1)
    assert len(p) - len(s) == 2 * 6 * 5 and s.info["net_charge"] == 0
    assert {x.species for x in S.defect_sites(s)} == {"Ca", "CO3"}


def _mean_pair_distance(s, face="top"):
    xy = np.array([x.position[:2] for x in S.defect_sites(s) if x.face == face])
    cell2 = s.cell[:2, :2]
    f = (xy[:, None] - xy[None]) @ np.linalg.inv(cell2)
    f -= np.round(f)
    d = np.linalg.norm(f @ cell2, axis=-1)
    return d[np.triu_indices(len(xy), 1)].mean(), d


def test_pair_placement_adjacent_and_separated():
    kw = dict(size=(5, 3), layers=4, pair_vacancies=4, both_faces=True)
    spread = {}
    for placement in ("adjacent", "separated"):
        runs = [S.build_surface("calcite-104", seed=seed, placement=placement, **kw) for seed in (1, 2, 3)]
        for s in runs:
            assert s.info["net_charge"] == 0 and len(s) == 600 - 2 * 4 * 5
            assert placement in s.info["defects"]
        spread[placement] = np.mean([_mean_pair_distance(s)[0] for s in runs])
        if placement == "separated":
            # every removed Ca has a removed carbonate as its nearest removed neighbour's partner:
            # nearest-neighbour pairs (Ca-C in-plane distance of calcite (10-14) about 3.2-4.1 Å)
            for s in runs:
                sites = [x for x in S.defect_sites(s) if x.face == "top"]
                ca = np.array([x.position[:2] for x in sites if x.species == "Ca"])
                c = np.array([x.position[:2] for x in sites if x.species == "CO3"])
                cell2 = s.cell[:2, :2]
                f = (ca[:, None] - c[None]) @ np.linalg.inv(cell2)
                f -= np.round(f)
                assert np.linalg.norm(f @ cell2, axis=-1).min(axis=1).max() < 4.2
    # the pit is compact, the separated pairs far apart (random placement lies between)
    assert spread["adjacent"] < 6.0 < 9.0 < spread["separated"]
    with pytest.raises(InputError, match="placement"):
        S.build_surface("calcite-104", size=(2, 2), pair_vacancies=1, placement="clustered")


def test_too_many_pair_vacancies():
    with pytest.raises(InputError, match="cannot remove 9 pairs"):
        S.build_surface("calcite-104", size=(2, 2), layers=2, pair_vacancies=9)


def test_enumerate_pair_vacancies_up_to_translation():
    s = S.build_surface("calcite-104", size=(2, 2), layers=2)
    reps = S.enumerate_pair_vacancies(s, 1)
    # 8 Ca x 8 CO3 sites in the top layer; the 4 lattice translations of the 2x2 cell map
    # the layer onto itself (the two ions of a surface cell are related by a glide, not a
    # translation): 64 / 4 = 16 classes
    assert len(reps) == 16
    # every configuration is a translate of exactly one representative: the classes
    # partition the 16 configurations, and distinct representatives give distinct slabs
    lattice_shifts = [i * s.cell[0] / 2 + j * s.cell[1] / 2 for i in (0, 1) for j in (0, 1)]
    seen = []
    for ci, oi in reps:
        d = S.add_pair_vacancies(s, 1, sites=(ci, oi))
        seen.append(np.array([x.position for x in S.defect_sites(d)]))
    for a in range(len(seen)):
        for b in range(a):  # no representative is a lattice translate of another
            for t in lattice_shifts:
                diff = seen[a] + t - seen[b]
                diff[:, :2] = np.mod(diff[:, :2] + 0.1, [s.cell[0, 0], s.cell[1, 1]]) - 0.1
                assert np.abs(diff).max() > 0.05
    big = S.build_surface("calcite-104", size=(5, 3), layers=2)
    sampled = S.enumerate_pair_vacancies(big, 3, max_count=20, seed=1)
    assert len(sampled) == 20 and len(set(sampled)) == 20


def test_water_is_recognised():
    s = S.build_surface("calcite-104", size=(2, 1), layers=2)
    w = Atoms("OH2", positions=[[0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]])
    w.positions += [2.0, 2.0, s.info["z_top"] + 3.0]
    wet = s + w
    assert S.find_waters(wet) == [(len(s), len(s) + 1, len(s) + 2)]
    assert S.water_mask(wet).sum() == 3


def test_read_structure_roundtrip(tmp_path):
    s = S.build_surface("calcite-104", size=(2, 1), layers=2, pair_vacancies=1, seed=2)
    for ext in ("extxyz", "cif", "vasp", "xyz"):
        path = tmp_path / f"slab.{ext}"
        if ext == "xyz":
            S.write_structure(s, path, format="extxyz")
        else:
            S.write_structure(s, path)
        back = S.read_structure(path)
        assert len(back) == len(s)
    back = S.read_structure(tmp_path / "slab.extxyz")
    assert back.info["defects"] == s.info["defects"] and S.defect_sites(back) == S.defect_sites(s)


BAD = {
    "unknown format": ("slab.qqq", "hello\n", "unknown structure format"),
    "garbled": ("slab.extxyz", "12\nthis is not\n Ca 0 0\n", "cannot read structure"),
    "empty file": ("slab.cif", "", "empty file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_read_structure_bad_files(tmp_path, case):
    name, text, msg = BAD[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=msg) as err:
        S.read_structure(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def _write(tmp_path, atoms, name="s.extxyz"):
    path = tmp_path / name
    atoms.write(path)
    return path


def test_read_structure_bad_content(tmp_path):
    s = S.build_surface("calcite-104", size=(2, 1), layers=2)
    nocell = s.copy()
    nocell.pbc = False
    nocell.cell = None
    with pytest.raises(InputError, match="no periodic lateral cell"):
        S.read_structure(_write(tmp_path, nocell, "a.xyz"))
    bad = s.copy()
    bad[0].symbol = "Fe"
    bad[1].symbol = "U"
    with pytest.raises(InputError, match="unsupported elements Fe, U"):
        S.read_structure(_write(tmp_path, bad, "b.extxyz"))
    over = s + Atoms("O", positions=[s.positions[0] + [0.3, 0, 0]])
    with pytest.raises(InputError, match="overlapping atoms"):
        S.read_structure(_write(tmp_path, over, "c.extxyz"))
    bulkish = s.copy()
    bulkish.cell[2, 2] = s.positions[:, 2].max() - s.positions[:, 2].min() + 2.5
    bulkish.positions[:, 2] -= s.positions[:, 2].min() - 1.0
    with pytest.raises(InputError, match="not a slab"):
        S.read_structure(_write(tmp_path, bulkish, "d.extxyz"))


# ----------------------------------------------------------------------------- defect sites
def test_defect_site_record_and_stored_format():
    s = S.build_surface("calcite-104", size=(3, 2), layers=2, pair_vacancies=1, both_faces=True, seed=4)
    sites = S.defect_sites(s)
    assert all(isinstance(x, S.DefectSite) for x in sites) and len(sites) == 4
    # the stored form is unchanged: a JSON string of dicts with exactly these keys, in this order
    raw = json.loads(s.info["defect_sites"])
    assert [list(d) for d in raw] == [["species", "position", "face"]] * 4
    assert [x.to_dict() for x in sites] == raw
    assert s.info["defect_sites"] == json.dumps(raw)
    assert [S.DefectSite.from_dict(d) for d in raw] == sites
    # an already parsed list (a database row's data) reads the same as the JSON string
    assert S.parse_defect_sites(raw) == sites
    site = sites[0]
    assert site.mirrored().mirrored() == site and site.mirrored().face != site.face
    assert site.shifted([1.0, 0.0, -2.0]).position == (site.position[0] + 1.0, site.position[1], site.position[2] - 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        site.face = "bottom"


BAD_SITES = {  # info["defect_sites"] -> the problem the one-line error must name
    "positions (JSON)": ("[[1.0, 2.0, 20.0], [3.0, 4.0, 20.0]]", "item 0: [1.0, 2.0, 20.0] is not a record"),
    "positions (array)": (np.array([[1.0, 2.0, 20.0]]), "an array of numbers"),
    "not JSON": ("Ca at the top", "is not JSON"),
    "a number": (3, "not a list of records"),
    "missing key": ('[{"species": "Ca", "position": [1, 2, 20]}]', "missing key(s) face"),
    "extra key": ('[{"species": "Ca", "position": [1, 2, 20], "face": "top", "xyz": 1}]', "unexpected key(s) xyz"),
    "species": ('[{"species": "Na", "position": [1, 2, 20], "face": "top"}]', "unknown species 'Na'"),
    "face": ('[{"species": "Ca", "position": [1, 2, 20], "face": "up"}]', "unknown face 'up'"),
    "position": ('[{"species": "Ca", "position": [1, 2], "face": "top"}]', "not three finite numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_SITES))
def test_bad_defect_sites_are_one_line_input_errors(tmp_path, case):
    value, msg = BAD_SITES[case]
    s = S.build_surface("calcite-104", size=(2, 1), layers=2)
    s.info["defect_sites"] = value
    path = _write(tmp_path, s)
    with pytest.raises(InputError) as err:
        S.read_structure(path)
    text = str(err.value)
    assert text.startswith(f"{path}: info defect_sites") and msg in text and "\n" not in text, text
    with pytest.raises(InputError, match="info defect_sites"):
        S.defect_sites(s)


@pytest.mark.parametrize(
    "key,value,msg",
    [
        ("frame_shift", "[1.0, 2.0]", "frame_shift must be three numbers"),
        ("z_top", "high", "z_top must be a number"),
        ("net_charge", "plus two", "net_charge must be a number"),
        ("surface", 104, "surface must be a name"),
    ],
)
def test_other_parsed_info_is_checked_on_reading(tmp_path, key, value, msg):
    s = S.build_surface("calcite-104", size=(2, 1), layers=2)
    s.info[key] = value
    with pytest.raises(InputError, match=msg) as err:
        S.read_structure(_write(tmp_path, s))
    assert "\n" not in str(err.value)


def _hand_made_aragonite(tmp_path, defect_sites):
    """An aragonite (010) slab as a user would write it: geometry and one info key."""
    s = S.build_surface("aragonite-010", size=(2, 2), layers=3)
    a = Atoms(s.get_chemical_symbols(), positions=s.positions, cell=s.cell, pbc=True)
    a.info["defect_sites"] = defect_sites
    return _write(tmp_path, a, "hand-made.extxyz"), s.info["z_top"]


@pytest.mark.parametrize("form", ["json", "array"])
def test_simulate_refuses_a_plain_list_of_positions_before_any_md(tmp_path, capsys, monkeypatch, form):
    # found by a user: such a file ran 60 ps + 300 ps of MD, then died in simulate._finish
    # with "TypeError: list indices must be integers or slices, not str" and stored nothing
    from hydrolayer import cli, simulate

    def no_md(*args, **kwargs):
        raise AssertionError("MD started")

    for name in ("solvate", "prepare", "run_worker"):
        monkeypatch.setattr(simulate, name, no_md, raising=False)
    positions = [[1.0, 2.0, 20.0], [3.0, 4.0, 20.0]]
    path, _ = _hand_made_aragonite(tmp_path, json.dumps(positions) if form == "json" else positions)
    before = set(tmp_path.rglob("*"))
    code = cli.main(["simulate", str(path), "--db", str(tmp_path / "sims.db"), "--ps", "300", "--equil-ps", "60"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and str(path) in err[0] and "info defect_sites" in err[0] and "Traceback" not in err[0], err
    assert "record" in err[0] or "array of numbers" in err[0]
    assert set(tmp_path.rglob("*")) == before  # no database, no grids, no job folder


def test_prepare_checks_the_info_of_in_memory_atoms(tmp_path):
    from hydrolayer.simulate import SimulationParams, prepare

    s = S.build_surface("aragonite-010", size=(2, 2), layers=3)
    s.info["defect_sites"] = json.dumps([[1.0, 2.0, 20.0]])
    with pytest.raises(InputError, match="my-slab: info defect_sites item 0"):
        prepare(s, tmp_path / "job", SimulationParams(), source="my-slab")
    assert not (tmp_path / "job").exists()
