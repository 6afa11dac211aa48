"""Resampling to another pixel size, chunk by chunk: exact area averaging to a coarser size,
linear interpolation to a finer one.

Along an axis with input pixel size ``s_in`` and target ``s_out`` (factor ``f = s_out / s_in
>= 1``, not necessarily an integer), output pixel ``j`` covers the input interval
``[j f, (j + 1) f)`` in input pixel units and takes the mean of the piecewise-constant input over
it: input pixel ``i`` has the weight ``|[i, i + 1) ∩ [j f, (j + 1) f)| / f``. The operator is
separable (a weight matrix per axis) and, for an integer factor, equals the block mean. It is the
box filter of the target pixel followed by point sampling at its centre, the anti-aliasing that
an imaging system with the target's pixels would do.

The output has ``floor(n f⁻¹)`` pixels per axis, so that every output pixel averages a whole
``f``-wide interval of the input; the less than one output pixel of input left at the far end is
dropped. Its scale is the target exactly, and its translation places output pixel centres at the
centres of the intervals they average (``(f - 1) / 2`` input pixels in).

The input is cut at ``floor(j_k f)`` for output block boundaries ``j_k``; a block then needs one
input pixel of the next block (the interval's fractional end), taken with ``map_overlap``. Output
blocks are sized so that a block's input holds about ``_PIECE_ELEMENTS`` elements per channel,
whatever the factor, and they divide the output chunks, so rechunking to those only merges.

To a finer size (``f < 1``; only :func:`resample` and ``resample_to_size(..., upsample=True)``,
which ``stain`` uses to bring a coarse volume to its model's pixel size; import refuses it)
the output has the same ``floor(n f⁻¹)`` pixels, and output pixel ``j`` is the linear
interpolation of the input at its centre, ``x = (j + 0.5) f - 0.5`` input pixels (the same
centres as the area average's), clipped to ``[0, n - 1]`` so that the edge pixels are
replicated: ``(1 - t) v[i] + t v[i + 1]`` with ``i = floor(x)``, ``t = x - i``. This is
``scipy.ndimage.map_coordinates(order=1, mode="nearest")`` at those centres, separable like
the area average (a weight matrix per axis, :func:`linear_weights`). An output block's input
is cut after the last input pixel its predecessor interpolates from, so that it needs one
input pixel of halo on each side; output blocks hold at most ``_PIECE_ELEMENTS`` elements per
channel. Both kinds of axis can be mixed in one call (an axis coarser, another finer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import dask.array as da
import numpy as np

from vstain_dask.errors import InputError
from vstain_dask.ngff._pixel_size import _fmt

#: elements per channel of one block's input (4M: 2048² in 2D, 161³ in 3D)
_PIECE_ELEMENTS = 1 << 22
#: factors this close to 1 are 1 (a size given with fewer digits than the file's)
_SAME = 1e-9


def output_length(n: int, factor: float) -> int:
    """Output pixels along an axis of ``n`` input pixels resampled by ``factor``."""
    return max(1, math.floor(n / factor + 1e-9))


def area_weights(factor: float, j0: int, j1: int, i0: int, i1: int) -> np.ndarray:
    """Area-averaging weights of output pixels ``j0:j1`` over input pixels ``i0:i1``,
    shape ``(j1 - j0, i1 - i0)``, float64; each row sums to 1 where its interval is inside."""
    j = np.arange(j0, j1, dtype=np.float64)[:, None]
    i = np.arange(i0, i1, dtype=np.float64)[None, :]
    lo = np.maximum(i, j * factor)
    hi = np.minimum(i + 1, (j + 1) * factor)
    return np.clip(hi - lo, 0.0, None) / factor


def linear_weights(factor: float, n: int, j0: int, j1: int, i0: int, i1: int) -> np.ndarray:
    """Linear-interpolation weights of output pixels ``j0:j1`` over input pixels ``i0:i1`` of an
    axis of ``n`` input pixels resampled by ``factor < 1``, shape ``(j1 - j0, i1 - i0)``,
    float64: output pixel ``j`` samples the input at ``(j + 0.5) factor - 0.5``, clipped to
    ``[0, n - 1]`` (edge pixels replicated); each row sums to 1."""
    x = np.clip((np.arange(j0, j1, dtype=np.float64) + 0.5) * factor - 0.5, 0.0, n - 1.0)
    lo = np.floor(x)
    t = x - lo
    i = np.arange(i0, i1, dtype=np.float64)[None, :]
    return np.where(i == lo[:, None], 1.0 - t[:, None], 0.0) + np.where(
        i == lo[:, None] + 1, t[:, None], 0.0
    )


def _weights(factor: float, n: int, j0: int, j1: int, i0: int, i1: int) -> np.ndarray:
    """The weight matrix of an axis: area averaging for ``factor >= 1``, linear interpolation
    below."""
    if factor >= 1.0:
        return area_weights(factor, j0, j1, i0, i1)
    return linear_weights(factor, n, j0, j1, i0, i1)


def _split(length: int, chunk: int, step: int) -> list[int]:
    """Output block sizes: each output chunk of ``chunk`` cut into near-equal blocks of at most
    ``step``."""
    sizes = []
    for a in range(0, length, chunk):
        c = min(chunk, length - a)
        m = math.ceil(c / step)
        sizes += [c // m + (1 if k < c % m else 0) for k in range(m)]
    return sizes


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iub":
        info = np.iinfo(dtype) if dtype.kind != "b" else None
        values = np.rint(values)
        if info is not None:
            values = np.clip(values, info.min, info.max)
    return values.astype(dtype)


def _resample_block(
    block: np.ndarray,
    *,
    axes: str,
    factors: tuple[float, ...],
    out_bounds: tuple[tuple[int, ...], ...],
    in_bounds: tuple[tuple[int, ...], ...],
    block_id: tuple[int, ...],
    out_dtype: np.dtype,
) -> np.ndarray:
    """One output block from its input block (plus a one-pixel right halo; a left halo that
    ``map_overlap`` adds on every block but the first is skipped)."""
    if "c" in axes:  # a channel at a time: one float64 copy of one channel's input in memory
        c = axes.index("c")
        one = dict(
            axes=axes.replace("c", ""), factors=factors, out_bounds=out_bounds,
            in_bounds=in_bounds, block_id=block_id[:c] + block_id[c + 1 :], out_dtype=out_dtype,
        )  # fmt: skip
        planes = [_resample_block(np.take(block, k, axis=c), **one) for k in range(block.shape[c])]
        return np.stack(planes, axis=c)
    values = block.astype(np.float64)
    k_sp = 0
    for dim, axis in enumerate(axes):
        if axis == "c":
            continue
        f, k = factors[k_sp], block_id[dim]
        if f != 1.0:
            j0, j1 = out_bounds[k_sp][k], out_bounds[k_sp][k + 1]
            start = in_bounds[k_sp][k] - (1 if k > 0 else 0)  # the halo's first pixel
            n = values.shape[dim]
            w = _weights(f, in_bounds[k_sp][-1], j0, j1, start, start + n)
            values = np.moveaxis(np.tensordot(w, values, axes=([1], [dim])), 0, dim)
        k_sp += 1
    return _cast(values, out_dtype)


class _AxisPlan(NamedTuple):
    """How one spatial axis is resampled, block by block."""

    #: output block boundaries
    out_bounds: tuple[int, ...]
    #: input block boundaries: where each output block's input starts (and the axis length)
    in_bounds: tuple[int, ...]
    #: input blocks
    in_chunks: tuple[int, ...]
    #: output blocks
    out_chunks: tuple[int, ...]
    #: input pixels a block needs from its neighbours (the interval's fractional end)
    halo: int

    @classmethod
    def unchanged(cls, chunks: tuple[int, ...]) -> _AxisPlan:
        """An axis of factor 1: the input's blocks, as they are."""
        bounds = tuple(np.cumsum([0, *chunks]).tolist())
        return cls(bounds, bounds, chunks, tuple(chunks), 0)

    @classmethod
    def coarse(cls, n: int, factor: float, chunk: int, step: int) -> _AxisPlan:
        """An axis of ``n`` input pixels resampled by ``factor`` into output chunks of ``chunk``,
        in blocks of at most about ``step`` input pixels."""
        sizes = _split(output_length(n, factor), chunk, max(1, math.floor(step / factor)))
        bounds = np.cumsum([0, *sizes]).tolist()
        starts = [math.floor(j * factor + 1e-9) for j in bounds[:-1]] + [n]
        halo = 1 if len(sizes) > 1 else 0
        return cls(
            tuple(bounds), tuple(starts), tuple(np.diff(starts).tolist()), tuple(sizes), halo
        )

    @classmethod
    def fine(cls, n: int, factor: float, chunk: int, step: int) -> _AxisPlan:
        """An axis of ``n`` input pixels interpolated by ``factor < 1`` into output chunks of
        ``chunk``, in output blocks of at most ``step`` pixels. Block ``k``'s input starts after
        the last input pixel that block ``k - 1`` interpolates from with its left neighbour
        (``floor(x) + 1`` of its last output pixel), so its first output pixel needs at most
        one input pixel before that cut and its last one at most one after its end: a halo of
        one. Blocks whose input would be empty are merged into their predecessor."""
        length = output_length(n, factor)
        bounds = np.cumsum([0, *_split(length, chunk, step)]).tolist()

        def cut(j: int) -> int:  # the input pixel after the last one output j - 1 starts from
            x = min(max((j - 0.5) * factor - 0.5, 0.0), n - 1.0)
            return math.floor(x) + 1

        kept, starts = [0], [0]
        for j in bounds[1:-1]:
            c = cut(j)
            if starts[-1] < c < n:
                kept.append(j)
                starts.append(c)
        kept.append(length)
        starts.append(n)
        sizes = np.diff(kept).tolist()
        halo = 1 if len(sizes) > 1 else 0
        return cls(tuple(kept), tuple(starts), tuple(np.diff(starts).tolist()), tuple(sizes), halo)


