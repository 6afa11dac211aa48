"""The settings of a training run and what a run produced; plain Python, no torch.

:class:`TrainConfig` is the one place where the training defaults and the ranges of its integer
settings are stated. The networks and their input are nested configs that own their fields:
``generator`` (:class:`~vstain_dask.models.config.GeneratorConfig`), ``discriminator``
(:class:`~vstain_dask.models.config.DiscriminatorConfig`) and ``input``
(:class:`~vstain_dask.models.config.InputNormalization`). The ``vstain-dask train`` options take
their defaults and ranges from the fields (an integer field's ``metadata`` holds its ``min`` and
``max``; the options of nested settings, ``--ngf`` and the like, through :func:`flat_field`), so
``vstain-dask train --help`` answers without importing torch.

Configs written before the nesting held the nested settings flat (:data:`FLAT_NAMES`: ``ngf``,
``n_blocks``, ``unet_depth``, ``ndf``, ``disc_layers``, ``ct_channels``, ``ct_low``,
``ct_high``); :meth:`TrainConfig.from_dict` reads both forms (:func:`nest_flat`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vstain_dask._validate import check_int, check_int_fields, int_field
from vstain_dask.errors import InputError, as_enum
from vstain_dask.intensity import CT_INPUT_HIGH, CT_INPUT_LOW
from vstain_dask.models.config import (
    DiscriminatorConfig,
    GeneratorConfig,
    GeneratorKind,
    InputNormalization,
    L1Normalization,
    Variant,
)
from vstain_dask.train.augment import AugmentConfig

if TYPE_CHECKING:
    from vstain_dask.models.losses import LossWeights

__all__ = [
    "FLAT_NAMES",
    "Provenance",
    "TrainConfig",
    "TrainResult",
    "flat_field",
    "generator_for",
    "nest_flat",
    "resumed_settings",
]

# fields that may change when a run is resumed (they do not change what is computed)
_RESUMABLE = {"epochs", "workers", "device", "cache", "val_every", "log_every"}

#: the nested configs, by their field of TrainConfig
_NESTED: dict[str, type] = {
    "generator": GeneratorConfig,
    "discriminator": DiscriminatorConfig,
    "input": InputNormalization,
}

#: the flat names of nested settings, as the ``vstain-dask train`` options and the configs
#: written before the nesting name them: flat name -> (field of TrainConfig, its field)
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "ngf": ("generator", "ngf"),
    "n_blocks": ("generator", "n_blocks"),
    "unet_depth": ("generator", "depth"),
    "ndf": ("discriminator", "ndf"),
    "disc_layers": ("discriminator", "n_layers"),
    "discriminator_kind": ("discriminator", "kind"),
    "ct_channels": ("input", "channels"),
    "ct_low": ("input", "low"),
    "ct_high": ("input", "high"),
}

# flat settings whose default is training's, not their nested field's: the U-Net's depth
# follows the patch size (None), and CT in the paper's units maps from 0..50000
_FLAT_DEFAULTS: dict[str, Any] = {
    "unet_depth": None,
    "ct_low": CT_INPUT_LOW,
    "ct_high": CT_INPUT_HIGH,
}

# nested settings by the flat name that sets them, for messages
_FLAT_OF = {f"{sub}.{name}": flat for flat, (sub, name) in FLAT_NAMES.items()}
_FLAT_OF["generator.in_channels"] = "ct_channels"


def flat_field(name: str) -> tuple[Any, Mapping[str, Any]]:
    """The default and the ``metadata`` (an integer's ``min`` and ``max``) of the flat setting
    ``name`` (a key of :data:`FLAT_NAMES`): those of its nested field, but for the defaults
    training sets (``unet_depth``: None, the depth that follows the patch size; ``ct_low`` and
    ``ct_high``: the paper's CT range)."""
    sub, attr = FLAT_NAMES[name]
    field = next(f for f in dataclasses.fields(_NESTED[sub]) if f.name == attr)
    return _FLAT_DEFAULTS.get(name, field.default), field.metadata


def generator_for(
    variant: Variant | str,
    *,
    patch_size: int = 256,
    in_channels: int = 3,
    ngf: int = 64,
    n_blocks: int = 9,
    depth: int | None = None,
) -> GeneratorConfig:
    """The paper's generator for ``variant`` at these sizes (what ``--ct-channels``, ``--ngf``,
    ``--n-blocks`` and ``--unet-depth`` choose).

    :meth:`~vstain_dask.models.config.GeneratorConfig.for_variant` with ``in_channels`` and
    ``ngf``, and ``n_blocks`` for the ResNet or ``depth`` for the U-Net of ``pix2pix``
    (None: ``log2(patch_size)``, at most 8); the other one is left at its default.
    """
    variant = as_enum(Variant, variant, "variant")
    changes: dict[str, Any] = {"in_channels": in_channels, "ngf": ngf}
    if variant is Variant.PIX2PIX:
        changes["depth"] = depth or min(8, max(2, int(math.log2(patch_size))))
    else:
        changes["n_blocks"] = n_blocks
    return GeneratorConfig.for_variant(variant, **changes)


def _input_for(
    variant: Variant, *, channels: int = 3, low: float = CT_INPUT_LOW, high: float = CT_INPUT_HIGH
) -> InputNormalization:
    """Normalized CT -> network input of a generator trained as ``variant``."""
    return InputNormalization(
        low=low,
        high=high,
        invert=variant is Variant.CYCLEGAN_INVCT,
        channels=channels,
        ct_normalized=True,
    )


def nest_flat(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (the settings of a :class:`TrainConfig`) with the flat settings of
    :data:`FLAT_NAMES` turned into the nested configs, in the plain form of
    :meth:`TrainConfig.to_dict`.

    Configs written before the nesting, and the ``vstain-dask train`` options, hold the flat
    form; a flat setting not given takes its default (:func:`flat_field`). A mapping without
    flat settings comes back as it is.

    Raises
    ------
    InputError
        A flat setting is out of its range, or flat settings come with nested configs.
    """
    d = _written_before(data)
    flat = {name: d.pop(name) for name in FLAT_NAMES if name in d}
    if not flat:
        return d
    nested = [name for name in _NESTED if d.get(name) is not None]
    if nested:
        raise InputError(
            f"TrainConfig got the flat settings {sorted(flat)} and the nested {nested}; give "
            "the one or the other"
        )
    s = {name: _check_flat(name, flat.get(name, flat_field(name)[0])) for name in FLAT_NAMES}
    if not s["ct_high"] > s["ct_low"]:
        raise InputError(f"ct_high must exceed ct_low, got {s['ct_low']}, {s['ct_high']}")
    variant = as_enum(Variant, d.get("variant", Variant.MOD_CYCLEGAN), "variant")
    patch = _FIELDS["patch_size"]
    patch_size = d.get("patch_size", patch.default)
    patch_size = check_int(patch_size, "patch_size", patch.metadata["min"], patch.metadata["max"])
    d["generator"] = generator_for(
        variant,
        patch_size=patch_size,
        in_channels=s["ct_channels"],
        ngf=s["ngf"],
        n_blocks=s["n_blocks"],
        depth=s["unet_depth"],
    ).to_dict()
    d["discriminator"] = DiscriminatorConfig(
        kind=s["discriminator_kind"], ndf=s["ndf"], n_layers=s["disc_layers"]
    ).to_dict()
    low, high = s["ct_low"], s["ct_high"]
    d["input"] = _input_for(variant, channels=s["ct_channels"], low=low, high=high).to_dict()
    return d


def _written_before(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with the settings a config written before they existed did not hold, as the
    run computed them: a complete config (it holds ``mask_l1``, as every saved one does)
    without ``l1_normalization`` divided its masked L1 terms by the mask's area."""
    d = dict(data)
    if "mask_l1" in d and "l1_normalization" not in d:
        d["l1_normalization"] = L1Normalization.MASK.value
    return d


def _check_flat(name: str, value: Any) -> Any:
    """A flat setting, checked under its flat name."""
    default, metadata = flat_field(name)
    if name == "ct_channels" and value not in (1, 3):
        raise InputError(f"ct_channels must be 1 or 3, got {value!r}")
    if "min" in metadata and not (value is None and default is None):
        return check_int(value, name, metadata["min"], metadata["max"])
    return value


def _nested(value: Any, cls: type) -> Any:
    """A nested config given as itself, a mapping (its ``to_dict``) or None (left as it is)."""
    return value if value is None or isinstance(value, cls) else cls.from_dict(value)


def _check_nested(variant: Variant, generator: GeneratorConfig, inp: InputNormalization) -> None:
    """The generator and the input agree with each other and with the variant."""
    kind = GeneratorConfig.for_variant(variant).kind
    if generator.kind is not kind:
        raise InputError(
            f"generator.kind must be {kind.value!r} for the variant {variant.value}, got "
            f"{generator.kind.value!r} (generator_for builds a variant's generator; "
            "TrainConfig.with_variant changes the variant)"
        )
    if generator.in_channels != inp.channels:
        raise InputError(
            f"generator.in_channels must be input.channels ({inp.channels}), got "
            f"{generator.in_channels}"
        )
    if generator.out_channels != 3:
        raise InputError(
            f"generator.out_channels must be 3 (RGB histology), got {generator.out_channels}"
        )
    invert = variant is Variant.CYCLEGAN_INVCT
    if inp.invert != invert:
        raise InputError(
            f"input.invert must be {invert} for the variant {variant.value} (only "
            f"cyclegan-invct trains on inverted CT), got {inp.invert}"
        )
    if not inp.ct_normalized:
        raise InputError(
            "input.ct_normalized must be true: training reads CT normalized as the pairs record it"
        )


def _leaves(config: Mapping[str, Any]) -> dict[str, Any]:
    """A :meth:`TrainConfig.to_dict` with each nested config's settings as
    ``"generator.ngf"`` and the like."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in _NESTED and isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; defaults are the paper's.

    Parameters
    ----------
    variant : Variant
        ``mod-cyclegan`` (the paper's), ``cyclegan``, ``cyclegan-invct`` or ``pix2pix``.
    epochs : int
        Total epochs (a resumed run continues up to this number); the paper's 500.
    batch_size, patch_size, patches_per_pair : int
        Patches per step (4), their side in pixels (256) and patches per pair per epoch (100).
    workers : int
        DataLoader worker processes (0: read patches in the training process).
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    seed : int
        Seeds weights, patches, split and image buffers.
    lr, betas : float, (float, float)
        Adam settings (2e-4, (0.5, 0.999)).
    decay_start : int or None
        Epoch from which the learning rate decays linearly to 0 at ``epochs``; None keeps it
        constant.
    generator : GeneratorConfig or None
        The CT -> stain generator, of the variant's kind (a U-Net for ``pix2pix``, else a
        ResNet), taking ``input.channels``. None: the paper's for the variant
        (:func:`generator_for`: 64 base features, 9 ResNet blocks or a U-Net of depth
        ``log2(patch_size)``, at most 8). The inverse generator of the CycleGANs mirrors it.
    discriminator : DiscriminatorConfig
        Template of the discriminators; their channels are set per role. Default: PyTorch-GAN's
        PatchGAN (``pytorch-gan``: 64 base features, 4 strided layers, a 16 x 16 map for
        256 x 256 patches), because the paper's models were trained with PyTorch-GAN's CycleGAN
        code, which builds this one; the 70 x 70 PatchGAN its text names (``patchgan-70``,
        Isola et al.: 3 strided layers, a 30 x 30 map) is ``--discriminator patchgan-70``.
    input : InputNormalization or None
        Normalized CT -> network input. None: CT 0 and 50000 map to -1 and +1, 3 channels
        (the paper: greyscale repeated; 1 feeds one), inverted for ``cyclegan-invct`` only.
    buffer_size : int
        Image buffer of the CycleGAN discriminators (50; 0 disables it).
    weights : LossWeights or None
        None: the paper's weights for the variant.
    augment : AugmentConfig
    cache : bool
        Keep pairs in memory in each loader process.
    autocast, channels_last : bool or None
        bf16 autocast and channels-last memory; None: on for CUDA, off on the CPU.
    folds, fold, test_fraction
        Cross-validation (see :func:`~vstain_dask.train.split.make_split`).
    val_every : int
        Validate on the validation pairs every this many epochs (0: never).
    log_every : int
        Steps between rows of ``steps.csv`` and progress-bar updates.
    histology_normalization : bool
        Normalize histology as the paper does (white balance, stretch).
    mask_l1 : bool
        Multiply every L1 term by the correspondence mask (the paper). False takes the L1 terms
        over whole patches, for data that correspond everywhere (phantom pairs).
    l1_normalization : L1Normalization
        ``pixels`` (the paper's): a masked L1 term is the mean over all pixels of the masked
        images; ``mask``: divided by the mask's area instead, which weighs the L1 terms of a
        patch ``1 / coverage`` times as much against the GAN term
        (:func:`~vstain_dask.models.losses.masked_l1`). Configs and models written before this
        setting existed read as ``mask``, what they computed.
    """

    variant: Variant = Variant.MOD_CYCLEGAN
    epochs: int = int_field(500, 1)
    batch_size: int = int_field(4, 1)
    patch_size: int = int_field(256, 8)
    patches_per_pair: int = int_field(100, 1)
    workers: int = int_field(2, 0)
    device: str = "auto"
    seed: int = int_field(0, 0)
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    decay_start: int | None = int_field(None, 0)
    generator: GeneratorConfig | None = None
    discriminator: DiscriminatorConfig = dataclasses.field(default_factory=DiscriminatorConfig)
    input: InputNormalization | None = None
    buffer_size: int = int_field(50, 0)
    weights: LossWeights | None = None
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    cache: bool = False
    autocast: bool | None = None
    channels_last: bool | None = None
    folds: int = int_field(1, 1)
    fold: int | None = int_field(None, 0)
    test_fraction: float | None = None
    val_every: int = int_field(1, 0)
    log_every: int = int_field(10, 1)
    histology_normalization: bool = True
    mask_l1: bool = True
    l1_normalization: L1Normalization = L1Normalization.PIXELS

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", as_enum(Variant, self.variant, "variant"))
        norm = as_enum(L1Normalization, self.l1_normalization, "l1_normalization")
        object.__setattr__(self, "l1_normalization", norm)
        check_int_fields(self)
        for name in ("cache", "histology_normalization", "mask_l1"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.decay_start is not None and self.decay_start >= self.epochs:
            raise InputError(
                f"decay_start must be below epochs ({self.epochs}), got {self.decay_start}"
            )
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a positive number, got {self.lr!r}")
        b = tuple(float(v) for v in self.betas)
        if len(b) != 2 or not all(0 <= v < 1 for v in b):
            raise InputError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", b)
        if self.weights is not None:
            from vstain_dask.models.losses import LossWeights  # torch: only when weights are given

            if not isinstance(self.weights, LossWeights):
                object.__setattr__(self, "weights", LossWeights.from_dict(self.weights))
        if not isinstance(self.augment, AugmentConfig):
            object.__setattr__(self, "augment", AugmentConfig.from_dict(self.augment))
        if not isinstance(self.device, str) or not self.device:
            raise InputError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        self._resolve_nested()
        # fold and test_fraction are checked by make_split, with the data in hand

    def _resolve_nested(self) -> None:
        """The nested configs from mappings, the variant's where None, checked together."""
        generator = _nested(self.generator, GeneratorConfig)
        discriminator = _nested(self.discriminator, DiscriminatorConfig) or DiscriminatorConfig()
        inp = _nested(self.input, InputNormalization)
        if inp is None:
            channels = 3 if generator is None else generator.in_channels
            inp = _input_for(self.variant, channels=channels)
        if generator is None:
            generator = generator_for(
                self.variant, patch_size=self.patch_size, in_channels=inp.channels
            )
        _check_nested(self.variant, generator, inp)
        object.__setattr__(self, "generator", generator)
        object.__setattr__(self, "discriminator", discriminator)
        object.__setattr__(self, "input", inp)

    # -- what the config implies --------------------------------------------------------------

    def loss_weights(self) -> LossWeights:
        """The weights used: ``weights`` or the paper's for the variant."""
        from vstain_dask.models.losses import LossWeights

        return self.weights if self.weights is not None else LossWeights.for_variant(self.variant)

    def with_variant(self, variant: Variant | str) -> TrainConfig:
        """These settings for another variant.

        A generator of another kind is replaced by the variant's with the same input
        channels, ``ngf`` and ``n_blocks`` (a U-Net's depth follows the patch size); the input
        is inverted for ``cyclegan-invct`` only.
        """
        variant = as_enum(Variant, variant, "variant")
        generator = self.generator
        if GeneratorConfig.for_variant(variant).kind is not generator.kind:
            generator = generator_for(
                variant,
                patch_size=self.patch_size,
                in_channels=generator.in_channels,
                ngf=generator.ngf,
                n_blocks=generator.n_blocks,
                depth=generator.depth if generator.kind is GeneratorKind.UNET else None,
            )
        inp = dataclasses.replace(self.input, invert=variant is Variant.CYCLEGAN_INVCT)
        return dataclasses.replace(self, variant=variant, generator=generator, input=inp)

    def differences(self, other: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The settings in which ``other`` (a :meth:`to_dict`, nested or flat) differs from
        this config: name -> (other's value, this one's). A nested setting is named by its
        flat name where it has one (``ngf``), else as ``generator.upsample`` and the like."""
        mine, theirs = _leaves(self.to_dict()), _leaves(nest_flat(other))
        out: dict[str, tuple[Any, Any]] = {}
        for key, value in mine.items():
            if theirs.get(key) != value:
                out.setdefault(_FLAT_OF.get(key, key), (theirs.get(key), value))
        return out

    def check_resume(self, saved: Mapping[str, Any]) -> None:
        """Refuse to resume a run saved with ``saved`` (its :meth:`to_dict`, nested or flat)
        under settings that change what is computed; the epochs, workers, device, cache and
        logging may change."""
        differ = [(k, v) for k, v in self.differences(saved).items() if k not in _RESUMABLE]
        if differ:
            shown = ", ".join(f"{k}: run {run!r}, now {now!r}" for k, (run, now) in differ[:4])
            raise InputError(
                f"--resume (resume=True) needs the run's settings; these differ ({shown}); "
                "resume with the "
                "run's settings or start a new run"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON and checkpoints; the nested configs as their ``to_dict``."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["variant"] = self.variant.value
        d["l1_normalization"] = self.l1_normalization.value
        d["betas"] = list(self.betas)
        d["weights"] = None if self.weights is None else self.weights.to_dict()
        d["augment"] = self.augment.to_dict()
        for name in _NESTED:
            d[name] = getattr(self, name).to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`, which also reads the flat form of configs written
        before the nesting (:func:`nest_flat`); unknown fields are an error."""
        d = nest_flat(data)
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise InputError(f"TrainConfig got unknown field(s) {unknown}")
        if d.get("betas") is not None:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

#: settings that a resumed run keeps from its own config where they are not given
_KEPT_ON_RESUME = ("epochs", "l1_normalization")


def resumed_settings(run_dir: str | Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` (of a run to resume in ``run_dir``) with the epochs and the L1
    normalization that are not given (None) taken from the run's ``config.json`` (that of its
    first fold, ``fold0/config.json``, for all folds of a cross-validation), so that a run
    started before their defaults changed (200 epochs, L1 divided by the mask's area) resumes
    as it ran. Left as they are where the run directory holds no readable config (the resume
    then says what is missing)."""
    import json

    out = dict(settings)
    path = Path(run_dir) / "config.json"
    if not path.exists():
        path = Path(run_dir) / "fold0" / "config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        saved = _written_before(saved["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return out
    for name in _KEPT_ON_RESUME:
        if out.get(name) is None and name in saved:
            out[name] = saved[name]
    return out


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What a trained model records of how it was made, besides its settings.

    Attributes
    ----------
    command : str or None
        The command line, stored in the model and shown on its card.
    notes : str or None
        Free text for the model card.
    """

    command: str | None = None
    notes: str | None = None


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes
    ----------
    run_dir : Path
    model : Path
        The final generator (``model.pt``).
    last : Path
        The training checkpoint (``checkpoints/last.pt``).
    minima : dict of str -> Path
        Generator at the lowest epoch mean of each loss term.
    epochs : int
        Epochs completed.
    seconds : float
        Wall time of this call.
    split : dict
    history : list of dict
        Per-epoch rows of ``losses.csv``.
    metrics : dict
        Final losses and validation metrics, as stored in the model.
    """

    run_dir: Path
    model: Path
    last: Path
    minima: dict[str, Path]
    epochs: int
    seconds: float
    split: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
