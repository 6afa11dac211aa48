"""The built-in default job: a synthetic bone-implant phantom, stained with the bundled model."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

__all__ = ["DemoResult", "run_demo"]


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """Files the demo wrote."""

    phantom: Path
    stained: Path | None
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
    """Make a phantom CT volume, stain it with the bundled model when one is installed, and
    write orthogonal views of both as a PNG.

    Parameters
    ----------
    out_dir : path
        Folder for ``phantom.ome.zarr``, ``phantom.stained.ome.zarr`` and ``views.png``.
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
    from vstain_dask.stain import StainConfig, default_model_path, job_log_path, run_stain
    from vstain_dask.views import save_views

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    phantom = out_dir / "phantom.ome.zarr"
    write_phantom(phantom, shape=shape, material=material, seed=seed, overwrite=overwrite)
    info = ngff.format_info(ngff.volume_info(phantom))
    stained = None
    model = default_model_path()
    if model.exists():
        stained = out_dir / "phantom.stained.ome.zarr"
        run_stain(
            phantom,
            stained,
            model=model,
            config=StainConfig(axes="z", step=128, blend="gaussian"),
            cluster=cluster,
            chunks=(max(1, shape[0] // 4), shape[1], shape[2]),  # a few blocks per worker
            overwrite=overwrite,
            progress=progress,
            log_file=job_log_path(stained) if cluster_log else None,
        )
    paths = [phantom] + ([stained] if stained else [])
    views = save_views(paths, out_dir / "views.png", titles=["CT phantom", "stained"][: len(paths)])
    return DemoResult(phantom=phantom, stained=stained, views=views, info=info)