def resample_area(
    data: da.Array,
    *,
    axes: str,
    factors: Sequence[float],
    chunks: Sequence[int],
) -> da.Array:
    """Resample ``data`` to a coarser grid by exact area averaging (module docstring).

    Parameters
    ----------
    data : dask array with axes ``axes`` (``"zyx"``, ``"yx"``, ``"czyx"`` or ``"cyx"``); the
        channel axis is left alone
    axes : axis names of ``data``
    factors : target / input pixel size per spatial axis, each ``>= 1`` (1 leaves an axis)
    chunks : the output chunks along the spatial axes; the result's blocks divide them

    Returns
    -------
    dask.array.Array
        Same axes and dtype, ``output_length(n, f)`` pixels along each spatial axis; integer
        types rounded to nearest.
    """
    factors = tuple(float(f) for f in factors)
    if any(not f >= 1.0 for f in factors):
        raise InputError(f"resampling factors must be >= 1, one per spatial axis, got {factors}")
    return resample(data, axes=axes, factors=factors, chunks=chunks)


def resample(
    data: da.Array,
    *,
    axes: str,
    factors: Sequence[float],
    chunks: Sequence[int],
) -> da.Array:
    """Resample ``data`` by ``factors`` (target / input pixel size per spatial axis, any
    positive number): area averaging along axes with a factor above 1, linear interpolation
    along those below 1, nothing along those of 1 (module docstring). Parameters and result
    as :func:`resample_area`; block by block, bounded memory, no seams."""
    factors = tuple(float(f) for f in factors)
    spatial = [d for d, a in enumerate(axes) if a != "c"]
    if len(factors) != len(spatial) or any(not f > 0 for f in factors):
        raise InputError(f"resampling factors must be > 0, one per spatial axis, got {factors}")
    step = max(1, round(_PIECE_ELEMENTS ** (1 / len(spatial))))
    plans = []
    for k, dim in enumerate(spatial):
        n, f, c = data.shape[dim], factors[k], int(chunks[k])
        if f == 1.0:
            plans.append(_AxisPlan.unchanged(data.chunks[dim]))
        elif f > 1.0:
            plans.append(_AxisPlan.coarse(n, f, c, step))
        else:
            plans.append(_AxisPlan.fine(n, f, c, step))
    in_chunks, depth = list(data.chunks), {}
    for dim, plan in zip(spatial, plans, strict=True):
        in_chunks[dim], depth[dim] = plan.in_chunks, plan.halo
    data = data.rechunk(tuple(in_chunks))
    full_chunks, it = [], iter(plan.out_chunks for plan in plans)
    for d, a in enumerate(axes):
        full_chunks.append(data.chunks[d] if a == "c" else next(it))
    return da.map_overlap(
        _resample_block,
        data,
        depth={d: depth.get(d, 0) for d in range(data.ndim)},
        boundary="none",
        trim=False,
        chunks=tuple(full_chunks),
        dtype=data.dtype,
        meta=np.empty((0,) * data.ndim, data.dtype),
        axes=axes,
        factors=factors,
        out_bounds=tuple(plan.out_bounds for plan in plans),
        in_bounds=tuple(plan.in_bounds for plan in plans),
        out_dtype=data.dtype,
    )


