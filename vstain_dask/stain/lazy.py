"""The lazy stain, :func:`stain`: a dask-backed xarray whose blocks are stained when computed.

Made for looking at parts of a stain (computing a region computes only the blocks under it);
it fuses several axes in 3D blocks only, and writes neither mask nor uncertainty, which the
job (:func:`vstain_dask.stain.run.run_stain`) does.

An OME-Zarr volume's voxel size is compared with the model's pixel size as the job does
(:func:`vstain_dask.stain.job.check_pixel_size`): within 10 % it is stained as it is; beyond,
by ``config.resample``: ``"auto"`` (the default) stains it resampled lazily to the model's
pixel size in every axis, as the job does (:func:`vstain_dask.stain.job.stained_grid`: area
averaging where finer, linear interpolation where coarser; the result has that grid's
coordinates and ``scale``, and the line that says so is logged at INFO), ``"check"`` refuses
in one line, ``"off"`` stains it at its own size with a warning. A model that records no
pixel size gives a warning, and nothing is guessed.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from vstain_dask.errors import InputError
from vstain_dask.stain.block import _stain_on_worker
from vstain_dask.stain.job import _check_ct, _model_ref, stained_grid
from vstain_dask.stain.params import Fusion, StainConfig
from vstain_dask.stain.plan import Block, plan_blocks

logger = logging.getLogger(__name__)


def _block_from_array(raw, block: Block, vol_shape, model_path, model_sha, config):
    rgb, _ = _stain_on_worker(
        np.asarray(raw), block, vol_shape=vol_shape, model_path=model_path,
        model_sha=model_sha, config=config,
    )  # fmt: skip
    return rgb


def stain(volume, model, *, config: StainConfig | None = None, chunks=None, **options):
    """Lazily stain a CT volume.

    Parameters
    ----------
    volume : xarray.DataArray or dask/numpy array, (Z, Y, X) or (Y, X)
        Raw CT values. The voxel size of a volume opened by :func:`vstain_dask.ngff.open_volume`
        is checked against the model's pixel size as ``vstain-dask stain`` does (module
        docstring); other arrays carry none and are stained as given.
    model : path
        A vstain-dask checkpoint (loaded on each worker, once per process).
    config : StainConfig, optional
        Or pass its fields as keyword options (``axes="zyx"``, ``resample="off"``, ...); given
        as options, ``fusion`` defaults to ``"blocks"``, the only fusion this function does.
    chunks : (int, int, int), optional
        Output chunks (z, y, x); default: the input's (a resampled volume: (64, 256, 256)).

    Returns
    -------
    xarray.DataArray
        (c, z, y, x) uint8 RGB(A) (or (c, y, x) for a slice), dask-backed, nothing computed yet;
        ``attrs["pixel_size"]``: the comparison, for an OME-Zarr volume.

    Raises
    ------
    InputError
        For several ``axes`` with ``fusion="passes"`` (passes go through 8-bit intermediates
        on disk), for ``mask`` or ``uncertainty``, which :func:`run_stain`
        (``vstain-dask stain``) writes, and for a size mismatch with ``resample="check"``.

    Notes
    -----
    Made for looking at parts of a stain: computing a region computes only the blocks under
    it. With several ``axes`` the blocks are cubes of about 256 voxels that fuse in floating
    point with halos (``fusion="blocks"``). Each cube recomputes the tiles it shares with its
    neighbours, about 8.8× the tiles of one axis for a 1536³ volume at step 64.
    :func:`run_stain` fuses one pass per axis through 8-bit intermediates on disk, 3× the
    tiles of one axis, so stain whole volumes with it (or ``vstain-dask stain``).
    """
    import dask.array as da
    import xarray as xr

    config = _lazy_config(config, options)
    _check_ct(volume)
    data, coords, attrs = _at_model_size(volume, model, config, chunks)
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=chunks or "auto")
    two_d = data.ndim == 2
    if two_d:
        data = data[None]
    chunks = tuple(chunks) if chunks is not None else tuple(int(c[0]) for c in data.chunks)
    if two_d and len(chunks) == 2:
        chunks = (1, *chunks)
    out = _stained(data, chunks, model, config)
    if two_d:
        out = out[:, 0]
    channels = list("RGBA"[: config.out_channels])
    dims = ("c", "y", "x") if two_d else ("c", "z", "y", "x")
    coords = {"c": channels, **coords}
    return xr.DataArray(out, dims=dims, coords=coords, attrs=attrs, name="stained")


def _unwrap(volume) -> tuple:
    """(data, coordinates, scale and units) of an xarray DataArray; a plain array has none."""
    import xarray as xr

    if isinstance(volume, xr.DataArray):
        coords = {d: volume.coords[d] for d in volume.dims if d in volume.coords}
        attrs = {k: volume.attrs[k] for k in ("scale", "units") if k in volume.attrs}
        return volume.data, coords, attrs
    return volume, {}, {}


def _at_model_size(volume, model, config: StainConfig, chunks) -> tuple:
    """(data, coordinates, attributes) of the volume to stain: an OME-Zarr volume compared
    with the model's pixel size (:func:`vstain_dask.stain.job.check_pixel_size`: refused,
    warned about, or resampled lazily to the model's grid); any other array as it is."""
    import xarray as xr

    data, coords, attrs = _unwrap(volume)
    if not (isinstance(volume, xr.DataArray) and volume.attrs.get("ngff_version")):
        return data, coords, attrs
    grid = stained_grid(volume, model=model, config=config, chunks=chunks)
    compared = dict(grid.pixel_size)
    if compared.pop("warning", None):
        warnings.warn(grid.pixel_size["warning"], UserWarning, stacklevel=3)
    attrs = {**attrs, "pixel_size": compared}
    resampled = grid.resampled
    if resampled is None:
        return data, coords, attrs
    logger.info(compared.pop("note"))
    spatial = resampled.spatial
    coords = {
        d: (d, np.arange(n) * spatial["scale"][d] + spatial["translation"][d],
            volume.coords[d].attrs if d in volume.coords else {})
        for d, n in zip(resampled.axes, resampled.data.shape, strict=True)
    }  # fmt: skip
    attrs["scale"] = {**(attrs.get("scale") or {}), **spatial["scale"]}
    return resampled.data, coords, attrs


def _lazy_config(config: StainConfig | None, options: dict) -> StainConfig:
    """The stain's parameters (``config``, or built from ``options`` with block fusion),
    refused where they ask for what the lazy stain does not do."""
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
    return config


def _stained(data, chunks: tuple[int, int, int], model, config: StainConfig):
    """The (c, z, y, x) uint8 stain of the (z, y, x) dask array ``data``: one delayed task per
    block, each reading the block with its halo."""
    import dask
    import dask.array as da

    shape = tuple(int(s) for s in data.shape)
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
    return da.block(_nest(arrays))


def _block_shape(blocks: list[Block]) -> tuple[int, int, int]:
    return blocks[0].shape


def _nest(arrays: np.ndarray) -> list:
    """Nested lists of (c, z, y, x) blocks for da.block: channel axis first, then z, y, x."""
    return [
        [[list(arrays[i, j, :]) for j in range(arrays.shape[1])] for i in range(arrays.shape[0])]
    ]
