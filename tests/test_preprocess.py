"""Known-answer tests of CT/histology normalization, correspondence masks and the prefilter.

The synthetic slices are built here: a cylindrical sample (medium) with trabecular bone around
a central screw, optionally in air, with Gaussian noise; and a matching toluidine-blue-like
histology image (tinted slide background, pale blue bone, purple soft tissue, dark implant).
"""

from __future__ import annotations

import threading
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image

from vstain_dask.errors import InputError
from vstain_dask.preprocess import (
    CT_BACKGROUND_LEVEL,
    CT_BONE_LEVEL,
    CTLevels,
    HistologyLevels,
    LevelSource,
    correspondence_mask,
    ct_tissue_mask,
    estimate_ct_levels,
    estimate_histology_levels,
    gaussian_prefilter,
    histology_tissue_mask,
    levels_from_rois,
    mean_background_colour,
    normalize_ct,
    normalize_histology,
)

# Linear attenuation-like levels, relative to the medium (1) and bone (6).
LEVELS = {"air": 0.0, "medium": 1.0, "bone": 6.0, "ti": 70.0, "mg": 5.0, "peek": 3.5}


def _geometry(shape, seed):
    """Masks of a cylinder sample (axis along z) with trabecular bone around a central screw."""
    rng = np.random.default_rng(seed)
    n = shape[-1]
    yy, xx = np.mgrid[: shape[-2], :n] - (n - 1) / 2
    r = np.broadcast_to(np.hypot(yy, xx), shape)
    inside = r < 0.45 * n
    field = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    bone = inside & (r > 0.12 * n) & (r < 0.35 * n) & (field > 0)
    bone |= inside & (r > 0.35 * n) & (r < 0.40 * n)
    screw = r < 0.10 * n
    medium = inside & ~bone & (r > 0.11 * n)
    return {"inside": inside, "bone": bone, "screw": screw, "medium": medium}


def _ct(shape=(96, 96), *, screw="ti", air=True, noise=0.15, seed=0, levels=None):
    """(image in medium/bone units, masks)."""
    lv = {**LEVELS, **(levels or {})}
    masks = _geometry(shape, seed)
    img = np.full(shape, lv["air"] if air else lv["medium"])
    img[masks["inside"]] = lv["medium"]
    img[masks["bone"]] = lv["bone"]
    if screw is not None:
        img[masks["screw"]] = lv[screw]
    img = img + noise * np.random.default_rng(seed + 1).standard_normal(shape)
    return img, masks


def _histology(n=96, *, seed=0, tint=(236, 226, 204), noise=3.0):
    masks = _geometry((n, n), seed)
    img = np.empty((n, n, 3))
    img[:] = tint
    img[masks["inside"]] = (120, 85, 165)  # soft tissue
    img[masks["bone"]] = (150, 175, 215)  # bone
    img[masks["screw"]] = (40, 40, 45)  # opaque implant
    img += noise * np.random.default_rng(seed + 2).standard_normal(img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), masks


def _relative_errors(levels, raw, masks):
    bone, medium = raw[masks["bone"]].mean(), raw[masks["medium"]].mean()
    contrast = bone - medium
    return (levels.bone - bone) / contrast, (levels.background - medium) / contrast


class _BlockLog:
    """Records which blocks of a dask array are materialized."""

    def __init__(self):
        self.blocks = []
        self._lock = threading.Lock()

    def wrap(self, array: np.ndarray, chunks) -> da.Array:
        def load(block, block_info=None):
            with self._lock:
                self.blocks.append(block_info[0]["chunk-location"])
            return block

        source = da.from_array(array, chunks=chunks)
        return source.map_blocks(load, dtype=array.dtype, meta=np.empty((0,) * array.ndim))


# -- CT normalization ------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scale=st.floats(0.05, 60.0),
    offset=st.floats(-2000.0, 8000.0),
    seed=st.integers(0, 3),
)
def test_normalize_ct_puts_bone_and_background_on_the_paper_levels(scale, offset, seed):
    img, masks = _ct(screw="mg", seed=seed)
    raw = offset + scale * img
    levels = levels_from_rois(raw, bone_roi=masks["bone"], background_roi=masks["medium"])
    out = normalize_ct(raw, levels)
    assert out.dtype == np.uint16
    # rounding moves each pixel by at most 0.5; nothing inside these regions is clipped
    assert abs(out[masks["bone"]].mean() - 30000) < 0.6
    assert abs(out[masks["medium"]].mean() - 10000) < 0.6
    assert (CT_BONE_LEVEL, CT_BACKGROUND_LEVEL) == (30000, 10000)


