"""Model files: one torch file per model, with a Markdown card beside it.

A model file is ``torch.save`` of a plain dict (tensors and Python primitives only, so it loads
with ``torch.load(weights_only=True)``)::

    {
      "format": "vstain-dask-model",
      "format_version": 1,
      "sha256": <hex digest of the content, see below>,
      "meta": {
        "kind": "model" | "training",
        "variant": "mod-cyclegan" | "cyclegan" | "cyclegan-invct" | "pix2pix",
        "architectures": {role: {"type": "generator" | "discriminator", **config}},
        "parameters": {role: int},
        "normalization": InputNormalization fields,
        "output": {"channels": ["R", "G", "B"], "range": [-1.0, 1.0], "to_uint8": ...},
        "training": {...}, "seed": int | None, "split": {...}, "metrics": {...},
        "software": {...}, "hardware": {...}, "command": str | None,
        "created": ISO 8601 time, "source": {...} | None, "notes": str | None,
        "pixel_size": float | None,   # µm: the pixel size of the training pairs
        "prefilter": {"sigma": float, "reason": str, ...} | None,  # the stain's default
        "format_version": 1,
      },
      "state_dicts": {role: state dict},   # "generator" always; all networks for training
      "extra": {...},                      # training only: optimizer states etc.
    }

Roles are those of :func:`vstain_dask.models.networks.build_networks`. The content hash is the
SHA-256 of a canonical serialization of ``meta`` (JSON with sorted keys), every tensor (role,
name, dtype, shape and raw bytes, in sorted order) and ``extra``; it is checked on every load, so
a corrupted or edited file is refused, and it identifies the model (the stain engine caches
models by it).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import pathlib
import pickle
import platform
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import nn

from vstain_dask import intensity
from vstain_dask.errors import CheckpointError, InputError, OutputExistsError, as_enum
from vstain_dask.intensity import output_to_uint8
from vstain_dask.models.card import card_path, render_card
from vstain_dask.models.config import (
    DiscriminatorConfig,
    ForeignFormat,
    GeneratorConfig,
    InputNormalization,
    Variant,
)
from vstain_dask.models.networks import (
    PatchDiscriminator,
    ResnetGenerator,
    UnetGenerator,
    count_parameters,
)
from vstain_dask.runtime import resolve_device

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "StainModel",
    "TrainingCheckpoint",
    "save_model",
    "save_training_checkpoint",
    "load_model",
    "load_training_checkpoint",
    "model_info",
    "read_card",
    "model_pixel_size",
    "model_prefilter",
    "PIXEL_SIZE_TOLERANCE",
    "pixel_sizes_match",
    "network_input",
    "output_to_uint8",
]

FORMAT_NAME = "vstain-dask-model"
FORMAT_VERSION = 1

#: pixel sizes within this fraction of each other count as the same (the larger at most 10 %
#: above the smaller): what training asks of its pairs and staining of a volume and its model
PIXEL_SIZE_TOLERANCE = 0.10

_TO_UINT8 = "round((y + 1) * 127.5)"
_REQUIRED_META = ("kind", "variant", "architectures", "normalization", "output")


# ---------------------------------------------------------------------------------------------
# input and output mapping


def network_input(
    ct: np.ndarray | torch.Tensor,
    normalization: InputNormalization,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Map CT values to a generator input tensor as ``normalization`` says.

    The arithmetic is :func:`vstain_dask.intensity.network_input`; ``ct`` is already in the units
    the model expects (paper units for ``normalization.ct_normalized``, see
    :func:`vstain_dask.intensity.ct_to_paper_units`).

    Parameters
    ----------
    ct : (H, W), (N, H, W) or (N, 1, H, W) array or tensor
        CT values (any real dtype, e.g. uint16).
    normalization : InputNormalization
        ``x = clip(2 * (v - low) / (high - low) - 1, -1, 1)``, negated if ``invert``.
    device : torch device or None
        Where to put the result (default: where ``ct`` is, CPU for numpy).

    Returns
    -------
    (N, channels, H, W) float32 tensor
    """
    if isinstance(ct, torch.Tensor):
        v = ct.to(device=device, dtype=torch.float32)
    else:
        arr = np.asarray(ct)
        if arr.dtype.kind not in "uifb":
            raise InputError(f"ct must be a numeric array, got dtype {arr.dtype}")
        v = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(device)
    if v.ndim == 4 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3:
        raise InputError(
            f"ct must be (H, W), (N, H, W) or (N, 1, H, W), got shape {tuple(ct.shape)}"
        )
    x = intensity.network_input(
        v, low=normalization.low, high=normalization.high, invert=normalization.invert
    )
    return x[:, None].expand(-1, normalization.channels, -1, -1).contiguous()


