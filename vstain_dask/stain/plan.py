"""Planning a stain: the blocks a volume is cut into, the stages a job runs, and the checks of
a plan before any work starts (tiles computed many times over, memory per task)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

from vstain_dask.errors import InputError
from vstain_dask.stain.params import _DIMS, _PLANE_DIMS, Fusion, StainConfig, default_batch_size
from vstain_dask.tiling import TileGrid

#: planes per tiled-inference call inside a block: bounds the float64 blend accumulators
#: (16 planes of 1536² RGB: 0.9 GiB) whatever the block's size
_PLANES_PER_CALL = 16


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
    return config.tiling.grid((shape[d1], shape[d2]))


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
            f"--block {','.join(map(str, block))} (block=) cuts the volume into {n:,} blocks; "
            f"use a block of at least a tile ({config.tile}) across, or leave it out for the "
            "default"
        )
    blocks = plan_blocks(shape, chunks, config)
    factor = recompute_factor(shape, blocks, config)
    if factor > MAX_RECOMPUTE:
        raise InputError(
            f"--block {','.join(map(str, block))} (block=) makes every tile be computed "
            f"{factor:.0f} times "
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
            f"one block with --tile {config.tile} (tile=) needs about {format_bytes(need)}, more "
            f"than the {format_bytes(available)} a worker has: use a smaller --tile (the model's "
            "is usually 256), --batch-size (batch_size=) or --block (block=)"
        )


class Stage(NamedTuple):
    """One stage of a job: its blocks, stained with ``config``, recorded in the ledger under
    ``prefix`` (``""`` for a job of one stage, ``"z-"`` etc. for the passes of a fused one)."""

    prefix: str
    config: StainConfig
    blocks: list[Block]


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


def _stages(vol_shape, chunks, config: StainConfig) -> list[Stage]:
    """The job's stages: (ledger prefix, config, blocks), each plan checked first."""
    return [Stage(prefix, cfg, _checked_plan(vol_shape, chunks, cfg))
            for prefix, cfg in _stage_configs(config)]  # fmt: skip
