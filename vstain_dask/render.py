"""3D volume renderings of a stain: front-to-back alpha compositing along a view direction.

The paper shows its 3D result as a volume rendering of the RGBA stain, alpha being the inverted
mean of R, G and B (255 − mean RGB): white, unstained space is transparent and dark stain is
opaque. This module renders such a view in bounded memory, as a shear-warp projection: the
volume is cut into slabs of whole planes across the axis closest to the view direction; inside a
slab every plane is shifted (bilinear, in 2D) onto a common base plane and composited front to
back into a partial image; partial images are combined front to back in slab order (the "over"
operator is associative), and the result is warped once, in 2D, onto the screen and laid over a
white background, like a slide. A task holds one slab and one partial image, never the volume.

Opacity is per unit of physical depth: a layer of thickness ``L`` whose stain has alpha ``a``
transmits ``(1 − a) ** (opacity * L)``, so the look does not depend on the pyramid level.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask._validate import check_float, check_int_fields, int_field
from vstain_dask.errors import InputError, OutputExistsError, VolumeFormatError

__all__ = ["RenderConfig", "RenderResult", "render_volume", "render", "save_render"]

#: bytes of a slab of whole planes one task holds (uint8 voxels, all channels)
_SLAB_BYTES = 32 * 2**20
_WHITE = 255.0


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """How to render a stain.

    Parameters
    ----------
    azimuth : float
        Degrees about the vertical (y) axis; 0 looks along +z, 90 along +x.
    elevation : float
        Degrees above the horizontal: positive looks down onto the volume from above (−y).
    opacity : float, optional
        Opacity per unit of physical depth (per µm for a volume in µm): a layer of thickness
        ``L`` transmits ``(1 − alpha) ** (opacity * L)``. Default: one stain alpha per voxel of
        the full-resolution level (``1 / voxel size``), whichever level is rendered.
    level : int, optional
        Pyramid level to render; default the finest whose clipped box has at most
        ``max_size`` voxels along its longest axis.
    max_size : int
        The size budget that chooses the level when ``level`` is not given.
    clip : ((z0, z1), (y0, y1), (x0, x1)), optional
        The sub-box to render, in voxels of level 0 (end exclusive; an end of ``None`` is the
        volume's).
    """

    azimuth: float = 0.0
    elevation: float = 0.0
    opacity: float | None = None
    level: int | None = int_field(None, 0)
    max_size: int = int_field(512, 1)
    clip: tuple[tuple[int, int | None], ...] | None = None

    def __post_init__(self) -> None:
        for name in ("azimuth", "elevation"):
            object.__setattr__(self, name, check_float(getattr(self, name), name, unit="degrees"))
        if self.opacity is not None:
            opacity = check_float(self.opacity, "opacity", positive=True, unit="per unit of depth")
            object.__setattr__(self, "opacity", opacity)
        check_int_fields(self)
        if self.clip is not None:
            if len(self.clip) != 3 or any(len(r) != 2 for r in self.clip):
                raise InputError(
                    f"clip must be ((z0, z1), (y0, y1), (x0, x1)) in level-0 voxels, "
                    f"got {self.clip!r}"
                )
            for ax, (lo, hi) in zip("zyx", self.clip, strict=True):
                if not 0 <= lo < (lo + 1 if hi is None else hi):
                    raise InputError(
                        f"clip along {ax} must be a range 0 <= start < end, got {lo}:{hi}"
                    )


@dataclasses.dataclass(frozen=True)
class RenderResult:
    """What :func:`save_render` wrote and from what."""

    path: Path
    level: int
    shape: tuple[int, int, int]  # (z, y, x) voxels rendered, at ``level``
    voxel_size: tuple[float, float, float]  # (z, y, x) of ``level``
    unit: str | None
    opacity: float
    image_size: tuple[int, int]  # (height, width) pixels
    frames: int


def parse_clip(text: str) -> tuple[tuple[int, int | None], ...]:
    """``"Z0:Z1,Y0:Y1,X0:X1"`` as ``((z0, z1), (y0, y1), (x0, x1))``; an empty start is 0 and
    an empty end ``None``, the volume's own (``:``, ``10:``, ``:64``)."""
    parts = str(text).split(",")
    if len(parts) != 3 or any(p.count(":") != 1 for p in parts):
        raise InputError(f"clip must be Z0:Z1,Y0:Y1,X0:X1 in level-0 voxels, got {text!r}")
    out = []
    for p in parts:
        lo, hi = (s.strip() for s in p.split(":"))
        try:
            out.append((int(lo) if lo else 0, int(hi) if hi else None))
        except ValueError:
            raise InputError(
                f"clip must be Z0:Z1,Y0:Y1,X0:X1 with integers, got {text!r}"
            ) from None
    return tuple(out)  # type: ignore[return-value]


# ---------------------------------------------------------------- geometry


def _view_frame(azimuth: float, elevation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (view direction, image down, image right) in (z, y, x) physical space.

    A proper rotation of (z, y, x): azimuth turns about y (a turntable), elevation then tilts
    the view down from above; at 0, 0 the image is the (y, x) plane seen along +z.
    """
    az, el = math.radians(azimuth), math.radians(elevation)
    d0 = np.array([math.cos(az), 0.0, math.sin(az)])
    right = np.array([-math.sin(az), 0.0, math.cos(az)])
    yv = np.array([0.0, 1.0, 0.0])
    d = math.cos(el) * d0 + math.sin(el) * yv
    down = -math.sin(el) * d0 + math.cos(el) * yv
    # exact zeros for exact angles, so 90° is the axis-aligned view, not a 1e-17 shear
    return tuple(np.where(np.abs(v) < 1e-12, 0.0, v) for v in (d, down, right))  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """A shear-warp view of a (k, a, b) volume: slices along k shift onto the base plane k = 0."""

    order: tuple[int, int, int]  # original spatial axes (of z, y, x) that become k, a, b
    flip: bool  # whether k is reversed so that slice 0 is the front
    shape: tuple[int, int, int]  # (nk, na, nb)
    shear: tuple[float, float]  # base-plane shift per slice along a and b, voxels
    base0: tuple[int, int]  # base-plane coordinate of canvas pixel 0 along a and b
    canvas: tuple[int, int]  # intermediate image size
    step: float  # physical distance along the ray between slices
    warp: np.ndarray  # 2x2: output pixel -> canvas pixel
    warp_offset: np.ndarray  # 2
    image: tuple[int, int]  # output size (rows, columns)

    def slice_offset(self, i: int) -> np.ndarray:
        """Canvas position (a, b) of voxel (0, 0) of slice ``i``."""
        return -i * np.asarray(self.shear) - np.asarray(self.base0)


def _geometry(
    shape: Sequence[int], scale: Sequence[float], azimuth: float, elevation: float
) -> _Geometry:
    s = np.asarray(scale, dtype=float)
    n = np.asarray(shape, dtype=int)
    d, down, right = _view_frame(azimuth, elevation)
    didx = d / s
    k = int(np.argmax(np.abs(didx)))
    a, b = (j for j in range(3) if j != k)
    order = (k, a, b)
    flip = bool(didx[k] < 0)
    sign = np.array([-1.0 if flip else 1.0, 1.0, 1.0])
    d_, down_, right_ = (v[list(order)] * sign for v in (d, down, right))
    s_, n_ = s[list(order)], n[list(order)]
    di = d_ / s_
    shear = (di[1] / di[0], di[2] / di[0])
    step = float(s_[0] / d_[0])
    nk = int(n_[0])
    base0 = []
    canvas = []
    for j, sh in enumerate(shear):
        lo = math.floor(min(0.0, -(nk - 1) * sh)) - 1
        hi = max(0.0, -(nk - 1) * sh)
        base0.append(lo)
        canvas.append(math.floor(hi - lo) + int(n_[j + 1]) + 2)
    # screen (v, u) of a base-plane point (A, B) at k = 0: a linear map
    m = np.array(
        [[down_[1] * s_[1], down_[2] * s_[2]], [right_[1] * s_[1], right_[2] * s_[2]]], dtype=float
    )
    corners = (
        np.array(
            [[i, j, q] for i in (0, nk - 1) for j in (0, n_[1] - 1) for q in (0, n_[2] - 1)],
            dtype=float,
        )
        * s_
    )
    v, u = corners @ down_, corners @ right_
    h = float(s.min())
    image = (
        int(math.floor((v.max() - v.min()) / h + 1e-6)) + 1,
        int(math.floor((u.max() - u.min()) / h + 1e-6)) + 1,
    )
    minv = np.linalg.inv(m)
    warp = minv * h
    warp_offset = minv @ np.array([v.min(), u.min()]) - np.array(base0, dtype=float)
    return _Geometry(
        order=order,
        flip=flip,
        shape=(nk, int(n_[1]), int(n_[2])),
        shear=(float(shear[0]), float(shear[1])),
        base0=(int(base0[0]), int(base0[1])),
        canvas=(int(canvas[0]), int(canvas[1])),
        step=step,
        warp=warp,
        warp_offset=warp_offset,
        image=image,
    )


# ---------------------------------------------------------------- compositing


def _alpha_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """The paper's alpha, rint(255 − mean(R, G, B)), for (3, ...) uint8; the same bytes a stain
    written with ``--alpha`` stores (a third of an integer sum never ends in .5)."""
    s = rgb.astype(np.uint16).sum(axis=0)
    return (255 - (s + 1) // 3).astype(np.uint8)


def _alpha_lut(opacity: float, step: float) -> np.ndarray:
    """Opacity of one ray step for each stain alpha 0..255: ``1 − (1 − a) ** (opacity·step)``."""
    a = np.arange(256, dtype=np.float64) / 255.0
    with np.errstate(divide="ignore"):
        return (1.0 - np.power(1.0 - a, opacity * step)).astype(np.float32)


def _lerp(q: np.ndarray, f: float, axis: int) -> np.ndarray:
    """``(1 − f) · q[i + 1] + f · q[i]`` along ``axis``: one element shorter."""
    ends = [(slice(None),) * axis + (s,) for s in (slice(1, None), slice(None, -1))]
    out = np.multiply(q[ends[0]], np.float32(1 - f))
    out += q[ends[1]] * np.float32(f)
    return out


def _shift_plane(pad: np.ndarray, fa: float, fb: float) -> np.ndarray:
    """A plane (ch, na, nb) given inside a border of zeros (ch, na + 2, nb + 2), resampled at
    (A − fa, B − fb) for A in 0..na, B in 0..nb: a bilinear shift by fractions in [0, 1), zero
    (transparent) outside."""
    q = _lerp(pad, fa, 1) if fa else pad[:, 1:]
    return _lerp(q, fb, 2) if fb else q[:, :, 1:]


def _slab_partial(
    block: np.ndarray, *, geom: _Geometry, lut: np.ndarray, block_info=None
) -> np.ndarray:
    """Composite a slab (C, k, a, b) uint8 front to back onto the canvas.

    Returns (4, 1, HA, HB) float32: premultiplied R, G, B (0..255) and the transmittance.
    """
    i0 = block_info[0]["array-location"][1][0] if block_info else 0
    ha, hb = geom.canvas
    colour = np.zeros((3, ha, hb), dtype=np.float32)
    trans = np.ones((ha, hb), dtype=np.float32)
    # the premultiplied plane, inside a border of zeros that bilinear shifts read
    pad = np.zeros((4, block.shape[2] + 2, block.shape[3] + 2), dtype=np.float32)
    p = pad[:, 1:-1, 1:-1]
    for j in range(block.shape[1]):
        plane = block[:, j]
        a8 = plane[3] if plane.shape[0] == 4 else _alpha_from_rgb(plane[:3])
        np.take(lut, a8, out=p[3])
        np.multiply(plane[:3], p[3], out=p[:3], dtype=np.float32)
        off = geom.slice_offset(i0 + j)
        fa_i, fb_i = (math.floor(o) for o in off)
        # python floats: a numpy float64 scalar would make the float32 planes float64
        fa, fb = float(off[0] - fa_i), float(off[1] - fb_i)
        # a whole-voxel shift (every axis-aligned view) needs no resampling
        q = _shift_plane(pad, fa, fb) if fa or fb else p
        win = (slice(fa_i, fa_i + q.shape[1]), slice(fb_i, fb_i + q.shape[2]))
        t = trans[win]
        colour[(slice(None), *win)] += t * q[:3]
        t *= 1 - q[3]
    return np.concatenate([colour, trans[None]])[:, None]


def _as_is(parts: np.ndarray, axis: Any = None, keepdims: bool = True) -> np.ndarray:  # noqa: ARG001
    return parts


def _over(parts: np.ndarray, axis: Any = None, keepdims: bool = True) -> np.ndarray:  # noqa: ARG001
    """Fold partial images (4, m, HA, HB), front first, with the "over" operator."""
    colour, trans = parts[:3, 0].copy(), parts[3, 0].copy()
    for j in range(1, parts.shape[1]):
        colour += trans * parts[:3, j]
        trans *= parts[3, j]
    return np.concatenate([colour, trans[None]])[:, None]


def _over_aggregate(parts: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    out = _over(parts)
    return out if keepdims else out[:, 0]


def _to_screen(canvas: np.ndarray, *, geom: _Geometry) -> np.ndarray:
    """Warp the composited canvas (4, HA, HB) onto the screen over white: (H, W, 3) uint8."""
    from scipy import ndimage

    def warp(img: np.ndarray, cval: float) -> np.ndarray:
        return ndimage.affine_transform(
            img, geom.warp, offset=geom.warp_offset, output_shape=geom.image, order=1,
            mode="constant", cval=cval,
        )  # fmt: skip

    trans = warp(canvas[3], 1.0)
    out = np.empty((*geom.image, 3), dtype=np.uint8)
    for c in range(3):
        out[..., c] = np.clip(np.rint(warp(canvas[c], 0.0) + trans * _WHITE), 0, 255)
    return out


def render_volume(
    volume,
    *,
    scale: Sequence[float] = (1.0, 1.0, 1.0),
    azimuth: float = 0.0,
    elevation: float = 0.0,
    opacity: float | None = None,
):
    """A volume rendering of an RGB(A) stain: front-to-back compositing over white.

    Parameters
    ----------
    volume : (C, Z, Y, X) uint8 dask or numpy array, C = 3 (RGB) or 4 (RGBA)
        The stain. Without an alpha channel, alpha is ``255 − mean(R, G, B)`` as in the paper.
    scale : (z, y, x) voxel size, physical units (µm)
    azimuth, elevation : float
        The view, degrees (see :class:`RenderConfig`).
    opacity : float, optional
        Opacity per unit of physical depth; default ``1 / min(scale)``, one stain alpha per
        voxel.

    Returns
    -------
    dask.array.Array
        (H, W, 3) uint8 RGB image, lazy. Pixels are ``min(scale)`` apart; at 0, 0 rows are y
        and columns x. Each task holds one slab of whole planes and one partial image.
    """
    volume, opacity = _checked_volume(volume, scale, opacity)
    geom = _geometry(volume.shape[1:], scale, azimuth, elevation)
    x = volume.transpose(0, *(1 + j for j in geom.order))
    if geom.flip:
        x = x[:, ::-1]
    nk, na, nb = geom.shape
    thick = int(max(1, min(nk, _SLAB_BYTES // max(1, x.shape[0] * na * nb))))
    x = x.rechunk({0: -1, 1: thick, 2: -1, 3: -1})
    canvas = _composite(x, geom, _alpha_lut(float(opacity), geom.step))
    h, w = geom.image
    return canvas.map_blocks(
        _to_screen,
        geom=geom,
        chunks=((h,), (w,), (3,)),
        dtype=np.uint8,
        meta=np.empty((0, 0, 0), dtype=np.uint8),
    )


def _checked_volume(volume, scale: Sequence[float], opacity: float | None):
    """(the stain as a dask array, the opacity per unit depth), checked as
    :func:`render_volume` takes them (the opacity's default: one stain alpha per voxel)."""
    import dask.array as da

    if not isinstance(volume, da.Array):
        volume = da.from_array(np.asarray(volume), chunks=(-1, 1, -1, -1))
    if volume.ndim != 4 or volume.shape[0] not in (3, 4) or volume.dtype != np.uint8:
        raise InputError(
            "volume must be (c, z, y, x) uint8 with 3 (RGB) or 4 (RGBA) channels, got "
            f"shape {volume.shape} {volume.dtype}"
        )
    if len(scale) != 3 or not all(math.isfinite(s) and s > 0 for s in scale):
        raise InputError(f"scale must be three positive voxel sizes (z, y, x), got {scale!r}")
    if opacity is None:
        opacity = 1.0 / min(scale)
    if not (math.isfinite(opacity) and opacity > 0):
        raise InputError(f"opacity must be a positive number, got {opacity!r}")
    return volume, opacity


def _composite(x, geom: _Geometry, lut: np.ndarray):
    """The (4, ha, hb) float32 canvas of the slabs of ``x`` (c, k, a, b) in view order: each
    slab's partial image, combined front to back four at a time."""
    import dask.array as da

    nslabs = len(x.chunks[1])
    ha, hb = geom.canvas
    parts = x.map_blocks(
        _slab_partial,
        geom=geom,
        lut=lut,
        chunks=((4,), (1,) * nslabs, (ha,), (hb,)),
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), dtype=np.float32),
    )
    return da.reduction(
        parts,
        chunk=_as_is,
        combine=_over,
        aggregate=_over_aggregate,
        axis=1,
        keepdims=False,
        dtype=np.float32,
        concatenate=True,
        split_every=4,
        meta=np.empty((0, 0, 0), dtype=np.float32),
        name="composite",
    )


# ---------------------------------------------------------------- stores and files


def _level_box(clip, factors: Sequence[float]) -> tuple[tuple[int, int], ...]:
    """The level-0 box ``clip`` in voxels of a level ``factors`` coarser (covering it)."""
    return tuple(
        (int(math.floor(lo / f)), int(math.ceil(hi / f)))
        for (lo, hi), f in zip(clip, factors, strict=True)
    )


def _open_stain(path: str | os.PathLike, level: int = 0):
    from vstain_dask import ngff

    vol = ngff.open_volume(path, level=level)
    if (
        tuple(vol.dims) != ("c", "z", "y", "x")
        or vol.sizes["c"] not in (3, 4)
        or vol.dtype != np.uint8
    ):
        dims = ",".join(vol.dims)
        raise VolumeFormatError(
            f"{path} is not an RGB(A) stain: render needs (c, z, y, x) uint8 with 3 or 4 "
            f"channels, as `vstain-dask stain` writes, got ({dims}) {vol.dtype} "
            f"(kind {vol.attrs.get('kind')})"
        )
    return vol


def _choose(path: str | os.PathLike, config: RenderConfig):
    """(level, the clipped level-0 box, the volume at that level clipped)."""
    vol0 = _open_stain(path)
    shape0 = tuple(vol0.sizes[d] for d in "zyx")
    clip = config.clip or ((0, None),) * 3
    box0 = []
    for ax, n, (lo, hi) in zip("zyx", shape0, clip, strict=True):
        hi = n if hi is None else hi
        if not 0 <= lo < hi <= n:
            raise InputError(
                f"clip along {ax} must lie within 0:{n} (level-0 voxels of {path}), got {lo}:{hi}"
            )
        box0.append((lo, hi))
    n_levels = int(vol0.attrs.get("n_levels") or 1)
    if config.level is not None and not 0 <= config.level < n_levels:
        raise VolumeFormatError(
            f"level must be in 0..{n_levels - 1} for {path}, which has {n_levels} level"
            f"{'s' if n_levels != 1 else ''}; got {config.level}"
        )
    s0 = np.array([vol0.attrs["scale"][d] for d in "zyx"], dtype=float)
    levels = [config.level] if config.level is not None else range(n_levels)
    for level in levels:
        vol = _open_stain(path, level=level)
        s = np.array([vol.attrs["scale"][d] for d in "zyx"], dtype=float)
        box = _level_box(box0, np.rint(s / s0).clip(min=1))
        box = tuple(
            (min(lo, vol.sizes[d] - 1), min(max(hi, lo + 1), vol.sizes[d]))
            for (lo, hi), d in zip(box, "zyx", strict=True)
        )
        if config.level is not None or max(hi - lo for lo, hi in box) <= config.max_size:
            break
    sub = vol.isel({d: slice(lo, hi) for (lo, hi), d in zip(box, "zyx", strict=True)})
    return level, s0, sub


def _check_out(out: str | os.PathLike, *, suffixes: tuple[str, ...], overwrite: bool) -> Path:
    p = Path(out).expanduser()
    if p.suffix.lower() not in suffixes:
        raise InputError(f"output must end in {' or '.join(suffixes)}, got {str(out)!r}")
    if p.is_dir():
        raise OutputExistsError(f"output {p} is a folder; give a file name")
    if p.exists() and not overwrite:
        raise OutputExistsError(
            f"output {p} already exists; pass --overwrite (overwrite=True) to replace it, "
            "or choose another path"
        )
    if not p.parent.is_dir():
        raise InputError(f"the folder of output {p} does not exist; create it first")
    return p


def _pad_white(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.full((*shape, 3), 255, dtype=np.uint8)
    r0, c0 = (shape[0] - img.shape[0]) // 2, (shape[1] - img.shape[1]) // 2
    out[r0 : r0 + img.shape[0], c0 : c0 + img.shape[1]] = img
    return out


def render(path: str | os.PathLike, config: RenderConfig | None = None):
    """Open a stain, choose its level and clip, and render it lazily.

    Returns
    -------
    (dask.array.Array, dict)
        The (H, W, 3) uint8 image, and ``{"level", "shape", "voxel_size", "unit", "opacity"}``.
    """
    config = config or RenderConfig()
    level, s0, vol = _choose(path, config)
    scale = tuple(float(vol.attrs["scale"][d]) for d in "zyx")
    opacity = config.opacity if config.opacity is not None else 1.0 / float(s0.min())
    img = render_volume(
        vol.data, scale=scale, azimuth=config.azimuth, elevation=config.elevation,
        opacity=opacity,
    )  # fmt: skip
    info = {
        "level": level,
        "shape": tuple(vol.sizes[d] for d in "zyx"),
        "voxel_size": scale,
        "unit": (vol.attrs.get("units") or {}).get("x"),
        "opacity": opacity,
    }
    return img, info


def save_render(
    path: str | os.PathLike,
    out: str | os.PathLike,
    config: RenderConfig | None = None,
    *,
    frames: int = 1,
    overwrite: bool = False,
) -> RenderResult:
    """Render a stain to a PNG, or a turntable of ``frames`` views to an animated GIF.

    Parameters
    ----------
    path : an RGB(A) stain, OME-Zarr (c, z, y, x) uint8
    out : ``.png`` (one view) or ``.gif`` (``frames`` > 1, azimuths 360° / frames apart from
        ``config.azimuth``)
    config : the view, level, clip and opacity
    overwrite : replace an existing ``out``

    Everything is checked before any work; the file appears only when complete.
    """
    from PIL import Image

    config = config or RenderConfig()
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise InputError(f"frames must be a positive integer, got {frames!r}")
    p = _check_out(out, suffixes=(".gif",) if frames > 1 else (".png",), overwrite=overwrite)
    images = []
    info: dict = {}
    for f in range(frames):
        view = dataclasses.replace(config, azimuth=config.azimuth + 360.0 * f / frames)
        img, info = render(path, view)
        images.append(np.asarray(img.compute()))
    size = (max(i.shape[0] for i in images), max(i.shape[1] for i in images))
    pictures = [Image.fromarray(_pad_white(i, size) if frames > 1 else i) for i in images]
    # written beside, then renamed: the image appears only when complete
    tmp = p.with_name(f".{p.stem}.{os.getpid()}.partial{p.suffix}")
    try:
        if frames > 1:
            pictures[0].save(
                tmp, save_all=True, append_images=pictures[1:], duration=80, loop=0,
                optimize=True,
            )  # fmt: skip
        else:
            pictures[0].save(tmp, optimize=True)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return RenderResult(
        path=p,
        level=info["level"],
        shape=info["shape"],
        voxel_size=info["voxel_size"],
        unit=info["unit"],
        opacity=info["opacity"],
        image_size=pictures[0].size[::-1],
        frames=frames,
    )
