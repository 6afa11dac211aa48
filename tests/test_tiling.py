"""Tile grid, blend weights and tiled inference (vstain_dask.tiling)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vstain_dask.errors import InputError
from vstain_dask.stain import StainConfig
from vstain_dask.tiling import (
    BlendMode,
    TileGrid,
    Tiling,
    blend_weights,
    count_tiles,
    predict_plane,
    predict_region,
    tile_starts,
)

MODES = list(BlendMode)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the test machine is shared; tiny models gain nothing from more threads
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def plus_one(t: torch.Tensor) -> torch.Tensor:
    return t + 1


def two_x_minus_three(t: torch.Tensor) -> torch.Tensor:
    return 2 * t - 3


def small_net(c_in: int = 3, c_out: int = 3, seed: int = 0) -> torch.nn.Module:
    """A random conv net whose output depends on the whole tile (InstanceNorm, zero padding),
    so overlapping tiles genuinely disagree about shared pixels."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(c_in, 6, 3, padding=1),
        torch.nn.InstanceNorm2d(6),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, c_out, 3, padding=1),
        torch.nn.Tanh(),
    ).eval()


def rand_planes(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def covered(starts: np.ndarray, tile: int, length: int) -> np.ndarray:
    """How many tiles cover each pixel of [0, length)."""
    count = np.zeros(max(length, tile), dtype=int)
    for s in starts:
        count[s : s + tile] += 1
    return count[:length]


# ---------------------------------------------------------------------------------------------
# the 1D grid


@pytest.mark.parametrize(
    ("length", "tile", "step", "expected"),
    [
        (10, 4, 2, [0, 2, 4, 6]),  # the lattice ends at the edge
        (11, 4, 2, [0, 2, 4, 6, 7]),  # last tile aligned to the edge
        (4, 4, 4, [0]),
        (3, 4, 2, [0]),  # plane smaller than a tile: one (padded) tile
        (1, 1, 1, [0]),
        (5, 1, 1, [0, 1, 2, 3, 4]),
        (9, 4, 4, [0, 4, 5]),
        (600, 256, 64, [0, 64, 128, 192, 256, 320, 344]),
    ],
)
def test_tile_starts_known_values(length, tile, step, expected):
    assert tile_starts(length, tile=tile, step=step).tolist() == expected


def test_paper_grid_size():
    # 1536-pixel planes, 256 tiles, step 64: 21 tiles per axis, the last on the lattice
    starts = tile_starts(1536, tile=256, step=64)
    assert len(starts) == 21
    assert starts[-1] == 1536 - 256


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1, 300),
    tile=st.integers(1, 64),
    data=st.data(),
)
def test_tile_starts_cover_every_pixel(length, tile, data):
    step = data.draw(st.integers(1, tile))
    s = tile_starts(length, tile=tile, step=step)
    assert s.dtype == np.int64
    assert s[0] == 0
    assert np.all(np.diff(s) > 0), "starts strictly increasing"
    assert np.all(np.diff(s) <= step), "no gap larger than the step"
    assert np.all(s[:-1] % step == 0), "all but the last tile on the global lattice"
    assert s[-1] + tile == max(length, tile), "last tile ends at the edge"
    assert np.all(s >= 0) and np.all(s + tile <= max(length, tile)), "tiles inside the plane"
    assert covered(s, tile, length).min() >= 1


# ---------------------------------------------------------------------------------------------
# the 2D grid


@st.composite
def grids_and_regions(draw):
    th, tw = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    grid = TileGrid(
        extent=(draw(st.integers(1, 60)), draw(st.integers(1, 60))),
        tile=(th, tw),
        step=(draw(st.integers(1, th)), draw(st.integers(1, tw))),
    )
    H, W = grid.extent
    y0, x0 = draw(st.integers(0, H - 1)), draw(st.integers(0, W - 1))
    y1, x1 = draw(st.integers(y0 + 1, H)), draw(st.integers(x0 + 1, W))
    return grid, (y0, y1, x0, x1)


