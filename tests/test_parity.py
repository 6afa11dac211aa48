"""Train–stain parity: the same raw CT reaches the generator as the same tensor whether it comes
through the training data path (pairs store -> PatchDataset) or through the staining path
(raw volume -> stain_block -> the model's input mapping).

The pairs are added with `add_pair` and levels a user gives (bone 21000, background 6000, so the
mapping to paper units does something); the model is a real one written by a 1-epoch training
run on them, so what the stain reads from the model file (input range, inversion, channels) is
what training recorded. The generator's input is captured with a torch forward pre-hook on the
loaded generator.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vstain_dask.models import DiscriminatorConfig, GeneratorConfig, load_model
from vstain_dask.pairs import read_pair
from vstain_dask.stain import StainConfig
from vstain_dask.stain.block import stain_block
from vstain_dask.train import TrainConfig, add_pair, train
from vstain_dask.train.augment import AugmentConfig
from vstain_dask.train.dataset import PatchDataset, scan_pairs

SIZE = 64
LEVELS = (21000.0, 6000.0)  # bone, background, raw CT units
NO_AUGMENT = AugmentConfig(scale=(1.0, 1.0), flips=False, ct_brightness=0.0, ct_contrast=0.0,
                           histology_brightness=0.0, histology_contrast=0.0)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from scipy import ndimage

    tmp = tmp_path_factory.mktemp("parity")
    pairs = tmp / "pairs.zarr"
    rng = np.random.default_rng(3)
    for i in range(2):
        field = ndimage.gaussian_filter(rng.normal(size=(SIZE, SIZE)), 5.0)
        bone = field > np.median(field)
        ct = np.where(bone, LEVELS[0], LEVELS[1]) + rng.normal(0, 400, (SIZE, SIZE))
        rgb = np.where(bone[..., None], [150, 70, 170], [245, 245, 245]).astype(np.uint8)
        add_pair(pairs, ct=np.clip(ct, 0, 65535).astype(np.uint16), histology=rgb,
                 material="mg", sample=f"s{i}", pair_id=f"pair{i:03d}", ct_levels=LEVELS,
                 mask=np.ones((SIZE, SIZE), bool), auto_mask=False)  # fmt: skip
    config = TrainConfig(
        epochs=1, patch_size=32, batch_size=2, patches_per_pair=2, workers=0, device="cpu",
        val_every=0, generator=GeneratorConfig(ngf=4, n_blocks=1),
        discriminator=DiscriminatorConfig(ndf=4, n_layers=2),
    )  # fmt: skip
    result = train(pairs, tmp / "run", config, progress=False)
    return pairs, config, result.model


def _training_input(pairs, config: TrainConfig, pair_id: str) -> torch.Tensor:
    """What the training stream delivers for the whole pair, un-augmented: (1, H, W)."""
    info = [p for p in scan_pairs(pairs) if p.id == pair_id]
    dataset = PatchDataset(pairs, info, patch_size=SIZE, patches_per_pair=1,
                           normalization=config.input, augment=NO_AUGMENT, seed=0)  # fmt: skip
    return dataset.sample(0, 0)["ct"]


def _staining_input(model_file, raw: np.ndarray, levels: tuple[float, float]) -> torch.Tensor:
    """What the stain engine feeds the generator for the plane ``raw``: (C, H, W)."""
    model = load_model(model_file)
    seen: list[torch.Tensor] = []
    hook = model.generator.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    box = ((0, 1), (0, SIZE), (0, SIZE))
    config = StainConfig(axes="z", tile=SIZE, step=SIZE, ct_levels=levels, batch_size=1)
    try:
        stain_block(raw[None], raw_box=box, tile_box=box, vol_shape=(1, SIZE, SIZE), box=box,
                    model=model, config=config)  # fmt: skip
    finally:
        hook.remove()
    assert len(seen) == 1 and seen[0].shape[0] == 1  # one tile: the whole plane
    return seen[0][0].detach().cpu()


def test_training_and_staining_feed_the_generator_the_same_tensor(trained):
    pairs, config, model_file = trained
    for pair_id in ("pair000", "pair001"):
        pair = read_pair(pairs, pair_id)
        raw = np.asarray(pair["ct"])
        recorded = pair["attrs"]["normalization"]["ct_levels"]
        assert (recorded["bone"], recorded["background"]) == LEVELS

        from_training = _training_input(pairs, config, pair_id)
        from_staining = _staining_input(model_file, raw, LEVELS)

        assert from_training.shape == (1, SIZE, SIZE)
        assert from_staining.shape[1:] == (SIZE, SIZE)
        for channel in from_staining:  # a 3-channel model gets the same plane three times
            assert torch.equal(channel, from_training[0])
        # and it is the network's range, not raw values
        assert -1.0 <= float(from_training.min()) < float(from_training.max()) <= 1.0
