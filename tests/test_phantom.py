"""The synthetic bone-implant phantom: determinism, structure, intensities, writing."""

from __future__ import annotations

import time

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st

from vstain_dask.errors import InputError, OutputExistsError
from vstain_dask.phantom import GENERATOR_VERSION, Tissue, phantom_volume, write_phantom
from vstain_dask.testing import small_phantom, small_phantom_store

BONE = (Tissue.CORTICAL_BONE, Tissue.TRABECULAR_BONE, Tissue.NEW_BONE)
# big enough for every structure to be a few voxels wide, small enough to stay quick
MEDIUM = (40, 128, 128)


@pytest.fixture(scope="module")
def medium():
    """CT and labels of the three materials at MEDIUM, seed 4, as numpy."""
    out = {}
    for m in ("mg", "ti", "peek"):
        ct, lab = phantom_volume(MEDIUM, material=m, seed=4, chunks=(40, 64, 64))
        out[m] = da.compute(ct, lab)
    return out


def _interior(labels: np.ndarray, label: int, erode: int = 2) -> np.ndarray:
    """Voxels of ``label`` at least ``erode`` voxels away from other labels (no blur mixing)."""
    return ndi.binary_erosion(labels == label, iterations=erode)


# ---------------------------------------------------------------- laziness and determinism


def test_returns_lazy_arrays_with_requested_chunks():
    t0 = time.perf_counter()
    ct, labels = phantom_volume((1536, 1536, 1536), material="mg", seed=0, chunks=256)
    assert time.perf_counter() - t0 < 5.0  # graph only, nothing generated
    assert isinstance(ct, da.Array) and isinstance(labels, da.Array)
    assert ct.dtype == np.uint16 and labels.dtype == np.uint8
    assert ct.shape == labels.shape == (1536, 1536, 1536)
    assert ct.numblocks == labels.numblocks == (6, 6, 6)
    # chunks larger than the shape are clipped
    small, _ = phantom_volume((10, 14, 12), material="ti", seed=0, chunks=(64, 64, 64))
    assert small.chunksize == (10, 14, 12)


def test_same_seed_same_bytes_for_any_chunking():
    ref_ct, ref_lab = da.compute(*small_phantom((10, 14, 12), chunks=(10, 14, 12), seed=7))
    for chunks in [(5, 7, 6), (3, 4, 5), (1, 14, 2), (7, 1, 9)]:
        ct, lab = da.compute(*small_phantom((10, 14, 12), chunks=chunks, seed=7))
        np.testing.assert_array_equal(ct, ref_ct)
        np.testing.assert_array_equal(lab, ref_lab)


@pytest.mark.parametrize("material", ["mg", "ti", "peek"])
def test_one_chunk_alone_matches_other_chunking(material):
    """A block computed by itself equals the same region generated with other chunks."""
    shape = (1536, 1536, 1536)
    a_ct, a_lab = phantom_volume(shape, material=material, seed=11, chunks=64)
    b_ct, b_lab = phantom_volume(shape, material=material, seed=11, chunks=(40, 56, 72))
    # the block at the screw's entry through the near cortex: bone, screw, new bone
    blk = (8, 12, 15)
    region = tuple(slice(i * 64, (i + 1) * 64) for i in blk)
    got_ct, got_lab = da.compute(a_ct.blocks[blk], a_lab.blocks[blk])
    want_ct, want_lab = da.compute(b_ct[region], b_lab[region])
    np.testing.assert_array_equal(got_ct, want_ct)
    np.testing.assert_array_equal(got_lab, want_lab)
    assert {Tissue.SCREW, Tissue.CORTICAL_BONE} <= set(np.unique(got_lab).tolist())


@settings(max_examples=6, deadline=None)
@given(
    cz=st.integers(2, 10),
    cy=st.integers(3, 14),
    cx=st.integers(3, 12),
    material=st.sampled_from(["mg", "ti", "peek"]),
)
def test_chunking_invariance_property(cz, cy, cx, material):
    ref = da.compute(*small_phantom(chunks=(10, 14, 12), material=material, seed=2))
    got = da.compute(*small_phantom(chunks=(cz, cy, cx), material=material, seed=2))
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def test_medium_volume_chunking_invariance():
    shape = (24, 96, 96)
    ref = da.compute(*phantom_volume(shape, material="mg", seed=5, chunks=shape))
    got = da.compute(*phantom_volume(shape, material="mg", seed=5, chunks=(11, 41, 29)))
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def test_different_seeds_differ():
    a_ct, a_lab = da.compute(*phantom_volume((16, 64, 64), material="mg", seed=1, chunks=32))
    b_ct, b_lab = da.compute(*phantom_volume((16, 64, 64), material="mg", seed=2, chunks=32))
    assert (a_ct != b_ct).mean() > 0.5
    assert (a_lab != b_lab).mean() > 0.01