# ---------------------------------------------------------------------------------------------
# loaded models


@dataclass(eq=False)
class StainModel:
    """A loaded generator with what is needed to feed it and to read its output.

    Attributes
    ----------
    generator : nn.Module
        The CT -> stain generator in eval mode, without gradients, on ``device``.
    normalization : InputNormalization
        Raw CT -> network input mapping.
    variant : Variant
        Training method.
    config : GeneratorConfig
        Architecture of ``generator``.
    sha256 : str
        Content hash of the model file.
    card : dict
        The metadata of the file (architecture, training, data, metrics, software, ...).
    path : pathlib.Path or None
        The file it was loaded from.
    """

    generator: nn.Module
    normalization: InputNormalization
    variant: Variant
    config: GeneratorConfig
    sha256: str
    card: dict[str, Any] = field(default_factory=dict)
    path: pathlib.Path | None = None

    @property
    def device(self) -> torch.device:
        """Where the generator's weights are."""
        return next(self.generator.parameters()).device

    @property
    def pixel_size(self) -> float | None:
        """The pixel size (µm) of the images the model was trained on; None if not recorded."""
        return model_pixel_size(self.card)

    @property
    def prefilter(self) -> dict[str, Any] | None:
        """The 3D Gaussian prefilter the model asks ``stain`` for (``sigma`` in voxels and
        ``reason``); None if not recorded (:func:`model_prefilter`)."""
        return model_prefilter(self.card)

    def to_input(self, ct: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalize CT (H, W) or (N, H, W) to the (N, C, H, W) float32 input, on ``device``."""
        return network_input(ct, self.normalization, device=self.device)

    def predict(self, ct: np.ndarray | torch.Tensor, *, batch_size: int = 8) -> np.ndarray:
        """Stain whole planes: CT (H, W) or (N, H, W) -> uint8 (N, C_out, H, W), C_out = R, G, B.

        Each plane goes through the generator in one piece (no tiling); for large planes use the
        tiled inference of :mod:`vstain_dask.tiling`.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        x = self.to_input(ct)
        out = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], batch_size):
                out.append(output_to_uint8(self.generator(x[i : i + batch_size])).cpu())
        return torch.cat(out).numpy()


@dataclass(eq=False)
class TrainingCheckpoint:
    """Everything a trainer needs to resume.

    Attributes
    ----------
    networks : dict of nn.Module
        By role (``"generator"``, ``"inverse_generator"``, ``"discriminator"``,
        ``"inverse_discriminator"``), weights loaded, on the requested device, in train mode.
    variant, normalization, sha256, meta, path
        As for :class:`StainModel` (``meta`` is the metadata dict).
    extra : dict
        What the trainer stored: optimizer and scheduler states, epoch, replay buffers, ...
    """

    networks: dict[str, nn.Module]
    variant: Variant
    normalization: InputNormalization
    sha256: str
    meta: dict[str, Any]
    extra: dict[str, Any]
    path: pathlib.Path | None = None