def test_normalize_ct_formula_rounds_and_clips_to_uint16():
    levels = CTLevels(bone=5000.0, background=1000.0)
    raw = np.array([1000.0, 5000.0, 3000.0, -50000.0, 1e9, 1000.1, 1000.125])
    out = normalize_ct(raw, levels)
    # 10000 + (v - 1000) * 20000 / 4000
    assert out.tolist() == [10000, 30000, 20000, 0, 65535, 10000, 10001]
    floats = normalize_ct(raw, levels, dtype=np.float32, bone_target=1.0, background_target=0.0)
    assert floats.dtype == np.float32
    np.testing.assert_allclose(floats, (raw - 1000) / 4000, rtol=1e-6)


def test_levels_from_rois_accepts_boxes_pairs_and_masks():
    img, masks = _ct(screw=None, air=False, noise=0.3)
    raw = (100 + 900 * img).astype(np.float32)
    box = levels_from_rois(raw, bone_roi=np.s_[40:44, 10:12], background_roi=np.s_[:5, :5])
    pairs = levels_from_rois(raw, bone_roi=((40, 44), (10, 12)), background_roi=((0, 5), (0, 5)))
    assert box == pairs
    assert box.source is LevelSource.ROI
    assert box.bone == pytest.approx(raw[40:44, 10:12].astype(np.float64).mean())
    assert box.background == pytest.approx(raw[:5, :5].astype(np.float64).mean())
    by_mask = levels_from_rois(raw, bone_roi=masks["bone"], background_roi=masks["medium"])
    assert by_mask.bone == pytest.approx(raw[masks["bone"]].astype(np.float64).mean())
    lazy = levels_from_rois(
        da.from_array(raw, chunks=(30, 40)), bone_roi=masks["bone"], background_roi=np.s_[:5, :5]
    )
    assert lazy.bone == pytest.approx(by_mask.bone)
    assert lazy.background == pytest.approx(box.background)


def test_roi_errors_name_the_parameter():
    raw = np.zeros((8, 8))
    with pytest.raises(InputError, match="bone_roi selects no pixels"):
        levels_from_rois(raw, bone_roi=np.zeros((8, 8), bool), background_roi=np.s_[:2])
    with pytest.raises(InputError, match=r"background_roi must have the shape"):
        levels_from_rois(raw, bone_roi=np.s_[:2], background_roi=np.ones((4, 4), bool))
    with pytest.raises(InputError, match="background_roi must be a boolean mask"):
        levels_from_rois(raw, bone_roi=np.s_[:2], background_roi="corner")
    with pytest.raises(InputError, match="must differ"):
        levels_from_rois(raw, bone_roi=np.s_[:2], background_roi=np.s_[4:])
    with pytest.raises(InputError, match="CTLevels.source must be one of 'auto', 'roi', 'manual'"):
        CTLevels(bone=2.0, background=1.0, source="guess")


def test_normalize_ct_is_lazy_keeps_chunks_and_equals_numpy():
    img, _ = _ct((10, 14, 12), screw="ti", seed=3)
    raw = (500 + 700 * img).astype(np.float32)
    levels = CTLevels(bone=4700.0, background=1200.0)
    log = _BlockLog()
    lazy_in = log.wrap(raw, (5, 7, 6))
    lazy = normalize_ct(lazy_in, levels)
    assert isinstance(lazy, da.Array)
    assert log.blocks == []  # nothing was computed
    assert lazy.chunks == lazy_in.chunks
    assert lazy.dtype == np.uint16
    np.testing.assert_array_equal(lazy.compute(), normalize_ct(raw, levels))

    arr = xr.DataArray(lazy_in, dims=("z", "y", "x"), coords={"z": np.arange(10) * 5.0})
    arr.attrs["units"] = {"z": "micrometer"}
    wrapped = normalize_ct(arr, levels)
    assert isinstance(wrapped, xr.DataArray) and isinstance(wrapped.data, da.Array)
    assert wrapped.attrs == arr.attrs
    np.testing.assert_array_equal(wrapped.coords["z"], arr.coords["z"])


