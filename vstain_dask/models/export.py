"""Export a model's generator for use outside vstain-dask: TorchScript or ONNX.

Both exports take the normalized network input ``(N, C, H, W)`` float32 in [-1, 1] (see the
model card for how raw CT maps to it) and return ``(N, C_out, H, W)`` in [-1, 1]; map the output
to uint8 as ``round((y + 1) * 127.5)``. The model's metadata (normalization, output channels,
content hash) travels with the export: as the extra file ``vstain_model.json`` in the TorchScript
archive, and as ``metadata_props`` of the ONNX model.

TorchScript keeps the generator's full size handling (any height and width). The ONNX graph has
dynamic batch, height and width, and pads with reflection arithmetic only, so its sides must be
at least :func:`onnx_min_side` (16 for the ResNet generator, ``2 ** depth`` for the U-Net).
ONNX export needs the ``onnx`` and ``onnxscript`` packages.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vstain_dask.errors import InputError, OutputExistsError, VStainError, as_enum
from vstain_dask.models.checkpoint import load_model
from vstain_dask.models.config import ExportFormat, GeneratorConfig, GeneratorKind

__all__ = ["export_model", "onnx_min_side"]


def onnx_min_side(config: GeneratorConfig) -> int:
    """Smallest height and width the ONNX export of a generator with ``config`` accepts."""
    if config.kind is GeneratorKind.UNET:
        return 2**config.depth
    # reflection pads of up to 9 pixels (outer_pad 0) and outer pads of up to 8 must be shorter
    # than the side
    return 16


class _BranchFree(nn.Module):
    """The generator's pad-run-crop written with size arithmetic only, so the exported graph
    keeps symbolic heights and widths. Equal to the generator's ``forward`` for sides of at
    least :func:`onnx_min_side`."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator
        config: GeneratorConfig = generator.config
        if config.kind is GeneratorKind.UNET:
            self.multiple, self.shift = 2**config.depth, 0
        else:
            self.multiple, self.shift = 4, 2 * config.outer_pad - 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        m = max(0, -self.shift)
        extra_h = (-(h + 2 * m + self.shift)) % self.multiple
        extra_w = (-(w + 2 * m + self.shift)) % self.multiple
        top, bottom = m + extra_h // 2, m + extra_h - extra_h // 2
        left, right = m + extra_w // 2, m + extra_w - extra_w // 2
        y = self.generator.forward_raw(F.pad(x, [left, right, top, bottom], mode="reflect"))
        y0, x0 = top + self.shift, left + self.shift
        return y[:, :, y0 : y0 + h, x0 : x0 + w]


def _metadata(model: Any) -> dict[str, Any]:
    card = model.card
    return {
        "format": "vstain-dask-export",
        "sha256": model.sha256,
        "variant": model.variant.value,
        "architecture": model.config.to_dict(),
        "normalization": model.normalization.to_dict(),
        "output": card.get("output"),
    }


def export_model(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: ExportFormat | str = ExportFormat.TORCHSCRIPT,
    overwrite: bool = False,
) -> pathlib.Path:
    """Export the generator of a model file.

    Parameters
    ----------
    path : path
        vstain-dask model file.
    out : path
        File to write (``.ts``/``.pt`` for TorchScript, ``.onnx`` for ONNX by convention).
    format : ExportFormat
        ``"torchscript"`` (any input size) or ``"onnx"`` (sides >= :func:`onnx_min_side`).
    overwrite : bool
        Replace an existing ``out``.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    fmt = as_enum(ExportFormat, format, "format")
    out = pathlib.Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    model = load_model(path)
    meta = _metadata(model)
    generator = model.generator.cpu().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if fmt is ExportFormat.TORCHSCRIPT:
            with warnings.catch_warnings():
                # torch.jit is deprecated in favour of torch.export, but TorchScript archives are
                # still what C++ and older runtimes load
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                scripted = torch.jit.script(generator)
                torch.jit.save(
                    scripted, str(tmp), _extra_files={"vstain_model.json": json.dumps(meta)}
                )
        else:
            _export_onnx(generator, tmp, meta)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _export_onnx(generator: nn.Module, out: pathlib.Path, meta: dict[str, Any]) -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise InputError(
            f"ONNX export needs the package(s) {missing}; install them (pip install onnx "
            "onnxscript) or export with --format torchscript"
        )
    import logging

    import onnx

    config: GeneratorConfig = generator.config
    side = onnx_min_side(config)
    wrapper = _BranchFree(generator).eval()
    example = torch.zeros(1, config.in_channels, max(side, 64), max(side, 64))
    dims = {
        0: torch.export.Dim("batch", min=1, max=4096),
        2: torch.export.Dim("height", min=side, max=16384),
        3: torch.export.Dim("width", min=side, max=16384),
    }
    # the exporter reports progress through logging and warnings; keep the terminal quiet
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                dynamic_shapes={"x": dims},
                input_names=["input"],
                output_names=["output"],
                verbose=False,
            )
    except Exception as e:
        raise VStainError(
            f"ONNX export failed with torch {torch.__version__} ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]}); export with --format torchscript instead"
        ) from e
    finally:
        logger.setLevel(level)
    program.save(str(out))
    model = onnx.load(str(out))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key = f"vstain.{key}"
        entry.value = json.dumps(value)
    onnx.save(model, str(out))
