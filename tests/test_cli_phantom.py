"""``vstain-dask phantom`` and ``vstain-dask phantom-pairs`` from the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vstain_dask.cli import main
from vstain_dask.pairs import list_pairs


@pytest.fixture
def runner():
    return CliRunner()


def _run(runner, *args):
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_phantom_writes_store(runner, tmp_path):
    from vstain_dask import ngff

    out = tmp_path / "p.ome.zarr"
    r = _run(runner, "phantom", out, "--shape", "10,14,12", "--material", "Ti", "--seed", 3,
             "--chunks", "5,7,6", "--voxel-size", 2.5, "--no-progress")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output and "ti phantom 10x14x12 at 2.5 µm" in r.output
    vol = ngff.open_volume(out)
    assert vol.shape == (10, 14, 12) and vol.attrs["scale"]["x"] == 2.5
    assert vol.attrs["vstain"]["material"] == "ti" and vol.attrs["vstain"]["seed"] == 3
    assert (out / "labels" / "tissue").exists()


def test_phantom_material_defaults_to_mg(runner, tmp_path):
    from vstain_dask import ngff

    out = tmp_path / "p.ome.zarr"
    r = _run(runner, "phantom", out, "--shape", "8,16,16", "--seed", 3, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "mg phantom 8x16x16" in r.output
    assert ngff.open_volume(out).attrs["vstain"]["material"] == "mg"


def test_phantom_ngff_04_and_progress(runner, tmp_path):
    from vstain_dask import ngff

    out = tmp_path / "p04.zarr"
    r = _run(runner, "phantom", out, "--shape", "8,16,16", "--material", "peek", "--seed", 0,
             "--ngff-version", "0.4")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert ngff.open_volume(out).attrs["ngff_version"] == "0.4"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shape", "10,14", "--material", "mg", "--seed", "0"], "expected 3 integers"),
        (["--shape", "10,0,12", "--material", "mg", "--seed", "0"], "expected positive integers"),
        (["--shape", "10,a,12", "--material", "mg", "--seed", "0"], "comma-separated integers"),
        (["--shape", "10,14,12", "--material", "fe", "--seed", "0"], "'fe' is not one of"),
        (["--shape", "10,14,12", "--material", "mg", "--seed", "-1"], "--seed"),
        (["--shape", "10,14,12", "--material", "mg"], "Missing option '--seed'"),
        (["--shape", "10,14,12", "--material", "mg", "--seed", "0", "--voxel-size", "0"],
         "--voxel-size"),
    ],
)  # fmt: skip
def test_phantom_bad_options(runner, tmp_path, args, message):
    r = runner.invoke(main, ["phantom", str(tmp_path / "x.zarr"), *args])
    assert r.exit_code == 2
    assert message in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "x.zarr").exists()


def test_phantom_existing_output(runner, tmp_path):
    out = tmp_path / "p.zarr"
    args = ["phantom", out, "--shape", "10,14,12", "--material", "mg", "--seed", 1, "--no-progress"]
    assert _run(runner, *args).exit_code == 0
    r = runner.invoke(main, [str(a) for a in args])
    assert r.exit_code == 2
    assert "already exists" in r.output and "--overwrite" in r.output
    assert _run(runner, *args, "--overwrite").exit_code == 0


def test_phantom_pairs(runner, tmp_path):
    out = tmp_path / "pairs.zarr"
    r = _run(runner, "phantom-pairs", out, "--n", 10, "--seed", 4, "--size", "32,48",
             "--no-progress")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "10 pairs of 32x48 px at 5 µm (7 mg, 1 ti, 2 peek; " in r.output
    pairs = list_pairs(out)
    assert Counter(p["material"] for p in pairs) == {"mg": 7, "ti": 1, "peek": 2}
    r = runner.invoke(main, ["phantom-pairs", str(out), "--n", "2", "--seed", "4"])
    assert r.exit_code == 2 and "already exists" in r.output
    r = runner.invoke(main, ["phantom-pairs", str(out), "--n", "0", "--seed", "4"])
    assert r.exit_code == 2 and "--n" in r.output
    r = runner.invoke(
        main, ["phantom-pairs", str(out), "--seed", "4", "--size", "8,8", "--overwrite"]
    )
    assert r.exit_code == 2 and "size must be at least 16" in r.output


def _entry_point() -> list[str]:
    exe = shutil.which("vstain-dask") or str(Path(sys.executable).parent / "vstain-dask")
    if not Path(exe).exists():
        pytest.skip("the vstain-dask entry point is not installed (pip install -e .)")
    return [exe]


def test_entry_point_subprocess(tmp_path):
    exe = _entry_point()
    env = dict(os.environ)
    out = tmp_path / "sub.zarr"
    ok = subprocess.run([*exe, "phantom", str(out), "--shape", "6,16,16", "--material", "mg",
                         "--seed", "2", "--no-progress"],
                        capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout
    again = subprocess.run([*exe, "phantom", str(out), "--shape", "6,16,16", "--material", "mg",
                            "--seed", "2"],
                           capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert again.returncode == 2
    assert "error: output" in again.stderr and "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    bad = subprocess.run([*exe, "phantom-pairs", str(tmp_path / "p.zarr"), "--seed", "x"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "'x' is not a valid integer" in bad.stderr or "--seed" in bad.stderr
    assert np.array_equal([ok.returncode, again.returncode, bad.returncode], [0, 2, 2])