def test_normalize_ct_rejects_bad_arguments():
    levels = CTLevels(bone=2.0, background=1.0)
    with pytest.raises(InputError, match="levels must be a CTLevels"):
        normalize_ct(np.zeros(3), (2.0, 1.0))
    with pytest.raises(InputError, match=r"bone_target must lie in the range of uint16"):
        normalize_ct(np.zeros(3), levels, bone_target=70000)
    with pytest.raises(InputError, match="ct must hold real numbers"):
        normalize_ct(np.zeros(3, bool), levels)


# -- CT level estimation ---------------------------------------------------------------------------


@pytest.mark.parametrize("air", [True, False], ids=["in-air", "no-air"])
@pytest.mark.parametrize(
    ("screw", "levels", "material"),
    [
        ("ti", None, None),  # Ti far brighter than bone, found without a hint
        ("ti", None, "ti"),
        ("ti", {"ti": 14.0}, None),  # only 2.6 times bone: found as the central population
        ("mg", None, None),  # Mg about as bright as bone
        ("peek", None, None),  # a PEEK screw between medium and bone
        ("peek", {"peek": 1.05}, None),  # as dark as the medium (the realistic case)
        ("peek", {"peek": 1.4}, None),  # just above the medium, well resolved
        ("peek", {"peek": 1.4}, "peek"),
        (None, None, None),
    ],
)
def test_estimate_ct_levels_finds_bone_and_medium(air, screw, levels, material):
    img, masks = _ct(screw=screw, air=air, levels=levels, noise=0.15, seed=5)
    raw = 1234 + 900 * img
    levels = estimate_ct_levels(raw, material=material)
    bone_error, background_error = _relative_errors(levels, raw, masks)
    assert abs(bone_error) < 0.02, levels
    assert abs(background_error) < 0.02, levels
    assert levels.source is LevelSource.AUTO
    assert (levels.metal_threshold is not None) == (screw == "ti")
    if levels.metal_threshold is not None:  # voxels are classified by their 3x3 median
        median = ndi.median_filter(raw, size=3, mode="reflect")
        assert (median[masks["bone"]] < levels.metal_threshold).mean() > 0.999
        assert (median[masks["screw"]] >= levels.metal_threshold).all()


def test_estimate_ct_levels_separates_air_close_to_the_medium_in_noise():
    # air and medium only 2.5 noise sigmas apart: the median denoising still separates them
    img, masks = _ct((24, 64, 64), screw="ti", air=True, noise=0.4, seed=2)
    levels = estimate_ct_levels(img.astype(np.float32))
    bone_error, background_error = _relative_errors(levels, img, masks)
    assert abs(bone_error) < 0.03 and abs(background_error) < 0.03, levels
    assert levels.air_threshold is not None and levels.metal_threshold is not None


def test_estimate_ct_levels_drops_zero_padding_and_honours_the_mask():
    img, masks = _ct(screw="mg", air=False, seed=4)
    raw = (2000 + 1000 * img).astype(np.uint16)
    raw[~masks["inside"]] = 0  # outside the reconstruction circle
    levels = estimate_ct_levels(raw)
    assert abs(_relative_errors(levels, raw.astype(float), masks)[1]) < 0.02
    assert levels.air_threshold is not None
    # a mask of the bone ring and medium only: the screw cannot matter
    masked = estimate_ct_levels(raw, mask=masks["bone"] | masks["medium"])
    assert abs(_relative_errors(masked, raw.astype(float), masks)[0]) < 0.01


