"""Clusters: local, cuda, slurm or an existing scheduler, as a ``distributed.Client``.

Also the per-worker-process model cache: a model is loaded once per worker process, keyed by its
checkpoint hash, and never travels inside the task graph.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

from vstain_dask._validate import check_float, check_int
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


class _Protocol(StrEnum):
    """The schemes of a scheduler address that reach a dask scheduler."""

    TCP = "tcp"
    TLS = "tls"
    INPROC = "inproc"
    UCX = "ucx"


_SOCKETS = (_Protocol.TCP, _Protocol.TLS)  # the schemes whose HOST:PORT is a TCP socket


def _parse_scheduler_address(address: str) -> tuple[_Protocol, str, int | None]:
    """``(scheme, host, port)`` of a scheduler address such as ``tls://10.0.0.5:8786``.

    The scheme may be left out (``host:8786`` is ``tcp``). Only the syntax is checked, nothing
    is resolved or connected to. ``inproc`` addresses are taken as they are (port ``None``).

    Raises
    ------
    InputError
        The address is empty, has an unknown scheme, no host, or no port in 1..65535.
    """
    expected = "an address like tcp://HOST:PORT or tls://HOST:PORT"
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    protocol = as_enum(_Protocol, scheme, f"the scheme of scheduler {address!r}")
    if protocol is _Protocol.INPROC:
        if not rest.strip():
            raise InputError(f"scheduler must be {expected}, got {address!r}")
        return protocol, rest, None
    if rest.startswith("["):  # an IPv6 literal: [::1]:8786
        host, _, port = rest[1:].partition("]")
        port = port[1:] if port.startswith(":") else ""
    else:
        host, _, port = rest.rpartition(":")
    if ":" not in rest:
        raise InputError(f"scheduler must be {expected}, got {address!r} (no port)")
    if not host or any(c.isspace() or c in "/[]@" for c in host):
        raise InputError(f"scheduler must be {expected}, got {address!r} (host {host!r})")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise InputError(
            f"scheduler must be {expected} with PORT in 1..65535, got {address!r} (port {port!r})"
        )
    return protocol, host, int(port)


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
        Address of a running scheduler (``tcp://host:8786``, or ``tls://host:8786`` with the
        credentials in dask's ``distributed.comm.tls.*`` configuration); overrides ``kind``.
        Checked for its syntax here; :func:`connect` then fails within ``timeout`` seconds
        (at once where nothing listens) if no dask scheduler answers there.
    workers : int, optional
        Local worker processes (default: one per core, at most 8; one when a stain runs on
        CUDA, see ``stain.run_stain``) or SLURM jobs (default 1).
    threads_per_worker : int, optional
        Torch threads per worker (default: cores divided among workers; for SLURM, the job's
        cores). Local and SLURM workers run as many dask threads, at least 2 (CUDA workers:
        the cores divided among GPUs): one task at a time stains, the others read ahead,
        write, and build the pyramid and the fusion pass; a worker holds at most
        ``stain.BLOCKS_IN_FLIGHT_PER_WORKER`` blocks whatever its thread count.
    memory_limit : str, optional
        Per-worker memory limit for local clusters (``"4GiB"``), per-job memory for SLURM.
    cores, walltime, queue, account, gpus_per_job, interface
        SLURM job settings.
    tls : bool
        SLURM: encrypt and authenticate the scheduler's, the workers' and the client's
        connections with TLS (on by default: a scheduler any user on the cluster's network can
        reach runs whatever code its clients send it). The credentials are the site's own where
        dask's configuration names them (``distributed.comm.tls.ca-file`` with the scheduler's,
        the workers' and the client's ``cert``/``key``), else temporary ones made for the run;
        their worker half is written, readable by the owner only, to
        ``jobqueue.slurm.shared-temp-directory`` (default: the current directory, where the
        worker jobs start) for the jobs to read. ``False``: plain TCP. Local and CUDA clusters
        listen on 127.0.0.1 only and do not use it.
    dashboard : bool
        Serve the dask dashboard, on ``dashboard_address`` (127.0.0.1: reach it from elsewhere
        through an SSH tunnel); a SLURM cluster serves it where
        ``jobqueue.slurm.scheduler-options`` asks instead, if it names a ``dashboard_address``.
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
    tls: bool = True
    dashboard: bool = True
    dashboard_address: str = "127.0.0.1:0"
    timeout: float = 60.0
    malloc_trim: bool = False

    def __post_init__(self) -> None:
        kind = as_enum(ClusterKind, self.kind, "cluster", alternative="a scheduler address")
        object.__setattr__(self, "kind", kind)
        for name in ("workers", "threads_per_worker", "cores", "gpus_per_job"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_int(value, name, 1))
        timeout = check_float(self.timeout, "timeout", positive=True, unit="seconds")
        object.__setattr__(self, "timeout", timeout)
        if self.scheduler is not None:
            _parse_scheduler_address(self.scheduler)


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


def _site_security():
    """The site's TLS credentials from dask's ``distributed.comm.tls.*`` configuration, or
    ``None`` where it names none (no ``ca-file``)."""
    from distributed.security import Security

    site = Security()
    if not site.tls_ca_file:
        return None
    # a role's key may be in its certificate's file, so only the certificates must be named
    missing = [
        f"distributed.comm.tls.{role}.cert"
        for role in ("scheduler", "worker", "client")
        if not getattr(site, f"tls_{role}_cert")
    ]
    if missing:
        raise InputError(
            "dask's configuration names a TLS ca-file but not "
            + ", ".join(missing)
            + "; give every role its certificate (and key), or leave out ca-file for temporary "
            "credentials"
        )
    return site


def _slurm_security(config: ClusterConfig):
    """The credentials of a SLURM cluster (see ``ClusterConfig.tls``), or ``None`` for TCP."""
    if not config.tls:
        return None
    site = _site_security()
    if site is not None:
        return site
    from distributed.security import Security

    try:
        return Security.temporary()
    except ImportError as e:
        raise ClusterError(
            "TLS with temporary credentials needs the cryptography package: "
            "pip install 'vstain-dask[slurm]' (or name the site's certificates in dask's "
            "distributed.comm.tls.* configuration, or turn TLS off with --no-tls)"
        ) from e


def _slurm_cluster(config: ClusterConfig, *, adapt: bool = True):
    """A dask-jobqueue ``SLURMCluster`` (its scheduler started here), submitting
    ``config.workers`` worker jobs when ``adapt``; without it, no job is submitted (its
    ``job_script()`` is what would be)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as e:
        raise ClusterError(
            "cluster 'slurm' needs dask-jobqueue: pip install 'vstain-dask[slurm]'"
        ) from e
    arguments = _slurm_arguments(config)
    try:
        cluster = SLURMCluster(**arguments)
    except Exception as e:
        raise ClusterError(f"could not set up a SLURM cluster: {e}") from e
    if adapt:
        # adapt, not scale: a fixed-size adaptive cluster resubmits a worker job that ended
        # (scancel, walltime, preemption) instead of leaving the stain without workers
        n = config.workers or 1
        cluster.adapt(minimum_jobs=n, maximum_jobs=n)
    return cluster


