"""Stripes and seams in a stained volume, as numbers.

Staining slice by slice (the paper) leaves stripes across slices: each slice is predicted
without its neighbours, so colours jump from one slice to the next more than they change within
a slice. Tiled inference can also leave seams on the tile grid's borders. Both are measured
here from neighbour differences, in 8-bit units, on a seeded sample of blocks (bounded memory):

- ``diff[a]``: mean absolute difference between neighbouring voxels along axis ``a`` (mean over
  R, G, B).
- ``stripe_index = diff[axis] / mean(diff[other axes])``: about 1 for a volume that changes as
  much across slices as within them; above 1 for stripes. Isotropic texture raises both terms
  alike, so it does not count as stripes; texture generated in the plane only (a model's own
  in-plane detail, smooth across slices) gives values below 1. Anisotropic structure moves it
  too: compare runs on one volume (``--axes z`` against fused, blend against blend), or divide
  by the same index of the input CT (``ct_stripe_index``), which has the structure but no
  staining (``relative_stripe_index``).
- ``flicker``: whole-slice colour jumps: the change of a slice's mean colour from the slice
  before it, as its absolute deviation from the block's median change (a steady colour drift
  along the axis is not a jump), averaged.
- ``seam_index = seam_border / seam_interior``: mean absolute difference across the tile grid's
  borders (pixel pairs that lie on two sides of a tile edge, in the planes perpendicular to
  ``axis``) over the same difference elsewhere; about 1 without seams.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask._validate import check_int
from vstain_dask.errors import InputError, as_enum
from vstain_dask.tiling import Tiling

__all__ = ["SeamReport", "seam_metrics", "compare_seams", "format_seams"]

_DIMS = ("z", "y", "x")


@dataclasses.dataclass(frozen=True)
class SeamReport:
    """Stripe and seam measures of one stained volume (see the module notes).

    Attributes
    ----------
    path, label : str
    axis : str
        Stacking axis the stripes are measured across (``z`` for slice-by-slice staining).
    tile, step : int
        Tile grid whose borders ``seam_*`` measure (pixels).
    blocks : int
        Blocks read; ``voxels``: voxels in them.
    diff : dict
        Axis -> mean |Δ| between neighbours along it (8-bit units).
    stripe_index, flicker, seam_border, seam_interior, seam_index : float
    ct_stripe_index : float or None
        The stripe index of the input CT on the same blocks, when it was read.
    """

    path: str
    label: str
    axis: str
    tile: int
    step: int
    blocks: int
    voxels: int
    diff: dict[str, float]
    stripe_index: float
    flicker: float
    seam_border: float
    seam_interior: float
    seam_index: float
    ct_stripe_index: float | None = None

    @property
    def relative_stripe_index(self) -> float | None:
        """``stripe_index / ct_stripe_index``: stripes beyond what the CT's structure gives."""
        if self.ct_stripe_index is None or not self.ct_stripe_index > 0:
            return None
        return self.stripe_index / self.ct_stripe_index

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["relative_stripe_index"] = self.relative_stripe_index
        return d


def _borders(length: int, tile: int, step: int) -> np.ndarray:
    """Positions p (1..length-1) where a tile edge lies between pixels p-1 and p."""
    from vstain_dask.tiling import tile_starts

    if length <= tile:
        return np.zeros(0, dtype=np.int64)
    starts = tile_starts(length, tile=tile, step=step)
    edges = np.union1d(starts, starts + tile)
    return edges[(edges > 0) & (edges < length)]


def _boxes(shape: tuple[int, int, int], block: tuple[int, int, int], n: int, seed: int):
    """A seeded choice of blocks of the block grid, as (read box, halo): each block is read with
    one voxel more before it along each axis (where there is one), so that differences across
    block borders are counted too, by the block after the border."""
    starts = [range(0, s, b) for s, b in zip(shape, block, strict=True)]
    grid = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(grid), size=min(n, len(grid)), replace=False).tolist())
    out = []
    for i in pick:
        origin = grid[i]
        box = tuple(
            (max(0, o - 1), min(o + b, s)) for o, b, s in zip(origin, block, shape, strict=True)
        )
        out.append((box, tuple(int(o > 0) for o in origin)))
    return out


