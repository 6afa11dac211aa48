"""Generators and discriminators of the paper's method and its baselines.

Layer definitions follow the two reference implementations the paper and its baselines were
trained with, so that their checkpoints can be imported weight for weight
(:mod:`vstain_dask.models.foreign`):

- PyTorch-GAN (eriklindernoren) ``GeneratorResNet`` and ``Discriminator``: the paper's code;
- pytorch-CycleGAN-and-pix2pix (junyanz) ``ResnetGenerator``, ``UnetGenerator`` and
  ``NLayerDiscriminator`` (Zhu et al. 2017, Isola et al. 2017).

Sizes. Generators take ``(N, C, H, W)`` images in [-1, 1] of any height and width and return
``(N, C_out, H, W)``. The ResNet generator downsamples twice, so internally the image is
reflect-padded (split evenly between both sides) to sides that are multiples of 4 and at least 8,
and the output is cropped back; the U-Net pads to multiples of ``2 ** depth``. Where a side is
too short to reflect, it is replicate-padded. Inputs that need no padding (such as the 256 x 256
tiles of the stain engine) run the network unchanged, bit for bit as the reference code does.
``forward_raw`` runs the bare network without any padding or cropping.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from vstain_dask.errors import InputError, as_enum
from vstain_dask.models.config import (
    DiscriminatorConfig,
    DiscriminatorKind,
    GeneratorConfig,
    GeneratorKind,
    Norm,
    Upsample,
    Variant,
)

__all__ = [
    "ResnetGenerator",
    "UnetGenerator",
    "PatchDiscriminator",
    "build_generator",
    "build_discriminator",
    "build_networks",
    "init_weights",
    "count_parameters",
    "discriminator_receptive_field",
]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind is Norm.BATCH:
        return nn.BatchNorm2d(channels)
    # both references: no affine parameters and no running statistics, so inference uses the
    # statistics of each image
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def _pad_plan(size: int, shift: int, multiple: int, minimum: int) -> tuple[int, int, int]:
    """Padding before and after one side of the input, and where to crop the output.

    ``shift`` is how much each of the two outer 7 x 7 convolutions grows the image
    (``2 * outer_pad - 6``); the bare network then needs ``padded + shift`` to be a multiple of
    ``multiple`` and at least ``minimum``, and its output has ``padded + 2 * shift`` pixels, of
    which the ``size`` aligned with the input start at the returned offset.
    """
    margin = max(0, -shift)
    target = max(size + 2 * margin + shift, minimum)
    inner = ((target + multiple - 1) // multiple) * multiple
    padded = inner - shift
    extra = padded - size - 2 * margin
    before = margin + extra // 2
    after = padded - size - before
    return before, after, before + shift


def _pad_mode(size: int, before: int, after: int) -> str:
    # reflection needs the padding on each side to be shorter than the image
    if before < size and after < size:
        return "reflect"
    return "replicate"


class _ResidualBlock(nn.Module):
    """Two reflect-padded 3 x 3 convolutions with a skip connection."""

    def __init__(self, channels: int, *, norm: Norm, bias: bool, dropout: bool) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = [
            ("pad1", nn.ReflectionPad2d(1)),
            ("conv1", nn.Conv2d(channels, channels, 3, bias=bias)),
            ("norm1", _norm(norm, channels)),
            ("act", nn.ReLU()),
        ]
        if dropout:
            layers.append(("dropout", nn.Dropout(0.5)))
        layers += [
            ("pad2", nn.ReflectionPad2d(1)),
            ("conv2", nn.Conv2d(channels, channels, 3, bias=bias)),
            ("norm2", _norm(norm, channels)),
        ]
        self.body = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _downsampling(channels: int, norm: Norm, bias: bool) -> nn.Sequential:
    """Stride-2 3 x 3 convolution to twice the channels, norm, ReLU."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1, bias=bias),
            norm=_norm(norm, channels * 2),
            act=nn.ReLU(),
        )
    )


