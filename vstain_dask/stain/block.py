"""The per-block computation of a stain, and the three tasks of a block on a cluster.

:func:`stain_block` stains one block from its input: it runs the model over every tile of
every plane that touches the block, along each requested axis, blends on the global tile grid
(so a block returns exactly what whole-plane inference would) and fuses the axes. A job runs
each block as three tasks: :func:`_read_block` (I/O), :func:`_stain_task` (the only one that
holds the worker's compute resource; the model is loaded once per worker process by
:func:`vstain_dask.cluster.worker_model`, never captured in the graph) and
:func:`_write_block` (the chunks the block alone owns, then its ledger record).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vstain_dask import intensity
from vstain_dask.runtime import compiled, compiled_or_eager, on_for_cuda
from vstain_dask.stain.ledger import _Ledger
from vstain_dask.stain.params import _DIMS, _PLANE_DIMS, FuseMode, StainConfig, default_batch_size
from vstain_dask.stain.plan import _PLANES_PER_CALL, Block, _grid
from vstain_dask.tiling import predict_region


def _prefiltered(raw: np.ndarray, *, raw_box, tile_box, vol_shape, sigma: float) -> np.ndarray:
    """Gaussian prefilter of ``tile_box``, given ``raw`` = the volume over ``raw_box`` (the tile box
    plus the filter's halo, clipped to the volume).

    Equal to filtering the whole volume with scipy's ``mode='reflect'`` and cropping: where the
    halo leaves the volume it is padded symmetrically, which is what 'reflect' means in scipy.
    """
    halo = intensity.prefilter_halo(sigma)
    pad = [
        (max(0, halo - (t0 - r0)), max(0, halo - (r1 - t1)))
        for (t0, t1), (r0, r1) in zip(tile_box, raw_box, strict=True)
    ]
    x = raw.astype(np.float32, copy=False)
    if any(p != (0, 0) for p in pad):
        x = np.pad(x, pad, mode="symmetric")
    x = intensity.prefilter(x, sigma)
    # x now spans tile_box +- halo; keep tile_box
    return x[tuple(slice(halo, halo + (t1 - t0)) for (t0, t1) in tile_box)]


def stain_block(
    raw: np.ndarray,
    *,
    raw_box,
    tile_box,
    vol_shape: Sequence[int],
    box,
    model,
    config: StainConfig,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Stain one block.

    Parameters
    ----------
    raw : (Z, Y, X) array
        Raw CT values over ``raw_box``: ``tile_box`` plus the prefilter halo, clipped to the volume.
    raw_box, tile_box, box : ((z0, z1), (y0, y1), (x0, x1))
        Where ``raw`` lies in the volume; the box every touching tile needs; the output box.
    vol_shape : (Z, Y, X)
    model : StainModel
    config : StainConfig
    mask : (Z, Y, X) bool, optional
        Sample mask of ``box``; voxels outside get ``config.mask_colour``.

    Returns
    -------
    rgb : (C, Z, Y, X) uint8
        Stained block (C = 3, or 4 with alpha).
    spread : (Z, Y, X) uint8 or None
        Spread between axes (standard deviation in 8-bit units, mean over RGB) when asked.
    """
    if config.prefilter_sigma > 0:
        x = _prefiltered(
            raw,
            raw_box=raw_box,
            tile_box=tile_box,
            vol_shape=vol_shape,
            sigma=config.prefilter_sigma,
        )
    else:
        x = raw.astype(np.float32, copy=False)
    if config.ct_levels is not None:
        x = intensity.ct_to_paper_units(x, *config.ct_levels)
    x = np.ascontiguousarray(x, dtype=np.float32)
    predict, device = _predictor(model, config)
    preds = [
        _predict_axis(x, axis, box, tile_box, vol_shape=vol_shape, config=config,
                      predict=predict, device=device)
        for axis in config.axes
    ]  # fmt: skip
    return _fused(preds, config=config, mask=mask)


def _predictor(model, config: StainConfig):
    """(tiles -> generator output, the model's device): the generator compiled when
    ``config.compile`` says so (None: on CUDA, where it falls back to eager if compiling fails)."""
    generator = model.generator
    device = next(generator.parameters()).device
    if config.compile:
        generator = compiled(generator)
    elif config.compile is None and device.type == "cuda":
        generator = compiled_or_eager(generator)

    def predict(t):
        return generator(model.to_input(t))

    return predict, device


def _predict_axis(x, axis: str, box, tile_box, *, vol_shape, config: StainConfig, predict, device):
    """The prediction of ``box`` along one ``axis``, (3, Z, Y, X) in the volume's order: 8-bit
    for a single axis (converted on the device, so a block of many whole planes stays a few
    GB), float for several (block fusion, fused by :func:`_fused`)."""
    single = len(config.axes) == 1
    box_shape = tuple(b - a for a, b in box)
    a = _DIMS.index(axis)
    d1, d2 = _PLANE_DIMS[axis]
    grid = _grid(vol_shape, axis, config)
    region = (*box[d1], *box[d2])
    r = grid.read_region(region)
    sl = [slice(None)] * 3
    sl[d1] = slice(r[0] - tile_box[d1][0], r[1] - tile_box[d1][0])
    sl[d2] = slice(r[2] - tile_box[d2][0], r[3] - tile_box[d2][0])
    out = np.empty((3, *box_shape), np.uint8 if single else np.float32)
    order = [a, d1, d2]
    n = box_shape[a]
    for g0 in range(0, n, _PLANES_PER_CALL):  # bounded accumulators: a group of planes
        g1 = min(n, g0 + _PLANES_PER_CALL)
        sl[a] = slice(box[a][0] - tile_box[a][0] + g0, box[a][0] - tile_box[a][0] + g1)
        planes = np.moveaxis(x[tuple(sl)], a, 0)[:, None]  # (G, 1, h, w)
        pred = predict_region(
            np.ascontiguousarray(planes),
            predict,
            grid=grid,
            origin=(r[0], r[2]),
            region=region,
            blend=config.blend,
            batch_size=config.batch_size or default_batch_size(device),
            device=device,
            autocast=on_for_cuda(config.autocast, device),
            channels_last=config.channels_last,
            out_channels=3,
            to_uint8=single,
        )  # (G, 3, h1, w1) in the plane's (d1, d2) order
        pred = np.moveaxis(pred, 1, 0)  # (3, G, h1, w1): dims (c, a, d1, d2)
        pred = np.transpose(pred, [0] + [1 + order.index(i) for i in range(3)])
        dst = [slice(None)] * 4
        dst[1 + a] = slice(g0, g1)
        out[tuple(dst)] = pred
    return out


def _fused(
    preds: list[np.ndarray], *, config: StainConfig, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The block's RGB(A) from its predictions along each axis (fused in floating point when
    several), the mask colour outside the sample, and the spread between axes when asked."""
    if len(preds) == 1:
        rgb = preds[0]
    else:
        if config.fuse is FuseMode.MEDIAN:
            fused = np.median(np.stack(preds), axis=0).astype(np.float32)
        else:
            fused = np.mean(np.stack(preds), axis=0, dtype=np.float64).astype(np.float32)
        rgb = intensity.output_to_uint8(fused)
    if mask is not None:
        rgb[:, ~mask.astype(bool)] = np.asarray(config.mask_colour, np.uint8)[:, None]
    if config.alpha:
        rgb = np.concatenate([rgb, intensity.alpha_from_rgb(rgb)[None]], axis=0)
    spread = None
    if config.uncertainty:
        std = np.std(np.stack(preds), axis=0, dtype=np.float64) * 127.5  # 8-bit units
        spread = np.clip(np.rint(std.mean(axis=0)), 0, 255).astype(np.uint8)
    return rgb, spread


def _level0(source: str):
    """Level 0 of an OME-Zarr image as a zarr array (opened in the worker, by path)."""
    from vstain_dask import ngff

    return ngff.level_array(source)


@dataclasses.dataclass(frozen=True)
class _InputFault:
    """What is wrong with a block's input (a corrupt chunk, NaN voxels): a task returns it
    rather than raising, since no retry can help, and the job stops with it as a user error."""

    message: str


def _corrupt_chunk(arr, sel: tuple[slice, ...]) -> _InputFault | None:
    """The first chunk (or shard) in ``sel`` that cannot be read, if reading each in turn finds
    one."""
    from vstain_dask import ngff

    grid = arr.shards or arr.chunks
    spans = [range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(sel, grid, strict=True)]
    for index in itertools.product(*spans):
        box = tuple(
            slice(i * c, min((i + 1) * c, n))
            for i, c, n in zip(index, grid, arr.shape, strict=True)
        )
        try:
            arr[box]
        except Exception as e:
            return _InputFault(
                f"the input chunk {ngff.chunk_file(arr, index)} cannot be read "
                f"({type(e).__name__}: {e}); restore it from a copy, or import the volume again"
            )
    return None


def _non_finite(raw: np.ndarray, block: Block, *, two_d: bool) -> _InputFault | None:
    """NaN or infinite voxels in a block's input, naming the first."""
    if raw.dtype.kind != "f":
        return None
    bad = ~np.isfinite(raw)
    if not bad.any():
        return None
    i = np.unravel_index(int(np.argmax(bad)), raw.shape)
    at = [int(k) + a for k, (a, _) in zip(i, block.read_box, strict=True)]
    where = f"(y, x) = ({at[1]}, {at[2]})" if two_d else f"(z, y, x) = ({at[0]}, {at[1]}, {at[2]})"
    # decided: reject rather than guess a value (documented in the README)
    return _InputFault(
        f"the CT has {int(bad.sum())} NaN or infinite voxel(s) in {block.name}, the first "
        f"{raw[i]} at {where}; replace them (e.g. with the background grey value, "
        "numpy.nan_to_num) and write the volume again, then stain it with --overwrite"
    )


def _read_block(
    block: Block, *, source: str, two_d: bool, mask_path: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, float] | _InputFault:
    """Task body: read a block's input box (and its mask): pure I/O, so it can run beside a
    staining task."""
    import zarr

    t0 = time.perf_counter()
    src = _level0(source)
    sel = tuple(slice(a, b) for a, b in block.read_box)
    sel = sel[1:] if two_d else sel
    try:
        raw = src[sel]
    except Exception:
        fault = _corrupt_chunk(src, sel)
        if fault is None:
            raise  # not a chunk that cannot be decoded: maybe transient, so retried
        return fault
    if two_d:
        raw = raw[None]
    mask = None
    if mask_path is not None:
        box = tuple(slice(a, b) for a, b in block.box)
        m = zarr.open_array(store=mask_path, path="0", mode="r")
        mask = m[box[1:]][None] if two_d else m[box]
    return raw, mask, time.perf_counter() - t0


def _stain_on_worker(raw, block: Block, *, vol_shape, model_path: str, model_sha: str,
                     config: StainConfig, mask=None) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """:func:`stain_block` of ``block`` with the worker's model (loaded once per process)."""
    from vstain_dask.cluster import worker_model

    model = worker_model(model_path, model_sha, device=config.device)
    return stain_block(
        raw,
        raw_box=block.read_box,
        tile_box=block.tile_box,
        vol_shape=vol_shape,
        box=block.box,
        model=model,
        config=config,
        mask=mask,
    )


def _stain_task(
    read: tuple[np.ndarray, np.ndarray | None, float],
    block: Block,
    *,
    vol_shape,
    model_path: str,
    model_sha: str,
    config: StainConfig,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
    """Task body: stain one block (the only task that holds the compute resource)."""
    if isinstance(read, _InputFault):
        return read
    raw, mask, read_s = read
    fault = _non_finite(raw, block, two_d=vol_shape[0] == 1)
    if fault is not None:
        return fault
    t1 = time.perf_counter()
    rgb, spread = _stain_on_worker(
        raw, block, vol_shape=vol_shape, model_path=model_path, model_sha=model_sha,
        config=config, mask=mask,
    )  # fmt: skip
    return rgb, spread, {"read": read_s, "compute": time.perf_counter() - t1}


def _write_block(
    stained: tuple[np.ndarray, np.ndarray | None, dict[str, float]],
    block: Block,
    *,
    output: str,
    target: str,
    array_path: str,
    ledger_name: str,
    two_d: bool,
) -> dict[str, float]:
    """Task body: write the chunks a stained block owns (compression and I/O, beside the next
    block's staining), then record the block in the ledger."""
    import zarr

    if isinstance(stained, _InputFault):
        return stained
    rgb, spread, timings = stained
    t2 = time.perf_counter()
    out = zarr.open_array(store=target, path=array_path, mode="r+")
    box = tuple(slice(a, b) for a, b in block.box)
    if two_d:
        out[(slice(None), *box[1:])] = rgb[:, 0]
    else:
        out[(slice(None), *box)] = rgb
    if spread is not None:
        unc = zarr.open_array(store=str(Path(output) / "uncertainty"), path="0", mode="r+")
        unc[box[1:] if two_d else box] = spread[0] if two_d else spread
    _Ledger(Path(output)).mark(ledger_name)
    return {**timings, "write": time.perf_counter() - t2, "tiles": block.n_tiles}