def test_same_seed_same_bone_for_every_material(medium):
    """The seed fixes the specimen; the material changes only the implant and its surroundings."""
    far = ~ndi.binary_dilation(medium["ti"][1] == Tissue.SCREW, iterations=12)
    for m in ("mg", "peek"):
        same = medium[m][1][far] == medium["ti"][1][far]
        assert same.mean() > 0.97


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("material", ["mg", "ti", "peek"])
def test_label_fractions(medium, material):
    _, lab = medium[material]
    frac = {t: float((lab == t).mean()) for t in Tissue}
    inside = 1.0 - frac[Tissue.AIR] - frac[Tissue.HOLDER]
    bone = sum(frac[t] for t in (*BONE, Tissue.LACUNA, Tissue.VESSEL)) / inside
    assert 0.05 < bone < 0.5
    assert frac[Tissue.AIR] > 0.1  # corners outside the holder tube
    assert frac[Tissue.HOLDER] > 0.01
    assert frac[Tissue.EMBEDDING] > 0.05
    assert frac[Tissue.SOFT_TISSUE] > 0.02
    assert 0.005 < frac[Tissue.SCREW] < 0.2
    assert frac[Tissue.TRABECULAR_BONE] > 0.002
    assert frac[Tissue.NEW_BONE] > 0.001
    assert frac[Tissue.LACUNA] > 0.0005
    if material == "mg":
        assert frac[Tissue.DEGRADATION] > 0.002
    else:
        assert frac[Tissue.DEGRADATION] == 0.0


def test_screw_runs_along_z(medium):
    _, lab = medium["ti"]
    screw = lab == Tissue.SCREW
    # present on every z-slice (head above, shaft below, the tip beyond this slab) ...
    assert screw.any(axis=(1, 2)).all()
    # ... and centred in-plane
    yy, xx = np.nonzero(screw.any(axis=0))
    assert abs(yy.mean() - MEDIUM[1] / 2) < 8 and abs(xx.mean() - MEDIUM[2] / 2) < 8


def test_new_bone_next_to_implant(medium):
    _, lab = medium["ti"]
    near = ndi.binary_dilation(lab == Tissue.SCREW, iterations=6)
    new = lab == Tissue.NEW_BONE
    assert (new & near).sum() > 0.8 * new.sum()


def test_degradation_layer_wraps_mg_screw(medium):
    _, lab = medium["mg"]
    shell = ndi.binary_dilation(lab == Tissue.SCREW, iterations=2) & ~(lab == Tissue.SCREW)
    # the residual screw is mostly wrapped by the layer, not in direct contact with bone
    assert (lab[shell] == Tissue.DEGRADATION).mean() > 0.4


def test_geometry_scales_with_field_of_view():
    """Small test volumes show the same layout shrunk; large ones are physical."""
    for shape in [(10, 14, 12), (32, 48, 48)]:
        lab = small_phantom(shape, chunks=shape, material="ti", seed=0)[1].compute()
        present = set(np.unique(lab).tolist())
        assert {Tissue.AIR, Tissue.HOLDER, Tissue.SCREW, Tissue.CORTICAL_BONE} <= present


# ---------------------------------------------------------------- intensities


def _median(ct, lab, label, erode=2):
    m = _interior(lab, label, erode)
    assert m.sum() > 20, f"too few interior voxels of {Tissue(label).name}"
    return float(np.median(ct[m]))


def test_screw_attenuation_by_material(medium):
    bone, screw = {}, {}
    for m in ("mg", "ti", "peek"):
        ct, lab = medium[m]
        bone[m] = _median(ct, lab, Tissue.CORTICAL_BONE)
        screw[m] = _median(ct, lab, Tissue.SCREW)
        background = _median(ct, lab, Tissue.EMBEDDING)
        contrast = bone[m] - background
        if m == "peek":
            assert background < screw[m] < bone[m] - 0.4 * contrast
        elif m == "mg":
            assert abs(screw[m] - bone[m]) < 0.15 * contrast
        else:
            assert screw[m] > bone[m] + contrast


def test_tissue_intensity_ordering(medium):
    ct, lab = medium["ti"]
    med = {
        t: _median(ct, lab, t, erode=1 if t == Tissue.NEW_BONE else 2)
        for t in (
            Tissue.AIR,
            Tissue.EMBEDDING,
            Tissue.SOFT_TISSUE,
            Tissue.NEW_BONE,
            Tissue.CORTICAL_BONE,
        )
    }
    assert med[Tissue.AIR] < med[Tissue.EMBEDDING] < med[Tissue.SOFT_TISSUE]
    assert med[Tissue.SOFT_TISSUE] < med[Tissue.NEW_BONE] < med[Tissue.CORTICAL_BONE]
    assert min(med.values()) == med[Tissue.AIR]


