"""Getting slice pairs into a pairs store, and the normalization each pair is trained with.

What is stored. A pairs store keeps the images **as they were given** (CT uint16, histology
uint8 RGB) plus the correspondence mask, and records the paper's normalization of each pair in its
attributes::

    "normalization": {
        "ct_levels": {"bone": float, "background": float, "source": "auto" | "roi" | "manual"},
        "histology": {"gains": [r, g, b], "lower": float, "upper": float},
        "ct_levels_qc": path,  # estimated levels only: their QC figure
    }

The training stream applies these per crop, on the fly (both are a linear map per pixel, so a
crop costs the same either way). Keeping raw data means one copy of the images, the store stays
comparable with the microscope and scanner files, and a better normalization can be recorded
later without rewriting pixels. Levels estimated automatically come with their QC figure
(:mod:`vstain_dask.levels_qc`), ``<pair id>.levels.png`` beside the store. Pairs written
without these attributes (for example by ``vstain-dask phantom-pairs``) are normalized with
levels estimated when a dataset is opened (:func:`pair_levels`).

The paper's normalizations (:mod:`vstain_dask.preprocess`): CT scaled so that the mean of bone
and of the background become 30000 and 10000 (uint16); histology white-balanced from the mean
background colour and contrast-stretched with one pair of bounds for all channels.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask.errors import InputError, VolumeFormatError

__all__ = [
    "PairLevels",
    "read_image",
    "add_pair",
    "pair_levels",
    "levels_from_attrs",
    "parse_roi",
    "format_pairs",
    "describe_ct_levels",
]

_TIFF = (".tif", ".tiff")
_PLAIN = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclasses.dataclass(frozen=True)
class PairLevels:
    """How one pair is normalized before it reaches a network.

    Attributes
    ----------
    ct : CTLevels
        Raw CT means of bone and background (mapped to 30000 and 10000).
    histology : HistologyLevels or None
        White balance and stretch of the histology; None leaves it as stored.
    """

    ct: Any  # preprocess.CTLevels
    histology: Any | None  # preprocess.HistologyLevels

    def to_dict(self) -> dict[str, Any]:
        """The plain form stored in a pair's ``normalization`` attribute."""
        # levels, source and, for an estimate, its confidence and what it rests on
        out: dict[str, Any] = {"ct_levels": self.ct.record()}
        if self.histology is not None:
            out["histology"] = {
                "gains": [float(g) for g in self.histology.gains],
                "lower": float(self.histology.lower),
                "upper": float(self.histology.upper),
            }
        return out


def levels_from_attrs(attrs: Mapping[str, Any]) -> PairLevels | None:
    """The normalization recorded in a pair's attributes, or None when none is recorded."""
    from vstain_dask.preprocess import CTLevels, HistologyLevels

    norm = attrs.get("normalization")
    if not isinstance(norm, Mapping) or not isinstance(norm.get("ct_levels"), Mapping):
        return None
    c = norm["ct_levels"]
    try:
        ct = CTLevels(bone=c["bone"], background=c["background"], source=c.get("source", "manual"),
                      confidence=c.get("confidence"), basis=c.get("basis"))  # fmt: skip
        h = norm.get("histology")
        hist = (
            HistologyLevels(gains=tuple(h["gains"]), lower=h["lower"], upper=h["upper"])
            if isinstance(h, Mapping)
            else None
        )
    except (KeyError, TypeError, InputError) as e:
        raise VolumeFormatError(
            f"the pair's 'normalization' attribute is damaged ({e}); write the pair again with "
            "`vstain-dask pairs add --overwrite`"
        ) from e
    return PairLevels(ct=ct, histology=hist)


def describe_ct_levels(ct_levels: Mapping[str, Any], qc: str | None = None) -> str:
    """The line ``pairs add`` and ``register`` print: the CT levels a pair is normalized with
    (``ct_levels`` as its ``normalization`` records them), where they came from, and their QC
    figure ``qc`` when there is one."""
    levels = levels_from_attrs({"normalization": {"ct_levels": ct_levels}})
    return levels.ct.describe() + (f"; QC figure {qc}" if qc else "")


