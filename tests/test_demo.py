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

SHAPE = (8, 192, 192)


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
    assert f"stained: {Path('vstain-demo') / 'phantom.stained.ome.zarr'}" in r.stdout
    assert f"views: {Path('vstain-demo') / 'views.png'}" in r.stdout
    return out


@pytest.mark.slow
def test_demo_writes_a_complete_stain_and_views(demo_dir):
    import imageio.v3 as iio

    stained = ngff.open_volume(demo_dir / "phantom.stained.ome.zarr")
    assert stained.dims == ("c", "z", "y", "x") and stained.shape == (3, *SHAPE)
    meta = stained.attrs["vstain"]
    assert meta["complete"] is True
    assert meta["model"]["sha256"] == load_model(default_model_path()).sha256
    views = iio.imread(demo_dir / "views.png")[..., :3]
    # the phantom and its stain side by side, each a 5 in column of XY over XZ, at 110 dpi:
    # 5 in x (y + z) / (x + z) + 0.9 in high (5.9 in, as y = x), less the white margins cut off
    height, width = views.shape[:2]
    assert 0.7 * 1100 < width <= 1100 and 0.7 * 649 < height <= 649, views.shape
    assert (views[[0, 0, -1, -1], [0, -1, 0, -1]] == 255).all()
    # the bundled model's purple (red and blue over green) shows in the stain's column only
    r, g, b = np.moveaxis(views.astype(int), -1, 0)
    purple = (r > g + 25) & (b > g + 25)
    phantom_half, stained_half = np.array_split(purple, 2, axis=1)
    assert stained_half.mean() > 0.02, stained_half.mean()
    assert not phantom_half.any(), phantom_half.sum()


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
