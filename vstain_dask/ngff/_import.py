"""Import of TIFF stacks, whole-slide images, raw files, npy and images into OME-Zarr."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from vstain_dask._validate import keyword_bundles
from vstain_dask.errors import InputError, VolumeFormatError, as_enum
from vstain_dask.ngff import _dicom, _hdf5, _sources, _wsi
from vstain_dask.ngff._common import (
    _RGB_NAMES,
    DEFAULT_CHUNK_2D,
    DEFAULT_CHUNK_3D,
    MissingScaleWarning,
    NgffVersion,
    VolumeKind,
    _is_zarr_dir,
)
from vstain_dask.ngff._create import (
    _build_spec,
    _create,
    _parse_unit,
    _VolumeOptions,
    _VolumeSpec,
    check_output,
)
from vstain_dask.ngff._pixel_size import (
    IMPORT_OPTIONS,
    FoundSize,
    SizeOptionNames,
    found,
    resolve_voxel_size,
    um_per,
)
from vstain_dask.ngff._pyramid import _align, _pyramid_graph
from vstain_dask.ngff._read import open_volume, update_provenance
from vstain_dask.ngff._resample import resample_to_size
from vstain_dask.ngff._write import _same_or_inside, _write_window


def _zarr_pixel_size(attrs: dict) -> FoundSize | None:
    """The scale an OME-Zarr source states, in µm (None for a plain zarr array)."""
    if attrs.get("ngff_version") is None:
        return None
    sizes = {}
    for axis, value in attrs["scale"].items():
        factor = um_per(attrs["units"].get(axis) or "")
        if axis != "c" and factor is not None:
            sizes[axis] = value * factor
    return found(sizes, "the OME-Zarr scale")


def _open_source(
    src: Path, *, shape: Any, dtype: Any, chunks: Any, dataset: str | None = None
) -> tuple[_sources.OpenedSource, bool]:
    """Open ``src`` lazily; returns the source and whether it was read as a raw file."""
    opts = {"chunks": chunks, "default3": DEFAULT_CHUNK_3D, "default2": DEFAULT_CHUNK_2D}
    is_hdf5 = src.is_file() and src.suffix.lower() in _hdf5.HDF5_SUFFIXES
    if dataset is not None and not is_hdf5:
        raise InputError(
            f"--dataset (dataset=) names a dataset inside an HDF5 file, but {src.name} is not one "
            f"({', '.join(_hdf5.HDF5_SUFFIXES)}); drop it"
        )
    if is_hdf5:
        return _sources.open_hdf5(src, dataset=dataset, **opts), False
    if src.is_dir():
        if _is_zarr_dir(src):
            with warnings.catch_warnings():
                # a plain array states no voxel size: the import options must give it
                warnings.simplefilter("ignore", MissingScaleWarning)
                vol = open_volume(src)
            data = vol.data
            spatial = [d for d in vol.dims if d != "c"]
            cz = _sources._clip_chunks(
                tuple(data.shape[vol.dims.index(d)] for d in spatial),
                chunks,
                DEFAULT_CHUNK_3D,
                DEFAULT_CHUNK_2D,
            )
            it = iter(cz)
            full = tuple(data.shape[0] if d == "c" else next(it) for d in vol.dims)
            return (
                _sources.OpenedSource(
                    data=_align(data, full),
                    axes="".join(vol.dims),
                    description=f"zarr {src.name}",
                    spatial_chunks=cz,
                    pixel_size=_zarr_pixel_size(vol.attrs),
                ),
                False,
            )
        if _dicom.dicom_files(src):
            return _sources.open_dicom(src, **opts), False
        return _sources.open_tiff_folder(src, **opts), False
    suffix = src.suffix.lower()
    if suffix in _wsi.OPENSLIDE_SUFFIXES or suffix in _wsi.UNSUPPORTED_SUFFIXES:
        return _sources.open_slide(src, chunks=chunks, default2=DEFAULT_CHUNK_2D), False
    if suffix in _sources.TIFF_SUFFIXES:
        return _sources.open_tiff(src, **opts), False
    if suffix in _sources.NPY_SUFFIXES:
        return _sources.open_npy(src, **opts), False
    if suffix in _sources.IMAGE_SUFFIXES:
        return _sources.open_image(src, **opts), False
    return _sources.open_raw(src, shape=shape, dtype=dtype, **opts), True


@dataclass(frozen=True)
class _ReadOptions:
    """How :func:`import_volume` reads its source: an HDF5 ``dataset``, what a raw file holds
    (``shape``, ``dtype``; checked against other sources), and the output ``chunks``."""

    dataset: str | None = None
    shape: Sequence[int] | None = None
    dtype: Any = None
    chunks: Sequence[int] | None = None


@dataclass(frozen=True)
class _SizeOptions:
    """The voxel size :func:`import_volume` is given (``voxel_size`` in ``unit``, used over the
    file's with ``voxel_size_override``), the one it resamples to (``voxel_size_out``), and
    how its refusals name these options (``size_option_names``)."""

    voxel_size: float | Sequence[float] | None = None
    unit: str = "micrometer"
    voxel_size_override: bool = False
    voxel_size_out: float | Sequence[float] | None = None
    size_option_names: SizeOptionNames = IMPORT_OPTIONS


@dataclass(frozen=True)
class _Grid:
    """The imported image on its output grid: the voxel size resolved, resampled if asked."""

    data: da.Array
    #: voxel size per spatial axis, in the import's unit
    voxel: tuple[float, ...]
    #: where the voxel size came from (the file, the options)
    voxel_source: str
    #: physical position of voxel 0 (resampled only; else None, 0)
    translation: list[float] | None
    #: the file's own 2x levels, copied into the pyramid (none when resampled)
    reused: tuple[da.Array, ...]
    #: the resampling record (None when not resampled)
    resampled: dict | None


# Over 80 lines for its docstring (every source and option a user meets, in one place); the
# body is a dozen calls, one per step.
def import_volume(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    ngff_version: NgffVersion | str = "0.5",
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Convert a CT volume, a whole-slide image or a 2D image to OME-Zarr, lazily and in
    bounded memory.

    Sources, by what ``source`` is:

    - a folder of 2D TIFF slices, stacked in natural order (``slice2`` before ``slice10``);
      all slices must have one shape and dtype;
    - a folder holding one DICOM series (``pydicom``, the ``dicom`` extra): slices ordered by
      ``ImagePositionPatient`` along the slice normal, evenly spaced, rescale slope and
      intercept applied; voxel size from ``PixelSpacing`` and the slice positions;
    - an HDF5 file (``.h5``, ``.hdf5``, ``.nxs``, ...; ``h5py``, the ``hdf5`` extra): the
      ``dataset`` given, or its only 3D dataset; voxel size from DXchange's
      ``/measurement/instrument/detector/actual_pixel_size_x`` (and ``_y``) where present;
    - a TIFF file (also ``.svs``, ``.ndpi``, ``.btf``): a multi-page 3D stack, a 2D image, a
      2D RGB image, or a whole-slide image (pyramidal tiled TIFF/BigTIFF, OME-TIFF with
      SubIFD levels, Aperio SVS, Hamamatsu NDPI), read tile by tile; the file's own levels
      that are exact 2x steps are copied into the pyramid, the others computed;
    - a vendor slide (``.mrxs``, ``.czi``, ``.scn``, ``.bif``, ...) through OpenSlide, which
      the ``wsi`` extra installs;
    - a ``.npy`` file (2D or 3D);
    - a PNG/JPEG/... 2D image (read whole; RGB becomes ``(c, y, x)`` kind rgb);
    - a zarr store (OME-Zarr or a plain array);
    - any other file: raw C-ordered binary of ``shape`` and ``dtype``.

    Colour uint8 sources become ``(c, y, x)`` images of kind rgb. Uncompressed data are read
    in bands of whole chunks with plain reads, compressed and tiled TIFFs region by region, so
    a 1.5k³ uint16 stack or a 20k² slide converts with a few chunks per worker in memory. The
    output is marked complete only once every level is written.

    The voxel size is the one the file states (OME ``PhysicalSize*``, Aperio ``MPP``, ImageJ
    unit and spacing, TIFF resolution tags in pixels per inch or cm, an OME-Zarr scale, the
    ``openslide.mpp-*`` properties, a PNG's ``pHYs`` chunk, a JPEG's JFIF density or EXIF
    resolution) unless ``voxel_size`` is given; a given size more than
    1 % from the file's is refused unless ``voxel_size_override``.

    Parameters
    ----------
    source : input path
    out : output OME-Zarr store
    voxel_size : voxel size in ``unit`` (e.g. µm); one number, or one per spatial axis
        (Z, Y, X) or (Y, X); None to take it from the file
    unit : NGFF space unit of ``voxel_size`` and of the output (``micrometer``; ``um``,
        ``mm``, ``nm`` accepted)
    voxel_size_override : use ``voxel_size`` even where the file states another size
    voxel_size_out : resample to this voxel size in ``unit`` (one number, or one per spatial
        axis; none finer than the input's) by exact area averaging, output block by output
        block; the output's scale is this size exactly and its ``floor(n * voxel_size /
        voxel_size_out)`` pixels per axis each average a whole output pixel's area of the
        input. The file's own pyramid levels are then not used. None keeps the input's size
    size_option_names : how a refusal about the voxel size names the options that give it
        (a :class:`~vstain_dask.ngff._pixel_size.SizeOptionNames`); the ``import`` command's
        (``--voxel-size``, ``--voxel-size-override``) by default, another command's when it
        imports a file under options of its own
    dataset : the dataset of an HDF5 source (``/exchange/data``); None picks the only 3D one
    shape : (Z, Y, X) or (Y, X) of a raw file; for other sources, checked if given
    dtype : element type of a raw file, e.g. ``uint16`` or ``>u2``; for other sources,
        checked if given
    chunks : output chunks along the spatial axes; None for 128³ (3D) or 1024² (2D)
    ngff_version : ``"0.5"`` (zarr v3) or ``"0.4"`` (zarr v2)
    overwrite : replace an existing zarr store at ``out``

    Returns
    -------
    pathlib.Path
        ``out``. Its ``vstain.import`` attributes record the source, its format, the voxel
        size and where it came from (``voxel_size_source``), the levels copied from the
        file (``levels_from_file``), and for a resampled import ``resampled`` (input and output
        sizes, factors, translation, method).
    """
    read, sizes = keyword_bundles("import_volume", options, _ReadOptions, _SizeOptions)
    src = Path(source).expanduser()
    out_path = check_output(out, overwrite=overwrite)
    version = as_enum(NgffVersion, ngff_version, "ngff_version")
    sizes = dataclasses.replace(sizes, unit=_parse_unit(sizes.unit))
    _check_paths(src, out_path)
    opened, is_raw = _open_source(
        src, shape=read.shape, dtype=read.dtype, chunks=read.chunks, dataset=read.dataset
    )
    if not is_raw:
        _check_given(src, opened, read)
    grid = _output_grid(src, opened, sizes)
    spec = _import_spec(out_path, opened, grid, sizes.unit, version)
    reused = grid.reused[: spec.n_levels - 1]
    record = _import_record(src, opened, grid, sizes.unit, len(reused))
    # incomplete until the last level is written: a failed or interrupted import leaves a
    # store that every reader refuses, instead of one that passes for an image of zeros
    spec = dataclasses.replace(spec, attrs={"import": record, "complete": False})
    _write_import(out_path, spec, [grid.data, *reused], overwrite)
    return out_path


def _check_paths(src: Path, out_path: Path) -> None:
    if not src.exists():
        raise VolumeFormatError(
            f"input {src} does not exist; give a folder of TIFF slices, a TIFF stack, a "
            "whole-slide image, a .npy, an image or a raw file"
        )
    if _same_or_inside(src, out_path):
        raise InputError(f"output {out_path} overlaps the input {src}; write to another path")


def _check_given(src: Path, opened: _sources.OpenedSource, read: _ReadOptions) -> None:
    """A ``shape`` or ``dtype`` given for a source that is not a raw file must be its own."""
    shape, dtype, data = read.shape, read.dtype, opened.data
    spatial_shape = tuple(s for s, a in zip(data.shape, opened.axes, strict=True) if a != "c")
    if shape is not None and tuple(int(s) for s in shape) != spatial_shape:
        raise InputError(
            f"shape {tuple(shape)} was given but {src} holds {spatial_shape}; drop --shape or fix it"
        )
    if dtype is not None:
        try:
            want = np.dtype(dtype)
        except TypeError as e:
            raise InputError(f"dtype must be a numeric type such as uint16, got {dtype!r}") from e
        if want.newbyteorder("=") != data.dtype:
            raise InputError(
                f"dtype {want} was given but {src} holds {data.dtype}; --dtype is only needed "
                "for raw files: drop it"
            )


def _output_grid(src: Path, opened: _sources.OpenedSource, sizes: _SizeOptions) -> _Grid:
    """The voxel size given or stated by the file (checked against each other), and the data
    resampled to ``voxel_size_out`` if one is given."""
    voxel, voxel_source = resolve_voxel_size(
        sizes.voxel_size,
        unit=sizes.unit,
        file_size=opened.pixel_size,
        axes=opened.axes.replace("c", ""),
        src=src,
        override=sizes.voxel_size_override,
        options=sizes.size_option_names,
    )
    if sizes.voxel_size_out is None:
        return _Grid(opened.data, voxel, voxel_source, None, opened.levels, None)
    data, resampled = resample_to_size(
        opened.data,
        axes=opened.axes,
        voxel_size=voxel,
        target=sizes.voxel_size_out,
        unit=sizes.unit,
        chunks=opened.spatial_chunks,
    )
    to = tuple(resampled["to"])
    return _Grid(data, to, voxel_source, resampled["translation"], (), resampled)


def _import_spec(
    out_path: Path, opened: _sources.OpenedSource, grid: _Grid, unit: str, version: NgffVersion
) -> _VolumeSpec:
    """The output's spec: uint8 sources of 3 or 4 channels are rgb, all else intensity."""
    data = grid.data
    n_spatial = len(opened.axes.replace("c", ""))
    spatial_chunks = tuple(
        min(c, s) for c, s in zip(opened.spatial_chunks, data.shape[-n_spatial:], strict=True)
    )
    n_channels = data.shape[0] if opened.axes.startswith("c") else 0
    rgb = n_channels in (3, 4) and data.dtype == np.uint8
    options = _VolumeOptions(
        axes=opened.axes,
        scale=grid.voxel,
        units=unit,
        translation=grid.translation,
        ngff_version=version,
        kind=VolumeKind.RGB if rgb else VolumeKind.INTENSITY,
        channel_names=_RGB_NAMES[:n_channels] if n_channels in (3, 4) else None,
    )
    return _build_spec(
        out_path, shape=data.shape, dtype=data.dtype, chunks=spatial_chunks, options=options
    )


def _import_record(
    src: Path, opened: _sources.OpenedSource, grid: _Grid, unit: str, n_reused: int
) -> dict[str, Any]:
    """What the output's ``vstain.import`` attributes record (see :func:`import_volume`)."""
    from vstain_dask import __version__

    record = {
        "source": str(src.resolve()),
        "format": opened.description,
        "voxel_size": list(grid.voxel),
        "unit": unit,
        "voxel_size_source": grid.voxel_source,
        "levels_from_file": list(range(1, n_reused + 1)),
        "software": f"vstain-dask {__version__}",
    }
    record.update(opened.record)
    if grid.resampled is not None:
        record["resampled"] = grid.resampled
    return record


def _write_import(path: Path, spec, given: Sequence[da.Array], overwrite: bool) -> None:
    """Create the store, write the ``given`` levels (level 0 and the file's own 2x levels),
    compute the remaining levels from the last given one, then mark the store complete."""
    targets = _create(path, spec, overwrite)
    sources = [
        _align(level.astype(spec.dtype, copy=False), spec.level_chunks(k))
        for k, level in enumerate(given)
    ]
    # every block covers whole chunks that no other block touches, so no lock is needed
    da.store(sources, targets[: len(sources)], lock=False)
    if len(targets) > len(sources):
        _pyramid_graph(targets[len(sources) - 1 :], spec.factors, "mean").compute()
    if spec.kind is VolumeKind.INTENSITY:  # a CT opens in viewers with a useful window
        _write_window(path, spec)
    update_provenance(path, complete=True)