def _target_sizes(target: float | Sequence[float], spatial: str) -> tuple:
    """``voxel_size_out`` as one positive size per spatial axis (one size for all)."""
    n = len(spatial)
    values = (target,) * n if isinstance(target, int | float) else tuple(target)
    if len(values) == 1:
        values = values * n
    names = ",".join(a.upper() for a in spatial)
    if len(values) != n or not all(isinstance(v, int | float) and v > 0 for v in values):
        raise InputError(
            f"voxel_size_out (--voxel-size-out/--pixel-size-out) must be one positive size or "
            f"{n} ({names}), got {tuple(values)}"
        )
    return values


def _size_factors(
    spatial: str, values: Sequence[float], voxel_size: Sequence[float], unit: str,
    upsample: bool = False,
) -> list[float]:  # fmt: skip
    """Target / input size per spatial axis; none may be below 1 unless ``upsample``, and those
    within ``_SAME`` of 1 are 1."""
    factors = []
    for axis, given, have in zip(spatial, values, voxel_size, strict=True):
        f = float(given) / float(have)
        if f < 1 - _SAME and not upsample:
            raise InputError(
                f"--voxel-size-out {_fmt((given,), unit)} is finer than the input's "
                f"{_fmt((have,), unit)} along {axis.upper()}; import only resamples to coarser "
                f"sizes (area averaging): give a size of at least {have:g}"
            )
        factors.append(1.0 if abs(f - 1) <= _SAME else f)
    return factors


