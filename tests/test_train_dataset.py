"""The patch stream: crops, shared geometry, jitter bounds, seeding and chunk-bounded reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from zarr.storage import LocalStore

from vstain_dask.errors import InputError, VolumeFormatError
from vstain_dask.models import InputNormalization
from vstain_dask.pairs import write_pair
from vstain_dask.train import AugmentConfig, PatchDataset, make_loader, scan_pairs
from vstain_dask.train._testing import IDENTITY_NORMALIZATION, write_toy_pairs
from vstain_dask.train.augment import (
    CropGeometry,
    Jitter,
    draw_geometry,
    draw_jitter,
    jitter_ct,
    jitter_histology,
    resample,
)

torch.set_num_threads(1)

NORM = InputNormalization(low=0.0, high=50000.0, channels=1)


def _ramp_store(path, size=(96, 96), chunks=None):
    """A pair whose images encode the pixel position: R = row, G = column, CT linear in both."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    ct = (1000 + 100 * y + 3 * x).astype(np.uint16)
    hist = np.stack([y, x, np.full_like(y, 128)], axis=-1).astype(np.uint8)
    mask = x >= w // 2
    write_pair(path, "ramp", ct=ct, histology=hist, mask=mask, material="mg", sample="s",
               voxel_size=5.0, attrs={"normalization": IDENTITY_NORMALIZATION})  # fmt: skip
    if chunks:
        from vstain_dask.train._testing import _rechunk

        _rechunk(path / "ramp", chunks)
    return path


def _decode(sample):
    """(ct raw value, row, column, mask) of every patch pixel."""
    x = sample["ct"][0].numpy().astype(np.float64)
    raw = (x + 1.0) * 25000.0  # identity CT levels, ct_high 50000
    rgb = (sample["histology"].numpy().astype(np.float64) + 1.0) * 127.5
    return raw, rgb[0], rgb[1], sample["mask"][0].numpy()


def test_crops_share_geometry_on_ct_histology_and_mask(tmp_path):
    path = _ramp_store(tmp_path / "p.zarr")
    pairs = scan_pairs(path)
    aug = AugmentConfig(ct_brightness=0, ct_contrast=0, histology_brightness=0,
                        histology_contrast=0, rotate90=True)  # fmt: skip
    ds = PatchDataset(path, pairs, patch_size=64, patches_per_pair=64, normalization=NORM,
                      augment=aug, seed=3)  # fmt: skip
    turns = set()
    windows = set()
    for i in range(len(ds)):
        raw, row, col, mask = _decode(ds.sample(0, i))
        # bilinear resampling keeps a linear function of position linear: CT = f(R, G) only
        # holds where CT and histology were cut, scaled, flipped and turned the same way
        np.testing.assert_allclose(raw, 1000 + 100 * row + 3 * col, atol=0.1)
        # the mask (nearest neighbour) is "column >= 48" up to one source pixel
        assert (mask[col >= 48.5] == 1).all() and (mask[col <= 46.5] == 0).all()
        geo = draw_geometry(np.random.default_rng([3, 1, 0, i]), (96, 96), 64, aug)
        turns.add((geo.flip_y, geo.flip_x, geo.transpose))
        windows.add(geo.window)
        # source rows run down the patch (across it when transposed), reversed by a vertical
        # flip; source columns likewise
        along_rows = row[0, :] if geo.transpose else row[:, 0]
        along_cols = col[:, 0] if geo.transpose else col[0, :]
        assert (np.diff(along_rows) < 0).all() == geo.flip_y
        assert (np.diff(along_cols) < 0).all() == geo.flip_x
        assert (np.diff(along_rows) != 0).all() and (np.diff(along_cols) != 0).all()
    assert len(turns) == 8  # all rotations by 90° and their mirror images
    assert min(windows) >= round(64 / 1.1) and max(windows) <= round(64 / 0.9)
    assert len(windows) > 5


def test_paper_augmentation_only_flips():
    rng = np.random.default_rng(0)
    geos = [draw_geometry(rng, (96, 96), 64, AugmentConfig()) for _ in range(50)]
    assert not any(g.transpose for g in geos)
    assert {(g.flip_y, g.flip_x) for g in geos} == {(a, b) for a in (0, 1) for b in (0, 1)}


def test_geometry_bounds_and_errors():
    rng = np.random.default_rng(0)
    cfg = AugmentConfig()
    for _ in range(200):
        g = draw_geometry(rng, (80, 100), 64, cfg)
        assert 58 <= g.window <= 71 and 0 <= g.y0 <= 80 - g.window and 0 <= g.x0 <= 100 - g.window
        assert 0.9 - 0.01 <= g.scale <= 1.1 + 0.01
    g = draw_geometry(rng, (64, 64), 64, cfg)  # a window larger than the image is clipped
    assert g.window <= 64
    with pytest.raises(InputError, match="patch size 64 is larger than a pair of size 32x64"):
        draw_geometry(rng, (32, 64), 64, cfg)
    with pytest.raises(InputError, match="scale"):
        AugmentConfig(scale=(1.2, 0.8))
    with pytest.raises(InputError, match="ct_brightness"):
        AugmentConfig(ct_brightness=1.5)


