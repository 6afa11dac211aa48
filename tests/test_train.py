"""The trainer: variants, losses, checkpoints, exact resume, logs and errors (tiny networks)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from vstain_dask.errors import CheckpointError, DivergenceError, InputError, OutputExistsError
from vstain_dask.models import (
    LossWeights,
    load_model,
    load_training_checkpoint,
    model_info,
)
from vstain_dask.models.config import DiscriminatorConfig, GeneratorConfig, InputNormalization
from vstain_dask.models.networks import build_networks
from vstain_dask.train import Provenance, TrainConfig, generator_for, train
from vstain_dask.train._testing import BACKGROUND_RGB, BONE_RGB, toy_plane, write_toy_pairs
from vstain_dask.train.hooks import Hook, LossLog, Run, StepLog
from vstain_dask.train.trainer import ImageBuffer, _Trainer, fit

torch.set_num_threads(1)

TINY = dict(patch_size=32, batch_size=4, workers=0, generator=GeneratorConfig(ngf=4, n_blocks=1),
            discriminator=DiscriminatorConfig(ndf=4, n_layers=2), device="cpu",
            val_every=0)  # fmt: skip
# Enough steps (3 epochs of 12 batches) for every variant to learn the toy stain with a margin
# (measured over seeds 1-10: each class's colour error at most 0.40 of the untrained one, at
# least 97 % of the pixels nearer their own colour). Pix2Pix gets a U-Net of depth 3, whose
# context (8 pixels) is the same on the 32-pixel training patches and on the 64-pixel plane it
# is checked on; the default depth 5 reduces a patch to a single pixel.
LEARN = dict(epochs=3, patches_per_pair=16, lr=2e-3)


def _tiny_generator(variant):
    """The variant's tiny generator: ResNet of 1 block, or U-Net of depth 3 (see LEARN)."""
    return generator_for(variant, patch_size=32, ngf=4, n_blocks=1, depth=3)


#: the toy stain: the colour of each class of CT pixel
STAIN = {"bone": BONE_RGB, "background": BACKGROUND_RGB}


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_pairs(tmp_path_factory.mktemp("toy") / "toy.zarr", n=3, size=(48, 48))


@pytest.fixture(scope="module")
def held_out():
    """A toy CT plane no run trains on, and per class its pixels 2 or more pixels from the
    other class (generators blur the border, which says nothing about the colours learnt)."""
    ct, bone = toy_plane(np.random.default_rng(123), (64, 64))
    inner = {"bone": ndimage.binary_erosion(bone, iterations=2),
             "background": ndimage.binary_erosion(~bone, iterations=2)}  # fmt: skip
    return ct, inner


def _colour_errors(model, held_out, colours):
    """Per class of the held-out plane: the mean RGB distance (8-bit levels) of the stained
    pixels to ``colours[class]``, and the fraction of them nearer to it than to the other's."""
    ct, inner = held_out
    rgb = model.predict(ct)[0].transpose(1, 2, 0).astype(np.float64)
    out = {}
    for cls, other in (("bone", "background"), ("background", "bone")):
        own = np.linalg.norm(rgb[inner[cls]] - colours[cls], axis=-1)
        far = np.linalg.norm(rgb[inner[cls]] - colours[other], axis=-1)
        out[cls] = (float(own.mean()), float((own < far).mean()))
    return out


