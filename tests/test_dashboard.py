"""The dashboard link that ``vstain-dask stain`` prints at start serves the dask dashboard while the
job runs: checked over HTTP, and (marked ``browser``) as a headless-Chromium screenshot.

Each test starts a real stain on the command line (a real local cluster with one worker), on a CT
big enough to outlast the checks, reads the link from its stderr, looks at the dashboard while
blocks are being stained, then stops the job with Ctrl-C (SIGINT) instead of waiting for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from vstain_dask.cluster import COMPUTE_RESOURCE

pytestmark = pytest.mark.slow

#: long enough (one block per z-slice) that the checks land mid-job on a fast machine too
CT_SHAPE = (160, 96, 96)  # one block per plane: a job that outlasts every check, then Ctrl-C
DASHBOARD = re.compile(r"dashboard: (?P<url>http://\S+/status) \((?P<n>\d+) worker\(s\)\)")


@pytest.fixture(scope="module")
def big_ct(tmp_path_factory) -> Path:
    """A smooth random uint16 CT of CT_SHAPE voxels (5 µm), as OME-Zarr."""
    from scipy import ndimage

    from vstain_dask import ngff

    rng = np.random.default_rng(3)
    vol = ndimage.gaussian_filter(rng.normal(size=CT_SHAPE), 2.0)
    vol = ((vol - vol.min()) / np.ptp(vol) * 3000 + 500).astype(np.uint16)
    path = tmp_path_factory.mktemp("dashboard") / "ct.ome.zarr"
    ngff.write_volume(vol, path, axes="zyx", scale=(5.0,) * 3, units="micrometer", chunks=(8, 48, 48))  # fmt: skip
    return path


@dataclass
class _Job:
    proc: subprocess.Popen
    url: str
    workers: int
    output: Path
    stderr: Path

    @property
    def base(self) -> str:
        return self.url.removesuffix("/status")

    def blocks_done(self) -> int:
        done = self.output.with_name(self.output.name + ".vstain-job") / "done"
        return len([p for p in done.iterdir() if "block-" in p.name]) if done.is_dir() else 0


def _entry_point() -> list[str]:
    exe = Path(sys.executable).with_name("vstain-dask")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "vstain_dask.cli"]


@contextlib.contextmanager
def _stain_job(ct: Path, model: Path, tmp_path: Path):
    """Start ``vstain-dask stain`` and yield once it has printed its dashboard link; on exit,
    interrupt it (Ctrl-C) if it still runs and check it stopped the way Ctrl-C should."""
    out = tmp_path / "stained.ome.zarr"
    stderr = tmp_path / "stain.err"
    args = [*_entry_point(), "stain", str(ct), "-o", str(out), "--model", str(model),
            "--tile", "16", "--step", "8", "--batch-size", "4", "--chunks", "1,32,32",
            "--workers", "1", "--threads-per-worker", "1", "--ct-levels", "none",
            "--no-progress"]  # fmt: skip
    with open(stderr, "w") as err:
        # own session: a Ctrl-C typed at pytest is not also delivered to the job
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        match = None
        while match is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            match = DASHBOARD.search(stderr.read_text(errors="replace"))
        assert match, f"no dashboard line on stderr (exit {proc.poll()}):\n{stderr.read_text()}"
        yield _Job(proc, match["url"], int(match["n"]), out, stderr)
        assert proc.poll() is None, (
            f"the job ended before the checks were done:\n{stderr.read_text()}"
        )
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        log = stderr.read_text(errors="replace")
        # stopped the way Ctrl-C stops a job (how quietly it does so is test_faults' subject)
        assert proc.returncode == 130, log
        assert "--resume" in log, log
    finally:
        if proc.poll() is None:  # only if a check above failed: stop what this test started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _get(url: str, *, timeout: float = 20.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode("utf-8", "replace")


def _wait_for(predicate, *, timeout: float, what: str):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def test_dashboard_serves_the_running_job(big_ct, model_path, tmp_path):
    with _stain_job(big_ct, model_path, tmp_path) as job:
        assert urllib.parse.urlsplit(job.url).hostname == "127.0.0.1"  # not exposed beyond loopback
        assert job.workers == 1

        # the status page: bokeh's HTML shell, and the bokeh JavaScript it loads is served too
        status, ctype, body = _get(job.url)
        assert status == 200 and ctype.startswith("text/html")
        assert "<title>Dask" in body
        scripts = re.findall(r'<script src="(static/js/bokeh[^"]*)"', body)
        assert scripts, body[:2000]
        status, _, js = _get(f"{job.base}/{scripts[0]}")
        assert status == 200 and len(js) > 100_000

        # it is this job's scheduler: one worker, carrying the staining resource
        status, _, text = _get(f"{job.base}/json/identity.json")
        identity = json.loads(text)
        assert status == 200 and identity["type"] == "Scheduler"
        assert len(identity["workers"]) == job.workers
        (address, worker) = next(iter(identity["workers"].items()))
        assert worker["resources"] == {COMPUTE_RESOURCE: 1}

        # while blocks are stained, the counts show tasks in flight on that worker
        def busy():
            counts = json.loads(_get(f"{job.base}/json/counts.json")[2])
            return counts if counts["tasks"] > 0 and counts["processing"] > 0 else None

        counts = _wait_for(busy, timeout=90, what="tasks processing in counts.json")
        assert counts["workers"] == 1 and counts["erred"] == 0
        assert job.blocks_done() < CT_SHAPE[0], "the job must still be running"

        # the worker's page lists the stain's blocks it is working on
        def block_keys():
            page = _get(f"{job.base}/info/worker/{urllib.parse.quote(address, safe='')}.html")[2]
            return re.findall(r"(?:stain|read)-[0-9a-f]{12}-[\w-]*?block-\d+-\d+-\d+", page)

        keys = _wait_for(block_keys, timeout=60, what="stain tasks on the worker's info page")
        assert all(k.endswith("-0-0") for k in keys)  # whole (y, x) planes: one block per z

        # the individual plots a user opens from the menu
        for page, title in (("individual-progress", "TaskProgress"),
                            ("individual-task-stream", "TaskStream")):  # fmt: skip
            status, ctype, body = _get(f"{job.base}/{page}")
            assert status == 200 and ctype.startswith("text/html"), page
            assert f"<title>Dask: {title}</title>" in body, page
        status, _, body = _get(f"{job.base}/health")
        assert (status, body) == (200, "ok")
        assert job.proc.poll() is None and job.blocks_done() < CT_SHAPE[0]

    # the dashboard goes away with the job: nothing is left listening
    with pytest.raises(urllib.error.URLError):
        _get(job.url, timeout=5)


@pytest.mark.browser
def test_dashboard_screenshot_is_not_blank(big_ct, model_path, tmp_path):
    from _screenshot import find_chromium, screenshot

    if find_chromium() is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    import imageio.v3 as iio

    png = tmp_path / "dashboard.png"
    with _stain_job(big_ct, model_path, tmp_path) as job:
        # shoot once blocks are being stained, so the plots have something to draw
        _wait_for(lambda: job.blocks_done() >= 1, timeout=90, what="the first stained block")
        screenshot(job.url, png, wait=8.0, size=(1400, 900))
        assert job.proc.poll() is None and job.blocks_done() < CT_SHAPE[0], "shot after the job"
    if os.environ.get("VSTAIN_KEEP_SCREENSHOT"):  # to look at it: VSTAIN_KEEP_SCREENSHOT=dir
        Path(os.environ["VSTAIN_KEEP_SCREENSHOT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["VSTAIN_KEEP_SCREENSHOT"]) / png.name).write_bytes(png.read_bytes())

    img = iio.imread(png)[..., :3]
    assert img.shape[:2] == (900, 1400)
    pixels = img.reshape(-1, 3).astype(np.int16)
    colours = np.unique(pixels, axis=0)
    non_white = np.mean(np.any(pixels < 235, axis=1))
    # saturated pixels: bars, task-stream rectangles and the navigation bar, not grey text
    saturated = np.mean(pixels.max(axis=1) - pixels.min(axis=1) > 60)
    assert len(colours) > 50, f"only {len(colours)} distinct colours: a blank page?"
    assert non_white > 0.03, f"only {non_white:.1%} of the page is not white"
    assert saturated > 0.005, f"only {saturated:.2%} of the page is coloured: no plots drawn?"