def _jobqueue(key: str) -> Any:
    """dask's ``jobqueue.slurm.<key>`` setting, or None."""
    import dask

    return dask.config.get(f"jobqueue.slurm.{key}", None)


def _slurm_arguments(config: ClusterConfig) -> dict[str, Any]:
    """The keyword arguments of ``SLURMCluster`` for ``config``: its job settings over dask's
    ``jobqueue.slurm.*`` configuration, which fills what it leaves out."""
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
    kwargs.setdefault("cores", _jobqueue("cores") or 1)
    kwargs.setdefault("memory", _jobqueue("memory") or "4GiB")
    threads = config.threads_per_worker or int(kwargs["cores"])
    directives = list(_jobqueue("job-extra-directives") or [])
    if config.gpus_per_job:
        directives.append(f"--gpus={config.gpus_per_job}")
    security = _slurm_security(config)
    if security is not None:
        kwargs["security"] = security
        # the jobs start in the submitting directory, so it is one they can read; naming it
        # keeps dask-jobqueue from warning that it fell back to it
        kwargs["shared_temp_directory"] = _jobqueue("shared-temp-directory") or os.getcwd()
    return dict(
        processes=1,
        job_extra_directives=directives,
        scheduler_options=_slurm_scheduler_options(config),
        job_script_prologue=[
            *(_jobqueue("job-script-prologue") or []),
            f"export VSTAIN_TORCH_THREADS={threads}",
        ],
        # dask-jobqueue's own --nthreads (the job's cores) comes first; the worker takes
        # the last one: as for local workers, at least 2 (one stains, others read/write)
        worker_extra_args=[
            *(_jobqueue("worker-extra-args") or []),
            "--resources",
            f"{COMPUTE_RESOURCE}=1",
            "--nthreads",
            str(max(2, threads)),
        ],
        **kwargs,
    )


