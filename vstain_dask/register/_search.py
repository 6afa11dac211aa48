"""The 2D–3D search with SimpleITK: which plane of the CT shows the section.

The fixed image is the section (one slice, placed in the CT by a :class:`Placement`), the
moving image the CT; an ``Euler3DTransform`` about the placement's centre maps the section's
points into the CT. Its six parameters are the plane's depth (translation along the cutting
axis), two tilts, the in-plane rotation and two in-plane shifts. The search:

1. at the coarsest CT level, SimpleITK's exhaustive optimizer samples the in-plane rotation
   over the full turn, the depth over the CT's extent and the in-plane shifts around the
   centred start, for each cutting axis and mirroring tried, recording Mattes mutual
   information at every grid point (the tilts are left to the descent: at this level they
   change the metric least, while the rotation and the shifts need fine steps);
2. the best distinct grid points start a gradient descent over the six rigid parameters and
   the section's in-plane scale and shear (an ``AffineTransform`` whose linear part is split
   into the plane's rotation and the section's distortion): without the distortion, a tilt
   that foreshortens the plane would stand in for the section's compression;
3. the best of those are refined at finer CT levels (a crop of the CT around the plane), each
   sampling the tilts in steps that move the section's farthest tissue one voxel of the level.

No optimizer here is our own: exhaustive sampling and gradient descent are SimpleITK's.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from vstain_dask.register._geometry import (
    Placement,
    affine4,
    apply,
    flip_matrix,
    from_sitk,
    matrix_from_sitk,
    to_sitk,
)
from vstain_dask.register._images import CROP_VOXELS, CTPyramid, SectionLevel

_AXIS_INDEX = {"z": 0, "y": 1, "x": 2}
#: sections with more tissue pixels than this are scored on a regular sample of about this many
MAX_SAMPLES = 1 << 16
#: past this many voxels the CT's gradient is taken at the sampled points only, not as a whole
#: gradient image (three float64 per voxel: 0.8 GB for a 32M-voxel crop)
GRADIENT_IMAGE_VOXELS = 1 << 22


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """How widely and finely the coarse search samples (recorded with the result)."""

    angle_step: float = 10.0  # degrees, in-plane rotation grid over the full turn
    depth_step: float = 3.0  # coarse voxels between depths sampled
    shift_fraction: float = 0.04  # in-plane shift step, as a fraction of the section's extent
    shift_steps: int = 3  # shifts sampled each side of the centred start
    coarse_tilt: float = 8.0  # degrees between the tilts the coarse grid samples
    coarse_tilt_steps: int = 0  # tilts the coarse grid samples each side of zero
    max_tilt: float = 12.0  # degrees, the tilts the tilt grid covers each side
    tilt_step: float = 3.0  # degrees between tilts sampled
    starts: int = 10  # grid points that start a local descent
    hypotheses: int = 6  # distinct poses carried from the coarse level to the finest
    ranked: int = 3000  # best grid points checked for overlap
    min_overlap: float = 0.7  # share of the section's tissue a pose must keep inside the CT
    bins: int = 32  # Mattes histogram bins
    iterations: int = 120  # gradient-descent iterations per level
    max_distortion: float = 0.08  # the most in-plane scale or shear the section may need
    samples: int = MAX_SAMPLES  # the most tissue pixels the metric is taken over


@dataclasses.dataclass
class Candidate:
    """One pose: axis, mirroring, placement and the Euler parameters found from it."""

    axis: str
    flip: bool
    placement: Placement
    params: tuple[float, ...]
    metric: float = math.inf
    history: list[float] = dataclasses.field(default_factory=list)
    #: the section's in-plane distortion D (2×2, row-major on (row, col) µm, after the flip):
    #: the plane shows section point q at ``q_mid + D (q - q_mid)``
    distortion: tuple[float, ...] = (1.0, 0.0, 0.0, 1.0)
    #: the share of the section's tissue the pose keeps inside the CT's box
    inside: float = 1.0

    @property
    def weighted(self) -> float:
        """The metric with the tissue outside the CT counted as unmatched: poses are compared
        by it. Mutual information is taken over the tissue inside only, so a pose that leaves
        a quarter of the section off the CT (near a face of the volume) would otherwise score
        as if that quarter had matched."""
        return self.metric * self.inside

    def transform(self):
        import SimpleITK as sitk

        t = sitk.Euler3DTransform()
        t.SetCenter(to_sitk(self.placement.centre))
        t.SetParameters(self.params)
        return t

    def rigid_matrix(self) -> np.ndarray:
        """4×4 (z, y, x): a point of the placed section → the CT."""
        t = self.transform()
        lin = matrix_from_sitk(np.array(t.GetMatrix()).reshape(3, 3))
        centre = from_sitk(t.GetCenter())
        trans = from_sitk(t.GetTranslation())
        m = np.eye(4)
        m[:3, :3] = lin
        m[:3, 3] = centre + trans - lin @ centre
        return m

    def section_to_plane(self) -> np.ndarray:
        """4×4: section µm (row, col, w) (after the flip) → CT (z, y, x)."""
        return self.rigid_matrix() @ self.placement.matrix()

    def section_to_ct(self, col_mid: float) -> np.ndarray:
        """4×4: section µm (row, col, w) as imaged (before the flip about ``col_mid``) → CT
        (z, y, x), through the flip and the section's distortion."""
        d = np.reshape(self.distortion, (2, 2))
        q = np.asarray(self.placement.q_mid, dtype=np.float64)
        return self.section_to_plane() @ affine4(d, q - d @ q) @ flip_matrix(self.flip, col_mid)


