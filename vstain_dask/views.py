"""Orthogonal mid-plane views of volumes, as a PNG a person can look at.

Reads only the three planes it shows (from the pyramid level that is large enough), so a view of
a 1.5k³ volume costs three slices, not a volume.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vstain_dask.errors import InputError

__all__ = ["orthogonal_views", "save_views"]


def _level_for(path, max_size: int) -> int:
    from vstain_dask import ngff

    vol = ngff.open_volume(path)
    n = int(vol.attrs.get("n_levels", 1) or 1)
    for level in range(n):
        v = ngff.open_volume(path, level=level)
        spatial = [v.sizes[d] for d in v.dims if d != "c"]
        if max(spatial) <= max_size:
            return level
    return n - 1


def orthogonal_views(path: str | os.PathLike, *, max_size: int = 768, position=None) -> dict:
    """XY, XZ and YZ planes through the middle (or ``position``) of a volume.

    Parameters
    ----------
    path : OME-Zarr image, (z, y, x) greyscale or (c, z, y, x) RGB(A)
    max_size : int
        Use the first pyramid level whose largest side is at most this many voxels.
    position : (z, y, x) in level-0 voxels, optional
        Where the planes cross; default the centre.

    Returns
    -------
    dict
        ``{"xy": array, "xz": array, "yz": array, "scale": {axis: µm}, "level": int}``; arrays are
        (rows, cols) greyscale or (rows, cols, 3) uint8 RGB, in physical aspect via ``scale``.
    """
    from vstain_dask import ngff

    level = _level_for(path, max_size)
    vol = ngff.open_volume(path, level=level)
    full = ngff.open_volume(path, level=0)
    if set(d for d in vol.dims if d != "c") != {"z", "y", "x"}:
        raise InputError(f"views need a 3D volume (z, y, x), got dims {vol.dims} in {path}")
    shape = {d: vol.sizes[d] for d in ("z", "y", "x")}
    if position is None:
        centre = {d: shape[d] // 2 for d in shape}
    else:
        centre = {
            d: min(shape[d] - 1, int(p * shape[d] / full.sizes[d]))
            for d, p in zip(("z", "y", "x"), position, strict=True)
        }
    planes = {
        "xy": vol.isel(z=centre["z"]),
        "xz": vol.isel(y=centre["y"]),
        "yz": vol.isel(x=centre["x"]),
    }
    out = {}
    for name, plane in planes.items():
        a = np.asarray(plane.data.compute() if hasattr(plane.data, "compute") else plane.data)
        if "c" in plane.dims:
            a = np.moveaxis(a, plane.dims.index("c"), -1)[..., :3]
        out[name] = a
    scale = vol.attrs.get("scale") or {}
    out["scale"] = {d: float(scale.get(d, 1.0)) for d in ("z", "y", "x")}
    out["level"] = level
    return out


def save_views(
    paths: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    titles: list[str] | None = None,
    max_size: int = 768,
) -> Path:
    """Save orthogonal views of one or more volumes (one row each) as a PNG.

    Greyscale volumes are shown with a robust 1–99.5 % window; RGB as they are.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = titles or [Path(p).name for p in paths]
    rows = [orthogonal_views(p, max_size=max_size) for p in paths]
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 4 * len(rows)), squeeze=False)
    for r, (views, title) in enumerate(zip(rows, titles, strict=True)):
        s = views["scale"]
        aspects = {"xy": s["y"] / s["x"], "xz": s["z"] / s["x"], "yz": s["z"] / s["y"]}
        for c, name in enumerate(("xy", "xz", "yz")):
            ax = axes[r, c]
            a = views[name]
            if a.ndim == 2:
                lo, hi = np.percentile(a, [1, 99.5])
                ax.imshow(a, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1,
                          aspect=aspects[name], interpolation="nearest")  # fmt: skip
            else:
                ax.imshow(a, aspect=aspects[name], interpolation="nearest")
            ax.set_title(f"{title}: {name.upper()} (level {views['level']})", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
