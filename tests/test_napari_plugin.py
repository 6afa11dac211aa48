"""The napari plugin: its npe2 manifest, napari's discovery of it, the layers its reader gives for
a real stain and CT, and (in a real napari window on an X display) what the stain looks like in
2D and 3D.

The stain is real: a phantom CT (tissue labels included) stained with the bundled model along z
and y with the sample mask and the uncertainty, on the shared two-worker cluster. Its x extent
(132) gives a two-level pyramid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from vstain_dask import ngff
from vstain_dask.errors import InputError, VolumeFormatError
from vstain_dask.intensity import alpha_from_rgb
from vstain_dask.viewers import napari as plugin

pytestmark = pytest.mark.filterwarnings(
    # napari and npe2 (0.9 / 0.10) still declare pydantic-v1-style fields when imported
    "ignore::pydantic.warnings.PydanticDeprecatedSince20",
)

CT_SHAPE = (12, 64, 132)
CHUNKS = (6, 32, 44)
VOXEL = 5.0


@pytest.fixture(scope="module")
def ct_store(tmp_path_factory) -> Path:
    from vstain_dask.testing import small_phantom_store

    root = tmp_path_factory.mktemp("napari")
    return small_phantom_store(root, shape=CT_SHAPE, chunks=CHUNKS, voxel_size=VOXEL,
                               name="ct.ome.zarr")  # fmt: skip


@pytest.fixture(scope="module")
def stain(ct_store, cluster) -> Path:
    """A stain without an alpha channel, with the sample mask and the uncertainty."""
    from distributed import Client

    from vstain_dask.stain import StainConfig, default_model_path, stain_to_zarr

    out = ct_store.parent / "stain.ome.zarr"
    config = StainConfig(axes="zy", mask=True, uncertainty=True, tile=64, step=48,
                         ct_levels=_true_ct_levels(ct_store))  # fmt: skip
    with Client(cluster) as client:
        stain_to_zarr(ct_store, out, model=default_model_path(), config=config, client=client,
                      chunks=CHUNKS, progress=False)  # fmt: skip
    return out


def _true_ct_levels(ct_store: Path) -> tuple[float, float]:
    """Mean CT of the phantom's cortical bone and of its embedding (the sample mask's levels),
    from its tissue labels: too few planes this small for the automatic estimate."""
    from vstain_dask.phantom import Tissue

    ct = zarr.open_array(str(ct_store / "0"), mode="r")[...]
    tissue = zarr.open_array(str(ct_store / "labels/tissue/0"), mode="r")[...]
    return tuple(float(ct[tissue == t].mean()) for t in (Tissue.CORTICAL_BONE, Tissue.EMBEDDING))


def _group_attrs(path: Path) -> dict:
    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    return attrs.get("ome", attrs)


def _layers(path: Path) -> dict[str, tuple]:
    reader = plugin.get_reader(str(path))
    assert reader is not None, f"the plugin does not claim {path}"
    return {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in reader(str(path))}


# -- the manifest and napari's discovery ----------------------------------------------------------


def test_manifest_is_valid_and_declared_as_entry_point():
    from importlib.metadata import entry_points
    from importlib.resources import files

    import npe2
    from npe2.manifest.utils import import_python_name

    (ep,) = [e for e in entry_points(group="napari.manifest") if e.name == "vstain-dask"]
    package, resource = ep.value.split(":")
    manifest = npe2.PluginManifest.from_file(files(package) / resource)  # validates
    assert (manifest.name, manifest.display_name) == ("vstain-dask", "vstain-dask")
    (reader,) = manifest.contributions.readers
    assert reader.accepts_directories and reader.filename_patterns == ["*.zarr"]
    (command,) = manifest.contributions.commands
    assert command.id == reader.command
    assert import_python_name(command.python_name) is plugin.get_reader
    cli = subprocess.run([str(Path(sys.executable).parent / "npe2"), "validate", "vstain-dask"],
                         capture_output=True, text=True)  # fmt: skip
    assert cli.returncode == 0 and "valid" in cli.stdout, cli.stdout + cli.stderr


def test_napari_discovers_the_reader_and_reads_through_it(stain, tmp_path):
    import npe2
    from npe2.io_utils import read

    pm = npe2.PluginManager.instance()
    pm.discover()
    offered = [r.plugin_name for r in pm.iter_compatible_readers([str(stain)])]
    assert "vstain-dask" in offered
    layer_data = read([str(stain)], plugin_name="vstain-dask", stack=False)
    assert [(kw["name"], kind) for _, kw, kind in layer_data] == [
        ("stain", "image"), ("sample", "labels"), ("uncertainty", "image")]  # fmt: skip
    # a store of another tool: our reader declines, so napari uses another one
    other = tmp_path / "other.ome.zarr"
    shutil.copytree(stain, other)
    group = zarr.open_group(str(other), mode="r+")
    del group.attrs["vstain"]
    with pytest.raises(ValueError, match="vstain-dask"):
        read([str(other)], plugin_name="vstain-dask", stack=False)


def test_reader_declines_what_vstain_dask_did_not_write(stain, tmp_path):
    other = tmp_path / "other.ome.zarr"
    shutil.copytree(stain, other)
    del zarr.open_group(str(other), mode="r+").attrs["vstain"]
    tif = tmp_path / "slice.tif"
    tif.write_bytes(b"II*\x00")
    declined = [other, stain / "labels" / "sample", stain / "0", tmp_path / "missing.zarr", tif]
    assert [plugin.get_reader(str(p)) for p in declined] == [None] * len(declined)
    assert plugin.get_reader([str(stain), str(stain)]) is None  # one store at a time
    assert plugin.get_reader([str(stain)]) is plugin.read_layers


def test_incomplete_stain_is_refused_with_the_reason(stain, tmp_path):
    partial = tmp_path / "partial.ome.zarr"
    shutil.copytree(stain, partial)
    ngff.update_provenance(partial, complete=False)
    reader = plugin.get_reader(str(partial))
    assert reader is not None  # ours to read, so that napari shows why it cannot be shown
    with pytest.raises(VolumeFormatError, match="incomplete: its stain did not finish.*--resume"):
        reader(str(partial))


# -- the layers of a stain and a CT ---------------------------------------------------------------


def test_stain_is_one_lazy_multiscale_rgba_layer_at_its_scale(stain):
    from napari.layers import Layer

    data, kwargs, kind = _layers(stain)["stain"]
    levels = [ngff.open_volume(stain, level=i) for i in range(len(data))]
    assert kind == "image" and kwargs["rgb"] and kwargs["multiscale"] and len(data) == 2
    assert [d.shape for d in data] == [(*lv.shape[1:], 4) for lv in levels]
    assert all(isinstance(d, da.Array) and d.dtype == np.uint8 for d in data)
    # channels last per stored chunk: a plane reads the chunks it crosses, not the volume
    assert data[0].chunks[:3] == levels[0].data.chunks[1:]
    assert kwargs["scale"] == (VOXEL,) * 3 and kwargs["translate"] == (0.0,) * 3
    assert kwargs["units"] == ("micrometer",) * 3 and kwargs["axis_labels"] == ("z", "y", "x")
    # napari places level k by its shape ratio to level 0: that is the level's NGFF scale
    for d, lv in zip(data, levels, strict=True):
        implied = [
            s * n0 / n
            for s, n0, n in zip(kwargs["scale"], data[0].shape[:3], d.shape[:3], strict=True)
        ]
        assert implied == [lv.attrs["scale"][a] for a in "zyx"]
    # the stored colours, and the paper's alpha (at least 1, see the module) as the fourth
    plane = np.asarray(zarr.open_array(str(stain / "0"), mode="r")[:, 5])
    np.testing.assert_array_equal(np.asarray(data[0][5, ..., :3]), np.moveaxis(plane, 0, -1))
    np.testing.assert_array_equal(np.asarray(data[0][5, ..., 3]),
                                  np.maximum(alpha_from_rgb(plane), 1))  # fmt: skip
    assert (kwargs["rendering"], kwargs["blending"]) == ("translucent", "minimum")
    layer = Layer.create(data, kwargs, kind)  # napari accepts it as it is
    assert layer.rgb and layer.multiscale and layer.ndim == 3
    assert [str(u) for u in layer.units] == ["micrometer"] * 3


def test_stain_with_alpha_channel_uses_the_stored_alpha(ct_store, cluster):
    from distributed import Client

    from vstain_dask.stain import StainConfig, default_model_path, stain_to_zarr

    out = ct_store.parent / "rgba.ome.zarr"
    with Client(cluster) as client:
        stain_to_zarr(ct_store, out, model=default_model_path(), client=client,
                      config=StainConfig(axes="z", alpha=True, tile=64, step=48),
                      chunks=CHUNKS, progress=False)  # fmt: skip
    data, kwargs, _ = _layers(out)["rgba"]
    stored = np.asarray(zarr.open_array(str(out / "0"), mode="r")[:, 7])
    assert stored.shape[0] == 4
    np.testing.assert_array_equal(np.asarray(data[0][7]),
                                  np.moveaxis(np.r_[stored[:3], np.maximum(stored[3:], 1)], 0, -1))  # fmt: skip
    assert [name for name in _layers(out)] == ["rgba"]  # no mask, no uncertainty: one layer


def test_stain_labels_carry_their_stored_names_and_colours(stain):
    from napari.layers import Layer

    data, kwargs, kind = _layers(stain)["sample"]
    meta = _group_attrs(stain / "labels" / "sample")["image-label"]
    assert kind == "labels" and len(data) == 2
    assert [d.shape for d in data] == [CT_SHAPE, tuple((n + 1) // 2 for n in CT_SHAPE)]
    assert kwargs["scale"] == (VOXEL,) * 3 and not kwargs["visible"]  # hidden over a stain
    np.testing.assert_array_equal(
        np.asarray(data[0]), zarr.open_array(str(stain / "labels/sample/0"), mode="r")[...]
    )
    layer = Layer.create(data, kwargs, kind)  # no warning: every value has a colour
    for row in meta["properties"]:
        value = row["label-value"]
        assert (
            layer.features.loc[layer.features["index"] == value, "sample"].item() == row["sample"]
        )
    for c in meta["colors"]:
        np.testing.assert_allclose(layer.colormap.map(c["label-value"]),
                                   np.array(c["rgba"]) / 255, atol=1e-6)  # fmt: skip
    assert "sample" in str(layer.get_status(position=(6 * VOXEL, 32 * VOXEL, 66 * VOXEL)))


def test_uncertainty_is_a_visible_layer_in_its_stored_colour_and_window(stain):
    from napari.layers import Layer

    data, kwargs, kind = _layers(stain)["uncertainty"]
    channel = _group_attrs(stain / "uncertainty")["omero"]["channels"][0]
    assert kind == "image" and kwargs["visible"] and len(data) == 2
    assert data[0].shape == CT_SHAPE and kwargs["scale"] == (VOXEL,) * 3
    layer = Layer.create(data, kwargs, kind)
    assert list(layer.contrast_limits) == [channel["window"]["start"], channel["window"]["end"]]
    colour = [int(channel["color"][i : i + 2], 16) / 255 for i in (0, 2, 4)]
    np.testing.assert_allclose(layer.colormap.colors[-1][:3], colour)
    np.testing.assert_allclose(layer.colormap.colors[0][:3], [0, 0, 0])
    assert layer.blending == "additive" and not layer.rgb


def test_ct_opens_with_its_window_and_named_tissue_labels(ct_store):
    from napari.layers import Layer

    from vstain_dask.phantom._volume import tissue_table

    layers = _layers(ct_store)
    assert list(layers) == ["ct", "tissue"]
    data, kwargs, kind = layers["ct"]
    window = _group_attrs(ct_store)["omero"]["channels"][0]["window"]
    assert kind == "image" and not kwargs.get("rgb")
    assert kwargs["contrast_limits"] == (window["start"], window["end"])
    assert Layer.create(data, kwargs, kind).colormap.name == "gray"
    tissue = Layer.create(*layers["tissue"])
    assert tissue.visible  # the tissue map of a phantom CT is shown at once
    names = dict(zip(tissue.features["index"], tissue.features["tissue"], strict=True))
    assert names == {value: name for value, name, _ in tissue_table().classes}
    for value, _, rgba in tissue_table().classes:
        np.testing.assert_allclose(tissue.colormap.map(value), np.array(rgba) / 255, atol=1e-6)


# -- where napari draws the pyramid levels --------------------------------------------------------


def _ngff_placement(path: Path) -> dict[str, tuple[float, ...]]:
    """Level 0's NGFF scale and translation of an image, spatial axes in order."""
    lv = ngff.open_volume(path)
    axes = [a for a in lv.dims if a != "c"]
    return {
        "scale": tuple(float(lv.attrs["scale"][a]) for a in axes),
        "translate": tuple(float(lv.attrs["translation"][a]) for a in axes),
    }