def test_estimate_ct_levels_on_dask_reads_a_bounded_deterministic_subset():
    img, masks = _ct((24, 64, 64), screw="ti", seed=1)
    raw = (1000 + 800 * img).astype(np.float32)
    log = _BlockLog()
    lazy = log.wrap(raw, (8, 32, 32))  # 12 chunks
    first = estimate_ct_levels(lazy, max_chunks=4, sample=40_000)
    assert len(log.blocks) == 4
    assert first.n_samples <= 40_000
    second = estimate_ct_levels(lazy, max_chunks=4, sample=40_000)
    assert first == second
    bone_error, background_error = _relative_errors(first, raw, masks)
    assert abs(bone_error) < 0.03 and abs(background_error) < 0.03, first
    whole = estimate_ct_levels(raw)
    assert abs(_relative_errors(whole, raw, masks)[0]) < 0.02
    # a dask mask is sampled with the same chunks
    log.blocks.clear()
    in_mask = estimate_ct_levels(lazy, mask=da.from_array(masks["inside"], chunks=(12, 64, 64)))
    assert sorted(log.blocks) == sorted({tuple(b) for b in log.blocks})  # each chunk once
    assert abs(_relative_errors(in_mask, raw, masks)[1]) < 0.03


def test_estimate_ct_levels_errors():
    with pytest.raises(InputError, match="could not find both a bone and a background"):
        estimate_ct_levels(np.full((32, 32), 7.0))
    with pytest.raises(InputError, match="material must be a name of letters"):
        estimate_ct_levels(np.zeros((32, 32)), material="steel bolt")
    with pytest.raises(InputError, match=r"ct must be a 2D \(Y, X\) or 3D"):
        estimate_ct_levels(np.zeros(100))
    with pytest.raises(InputError, match="mask must have the shape"):
        estimate_ct_levels(np.zeros((32, 32)), mask=np.ones((3, 3), bool))


# -- histology -------------------------------------------------------------------------------------


def test_white_balance_makes_the_background_grey_and_bright():
    rgb, masks = _histology(tint=(236, 214, 180))
    colour = mean_background_colour(rgb, masks["inside"] == 0)
    np.testing.assert_allclose(colour, (236, 214, 180), atol=0.5)
    np.testing.assert_allclose(mean_background_colour(rgb), colour, atol=0.5)  # found alone
    out = normalize_histology(rgb)
    grey = out[~masks["inside"]].astype(float).mean(axis=0)
    assert np.ptp(grey) < 1.0, grey
    assert grey.mean() > 235


def test_stretch_maps_the_percentiles_to_the_bounds_and_keeps_chromaticity():
    rgb, masks = _histology(noise=6.0)
    background, bone = ~masks["inside"], masks["bone"]
    levels = estimate_histology_levels(rgb, background_mask=background, bone_mask=bone)
    mean = rgb[background].astype(float).mean(axis=0)
    gains = mean.max() / mean
    np.testing.assert_allclose(levels.gains, gains)
    balanced = rgb.astype(float) * gains
    p1 = np.percentile(balanced[bone], 1)
    p99 = np.percentile(balanced[background], 99)
    assert p1 > 10 and p99 < 255  # neither clamp is active here
    assert levels.lower == pytest.approx(p1) and levels.upper == pytest.approx(p99)

    out = normalize_histology(rgb, background_mask=background, bone_mask=bone)
    expected = np.clip(np.rint((balanced - p1) * 255 / (p99 - p1)), 0, 255)
    np.testing.assert_array_equal(out, expected)
    # the same affine map on every channel: differences between channels scale by one factor
    a = 255 / (p99 - p1)
    unclipped = ((balanced - p1) * a > 2).all(-1) & ((balanced - p1) * a < 253).all(-1)
    assert unclipped.sum() > 1000
    stretched = out[unclipped].astype(float)
    source = balanced[unclipped]
    for c, d in ((0, 1), (1, 2), (0, 2)):
        np.testing.assert_allclose(
            stretched[:, c] - stretched[:, d], a * (source[:, c] - source[:, d]), atol=1.01
        )
    # a pixel at the bounds lands on 0 and 255
    assert round((p1 - p1) * a) == 0 and round((p99 - p1) * a) == 255


