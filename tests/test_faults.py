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


def _done(out) -> int:
    d = out.with_name(out.name + ".vstain-job") / "done"
    return len(list(d.iterdir())) if d.is_dir() else 0


def test_worker_killed_mid_stain_still_completes_identically(ct, model_path, tmp_path):
    from distributed import Client, LocalCluster

    src, _ = ct
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, resources={COMPUTE_RESOURCE: 1},
                     host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        clean = tmp_path / "clean.zarr"
        stain_to_zarr(src, clean, model=model_path, config=CFG, client=client, chunks=(1, 16, 16),
                      progress=False)  # fmt: skip
        out = tmp_path / "faulty.zarr"
        result = {}

        def run():
            try:
                result["report"] = stain_to_zarr(src, out, model=model_path, config=CFG,
                                                 client=client, chunks=(1, 16, 16), progress=False)  # fmt: skip
            except BaseException as e:  # reported below
                result["error"] = e

        t = threading.Thread(target=run)
        t.start()
        deadline = time.time() + 120
        while _done(out) < 2 and time.time() < deadline:
            time.sleep(0.02)
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        assert t.is_alive() and _done(out) < 10, "the kill must land mid-run"
        os.kill(victim, signal.SIGKILL)
        t.join(timeout=300)
        assert "error" not in result, result.get("error")
        report = result["report"]
        assert report.blocks_skipped == 0 and report.blocks == 10
        assert victim not in client.run(os.getpid).values(), "the worker should have been replaced"
    np.testing.assert_array_equal(_stained(out), _stained(clean))
    assert ngff.open_volume(out).attrs["vstain"]["complete"] is True


@pytest.fixture(scope="module")
def long_ct(tmp_path_factory):
    """60 planes (one block each): a job the Ctrl-C lands in the middle of."""
    from scipy import ndimage

    rng = np.random.default_rng(2)
    vol = ndimage.gaussian_filter(rng.normal(size=(60, 40, 36)), 2.0)
    vol = ((vol - vol.min()) / np.ptp(vol) * 3000 + 500).astype(np.uint16)
    path = tmp_path_factory.mktemp("long") / "ct.ome.zarr"
    ngff.write_volume(vol, path, axes="zyx", scale=(5.0,) * 3, units="micrometer", chunks=(5, 40, 36))  # fmt: skip
    return path


def test_ctrl_c_stops_cleanly_and_resume_finishes(long_ct, model_path, tmp_path):
    src = long_ct
    args = [sys.executable, "-m", "vstain_dask.cli", "stain", str(src), "--model", str(model_path),
            "--tile", "16", "--step", "8", "--batch-size", "4", "--chunks", "1,16,16",
            "--workers", "1", "--ct-levels", "none", "--no-progress"]  # fmt: skip
    out = tmp_path / "interrupted.zarr"
    p = subprocess.Popen([*args, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)  # fmt: skip
    deadline = time.time() + 240
    while _done(out) < 1 and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    assert p.poll() is None and _done(out) < 60, "the Ctrl-C must land mid-run"
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert "interrupted" in stderr
    assert ngff.open_volume(out, allow_incomplete=True).attrs["vstain"]["complete"] is False
    lock = out.with_name(out.name + ".vstain-job") / "lock.json"
    assert not lock.exists(), "the lock must be released on Ctrl-C"
    resumed = subprocess.run([*args, "-o", str(out), "--resume"], capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    clean = tmp_path / "clean.zarr"
    subprocess.run([*args, "-o", str(clean)], check=True, capture_output=True, timeout=300)
    np.testing.assert_array_equal(_stained(out), _stained(clean))
