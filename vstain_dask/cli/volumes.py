"""``vstain-dask import`` and ``vstain-dask info``: volumes in and out of OME-Zarr."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vstain_dask.cli._options import IntTuple


class _FloatTuple(click.ParamType):
    """One positive number, or comma-separated numbers such as ``5`` or ``5,2.5,2.5``."""

    name = "SIZE[,SIZE,SIZE]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            parts = tuple(float(p) for p in str(value).split(",") if p.strip())
        except ValueError:
            self.fail(
                f"expected a number or Z,Y,X numbers such as 5 or 5,2.5,2.5, got {value!r}",
                param,
                ctx,
            )
        if not parts or any(not p > 0 for p in parts):
            self.fail(f"expected positive numbers, got {value!r}", param, ctx)
        return parts


@click.command("import", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("out", metavar="OUT.zarr", type=click.Path(path_type=Path))
@click.option(
    "--voxel-size",
    default=None,
    type=_FloatTuple(),
    help="Voxel size in --unit: one number, or Z,Y,X (Y,X for 2D images). Default: the size "
    "the file states (OME, Aperio MPP, ImageJ, TIFF resolution tags, PNG pHYs, JPEG JFIF/EXIF, "
    "OME-Zarr scale); "
    "checked against it when both exist.",
)
@click.option(
    "--voxel-size-override",
    is_flag=True,
    help="Use --voxel-size even where the file states a size more than 1 % different.",
)
@click.option(
    "--voxel-size-out",
    "--pixel-size-out",
    "voxel_size_out",
    default=None,
    type=_FloatTuple(),
    help="Resample during import to this size in --unit (one number, or Z,Y,X / Y,X) by exact "
    "area averaging, e.g. --pixel-size-out 5 makes a 0.44 µm slide a 5 µm image. The output's "
    "scale is this size exactly; only coarser sizes than the input's.",
)
@click.option(
    "--dataset",
    default=None,
    help="Dataset inside an HDF5 INPUT, e.g. /exchange/data (DXchange). Default: its only 3D "
    "dataset.",
)
@click.option(
    "--unit",
    default="micrometer",
    show_default=True,
    help="NGFF space unit (micrometer, millimeter, nanometer; um, mm, nm accepted).",
)
@click.option(
    "--shape",
    type=IntTuple(None, "Z,Y,X"),
    default=None,
    help="Shape of a raw binary file, Z,Y,X (or Y,X).",
)
@click.option(
    "--dtype",
    default=None,
    help="Element type of a raw binary file, e.g. uint16, float32, >u2 (big-endian).",
)
@click.option(
    "--chunks",
    type=IntTuple(None, "Z,Y,X"),
    default=None,
    help="Output chunks Z,Y,X (Y,X for 2D)  [default: 128 per axis in 3D, 1024 in 2D]",
)
@click.option(
    "--ngff-version",
    type=click.Choice(["0.4", "0.5"]),
    default="0.5",
    show_default=True,
    help="0.5 writes zarr v3; 0.4 writes zarr v2 for older viewers.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT.zarr if it exists.")
def import_(
    input_path: Path,
    out: Path,
    voxel_size: tuple[float, ...] | None,
    voxel_size_override: bool,
    voxel_size_out: tuple[float, ...] | None,
    dataset: str | None,
    unit: str,
    shape: tuple[int, ...] | None,
    dtype: str | None,
    chunks: tuple[int, ...] | None,
    ngff_version: str,
    overwrite: bool,
) -> None:
    """Convert INPUT to an OME-Zarr volume OUT.zarr, with its pyramid.

    INPUT is a folder of 2D TIFF slices (natural order: slice2 before slice10), a folder
    holding one DICOM series (ordered by slice position; the dicom extra), an HDF5 file
    (--dataset; the hdf5 extra), a multi-page
    TIFF stack, a .npy file, a raw binary file (give --shape and --dtype), a whole-slide image
    (pyramidal tiled TIFF/BigTIFF, OME-TIFF, Aperio .svs, Hamamatsu .ndpi; .mrxs, .czi and
    other vendor formats with the wsi extra), or a 2D image such as PNG/JPEG. Colour images
    become c,y,x RGB. The voxel size is the file's unless --voxel-size is given.

    Examples: vstain-dask import slide.svs section.ome.zarr;
    vstain-dask import slices/ volume.ome.zarr --voxel-size 5
    """
    from dask.diagnostics import ProgressBar

    from vstain_dask.ngff import import_volume

    with ProgressBar(minimum=2.0, out=sys.stderr):
        path = import_volume(
            input_path,
            out,
            voxel_size=voxel_size,
            unit=unit,
            voxel_size_override=voxel_size_override,
            voxel_size_out=voxel_size_out,
            dataset=dataset,
            shape=shape,
            dtype=dtype,
            chunks=chunks,
            ngff_version=ngff_version,
            overwrite=overwrite,
        )
    _echo_import(path)


def _echo_import(path: Path) -> None:
    """Print what an import wrote: the voxel size and where it came from, any resampling, and
    the volume's description."""
    from vstain_dask.ngff import format_info, volume_info
    from vstain_dask.ngff._pixel_size import _fmt, describe

    description = volume_info(path)
    record = description["vstain"]["import"]
    click.echo(f"wrote {path}")
    if "dataset" in record:
        click.echo(f"dataset {record['dataset']} ({record['dataset_chosen_by']})")
    resampled = record.get("resampled")
    if resampled is None:
        click.echo(
            describe(tuple(record["voxel_size"]), record["unit"], record["voxel_size_source"])
        )
    else:
        click.echo(describe(tuple(resampled["from"]), record["unit"], record["voxel_size_source"]))
        factors = ", ".join(f"{f:.4g}" for f in resampled["factors"])
        to = _fmt(tuple(resampled["to"]), record["unit"])
        click.echo(f"resampled to {to} (factors {factors}, area average)")
    click.echo(format_info(description))


@click.command("info", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(path: Path, as_json: bool) -> None:
    """Describe the OME-Zarr volume at PATH: axes, shape, voxel size, pyramid, provenance."""
    import json

    from vstain_dask.errors import VolumeFormatError
    from vstain_dask.ngff import format_info, volume_info

    description = volume_info(path)
    if as_json:
        click.echo(json.dumps(description, indent=2))
    else:
        click.echo(format_info(description))
    if description.get("incomplete"):
        # described, so that what is there can be inspected, but never passed off as a volume
        raise VolumeFormatError(f"{description['path']} is incomplete: {description['incomplete']}")