def pair_levels(
    ct: Any,
    histology: Any,
    *,
    attrs: Mapping[str, Any] | None = None,
    material: str | None = None,
    histology_normalization: bool = True,
) -> PairLevels:
    """The normalization of one pair: as recorded in ``attrs``, else estimated from the images.

    Parameters
    ----------
    ct : (Y, X) array
        Raw CT slice (numpy or a zarr array; read whole only when levels must be estimated).
    histology : (Y, X, 3) uint8 array
        Raw histology (read whole only when its levels must be estimated).
    attrs : mapping, optional
        The pair's attributes.
    material : str, optional
        Implant material, a hint for the CT level estimate (a Ti screw is brighter than bone).
    histology_normalization : bool
        Estimate the histology white balance and stretch when none is recorded (False: use the
        histology as stored).

    Returns
    -------
    PairLevels
    """
    from vstain_dask.preprocess import estimate_ct_levels, estimate_histology_levels

    recorded = levels_from_attrs(attrs or {})
    if recorded is not None:
        return recorded
    ct_arr = np.asarray(ct[...])
    try:
        ct_levels = estimate_ct_levels(ct_arr, material=material)
    except InputError as e:
        raise InputError(
            f"could not estimate the CT levels of a pair: {e}; record them with "
            "`vstain-dask pairs add --ct-levels BONE,BACKGROUND`"
        ) from e
    hist_levels = None
    if histology_normalization:
        try:
            hist_levels = estimate_histology_levels(np.asarray(histology[...]))
        except InputError as e:
            raise InputError(
                f"could not estimate the histology normalization of a pair: {e}; add it with "
                "`vstain-dask pairs add`, which records it"
            ) from e
    return PairLevels(ct=ct_levels, histology=hist_levels)


# -- reading images -------------------------------------------------------------------------------


def _read_zarr(p: Path, name: str) -> np.ndarray:
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as e:  # zarr raises several kinds for "not zarr"
        raise VolumeFormatError(f"{name}: {p} is not a readable zarr array or group: {e}") from e
    if isinstance(node, zarr.Array):
        return np.asarray(node[...])
    if "multiscales" in node.attrs or "ome" in node.attrs:
        from vstain_dask import ngff

        vol = ngff.open_volume(p)
        data = np.asarray(vol.data)
        if "c" in vol.dims:
            data = np.moveaxis(data, vol.dims.index("c"), -1)
        return data
    arrays = list(node.array_keys())
    if len(arrays) == 1:
        return np.asarray(node[arrays[0]][...])
    raise VolumeFormatError(
        f"{name}: {p} is a zarr group with {len(arrays)} arrays and no OME-Zarr metadata; "
        "give the path of the array itself"
    )


