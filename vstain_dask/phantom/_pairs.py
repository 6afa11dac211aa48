"""Paired 2D data: CT slices of phantoms and registered toluidine-blue histology of the same cut.

Both images come straight from the specimen's structure functions evaluated on a plane, so a
pair costs a fraction of a second. The histology is evaluated on a slightly displaced plane (a
small affine plus a smooth elastic field), the residual misalignment of a real registration.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask._validate import check_int
from vstain_dask.errors import InputError, as_enum
from vstain_dask.pairs import Material, write_pair
from vstain_dask.phantom._anatomy import (
    BONE_LABELS,
    Frame,
    Points,
    Specimen,
    Tissue,
    evaluate,
    specimen,
)
from vstain_dask.phantom._histology import Artefacts, Session, render
from vstain_dask.phantom._noise import derive_key, gaussian_white, value_noise
from vstain_dask.phantom._volume import (
    GENERATOR_VERSION,
    Scanner,
    check_seed,
    check_shape,
    check_voxel_size,
    metal_artefacts,
    phantom_material,
    radial_terms,
    scanner,
    to_grey,
)

__all__ = ["PlaneKind", "phantom_pair", "phantom_pairs", "write_phantom_pairs", "material_mix"]

#: the paper's mix of implant materials, Mg : Ti : PEEK
MATERIAL_MIX = {Material.MG: 7, Material.TI: 1, Material.PEEK: 2}
_PAIRS_PER_SAMPLE = 2
_MASK_LABELS = (*BONE_LABELS, Tissue.SCREW, Tissue.DEGRADATION, Tissue.LACUNA, Tissue.VESSEL)


class PlaneKind(enum.StrEnum):
    """How a section is cut relative to the screw."""

    LONGITUDINAL = "longitudinal"  # contains the screw axis (the usual histology cut)
    OBLIQUE = "oblique"  # tilted 10-25° from the screw axis
    AXIAL = "axial"  # perpendicular to the screw axis


@dataclasses.dataclass(frozen=True)
class _Plane:
    kind: str
    centre: tuple[float, float, float]  # design µm (z, y, x)
    row: tuple[float, float, float]  # unit vector down the image
    col: tuple[float, float, float]  # unit vector across the image
    vox: float  # design µm per pixel

    def points(self, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> Points:
        """Design coordinates of (fractional) pixel positions ``rows``, ``cols``."""
        h, w = shape
        r = (rows + (0.5 - h / 2.0)) * self.vox
        c = (cols + (0.5 - w / 2.0)) * self.vox
        coords = [self.centre[a] + r * self.row[a] + c * self.col[a] for a in range(3)]
        return Points(*coords)


def _draw_plane(sp: Specimen, kind: str, rng: np.random.Generator, vox: float, size) -> _Plane:
    """A cut through the specimen, framed the way sections are imaged.

    Most views show the whole implant site; some zoom (up to 2.2×) onto the bone–implant
    interface. Images are rotated in-plane (mostly upright, sometimes by quarter turns).
    """
    h, w = size
    zoom = float(np.exp(rng.uniform(0.0, math.log(2.2)))) if rng.random() < 0.4 else 1.0
    zoom *= float(rng.uniform(1.0, 1.15))
    vox = vox / zoom
    alpha = float(rng.uniform(0, math.pi))
    across = (0.0, math.sin(alpha), math.cos(alpha))
    normal = (0.0, math.cos(alpha), -math.sin(alpha))
    top = sp.femur_z - sp.ro
    span = max(h, w) * vox
    jitter = float(rng.uniform(-0.08, 0.08)) * span
    if kind == PlaneKind.AXIAL:
        zc = float(rng.uniform(top + 150.0, sp.tip_z - 250.0))
        row = (0.0, math.cos(alpha), -math.sin(alpha))
        centre = (zc, sp.screw_y, sp.screw_x)
        # zoomed views look at the interface beside the screw
        side = (zoom - 1.0) / 1.2 * sp.r_major * (1 if rng.random() < 0.5 else -1)
        centre = tuple(centre[a] + (side + jitter) * across[a] for a in range(3))
    else:
        row = (1.0, 0.0, 0.0)
        if kind == PlaneKind.OBLIQUE:
            beta = math.radians(float(rng.uniform(10, 25))) * (1 if rng.random() < 0.5 else -1)
            row = (math.cos(beta), math.sin(beta) * normal[1], math.sin(beta) * normal[2])
        off = float(rng.uniform(-0.3, 0.3)) * sp.r_major
        # whole views: centred between the bone's top and the screw tip; zoomed views: a
        # point on the screw's flank inside the bone
        t = min(1.0, (zoom - 1.0) / 0.6)
        zc = (1 - t) * 0.5 * (top + sp.tip_z) + t * float(rng.uniform(top, sp.tip_z))
        side = t * sp.r_major * (1 if rng.random() < 0.5 else -1)
        centre = (
            zc + float(rng.uniform(-0.08, 0.08)) * span,
            sp.screw_y + off * normal[1] + (side + jitter) * across[1],
            sp.screw_x + off * normal[2] + (side + jitter) * across[2],
        )
    # in-plane rotation of the image: mostly upright
    quarter = int(rng.choice(4, p=[0.55, 0.15, 0.15, 0.15]))
    gamma = quarter * math.pi / 2 + math.radians(float(rng.uniform(-15, 15)))
    c, s_ = math.cos(gamma), math.sin(gamma)
    row_r = tuple(c * row[a] + s_ * across[a] for a in range(3))
    col_r = tuple(-s_ * row[a] + c * across[a] for a in range(3))
    return _Plane(str(kind), centre, row_r, col_r, vox)


def _misalignment(rng: np.random.Generator, key: int, size) -> tuple[np.ndarray, np.ndarray]:
    """Row and column displacement (pixels) of the histology relative to the CT."""
    h, w = size
    n = max(h, w)
    # a good registration leaves about a percent of the field: ~5 px at 512
    angle = math.radians(float(rng.uniform(-0.6, 0.6)))
    scale = 1.0 + float(rng.uniform(-0.006, 0.006))
    shear = float(rng.uniform(-0.004, 0.004))
    shift = rng.uniform(-0.004, 0.004, 2) * n
    i = np.arange(h, dtype=np.float64).reshape(-1, 1) - (h - 1) / 2.0
    j = np.arange(w, dtype=np.float64).reshape(1, -1) - (w - 1) / 2.0
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    di = (c - 1.0) * i - s * j + shear * j + shift[0]
    dj = s * i + (c - 1.0) * j + shift[1]
    amp = 0.003 * n + 0.3
    cell = max(8.0, n / 3.0)
    di = di + amp * value_noise((i, j), cell=cell, key=derive_key(key, 1))
    dj = dj + amp * value_noise((i, j), cell=cell, key=derive_key(key, 2))
    return di.astype(np.float32), dj.astype(np.float32)


def _label_hull_mask(labels: np.ndarray) -> np.ndarray:
    """Convex hull of bone, implant and degradation layer: where CT and histology correspond."""
    from skimage.morphology import convex_hull_image

    fg = np.isin(labels, np.array(_MASK_LABELS, dtype=np.uint8))
    if not fg.any():
        return np.zeros(labels.shape, dtype=bool)
    return convex_hull_image(fg)


def _check_size(size) -> tuple[int, int]:
    s = check_shape(size, 2, name="size")
    if min(s) < 16:
        raise InputError(f"size must be at least 16 pixels along Y and X, got {tuple(size)!r}")
    return s


def phantom_pair(
    *,
    size: tuple[int, int] = (512, 512),
    material: Material | str,
    seed: int,
    voxel_size: float = 5.0,
    plane: PlaneKind | str | None = None,
    sample_seed: int | None = None,
) -> dict[str, Any]:
    """One CT slice and the registered toluidine-blue histology of the same section.

    Parameters
    ----------
    size : (Y, X)
        Image size in pixels.
    material : ``"mg"``, ``"ti"`` or ``"peek"``
    seed : int
        Seeds the cut (plane, zoom), the misalignment, the section artefacts and the staining
        session.
    voxel_size : float
        µm per pixel, for both images.
    plane : :class:`PlaneKind` (``"longitudinal"``, ``"oblique"``, ``"axial"``) or None
        Orientation of the cut relative to the screw; None draws one (mostly longitudinal).
        The framing (whole implant site or a zoom onto the interface, in-plane rotation) is
        drawn from ``seed``.
    sample_seed : int, optional
        Seeds the specimen and its scan; pairs with the same ``sample_seed`` and material are
        sections of one sample. Default: ``seed``.

    Returns
    -------
    dict
        ``ct`` (Y, X) uint16, ``histology`` (Y, X, 3) uint8 RGB, ``mask`` (Y, X) bool (convex
        hull of bone and implant), ``labels`` (Y, X) uint8 :class:`Tissue` of the CT slice,
        ``histology_labels`` (Y, X) uint8 of the section, ``displacement`` (2, Y, X) float32
        (rows, columns: where each histology pixel was taken from, in CT pixels), ``attrs``.
    """
    size = _check_size(size)
    mat = phantom_material(material)
    seed = check_seed(seed)
    sample_seed = seed if sample_seed is None else check_seed(sample_seed)
    voxel_size = check_voxel_size(voxel_size)
    plane = as_enum(PlaneKind, plane, "plane", allow_none=True)
    return _make_pair(size, mat, seed, sample_seed, voxel_size, plane)


def _make_pair(
    size: tuple[int, int],
    mat: Material,
    seed: int,
    sample_seed: int,
    voxel_size: float,
    plane: PlaneKind | None,
) -> dict[str, Any]:
    """:func:`phantom_pair` of checked arguments."""
    n = max(size)
    frame = Frame((n, n, n), voxel_size)
    sp = specimen(sample_seed, mat.value, frame.vox)
    rng = np.random.default_rng([seed, 7])
    if plane is None:
        plane = list(PlaneKind)[int(rng.choice(3, p=[0.6, 0.25, 0.15]))]
    pl = _draw_plane(sp, plane, rng, frame.vox, size)
    key = derive_key(seed, 31)
    ct, labels = _ct_slice(sp, scanner(sample_seed), pl, size, key)
    section = _section(sp, pl, rng, key, size)
    attrs = {
        "generator": "vstain_dask.phantom",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "sample_seed": sample_seed,
        "plane": plane.value,
        "zoom": round(frame.vox / pl.vox, 4),
    }
    return {
        "ct": ct,
        "histology": section.rgb,
        "mask": _label_hull_mask(labels),
        "labels": labels,
        "histology_labels": section.labels,
        "displacement": np.stack([section.di, section.dj]),
        "attrs": {**attrs, **section.attrs()},
    }


def _pixel_axes(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices (float64) of an image of ``size``, as an open grid."""
    h, w = size
    return (
        np.arange(h, dtype=np.float64).reshape(-1, 1),
        np.arange(w, dtype=np.float64).reshape(1, -1),
    )


