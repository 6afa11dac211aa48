"""``vstain-dask train`` from the command line: a tiny run, resume, folds and errors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from vstain_dask.cli import main
from vstain_dask.models import load_model
from vstain_dask.train._testing import write_toy_pairs

TINY = ["--patch-size", 32, "--patches-per-pair", 2, "--batch-size", 4, "--workers", 0,
        "--ngf", 4, "--n-blocks", 1, "--ndf", 4, "--disc-layers", 2, "--device", "cpu",
        "--no-progress", "--threads", 1]  # fmt: skip


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_pairs(tmp_path_factory.mktemp("toy") / "toy.zarr", n=3, size=(40, 40))


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_train_resume_and_fold(toy, tmp_path):
    run = tmp_path / "run"
    r = _run("train", toy, "-o", run, "--epochs", 1, *TINY)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("trained mod-cyclegan for 1 epochs in ")
    assert f"model: {run / 'model.pt'}" in r.output and "loss_curve.png" in r.output
    r = _run("train", toy, "-o", run, "--epochs", 2, "--resume", *TINY)
    assert r.exit_code == 0, r.output
    m = load_model(run / "model.pt")
    assert m.card["metrics"]["final_G"] > 0 and m.card["training"]["epochs"] == 2
    assert len((run / "losses.csv").read_text().splitlines()) == 1 + 2
    # the command line as given, also when the group is invoked from Python
    assert m.card["command"] == shlex.join(
        ["vstain-dask", "train", str(toy), "-o", str(run), "--epochs", "2", "--resume",
         *map(str, TINY)]
    )  # fmt: skip
    r = _run("train", toy, "-o", tmp_path / "fold", "--epochs", 1, "--folds", 3, "--fold", 2,
             "--variant", "pix2pix", *TINY)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "validation SSIM" in r.output and "(1 validation, 0 test held out)" in r.output
    m = load_model(tmp_path / "fold" / "model.pt")
    assert m.variant.value == "pix2pix" and m.card["split"]["fold"] == 2


def test_train_errors(toy, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    cases = [
        (["train", toy, "-o", run, *TINY], "exists and is not empty; pass --resume"),
        (["train", toy, "-o", tmp_path / "new", "--resume", *TINY], "holds no training checkpoint"),
        (["train", tmp_path / "missing.zarr", "-o", tmp_path / "x", *TINY], "does not exist"),
        (["train", toy, "-o", tmp_path / "x", "--folds", 3, *TINY],
         "--folds 3 needs --fold K (0..2) to train one fold, or --cluster"),
        (["train", toy, "-o", tmp_path / "x", "--folds", 3, "--fold", 3, *TINY],
         "fold must be in 0..2"),
        (["train", toy, "-o", tmp_path / "x", "--cluster", "local", *TINY],
         "--cluster/--scheduler train all folds in parallel"),
        (["train", toy, "-o", tmp_path / "x", *TINY[2:], "--patch-size", 64],
         "patch_size 64 is larger than pair"),
    ]  # fmt: skip
    for args, message in cases:
        r = _run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output, (args, r.output)
        assert "Traceback" not in r.output
    r = _run("train", toy, "-o", tmp_path / "x", "--variant", "gan")
    assert r.exit_code == 2 and "'gan' is not one of 'mod-cyclegan'" in r.output


def test_a_diverging_run_exits_1_with_one_line(toy, tmp_path, monkeypatch):
    from vstain_dask.train.trainer import _Trainer

    step = _Trainer.step
    monkeypatch.setattr(_Trainer, "step", lambda self, b: step(self, b) * math.inf)
    r = _run("train", toy, "-o", tmp_path / "run", "--lr", "0.001", *TINY)
    assert r.exit_code == 1, r.output
    assert "training diverged: the gan loss became inf at epoch 1, step 1 of " in r.output
    assert "--lr, now 0.001" in r.output and "Traceback" not in r.output


def test_options_take_defaults_and_ranges_from_train_config():
    """The options named after a TrainConfig setting state nothing of their own: the default
    and an integer's range are the field's (for a nested setting, ``--ngf`` and the like, the
    nested config's field; ``--unet-depth`` defaults to the depth that follows the patch
    size)."""
    from vstain_dask.cli.train import train as command
    from vstain_dask.models.config import DiscriminatorConfig, GeneratorConfig
    from vstain_dask.train import TrainConfig
    from vstain_dask.train.config import FLAT_NAMES, flat_field

    fields = {f.name: (f.default, f.metadata) for f in dataclasses.fields(TrainConfig)}
    fields.update({name: flat_field(name) for name in FLAT_NAMES})
    options = [p for p in command.params if p.name in fields]
    assert len(options) == 25
    given = command.make_context("train", ["pairs.zarr", "-o", "run"]).params
    for option in options:
        expected, metadata = fields[option.name]
        if option.name in ("epochs", "l1_normalization"):
            # not set on the command line: a resumed run keeps its own, a new one the field's
            assert given[option.name] is None, option.name
            assert f"default: {expected}" in option.help, option.name
            continue
        if isinstance(option.type, click.Choice):
            expected = str(expected)  # the value of a Variant, "3" for ct_channels
        assert given[option.name] == expected, option.name
        if "min" in metadata:
            assert (option.type.min, option.type.max) == (
                metadata["min"], metadata["max"]
            ), option.name  # fmt: skip
    nested = {f.name: f for c in (GeneratorConfig, DiscriminatorConfig)
              for f in dataclasses.fields(c)}  # fmt: skip
    assert flat_field("ngf") == (64, nested["ngf"].metadata)
    assert flat_field("disc_layers") == (None, nested["n_layers"].metadata)
    assert flat_field("unet_depth") == (None, nested["depth"].metadata)


@pytest.mark.parametrize(
    ("given", "kind", "layers", "field"),
    [("pytorch-gan", "pytorch-gan", 4, 94), ("patchgan70", "patchgan-70", 3, 70)],
)
def test_discriminator_choice_builds_and_records_that_design(toy, tmp_path, given, kind, layers,
                                                            field):  # fmt: skip
    from vstain_dask.models import discriminator_receptive_field, load_training_checkpoint
    from vstain_dask.models.checkpoint import model_info

    run = tmp_path / "run"
    at = TINY.index("--disc-layers")
    tiny = TINY[:at] + TINY[at + 2 :]  # the design's own layers
    r = _run("train", toy, "-o", run, "--epochs", 1, "--discriminator", given, *tiny)
    assert r.exit_code == 0, r.output
    ckpt = load_training_checkpoint(run / "checkpoints" / "last.pt")
    for role in ("discriminator", "inverse_discriminator"):
        config = ckpt.networks[role].config
        assert (config.kind.value, config.n_layers) == (kind, layers)
        assert discriminator_receptive_field(config) == field
        assert ckpt.meta["architectures"][role]["kind"] == kind
    assert model_info(run / "model.pt")["training"]["discriminator"]["kind"] == kind
    assert f'"kind": "{kind}"' in (run / "model.md").read_text()
    r = _run("train", toy, "-o", tmp_path / "x", "--discriminator", "patchgan-71", *tiny)
    assert r.exit_code == 2 and "'patchgan-71' is not one of 'pytorch-gan'" in r.output


def test_l1_normalization_is_recorded_and_old_runs_resume_as_they_ran(toy, tmp_path):
    from vstain_dask.models.checkpoint import model_info

    run = tmp_path / "run"
    r = _run("train", toy, "-o", run, "--epochs", 1, *TINY)
    assert r.exit_code == 0, r.output
    training = model_info(run / "model.pt")["training"]
    assert training["l1_normalization"] == "pixels" and "(the paper's)" in training["masked_l1"]
    assert "| l1_normalization | pixels |" in (run / "model.md").read_text()
    # --resume without --epochs keeps the run's 1 epoch (not the default 500): nothing to do
    r = _run("train", toy, "-o", run, "--resume", *TINY)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("trained mod-cyclegan for 1 epochs")
    # a run whose config was written before the setting existed divided by the mask's area,
    # and resumes so
    config = json.loads((run / "config.json").read_text())
    del config["config"]["l1_normalization"]
    (run / "config.json").write_text(json.dumps(config))
    r = _run("train", toy, "-o", run, "--resume", "--epochs", 2, "--l1-normalization", "pixels",
             *TINY)  # fmt: skip
    assert r.exit_code == 2 and "l1_normalization: run 'mask', now 'pixels'" in r.output
    r = _run("train", toy, "-o", run, "--resume", "--epochs", 2, *TINY)
    assert r.exit_code == 0, r.output
    training = model_info(run / "model.pt")["training"]
    assert (
        training["l1_normalization"] == "mask" and "divided by the mask's" in training["masked_l1"]
    )


@pytest.mark.slow
def test_train_all_folds_on_a_running_scheduler(toy, tmp_path, cluster):
    # the cluster options reach the folds: --scheduler (with --cluster-timeout) runs every fold
    out = tmp_path / "cv"
    r = _run("train", toy, "-o", out, "--epochs", 1, "--folds", 2, "--scheduler",
             cluster.scheduler_address, "--cluster-timeout", 30, *TINY)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"trained 2 folds of mod-cyclegan into {out}" in r.stdout
    assert "training 2 folds" in r.stderr and "fold 1 done" in r.stderr
    for k in range(2):
        assert load_model(out / f"fold{k}" / "model.pt").card["split"]["fold"] == k


def test_train_through_the_real_entry_point(toy, tmp_path):
    exe = shutil.which("vstain-dask") or str(Path(sys.executable).parent / "vstain-dask")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([exe, "train", str(toy), "-o", str(run), "--epochs", "1",
                        "--variant", "cyclegan", *map(str, TINY)], capture_output=True,
                       text=True, timeout=300, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "trained cyclegan for 1 epochs" in r.stdout and (run / "model.pt").exists()
    assert "Traceback" not in r.stderr
    r = subprocess.run([exe, "train", str(toy), "-o", str(run), *map(str, TINY)],
                       capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: run directory") and "--overwrite" in r.stderr


def _weights(path):
    return load_model(path).generator.state_dict()


@pytest.fixture(scope="module")
def straight(toy, tmp_path_factory):
    """Three epochs without interruption: what a killed and resumed run must end with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    r = subprocess.run([sys.executable, "-m", "vstain_dask.cli", "train", str(toy), "-o", str(run),
                        *map(str, KILLABLE)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    return run


# epochs long enough (seconds) to be interrupted in the middle of one
KILLABLE = ["--epochs", 3, *TINY[:2], "--patches-per-pair", 120, *TINY[4:]]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_train_interrupted_mid_epoch_resumes_exactly(toy, straight, tmp_path, sig):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vstain_dask.cli", "train", str(toy), "-o", str(run),
           *map(str, KILLABLE)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    history = run / "losses.json"
    deadline = time.monotonic() + 240
    try:
        while not (history.exists() and history.read_text().endswith("]")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the first epoch did not finish in time"
            time.sleep(0.05)
        # a third of the way into the second epoch
        time.sleep(json.loads(history.read_text())[0]["seconds"] / 3)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert len(json.loads(history.read_text())) == 1, "the signal did not land in epoch 2"
    assert not (run / "model.pt").exists()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == (
            f"interrupted: {run} holds 1 completed epoch(s); rerun the same command with "
            "--resume to continue from the last completed epoch"
        )
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("trained mod-cyclegan for 3 epochs")
    # the resumed run ends exactly where the uninterrupted one does
    a, b = _weights(straight / "model.pt"), _weights(run / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["epoch"] for h in json.loads(history.read_text())] == [1, 2, 3]
    steps = (run / "steps.csv").read_text().splitlines()
    assert steps == (straight / "steps.csv").read_text().splitlines()[: len(steps)]
    assert len(steps) == len((straight / "steps.csv").read_text().splitlines())
