"""``vstain-dask demo``: the main job on the built-in default."""

from __future__ import annotations

import click

from vstain_dask.cli._options import IntTuple, debugging


@click.command()
@click.option("-o", "--out-dir", default="vstain-demo", show_default=True, type=click.Path())
@click.option("--shape", type=IntTuple(3), default="64,256,256", show_default=True,
              help="Phantom size Z,Y,X in voxels.")  # fmt: skip
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace outputs of an earlier demo.")
def demo(out_dir, shape, seed, overwrite):
    """Make a phantom volume, stain it with the bundled model, and save views."""
    from vstain_dask.demo import run_demo

    debug = debugging()
    result = run_demo(out_dir, shape=shape, seed=seed, overwrite=overwrite, cluster_log=not debug)
    click.echo(result.info)
    if result.stained is None:
        click.echo("no bundled model is installed yet: the phantom was not stained")
    else:
        click.echo(f"stained: {result.stained}")
    click.echo(f"views: {result.views}")