def test_every_layer_is_placed_by_level_0s_ngff_transforms(stain, ct_store):
    for store, images in ((stain, ("stain", "labels/sample", "uncertainty")),
                          (ct_store, ("ct", "labels/tissue"))):  # fmt: skip
        layers = _layers(store)
        for image in images:
            path = store if image in ("stain", "ct") else store / image
            _, kwargs, _ = layers[Path(image).name]
            assert {k: kwargs[k] for k in ("scale", "translate")} == _ngff_placement(path), image


def _misplacement(layer, path: Path, level: int) -> np.ndarray:
    """How far (in the axis unit) napari draws the centres of the first and last voxel of a
    level from where the level's own NGFF transform puts them, along y and x: (2, 2).

    The layer is sliced in 2D at level ``level`` through the middle of its extent, as napari
    shows it when zoomed out that far; napari's tile-to-world transform of that slice (its
    ``tile2data`` of the level, then the layer's scale and translate) places the voxels."""
    from napari.components import Dims

    # napari's own slicing hooks (private): a napari without them cannot be measured this way
    if not (hasattr(layer, "_slice_dims") and hasattr(layer, "_transforms")):
        import napari

        pytest.skip(f"napari {napari.__version__} has no _slice_dims/_transforms to measure with")
    extent = layer.extent.world
    dims = Dims(ndim=3, ndisplay=2, range=[(lo, hi, 1.0) for lo, hi in extent.T],
                point=tuple(extent.mean(axis=0)))  # fmt: skip
    layer.data_level = level
    layer._slice_dims(dims, force=True)
    lv = ngff.open_volume(path, level=level)
    scale = np.array([lv.attrs["scale"][a] for a in "zyx"])
    translation = np.array([lv.attrs["translation"][a] for a in "zyx"])
    ends = np.array([[0.0, 0.0, 0.0], [0.0, *(np.array(lv.shape[1:]) - 1.0)]])
    tile_to_world = layer._transforms[:].simplified
    drawn = np.array([tile_to_world(end) for end in ends])
    return (drawn - (translation + scale * ends))[:, 1:]


