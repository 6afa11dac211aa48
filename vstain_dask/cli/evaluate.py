"""``vstain-dask evaluate``, ``preview`` and ``seams``: comparing models and looking at stains."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vstain_dask.cli._options import IntTuple
from vstain_dask.tiling import Tiling  # numpy only: --help imports no torch

#: the defaults of --tile, --step and --blend, as stain's
_TILING = Tiling()


def _model_arg(value: str) -> tuple[str | None, str]:
    """``PATH`` or ``NAME=PATH`` (a name for tables; an existing path with '=' stays a path)."""
    if "=" in value and not Path(value).exists():
        name, path = value.split("=", 1)
        if name and path:
            return name, path
    return None, value


def _check_exists(path: str, what: str) -> None:
    from vstain_dask.errors import VolumeFormatError

    if not Path(path).exists():
        raise VolumeFormatError(f"{what} {path} does not exist; check the path")


@click.command()
@click.argument("pairs", type=click.Path())
@click.option("-m", "--model", "models", multiple=True, metavar="[NAME=]PATH",
              help="A model to evaluate (repeat for several); NAME labels it in the report.")  # fmt: skip
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(), help="Report folder.")
@click.option("--split", type=click.Choice(["train", "val", "test"]),
              help="Only pairs in this split [all].")  # fmt: skip
@click.option("--patches", "patches_per_pair", default=50, show_default=True,
              help="Patches drawn per pair.")  # fmt: skip
@click.option("--patch-size", default=256, show_default=True, help="Patch side, pixels.")
@click.option("--min-coverage", default=0.5, show_default=True,
              help="Skip patches the mask covers less than this fraction.")  # fmt: skip
@click.option("--seed", default=0, show_default=True, help="Seed of the patch positions.")
@click.option("--tile", default=_TILING.tile, show_default=True, help="Inference tile, pixels.")
@click.option("--step", default=_TILING.step, show_default=True,
              help="Inference tile step, pixels.")  # fmt: skip
@click.option("--blend", default=_TILING.blend.value, show_default=True,
              help="mean, gaussian or cosine.")  # fmt: skip
@click.option("--batch-size", default=8, show_default=True, help="Tiles per model call.")
@click.option("--ct-levels", default="auto", show_default=True,
              help="auto (normalize CT for models that expect it) or none.")  # fmt: skip
@click.option("--raw-histology", is_flag=True,
              help="Compare with the histology as stored, not normalized as in training.")  # fmt: skip
@click.option(
    "--no-lpips", is_flag=True, help="Skip LPIPS (needs torchvision's SqueezeNet weights)."
)
@click.option("--no-baseline", is_flag=True, help="Skip the raw-CT baseline.")
@click.option("--no-panels", is_flag=True, help="Skip the per-pair panels.")
@click.option("--device", help="Torch device [cuda if present, else cpu].")
@click.option("--overwrite", is_flag=True, help="Replace an existing report folder.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def evaluate(pairs, models, out_dir, split, patches_per_pair, patch_size, min_coverage, seed, tile,
             step, blend, batch_size, ct_levels, raw_histology, no_lpips, no_baseline, no_panels,
             device, overwrite, progress):  # fmt: skip
    """Score models on PAIRS (a pairs store) with SSIM, PSNR and LPIPS, as in the paper.

    Writes metrics.md/.csv/.json (medians per model and split), patches.csv, boxplots.png and
    panels/<pair>.png into the report folder.
    """
    from vstain_dask.evaluate import EvalConfig, run_evaluation

    _check_exists(pairs, "pairs store")
    parsed = [_model_arg(m) for m in models]
    for _, path in parsed:
        _check_exists(path, "model")
    if any(name for name, _ in parsed):
        names = [name or Path(path).stem for name, path in parsed]
        model_arg = dict(zip(names, [p for _, p in parsed], strict=True))
        if len(model_arg) != len(parsed):
            raise click.BadParameter("model names must be unique", param_hint="--model")
    else:
        model_arg = [p for _, p in parsed]
    config = EvalConfig(
        patch_size=patch_size, patches_per_pair=patches_per_pair, min_coverage=min_coverage,
        seed=seed, tile=tile, step=step, blend=blend, batch_size=batch_size, split=split,
        lpips=not no_lpips, baseline=not no_baseline, ct_levels=ct_levels, device=device,
        histology_normalization=not raw_histology,
    )  # fmt: skip
    result, files = run_evaluation(
        pairs, model_arg, out_dir, config=config, panels=not no_panels, overwrite=overwrite,
        progress=progress,
    )  # fmt: skip
    from vstain_dask.evaluate import format_table

    click.echo(format_table(result))
    n = len(result.pairs)
    click.echo(f"\nreport: {files['md'].parent} ({n} pair{'s' if n != 1 else ''}, "
               f"{len(result.records)} patch scores)")  # fmt: skip


@click.command()
@click.argument("stained", type=click.Path())
@click.option("-o", "--out", type=click.Path(), help="PNG to write [STAINED.views.png].")
@click.option("--ct", help="Input CT to show beside it [the one recorded in STAINED, if present].")
@click.option("--no-ct", is_flag=True, help="Show the stained volume alone.")
@click.option("--max-size", default=768, show_default=True,
              help="Largest side read (a pyramid level at most this size).")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace an existing PNG.")
def preview(stained, out, ct, no_ct, max_size, overwrite):
    """Orthogonal XY/XZ/YZ mid-plane views of a STAINED volume (and its input CT) as a PNG."""
    from vstain_dask.views import save_preview

    _check_exists(stained, "stained volume")
    if ct is not None:
        _check_exists(ct, "CT volume")
    png, ct_path = save_preview(
        stained, out, ct=None if no_ct else (ct or "auto"), max_size=max_size,
        overwrite=overwrite,
    )  # fmt: skip
    if ct_path is None and not no_ct and ct is None:
        click.echo("input CT not shown: the stain records none that exists here (use --ct)",
                   err=True)  # fmt: skip
    click.echo(f"wrote {png}" + (f" (with CT {ct_path})" if ct_path else ""))


@click.command()
@click.argument("stained", nargs=-1, required=True, type=click.Path())
@click.option("--axis", type=click.Choice(["z", "y", "x"]), default="z", show_default=True,
              help="Stacking axis to measure stripes across.")  # fmt: skip
@click.option("--tile", type=int,
              help=f"Tile grid of the seams [the stain's own, else {_TILING.tile}].")  # fmt: skip
@click.option("--step", type=int, help=f"Tile step [the stain's own, else {_TILING.step}].")
@click.option("--block", type=IntTuple(3), default="16,256,256", show_default=True,
              help="Block read at a time, Z,Y,X.")  # fmt: skip
@click.option("--blocks", "max_blocks", default=32, show_default=True, help="Blocks read at most.")
@click.option("--seed", default=0, show_default=True, help="Seed of the block choice.")
@click.option("--ct", default="auto", show_default=True,
              help="Input CT for a reference stripe index: auto (from provenance), PATH or none.")  # fmt: skip
@click.option("--json", "json_out", type=click.Path(), help="Also write the numbers as JSON.")
def seams(stained, axis, tile, step, block, max_blocks, seed, ct, json_out):
    """Stripes across slices and seams on the tile grid of STAINED volume(s), as numbers.

    Give several stains of one CT (e.g. --axes z, --axes zyx, other blend modes) to compare
    them on the same blocks. Stripe and seam indices are about 1 without artefacts.
    """
    from vstain_dask.evaluate import compare_seams, format_seams

    for p in stained:
        _check_exists(p, "stained volume")
    reference = None if ct.lower() == "none" else ("auto" if ct.lower() == "auto" else ct)
    if reference not in (None, "auto"):
        _check_exists(reference, "CT volume")
    reports = compare_seams(
        list(stained), axis=axis, tile=tile, step=step, block=block, max_blocks=max_blocks,
        seed=seed, reference=reference,
    )  # fmt: skip
    click.echo(format_seams(reports))
    if json_out:
        Path(json_out).write_text(json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
        click.echo(f"wrote {json_out}")