@settings(max_examples=200, deadline=None)
@given(grids_and_regions())
def test_grid_touching_tiles_and_read_region(case):
    grid, region = case
    H, W = grid.extent
    th, tw = grid.tile
    tiles = grid.tiles()
    assert len(tiles) == grid.n_tiles == math.prod(grid.shape)
    # fixed global row-major order
    assert np.array_equal(tiles, tiles[np.lexsort((tiles[:, 1], tiles[:, 0]))])
    # every pixel of the plane is covered
    count = np.zeros(grid.padded_extent, dtype=int)
    for y, x in tiles:
        count[y : y + th, x : x + tw] += 1
    assert count[:H, :W].min() >= 1

    # brute force: tiles whose footprint (clipped to the plane) meets the region
    y0, y1, x0, x1 = region
    expected = [
        (y, x)
        for y, x in tiles
        if y < y1 and min(y + th, H) > y0 and x < x1 and min(x + tw, W) > x0
    ]
    touching = grid.tiles_touching(region)
    assert [tuple(t) for t in touching] == expected  # same tiles, same global order

    # read_region is the bounding box of those footprints: contains each, and is minimal
    ry0, ry1, rx0, rx1 = grid.read_region(region)
    assert ry0 == min(y for y, _ in expected)
    assert ry1 == max(min(y + th, H) for y, _ in expected)
    assert rx0 == min(x for _, x in expected)
    assert rx1 == max(min(x + tw, W) for _, x in expected)
    assert ry0 <= y0 and y1 <= ry1 and rx0 <= x0 and x1 <= rx1


def test_grid_accepts_ints_and_is_hashable():
    g = TileGrid(extent=100, tile=32, step=8)
    assert g == TileGrid(extent=(100, 100), tile=(32, 32), step=(8, 8))
    assert hash(g) == hash(TileGrid(extent=(100, 100), tile=(32, 32), step=(8, 8)))
    assert g.read_region() == (0, 100, 0, 100)
    with pytest.raises(ValueError):
        g.ys[0] = 5  # starts are read-only


def test_grid_read_region_halo_for_the_paper_grid():
    # a 256-pixel block in the middle of a 1536 plane reads tile - step = 192 pixels around it
    g = TileGrid(extent=(1536, 1536))
    assert g.read_region((512, 768, 512, 768)) == (320, 960, 320, 960)
    assert len(g.tiles_touching((512, 768, 512, 768))) == 7 * 7


def test_count_tiles_known_values():
    # DESIGN "Performance model": ~6.6e5 tiles per axis at step 64, ~1e5 at step 192
    assert count_tiles((1536, 1536, 1536), tile=256, step=64, axes=(0,)) == 1536 * 21 * 21
    assert count_tiles((1536, 1536, 1536), tile=256, step=192, axes="z") == 1536 * 8 * 8
    shape = (10, 14, 12)

    def n(length):  # tiles along one axis for tile 4, step 3
        return math.ceil((length - 4) / 3) + 1

    per_axis = [10 * n(14) * n(12), 14 * n(10) * n(12), 12 * n(10) * n(14)]
    assert count_tiles(shape, tile=4, step=3, axes=(0,)) == per_axis[0]
    assert count_tiles(shape, tile=4, step=3, axes=("z", "y", "x")) == sum(per_axis)
    assert count_tiles(shape, tile=4, step=3, axes="zyx") == sum(per_axis)
    assert count_tiles(shape, tile=4, step=3, axes=2) == per_axis[2]


# ---------------------------------------------------------------------------------------------
# blend weights


@settings(max_examples=200, deadline=None)
@given(th=st.integers(1, 70), tw=st.integers(1, 70), mode=st.sampled_from(MODES))
def test_weight_invariants(th, tw, mode):
    w = blend_weights((th, tw), mode=mode)
    assert w.shape == (th, tw) and w.dtype == np.float32
    assert w.min() > 0
    assert w.max() == 1
    assert np.array_equal(w, w[::-1, :]) and np.array_equal(w, w[:, ::-1])
    if mode is BlendMode.MEAN:
        assert np.all(w == 1)
    else:
        cy, cx = (th - 1) // 2, (tw - 1) // 2
        assert w[cy, cx] == w.max()
        # non-increasing from the centre outwards
        assert np.all(np.diff(w[cy, cx:]) <= 0) and np.all(np.diff(w[cy:, cx]) <= 0)
        assert w.min() >= 1e-3
    assert blend_weights((th, tw), mode=mode.value) is w  # computed once, cached
    assert not w.flags.writeable


