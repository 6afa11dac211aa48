"""Generators and discriminators: sizes, gradients, parameter counts, initialization."""

from __future__ import annotations

import itertools
import json
import time

import pytest
import reference_nets as ref
import torch

from vstain_dask.errors import InputError
from vstain_dask.models import (
    DiscriminatorConfig,
    GeneratorConfig,
    PatchDiscriminator,
    ResnetGenerator,
    UnetGenerator,
    build_discriminator,
    build_generator,
    build_networks,
    count_parameters,
    discriminator_receptive_field,
    init_weights,
)
from vstain_dask.models.networks import _pad_plan

SMALL = GeneratorConfig(ngf=8, n_blocks=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the test machine has two cores shared by several runs; one thread is faster here
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _input(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=gen) * 2 - 1


# --- parameter counts against the reference layer definitions ------------------------------
#
# The expected counts are derived here from the layer lists the papers publish, with a
# convolution holding in * out * k * k weights (a transposed one the same) plus ``out`` biases
# when it has them, and an affine norm 2 * channels: independent of both our modules and the
# reference reconstructions, which are then compared with it.


def _conv(c_in: int, c_out: int, k: int, *, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def _resnet_count(*, c_in: int = 3, c_out: int = 3, ngf: int = 64, blocks: int = 9) -> int:
    """c7s1-ngf, d(2 ngf), d(4 ngf), blocks x R(4 ngf), u(2 ngf), u(ngf), c7s1-c_out (Zhu et al.
    2017, appendix 7.2). Instance norm has no affine parameters, so every convolution has a bias.
    """
    return (
        _conv(c_in, ngf, 7)
        + _conv(ngf, 2 * ngf, 3)
        + _conv(2 * ngf, 4 * ngf, 3)
        + blocks * 2 * _conv(4 * ngf, 4 * ngf, 3)  # two 3 x 3 convolutions per residual block
        + _conv(4 * ngf, 2 * ngf, 3)
        + _conv(2 * ngf, ngf, 3)
        + _conv(ngf, c_out, 7)
    )


def _unet_count(norm: str, *, c_in: int = 3, c_out: int = 3, ngf: int = 64, depth: int = 8) -> int:
    """U-Net of Isola et al. 2017, appendix 6.1.1: 4 x 4 convolutions; encoder C64-C128-C256-C512
    -C512...; each decoder level but the innermost takes the skip, doubling its input channels.
    Norm after every convolution but the first and innermost down and the outermost up; with
    batch norm (affine) the normalized convolutions have no bias, the outermost up always has.
    """
    feats = [ngf * min(2**k, 8) for k in range(depth)]
    bias = norm == "instance"

    def normed(c: int) -> int:
        return 2 * c if norm == "batch" else 0

    n = _conv(c_in, feats[0], 4, bias=bias)
    n += sum(_conv(a, b, 4, bias=bias) for a, b in itertools.pairwise(feats))
    n += sum(normed(c) for c in feats[1:-1])
    n += _conv(feats[-1], feats[-2], 4, bias=bias) + normed(feats[-2])  # innermost up
    n += sum(_conv(2 * feats[k], feats[k - 1], 4, bias=bias) + normed(feats[k - 1])
             for k in range(depth - 2, 0, -1))  # fmt: skip
    return n + _conv(2 * feats[0], c_out, 4)


def _patchgan_count(norm: str = "instance", *, c_in: int = 3, ndf: int = 64) -> int:
    """70 x 70 PatchGAN, C64-C128-C256-C512 and a 4 x 4 convolution to one channel (Isola et al.
    2017, appendix 6.1.2); the first and last convolution have a bias and no norm."""
    middle = [(ndf, 2 * ndf), (2 * ndf, 4 * ndf), (4 * ndf, 8 * ndf)]
    if norm == "batch":
        normed = sum(_conv(a, b, 4, bias=False) + 2 * b for a, b in middle)
    else:
        normed = sum(_conv(a, b, 4) for a, b in middle)
    return _conv(c_in, ndf, 4) + normed + _conv(8 * ndf, 1, 4)


def test_parameter_formulas_give_the_sizes_the_reference_code_reports():
    # junyanz/pytorch-CycleGAN-and-pix2pix issue #169 prints the ResNet-9 generator's count;
    # issue #1152 a pix2pix log, "54.408 M" and "2.765 M": U-Net-256 and a PatchGAN with the
    # default batch norm on one-channel images (the discriminator sees CT and stain together)
    assert _resnet_count() == 11378179
    assert f"{_unet_count('batch', c_in=1, c_out=1) / 1e6:.3f} M" == "54.408 M"
    assert f"{_patchgan_count('batch', c_in=2) / 1e6:.3f} M" == "2.765 M"


def test_paper_resnet_generator_has_pytorch_gan_parameter_count():
    ours = build_generator(GeneratorConfig())
    theirs = ref.GeneratorResNet((3, 256, 256), 9)
    assert count_parameters(ours) == count_parameters(theirs) == _resnet_count()


def test_transposed_resnet_generator_has_cyclegan_pix2pix_parameter_count():
    ours = build_generator(GeneratorConfig(upsample="transpose"))
    theirs = ref.ResnetGenerator(3, 3, 64, ref.get_norm_layer("instance"), False, 9)
    assert count_parameters(ours) == count_parameters(theirs) == _resnet_count()


@pytest.mark.parametrize(("c_in", "ngf", "blocks"), [(1, 8, 2), (3, 4, 1), (1, 16, 6)])
def test_resnet_parameter_count_follows_its_size(c_in, ngf, blocks):
    ours = build_generator(GeneratorConfig(in_channels=c_in, ngf=ngf, n_blocks=blocks))
    assert count_parameters(ours) == _resnet_count(c_in=c_in, ngf=ngf, blocks=blocks)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_unet_256_has_pix2pix_parameter_count(norm):
    ours = build_generator(GeneratorConfig.for_variant("pix2pix", norm=norm))
    theirs = ref.UnetGenerator(3, 3, 8, 64, ref.get_norm_layer(norm), True)
    assert count_parameters(ours) == count_parameters(theirs) == _unet_count(norm)


def test_small_unet_parameter_count_follows_its_size():
    ours = build_generator(GeneratorConfig(kind="unet", in_channels=1, ngf=4, depth=5))
    assert count_parameters(ours) == _unet_count("instance", c_in=1, ngf=4, depth=5)


def test_discriminators_have_reference_parameter_counts():
    pg = build_discriminator(DiscriminatorConfig(kind="pytorch-gan"))
    p70 = build_discriminator(DiscriminatorConfig(kind="patchgan-70"))
    assert count_parameters(pg) == count_parameters(ref.Discriminator((3, 256, 256)))
    assert count_parameters(pg) == _patchgan_count()  # the same layers, a padding apart
    n_layer = ref.NLayerDiscriminator(3, 64, 3, ref.get_norm_layer("instance"))
    assert count_parameters(p70) == count_parameters(n_layer) == _patchgan_count()
    pix2pix = ref.NLayerDiscriminator(2, 64, 3, ref.get_norm_layer("batch"))
    assert count_parameters(pix2pix) == _patchgan_count("batch", c_in=2)


# --- shapes and size handling --------------------------------------------------------------


def test_paper_generator_stains_a_256_tile_quickly():
    net = build_generator(GeneratorConfig(), seed=0).eval()
    start = time.perf_counter()
    with torch.no_grad():
        y = net(_input(1, 3, 256, 256))
    assert y.shape == (1, 3, 256, 256)
    assert float(y.abs().max()) <= 1.0
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("hw", [(64, 64), (10, 14), (65, 63), (7, 9), (3, 5), (1, 1), (2, 30)])
@pytest.mark.parametrize("upsample", ["nearest", "transpose"])
def test_resnet_generator_keeps_any_size(hw, upsample):
    net = build_generator(GeneratorConfig(ngf=8, n_blocks=2, upsample=upsample), seed=1).eval()
    with torch.no_grad():
        y = net(_input(2, 3, *hw))
    assert y.shape == (2, 3, *hw)
    assert torch.isfinite(y).all() and float(y.abs().max()) <= 1.0


def test_multiple_of_4_inputs_run_the_bare_network_unchanged():
    net = build_generator(SMALL, seed=1).eval()
    x = _input(1, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(net(x), net.forward_raw(x))


def test_odd_sizes_are_reflect_padded_and_cropped_back():
    net = build_generator(SMALL, seed=1).eval()
    x = _input(1, 3, 10, 14)
    # 10 -> 12 (1 above, 1 below); 14 -> 16 (1 left, 1 right)
    padded = torch.nn.functional.pad(x, [1, 1, 1, 1], mode="reflect")
    with torch.no_grad():
        expected = net.forward_raw(padded)[:, :, 1:11, 1:15]
        assert torch.equal(net(x), expected)


@pytest.mark.parametrize("outer_pad", [0, 1, 2, 4, 8])
def test_pytorch_gan_padding_quirk_keeps_the_output_size(outer_pad):
    config = GeneratorConfig(ngf=8, n_blocks=1, in_channels=1, out_channels=1, outer_pad=outer_pad)
    net = build_generator(config, seed=2).eval()
    with torch.no_grad():
        for hw in [(64, 64), (10, 14), (1, 1)]:
            assert net(_input(1, 1, *hw)).shape == (1, 1, *hw)
        # each outer 7 x 7 convolution grows the bare network's image by 2 * outer_pad - 6
        shift = 2 * outer_pad - 6
        raw = net.forward_raw(_input(1, 1, 64 - shift, 64 - shift))
    assert raw.shape[-1] == 64 + shift


def test_pad_plan_aligns_and_crops_inside_the_output():
    for shift in range(-6, 11, 2):
        for size in range(1, 70):
            before, after, start = _pad_plan(size, shift, 4, 8)
            padded = size + before + after
            assert (padded + shift) % 4 == 0 and padded + shift >= 8
            assert before >= max(0, -shift) and after >= max(0, -shift)
            assert 0 <= start and start + size <= padded + 2 * shift


@pytest.mark.parametrize("hw", [(64, 64), (10, 14), (1, 1), (70, 130)])
def test_unet_keeps_any_size(hw):
    net = build_generator(GeneratorConfig(kind="unet", ngf=4, depth=6), seed=3).eval()
    with torch.no_grad():
        assert net(_input(2, 3, *hw)).shape == (2, 3, *hw)


def test_unet_256_downsamples_eight_times_to_one_pixel():
    net = build_generator(GeneratorConfig.for_variant("pix2pix", ngf=2), seed=4).eval()
    seen = []
    net.encoder[-1].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    with torch.no_grad():
        y = net(_input(1, 3, 256, 256))
    assert len(net.encoder) == 8 and seen == [(1, 16, 1, 1)]
    assert y.shape == (1, 3, 256, 256)
    dropouts = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 3  # the three 512-feature decoder stages below the bottleneck


@pytest.mark.parametrize(
    ("kind", "side", "field"), [("pytorch-gan", 16, 94), ("patchgan-70", 30, 70)]
)
def test_patchgan_output_map_and_receptive_field(kind, side, field):
    # batch norm in eval mode is a per-channel affine map, so gradients stay local and show the
    # receptive field; instance norm would couple every pixel
    config = DiscriminatorConfig(kind=kind, ndf=4, norm="batch")
    net = build_discriminator(config, seed=5).eval()
    x = _input(1, 3, 256, 256).requires_grad_(True)
    scores = net(x)
    assert scores.shape == (1, 1, side, side)
    scores[0, 0, side // 2, side // 2].backward()
    rows = torch.nonzero(x.grad[0].abs().sum(0).sum(1)).flatten()
    assert int(rows.max() - rows.min() + 1) == field == discriminator_receptive_field(config)


@pytest.mark.parametrize("kind", ["pytorch-gan", "patchgan-70"])
def test_discriminators_compute_what_the_references_compute(kind):
    ours = build_discriminator(DiscriminatorConfig(kind=kind), seed=6).eval()
    if kind == "pytorch-gan":
        theirs = ref.Discriminator((3, 64, 64))
    else:
        theirs = ref.NLayerDiscriminator(3, 64, 3, ref.get_norm_layer("instance"))
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert [t.shape for t in ours_sd.values()] == [t.shape for t in theirs_sd.values()]
    theirs.load_state_dict(dict(zip(theirs_sd, ours_sd.values(), strict=True)))
    x = _input(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs.eval()(x), rtol=0, atol=1e-6)


def test_conditional_discriminator_sees_input_and_output():
    net = build_discriminator(DiscriminatorConfig(in_channels=3, condition_channels=1, ndf=4))
    ct, stain = _input(2, 1, 64, 64), _input(2, 3, 64, 64, seed=1)
    assert net(stain, ct).shape == (2, 1, 4, 4)
    expected = net.head(net.blocks(torch.cat([ct, stain], 1)))
    assert torch.equal(net(stain, ct), expected)
    with pytest.raises(InputError, match="condition must be given"):
        net(stain)


# --- gradients and initialization ----------------------------------------------------------


@pytest.mark.parametrize(
    "net",
    [
        pytest.param(lambda: build_generator(SMALL, seed=7), id="resnet"),
        pytest.param(
            lambda: build_generator(GeneratorConfig(kind="unet", ngf=4, depth=5), seed=7),
            id="unet",
        ),
        pytest.param(lambda: build_discriminator(DiscriminatorConfig(ndf=4), seed=7), id="D"),
    ],
)
def test_gradients_reach_every_parameter(net):
    net = net().train()
    out = net(_input(2, 3, 64, 64))
    (out**2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name


def test_initialization_is_normal_0_002_and_seeded():
    net = build_generator(GeneratorConfig(), seed=11).requires_grad_(False)
    weights = torch.cat(
        [m.weight.flatten() for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    )
    assert abs(float(weights.mean())) < 1e-4
    assert float(weights.std()) == pytest.approx(0.02, rel=0.01)
    biases = [m.bias for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(float(b.abs().max()) == 0 for b in biases if b is not None)
    again = build_generator(GeneratorConfig(), seed=11)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters(), strict=True))
    bn = init_weights(torch.nn.BatchNorm2d(4000), seed=1).requires_grad_(False)
    assert float(bn.weight.mean()) == pytest.approx(1.0, abs=2e-3)
    assert float(bn.weight.std()) == pytest.approx(0.02, rel=0.1)


# --- configs and roles ---------------------------------------------------------------------


def test_config_validation_names_field_and_members():
    with pytest.raises(
        InputError, match=r"upsample must be one of 'nearest', 'transpose', got 'x'"
    ):
        GeneratorConfig(upsample="x")
    with pytest.raises(InputError, match="n_blocks must be an integer >= 0, got -1"):
        GeneratorConfig(n_blocks=-1)
    with pytest.raises(InputError, match="unknown field"):
        GeneratorConfig.from_dict({"ngf": 8, "blocks": 3})
    with pytest.raises(InputError, match="kind must be one of 'pytorch-gan', 'patchgan-70'"):
        DiscriminatorConfig(kind="pixel")
    with pytest.raises(InputError, match="ResnetGenerator needs config.kind 'resnet'"):
        ResnetGenerator(GeneratorConfig(kind="unet"))


def test_configs_round_trip_through_json():
    for config in (GeneratorConfig(), GeneratorConfig.for_variant("pix2pix"), SMALL.inverse()):
        assert GeneratorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    d = DiscriminatorConfig(kind="patchgan-70", condition_channels=3)
    assert DiscriminatorConfig.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    assert d.n_layers == 3 and DiscriminatorConfig().n_layers == 4


def test_build_networks_gives_each_variant_its_roles():
    gen = GeneratorConfig(ngf=4, n_blocks=1, in_channels=1)
    nets = build_networks("mod-cyclegan", generator=gen, discriminator=DiscriminatorConfig(ndf=4))
    assert sorted(nets) == [
        "discriminator",
        "generator",
        "inverse_discriminator",
        "inverse_generator",
    ]
    assert nets["inverse_generator"].config.in_channels == 3
    assert nets["inverse_generator"].config.out_channels == 1
    assert nets["discriminator"].config.in_channels == 3
    assert nets["inverse_discriminator"].config.in_channels == 1
    p2p = build_networks("pix2pix", generator=GeneratorConfig(kind="unet", ngf=4, depth=5))
    assert sorted(p2p) == ["discriminator", "generator"]
    assert isinstance(p2p["generator"], UnetGenerator)
    assert isinstance(p2p["discriminator"], PatchDiscriminator)
    assert p2p["discriminator"].config.condition_channels == 3
