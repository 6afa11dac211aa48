"""Resampling during import (--pixel-size-out / --voxel-size-out): exact area averaging by a
non-integer factor, chunk by chunk, against whole-image references, with no seams; and the
linear interpolation to a finer size that stain uses (scipy's map_coordinates as reference)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
from test_wsi import assert_one_line_error, run

from vstain_dask.ngff import import_volume, open_volume
from vstain_dask.ngff._resample import _PIECE_ELEMENTS, resample, resample_area, resample_to_size


def area_reference(image: np.ndarray, factors, axes) -> np.ndarray:
    """Whole-image area averaging from its definition, written independently of the package:
    output pixel j is (1/f) times the integral of the piecewise-constant input over
    [j f, (j + 1) f), taken from the cumulative sum along the axis."""
    out = image.astype(np.float64)
    for axis, f in zip(axes, factors, strict=True):
        n = out.shape[axis]
        m = int(np.floor(n / f + 1e-9))
        moved = np.moveaxis(out, axis, 0)
        cum = np.concatenate([np.zeros((1, *moved.shape[1:])), np.cumsum(moved, axis=0)])

        def integral(x, moved=moved, cum=cum, n=n):
            k = np.minimum(np.floor(x).astype(int), n - 1)
            frac = (x - k).reshape(-1, *([1] * (moved.ndim - 1)))
            return cum[k] + frac * moved[k]

        edges = np.arange(m + 1) * f
        out = np.moveaxis((integral(edges[1:]) - integral(edges[:-1])) / f, 0, axis)
    return out


def block_mean(image: np.ndarray, k: int) -> np.ndarray:
    h, w = (s // k * k for s in image.shape[-2:])
    v = image[..., :h, :w].astype(np.float64)
    return v.reshape(*v.shape[:-2], h // k, k, w // k, k).mean(axis=(-3, -1))


@pytest.fixture
def slide() -> np.ndarray:
    # edges and noise: a wrong weight or a missing fractional pixel shows
    rng = np.random.default_rng(1)
    ramp = (
        np.add.outer(np.arange(301), 2 * np.arange(257))[None] * np.array([1, 2, 3])[:, None, None]
    )
    return ((ramp + rng.integers(0, 60, (3, 301, 257))) % 256).astype(np.uint8)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_integer_factor_is_the_block_mean(slide, k):
    got = resample_area(
        da.from_array(slide, chunks=(3, 64, 50)), axes="cyx", factors=(k, k), chunks=(37, 41)
    ).compute()
    ref = block_mean(slide, k)
    assert got.shape == ref.shape and got.dtype == np.uint8
    assert np.abs(got - ref).max() <= 0.5 + 1e-9  # rounded to nearest


@pytest.mark.parametrize("factors", [(11.363636, 11.363636), (2.5, 1.7), (1.01, 3.3)])
def test_non_integer_factor_matches_the_area_definition(slide, factors):
    got = resample_area(
        da.from_array(slide, chunks=(3, 70, 33)), axes="cyx", factors=factors, chunks=(9, 7)
    ).compute()
    ref = area_reference(slide, factors, axes=(1, 2))
    assert got.shape == ref.shape
    # the same definition: within rounding everywhere, chunk borders included
    assert np.abs(got - ref).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("factors", [(11.363636, 11.363636), (2.0, 2.0), (2.5, 1.7)])
def test_no_seams_chunked_equals_one_chunk(slide, factors):
    whole = resample_area(
        da.from_array(slide), axes="cyx", factors=factors, chunks=(10**6, 10**6)
    ).compute()
    for in_chunks, out_chunks in [
        ((3, 17, 19), (3, 4)),
        ((3, 301, 257), (5, 11)),
        ((1, 64, 64), (8, 8)),
    ]:
        got = resample_area(
            da.from_array(slide, chunks=in_chunks), axes="cyx", factors=factors, chunks=out_chunks
        ).compute()
        np.testing.assert_array_equal(got, whole)


def test_volume_float_and_integer(slide):
    rng = np.random.default_rng(2)
    vol = rng.normal(1000, 300, (23, 30, 27)).astype(np.float32)
    factors = (1.5, 2.0, 2.7)
    got = resample_area(
        da.from_array(vol, chunks=(5, 7, 6)), axes="zyx", factors=factors, chunks=(4, 3, 5)
    ).compute()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, area_reference(vol, factors, (0, 1, 2)), rtol=1e-5)
    u16 = (vol * 10).astype(np.uint16)
    got = resample_area(
        da.from_array(u16, chunks=(5, 7, 6)), axes="zyx", factors=factors, chunks=(4, 3, 5)
    ).compute()
    assert np.abs(got - area_reference(u16, factors, (0, 1, 2))).max() <= 0.5 + 1e-6


def test_memory_per_block_is_bounded_whatever_the_factor():
    big = da.zeros((3, 40_000, 40_000), dtype=np.uint8, chunks=(3, 1024, 1024))
    out = resample_area(big, axes="cyx", factors=(11.36, 11.36), chunks=(1024, 1024))
    assert out.shape == (3, 3521, 3521)
    # a task reads about 2048² input pixels per channel (its output block times the factor,
    # plus the one-pixel halo), not an output chunk's 11636²
    assert max(out.chunks[1]) * 11.36 <= 2049 and max(out.chunks[2]) * 11.36 <= 2049


def test_cli_slide_to_5_um(tmp_path, slide):
    src = tmp_path / "slide.ome.tif"
    rgb = np.moveaxis(slide, 0, -1)
    tifffile.imwrite(
        src, rgb, tile=(32, 48), photometric="rgb", compression="zlib",
        metadata={"axes": "YXS", "PhysicalSizeX": 0.44, "PhysicalSizeY": 0.44},
    )  # fmt: skip
    out = tmp_path / "out.ome.zarr"
    result = run("import", src, out, "--pixel-size-out", 5, "--chunks", "7,6")
    assert result.exit_code == 0, result.output
    assert "resampled to 5 µm" in result.output
    vol = open_volume(out)
    assert vol.attrs["scale"] == {"c": 1.0, "y": 5.0, "x": 5.0}
    f = 5 / 0.44
    ref = area_reference(slide, (f, f), (1, 2))
    got = np.asarray(vol.data)
    assert got.shape == ref.shape == (3, 26, 22)
    assert np.abs(got - ref).max() <= 0.5 + 1e-6
    record = vol.attrs["vstain"]["import"]["resampled"]
    assert record["to"] == [5.0, 5.0] and record["from"] == [0.44, 0.44]
    assert record["translation"] == pytest.approx([2.28, 2.28])
    assert vol.attrs["vstain"]["complete"] is True


def test_cli_volume_voxel_size_out(tmp_path):
    vol = np.random.default_rng(3).integers(0, 4000, (20, 25, 22)).astype(np.uint16)
    np.save(tmp_path / "v.npy", vol)
    out = tmp_path / "v.ome.zarr"
    result = run(
        "import", tmp_path / "v.npy", out, "--voxel-size", "2,1,1", "--voxel-size-out", "3,2.5,2",
        "--chunks", "4,5,3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = open_volume(out)
    assert got.attrs["scale"] == {"z": 3.0, "y": 2.5, "x": 2.0}
    ref = area_reference(vol, (1.5, 2.5, 2.0), (0, 1, 2))
    assert np.abs(np.asarray(got.data) - ref).max() <= 0.5 + 1e-6


def test_upsampling_is_refused_in_one_line(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((8, 8, 8), np.uint16))
    result = run(
        "import", tmp_path / "v.npy", tmp_path / "o.zarr", "--voxel-size", 2, "--voxel-size-out", 1
    )
    assert_one_line_error(result, "finer than the input's 2 µm")
    assert not (tmp_path / "o.zarr").exists()


def test_same_size_and_python_api(tmp_path, slide):
    np.save(tmp_path / "s.npy", slide[0])
    out = import_volume(tmp_path / "s.npy", tmp_path / "o.zarr", voxel_size=1.0, voxel_size_out=1)
    np.testing.assert_array_equal(np.asarray(open_volume(out).data), slide[0])


def linear_reference(image: np.ndarray, factors, axes) -> np.ndarray:
    """Whole-image linear interpolation with scipy, one axis at a time: output pixel j samples
    the input at (j + 0.5) f - 0.5 with the edge pixels replicated (mode="nearest")."""
    from scipy import ndimage

    out = image.astype(np.float64)
    for axis, f in zip(axes, factors, strict=True):
        moved = np.moveaxis(out, axis, 0)
        n = moved.shape[0]
        x = (np.arange(int(np.floor(n / f + 1e-9))) + 0.5) * f - 0.5
        grid = np.meshgrid(x, *(np.arange(s) for s in moved.shape[1:]), indexing="ij")
        moved = ndimage.map_coordinates(moved, grid, order=1, mode="nearest")
        out = np.moveaxis(moved, 0, axis)
    return out


@pytest.fixture
def volume() -> np.ndarray:
    rng = np.random.default_rng(4)
    ramp = np.add.outer(np.add.outer(3 * np.arange(13), 5 * np.arange(17)), 7 * np.arange(11))
    return (ramp * 20 + rng.integers(0, 500, (13, 17, 11))).astype(np.uint16)


@pytest.mark.parametrize("factors", [(0.5, 0.5, 0.5), (2 / 3, 0.4, 0.3), (0.25, 1.0, 0.75)])
def test_finer_size_is_linear_interpolation_at_the_pixel_centres(volume, factors):
    ref = linear_reference(volume, factors, (0, 1, 2))
    got = resample(
        da.from_array(volume, chunks=(4, 5, 3)), axes="zyx", factors=factors, chunks=(3, 4, 5)
    )
    assert len(got.chunks[1]) > 3  # many blocks: their borders are checked below
    got = got.compute()
    assert got.shape == ref.shape and got.dtype == np.uint16
    assert np.abs(got - ref).max() <= 0.5 + 1e-6  # rounded to nearest, everywhere
    exact = resample(
        da.from_array(volume.astype(np.float64), chunks=(5, 6, 4)), axes="zyx", factors=factors,
        chunks=(4, 5, 6),
    ).compute()  # fmt: skip
    np.testing.assert_allclose(exact, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("factors", [(0.5, 0.5, 0.5), (2.0, 0.5, 1.0), (1.5, 0.3, 2.5)])
def test_finer_and_mixed_no_seams_chunked_equals_one_chunk(volume, factors):
    whole = resample(
        da.from_array(volume), axes="zyx", factors=factors, chunks=(10**6,) * 3
    ).compute()
    # dyadic factors are exact in floating point: the same bytes whatever the blocks; others
    # may round an exact half the other way where a block's sum is taken in another order
    dyadic = all(np.log2(f).is_integer() for f in factors)
    for in_chunks, out_chunks in [((2, 3, 2), (2, 3, 4)), ((4, 5, 3), (5, 7, 6)),
                                  ((13, 2, 11), (7, 2, 9))]:  # fmt: skip
        got = resample(
            da.from_array(volume, chunks=in_chunks), axes="zyx", factors=factors, chunks=out_chunks
        ).compute()
        if dyadic:
            np.testing.assert_array_equal(got, whole)
        else:
            assert np.abs(got.astype(int) - whole).max() <= 1


def test_mixed_axes_match_both_references(volume):
    got = resample(
        da.from_array(volume, chunks=(4, 5, 3)), axes="zyx", factors=(2.0, 0.5, 1.0),
        chunks=(2, 3, 4),
    ).compute()  # fmt: skip
    ref = linear_reference(area_reference(volume, (2.0,), (0,)), (0.5,), (1,))
    assert np.abs(got - ref).max() <= 0.5 + 1e-6


def test_memory_per_block_is_bounded_when_interpolating():
    big = da.zeros((2000, 2000, 2000), dtype=np.uint16, chunks=(128, 128, 128))
    out = resample(big, axes="zyx", factors=(0.5, 0.5, 0.5), chunks=(64, 256, 256))
    assert out.shape == (4000, 4000, 4000)
    # a task's output (the larger side of an interpolation) holds at most the piece size
    biggest = max(out.chunks[0]) * max(out.chunks[1]) * max(out.chunks[2])
    assert biggest <= _PIECE_ELEMENTS * 1.05


def test_stain_record_of_upsampling_and_import_still_refuses_it(volume):
    data, record = resample_to_size(
        da.from_array(volume), axes="zyx", voxel_size=(10, 10, 10), target=5, unit="micrometer",
        chunks=(8, 8, 8), upsample=True,
    )  # fmt: skip
    assert data.shape == (26, 34, 22) and record["to"] == [5.0, 5.0, 5.0]
    assert record["translation"] == [-2.5, -2.5, -2.5]  # output pixel 0 centred in the input's
    assert record["methods"] == ["linear interpolation"] * 3
    with pytest.raises(Exception, match="import only resamples to coarser sizes"):
        resample_to_size(
            da.from_array(volume), axes="zyx", voxel_size=(10, 10, 10), target=5,
            unit="micrometer", chunks=(8, 8, 8),
        )  # fmt: skip