def _slurm_scheduler_options(config: ClusterConfig) -> dict[str, Any]:
    # dask-jobqueue's own default serves the dashboard on every interface (":8787"); here it
    # is served on loopback unless its configuration names an address
    scheduler_options = dict(_jobqueue("scheduler-options") or {})
    scheduler_options.setdefault("dashboard_address", config.dashboard_address)
    if not config.dashboard:
        scheduler_options["dashboard"] = False
    return scheduler_options


def _unreachable(address: str, why: str) -> ClusterError:
    return ClusterError(
        f"could not reach the scheduler at {address} ({why}); check the address and that the "
        "scheduler is running"
    )


def _mark_unstarted_failed(cluster, statuses) -> None:
    """Mark the cluster's jobs in ``statuses`` (None: all that have not ended) as failed."""
    from distributed.core import Status

    ended = (Status.closing, Status.closed, Status.failed)
    for job in list(getattr(cluster, "_created", ())):
        if (job.status in statuses) if statuses is not None else (job.status not in ended):
            job.status = Status.failed


def _close(cluster) -> None:
    """Close a cluster, and remove the credentials a SLURM cluster wrote for its workers;
    a failure to close is logged, not raised.

    dask-jobqueue keeps each credential file it wrote open (``_job_ca_file``, ``_job_cert``,
    ``_job_key``) and the file goes when its handle is closed; left to the garbage collector
    that happens at some later time, or never for a killed process.
    """
    from distributed.core import Status

    # A job that sbatch refused (a wrong partition or account) stays "created" for good, and
    # distributed's SpecCluster then fails its own close on it (asserting that every job it
    # made has ended), leaving the cluster half closed. It did end: it never started.
    _mark_unstarted_failed(cluster, (Status.created,))
    try:
        try:
            cluster.close()
        except Exception:
            # A job still starting when the close began (an adaptive resubmission under load)
            # trips the same assertion and leaves the cluster "closing" for good, to be
            # reported unclosed when collected. Its SLURM job has been cancelled by then: mark
            # what has not ended as failed and finish the close once more.
            _mark_unstarted_failed(cluster, None)
            if getattr(cluster, "status", None) == Status.closing:
                cluster.status = Status.running
            cluster.close()
    except Exception as e:  # closing must not hide the stain's result, or its own error
        log.warning("the cluster did not close cleanly: %s: %s", type(e).__name__, e)
    finally:
        for name in ("_job_ca_file", "_job_cert", "_job_key"):
            handle = getattr(cluster, name, None)
            if handle is not None:
                handle.close()


