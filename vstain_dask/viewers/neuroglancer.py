"""Neuroglancer views of a stain: the viewer state, and a local server for the stores and the
client.

:func:`viewer_state` is a pure function from the images' metadata (:class:`Image`) to a
neuroglancer JSON state: the stain in RGB (the channel axis renamed ``c^`` and a shader that
emits R, G, B), the CT with its stored display window, the labels as segmentation layers in their
stored colours and with their class names, the uncertainty in its colour and range, and the xy
plane (the z-plane) in the main panel. :func:`plan_view` checks an output and describes what it
holds; :func:`serve` serves the stores (and neuroglancer's own client, shipped inside the
``neuroglancer`` Python package, so that viewing needs no internet) over HTTP on 127.0.0.1 until
SIGINT or SIGTERM.

The class names reach neuroglancer as a second data source of each segmentation layer: a
``precomputed://`` segment property map (:func:`segment_property_map`) that the server makes
from the label image's NGFF ``image-label`` ``properties`` at ``/properties/NAME/.../info``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib.util
import json
import math
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from vstain_dask.errors import InputError, VolumeFormatError

__all__ = [
    "CLIENT_PATH",
    "DEFAULT_PORT",
    "Image",
    "View",
    "bundled_client",
    "plan_view",
    "segment_property_map",
    "serve",
    "state_url",
    "viewer_state",
]

#: the port a view listens on unless told otherwise: fixed, so that its URL (and an SSH tunnel
#: to it, ``ssh -L 8765:127.0.0.1:8765 HOST``) stays the same between runs
DEFAULT_PORT = 8765
#: where the bundled client is served: the client of the ``neuroglancer`` package reads a token
#: from a ``/v/TOKEN/`` path, and takes its state from the URL's ``#!`` fragment
CLIENT_PATH = "/v/vstain/"
_TOKEN = "vstain"
_DATA = "/data/"
_PROPERTIES = "/properties/"
_INSTALL_HINT = "pip install 'vstain-dask[view]'"

# metres per unit of the NGFF space units a stain can carry; neuroglancer states use SI units
_METRES = {
    "angstrom": 1e-10,
    "picometer": 1e-12,
    "nanometer": 1e-9,
    "micrometer": 1e-6,
    "millimeter": 1e-3,
    "centimeter": 1e-2,
    "decimeter": 1e-1,
    "meter": 1.0,
}


@dataclasses.dataclass(frozen=True)
class Image:
    """What a viewer state needs to know of one OME-Zarr image.

    Parameters
    ----------
    url : HTTP URL of the image group
    zarr_format : 2 (NGFF 0.4) or 3 (NGFF 0.5)
    axes : NGFF axis names, e.g. ``("c", "z", "y", "x")``
    shape : level-0 shape, in ``axes`` order
    scale, translation : level-0 voxel size and origin, in the axis unit
    units : NGFF unit of each axis (None for ``c`` or where none is recorded)
    window : the omero window (start, end) of the first channel, in image values
    limits : the omero (min, max) a contrast slider spans
    color : the omero colour of the first channel, 6 hex digits
    segment_colors : label images: ``{label value: "#rrggbb"}`` of the visible classes
    segment_properties : label images: the URL of their segment property map (the class
        names), served as neuroglancer's ``precomputed`` format; None without names
    """

    url: str
    zarr_format: int
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    units: tuple[str | None, ...]
    window: tuple[float, float] | None = None
    limits: tuple[float, float] | None = None
    color: str | None = None
    segment_colors: Mapping[int, str] | None = None
    segment_properties: str | None = None

    @property
    def channels(self) -> int:
        """The size of the channel axis, 0 without one."""
        return self.shape[self.axes.index("c")] if "c" in self.axes else 0

    def source(self) -> str:
        """The neuroglancer data source: ``zarr3://`` (NGFF 0.5) or ``zarr2://`` (NGFF 0.4)."""
        return f"zarr{self.zarr_format}://{self.url.rstrip('/')}/"

    def dimension(self, axis: str) -> list:
        """``[scale, unit]`` of a spatial axis in neuroglancer's SI units."""
        i = self.axes.index(axis)
        unit = self.units[i]
        if unit in _METRES:
            # rounded to 12 digits: 5 µm is 5e-06 m, not 4.9999999999999996e-06
            return [float(f"{self.scale[i] * _METRES[unit]:.12g}"), "m"]
        return [self.scale[i], ""]


