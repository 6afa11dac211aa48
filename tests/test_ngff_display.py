"""What viewers are told about showing a volume: label names and colours (NGFF ``image-label``,
valid against the NGFF ``strict_label`` JSON schema and ome-zarr-models) and the omero display
window of intensity images (robust percentiles of a bounded sample)."""

from __future__ import annotations

import json
from importlib.resources import files

import numpy as np
import pytest
import zarr

from vstain_dask import ngff
from vstain_dask.errors import InputError
from vstain_dask.ngff import Display, LabelTable
from vstain_dask.ngff import _write as ngff_write

SHAPE = (10, 14, 12)
CHUNKS = (5, 7, 6)
VERSIONS = ["0.4", "0.5"]
TABLE = LabelTable("tissue", {0: ("air", (0, 0, 0, 0)), 3: ("bone", (255, 250, 230, 255))})


def ngff_schema_errors(attrs: dict, version: str, model: str) -> list[str]:
    """Messages of the NGFF JSON schema ``model`` (e.g. ``strict_label``) on group attributes.

    The schemas are the NGFF specification's, as ngff-zarr bundles them.
    """
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    folder = files("ngff_zarr").joinpath("spec", version, "schemas")
    schemas = [json.loads(f.read_text()) for f in folder.iterdir() if f.name.endswith(".schema")]
    registry = Registry().with_resources(
        (
            s["$id"],
            Resource.from_contents(s, default_specification=DRAFT202012),
        )
        for s in schemas
        if "$id" in s
    )
    schema = next(s for s in schemas if s["$id"].endswith(f"/{model}.schema"))
    validator = Draft202012Validator(schema, registry=registry)
    return [e.message for e in validator.iter_errors(json.loads(json.dumps(attrs)))]


def group_attrs(path) -> dict:
    return zarr.open_group(str(path), mode="r").attrs.asdict()


def image_label(path) -> dict:
    attrs = group_attrs(path)
    return attrs.get("ome", attrs)["image-label"]


@pytest.fixture(params=VERSIONS)
def image(request, tmp_path):
    vol = np.random.default_rng(0).normal(2000, 300, SHAPE).clip(0, 65535).astype(np.uint16)
    return ngff.write_volume(vol, tmp_path / "img.ome.zarr", scale=5, units="micrometer",
                        chunks=CHUNKS, n_levels=2, ngff_version=request.param)  # fmt: skip


# --------------------------------------------------------------------------------------------
# labels


def test_labels_with_a_table_are_strict_ngff_labels(image):
    import ome_zarr_models

    version = ngff.open_volume(image).attrs["ngff_version"]
    values = np.where(np.arange(np.prod(SHAPE)).reshape(SHAPE) % 3 == 0, 3, 0).astype(np.uint8)
    path = ngff.write_labels(image, "tissue", values, table=TABLE)
    meta = image_label(path)
    assert meta["colors"] == [
        {"label-value": 0, "rgba": [0, 0, 0, 0]},
        {"label-value": 3, "rgba": [255, 250, 230, 255]},
    ]
    assert meta["properties"] == [
        {"label-value": 0, "tissue": "air"},
        {"label-value": 3, "tissue": "bone"},
    ]
    assert ngff_schema_errors(group_attrs(path), version, "strict_label") == []
    # ome-zarr-models checks the arrays too, and that colours and properties name the same values
    model = ome_zarr_models.open_ome_zarr(zarr.open_group(str(path), mode="r"))
    assert type(model).__name__ == "ImageLabel"
    colours = {c.label_value: tuple(c.rgba) for c in model.ome_attributes.image_label.colors}
    assert colours == {0: (0, 0, 0, 0), 3: (255, 250, 230, 255)}


def test_labels_without_a_table_fail_strict_label_as_the_schema_says(image):
    # the check above is not vacuous: integer labels with no table have no colours
    version = ngff.open_volume(image).attrs["ngff_version"]
    path = ngff.write_labels(image, "plain", np.zeros(SHAPE, np.uint8))
    assert "colors" not in image_label(path)
    assert any("'colors' is a required property" in m
               for m in ngff_schema_errors(group_attrs(path), version, "strict_label"))  # fmt: skip