async def _identify(address: str, timeout: float, connection_args: dict[str, Any]) -> Any:
    """What answers at ``address``: its reply to dask's ``identity`` call. Where nothing
    listens it fails at once, rather than retrying as ``distributed.comm.connect`` does until
    its timeout; the caller bounds the rest."""
    from distributed.comm import connect as comm_connect

    _, host, port = _parse_scheduler_address(address)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError as e:
        raise _unreachable(address, f"no answer within {timeout:g} s") from e
    except ConnectionRefusedError as e:
        raise _unreachable(address, "connection refused: nothing listens there") from e
    except OSError as e:  # unknown host, no route
        raise _unreachable(address, e.strerror or str(e)) from e
    writer.close()
    comm = await comm_connect(address, timeout=timeout, **connection_args)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()


def _check_scheduler(address: str, timeout: float, connection_args: dict[str, Any]) -> None:
    """Raise a ClusterError, within ``timeout`` seconds and a little, unless a dask scheduler
    answers at the TCP socket ``address``."""
    where = f"the scheduler at {address}"

    async def bounded():
        return await asyncio.wait_for(_identify(address, timeout, connection_args), timeout)

    # a loop of its own in a thread of its own: the caller may be inside a running loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            reply = pool.submit(asyncio.run, bounded()).result()
        except ClusterError:
            raise
        except TimeoutError as e:
            raise ClusterError(
                f"{where} did not answer as a dask scheduler within {timeout:g} s: something "
                "else listens there, or a TLS scheduler was addressed without tls://"
            ) from e
        except OSError as e:  # closed by the other end: not dask, or TLS on one side only
            raise ClusterError(
                f"{where} closed the connection ({e}): not a dask scheduler, or one that "
                "wants TLS (a tls:// address and credentials) or does not speak it"
            ) from e
        except Exception as e:  # bytes that are not dask's protocol fail to deserialize
            raise ClusterError(
                f"{where} answered with something other than dask's protocol "
                f"({type(e).__name__}); is it a dask scheduler's address?"
            ) from e
    kind = reply.get("type") if isinstance(reply, dict) else None
    if not (isinstance(kind, str) and kind.endswith("Scheduler")):
        raise ClusterError(
            f"{where} is not a dask scheduler: it answered as {kind or type(reply).__name__}"
        )


def _scheduler_client(config: ClusterConfig):
    """A client of the running scheduler at ``config.scheduler``, or an error within about
    ``config.timeout`` seconds."""
    from distributed import Client
    from distributed.security import Security

    address = config.scheduler
    protocol = _parse_scheduler_address(address)[0]
    security = Security()  # dask's distributed.comm.tls.* configuration, as Client reads it
    connection_args = security.get_connection_args("client")
    if protocol is _Protocol.TLS and not connection_args["ssl_context"]:
        raise InputError(
            f"scheduler {address} needs TLS credentials: name them in dask's configuration "
            "(distributed.comm.tls.ca-file, distributed.comm.tls.client.cert and .key)"
        )
    deadline = time.monotonic() + config.timeout
    if protocol in _SOCKETS:  # ucx and inproc go to the client as they are
        _check_scheduler(address, config.timeout, connection_args)
    try:
        return Client(
            address, timeout=f"{max(deadline - time.monotonic(), 1.0)}s", security=security
        )
    except (OSError, TimeoutError) as e:
        raise ClusterError(
            f"could not reach the scheduler at {address} within {config.timeout:g} s; check "
            "the address and that the scheduler is running"
        ) from e


@contextlib.contextmanager
def connect(config: ClusterConfig | None = None) -> Iterator[Any]:
    """Start (or reach) a cluster and yield a ``distributed.Client``; close what was started.

    Raises
    ------
    ClusterError
        No dask scheduler answered at ``config.scheduler`` within ``config.timeout`` seconds
        (at once where nothing listens there), or no worker arrived within as long.
    InputError
        A ``tls://`` scheduler and no TLS credentials in dask's configuration.
    """
    from distributed import Client

    config = config or ClusterConfig()
    if config.scheduler is not None:
        with _scheduler_client(config) as client:
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
        _close(cluster)


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
