"""``vstain-dask render``: a 3D volume rendering of a stain as a PNG (or a turntable GIF)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import click

from vstain_dask.render import RenderConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RenderConfig)}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("stained", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="The image: .png, or .gif with --frames.")  # fmt: skip
@click.option("--azimuth", type=float, default=_DEFAULTS["azimuth"], show_default=True,
              help="Degrees about the vertical (y) axis; 0 looks along z, 90 along x.")  # fmt: skip
@click.option("--elevation", type=float, default=_DEFAULTS["elevation"], show_default=True,
              help="Degrees above the horizontal; positive looks down from above.")  # fmt: skip
@click.option("--level", type=click.IntRange(min=0), default=_DEFAULTS["level"],
              help="Pyramid level [the finest whose (clipped) box fits --max-size].")  # fmt: skip
@click.option("--max-size", type=click.IntRange(min=1), default=_DEFAULTS["max_size"],
              show_default=True, help="Voxels along the longest axis that choose the level.")  # fmt: skip
@click.option("--clip", metavar="Z0:Z1,Y0:Y1,X0:X1",
              help="Render this sub-box only, in level-0 voxels (an empty end: the volume's).")  # fmt: skip
@click.option("--opacity", type=float, default=_DEFAULTS["opacity"],
              help="Opacity per unit of depth (per µm): a layer L thick transmits "
                   "(1 - alpha)^(opacity * L) [1 / level-0 voxel size].")  # fmt: skip
@click.option("--frames", type=click.IntRange(min=1), default=1, show_default=True,
              help="A turntable of this many views, 360°/N apart, as an animated GIF.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace an existing image.")
def render(stained, out, azimuth, elevation, level, max_size, clip, opacity, frames, overwrite):
    """A volume rendering of a STAINED RGB(A) volume, front to back over white, as the paper's.

    Alpha is the stain's alpha channel, or 255 - mean(R, G, B) when it has none. The work is
    done on one pyramid level in slabs, so memory stays bounded whatever the volume size.
    """
    from vstain_dask.render import parse_clip, save_render

    config = RenderConfig(
        azimuth=azimuth, elevation=elevation, opacity=opacity, level=level, max_size=max_size,
        clip=parse_clip(clip) if clip is not None else None,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = save_render(stained, out, config, frames=frames, overwrite=overwrite)
    z, y, x = result.shape
    unit = f" {result.unit}" if result.unit else ""
    vs = "×".join(f"{v:g}" for v in result.voxel_size)
    h, w = result.image_size
    what = f"{result.frames} frames" if result.frames > 1 else "image"
    click.echo(
        f"wrote {result.path} ({what} {w}×{h}): level {result.level}, {z}×{y}×{x} voxels "
        f"(z×y×x) of {vs}{unit}, opacity {result.opacity:.3g} per{unit or ' unit'}, "
        f"{time.perf_counter() - t0:.1f} s"
    )