def _ct_slice(
    sp: Specimen, sc: Scanner, pl: _Plane, size: tuple[int, int], key: int
) -> tuple[np.ndarray, np.ndarray]:
    """The CT slice on ``pl`` (uint16: 2D PSF, metal artefacts, scanner model) and its labels."""
    import scipy.ndimage as ndi

    h, w = size
    rows, cols = _pixel_axes(size)
    ts = evaluate(sp, pl.points(rows, cols, size))
    att = ndi.gaussian_filter(ts.attenuation, sc.psf_sigma, mode="nearest")
    p = pl.points(rows, cols, size)
    metal = metal_artefacts(sp, *p.coords)
    if metal is not None:
        att += metal
    radius = np.hypot(np.broadcast_to(p.y, size), np.broadcast_to(p.x, size)) / pl.vox
    gain, rings = radial_terms(sc, radius, 0.5 * max(size))
    noise = gaussian_white(
        derive_key(key, 2), np.arange(h).reshape(-1, 1), np.arange(w).reshape(1, -1)
    )
    return to_grey(att, sc, gain, rings, noise), ts.labels


@dataclasses.dataclass(frozen=True)
class _Section:
    """The stained section of a pair, and what was drawn for it."""

    rgb: np.ndarray  # (Y, X, 3) uint8
    labels: np.ndarray  # (Y, X) uint8 Tissue
    di: np.ndarray  # (Y, X) float32: rows, in CT pixels, each pixel was taken from
    dj: np.ndarray  # (Y, X) float32: columns
    session: Session
    artefacts: Artefacts

    def attrs(self) -> dict[str, Any]:
        return {
            "max_misalignment_px": round(float(np.hypot(self.di, self.dj).max()), 3),
            "stain_session": {
                "channel_gain": [round(g, 4) for g in self.session.channel_gain],
                "density": round(self.session.density, 4),
            },
            "artefacts": {
                "cracks": self.artefacts.cracks,
                "droplets": len(self.artefacts.droplets),
                "scratches": len(self.artefacts.scratches),
            },
        }


