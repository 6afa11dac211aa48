"""``vstain-dask pairs add`` and ``vstain-dask pairs list``: the paired-slices store."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vstain_dask.cli._options import parse_ct_levels


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def pairs():
    """Registered CT slice / histology pairs for training (a zarr store).

    Images are stored as given; the paper's CT and histology normalizations are measured when
    a pair is added, recorded with it, and applied on the fly by the training stream.
    """


@pairs.command("add", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("store", metavar="PAIRS.zarr", type=click.Path(path_type=Path))
@click.option(
    "--ct",
    "ct",
    required=True,
    type=click.Path(path_type=Path),
    help="CT slice: TIFF, PNG or zarr (uint16 kept; other types rescaled).",
)
@click.option(
    "--histology",
    required=True,
    type=click.Path(path_type=Path),
    help="Histology registered to the CT slice, same size: RGB TIFF, PNG or zarr.",
)
@click.option(
    "--mask",
    type=click.Path(path_type=Path),
    help="Manual mask (non-zero = keep), combined with the automatic one.",
)
@click.option(
    "--mask-only",
    is_flag=True,
    help="Use --mask as the correspondence mask instead of combining it.",
)
@click.option(
    "--material",
    required=True,
    help="Implant material: mg, ti, peek (known to the CT level estimate) or any other name "
    "of letters, digits, '_', '.', '-' (training stratifies each material as its own group).",
)
@click.option("--sample", required=True, help="Sample id (pairs of one sample share it).")
@click.option(
    "--voxel-size",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Pixel size in µm.",
)
@click.option("--id", "pair_id", help="Pair id  [default: SAMPLE-NNN]")
@click.option("--role", type=click.Choice(["train", "val", "test"]), help="Split role.")
@click.option("--ct-levels", help="Raw CT means BONE,BACKGROUND instead of estimating them.")
@click.option("--bone-roi", help="Measure the bone mean in Y0:Y1,X0:X1 (pixels).")
@click.option("--background-roi", help="Measure the background mean in Y0:Y1,X0:X1.")
@click.option("--overwrite", is_flag=True, help="Replace a pair with the same id.")
def add(
    store,
    ct,
    histology,
    mask,
    mask_only,
    material,
    sample,
    voxel_size,
    pair_id,
    role,
    ct_levels,
    bone_roi,
    background_roi,
    overwrite,
):
    """Add a registered CT slice and histology image (same size) to PAIRS.zarr.

    The CT levels (given, measured in the two ROIs, or estimated on the slice) are printed
    with where they came from; estimated ones come with their QC figure, PAIR.levels.png
    beside PAIRS.zarr, whose path the pair records (`normalization.ct_levels_qc`).
    """
    from vstain_dask.train.prepare import add_pair, describe_ct_levels

    info = add_pair(
        store,
        ct=ct,
        histology=histology,
        mask=mask,
        auto_mask=not mask_only,
        material=material.lower(),
        sample=sample,
        voxel_size=voxel_size,
        pair_id=pair_id,
        role=role,
        ct_levels=parse_ct_levels(ct_levels),
        bone_roi=bone_roi,
        background_roi=background_roi,
        overwrite=overwrite,
    )
    c = info["normalization"]["ct_levels"]
    click.echo(describe_ct_levels(c, info["normalization"].get("ct_levels_qc")), err=True)
    source = c["source"] if c.get("confidence") is None else (
        f"{c['source']}, confidence {c['confidence']:.2f}")  # fmt: skip
    h, w = info["shape"]
    click.echo(
        f"added pair {info['id']} to {store}: {h}x{w} px, {material.lower()}, sample {sample}; "
        f"CT bone {c['bone']:.0f}, background {c['background']:.0f} ({source}) -> 30000, "
        f"10000; mask covers {info['mask_fraction']:.0%}"
    )


@pairs.command("list", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("store", metavar="PAIRS.zarr", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_(store, as_json):
    """List the pairs in PAIRS.zarr."""
    from vstain_dask.pairs import list_pairs
    from vstain_dask.train.prepare import format_pairs

    items = list_pairs(store)
    if as_json:
        click.echo(json.dumps(items, indent=1, default=str))
    else:
        click.echo(format_pairs(items))
