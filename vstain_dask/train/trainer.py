"""Training the paper's paired CycleGAN and its baselines from a pairs store.

Variants (:class:`~vstain_dask.models.Variant`), with the loss weights of
:class:`~vstain_dask.models.LossWeights`:

- ``mod-cyclegan``, the paper's method: ``L_G = L_gan + 6 L_cyc + 3 L_id + 6 L_px + 1 L_gs``;
- ``cyclegan``: the standard CycleGAN, ``L_gan + 6 L_cyc + 3 L_id``;
- ``cyclegan-invct``: the same on inverted CT (``InputNormalization.invert``);
- ``pix2pix``: U-Net generator and conditional PatchGAN, ``L_gan + 20 L1``.

Every L1 term (cycle, identity, pixelwise, Pix2Pix) is multiplied by the correspondence mask
(:func:`~vstain_dask.models.masked_l1`), so pixels where CT and histology do not show the same
tissue teach nothing. The GAN losses are least-squares. Discriminators of the CycleGAN variants
see generated images through an image buffer of 50 (Shrivastava et al.); Pix2Pix's conditional
discriminator sees the current batch, as in the reference code. Adam with lr 2e-4 and betas
(0.5, 0.999); an optional linear decay of the learning rate to zero from ``decay_start``.

CT enters the networks as the paper's code fed it: greyscale repeated to 3 channels (hence the
greyscale loss on generated CT). ``ct_channels=1`` feeds one channel instead; then the identity
loss is left out (the two domains have different channel counts) and the greyscale loss is 0.

On CUDA the forward passes run under bf16 autocast with channels-last memory (losses in
float32). A run directory holds::

    config.json            the TrainConfig and the split
    model.pt, model.md     the final CT -> stain generator and its card (what ``stain`` uses)
    checkpoints/last.pt    all networks, optimizers, schedulers, image buffers, RNG states and the
                           epoch: ``--resume`` continues from it exactly
    checkpoints/min_<term>.pt   the generator at the epoch of lowest mean of each generator loss
                           term (and of the total, ``min_G``), as the paper kept them
    losses.csv, losses.json     per-epoch mean losses, learning rate, samples/s, data wait,
                           validation metrics
    steps.csv              losses every ``log_every`` steps
    loss_curve.png         the curves (redrawn at most once a minute, and at the end)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vstain_dask.errors import CheckpointError, InputError, OutputExistsError, as_enum
from vstain_dask.intensity import CT_INPUT_HIGH, CT_INPUT_LOW
from vstain_dask.models.config import (
    DiscriminatorConfig,
    GeneratorConfig,
    InputNormalization,
    Variant,
)
from vstain_dask.models.losses import (
    LossWeights,
    discriminator_loss,
    greyscale_loss,
    lsgan_loss,
    masked_l1,
    supervision_loss,
    total_loss,
)
from vstain_dask.runtime import on_for_cuda, resolve_device
from vstain_dask.train.augment import AugmentConfig

__all__ = [
    "CT_INPUT_LOW",
    "CT_INPUT_HIGH",
    "TrainConfig",
    "TrainResult",
    "ImageBuffer",
    "train",
    "input_normalization",
]

_CONFIG_FILE = "config.json"
_LAST = "last.pt"
# fields that may change when a run is resumed (they do not change what is computed)
_RESUMABLE = {"epochs", "workers", "device", "cache", "val_every", "log_every"}


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
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
    epochs: int = 200
    batch_size: int = 4
    patch_size: int = 256
    patches_per_pair: int = 100
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    decay_start: int | None = None
    ngf: int = 64
    n_blocks: int = 9
    ndf: int = 64
    disc_layers: int | None = None
    unet_depth: int | None = None
    ct_channels: int = 3
    buffer_size: int = 50
    weights: LossWeights | None = None
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    cache: bool = False
    autocast: bool | None = None
    channels_last: bool | None = None
    folds: int = 1
    fold: int | None = None
    test_fraction: float | None = None
    val_every: int = 1
    log_every: int = 10
    histology_normalization: bool = True
    mask_l1: bool = True
    ct_low: float = CT_INPUT_LOW
    ct_high: float = CT_INPUT_HIGH

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", as_enum(Variant, self.variant, "variant"))
        for name, minimum in (
            ("epochs", 1),
            ("batch_size", 1),
            ("patch_size", 8),
            ("patches_per_pair", 1),
            ("workers", 0),
            ("seed", 0),
            ("ngf", 1),
            ("n_blocks", 0),
            ("ndf", 1),
            ("buffer_size", 0),
            ("folds", 1),
            ("val_every", 0),
            ("log_every", 1),
        ):
            object.__setattr__(self, name, _check_int(getattr(self, name), name, minimum))
        for name in ("cache", "histology_normalization", "mask_l1"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("decay_start", "disc_layers", "unet_depth", "fold"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, _check_int(v, name, 0))
        if self.decay_start is not None and self.decay_start >= self.epochs:
            raise InputError(
                f"decay_start must be below epochs ({self.epochs}), got {self.decay_start}"
            )
        if self.unet_depth is not None and not 2 <= self.unet_depth <= 12:
            raise InputError(f"unet_depth must be in 2..12, got {self.unet_depth}")
        if self.ct_channels not in (1, 3):
            raise InputError(f"ct_channels must be 1 or 3, got {self.ct_channels!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a positive number, got {self.lr!r}")
        b = tuple(float(v) for v in self.betas)
        if len(b) != 2 or not all(0 <= v < 1 for v in b):
            raise InputError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", b)
        if self.weights is not None and not isinstance(self.weights, LossWeights):
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


def input_normalization(config: TrainConfig) -> InputNormalization:
    """The :class:`InputNormalization` a model trained with ``config`` expects."""
    return config.normalization()


# -- image buffer ----------------------------------------------------------------------------------


class ImageBuffer:
    """The image pool of Shrivastava et al. (2017), as CycleGAN uses it.

    Each pushed image goes into the buffer while it holds fewer than ``size`` images and is
    returned; once full, with probability 1/2 a random stored image is returned and replaced by
    the new one, otherwise the new one is returned. Seeded and checkpointable.
    """

    def __init__(self, size: int = 50, *, seed: int = 0) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self._rng = np.random.default_rng(seed)

    def push_and_pop(self, images: torch.Tensor) -> torch.Tensor:
        """Push a batch ``(N, C, H, W)`` and return a batch of the same shape."""
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img[None]
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif self._rng.random() < 0.5:
                i = int(self._rng.integers(0, self.size))
                out.append(self.images[i].clone())
                self.images[i] = img.clone()
            else:
                out.append(img)
        return torch.cat(out)

    def state_dict(self) -> dict[str, Any]:
        """Images (a tensor) and the generator state (JSON text), for checkpoints."""
        images = torch.cat(self.images).cpu() if self.images else torch.empty(0)
        return {"images": images, "rng": json.dumps(self._rng.bit_generator.state)}

    def load_state_dict(
        self, state: Mapping[str, Any], *, device: torch.device | None = None
    ) -> None:
        """Restore :meth:`state_dict`."""
        images = state["images"]
        self.images = (
            [images[i : i + 1].to(device) for i in range(images.shape[0])] if images.numel() else []
        )
        self._rng.bit_generator.state = json.loads(state["rng"])


# -- RNG state -------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global state is restored)
    out = {
        "python": json.dumps([py[0], list(py[1]), py[2]]),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def _set_rng_state(state: Mapping[str, Any]) -> None:
    v, internal, gauss = json.loads(state["python"])
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# -- helpers ---------------------------------------------------------------------------------------


def _set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def _lr_factor(epochs: int, decay_start: int | None) -> Callable[[int], float]:
    def factor(epoch: int) -> float:
        if decay_start is None or epoch <= decay_start:
            return 1.0
        return max(0.0, 1.0 - (epoch - decay_start) / (epochs - decay_start))

    return factor


def _components(variant: Variant, weights: LossWeights, ct_channels: int) -> list[str]:
    """Generator loss terms computed for a variant (zero weights and impossible terms left out)."""
    if variant is Variant.PIX2PIX:
        names = ["gan", "pix2pix_l1"]
    else:
        names = ["gan", "cycle", "identity", "pixel", "greyscale"]
        if ct_channels != 3:
            names.remove("identity")  # the domains have different channel counts
            names.remove("greyscale")  # a single channel has no colour
    return [n for n in names if getattr(weights, n) != 0.0]


def _split_for(pairs: Any, config: TrainConfig) -> Any:
    from vstain_dask.pairs import list_pairs
    from vstain_dask.train.split import make_split

    if not isinstance(pairs, str | os.PathLike):
        raise InputError("pairs must be the path of a pairs store")
    return make_split(
        list_pairs(pairs),
        folds=config.folds,
        fold=config.fold,
        test_fraction=config.test_fraction,
        seed=config.seed,
    )


def _prepare_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (run_dir / "checkpoints" / _LAST).exists():
            raise CheckpointError(
                f"--resume: {run_dir} holds no training checkpoint (checkpoints/{_LAST}); start "
                "the run without --resume"
            )
        # a process killed while writing a checkpoint leaves its temporary file behind
        for stale in (run_dir / "checkpoints").glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"run directory {run_dir} exists and is not empty; pass --resume to continue "
                "the run, --overwrite to replace it, or choose another -o"
            )
        if not (run_dir / _CONFIG_FILE).exists():
            raise OutputExistsError(
                f"run directory {run_dir} is not a training run (no {_CONFIG_FILE}), so it is "
                "not deleted even with --overwrite; choose another -o"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def _check_resumable(saved: Mapping[str, Any], config: TrainConfig) -> None:
    now = config.to_dict()
    differ = [k for k in now if k not in _RESUMABLE and saved.get(k) != now[k]]
    if differ:
        shown = ", ".join(f"{k}: run {saved.get(k)!r}, now {now[k]!r}" for k in differ[:4])
        raise InputError(
            f"--resume needs the run's settings; these differ ({shown}); resume with the run's "
            "settings or start a new run"
        )


# -- the loss log ----------------------------------------------------------------------------------


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    (run_dir / "losses.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with open(run_dir / "losses.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for row in history:
            w.writerow(row)


def _plot(run_dir: Path, history: list[dict[str, Any]], components: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = _read_steps(run_dir)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for name in [*components, "G", "D"]:
        if steps and name in steps[0]:
            x = [float(r["epoch"]) - 1 + float(r["fraction"]) for r in steps]
            ax.plot(x, [float(r[name]) for r in steps], lw=0.8, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (every log step)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax = axes[1]
    epochs = [r["epoch"] for r in history]
    for name in ["G", "D", *components]:
        if history and name in history[0]:
            ax.plot(epochs, [r[name] for r in history], marker="o", ms=3, label=name)
    if history and "val_ssim" in history[-1]:
        ax2 = ax.twinx()
        pts = [(r["epoch"], r["val_ssim"]) for r in history if "val_ssim" in r]
        ax2.plot(*zip(*pts, strict=True), "k--", marker="s", ms=3, label="val SSIM")
        ax2.set_ylabel("validation SSIM (masked)")
        ax2.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("epoch mean loss")
    ax.set_yscale("log")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "loss_curve.png", dpi=90)
    plt.close(fig)


def _read_steps(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "steps.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _truncate_steps(run_dir: Path, epoch: int) -> None:
    """Drop step rows of epochs after ``epoch`` (left by an interrupted run)."""
    rows = _read_steps(run_dir)
    if not rows:
        return
    keep = [r for r in rows if int(r["epoch"]) <= epoch]
    with open(run_dir / "steps.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)


# -- the trainer -----------------------------------------------------------------------------------


class _Trainer:
    """The networks, optimizers and buffers of one run, and one training step."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        from vstain_dask.models.networks import build_networks

        self.config = config
        self.device = device
        self.variant = config.variant
        self.weights = config.loss_weights()
        self.components = _components(self.variant, self.weights, config.ct_channels)
        self.use_autocast = on_for_cuda(config.autocast, device)
        self.channels_last = on_for_cuda(config.channels_last, device)
        nets = build_networks(
            self.variant,
            generator=config.generator_config(),
            discriminator=config.discriminator_config(),
            seed=config.seed,
        )
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.nets = {k: v.to(device=device, memory_format=fmt).train() for k, v in nets.items()}
        lr, betas = config.lr, config.betas
        gens = [self.nets["generator"]] + (
            [self.nets["inverse_generator"]] if "inverse_generator" in self.nets else []
        )
        discs = [self.nets["discriminator"]] + (
            [self.nets["inverse_discriminator"]] if "inverse_discriminator" in self.nets else []
        )
        self.generators, self.discriminators = gens, discs
        self.opt_g = torch.optim.Adam([p for n in gens for p in n.parameters()], lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(
            [p for n in discs for p in n.parameters()], lr=lr, betas=betas
        )
        factor = _lr_factor(config.epochs, config.decay_start)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, factor)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, factor)
        cyc = self.variant is not Variant.PIX2PIX
        size = config.buffer_size if cyc else 0
        self.buffer_b = ImageBuffer(size, seed=config.seed * 2 + 101)  # stained images
        self.buffer_a = ImageBuffer(size, seed=config.seed * 2 + 102)  # CT images

    # -- state -------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "optimizers": {"G": self.opt_g.state_dict(), "D": self.opt_d.state_dict()},
            "schedulers": {"G": self.sched_g.state_dict(), "D": self.sched_d.state_dict()},
            "buffers": {"stain": self.buffer_b.state_dict(), "ct": self.buffer_a.state_dict()},
        }

    def load_state(self, networks: Mapping[str, nn.Module], extra: Mapping[str, Any]) -> None:
        for role, net in self.nets.items():
            if role not in networks:
                raise CheckpointError(f"the checkpoint has no {role!r} network")
            net.load_state_dict(networks[role].state_dict())
        self.opt_g.load_state_dict(extra["optimizers"]["G"])
        self.opt_d.load_state_dict(extra["optimizers"]["D"])
        self.sched_g.load_state_dict(extra["schedulers"]["G"])
        self.sched_d.load_state_dict(extra["schedulers"]["D"])
        self.buffer_b.load_state_dict(extra["buffers"]["stain"], device=self.device)
        self.buffer_a.load_state_dict(extra["buffers"]["ct"], device=self.device)

    # -- one step ----------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_autocast
        )

    def _inputs(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        nb = self.device.type == "cuda"
        ct = batch["ct"].to(self.device, non_blocking=nb)
        real_a = ct.expand(-1, self.config.ct_channels, -1, -1).contiguous(memory_format=fmt)
        real_b = batch["histology"].to(self.device, non_blocking=nb).contiguous(memory_format=fmt)
        mask = batch["mask"].to(self.device, non_blocking=nb)
        if not self.config.mask_l1:
            mask = torch.ones_like(mask)
        return real_a, real_b, mask

    def step(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One optimization step; returns the detached losses ``[*components, G, D]``."""
        real_a, real_b, mask = self._inputs(batch)
        if self.variant is Variant.PIX2PIX:
            return self._pix2pix_step(real_a, real_b, mask)
        return self._cyclegan_step(real_a, real_b, mask)

    def _cyclegan_step(self, real_a, real_b, mask) -> torch.Tensor:
        g_ab, g_ba = self.nets["generator"], self.nets["inverse_generator"]
        d_b, d_a = self.nets["discriminator"], self.nets["inverse_discriminator"]
        w = self.weights
        _set_requires_grad(self.discriminators, False)
        self.opt_g.zero_grad(set_to_none=True)
        terms: dict[str, torch.Tensor] = {}
        with self._autocast():
            fake_b = g_ab(real_a)
            fake_a = g_ba(real_b)
            rec_a = g_ba(fake_b)
            rec_b = g_ab(fake_a)
            if "gan" in self.components:
                terms["gan"] = 0.5 * (
                    lsgan_loss(d_b(fake_b).float(), real=True)
                    + lsgan_loss(d_a(fake_a).float(), real=True)
                )
            if "cycle" in self.components:
                terms["cycle"] = 0.5 * (
                    masked_l1(rec_a.float(), real_a, mask) + masked_l1(rec_b.float(), real_b, mask)
                )
            if "identity" in self.components:
                terms["identity"] = 0.5 * (
                    masked_l1(g_ba(real_a).float(), real_a, mask)
                    + masked_l1(g_ab(real_b).float(), real_b, mask)
                )
            if "pixel" in self.components:
                terms["pixel"] = supervision_loss(
                    fake_b.float(), real_b, fake_a.float(), real_a, mask
                )
            if "greyscale" in self.components:
                terms["greyscale"] = greyscale_loss(fake_a.float())
        loss_g = total_loss(terms, w)
        loss_g.backward()
        self.opt_g.step()

        _set_requires_grad(self.discriminators, True)
        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            pool_b = self.buffer_b.push_and_pop(fake_b.detach())
            pool_a = self.buffer_a.push_and_pop(fake_a.detach())
            loss_db = discriminator_loss(d_b(real_b).float(), d_b(pool_b).float())
            loss_da = discriminator_loss(d_a(real_a).float(), d_a(pool_a).float())
        loss_d = 0.5 * (loss_db + loss_da)
        # the two discriminators have disjoint parameters: one backward, one Adam, as two would
        (loss_db + loss_da).backward()
        self.opt_d.step()
        return torch.stack(
            [*(terms[n].detach() for n in self.components), loss_g.detach(), loss_d.detach()]
        )

    def _pix2pix_step(self, real_a, real_b, mask) -> torch.Tensor:
        g, d = self.nets["generator"], self.nets["discriminator"]
        _set_requires_grad(self.discriminators, False)
        self.opt_g.zero_grad(set_to_none=True)
        terms: dict[str, torch.Tensor] = {}
        with self._autocast():
            fake_b = g(real_a)
            if "gan" in self.components:
                terms["gan"] = lsgan_loss(d(fake_b, real_a).float(), real=True)
            if "pix2pix_l1" in self.components:
                terms["pix2pix_l1"] = masked_l1(fake_b.float(), real_b, mask)
        loss_g = total_loss(terms, self.weights)
        loss_g.backward()
        self.opt_g.step()
        _set_requires_grad(self.discriminators, True)
        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            loss_d = discriminator_loss(
                d(real_b, real_a).float(), d(fake_b.detach(), real_a).float()
            )
        loss_d.backward()
        self.opt_d.step()
        return torch.stack(
            [*(terms[n].detach() for n in self.components), loss_g.detach(), loss_d.detach()]
        )


def _save_checkpoint(
    trainer: _Trainer,
    path: Path,
    *,
    config: TrainConfig,
    split: Mapping[str, Any],
    epoch: int,
    best: Mapping[str, Any],
    history: list[dict[str, Any]],
    command: str | None,
) -> None:
    from vstain_dask.models.checkpoint import save_training_checkpoint

    extra = {
        **trainer.state(),
        "epoch": epoch,
        "rng": _rng_state(),
        "best": dict(best),
        "history": json.dumps(history),
        "config": json.dumps(config.to_dict()),
    }
    save_training_checkpoint(
        path,
        networks=trainer.nets,
        normalization=config.normalization(),
        variant=config.variant,
        extra=extra,
        training=_training_meta(config, trainer),
        seed=config.seed,
        split=split,
        metrics=_metrics(history),
        command=command,
        card=False,
        overwrite=True,
    )


def _training_meta(config: TrainConfig, trainer: _Trainer) -> dict[str, Any]:
    meta = config.to_dict()
    meta["weights"] = trainer.weights.to_dict()
    meta["loss_terms"] = list(trainer.components)
    meta["optimizer"] = f"Adam(lr={config.lr:g}, betas={tuple(config.betas)})"
    meta["device"] = str(trainer.device)
    meta["autocast_bf16"] = trainer.use_autocast
    meta["channels_last"] = trainer.channels_last
    meta["masked_l1"] = (
        "every L1 term is multiplied by the correspondence mask"
        if config.mask_l1
        else "L1 terms over whole patches (mask_l1=False)"
    )
    return meta


def _metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    if not history:
        return {}
    last = history[-1]
    out = {f"final_{k}": v for k, v in last.items() if k not in ("epoch",)}
    vals = [r for r in history if "val_ssim" in r]
    if vals:
        best = max(vals, key=lambda r: r["val_ssim"])
        out["best_val_ssim"] = best["val_ssim"]
        out["best_val_ssim_epoch"] = best["epoch"]
    return out


def train(
    pairs: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    notes: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a model on a pairs store (what ``vstain-dask train`` runs).

    Parameters
    ----------
    pairs : path
        The pairs store.
    out_dir : path
        Run directory (see the module docstring for what goes in it).
    config : TrainConfig
        Default: the paper's settings for ``mod-cyclegan``.
    resume : bool
        Continue the run in ``out_dir`` from ``checkpoints/last.pt``: networks, optimizers,
        schedulers, image buffers, RNG states and epoch are restored, so the result is the one
        an uninterrupted run gives. ``config.epochs`` may be larger than the run's.
    overwrite : bool
        Replace an existing run directory.
    progress : bool
        Show a progress bar (stderr) with live losses.
    command : str, optional
        Command line, stored in the model.
    notes : str, optional
        Free text for the model card.
    on_epoch : callable, optional
        Called with each epoch's row of the loss log.

    Returns
    -------
    TrainResult
    """
    from vstain_dask.models.checkpoint import load_training_checkpoint, save_model
    from vstain_dask.train.dataset import PatchDataset, make_loader, scan_pairs
    from vstain_dask.train.metrics import evaluate_generator

    t_start = time.perf_counter()
    config = config or TrainConfig()
    run_dir = Path(out_dir).expanduser()
    pairs_path = Path(pairs).expanduser()
    split = _split_for(pairs_path, config)  # validates the store before anything is written
    device = resolve_device(config.device)
    _prepare_dir(run_dir, resume=resume, overwrite=overwrite)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)

    infos = {
        p.id: p
        for p in scan_pairs(
            pairs_path,
            ids=[*split.train, *split.val],
            histology_normalization=config.histology_normalization,
        )
    }
    train_pairs = [infos[i] for i in split.train]
    val_pairs = [infos[i] for i in split.val]
    norm_data = InputNormalization(
        low=config.ct_low, high=config.ct_high, invert=config.normalization().invert, channels=1
    )
    dataset = PatchDataset(
        pairs_path,
        train_pairs,
        patch_size=config.patch_size,
        patches_per_pair=config.patches_per_pair,
        normalization=norm_data,
        augment=config.augment,
        seed=config.seed,
        cache=config.cache,
    )

    trainer = _Trainer(config, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    start_epoch = 0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    split_dict = split.to_dict()
    if resume:
        saved = json.loads((run_dir / _CONFIG_FILE).read_text(encoding="utf-8"))
        _check_resumable(saved["config"], config)
        ckpt = load_training_checkpoint(ckpt_dir / _LAST, device=device)
        trainer.load_state(ckpt.networks, ckpt.extra)
        start_epoch = int(ckpt.extra["epoch"])
        history = json.loads(ckpt.extra["history"])
        best = dict(ckpt.extra["best"])
        _set_rng_state(ckpt.extra["rng"])
        _truncate_steps(run_dir, start_epoch)
    else:
        # the global RNGs only drive dropout (Pix2Pix); seed them for a reproducible run
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)  # noqa: NPY002
        torch.manual_seed(config.seed)
    (run_dir / _CONFIG_FILE).write_text(
        json.dumps(
            {"config": config.to_dict(), "split": split_dict, "pairs": str(pairs_path)}, indent=1
        ),
        encoding="utf-8",
    )

    names = [*trainer.components, "G", "D"]
    n_batches = math.ceil(len(dataset) / config.batch_size)
    steps_file = run_dir / "steps.csv"
    if not steps_file.exists():
        steps_file.write_text(",".join(["epoch", "step", "fraction", *names]) + "\n")
    loader = make_loader(
        dataset,
        batch_size=config.batch_size,
        workers=config.workers,
        start_epoch=start_epoch,
        epochs=config.epochs,
        pin_memory=device.type == "cuda",
    )
    from tqdm import tqdm

    bar = tqdm(
        total=(config.epochs - start_epoch) * n_batches,
        disable=not progress or start_epoch >= config.epochs,
        file=sys.stderr,
        unit="step",
        dynamic_ncols=True,
    )
    it = iter(loader) if start_epoch < config.epochs else None
    last_plot = time.perf_counter()
    try:
        for epoch in range(start_epoch, config.epochs):
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
            t0 = time.perf_counter()
            wait = 0.0
            sums = torch.zeros(len(names), dtype=torch.float64)
            pending: list[torch.Tensor] = []
            n_samples = 0
            step_rows: list[str] = []
            for step in range(n_batches):
                tw = time.perf_counter()
                batch = next(it)
                wait += time.perf_counter() - tw
                losses = trainer.step(batch)
                n_samples += int(batch["ct"].shape[0])
                pending.append(losses)
                if len(pending) == config.log_every or step == n_batches - 1:
                    block = torch.stack(pending).double().cpu()
                    if not torch.isfinite(block).all():
                        raise InputError(
                            f"training diverged: a loss became non-finite in epoch {epoch + 1}; "
                            "lower --lr or check the data"
                        )
                    sums += block.sum(0)
                    pending = []
                    last = block[-1].tolist()
                    step_rows.append(
                        ",".join(
                            [
                                str(epoch + 1),
                                str(step + 1),
                                f"{(step + 1) / n_batches:.6f}",
                                *(f"{v:.6g}" for v in last),
                            ]
                        )
                    )
                    bar.set_postfix(
                        {n: f"{v:.3f}" for n, v in zip(names, last, strict=True)}, refresh=False
                    )
                bar.update(1)
            trainer.sched_g.step()
            trainer.sched_d.step()
            with open(steps_file, "a", encoding="utf-8") as f:
                f.write("\n".join(step_rows) + "\n")
            seconds = time.perf_counter() - t0
            row: dict[str, Any] = {"epoch": epoch + 1}
            row.update({n: float(v) / n_batches for n, v in zip(names, sums.tolist(), strict=True)})
            row["lr"] = float(trainer.opt_g.param_groups[0]["lr"])
            row["seconds"] = round(seconds, 3)
            row["samples_per_s"] = round(n_samples / seconds, 3) if seconds > 0 else None
            row["data_wait_fraction"] = round(wait / seconds, 4) if seconds > 0 else None
            last_epoch = epoch + 1 == config.epochs
            if (
                val_pairs
                and config.val_every
                and ((epoch + 1) % config.val_every == 0 or last_epoch)
            ):
                m = evaluate_generator(
                    trainer.nets["generator"],
                    pairs_path,
                    val_pairs,
                    config.normalization(),
                    device=device,
                )
                row.update({f"val_{k}": v for k, v in m.items()})
            history.append(row)
            # the generator at the lowest epoch mean of each generator term (and of the total)
            for name in [*trainer.components, "G"]:
                if name not in best or row[name] < best[name]["value"]:
                    best[name] = {"value": row[name], "epoch": epoch + 1}
                    save_model(
                        ckpt_dir / f"min_{name}.pt",
                        generator=trainer.nets["generator"],
                        normalization=config.normalization(),
                        variant=config.variant,
                        training=_training_meta(config, trainer),
                        seed=config.seed,
                        split=split_dict,
                        metrics={f"min_{name}": row[name], "epoch": epoch + 1},
                        command=command,
                        notes=f"Generator at the epoch ({epoch + 1}) of the lowest mean {name} loss.",
                        overwrite=True,
                    )
            _save_checkpoint(
                trainer,
                ckpt_dir / _LAST,
                config=config,
                split=split_dict,
                epoch=epoch + 1,
                best=best,
                history=history,
                command=command,
            )
            _write_history(run_dir, history)
            if last_epoch or time.perf_counter() - last_plot > 60:  # plotting costs a second
                _plot(run_dir, history, trainer.components)
                last_plot = time.perf_counter()
            if on_epoch is not None:
                on_epoch(row)
    finally:
        bar.close()
        del it

    metrics = _metrics(history)
    metrics["seconds_this_call"] = round(time.perf_counter() - t_start, 2)
    model = save_model(
        run_dir / "model.pt",
        generator=trainer.nets["generator"],
        normalization=config.normalization(),
        variant=config.variant,
        training=_training_meta(config, trainer),
        seed=config.seed,
        split=split_dict,
        metrics=metrics,
        command=command,
        notes=notes,
        overwrite=True,
    )
    return TrainResult(
        run_dir=run_dir,
        model=model,
        last=ckpt_dir / _LAST,
        minima={k: ckpt_dir / f"min_{k}.pt" for k in best},
        epochs=len(history),
        seconds=time.perf_counter() - t_start,
        split=split_dict,
        history=history,
        metrics=metrics,
    )