# -- the state (pure) ---------------------------------------------------------------------------

_RGB_SHADER = """\
void main() {
  emitRGB(vec3(toNormalized(getDataValue(0)), toNormalized(getDataValue(1)),
               toNormalized(getDataValue(2))));
}
"""
# with an alpha channel: opaque in the panels (a brightfield stain's white would otherwise show
# the black background), the stain's alpha on request, e.g. for a volume rendering
_RGBA_SHADER = """\
#uicontrol bool use_alpha checkbox(default=false)
void main() {
  vec3 rgb = vec3(toNormalized(getDataValue(0)), toNormalized(getDataValue(1)),
                  toNormalized(getDataValue(2)));
  if (use_alpha) {
    emitRGBA(vec4(rgb, toNormalized(getDataValue(3))));
  } else {
    emitRGB(rgb);
  }
}
"""
_GREY_SHADER = """\
#uicontrol invlerp normalized
void main() {
  emitGrayscale(normalized());
}
"""
_COLOUR_SHADER = """\
#uicontrol invlerp normalized
#uicontrol vec3 color color(default="#{color}")
void main() {{
  emitRGBA(vec4(color, normalized()));
}}
"""


def viewer_state(
    stain: Image,
    *,
    name: str = "stain",
    ct: Image | None = None,
    labels: Mapping[str, Image] | None = None,
    uncertainty: Image | None = None,
) -> dict[str, Any]:
    """The neuroglancer state that shows a stain with its CT, labels and uncertainty.

    Layers from bottom to top: the CT (grey, its omero window), the stain (RGB, opaque), the
    labels (segmentation, their stored colours, their class names from ``segment_properties``
    in the segment list and under the cursor; hidden at first) and the uncertainty (its
    colour, alpha from its window; hidden at first). The global dimensions are ordered x, y, z,
    so that the ``xy`` layout's panel is the z-plane; it starts at the centre of the stain,
    zoomed to show its whole xy extent.

    Parameters
    ----------
    stain : an RGB(A) image (``c`` axis of 3 or 4 channels), or a greyscale volume, which is
        then shown as the CT is
    name : the stain layer's name
    ct, labels, uncertainty : the other images; ``labels`` keyed by layer name

    Returns
    -------
    dict
        JSON-serialisable; :func:`state_url` puts it in a URL.
    """
    spatial = [a for a in ("x", "y", "z") if a in stain.axes]
    layers = []
    if ct is not None:
        layers.append(_intensity_layer("CT", ct))
    if stain.channels in (3, 4):
        layers.append(_rgb_layer(name, stain))
    else:
        layers.append(_intensity_layer(name, stain))
    for label_name, image in (labels or {}).items():
        layers.append(_segmentation_layer(label_name, image))
    if uncertainty is not None:
        layer = _intensity_layer("uncertainty", uncertainty, color=True)
        layers.append({**layer, "visible": False})
    return {
        "dimensions": {a: stain.dimension(a) for a in spatial},
        "position": [_centre(stain, a) for a in spatial],
        "crossSectionScale": _fit_scale(stain),
        "layers": layers,
        "layout": "xy",
    }


def _centre(image: Image, axis: str) -> float:
    """The middle voxel's centre along ``axis``, in the image's level-0 voxels (the global
    units): voxel ``i`` spans ``[i, i + 1)``, so a plane at its centre shows it alone."""
    i = image.axes.index(axis)
    return math.floor(image.translation[i] / image.scale[i] + image.shape[i] / 2) + 0.5


def _fit_scale(image: Image, *, panel: int = 600) -> float:
    """Voxels per screen pixel that fit the image's xy extent into a ``panel``-pixel panel."""
    extent = max(image.shape[image.axes.index(a)] for a in ("x", "y") if a in image.axes)
    return extent / panel


def _rgb_transform(image: Image) -> dict[str, Any]:
    """A source transform that keeps the image's own axes and scales, with ``c`` renamed
    ``c^``: neuroglancer's name for a channel axis that a shader reads as one pixel."""
    dims = {}
    for axis in image.axes:
        dims["c^" if axis == "c" else axis] = [1, ""] if axis == "c" else image.dimension(axis)
    return {"outputDimensions": dims}


