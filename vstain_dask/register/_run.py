"""``register_section``: find a histology section's plane in a CT and add the pair."""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask.errors import InputError, VStainError
from vstain_dask.register._affine import AffineResult, fit_affine
from vstain_dask.register._geometry import (
    AXES,
    Placement,
    apply,
    flip_matrix,
    mean_error,
    pixel_matrix,
    split_distance,
    split_error,
)
from vstain_dask.register._images import CTPyramid, Section, SectionLevel
from vstain_dask.register._search import (
    Candidate,
    SearchRecord,
    SearchSettings,
    across_profile,
    coarse_search,
    refine,
    tissue_mask,
    tissue_points,
)

__all__ = ["RegisterConfig", "RegistrationError", "register_section"]


class RegistrationError(VStainError):
    """The search found no plane it trusts."""

    exit_code = 3


@dataclasses.dataclass(frozen=True)
class RegisterConfig:
    """What the registration searches and how sure it must be.

    Attributes
    ----------
    axis : ``"auto"``, ``"z"``, ``"y"`` or ``"x"``
        The CT axis the sections were cut (roughly) normal to; ``auto`` tries all three.
    flip : ``"auto"``, ``"yes"`` or ``"no"``
        Whether the section is mirrored (mounted face down); ``auto`` tries both.
    init_depth : float or None
        Where along ``axis`` to search, µm (physical, as the CT's coordinates); None: all of it.
    depth_window : float
        With ``init_depth``: how far each side of it to search, µm.
    affine : bool
        Refine the section with a 2D affine map (sectioning scale and shear) after the plane.
    section_pixel_size : float or None
        The section's pixel size, µm, when its file does not say.
    min_mi : float
        The least mutual information (nats, Mattes) the final plane must reach.
    min_margin : float
        How much better (relative) the best pose must be than the best pose that puts the
        section elsewhere in the plane.
    max_off_plane : float
        How far (CT voxels, mean over the section) the plane's depth and tilt may be in doubt:
        a pose this far across the plane from the best that maps the section onto the same
        pixels of it and scores within ``min_margin`` refuses the search.
    """

    axis: str = "auto"
    flip: str = "auto"
    init_depth: float | None = None
    depth_window: float = 200.0
    affine: bool = True
    section_pixel_size: float | None = None
    min_mi: float = 0.25
    min_margin: float = 0.12
    max_off_plane: float = 10.0
    search: SearchSettings = SearchSettings()

    def __post_init__(self) -> None:
        if self.axis not in ("auto", *AXES):
            raise InputError(f"--axis (axis=) must be auto, z, y or x, got {self.axis!r}")
        if self.flip not in ("auto", "yes", "no"):
            raise InputError(f"--flip (flip=) must be auto, yes or no, got {self.flip!r}")
        for name in ("depth_window", "section_pixel_size", "max_off_plane"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                # depth_window has no command-line option
                shown = name if name == "depth_window" else f"--{name.replace('_', '-')} ({name}=)"
                raise InputError(f"{shown} must be a positive number, got {v}")

    def axes(self) -> tuple[str, ...]:
        return AXES if self.axis == "auto" else (self.axis,)

    def flips(self) -> tuple[bool, ...]:
        return {"auto": (False, True), "yes": (True,), "no": (False,)}[self.flip]


def _open_section(path: Path, config: RegisterConfig, workdir: Path) -> Section:
    """The section as an OME-Zarr: as given, or a whole-slide image imported into ``workdir``,
    its refusals about the pixel size naming register's ``--section-pixel-size``."""
    from vstain_dask import ngff
    from vstain_dask.ngff._pixel_size import SizeOptionNames

    is_zarr = path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zattrs"))
    if is_zarr:
        return Section(path)
    if not path.exists():
        raise InputError(f"section {path} does not exist")
    out = workdir / "section.ome.zarr"
    names = SizeOptionNames(
        size="--section-pixel-size",
        value="µm",
        every_axis="µm",
        override=None,
        instead="import the section with `vstain-dask import --voxel-size-override` and "
        "register that",
    )
    ngff.import_volume(path, out, voxel_size=config.section_pixel_size, size_option_names=names)
    return Section(out)


def _starts(pyramid: CTPyramid, section: SectionLevel, config: RegisterConfig) -> list[Candidate]:
    """One start per cutting axis and mirroring: the section's tissue centred on the CT."""
    grey = section.contrast()
    starts = []
    centre = pyramid.grid(0).centre
    for axis in config.axes():
        c = centre.copy()
        if config.init_depth is not None:
            c[AXES.index(axis)] = config.init_depth
        for flip in config.flips():
            rows, cols = np.nonzero(tissue_mask(grey[:, ::-1] if flip else grey))
            if rows.size == 0:
                raise InputError("the section shows no tissue: it is blank or all glass")
            q_mid = section.origin + section.spacing * np.array([rows.mean(), cols.mean()])
            starts.append(Candidate(axis, flip, Placement.untilted(axis, c, q_mid), (0.0,) * 6))
    return starts


def _pose_distance(a: Candidate, b: Candidate, section: SectionLevel) -> float:
    """Mean distance (µm) between where two poses put the section's corners and centre."""
    h, w = section.shape
    px = np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1], [h / 2, w / 2]], float)
    q = section.origin + section.spacing * px
    return float(
        np.linalg.norm(
            apply(a.section_to_plane(), q) - apply(b.section_to_plane(), q), axis=1
        ).mean()
    )