def test_gaussian_weights_sigma_is_an_eighth_of_the_tile():
    w = blend_weights(256, mode="gaussian").astype(np.float64)
    # centre pixels sit 0.5 from the centre; sigma = 32
    expected = np.exp(-((32.5**2 - 0.5**2) / (2 * 32.0**2)))
    assert w[127, 127 - 32] == pytest.approx(expected, rel=1e-6)
    assert w[127, 0] == pytest.approx(1e-3)  # exp(-(127.5/32)²/2) < 1e-3: floored


def test_cosine_weights_known_values():
    w = blend_weights(4, mode="cosine").astype(np.float64)
    edge = np.cos(3 * np.pi / 8) ** 2 / np.cos(np.pi / 8) ** 2  # Hann at pixel centres
    np.testing.assert_allclose(w[1], [edge, 1, 1, edge], rtol=1e-6)
    np.testing.assert_allclose(w[0], [edge * edge, edge, edge, edge * edge], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# tiled inference: known answers

SHAPES_GRIDS = [
    # (H, W), tile, step
    ((32, 32), 8, 4),
    ((37, 45), 16, 5),  # extents not on the lattice
    ((37, 45), (16, 8), (3, 8)),  # non-square tile and step
    ((5, 7), 8, 4),  # plane smaller than the tile
    ((5, 40), 8, (2, 6)),  # smaller along one axis only
    ((1, 1), 4, 1),
    ((20, 13), 13, 13),  # step == tile
    ((17, 19), 6, 1),  # step 1: every pixel in up to 36 tiles
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("extent", "tile", "step"), SHAPES_GRIDS)
@pytest.mark.parametrize("model", [plus_one, two_x_minus_three])
def test_pointwise_model_comes_back_exactly(mode, extent, tile, step, model):
    x = rand_planes((2, 3, *extent))
    out = predict_plane(x, model, tile=tile, step=step, blend=mode, batch_size=7)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.array_equal(out, model(torch.from_numpy(x)).numpy())


@settings(max_examples=60, deadline=None)
@given(
    H=st.integers(1, 40),
    W=st.integers(1, 40),
    th=st.integers(1, 16),
    tw=st.integers(1, 16),
    mode=st.sampled_from(MODES),
    data=st.data(),
)
def test_plus_one_exact_for_any_grid_and_region(H, W, th, tw, mode, data):
    grid = TileGrid(
        extent=(H, W),
        tile=(th, tw),
        step=(data.draw(st.integers(1, th)), data.draw(st.integers(1, tw))),
    )
    y0, x0 = data.draw(st.integers(0, H - 1)), data.draw(st.integers(0, W - 1))
    region = (y0, data.draw(st.integers(y0 + 1, H)), x0, data.draw(st.integers(x0 + 1, W)))
    x = rand_planes((1, 2, H, W), seed=H * W)
    ry0, ry1, rx0, rx1 = grid.read_region(region)
    out = predict_region(
        x[..., ry0:ry1, rx0:rx1], plus_one, grid=grid, region=region, blend=mode, batch_size=5
    )
    expected = x[..., region[0] : region[1], region[2] : region[3]] + np.float32(1)
    assert np.array_equal(out, expected)


def test_small_plane_is_reflect_padded_to_the_tile():
    net = small_net(c_in=1, c_out=2)
    x = rand_planes((1, 5, 7))
    seen = []

    def predict(t):
        seen.append(tuple(t.shape))
        return net(t)

    out = predict_plane(x, predict, tile=8, step=4)
    assert seen == [(1, 1, 8, 8)]  # the generator always sees tile-sized input
    padded = np.pad(x, ((0, 0), (0, 3), (0, 1)), mode="reflect")
    with torch.inference_mode():
        expected = net(torch.from_numpy(padded)[None])[0, :, :5, :7].numpy()
    assert np.array_equal(out, expected)


def test_plane_smaller_along_one_axis_matches_padding_by_hand():
    net = small_net()
    x = rand_planes((3, 5, 30))
    out = predict_plane(x, net, tile=8, step=3, blend="gaussian", batch_size=4)
    padded = np.pad(x, ((0, 0), (0, 3), (0, 0)), mode="reflect")
    expected = predict_plane(padded, net, tile=8, step=3, blend="gaussian", batch_size=4)
    assert np.array_equal(out, expected[:, :5])


# ---------------------------------------------------------------------------------------------
# tiled inference: regions agree with whole planes bit for bit

NET = small_net()
WHOLE_GRID = TileGrid(extent=(41, 53), tile=(12, 16), step=(5, 7))
WHOLE_X = rand_planes((2, 3, 41, 53), seed=1)
WHOLE = {
    mode: predict_region(WHOLE_X, NET, grid=WHOLE_GRID, blend=mode, batch_size=6) for mode in MODES
}


def test_overlapping_tiles_disagree_in_the_test_model():
    # otherwise region-vs-whole agreement would prove nothing
    assert np.abs(WHOLE["mean"] - WHOLE["gaussian"]).max() > 1e-2


@settings(max_examples=40, deadline=None)
@given(data=st.data(), mode=st.sampled_from(MODES))
def test_region_equals_whole_plane_bit_for_bit(data, mode):
    H, W = WHOLE_GRID.extent
    y0, x0 = data.draw(st.integers(0, H - 1)), data.draw(st.integers(0, W - 1))
    region = (y0, data.draw(st.integers(y0 + 1, H)), x0, data.draw(st.integers(x0 + 1, W)))
    ry0, ry1, rx0, rx1 = WHOLE_GRID.read_region(region)
    out = predict_region(
        WHOLE_X[..., ry0:ry1, rx0:rx1],
        NET,
        grid=WHOLE_GRID,
        region=region,
        blend=mode,
        batch_size=6,
    )
    expected = WHOLE[mode][..., region[0] : region[1], region[2] : region[3]]
    assert np.array_equal(out, expected)


def test_blocks_tile_the_plane_without_seams():
    # chunk-aligned blocks, as the stain engine cuts them, reassemble the whole plane exactly
    out = np.zeros_like(WHOLE["cosine"])
    for y0 in range(0, 41, 10):
        for x0 in range(0, 53, 20):
            region = (y0, min(y0 + 10, 41), x0, min(x0 + 20, 53))
            ry0, ry1, rx0, rx1 = WHOLE_GRID.read_region(region)
            out[..., region[0] : region[1], region[2] : region[3]] = predict_region(
                WHOLE_X[..., ry0:ry1, rx0:rx1],
                NET,
                grid=WHOLE_GRID,
                region=region,
                blend="cosine",
                batch_size=6,
            )
    assert np.array_equal(out, WHOLE["cosine"])


def test_planes_larger_than_the_read_region_with_origin():
    region = (12, 30, 20, 41)
    assert WHOLE_GRID.read_region(region) == (5, 41, 7, 53)
    # a block that read a more generous halo: pixels (2..41, 4..53) of the plane
    out = predict_region(
        WHOLE_X[..., 2:41, 4:53], NET, grid=WHOLE_GRID, region=region, origin=(2, 4),
        blend="gaussian", batch_size=6,
    )  # fmt: skip
    assert np.array_equal(out, WHOLE["gaussian"][..., 12:30, 20:41])


def test_torch_and_readonly_or_strided_numpy_inputs_agree():
    ro = WHOLE_X.copy()
    ro.flags.writeable = False
    flipped = WHOLE_X[..., ::-1, :].copy()[..., ::-1, :]  # negative strides, same values
    for planes in (torch.from_numpy(WHOLE_X.copy()), ro, flipped, WHOLE_X.astype(np.float64)):
        out = predict_region(planes, NET, grid=WHOLE_GRID, blend="mean", batch_size=6)
        assert np.array_equal(out, WHOLE["mean"])


# ---------------------------------------------------------------------------------------------
# batching and torch options


@pytest.mark.parametrize("mode", MODES)
def test_batch_size_invariance(mode):
    x = rand_planes((3, 2, 29, 23), seed=2)
    grid = TileGrid(extent=(29, 23), tile=8, step=3)
    ref = predict_region(x, plus_one, grid=grid, blend=mode, batch_size=1)
    for bs in (7, 10_000):
        for pad in (True, False):
            out = predict_region(x, plus_one, grid=grid, blend=mode, batch_size=bs, pad_batch=pad)
            assert np.array_equal(out, ref)
    # a convolution network's kernels change with the batch size in the last bits only
    net = small_net(c_in=2, c_out=3)
    ref = predict_region(x, net, grid=grid, blend=mode, batch_size=1)
    for bs in (7, 10_000):
        out = predict_region(x, net, grid=grid, blend=mode, batch_size=bs)
        np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("mode", MODES)
def test_uint8_output_equals_converting_on_the_host(mode):
    """``to_uint8`` converts where the accumulators live: the same bytes as the model card's
    conversion of the float32 result, also for values outside [-1, 1]."""
    x = rand_planes((2, 3, 29, 23), seed=3)
    grid = TileGrid(extent=(29, 23), tile=8, step=3)
    for predict in (small_net(), lambda t: 1.7 * t):  # tanh output; values to clip both ways
        ref = predict_region(x, predict, grid=grid, blend=mode, batch_size=7)
        out = predict_region(x, predict, grid=grid, blend=mode, batch_size=7, to_uint8=True)
        assert out.dtype == np.uint8 and out.shape == ref.shape
        host = np.clip(np.rint((ref + 1.0) * 127.5), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(out, host)
    assert out.min() == 0 and out.max() == 255  # both clip ends were exercised


def test_tiles_are_streamed_in_batches():
    x = rand_planes((3, 1, 20, 20))
    sizes = []

    def predict(t):
        sizes.append(t.shape[0])
        return t + 1

    grid = TileGrid(extent=20, tile=8, step=4)  # 4 × 4 tiles per plane, 48 in all
    predict_region(x, predict, grid=grid, batch_size=10)
    # a plane's 16 tiles split evenly into 2 passes of 8 (not 10 + 6): 6 passes, none padded
    assert sizes == [8] * 6
    sizes.clear()
    predict_region(x[:1], predict, grid=TileGrid(extent=20, tile=8, step=6), batch_size=4)
    assert sizes == [3] * 3  # 9 tiles: 3 passes of 3 instead of 4, 4, 1 padded to 4
    sizes.clear()
    predict_region(x, predict, grid=grid, batch_size=20)
    assert sizes == [20] * 3  # planes smaller than a batch: tiles of several planes, padded
    sizes.clear()
    predict_region(x, predict, grid=grid, batch_size=10, pad_batch=False)
    assert sizes == [10, 10, 10, 10, 8]


def test_bf16_autocast_on_cpu():
    seen = []

    def predict(t):
        y = NET(t)
        seen.append(y.dtype)
        return y

    out = predict_region(WHOLE_X, predict, grid=WHOLE_GRID, batch_size=6, autocast=True)
    assert set(seen) == {torch.bfloat16}
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, WHOLE["mean"], atol=5e-2)


def test_channels_last():
    seen = []

    def predict(t):
        seen.append(t.is_contiguous(memory_format=torch.channels_last))
        return NET(t)

    out = predict_region(WHOLE_X, predict, grid=WHOLE_GRID, batch_size=6, channels_last=True)
    assert all(seen)
    np.testing.assert_allclose(out, WHOLE["mean"], rtol=0, atol=2e-6)


def test_compile_captures_the_model():
    # the "eager" backend runs the torch.compile (dynamo) path in well under a second; the
    # default inductor backend takes ~30 s to build on a 2-core CPU and is tested on GPU
    net = small_net(seed=3)
    x = WHOLE_X[:1]
    ref = predict_region(x, net, grid=WHOLE_GRID, blend="gaussian", batch_size=6)
    for _ in range(2):  # the second call reuses the compiled callable
        out = predict_region(x, net, grid=WHOLE_GRID, blend="gaussian", batch_size=6,
                             compile="eager")  # fmt: skip
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# torch's own compiler stack (2.11) calls a deprecated torch.jit helper while compiling
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_cuda_region_equals_whole_plane_with_compile_and_bf16():
    net = small_net().cuda().to(memory_format=torch.channels_last)
    grid = TileGrid(extent=(300, 280), tile=64, step=16)
    x = torch.from_numpy(rand_planes((4, 3, 300, 280), seed=5)).cuda()
    kw = {"grid": grid, "blend": "gaussian", "batch_size": 32, "compile": True}
    whole = predict_region(x, net, **kw)  # bf16 autocast and channels_last by default on CUDA
    cpu = predict_region(x.cpu(), net.cpu(), grid=grid, blend="gaussian", batch_size=32)
    np.testing.assert_allclose(whole, cpu, atol=5e-2)
    net.cuda()
    for region in [(0, 100, 0, 280), (100, 217, 31, 190), (250, 300, 270, 280)]:
        ry0, ry1, rx0, rx1 = grid.read_region(region)
        out = predict_region(x[..., ry0:ry1, rx0:rx1], net, region=region, **kw)
        assert np.array_equal(out, whole[..., region[0] : region[1], region[2] : region[3]])


def test_blend_overhead_is_small():
    """Report the per-tile cost of tile extraction and blending (the model is the identity)."""
    x = rand_planes((4, 3, 448, 448))  # 4 × 4 tiles of 256² per plane at step 64
    grid = TileGrid(extent=(448, 448), tile=256, step=64)
    for mode in ("mean", "gaussian"):
        predict_region(x, lambda t: t, grid=grid, blend=mode, batch_size=16)  # warm up
        t0 = time.perf_counter()
        out = predict_region(x, lambda t: t, grid=grid, blend=mode, batch_size=16)
        dt = time.perf_counter() - t0
        print(f"blend={mode}: {1e3 * dt / (4 * grid.n_tiles):.2f} ms per 256² RGB tile on CPU")
        np.testing.assert_allclose(out, x, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": 0, "step": 1}, "tile must be an integer >= 1, got 0"),
        ({"tile": 8, "step": 0}, "step must be an integer in 1..8, got 0$"),
        ({"tile": 8, "step": 9}, r"step must be an integer in 1..8, got 9 \(a step larger"),
        ({"tile": 8.0, "step": 2}, "tile must be an integer >= 1, got 8.0"),
        ({"tile": True, "step": 1}, "tile must be an integer >= 1, got True"),
    ],
)
def test_bad_tile_or_step(kwargs, message):
    with pytest.raises(InputError, match=message):
        tile_starts(10, **kwargs)
    with pytest.raises(ValueError, match=message):
        TileGrid(extent=10, **kwargs)
    with pytest.raises(InputError, match=message):
        Tiling(**kwargs)


