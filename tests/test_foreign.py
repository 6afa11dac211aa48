"""Importing PyTorch-GAN and pytorch-CycleGAN-and-pix2pix generator checkpoints.

The "original" networks are the reconstructions in ``reference_nets``; a checkpoint saved from
one, imported, must reproduce its output on the same input.
"""

from __future__ import annotations

import pytest
import reference_nets as ref
import torch

from vstain_dask.errors import CheckpointError, InputError
from vstain_dask.models import (
    GeneratorConfig,
    InputNormalization,
    Variant,
    build_generator,
    convert_state_dict,
    import_checkpoint,
    load_model,
    read_card,
    save_model,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the test machine has two cores shared by several runs; one thread is faster here
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _trained_like(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights with non-zero biases and batch-norm statistics, as training leaves them."""
    torch.manual_seed(seed)
    ref.init_weights(net)
    with torch.no_grad():
        for m in net.modules():
            bias = getattr(m, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.normal_(0.0, 0.05)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _x(channels: int, h: int = 64, w: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.rand(2, channels, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _assert_identical(got: torch.Tensor, expected: torch.Tensor) -> None:
    # the imported network runs the original's operations in the original's order on the same
    # weights, so on the same machine its output is the original's, bit for bit
    assert got.shape == expected.shape and got.dtype == expected.dtype
    diff = (got - expected).abs().max().item()
    assert torch.equal(got, expected), f"not bit-identical: largest difference {diff:g}"


CASES = {
    "pytorch-gan-rgb": (
        "pytorch-gan",
        lambda: ref.GeneratorResNet((3, 256, 256), 2, features=8),
        3,
        Variant.MOD_CYCLEGAN,
    ),
    "junyanz-resnet": (
        "cyclegan-pix2pix",
        lambda: ref.ResnetGenerator(3, 3, 8, ref.get_norm_layer("instance"), False, 2),
        3,
        Variant.CYCLEGAN,
    ),
    "junyanz-resnet-greyscale-in": (
        "cyclegan-pix2pix",
        lambda: ref.ResnetGenerator(1, 3, 8, ref.get_norm_layer("instance"), False, 3),
        1,
        Variant.CYCLEGAN,
    ),
    "junyanz-resnet-batchnorm-dropout": (
        "cyclegan-pix2pix",
        lambda: ref.ResnetGenerator(3, 3, 8, ref.get_norm_layer("batch"), True, 2),
        3,
        Variant.CYCLEGAN,
    ),
    "junyanz-unet": (
        "cyclegan-pix2pix",
        lambda: ref.UnetGenerator(3, 3, 6, 4, ref.get_norm_layer("instance"), True),
        3,
        Variant.PIX2PIX,
    ),
    "junyanz-unet-batchnorm": (
        "cyclegan-pix2pix",
        lambda: ref.UnetGenerator(1, 3, 7, 4, ref.get_norm_layer("batch"), True),
        1,
        Variant.PIX2PIX,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_imported_model_reproduces_the_original(tmp_path, case):
    source, build, channels, variant = CASES[case]
    original = _trained_like(build())
    weights = tmp_path / "weights.pth"
    torch.save(original.state_dict(), weights)
    out = import_checkpoint(weights, tmp_path / "model.pt", source=source)
    model = load_model(out)
    assert model.variant is variant
    assert model.normalization == InputNormalization(channels=channels)
    n_original = sum(p.numel() for p in original.parameters())
    assert model.card["parameters"]["generator"] == n_original
    x = _x(channels, 128, 128)
    with torch.no_grad():
        expected = original(x.clone())
        _assert_identical(model.generator(x.clone()), expected)
    # and it still handles sizes the original could not
    assert model.predict(torch.rand(1, 10, 14) * 65535).shape == (1, 3, 10, 14)


def test_paper_size_pytorch_gan_checkpoint_on_a_256_tile(tmp_path):
    original = _trained_like(ref.GeneratorResNet((3, 256, 256), 9))
    torch.save(original.state_dict(), tmp_path / "G_AB_200.pth")
    model = load_model(
        import_checkpoint(tmp_path / "G_AB_200.pth", tmp_path / "paper.pt", source="pytorch-gan")
    )
    assert model.config == GeneratorConfig()  # the paper's architecture, read from the tensors
    assert model.card["parameters"]["generator"] == 11_378_179
    x = _x(3, 256, 256)[:1]
    with torch.no_grad():
        _assert_identical(model.generator(x), original(x.clone()))


def test_pytorch_gan_greyscale_model_keeps_its_padding_quirk(tmp_path):
    # trained with --channels 1: the outer reflection pads are 1, not 3
    original = _trained_like(ref.GeneratorResNet((1, 64, 64), 2, features=8))
    torch.save(original.state_dict(), tmp_path / "G_AB_5.pth")
    out = import_checkpoint(tmp_path / "G_AB_5.pth", tmp_path / "m.pt", source="pytorch-gan")
    model = load_model(out)
    assert model.config.outer_pad == 1 and model.config.in_channels == 1
    x = _x(1, 64, 64)
    with torch.no_grad():
        expected = original(x.clone())
        assert expected.shape == (2, 1, 56, 56)  # the original loses 4 pixels per side
        _assert_identical(model.generator.forward_raw(x), expected)
        assert model.generator(x).shape == (2, 1, 64, 64)
    assert "outer pad 1" in read_card(out)


def test_old_instance_norm_running_stats_are_dropped(tmp_path):
    # early versions of the reference code saved running statistics for instance norm; its
    # loader drops them and normalizes each image by its own statistics
    old_norm = ref.get_norm_layer("instance", track_running_stats=True)
    old = _trained_like(ref.ResnetGenerator(3, 3, 8, old_norm, False, 2))
    state = old.state_dict()
    # 9 norm layers (stem, 2 down, 2 per block, 2 up) x (running_mean, running_var, count)
    assert sum("running" in k or "num_batches" in k for k in state) == 27
    torch.save(state, tmp_path / "latest_net_G_A.pth")
    out = import_checkpoint(
        tmp_path / "latest_net_G_A.pth", tmp_path / "m.pt", source="cyclegan-pix2pix"
    )
    current = ref.ResnetGenerator(3, 3, 8, ref.get_norm_layer("instance"), False, 2)
    current.load_state_dict(
        {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}
    )
    x = _x(3)
    with torch.no_grad():
        _assert_identical(load_model(out).generator(x), current.eval()(x))
    assert "dropped 27 instance-norm running statistics" in read_card(out)


def test_data_parallel_prefix_is_stripped():
    state = ref.GeneratorResNet((3, 64, 64), 1, features=4).state_dict()
    config, converted, _ = convert_state_dict(
        {f"module.{k}": v for k, v in state.items()}, source="pytorch-gan"
    )
    assert config.n_blocks == 1 and config.ngf == 4
    build_generator(config).load_state_dict(converted)


def test_import_records_normalization_variant_and_source(tmp_path):
    torch.save(ref.GeneratorResNet((3, 64, 64), 1, features=4).state_dict(), tmp_path / "G.pth")
    out = import_checkpoint(
        tmp_path / "G.pth",
        tmp_path / "m.pt",
        source="pytorch-gan",
        normalization={"low": 100.0, "high": 60000.0, "invert": True},
        variant="cyclegan-invct",
    )
    model = load_model(out)
    assert model.normalization == InputNormalization(low=100.0, high=60000.0, invert=True)
    assert model.variant is Variant.CYCLEGAN_INVCT
    source = model.card["source"]
    assert source["format"] == "pytorch-gan" and source["file"] == "G.pth"
    assert len(source["file_sha256"]) == 64
    with pytest.raises(InputError, match="pass --channels 3"):
        import_checkpoint(
            tmp_path / "G.pth",
            tmp_path / "m2.pt",
            source="pytorch-gan",
            normalization=InputNormalization(channels=1),
        )


# --- wrong weights -------------------------------------------------------------------------


def test_wrong_format_names_the_right_one():
    junyanz = ref.ResnetGenerator(3, 3, 8, ref.get_norm_layer("instance"), False, 1).state_dict()
    with pytest.raises(CheckpointError, match="import them with --from cyclegan-pix2pix"):
        convert_state_dict(junyanz, source="pytorch-gan")
    pg = ref.GeneratorResNet((3, 64, 64), 1, features=4).state_dict()
    with pytest.raises(CheckpointError, match="use --from pytorch-gan"):
        convert_state_dict(pg, source="cyclegan-pix2pix")
    with pytest.raises(InputError, match="source must be one of 'pytorch-gan', 'cyclegan-pix2pix'"):
        convert_state_dict(pg, source="keras")


def test_missing_unexpected_and_misshapen_weights():
    state = ref.GeneratorResNet((3, 64, 64), 2, features=4).state_dict()
    broken = dict(state)
    del broken["model.10.block.5.bias"]
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\) \['model.10.block.5.bias'\]"):
        convert_state_dict(broken, source="pytorch-gan")
    extra = dict(state, **{"model.2.running_mean": torch.zeros(4), "aux.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected 1 key\(s\) \['aux.weight'\]"):
        convert_state_dict(extra, source="pytorch-gan")
    misshapen = dict(state)
    misshapen["model.4.weight"] = torch.zeros(8, 4, 5, 5)
    with pytest.raises(
        CheckpointError, match=r"'down.0.conv.weight' of 'generator' has shape \(8, 4, 5, 5\)"
    ):
        convert_state_dict(misshapen, source="pytorch-gan")
    with pytest.raises(CheckpointError, match="expected the first 7x7 convolution"):
        convert_state_dict({"model.0.weight": torch.zeros(1)}, source="pytorch-gan")


def test_import_refuses_what_is_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        import_checkpoint(tmp_path / "list.pth", tmp_path / "m.pt", source="pytorch-gan")
    torch.save({"epoch": 3, "model.1.weight": torch.zeros(1)}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="1 entries are not tensors"):
        import_checkpoint(tmp_path / "mixed.pth", tmp_path / "m.pt", source="pytorch-gan")
    ours = save_model(
        tmp_path / "ours.pt",
        generator=build_generator(GeneratorConfig(ngf=4, n_blocks=1)),
        normalization=InputNormalization(),
        variant="cyclegan",
    )
    with pytest.raises(CheckpointError, match="already a vstain-dask model"):
        import_checkpoint(ours, tmp_path / "m.pt", source="pytorch-gan")
    (tmp_path / "text.pth").write_text("nope")
    with pytest.raises(CheckpointError, match="not a PyTorch model file"):
        import_checkpoint(tmp_path / "text.pth", tmp_path / "m.pt", source="pytorch-gan")