def _assert_stain_learnt(model_path, cfg, held_out, *, either_assignment=False):
    """The trained generator paints each class of the held-out plane in its colour, and much
    closer to it than the same network with the run's initial weights.

    ``either_assignment``: the colours may be swapped between the classes (an unpaired
    CycleGAN on CT that is not inverted: both assignments are cycle-consistent).
    """
    trained = load_model(model_path)
    initial = build_networks(cfg.variant, generator=cfg.generator,
                             discriminator=cfg.discriminator, seed=cfg.seed)  # fmt: skip
    untrained = dataclasses.replace(trained, generator=initial["generator"].eval())
    colours = STAIN
    if either_assignment:
        swapped = {"bone": BACKGROUND_RGB, "background": BONE_RGB}
        colours = min(STAIN, swapped, key=lambda c: _colour_errors(trained, held_out, c)["bone"][0])
    after = _colour_errors(trained, held_out, colours)
    before = _colour_errors(untrained, held_out, colours)
    for cls in colours:
        (error, nearer), (error_before, _) = after[cls], before[cls]
        assert nearer >= 0.9, (cls, after, before)
        assert error <= 0.6 * error_before, (cls, after, before)


@pytest.mark.parametrize(
    ("variant", "term"),
    [
        ("mod-cyclegan", "pixel"),
        ("cyclegan", "cycle"),
        ("cyclegan-invct", "cycle"),
        ("pix2pix", "pix2pix_l1"),
    ],  # fmt: skip
)
def test_each_variant_learns_a_trivial_stain(toy, held_out, tmp_path, variant, term):
    cfg = TrainConfig(variant=variant, seed=1, **LEARN,
                      **{**TINY, "generator": _tiny_generator(variant)})  # fmt: skip
    r = train(toy, tmp_path / "run", cfg, progress=False)
    h = r.history
    assert len(h) == 3
    for row in h:
        for k in ("G", "D", term, "gan"):
            assert math.isfinite(row[k]), (k, row)
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
    # what was learnt: bone purple, background white. The plain CycleGAN learns the two colours
    # but nothing pairs them with the classes; on this toy it swapped them for every seed tried
    # (1-10), dark background CT going to purple; on inverted CT (cyclegan-invct) it did not.
    _assert_stain_learnt(r.model, cfg, held_out, either_assignment=variant == "cyclegan")


def test_model_and_checkpoint_contents(toy, tmp_path):
    cfg = TrainConfig(epochs=2, patches_per_pair=4, seed=5, **{**TINY, "val_every": 1},
                      folds=3, fold=1, test_fraction=0.0)  # fmt: skip
    r = train(toy, tmp_path / "run", cfg, progress=False,
              provenance=Provenance(command="vstain-dask train toy"))  # fmt: skip
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
    assert card["training"]["epochs"] == 2 and card["training"]["generator"]["ngf"] == 4
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
    _check_loss_curve(run / "loss_curve.png")
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["variant"] == "mod-cyclegan" and saved["split"] == split


def _check_loss_curve(path):
    """Two panels (11 x 4 in at 90 dpi) on white, each with curves in matplotlib's first two
    cycle colours (the per-step losses left, the epoch means right)."""
    import imageio.v3 as iio

    img = iio.imread(path)[..., :3]
    assert img.shape == (360, 990, 3)
    for corner in (img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]):
        assert tuple(corner) == (255, 255, 255)
    for half in (img[:, :495], img[:, 495:]):
        for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # C0, C1
            assert (half == colour).all(axis=-1).sum() > 20, colour


