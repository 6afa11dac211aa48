"""A phantom section rendered and written block by block is the section rendered whole.

``vstain-dask phantom-section`` renders sections of any size in blocks and writes the
pyramidal OME-TIFF a strip at a time; here blocks of 100×70 pixels (dividing nothing) must give
the same bytes as one block holding the whole section, for cuts with every artefact, mirrored,
tilted, rotated, sheared, compressed and with a partial field of view.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from skimage.transform import downscale_local_mean

from vstain_dask.cli import main
from vstain_dask.errors import InputError
from vstain_dask.ngff import open_volume
from vstain_dask.phantom import write_phantom
from vstain_dask.phantom._section import (
    MAX_SECTION_SIDE,
    SectionCut,
    _plan,
    phantom_section,
    read_section_truth,
    write_phantom_section,
)

SMALL = (100, 70)
WHOLE = (10**6, 10**6)

CUTS = [
    SectionCut(pixel_size=2.0, tilt=(6.0, -3.0), rotate=70, flip=True, shear=0.01, seed=2),
    SectionCut(
        pixel_size=1.5, axis="z", tilt=(10.0, 4.0), rotate=200, compression=0.03, fov=0.6, seed=7
    ),
    SectionCut(pixel_size=3.0, axis="x", rotate=-30, flip=True, seed=11),
    SectionCut(pixel_size=1.0, tilt=(3.0, 8.0), rotate=15, shear=-0.02, fov=0.5, seed=4),
]


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiles") / "vol.ome.zarr"
    return write_phantom(out, shape=(48, 96, 96), material="mg", seed=5)


@pytest.mark.parametrize("cut", CUTS, ids=["mirrored", "z-partial", "x-mirrored", "partial"])
def test_blocks_render_the_whole_section_byte_for_byte(volume, cut):
    whole = phantom_section(volume, cut, block=WHOLE)
    tiled = phantom_section(volume, cut, block=SMALL)
    h, w = whole["image"].shape[:2]
    assert h % SMALL[0] and w % SMALL[1]  # the blocks do not divide the section
    np.testing.assert_array_equal(tiled["image"], whole["image"])
    np.testing.assert_array_equal(tiled["inside"], whole["inside"])
    assert tiled["truth"] == whole["truth"]
    # a real section: glass and stained tissue both show
    grey = whole["image"].mean(axis=-1)
    assert (grey > 240).mean() > 0.02 and (grey < 200).mean() > 0.1


def test_the_cuts_carry_every_artefact(volume):
    # the blocks are checked against cracks, scratches and droplets, which span the section
    arts = [_plan(volume, cut).artefacts for cut in CUTS]
    assert all(a.cracks for a in arts)
    assert sum(len(a.scratches) for a in arts) >= 3 and sum(len(a.droplets) for a in arts) >= 3


def _levels(image: np.ndarray) -> list[np.ndarray]:
    levels = [image]
    while min(levels[-1].shape[:2]) >= 256:
        levels.append(np.rint(downscale_local_mean(levels[-1], (2, 2, 1))).astype(np.uint8))
    return levels


def test_written_pyramid_is_the_whole_section_and_its_means(volume, tmp_path):
    # 577×657 pixels: three strips of 256 rows, two sub-resolutions, odd sizes at each level
    cut = SectionCut(pixel_size=0.9, tilt=(4.0, -7.0), rotate=33, flip=True, shear=0.02, seed=7)
    ref = phantom_section(volume, cut, block=WHOLE)
    out = tmp_path / "s.ome.tif"
    rec = write_phantom_section(volume, out, cut, block=SMALL)
    expected = _levels(ref["image"])
    assert len(expected) == 3 and rec["shape"] == [577, 657]
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.pages[0].is_tiled and tif.pages[0].tilewidth == 256
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert tif.pages[0].get_resolution() == pytest.approx((1e4 / 0.9, 1e4 / 0.9))
        levels = tif.series[0].levels
        assert len(levels) == len(expected)
        for got, want in zip(levels, expected, strict=True):
            np.testing.assert_array_equal(got.asarray(), want)
    # no scratch files and no .partial left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["s.ome.tif"]
    truth = read_section_truth(out)
    np.testing.assert_allclose(truth["section_to_ct"], ref["section_to_ct"], atol=1e-8)
    assert truth["shape"] == [577, 657] and truth["pixel_size"] == 0.9
    # `import` reads it, with the pixel size the file states
    r = CliRunner().invoke(main, ["import", str(out), str(tmp_path / "s.ome.zarr")])
    assert r.exit_code == 0, r.output
    vol = open_volume(tmp_path / "s.ome.zarr")
    assert vol.attrs["scale"]["x"] == pytest.approx(0.9)
    np.testing.assert_array_equal(vol.values, np.moveaxis(ref["image"], -1, 0))


def test_absurd_sections_are_refused_in_one_line(volume, tmp_path):
    cut = SectionCut(pixel_size=0.004)  # 480 µm at 4 nm: 120 000 pixels a side
    with pytest.raises(InputError, match=f"over {MAX_SECTION_SIDE} pixels a side"):
        write_phantom_section(volume, tmp_path / "s.ome.tif", cut)
    with pytest.raises(InputError, match="write it with write_phantom_section"):
        phantom_section(volume, SectionCut(pixel_size=0.04))  # 6000×12000 pixels
    assert not list(tmp_path.iterdir())