def _distinct(found: list[Candidate], section: SectionLevel, voxel: float, n: int):
    """The best ``n`` poses of ``found`` (best first) at least 4 ``voxel`` apart."""
    keep: list[Candidate] = []
    for c in found:
        if all(_pose_distance(k, c, section) > 4 * voxel for k in keep):
            keep.append(c)
        if len(keep) == n:
            break
    return keep


def _confidence(
    ranked: list[Candidate],
    section: SectionLevel,
    voxel: float,
    fine: SectionLevel,
    config,
    profile=(),
) -> dict[str, Any]:
    """The best pose against the best pose that puts the section elsewhere (≥ 4 ``voxel``
    away, and more than :data:`SAME_IN_PLANE` finest voxels apart along the best plane), by
    their metrics weighted by the share of the section's tissue inside the CT
    (:attr:`Candidate.weighted`); none elsewhere counts as 0.

    A pose that differs from the best only across the plane (deeper, or tilted about a line
    through the section) is not another answer: it maps the section's pixels onto the same
    CT pixels in the plane, and a specimen that hardly changes along the plane's normal (a
    long bone cut across its axis) scores it almost as high. Those within ``min_margin`` of the
    best, and the poses of the best's ``profile`` (:func:`across_profile`) within
    :data:`ACROSS_TOLERANCE` of the profile's best, say how well the plane's depth and tilt
    are known: ``off_plane_um``, the largest mean distance across the plane between the best
    and any of them (0 when none)."""
    best = ranked[0]
    points = tissue_points(fine, False, 2000)
    fine_voxel = float(min(fine.spacing))
    ref = best.section_to_ct(fine.col_mid())
    runner, off_plane = None, [_profile_doubt(best, profile, ref, fine, points)]
    for c in ranked[1:]:
        if _pose_distance(best, c, section) <= 4 * voxel:
            continue
        within, across = split_distance(ref, c.section_to_ct(fine.col_mid()), points)
        if within > SAME_IN_PLANE * fine_voxel:
            runner = c if runner is None else runner
        elif _relative(c.weighted, best.weighted) < config.min_margin:
            off_plane.append(across)
    runner_metric = runner.weighted if runner is not None else 0.0
    return {
        "best": best.weighted,
        "runner_up": runner_metric,
        "margin": _relative(runner_metric, best.weighted),
        "off_plane_um": round(max(off_plane), 2),
        "tissue_inside": round(best.inside, 3),
    }


#: poses that put the section's pixels within this many finest CT voxels of each other along
#: the plane (mean) are the same answer in the plane
SAME_IN_PLANE = 2.0
#: poses across the plane from the best whose mutual information is within this share of the
#: best's, at the finest level and with the section's distortion kept, count as in doubt
ACROSS_TOLERANCE = 0.02


def _profile_doubt(best: Candidate, profile, ref, fine: SectionLevel, points) -> float:
    """The largest mean distance (µm) across the plane from ``best`` (whose section_to_ct is
    ``ref``) of a pose of ``profile`` ([(metric, params)]) within :data:`ACROSS_TOLERANCE` of
    the profile's best; 0 without one."""
    if not profile:
        return 0.0
    top = min(m for m, _ in profile)
    doubt = 0.0
    for m, p in profile:
        if _relative(m, top) < ACROSS_TOLERANCE:
            pose = dataclasses.replace(best, params=tuple(p)).section_to_ct(fine.col_mid())
            doubt = max(doubt, split_distance(ref, pose, points)[1])
    return doubt


def _relative(metric: float, best: float) -> float:
    """How much worse ``metric`` is than ``best`` (negated MIs), relative to ``best``."""
    return (metric - best) / abs(best) if best else 0.0


