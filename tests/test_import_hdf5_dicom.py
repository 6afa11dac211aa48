"""Beamline volume formats in: HDF5 (DXchange layout) through h5py and DICOM series through
pydicom, read lazily, with their voxel sizes; refusals as one line through the command line."""

from __future__ import annotations

import sys

import dask
import h5py
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from test_wsi import assert_one_line_error, run

from vstain_dask.errors import VolumeFormatError
from vstain_dask.ngff import import_volume, open_volume
from vstain_dask.ngff._import import _open_source

SHAPE = (13, 30, 27)  # chunked 5,7,6 below: no chunk divides the volume


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4096, SHAPE).astype(np.uint16)


def write_dxchange(path, volume, *, extra=True, pixel_um=0.65, units="microns"):
    with h5py.File(path, "w") as f:
        f.create_dataset("/exchange/data", data=volume, chunks=(4, 8, 8), compression="gzip")
        if extra:  # what a raw DXchange file holds beside the data
            f.create_dataset("/exchange/data_white", data=volume[:2])
            f.create_dataset("/exchange/data_dark", data=volume[:3])
            f.create_dataset("/exchange/theta", data=np.linspace(0, 180, SHAPE[0]))
        if pixel_um is not None:
            det = f.create_group("/measurement/instrument/detector")
            for axis in ("x", "y"):
                det[f"actual_pixel_size_{axis}"] = pixel_um
                if units:
                    det[f"actual_pixel_size_{axis}"].attrs["units"] = units


# --------------------------------------------------------------------------------------------
# HDF5


def test_hdf5_dataset_voxels_and_size(tmp_path, volume):
    src = tmp_path / "scan.h5"
    write_dxchange(src, volume)
    out = tmp_path / "v.ome.zarr"
    result = run("import", src, out, "--dataset", "/exchange/data", "--chunks", "5,7,6")
    assert result.exit_code == 0, result.output
    assert "0.65 µm from the DXchange detector actual_pixel_size" in result.output
    vol = open_volume(out)
    np.testing.assert_array_equal(np.asarray(vol.data), volume)
    assert vol.attrs["scale"] == {"z": 0.65, "y": 0.65, "x": 0.65}
    record = vol.attrs["vstain"]["import"]
    assert record["dataset"] == "/exchange/data" and record["dataset_chosen_by"] == "--dataset"
    assert vol.attrs["vstain"]["complete"] is True


def test_hdf5_only_3d_dataset_is_picked_and_said(tmp_path, volume):
    src = tmp_path / "recon.hdf5"
    write_dxchange(src, volume, extra=False, pixel_um=1.2e-6, units=None)  # SI metres, no unit
    out = tmp_path / "v.ome.zarr"
    result = run("import", src, out)
    assert result.exit_code == 0, result.output
    assert "dataset /exchange/data (the only 3D dataset)" in result.output
    vol = open_volume(out)
    assert vol.attrs["scale"]["x"] == pytest.approx(1.2)
    np.testing.assert_array_equal(np.asarray(vol.data), volume)


def test_hdf5_without_size_needs_voxel_size(tmp_path, volume):
    src = tmp_path / "plain.h5"
    write_dxchange(src, volume, extra=False, pixel_um=None)
    assert_one_line_error(run("import", src, tmp_path / "o.zarr"), "--voxel-size")
    result = run("import", src, tmp_path / "o.zarr", "--voxel-size", 3)
    assert result.exit_code == 0, result.output


def test_hdf5_refusals(tmp_path, volume):
    src = tmp_path / "scan.h5"
    write_dxchange(src, volume)
    err = assert_one_line_error(run("import", src, tmp_path / "a.zarr"), "--dataset")
    for name in ("/exchange/data ", "/exchange/data_white", "/exchange/data_dark"):
        assert name in err
    assert "/exchange/theta" not in err  # 1D: not a volume
    err = assert_one_line_error(
        run("import", src, tmp_path / "b.zarr", "--dataset", "/exchange/nope"), "/exchange/nope"
    )
    assert "/exchange/theta" in err  # everything the file holds is listed
    npy = tmp_path / "v.npy"
    np.save(npy, volume)
    assert_one_line_error(
        run("import", npy, tmp_path / "c.zarr", "--voxel-size", 1, "--dataset", "/x"), "HDF5"
    )
    for name in ("a.zarr", "b.zarr", "c.zarr"):
        assert not (tmp_path / name).exists()