@pytest.mark.parametrize("variant", ["mod-cyclegan", "pix2pix"])
def test_resume_continues_exactly(toy, tmp_path, variant):
    base = dict(variant=variant, patches_per_pair=3, seed=2, buffer_size=4,
                **{**TINY, "generator": _tiny_generator(variant)})  # fmt: skip
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
    one_channel = GeneratorConfig(ngf=4, n_blocks=1, in_channels=1)
    cfg = TrainConfig(epochs=3, patches_per_pair=2, decay_start=1,
                      **{**TINY, "generator": one_channel})  # fmt: skip
    assert cfg.input.channels == 1  # the input follows the generator
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
    wider = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, ngf=8))
    with pytest.raises(InputError, match="ngf: run 4, now 8"):
        train(toy, run, wider, resume=True, progress=False)
    # a run whose config.json holds the flat settings of configs written before the nesting
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "config": FLAT_TINY}))
    with pytest.raises(InputError, match="ngf: run 4, now 8"):
        train(toy, run, wider, resume=True, progress=False)
    # such a config also predates the L1 normalization setting: its run divided by the area
    with pytest.raises(InputError, match="l1_normalization: run 'mask', now 'pixels'"):
        train(toy, run, cfg, resume=True, progress=False)
    as_ran = dataclasses.replace(cfg, l1_normalization="mask")
    assert train(toy, run, as_ran, resume=True, progress=False).epochs == 1
    with pytest.raises(CheckpointError, match="holds no training checkpoint"):
        train(toy, tmp_path / "new", cfg, resume=True, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a training run"):
        train(toy, other, cfg, progress=False, overwrite=True)
    assert (other / "notes.txt").exists()


def test_a_non_finite_loss_stops_the_run_with_a_divergence_error(toy, tmp_path, monkeypatch):
    step, calls = _Trainer.step, []

    def nan_at_step_2(self, batch):
        calls.append(1)
        losses = step(self, batch)
        return torch.full_like(losses, math.nan) if len(calls) == 2 else losses

    monkeypatch.setattr(_Trainer, "step", nan_at_step_2)
    cfg = TrainConfig(epochs=2, patches_per_pair=4, **TINY)  # 3 steps an epoch, checked at 3
    with pytest.raises(DivergenceError, match=r"the gan loss became nan at epoch 1, step 2 of 3; "
                       r"try a lower learning rate \(--lr, now 0.0002\)") as e:  # fmt: skip
        train(toy, tmp_path / "run", cfg, progress=False)
    assert e.value.exit_code == 1 and not isinstance(e.value, InputError)
    assert not (tmp_path / "run" / "losses.json").exists()  # no epoch completed


class _Recorder(Hook):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, run):
        self.calls.append("fit_start")

    def on_epoch_start(self, run, epoch):
        self.calls.append(("epoch_start", epoch))

    def on_log(self, run, epoch, step, losses):
        self.calls.append(("log", epoch, step, losses))

    def on_step_end(self, run):
        self.calls.append("step")

    def on_epoch_end(self, run, row):
        self.calls.append(("epoch_end", row["epoch"], row is run.history[-1]))

    def on_fit_end(self, run):
        self.calls.append("fit_end")


def test_fit_calls_its_hooks_at_the_defined_points(tmp_path):
    """The loop alone, with a stand-in trainer whose step returns the losses ``[gan, G, D]``
    of the step's number: the hooks see every step, a log every ``log_every`` steps and at the
    end of an epoch, and the epoch rows hold the mean losses."""
    n = iter(range(1, 100))
    trainer = SimpleNamespace(
        components=["gan"],
        step=lambda batch: torch.full((3,), float(next(n))),
        sched_g=SimpleNamespace(step=lambda: None),
        sched_d=SimpleNamespace(step=lambda: None),
        opt_g=SimpleNamespace(param_groups=[{"lr": 0.5}]),
    )
    cfg = TrainConfig(epochs=2, log_every=2, device="cpu")
    run = Run(config=cfg, trainer=trainer, run_dir=tmp_path, split={}, n_batches=3)
    recorder = _Recorder()
    batches = iter([{"ct": torch.zeros(2, 1, 4, 4)}] * 6)
    fit(run, batches, [recorder, StepLog(), LossLog()])
    assert recorder.calls == [
        "fit_start",
        ("epoch_start", 0), "step", ("log", 0, 1, [2.0] * 3), "step", ("log", 0, 2, [3.0] * 3),
        "step", ("epoch_end", 1, True),
        ("epoch_start", 1), "step", ("log", 1, 1, [5.0] * 3), "step", ("log", 1, 2, [6.0] * 3),
        "step", ("epoch_end", 2, True),
        "fit_end",
    ]  # fmt: skip
    assert [(r["epoch"], r["gan"], r["G"], r["D"], r["lr"]) for r in run.history] == [
        (1, 2.0, 2.0, 2.0, 0.5),
        (2, 5.0, 5.0, 5.0, 0.5),
    ]
    assert [(r["epoch"], r["step"], r["gan"]) for r in _csv(tmp_path / "steps.csv")] == [
        ("1", "2", "2"), ("1", "3", "3"), ("2", "2", "5"), ("2", "3", "6"),
    ]  # fmt: skip
    assert json.loads((tmp_path / "losses.json").read_text()) == run.history
    assert [r["G"] for r in _csv(tmp_path / "losses.csv")] == ["2.0", "5.0"]


