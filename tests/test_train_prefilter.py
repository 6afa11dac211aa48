"""The 3D Gaussian prefilter a model asks for: training records σ = 1 voxel for pairs that
``register`` resampled from the CT (interpolated, as the paper's were) and 0 otherwise;
``stain`` applies the recorded σ unless ``--prefilter-sigma`` is given, and says which and
why; a model that records none (the bundled one, imported ones) is stained without one, as
before models recorded it."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from test_pixel_size import STAIN, TINY, _run  # the same tiny training and stain

from vstain_dask import ngff
from vstain_dask.errors import CheckpointError
from vstain_dask.models import load_model, save_model
from vstain_dask.stain import default_model_path
from vstain_dask.train._testing import write_toy_pairs


def test_training_records_whether_its_pairs_were_interpolated(tmp_path):
    pairs = write_toy_pairs(tmp_path / "toy.zarr", n=2, size=(40, 40))
    r = _run("train", pairs, "-o", tmp_path / "plain", *TINY)
    assert r.exit_code == 0, r.output
    model = load_model(tmp_path / "plain" / "model.pt")
    assert model.prefilter["sigma"] == 0.0
    assert (model.prefilter["interpolated"], model.prefilter["pairs"]) == (0, 2)
    card = (tmp_path / "plain" / "model.md").read_text()
    assert "- Prefilter before staining: none (σ = 0): 0 of 2 training pairs" in card
    # pairs that `register` wrote carry its record: their CT planes were interpolated
    for pid in ("toy00", "toy01"):
        zarr.open_group(str(pairs / pid), mode="r+").attrs["registration"] = {"metric": -0.4}
    r = _run("train", pairs, "-o", tmp_path / "registered", *TINY)
    assert r.exit_code == 0, r.output
    model = load_model(tmp_path / "registered" / "model.pt")
    assert model.prefilter["sigma"] == 1.0 and model.prefilter["interpolated"] == 2
    assert "interpolated" in model.prefilter["reason"]
    card = (tmp_path / "registered" / "model.md").read_text()
    assert "- Prefilter before staining: 3D Gaussian, σ = 1 voxel: 2 of 2 training pairs" in card


def _resaved(model_path, path, prefilter):
    m = load_model(model_path)
    return save_model(path, generator=m.generator, normalization=m.normalization,
                      variant=m.variant, pixel_size=m.pixel_size, prefilter=prefilter)  # fmt: skip


def _prefilter_line(stderr: str) -> str:
    said = [ln for ln in stderr.splitlines() if ln.startswith("prefilter:")]
    assert len(said) == 1, stderr
    return said[0]


def test_stain_applies_the_recorded_sigma_unless_told(ct, model_path, tmp_path):
    src, _ = ct
    reason = "2 of 2 training pairs were resampled from the CT by registration (interpolated)"
    sized = _resaved(model_path, tmp_path / "sigma1.pt", {"sigma": 1.0, "reason": reason})
    r = _run("stain", src, "--model", sized, "-o", tmp_path / "recorded.zarr", *STAIN)
    assert r.exit_code == 0, r.output
    assert _prefilter_line(r.stderr) == f"prefilter: σ = 1 voxel (the model's: {reason})"
    recorded = ngff.open_volume(tmp_path / "recorded.zarr")
    assert recorded.attrs["vstain"]["parameters"]["prefilter_sigma"] == 1.0
    # the same as a model that records none, told σ = 1
    unsized = _resaved(model_path, tmp_path / "none.pt", None)
    r = _run("stain", src, "--model", unsized, "-o", tmp_path / "told.zarr",
             "--prefilter-sigma", 1, *STAIN)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert _prefilter_line(r.stderr) == "prefilter: σ = 1 voxel (given with --prefilter-sigma)"
    told = ngff.open_volume(tmp_path / "told.zarr")
    assert np.array_equal(recorded.data.compute(), told.data.compute())
    # --prefilter-sigma 0 switches the recorded one off; a model without a record gets none
    for model, extra, out in (
        (sized, ["--prefilter-sigma", 0], "off.zarr"),
        (unsized, [], "x.zarr"),
    ):
        r = _run("stain", src, "--model", model, "-o", tmp_path / out, *extra, *STAIN)
        assert r.exit_code == 0, r.output
        assert _prefilter_line(r.stderr).startswith("prefilter: σ = 0 voxel (")
        vol = ngff.open_volume(tmp_path / out)
        assert vol.attrs["vstain"]["parameters"]["prefilter_sigma"] == 0.0
        assert not np.array_equal(vol.data.compute(), told.data.compute())
    assert "the model records none" in _prefilter_line(r.stderr)


def test_the_bundled_model_records_no_prefilter_and_is_stained_without_one():
    assert load_model(default_model_path()).prefilter is None


def test_a_recorded_prefilter_must_be_a_sigma_and_a_reason(model_path, tmp_path):
    for bad in ({"sigma": -1.0, "reason": "x"}, {"sigma": 1.0}, {"reason": "x"}):
        with pytest.raises(Exception, match="prefilter"):
            _resaved(model_path, tmp_path / "bad.pt", bad)
    assert not (tmp_path / "bad.pt").exists()
    with pytest.raises(CheckpointError, match="invalid prefilter"):
        from vstain_dask.models.checkpoint import model_prefilter

        model_prefilter({"prefilter": {"sigma": float("nan"), "reason": "x"}})
