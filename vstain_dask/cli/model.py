"""``vstain-dask model``: inspect, import and export model files."""

from __future__ import annotations

import pathlib
import shlex

import click

from vstain_dask.models.config import ExportFormat, ForeignFormat, Variant

__all__ = ["model"]

_FILE = click.Path(dir_okay=False, path_type=pathlib.Path)


@click.group("model", context_settings={"help_option_names": ["-h", "--help"]})
def model() -> None:
    """Inspect, import and export model files."""


@model.command("info")
@click.argument("model_path", metavar="MODEL", type=_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON, not the card.")
@click.option("--verify", is_flag=True, help="Also check the content hash (reads all weights).")
def info(model_path: pathlib.Path, as_json: bool, verify: bool) -> None:
    """Print the model card of MODEL (architecture, training, data, metrics, versions)."""
    import json

    from vstain_dask.models.card import render_card
    from vstain_dask.models.checkpoint import model_info

    meta = model_info(model_path, verify=verify)
    if as_json:
        click.echo(json.dumps(meta, indent=2, sort_keys=True))
    else:
        click.echo(render_card(meta, sha256=meta["sha256"], file_name=model_path.name), nl=False)


@model.command("import")
@click.argument("weights", type=_FILE)
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Choice([f.value for f in ForeignFormat]),
    help="Code that wrote WEIGHTS: PyTorch-GAN (G_AB_<epoch>.pth) or "
    "pytorch-CycleGAN-and-pix2pix (latest_net_G_A.pth).",
)
@click.option("-o", "--output", "out", required=True, type=_FILE, help="Model file to write.")
@click.option(
    "--variant",
    type=click.Choice([v.value for v in Variant]),
    default=None,
    help="Training method [default: mod-cyclegan for pytorch-gan, cyclegan or pix2pix by "
    "architecture for cyclegan-pix2pix].",
)
@click.option("--ct-low", type=float, default=0.0, show_default=True, help="CT value mapped to -1.")
@click.option(
    "--ct-high", type=float, default=65535.0, show_default=True, help="CT value mapped to +1."
)
@click.option("--invert", is_flag=True, help="The model was trained on inverted CT.")
@click.option(
    "--channels",
    type=click.IntRange(1, 3),
    default=None,
    help="Channels the CT is repeated to [default: the generator's input channels].",
)
@click.option(
    "--raw-ct",
    is_flag=True,
    help="The model takes raw CT, not CT normalized as in the paper (bone 30000, background "
    "10000).",
)
@click.option(
    "--outer-pad",
    type=click.IntRange(0, 8),
    default=None,
    help="Reflection pad of the outer 7x7 convolutions [default: the channel count for "
    "pytorch-gan, 3 for cyclegan-pix2pix].",
)
@click.option(
    "--pixel-size",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="UM",
    help="Pixel size (µm) of the images the model was trained on (the paper's: 5); `stain` "
    "compares it with the volume's voxel size [not recorded: stain warns].",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def import_(
    weights: pathlib.Path,
    source: str,
    out: pathlib.Path,
    variant: str | None,
    ct_low: float,
    ct_high: float,
    invert: bool,
    channels: int | None,
    raw_ct: bool,
    outer_pad: int | None,
    pixel_size: float | None,
    overwrite: bool,
) -> None:
    """Convert a generator checkpoint WEIGHTS written by other code into a model file.

    The generator's layout (channels, residual blocks, U-Net depth, norm) is read from the
    weights; what they cannot say (the CT normalization) comes from the options. The model card
    is written beside the output.
    """
    from vstain_dask.models.foreign import import_checkpoint

    normalization: dict[str, object] = {
        "low": ct_low,
        "high": ct_high,
        "invert": invert,
        "ct_normalized": not raw_ct,
    }
    if channels is not None:
        normalization["channels"] = channels
    args = ["vstain-dask", "model", "import", str(weights), "--from", source, "-o", str(out)]
    args += ["--ct-low", f"{ct_low:g}", "--ct-high", f"{ct_high:g}"]
    args += ["--invert"] if invert else []
    args += ["--raw-ct"] if raw_ct else []
    args += ["--channels", str(channels)] if channels is not None else []
    args += ["--outer-pad", str(outer_pad)] if outer_pad is not None else []
    args += ["--variant", variant] if variant else []
    args += ["--pixel-size", f"{pixel_size:g}"] if pixel_size is not None else []
    path = import_checkpoint(
        weights,
        out,
        source=source,
        normalization=normalization,
        variant=variant,
        outer_pad=outer_pad,
        pixel_size=pixel_size,
        command=shlex.join(args),
        overwrite=overwrite,
    )
    _report(path)


@model.command("export")
@click.argument("model_path", metavar="MODEL", type=_FILE)
@click.option("-o", "--output", "out", required=True, type=_FILE, help="File to write.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in ExportFormat]),
    default=ExportFormat.TORCHSCRIPT.value,
    show_default=True,
    help="TorchScript (any input size) or ONNX (needs the onnx and onnxscript packages).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def export(model_path: pathlib.Path, out: pathlib.Path, fmt: str, overwrite: bool) -> None:
    """Export the generator of MODEL for use outside vstain-dask.

    The export takes the normalized input (N, C, H, W) in [-1, 1] and returns (N, 3, H, W) in
    [-1, 1]; the model card says how CT maps to the input.
    """
    from vstain_dask.models.export import export_model

    path = export_model(model_path, out, format=fmt, overwrite=overwrite)
    click.echo(f"wrote {path} ({fmt})")


def _report(path: pathlib.Path) -> None:
    from vstain_dask.models.card import card_path
    from vstain_dask.models.checkpoint import model_info

    meta = model_info(path)
    arch = meta["architectures"]["generator"]
    click.echo(f"wrote {path} and {card_path(path).name}")
    click.echo(
        f"variant {meta['variant']}, {arch['kind']} generator "
        f"{arch['in_channels']} -> {arch['out_channels']} channels, "
        f"{meta['parameters']['generator']:,} parameters, sha256 {meta['sha256'][:16]}"
    )
    size = meta.get("pixel_size")
    click.echo(
        f"pixel size {size:g} µm"
        if size is not None
        else "pixel size not recorded (give --pixel-size UM): stain will warn"
    )