def _rgb_layer(name: str, image: Image) -> dict[str, Any]:
    return {
        "type": "image",
        "name": name,
        "source": {"url": image.source(), "transform": _rgb_transform(image)},
        "shader": _RGBA_SHADER if image.channels == 4 else _RGB_SHADER,
        "opacity": 1.0,
    }


def _intensity_layer(name: str, image: Image, *, color: bool = False) -> dict[str, Any]:
    """A greyscale (or, with ``color``, a one-colour translucent) layer in its omero window."""
    control: dict[str, Any] = {}
    if image.window is not None:
        control["range"] = list(image.window)
    if image.limits is not None:
        control["window"] = list(image.limits)
    shader = _COLOUR_SHADER.format(color=(image.color or "FFFFFF").lower()) if color else None
    return {
        "type": "image",
        "name": name,
        "source": image.source(),
        "shader": shader or _GREY_SHADER,
        "shaderControls": {"normalized": control} if control else {},
        "opacity": 1.0,
    }


def _segmentation_layer(name: str, image: Image) -> dict[str, Any]:
    colors = dict(image.segment_colors or {})
    source: str | list[str] = image.source()
    if image.segment_properties is not None:  # the class names: a second data source
        source = [source, f"precomputed://{image.segment_properties.rstrip('/')}/"]
    layer: dict[str, Any] = {
        "type": "segmentation",
        "name": name,
        "source": source,
        "visible": False,
    }
    if colors:
        layer["segments"] = [str(v) for v in sorted(colors)]
        layer["segmentColors"] = {str(v): c for v, c in sorted(colors.items())}
    return layer


def state_url(client: str, state: Mapping[str, Any]) -> str:
    """``client#!{state}``: the URL that opens ``state`` in a neuroglancer client."""
    text = json.dumps(state, separators=(",", ":"))
    return f"{client}#!{urllib.parse.quote(text, safe='')}"


# -- what an output holds -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class View:
    """A checked output and the stores that show it.

    Attributes
    ----------
    stain : the output (an RGB(A) stain, or a greyscale volume)
    ct : the CT shown under it, or None
    ct_note : how the CT was chosen, or why none is shown (for the user); None if not asked
    labels : the label images of the output, by name
    uncertainty : the output's uncertainty image, or None
    stores : URL name -> store folder: what the server serves under ``/data/``
    ct_labels : the label images of the CT (a phantom's ``tissue``), by name
    """

    stain: Path
    ct: Path | None
    ct_note: str | None
    labels: tuple[str, ...]
    uncertainty: Path | None
    stores: Mapping[str, Path]
    ct_labels: tuple[str, ...] = ()

    def state(self, base: str) -> dict[str, Any]:
        """The viewer state with the stores served at ``base`` (``http://127.0.0.1:PORT``)."""
        names = {path: name for name, path in self.stores.items()}
        data = f"{base.rstrip('/')}{_DATA}"
        stain_url = f"{data}{names[self.stain]}"
        ct = _describe(self.ct, f"{data}{names[self.ct]}") if self.ct is not None else None
        labels = {
            name: _describe_labels(base, names[self.stain], self.stain, name)
            for name in self.labels
        }
        for name in self.ct_labels if self.ct is not None else ():
            key = name if name not in labels else f"CT {name}"
            labels[key] = _describe_labels(base, names[self.ct], self.ct, name)
        unc = None
        if self.uncertainty is not None:
            rel = self.uncertainty.relative_to(self.stain).as_posix()
            unc = _describe(self.uncertainty, f"{stain_url}/{rel}")
        return viewer_state(
            _describe(self.stain, stain_url), name=_stem(self.stain), ct=ct, labels=labels,
            uncertainty=unc,
        )  # fmt: skip


