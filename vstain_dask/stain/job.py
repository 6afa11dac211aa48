"""A stain job: what it reads and writes, with which model and parameters, planned and
fingerprinted before any work starts.

:class:`Job` is the frozen value that the running of a job (:mod:`vstain_dask.stain.execute`)
takes: source, output, shape, chunks, model reference, parameters, stages, ledger and the
provenance written into the output. The checks here refuse, before any work, an input that
cannot be stained, an output that exists or is locked, and a resume with other inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask.errors import InputError, OutputExistsError
from vstain_dask.stain.ledger import _alive, _Ledger
from vstain_dask.stain.params import StainConfig
from vstain_dask.stain.plan import Stage, _stages


@dataclasses.dataclass(frozen=True, eq=False)
class Job:
    """One stain of ``source`` into ``output``: everything that defines it, decided before any
    block runs.

    ``vol`` is the input as opened (its scale, units and translation go to the output);
    ``vol_shape`` is (z, y, x), (1, y, x) for a slice (``two_d``); ``chunks`` are the output's
    (z, y, x) chunks; ``identity`` is the input's content identity and ``fingerprint`` that of
    everything that defines the output (see :func:`_job_fingerprint`); ``provenance`` is what
    the output's ``vstain`` attributes record (filled in by :meth:`started`).
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
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

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
    two_d, vol_shape = _vol_shape(vol)
    model_path, model_sha = _model_ref(model)
    chunks = _output_chunks(vol_shape, chunks, two_d=two_d)
    stages = tuple(_stages(vol_shape, chunks, config))
    identity, fingerprint = _job_fingerprint(
        source, vol_shape, chunks, model_sha, config, ngff_version
    )
    return Job(
        source=source, output=output, vol=vol, vol_shape=vol_shape, two_d=two_d, chunks=chunks,
        model_path=model_path, model_sha=model_sha, config=config, ngff_version=ngff_version,
        stages=stages, identity=identity, fingerprint=fingerprint, ledger=_Ledger(output),
    )  # fmt: skip


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
    from vstain_dask import ngff

    source = Path(source)
    vol = ngff.open_volume(source)
    if "c" in vol.dims:
        raise InputError(
            f"{source} has a channel axis ({dict(vol.sizes)}); stain needs a greyscale CT "
            "volume (z, y, x) or slice (y, x)"
        )
    _check_ct(vol.data)
    output = Path(output) if output is not None else default_output(source)
    src_res, out_res = source.resolve(), output.resolve()
    if out_res == src_res or src_res in out_res.parents:
        raise InputError(f"output {output} is inside the input {source}; choose another path")
    if resume and overwrite:
        raise InputError("choose either --resume or --overwrite, not both")
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
            f"{output} exists; use --overwrite to replace it or --resume to continue it"
        )
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
    two_d, vol_shape = _vol_shape(vol)
    chunks = _output_chunks(vol_shape, chunks, two_d=two_d)
    _, model_sha = _model_ref(model)
    identity, fingerprint = _job_fingerprint(
        source, vol_shape, chunks, model_sha, config, ngff_version
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
