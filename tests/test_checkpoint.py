"""Model files: round trips, model cards, training checkpoints and every damaged-file case."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import reference_nets as ref
import torch

from vstain_dask.errors import CheckpointError, InputError, OutputExistsError
from vstain_dask.models import (
    DiscriminatorConfig,
    GeneratorConfig,
    InputNormalization,
    LossWeights,
    StainModel,
    Variant,
    build_generator,
    build_networks,
    card_path,
    load_model,
    load_training_checkpoint,
    model_info,
    network_input,
    output_to_uint8,
    read_card,
    save_model,
    save_training_checkpoint,
)
from vstain_dask.models.checkpoint import FORMAT_VERSION, _content_hash

SMALL = GeneratorConfig(ngf=8, n_blocks=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the test machine has two cores shared by several runs; one thread is faster here
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def generator():
    return build_generator(SMALL, seed=3)


@pytest.fixture
def model_file(tmp_path, generator) -> pathlib.Path:
    return save_model(
        tmp_path / "model.pt",
        generator=generator,
        normalization=InputNormalization(low=1000.0, high=50000.0),
        variant="mod-cyclegan",
        training={"epochs": 200, "batch_size": 4, "lr": 2e-4, "loss_weights": LossWeights()},
        seed=42,
        split={"train": ["p1", "p2"], "val": ["p3"], "test": ["p4"]},
        metrics={"ssim": 0.81, "psnr": 21.5},
        hardware={"gpu": "test GPU"},
        command="vstain-dask train pairs.zarr -o model.pt",
    )


def _x(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- round trip ----------------------------------------------------------------------------


def test_round_trip_gives_bit_identical_outputs(model_file, generator):
    model = load_model(model_file)
    assert isinstance(model, StainModel)
    x = _x(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.generator(x), generator.eval()(x))
        assert torch.equal(model.generator(x[:, :, :10, :14]), generator(x[:, :, :10, :14]))
    assert not model.generator.training
    assert not any(p.requires_grad for p in model.generator.parameters())
    assert model.variant is Variant.MOD_CYCLEGAN
    assert model.config == SMALL
    assert model.normalization == InputNormalization(low=1000.0, high=50000.0)
    assert len(model.sha256) == 64 and model.sha256 == load_model(model_file).sha256
    assert model.card["seed"] == 42 and model.card["metrics"]["ssim"] == 0.81
    assert model.card["parameters"]["generator"] == 50_947


def test_file_holds_only_plain_data(model_file):
    doc = torch.load(model_file, weights_only=True)
    assert doc["format"] == "vstain-dask-model" and doc["format_version"] == FORMAT_VERSION
    meta = doc["meta"]
    assert meta["architectures"]["generator"]["type"] == "generator"
    assert meta["output"] == {
        "channels": ["R", "G", "B"],
        "range": [-1.0, 1.0],
        "to_uint8": "round((y + 1) * 127.5)",
    }
    assert meta["training"]["loss_weights"]["cycle"] == 6.0
    assert {"vstain-dask", "torch", "python", "numpy"} <= set(meta["software"])
    assert set(doc["state_dicts"]) == {"generator"}


def test_card_is_written_beside_the_model(model_file):
    card = card_path(model_file)
    assert card == model_file.with_suffix(".md") and card.exists()
    text = card.read_text()
    for heading in (
        "## Architecture",
        "## Input and output",
        "## Training hyperparameters",
        "## Data and split",
        "## Evaluation metrics",
        "## Reproducibility",
    ):
        assert heading in text
    assert "50,947 parameters" in text and "2 residual blocks" in text
    assert "| psnr | 21.5 |" in text and "Seed: 42" in text
    assert "`vstain-dask train pairs.zarr -o model.pt`" in text
    assert "clip(2 * (v - 1000) / (50000 - 1000) - 1, -1, 1)" in text
    assert read_card(model_file) == text


def test_model_info_reads_metadata_without_weights(model_file):
    info = model_info(model_file)
    assert info["variant"] == "mod-cyclegan"
    assert info["parameters"] == {"generator": 50_947}
    assert info["file_size"] == model_file.stat().st_size
    assert model_info(model_file, verify=True)["sha256"] == info["sha256"]


def test_existing_output_is_not_overwritten(model_file, generator):
    kwargs = {"generator": generator, "normalization": InputNormalization(), "variant": "cyclegan"}
    with pytest.raises(OutputExistsError, match="overwrite"):
        save_model(model_file, **kwargs)
    save_model(model_file, overwrite=True, **kwargs)
    assert load_model(model_file).variant is Variant.CYCLEGAN


def test_save_validates_its_inputs(tmp_path, generator):
    norm = InputNormalization()
    with pytest.raises(InputError, match="variant must be one of 'mod-cyclegan', 'cyclegan'"):
        save_model(tmp_path / "a.pt", generator=generator, normalization=norm, variant="gan")
    with pytest.raises(InputError, match=r"normalization.channels \(1\) must equal"):
        save_model(
            tmp_path / "a.pt",
            generator=generator,
            normalization=InputNormalization(channels=1),
            variant="cyclegan",
        )
    with pytest.raises(InputError, match="differs from the network's own config"):
        save_model(
            tmp_path / "a.pt",
            generator=generator,
            config=GeneratorConfig(),
            normalization=norm,
            variant="cyclegan",
        )
    with pytest.raises(InputError, match=r"metrics\['ssim'\] must hold only"):
        save_model(
            tmp_path / "a.pt",
            generator=generator,
            normalization=norm,
            variant="cyclegan",
            metrics={"ssim": object()},
        )
    assert not list(tmp_path.iterdir())


def test_a_foreign_module_is_saved_with_an_explicit_config(tmp_path):
    theirs = ref.ResnetGenerator(3, 3, 8, ref.get_norm_layer("instance"), False, 2)
    with pytest.raises(InputError, match="has no vstain-dask config"):
        save_model(
            tmp_path / "a.pt",
            generator=theirs,
            normalization=InputNormalization(),
            variant="cyclegan",
        )
    with pytest.raises(InputError, match="do not match its architecture"):
        save_model(
            tmp_path / "a.pt",
            generator=theirs,
            config=GeneratorConfig(ngf=8, n_blocks=2, upsample="transpose"),
            normalization=InputNormalization(),
            variant="cyclegan",
        )


# --- input and output mapping --------------------------------------------------------------


def test_to_input_follows_the_normalization_formula(model_file):
    model = load_model(model_file)
    ct = np.array([[0, 1000, 25500], [50000, 65535, 30000]], dtype=np.uint16)
    x = model.to_input(ct)
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    expected = np.clip(2 * (ct.astype(np.float64) - 1000) / 49000 - 1, -1, 1)
    np.testing.assert_allclose(x[0, 0].numpy(), expected, rtol=0, atol=1e-6)
    assert torch.equal(x[0, 0], x[0, 2])
    stack = model.to_input(np.stack([ct, ct]))
    assert stack.shape == (2, 3, 2, 3)
    inverted = network_input(
        torch.tensor(ct.astype(np.int32)), InputNormalization(invert=True, channels=1)
    )
    assert inverted.shape == (1, 1, 2, 3)
    assert float(inverted[0, 0, 0, 0]) == 1.0 and float(inverted[0, 0, 1, 1]) == -1.0
    with pytest.raises(InputError, match=r"ct must be \(H, W\)"):
        model.to_input(np.zeros((1, 2, 3, 4, 5)))


def test_predict_maps_tanh_to_uint8(model_file):
    model = load_model(model_file)
    ct = np.random.default_rng(0).integers(0, 65535, size=(2, 10, 14), dtype=np.uint16)
    rgb = model.predict(ct)
    assert rgb.shape == (2, 3, 10, 14) and rgb.dtype == np.uint8
    with torch.no_grad():
        y = model.generator(model.to_input(ct))
    np.testing.assert_array_equal(rgb, np.round((y.numpy() + 1) * 127.5).astype(np.uint8))
    y = torch.tensor([-1.0, -0.5, 0.0, 1.0])
    assert output_to_uint8(y).tolist() == [0, 64, 128, 255]


# --- training checkpoints ------------------------------------------------------------------


def _training_run(tmp_path):
    nets = build_networks(
        "mod-cyclegan",
        generator=SMALL,
        discriminator=DiscriminatorConfig(ndf=4),
        seed=0,
    )
    params = [p for role in ("generator", "inverse_generator") for p in nets[role].parameters()]
    opt = torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))
    loss = (
        nets["generator"](_x(1, 3, 32, 32)).mean()
        + nets["inverse_generator"](_x(1, 3, 32, 32)).mean()
    )
    loss.backward()
    opt.step()
    extra = {"optimizer_g": opt.state_dict(), "epoch": 3, "rng": torch.get_rng_state()}
    path = save_training_checkpoint(
        tmp_path / "train.pt",
        networks=nets,
        normalization=InputNormalization(),
        variant="mod-cyclegan",
        extra=extra,
        training={"epochs": 200},
        seed=0,
    )
    return path, nets, opt


def test_training_checkpoint_holds_all_networks_and_trainer_state(tmp_path):
    path, nets, opt = _training_run(tmp_path)
    ckpt = load_training_checkpoint(path)
    assert set(ckpt.networks) == set(nets)
    for role, net in nets.items():
        for (k, a), b in zip(
            net.state_dict().items(), ckpt.networks[role].state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), (role, k)
    assert ckpt.extra["epoch"] == 3
    fresh = torch.optim.Adam(
        [
            p
            for role in ("generator", "inverse_generator")
            for p in ckpt.networks[role].parameters()
        ],
        lr=2e-4,
        betas=(0.5, 0.999),
    )
    fresh.load_state_dict(ckpt.extra["optimizer_g"])
    assert fresh.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    # the generator of a training checkpoint loads as a model too
    model = load_model(path)
    x = _x(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.generator(x), nets["generator"].eval()(x))
    assert "training checkpoint" in card_path(path).read_text()


def test_a_model_file_is_not_a_training_checkpoint(model_file):
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_training_checkpoint(model_file)


def test_extra_refuses_what_cannot_be_loaded_safely(tmp_path):
    nets = build_networks("pix2pix", generator=GeneratorConfig(kind="unet", ngf=2, depth=5))
    with pytest.raises(InputError, match=r"extra\['rng'\] is a numpy array"):
        save_training_checkpoint(
            tmp_path / "t.pt",
            networks=nets,
            normalization=InputNormalization(),
            variant="pix2pix",
            extra={"rng": np.zeros(3)},
        )


# --- damaged and wrong files ---------------------------------------------------------------


def _rewrite(path: pathlib.Path, edit) -> None:
    """Change a model file's content and store a matching hash, as another writer could."""
    doc = torch.load(path, weights_only=True)
    edit(doc)
    doc["sha256"] = _content_hash(doc["meta"], doc["state_dicts"], doc.get("extra") or {})
    torch.save(doc, path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_model(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="is not a file"):
        load_model(tmp_path)


def test_a_text_file_is_not_a_model(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="is not a PyTorch model file"):
        load_model(path)
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="is not a PyTorch model file"):
        load_model(tmp_path / "array.npy")


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_a_truncated_file(model_file, keep):
    data = model_file.read_bytes()
    model_file.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="is truncated or damaged"):
        load_model(model_file)


