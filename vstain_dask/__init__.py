"""vstain-dask: virtual histological staining of 3D X-ray micro-CT volumes, on dask.

The public API is re-exported here. Names are resolved lazily so that ``import vstain_dask``
(and the quick commands such as ``vstain-dask info``) does not import torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from vstain_dask._lazy import lazy_exports

try:
    __version__ = version("vstain-dask")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# the public surface: a user's path from data to a stain, and the configs each step takes;
# everything else is public in its own module (``vstain_dask.ngff``, ``.models``, ``.train``,
# ``.evaluate``, ``.tiling``, ``.preprocess``, ``.errors``, ...)
_EXPORTS: dict[str, str] = {
    # volumes
    "open_volume": "vstain_dask.ngff",
    "write_volume": "vstain_dask.ngff",
    "import_volume": "vstain_dask.ngff",
    "volume_info": "vstain_dask.ngff",
    # synthetic data
    "write_phantom": "vstain_dask.phantom",
    "write_phantom_pairs": "vstain_dask.phantom",
    # slice pairs
    "add_pair": "vstain_dask.train",
    "list_pairs": "vstain_dask.pairs",
    "read_pair": "vstain_dask.pairs",
    "estimate_ct_levels": "vstain_dask.preprocess",
    # training and models
    "TrainConfig": "vstain_dask.train",
    "train": "vstain_dask.train",
    "load_model": "vstain_dask.models",
    "import_checkpoint": "vstain_dask.models",
    "export_model": "vstain_dask.models",
    # staining
    "StainConfig": "vstain_dask.stain",
    "stain": "vstain_dask.stain",
    "run_stain": "vstain_dask.stain",
    "ClusterConfig": "vstain_dask.cluster",
    # evaluation and pictures
    "EvalConfig": "vstain_dask.evaluate",
    "run_evaluation": "vstain_dask.evaluate",
    "save_views": "vstain_dask.views",
    "run_demo": "vstain_dask.demo",
    # errors (subclasses in vstain_dask.errors)
    "VStainError": "vstain_dask.errors",
}

__getattr__, __dir__, _public = lazy_exports(__name__, _EXPORTS)
__all__ = ["__version__", *_public]
