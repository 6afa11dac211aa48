"""The specimen: geometry and tissue of a bone-implant sample, evaluated at arbitrary points.

Coordinates are *design micrometres*: the specimen is laid out as it would be in a 1536³ scan
at 5 µm (a 7.68 mm field of view), centred on the volume centre, with ``z`` along the screw and
the holder tube axis (index order: ``z`` grows downwards into the sample), ``y`` along the
femur's long axis and ``x`` across it. A smaller field of view shrinks the whole specimen to fit
(see :class:`Frame`), so a 64³ test volume still shows the tube, the bone and the screw.

The layout follows the rat-femur implant samples of the paper: a threaded M2-like screw (major
diameter 2 mm, pitch 0.4 mm) enters through the near cortex of a long bone and ends in the
marrow cavity next to the far cortex; a cortical shell with Haversian canals and osteocyte
lacunae; trabecular bone in the marrow cavity; new woven bone growing on the implant; for
magnesium a residual screw wrapped in a degradation layer and a few gas pockets; a soft-tissue
envelope; embedding medium inside a polymer sample-holder tube; air outside.
"""

from __future__ import annotations

import dataclasses
import enum
import math

import numpy as np

from vstain_dask.phantom._noise import (
    derive_key,
    fbm,
    hash_ints,
    is_open_grid,
    uniform,
    value_noise,
)

__all__ = ["Tissue"]

#: field of view (µm) at which design lengths are physical (1536 voxels at 5 µm)
DESIGN_FOV_UM = 7680.0


class Tissue(enum.IntEnum):
    """Label values of the phantom's tissue map (uint8).

    ``AIR`` (0) is outside the sample holder and also fills gas pockets next to a degrading
    magnesium screw. ``EMBEDDING`` is the medium (fixative or resin) around the specimen inside
    the tube. ``SOFT_TISSUE`` covers marrow, the periosteal envelope and the fibrous layer that
    wraps a PEEK screw. ``DEGRADATION`` occurs for magnesium screws only. ``VESSEL`` marks
    vascular (Haversian) canals and ``LACUNA`` osteocyte lacunae, both inside bone.
    """

    AIR = 0
    HOLDER = 1
    EMBEDDING = 2
    SOFT_TISSUE = 3
    TRABECULAR_BONE = 4
    CORTICAL_BONE = 5
    NEW_BONE = 6
    DEGRADATION = 7
    SCREW = 8
    VESSEL = 9
    LACUNA = 10


BONE_LABELS = (Tissue.TRABECULAR_BONE, Tissue.CORTICAL_BONE, Tissue.NEW_BONE)
MATERIALS = ("mg", "ti", "peek")

# relative linear attenuation (mature cortical bone = 1), before the scanner model
_ATTENUATION = {
    Tissue.AIR: 0.0,
    Tissue.HOLDER: 0.24,
    Tissue.EMBEDDING: 0.12,
    Tissue.SOFT_TISSUE: 0.17,
    Tissue.TRABECULAR_BONE: 0.93,
    Tissue.CORTICAL_BONE: 1.0,
    Tissue.NEW_BONE: 0.66,
    Tissue.DEGRADATION: 0.78,
    Tissue.SCREW: 1.0,  # replaced per material
    Tissue.VESSEL: 0.17,
    Tissue.LACUNA: 0.6,  # sub-voxel cavities: partial volume keeps them grey
}
# screw attenuation relative to bone: PEEK below bone, Mg about bone, Ti well above
SCREW_ATTENUATION = {"mg": 0.97, "ti": 2.6, "peek": 0.32}