def _describe_labels(base: str, store: str, image: Path, name: str) -> Image:
    """A label image of ``image`` (served as ``store``), with the URL of its class names."""
    rel = f"{store}/labels/{name}"
    described = _describe(image / "labels" / name, f"{base.rstrip('/')}{_DATA}{rel}")
    if _label_property_map(image / "labels" / name) is None:
        return described
    return dataclasses.replace(
        described, segment_properties=f"{base.rstrip('/')}{_PROPERTIES}{rel}"
    )


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def plan_view(out: str | os.PathLike, *, ct: str | os.PathLike | None = None) -> View:
    """Check that ``out`` can be viewed and find what goes with it.

    Parameters
    ----------
    out : a stain (``vstain-dask stain``) or a greyscale volume (``vstain-dask import``)
    ct : the CT to show under the stain; None: the stain's recorded input, if it is there

    Raises
    ------
    VolumeFormatError
        ``out`` is not an OME-Zarr image that can be viewed (a plain array, a label image, an
        image whose channels are not RGB(A)), or it is incomplete.
    InputError
        ``ct`` is not a complete greyscale OME-Zarr volume.
    """
    from vstain_dask.ngff._read import _read_multiscale, _require_complete

    ms = _read_multiscale(out)
    _check_viewable(ms)
    _require_complete(ms)
    stain = ms.path.resolve()
    ct_path, note = _choose_ct(ms.vstain, ct)
    stores = {stain.name: stain}
    if ct_path is not None:
        stores[ct_path.name if ct_path.name not in stores else f"ct-{ct_path.name}"] = ct_path
    return View(
        stain=stain, ct=ct_path, ct_note=note, labels=_label_images(stain, ms.labels),
        uncertainty=_uncertainty(stain, ms.vstain), stores=stores,
        ct_labels=_label_images(ct_path, _read_multiscale(ct_path).labels) if ct_path else (),
    )  # fmt: skip


def _label_images(image: Path, names: Sequence[str]) -> tuple[str, ...]:
    """The listed label images of ``image`` that are there and readable."""
    return tuple(n for n in names if _is_image(image / "labels" / n))


def _check_viewable(ms) -> None:
    from vstain_dask.ngff import VolumeKind

    what = (
        "view shows OME-Zarr images: a stain from `vstain-dask stain` or a volume from "
        "`vstain-dask import`"
    )
    if ms.ngff_version is None:
        raise VolumeFormatError(
            f"{ms.path} is a plain zarr array, not a vstain-dask output; {what}"
        )
    if ms.kind is VolumeKind.LABELS:
        image = ms.path.parent.parent
        raise VolumeFormatError(
            f"{ms.path} is a label image, not a stain; view the image it belongs to ({image})"
        )
    if "c" in ms.axes and ms.kind is not VolumeKind.RGB:
        n = ms.levels[0].array.shape[ms.axes.index("c")]
        raise VolumeFormatError(
            f"{ms.path} has {n} channels that are not R, G, B(, A), so it is not a vstain-dask "
            f"stain; {what}"
        )


def _is_image(path: Path) -> bool:
    from vstain_dask.ngff._read import _read_multiscale

    try:
        return _read_multiscale(path).ngff_version is not None
    except VolumeFormatError:
        return False


def _uncertainty(stain: Path, vstain: Mapping) -> Path | None:
    """The uncertainty image of a stain: where its provenance says, else ``uncertainty``
    inside the output (where ``vstain-dask stain --uncertainty`` writes it)."""
    recorded = vstain.get("uncertainty") if isinstance(vstain, Mapping) else None
    candidates = [recorded] if isinstance(recorded, str) else []
    for rel in [*candidates, "uncertainty"]:
        path = (stain / rel).resolve()
        if path.is_relative_to(stain) and _is_image(path):
            return path
    return None


def _choose_ct(vstain: Mapping, ct: str | os.PathLike | None) -> tuple[Path | None, str | None]:
    """The CT to show and a note saying where it came from (or why there is none)."""
    if ct is not None:
        path = Path(ct).expanduser()
        _check_ct(path, "--ct")
        return path.resolve(), None
    recorded = (vstain.get("input") or {}).get("path") if isinstance(vstain, Mapping) else None
    if not recorded:
        return None, None
    path = Path(recorded)
    if not path.exists():
        return None, f"the stain's input CT {path} is not there; give --ct CT.ome.zarr to show it"
    try:
        _check_ct(path, "the stain's input CT")
    except (InputError, VolumeFormatError) as e:
        return None, f"CT not shown: {e}"
    return path.resolve(), f"CT: {path} (the stain's recorded input; --ct to choose another)"


