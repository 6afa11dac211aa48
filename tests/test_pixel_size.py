"""The model's pixel size: training records it, ``model import --pixel-size`` sets it, and
``stain`` compares it with the volume's voxel size (proceeds within 10 %; beyond, resamples by
default (tests/test_stain_resample.py), refuses with ``--resample check``, stains at the
volume's size with a warning with ``--resample off``; warns for a model that records none),
recording the comparison."""

from __future__ import annotations

import pytest
import reference_nets as ref
import torch
import zarr
from click.testing import CliRunner

from vstain_dask import ngff
from vstain_dask.cli import main
from vstain_dask.models import load_model, save_model
from vstain_dask.models.checkpoint import model_info, model_pixel_size, pixel_sizes_match
from vstain_dask.stain import default_model_path
from vstain_dask.train._testing import write_toy_pairs

TINY = ["--epochs", 1, "--patch-size", 32, "--patches-per-pair", 2, "--batch-size", 4,
        "--workers", 0, "--ngf", 4, "--n-blocks", 1, "--ndf", 4, "--disc-layers", 2,
        "--device", "cpu", "--no-progress", "--threads", 1]  # fmt: skip

# the `ct` fixture is 10 x 40 x 36 voxels of 5 µm
STAIN = ["--tile", "16", "--step", "8", "--batch-size", "4", "--workers", "1",
         "--threads-per-worker", "1", "--ct-levels", "none", "--no-progress"]  # fmt: skip


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _model(model_path, tmp_path, pixel_size):
    """The conftest's tiny model, saved again with another recorded pixel size."""
    m = load_model(model_path)
    return save_model(
        tmp_path / f"model-{pixel_size}.pt",
        generator=m.generator,
        normalization=m.normalization,
        variant=m.variant,
        pixel_size=pixel_size,
    )


def test_sizes_match_within_ten_percent_either_way():
    assert pixel_sizes_match(5.0, 5.5) and pixel_sizes_match(5.5, 5.0)
    assert not pixel_sizes_match(5.0, 5.6) and not pixel_sizes_match(2.4, 5.0)


def test_the_bundled_model_reports_5_um():
    path = default_model_path()
    assert load_model(path).pixel_size == 5.0
    assert model_info(path, verify=True)["pixel_size"] == 5.0
    r = _run("model", "info", path)
    assert r.exit_code == 0 and "- Pixel size: 5 µm" in r.stdout


def test_training_records_the_pairs_pixel_size(tmp_path):
    pairs = write_toy_pairs(tmp_path / "toy.zarr", n=2, size=(40, 40))  # 5 µm pairs
    r = _run("train", pairs, "-o", tmp_path / "run", *TINY)
    assert r.exit_code == 0, r.output
    model = load_model(tmp_path / "run" / "model.pt")
    assert model.pixel_size == 5.0 and model.card["pixel_size"] == 5.0
    assert "- Pixel size: 5 µm" in (tmp_path / "run" / "model.md").read_text()
    assert model_info(tmp_path / "run" / "checkpoints" / "last.pt")["pixel_size"] == 5.0


def test_training_refuses_pairs_of_different_sizes_in_one_line(tmp_path):
    pairs = write_toy_pairs(tmp_path / "toy.zarr", n=2, size=(40, 40))
    zarr.open_group(str(pairs), mode="r+")["toy01"].attrs["voxel_size"] = 5.6  # 12 % coarser
    r = _run("train", pairs, "-o", tmp_path / "run", *TINY)
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: the pairs in")
    assert "'toy00': 5 µm" in r.stderr and "'toy01': 5.6 µm" in r.stderr
    assert not (tmp_path / "run").exists()
    # within 10 %: trains, and records the pairs' median
    zarr.open_group(str(pairs), mode="r+")["toy01"].attrs["voxel_size"] = 5.4
    r = _run("train", pairs, "-o", tmp_path / "run", *TINY)
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "run" / "model.pt").pixel_size == pytest.approx(5.2)


def test_model_import_pixel_size(tmp_path):
    weights = tmp_path / "G_AB_200.pth"
    torch.save(ref.GeneratorResNet((3, 64, 64), 2, features=4).state_dict(), weights)
    base = ["model", "import", weights, "--from", "pytorch-gan"]
    r = _run(*base, "-o", tmp_path / "sized.pt", "--pixel-size", "5")
    assert r.exit_code == 0, r.output
    assert "pixel size 5 µm" in r.stdout
    model = load_model(tmp_path / "sized.pt")
    assert model.pixel_size == 5.0 and "--pixel-size 5" in model.card["command"]
    assert "- Pixel size: 5 µm" in (tmp_path / "sized.md").read_text()
    r = _run(*base, "-o", tmp_path / "unsized.pt")
    assert r.exit_code == 0, r.output
    assert "pixel size not recorded (give --pixel-size UM)" in r.stdout
    assert load_model(tmp_path / "unsized.pt").pixel_size is None
    assert "- Pixel size: not recorded" in (tmp_path / "unsized.md").read_text()
    r = _run(*base, "-o", tmp_path / "zero.pt", "--pixel-size", "0")
    assert r.exit_code == 2 and not (tmp_path / "zero.pt").exists()


