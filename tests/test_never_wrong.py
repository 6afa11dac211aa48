"""Never a wrong output marked complete: a stain killed with SIGKILL at a real moment, then
what users do next (delete the partial output, replace the input, resume). Each case ends in
bytes equal to a clean run, or in a refusal of one line with exit 2 and nothing touched."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from vstain_dask import ngff
from vstain_dask.stain import _Ledger

pytestmark = pytest.mark.slow


#: the stain's own informational lines on stderr (where the dashboard is, the prefilter applied,
#: the CT levels used), which precede its one line of outcome
STAIN_INFO = ("dashboard: ", "prefilter: ", "CT levels: ")


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
    t0 = time.time()
    while time.time() < t0 + 240 and len(ledger.done()) < n_blocks and p.poll() is None:
        time.sleep(0.05)
    ended = p.poll()  # None: still running when killed
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    n = len(ledger.done())
    assert n_blocks <= n < 10, (
        f"the job should have been killed mid-run ({n} done after {time.time() - t0:.0f} s; "
        f"{'it had exited with ' + str(ended) if ended is not None else 'killed while running'})"
    )
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
    import imageio.v3 as iio

    img = iio.imread(png)[..., :3]  # the views of the stain, on white
    assert img.ndim == 3 and img.shape[1] >= 400
    assert (img[0, 0] == 255).all() and (img[-1, -1] == 255).all()
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # an image, not a blank page


# -- stopped by a signal: one line, then a resume to the same bytes ----------------------------

SIGNALS = {
    "Ctrl-C to the process group": (True, signal.SIGINT, 130, "interrupted"),
    "SIGINT to the main process alone": (False, signal.SIGINT, 130, "interrupted"),
    "SIGTERM to the main process alone": (False, signal.SIGTERM, 143, "terminated"),
    "SIGTERM to the process group": (True, signal.SIGTERM, 143, "terminated"),
}


def _group_gone(pgid: int, timeout: float = 20.0) -> bool:
    """Whether every process of the group ended (within ``timeout`` seconds)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("case", SIGNALS)
