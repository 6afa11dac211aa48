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
    trustworthy estimate, and training and staining then see the same mapping. Estimated
    levels come with their QC figure (of the volume's sampled planes), ``<pair id>.levels.png``
    beside the QC picture, its path in the pair's ``normalization.ct_levels_qc``.

    Returns the registration record with ``pair`` (its id), ``shape``, ``ct_levels`` (the CT
    levels the pair records, with their source and, when estimated, confidence),
    ``ct_levels_qc`` (their figure's path, or None) and ``qc`` (the picture's path). Nothing
    is written when the registration is not trusted.
    """
    from vstain_dask import ngff
    from vstain_dask.levels_qc import pair_levels_qc_path, pending_figure
    from vstain_dask.pairs import parse_material
    from vstain_dask.register._output import write_qc
    from vstain_dask.train.prepare import add_pair

    store = Path(store)
    parse_material(material)
    if pair_id is not None and pair_id in _existing_ids(store) and not overwrite:
        raise OutputExistsError(f"pair {pair_id} exists in {store}: give --overwrite to replace it")
    volume = ngff.open_volume(ct)  # opened once: the levels and the dtype of the pair's CT
    with pending_figure() as levels_qc:  # named once the pair is written
        levels = _scan_levels(volume, ct, material, ct_levels, qc=levels_qc)
        record = register_section(ct, section, config)
        images, curve = record.pop("_result"), record.pop("_curve")
        if not images["mask"].any():
            raise InputError("the registered section and the CT share no field of view")
        info = add_pair(
            store, ct=_as_ct_dtype(images["ct"], np.dtype(volume.dtype)),
            histology=images["histology"], material=material, sample=sample,
            voxel_size=record["ct_voxel_size"], mask=images["mask"], pair_id=pair_id,
            overwrite=overwrite, ct_levels=levels,
        )  # fmt: skip
        # the CT levels the pair is normalized with and where they came from (auto: confidence)
        record.update(pair=info["id"], ct_levels=info["normalization"]["ct_levels"],
                      shape=[int(s) for s in images["ct"].shape])  # fmt: skip
        qc_path = Path(qc) if qc else store.parent / f"{info['id']}.register-qc.png"
        record["qc"] = str(qc_path)
        figure = pair_levels_qc_path(qc_path.parent, info["id"])
        _record_pair(store / info["id"], record, info["normalization"], levels_qc, figure)
    title = f"{Path(section).name} → {Path(ct).name}: MI {-record['metric']:.3f}"
    write_qc(qc_path, images, curve, title)
    return record


def _record_pair(group_path: Path, record: dict[str, Any], normalization: dict[str, Any],
                 levels_qc: Path, figure: Path) -> None:  # fmt: skip
    """The written pair's registration record, and its levels' QC figure (drawn to
    ``levels_qc`` where the levels were estimated) kept as ``figure``, its path recorded in
    ``record["ct_levels_qc"]`` and the pair's ``normalization``."""
    import zarr

    from vstain_dask.levels_qc import keep_figure

    kept = keep_figure(levels_qc, figure)
    record["ct_levels_qc"] = None if kept is None else str(kept.resolve())
    group = zarr.open_group(group_path, mode="r+")
    if kept is not None:
        group.attrs["normalization"] = {**normalization, "ct_levels_qc": record["ct_levels_qc"]}
    group.attrs["registration"] = {k: v for k, v in record.items() if k != "pair"}


def _scan_levels(volume, ct: str | os.PathLike, material: str, given: tuple[float, float] | None,
                 *, qc: Path | None = None):  # fmt: skip
    """The CT levels of the scan: ``given`` (manual), else estimated on the volume (a bounded
    sample of its chunks; their QC figure drawn to ``qc`` when given), with the one-line
    refusal saying what to give instead."""
    from vstain_dask.pairs import material_preset
    from vstain_dask.preprocess import CTLevels, LevelSource, estimate_ct_levels

    if given is not None:
        bone, background = (float(v) for v in given)
        return CTLevels(bone=bone, background=background, source=LevelSource.MANUAL)
    try:
        return estimate_ct_levels(volume.data, material=material_preset(material), qc=qc)
    except InputError as e:
        raise InputError(
            f"could not estimate the CT levels of {ct}: {e}; give --ct-levels BONE,BACKGROUND"
        ) from e
