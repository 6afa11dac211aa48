"""When ``register`` trusts a plane: poses elsewhere in the plane compete, poses across it do not.

A long bone cut across its axis hardly changes along the cut's normal, so a plane a few voxels
deeper or tilted about a line through the section scores almost as high as the true one; it
pairs each section pixel with the same CT pixel of the plane. Such a pose says how well the
plane's depth and tilt are known (``off_plane_um``); only a pose that puts the section elsewhere
in the plane is another answer that can refuse the search.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from vstain_dask.register import RegisterConfig, RegistrationError
from vstain_dask.register._geometry import Placement, apply, split_distance, split_error
from vstain_dask.register._images import SectionLevel
from vstain_dask.register._run import _check_trusted, _confidence
from vstain_dask.register._search import Candidate


def _section_map(scale: float = 2.0) -> np.ndarray:
    """section_to_ct of an untilted cut normal to y: rows along z, columns along x."""
    m = np.eye(4)
    m[:3, :3] = [[scale, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, scale, 0.0]]
    m[:3, 3] = [10.0, 300.0, 20.0]
    return m


def test_a_shift_splits_into_its_parts_along_and_across_the_plane():
    ref = _section_map()
    other = ref.copy()
    other[:3, 3] += [0.0, 3.0, 4.0]  # 3 µm deeper (y), 4 µm along the columns (x)
    within, across = split_error(other, ref, (50, 60))
    assert within == pytest.approx(4.0) and across == pytest.approx(3.0)


def test_a_tilt_moves_the_section_across_the_plane_by_its_lever_arm():
    ref = _section_map()
    angle = math.radians(8.0)
    centre = apply(ref, np.array([[25.0, 30.0]]))[0]
    # the plane turned about its row direction (z) through the section's centre
    rot = np.array([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)],
                    [0, math.sin(angle), math.cos(angle)]])  # fmt: skip
    turn = np.eye(4)
    turn[:3, :3] = rot
    turn[:3, 3] = centre - rot @ centre
    px = np.array([[r, c] for r in range(0, 50, 5) for c in range(0, 60, 5)], dtype=float)
    within, across = split_distance(ref, turn @ ref, px)
    lever = np.abs(px[:, 1] - 30.0) * 2.0  # µm from the turning line
    assert across == pytest.approx(np.mean(lever * math.sin(angle)))
    assert within == pytest.approx(np.mean(lever * (1 - math.cos(angle))))


@pytest.fixture
def poses():
    """A section (a tissue disc on glass at 5 µm) and the best pose found for it."""
    rgb = np.full((60, 80, 3), 255, dtype=np.uint8)
    rows, cols = np.ogrid[:60, :80]
    rgb[(rows - 30) ** 2 + (cols - 40) ** 2 < 25**2] = (90, 60, 140)
    section = SectionLevel(rgb, np.array([5.0, 5.0]), np.array([0.0, 0.0]))
    place = Placement.untilted("y", np.array([200.0, 200.0, 200.0]), np.array([150.0, 200.0]))
    return section, Candidate("y", False, place, (0.0,) * 6, metric=-0.90)


def _moved(best: Candidate, metric: float, *, across=0.0, along=0.0) -> Candidate:
    # Euler parameters: three angles, then the translation in SimpleITK's (x, y, z) order;
    # the cut is normal to y, so y moves the plane across and x along it
    return dataclasses.replace(best, params=(0.0, 0.0, 0.0, along, across, 0.0), metric=metric)


def test_a_deeper_plane_scoring_as_well_is_the_same_answer_with_its_doubt(poses):
    section, best = poses
    deeper = _moved(best, -0.89, across=25.0)  # 1 % below the best
    elsewhere = _moved(best, -0.70, along=30.0)
    config = RegisterConfig()
    conf = _confidence([best, deeper, elsewhere], section, 5.0, section, config)
    assert conf["off_plane_um"] == pytest.approx(25.0, abs=0.01)
    assert conf["runner_up"] == -0.70
    assert conf["margin"] == pytest.approx(0.2 / 0.9)
    _check_trusted(conf, best.metric, config, 5.0)  # trusted: nothing raised


def test_a_pose_elsewhere_in_the_plane_scoring_as_well_refuses_the_search(poses):
    section, best = poses
    elsewhere = _moved(best, -0.88, along=30.0)
    config = RegisterConfig()
    conf = _confidence([best, elsewhere], section, 5.0, section, config)
    assert conf["off_plane_um"] == 0.0 and conf["runner_up"] == -0.88
    with pytest.raises(RegistrationError, match="several planes of the CT almost equally"):
        _check_trusted(conf, best.metric, config, 5.0)


def test_a_plane_whose_depth_is_not_determined_is_refused_in_one_line(poses):
    section, best = poses
    far = _moved(best, -0.89, across=80.0)  # 16 voxels deeper, 1 % below the best
    config = RegisterConfig()
    conf = _confidence([best, far], section, 5.0, section, config)
    assert conf["off_plane_um"] == pytest.approx(80.0, abs=0.01)
    with pytest.raises(RegistrationError) as e:
        _check_trusted(conf, best.metric, config, 5.0)
    message = str(e.value)
    assert "depth and tilt are not determined" in message and "80 µm" in message
    assert "--init-z" in message and "--max-off-plane" in message
    assert "\n" not in str(e.value)
    # a looser bound accepts it, the doubt recorded
    _check_trusted(conf, best.metric, RegisterConfig(max_off_plane=20.0), 5.0)


def test_a_pose_leaving_tissue_off_the_ct_competes_with_what_it_matched(poses):
    # mutual information is taken over the tissue inside the CT only: a pose near a face of
    # the volume that keeps 75 % of the section inside scores its MI on that 75 %, and counts
    # as 75 % of it against a pose that keeps all of it inside
    section, best = poses
    edge = dataclasses.replace(_moved(best, -0.87, along=30.0), inside=0.75)
    conf = _confidence([best, edge], section, 5.0, section, RegisterConfig())
    assert conf["runner_up"] == pytest.approx(-0.87 * 0.75)
    assert conf["margin"] == pytest.approx((0.90 - 0.87 * 0.75) / 0.90)
    assert conf["tissue_inside"] == 1.0
    _check_trusted(conf, best.metric, RegisterConfig(), 5.0)  # trusted: nothing raised
    # kept whole inside, the same MI is another answer within the margin
    whole = dataclasses.replace(edge, inside=1.0)
    conf = _confidence([best, whole], section, 5.0, section, RegisterConfig())
    with pytest.raises(RegistrationError, match="several planes"):
        _check_trusted(conf, best.metric, RegisterConfig(), 5.0)


def _blank_section(side: int) -> SectionLevel:
    return SectionLevel(np.zeros((side, side + 10, 3), np.uint8), np.array([80.0, 80.0]),
                        np.zeros(2))  # fmt: skip


@pytest.mark.parametrize("side", [40, 93, 96])
def test_the_coarse_grid_of_a_section_up_to_96_pixels_is_the_tuned_one(side):
    from vstain_dask.register._search import SearchSettings, grid_for

    settings = SearchSettings()
    assert grid_for(_blank_section(side), settings) == (settings, 1.0)


def test_a_wide_section_gets_steps_that_move_its_edge_no_farther():
    # a 1536³ CT's section, 144 pixels wide at 80 µm, was lost with the tuned steps and found
    # with steps 2.2 times finer (benchmarks/RESULTS.md §8)
    from vstain_dask.register._search import SearchSettings, grid_for

    side, settings = 144, SearchSettings()
    grid, k = grid_for(_blank_section(side), settings)
    assert k == pytest.approx(side / 64, abs=1e-3)
    # how far a step moves the section's edge (half its width away), in coarse pixels, is at
    # most what it is for a 64-pixel section with the tuned steps; the shifts reach as far
    assert side / 2 * math.radians(grid.angle_step) <= 32 * math.radians(settings.angle_step) + 1e-9
    assert side * grid.shift_fraction <= 64 * settings.shift_fraction + 1e-9
    reach = grid.shift_steps * grid.shift_fraction
    assert reach >= settings.shift_steps * settings.shift_fraction
    assert (grid.depth_step, grid.starts, grid.coarse_tilt_steps) == (
        settings.depth_step, settings.starts, settings.coarse_tilt_steps)  # fmt: skip


def test_the_coarse_grid_of_a_wide_section_is_scored_on_a_sample_the_descent_on_all():
    # a 144-pixel section's grid has 10 times the tuned grid's points; scored on every tissue
    # pixel it took 20 minutes on two cores (benchmarks/RESULTS.md §8)
    import SimpleITK as sitk

    from vstain_dask.register._search import GRID_SAMPLES, SearchSettings, grid_for, mi_method

    rng = np.random.default_rng(0)
    side, settings = 144, SearchSettings()
    grid, _ = grid_for(_blank_section(side), settings)
    fixed = sitk.GetImageFromArray(rng.random((1, side, side)).astype(np.float32))
    mask = sitk.GetImageFromArray(np.ones((1, side, side), np.uint8))
    moving = sitk.GetImageFromArray(rng.random((9, side + 20, side + 20)).astype(np.float32))
    moving.SetOrigin((-10.0, -10.0, -4.0))
    used = {}
    for name, s in (("grid", grid), ("descent", settings)):
        reg = mi_method(s, mask, moving)
        reg.SetInitialTransform(sitk.Euler3DTransform())
        reg.SetOptimizerAsExhaustive([0] * 6)  # one evaluation, at the start
        points = []
        reg.AddCommand(
            sitk.sitkIterationEvent,
            lambda r=reg, p=points: p.append(r.GetMetricNumberOfValidPoints()),
        )
        reg.Execute(fixed, moving)
        used[name] = points[0]
    assert used["descent"] == side * side
    # a regular sample, jittered within each pixel by SimpleITK (some land off the 1-slice mask)
    assert GRID_SAMPLES / 2 <= used["grid"] <= GRID_SAMPLES


def _tissue_disc(diameter_um: float, pixel: float) -> SectionLevel:
    """Stained tissue, a disc ``diameter_um`` across, on glass."""
    n = int(diameter_um / pixel) + 8
    rows, cols = np.mgrid[:n, :n]
    disc = np.hypot(rows - n / 2, cols - n / 2) < diameter_um / pixel / 2
    rgb = np.full((n, n, 3), 245, np.uint8)
    rgb[disc] = (70, 40, 130)
    return SectionLevel(rgb, np.array([pixel, pixel]), np.zeros(2))


@pytest.mark.parametrize("diameter_um", [600.0, 16000.0])
def test_a_finer_level_tilts_the_plane_in_steps_that_move_the_farthest_tissue_a_voxel(
    diameter_um,
):
    # steps fixed at 3° were wider than the span a finer level searches for a wide section
    # (its tissue 8 mm from the centre moves 420 µm per 3°), so the 1536³ CT's section kept
    # the coarse level's tilt: 10 voxels off at 5 µm (benchmarks/RESULTS.md §8)
    from vstain_dask.register._search import SearchSettings, tilt_grid

    section = _tissue_disc(diameter_um, pixel=diameter_um / 150)
    q_mid = section.spacing * (np.array(section.shape) - 1) / 2
    cand = Candidate("y", False, Placement.untilted("y", np.zeros(3), q_mid), (0.0,) * 6)
    span, tilts = tilt_grid(section, cand, SearchSettings(), voxel=5.0, previous=10.0)
    assert round(span / tilts.tilt_step) == 4  # out to two voxels of the level before

    rows, cols = np.nonzero(np.any(section.rgb < 200, axis=-1))
    pts = np.column_stack([rows, cols]) * section.spacing

    def farthest_move(tilt_deg: float) -> float:
        for k in (0, 2):  # the two tilts: about z and about x (the plane's in-plane axes)
            params = [0.0] * 6
            params[k] = math.radians(tilt_deg)
            moved = dataclasses.replace(cand, params=tuple(params))
            before = apply(cand.section_to_plane(), pts)
            after = apply(moved.section_to_plane(), pts)
            yield float(np.max(np.linalg.norm(after - before, axis=1)))

    # reckoned on the tissue's bounding box (its half-diagonal), so a disc's edge moves less
    assert all(0.6 * 5.0 <= move <= 5.0 for move in farthest_move(tilts.tilt_step))
    assert all(0.6 * 20.0 <= move <= 20.0 for move in farthest_move(span))


@pytest.mark.parametrize(("fall_per_um", "doubt_um"), [(0.0015, 10.0), (0.01, 0.0)])
def test_how_fast_the_metric_falls_across_the_plane_gives_the_doubt(poses, fall_per_um, doubt_um):
    # no other pose scores near the best, but the finest level's profile (depths 30 µm each
    # side) stays within 2 % of the best up to 10 µm deeper or shallower when the metric falls
    # 0.15 % per µm, and nowhere off the best when it falls 1 % per µm
    section, best = poses
    profile = [
        (best.metric * (1 - fall_per_um * abs(d)), _moved(best, 0.0, across=d).params)
        for d in range(-30, 31, 5)
    ]
    elsewhere = _moved(best, -0.70, along=30.0)
    conf = _confidence([best, elsewhere], section, 5.0, section, RegisterConfig(), profile)
    assert conf["off_plane_um"] == pytest.approx(doubt_um, abs=0.01)
