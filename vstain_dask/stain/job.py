"""A stain job: what it reads and writes, with which model and parameters, planned and
fingerprinted before any work starts.

:class:`Job` is the frozen value that the running of a job (:mod:`vstain_dask.stain.execute`)
takes: source, output, shape, chunks, model reference, parameters, stages, ledger and the
provenance written into the output. The checks here refuse, before any work, an input that
cannot be stained, an output that exists or is locked, and a resume with other inputs.

The volume's voxel size is compared with the model's pixel size (:func:`check_pixel_size`).
Beyond 10 %, by default (``Resample.AUTO``), the job stains the volume resampled to the model's
pixel size in every axis (:class:`ResampledInput`): area averaging where the volume is finer
(as ``vstain-dask import --voxel-size-out`` does, with the same code, so the two give the same
bytes), linear interpolation where it is coarser, block by block
(:func:`vstain_dask.ngff._resample.resample`). Every axis, not only the staining planes', as
the paper downsampled its whole scans to 5 µm: the prefilter's σ in voxels then means what it
meant in training along every axis. The resampled volume is written once, before the blocks
run, to ``input-<size>um.ome.zarr`` in the job's folder (``OUT.vstain-job/``): the blocks read
it like any input, a ``--resume`` reuses it while its record (source, content identity,
resampling, chunks) matches, and it is removed with the job's folder when the stain completes
(the stain is the product; ``vstain-dask import --voxel-size-out`` keeps a resampled volume).
The output then has the resampled grid: the model's size as its NGFF scale, and a translation
that puts each voxel's centre where the resampling took it from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vstain_dask.errors import InputError, OutputExistsError
from vstain_dask.stain.ledger import _alive, _Ledger
from vstain_dask.stain.params import _DIMS, _PLANE_DIMS, Resample, StainConfig
from vstain_dask.stain.plan import Stage, _stages


@dataclasses.dataclass(frozen=True, eq=False)
class Job:
    """One stain of ``source`` into ``output``: everything that defines it, decided before any
    block runs.

    ``vol`` is the input as opened (its scale, units and translation go to the output);
    ``vol_shape`` is (z, y, x), (1, y, x) for a slice (``two_d``); ``chunks`` are the output's
    (z, y, x) chunks; ``identity`` is the input's content identity and ``fingerprint`` that of
    everything that defines the output (see :func:`_job_fingerprint`); ``pixel_size`` is the
    comparison of the model's pixel size with the volume's (:func:`check_pixel_size`);
    ``resampled`` is the volume brought to the model's pixel size that the blocks read
    instead of ``source`` (None where the volume is stained as it is); ``vol_shape`` is then
    its shape. ``provenance`` is what the output's ``vstain`` attributes record (filled in by
    :meth:`started`).
    """

    source: Path
    output: Path
    vol: Any
    vol_shape: tuple[int, int, int]
    two_d: bool
    chunks: tuple[int, int, int]
    model_path: str
    model_sha: str
    config: StainConfig
    ngff_version: str
    stages: tuple[Stage, ...]
    identity: str
    fingerprint: str
    ledger: _Ledger
    pixel_size: dict[str, Any] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    resampled: ResampledInput | None = None

    @property
    def read_source(self) -> Path:
        """What the blocks read: the resampled copy in the job's folder, or the source."""
        if self.resampled is None:
            return self.source
        return self.ledger.root / self.resampled.name

    @property
    def spatial(self) -> dict[str, dict[str, Any]]:
        """The output's ``scale``, ``units`` and ``translation`` by axis: the input's, or those
        of its resampled grid."""
        if self.resampled is not None:
            return {key: dict(d) for key, d in self.resampled.spatial.items()}
        keys = ("scale", "units", "translation")
        return {key: dict(self.vol.attrs.get(key) or {}) for key in keys}

    def resampled_record(self) -> dict[str, Any]:
        """What the resampled copy records and a resume must find again before reusing it."""
        record = {"source": str(self.source.resolve()), "identity": self.identity,
                  "resampled": self.resampled.record, "chunks": list(self.chunks)}  # fmt: skip
        return json.loads(json.dumps(record))

    @property
    def n_blocks(self) -> int:
        return sum(len(stage.blocks) for stage in self.stages)

    @property
    def voxels(self) -> int:
        return int(np.prod(self.vol_shape))

    @property
    def tag(self) -> str:
        """A short name of the job for its task keys."""
        return self.fingerprint[:12]

    def started(self, ident: str, *, missing_chunks: int, command: str | None) -> Job:
        """This job with its provenance, once the output's job identity ``ident`` is known."""
        from vstain_dask import __version__

        provenance = {
            "software": {"name": "vstain-dask", "version": __version__},
            "model": {"path": self.model_path, "sha256": self.model_sha},
            "input": {"path": str(self.source.resolve()), "shape": list(self.vol.shape),
                      "dtype": str(self.vol.dtype),
                      "identity": self.identity, "missing_chunks": missing_chunks},
            "parameters": self.config.to_dict(),
            "pixel_size": dict(self.pixel_size),
            "chunks": list(self.chunks),
            "fingerprint": self.fingerprint,
            "job": ident,
            "command": command,
            "complete": False,
        }  # fmt: skip
        return dataclasses.replace(self, provenance=provenance)


