"""Tiled blending against a brute-force reference written in this file from the documented rules.

The network is a real convolutional generator (a tiny ResNet with instance normalization and
reflection padding, random weights), so a tile's prediction depends on where the tile sits: a
grid off by one pixel, a weight of the wrong shape or a missing edge tile changes the result.
The reference loops over the tiles one at a time and follows only the documentation:

- grid (:func:`~vstain_dask.tiling.tile_starts`): starts ``0, step, 2·step, …`` and, when that
  lattice does not end at the edge, one more tile ending at the edge; a plane smaller than a
  tile has one tile at 0 and is reflect-padded at its end to the tile size;
- weights (:func:`~vstain_dask.tiling.blend_weights`): ``mean`` all ones; ``gaussian``
  ``exp(-d² / 2σ²)`` with ``σ = tile / 8`` and ``d`` the distance of the pixel centre from the
  tile centre; ``cosine`` the Hann window at pixel centres, ``sin²(π (i + ½) / tile)``; in 2D the
  outer product of the two axes, scaled to a maximum of 1 and raised to at least 1e-3 (not for
  ``mean``); each pixel's value is ``Σ w·prediction / Σ w`` over the tiles covering it;
- input (:class:`~vstain_dask.models.InputNormalization`):
  ``clip(2 (v - low) / (high - low) - 1, -1, 1)``, negated if ``invert``, repeated to the
  channels;
- output (model card): ``round((y + 1) · 127.5)`` clipped to 0..255.

The reference accumulates in float64 from float32 network outputs, so it differs from the
product only by the rounding of float32 forward passes in batches of another size (the tiles
and the network are the same) and of the float32 weights: ``ATOL`` bounds that and nothing more.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

import vstain_dask
from vstain_dask.models import (
    GeneratorConfig,
    InputNormalization,
    build_generator,
    load_model,
    save_model,
)
from vstain_dask.tiling import TileGrid, predict_plane, predict_region

torch.set_num_threads(1)

TILE, STEP = 16, 6
#: (H, W) planes: (40 - 16) and (34 - 16) are multiples of 6, so the lattice ends at the edge;
#: (37 - 16) and (43 - 16) are not, so the last tile is shifted to end there; 12 < 16 pads
EXTENTS = {
    "edge-aligned": (40, 34),
    "last-tile-shifted": (37, 43),
    "smaller-than-a-tile": (12, 37),
}
MODES = ("gaussian", "cosine", "mean")
#: float32 forward passes in other batch sizes and float32 weights, on outputs in [-1, 1]
#: (measured: 1.4e-6 at most, over three random networks); a wrong tile or weight shows as
#: 1e-2 or more (``test_the_reference_tells_the_modes_and_grids_apart``)
ATOL = 1e-5
NORMALIZATION = InputNormalization(low=500.0, high=3500.0, invert=True, channels=3,
                                   ct_normalized=False)  # fmt: skip


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A real checkpoint: a tiny 3-channel ResNet generator with random weights, inverted input."""
    gen = build_generator(GeneratorConfig(in_channels=3, ngf=4, n_blocks=1), seed=7)
    path = tmp_path_factory.mktemp("model") / "blend.pt"
    return save_model(path, generator=gen, normalization=NORMALIZATION, variant="cyclegan-invct")


