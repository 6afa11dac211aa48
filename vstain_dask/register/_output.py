"""What a registration leaves: the pair's images on the found plane, and the QC picture."""

from __future__ import annotations

import os

import numpy as np

from vstain_dask.register._affine import AffineResult, _image2d, ct_on_plane
from vstain_dask.register._images import CTPyramid, SectionLevel
from vstain_dask.register._search import Candidate


def _section_on_plane(section: SectionLevel, cand: Candidate, affine: AffineResult):
    """The section's RGB resampled on the plane grid through the affine map, and where it is."""
    import SimpleITK as sitk

    rgb = section.rgb[:, ::-1] if cand.flip else section.rgb
    m = affine.plane_to_section
    t = sitk.AffineTransform(2)
    t.SetMatrix(tuple(float(v) for v in m[:2, :2][::-1, ::-1].ravel()))
    t.SetTranslation(tuple(float(v) for v in m[:2, 3][::-1]))
    ref = _image2d(np.zeros(section.shape, np.float32), section)
    out = np.empty(rgb.shape, dtype=np.uint8)
    for c in range(3):
        img = _image2d(rgb[..., c].astype(np.float32), section)
        res = sitk.Resample(img, ref, t, sitk.sitkLinear, 255.0, sitk.sitkFloat32)
        out[..., c] = np.clip(np.rint(sitk.GetArrayFromImage(res)), 0, 255).astype(np.uint8)
    ones = _image2d(np.ones(section.shape, np.float32), section)
    inside = sitk.GetArrayFromImage(sitk.Resample(ones, ref, t, sitk.sitkNearestNeighbor, 0.0))
    return out, inside > 0


def plane_images(
    pyramid: CTPyramid, cand: Candidate, affine: AffineResult, section: SectionLevel
) -> dict[str, np.ndarray]:
    """``ct`` (float32), ``histology`` (uint8 RGB) and ``mask`` (both exist) on the found
    plane at the CT's pixel size, cropped to the mask's bounding box."""
    ct, ct_inside = ct_on_plane(pyramid, cand, section)
    rgb, sec_inside = _section_on_plane(section, cand, affine)
    mask = ct_inside & sec_inside
    if not mask.any():
        return {"ct": ct[:0, :0], "histology": rgb[:0, :0], "mask": mask[:0, :0]}
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return {"ct": ct[sl], "histology": rgb[sl], "mask": mask[sl]}


def write_qc(path: str | os.PathLike, images: dict, curve: list[float], title: str) -> None:
    """CT plane, registered histology, a checkerboard of the two, and the metric curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ct = images["ct"].astype(np.float32)
    lo, hi = np.percentile(ct[images["mask"]], [1, 99]) if images["mask"].any() else (0, 1)
    grey = np.clip((ct - lo) / max(hi - lo, 1e-6), 0, 1)
    hist = images["histology"].astype(np.float32) / 255.0
    tile = max(8, min(grey.shape) // 8)
    yy, xx = np.indices(grey.shape)
    board = ((yy // tile + xx // tile) % 2).astype(bool)
    check = np.where(board[..., None], np.repeat(grey[..., None], 3, axis=-1), hist)
    fig, ax = plt.subplots(1, 4, figsize=(16, 4.4))
    ax[0].imshow(grey, cmap="gray")
    ax[0].set_title("CT on the found plane")
    ax[1].imshow(hist)
    ax[1].set_title("registered histology")
    ax[2].imshow(check)
    ax[2].set_title("checkerboard")
    for a in ax[:3]:
        a.axis("off")
    ax[3].plot(-np.asarray(curve, dtype=float))
    ax[3].set_xlabel("optimizer iteration (refinement levels, then affine)")
    ax[3].set_ylabel("mutual information (Mattes)")
    ax[3].set_title("metric")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