def test_a_stopped_stain_says_one_line_and_resumes_to_the_same_bytes(
    case, ct, model_path, clean, tmp_path
):
    """Nothing but our own lines on stderr (no worker tracebacks, no shutdown warnings: all
    warnings shown), the output left resumable, and --resume finishing it exactly."""
    group, sig, code, word = SIGNALS[case]
    src, _ = ct
    out = tmp_path / "out.zarr"
    args = _args(src, model_path)
    p = subprocess.Popen([sys.executable, "-m", "vstain_dask.cli", *args, "-o", str(out)],
                         start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)  # fmt: skip
    ledger = _Ledger(out)
    deadline = time.time() + 240
    while time.time() < deadline and len(ledger.done()) < 2 and p.poll() is None:
        time.sleep(0.05)
    (os.killpg if group else os.kill)(p.pid, sig)
    _, stderr = p.communicate(timeout=120)
    assert _group_gone(p.pid), "the stain left processes behind"
    assert p.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1] == (
        f"{word}: {out} is incomplete; rerun the same command with --resume to finish it"
    )
    assert [ln for ln in lines[:-1] if not ln.startswith(STAIN_INFO)] == [], stderr
    assert 2 <= len(ledger.done()) < 10
    r = _cli(*args, "-o", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(_stained(out), clean)


# -- locks: never blocked for good, never broken under a live job -----------------------------


def _lock(out, **fields):
    ledger = _Ledger(out)
    ledger.root.mkdir(exist_ok=True)
    ledger.lock_path.write_text(json.dumps(fields))
    return ledger.lock_path


def test_a_lock_naming_a_reused_pid_is_taken_over(ct, model_path, clean, tmp_path):
    """The lock's pid runs (pid 1 always does) but started at another time than the lock
    records: that is another process now, so the lock is stale and the stain runs."""
    src, _ = ct
    out = tmp_path / "out.zarr"
    _lock(out, pid=1, host=socket.gethostname(), started=time.time(), process_started=1.0)
    r = _cli(*_args(src, model_path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(_stained(out), clean)
    assert not _Ledger(out).root.exists()


def test_a_lock_from_another_host_names_its_file_and_break_lock_clears_it(
    ct, model_path, clean, tmp_path
):
    src, _ = ct
    out = tmp_path / "out.zarr"
    args = _args(src, model_path)
    _kill_after(args, out, 2)
    started = time.time() - 3600
    lock = _lock(out, pid=4242, host="node-17", started=started)
    before = _stained(out)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
    held = (f"error: another job (pid 4242 on node-17, started {when}) is writing {out}; its "
            f"lock is {lock}: wait for it or stop it first; if it no longer runs (its node went "
            "down), rerun with --break-lock")  # fmt: skip
    for flag in ("--resume", "--overwrite"):
        r = _cli(*args, "-o", str(out), flag)
        assert r.returncode == 2 and r.stderr.strip() == held, (flag, r.stderr)
        np.testing.assert_array_equal(_stained(out), before)
    r = _cli(*args, "-o", str(out), "--resume", "--break-lock")
    assert r.returncode == 0, r.stderr
    assert f"warning: broke the lock {lock} of pid 4242 on node-17" in r.stderr.splitlines()
    assert "(2 resumed)" in r.stdout or "resumed)" in r.stdout
    np.testing.assert_array_equal(_stained(out), clean)


def test_break_lock_refuses_while_a_live_job_here_holds_it(ct, model_path, tmp_path):
    import psutil

    src, _ = ct
    out = tmp_path / "out.zarr"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = _lock(out, pid=holder.pid, host=socket.gethostname(), started=time.time(),
                     process_started=psutil.Process(holder.pid).create_time())  # fmt: skip
        r = _cli(*_args(src, model_path), "-o", str(out), "--break-lock")
        assert r.returncode == 2
        assert r.stderr.strip() == (
            f"error: --break-lock refused: pid {holder.pid} on this host still runs and holds "
            f"{lock}; stop it first"
        )
        assert lock.is_file() and not out.exists()
    finally:
        holder.kill()
        holder.wait()


# -- a full disk: one line naming the output, the cluster's log beside it, then --resume -------


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs (needs root, as CI runs); skipped with the reason elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode:
        pytest.skip(f"could not mount a tmpfs: {r.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_names_the_output_and_resume_finishes_after_freeing_space(
    model_path, small_disk, tmp_path
):
    rng = np.random.default_rng(0)
    src = tmp_path / "noisy.ome.zarr"
    ngff.write_volume((rng.random((20, 96, 96)) * 3000 + 500).astype(np.uint16), src,
                      axes="zyx", chunks=(2, 96, 96))  # fmt: skip
    # tiles side by side (step 16, no overlap): under a third of the tiles, the same output's
    # size, which is what fills the disk
    args = [*_args(src, model_path), "--chunks", "2,96,96", "--step", "16"]
    clean = tmp_path / "clean.zarr"
    assert _cli(*args, "-o", str(clean)).returncode == 0
    out = small_disk / "out.zarr"
    r = _cli(*args, "-o", str(out))
    assert r.returncode == 1
    log = out.with_name(out.name + ".vstain-job") / "cluster.log"
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == (
        f"error: no space left for {out} (disk full or quota reached); it is incomplete: free "
        f"some space and rerun the same command with --resume (the cluster's log: {log})"
    )
    assert [ln for ln in lines[:-1] if not ln.startswith(STAIN_INFO)] == [], r.stderr
    assert "No space left on device" in log.read_text()  # the workers' reports are kept there
    assert ngff.open_volume(out, allow_incomplete=True).attrs["vstain"]["complete"] is False
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    r = _cli(*args, "-o", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(_stained(out), _stained(clean))


# -- messages that say what to do ---------------------------------------------------------------


def test_resuming_a_finished_stain_says_there_is_nothing_to_do(clean_store, ct, model_path):
    src, _ = ct
    r = _cli(*_args(src, model_path), "-o", str(clean_store), "--resume")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{clean_store} is already complete (10 blocks); nothing to do"


def test_overwrite_refuses_a_symbolic_link_and_leaves_its_target(ct, model_path, tmp_path):
    src, _ = ct
    target = tmp_path / "scratch"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    link = tmp_path / "out.zarr"
    link.symlink_to(target)
    r = _cli(*_args(src, model_path), "-o", str(link), "--overwrite")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"error: {link} is a symbolic link (to {target}); --overwrite replaces folders, not "
        "links: remove the link, or give the folder it points to as -o"
    )
    assert (target / "keep.txt").read_text() == "precious" and link.is_symlink()


def test_a_constant_volume_asks_for_ct_levels(tmp_path):
    src = tmp_path / "flat.ome.zarr"
    ngff.write_volume(np.full((4, 32, 32), 1000, np.uint16), src, axes="zyx")
    r = _cli("stain", str(src), "-o", str(tmp_path / "o.zarr"), "--workers", "1")
    assert r.returncode == 2
    error = r.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: could not estimate the CT levels of {src}: ")
    assert error.endswith(
        "give them with --ct-levels BONE,BACKGROUND (the raw grey values of bone and of the "
        "embedding; ct_levels=(bone, background) in Python), or --ct-levels none "
        "(ct_levels='none') for a volume already normalized"
    )
    assert "levels_from_rois" not in error and not (tmp_path / "o.zarr").exists()


def test_missing_input_chunks_are_counted_in_the_last_line_and_the_provenance(
    ct, model_path, clean, tmp_path
):
    src0, _ = ct
    src = tmp_path / "ct.ome.zarr"
    shutil.copytree(src0, src)
    level0 = ngff.level_array(src)
    chunk = ngff.chunk_file(level0, (1, 0, 0))
    chunk.unlink()
    out = tmp_path / "out.zarr"
    r = _cli(*_args(src, model_path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    total = level0.nchunks
    assert r.stdout.strip().endswith(
        f"; 1 of {total} input chunks were missing (read as the fill value)"
    )
    assert f"warning: 1 of {total} chunks of {src} are not stored" in r.stderr
    assert ngff.open_volume(out).attrs["vstain"]["input"]["missing_chunks"] == 1
    # the stain of what zarr reads: the chunk's voxels as zeros, the rest as the clean stain
    assert not np.array_equal(_stained(out), clean)
