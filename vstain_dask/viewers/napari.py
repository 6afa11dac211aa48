"""The napari plugin of vstain-dask: a reader of its stains and CT volumes, and a viewer helper.

napari finds the reader through the npe2 manifest ``napari.yaml`` beside this module (declared
as the ``napari.manifest`` entry point ``vstain-dask``); napari offers it for folders whose
names end in ``.zarr`` (``napari OUT.zarr --plugin vstain-dask``, or choose "vstain-dask" when
napari asks which reader to use). The reader claims only volumes written by vstain-dask (a
``vstain`` attribute with ``complete``) and returns None for anything else, so napari falls
back to another reader. It needs no napari: it returns napari's layer data tuples
``(data, kwargs, layer_type)`` built from lazy dask arrays of the pyramid levels, which napari
reads one plane (2D) or the coarsest level (3D) at a time.

What a stain opens as:

- the stain, one multiscale RGBA image layer (``rgb=True``, channels last, moved there lazily
  per chunk): the stored alpha channel, or the paper's alpha ``255 - mean(R, G, B)``
  (:func:`vstain_dask.intensity.alpha_from_rgb`) computed per chunk when the stain has none,
  raised to at least 1 (a ray through white background alone then takes its colour, white,
  instead of none). In 3D it is rendered ``translucent``: each ray composites the voxels front
  to back by their alpha, so white background is see-through and the stained tissue inside is
  seen, as in the paper's volume renderings. napari 0.9 (vispy 0.17) renders RGB(A) volumes
  with their own colours; read as three additive grey channels (napari-ome-zarr's reading),
  the per-channel maxima of a brightfield stain make a white block. The layer's blending is
  ``minimum``: napari draws the bottom layer of that blending in its own colours, ignoring
  alpha (so the 2D planes keep the stain's colours instead of fading to the black canvas), and
  over another layer it keeps the darker colour, which suits a light-background stain;
- its labels (``labels/sample``, the sample mask) as labels layers with their stored colours
  and names (a ``features`` table napari shows under the cursor), hidden at first so that they
  do not tint the stain;
- its uncertainty (``uncertainty``, the spread between axes) as an image layer in its stored
  colour and window, blended additively over the stain, visible.

A CT volume opens with its stored omero window as contrast limits and its tissue labels (for a
phantom) visible at half opacity.

Every layer carries the NGFF scale, translation, units and axis names of level 0, so level 0
sits exactly where its NGFF transforms put it. napari (0.9) takes one scale and translate per
layer and places a lower level k itself, voxel j at level-0 voxel j * n0 / nk along each axis
(n0, nk: the axis' length at level 0 and at level k), ignoring the level's own NGFF transform;
no layer argument can give a level its own offset. Where that differs from the NGFF placement:

- an averaged level (a stain, a CT, the uncertainty: voxel j is the mean of level-0 voxels
  j * 2**k to (j + 1) * 2**k - 1, so NGFF puts it (2**k - 1) / 2 level-0 voxels further on)
  is drawn that far toward the origin: under half a voxel of that level. A label level keeps
  every 2**k-th voxel, which is where napari draws it;
- along an axis whose length does not divide by 2**k, nk = ceil(n0 / 2**k) and napari squeezes
  the level to level 0's length: its far end is drawn up to (2**k - 1) * (1 - 1 / nk) level-0
  voxels short as well, under one more voxel of that level.

So a coarse level is off by less than 0.5 of its own voxels (1.5 at the far end of an axis
that does not divide), and only while napari shows it: in 2D when zoomed out that far, and in
3D, which shows the coarsest level. Level 0 (2D zoomed in) is exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask.errors import InputError, VolumeFormatError

__all__ = ["get_reader", "read_layers", "open_in_napari"]

#: how napari is installed with what it needs to open a window (a Qt binding)
INSTALL_HINT = 'pip install "vstain-dask[napari]"'

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """napari's ``get_reader`` hook: :func:`read_layers` for a volume written by vstain-dask,
    None for anything else (napari then tries other readers)."""
    single = _single_path(path)
    return read_layers if single is not None and _written_by_vstain(single) else None


def _single_path(path: Any) -> Path | None:
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(path) if isinstance(path, str | os.PathLike) else None


def _attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of the zarr group at ``path``; None if it is not one."""
    import zarr

    if not path.is_dir():
        return None
    try:
        group = zarr.open_group(store=str(path), mode="r")
    except (OSError, ValueError, TypeError, KeyError, zarr.errors.BaseZarrError):
        return None
    return group.attrs.asdict()