@dataclasses.dataclass(frozen=True)
class Frame:
    """Maps voxel indices of a volume to design micrometres.

    ``scale`` = min(1, in-plane field of view / 7.68 mm): design lengths times ``scale`` are
    physical lengths. ``vox`` is one voxel in design µm.
    """

    shape: tuple[int, ...]
    voxel_size: float

    @property
    def scale(self) -> float:
        fov = min(self.shape[-2:]) * self.voxel_size
        return min(1.0, fov / DESIGN_FOV_UM)

    @property
    def vox(self) -> float:
        return self.voxel_size / self.scale

    def axis(self, axis: int, start: int, stop: int) -> np.ndarray:
        """Design coordinates (µm, float64) of voxel centres ``start..stop-1`` along ``axis``."""
        n = self.shape[axis]
        return (np.arange(start, stop, dtype=np.float64) + (0.5 - n / 2.0)) * self.vox

    def grid(self, ranges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open grid (z, y, x) of design coordinates for index ranges ``[(start, stop)] * 3``."""
        out = []
        for a, (s, e) in enumerate(ranges):
            shp = [1, 1, 1]
            shp[a] = e - s
            out.append(self.axis(a, s, e).reshape(shp))
        return out[0], out[1], out[2]


@dataclasses.dataclass(frozen=True)
class _Ellipsoids:
    """Jittered axis-aligned ellipsoids, at most one per cell of a (z, y, x) lattice.

    Each lies wholly inside its cell, so a point only needs to test the ellipsoid of its own
    cell, and a block only needs the cells it overlaps.
    """

    key: int
    cell: tuple[float, float, float]
    semi_min: tuple[float, float, float]
    semi_max: tuple[float, float, float]
    presence: float

    def __post_init__(self) -> None:
        for c, a in zip(self.cell, self.semi_max, strict=True):
            if c < 2.0 * a:
                raise ValueError(f"cell {self.cell} too small for semi-axes {self.semi_max}")

    def params(self, cz, cy, cx):
        """Centres, semi-axes and presence of the cells with integer indices (broadcast)."""
        h1 = hash_ints(self.key, cz, cy, cx)
        h2 = hash_ints(self.key ^ 0x5DEECE66D, cz, cy, cx)
        present = uniform(h1, 3) < self.presence
        size = uniform(h2, 3)
        semi, centre = [], []
        for k, c in enumerate((cz, cy, cx)):
            a = self.semi_min[k] + (self.semi_max[k] - self.semi_min[k]) * size
            free = np.maximum(self.cell[k] - 2.0 * a, 0.0)
            centre.append(np.asarray(c) * self.cell[k] + a + free * uniform(h1, k))
            semi.append(a)
        return centre, semi, present

    def hits(self, pts: Points) -> tuple[np.ndarray, ...]:
        """Indices (a tuple for ``pts.shape``) of the points inside an ellipsoid."""
        if pts.grid:
            return self._hits_grid(pts)
        cells = [np.floor(c / s).astype(np.int64) for c, s in zip(pts.flat, self.cell, strict=True)]
        centre, semi, present = self.params(*cells)
        d2 = np.zeros(pts.flat[0].shape, dtype=np.float64)
        for c, m, a in zip(pts.flat, centre, semi, strict=True):
            d2 += ((c - m) / a) ** 2
        inside = (d2 < 1.0) & present
        return np.unravel_index(np.flatnonzero(inside), pts.shape)

    def _hits_grid(self, pts: Points) -> tuple[np.ndarray, ...]:
        axes = pts.axes
        lo = [int(math.floor(a[0] / s)) for a, s in zip(axes, self.cell, strict=True)]
        hi = [int(math.floor(a[-1] / s)) for a, s in zip(axes, self.cell, strict=True)]
        idx = [np.arange(a, b + 1, dtype=np.int64) for a, b in zip(lo, hi, strict=True)]
        cz, cy, cx = np.meshgrid(*idx, indexing="ij")
        centre, semi, present = self.params(cz.ravel(), cy.ravel(), cx.ravel())
        keep = np.flatnonzero(present)
        if keep.size == 0:
            return tuple(np.empty(0, dtype=np.int64) for _ in range(3))
        centre = [c[keep] for c in centre]
        semi = [s[keep] for s in semi]
        # voxel index ranges covering each ellipsoid's box (clipped to the block)
        first, span = [], []
        for k in range(3):
            f = np.searchsorted(axes[k], centre[k] - semi[k], side="left")
            last = np.searchsorted(axes[k], centre[k] + semi[k], side="right")
            first.append(f.astype(np.int64))
            span.append((last - f).astype(np.int64))
        stencil = [int(max(1, s.max())) for s in span]
        out: list[list[np.ndarray]] = [[], [], []]
        batch = max(1, 2_000_000 // int(np.prod(stencil)))
        for b0 in range(0, keep.size, batch):
            sl = slice(b0, b0 + batch)
            ii, valid = [], None
            d2 = None
            for k in range(3):
                shp = [-1, 1, 1, 1]
                shp[k + 1] = stencil[k]
                o = np.arange(stencil[k], dtype=np.int64)
                i = first[k][sl].reshape(-1, 1) + o.reshape(1, -1)
                ok = (o.reshape(1, -1) < span[k][sl].reshape(-1, 1)) & (i >= 0) & (i < axes[k].size)
                ic = np.clip(i, 0, axes[k].size - 1)
                term = (
                    (axes[k][ic] - centre[k][sl].reshape(-1, 1)) / semi[k][sl].reshape(-1, 1)
                ) ** 2
                bshape = [term.shape[0], 1, 1, 1]
                bshape[k + 1] = stencil[k]
                term = term.reshape(bshape)
                okb = ok.reshape(bshape)
                d2 = term if d2 is None else d2 + term
                valid = okb if valid is None else valid & okb
                ii.append(ic.reshape(bshape))
            inside = valid & (d2 < 1.0)
            for k in range(3):
                out[k].append(np.broadcast_to(ii[k], inside.shape)[inside])
        return tuple(np.concatenate(o) for o in out)


class Points:
    """Where to evaluate the specimen: an open grid (a block) or arbitrary points (a plane).

    ``z``, ``y``, ``x`` broadcast to ``shape``. For an open grid ``axes`` holds the three 1D
    coordinate vectors.
    """

    def __init__(self, z, y, x):
        self.z, self.y, self.x = (np.asarray(c, dtype=np.float32) for c in (z, y, x))
        self.shape = np.broadcast_shapes(self.z.shape, self.y.shape, self.x.shape)
        self.grid = len(self.shape) == 3 and is_open_grid((self.z, self.y, self.x))
        if self.grid:
            self.axes = [self.z.reshape(-1), self.y.reshape(-1), self.x.reshape(-1)]
        else:
            self.axes = None

    @property
    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.z, self.y, self.x

    @property
    def flat(self) -> list[np.ndarray]:
        return [np.broadcast_to(c, self.shape).reshape(-1) for c in self.coords]

    def box(self, lo, hi) -> tuple[tuple, Points] | None:
        """The points with lo[k] <= coord_k <= hi[k] (None: unbounded), as (index, Points).

        ``index`` selects them in an array of ``self.shape``; for a grid it is a tuple of slices.
        """
        if self.grid:
            sl, sub = [], []
            for a, low, h in zip(self.axes, lo, hi, strict=True):
                s = 0 if low is None else int(np.searchsorted(a, low, side="left"))
                e = a.size if h is None else int(np.searchsorted(a, h, side="right"))
                if e <= s:
                    return None
                sl.append(slice(s, e))
                sub.append(a[s:e])
            return tuple(sl), Points(
                sub[0].reshape(-1, 1, 1), sub[1].reshape(1, -1, 1), sub[2].reshape(1, 1, -1)
            )
        mask = np.ones(self.shape, dtype=bool)
        for c, low, h in zip(self.coords, lo, hi, strict=True):
            if low is not None:
                mask &= c >= low
            if h is not None:
                mask &= c <= h
        index = np.nonzero(mask)
        if index[0].size == 0:
            return None
        return index, Points(*(np.broadcast_to(c, self.shape)[index] for c in self.coords))


@dataclasses.dataclass(frozen=True)
class Specimen:
    """Geometry of one sample (design µm), drawn from a seed; see :func:`specimen`."""

    material: str
    keys: tuple[int, ...]
    vox: float
    tube_y: float
    tube_x: float
    tube_in: float
    tube_out: float
    femur_z: float
    femur_x: float
    femur_bend: float
    femur_ez: float
    femur_ex: float
    ro: float
    ri: float
    envelope: float
    trab_fraction: float
    trab_gradient: float
    trab_cell: float
    screw_y: float
    screw_x: float
    screw_phase: float
    pitch: float
    r_major: float
    r_minor: float
    tip_z: float
    tip_len: float
    head_bottom: float
    head_top: float
    r_head: float
    slot: float
    degradation_depth: float
    degradation_swell: float
    new_bone_width: float
    new_bone_density: float
    fibrous_gap: float
    screw_attenuation: float
    lacunae: _Ellipsoids
    canals: _Ellipsoids
    gas: _Ellipsoids | None


def specimen(seed: int, material: str, vox: float) -> Specimen:
    """Draw the geometry of a sample.

    The bone and holder depend on ``seed`` only, so the same seed with another ``material``
    gives the same bone around a different screw. ``vox`` (one voxel in design µm) sets the
    smallest size of fine features so they stay a few voxels wide in coarse volumes.
    """
    g = np.random.default_rng([int(seed), 1])
    m = np.random.default_rng([int(seed), 3, MATERIALS.index(material)])
    keys = tuple(derive_key(seed, 11, k) for k in range(16))
    # the gas pockets draw from ``m`` before the implant's response does
    gas = _gas_pockets(keys, vox, m) if material == "mg" else None
    return Specimen(
        material=material,
        keys=keys,
        vox=float(vox),
        **_bone_layout(g, vox),
        **_implant_response(m, material),
        lacunae=_lacunae(keys, vox),
        canals=_canals(keys, vox),
        gas=gas,
    )


def _bone_layout(g: np.random.Generator, vox: float) -> dict[str, float]:
    """Holder, femur and screw placement, drawn from ``g`` in a fixed order (the seed's own)."""
    ro = 1750.0 + float(g.uniform(-120, 120))
    ri = ro - (420.0 + float(g.uniform(-80, 80)))
    femur_z = 350.0 + float(g.uniform(-150, 150))
    femur_x = float(g.uniform(-150, 150))
    tube_in = 3560.0 + float(g.uniform(-40, 40))
    r_major, pitch = 1000.0, 400.0
    r_minor = r_major - 0.6134 * pitch * 0.9
    screw_x = femur_x + float(g.uniform(-100, 100))
    tip_z = femur_z + ri - 120.0 + float(g.uniform(-150, 200))
    head_bottom = femur_z - ro - 450.0 + float(g.uniform(-150, 150))
    return dict(
        tube_y=float(g.uniform(-30, 30)),
        tube_x=float(g.uniform(-30, 30)),
        tube_in=tube_in,
        tube_out=tube_in + 110.0,
        femur_z=femur_z,
        femur_x=femur_x,
        femur_bend=float(g.uniform(-150, 150)),
        femur_ez=float(g.uniform(0.92, 1.08)),
        femur_ex=float(g.uniform(0.92, 1.08)),
        ro=ro,
        ri=ri,
        envelope=220.0 + float(g.uniform(-60, 60)),
        trab_fraction=float(g.uniform(0.18, 0.3)),
        trab_gradient=float(g.choice([-1.0, 1.0])) * float(g.uniform(0.3, 0.8)),
        trab_cell=max(260.0, 7.0 * vox),
        screw_y=float(g.uniform(-80, 80)),
        screw_x=screw_x,
        screw_phase=float(g.uniform(0, 1)),
        pitch=pitch,
        r_major=r_major,
        r_minor=r_minor,
        tip_z=tip_z,
        tip_len=0.9 * r_major,
        head_bottom=head_bottom,
        head_top=head_bottom - 900.0,
        r_head=1750.0,
        slot=180.0,
    )


def _implant_response(m: np.random.Generator, material: str) -> dict[str, float]:
    """Degradation, new bone and fibrous capsule of ``material``, drawn from ``m`` in order."""
    return dict(
        degradation_depth=float(m.uniform(90, 220)) if material == "mg" else 0.0,
        degradation_swell=float(m.uniform(0.3, 0.55)),
        new_bone_width={"mg": 230.0, "ti": 260.0, "peek": 150.0}[material]
        * float(m.uniform(0.75, 1.25)),
        new_bone_density=float(m.uniform(0.55, 0.8)),
        fibrous_gap=float(m.uniform(25, 50)) if material == "peek" else 0.0,
        screw_attenuation=SCREW_ATTENUATION[material],
    )


# fine features: physical size, but never under a voxel or two


def _lacunae(keys: tuple[int, ...], vox: float) -> _Ellipsoids:
    # lacunae are about a voxel across at 5 µm: at least 0.75 voxel semi-axes so that they
    # show up as the few-voxel dark specks of real scans
    lac_semi_min = (max(3.0, 0.75 * vox), max(6.0, 1.0 * vox), max(3.0, 0.75 * vox))
    lac_semi_max = (max(4.5, 0.95 * vox), max(9.0, 1.5 * vox), max(4.5, 0.95 * vox))
    lac_cell = tuple(
        max(c, 2.0 * s + 2.0 * vox) for c, s in zip((32.0, 45.0, 32.0), lac_semi_max, strict=True)
    )
    return _Ellipsoids(keys[10], lac_cell, lac_semi_min, lac_semi_max, 0.75)


def _canals(keys: tuple[int, ...], vox: float) -> _Ellipsoids:
    canal_semi_min = (max(10.0, 0.8 * vox), 250.0, max(10.0, 0.8 * vox))
    canal_semi_max = (max(24.0, 1.1 * vox), 450.0, max(24.0, 1.1 * vox))
    canal_cell = (
        max(170.0, 2.0 * canal_semi_max[0] + 3.0 * vox),
        1000.0,
        max(170.0, 2.0 * canal_semi_max[2] + 3.0 * vox),
    )
    return _Ellipsoids(keys[11], canal_cell, canal_semi_min, canal_semi_max, 0.7)


def _gas_pockets(keys: tuple[int, ...], vox: float, m: np.random.Generator) -> _Ellipsoids:
    """Gas next to a degrading Mg screw."""
    gas_max = max(130.0, 2.0 * vox)
    return _Ellipsoids(
        key=keys[12],
        cell=(max(650.0, 2.0 * gas_max + 2.0 * vox),) * 3,
        semi_min=(max(40.0, 1.5 * vox),) * 3,
        semi_max=(gas_max,) * 3,
        presence=float(m.uniform(0.08, 0.25)),
    )


@dataclasses.dataclass
class TissueSample:
    """Labels, attenuation and (optionally) texture fields at a set of points."""

    labels: np.ndarray
    attenuation: np.ndarray | None
    fields: dict[str, np.ndarray]


def _thread_radius(sp: Specimen, z, theta) -> np.ndarray:
    """Radius of the threaded surface (ISO-like 60° profile) at height z and angle theta."""
    phase = theta * np.float32(1.0 / (2.0 * np.pi)) + (
        z * np.float32(1.0 / sp.pitch) + np.float32(sp.screw_phase)
    )
    phase -= np.floor(phase)
    phase -= np.float32(0.5)
    np.abs(phase, out=phase)  # distance along z from the crest centre, in pitches
    crest, root = 1.0 / 16.0, 3.0 / 8.0
    depth = sp.r_major - sp.r_minor
    phase -= np.float32(crest)
    phase *= np.float32(depth / (root - crest))
    np.clip(phase, 0.0, depth, out=phase)
    r = np.float32(sp.r_major) - phase
    # conical tip (z only)
    cone = (np.float32(sp.r_major / sp.tip_len) * (np.float32(sp.tip_z) - z)).astype(np.float32)
    np.minimum(r, cone, out=r)
    return r


class _Textures:
    """Texture fields evaluated on boxes of the points, kept for attenuation and histology."""

    def __init__(self) -> None:
        self.items: list[tuple[str, np.ndarray, tuple]] = []

    def add(self, name: str, field: np.ndarray, index: tuple) -> None:
        self.items.append((name, field, index))

    def full(self, name: str, shape) -> np.ndarray:
        out = np.zeros(shape, dtype=np.float32)
        for n, f, idx in self.items:
            if n == name:
                out[idx] = f
        return out


def evaluate(
    sp: Specimen, pts: Points, *, attenuation: bool = True, fields: bool = False
) -> TissueSample:
    """Tissue labels (uint8, :class:`Tissue`) and relative attenuation (float32) at ``pts``.

    Every value depends only on the point's coordinates and the specimen, so blocks and planes
    can be generated independently. Structures are evaluated only inside their bounding boxes.
    With ``fields`` the texture fields the histology renderer needs come back too.
    """
    T = Tissue
    shape = pts.shape
    z, y, x = pts.coords
    tex = _Textures()
    lab, inside2 = _holder(sp, y, x, shape)

    # femur: cortical shell around an axis along y, slightly bent and elliptical
    reach = (sp.ro + 2.0 * sp.envelope + 150.0) * 1.1
    bend = abs(sp.femur_bend) * 1.7
    sub = pts.box(
        (sp.femur_z - reach - bend, None, sp.femur_x - reach),
        (sp.femur_z + reach + bend, None, sp.femur_x + reach),
    )
    if sub is not None:
        idx, p = sub
        _femur(sp, p, lab, idx, tex, inside2)

    # Haversian canals (cortex) before the implant, lacunae (all bone) after it
    _stamp(lab, sp.canals.hits(pts), (T.CORTICAL_BONE,), T.VESSEL)
    _implant(sp, pts, lab, tex)
    _stamp(lab, sp.lacunae.hits(pts), BONE_LABELS, T.LACUNA)

    att = _attenuation(sp, lab, tex) if attenuation else None
    aux: dict[str, np.ndarray] = {}
    if fields:
        for name in ("rf", "cavity", "n_shape", "n_trab", "n_woven", "n_deg", "sdf"):
            aux[name] = tex.full(name, shape)
    return TissueSample(labels=lab, attenuation=att, fields=aux)


def _holder(sp: Specimen, y, x, shape) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the holder tube, the embedding inside it and the air outside (a function of
    y, x only), broadcast to ``shape``; and where the tube's inside is (unbroadcast)."""
    T = Tissue
    r_tube = np.hypot(y - np.float32(sp.tube_y), x - np.float32(sp.tube_x))
    inside2 = r_tube < sp.tube_in
    lab2 = np.where(
        inside2,
        np.uint8(T.EMBEDDING),
        np.where(r_tube < sp.tube_out, np.uint8(T.HOLDER), np.uint8(T.AIR)),
    )
    return np.array(np.broadcast_to(lab2, shape), dtype=np.uint8), inside2


def _attenuation(sp: Specimen, lab: np.ndarray, tex: _Textures) -> np.ndarray:
    """Relative attenuation of the labels, with the textures of bone and degradation."""
    T = Tissue
    lut = np.array([_ATTENUATION[t] for t in T], dtype=np.float32)
    lut[T.SCREW] = sp.screw_attenuation
    att = lut[lab]
    # slow mineral-density variation in mature bone, woven texture in new bone, porous
    # degradation products
    for name, amp, labels in (
        ("n_shape", (0.035, 0.012), (T.CORTICAL_BONE, T.SOFT_TISSUE)),
        ("n_woven", (0.07,), (T.NEW_BONE,)),
        ("n_deg", (0.1,), (T.DEGRADATION,)),
    ):
        for n, f, idx in tex.items:
            if n != name:
                continue
            sub_att = att[idx]
            sub_lab = lab[idx]
            for a, label in zip(amp, labels, strict=True):
                m = sub_lab == label
                if label == T.CORTICAL_BONE:
                    m |= sub_lab == T.TRABECULAR_BONE
                sub_att += np.where(m, f * np.float32(a), np.float32(0.0))
            att[idx] = sub_att
    return att


def _stamp(lab: np.ndarray, hits: tuple, where: tuple, label: int) -> None:
    """Set ``label`` at the hit points whose current label is one of ``where``."""
    cur = lab[hits]
    sel = np.isin(cur, np.array(where, dtype=np.uint8))
    lab[tuple(i[sel] for i in hits)] = label


def _femur(sp: Specimen, p: Points, lab: np.ndarray, idx: tuple, tex: _Textures, inside2) -> None:
    T = Tissue
    z, y, x = p.coords
    zc = (
        z - (np.float32(sp.femur_z) + np.float32(sp.femur_bend) * (y * np.float32(1 / 3000.0)) ** 2)
    ) * np.float32(1.0 / sp.femur_ez)
    xc = (x - np.float32(sp.femur_x)) * np.float32(1.0 / sp.femur_ex)
    rf = zc * zc + xc * xc
    np.sqrt(rf, out=rf)
    n = value_noise(p.coords, cell=900.0, key=sp.keys[0])
    ls = lab[idx]
    ins = np.broadcast_to(inside2, lab.shape)[idx]
    # signed distance to the periosteal surface (rough), and the endosteal radius
    d_out = rf - np.float32(sp.ro) - np.float32(55.0) * n
    soft = ins & (d_out - np.float32(0.5 * sp.envelope) * n < sp.envelope)
    cort = ins & (d_out < 0) & (rf + np.float32(110.0) * np.abs(n) >= sp.ri + 40.0)
    marrow = ins & (d_out < 0) & ~cort
    ls[soft] = T.SOFT_TISSUE
    ls[cort] = T.CORTICAL_BONE
    tex.add("rf", rf, idx)
    tex.add("cavity", marrow.astype(np.float32), idx)
    tex.add("n_shape", n, idx)

    # trabecular bone in the marrow cavity: a perforated-plate network, denser towards the
    # endosteum and towards one end of the bone
    rmax = sp.ri + 200.0
    tb = p.box(
        (sp.femur_z - rmax * 1.1 - abs(sp.femur_bend) * 1.7, None, sp.femur_x - rmax * 1.1),
        (sp.femur_z + rmax * 1.1 + abs(sp.femur_bend) * 1.7, None, sp.femur_x + rmax * 1.1),
    )
    if tb is not None:
        tidx, q = tb
        na = fbm(q.coords, cell=sp.trab_cell, key=sp.keys[1], octaves=2, gain=0.45)
        nb = value_noise(q.coords, cell=sp.trab_cell * 1.4, key=sp.keys[2])
        rfs = rf[tidx]
        # |n| < t of a unit-variance field covers about 0.8 t of space and the perforation
        # (nb > -0.55) keeps 70 % of it, so t = 1.8 * frac gives a bone fraction near frac
        along = np.float32(1.8 * sp.trab_fraction) * (
            1.0 + np.float32(sp.trab_gradient) * np.tanh(q.y * np.float32(1 / 2000.0))
        )  # varies along the bone only (y)
        rel = np.minimum(rfs * np.float32(1.0 / sp.ri), np.float32(1.0))
        t = rel * rel
        t *= rel
        t *= np.float32(0.6)
        t += np.float32(0.6)
        t *= along
        np.clip(t, np.float32(0.018), np.float32(0.9), out=t)
        trab = np.abs(na) < t
        trab &= nb > -0.55
        sub_ls = ls[tidx]
        sub_ls[trab & marrow[tidx]] = T.TRABECULAR_BONE
        ls[tidx] = sub_ls
        full_idx = _compose(idx, tidx, lab.shape)
        tex.add("n_trab", na, full_idx)
    lab[idx] = ls


def _compose(outer: tuple, inner: tuple, shape) -> tuple:
    """Index of ``array[outer][inner]`` as one index into ``array``."""
    if isinstance(outer[0], slice):
        if isinstance(inner[0], slice):
            return tuple(
                slice(o.start + i.start, o.start + i.stop)
                for o, i in zip(outer, inner, strict=True)
            )
        return tuple(o.start + i for o, i in zip(outer, inner, strict=True))
    return tuple(o[inner] for o in outer)


def _implant(sp: Specimen, pts: Points, lab: np.ndarray, tex: _Textures) -> None:
    margin = (
        sp.degradation_depth * sp.degradation_swell
        + sp.new_bone_width * 1.4
        + sp.fibrous_gap
        + 60.0
    )
    r_shaft = sp.r_major + margin
    r_head = sp.r_head + sp.degradation_depth * sp.degradation_swell + 60.0
    z_split = sp.head_bottom + 100.0
    boxes = [
        (
            (sp.head_top - 100.0, sp.screw_y - r_head, sp.screw_x - r_head),
            (z_split, sp.screw_y + r_head, sp.screw_x + r_head),
            True,
        ),
        (
            (z_split, sp.screw_y - r_shaft, sp.screw_x - r_shaft),
            (sp.tip_z + margin, sp.screw_y + r_shaft, sp.screw_x + r_shaft),
            False,
        ),
    ]
    for lo, hi, with_head in boxes:
        sub = pts.box(lo, hi)
        if sub is not None:
            _implant_box(sp, sub[1], lab, sub[0], tex, with_head)


def _implant_box(
    sp: Specimen, p: Points, lab: np.ndarray, idx: tuple, tex: _Textures, with_head: bool
) -> None:
    T = Tissue
    z, y, x = p.coords
    sdf = _implant_sdf(sp, z, y, x, with_head)
    ls = lab[idx]
    prev = ls.copy()
    # three fields serve everything here: broad (extent of new bone, degradation depth),
    # fine (woven texture, degradation front) and finer (detail)
    n_lo = value_noise(p.coords, cell=450.0, key=sp.keys[7])
    n_hi = value_noise(p.coords, cell=max(80.0, 3.0 * sp.vox), key=sp.keys[6])
    n_fine = value_noise(p.coords, cell=max(35.0, 1.5 * sp.vox), key=sp.keys[5])
    n_w = n_hi + np.float32(0.5) * n_fine
    n_w *= np.float32(1.0 / np.sqrt(1.25))

    if sp.material == "mg":
        dist, n_deg = _degrade(sp, sdf, ls, prev, (n_lo, n_hi, n_fine))
        tex.add("n_deg", n_deg, idx)
    else:
        ls[sdf < 0] = T.SCREW
        dist = sdf
    tex.add("sdf", sdf, idx)

    zz = np.broadcast_to(z, sdf.shape)
    near = (dist > 0) & (zz > sp.head_bottom)
    if sp.fibrous_gap > 0:
        gap = near & (dist < sp.fibrous_gap) & (prev != T.EMBEDDING)
        ls[gap] = T.SOFT_TISSUE
        dist = dist - np.float32(sp.fibrous_gap)
        near &= dist > 0
    # new woven bone: dense at the implant, thinning out over `width`
    width = np.float32(sp.new_bone_width) * np.maximum(1.0 + 0.35 * n_lo, np.float32(0.3))
    u = dist / width
    bone_env = (prev != T.EMBEDDING) & (prev != T.AIR) & (prev != T.HOLDER)
    woven = near & (u < 1.0) & bone_env & (n_w > u * 1.8 - 1.0 - (sp.new_bone_density - 0.5) * 2.0)
    ls[woven & ((ls == T.SOFT_TISSUE) | (ls == T.TRABECULAR_BONE))] = T.NEW_BONE
    remodel = near & (u < 0.18) & (ls == T.CORTICAL_BONE) & (n_w > -0.3)
    ls[remodel] = T.NEW_BONE
    tex.add("n_woven", n_w, idx)

    if sp.gas is not None:
        gz = sp.gas.hits(p)
        sel = (ls[gz] == T.SOFT_TISSUE) & (dist[gz] > 0) & (dist[gz] < 900.0)
        ls[tuple(i[sel] for i in gz)] = T.AIR
    lab[idx] = ls


def _implant_sdf(sp: Specimen, z, y, x, with_head: bool) -> np.ndarray:
    """Signed (radial) distance to the implant surface, negative inside: the threaded shaft
    and, with ``with_head``, the slotted head."""
    dy, dx = y - np.float32(sp.screw_y), x - np.float32(sp.screw_x)
    rs = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    sdf = rs - _thread_radius(sp, z, theta)
    np.maximum(sdf, np.float32(sp.head_bottom - 100.0) - z, out=sdf)
    np.maximum(sdf, z - np.float32(sp.tip_z), out=sdf)
    if with_head:
        head = np.maximum(
            rs - np.float32(sp.r_head),
            np.maximum(np.float32(sp.head_top) - z, z - np.float32(sp.head_bottom)),
        )
        slot = np.maximum(
            z - np.float32(sp.head_top + 450.0),
            np.minimum(np.abs(dy), np.abs(dx)) - np.float32(sp.slot / 2),
        )
        head = np.maximum(head, -slot)
        np.minimum(sdf, head, out=sdf)
    return sdf


def _degrade(
    sp: Specimen, sdf: np.ndarray, ls: np.ndarray, prev: np.ndarray, noise: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """Label a Mg screw's residual metal and its degradation layer in ``ls``.

    ``noise`` is the broad, fine and finer field (``n_lo``, ``n_hi``, ``n_fine``). Returns the
    distance outside the swollen layer and the degradation texture.
    """
    T = Tissue
    n_lo, n_hi, n_fine = noise
    n_deg = n_lo * np.float32(0.3) + n_hi * np.float32(0.12)
    n_deg += np.float32(0.65)
    depth = np.float32(sp.degradation_depth) * np.maximum(n_deg, np.float32(0.05))
    n_deg = n_fine * np.float32(0.7) + n_hi * np.float32(0.7)
    swell = depth * np.float32(sp.degradation_swell)
    soft_like = (prev == T.SOFT_TISSUE) | (prev == T.TRABECULAR_BONE)
    # products fill the lost metal and swell into soft tissue (barely into the cortex)
    degr = (sdf < 0) | ((sdf < swell) & soft_like) | ((sdf < 20.0) & (prev == T.CORTICAL_BONE))
    ls[degr] = T.DEGRADATION
    ls[sdf < -depth] = T.SCREW
    return sdf - swell, n_deg
