"""The parameters of a stain: what defines its result, apart from how it is run.

:class:`StainConfig` keeps both kinds in one frozen object, as callers and the command line
build it; each field says which kind it is (``runtime`` in its metadata, see
:func:`runtime_fields`). Result-defining fields (axes, tile, step, blend, fusion, prefilter,
CT levels, mask, alpha, uncertainty) decide what a stain computes; runtime settings (device,
autocast, compile, channels-last, batch size, block shape) decide where and in what pieces it
runs. The job's fingerprint (:func:`vstain_dask.stain.job.job_fingerprint`) covers both: a
runtime setting changes the output's last bits (bf16 autocast, another device, another batch
shape) or the names of its finished-block records (block shape), so a resume must not mix them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from vstain_dask import intensity
from vstain_dask._validate import check_float, check_int
from vstain_dask.errors import InputError, as_enum
from vstain_dask.tiling import BlendMode, Tiling

#: tile, step and blend when not given: the paper's (:class:`~vstain_dask.tiling.Tiling`)
_TILING = Tiling()

#: volume axes, and for each staining axis the two volume axes that span its planes
_DIMS = ("z", "y", "x")
_PLANE_DIMS = {"z": (1, 2), "y": (0, 2), "x": (0, 1)}


def _runtime(default: Any) -> Any:
    """A runtime setting: how a stain runs (where, in what pieces), not what it computes."""
    return dataclasses.field(default=default, metadata={"runtime": True})


class Axis(StrEnum):
    """Axis along which slices are stained (planes perpendicular to it)."""

    Z = "z"
    Y = "y"
    X = "x"


class Fusion(StrEnum):
    """How a fused (several-axes) stain is organised."""

    #: one pass per axis in slabs of whole planes (no tile computed twice), each pass kept as
    #: 8-bit, then a fusion pass; costs about one single-axis stain per axis
    PASSES = "passes"
    #: 3D blocks with halos, all axes at once, fused in floating point before rounding; reads
    #: the volume once but computes the tiles that straddle block borders more than once
    BLOCKS = "blocks"


class Resample(StrEnum):
    """What a stain does when the volume's voxel size and the model's pixel size differ by
    more than 10 %."""

    #: resample the volume to the model's pixel size in every axis (area averaging where it is
    #: finer, linear interpolation where it is coarser; :func:`vstain_dask.ngff._resample.
    #: resample`), stain that, and write the stain at the model's size
    AUTO = "auto"
    #: refuse, naming both sizes (``vstain-dask import --voxel-size-out`` resamples a volume)
    CHECK = "check"
    #: stain at the volume's own voxel size anyway, with a warning
    OFF = "off"


class FuseMode(StrEnum):
    """How predictions made along several axes are combined."""

    MEAN = "mean"
    MEDIAN = "median"


@dataclasses.dataclass(frozen=True)
class StainConfig:
    """Parameters of a stain; stored in the output's provenance.

    ``batch_size``, ``block``, ``autocast``, ``channels_last``, ``compile`` and ``device`` are
    runtime settings, how the stain runs (:func:`runtime_fields`); the others define its result.

    Parameters
    ----------
    axes : str
        Staining axes, any of ``z``, ``y``, ``x`` (``"z"`` is the paper's slice-by-slice;
        ``"zyx"`` fuses three).
    tile, step : int
        Tile size and step in pixels (paper: 256 and 64).
    blend : BlendMode
        How overlapping tile predictions are averaged (paper: ``mean``). The three are
        checked, and have their defaults, as :class:`~vstain_dask.tiling.Tiling`
        (:attr:`tiling`).
    fuse : FuseMode
        How predictions along several axes are combined.
    fusion : Fusion
        ``passes`` (default): the mean (or median) of the 8-bit single-axis results, rounded
        half to even; ``blocks``: the same in floating point inside 3D blocks (see
        :class:`Fusion` for the cost of each).
    batch_size : int or None
        Tiles per model call; None: 8 on the CPU, 32 on a GPU (more tiles per call keep a
        large GPU busy; every block of a job runs the same batch shape either way).
    prefilter_sigma : float
        3D Gaussian prefilter in voxels (paper: 1.0; 0 switches it off). ``vstain-dask stain``
        takes the model's recorded σ unless ``--prefilter-sigma`` is given
        (:func:`choose_prefilter_sigma`).
    ct_levels : (float, float) or None
        Raw CT means of bone and background, mapped to 30000 and 10000 as in training.
        None: the volume is used as it is (already normalized).
    alpha : bool
        Add an alpha channel, 255 − mean(RGB), as the paper used for volume rendering.
    uncertainty : bool
        Also write the per-voxel spread between axes (needs two or more axes).
    mask : bool
        Correspondence mask, as the paper: per z-slice, the convex hull of bone and screw; voxels
        outside it get ``mask_colour`` (the histology background). The mask is written as NGFF
        labels ``sample`` in the output.
    mask_colour : (int, int, int)
        RGB for voxels outside the sample (default white, the slide background).
    resample : Resample
        What a volume whose voxel size (in the staining planes) differs from the model's pixel
        size by more than 10 % gets. ``auto`` (default): it is resampled to the model's size in
        every axis, as the paper downsampled its scans to 5 µm, and the stain is written at
        that size (see :mod:`vstain_dask.stain.job`); ``check``: refused; ``off``: stained at
        its own size, with a warning.
    block : (int, int, int) or None
        Block shape (z, y, x) in voxels; None chooses one (whole planes for one axis).
    autocast : bool or None
        bf16 autocast; None means on for CUDA, off for CPU.
    channels_last : bool
        Channels-last memory format for the tile batches.
    compile : bool or None
        ``torch.compile`` the generator (once per worker process); None means on for CUDA, off
        for the CPU. On an H200 the compiled paper generator runs 3.3 times as many tiles per
        second as the eager one, which spends three quarters of its time in memory-bound
        normalization, padding and layout copies (benchmarks/RESULTS.md, GPU section); the
        first block of a worker waits about 13 s for the compilation.
    device : str or None
        Torch device for the model; None picks CUDA when present.
    """

    axes: str = "z"
    tile: int = _TILING.tile
    step: int = _TILING.step
    blend: BlendMode = _TILING.blend
    fuse: FuseMode = FuseMode.MEAN
    fusion: Fusion = Fusion.PASSES
    batch_size: int | None = _runtime(None)
    prefilter_sigma: float = 0.0
    ct_levels: tuple[float, float] | None = None
    alpha: bool = False
    uncertainty: bool = False
    mask: bool = False
    mask_colour: tuple[int, int, int] = (255, 255, 255)
    resample: Resample = Resample.AUTO
    block: tuple[int, int, int] | None = _runtime(None)
    autocast: bool | None = _runtime(None)
    channels_last: bool = _runtime(True)
    compile: bool | None = _runtime(None)
    device: str | None = _runtime(None)

    def __post_init__(self) -> None:
        axes = "".join(str(a) for a in self.axes).lower().replace(",", "")
        bad = [a for a in axes if a not in _DIMS]
        if not axes or bad:
            raise InputError(
                f"axes must be letters from {', '.join(Axis)} (e.g. 'z' or 'zyx'), got {self.axes!r}"
            )
        if len(set(axes)) != len(axes):
            raise InputError(f"axes must not repeat, got {self.axes!r}")
        object.__setattr__(self, "axes", "".join(a for a in _DIMS if a in axes))
        tiling = Tiling(tile=self.tile, step=self.step, blend=self.blend)
        for name in ("tile", "step", "blend"):
            object.__setattr__(self, name, getattr(tiling, name))
        for name, enum in (("fuse", FuseMode), ("fusion", Fusion), ("resample", Resample)):
            object.__setattr__(self, name, as_enum(enum, getattr(self, name), name))
        if self.batch_size is not None:
            object.__setattr__(self, "batch_size", check_int(self.batch_size, "batch_size", 1))
        # checked, not converted: an int sigma stays an int in to_dict (the job's fingerprint)
        check_float(self.prefilter_sigma, "prefilter_sigma", minimum=0, unit="voxels")
        if self.ct_levels is not None:
            bone, background = (float(v) for v in self.ct_levels)
            if not (math.isfinite(bone) and math.isfinite(background)) or bone <= background:
                raise InputError(
                    "ct_levels must be (bone, background) means with bone > background, "
                    f"got {self.ct_levels!r}"
                )
            object.__setattr__(self, "ct_levels", (bone, background))
        if self.uncertainty and len(self.axes) < 2:
            raise InputError("uncertainty needs two or more axes (e.g. axes='zyx')")
        colour = tuple(int(c) for c in self.mask_colour)
        if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
            raise InputError(
                f"mask_colour must be three values in 0..255, got {self.mask_colour!r}"
            )
        object.__setattr__(self, "mask_colour", colour)
        if self.block is not None:
            block = tuple(int(b) for b in self.block)
            if len(block) != 3 or min(block) < 1:
                raise InputError(f"block must be three positive sizes (z, y, x), got {self.block}")
            object.__setattr__(self, "block", block)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["blend"] = self.blend.value
        d["fuse"] = self.fuse.value
        d["fusion"] = self.fusion.value
        d["resample"] = self.resample.value
        return d

    @property
    def tiling(self) -> Tiling:
        """Tile, step and blend as one :class:`~vstain_dask.tiling.Tiling`."""
        return Tiling(tile=self.tile, step=self.step, blend=self.blend)

    @property
    def prefilter_halo(self) -> int:
        """Halo in voxels that the Gaussian prefilter needs (scipy's truncate = 4)."""
        return intensity.prefilter_halo(self.prefilter_sigma)

    @property
    def out_channels(self) -> int:
        return 4 if self.alpha else 3


def choose_prefilter_sigma(
    model: Mapping[str, Any] | None, requested: float | None
) -> tuple[float, str]:
    """The prefilter σ (voxels) a stain uses, and why.

    Parameters
    ----------
    model : mapping or None
        The model's prefilter record (:func:`vstain_dask.models.checkpoint.model_prefilter`:
        ``sigma``, ``reason``), None where it records none.
    requested : float or None
        ``--prefilter-sigma``: used where given.

    Returns
    -------
    (float, str)
        σ, and the reason in words. A model that records none (files written before it was
        recorded, imported models, the bundled phantom model) gets 0, as every stain did
        before models recorded it.
    """
    if requested is not None:
        check_float(requested, "prefilter_sigma", minimum=0, unit="voxels")
        return float(requested), "given with --prefilter-sigma"
    if model is None:
        return 0.0, "the model records none; --prefilter-sigma 1 applies the paper's"
    return float(model["sigma"]), f"the model's: {model['reason']}"


def default_batch_size(device) -> int:
    """Tiles per model call when ``StainConfig.batch_size`` is None: 32 on CUDA, 8 elsewhere."""
    return 32 if str(device).startswith("cuda") else 8


def runtime_fields() -> frozenset[str]:
    """Names of the :class:`StainConfig` fields that are runtime settings, not parameters of
    the result."""
    return frozenset(f.name for f in dataclasses.fields(StainConfig) if f.metadata.get("runtime"))
