"""The whole stain of a volume on a cluster: :func:`run_stain`, what ``vstain-dask stain``
runs. It resolves the model and the CT levels, checks the plan before a cluster starts (bad
input, an existing or locked output, a volume whose voxel size is not the model's pixel size,
blocks that cannot fit or would recompute every tile many times), sizes a local cluster for a
GPU, sends the cluster's logs to the job's log file, and runs
:func:`vstain_dask.stain.execute.stain_to_zarr` on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from pathlib import Path

from vstain_dask.errors import ClusterError, InputError, JobError
from vstain_dask.runtime import default_device, resolve_device
from vstain_dask.stain.execute import StainReport, stain_to_zarr
from vstain_dask.stain.job import (
    _model_pixel_size,
    _model_ref,
    _output_chunks,
    _vol_shape,
    check_inputs,
    check_pixel_size,
    check_resume,
)
from vstain_dask.stain.params import StainConfig
from vstain_dask.stain.plan import _stages, check_memory


def default_model_path() -> Path:
    """The bundled default model (trained on synthetic phantoms)."""
    from importlib.resources import files

    return Path(str(files("vstain_dask") / "data" / "default_model.pt"))


def resolve_ct_levels(source, model, ct_levels) -> tuple[float, float] | None:
    """The (bone, background) levels to normalize the CT with.

    ``"auto"`` estimates them from the volume (a bounded sample of it) when the model expects
    normalized CT, ``None``/``"none"`` uses the volume as it is, a pair is used as given.
    """
    from vstain_dask import ngff
    from vstain_dask.models import load_model

    if ct_levels is None or (isinstance(ct_levels, str) and ct_levels.lower() == "none"):
        return None
    if isinstance(ct_levels, str):
        if ct_levels.lower() != "auto":
            raise InputError(
                f"ct_levels must be 'auto', 'none' or BONE,BACKGROUND, got {ct_levels!r}"
            )
        if not load_model(model).normalization.ct_normalized:
            return None
        from vstain_dask.preprocess import estimate_ct_levels

        vol = ngff.open_volume(source)
        material = (vol.attrs.get("vstain") or {}).get("material")  # phantoms record it
        try:
            levels = estimate_ct_levels(vol.data, material=material)
        except InputError as e:
            raise InputError(
                f"could not estimate the CT levels of {source}: {e}; give them with --ct-levels "
                "BONE,BACKGROUND (the raw grey values of bone and of the embedding), or "
                "--ct-levels none for a volume already normalized"
            ) from e
        return (float(levels.bone), float(levels.background))
    bone, background = ct_levels
    return (float(bone), float(background))


def _local_gpu_workers(cluster, device: str | None):
    """The cluster to stain on: a local cluster whose size was not given gets one worker when
    the model runs on CUDA.

    Local workers all see the same GPU, so one worker per core (the CPU default) would put up
    to 8 processes, each with its own copy of the model and its own CUDA context, on one GPU.
    One worker keeps the GPU busy by itself (its other threads read and write); several GPUs
    need ``--cluster cuda``, which gives each worker its own.
    """
    from vstain_dask.cluster import ClusterConfig, ClusterKind

    cluster = cluster or ClusterConfig()
    if cluster.kind is not ClusterKind.LOCAL or cluster.scheduler or cluster.workers is not None:
        return cluster
    import torch

    # the device asked for, as the plan's premise (whether it exists is checked by the job)
    on_cuda = torch.device(device if device not in (None, "auto") else default_device()).type
    return dataclasses.replace(cluster, workers=1) if on_cuda == "cuda" else cluster


@contextlib.contextmanager
def job_log(path: Path):
    """Send what the cluster says (distributed's logs in this process; stderr of the local
    worker processes, through the ``vstain_dask._worker_log`` preload) to ``path`` rather than
    the terminal, for the duration of a job."""
    import dask

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(n) for n in ("distributed", "tornado", "asyncio")]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
    preload = list(dask.config.get("distributed.worker.preload", None) or [])
    try:
        with dask.config.set({"distributed.worker.preload": [*preload, "vstain_dask._worker_log"],
                              "vstain.worker-log": str(path)}):  # fmt: skip
            yield path
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
        handler.close()


def _worker_memory(cluster) -> int | None:
    """Bytes of memory a worker of ``cluster`` has, where known before it starts."""
    from dask.utils import parse_bytes

    from vstain_dask.cluster import ClusterKind, _cpu_count

    if cluster.memory_limit:
        return parse_bytes(cluster.memory_limit)
    if cluster.scheduler or cluster.kind is not ClusterKind.LOCAL:
        return None
    import psutil

    return psutil.virtual_memory().total // (cluster.workers or min(_cpu_count(), 8))


def _check_fits(vol, model, config: StainConfig, cluster, *, chunks) -> None:
    """The job's plan, checked before a cluster starts: block shapes against the chunks, tiles
    computed many times over, and blocks whose staining cannot fit in a worker's memory."""

    from vstain_dask.models import load_model

    two_d, vol_shape = _vol_shape(vol)
    stages = _stages(vol_shape, _output_chunks(vol_shape, chunks, two_d=two_d), config)
    available = _worker_memory(cluster)
    if available is None:
        return
    device = str(resolve_device(config.device))
    loaded = load_model(model, device="cpu")
    for _, cfg, blocks in stages:
        check_memory(blocks, cfg, model=loaded, available=available, device=device)


