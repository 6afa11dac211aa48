"""The built-in default job: a synthetic bone-implant phantom, stained with the bundled model.

:func:`run_demo` stains the phantom along z alone and along z, y and x fused (with the sample
mask), renders the fused stain in 3D and draws everything side by side in ``views.png``.
:func:`run_pipeline` runs the whole chain a user runs on their own data, from a phantom CT and
histology sections cut from it to a trained model, its stain and its evaluation report.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from vstain_dask.demo_pipeline import (
    PipelineConfig,
    PipelineResult,
    PipelineStepError,
    SectionPose,
    format_pipeline,
    run_pipeline,
)

__all__ = [
    "DemoResult",
    "PipelineConfig",
    "PipelineResult",
    "PipelineStepError",
    "SectionPose",
    "format_pipeline",
    "run_demo",
    "run_pipeline",
]

#: the view of the demo's 3D rendering (as the README's `vstain-dask render` example)
RENDER_VIEW = {"azimuth": 35.0, "elevation": 30.0}


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """Files the demo wrote.

    Attributes
    ----------
    phantom : the CT phantom
    stained : the stain along z, y and x, fused, with the sample mask (labels ``sample``);
        None when no bundled model is installed
    stained_z : the same stain along z alone, for comparison
    render : the 3D rendering of ``stained`` (PNG)
    views : orthogonal views of the phantom and both stains, and the rendering (PNG)
    info : the phantom's description
    """

    phantom: Path
    stained: Path | None
    stained_z: Path | None
    render: Path | None
    views: Path
    info: str


def run_demo(
    out_dir: str | os.PathLike = "vstain-demo",
    *,
    shape: tuple[int, int, int] = (64, 256, 256),
    material: str = "mg",
    seed: int = 0,
    overwrite: bool = False,
    cluster=None,
    progress: bool = True,
    cluster_log: bool = False,
) -> DemoResult:
    """Make a phantom CT volume, stain it with the bundled model when one is installed (along
    z alone, and along z, y and x fused with the sample mask), render the fused stain in 3D,
    and write orthogonal views of the volumes beside the rendering as a PNG.

    Parameters
    ----------
    out_dir : path
        Folder for ``phantom.ome.zarr``, ``phantom.stained-z.ome.zarr``,
        ``phantom.stained.ome.zarr``, ``render.png`` and ``views.png``.
    shape : (Z, Y, X)
        Phantom size in voxels (5 µm).
    cluster : ClusterConfig, optional
        Where to stain; default a local cluster.
    cluster_log : bool
        Send the cluster's logs to a file beside the stain rather than the terminal (see
        :func:`vstain_dask.stain.job_log`).
    """
    from vstain_dask import ngff
    from vstain_dask.phantom import write_phantom
    from vstain_dask.stain import default_model_path
    from vstain_dask.views import save_views

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    phantom = out_dir / "phantom.ome.zarr"
    write_phantom(phantom, shape=shape, material=material, seed=seed, overwrite=overwrite)
    info = ngff.format_info(ngff.volume_info(phantom))
    if not default_model_path().exists():
        views = save_views([phantom], out_dir / "views.png", titles=["CT phantom"])
        return DemoResult(phantom, None, None, None, views, info)
    stain = {"cluster": cluster, "overwrite": overwrite, "progress": progress,
             "cluster_log": cluster_log}  # fmt: skip
    stained_z = _stain(phantom, out_dir / "phantom.stained-z.ome.zarr", "z", **stain)
    stained = _stain(phantom, out_dir / "phantom.stained.ome.zarr", "zyx", **stain)
    render, picture = _render(stained, out_dir / "render.png", overwrite=overwrite)
    views = save_views(
        [phantom, stained_z, stained],
        out_dir / "views.png",
        titles=["CT phantom", "stained along z only", "stained along z, y, x (fused), masked"],
        pictures=[("3D rendering of the fused stain", picture)],
    )
    return DemoResult(phantom, stained, stained_z, render, views, info)


def _stain(phantom: Path, out: Path, axes: str, *, cluster, overwrite, progress, cluster_log):
    """Stain ``phantom`` into ``out`` with the bundled model along ``axes``, with the sample
    mask (step 128 and a Gaussian blend: a quarter of the paper's tiles, no seams)."""
    from vstain_dask import ngff
    from vstain_dask.stain import StainConfig, default_model_path, job_log_path, run_stain

    shape = tuple(ngff.open_volume(phantom).shape)
    run_stain(
        phantom,
        out,
        model=default_model_path(),
        config=StainConfig(axes=axes, step=128, blend="gaussian", mask=True),
        cluster=cluster,
        chunks=(max(1, shape[0] // 4), shape[1], shape[2]),  # a few blocks per worker
        overwrite=overwrite,
        progress=progress,
        log_file=job_log_path(out) if cluster_log else None,
    )
    return out


def _render(stained: Path, out: Path, *, overwrite: bool) -> tuple[Path, np.ndarray]:
    """The 3D rendering of the stain's far half along x (the cut shows the inside), as a PNG
    and as the (H, W, 3) image."""
    from PIL import Image

    from vstain_dask import ngff
    from vstain_dask.render import RenderConfig, save_render

    nx = ngff.open_volume(stained).sizes["x"]
    config = RenderConfig(clip=((0, None), (0, None), (nx // 2, None)), **RENDER_VIEW)
    result = save_render(stained, out, config, overwrite=overwrite)
    with Image.open(result.path) as img:
        picture = np.asarray(img.convert("RGB"))
    return result.path, picture
