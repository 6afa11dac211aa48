"""The trainer: variants, losses, checkpoints, exact resume, logs and errors (tiny networks)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from vstain_dask.errors import CheckpointError, InputError, OutputExistsError
from vstain_dask.models import (
    LossWeights,
    load_model,
    load_training_checkpoint,
    model_info,
)
from vstain_dask.train import TrainConfig, train
from vstain_dask.train._testing import write_toy_pairs
from vstain_dask.train.trainer import ImageBuffer

torch.set_num_threads(1)

TINY = dict(patch_size=32, batch_size=4, workers=0, ngf=4, n_blocks=1, ndf=4, device="cpu",
            disc_layers=2, val_every=0)  # fmt: skip


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_pairs(tmp_path_factory.mktemp("toy") / "toy.zarr", n=3, size=(48, 48))


@pytest.mark.parametrize(
    ("variant", "term"),
    [
        ("mod-cyclegan", "pixel"),
        ("cyclegan", "cycle"),
        ("cyclegan-invct", "cycle"),
        ("pix2pix", "pix2pix_l1"),
    ],  # fmt: skip
)
def test_each_variant_learns_a_trivial_stain(toy, tmp_path, variant, term):
    cfg = TrainConfig(variant=variant, epochs=3, patches_per_pair=8, lr=2e-3, seed=1, **TINY)
    r = train(toy, tmp_path / "run", cfg, progress=False)
    h = r.history
    assert len(h) == 3
    for row in h:
        for k in ("G", "D", term, "gan"):
            assert math.isfinite(row[k]), (k, row)
    assert h[-1][term] < 0.8 * h[0][term], [row[term] for row in h]
    expected = {
        "mod-cyclegan": {"gan", "cycle", "identity", "pixel", "greyscale"},
        "cyclegan": {"gan", "cycle", "identity"},
        "cyclegan-invct": {"gan", "cycle", "identity"},
        "pix2pix": {"gan", "pix2pix_l1"},
    }[variant]
    assert expected <= set(h[0]) and not ({"pixel", "greyscale", "pix2pix_l1", "cycle"}
                                          - expected) & set(h[0])  # fmt: skip
    m = load_model(r.model)
    assert m.variant.value == variant
    assert m.normalization.invert == (variant == "cyclegan-invct")


def test_model_and_checkpoint_contents(toy, tmp_path):
    cfg = TrainConfig(epochs=2, patches_per_pair=4, seed=5, **{**TINY, "val_every": 1},
                      folds=3, fold=1, test_fraction=0.0)  # fmt: skip
    r = train(toy, tmp_path / "run", cfg, progress=False, command="vstain-dask train toy")
    run = r.run_dir
    # the model the stain engine loads: normalization it needs and the training record
    m = load_model(r.model)
    n = m.normalization
    assert (n.ct_normalized, n.low, n.high, n.channels, n.invert) == (True, 0.0, 50000.0, 3, False)
    x = m.to_input(torch.tensor([[10000.0, 30000.0]]))
    assert x[0, :, 0, 0].tolist() == pytest.approx([-0.6] * 3)  # background
    assert x[0, :, 0, 1].tolist() == pytest.approx([0.2] * 3)  # bone
    card = m.card
    assert card["seed"] == 5 and card["command"] == "vstain-dask train toy"
    assert card["training"]["weights"] == LossWeights().to_dict()
    assert card["training"]["epochs"] == 2 and card["training"]["ngf"] == 4
    split = card["split"]
    assert (split["folds"], split["fold"], split["stratify"]) == (3, 1, "material")
    assert sorted(split["train"] + split["val"]) == ["toy00", "toy01", "toy02"]
    assert len(split["val"]) == 1 and split["test"] == []
    assert "final_G" in card["metrics"] and "best_val_ssim" in card["metrics"]
    assert (run / "model.md").read_text().startswith("# Model card: model.pt")
    # the training checkpoint: every network and the trainer state
    ck = load_training_checkpoint(r.last)
    assert set(ck.networks) == {"generator", "inverse_generator", "discriminator",
                                "inverse_discriminator"}  # fmt: skip
    assert {"optimizers", "schedulers", "buffers", "rng", "epoch", "best", "history"} <= set(
        ck.extra
    )
    assert ck.extra["epoch"] == 2
    assert set(ck.extra["rng"]) >= {"python", "numpy", "torch"}
    assert ck.extra["buffers"]["stain"]["images"].shape == (16, 3, 32, 32)  # 2 pairs x 4 x 2
    assert ck.meta["split"] == split
    # minima of each generator loss term, as separate model files
    for term in ("gan", "cycle", "identity", "pixel", "greyscale", "G"):
        info = model_info(run / "checkpoints" / f"min_{term}.pt")
        assert info["kind"] == "model" and info["metrics"]["epoch"] in (1, 2)
        assert info["metrics"][f"min_{term}"] == pytest.approx(min(row[term] for row in r.history))
    # the loss log
    rows = _csv(run / "losses.csv")
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert {"G", "D", "pixel", "lr", "samples_per_s", "data_wait_fraction", "val_ssim"} <= set(
        rows[0]
    )
    assert json.loads((run / "losses.json").read_text())[1]["epoch"] == 2
    steps = _csv(run / "steps.csv")
    assert len(steps) >= 2 and steps[-1]["epoch"] == "2"
    png = (run / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["variant"] == "mod-cyclegan" and saved["split"] == split


@pytest.mark.parametrize("variant", ["mod-cyclegan", "pix2pix"])
def test_resume_continues_exactly(toy, tmp_path, variant):
    base = dict(variant=variant, patches_per_pair=3, seed=2, buffer_size=4, **TINY)
    a = train(toy, tmp_path / "a", TrainConfig(epochs=2, **base), progress=False)
    train(toy, tmp_path / "b", TrainConfig(epochs=1, **base), progress=False)
    b = train(toy, tmp_path / "b", TrainConfig(epochs=2, **base), resume=True, progress=False)
    ca, cb = load_training_checkpoint(a.last), load_training_checkpoint(b.last)
    for role, net in ca.networks.items():
        for (k, x), (_, y) in zip(net.state_dict().items(), cb.networks[role].state_dict().items(),
                                  strict=True):  # fmt: skip
            assert torch.equal(x, y), (role, k)
    assert a.history == [
        {**row, "seconds": a.history[i]["seconds"], "samples_per_s": a.history[i]["samples_per_s"],
         "data_wait_fraction": a.history[i]["data_wait_fraction"]}
        for i, row in enumerate(b.history)
    ]  # fmt: skip
    opt_a, opt_b = ca.extra["optimizers"]["G"]["state"], cb.extra["optimizers"]["G"]["state"]
    assert all(torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a)
    assert len(_csv(b.run_dir / "steps.csv")) == len(_csv(a.run_dir / "steps.csv"))


def test_one_channel_ct_and_linear_decay(toy, tmp_path):
    cfg = TrainConfig(epochs=3, patches_per_pair=2, ct_channels=1, decay_start=1, **TINY)
    r = train(toy, tmp_path / "run", cfg, progress=False)
    m = load_model(r.model)
    assert m.config.in_channels == 1 and m.normalization.channels == 1
    assert "identity" not in r.history[0] and "greyscale" not in r.history[0]
    lrs = [row["lr"] for row in r.history]
    # the learning rate used in each epoch: 2e-4 until the decay starts, then linearly to 0
    assert lrs == pytest.approx([2e-4, 2e-4 * 0.5, 0.0])


def test_image_buffer_is_seeded_and_bounded():
    a, b = ImageBuffer(3, seed=1), ImageBuffer(3, seed=1)
    for i in range(10):
        x = torch.full((2, 1, 2, 2), float(i))
        assert torch.equal(a.push_and_pop(x), b.push_and_pop(x))
    assert len(a.images) == 3
    c = ImageBuffer(3, seed=9)
    c.load_state_dict(a.state_dict())
    x = torch.full((4, 1, 2, 2), 99.0)
    assert torch.equal(a.push_and_pop(x), c.push_and_pop(x))
    assert torch.equal(ImageBuffer(0).push_and_pop(x), x)


def test_run_directory_rules(toy, tmp_path):
    cfg = TrainConfig(epochs=1, patches_per_pair=1, **TINY)
    run = tmp_path / "run"
    train(toy, run, cfg, progress=False)
    with pytest.raises(OutputExistsError, match="--resume to continue"):
        train(toy, run, cfg, progress=False)
    train(toy, run, cfg, progress=False, overwrite=True)
    with pytest.raises(InputError, match="ngf: run 4, now 8"):
        train(toy, run, TrainConfig(**{**cfg.to_dict(), "ngf": 8}), resume=True, progress=False)
    with pytest.raises(CheckpointError, match="holds no training checkpoint"):
        train(toy, tmp_path / "new", cfg, resume=True, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a training run"):
        train(toy, other, cfg, progress=False, overwrite=True)
    assert (other / "notes.txt").exists()


def test_config_validation():
    with pytest.raises(InputError, match="variant must be one of 'mod-cyclegan'"):
        TrainConfig(variant="gan")
    with pytest.raises(InputError, match="ct_channels must be 1 or 3"):
        TrainConfig(ct_channels=2)
    with pytest.raises(InputError, match="decay_start must be below epochs"):
        TrainConfig(epochs=5, decay_start=5)
    with pytest.raises(InputError, match="epochs must be an integer >= 1"):
        TrainConfig(epochs=0)
    cfg = TrainConfig(variant="pix2pix", patch_size=64, ngf=8)
    assert cfg.generator_config().depth == 6 and cfg.generator_config().kind.value == "unet"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="unknown field"):
        TrainConfig.from_dict({"nope": 1})
    with pytest.raises(InputError, match="CUDA is not available"):
        from vstain_dask.train.trainer import _device

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        _device("cuda")


def test_bf16_channels_last_path_learns_on_the_cpu(toy, tmp_path):
    """The precision path CUDA takes by default (bf16 autocast, channels-last), run on the CPU.

    CI has no GPU, so this is where the mixed-precision step itself is checked: losses finite,
    the stain still learnt, the model card saying how it was trained.
    """
    cfg = TrainConfig(variant="mod-cyclegan", epochs=3, patches_per_pair=8, lr=2e-3, seed=1,
                      **{**TINY, "autocast": True, "channels_last": True})  # fmt: skip
    r = train(toy, tmp_path / "run", cfg, progress=False)
    pixel = [row["pixel"] for row in r.history]
    assert all(math.isfinite(row[k]) for row in r.history for k in ("G", "D", "pixel"))
    assert pixel[-1] < 0.8 * pixel[0], pixel
    model = load_model(r.model)
    meta = model.card["training"]
    assert meta["autocast_bf16"] is True and meta["channels_last"] is True
    # the saved weights are float32 whatever the step ran in
    assert {p.dtype for p in model.generator.parameters()} == {torch.float32}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_channels_last_learns(toy, tmp_path):
    """On CUDA the defaults are bf16 autocast and channels-last: the steps stay finite and
    the stain is learnt (the same margin as the CPU run of that path above)."""
    cfg = TrainConfig(variant="mod-cyclegan", epochs=3, patches_per_pair=8, lr=2e-3, seed=1,
                      **{**TINY, "device": "cuda"})  # fmt: skip
    r = train(toy, tmp_path / "run", cfg, progress=False)
    pixel = [row["pixel"] for row in r.history]
    assert all(math.isfinite(row[k]) for row in r.history for k in ("G", "D", "pixel"))
    assert pixel[-1] < 0.8 * pixel[0], pixel
    model = load_model(r.model)
    meta = model.card["training"]
    assert meta["autocast_bf16"] is True and meta["channels_last"] is True
    assert {p.dtype for p in model.generator.parameters()} == {torch.float32}
