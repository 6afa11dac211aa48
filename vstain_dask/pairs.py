"""The paired-slices store: co-registered CT slices and histology images, one group per pair.

Layout (zarr v3)::

    pairs.zarr/                      attrs {"vstain_pairs": {"version": 1}}
      <pair id>/                     attrs material, sample, voxel_size, role, extras
        ct          (Y, X) uint16
        histology   (Y, X, 3) uint8, R, G, B
        mask        (Y, X) bool, where CT and histology correspond

Pairs are small 2D images, so reads and writes here are eager (numpy in, zarr arrays out).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask._validate import keyword_bundles
from vstain_dask.errors import InputError, OutputExistsError, VolumeFormatError, as_enum

__all__ = [
    "Material",
    "Role",
    "write_pair",
    "list_pairs",
    "read_pair",
    "parse_material",
    "material_preset",
    "PAIRS_VERSION",
]

#: version of the store layout, in the root attributes
PAIRS_VERSION = 1
_ROOT_KEY = "vstain_pairs"
_RESERVED = ("material", "sample", "voxel_size", "role")
_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
#: an implant material's name, in lower case: a letter or digit, then letters, digits, '_', '.'
#: or '-' (at most 32 characters)
_MATERIAL = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
_CHUNK = 512


class Material(enum.StrEnum):
    """The implant materials the project knows: presets for the CT level estimate, training
    stratification and phantoms. A pair may name any other material (:func:`parse_material`),
    stratified as its own group."""

    MG = "mg"
    TI = "ti"
    PEEK = "peek"


class Role(enum.StrEnum):
    """Split role of a pair, when one is assigned."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


def parse_material(value: Any, name: str = "material") -> str:
    """The implant material ``value`` as its name in lower case: a :class:`Material` for the
    presets ``mg``, ``ti`` and ``peek`` (any case), any other simple name as it is (a material
    the project has no preset for, such as ``zr`` or ``fe-alloy``).

    Raises
    ------
    InputError
        ``value`` is not a name of letters, digits, ``_``, ``.`` or ``-``.
    """
    if isinstance(value, Material):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text is None or not _MATERIAL.match(text):
        raise InputError(
            f"{name} must be a name of letters, digits, '_', '.' or '-' (at most 32; "
            f"{', '.join(Material)} or another implant material), got {value!r}"
        )
    return Material(text) if text in Material._value2member_map_ else text


def material_preset(value: Any, name: str = "material") -> Material | None:
    """The :class:`Material` preset of a material name (:func:`parse_material`), None for a
    material without one (and for None)."""
    if value is None:
        return None
    material = parse_material(value, name)
    return material if isinstance(material, Material) else None


def _parse_role(value: Any) -> Role | None:
    return as_enum(Role, value, "role", case_insensitive=True, allow_none=True)


def _check_id(pair_id: Any) -> str:
    if not isinstance(pair_id, str) or not _ID.match(pair_id):
        raise InputError(
            "pair_id must be a name of letters, digits, '_', '.' or '-' (not starting with "
            f"'.' or '-'), got {pair_id!r}"
        )
    return pair_id


