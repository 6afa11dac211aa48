"""Loss terms of the paper's paired CycleGAN and of the baselines.

All images are ``(N, C, H, W)`` tensors in [-1, 1]; masks are ``(N, 1, H, W)``, ``(N, H, W)``
or ``(N, C, H, W)`` with 1 (or True) where CT and histology correspond. Every term is a scalar
mean, so weights keep their meaning whatever the patch and batch size.

The generator objective of the paper's method (``Variant.MOD_CYCLEGAN``) is::

    L_G = L_gan + λcyc L_cyc + λid L_id + λpx L_px + λgs L_gs

with λcyc = 6, λid = 3, λpx = 6, λgs = 1 (:class:`LossWeights`). The CycleGAN baselines drop the
pixelwise and greyscale terms; Pix2Pix uses ``L_gan + λ L1`` with λ = 20.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from vstain_dask.errors import InputError, as_enum
from vstain_dask.models.config import L1Normalization, Variant, _from_dict

__all__ = [
    "LossWeights",
    "lsgan_loss",
    "discriminator_loss",
    "masked_l1",
    "supervision_loss",
    "greyscale_loss",
    "total_loss",
]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms; defaults are the paper's.

    Parameters
    ----------
    gan : float
        Adversarial (least-squares) term of the generators.
    cycle : float
        λcyc, cycle-consistency L1 (paper: 6).
    identity : float
        λid, identity L1 (paper: 3).
    pixel : float
        λpx, masked pixelwise supervision L1 on both generators (paper: 6).
    greyscale : float
        λgs, greyscale loss on the generated CT (paper: 1).
    pix2pix_l1 : float
        λ of the Pix2Pix L1 term (paper's Pix2Pix baseline: 20; Isola et al. used 100).
    """

    gan: float = 1.0
    cycle: float = 6.0
    identity: float = 3.0
    pixel: float = 6.0
    greyscale: float = 1.0
    pix2pix_l1: float = 20.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"loss weight {name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"loss weight {name} must be finite and >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))

    @classmethod
    def for_variant(cls, variant: Variant | str, **changes: float) -> LossWeights:
        """The paper's weights for ``variant``; the plain CycleGANs have no pixel/greyscale terms."""
        variant = as_enum(Variant, variant, "variant")
        base: dict[str, float] = {}
        if variant in (Variant.CYCLEGAN, Variant.CYCLEGAN_INVCT):
            base = {"pixel": 0.0, "greyscale": 0.0}
        return replace(cls(), **{**base, **changes})

    def to_dict(self) -> dict[str, float]:
        """Plain form for checkpoints and JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LossWeights:
        """Inverse of :meth:`to_dict`; unknown fields are an error."""
        return _from_dict(cls, data)


def _same_shape(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise InputError(
            f"{names[0]} and {names[1]} must have the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def lsgan_loss(scores: torch.Tensor, *, real: bool) -> torch.Tensor:
    """Least-squares GAN loss (Mao et al. 2017): mean of ``(scores - target) ** 2``.

    Parameters
    ----------
    scores : (N, 1, H', W') tensor
        Raw discriminator output (no sigmoid).
    real : bool
        Target 1 (the scores should say "real") or 0 ("fake").
    """
    target = 1.0 if real else 0.0
    return torch.mean((scores - target) ** 2)


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Discriminator objective: half the sum of the LSGAN losses on real and on fake images."""
    return 0.5 * (lsgan_loss(real_scores, real=True) + lsgan_loss(fake_scores, real=False))


