"""``vstain-dask train``: train a model (or all cross-validation folds) on a pairs store."""

from __future__ import annotations

from pathlib import Path

import click

from vstain_dask.cli._options import cluster_options, command_line, exit_interrupted
from vstain_dask.models.config import Variant  # plain Python: no torch at --help

_VARIANTS = tuple(v.value for v in Variant)


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
@click.option(
    "--variant",
    type=click.Choice(_VARIANTS),
    default="mod-cyclegan",
    show_default=True,
    help="mod-cyclegan is the paper's method; the others are its baselines.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--patch-size",
    type=click.IntRange(min=8),
    default=256,
    show_default=True,
    help="Patch side in pixels.",
)
@click.option(
    "--patches-per-pair",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Patches drawn from each pair per epoch.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Patch-reading processes (0: read in the training process).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Torch threads of the training process  [default: torch's choice]",
)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-4, show_default=True)
@click.option(
    "--decay-start",
    type=click.IntRange(min=0),
    help="Epoch from which the learning rate decays linearly to 0  [default: none]",
)
@click.option(
    "--ngf",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Generator base features.",
)
@click.option(
    "--n-blocks",
    type=click.IntRange(min=0),
    default=9,
    show_default=True,
    help="Residual blocks of the ResNet generator.",
)
@click.option(
    "--ndf",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Discriminator base features.",
)
@click.option(
    "--disc-layers",
    type=click.IntRange(min=1, max=8),
    help="Strided discriminator layers  [default: 4]",
)
@click.option(
    "--unet-depth",
    type=click.IntRange(min=2, max=12),
    help="Pix2Pix U-Net downsamplings  [default: log2(patch size), at most 8]",
)
@click.option(
    "--ct-channels",
    type=click.Choice(["3", "1"]),
    default="3",
    show_default=True,
    help="CT repeated to 3 channels (the paper) or fed as 1 (no identity loss).",
)
@click.option(
    "--buffer-size",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Image buffer of the CycleGAN discriminators.",
)
@click.option(
    "--cache/--no-cache",
    default=False,
    show_default=True,
    help="Keep pairs in memory in each reading process (small data sets).",
)
@click.option("--no-augment", is_flag=True, help="Random crops only: no rescale, flips, jitter.")
@click.option(
    "--mask-l1/--no-mask-l1",
    default=True,
    show_default=True,
    help="Multiply every L1 term by the correspondence mask (the paper); off: whole patches.",
)
@click.option(
    "--folds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Cross-validation folds (stratified by material; a test set is held out).",
)
@click.option("--fold", type=click.IntRange(min=0), help="Fold to validate on (0-based).")
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    help="Samples held out for testing  [default: 0.2 with folds, else 0]",
)
@click.option(
    "--val-every",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Validate every N epochs (0: never).",
)
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
    variant,
    epochs,
    batch_size,
    patch_size,
    patches_per_pair,
    workers,
    device,
    seed,
    threads,
    lr,
    decay_start,
    ngf,
    n_blocks,
    ndf,
    disc_layers,
    unet_depth,
    ct_channels,
    buffer_size,
    cache,
    no_augment,
    mask_l1,
    folds,
    fold,
    test_fraction,
    val_every,
    cluster_config,
    resume,
    overwrite,
    progress,
):
    """Train a CT -> stain model on the pairs in PAIRS.zarr.

    Examples: `vstain-dask train pairs.zarr -o run` (the paper's mod-cyclegan);
    `--folds 5 --fold 2` (one fold); `--folds 5 --cluster cuda` (all folds, one per GPU).
    """
    from vstain_dask.errors import InputError
    from vstain_dask.train.augment import AugmentConfig

    if threads:
        import torch

        torch.set_num_threads(threads)
    from vstain_dask.train.trainer import TrainConfig

    config = TrainConfig(
        variant=variant,
        epochs=epochs,
        batch_size=batch_size,
        patch_size=patch_size,
        patches_per_pair=patches_per_pair,
        workers=workers,
        device=device,
        seed=seed,
        lr=lr,
        decay_start=decay_start,
        ngf=ngf,
        n_blocks=n_blocks,
        ndf=ndf,
        disc_layers=disc_layers,
        unet_depth=unet_depth,
        ct_channels=int(ct_channels),
        buffer_size=buffer_size,
        augment=AugmentConfig.none() if no_augment else AugmentConfig(),
        cache=cache,
        mask_l1=mask_l1,
        folds=folds,
        fold=fold,
        test_fraction=test_fraction,
        val_every=val_every,
    )
    command = command_line()
    all_folds = folds > 1 and fold is None
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

        from vstain_dask.train.trainer import train as run_training

        result = run_training(
            pairs_path,
            out_dir,
            config,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            command=command,
        )
        click.echo(_summary(result, variant))
    except KeyboardInterrupt:
        exit_interrupted(_interrupted(out_dir, all_folds=all_folds))


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
    from vstain_dask.train.folds import train_folds

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
        on_start=on_start,
        on_done=on_done,
    )
    ssims = [r.history[-1].get("val_ssim") for r in results if r.history]
    ssims = [s for s in ssims if s is not None]
    mean = f"; mean validation SSIM {sum(ssims) / len(ssims):.3f}" if ssims else ""
    click.echo(f"trained {len(results)} folds of {config.variant.value} into {out_dir}{mean}")
    for r in results:
        click.echo(f"  fold {r.split['fold']}: {r.model}")