def _check_ct(path: Path, what: str) -> None:
    from vstain_dask.ngff._read import _read_multiscale, _require_complete

    try:
        ms = _read_multiscale(path)
        _require_complete(ms)
    except VolumeFormatError as e:
        raise InputError(f"{what}: {e}") from e
    if ms.ngff_version is None or "c" in ms.axes:
        raise InputError(
            f"{what} must be a greyscale OME-Zarr volume (axes z, y, x), got {path} with axes "
            f"({', '.join(ms.axes)}){'' if ms.ngff_version else ' and no OME-Zarr metadata'}"
        )


def _describe(path: Path, url: str) -> Image:
    """An image's metadata as :func:`viewer_state` needs it."""
    from vstain_dask.ngff._format import ome_metadata
    from vstain_dask.ngff._read import _read_multiscale

    ms = _read_multiscale(path)
    meta = ome_metadata(_group_attrs(ms.path))
    level0 = ms.levels[0]
    channel = _first_channel(meta.get("omero"))
    window = channel.get("window") if isinstance(channel.get("window"), Mapping) else {}
    if _pair(window, "start", "end") is None and _is_greyscale(ms):
        window = _sampled_window(ms)
    return Image(
        url=url,
        zarr_format=ms.zarr_format,
        axes=ms.axes,
        shape=tuple(level0.array.shape),
        scale=level0.scale,
        translation=level0.translation,
        units=ms.units,
        window=_pair(window, "start", "end"),
        limits=_pair(window, "min", "max"),
        color=channel.get("color") if isinstance(channel.get("color"), str) else None,
        segment_colors=_segment_colors(meta.get("image-label")),
    )


def _is_greyscale(ms) -> bool:
    from vstain_dask.ngff import VolumeKind

    return "c" not in ms.axes and ms.kind is VolumeKind.INTENSITY


def _sampled_window(ms) -> dict[str, float]:
    """The window the writers store (robust percentiles of a bounded sample), for a volume
    written without one (by another tool, or before windows were stored)."""
    from vstain_dask.ngff._write import _robust_window, _window_sample

    display = _robust_window(
        _window_sample([lv.array for lv in ms.levels]), ms.levels[0].array.dtype
    )
    if display is None:
        return {}
    return {"start": display.start, "end": display.end}


def _group_attrs(path: Path) -> dict[str, Any]:
    import zarr

    return zarr.open_group(store=str(path), mode="r").attrs.asdict()


def _first_channel(omero: Any) -> Mapping[str, Any]:
    channels = omero.get("channels") if isinstance(omero, Mapping) else None
    first = channels[0] if isinstance(channels, Sequence) and channels else None
    return first if isinstance(first, Mapping) else {}


def _pair(window: Mapping, low: str, high: str) -> tuple[float, float] | None:
    a, b = window.get(low), window.get(high)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    return (float(a), float(b)) if numbers and a < b else None


def _segment_colors(image_label: Any) -> dict[int, str] | None:
    """``{value: "#rrggbb"}`` of the label values an NGFF ``image-label`` colours visibly."""
    if not isinstance(image_label, Mapping) or not isinstance(image_label.get("colors"), list):
        return None
    out = {}
    for entry in image_label["colors"]:
        value, rgba = entry.get("label-value"), entry.get("rgba")
        if isinstance(value, int) and isinstance(rgba, list) and len(rgba) == 4 and rgba[3] > 0:
            out[value] = "#{:02x}{:02x}{:02x}".format(*rgba[:3])
    return out or None


