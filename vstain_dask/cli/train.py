"""``vstain-dask train``: train a model (or all cross-validation folds) on a pairs store."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vstain_dask.cli._options import cluster_options, command_line, exit_interrupted
from vstain_dask.models.config import (
    DISCRIMINATOR_ALIASES,
    DiscriminatorKind,
    L1Normalization,
    Variant,
)
from vstain_dask.train.config import (  # plain Python: no torch at --help
    FLAT_NAMES,
    TrainConfig,
    flat_field,
    resumed_settings,
)

_VARIANTS = tuple(v.value for v in Variant)
_DISCRIMINATORS = (*(k.value for k in DiscriminatorKind), *DISCRIMINATOR_ALIASES)
_L1 = tuple(n.value for n in L1Normalization)
_VARIANT_HELP = "mod-cyclegan is the paper's method; the others are its baselines."
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
#: options without a default on the command line: a run that is resumed keeps its own
_UNSET_DEFAULTS = ("epochs", "l1_normalization")


def _default_and_metadata(name: str) -> tuple[Any, Any]:
    """The default and metadata of the ``TrainConfig`` field ``name``, or of the nested
    setting of that flat name (``ngf``: the generator's)."""
    if name in FLAT_NAMES:
        return flat_field(name)
    return _FIELDS[name].default, _FIELDS[name].metadata


def _option(name: str, flag: str | None = None, **kwargs: Any) -> Callable:
    """The option ``--name`` (or ``flag``) of the ``TrainConfig`` setting ``name`` (a field,
    or the flat name of a nested one): its default, and for an integer its range, come from
    the field; a bool becomes ``--name/--no-name``."""
    default, metadata = _default_and_metadata(name)
    flag = flag or "--" + name.replace("_", "-")
    if isinstance(default, bool):
        flag = f"{flag}/--no-{flag[2:]}"
    if "min" in metadata:
        kwargs.setdefault("type", click.IntRange(metadata["min"], metadata["max"]))
    if default is not None:
        if isinstance(kwargs.get("type"), click.Choice):
            default = str(default)  # a choice's value: "mod-cyclegan", "3"
        kwargs.setdefault("default", default)
        kwargs.setdefault("show_default", True)
    return click.option(flag, name, **kwargs)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("pairs_path", metavar="PAIRS.zarr", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Run directory (model, checkpoints, loss log and curves).",
)
@_option("variant", type=click.Choice(_VARIANTS), help=_VARIANT_HELP)
@_option(
    "epochs",
    default=None,
    help=f"Epochs  [default: {_FIELDS['epochs'].default}, the paper's; with --resume: the run's]",
)
@_option("batch_size")
@_option("patch_size", help="Patch side in pixels.")
@_option("patches_per_pair", help="Patches drawn from each pair per epoch.")
@_option("workers", help="Patch-reading processes (0: read in the training process).")
@_option("device", help="auto, cpu, cuda or cuda:N.")
@_option("seed")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Torch threads of the training process  [default: torch's choice]",
)
@_option("lr", type=click.FloatRange(min=0, min_open=True))
@_option(
    "decay_start", help="Epoch from which the learning rate decays linearly to 0  [default: none]"
)
@_option("ngf", help="Generator base features.")
@_option("n_blocks", help="Residual blocks of the ResNet generator.")
@_option("ndf", help="Discriminator base features.")
@_option(
    "discriminator_kind",
    "--discriminator",
    type=click.Choice(_DISCRIMINATORS),
    help="PatchGAN design: pytorch-gan (16x16 map for 256 px patches), the one the paper's "
    "code base, PyTorch-GAN's CycleGAN, builds; or the 70x70 PatchGAN the paper's text names "
    "(patchgan-70, also patchgan70: 30x30 map).",
)
@_option(
    "disc_layers",
    help="Strided discriminator layers  [default: 4 for pytorch-gan, 3 for patchgan-70]",
)
@_option("unet_depth", help="Pix2Pix U-Net downsamplings  [default: log2(patch size), at most 8]")
@_option(
    "ct_channels",
    type=click.Choice(["3", "1"]),
    help="CT repeated to 3 channels (the paper) or fed as 1 (no identity loss).",
)
@_option("buffer_size", help="Image buffer of the CycleGAN discriminators.")
@_option("cache", help="Keep pairs in memory in each reading process (small data sets).")
@click.option("--no-augment", is_flag=True, help="Random crops only: no rescale, flips, jitter.")
@_option(
    "mask_l1",
    help="Multiply every L1 term by the correspondence mask (the paper); off: whole patches.",
)
@_option(
    "l1_normalization",
    default=None,
    type=click.Choice(_L1),
    help="Masked L1 terms: pixels (the paper's: the mean over all pixels of the masked images) "
    "or mask (divided by the mask's area: 1/coverage times as much)  [default: "
    f"{_FIELDS['l1_normalization'].default.value}; with --resume: the run's]",
)
@_option("folds", help="Cross-validation folds (stratified by material; a test set is held out).")
@_option("fold", help="Fold to validate on (0-based).")
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    help="Samples held out for testing  [default: 0.2 with folds, else 0]",
)
@_option("val_every", help="Validate every N epochs (0: never).")
@cluster_options(
    default=None,
    cluster_help="Train all folds in parallel on a dask cluster, one fold per worker.",
    jobs_help="Cluster workers / SLURM jobs  [default: one per fold]",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def train(
    pairs_path,
    out_dir,
    threads,
    no_augment,
    cluster_config,
    resume,
    overwrite,
    progress,
    **settings,
):
    """Train a CT -> stain model on the pairs in PAIRS.zarr.

    Examples: `vstain-dask train pairs.zarr -o run` (the paper's mod-cyclegan);
    `--folds 5 --fold 2` (one fold); `--folds 5 --cluster cuda` (all folds, one per GPU).
    """
    if threads:
        import torch

        torch.set_num_threads(threads)
    if resume:
        settings = resumed_settings(out_dir, settings)
    config = _config(settings, no_augment=no_augment)
    all_folds = _all_folds(config, cluster_config)
    command = command_line()
    try:
        if all_folds:
            _train_all_folds(
                pairs_path,
                out_dir,
                config,
                command=command,
                resume=resume,
                overwrite=overwrite,
                cluster_config=cluster_config,
            )
            return

        from vstain_dask.train.trainer import Provenance
        from vstain_dask.train.trainer import train as run_training

        result = run_training(
            pairs_path,
            out_dir,
            config,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            provenance=Provenance(command=command),
        )
        click.echo(_summary(result, config.variant.value))
    except KeyboardInterrupt:
        exit_interrupted(_interrupted(out_dir, all_folds=all_folds))


def _config(settings: dict[str, Any], *, no_augment: bool) -> TrainConfig:
    """The run's settings: ``settings`` are the options named after the settings of
    ``TrainConfig`` (the nested ones by their flat names, ``ngf``...)."""
    from vstain_dask.train.augment import AugmentConfig

    settings = dict(settings, ct_channels=int(settings["ct_channels"]))  # a choice: "3" or "1"
    for name in _UNSET_DEFAULTS:  # not given (and not resumed): the field's default
        if settings.get(name) is None:
            settings[name] = _FIELDS[name].default
    augment = AugmentConfig.none() if no_augment else AugmentConfig()
    return TrainConfig.from_dict({**settings, "augment": augment})


def _all_folds(config: TrainConfig, cluster_config: Any) -> bool:
    """Whether the command trains all folds (on a cluster), refusing a cluster without them
    and folds without --fold or a cluster."""
    from vstain_dask.errors import InputError

    folds = config.folds
    all_folds = folds > 1 and config.fold is None
    if cluster_config is not None and not all_folds:
        raise InputError(
            "--cluster/--scheduler train all folds in parallel: give --folds K (K > 1) without "
            "--fold"
        )
    if all_folds and cluster_config is None:
        raise InputError(
            f"--folds {folds} needs --fold K (0..{folds - 1}) to train one fold, or --cluster "
            "local|cuda|slurm to train all folds in parallel"
        )
    return all_folds


def _interrupted(out_dir: Path, *, all_folds: bool) -> str:
    """What an interrupted training run left behind, and how to continue it."""
    import json

    resume = "rerun the same command with --resume to continue from the last completed epoch"
    if all_folds:
        return f"interrupted: the folds in {out_dir} stopped; {resume}"
    try:
        done = len(json.loads((out_dir / "losses.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        done = 0
    if done == 0:
        return f"interrupted: {out_dir} holds no completed epoch; rerun the command to start again"
    return f"interrupted: {out_dir} holds {done} completed epoch(s); {resume}"


def _summary(result, variant: str) -> str:
    h = result.history[-1] if result.history else {}
    losses = ", ".join(
        f"{k} {v:.4g}"
        for k, v in h.items()
        if k not in ("epoch", "lr", "seconds", "samples_per_s", "data_wait_fraction")
        and not k.startswith("val_")
    )
    val = ""
    if "val_ssim" in h:
        val = f"; validation SSIM {h['val_ssim']:.3f}, PSNR {h['val_psnr']:.2f} dB"
    speed = f" ({h['samples_per_s']:.1f} patches/s)" if h.get("samples_per_s") else ""
    split = result.split
    return (
        f"trained {variant} for {result.epochs} epochs in {result.seconds:.0f} s{speed} on "
        f"{len(split['train'])} pairs ({len(split['val'])} validation, {len(split['test'])} "
        f"test held out); last epoch: {losses}{val}\n"
        f"model: {result.model}\ncheckpoints: {result.last.parent}\n"
        f"loss log: {result.run_dir / 'losses.csv'}, {result.run_dir / 'loss_curve.png'}"
    )


def _train_all_folds(
    pairs_path,
    out_dir,
    config,
    *,
    command,
    resume,
    overwrite,
    cluster_config,
):
    import dataclasses

    from vstain_dask.cluster import ClusterKind, dashboard_url
    from vstain_dask.train.folds import FoldCallbacks, train_folds

    # one worker per fold, unless --jobs says otherwise; a CUDA cluster has one per GPU
    if cluster_config.workers is None and cluster_config.kind is not ClusterKind.CUDA:
        cluster_config = dataclasses.replace(cluster_config, workers=config.folds)

    def on_start(client):
        n = len(client.scheduler_info().get("workers", {}))
        click.echo(
            f"dashboard: {dashboard_url(client) or 'not available'} ({n} worker(s)); "
            f"training {config.folds} folds",
            err=True,
        )

    def on_done(result):
        h = result.history[-1] if result.history else {}
        val = f", validation SSIM {h['val_ssim']:.3f}" if "val_ssim" in h else ""
        click.echo(
            f"fold {result.split['fold']} done in {result.seconds:.0f} s{val}: {result.model}",
            err=True,
        )

    results = train_folds(
        pairs_path,
        out_dir,
        config,
        cluster=cluster_config,
        resume=resume,
        overwrite=overwrite,
        command=command,
        callbacks=FoldCallbacks(on_start=on_start, on_done=on_done),
    )
    ssims = [r.history[-1].get("val_ssim") for r in results if r.history]
    ssims = [s for s in ssims if s is not None]
    mean = f"; mean validation SSIM {sum(ssims) / len(ssims):.3f}" if ssims else ""
    click.echo(f"trained {len(results)} folds of {config.variant.value} into {out_dir}{mean}")
    for r in results:
        click.echo(f"  fold {r.split['fold']}: {r.model}")
