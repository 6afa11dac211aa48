"""``vstain-dask model info|import|export``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import reference_nets as ref
import torch
from click.testing import CliRunner

from vstain_dask.cli import main
from vstain_dask.models import (
    GeneratorConfig,
    InputNormalization,
    build_generator,
    load_model,
    save_model,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the test machine has two cores shared by several runs; one thread is faster here
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def model_file(tmp_path):
    return save_model(
        tmp_path / "model.pt",
        generator=build_generator(GeneratorConfig(ngf=4, n_blocks=1), seed=0),
        normalization=InputNormalization(),
        variant="mod-cyclegan",
        metrics={"ssim": 0.75},
        seed=7,
    )


@pytest.fixture
def pytorch_gan_weights(tmp_path):
    path = tmp_path / "G_AB_200.pth"
    torch.save(ref.GeneratorResNet((3, 64, 64), 2, features=4).state_dict(), path)
    return path


def _run(*args):
    return CliRunner().invoke(main, list(args))


def test_info_prints_the_card(model_file):
    result = _run("model", "info", str(model_file))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# Model card: model.pt")
    assert "## Evaluation metrics" in result.stdout and "| ssim | 0.75 |" in result.stdout
    assert result.stdout == model_file.with_suffix(".md").read_text()


def test_info_json_and_verify(model_file):
    result = _run("model", "info", str(model_file), "--json", "--verify")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["variant"] == "mod-cyclegan" and info["seed"] == 7
    assert info["sha256"] == load_model(model_file).sha256


def test_info_on_bad_files_is_one_line_and_exit_2(tmp_path, model_file, pytorch_gan_weights):
    result = _run("model", "info", str(tmp_path / "missing.pt"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: model file") and "does not exist" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    result = _run("model", "info", str(pytorch_gan_weights))
    assert result.exit_code == 2
    assert "vstain-dask model import G_AB_200.pth --from pytorch-gan" in result.stderr
    model_file.write_bytes(model_file.read_bytes()[:1000])
    result = _run("model", "info", str(model_file))
    assert result.exit_code == 2 and "truncated or damaged" in result.stderr


def test_import_pytorch_gan_with_normalization_options(tmp_path, pytorch_gan_weights):
    out = tmp_path / "imported.pt"
    result = _run(
        "model",
        "import",
        str(pytorch_gan_weights),
        "--from",
        "pytorch-gan",
        "-o",
        str(out),
        "--ct-low",
        "100",
        "--ct-high",
        "60000",
        "--raw-ct",
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out} and imported.md" in result.stdout
    assert "variant mod-cyclegan, resnet generator 3 -> 3 channels" in result.stdout
    model = load_model(out)
    assert model.normalization == InputNormalization(low=100, high=60000, ct_normalized=False)
    assert model.card["command"].startswith("vstain-dask model import")
    assert "--ct-low 100 --ct-high 60000 --raw-ct" in model.card["command"]
    assert (tmp_path / "imported.md").exists()


def test_import_errors(tmp_path, pytorch_gan_weights):
    out = tmp_path / "m.pt"
    result = _run(
        "model", "import", str(pytorch_gan_weights), "--from", "cyclegan-pix2pix", "-o", str(out)
    )
    assert result.exit_code == 2 and "use --from pytorch-gan" in result.stderr
    assert not out.exists()
    result = _run("model", "import", str(pytorch_gan_weights), "--from", "keras", "-o", str(out))
    assert result.exit_code == 2 and "'keras' is not one of" in result.stderr
    args = ["model", "import", str(pytorch_gan_weights), "--from", "pytorch-gan", "-o", str(out)]
    assert _run(*args).exit_code == 0
    result = _run(*args)
    assert result.exit_code == 2 and "exists" in result.stderr and "--overwrite" in result.stderr
    assert _run(*args, "--overwrite").exit_code == 0
    result = _run(*args, "--overwrite", "--channels", "1")
    assert result.exit_code == 2 and "pass --channels 3" in result.stderr


def test_import_cyclegan_pix2pix_unet(tmp_path):
    weights = tmp_path / "latest_net_G.pth"
    torch.save(
        ref.UnetGenerator(3, 3, 5, 4, ref.get_norm_layer("batch"), True).state_dict(), weights
    )
    out = tmp_path / "p2p.pt"
    result = _run("model", "import", str(weights), "--from", "cyclegan-pix2pix", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "variant pix2pix, unet generator" in result.stdout
    assert load_model(out).config.depth == 5


def test_export_torchscript(tmp_path, model_file):
    out = tmp_path / "model.ts"
    result = _run("model", "export", str(model_file), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {out} (torchscript)\n"
    result = _run("model", "export", str(model_file), "-o", str(out))
    assert result.exit_code == 2 and "exists" in result.stderr
    result = _run("model", "export", str(model_file), "-o", str(out), "--format", "tflite")
    assert result.exit_code == 2 and "'tflite' is not one of 'torchscript', 'onnx'" in result.stderr


def _entry_point() -> list[str]:
    exe = shutil.which("vstain-dask", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "vstain_dask.cli"]


def test_real_entry_point(tmp_path, model_file):
    ok = subprocess.run(
        [*_entry_point(), "model", "info", str(model_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("# Model card: model.pt") and ok.stderr == ""
    bad = subprocess.run(
        [*_entry_point(), "model", "info", str(tmp_path / "missing.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: model file") and bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr
