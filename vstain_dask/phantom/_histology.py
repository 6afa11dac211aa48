"""A toluidine-blue-like rendering of a tissue section, with the artefacts real sections have.

Colours follow a Beer–Lambert model: each tissue has an optical density (OD) per channel, a
texture scales it pixel by pixel, and a stain "session" scales it per channel, so stain
intensity, hue and illumination vary between pairs the way they vary between staining runs.
The section itself brings cracks (tissue torn apart: white), saw and grinding marks (faint
parallel bands and scratches), stain droplets (dark blue blots), uneven illumination and a
slight optical blur.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from vstain_dask.phantom._anatomy import Tissue
from vstain_dask.phantom._noise import derive_key, value_noise

__all__: list[str] = []

# colours (sRGB 0..255) at unit stain density, in a neutral session, on white = 245
_WHITE = 245.0
_COLOURS = {
    Tissue.AIR: (245, 245, 245),
    Tissue.HOLDER: (245, 245, 245),
    Tissue.EMBEDDING: (245, 245, 245),
    Tissue.SOFT_TISSUE: (206, 214, 238),  # blue-tinted pale
    Tissue.TRABECULAR_BONE: (188, 160, 212),  # light purple / violet
    Tissue.CORTICAL_BONE: (198, 172, 218),
    Tissue.NEW_BONE: (70, 112, 206),  # bright blue, woven
    Tissue.DEGRADATION: (104, 106, 134),  # darker grey-blue (mixed with brown below)
    Tissue.SCREW: (9, 9, 11),  # opaque: black
    Tissue.VESSEL: (232, 226, 238),
    Tissue.LACUNA: (82, 66, 150),  # osteocytes: dark blue-violet
}
_BROWN = (122, 98, 82)
_NUCLEI = (96, 86, 170)
_TB_DROPLET = (40, 70, 160)


def _od(rgb) -> np.ndarray:
    c = np.clip(np.asarray(rgb, dtype=np.float32), 1.0, _WHITE) / np.float32(_WHITE)
    return -np.log(c)


_OD_LUT = np.stack([_od(_COLOURS[t]) for t in Tissue]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Session:
    """One staining and imaging session: per-channel stain gains, density, illumination."""

    channel_gain: tuple[float, float, float]
    density: float
    white: tuple[float, float, float]
    vignette: float
    vignette_centre: tuple[float, float]
    blur: float
    key: int

    @classmethod
    def draw(cls, rng: np.random.Generator, key: int) -> Session:
        return cls(
            channel_gain=tuple(float(g) for g in rng.uniform(0.85, 1.15, 3)),
            density=float(rng.uniform(0.8, 1.2)),
            white=tuple(float(w) for w in 250.0 * rng.uniform(0.95, 1.0, 3)),
            vignette=float(rng.uniform(0.0, 0.08)),
            vignette_centre=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))),
            blur=float(rng.uniform(0.5, 0.9)),
            key=key,
        )


@dataclasses.dataclass(frozen=True)
class Artefacts:
    """Section artefacts, drawn per pair (positions in pixels)."""

    cracks: int
    crack_key: int
    saw_angle: float
    saw_period: float
    saw_amplitude: float
    scratches: tuple[tuple[float, float, float], ...]  # (angle, offset, strength)
    droplets: tuple[tuple[float, float, float, float], ...]  # (row, col, radius, strength)

    @classmethod
    def draw(cls, rng: np.random.Generator, key: int, size: tuple[int, int]) -> Artefacts:
        h, w = size
        n_drop = int(rng.integers(0, 4))
        n_scr = int(rng.integers(0, 4))
        return cls(
            cracks=int(rng.integers(1, 4)),
            crack_key=key,
            saw_angle=float(rng.uniform(0, math.pi)),
            saw_period=float(rng.uniform(5, 14)),
            saw_amplitude=float(rng.uniform(0.02, 0.06)),
            scratches=tuple(
                (
                    float(rng.uniform(0, math.pi)),
                    float(rng.uniform(-0.4, 0.4)) * max(h, w),
                    float(rng.uniform(0.1, 0.35)),
                )
                for _ in range(n_scr)
            ),
            droplets=tuple(
                (
                    float(rng.uniform(0.1, 0.9) * h),
                    float(rng.uniform(0.1, 0.9) * w),
                    float(rng.uniform(0.008, 0.03) * max(h, w) + 1.5),
                    float(rng.uniform(0.3, 1.0)),
                )
                for _ in range(n_drop)
            ),
        )


@dataclasses.dataclass(frozen=True)
class Window:
    """Where the pixels being rendered lie in the whole image.

    Every artefact and texture is a function of the pixel's place in the whole image (and of
    the whole image's size, which scales the cracks, the uneven staining and the
    illumination), so a window renders the same bytes as the same pixels of the whole image;
    only the optical blur and the cells lining vessels reach across pixels (see
    :func:`margin`).
    """

    row: int
    col: int
    shape: tuple[int, int]  # (H, W) of the whole image


def margin(session: Session) -> int:
    """Pixels at a window's inner edges that :func:`render` gets wrong: the blur's reach
    (scipy's radius, ``int(4 sigma + 0.5)``) plus the one pixel of the vessels' rim. Render a
    window this much larger (within the image) and crop it to get exact pixels."""
    return int(4.0 * session.blur + 0.5) + 1


def _pixel_grid(window: Window, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (h, 1) and columns (1, w) of the window's pixels in the whole image."""
    return (
        np.arange(window.row, window.row + h, dtype=np.float32).reshape(-1, 1),
        np.arange(window.col, window.col + w, dtype=np.float32).reshape(1, -1),
    )


def _anisotropic(i, j, *, along: float, across: float, angle: float, key: int) -> np.ndarray:
    """Value noise stretched along ``angle`` (fibres): ``along`` and ``across`` in pixels."""
    c, s = math.cos(angle), math.sin(angle)
    u = (i * c + j * s) / along
    v = (-i * s + j * c) / across
    return value_noise((u, v), cell=1.0, key=key)


def render(
    labels: np.ndarray,
    fields: dict[str, np.ndarray],
    *,
    session: Session,
    artefacts: Artefacts,
    vox: float,
    key: int,
    window: Window | None = None,
) -> np.ndarray:
    """Toluidine-blue-like RGB image of a section.

    Parameters
    ----------
    labels : (Y, X) uint8
        :class:`Tissue` labels of the section (histology geometry).
    fields : dict of (Y, X) float32
        Texture fields of the section from the specimen (``rf``, ``n_trab``, ``n_woven``,
        ``n_deg``, ``n_shape``).
    vox : float
        One pixel in design µm (sets the physical scale of lamellae and cells).
    window : :class:`Window` or None
        Where ``labels`` lie in the whole image; None: they are the whole image. Pixels
        within :func:`margin` of an edge of the window inside the image are not exact.

    Returns
    -------
    (Y, X, 3) uint8, R, G, B.
    """
    window = window or Window(0, 0, labels.shape)
    i, j = _pixel_grid(window, *labels.shape)
    size = window.shape
    k = [derive_key(key, n) for n in range(16)]
    density, marrow, fibrous = _stain_density(labels, fields, (i, j), k, vox, size)
    od = _tissue_od(labels, fields, density, (marrow, fibrous), (i, j), k, vox)
    od = _cracks(od, labels, artefacts, i, j, size)
    od = _saw_marks(od, artefacts, i, j, size)
    od = _droplets(od, artefacts, i, j)
    return _photograph(od, session, (i, j), k, size)


def _stain_density(
    labels: np.ndarray,
    fields: dict[str, np.ndarray],
    grid: tuple,
    k: list[int],
    px_um: float,
    size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How densely each pixel takes up the stain (1 = the tissue's colour), and where the
    marrow and the fibrous soft tissue are. ``px_um``: design µm per pixel; ``size``: the
    whole image's (H, W)."""
    T = Tissue
    i, j = grid
    h, w = size
    density = np.ones(labels.shape, dtype=np.float32)
    # uneven staining at two scales
    density *= 1.0 + 0.10 * value_noise((i, j), cell=max(40.0, 0.12 * max(h, w)), key=k[0])
    density *= 1.0 + 0.05 * value_noise((i, j), cell=6.0, key=k[1])

    cort = labels == T.CORTICAL_BONE
    trab = labels == T.TRABECULAR_BONE
    woven = labels == T.NEW_BONE
    soft = labels == T.SOFT_TISSUE

    # lamellae: concentric in the cortex, parallel to the surfaces in trabeculae
    lam = max(28.0, 3.0 * px_um)
    ring = np.cos(2 * np.pi * fields["rf"] / lam + 3.0 * fields["n_shape"])
    density[cort] *= 1.0 + 0.08 * ring[cort]
    stripes = np.cos(2 * np.pi * fields["n_trab"] / 0.12)
    density[trab] *= 1.0 + 0.08 * stripes[trab]
    # cement lines: thin darker lines across mature bone
    cem = np.abs(value_noise((i, j), cell=max(18.0, 120.0 / px_um), key=k[2])) < 0.04
    density[(cort | trab) & cem] *= 1.5
    # woven bone: short random fibres, uneven mineral
    fib = _anisotropic(i, j, along=9.0, across=1.6, angle=float(k[3] % 314) / 100.0, key=k[4])
    density[woven] *= np.clip(1.0 + 0.25 * fib[woven] + 0.15 * fields["n_woven"][woven], 0.4, None)
    # soft tissue: cellular marrow in the cavity, fibrous tissue (periosteum, muscle, the
    # capsule around PEEK) elsewhere
    marrow = soft & (fields["cavity"] > 0.5)
    fibrous = soft & ~marrow
    fib2 = _anisotropic(i, j, along=16.0, across=2.0, angle=float(k[5] % 314) / 100.0, key=k[6])
    density[fibrous] *= np.clip(1.15 + 0.45 * fib2[fibrous], 0.3, None)
    density[marrow] *= np.clip(
        1.0 + 0.15 * value_noise((i, j), cell=5.0, key=k[10])[marrow], 0.3, None
    )
    return density, marrow, fibrous


def _tissue_od(
    labels: np.ndarray,
    fields: dict[str, np.ndarray],
    density: np.ndarray,
    soft: tuple[np.ndarray, np.ndarray],
    grid: tuple,
    k: list[int],
    px_um: float,
) -> np.ndarray:
    """(Y, X, 3) optical density of the stained tissue: the tissues' colours at ``density``,
    cell nuclei in the (marrow, fibrous) ``soft`` tissue, the degradation layer's patches and
    the cells lining vessels."""
    import scipy.ndimage as ndi

    T = Tissue
    i, j = grid
    marrow, fibrous = soft
    degr = labels == T.DEGRADATION
    vessel = labels == T.VESSEL
    od = _OD_LUT[labels] * density[..., None]
    nuclei = value_noise((i, j), cell=max(1.6, 9.0 / px_um), key=k[7])
    nuc = (marrow & (nuclei > 1.2)) | (fibrous & (nuclei > 2.0))
    od[nuc] = _od(_NUCLEI) * density[nuc][:, None]
    # degradation layer: grey-blue with brown patches and dark bands
    if degr.any():
        t = np.clip(0.5 + 0.6 * fields["n_deg"][degr], 0.0, 1.0)[:, None]
        od[degr] = (1 - t) * _od(_COLOURS[T.DEGRADATION]) + t * _od(_BROWN)
        od[degr] *= np.clip(1.0 + 0.3 * value_noise((i, j), cell=4.0, key=k[8])[degr], 0.5, None)[
            :, None
        ]
    # vessels: a rim of cells around a pale lumen
    if vessel.any():
        rim = vessel & ~ndi.binary_erosion(vessel, iterations=1)
        od[rim] = _od(_NUCLEI) * 0.6
    return od


def _photograph(
    od: np.ndarray, session: Session, grid: tuple, k: list[int], size: tuple[int, int]
) -> np.ndarray:
    """The slide under the microscope: stain session, optical blur, uneven illumination and
    camera noise turn optical density into (Y, X, 3) uint8 RGB. ``size``: the whole image's
    (H, W), which the illumination spans."""
    import scipy.ndimage as ndi

    i, j = grid
    h, w = size
    gain = np.array(session.channel_gain, dtype=np.float32) * np.float32(session.density)
    rgb = np.exp(-od * gain)
    rgb *= np.array(session.white, dtype=np.float32)
    for c in range(3):
        rgb[..., c] = ndi.gaussian_filter(rgb[..., c], session.blur, mode="nearest")
    # uneven illumination
    cy, cx = session.vignette_centre
    r2 = ((i / h - cy) ** 2 + (j / w - cx) ** 2).astype(np.float32)
    rgb *= (1.0 - session.vignette * r2 * 2.0)[..., None]
    # camera noise
    for c in range(3):
        rgb[..., c] += 1.5 * value_noise((i, j), cell=0.7, key=k[9 + c])
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _cracks(od, labels, art: Artefacts, i, j, size: tuple[int, int]) -> np.ndarray:
    """Thin tears in the section: the tissue is missing, the glass shows (white)."""
    T = Tissue
    tissue = labels != T.AIR
    tissue &= labels != T.EMBEDDING
    tissue &= labels != T.HOLDER
    tissue &= labels != T.SCREW  # metal does not tear
    size = max(size)
    out = od
    for c in range(art.cracks):
        kc = derive_key(art.crack_key, c)
        line = value_noise((i, j), cell=0.35 * size, key=kc)
        extent = value_noise((i, j), cell=0.25 * size, key=derive_key(kc, 1))
        width = 0.012 + 0.01 * (c % 2)
        crack = (np.abs(line) < width) & (extent > 0.6) & tissue
        # cracks run mostly through bone and along the implant interface
        hard = np.isin(labels, (T.CORTICAL_BONE, T.TRABECULAR_BONE, T.NEW_BONE, T.DEGRADATION))
        crack &= hard | (value_noise((i, j), cell=0.05 * size, key=derive_key(kc, 2)) > 0.8)
        out[crack] = 0.02
    return out


def _saw_marks(od, art: Artefacts, i, j, size: tuple[int, int]) -> np.ndarray:
    """Parallel bands from sawing and grinding, plus a few straight scratches across the
    whole image of ``size`` (H, W)."""
    c, s = math.cos(art.saw_angle), math.sin(art.saw_angle)
    t = i * c + j * s
    wobble = value_noise((i, j), cell=40.0, key=derive_key(art.crack_key, 99))
    band = 1.0 + art.saw_amplitude * np.sin(2 * np.pi * t / art.saw_period + 2.0 * wobble)
    od *= band[..., None]
    for angle, offset, strength in art.scratches:
        c, s = math.cos(angle), math.sin(angle)
        h, w = size
        d = np.abs((i - h / 2) * c + (j - w / 2) * s - offset)
        od += (strength * np.exp(-(d**2) / 0.8))[..., None] * np.float32(0.5)
    return od


def _droplets(od, art: Artefacts, i, j) -> np.ndarray:
    """Blots of excess toluidine blue, soft-edged."""
    tb = _od(_TB_DROPLET)
    for row, col, radius, strength in art.droplets:
        d = np.sqrt((i - row) ** 2 + (j - col) ** 2) / radius
        a = np.clip(1.3 - d, 0.0, 1.0) * strength
        od += a[..., None] * tb
    return od
