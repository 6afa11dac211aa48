"""The 3D phantom as lazy dask arrays: scanner model, block generation, OME-Zarr writing."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vstain_dask._validate import check_float
from vstain_dask.errors import InputError, as_enum
from vstain_dask.pairs import Material
from vstain_dask.phantom._anatomy import Frame, Points, Specimen, Tissue, evaluate, specimen
from vstain_dask.phantom._noise import derive_key, gaussian_white, value_noise

if TYPE_CHECKING:
    import dask.array as da

    from vstain_dask.ngff import LabelTable

__all__ = ["GENERATOR_VERSION", "phantom_volume", "write_phantom"]

#: bumped whenever the same parameters would give different bytes
GENERATOR_VERSION = 1

# z-planes evaluated at a time inside a block: bounds the temporaries to a few tens of MB
_SLAB = 24
# Gaussian PSF truncated at this many sigmas; the halo each block generates around itself
_TRUNCATE = 4.0


@dataclasses.dataclass(frozen=True)
class Scanner:
    """Per-scan acquisition model, drawn from the seed (intensities in uint16 grey values).

    A relative attenuation ``a`` becomes ``offset + scale * a`` (after a Gaussian PSF of
    ``psf_sigma`` voxels, a mild cupping and ring artefacts) plus noise of standard deviation
    ``scale * noise * (0.7 + 0.3 * sqrt(a))``.
    """

    offset: float
    scale: float
    noise: float
    psf_sigma: float
    ring_amplitude: float
    cupping: float
    key: int

    @property
    def halo(self) -> int:
        return int(_TRUNCATE * self.psf_sigma + 0.5)


def scanner(seed: int) -> Scanner:
    """Draw the acquisition parameters of one scan from ``seed``."""
    r = np.random.default_rng([int(seed), 2])
    return Scanner(
        offset=float(r.uniform(2500, 9000)),
        scale=float(r.uniform(11000, 19000)),
        noise=float(r.uniform(0.035, 0.06)),
        psf_sigma=float(r.uniform(0.8, 1.25)),
        ring_amplitude=float(r.uniform(0.002, 0.008)),
        cupping=float(r.uniform(0.0, 0.05)),
        key=derive_key(seed, 21),
    )


def radial_terms(
    sc: Scanner, radius: np.ndarray, radius_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gain (cupping) and ring offsets, both functions of the distance to the rotation axis.

    Parameters
    ----------
    radius : float array
        Distance of each pixel from the rotation axis, in voxels.
    radius_max : float
        Radius (voxels) at which the cupping reaches its full gain.
    """
    r = np.asarray(radius, dtype=np.float32)
    rn = np.clip(r * np.float32(1.0 / radius_max), 0.0, 1.0)
    gain = np.float32(sc.scale) * (np.float32(1.0 - sc.cupping) + np.float32(sc.cupping) * rn * rn)
    rings = np.float32(sc.ring_amplitude * sc.scale) * value_noise((r,), cell=2.5, key=sc.key)
    return gain.astype(np.float32), rings.astype(np.float32)


def to_grey(
    att: np.ndarray, sc: Scanner, gain: np.ndarray, rings: np.ndarray, noise: np.ndarray
) -> np.ndarray:
    """Blurred relative attenuation -> uint16 grey values (cupping, rings, noise)."""
    out = att * gain
    out += rings
    sd = np.sqrt(np.maximum(att, 0.0))
    sd *= np.float32(0.3)
    sd += np.float32(0.7)
    sd *= np.float32(sc.scale * sc.noise)
    sd *= noise
    out += sd
    out += np.float32(sc.offset)
    np.clip(out, 0, 65535, out=out)
    return np.rint(out).astype(np.uint16)