# ---------------------------------------------------------------------------------------------
# canonical content and hash


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON-like plain Python (dicts with str keys, lists, str, numbers, None)."""
    if isinstance(value, Enum):
        return _plain(value.value, where)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # plain str: subclasses (torch's TorchVersion) do not load safely
    if isinstance(value, np.generic):
        return _plain(value.item(), where)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value), where)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InputError(f"{where} must have string keys, got key {k!r}")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _plain(value.item(), where)
    raise InputError(
        f"{where} must hold only numbers, strings, booleans, None, lists and dicts; "
        f"got {type(value).__name__}"
    )


def _check_extra(value: Any, where: str) -> Any:
    """Tensors are allowed in ``extra`` too; anything torch cannot load safely is not."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float | str):
        return _plain(value, where)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not (isinstance(k, str | int) and not isinstance(k, bool)):
                raise InputError(f"{where} must have str or int keys, got key {k!r}")
            out[k] = _check_extra(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, list):
        return [_check_extra(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_check_extra(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, np.ndarray):
        raise InputError(f"{where} is a numpy array; store it as torch.from_numpy(...) instead")
    raise InputError(
        f"{where} must hold only tensors, numbers, strings, booleans, None, lists, tuples and "
        f"dicts; got {type(value).__name__}"
    )


def _feed_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        _feed_tensor(h, value)
    elif isinstance(value, Mapping):
        keys = sorted(value, key=lambda k: (type(k).__name__, str(k)))
        h.update(f"D{len(keys)}".encode())
        for k in keys:
            h.update(f"K{type(k).__name__}:{k}\0".encode())
            _feed(h, value[k])
    elif isinstance(value, list | tuple):
        h.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for v in value:
            _feed(h, v)
    else:
        h.update(f"V{type(value).__name__}:{value!r}\0".encode())


def _content_hash(
    meta: Mapping[str, Any],
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
    extra: Mapping[str, Any] | None,
) -> str:
    h = hashlib.sha256()
    h.update(f"{FORMAT_NAME}\0".encode())
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for role in sorted(state_dicts):
        sd = state_dicts[role]
        h.update(f"\0S{role}\0{len(sd)}".encode())
        for name in sorted(sd):
            h.update(f"\0N{name}\0".encode())
            _feed_tensor(h, sd[name])
    if extra:
        h.update(b"\0E")
        _feed(h, extra)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# saving


def _software() -> dict[str, Any]:
    from vstain_dask import __version__

    return {
        "vstain-dask": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
    }


def _hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    else:
        info["gpus"] = []
    return info


def _architecture(net: nn.Module, config: Any, role: str) -> dict[str, Any]:
    if isinstance(config, GeneratorConfig):
        return {"type": "generator", **config.to_dict()}
    if isinstance(config, DiscriminatorConfig):
        return {"type": "discriminator", **config.to_dict()}
    raise InputError(
        f"network {role!r} has no vstain-dask config (got {type(net).__name__}); build it with "
        "build_generator/build_discriminator or pass its config"
    )


def _build(arch: GeneratorConfig | DiscriminatorConfig) -> nn.Module:
    if isinstance(arch, DiscriminatorConfig):
        return PatchDiscriminator(arch)
    if arch.kind.value == "unet":
        return UnetGenerator(arch)
    return ResnetGenerator(arch)


def _config_from_dict(data: Any, role: str) -> GeneratorConfig | DiscriminatorConfig:
    if not isinstance(data, Mapping) or data.get("type") not in ("generator", "discriminator"):
        raise CheckpointError(
            f"architecture of {role!r} must be a mapping with type 'generator' or "
            f"'discriminator', got {data!r}"
        )
    cls = GeneratorConfig if data["type"] == "generator" else DiscriminatorConfig
    try:
        return cls.from_dict(data)
    except InputError as e:
        raise CheckpointError(f"architecture of {role!r} is invalid: {e}") from e


def _match_state_dict(
    arch: GeneratorConfig | DiscriminatorConfig,
    state_dict: Mapping[str, Any],
    role: str,
    *,
    error: type[Exception] = CheckpointError,
) -> None:
    """Raise ``error`` naming what differs between ``state_dict`` and the architecture."""
    with torch.device("meta"):
        reference = _build(arch).state_dict()
    missing = [k for k in reference if k not in state_dict]
    unexpected = [k for k in state_dict if k not in reference]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) {unexpected[:5]}")
        raise error(f"weights of {role!r} do not match its architecture: {'; '.join(parts)}")
    for key, ref in reference.items():
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            raise error(f"weight {key!r} of {role!r} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != tuple(ref.shape):
            raise error(
                f"weight {key!r} of {role!r} has shape {tuple(t.shape)} but the architecture "
                f"needs {tuple(ref.shape)}"
            )


def _unwrap(net: Any) -> Any:
    """The plain module inside torch.compile, DataParallel and DistributedDataParallel wrappers,
    so that saved keys do not carry ``_orig_mod.`` or ``module.`` prefixes."""
    for _ in range(4):
        inner = getattr(net, "_orig_mod", None)
        if inner is None and isinstance(net, nn.DataParallel | nn.parallel.DistributedDataParallel):
            inner = net.module
        if inner is None:
            return net
        net = inner
    return net


def _output_channels(config: GeneratorConfig, names: Sequence[str] | None) -> list[str]:
    if names is None:
        if config.out_channels == 3:
            return ["R", "G", "B"]
        if config.out_channels == 1:
            return ["grey"]
        return [f"c{i}" for i in range(config.out_channels)]
    names = [str(n) for n in names]
    if len(names) != config.out_channels:
        raise InputError(f"output_channels must name {config.out_channels} channels, got {names}")
    return names


def _check_pixel_size(value: Any) -> float | None:
    """A pixel size in µm as a finite positive float, or None."""
    if value is None:
        return None
    try:
        size = float(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"pixel_size must be a positive number of µm, got {value!r}") from e
    if isinstance(value, bool) or not (math.isfinite(size) and size > 0):
        raise InputError(f"pixel_size must be a positive number of µm, got {value!r}")
    return size


def model_pixel_size(meta: Mapping[str, Any]) -> float | None:
    """The pixel size (µm) a model's metadata records, or None where it records none (files
    written before it was recorded, imported models without ``--pixel-size``).

    Raises
    ------
    CheckpointError
        The recorded value is not a positive number.
    """
    value = meta.get("pixel_size")
    try:
        return _check_pixel_size(value)
    except InputError as e:
        raise CheckpointError(f"the model records an invalid pixel size: {e}") from e


def _check_prefilter(value: Any) -> dict[str, Any] | None:
    """A prefilter record: a mapping whose ``sigma`` is a finite number >= 0 (voxels) and
    whose ``reason`` is text, or None."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InputError(f"prefilter must be a mapping with 'sigma' and 'reason', got {value!r}")
    sigma = value.get("sigma")
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, int | float)
        or not (math.isfinite(sigma) and sigma >= 0)
    ):
        raise InputError(f"prefilter sigma must be a number >= 0 of voxels, got {sigma!r}")
    if not isinstance(value.get("reason"), str):
        raise InputError(f"prefilter reason must be text, got {value.get('reason')!r}")
    return {**value, "sigma": float(sigma)}


def model_prefilter(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The 3D Gaussian prefilter a model's metadata records for staining (``sigma`` in
    voxels, ``reason``, and what it was decided from), or None where it records none (files
    written before it was recorded, imported models).

    Training records σ = 1 voxel for pairs resampled from the CT by registration (interpolated,
    as the paper's were, which then always prefiltered with σ = 1) and 0 otherwise.

    Raises
    ------
    CheckpointError
        The record is not a mapping with a ``sigma`` >= 0 and a ``reason``.
    """
    try:
        return _check_prefilter(meta.get("prefilter"))
    except InputError as e:
        raise CheckpointError(f"the model records an invalid prefilter: {e}") from e


def pixel_sizes_match(a: float, b: float) -> bool:
    """Whether two pixel sizes (µm, positive) are the same within :data:`PIXEL_SIZE_TOLERANCE`."""
    lo, hi = sorted((float(a), float(b)))
    return hi <= lo * (1 + PIXEL_SIZE_TOLERANCE)


@dataclass(frozen=True)
class _Record:
    """What a model file records besides its weights (see :func:`save_model`)."""

    normalization: InputNormalization
    variant: Variant | str
    training: Mapping[str, Any] | None = None
    seed: int | None = None
    split: Mapping[str, Any] | None = None
    metrics: Mapping[str, Any] | None = None
    hardware: Mapping[str, Any] | None = None
    command: str | None = None
    source: Mapping[str, Any] | None = None
    notes: str | None = None
    output_channels: Sequence[str] | None = None
    pixel_size: float | None = None
    prefilter: Mapping[str, Any] | None = None

    def checked(self) -> _Record:
        """The record with its variant as a :class:`Variant` and its pixel size as a float;
        raises :class:`~vstain_dask.errors.InputError` for a wrong value."""
        variant = as_enum(Variant, self.variant, "variant")
        if not isinstance(self.normalization, InputNormalization):
            raise InputError(
                "normalization must be an InputNormalization, got "
                f"{type(self.normalization).__name__}"
            )
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"seed must be an integer or None, got {seed!r}")
        pixel_size = _check_pixel_size(self.pixel_size)
        prefilter = _check_prefilter(self.prefilter)
        return dataclasses.replace(
            self, variant=variant, pixel_size=pixel_size, prefilter=prefilter
        )


def _check_destination(path: pathlib.Path, *, card: bool, overwrite: bool) -> None:
    """Refuse to replace a model file (or its card) unless ``overwrite``, and a ``.md`` path."""
    if not overwrite:
        for p in (path, card_path(path)) if card else (path,):
            if p.exists():
                raise OutputExistsError(
                    f"{p} exists; pass overwrite=True (--overwrite) to replace it"
                )
    if path.suffix.lower() == ".md":
        raise InputError(f"path must not end in .md (the card goes there), got {path}")


@dataclass
class _Weights:
    """The networks of a model file as stored: architectures, parameter counts, state dicts."""

    architectures: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    state_dicts: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def add(self, role: str, net: Any, config: Any) -> None:
        """Record one network; ``config`` None: the network's own."""
        net = _unwrap(net)
        if not isinstance(net, nn.Module):
            raise InputError(f"network {role!r} must be a torch nn.Module, got {type(net)}")
        config = getattr(net, "config", None) if config is None else config
        own = getattr(net, "config", None)
        if own is not None and config is not None and own != config:
            raise InputError(
                f"config of {role!r} differs from the network's own config: {config} vs {own}"
            )
        self.architectures[role] = _architecture(net, config, role)
        sd = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        _match_state_dict(config, sd, role, error=InputError)
        self.state_dicts[role] = sd
        self.parameters[role] = count_parameters(net)

    def generator_config(self, normalization: InputNormalization) -> GeneratorConfig:
        """The generator's architecture, checked against the input ``normalization``."""
        gen_config = _config_from_dict(self.architectures["generator"], "generator")
        if not isinstance(gen_config, GeneratorConfig):
            raise InputError("network 'generator' must be a generator, got a discriminator")
        if normalization.channels != gen_config.in_channels:
            raise InputError(
                f"normalization.channels ({normalization.channels}) must equal the generator's "
                f"in_channels ({gen_config.in_channels})"
            )
        return gen_config


def _weights(networks: Mapping[str, tuple[nn.Module, Any]]) -> _Weights:
    if "generator" not in networks:
        raise InputError(f"networks must include 'generator', got roles {sorted(networks)}")
    weights = _Weights()
    for role, (net, config) in networks.items():
        weights.add(role, net, config)
    return weights


def _meta(kind: str, record: _Record, weights: _Weights) -> dict[str, Any]:
    """The ``meta`` dict of a model file (see the module notes), from a checked record."""
    gen_config = weights.generator_config(record.normalization)
    hardware = record.hardware
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "variant": record.variant.value,
        "architectures": weights.architectures,
        "parameters": weights.parameters,
        "normalization": record.normalization.to_dict(),
        "output": {
            "channels": _output_channels(gen_config, record.output_channels),
            "range": [-1.0, 1.0],
            "to_uint8": _TO_UINT8,
        },
        "training": _plain(dict(record.training or {}), "training"),
        "seed": record.seed,
        "split": _plain(dict(record.split or {}), "split"),
        "metrics": _plain(dict(record.metrics or {}), "metrics"),
        "software": _software(),
        "hardware": _plain(dict(hardware) if hardware is not None else _hardware(), "hardware"),
        "command": None if record.command is None else str(record.command),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "source": _plain(dict(record.source), "source") if record.source else None,
        "notes": None if record.notes is None else str(record.notes),
        "pixel_size": record.pixel_size,
        "prefilter": _plain(dict(record.prefilter), "prefilter") if record.prefilter else None,
    }


