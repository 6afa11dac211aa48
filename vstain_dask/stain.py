"""Staining a CT volume: blocks -> tiles -> model -> blend -> fuse -> write.

The volume is cut into coarse 3D blocks. Each block is one task: it reads its input with the halo
that the global tile grid needs (plus the Gaussian prefilter's halo), runs the model over every
tile of every plane that touches the block, along each requested axis, blends (on the global tile
grid, so a block returns exactly what whole-plane inference would), fuses the axes, and writes the
output chunks that it alone owns. The model is loaded once per worker process
(:func:`vstain_dask.cluster.worker_model`), never captured in the graph.

A ledger of finished blocks inside the output lets an interrupted job resume; a lock file refuses
a second job on the same output; the output is marked complete only after every block and the
pyramid are written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import itertools
import json
import logging
import math
import os
import socket
import time
import uuid
import warnings
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask import intensity

# a worker resource that admits one staining task at a time (one model per GPU or CPU worker)
# while the worker's second thread reads the next block, so reads overlap compute
from vstain_dask.cluster import COMPUTE_RESOURCE
from vstain_dask.errors import (
    ClusterError,
    InputError,
    JobError,
    OutputExistsError,
    as_enum,
)
from vstain_dask.runtime import (
    compiled,
    compiled_or_eager,
    default_device,
    on_for_cuda,
    resolve_device,
)
from vstain_dask.tiling import BlendMode, TileGrid, predict_region

__all__ = [
    "Axis",
    "FuseMode",
    "Fusion",
    "StainConfig",
    "StainReport",
    "Block",
    "plan_blocks",
    "stain",
    "stain_block",
    "stain_to_zarr",
]

log = logging.getLogger(__name__)

#: volume axes, and for each staining axis the two volume axes that span its planes
_DIMS = ("z", "y", "x")
_PLANE_DIMS = {"z": (1, 2), "y": (0, 2), "x": (0, 1)}
_LEDGER = ".vstain-job"
#: planes per tiled-inference call inside a block: bounds the float64 blend accumulators
#: (16 planes of 1536² RGB: 0.9 GiB) whatever the block's size
_PLANES_PER_CALL = 16
#: blocks a worker holds at a time while a stage runs: one read ahead, one being stained, one
#: being written (``_run_stage`` submits the next block when one is written)
BLOCKS_IN_FLIGHT_PER_WORKER = 3
_LOCK = "lock.json"
#: in the ledger: the identity of the output the finished-block records belong to
_JOB = "job"


class Axis(StrEnum):
    """Axis along which slices are stained (planes perpendicular to it)."""

    Z = "z"
    Y = "y"
    X = "x"


class Fusion(StrEnum):
    """How a fused (several-axes) stain is organised."""

    #: one pass per axis in slabs of whole planes (no tile computed twice), each pass kept as
    #: 8-bit, then a fusion pass; costs about one single-axis stain per axis
    PASSES = "passes"
    #: 3D blocks with halos, all axes at once, fused in floating point before rounding; reads
    #: the volume once but computes the tiles that straddle block borders more than once
    BLOCKS = "blocks"


class FuseMode(StrEnum):
    """How predictions made along several axes are combined."""

    MEAN = "mean"
    MEDIAN = "median"


@dataclasses.dataclass(frozen=True)
class StainConfig:
    """Parameters of a stain; stored in the output's provenance.

    Parameters
    ----------
    axes : str
        Staining axes, any of ``z``, ``y``, ``x`` (``"z"`` is the paper's slice-by-slice;
        ``"zyx"`` fuses three).
    tile, step : int
        Tile size and step in pixels (paper: 256 and 64).
    blend : BlendMode
        How overlapping tile predictions are averaged (paper: ``mean``).
    fuse : FuseMode
        How predictions along several axes are combined.
    fusion : Fusion
        ``passes`` (default): the mean (or median) of the 8-bit single-axis results, rounded
        half to even; ``blocks``: the same in floating point inside 3D blocks (see
        :class:`Fusion` for the cost of each).
    batch_size : int or None
        Tiles per model call; None: 8 on the CPU, 32 on a GPU (more tiles per call keep a
        large GPU busy; every block of a job runs the same batch shape either way).
    prefilter_sigma : float
        3D Gaussian prefilter in voxels (paper: 1.0; 0 switches it off).
    ct_levels : (float, float) or None
        Raw CT means of bone and background, mapped to 30000 and 10000 as in training.
        None: the volume is used as it is (already normalized).
    alpha : bool
        Add an alpha channel, 255 − mean(RGB), as the paper used for volume rendering.
    uncertainty : bool
        Also write the per-voxel spread between axes (needs two or more axes).
    mask : bool
        Correspondence mask, as the paper: per z-slice, the convex hull of bone and screw; voxels
        outside it get ``mask_colour`` (the histology background). The mask is written as NGFF
        labels ``sample`` in the output.
    mask_colour : (int, int, int)
        RGB for voxels outside the sample (default white, the slide background).
    block : (int, int, int) or None
        Block shape (z, y, x) in voxels; None chooses one (whole planes for one axis).
    autocast : bool or None
        bf16 autocast; None means on for CUDA, off for CPU.
    channels_last : bool
        Channels-last memory format for the tile batches.
    compile : bool or None
        ``torch.compile`` the generator (once per worker process); None means on for CUDA, off
        for the CPU. On an H200 the compiled paper generator runs 3.3 times as many tiles per
        second as the eager one, which spends three quarters of its time in memory-bound
        normalization, padding and layout copies (benchmarks/RESULTS.md, GPU section); the
        first block of a worker waits about 13 s for the compilation.
    device : str or None
        Torch device for the model; None picks CUDA when present.
    """

    axes: str = "z"
    tile: int = 256
    step: int = 64
    blend: BlendMode = BlendMode.MEAN
    fuse: FuseMode = FuseMode.MEAN
    fusion: Fusion = Fusion.PASSES
    batch_size: int | None = None
    prefilter_sigma: float = 0.0
    ct_levels: tuple[float, float] | None = None
    alpha: bool = False
    uncertainty: bool = False
    mask: bool = False
    mask_colour: tuple[int, int, int] = (255, 255, 255)
    block: tuple[int, int, int] | None = None
    autocast: bool | None = None
    channels_last: bool = True
    compile: bool | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        axes = "".join(str(a) for a in self.axes).lower().replace(",", "")
        bad = [a for a in axes if a not in _DIMS]
        if not axes or bad:
            raise InputError(
                f"axes must be letters from {', '.join(Axis)} (e.g. 'z' or 'zyx'), got {self.axes!r}"
            )
        if len(set(axes)) != len(axes):
            raise InputError(f"axes must not repeat, got {self.axes!r}")
        object.__setattr__(self, "axes", "".join(a for a in _DIMS if a in axes))
        if self.tile < 1:
            raise InputError(f"tile must be >= 1, got {self.tile}")
        if not 1 <= self.step <= self.tile:
            raise InputError(f"step must be in 1..{self.tile}, got {self.step}")
        for name, enum in (("blend", BlendMode), ("fuse", FuseMode), ("fusion", Fusion)):
            object.__setattr__(self, name, as_enum(enum, getattr(self, name), name))
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.prefilter_sigma >= 0 and math.isfinite(self.prefilter_sigma)):
            raise InputError(f"prefilter_sigma must be >= 0 voxels, got {self.prefilter_sigma}")
        if self.ct_levels is not None:
            bone, background = (float(v) for v in self.ct_levels)
            if not (math.isfinite(bone) and math.isfinite(background)) or bone <= background:
                raise InputError(
                    "ct_levels must be (bone, background) means with bone > background, "
                    f"got {self.ct_levels!r}"
                )
            object.__setattr__(self, "ct_levels", (bone, background))
        if self.uncertainty and len(self.axes) < 2:
            raise InputError("uncertainty needs two or more axes (e.g. axes='zyx')")
        colour = tuple(int(c) for c in self.mask_colour)
        if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
            raise InputError(
                f"mask_colour must be three values in 0..255, got {self.mask_colour!r}"
            )
        object.__setattr__(self, "mask_colour", colour)
        if self.block is not None:
            block = tuple(int(b) for b in self.block)
            if len(block) != 3 or min(block) < 1:
                raise InputError(f"block must be three positive sizes (z, y, x), got {self.block}")
            object.__setattr__(self, "block", block)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["blend"] = self.blend.value
        d["fuse"] = self.fuse.value
        d["fusion"] = self.fusion.value
        return d

    @property
    def prefilter_halo(self) -> int:
        """Halo in voxels that the Gaussian prefilter needs (scipy's truncate = 4)."""
        return intensity.prefilter_halo(self.prefilter_sigma)

    @property
    def out_channels(self) -> int:
        return 4 if self.alpha else 3


# -- planning --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    """One task: the output box it owns and the input box it reads (half-open, z/y/x)."""

    index: int
    box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    tile_box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    read_box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    n_tiles: int

    @property
    def name(self) -> str:
        return "block-" + "-".join(f"{a}" for a, _ in self.box)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in self.box)  # type: ignore[return-value]


