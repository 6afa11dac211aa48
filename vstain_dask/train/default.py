"""The recipe of the bundled default model: ``mod-cyclegan`` trained on synthetic phantom pairs.

The bundled model (``vstain_dask/data/default_model.pt``) exists so that ``vstain-dask demo``
and ``vstain-dask stain`` work out of the box on a laptop. It is small (16 base features, 3
residual blocks, a few hundred thousand parameters) and was trained for minutes on two CPU
cores, on phantom pairs only: it has never seen a real sample and must not be used on one.
``benchmarks/train_default_model.py`` runs this recipe end to end.

Training pairs: the pairs ``vstain-dask phantom-pairs`` writes (``DEFAULT_PAIRS``; mostly
longitudinal sections, as histology is cut), plus ``DEFAULT_AXIAL`` sections perpendicular to the
screw in the same 7:1:2 mix. The demo and most volumes are stained slice by slice across the
screw, which the longitudinal sections hardly show.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vstain_dask.models.config import DiscriminatorConfig, GeneratorConfig, Variant
from vstain_dask.train.augment import AugmentConfig
from vstain_dask.train.trainer import Provenance, TrainConfig, TrainResult, train

__all__ = [
    "DEFAULT_PAIRS",
    "DEFAULT_AXIAL",
    "DEFAULT_CONFIG",
    "DEFAULT_NOTES",
    "make_default_pairs",
    "train_default_model",
]

#: ``write_phantom_pairs`` arguments of the training pairs (7:1:2 Mg:Ti:PEEK)
DEFAULT_PAIRS: dict[str, Any] = {"n": 24, "seed": 2024, "size": (384, 384), "voxel_size": 5.0}
#: axial sections (perpendicular to the screw) added to them, each of its own specimen
DEFAULT_AXIAL: dict[str, Any] = {"n": 16, "seed": 4048}

#: the training settings: the paper's method and weights, a small network and budget
DEFAULT_CONFIG = TrainConfig(
    variant=Variant.MOD_CYCLEGAN,
    epochs=8,
    batch_size=4,
    patch_size=128,
    patches_per_pair=6,
    workers=0,
    device="cpu",
    seed=0,
    generator=GeneratorConfig(ngf=16, n_blocks=3),
    discriminator=DiscriminatorConfig(ndf=32),
    cache=True,
    val_every=0,
    # the demo stains axial slices, where cortices run in other directions than in most
    # (longitudinal) training sections: any 90° rotation, not only the paper's flips
    augment=AugmentConfig(rotate90=True),
    # phantom pairs correspond everywhere, and the slide around the sample (outside the
    # correspondence mask) must come out white: the L1 terms cover whole patches
    mask_l1=False,
)

DEFAULT_NOTES = (
    "Bundled default model of vstain-dask. Trained on SYNTHETIC phantom pairs (procedural "
    "bone-implant CT slices with rendered toluidine-blue histology), not on real samples: it "
    "shows what the pipeline does and gives recognisable colours on phantoms (bone purple, "
    "trabecular edges and new bone blue, marrow light, slide background white). It does not "
    "render implant screws black as sections show them: a magnesium screw has the CT grey value "
    "of cortical bone and comes out bone-coloured, and titanium screws (a tenth of the training "
    "pairs) come out purple too. Recipe: the paper's mod-cyclegan losses and "
    "weights, but a small network, 128-pixel patches, a budget of minutes, random 90° rotations "
    "as well as flips, extra axial sections, and L1 terms over whole patches (mask_l1=False: "
    "phantom pairs correspond everywhere). Do not use it to interpret real tissue; train your "
    "own model on your pairs with `vstain-dask train`."
)


def make_default_pairs(
    path: str | os.PathLike, *, overwrite: bool = False, axial: bool = True
) -> Path:
    """Write the phantom training pairs of the recipe.

    ``DEFAULT_PAIRS`` through :func:`~vstain_dask.phantom.write_phantom_pairs` (ids
    ``pair000``...), then, with ``axial``, the ``DEFAULT_AXIAL`` axial sections (ids
    ``axial000``..., samples ``axial-<material>-NN``).
    """
    import numpy as np

    from vstain_dask.pairs import write_pair
    from vstain_dask.phantom import material_mix, phantom_pair, write_phantom_pairs

    out = write_phantom_pairs(path, overwrite=overwrite, **DEFAULT_PAIRS)
    if not axial:
        return out
    size, vox = DEFAULT_PAIRS["size"], DEFAULT_PAIRS["voxel_size"]
    rng = np.random.default_rng(DEFAULT_AXIAL["seed"])
    seeds = rng.integers(0, 2**31, (DEFAULT_AXIAL["n"], 2)).tolist()
    materials = material_mix(DEFAULT_AXIAL["n"])
    for i, (material, (seed, sample_seed)) in enumerate(zip(materials, seeds, strict=True)):
        p = phantom_pair(
            size=size,
            material=material,
            seed=seed,
            sample_seed=sample_seed,
            voxel_size=vox,
            plane="axial",
        )
        write_pair(
            out,
            f"axial{i:03d}",
            ct=p["ct"],
            histology=p["histology"],
            mask=p["mask"],
            material=material,
            sample=f"axial-{material.value}-{i:02d}",
            voxel_size=vox,
            attrs={**p["attrs"], "recipe": "default-axial"},
        )
    return out


def train_default_model(
    pairs: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    config: TrainConfig | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> TrainResult:
    """Train the default model's recipe on ``pairs`` into ``run_dir``.

    ``run_dir / "model.pt"`` is the file that is copied to ``vstain_dask/data/default_model.pt``.
    """
    cfg = config or DEFAULT_CONFIG
    notes = DEFAULT_NOTES
    if cfg != DEFAULT_CONFIG:
        changed = {k: now for k, (_, now) in cfg.differences(DEFAULT_CONFIG.to_dict()).items()}
        notes += f" Recipe changed from the default: {changed}."
    return train(
        pairs,
        run_dir,
        cfg,
        overwrite=overwrite,
        resume=resume,
        progress=progress,
        provenance=Provenance(command=command, notes=notes),
    )