def test_a_flipped_weight_byte_is_a_checksum_mismatch(model_file, generator):
    data = bytearray(model_file.read_bytes())
    weights = generator.state_dict()["blocks.0.body.conv1.weight"].numpy().tobytes()
    at = data.find(weights[:256])
    assert at > 0
    data[at + 100] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_model(model_file)
    # the cheap reader does not read the weights; asked to verify, it does
    model_info(model_file)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        model_info(model_file, verify=True)


def test_edited_metadata_is_a_checksum_mismatch(model_file):
    doc = torch.load(model_file, weights_only=True)
    doc["meta"]["normalization"]["high"] = 40000.0
    torch.save(doc, model_file)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_model(model_file)


def test_a_bare_state_dict_points_to_model_import(tmp_path):
    path = tmp_path / "G_AB_200.pth"
    torch.save(ref.GeneratorResNet((3, 64, 64), 2, features=8).state_dict(), path)
    with pytest.raises(CheckpointError, match="bare state dict") as err:
        load_model(path)
    assert "vstain-dask model import G_AB_200.pth --from pytorch-gan" in str(err.value)
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(
        ref.ResnetGenerator(3, 3, 8, ref.get_norm_layer("instance"), False, 1).state_dict(), path
    )
    with pytest.raises(CheckpointError, match="--from cyclegan-pix2pix"):
        load_model(path)