def _section(
    sp: Specimen, pl: _Plane, rng: np.random.Generator, key: int, size: tuple[int, int]
) -> _Section:
    """The histology: the same specimen on the displaced plane, stained and imaged.

    Draws from ``rng`` (after the cut): the misalignment, the staining session
    and the section's artefacts, in this order.
    """
    rows, cols = _pixel_axes(size)
    di, dj = _misalignment(rng, derive_key(key, 3), size)
    hs = evaluate(sp, pl.points(rows + di, cols + dj, size), attenuation=False, fields=True)
    session = Session.draw(rng, derive_key(key, 4))
    art = Artefacts.draw(rng, derive_key(key, 5), size)
    rgb = render(
        hs.labels, hs.fields, session=session, artefacts=art, vox=pl.vox, key=derive_key(key, 6)
    )
    return _Section(rgb, hs.labels, di, dj, session, art)


def material_mix(n: int) -> list[Material]:
    """Materials for ``n`` pairs in the paper's 7:1:2 Mg:Ti:PEEK mix (largest remainder).

    Ties in the remainders go to the more common material. Sorted Mg, Ti, PEEK.
    """
    total = sum(MATERIAL_MIX.values())
    quotas = {m: n * w / total for m, w in MATERIAL_MIX.items()}
    counts = {m: int(math.floor(q)) for m, q in quotas.items()}
    left = n - sum(counts.values())
    order = sorted(MATERIAL_MIX, key=lambda m: (-(quotas[m] - counts[m]), -MATERIAL_MIX[m]))
    for m in order[:left]:
        counts[m] += 1
    return [m for m in MATERIAL_MIX for _ in range(counts[m])]


