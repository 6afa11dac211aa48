"""The intensity arithmetic that training, staining and evaluation share (vstain_dask.intensity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from vstain_dask import intensity
from vstain_dask.errors import InputError


def test_reference_levels_are_the_papers():
    assert (intensity.CT_BONE_LEVEL, intensity.CT_BACKGROUND_LEVEL) == (30000, 10000)
    assert intensity.CT_MAX == np.iinfo(np.uint16).max
    assert (intensity.CT_INPUT_LOW, intensity.CT_INPUT_HIGH) == (0.0, 50000.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_bone_and_background_land_on_30000_and_10000(dtype):
    # raw levels: bone 2500, background 700 (gain 20000 / 1800)
    raw = np.array([700.0, 2500.0, 1600.0], np.float32)
    out = intensity.ct_to_paper_units(raw, 2500.0, 700.0, dtype=dtype)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, [10000, 30000, 20000], rtol=0, atol=1e-3)


def test_paper_units_clip_to_uint16_range():
    raw = np.array([-1e6, 0.0, 1e9], np.float32)
    for dtype in (np.float32, np.uint16):
        out = intensity.ct_to_paper_units(raw, 2000.0, 1000.0, dtype=dtype)
        assert out.tolist() == [0, 0, 65535]  # 0 raw -> 10000 - 1000 * 20 < 0


def test_stored_uint16_is_float64_rounded_half_to_even():
    # gain 1: 10000 + (raw - 1000); x.5 rounds to the even neighbour, as np.rint does
    raw = np.array([1000.5, 1001.5, 1002.25, 1002.75], np.float64)
    out = intensity.ct_to_paper_units(raw, 21000.0, 1000.0, dtype=np.uint16)
    assert out.tolist() == [10000, 10002, 10002, 10003]
    # float64 arithmetic: a float32 copy would have lost the .1 of 1e6 + 0.1
    far = intensity.rescale_ct(np.array([1e6 + 0.1]), 2e6, 1e6, bone_target=1e6, dtype=np.int64)
    assert far.tolist() == [10000 + round(0.1 * (1e6 - 10000) / 1e6)]


def test_network_feed_is_float32_arithmetic_as_training_and_staining():
    rng = np.random.default_rng(0)
    raw = (rng.random(1000) * 60000).astype(np.float32)
    got = intensity.ct_to_paper_units(raw, 31234.5, 12345.6)
    gain = np.float32(20000 / (31234.5 - 12345.6))
    expect = np.clip((raw - np.float32(12345.6)) * gain + np.float32(10000), 0, 65535)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expect)
    assert not np.array_equal(got, np.rint(got))  # not rounded: only stored volumes are


def test_rescale_general_targets_and_errors():
    raw = np.array([1000.0, 5000.0, -50000.0])
    out = intensity.rescale_ct(raw, 5000.0, 1000.0, bone_target=1.0, background_target=0.0,
                               dtype=np.float64)  # fmt: skip
    assert out.tolist() == [0.0, 1.0, -12.75]  # floats are not clipped
    assert intensity.rescale_ct(raw, 5000.0, 1000.0, dtype=np.uint8).tolist() == [255, 255, 0]
    with pytest.raises(InputError, match="must be finite and differ"):
        intensity.ct_gain(1000.0, 1000.0)
    with pytest.raises(InputError, match="dtype must be a float dtype or uint16, got int16"):
        intensity.ct_to_paper_units(raw, 5000.0, 1000.0, dtype=np.int16)


def test_network_input_maps_low_high_to_minus_one_plus_one_on_numpy_and_torch():
    v = np.array([0.0, 10000.0, 25000.0, 30000.0, 50000.0, 65535.0], np.float32)
    x = intensity.network_input(v, low=0.0, high=50000.0)
    np.testing.assert_allclose(x, [-1.0, -0.6, 0.0, 0.2, 1.0, 1.0], atol=1e-7)
    assert x.dtype == np.float32
    inverted = intensity.network_input(v, low=0.0, high=50000.0, invert=True)
    np.testing.assert_array_equal(inverted, -x)
    # the same operations on a tensor give the same bits
    rng = np.random.default_rng(1)
    many = (rng.random(100_000) * 65535).astype(np.float32)
    for low, high in ((0.0, 50000.0), (0.0, 65535.0), (1000.0, 60000.0)):
        a = intensity.network_input(many, low=low, high=high)
        t = intensity.network_input(torch.from_numpy(many), low=low, high=high)
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
        np.testing.assert_array_equal(t.numpy(), a)


def test_output_to_uint8_rounds_half_to_even_and_clips():
    halves = np.array([64.5, 65.5, 66.5, 67.5, 127.5])
    y = (halves / 127.5 - 1.0).astype(np.float32)
    assert ((y + np.float32(1)) * np.float32(127.5)).tolist() == halves.tolist()  # exact halves
    assert intensity.output_to_uint8(y).tolist() == [64, 66, 66, 68, 128]  # half to even
    assert intensity.output_to_uint8(torch.from_numpy(y)).tolist() == [64, 66, 66, 68, 128]
    ends = np.array([-1.5, -1.0, 0.0, 1.0, 1.5], np.float32)
    out = intensity.output_to_uint8(ends)
    assert out.dtype == np.uint8 and out.tolist() == [0, 0, 128, 255, 255]


def test_output_to_uint8_tensor_equals_array():
    rng = np.random.default_rng(2)
    y = rng.uniform(-1.1, 1.1, size=(2, 3, 17, 19)).astype(np.float32)
    t = intensity.output_to_uint8(torch.from_numpy(y))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.uint8
    np.testing.assert_array_equal(t.numpy(), intensity.output_to_uint8(y))
    b = torch.from_numpy(y).bfloat16()  # autocast output: converted through float32
    expect = intensity.output_to_uint8(b.float().numpy())
    np.testing.assert_array_equal(intensity.output_to_uint8(b).numpy(), expect)


@pytest.mark.parametrize("sigma", [0.3, 0.6, 1.0, 1.4, 2.0])
@pytest.mark.parametrize("truncate", [2.0, 4.0])
def test_prefilter_halo_is_scipys_kernel_radius(sigma, truncate):
    halo = intensity.prefilter_halo(sigma, truncate=truncate)
    # an impulse spreads exactly `halo` voxels each way under scipy's own filter
    impulse = np.zeros(41)
    impulse[20] = 1.0
    reach = np.flatnonzero(ndi.gaussian_filter1d(impulse, sigma, truncate=truncate))
    assert (reach.min(), reach.max()) == (20 - halo, 20 + halo)


def test_prefilter_halo_defaults_and_zero():
    assert intensity.prefilter_halo(intensity.PREFILTER_SIGMA) == 4  # int(4 * 1 + 0.5)
    assert intensity.prefilter_halo(1.4) == 6  # int(5.6 + 0.5)
    assert intensity.prefilter_halo(0.0) == 0


def test_prefilter_equals_scipy_and_rounds_integers_once():
    rng = np.random.default_rng(3)
    x = rng.random((6, 9, 8)).astype(np.float32) * 1000
    np.testing.assert_array_equal(intensity.prefilter(x, 1.0), ndi.gaussian_filter(x, 1.0))
    u = (x * 60).astype(np.uint16)
    exact = ndi.gaussian_filter(u.astype(np.float64), (1.0, 1.5, 0.7))
    out = intensity.prefilter(u, (1.0, 1.5, 0.7))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, np.rint(exact).astype(np.uint16))
