"""Pyramids: each level averaged (or, for labels, subsampled) from the one above it, one task
per output chunk, in bounded memory."""

from __future__ import annotations

import itertools
import math
import os
import uuid
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from vstain_dask.errors import VolumeFormatError
from vstain_dask.ngff._common import _SLAB_BYTES, _pyramid_method
from vstain_dask.ngff._read import _read_multiscale, _write_chunks


def _window_mean(block: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Means over complete ``factors`` windows (each size a multiple of its factor)."""
    if block.dtype.kind == "f" or block.dtype.itemsize > 4:
        acc = np.float64
    elif block.dtype.kind == "i":
        acc = np.int32 if block.dtype.itemsize <= 2 else np.int64
    else:  # unsigned and bool
        acc = np.uint32 if block.dtype.itemsize <= 2 else np.uint64
    total = block
    # pairwise sums along one axis at a time: cheaper than one reduction over strided axes
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        parts = [total[(slice(None),) * axis + (slice(k, None, f),)] for k in range(f)]
        summed = np.add(parts[0], parts[1], dtype=acc)
        for part in parts[2:]:
            summed += part
        total = summed
    mean = total / math.prod(factors)
    if block.dtype.kind in "iub":
        mean = np.rint(mean)  # round to nearest (ties to even), not truncate
    return mean.astype(block.dtype)


def _downsample_block(block: np.ndarray, *, factors: tuple[int, ...], method: str) -> np.ndarray:
    """Downsample one block by integer ``factors``; odd trailing windows use what is there.

    ``"mean"``: window means, integers rounded to nearest (ties to even); ``"nearest"``: the
    first voxel of each window.
    """
    if method == "nearest":
        return np.ascontiguousarray(block[tuple(slice(None, None, f) for f in factors)])
    pad = [(0, (-s) % f) for s, f in zip(block.shape, factors, strict=True)]
    if any(p for _, p in pad):
        # repeating the edge keeps the window mean equal to the mean of the voxels present
        block = np.pad(block, pad, mode="edge")
    out_shape = tuple(s // f for s, f in zip(block.shape, factors, strict=True))
    out = np.empty(out_shape, dtype=block.dtype)
    axis = next((i for i, f in enumerate(factors) if f > 1), None)
    if axis is None:
        return block.copy()
    # a few MiB of output slabs at a time along the first downsampled axis keep the
    # wider accumulator temporaries small
    f = factors[axis]
    step = max(1, _SLAB_BYTES * out_shape[axis] // max(block.nbytes, 1))
    lead = (slice(None),) * axis
    for k in range(0, out_shape[axis], step):
        k1 = min(k + step, out_shape[axis])
        out[lead + (slice(k, k1),)] = _window_mean(block[lead + (slice(k * f, k1 * f),)], factors)
    return out


def _aligned(chunks: tuple[int, ...], step: int) -> bool:
    """Whether every internal block boundary along one axis is a multiple of ``step``."""
    pos = 0
    for c in chunks[:-1]:
        pos += c
        if pos % step:
            return False
    return True


def _align(arr: da.Array, chunks: tuple[int, ...]) -> da.Array:
    """Rechunk only the axes whose block boundaries do not fall on chunk boundaries."""
    new = tuple(bc if _aligned(bc, c) else c for bc, c in zip(arr.chunks, chunks, strict=True))
    return arr if new == arr.chunks else arr.rechunk(new)


def _pyramid_chunk(
    src: zarr.Array,
    dst: zarr.Array,
    region: tuple[tuple[int, int], ...],
    factors: tuple[int, ...],
    method: str,
    after: Any = None,
) -> None:
    """Read the source window of one destination chunk, downsample it and write it.

    ``after`` only orders the task behind the source chunks it reads.
    """
    src_index = tuple(
        slice(a * f, min(b * f, n)) for (a, b), f, n in zip(region, factors, src.shape, strict=True)
    )
    out = _downsample_block(np.asarray(src[src_index]), factors=factors, method=method)
    dst[tuple(slice(a, b) for a, b in region)] = out


def _grid(shape: tuple[int, ...], chunks: tuple[int, ...]):
    """(chunk index, ((start, stop), ...)) for every chunk of an array."""
    counts = [math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)]
    for index in np.ndindex(*counts):
        yield (
            index,
            tuple(
                (i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape, strict=True)
            ),
        )


def _pyramid_graph(arrays: Sequence[zarr.Array], factors: tuple[int, ...], method: str):
    """A Delayed that fills ``arrays[1:]`` from ``arrays[0]``, one task per output chunk.

    Each task reads the (up to 2x2x2) source chunks under its output chunk from the store, so a
    task holds about eight chunks and nothing waits in memory for its neighbours. A task
    depends only on the tasks that wrote those source chunks.
    """
    token = uuid.uuid4().hex[:12]
    previous: dict[tuple[int, ...], Any] | None = None
    tasks = []
    for level in range(1, len(arrays)):
        src, dst = arrays[level - 1], arrays[level]
        src_chunks, dst_chunks = _write_chunks(src), _write_chunks(dst)
        current = {}
        for index, region in _grid(tuple(dst.shape), dst_chunks):
            after = None
            if previous is not None:
                ranges = [
                    range(a * f // sc, math.ceil(min(b * f, n) / sc))
                    for (a, b), f, sc, n in zip(region, factors, src_chunks, src.shape, strict=True)
                ]
                after = [previous[j] for j in itertools.product(*ranges)]
            key = f"pyramid-{token}-{level}-" + "-".join(map(str, index))
            current[index] = dask.delayed(_pyramid_chunk, pure=False)(
                src, dst, region, factors, method, after, dask_key_name=key
            )
        tasks.extend(current.values())
        previous = current
    return dask.delayed(_count_done, pure=False)(tasks, dask_key_name=f"pyramid-{token}")


def _count_done(results: list) -> int:
    return len(results)


def _store_level0(source: da.Array, target: zarr.Array) -> None:
    # every block covers whole chunks that no other block touches, so no lock is needed
    da.store(source, target, lock=False)


def write_pyramid(path: str | os.PathLike, *, compute: bool = True):
    """Fill levels 1.. of an OME-Zarr image from its level 0.

    Each level is computed from the level above as stored: the mean of 2x2x2 voxels (2x2 in
    2D; the c axis is never downsampled) for intensity and rgb images, integer means rounded
    to nearest; every second voxel for labels. Odd sizes give ceil(n/2) voxels, the last one
    the mean of the voxels present. One task per output chunk reads the source chunks under it
    and writes its chunk, so memory stays at a few chunks per worker whatever the volume size.

    Parameters
    ----------
    path : an OME-Zarr image made by :func:`create_volume` (levels halving in z, y, x), whose
        level 0 is written
    compute : write now (on the current dask scheduler); False returns a ``dask.delayed``
        object for the caller to compute

    Returns
    -------
    None, or a Delayed when ``compute=False`` (None when there is only one level).
    """
    ms = _read_multiscale(path, mode="r+")
    if ms.ngff_version is None:
        raise VolumeFormatError(
            f"{ms.path} is a plain zarr array; write it as OME-Zarr with write_volume first"
        )
    arrays = [lv.array for lv in ms.levels]
    if len(arrays) == 1:
        return None
    factors = tuple(1 if a == "c" else 2 for a in ms.axes)
    for i, arr in enumerate(arrays[1:], start=1):
        expected = tuple(math.ceil(s / f**i) for s, f in zip(arrays[0].shape, factors, strict=True))
        if tuple(arr.shape) != expected:
            raise VolumeFormatError(
                f"level {i} of {ms.path} has shape {tuple(arr.shape)} but a factor-2 pyramid "
                f"needs {expected}; write_pyramid only fills stores made by create_volume"
            )
    method = _pyramid_method(ms.kind)
    graph = _pyramid_graph(arrays, factors, method)
    if not compute:
        return graph
    graph.compute()
    return None