def fixed_image(section: SectionLevel, placement: Placement, flip: bool, distortion=None):
    """The section as a one-slice 3D SimpleITK image placed in the CT, and its tissue mask;
    with ``distortion`` (a candidate's D), the section resampled as the plane shows it."""
    import SimpleITK as sitk

    grey = section.contrast()
    if flip:
        grey = grey[:, ::-1]
    if distortion is not None and not np.allclose(distortion, (1.0, 0.0, 0.0, 1.0)):
        grey = _undistort(grey, section, placement.q_mid, np.reshape(distortion, (2, 2)))
    img = sitk.GetImageFromArray(np.ascontiguousarray(grey)[None])
    sp = section.spacing
    img.SetSpacing((float(sp[1]), float(sp[0]), float(min(sp))))
    u, v = placement.basis[:, 0], placement.basis[:, 1]
    n = placement.normal
    # image index (col, row, 0) → physical; direction columns: col, row, normal (x, y, z)
    d = np.column_stack([to_sitk(v), to_sitk(u), to_sitk(n)])
    img.SetDirection(tuple(float(a) for a in d.ravel()))
    origin = placement.centre + u * (section.origin[0] - placement.q_mid[0])
    origin = origin + v * (section.origin[1] - placement.q_mid[1])
    img.SetOrigin(to_sitk(origin))
    mask = sitk.GetImageFromArray(tissue_mask(grey)[None].astype(np.uint8))
    mask.CopyInformation(img)
    return img, mask


def _undistort(grey: np.ndarray, section: SectionLevel, q_mid: np.ndarray, d: np.ndarray):
    """``grey`` resampled on its own grid so that plane point p shows section point
    ``q_mid + D⁻¹ (p - q_mid)`` (SimpleITK's linear resampling; glass, 0, outside)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(grey, dtype=np.float32))
    img.SetSpacing((float(section.spacing[1]), float(section.spacing[0])))
    img.SetOrigin((float(section.origin[1]), float(section.origin[0])))
    t = sitk.AffineTransform(2)
    t.SetCenter((float(q_mid[1]), float(q_mid[0])))
    t.SetMatrix(tuple(float(v) for v in np.linalg.inv(d)[::-1, ::-1].ravel()))
    out = sitk.Resample(img, img, t, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def tissue_mask(grey: np.ndarray) -> np.ndarray:
    """Stained tissue (not glass): contrast above a threshold between glass and tissue."""
    from skimage.filters import threshold_otsu

    if float(grey.max()) - float(grey.min()) < 1e-3:
        return np.zeros(grey.shape, dtype=bool)
    return grey > min(float(threshold_otsu(grey)), 20.0)


@dataclasses.dataclass(frozen=True)
class MovingCT:
    """The CT as a slab on a pose's own (oblique) grid, and where the CT exists in it."""

    image: object  # SimpleITK image
    mask: object  # SimpleITK uint8 image, same grid