def _ct(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth random uint16 CT with texture, reaching past both ends of the input window."""
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    v = (v - v.min()) / np.ptp(v) * 4000 + 200 + rng.normal(0, 40, shape)
    return np.clip(v, 0, 65535).astype(np.uint16)


# -- the reference ---------------------------------------------------------------------------------


def _starts(length: int) -> list[int]:
    if length <= TILE:
        return [0]
    starts = list(range(0, length - TILE + 1, STEP))
    if starts[-1] + TILE != length:
        starts.append(length - TILE)
    return starts


def _weight(mode: str) -> np.ndarray:
    if mode == "mean":
        return np.ones((TILE, TILE))
    centres = np.arange(TILE) + 0.5
    if mode == "gaussian":
        sigma = TILE / 8
        profile = np.exp(-((centres - TILE / 2) ** 2) / (2 * sigma**2))
    else:
        profile = np.sin(np.pi * centres / TILE) ** 2
    w = np.outer(profile, profile)
    return np.maximum(w / w.max(), 1e-3)


def _input(ct: np.ndarray, norm: InputNormalization) -> np.ndarray:
    x = np.clip(2 * (ct.astype(np.float64) - norm.low) / (norm.high - norm.low) - 1, -1, 1)
    return (-x if norm.invert else x).astype(np.float32)


def _brute_force(ct: np.ndarray, generator: torch.nn.Module, mode: str) -> np.ndarray:
    """(H, W) raw CT -> (3, H, W) float64 blended prediction, one tile at a time."""
    H, W = ct.shape
    x = _input(ct, NORMALIZATION)
    x = np.pad(x, ((0, max(0, TILE - H)), (0, max(0, TILE - W))), mode="reflect")
    weight = _weight(mode)
    acc = np.zeros((3, H, W))
    wsum = np.zeros((H, W))
    for y0 in _starts(H):
        for x0 in _starts(W):
            t = torch.from_numpy(np.ascontiguousarray(x[y0 : y0 + TILE, x0 : x0 + TILE]))
            t = t.expand(1, NORMALIZATION.channels, TILE, TILE)
            with torch.inference_mode():
                pred = generator(t)[0].double().numpy()
            h, w = min(TILE, H - y0), min(TILE, W - x0)
            acc[:, y0 : y0 + h, x0 : x0 + w] += weight[:h, :w] * pred[:, :h, :w]
            wsum[y0 : y0 + h, x0 : x0 + w] += weight[:h, :w]
    return acc / wsum


def _uint8(y: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((y + 1) * 127.5), 0, 255).astype(np.uint8)


# -- the tests -------------------------------------------------------------------------------------


def test_the_reference_tells_the_modes_and_grids_apart(model_path):
    """The comparisons below can fail: with this network the blend modes differ, and so do
    tiles placed one pixel apart, far beyond ``ATOL``."""
    m = load_model(model_path)
    ct = _ct(EXTENTS["last-tile-shifted"], seed=1)
    refs = {mode: _brute_force(ct, m.generator, mode) for mode in MODES}
    for a, b in (("gaussian", "cosine"), ("gaussian", "mean"), ("cosine", "mean")):
        assert np.abs(refs[a] - refs[b]).max() > 1000 * ATOL, (a, b)
    # the same pixels of a plane one column narrower, whose last column of tiles starts a
    # pixel earlier
    cut = _brute_force(ct[:, :-1], m.generator, "gaussian")
    assert np.abs(cut - refs["gaussian"][:, :, :-1]).max() > 1000 * ATOL
    assert refs["mean"].std() > 0.05  # the network's output varies over the plane


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("extent", EXTENTS.values(), ids=EXTENTS.keys())
def test_predict_plane_and_region_equal_the_brute_force_blend(model_path, mode, extent):
    m = load_model(model_path)
    ct = _ct(extent, seed=sum(extent))
    expected = _brute_force(ct, m.generator, mode)

    def predict(t):
        return m.generator(m.to_input(t))

    planes = ct.astype(np.float32)[None, None]
    got = predict_plane(planes, predict, tile=TILE, step=STEP, blend=mode, batch_size=5)
    assert got.shape == (1, 3, *extent) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=ATOL)
    # a region inside the plane, from only the pixels its tiles read
    H, W = extent
    grid = TileGrid(extent=extent, tile=TILE, step=STEP)
    region = (min(5, H - 1), H - 2, 7, W - 3)
    r0, r1, c0, c1 = grid.read_region(region)
    part = predict_region(planes[..., r0:r1, c0:c1], predict, grid=grid, region=region,
                          blend=mode, batch_size=5)  # fmt: skip
    y0, y1, x0, x1 = region
    np.testing.assert_allclose(part[0], expected[:, y0:y1, x0:x1], rtol=0, atol=ATOL)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("axis", "shape"),
    [("z", (2, *EXTENTS["edge-aligned"])), ("z", (2, *EXTENTS["last-tile-shifted"])),
     ("y", (40, 3, 37)), ("z", (2, *EXTENTS["smaller-than-a-tile"]))],
    ids=["z-edge-aligned", "z-last-tile-shifted", "y-planes", "z-smaller-than-a-tile"],
)  # fmt: skip
def test_stain_equals_the_brute_force_blend(model_path, mode, axis, shape):
    """``vstain_dask.stain`` on a small volume in blocks of one plane by 16 x 16 pixels (each
    plane split across blocks), against the reference plane by plane, rounded to 8 bits."""
    vol = _ct(shape, seed=3)
    a = "zyx".index(axis)
    block = tuple(1 if d == a else 16 for d in range(3))
    # on the CPU in float32 (on CUDA the defaults are bf16 autocast and compilation)
    out = vstain_dask.stain(vol, model_path, axes=axis, tile=TILE, step=STEP, blend=mode,
                            batch_size=5, chunks=block, block=block, device="cpu",
                            autocast=False, compile=False)  # fmt: skip
    got = out.compute(scheduler="synchronous").values
    assert got.shape == (3, *shape) and got.dtype == np.uint8
    m = load_model(model_path)
    planes = np.moveaxis(vol, a, 0)
    expected = np.stack([_uint8(_brute_force(p, m.generator, mode)) for p in planes], axis=1)
    expected = np.moveaxis(expected, 1, 1 + a)
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1, (diff.max(), np.argwhere(diff > 1)[:5])
    # only values within ATOL of a rounding boundary can land on the other side of it
    assert (diff > 0).mean() <= 0.01, (diff > 0).mean()
