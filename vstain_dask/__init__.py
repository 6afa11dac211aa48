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
    # ngff
    "open_volume": "vstain_dask.ngff",
    "level_array": "vstain_dask.ngff",
    "create_volume": "vstain_dask.ngff",
    "write_pyramid": "vstain_dask.ngff",
    "write_volume": "vstain_dask.ngff",
    "write_labels": "vstain_dask.ngff",
    "volume_info": "vstain_dask.ngff",
    "format_info": "vstain_dask.ngff",
    "import_volume": "vstain_dask.ngff",
    "VolumeKind": "vstain_dask.ngff",
    "NgffVersion": "vstain_dask.ngff",
    "MissingScaleWarning": "vstain_dask.ngff",
    # phantom
    "Tissue": "vstain_dask.phantom",
    "PlaneKind": "vstain_dask.phantom",
    "phantom_volume": "vstain_dask.phantom",
    "write_phantom": "vstain_dask.phantom",
    "phantom_pair": "vstain_dask.phantom",
    "phantom_pairs": "vstain_dask.phantom",
    "write_phantom_pairs": "vstain_dask.phantom",
    # pairs
    "Material": "vstain_dask.pairs",
    "Role": "vstain_dask.pairs",
    "write_pair": "vstain_dask.pairs",
    "list_pairs": "vstain_dask.pairs",
    "read_pair": "vstain_dask.pairs",
    # preprocess
    "CTLevels": "vstain_dask.preprocess",
    "LevelSource": "vstain_dask.preprocess",
    "HistologyLevels": "vstain_dask.preprocess",
    "estimate_ct_levels": "vstain_dask.preprocess",
    "levels_from_rois": "vstain_dask.preprocess",
    "normalize_ct": "vstain_dask.preprocess",
    "estimate_histology_levels": "vstain_dask.preprocess",
    "normalize_histology": "vstain_dask.preprocess",
    "mean_background_colour": "vstain_dask.preprocess",
    "ct_tissue_mask": "vstain_dask.preprocess",
    "histology_tissue_mask": "vstain_dask.preprocess",
    "correspondence_mask": "vstain_dask.preprocess",
    "gaussian_prefilter": "vstain_dask.preprocess",
    # tiling
    "BlendMode": "vstain_dask.tiling",
    "TileGrid": "vstain_dask.tiling",
    "tile_starts": "vstain_dask.tiling",
    "blend_weights": "vstain_dask.tiling",
    "predict_region": "vstain_dask.tiling",
    "predict_plane": "vstain_dask.tiling",
    "count_tiles": "vstain_dask.tiling",
    # models
    "Variant": "vstain_dask.models",
    "GeneratorKind": "vstain_dask.models",
    "Upsample": "vstain_dask.models",
    "Norm": "vstain_dask.models",
    "DiscriminatorKind": "vstain_dask.models",
    "ForeignFormat": "vstain_dask.models",
    "ExportFormat": "vstain_dask.models",
    "GeneratorConfig": "vstain_dask.models",
    "DiscriminatorConfig": "vstain_dask.models",
    "InputNormalization": "vstain_dask.models",
    "LossWeights": "vstain_dask.models",
    "StainModel": "vstain_dask.models",
    "TrainingCheckpoint": "vstain_dask.models",
    "load_model": "vstain_dask.models",
    "save_model": "vstain_dask.models",
    "save_training_checkpoint": "vstain_dask.models",
    "load_training_checkpoint": "vstain_dask.models",
    "model_info": "vstain_dask.models",
    "read_card": "vstain_dask.models",
    "import_checkpoint": "vstain_dask.models",
    "export_model": "vstain_dask.models",
    "build_generator": "vstain_dask.models",
    "build_discriminator": "vstain_dask.models",
    "build_networks": "vstain_dask.models",
    # stain
    "Axis": "vstain_dask.stain",
    "FuseMode": "vstain_dask.stain",
    "StainConfig": "vstain_dask.stain",
    "Fusion": "vstain_dask.stain",
    "StainReport": "vstain_dask.stain",
    "plan_blocks": "vstain_dask.stain",
    "stain": "vstain_dask.stain",
    "stain_block": "vstain_dask.stain",
    "stain_to_zarr": "vstain_dask.stain",
    "run_stain": "vstain_dask.stain",
    "default_model_path": "vstain_dask.stain",
    # cluster
    "ClusterKind": "vstain_dask.cluster",
    "ClusterConfig": "vstain_dask.cluster",
    "connect": "vstain_dask.cluster",
    # views
    "orthogonal_views": "vstain_dask.views",
    "save_views": "vstain_dask.views",
    "save_preview": "vstain_dask.views",
    # evaluate
    "EvalConfig": "vstain_dask.evaluate",
    "EvaluationResult": "vstain_dask.evaluate",
    "CTLevelsMode": "vstain_dask.evaluate",
    "Metric": "vstain_dask.evaluate",
    "PairImages": "vstain_dask.evaluate",
    "SeamReport": "vstain_dask.evaluate",
    "evaluate_models": "vstain_dask.evaluate",
    "run_evaluation": "vstain_dask.evaluate",
    "write_report": "vstain_dask.evaluate",
    "format_table": "vstain_dask.evaluate",
    "plot_boxplots": "vstain_dask.evaluate",
    "plot_pair_panel": "vstain_dask.evaluate",
    "sample_patches": "vstain_dask.evaluate",
    "image_metrics": "vstain_dask.evaluate",
    "patch_metrics": "vstain_dask.evaluate",
    "lpips_distance": "vstain_dask.evaluate",
    "load_lpips": "vstain_dask.evaluate",
    "lpips_weights_path": "vstain_dask.evaluate",
    "ct_baseline": "vstain_dask.evaluate",
    "stain_slice": "vstain_dask.evaluate",
    "seam_metrics": "vstain_dask.evaluate",
    "compare_seams": "vstain_dask.evaluate",
    "format_seams": "vstain_dask.evaluate",
    # demo
    "run_demo": "vstain_dask.demo",
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