def test_bad_length_extent_and_mode():
    with pytest.raises(InputError, match="length must be an integer >= 1, got 0"):
        tile_starts(0, tile=4, step=2)
    with pytest.raises(InputError, match=r"extent\[1\] must be an integer >= 1, got 0"):
        TileGrid(extent=(4, 0), tile=4, step=2)
    with pytest.raises(InputError, match=r"tile must be an integer or a \(y, x\) pair"):
        TileGrid(extent=4, tile=(4, 4, 4), step=2)
    with pytest.raises(
        InputError, match="blend must be one of 'mean', 'gaussian', 'cosine', got 'median'"
    ):
        blend_weights(8, mode="median")
    with pytest.raises(InputError, match="blend must be one of 'mean', 'gaussian', 'cosine'"):
        predict_plane(np.zeros((1, 8, 8), np.float32), plus_one, tile=4, step=2, blend="max")


def test_bad_region_and_planes():
    grid = TileGrid(extent=(20, 30), tile=8, step=4)
    x = np.zeros((1, 1, 20, 30), np.float32)
    with pytest.raises(
        InputError, match=r"region must be \(y0, y1, x0, x1\) with 0 <= y0 < y1 <= 20"
    ):
        grid.read_region((0, 21, 0, 5))
    with pytest.raises(InputError, match="not empty"):
        grid.tiles_touching((5, 5, 0, 5))
    with pytest.raises(InputError, match="region must be four integers"):
        grid.read_region((0, 5, 0))
    with pytest.raises(InputError, match=r"planes must be \(N, C, h, w\), got shape \(20, 30\)"):
        predict_region(x[0, 0], plus_one, grid=grid)
    with pytest.raises(InputError, match=r"planes must cover the read region \(0, 12, 0, 12\)"):
        predict_region(x[..., :10, :10], plus_one, grid=grid, region=(0, 5, 0, 5))
    with pytest.raises(InputError, match="grid must be a TileGrid"):
        predict_region(x, plus_one, grid=(20, 30))
    with pytest.raises(InputError, match="batch_size must be an integer >= 1, got 0"):
        predict_region(x, plus_one, grid=grid, batch_size=0)
    with pytest.raises(InputError, match=r"plane must be \(C, H, W\) or \(N, C, H, W\)"):
        predict_plane(x[0, 0], plus_one, tile=4, step=2)