def test_resample_identity_flip_and_nearest():
    a = np.arange(36, dtype=np.uint16).reshape(6, 6)
    same = resample(a, CropGeometry(0, 0, 6, 6))
    np.testing.assert_array_equal(same, a.astype(np.float32))
    flipped = resample(a, CropGeometry(0, 0, 6, 6, flip_y=True, flip_x=True))
    np.testing.assert_array_equal(flipped, a[::-1, ::-1])
    turned = resample(a, CropGeometry(0, 0, 6, 6, flip_y=True, transpose=True))
    np.testing.assert_array_equal(turned, np.rot90(a, -1))  # a quarter turn clockwise
    m = np.zeros((6, 6), bool)
    m[:, 3:] = True
    up = resample(m, CropGeometry(0, 0, 6, 12), nearest=True)
    assert up.dtype == bool and (up[:, 6:]).all() and not up[:, :6].any()
    with pytest.raises(InputError, match="window 5"):
        resample(a, CropGeometry(0, 0, 5, 8))


def test_jitter_bounds_and_rgb_ratios():
    cfg = AugmentConfig()
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (32, 32)).astype(np.float32)
    rgb = rng.uniform(0.05, 1.0, (3, 32, 32)).astype(np.float32)
    for _ in range(100):
        j = draw_jitter(rng, cfg)
        assert 0.9 <= j.ct_contrast <= 1.1 and -0.1 <= j.ct_brightness <= 0.1
        assert 0.9 <= j.histology_contrast <= 1.1 and 0.9 <= j.histology_brightness <= 1.1
        out = jitter_ct(x.copy(), j)
        assert out.min() >= -1 and out.max() <= 1
        assert (np.abs(out - x) <= 0.1 * np.abs(x) + 0.1 + 1e-6).all()
        h = jitter_histology(rgb, j)
        assert h.min() >= 0 and h.max() <= 1
        # R : G : B is kept in every pixel (the stain's hue and saturation)
        np.testing.assert_allclose(h[0] * rgb[1], h[1] * rgb[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(h[2] * rgb[1], h[1] * rgb[2], rtol=1e-4, atol=1e-6)
        # 10 % contrast about the mean, then 10 % brightness: the luminance (0-1) moves by at
        # most 0.1 * |L - mean| + 0.1 * L' <= 0.21
        lum, lum2 = rgb.mean(0), h.mean(0)
        assert (np.abs(lum2 - lum) <= 0.21 + 1e-6).all()
    white = np.ones((3, 4, 4), np.float32)
    bright = jitter_histology(white, Jitter(histology_brightness=1.1, histology_contrast=1.1))
    np.testing.assert_array_equal(bright, white)  # white stays white, not tinted


def test_samples_are_seeded_and_reproducible(tmp_path):
    path = write_toy_pairs(tmp_path / "toy.zarr", n=2, size=(80, 80))
    pairs = scan_pairs(path)
    a = PatchDataset(path, pairs, patch_size=48, patches_per_pair=5, normalization=NORM, seed=7)
    b = PatchDataset(path, pairs, patch_size=48, patches_per_pair=5, normalization=NORM, seed=7)
    c = PatchDataset(path, pairs, patch_size=48, patches_per_pair=5, normalization=NORM, seed=8)
    s1, s2, s3 = a.sample(2, 6), b.sample(2, 6), c.sample(2, 6)
    for k in ("ct", "histology", "mask"):
        assert torch.equal(s1[k], s2[k])
    assert not torch.equal(s1["ct"], s3["ct"])
    assert not torch.equal(s1["ct"], a.sample(3, 6)["ct"])  # a new epoch draws new patches
    assert int(s1["pair"]) == 1 and int(s1["key"]) == 2 * 10 + 6
    assert torch.equal(a[2 * len(a) + 6]["ct"], s1["ct"])
    assert s1["ct"].shape == (1, 48, 48) and s1["histology"].shape == (3, 48, 48)
    assert s1["ct"].dtype == torch.float32 and -1 <= float(s1["ct"].min()) <= 1


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_loader_with_two_worker_processes_matches_in_process(tmp_path):
    # forking a multi-threaded process warns on Python 3.12+; the loader's children only read
    path = write_toy_pairs(tmp_path / "toy.zarr", n=2, size=(80, 80))
    ds = PatchDataset(path, scan_pairs(path), patch_size=48, patches_per_pair=6,
                      normalization=NORM, seed=1)  # fmt: skip
    a = list(make_loader(ds, batch_size=4, workers=0, epochs=2))
    b = list(make_loader(ds, batch_size=4, workers=2, epochs=2))
    assert len(a) == len(b) == 2 * 3  # 12 patches per epoch in batches of 4
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["key"], y["key"]) and torch.equal(x["ct"], y["ct"])
        assert torch.equal(x["histology"], y["histology"]) and torch.equal(x["mask"], y["mask"])
    keys = torch.cat([x["key"] for x in a]).tolist()
    assert sorted(keys[:12]) == list(range(12)) and sorted(keys[12:]) == list(range(12, 24))
    assert keys[:12] != list(range(12))  # shuffled within the epoch


class _CountingStore(LocalStore):
    """A local store that records the keys it is asked for."""

    def __init__(self, root, **kwargs):
        super().__init__(root, **kwargs)
        self.keys: list[str] = []

    async def get(self, key, prototype, byte_range=None):
        self.keys.append(key)
        return await super().get(key, prototype, byte_range)

    def with_read_only(self, read_only=False):
        # zarr re-opens stores read-only; keep counting on the same list
        other = _CountingStore(self.root, read_only=read_only)
        other.keys = self.keys
        return other


def test_stream_reads_only_the_chunks_under_a_crop(tmp_path):
    path = _ramp_store(tmp_path / "p.zarr", size=(160, 192), chunks=(32, 32))
    pairs = scan_pairs(path)
    store = _CountingStore(str(path), read_only=True)
    aug = AugmentConfig()
    ds = PatchDataset(store, pairs, patch_size=48, patches_per_pair=20, normalization=NORM,
                      augment=aug, seed=5)  # fmt: skip
    ds.sample(0, 0)  # opens the group and arrays (metadata reads)
    for i in range(1, 20):
        store.keys.clear()
        ds.sample(0, i)
        chunks = {k for k in store.keys if "/c/" in k}
        assert all(k.endswith("zarr.json") for k in set(store.keys) - chunks), store.keys
        geo = draw_geometry(np.random.default_rng([5, 1, 0, i]), (160, 192), 48, aug)
        rows = range(geo.y0 // 32, (geo.y0 + geo.window - 1) // 32 + 1)
        cols = range(geo.x0 // 32, (geo.x0 + geo.window - 1) // 32 + 1)
        expected = {f"ramp/{a}/c/{r}/{c}" for a in ("ct", "mask") for r in rows for c in cols}
        expected |= {f"ramp/histology/c/{r}/{c}/0" for r in rows for c in cols}
        assert chunks == expected  # at most 3 x 3 of the 5 x 6 chunks per array
        assert len(chunks) <= 3 * 9 < 3 * 30


def test_cache_gives_the_same_patches(tmp_path):
    path = write_toy_pairs(tmp_path / "toy.zarr", n=2, size=(80, 80))
    pairs = scan_pairs(path)
    a = PatchDataset(path, pairs, patch_size=48, patches_per_pair=4, normalization=NORM)
    b = PatchDataset(path, pairs, patch_size=48, patches_per_pair=4, normalization=NORM, cache=True)
    for i in range(8):
        assert torch.equal(a.sample(1, i)["histology"], b.sample(1, i)["histology"])


def test_normalization_is_applied_to_crops(tmp_path):
    # raw CT at half scale and a dim, tinted slide: the recorded levels undo both
    path = tmp_path / "p.zarr"
    rng = np.random.default_rng(0)
    bone = rng.random((64, 64)) > 0.5
    ct = np.where(bone, 15000, 5000).astype(np.uint16)
    hist = np.where(bone[..., None], [90, 40, 100], [200, 180, 160]).astype(np.uint8)
    norm = {"ct_levels": {"bone": 15000.0, "background": 5000.0, "source": "manual"},
            "histology": {"gains": [1.0, 200 / 180, 200 / 160], "lower": 0.0, "upper": 200.0}}  # fmt: skip
    write_pair(path, "p", ct=ct, histology=hist, mask=np.ones((64, 64), bool), material="mg",
               sample="s", voxel_size=5.0, attrs={"normalization": norm})  # fmt: skip
    ds = PatchDataset(path, scan_pairs(path), patch_size=64, patches_per_pair=1,
                      normalization=NORM, augment=AugmentConfig.none())  # fmt: skip
    s = ds.sample(0, 0)
    x = s["ct"][0].numpy()
    np.testing.assert_allclose(np.unique(np.round(x, 4)), [-0.6, 0.2])  # 10000 and 30000
    rgb = (s["histology"].numpy() + 1) * 127.5
    bg = rgb[:, ~bone]
    np.testing.assert_allclose(bg, 255.0, atol=0.01)  # the slide is white after normalization


def test_dataset_errors(tmp_path):
    path = write_toy_pairs(tmp_path / "toy.zarr", n=1, size=(40, 40))
    pairs = scan_pairs(path)
    with pytest.raises(InputError, match="patch_size 64 is larger than pair"):
        PatchDataset(path, pairs, patch_size=64)
    with pytest.raises(InputError, match="at least one pair"):
        PatchDataset(path, [], patch_size=32)
    with pytest.raises(InputError, match="not in the store"):
        scan_pairs(path, ids=["nope"])
    with pytest.raises(VolumeFormatError, match="does not exist"):
        scan_pairs(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(VolumeFormatError, match="not a pairs store"):
        scan_pairs(tmp_path / "plain.zarr")
