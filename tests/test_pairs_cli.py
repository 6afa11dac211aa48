"""``vstain-dask pairs add`` and ``pairs list``: TIFF/PNG/zarr inputs, recorded normalization,
masks, and one-line errors for bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from vstain_dask.cli import main
from vstain_dask.pairs import list_pairs, read_pair
from vstain_dask.phantom import phantom_pair


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A phantom pair saved as a CT TIFF, a histology PNG and a mask PNG."""
    d = tmp_path_factory.mktemp("images")
    p = phantom_pair(size=(96, 96), material="ti", seed=4)
    tifffile.imwrite(d / "ct.tif", p["ct"])
    iio.imwrite(d / "he.png", p["histology"])
    manual = np.zeros((96, 96), np.uint8)
    manual[:, :60] = 255
    iio.imwrite(d / "mask.png", manual)
    return d, p


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_levels_figure(path: Path) -> None:
    """A real PNG of the levels' QC figure: its size, and both panels drawn (a log histogram
    in the role colours on the left, a coloured slice on the right), not a blank canvas."""
    image = iio.imread(path)
    assert image.shape[:2] == (414, 990) and image.dtype == np.uint8  # 11 x 4.6 in at 90 dpi
    rgb = image[..., :3].astype(int)
    for half in (rgb[:, :495], rgb[:, 495:]):
        drawn = (half < 235).any(axis=-1)
        assert drawn.mean() > 0.05, drawn.mean()
        assert len(np.unique(half.reshape(-1, 3), axis=0)) > 50


def test_add_and_list(images, tmp_path):
    d, p = images
    store = tmp_path / "pairs.zarr"
    r = _run("pairs", "add", store, "--ct", d / "ct.tif", "--histology", d / "he.png",
             "--material", "Ti", "--sample", "S1", "--voxel-size", 2.5)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"added pair S1-000 to {store}: 96x96 px, ti, sample S1; CT bone")
    assert "-> 30000, 10000" in r.stdout
    pair = read_pair(store, "S1-000")
    # estimated levels: said on stderr with their source, their QC figure beside the store
    figure = tmp_path / "S1-000.levels.png"
    c = pair["attrs"]["normalization"]["ct_levels"]
    assert r.stderr == (
        f"CT levels: bone {c['bone']:.6g}, background {c['background']:.6g} "
        f"(auto, confidence {c['confidence']:.2f}); QC figure {figure}\n"
    )
    assert pair["attrs"]["normalization"]["ct_levels_qc"] == str(figure)
    _assert_levels_figure(figure)
    # the images are stored as given; the normalization is recorded beside them
    np.testing.assert_array_equal(pair["ct"][...], p["ct"])
    np.testing.assert_array_equal(pair["histology"][...], p["histology"])
    attrs = pair["attrs"]
    assert attrs["material"] == "ti" and attrs["voxel_size"] == 2.5 and attrs["role"] is None
    levels = attrs["normalization"]["ct_levels"]
    assert levels["source"] == "auto" and levels["bone"] > levels["background"]
    assert len(attrs["normalization"]["histology"]["gains"]) == 3
    assert attrs["mask_source"] == "auto" and attrs["sources"]["ct"] == str(d / "ct.tif")
    assert 0.1 < pair["mask"][...].mean() < 1.0
    # a second pair of the sample, with a manual mask (combined by minimum) and given levels
    r = _run("pairs", "add", store, "--ct", d / "ct.tif", "--histology", d / "he.png",
             "--mask", d / "mask.png", "--material", "ti", "--sample", "S1",
             "--ct-levels", "30000,9000", "--role", "test")  # fmt: skip
    assert r.exit_code == 0, r.output
    # given levels: said with where they came from; no figure, as nothing was estimated
    assert r.stderr == "CT levels: bone 30000, background 9000 (manual)\n"
    assert not (tmp_path / "S1-001.levels.png").exists()
    two = read_pair(store, "S1-001")
    assert not two["mask"][...][:, 60:].any()
    assert two["attrs"]["normalization"]["ct_levels"] == {
        "bone": 30000.0, "background": 9000.0, "source": "manual"}  # fmt: skip
    assert two["attrs"]["mask_source"] == "auto+manual" and two["attrs"]["role"] == "test"
    r = _run("pairs", "list", store)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:4] == ["id", "material", "sample", "role"]
    assert lines[1].split()[:5] == ["S1-000", "ti", "S1", "-", "96x96"]
    assert "recorded (bone" in lines[1] and lines[2].split()[3] == "test"
    assert lines[-1] == "2 pairs (2 ti; 1 samples)"
    r = _run("pairs", "list", store, "--json")
    assert [x["id"] for x in json.loads(r.output)] == ["S1-000", "S1-001"]