def test_bad_model_output_and_options():
    grid = TileGrid(extent=(20, 30), tile=8, step=4)
    x = np.zeros((1, 1, 20, 30), np.float32)
    with pytest.raises(
        InputError,
        # 28 tiles, batch_size 16: 2 passes of 14
        match=r"predict must map a \(14, C, 8, 8\) tensor to a \(14, out_channels, 8, 8\) tensor, got shape \(14, 1, 4, 4\)",
    ):
        predict_region(x, lambda t: t[..., :4, :4], grid=grid)
    with pytest.raises(InputError, match=r"to a \(14, 3, 8, 8\) tensor, got shape \(14, 1, 8, 8\)"):
        predict_region(x, plus_one, grid=grid, out_channels=3)
    with pytest.raises(InputError, match="got ndarray"):
        predict_region(x, lambda t: t.numpy(), grid=grid)
    with pytest.raises(
        InputError, match="compile must be True, False or a torch.compile backend name"
    ):
        predict_region(x, plus_one, grid=grid, compile="no-such-backend")


def test_bad_count_tiles_arguments():
    with pytest.raises(InputError, match=r"shape must be a 3D \(Z, Y, X\) volume shape"):
        count_tiles((10, 10), tile=4, step=2)
    with pytest.raises(InputError, match="axes must hold 0, 1, 2 or 'z', 'y', 'x', got 'q'"):
        count_tiles((10, 10, 10), tile=4, step=2, axes="q")
    with pytest.raises(InputError, match="axes must hold 0, 1, 2 or 'z', 'y', 'x', got 3"):
        count_tiles((10, 10, 10), tile=4, step=2, axes=(0, 3))