@pytest.mark.parametrize("image", ["intensity", "labels"])
def test_napari_draws_coarse_levels_within_the_documented_offset(tmp_path, image):
    # napari takes one scale and translate per layer (level 0's) and places level k by its
    # shape ratio to level 0, ignoring the level's own NGFF transform: a learning test of how
    # far that puts each level, as the README's viewer section and the reader's notes say
    from napari.layers import Layer

    shape, scale, origin = (20, 152, 131), (4.0, 2.0, 2.0), (100.0, -20.0, 7.5)
    vol = np.random.default_rng(0).integers(0, 1000, size=shape, dtype=np.uint16)
    store = ngff.write_volume(vol, tmp_path / "v.ome.zarr", axes="zyx", scale=scale,
                              translation=origin, units="micrometer", n_levels=3,
                              chunks=(10, 64, 64))  # fmt: skip
    ngff.write_labels(store, "mask", vol > 500)
    path = store if image == "intensity" else store / "labels" / "mask"
    data, kwargs, kind = plugin.read_layers(store)[0 if image == "intensity" else 1]
    assert {k: kwargs[k] for k in ("scale", "translate")} == _ngff_placement(path)
    layer = Layer.create(data, kwargs, kind)
    # napari's level factors are the shape ratios to level 0 (131 / 66 along x, not 2)
    np.testing.assert_allclose(layer.downsample_factors,
                               np.array(layer.level_shapes[0]) / np.array(layer.level_shapes))  # fmt: skip

    np.testing.assert_allclose(_misplacement(layer, path, 0), 0, atol=1e-9)  # level 0: exact
    s0 = np.array(scale[1:])
    for level in (1, 2):
        f = 2**level
        n = np.array(layer.level_shapes[level][1:])
        divides = np.array(shape[1:]) % f == 0  # y (152) divides by 2 and 4, x (131) does not
        # an averaged voxel belongs at the centre of the f voxels it averages, (f - 1) / 2
        # level-0 voxels in; napari draws it at the first of them (a label level keeps the
        # first voxel: right there)
        offset = (f - 1) / 2 * s0 if image == "intensity" else 0 * s0
        # where an axis does not divide by f, napari also squeezes the level to level 0's
        # length: up to (f - 1)(1 - 1/n) level-0 voxels more at the far end
        squeeze = np.where(divides, 0.0, (f - 1) * (1 - 1 / n) * s0)
        first, last = _misplacement(layer, path, level)
        np.testing.assert_allclose(first, -offset, atol=1e-9)
        np.testing.assert_allclose(last[divides], -offset[divides], atol=1e-9)
        assert np.all(last[~divides] < -offset[~divides])
        assert np.all(last >= -offset - squeeze - 1e-9)
        # in voxels of the level shown: under 1/2 where the axis divides, under 3/2 anywhere
        assert np.all(np.abs(last) < np.where(divides, 0.5, 1.5) * f * s0)


