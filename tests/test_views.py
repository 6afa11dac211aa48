"""Orthogonal views and the ``preview`` command: the planes shown are the volume's mid-planes,
read from a pyramid level no larger than asked, and the input CT is found from the stain's
provenance."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from vstain_dask import ngff
from vstain_dask.cli import main
from vstain_dask.errors import InputError
from vstain_dask.views import input_ct_path, orthogonal_views, save_preview, save_views

SHAPE = (10, 14, 12)
PNG = b"\x89PNG\r\n\x1a\n"
#: the height of save_views' figure for SHAPE at the fixture's voxel size (extents in µm: z 100,
#: y 70, x 60): 5 in x (y + z) / (x + z) + 0.9 in; each volume's column is 5 in wide
VIEWS_HEIGHT_IN = 5 * (70 + 100) / (60 + 100) + 0.9


@pytest.fixture
def volumes(tmp_path):
    """A CT (z, y, x) uint16 and a 'stained' (c, z, y, x) uint8 volume recording it as input."""
    rng = np.random.default_rng(0)
    ct = rng.integers(0, 4000, SHAPE).astype(np.uint16)
    rgb = rng.integers(0, 256, (3, *SHAPE)).astype(np.uint8)
    ct_path = ngff.write_volume(ct, tmp_path / "ct.ome.zarr", axes="zyx", chunks=(5, 7, 6),
                                scale=(10.0, 5.0, 5.0), units="micrometer")  # fmt: skip
    st_path = ngff.write_volume(rgb, tmp_path / "ct.stained.ome.zarr", axes="czyx", kind="rgb",
                                chunks=(3, 5, 7, 6), scale=(10.0, 5.0, 5.0), units="micrometer",
                                attrs={"input": {"path": str(ct_path)}})  # fmt: skip
    return ct_path, ct, st_path, rgb


def test_views_are_the_mid_planes(volumes):
    ct_path, ct, st_path, rgb = volumes
    v = orthogonal_views(ct_path)
    assert v["level"] == 0 and v["centre"] == {"z": 5, "y": 7, "x": 6}
    np.testing.assert_array_equal(v["xy"], ct[5])
    np.testing.assert_array_equal(v["xz"], ct[:, 7])
    np.testing.assert_array_equal(v["yz"], ct[:, :, 6])
    assert v["scale"] == {"z": 10.0, "y": 5.0, "x": 5.0}
    s = orthogonal_views(st_path, position=(2, 3, 4))
    np.testing.assert_array_equal(s["xy"], np.moveaxis(rgb[:, 2], 0, -1))
    np.testing.assert_array_equal(s["xz"], np.moveaxis(rgb[:, :, 3], 0, -1))
    np.testing.assert_array_equal(s["yz"], np.moveaxis(rgb[:, :, :, 4], 0, -1))


def test_views_read_a_pyramid_level_no_larger_than_asked(tmp_path):
    vol = np.random.default_rng(1).integers(0, 255, (16, 64, 48)).astype(np.uint8)
    path = ngff.write_volume(vol, tmp_path / "v.ome.zarr", axes="zyx", chunks=(8, 16, 16),
                             n_levels=3)  # fmt: skip
    v = orthogonal_views(path, max_size=32)
    assert v["level"] == 1
    assert v["xy"].shape == (32, 24) and v["xz"].shape == (8, 24) and v["yz"].shape == (8, 32)
    level1 = ngff.open_volume(path, level=1).data.compute()
    np.testing.assert_array_equal(v["xy"], level1[4])


def _picture(path) -> np.ndarray:
    """A PNG decoded to (Y, X, 3) uint8, checking it is one."""
    import imageio.v3 as iio

    assert path.read_bytes()[:8] == PNG, path
    return iio.imread(path)[..., :3]


def _assert_size(picture: np.ndarray, width_in: float, height_in: float) -> None:
    # the figure's size at 110 dpi, less the white margins cut off around the axes
    height, width = picture.shape[:2]
    assert 0.7 * 110 * width_in < width <= 110 * width_in, (picture.shape, width_in)
    assert 0.7 * 110 * height_in < height <= 110 * height_in, (picture.shape, height_in)
    corners = picture[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 255).all(), corners


#: a stain's purple, shown as it is (no display window for RGB)
PURPLE = np.array([150, 60, 160], np.uint8)


def test_save_views_and_preview(volumes, tmp_path):
    ct_path, _, st_path, _ = volumes
    out = save_views([ct_path, st_path], tmp_path / "v.png", titles=["CT", "stained"])
    _assert_size(_picture(out), 10.0, VIEWS_HEIGHT_IN)
    with pytest.raises(InputError, match="titles must name each of the 2 volumes"):
        save_views([ct_path, st_path], tmp_path / "x.png", titles=["one"])
    assert input_ct_path(st_path) == ct_path
    png, shown = save_preview(st_path)
    assert shown == ct_path and png == st_path.with_name("ct.stained.views.png") and png.is_file()

    # a stain of one colour beside its CT: the colour on the right, the CT's greys on the left
    flat = ngff.write_volume(np.broadcast_to(PURPLE[:, None, None, None], (3, *SHAPE)),
                             tmp_path / "flat" / "ct.stained.ome.zarr", axes="czyx", kind="rgb",
                             scale=(10.0, 5.0, 5.0), units="micrometer",
                             attrs={"input": {"path": str(ct_path)}})  # fmt: skip
    png, shown = save_preview(flat, tmp_path / "both.png")
    assert shown == ct_path
    both = _picture(png)
    _assert_size(both, 10.0, VIEWS_HEIGHT_IN)
    ct_half, stain_half = np.array_split(both, 2, axis=1)
    assert (stain_half == PURPLE).all(axis=-1).mean() > 0.2
    assert not (ct_half == PURPLE).all(axis=-1).any()
    greys = ct_half[(ct_half.max(axis=-1) == ct_half.min(axis=-1)) & (ct_half.max(axis=-1) < 250)]
    assert len(np.unique(greys)) > 50  # the random CT, windowed to many grey levels
    # alone: one column, the colour in it
    png, shown = save_preview(flat, tmp_path / "alone.png", ct=None)
    alone = _picture(png)
    assert shown is None
    _assert_size(alone, 5.0, VIEWS_HEIGHT_IN)
    assert (alone == PURPLE).all(axis=-1).mean() > 0.3


def test_cli_preview(volumes, tmp_path):
    ct_path, _, st_path, rgb = volumes
    runner = CliRunner()
    r = runner.invoke(main, ["preview", str(st_path), "-o", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    assert f"with CT {ct_path}" in r.output
    r = runner.invoke(main, ["preview", str(st_path), "-o", str(tmp_path / "q.png"), "--no-ct"])
    assert r.exit_code == 0 and "with CT" not in r.output
    # the CT and the stain side by side, or the stain alone
    _assert_size(_picture(tmp_path / "p.png"), 10.0, VIEWS_HEIGHT_IN)
    _assert_size(_picture(tmp_path / "q.png"), 5.0, VIEWS_HEIGHT_IN)
    # a stain whose recorded CT is gone: shown alone, and said so
    lost = ngff.write_volume(rgb, tmp_path / "lost.ome.zarr", axes="czyx", kind="rgb",
                             attrs={"input": {"path": str(tmp_path / "gone.zarr")}})  # fmt: skip
    r = runner.invoke(main, ["preview", str(lost), "-o", str(tmp_path / "l.png")])
    assert r.exit_code == 0 and "input CT not shown" in r.output
    r = runner.invoke(main, ["preview", str(tmp_path / "missing.zarr")])
    assert r.exit_code == 2 and "missing.zarr does not exist" in r.output
    r = runner.invoke(main, ["preview", str(st_path), "--ct", str(tmp_path / "nope.zarr")])
    assert r.exit_code == 2 and "nope.zarr does not exist" in r.output
