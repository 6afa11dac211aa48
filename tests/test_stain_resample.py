"""``stain`` brings a volume to its model's pixel size (``--resample auto``, the default):
area averaging for a finer volume, linear interpolation for a coarser one, block by block,
into the job's folder; the stain is written at the model's size with the NGFF scale and
translation of the resampled grid, and equals the stain of the volume resampled beforehand.
The tiny model of ``model_path`` records 5 µm."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from test_resample import area_reference, linear_reference

from vstain_dask import ngff
from vstain_dask.cli import main
from vstain_dask.models import load_model, save_model
from vstain_dask.stain import StainConfig, stain_to_zarr
from vstain_dask.stain.execute import _write_resampled
from vstain_dask.stain.job import check_inputs, plan_job, stained_grid

CONFIG = StainConfig(tile=16, step=8, batch_size=4)
#: output chunks: many blocks, so that the resampling has many block borders
CHUNKS = (3, 8, 8)


def _volume(path, shape, size):
    """A smooth random uint16 volume of ``size`` µm voxels with noise, chunked small."""
    from scipy import ndimage

    rng = np.random.default_rng(5)
    vol = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    vol = (vol - vol.min()) / np.ptp(vol) * 3000 + 500 + rng.normal(0, 40, shape)
    ngff.write_volume(
        vol.astype(np.uint16), path, axes="zyx", scale=size, units="micrometer", chunks=(4, 7, 6)
    )
    return path


def _stain(src, out, model, client):
    stain_to_zarr(src, out, model=model, config=CONFIG, client=client, chunks=CHUNKS,
                  progress=False)  # fmt: skip
    return ngff.open_volume(out)


def _resampled(src, model, client) -> np.ndarray:
    """The resampled input exactly as the job writes it (its lazy graph, on the cluster)."""
    grid = stained_grid(ngff.open_volume(src), model=model, config=CONFIG, chunks=CHUNKS)
    # block borders at every output chunk and more: the seam check below covers them
    assert all(len(c) >= 2 for c in grid.resampled.data.chunks)
    return client.compute(grid.resampled.data).result()


def test_a_finer_volume_is_averaged_to_the_model_size_as_import_does(tmp_path, model_path,
                                                                     client):  # fmt: skip
    src = _volume(tmp_path / "ct.ome.zarr", (12, 40, 36), 2.5)
    got = _stain(src, tmp_path / "auto.ome.zarr", model_path, client)
    assert got.shape == (3, 6, 20, 18)  # floor(n * 2.5 / 5)
    assert got.attrs["scale"] == {"c": 1.0, "z": 5.0, "y": 5.0, "x": 5.0}
    # voxel 0 of the output averages input voxels 0 and 1 (centres 0 and 2.5 µm)
    assert got.attrs["translation"] == {"c": 0.0, "z": 1.25, "y": 1.25, "x": 1.25}
    # the volume resampled beforehand by import, then stained at its own size: the same bytes
    pre = ngff.import_volume(src, tmp_path / "pre.ome.zarr", voxel_size_out=5, chunks=(5, 9, 7))
    ref = _stain(pre, tmp_path / "pre.stained.ome.zarr", model_path, client)
    assert ref.attrs["vstain"]["pixel_size"]["decision"] == "match"
    np.testing.assert_array_equal(np.asarray(got.data), np.asarray(ref.data))
    assert (got.attrs["scale"], got.attrs["translation"]) == (
        ref.attrs["scale"], ref.attrs["translation"])  # fmt: skip
    prov = got.attrs["vstain"]
    assert prov["input"]["path"] == str(src.resolve()) and prov["input"]["shape"] == [12, 40, 36]
    record = prov["pixel_size"]
    assert record["decision"] == "resampled to the model's pixel size"
    assert record["resampled"]["to"] == {"z": 5.0, "y": 5.0, "x": 5.0}
    assert record["resampled"]["factors"] == {"z": 2.0, "y": 2.0, "x": 2.0}
    assert record["resampled"]["shape"] == {"from": [12, 40, 36], "to": [6, 20, 18]}
    assert record["resampled"]["method"].startswith("area average")
    # the resampled copy went with the job's folder
    assert not (tmp_path / "auto.ome.zarr.vstain-job").exists()
    # no seams: the copy the job stains equals the whole-volume average, block borders included
    whole = area_reference(np.asarray(ngff.open_volume(src).data), (2, 2, 2), (0, 1, 2))
    assert np.abs(_resampled(src, model_path, client) - whole).max() <= 0.5 + 1e-6


def test_a_coarser_volume_is_interpolated_to_the_model_size(tmp_path, model_path, client):
    src = _volume(tmp_path / "ct.ome.zarr", (5, 12, 10), 10.0)
    got = _stain(src, tmp_path / "auto.ome.zarr", model_path, client)
    assert got.shape == (3, 10, 24, 20)
    assert got.attrs["scale"] == {"c": 1.0, "z": 5.0, "y": 5.0, "x": 5.0}
    # output voxel 0 covers the first half of input voxel 0 (centre 0, 10 µm wide)
    assert got.attrs["translation"] == {"c": 0.0, "z": -2.5, "y": -2.5, "x": -2.5}
    record = got.attrs["vstain"]["pixel_size"]["resampled"]
    assert record["methods"] == dict.fromkeys("zyx", "linear interpolation")
    # no seams: the resampled input equals scipy's whole-volume interpolation within rounding
    whole = linear_reference(np.asarray(ngff.open_volume(src).data), (0.5,) * 3, (0, 1, 2))
    resampled = _resampled(src, model_path, client)
    assert np.abs(resampled - whole).max() <= 0.5 + 1e-6
    # the reference volume, written at 5 µm and stained as it is: the same stain
    pre = ngff.write_volume(
        np.rint(whole).astype(np.uint16), tmp_path / "pre.ome.zarr", axes="zyx", scale=5.0,
        units="micrometer", translation=-2.5, chunks=(4, 16, 16),
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(ngff.open_volume(pre).data), resampled)
    ref = _stain(pre, tmp_path / "pre.stained.ome.zarr", model_path, client)
    np.testing.assert_array_equal(np.asarray(got.data), np.asarray(ref.data))
    assert got.attrs["translation"] == ref.attrs["translation"]


def test_a_resumed_job_reuses_its_resampled_copy_only_while_it_matches(tmp_path, model_path,
                                                                       client):  # fmt: skip
    src = _volume(tmp_path / "ct.ome.zarr", (6, 20, 18), 2.5)

    def job(chunks):
        s, vol, out = check_inputs(src, tmp_path / "out.ome.zarr")
        return plan_job(s, out, vol, model=model_path, config=CONFIG, chunks=chunks,
                        ngff_version="0.5")  # fmt: skip

    first = job(CHUNKS)
    _write_resampled(first, client)
    copy = first.read_source
    assert copy == tmp_path / "out.ome.zarr.vstain-job" / "input-5um.ome.zarr"
    stamp = (copy / "zarr.json").stat().st_mtime_ns
    _write_resampled(job(CHUNKS), client)  # the same record: kept
    assert (copy / "zarr.json").stat().st_mtime_ns == stamp
    _write_resampled(job((2, 5, 5)), client)  # other chunks: written again
    assert ngff.open_volume(copy).data.chunks[1][0] == 5
    ngff.update_provenance(copy, complete=False)  # as a write that stopped half-way leaves it
    _write_resampled(job((2, 5, 5)), client)
    assert ngff.open_volume(copy).attrs["vstain"]["complete"] is True


def _sized(model_path, path, pixel_size):
    m = load_model(model_path)
    return save_model(path, generator=m.generator, normalization=m.normalization,
                      variant=m.variant, pixel_size=pixel_size)  # fmt: skip


@pytest.mark.filterwarnings("always::UserWarning")
def test_cli_says_in_one_line_what_it_resampled(ct, model_path, tmp_path):
    src, _ = ct  # 10 x 40 x 36 voxels of 5 µm
    model = _sized(model_path, tmp_path / "m10.pt", 10.0)
    out = tmp_path / "out.ome.zarr"
    args = [
        "stain", str(src), "--model", str(model), "-o", str(out), "--tile", "16", "--step", "8",
        "--batch-size", "4", "--workers", "1", "--threads-per-worker", "1", "--ct-levels",
        "none", "--no-progress",
    ]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    said = [ln for ln in r.stderr.splitlines() if "resampl" in ln]
    assert said == [
        "resampling the volume (5 µm) to the model's pixel size (10 µm) in every axis by area "
        "averaging; the stain is written at 10 µm (--resample off stains at the volume's size)"
    ]
    assert not [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    vol = ngff.open_volume(out)
    assert vol.shape == (3, 5, 20, 18) and vol.attrs["scale"]["x"] == 10.0
    # a resume plans the same resampled job (same fingerprint): nothing left to do
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert "is already complete" in r.stdout
