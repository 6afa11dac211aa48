"""The section's 2D affine refinement and the images of the pair, on the found plane.

Sectioning compresses and shears the tissue, so the section matches its CT plane only up to a
2D affine map. With the plane found, the CT is resampled on it, and SimpleITK's
``AffineTransform(2)`` is fitted (Mattes mutual information, regular-step gradient descent)
mapping plane coordinates to section coordinates.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vstain_dask.register._geometry import affine4
from vstain_dask.register._images import CTPyramid, SectionLevel
from vstain_dask.register._search import (
    Candidate,
    SearchSettings,
    distortion_of,
    fixed_image,
    mi_method,
    tissue_mask,
)


def _image2d(array: np.ndarray, section: SectionLevel):
    """A 2D SimpleITK image on the section's grid (x = columns, y = rows)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    img.SetSpacing((float(section.spacing[1]), float(section.spacing[0])))
    img.SetOrigin((float(section.origin[1]), float(section.origin[0])))
    return img


def ct_on_plane(pyramid: CTPyramid, cand: Candidate, section: SectionLevel, level: int = 0):
    """The CT sampled on the section's (flipped) grid under ``cand``, and where it exists."""
    ref, _ = fixed_image(section, cand.placement, cand.flip)
    values, inside = pyramid.resample(level, ref, cand.transform())
    return values[0], inside[0]


def _start_at(t, cand: Candidate) -> None:
    """Set the 2D affine ``t`` (plane → section, about its centre) to the inverse of
    ``cand``'s distortion D about the placement's ``q_mid``: p → q_mid + D⁻¹ (p - q_mid)."""
    inv = np.linalg.inv(np.reshape(cand.distortion, (2, 2)))[::-1, ::-1]  # (x, y) order
    q_mid = np.asarray(cand.placement.q_mid, dtype=np.float64)[::-1]
    c = np.asarray(t.GetCenter(), dtype=np.float64)
    t.SetMatrix(tuple(float(v) for v in inv.ravel()))
    t.SetTranslation(tuple(float(v) for v in q_mid + inv @ (c - q_mid) - c))


@dataclasses.dataclass(frozen=True)
class AffineResult:
    """``plane_to_section`` (4×4 on (row, col, w)), its metric, and whether it was used."""

    plane_to_section: np.ndarray
    metric: float
    rigid_metric: float
    used: bool
    reason: str
    history: tuple[float, ...]


def fit_affine(
    pyramid: CTPyramid, cand: Candidate, section: SectionLevel, settings: SearchSettings
) -> AffineResult:
    """Fit the 2D affine map from the CT plane (fixed) to the section (moving), starting from
    the distortion the plane search found with ``cand``."""
    import SimpleITK as sitk

    ct, inside = ct_on_plane(pyramid, cand, section)
    grey = section.contrast()
    if cand.flip:
        grey = grey[:, ::-1]
    fixed = _image2d(ct, section)
    moving = _image2d(grey, section)
    mask = sitk.GetImageFromArray((inside & tissue_mask(grey)).astype(np.uint8))
    mask.CopyInformation(fixed)
    reg = mi_method(settings, mask)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=2 * settings.iterations,
        gradientMagnitudeTolerance=1e-8, relaxationFactor=0.6,
    )  # fmt: skip
    reg.SetOptimizerScalesFromPhysicalShift()
    rows, cols = np.nonzero(inside)
    centre = (
        float(section.origin[1] + section.spacing[1] * cols.mean()),
        float(section.origin[0] + section.spacing[0] * rows.mean()),
    )
    t = sitk.AffineTransform(2)
    t.SetCenter(centre)
    reg.SetInitialTransform(t, inPlace=True)
    rigid_metric = float(reg.MetricEvaluate(fixed, moving))
    _start_at(t, cand)
    history: list[float] = []
    reg.AddCommand(sitk.sitkIterationEvent, lambda: history.append(reg.GetMetricValue()))
    reg.Execute(fixed, moving)
    metric = float(reg.MetricEvaluate(fixed, moving))
    lin = np.array(t.GetMatrix()).reshape(2, 2)[::-1, ::-1]  # (x, y) → (row, col)
    c = np.array(centre)[::-1]
    off = c + np.array(t.GetTranslation())[::-1] - lin @ c
    m = affine4(np.pad(lin, ((0, 1), (0, 1))) + np.diag([0, 0, 1.0]), np.append(off, 0.0))
    distortion = distortion_of(lin)
    if not metric < rigid_metric:
        return AffineResult(np.eye(4), metric, rigid_metric, False, "no better than rigid", ())
    if distortion > settings.max_distortion:
        reason = f"scale/shear {distortion:.1%} beyond {settings.max_distortion:.0%}"
        return AffineResult(np.eye(4), metric, rigid_metric, False, reason, tuple(history))
    return AffineResult(m, metric, rigid_metric, True, "", tuple(history))