def test_config_validation():
    with pytest.raises(InputError, match="variant must be one of 'mod-cyclegan'"):
        TrainConfig(variant="gan")
    with pytest.raises(InputError, match="decay_start must be below epochs"):
        TrainConfig(epochs=5, decay_start=5)
    with pytest.raises(InputError, match="epochs must be an integer >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(InputError, match=r"n_layers must be an integer in 1\.\.8, got 9"):
        TrainConfig(discriminator=DiscriminatorConfig(n_layers=9))
    with pytest.raises(InputError, match="generator.kind must be 'unet' for the variant pix2pix"):
        TrainConfig(variant="pix2pix", generator=GeneratorConfig(ngf=8))
    with pytest.raises(InputError, match=r"generator.in_channels must be input.channels \(3\)"):
        TrainConfig(generator=GeneratorConfig(in_channels=1), input=InputNormalization())
    with pytest.raises(
        InputError, match="input.invert must be True for the variant cyclegan-invct"
    ):
        TrainConfig(variant="cyclegan-invct", input=InputNormalization(low=0, high=50000))
    # the flat settings, as the command line and configs written before the nesting name them
    with pytest.raises(InputError, match="ct_channels must be 1 or 3"):
        TrainConfig.from_dict({"ct_channels": 2})
    with pytest.raises(InputError, match=r"disc_layers must be an integer in 1\.\.8, got 9"):
        TrainConfig.from_dict({"disc_layers": 9})
    with pytest.raises(InputError, match="unet_depth must be an integer in 2..12, got 1"):
        TrainConfig.from_dict({"unet_depth": 1})
    with pytest.raises(
        InputError, match="flat settings \\['ngf'\\] and the nested \\['generator'\\]"
    ):
        TrainConfig.from_dict({"ngf": 8, "generator": GeneratorConfig().to_dict()})
    cfg = TrainConfig(
        variant="pix2pix", patch_size=64, generator=generator_for("pix2pix", ngf=8, patch_size=64)
    )
    assert cfg.generator.depth == 6 and cfg.generator.kind.value == "unet"
    assert cfg == TrainConfig.from_dict({"variant": "pix2pix", "patch_size": 64, "ngf": 8})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InputError, match="unknown field"):
        TrainConfig.from_dict({"nope": 1})
    with pytest.raises(InputError, match="CUDA is not available"):
        from vstain_dask.runtime import resolve_device

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        resolve_device("cuda")


#: ``TrainConfig(epochs=1, patches_per_pair=1, **TINY).to_dict()`` as configs were written
#: before the generator, discriminator and input settings were nested
FLAT_TINY = {
    "variant": "mod-cyclegan", "epochs": 1, "batch_size": 4, "patch_size": 32,
    "patches_per_pair": 1, "workers": 0, "device": "cpu", "seed": 0, "lr": 0.0002,
    "betas": [0.5, 0.999], "decay_start": None, "ngf": 4, "n_blocks": 1, "ndf": 4,
    "disc_layers": 2, "unet_depth": None, "ct_channels": 3, "buffer_size": 50, "weights": None,
    "augment": {"scale": [0.9, 1.1], "flips": True, "rotate90": False, "ct_brightness": 0.1,
                "ct_contrast": 0.1, "histology_brightness": 0.1, "histology_contrast": 0.1},
    "cache": False, "autocast": None, "channels_last": None, "folds": 1, "fold": None,
    "test_fraction": None, "val_every": 0, "log_every": 10, "histology_normalization": True,
    "mask_l1": True, "ct_low": 0.0, "ct_high": 50000.0,
}  # fmt: skip


