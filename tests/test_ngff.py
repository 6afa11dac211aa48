"""OME-Zarr reading and writing: round trips, pyramids against numpy, metadata, foreign stores.

Volumes are tiny (10, 14, 12) with awkward (5, 7, 6) chunks; pyramids are checked against an
independent numpy reference written here (an explicit loop over windows).
"""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from vstain_dask.errors import InputError, OutputExistsError, VolumeFormatError
from vstain_dask.ngff import (
    MissingScaleWarning,
    VolumeKind,
    create_volume,
    format_info,
    open_levels,
    open_volume,
    volume_info,
    write_labels,
    write_pyramid,
    write_volume,
)

SHAPE = (10, 14, 12)
CHUNKS = (5, 7, 6)
VERSIONS = ["0.4", "0.5"]


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 65535, SHAPE, dtype=np.uint16)


def reference_level(a: np.ndarray, factors: tuple[int, ...], method: str) -> np.ndarray:
    """One pyramid step by brute force: each output voxel from its window of voxels present."""
    out_shape = tuple(-(-s // f) for s, f in zip(a.shape, factors, strict=True))
    out = np.empty(out_shape, dtype=a.dtype)
    for idx in itertools.product(*(range(n) for n in out_shape)):
        window = a[tuple(slice(i * f, i * f + f) for i, f in zip(idx, factors, strict=True))]
        if method == "nearest":
            out[idx] = window.flat[0]
        elif a.dtype.kind in "iu":
            out[idx] = np.round(window.astype(np.float64).mean())
        else:
            out[idx] = window.astype(np.float64).mean()
    return out


def reference_pyramid(a, factors, method, n_levels):
    levels = [a]
    for _ in range(1, n_levels):
        levels.append(reference_level(levels[-1], factors, method))
    return levels


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_round_trip_values_chunks_scale_units_coords(tmp_path, volume, version, dtype):
    data = volume.astype(dtype)
    out = write_volume(
        da.from_array(data, chunks=CHUNKS),
        tmp_path / "vol.ome.zarr",
        scale={"z": 2.5, "y": 1.0, "x": 0.5},
        units="micrometer",
        translation=(10.0, -3.0, 0.0),
        chunks=CHUNKS,
        ngff_version=version,
        n_levels=2,
        attrs={"model_sha256": "abc", "params": {"step": 64}},
    )
    assert out == tmp_path / "vol.ome.zarr"
    # the on-disk format asked for: zarr v3 metadata for 0.5, v2 for 0.4
    assert (out / "zarr.json").is_file() == (version == "0.5")
    assert (out / ".zgroup").is_file() == (version == "0.4")

    vol = open_volume(out)
    assert vol.dims == ("z", "y", "x")
    assert vol.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(vol.values, data)
    assert vol.data.chunks == ((5, 5), (7, 7), (6, 6))
    assert vol.attrs["ngff_version"] == version
    assert vol.attrs["scale"] == {"z": 2.5, "y": 1.0, "x": 0.5}
    assert vol.attrs["units"] == {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
    assert vol.attrs["translation"] == {"z": 10.0, "y": -3.0, "x": 0.0}
    assert vol.attrs["n_levels"] == 2 and vol.attrs["level"] == 0
    assert vol.attrs["channels"] is None
    # given attributes, and the completeness every volume written here records
    assert vol.attrs["vstain"] == {"model_sha256": "abc", "params": {"step": 64}, "complete": True}
    np.testing.assert_allclose(vol.coords["z"], np.arange(10) * 2.5 + 10.0)
    np.testing.assert_allclose(vol.coords["y"], np.arange(14) * 1.0 - 3.0)
    np.testing.assert_allclose(vol.coords["x"], np.arange(12) * 0.5)

    # level 1: twice the voxel size, centred between the voxels it averages
    lv1 = open_volume(out, level=1)
    assert lv1.shape == (5, 7, 6)
    assert lv1.attrs["scale"] == {"z": 5.0, "y": 2.0, "x": 1.0}
    np.testing.assert_allclose(lv1.coords["z"], 10.0 + 1.25 + np.arange(5) * 5.0)
    np.testing.assert_allclose(lv1.coords["x"], 0.25 + np.arange(6) * 1.0)
    # each coordinate names its unit, as xarray users (and CF conventions) expect
    assert all(lv1.coords[ax].attrs["units"] == "micrometer" for ax in "zyx")


@pytest.mark.parametrize("version", VERSIONS)
def test_open_levels_is_a_datatree_of_every_level(tmp_path, volume, version):
    out = write_volume(
        volume, tmp_path / "vol.ome.zarr", scale=(2.5, 1.0, 0.5), units="micrometer",
        chunks=CHUNKS, ngff_version=version, n_levels=3,
    )  # fmt: skip
    tree = open_levels(out)
    assert list(tree.children) == ["0", "1", "2"]
    assert tree.attrs["n_levels"] == 3 and tree.attrs["vstain"]["complete"] is True
    for level, image in enumerate(reference_pyramid(volume, (2, 2, 2), "mean", 3)):
        lv = tree[str(level)]["image"]
        assert lv.dims == ("z", "y", "x") and lv.shape == image.shape
        np.testing.assert_array_equal(lv.values, image)
        single = open_volume(out, level=level)
        for ax in "zyx":
            np.testing.assert_array_equal(lv.coords[ax].values, single.coords[ax].values)
            assert lv.coords[ax].attrs["units"] == "micrometer"
    # an unfinished volume is refused here as everywhere
    zarr.open_group(out, mode="r+").attrs.update({"vstain": {"complete": False}})
    with pytest.raises(VolumeFormatError, match="--overwrite|incomplete|not finished"):
        open_levels(out)


def test_provenance_under_vstain_key_and_units_alias(tmp_path, volume):
    out = write_volume(volume, tmp_path / "v.zarr", scale=5, units="um", attrs={"a": [1, 2]})
    attrs = zarr.open_group(out, mode="r").attrs.asdict()
    assert attrs["vstain"] == {"a": [1, 2], "complete": True}
    axes = attrs["ome"]["multiscales"][0]["axes"]
    assert [a["unit"] for a in axes] == ["micrometer"] * 3


def test_unaligned_input_is_rechunked_to_output_chunks(tmp_path, volume):
    out = write_volume(da.from_array(volume, chunks=(3, 4, 5)), tmp_path / "v.zarr", chunks=CHUNKS)
    vol = open_volume(out)
    assert vol.data.chunks == ((5, 5), (7, 7), (6, 6))
    np.testing.assert_array_equal(vol.values, volume)


def _task_names_during(fn) -> list[str]:
    names: list[str] = []

    class Record(dask.callbacks.Callback):
        def _pretask(self, key, dsk, state):
            names.append(str(key[0] if isinstance(key, tuple) else key))

    with Record():
        fn()
    return names


def test_aligned_input_is_written_without_rechunking(tmp_path, volume):
    # blocks of (10, 7, 12) fall on the (5, 7, 6) chunk boundaries: each writes whole chunks
    data = da.from_array(volume, chunks=(10, 7, 12))
    names = _task_names_during(
        lambda: write_volume(data, tmp_path / "v.zarr", chunks=CHUNKS, n_levels=2)
    )
    assert names and not any("rechunk" in n for n in names)
    vol = open_volume(tmp_path / "v.zarr")
    assert vol.data.chunks == ((5, 5), (7, 7), (6, 6))
    np.testing.assert_array_equal(vol.values, volume)


@pytest.mark.parametrize("version", VERSIONS)
def test_2d_round_trip_and_pyramid(tmp_path, version):
    img = np.random.default_rng(1).integers(0, 255, (29, 33), dtype=np.uint8)
    out = write_volume(
        img, tmp_path / "img.zarr", scale=0.5, chunks=(8, 16), n_levels=3, ngff_version=version
    )
    ref = reference_pyramid(img, (2, 2), "mean", 3)
    for level in range(3):
        vol = open_volume(out, level=level)
        assert vol.dims == ("y", "x")
        np.testing.assert_array_equal(vol.values, ref[level])
    assert open_volume(out, level=2).attrs["scale"] == {"y": 2.0, "x": 2.0}


# --------------------------------------------------------------------------------------------
# pyramids


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
def test_pyramid_mean_matches_numpy_on_odd_sizes(tmp_path, dtype):
    rng = np.random.default_rng(2)
    a = (rng.normal(0, 3000, (11, 13, 9))).astype(dtype) if dtype != "uint16" else None
    if a is None:
        a = rng.integers(0, 65535, (11, 13, 9), dtype=np.uint16)
    out = write_volume(a, tmp_path / "v.zarr", chunks=(4, 5, 3), n_levels=4)
    ref = reference_pyramid(a, (2, 2, 2), "mean", 4)
    for level, expected in enumerate(ref):
        vol = open_volume(out, level=level)
        assert vol.shape == expected.shape
        assert vol.dtype == a.dtype
        if a.dtype.kind == "f":
            np.testing.assert_allclose(vol.values, expected, rtol=1e-6, atol=1e-3)
        else:
            np.testing.assert_array_equal(vol.values, expected)
    assert [open_volume(out, level=i).shape for i in range(4)] == [
        (11, 13, 9),
        (6, 7, 5),
        (3, 4, 3),
        (2, 2, 2),
    ]


def test_integer_means_round_to_nearest_not_down(tmp_path):
    a = np.zeros((2, 2, 2), np.uint8)
    a[0, 0, 0] = 7  # mean 0.875 -> 1, truncation would give 0
    b = np.full((2, 2, 2), 3, np.uint8)
    b[0, 0, :] = 4  # mean 3.25 -> 3
    vol = np.concatenate([a, b], axis=2)
    out = write_volume(vol, tmp_path / "v.zarr", chunks=(2, 2, 2), n_levels=2)
    np.testing.assert_array_equal(open_volume(out, level=1).values, [[[1, 3]]])


def test_labels_pyramid_is_nearest(tmp_path):
    labels = np.random.default_rng(3).integers(0, 7, (11, 13, 9)).astype(np.uint32)
    out = write_volume(labels, tmp_path / "l.zarr", chunks=(4, 5, 3), n_levels=3, kind="labels")
    for level in range(3):
        step = 2**level
        np.testing.assert_array_equal(
            open_volume(out, level=level).values, labels[::step, ::step, ::step]
        )
    assert open_volume(out).attrs["kind"] == "labels"


@pytest.mark.parametrize("version", VERSIONS)
def test_create_volume_then_store_then_write_pyramid(tmp_path, volume, version):
    path = tmp_path / "c.zarr"
    level0 = create_volume(
        path, shape=SHAPE, dtype="uint16", chunks=CHUNKS, scale=5, units="micrometer",
        n_levels=3, ngff_version=version,
    )  # fmt: skip
    assert level0.shape == SHAPE and level0.chunks == CHUNKS
    # lower levels exist, empty, before the pyramid is written
    assert open_volume(path, level=2).shape == (3, 4, 3)
    assert int(open_volume(path, level=1).max()) == 0
    da.store(da.from_array(volume, chunks=CHUNKS), level0, lock=False)
    delayed = write_pyramid(path, compute=False)
    assert int(open_volume(path, level=1).max()) == 0  # nothing written yet
    delayed.compute()
    ref = reference_pyramid(volume, (2, 2, 2), "mean", 3)
    for level in range(3):
        np.testing.assert_array_equal(open_volume(path, level=level).values, ref[level])


def test_default_number_of_levels_stops_below_64_voxels(tmp_path):
    assert (
        open_volume(write_volume(np.zeros(SHAPE, np.uint8), tmp_path / "a.zarr")).attrs["n_levels"]
        == 1
    )
    # (1, 256, 130) -> (1, 128, 65) -> (1, 64, 33) -> next would be (1, 32, 17): stop at 3
    create_volume(tmp_path / "b.zarr", shape=(1, 256, 130), dtype="uint16", chunks=None)
    info = volume_info(tmp_path / "b.zarr")
    assert [lv["shape"] for lv in info["levels"]] == [[1, 256, 130], [1, 128, 65], [1, 64, 33]]
    assert info["chunks"] == [1, 128, 128]


# --------------------------------------------------------------------------------------------
# RGB and labels


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("n_channels", [3, 4])
def test_rgb_channel_metadata_and_unchunked_c(tmp_path, version, n_channels):
    rgb = np.random.default_rng(4).integers(0, 256, (n_channels, *SHAPE), dtype=np.uint8)
    out = write_volume(
        da.from_array(rgb, chunks=(1, 5, 7, 6)),
        tmp_path / "rgb.zarr",
        kind="rgb",
        scale=(5.0, 5.0, 5.0),
        units="micrometer",
        chunks=CHUNKS,
        n_levels=2,
        ngff_version=version,
    )
    vol = open_volume(out)
    assert vol.dims == ("c", "z", "y", "x")
    assert vol.data.chunks[0] == (n_channels,)
    assert vol.attrs["kind"] == "rgb"
    assert vol.attrs["channels"] == ["R", "G", "B", "A"][:n_channels]
    assert list(vol.coords["c"].values) == ["R", "G", "B", "A"][:n_channels]
    assert vol.attrs["scale"]["c"] == 1.0 and vol.attrs["units"]["c"] is None
    np.testing.assert_array_equal(vol.values, rgb)
    # c is never downsampled; each channel is averaged on its own
    lv1 = open_volume(out, level=1)
    assert lv1.shape == (n_channels, 5, 7, 6)
    np.testing.assert_array_equal(lv1.values, reference_level(rgb, (1, 2, 2, 2), "mean"))

    attrs = zarr.open_group(out, mode="r").attrs.asdict()
    meta = attrs["ome"] if version == "0.5" else attrs
    axes = meta["multiscales"][0]["axes"]
    assert axes[0] == {"name": "c", "type": "channel"}
    assert all(a["type"] == "space" and a["unit"] == "micrometer" for a in axes[1:])
    channels = meta["omero"]["channels"]
    assert [c["color"] for c in channels] == ["FF0000", "00FF00", "0000FF", "FFFFFF"][:n_channels]
    assert [c["active"] for c in channels] == [True, True, True, False][:n_channels]  # A hidden
    for c in channels:
        assert c["window"] == {"start": 0, "end": 255, "min": 0, "max": 255}


def test_rgb_requires_uint8_and_whole_channel_chunks(tmp_path):
    with pytest.raises(InputError, match="uint8") as e:
        write_volume(np.zeros((3, 4, 4, 4), np.uint16), tmp_path / "a.zarr", kind="rgb")
    one_line(e)
    with pytest.raises(InputError, match="one chunk"):
        create_volume(
            tmp_path / "b.zarr", shape=(3, 4, 4, 4), dtype="uint8", chunks=(1, 4, 4, 4),
            axes="czyx", kind="rgb",
        )  # fmt: skip
    with pytest.raises(
        InputError, match="kind must be one of 'intensity', 'labels', 'rgb', got 'rgba'"
    ):
        create_volume(tmp_path / "c.zarr", shape=SHAPE, dtype="uint8", chunks=None, kind="rgba")


@pytest.mark.parametrize("version", VERSIONS)
def test_write_labels_beside_image(tmp_path, volume, version):
    img = write_volume(volume, tmp_path / "img.zarr", scale=2, chunks=CHUNKS, n_levels=2,
                       ngff_version=version)  # fmt: skip
    mask = volume > 30000
    label_path = write_labels(img, "mask", mask)
    assert label_path == img / "labels" / "mask"
    lab = open_volume(label_path)
    assert lab.dtype == np.uint8 and lab.attrs["kind"] == "labels"
    np.testing.assert_array_equal(lab.values, mask.astype(np.uint8))
    np.testing.assert_array_equal(open_volume(label_path, level=1).values, mask[::2, ::2, ::2])
    assert lab.attrs["scale"] == {"z": 2.0, "y": 2.0, "x": 2.0}
    assert volume_info(img)["labels"] == ["mask"]
    with pytest.raises(InputError, match=r"spatial shape \(10, 14, 12\)"):
        write_labels(img, "bad", np.zeros((10, 14, 11), np.uint8))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_labels(img, "mask", mask)


# --------------------------------------------------------------------------------------------
# validation by other OME-Zarr implementations


@pytest.mark.parametrize("version", VERSIONS)
def test_output_validates_with_ome_zarr_models(tmp_path, volume, version):
    import ome_zarr_models
    from ome_zarr_models.v04.image import Image as Image04
    from ome_zarr_models.v04.image_label import ImageLabel as ImageLabel04
    from ome_zarr_models.v05.image import Image as Image05
    from ome_zarr_models.v05.image_label import ImageLabel as ImageLabel05

    rgb = np.stack([volume >> 8] * 3).astype(np.uint8)
    img = write_volume(rgb, tmp_path / "rgb.zarr", kind="rgb", scale=5, units="micrometer",
                       chunks=CHUNKS, n_levels=2, ngff_version=version)  # fmt: skip
    labels = write_labels(img, "mask", volume > 30000)
    image_cls, label_cls = (Image05, ImageLabel05) if version == "0.5" else (Image04, ImageLabel04)
    model = image_cls.from_zarr(zarr.open_group(img, mode="r"))
    assert [d.path for d in model.datasets[0]] == ["0", "1"]
    assert isinstance(ome_zarr_models.open_ome_zarr(zarr.open_group(img, mode="r")), image_cls)
    label_cls.from_zarr(zarr.open_group(labels, mode="r"))
    assert model.labels is not None


@pytest.mark.parametrize("version", VERSIONS)
def test_output_opens_with_ome_zarr_reader(tmp_path, volume, version):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    rgb = np.stack([volume >> 8] * 3).astype(np.uint8)
    img = write_volume(rgb, tmp_path / "rgb.zarr", kind="rgb", scale=5, units="micrometer",
                       chunks=CHUNKS, n_levels=2, ngff_version=version)  # fmt: skip
    nodes = list(Reader(parse_url(str(img)))())
    image = nodes[0]
    assert [tuple(d.shape) for d in image.data] == [(3, 10, 14, 12), (3, 5, 7, 6)]
    np.testing.assert_array_equal(np.asarray(image.data[0]), rgb)
    assert image.metadata["channel_names"] == ["R", "G", "B"]
    assert [a["name"] for a in image.metadata["axes"]] == ["c", "z", "y", "x"]
    assert image.metadata["coordinateTransformations"][1][0]["scale"] == [1.0, 10.0, 10.0, 10.0]


# --------------------------------------------------------------------------------------------
# reading stores written by others


@pytest.mark.filterwarnings(
    # ome-zarr-py builds a deprecated Scaler as a default argument when its writer is imported
    "ignore:Call to deprecated class Scaler:DeprecationWarning"
)
@pytest.mark.parametrize("version", VERSIONS)
def test_reads_ome_zarr_py_writer_output(tmp_path, volume, version):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV05() if version == "0.5" else FormatV04()
    group = zarr.open_group(tmp_path / "oz.zarr", mode="w", zarr_format=fmt.zarr_format)
    write_image(
        volume,
        group,
        fmt=fmt,
        axes="zyx",
        scale_factors=[{"z": 2, "y": 2, "x": 2}],
        storage_options={"chunks": CHUNKS},
        scale={"z": 5.0, "y": 4.0, "x": 3.0},
        axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
    )
    vol = open_volume(tmp_path / "oz.zarr")
    assert vol.attrs["ngff_version"] == version
    np.testing.assert_array_equal(vol.values, volume)
    assert vol.attrs["scale"] == {"z": 5.0, "y": 4.0, "x": 3.0}
    assert vol.attrs["units"]["x"] == "micrometer"
    assert vol.data.chunks == ((5, 5), (7, 7), (6, 6))
    assert vol.attrs["n_levels"] == 2
    lv1 = open_volume(tmp_path / "oz.zarr", level=1)
    assert lv1.shape == (5, 7, 6) and lv1.attrs["scale"] == {"z": 10.0, "y": 8.0, "x": 6.0}


@pytest.mark.parametrize("version", VERSIONS)
def test_reads_ngff_zarr_output(tmp_path, volume, version):
    import ngff_zarr

    image = ngff_zarr.to_ngff_image(
        volume,
        dims=["z", "y", "x"],
        scale={"z": 5.0, "y": 4.0, "x": 3.0},
        translation={"z": 1.0, "y": 2.0, "x": 3.0},
        axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
    )
    multiscales = ngff_zarr.to_multiscales(image, scale_factors=[2], chunks=CHUNKS)
    ngff_zarr.to_ngff_zarr(tmp_path / "nz.zarr", multiscales, version=version)
    vol = open_volume(tmp_path / "nz.zarr")
    assert vol.attrs["ngff_version"] == version
    np.testing.assert_array_equal(vol.values, volume)
    assert vol.attrs["scale"] == {"z": 5.0, "y": 4.0, "x": 3.0}
    assert vol.attrs["translation"] == {"z": 1.0, "y": 2.0, "x": 3.0}
    np.testing.assert_allclose(vol.coords["x"], 3.0 + 3.0 * np.arange(12))
    assert open_volume(tmp_path / "nz.zarr", level=1).shape == (5, 7, 6)


def test_multiscale_level_transforms_combine_with_dataset_transforms(tmp_path, volume):
    group = zarr.open_group(tmp_path / "h.zarr", mode="w", zarr_format=2)
    group.create_array("s0", shape=SHAPE, chunks=CHUNKS, dtype="uint16")[:] = volume
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": n, "type": "space", "unit": "millimeter"} for n in "zyx"],
            "datasets": [
                {
                    "path": "s0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [2.0, 3.0, 4.0]},
                        {"type": "translation", "translation": [1.0, 1.0, 1.0]},
                    ],
                }
            ],
            "coordinateTransformations": [
                {"type": "scale", "scale": [10.0, 10.0, 10.0]},
                {"type": "translation", "translation": [0.0, 5.0, 0.0]},
            ],
        }
    ]
    vol = open_volume(tmp_path / "h.zarr")
    assert vol.attrs["scale"] == {"z": 20.0, "y": 30.0, "x": 40.0}
    assert vol.attrs["translation"] == {"z": 10.0, "y": 15.0, "x": 10.0}
    np.testing.assert_allclose(vol.coords["y"], 15.0 + 30.0 * np.arange(14))
    assert vol.attrs["units"]["z"] == "millimeter"


