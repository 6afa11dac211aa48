"""Globally anchored 2D tile grids, blend weights and batched tiled inference.

A plane is stained by running the generator on overlapping tiles (the paper: 256×256 pixels,
placed every 64 pixels) and blending the overlapping predictions (the paper: a plain average).
Two properties make this safe to split into blocks:

- the grid is anchored to the whole plane, not to the block being processed, so a block sees
  exactly the tiles that whole-plane inference would use for its pixels;
- every pixel sums its weighted tile predictions in float64, one tile after the other, in the
  grid's fixed row-major order, so the blended value does not depend on which block (or which
  batch of tiles) produced it.

Together with forward passes of one fixed batch shape (convolution backends pick kernels by
shape, and results differ in the last bits between batch sizes), they make
:func:`predict_region` return, bit for bit, what whole-plane inference gives for the same pixels,
so there are no seams at block borders. float64 accumulation also makes a position-independent
model come back exactly: with ``x + 1`` as the model, the blended output is ``x + 1`` in float32
for every grid and blend mode.

Planes smaller than a tile along an axis (only possible when the whole plane is) are
reflect-padded at their end to the tile size, so that the generator always sees tile-sized inputs
and its instance-normalization statistics match those of full tiles.

Only numpy is needed to build grids and weights; torch is imported by the inference functions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from numbers import Integral
from typing import TYPE_CHECKING, Any

import numpy as np

from vstain_dask._validate import check_int, refuse_unknown_keywords
from vstain_dask.errors import InputError, as_enum
from vstain_dask.intensity import output_to_uint8
from vstain_dask.runtime import compiled, on_for_cuda

if TYPE_CHECKING:
    import torch

__all__ = [
    "BlendMode",
    "Tiling",
    "TileGrid",
    "InferenceSettings",
    "tile_starts",
    "blend_weights",
    "predict_region",
    "predict_plane",
    "count_tiles",
]

#: smallest blend weight, relative to the largest (MONAI's importance maps use the same floor);
#: keeps every pixel of every tile contributing, so no pixel of a plane is left without weight.
_MIN_WEIGHT = 1e-3

#: Gaussian sigma as a fraction of the tile size (MONAI's default ``sigma_scale``)
_SIGMA_SCALE = 0.125

Region = tuple[int, int, int, int]


class BlendMode(StrEnum):
    """How overlapping tile predictions are combined.

    ``mean``
        plain average of all tiles covering a pixel (the paper).
    ``gaussian``
        weighted average with a Gaussian importance map (sigma = tile / 8), which favours the
        centre of each tile, where the generator sees the most context; allows larger steps
        (fewer tiles) for the same quality.
    ``cosine``
        weighted average with a Hann (cos²) window, which falls to the floor at the tile edges
        and sums to a nearly flat total when the step is half the tile.
    """

    MEAN = "mean"
    GAUSSIAN = "gaussian"
    COSINE = "cosine"


# ---------------------------------------------------------------------------------------------
# validation helpers


def _pair(name: str, value: Any, *, minimum: int | None = None) -> tuple[int, int]:
    """An int or a pair of ints -> a pair of ints (an int applies to both axes)."""
    if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str):
        if len(value) != 2:
            raise InputError(f"{name} must be an integer or a (y, x) pair, got {value!r}")
        return (
            check_int(value[0], f"{name}[0]", minimum),
            check_int(value[1], f"{name}[1]", minimum),
        )
    v = check_int(value, name, minimum)
    return (v, v)


def _check_tile_step(tile: Any, step: Any) -> tuple[int, int]:
    tile = check_int(tile, "tile", 1)
    gaps = isinstance(step, Integral) and step > tile
    step = check_int(
        step, "step", 1, tile, hint="a step larger than the tile leaves gaps" if gaps else None
    )
    return tile, step


def _blend_mode(value: Any) -> BlendMode:
    return as_enum(BlendMode, value, "blend")


@dataclass(frozen=True)
class Tiling:
    """How a plane is cut into square tiles and their predictions blended; the one statement
    of these parameters and their defaults for stain, evaluate and :func:`predict_plane`.

    Parameters
    ----------
    tile : int
        Tile side in pixels (paper: 256).
    step : int
        Distance between tiles in pixels, ``1 <= step <= tile`` (paper: 64).
    blend : BlendMode or str
        How overlapping tile predictions are combined (paper: ``mean``).
    """

    tile: int = 256
    step: int = 64
    blend: BlendMode = BlendMode.MEAN

    def __post_init__(self) -> None:
        tile, step = _check_tile_step(self.tile, self.step)
        object.__setattr__(self, "tile", tile)
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "blend", _blend_mode(self.blend))

    def grid(self, extent: int | tuple[int, int]) -> TileGrid:
        """The global tile grid of a plane of ``extent`` (H, W) pixels."""
        return TileGrid(extent=extent, tile=(self.tile, self.tile), step=(self.step, self.step))


#: the paper's tiling, whose values are the defaults wherever tiles are asked for
_PAPER = Tiling()


# ---------------------------------------------------------------------------------------------
# the grid


def tile_starts(length: int, *, tile: int, step: int) -> np.ndarray:
    """Start positions of the tiles along one plane axis, anchored at 0.

    Parameters
    ----------
    length : int
        Size of the whole plane along the axis (pixels).
    tile : int
        Tile size along the axis (pixels).
    step : int
        Distance between consecutive tiles (pixels), ``1 <= step <= tile``.

    Returns
    -------
    (n,) int64
        ``0, step, 2·step, …`` and, when that lattice does not end exactly at the edge, one
        last tile aligned to it (start ``length - tile``). Strictly increasing; every pixel in
        ``[0, length)`` is covered. When ``length <= tile`` there is one tile at 0 (the plane is
        reflect-padded to the tile size by the inference functions).
    """
    _check_tile_step(tile, step)
    length = check_int(length, "length", 1)
    if length <= tile:
        return np.zeros(1, dtype=np.int64)
    last = length - tile
    starts = np.arange(0, last + 1, step, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, np.int64(last))
    return starts


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class TileGrid:
    """The global tile grid of one 2D plane.

    Parameters
    ----------
    extent : (H, W) or int
        Size of the whole plane (pixels). An int means a square plane.
    tile : (th, tw) or int
        Tile size (pixels); default 256×256 as in the paper.
    step : (sy, sx) or int
        Distance between tiles (pixels), ``1 <= step <= tile`` per axis; default 64 as in the
        paper.

    Notes
    -----
    Tiles are numbered in row-major order of their start positions ``(y0, x0)``; inference adds
    tiles into each pixel in this order. A tile covers ``[y0, y0 + th) × [x0, x0 + tw)`` of the
    plane, clipped to the plane when the plane is smaller than the tile (the rest is reflect
    padding). Regions are half-open ``(y0, y1, x0, x1)`` in plane pixels.
    """

    extent: tuple[int, int]
    tile: tuple[int, int] = (_PAPER.tile, _PAPER.tile)
    step: tuple[int, int] = (_PAPER.step, _PAPER.step)

    def __post_init__(self) -> None:
        extent = _pair("extent", self.extent, minimum=1)
        tile = _pair("tile", self.tile, minimum=1)
        step = _pair("step", self.step)
        for t, s in zip(tile, step, strict=True):
            _check_tile_step(t, s)
        object.__setattr__(self, "extent", extent)
        object.__setattr__(self, "tile", tile)
        object.__setattr__(self, "step", step)

    @functools.cached_property
    def ys(self) -> np.ndarray:
        """(ny,) int64: tile start rows."""
        return _readonly(tile_starts(self.extent[0], tile=self.tile[0], step=self.step[0]))

    @functools.cached_property
    def xs(self) -> np.ndarray:
        """(nx,) int64: tile start columns."""
        return _readonly(tile_starts(self.extent[1], tile=self.tile[1], step=self.step[1]))

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx): number of tile rows and columns."""
        return (len(self.ys), len(self.xs))

    @property
    def n_tiles(self) -> int:
        """Number of tiles covering the plane."""
        return len(self.ys) * len(self.xs)

    @property
    def padded_extent(self) -> tuple[int, int]:
        """(H', W'): the plane size after reflect padding to at least one tile."""
        return (max(self.extent[0], self.tile[0]), max(self.extent[1], self.tile[1]))

    def tiles(self) -> np.ndarray:
        """(n_tiles, 2) int64: all tile starts ``(y0, x0)`` in the global row-major order."""
        return _starts_product(self.ys, self.xs)

    def _region(self, region: Sequence[int] | None) -> Region:
        H, W = self.extent
        if region is None:
            return (0, H, 0, W)
        try:
            y0, y1, x0, x1 = (check_int(v, "region") for v in region)
        except (TypeError, ValueError) as e:
            raise InputError(
                f"region must be four integers (y0, y1, x0, x1), got {region!r}"
            ) from e
        if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
            raise InputError(
                f"region must be (y0, y1, x0, x1) with 0 <= y0 < y1 <= {H} and "
                f"0 <= x0 < x1 <= {W} (inside the {H}×{W} plane, not empty), got {region!r}"
            )
        return (y0, y1, x0, x1)

    def _touching(self, region: Region) -> tuple[slice, slice]:
        """Index ranges (rows, columns) of the tiles whose footprint meets ``region``."""
        y0, y1, x0, x1 = region
        # a tile [s, s + t) clipped to the plane meets [lo, hi) iff s < hi and s + t > lo
        # (the plane extends past lo because the region is inside it)
        rows = slice(
            int(np.searchsorted(self.ys + self.tile[0], y0, side="right")),
            int(np.searchsorted(self.ys, y1, side="left")),
        )
        cols = slice(
            int(np.searchsorted(self.xs + self.tile[1], x0, side="right")),
            int(np.searchsorted(self.xs, x1, side="left")),
        )
        return rows, cols

    def tiles_touching(self, region: Sequence[int] | None = None) -> np.ndarray:
        """Tiles that contribute to any pixel of ``region``.

        Parameters
        ----------
        region : (y0, y1, x0, x1), optional
            Half-open output region in plane pixels; default the whole plane.

        Returns
        -------
        (k, 2) int64
            Tile starts ``(y0, x0)`` in the global row-major order.
        """
        rows, cols = self._touching(self._region(region))
        return _starts_product(self.ys[rows], self.xs[cols])

    def read_region(self, region: Sequence[int] | None = None) -> Region:
        """The smallest region of the plane holding every tile that touches ``region``.

        This is what a block must read to compute the output ``region``.

        Parameters
        ----------
        region : (y0, y1, x0, x1), optional
            Half-open output region in plane pixels; default the whole plane.

        Returns
        -------
        (y0, y1, x0, x1)
            Half-open input region in plane pixels (tiles clipped to the plane).
        """
        rows, cols = self._touching(self._region(region))
        ys, xs = self.ys[rows], self.xs[cols]
        H, W = self.extent
        return (
            int(ys[0]),
            min(int(ys[-1]) + self.tile[0], H),
            int(xs[0]),
            min(int(xs[-1]) + self.tile[1], W),
        )