def test_other_torch_files(tmp_path):
    torch.save({"epoch": 3, "weights": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a vstain-dask model file"):
        load_model(tmp_path / "other.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_model(tmp_path / "list.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_model(tmp_path / "module.pt")


def test_a_newer_format_version(model_file):
    doc = torch.load(model_file, weights_only=True)
    doc["format_version"] = FORMAT_VERSION + 1
    torch.save(doc, model_file)
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1}, newer"):
        load_model(model_file)


def test_missing_top_level_and_metadata_keys(model_file):
    doc = torch.load(model_file, weights_only=True)
    del doc["sha256"]
    torch.save(doc, model_file)
    with pytest.raises(CheckpointError, match=r"lacks the key\(s\) \['sha256'\]"):
        load_model(model_file)
    doc["sha256"] = "0" * 64
    del doc["meta"]["normalization"]
    torch.save(doc, model_file)
    with pytest.raises(CheckpointError, match=r"metadata lacks the key\(s\) \['normalization'\]"):
        load_model(model_file)


def test_missing_and_unexpected_weights(model_file):
    _rewrite(model_file, lambda d: d["state_dicts"]["generator"].pop("head.conv.bias"))
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\) \['head.conv.bias'\]"):
        load_model(model_file)

    def add(doc):
        doc["state_dicts"]["generator"]["head.conv.bias"] = torch.zeros(3)
        doc["state_dicts"]["generator"]["extra.weight"] = torch.zeros(3)

    _rewrite(model_file, add)
    with pytest.raises(CheckpointError, match=r"unexpected 1 key\(s\) \['extra.weight'\]"):
        load_model(model_file)


def test_wrong_weight_shapes(model_file):
    def one_channel(doc):
        doc["meta"]["architectures"]["generator"]["in_channels"] = 1

    _rewrite(model_file, one_channel)
    with pytest.raises(
        CheckpointError,
        match=r"'stem.conv.weight' of 'generator' has shape \(8, 3, 7, 7\) but the architecture needs \(8, 1, 7, 7\)",
    ):
        load_model(model_file)


def test_invalid_architecture_and_normalization(model_file):
    _rewrite(model_file, lambda d: d["meta"]["architectures"]["generator"].update(kind="vae"))
    with pytest.raises(
        CheckpointError,
        match="architecture of 'generator' is invalid: kind must be one of 'resnet', 'unet'",
    ):
        load_model(model_file)
    _rewrite(model_file, lambda d: d["meta"]["architectures"]["generator"].update(kind="resnet"))
    _rewrite(model_file, lambda d: d["meta"]["normalization"].update(high=-1.0))
    with pytest.raises(
        CheckpointError, match="input normalization is invalid: high must be greater"
    ):
        load_model(model_file)


def test_bad_device_names_the_parameter(model_file):
    with pytest.raises(InputError, match="device must be a torch device"):
        load_model(model_file, device="gpu-please")


def test_wrapped_modules_are_saved_under_plain_names(tmp_path, generator):
    # (torch.compile's wrapper is unwrapped the same way; importing the compiler takes ~10 s)
    for wrapped in (torch.nn.DataParallel(generator),):
        path = save_model(
            tmp_path / "w.pt",
            generator=wrapped,
            normalization=InputNormalization(),
            variant="cyclegan",
            overwrite=True,
        )
        keys = list(torch.load(path, weights_only=True)["state_dicts"]["generator"])
        assert keys == list(generator.state_dict())
