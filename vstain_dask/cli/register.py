"""``vstain-dask register`` and ``vstain-dask phantom-section``: sections located in the CT."""

from __future__ import annotations

import json
from pathlib import Path

import click

_HELP = {"help_option_names": ["-h", "--help"]}


@click.command(context_settings=_HELP)
@click.argument("ct", metavar="CT.ome.zarr", type=click.Path(path_type=Path))
@click.argument("section", metavar="SECTION", type=click.Path(path_type=Path))
@click.option("-o", "--out", "store", metavar="PAIRS.zarr", type=click.Path(path_type=Path),
              required=True, help="Pairs store to add the pair to (created if missing).")  # fmt: skip
@click.option("--material", required=True,
              help="Implant material of the sample: mg, ti, peek or another name.")  # fmt: skip
@click.option("--sample", required=True, help="Sample id (pairs of one sample share it).")
@click.option("--pair", "pair_id", help="Pair id  [default: SAMPLE-NNN]")
@click.option("--section-pixel-size", type=click.FloatRange(min=0, min_open=True),
              help="Section pixel size in µm, when the file does not state it.")  # fmt: skip
@click.option("--axis", type=click.Choice(["auto", "z", "y", "x"]), default="auto",
              show_default=True, help="CT axis the sections were cut (roughly) normal to.")  # fmt: skip
@click.option("--init-z", "init_depth", type=float,
              help="Search near this position along --axis (µm, the CT's coordinates).")  # fmt: skip
@click.option("--flip", type=click.Choice(["auto", "yes", "no"]), default="auto",
              show_default=True, help="Is the section mirrored (mounted face down)?")  # fmt: skip
@click.option("--max-off-plane", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Refuse when a plane this many CT voxels deeper or "
              "tilted (mean) scores as well as the best.")  # fmt: skip
@click.option("--affine/--no-affine", default=True, show_default=True,
              help="Refine the section's sectioning scale and shear after the plane.")  # fmt: skip
@click.option("--qc", type=click.Path(path_type=Path),
              help="QC picture  [default: PAIR.register-qc.png beside PAIRS.zarr]")  # fmt: skip
@click.option("--ct-levels", help="Raw CT means BONE,BACKGROUND of the scan instead of "
              "estimating them on the volume.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the registration record as JSON.")
@click.option("--overwrite", is_flag=True, help="Replace a pair with the same id.")
def register(ct, section, store, material, sample, pair_id, section_pixel_size, axis, init_depth,
             flip, max_off_plane, affine, qc, ct_levels, as_json, overwrite):  # fmt: skip
    """Find the plane of CT that a histology SECTION shows, and add the pair to PAIRS.zarr.

    SECTION is a whole-slide image (any file `vstain-dask import` reads) or its 2D RGB
    OME-Zarr. The search maximizes mutual information over a rigid plane (depth, two tilts,
    in-plane rotation over the full turn, two shifts; mirrored and not) together with the
    section's in-plane scale and shear, coarse to fine on the CT's pyramid, then fits the
    section's affine distortion once more on the found plane. The pair (CT plane and registered
    histology at the CT's pixel size, cropped to the common field of view) gets the
    registration record in its attributes (`registration`: `section_to_ct` and the metric).
    Exits 3 without writing a pair when no plane is trusted: another pose that puts the
    section elsewhere in the plane scores almost as high, or the plane's depth and tilt are in
    doubt by more than --max-off-plane (a specimen that hardly changes along the cut's normal).
    """
    from vstain_dask.cli._options import parse_ct_levels
    from vstain_dask.register import RegisterConfig
    from vstain_dask.register._pairs import add_registered_pair
    from vstain_dask.train.prepare import describe_ct_levels

    config = RegisterConfig(
        axis=axis, flip=flip, init_depth=init_depth, affine=affine,
        section_pixel_size=section_pixel_size, max_off_plane=max_off_plane,
    )  # fmt: skip
    record = add_registered_pair(
        ct, section, store, config=config, material=material.lower(), sample=sample,
        pair_id=pair_id, qc=qc, overwrite=overwrite, ct_levels=parse_ct_levels(ct_levels),
    )  # fmt: skip
    click.echo(describe_ct_levels(record["ct_levels"], record["ct_levels_qc"]), err=True)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    aff = record["affine"]
    c = record["ct_levels"]
    levels = f"{c['bone']:.0f}/{c['background']:.0f} ({c['source']}" + (
        f" on the volume, confidence {c['confidence']:.2f})" if c.get("confidence") is not None
        else ")")  # fmt: skip
    click.echo(
        f"registered {section} to {ct}: pair {record['pair']} in {store} "
        f"({record['shape'][0]}x{record['shape'][1]} at {record['ct_voxel_size']:g} µm); cut normal "
        f"to {record['axis']}{', mirrored' if record['flip'] else ''}; mutual information "
        f"{-record['metric']:.3f} (margin {record['confidence']['margin']:.0%} over another pose)"
        f"{_off_plane(record['confidence'])}"
        f"{'' if aff['used'] else ', no affine refinement (' + aff['reason'] + ')'}; "
        f"CT levels bone/background {levels}; {record['seconds']['total']:.0f} s; "
        f"QC {record['qc']}"
    )