def _starts_product(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int64)


def count_tiles(
    shape: Sequence[int],
    *,
    tile: int | tuple[int, int] = _PAPER.tile,
    step: int | tuple[int, int] = _PAPER.step,
    axes: Sequence[int | str] | int | str = (0,),
) -> int:
    """Number of tile predictions needed to stain a 3D volume along the given axes.

    Parameters
    ----------
    shape : (Z, Y, X)
        Volume size (voxels).
    tile, step : int or (th, tw)
        Tile size and step (pixels), as for :class:`TileGrid`.
    axes : sequence of {0, 1, 2, "z", "y", "x"}, or a string such as ``"zx"``
        Axes along which the volume is sliced; each slice perpendicular to an axis is one plane
        whose (rows, columns) are the two remaining axes in (z, y, x) order.

    Returns
    -------
    int
        Sum over ``axes`` of (number of planes) × (tiles per plane).
    """
    if len(shape) != 3:
        raise InputError(f"shape must be a 3D (Z, Y, X) volume shape, got {tuple(shape)!r}")
    shape = tuple(check_int(s, "shape", 1) for s in shape)
    names = {"z": 0, "y": 1, "x": 2}
    if isinstance(axes, str):
        axes = tuple(axes)  # "zx" -> ("z", "x")
    elif isinstance(axes, int | np.integer):
        axes = (axes,)
    total = 0
    for axis in axes:
        a = names.get(axis, axis) if isinstance(axis, str) else axis
        if isinstance(a, str) or isinstance(a, bool) or a not in (0, 1, 2):
            raise InputError(f"axes must hold 0, 1, 2 or 'z', 'y', 'x', got {axis!r}")
        plane = tuple(s for i, s in enumerate(shape) if i != int(a))
        total += shape[int(a)] * TileGrid(extent=plane, tile=tile, step=step).n_tiles
    return total


