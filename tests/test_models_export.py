"""Exporting a model's generator to TorchScript and ONNX."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from vstain_dask.errors import OutputExistsError
from vstain_dask.models import (
    GeneratorConfig,
    InputNormalization,
    build_generator,
    export_model,
    load_model,
    onnx_min_side,
    save_model,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the test machine has two cores shared by several runs; one thread is faster here
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(tmp_path, config: GeneratorConfig, name: str = "model.pt"):
    return save_model(
        tmp_path / name,
        generator=build_generator(config, seed=5),
        normalization=InputNormalization(channels=config.in_channels),
        variant="pix2pix" if config.kind.value == "unet" else "mod-cyclegan",
    )


def _x(c, h, w, seed=0):
    return torch.rand(2, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _jit_load(path, **kwargs):
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export; loading the archive is what is tested
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), **kwargs)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(GeneratorConfig(ngf=8, n_blocks=2), id="resnet"),
        pytest.param(
            GeneratorConfig(ngf=4, n_blocks=1, in_channels=1, out_channels=1, outer_pad=1),
            id="resnet-pytorch-gan-greyscale",
        ),
        pytest.param(GeneratorConfig(kind="unet", ngf=4, depth=5), id="unet"),
    ],
)
def test_torchscript_export_gives_the_same_output(tmp_path, config):
    path = _model(tmp_path, config)
    out = export_model(path, tmp_path / "model.ts")
    extra = {"vstain_model.json": ""}
    scripted = _jit_load(out, _extra_files=extra)
    meta = json.loads(extra["vstain_model.json"])
    model = load_model(path)
    assert meta["sha256"] == model.sha256
    assert meta["normalization"] == model.normalization.to_dict()
    c = config.in_channels
    with torch.no_grad():
        for hw in [(64, 64), (10, 14)]:
            x = _x(c, *hw)
            assert torch.equal(scripted(x), model.generator(x))


def test_export_refuses_to_overwrite(tmp_path):
    path = _model(tmp_path, GeneratorConfig(ngf=4, n_blocks=1))
    export_model(path, tmp_path / "m.ts")
    with pytest.raises(OutputExistsError, match="overwrite"):
        export_model(path, tmp_path / "m.ts")
    export_model(path, tmp_path / "m.ts", overwrite=True)


@pytest.mark.slow  # the ONNX exporter takes about 25 s on a 2-core CPU, even for a tiny network
def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript")
    onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx")
    config = GeneratorConfig(ngf=4, n_blocks=1)
    path = _model(tmp_path, config)
    out = export_model(path, tmp_path / "model.onnx", format="onnx")
    props = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    model = load_model(path)
    assert props["vstain.sha256"] == model.sha256
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    assert onnx_min_side(config) == 16
    # dynamic batch, height and width, including sides that need padding
    for n, h, w in [(2, 64, 64), (1, 16, 30), (3, 37, 21)]:
        x = _x(3, h, w)[:1].repeat(n, 1, 1, 1)
        (y,) = session.run(None, {name: x.numpy()})
        with torch.no_grad():
            expected = model.generator(x).numpy()
        assert y.shape == expected.shape
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5)
