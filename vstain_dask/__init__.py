"""vstain-dask: virtual histological staining of 3D X-ray micro-CT volumes, on dask.

The public API is re-exported here. Names are resolved lazily so that ``import vstain_dask``
(and the quick commands such as ``vstain-dask info``) does not import torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vstain-dask")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # errors
    "VStainError": "vstain_dask.errors",
    "InputError": "vstain_dask.errors",
    "VolumeFormatError": "vstain_dask.errors",
    "CheckpointError": "vstain_dask.errors",
    "OutputExistsError": "vstain_dask.errors",
    "JobError": "vstain_dask.errors",
    "ClusterError": "vstain_dask.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vstain_dask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