def test_a_bool_mask_gets_outside_and_its_name(image):
    version = ngff.open_volume(image).attrs["ngff_version"]
    path = ngff.write_labels(image, "sample", np.ones(SHAPE, bool))
    assert image_label(path)["properties"] == [
        {"label-value": 0, "sample": "outside"},
        {"label-value": 1, "sample": "sample"},
    ]
    assert image_label(path)["colors"][0]["rgba"][3] == 0  # outside is transparent
    assert ngff_schema_errors(group_attrs(path), version, "strict_label") == []


def test_ome_zarr_py_reads_label_names_and_colours(image):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path = ngff.write_labels(image, "tissue", np.full(SHAPE, 3, np.uint8), table=TABLE)
    node = next(n for n in Reader(parse_url(str(path)))() if n.metadata.get("name") == "tissue")
    assert node.metadata["properties"] == {0: {"tissue": "air"}, 3: {"tissue": "bone"}}
    assert node.metadata["color"][3] == pytest.approx([1.0, 250 / 255, 230 / 255, 1.0])


def test_phantom_tissue_labels_are_named_from_the_tissue_table(tmp_path):
    from vstain_dask.phantom import Tissue, write_phantom

    for version in VERSIONS:
        out = write_phantom(tmp_path / f"p{version}.ome.zarr", shape=SHAPE, material="mg", seed=2,
                            chunks=CHUNKS, ngff_version=version)  # fmt: skip
        path = out / "labels" / "tissue"
        meta = image_label(path)
        names = {p["label-value"]: p["tissue"] for p in meta["properties"]}
        assert names == {int(t): t.name.lower() for t in Tissue}
        assert names == {
            v: k for k, v in ngff.open_volume(out).attrs["vstain"]["tissue_labels"].items()
        }
        assert [c["label-value"] for c in meta["colors"]] == sorted(names)
        assert meta["colors"][Tissue.AIR]["rgba"] == [0, 0, 0, 0]
        assert len({tuple(c["rgba"]) for c in meta["colors"]}) == len(Tissue)  # all distinct
        assert ngff_schema_errors(group_attrs(path), version, "strict_label") == []


def test_label_tables_are_validated(image):
    bad = [
        (("", {0: ("a", (0, 0, 0, 0))}), "key must be"),
        (("t", {}), "non-empty"),
        (("t", {0: ("a", (0, 0, 0))}), r"4 integers 0\.\.255"),
        (("t", {0: ("a", (0, 0, 0, 256))}), r"4 integers 0\.\.255"),
        (("t", {0: ("", (0, 0, 0, 0))}), "needs a name"),
        (("t", {1.5: ("a", (0, 0, 0, 0))}), "must be integers"),
        (("t", {0: "air"}), r"must be \(name, \(r, g, b, a\)\)"),
    ]
    for args, message in bad:
        with pytest.raises(InputError, match=message):
            LabelTable(*args)
    big = LabelTable("t", {300: ("big", (1, 2, 3, 4))})
    with pytest.raises(InputError, match=r"label values \[300\] do not fit .* uint8"):
        ngff.write_labels(image, "t", np.zeros(SHAPE, np.uint8), table=big)


# --------------------------------------------------------------------------------------------
# display windows


def omero_window(path) -> tuple[dict, str]:
    attrs = group_attrs(path)
    (channel,) = attrs.get("ome", attrs)["omero"]["channels"]
    return channel["window"], channel["color"]


def test_written_intensity_volumes_get_a_robust_window(image):
    version = ngff.open_volume(image).attrs["ngff_version"]
    # the two levels hold 1680 + 210 voxels, below the budget: level 0 is the sample
    low, high = np.percentile(ngff.open_volume(image).values, [0.5, 99.5])
    window, colour = omero_window(image)
    assert window == {"start": int(np.floor(low)), "end": int(np.ceil(high)), "min": 0,
                      "max": 65535}  # fmt: skip
    assert colour == "FFFFFF"
    assert ngff_schema_errors(group_attrs(image), version, "strict_image") == []