def test_plain_zarr_array_opens_with_a_warning(tmp_path, volume):
    zarr.create_array(tmp_path / "plain.zarr", shape=SHAPE, chunks=CHUNKS, dtype="uint16")[:] = (
        volume
    )
    with pytest.warns(MissingScaleWarning, match="no physical scale"):
        vol = open_volume(tmp_path / "plain.zarr")
    assert issubclass(MissingScaleWarning, UserWarning)
    assert vol.dims == ("z", "y", "x")
    assert vol.attrs["scale"] == {"z": 1.0, "y": 1.0, "x": 1.0}
    assert vol.attrs["ngff_version"] is None
    np.testing.assert_array_equal(vol.values, volume)
    info = volume_info(tmp_path / "plain.zarr")
    assert info["ngff_version"] is None and info["warnings"]
    assert "plain zarr" in format_info(info)


# --------------------------------------------------------------------------------------------
# errors


def test_open_errors_are_one_line_and_name_the_path(tmp_path, volume):
    with pytest.raises(VolumeFormatError, match="does not exist") as e:
        open_volume(tmp_path / "missing.zarr")
    assert "missing.zarr" in one_line(e)

    (tmp_path / "file.tif").write_bytes(b"II*\x00")
    with pytest.raises(VolumeFormatError, match="is a file, not a zarr store") as e:
        open_volume(tmp_path / "file.tif")
    assert "vstain-dask import" in one_line(e)

    (tmp_path / "folder").mkdir()
    with pytest.raises(VolumeFormatError, match="not a zarr store"):
        open_volume(tmp_path / "folder")

    zarr.open_group(tmp_path / "empty.zarr", mode="w")
    with pytest.raises(VolumeFormatError, match="without OME-Zarr metadata and without arrays"):
        open_volume(tmp_path / "empty.zarr")

    out = write_volume(volume, tmp_path / "v.zarr", chunks=CHUNKS, n_levels=3)
    with pytest.raises(VolumeFormatError, match=r"0\.\.2 .* 3 levels") as e:
        open_volume(out, level=3)
    assert "v.zarr" in one_line(e)


