"""Faults with real processes: a worker killed mid-stain, and Ctrl-C (SIGINT) on the command line.

(SIGKILL of the whole job followed by --resume is in test_stain.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from vstain_dask import ngff
from vstain_dask.cluster import COMPUTE_RESOURCE
from vstain_dask.stain import StainConfig, stain_to_zarr

pytestmark = pytest.mark.slow

CFG = StainConfig(tile=16, step=8, batch_size=4)


def _stained(path) -> np.ndarray:
    return np.asarray(zarr.open_array(store=str(path), path="0", mode="r")[...])


def _wait_for(predicate, *, timeout: float, what: str, proc=None) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` s, or once ``proc`` exited."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the stain exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def _smooth_ct(path: Path, shape: tuple[int, int, int], *, seed: int, chunks) -> Path:
    """A smooth random uint16 CT (z, y, x) written as OME-Zarr at ``path``."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    vol = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    vol = ((vol - vol.min()) / np.ptp(vol) * 3000 + 500).astype(np.uint16)
    ngff.write_volume(vol, path, axes="zyx", scale=(5.0,) * 3, units="micrometer", chunks=chunks)
    return path


@pytest.fixture(scope="module")
def wide_ct(tmp_path_factory):
    """12 planes of 128 x 128 (one block each): staining a block takes long enough (about a
    second) that a worker can be killed while it stains one."""
    path = tmp_path_factory.mktemp("wide") / "ct.ome.zarr"
    return _smooth_ct(path, (12, 128, 128), seed=3, chunks=(4, 64, 64))


def _kill_if_staining(record: str, dask_worker=None) -> None:
    """On a worker: if it runs a staining task, note the task and its process id in ``record``
    and SIGKILL the process.

    This runs on the worker's event loop, so the task cannot have reported its result between
    the look and the kill: the stained block is lost and must be stained again.
    """
    keys = [str(ts.key) for ts in dask_worker.state.executing]
    stains = [k for k in keys if k.startswith("stain-")]
    if stains:
        Path(record).write_text(f"{os.getpid()} {stains[0]}")
        os.kill(os.getpid(), signal.SIGKILL)