def _block_stats(
    data: np.ndarray, box, halo, *, axis: int, borders: dict[int, np.ndarray], rgb: bool
) -> dict[str, np.ndarray]:
    """Sums and counts of one block: (C, z, y, x) for RGB, (z, y, x) for CT.

    Differences along an axis use the halo voxel before the block on that axis only; on the
    other axes the halo belongs to the neighbouring block and is left out.
    """
    v = np.asarray(data, dtype=np.float32)
    if not rgb:
        v = v[None]
    out = {"sum": np.zeros(3), "count": np.zeros(3), "flicker": np.zeros(2), "seam": np.zeros(4)}
    for a in range(3):
        if v.shape[1 + a] < 2:
            continue
        own = (slice(None), *(slice(None) if d == a else slice(halo[d], None) for d in range(3)))
        va = v[own]
        d = np.abs(np.diff(va, axis=1 + a))
        out["sum"][a] = float(d.sum(dtype=np.float64)) / v.shape[0]
        out["count"][a] = d.size / v.shape[0]
        if a == axis and rgb:
            # change of each slice's mean colour (per channel) from the slice before it
            means = (
                np.moveaxis(va, 1 + a, 1)
                .reshape(v.shape[0], va.shape[1 + a], -1)
                .mean(axis=2, dtype=np.float64)
            )
            shift = np.diff(means, axis=1)
            # jumps beyond the steady drift of the block (a colour gradient along the axis)
            jumps = np.abs(shift - np.median(shift, axis=1, keepdims=True))
            out["flicker"] += (float(jumps.mean(axis=0).sum()), shift.shape[1])
        if a != axis and rgb and a in borders:
            # global position of the right-hand pixel of each difference
            pos = np.arange(box[a][0] + 1, box[a][1])
            on = np.isin(pos, borders[a])
            dm = np.moveaxis(d, 1 + a, -1)
            per = dm.reshape(-1, dm.shape[-1]).sum(axis=0, dtype=np.float64) / v.shape[0]
            rows = dm.size / dm.shape[-1] / v.shape[0]
            out["seam"] += (per[on].sum(), on.sum() * rows, per[~on].sum(), (~on).sum() * rows)
    return out


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


def _stripe(sums: np.ndarray, counts: np.ndarray, axis: int) -> tuple[dict[str, float], float]:
    diff = {d: _ratio(sums[i], counts[i]) for i, d in enumerate(_DIMS)}
    others = [diff[d] for i, d in enumerate(_DIMS) if i != axis and counts[i] > 0]
    return diff, _ratio(diff[_DIMS[axis]], float(np.mean(others)) if others else 0.0)


def _provenance(vol) -> dict:
    return dict(vol.attrs.get("vstain") or {})


def _resolve_ct(reference: Any, prov: dict) -> Path | None:
    if reference is None or reference is False:
        return None
    if isinstance(reference, str) and reference == "auto":
        p = (prov.get("input") or {}).get("path")
        return Path(p) if p and Path(p).exists() else None
    return Path(reference)


def seam_metrics(
    path: str | os.PathLike,
    *,
    axis: str = "z",
    tile: int | None = None,
    step: int | None = None,
    block: Sequence[int] = (16, 256, 256),
    max_blocks: int = 32,
    seed: int = 0,
    reference: str | os.PathLike | None = None,
) -> SeamReport:
    """Measure stripes across slices and seams on the tile grid of a stained volume.

    Reads at most ``max_blocks`` blocks of ``block`` voxels of level 0 (a seeded choice among
    the volume's block grid; all of them when there are fewer), so memory stays bounded and two
    volumes of one shape are measured on the same voxels.

    Parameters
    ----------
    path : path
        Stained OME-Zarr, (c, z, y, x) uint8 RGB(A); alpha is ignored.
    axis : {"z", "y", "x"}
        Stacking axis to measure stripes across; seams are measured in the planes
        perpendicular to it.
    tile, step : int, optional
        Tile grid of the seams; default the stain's own (from the store's provenance), else
        :class:`~vstain_dask.tiling.Tiling`'s (the paper's 256 and 64).
    block : (z, y, x)
        Block shape in voxels.
    max_blocks : int
        Blocks read at most.
    seed : int
        Seeds the block choice.
    reference : path, "auto" or None
        The input CT, whose stripe index on the same blocks is reported as
        ``ct_stripe_index``; ``"auto"`` takes it from the provenance when it exists.

    Returns
    -------
    SeamReport
        Labelled with the file name (:func:`compare_seams` takes other labels).
    """
    import dask

    from vstain_dask.stain import Axis

    axis = as_enum(Axis, axis, "axis").value
    block, max_blocks = _check_sampling(block, max_blocks)
    vol = _open_stained(path)
    prov = _provenance(vol)
    tiling = _tiling(tile, step, prov.get("parameters") or {})
    shape = tuple(int(vol.sizes[d]) for d in _DIMS)
    a = _DIMS.index(axis)
    borders = {d: _borders(shape[d], tiling.tile, tiling.step) for d in range(3) if d != a}
    boxes = _boxes(shape, block, max_blocks, seed)
    tasks = _tasks(vol.data, boxes, axis=a, borders=borders, rgb=True)
    ct = _reference(_resolve_ct(reference, prov), shape)
    ct_tasks = [] if ct is None else _tasks(ct.data, boxes, axis=a, borders={}, rgb=False)
    results = dask.compute(*tasks, *ct_tasks)
    return _report(path, axis, tiling, boxes, results[: len(tasks)], results[len(tasks) :])


def _check_sampling(block: Sequence[int], max_blocks: int) -> tuple[tuple[int, ...], int]:
    """``block`` as three positive sizes and ``max_blocks`` as a positive int, or refused."""
    block = tuple(int(b) for b in block)
    if len(block) != 3 or min(block) < 1:
        raise InputError(f"block must be three positive sizes (z, y, x), got {block!r}")
    return block, check_int(max_blocks, "max_blocks", 1)


