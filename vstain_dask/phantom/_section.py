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
from vstain_dask.phantom._anatomy import Frame, Points, evaluate, specimen
from vstain_dask.phantom._histology import Artefacts, Session, render
from vstain_dask.phantom._noise import derive_key
from vstain_dask.phantom._volume import GENERATOR_VERSION

__all__ = ["SectionCut", "phantom_section", "read_section_truth", "write_phantom_section"]

#: axis names of the CT (z, y, x) and the in-plane (row, column) axes of an untilted cut
#: normal to each
_PLANE_AXES = {"z": (1, 2), "y": (0, 2), "x": (0, 1)}
_AXIS_INDEX = {"z": 0, "y": 1, "x": 2}
#: the largest section rendered in one piece (it is held in memory while rendered)
MAX_SECTION_PIXELS = 6000 * 6000
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


def phantom_section(volume: str | os.PathLike, cut: SectionCut) -> dict[str, Any]:
    """Render a histology section of a phantom volume's specimen.

    Parameters
    ----------
    volume : a phantom OME-Zarr (``vstain-dask phantom``)
    cut : :class:`SectionCut`

    Returns
    -------
    dict
        ``image`` (H, W, 3) uint8 RGB, ``section_to_ct`` (4, 4) float64, ``inside`` (H, W)
        bool (pixels whose point lies inside the CT's field of view), ``truth`` (the record
        written into the file).
    """
    vol = _open_phantom(volume)
    basis = plane_basis(cut.axis, cut.tilt)
    a = _slide_map(cut)
    shape, centre = _canvas(vol, cut, basis, a)
    if shape[0] * shape[1] > MAX_SECTION_PIXELS:
        raise InputError(
            f"a {shape[0]}×{shape[1]} section is larger than this renderer holds in memory "
            f"({MAX_SECTION_PIXELS // 10**6} Mpx): give a coarser --pixel-size or a smaller --fov"
        )
    m = section_matrix(shape, centre, basis, a, cut.pixel_size)
    rows = np.arange(shape[0], dtype=np.float64).reshape(-1, 1, 1)
    cols = np.arange(shape[1], dtype=np.float64).reshape(1, -1, 1)
    phys = m[:3, 0] * rows + m[:3, 1] * cols + m[:3, 3]  # (H, W, 3) µm
    lo, hi = vol.extent
    inside = np.all((phys >= lo - vol.scale / 2) & (phys <= hi + vol.scale / 2), axis=-1)
    image = _render(vol, cut, phys, shape)
    image[~inside] = 255  # glass beyond the scanned block
    truth = {
        "section_to_ct": [[round(float(v), 9) for v in r] for r in m],
        "axis": cut.axis,
        "tilt": list(cut.tilt),
        "rotate": cut.rotate,
        "flip": cut.flip,
        "shear": cut.shear,
        "compression": cut.compression,
        "fov": cut.fov,
        "pixel_size": cut.pixel_size,
        "seed": cut.seed,
        "volume": {"material": vol.attrs.get("material"), "seed": vol.attrs.get("seed")},
    }
    return {"image": image, "section_to_ct": m, "inside": inside, "truth": truth}


def _render(vol: _Volume, cut: SectionCut, phys: np.ndarray, shape) -> np.ndarray:
    """Toluidine-blue RGB of the specimen at physical points ``phys`` (H, W, 3)."""
    attrs = vol.attrs
    frame = Frame(tuple(attrs["shape"]), float(attrs["voxel_size"]))
    sp = specimen(int(attrs["seed"]), str(attrs["material"]), frame.vox)
    n = np.array(vol.shape, dtype=np.float64)
    design = ((phys - vol.translation) / vol.scale + 0.5 - n / 2.0) * frame.vox
    pts = Points(design[..., 0], design[..., 1], design[..., 2])
    sample = evaluate(sp, pts, attenuation=False, fields=True)
    rng = np.random.default_rng([cut.seed, 5])
    key = derive_key(int(attrs["seed"]), cut.seed, 53)
    session = Session.draw(rng, derive_key(key, 1))
    art = Artefacts.draw(rng, derive_key(key, 2), shape)
    vox = cut.pixel_size / frame.scale  # one section pixel in design µm
    return render(
        sample.labels,
        sample.fields,
        session=session,
        artefacts=art,
        vox=vox,
        key=derive_key(key, 3),
    )


def write_phantom_section(
    volume: str | os.PathLike, out: str | os.PathLike, cut: SectionCut, *, overwrite: bool = False
) -> dict[str, Any]:
    """Write :func:`phantom_section` as a tiled, pyramidal OME-TIFF, the way slide scanners do.

    Level 0 is tiled 256×256 (zlib), with sub-resolutions (2× steps) as SubIFDs, the pixel size
    in the OME metadata (``PhysicalSizeX/Y``, µm) and in the TIFF resolution tags, and the truth
    record (:func:`read_section_truth`) as JSON in the OME image description.

    Returns
    -------
    dict
        The truth record, with ``path`` and ``shape`` (H, W).
    """
    import tifffile
    from skimage.transform import downscale_local_mean

    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists: give --overwrite to replace it")
    result = phantom_section(volume, cut)
    image = result["image"]
    levels = [image]
    while min(levels[-1].shape[:2]) >= 256:
        levels.append(np.rint(downscale_local_mean(levels[-1], (2, 2, 1))).astype(np.uint8))
    truth = dict(result["truth"], shape=list(image.shape[:2]))
    ps = cut.pixel_size
    meta = {
        "axes": "YXS",
        "PhysicalSizeX": ps,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": ps,
        "PhysicalSizeYUnit": "µm",
        "Description": json.dumps({TRUTH_KEY: truth}),
    }
    tmp = out.with_name(out.name + ".partial")
    opts = {"photometric": "rgb", "tile": (256, 256), "compression": "zlib"}
    with tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31, ome=True) as tif:
        res = (1e4 / ps, 1e4 / ps)
        tif.write(image, subifds=len(levels) - 1, resolution=res, resolutionunit="CENTIMETER",
                  metadata=meta, **opts)  # fmt: skip
        for k, level in enumerate(levels[1:], start=1):
            r = (1e4 / (ps * 2**k), 1e4 / (ps * 2**k))
            tif.write(level, subfiletype=1, resolution=r, resolutionunit="CENTIMETER", **opts)
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