def test_hdf5_reads_in_tasks_that_open_the_file(tmp_path, volume):
    """No shared handle: the graph runs in other processes (as on distributed workers) and
    on threads."""
    src = tmp_path / "scan.h5"
    write_dxchange(src, volume, extra=False)
    opened, _ = _open_source(src, shape=None, dtype=None, chunks=(5, 7, 6))
    assert opened.data.chunks[0] == (5, 5, 3)
    with dask.config.set(scheduler="processes", num_workers=2):
        np.testing.assert_array_equal(opened.data.compute(), volume)
    with dask.config.set(scheduler="threads", num_workers=4):
        np.testing.assert_array_equal(opened.data.compute(), volume)


def test_store_is_complete_only_at_the_end(tmp_path, volume, monkeypatch):
    from vstain_dask.ngff import _hdf5

    src = tmp_path / "scan.h5"
    write_dxchange(src, volume, extra=False)
    real = _hdf5._read_region

    def fail_late(path, name, index):
        if index[0].start >= 10:
            raise VolumeFormatError("simulated damaged chunk")
        return real(path, name, index)

    monkeypatch.setattr(_hdf5, "_read_region", fail_late)
    out = tmp_path / "v.ome.zarr"
    with pytest.raises(VolumeFormatError, match="simulated"):
        import_volume(src, out, chunks=(5, 7, 6))
    assert_one_line_error(run("info", out), "incomplete")
    with pytest.raises(VolumeFormatError):
        open_volume(out)


@pytest.mark.parametrize(
    ("module", "source", "extra"),
    [("h5py", "scan.h5", "vstain-dask[hdf5]"), ("pydicom", "series", "vstain-dask[dicom]")],
)
def test_missing_extra_is_named(tmp_path, volume, monkeypatch, module, source, extra):
    src = tmp_path / source
    if module == "h5py":
        write_dxchange(src, volume)
    else:
        write_series(src, volume, spacing=0.1)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    assert_one_line_error(run("import", src, tmp_path / "o.zarr"), extra)


# --------------------------------------------------------------------------------------------
# DICOM


def write_series(folder, volume, *, spacing, positions=None, intercept=-1024.0, seed=1):
    """A CT series written with pydicom's dataset API: an oblique stack (the slice normal is
    not an axis), positions along it, file names in shuffled order, slices written in shuffled
    order."""
    folder.mkdir()
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    row, col = np.array([1.0, 0, 0]), np.array([0, c, s])
    normal = np.cross(row, col)
    if positions is None:
        positions = np.arange(len(volume)) * spacing
    rng = np.random.default_rng(seed)
    names = rng.permutation(len(volume))
    series = generate_uid()
    for k in rng.permutation(len(volume)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Modality = "CT"
        ds.InstanceNumber = int(names[k]) + 1  # deliberately not the slice order
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.PixelSpacing = [0.05, 0.04]  # mm: rows (y), columns (x)
        ds.ImageOrientationPatient = [*row, *col]
        # an in-plane offset moves the origin without changing the depth
        ds.ImagePositionPatient = list(10 + positions[k] * normal + 0.3 * k * row)
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        ds.PixelData = volume[k].astype("<u2").tobytes()
        ds.save_as(folder / f"IM{names[k]:04d}.dcm", enforce_file_format=True)


def test_dicom_series_sorted_by_position(tmp_path, volume):
    src = tmp_path / "series"
    write_series(src, volume, spacing=0.03)
    assert pydicom.dcmread(next(src.iterdir())).Modality == "CT"
    out = tmp_path / "v.ome.zarr"
    result = run("import", src, out, "--chunks", "5,7,6")
    assert result.exit_code == 0, result.output
    vol = open_volume(out)
    got = np.asarray(vol.data)
    assert got.dtype == np.int16  # 12 stored bits minus 1024 fit in int16
    np.testing.assert_array_equal(got, volume.astype(np.int32) - 1024)
    assert vol.attrs["scale"] == pytest.approx({"z": 30.0, "y": 50.0, "x": 40.0})
    record = vol.attrs["vstain"]["import"]
    assert record["rescale"] == [{"slope": 1.0, "intercept": -1024.0}]
    assert "ImagePositionPatient" in record["slices_sorted_by"]
    assert record["voxel_size_source"] == "the DICOM PixelSpacing and slice positions"


def test_dicom_without_rescale_keeps_the_stored_type(tmp_path, volume):
    src = tmp_path / "series"
    write_series(src, volume, spacing=0.1, intercept=0.0)
    vol = open_volume(import_volume(src, tmp_path / "v.ome.zarr"))
    assert vol.data.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(vol.data), volume)


def test_dicom_unequal_spacing_is_refused(tmp_path, volume):
    src = tmp_path / "series"
    positions = np.arange(len(volume)) * 0.1
    positions[7:] += 0.1  # a missing slice
    write_series(src, volume, spacing=0.1, positions=positions)
    assert_one_line_error(run("import", src, tmp_path / "o.zarr"), "unequally spaced")
    assert not (tmp_path / "o.zarr").exists()
