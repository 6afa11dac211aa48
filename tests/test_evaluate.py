"""Evaluation: metric values against direct scikit-image and lpips calls, the 50 % mask rule of
patch sampling, whole-slice inference as stain does it, the report files and the command line.

LPIPS here is the ``lpips`` package's real SqueezeNet LPIPS with its real linear layers
(shipped in the package) but a *randomly initialised* trunk (``pnet_rand=True``): torchvision's
ImageNet trunk weights are a download that these tests cannot make. The values are therefore
not the published LPIPS, but they must equal what a direct ``lpips.LPIPS`` call gives.
Models are tiny, randomly initialised generators saved as real checkpoints.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vstain_dask.cli import main
from vstain_dask.errors import CheckpointError, InputError, OutputExistsError
from vstain_dask.evaluate import (
    BASELINE,
    REPORT_FILES,
    EvalConfig,
    PairImages,
    background_colour,
    ct_baseline,
    evaluate_models,
    image_metrics,
    load_lpips,
    lpips_distance,
    lpips_weights_path,
    mask_to_background,
    patch_coverage,
    patch_metrics,
    plot_pair_panel,
    run_evaluation,
    sample_patches,
    stain_slice,
)
from vstain_dask.pairs import read_pair, write_pair

SMALL = {"patch_size": 32, "tile": 32, "step": 16, "patches_per_pair": 6, "batch_size": 4}


def _lpips_direct():
    import lpips
    import torch

    torch.manual_seed(0)
    with warnings.catch_warnings():
        # lpips builds torchvision's SqueezeNet with the deprecated ``pretrained=`` argument;
        # the notices concern lpips' own code (load_lpips silences them the same narrow way)
        warnings.filterwarnings(
            "ignore", message="The parameter 'pretrained' is deprecated", category=UserWarning
        )
        warnings.filterwarnings(
            "ignore", message="Arguments other than a weight enum", category=UserWarning
        )
        return lpips.LPIPS(net="squeeze", pnet_rand=True, verbose=False).eval()


@pytest.fixture(scope="module")
def lp():
    """Real LPIPS linear layers on a random SqueezeNet trunk (see the module notes)."""
    import torch

    torch.set_num_threads(1)
    return _lpips_direct()


def _tiny_model(path: Path, *, seed: int, channels: int = 1, ct_normalized: bool = True,
                variant: str = "mod-cyclegan", split=None) -> Path:  # fmt: skip
    import torch

    from vstain_dask.models import (
        GeneratorConfig,
        InputNormalization,
        build_generator,
        save_model,
    )

    torch.manual_seed(seed)
    gen = build_generator(GeneratorConfig(in_channels=channels, ngf=4, n_blocks=1), seed=seed)
    norm = InputNormalization(channels=channels, ct_normalized=ct_normalized,
                              **({} if ct_normalized else {"low": 0.0, "high": 30000.0}))  # fmt: skip
    return save_model(path, generator=gen, normalization=norm, variant=variant, split=split)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Five phantom pairs: two in val, two in test, one without a role."""
    from vstain_dask.phantom import phantom_pairs

    path = tmp_path_factory.mktemp("pairs") / "pairs.zarr"
    roles = ["val", "val", "test", "test", None]
    for role, p in zip(roles, phantom_pairs(n=5, seed=3, size=(64, 72)), strict=True):
        write_pair(path, p["id"], ct=p["ct"], histology=p["histology"], mask=p["mask"],
                   material=p["material"], sample=p["sample"], voxel_size=5.0, role=role)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "modc": _tiny_model(d / "modc.pt", seed=1),
        "raw": _tiny_model(
            d / "raw.pt", seed=2, channels=3, ct_normalized=False, variant="cyclegan"
        ),  # fmt: skip
    }


# -- metrics -----------------------------------------------------------------------------------