def test_a_resumed_run_keeps_its_epochs_and_l1_normalization_unless_given(tmp_path):
    from vstain_dask.train.config import resumed_settings

    unset = {"epochs": None, "l1_normalization": None, "ngf": 8}
    assert resumed_settings(tmp_path / "none", unset) == unset  # no run: the resume says so
    # one run, and all folds of a cross-validation (their first fold's config)
    for config in (tmp_path / "run" / "config.json", tmp_path / "cv" / "fold0" / "config.json"):
        config.parent.mkdir(parents=True)
        config.write_text(json.dumps({"config": FLAT_TINY}))  # written before the setting
        run = tmp_path / config.relative_to(tmp_path).parts[0]
        assert resumed_settings(run, unset) == {"epochs": 1, "l1_normalization": "mask", "ngf": 8}
        given = {"epochs": 3, "l1_normalization": "pixels"}
        assert resumed_settings(run, given) == given


def test_a_flat_config_written_before_the_nesting_loads_to_the_same_config():
    cfg = TrainConfig.from_dict(FLAT_TINY)
    # written before the L1 normalization was a setting: what it computed then
    assert cfg == TrainConfig(epochs=1, patches_per_pair=1, l1_normalization="mask", **TINY)
    assert TrainConfig(epochs=1).l1_normalization.value == "pixels"  # the paper's, now
    assert TrainConfig().epochs == 500  # the paper's
    assert cfg.differences(FLAT_TINY) == {}
    assert (cfg.generator.ngf, cfg.generator.n_blocks, cfg.discriminator.n_layers) == (4, 1, 2)
    assert (cfg.input.low, cfg.input.high, cfg.input.channels) == (0.0, 50000.0, 3)
    # the U-Net's depth follows the patch size; one CT channel reaches generator and input;
    # the variant on inverted CT inverts the input
    pix2pix = TrainConfig.from_dict({**FLAT_TINY, "variant": "pix2pix", "ct_channels": 1})
    assert (pix2pix.generator.kind.value, pix2pix.generator.depth) == ("unet", 5)
    assert pix2pix.generator.in_channels == pix2pix.input.channels == 1
    assert TrainConfig.from_dict({**FLAT_TINY, "variant": "cyclegan-invct"}).input.invert
    # the variant's generator with the same sizes
    assert cfg.with_variant("pix2pix") == TrainConfig.from_dict({**FLAT_TINY,
                                                                 "variant": "pix2pix"})  # fmt: skip
    assert cfg.with_variant("cyclegan-invct").with_variant("mod-cyclegan") == cfg


_CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu,
           pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)  # fmt: skip


@pytest.mark.parametrize("device", ["cpu", _CUDA])
def test_bf16_channels_last_path_learns(toy, held_out, tmp_path, device):
    """The precision path CUDA takes by default (bf16 autocast, channels-last): the steps stay
    finite, the stain is learnt, the model card says how it was trained.

    CI has no GPU, so the CPU run, with both asked for, is where the mixed-precision training
    itself is checked; on CUDA they are the defaults.
    """
    precision = {"autocast": True, "channels_last": True} if device == "cpu" else {}
    cfg = TrainConfig(variant="mod-cyclegan", seed=1, **LEARN,
                      **{**TINY, "device": device, **precision})  # fmt: skip
    r = train(toy, tmp_path / "run", cfg, progress=False)
    assert all(math.isfinite(row[k]) for row in r.history for k in ("G", "D", "pixel"))
    _assert_stain_learnt(r.model, cfg, held_out)
    model = load_model(r.model)
    meta = model.card["training"]
    assert meta["autocast_bf16"] is True and meta["channels_last"] is True
    # the saved weights are float32 whatever the step ran in
    assert {p.dtype for p in model.generator.parameters()} == {torch.float32}


