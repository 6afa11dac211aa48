"""A registered section as a pair in a pairs store, with its registration record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask.errors import InputError, OutputExistsError
from vstain_dask.register._run import RegisterConfig, register_section


def _existing_ids(store: Path) -> set[str]:
    from vstain_dask.pairs import list_pairs

    if not store.exists():
        return set()
    return {p["id"] for p in list_pairs(store)}


def _as_ct_dtype(ct: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The resampled CT plane back in the CT's own integer type (rounded, clipped)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(ct), info.min, info.max).astype(dtype)
    return ct


def add_registered_pair(
    ct: str | os.PathLike,
    section: str | os.PathLike,
    store: str | os.PathLike,
    *,
    config: RegisterConfig,
    material: str,
    sample: str,
    pair_id: str | None = None,
    qc: str | os.PathLike | None = None,
    overwrite: bool = False,
    ct_levels: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Register ``section`` to ``ct`` and add the pair to ``store``.

    The pair is normalized with the CT levels of the whole scan (``ct_levels``, else estimated
    on the volume before the search, which stops early when they cannot be trusted), the
    levels ``stain`` finds on the same volume: one small plane holds too few classes for a
    trustworthy estimate, and training and staining then see the same mapping.

    Returns the registration record with ``pair`` (its id), ``shape``, ``ct_levels`` (the CT
    levels the pair records, with their source and, when estimated, confidence) and ``qc``
    (the picture's path). Nothing is written when the registration is not trusted.
    """
    import zarr

    from vstain_dask import ngff
    from vstain_dask.pairs import parse_material
    from vstain_dask.register._output import write_qc
    from vstain_dask.train.prepare import add_pair

    store = Path(store)
    parse_material(material)
    if pair_id is not None and pair_id in _existing_ids(store) and not overwrite:
        raise OutputExistsError(f"pair {pair_id} exists in {store}: give --overwrite to replace it")
    volume = ngff.open_volume(ct)  # opened once: the levels and the dtype of the pair's CT
    levels = _scan_levels(volume, ct, material, ct_levels)
    record = register_section(ct, section, config)
    images = record.pop("_result")
    curve = record.pop("_curve")
    if not images["mask"].any():
        raise InputError("the registered section and the CT share no field of view")
    dtype = np.dtype(volume.dtype)
    info = add_pair(
        store, ct=_as_ct_dtype(images["ct"], dtype), histology=images["histology"],
        material=material, sample=sample, voxel_size=record["ct_voxel_size"],
        mask=images["mask"], pair_id=pair_id, overwrite=overwrite, ct_levels=levels,
    )  # fmt: skip
    record["pair"] = info["id"]
    # the CT levels the pair is normalized with and where they came from (auto: confidence)
    record["ct_levels"] = info["normalization"]["ct_levels"]
    record["shape"] = [int(s) for s in images["ct"].shape]
    qc_path = Path(qc) if qc else store.parent / f"{info['id']}.register-qc.png"
    record["qc"] = str(qc_path)
    group = zarr.open_group(store / info["id"], mode="r+")
    group.attrs["registration"] = {k: v for k, v in record.items() if k != "pair"}
    title = f"{Path(section).name} → {Path(ct).name}: MI {-record['metric']:.3f}"
    write_qc(qc_path, images, curve, title)
    return record


def _scan_levels(volume, ct: str | os.PathLike, material: str, given: tuple[float, float] | None):
    """The CT levels of the scan: ``given`` (manual), else estimated on the volume (a bounded
    sample of its chunks), with the one-line refusal saying what to give instead."""
    from vstain_dask.pairs import material_preset
    from vstain_dask.preprocess import CTLevels, LevelSource, estimate_ct_levels

    if given is not None:
        bone, background = (float(v) for v in given)
        return CTLevels(bone=bone, background=background, source=LevelSource.MANUAL)
    try:
        return estimate_ct_levels(volume.data, material=material_preset(material))
    except InputError as e:
        raise InputError(
            f"could not estimate the CT levels of {ct}: {e}; give --ct-levels BONE,BACKGROUND"
        ) from e
