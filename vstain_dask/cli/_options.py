"""Parsing helpers and option groups shared by the commands."""

from __future__ import annotations

import contextlib
import functools
import shlex
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from vstain_dask.cluster import ClusterConfig


def command_line() -> str:
    """The running command as a shell line (``vstain-dask stain ...``), for provenance."""
    ctx = click.get_current_context(silent=True)
    argv = None if ctx is None else ctx.meta.get("vstain_dask.argv")
    if argv is None:
        argv = sys.argv[1:]
    return shlex.join(["vstain-dask", *map(str, argv)])


def debugging() -> bool:
    """Whether the command runs under ``vstain-dask --debug``."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and (ctx.find_root().obj or {}).get("debug", False))


def silence_interrupted_io() -> None:
    """After Ctrl-C: zarr's reads and writes are coroutines run from synchronous code, and one
    the interrupt cut off before it started is reported as "never awaited" when it is freed,
    after our message. That says nothing to the user, so it is not shown."""
    warnings.filterwarnings(
        "ignore", message="coroutine .* was never awaited", category=RuntimeWarning
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system's stop), raised where the command runs so that it
    stops as after Ctrl-C: the cluster closed, the output left resumable, one line said."""


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the block runs (main thread only)."""

    def terminate(signum, frame):  # noqa: ARG001
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_interrupted(message: str, exc: BaseException | None = None) -> NoReturn:
    """End a command stopped by Ctrl-C (exit status 130) or SIGTERM (143): one line on stderr."""
    silence_interrupted_io()
    click.echo(message, err=True)
    sys.exit(143 if isinstance(exc, Terminated) else 130)


class IntTuple(click.ParamType):
    """A comma-separated tuple of positive integers, such as ``64,256,256``."""

    name = "Z,Y,X"

    def __init__(
        self, length: int | None = None, name: str | None = None, *, minimum: int = 1
    ) -> None:
        self.length = length
        self.minimum = minimum
        if name:
            self.name = name

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            parts = tuple(int(p) for p in str(value).replace("x", ",").split(",") if p.strip())
        except ValueError:
            self.fail(
                f"expected comma-separated integers like {self.name}, got {value!r}", param, ctx
            )
        if self.length is not None and len(parts) != self.length:
            self.fail(f"expected {self.length} integers ({self.name}), got {value!r}", param, ctx)
        if any(p < self.minimum for p in parts):
            what = "positive integers" if self.minimum == 1 else f"integers >= {self.minimum}"
            self.fail(f"expected {what}, got {value!r}", param, ctx)
        return parts


def cluster_options(
    *, default: str | None, cluster_help: str, jobs_help: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Options that choose and size a dask cluster, given to the command as one config.

    Adds ``--cluster``, ``--scheduler``, ``--jobs``, ``--threads-per-worker``, ``--memory``,
    the SLURM job settings (``--cores``, ``--walltime``, ``--gpus-per-job``, ``--queue``,
    ``--account``, ``--interface``, ``--tls/--no-tls``) and ``--cluster-timeout``. The command
    receives them as a single keyword argument ``cluster_config``: a
    :class:`~vstain_dask.cluster.ClusterConfig` (``workers`` is ``--jobs``, ``None`` when not
    given), or ``None`` when ``default`` is ``None`` and neither ``--cluster`` nor
    ``--scheduler`` is given. Defaults are the ``ClusterConfig`` fields'.

    Parameters
    ----------
    default : str, optional
        ``--cluster`` when it is not given; ``None``: no cluster unless one is asked for.
    cluster_help : str
        What ``--cluster`` does for this command.
    jobs_help : str
        What ``--jobs`` counts for this command, and its default.
    """
    options = _cluster_option_list(default, cluster_help=cluster_help, jobs_help=jobs_help)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def with_cluster_config(*args: Any, **kwargs: Any) -> Any:
            kwargs["cluster_config"] = _pop_cluster_config(kwargs)
            return command(*args, **kwargs)

        for option in reversed(options):  # as if stacked in this order above the command
            with_cluster_config = option(with_cluster_config)
        return with_cluster_config

    return decorate


def _cluster_option_list(
    default: str | None, *, cluster_help: str, jobs_help: str
) -> list[Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """The click options of :func:`cluster_options`, in the order ``--help`` lists them."""
    import dataclasses

    from vstain_dask.cluster import ClusterConfig, ClusterKind

    defaults = {f.name: f.default for f in dataclasses.fields(ClusterConfig)}
    positive = click.IntRange(min=1)
    return [
        click.option(
            "--cluster",
            default=default,
            show_default=default is not None,
            metavar="[" + "|".join(k.value for k in ClusterKind) + "]",
            help=cluster_help,
        ),
        click.option(
            "--scheduler",
            help="Address of a running dask scheduler, tcp://HOST:PORT or tls://HOST:PORT "
            "(credentials from dask's distributed.comm.tls.* config); overrides --cluster.",
        ),
        click.option("--jobs", type=positive, help=jobs_help),
        click.option("--threads-per-worker", type=positive, help="Torch threads per worker."),
        click.option("--memory", help="Memory per worker/job, e.g. 16GiB."),
        click.option("--cores", type=positive, help="SLURM cores per job."),
        click.option("--walltime", help="SLURM walltime per job, HH:MM:SS."),
        click.option("--gpus-per-job", type=positive, help="SLURM GPUs per job."),
        click.option("--queue", help="SLURM partition."),
        click.option("--account", help="SLURM account."),
        click.option("--interface", help="Network interface for SLURM workers (e.g. ib0)."),
        click.option(
            "--tls/--no-tls",
            default=defaults["tls"],
            show_default=True,
            help="SLURM: TLS between scheduler, workers and this client, with temporary "
            "credentials or the site's from dask's distributed.comm.tls.* config.",
        ),
        click.option(
            "--cluster-timeout",
            default=defaults["timeout"],
            show_default=True,
            help="Seconds to wait for a scheduler or the first worker.",
        ),
    ]


def _pop_cluster_config(params: dict[str, Any]) -> ClusterConfig | None:
    """Take the options of :func:`cluster_options` out of a command's keyword arguments."""
    kind, scheduler = params.pop("cluster"), params.pop("scheduler")
    settings = {
        "workers": params.pop("jobs"),
        "threads_per_worker": params.pop("threads_per_worker"),
        "memory_limit": params.pop("memory"),
        "cores": params.pop("cores"),
        "walltime": params.pop("walltime"),
        "gpus_per_job": params.pop("gpus_per_job"),
        "queue": params.pop("queue"),
        "account": params.pop("account"),
        "interface": params.pop("interface"),
        "tls": params.pop("tls"),
        "timeout": params.pop("cluster_timeout"),
    }
    if kind is None and scheduler is None:
        return None
    from vstain_dask.cluster import ClusterConfig, ClusterKind

    return ClusterConfig(
        kind=ClusterKind.LOCAL if kind is None else kind, scheduler=scheduler, **settings
    )


def parse_ct_levels(value: str | None, *, keywords: tuple[str, ...] = ()):
    """``--ct-levels``: ``BONE,BACKGROUND`` (two raw CT means) as floats, one of ``keywords``
    (lower-cased), or None."""
    if value is None:
        return None
    if value.lower() in keywords:
        return value.lower()
    try:
        bone, background = (float(v) for v in value.split(","))
    except ValueError:
        named = "".join(f"{k!r}, " for k in keywords)
        raise click.BadParameter(
            f"expected {named}{'or ' if keywords else ''}BONE,BACKGROUND (two raw CT means), "
            f"got {value!r}"
        ) from None
    return (bone, background)
