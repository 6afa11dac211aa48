"""The lazy ``vstain_dask.stain`` compares an OME-Zarr volume's voxel size with the model's
pixel size as ``vstain-dask stain`` does: within 10 % it stains the volume as it is; beyond,
it stains the volume resampled lazily to the model's size (``resample="auto"``, the default),
refuses in one line (``"check"``) or stains at the volume's size with a warning (``"off"``);
a model that records no pixel size gives a warning. The tiny model of ``model_path`` records
5 µm."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from test_stain_resample import _sized, _volume

from vstain_dask import ngff
from vstain_dask.errors import InputError
from vstain_dask.stain import stain

#: small tiles and steps on the CPU, in float32, so that a stain of a few planes is quick
OPTIONS = {"tile": 16, "step": 8, "batch_size": 4, "device": "cpu", "autocast": False,
           "compile": False}  # fmt: skip
CHUNKS = (3, 8, 8)


def _computed(lazy) -> np.ndarray:
    return lazy.data.compute(scheduler="synchronous")


def test_a_finer_volume_is_stained_at_the_model_size_like_the_volume_imported_there(
    tmp_path, model_path, caplog
):
    src = _volume(tmp_path / "ct.ome.zarr", (12, 40, 36), 2.5)
    with caplog.at_level(logging.INFO, logger="vstain_dask.stain.lazy"):
        lazy = stain(ngff.open_volume(src), model_path, chunks=CHUNKS, **OPTIONS)
    assert lazy.shape == (3, 6, 20, 18)  # floor(n * 2.5 / 5), nothing computed yet
    assert lazy.attrs["scale"] == {"z": 5.0, "y": 5.0, "x": 5.0}
    # voxel 0 averages input voxels 0 and 1 (centres 0 and 2.5 µm)
    for d in "zyx":
        np.testing.assert_allclose(lazy.coords[d].values, 1.25 + 5.0 * np.arange(lazy.sizes[d]))
    record = lazy.attrs["pixel_size"]
    assert record["decision"] == "resampled to the model's pixel size"
    assert record["model"] == 5.0 and record["resampled"]["factors"] == dict.fromkeys("zyx", 2.0)
    assert [r.getMessage() for r in caplog.records] == [
        "resampling the volume (2.5 µm) to the model's pixel size (5 µm) in every axis by area "
        "averaging; the stain is written at 5 µm (--resample off stains at the volume's size)"
    ]
    # the same bytes as the volume resampled by import and stained at its own size
    pre = ngff.import_volume(src, tmp_path / "pre.ome.zarr", voxel_size_out=5, chunks=(5, 9, 7))
    ref = stain(ngff.open_volume(pre), model_path, chunks=CHUNKS, **OPTIONS)
    assert ref.attrs["pixel_size"]["decision"] == "match"
    np.testing.assert_array_equal(_computed(lazy), _computed(ref))
    for d in "zyx":
        np.testing.assert_allclose(lazy.coords[d].values, ref.coords[d].values)


def test_a_coarser_volume_is_interpolated_to_the_model_size(tmp_path, model_path):
    src = _volume(tmp_path / "ct.ome.zarr", (5, 12, 10), 10.0)
    lazy = stain(ngff.open_volume(src), model_path, chunks=CHUNKS, **OPTIONS)
    assert lazy.shape == (3, 10, 24, 20) and lazy.attrs["scale"]["x"] == 5.0
    # output voxel 0 covers the first half of input voxel 0 (centre 0, 10 µm wide)
    assert lazy.coords["x"].values[0] == pytest.approx(-2.5)
    assert lazy.attrs["pixel_size"]["resampled"]["methods"] == dict.fromkeys(
        "zyx", "linear interpolation"
    )
    out = _computed(lazy)
    assert out.dtype == np.uint8 and out.std() > 0  # stained, not an empty canvas


def test_a_mismatch_is_refused_with_check_and_stained_as_it_is_with_off(tmp_path, model_path):
    src = _volume(tmp_path / "ct.ome.zarr", (4, 20, 18), 2.5)
    vol = ngff.open_volume(src)
    with pytest.raises(InputError) as refused:
        stain(vol, model_path, resample="check", **OPTIONS)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(
        "the volume's voxel size (2.5 µm) differs from the model's pixel size (5 µm) by more "
        "than 10%"
    )
    assert "--voxel-size-out 5" in message and "off" in message
    with pytest.warns(UserWarning, match=r"staining at the volume's voxel size \(2\.5 µm\)"):
        lazy = stain(vol, model_path, resample="off", chunks=CHUNKS, **OPTIONS)
    assert lazy.shape == (3, 4, 20, 18) and lazy.attrs["scale"]["x"] == 2.5
    assert lazy.attrs["pixel_size"]["decision"].startswith("mismatch, stained at the volume's")


def test_within_ten_percent_the_volume_is_stained_as_it_is(tmp_path, model_path):
    src = _volume(tmp_path / "ct.ome.zarr", (4, 20, 18), 5.4)
    lazy = stain(ngff.open_volume(src), model_path, chunks=CHUNKS, **OPTIONS)  # no warning
    assert lazy.shape == (3, 4, 20, 18) and lazy.attrs["scale"]["x"] == 5.4
    assert lazy.attrs["pixel_size"]["decision"] == "match"


def test_a_model_without_pixel_size_is_a_warning_and_a_plain_array_is_not_checked(
    tmp_path, model_path
):
    src = _volume(tmp_path / "ct.ome.zarr", (4, 20, 18), 2.5)
    vol = ngff.open_volume(src)
    unsized = _sized(model_path, tmp_path / "unsized.pt", None)
    with pytest.warns(UserWarning, match="the model records no pixel size"):
        lazy = stain(vol, unsized, chunks=CHUNKS, **OPTIONS)
    assert lazy.shape == (3, 4, 20, 18)  # nothing guessed: the volume as it is
    assert lazy.attrs["pixel_size"]["decision"] == "model records no pixel size"
    # a plain array carries no voxel size: stained as given, with nothing to compare
    plain = stain(np.asarray(vol.data), model_path, chunks=CHUNKS, **OPTIONS)
    assert plain.shape == (3, 4, 20, 18) and "pixel_size" not in plain.attrs
    # the same weights: the unsized model's stain is that of the volume at its own size
    np.testing.assert_array_equal(_computed(plain), _computed(lazy))