def masked_l1(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    normalization: L1Normalization | str = L1Normalization.MASK,
) -> torch.Tensor:
    """L1 of the masked images.

    ``m`` is the mask broadcast to the image shape and ``d = |prediction - target| * m``:

    - ``normalization="pixels"`` (the paper's): ``mean(d)``, the mean over all elements of the
      masked images. The paper applies the masks "as binary multipliers for all l1 loss terms"
      and the PyTorch-GAN code it built on takes ``L1Loss()(fake * m, real * m)``, which is
      this mean;
    - ``normalization="mask"``: ``sum(d) / sum(m)``, the mean absolute error per masked
      element: ``1 / coverage`` times the ``pixels`` value. An all-zero mask gives 0.

    Parameters
    ----------
    prediction, target : (N, C, H, W) tensor
        Images.
    mask : (N, 1, H, W), (N, H, W) or (N, C, H, W) tensor, bool or 0/1
        Where the pair corresponds.
    normalization : L1Normalization
        ``"mask"`` (default here, as before it was a choice) or ``"pixels"``.
    """
    normalization = as_enum(L1Normalization, normalization, "normalization")
    _same_shape(prediction, target, ("prediction", "target"))
    if mask.ndim == prediction.ndim - 1:
        mask = mask.unsqueeze(1)
    try:
        weights = mask.to(prediction.dtype).expand_as(prediction)
    except RuntimeError as e:
        raise InputError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the image shape "
            f"{tuple(prediction.shape)}; give (N, 1, H, W) or (N, H, W)"
        ) from e
    masked = torch.abs(prediction - target) * weights
    if normalization is L1Normalization.PIXELS:
        return torch.mean(masked)
    # the numerator is 0 wherever the area is, so clamping only avoids 0 / 0
    return torch.sum(masked) / torch.clamp(
        torch.sum(weights), min=torch.finfo(prediction.dtype).tiny
    )


def supervision_loss(
    fake_stain: torch.Tensor,
    real_stain: torch.Tensor,
    fake_ct: torch.Tensor,
    real_ct: torch.Tensor,
    mask: torch.Tensor,
    *,
    normalization: L1Normalization | str = L1Normalization.MASK,
) -> torch.Tensor:
    """The paper's pixelwise supervision on both generators: mean of the two masked L1 terms.

    Parameters
    ----------
    fake_stain, real_stain : (N, 3, H, W) tensor
        ``G_AB(ct)`` and the co-registered histology.
    fake_ct, real_ct : (N, C, H, W) tensor
        ``G_BA(histology)`` and the CT.
    mask : (N, 1, H, W) or (N, H, W) tensor
        Correspondence mask shared by both directions.
    normalization : L1Normalization
        As for :func:`masked_l1`.
    """
    return 0.5 * (
        masked_l1(fake_stain, real_stain, mask, normalization=normalization)
        + masked_l1(fake_ct, real_ct, mask, normalization=normalization)
    )


def greyscale_loss(generated_ct: torch.Tensor) -> torch.Tensor:
    """Penalize colour in a generated CT: mean absolute difference between its channels.

    For R, G, B this is ``mean(|R - G| + |G - B| + |R - B|) / 3``: the mean over pixels and over
    channel pairs. A single-channel image gives 0.

    Parameters
    ----------
    generated_ct : (N, C, H, W) tensor
        Output of the stain -> CT generator.
    """
    if generated_ct.ndim != 4:
        raise InputError(
            f"generated_ct must be (N, C, H, W), got shape {tuple(generated_ct.shape)}"
        )
    c = generated_ct.shape[1]
    if c < 2:
        return generated_ct.sum() * 0.0
    i, j = torch.triu_indices(c, c, offset=1, device=generated_ct.device)
    return torch.mean(torch.abs(generated_ct[:, i] - generated_ct[:, j]))


def total_loss(terms: Mapping[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """Weighted sum of named terms; names are the fields of :class:`LossWeights`.

    Terms whose weight is 0 are left out (so a baseline need not compute them).
    """
    known = asdict(weights)
    unknown = sorted(set(terms) - set(known))
    if unknown:
        raise InputError(f"unknown loss term(s) {unknown}; known terms are {sorted(known)}")
    parts = [known[name] * value for name, value in terms.items() if known[name] != 0.0]
    if not parts:
        raise InputError("total_loss needs at least one term with a non-zero weight")
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total
