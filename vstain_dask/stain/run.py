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
import re
import warnings
from pathlib import Path

from vstain_dask.errors import ClusterError, InputError, JobError
from vstain_dask.runtime import default_device, resolve_device
from vstain_dask.stain.execute import StainReport, stain_to_zarr
from vstain_dask.stain.job import (
    _model_pixel_size,
    _model_ref,
    check_inputs,
    check_pixel_size,
    check_resume,
    stained_grid,
)
from vstain_dask.stain.params import StainConfig
from vstain_dask.stain.plan import _stages, check_memory


def default_model_path() -> Path:
    """The bundled default model (trained on synthetic phantoms)."""
    from importlib.resources import files

    return Path(str(files("vstain_dask") / "data" / "default_model.pt"))


def resolve_ct_levels(source, model, ct_levels) -> tuple[float, float] | None:
    """The (bone, background) levels to normalize the CT with (see :func:`resolve_levels`)."""
    levels = resolve_levels(source, model, ct_levels)
    return None if levels is None else (levels.bone, levels.background)


def resolve_levels(source, model, ct_levels, *, qc=None):
    """The CT levels (:class:`vstain_dask.preprocess.CTLevels`) to normalize the CT with.

    ``"auto"`` estimates them from the volume (a bounded sample of it, with a confidence;
    refused below :attr:`~vstain_dask.preprocess.CTLevelRules.min_confidence`) when the model
    expects normalized CT, and writes the QC figure to ``qc`` when given; ``None``/``"none"``
    uses the volume as it is (None is returned); a pair is used as given (manual).
    """
    from vstain_dask import ngff
    from vstain_dask.models import load_model
    from vstain_dask.preprocess import CTLevels, LevelSource

    if ct_levels is None or (isinstance(ct_levels, str) and ct_levels.lower() == "none"):
        return None
    if not isinstance(ct_levels, str):
        if isinstance(ct_levels, CTLevels):
            return ct_levels
        bone, background = ct_levels
        return CTLevels(bone=bone, background=background, source=LevelSource.MANUAL)
    if ct_levels.lower() != "auto":
        raise InputError(f"ct_levels must be 'auto', 'none' or BONE,BACKGROUND, got {ct_levels!r}")
    if not load_model(model).normalization.ct_normalized:
        return None
    from vstain_dask.preprocess import estimate_ct_levels

    vol = ngff.open_volume(source)
    material = (vol.attrs.get("vstain") or {}).get("material")  # phantoms record it
    try:
        return estimate_ct_levels(vol.data, material=material, qc=qc)
    except InputError as e:
        raise InputError(
            f"could not estimate the CT levels of {source}: {e}; measure bone and the "
            "embedding in two regions (ROIs) and give them with --ct-levels BONE,BACKGROUND "
            "(the raw grey values of bone and of the embedding; ct_levels=(bone, background) "
            "in Python), or --ct-levels none (ct_levels='none') for a volume already normalized"
        ) from e


def levels_qc_path(output: str | os.PathLike) -> Path:
    """Where a stain writes the QC figure of automatic CT levels: ``<name>.levels.png`` beside
    its output (``.ome.zarr``/``.zarr`` dropped)."""
    p = Path(output)
    name = re.sub(r"(\.ome)?\.zarr$", "", p.name)
    return p.with_name(f"{name}.levels.png")


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

    grid = stained_grid(vol, model=model, config=config, chunks=chunks)  # resampled or not
    stages = _stages(grid.vol_shape, grid.chunks, config)
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
    on_levels=None,
    on_pixel_size=None,
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
    ct_levels : "auto", "none", (bone, background) or CTLevels
        See :func:`resolve_levels`. Automatic levels come with the QC figure
        :func:`levels_qc_path` beside the output; the levels, where they came from (and the
        figure) are recorded in the output's provenance (``ct_levels``, ``ct_levels_qc``).
    on_levels : callable, optional
        Called with the CTLevels (None: the volume is used as it is) and the QC figure's path
        (None when none was written) once they are known, before a cluster starts (the CLI
        prints them).
    on_pixel_size : callable, optional
        Called with the line that says the volume is resampled to the model's pixel size
        (``config.resample`` ``auto``), before a cluster starts; not called otherwise.
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
    _, vol, target = check_inputs(
        source,
        output,
        resume=options.get("resume", False),
        overwrite=options.get("overwrite", False),
        break_lock=options.pop("break_lock", False),
    )
    config, levels, qc, note = _checked_config(vol, source, model, config, ct_levels, target)
    if on_pixel_size is not None and note:
        on_pixel_size(note)
    if on_levels is not None:
        on_levels(levels, qc)
    cluster = _local_gpu_workers(cluster, config.device)
    _check_fits(vol, model, config, cluster, chunks=options.get("chunks"))
    if options.get("resume") and not options.get("overwrite"):
        check_resume(source, output, model=model, config=config, chunks=options.get("chunks"),
                     ngff_version=options.get("ngff_version", "0.5"))  # fmt: skip

    def run(client) -> StainReport:
        report = stain_to_zarr(source, output, model=model, config=config, client=client,
                               **options)  # fmt: skip
        _record_levels(report.output, levels, qc)
        return report

    return _on_cluster(cluster, run, on_start=on_start, log_file=log_file)


def _checked_config(vol, source: Path, model: Path, config: StainConfig, ct_levels, target):
    """(``config`` with the CT levels to stain with, those levels, the path of their QC
    figure or None, the line saying the volume is resampled or None), once the model is known
    to load and its pixel size has been compared with the volume's voxel size (a difference
    stained as it is with ``--resample off`` is a warning to the caller of
    :func:`run_stain`)."""
    _model_ref(model)
    compared = check_pixel_size(vol, _model_pixel_size(model), config)
    if compared["warning"]:
        warnings.warn(compared["warning"], UserWarning, stacklevel=3)
    auto = isinstance(ct_levels, str) and ct_levels.lower() == "auto"
    qc = levels_qc_path(target) if auto and target is not None else None
    levels = resolve_levels(source, model, ct_levels, qc=qc)
    if levels is None or levels.confidence is None:
        qc = None
    pair = None if levels is None else (levels.bone, levels.background)
    if pair != config.ct_levels:
        config = dataclasses.replace(config, ct_levels=pair)
    return config, levels, qc, compared.get("note")


def _record_levels(output, levels, qc: Path | None) -> None:
    """The CT levels a stain used, where they came from and their QC figure, in the output's
    provenance (``parameters.ct_levels`` holds the pair that defines the result)."""
    from vstain_dask import ngff

    record = None if levels is None else levels.record()
    ngff.update_provenance(
        output, ct_levels=record, ct_levels_qc=None if qc is None else str(Path(qc).resolve())
    )


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