def _pair_plan(n: int, seed: int) -> list[dict[str, Any]]:
    """Pair ids, materials, samples and sample seeds for ``n`` pairs."""
    mats = material_mix(n)
    plan = []
    per_material: dict[Material, int] = {}
    for m in mats:
        k = per_material.get(m, 0)
        per_material[m] = k + 1
        s = k // _PAIRS_PER_SAMPLE
        plan.append(
            {
                "material": m,
                "sample": f"{m.value}-{s:02d}",
                "sample_seed": int(derive_key(seed, 41, list(MATERIAL_MIX).index(m), s) >> 2),
                "seed": int(derive_key(seed, 43, len(plan)) >> 2),
            }
        )
    order = np.random.default_rng([seed, 5]).permutation(n)
    return [{"id": f"pair{i:03d}", **plan[o]} for i, o in enumerate(order)]


def phantom_pairs(
    *, n: int = 12, seed: int, size: tuple[int, int] = (512, 512), voxel_size: float = 5.0
) -> Iterator[dict[str, Any]]:
    """Yield ``n`` phantom pairs (as :func:`phantom_pair`) in the paper's 7:1:2 material mix.

    Pairs come in samples of two sections of one specimen; each dict also has ``id``,
    ``material`` and ``sample``. Nothing is written; pairs are generated one at a time.
    """
    n = check_int(n, "n", 1)
    seed = check_seed(seed)
    size = _check_size(size)
    voxel_size = check_voxel_size(voxel_size)
    for item in _pair_plan(int(n), seed):
        pair = phantom_pair(
            size=size,
            material=item["material"],
            seed=item["seed"],
            sample_seed=item["sample_seed"],
            voxel_size=voxel_size,
        )
        yield {
            "id": item["id"],
            "material": item["material"].value,
            "sample": item["sample"],
            **pair,
        }


def write_phantom_pairs(
    path: str | os.PathLike,
    *,
    n: int = 12,
    seed: int,
    size: tuple[int, int] = (512, 512),
    voxel_size: float = 5.0,
    overwrite: bool = False,
    on_pair: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Write ``n`` phantom pairs to a pairs store (see :mod:`vstain_dask.pairs`).

    Materials follow the 7:1:2 Mg:Ti:PEEK mix, two pairs per sample; the split role is left
    None. Generation parameters go into each pair's attributes.

    Parameters
    ----------
    path : output pairs store (zarr v3 group)
    n : number of pairs
    seed : int
        Seeds everything; the same seed writes the same store.
    size : (Y, X)
        Image size in pixels.
    voxel_size : float
        µm per pixel.
    overwrite : replace an existing store
    on_pair : callable, optional
        Called with each pair's summary (``id``, ``material``, ``sample``) once it is written,
        e.g. to advance a progress bar.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    seed = check_seed(seed)
    size = _check_size(size)
    voxel_size = check_voxel_size(voxel_size)
    n = check_int(n, "n", 1)
    from vstain_dask import ngff

    p = ngff.check_output(path, overwrite=overwrite)
    if p.exists():
        shutil.rmtree(p)
    for pair in phantom_pairs(n=n, seed=seed, size=size, voxel_size=voxel_size):
        write_pair(
            p,
            pair["id"],
            ct=pair["ct"],
            histology=pair["histology"],
            mask=pair["mask"],
            material=pair["material"],
            sample=pair["sample"],
            voxel_size=voxel_size,
            role=None,
            attrs={**pair["attrs"], "pairs_seed": seed},
        )
        if on_pair is not None:
            on_pair({k: pair[k] for k in ("id", "material", "sample")})
    return p
