"""``vstain-dask demo``: the main job on the built-in default; ``--pipeline``: the whole chain."""

from __future__ import annotations

import click

from vstain_dask.cli._options import IntTuple, debugging
from vstain_dask.demo_pipeline import SECTION_POSES, PipelineConfig

_SHAPE = (64, 256, 256)
#: the pipeline's defaults, stated once in its config
_PIPE = PipelineConfig()


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


@click.command()
@click.option("-o", "--out-dir", default="vstain-demo", show_default=True, type=click.Path())
@click.option("--shape", type=IntTuple(3),
              help=f"Phantom size Z,Y,X in voxels  [default: {_csv(_SHAPE)}; "
                   f"{_csv(_PIPE.shape)} with --pipeline]")  # fmt: skip
@click.option("--seed", default=0, show_default=True)
@click.option("--pipeline", is_flag=True,
              help="Run the whole chain instead: phantom, sections, import, register, train, "
                   "stain, evaluate (into OUT_DIR/pipeline).")  # fmt: skip
@click.option("--sections", type=click.IntRange(1, len(SECTION_POSES)), default=_PIPE.sections,
              show_default=True,
              help="With --pipeline: sections cut and registered.")  # fmt: skip
@click.option("--epochs", type=click.IntRange(1), default=_PIPE.epochs, show_default=True,
              help="With --pipeline: training epochs.")  # fmt: skip
@click.option("--patch-size", type=click.IntRange(16), default=_PIPE.patch_size, show_default=True,
              help="With --pipeline: training and evaluation patch side, pixels.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace outputs of an earlier demo.")
def demo(out_dir, shape, seed, pipeline, sections, epochs, patch_size, overwrite):
    """Make a phantom volume, stain it with the bundled model (along z, and along z, y and x
    fused with the sample mask), render it in 3D, and save views.

    With --pipeline, run what a user runs on their own data instead: histology sections cut
    from the phantom as whole-slide images, imported, registered to the CT into a pairs store,
    a short training, a stain with the trained model and its evaluation report; each step's
    output is kept in OUT_DIR/pipeline and a summary ends the run (about 10 minutes on two
    CPU cores).
    """
    debug = debugging()
    _pipeline_only(pipeline, ("sections", "epochs", "patch_size"))
    if pipeline:
        _pipeline(out_dir, shape, seed, sections, epochs, patch_size, overwrite, debug)
        return
    from vstain_dask.demo import run_demo

    result = run_demo(
        out_dir, shape=shape or _SHAPE, seed=seed, overwrite=overwrite, cluster_log=not debug
    )
    click.echo(result.info)
    if result.stained is None:
        click.echo("no bundled model is installed yet: the phantom was not stained")
    else:
        click.echo(f"stained along z: {result.stained_z}")
        click.echo(f"stained along z, y, x (fused, masked): {result.stained}")
        click.echo(f"3D rendering: {result.render}")
    click.echo(f"views: {result.views}")


def _pipeline_only(pipeline: bool, names: tuple[str, ...]) -> None:
    """Refuse options of --pipeline given without it (they would do nothing)."""
    from click.core import ParameterSource

    from vstain_dask.errors import InputError

    ctx = click.get_current_context()
    given = [n for n in names if ctx.get_parameter_source(n) is not ParameterSource.DEFAULT]
    if given and not pipeline:
        options = ", ".join("--" + n.replace("_", "-") for n in given)
        raise InputError(f"{options} only go with --pipeline")


def _pipeline(out_dir, shape, seed, sections, epochs, patch_size, overwrite, debug) -> None:
    from vstain_dask.demo_pipeline import format_pipeline, run_pipeline

    config = PipelineConfig(shape=shape or _PIPE.shape, sections=sections, epochs=epochs, patch_size=patch_size,
                            seed=seed)  # fmt: skip
    result = run_pipeline(out_dir, config, overwrite=overwrite, cluster_log=not debug,
                          say=lambda line: click.echo(line, err=True))  # fmt: skip
    click.echo(format_pipeline(result))