def test_mg_degradation_layer_differs_from_residual_metal(medium):
    ct, lab = medium["mg"]
    layer = ct[ndi.binary_erosion(lab == Tissue.DEGRADATION, iterations=1)]
    metal = _median(ct, lab, Tissue.SCREW)
    bone = _median(ct, lab, Tissue.CORTICAL_BONE)
    background = _median(ct, lab, Tissue.EMBEDDING)
    assert layer.size > 20
    assert 0.05 * (bone - background) < metal - np.median(layer) < 0.6 * (bone - background)


def test_scan_scale_and_offset_vary_with_seed():
    levels = []
    for seed in (0, 1, 2):
        ct, lab = da.compute(*phantom_volume((16, 96, 96), material="ti", seed=seed, chunks=48))
        levels.append((_median(ct, lab, Tissue.EMBEDDING), _median(ct, lab, Tissue.CORTICAL_BONE)))
    backgrounds = [b for b, _ in levels]
    contrasts = [c - b for b, c in levels]
    assert max(backgrounds) - min(backgrounds) > 500
    assert max(contrasts) / min(contrasts) > 1.05


def test_noise_and_blur(medium):
    ct, lab = medium["ti"]
    m = _interior(lab, Tissue.EMBEDDING, 3)
    bone = _median(ct, lab, Tissue.CORTICAL_BONE)
    sd = ct[m].std()
    assert 0.01 * bone < sd < 0.2 * bone  # noisy, but bone is far above the noise
    # the PSF softens edges: some voxels at the screw boundary lie between the two levels
    edge = ndi.binary_dilation(lab == Tissue.SCREW) & ~ndi.binary_erosion(lab == Tissue.SCREW)
    assert np.median(ct[edge]) < _median(ct, lab, Tissue.SCREW)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shape": (10, 14)}, "shape must be 3 positive integers"),
        ({"shape": (10, 0, 12)}, "shape must be 3 positive integers"),
        ({"shape": (10, 14, 12.5)}, "shape must be 3 positive integers"),
        ({"material": "fe"}, "material must be one of 'mg', 'ti', 'peek', got 'fe'"),
        ({"seed": -1}, "seed must be an integer"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"voxel_size": 0}, "voxel_size must be a positive number"),
        ({"voxel_size": float("nan")}, "voxel_size must be a positive number"),
        ({"chunks": (5, 0, 6)}, "chunks must be 3 positive integers"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"shape": (10, 14, 12), "material": "mg", "seed": 0, "chunks": (5, 7, 6)}
    args.update(kwargs)
    shape = args.pop("shape")
    with pytest.raises(InputError, match=message):
        phantom_volume(shape, **args)


def test_material_accepts_enum_and_case():
    from vstain_dask.pairs import Material

    a = small_phantom(material=Material.TI, seed=1)[0].compute()
    b = phantom_volume((10, 14, 12), material="TI", seed=1, chunks=(5, 7, 6))[0].compute()
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- writing


def test_write_phantom_ome_zarr(tmp_path):
    from vstain_dask import ngff

    path = small_phantom_store(tmp_path, material="peek", seed=3)
    vol = ngff.open_volume(path)
    assert vol.dims == ("z", "y", "x") and vol.shape == (10, 14, 12)
    assert vol.dtype == np.uint16
    assert vol.attrs["scale"] == {"z": 5.0, "y": 5.0, "x": 5.0}
    meta = vol.attrs["vstain"]
    assert meta["material"] == "peek" and meta["seed"] == 3
    assert meta["generator_version"] == GENERATOR_VERSION
    assert meta["tissue_labels"]["screw"] == Tissue.SCREW
    ct, lab = da.compute(*small_phantom(material="peek", seed=3))
    np.testing.assert_array_equal(vol.values, ct)
    labels = ngff.open_volume(path / "labels" / "tissue")
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels.values, lab)


def test_write_phantom_refuses_existing_output(tmp_path):
    path = small_phantom_store(tmp_path, seed=1)
    with pytest.raises(OutputExistsError, match="already exists"):
        write_phantom(path, shape=(10, 14, 12), material="mg", seed=1, chunks=(5, 7, 6))
    write_phantom(path, shape=(10, 14, 12), material="ti", seed=1, chunks=(5, 7, 6), overwrite=True)
    from vstain_dask import ngff

    assert ngff.open_volume(path).attrs["vstain"]["material"] == "ti"


def test_write_phantom_ngff_04(tmp_path):
    from vstain_dask import ngff

    path = small_phantom_store(tmp_path, ngff_version="0.4")
    vol = ngff.open_volume(path)
    assert vol.attrs["ngff_version"] == "0.4"
    assert (path / "labels" / "tissue").exists()


@pytest.mark.slow
def test_chunk_generation_speed():
    """A 128³ block of the full-size phantom in a few seconds on one core (256³: ~8×)."""
    import dask

    ct, _ = phantom_volume((1536,) * 3, material="mg", seed=0, chunks=128)
    t0 = time.process_time()
    with dask.config.set(scheduler="synchronous"):
        ct.blocks[6, 6, 6].compute()
    assert time.process_time() - t0 < 8.0
