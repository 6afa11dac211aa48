"""Volume rendering of a stain: compositing with known answers, views that must agree, and the
``vstain-dask render`` command on real stores (images decoded and checked)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import vstain_dask.render as render_mod
from vstain_dask import ngff
from vstain_dask.cli import main
from vstain_dask.render import RenderConfig, parse_clip, render_volume

CUBE = (40, 90, 160)  # a dark blue: alpha = 255 - mean = 158


def _reference(vol: np.ndarray, opacity_step: float = 1.0) -> np.ndarray:
    """Front-to-back compositing along axis 1 of (4, k, a, b), straight from the definition."""
    colour = np.zeros((*vol.shape[2:], 3))
    trans = np.ones(vol.shape[2:])
    for i in range(vol.shape[1]):
        alpha = 1 - (1 - vol[3, i] / 255.0) ** opacity_step
        colour += (trans * alpha)[..., None] * np.moveaxis(vol[:3, i], 0, -1)
        trans *= 1 - alpha
    return colour + trans[..., None] * 255


def _random_rgba(shape=(10, 14, 12), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (4, *shape), dtype=np.uint8)


def _cube_volume(shape=(12, 20, 16), box=((3, 9), (5, 12), (4, 10)), alpha=False) -> np.ndarray:
    """White (transparent) RGB(A) volume with an opaque-ish coloured cube."""
    vol = np.full((4 if alpha else 3, *shape), 255, np.uint8)
    if alpha:
        vol[3] = 0
    sl = tuple(slice(lo, hi) for lo, hi in box)
    for c, v in enumerate(CUBE):
        vol[(c, *sl)] = v
    if alpha:
        vol[(3, *sl)] = 255 - round(sum(CUBE) / 3)
    return vol


@pytest.mark.parametrize("opacity_step", [1.0, 2.0, 0.5])
def test_two_voxels_along_a_ray_give_the_analytic_over(opacity_step):
    # voxel size 2 along z: the opacity per µm that makes one step count opacity_step times
    vol = np.zeros((4, 2, 1, 1), np.uint8)
    vol[:, 0, 0, 0] = (200, 40, 40, 100)
    vol[:, 1, 0, 0] = (40, 40, 200, 150)
    img = render_volume(vol, scale=(2.0, 1.0, 1.0), opacity=opacity_step / 2.0).compute()
    a1 = 1 - (1 - 100 / 255) ** opacity_step
    a2 = 1 - (1 - 150 / 255) ** opacity_step
    front, back = np.array([200, 40, 40]), np.array([40, 40, 200])
    expected = a1 * front + (1 - a1) * a2 * back + (1 - a1) * (1 - a2) * 255
    assert img.shape == (1, 1, 3) and img.dtype == np.uint8
    np.testing.assert_allclose(img[0, 0], expected, atol=0.5 + 1e-6)


def test_axis_aligned_view_is_the_definition():
    vol = _random_rgba()
    img = render_volume(vol, scale=(3.0, 3.0, 3.0)).compute()
    assert img.shape == (14, 12, 3)
    assert np.abs(img - _reference(vol)).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("view", [(0, 0), (30, 20), (-70, 10), (200, -35), (45, 45)])
def test_slab_wise_render_equals_whole_array_render(view, monkeypatch):
    import dask.array as da

    vol = _random_rgba()
    whole = render_volume(vol, scale=(2.0, 1.0, 1.5), azimuth=view[0], elevation=view[1])
    whole = whole.compute()
    monkeypatch.setattr(render_mod, "_SLAB_BYTES", 4 * 14 * 12 * 2)  # slabs of ~2 planes
    chunked = da.from_array(vol, chunks=(4, 5, 7, 6))
    slabs = render_volume(chunked, scale=(2.0, 1.0, 1.5), azimuth=view[0], elevation=view[1])
    assert slabs.numblocks == (1, 1, 1)
    assert len(slabs.dask) > 10  # many slab tasks, not one
    assert np.abs(slabs.compute().astype(int) - whole).max() <= 1


def test_azimuth_90_is_the_render_along_x():
    vol = _random_rgba()
    side = render_volume(vol, scale=(2.0, 2.0, 2.0), azimuth=90, opacity=0.25).compute()
    # along +x, the image's right is -z (a proper rotation of the z view): (c, x, y, z reversed)
    along_x = np.transpose(vol, (0, 3, 2, 1))[..., ::-1].copy()
    ref = render_volume(along_x, scale=(2.0, 2.0, 2.0), opacity=0.25).compute()
    assert side.shape == ref.shape == (14, 10, 3)
    assert np.abs(side.astype(int) - ref).max() <= 1
    # ... and the definition itself: a step of 2 µm at 0.25 per µm is half a stain alpha
    assert np.abs(side - _reference(along_x, opacity_step=0.5)).max() <= 1


def test_a_point_lands_where_the_view_projects_it():
    shape, scale, pos = (10, 14, 12), np.array([2.0, 1.0, 1.5]), np.array([2, 5, 7])
    vol = np.full((4, *shape), 255, np.uint8)
    vol[3] = 0
    vol[(slice(None), *pos)] = (0, 0, 0, 255)
    img = render_volume(vol, scale=scale, azimuth=30, elevation=20, opacity=100).compute()
    d, down, right = render_mod._view_frame(30, 20)
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape])).reshape(3, -1).T * scale
    want = np.array([pos * scale @ v - (corners @ v).min() for v in (down, right)]) / scale.min()
    w = 255.0 - img.mean(axis=-1)
    rows, cols = np.indices(w.shape)
    got = np.array([(w * rows).sum(), (w * cols).sum()]) / w.sum()
    np.testing.assert_allclose(got, want, atol=0.05)


@pytest.mark.parametrize("alpha", [False, True])
def test_cube_shows_its_colour_over_white(alpha):
    vol = _cube_volume(alpha=alpha)
    img = render_volume(vol, scale=(5.0, 5.0, 5.0), opacity=0.2).compute()
    assert img.shape == (20, 16, 3)
    cube = img[5:12, 4:10].reshape(-1, 3).astype(int)
    # six voxels of alpha 158/255: 0.3 % of the white shows through
    assert np.abs(cube - CUBE).max() <= 2
    outside = np.ones(img.shape[:2], bool)
    outside[5:12, 4:10] = False
    assert (img[outside] == 255).all()


def test_opacity_is_per_unit_of_depth():
    """The same physical layer at half the resolution looks the same."""
    fine = _cube_volume(shape=(4, 2, 2), box=((0, 4), (0, 2), (0, 2)))
    coarse = fine[:, ::2]
    a = render_volume(fine, scale=(1.0, 1.0, 1.0), opacity=0.1).compute()
    b = render_volume(coarse, scale=(2.0, 1.0, 1.0), opacity=0.1).compute()
    assert np.abs(a.astype(int) - b).max() <= 1


def test_alpha_from_rgb_is_the_stored_alpha():
    rgb = _random_rgba()[:3]
    stored = np.rint(255.0 - rgb.astype(np.float32).mean(axis=0, dtype=np.float32))
    np.testing.assert_array_equal(render_mod._alpha_from_rgb(rgb), stored.astype(np.uint8))


def test_parse_clip():
    assert parse_clip("1:4, :, 3:") == ((1, 4), (0, None), (3, None))
    for bad in ("1:4,2:3", "a:b,:,:", "1-4,:,:", "1:4,:,:,:"):
        with pytest.raises(ValueError, match="clip must be"):
            parse_clip(bad)
    with pytest.raises(ValueError, match="clip along y"):
        RenderConfig(clip=((0, 4), (5, 5), (0, None)))


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("render")
    vol = _cube_volume(shape=(24, 40, 32), box=((6, 18), (10, 24), (8, 20)))
    ngff.write_volume(vol, d / "rgb.ome.zarr", axes="czyx", kind="rgb", scale=5.0,
                      chunks=(3, 10, 16, 16), n_levels=3)  # fmt: skip
    rgba = np.concatenate([vol, (255 - (vol.astype(np.uint16).sum(0) + 1) // 3)[None]])
    ngff.write_volume(rgba.astype(np.uint8), d / "rgba.ome.zarr", axes="czyx", kind="rgb",
                      scale=5.0, chunks=(4, 10, 16, 16), n_levels=2)  # fmt: skip
    ngff.write_volume(np.zeros((8, 8, 8), np.uint16), d / "ct.ome.zarr", axes="zyx")
    ngff.write_volume(vol, d / "incomplete.ome.zarr", axes="czyx", kind="rgb")
    ngff.update_provenance(d / "incomplete.ome.zarr", complete=False)
    (d / "exists.png").write_bytes(b"an earlier picture")
    return d


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("store", ["rgb", "rgba"])
def test_render_command_writes_the_cube_over_white(stores, tmp_path, store):
    out = tmp_path / "render.png"
    res = _run("render", stores / f"{store}.ome.zarr", "-o", out, "--opacity", "0.2")
    assert res.exit_code == 0, res.output
    assert "level 0" in res.output and "24×40×32 voxels" in res.output
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (40, 32, 3)
    assert (img[:3] == 255).all() and (img[:, :3] == 255).all()  # white like a slide
    np.testing.assert_allclose(img[10:24, 8:20].reshape(-1, 3), np.tile(CUBE, (14 * 12, 1)), atol=2)


def test_render_command_level_clip_and_oblique_view(stores, tmp_path):
    out = tmp_path / "r.png"
    res = _run("render", stores / "rgb.ome.zarr", "-o", out, "--max-size", "20")
    assert res.exit_code == 0, res.output
    assert "level 1, 12×20×16 voxels" in res.output  # the finest level that fits
    assert np.asarray(Image.open(out)).shape[:2] == (20, 16)

    res = _run("render", stores / "rgb.ome.zarr", "-o", out, "--overwrite",
               "--clip", "0:24,10:24,:", "--level", "0")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "level 0, 24×14×32 voxels" in res.output
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape == (14, 32, 3)
    assert np.abs(img[:, 8:20] - CUBE).max() <= 2 and (img[:, :8] == 255).all()

    res = _run("render", stores / "rgb.ome.zarr", "-o", out, "--overwrite",
               "--azimuth", "35", "--elevation", "25")  # fmt: skip
    assert res.exit_code == 0, res.output
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape[0] > 40 and img.shape[1] > 32  # the box seen corner-on is larger
    assert (img[0] == 255).all() and (img[-1] == 255).all()
    assert (np.abs(img - CUBE).max(axis=-1) <= 4).sum() > 50  # the cube's front face


def test_render_command_turntable_gif(stores, tmp_path):
    out = tmp_path / "turn.gif"
    res = _run("render", stores / "rgb.ome.zarr", "-o", out, "--frames", "4",
               "--elevation", "20", "--level", "1")  # fmt: skip
    assert res.exit_code == 0, res.output
    with Image.open(out) as gif:
        assert gif.n_frames == 4
        sizes = set()
        for f in range(4):
            gif.seek(f)
            frame = np.asarray(gif.convert("RGB"))
            sizes.add(frame.shape)
            assert (frame[0] == 255).all()
            assert (frame != 255).any()
        assert len(sizes) == 1


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("ct", [], "not an RGB(A) stain"),
        ("incomplete", [], "is incomplete"),
        ("missing", [], "does not exist"),
        ("level", ["--level", "3"], "level must be in 0..2"),
        ("clip", ["--clip", "0:4,0:8"], "clip must be Z0:Z1,Y0:Y1,X0:X1"),
        ("clip-range", ["--clip", "0:4,8:2,:"], "clip along y"),
        ("clip-outside", ["--clip", "0:99,:,:"], "within 0:24"),
        ("exists", [], "already exists"),
        ("gif-suffix", ["--frames", "3"], "must end in .gif"),
        ("opacity", ["--opacity", "0"], "opacity must be a positive number"),
        ("azimuth", ["--azimuth", "nan"], "azimuth must be a finite number"),
    ],
)
def test_render_bad_input_one_line_exit_2_nothing_written(stores, tmp_path, case, extra, message):
    store = {"ct": "ct", "incomplete": "incomplete", "missing": "nope"}.get(case, "rgb")
    out = stores / "exists.png" if case == "exists" else tmp_path / "render.png"
    before = sorted(p.name for p in tmp_path.iterdir())
    res = _run("render", stores / f"{store}.ome.zarr", "-o", out, *extra)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (stores / "exists.png").read_bytes() == b"an earlier picture"
