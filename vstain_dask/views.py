"""Orthogonal mid-plane views of volumes, as a PNG a person can look at.

Reads only the three planes it shows (from the pyramid level that is large enough), so a view of
a 1.5k³ volume costs three slices, not a volume.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask.errors import InputError, OutputExistsError

__all__ = ["orthogonal_views", "save_views", "save_preview", "input_ct_path"]

_CROSS = "#F0E442"  # where the other two planes cut this one


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
        ``{"xy": array, "xz": array, "yz": array, "scale": {axis: µm}, "level": int,
        "centre": {axis: index}, "shape": {axis: size}, "units": {axis: unit}}`` at the chosen
        level; ``xy`` is (y, x), ``xz`` is (z, x) and ``yz`` is (z, y), greyscale or
        (..., 3) uint8 RGB; ``scale`` gives the physical aspect.
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
    out: dict[str, Any] = {}
    for name, plane in planes.items():
        a = np.asarray(plane.data.compute() if hasattr(plane.data, "compute") else plane.data)
        if "c" in plane.dims:
            a = np.moveaxis(a, plane.dims.index("c"), -1)[..., :3]
        out[name] = a
    scale = vol.attrs.get("scale") or {}
    units = vol.attrs.get("units") or {}
    out["scale"] = {d: float(scale.get(d, 1.0)) for d in ("z", "y", "x")}
    out["units"] = {d: units.get(d) for d in ("z", "y", "x")}
    out["level"] = level
    out["centre"] = centre
    out["shape"] = shape
    return out


def _unit(units: dict) -> str:
    u = {v for v in units.values() if v}
    if len(u) != 1:
        return "voxels" if not u else "physical units"
    return {"micrometer": "µm", "millimeter": "mm", "nanometer": "nm"}.get(u.pop(), "units")


def _window(views: dict) -> tuple[float, float]:
    vals = np.concatenate(
        [np.asarray(views[k], dtype=np.float64).ravel() for k in ("xy", "xz", "yz")]
    )
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [1, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def _show(ax, a, extent, window):
    if a.ndim == 2:
        ax.imshow(a, cmap="gray", vmin=window[0], vmax=window[1], extent=extent,
                  interpolation="nearest", origin="upper")  # fmt: skip
    else:
        ax.imshow(a, extent=extent, interpolation="nearest", origin="upper")
    ax.set_aspect("equal")


def save_views(
    paths: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    titles: list[str] | None = None,
    max_size: int = 768,
    pictures: Sequence[tuple[str, np.ndarray]] = (),
) -> Path:
    """Save orthogonal views of one or more volumes (side by side) as a PNG.

    Each volume gets the classic layout: XY top left, YZ to its right (sharing y), XZ below it
    (sharing x), in physical units, with yellow lines where the other planes cut. Greyscale
    volumes are shown with a robust 1–99.5 % window over the three planes; RGB as they are.

    Parameters
    ----------
    paths : OME-Zarr images, (z, y, x) or (c, z, y, x)
    out : path of the PNG
    titles : one per volume (default the file names)
    max_size : int
        Largest side read (the first pyramid level at most this size is used).
    pictures : (title, (H, W, 3) uint8 RGB image) pairs
        Images shown as they are, each in a column of its own after the volumes (a 3D
        rendering, say).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = titles or [Path(p).name for p in paths]
    if len(titles) != len(paths):
        raise InputError(f"titles must name each of the {len(paths)} volumes, got {len(titles)}")
    views = [orthogonal_views(p, max_size=max_size) for p in paths]
    # physical extents (µm): the layout's proportions come from the first volume
    ext = [{d: v["shape"][d] * v["scale"][d] for d in ("z", "y", "x")} for v in views]
    e0 = ext[0]
    col_w = 5.0
    height = col_w * (e0["y"] + e0["z"]) / (e0["x"] + e0["z"]) + 0.9
    columns = len(views) + len(pictures)
    fig = plt.figure(figsize=(col_w * columns, height))
    outer = fig.add_gridspec(1, columns, wspace=0.25)
    for i, (v, e, title) in enumerate(zip(views, ext, titles, strict=True)):
        _draw_volume(fig, outer[0, i], v, e, title)
    for i, (title, image) in enumerate(pictures, start=len(views)):
        _draw_picture(fig, outer[0, i], image, title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def _draw_volume(fig, cell, v: dict, e: dict, title: str) -> None:
    """One volume's views (of :func:`orthogonal_views`, ``e`` its physical extents) in ``cell``
    of ``fig``: XY, YZ to its right, XZ below it, labelled, with its level, shape and voxel
    size in the fourth corner and ``title`` above."""
    gs = cell.subgridspec(2, 2, width_ratios=[e["x"], e["z"]],
                          height_ratios=[e["y"], e["z"]], wspace=0.05, hspace=0.12)  # fmt: skip
    unit = _unit(v["units"])
    ax_xy, ax_yz, ax_xz = _draw_planes(fig, gs, v, e)
    _label_planes(ax_xy, ax_yz, ax_xz, v["centre"], unit)
    s = v["scale"]
    ax_info = fig.add_subplot(gs[1, 1])
    ax_info.axis("off")
    shape = "×".join(str(v["shape"][d]) for d in ("z", "y", "x"))
    voxel = "×".join(f"{s[d]:g}" for d in ("z", "y", "x"))
    ax_info.text(0.05, 0.95, f"level {v['level']}\n{shape} (z×y×x)\nvoxel {voxel} {unit}",
                 fontsize=7, va="top", transform=ax_info.transAxes)  # fmt: skip
    ax_xy.text(0.0, 1.0 + 0.12 * e["x"] / max(e["y"], 1e-9), title, fontsize=10,
               fontweight="bold", transform=ax_xy.transAxes, va="bottom")  # fmt: skip


def _draw_picture(fig, cell, image: np.ndarray, title: str) -> None:
    """An RGB picture in ``cell`` of ``fig``, without axes, ``title`` above it."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise InputError(f"a picture must be (H, W, 3) RGB, got shape {image.shape} for {title!r}")
    ax = fig.add_subplot(cell)
    ax.imshow(image[..., :3], interpolation="antialiased")
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10, fontweight="bold", loc="left")


def _draw_planes(fig, gs, v: dict, e: dict) -> tuple:
    """The XY, YZ and XZ axes of one volume in physical units, greyscale in one window over
    the three planes, with lines where the other planes cut."""
    window = _window(v) if v["xy"].ndim == 2 else None
    s, c = v["scale"], v["centre"]
    at = {d: (c[d] + 0.5) * s[d] for d in ("z", "y", "x")}
    ax_xy = fig.add_subplot(gs[0, 0])
    _show(ax_xy, v["xy"], (0, e["x"], e["y"], 0), window)
    ax_yz = fig.add_subplot(gs[0, 1], sharey=ax_xy)
    _show(ax_yz, np.swapaxes(v["yz"], 0, 1), (0, e["z"], e["y"], 0), window)
    ax_xz = fig.add_subplot(gs[1, 0], sharex=ax_xy)
    _show(ax_xz, v["xz"], (0, e["x"], e["z"], 0), window)
    for ax, (hline, vline) in ((ax_xy, (at["y"], at["x"])), (ax_yz, (at["y"], at["z"])),
                               (ax_xz, (at["z"], at["x"]))):  # fmt: skip
        ax.axhline(hline, color=_CROSS, linewidth=0.6, alpha=0.6)
        ax.axvline(vline, color=_CROSS, linewidth=0.6, alpha=0.6)
        ax.tick_params(labelsize=7)
    return ax_xy, ax_yz, ax_xz


def _label_planes(ax_xy, ax_yz, ax_xz, c: dict, unit: str) -> None:
    """Each plane's title (where it cuts) and axis labels; the shared axes' inner ticks hidden."""
    import matplotlib.pyplot as plt

    ax_xy.set_title(f"XY, z = {c['z']}", fontsize=8, loc="left")
    ax_yz.set_title(f"YZ, x = {c['x']}", fontsize=8, loc="left")
    ax_xz.set_xlabel(f"x ({unit})", fontsize=8)
    ax_xz.set_ylabel(f"z ({unit})", fontsize=8)
    ax_xy.set_ylabel(f"y ({unit})", fontsize=8)
    ax_yz.set_xlabel(f"z ({unit})", fontsize=8)
    ax_xz.set_title(f"XZ, y = {c['y']}", fontsize=8, loc="left")
    plt.setp(ax_xy.get_xticklabels(), visible=False)
    plt.setp(ax_yz.get_yticklabels(), visible=False)


def input_ct_path(stained: str | os.PathLike) -> Path | None:
    """The input CT recorded in a stained volume's provenance (``vstain.input.path``), if any."""
    from vstain_dask import ngff

    prov = ngff.open_volume(stained).attrs.get("vstain") or {}
    p = (prov.get("input") or {}).get("path") if isinstance(prov, dict) else None
    return Path(p) if p else None


def save_preview(
    stained: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    ct: str | os.PathLike | None = "auto",
    max_size: int = 768,
    overwrite: bool = False,
) -> tuple[Path, Path | None]:
    """Orthogonal views of a stained volume with its input CT beside it: what
    ``vstain-dask preview`` writes.

    Parameters
    ----------
    stained : path
        Stained OME-Zarr, (c, z, y, x).
    out : path, optional
        PNG to write; default ``<stained name>.views.png`` beside the store.
    ct : path, "auto" or None
        The input CT; ``"auto"`` takes the path recorded in the stain's provenance when it
        exists; None shows the stained volume alone.
    max_size : int
        Largest side read (a pyramid level at most this size), so memory stays bounded.
    overwrite : bool
        Replace an existing PNG at ``out``.

    Returns
    -------
    (pathlib.Path, pathlib.Path or None)
        The PNG, and the CT shown (None when none).
    """
    stained = Path(stained)
    if out is None:
        name = stained.name
        for suffix in (".ome.zarr", ".zarr"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        out = stained.with_name(f"{name}.views.png")
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; use --overwrite to replace it, or -o another PNG")
    ct_path: Path | None
    if isinstance(ct, str) and ct == "auto":
        ct_path = input_ct_path(stained)
        if ct_path is not None and not ct_path.exists():
            ct_path = None
    else:
        ct_path = None if ct is None else Path(ct)
    paths = ([ct_path] if ct_path is not None else []) + [stained]
    titles = ([f"CT: {ct_path.name}"] if ct_path is not None else []) + [f"stained: {stained.name}"]
    return save_views(paths, out, titles=titles, max_size=max_size), ct_path