# ---------------------------------------------------------------------------------------------
# the tiling parameters


def test_tiling_defaults_are_the_papers_and_everyones():
    """One statement of tile, step and blend: the paper's, and the default of every place
    that tiles (stain, evaluate, predict_plane, the command line)."""
    import inspect

    from vstain_dask.cli import evaluate as cli_evaluate
    from vstain_dask.cli import stain as cli_stain
    from vstain_dask.evaluate import EvalConfig, stain_slice

    paper = Tiling()
    assert (paper.tile, paper.step, paper.blend) == (256, 64, BlendMode.MEAN)
    for config in (StainConfig(), EvalConfig()):
        assert config.tiling == paper
        assert (config.tile, config.step, config.blend) == (256, 64, BlendMode.MEAN)
    sig = inspect.signature(stain_slice).parameters
    assert (sig["tile"].default, sig["step"].default) == (paper.tile, paper.step)
    for command in (cli_stain.stain, cli_evaluate.evaluate):
        defaults = {p.name: p.default for p in command.params}
        assert (defaults["tile"], defaults["step"], defaults["blend"]) == (256, 64, "mean")
    assert TileGrid(extent=300) == paper.grid(300)


def test_tiling_object_and_keywords_agree():
    tiling = Tiling(tile=8, step=4, blend="gaussian")
    assert tiling.blend is BlendMode.GAUSSIAN
    assert tiling.grid((20, 30)) == TileGrid(extent=(20, 30), tile=8, step=4)
    config = StainConfig(tile=8, step=4, blend="gaussian")
    assert config.tiling == tiling
    assert config.to_dict()["tile"] == 8 and config.to_dict()["blend"] == "gaussian"
    assert "tiling" not in config.to_dict()  # the fingerprinted form keeps its flat fields
    x = np.random.default_rng(0).random((1, 20, 30), dtype=np.float32)
    by_object = predict_plane(x, plus_one, tiling=tiling, batch_size=4)
    by_keywords = predict_plane(x, plus_one, tile=8, step=4, blend="gaussian", batch_size=4)
    np.testing.assert_array_equal(by_object, by_keywords)
    np.testing.assert_array_equal(by_object, x + 1)
    with pytest.raises(InputError, match="give tiling, or tile, step and blend, not both"):
        predict_plane(x, plus_one, tiling=tiling, tile=8)
    with pytest.raises(InputError, match="tiling must be a Tiling, got tuple"):
        predict_plane(x, plus_one, tiling=(8, 4))