def run_stain(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | None = None,
    config: StainConfig | None = None,
    cluster=None,
    ct_levels: str | tuple[float, float] | None = "auto",
    on_start=None,
    log_file: str | os.PathLike | None = None,
    **options,
) -> StainReport:
    """Stain ``source`` into ``output`` on a cluster: what ``vstain-dask stain`` runs.

    Parameters
    ----------
    model : path, optional
        Default: the bundled model (trained on synthetic phantoms).
    cluster : ClusterConfig, optional
        Default: a local cluster sized to the machine: one worker per core (at most 8) on the
        CPU, one worker when the model runs on CUDA (``--cluster cuda`` for several GPUs).
    ct_levels : "auto", "none" or (bone, background)
        See :func:`resolve_ct_levels`.
    on_start : callable, optional
        Called with the client once workers are up (the CLI prints the dashboard link).
    log_file : path, optional
        Send the cluster's logs (and local workers' stderr) there instead of the terminal
        (see :func:`job_log`); errors of the job then name the file.
    options
        Passed to :func:`stain_to_zarr` (resume, overwrite, chunks, ngff_version, ...).
    """
    model = Path(model) if model is not None else default_model_path()
    config = config or StainConfig()
    source = Path(source)
    # fail early, before starting a cluster: bad input, bad model, existing output, a plan
    # that cannot fit or would recompute every tile many times
    _, vol, _ = check_inputs(
        source,
        output,
        resume=options.get("resume", False),
        overwrite=options.get("overwrite", False),
        break_lock=options.pop("break_lock", False),
    )
    config = _checked_config(vol, source, model, config, ct_levels)
    cluster = _local_gpu_workers(cluster, config.device)
    _check_fits(vol, model, config, cluster, chunks=options.get("chunks"))
    if options.get("resume") and not options.get("overwrite"):
        check_resume(source, output, model=model, config=config, chunks=options.get("chunks"),
                     ngff_version=options.get("ngff_version", "0.5"))  # fmt: skip

    def run(client) -> StainReport:
        return stain_to_zarr(source, output, model=model, config=config, client=client, **options)

    return _on_cluster(cluster, run, on_start=on_start, log_file=log_file)


def _checked_config(vol, source: Path, model: Path, config: StainConfig, ct_levels) -> StainConfig:
    """``config`` with the CT levels to stain with, once the model is known to load and its
    pixel size has been compared with the volume's voxel size (a difference allowed by
    ``config.resample`` is a warning to the caller of :func:`run_stain`)."""
    _model_ref(model)
    said = check_pixel_size(vol, _model_pixel_size(model), config)["warning"]
    if said:
        warnings.warn(said, UserWarning, stacklevel=3)
    levels = resolve_ct_levels(source, model, ct_levels)
    if levels != config.ct_levels:
        config = dataclasses.replace(config, ct_levels=levels)
    return config


def _on_cluster(cluster, run, *, on_start, log_file) -> StainReport:
    """``run(client)`` on a client of ``cluster``, the cluster's logs sent to ``log_file``
    when given (and then named by the error of a failed job)."""
    from vstain_dask.cluster import connect

    logged = job_log(Path(log_file)) if log_file is not None else contextlib.nullcontext()
    try:
        with logged, connect(cluster) as client:
            if on_start is not None:
                on_start(client)
            try:
                return run(client)
            except KeyboardInterrupt:
                # the cluster is torn down mid-flight: its comms log tracebacks that mean nothing
                for name in ("distributed", "tornado", "asyncio"):
                    logging.getLogger(name).setLevel(logging.CRITICAL + 1)
                raise
    except (JobError, ClusterError) as e:
        log_path = Path(log_file) if log_file is not None else None
        if log_path is not None and log_path.is_file() and log_path.stat().st_size:
            raise type(e)(f"{e} (the cluster's log: {log_path})") from e
        raise
