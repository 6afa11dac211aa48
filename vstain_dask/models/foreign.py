"""Import generator checkpoints written by the code the paper and its baselines used.

Two formats are understood (:class:`~vstain_dask.models.config.ForeignFormat`):

``pytorch-gan``
    eriklindernoren/PyTorch-GAN ``implementations/cyclegan``: a bare state dict of
    ``GeneratorResNet`` saved as ``G_AB_<epoch>.pth`` (keys ``model.<i>.weight``, residual blocks
    under ``model.<i>.block.<j>``), nearest upsampling + 3 x 3 convolution, instance norm, 64
    base features. Channels and block count are read from the tensors. Its quirk: the reflection
    padding before both 7 x 7 convolutions equals the channel count. A model trained on
    greyscale CT repeated to 3 channels (as the paper did) therefore has the usual padding of 3;
    a 1-channel model pads by 1 and its bare output is 8 pixels smaller than its input (the
    imported generator's ``forward`` pads and crops so that the output matches the input size;
    ``forward_raw`` is the unmodified network). Override with ``outer_pad``.

``cyclegan-pix2pix``
    junyanz/pytorch-CycleGAN-and-pix2pix: ``latest_net_G_A.pth`` / ``latest_net_G.pth`` of
    ``ResnetGenerator`` (keys ``model.<i>``, residual blocks under ``model.<i>.conv_block.<j>``,
    transposed-convolution upsampling, padding 3) or ``UnetGenerator`` (nested keys
    ``model.model.1.model.3...``). Norm (instance or batch), base features, residual blocks,
    U-Net depth and dropout in residual blocks are read from the tensors. Running statistics of
    instance-norm layers that old versions of that code saved are dropped, as its own loader
    does. U-Net dropout (only active in training) cannot be seen in the weights; it defaults to
    on, as Pix2Pix trains.

Neither format records the CT normalization, so it is given at import
(:class:`~vstain_dask.models.config.InputNormalization`, default: the paper's).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import torch

from vstain_dask._validate import refuse_unknown_keywords
from vstain_dask.errors import CheckpointError, InputError, as_enum
from vstain_dask.models.checkpoint import (
    FORMAT_NAME,
    _build,
    _load_file,
    _match_state_dict,
    save_model,
)
from vstain_dask.models.config import (
    ForeignFormat,
    GeneratorConfig,
    GeneratorKind,
    InputNormalization,
    Norm,
    Upsample,
    Variant,
)
from vstain_dask.models.networks import build_generator

__all__ = ["convert_state_dict", "import_checkpoint"]

_STATS = ("running_mean", "running_var", "num_batches_tracked")
#: keywords of :func:`import_checkpoint` passed on to :func:`convert_state_dict`
_OVERRIDES = ("outer_pad", "dropout")


def _require(sd: Mapping[str, torch.Tensor], key: str, ndim: int, what: str) -> torch.Tensor:
    t = sd.get(key)
    if not isinstance(t, torch.Tensor) or t.ndim != ndim:
        got = "missing" if t is None else f"shape {tuple(getattr(t, 'shape', ()))}"
        raise CheckpointError(
            f"expected {what} at key {key!r} ({ndim}-D tensor), but it is {got}; "
            "check the --from format"
        )
    return t


def _indices(keys: list[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _block_count(keys: list[str], pattern: str, start: int) -> int:
    found = _indices(keys, pattern)
    n = len(found)
    if found != list(range(start, start + n)):
        raise CheckpointError(
            f"residual blocks should sit at model.{start}..model.{start + n - 1}, found them at "
            f"{found}; this is not the expected generator layout"
        )
    return n


def _resnet_table(
    n: int, *, block: str, conv2: int, up: tuple[int, int], head: int
) -> dict[str, str]:
    """Our ResNet generator's parameter names -> a foreign ``model.<i>`` Sequential's names.

    Both foreign ResNets share the stem and the two down-sampling steps (``model.1``/``.2``,
    ``.4``/``.5``, ``.7``/``.8``) and put ``n`` residual blocks from ``model.10`` (each a
    Sequential named ``block``, with its second conv at index ``conv2`` and that norm after
    it); they differ after the blocks: ``up`` holds the two up-sampling convs' indices (each
    followed by its norm), ``head`` the last conv's.
    """
    table = {"stem.conv": "model.1", "stem.norm": "model.2"}
    table |= {"down.0.conv": "model.4", "down.0.norm": "model.5"}
    table |= {"down.1.conv": "model.7", "down.1.norm": "model.8"}
    for i in range(n):
        base = f"model.{10 + i}.{block}"
        table |= {
            f"blocks.{i}.body.conv1": f"{base}.1",
            f"blocks.{i}.body.norm1": f"{base}.2",
            f"blocks.{i}.body.conv2": f"{base}.{conv2}",
            f"blocks.{i}.body.norm2": f"{base}.{conv2 + 1}",
        }
    for j, index in enumerate(up):
        table |= {f"up.{j}.conv": f"model.{index}", f"up.{j}.norm": f"model.{index + 1}"}
    table["head.conv"] = f"model.{head}"
    return table


def _infer_pytorch_gan(
    sd: Mapping[str, torch.Tensor], outer_pad: int | None
) -> tuple[GeneratorConfig, dict[str, str]]:
    keys = list(sd)
    if any(".conv_block." in k for k in keys) or any(k.startswith("model.model.") for k in keys):
        raise CheckpointError(
            "these weights use pytorch-CycleGAN-and-pix2pix names (conv_block / model.model); "
            "import them with --from cyclegan-pix2pix"
        )
    stem = _require(sd, "model.1.weight", 4, "the first 7x7 convolution of GeneratorResNet")
    n = _block_count(keys, r"model\.(\d+)\.block\.", 10)
    head = _require(sd, f"model.{19 + n}.weight", 4, "the last 7x7 convolution")
    channels = int(stem.shape[1])
    config = GeneratorConfig(
        kind=GeneratorKind.RESNET,
        in_channels=channels,
        out_channels=int(head.shape[0]),
        ngf=int(stem.shape[0]),
        n_blocks=n,
        upsample=Upsample.NEAREST,
        # PyTorch-GAN pads by the channel count (see the module notes)
        outer_pad=channels if outer_pad is None else outer_pad,
        norm=Norm.INSTANCE,
        dropout=False,
    )
    # after the blocks: upsample, conv, norm, relu (twice), then pad, conv, tanh
    table = _resnet_table(n, block="block", conv2=5, up=(11 + n, 15 + n), head=19 + n)
    return config, table


def _infer_junyanz_resnet(
    sd: Mapping[str, torch.Tensor], outer_pad: int | None, dropout: bool | None
) -> tuple[GeneratorConfig, dict[str, str]]:
    keys = list(sd)
    stem = _require(sd, "model.1.weight", 4, "the first 7x7 convolution of ResnetGenerator")
    norm = Norm.BATCH if "model.2.weight" in sd else Norm.INSTANCE
    n = _block_count(keys, r"model\.(\d+)\.conv_block\.", 10)
    # a Dropout inside the blocks shifts the second convolution from index 5 to 6
    second = sd.get("model.10.conv_block.6.weight")
    has_dropout = n > 0 and isinstance(second, torch.Tensor) and second.ndim == 4
    head = _require(sd, f"model.{17 + n}.weight", 4, "the last 7x7 convolution")
    config = GeneratorConfig(
        kind=GeneratorKind.RESNET,
        in_channels=int(stem.shape[1]),
        out_channels=int(head.shape[0]),
        ngf=int(stem.shape[0]),
        n_blocks=n,
        upsample=Upsample.TRANSPOSE,
        outer_pad=3 if outer_pad is None else outer_pad,
        norm=norm,
        dropout=has_dropout if dropout is None else dropout,
    )
    c2 = 6 if has_dropout else 5
    # after the blocks: convT, norm, relu (twice), then pad, conv, tanh
    table = _resnet_table(n, block="conv_block", conv2=c2, up=(10 + n, 13 + n), head=17 + n)
    return config, table


def _unet_prefix(level: int) -> str:
    # UnetSkipConnectionBlock nesting: the outermost block's Sequential is model.model; its
    # submodule sits at index 1, every deeper submodule at index 3 of its parent's Sequential
    if level == 0:
        return "model.model"
    return "model.model.1.model" + ".3.model" * (level - 1)


def _infer_junyanz_unet(
    sd: Mapping[str, torch.Tensor], dropout: bool | None
) -> tuple[GeneratorConfig, dict[str, str]]:
    first = _require(sd, "model.model.0.weight", 4, "the first convolution of UnetGenerator")
    last = _require(sd, "model.model.3.weight", 4, "the last transposed convolution")
    depth = 1
    while f"{_unet_prefix(depth)}.1.weight" in sd:
        depth += 1
    if depth < 2:
        raise CheckpointError(
            "found no inner U-Net levels (model.model.1.model.1.weight); this is not an "
            "UnetGenerator state dict"
        )
    inner = _unet_prefix(depth - 1)
    norm = Norm.BATCH if f"{inner}.4.weight" in sd else Norm.INSTANCE
    config = GeneratorConfig(
        kind=GeneratorKind.UNET,
        in_channels=int(first.shape[1]),
        out_channels=int(last.shape[1]),
        ngf=int(first.shape[0]),
        depth=depth,
        norm=norm,
        dropout=True if dropout is None else dropout,
    )
    table = {"encoder.0.conv": "model.model.0", f"decoder.{depth - 1}.conv": "model.model.3"}
    for level in range(1, depth - 1):
        p, j = _unet_prefix(level), depth - 1 - level
        table |= {
            f"encoder.{level}.conv": f"{p}.1",
            f"encoder.{level}.norm": f"{p}.2",
            f"decoder.{j}.conv": f"{p}.5",
            f"decoder.{j}.norm": f"{p}.6",
        }
    table |= {f"encoder.{depth - 1}.conv": f"{inner}.1"}
    table |= {"decoder.0.conv": f"{inner}.3", "decoder.0.norm": f"{inner}.4"}
    return config, table


def _strip_data_parallel(sd: Mapping[str, Any]) -> dict[str, Any]:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def _tensors_only(state_dict: Any) -> dict[str, torch.Tensor]:
    """The state dict without a DataParallel ``module.`` prefix; refuses anything else."""
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError("expected a non-empty state dict of tensors")
    sd = _strip_data_parallel(state_dict)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"expected a bare state dict of tensors, but {len(bad)} entries are not tensors "
            f"(e.g. {bad[:3]}); save the generator with torch.save(net.state_dict(), path)"
        )
    return sd


def _infer(
    sd: Mapping[str, torch.Tensor],
    source: ForeignFormat,
    outer_pad: int | None,
    dropout: bool | None,
) -> tuple[GeneratorConfig, dict[str, str], list[str]]:
    """The architecture, the table of module names (ours -> theirs) and notes for the card."""
    if source is ForeignFormat.PYTORCH_GAN:
        config, table = _infer_pytorch_gan(sd, outer_pad)
        return config, table, [
            f"PyTorch-GAN GeneratorResNet: {config.n_blocks} residual blocks, "
            f"{config.in_channels} -> {config.out_channels} channels, outer pad "
            f"{config.outer_pad}"
        ]  # fmt: skip
    if any(k.startswith("model.model.") for k in sd):
        config, table = _infer_junyanz_unet(sd, dropout)
        notes = [
            f"pytorch-CycleGAN-and-pix2pix UnetGenerator: {config.depth} downsamplings, "
            f"{config.norm.value} norm"
        ]
        if dropout is None:
            notes.append("dropout (training only) assumed on, as Pix2Pix trains")
        return config, table, notes
    if any(".conv_block." in k for k in sd):
        config, table = _infer_junyanz_resnet(sd, outer_pad, dropout)
        return config, table, [
            f"pytorch-CycleGAN-and-pix2pix ResnetGenerator: {config.n_blocks} residual blocks, "
            f"{config.norm.value} norm, dropout {'on' if config.dropout else 'off'}"
        ]  # fmt: skip
    sample = list(sd)[:4]
    hint = (
        " (they look like PyTorch-GAN; use --from pytorch-gan)"
        if any(".block." in k for k in sd)
        else ""
    )
    raise CheckpointError(
        "the keys match neither ResnetGenerator (model.<i>.conv_block...) nor UnetGenerator "
        f"(model.model...) of pytorch-CycleGAN-and-pix2pix, e.g. {sample}{hint}"
    )


def _drop_instance_stats(
    sd: dict[str, torch.Tensor], config: GeneratorConfig, table: Mapping[str, str]
) -> list[str]:
    """Remove running statistics of instance-norm layers from ``sd``; a note if there were."""
    if config.norm is not Norm.INSTANCE:
        return []
    norm_paths = {v for k, v in table.items() if ".norm" in k}
    dropped = [
        k for k in sd if k.rsplit(".", 1)[-1] in _STATS and k.rsplit(".", 1)[0] in norm_paths
    ]
    for k in dropped:
        del sd[k]
    if not dropped:
        return []
    return [
        f"dropped {len(dropped)} instance-norm running statistics saved by an old "
        "version of the reference code (instance norm uses per-image statistics)"
    ]


def _renamed(
    sd: Mapping[str, torch.Tensor],
    config: GeneratorConfig,
    table: Mapping[str, str],
    source: ForeignFormat,
) -> dict[str, torch.Tensor]:
    """``sd`` under our names; refuses missing and unexpected keys and wrong shapes."""
    with torch.device("meta"):
        reference = _build(config).state_dict()
    expected: dict[str, str] = {}
    for key in reference:
        module, suffix = key.rsplit(".", 1)
        expected[f"{table[module]}.{suffix}"] = key
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) {unexpected[:5]}")
        raise CheckpointError(
            f"the weights do not have the {source.value} generator layout: {'; '.join(parts)}"
        )
    converted = {ours: sd[theirs] for theirs, ours in expected.items()}
    _match_state_dict(config, converted, "generator")
    return converted


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: ForeignFormat | str,
    outer_pad: int | None = None,
    dropout: bool | None = None,
) -> tuple[GeneratorConfig, dict[str, torch.Tensor], list[str]]:
    """Translate a foreign generator state dict into a vstain-dask config and state dict.

    Parameters
    ----------
    state_dict : mapping of str -> tensor
        The foreign generator's weights.
    source : ForeignFormat
        ``"pytorch-gan"`` or ``"cyclegan-pix2pix"``.
    outer_pad : int or None
        Override the inferred reflection padding of the ResNet's 7 x 7 convolutions.
    dropout : bool or None
        Override the inferred (or, for U-Nets, assumed) dropout.

    Returns
    -------
    config : GeneratorConfig
        The architecture read from the weights.
    state_dict : dict
        The weights under vstain-dask names.
    notes : list of str
        What was inferred or dropped, for the model card.

    Raises
    ------
    CheckpointError
        If the weights do not have the layout of the named format; the message names the
        missing, unexpected or mis-shaped keys.
    """
    source = as_enum(ForeignFormat, source, "source")
    sd = _tensors_only(state_dict)
    config, table, notes = _infer(sd, source, outer_pad, dropout)
    notes += _drop_instance_stats(sd, config, table)
    return config, _renamed(sd, config, table, source), notes


def _read_weights(weights: pathlib.Path) -> Mapping[str, Any]:
    """The mapping a foreign ``.pth`` file holds; refuses one of ours and anything else."""
    raw = _load_file(weights, mmap=False)
    if isinstance(raw, Mapping) and raw.get("format") == FORMAT_NAME:
        raise CheckpointError(f"{weights} is already a vstain-dask model; no import is needed")
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"{weights} holds a {type(raw).__name__}, not a state dict; save the generator "
            "with torch.save(net.state_dict(), path)"
        )
    return raw


def _input_normalization(
    normalization: InputNormalization | Mapping[str, Any] | None, config: GeneratorConfig
) -> InputNormalization:
    """The normalization given (a mapping: some of its fields), for the generator's input."""
    if normalization is None or isinstance(normalization, Mapping):
        normalization = InputNormalization(
            **{"channels": config.in_channels, **dict(normalization or {})}
        )
    if normalization.channels != config.in_channels:
        raise InputError(
            f"the imported generator takes {config.in_channels} input channel(s), but the "
            f"normalization repeats CT to {normalization.channels}; pass --channels "
            f"{config.in_channels}"
        )
    return normalization


