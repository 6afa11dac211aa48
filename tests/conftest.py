"""Shared fixtures: a real two-worker distributed cluster and small on-disk stores."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cluster():
    """A real LocalCluster with 2 worker processes, 1 thread each, on loopback."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        memory_limit="4GiB",
    ) as cl:
        yield cl


@pytest.fixture
def client(cluster):
    """A client on the shared two-worker cluster."""
    from distributed import Client

    with Client(cluster) as c:
        yield c


@pytest.fixture(scope="session")
def slurm():
    """A real single-node SLURM (munge, slurmctld, slurmd on 127.0.0.1), started for the tests.

    Skips with the reason when it cannot run here: not root, or SLURM not installed (``.ci/run``
    installs it with apt). Stops only the daemons it started itself.
    """
    import os
    import shutil
    import subprocess
    from pathlib import Path

    if os.geteuid() != 0:
        pytest.skip("single-node SLURM needs root to start munged/slurmctld/slurmd")
    if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed (apt-get install slurmctld slurmd slurm-client munge)")
    here = Path(__file__).parent / "slurm"
    already = subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
    proc = subprocess.run(
        ["bash", str(here / "start_slurm.sh")], capture_output=True, text=True, timeout=120
    )
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, f"SLURM did not start: {proc.stderr}"
    yield {"queue": "debug", "interface": "lo"}
    if not already:
        subprocess.run(["bash", str(here / "stop_slurm.sh")], capture_output=True, timeout=60)