def segment_property_map(image_label: Any) -> dict[str, Any] | None:
    """Neuroglancer's segment property map (``neuroglancer_segment_properties``, inline) of
    the class names in an NGFF ``image-label``.

    Each class of ``properties`` whose ``colors`` entry is not fully transparent (``outside``
    of a mask, ``air`` of a phantom: classes meant to be left undrawn) is listed by its label
    value; its first text property (``tissue``, ``sample``) is its ``label``, the name
    neuroglancer shows in the segment list and under the cursor; further text properties
    follow as ``string`` properties.

    Returns
    -------
    dict or None
        The map's ``info`` JSON; None when the image-label names no class.
    """
    if not isinstance(image_label, Mapping) or not isinstance(image_label.get("properties"), list):
        return None
    hidden = {
        c.get("label-value")
        for c in image_label.get("colors") or []
        if isinstance(c, Mapping) and isinstance(c.get("rgba"), list) and c["rgba"][3:4] == [0]
    }
    rows = {}
    for entry in image_label["properties"]:
        value = entry.get("label-value") if isinstance(entry, Mapping) else None
        if isinstance(value, int) and not isinstance(value, bool) and value not in hidden:
            rows[value] = {
                k: v for k, v in entry.items() if k != "label-value" and isinstance(v, str)
            }
    keys = list(dict.fromkeys(k for texts in rows.values() for k in texts))
    if not rows or not keys:
        return None
    ids = sorted(rows)
    properties = [
        {
            "id": k,
            "type": "label" if i == 0 else "string",
            "values": [rows[v].get(k, "") for v in ids],
        }
        for i, k in enumerate(keys)
    ]
    return {
        "@type": "neuroglancer_segment_properties",
        "inline": {"ids": [str(v) for v in ids], "properties": properties},
    }


def _label_property_map(path: Path) -> dict[str, Any] | None:
    """The segment property map of the label image at ``path``; None if it names no class
    (or is no label image)."""
    import zarr

    from vstain_dask.ngff._format import ome_metadata

    try:
        attrs = _group_attrs(path)
    except (OSError, ValueError, TypeError, KeyError, zarr.errors.BaseZarrError):
        return None  # not a zarr group: names no class
    return segment_property_map(ome_metadata(attrs).get("image-label"))


# -- the server ---------------------------------------------------------------------------------


def bundled_client() -> Path:
    """The folder of the neuroglancer client shipped in the ``neuroglancer`` Python package.

    Found without importing the package (which would start its own machinery).

    Raises
    ------
    InputError
        The package is not installed, or holds no built client.
    """
    spec = importlib.util.find_spec("neuroglancer")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"viewing in neuroglancer needs its client: {_INSTALL_HINT} (or give --client-url "
            "with the address of a neuroglancer client, which needs internet)"
        )
    client = Path(next(iter(spec.submodule_search_locations))) / "static" / "client"
    if not (client / "index.html").is_file():
        raise InputError(
            f"the installed neuroglancer package has no built client in {client}; reinstall it "
            f"with {_INSTALL_HINT}, or give --client-url"
        )
    return client


_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "application/javascript",
    ".css": "text/css",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".json": "application/json",
}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_COPY_BYTES = 1 << 20
# the bundled client keeps an event stream to the Python server it was built for open; the
# stream is answered (and kept quiet) so that the client does not report a lost server
_KEEPALIVE_S = 15.0