def _check_trusted(conf: dict, final_metric: float, config: RegisterConfig, voxel: float) -> None:
    mi = -final_metric
    if mi < config.min_mi:
        raise RegistrationError(
            f"no plane of the CT matches the section: the best reaches mutual information "
            f"{mi:.3f}, below {config.min_mi} (wrong CT or section, or give --axis/--init-z; "
            "axis=/init_depth= in Python)"
        )
    if conf["margin"] < config.min_margin:
        raise RegistrationError(
            f"the section matches several planes of the CT almost equally (best "
            f"{-conf['best']:.3f}, another pose {-conf['runner_up']:.3f}): give --axis, "
            "--flip or --init-z (axis=, flip=, init_depth=) to narrow the search"
        )
    if conf["off_plane_um"] > config.max_off_plane * voxel:
        raise RegistrationError(
            f"the section's depth and tilt are not determined: a plane {conf['off_plane_um']:.0f} "
            f"µm away (mean, over {config.max_off_plane:g} CT voxels) matches it almost as well "
            f"(mutual information within {config.min_margin:.0%}); give --init-z (init_depth=) "
            "to narrow the search, or a larger --max-off-plane (max_off_plane=) to accept it"
        )


def register_section(
    ct: str | os.PathLike, section: str | os.PathLike, config: RegisterConfig | None = None
) -> dict[str, Any]:
    """Find the plane of ``ct`` that shows ``section``.

    Returns
    -------
    dict
        The registration record: ``section_to_ct`` (4×4, row-major: section pixel
        ``(row, col, 0, 1)`` of the section's full-resolution level → CT ``(z, y, x, 1)`` in the
        CT's unit), ``axis``, ``flip``, ``metric`` (final Mattes MI, negated as SimpleITK
        reports it), ``confidence``, ``affine``, ``settings``, ``seconds``; and, not for
        storage, ``_result`` with what the pair is cut from.

    Raises
    ------
    RegistrationError
        No plane is trusted (too little mutual information, or no clear best pose).
    """
    config = config or RegisterConfig()
    t0 = time.perf_counter()
    pyramid = CTPyramid(ct)
    with tempfile.TemporaryDirectory(prefix="vstain-register-") as tmp:
        sec = _open_section(Path(section), config, Path(tmp))
        record = _register(pyramid, sec, config)
        record["seconds"]["total"] = round(time.perf_counter() - t0, 2)
        record["ct"] = str(Path(ct))
        record["section"] = str(Path(section))
        pair = _pair_images(pyramid, sec, record)
    record["_result"] = pair
    return record


def _register(pyramid: CTPyramid, sec: Section, config: RegisterConfig) -> dict[str, Any]:
    cache: dict[float, SectionLevel] = {}

    def section_at(pixel_size: float) -> SectionLevel:
        key = round(pixel_size, 6)
        if key not in cache:
            cache[key] = sec.at(pixel_size)
        return cache[key]

    search = SearchRecord()
    coarse = pyramid.coarse_level()
    coarse_voxel = float(min(pyramid.grid(coarse).scale))
    section_c = section_at(coarse_voxel)
    starts = _starts(pyramid, section_c, config)
    extent = pyramid.grid(0).high - pyramid.grid(0).low
    depth_range = config.depth_window if config.init_depth is not None else float(max(extent)) / 2.0
    _check_fits(pyramid, section_c, config.search.min_overlap)
    found = coarse_search(pyramid, section_at, starts, config.search, depth_range, search)
    if not found:
        raise _outside(config.search.min_overlap)
    _check_coarse(found, config, search)
    refined = _refine_distinct(pyramid, section_at, found, config.search, search)
    best = refined[0]
    fine = section_at(pyramid.voxel_size)
    ranked = refined if len(refined) > 1 else found
    conf = _trusted(pyramid, ranked, (section_c, coarse_voxel), fine, config, search)
    affine = AffineResult(np.eye(4), best.metric, best.metric, False, "not asked", ())
    if config.affine:
        t = time.perf_counter()
        affine = fit_affine(pyramid, best, fine, config.search)
        search.seconds["affine"] = round(time.perf_counter() - t, 2)
    full = sec.full
    m = (
        best.section_to_plane()
        @ np.linalg.inv(affine.plane_to_section)
        @ flip_matrix(best.flip, fine.col_mid())
        @ pixel_matrix(tuple(full.scale), tuple(full.translation))
    )
    return {
        "section_to_ct": [[float(v) for v in row] for row in m],
        "axis": best.axis,
        "flip": best.flip,
        "metric": best.metric,
        "confidence": conf,
        "affine": {
            "used": affine.used,
            "metric": affine.metric,
            "rigid_metric": affine.rigid_metric,
            "reason": affine.reason,
        },
        "section_shape": [int(s) for s in full.shape],
        "section_pixel_size": [float(s) for s in full.scale],
        "ct_voxel_size": pyramid.voxel_size,
        "settings": _settings(config),
        "grid_points": search.grid_points,
        "grid_scale": search.grid_scale,
        "coarse_mi": search.coarse_mi,
        "levels": search.levels,
        "seconds": dict(search.seconds),
        "_curve": list(best.history) + list(affine.history),
        "_plane": (best, affine, fine),
    }