def _check_images(ct: Any, histology: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ct = np.asarray(ct)
    histology = np.asarray(histology)
    mask = np.asarray(mask)
    if ct.ndim != 2:
        raise InputError(f"ct must be a 2D (Y, X) image, got shape {ct.shape}")
    if ct.dtype != np.uint16:
        if ct.dtype == np.uint8:
            ct = ct.astype(np.uint16)
        else:
            raise InputError(
                f"ct must be uint16, got {ct.dtype}; scale and convert it to uint16 first"
            )
    if histology.ndim != 3 or histology.shape[2] != 3:
        raise InputError(f"histology must be a (Y, X, 3) RGB image, got shape {histology.shape}")
    if histology.dtype != np.uint8:
        raise InputError(f"histology must be uint8 RGB, got {histology.dtype}")
    if mask.ndim != 2:
        raise InputError(f"mask must be a 2D (Y, X) image, got shape {mask.shape}")
    if mask.dtype != np.bool_:
        if mask.dtype.kind in "iu" and mask.size and not np.isin(mask, (0, 1)).all():
            raise InputError(f"mask must be bool (or 0/1 integers), got {mask.dtype} values")
        if mask.dtype.kind not in "iub":
            raise InputError(f"mask must be bool, got {mask.dtype}")
        mask = mask.astype(bool)
    if not (ct.shape == histology.shape[:2] == mask.shape):
        raise InputError(
            "ct, histology and mask must have the same (Y, X) shape, got "
            f"ct {ct.shape}, histology {histology.shape[:2]}, mask {mask.shape}"
        )
    return ct, histology, mask


def _json_extras(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise InputError(f"attrs must be a mapping, got {type(attrs).__name__}")
    clash = sorted(set(attrs) & set(_RESERVED))
    if clash:
        raise InputError(
            f"attrs must not set {', '.join(clash)}; pass them as the keyword arguments instead"
        )
    try:
        return json.loads(json.dumps(dict(attrs), default=_json_default))
    except (TypeError, ValueError) as e:
        raise InputError(f"attrs must be JSON-serializable: {e}") from e


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, enum.Enum):
        return o.value
    raise TypeError(f"{type(o).__name__} is not JSON-serializable")


def _open_root(path: str | os.PathLike, *, create: bool):
    import zarr

    p = Path(path).expanduser()
    if not p.exists():
        if not create:
            raise VolumeFormatError(
                f"pairs store {p} does not exist; write one with write_pair or "
                "`vstain-dask phantom-pairs`"
            )
        root = zarr.open_group(str(p), mode="w", zarr_format=3)
        root.attrs[_ROOT_KEY] = {"version": PAIRS_VERSION}
        return root
    try:
        root = zarr.open_group(str(p), mode="a" if create else "r")
    except Exception as e:  # zarr raises several kinds for "not a group"
        raise VolumeFormatError(f"{p} is not a zarr group of pairs: {e}") from e
    meta = root.attrs.get(_ROOT_KEY)
    if not isinstance(meta, Mapping) or "version" not in meta:
        raise VolumeFormatError(
            f"{p} is a zarr group but not a pairs store (no '{_ROOT_KEY}' attribute); "
            "choose another path"
        )
    if int(meta["version"]) > PAIRS_VERSION:
        raise VolumeFormatError(
            f"{p} is a pairs store of version {meta['version']}; this vstain-dask reads up to "
            f"version {PAIRS_VERSION}, upgrade it"
        )
    return root


@dataclasses.dataclass(frozen=True)
class _PairOptions:
    """The optional keywords of :func:`write_pair`: the pair's split ``role``, its free ``attrs``,
    and whether it may replace a pair of its id (``overwrite``)."""

    role: Role | str | None = None
    attrs: Mapping[str, Any] | None = None
    overwrite: bool = False


def write_pair(
    path: str | os.PathLike,
    pair_id: str,
    *,
    ct: np.ndarray,
    histology: np.ndarray,
    mask: np.ndarray,
    material: Material | str,
    sample: str,
    voxel_size: float,
    **options: Any,
) -> Path:
    """Add one CT/histology pair to a pairs store (created if missing).

    Parameters
    ----------
    path : the pairs store (a zarr v3 group)
    pair_id : name of the pair's group (letters, digits, ``_ . -``)
    ct : (Y, X) uint16
        CT slice, raw grey values.
    histology : (Y, X, 3) uint8
        Registered histology image, R, G, B.
    mask : (Y, X) bool
        Where CT and histology correspond (True inside the sample).
    material : str
        Implant material: ``mg``, ``ti``, ``peek`` (:class:`Material`) or any other name of
        letters, digits, ``_ . -`` (:func:`parse_material`).
    sample : str
        Sample id; pairs cut from one sample share it (keep them in one split).
    voxel_size : float
        Pixel size in µm.
    role : :class:`Role` value or None
        Split role; None (the default) leaves the choice to training.
    attrs : mapping, optional
        Free JSON-serializable extras stored with the pair.
    overwrite : bool
        Replace an existing pair of that id (default False).

    Returns
    -------
    pathlib.Path
        The pair's group.
    """
    opts = keyword_bundles("write_pair", options, _PairOptions)[0]
    pair_id = _check_id(pair_id)
    reserved = _reserved_attrs(material, sample, voxel_size, opts.role)
    ct, histology, mask = _check_images(ct, histology, mask)
    extras = _json_extras(opts.attrs)
    g = _new_pair_group(path, pair_id, overwrite=opts.overwrite)
    ch = min(_CHUNK, ct.shape[0]), min(_CHUNK, ct.shape[1])
    g.create_array("ct", data=ct, chunks=ch)
    g.create_array("histology", data=histology, chunks=(*ch, 3))
    g.create_array("mask", data=mask, chunks=ch)
    g.attrs.update({**extras, **reserved})
    return Path(path) / pair_id


def _new_pair_group(path: str | os.PathLike, pair_id: str, *, overwrite: bool):
    """An empty group for pair ``pair_id`` in the store at ``path`` (created if missing); an
    existing pair of that id is replaced only with ``overwrite``."""
    root = _open_root(path, create=True)
    if pair_id in root:
        if not overwrite:
            raise OutputExistsError(
                f"pair {pair_id!r} already exists in {path}; pass overwrite=True to replace it"
            )
        del root[pair_id]
    return root.create_group(pair_id)


def _reserved_attrs(material: Any, sample: Any, voxel_size: Any, role: Any) -> dict[str, Any]:
    """The checked ``material``, ``sample``, ``voxel_size`` (µm) and ``role`` of a pair, as
    stored in its attributes."""
    mat = str(parse_material(material))
    role_ = _parse_role(role)
    if not isinstance(sample, str) or not sample:
        raise InputError(f"sample must be a non-empty string id, got {sample!r}")
    try:
        vs = float(voxel_size)
    except (TypeError, ValueError) as e:
        raise InputError(f"voxel_size must be a positive number of µm, got {voxel_size!r}") from e
    if not (math.isfinite(vs) and vs > 0):
        raise InputError(f"voxel_size must be a positive number of µm, got {voxel_size!r}")
    return {
        "material": mat,
        "sample": sample,
        "voxel_size": vs,
        "role": None if role_ is None else role_.value,
    }


def list_pairs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The pairs in a store, sorted by id.

    Returns
    -------
    list of dict
        One per pair: ``id``, its attributes (``material``, ``sample``, ``voxel_size``,
        ``role`` and extras) and ``shape`` (Y, X).
    """
    root = _open_root(path, create=False)
    out = []
    for name in sorted(root.group_keys()):
        g = root[name]
        if "ct" not in g:
            raise VolumeFormatError(
                f"pair {name!r} in {path} has no 'ct' array; the store is damaged"
            )
        out.append({"id": name, **dict(g.attrs), "shape": tuple(int(n) for n in g["ct"].shape)})
    return out


def read_pair(path: str | os.PathLike, pair_id: str) -> dict[str, Any]:
    """Open one pair.

    Returns
    -------
    dict
        ``ct`` (Y, X) uint16, ``histology`` (Y, X, 3) uint8 and ``mask`` (Y, X) bool as zarr
        arrays (read with ``[...]``), and ``attrs`` (dict).
    """
    root = _open_root(path, create=False)
    if not isinstance(pair_id, str) or pair_id not in root:
        ids = sorted(root.group_keys())
        shown = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
        raise InputError(f"no pair {pair_id!r} in {path}; it holds: {shown or 'no pairs'}")
    g = root[pair_id]
    missing = [k for k in ("ct", "histology", "mask") if k not in g]
    if missing:
        raise VolumeFormatError(
            f"pair {pair_id!r} in {path} lacks {', '.join(missing)}; the store is damaged"
        )
    return {"ct": g["ct"], "histology": g["histology"], "mask": g["mask"], "attrs": dict(g.attrs)}
