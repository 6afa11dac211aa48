"""Markdown model cards, rendered from a checkpoint's metadata.

The card is written beside each checkpoint (``model.pt`` -> ``model.md``) and printed by
``vstain-dask model info``. It is rendered from the metadata stored in the checkpoint, so it can
always be regenerated from the file alone.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

__all__ = ["render_card", "card_path"]

_VARIANT_TEXT = {
    "mod-cyclegan": "paired (modified) CycleGAN of the paper: cycle, identity, masked pixelwise "
    "and greyscale losses",
    "cyclegan": "standard CycleGAN baseline (cycle and identity losses)",
    "cyclegan-invct": "standard CycleGAN baseline trained on inverted CT",
    "pix2pix": "Pix2Pix baseline: U-Net generator, conditional PatchGAN, L1",
}

_ROLE_TEXT = {
    "generator": "CT -> stain",
    "inverse_generator": "stain -> CT",
    "discriminator": "judges stained images",
    "inverse_discriminator": "judges CT",
}


def card_path(model_path: str | pathlib.Path) -> pathlib.Path:
    """Where the card of ``model_path`` lives: the same name with the suffix ``.md``."""
    return pathlib.Path(model_path).with_suffix(".md")


def _describe_architecture(arch: Mapping[str, Any]) -> str:
    if arch.get("type") == "discriminator":
        n = arch.get("n_layers")
        cond = arch.get("condition_channels", 0)
        text = (
            f"PatchGAN discriminator ({arch.get('kind')}), {_count(n, 'strided layer')}, "
            f"{arch.get('ndf')} base features, {arch.get('in_channels')} input channels"
        )
        if cond:
            text += f" conditioned on {cond} channels"
        return text + f", {arch.get('norm')} norm"
    if arch.get("kind") == "unet":
        text = (
            f"U-Net generator, {arch.get('depth')} downsamplings, {arch.get('ngf')} base "
            f"features, {arch.get('in_channels')} -> {arch.get('out_channels')} channels, "
            f"{arch.get('norm')} norm"
        )
        return text + (", dropout 0.5 in training" if arch.get("dropout") else "")
    upsample = {
        "nearest": "nearest upsampling + 3x3 convolution",
        "transpose": "3x3 transposed convolutions",
    }.get(str(arch.get("upsample")), str(arch.get("upsample")))
    text = (
        f"ResNet generator, {_count(arch.get('n_blocks'), 'residual block')}, {arch.get('ngf')} base "
        f"features, {arch.get('in_channels')} -> {arch.get('out_channels')} channels, "
        f"{upsample}, outer reflection pad {arch.get('outer_pad')}, {arch.get('norm')} norm"
    )
    return text + (", dropout 0.5 in training" if arch.get("dropout") else "")


def _count(n: Any, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _size_note(arch: Mapping[str, Any]) -> str:
    if arch.get("kind") == "unet":
        m = 2 ** int(arch.get("depth", 8))
        return (
            f"Any height and width: inputs are padded to multiples of {m} (reflect, or "
            "replicate where a side is too short) and the output is cropped back."
        )
    return (
        "Any height and width: inputs are reflect-padded to multiples of 4 (at least 8) and the "
        "output is cropped back; 256 x 256 tiles run unpadded."
    )


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, Mapping | list | tuple):
        return "`" + json.dumps(v, sort_keys=True, default=str) + "`"
    return str(v)


def _table(data: Mapping[str, Any] | None, *, empty: str = "not recorded") -> list[str]:
    if not data:
        return [f"_{empty}_", ""]
    rows = ["| | |", "|---|---|"]
    for key, value in data.items():
        rows.append(f"| {key} | {_value(value)} |".replace("\n", " "))
    return [*rows, ""]


def render_card(meta: Mapping[str, Any], *, sha256: str, file_name: str) -> str:
    """The Markdown model card of a checkpoint.

    Parameters
    ----------
    meta : mapping
        The checkpoint's metadata (see :mod:`vstain_dask.models.checkpoint`).
    sha256 : str
        The checkpoint's content hash.
    file_name : str
        Name of the checkpoint file, shown in the title.
    """
    lines = _summary(meta, sha256=sha256, file_name=file_name)
    lines += _architecture(meta)
    lines += _input_output(meta)
    lines += ["", "## Training hyperparameters", ""]
    lines += _table(_training(meta.get("training")))
    lines += ["## Data and split", ""]
    lines += _table(meta.get("split"))
    lines += ["## Evaluation metrics", ""]
    lines += _table(meta.get("metrics"))
    lines += _reproducibility(meta)
    source = meta.get("source")
    if source:
        lines += ["## Imported from", ""]
        lines += _table(source)
    return "\n".join(lines).rstrip() + "\n"


def _summary(meta: Mapping[str, Any], *, sha256: str, file_name: str) -> list[str]:
    """Title, the table of variant, kind, hash, time and format, and the notes."""
    variant = str(meta.get("variant"))
    kind = meta.get("kind", "model")
    lines = [f"# Model card: {file_name}", ""]
    lines += [
        "| | |",
        "|---|---|",
        f"| Variant | `{variant}`: {_VARIANT_TEXT.get(variant, 'unknown variant')} |",
        "| Kind | "
        + (
            "training checkpoint (all networks and optimizer state)"
            if kind == "training"
            else "model (the CT -> stain generator)"
        )
        + " |",
        f"| Content SHA-256 | `{sha256}` |",
        f"| Created | {meta.get('created', 'unknown')} |",
        f"| Format | vstain-dask model, version {meta.get('format_version', '?')} |",
        "",
    ]
    if meta.get("notes"):
        lines += [str(meta["notes"]), ""]
    return lines


def _architecture(meta: Mapping[str, Any]) -> list[str]:
    """One line per network, and the input sizes the generator takes."""
    archs: Mapping[str, Any] = meta.get("architectures", {})
    params: Mapping[str, Any] = meta.get("parameters", {})
    lines = ["## Architecture", ""]
    for role, arch in archs.items():
        count = params.get(role)
        count_text = f"; {count:,} parameters" if isinstance(count, int) else ""
        role_text = _ROLE_TEXT.get(role, role)
        lines.append(f"- **{role}** ({role_text}): {_describe_architecture(arch)}{count_text}")
    if "generator" in archs:
        lines += ["", f"Sizes: {_size_note(archs['generator'])}"]
    return lines


def _input_output(meta: Mapping[str, Any]) -> list[str]:
    """The input mapping, the output channels and mapping, and the pixel size."""
    lines = ["", "## Input and output", ""]
    norm = meta.get("normalization", {})
    lines.append(f"- Input: {_normalization_text(norm)}")
    out = meta.get("output", {})
    channels = ", ".join(str(c) for c in out.get("channels", []))
    lines.append(f"- Output: channels {channels}; tanh in [-1, 1] -> uint8 `{out.get('to_uint8')}`")
    lines.append(f"- Pixel size: {_pixel_size_text(meta.get('pixel_size'))}")
    lines.append(f"- Prefilter before staining: {_prefilter_text(meta.get('prefilter'))}")
    return lines


def _training(training: Any) -> Any:
    """The training record; one written before ``l1_normalization`` was recorded shows what it
    computed (L1 terms divided by the mask's area)."""
    if isinstance(training, Mapping) and "mask_l1" in training:
        if "l1_normalization" not in training:
            return {**training, "l1_normalization": "mask (not recorded: what runs did then)"}
    return training


def _prefilter_text(record: Any) -> str:
    if isinstance(record, Mapping) and isinstance(record.get("sigma"), int | float):
        sigma = float(record["sigma"])
        what = f"3D Gaussian, σ = {sigma:g} voxel" if sigma > 0 else "none (σ = 0)"
        reason = record.get("reason", "no reason recorded")
        return f"{what}: {reason} (`stain` applies it unless `--prefilter-sigma` says otherwise)"
    return "not recorded (`stain` applies none unless `--prefilter-sigma` says so)"


def _reproducibility(meta: Mapping[str, Any]) -> list[str]:
    """Seed, command line, hardware and software."""
    lines = ["## Reproducibility", ""]
    seed = meta.get("seed")
    lines.append(f"- Seed: {'not recorded' if seed is None else seed}")
    command = meta.get("command")
    lines.append(f"- Command line: {'not recorded' if not command else '`' + command + '`'}")
    lines += ["", "Hardware:", ""]
    lines += _table(meta.get("hardware"))
    lines += ["Software:", ""]
    lines += _table(meta.get("software"))
    return lines


def _pixel_size_text(size: Any) -> str:
    if isinstance(size, int | float) and not isinstance(size, bool) and size > 0:
        return f"{size:g} µm, that of the training images"
    return "not recorded"


def _normalization_text(norm: Mapping[str, Any]) -> str:
    from vstain_dask.models.config import InputNormalization

    try:
        return InputNormalization.from_dict(norm).describe()
    except Exception:  # a card must render even from odd metadata
        return _value(dict(norm))