def plan_job(source: Path, output: Path, vol, *, model, config: StainConfig, chunks,
             ngff_version: str) -> Job:  # fmt: skip
    """The job of staining ``vol`` (opened from ``source``, checked by :func:`check_inputs`)
    into ``output``: its shape, chunks, model reference, stages (each plan checked) and
    fingerprint. Nothing is written."""
    model_path, model_sha = _model_ref(model)
    grid = stained_grid(vol, model=model, config=config, chunks=chunks)
    stages = tuple(_stages(grid.vol_shape, grid.chunks, config))
    identity, fingerprint = _job_fingerprint(
        source, grid.vol_shape, grid.chunks, model_sha, config, ngff_version
    )
    return Job(
        source=source, output=output, vol=vol, vol_shape=grid.vol_shape, two_d=grid.two_d,
        chunks=grid.chunks, model_path=model_path, model_sha=model_sha, config=config,
        ngff_version=ngff_version, stages=stages, identity=identity, fingerprint=fingerprint,
        ledger=_Ledger(output), pixel_size=grid.pixel_size, resampled=grid.resampled,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ResampledInput:
    """The volume brought to the model's pixel size (``Resample.AUTO``), what a job stains
    instead of its source (module docstring).

    ``data`` is the lazy resampled volume (axes ``zyx``, or ``yx`` for a slice); ``spatial``
    its ``scale``, ``units`` and ``translation`` by axis, which the output takes; ``record``
    what was done (``from``, ``to`` and ``unit`` by axis, ``factors``, ``method``, shapes),
    kept in the provenance; ``name`` the copy's folder name in the job's folder.
    """

    name: str
    data: Any
    spatial: dict[str, dict[str, Any]]
    record: dict[str, Any]

    @property
    def axes(self) -> str:
        return "yx" if self.data.ndim == 2 else "zyx"


class StainedGrid(NamedTuple):
    """The voxels a job stains: the volume's own, or those it is resampled to."""

    #: the comparison of the model's pixel size with the volume's (:func:`check_pixel_size`)
    pixel_size: dict[str, Any]
    #: the resampled volume, None where the volume is stained as it is
    resampled: ResampledInput | None
    two_d: bool
    #: (z, y, x) voxels, (1, y, x) for a slice
    vol_shape: tuple[int, int, int]
    #: the output's (z, y, x) chunks
    chunks: tuple[int, int, int]


def stained_grid(vol, *, model, config: StainConfig, chunks=None) -> StainedGrid:
    """The grid a stain of ``vol`` with ``model`` is computed and written on: the volume's, or,
    where ``config.resample`` is ``auto`` and the sizes differ by more than 10 %, the model's
    pixel size in every axis (an axis without a physical unit keeps its size). ``chunks``:
    the output's (default (64, 256, 256) clipped to the grid). Nothing is computed."""
    pixel_size = check_pixel_size(vol, _model_pixel_size(model), config)
    two_d, vol_shape = _vol_shape(vol)
    resampled = None
    if pixel_size["decision"] == _RESAMPLED:
        big = (1 << 30,) * 3  # the chunks asked for, clipped by the resampling to its grid
        asked = _output_chunks(big, chunks, two_d=two_d)
        resampled = _resampled_input(vol, pixel_size["model"], asked)
        pixel_size = {**pixel_size, "resampled": resampled.record}
        two_d, vol_shape = _vol_shape(resampled.data)
    return StainedGrid(
        pixel_size, resampled, two_d, vol_shape, _output_chunks(vol_shape, chunks, two_d=two_d)
    )


def _resampled_input(vol, model_size: float, chunks) -> ResampledInput:
    """``vol`` resampled (lazily) to ``model_size`` µm along every axis that has a unit."""
    from vstain_dask.ngff._pixel_size import um_per
    from vstain_dask.ngff._resample import resample_to_size

    axes = "".join(str(d) for d in vol.dims)
    scale, units = vol.attrs["scale"], dict(vol.attrs.get("units") or {})
    translation = vol.attrs.get("translation") or {}
    have = [float(scale[d]) for d in axes]
    per = [um_per(units[d]) if units.get(d) else None for d in axes]
    want = [model_size / f if f else h for h, f in zip(have, per, strict=True)]
    data, done = resample_to_size(
        vol.data, axes=axes, voxel_size=have, target=want, unit="micrometer",
        chunks=chunks[-len(axes):], upsample=True,
    )  # fmt: skip
    spatial = {
        "scale": dict(zip(axes, done["to"], strict=True)),
        "units": units,
        "translation": {
            d: float(translation.get(d, 0.0)) + t
            for d, t in zip(axes, done["translation"], strict=True)
        },
    }
    record = {
        **{k: dict(zip(axes, done[k], strict=True)) for k in ("from", "to", "factors")},
        "unit": {d: units.get(d) for d in axes},
        "method": done["method"],
        "shape": {"from": [int(n) for n in vol.shape], "to": [int(n) for n in data.shape]},
    }
    if "methods" in done:
        record["methods"] = dict(zip(axes, done["methods"], strict=True))
    return ResampledInput(f"input-{model_size:g}um.ome.zarr", data, spatial, record)


def _model_ref(model) -> tuple[str, str]:
    """(path, sha256) of a model given as a path or as a loaded StainModel with a path."""
    from vstain_dask.models import load_model

    if isinstance(model, str | os.PathLike):
        loaded = load_model(model)
        return str(Path(model).resolve()), loaded.sha256
    path = getattr(model, "path", None)
    if path is None:
        raise InputError("model must be a checkpoint path (models are loaded on the workers)")
    return str(Path(path).resolve()), model.sha256


def _model_pixel_size(model) -> float | None:
    """The pixel size (µm) recorded in a model given as a path or as a loaded StainModel."""
    from vstain_dask.models.checkpoint import model_info, model_pixel_size

    if isinstance(model, str | os.PathLike):
        return model_pixel_size(model_info(model))
    return model.pixel_size


def model_prefilter_record(model) -> dict[str, Any] | None:
    """The prefilter (``sigma``, ``reason``) recorded in a model given as a path or as a loaded
    StainModel; None where it records none."""
    from vstain_dask.models.checkpoint import model_info, model_prefilter

    if isinstance(model, str | os.PathLike):
        return model_prefilter(model_info(model))
    return model.prefilter


def _volume_pixel_size(vol, config: StainConfig) -> dict[str, float] | None:
    """The voxel size (µm) of ``vol`` along the axes of its staining planes, from its NGFF
    scale and units; None where it records none (a plain zarr array, an axis without a unit)."""
    from vstain_dask.ngff._pixel_size import um_per

    if vol.attrs.get("ngff_version") is None:
        return None
    if vol.ndim == 2:
        dims = ("y", "x")
    else:
        dims = tuple(
            d for i, d in enumerate(_DIMS) if any(i in _PLANE_DIMS[a] for a in config.axes)
        )
    scale, units = vol.attrs.get("scale") or {}, vol.attrs.get("units") or {}
    sizes = {}
    for d in dims:
        factor = um_per(units[d]) if units.get(d) else None
        if factor is None or d not in scale:
            return None
        sizes[d] = float(scale[d]) * factor
    return sizes


def _sizes_text(sizes: dict[str, float]) -> str:
    values = set(sizes.values())
    if len(values) == 1:
        return f"{values.pop():g} µm"
    return ", ".join(f"{d} {v:g}" for d, v in sizes.items()) + " µm"


def check_pixel_size(vol, model_size: float | None, config: StainConfig) -> dict[str, Any]:
    """Compare the model's pixel size with the volume's voxel size in the staining planes.

    Within :data:`~vstain_dask.models.checkpoint.PIXEL_SIZE_TOLERANCE` the stain proceeds; a
    larger difference resamples the volume to the model's size (``config.resample`` ``auto``,
    the default; see :func:`stained_grid`), is refused (``check``) or stained at the volume's
    size with a warning (``off``). A model that records no pixel size is stained with a
    warning and nothing is guessed; a volume without a physical unit is stained as it is.

    Parameters
    ----------
    vol : xarray.DataArray
        The input as :func:`vstain_dask.ngff.open_volume` opens it (``scale`` and ``units``).
    model_size : float or None
        µm, as the model records it.
    config : StainConfig
        Its ``axes`` name the staining planes, its ``resample`` what a mismatch does.

    Returns
    -------
    dict
        For the provenance: ``model`` (µm or None), ``volume`` (µm by axis, or None),
        ``decision`` (``match``, ``resampled to the model's pixel size``, ``mismatch,
        stained at the volume's size (--resample off)``, ``model records no pixel size``,
        ``volume records no voxel size``), ``warning`` (the line to warn with, or None) and,
        for a resampled volume, ``note`` (the line that says so).

    Raises
    ------
    InputError
        The sizes differ by more than 10 % and ``config.resample`` is ``check``.
    """
    from vstain_dask.models.checkpoint import pixel_sizes_match

    volume = _volume_pixel_size(vol, config)
    record: dict[str, Any] = {"model": model_size, "volume": volume, "warning": None}
    if model_size is None:
        record["decision"] = "model records no pixel size"
        record["warning"] = _NO_MODEL_SIZE
        return record
    if volume is None:
        # nothing to compare with: recorded, not warned (opening a plain array warns already)
        record["decision"] = "volume records no voxel size"
        return record
    if all(pixel_sizes_match(v, model_size) for v in volume.values()):
        record["decision"] = "match"
        return record
    if config.resample is Resample.AUTO:
        record["decision"] = _RESAMPLED
        record["note"] = _resampling_note(volume, model_size)
        return record
    record["decision"] = "mismatch, stained at the volume's size (--resample off)"
    record["warning"] = _size_mismatch(volume, model_size, config.resample)
    return record


#: the decision of :func:`check_pixel_size` for a volume resampled to the model's size
_RESAMPLED = "resampled to the model's pixel size"


def _resampling_note(volume: dict[str, float], model_size: float) -> str:
    """The line that says a volume is resampled to the model's pixel size, and how."""
    finer = [v < model_size for v in volume.values()]
    how = ("area averaging" if all(finer) else "linear interpolation" if not any(finer)
           else "area averaging where finer, linear interpolation where coarser")  # fmt: skip
    return (
        f"resampling the volume ({_sizes_text(volume)}) to the model's pixel size "
        f"({model_size:g} µm) in every axis by {how}; the stain is written at "
        f"{model_size:g} µm (--resample off stains at the volume's size)"
    )


#: the warning of a stain with a model that records no pixel size
_NO_MODEL_SIZE = (
    "the model records no pixel size, so the volume's voxel size cannot be checked "
    "against it; stain at the size the model was trained at (import a model with "
    "`vstain-dask model import --pixel-size UM`)"
)


def _size_mismatch(volume: dict[str, float], model_size: float, resample: Resample) -> str:
    """The warning of a stain at a voxel size that differs from the model's pixel size by more
    than the tolerance, where ``resample`` allows it; refused otherwise."""
    from vstain_dask.models.checkpoint import PIXEL_SIZE_TOLERANCE

    if resample is Resample.CHECK:
        raise InputError(
            f"the volume's voxel size ({_sizes_text(volume)}) differs from the model's pixel "
            f"size ({model_size:g} µm) by more than {PIXEL_SIZE_TOLERANCE:.0%}; resample the "
            f"volume to the model's size (`vstain-dask import ... --voxel-size-out "
            f"{model_size:g}`, or --resample auto, resample='auto' in Python, during the "
            "stain), or pass --resample off (resample='off') to stain it at its own size"
        )
    return (
        f"staining at the volume's voxel size ({_sizes_text(volume)}), which differs from the "
        f"model's pixel size ({model_size:g} µm) by more than {PIXEL_SIZE_TOLERANCE:.0%} "
        "(--resample off): the model sees textures at another scale than it learned"
    )


def _check_ct(volume) -> None:
    dtype = np.dtype(volume.dtype)
    if dtype.kind not in "uif":
        raise InputError(
            f"the CT volume must have an integer or float dtype, got {dtype} "
            "(complex, bool and string volumes cannot be stained)"
        )
    if volume.ndim not in (2, 3):
        raise InputError(
            f"expected a greyscale volume (z, y, x) or slice (y, x), got {volume.ndim} dimensions "
            f"of shape {tuple(volume.shape)}"
        )
    if 0 in volume.shape:
        raise InputError(f"the CT volume is empty (shape {tuple(volume.shape)})")


def default_output(source: str | os.PathLike) -> Path:
    """``<name>.stained.ome.zarr`` beside the input (``.ome.zarr``/``.zarr`` suffixes dropped)."""
    p = Path(source).resolve()
    name = p.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return p.with_name(f"{name}.stained.ome.zarr")


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def check_inputs(
    source: str | os.PathLike,
    output: str | os.PathLike | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    break_lock: bool = False,
):
    """Everything that can be checked about a stain's input and output before any work starts
    (and, with ``break_lock``, the removal of a lock left by a job that no longer runs).

    Returns
    -------
    (source, volume, output) : (Path, xarray.DataArray, Path)

    Raises
    ------
    VolumeFormatError, InputError, OutputExistsError
        With one line that names the path and says what to do.
    """
    source = Path(source)
    vol = _open_ct(source)
    output = Path(output) if output is not None else default_output(source)
    _check_output_path(source, output, resume=resume, overwrite=overwrite)
    ledger = _Ledger(output)
    if break_lock:
        broken = ledger.break_lock()
        if broken:
            warnings.warn(
                f"broke the lock {ledger.lock_path} of pid {broken.get('pid')} on "
                f"{broken.get('host')}",
                RuntimeWarning,
                stacklevel=2,
            )
    lock = ledger._read_lock()
    if lock and _alive(lock):
        raise OutputExistsError(ledger.held_by(lock))
    return source, vol, output


def _open_ct(source: Path):
    """The CT volume at ``source``, refused unless it is a greyscale volume or slice that can
    be stained."""
    from vstain_dask import ngff

    vol = ngff.open_volume(source)
    if "c" in vol.dims:
        raise InputError(
            f"{source} has a channel axis ({dict(vol.sizes)}); stain needs a greyscale CT "
            "volume (z, y, x) or slice (y, x)"
        )
    _check_ct(vol.data)
    return vol


def _check_output_path(source: Path, output: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an output inside the input, in a folder that cannot be written, or existing
    without ``resume`` or ``overwrite`` (or, to be overwritten, a link)."""
    src_res, out_res = source.resolve(), output.resolve()
    if out_res == src_res or src_res in out_res.parents:
        raise InputError(f"output {output} is inside the input {source}; choose another path")
    if resume and overwrite:
        raise InputError(
            "choose either --resume or --overwrite (resume=True or overwrite=True), not both"
        )
    if overwrite and output.is_symlink():
        raise InputError(
            f"{output} is a symbolic link (to {os.readlink(output)}); --overwrite replaces "
            "folders, not links: remove the link, or give the folder it points to as -o"
        )
    parent = out_res.parent
    if not parent.is_dir():
        raise InputError(f"the output folder {parent} does not exist or is not a folder")
    if not os.access(parent, os.W_OK):
        raise InputError(f"the output folder {parent} is not writable")
    if output.exists() and not (overwrite or resume):
        raise OutputExistsError(
            f"{output} exists; use --overwrite (overwrite=True) to replace it or --resume "
            "(resume=True) to continue it"
        )


def _open_job(job: Job, *, overwrite: bool) -> str | None:
    """Under the job's lock: clear the output when overwriting, check that an existing one
    was started with these inputs, and bind the ledger to the output's job identity. Returns
    that identity, or None when the output is already complete (nothing to do)."""
    import shutil

    from vstain_dask import ngff

    output, ledger = job.output, job.ledger
    if output.exists() and overwrite:
        shutil.rmtree(output)
        ledger.remove()
        ledger.acquire(fingerprint=job.fingerprint)
    ident = None
    if output.exists():
        prov = _read_provenance(output)
        if prov.get("fingerprint") != job.fingerprint:
            raise OutputExistsError(_resume_mismatch(output, prov, job.source, job.identity))
        if prov.get("complete"):
            ledger.remove()
            return None
        ident = prov.get("job")
    if ident is None:  # a new output (or one from a version that had no job identity)
        ident = uuid.uuid4().hex
        if output.exists():
            ngff.update_provenance(output, job=ident)
    # the records beside the output count only if they were written into this output
    ledger.bind(ident, output)
    return ident


def _vol_shape(vol) -> tuple[bool, tuple[int, int, int]]:
    """(whether the volume is one 2D plane, its shape as (z, y, x))."""
    two_d = vol.ndim == 2
    return two_d, ((1, *vol.shape) if two_d else tuple(int(s) for s in vol.shape))


def _output_chunks(vol_shape, chunks, *, two_d: bool) -> tuple[int, int, int]:
    if chunks is None:
        chunks = (min(64, vol_shape[0]), min(256, vol_shape[1]), min(256, vol_shape[2]))
    chunks = tuple(int(c) for c in chunks)
    return (1, *chunks[-2:]) if two_d else chunks


def _job_fingerprint(source: Path, vol_shape, chunks, model_sha: str, config, ngff_version):
    """(content identity of the input, fingerprint of everything that defines the output)."""
    from vstain_dask import ngff

    identity = ngff.content_identity(source)  # what the input holds, not only where it is
    fingerprint = _fingerprint(
        str(source.resolve()), identity, vol_shape, chunks, model_sha, config.to_dict(),
        ngff_version,
    )  # fmt: skip
    return identity, fingerprint


def check_resume(source, output, *, model, config: StainConfig, chunks=None,
                 ngff_version: str = "0.5") -> None:  # fmt: skip
    """Refuse, before any work, a resume of ``output`` with other inputs than it was started
    with (the checks :func:`stain_to_zarr` makes again under the job's lock)."""
    source, vol, output = check_inputs(source, output, resume=True, overwrite=False)
    if not output.exists():
        return
    grid = stained_grid(vol, model=model, config=config, chunks=chunks)
    _, model_sha = _model_ref(model)
    identity, fingerprint = _job_fingerprint(
        source, grid.vol_shape, grid.chunks, model_sha, config, ngff_version
    )
    prov = _read_provenance(output)
    if prov.get("fingerprint") != fingerprint:
        raise OutputExistsError(_resume_mismatch(output, prov, source, identity))


def _resume_mismatch(output: Path, prov: dict, source: Path, identity: str) -> str:
    """Why an existing output cannot be resumed with these inputs, in one line."""
    if not prov.get("fingerprint"):
        return (
            f"{output} exists but is not a stain written by vstain-dask, so there is nothing to "
            "resume; choose another -o, or --overwrite to replace it"
        )
    was = prov.get("input") or {}
    if was.get("path") == str(source.resolve()) and was.get("identity") not in (None, identity):
        return (
            f"the input {source} changed since the stain into {output} started (same path, "
            "other content); --resume needs the input it started from, or use --overwrite to "
            "start again"
        )
    return (
        f"{output} was started with other inputs or parameters; --resume needs the same input, "
        "model and options (or use --overwrite)"
    )


def _read_provenance(output: Path) -> dict:
    from vstain_dask import ngff

    try:
        return ngff.open_volume(output, allow_incomplete=True).attrs.get("vstain", {}) or {}
    except Exception:
        return {}