def _off_plane(confidence: dict) -> str:
    """What the command says about a plane whose depth and tilt are in doubt."""
    off = confidence.get("off_plane_um", 0.0)
    if not off:
        return ""
    return f"; depth and tilt known to about {off:.0f} µm (a plane that far across scores about as well)"


@click.command("phantom-section", context_settings=_HELP)
@click.argument("volume", metavar="VOLUME.ome.zarr", type=click.Path(path_type=Path))
@click.argument("out", metavar="SECTION.ome.tif", type=click.Path(path_type=Path))
@click.option("--pixel-size", type=click.FloatRange(min=0, min_open=True), default=0.88,
              show_default=True, help="Section pixel size, µm.")  # fmt: skip
@click.option("--axis", type=click.Choice(["z", "y", "x"]), default="y", show_default=True,
              help="CT axis the cut is normal to before tilting (y: along the screw).")  # fmt: skip
@click.option("--depth", type=float, help="Cut position along --axis, µm  [default: centre]")
@click.option("--tilt", default="0,0", show_default=True,
              help="Tilts of the cut, degrees, about its row and column axes: A,B.")  # fmt: skip
@click.option("--rotate", type=float, default=0.0, show_default=True,
              help="In-plane rotation on the slide, degrees.")  # fmt: skip
@click.option("--flip", is_flag=True, help="Mounted face down (mirrored).")
@click.option("--shear", type=float, default=0.0, show_default=True,
              help="Sectioning shear (0.01 = 1 %).")  # fmt: skip
@click.option("--compression", type=float, default=0.0, show_default=True,
              help="Sectioning compression along rows (0.02 = 2 %).")  # fmt: skip
@click.option("--fov", type=float, default=1.0, show_default=True,
              help="Fraction of the cut's extent the section keeps (partial field of view).")  # fmt: skip
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the staining, the artefacts and a partial field of view's place.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace SECTION.ome.tif if it exists.")
def phantom_section(volume, out, pixel_size, axis, depth, tilt, rotate, flip, shear, compression,
                    fov, seed, overwrite):  # fmt: skip
    """Cut a phantom volume on a plane and write the section as a pyramidal OME-TIFF.

    The section is stained like toluidine blue at a fine pixel size, distorted and mounted as
    asked; the true map from its pixels to the CT (`section_to_ct`) is in the OME image
    description, so a registration can be scored.
    """
    from vstain_dask.errors import InputError
    from vstain_dask.phantom._section import SectionCut, write_phantom_section

    try:
        tilts = tuple(float(t) for t in tilt.split(","))
    except ValueError:
        raise InputError(f"--tilt takes two angles A,B in degrees, got {tilt!r}") from None
    cut = SectionCut(
        axis=axis, depth=depth, tilt=tilts, rotate=rotate, flip=flip, shear=shear,
        compression=compression, fov=fov, pixel_size=pixel_size, seed=seed,
    )  # fmt: skip
    rec = write_phantom_section(volume, out, cut, overwrite=overwrite)
    h, w = rec["shape"]
    click.echo(f"wrote {out}: {h}x{w} section at {pixel_size:g} µm, cut normal to {axis} "
               f"tilted {tilts[0]:g},{tilts[1]:g}°, rotated {rotate:g}°"
               f"{', mirrored' if flip else ''}")  # fmt: skip
