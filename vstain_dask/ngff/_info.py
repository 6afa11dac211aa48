"""Inspection: what ``vstain-dask info`` shows."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vstain_dask.ngff._read import _read_multiscale, _write_chunks, incomplete_reason


def _codec_text(codec: Any) -> str:
    if hasattr(codec, "to_dict"):
        d = codec.to_dict()
        conf = d.get("configuration", {})
        return f"{d.get('name')}({', '.join(f'{k}={v}' for k, v in conf.items())})"
    if hasattr(codec, "get_config"):
        conf = dict(codec.get_config())
        cid = conf.pop("id", type(codec).__name__)
        return f"{cid}({', '.join(f'{k}={v}' for k, v in conf.items())})"
    return str(codec)


def _stored_bytes(p: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(p):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def volume_info(path: str | os.PathLike) -> dict:
    """Describe an OME-Zarr image (or a plain zarr array) without reading its data.

    Returns
    -------
    dict
        JSON-serializable: ``path``, ``ngff_version`` (None for a plain array),
        ``zarr_format``, ``name``, ``kind``, ``axes``, ``shape``, ``dtype``, ``chunks``,
        ``scale``, ``units``, ``translation`` (dicts keyed by axis), ``levels`` (list of
        ``{"path", "shape", "chunks", "scale"}``), ``channels``, ``labels``, ``compressors``,
        ``nbytes`` (level 0, uncompressed), ``stored_bytes`` (all files), ``vstain``
        (provenance), ``incomplete`` (None, or why the volume is incomplete and how to redo
        it) and ``warnings``.
    """
    ms = _read_multiscale(path)
    lv0 = ms.levels[0]
    arr = lv0.array
    notes = []
    if ms.ngff_version is None:
        notes.append("plain zarr array without OME-Zarr metadata: no physical scale is known")
    return {
        "path": str(ms.path),
        "ngff_version": ms.ngff_version,
        "zarr_format": ms.zarr_format,
        "name": ms.name,
        "kind": ms.kind.value,
        "axes": list(ms.axes),
        "shape": [int(s) for s in arr.shape],
        "dtype": str(arr.dtype),
        "chunks": [int(c) for c in _write_chunks(arr)],
        "scale": dict(zip(ms.axes, lv0.scale, strict=True)),
        "units": dict(zip(ms.axes, ms.units, strict=True)),
        "translation": dict(zip(ms.axes, lv0.translation, strict=True)),
        "levels": [
            {
                "path": lv.path,
                "shape": [int(s) for s in lv.array.shape],
                "chunks": [int(c) for c in _write_chunks(lv.array)],
                "scale": dict(zip(ms.axes, lv.scale, strict=True)),
            }
            for lv in ms.levels
        ],
        "channels": list(ms.channels) if ms.channels is not None else None,
        "labels": list(ms.labels),
        "compressors": [_codec_text(c) for c in (arr.compressors or ())],
        "nbytes": int(arr.nbytes),
        "stored_bytes": _stored_bytes(ms.path),
        "vstain": dict(ms.vstain),
        "incomplete": incomplete_reason(ms.vstain),
        "warnings": notes,
    }


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _fmt_num(v: float) -> str:
    return f"{v:g}"


def format_info(info: Mapping[str, Any]) -> str:
    """Human-readable multi-line text for a :func:`volume_info` dict."""
    axes = info["axes"]

    def dims(values: Sequence[int]) -> str:
        return " x ".join(str(v) for v in values)

    version = info["ngff_version"]
    fmt = (
        f"OME-Zarr {version} (zarr v{info['zarr_format']})"
        if version
        else f"plain zarr v{info['zarr_format']} array (no OME-Zarr metadata)"
    )
    voxel = ", ".join(
        f"{a} {_fmt_num(info['scale'][a])}{' ' + info['units'][a] if info['units'][a] else ''}"
        for a in axes
        if a != "c"
    )
    origin = ", ".join(f"{a} {_fmt_num(info['translation'][a])}" for a in axes if a != "c")
    lines = [
        *([f"INCOMPLETE:  {info['incomplete']}"] if info.get("incomplete") else []),
        f"path:        {info['path']}",
        f"format:      {fmt}",
        f"kind:        {info['kind']}",
        f"axes:        {', '.join(axes)}",
        f"shape:       {dims(info['shape'])}",
        f"dtype:       {info['dtype']}",
        f"chunks:      {dims(info['chunks'])}",
        f"voxel size:  {voxel}",
        f"origin:      {origin}",
        f"size:        {_human_bytes(info['nbytes'])} uncompressed, "
        f"{_human_bytes(info['stored_bytes'])} on disk",
        f"compression: {', '.join(info['compressors']) or 'none'}",
        f"levels:      {len(info['levels'])}",
    ]
    for i, lv in enumerate(info["levels"]):
        scale = ", ".join(_fmt_num(lv["scale"][a]) for a in axes if a != "c")
        lines.append(f"  {i}  {dims(lv['shape']):<22} voxel {scale}")
    if info.get("channels"):
        lines.append(f"channels:    {', '.join(info['channels'])}")
    if info.get("labels"):
        lines.append(f"labels:      {', '.join(info['labels'])}")
    if info.get("vstain"):
        lines.append("provenance:")
        for key, value in info["vstain"].items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            lines.append(f"  {key}: {text}")
    for note in info.get("warnings") or ():
        lines.append(f"warning:     {note}")
    return "\n".join(lines)