def test_the_window_sample_is_bounded(tmp_path, monkeypatch):
    vol = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    vol[0, 0, 0] = np.nan
    # level 1 (5, 7, 6) = 210 voxels fits a budget of 300; level 0 (1680 voxels) does not
    monkeypatch.setattr(ngff_write, "_WINDOW_VOXELS", 300)
    path = ngff.write_volume(vol, tmp_path / "a.zarr", chunks=CHUNKS, n_levels=2)
    level1 = ngff.open_volume(path, level=1).values
    window, _ = omero_window(path)
    want = np.nanpercentile(level1, [0.5, 99.5])
    assert [window["start"], window["end"]] == pytest.approx(want)
    assert [window["min"], window["max"]] == pytest.approx([np.nanmin(level1), np.nanmax(level1)])
    # no level fits: a fixed number of chunks of the coarsest level, spread over it
    monkeypatch.setattr(ngff_write, "_WINDOW_VOXELS", 100)
    monkeypatch.setattr(ngff_write, "_WINDOW_CHUNKS", 2)
    path = ngff.write_volume(vol, tmp_path / "b.zarr", chunks=(2, 3, 3), n_levels=2)
    level1 = ngff.open_volume(path, level=1).values  # (5, 7, 6) in chunks (2, 3, 3): a 3x3x2 grid
    first, last = level1[0:2, 0:3, 0:3], level1[4:, 6:, 3:]  # chunks (0, 0, 0) and (2, 2, 1)
    sample = np.concatenate([first.ravel(), last.ravel()])
    assert sample.size < level1.size / 4
    window, _ = omero_window(path)
    assert [window["start"], window["end"]] == pytest.approx(np.nanpercentile(sample, [0.5, 99.5]))


def test_a_constant_volume_gets_a_window_one_value_wide(tmp_path):
    path = ngff.write_volume(np.full(SHAPE, 65535, np.uint16), tmp_path / "a.zarr", chunks=CHUNKS)
    window, _ = omero_window(path)
    assert (window["start"], window["end"]) == (65534, 65535)


@pytest.mark.parametrize("version", VERSIONS)
def test_created_volumes_take_display_hints(tmp_path, version):
    path = tmp_path / "uncertainty"
    ngff.create_volume(path, shape=SHAPE, dtype="uint8", chunks=CHUNKS, ngff_version=version,
                  display=Display(0, 255, color="ff00ff"))  # fmt: skip
    window, colour = omero_window(path)
    assert window == {"start": 0, "end": 255, "min": 0, "max": 255}
    assert colour == "FF00FF"
    assert ngff_schema_errors(group_attrs(path), version, "strict_image") == []
    import ome_zarr_models

    ome_zarr_models.open_ome_zarr(zarr.open_group(str(path), mode="r"))


def test_display_hints_are_validated(tmp_path):
    for kwargs, message in [
        ({"start": 5, "end": 5}, "start must be below end"),
        ({"start": 0, "end": float("nan")}, "end must be finite"),
        ({"start": 0, "end": 1, "min": 2}, "min must be at most start"),
        ({"start": 0, "end": 1, "max": 0.5}, "max must be at least end"),
        ({"start": 0, "end": 1, "color": "red"}, "6 hex digits"),
        ({"start": "0", "end": 1}, "start must be a number"),
    ]:
        with pytest.raises(InputError, match=message):
            Display(**kwargs)
    with pytest.raises(InputError, match="display is for kind intensity, got kind rgb"):
        ngff.create_volume(tmp_path / "a.zarr", shape=(3, *SHAPE), dtype="uint8", chunks=None,
                      axes="czyx", kind="rgb", display=Display(0, 1))  # fmt: skip