def _toy_batch(rng, n=4, size=(32, 32)):
    """A training batch of toy pairs, as the patch loader delivers it (network units)."""
    planes = [toy_plane(rng, size) for _ in range(n)]
    ct = np.stack([c for c, _ in planes]) / 25000.0 - 1.0  # CT_INPUT_LOW 0, CT_INPUT_HIGH 50000
    rgb = np.stack([np.where(b[..., None], BONE_RGB, BACKGROUND_RGB) for _, b in planes])
    return {
        "ct": torch.tensor(ct[:, None], dtype=torch.float32),
        "histology": torch.tensor(rgb.transpose(0, 3, 1, 2) / 127.5 - 1.0, dtype=torch.float32),
        "mask": torch.ones((n, 1, *size)),
    }


@pytest.mark.parametrize("device", ["cpu", _CUDA])
@pytest.mark.parametrize("seed", [1, 2])
def test_one_bf16_channels_last_step_agrees_with_float32(device, seed):
    """One step of the mod-CycleGAN (both generators, then both discriminators) under bf16
    autocast with channels-last memory, against the same step in float32 from the same weights
    and batch.

    bf16 keeps 8 bits of mantissa (relative rounding 2^-8, 0.4 %): the losses, means over the
    batch, agree to 1 % (measured over seeds 1-10: 0.15 % at most); each network's gradient
    points the same way (cosine >= 0.85; measured: 0.94 at least); and the weights Adam moves
    by a gradient clearly above its noise (larger than the network's RMS gradient) move the
    same way (>= 95 % of them; measured: 98 % at least). Adam's first step moves every weight
    by about ``lr`` in the direction of its gradient's sign, so the updated weights agree
    where the gradients' signs do.
    """
    batch = _toy_batch(np.random.default_rng(seed))
    runs = {}
    for name, precision in (("float32", dict(autocast=False, channels_last=False)),
                            ("bf16", dict(autocast=True, channels_last=True))):  # fmt: skip
        cfg = TrainConfig(variant="mod-cyclegan", seed=seed, lr=2e-3,
                          **{**TINY, "device": device, **precision})  # fmt: skip
        trainer = _Trainer(cfg, torch.device(device))
        nets = trainer.nets
        before = {
            role: [p.detach().clone() for p in net.parameters()] for role, net in nets.items()
        }
        losses = trainer.step(batch)
        # after the step each parameter's .grad holds the gradient the step used
        grads = {role: torch.cat([p.grad.flatten() for p in net.parameters()])
                 for role, net in nets.items()}  # fmt: skip
        moves = {role: torch.cat([(p.detach() - q).flatten() for p, q in
                                  zip(net.parameters(), before[role], strict=True)])
                 for role, net in nets.items()}  # fmt: skip
        runs[name] = (losses.double().cpu(), grads, moves, trainer.components)
    (l32, g32, m32, names), (l16, g16, m16, _) = runs["float32"], runs["bf16"]
    assert torch.isfinite(l16).all()
    torch.testing.assert_close(l16, l32, rtol=1e-2, atol=1e-4, msg=lambda m: f"{names}: {m}")
    for role in g32:
        cosine = torch.nn.functional.cosine_similarity(g32[role], g16[role], dim=0).item()
        assert cosine >= 0.85, (role, cosine)
        clear = g32[role].abs() > g32[role].pow(2).mean().sqrt()
        same = (torch.sign(m16[role][clear]) == torch.sign(m32[role][clear])).double().mean()
        assert same >= 0.95, (role, float(same), int(clear.sum()))
        assert (m32[role][clear] != 0).all()  # the step moved them
