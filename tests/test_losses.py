"""Loss terms: exact values on small tensors."""

from __future__ import annotations

import pytest
import torch

from vstain_dask.errors import InputError
from vstain_dask.models.config import L1Normalization
from vstain_dask.models.losses import (
    LossWeights,
    discriminator_loss,
    greyscale_loss,
    lsgan_loss,
    masked_l1,
    supervision_loss,
    total_loss,
)


def _full(value: float, shape=(2, 3, 4, 5)) -> torch.Tensor:
    return torch.full(shape, float(value))


def test_lsgan_loss_values():
    assert float(lsgan_loss(_full(1.0), real=True)) == 0.0
    assert float(lsgan_loss(_full(0.0), real=False)) == 0.0
    assert float(lsgan_loss(_full(0.0), real=True)) == 1.0
    assert float(lsgan_loss(_full(0.5), real=False)) == 0.25
    scores = torch.tensor([[[[0.0, 2.0]]]])  # (1 - 0)^2 and (1 - 2)^2
    assert float(lsgan_loss(scores, real=True)) == 1.0


def test_discriminator_loss_is_half_the_sum():
    assert float(discriminator_loss(_full(1.0), _full(0.0))) == 0.0
    assert float(discriminator_loss(_full(0.0), _full(1.0))) == 1.0
    assert float(discriminator_loss(_full(0.5), _full(0.5))) == 0.25


def test_masked_l1_counts_only_the_masked_area():
    prediction = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 20.0], [3.0, 40.0]]]])
    mask = torch.tensor([[[1, 0], [1, 0]]], dtype=torch.bool)  # (N, H, W)
    assert float(masked_l1(prediction, target, mask)) == 2.0  # (1 + 3) / 2
    assert float(masked_l1(target, target, mask)) == 0.0


def test_masked_l1_normalizes_by_area_times_channels():
    prediction = torch.zeros(2, 3, 4, 4)
    target = torch.ones(2, 3, 4, 4)
    target[:, :, :, 2:] = 100.0  # outside the mask
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :, :2] = 1.0
    assert float(masked_l1(prediction, target, mask)) == 1.0


def test_masked_l1_pixels_is_the_mean_over_all_pixels_of_the_masked_images():
    # the paper's reading: PyTorch-GAN's L1Loss()(fake * m, real * m)
    prediction = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 20.0], [3.0, 40.0]]]])
    mask = torch.tensor([[[1, 0], [1, 0]]], dtype=torch.bool)
    assert float(masked_l1(prediction, target, mask, normalization="pixels")) == 1.0  # 4 / 4
    assert float(masked_l1(prediction, target, mask, normalization="mask")) == 2.0  # 4 / 2
    reference = torch.nn.L1Loss()(prediction * mask[:, None], target * mask[:, None])
    assert float(masked_l1(prediction, target, mask, normalization="pixels")) == float(reference)


def test_the_two_normalizations_differ_by_the_mask_coverage():
    # 2 x 3 x 4 x 4 images, a mask keeping 6 of 16 pixels: "mask" = "pixels" / (6 / 16)
    prediction = torch.zeros(2, 3, 4, 4)
    target = torch.full((2, 3, 4, 4), 2.0)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2, :3] = 1.0
    pixels = masked_l1(prediction, target, mask, normalization=L1Normalization.PIXELS)
    area = masked_l1(prediction, target, mask, normalization=L1Normalization.MASK)
    assert float(pixels) == 0.75  # 2 * 6 / 16
    assert float(area) == 2.0
    # a full mask: both are the plain mean
    full = torch.ones(2, 1, 4, 4)
    assert float(masked_l1(prediction, target, full, normalization="pixels")) == 2.0
    assert float(masked_l1(prediction, target, full, normalization="mask")) == 2.0
    # an empty mask: both 0
    empty = torch.zeros(2, 1, 4, 4)
    assert float(masked_l1(prediction, target, empty, normalization="pixels")) == 0.0
    with pytest.raises(InputError, match="normalization must be one of"):
        masked_l1(prediction, target, mask, normalization="area")


def test_supervision_loss_takes_the_normalization():
    mask = torch.zeros(1, 1, 2, 2)
    mask[..., 0, :] = 1.0  # half the pixels
    stain, ct = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    assert float(supervision_loss(stain + 1.0, stain, ct + 3.0, ct, mask)) == 2.0
    assert float(supervision_loss(stain + 1.0, stain, ct + 3.0, ct, mask,
                                  normalization="pixels")) == 1.0  # fmt: skip


def test_masked_l1_all_zero_mask_gives_zero_not_nan():
    prediction = torch.rand(1, 3, 4, 4, requires_grad=True)
    loss = masked_l1(prediction, torch.rand(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(prediction.grad, torch.zeros_like(prediction))


def test_masked_l1_rejects_a_mask_of_another_size():
    with pytest.raises(InputError, match="does not broadcast"):
        masked_l1(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.ones(1, 1, 5, 4))
    with pytest.raises(InputError, match="prediction and target must have the same shape"):
        masked_l1(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4))


def test_supervision_loss_averages_both_generators():
    mask = torch.ones(1, 1, 2, 2)
    stain, ct = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    assert float(supervision_loss(stain + 1.0, stain, ct + 3.0, ct, mask)) == 2.0
    assert float(supervision_loss(stain, stain, ct, ct, mask)) == 0.0


def test_greyscale_loss():
    grey = torch.rand(2, 1, 4, 4).expand(2, 3, 4, 4)
    assert float(greyscale_loss(grey)) == 0.0
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0  # |R-G| = 1, |R-B| = 1, |G-B| = 0 -> mean 2/3
    assert float(greyscale_loss(red)) == pytest.approx(2 / 3)
    assert float(greyscale_loss(torch.rand(1, 1, 4, 4))) == 0.0
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        greyscale_loss(torch.zeros(3, 4, 4))


def test_loss_weights_default_to_the_paper():
    w = LossWeights()
    assert (w.cycle, w.identity, w.pixel, w.greyscale, w.pix2pix_l1) == (6, 3, 6, 1, 20)
    plain = LossWeights.for_variant("cyclegan")
    assert plain.pixel == 0 and plain.greyscale == 0 and plain.cycle == 6
    assert LossWeights.for_variant("mod-cyclegan") == w
    assert LossWeights.from_dict(w.to_dict()) == w
    with pytest.raises(InputError, match="loss weight cycle must be finite and >= 0, got -1"):
        LossWeights(cycle=-1)
    with pytest.raises(InputError, match="variant must be one of 'mod-cyclegan'"):
        LossWeights.for_variant("gan")


def test_total_loss_weights_and_sums_terms():
    terms = {"gan": torch.tensor(1.0), "cycle": torch.tensor(0.5), "pixel": torch.tensor(0.25)}
    assert float(total_loss(terms, LossWeights())) == 1.0 + 6 * 0.5 + 6 * 0.25
    assert float(total_loss(terms, LossWeights.for_variant("cyclegan"))) == 4.0
    with pytest.raises(InputError, match=r"unknown loss term\(s\) \['style'\]"):
        total_loss({"style": torch.tensor(1.0)}, LossWeights())
