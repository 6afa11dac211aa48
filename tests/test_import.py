"""Converting TIFF folders and stacks, .npy, raw files and 2D images to OME-Zarr."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import zarr

from vstain_dask.errors import InputError, OutputExistsError, VolumeFormatError
from vstain_dask.ngff import import_volume, open_volume, volume_info

SHAPE = (10, 14, 12)
CHUNKS = (5, 7, 6)


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 65535, SHAPE, dtype=np.uint16)


def assert_imported(out, expected, *, voxel=(5.0, 5.0, 5.0), unit="micrometer"):
    vol = open_volume(out)
    assert vol.dims == ("z", "y", "x")
    assert vol.dtype == expected.dtype
    np.testing.assert_array_equal(vol.values, expected)
    assert vol.attrs["scale"] == dict(zip("zyx", voxel, strict=True))
    assert set(vol.attrs["units"].values()) == {unit}
    return vol


def test_tiff_folder_in_natural_order(tmp_path, volume):
    folder = tmp_path / "slices"
    folder.mkdir()
    # written out of order, with names that sort wrongly as plain strings (slice10 < slice2)
    for i in reversed(range(SHAPE[0])):
        tifffile.imwrite(folder / f"slice{i + 1}.tif", volume[i])
    (folder / "notes.txt").write_text("ignored")
    out = import_volume(folder, tmp_path / "v.ome.zarr", voxel_size=5, chunks=CHUNKS)
    vol = assert_imported(out, volume)
    assert vol.data.chunks == ((5, 5), (7, 7), (6, 6))
    assert "10 slices" in vol.attrs["vstain"]["import"]["format"]


def test_compressed_tiff_slices_and_anisotropic_voxels(tmp_path, volume):
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in range(SHAPE[0]):
        tifffile.imwrite(folder / f"img_{i:04d}.tiff", volume[i], compression="zlib")
    out = import_volume(folder, tmp_path / "v.zarr", voxel_size=(5, 2.5, 2.5), unit="um",
                        chunks=CHUNKS)  # fmt: skip
    assert_imported(out, volume, voxel=(5.0, 2.5, 2.5))


def test_tiff_folder_with_an_inconsistent_slice_names_it(tmp_path, volume):
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in range(SHAPE[0]):
        tifffile.imwrite(folder / f"s{i}.tif", volume[i])
    tifffile.imwrite(folder / "s7.tif", volume[7, :, :11])
    with pytest.raises(VolumeFormatError, match=r"s7\.tif has shape \(14, 11\)") as e:
        import_volume(folder, tmp_path / "v.zarr", voxel_size=5)
    assert "\n" not in str(e.value)
    tifffile.imwrite(folder / "s7.tif", volume[7].astype(np.float32))
    with pytest.raises(VolumeFormatError, match=r"s7\.tif has shape .* dtype float32"):
        import_volume(folder, tmp_path / "v.zarr", voxel_size=5)
    assert not (tmp_path / "v.zarr").exists()


def test_folder_without_tiffs_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeFormatError, match="holds no .tif/.tiff slices"):
        import_volume(tmp_path / "empty", tmp_path / "v.zarr", voxel_size=5)


@pytest.mark.parametrize(
    "options",
    [
        {},  # uncompressed and contiguous: read in bands without decoding
        {"compression": "zlib", "tile": (16, 16)},  # decoded region by region
        {"byteorder": ">"},
    ],
    ids=["plain", "compressed-tiled", "big-endian"],
)
def test_multipage_tiff(tmp_path, volume, options):
    tifffile.imwrite(tmp_path / "stack.tif", volume, photometric="minisblack", **options)
    out = import_volume(tmp_path / "stack.tif", tmp_path / "v.zarr", voxel_size=5, chunks=CHUNKS)
    assert_imported(out, volume)


@pytest.mark.parametrize("order", ["C", "F"])
def test_npy(tmp_path, volume, order):
    np.save(tmp_path / "v.npy", np.asarray(volume, order=order))
    out = import_volume(tmp_path / "v.npy", tmp_path / "v.zarr", voxel_size=5, chunks=CHUNKS,
                        ngff_version="0.4")  # fmt: skip
    vol = assert_imported(out, volume)
    assert vol.attrs["ngff_version"] == "0.4"


@pytest.mark.parametrize("dtype", ["uint16", ">u2", "float32"])
def test_raw_with_shape_and_dtype(tmp_path, volume, dtype):
    data = volume.astype(dtype)
    data.tofile(tmp_path / "v.raw")
    out = import_volume(tmp_path / "v.raw", tmp_path / "v.zarr", voxel_size=5, shape=SHAPE,
                        dtype=dtype, chunks=CHUNKS)  # fmt: skip
    assert_imported(out, data.astype(np.dtype(dtype).newbyteorder("=")))


def test_raw_needs_shape_and_the_right_size(tmp_path, volume):
    volume.tofile(tmp_path / "v.raw")
    with pytest.raises(InputError, match="needs --shape Z,Y,X and --dtype"):
        import_volume(tmp_path / "v.raw", tmp_path / "v.zarr", voxel_size=5)
    with pytest.raises(InputError, match="has 3360 bytes but shape 10,14,11 of uint16 needs 3080"):
        import_volume(tmp_path / "v.raw", tmp_path / "v.zarr", voxel_size=5, shape=(10, 14, 11),
                      dtype="uint16")  # fmt: skip
    assert not (tmp_path / "v.zarr").exists()


def test_rgb_png_becomes_2d_rgb_ome_zarr(tmp_path):
    import imageio.v3 as iio

    rgb = np.random.default_rng(1).integers(0, 256, (29, 33, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "section.png", rgb)
    out = import_volume(tmp_path / "section.png", tmp_path / "h.zarr", voxel_size=0.5)
    vol = open_volume(out)
    assert vol.dims == ("c", "y", "x")
    assert vol.attrs["kind"] == "rgb" and vol.attrs["channels"] == ["R", "G", "B"]
    assert vol.attrs["scale"] == {"c": 1.0, "y": 0.5, "x": 0.5}
    np.testing.assert_array_equal(vol.values, rgb.transpose(2, 0, 1))
    attrs = zarr.open_group(out, mode="r").attrs.asdict()["ome"]
    assert [c["color"] for c in attrs["omero"]["channels"]] == ["FF0000", "00FF00", "0000FF"]


def test_rgb_tiff_and_grey_png(tmp_path):
    import imageio.v3 as iio

    rgb = np.random.default_rng(2).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "section.tif", rgb, photometric="rgb")
    vol = open_volume(import_volume(tmp_path / "section.tif", tmp_path / "a.zarr", voxel_size=1))
    assert vol.dims == ("c", "y", "x") and vol.attrs["kind"] == "rgb"
    np.testing.assert_array_equal(vol.values, rgb.transpose(2, 0, 1))

    iio.imwrite(tmp_path / "grey.png", rgb[..., 0])
    vol = open_volume(import_volume(tmp_path / "grey.png", tmp_path / "b.zarr", voxel_size=1))
    assert vol.dims == ("y", "x")
    np.testing.assert_array_equal(vol.values, rgb[..., 0])


def test_folder_of_rgb_slices_becomes_czyx_rgb(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (6, 14, 12, 3), dtype=np.uint8)
    (tmp_path / "rgb").mkdir()
    for i in range(6):
        tifffile.imwrite(tmp_path / "rgb" / f"s{i}.tif", rgb[i], photometric="rgb")
    out = import_volume(tmp_path / "rgb", tmp_path / "v.zarr", voxel_size=2, chunks=(3, 7, 6))
    vol = open_volume(out)
    assert vol.dims == ("c", "z", "y", "x") and vol.attrs["kind"] == "rgb"
    assert vol.data.chunks == ((3,), (3, 3), (7, 7), (6, 6))
    np.testing.assert_array_equal(vol.values, rgb.transpose(3, 0, 1, 2))


def test_plain_zarr_source_gets_the_voxel_size(tmp_path, volume):
    zarr.create_array(tmp_path / "plain.zarr", shape=SHAPE, chunks=(5, 5, 5), dtype="uint16")[:] = (
        volume
    )
    out = import_volume(tmp_path / "plain.zarr", tmp_path / "v.zarr", voxel_size=5, chunks=CHUNKS)
    vol = assert_imported(out, volume)
    assert vol.data.chunks == ((5, 5), (7, 7), (6, 6))


def test_checks_given_shape_and_dtype_of_self_describing_sources(tmp_path, volume):
    np.save(tmp_path / "v.npy", volume)
    with pytest.raises(InputError, match=r"shape \(10, 14, 13\) was given but .* holds"):
        import_volume(tmp_path / "v.npy", tmp_path / "v.zarr", voxel_size=5, shape=(10, 14, 13))
    with pytest.raises(InputError, match="only needed for raw files"):
        import_volume(tmp_path / "v.npy", tmp_path / "v.zarr", voxel_size=5, dtype="float32")


def test_import_refuses_existing_output_and_missing_input(tmp_path, volume):
    np.save(tmp_path / "v.npy", volume)
    out = import_volume(tmp_path / "v.npy", tmp_path / "v.zarr", voxel_size=5)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        import_volume(tmp_path / "v.npy", out, voxel_size=5)
    with pytest.raises(VolumeFormatError, match="does not exist"):
        import_volume(tmp_path / "nope.tif", tmp_path / "w.zarr", voxel_size=5)
    with pytest.raises(InputError, match="voxel_size must be"):
        import_volume(tmp_path / "v.npy", tmp_path / "w.zarr", voxel_size=(5, 5))
    info = volume_info(out)
    assert info["vstain"]["import"]["voxel_size"] == [5.0, 5.0, 5.0]


_MEMORY_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import psutil
    from vstain_dask.ngff import import_volume, open_volume, write_volume

    def peak_rss():
        # VmHWM belongs to this process image; getrusage's maxrss would include the parent's
        # peak, which exec inherits on Linux
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    # warm up codecs, thread pools and the zarr event loop, so the baseline includes them
    write_volume(np.zeros((4, 4, 4), np.uint16), sys.argv[3], n_levels=2, overwrite=True)
    base = psutil.Process().memory_info().rss
    import_volume(sys.argv[1], sys.argv[2], voxel_size=5, shape=(64, 1024, 1024),
                  dtype="uint16", chunks=(32, 128, 128))
    vol = open_volume(sys.argv[2], level=1)
    print(peak_rss() - base, int(vol[31, 511, 511].compute()))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_import_memory_stays_bounded(tmp_path):
    shape = (64, 1024, 1024)  # 128 MiB of uint16
    raw = tmp_path / "big.raw"
    ramp = (np.arange(shape[1])[:, None] * 7 + np.arange(shape[2])[None, :] * 3) % 4000
    with open(raw, "wb") as f:
        for z in range(shape[0]):
            f.write(((ramp + z) % 4000).astype(np.uint16).tobytes())
    size = raw.stat().st_size
    # what distributed sets for its workers: return freed buffers to the OS, so that the
    # resident size measures live data rather than allocator caches
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(raw), str(tmp_path / "big.zarr"),
         str(tmp_path / "warm.zarr")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    grown, corner = (int(v) for v in proc.stdout.split())
    assert grown < size * 0.4, f"import grew resident memory by {grown / 2**20:.0f} MiB"
    # level 1 voxel (31, 511, 511) is the mean of z 62..63, y/x 1022..1023 of the ramp
    values = [((y * 7 + x * 3) % 4000 + z) % 4000 for z in (62, 63) for y in (1022, 1023)
              for x in (1022, 1023)]  # fmt: skip
    assert corner == round(np.mean(values))


def test_an_imported_ct_opens_with_a_display_window(tmp_path):
    """The omero window of an imported CT: robust percentiles of its voxels, so viewers do not
    start black on a 16-bit volume whose values sit in a narrow band."""
    import tifffile

    from vstain_dask import ngff

    rng = np.random.default_rng(0)
    vol = rng.integers(9000, 11000, (8, 64, 64), dtype=np.uint16)
    vol[0, 0, 0] = 65535  # one hot voxel must not set the window
    src = tmp_path / "ct.tif"
    tifffile.imwrite(src, vol)
    out = tmp_path / "ct.ome.zarr"
    ngff.import_volume(src, out, voxel_size=5.0)
    import zarr

    window = zarr.open_group(str(out), mode="r").attrs["ome"]["omero"]["channels"][0]["window"]
    lo, hi = np.percentile(vol, [0.5, 99.5])
    assert abs(window["start"] - lo) <= 20 and abs(window["end"] - hi) <= 20
    assert window["end"] < 11000