def read_image(path: str | os.PathLike, *, name: str = "image") -> np.ndarray:
    """Read a 2D image (greyscale or RGB) from TIFF, PNG/JPEG or zarr (plain or OME-Zarr).

    Parameters
    ----------
    path : path
        ``.tif``/``.tiff`` (tifffile), ``.png``, ``.jpg``, ... (imageio), or a zarr array, a zarr
        group holding one array, or an OME-Zarr image (level 0).
    name : str
        What the image is, for error messages (``--ct``, ``--histology``).

    Returns
    -------
    numpy array as stored: (Y, X), (Y, X, C) or (C, Y, X)
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise VolumeFormatError(f"{name}: {p} does not exist")
    suffix = p.suffix.lower()
    try:
        if p.is_dir() or suffix == ".zarr":
            return _read_zarr(p, name)
        if suffix in _TIFF:
            import tifffile

            return np.asarray(tifffile.imread(p))
        if suffix in _PLAIN:
            import imageio.v3 as iio

            return np.asarray(iio.imread(p))
    except VolumeFormatError:
        raise
    except Exception as e:  # readers raise many kinds for damaged files
        raise VolumeFormatError(f"{name}: could not read {p}: {type(e).__name__}: {e}") from e
    raise VolumeFormatError(
        f"{name}: {p} has an unknown file type {suffix!r}; give a TIFF (.tif), PNG/JPEG or zarr "
        "image"
    )


def _squeeze(a: np.ndarray) -> np.ndarray:
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    return a


def _as_ct(a: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """A (Y, X) uint16 CT slice; other dtypes are rescaled linearly (recorded)."""
    a = _squeeze(np.asarray(a))
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.dtype.kind in "ui":
        if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
            a = a[..., 0]  # a greyscale image saved as RGB
    if a.ndim != 2:
        raise InputError(
            f"--ct must be a 2D greyscale slice (Y, X), got an image of shape {a.shape}; "
            "extract the registered slice first"
        )
    if a.dtype == np.uint16:
        return a, {}
    if a.dtype == np.uint8 or a.dtype == np.bool_:
        return a.astype(np.uint16), {}
    if a.dtype.kind not in "iuf":
        raise InputError(f"--ct must hold numbers, got dtype {a.dtype}")
    f = a.astype(np.float64)
    finite = np.isfinite(f)
    if not finite.any():
        raise InputError("--ct holds no finite values")
    lo, hi = float(f[finite].min()), float(f[finite].max())
    if a.dtype.kind in "iu" and lo >= 0 and hi <= 65535:
        return a.astype(np.uint16), {}
    scale = 65535.0 / (hi - lo) if hi > lo else 1.0
    out = np.clip(np.rint((np.where(finite, f, lo) - lo) * scale), 0, 65535).astype(np.uint16)
    # a linear rescale changes nothing the normalization sees: it maps bone/background means
    return out, {"ct_rescaled": {"from_dtype": str(a.dtype), "low": lo, "high": hi}}


def _as_rgb(a: np.ndarray) -> np.ndarray:
    a = _squeeze(np.asarray(a))
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise InputError(
            f"--histology must be an RGB image (Y, X, 3), got shape {a.shape}; a greyscale "
            "section cannot be a stain target"
        )
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)
    if a.dtype.kind == "f" and np.nanmin(a) >= 0 and np.nanmax(a) <= 1:
        return np.rint(np.nan_to_num(a) * 255.0).astype(np.uint8)
    raise InputError(
        f"--histology must be uint8 (or uint16, or float in 0..1), got {a.dtype}; convert it first"
    )


def _as_mask(a: np.ndarray) -> np.ndarray:
    a = _squeeze(np.asarray(a))
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].max(axis=-1)
    if a.ndim != 2:
        raise InputError(f"--mask must be a 2D image (Y, X), got shape {a.shape}")
    return a != 0


def parse_roi(text: str, *, name: str = "roi") -> tuple[slice, slice]:
    """``"Y0:Y1,X0:X1"`` (pixels, end exclusive) as a tuple of slices."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if not m:
        raise InputError(f"{name} must be Y0:Y1,X0:X1 in pixels, got {text!r}")
    y0, y1, x0, x1 = (int(v) for v in m.groups())
    if y1 <= y0 or x1 <= x0:
        raise InputError(f"{name} must have Y0 < Y1 and X0 < X1, got {text!r}")
    return slice(y0, y1), slice(x0, x1)


def _next_id(path: Path, sample: str) -> str:
    from vstain_dask.pairs import list_pairs

    base = re.sub(r"[^A-Za-z0-9_.-]", "_", sample).lstrip(".-") or "pair"
    taken = {p["id"] for p in list_pairs(path)} if (path / "zarr.json").exists() else set()
    i = 0
    while f"{base}-{i:03d}" in taken:
        i += 1
    return f"{base}-{i:03d}"


@dataclasses.dataclass(frozen=True)
class _MaskOptions:
    """How :func:`add_pair` builds the correspondence mask: from a manual ``mask`` (path or
    array), combined with the automatic mask (``auto_mask``) or alone."""

    mask: str | os.PathLike | np.ndarray | None = None
    auto_mask: bool = True


