"""Never a wrong output marked complete: a stain killed with SIGKILL at a real moment, then
what users do next (delete the partial output, replace the input, resume). Each case ends in
bytes equal to a clean run, or in a refusal of one line with exit 2 and nothing touched."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vstain_dask import ngff
from vstain_dask.stain import _Ledger

pytestmark = pytest.mark.slow


def _args(src, model_path):
    return ["stain", str(src), "--model", str(model_path), "--tile", "16", "--step", "8",
            "--batch-size", "4", "--chunks", "1,16,16", "--workers", "1", "--ct-levels", "none",
            "--no-progress"]  # fmt: skip


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "vstain_dask.cli", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _kill_after(args, out, n_blocks: int) -> int:
    """Start the stain, SIGKILL its whole process group once ``n_blocks`` are recorded."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.Popen([sys.executable, "-m", "vstain_dask.cli", *args, "-o", str(out)], env=env,
                         start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)  # fmt: skip
    ledger = _Ledger(out)
    deadline = time.time() + 240
    while time.time() < deadline and len(ledger.done()) < n_blocks and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    n = len(ledger.done())
    assert n_blocks <= n < 10, f"the job should have been killed mid-run ({n} done)"
    return n


def _stained(path):
    return np.asarray(ngff.level_array(path, allow_incomplete=True)[...])


@pytest.fixture(scope="module")
def clean_store(ct, model_path, tmp_path_factory):
    src, _ = ct
    out = tmp_path_factory.mktemp("clean") / "clean.zarr"
    r = _cli(*_args(src, model_path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def clean(clean_store):
    return _stained(clean_store)


def test_records_of_a_deleted_output_never_count(ct, model_path, clean, tmp_path):
    """Killed, partial output deleted by hand, same command again: every block is stained
    again (the records beside the output said otherwise), with a line saying so."""
    src, _ = ct
    out = tmp_path / "out.zarr"
    args = _args(src, model_path)
    n = _kill_after(args, out, 2)
    shutil.rmtree(out)
    r = _cli(*args, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "(0 resumed)" in r.stdout
    assert f"warning: discarded {n} finished-block record(s)" in r.stderr
    assert f"{out} no longer exists" in r.stderr
    np.testing.assert_array_equal(_stained(out), clean)
    assert ngff.open_volume(out).attrs["vstain"]["complete"] is True


def test_records_from_another_output_never_count(ct, model_path, clean, tmp_path):
    """Two killed jobs; the partial output of one moved in place of the other's: resuming it
    must not trust the ledger beside it, which belongs to the other output."""
    src, _ = ct
    args = _args(src, model_path)
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    _kill_after(args, a, 3)
    _kill_after(args, b, 2)
    shutil.rmtree(a)
    shutil.move(b, a)  # b's partial store, a's ledger
    r = _cli(*args, "-o", str(a), "--resume")
    assert r.returncode == 0, r.stderr
    assert "warning: discarded" in r.stderr and f"not written into {a}" in r.stderr
    np.testing.assert_array_equal(_stained(a), clean)


def test_resume_refuses_an_input_replaced_in_place(ct, model_path, tmp_path):
    """Same path, same shape, other content: the resume is refused in one line, exit 2, and
    the partial output and its records are left as they were."""
    src0, vol = ct
    src = tmp_path / "ct.ome.zarr"
    shutil.copytree(src0, src)
    out = tmp_path / "out.zarr"
    args = _args(src, model_path)
    n = _kill_after(args, out, 2)
    ngff.write_volume((vol[::-1]).copy(), src, axes="zyx", scale=(5.0, 5.0, 5.0),
                      units="micrometer", chunks=(5, 16, 16), overwrite=True)  # fmt: skip
    before = _stained(out)
    r = _cli(*args, "-o", str(out), "--resume")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"error: the input {src} changed since the stain into {out} started (same path, other "
        "content); --resume needs the input it started from, or use --overwrite to start again"
    ]
    np.testing.assert_array_equal(_stained(out), before)
    assert len(_Ledger(out).done()) == n


def test_resume_into_a_folder_that_is_not_a_stain_says_so(ct, model_path, tmp_path):
    src, vol = ct
    other = tmp_path / "other.ome.zarr"
    ngff.write_volume(vol, other, axes="zyx", chunks=(5, 16, 16))
    r = _cli(*_args(src, model_path), "-o", str(other), "--resume")
    assert r.returncode == 2
    assert "is not a stain written by vstain-dask, so there is nothing to resume" in r.stderr
    np.testing.assert_array_equal(_stained(other), vol)


def test_a_failed_import_leaves_a_store_that_every_command_refuses(model_path, tmp_path):
    """A folder of TIFF slices with one truncated: the import fails in one line, and the store
    it had started is refused by info, stain and preview, each saying how to redo it."""
    import tifffile

    slices = tmp_path / "slices"
    slices.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        tifffile.imwrite(slices / f"s{i}.tif", rng.integers(0, 4000, (32, 32), dtype=np.uint16))
    broken = slices / "s2.tif"
    broken.write_bytes(broken.read_bytes()[:300])
    out = tmp_path / "ct.ome.zarr"
    r = _cli("import", str(slices), str(out), "--voxel-size", "5")
    assert r.returncode == 2 and r.stderr.startswith(f"error: {broken} ended early")
    assert out.exists()  # what was started stays, for inspection, but marked incomplete
    redo = (f"is incomplete: its import from {slices} did not finish; run the `vstain-dask "
            "import` command again with --overwrite")  # fmt: skip
    info = _cli("info", str(out))
    assert info.returncode == 2
    assert info.stdout.startswith(f"INCOMPLETE:  its import from {slices} did not finish")
    assert info.stderr.strip() == f"error: {out} {redo}"
    stain = _cli("stain", str(out), "--model", str(model_path), "-o", str(tmp_path / "s.zarr"))
    assert stain.returncode == 2 and stain.stderr.strip() == f"error: {out} {redo}"
    assert not (tmp_path / "s.zarr").exists()
    # fixed input, --overwrite: a complete volume
    tifffile.imwrite(broken, rng.integers(0, 4000, (32, 32), dtype=np.uint16))
    r = _cli("import", str(slices), str(out), "--voxel-size", "5", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert _cli("info", str(out)).returncode == 0


def test_preview_and_seams_refuse_an_unfinished_stain(ct, model_path, tmp_path):
    src, _ = ct
    out = tmp_path / "out.zarr"
    _kill_after(_args(src, model_path), out, 2)
    redo = f"error: {out} is incomplete: its stain did not finish; run the same `vstain-dask " \
           "stain` command with --resume to finish it"  # fmt: skip
    png = tmp_path / "views.png"
    r = _cli("preview", str(out), "-o", str(png))
    assert r.returncode == 2 and r.stderr.strip() == redo
    assert not png.exists()
    r = _cli("seams", str(out))
    assert r.returncode == 2 and r.stderr.strip() == redo


def test_preview_never_overwrites_a_png_unless_asked(clean_store, tmp_path):
    png = tmp_path / "views.png"
    png.write_bytes(b"not to be lost")
    r = _cli("preview", str(clean_store), "-o", str(png))
    assert r.returncode == 2
    assert (
        r.stderr.strip() == f"error: {png} exists; use --overwrite to replace it, or -o another PNG"
    )
    assert png.read_bytes() == b"not to be lost"
    r = _cli("preview", str(clean_store), "-o", str(png), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