def test_unsupported_axes_are_refused(tmp_path):
    group = zarr.open_group(tmp_path / "t.zarr", mode="w", zarr_format=2)
    group.create_array("0", shape=(2, 1, 4, 5, 6), chunks=(1, 1, 4, 5, 6), dtype="uint8")
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "t", "type": "time"},
                {"name": "c", "type": "channel"},
                *({"name": n, "type": "space"} for n in "zyx"),
            ],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1] * 5}]}
            ],
        }
    ]
    with pytest.raises(VolumeFormatError, match=r"axes \(t, c, z, y, x\)") as e:
        open_volume(tmp_path / "t.zarr")
    assert "t.zarr" in one_line(e)


def test_existing_output_is_refused_and_left_untouched(tmp_path, volume):
    out = write_volume(volume, tmp_path / "v.zarr", chunks=CHUNKS)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(OutputExistsError, match="--overwrite") as e:
        write_volume(volume + 1, out, chunks=CHUNKS)
    assert "v.zarr" in one_line(e)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    write_volume(volume + 1, out, chunks=CHUNKS, overwrite=True)
    np.testing.assert_array_equal(open_volume(out).values, volume + 1)

    # something that is not a zarr store is never deleted, even with overwrite
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="not a zarr store"):
        write_volume(volume, tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "keep"


def test_parameter_errors_name_the_parameter(tmp_path, volume):
    with pytest.raises(InputError, match="chunks must have 3 values"):
        write_volume(volume, tmp_path / "a.zarr", chunks=(5, 7))
    with pytest.raises(InputError, match="unit must be an NGFF space unit"):
        write_volume(volume, tmp_path / "a.zarr", units="parsecs per hour")
    with pytest.raises(InputError, match="scale must be finite positive"):
        write_volume(volume, tmp_path / "a.zarr", scale=(1, 0, 1))
    with pytest.raises(InputError, match="ngff_version must be one of '0.4', '0.5', got '0.6'"):
        write_volume(volume, tmp_path / "a.zarr", ngff_version="0.6")
    with pytest.raises(InputError, match="JSON-serializable"):
        write_volume(volume, tmp_path / "a.zarr", attrs={"x": object()})
    with pytest.raises(InputError, match="axes must be one of"):
        write_volume(volume, tmp_path / "a.zarr", axes="tyx")
    assert not (tmp_path / "a.zarr").exists()


# --------------------------------------------------------------------------------------------
# inspection and copying


def test_volume_info_and_format_info(tmp_path, volume):
    out = write_volume(volume, tmp_path / "v.ome.zarr", scale=(5, 2.5, 2.5), units="micrometer",
                       chunks=CHUNKS, n_levels=2, attrs={"model": "m1"})  # fmt: skip
    info = volume_info(out)
    json.dumps(info)  # JSON-serializable for `info --json`
    assert info["ngff_version"] == "0.5" and info["zarr_format"] == 3
    assert info["axes"] == ["z", "y", "x"] and info["shape"] == [10, 14, 12]
    assert info["dtype"] == "uint16" and info["chunks"] == [5, 7, 6]
    assert info["scale"] == {"z": 5.0, "y": 2.5, "x": 2.5}
    assert info["units"]["y"] == "micrometer"
    assert [lv["shape"] for lv in info["levels"]] == [[10, 14, 12], [5, 7, 6]]
    assert info["vstain"] == {"model": "m1", "complete": True}
    assert info["kind"] == VolumeKind.INTENSITY and info["incomplete"] is None
    assert info["compressors"] and "zstd" in info["compressors"][0]
    text = format_info(info)
    assert "OME-Zarr 0.5 (zarr v3)" in text
    assert "10 x 14 x 12" in text and "z 5 micrometer, y 2.5 micrometer" in text
    assert "model: m1" in text
    assert len(text.splitlines()) > 10


def test_write_volume_copies_metadata_from_open_volume(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 256, (3, *SHAPE), dtype=np.uint8)
    src = write_volume(rgb, tmp_path / "a.zarr", kind="rgb", scale=(4, 3, 2), units="nanometer",
                       translation=(1, 2, 3), chunks=CHUNKS, ngff_version="0.4")  # fmt: skip
    copy = write_volume(open_volume(src), tmp_path / "b.zarr", kind="rgb", chunks=CHUNKS)
    a, b = open_volume(src), open_volume(copy)
    for key in ("scale", "units", "translation", "channels"):
        assert a.attrs[key] == b.attrs[key]
    assert b.attrs["ngff_version"] == "0.5"
    np.testing.assert_array_equal(a.values, b.values)
    with pytest.raises(InputError, match="being read"):
        write_volume(open_volume(src), src, kind="rgb", overwrite=True)


# --------------------------------------------------------------------------------------------
# distributed


@pytest.mark.filterwarnings(
    # the shared cluster fixture moves its HTTP server to a free port when another cluster on
    # this machine holds the default one, and says so with a UserWarning
    "ignore:Port 8787 is already in use:UserWarning"
)
def test_writes_through_a_distributed_client(tmp_path, volume, client):
    from distributed import get_task_stream

    rgb = np.stack([volume >> 8, volume >> 9, volume >> 10]).astype(np.uint8)
    with get_task_stream(client) as stream, warnings.catch_warnings():
        warnings.simplefilter("error")
        out = write_volume(
            da.from_array(rgb, chunks=(3, 5, 7, 6)), tmp_path / "d.zarr", kind="rgb",
            chunks=CHUNKS, n_levels=3,
        )  # fmt: skip
        write_labels(out, "mask", da.from_array(volume > 1000, chunks=CHUNKS))
    ref = reference_pyramid(rgb, (1, 2, 2, 2), "mean", 3)
    for level in range(3):
        np.testing.assert_array_equal(open_volume(out, level=level).values, ref[level])
    lab = open_volume(Path(out) / "labels" / "mask", level=2)
    np.testing.assert_array_equal(lab.values, (volume > 1000)[::4, ::4, ::4])
    # the chunk writes and the pyramid ran as tasks on the cluster's worker processes
    keys = [str(t["key"]) for t in stream.data]
    assert any("store" in k for k in keys)
    # image and labels: one chunk at each of levels 1 and 2, plus the task that gathers them
    assert sum("pyramid-" in k for k in keys) == 2 * 3