# -- open_in_napari's errors before any window ----------------------------------------------------


def test_open_in_napari_refuses_what_it_cannot_show(stain, tmp_path, monkeypatch):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(VolumeFormatError, match="is not a vstain-dask output"):
        plugin.open_in_napari(tmp_path / "nothing.zarr")
    with pytest.raises(InputError, match="ndisplay must be 2 or 3, got 4"):
        plugin.open_in_napari(stain, ndisplay=4)
    if sys.platform.startswith("linux"):
        with pytest.raises(InputError, match="no display to open napari on"):
            plugin.open_in_napari(stain)
    # a napari without a Qt binding: the message names the install command
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    monkeypatch.setitem(sys.modules, "qtpy", None)
    with pytest.raises(InputError, match=r'pip install "vstain-dask\[napari\]"') as e:
        plugin.open_in_napari(stain, block=False)
    assert "\n" not in str(e.value)


# -- a real napari window -------------------------------------------------------------------------

# Run in a child process, so that Qt and OpenGL start fresh with the display given and a crash
# there cannot take the test run with it. It opens the stain through the plugin (napari's own
# open with plugin="vstain-dask"), takes a canvas screenshot in 2D as it opens, then of the stain
# alone in 2D and in 3D from an oblique view, and, for comparison, the 3D view of the same stain
# opened with napari-ome-zarr; then opens it with open_in_napari in 3D. The screenshots go to OUT
# as .npy.
_WINDOW = """
import json, sys
from pathlib import Path
import numpy as np
import napari
from vstain_dask.viewers.napari import open_in_napari

path, out = sys.argv[1], Path(sys.argv[2])
viewer = napari.Viewer()
layers = viewer.open(path, plugin="vstain-dask")
np.save(out / "2d_default.npy", viewer.screenshot(canvas_only=True, flash=False))
viewer.layers["uncertainty"].visible = False  # the stain alone from here on
np.save(out / "2d.npy", viewer.screenshot(canvas_only=True, flash=False))
viewer.dims.ndisplay = 3
viewer.camera.angles = (0.0, 30.0, 60.0)
np.save(out / "3d.npy", viewer.screenshot(canvas_only=True, flash=False))
names = [layer.name for layer in layers]
viewer.close()
# the same stain as napari-ome-zarr reads it: R, G and B as additive grey layers
viewer = napari.Viewer()
viewer.open(path, plugin="napari-ome-zarr")
for layer in list(viewer.layers):
    layer.visible = layer.name.startswith("stain: ")
viewer.dims.ndisplay = 3
viewer.camera.angles = (0.0, 30.0, 60.0)
np.save(out / "3d_channels.npy", viewer.screenshot(canvas_only=True, flash=False))
viewer.close()
helper = open_in_napari(path, ndisplay=3, block=False)
summary = {"layers": names, "helper_layers": [layer.name for layer in helper.layers],
           "helper_ndisplay": helper.dims.ndisplay}
helper.close()
(out / "summary.json").write_text(json.dumps(summary))
"""