def _grid(shape: Sequence[int], axis: str, config: StainConfig) -> TileGrid:
    d1, d2 = _PLANE_DIMS[axis]
    return TileGrid(
        extent=(shape[d1], shape[d2]),
        tile=(config.tile, config.tile),
        step=(config.step, config.step),
    )


def default_block(
    shape: Sequence[int], chunks: Sequence[int], config: StainConfig
) -> tuple[int, int, int]:
    """Block shape: whole planes for a single axis (no tile is computed twice), cubes of about
    256 voxels (a multiple of the output chunks) when several axes are fused."""
    if len(config.axes) == 1:
        a = _DIMS.index(config.axes)
        block = list(shape)
        block[a] = chunks[a]
        return tuple(block)  # type: ignore[return-value]
    return tuple(min(s, max(c, (256 // c) * c)) for s, c in zip(shape, chunks, strict=True))  # type: ignore[return-value]


def plan_blocks(shape: Sequence[int], chunks: Sequence[int], config: StainConfig) -> list[Block]:
    """Cut a (Z, Y, X) volume into blocks aligned to the output ``chunks``.

    Each block's read box covers every tile (of every requested axis) touching the block, plus
    the prefilter halo, clipped to the volume.
    """
    block = config.block or default_block(shape, chunks, config)
    for b, c, d, s in zip(block, chunks, _DIMS, shape, strict=True):
        if b % c and b < s:
            raise InputError(
                f"block size along {d} must be a multiple of the chunk size {c}, got {b}"
            )
    grids = {axis: _grid(shape, axis, config) for axis in config.axes}
    halo = config.prefilter_halo
    blocks = []
    starts = [range(0, s, b) for s, b in zip(shape, block, strict=True)]
    index = 0
    for z0 in starts[0]:
        for y0 in starts[1]:
            for x0 in starts[2]:
                box = tuple(
                    (a, min(a + b, s)) for a, b, s in zip((z0, y0, x0), block, shape, strict=True)
                )
                lo = [a for a, _ in box]
                hi = [b for _, b in box]
                n_tiles = 0
                for axis, grid in grids.items():
                    d1, d2 = _PLANE_DIMS[axis]
                    region = (*box[d1], *box[d2])
                    r = grid.read_region(region)
                    lo[d1], hi[d1] = min(lo[d1], r[0]), max(hi[d1], r[1])
                    lo[d2], hi[d2] = min(lo[d2], r[2]), max(hi[d2], r[3])
                    a = _DIMS.index(axis)
                    n_tiles += len(grid.tiles_touching(region)) * (box[a][1] - box[a][0])
                tile_box = tuple(zip(lo, hi, strict=True))
                read_box = tuple(
                    (max(0, lo_ - halo), min(s, hi_ + halo))
                    for lo_, hi_, s in zip(lo, hi, shape, strict=True)
                )
                blocks.append(Block(index, box, tile_box, read_box, n_tiles))  # type: ignore[arg-type]
                index += 1
    return blocks


#: a plan that computes each tile more than this many times over (blocks smaller than the
#: tiles' reach) is refused before any work starts; about 3 times is the price of the default
#: cubes of block fusion
MAX_RECOMPUTE = 16.0
#: ... and one computing them more than this many times over is run with a warning
WARN_RECOMPUTE = 4.0


def recompute_factor(shape: Sequence[int], blocks: list[Block], config: StainConfig) -> float:
    """How many times over ``blocks`` compute each tile: the tiles they run, per tile of
    whole-plane inference (1.0 for whole planes)."""
    planned = sum(b.n_tiles for b in blocks)
    minimum = sum(
        _grid(shape, axis, config).n_tiles * shape[_DIMS.index(axis)] for axis in config.axes
    )
    return planned / max(minimum, 1)


def _checked_plan(shape: Sequence[int], chunks: Sequence[int], config: StainConfig) -> list[Block]:
    """:func:`plan_blocks`, refusing a block shape whose plan recomputes tiles many times over
    (naming the factor) and warning of one that recomputes them a few times."""
    block = config.block or default_block(shape, chunks, config)
    n = math.prod(math.ceil(s / b) for s, b in zip(shape, block, strict=True))
    if n > 100_000:
        raise InputError(
            f"--block {','.join(map(str, block))} cuts the volume into {n:,} blocks; use a "
            f"block of at least a tile ({config.tile}) across, or leave --block out for the "
            "default"
        )
    blocks = plan_blocks(shape, chunks, config)
    factor = recompute_factor(shape, blocks, config)
    if factor > MAX_RECOMPUTE:
        raise InputError(
            f"--block {','.join(map(str, block))} makes every tile be computed {factor:.0f} times "
            f"over (blocks smaller than the tiles' reach; at most {MAX_RECOMPUTE:g} is allowed): "
            "use a larger --block, or leave it out for the default"
        )
    if factor > WARN_RECOMPUTE:
        warnings.warn(
            f"--block {','.join(map(str, block))} computes every tile {factor:.1f} times over "
            "(blocks smaller than the tiles' reach); a larger --block is faster",
            RuntimeWarning,
            stacklevel=2,
        )
    return blocks


def task_memory(block: Block, config: StainConfig, *, width: int, device: str = "cpu") -> int:
    """Bytes one staining task of ``block`` needs at its peak, roughly: its input, the blend
    accumulators and weights of a group of planes, one batch of tiles through a generator whose
    full-resolution layers have ``width`` channels (a few of them alive at once), and its output.
    An estimate to refuse plans that cannot fit, not a budget."""
    tile_box = [b - a for a, b in block.tile_box]
    read = math.prod(b - a for a, b in block.read_box) * 8  # raw, then float32
    planes = 0
    for axis in config.axes:
        a = _DIMS.index(axis)
        d1, d2 = _PLANE_DIMS[axis]
        area = max(tile_box[d1], config.tile) * max(tile_box[d2], config.tile)
        planes = max(planes, min(_PLANES_PER_CALL, tile_box[a]) * area * 4 * 8)
    weights = config.tile**2 * 8
    batch = config.batch_size or default_batch_size(device)
    activations = batch * config.tile**2 * 4 * width * 4
    out = math.prod(block.shape) * (3 if len(config.axes) == 1 else 3 * 4 * len(config.axes))
    return read + planes + weights + activations + out


def _generator_width(model) -> int:
    """Channels of the generator's first convolution (its full-resolution width)."""
    import torch

    convs = (m for m in model.generator.modules() if isinstance(m, torch.nn.Conv2d))
    return max(1, next((m.out_channels for m in convs), 1))


def check_memory(
    blocks: list[Block], config: StainConfig, *, model, available: int, device: str = "cpu"
) -> None:
    """Refuse a plan whose staining tasks cannot fit in ``available`` bytes per worker."""
    from dask.utils import format_bytes

    width = _generator_width(model)
    need = max(task_memory(b, config, width=width, device=device) for b in blocks)
    if need > available:
        raise InputError(
            f"one block with --tile {config.tile} needs about {format_bytes(need)}, more than the "
            f"{format_bytes(available)} a worker has: use a smaller --tile (the model's is "
            "usually 256), --batch-size or --block"
        )


# -- one block -------------------------------------------------------------------------------


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
    import torch

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

    generator = model.generator
    device = next(generator.parameters()).device
    if config.compile:
        generator = compiled(generator)
    elif config.compile is None and device.type == "cuda":
        generator = compiled_or_eager(generator)

    def predict(t: torch.Tensor) -> torch.Tensor:
        return generator(model.to_input(t))

    autocast = on_for_cuda(config.autocast, device)
    single = len(config.axes) == 1
    box_shape = tuple(b - a for a, b in box)
    preds = []
    for axis in config.axes:
        a = _DIMS.index(axis)
        d1, d2 = _PLANE_DIMS[axis]
        grid = _grid(vol_shape, axis, config)
        region = (*box[d1], *box[d2])
        r = grid.read_region(region)
        sl = [slice(None)] * 3
        sl[d1] = slice(r[0] - tile_box[d1][0], r[1] - tile_box[d1][0])
        sl[d2] = slice(r[2] - tile_box[d2][0], r[3] - tile_box[d2][0])
        # one axis: straight to 8-bit (converted on the device), so a block of many whole
        # planes stays a few GB; several axes (block fusion): float predictions, fused below
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
                autocast=autocast,
                channels_last=config.channels_last,
                out_channels=3,
                to_uint8=single,
            )  # (G, 3, h1, w1) in the plane's (d1, d2) order
            pred = np.moveaxis(pred, 1, 0)  # (3, G, h1, w1): dims (c, a, d1, d2)
            pred = np.transpose(pred, [0] + [1 + order.index(i) for i in range(3)])
            dst = [slice(None)] * 4
            dst[1 + a] = slice(g0, g1)
            out[tuple(dst)] = pred
        preds.append(out)
    if single:
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
        alpha = np.rint(255.0 - rgb.mean(axis=0, dtype=np.float32)).astype(np.uint8)
        rgb = np.concatenate([rgb, alpha[None]], axis=0)
    spread = None
    if config.uncertainty:
        std = np.std(np.stack(preds), axis=0, dtype=np.float64) * 127.5  # 8-bit units
        spread = np.clip(np.rint(std.mean(axis=0)), 0, 255).astype(np.uint8)
    return rgb, spread


def default_batch_size(device) -> int:
    """Tiles per model call when ``StainConfig.batch_size`` is None: 32 on CUDA, 8 elsewhere."""
    return 32 if str(device).startswith("cuda") else 8


# -- the lazy result ---------------------------------------------------------------------------


def _model_ref(model) -> tuple[str, str]:
    """(path, sha256) of a model given as a path or as a loaded StainModel with a path."""
    from vstain_dask.models import load_model

    if isinstance(model, str | os.PathLike):
        loaded = load_model(model)
        return str(Path(model).resolve()), loaded.sha256
    path = getattr(model, "path", None)
    if path is None:
        raise InputError("model must be a checkpoint path (models are loaded on the workers)")
    return str(Path(path).resolve()), model.sha256


def _check_ct(volume) -> None:
    dtype = np.dtype(volume.dtype)
    if dtype.kind not in "uif":
        raise InputError(
            f"the CT volume must have an integer or float dtype, got {dtype} "
            "(complex, bool and string volumes cannot be stained)"
        )
    if volume.ndim not in (2, 3):
        raise InputError(
            f"expected a greyscale volume (z, y, x) or slice (y, x), got {volume.ndim} dimensions "
            f"of shape {tuple(volume.shape)}"
        )
    if 0 in volume.shape:
        raise InputError(f"the CT volume is empty (shape {tuple(volume.shape)})")


def _block_from_array(raw, block: Block, vol_shape, model_path, model_sha, config):
    from vstain_dask.cluster import worker_model

    model = worker_model(model_path, model_sha, device=config.device)
    rgb, spread = stain_block(
        np.asarray(raw),
        raw_box=block.read_box,
        tile_box=block.tile_box,
        vol_shape=vol_shape,
        box=block.box,
        model=model,
        config=config,
    )
    return rgb


def stain(volume, model, *, config: StainConfig | None = None, chunks=None, **options):
    """Lazily stain a CT volume.

    Parameters
    ----------
    volume : xarray.DataArray or dask/numpy array, (Z, Y, X) or (Y, X)
        Raw CT values.
    model : path
        A vstain-dask checkpoint (loaded on each worker, once per process).
    config : StainConfig, optional
        Or pass its fields as keyword options (``axes="zyx"``, ``step=64``, ...); given as
        options, ``fusion`` defaults to ``"blocks"``, the only fusion this function does.
    chunks : (int, int, int), optional
        Output chunks (z, y, x); default: the input's chunks.

    Returns
    -------
    xarray.DataArray
        (c, z, y, x) uint8 RGB(A) (or (c, y, x) for a slice), dask-backed, nothing computed yet.

    Raises
    ------
    InputError
        For several ``axes`` with ``fusion="passes"`` (passes go through 8-bit intermediates
        on disk), and for ``mask`` or ``uncertainty``, which :func:`run_stain`
        (``vstain-dask stain``) writes.

    Notes
    -----
    Made for looking at parts of a stain: computing a region computes only the blocks under
    it. With several ``axes`` the blocks are cubes of about 256 voxels that fuse in floating
    point with halos (``fusion="blocks"``). Each cube recomputes the tiles it shares with its
    neighbours, about 8.8× the tiles of one axis for a 1536³ volume at step 64.
    :func:`run_stain` fuses one pass per axis through 8-bit intermediates on disk, 3× the
    tiles of one axis, so stain whole volumes with it (or ``vstain-dask stain``).
    """
    import dask
    import dask.array as da
    import xarray as xr

    config = config or StainConfig(**{"fusion": Fusion.BLOCKS, **options})
    if len(config.axes) > 1 and config.fusion is not Fusion.BLOCKS:
        raise InputError(
            f"the lazy stain fuses several axes in blocks only (fusion='blocks'), got "
            f"fusion={config.fusion.value!r}: fusion by passes writes 8-bit passes to disk, so "
            "use run_stain or `vstain-dask stain` for it"
        )
    asked = [name for name in ("mask", "uncertainty") if getattr(config, name)]
    if asked:
        raise InputError(
            f"the lazy stain returns the RGB(A) stain only, got {' and '.join(asked)}=True: "
            "use run_stain or `vstain-dask stain`, which write the mask and the uncertainty"
        )
    coords = {}
    attrs = {}
    if isinstance(volume, xr.DataArray):
        coords = {d: volume.coords[d] for d in volume.dims if d in volume.coords}
        attrs = {k: volume.attrs[k] for k in ("scale", "units") if k in volume.attrs}
        data = volume.data
    else:
        data = volume
    _check_ct(data)
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=chunks or "auto")
    two_d = data.ndim == 2
    if two_d:
        data = data[None]
    shape = tuple(int(s) for s in data.shape)
    chunks = tuple(chunks) if chunks is not None else tuple(int(c[0]) for c in data.chunks)
    if two_d and len(chunks) == 2:
        chunks = (1, *chunks)
    model_path, model_sha = _model_ref(model)
    blocks = plan_blocks(shape, chunks, config)
    nb = [len(range(0, s, b)) for s, b in zip(shape, _block_shape(blocks), strict=True)]
    arrays = np.empty(nb, dtype=object)
    for b in blocks:
        raw = data[tuple(slice(a, c) for a, c in b.read_box)]
        task = dask.delayed(_block_from_array, pure=True)(
            raw, b, shape, model_path, model_sha, config
        )
        idx = tuple(a // s for (a, _), s in zip(b.box, _block_shape(blocks), strict=True))
        arrays[idx] = da.from_delayed(task, shape=(config.out_channels, *b.shape), dtype=np.uint8)
    out = da.block(_nest(arrays))
    if two_d:
        out = out[:, 0]
    channels = list("RGBA"[: config.out_channels])
    dims = ("c", "y", "x") if two_d else ("c", "z", "y", "x")
    coords = {"c": channels, **coords}
    return xr.DataArray(out, dims=dims, coords=coords, attrs=attrs, name="stained")


def _block_shape(blocks: list[Block]) -> tuple[int, int, int]:
    return blocks[0].shape


def _nest(arrays: np.ndarray) -> list:
    """Nested lists of (c, z, y, x) blocks for da.block: channel axis first, then z, y, x."""
    return [
        [[list(arrays[i, j, :]) for j in range(arrays.shape[1])] for i in range(arrays.shape[0])]
    ]


# -- running a stain to an OME-Zarr store, with ledger, lock and resume ----------------------------


@dataclasses.dataclass(frozen=True)
class StainReport:
    """What a finished stain did."""

    output: Path
    blocks: int
    blocks_skipped: int
    tiles: int
    voxels: int
    seconds: float
    dashboard: str | None
    #: task seconds summed over blocks: reading input, staining (model + blend), writing output
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    #: (chunks of the input not stored, so read as its fill value; chunks it has in all)
    missing_chunks: tuple[int, int] = (0, 0)

    @property
    def already_complete(self) -> bool:
        """The output was complete before this run: nothing was stained."""
        return self.blocks_skipped == self.blocks and self.tiles == 0 and self.seconds == 0

    @property
    def voxels_per_s(self) -> float:
        return self.voxels / self.seconds if self.seconds > 0 else float("nan")

    @property
    def blocks_per_s(self) -> float:
        done = self.blocks - self.blocks_skipped
        return done / self.seconds if self.seconds > 0 else float("nan")

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else float("nan")


def default_output(source: str | os.PathLike) -> Path:
    """``<name>.stained.ome.zarr`` beside the input (``.ome.zarr``/``.zarr`` suffixes dropped)."""
    p = Path(source).resolve()
    name = p.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return p.with_name(f"{name}.stained.ome.zarr")


class _Ledger:
    """Finished blocks, one empty file each, in ``<output>.vstain-job/done/``, and a lock file
    there that keeps a second job off the same output. The folder goes when the job completes."""

    def __init__(self, output: Path) -> None:
        # beside the store, not in it, so the store stays plain OME-Zarr; removed on completion
        self.output = output
        self.root = output.with_name(output.name + _LEDGER)
        self.done_dir = self.root / "done"
        self.lock_path = self.root / _LOCK

    def done(self) -> set[str]:
        if not self.done_dir.is_dir():
            return set()
        return {p.name for p in self.done_dir.iterdir() if not p.name.startswith(".")}

    def job(self) -> str | None:
        """The job (the output's identity) the finished-block records belong to."""
        try:
            return (self.root / _JOB).read_text().strip() or None
        except OSError:
            return None

    def bind(self, job: str, output: Path) -> None:
        """Make ``job`` the owner of the records: any record of another job, or of none, is
        discarded first (with a warning), so no record ever counts for an output it was not
        written into."""
        import shutil

        stale = self.done()
        stale_passes = sorted(self.root.glob("axis-*.zarr"))
        if self.job() != job and (stale or stale_passes):
            why = (
                f"{output} no longer exists"
                if not output.exists()
                else f"they were not written into {output}"
            )
            warnings.warn(
                f"discarded {len(stale)} finished-block record(s) in {self.done_dir}: {why}; "
                "every block is stained again",
                RuntimeWarning,
                stacklevel=3,
            )
            shutil.rmtree(self.done_dir, ignore_errors=True)
            for p in stale_passes:
                shutil.rmtree(p, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{_JOB}.{os.getpid()}.tmp"
        tmp.write_text(job + "\n")
        tmp.replace(self.root / _JOB)

    def mark(self, name: str) -> None:
        # an empty file whose name is the record: creating it is atomic, so a kill leaves
        # either the marker or nothing (no temporary file to be mistaken for a finished block)
        self.done_dir.mkdir(parents=True, exist_ok=True)
        (self.done_dir / name).touch()

    def acquire(self, *, fingerprint: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "process_started": _process_started(os.getpid())}  # fmt: skip
        while True:
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read_lock()
                if other and _alive(other):
                    raise OutputExistsError(self.held_by(other)) from None
                # a stale lock from a job that died: take it over
                self.lock_path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({**info, "fingerprint": fingerprint}, f)
            return

    def held_by(self, lock: dict) -> str:
        """Why the output is locked, naming the lock file and how to clear it, in one line."""
        host = lock.get("host")
        since = lock.get("started")
        when = (
            f", started {time.strftime('%Y-%m-%d %H:%M', time.localtime(since))}"
            if isinstance(since, int | float)
            else ""
        )
        here = host == socket.gethostname()
        how = (
            "wait for it or stop it first"
            if here
            else "wait for it or stop it first; if it no longer runs (its node went down), "
            "rerun with --break-lock"
        )
        return (
            f"another job (pid {lock.get('pid')} on {host}{when}) is writing "
            f"{self.output}; its lock is "
            f"{self.lock_path}: {how}"
        )

    def break_lock(self) -> dict | None:
        """Remove the lock of a job that no longer runs (one on another host is taken at the
        user's word); refuse while a live job on this host holds it. Returns the lock broken."""
        other = self._read_lock()
        if other is None:
            return None
        if other.get("host") == socket.gethostname() and _alive(other):
            raise OutputExistsError(
                f"--break-lock refused: pid {other.get('pid')} on this host still runs and holds "
                f"{self.lock_path}; stop it first"
            )
        self.lock_path.unlink(missing_ok=True)
        return other

    def _read_lock(self) -> dict | None:
        try:
            return json.loads(self.lock_path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        other = self._read_lock()
        if other and other.get("pid") == os.getpid() and other.get("host") == socket.gethostname():
            self.lock_path.unlink(missing_ok=True)

    def remove(self) -> None:
        """Forget the job (after it completed): the ledger and our lock."""
        import shutil

        shutil.rmtree(self.done_dir, ignore_errors=True)
        for p in self.root.glob("axis-*.zarr"):
            shutil.rmtree(p, ignore_errors=True)
        (self.root / _JOB).unlink(missing_ok=True)
        job_log_path(self.output).unlink(missing_ok=True)
        self.release()
        try:
            self.root.rmdir()
        except OSError:
            pass


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if it does not run."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _alive(lock: dict) -> bool:
    """Whether the job that holds a lock still runs. Only knowable on the same host, where the
    process must exist and have started when the lock says (a pid reused by another process
    does not count); a lock from another host is taken as alive."""
    if lock.get("host") != socket.gethostname():
        return True
    try:
        pid = int(lock["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    started = _process_started(pid)
    if started is None:
        import psutil

        return psutil.pid_exists(pid)  # exists, but its start time cannot be read: alive
    recorded = lock.get("process_started")
    if isinstance(recorded, int | float):
        return abs(started - recorded) < 1.0
    # a lock without the process's start time: alive unless the process started after it
    since = lock.get("started")
    return not (isinstance(since, int | float) and started > since + 1.0)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


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
    from vstain_dask.cluster import worker_model

    if isinstance(read, _InputFault):
        return read
    raw, mask, read_s = read
    fault = _non_finite(raw, block, two_d=vol_shape[0] == 1)
    if fault is not None:
        return fault
    t1 = time.perf_counter()
    model = worker_model(model_path, model_sha, device=config.device)
    rgb, spread = stain_block(
        raw,
        raw_box=block.read_box,
        tile_box=block.tile_box,
        vol_shape=vol_shape,
        box=block.box,
        model=model,
        config=config,
        mask=mask,
    )
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


def check_inputs(
    source: str | os.PathLike,
    output: str | os.PathLike | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    break_lock: bool = False,
):
    """Everything that can be checked about a stain's input and output before any work starts
    (and, with ``break_lock``, the removal of a lock left by a job that no longer runs).

    Returns
    -------
    (source, volume, output) : (Path, xarray.DataArray, Path)

    Raises
    ------
    VolumeFormatError, InputError, OutputExistsError
        With one line that names the path and says what to do.
    """
    from vstain_dask import ngff

    source = Path(source)
    vol = ngff.open_volume(source)
    if "c" in vol.dims:
        raise InputError(
            f"{source} has a channel axis ({dict(vol.sizes)}); stain needs a greyscale CT "
            "volume (z, y, x) or slice (y, x)"
        )
    _check_ct(vol.data)
    output = Path(output) if output is not None else default_output(source)
    src_res, out_res = source.resolve(), output.resolve()
    if out_res == src_res or src_res in out_res.parents:
        raise InputError(f"output {output} is inside the input {source}; choose another path")
    if resume and overwrite:
        raise InputError("choose either --resume or --overwrite, not both")
    if overwrite and output.is_symlink():
        raise InputError(
            f"{output} is a symbolic link (to {os.readlink(output)}); --overwrite replaces "
            "folders, not links: remove the link, or give the folder it points to as -o"
        )
    parent = out_res.parent
    if not parent.is_dir():
        raise InputError(f"the output folder {parent} does not exist or is not a folder")
    if not os.access(parent, os.W_OK):
        raise InputError(f"the output folder {parent} is not writable")
    if output.exists() and not (overwrite or resume):
        raise OutputExistsError(
            f"{output} exists; use --overwrite to replace it or --resume to continue it"
        )
    ledger = _Ledger(output)
    if break_lock:
        broken = ledger.break_lock()
        if broken:
            warnings.warn(
                f"broke the lock {ledger.lock_path} of pid {broken.get('pid')} on "
                f"{broken.get('host')}",
                RuntimeWarning,
                stacklevel=2,
            )
    lock = ledger._read_lock()
    if lock and _alive(lock):
        raise OutputExistsError(ledger.held_by(lock))
    return source, vol, output


def stain_to_zarr(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike,
    config: StainConfig | None = None,
    client=None,
    chunks: Sequence[int] | None = None,
    ngff_version: str = "0.5",
    resume: bool = False,
    overwrite: bool = False,
    break_lock: bool = False,
    retries: int = 2,
    progress: bool = True,
    command: str | None = None,
) -> StainReport:
    """Stain an OME-Zarr CT volume into an OME-Zarr RGB(A) volume, block by block.

    Parameters
    ----------
    source : path
        OME-Zarr (NGFF 0.4 or 0.5) with a (z, y, x) or (y, x) greyscale image.
    output : path, optional
        Default ``<name>.stained.ome.zarr`` beside the input.
    model : path
        A vstain-dask checkpoint.
    config : StainConfig
    client : distributed.Client, optional
        Where blocks run; default: the current client, else a local cluster.
    chunks : (z, y, x), optional
        Output chunks; default (64, 256, 256) clipped to the volume.
    resume : bool
        Continue an interrupted job on ``output``: finished blocks are kept.
    overwrite : bool
        Replace an existing ``output``.
    break_lock : bool
        Remove the lock of a job that no longer runs but could not be seen to have ended (one
        on another host whose node went down); refused while a job on this host holds it.
    retries : int
        Times a failed block is retried (on another worker if its worker died).

    Returns
    -------
    StainReport

    Raises
    ------
    OutputExistsError
        ``output`` exists and neither ``resume`` nor ``overwrite`` was given, or another job is
        writing it.
    JobError
        Some blocks failed after their retries; the output stays marked incomplete and resumable.
    """

    from vstain_dask import __version__, ngff

    config = config or StainConfig()
    source, vol, output = check_inputs(
        source, output, resume=resume, overwrite=overwrite, break_lock=break_lock
    )
    two_d, vol_shape = _vol_shape(vol)

    model_path, model_sha = _model_ref(model)
    chunks = _output_chunks(vol_shape, chunks, two_d=two_d)
    stages = _stages(vol_shape, chunks, config)
    n_blocks = sum(len(b) for _, _, b in stages)
    identity, fingerprint = _job_fingerprint(
        source, vol_shape, chunks, model_sha, config, ngff_version
    )

    ledger = _Ledger(output)
    ledger.acquire(fingerprint=fingerprint)  # refuses while another live job holds the output
    try:
        job = _open_job(output, ledger, source, identity, fingerprint, overwrite=overwrite)
        if job is None:
            return StainReport(
                output=output, blocks=n_blocks, blocks_skipped=n_blocks, tiles=0,
                voxels=int(np.prod(vol_shape)), seconds=0.0, dashboard=None,
            )  # fmt: skip
        missing = ngff.missing_chunks(source)
        if missing[0]:
            warnings.warn(
                f"{missing[0]} of {missing[1]} chunks of {source} are not stored; they are read "
                f"as the fill value {ngff.level_array(source).fill_value}, as zarr does (a store "
                "copied in part, or written by a job that stopped?)",
                RuntimeWarning,
                stacklevel=2,
            )
        report = _create_and_run(
            output, ledger=ledger, stages=stages, vol=vol, vol_shape=vol_shape, two_d=two_d,
            chunks=chunks, config=config, ngff_version=ngff_version, client=client,
            source=str(source), model_path=model_path, model_sha=model_sha, retries=retries,
            progress=progress, provenance={
                "software": {"name": "vstain-dask", "version": __version__},
                "model": {"path": model_path, "sha256": model_sha},
                "input": {"path": str(source.resolve()), "shape": list(vol.shape),
                          "dtype": str(vol.dtype),
                          "identity": identity, "missing_chunks": missing[0]},
                "parameters": config.to_dict(),
                "chunks": list(chunks),
                "fingerprint": fingerprint,
                "job": job,
                "command": command,
                "complete": False,
            },
        )  # fmt: skip
        return dataclasses.replace(report, missing_chunks=missing)
    except OSError as e:
        if _disk_full(e):
            raise JobError(_disk_full_message(output)) from e
        raise
    finally:
        ledger.release()


def _disk_full(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _disk_full_message(output: Path) -> str:
    return (
        f"no space left for {output} (disk full or quota reached); it is incomplete: free some "
        "space and rerun the same command with --resume"
    )


def _create_and_run(
    output: Path, *, ledger, stages, vol, vol_shape, two_d, chunks, config, ngff_version,
    client, source, model_path, model_sha, retries, progress, provenance,
) -> StainReport:  # fmt: skip
    from vstain_dask import ngff

    scale = vol.attrs.get("scale") or {}
    units = vol.attrs.get("units") or {}
    translation = vol.attrs.get("translation") or {}
    if not output.exists():
        out_shape = (config.out_channels, *(vol_shape[1:] if two_d else vol_shape))
        ngff.create_volume(
            output,
            shape=out_shape,
            dtype="uint8",
            chunks=(config.out_channels, *(chunks[1:] if two_d else chunks)),
            axes="cyx" if two_d else "czyx",
            scale={k: v for k, v in scale.items() if k != "c"},
            units={k: v for k, v in units.items() if k != "c"},
            translation={k: v for k, v in translation.items() if k != "c"},
            ngff_version=ngff_version,
            kind="rgb",
            channel_names=list("RGBA"[: config.out_channels]),
            attrs=provenance,
        )
        if config.uncertainty:
            ngff.create_volume(
                output / "uncertainty",
                shape=vol_shape[1:] if two_d else vol_shape,
                dtype="uint8",
                chunks=chunks[1:] if two_d else chunks,
                axes="yx" if two_d else "zyx",
                scale=dict(scale),
                units=dict(units),
                translation=dict(translation),
                ngff_version=ngff_version,
                kind="intensity",
                attrs={"description": "spread of the stain between axes (8-bit std)"},
            )
    return _run(
        stages,
        ledger=ledger,
        client=client,
        source=str(source),
        vol_shape=vol_shape,
        output=output,
        model_path=model_path,
        model_sha=model_sha,
        config=config,
        chunks=chunks,
        two_d=two_d,
        retries=retries,
        progress=progress,
        provenance=provenance,
    )


def _mask_planes(planes: np.ndarray, *, ct_levels) -> np.ndarray:
    """Per-slice sample masks (convex hull of bone and screw) of whole (Y, X) planes."""
    from vstain_dask.preprocess import CTLevels, ct_tissue_mask

    levels = CTLevels(*ct_levels) if ct_levels is not None else None
    return np.stack([ct_tissue_mask(p, levels) for p in planes]).astype(np.uint8)


def _write_mask(source, output: Path, ledger: _Ledger, *, config: StainConfig, two_d: bool) -> str:
    """Compute the sample mask slab by slab (whole planes) on the cluster and store it as NGFF
    labels ``sample`` of the output; skipped when a resumed job already has it."""
    from vstain_dask import ngff

    path = output / "labels" / "sample"
    if "mask" in ledger.done():
        return str(path)
    data = ngff.open_volume(source).data
    if two_d:
        data = data[None]
    cz = ngff.open_volume(output, allow_incomplete=True).data.chunks[1][0] if not two_d else 1
    planes = data.rechunk((cz, -1, -1))
    mask = planes.map_blocks(_mask_planes, ct_levels=config.ct_levels, dtype=np.uint8)
    ngff.write_labels(output, "sample", mask[0] if two_d else mask, overwrite=True)
    ledger.mark("mask")
    return str(path)


def _open_job(
    output: Path, ledger: _Ledger, source: Path, identity: str, fingerprint: str, *, overwrite
) -> str | None:
    """Under the job's lock: clear the output when overwriting, check that an existing one
    was started with these inputs, and bind the ledger to the output's job identity. Returns
    that identity, or None when the output is already complete (nothing to do)."""
    import shutil

    from vstain_dask import ngff

    if output.exists() and overwrite:
        shutil.rmtree(output)
        ledger.remove()
        ledger.acquire(fingerprint=fingerprint)
    job = None
    if output.exists():
        prov = _read_provenance(output)
        if prov.get("fingerprint") != fingerprint:
            raise OutputExistsError(_resume_mismatch(output, prov, source, identity))
        if prov.get("complete"):
            ledger.remove()
            return None
        job = prov.get("job")
    if job is None:  # a new output (or one from a version that had no job identity)
        job = uuid.uuid4().hex
        if output.exists():
            ngff.update_provenance(output, job=job)
    # the records beside the output count only if they were written into this output
    ledger.bind(job, output)
    return job


def _vol_shape(vol) -> tuple[bool, tuple[int, int, int]]:
    """(whether the volume is one 2D plane, its shape as (z, y, x))."""
    two_d = vol.ndim == 2
    return two_d, ((1, *vol.shape) if two_d else tuple(int(s) for s in vol.shape))


def _output_chunks(vol_shape, chunks, *, two_d: bool) -> tuple[int, int, int]:
    if chunks is None:
        chunks = (min(64, vol_shape[0]), min(256, vol_shape[1]), min(256, vol_shape[2]))
    chunks = tuple(int(c) for c in chunks)
    return (1, *chunks[-2:]) if two_d else chunks


def _job_fingerprint(source: Path, vol_shape, chunks, model_sha: str, config, ngff_version):
    """(content identity of the input, fingerprint of everything that defines the output)."""
    from vstain_dask import ngff

    identity = ngff.content_identity(source)  # what the input holds, not only where it is
    fingerprint = _fingerprint(
        str(source.resolve()), identity, vol_shape, chunks, model_sha, config.to_dict(),
        ngff_version,
    )  # fmt: skip
    return identity, fingerprint


def check_resume(source, output, *, model, config: StainConfig, chunks=None,
                 ngff_version: str = "0.5") -> None:  # fmt: skip
    """Refuse, before any work, a resume of ``output`` with other inputs than it was started
    with (the checks :func:`stain_to_zarr` makes again under the job's lock)."""
    source, vol, output = check_inputs(source, output, resume=True, overwrite=False)
    if not output.exists():
        return
    two_d, vol_shape = _vol_shape(vol)
    chunks = _output_chunks(vol_shape, chunks, two_d=two_d)
    _, model_sha = _model_ref(model)
    identity, fingerprint = _job_fingerprint(
        source, vol_shape, chunks, model_sha, config, ngff_version
    )
    prov = _read_provenance(output)
    if prov.get("fingerprint") != fingerprint:
        raise OutputExistsError(_resume_mismatch(output, prov, source, identity))


def _resume_mismatch(output: Path, prov: dict, source: Path, identity: str) -> str:
    """Why an existing output cannot be resumed with these inputs, in one line."""
    if not prov.get("fingerprint"):
        return (
            f"{output} exists but is not a stain written by vstain-dask, so there is nothing to "
            "resume; choose another -o, or --overwrite to replace it"
        )
    was = prov.get("input") or {}
    if was.get("path") == str(source.resolve()) and was.get("identity") not in (None, identity):
        return (
            f"the input {source} changed since the stain into {output} started (same path, "
            "other content); --resume needs the input it started from, or use --overwrite to "
            "start again"
        )
    return (
        f"{output} was started with other inputs or parameters; --resume needs the same input, "
        "model and options (or use --overwrite)"
    )


def _read_provenance(output: Path) -> dict:
    from vstain_dask import ngff

    try:
        return ngff.open_volume(output, allow_incomplete=True).attrs.get("vstain", {}) or {}
    except Exception:
        return {}


def _stage_configs(config: StainConfig) -> list[tuple[str, StainConfig]]:
    """(ledger prefix, config) of the job's stages: one, or one per axis when a fused stain runs
    as passes."""
    if len(config.axes) > 1 and config.fusion is Fusion.PASSES:
        return [
            (f"{axis}-", dataclasses.replace(config, axes=axis, alpha=False, uncertainty=False,
                                              mask=False, block=None))
            for axis in config.axes
        ]  # fmt: skip
    return [("", config)]


def _stages(vol_shape, chunks, config: StainConfig) -> list[tuple[str, StainConfig, list[Block]]]:
    """The job's stages: (ledger prefix, config, blocks), each plan checked first."""
    return [(prefix, cfg, _checked_plan(vol_shape, chunks, cfg))
            for prefix, cfg in _stage_configs(config)]  # fmt: skip


def _run_stage(
    blocks: list[Block],
    *,
    prefix: str,
    target: str,
    array_path: str,
    ledger: _Ledger,
    client,
    source,
    vol_shape,
    output: Path,
    model_path,
    model_sha,
    config: StainConfig,
    two_d,
    retries,
    bar,
    tag: str,
    mask_path: str | None,
) -> tuple[int, dict[str, float], int]:
    """Submit a stage's blocks (read, stain and write task each) and wait for them.

    At most ``BLOCKS_IN_FLIGHT_PER_WORKER`` blocks per worker are submitted at a time, and the
    next one when one is written: how many blocks a worker holds in memory (read ahead, being
    stained, waiting to be written) does not depend on its thread count or on dask's
    scheduling heuristics, so workers can have threads to spare for writing, the pyramid and
    the fusion pass.

    Returns (tiles, summed task timings, blocks skipped as already done)."""
    from distributed import as_completed

    done = ledger.done()
    todo = [b for b in blocks if prefix + b.name not in done]
    if bar is not None:
        bar.update(len(blocks) - len(todo))
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    gated = bool(workers) and all(COMPUTE_RESOURCE in w.get("resources", {}) for w in workers)
    futures: dict[Any, str] = {}

    def submit(b: Block):
        name = prefix + b.name
        read = client.submit(
            _read_block, b, source=source, two_d=two_d, mask_path=mask_path,
            key=f"read-{tag}-{name}", retries=retries, pure=False,
        )  # fmt: skip
        stained = client.submit(
            _stain_task,
            read,
            b,
            vol_shape=vol_shape,
            model_path=model_path,
            model_sha=model_sha,
            config=config,
            key=f"stain-{tag}-{name}",
            retries=retries,
            pure=False,
            resources={COMPUTE_RESOURCE: 1} if gated else None,
        )
        fut = client.submit(
            _write_block,
            stained,
            b,
            output=str(output),
            target=target,
            array_path=array_path,
            ledger_name=name,
            two_d=two_d,
            key=f"write-{tag}-{name}",
            retries=retries,
            pure=False,
        )
        # the next task holds each result; released as soon as it has run
        futures[fut] = name
        return fut

    def window() -> int:
        # workers can join (or leave) while a stage runs: SLURM jobs start when they start
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        return BLOCKS_IN_FLIGHT_PER_WORKER * max(n, 1)

    pending = iter(todo)
    failed: dict[str, str] = {}
    tiles = 0
    timings = {"read": 0.0, "compute": 0.0, "write": 0.0}
    try:
        # `futures` holds the blocks in flight: submitted and not yet written
        running = as_completed([submit(b) for b in itertools.islice(pending, window())])
        for fut in running:
            name = futures.pop(fut)
            if fut.status == "finished":
                result = fut.result()
                if isinstance(result, _InputFault):
                    raise InputError(f"{result.message} ({output} is left incomplete)")
                tiles += int(result["tiles"])
                for k in timings:
                    timings[k] += float(result[k])
            else:
                exc = fut.exception()
                if _disk_full(exc):
                    raise JobError(_disk_full_message(output)) from exc
                failed[name] = f"{type(exc).__name__}: {exc}"
            if bar is not None:
                bar.update(1)
            fut.release()
            for b in itertools.islice(pending, max(0, window() - len(futures))):
                running.add(submit(b))
    except BaseException:
        client.cancel(list(futures))
        raise
    if failed:
        first = next(iter(failed.items()))
        raise JobError(
            f"{len(failed)} of {len(blocks)} blocks failed ({', '.join(sorted(failed)[:5])}"
            f"{', ...' if len(failed) > 5 else ''}); first: {first[0]}: {first[1]}; "
            f"the output {output} is incomplete: fix the cause and rerun with --resume"
        )
    return tiles, timings, len(blocks) - len(todo)


def _fuse_passes(
    paths: list[str], output: Path, *, config: StainConfig, two_d: bool, mask_path: str | None
) -> None:
    """Fuse the 8-bit single-axis passes into the output (and the spread between them)."""
    import dask
    import dask.array as da
    import zarr

    stack = da.stack([da.from_zarr(zarr.open_array(store=p, mode="r")) for p in paths])
    stack = stack.astype(np.float32)  # (axes, 3, Z, Y, X)
    if config.fuse is FuseMode.MEDIAN:
        fused = stack.map_blocks(
            lambda s: np.median(s, axis=0),
            drop_axis=0,
            dtype=np.float32,
            meta=np.array((), np.float32),
        )
    else:
        fused = stack.mean(axis=0, dtype=np.float32)
    rgb = da.clip(da.rint(fused), 0, 255).astype(np.uint8)
    if mask_path is not None:
        inside = da.from_zarr(zarr.open_array(store=mask_path, path="0", mode="r"))
        if two_d:
            inside = inside[None]
        colour = np.asarray(config.mask_colour, np.uint8).reshape(3, 1, 1, 1)
        rgb = da.where(inside.astype(bool)[None], rgb, colour)
    if config.alpha:
        alpha = da.rint(255.0 - rgb.astype(np.float32).mean(axis=0, dtype=np.float32))
        rgb = da.concatenate([rgb, alpha.astype(np.uint8)[None]], axis=0).rechunk({0: -1})
    level0 = zarr.open_array(store=str(output), path="0", mode="r+")
    writes = [da.store(rgb[:, 0] if two_d else rgb, level0, lock=False, compute=False)]
    if config.uncertainty:
        spread = stack.std(axis=0, dtype=np.float32).mean(axis=0, dtype=np.float32)
        spread = da.clip(da.rint(spread), 0, 255).astype(np.uint8)
        unc = zarr.open_array(store=str(output / "uncertainty"), path="0", mode="r+")
        writes.append(da.store(spread[0] if two_d else spread, unc, lock=False, compute=False))
    dask.compute(*writes)


def _run(
    stages: list[tuple[str, StainConfig, list[Block]]],
    *,
    ledger: _Ledger,
    client,
    source,
    vol_shape,
    output: Path,
    model_path,
    model_sha,
    config,
    chunks,
    two_d,
    retries,
    progress,
    provenance,
) -> StainReport:
    import zarr
    from distributed import get_client

    from vstain_dask import ngff
    from vstain_dask.cluster import dashboard_url

    if client is None:
        client = get_client()
    t0 = time.perf_counter()
    n_blocks = sum(len(blocks) for _, _, blocks in stages)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_blocks, unit="block", desc="stain")
    mask_path = None
    if config.mask:
        mask_path = _write_mask(source, output, ledger, config=config, two_d=two_d)
    tag = provenance["fingerprint"][:12]
    tiles, skipped = 0, 0
    timings = {"read": 0.0, "compute": 0.0, "write": 0.0}
    passes = []
    try:
        for prefix, cfg, blocks in stages:
            if prefix:  # one pass of a fused stain: 8-bit RGB in the job folder
                target = str(ledger.root / f"axis-{cfg.axes}.zarr")
                zarr.open_array(
                    store=target, mode="a", shape=(3, *vol_shape), chunks=(3, *chunks),
                    dtype="uint8", fill_value=0,
                )  # fmt: skip
                passes.append(target)
                array_path = ""
            else:
                target, array_path = str(output), "0"
            t, tm, sk = _run_stage(
                blocks, prefix=prefix, target=target, array_path=array_path, ledger=ledger,
                client=client, source=source, vol_shape=vol_shape, output=output,
                model_path=model_path, model_sha=model_sha, config=cfg, two_d=two_d,
                retries=retries, bar=bar, tag=tag, mask_path=None if prefix else mask_path,
            )  # fmt: skip
            tiles += t
            skipped += sk
            for k in timings:
                timings[k] += tm[k]
    finally:
        if bar is not None:
            bar.close()
    if passes:
        _fuse_passes(passes, output, config=config, two_d=two_d, mask_path=mask_path)
    ngff.write_pyramid(output)
    if config.uncertainty:
        ngff.write_pyramid(output / "uncertainty")
    seconds = time.perf_counter() - t0
    _mark_complete(output, seconds=seconds, tiles=tiles)
    ledger.remove()
    return StainReport(
        output=output,
        blocks=n_blocks,
        blocks_skipped=skipped,
        tiles=tiles,
        voxels=int(np.prod(vol_shape)),
        seconds=seconds,
        dashboard=dashboard_url(client),
        timings=timings,
    )


def _mark_complete(output: Path, *, seconds: float, tiles: int) -> None:
    from vstain_dask import ngff

    ngff.update_provenance(output, complete=True, seconds=round(seconds, 3), tiles=tiles)


# -- the whole job: model, CT levels, cluster ----------------------------------------------------


def default_model_path() -> Path:
    """The bundled default model (trained on synthetic phantoms)."""
    from importlib.resources import files

    return Path(str(files("vstain_dask") / "data" / "default_model.pt"))


def resolve_ct_levels(source, model, ct_levels) -> tuple[float, float] | None:
    """The (bone, background) levels to normalize the CT with.

    ``"auto"`` estimates them from the volume (a bounded sample of it) when the model expects
    normalized CT, ``None``/``"none"`` uses the volume as it is, a pair is used as given.
    """
    from vstain_dask import ngff
    from vstain_dask.models import load_model

    if ct_levels is None or (isinstance(ct_levels, str) and ct_levels.lower() == "none"):
        return None
    if isinstance(ct_levels, str):
        if ct_levels.lower() != "auto":
            raise InputError(
                f"ct_levels must be 'auto', 'none' or BONE,BACKGROUND, got {ct_levels!r}"
            )
        if not load_model(model).normalization.ct_normalized:
            return None
        from vstain_dask.preprocess import estimate_ct_levels

        vol = ngff.open_volume(source)
        material = (vol.attrs.get("vstain") or {}).get("material")  # phantoms record it
        try:
            levels = estimate_ct_levels(vol.data, material=material)
        except InputError as e:
            raise InputError(
                f"could not estimate the CT levels of {source}: {e}; give them with --ct-levels "
                "BONE,BACKGROUND (the raw grey values of bone and of the embedding), or "
                "--ct-levels none for a volume already normalized"
            ) from e
        return (float(levels.bone), float(levels.background))
    bone, background = ct_levels
    return (float(bone), float(background))


def _local_gpu_workers(cluster, device: str | None):
    """The cluster to stain on: a local cluster whose size was not given gets one worker when
    the model runs on CUDA.

    Local workers all see the same GPU, so one worker per core (the CPU default) would put up
    to 8 processes, each with its own copy of the model and its own CUDA context, on one GPU.
    One worker keeps the GPU busy by itself (its other threads read and write); several GPUs
    need ``--cluster cuda``, which gives each worker its own.
    """
    from vstain_dask.cluster import ClusterConfig, ClusterKind

    cluster = cluster or ClusterConfig()
    if cluster.kind is not ClusterKind.LOCAL or cluster.scheduler or cluster.workers is not None:
        return cluster
    import torch

    # the device asked for, as the plan's premise (whether it exists is checked by the job)
    on_cuda = torch.device(device if device not in (None, "auto") else default_device()).type
    return dataclasses.replace(cluster, workers=1) if on_cuda == "cuda" else cluster


def job_log_path(output: str | os.PathLike) -> Path:
    """Where a job on ``output`` logs what its cluster says: beside the output, in the job's
    folder (removed with it when the job completes)."""
    return _Ledger(Path(output)).root / "cluster.log"


@contextlib.contextmanager
def job_log(path: Path):
    """Send what the cluster says (distributed's logs in this process; stderr of the local
    worker processes, through the ``vstain_dask._worker_log`` preload) to ``path`` rather than
    the terminal, for the duration of a job."""
    import dask

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(n) for n in ("distributed", "tornado", "asyncio")]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
    preload = list(dask.config.get("distributed.worker.preload", None) or [])
    try:
        with dask.config.set({"distributed.worker.preload": [*preload, "vstain_dask._worker_log"],
                              "vstain.worker-log": str(path)}):  # fmt: skip
            yield path
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
        handler.close()


def _worker_memory(cluster) -> int | None:
    """Bytes of memory a worker of ``cluster`` has, where known before it starts."""
    from dask.utils import parse_bytes

    from vstain_dask.cluster import ClusterKind, _cpu_count

    if cluster.memory_limit:
        return parse_bytes(cluster.memory_limit)
    if cluster.scheduler or cluster.kind is not ClusterKind.LOCAL:
        return None
    import psutil

    return psutil.virtual_memory().total // (cluster.workers or min(_cpu_count(), 8))


def _check_fits(vol, model, config: StainConfig, cluster, *, chunks) -> None:
    """The job's plan, checked before a cluster starts: block shapes against the chunks, tiles
    computed many times over, and blocks whose staining cannot fit in a worker's memory."""

    from vstain_dask.models import load_model

    two_d, vol_shape = _vol_shape(vol)
    stages = _stages(vol_shape, _output_chunks(vol_shape, chunks, two_d=two_d), config)
    available = _worker_memory(cluster)
    if available is None:
        return
    device = str(resolve_device(config.device))
    loaded = load_model(model, device="cpu")
    for _, cfg, blocks in stages:
        check_memory(blocks, cfg, model=loaded, available=available, device=device)


def run_stain(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | None = None,
    config: StainConfig | None = None,
    cluster=None,
    ct_levels: str | tuple[float, float] | None = "auto",
    on_start=None,
    log_file: str | os.PathLike | None = None,
    **options,
) -> StainReport:
    """Stain ``source`` into ``output`` on a cluster: what ``vstain-dask stain`` runs.

    Parameters
    ----------
    model : path, optional
        Default: the bundled model (trained on synthetic phantoms).
    cluster : ClusterConfig, optional
        Default: a local cluster sized to the machine: one worker per core (at most 8) on the
        CPU, one worker when the model runs on CUDA (``--cluster cuda`` for several GPUs).
    ct_levels : "auto", "none" or (bone, background)
        See :func:`resolve_ct_levels`.
    on_start : callable, optional
        Called with the client once workers are up (the CLI prints the dashboard link).
    log_file : path, optional
        Send the cluster's logs (and local workers' stderr) there instead of the terminal
        (see :func:`job_log`); errors of the job then name the file.
    options
        Passed to :func:`stain_to_zarr` (resume, overwrite, chunks, ngff_version, ...).
    """
    from vstain_dask.cluster import connect

    model = Path(model) if model is not None else default_model_path()
    config = config or StainConfig()
    source = Path(source)
    # fail early, before starting a cluster: bad input, bad model, existing output, a plan
    # that cannot fit or would recompute every tile many times
    _, vol, _ = check_inputs(
        source,
        output,
        resume=options.get("resume", False),
        overwrite=options.get("overwrite", False),
        break_lock=options.pop("break_lock", False),
    )
    _model_ref(model)
    levels = resolve_ct_levels(source, model, ct_levels)
    if levels != config.ct_levels:
        config = dataclasses.replace(config, ct_levels=levels)
    cluster = _local_gpu_workers(cluster, config.device)
    _check_fits(vol, model, config, cluster, chunks=options.get("chunks"))
    if options.get("resume") and not options.get("overwrite"):
        check_resume(source, output, model=model, config=config, chunks=options.get("chunks"),
                     ngff_version=options.get("ngff_version", "0.5"))  # fmt: skip
    logged = job_log(Path(log_file)) if log_file is not None else contextlib.nullcontext()
    try:
        with logged, connect(cluster) as client:
            if on_start is not None:
                on_start(client)
            try:
                return stain_to_zarr(
                    source, output, model=model, config=config, client=client, **options
                )
            except KeyboardInterrupt:
                # the cluster is torn down mid-flight: its comms log tracebacks that mean nothing
                for name in ("distributed", "tornado", "asyncio"):
                    logging.getLogger(name).setLevel(logging.CRITICAL + 1)
                raise
    except (JobError, ClusterError) as e:
        log_path = Path(log_file) if log_file is not None else None
        if log_path is not None and log_path.is_file() and log_path.stat().st_size:
            raise type(e)(f"{e} (the cluster's log: {log_path})") from e
        raise