@dataclasses.dataclass(frozen=True)
class _LevelOptions:
    """How :func:`add_pair` finds the CT levels: given (``ct_levels``), measured in two regions
    (``bone_roi``, ``background_roi``), or else estimated."""

    ct_levels: tuple[float, float] | None = None
    bone_roi: Any = None
    background_roi: Any = None

    def levels(self, ct_img: np.ndarray, material: str, *, qc: Path | None = None) -> Any:
        """The CT levels (:class:`vstain_dask.preprocess.CTLevels`) of ``ct_img``; an estimate
        draws its QC figure to ``qc`` when given."""
        from vstain_dask.preprocess import CTLevels, LevelSource, estimate_ct_levels

        if (self.bone_roi is None) != (self.background_roi is None):
            raise InputError("bone_roi and background_roi must be given together")
        if self.ct_levels is not None and self.bone_roi is not None:
            raise InputError("give either ct_levels or bone_roi/background_roi, not both")
        if isinstance(self.ct_levels, CTLevels):  # found elsewhere (register: on the volume)
            return self.ct_levels
        if self.ct_levels is not None:
            try:
                bone, background = (float(v) for v in self.ct_levels)
            except (TypeError, ValueError) as e:
                raise InputError(
                    f"ct_levels must be (bone, background), got {self.ct_levels!r}"
                ) from e
            return CTLevels(bone=bone, background=background, source=LevelSource.MANUAL)
        if self.bone_roi is not None:
            return self._from_rois(ct_img)
        try:
            return estimate_ct_levels(ct_img, material=material, qc=qc)
        except InputError as e:
            raise InputError(
                f"could not estimate the CT levels: {e}; give --ct-levels BONE,BACKGROUND or "
                "--bone-roi and --background-roi"
            ) from e

    def _from_rois(self, ct_img: np.ndarray) -> Any:
        from vstain_dask.preprocess import levels_from_rois

        bone, background = self.bone_roi, self.background_roi
        bone_sel = parse_roi(bone, name="bone_roi") if isinstance(bone, str) else bone
        bg_sel = (
            parse_roi(background, name="background_roi")
            if isinstance(background, str)
            else background
        )
        return levels_from_rois(ct_img, bone_roi=bone_sel, background_roi=bg_sel)


@dataclasses.dataclass(frozen=True)
class _StoreOptions:
    """What :func:`add_pair` stores with the pair besides its images and normalization, and
    under which id."""

    voxel_size: float = 5.0
    pair_id: str | None = None
    role: str | None = None
    overwrite: bool = False


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """A pair ready to be stored: its images as stored, its material, its normalization and
    what else its attributes record."""

    ct: np.ndarray
    histology: np.ndarray
    mask: np.ndarray
    material: Any  # pairs.Material
    levels: PairLevels
    attrs: dict[str, Any]