def _ome(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    from vstain_dask.ngff._format import ome_metadata

    return ome_metadata(attrs)


def _written_by_vstain(path: Path) -> bool:
    """An OME-Zarr image whose ``vstain`` attributes record completeness, as every volume and
    stain vstain-dask writes does (label images and other tools' stores do not)."""
    attrs = _attrs(path)
    if attrs is None or "multiscales" not in _ome(attrs):
        return False
    vstain = attrs.get("vstain")
    return isinstance(vstain, Mapping) and "complete" in vstain


def read_layers(path: str | os.PathLike | Sequence[str]) -> list[LayerData]:
    """The napari layers of a stain or CT volume written by vstain-dask.

    Parameters
    ----------
    path : the OME-Zarr store (NGFF 0.4 or 0.5), e.g. ``OUT`` of ``vstain-dask stain``

    Returns
    -------
    list of (data, kwargs, layer_type)
        The image (stain or CT) first, then its labels, then the uncertainty of a stain; data
        are lists of dask arrays, one per pyramid level (the array itself when there is only
        one), (Z, Y, X, 4) uint8 RGBA for a stain.

    Raises
    ------
    VolumeFormatError
        Not an OME-Zarr image, or an incomplete one (a stain still running or interrupted).
    """
    from vstain_dask import ngff

    single = _single_path(path)
    if single is None:
        raise InputError(f"path must be one OME-Zarr store, got {path!r}")
    levels = _open_levels(single)
    stain = levels[0].attrs["kind"] == ngff.VolumeKind.RGB.value
    layers = [_stain_layer(levels) if stain else _intensity_layer(levels, single, visible=True)]
    labels_attrs = _attrs(single / "labels")
    for name in _ome(labels_attrs).get("labels", []) if labels_attrs else []:
        layers.append(_labels_layer(single / "labels" / str(name), visible=not stain))
    uncertainty = single / "uncertainty"
    if stain and _attrs(uncertainty) is not None:
        layers.append(_intensity_layer(_open_levels(uncertainty), uncertainty, visible=True))
    return layers


def _open_levels(path: Path) -> list:
    """Every pyramid level of an image as lazy xarray DataArrays (ngff.open_volume)."""
    from vstain_dask import ngff

    first = ngff.open_volume(path)
    return [first] + [ngff.open_volume(path, level=i) for i in range(1, first.attrs["n_levels"])]


def _placement(level0) -> dict[str, Any]:
    """napari's scale, translate, units and axis labels of a level's spatial axes."""
    spatial = [d for d in level0.dims if d != "c"]
    attrs = level0.attrs
    units = [attrs["units"].get(d) for d in spatial]
    placement = {
        "scale": tuple(float(attrs["scale"][d]) for d in spatial),
        "translate": tuple(float(attrs["translation"][d]) for d in spatial),
        "axis_labels": tuple(spatial),
    }
    if all(units):
        placement["units"] = tuple(units)
    return placement


def _pyramid(arrays: list) -> tuple[Any, bool]:
    """napari's data and ``multiscale`` flag: the list of levels, or the only level itself
    (napari 0.9's labels misread a one-level list)."""
    return (arrays, True) if len(arrays) > 1 else (arrays[0], False)


def _stain_layer(levels: Sequence) -> LayerData:
    """One multiscale RGBA layer, channels last (see the module's notes on 3D rendering)."""
    data, multiscale = _pyramid([_rgba_last(lv.data) for lv in levels])
    kwargs = {
        "name": levels[0].name,
        "rgb": True,
        "multiscale": multiscale,
        "contrast_limits": (0, 255),
        "rendering": "translucent",
        "blending": "minimum",
        "metadata": {"path": levels[0].attrs["path"], "vstain": levels[0].attrs["vstain"]},
        **_placement(levels[0]),
    }
    return data, kwargs, "image"


def _rgba_last(stain):
    """(C, ...) uint8 R, G, B(, A) to (..., 4) RGBA, per chunk: the stored alpha, else
    ``255 - mean(R, G, B)``."""
    from vstain_dask.intensity import alpha_from_rgb

    def rgba(block: np.ndarray) -> np.ndarray:
        alpha = block[3] if block.shape[0] == 4 else alpha_from_rgb(block)
        # at least 1: a ray through white background alone (alpha 0) takes its colour, white,
        # instead of none (black) in napari's translucent rendering
        return np.concatenate([block[:3], np.maximum(alpha, 1)[None]])

    stain = stain.rechunk({0: -1})
    stain = stain.map_blocks(
        rgba,
        chunks=((4,), *stain.chunks[1:]),
        dtype=np.uint8,
        meta=np.empty((0,) * stain.ndim, np.uint8),
    )
    return stain.transpose(*range(1, stain.ndim), 0)


def _intensity_layer(levels: Sequence, path: Path, *, visible: bool) -> LayerData:
    """A greyscale (or single-colour) image in its stored omero window and colour; a second
    image over the first (the uncertainty) blends additively."""
    channel = _omero_channel(_attrs(path) or {})
    window = channel.get("window") or {}
    data, multiscale = _pyramid([lv.data for lv in levels])
    kwargs: dict[str, Any] = {
        "name": levels[0].name,
        "multiscale": multiscale,
        "visible": visible,
        "colormap": _colormap(channel.get("color")),
        "blending": "additive" if path.name == "uncertainty" else "translucent",
        **_placement(levels[0]),
    }
    if "start" in window and "end" in window:
        kwargs["contrast_limits"] = (float(window["start"]), float(window["end"]))
    return data, kwargs, "image"


def _omero_channel(attrs: Mapping[str, Any]) -> dict[str, Any]:
    omero = _ome(attrs).get("omero", attrs.get("omero"))
    channels = omero.get("channels") if isinstance(omero, Mapping) else None
    return dict(channels[0]) if channels and isinstance(channels[0], Mapping) else {}


def _colormap(color: Any) -> str:
    """napari's colormap for an omero colour: ``gray`` for white, else black to the colour."""
    if not isinstance(color, str) or len(color) != 6 or color.upper() == "FFFFFF":
        return "gray"
    return f"#{color.lower()}"


def _labels_layer(path: Path, *, visible: bool) -> LayerData:
    """A label image with its NGFF ``image-label`` colours and class names."""
    levels = _open_levels(path)
    meta = _ome(_attrs(path) or {}).get("image-label") or {}
    data, multiscale = _pyramid([lv.data for lv in levels])
    kwargs: dict[str, Any] = {
        "name": path.name,
        "multiscale": multiscale,
        "visible": visible,
        "opacity": 0.5,
        **_placement(levels[0]),
    }
    colors = {int(c["label-value"]): c["rgba"] for c in meta.get("colors", [])}
    if colors:
        # a value the table does not list is drawn transparent, as NGFF leaves it to the viewer
        kwargs["colormap"] = {None: (0.0, 0.0, 0.0, 0.0)} | {
            v: tuple(c / 255 for c in rgba) for v, rgba in colors.items()
        }
    features = _label_features(meta.get("properties", []))
    if features:
        kwargs["features"] = features
    return data, kwargs, "labels"


def _label_features(properties: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """napari's features table of NGFF ``properties``: an ``index`` column (the label value)
    and one column per property (``sample``, ``tissue``: the class names)."""
    rows = [p for p in properties if "label-value" in p]
    if not rows:
        return {}
    keys = sorted({k for p in rows for k in p} - {"label-value"})
    table = {"index": [int(p["label-value"]) for p in rows]}
    return table | {k: [p.get(k, "") for p in rows] for k in keys}


def _import_napari():
    """napari with a Qt binding, or a one-line InputError that says how to install them."""
    try:
        import napari
        import qtpy  # noqa: F401  (raises ImportError when no Qt binding is installed)
    except ImportError as e:
        raise InputError(f"napari with a Qt binding is needed ({e}); {INSTALL_HINT}") from e
    return napari


def open_in_napari(path: str | os.PathLike, *, ndisplay: int = 2, block: bool = True) -> Any:
    """Open a stain or CT volume written by vstain-dask in a napari window.

    Parameters
    ----------
    path : the OME-Zarr store
    ndisplay : 2 (planes) or 3 (volume rendering)
    block : run napari's event loop until the window is closed; False returns at once (to
        take screenshots or add layers)

    Returns
    -------
    napari.Viewer

    Raises
    ------
    InputError
        napari or a Qt binding is not installed, or there is no display to open a window on.
    VolumeFormatError
        The store is not a vstain-dask output, or is incomplete.
    """
    if ndisplay not in (2, 3):
        raise InputError(f"ndisplay must be 2 or 3, got {ndisplay!r}")
    if not _written_by_vstain(Path(path)):
        raise VolumeFormatError(
            f"{path} is not a vstain-dask output (a stain or a volume it wrote, marked complete "
            "or not in its vstain attributes)"
        )
    layers = read_layers(path)  # errors about the store come before any window
    _require_display()
    napari = _import_napari()
    from napari.layers import Layer

    viewer = napari.Viewer(title=f"vstain-dask: {Path(path).name}")
    for data, kwargs, layer_type in layers:
        viewer.add_layer(Layer.create(data, kwargs, layer_type))
    viewer.dims.ndisplay = ndisplay
    if ndisplay == 3:
        viewer.camera.angles = (0.0, 30.0, 60.0)  # oblique, so that depth shows
    if block:
        napari.run()
    return viewer


def _require_display() -> None:
    """On Linux, a window needs a display: without one Qt would abort the process."""
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError(
            "no display to open napari on (DISPLAY is not set): run it where a desktop is, "
            "with ssh -X, or view the stain with --neuroglancer in a browser"
        )