class _Server(ThreadingHTTPServer):
    """A threaded HTTP server that can close every open connection when it stops."""

    daemon_threads = False  # server_close joins the request threads: nothing is left running

    def __init__(self, address, handler, *, stores: Mapping[str, Path], client: Path | None):
        self.stores = dict(stores)
        self.client = client
        self.stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, handler)

    def process_request_thread(self, request, client_address):
        with self._lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._open.discard(request)

    def stop(self) -> None:
        """End the held event streams and idle connections, close the socket, join the threads."""
        self.stopping.set()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    """GET/HEAD of the client (``/v/vstain/``) and of the stores' files (``/data/NAME/``),
    with byte ranges and CORS headers; nothing else."""

    server: _Server
    timeout = 30  # an idle connection does not hold a thread for ever

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # the terminal shows the URL, not every chunk request

    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length")
        super().end_headers()

    def do_OPTIONS(self):  # noqa: N802 (http.server's naming)
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Range, Content-Type")
        self.send_header("Access-Control-Allow-Private-Network", "true")
        self.end_headers()

    def do_HEAD(self):  # noqa: N802
        self._get(body=False)

    def do_GET(self):  # noqa: N802
        self._get(body=True)

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(min(length, 1 << 20))
        self.send_error(HTTPStatus.NOT_FOUND)

    def _get(self, *, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if path == "/":
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", CLIENT_PATH)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == f"/events/{_TOKEN}" and self.server.client is not None:
            self._event_stream()
        elif path.startswith(CLIENT_PATH) and self.server.client is not None:
            name = path[len(CLIENT_PATH) :] or "index.html"
            ok = _STATIC_NAME.fullmatch(name) is not None
            self._file(self.server.client / name if ok else None, body=body)
        elif path.startswith(_DATA):
            self._file(self._store_file(path[len(_DATA) :]), body=body)
        elif path.startswith(_PROPERTIES) and path.endswith("/info"):
            self._properties(self._store_file(path[len(_PROPERTIES) : -len("/info")]), body=body)
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def _store_file(self, rel: str) -> Path | None:
        """The file of a store that ``/data/rel`` names; None outside the stores."""
        name, _, inner = rel.partition("/")
        root = self.server.stores.get(name)
        if root is None or any(part in ("..", "") for part in inner.split("/")[:-1]):
            return None
        path = (root / inner).resolve()
        return path if path.is_relative_to(root) else None

    def _file(self, path: Path | None, *, body: bool) -> None:
        if path is None or not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        size = path.stat().st_size
        span = _byte_range(self.headers.get("Range"), size)
        if span is None:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, stop = span
        partial = "Range" in self.headers and (start, stop) != (0, size)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if partial else HTTPStatus.OK)
        self.send_header("Content-Type", _MIME.get(path.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "bytes")
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.end_headers()
        if body:
            with path.open("rb") as f:
                f.seek(start)
                _copy(f, self.wfile, stop - start)

    def _properties(self, labels: Path | None, *, body: bool) -> None:
        """The segment property map of a served label image, made from its metadata."""
        found = _label_property_map(labels) if labels is not None and labels.is_dir() else None
        if found is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        text = json.dumps(found).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if body:
            self.wfile.write(text)

    def _event_stream(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            while not self.server.stopping.is_set():
                self.wfile.write(b": vstain-dask serves no live state\n\n")
                self.wfile.flush()
                self.server.stopping.wait(_KEEPALIVE_S)
        except OSError:
            pass  # the browser went away


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, stop) of one ``Range: bytes=a-b`` (the whole file without one); None when
    it cannot be satisfied."""
    if not header:
        return 0, size
    m = _RANGE.fullmatch(header.strip())
    if m is None or m.groups() == ("", ""):
        return 0, size  # several ranges or another unit: the whole file, as RFC 9110 allows
    first, last = m.groups()
    if first == "":  # the last N bytes
        n = int(last)
        return (max(size - n, 0), size) if n > 0 and size > 0 else None
    start = int(first)
    stop = min(int(last) + 1, size) if last else size
    return (start, stop) if start < size and start < stop else None


def _copy(src, dst, n: int) -> None:
    while n > 0:
        block = src.read(min(_COPY_BYTES, n))
        if not block:
            return
        dst.write(block)
        n -= len(block)


def serve(
    view: View,
    *,
    port: int = DEFAULT_PORT,
    client_url: str | None = None,
    on_ready: Callable[[str, str], None] | None = None,
) -> None:
    """Serve ``view``'s stores (and the bundled client) on 127.0.0.1 until Ctrl-C.

    Parameters
    ----------
    view : from :func:`plan_view`
    port : the port, 0 for a free one the system picks
    client_url : a neuroglancer client to point at instead of the bundled one (e.g. a public
        one, which needs internet); None serves the bundled client at ``/v/vstain/``
    on_ready : called with (the viewer URL, the server's base URL) once the server listens

    Returns when a :class:`KeyboardInterrupt` (Ctrl-C; the command line turns SIGTERM into
    one too) stops it, with the port free and no request thread left.

    Raises
    ------
    InputError
        The port is in use, or the bundled client is not installed (without ``client_url``).
    """
    client = bundled_client() if client_url is None else None
    try:
        server = _Server(("127.0.0.1", port), _Handler, stores=view.stores, client=client)
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            why = "in use" if e.errno == errno.EADDRINUSE else "not allowed for this user"
            raise InputError(
                f"port {port} on 127.0.0.1 is {why}; choose another with --port N "
                "(--port 0 picks a free one)"
            ) from e
        raise
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        url = state_url(client_url or f"{base}{CLIENT_PATH}", view.state(base))
        if on_ready is not None:
            on_ready(url, base)
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass  # the way to stop it
    finally:
        server.stop()