def metal_artefacts(sp: Specimen, z, y, x) -> np.ndarray | None:
    """Streaks and a dark halo around a titanium screw, in relative attenuation units.

    Dense metal starves and hardens the beam: reconstructions show a dark band hugging the
    metal and streaks radiating from it that change slowly along the rotation axis. Only Ti is
    dense enough here; other materials get None. Arguments are design coordinates (µm) that
    broadcast together (an open grid or a plane).
    """
    if sp.material != "ti":
        return None
    zf = np.asarray(z, dtype=np.float32)
    present = (zf >= sp.head_top) & (zf <= sp.tip_z)
    if not present.any():
        return None  # no metal in these slices; adding zeros would change nothing
    dy = y - np.float32(sp.screw_y)
    dx = x - np.float32(sp.screw_x)
    rs = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    # in-plane terms (cheap: they do not depend on z) for the head and for the shaft
    env, halo = [], []
    for r_metal in (sp.r_head, sp.r_major):
        gap = np.maximum(rs - np.float32(r_metal), np.float32(0.0))
        outside = (rs > r_metal).astype(np.float32)
        env.append(np.float32(0.03) * np.exp(-gap * np.float32(1.0 / 1500.0)) * outside)
        halo.append(np.float32(-0.12) * np.exp(-gap * np.float32(1.0 / 60.0)) * outside)
    in_head = zf < sp.head_bottom
    rng = np.random.default_rng([sp.keys[13] >> 1, 3])
    streak = None
    for _ in range(4):
        m = float(rng.integers(3, 13))
        phase = float(rng.uniform(0, 2 * np.pi))
        omega = np.float32(2 * np.pi / rng.uniform(600.0, 2000.0))
        amp = np.float32(rng.uniform(0.5, 1.0))
        a = (amp * np.cos(m * theta + phase)).astype(np.float32)
        b = (amp * np.sin(m * theta + phase)).astype(np.float32)
        term = a * np.cos(omega * zf)
        term -= b * np.sin(omega * zf)
        streak = term if streak is None else streak + term
    out = streak * np.where(in_head, env[0], env[1])
    out += np.where(in_head, halo[0], halo[1])
    out *= present.astype(np.float32)
    return out.astype(np.float32)


def _block_labels(frame: Frame, sp: Specimen, block_info=None) -> np.ndarray:
    loc = block_info[None]["array-location"]
    out = np.empty([b - a for a, b in loc], dtype=np.uint8)
    (z0, z1), ry, rx = loc
    for s in range(z0, z1, _SLAB):
        e = min(z1, s + _SLAB)
        ts = evaluate(sp, Points(*frame.grid([(s, e), ry, rx])), attenuation=False)
        out[s - z0 : e - z0] = ts.labels
    return out


def _block_ct(frame: Frame, sp: Specimen, sc: Scanner, block_info=None) -> np.ndarray:
    import scipy.ndimage as ndi

    loc = block_info[None]["array-location"]
    h = sc.halo
    # the halo is generated, not padded: voxels beyond a block edge (even beyond the volume)
    # are evaluated like any other, so the blurred value of a voxel never depends on chunking
    (z0, z1), (y0, y1), (x0, x1) = loc
    ez = (z0 - h, z1 + h)
    ry, rx = (y0 - h, y1 + h), (x0 - h, x1 + h)
    att = np.empty((ez[1] - ez[0], ry[1] - ry[0], rx[1] - rx[0]), dtype=np.float32)
    for s in range(ez[0], ez[1], _SLAB):
        e = min(ez[1], s + _SLAB)
        ts = evaluate(sp, Points(*frame.grid([(s, e), ry, rx])))
        att[s - ez[0] : e - ez[0]] = ts.attenuation
    blurred = ndi.gaussian_filter(att, sc.psf_sigma, radius=h, mode="nearest")
    del att
    core = blurred[h : h + z1 - z0, h : h + y1 - y0, h : h + x1 - x0]
    iy = np.arange(y0, y1).reshape(-1, 1)
    ix = np.arange(x0, x1).reshape(1, -1)
    ny, nx = frame.shape[1], frame.shape[2]
    radius = np.hypot(iy + 0.5 - ny / 2.0, ix + 0.5 - nx / 2.0)
    gain, rings = radial_terms(sc, radius, 0.5 * min(ny, nx))
    out = np.empty(core.shape, dtype=np.uint16)
    for s in range(z0, z1, _SLAB):
        e = min(z1, s + _SLAB)
        noise = gaussian_white(sc.key, np.arange(s, e).reshape(-1, 1, 1), iy[None], ix[None])
        slab = core[s - z0 : e - z0]
        metal = metal_artefacts(sp, *frame.grid([(s, e), (y0, y1), (x0, x1)]))
        if metal is not None:
            slab = slab + metal
        out[s - z0 : e - z0] = to_grey(slab, sc, gain, rings, noise)
    return out


DEFAULT_CHUNKS = (256, 256, 256)


