"""``vstain-dask demo``: the README's main command, through the real entry point, with the
bundled model; and the bundled model stains a phantom with the colours its card promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vstain_dask import ngff
from vstain_dask.models import load_model
from vstain_dask.phantom import phantom_volume
from vstain_dask.phantom._anatomy import Tissue
from vstain_dask.stain import default_model_path

SHAPE = (8, 128, 128)


def _demo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("vstain-dask")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vstain_dask.cli"]
    return subprocess.run([*cmd, "demo", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("demo")
    shape = ",".join(map(str, SHAPE))
    r = _demo("--shape", shape, cwd=work)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = work / "vstain-demo"
    demo = Path("vstain-demo")
    assert f"stained along z: {demo / 'phantom.stained-z.ome.zarr'}" in r.stdout
    assert f"stained along z, y, x (fused, masked): {demo / 'phantom.stained.ome.zarr'}" in r.stdout
    assert f"3D rendering: {demo / 'render.png'}" in r.stdout
    assert f"views: {demo / 'views.png'}" in r.stdout
    return out


def _purple(rgb: np.ndarray) -> np.ndarray:
    """The bundled model's purple: red and blue over green."""
    r, g, b = np.moveaxis(rgb.astype(int), -1, 0)
    return (r > g + 25) & (b > g + 25)


@pytest.mark.slow
def test_demo_writes_complete_stains_a_rendering_and_views(demo_dir):
    import imageio.v3 as iio

    sha = load_model(default_model_path()).sha256
    for name, axes in (("phantom.stained-z.ome.zarr", ["z"]),
                       ("phantom.stained.ome.zarr", ["z", "y", "x"])):  # fmt: skip
        stained = ngff.open_volume(demo_dir / name)
        assert stained.dims == ("c", "z", "y", "x") and stained.shape == (3, *SHAPE)
        meta = stained.attrs["vstain"]
        assert meta["complete"] is True and meta["model"]["sha256"] == sha
        params = meta["parameters"]
        assert list(params["axes"]) == axes and params["mask"] is True
    render = iio.imread(demo_dir / "render.png")[..., :3]
    assert _purple(render).mean() > 0.02 and (render[0, 0] == 255).all()
    views = iio.imread(demo_dir / "views.png")[..., :3]
    # four columns, each 5 in at 110 dpi: the phantom (XY over XZ), its stain along z alone,
    # the fused stain and the 3D rendering; 5 in x (y + z) / (x + z) + 0.9 in high, less the
    # white margins cut off
    height, width = views.shape[:2]
    assert 0.7 * 2200 < width <= 2200 and 0.7 * 649 < height <= 649, views.shape
    assert (views[[0, 0, -1, -1], [0, -1, 0, -1]] == 255).all()
    # the bundled model's purple shows in the stains' and the rendering's columns only
    phantom, stained_z, fused, rendering = np.array_split(_purple(views), 4, axis=1)
    assert not phantom.any(), phantom.sum()
    for column in (stained_z, fused, rendering):
        assert column.mean() > 0.02, column.mean()


@pytest.mark.slow
def test_the_fused_stain_is_masked_and_has_no_stripes_across_slices(demo_dir):
    """The sample mask is stored as labels and whitens what lies outside it; fusing three axes
    makes the stain vary between slices no more than within them, unlike the z-only stain."""
    mask = ngff.open_volume(demo_dir / "phantom.stained.ome.zarr" / "labels" / "sample")
    mask = np.asarray(mask.data).astype(bool)
    assert mask.shape == SHAPE and 0.1 < mask.mean() < 0.9
    _, labels = phantom_volume(SHAPE, material="mg", seed=0)
    bone = np.isin(np.asarray(labels), [Tissue.CORTICAL_BONE, Tissue.SCREW])
    assert mask[bone].mean() > 0.99  # the mask holds the bone and the screw
    ratios = {}
    for name in ("phantom.stained-z.ome.zarr", "phantom.stained.ome.zarr"):
        rgb = np.asarray(ngff.open_volume(demo_dir / name).data).astype(float)
        assert (rgb[:, ~mask] == 255).all()  # the slide's white outside the sample
        inside = mask[1:] & mask[:-1]
        across = np.abs(np.diff(rgb, axis=1))[:, inside].mean()
        within = np.abs(np.diff(rgb, axis=3))[:, mask[..., 1:] & mask[..., :-1]].mean()
        ratios[name] = across / within
    assert ratios["phantom.stained.ome.zarr"] < 0.8 * ratios["phantom.stained-z.ome.zarr"], ratios


@pytest.mark.slow
def test_bundled_model_colours_the_phantom_as_its_card_says(demo_dir):
    """White slide around the sample, purple (red and blue over green) cortical bone."""
    rgb = np.asarray(ngff.open_volume(demo_dir / "phantom.stained.ome.zarr").data).astype(float)
    _, labels = phantom_volume(SHAPE, material="mg", seed=0)
    labels = np.asarray(labels)
    background = rgb[:, np.isin(labels, [Tissue.AIR, Tissue.EMBEDDING])].mean(axis=1)
    bone = rgb[:, labels == Tissue.CORTICAL_BONE].mean(axis=1)
    assert (background > 215).all(), background
    r, g, b = bone
    assert r > g + 25 and b > g + 25 and bone.mean() < background.mean() - 40, bone