@pytest.fixture(scope="module")
def x_display():
    """An X display for a real napari window: our own Xvfb where it is installed (stopped after
    the tests), else the session's DISPLAY; skipped with the reason where there is neither."""
    pytest.importorskip("PyQt6", reason='no Qt binding (pip install "vstain-dask[napari]")')
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        if os.environ.get("DISPLAY"):
            yield os.environ["DISPLAY"]
            return
        pytest.skip(
            "no X display and no Xvfb (apt-get install xvfb): napari draws with OpenGL in a "
            "QOpenGLWidget, which Qt's offscreen platform does not support (its screenshots "
            "come out black)"
        )
    read, write = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", "1280x1024x24",
                             "-nolisten", "tcp"], pass_fds=(write,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    try:
        if not number:
            pytest.skip(f"Xvfb did not start (exit code {proc.poll()})")
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def screenshots(x_display, stain, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("screenshots")
    env = {**os.environ, "DISPLAY": x_display, "QT_QPA_PLATFORM": "xcb"}
    proc = subprocess.run([sys.executable, "-c", _WINDOW, str(stain), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if proc.returncode != 0 and "Qt platform plugin" in proc.stderr:
        reason = [line for line in proc.stderr.splitlines() if "Qt platform plugin" in line]
        pytest.skip(f"Qt cannot start on {x_display}: {reason[0].strip()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    shots = {
        name: np.load(out / f"{name}.npy")[..., :3]
        for name in ("2d_default", "2d", "3d", "3d_channels")
    }
    return {**shots, **json.loads((out / "summary.json").read_text())}


def _volume_pixels(shot: np.ndarray) -> np.ndarray:
    """The pixels the volume covers: the canvas around it is black."""
    pixels = shot.reshape(-1, 3).astype(np.int16)
    return pixels[pixels.max(axis=1) > 16]


def _coloured(pixels: np.ndarray) -> float:
    """Fraction of pixels whose channels differ by more than 40 of 255 (not grey or white)."""
    return float(np.mean(np.ptp(pixels, axis=1) > 40))


def _white(pixels: np.ndarray) -> float:
    """Fraction of saturated pixels (every channel at least 250)."""
    return float(np.mean(pixels.min(axis=1) >= 250))


# The phantom's sample fills about a third of the stained box and the slide around it is white
# (the sample mask's colour), so a stain shown right is mostly white with a clear coloured part.


@pytest.mark.slow  # a napari window in a child process: about 25 s
def test_napari_window_shows_the_stain_in_colour_in_2d(screenshots):
    assert screenshots["layers"] == ["stain", "sample", "uncertainty"]
    pixels = _volume_pixels(screenshots["2d"])
    assert len(pixels) > 0.2 * screenshots["2d"].shape[0] * screenshots["2d"].shape[1]
    assert _coloured(pixels) > 0.1 and _white(pixels) < 0.9
    assert np.median(pixels.mean(axis=1)) > 100  # the slide is light, as in brightfield
    # as it opens, the uncertainty adds its magenta: red and blue rise over green
    default = _volume_pixels(screenshots["2d_default"])
    magenta = [np.mean(p[:, 0] + p[:, 2] - 2 * p[:, 1]) for p in (pixels, default)]
    assert magenta[1] > magenta[0] + 5


@pytest.mark.slow  # a napari window in a child process: about 25 s
def test_napari_window_renders_the_stain_in_3d_not_as_a_white_block(screenshots):
    pixels = _volume_pixels(screenshots["3d"])
    assert len(pixels) > 0.1 * screenshots["3d"].shape[0] * screenshots["3d"].shape[1]
    assert _coloured(pixels) > 0.1 and _white(pixels) < 0.9
    # the stain as three additive grey layers (napari-ome-zarr): a washed-out block
    channels = _volume_pixels(screenshots["3d_channels"])
    assert _coloured(channels) < _coloured(pixels) / 2
    assert _white(channels) > _white(pixels)
    assert screenshots["helper_ndisplay"] == 3
    assert screenshots["helper_layers"] == screenshots["layers"]
