"""Networks, losses, model files and checkpoint import of the paper's paired CycleGAN.

- :mod:`~vstain_dask.models.config`: choices (enums) and architecture configs;
- :mod:`~vstain_dask.models.networks`: ResNet and U-Net generators, PatchGAN discriminators;
- :mod:`~vstain_dask.models.losses`: LSGAN, cycle, identity, masked pixelwise, greyscale, L1;
- :mod:`~vstain_dask.models.checkpoint`: model files, model cards, :func:`load_model`;
- :mod:`~vstain_dask.models.foreign`: importing PyTorch-GAN and pytorch-CycleGAN-and-pix2pix
  checkpoints;
- :mod:`~vstain_dask.models.export`: TorchScript and ONNX export.

Names are resolved lazily, so importing :mod:`vstain_dask.models.config` (plain Python)
does not import torch.
"""

from __future__ import annotations

from vstain_dask._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "card_path": "vstain_dask.models.card",
    "render_card": "vstain_dask.models.card",
    "FORMAT_VERSION": "vstain_dask.models.checkpoint",
    "StainModel": "vstain_dask.models.checkpoint",
    "TrainingCheckpoint": "vstain_dask.models.checkpoint",
    "load_model": "vstain_dask.models.checkpoint",
    "load_training_checkpoint": "vstain_dask.models.checkpoint",
    "model_info": "vstain_dask.models.checkpoint",
    "network_input": "vstain_dask.models.checkpoint",
    "output_to_uint8": "vstain_dask.models.checkpoint",
    "read_card": "vstain_dask.models.checkpoint",
    "save_model": "vstain_dask.models.checkpoint",
    "save_training_checkpoint": "vstain_dask.models.checkpoint",
    "DiscriminatorConfig": "vstain_dask.models.config",
    "DiscriminatorKind": "vstain_dask.models.config",
    "ExportFormat": "vstain_dask.models.config",
    "ForeignFormat": "vstain_dask.models.config",
    "GeneratorConfig": "vstain_dask.models.config",
    "GeneratorKind": "vstain_dask.models.config",
    "InputNormalization": "vstain_dask.models.config",
    "L1Normalization": "vstain_dask.models.config",
    "Norm": "vstain_dask.models.config",
    "Upsample": "vstain_dask.models.config",
    "Variant": "vstain_dask.models.config",
    "export_model": "vstain_dask.models.export",
    "onnx_min_side": "vstain_dask.models.export",
    "convert_state_dict": "vstain_dask.models.foreign",
    "import_checkpoint": "vstain_dask.models.foreign",
    "LossWeights": "vstain_dask.models.losses",
    "discriminator_loss": "vstain_dask.models.losses",
    "greyscale_loss": "vstain_dask.models.losses",
    "lsgan_loss": "vstain_dask.models.losses",
    "masked_l1": "vstain_dask.models.losses",
    "supervision_loss": "vstain_dask.models.losses",
    "total_loss": "vstain_dask.models.losses",
    "PatchDiscriminator": "vstain_dask.models.networks",
    "ResnetGenerator": "vstain_dask.models.networks",
    "UnetGenerator": "vstain_dask.models.networks",
    "build_discriminator": "vstain_dask.models.networks",
    "build_generator": "vstain_dask.models.networks",
    "build_networks": "vstain_dask.models.networks",
    "count_parameters": "vstain_dask.models.networks",
    "discriminator_receptive_field": "vstain_dask.models.networks",
    "init_weights": "vstain_dask.models.networks",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