def _open_stained(path: str | os.PathLike) -> Any:
    """The stained volume at ``path``; refuses anything but (c, z, y, x) with R, G, B."""
    from vstain_dask import ngff

    vol = ngff.open_volume(path)
    if vol.dims != ("c", "z", "y", "x"):
        raise InputError(
            f"{path} must be a stained volume with axes (c, z, y, x), got {vol.dims}; "
            "stain a 3D CT volume first"
        )
    if vol.sizes["c"] < 3:
        raise InputError(f"{path} must have R, G, B channels, got {vol.sizes['c']} channel(s)")
    return vol


def _tiling(tile: int | None, step: int | None, params: dict) -> Tiling:
    """The tile grid given, else the stain's own (its recorded parameters), else the paper's."""
    paper = Tiling()
    return Tiling(
        tile=tile if tile is not None else params.get("tile", paper.tile),
        step=step if step is not None else params.get("step", paper.step),
    )


def _reference(ct_path: Path | None, shape: tuple[int, ...]) -> Any:
    """The input CT volume at ``ct_path`` (None: none), of the stain's ``shape``."""
    from vstain_dask import ngff

    if ct_path is None:
        return None
    ct = ngff.open_volume(ct_path)
    if tuple(int(ct.sizes.get(d, -1)) for d in _DIMS) != shape or "c" in ct.dims:
        raise InputError(
            f"reference CT {ct_path} must be a (z, y, x) volume of shape {shape}, got "
            f"{dict(ct.sizes)}"
        )
    return ct


def _tasks(data: Any, boxes, *, axis: int, borders: dict[int, np.ndarray], rgb: bool) -> list:
    """Delayed :func:`_block_stats` of each block of ``data``: (c, z, y, x) RGB (its first three
    channels) or (z, y, x) CT."""
    import dask

    lead = (slice(0, 3),) if rgb else ()
    return [
        dask.delayed(_block_stats)(
            data[(*lead, *(slice(*b) for b in box))],
            box,
            halo,
            axis=axis,
            borders=borders,
            rgb=rgb,
        )
        for box, halo in boxes
    ]


def _report(
    path: str | os.PathLike, axis: str, tiling: Tiling, boxes, stats, ct_stats
) -> SeamReport:
    """The measures from the blocks' sums and counts (``ct_stats``: the CT's, or empty)."""
    a = _DIMS.index(axis)
    total = {k: sum(s[k] for s in stats) for k in stats[0]}
    diff, stripe = _stripe(total["sum"], total["count"], a)
    ct_index = None
    if ct_stats:
        ct_total = {k: sum(s[k] for s in ct_stats) for k in ("sum", "count")}
        ct_index = _stripe(ct_total["sum"], ct_total["count"], a)[1]
    seam = total["seam"]
    border, interior = _ratio(seam[0], seam[1]), _ratio(seam[2], seam[3])
    voxels = sum(
        np.prod([b[1] - b[0] - h for b, h in zip(box, halo, strict=True)]) for box, halo in boxes
    )
    return SeamReport(
        path=str(path), label=Path(path).name, axis=axis, tile=tiling.tile, step=tiling.step,
        blocks=len(boxes), voxels=int(voxels), diff=diff, stripe_index=stripe,
        flicker=_ratio(total["flicker"][0], total["flicker"][1]), seam_border=border,
        seam_interior=interior, seam_index=_ratio(border, interior), ct_stripe_index=ct_index,
    )  # fmt: skip


def compare_seams(
    paths: Sequence[str | os.PathLike],
    *,
    labels: Sequence[str] | None = None,
    **options: Any,
) -> list[SeamReport]:
    """:func:`seam_metrics` of several stained volumes of one CT (e.g. a ``--axes z`` run, a
    fused run, other blend modes), on the same blocks.

    Parameters
    ----------
    paths : stained volumes
    labels : names for the table (default the file names)
    options : passed to :func:`seam_metrics` (``axis``, ``tile``, ``step``, ``block``, ...)
    """
    if labels is not None and len(labels) != len(paths):
        raise InputError(f"labels must name each of the {len(paths)} volumes, got {len(labels)}")
    reports = [seam_metrics(p, **options) for p in paths]
    if labels is None:
        return reports
    return [
        dataclasses.replace(r, label=label or r.label)
        for r, label in zip(reports, labels, strict=True)
    ]


def format_seams(reports: Sequence[SeamReport]) -> str:
    """A Markdown table of seam reports, one row per volume."""

    def f(v: float | None, nd: int = 3) -> str:
        return "–" if v is None or v != v else f"{v:.{nd}f}"

    head = ("| volume | axis | stripe index | CT stripe index | relative | flicker | seam index "
            "| tile/step | Δz | Δy | Δx |")  # fmt: skip
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in reports:
        lines.append(
            f"| {r.label} | {r.axis} | {f(r.stripe_index)} | {f(r.ct_stripe_index)} | "
            f"{f(r.relative_stripe_index)} | {f(r.flicker, 2)} | {f(r.seam_index)} | "
            f"{r.tile}/{r.step} | {f(r.diff['z'], 2)} | {f(r.diff['y'], 2)} | {f(r.diff['x'], 2)} |"
        )
    return "\n".join(lines)
