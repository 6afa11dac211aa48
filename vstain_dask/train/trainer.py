"""Training the paper's paired CycleGAN and its baselines from a pairs store.

Variants (:class:`~vstain_dask.models.Variant`), with the loss weights of
:class:`~vstain_dask.models.LossWeights`:

- ``mod-cyclegan``, the paper's method: ``L_G = L_gan + 6 L_cyc + 3 L_id + 6 L_px + 1 L_gs``;
- ``cyclegan``: the standard CycleGAN, ``L_gan + 6 L_cyc + 3 L_id``;
- ``cyclegan-invct``: the same on inverted CT (``InputNormalization.invert``);
- ``pix2pix``: U-Net generator and conditional PatchGAN, ``L_gan + 20 L1``.

Every L1 term (cycle, identity, pixelwise, Pix2Pix) is multiplied by the correspondence mask
(:func:`~vstain_dask.models.masked_l1`), so pixels where CT and histology do not show the same
tissue teach nothing; as in the paper, the masked images are averaged over all their pixels
(``l1_normalization="pixels"``; ``"mask"`` divides by the mask's area instead). The GAN losses are least-squares. Discriminators of the CycleGAN variants
see generated images through an image buffer of 50 (Shrivastava et al.); Pix2Pix's conditional
discriminator sees the current batch, as in the reference code. Adam with lr 2e-4 and betas
(0.5, 0.999); an optional linear decay of the learning rate to zero from ``decay_start``.

CT enters the networks as the paper's code fed it: greyscale repeated to 3 channels (hence the
greyscale loss on generated CT). Fed one channel instead (``input.channels`` 1,
``--ct-channels 1``), it trains without the identity loss (the two domains have different
channel counts), and the greyscale loss is 0.

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

:func:`train` sets a run up and hands it to :func:`fit`, a loop over epochs and steps that calls
the hooks of :mod:`~vstain_dask.train.hooks` (progress, step log, validation, checkpoints, loss
log, plot) at defined points. A loss that becomes NaN or infinite stops the run with a
:class:`~vstain_dask.errors.DivergenceError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vstain_dask.errors import CheckpointError, DivergenceError, InputError, OutputExistsError
from vstain_dask.intensity import CT_INPUT_HIGH, CT_INPUT_LOW
from vstain_dask.models.config import Variant
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
from vstain_dask.train.config import Provenance, TrainConfig, TrainResult
from vstain_dask.train.hooks import (
    LAST,
    EpochCallback,
    Hook,
    LastCheckpoint,
    LossLog,
    LossPlot,
    MinimumCheckpoints,
    ProgressBar,
    Run,
    StepLog,
    Validation,
    final_metrics,
)

__all__ = [
    "CT_INPUT_LOW",
    "CT_INPUT_HIGH",
    "Provenance",
    "TrainConfig",
    "TrainResult",
    "ImageBuffer",
    "fit",
    "train",
    "pairs_prefilter",
]

_CONFIG_FILE = "config.json"


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


def _pairs_pixel_size(pairs: Path) -> float | None:
    """The pixel size (µm) all pairs of the store share, which the model records; None if a
    pair records none (a store written before pairs recorded it).

    Raises
    ------
    InputError
        The pairs differ by more than :data:`~vstain_dask.models.checkpoint.PIXEL_SIZE_TOLERANCE`:
        a model learns textures at one scale.
    """
    from vstain_dask.models.checkpoint import PIXEL_SIZE_TOLERANCE, pixel_sizes_match
    from vstain_dask.pairs import list_pairs

    sizes = {p["id"]: p.get("voxel_size") for p in list_pairs(pairs)}
    if not sizes or any(
        not isinstance(v, int | float) or isinstance(v, bool) or not (math.isfinite(v) and v > 0)
        for v in sizes.values()
    ):
        return None
    finest = min(sizes, key=lambda k: sizes[k])
    coarsest = max(sizes, key=lambda k: sizes[k])
    if not pixel_sizes_match(sizes[finest], sizes[coarsest]):
        raise InputError(
            f"the pairs in {pairs} differ in pixel size by more than {PIXEL_SIZE_TOLERANCE:.0%} "
            f"(pair {finest!r}: {sizes[finest]:g} µm, pair {coarsest!r}: {sizes[coarsest]:g} µm); "
            "a model learns textures at one scale: add all pairs at one pixel size "
            "(`vstain-dask import ... --voxel-size-out UM` resamples a volume)"
        )
    return float(np.median(list(sizes.values())))


def pairs_prefilter(pairs: str | os.PathLike) -> dict[str, Any]:
    """The 3D Gaussian prefilter that ``stain`` should apply with a model trained on
    ``pairs``, as the model records it (``sigma`` in voxels, ``reason``, ``interpolated``
    and ``pairs``: how many pairs were interpolated, of how many).

    A pair written by ``vstain-dask register`` (it holds a ``registration`` record) is a CT
    plane resampled from the volume with linear interpolation, which smooths it; the paper's
    pairs came from such a registration, and it always prefiltered the CT with σ = 1 voxel in
    3D before staining so that the network sees the same smoothness. σ = 1 when most pairs
    are interpolated, 0 otherwise (pairs added with ``pairs add`` and phantom pairs are slices
    as they are).
    """
    from vstain_dask.intensity import PREFILTER_SIGMA
    from vstain_dask.pairs import list_pairs

    entries = list_pairs(pairs)
    n = sum(1 for p in entries if isinstance(p.get("registration"), Mapping))
    interpolated = 2 * n > len(entries)
    what = f"{n} of {len(entries)} training pairs"
    reason = (
        f"{what} were resampled from the CT by registration (interpolated), as the paper's "
        "were; the paper prefiltered with 1 voxel"
        if interpolated
        else f"{what} were resampled by registration; the others are slices as they are"
    )
    sigma = float(PREFILTER_SIGMA) if interpolated else 0.0
    return {"sigma": sigma, "reason": reason, "interpolated": n, "pairs": len(entries)}


def _prepare_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (run_dir / "checkpoints" / LAST).exists():
            raise CheckpointError(
                f"--resume (resume=True): {run_dir} holds no training checkpoint "
                f"(checkpoints/{LAST}); start the run without it"
            )
        # a process killed while writing a checkpoint leaves its temporary file behind
        for stale in (run_dir / "checkpoints").glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"run directory {run_dir} exists and is not empty; pass --resume to continue "
                "the run, --overwrite to replace it (resume=True, overwrite=True in Python), or "
                "choose another -o"
            )
        if not (run_dir / _CONFIG_FILE).exists():
            raise OutputExistsError(
                f"run directory {run_dir} is not a training run (no {_CONFIG_FILE}), so it is "
                "not deleted even with --overwrite (overwrite=True); choose another -o"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


# -- the trainer -----------------------------------------------------------------------------------


class _Trainer:
    """The networks, optimizers and buffers of one run, and one training step."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        from vstain_dask.models.networks import build_networks

        self.config = config
        self.device = device
        self.variant = config.variant
        self.weights = config.loss_weights()
        self.l1 = config.l1_normalization
        self.components = _components(self.variant, self.weights, config.input.channels)
        self.use_autocast = on_for_cuda(config.autocast, device)
        self.channels_last = on_for_cuda(config.channels_last, device)
        nets = build_networks(
            self.variant,
            generator=config.generator,
            discriminator=config.discriminator,
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
        real_a = ct.expand(-1, self.config.input.channels, -1, -1).contiguous(memory_format=fmt)
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
                    masked_l1(rec_a.float(), real_a, mask, normalization=self.l1)
                    + masked_l1(rec_b.float(), real_b, mask, normalization=self.l1)
                )
            if "identity" in self.components:
                terms["identity"] = 0.5 * (
                    masked_l1(g_ba(real_a).float(), real_a, mask, normalization=self.l1)
                    + masked_l1(g_ab(real_b).float(), real_b, mask, normalization=self.l1)
                )
            if "pixel" in self.components:
                terms["pixel"] = supervision_loss(
                    fake_b.float(), real_b, fake_a.float(), real_a, mask, normalization=self.l1
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
                terms["pix2pix_l1"] = masked_l1(fake_b.float(), real_b, mask, normalization=self.l1)
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


# -- the loop --------------------------------------------------------------------------------------


def fit(run: Run, batches: Iterator[Mapping[str, torch.Tensor]], hooks: Sequence[Hook]) -> None:
    """Train ``run`` from ``run.start_epoch`` to ``run.config.epochs``, calling ``hooks``.

    Parameters
    ----------
    run : Run
        The trainer, config and logs; ``run.history`` gets one row per epoch.
    batches : iterator of dict
        ``n_batches`` batches per epoch (``ct``, ``histology``, ``mask``), as
        :func:`~vstain_dask.train.dataset.make_loader` yields them.
    hooks : sequence of Hook
        Called in order at the points :mod:`~vstain_dask.train.hooks` lists.

    Raises
    ------
    DivergenceError
        A loss became NaN or infinite.
    """
    _call(hooks, "on_fit_start", run)
    try:
        for epoch in range(run.start_epoch, run.config.epochs):
            _call(hooks, "on_epoch_start", run, epoch)
            row = _train_epoch(run, batches, hooks, epoch)
            run.history.append(row)  # hooks may still add to the row (validation does)
            _call(hooks, "on_epoch_end", run, row)
    finally:
        _call(hooks, "on_fit_end", run)


def _call(hooks: Sequence[Hook], point: str, *args: Any) -> None:
    for hook in hooks:
        getattr(hook, point)(*args)


def _train_epoch(
    run: Run, batches: Iterator[Mapping[str, torch.Tensor]], hooks: Sequence[Hook], epoch: int
) -> dict[str, Any]:
    """One epoch of steps; returns its row of the loss log (means, lr, speed)."""
    trainer, n_batches = run.trainer, run.n_batches
    t0 = time.perf_counter()
    wait = 0.0
    sums = torch.zeros(len(run.names), dtype=torch.float64)
    pending: list[torch.Tensor] = []
    n_samples = 0
    for step in range(n_batches):
        tw = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - tw
        pending.append(trainer.step(batch))
        n_samples += int(batch["ct"].shape[0])
        # the losses stay on the device between log steps: reading them waits for the device
        if len(pending) == run.config.log_every or step == n_batches - 1:
            block = torch.stack(pending).double().cpu()
            _check_finite(run, block, epoch, step)
            sums += block.sum(0)
            pending = []
            _call(hooks, "on_log", run, epoch, step, block[-1].tolist())
        _call(hooks, "on_step_end", run)
    trainer.sched_g.step()
    trainer.sched_d.step()
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {"epoch": epoch + 1}
    row.update({n: float(v) / n_batches for n, v in zip(run.names, sums.tolist(), strict=True)})
    row["lr"] = float(trainer.opt_g.param_groups[0]["lr"])
    row["seconds"] = round(seconds, 3)
    row["samples_per_s"] = round(n_samples / seconds, 3) if seconds > 0 else None
    row["data_wait_fraction"] = round(wait / seconds, 4) if seconds > 0 else None
    return row


def _check_finite(run: Run, block: torch.Tensor, epoch: int, step: int) -> None:
    """Raise :class:`DivergenceError` naming the first non-finite loss of ``block``, the
    losses ``[*components, G, D]`` of the steps up to ``step`` (0-based) since the last check."""
    bad = (~torch.isfinite(block)).nonzero()
    if not len(bad):
        return
    i, j = (int(v) for v in bad[0])
    at = step + 1 - (block.shape[0] - 1 - i)  # 1-based step of row i
    raise DivergenceError(
        f"training diverged: the {run.names[j]} loss became {float(block[i, j])} at epoch "
        f"{epoch + 1}, step {at} of {run.n_batches}; try a lower learning rate (--lr, now "
        f"{run.config.lr:g}), --decay-start (lr=, decay_start= in Python), or check the pairs "
        "(CT levels, masks)"
    )


def train(
    pairs: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    provenance: Provenance | None = None,
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
    provenance : Provenance, optional
        The command line and the notes the model records.
    on_epoch : callable, optional
        Called with each epoch's row of the loss log.

    Returns
    -------
    TrainResult

    Raises
    ------
    DivergenceError
        A loss became NaN or infinite (``checkpoints/last.pt`` holds the last finite epoch).
    """
    t_start = time.perf_counter()
    config = config or TrainConfig()
    provenance = provenance or Provenance()
    pairs_path = Path(pairs).expanduser()
    run, dataset, val_pairs = _set_up(
        pairs_path,
        Path(out_dir).expanduser(),
        config,
        resume=resume,
        overwrite=overwrite,
        command=provenance.command,
    )
    hooks = _hooks(run, pairs_path, val_pairs, progress=progress, on_epoch=on_epoch)
    _fit_from_loader(run, dataset, hooks)
    return _result(run, t_start, notes=provenance.notes)


def _set_up(
    pairs: Path,
    run_dir: Path,
    config: TrainConfig,
    *,
    resume: bool,
    overwrite: bool,
    command: str | None,
) -> tuple[Run, Any, list[Any]]:
    """The run (a resumed one restored), its patch stream and its validation pairs; checks
    the store before anything is written."""
    split = _split_for(pairs, config)
    pixel_size = _pairs_pixel_size(pairs)
    device = resolve_device(config.device)
    _prepare_dir(run_dir, resume=resume, overwrite=overwrite)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    dataset, val_pairs = _data(pairs, split, config)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run = Run(
        config=config,
        trainer=_Trainer(config, device),
        run_dir=run_dir,
        split=split.to_dict(),
        n_batches=math.ceil(len(dataset) / config.batch_size),
        command=command,
        pixel_size=pixel_size,
        prefilter=pairs_prefilter(pairs),
    )
    _start(run, pairs, resume=resume, device=device)
    return run, dataset, val_pairs


def _hooks(
    run: Run,
    pairs: Path,
    val_pairs: list[Any],
    *,
    progress: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> list[Hook]:
    """The hooks of a run, in the order :mod:`~vstain_dask.train.hooks` lists them."""
    hooks: list[Hook] = [
        ProgressBar(enabled=progress),
        StepLog(),
        Validation(pairs, val_pairs, run.trainer.device),
        MinimumCheckpoints(),
        LastCheckpoint(),
        LossLog(),
        LossPlot(),
    ]
    if on_epoch is not None:
        hooks.append(EpochCallback(on_epoch))
    return hooks


def _fit_from_loader(run: Run, dataset: Any, hooks: Sequence[Hook]) -> None:
    """:func:`fit` on the batches of ``dataset``, from the run's start epoch."""
    from vstain_dask.train.dataset import make_loader

    config = run.config
    loader = make_loader(
        dataset,
        batch_size=config.batch_size,
        workers=config.workers,
        start_epoch=run.start_epoch,
        epochs=config.epochs,
        pin_memory=run.trainer.device.type == "cuda",
    )
    batches = iter(loader) if run.start_epoch < config.epochs else iter(())
    try:
        fit(run, batches, hooks)
    finally:
        del batches  # stops the loader's worker processes


def _result(run: Run, t_start: float, *, notes: str | None) -> TrainResult:
    """Save the final generator (``model.pt``) and say what the run produced."""
    metrics = final_metrics(run.history)
    metrics["seconds_this_call"] = round(time.perf_counter() - t_start, 2)
    model = run.save_generator(run.run_dir / "model.pt", metrics=metrics, notes=notes)
    return TrainResult(
        run_dir=run.run_dir,
        model=model,
        last=run.checkpoints / LAST,
        minima={k: run.checkpoints / f"min_{k}.pt" for k in run.best},
        epochs=len(run.history),
        seconds=time.perf_counter() - t_start,
        split=run.split,
        history=run.history,
        metrics=metrics,
    )


def _data(pairs: Path, split: Any, config: TrainConfig) -> tuple[Any, list[Any]]:
    """The patch stream of the training pairs, and the validation pairs."""
    from vstain_dask.train.dataset import PatchDataset, scan_pairs

    infos = {
        p.id: p
        for p in scan_pairs(
            pairs,
            ids=[*split.train, *split.val],
            histology_normalization=config.histology_normalization,
        )
    }
    norm_data = dataclasses.replace(config.input, channels=1)  # the patch stream's one channel
    dataset = PatchDataset(
        pairs,
        [infos[i] for i in split.train],
        patch_size=config.patch_size,
        patches_per_pair=config.patches_per_pair,
        normalization=norm_data,
        augment=config.augment,
        seed=config.seed,
        cache=config.cache,
    )
    return dataset, [infos[i] for i in split.val]


def _start(run: Run, pairs: Path, *, resume: bool, device: torch.device) -> None:
    """Restore a resumed run from its last checkpoint, or seed a new one; write config.json."""
    if resume:
        saved = json.loads((run.run_dir / _CONFIG_FILE).read_text(encoding="utf-8"))
        run.config.check_resume(saved["config"])
        LastCheckpoint.restore(run, device)
    else:
        # the global RNGs only drive dropout (Pix2Pix); seed them for a reproducible run
        seed = run.config.seed
        random.seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002
        torch.manual_seed(seed)
    config_json = {"config": run.config.to_dict(), "split": run.split, "pairs": str(pairs)}
    (run.run_dir / _CONFIG_FILE).write_text(json.dumps(config_json, indent=1), encoding="utf-8")
