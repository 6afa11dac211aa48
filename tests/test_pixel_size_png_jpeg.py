"""The pixel size PNG and JPEG files state: a PNG's pHYs chunk, a JPEG's JFIF density, EXIF
resolution in either; what counts as none (aspect ratios, 72/96 dpi screen defaults, pixels
coarser than a millimetre); and how it meets ``--voxel-size`` through ``vstain-dask import``.

Files are written by Pillow as microscope cameras and export tools write them; where Pillow
cannot write a field as wanted (a pHYs chunk of whole pixels per metre with unit 0, a JFIF
density in dots per centimetre) the field is set in the bytes Pillow wrote.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from test_wsi import assert_one_line_error, run

from vstain_dask.ngff import open_volume, volume_info

SHAPE = (37, 53, 3)  # odd, and smaller than a chunk


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, SHAPE, dtype=np.uint8)


def png_with_phys(path, rgb, x: int, y: int, unit: int):
    """A PNG whose pHYs chunk says ``x``, ``y`` pixels per unit (1: metre, 0: none), placed
    after IHDR as the PNG specification asks."""
    Image.fromarray(rgb).save(path)
    data = path.read_bytes()
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR header, its data, its CRC
    body = b"pHYs" + struct.pack(">IIB", x, y, unit)
    chunk = struct.pack(">I", 9) + body + struct.pack(">I", zlib.crc32(body))
    path.write_bytes(data[:ihdr_end] + chunk + data[ihdr_end:])
    return path


def jpeg_with_density(path, rgb, density: tuple[int, int], unit: int):
    """A JPEG whose JFIF header says ``density`` dots per unit (1: inch, 2: cm, 0: none)."""
    Image.fromarray(rgb).save(path, dpi=density, quality=95)
    data = bytearray(path.read_bytes())
    # SOI, then APP0: marker, length, "JFIF\0", version (2 bytes), units, Xdensity, Ydensity
    assert data[2:4] == b"\xff\xe0" and data[6:11] == b"JFIF\0"
    data[13] = unit
    path.write_bytes(bytes(data))
    return path


def with_exif(path, rgb, x: float, y: float, unit: int | None, **save):
    """An image (format by suffix) with EXIF XResolution/YResolution and ResolutionUnit."""
    exif = Image.Exif()
    exif[282], exif[283] = x, y
    if unit is not None:
        exif[296] = unit
    Image.fromarray(rgb).save(path, exif=exif, **save)
    return path


def imported(src, out, *options):
    r = run("import", src, out, *options)
    assert r.exit_code == 0, r.output
    vol = open_volume(out)
    assert vol.attrs["kind"] == "rgb"
    return r, vol, volume_info(out)["vstain"]["import"]


def test_png_phys_in_pixels_per_metre_is_the_pixel_size_exactly(tmp_path, rgb):
    # 1 136 364 pixels per metre: a 0.88 µm slide pixel, as 10^6 / n µm, not via rounded dpi
    src = png_with_phys(tmp_path / "section.png", rgb, 1_136_364, 1_136_364, 1)
    r, vol, record = imported(src, tmp_path / "o.zarr")
    assert vol.attrs["scale"]["y"] == vol.attrs["scale"]["x"] == 1e6 / 1_136_364
    assert vol.attrs["units"]["x"] == "micrometer"
    assert "from the PNG pHYs chunk (pixels per meter)" in r.stdout
    assert record["voxel_size_source"] == "the PNG pHYs chunk (pixels per meter)"
    np.testing.assert_array_equal(vol.values, np.moveaxis(rgb, -1, 0))


def test_png_phys_with_non_square_pixels(tmp_path, rgb):
    src = png_with_phys(tmp_path / "s.png", rgb, 2_000_000, 1_000_000, 1)  # x 0.5, y 1 µm
    _, vol, _ = imported(src, tmp_path / "o.zarr")
    assert (vol.attrs["scale"]["y"], vol.attrs["scale"]["x"]) == (1.0, 0.5)


@pytest.mark.parametrize(
    ("unit", "density", "expected", "said"),
    [(1, (50_800, 50_800), 0.5, "pixels per inch"), (2, (11_364, 11_364), 1e4 / 11_364,
     "pixels per centimeter")],
)  # fmt: skip
def test_jpeg_jfif_density_in_dpi_or_dots_per_cm(tmp_path, rgb, unit, density, expected, said):
    src = jpeg_with_density(tmp_path / "section.jpg", rgb, density, unit)
    r, vol, _ = imported(src, tmp_path / "o.zarr")
    assert vol.attrs["scale"]["x"] == pytest.approx(expected, rel=1e-12)
    assert f"from the JFIF density ({said})" in r.stdout
    with Image.open(src) as im:  # the decoded JPEG, as the import must hold it
        np.testing.assert_array_equal(vol.values, np.moveaxis(np.asarray(im), -1, 0))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_resolution_in_centimetres(tmp_path, rgb, suffix):
    # 40 000 pixels per cm is 0.25 µm; the JPEG's JFIF header (aspect 1:1) says nothing
    src = with_exif(tmp_path / f"cam{suffix}", rgb, 40_000.0, 40_000.0, 3)
    r, vol, _ = imported(src, tmp_path / "o.zarr")
    assert vol.attrs["scale"]["y"] == vol.attrs["scale"]["x"] == 0.25
    assert "pixel size 0.25 µm from the EXIF resolution (pixels per centimeter)" in r.stdout


def test_exif_without_a_unit_means_inches(tmp_path, rgb):
    src = with_exif(tmp_path / "cam.jpg", rgb, 12_700.0, 12_700.0, None)
    _, vol, _ = imported(src, tmp_path / "o.zarr")
    assert vol.attrs["scale"]["x"] == 2.0


def test_a_given_size_within_one_percent_agrees_and_beyond_is_refused(tmp_path, rgb):
    src = png_with_phys(tmp_path / "section.png", rgb, 1_136_364, 1_136_364, 1)
    out = tmp_path / "o.zarr"
    r, vol, record = imported(src, out, "--voxel-size", "0.885")  # 0.57 % apart
    assert vol.attrs["scale"]["x"] == 0.885
    assert record["voxel_size_source"] == (
        "the command line (agrees with the PNG pHYs chunk (pixels per meter))"
    )
    # 0.5 against 0.88: refused, naming both, and the store written before is left as it was
    r = run("import", src, out, "--voxel-size", "0.5", "--overwrite")
    assert_one_line_error(r, "--voxel-size 0.5 µm was given but section.png says 0.88 µm",
                   "PNG pHYs chunk", "--voxel-size-override")  # fmt: skip
    assert open_volume(out).attrs["scale"]["x"] == 0.885
    r = run("import", src, tmp_path / "new.zarr", "--voxel-size", "0.5")
    assert_one_line_error(r, "says 0.88 µm")
    assert not (tmp_path / "new.zarr").exists()
    _, vol, record = imported(src, tmp_path / "forced.zarr", "--voxel-size", "0.5",
                              "--voxel-size-override")  # fmt: skip
    assert vol.attrs["scale"]["x"] == 0.5 and record["voxel_size_source"] == (
        "the command line (forced)"
    )


def test_a_jpeg_mismatch_names_the_jfif_density(tmp_path, rgb):
    src = jpeg_with_density(tmp_path / "s.jpg", rgb, (50_800, 50_800), 1)
    r = run("import", src, tmp_path / "o.zarr", "--voxel-size", "0.6")
    assert_one_line_error(r, "--voxel-size 0.6 µm was given but s.jpg says 0.5 µm",
                   "(the JFIF density (pixels per inch))")  # fmt: skip
    assert not (tmp_path / "o.zarr").exists()


def _no_size_files(tmp_path, rgb):
    """Files that state no pixel size, with what the refusal says of each."""
    plain = tmp_path / "plain.png"
    Image.fromarray(rgb).save(plain)
    return [
        (plain, None),
        (png_with_phys(tmp_path / "aspect.png", rgb, 3, 2, 0),
         "(the PNG pHYs chunk gives only an aspect ratio, 3:2)"),
        (jpeg_with_density(tmp_path / "aspect.jpg", rgb, (1, 1), 0),
         "(the JFIF density gives only an aspect ratio, 1:1)"),
        (png_with_phys(tmp_path / "screen.png", rgb, 3780, 3780, 1),
         "(the PNG pHYs chunk says 3780 pixels per meter, 96 dpi: a screen default"),
        (jpeg_with_density(tmp_path / "screen.jpg", rgb, (72, 72), 1),
         "(the JFIF density says 72 pixels per inch: a screen default, not a pixel size)"),
        (jpeg_with_density(tmp_path / "screen-cm.jpg", rgb, (28, 28), 2),
         "28 pixels per centimeter, 72 dpi: a screen default"),
        (with_exif(tmp_path / "camera.jpg", rgb, 72.0, 72.0, 2),
         "(the EXIF resolution says 72 pixels per inch: a screen default"),
        (jpeg_with_density(tmp_path / "coarse.jpg", rgb, (10, 10), 1),
         "10 pixels per inch, 2540 µm per pixel: coarser than 1000 µm"),
    ]  # fmt: skip


def test_files_without_a_usable_size_are_refused_saying_why_and_what_to_give(tmp_path, rgb):
    for src, why in _no_size_files(tmp_path, rgb):
        out = tmp_path / f"{src.stem}-{src.suffix[1:]}.zarr"
        err = assert_one_line_error(
            run("import", src, out), f"{src.name} states no pixel size",
            "give it with --voxel-size (one number or Y,X",
        )  # fmt: skip
        assert ("states no pixel size;" in err) if why is None else (why in err), err
        assert not out.exists()
        # given, the size is used, and the output records what the file said instead
        _, vol, record = imported(src, out, "--voxel-size", "0.44")
        assert vol.attrs["scale"]["x"] == 0.44
        source = record["voxel_size_source"]
        assert (source == "the command line") if why is None else (why in source), source


def test_a_usable_field_wins_over_a_screen_default_in_another(tmp_path, rgb):
    # a camera's EXIF says 72 dpi, but its export wrote the real density in the JFIF header
    path = jpeg_with_density(tmp_path / "s.jpg", rgb, (25_400, 25_400), 1)
    exif = Image.Exif()
    exif[282], exif[283], exif[296] = 72.0, 72.0, 2
    with Image.open(path) as im:
        im.save(tmp_path / "both.jpg", exif=exif, dpi=(25_400, 25_400))
    _, vol, record = imported(tmp_path / "both.jpg", tmp_path / "o.zarr")
    assert vol.attrs["scale"]["x"] == 1.0
    assert record["voxel_size_source"] == "the JFIF density (pixels per inch)"


def test_pixel_size_out_resamples_from_the_png_size(tmp_path, rgb):
    src = png_with_phys(tmp_path / "s.png", rgb, 2_000_000, 2_000_000, 1)  # 0.5 µm
    r, vol, record = imported(src, tmp_path / "o.zarr", "--pixel-size-out", "2")
    assert vol.attrs["scale"]["x"] == 2.0 and vol.shape[1:] == (37 // 4, 53 // 4)
    assert record["resampled"]["from"] == [0.5, 0.5]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A phantom CT and a section of it at 2 µm, as a PNG whose pHYs chunk says so; the section
    keeps 60 % of the cut (a partial field of view, registered as a whole one is, in about
    three quarters of the time)."""
    import tifffile

    d = tmp_path_factory.mktemp("register")
    volume, tif = d / "vol.ome.zarr", d / "s.ome.tif"
    assert run("phantom", volume, "--shape", "96,128,128", "--material", "mg", "--seed", 3,
               "--no-progress").exit_code == 0  # fmt: skip
    assert run("phantom-section", volume, tif, "--pixel-size", 2, "--rotate", 40, "--seed", 1,
               "--fov", 0.6).exit_code == 0  # fmt: skip
    png = png_with_phys(d / "s.png", tifffile.imread(tif), 500_000, 500_000, 1)
    return volume, tif, png