def test_a_recorded_pixel_size_of_zero_is_refused():
    with pytest.raises(Exception, match="pixel size"):
        model_pixel_size({"pixel_size": 0})
    assert model_pixel_size({}) is None


def _edited(model_path, path, **meta):
    """The model file with ``meta`` changed in its metadata and its content hash made to
    match, as a file written by other software (or edited) would be."""
    from vstain_dask.models.checkpoint import _content_hash

    doc = torch.load(model_path, weights_only=True)
    doc["meta"].update(meta)
    doc["sha256"] = _content_hash(doc["meta"], doc["state_dicts"], doc.get("extra") or {})
    torch.save(doc, path)
    return path


@pytest.mark.parametrize("size", [0, -5.0, "5 µm"])
def test_a_model_recording_a_pixel_size_of_zero_or_below_is_refused_at_load(
    ct, model_path, tmp_path, size
):
    from vstain_dask.errors import CheckpointError

    bad = _edited(model_path, tmp_path / "bad.pt", pixel_size=size)
    with pytest.raises(CheckpointError, match="records an invalid pixel size"):
        load_model(bad)
    src, _ = ct
    r = _run("stain", src, "--model", bad, "-o", tmp_path / "out.zarr", *STAIN)
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: {bad}: the model records")
    assert f"got {size!r}" in r.stderr and "--pixel-size UM" in r.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_stain_within_ten_percent_proceeds_silently(ct, model_path, tmp_path):
    src, _ = ct
    model = _model(model_path, tmp_path, 5.4)
    r = _run("stain", src, "--model", model, "-o", tmp_path / "out.zarr", *STAIN)
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr
    prov = ngff.open_volume(tmp_path / "out.zarr").attrs["vstain"]
    assert prov["pixel_size"] == {"model": 5.4, "volume": {"y": 5.0, "x": 5.0},
                                  "decision": "match", "warning": None}  # fmt: skip
    assert prov["parameters"]["resample"] == "auto"


def test_stain_resample_check_refuses_another_size_in_one_line(ct, model_path, tmp_path):
    src, _ = ct
    model = _model(model_path, tmp_path, 2.5)  # the volume is twice as coarse
    check = ["--resample", "check", *STAIN]
    r = _run("stain", src, "--model", model, "-o", tmp_path / "out.zarr", "--axes", "zyx", *check)
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: the volume's voxel size")
    assert "(5 µm)" in r.stderr and "pixel size (2.5 µm)" in r.stderr
    assert "--voxel-size-out 2.5" in r.stderr and "--resample off" in r.stderr
    assert not (tmp_path / "out.zarr").exists()
    # and the other direction: a finer volume than the model's
    model = _model(model_path, tmp_path, 10.0)
    r = _run("stain", src, "--model", model, "-o", tmp_path / "out.zarr", *check)
    assert r.exit_code == 2 and "pixel size (10 µm)" in r.stderr


@pytest.mark.filterwarnings("always::UserWarning")
def test_stain_resample_off_stains_at_the_native_size_with_a_warning(ct, model_path, tmp_path):
    src, _ = ct
    model = _model(model_path, tmp_path, 2.5)
    out = tmp_path / "out.zarr"
    r = _run("stain", src, "--model", model, "-o", out, "--resample", "off", *STAIN)
    assert r.exit_code == 0, r.output
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(said) == 1 and "staining at the volume's voxel size (5 µm)" in said[0]
    assert "model's pixel size (2.5 µm)" in said[0]
    assert "resampling" not in r.stderr
    vol = ngff.open_volume(out)
    assert vol.attrs["scale"]["y"] == 5.0  # written at the input's size
    record = vol.attrs["vstain"]["pixel_size"]
    assert record["model"] == 2.5 and record["volume"] == {"y": 5.0, "x": 5.0}
    assert record["decision"] == "mismatch, stained at the volume's size (--resample off)"


@pytest.mark.filterwarnings("always::UserWarning")
def test_stain_with_a_model_without_pixel_size_warns(ct, model_path, tmp_path):
    src, _ = ct
    model = _model(model_path, tmp_path, None)
    r = _run("stain", src, "--model", model, "-o", tmp_path / "out.zarr", *STAIN)
    assert r.exit_code == 0, r.output
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(said) == 1 and "the model records no pixel size" in said[0]
    assert "model import --pixel-size UM" in said[0]
    assert "resampling" not in r.stderr  # nothing guessed: stained at the volume's own size
    assert ngff.open_volume(tmp_path / "out.zarr").shape[1:] == (10, 40, 36)
    record = ngff.open_volume(tmp_path / "out.zarr").attrs["vstain"]["pixel_size"]
    assert record["model"] is None and record["decision"] == "model records no pixel size"
