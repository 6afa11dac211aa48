"""``vstain-dask register`` refusing a section's pixel size: every refusal names register's own
``--section-pixel-size``, never the ``import`` command's ``--voxel-size``, whichever way the
size is missing or disagrees; ``vstain-dask import`` keeps its own names for the same files.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_pixel_size_png_jpeg import png_with_phys
from test_wsi import assert_one_line_error, run

# what register says to do instead of an override flag it does not have
IMPORT_INSTEAD = "`vstain-dask import --voxel-size-override`"


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    out = tmp_path_factory.mktemp("ct") / "ct.ome.zarr"
    r = run("phantom", out, "--shape", "32,32,32", "--material", "mg", "--seed", 1, "--no-progress")
    assert r.exit_code == 0, r.output
    return out


def _sections(d):
    """One section file per way its pixel size can be refused, with the register options given,
    what the refusal must say, and the same refusal's words in ``vstain-dask import``."""
    rgb = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "bare.png")
    png_with_phys(d / "screen.png", rgb, 2835, 2835, 1)  # 72 dpi: no size
    # 20 000 pixels per centimetre: 0.5 µm
    tifffile.imwrite(d / "tags.tif", rgb, photometric="rgb", resolution=(20_000, 20_000),
                     resolutionunit="CENTIMETER")  # fmt: skip
    stack = rgb.transpose(2, 0, 1).copy()
    tifffile.imwrite(d / "stack.ome.tif", stack, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})  # fmt: skip
    return [
        (d / "bare.png", [], "states no pixel size; give it with --section-pixel-size (µm)",
         "give it with --voxel-size (one number or Y,X"),
        (d / "screen.png", [], "a screen default, not a pixel size); give it with "
         "--section-pixel-size (µm)", "give it with --voxel-size (one number or Y,X"),
        (d / "tags.tif", ["--section-pixel-size", "3"], "--section-pixel-size 3 µm was given but "
         "tags.tif says 0.5 µm", "add --voxel-size-override to use yours"),
        (d / "stack.ome.tif", [], "but no Z spacing; give all with --section-pixel-size (µm)",
         "give all with --voxel-size (Z,Y,X)"),
    ]  # fmt: skip


def test_every_refusal_of_a_sections_pixel_size_names_registers_options(ct, tmp_path):
    store = tmp_path / "pairs.zarr"
    for section, given, says, import_says in _sections(tmp_path):
        r = run("register", ct, section, "-o", store, "--material", "mg", "--sample", "S",
                *given)  # fmt: skip
        err = assert_one_line_error(r, says)
        # the one mention of import is the command to run instead of an override flag
        assert "--voxel-size" not in err.replace(IMPORT_INSTEAD, ""), err
        assert "voxel_size" not in err and "--unit" not in err, err
        if given:
            assert f"or import the section with {IMPORT_INSTEAD} and register that" in err, err
        assert not store.exists()
        # the import command refuses the same file in its own words
        extra = ["--voxel-size", "3"] if given else []
        r = run("import", section, tmp_path / "out.ome.zarr", *extra)
        err = assert_one_line_error(r, import_says)
        assert "--section-pixel-size" not in err, err
