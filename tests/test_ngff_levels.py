"""Where pyramid levels sit: scale and translation of every level against the index arithmetic.

A label level keeps every second voxel (level ``l`` voxel ``i`` is level-0 voxel ``i * 2**l``),
so it sits where that voxel sits; an image level averages ``2**l`` voxels per axis, so it sits at
their centre. Both are checked on the values (through ``open_volume``'s coordinates) and on the
metadata as ome-zarr-py and ngff-zarr read it.
"""

from __future__ import annotations

import numpy as np
import pytest

from vstain_dask.ngff import open_volume, write_labels, write_volume

SHAPE = (10, 14, 12)
CHUNKS = (5, 7, 6)
SCALE = (4.0, 3.0, 2.0)  # z, y, x in µm: an axis mix-up shows
TRANSLATION = (1.5, -2.0, 7.0)
N_LEVELS = 3
VERSIONS = ["0.4", "0.5"]


@pytest.fixture(params=VERSIONS)
def stores(request, tmp_path):
    """(image, its label image) with three levels."""
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 4000, SHAPE, dtype=np.uint16)
    img = write_volume(vol, tmp_path / "img.ome.zarr", scale=SCALE, translation=TRANSLATION,
                       units="micrometer", chunks=CHUNKS, n_levels=N_LEVELS,
                       ngff_version=request.param)  # fmt: skip
    labels = write_labels(img, "tissue", rng.integers(0, 7, SHAPE, dtype=np.uint8))
    return img, labels


def expected(kind: str, level: int) -> tuple[list[float], list[float]]:
    """(scale, translation) of a level from the index arithmetic alone."""
    n = 2**level
    # label level voxel i is level-0 voxel n*i; an image level voxel i averages level-0 voxels
    # n*i .. n*i + n - 1, whose centre is n*i + (n - 1)/2: position s*(n*i + offset) + t
    offset = 0.0 if kind == "labels" else (n - 1) / 2
    return [s * n for s in SCALE], [t + s * offset for s, t in zip(SCALE, TRANSLATION, strict=True)]


def lower_levels(path, kind: str):
    """(level, level 0, that level) for levels 1.., each read with the scale and translation
    the index arithmetic gives."""
    level0 = open_volume(path)
    for level in range(1, N_LEVELS):
        lower = open_volume(path, level=level)
        assert [list(lower.attrs[k].values()) for k in ("scale", "translation")] == list(
            expected(kind, level)
        )
        yield level, level0, lower


def test_label_levels_sit_on_the_voxels_they_keep(stores):
    for level, level0, lower in lower_levels(stores[1], "labels"):
        # each voxel of the level is found in level 0 at its own physical position
        same_place = level0.sel(z=lower.z, y=lower.y, x=lower.x)
        np.testing.assert_array_equal(same_place.values, lower.values)
        np.testing.assert_array_equal(
            lower.values, level0.values[:: 2**level, :: 2**level, :: 2**level]
        )


def test_image_levels_sit_at_the_centre_of_what_they_average(stores):
    for level, level0, lower in lower_levels(stores[0], "intensity"):
        n = 2**level
        for ax in "zyx":
            full = level0[ax].values
            # centres of the complete windows (a last, partial window has fewer voxels)
            complete = len(full) // n
            centres = full[: complete * n].reshape(complete, n).mean(axis=1)
            np.testing.assert_allclose(lower[ax].values[:complete], centres)


def _ome_zarr_py(path) -> tuple[list, list]:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    # a label image's reader also yields the image it labels: take the node named after path
    name = path.name.removesuffix(".ome.zarr")
    node = next(n for n in Reader(parse_url(str(path)))() if n.metadata.get("name") == name)
    transforms = node.metadata["coordinateTransformations"]
    scales = [next(t["scale"] for t in level if t["type"] == "scale") for level in transforms]
    translations = [
        next(t["translation"] for t in level if t["type"] == "translation") for level in transforms
    ]
    return scales, translations


def _ngff_zarr(path) -> tuple[list, list]:
    import ngff_zarr

    images = ngff_zarr.from_ngff_zarr(str(path)).images
    return (
        [[im.scale[a] for a in "zyx"] for im in images],
        [[im.translation[a] for a in "zyx"] for im in images],
    )


@pytest.mark.parametrize("reader", [_ome_zarr_py, _ngff_zarr], ids=["ome-zarr-py", "ngff-zarr"])
def test_other_readers_see_the_same_levels(stores, reader):
    img, labels = stores
    for path, kind in ((img, "intensity"), (labels, "labels")):
        scales, translations = reader(path)
        want = [expected(kind, level) for level in range(N_LEVELS)]
        assert scales == [s for s, _ in want]
        assert translations == [t for _, t in want]
