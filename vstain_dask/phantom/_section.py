"""A whole-slide-image-like histology section of a phantom volume, cut on any plane.

The section is what a microscope would image after cutting the phantom's specimen on an
oblique plane: toluidine-blue staining at a fine pixel size, mounted face down when asked
(mirrored), rotated on the slide, distorted by sectioning (compression along the cut and
shear), and with the usual section artefacts. The true map from section pixels to the CT's
physical coordinates, ``section_to_ct``, is written into the file, so a registration can be
scored against it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask._validate import check_int
from vstain_dask.errors import InputError, VolumeFormatError
from vstain_dask.phantom._anatomy import Frame, Points, Specimen, evaluate, specimen
from vstain_dask.phantom._histology import Artefacts, Session, Window, margin, render
from vstain_dask.phantom._noise import derive_key
from vstain_dask.phantom._volume import GENERATOR_VERSION

__all__ = ["SectionCut", "phantom_section", "read_section_truth", "write_phantom_section"]

#: axis names of the CT (z, y, x) and the in-plane (row, column) axes of an untilted cut
#: normal to each
_PLANE_AXES = {"z": (1, 2), "y": (0, 2), "x": (0, 1)}
_AXIS_INDEX = {"z": 0, "y": 1, "x": 2}
#: the largest section :func:`phantom_section` returns in memory (the writer streams any size)
MAX_SECTION_PIXELS = 6000 * 6000
#: the largest side, in pixels, :func:`write_phantom_section` writes (beyond any slide scanned)
MAX_SECTION_SIDE = 100_000
#: (rows, columns) of the blocks a section is rendered in: the specimen's evaluation takes
#: about 200 bytes a pixel, so a block needs about 200 MB whatever the section's size
BLOCK = (1024, 1024)
#: the key of the truth record in the OME-XML image description
TRUTH_KEY = "vstain_section_truth"


@dataclasses.dataclass(frozen=True)
class SectionCut:
    """Where and how a section is cut and mounted.

    Attributes
    ----------
    axis : ``"z"``, ``"y"`` or ``"x"``
        The CT axis the cut is (before tilting) normal to.
    depth : float or None
        Position of the cut along ``axis``, in the CT's physical unit (µm); None: the centre.
    tilt : (float, float)
        Rotations of the cutting plane, degrees, about its row and its column axis.
    rotate : float
        In-plane rotation of the section on the slide, degrees.
    flip : bool
        Mounted face down: the image is the mirror of the cut.
    shear : float
        Sectioning shear (0.01 = 1 %), rows moving along columns.
    compression : float
        Sectioning compression along the image rows (0.02 = 2 % shorter).
    fov : float
        Fraction (0–1] of the cut's extent along each in-plane axis that the section keeps.
    pixel_size : float
        Section pixel size, µm.
    seed : int
        Seeds the staining session, the artefacts and where a partial field of view lies.
    """

    axis: str = "y"
    depth: float | None = None
    tilt: tuple[float, float] = (0.0, 0.0)
    rotate: float = 0.0
    flip: bool = False
    shear: float = 0.0
    compression: float = 0.0
    fov: float = 1.0
    pixel_size: float = 0.88
    seed: int = 0

    def __post_init__(self) -> None:
        if self.axis not in _AXIS_INDEX:
            raise InputError(f"axis must be z, y or x, got {self.axis!r}")
        if not (math.isfinite(self.pixel_size) and self.pixel_size > 0):
            raise InputError(f"--pixel-size must be a positive number, got {self.pixel_size}")
        if not 0 < self.fov <= 1:
            raise InputError(f"--fov must be in (0, 1], got {self.fov}")
        for name, value, limit in (
            ("shear", self.shear, 0.2),
            ("compression", self.compression, 0.3),
        ):
            if not abs(value) <= limit:
                raise InputError(f"--{name} must be within ±{limit}, got {value}")
        if len(self.tilt) != 2 or not all(abs(t) <= 45 for t in self.tilt):
            raise InputError(f"--tilt takes two angles within ±45°, got {self.tilt}")
        check_int(self.seed, "seed", 0)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix about the unit vector ``axis`` by ``angle`` radians (Rodrigues)."""
    k = np.array(
        [[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=np.float64
    )
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def plane_basis(axis: str, tilt: tuple[float, float]) -> np.ndarray:
    """(3, 3) columns: row direction, column direction and normal of the tilted cut, (z, y, x)."""
    r, c = _PLANE_AXES[axis]
    u = np.eye(3)[r]
    v = np.eye(3)[c]
    n = np.eye(3)[_AXIS_INDEX[axis]]
    rot = _rotation(v, math.radians(tilt[1])) @ _rotation(u, math.radians(tilt[0]))
    return rot @ np.stack([u, v, n], axis=1)


def _slide_map(cut: SectionCut) -> np.ndarray:
    """(2, 2): centred section µm (row, col) → µm in the cutting plane (row, col)."""
    flip = np.diag([1.0, -1.0 if cut.flip else 1.0])
    g = math.radians(cut.rotate)
    rot = np.array([[math.cos(g), -math.sin(g)], [math.sin(g), math.cos(g)]])
    # the section = distortion of the cut: rows compressed, rows sheared along columns
    distort = np.array([[1.0 - cut.compression, 0.0], [cut.shear, 1.0]])
    # section coords = flip(rot(distort(plane))) → plane = distort⁻¹ rot⁻¹ flip⁻¹ section
    return np.linalg.inv(distort) @ rot.T @ flip


@dataclasses.dataclass(frozen=True)
class _Volume:
    """What the section needs of the phantom volume it is cut from."""

    shape: tuple[int, int, int]
    scale: np.ndarray  # µm per voxel (z, y, x)
    translation: np.ndarray  # µm of voxel 0
    attrs: dict

    @property
    def centre(self) -> np.ndarray:
        return self.translation + self.scale * (np.array(self.shape) - 1) / 2.0

    @property
    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """Physical bounds (low, high) of the voxel centres."""
        return self.translation, self.translation + self.scale * (np.array(self.shape) - 1)


def _open_phantom(path: str | os.PathLike) -> _Volume:
    from vstain_dask import ngff

    vol = ngff.open_volume(path)
    attrs = vol.attrs.get("vstain") or {}
    if attrs.get("generator") != "vstain_dask.phantom" or vol.ndim != 3:
        raise InputError(
            f"{path} is not a phantom volume written by `vstain-dask phantom` (a section can "
            "only be cut from a phantom, whose specimen is known everywhere)"
        )
    if attrs.get("generator_version") != GENERATOR_VERSION:
        raise VolumeFormatError(
            f"{path} was written by phantom generator {attrs.get('generator_version')}, this "
            f"version renders generator {GENERATOR_VERSION}: write the volume again"
        )
    dims = ("z", "y", "x")
    return _Volume(
        shape=tuple(int(s) for s in vol.shape),
        scale=np.array([vol.attrs["scale"][d] for d in dims], dtype=np.float64),
        translation=np.array([vol.attrs["translation"][d] for d in dims], dtype=np.float64),
        attrs=attrs,
    )


def _canvas(vol: _Volume, cut: SectionCut, basis: np.ndarray, a: np.ndarray):
    """Section size (H, W) and the plane point its centre shows: the cut's field of view
    (the volume's extent in the plane, times ``fov``, placed by the seed) on the slide."""
    lo, hi = vol.extent
    ext = hi - lo
    # extent of the volume's box projected on the plane's row and column directions
    span = np.abs(basis[:, :2].T) @ ext
    keep = span * cut.fov
    rng = np.random.default_rng([cut.seed, 11])
    offset = (span - keep) / 2.0 * rng.uniform(-1.0, 1.0, 2)
    corners = np.array([[sr, sc] for sr in (-0.5, 0.5) for sc in (-0.5, 0.5)]) * keep
    on_slide = np.linalg.solve(a, corners.T).T  # plane → section µm
    size = np.ceil((on_slide.max(axis=0) - on_slide.min(axis=0)) / cut.pixel_size).astype(int) + 1
    depth = vol.centre[_AXIS_INDEX[cut.axis]] if cut.depth is None else float(cut.depth)
    centre = vol.centre.copy()
    centre[_AXIS_INDEX[cut.axis]] = depth
    centre = centre + basis[:, :2] @ offset
    return (int(size[0]), int(size[1])), centre


def section_matrix(
    shape: tuple[int, int], centre: np.ndarray, basis: np.ndarray, a: np.ndarray, pixel_size: float
) -> np.ndarray:
    """4×4 row-major ``section_to_ct``: (row, col, 0, 1) of section pixels → (z, y, x, 1) µm."""
    h, w = shape
    lin = basis[:, :2] @ a * pixel_size  # (3, 2): µm per section pixel step
    m = np.eye(4)
    m[:3, :2] = lin
    m[:3, 2] = basis[:, 2]  # a unit step off the section goes along the normal
    m[:3, 3] = centre - lin @ np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    return m


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A section to render: its size, where its pixels lie in the CT, and what stains them."""

    vol: _Volume
    cut: SectionCut
    shape: tuple[int, int]
    matrix: np.ndarray  # section_to_ct
    frame: Frame
    specimen: Specimen
    session: Session
    artefacts: Artefacts
    key: int


def _plan(volume: str | os.PathLike, cut: SectionCut) -> _Plan:
    vol = _open_phantom(volume)
    basis = plane_basis(cut.axis, cut.tilt)
    a = _slide_map(cut)
    shape, centre = _canvas(vol, cut, basis, a)
    if max(shape) > MAX_SECTION_SIDE:
        raise InputError(
            f"a {shape[0]}×{shape[1]} section is over {MAX_SECTION_SIDE} pixels a side: give "
            "a coarser --pixel-size or a smaller --fov"
        )
    attrs = vol.attrs
    frame = Frame(tuple(attrs["shape"]), float(attrs["voxel_size"]))
    sp = specimen(int(attrs["seed"]), str(attrs["material"]), frame.vox)
    rng = np.random.default_rng([cut.seed, 5])
    key = derive_key(int(attrs["seed"]), cut.seed, 53)
    session = Session.draw(rng, derive_key(key, 1))
    art = Artefacts.draw(rng, derive_key(key, 2), shape)
    m = section_matrix(shape, centre, basis, a, cut.pixel_size)
    return _Plan(vol, cut, shape, m, frame, sp, session, art, key)


def _truth(plan: _Plan) -> dict[str, Any]:
    """The record written into the file: the true ``section_to_ct`` and how it was cut."""
    cut = plan.cut
    return {
        "section_to_ct": [[round(float(v), 9) for v in r] for r in plan.matrix],
        "axis": cut.axis,
        "tilt": list(cut.tilt),
        "rotate": cut.rotate,
        "flip": cut.flip,
        "shear": cut.shear,
        "compression": cut.compression,
        "fov": cut.fov,
        "pixel_size": cut.pixel_size,
        "seed": cut.seed,
        "volume": {"material": plan.vol.attrs.get("material"), "seed": plan.vol.attrs.get("seed")},
    }


def _blocks(rows: tuple[int, int], cols: tuple[int, int], block: tuple[int, int]):
    """(r0, r1, c0, c1) of the blocks of at most ``block`` pixels that cover rows × cols."""
    for r0 in range(rows[0], rows[1], block[0]):
        for c0 in range(cols[0], cols[1], block[1]):
            yield r0, min(rows[1], r0 + block[0]), c0, min(cols[1], c0 + block[1])


def _render_window(plan: _Plan, r0: int, r1: int, c0: int, c1: int):
    """RGB (uint8) and ``inside`` (bool) of the section's pixels [r0, r1) × [c0, c1), the
    same bytes as those pixels of a render of the whole section: the window is rendered with
    the blur's margin (within the section) and cropped."""
    h, w = plan.shape
    pad = margin(plan.session)
    er, ec = max(0, r0 - pad), max(0, c0 - pad)
    rows = np.arange(er, min(h, r1 + pad), dtype=np.float64).reshape(-1, 1, 1)
    cols = np.arange(ec, min(w, c1 + pad), dtype=np.float64).reshape(1, -1, 1)
    m = plan.matrix
    phys = m[:3, 0] * rows + m[:3, 1] * cols + m[:3, 3]  # (h', w', 3) µm
    rgb = _stain(plan, phys, Window(er, ec, plan.shape))
    crop = (slice(r0 - er, r1 - er), slice(c0 - ec, c1 - ec))
    rgb, phys = np.ascontiguousarray(rgb[crop]), phys[crop]
    lo, hi = plan.vol.extent
    half = plan.vol.scale / 2
    inside = np.all((phys >= lo - half) & (phys <= hi + half), axis=-1)
    rgb[~inside] = 255  # glass beyond the scanned block
    return rgb, inside


def _stain(plan: _Plan, phys: np.ndarray, window: Window) -> np.ndarray:
    """Toluidine-blue RGB of the specimen at physical points ``phys`` (h, w, 3), the pixels
    of ``window`` of the section."""
    vol, frame = plan.vol, plan.frame
    n = np.array(vol.shape, dtype=np.float64)
    design = ((phys - vol.translation) / vol.scale + 0.5 - n / 2.0) * frame.vox
    pts = Points(design[..., 0], design[..., 1], design[..., 2])
    sample = evaluate(plan.specimen, pts, attenuation=False, fields=True)
    return render(
        sample.labels,
        sample.fields,
        session=plan.session,
        artefacts=plan.artefacts,
        vox=plan.cut.pixel_size / frame.scale,  # one section pixel in design µm
        key=derive_key(plan.key, 3),
        window=window,
    )


def phantom_section(
    volume: str | os.PathLike, cut: SectionCut, *, block: tuple[int, int] = BLOCK
) -> dict[str, Any]:
    """Render a histology section of a phantom volume's specimen, in memory.

    Parameters
    ----------
    volume : a phantom OME-Zarr (``vstain-dask phantom``)
    cut : :class:`SectionCut`
    block : (rows, cols)
        Rendered this many pixels at a time; the pixels do not depend on it.

    Returns
    -------
    dict
        ``image`` (H, W, 3) uint8 RGB, ``section_to_ct`` (4, 4) float64, ``inside`` (H, W)
        bool (pixels whose point lies inside the CT's field of view), ``truth`` (the record
        written into the file).
    """
    plan = _plan(volume, cut)
    h, w = plan.shape
    if h * w > MAX_SECTION_PIXELS:
        raise InputError(
            f"a {h}×{w} section is larger than phantom_section returns in memory "
            f"({MAX_SECTION_PIXELS // 10**6} Mpx): write it with write_phantom_section "
            "(`vstain-dask phantom-section`), which streams it"
        )
    image = np.empty((h, w, 3), dtype=np.uint8)
    inside = np.empty((h, w), dtype=bool)
    for r0, r1, c0, c1 in _blocks((0, h), (0, w), block):
        image[r0:r1, c0:c1], inside[r0:r1, c0:c1] = _render_window(plan, r0, r1, c0, c1)
    return {"image": image, "section_to_ct": plan.matrix, "inside": inside, "truth": _truth(plan)}


def _level_shapes(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """(H, W) of level 0 and of each 2× sub-resolution down to one under 256 pixels a side."""
    shapes = [shape]
    while min(shapes[-1]) >= 256:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _halve(level: np.ndarray) -> np.ndarray:
    """The next pyramid level of (h, w, 3) uint8: means of 2×2 pixels rounded half to even,
    an odd last row or column averaged with zeros, i.e. exactly
    ``np.rint(skimage.transform.downscale_local_mean(level, (2, 2, 1)))``, in integers (no
    float64 copy of a strip)."""
    pad = ((0, level.shape[0] % 2), (0, level.shape[1] % 2), (0, 0))
    if any(p[1] for p in pad):
        level = np.pad(level, pad)
    s = level[0::2, 0::2].astype(np.uint16)
    s += level[1::2, 0::2]
    s += level[0::2, 1::2]
    s += level[1::2, 1::2]
    # s = 4q + r: r < 2 → q, r = 3 → q + 1, r = 2 → the even of q and q + 1
    return ((s + 1 + ((s >> 2) & 1)) >> 2).astype(np.uint8)


def _tiles(band: np.ndarray):
    """256×256 tiles of rows of pixels, row by row (edge tiles smaller: tifffile pads them)."""
    for r0 in range(0, band.shape[0], 256):
        for c0 in range(0, band.shape[1], 256):
            yield band[r0 : r0 + 256, c0 : c0 + 256]


def _strip_rows(block_rows: int, levels: int) -> int:
    """Rows of level 0 written at a time: the block's rows rounded up to a multiple of the
    256-pixel TIFF tiles and of 2**``levels`` (the sub-resolutions), so that every strip but
    the last halves exactly into the next level's strip."""
    unit = max(256, 2**levels)
    return -(-block_rows // unit) * unit


def _level0_tiles(plan: _Plan, scratch: list[Path], block: tuple[int, int]):
    """Level 0's tiles, rendered a strip of rows at a time; each strip's sub-resolutions are
    appended to the raw files ``scratch`` (levels 1, 2, …) before its tiles go out (the writer
    stops asking after the last tile)."""
    h, w = plan.shape
    rows = _strip_rows(block[0], len(scratch))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        level0 = np.empty((r1 - r0, w, 3), dtype=np.uint8)
        for a0, a1, c0, c1 in _blocks((r0, r1), (0, w), block):
            level0[a0 - r0 : a1 - r0, c0:c1] = _render_window(plan, a0, a1, c0, c1)[0]
        level = level0
        for path in scratch:
            level = _halve(level)
            with open(path, "ab") as f:
                level.tofile(f)
        yield from _tiles(level0)


def _scratch_tiles(path: Path, shape: tuple[int, int]):
    """The tiles of a level held in a raw (h, w, 3) uint8 file, read 256 rows at a time."""
    h, w = shape
    for r0 in range(0, h, 256):
        n = min(256, h - r0)
        band = np.fromfile(path, dtype=np.uint8, count=n * w * 3, offset=r0 * w * 3)
        yield from _tiles(band.reshape(n, w, 3))


def write_phantom_section(
    volume: str | os.PathLike,
    out: str | os.PathLike,
    cut: SectionCut,
    *,
    overwrite: bool = False,
    block: tuple[int, int] = BLOCK,
) -> dict[str, Any]:
    """Write a section (:func:`phantom_section`'s image) as a tiled, pyramidal OME-TIFF, the
    way slide scanners do, in bounded memory whatever its size.

    Level 0 is tiled 256×256 (zlib), with sub-resolutions (2× steps) as SubIFDs, the pixel size
    in the OME metadata (``PhysicalSizeX/Y``, µm) and in the TIFF resolution tags, and the truth
    record (:func:`read_section_truth`) as JSON in the OME image description. Level 0 is
    rendered in blocks of ``block`` pixels and written a strip of blocks at a time.
    A TIFF holds the sub-resolutions after level 0, so each strip's halvings go to raw
    scratch files beside ``out`` (a third of level 0's bytes in all), written into the TIFF
    from there band by band: nothing holds a whole level, and no pixel is rendered twice.

    Returns
    -------
    dict
        The truth record, with ``path`` and ``shape`` (H, W).
    """
    import tempfile

    import tifffile

    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists: give --overwrite to replace it")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent} is not a folder: create it first")
    plan = _plan(volume, cut)
    shapes = _level_shapes(plan.shape)
    truth = dict(_truth(plan), shape=list(plan.shape))
    meta = {
        "axes": "YXS",
        "PhysicalSizeX": cut.pixel_size,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": cut.pixel_size,
        "PhysicalSizeYUnit": "µm",
        "Description": json.dumps({TRUTH_KEY: truth}),
    }
    tmp = out.with_name(out.name + ".partial")
    opts = {"photometric": "rgb", "tile": (256, 256), "compression": "zlib", "dtype": np.uint8}
    res = [(1e4 / (cut.pixel_size * 2**k),) * 2 for k in range(len(shapes))]
    # all levels uncompressed: 4/3 of level 0's 3 bytes a pixel
    big = 4 * plan.shape[0] * plan.shape[1] > 2**31
    try:
        with (
            tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.levels-") as tdir,
            tifffile.TiffWriter(tmp, bigtiff=big, ome=True) as tif,
        ):
            scratch = [Path(tdir) / f"{k}.raw" for k in range(1, len(shapes))]
            tif.write(_level0_tiles(plan, scratch, block), shape=(*plan.shape, 3),
                      subifds=len(shapes) - 1, resolution=res[0], resolutionunit="CENTIMETER",
                      metadata=meta, **opts)  # fmt: skip
            for k, path in enumerate(scratch, start=1):
                tif.write(_scratch_tiles(path, shapes[k]), shape=(*shapes[k], 3), subfiletype=1,
                          resolution=res[k], resolutionunit="CENTIMETER", **opts)  # fmt: skip
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return dict(truth, path=str(out))


def read_section_truth(path: str | os.PathLike) -> dict[str, Any]:
    """The truth record :func:`write_phantom_section` wrote into an OME-TIFF."""
    import xml.etree.ElementTree as ET

    import tifffile

    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    if not xml:
        raise InputError(f"{path} has no OME metadata, so no section truth")
    for el in ET.fromstring(xml).iter():
        if el.tag.endswith("Description") and el.text and TRUTH_KEY in el.text:
            return json.loads(el.text)[TRUTH_KEY]
    raise InputError(f"{path} holds no section truth (not written by phantom-section)")
