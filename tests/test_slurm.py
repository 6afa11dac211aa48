"""The SLURM path for real: a single-node slurmctld/slurmd started by the ``slurm`` fixture,
dask-jobqueue submitting worker jobs with sbatch, and `vstain-dask stain --cluster slurm`
producing the same bytes as the local cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _submitted_jobs() -> int:
    """Batch jobs the controller accepted so far (from its log: accounting is off here)."""
    try:
        text = Path("/var/log/slurm/slurmctld.log").read_text()
    except OSError:
        return 0
    return text.count("_slurm_rpc_submit_batch_job")


def test_stain_on_slurm_equals_local(slurm, ct, model_path, tmp_path):
    src, _ = ct
    jobs_before = _submitted_jobs()
    common = ["stain", str(src), "--model", str(model_path), "--tile", "16", "--step", "8",
              "--batch-size", "4", "--chunks", "5,16,16", "--ct-levels", "none", "--no-progress"]  # fmt: skip
    local = subprocess.run(
        [sys.executable, "-m", "vstain_dask.cli", *common, "-o", str(tmp_path / "local.zarr"),
         "--workers", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    on_slurm = subprocess.run(
        [sys.executable, "-m", "vstain_dask.cli", *common, "-o", str(tmp_path / "slurm.zarr"),
         "--cluster", "slurm", "--jobs", "2", "--cores", "1", "--memory", "2GiB",
         "--queue", slurm["queue"], "--interface", slurm["interface"], "--walltime", "00:10:00"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,  # job logs land here
    )  # fmt: skip
    assert on_slurm.returncode == 0, on_slurm.stderr
    assert "dashboard:" in on_slurm.stderr
    a = zarr.open_array(store=str(tmp_path / "local.zarr"), path="0", mode="r")[...]
    b = zarr.open_array(store=str(tmp_path / "slurm.zarr"), path="0", mode="r")[...]
    np.testing.assert_array_equal(a, b)
    # the workers really were SLURM batch jobs
    assert _submitted_jobs() >= jobs_before + 2