def _moving(ct):
    """The moving image and its mask (None: all of it) of a CT crop or :class:`MovingCT`."""
    return (ct.image, ct.mask) if isinstance(ct, MovingCT) else (ct, None)


def mi_method(settings: SearchSettings, fixed_mask, moving=None):
    """A SimpleITK registration scoring Mattes MI over all of the fixed image's mask (random
    sampling made the coarse grid's ranking noisy enough to pick wrong poses), or, past
    ``settings.samples`` tissue pixels, over a regular sample of that many (seeded: the same
    points every time), linear interpolation. ``moving`` (a CT crop or :class:`MovingCT`):
    its mask is used, and past :data:`GRADIENT_IMAGE_VOXELS` its gradient is taken at the
    sampled points only."""
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    reg.SetMetricFixedMask(fixed_mask)
    if moving is not None:
        image, moving_mask = _moving(moving)
        if moving_mask is not None:
            reg.SetMetricMovingMask(moving_mask)
        if int(np.prod(image.GetSize())) > GRADIENT_IMAGE_VOXELS:
            reg.SetMetricUseMovingImageGradientFilter(False)
    tissue = int(np.count_nonzero(sitk.GetArrayViewFromImage(fixed_mask)))
    if tissue > settings.samples:
        reg.SetMetricSamplingStrategy(reg.REGULAR)
        reg.SetMetricSamplingPercentage(settings.samples / tissue, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    return reg


def _param_index(axis: str) -> tuple[int, int, tuple[int, int]]:
    """Euler parameter indices of the in-plane angle, the depth and the in-plane shifts."""
    a = 2 - _AXIS_INDEX[axis]  # SimpleITK's x, y, z order
    shifts = tuple(3 + k for k in range(3) if k != a)
    return a, 3 + a, shifts


def _exhaustive(ct, section: SectionLevel, cand: Candidate, settings, steps, scales):
    """Mattes MI at every point of SimpleITK's exhaustive grid around ``cand``:
    [(metric, params)], ``steps`` points each side along each parameter, ``scales`` apart."""
    import SimpleITK as sitk

    fixed, mask = fixed_image(section, cand.placement, cand.flip, cand.distortion)
    image = _moving(ct)[0]
    reg = mi_method(settings, mask, ct)
    reg.SetOptimizerAsExhaustive([int(n) for n in steps], stepLength=1.0)
    reg.SetOptimizerScales([float(s) for s in scales])
    reg.SetInitialTransform(cand.transform(), inPlace=True)
    samples: list[tuple[float, tuple[float, ...]]] = []
    reg.AddCommand(
        sitk.sitkIterationEvent,
        lambda: samples.append((reg.GetMetricValue(), tuple(reg.GetOptimizerPosition()))),
    )
    reg.Execute(fixed, image)
    return [(m, p) for m, p in samples if math.isfinite(m)]


#: sections up to this many coarse pixels across keep the coarse grid's steps (those the
#: small phantoms' sections, 53-93 pixels, were tuned on)
WIDE_SECTION_PX = 96
#: a wider section's angle and shift steps are scaled by its width over this, so that a step
#: moves its edge no farther than it moves a section this wide
REFERENCE_SECTION_PX = 64
#: a wider section's coarse grid is scored on a regular sample of this many tissue pixels
GRID_SAMPLES = 2048


def grid_for(section: SectionLevel, settings: SearchSettings) -> tuple[SearchSettings, float]:
    """The coarse grid's settings for ``section`` and the factor its steps were divided by.

    The true pose's basin on the coarse level narrows as the section widens in coarse pixels:
    a 144-pixel section of a 1536³ CT at 80 µm was lost with the small phantoms' steps (the
    edge moved 12 pixels per 10° step) and found with steps 2.2 times finer."""
    width = min(section.shape)
    if width <= WIDE_SECTION_PX:
        return settings, 1.0
    k = width / REFERENCE_SECTION_PX
    finer = dataclasses.replace(
        settings,
        angle_step=settings.angle_step / k,
        shift_fraction=settings.shift_fraction / k,
        shift_steps=math.ceil(settings.shift_steps * k),
        samples=min(settings.samples, GRID_SAMPLES),
    )
    return finer, round(k, 3)


def grid_search(
    ct, section: SectionLevel, cand: Candidate, settings: SearchSettings, depth_range: float
) -> list[tuple[float, tuple[float, ...]]]:
    """The coarse grid: the in-plane angle over the full turn, the depth ``depth_range`` µm each
    side of the start, the in-plane shifts around it, the two tilts at ±``coarse_tilt``."""
    angle, depth, shifts = _param_index(cand.axis)
    steps = [settings.coarse_tilt_steps] * 3 + [0] * 3
    scales = [math.radians(settings.coarse_tilt)] * 3 + [1.0] * 3
    steps[angle] = int(round(180.0 / settings.angle_step))
    scales[angle] = math.radians(settings.angle_step)
    dstep = settings.depth_step * float(np.mean(ct.GetSpacing()))
    steps[depth] = max(0, int(depth_range // dstep))
    scales[depth] = dstep
    extent = float(min(section.shape) * min(section.spacing))
    for s in shifts:
        steps[s] = settings.shift_steps
        scales[s] = settings.shift_fraction * extent
    return _exhaustive(ct, section, cand, settings, steps, scales)


def tilt_search(
    ct, section: SectionLevel, cand: Candidate, settings: SearchSettings, span: float, starts: int
) -> list[Candidate]:
    """The ``starts`` best points of :func:`tilt_samples`."""
    samples = sorted(tilt_samples(ct, section, cand, settings, span), key=lambda s: s[0])
    return [dataclasses.replace(cand, params=p, metric=m) for m, p in samples[:starts]]


def tilt_samples(
    ct, section: SectionLevel, cand: Candidate, settings: SearchSettings, span, depths: int = 2
):
    """Mattes MI on a grid around ``cand`` over the two tilts (±``span`` degrees, steps of
    ``settings.tilt_step``) and the depths ``depths`` CT voxels each side: [(metric, params)]."""
    angle, depth, _ = _param_index(cand.axis)
    steps = [0] * 6
    scales = [1.0] * 6
    n = int(round(span / settings.tilt_step))
    for k in range(3):
        if k != angle:
            steps[k] = n
            scales[k] = math.radians(settings.tilt_step)
    steps[depth] = depths
    scales[depth] = float(np.mean(_moving(ct)[0].GetSpacing()))
    return _exhaustive(ct, section, cand, settings, steps, scales)


def descend(ct, section: SectionLevel, cand: Candidate, settings: SearchSettings) -> Candidate:
    """Gradient descent from ``cand`` over the rigid plane and the section's in-plane scale and
    shear (SimpleITK's regular-step gradient descent on an ``AffineTransform``, scales from
    physical shifts); the plain rigid descent where the distortion would pass
    ``settings.max_distortion``."""
    import SimpleITK as sitk

    fixed, mask = fixed_image(section, cand.placement, cand.flip, cand.distortion)
    rigid = cand.transform()
    t = sitk.AffineTransform(3)
    t.SetCenter(rigid.GetCenter())
    t.SetMatrix(rigid.GetMatrix())
    t.SetTranslation(rigid.GetTranslation())
    metric, history = _descent(settings, mask, fixed, ct, t)
    found = split_affine(cand, t)
    if distortion_of(found.distortion) > settings.max_distortion:
        metric, history = _descent(settings, mask, fixed, ct, rigid)
        found = dataclasses.replace(cand, params=tuple(rigid.GetParameters()))
    return dataclasses.replace(found, metric=metric, history=cand.history + history)


def _descent(settings: SearchSettings, mask, fixed, ct, transform) -> tuple[float, list[float]]:
    """Run SimpleITK's regular-step gradient descent on ``transform`` (in place)."""
    import SimpleITK as sitk

    image = _moving(ct)[0]
    reg = mi_method(settings, mask, ct)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=settings.iterations,
        gradientMagnitudeTolerance=1e-8, relaxationFactor=0.6,
    )  # fmt: skip
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(transform, inPlace=True)
    history: list[float] = []
    reg.AddCommand(sitk.sitkIterationEvent, lambda: history.append(reg.GetMetricValue()))
    reg.Execute(fixed, image)
    return float(reg.MetricEvaluate(fixed, image)), history


def distortion_of(d) -> float:
    """How far a 2×2 distortion is from none: the largest |singular value - 1|."""
    sv = np.linalg.svd(np.reshape(d, (2, 2)), compute_uv=False)
    return float(max(abs(sv - 1.0)))


def split_affine(cand: Candidate, t) -> Candidate:
    """``cand`` with the plane and distortion of the 3D affine ``t`` found from it: the affine
    maps the plane's (row, col) directions B to ``A B = R B D``, split by the polar
    decomposition (R the rotation nearest, D symmetric), D composed with ``cand``'s."""
    import SimpleITK as sitk

    lin = matrix_from_sitk(np.array(t.GetMatrix()).reshape(3, 3))
    basis = cand.placement.basis
    u, sv, vt = np.linalg.svd(lin @ basis, full_matrices=False)
    cols = u @ vt  # R B: the plane's row and column directions in the CT
    rot = (
        np.column_stack([cols, np.cross(cols[:, 0], cols[:, 1])])
        @ np.column_stack([basis, cand.placement.normal]).T
    )
    d_new = vt.T @ np.diag(sv) @ vt
    e = sitk.Euler3DTransform()
    e.SetCenter(t.GetCenter())
    e.SetMatrix(tuple(float(v) for v in matrix_from_sitk(rot).ravel()), 1e-6)
    e.SetTranslation(t.GetTranslation())
    total = d_new @ np.reshape(cand.distortion, (2, 2))
    return dataclasses.replace(
        cand, params=tuple(e.GetParameters()), distortion=tuple(float(v) for v in total.ravel())
    )


def distinct(samples, settings: SearchSettings, axis: str, depth_sep: float, n: int):
    """The ``n`` best grid points that differ in angle (≥ 2 steps) or depth (≥ ``depth_sep``)."""
    angle, depth, _ = _param_index(axis)
    keep: list[tuple[float, tuple[float, ...]]] = []
    sep = math.radians(settings.angle_step) * 1.5
    for m, p in sorted(samples, key=lambda s: s[0]):
        close = False
        for _, q in keep:
            da = abs((p[angle] - q[angle] + math.pi) % (2 * math.pi) - math.pi)
            if da < sep and abs(p[depth] - q[depth]) < depth_sep:
                close = True
                break
        if not close:
            keep.append((m, p))
        if len(keep) == n:
            break
    return keep


@dataclasses.dataclass
class SearchRecord:
    """What the search did, for the registration record and the QC picture."""

    grid_points: int = 0
    grid_scale: float = 1.0  # the coarse grid's angle and shift steps were divided by this
    coarse_mi: float | None = None  # the best pose's mutual information on the coarse level
    levels: list[dict] = dataclasses.field(default_factory=list)
    seconds: dict = dataclasses.field(default_factory=dict)


class Overlap:
    """The fraction of the section's tissue that a pose puts inside the CT's box."""

    def __init__(self, section: SectionLevel, cand: Candidate, box) -> None:
        q = tissue_points(section, cand.flip, 400)
        self.points = apply(cand.placement.matrix(), q)  # on the placed plane, (z, y, x)
        self.cand = cand
        self.low = box.low - box.scale / 2
        self.high = box.high + box.scale / 2

    def __call__(self, params) -> float:
        if self.points.shape[0] == 0:
            return 0.0
        m = dataclasses.replace(self.cand, params=tuple(params)).rigid_matrix()
        p = self.points @ m[:3, :3].T + m[:3, 3]
        return float(np.all((p >= self.low) & (p <= self.high), axis=1).mean())


def coarse_search(
    pyramid: CTPyramid,
    section_at,
    starts: list[Candidate],
    settings: SearchSettings,
    depth_range: float,
    record: SearchRecord,
) -> list[Candidate]:
    """Grid search then descent from the best distinct points of each start; best first."""
    t0 = time.perf_counter()
    level = pyramid.coarse_level()
    ct = pyramid.read(level)
    voxel = float(min(pyramid.grid(level).scale))
    section = section_at(voxel)
    found: list[Candidate] = []
    box = pyramid.grid(0)
    grid, record.grid_scale = grid_for(section, settings)
    for cand in starts:
        samples = grid_search(ct, section, cand, grid, depth_range)
        record.grid_points += len(samples)
        # MI over a sliver of overlap is high by chance: only poses that keep most of the
        # section's tissue inside the CT compete
        inside = Overlap(section, cand, box)
        samples = [
            s for s in sorted(samples)[: settings.ranked] if inside(s[1]) >= settings.min_overlap
        ]
        for m, p in distinct(samples, grid, cand.axis, 4 * voxel, settings.starts):
            c = descend(ct, section, dataclasses.replace(cand, params=p, metric=m), settings)
            share = inside(c.params)
            if share >= settings.min_overlap:
                found.append(dataclasses.replace(c, inside=share))
    found.sort(key=lambda c: c.weighted)
    record.seconds["coarse"] = round(time.perf_counter() - t0, 2)
    return found


def refine(
    pyramid: CTPyramid, section_at, cand: Candidate, settings: SearchSettings, record: SearchRecord
) -> Candidate:
    """Descend again at each finer CT level, on a crop of the CT around the current plane
    that holds every pose the tilt grid samples (a point of the section outside the crop
    would drop out of the metric and flatter the pose); the result is scored on a crop
    around itself, the same way for every pose compared."""
    t0 = time.perf_counter()
    previous = None
    for level in range(pyramid.coarse_level() - 1, -1, -1):
        voxel = float(min(pyramid.grid(level).scale))
        section = section_at(voxel)
        span, n_starts, tilts = settings.max_tilt, settings.starts, settings
        if previous is not None:  # the pose is known to about a voxel of the level before
            span, tilts = tilt_grid(section, cand, settings, voxel, previous)
            n_starts = min(settings.starts, 3)
        previous = voxel
        ct = region(pyramid, level, cand, section, margin=8 * voxel, tilt=span)
        starts = tilt_search(ct, section, cand, tilts, span, n_starts)
        tried = [descend(ct, section, c, settings) for c in [cand, *starts]]
        cand = min(tried, key=lambda c: c.metric)
        cand = dataclasses.replace(cand, metric=score(pyramid, level, section, cand, settings))
        record.levels.append({"level": level, "voxel_size": voxel, "metric": cand.metric})
    if previous is not None:  # the final pose's share of tissue inside the CT
        inside = Overlap(section_at(previous), cand, pyramid.grid(0))
        cand = dataclasses.replace(cand, inside=inside(cand.params))
    record.seconds["refine"] = round(
        record.seconds.get("refine", 0.0) + time.perf_counter() - t0, 2
    )
    return cand


def tilt_grid(section: SectionLevel, cand: Candidate, settings, voxel: float, previous: float):
    """The tilts a finer level samples around ``cand``: out to the tilt that moves the
    section's farthest tissue (reckoned on its bounding box) two ``previous`` voxels off the
    plane, at most twice the tilt step, in steps that move it one ``voxel`` of this level.
    (Steps fixed in degrees were wider than that span for a wide section: 3° moves tissue
    8 mm from the centre 420 µm, so a 1536³ CT's section kept the tilt of the first level
    refined, 10 voxels off at 5 µm.) Returns the span and the settings with that step."""
    span = min(2 * settings.tilt_step, _tilt_within(section, cand, 2 * previous))
    step = min(settings.tilt_step, _tilt_within(section, cand, voxel))
    return span, dataclasses.replace(settings, tilt_step=step)


def across_profile(
    pyramid: CTPyramid, section: SectionLevel, cand: Candidate, settings, reach: int = 4
):
    """Mattes MI, at the finest level, of the poses across the plane from ``cand``: depths up
    to ``reach`` CT voxels each side, and tilts that move the section's farthest tissue up
    to that, both in steps of one voxel ([(metric, params)]; ``cand`` is the middle one)."""
    voxel = pyramid.voxel_size
    span = _tilt_within(section, cand, reach * voxel)
    tilts = dataclasses.replace(settings, tilt_step=span / reach)
    ct = region(pyramid, 0, cand, section, margin=(reach + 2) * voxel, tilt=span)
    return tilt_samples(ct, section, cand, tilts, span, depths=reach)


def _tilt_within(section: SectionLevel, cand: Candidate, offset: float) -> float:
    """The tilt (degrees) that moves the section's farthest tissue point ``offset`` µm off the
    plane of ``cand``."""
    pts = apply(cand.section_to_plane(), _footprint_points(cand, section))
    reach = 0.5 * float(np.linalg.norm(np.ptp(pts, axis=0)))
    return math.degrees(math.atan2(offset, max(reach, offset)))


def score(pyramid: CTPyramid, level: int, section: SectionLevel, cand: Candidate, settings):
    """Mattes MI of ``cand`` at ``level``, on a crop 8 voxels around its own footprint."""
    voxel = float(min(pyramid.grid(level).scale))
    ct = region(pyramid, level, cand, section, margin=8 * voxel)
    image = _moving(ct)[0]
    fixed, mask = fixed_image(section, cand.placement, cand.flip, cand.distortion)
    reg = mi_method(settings, mask, ct)
    reg.SetInitialTransform(cand.transform())
    return float(reg.MetricEvaluate(fixed, image))


def region(
    pyramid: CTPyramid, level: int, cand: Candidate, section: SectionLevel, margin, tilt=0.0
):
    """The CT that poses near ``cand`` (tilted up to ``tilt`` degrees) are scored on: a crop of
    ``level`` around the section's footprint, ``margin`` µm wider; or, where that crop would
    pass :data:`CROP_VOXELS` (a large or oblique plane), a :class:`MovingCT` slab on the plane's
    own grid, just as thick as the tilts need, read block by block."""
    q = _footprint_points(cand, section)
    m = cand.section_to_plane()
    low, high = _box_around(apply(m, q), margin, tilt)
    if pyramid.box_voxels(level, low, high) <= CROP_VOXELS:
        return pyramid.read(level, low, high)
    import SimpleITK as sitk

    voxel = float(min(pyramid.grid(level).scale))
    q_lo, q_hi = q.min(axis=0) - margin, q.max(axis=0) + margin
    reach = 0.5 * float(np.linalg.norm(q_hi - q_lo)) * math.sin(math.radians(tilt))
    half = int(math.ceil((margin + reach) / voxel))
    u, v, n = m[:3, 0], m[:3, 1], m[:3, 2]
    size = np.ceil((q_hi - q_lo) / voxel).astype(int) + 1
    ref = sitk.Image([int(size[1]), int(size[0]), 2 * half + 1], sitk.sitkUInt8)
    ref.SetSpacing((voxel,) * 3)
    ref.SetDirection(tuple(float(a) for a in np.column_stack(
        [to_sitk(v), to_sitk(u), to_sitk(n)]).ravel()))  # fmt: skip
    ref.SetOrigin(to_sitk(apply(m, q_lo[None])[0] - n * half * voxel))
    values, inside = pyramid.resample(level, ref)
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(ref)
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(ref)
    return MovingCT(image, mask)


def _footprint_points(cand: Candidate, section: SectionLevel) -> np.ndarray:
    """The section's tissue pixels (its image's corners where it shows none) as section µm
    (after the flip)."""
    q = tissue_points(section, cand.flip)
    if q.shape[0] == 0:
        q = section.origin + section.spacing * np.array([[0, 0], np.subtract(section.shape, 1)])
    return q


def tissue_points(section: SectionLevel, flip: bool, n: int | None = None) -> np.ndarray:
    """The section's tissue pixels as section µm (after the flip when ``flip``): all, or every
    k-th of them, about ``n``."""
    grey = section.contrast()
    rows, cols = np.nonzero(tissue_mask(grey[:, ::-1] if flip else grey))
    step = max(1, rows.size // n) if n else 1
    return section.origin + section.spacing * np.column_stack([rows[::step], cols[::step]])


def _box_around(pts: np.ndarray, margin: float, tilt: float = 0.0):
    """Physical box (z, y, x) holding the CT points ``pts`` (a section's footprint under a
    pose) ``margin`` µm wider, and as placed by any pose tilted from it up to ``tilt`` degrees."""
    low, high = pts.min(axis=0), pts.max(axis=0)
    reach = 0.5 * float(np.linalg.norm(high - low)) * math.sin(math.radians(tilt))
    return low - margin - reach, high + margin + reach
