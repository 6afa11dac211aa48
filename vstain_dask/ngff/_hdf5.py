"""HDF5 volumes (DXchange, NeXus or any layout) through the optional h5py reader.

Every task opens the file itself, read-only, and reads its band: no file handle lives in the
graph, so the graph runs on the threaded scheduler, in processes and on distributed workers.
"""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np

from vstain_dask.errors import InputError, VolumeFormatError
from vstain_dask.ngff._pixel_size import FoundSize, um_per

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".nxs", ".cxi")
HDF5_EXTRA = "pip install 'vstain-dask[hdf5]'"
#: where DXchange keeps the effective (sample-plane) pixel size of the detector
DXCHANGE_PIXEL = "/measurement/instrument/detector/actual_pixel_size_{}"


def _h5py(path: Path):
    try:
        import h5py
    except ImportError as e:
        raise VolumeFormatError(
            f"{path.name} is an HDF5 file, read through the optional h5py, which is not "
            f"installed: {HDF5_EXTRA}"
        ) from e
    return h5py


def _datasets(f, h5py) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every numeric dataset in the file: its path, shape and dtype."""
    found: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf":
            found["/" + name] = (tuple(int(s) for s in obj.shape), np.dtype(obj.dtype))

    f.visititems(visit)
    return found


def _listing(datasets: dict, limit: int = 8) -> str:
    items = [f"{name} {'x'.join(map(str, s))} {dt.name}" for name, (s, dt) in datasets.items()]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _choose(path: Path, datasets: dict, dataset: str | None) -> tuple[str, str]:
    """The dataset to import and why it was chosen."""
    volumes = {n: v for n, v in datasets.items() if len(v[0]) == 3}
    if dataset is not None:
        name = "/" + dataset.strip("/")
        if name not in datasets:
            raise InputError(
                f"{path.name} has no numeric dataset {dataset}; it holds: "
                f"{_listing(datasets) or 'no numeric datasets'}"
            )
        if len(datasets[name][0]) not in (2, 3):
            raise InputError(
                f"dataset {name} of {path.name} has shape {datasets[name][0]}; vstain-dask "
                f"imports (Z,Y,X) or (Y,X) datasets; 3D ones here: {_listing(volumes) or 'none'}"
            )
        return name, "--dataset"
    if len(volumes) == 1:
        return next(iter(volumes)), "the only 3D dataset"
    if not volumes:
        raise VolumeFormatError(
            f"{path.name} holds no 3D dataset (it holds: {_listing(datasets) or 'none'}); "
            "give a 2D one with --dataset (dataset=)"
        )
    raise InputError(
        f"{path.name} holds {len(volumes)} 3D datasets: {_listing(volumes)}; choose one with "
        "--dataset (dataset=; DXchange keeps the volume in /exchange/data)"
    )


def _dxchange_size(f) -> FoundSize | None:
    """The voxel size from DXchange's detector metadata: reconstructed slices take Y and X
    from ``actual_pixel_size_x`` and Z (detector rows) from ``actual_pixel_size_y`` when it is
    there. A value without a ``units`` attribute is read as µm, unless it is below 1e-3, which
    only metres (the DXchange reference's SI examples) make plausible."""
    sizes = {}
    for axis in ("x", "y"):
        node = f.get(DXCHANGE_PIXEL.format(axis))
        if node is None or not hasattr(node, "shape"):
            continue
        try:
            value = float(np.asarray(node[()]).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            continue
        unit = node.attrs.get("units", b"")
        unit = unit.decode() if isinstance(unit, bytes) else str(unit)
        factor = um_per(unit) if unit else (1e6 if 0 < value < 1e-3 else 1.0)
        if factor is not None and np.isfinite(value) and value > 0:
            sizes[axis] = value * factor
    if "x" not in sizes:
        return None
    return FoundSize(
        sizes={"z": sizes.get("y", sizes["x"]), "y": sizes["x"], "x": sizes["x"]},
        source="the DXchange detector actual_pixel_size",
    )


def _read_region(path: str, name: str, index: tuple[slice, ...]) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            out = f[name][index]
    except OSError as e:  # h5py reports damaged chunks and filters it lacks as OSError
        where = ", ".join(f"{s.start}:{s.stop}" for s in index)
        raise VolumeFormatError(
            f"{path}: cannot read region [{where}] of {name} ({e}); the file is damaged or "
            "needs an HDF5 filter plugin that is not installed (e.g. hdf5plugin)"
        ) from e
    return np.asarray(out, dtype=out.dtype.newbyteorder("="))


class _Hdf5Regions:
    """Array-like view of one dataset, opened afresh in every task (picklable)."""

    def __init__(self, path: str, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.name = path, name
        self.shape = shape
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.ndim = len(shape)

    def __getitem__(self, index):
        if not isinstance(index, tuple):
            index = (index,)
        return _read_region(self.path, self.name, index)


def open_hdf5(path: Path, *, dataset: str | None, band_of) -> dict:
    """A dataset of an HDF5 file as a lazy array read band by band.

    Parameters
    ----------
    path : the HDF5 file
    dataset : path of the dataset inside the file (``/exchange/data``); None picks the only
        3D numeric dataset
    band_of : ``band_of(shape)`` gives the read blocks along the leading axes

    Returns
    -------
    dict with ``data`` (dask array), ``description``, ``pixel_size`` (:class:`FoundSize` or
    None) and ``record`` (the dataset and why it was chosen)
    """
    h5py = _h5py(path)
    try:
        with h5py.File(path, "r") as f:
            datasets = _datasets(f, h5py)
            name, why = _choose(path, datasets, dataset)
            pixel_size = _dxchange_size(f)
    except OSError as e:
        raise VolumeFormatError(f"{path} is not a readable HDF5 file ({e})") from e
    shape, dt = datasets[name]
    band = band_of(shape)
    chunks = tuple(band) + shape[len(band) :]
    token = f"hdf5-{dask.base.tokenize(str(path), path.stat().st_mtime_ns, name)}"
    data = da.from_array(
        _Hdf5Regions(str(path), name, shape, dt),
        chunks=chunks,
        name=token,
        meta=np.empty((0,) * len(shape), dt.newbyteorder("=")),
    )
    return {
        "data": data,
        "description": f"HDF5 file {path.name}, dataset {name} ({why})",
        "pixel_size": pixel_size,
        "record": {"dataset": name, "dataset_chosen_by": why},
    }