# ---------------------------------------------------------------------------------------------
# blend weights


def _profile(t: int, mode: BlendMode) -> np.ndarray:
    # distance from the tile centre, exactly symmetric so the weights are too
    d = np.abs(np.arange(t, dtype=np.float64) - (t - 1) / 2)
    if mode is BlendMode.GAUSSIAN:
        sigma = _SIGMA_SCALE * t
        return np.exp(-0.5 * (d / sigma) ** 2)
    if mode is BlendMode.COSINE:
        # Hann window sampled at pixel centres: sin²(π (i + ½) / t), never exactly 0
        return np.cos(np.pi * d / t) ** 2
    return np.ones(t, dtype=np.float64)


@functools.lru_cache(maxsize=64)
def _weights(th: int, tw: int, mode: BlendMode) -> np.ndarray:
    w = np.outer(_profile(th, mode), _profile(tw, mode))
    w /= w.max()
    if mode is not BlendMode.MEAN:
        w = np.maximum(w, _MIN_WEIGHT)
    return _readonly(w.astype(np.float32))


def blend_weights(
    tile: int | tuple[int, int], *, mode: BlendMode | str = BlendMode.MEAN
) -> np.ndarray:
    """Per-pixel weight of a tile's prediction in the blend.

    Parameters
    ----------
    tile : int or (th, tw)
        Tile size (pixels).
    mode : BlendMode or str
        ``"mean"`` (all ones, the paper), ``"gaussian"`` (sigma = tile / 8 per axis, as MONAI's
        default ``sigma_scale=0.125``) or ``"cosine"`` (Hann window at pixel centres).

    Returns
    -------
    (th, tw) float32, read-only
        Strictly positive weights with maximum 1, symmetric under flips of either axis, largest
        at the centre; values below 1e-3 are raised to 1e-3. Computed once per (tile, mode) and
        cached.
    """
    th, tw = _pair("tile", tile, minimum=1)
    return _weights(th, tw, _blend_mode(mode))


