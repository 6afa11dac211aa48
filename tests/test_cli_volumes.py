"""``vstain-dask import`` and ``vstain-dask info``: exit codes, one-line messages, outputs."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from vstain_dask.cli import main
from vstain_dask.ngff import open_volume

SHAPE = (10, 14, 12)


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 65535, SHAPE, dtype=np.uint16)


@pytest.fixture
def stack(tmp_path, volume):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, volume, photometric="minisblack")
    return path


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_import_then_info(tmp_path, stack, volume):
    out = tmp_path / "v.ome.zarr"
    result = run("import", stack, out, "--voxel-size", "5", "--chunks", "5,7,6")
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    assert "10 x 14 x 12" in result.stdout
    vol = open_volume(out)
    np.testing.assert_array_equal(vol.values, volume)
    assert vol.data.chunksize == (5, 7, 6)
    assert vol.attrs["scale"] == {"z": 5.0, "y": 5.0, "x": 5.0}

    result = run("info", out)
    assert result.exit_code == 0
    assert "OME-Zarr 0.5 (zarr v3)" in result.stdout
    assert "z 5 micrometer, y 5 micrometer, x 5 micrometer" in result.stdout

    result = run("info", out, "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["shape"] == [10, 14, 12] and info["units"]["z"] == "micrometer"


def test_import_raw_anisotropic_ngff_04(tmp_path, volume):
    volume.astype(">u2").tofile(tmp_path / "v.raw")
    out = tmp_path / "v.zarr"
    result = run(
        "import", tmp_path / "v.raw", out, "--voxel-size", "5,2.5,2.5", "--unit", "um",
        "--shape", "10,14,12", "--dtype", ">u2", "--ngff-version", "0.4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    vol = open_volume(out)
    np.testing.assert_array_equal(vol.values, volume)
    assert vol.attrs["ngff_version"] == "0.4"
    assert vol.attrs["scale"] == {"z": 5.0, "y": 2.5, "x": 2.5}
    assert (out / ".zgroup").is_file()


def test_info_of_a_missing_path(tmp_path):
    assert_one_line_error(run("info", tmp_path / "none.zarr"), "none.zarr", "does not exist")


def test_info_of_a_file_that_is_not_a_store(stack):
    assert_one_line_error(run("info", stack), "stack.tif", "not a zarr store", "vstain-dask import")


def test_import_raw_without_shape(tmp_path, volume):
    volume.tofile(tmp_path / "v.raw")
    err = assert_one_line_error(
        run("import", tmp_path / "v.raw", tmp_path / "v.zarr", "--voxel-size", "5"),
        "--shape",
    )
    assert "--dtype" in err
    assert not (tmp_path / "v.zarr").exists()


def test_import_raw_of_the_wrong_size(tmp_path, volume):
    volume.tofile(tmp_path / "v.raw")
    assert_one_line_error(
        run(
            "import",
            tmp_path / "v.raw",
            tmp_path / "v.zarr",
            "--voxel-size",
            "5",
            "--shape",
            "10,14,13",
            "--dtype",
            "uint16",
        ),  # fmt: skip
        "3360 bytes",
        "3640 bytes",
    )


def test_import_refuses_existing_output_and_leaves_it_untouched(tmp_path, stack):
    out = tmp_path / "v.zarr"
    assert run("import", stack, out, "--voxel-size", "5").exit_code == 0
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    assert_one_line_error(run("import", stack, out, "--voxel-size", "7"), str(out), "--overwrite")
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert run("import", stack, out, "--voxel-size", "7", "--overwrite").exit_code == 0
    assert open_volume(out).attrs["scale"]["z"] == 7.0


def test_import_bad_chunks(tmp_path, stack):
    # wrong number of values: checked against the volume by the library
    assert_one_line_error(
        run("import", stack, tmp_path / "v.zarr", "--voxel-size", "5", "--chunks", "5,7"),
        "chunks must have 3 values",
    )
    # not positive integers: refused while parsing, with click's usage message
    result = run("import", stack, tmp_path / "v.zarr", "--voxel-size", "5", "--chunks", "0,7,7")
    assert result.exit_code == 2
    assert "Invalid value for '--chunks'" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "v.zarr").exists()


def test_real_entry_point(tmp_path, stack):
    exe = shutil.which("vstain-dask")
    assert exe, "the vstain-dask entry point is not installed"
    out = tmp_path / "v.zarr"
    assert run("import", stack, out, "--voxel-size", "5").exit_code == 0
    again = subprocess.run(
        [exe, "import", str(stack), str(out), "--voxel-size", "5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 2
    assert again.stderr.strip().startswith(f"error: output {out} already exists")
    assert "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert again.stdout == ""