def check_shape(shape, ndim: int = 3, name: str = "shape") -> tuple[int, ...]:
    """``shape`` as a tuple of ``ndim`` positive ints, or an InputError naming it."""
    try:
        out = tuple(int(s) for s in shape)
        ok = (
            len(out) == ndim
            and all(s > 0 for s in out)
            and all(float(a) == b for a, b in zip(shape, out, strict=True))
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        axes = ("Z", "Y", "X")[-ndim:]
        raise InputError(
            f"{name} must be {ndim} positive integers ({', '.join(axes)}), got {shape!r}"
        )
    return out


def check_seed(seed) -> int:
    """``seed`` as an int in [0, 2**63), or an InputError."""
    if (
        isinstance(seed, bool)
        or not isinstance(seed, (int, np.integer))
        or not (0 <= int(seed) < 2**63)
    ):
        raise InputError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def check_voxel_size(voxel_size) -> float:
    """``voxel_size`` (µm) as a positive finite float, or an InputError."""
    return check_float(voxel_size, "voxel_size", positive=True, unit="µm")


def _check_chunks(chunks, shape: tuple[int, ...]) -> tuple[int, ...]:
    if chunks is None:
        chunks = DEFAULT_CHUNKS
    if isinstance(chunks, (int, np.integer)):
        chunks = (int(chunks),) * len(shape)
    c = check_shape(chunks, len(shape), name="chunks")
    return tuple(min(a, b) for a, b in zip(c, shape, strict=True))


def phantom_volume(
    shape: tuple[int, int, int],
    *,
    material: Material | str,
    seed: int,
    voxel_size: float = 5.0,
    chunks: tuple[int, int, int] | int | None = DEFAULT_CHUNKS,
) -> tuple[da.Array, da.Array]:
    """A synthetic µCT volume of a bone-implant sample and its tissue map, as lazy arrays.

    A cylindrical sample in a polymer holder tube: a long bone (cortical shell with vascular
    canals and osteocyte lacunae, trabecular bone in the marrow cavity, soft tissue) with an
    M2-like threaded screw along ``z``, new woven bone on the implant and, for magnesium, a
    degradation layer and gas pockets. The scan adds a Gaussian PSF, noise, mild cupping and
    ring artefacts, and a per-scan grey-value scale and offset drawn from ``seed``, so the
    grey values of bone and background differ between seeds (normalize before use).

    Every voxel is a pure function of (its global index, ``seed``, ``shape``, ``material``,
    ``voxel_size``): any chunking gives the same bytes, and any block can be computed alone.
    Structures are evaluated analytically from global coordinates (hashed lattice noise,
    jittered primitives per lattice cell) and the scanner noise is a hash of the voxel index;
    for the PSF each block generates its own halo of ``round(4 sigma)`` voxels (generated,
    not padded) before blurring, so block edges are seamless.

    Parameters
    ----------
    shape : (Z, Y, X)
        Size in voxels. The specimen is laid out for a 7.68 mm field of view (1536 voxels at
        5 µm) and shrunk to fit smaller in-plane fields of view.
    material : :class:`~vstain_dask.pairs.Material` or ``"mg"``, ``"ti"``, ``"peek"``
        Screw material: Mg attenuates about like bone and degrades, Ti far above bone, PEEK
        below bone.
    seed : int
        Seeds the specimen geometry (shared by all materials), the scan and the noise.
    voxel_size : float
        µm per voxel (isotropic).
    chunks : (Z, Y, X) or int
        Dask chunks (clipped to ``shape``); a 256³ chunk takes about a second or two on one
        core.

    Returns
    -------
    ct : (Z, Y, X) uint16 dask array
        Grey values.
    labels : (Z, Y, X) uint8 dask array
        :class:`Tissue` labels, without blur or noise.
    """
    from dask.base import tokenize

    shape = check_shape(shape)
    mat = phantom_material(material)
    seed = check_seed(seed)
    voxel_size = check_voxel_size(voxel_size)
    ch = _check_chunks(chunks, shape)
    frame = Frame(shape, voxel_size)
    sp = specimen(seed, mat.value, frame.vox)
    sc = scanner(seed)
    token = tokenize(GENERATOR_VERSION, shape, mat.value, seed, voxel_size, ch)
    return _lazy_blocks(frame, sp, sc, ch, token)


def _lazy_blocks(
    frame: Frame, sp: Specimen, sc: Scanner, chunks: tuple[int, ...], token: str
) -> tuple[da.Array, da.Array]:
    """The CT and label arrays, one generated block per chunk, named by ``token``."""
    import dask.array as da

    dchunks = da.core.normalize_chunks(chunks, frame.shape)
    ct = da.map_blocks(
        _block_ct,
        frame=frame,
        sp=sp,
        sc=sc,
        chunks=dchunks,
        dtype=np.uint16,
        meta=np.empty((0, 0, 0), dtype=np.uint16),
        name=f"phantom-ct-{token}",
    )
    labels = da.map_blocks(
        _block_labels,
        frame=frame,
        sp=sp,
        chunks=dchunks,
        dtype=np.uint8,
        meta=np.empty((0, 0, 0), dtype=np.uint8),
        name=f"phantom-labels-{token}",
    )
    return ct, labels


def phantom_material(material: Material | str) -> Material:
    """``material`` as one of the :class:`~vstain_dask.pairs.Material` presets (any case), the
    implants a phantom can hold; pairs of real samples may name others
    (:func:`~vstain_dask.pairs.parse_material`)."""
    return as_enum(Material, material, "material", case_insensitive=True)


def phantom_attrs(shape, *, material, seed: int, voxel_size: float) -> dict:
    """Provenance of a phantom, as stored in the ``vstain`` attributes of the image."""
    from vstain_dask import __version__

    mat = phantom_material(material)
    sc = scanner(seed)
    return {
        "generator": "vstain_dask.phantom",
        "generator_version": GENERATOR_VERSION,
        "software_version": __version__,
        "material": mat.value,
        "seed": int(seed),
        "shape": [int(s) for s in shape],
        "voxel_size": float(voxel_size),
        "tissue_labels": {t.name.lower(): int(t) for t in Tissue},
        "labels": "tissue",
        "scanner": {
            "offset": sc.offset,
            "scale": sc.scale,
            "noise": sc.noise,
            "psf_sigma_voxels": sc.psf_sigma,
        },
    }


# display colours of the tissue map (RGBA): air transparent, bone in light tones, the screw
# steel blue, so that the classes stay apart over the CT
_TISSUE_RGBA = {
    Tissue.AIR: (0, 0, 0, 0),
    Tissue.HOLDER: (128, 128, 128, 255),
    Tissue.EMBEDDING: (255, 236, 160, 255),
    Tissue.SOFT_TISSUE: (232, 128, 150, 255),
    Tissue.TRABECULAR_BONE: (228, 196, 136, 255),
    Tissue.CORTICAL_BONE: (255, 252, 232, 255),
    Tissue.NEW_BONE: (120, 200, 90, 255),
    Tissue.DEGRADATION: (160, 90, 40, 255),
    Tissue.SCREW: (70, 110, 200, 255),
    Tissue.VESSEL: (220, 40, 40, 255),
    Tissue.LACUNA: (150, 60, 200, 255),
}


def tissue_table() -> LabelTable:
    """The NGFF names and colours of the tissue labels: ``{"label-value": 3, "tissue":
    "soft_tissue"}``, names as in the ``tissue_labels`` attribute."""
    from vstain_dask.ngff import LabelTable

    return LabelTable("tissue", {int(t): (t.name.lower(), _TISSUE_RGBA[t]) for t in Tissue})


def write_phantom(
    path: str | os.PathLike,
    *,
    shape: tuple[int, int, int],
    material: Material | str,
    seed: int,
    voxel_size: float = 5.0,
    chunks: tuple[int, int, int] | int | None = None,
    ngff_version: str = "0.5",
    overwrite: bool = False,
) -> Path:
    """Write a phantom as an OME-Zarr image with its tissue map as NGFF labels ``tissue``
    (each class named and coloured, :func:`tissue_table`).

    The CT goes to ``path`` (uint16, scale ``voxel_size`` µm on z, y, x, with a pyramid), the
    labels to ``path/labels/tissue``; the generation parameters are in the image's ``vstain``
    attributes. Generation streams chunk by chunk on the current dask scheduler, so memory
    stays bounded whatever the shape.

    Parameters
    ----------
    path : output OME-Zarr image
    shape, material, seed, voxel_size : as in :func:`phantom_volume`
    chunks : (Z, Y, X) or int, optional
        Chunks of generation and of the stored arrays (default 256³, clipped to ``shape``).
    ngff_version : ``"0.5"`` (zarr v3, default) or ``"0.4"`` (zarr v2)
    overwrite : replace an existing output

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from vstain_dask import ngff

    shape = check_shape(shape)
    mat = phantom_material(material)
    seed = check_seed(seed)
    voxel_size = check_voxel_size(voxel_size)
    ch = _check_chunks(chunks, shape)
    ct, labels = phantom_volume(shape, material=mat, seed=seed, voxel_size=voxel_size, chunks=ch)
    out = ngff.write_volume(
        ct,
        path,
        axes="zyx",
        scale=voxel_size,
        units="micrometer",
        chunks=ch,
        ngff_version=ngff_version,
        attrs=phantom_attrs(shape, material=mat, seed=seed, voxel_size=voxel_size),
        overwrite=overwrite,
    )
    ngff.write_labels(out, "tissue", labels, table=tissue_table(), overwrite=True)
    return Path(out)
