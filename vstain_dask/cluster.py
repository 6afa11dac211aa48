"""Clusters: local, cuda, slurm or an existing scheduler, as a ``distributed.Client``.

Also the per-worker-process model cache: a model is loaded once per worker process, keyed by its
checkpoint hash, and never travels inside the task graph.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

from vstain_dask.errors import ClusterError, InputError, as_enum

__all__ = ["ClusterKind", "ClusterConfig", "connect", "dashboard_url", "worker_model"]

log = logging.getLogger(__name__)

#: worker resource gating the staining tasks (one at a time per worker); see vstain_dask.stain
COMPUTE_RESOURCE = "vstain-compute"


class ClusterKind(StrEnum):
    """Where the work runs."""

    LOCAL = "local"  #: distributed.LocalCluster on this machine (default)
    CUDA = "cuda"  #: dask-cuda LocalCUDACluster, one worker per GPU
    SLURM = "slurm"  #: dask-jobqueue SLURMCluster, workers submitted as SLURM jobs


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """How to get workers.

    For ``slurm``, fields left as ``None`` fall back to dask's own ``jobqueue.slurm.*``
    configuration (``~/.config/dask/jobqueue.yaml`` or ``DASK_JOBQUEUE__SLURM__*``), exactly as
    dask-jobqueue itself does.

    Parameters
    ----------
    kind : ClusterKind
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``); overrides ``kind``.
    workers : int, optional
        Local worker processes (default: one per core, at most 8; one when a stain runs on
        CUDA, see ``stain.run_stain``) or SLURM jobs (default 1).
    threads_per_worker : int, optional
        Torch threads per worker (default: cores divided among workers). Local workers run as
        many dask threads, at least 2 (CUDA workers: the cores divided among GPUs): one task
        at a time stains, the others read ahead, write, and build the pyramid and the fusion
        pass; a worker holds at most ``stain.BLOCKS_IN_FLIGHT_PER_WORKER`` blocks whatever its
        thread count.
    memory_limit : str, optional
        Per-worker memory limit for local clusters (``"4GiB"``), per-job memory for SLURM.
    cores, walltime, queue, account, gpus_per_job, interface
        SLURM job settings.
    dashboard : bool
        Serve the dask dashboard (on 127.0.0.1 for local clusters).
    timeout : float
        Seconds to wait for a scheduler to answer or for the first worker to arrive.
    malloc_trim : bool
        Keep distributed's ``MALLOC_TRIM_THRESHOLD_=65536`` in local worker processes. By
        default it is left out: a set trim threshold turns off glibc's adaptive mmap threshold,
        so every large temporary of a staining task (tile batches, activations, blend
        accumulators) is a fresh ``mmap`` that is page-faulted in again on every use
        (benchmarks/RESULTS.md, "Findings"). Keeping it returns freed memory to the system
        sooner, at that cost.
    """

    kind: ClusterKind = ClusterKind.LOCAL
    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None
    cores: int | None = None
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    gpus_per_job: int | None = None
    interface: str | None = None
    dashboard: bool = True
    dashboard_address: str = "127.0.0.1:0"
    timeout: float = 60.0
    malloc_trim: bool = False

    def __post_init__(self) -> None:
        kind = as_enum(ClusterKind, self.kind, "cluster", alternative="a scheduler address")
        object.__setattr__(self, "kind", kind)
        for name in ("workers", "threads_per_worker", "cores", "gpus_per_job"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{name} must be >= 1, got {value}")
        if self.timeout <= 0:
            raise InputError(f"timeout must be > 0 seconds, got {self.timeout}")


_PRE_SPAWN = "distributed.nanny.pre-spawn-environ"
_TRIM = "MALLOC_TRIM_THRESHOLD_"


@contextlib.contextmanager
def _worker_environ(config: ClusterConfig) -> Iterator[None]:
    """Start local workers without distributed's ``MALLOC_TRIM_THRESHOLD_`` (see
    ``ClusterConfig.malloc_trim``). glibc reads it when a process starts, so it must be absent
    from the environment the nanny spawns workers with; the nanny keeps that environment for
    the workers it restarts."""
    import dask
    import distributed  # noqa: F401  (registers the distributed.* configuration)

    if config.malloc_trim:
        yield
        return
    env = {k: v for k, v in dask.config.get(_PRE_SPAWN, {}).items() if k != _TRIM}
    # A nanny copies its pre-spawn environment into this process's os.environ before it spawns
    # a worker and leaves it there, so after any default distributed cluster in this process
    # every later worker would inherit the variable. Our workers are started from here and the
    # variable does nothing in this (already running) process: take it out for good, so that
    # workers a nanny restarts later do not get it either.
    os.environ.pop(_TRIM, None)
    with dask.config.set({_PRE_SPAWN: env}):
        yield


def _local_cluster(config: ClusterConfig):
    from distributed import LocalCluster

    cores = _cpu_count()
    n_workers = config.workers or min(cores, 8)
    threads = config.threads_per_worker or max(1, cores // n_workers)
    with _worker_environ(config):
        return LocalCluster(
            n_workers=n_workers,
            # one task at a time stains (the compute resource; torch uses `threads` of its own);
            # the other threads read the next block, write the last one, and build the pyramid
            # and the fusion pass, which no resource holds back
            threads_per_worker=max(2, threads),
            resources={COMPUTE_RESOURCE: 1},
            processes=True,
            host="127.0.0.1",
            # None would mean distributed's default :8787 on every interface; without a dashboard
            # asked for, a random loopback port at least never collides or listens outside
            dashboard_address=config.dashboard_address if config.dashboard else "127.0.0.1:0",
            memory_limit=config.memory_limit or "auto",
            env={"VSTAIN_TORCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)},
        )


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _cuda_cluster(config: ClusterConfig):
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as e:
        raise ClusterError("cluster 'cuda' needs dask-cuda: pip install 'vstain-dask[cuda]'") from e
    try:
        n_gpus = config.workers or _gpu_count()
        with _worker_environ(config):
            return LocalCUDACluster(
                n_workers=config.workers,
                # as for local workers: one thread stains on the GPU, the node's other cores
                # read, write, and build the pyramid and the fusion pass
                threads_per_worker=max(2, _cpu_count() // max(n_gpus, 1)),
                resources={COMPUTE_RESOURCE: 1},
                host="127.0.0.1",
                dashboard_address=config.dashboard_address if config.dashboard else "127.0.0.1:0",
                memory_limit=config.memory_limit or "auto",
            )
    except Exception as e:  # no GPU, no NVML: dask-cuda raises many kinds
        raise ClusterError(f"could not start a CUDA cluster: {e}") from e


def _slurm_cluster(config: ClusterConfig):
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as e:
        raise ClusterError(
            "cluster 'slurm' needs dask-jobqueue: pip install 'vstain-dask[slurm]'"
        ) from e
    kwargs: dict[str, Any] = {}
    for ours, theirs in (
        ("cores", "cores"),
        ("memory_limit", "memory"),
        ("walltime", "walltime"),
        ("queue", "queue"),
        ("account", "account"),
        ("interface", "interface"),
    ):
        value = getattr(config, ours)
        if value is not None:
            kwargs[theirs] = value
    import dask

    if kwargs.get("cores") is None and dask.config.get("jobqueue.slurm.cores", None) is None:
        kwargs["cores"] = 1
    if kwargs.get("memory") is None and dask.config.get("jobqueue.slurm.memory", None) is None:
        kwargs["memory"] = "4GiB"
    directives = list(dask.config.get("jobqueue.slurm.job-extra-directives", []) or [])
    if config.gpus_per_job:
        directives.append(f"--gpus={config.gpus_per_job}")
    cores = kwargs.get("cores") or dask.config.get("jobqueue.slurm.cores")
    try:
        cluster = SLURMCluster(
            processes=1,
            job_extra_directives=directives,
            scheduler_options={
                "dashboard_address": config.dashboard_address if config.dashboard else None
            },
            job_script_prologue=[f"export VSTAIN_TORCH_THREADS={cores}"],
            worker_extra_args=[
                *(dask.config.get("jobqueue.slurm.worker-extra-args", []) or []),
                "--resources",
                f"{COMPUTE_RESOURCE}=1",
                "--nthreads",
                str(max(2, int(cores))),
            ],
            **kwargs,
        )
    except Exception as e:
        raise ClusterError(f"could not set up a SLURM cluster: {e}") from e
    # adapt, not scale: a fixed-size adaptive cluster resubmits a worker job that ended
    # (scancel, walltime, preemption) instead of leaving the stain without workers
    n = config.workers or 1
    cluster.adapt(minimum_jobs=n, maximum_jobs=n)
    return cluster


@contextlib.contextmanager
def connect(config: ClusterConfig | None = None) -> Iterator[Any]:
    """Start (or reach) a cluster and yield a ``distributed.Client``; close what was started.

    Raises
    ------
    ClusterError
        The scheduler did not answer, or no worker arrived, within ``config.timeout`` seconds.
    """
    from distributed import Client

    config = config or ClusterConfig()
    if config.scheduler:
        try:
            client = Client(config.scheduler, timeout=f"{config.timeout}s")
        except (OSError, TimeoutError) as e:
            raise ClusterError(
                f"could not reach the scheduler at {config.scheduler} within "
                f"{config.timeout:g} s; check the address and that the scheduler is running"
            ) from e
        with client:
            _wait_for_workers(client, config.timeout)
            yield client
        return

    builders = {
        ClusterKind.LOCAL: _local_cluster,
        ClusterKind.CUDA: _cuda_cluster,
        ClusterKind.SLURM: _slurm_cluster,
    }
    cluster = builders[config.kind](config)
    try:
        with Client(cluster) as client:
            _wait_for_workers(client, config.timeout)
            yield client
    finally:
        cluster.close()


def _wait_for_workers(client, timeout: float) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError) as e:
        raise ClusterError(
            f"no worker joined the cluster within {timeout:g} s "
            "(for SLURM: check squeue and the job logs)"
        ) from e


def dashboard_url(client) -> str | None:
    """The dashboard's status page of the client's scheduler, or None if it has none."""
    link = getattr(client, "dashboard_link", None)
    if not link:
        return None
    try:
        client.scheduler_info()  # make sure the link reflects a live scheduler
    except Exception:
        return None
    return link


# -- per-worker-process model cache --------------------------------------------------------------

_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def worker_model(path: str, sha256: str, *, device: str | None = None):
    """The model at ``path`` for this process, loaded once and cached by its content hash.

    Called inside tasks, so a model is loaded once per worker process and is never part of
    the task graph. Checks that the file still has the hash the job was planned with.
    """
    import torch

    device = device or _default_device()
    key = (sha256, device)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            threads = os.environ.get("VSTAIN_TORCH_THREADS")
            if threads:
                torch.set_num_threads(int(threads))
            from vstain_dask.models import load_model

            model = load_model(path, device=device)
            if model.sha256 != sha256:
                from vstain_dask.errors import CheckpointError

                raise CheckpointError(
                    f"model {path} changed during the job (hash {model.sha256[:12]}, "
                    f"planned with {sha256[:12]})"
                )
            _MODELS[key] = model
        return model