# ---------------------------------------------------------------------------------------------
# inference


def _reflect_index(n: int, size: int) -> np.ndarray:
    """Indices ``0..size-1`` reflected into ``[0, n)`` (numpy's "reflect", for any size)."""
    i = np.arange(size)
    if n == 1:
        return np.zeros(size, dtype=np.int64)
    period = 2 * (n - 1)
    i = i % period
    return np.where(i < n, i, period - i).astype(np.int64)


def _padded_batch(batch_size: int, plane_tiles: int, n_planes: int) -> int:
    """The forward-pass size with ``pad_batch``: for planes of at least ``batch_size`` tiles,
    the size that splits a plane's tiles into the same number of passes as ``batch_size`` does,
    as evenly as possible (independent of the number of planes); for smaller planes the tiles of
    all planes, up to ``batch_size``."""
    if plane_tiles >= batch_size:
        passes = -(-plane_tiles // batch_size)
        return -(-plane_tiles // passes)
    return min(batch_size, n_planes * plane_tiles)


def _batches(n_positions: int, n_planes: int, batch_size: int) -> Iterator[list[tuple]]:
    """Split the (position, plane) work list, position-major, into batches of segments.

    Each segment ``(p, n0, n1, j0)`` is tile position ``p`` of planes ``n0:n1``, stored from
    row ``j0`` of the batch. Keeping all planes of one position together lets one tensor
    operation blend them all.
    """
    total = n_positions * n_planes
    for k0 in range(0, total, batch_size):
        k1 = min(k0 + batch_size, total)
        segments = []
        for p in range(k0 // n_planes, (k1 - 1) // n_planes + 1):
            n0 = max(k0 - p * n_planes, 0)
            n1 = min(k1 - p * n_planes, n_planes)
            segments.append((p, n0, n1, p * n_planes + n0 - k0))
        yield segments


def _as_planes(planes: Any, crop: tuple[slice, slice], device: Any) -> torch.Tensor:
    """The cropped planes as a float32 tensor on ``device``; copies only when it must."""
    import torch

    if isinstance(planes, torch.Tensor):
        return planes[..., crop[0], crop[1]].to(device=device, dtype=torch.float32)
    a = planes[..., crop[0], crop[1]]
    if a.dtype != np.float32 or not a.flags.writeable or min(a.strides) < 0:
        a = np.array(a, dtype=np.float32, order="C")
    return torch.from_numpy(a).to(device=device)


@dataclass(frozen=True)
class InferenceSettings:
    """How tiled inference runs: on which device, in which batches, at which precision. The
    keyword settings of :func:`predict_region` and :func:`predict_plane`.

    Parameters
    ----------
    batch_size : int
        Tiles per forward pass; tiles of all ``N`` planes are batched together and extracted
        batch by batch, so memory holds one batch of tiles, the input and the accumulators.
        With ``pad_batch`` every forward pass gets the same number of tiles, at most
        ``batch_size`` (see ``pad_batch``).
    device : str or torch.device, optional
        Where inference and blending run; default the device of ``planes`` (CPU for numpy).
    autocast : bool, optional
        bfloat16 autocast for the forward pass; default on for CUDA, off elsewhere.
    channels_last : bool, optional
        Pass batches in channels-last memory format (convert the model too for the speed-up);
        default on for CUDA.
    compile : bool or str
        Wrap ``predict`` with ``torch.compile`` (compiled once per callable and process);
        ``True`` uses the default backend (inductor), a string names another backend (for
        example ``"cudagraphs"``, or ``"eager"`` to check that the model can be captured).
    pad_batch : bool
        Pad the last batch (by repeating its last tile) so that every forward pass has the
        same shape, which depends on the grid and ``N`` but not on ``region``. Convolution
        backends choose kernels by shape, and a tile's output differs in the last bits between
        batch sizes (oneDNN on CPU, cuDNN), so this is what makes regions agree bit for bit
        with whole-plane inference; it also avoids recompiling with ``compile``. The batch
        shape is the one that splits a plane's tiles most evenly (25 tiles with
        ``batch_size=8``: 4 passes of 7, not 8, 8, 8 and a padded 1), so a call computes fewer
        extra tiles than it has passes. Planes with fewer tiles than ``batch_size`` keep
        ``min(batch_size, N * grid.n_tiles)``.
    """

    batch_size: int = 16
    device: str | torch.device | None = None
    autocast: bool | None = None
    channels_last: bool | None = None
    compile: bool | str = False
    pad_batch: bool = True

    def __post_init__(self) -> None:
        # ``compile`` is checked where the model is wrapped (:func:`_compiled_predict`)
        object.__setattr__(self, "batch_size", check_int(self.batch_size, "batch_size", 1))


# long for its docstring, the reference of tiled inference; the body is short, its steps are
# the helpers below
def predict_region(
    planes: np.ndarray | torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor],
    *,
    grid: TileGrid,
    region: Sequence[int] | None = None,
    origin: tuple[int, int] | None = None,
    blend: BlendMode | str = BlendMode.MEAN,
    out_channels: int | None = None,
    to_uint8: bool = False,
    **settings: Any,
) -> np.ndarray:
    """Blended tiled prediction for one region of a stack of planes.

    Parameters
    ----------
    planes : (N, C, h, w) float32, numpy or torch
        Network input (already normalized) of ``N`` planes that share ``grid``; the ``h × w``
        pixels start at plane pixel ``origin`` and must contain ``grid.read_region(region)``.
    predict : callable
        Maps a ``(B, C, th, tw)`` float32 tensor on ``device`` to ``(B, out_channels, th, tw)``
        (for example a generator in eval mode). Called inside ``torch.inference_mode()``.
    grid : TileGrid
        The grid of the whole plane.
    region : (y0, y1, x0, x1), optional
        Half-open output region in plane pixels; default the whole plane.
    origin : (y, x), optional
        Plane pixel of ``planes[..., 0, 0]``; default the top-left of
        ``grid.read_region(region)`` (``planes`` is exactly the read region).
    blend : BlendMode or str
        How overlapping tiles are combined (see :class:`BlendMode`).
    out_channels : int, optional
        Expected number of output channels; checked against the first forward pass.
    to_uint8 : bool
        Return the model card's 8-bit values, ``round((y + 1) · 127.5)`` clipped to 0..255,
        converted where the accumulators live (on the GPU for CUDA), so that a quarter of the
        bytes travel to the host and no host thread converts them. Bit for bit what
        converting the float32 result on the host gives.
    **settings
        ``batch_size`` (default 16), ``device``, ``autocast``, ``channels_last``, ``compile``
        and ``pad_batch`` (default on): how the inference runs, see
        :class:`InferenceSettings`.

    Returns
    -------
    (N, out_channels, y1 - y0, x1 - x0) float32 (uint8 with ``to_uint8``)
        The blended prediction for ``region``: at every pixel, the weighted mean of the
        predictions of all tiles covering it. With ``pad_batch``, bit for bit what whole-plane
        inference with the same ``batch_size`` and ``N`` gives for the same pixels, for any
        region and origin (as long as ``predict`` gives a tile the same output wherever it sits
        in a batch of a given size, as convolution networks in eval mode do).

    Notes
    -----
    Weighted predictions and weights are accumulated in float64, tile by tile in the grid's
    row-major order, then divided and cast to float32. Planes smaller than a tile (when the
    whole plane is) are reflect-padded at the bottom/right to the tile size.
    """
    import torch

    refuse_unknown_keywords("predict_region", settings, InferenceSettings)
    if not isinstance(planes, torch.Tensor):
        planes = np.asarray(planes)
    if not isinstance(grid, TileGrid):
        raise InputError(f"grid must be a TileGrid, got {type(grid).__name__}")
    mode = _blend_mode(blend)
    run = InferenceSettings(**settings)
    if out_channels is not None:
        out_channels = check_int(out_channels, "out_channels", 1)
    region = grid._region(region)
    read = grid.read_region(region)
    origin = _plane_origin(tuple(planes.shape), read, origin)
    forward = _Forward.of(predict, run, planes, grid)
    with torch.inference_mode():
        x = _input_tiles(planes, grid, read, origin, forward.device)
        sums = _BlendSums(grid, region, read, mode, x.shape[0], forward.device, out_channels)
        for segments in _batches(len(sums.boxes), x.shape[0], forward.batch_size):
            y, n = forward(_gather(x, segments, sums.boxes, grid.tile))
            sums.add(y, n, segments)
        return sums.result(to_uint8)


def _plane_origin(shape: tuple[int, ...], read: Region, origin: Any) -> tuple[int, int]:
    """The plane pixel of ``planes[..., 0, 0]``, checked to leave the read region inside
    ``planes`` of ``shape`` (N, C, h, w)."""
    if len(shape) != 4:
        raise InputError(f"planes must be (N, C, h, w), got shape {shape}")
    _, _, h, w = shape
    oy, ox = (read[0], read[2]) if origin is None else _pair("origin", origin)
    if not (oy <= read[0] and ox <= read[2] and oy + h >= read[1] and ox + w >= read[3]):
        raise InputError(
            f"planes must cover the read region {read} (y0, y1, x0, x1) of the plane; they "
            f"cover ({oy}, {oy + h}, {ox}, {ox + w}): read grid.read_region(region)"
        )
    return oy, ox


def _compiled_predict(predict: Callable, compile: Any) -> Callable:
    """``predict``, wrapped with ``torch.compile`` when ``compile`` asks for it."""
    if compile is True:
        return compiled(predict)
    if isinstance(compile, str) and compile:
        return compiled(predict, compile)
    if compile is False:
        return predict
    raise InputError(
        f"compile must be True, False or a torch.compile backend name, got {compile!r}"
    )


@dataclass(frozen=True)
class _Forward:
    """The forward passes of one call: the model (compiled or not) on ``device``, with one
    batch shape when ``pad``, in the memory format and precision the settings ask for."""

    fn: Callable
    device: torch.device
    batch_size: int
    pad: bool
    autocast: bool
    channels_last: bool

    @classmethod
    def of(cls, predict: Callable, run: InferenceSettings, planes: Any, grid: TileGrid) -> _Forward:
        """The settings resolved: the device (default that of ``planes``), autocast and
        channels-last (default on for CUDA), the compiled model, the padded batch size."""
        import torch

        device = run.device
        if device is None:
            device = planes.device if isinstance(planes, torch.Tensor) else "cpu"
        device = torch.device(device)
        autocast = on_for_cuda(run.autocast, device)
        channels_last = on_for_cuda(run.channels_last, device)
        fn = _compiled_predict(predict, run.compile)
        batch_size = run.batch_size
        if run.pad_batch:
            # a function of the grid (and N for small planes) only, so every region runs the
            # same batch shape
            batch_size = _padded_batch(batch_size, grid.n_tiles, planes.shape[0])
        return cls(fn, device, batch_size, run.pad_batch, autocast, channels_last)

    def __call__(self, batch: torch.Tensor) -> tuple[Any, int]:
        """(the model's output, the number of tiles it was given, padding included)."""
        import torch

        n_batch = batch.shape[0]
        if self.pad and n_batch < self.batch_size:
            # the copies' outputs are dropped
            filler = batch[-1:].expand(self.batch_size - n_batch, -1, -1, -1)
            batch = torch.cat([batch, filler])
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        batch = batch.contiguous(memory_format=memory_format)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.fn(batch), batch.shape[0]


def _input_tiles(
    planes: Any, grid: TileGrid, read: Region, origin: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """The read region of ``planes`` as float32 on ``device``, reflect-padded at its end to
    the tile size along an axis where the whole plane is smaller than a tile."""
    import torch

    oy, ox = origin
    x = _as_planes(
        planes, (slice(read[0] - oy, read[1] - oy), slice(read[2] - ox, read[3] - ox)), device
    )
    (H, W), (th, tw) = grid.extent, grid.tile
    if H < th:
        x = x.index_select(2, torch.from_numpy(_reflect_index(H, th)).to(device))
    if W < tw:
        x = x.index_select(3, torch.from_numpy(_reflect_index(W, tw)).to(device))
    return x


def _gather(x: torch.Tensor, segments: list[tuple], boxes: list[tuple], tile) -> torch.Tensor:
    """One batch of tiles: for each segment, the tiles at one position of a range of planes."""
    import torch

    th, tw = tile
    parts = []
    for p, n0, n1, _ in segments:
        py, px = boxes[p][:2]
        parts.append(x[n0:n1, :, py : py + th, px : px + tw])
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _region_boxes(
    grid: TileGrid, region: Region, read: Region, weights: np.ndarray
) -> tuple[list[tuple], np.ndarray]:
    """For each tile touching ``region``, in the grid's order: its top-left in the read input
    and the slices of the output and of the tile where they meet; and the (rh, rw) float64
    weight sums over the region, added in the same tile order as the predictions (so they are
    identical for every region)."""
    th, tw = grid.tile
    ry0, ry1, rx0, rx1 = region
    weights64 = weights.astype(np.float64)
    wsum = np.zeros((ry1 - ry0, rx1 - rx0), dtype=np.float64)
    boxes = []
    for ty, tx in grid.tiles_touching(region):
        ty, tx = int(ty), int(tx)
        a0, a1 = max(ty, ry0), min(ty + th, ry1)
        b0, b1 = max(tx, rx0), min(tx + tw, rx1)
        out_sl = (slice(a0 - ry0, a1 - ry0), slice(b0 - rx0, b1 - rx0))
        tile_sl = (slice(a0 - ty, a1 - ty), slice(b0 - tx, b1 - tx))
        wsum[out_sl] += weights64[tile_sl]
        boxes.append((ty - read[0], tx - read[2], out_sl, tile_sl))
    return boxes, wsum


class _BlendSums:
    """The float64 sums of one region's weighted tile predictions and of their weights, added
    tile by tile in the grid's row-major order.

    float64 is not available everywhere (Apple MPS): the sums live on the CPU there, else on
    ``device``.
    """

    def __init__(self, grid: TileGrid, region: Region, read: Region, mode: BlendMode,
                 n_planes: int, device: torch.device, out_channels: int | None) -> None:  # fmt: skip
        import torch

        weights = blend_weights(grid.tile, mode=mode)
        self.boxes, self.wsum = _region_boxes(grid, region, read, weights)
        self.device = device if device.type in ("cpu", "cuda") else torch.device("cpu")
        self.weights = None if mode is BlendMode.MEAN else torch.tensor(weights, device=self.device)
        self.shape = (n_planes, region[1] - region[0], region[3] - region[2])
        self.tile = grid.tile
        self.out_channels = out_channels
        self.acc: torch.Tensor | None = None

    def add(self, y: Any, n: int, segments: list[tuple]) -> None:
        """Add the output ``y`` of a forward pass of ``n`` tiles (checked) for ``segments``."""
        import torch

        if self.acc is None:
            _check_output(y, n, self.tile, self.out_channels)
            self.out_channels = y.shape[1]
            n_planes, rh, rw = self.shape
            self.acc = torch.zeros(
                (n_planes, self.out_channels, rh, rw), dtype=torch.float64, device=self.device
            )
        elif not isinstance(y, torch.Tensor) or y.shape != (n, self.out_channels, *self.tile):
            _check_output(y, n, self.tile, self.out_channels)
        y = y.to(self.device)
        for p, n0, n1, j0 in segments:
            out_sl, tile_sl = self.boxes[p][2:]
            dst = self.acc[n0:n1, :, out_sl[0], out_sl[1]]
            src = y[j0 : j0 + n1 - n0, :, tile_sl[0], tile_sl[1]]
            # computed in float64, where float32 × float32 products are exact, so each
            # pixel gets one rounding per tile whichever kernel (fused or not) runs
            if self.weights is None:
                dst.add_(src)
            else:
                dst.addcmul_(src, self.weights[tile_sl])

    def result(self, to_uint8: bool) -> np.ndarray:
        """The blend (sums divided by weights) as float32, or as 8-bit values with
        ``to_uint8``, on the host; the sums are released first."""
        import torch

        acc, self.acc = self.acc, None
        acc /= torch.from_numpy(self.wsum).to(self.device)
        y = acc.to(torch.float32)
        del acc
        if to_uint8:
            # on the device, in float32 with round-half-to-even, as the host would convert it
            y = output_to_uint8(y)
        return y.cpu().numpy()


def _check_output(y: Any, n: int, tile: tuple[int, int], out_channels: int | None) -> None:
    import torch

    shape = tuple(y.shape) if isinstance(y, torch.Tensor) else None
    ok = (
        shape is not None
        and len(shape) == 4
        and shape[0] == n
        and shape[2:] == tile
        and (out_channels is None or shape[1] == out_channels)
    )
    if not ok:
        c = "out_channels" if out_channels is None else str(out_channels)
        got = f"shape {shape}" if shape is not None else type(y).__name__
        raise InputError(
            f"predict must map a ({n}, C, {tile[0]}, {tile[1]}) tensor to a "
            f"({n}, {c}, {tile[0]}, {tile[1]}) tensor, got {got}"
        )


def predict_plane(
    plane: np.ndarray | torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor],
    *,
    tile: int | tuple[int, int] | None = None,
    step: int | tuple[int, int] | None = None,
    blend: BlendMode | str | None = None,
    tiling: Tiling | None = None,
    **settings: Any,
) -> np.ndarray:
    """Blended tiled prediction for whole planes.

    Parameters
    ----------
    plane : (C, H, W) or (N, C, H, W) float32, numpy or torch
        Network input, already normalized.
    predict : callable
        Maps ``(B, C, th, tw)`` to ``(B, out_channels, th, tw)``, as for
        :func:`predict_region`.
    tile, step : int or (th, tw), optional
        Tile size and step (pixels); default :class:`Tiling`'s (the paper's 256 and 64).
    blend : BlendMode or str, optional
        As for :func:`predict_region`; default :class:`Tiling`'s (``mean``).
    tiling : Tiling, optional
        Tile, step and blend as one object, instead of ``tile``, ``step`` and ``blend``.
    **settings
        ``batch_size``, ``device``, ``autocast``, ``channels_last``, ``compile``,
        ``pad_batch``: as for :func:`predict_region` (see :class:`InferenceSettings`).

    Returns
    -------
    (out_channels, H, W) or (N, out_channels, H, W) float32
        Same leading shape as ``plane``.
    """
    refuse_unknown_keywords("predict_plane", settings, InferenceSettings)
    ndim = len(plane.shape)
    if ndim not in (3, 4):
        raise InputError(f"plane must be (C, H, W) or (N, C, H, W), got shape {tuple(plane.shape)}")
    if tiling is None:
        tiling = _PAPER
    elif not isinstance(tiling, Tiling):
        raise InputError(f"tiling must be a Tiling, got {type(tiling).__name__}")
    elif (tile, step, blend) != (None, None, None):
        raise InputError("give tiling, or tile, step and blend, not both")
    tile = tiling.tile if tile is None else tile
    step = tiling.step if step is None else step
    blend = tiling.blend if blend is None else blend
    planes = plane[None] if ndim == 3 else plane
    grid = TileGrid(extent=tuple(planes.shape[-2:]), tile=tile, step=step)
    out = predict_region(planes, predict, grid=grid, blend=blend, **settings)
    return out[0] if ndim == 3 else out
