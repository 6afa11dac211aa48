"""Whole-slide images: the pixel size a TIFF states, the file's own pyramid levels, and the
optional OpenSlide reader for vendor formats (MRXS, CZI, ...).

TIFF-based slides (pyramidal tiled TIFF/BigTIFF, OME-TIFF, Aperio SVS, Hamamatsu NDPI) are read
by tifffile in ``_sources.open_tiff``; this module holds what is particular to slides. Functions
that run inside tasks are module-level or picklable classes taking plain arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from vstain_dask.errors import VolumeFormatError
from vstain_dask.ngff._pixel_size import FoundSize, found, resolution_size, um_per

#: the extra that brings the OpenSlide reader and the JPEG/JPEG 2000 codecs tifffile uses
WSI_EXTRA = "pip install 'vstain-dask[wsi]'"
#: slide formats read through OpenSlide (the TIFF-based ones go through tifffile)
OPENSLIDE_SUFFIXES = (".mrxs", ".czi", ".scn", ".bif", ".svslide", ".vms", ".vmu")
#: slide formats neither reader handles, with what to do instead
UNSUPPORTED_SUFFIXES = {
    ".vsi": "Olympus VSI",
    ".nd2": "Nikon ND2",
    ".lif": "Leica LIF",
}


# --------------------------------------------------------------------------------------------
# pixel sizes stated in TIFF files


def _ome_pixel_size(tif, index: int) -> FoundSize | None:
    import tifffile

    try:
        meta = tifffile.xml2dict(tif.ome_metadata)["OME"]
    except Exception:  # malformed OME-XML: read the file, but not its size
        return None
    images = meta.get("Image", [])
    images = images if isinstance(images, list) else [images]
    if index >= len(images):
        return None
    pixels = images[index].get("Pixels", {})
    sizes = {}
    for axis in "zyx":
        value = pixels.get(f"PhysicalSize{axis.upper()}")
        # OME's default unit is the micrometre; "pixel" and "reference frame" have no length
        factor = um_per(pixels.get(f"PhysicalSize{axis.upper()}Unit", "µm"))
        if value is not None and factor is not None:
            sizes[axis] = float(value) * factor
    return found(sizes, "the OME metadata")


def _svs_pixel_size(page) -> FoundSize | None:
    from tifffile import tifffile as tf

    try:
        mpp = tf.svs_description_metadata(page.description).get("MPP")
    except ValueError:
        return None
    return found({"y": mpp, "x": mpp}, "the Aperio MPP") if mpp is not None else None


def _rational(tag) -> float | None:
    if tag is None:
        return None
    value = tag.value
    if isinstance(value, tuple):
        num, den = value[:2]
        return num / den if den else None
    return float(value)


def _imagej_pixel_size(tif, page) -> FoundSize | None:
    meta = tif.imagej_metadata or {}
    factor = um_per(meta.get("unit", "")) if meta.get("unit") else None
    if factor is None:
        return None
    # ImageJ stores pixels per unit with ResolutionUnit NONE, and the slice spacing apart
    y = resolution_size(_rational(page.tags.get("YResolution")) or math.nan, factor)
    x = resolution_size(_rational(page.tags.get("XResolution")) or math.nan, factor)
    spacing = meta.get("spacing")
    sizes = {"y": y, "x": x}
    if spacing is not None:
        sizes["z"] = float(spacing) * factor
    return found(sizes, "the ImageJ metadata")


def _tag_pixel_size(tif, page) -> FoundSize | None:
    unit = page.tags.get("ResolutionUnit")
    unit = int(unit.value) if unit is not None else 2  # the TIFF default is the inch
    if unit not in (2, 3):  # 1: no absolute unit
        return None
    unit_um, name = (25_400.0, "inch") if unit == 2 else (10_000.0, "centimeter")
    y = resolution_size(_rational(page.tags.get("YResolution")) or math.nan, unit_um)
    x = resolution_size(_rational(page.tags.get("XResolution")) or math.nan, unit_um)
    where = "the NDPI resolution tags" if tif.is_ndpi else "the TIFF resolution tags"
    return found({"y": y, "x": x}, f"{where} (pixels per {name})")


def tiff_pixel_size(tif, series) -> FoundSize | None:
    """The pixel size (µm) a TIFF states for ``series``, from the most specific metadata.

    OME ``PhysicalSize*`` (with units), Aperio ``MPP``, ImageJ unit and spacing, then the
    resolution tags in pixels per inch or centimetre (which NDPI files use). Placeholder
    resolutions (1 pixel per unit, 72 or 96 pixels per inch) count as no size.
    """
    page = series.keyframe
    if tif.is_ome:
        size = _ome_pixel_size(tif, 0)  # the first series is the one imported
        if size is not None:
            return size
    if tif.is_svs:
        size = _svs_pixel_size(tif.pages.first)
        if size is not None:
            return size
    if tif.is_imagej:
        size = _imagej_pixel_size(tif, page)
        if size is not None:
            return size
    return _tag_pixel_size(tif, page)


# --------------------------------------------------------------------------------------------
# the file's own pyramid


def halving_levels(shapes: list[tuple[int, ...]]) -> int:
    """How many levels after the first are exact 2x steps of it: level k must measure
    ``ceil(n / 2**k)`` along every spatial axis, as the pyramid this package writes does."""
    count = 0
    base = shapes[0]
    for k, shape in enumerate(shapes[1:], start=1):
        if tuple(shape) != tuple(math.ceil(n / 2**k) for n in base):
            break
        count += 1
    return count


# --------------------------------------------------------------------------------------------
# OpenSlide


def import_openslide(path: Path):
    try:
        import openslide
    except ImportError as e:
        raise VolumeFormatError(
            f"{path.name} is a {path.suffix} slide, read through the optional OpenSlide "
            f"reader, which is not installed: {WSI_EXTRA}"
        ) from e
    return openslide


def refuse_unsupported(path: Path) -> None:
    """Refuse slide formats no reader here handles, saying what to convert them to."""
    name = UNSUPPORTED_SUFFIXES.get(path.suffix.lower())
    if name is not None:
        raise VolumeFormatError(
            f"{path.name} is an {name} file, which vstain-dask does not read; convert it to "
            "OME-TIFF (e.g. with Bio-Formats' bfconvert -pyramid-resolutions 4, or QuPath's "
            "OME-TIFF export) and import that"
        )


class _SlideRegions:
    """Array-like ``(y, x, 3)`` view of one OpenSlide level, opened afresh in every task."""

    def __init__(self, path: str, level: int, downsample: int, shape: tuple[int, int]) -> None:
        self.path, self.level, self.downsample = path, level, downsample
        self.shape = (*shape, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, index):
        ys, xs, cs = (index + (slice(None),) * 3)[:3]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        return _read_slide_region(self.path, self.level, self.downsample, y0, y1, x0, x1)[..., cs]


def _read_slide_region(
    path: str, level: int, downsample: int, y0: int, y1: int, x0: int, x1: int
) -> np.ndarray:
    """Rows ``y0:y1``, columns ``x0:x1`` of one level as RGB, transparency over white."""
    import openslide

    if y1 <= y0 or x1 <= x0:
        return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)
    try:
        with openslide.OpenSlide(path) as slide:
            rgba = np.asarray(
                slide.read_region((x0 * downsample, y0 * downsample), level, (x1 - x0, y1 - y0))
            )
    except openslide.OpenSlideError as e:
        raise VolumeFormatError(
            f"{path}: OpenSlide cannot read rows {y0}:{y1}, columns {x0}:{x1} of level {level} "
            f"({e}); the file is damaged"
        ) from e
    # read_region gives un-premultiplied RGBA; areas the scanner skipped are transparent, and
    # a slide's background is white
    alpha = rgba[..., 3:4].astype(np.uint16)
    if np.all(alpha == 255):
        return np.ascontiguousarray(rgba[..., :3])
    rgb = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
    return rgb.astype(np.uint8)


def open_openslide(path: Path, *, chunks_of: Callable) -> dict[str, Any]:
    """A slide read by OpenSlide: level 0 and its exact 2x levels as lazy ``(y, x, 3)`` arrays,
    chunked by ``chunks_of((height, width))``.

    Returns
    -------
    dict with ``levels`` (dask arrays, level 0 first), ``pixel_size`` (:class:`FoundSize` or
    None) and ``description``.
    """
    openslide = import_openslide(path)
    try:
        with openslide.OpenSlide(str(path)) as slide:
            dims = [(int(h), int(w)) for w, h in slide.level_dimensions]
            downsamples = [float(d) for d in slide.level_downsamples]
            props = dict(slide.properties)
            vendor = props.get("openslide.vendor", "unknown vendor")
    except openslide.OpenSlideError as e:  # also the unsupported-format subclass
        raise VolumeFormatError(f"{path} is not a slide OpenSlide can read ({e})") from e
    chunks_of(dims[0])  # refuse bad chunks before building anything
    # decode a pixel now, so that a damaged file is refused before anything is written
    _read_slide_region(str(path), 0, 1, 0, 1, 0, 1)
    n_reused = halving_levels(dims)
    token = dask.base.tokenize(str(path), path.stat().st_mtime_ns)
    levels = []
    for k in range(n_reused + 1):
        # OpenSlide places a region of level k at location / downsample, with the downsample
        # level 0's size over level k's (1.997 for 601 over 301), and resamples fractional
        # positions: only an exact 2**k reads the stored pixels
        if downsamples[k] != 2**k:
            break
        levels.append(
            da.from_array(
                _SlideRegions(str(path), k, 2**k, dims[k]),
                chunks=(*chunks_of(dims[k]), 3),
                name=f"openslide-{token}-{k}",
                meta=np.empty((0, 0, 0), np.uint8),
            )
        )
    try:
        mpp = {a: float(props[f"openslide.mpp-{a}"]) for a in "yx"}
    except (KeyError, ValueError):
        mpp = {}
    return {
        "levels": levels,
        "pixel_size": found(mpp, f"the {vendor} slide properties (OpenSlide)"),
        "description": f"{vendor} slide {path.name} via OpenSlide ({len(dims)} levels)",
    }
