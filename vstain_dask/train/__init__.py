"""Training: pairs, the patch stream, augmentation, trainers and cross-validation.

- :mod:`~vstain_dask.train.prepare`: adding registered slice pairs to a pairs store, with the
  paper's normalization recorded (:func:`add_pair`);
- :mod:`~vstain_dask.train.augment`: crop/rescale/flip geometry shared by CT, histology and
  mask, and intensity jitter per modality;
- :mod:`~vstain_dask.train.dataset`: the seeded patch stream read straight from zarr;
- :mod:`~vstain_dask.train.config`: the settings of a run (:class:`TrainConfig`, with the
  generator, discriminator and input configs nested), no torch;
- :mod:`~vstain_dask.train.trainer`: the four variants, the training step and the ``fit`` loop
  (:func:`train`);
- :mod:`~vstain_dask.train.hooks`: what the loop does around its steps: progress, logs,
  validation, best and last checkpoints (exact resume), plots;
- :mod:`~vstain_dask.train.split`: the test set and stratified cross-validation folds;
- :mod:`~vstain_dask.train.folds`: the folds trained in parallel on a dask cluster;
- :mod:`~vstain_dask.train.metrics`: masked SSIM/PSNR of whole-pair predictions;
- :mod:`~vstain_dask.train.default`: the recipe of the bundled default model.

Names are resolved lazily, so ``vstain-dask pairs list`` does not import torch.
"""

from __future__ import annotations

from vstain_dask._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "AugmentConfig": "vstain_dask.train.augment",
    "CropGeometry": "vstain_dask.train.augment",
    "PairInfo": "vstain_dask.train.dataset",
    "PatchDataset": "vstain_dask.train.dataset",
    "EpochBatches": "vstain_dask.train.dataset",
    "make_loader": "vstain_dask.train.dataset",
    "measure_stream": "vstain_dask.train.dataset",
    "scan_pairs": "vstain_dask.train.dataset",
    "Split": "vstain_dask.train.split",
    "make_split": "vstain_dask.train.split",
    "train_folds": "vstain_dask.train.folds",
    "FoldCallbacks": "vstain_dask.train.folds",
    "masked_ssim": "vstain_dask.train.metrics",
    "masked_psnr": "vstain_dask.train.metrics",
    "evaluate_generator": "vstain_dask.train.metrics",
    "PairLevels": "vstain_dask.train.prepare",
    "add_pair": "vstain_dask.train.prepare",
    "format_pairs": "vstain_dask.train.prepare",
    "pair_levels": "vstain_dask.train.prepare",
    "read_image": "vstain_dask.train.prepare",
    "CT_INPUT_HIGH": "vstain_dask.train.trainer",
    "CT_INPUT_LOW": "vstain_dask.train.trainer",
    "ImageBuffer": "vstain_dask.train.trainer",
    "TrainConfig": "vstain_dask.train.config",
    "TrainResult": "vstain_dask.train.config",
    "Provenance": "vstain_dask.train.config",
    "generator_for": "vstain_dask.train.config",
    "fit": "vstain_dask.train.trainer",
    "train": "vstain_dask.train.trainer",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