def test_demo_keeps_an_earlier_demo_unless_asked(demo_dir, tmp_path):
    before = (demo_dir / "views.png").read_bytes()
    r = _demo("--shape", ",".join(map(str, SHAPE)), cwd=demo_dir.parent)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and "--overwrite" in r.stderr, r.stderr
    assert (demo_dir / "views.png").read_bytes() == before
    assert ngff.open_volume(demo_dir / "phantom.stained.ome.zarr").attrs["vstain"]["complete"]


# -- demo --pipeline: the whole chain, at the small size CI runs ------------------------------

PIPELINE = ("--pipeline", "--sections", "1", "--epochs", "1", "--patch-size", "32")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("pipeline")
    r = _demo(*PIPELINE, cwd=work)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return work / "vstain-demo" / "pipeline", r.stdout


@pytest.mark.slow
def test_pipeline_keeps_each_step_complete(pipeline):
    import tifffile

    from vstain_dask.demo_pipeline import SECTION_POSES
    from vstain_dask.phantom._section import read_section_truth

    folder, stdout = pipeline
    ct = ngff.open_volume(folder / "01-phantom.ome.zarr")
    assert ct.attrs["vstain"]["complete"] is True and ct.shape == (96, 128, 128)
    section = folder / "02-sections" / "section-1.ome.tif"
    with tifffile.TiffFile(section) as tif:
        assert tif.is_ome and len(tif.series[0].levels) >= 2  # pyramidal, as scanners write
    assert len(read_section_truth(section)["section_to_ct"]) == 4
    imported = ngff.open_volume(folder / "03-imported" / "section-1.ome.zarr")
    assert imported.attrs["vstain"]["complete"] is True and imported.dims == ("c", "y", "x")
    model = load_model(folder / "05-model" / "model.pt")
    assert model.sha256 and (folder / "05-model" / "losses.csv").exists()
    # the summary names every step with its output and time, and the section's error
    for step in ("01-phantom.ome.zarr", "02-sections/", "03-imported/", "04-pairs.zarr",
                 "05-model/", "06-stained.ome.zarr", "07-evaluation/"):  # fmt: skip
        assert f"  {step}  " in stdout, stdout
    pose = SECTION_POSES[0].describe(128 * 5.0)  # where the first section was cut, along y
    assert f"section-1  {pose}: registered: " in stdout and "CT voxels" in stdout, stdout


@pytest.mark.slow
def test_pipeline_pairs_hold_the_registered_sections_within_two_voxels(pipeline):
    import zarr

    from vstain_dask.pairs import list_pairs
    from vstain_dask.phantom._section import read_section_truth
    from vstain_dask.register import score_against_truth

    folder, _ = pipeline
    store = folder / "04-pairs.zarr"
    pairs = list_pairs(store)
    assert [p["id"] for p in pairs] == ["section-1"], pairs
    record = zarr.open_group(store / "section-1", mode="r").attrs["registration"]
    truth = read_section_truth(folder / "02-sections" / "section-1.ome.tif")["section_to_ct"]
    mean, _ = score_against_truth(record, truth)
    assert mean <= 2 * 5.0, f"mean error {mean:.1f} µm"
    assert (folder / "04-pairs.qc" / "section-1.png").stat().st_size > 10_000


@pytest.mark.slow
def test_pipeline_stains_with_its_model_and_evaluates_it(pipeline):
    import csv

    folder, _ = pipeline
    stained = ngff.open_volume(folder / "06-stained.ome.zarr")
    meta = stained.attrs["vstain"]
    assert meta["complete"] is True and stained.shape == (3, 96, 128, 128)
    assert meta["model"]["sha256"] == load_model(folder / "05-model" / "model.pt").sha256
    rgb = np.asarray(stained.data[:, ::8]).astype(float)
    # coloured: the channels differ (not a grey image) and the image is not flat
    assert np.abs(rgb[0] - rgb[1]).mean() + np.abs(rgb[2] - rgb[1]).mean() > 5
    assert rgb.std() > 5
    with open(folder / "07-evaluation" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == "demo"]
    assert rows, "no row of the trained model in metrics.csv"
    for row in rows:
        assert all(np.isfinite(float(row[k])) for k in ("ssim_median", "psnr_median")), row


def test_pipeline_keeps_an_earlier_pipeline_and_refuses_its_options_alone(tmp_path):
    earlier = tmp_path / "vstain-demo" / "pipeline" / "04-pairs.zarr"
    earlier.mkdir(parents=True)
    r = _demo("--pipeline", "--sections", "1", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "--overwrite" in r.stderr
    assert earlier.is_dir() and not (earlier.parent / "01-phantom.ome.zarr").exists()
    r = _demo("--sections", "2", cwd=tmp_path)
    assert r.returncode == 2 and "--sections only go with --pipeline" in r.stderr, r.stderr
    r = _demo("--pipeline", "--sections", "9", cwd=tmp_path)
    assert r.returncode == 2 and "sections" in r.stderr and "Traceback" not in r.stderr


def test_a_failing_pipeline_step_is_named_in_one_line(tmp_path):
    from vstain_dask.demo import PipelineConfig, PipelineStepError, run_pipeline

    # a section too fine to write (over 100 000 pixels a side) fails the second step
    config = PipelineConfig(shape=(32, 32, 32), sections=1, section_pixel_size=0.001)
    with pytest.raises(PipelineStepError) as e:
        run_pipeline(tmp_path, config)
    message = str(e.value)
    assert message.startswith("pipeline step 02-sections/ (phantom-section) failed: ")
    assert "\n" not in message and e.value.exit_code == 2
    phantom = ngff.open_volume(tmp_path / "pipeline" / "01-phantom.ome.zarr")
    assert phantom.attrs["vstain"]["complete"] is True  # the steps before it are kept