def test_zarr_inputs_rois_and_mask_only(images, tmp_path):
    d, p = images
    zarr.create_array(str(tmp_path / "ct.zarr"), data=p["ct"].astype(np.float32) / 7.0)
    zarr.create_array(str(tmp_path / "he.zarr"), data=np.moveaxis(p["histology"], -1, 0))
    store = tmp_path / "pairs.zarr"
    r = _run("pairs", "add", store, "--ct", tmp_path / "ct.zarr", "--histology",
             tmp_path / "he.zarr", "--mask", d / "mask.png", "--mask-only", "--material",
             "mg", "--sample", "S2", "--id", "first", "--bone-roi", "0:10,0:10",
             "--background-roi", "80:96,80:96")  # fmt: skip
    assert r.exit_code == 0, r.output
    pair = read_pair(store, "first")
    assert pair["ct"].dtype == np.uint16  # float CT rescaled linearly, and the rescale recorded
    assert pair["attrs"]["ct_rescaled"]["from_dtype"] == "float32"
    np.testing.assert_array_equal(pair["histology"][...], p["histology"])  # (c, y, x) -> rgb
    np.testing.assert_array_equal(pair["mask"][...], iio.imread(d / "mask.png") > 0)
    assert pair["attrs"]["normalization"]["ct_levels"]["source"] == "roi"
    assert "ct_levels_qc" not in pair["attrs"]["normalization"]
    assert r.stderr.startswith("CT levels: bone ") and r.stderr.endswith(" (roi)\n")
    assert not list(tmp_path.glob("*.png"))
    assert [x["id"] for x in list_pairs(store)] == ["first"]