def test_stretch_bounds_are_clamped_to_10_and_255():
    rgb, masks = _histology()
    rgb[masks["screw"]] = 2  # nearly black pixels in the "bone" region
    bone = masks["bone"] | masks["screw"]
    background = ~masks["inside"]
    rgb[background] = (250, 200, 160)  # white balance pushes the background above 255
    rgb[background & (np.arange(96) % 2 == 0)] = (254, 204, 164)
    levels = estimate_histology_levels(rgb, background_mask=background, bone_mask=bone)
    assert levels.extra["lower_raw"] < 10 and levels.lower == 10.0
    assert levels.extra["upper_raw"] > 255 and levels.upper == 255.0
    out = normalize_histology(rgb, levels=levels)
    assert (out[masks["screw"]] == 0).all()


def test_histology_errors():
    with pytest.raises(InputError, match=r"rgb must be a \(Y, X, 3\) RGB image"):
        normalize_histology(np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="rgb must be uint8"):
        normalize_histology(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputError, match="lower=.* >= upper"):
        estimate_histology_levels(
            np.full((4, 4, 3), 200, np.uint8),
            background_mask=np.ones((4, 4), bool),
            bone_mask=np.ones((4, 4), bool),
        )
    with pytest.raises(InputError, match="needs finite lower < upper"):
        HistologyLevels(gains=(1, 1, 1), lower=20, upper=10)


# -- correspondence masks --------------------------------------------------------------------------


def _is_convex(mask):
    # the hull of the pixel centres adds nothing to a convex pixel set
    return np.array_equal(convex_hull_image(mask, offset_coordinates=False), mask)


@pytest.mark.parametrize("screw", ["ti", "mg", "peek"])
def test_ct_tissue_mask_is_the_convex_hull_of_bone_and_screw(screw):
    img, masks = _ct(screw=screw, air=True)
    raw = 300 + 1000 * img
    mask = ct_tissue_mask(raw, material_levels := estimate_ct_levels(raw, material=screw))
    assert material_levels.bone > material_levels.background
    assert mask.dtype == bool and mask.shape == raw.shape
    assert _is_convex(mask)
    assert mask[masks["bone"]].all() and mask[masks["screw"]].all()  # PEEK lies inside too
    assert not mask[~masks["inside"]].any()  # air and the outer medium are outside