def _kill_a_staining_worker(client, record: Path) -> tuple[str, int, float]:
    """Kill the first worker found staining a block; (the task's key, its pid, when)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for address in client.scheduler_info(n_workers=-1)["workers"]:
            # the worker dies answering: its answer is the broken connection
            client.run(_kill_if_staining, str(record), workers=[address], on_error="return")
            if record.exists():
                pid, key = record.read_text().split()
                return key, int(pid), time.time()
        time.sleep(0.01)
    pytest.fail("no worker ran a staining task for 60 s")


def test_worker_killed_mid_stain_still_completes_identically(
    wide_ct, model_path, tmp_path, stain_ledger
):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=2, resources={COMPUTE_RESOURCE: 1},
                     host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        clean = tmp_path / "clean.zarr"
        stain_to_zarr(wide_ct, clean, model=model_path, config=CFG, client=client,
                      chunks=(1, 64, 64), progress=False)  # fmt: skip
        out = tmp_path / "faulty.zarr"
        result = {}

        def run():
            try:
                result["report"] = stain_to_zarr(wide_ct, out, model=model_path, config=CFG,
                                                 client=client, chunks=(1, 64, 64), progress=False)  # fmt: skip
            except BaseException as e:  # reported below
                result["error"] = e

        t = threading.Thread(target=run)
        started = time.time()
        t.start()
        # under way: the model is loaded and a block written
        _wait_for(lambda: stain_ledger(out), timeout=120, what="the first stained block")

        key, victim, killed_at = _kill_a_staining_worker(client, tmp_path / "killed")
        assert t.is_alive(), "the kill must land mid-run"
        assert key.split("-", 2)[2] not in stain_ledger(out)  # stain-<job>-<block>
        t.join(timeout=300)
        assert "error" not in result, result.get("error")
        report = result["report"]
        assert report.blocks_skipped == 0 and report.blocks == 12
        assert victim not in client.run(os.getpid).values(), "the worker should have been replaced"

        def story(dask_scheduler, key=key):
            # story() also lists other tasks' transitions that name this one: keep its own
            return [(t.finish, t.timestamp) for t in dask_scheduler.story(key) if t.key == key]

        # the clean run staining the same block had the same task key: only this run's count
        transitions = [(f, at) for f, at in client.run_on_scheduler(story) if at >= started]
    # the killed worker's block was stained again, on another worker, after the kill
    assert sum(finish == "processing" for finish, _ in transitions) >= 2, transitions
    assert any(finish == "memory" and at > killed_at for finish, at in transitions), transitions
    np.testing.assert_array_equal(_stained(out), _stained(clean))
    assert ngff.open_volume(out).attrs["vstain"]["complete"] is True


@pytest.fixture(scope="module")
def long_ct(tmp_path_factory):
    """60 planes (one block each): a job the Ctrl-C lands in the middle of."""
    path = tmp_path_factory.mktemp("long") / "ct.ome.zarr"
    return _smooth_ct(path, (60, 40, 36), seed=2, chunks=(5, 40, 36))


def test_ctrl_c_stops_cleanly_and_resume_finishes(long_ct, model_path, tmp_path, stain_ledger):
    src = long_ct
    args = [sys.executable, "-m", "vstain_dask.cli", "stain", str(src), "--model", str(model_path),
            "--tile", "16", "--step", "8", "--batch-size", "4", "--chunks", "1,16,16",
            "--workers", "1", "--ct-levels", "none", "--no-progress"]  # fmt: skip
    out = tmp_path / "interrupted.zarr"
    p = subprocess.Popen([*args, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)  # fmt: skip
    _wait_for(lambda: stain_ledger(out), timeout=240, what="the first stained block", proc=p)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert "interrupted" in stderr
    finished = len(stain_ledger(out))
    assert 0 < finished < 60, "the Ctrl-C must land mid-run"
    assert ngff.open_volume(out, allow_incomplete=True).attrs["vstain"]["complete"] is False
    lock = out.with_name(out.name + ".vstain-job") / "lock.json"
    assert not lock.exists(), "the lock must be released on Ctrl-C"
    resumed = subprocess.run([*args, "-o", str(out), "--resume"], capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    # the blocks finished before the Ctrl-C are kept, the others stained
    assert f": 60 blocks ({finished} resumed)" in resumed.stdout, resumed.stdout
    clean = tmp_path / "clean.zarr"
    subprocess.run([*args, "-o", str(clean)], check=True, capture_output=True, timeout=300)
    np.testing.assert_array_equal(_stained(out), _stained(clean))


def _slow_block(seconds):
    import time

    time.sleep(seconds)
    return {"tiles": 1, "read": 0.0, "compute": seconds, "write": 0.0}


def test_a_block_result_lost_with_its_worker_is_waited_for_not_failed(tmp_path):
    """A block that finished on a worker killed before its result was read (a cancelled SLURM
    job) is 'lost', then computed again by the scheduler: the stage waits for it rather than
    counting it failed ('NoneType: None' before)."""
    from distributed import Client, LocalCluster

    from vstain_dask.stain.execute import _block_result, _Tally

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        fut = client.submit(_slow_block, 2.0, pure=False)
        fut.result(timeout=60)
        (holder,) = {w for ws in client.who_has(fut).values() for w in ws}
        os.kill(client.run(os.getpid, workers=[holder])[holder], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while fut.status == "finished" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fut.status in ("lost", "pending"), fut.status
        tally = _Tally()
        assert _block_result(fut, tmp_path) is None
        assert tally.add("block-0-0-0", None) is False and not tally.failed
        result = fut.result(timeout=60)  # computed again on the other worker
        assert _block_result(fut, tmp_path) == result
        assert tally.add("block-0-0-0", result) is True and tally.tiles == 1
    # lost again and again, it counts as failed, naming why
    stubborn = _Tally()
    assert [stubborn.add("b", None) for _ in range(4)] == [False, False, False, True]
    assert stubborn.failed == {"b": "its result was lost with its worker 3 times"}