def test_bad_inputs_give_one_line_errors(images, tmp_path):
    d, p = images
    store = tmp_path / "pairs.zarr"
    base = ["pairs", "add", store, "--material", "mg", "--sample", "S"]
    small = tmp_path / "small.png"
    iio.imwrite(small, p["histology"][:80])
    grey = tmp_path / "grey.png"
    iio.imwrite(grey, p["histology"][..., 0])
    cases = [
        (["--ct", d / "ct.tif", "--histology", small],
         "images must have the same size (Y x X), got ct 96x96, histology 80x96"),
        (["--ct", d / "ct.tif", "--histology", tmp_path / "nope.png"], "does not exist"),
        (["--ct", d / "ct.tif", "--histology", grey], "--histology must be an RGB image"),
        (["--ct", d / "ct.tif", "--histology", d / "he.png", "--mask-only"],
         "needs a mask (--mask M.png)"),
        (["--ct", d / "ct.tif", "--histology", d / "he.png", "--bone-roi", "5:1,0:4",
          "--background-roi", "0:4,0:4"], "bone_roi must have Y0 < Y1"),
        (["--ct", d / "ct.tif", "--histology", d / "he.png", "--bone-roi", "0:4,0:4"],
         "given together"),
        (["--ct", d / "he.png", "--histology", d / "he.png"], "--ct must be a 2D greyscale"),
    ]  # fmt: skip
    (d / "bad.txt").write_text("x")
    cases.append((["--ct", d / "ct.tif", "--histology", d / "bad.txt"], "unknown file type"))
    empty = tmp_path / "empty.png"
    iio.imwrite(empty, np.zeros(p["ct"].shape, np.uint8))
    cases.append((["--ct", d / "ct.tif", "--histology", d / "he.png", "--mask", empty,
                   "--mask-only"],
                  f"the mask {empty} keeps no pixel (all zero); mark the region to keep with "
                  "non-zero values"))  # fmt: skip
    for extra, message in cases:
        r = _run(*base, *extra)
        assert r.exit_code == 2, (extra, r.output)
        assert message in r.output, (extra, r.output)
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not store.exists()  # nothing written for a bad pair
    assert not list(tmp_path.glob("*.levels.png"))  # nor a QC figure
    r = _run(*base, "--ct", d / "ct.tif", "--histology", d / "he.png", "--id", "a")
    assert r.exit_code == 0, r.output
    figure = tmp_path / "a.levels.png"
    kept = figure.read_bytes()
    figure.write_bytes(kept + b"mark")  # a refused pair must not replace the kept one's figure
    r = _run(*base, "--ct", d / "ct.tif", "--histology", d / "he.png", "--id", "a")
    assert r.exit_code == 2 and "already exists" in r.output and "overwrite" in r.output
    assert figure.read_bytes() == kept + b"mark"
    for bad in ("gold leaf", "", "-ti", "zr/nb"):
        r = _run(*base[:-4], "--material", bad, "--sample", "S", "--ct", d / "ct.tif",
                 "--histology", d / "he.png", "--id", "bad")  # fmt: skip
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert "material must be a name of letters, digits, '_', '.' or '-'" in r.output
        assert f"got {bad!r}" in r.output
    assert [p["id"] for p in list_pairs(store)] == ["a"]
    r = _run("pairs", "list", tmp_path / "missing.zarr")
    assert r.exit_code == 2 and "does not exist" in r.output


def test_any_implant_material_is_taken_and_stratified_as_its_own_group(images, tmp_path):
    from vstain_dask.train.split import make_split

    d, _ = images
    store = tmp_path / "pairs.zarr"
    for k, (material, sample) in enumerate(
        [("Zr-1", "A"), ("zr-1", "B"), ("mg", "C"), ("mg", "D"), ("PEEK", "E"), ("peek", "F")]
    ):
        r = _run("pairs", "add", store, "--ct", d / "ct.tif", "--histology", d / "he.png",
                 "--material", material, "--sample", sample, "--id", f"p{k}")  # fmt: skip
        assert r.exit_code == 0, r.output
        assert f", {material.lower()}, sample {sample};" in r.output
    stored = {p["id"]: p["material"] for p in list_pairs(store)}
    assert stored == {"p0": "zr-1", "p1": "zr-1", "p2": "mg", "p3": "mg", "p4": "peek",
                      "p5": "peek"}  # fmt: skip
    r = _run("pairs", "list", store)
    assert "6 pairs (2 mg, 2 peek, 2 zr-1; 6 samples)" in r.output, r.output
    # two folds: every material, zr-1 included, is dealt into both
    for fold in (0, 1):
        split = make_split(list_pairs(store), folds=2, fold=fold, test_fraction=0.0, seed=0)
        assert sorted(stored[i] for i in split.val) == ["mg", "peek", "zr-1"]


def test_pairs_list_through_the_real_entry_point(tmp_path):
    from vstain_dask.train._testing import write_toy_pairs

    exe = shutil.which("vstain-dask") or str(Path(sys.executable).parent / "vstain-dask")
    store = write_toy_pairs(tmp_path / "toy.zarr", n=2)
    r = subprocess.run([exe, "pairs", "list", str(store)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONWARNINGS": "error"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "toy00" in r.stdout and "2 pairs (1 mg, 1 ti; 2 samples)" in r.stdout
    r = subprocess.run([exe, "pairs", "list", str(tmp_path / "nope.zarr")], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: pairs store") and "does not exist" in r.stderr