def _images(seed=0, shape=(48, 40)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    real = np.stack([yy * 4, xx * 5, (yy + xx) * 2], axis=-1) % 256
    real = real.astype(np.uint8)
    fake = np.clip(real + rng.normal(0, 12, real.shape), 0, 255).astype(np.uint8)
    return real, fake


def test_image_metrics_equal_direct_skimage_and_lpips_calls(lp):
    import lpips
    import torch

    real, fake = _images()
    got = image_metrics(real, fake, lpips_model=lp)
    assert got["ssim"] == structural_similarity(real, fake, channel_axis=-1, data_range=255)
    assert got["psnr"] == peak_signal_noise_ratio(real, fake, data_range=255)
    with torch.inference_mode():
        direct = float(lp(lpips.im2tensor(real), lpips.im2tensor(fake)).item())
    assert got["lpips"] == pytest.approx(direct, rel=1e-6, abs=1e-7)
    assert 0 < got["lpips"]
    # identical images: the ends of the scales
    same = image_metrics(real, real, lpips_model=lp)
    assert same["ssim"] == 1.0 and same["psnr"] == float("inf") and same["lpips"] == 0.0
    # without an LPIPS model, LPIPS is not measured
    assert np.isnan(image_metrics(real, fake)["lpips"])


#: SSIM's stabilizing constants for 8-bit images, (K L)^2 with K1 = 0.01, K2 = 0.03, L = 255
#: (Wang et al. 2004, eq. 13)
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def test_known_psnr_and_ssim_values():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a + np.uint8(10)  # MSE = 100 everywhere
    m = image_metrics(a, b)
    assert m["psnr"] == pytest.approx(10 * np.log10(255**2 / 100), rel=1e-9)
    # flat images: no variance, so SSIM is its luminance term alone,
    # (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) in every window
    assert m["ssim"] == pytest.approx((2 * 100 * 110 + _C1) / (100**2 + 110**2 + _C1), rel=1e-9)
    assert m["ssim"] == pytest.approx(0.995476, abs=1e-6)


def test_known_ssim_of_a_contrast_change():
    # rows repeat 100 + 5 * (-3..3): every 7 x 7 window (skimage's default, sample statistics
    # over its 49 pixels) holds one period, so the mean is 100 like the flat image's, the
    # variance 49/48 * 5^2 * 4 and the covariance with a flat image 0: SSIM = C2 / (var + C2)
    flat = np.full((28, 21, 3), 100, np.uint8)
    period = 100 + 5 * np.arange(-3, 4)
    rows = np.broadcast_to(np.tile(period, 4)[:, None, None], flat.shape).astype(np.uint8)
    var = 49 / 48 * 25 * 4
    ssim = image_metrics(flat, rows)["ssim"]
    assert ssim == pytest.approx(_C2 / (var + _C2), rel=1e-9)
    assert ssim == pytest.approx(0.364386, abs=1e-6)
    # the same with the images swapped, as SSIM is symmetric
    assert image_metrics(rows, flat)["ssim"] == pytest.approx(ssim, rel=1e-9)


def test_patch_metrics_equal_metrics_of_the_crops(lp):
    real, fake = _images(1, (64, 70))
    pos = np.array([[0, 0], [10, 20], [32, 38]])
    got = patch_metrics(real, fake, pos, size=32, lpips_model=lp)
    for k, (y, x) in enumerate(pos):
        one = image_metrics(
            real[y : y + 32, x : x + 32], fake[y : y + 32, x : x + 32], lpips_model=lp
        )
        assert got["ssim"][k] == one["ssim"] and got["psnr"][k] == one["psnr"]
        assert got["lpips"][k] == pytest.approx(one["lpips"], rel=1e-5, abs=1e-7)


def test_lpips_uses_the_packages_linear_layers(lp):
    import inspect

    import lpips
    import torch

    shipped = Path(inspect.getfile(lpips.LPIPS)).parent / "weights" / "v0.1" / "squeeze.pth"
    assert shipped.is_file()
    state = torch.load(shipped, map_location="cpu")
    ours = load_lpips(random_backbone=True)
    for key, value in state.items():
        assert torch.equal(ours.state_dict()[key], value), key
    torch.manual_seed(0)
    a, b = _images(2, (32, 32))
    assert lpips_distance(a, b, ours)[0] > 0


def test_missing_lpips_weights_say_which_file_goes_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path, url = lpips_weights_path()
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    assert url.endswith("/squeezenet1_1-b8a52dc0.pth")
    with pytest.raises(CheckpointError) as e:
        load_lpips(download=False)
    msg = str(e.value)
    assert "\n" not in msg and str(path.parent) in msg and path.name in msg and url in msg
    assert "--no-lpips" in msg


# -- patches and masks -------------------------------------------------------------------------


def test_patch_sampling_honours_the_half_coverage_rule():
    mask = np.zeros((32, 64), bool)
    mask[:, :32] = True  # left half
    pos = sample_patches(mask, size=32, n=1000, min_coverage=0.5, seed=1)
    # the patch fits at x0 = 0..32; it is covered >= 50 % exactly for x0 <= 16
    assert sorted(pos[:, 1].tolist()) == list(range(17))
    assert (pos[:, 0] == 0).all()
    cover = np.array([mask[y : y + 32, x : x + 32].mean() for y, x in pos])
    np.testing.assert_array_equal(patch_coverage(mask, pos, size=32), cover)
    assert cover.min() == 0.5
    # deterministic, and seeds differ
    a = sample_patches(mask, size=32, n=5, seed=(0, "pair000"))
    np.testing.assert_array_equal(a, sample_patches(mask, size=32, n=5, seed=(0, "pair000")))
    assert not np.array_equal(a, sample_patches(mask, size=32, n=5, seed=(0, "pair001")))
    assert len(a) == 5
    # nowhere covered enough: no patches
    assert sample_patches(np.zeros((40, 40), bool), size=16, n=5).shape == (0, 2)
    # a slice smaller than the patch: one patch, the whole slice
    np.testing.assert_array_equal(sample_patches(np.ones((10, 12), bool), size=32, n=3), [[0, 0]])


def test_patch_sampling_on_large_slices_uses_rejection():
    mask = np.zeros((400, 500), bool)
    mask[100:300, 150:420] = True
    pos = sample_patches(mask, size=64, n=40, seed=0)
    assert len(pos) == 40 and len({tuple(p) for p in pos.tolist()}) == 40
    assert (patch_coverage(mask, pos, size=64) >= 0.5).all()
    assert ((pos >= 0) & (pos + 64 <= [400, 500])).all()


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(8, 60), w=st.integers(8, 60), size=st.integers(7, 40),
    fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
    cover=st.sampled_from([0.0, 0.25, 0.5, 0.9]),
)  # fmt: skip
def test_sampled_patches_are_inside_distinct_and_covered(h, w, size, fraction, seed, cover):
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < fraction
    pos = sample_patches(mask, size=size, n=10, min_coverage=cover, seed=seed)
    ph, pw = min(size, h), min(size, w)
    assert len(pos) <= 10
    assert len({tuple(p) for p in pos.tolist()}) == len(pos)
    for y, x in pos:
        assert 0 <= y <= h - ph and 0 <= x <= w - pw
        assert mask[y : y + ph, x : x + pw].mean() >= cover