def resample_to_size(
    data: da.Array,
    *,
    axes: str,
    voxel_size: Sequence[float],
    target: float | Sequence[float],
    unit: str,
    chunks: Sequence[int],
    upsample: bool = False,
) -> tuple[da.Array, dict]:
    """``data`` resampled from ``voxel_size`` to the ``target`` size by area averaging (and,
    with ``upsample``, by linear interpolation along axes where the target is finer).

    Parameters
    ----------
    data : dask array with axes ``axes``
    axes : ``"zyx"``, ``"yx"``, ``"czyx"`` or ``"cyx"``
    voxel_size : the input's size per spatial axis, in ``unit``
    target : one size, or one per spatial axis, in ``unit``; none finer than the input's
        unless ``upsample``
    unit : NGFF space unit of both
    chunks : output chunks along the spatial axes
    upsample : interpolate linearly to a finer target instead of refusing it (``stain``
        brings a volume to its model's pixel size either way; import only averages)

    Returns
    -------
    (the resampled dask array, a record for provenance: ``from``, ``to`` (the output scale,
    the target exactly), ``factors``, ``translation`` (output pixel 0's centre, in ``unit``),
    ``method`` and ``input_pixels_used``; where an axis is interpolated, ``methods``, one per
    axis)
    """
    spatial = axes.replace("c", "")
    values = _target_sizes(target, spatial)
    factors = _size_factors(spatial, values, voxel_size, unit, upsample)
    dims = [d for d, a in enumerate(axes) if a != "c"]
    lengths = [output_length(data.shape[d], f) for d, f in zip(dims, factors, strict=True)]
    out_chunks = [min(int(c), m) for c, m in zip(chunks, lengths, strict=True)]
    out = resample(data, axes=axes, factors=factors, chunks=out_chunks)
    record = {
        "method": _AREA if min(factors) >= 1 else _LINEAR if max(factors) <= 1 else _MIXED,
        "from": [float(v) for v in voxel_size],
        "to": [float(v) for v in values],
        "factors": factors,
        "translation": [(float(v) - float(h)) / 2 for v, h in zip(values, voxel_size, strict=True)],
        "input_pixels_used": [
            min(data.shape[d], math.ceil(m * f - 1e-9))
            for d, m, f in zip(dims, lengths, factors, strict=True)
        ],
    }
    if min(factors) < 1:
        record["methods"] = [_AXIS_METHOD[(f > 1) - (f < 1)] for f in factors]
    return out, record


_AREA = "area average (exact; block mean for integer factors)"
_LINEAR = "linear interpolation at the output pixel centres (edge pixels replicated)"
_MIXED = (
    "area average along the axes made coarser (exact), linear interpolation at the output "
    "pixel centres along those made finer (edge pixels replicated)"
)
#: the method of one axis, by the sign of factor - 1
_AXIS_METHOD = {1: "area average", 0: "unchanged", -1: "linear interpolation"}
