"""Choices and configuration of the networks: enums and frozen dataclasses.

Everything here is plain Python (no torch), so configs can be validated, stored in checkpoints as
plain dicts and read back from JSON or YAML without building a network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from enum import Enum, StrEnum
from typing import Any, TypeVar

from vstain_dask._validate import check_bool, check_float, check_int_fields, int_field
from vstain_dask.errors import InputError, as_enum
from vstain_dask.intensity import CT_MAX

__all__ = [
    "Variant",
    "GeneratorKind",
    "Upsample",
    "Norm",
    "DiscriminatorKind",
    "L1Normalization",
    "ForeignFormat",
    "ExportFormat",
    "GeneratorConfig",
    "DiscriminatorConfig",
    "InputNormalization",
]


class Variant(StrEnum):
    """The training method a model comes from (the paper's method and its three baselines)."""

    #: the paper's paired ("modified") CycleGAN: cycle + identity + masked pixelwise + greyscale
    MOD_CYCLEGAN = "mod-cyclegan"
    #: standard unpaired CycleGAN (no pixelwise or greyscale terms)
    CYCLEGAN = "cyclegan"
    #: standard CycleGAN trained on inverted CT
    CYCLEGAN_INVCT = "cyclegan-invct"
    #: Pix2Pix: U-Net generator and conditional PatchGAN, L1 weight 20
    PIX2PIX = "pix2pix"


class GeneratorKind(StrEnum):
    """Generator architecture."""

    #: ResNet generator (Johnson et al.), as in CycleGAN
    RESNET = "resnet"
    #: U-Net generator with skip connections, as in Pix2Pix
    UNET = "unet"


class Upsample(StrEnum):
    """How the ResNet generator doubles its resolution twice."""

    #: nearest-neighbour upsampling followed by a 3x3 convolution (PyTorch-GAN, used by the paper)
    NEAREST = "nearest"
    #: 3x3 transposed convolution with stride 2 (pytorch-CycleGAN-and-pix2pix)
    TRANSPOSE = "transpose"


class Norm(StrEnum):
    """Normalization layer of generators and discriminators."""

    #: InstanceNorm2d without affine parameters or running statistics (CycleGAN default)
    INSTANCE = "instance"
    #: BatchNorm2d with affine parameters (pytorch-CycleGAN-and-pix2pix default for pix2pix)
    BATCH = "batch"


class DiscriminatorKind(StrEnum):
    """PatchGAN discriminator design."""

    #: PyTorch-GAN's PatchGAN: 4 strided blocks, 16x16 map for a 256 input (used by the paper)
    PYTORCH_GAN = "pytorch-gan"
    #: the 70x70 PatchGAN of Isola et al.: 3 strided layers, 30x30 map for a 256 input
    PATCHGAN_70 = "patchgan-70"


#: other spellings of a :class:`DiscriminatorKind` (the paper's text writes "70x70 PatchGAN")
DISCRIMINATOR_ALIASES = {"patchgan70": DiscriminatorKind.PATCHGAN_70}


class L1Normalization(StrEnum):
    """What a masked L1 term is divided by.

    With a mask ``m`` of coverage ``c`` (the fraction of the patch's pixels it keeps), the
    ``mask`` mean is the ``pixels`` mean divided by ``c``: it weighs the L1 terms of a sparsely
    masked patch ``1 / c`` times as much against the GAN term.
    """

    #: the paper's: masks are "binary multipliers for all l1 loss terms", i.e. the mean over
    #: all pixels of the masked images, as in the PyTorch-GAN code the paper built on
    PIXELS = "pixels"
    #: the mean absolute error per masked element: the sum over the mask divided by its area
    MASK = "mask"


class ForeignFormat(StrEnum):
    """Checkpoints written by other code that can be imported."""

    #: eriklindernoren/PyTorch-GAN ``GeneratorResNet`` state dicts (``G_AB_<epoch>.pth``)
    PYTORCH_GAN = "pytorch-gan"
    #: junyanz/pytorch-CycleGAN-and-pix2pix ``ResnetGenerator``/``UnetGenerator`` state dicts
    CYCLEGAN_PIX2PIX = "cyclegan-pix2pix"


class ExportFormat(StrEnum):
    """Formats a generator can be exported to for use outside vstain-dask."""

    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"


C = TypeVar("C")


def _from_dict(cls: type[C], data: Mapping[str, Any], *, ignore: tuple[str, ...] = ()) -> C:
    if not isinstance(data, Mapping):
        raise InputError(f"{cls.__name__} must be given as a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known - set(ignore))
    if unknown:
        raise InputError(
            f"{cls.__name__} got unknown field(s) {unknown}; known fields are {sorted(known)}"
        )
    return cls(**{k: v for k, v in data.items() if k in known})


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a generator.

    The defaults are the paper's generator: the PyTorch-GAN ResNet generator with 64 base
    features, 9 residual blocks, nearest-neighbour upsampling, 3 input and 3 output channels
    (about 11.4 M parameters).

    Parameters
    ----------
    kind : GeneratorKind
        ``"resnet"`` (CycleGAN) or ``"unet"`` (Pix2Pix).
    in_channels, out_channels : int
        Channels of the input and output images.
    ngf : int
        Features of the first convolution; deeper layers use multiples of it.
    n_blocks : int
        Residual blocks of the ResNet generator (ignored by the U-Net).
    depth : int
        Downsamplings of the U-Net (8 for 256 x 256 inputs; ignored by the ResNet generator).
        The U-Net needs inputs whose sides are multiples of ``2 ** depth``.
    upsample : Upsample
        ResNet upsampling: ``"nearest"`` (PyTorch-GAN) or ``"transpose"``
        (pytorch-CycleGAN-and-pix2pix).
    outer_pad : int
        Reflection padding before the two 7 x 7 convolutions of the ResNet generator. 3 keeps the
        size; PyTorch-GAN pads by the channel count instead (3 for the RGB-style inputs it was
        trained on, 1 for a 1-channel model, whose raw output is then 8 pixels smaller).
    norm : Norm
        ``"instance"`` or ``"batch"``. Convolutions followed by a norm layer carry a bias only
        with instance norm, as in both reference implementations.
    dropout : bool
        Dropout(0.5) in the residual blocks (ResNet) or in the innermost 512-feature decoder
        stages (U-Net, as in Pix2Pix). Only active in training mode.
    """

    kind: GeneratorKind = GeneratorKind.RESNET
    in_channels: int = int_field(3, 1)
    out_channels: int = int_field(3, 1)
    ngf: int = int_field(64, 1)
    n_blocks: int = int_field(9, 0)
    depth: int = int_field(8, 2, 12)
    upsample: Upsample = Upsample.NEAREST
    outer_pad: int = int_field(3, 0, 8)
    norm: Norm = Norm.INSTANCE
    dropout: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", as_enum(GeneratorKind, self.kind, "kind"))
        object.__setattr__(self, "upsample", as_enum(Upsample, self.upsample, "upsample"))
        object.__setattr__(self, "norm", as_enum(Norm, self.norm, "norm"))
        check_int_fields(self)
        check_bool(self.dropout, "dropout")

    @classmethod
    def for_variant(cls, variant: Variant | str, **changes: Any) -> GeneratorConfig:
        """The paper's generator for ``variant`` (ResNet-9 for CycleGANs, U-Net-256 for Pix2Pix).

        The Pix2Pix U-Net uses instance norm rather than the batch norm of the reference code:
        the reference runs batch norm on batches of one in training mode, which is instance norm,
        and instance norm keeps inference independent of the batch.
        """
        variant = as_enum(Variant, variant, "variant")
        if variant is Variant.PIX2PIX:
            base: dict[str, Any] = {"kind": GeneratorKind.UNET, "depth": 8, "dropout": True}
        else:
            base = {"kind": GeneratorKind.RESNET, "n_blocks": 9, "upsample": Upsample.NEAREST}
        return cls(**{**base, **changes})

    def inverse(self) -> GeneratorConfig:
        """The config of the generator going the other way (input and output channels swapped)."""
        return _replace(self, in_channels=self.out_channels, out_channels=self.in_channels)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (enums as strings) for checkpoints, JSON and YAML."""
        return {k: _plain(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        """Inverse of :meth:`to_dict`; unknown fields are an error."""
        return _from_dict(cls, data, ignore=("type",))


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture of a PatchGAN discriminator.

    The default is PyTorch-GAN's design (16 x 16 output map for a 256 x 256 input, receptive
    field 94 x 94), because the paper's models were trained with PyTorch-GAN's CycleGAN code and
    this is the discriminator that code builds. ``"patchgan-70"`` is the 70 x 70 design of
    Isola et al. used by pytorch-CycleGAN-and-pix2pix (30 x 30 map for 256 x 256).

    Parameters
    ----------
    kind : DiscriminatorKind
        ``"pytorch-gan"`` or ``"patchgan-70"`` (also spelt ``"patchgan70"``).
    in_channels : int
        Channels of the judged image.
    condition_channels : int
        Channels of the conditioning input, concatenated in front of the image (Pix2Pix's
        conditional discriminator sees ``(input, output)``); 0 for an unconditional one.
    ndf : int
        Features of the first layer.
    n_layers : int or None
        Strided layers; None means the design's own (4 for ``pytorch-gan``, 3 for
        ``patchgan-70``).
    norm : Norm
        Normalization layer.
    """

    kind: DiscriminatorKind = DiscriminatorKind.PYTORCH_GAN
    in_channels: int = int_field(3, 1)
    condition_channels: int = int_field(0, 0)
    ndf: int = int_field(64, 1)
    n_layers: int | None = int_field(None, 1, 8)
    norm: Norm = Norm.INSTANCE

    def __post_init__(self) -> None:
        kind = self.kind
        if isinstance(kind, str) and kind.lower() in DISCRIMINATOR_ALIASES:
            kind = DISCRIMINATOR_ALIASES[kind.lower()]
        object.__setattr__(self, "kind", as_enum(DiscriminatorKind, kind, "kind"))
        object.__setattr__(self, "norm", as_enum(Norm, self.norm, "norm"))
        if self.n_layers is None:
            default = 4 if self.kind is DiscriminatorKind.PYTORCH_GAN else 3
            object.__setattr__(self, "n_layers", default)
        check_int_fields(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (enums as strings) for checkpoints, JSON and YAML."""
        return {k: _plain(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiscriminatorConfig:
        """Inverse of :meth:`to_dict`; unknown fields are an error."""
        return _from_dict(cls, data, ignore=("type",))


@dataclass(frozen=True)
class InputNormalization:
    """How raw CT values map to the generator's input.

    ``x = clip(2 * (v - low) / (high - low) - 1, -1, 1)``, negated if ``invert``, repeated to
    ``channels`` channels. The generator's tanh output ``y`` in [-1, 1] maps to uint8 R, G, B as
    ``round((y + 1) * 127.5)``. Both formulas live in :mod:`vstain_dask.intensity`
    (:func:`~vstain_dask.intensity.network_input`, :func:`~vstain_dask.intensity.output_to_uint8`).

    Parameters
    ----------
    low, high : float
        Raw CT values (in the units of the stored volume) that map to -1 and +1.
    invert : bool
        Negate the input (the paper's "CycleGAN with inverted CT" baseline).
    channels : int
        1 or 3; the paper repeats greyscale CT to 3 channels.
    ct_normalized : bool
        True if the model expects CT normalized as in the paper (uint16, bone mean 30000,
        background mean 10000) before this mapping.
    """

    low: float = 0.0
    high: float = float(CT_MAX)
    invert: bool = False
    channels: int = 3
    ct_normalized: bool = True

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            object.__setattr__(self, name, check_float(getattr(self, name), name))
        if not self.high > self.low:
            raise InputError(
                f"high must be greater than low, got low={self.low:g}, high={self.high:g}"
            )
        check_bool(self.invert, "invert")
        check_bool(self.ct_normalized, "ct_normalized")
        if (
            not isinstance(self.channels, int)
            or isinstance(self.channels, bool)
            or self.channels not in (1, 3)
        ):
            raise InputError(f"channels must be 1 or 3, got {self.channels!r}")

    def describe(self) -> str:
        """One line stating the mapping, for model cards."""
        text = f"x = clip(2 * (v - {self.low:g}) / ({self.high:g} - {self.low:g}) - 1, -1, 1)"
        if self.invert:
            text += ", negated"
        text += f", repeated to {self.channels} channel{'s' if self.channels > 1 else ''}"
        if self.ct_normalized:
            text += "; v is CT normalized as in the paper (bone mean 30000, background 10000)"
        else:
            text += "; v is raw CT"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form for checkpoints, JSON and YAML."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputNormalization:
        """Inverse of :meth:`to_dict`; unknown fields are an error."""
        return _from_dict(cls, data)


def _replace(config: C, **changes: Any) -> C:
    from dataclasses import replace

    return replace(config, **changes)  # type: ignore[type-var]