def test_masking_fills_the_outside_with_the_background_colour():
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[:, 10:] = (200, 210, 230)  # bright slide background on the right
    rgb[:, :10] = (60, 40, 120)  # stained tissue on the left
    mask = np.zeros((20, 20), bool)
    mask[:, :10] = True
    colour = background_colour(rgb, mask)
    np.testing.assert_allclose(colour, (200, 210, 230))
    other = np.full((20, 20, 3), 7, np.uint8)
    out = mask_to_background(other, mask, colour)
    assert (out[:, 10:] == (200, 210, 230)).all() and (out[:, :10] == 7).all()


# -- what is compared --------------------------------------------------------------------------


def test_stain_slice_is_whole_plane_tiled_inference(model_path):
    import torch

    from vstain_dask.models import load_model
    from vstain_dask.tiling import predict_plane

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    ct = rng.integers(500, 3500, size=(40, 36)).astype(np.uint16)
    m = load_model(model_path)
    got = stain_slice(ct, m, tile=16, step=8, batch_size=4)
    ref = predict_plane(ct[None].astype(np.float32), lambda t: m.generator(m.to_input(t)),
                        tile=16, step=8, batch_size=4)  # fmt: skip
    expect = np.clip(np.rint((ref + 1.0) * 127.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, np.moveaxis(expect, 0, -1))
    assert got.shape == (40, 36, 3) and got.dtype == np.uint8


def test_ct_baseline_is_the_normalized_ct_in_grey():
    ct = np.array([[1000, 2000], [0, 65535]], np.uint16)
    b = ct_baseline(ct, levels=(2000.0, 1000.0))  # bone 2000 -> 30000, background 1000 -> 10000
    assert (
        b.shape == (2, 2, 3) and (b[..., 0] == b[..., 1]).all() and (b[..., 1] == b[..., 2]).all()
    )
    assert b[0, 0, 0] == round(10000 / 257) and b[0, 1, 0] == round(30000 / 257)
    assert b[1, 0, 0] == 0 and b[1, 1, 0] == 255  # clipped to uint16, then 8 bits
    raw = ct_baseline(ct)
    assert raw[0, 0, 0] == round(1000 / 257) and raw[1, 1, 0] == 255


def test_config_validation_names_the_parameter():
    with pytest.raises(InputError, match="split must be one of 'train', 'val', 'test'"):
        EvalConfig(split="holdout")
    with pytest.raises(InputError, match="step must be an integer in 1..32"):
        EvalConfig(tile=32, step=64)
    with pytest.raises(InputError, match="blend must be one of 'mean', 'gaussian', 'cosine'"):
        EvalConfig(blend="max")
    with pytest.raises(InputError, match="min_coverage"):
        EvalConfig(min_coverage=1.5)
    assert EvalConfig(split="val").to_dict()["split"] == "val"


# -- the evaluation ----------------------------------------------------------------------------


def test_evaluation_scores_equal_direct_calls_on_the_masked_images(store, models, lp):
    from vstain_dask.models import load_model
    from vstain_dask.preprocess import mean_background_colour, normalize_histology
    from vstain_dask.train.prepare import pair_levels

    config = EvalConfig(**SMALL, split="test")
    result = evaluate_models(store, models, config=config, lpips_model=lp)
    assert result.model_names == [BASELINE, "modc", "raw"]
    assert {r["split"] for r in result.records} == {"test"}
    pairs = sorted({r["pair"] for r in result.records})
    assert len(pairs) == 2
    # recompute one pair from scratch
    pid = pairs[0]
    data = read_pair(store, pid)
    ct, hist, mask = data["ct"][...], data["histology"][...], data["mask"][...]
    # the normalization training uses: estimated, as these pairs record none
    lv = pair_levels(ct, hist, attrs=data["attrs"], material=data["attrs"]["material"])
    real = normalize_histology(hist, levels=lv.histology)
    colour = mean_background_colour(real)
    real[~mask] = np.rint(colour).astype(np.uint8)
    pos = sample_patches(mask, size=32, n=6, min_coverage=0.5, seed=(0, pid))
    assert len(pos) == 6
    levels = (lv.ct.bone, lv.ct.background)
    expect = {
        "modc": stain_slice(ct, load_model(models["modc"]), levels=levels, tile=32, step=16),
        "raw": stain_slice(ct, load_model(models["raw"]), tile=32, step=16),
        BASELINE: ct_baseline(ct, levels=levels),
    }
    for name, img in expect.items():
        img = img.copy()
        img[~mask] = np.rint(colour).astype(np.uint8)
        rec = [r for r in result.records if r["pair"] == pid and r["model"] == name]
        assert [(r["y0"], r["x0"]) for r in rec] == [tuple(p) for p in pos.tolist()]
        for r, (y, x) in zip(rec, pos, strict=True):
            a, b = real[y : y + 32, x : x + 32], img[y : y + 32, x : x + 32]
            assert r["ssim"] == structural_similarity(a, b, channel_axis=-1, data_range=255)
            assert r["psnr"] == peak_signal_noise_ratio(a, b, data_range=255)
            assert r["coverage"] == mask[y : y + 32, x : x + 32].mean() >= 0.5
        # LPIPS of the first patch, directly
        import lpips
        import torch

        y, x = pos[0]
        with torch.inference_mode():
            d = lp(lpips.im2tensor(real[y : y + 32, x : x + 32]),
                   lpips.im2tensor(img[y : y + 32, x : x + 32])).item()  # fmt: skip
        assert rec[0]["lpips"] == pytest.approx(d, rel=1e-5, abs=1e-7)
    # the table holds the medians of the records
    for row in result.table():
        vals = [r["ssim"] for r in result.records
                if r["model"] == row["model"] and r["split"] == row["split"]]  # fmt: skip
        assert row["ssim_median"] == pytest.approx(np.median(vals))
        assert row["patches"] == 12 and row["pairs"] == 2


def test_splits_come_from_the_store_or_the_models_record(store, tmp_path):
    # the model records pair001 as val, the store says val too; pair004 has no role in the
    # store but the model puts it in test
    ids = sorted(p.name for p in store.iterdir() if p.is_dir())
    m = _tiny_model(tmp_path / "m.pt", seed=4, split={"train": [ids[0]], "test": [ids[4]]})
    result = evaluate_models(store, [m], config=EvalConfig(**SMALL, lpips=False))
    split_of = {(r["pair"], r["model"]): r["split"] for r in result.records}
    assert split_of[(ids[0], "m")] == "train"  # the model's record wins
    assert split_of[(ids[1], "m")] == "val"  # the store's role
    assert split_of[(ids[4], "m")] == "test"
    assert split_of[(ids[4], BASELINE)] == "test"
    assert result.splits == ["train", "val", "test"]
    assert np.isnan([r["lpips"] for r in result.records]).all()
    # only the baseline, no roles asked: pairs are grouped by their own roles
    base = evaluate_models(store, None, config=EvalConfig(**SMALL, lpips=False))
    assert base.splits == ["val", "test", "unassigned"]
    with pytest.raises(InputError, match="no pairs in split 'train'.*splits present: val, test"):
        evaluate_models(store, None, config=EvalConfig(**SMALL, lpips=False, split="train"))


def test_models_are_named_after_their_files(store, tmp_path):
    a = _tiny_model(tmp_path / "run1" / "model.pt", seed=5)
    b = _tiny_model(tmp_path / "run2" / "model.pt", seed=6)
    config = EvalConfig(**SMALL, lpips=False, baseline=False, split="test")
    assert evaluate_models(store, [a, b], config=config).model_names == ["run1/model", "run2/model"]
    named = evaluate_models(store, {"first": a}, config=config)
    assert named.model_names == ["first"] and named.models[0]["path"] == str(a)
    with pytest.raises(InputError, match="nothing to evaluate"):
        evaluate_models(store, None, config=config)


def test_report_files_hold_the_numbers(store, models, lp, tmp_path):
    out = tmp_path / "report"
    config = EvalConfig(**SMALL, split="val")
    result, files = run_evaluation(store, models, out, config=config, lpips_model=lp,
                                   progress=False)  # fmt: skip
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    pairs = sorted({r["pair"] for r in result.records})
    for pid in pairs:
        panel = _picture(out / "panels" / f"{pid}.png")
        height, width = panel.shape[:2]
        # five columns of 2.9 in at 100 dpi, less the margins cut off; four rows of plots
        assert 0.7 * 1450 < width <= 1450 and height > 0.6 * width, panel.shape
        _assert_white_corners(panel)
        # columns CT | histology | raw CT | modc | raw, the top half the slices and zooms:
        # the CT and the raw-CT baseline are grey (colour only in the thin overlay lines),
        # the real histology is stained
        chroma = np.ptp(panel[: height // 2].astype(int), axis=-1) > 20
        coloured = [chroma[:, i * width // 5 : (i + 1) * width // 5].mean() for i in range(5)]
        assert coloured[0] < 0.08 and coloured[2] < 0.08, coloured
        assert coloured[1] > 0.1, coloured
    box = _picture(out / "boxplots.png")
    # one panel per metric, 4.8 in each for three models, 4.6 in high, at 110 dpi
    assert box.shape == (round(4.6 * 110), round(3 * 4.8 * 110), 3)
    _assert_white_corners(box)
    # the boxes are drawn in the colour of their split (val, opaque in the median lines), in
    # each metric's panel; no box has the colour of the test split, which was not evaluated
    val, test = np.array([0x00, 0x72, 0xB2]), np.array([0xD5, 0x5E, 0x00])
    for third in np.array_split(box, 3, axis=1):
        assert (third == val).all(axis=-1).sum() > 100
    assert not (box == test).all(axis=-1).any()
    table = result.table()
    assert [r["model"] for r in table] == [BASELINE, "modc", "raw"]
    # CSV
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == [BASELINE, "modc", "raw"]
    for row, t in zip(rows, table, strict=True):
        for k in ("ssim_median", "psnr_median", "lpips_median", "ssim_q1", "lpips_q3"):
            assert float(row[k]) == pytest.approx(t[k])
        assert int(row["patches"]) == t["patches"] == 12
    # JSON
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["config"]["split"] == "val" and doc["config"]["patch_size"] == 32
    assert [m["name"] for m in doc["models"]] == ["modc", "raw"]
    assert doc["models"][0]["variant"] == "mod-cyclegan"
    assert [t["ssim_median"] for t in doc["table"]] == pytest.approx(
        [t["ssim_median"] for t in table]
    )
    assert len(doc["per_pair"]) == 2 * 3
    # Markdown: the table with the medians as printed
    md = (out / "metrics.md").read_text()
    for t in table:
        assert f"| {t['model']} | val | 2 | 12 | {t['ssim_median']:.3f} [" in md
        assert f"{t['lpips_median']:.3f}" in md and f"{t['psnr_median']:.2f}" in md
    # patches.csv: one row per record
    with open(out / "patches.csv") as f:
        patches = list(csv.DictReader(f))
    assert len(patches) == len(result.records) == 3 * 12
    assert float(patches[0]["ssim"]) == pytest.approx(result.records[0]["ssim"])
    # an existing report is kept unless asked
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_evaluation(store, models, out, config=config, lpips_model=lp, progress=False)


def _picture(path: Path) -> np.ndarray:
    """A PNG decoded to (Y, X, 3) uint8, checking it is one."""
    import imageio.v3 as iio

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return iio.imread(path)[..., :3]


def _assert_white_corners(picture: np.ndarray) -> None:
    corners = picture[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 255).all(), corners


def test_pair_panel_shows_each_image_in_its_column(tmp_path):
    # flat colours: the slices (nearest-neighbour zoom included) show them exactly
    h, w = 48, 60
    mask = np.zeros((h, w), bool)
    mask[6:42, 8:52] = True
    slide = np.array([243, 244, 238], np.uint8)
    stain, output = np.array([150, 60, 160], np.uint8), np.array([40, 170, 90], np.uint8)
    images = PairImages(
        pair={"id": "p", "material": "mg", "sample": "s"},
        ct=np.where(mask, 20000, 3000).astype(np.uint16),
        histology=np.where(mask[..., None], stain, slide),
        mask=mask,
        outputs={"model": np.where(mask[..., None], output, slide)},
        positions=np.array([[6, 8], [10, 20]]),
        patch_shape=(16, 16),
        colour=slide.astype(float),
        metrics={"model": {"ssim": np.array([0.5, 0.6]), "psnr": np.array([10.0, 11.0]),
                           "lpips": np.full(2, np.nan)}},
    )  # fmt: skip
    panel = _picture(plot_pair_panel(images, tmp_path / "p.png"))
    height, width = panel.shape[:2]
    # three columns of 2.9 in at 100 dpi, less the margins cut off
    assert 0.7 * 870 < width <= 870 and height > width, panel.shape
    _assert_white_corners(panel)
    thirds = np.array_split(panel, 3, axis=1)  # CT | histology | model
    for i, colour in enumerate((stain, output)):
        # in its own column only, where the slice and its zoom show it
        shown = [(third == colour).all(axis=-1).mean() for third in thirds]
        assert shown[i + 1] > 0.1 and shown[0] == shown[2 - i] == 0, shown
    # the CT column's slice and zoom are grey, colour only in the thin overlay lines
    coloured = (np.ptp(thirds[0][: height // 2].astype(int), axis=-1) > 20).mean()
    assert coloured < 0.05, coloured


def test_pairs_without_a_covered_patch_are_listed(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "p.zarr"
    hist = np.full((40, 40, 3), 220, np.uint8)
    hist[:20] = (80, 60, 150)
    mask = np.zeros((40, 40), bool)
    mask[:4, :4] = True  # a tiny mask: no 32-px patch is half covered
    ct = rng.integers(1000, 3000, (40, 40)).astype(np.uint16)
    # noise without bone: no levels can be estimated from it, so the pair records them
    levels = {"normalization": {"ct_levels": {"bone": 3000.0, "background": 1000.0}}}
    write_pair(path, "tiny", ct=ct, histology=hist, mask=mask, material="mg", sample="s",
               voxel_size=5.0, attrs=levels)  # fmt: skip
    result = evaluate_models(path, None, config=EvalConfig(**SMALL, lpips=False, ct_levels="none"))
    assert result.records == []
    assert "no 32x32 patch" in result.pairs[0]["skipped"]


# -- command line ------------------------------------------------------------------------------


def test_cli_evaluate_writes_a_report(store, models, tmp_path):
    out = tmp_path / "rep"
    args = ["evaluate", str(store), "-m", f"mine={models['modc']}", "-m", str(models["raw"]),
            "-o", str(out), "--split", "val", "--no-lpips", "--patch-size", "32", "--tile", "32",
            "--step", "16", "--patches", "4", "--no-progress", "--no-panels"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "| mine | val | 2 | 8 |" in r.output and "| raw CT | val |" in r.output
    assert "LPIPS" not in r.output.split("report:")[0]
    assert (out / "metrics.md").is_file() and not (out / "panels").exists()
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "use --overwrite" in r.output


def test_cli_evaluate_errors(store, models, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["evaluate", str(tmp_path / "nope.zarr"), "-o", str(tmp_path / "r")])
    assert r.exit_code == 2 and "nope.zarr does not exist" in r.output
    r = runner.invoke(main, ["evaluate", str(store), "-m", str(tmp_path / "x.pt"), "-o",
                             str(tmp_path / "r")])  # fmt: skip
    assert r.exit_code == 2 and "x.pt does not exist" in r.output
    r = runner.invoke(main, ["evaluate", str(store), "-o", str(tmp_path / "r"), "--split", "train",
                             "--no-lpips"])  # fmt: skip
    assert r.exit_code == 2
    assert "no pairs in split 'train'" in r.output and "Traceback" not in r.output


def test_cli_missing_lpips_weights_fail_with_one_line(store, models, tmp_path, monkeypatch):
    """An empty torch hub cache and no network: one line saying which file goes where, exit 2."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # an unreachable proxy stands in for "no network", so no download is attempted for real
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "rep"
    r = CliRunner().invoke(
        main, ["evaluate", str(store), "-m", str(models["modc"]), "-o", str(out), "--no-progress"]
    )
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    assert "put squeezenet1_1-b8a52dc0.pth" in errors[0] and f"into {hub}/" in errors[0]
    assert "--no-lpips" in errors[0]
    assert not out.exists()  # nothing written before the failure
