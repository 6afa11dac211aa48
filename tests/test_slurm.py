"""The SLURM path for real: a single-node slurmctld/slurmd started by the ``slurm`` fixture,
dask-jobqueue submitting worker jobs with sbatch, and `vstain-dask stain --cluster slurm`
producing the same bytes as the local cluster, over TLS by default; a client without the run's
credentials is refused by its scheduler."""

from __future__ import annotations

import subprocess
import sys
import time
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
    # the workers really were SLURM batch jobs, and reached the scheduler over TLS
    assert _submitted_jobs() >= jobs_before + 2
    logs = [p.read_text() for p in tmp_path.glob("slurm-*.out")]
    assert logs and all("Registered to:      tls://" in log for log in logs), logs
    # the credentials written for the jobs went with the cluster
    assert not list(tmp_path.glob(".dask-jobqueue.*"))


def _plain_client(address: str) -> subprocess.CompletedProcess:
    """``distributed.Client(address)`` with dask's default configuration (no credentials),
    in a process of its own: whatever it does, it cannot hold up this one."""
    code = f"from distributed import Client; Client({address!r}, timeout='3s'); print('connected')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def _identify_unverified(
    address: str, folder: Path, cert: str | None = None, key: str | None = None
):
    """The scheduler's answer to dask's ``identity`` call over TLS from a client that does not
    check the scheduler's certificate (as an attacker would not) and shows ``cert`` (PEM), or
    none."""
    import asyncio
    import ssl

    from distributed.comm import connect

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        (folder / "cert.pem").write_text(cert)
        (folder / "key.pem").write_text(key)
        ctx.load_cert_chain(folder / "cert.pem", folder / "key.pem")

    async def identify():
        comm = await connect(address, timeout=3, ssl_context=ctx)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    return asyncio.run(asyncio.wait_for(identify(), 10))


def test_slurm_scheduler_refuses_clients_without_the_credentials(slurm, tmp_path, monkeypatch):
    from distributed.security import Security

    from vstain_dask.cluster import ClusterConfig, connect

    monkeypatch.chdir(tmp_path)  # job logs and the workers' credentials land here
    config = ClusterConfig(kind="slurm", workers=1, cores=1, memory_limit="2GiB",
                           queue=slurm["queue"], interface=slurm["interface"],
                           walltime="00:10:00", timeout=120)  # fmt: skip
    with connect(config) as client:
        address = client.scheduler.address
        assert address.startswith("tls://")
        assert client.submit(sum, [1, 2]).result(timeout=60) == 3  # the TLS workers work
        # a user's plain client, without the run's credentials, and as plain TCP
        for attempt in (address, address.replace("tls://", "tcp://")):
            start = time.monotonic()
            proc = _plain_client(attempt)
            assert proc.returncode != 0 and "connected" not in proc.stdout, attempt
            assert time.monotonic() - start < 30, attempt  # start-up and the 3 s timeout
        # TLS from a client that does not check the scheduler (as an attacker would not):
        # with the run's own client certificate it is let in, without one or with another
        # it is refused, and at once
        run, other = client.security, Security.temporary()
        (mine := tmp_path / "mine").mkdir()
        (theirs := tmp_path / "theirs").mkdir()
        own = _identify_unverified(address, mine, run.tls_client_cert, run.tls_client_key)
        assert own["type"] == "Scheduler"
        for cert, key in ((None, None), (other.tls_client_cert, other.tls_client_key)):
            start = time.monotonic()
            with pytest.raises(OSError):  # the connection is closed on it (CommClosedError)
                _identify_unverified(address, theirs, cert, key)
            assert time.monotonic() - start < 5