def add_pair(
    path: str | os.PathLike,
    *,
    ct: str | os.PathLike | np.ndarray,
    histology: str | os.PathLike | np.ndarray,
    material: str,
    sample: str,
    **options: Any,
) -> dict[str, Any]:
    """Add a registered CT slice and histology image to a pairs store, with its normalization.

    The images are stored as given; the paper's CT levels and histology normalization are
    estimated (or taken from ``ct_levels`` / the ROIs) and recorded in the pair's attributes, and
    the correspondence mask is built as the paper did: the convex hull of bone and screw on the
    CT and on the histology, combined by minimum, and with ``mask`` (a manual mask) when given.

    Parameters
    ----------
    path : pairs store (created if missing)
    ct : path or (Y, X) array
        CT slice (TIFF, PNG or zarr); uint16 is stored as is, other dtypes are rescaled
        linearly to uint16.
    histology : path or (Y, X, 3) array
        Histology registered to the CT slice, same size; uint8 RGB (uint16 and 0-1 floats are
        converted).
    material : ``"mg"``, ``"ti"`` or ``"peek"``
    sample : str
        Sample id (pairs of one sample stay in one split).
    voxel_size : float
        Pixel size, µm (default 5).
    mask : path or (Y, X) array, optional
        Manual mask (non-zero = keep).
    auto_mask : bool
        Combine with the automatic correspondence mask (True) or use ``mask`` alone (False).
    pair_id : str, optional
        Default ``<sample>-NNN``, the first free number.
    role : ``"train"``, ``"val"``, ``"test"`` or None (the default)
    ct_levels : (bone, background) or CTLevels, optional
        Raw CT means to use instead of estimating them (a ``CTLevels`` is recorded with its
        own source and confidence).
    bone_roi, background_roi : region, optional
        Measure the CT levels in these regions (see :func:`vstain_dask.preprocess.levels_from_rois`).
    overwrite : bool
        Replace a pair of the same id (default False).

    Returns
    -------
    dict
        ``id``, ``shape``, ``normalization`` and ``mask_fraction``; estimated levels' QC figure
        is written beside the store once the pair is (``normalization["ct_levels_qc"]``).
    """
    from vstain_dask._validate import keyword_bundles
    from vstain_dask.levels_qc import pending_figure

    masks, levels, store = keyword_bundles(
        "add_pair", options, _MaskOptions, _LevelOptions, _StoreOptions
    )
    with pending_figure() as qc:
        pair = _prepare(ct, histology, material, masks, levels, qc=qc)
        return _store(path, pair, sample, store, qc=qc)


def _read_inputs(
    ct: Any, histology: Any, mask: Any
) -> tuple[np.ndarray, dict[str, Any], np.ndarray, np.ndarray | None]:
    """(the CT slice as uint16, what its conversion records, the histology as uint8 RGB, the
    manual mask or None), read from paths or taken as arrays, all of one (Y, X) size."""
    ct_img = read_image(ct, name="--ct") if not isinstance(ct, np.ndarray) else ct
    hist_img = (
        read_image(histology, name="--histology")
        if not isinstance(histology, np.ndarray)
        else histology
    )
    ct_img, extras = _as_ct(ct_img)
    hist_img = _as_rgb(hist_img)
    manual = None
    if mask is not None:
        manual = _as_mask(
            read_image(mask, name="--mask") if not isinstance(mask, np.ndarray) else mask
        )
    shapes = {"ct": ct_img.shape, "histology": hist_img.shape[:2]}
    if manual is not None:
        shapes["mask"] = manual.shape
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in shapes.items())
        raise InputError(
            f"images must have the same size (Y x X), got {listed}; register and resample the "
            "histology (and mask) to the CT slice first"
        )
    return ct_img, extras, hist_img, manual


def _prepare(
    ct: Any,
    histology: Any,
    material: str,
    masks: _MaskOptions,
    levels: _LevelOptions,
    *,
    qc: Path,
) -> _Prepared:
    """The images read and converted, the CT levels (an estimate's QC figure drawn to ``qc``)
    and histology normalization measured, and the correspondence mask built."""
    from vstain_dask.pairs import parse_material
    from vstain_dask.preprocess import estimate_histology_levels

    mat = parse_material(material)
    ct_img, extras, hist_img, manual = _read_inputs(ct, histology, masks.mask)
    ct_levels = levels.levels(ct_img, mat, qc=qc)
    hist_levels = estimate_histology_levels(hist_img)
    corr = _correspondence(ct_img, hist_img, manual, ct_levels, masks)
    sources = {
        k: str(Path(v).expanduser())
        for k, v in (("ct", ct), ("histology", histology), ("mask", masks.mask))
        if v is not None and not isinstance(v, np.ndarray)
    }
    norm = PairLevels(ct=ct_levels, histology=hist_levels)
    attrs = {
        **extras,
        "normalization": norm.to_dict(),
        "mask_source": ("auto+manual" if manual is not None else "auto")
        if masks.auto_mask
        else "manual",
        "sources": sources,
    }
    return _Prepared(ct_img, hist_img, corr, mat, norm, attrs)