def _trusted(pyramid, ranked, coarse, fine: SectionLevel, config, search) -> dict[str, Any]:
    """The best pose's :func:`_confidence`, with its :func:`across_profile` (timed in
    ``search``), refused unless trusted; ``coarse``: the section and voxel size of the coarse
    level."""
    best = ranked[0]
    t = time.perf_counter()
    profile = across_profile(pyramid, fine, best, config.search)
    search.seconds["profile"] = round(time.perf_counter() - t, 2)
    conf = _confidence(ranked, *coarse, fine, config, profile)
    _check_trusted(conf, best.metric, config, pyramid.voxel_size)
    return conf


def _outside(min_overlap: float, why: str = "") -> RegistrationError:
    return RegistrationError(
        f"no pose keeps {min_overlap:.0%} of the section's tissue inside the CT: the section is "
        f"larger than the CT's field of view, or shows another specimen{why}"
    )


def _check_fits(pyramid: CTPyramid, section: SectionLevel, min_overlap: float) -> None:
    """Refuse, before any search, a section whose tissue is too large for ``min_overlap`` of it
    to lie inside any plane of the CT, however placed.

    The tissue pixels a pose keeps inside the CT's box (grown by half a CT voxel, as the
    overlap is counted) cover, as squares, no more than the plane's cut through that box grown
    by half a pixel's diagonal; and a plane cut through a box has at most the area
    sqrt(F1² + F2² + F3²) of its faces F (its projections on the three faces lie within them,
    each shrunk by the normal's component there)."""
    grey = section.contrast()
    area = float(np.count_nonzero(tissue_mask(grey))) * float(np.prod(section.spacing))
    g = pyramid.grid(0)
    grow = g.scale / 2 + float(np.hypot(*section.spacing)) / 2
    side = g.high - g.low + 2 * grow
    faces = np.array([side[1] * side[2], side[0] * side[2], side[0] * side[1]])
    largest = float(np.sqrt(np.sum(faces**2)))
    if area * min_overlap > largest:
        raise _outside(
            min_overlap,
            f" (its tissue covers {area / 1e6:.3g} mm², no cut through the CT more than "
            f"{largest / 1e6:.3g} mm²)",
        )


def _check_coarse(found: list[Candidate], config: RegisterConfig, search) -> None:
    """Refuse, before refining, a section whose best pose at the coarse level is already below
    ``config.min_mi``: mutual information reads higher there than on the finest level (fewer,
    smoother pixels, and the best of the whole grid), so no refined pose would reach it."""
    best = max(-c.metric for c in found)
    search.coarse_mi = round(best, 4)
    if best < config.min_mi:
        raise RegistrationError(
            f"no plane of the CT matches the section: the best pose on the coarse level reaches "
            f"mutual information {best:.3f}, below {config.min_mi} that the final plane needs "
            "(wrong CT or section)"
        )


def _refine_distinct(pyramid, section_at, found, settings, search) -> list[Candidate]:
    """The best few distinct coarse poses, each refined to the finest level, best first: the
    finest level decides between them."""
    coarse_voxel = float(min(pyramid.grid(pyramid.coarse_level()).scale))
    section = section_at(coarse_voxel)
    hypotheses = _distinct(found, section, coarse_voxel, settings.hypotheses)
    refined = [refine(pyramid, section_at, c, settings, search) for c in hypotheses]
    return sorted(refined, key=lambda c: c.weighted)


def _settings(config: RegisterConfig) -> dict[str, Any]:
    """The search settings, as recorded with the registration."""
    return {
        **dataclasses.asdict(config.search),
        "axis": config.axis,
        "flip": config.flip,
        "init_depth": config.init_depth,
        "min_mi": config.min_mi,
        "min_margin": config.min_margin,
        "max_off_plane": config.max_off_plane,
    }


def _pair_images(pyramid: CTPyramid, sec: Section, record: dict) -> dict[str, np.ndarray]:
    """CT on the found plane and the section mapped onto it, at the CT's pixel size, cropped to
    where both exist."""
    from vstain_dask.register._output import plane_images

    best, affine, fine = record.pop("_plane")
    return plane_images(pyramid, best, affine, fine)


def score_against_truth(record: dict, truth: np.ndarray) -> tuple[float, float]:
    """Mean and max error (µm) of ``record``'s map against a true ``section_to_ct``."""
    shape = tuple(record["section_shape"])
    return mean_error(np.array(record["section_to_ct"]), np.asarray(truth), shape)


def plane_errors(record: dict, truth: np.ndarray) -> tuple[float, float]:
    """Mean error (µm) of ``record``'s map against a true ``section_to_ct``, along the true
    plane (the pair's pixel correspondence) and across it (the plane's depth and tilt)."""
    shape = tuple(record["section_shape"])
    return split_error(np.array(record["section_to_ct"]), np.asarray(truth), shape)