def _default_variant(source: ForeignFormat, config: GeneratorConfig) -> Variant:
    """The training method a format's generator comes from (see :func:`import_checkpoint`)."""
    if source is ForeignFormat.PYTORCH_GAN:
        return Variant.MOD_CYCLEGAN
    if config.kind is GeneratorKind.UNET:
        return Variant.PIX2PIX
    return Variant.CYCLEGAN


# Long for its documentation (every option of `vstain-dask model import`); the body is a short
# sequence of the helpers above.
def import_checkpoint(
    weights: str | os.PathLike,
    out: str | os.PathLike,
    *,
    source: ForeignFormat | str,
    normalization: InputNormalization | Mapping[str, Any] | None = None,
    variant: Variant | str | None = None,
    pixel_size: float | None = None,
    command: str | None = None,
    overwrite: bool = False,
    **overrides: Any,
) -> pathlib.Path:
    """Convert a foreign generator checkpoint into a vstain-dask model file (and card).

    Parameters
    ----------
    weights : path
        The foreign ``.pth`` file (a bare state dict).
    out : path
        Model file to write; the card goes beside it.
    source : ForeignFormat
        ``"pytorch-gan"`` or ``"cyclegan-pix2pix"``.
    normalization : InputNormalization, mapping or None
        How raw CT maps to the network input; neither format records it. Default: the paper's
        (uint16 normalized CT, 0..65535 -> -1..1). A mapping gives some of the fields of
        :class:`InputNormalization`; ``channels`` defaults to the generator's input channels.
    variant : Variant or None
        Training method; default ``mod-cyclegan`` for PyTorch-GAN weights (the paper's code),
        ``cyclegan`` for a pytorch-CycleGAN-and-pix2pix ResNet and ``pix2pix`` for its U-Net.
    pixel_size : float or None
        µm: the pixel size of the images the model was trained on (neither format records
        it; the paper's models: 5). None: not recorded, and ``stain`` warns.
    command : str or None
        Command line to record in the card.
    overwrite : bool
        Replace an existing output.
    **overrides
        ``outer_pad``, ``dropout``: what to take instead of what the weights say, see
        :func:`convert_state_dict`.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    refuse_unknown_keywords("import_checkpoint", overrides, _OVERRIDES)
    source = as_enum(ForeignFormat, source, "source")
    weights = pathlib.Path(weights)
    raw = _read_weights(weights)
    try:
        config, converted, notes = convert_state_dict(raw, source=source, **overrides)
    except CheckpointError as e:
        raise CheckpointError(f"{weights}: {e}") from e
    net = build_generator(config)
    net.load_state_dict(converted, strict=True)
    normalization = _input_normalization(normalization, config)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return save_model(
        out,
        generator=net,
        normalization=normalization,
        variant=_default_variant(source, config) if variant is None else variant,
        hardware={},
        command=command,
        source={
            "format": source.value,
            "file": weights.name,
            "file_sha256": digest,
            "notes": "; ".join(notes),
        },
        notes=f"Imported from {weights.name} ({source.value}); training metadata not recorded.",
        pixel_size=pixel_size,
        overwrite=overwrite,
    )