def _correspondence(
    ct_img: np.ndarray,
    hist_img: np.ndarray,
    manual: np.ndarray | None,
    levels: Any,
    masks: _MaskOptions,
) -> np.ndarray:
    """The correspondence mask (the paper's automatic mask, with or without the manual one, or
    the manual one alone); refused when it keeps no pixel, with what to do about it."""
    from vstain_dask.preprocess import correspondence_mask

    if masks.auto_mask:
        corr = correspondence_mask(ct_img, hist_img, manual=manual, levels=levels)
    elif manual is not None:
        corr = manual
    else:
        raise InputError("auto_mask=False (--mask-only) needs a mask (--mask M.png)")
    if corr.any():
        return corr
    mask = masks.mask
    what = "" if isinstance(mask, np.ndarray) or mask is None else f" {mask}"
    if not masks.auto_mask:
        raise InputError(
            f"the mask{what} keeps no pixel (all zero); mark the region to keep with "
            "non-zero values"
        )
    if manual is not None and manual.any():
        raise InputError(
            f"the correspondence mask is empty: the mask{what} and the automatic mask (the "
            "bone and screw found on both images) do not overlap; use --mask-only to keep "
            "the mask as it is"
        )
    raise InputError(
        "the correspondence mask is empty (no bone or screw found on both images); draw "
        "the region to keep in a mask and give it with --mask M.png --mask-only"
    )


def _store(
    path: Any, pair: _Prepared, sample: str, store: _StoreOptions, *, qc: Path
) -> dict[str, Any]:
    """Write ``pair`` into the pairs store at ``path``, then its levels' QC figure (drawn to
    ``qc``, where an estimate drew one) beside the store; what :func:`add_pair` returns."""
    from vstain_dask.levels_qc import keep_figure, pair_levels_qc_path
    from vstain_dask.pairs import write_pair

    p = Path(path).expanduser()
    pid = store.pair_id or _next_id(p, sample)
    normalization = pair.levels.to_dict()
    figure = pair_levels_qc_path(p.parent, pid).resolve() if qc.is_file() else None
    if figure is not None:
        normalization["ct_levels_qc"] = str(figure)
    write_pair(
        p,
        pid,
        ct=pair.ct,
        histology=pair.histology,
        mask=pair.mask,
        material=pair.material,
        sample=sample,
        voxel_size=store.voxel_size,
        role=store.role,
        attrs={**pair.attrs, "normalization": normalization},
        overwrite=store.overwrite,
    )
    if figure is not None:  # the pair is written: its figure keeps its name
        keep_figure(qc, figure)
    return {
        "id": pid,
        "shape": tuple(int(n) for n in pair.ct.shape),
        "normalization": normalization,
        "mask_fraction": float(pair.mask.mean()),
    }


def format_pairs(pairs: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of :func:`vstain_dask.pairs.list_pairs` output."""
    from collections import Counter

    header = ("id", "material", "sample", "role", "size (px)", "voxel µm", "normalization")
    rows = []
    for p in pairs:
        shape = p.get("shape", ())
        norm = p.get("normalization")
        if isinstance(norm, Mapping) and isinstance(norm.get("ct_levels"), Mapping):
            c = norm["ct_levels"]
            ntext = f"recorded (bone {c['bone']:.0f}, background {c['background']:.0f})"
        else:
            ntext = "estimated when training"
        rows.append(
            (
                str(p["id"]),
                str(p.get("material")),
                str(p.get("sample")),
                str(p.get("role") or "-"),
                "x".join(str(n) for n in shape),
                f"{float(p.get('voxel_size', 0)):g}",
                ntext,
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    mats = Counter(p.get("material") for p in pairs)
    samples = len({p.get("sample") for p in pairs})
    known = ("mg", "ti", "peek")
    order = [*known, *sorted(str(m) for m in mats if m not in known)]
    mix = ", ".join(f"{mats[m]} {m}" for m in order if mats[m])
    lines.append(f"{len(pairs)} pairs ({mix or 'none'}; {samples} samples)")
    return "\n".join(lines)
