"""The pairs store and the phantom CT/histology pairs."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import scipy.ndimage as ndi

from vstain_dask.errors import InputError, OutputExistsError, VolumeFormatError
from vstain_dask.pairs import Material, Role, list_pairs, read_pair, write_pair
from vstain_dask.phantom import (
    PlaneKind,
    Tissue,
    material_mix,
    phantom_pair,
    phantom_pairs,
    write_phantom_pairs,
)
from vstain_dask.testing import small_pairs_store

BONE = (Tissue.CORTICAL_BONE, Tissue.TRABECULAR_BONE, Tissue.NEW_BONE)


def _images(shape=(20, 30)):
    rng = np.random.default_rng(0)
    ct = rng.integers(0, 65535, shape, dtype=np.uint16)
    hist = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    mask = rng.random(shape) > 0.5
    return ct, hist, mask


def _write(path, pair_id="p0", **kw):
    ct, hist, mask = _images()
    args = dict(ct=ct, histology=hist, mask=mask, material="mg", sample="s0", voxel_size=5.0)
    args.update(kw)
    return write_pair(path, pair_id, **args)


# ---------------------------------------------------------------- store


def test_round_trip(tmp_path):
    path = tmp_path / "pairs.zarr"
    ct, hist, mask = _images()
    write_pair(path, "a", ct=ct, histology=hist, mask=mask, material=Material.TI, sample="s1",
               voxel_size=2.5, role="val", attrs={"stain": "tb", "n": np.int64(3)})  # fmt: skip
    write_pair(path, "b", ct=ct, histology=hist, mask=mask, material="peek", sample="s1",
               voxel_size=2.5)  # fmt: skip
    root = json.loads((path / "zarr.json").read_text())
    assert root["attributes"]["vstain_pairs"] == {"version": 1}
    listed = list_pairs(path)
    assert [p["id"] for p in listed] == ["a", "b"]
    assert listed[0] | {} == {
        "id": "a",
        "material": "ti",
        "sample": "s1",
        "voxel_size": 2.5,
        "role": "val",
        "stain": "tb",
        "n": 3,
        "shape": (20, 30),
    }
    assert listed[1]["role"] is None
    got = read_pair(path, "a")
    np.testing.assert_array_equal(got["ct"][...], ct)
    np.testing.assert_array_equal(got["histology"][...], hist)
    np.testing.assert_array_equal(got["mask"][...], mask)
    assert got["ct"].dtype == np.uint16 and got["histology"].dtype == np.uint8
    assert got["mask"].dtype == np.bool_
    assert got["attrs"]["material"] == "ti"


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"material": "steel bolt"}, r"material must be a name of .* got 'steel bolt'"),
        ({"role": "holdout"}, "role must be one of 'train', 'val', 'test' or None"),
        ({"ct": np.zeros((20, 31), np.uint16)}, r"same \(Y, X\) shape.*ct \(20, 31\)"),
        ({"mask": np.zeros((19, 30), bool)}, r"same \(Y, X\) shape.*mask \(19, 30\)"),
        ({"histology": np.zeros((20, 30), np.uint8)}, r"histology must be a \(Y, X, 3\)"),
        ({"ct": np.zeros((20, 30), np.float32)}, "ct must be uint16, got float32"),
        ({"histology": np.zeros((20, 30, 3), np.uint16)}, "histology must be uint8"),
        ({"mask": np.full((20, 30), 2, np.uint8)}, "mask must be bool"),
        ({"voxel_size": -1}, "voxel_size must be a positive number"),
        ({"sample": ""}, "sample must be a non-empty string"),
        ({"attrs": {"material": "ti"}}, "attrs must not set material"),
    ],
)
def test_write_pair_rejects_bad_input(tmp_path, kw, message):
    with pytest.raises(InputError, match=message):
        _write(tmp_path / "pairs.zarr", **kw)


def test_bad_pair_id(tmp_path):
    with pytest.raises(InputError, match="pair_id must be a name"):
        _write(tmp_path / "pairs.zarr", pair_id="a/b")


def test_existing_pair_and_overwrite(tmp_path):
    path = tmp_path / "pairs.zarr"
    _write(path, material="mg")
    with pytest.raises(OutputExistsError, match="pair 'p0' already exists"):
        _write(path, material="ti")
    _write(path, material="ti", overwrite=True)
    assert [p["material"] for p in list_pairs(path)] == ["ti"]


def test_integer_mask_and_uint8_ct_are_accepted(tmp_path):
    path = tmp_path / "pairs.zarr"
    ct, hist, mask = _images()
    write_pair(path, "a", ct=ct.astype(np.uint8), histology=hist, mask=mask.astype(np.uint8),
               material="mg", sample="s", voxel_size=5)  # fmt: skip
    got = read_pair(path, "a")
    assert got["ct"].dtype == np.uint16 and got["mask"].dtype == np.bool_


def test_not_a_pairs_store(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(VolumeFormatError, match="not a pairs store"):
        list_pairs(tmp_path / "other.zarr")
    with pytest.raises(VolumeFormatError, match="not a pairs store"):
        _write(tmp_path / "other.zarr")
    with pytest.raises(VolumeFormatError, match="does not exist"):
        list_pairs(tmp_path / "missing.zarr")


def test_read_unknown_pair_lists_ids(tmp_path):
    path = tmp_path / "pairs.zarr"
    _write(path, pair_id="x1")
    with pytest.raises(InputError, match="no pair 'x2'.*it holds: x1"):
        read_pair(path, "x2")


def test_enums():
    assert [m.value for m in Material] == ["mg", "ti", "peek"]
    assert [r.value for r in Role] == ["train", "val", "test"]
    assert Material("mg") is Material.MG and isinstance(Material.MG, str)


# ---------------------------------------------------------------- material mix and the store


@pytest.mark.parametrize(
    "n, expected", [(10, (7, 1, 2)), (20, (14, 2, 4)), (12, (9, 1, 2)), (1, (1, 0, 0))]
)
def test_material_mix(n, expected):
    counts = Counter(material_mix(n))
    assert (counts[Material.MG], counts[Material.TI], counts[Material.PEEK]) == expected


def test_material_mix_is_proportional():
    for n in range(1, 40):
        counts = Counter(material_mix(n))
        assert sum(counts.values()) == n
        for m, w in ((Material.MG, 0.7), (Material.TI, 0.1), (Material.PEEK, 0.2)):
            assert abs(counts[m] - w * n) < 1.0


def test_phantom_pairs_store(tmp_path):
    path = write_phantom_pairs(tmp_path / "pairs.zarr", n=10, seed=3, size=(48, 64))
    pairs = list_pairs(path)
    assert len(pairs) == 10
    counts = Counter(p["material"] for p in pairs)
    assert counts == {"mg": 7, "ti": 1, "peek": 2}
    samples = Counter(p["sample"] for p in pairs)
    assert max(samples.values()) == 2  # two sections per sample
    for p in pairs:
        assert p["role"] is None and p["voxel_size"] == 5.0 and p["shape"] == (48, 64)
        assert p["sample"].startswith(p["material"])
        assert p["generator"] == "vstain_dask.phantom" and p["pairs_seed"] == 3
        assert p["plane"] in {k.value for k in PlaneKind}
        got = read_pair(path, p["id"])
        assert got["ct"].dtype == np.uint16 and got["ct"].shape == (48, 64)
        assert got["histology"].shape == (48, 64, 3) and got["histology"].dtype == np.uint8
        assert got["mask"].dtype == np.bool_ and got["mask"][...].any()
    # a sample's sections share the material
    by_sample = {}
    for p in pairs:
        by_sample.setdefault(p["sample"], set()).add(p["material"])
    assert all(len(v) == 1 for v in by_sample.values())


def test_phantom_pairs_deterministic(tmp_path):
    a = small_pairs_store(tmp_path, n=3, size=(40, 40), seed=5, name="a.zarr")
    b = small_pairs_store(tmp_path, n=3, size=(40, 40), seed=5, name="b.zarr")
    c = small_pairs_store(tmp_path, n=3, size=(40, 40), seed=6, name="c.zarr")
    for pa, pb, pc in zip(list_pairs(a), list_pairs(b), list_pairs(c), strict=True):
        ra, rb, rc = read_pair(a, pa["id"]), read_pair(b, pb["id"]), read_pair(c, pc["id"])
        for k in ("ct", "histology", "mask"):
            np.testing.assert_array_equal(ra[k][...], rb[k][...])
        assert not np.array_equal(ra["histology"][...], rc["histology"][...])


def test_write_phantom_pairs_existing(tmp_path):
    path = small_pairs_store(tmp_path, n=1, size=(32, 32))
    with pytest.raises(OutputExistsError, match="already exists"):
        write_phantom_pairs(path, n=1, seed=0, size=(32, 32))
    write_phantom_pairs(path, n=2, seed=0, size=(32, 32), overwrite=True)
    assert len(list_pairs(path)) == 2
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not a zarr store"):
        write_phantom_pairs(tmp_path / "notes.txt", n=1, seed=0, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_phantom_pairs_is_lazy_iterator():
    it = phantom_pairs(n=50, seed=0, size=(32, 32))
    first = next(it)
    assert {"id", "material", "sample", "ct", "histology", "mask", "attrs"} <= set(first)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"size": (8, 64)}, "size must be at least 16"),
        ({"size": (64,)}, "size must be 2 positive integers"),
        ({"plane": "diagonal"}, "plane must be one of 'longitudinal', 'oblique', 'axial'"),
        ({"material": "gold"}, "material must be one of 'mg', 'ti', 'peek'"),
        ({"seed": -3}, "seed must be an integer"),
    ],
)
def test_phantom_pair_bad_arguments(kw, message):
    args = {"size": (32, 32), "material": "mg", "seed": 0}
    args.update(kw)
    with pytest.raises(InputError, match=message):
        phantom_pair(**args)


# ---------------------------------------------------------------- what a pair looks like


@pytest.fixture(scope="module")
def pairs():
    """Longitudinal sections of each material at 160², plus an axial one."""
    out = {m: phantom_pair(size=(160, 160), material=m, seed=21, plane="longitudinal")
           for m in ("mg", "ti", "peek")}  # fmt: skip
    out["axial"] = phantom_pair(size=(160, 160), material="ti", seed=22, plane="axial")
    return out


def _rgb(pair, label, erode=2):
    m = ndi.binary_erosion(pair["histology_labels"] == label, iterations=erode)
    assert m.sum() > 10, f"too few pixels of {Tissue(label).name}"
    return pair["histology"][m].astype(float).mean(axis=0)


def test_pair_shapes_and_types(pairs):
    p = pairs["mg"]
    assert p["ct"].shape == (160, 160) and p["ct"].dtype == np.uint16
    assert p["histology"].shape == (160, 160, 3) and p["histology"].dtype == np.uint8
    assert p["mask"].dtype == np.bool_ and p["labels"].dtype == np.uint8
    assert p["displacement"].shape == (2, 160, 160)
    assert p["attrs"]["plane"] == "longitudinal"


@pytest.mark.parametrize("material", ["mg", "ti", "peek"])
def test_histology_colours(pairs, material):
    p = pairs[material]
    screw = _rgb(p, Tissue.SCREW)
    assert screw.max() < 60  # opaque implant: black
    background = _rgb(p, Tissue.EMBEDDING, erode=4)
    assert background.min() > 200  # resin and glass: white
    mature = _rgb(p, Tissue.CORTICAL_BONE)
    # light purple / violet: red and blue above green, well lit
    assert mature[0] > mature[1] and mature[2] > mature[1] and mature.mean() > 120
    new = _rgb(p, Tissue.NEW_BONE, erode=1)
    # new woven bone: bluer and darker than mature bone
    assert new[2] - new[0] > mature[2] - mature[0] + 30
    assert new.mean() < mature.mean()
    soft = _rgb(p, Tissue.SOFT_TISSUE, erode=1)
    assert soft[2] > soft[0]  # blue-tinted
    if material == "mg":
        layer = _rgb(p, Tissue.DEGRADATION, erode=1)
        assert screw.mean() < layer.mean() < mature.mean()


def test_ct_intensities_in_pairs(pairs):
    for m, p in pairs.items():
        ct, lab = p["ct"], p["labels"]

        def med(t, lab=lab, ct=ct):
            sel = ndi.binary_erosion(lab == t, iterations=2)
            return np.median(ct[sel])

        assert med(Tissue.EMBEDDING) < med(Tissue.CORTICAL_BONE)
        if m == "ti" or m == "axial":
            assert med(Tissue.SCREW) > med(Tissue.CORTICAL_BONE)
        if m == "peek":
            assert med(Tissue.SCREW) < med(Tissue.CORTICAL_BONE)


def test_mask_is_convex_and_contains_bone(pairs):
    from skimage.morphology import convex_hull_image

    for p in pairs.values():
        mask = p["mask"]
        # convex: the hull adds only discretization slivers, and rows and columns are runs
        hull = convex_hull_image(mask)
        boundary = (mask & ~ndi.binary_erosion(mask)).sum()
        assert (hull & ~mask).sum() <= 0.5 * boundary
        for line in (*mask, *mask.T):
            idx = np.flatnonzero(line)
            assert idx.size == 0 or idx[-1] - idx[0] + 1 == idx.size
        fg = np.isin(p["labels"], (*BONE, Tissue.SCREW))
        assert mask[fg].all()
        assert 0.05 < mask.mean() < 1.0


def test_misalignment_small_but_nonzero(pairs):
    for p in pairs.values():
        shift = np.hypot(*p["displacement"])
        assert 0.3 < shift.max() < 0.05 * 160
        assert p["attrs"]["max_misalignment_px"] == pytest.approx(shift.max(), abs=1e-3)
        agree = (p["labels"] == p["histology_labels"]).mean()
        assert 0.75 < agree < 1.0


def test_colour_varies_between_sessions():
    means = []
    for seed in (1, 2, 3):
        p = phantom_pair(size=(96, 96), material="ti", seed=seed, sample_seed=0, plane="axial")
        m = np.isin(p["histology_labels"], (Tissue.CORTICAL_BONE, Tissue.TRABECULAR_BONE))
        means.append(p["histology"][m].astype(float).mean(axis=0))
    spread = np.ptp(np.array(means), axis=0)
    assert spread.max() > 5


def test_same_sample_same_scan_levels():
    """Sections of one sample share its scan: CT grey levels agree; other samples differ."""

    def bg(p):
        return np.median(p["ct"][ndi.binary_erosion(p["labels"] == Tissue.EMBEDDING, iterations=3)])

    a = phantom_pair(size=(96, 96), material="mg", seed=1, sample_seed=9)
    b = phantom_pair(size=(96, 96), material="mg", seed=2, sample_seed=9)
    c = phantom_pair(size=(96, 96), material="mg", seed=1, sample_seed=10)
    assert abs(bg(a) - bg(b)) < 300
    assert abs(bg(a) - bg(c)) > 300
