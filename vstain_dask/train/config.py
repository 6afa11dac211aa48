"""The settings of a training run and what a run produced; plain Python, no torch.

:class:`TrainConfig` is the one place where the training defaults and the ranges of its integer
settings are stated: the ``vstain-dask train`` options take theirs from its fields (an integer
field's ``metadata`` holds its ``min`` and ``max``), so ``vstain-dask train --help`` answers
without importing torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vstain_dask.errors import InputError, as_enum
from vstain_dask.intensity import CT_INPUT_HIGH, CT_INPUT_LOW
from vstain_dask.models.config import (
    DiscriminatorConfig,
    GeneratorConfig,
    InputNormalization,
    Variant,
)
from vstain_dask.train.augment import AugmentConfig

if TYPE_CHECKING:
    from vstain_dask.models.losses import LossWeights

__all__ = ["TrainConfig", "TrainResult"]

# fields that may change when a run is resumed (they do not change what is computed)
_RESUMABLE = {"epochs", "workers", "device", "cache", "val_every", "log_every"}


def _int(default: int | None, minimum: int, maximum: int | None = None) -> Any:
    """An integer field with its range in ``metadata`` (checked in ``__post_init__``, offered
    by the command line)."""
    return dataclasses.field(default=default, metadata={"min": minimum, "max": maximum})


def _check_int(value: Any, name: str, minimum: int, maximum: int | None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        expected = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise InputError(f"{name} must be an integer {expected}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; defaults are the paper's.

    Parameters
    ----------
    variant : Variant
        ``mod-cyclegan`` (the paper's), ``cyclegan``, ``cyclegan-invct`` or ``pix2pix``.
    epochs : int
        Total epochs (a resumed run continues up to this number).
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
    ngf, n_blocks, ndf, disc_layers, unet_depth : int
        Architecture: generator base features (64), ResNet blocks (9), discriminator base
        features (64) and strided layers (None: the design's 4), U-Net downsamplings (None:
        ``log2(patch_size)``, at most 8).
    ct_channels : int
        3 (the paper: greyscale repeated) or 1.
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
    ct_low, ct_high : float
        Normalized CT values mapped to -1 and +1 at the network input.
    """

    variant: Variant = Variant.MOD_CYCLEGAN
    epochs: int = _int(200, 1)
    batch_size: int = _int(4, 1)
    patch_size: int = _int(256, 8)
    patches_per_pair: int = _int(100, 1)
    workers: int = _int(2, 0)
    device: str = "auto"
    seed: int = _int(0, 0)
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    decay_start: int | None = _int(None, 0)
    ngf: int = _int(64, 1)
    n_blocks: int = _int(9, 0)
    ndf: int = _int(64, 1)
    disc_layers: int | None = _int(None, 1, 8)
    unet_depth: int | None = _int(None, 2, 12)
    ct_channels: int = 3
    buffer_size: int = _int(50, 0)
    weights: LossWeights | None = None
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    cache: bool = False
    autocast: bool | None = None
    channels_last: bool | None = None
    folds: int = _int(1, 1)
    fold: int | None = _int(None, 0)
    test_fraction: float | None = None
    val_every: int = _int(1, 0)
    log_every: int = _int(10, 1)
    histology_normalization: bool = True
    mask_l1: bool = True
    ct_low: float = CT_INPUT_LOW
    ct_high: float = CT_INPUT_HIGH

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", as_enum(Variant, self.variant, "variant"))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "min" in f.metadata and not (value is None and f.default is None):
                checked = _check_int(value, f.name, f.metadata["min"], f.metadata["max"])
                object.__setattr__(self, f.name, checked)
        for name in ("cache", "histology_normalization", "mask_l1"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.decay_start is not None and self.decay_start >= self.epochs:
            raise InputError(
                f"decay_start must be below epochs ({self.epochs}), got {self.decay_start}"
            )
        if self.ct_channels not in (1, 3):
            raise InputError(f"ct_channels must be 1 or 3, got {self.ct_channels!r}")
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
        if not self.ct_high > self.ct_low:
            raise InputError(f"ct_high must exceed ct_low, got {self.ct_low}, {self.ct_high}")
        if not isinstance(self.device, str) or not self.device:
            raise InputError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        # fold and test_fraction are checked by make_split, with the data in hand

    # -- what the config implies --------------------------------------------------------------

    def loss_weights(self) -> LossWeights:
        """The weights used: ``weights`` or the paper's for the variant."""
        from vstain_dask.models.losses import LossWeights

        return self.weights if self.weights is not None else LossWeights.for_variant(self.variant)

    def normalization(self) -> InputNormalization:
        """Normalized CT -> network input of the trained generator."""
        return InputNormalization(
            low=float(self.ct_low),
            high=float(self.ct_high),
            invert=self.variant is Variant.CYCLEGAN_INVCT,
            channels=self.ct_channels,
            ct_normalized=True,
        )

    def generator_config(self) -> GeneratorConfig:
        """The CT -> stain generator's architecture."""
        changes: dict[str, Any] = {"in_channels": self.ct_channels, "ngf": self.ngf}
        if self.variant is Variant.PIX2PIX:
            depth = self.unet_depth or min(8, max(2, int(math.log2(self.patch_size))))
            changes["depth"] = depth
        else:
            changes["n_blocks"] = self.n_blocks
        return GeneratorConfig.for_variant(self.variant, **changes)

    def discriminator_config(self) -> DiscriminatorConfig:
        """The discriminator template (channels are set per role)."""
        return DiscriminatorConfig(ndf=self.ndf, n_layers=self.disc_layers)

    def check_resume(self, saved: Mapping[str, Any]) -> None:
        """Refuse to resume a run saved with ``saved`` (its :meth:`to_dict`) under settings that
        change what is computed; the epochs, workers, device, cache and logging may change."""
        now = self.to_dict()
        differ = [k for k in now if k not in _RESUMABLE and saved.get(k) != now[k]]
        if differ:
            shown = ", ".join(f"{k}: run {saved.get(k)!r}, now {now[k]!r}" for k in differ[:4])
            raise InputError(
                f"--resume needs the run's settings; these differ ({shown}); resume with the "
                "run's settings or start a new run"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON and checkpoints."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["variant"] = self.variant.value
        d["betas"] = list(self.betas)
        d["weights"] = None if self.weights is None else self.weights.to_dict()
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown fields are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"TrainConfig got unknown field(s) {unknown}")
        d = dict(data)
        if d.get("betas") is not None:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


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