def _lengthwise(material_level, *, n=96, seed=0):
    """A screw cut lengthwise: a band from the top edge into bone around the centre."""
    img, masks = _ct((n, n), screw=None, air=False, seed=seed)
    band = np.zeros((n, n), bool)
    band[: int(0.6 * n), n // 2 - 8 : n // 2 + 8] = True
    img[band] = material_level + 0.15 * np.random.default_rng(seed).standard_normal(band.sum())
    masks["bone"] &= ~band
    masks["medium"] &= ~band
    return img, masks, band


def test_lengthwise_screws_with_the_material_given():
    # a Ti screw only 2.6 times brighter than bone, off the axis: the material settles it
    img, masks, band = _lengthwise(14.0)
    levels = estimate_ct_levels(img, material="ti")
    assert max(map(abs, _relative_errors(levels, img, masks))) < 0.02, levels
    assert levels.metal_threshold is not None
    # a PEEK screw a little above the medium sticks out of the bone: the mask still holds it
    img, masks, band = _lengthwise(2.2)
    levels = estimate_ct_levels(img, material="peek")
    assert max(map(abs, _relative_errors(levels, img, masks))) < 0.02, levels
    mask = correspondence_mask(img, material="peek")
    assert mask[band].mean() > 0.97 and mask[masks["bone"]].all()


def test_histology_tissue_mask_is_convex_and_holds_the_tissue():
    rgb, masks = _histology()
    mask = histology_tissue_mask(rgb)
    assert _is_convex(mask)
    assert mask[masks["inside"]].mean() > 0.99
    assert mask.sum() < 1.05 * masks["inside"].sum()


def test_masks_of_empty_images_are_empty_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat = np.full((32, 32), 1000.0)
        assert not ct_tissue_mask(flat, CTLevels(bone=3000.0, background=1000.0)).any()
        noisy = flat + np.random.default_rng(0).standard_normal(flat.shape)
        speckled = noisy.copy()
        speckled[5, 5] = 5000  # one hot pixel: removed as a small object
        assert not ct_tissue_mask(speckled, CTLevels(bone=3000.0, background=1000.0)).any()
        assert not histology_tissue_mask(np.full((32, 32, 3), 230, np.uint8)).any()


def test_correspondence_mask_is_the_and_of_ct_histology_and_manual_masks():
    img, _ = _ct(screw="ti")
    raw = 1000 + 800 * img
    rgb, _ = _histology()
    rgb[:, :40] = rgb[0, 0]  # the left part of the section was lost
    manual = np.ones(raw.shape, bool)
    manual[70:] = False
    ct_mask, hist_mask = ct_tissue_mask(raw), histology_tissue_mask(rgb)
    assert (ct_mask & ~hist_mask).any()
    both = correspondence_mask(raw, rgb)
    np.testing.assert_array_equal(both, ct_mask & hist_mask)
    with_manual = correspondence_mask(raw, rgb, manual=manual)
    np.testing.assert_array_equal(with_manual, ct_mask & hist_mask & manual)
    two = correspondence_mask(raw, manual=[manual, manual.T])
    np.testing.assert_array_equal(two, ct_mask & manual & manual.T)
    with pytest.raises(InputError, match=r"histology must have the CT slice's shape"):
        correspondence_mask(raw, rgb[:50])


# -- Gaussian prefilter ----------------------------------------------------------------------------


CHUNKINGS = [(5, 7, 6), (2, 3, 5), (1, 14, 1), (10, 14, 12), (3, 4, 7)]


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=str)
@pytest.mark.parametrize("sigma", [1.0, (0.5, 2.0, 0.0), 3.0, (0.0, 0.0, 1.3)], ids=str)
def test_gaussian_prefilter_equals_scipy_on_the_whole_volume(chunks, sigma):
    x = np.random.default_rng(7).random((10, 14, 12)) * 1000
    lazy = da.from_array(x, chunks=chunks)
    out = gaussian_prefilter(lazy, sigma=sigma)
    assert isinstance(out, da.Array)
    assert out.chunks == lazy.chunks and out.dtype == x.dtype
    np.testing.assert_array_equal(out.compute(), ndi.gaussian_filter(x, sigma))


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8])
def test_gaussian_prefilter_rounds_integers_once(dtype):
    info = np.iinfo(dtype)
    x = np.random.default_rng(8).integers(info.min, info.max, (10, 14, 12), endpoint=True)
    x = x.astype(dtype)
    out = gaussian_prefilter(da.from_array(x, chunks=(5, 7, 6)), sigma=(1.0, 1.5, 0.7))
    assert out.dtype == dtype
    reference = ndi.gaussian_filter(x.astype(np.float64), (1.0, 1.5, 0.7))
    reference = np.clip(np.rint(reference), info.min, info.max).astype(dtype)
    np.testing.assert_array_equal(out.compute(), reference)


def test_gaussian_prefilter_float32_truncate_numpy_and_xarray():
    x = np.random.default_rng(9).random((10, 14, 12)).astype(np.float32)
    out = gaussian_prefilter(da.from_array(x, chunks=(2, 3, 5)), sigma=1.5, truncate=2.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.compute(), ndi.gaussian_filter(x, 1.5, truncate=2.0))
    np.testing.assert_array_equal(gaussian_prefilter(x), ndi.gaussian_filter(x, 1.0))
    arr = xr.DataArray(da.from_array(x, chunks=5), dims=("z", "y", "x"))
    filtered = gaussian_prefilter(arr)
    assert isinstance(filtered, xr.DataArray) and filtered.dims == ("z", "y", "x")
    np.testing.assert_array_equal(filtered.values, ndi.gaussian_filter(x, 1.0))


def test_gaussian_prefilter_sigma_zero_is_identity_and_errors():
    lazy = da.zeros((4, 5, 6), chunks=2)
    assert gaussian_prefilter(lazy, sigma=0) is lazy
    with pytest.raises(InputError, match=r"sigma must be one number or one per axis \(3\)"):
        gaussian_prefilter(lazy, sigma=(1.0, 1.0))
    with pytest.raises(InputError, match="sigma must be finite and >= 0"):
        gaussian_prefilter(lazy, sigma=-1.0)
    with pytest.raises(InputError, match="truncate must be a positive number"):
        gaussian_prefilter(lazy, truncate=0)