def _register(volume, section, store, *extra):
    return run("register", volume, section, "-o", store, "--material", "mg", "--sample", "S1",
               "--axis", "y", *extra)  # fmt: skip


@pytest.mark.slow
def test_register_takes_a_png_sections_pixel_size_from_its_phys_chunk(phantom, tmp_path):
    import json

    from vstain_dask.phantom._section import read_section_truth
    from vstain_dask.register import score_against_truth

    volume, tif, png = phantom
    r = _register(volume, png, tmp_path / "pairs.zarr", "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert record["section_pixel_size"] == [2.0, 2.0]
    mean, _ = score_against_truth(record, read_section_truth(tif)["section_to_ct"])
    assert mean <= 3 * 5.0, f"mean error {mean:.1f} µm"


def test_register_refuses_a_png_section_without_a_size_or_with_another_and_writes_no_pair(
    phantom, tmp_path
):
    volume, _, png = phantom
    with Image.open(png) as im:
        im.save(tmp_path / "bare.png")  # the same pixels, no pHYs chunk
    store = tmp_path / "pairs.zarr"
    err = assert_one_line_error(
        _register(volume, tmp_path / "bare.png", store), "bare.png states no pixel size"
    )
    # register's own option, not import's
    assert "--section-pixel-size" in err and "--voxel-size" not in err, err
    assert not store.exists()
    err = assert_one_line_error(
        _register(volume, png, store, "--section-pixel-size", "3"), "--section-pixel-size 3"
    )
    assert "vstain-dask import --voxel-size-override" in err, err
    assert not store.exists()
