"""``vstain-dask stain``: the main job."""

from __future__ import annotations

import click

from vstain_dask.cli._options import (
    IntTuple,
    Terminated,
    cluster_options,
    command_line,
    debugging,
    exit_interrupted,
    parse_ct_levels,
    stop_on_sigterm,
)
from vstain_dask.tiling import Tiling  # numpy only: --help imports no torch

#: the defaults of --tile, --step and --blend
_TILING = Tiling()


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option("-o", "--output", type=click.Path(), help="Output store [INPUT.stained.ome.zarr].")
@click.option("--model", type=click.Path(), help="Checkpoint [the bundled phantom model].")
@click.option(
    "--axes", default="z", show_default=True, help="Staining axes: z, or zyx to fuse three."
)
@click.option("--tile", default=_TILING.tile, show_default=True, help="Tile size in pixels.")
@click.option("--step", default=_TILING.step, show_default=True, help="Tile step in pixels.")
@click.option("--blend", default=_TILING.blend.value, show_default=True,
              help="mean, gaussian or cosine.")  # fmt: skip
@click.option("--fuse", default="mean", show_default=True, help="Axis fusion: mean or median.")
@click.option(
    "--fusion",
    default="passes",
    show_default=True,
    help="How --axes zyx is computed: passes (one pass per axis into 8-bit intermediates, 3x "
    "the tiles of one axis) or blocks (in floating point inside cubes with halos, ~9x).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Tiles per model call [8 on the CPU, 32 on a GPU].",
)
@click.option(
    "--prefilter-sigma",
    type=click.FloatRange(min=0),
    default=None,
    help="3D Gaussian prefilter, voxels [the model's: 1 for a model trained on pairs from "
    "`register` (interpolated, as the paper's), 0 for others and models that record none].",
)
@click.option(
    "--ct-levels",
    default="auto",
    show_default=True,
    help="CT normalization: auto, none, or BONE,BACKGROUND raw means.",
)
@click.option(
    "--resample",
    type=click.Choice(["auto", "check", "off"]),
    default="auto",
    show_default=True,
    help="When the volume's voxel size and the model's pixel size differ by more than 10 %: "
    "auto resamples the volume to the model's size (area average where finer, linear where "
    "coarser) and writes the stain at that size; check refuses; off stains at the volume's "
    "size with a warning.",
)
@click.option("--alpha", is_flag=True, help="Add an alpha channel (255 - mean RGB).")
@click.option("--uncertainty", is_flag=True, help="Also write the spread between axes.")
@click.option("--mask", is_flag=True, help="Paint outside the sample (convex hull) background.")
@click.option(
    "--mask-colour", type=IntTuple(3, "R,G,B", minimum=0), default="255,255,255", show_default=True
)
@click.option("--chunks", type=IntTuple(3), help="Output chunks Z,Y,X [64,256,256].")
@click.option("--block", type=IntTuple(3), help="Block (task) shape Z,Y,X.")
@click.option("--ngff-version", type=click.Choice(["0.4", "0.5"]), default="0.5", show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted job on OUTPUT.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option(
    "--break-lock",
    is_flag=True,
    help="Remove OUTPUT's lock left by a job that no longer runs (e.g. on a node that went "
    "down); refused while a job on this host holds it.",
)
@cluster_options(
    default="local",
    cluster_help="Where the blocks are stained.",
    jobs_help="Cluster workers / SLURM jobs (the same as --workers).",
)
@click.option("--workers", type=int, help="Local worker processes, or SLURM jobs.")
@click.option("--device", help="Torch device [cuda if present, else cpu].")
@click.option("--autocast/--no-autocast", default=None, help="bf16 autocast [on for CUDA].")
@click.option(
    "--compile/--no-compile",
    "compile_",
    default=None,
    help="torch.compile the generator [on for CUDA, off for the CPU].",
)
@click.option("--retries", default=2, show_default=True, help="Retries per failed block.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def stain(input_path, output, model, axes, tile, step, blend, fuse, fusion, batch_size,
          prefilter_sigma, ct_levels, resample, alpha, uncertainty, mask, mask_colour, chunks,
          block, ngff_version, resume, overwrite, break_lock, cluster_config, workers, device,
          autocast, compile_, retries, progress):  # fmt: skip
    """Stain a CT volume (OME-Zarr) into an RGB OME-Zarr volume."""
    import dataclasses

    from vstain_dask.stain import StainConfig, default_output, job_log_path, run_stain

    prefilter_sigma, why = _prefilter_sigma(model, prefilter_sigma)
    config = StainConfig(
        axes=axes, tile=tile, step=step, blend=blend, fuse=fuse, fusion=fusion,
        batch_size=batch_size, prefilter_sigma=prefilter_sigma, resample=resample, alpha=alpha,
        uncertainty=uncertainty, mask=mask, mask_colour=mask_colour, block=block,
        autocast=autocast, compile=compile_, device=device,
    )  # fmt: skip
    if cluster_config.workers is None and workers is not None:
        cluster_config = dataclasses.replace(cluster_config, workers=workers)
    if model is None:
        click.echo(
            "using the bundled model, trained on synthetic phantoms (not on real samples)",
            err=True,
        )
    target = output or default_output(input_path)
    debug = debugging()
    try:
        with stop_on_sigterm():
            report = run_stain(
                input_path,
                output,
                model=model,
                config=config,
                cluster=cluster_config,
                ct_levels=parse_ct_levels(ct_levels, keywords=("auto", "none")),
                on_start=lambda client: _say_start(client, prefilter_sigma, why),
                on_pixel_size=lambda line: click.echo(line, err=True),
                # the cluster's own logs go to a file beside the job (to the terminal with --debug)
                log_file=None if debug else job_log_path(target),
                on_levels=_say_levels,
                chunks=chunks,
                ngff_version=ngff_version,
                resume=resume,
                overwrite=overwrite,
                break_lock=break_lock,
                retries=retries,
                progress=progress,
                command=command_line(),
            )
    except KeyboardInterrupt as e:
        exit_interrupted(
            f"{'terminated' if isinstance(e, Terminated) else 'interrupted'}: {target} is "
            "incomplete; rerun the same command with --resume to finish it",
            e,
        )
    _say_report(report)


def _prefilter_sigma(model, requested: float | None) -> tuple[float, str | None]:
    """The prefilter σ to stain with and why (``--prefilter-sigma``, else the model's)."""
    from vstain_dask.errors import VStainError
    from vstain_dask.stain import default_model_path
    from vstain_dask.stain.job import model_prefilter_record
    from vstain_dask.stain.params import choose_prefilter_sigma

    try:
        record = model_prefilter_record(model or default_model_path())
    except VStainError:
        # a model that cannot be read is refused by the stain, after the input's checks
        return (0.0 if requested is None else requested), None
    return choose_prefilter_sigma(record, requested)


def _say_start(client, prefilter_sigma: float, why: str | None) -> None:
    """Where the cluster's dashboard is and how many workers it has, once they are up, and
    the prefilter the stain applies."""
    from vstain_dask.cluster import dashboard_url

    url = dashboard_url(client)
    n = len(client.scheduler_info().get("workers", {}))
    click.echo(f"dashboard: {url or 'not available'} ({n} worker(s))", err=True)
    if why is not None:
        click.echo(f"prefilter: σ = {prefilter_sigma:g} voxel ({why})", err=True)


def _say_levels(levels, qc) -> None:
    """The CT levels the stain normalizes with, where they came from, and their QC figure."""
    if levels is not None:
        click.echo(levels.describe() + (f"; QC figure {qc}" if qc else ""), err=True)


def _say_report(report) -> None:
    """What the stain wrote, how fast, and the input chunks it found missing."""
    if report.already_complete:
        click.echo(f"{report.output} is already complete ({report.blocks} blocks); nothing to do")
        return
    missing, total = report.missing_chunks
    click.echo(
        f"wrote {report.output}: {report.blocks} blocks ({report.blocks_skipped} resumed), "
        f"{report.tiles} tiles in {report.seconds:.1f} s: {report.blocks_per_s:.2f} blocks/s, "
        f"{report.voxels_per_s:,.0f} voxels/s, {report.tiles_per_s:.1f} tiles/s"
        + (f"; {missing} of {total} input chunks were missing (read as the fill value)"
           if missing else "")
    )  # fmt: skip
