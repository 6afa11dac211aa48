"""SLURM worker jobs cancelled (``scancel``) in the middle of ``vstain-dask stain --cluster slurm``.

One of two jobs cancelled: the stain still completes, on the remaining job (or a replacement), with
the same bytes as a local run. The only job cancelled: a replacement job is submitted and the stain
completes, with the same bytes, rather than wait forever for a worker that never comes.

Real single-node SLURM (the ``slurm`` fixture), real dask-jobqueue worker jobs submitted with
sbatch, the real command line. The stain's worker jobs are told apart from anyone else's on the
same controller by their working directory, a folder of each test's own; jobs left behind by a
failed check are cancelled by their id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from vstain_dask import ngff

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

#: one block per z-slice: about 20-30 s of staining for 1-core jobs on a small CPU
CT_SHAPE = (24, 96, 96)
COMMON = ["--tile", "16", "--step", "8", "--batch-size", "4", "--chunks", "1,32,32",
          "--ct-levels", "none", "--no-progress"]  # fmt: skip


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("vstain-dask")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "vstain_dask.cli"]


def _our_jobs(workdir: Path) -> dict[str, str]:
    """{job id: state} of the queued or running jobs submitted from ``workdir``."""
    text = subprocess.run(["squeue", "-h", "-o", "%i|%T|%Z"], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    jobs = {}
    for line in text.splitlines():
        job, state, where = line.split("|", 2)
        if Path(where) == workdir:
            jobs[job] = state
    return jobs


def _running(workdir: Path) -> list[str]:
    return [j for j, state in _our_jobs(workdir).items() if state == "RUNNING"]


def _gone(workdir: Path, job: str) -> bool:
    return _our_jobs(workdir).get(job) in (None, "CANCELLED", "COMPLETING")


def _levels(path: Path) -> list[np.ndarray]:
    n = ngff.open_volume(path).attrs["n_levels"]
    return [np.asarray(zarr.open_array(store=str(path), path=str(i), mode="r")[...])
            for i in range(n)]  # fmt: skip


def _wait(predicate, *, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the stain exited ({proc.returncode}) before {what}:\n{log.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}:\n{log.read_text()}")


@pytest.fixture(scope="module")
def ct_store(tmp_path_factory) -> Path:
    from scipy import ndimage

    rng = np.random.default_rng(7)
    vol = ndimage.gaussian_filter(rng.normal(size=CT_SHAPE), 2.0)
    vol = ((vol - vol.min()) / np.ptp(vol) * 3000 + 500).astype(np.uint16)
    path = tmp_path_factory.mktemp("slurm-faults") / "ct.ome.zarr"
    ngff.write_volume(vol, path, axes="zyx", scale=(5.0,) * 3, units="micrometer", chunks=(8, 96, 96))  # fmt: skip
    return path


@contextlib.contextmanager
def _slurm_stain(ct: Path, model: Path, tmp_path: Path, slurm: dict, *, jobs: int):
    """Start the stain on SLURM; yield (process, output, stderr log, sbatch working directory).

    Afterwards, only if it still runs (a check failed): Ctrl-C it, which closes its cluster and
    cancels its jobs; failing that, kill it and cancel its jobs by id."""
    jobdir = tmp_path / "jobs"  # sbatch's working directory: worker logs land here
    jobdir.mkdir()
    out = tmp_path / "slurm.ome.zarr"
    log = tmp_path / "slurm.err"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [*_cli(), "stain", str(ct), "-o", str(out), "--model", str(model), *COMMON,
             "--cluster", "slurm", "--jobs", str(jobs), "--cores", "1", "--memory", "2GiB",
             "--queue", slurm["queue"], "--interface", slurm["interface"],
             "--walltime", "00:10:00"],
            cwd=jobdir, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc, out, log, jobdir
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the session started for it here
                proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()
        left = list(_our_jobs(jobdir))
        if left:
            subprocess.run(["scancel", *left], check=False)


def test_scancel_of_one_of_two_worker_jobs_still_completes_identically(
    slurm, ct_store, model_path, tmp_path, stain_ledger
):
    local = None
    with _slurm_stain(ct_store, model_path, tmp_path, slurm, jobs=2) as (proc, out, log, jobdir):
        # both worker jobs run and blocks are being written: then one job is cancelled
        _wait(lambda: len(_running(jobdir)) == 2 and len(stain_ledger(out)) >= 3, timeout=240,
              proc=proc, log=log, what="two running worker jobs and three stained blocks")  # fmt: skip
        victim = _running(jobdir)[0]
        subprocess.run(["scancel", victim], check=True)
        _wait(lambda: _gone(jobdir, victim), timeout=120, proc=proc, log=log,
              what=f"job {victim} to leave the queue")  # fmt: skip
        assert len(stain_ledger(out)) < CT_SHAPE[0], "the cancel must land mid-run"

        # meanwhile, the reference on a local cluster (on the core the cancelled job freed)
        local = subprocess.run(
            [*_cli(), "stain", str(ct_store), "-o", str(tmp_path / "local.ome.zarr"),
             "--model", str(model_path), *COMMON, "--workers", "1", "--threads-per-worker", "1"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        stdout, _ = proc.communicate(timeout=300)

    errors = log.read_text()
    assert proc.returncode == 0, errors
    assert "Traceback" not in errors, errors
    assert local.returncode == 0, local.stderr
    assert f"wrote {out}: {CT_SHAPE[0]} blocks" in stdout
    assert ngff.open_volume(out).attrs["vstain"]["complete"] is True
    assert not out.with_name(out.name + ".vstain-job").exists(), "the ledger is removed when done"
    for stained, reference in zip(_levels(out), _levels(tmp_path / "local.ome.zarr"), strict=True):
        np.testing.assert_array_equal(stained, reference)
    assert (jobdir / f"slurm-{victim}.out").exists(), "the cancelled job was a real SLURM job"


def test_scancel_of_the_only_worker_job_is_replaced_and_completes(
    slurm, ct_store, model_path, tmp_path, stain_ledger
):
    reference = tmp_path / "local.ome.zarr"
    local = None
    try:
        with _slurm_stain(ct_store, model_path, tmp_path, slurm, jobs=1) as (
            proc,
            out,
            log,
            jobdir,
        ):
            _wait(lambda: len(_running(jobdir)) == 1 and len(stain_ledger(out)) >= 2,
                  timeout=240, proc=proc, log=log,
                  what="a running worker job and two stained blocks")  # fmt: skip
            (victim,) = _running(jobdir)
            subprocess.run(["scancel", victim], check=True)
            # fully gone (not still completing), so no block it stained is written after this
            _wait(lambda: _our_jobs(jobdir).get(victim) in (None, "CANCELLED"), timeout=120,
                  proc=proc, log=log, what=f"job {victim} to leave the queue")  # fmt: skip
            before = stain_ledger(out)
            assert len(before) < CT_SHAPE[0], "the cancel must land mid-run"
            # the reference, on the core the stain leaves idle while it has no worker
            local = subprocess.Popen(
                [*_cli(), "stain", str(ct_store), "-o", str(reference), "--model", str(model_path),
                 *COMMON, "--workers", "1", "--threads-per-worker", "1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            # a replacement is submitted once the scheduler has given the lost worker up (about
            # 15 s), and it starts staining where the cancelled job left off
            _wait(lambda: set(_our_jobs(jobdir)) - {victim}, timeout=180, proc=proc, log=log,
                  what=f"a job to replace the cancelled job {victim}")  # fmt: skip
            replacements = sorted(set(_our_jobs(jobdir)) - {victim})
            # a block recorded now (or the stain done, which removes the records) was stained
            # by the replacement: no other worker is left
            _wait(lambda: len(stain_ledger(out)) > len(before) or proc.poll() == 0, timeout=240,
                  proc=proc, log=log, what=f"the replacement {replacements} to stain a block")  # fmt: skip
            stdout, _ = proc.communicate(timeout=300)
            _, local_err = local.communicate(timeout=300)
    finally:
        if local is not None and local.poll() is None:  # only when a check above failed
            local.send_signal(signal.SIGINT)  # Ctrl-C: it closes its own local cluster
            local.communicate(timeout=60)
    errors = log.read_text()
    assert proc.returncode == 0 and "Traceback" not in errors, errors
    assert local.returncode == 0, local_err
    assert f"wrote {out}: {CT_SHAPE[0]} blocks" in stdout
    assert ngff.open_volume(out).attrs["vstain"]["complete"] is True
    for stained, expected in zip(_levels(out), _levels(reference), strict=True):
        np.testing.assert_array_equal(stained, expected)
    assert any((jobdir / f"slurm-{job}.out").exists() for job in replacements), replacements