def _upsampling(channels: int, upsample: Upsample, norm: Norm, bias: bool) -> nn.Sequential:
    """Twice the size, half the channels (nearest + 3 x 3 convolution, or a 3 x 3 transposed
    convolution), norm, ReLU."""
    if upsample is Upsample.NEAREST:
        layers: list[tuple[str, nn.Module]] = [
            ("upsample", nn.Upsample(scale_factor=2.0, mode="nearest")),
            ("conv", nn.Conv2d(channels, channels // 2, 3, padding=1, bias=bias)),
        ]
    else:
        conv = nn.ConvTranspose2d(
            channels, channels // 2, 3, stride=2, padding=1, output_padding=1, bias=bias
        )
        layers = [("conv", conv)]
    layers += [("norm", _norm(norm, channels // 2)), ("act", nn.ReLU())]
    return nn.Sequential(OrderedDict(layers))


class ResnetGenerator(nn.Module):
    """ResNet generator (Johnson et al. 2016) as used by CycleGAN and the paper.

    Reflection pad, 7 x 7 convolution to ``ngf`` features, two stride-2 3 x 3 convolutions
    (``2 ngf``, ``4 ngf``), ``n_blocks`` residual blocks, two upsamplings (nearest + 3 x 3
    convolution, or 3 x 3 transposed convolution), reflection pad, 7 x 7 convolution, tanh.
    Every convolution but the last is followed by the norm layer and ReLU.

    Parameters
    ----------
    config : GeneratorConfig
        Architecture; ``config.kind`` must be ``"resnet"``.

    Notes
    -----
    ``forward`` takes ``(N, in_channels, H, W)`` and returns ``(N, out_channels, H, W)`` in
    [-1, 1] for any ``H, W`` (see the module notes on sizes).
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        if config.kind is not GeneratorKind.RESNET:
            raise InputError(
                f"ResnetGenerator needs config.kind 'resnet', got {config.kind.value!r}"
            )
        self.config = config
        ngf, norm = config.ngf, config.norm
        bias = norm is Norm.INSTANCE
        # growth of each outer 7 x 7 convolution, and the smallest bare input size: 8 keeps the
        # bottleneck at >= 2 pixels for its reflection pads, and the outer pads need > outer_pad
        self.shift = 2 * config.outer_pad - 6
        self.minimum = max(8, config.outer_pad + 1 + self.shift)
        self.stem = nn.Sequential(
            OrderedDict(
                pad=nn.ReflectionPad2d(config.outer_pad),
                conv=nn.Conv2d(config.in_channels, ngf, 7, bias=bias),
                norm=_norm(norm, ngf),
                act=nn.ReLU(),
            )
        )
        self.down = nn.Sequential(*[_downsampling(ngf * m, norm, bias) for m in (1, 2)])
        self.blocks = nn.Sequential(
            *[
                _ResidualBlock(ngf * 4, norm=norm, bias=bias, dropout=config.dropout)
                for _ in range(config.n_blocks)
            ]
        )
        self.up = nn.Sequential(
            *[_upsampling(ngf * m, config.upsample, norm, bias) for m in (4, 2)]
        )
        self.head = nn.Sequential(
            OrderedDict(
                pad=nn.ReflectionPad2d(config.outer_pad),
                conv=nn.Conv2d(ngf, config.out_channels, 7),
                act=nn.Tanh(),
            )
        )

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The bare network: sides of ``x`` plus ``2 * outer_pad - 6`` must be multiples of 4."""
        return self.head(self.up(self.blocks(self.down(self.stem(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stain ``x`` of shape (N, in_channels, H, W) to (N, out_channels, H, W)."""
        height = x.shape[-2]
        width = x.shape[-1]
        top, bottom, y0 = _pad_plan(height, self.shift, 4, self.minimum)
        left, right, x0 = _pad_plan(width, self.shift, 4, self.minimum)
        if top == 0 and bottom == 0 and left == 0 and right == 0 and self.shift == 0:
            return self.forward_raw(x)
        if (
            _pad_mode(height, top, bottom) == "reflect"
            and _pad_mode(width, left, right) == "reflect"
        ):
            x = F.pad(x, [left, right, top, bottom], mode="reflect")
        else:
            x = F.pad(x, [left, right, top, bottom], mode="replicate")
        y = self.forward_raw(x)
        return y[:, :, y0 : y0 + height, x0 : x0 + width]


class UnetGenerator(nn.Module):
    """U-Net generator of Pix2Pix (Isola et al. 2017) with ``depth`` downsamplings.

    Encoder: ``depth`` 4 x 4 stride-2 convolutions with ``ngf * min(2**k, 8)`` features, each but
    the first preceded by LeakyReLU(0.2) and each but the first and last followed by the norm
    layer. Decoder: mirrored ReLU + 4 x 4 stride-2 transposed convolutions + norm, each fed the
    concatenation of the activated encoder feature of its level (skip) and the decoder output
    below; dropout(0.5) after the 512-feature decoder stages between the fourth level and the
    innermost one; tanh at the end. The skip carries the LeakyReLU-activated encoder feature, as
    the reference code does (its in-place activation changes the tensor it concatenates).

    Parameters
    ----------
    config : GeneratorConfig
        Architecture; ``config.kind`` must be ``"unet"``.

    Notes
    -----
    ``forward`` takes ``(N, in_channels, H, W)`` and returns ``(N, out_channels, H, W)``; sides
    are padded to multiples of ``2 ** depth`` internally and the output cropped back.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        if config.kind is not GeneratorKind.UNET:
            raise InputError(f"UnetGenerator needs config.kind 'unet', got {config.kind.value!r}")
        self.config = config
        self.multiple = 2**config.depth
        norm, depth = config.norm, config.depth
        bias = norm is Norm.INSTANCE
        outs = [config.ngf * min(2**k, 8) for k in range(depth)]
        ins = [config.in_channels] + outs[:-1]
        encoder: list[nn.Module] = []
        for k in range(depth):
            layers: list[tuple[str, nn.Module]] = [
                ("conv", nn.Conv2d(ins[k], outs[k], 4, stride=2, padding=1, bias=bias))
            ]
            if 0 < k < depth - 1:
                layers.append(("norm", _norm(norm, outs[k])))
            encoder.append(nn.Sequential(OrderedDict(layers)))
        self.encoder = nn.ModuleList(encoder)
        # decoder stages ordered from the innermost level outwards, the order they run in
        decoder: list[nn.Module] = []
        for k in reversed(range(depth)):
            c_in = outs[k] if k == depth - 1 else 2 * outs[k]
            layers = [("act", nn.ReLU())]
            if k == 0:
                conv = nn.ConvTranspose2d(c_in, config.out_channels, 4, stride=2, padding=1)
                layers += [("conv", conv), ("tanh", nn.Tanh())]
            else:
                conv = nn.ConvTranspose2d(c_in, ins[k], 4, stride=2, padding=1, bias=bias)
                layers += [("conv", conv), ("norm", _norm(norm, ins[k]))]
                if config.dropout and 4 <= k <= depth - 2:
                    layers.append(("dropout", nn.Dropout(0.5)))
            decoder.append(nn.Sequential(OrderedDict(layers)))
        self.decoder = nn.ModuleList(decoder)

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The bare network: sides of ``x`` must be multiples of ``2 ** depth``."""
        skips: list[torch.Tensor] = []
        h = x
        for k, stage in enumerate(self.encoder):
            if k > 0:
                h = F.leaky_relu(h, 0.2)
                skips.append(h)
            h = stage(h)
        n = len(skips)
        for k, stage in enumerate(self.decoder):
            if k > 0:
                h = torch.cat([skips[n - k], h], 1)
            h = stage(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate ``x`` of shape (N, in_channels, H, W) to (N, out_channels, H, W)."""
        height = x.shape[-2]
        width = x.shape[-1]
        top, bottom, y0 = _pad_plan(height, 0, self.multiple, self.multiple)
        left, right, x0 = _pad_plan(width, 0, self.multiple, self.multiple)
        if top == 0 and bottom == 0 and left == 0 and right == 0:
            return self.forward_raw(x)
        if (
            _pad_mode(height, top, bottom) == "reflect"
            and _pad_mode(width, left, right) == "reflect"
        ):
            x = F.pad(x, [left, right, top, bottom], mode="reflect")
        else:
            x = F.pad(x, [left, right, top, bottom], mode="replicate")
        y = self.forward_raw(x)
        return y[:, :, y0 : y0 + height, x0 : x0 + width]


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: a map of real/fake scores over overlapping patches.

    ``"pytorch-gan"``: ``n_layers`` (4) blocks of 4 x 4 stride-2 convolution (+ norm except the
    first) + LeakyReLU(0.2), a one-pixel zero pad on the top and left, and a 4 x 4 convolution
    to one channel: 16 x 16 scores for a 256 x 256 input, receptive field 94 x 94.
    ``"patchgan-70"``: ``n_layers`` (3) such strided blocks, one stride-1 block and a stride-1
    4 x 4 convolution to one channel: 30 x 30 scores for 256 x 256, receptive field 70 x 70.
    Features double per block up to ``8 * ndf``. No sigmoid: the least-squares GAN loss takes
    raw scores.

    Parameters
    ----------
    config : DiscriminatorConfig
        Architecture.

    Notes
    -----
    ``forward(image, condition=None)`` takes ``image`` (N, in_channels, H, W) and, for a
    conditional discriminator, ``condition`` (N, condition_channels, H, W), which is
    concatenated in front of the image as in Pix2Pix; it returns (N, 1, H', W') scores.
    """

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        ndf, norm = config.ndf, config.norm
        bias = norm is Norm.INSTANCE
        n_layers = int(config.n_layers or 0)
        c_in = config.in_channels + config.condition_channels
        blocks: list[nn.Module] = []
        widths = [ndf * min(2**k, 8) for k in range(n_layers + 1)]
        strided = n_layers if config.kind is DiscriminatorKind.PYTORCH_GAN else n_layers + 1
        prev = c_in
        for k in range(strided):
            stride = 2 if k < n_layers else 1
            # the first convolution has no norm layer and so always a bias
            layers: list[tuple[str, nn.Module]] = [
                (
                    "conv",
                    nn.Conv2d(prev, widths[k], 4, stride=stride, padding=1, bias=bias or k == 0),
                )
            ]
            if k > 0:
                layers.append(("norm", _norm(norm, widths[k])))
            layers.append(("act", nn.LeakyReLU(0.2)))
            blocks.append(nn.Sequential(OrderedDict(layers)))
            prev = widths[k]
        self.blocks = nn.Sequential(*blocks)
        if config.kind is DiscriminatorKind.PYTORCH_GAN:
            self.head = nn.Sequential(
                OrderedDict(pad=nn.ZeroPad2d((1, 0, 1, 0)), conv=nn.Conv2d(prev, 1, 4, padding=1))
            )
        else:
            self.head = nn.Sequential(OrderedDict(conv=nn.Conv2d(prev, 1, 4, padding=1)))

    def forward(self, image: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Score ``image`` (N, C, H, W), optionally conditioned, as (N, 1, H', W')."""
        want = self.config.condition_channels
        if (condition is None) != (want == 0):
            raise InputError(
                f"condition must be {'given' if want else 'None'} for a discriminator with "
                f"condition_channels={want}"
            )
        x = image if condition is None else torch.cat([condition, image], 1)
        return self.head(self.blocks(x))


def init_weights(module: nn.Module, *, std: float = 0.02, seed: int | None = None) -> nn.Module:
    """Initialize as both references do: convolutions N(0, std) with zero bias, batch norm N(1, std).

    Parameters
    ----------
    module : nn.Module
        Network to initialize in place.
    std : float
        Standard deviation (0.02 in CycleGAN and Pix2Pix).
    seed : int or None
        Seed of a private random generator, for reproducible weights without touching the global
        torch seed.

    Returns
    -------
    nn.Module
        ``module``.
    """
    gen = None
    if seed is not None:
        gen = torch.Generator().manual_seed(int(seed))
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            with torch.no_grad():
                nn.init.normal_(m.weight, 0.0, std, generator=gen)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                nn.init.normal_(m.weight, 1.0, std, generator=gen)
                nn.init.zeros_(m.bias)
    return module


def build_generator(
    config: GeneratorConfig | None = None, *, seed: int | None = None
) -> ResnetGenerator | UnetGenerator:
    """Build and initialize the generator described by ``config`` (default: the paper's)."""
    config = GeneratorConfig() if config is None else config
    net: ResnetGenerator | UnetGenerator
    if config.kind is GeneratorKind.RESNET:
        net = ResnetGenerator(config)
    else:
        net = UnetGenerator(config)
    init_weights(net, seed=seed)
    return net


def build_discriminator(
    config: DiscriminatorConfig | None = None, *, seed: int | None = None
) -> PatchDiscriminator:
    """Build and initialize the discriminator described by ``config`` (default: PyTorch-GAN's)."""
    net = PatchDiscriminator(DiscriminatorConfig() if config is None else config)
    init_weights(net, seed=seed)
    return net


def build_networks(
    variant: Variant | str,
    *,
    generator: GeneratorConfig | None = None,
    discriminator: DiscriminatorConfig | None = None,
    seed: int | None = None,
) -> dict[str, nn.Module]:
    """All networks trained for ``variant``, by role.

    Roles: ``"generator"`` (CT -> stain, the model that stains volumes) and ``"discriminator"``
    (judges stained images; for Pix2Pix conditioned on the CT). CycleGAN variants add
    ``"inverse_generator"`` (stain -> CT) and ``"inverse_discriminator"`` (judges CT).

    Parameters
    ----------
    variant : Variant
        Training method.
    generator : GeneratorConfig or None
        Forward generator; None means :meth:`GeneratorConfig.for_variant`.
    discriminator : DiscriminatorConfig or None
        Template for the discriminators (kind, ndf, n_layers, norm); channels are set from the
        generator. None means the default PyTorch-GAN PatchGAN.
    seed : int or None
        Seed for reproducible initial weights (each role gets its own derived seed).
    """
    from dataclasses import replace

    variant = as_enum(Variant, variant, "variant")
    gcfg = GeneratorConfig.for_variant(variant) if generator is None else generator
    dcfg = DiscriminatorConfig() if discriminator is None else discriminator

    def _seed(i: int) -> int | None:
        return None if seed is None else int(seed) * 4 + i

    if variant is Variant.PIX2PIX:
        d = replace(dcfg, in_channels=gcfg.out_channels, condition_channels=gcfg.in_channels)
        return {
            "generator": build_generator(gcfg, seed=_seed(0)),
            "discriminator": build_discriminator(d, seed=_seed(1)),
        }
    d_fwd = replace(dcfg, in_channels=gcfg.out_channels, condition_channels=0)
    d_inv = replace(dcfg, in_channels=gcfg.in_channels, condition_channels=0)
    return {
        "generator": build_generator(gcfg, seed=_seed(0)),
        "inverse_generator": build_generator(gcfg.inverse(), seed=_seed(1)),
        "discriminator": build_discriminator(d_fwd, seed=_seed(2)),
        "inverse_discriminator": build_discriminator(d_inv, seed=_seed(3)),
    }


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``; buffers are not counted."""
    return int(sum(p.numel() for p in module.parameters()))


def _receptive_field(kernels_strides: list[tuple[int, int]]) -> int:
    field, jump = 1, 1
    for k, s in kernels_strides:
        field += (k - 1) * jump
        jump *= s
    return field


def discriminator_receptive_field(config: DiscriminatorConfig) -> int:
    """Side in pixels of the input patch each output score sees."""
    n = int(config.n_layers or 0)
    layers = [(4, 2)] * n + [(4, 1)]
    if config.kind is DiscriminatorKind.PATCHGAN_70:
        layers.append((4, 1))
    return _receptive_field(layers)
