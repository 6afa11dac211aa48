"""Running a stain job into an OME-Zarr store: :func:`stain_to_zarr`.

Under the job's lock the output is created (or a resumed one checked), each stage's blocks go
to the cluster a few per worker at a time (read, stain and write task each, see
:mod:`vstain_dask.stain.block`), the passes of a fused stain are fused, the pyramid is written,
and only then is the output marked complete and the ledger removed.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import itertools
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# a worker resource that admits one staining task at a time (one model per GPU or CPU worker)
# while the worker's second thread reads the next block, so reads overlap compute
from vstain_dask import intensity
from vstain_dask._validate import keyword_bundles
from vstain_dask.cluster import COMPUTE_RESOURCE
from vstain_dask.errors import InputError, JobError
from vstain_dask.stain.block import _InputFault, _read_block, _stain_task, _write_block
from vstain_dask.stain.job import Job, _open_job, check_inputs, plan_job
from vstain_dask.stain.params import FuseMode, StainConfig
from vstain_dask.stain.plan import Block, Stage

#: blocks a worker holds at a time while a stage runs: one read ahead, one being stained, one
#: being written (``_run_stage`` submits the next block when one is written)
BLOCKS_IN_FLIGHT_PER_WORKER = 3


@dataclasses.dataclass(frozen=True)
class StainReport:
    """What a finished stain did."""

    output: Path
    blocks: int
    blocks_skipped: int
    tiles: int
    voxels: int
    seconds: float
    dashboard: str | None
    #: task seconds summed over blocks: reading input, staining (model + blend), writing output
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    #: (chunks of the input not stored, so read as its fill value; chunks it has in all)
    missing_chunks: tuple[int, int] = (0, 0)

    @property
    def already_complete(self) -> bool:
        """The output was complete before this run: nothing was stained."""
        return self.blocks_skipped == self.blocks and self.tiles == 0 and self.seconds == 0

    @property
    def voxels_per_s(self) -> float:
        return self.voxels / self.seconds if self.seconds > 0 else float("nan")

    @property
    def blocks_per_s(self) -> float:
        done = self.blocks - self.blocks_skipped
        return done / self.seconds if self.seconds > 0 else float("nan")

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else float("nan")


@dataclasses.dataclass(frozen=True)
class StainOptions:
    """How :func:`stain_to_zarr` runs a job, apart from its input, output, model and
    parameters: the output's layout, what to do with an existing output, and the running.

    Parameters
    ----------
    chunks : (z, y, x), optional
        Output chunks; default (64, 256, 256) clipped to the volume.
    ngff_version : {"0.4", "0.5"}
        The output's NGFF version.
    resume, overwrite, break_lock : bool
        Continue an interrupted job on the output, replace the output, remove a lock left by
        a job that no longer runs (see :func:`stain_to_zarr`).
    retries : int
        Times a failed block is retried.
    progress : bool
        Show a progress bar.
    command : str, optional
        The command line, for the provenance.
    """

    chunks: Sequence[int] | None = None
    ngff_version: str = "0.5"
    resume: bool = False
    overwrite: bool = False
    break_lock: bool = False
    retries: int = 2
    progress: bool = True
    command: str | None = None

    @classmethod
    def of(cls, function: str, options: dict[str, Any]) -> StainOptions:
        """The options given as keywords to ``function``; a keyword that is none of them is
        refused in the words Python uses for a keyword a function does not take."""
        return keyword_bundles(function, options, cls)[0]


def stain_to_zarr(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike,
    config: StainConfig | None = None,
    client=None,
    **options: Any,
) -> StainReport:
    """Stain an OME-Zarr CT volume into an OME-Zarr RGB(A) volume, block by block.

    Parameters
    ----------
    source : path
        OME-Zarr (NGFF 0.4 or 0.5) with a (z, y, x) or (y, x) greyscale image.
    output : path, optional
        Default ``<name>.stained.ome.zarr`` beside the input.
    model : path
        A vstain-dask checkpoint.
    config : StainConfig
    client : distributed.Client, optional
        Where blocks run; default: the current client, else a local cluster.
    **options
        Keywords, the fields of :class:`StainOptions` (``chunks``, ``ngff_version``,
        ``resume``, ``overwrite``, ``break_lock``, ``retries``, ``progress``, ``command``);
        among them:
    chunks : (z, y, x), optional
        Output chunks; default (64, 256, 256) clipped to the volume.
    resume : bool
        Continue an interrupted job on ``output``: finished blocks are kept.
    overwrite : bool
        Replace an existing ``output``.
    break_lock : bool
        Remove the lock of a job that no longer runs but could not be seen to have ended (one
        on another host whose node went down); refused while a job on this host holds it.
    retries : int
        Times a failed block is retried (on another worker if its worker died).

    Returns
    -------
    StainReport

    Raises
    ------
    OutputExistsError
        ``output`` exists and neither ``resume`` nor ``overwrite`` was given, or another job is
        writing it.
    JobError
        Some blocks failed after their retries; the output stays marked incomplete and resumable.
    """
    options = StainOptions.of("stain_to_zarr", options)
    return _stain(source, output, model=model, config=config or StainConfig(), client=client,
                  options=options)  # fmt: skip


def _stain(source, output, *, model, config: StainConfig, client, options: StainOptions):
    """:func:`stain_to_zarr` with its options as one object: check, plan, and under the job's
    lock open the output and run the job (nothing to run when the output is complete)."""
    source, vol, output = check_inputs(
        source, output, resume=options.resume, overwrite=options.overwrite,
        break_lock=options.break_lock,
    )  # fmt: skip
    job = plan_job(source, output, vol, model=model, config=config, chunks=options.chunks,
                   ngff_version=options.ngff_version)  # fmt: skip
    job.ledger.acquire(fingerprint=job.fingerprint)  # refuses while another live job holds it
    try:
        ident = _open_job(job, overwrite=options.overwrite)
        if ident is None:
            return StainReport(
                output=output, blocks=job.n_blocks, blocks_skipped=job.n_blocks, tiles=0,
                voxels=job.voxels, seconds=0.0, dashboard=None,
            )  # fmt: skip
        if job.resampled is not None:
            _write_resampled(job, client)
        missing = _missing_chunks(source)
        job = job.started(ident, missing_chunks=missing[0], command=options.command)
        report = _create_and_run(
            job, client=client, retries=options.retries, progress=options.progress
        )
        return dataclasses.replace(report, missing_chunks=missing)
    except OSError as e:
        if _disk_full(e):
            raise JobError(_disk_full_message(output)) from e
        raise
    finally:
        job.ledger.release()


def _write_resampled(job: Job, client) -> None:
    """Write the volume resampled to the model's pixel size into the job's folder, on
    ``client`` (default: the current one), block by block, marked complete at the end; a
    complete copy that records what this job would write (a resumed job) is kept."""
    import dask
    from distributed import get_client

    from vstain_dask import ngff

    path, record = job.read_source, job.resampled_record()
    try:
        if ngff.open_volume(path).attrs["vstain"].get("stain_input") == record:
            return
    except Exception:  # absent, incomplete or unreadable: written again
        pass
    r = job.resampled
    with dask.config.set(scheduler=client or get_client()):
        ngff.write_volume(
            r.data, path, axes=r.axes, chunks=job.chunks[-len(r.axes):], n_levels=1,
            ngff_version=job.ngff_version, attrs={"stain_input": record}, overwrite=True,
            **r.spatial,
        )  # fmt: skip


def _missing_chunks(source: Path) -> tuple[int, int]:
    """(chunks of the input not stored, chunks it has in all), with a warning when some are
    missing (to the caller of :func:`stain_to_zarr`)."""
    from vstain_dask import ngff

    missing = ngff.missing_chunks(source)
    if missing[0]:
        warnings.warn(
            f"{missing[0]} of {missing[1]} chunks of {source} are not stored; they are read "
            f"as the fill value {ngff.level_array(source).fill_value}, as zarr does (a store "
            "copied in part, or written by a job that stopped?)",
            RuntimeWarning,
            stacklevel=4,
        )
    return missing


def _disk_full(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _disk_full_message(output: Path) -> str:
    return (
        f"no space left for {output} (disk full or quota reached); it is incomplete: free some "
        "space and rerun the same command with --resume"
    )


def _create_and_run(job: Job, *, client, retries: int, progress: bool) -> StainReport:
    """Create the output (and its uncertainty volume) unless a resumed job has it, then run."""
    from vstain_dask import ngff

    config, two_d, vol_shape, chunks = job.config, job.two_d, job.vol_shape, job.chunks
    spatial = job.spatial
    rgb_spatial = {key: {k: v for k, v in d.items() if k != "c"} for key, d in spatial.items()}
    if not job.output.exists():
        ngff.create_volume(
            job.output,
            shape=(config.out_channels, *(vol_shape[1:] if two_d else vol_shape)),
            dtype="uint8",
            chunks=(config.out_channels, *(chunks[1:] if two_d else chunks)),
            axes="cyx" if two_d else "czyx",
            **rgb_spatial,
            ngff_version=job.ngff_version,
            kind="rgb",
            channel_names=list("RGBA"[: config.out_channels]),
            attrs=job.provenance,
        )
        if config.uncertainty:
            ngff.create_volume(
                job.output / "uncertainty",
                shape=vol_shape[1:] if two_d else vol_shape,
                dtype="uint8",
                chunks=chunks[1:] if two_d else chunks,
                axes="yx" if two_d else "zyx",
                **spatial,
                ngff_version=job.ngff_version,
                kind="intensity",
                attrs={"description": "spread of the stain between axes (8-bit std)"},
                # magenta over the stain; spreads between axes are mostly well below 64 of 255
                display=ngff.Display(0, 64, min=0, max=255, color="FF00FF"),
            )
    return _run(job, client=client, retries=retries, progress=progress)


def _mask_planes(planes: np.ndarray, *, ct_levels) -> np.ndarray:
    """Per-slice sample masks (convex hull of bone and screw) of whole (Y, X) planes."""
    from vstain_dask.preprocess import CTLevels, ct_tissue_mask

    levels = CTLevels(*ct_levels) if ct_levels is not None else None
    return np.stack([ct_tissue_mask(p, levels) for p in planes]).astype(np.uint8)


def _write_mask(job: Job) -> str:
    """Compute the sample mask slab by slab (whole planes) on the cluster and store it as NGFF
    labels ``sample`` of the output; skipped when a resumed job already has it."""
    from vstain_dask import ngff

    path = job.output / "labels" / "sample"
    if "mask" in job.ledger.done():
        return str(path)
    data = ngff.open_volume(job.read_source).data
    if job.two_d:
        data = data[None]
    cz = 1 if job.two_d else ngff.open_volume(job.output, allow_incomplete=True).data.chunks[1][0]
    planes = data.rechunk((cz, -1, -1))
    mask = planes.map_blocks(_mask_planes, ct_levels=job.config.ct_levels, dtype=np.uint8)
    ngff.write_labels(job.output, "sample", mask[0] if job.two_d else mask,
                      table=ngff.LabelTable.mask("sample"), overwrite=True)  # fmt: skip
    job.ledger.mark("mask")
    return str(path)


@dataclasses.dataclass(frozen=True)
class _StageTasks:
    """How a stage's blocks go to the cluster: a read, a stain and a write task each, written
    to ``array_path`` of the store ``target`` (the output, or a pass in the job's folder)."""

    job: Job
    stage: Stage
    target: str
    array_path: str
    mask_path: str | None
    retries: int
    #: whether every worker has the compute resource that admits one staining task at a time
    gated: bool

    def submit(self, client, b: Block):
        job, name, tag = self.job, self.stage.prefix + b.name, self.job.tag
        read = client.submit(
            _read_block, b, source=str(job.read_source), two_d=job.two_d,
            mask_path=self.mask_path,
            key=f"read-{tag}-{name}", retries=self.retries, pure=False,
        )  # fmt: skip
        stained = client.submit(
            _stain_task, read, b, vol_shape=job.vol_shape, model_path=job.model_path,
            model_sha=job.model_sha, config=self.stage.config, key=f"stain-{tag}-{name}",
            retries=self.retries, pure=False,
            resources={COMPUTE_RESOURCE: 1} if self.gated else None,
        )  # fmt: skip
        # the next task holds each result; released as soon as it has run
        return client.submit(
            _write_block, stained, b, output=str(job.output), target=self.target,
            array_path=self.array_path, ledger_name=name, two_d=job.two_d,
            key=f"write-{tag}-{name}", retries=self.retries, pure=False,
        )  # fmt: skip


def _pass_path(job: Job, stage: Stage) -> str:
    """Where one pass of a fused stain is kept: 8-bit RGB in the job's folder."""
    return str(job.ledger.root / f"axis-{stage.config.axes}.zarr")


def _stage_target(job: Job, stage: Stage) -> tuple[str, str]:
    """(store, array path) a stage writes: the output's level 0, or for one pass of a fused
    stain an 8-bit RGB array in the job's folder (created unless a resumed job has it)."""
    import zarr

    if not stage.prefix:
        return str(job.output), "0"
    target = _pass_path(job, stage)
    zarr.open_array(
        store=target, mode="a", shape=(3, *job.vol_shape), chunks=(3, *job.chunks),
        dtype="uint8", fill_value=0,
    )  # fmt: skip
    return target, ""


def _run_stage(
    job: Job, stage: Stage, *, client, retries: int, bar, mask_path: str | None
) -> tuple[int, dict[str, float], int]:
    """Submit a stage's blocks (read, stain and write task each) and wait for them.

    At most ``BLOCKS_IN_FLIGHT_PER_WORKER`` blocks per worker are submitted at a time, and the
    next one when one is written: how many blocks a worker holds in memory (read ahead, being
    stained, waiting to be written) does not depend on its thread count or on dask's
    scheduling heuristics, so workers can have threads to spare for writing, the pyramid and
    the fusion pass.

    Returns (tiles, summed task timings, blocks skipped as already done)."""
    from distributed import as_completed

    blocks = stage.blocks
    done = job.ledger.done()
    todo = [b for b in blocks if stage.prefix + b.name not in done]
    if bar is not None:
        bar.update(len(blocks) - len(todo))
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    gated = bool(workers) and all(COMPUTE_RESOURCE in w.get("resources", {}) for w in workers)
    tasks = _StageTasks(job, stage, *_stage_target(job, stage), mask_path, retries, gated)
    futures: dict[Any, str] = {}  # the blocks in flight: submitted and not yet written

    def submit(b: Block):
        fut = tasks.submit(client, b)
        futures[fut] = stage.prefix + b.name
        return fut

    pending = iter(todo)
    tally = _Tally()
    try:
        running = as_completed([submit(b) for b in itertools.islice(pending, _window(client))])
        for fut in running:
            if not tally.add(futures[fut], _block_result(fut, job.output)):
                running.add(fut)  # lost with its worker after it finished: computed again
                continue
            futures.pop(fut)
            if bar is not None:
                bar.update(1)
            fut.release()
            for b in itertools.islice(pending, max(0, _window(client) - len(futures))):
                running.add(submit(b))
    except BaseException:
        client.cancel(list(futures))
        raise
    if tally.failed:
        raise JobError(_failed_message(tally.failed, len(blocks), job.output))
    return tally.tiles, tally.timings, len(blocks) - len(todo)


class _Tally:
    """What a stage's blocks came to: tiles, task timings, failures, and the blocks whose
    result was lost with their worker after they finished (a cancelled SLURM job, say)."""

    def __init__(self) -> None:
        self.tiles = 0
        self.timings = {"read": 0.0, "compute": 0.0, "write": 0.0}
        self.failed: dict[str, str] = {}
        self.lost: collections.Counter[str] = collections.Counter()

    def add(self, name: str, result: dict[str, float] | str | None) -> bool:
        """Count a block's result; False when it was lost and should be waited for again (the
        scheduler recomputes it: the block's bytes are the same)."""
        if result is None:
            self.lost[name] += 1
            if self.lost[name] <= _MAX_LOST:
                return False
            result = f"its result was lost with its worker {_MAX_LOST} times"
        if isinstance(result, str):
            self.failed[name] = result
        else:
            self.tiles += int(result["tiles"])
            for k in self.timings:
                self.timings[k] += float(result[k])
        return True


#: how often a block's result may be lost with its worker before the block counts as failed
_MAX_LOST = 3


def _window(client) -> int:
    """Blocks in flight at most: ``BLOCKS_IN_FLIGHT_PER_WORKER`` per worker, counted anew each
    time (workers can join or leave while a stage runs: SLURM jobs start when they start)."""
    n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
    return BLOCKS_IN_FLIGHT_PER_WORKER * max(n, 1)


def _block_result(fut, output: Path) -> dict[str, float] | str | None:
    """A written block's timings, why it failed after its retries, or None when its result was
    lost with its worker after it finished (the scheduler computes it again). Raises for what no
    rerun can fix by itself: a fault in the input, a full disk."""
    if fut.status == "finished":
        result = fut.result()
        if isinstance(result, _InputFault):
            raise InputError(f"{result.message} ({output} is left incomplete)")
        return result
    if fut.status in ("pending", "lost"):
        return None
    if fut.status == "cancelled":
        return "cancelled by the scheduler"
    exc = fut.exception()
    if _disk_full(exc):
        raise JobError(_disk_full_message(output)) from exc
    return f"{type(exc).__name__}: {exc}"


def _failed_message(failed: dict[str, str], n_blocks: int, output: Path) -> str:
    first = next(iter(failed.items()))
    return (
        f"{len(failed)} of {n_blocks} blocks failed ({', '.join(sorted(failed)[:5])}"
        f"{', ...' if len(failed) > 5 else ''}); first: {first[0]}: {first[1]}; "
        f"the output {output} is incomplete: fix the cause and rerun with --resume"
    )


def _fuse_passes(
    paths: list[str], output: Path, *, config: StainConfig, two_d: bool, mask_path: str | None
) -> None:
    """Fuse the 8-bit single-axis passes into the output (and the spread between them)."""
    import dask
    import dask.array as da
    import zarr

    stack = da.stack([da.from_zarr(zarr.open_array(store=p, mode="r")) for p in paths])
    stack = stack.astype(np.float32)  # (axes, 3, Z, Y, X)
    if config.fuse is FuseMode.MEDIAN:
        fused = stack.map_blocks(
            lambda s: np.median(s, axis=0),
            drop_axis=0,
            dtype=np.float32,
            meta=np.array((), np.float32),
        )
    else:
        fused = stack.mean(axis=0, dtype=np.float32)
    rgb = da.clip(da.rint(fused), 0, 255).astype(np.uint8)
    if mask_path is not None:
        inside = da.from_zarr(zarr.open_array(store=mask_path, path="0", mode="r"))
        if two_d:
            inside = inside[None]
        colour = np.asarray(config.mask_colour, np.uint8).reshape(3, 1, 1, 1)
        rgb = da.where(inside.astype(bool)[None], rgb, colour)
    if config.alpha:
        alpha = intensity.alpha_from_rgb(rgb)
        rgb = da.concatenate([rgb, alpha[None]], axis=0).rechunk({0: -1})
    level0 = zarr.open_array(store=str(output), path="0", mode="r+")
    writes = [da.store(rgb[:, 0] if two_d else rgb, level0, lock=False, compute=False)]
    if config.uncertainty:
        spread = stack.std(axis=0, dtype=np.float32).mean(axis=0, dtype=np.float32)
        spread = da.clip(da.rint(spread), 0, 255).astype(np.uint8)
        unc = zarr.open_array(store=str(output / "uncertainty"), path="0", mode="r+")
        writes.append(da.store(spread[0] if two_d else spread, unc, lock=False, compute=False))
    dask.compute(*writes)


def _run(job: Job, *, client, retries: int, progress: bool) -> StainReport:
    """Run the job's stages on ``client`` (default: the current one), fuse the passes of a fused
    stain, write the pyramid, mark the output complete and forget the ledger."""
    from distributed import get_client

    from vstain_dask import ngff
    from vstain_dask.cluster import dashboard_url

    if client is None:
        client = get_client()
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=job.n_blocks, unit="block", desc="stain")
    mask_path = _write_mask(job) if job.config.mask else None
    tiles, skipped = 0, 0
    timings = {"read": 0.0, "compute": 0.0, "write": 0.0}
    try:
        for stage in job.stages:
            t, tm, sk = _run_stage(
                job, stage, client=client, retries=retries, bar=bar,
                mask_path=None if stage.prefix else mask_path,
            )  # fmt: skip
            tiles += t
            skipped += sk
            for k in timings:
                timings[k] += tm[k]
    finally:
        if bar is not None:
            bar.close()
    passes = [_pass_path(job, stage) for stage in job.stages if stage.prefix]
    if passes:
        _fuse_passes(passes, job.output, config=job.config, two_d=job.two_d, mask_path=mask_path)
    ngff.write_pyramid(job.output)
    if job.config.uncertainty:
        ngff.write_pyramid(job.output / "uncertainty")
    seconds = time.perf_counter() - t0
    _mark_complete(job.output, seconds=seconds, tiles=tiles)
    if job.resampled is not None:  # the job's copy of its input goes with the job's folder
        shutil.rmtree(job.read_source, ignore_errors=True)
    job.ledger.remove()
    return StainReport(
        output=job.output, blocks=job.n_blocks, blocks_skipped=skipped, tiles=tiles,
        voxels=job.voxels, seconds=seconds, dashboard=dashboard_url(client), timings=timings,
    )  # fmt: skip


def _mark_complete(output: Path, *, seconds: float, tiles: int) -> None:
    from vstain_dask import ngff

    ngff.update_provenance(output, complete=True, seconds=round(seconds, 3), tiles=tiles)
