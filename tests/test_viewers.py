"""Stained output opens in the OME-Zarr readers that viewers use, for NGFF 0.5 and 0.4: ome-zarr-py's
reader, ngff-zarr, napari's OME-Zarr reader (napari-ome-zarr, headless: no window is opened), and
it validates against the ome-zarr-models schemas.

The stains are real (a tiny random ResNet generator on a small CT, on the shared two-worker
cluster): a plain RGB stain along z, and an RGBA stain fused over two axes with the sample mask
(NGFF labels) and the between-axes spread (an image of its own inside the output). The CT is
anisotropic (4, 3, 2 µm) so that a mixed-up axis shows, and wide enough in x (132) for a
two-level pyramid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from vstain_dask import ngff
from vstain_dask.stain import StainConfig, stain_to_zarr

VERSIONS = ["0.5", "0.4"]
CT_SHAPE = (8, 20, 132)
SCALE = (4.0, 3.0, 2.0)  # z, y, x in µm
CHUNKS = (4, 16, 32)
LEVEL1 = (4, 10, 66)
COLOURS = {"R": "FF0000", "G": "00FF00", "B": "0000FF", "A": "FFFFFF"}
RGB_UNIT = {"R": [1.0, 0.0, 0.0], "G": [0.0, 1.0, 0.0], "B": [0.0, 0.0, 1.0], "A": [1.0, 1.0, 1.0]}


@pytest.fixture(scope="module")
def ct_store(tmp_path_factory) -> Path:
    from scipy import ndimage

    rng = np.random.default_rng(5)
    vol = ndimage.gaussian_filter(rng.normal(size=CT_SHAPE), 2.0)
    vol = ((vol - vol.min()) / np.ptp(vol) * 3000 + 500).astype(np.uint16)
    path = tmp_path_factory.mktemp("viewers") / "ct.ome.zarr"
    ngff.write_volume(vol, path, axes="zyx", scale=SCALE, units="micrometer", chunks=CHUNKS)
    return path


@pytest.fixture(scope="module")
def stained(ct_store, model_path, cluster, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """{(ngff version, "rgb" | "rgba"): output store}."""
    from distributed import Client

    # the CT's voxels (anisotropic on purpose, to check the scales viewers read) are not the
    # model's 5 µm: stained at their own size, as --resample off does
    configs = {
        "rgb": StainConfig(tile=16, step=8, batch_size=4, resample="off"),
        "rgba": StainConfig(
            tile=16,
            step=8,
            batch_size=4,
            resample="off",
            axes="zy",
            alpha=True,
            mask=True,
            uncertainty=True,
            ct_levels=(3000.0, 1000.0),
        ),  # fmt: skip
    }
    root = tmp_path_factory.mktemp("stained")
    out = {}
    with Client(cluster) as client:
        for version in VERSIONS:
            for kind, config in configs.items():
                path = root / f"{kind}-{version}.ome.zarr"
                stain_to_zarr(ct_store, path, model=model_path, config=config, client=client,
                              chunks=CHUNKS, ngff_version=version, progress=False)  # fmt: skip
                out[version, kind] = path
    return out


def _level(path: Path, level: int) -> np.ndarray:
    return np.asarray(zarr.open_array(store=str(path), path=str(level), mode="r")[...])


def _halved(a: np.ndarray) -> np.ndarray:
    """Mean of 2x2x2 voxels over the last three axes, rounded to nearest (the pyramid's rule)."""
    c, z, y, x = a.shape
    blocks = a.reshape(c, z // 2, 2, y // 2, 2, x // 2, 2).astype(np.float64)
    return np.rint(blocks.mean(axis=(2, 4, 6))).astype(a.dtype)


def test_pyramid_levels_are_halved_means(stained):
    # what every reader below should find: two levels, the second the 2x2x2 mean of the first
    for path in stained.values():
        level0 = _level(path, 0)
        assert level0.shape[1:] == CT_SHAPE and level0.dtype == np.uint8
        np.testing.assert_array_equal(_level(path, 1), _halved(level0))


# -- ome-zarr-py ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["rgb", "rgba"])
def test_ome_zarr_py_reader(stained, version, kind):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    path = stained[version, kind]
    channels = "RGBA" if kind == "rgba" else "RGB"
    location = parse_url(str(path))
    assert location is not None and location.version == version
    nodes = list(Reader(location)())
    image = nodes[0]
    assert any(isinstance(s, Multiscales) for s in image.specs)
    assert [tuple(d.shape) for d in image.data] == [(len(channels), *CT_SHAPE),
                                                    (len(channels), *LEVEL1)]  # fmt: skip
    np.testing.assert_array_equal(np.asarray(image.data[0]), _level(path, 0))
    np.testing.assert_array_equal(np.asarray(image.data[1]), _level(path, 1))

    meta = image.metadata
    assert [(a["name"], a["type"]) for a in meta["axes"]] == [
        ("c", "channel"), ("z", "space"), ("y", "space"), ("x", "space")]  # fmt: skip
    assert {a.get("unit") for a in meta["axes"][1:]} == {"micrometer"}
    scales = [[t["scale"] for t in level if t["type"] == "scale"][0]
              for level in meta["coordinateTransformations"]]  # fmt: skip
    assert scales == [[1.0, *SCALE], [1.0, *(2 * s for s in SCALE)]]
    # one channel per colour, each shown in its own colour over the full 8-bit range
    assert meta["channel_names"] == list(channels)
    assert [cmap[-1] for cmap in meta["colormap"]] == [RGB_UNIT[c] for c in channels]
    assert meta["contrast_limits"] == [[0, 255]] * len(channels)
    assert meta["visible"] == [c != "A" for c in channels]  # alpha is there but not shown

    labels = [n for n in nodes if n.metadata.get("name") == "sample"]
    if kind == "rgba":  # the sample mask, found through the image's labels group
        assert len(labels) == 1
        mask = np.asarray(labels[0].data[0])
        assert mask.shape == CT_SHAPE and set(np.unique(mask)) <= {0, 1}
        assert [tuple(d.shape) for d in labels[0].data] == [CT_SHAPE, LEVEL1]
        # the spread between axes is an image of its own, opened by its path
        spread = list(Reader(parse_url(str(path / "uncertainty")))())[0]
        assert [tuple(d.shape) for d in spread.data] == [CT_SHAPE, LEVEL1]
        assert [a["name"] for a in spread.metadata["axes"]] == ["z", "y", "x"]
    else:
        assert labels == []


# -- ngff-zarr ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["rgb", "rgba"])
def test_ngff_zarr_reader(stained, version, kind):
    import ngff_zarr

    path = stained[version, kind]
    channels = "RGBA" if kind == "rgba" else "RGB"
    ms = ngff_zarr.from_ngff_zarr(str(path))
    assert [im.data.shape for im in ms.images] == [(len(channels), *CT_SHAPE),
                                                   (len(channels), *LEVEL1)]  # fmt: skip
    level0, level1 = ms.images
    assert tuple(level0.dims) == ("c", "z", "y", "x")
    assert [level0.scale[d] for d in "zyx"] == list(SCALE)
    assert [level1.scale[d] for d in "zyx"] == [2 * s for s in SCALE]
    assert [level0.translation[d] for d in "zyx"] == [0.0, 0.0, 0.0]
    assert {level0.axes_units[d] for d in "zyx"} == {"micrometer"}
    np.testing.assert_array_equal(np.asarray(level0.data), _level(path, 0))
    np.testing.assert_array_equal(np.asarray(level1.data), _level(path, 1))
    assert [ax.name for ax in ms.metadata.axes] == ["c", "z", "y", "x"]
    omero = ms.metadata.omero
    assert [ch.label for ch in omero.channels] == list(channels)
    assert [ch.color.upper() for ch in omero.channels] == [COLOURS[c] for c in channels]
    assert all((ch.window.start, ch.window.end) == (0, 255) for ch in omero.channels)
    if kind == "rgba":
        spread = ngff_zarr.from_ngff_zarr(str(path / "uncertainty"))
        assert tuple(spread.images[0].dims) == ("z", "y", "x")
        assert spread.images[0].data.shape == CT_SHAPE


# -- ome-zarr-models (schema validation) ----------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["rgb", "rgba"])
def test_validates_with_ome_zarr_models(stained, version, kind):
    import ome_zarr_models
    from ome_zarr_models.v04.image import Image as Image04
    from ome_zarr_models.v04.image_label import ImageLabel as ImageLabel04
    from ome_zarr_models.v05.image import Image as Image05
    from ome_zarr_models.v05.image_label import ImageLabel as ImageLabel05

    path = stained[version, kind]
    channels = "RGBA" if kind == "rgba" else "RGB"
    image_cls, label_cls, other_cls = (
        (Image05, ImageLabel05, Image04) if version == "0.5" else (Image04, ImageLabel04, Image05)
    )
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == (3 if version == "0.5" else 2)
    image = image_cls.from_zarr(group)  # validates the metadata and the arrays it points to
    assert image.ome_zarr_version == version
    assert isinstance(ome_zarr_models.open_ome_zarr(group), image_cls)
    with pytest.raises(ValueError):  # it is this version and not the other one
        other_cls.from_zarr(group)
    (datasets,) = image.datasets
    assert [d.path for d in datasets] == ["0", "1"]
    assert [d.coordinateTransformations[0].scale for d in datasets] == [
        [1.0, *SCALE], [1.0, *(2 * s for s in SCALE)]]  # fmt: skip
    (multiscale,) = image.ome_attributes.multiscales
    assert [a.name for a in multiscale.axes] == ["c", "z", "y", "x"]
    omero = image.ome_attributes.omero  # v0.4 models it, v0.5 keeps it as an extra field
    omero = omero if isinstance(omero, dict) else omero.model_dump()
    assert [(ch["label"], ch["color"]) for ch in omero["channels"]] == [
        (c, COLOURS[c]) for c in channels]  # fmt: skip

    if kind == "rgba":
        assert image.labels is not None
        assert list(image.labels.ome_attributes.labels) == ["sample"]
        label = label_cls.from_zarr(group["labels/sample"])
        assert [d.path for d in label.ome_attributes.multiscales[0].datasets] == ["0", "1"]
        assert isinstance(ome_zarr_models.open_ome_zarr(group["uncertainty"]), image_cls)
    else:
        assert image.labels is None


# -- napari (napari-ome-zarr's reader, without a window) ------------------------------------------


@pytest.mark.filterwarnings(
    # napari and npe2 (0.9 / 0.10) still declare pydantic-v1-style fields when imported
    "ignore::pydantic.warnings.PydanticDeprecatedSince20",
    # napari-ome-zarr hands napari the labels' NGFF colours without a colour for values the
    # table does not list; ours lists every value the mask holds, so nothing goes unseen
    "ignore:color_dict did not provide a default color:UserWarning",
)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["rgb", "rgba"])
def test_napari_ome_zarr_reader(stained, version, kind, monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # nothing here needs Qt; never a display
    reader_mod = pytest.importorskip(
        "napari_ome_zarr._reader",
        reason="napari-ome-zarr is not installed (pip install napari-ome-zarr)",
    )
    from napari.layers import Layer
    from napari.layers.utils.stack_utils import split_channels

    path = stained[version, kind]
    channels = "RGBA" if kind == "rgba" else "RGB"
    reader = reader_mod.napari_get_reader(str(path))
    assert callable(reader), "napari-ome-zarr does not claim the stained store"
    layer_data = reader(str(path))
    images = [ld for ld in layer_data if ld[2] == "image"]
    labels = [ld for ld in layer_data if ld[2] == "labels"]
    assert len(images) == 1
    data, kwargs, _ = images[0]
    assert [tuple(d.shape) for d in data] == [(len(channels), *CT_SHAPE),
                                              (len(channels), *LEVEL1)]  # fmt: skip
    assert kwargs["channel_axis"] == 0
    assert list(kwargs["scale"]) == list(SCALE)

    # what the viewer does with it: one layer per channel, coloured, multiscale, in µm
    layers = [Layer.create(d, k, t) for d, k, t in split_channels(data, **kwargs)]
    assert [layer.name.rsplit(": ", 1)[-1] for layer in layers] == list(channels)
    assert [layer.colormap.colors[-1][:3].tolist() for layer in layers] == [
        RGB_UNIT[c] for c in channels]  # fmt: skip
    for layer in layers:
        assert layer.multiscale and [tuple(d.shape) for d in layer.data] == [CT_SHAPE, LEVEL1]
        assert list(layer.scale) == list(SCALE)
        assert [str(u) for u in layer.units] == ["micrometer"] * 3
        assert list(layer.contrast_limits) == [0, 255]
    np.testing.assert_array_equal(np.asarray(layers[0].data[0]), _level(path, 0)[0])
    if kind == "rgba":
        (label_data,) = labels
        mask = Layer.create(*label_data)
        assert [tuple(d.shape) for d in mask.data] == [CT_SHAPE, LEVEL1]
        assert list(mask.scale) == list(SCALE)
    else:
        assert labels == []


@pytest.mark.parametrize("version", VERSIONS)
def test_stain_mask_labels_and_uncertainty_carry_display_metadata(stained, version):
    """The sample mask is an NGFF label image with names and colours (valid against the
    specification's strict_label schema); the uncertainty image has a colour and a window."""
    import zarr
    from test_ngff_display import ngff_schema_errors

    out = stained[version, "rgba"]
    attrs = zarr.open_group(str(out / "labels" / "sample"), mode="r").attrs.asdict()
    assert ngff_schema_errors(attrs, version, "strict_label") == []
    meta = attrs.get("ome", attrs)["image-label"]
    names = {p["label-value"]: p["sample"] for p in meta["properties"]}
    assert names == {0: "outside", 1: "sample"}
    unc = zarr.open_group(str(out / "uncertainty"), mode="r").attrs.asdict()
    channel = unc.get("ome", unc)["omero"]["channels"][0]
    assert channel["color"] == "FF00FF" and channel["window"]["end"] == 64
