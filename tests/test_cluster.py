"""The product's own clusters: local worker resources, threads and allocator environment; SLURM
job scripts line by line, TLS credentials and where the scheduler and dashboard listen."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path

import pytest
from test_never_hung import tls_credentials

from vstain_dask.cluster import COMPUTE_RESOURCE, ClusterConfig, connect
from vstain_dask.errors import InputError


def _env() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


@pytest.mark.parametrize("malloc_trim", [False, True])
def test_local_workers_environment(malloc_trim):
    from distributed import LocalCluster

    # a default distributed cluster started first leaves MALLOC_TRIM_THRESHOLD_ in os.environ
    with LocalCluster(
        n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ):
        pass
    config = ClusterConfig(
        workers=1, threads_per_worker=1, dashboard=False, malloc_trim=malloc_trim
    )
    with connect(config) as client:
        (info,) = client.scheduler_info()["workers"].values()
        assert info["resources"] == {COMPUTE_RESOURCE: 1}
        assert info["host"] == "127.0.0.1"
        (env,) = client.run(_env).values()
        # distributed sets MALLOC_TRIM_THRESHOLD_=65536 for workers; vstain-dask leaves it out
        # unless asked to keep it (page faults: benchmarks/RESULTS.md, "Findings")
        assert env == {
            "MALLOC_TRIM_THRESHOLD_": "65536" if malloc_trim else None,
            "OMP_NUM_THREADS": "1",
        }


def test_cluster_config_rejects_bad_values():
    with pytest.raises(InputError, match="workers"):
        ClusterConfig(workers=0)
    with pytest.raises(
        InputError,
        match="cluster must be one of 'local', 'cuda', 'slurm' or a scheduler address, got 'pbs'",
    ):
        ClusterConfig(kind="pbs")


def test_a_local_stain_on_cuda_gets_one_worker_unless_told_otherwise():
    """Local workers all share one GPU: a stain on CUDA starts one of them, not one per core.
    A size given, another kind of cluster, or a scheduler address is left as it is."""
    from vstain_dask.stain import _local_gpu_workers

    assert _local_gpu_workers(None, "cuda").workers == 1
    assert _local_gpu_workers(ClusterConfig(dashboard=False), "cuda:1") == ClusterConfig(
        workers=1, dashboard=False
    )
    assert _local_gpu_workers(None, "cpu") == ClusterConfig()
    for given in (
        ClusterConfig(workers=3),
        ClusterConfig(kind="cuda"),
        ClusterConfig(kind="slurm"),
        ClusterConfig(scheduler="tcp://127.0.0.1:8786"),
    ):
        assert _local_gpu_workers(given, "cuda") == given


# -- SLURM job scripts, built without submitting (no root, no slurmctld) ---------------------------
# Building a SLURMCluster starts its scheduler here; interface "lo" keeps it on 127.0.0.1.

pytest.importorskip("dask_jobqueue", reason="the slurm extra (dask-jobqueue) is not installed")


@contextlib.contextmanager
def _slurm_job(config: ClusterConfig):
    """The cluster ``connect`` would start for ``config``, submitting nothing; closed after."""
    from vstain_dask.cluster import _close, _slurm_cluster

    cluster = _slurm_cluster(config, adapt=False)
    try:
        yield cluster
    finally:
        _close(cluster)


def _script(cluster) -> tuple[list[str], list[str], list[str], dict[str, str]]:
    """A job script as its ``#SBATCH`` lines, the lines between them and the worker command
    (the prologue), the command's first words (python -m module address) and its options (the
    last value of each)."""
    shebang, blank, *lines, command = cluster.job_script().strip().splitlines()
    assert (shebang, blank) == ("#!/usr/bin/env bash", "")
    sbatch = [ln for ln in lines if ln.startswith("#SBATCH")]
    prologue = lines[len(sbatch) :]
    words = shlex.split(command)
    head, rest = words[:4], words[4:]
    options: dict[str, str] = {}
    for i, word in enumerate(rest):
        if word.startswith("--"):
            nxt = rest[i + 1] if i + 1 < len(rest) else ""
            # the worker's CLI (click) takes the last of a repeated option
            options[word] = "" if nxt.startswith("--") or not nxt else nxt
    return sbatch, prologue, head, options


def test_slurm_job_script_with_every_setting_and_temporary_tls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default home of the workers' credentials
    config = ClusterConfig(kind="slurm", cores=3, memory_limit="6GiB", walltime="01:00:00",
                           queue="gpu", account="proj", gpus_per_job=2, threads_per_worker=4,
                           interface="lo", workers=2)  # fmt: skip
    with _slurm_job(config) as cluster:
        sbatch, prologue, head, options = _script(cluster)
        assert sbatch == [
            "#SBATCH -J dask-worker",
            "#SBATCH -p gpu",
            "#SBATCH -A proj",
            "#SBATCH -n 1",
            "#SBATCH --cpus-per-task=3",
            "#SBATCH --mem=6G",
            "#SBATCH -t 01:00:00",
            "#SBATCH --gpus=2",
        ]
        assert prologue == ["export VSTAIN_TORCH_THREADS=4"]
        assert head == [sys.executable, "-m", "distributed.cli.dask_worker",
                        cluster.scheduler_address]  # fmt: skip
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        assert options["--nthreads"] == "4"
        assert options["--resources"] == f"{COMPUTE_RESOURCE}=1"
        assert options["--memory-limit"] == "6.00GiB"
        assert options["--interface"] == "lo"
        assert options["--protocol"] == "tls://"
        # temporary credentials: written for the jobs into the submitting directory,
        # readable by their owner only, and the ones the scheduler itself uses
        security = cluster.security
        for flag, begins in (("--tls-ca-file", "-----BEGIN CERTIFICATE"),
                             ("--tls-cert", "-----BEGIN CERTIFICATE"),
                             ("--tls-key", "-----BEGIN PRIVATE KEY")):  # fmt: skip
            path = Path(options[flag])
            assert path.parent == tmp_path
            assert path.stat().st_mode & 0o777 == 0o600
            assert path.read_text().startswith(begins)
        assert Path(options["--tls-cert"]).read_text() == security.tls_worker_cert


def test_slurm_job_script_defaults_and_no_tls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with _slurm_job(ClusterConfig(kind="slurm", interface="lo", tls=False)) as cluster:
        sbatch, prologue, head, options = _script(cluster)
        assert sbatch == [
            "#SBATCH -J dask-worker",
            "#SBATCH -n 1",
            "#SBATCH --cpus-per-task=1",
            "#SBATCH --mem=4G",
            "#SBATCH -t 00:30:00",
        ]
        assert prologue == ["export VSTAIN_TORCH_THREADS=1"]
        assert head[3] == cluster.scheduler_address
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        # one job core still gets two dask threads: one stains, the other reads and writes
        assert options["--nthreads"] == "2"
        assert options["--resources"] == f"{COMPUTE_RESOURCE}=1"
        assert not [o for o in options if o.startswith("--tls") or o == "--protocol"]
    assert list(tmp_path.iterdir()) == []


def _listening() -> set[tuple[str, int]]:
    """(host, port) of every socket this process listens on."""
    import psutil

    conns = psutil.Process().net_connections("inet")
    return {c.laddr[:2] for c in conns if c.status == psutil.CONN_LISTEN}


def _http_status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_slurm_job_script_keeps_dask_jobqueue_configuration(tmp_path):
    """Settings not given fall back to dask's jobqueue.slurm.* configuration, and what vstain
    adds (directives, prologue, worker arguments, scheduler options) extends it."""
    import dask

    shared = tmp_path / "shared"
    shared.mkdir()
    config = ClusterConfig(kind="slurm", interface="lo", gpus_per_job=1)
    before = _listening()
    with dask.config.set({
        "jobqueue.slurm.cores": 8,
        "jobqueue.slurm.memory": "32GiB",
        "jobqueue.slurm.queue": "long",
        "jobqueue.slurm.job-extra-directives": ["--constraint=a100"],
        "jobqueue.slurm.job-script-prologue": ["module load cuda"],
        "jobqueue.slurm.worker-extra-args": ["--lifetime", "2h"],
        "jobqueue.slurm.shared-temp-directory": str(shared),
        "jobqueue.slurm.scheduler-options": {"dashboard_address": "127.0.0.2:0"},
    }), _slurm_job(config) as cluster:  # fmt: skip
        sbatch, prologue, _, options = _script(cluster)
        assert sbatch == [
            "#SBATCH -J dask-worker",
            "#SBATCH -p long",
            "#SBATCH -n 1",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --mem=32G",
            "#SBATCH -t 00:30:00",
            "#SBATCH --constraint=a100",
            "#SBATCH --gpus=1",
        ]
        assert prologue == ["module load cuda", "export VSTAIN_TORCH_THREADS=8"]
        assert options["--lifetime"] == "2h"
        assert options["--nthreads"] == "8"
        assert Path(options["--tls-key"]).parent == shared
        # the dashboard where the configuration's scheduler options put it
        assert "127.0.0.2" in {host for host, _ in _listening() - before}
    assert list(shared.iterdir()) == []  # the credentials go with the cluster


def test_slurm_nothing_listens_beyond_the_asked_interface(tmp_path, monkeypatch):
    """With the workers' interface on loopback, neither the scheduler nor its dashboard (on or
    off) listens on any other address: dask-jobqueue's own default dashboard is ":8787", every
    interface."""
    monkeypatch.chdir(tmp_path)
    for dashboard in (True, False):
        before = _listening()
        config = ClusterConfig(kind="slurm", interface="lo", dashboard=dashboard)
        with _slurm_job(config) as cluster:
            new = _listening() - before
            assert len(new) == 2, new  # the scheduler and its HTTP server
            assert {host for host, _ in new} == {"127.0.0.1"}, new
            (port,) = {port for _, port in new} - {cluster.scheduler.port}
            assert _http_status(f"http://127.0.0.1:{port}/status") == (200 if dashboard else 404)


def test_slurm_uses_the_site_certificates_from_dask_config(tmp_path, monkeypatch):
    import dask

    monkeypatch.chdir(tmp_path)
    site = tls_credentials(tmp_path)
    with dask.config.set(site), _slurm_job(ClusterConfig(kind="slurm", interface="lo")) as cluster:
        _, _, head, options = _script(cluster)
        assert head[3].startswith("tls://127.0.0.1:")
        assert options["--tls-ca-file"] == str(tmp_path / "ca.pem")
        assert options["--tls-cert"] == str(tmp_path / "cert.pem")
        assert options["--tls-key"] == str(tmp_path / "key.pem")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    incomplete = {"distributed.comm.tls.ca-file": site["distributed.comm.tls.ca-file"]}
    with (
        dask.config.set(incomplete),
        pytest.raises(
            InputError, match="not distributed.comm.tls.scheduler.cert, distributed.comm.tls.worker"
        ),
    ):
        _slurm_job(ClusterConfig(kind="slurm", interface="lo")).__enter__()


def test_slurm_job_refused_by_sbatch_is_a_cluster_error(tmp_path, monkeypatch):
    """sbatch refusing the worker job (a wrong partition): the stain ends with "no worker
    joined" within the timeout, not with dask-jobqueue's failure to close a job that never
    started; the credentials are removed all the same."""
    from vstain_dask.errors import ClusterError

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\n"
                      "exit 1\n")  # fmt: skip
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = ClusterConfig(kind="slurm", queue="nope", interface="lo", timeout=3)
    with pytest.raises(ClusterError, match="no worker joined the cluster within 3 s"):
        with connect(config):
            pass
    assert list(work.iterdir()) == []


def test_a_slurm_cluster_closes_although_a_job_was_still_starting(tmp_path, monkeypatch):
    """A job whose start had not finished when the close began (an adaptive resubmission on a
    busy machine) made distributed's close fail its check that every job ended, leaving the
    cluster half closed, reported "unclosed" when collected."""
    from distributed.core import Status

    from vstain_dask.cluster import _close, _slurm_cluster

    monkeypatch.chdir(tmp_path)
    cluster = _slurm_cluster(ClusterConfig(kind="slurm", interface="lo"), adapt=False)

    class StillStarting:  # what close sees of such a job: its status
        status = Status.running

    job = StillStarting()  # the cluster holds its jobs weakly
    cluster._created.add(job)
    _close(cluster)
    assert cluster.status == Status.closed and job.status == Status.failed