def _save_doc(doc: dict[str, Any], path: pathlib.Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then move it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(doc, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write(
    path: str | os.PathLike,
    *,
    kind: str,
    networks: Mapping[str, tuple[nn.Module, Any]],
    record: _Record,
    extra: Mapping[str, Any] | None = None,
    card: bool,
    overwrite: bool,
) -> pathlib.Path:
    """Write a model file of ``kind`` ("model" or "training") and, if ``card``, its card."""
    path = pathlib.Path(path)
    _check_destination(path, card=card, overwrite=overwrite)
    record = record.checked()
    weights = _weights(networks)
    meta = _meta(kind, record, weights)
    extra_plain = _check_extra(dict(extra), "extra") if extra else {}
    digest = _content_hash(meta, weights.state_dicts, extra_plain)
    doc: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sha256": digest,
        "meta": meta,
        "state_dicts": weights.state_dicts,
    }
    if kind == "training":
        doc["extra"] = extra_plain
    _save_doc(doc, path)
    if card:
        text = render_card(meta, sha256=digest, file_name=path.name)
        card_file = card_path(path)
        tmp_card = card_file.with_name(f".{card_file.name}.{os.getpid()}.tmp")
        tmp_card.write_text(text, encoding="utf-8")
        os.replace(tmp_card, card_file)
    return path


# A long keyword list on purpose: the public call of the trainer, the importer, the benchmarks and
# users, with its documentation; the body only bundles the keywords into a _Record.
def save_model(
    path: str | os.PathLike,
    *,
    generator: nn.Module,
    normalization: InputNormalization,
    variant: Variant | str,
    config: GeneratorConfig | None = None,
    training: Mapping[str, Any] | None = None,
    seed: int | None = None,
    split: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    hardware: Mapping[str, Any] | None = None,
    command: str | None = None,
    source: Mapping[str, Any] | None = None,
    notes: str | None = None,
    output_channels: Sequence[str] | None = None,
    pixel_size: float | None = None,
    prefilter: Mapping[str, Any] | None = None,
    card: bool = True,
    overwrite: bool = False,
) -> pathlib.Path:
    """Save a CT -> stain generator as a model file, and its Markdown card beside it.

    Parameters
    ----------
    path : path
        Model file to write (``.pt`` by convention); the card goes to the same name with
        ``.md``.
    generator : nn.Module
        The generator (built by :func:`~vstain_dask.models.networks.build_generator`, or any
        module whose state dict matches ``config``).
    normalization : InputNormalization
        How raw CT maps to the generator's input; ``channels`` must equal its input channels.
    variant : Variant
        Training method.
    config : GeneratorConfig or None
        Architecture; default ``generator.config``.
    training, split, metrics, hardware, source : mapping or None
        Plain (JSON-like) metadata: training hyperparameters (epochs, batch size, lr, loss
        weights, ...), the data and split (pair ids per role), evaluation metrics, hardware
        (default: this machine's), and where an imported model came from.
    seed : int or None
        Training seed.
    command : str or None
        Command line that produced the model.
    notes : str or None
        Free text shown at the top of the card.
    output_channels : sequence of str or None
        Meaning of the output channels (default R, G, B).
    pixel_size : float or None
        µm: the pixel size of the images the generator was trained on (``stain`` compares it
        with a volume's voxel size); None: not known.
    prefilter : mapping or None
        The 3D Gaussian prefilter ``stain`` applies by default: ``sigma`` (voxels, >= 0),
        ``reason`` (text) and any plain details (:func:`model_prefilter`); None: not known
        (``stain`` then applies none unless told).
    card : bool
        Also write the Markdown card.
    overwrite : bool
        Replace an existing file and card.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    record = _Record(
        normalization=normalization, variant=variant, training=training, seed=seed, split=split,
        metrics=metrics, hardware=hardware, command=command, source=source, notes=notes,
        output_channels=output_channels, pixel_size=pixel_size, prefilter=prefilter,
    )  # fmt: skip
    networks = {"generator": (generator, config)}
    return _write(path, kind="model", networks=networks, record=record, card=card,
                  overwrite=overwrite)  # fmt: skip


# A long keyword list on purpose, as save_model's: the trainer's call.
def save_training_checkpoint(
    path: str | os.PathLike,
    *,
    networks: Mapping[str, nn.Module],
    normalization: InputNormalization,
    variant: Variant | str,
    extra: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    seed: int | None = None,
    split: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    hardware: Mapping[str, Any] | None = None,
    command: str | None = None,
    notes: str | None = None,
    pixel_size: float | None = None,
    prefilter: Mapping[str, Any] | None = None,
    card: bool = True,
    overwrite: bool = False,
) -> pathlib.Path:
    """Save all networks of a training run, plus the trainer's state, and a card beside it.

    Parameters
    ----------
    networks : mapping of role -> nn.Module
        As returned by :func:`~vstain_dask.models.networks.build_networks`; ``"generator"`` is
        required. Each module must carry its ``config``.
    extra : mapping or None
        Trainer state to restore on resume (optimizer and scheduler state dicts, epoch, replay
        buffers, RNG states as tensors, ...): tensors, numbers, strings, booleans, None, lists,
        tuples and dicts only.
    Other parameters
        As for :func:`save_model`.

    Returns
    -------
    pathlib.Path
        ``path``. :func:`load_model` reads the generator from it;
        :func:`load_training_checkpoint` reads everything.
    """
    if not isinstance(networks, Mapping):
        raise InputError(f"networks must be a mapping of role -> module, got {type(networks)}")
    record = _Record(
        normalization=normalization, variant=variant, training=training, seed=seed, split=split,
        metrics=metrics, hardware=hardware, command=command, notes=notes, pixel_size=pixel_size,
        prefilter=prefilter,
    )  # fmt: skip
    roles = {role: (net, None) for role, net in networks.items()}
    return _write(path, kind="training", networks=roles, record=record, extra=extra,
                  card=card, overwrite=overwrite)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# loading


def _guess_foreign(keys: Sequence[str]) -> str | None:
    if any(".block." in k for k in keys):
        return ForeignFormat.PYTORCH_GAN.value
    if any(".conv_block." in k or k.startswith("model.model.") for k in keys):
        return ForeignFormat.CYCLEGAN_PIX2PIX.value
    return None


def _load_file(path: pathlib.Path, *, mmap: bool) -> Any:
    if not path.exists():
        raise CheckpointError(f"model file {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"model path {path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"model file {path} is empty")
    with open(path, "rb") as f:
        head = f.read(4)
    is_zip = head == b"PK\x03\x04"
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"model file {path} is truncated or damaged (its zip directory is unreadable); "
            "copy it again or re-create it"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as e:
        # zip archives and legacy torch files (a pickle, b"\x80...") really hold pickled objects;
        # anything else (an .npy, say) only fails the unpickler by accident
        if "Weights only load failed" in str(e) and (is_zip or head[:1] == b"\x80"):
            raise CheckpointError(
                f"model file {path} contains pickled Python objects, not just weights (a whole "
                "saved module?); vstain-dask only loads weights: save a state_dict and import "
                "it with `vstain-dask model import`"
            ) from e
        raise CheckpointError(_unreadable(path, is_zip, e)) from e
    except Exception as e:  # torch raises RuntimeError, KeyError, EOFError, ... for bad bytes
        raise CheckpointError(_unreadable(path, is_zip, e)) from e


def _unreadable(path: pathlib.Path, is_zip: bool, e: BaseException) -> str:
    reason = " ".join(str(e).split())[:160]
    if is_zip:
        return (
            f"model file {path} is truncated or damaged and cannot be read "
            f"({type(e).__name__}: {reason}); copy it again or re-create it"
        )
    return (
        f"{path} is not a PyTorch model file ({type(e).__name__}: {reason}); "
        "give a .pt file written by vstain-dask"
    )


def _read(path: str | os.PathLike, *, verify: bool, mmap: bool = True) -> dict[str, Any]:
    """Load and validate the structure (and, if ``verify``, the content hash) of a model file."""
    path = pathlib.Path(path)
    doc = _load_file(path, mmap=mmap)
    if not isinstance(doc, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(doc).__name__}, not a vstain-dask model; give a .pt file "
            "written by vstain-dask"
        )
    if doc and all(isinstance(v, torch.Tensor) for v in doc.values()):
        guess = _guess_foreign(list(doc))
        hint = f"--from {guess}" if guess else "--from pytorch-gan|cyclegan-pix2pix"
        raise CheckpointError(
            f"{path} is a bare state dict ({len(doc)} tensors), not a vstain-dask model; convert "
            f"it with `vstain-dask model import {path.name} {hint} -o model.pt`"
        )
    if doc.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{path} is not a vstain-dask model file (its 'format' is {doc.get('format')!r}, "
            f"expected {FORMAT_NAME!r}); foreign checkpoints are converted with "
            "`vstain-dask model import`"
        )
    version = doc.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}, newer than this vstain-dask reads "
            f"({FORMAT_VERSION}); upgrade vstain-dask"
        )
    missing = [k for k in ("sha256", "meta", "state_dicts") if k not in doc]
    if missing:
        raise CheckpointError(f"{path} lacks the key(s) {missing}; the file is incomplete")
    meta, state_dicts = doc["meta"], doc["state_dicts"]
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{path}: 'meta' must be a dict, got {type(meta).__name__}")
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: metadata lacks the key(s) {missing}")
    if not isinstance(state_dicts, Mapping) or "generator" not in state_dicts:
        raise CheckpointError(f"{path} holds no 'generator' weights")
    for role, sd in state_dicts.items():
        if not isinstance(sd, Mapping):
            raise CheckpointError(f"{path}: weights of {role!r} are not a state dict")
    if not isinstance(doc["sha256"], str):
        raise CheckpointError(f"{path}: 'sha256' must be a hex string")
    if verify:
        actual = _content_hash(meta, state_dicts, doc.get("extra") or {})
        if actual != doc["sha256"]:
            raise CheckpointError(
                f"checksum mismatch in {path}: the file records sha256 {doc['sha256'][:16]}... "
                f"but its content hashes to {actual[:16]}...; the file is corrupted or was "
                "edited, copy it again or re-create it"
            )
    return dict(doc)


def _normalization(meta: Mapping[str, Any], path: pathlib.Path) -> InputNormalization:
    try:
        return InputNormalization.from_dict(meta["normalization"])
    except InputError as e:
        raise CheckpointError(f"{path}: input normalization is invalid: {e}") from e


def _variant(meta: Mapping[str, Any], path: pathlib.Path) -> Variant:
    try:
        return as_enum(Variant, meta["variant"], "variant")
    except InputError as e:
        raise CheckpointError(f"{path}: {e}") from e


def _check_records(meta: Mapping[str, Any], path: pathlib.Path) -> None:
    """Refuse a model whose recorded pixel size (0, negative, not a number) or prefilter
    cannot be used: a stain would compare the volume with it or apply it."""
    try:
        model_pixel_size(meta)
        model_prefilter(meta)
    except CheckpointError as e:
        raise CheckpointError(
            f"{path}: {e}; re-create the model (`vstain-dask model import --pixel-size UM` "
            "records a pixel size)"
        ) from e


def _load_network(
    meta: Mapping[str, Any],
    state_dicts: Mapping[str, Any],
    role: str,
    device: torch.device | str,
) -> tuple[nn.Module, GeneratorConfig | DiscriminatorConfig]:
    archs = meta["architectures"]
    if not isinstance(archs, Mapping) or role not in archs:
        raise CheckpointError(f"no architecture is recorded for {role!r}")
    arch = _config_from_dict(archs[role], role)
    sd = state_dicts[role]
    _match_state_dict(arch, sd, role)
    net = _build(arch)
    net.load_state_dict(sd, strict=True)
    return net.to(device), arch


def load_model(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> StainModel:
    """Load a model file (or the generator of a training checkpoint), ready to stain.

    The file is validated (format, version, keys, content hash, architecture, weight shapes);
    anything wrong raises :class:`~vstain_dask.errors.CheckpointError` saying what.

    Parameters
    ----------
    path : path
        File written by :func:`save_model`, :func:`save_training_checkpoint` or
        ``vstain-dask model import``.
    device : torch device
        Where to put the generator.

    Returns
    -------
    StainModel
        Generator in eval mode without gradients, plus normalization, variant, config, hash and
        metadata.
    """
    path = pathlib.Path(path)
    dev = resolve_device(device)
    doc = _read(path, verify=True)
    meta = doc["meta"]
    normalization = _normalization(meta, path)
    variant = _variant(meta, path)
    _check_records(meta, path)
    try:
        net, arch = _load_network(meta, doc["state_dicts"], "generator", dev)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    if not isinstance(arch, GeneratorConfig):
        raise CheckpointError(f"{path}: 'generator' is recorded as a discriminator")
    net.eval().requires_grad_(False)
    return StainModel(
        generator=net,
        normalization=normalization,
        variant=variant,
        config=arch,
        sha256=doc["sha256"],
        card=dict(meta),
        path=path,
    )


def load_training_checkpoint(
    path: str | os.PathLike, *, device: torch.device | str = "cpu"
) -> TrainingCheckpoint:
    """Load every network and the trainer state of a training checkpoint.

    Parameters
    ----------
    path : path
        File written by :func:`save_training_checkpoint`.
    device : torch device
        Where to put the networks (and nothing else: ``extra`` stays on the CPU).
    """
    path = pathlib.Path(path)
    dev = resolve_device(device)
    doc = _read(path, verify=True, mmap=False)
    meta = doc["meta"]
    if meta.get("kind") != "training":
        raise CheckpointError(
            f"{path} is a {meta.get('kind')!r} file, not a training checkpoint; it holds only "
            "the generator (use load_model)"
        )
    networks = {}
    for role in doc["state_dicts"]:
        try:
            net, _ = _load_network(meta, doc["state_dicts"], role, dev)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from e
        networks[role] = net.train()
    return TrainingCheckpoint(
        networks=networks,
        variant=_variant(meta, path),
        normalization=_normalization(meta, path),
        sha256=doc["sha256"],
        meta=dict(meta),
        extra=dict(doc.get("extra") or {}),
        path=path,
    )


def model_info(path: str | os.PathLike, *, verify: bool = False) -> dict[str, Any]:
    """The metadata of a model file, without building any network.

    Parameters
    ----------
    path : path
        Model file.
    verify : bool
        Also check the content hash (reads all weights).

    Returns
    -------
    dict
        The stored metadata plus ``"sha256"``, ``"path"`` and ``"file_size"`` (bytes).
    """
    path = pathlib.Path(path)
    doc = _read(path, verify=verify)
    info = dict(doc["meta"])
    info["sha256"] = doc["sha256"]
    info["path"] = str(path)
    info["file_size"] = path.stat().st_size
    return info


def read_card(path: str | os.PathLike, *, verify: bool = False) -> str:
    """The Markdown model card of a model file, rendered from its metadata (no network built)."""
    info = model_info(path, verify=verify)
    return render_card(info, sha256=info["sha256"], file_name=pathlib.Path(path).name)
