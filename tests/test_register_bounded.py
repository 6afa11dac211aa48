"""Registration reads the CT in bounded pieces: block by block, or as a slab along the plane.

A 1536³ CT with a tilted section would need gigabytes as one axis-aligned crop around the
plane; ``CTPyramid.resample`` reads it block by block and the search scores large planes on an
oblique slab just as thick as its tilts need. These tests force the bounded paths on a small
phantom (a tiny read budget) and compare them with the whole-crop reads they replace.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from vstain_dask import ngff
from vstain_dask.cli import main
from vstain_dask.phantom._section import read_section_truth
from vstain_dask.register import _images, _search
from vstain_dask.register._geometry import Placement, apply, matrix_from_sitk, to_sitk
from vstain_dask.register._images import CTPyramid, Section
from vstain_dask.register._search import Candidate, MovingCT, SearchSettings, fixed_image


def _run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A phantom CT, a tilted section of it imported at 5 µm, and a tilted pose near it."""
    tmp = tmp_path_factory.mktemp("bounded")
    ct = tmp / "ct.ome.zarr"
    _run("phantom", ct, "--shape", "48,96,96", "--seed", 3, "--no-progress")
    tif = tmp / "s.ome.tif"
    _run("phantom-section", ct, tif, "--pixel-size", 2.5, "--tilt", "6,-4", "--rotate", 30)
    sec = tmp / "s.ome.zarr"
    ngff.import_volume(tif, sec)
    pyramid = CTPyramid(ct)
    section = Section(sec).at(5.0)
    place = Placement.untilted("y", pyramid.grid(0).centre, np.array([120.0, 140.0]))
    return pyramid, section, _true_pose(place, read_section_truth(tif)["section_to_ct"], 2.5)


def _true_pose(place: Placement, truth, pixel: float) -> Candidate:
    """The candidate that puts the section where its true ``section_to_ct`` says (the cut has
    no shear or compression, so the truth is rigid)."""
    import SimpleITK as sitk

    m = np.asarray(truth, dtype=np.float64) @ np.diag([1 / pixel, 1 / pixel, 1.0, 1.0])
    lin = m[:3, :2]  # section µm (row, col) → CT (z, y, x)
    cols = np.column_stack([lin, np.cross(lin[:, 0], lin[:, 1])])
    rot = cols @ np.column_stack([place.basis, place.normal]).T
    t = m[:3, 3] + lin @ place.q_mid - place.centre
    e = sitk.Euler3DTransform()
    e.SetCenter(to_sitk(place.centre))
    e.SetMatrix(tuple(float(v) for v in matrix_from_sitk(rot).ravel()), 1e-5)
    e.SetTranslation(to_sitk(t))
    cand = Candidate("y", False, place, tuple(e.GetParameters()))
    q = np.array([[0.0, 0.0], [200.0, 300.0]])
    np.testing.assert_allclose(apply(cand.section_to_plane(), q), apply(m, q), atol=1e-6)
    return cand


def test_blocks_resample_exactly_what_one_crop_does_reading_at_most_the_budget(scene, monkeypatch):
    pyramid, section, cand = scene
    ref, _ = fixed_image(section, cand.placement, cand.flip)
    whole, whole_in = pyramid.resample(0, ref, cand.transform())
    assert whole_in.mean() > 0.3 and whole[whole_in].std() > 0  # the plane shows the specimen
    # the plane is turned 30° in plane and tilted: a strip of it would span the whole box
    reads = []
    read = CTPyramid.read

    def counted(self, level, low=None, high=None):
        img = read(self, level, low, high)
        reads.append(int(np.prod(img.GetSize())))
        return img

    monkeypatch.setattr(CTPyramid, "read", counted)
    monkeypatch.setattr(_images, "CROP_VOXELS", 3000)
    blocks, blocks_in = pyramid.resample(0, ref, cand.transform())
    assert len(reads) > 10 and max(reads) <= 3000, reads
    np.testing.assert_array_equal(blocks_in, whole_in)
    np.testing.assert_array_equal(blocks, whole)


def test_a_slab_scores_poses_like_the_crop(scene, monkeypatch):
    import SimpleITK as sitk

    pyramid, section, cand = scene
    settings = SearchSettings()
    crop = _search.region(pyramid, 0, cand, section, margin=40.0, tilt=6.0)
    assert not isinstance(crop, MovingCT)
    by_crop = _search.score(pyramid, 0, section, cand, settings)
    monkeypatch.setattr(_search, "CROP_VOXELS", 1000)
    monkeypatch.setattr(_images, "CROP_VOXELS", 5000)
    slab = _search.region(pyramid, 0, cand, section, margin=40.0, tilt=6.0)
    assert isinstance(slab, MovingCT)
    # the slab reaches past this small CT: where it does, its mask keeps it out of the metric
    inside = sitk.GetArrayFromImage(slab.mask)
    assert 0.2 < inside.mean() < 1.0
    by_slab = _search.score(pyramid, 0, section, cand, settings)
    assert by_crop < -0.2  # a real match (SimpleITK reports MI negated)
    assert abs(by_slab - by_crop) <= 0.05 * abs(by_crop), (by_slab, by_crop)
    # a pose 4 voxels deeper scores worse on the slab too: the slab still separates poses
    p = list(cand.params)
    p[4] += 20.0
    off = Candidate(cand.axis, cand.flip, cand.placement, tuple(p))
    assert _search.score(pyramid, 0, section, off, settings) > by_slab
