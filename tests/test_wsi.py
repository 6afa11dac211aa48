"""Whole-slide images in: pyramidal TIFF, OME-TIFF, Aperio SVS, OpenSlide formats, PNG; the
pixel size each file states; refusals through the command line; never a half-written image."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from vstain_dask.cli import main
from vstain_dask.ngff import import_volume, open_volume

#: odd sizes, tiles that do not divide them, chunks that are neither tiles nor levels
SHAPE = (520, 601, 3)  # four output levels: 601, 301, 151, 76
TILE = (32, 48)
CHUNKS = "64,96"


@pytest.fixture
def rgb() -> np.ndarray:
    # smooth enough to compress, random enough that a wrong offset or a mean shows
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(SHAPE[0]), np.arange(SHAPE[1]))[..., None] * [1, 2, 3]
    return ((ramp + rng.integers(0, 40, SHAPE)) % 256).astype(np.uint8)


def file_levels(rgb: np.ndarray, n: int) -> list[np.ndarray]:
    """Levels as a scanner might store them: every second pixel, so that a level copied from
    the file differs from the 2x2 mean this package computes."""
    return [rgb[:: 2**k, :: 2**k] for k in range(n)]


def write_pyramid_tiff(path, levels, *, subifds: bool, compression="zlib", **kwargs) -> None:
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        first, *rest = levels
        opts = {"tile": TILE, "photometric": "rgb", "compression": compression}
        tw.write(first, subifds=len(rest) if subifds else None, **opts, **kwargs)
        for level in rest:
            tw.write(level, subfiletype=1, **opts)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in err, err
    return err


def as_cyx(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 0, 1)


def mean2(a: np.ndarray) -> np.ndarray:
    """The package's 2x2 mean (edge pixels repeated, rounded half to even)."""
    p = np.pad(a, [(0, a.shape[0] % 2), (0, a.shape[1] % 2), (0, 0)], mode="edge").astype(float)
    m = (p[::2, ::2] + p[1::2, ::2] + p[::2, 1::2] + p[1::2, 1::2]) / 4
    return np.rint(m).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# formats


@pytest.mark.parametrize("subifds", [True, False], ids=["subifds", "subfiletype-pages"])
def test_pyramidal_tiff_level0_exact_and_its_own_levels_reused(tmp_path, rgb, subifds):
    """Used to fail with "No array found in store ZarrTiffStore" after creating the store."""
    src = tmp_path / "slide.tif"
    write_pyramid_tiff(src, file_levels(rgb, 3), subifds=subifds)
    out = tmp_path / "slide.ome.zarr"
    r = run("import", src, out, "--voxel-size", "0.5", "--chunks", CHUNKS)
    assert r.exit_code == 0, r.output
    assert "pixel size 0.5 µm from the command line" in r.stdout
    vol = open_volume(out)
    assert vol.dims == ("c", "y", "x") and vol.attrs["kind"] == "rgb"
    assert vol.attrs["scale"] == {"c": 1.0, "y": 0.5, "x": 0.5}
    assert vol.data.chunks == ((3,), (64,) * 8 + (8,), (96,) * 6 + (25,))
    np.testing.assert_array_equal(vol.values, as_cyx(rgb))
    record = vol.attrs["vstain"]["import"]
    assert record["levels_from_file"] == [1, 2] and vol.attrs["vstain"]["complete"] is True
    assert record["format"] == "pyramidal TIFF slide.tif (3 levels)"
    # levels 1 and 2 are the file's (subsampled), level 3 the mean of the file's level 2
    for k in (1, 2):
        np.testing.assert_array_equal(
            open_volume(out, level=k).values, as_cyx(rgb[:: 2**k, :: 2**k])
        )
    np.testing.assert_array_equal(open_volume(out, level=3).values, as_cyx(mean2(rgb[::4, ::4])))


def test_levels_that_are_not_2x_steps_are_computed(tmp_path, rgb):
    src = tmp_path / "slide.tif"
    # a 4x step after level 0, as Aperio scanners write: nothing to reuse
    write_pyramid_tiff(src, [rgb, rgb[::4, ::4]], subifds=True)
    out = import_volume(src, tmp_path / "o.zarr", voxel_size=1, chunks=(64, 96))
    assert open_volume(out).attrs["vstain"]["import"]["levels_from_file"] == []
    np.testing.assert_array_equal(open_volume(out).values, as_cyx(rgb))
    np.testing.assert_array_equal(open_volume(out, level=1).values, as_cyx(mean2(rgb)))


@pytest.mark.parametrize(
    ("size", "unit", "expected"), [(250, "nm", 0.25), (0.4, "µm", 0.4), (None, None, None)]
)
def test_ome_tiff_pyramid_and_its_physical_size(tmp_path, rgb, size, unit, expected):
    src = tmp_path / "slide.ome.tif"
    md = {"axes": "YXS"}
    if size is not None:
        md |= {"PhysicalSizeX": size, "PhysicalSizeXUnit": unit, "PhysicalSizeY": size,
               "PhysicalSizeYUnit": unit}  # fmt: skip
    write_pyramid_tiff(src, file_levels(rgb, 2), subifds=True, metadata=md)
    out = tmp_path / "o.zarr"
    r = run("import", src, out, "--chunks", CHUNKS)
    if expected is None:
        assert_one_line_error(r, "slide.ome.tif states no pixel size", "--voxel-size")
        assert not out.exists()
        return
    assert r.exit_code == 0, r.output
    assert f"pixel size {expected:g} µm from the OME metadata" in r.stdout
    vol = open_volume(out)
    assert vol.attrs["scale"] == {"c": 1.0, "y": expected, "x": expected}
    assert vol.attrs["vstain"]["import"]["voxel_size_source"] == "the OME metadata"
    assert vol.attrs["vstain"]["import"]["format"] == "OME-TIFF slide.ome.tif (2 levels)"
    np.testing.assert_array_equal(vol.values, as_cyx(rgb))
    np.testing.assert_array_equal(open_volume(out, level=1).values, as_cyx(rgb[::2, ::2]))


def test_planar_rgb_ome_tiff(tmp_path, rgb):
    src = tmp_path / "planar.ome.tif"
    tifffile.imwrite(src, as_cyx(rgb), photometric="rgb", planarconfig="separate", tile=TILE,
                     compression="zlib", metadata={"axes": "CYX", "PhysicalSizeX": 0.5,
                                                   "PhysicalSizeY": 0.5})  # fmt: skip
    vol = open_volume(import_volume(src, tmp_path / "o.zarr", chunks=(64, 96)))
    assert vol.dims == ("c", "y", "x") and vol.attrs["scale"]["x"] == 0.5
    np.testing.assert_array_equal(vol.values, as_cyx(rgb))


def _svs(path, levels, mpp="0.4990", compression="zlib") -> None:
    head = "Aperio Image Library v12.0.15\r\n"
    h, w = levels[0].shape[:2]
    opts = {"photometric": "rgb", "compression": compression, "metadata": None}
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            levels[0],
            tile=TILE,
            **opts,
            description=f"{head}{w}x{h} [0,0 {w}x{h}] (32x48)|AppMag = 20|MPP = {mpp}",
        )
        tw.write(levels[0][::8, ::8], description=f"{head}thumbnail", **opts)  # thumbnail
        for level in levels[1:]:
            tw.write(level, tile=TILE, description=f"{head}{w}x{h} -> {level.shape[1]}x"
                     f"{level.shape[0]}", **opts)  # fmt: skip
        tw.write(levels[0][::4, ::4], subfiletype=1, description=f"{head}label", **opts)


@pytest.mark.parametrize("compression", ["zlib", "jpeg"])
def test_aperio_svs_with_mpp(tmp_path, rgb, compression):
    if compression == "jpeg":
        pytest.importorskip("imagecodecs", reason="JPEG tiles need imagecodecs (the wsi extra)")
    src = tmp_path / "slide.svs"
    _svs(src, file_levels(rgb, 3), compression=compression)
    r = run("import", src, tmp_path / "o.zarr", "--chunks", CHUNKS)
    assert r.exit_code == 0, r.output
    assert "pixel size 0.499 µm from the Aperio MPP" in r.stdout
    vol = open_volume(tmp_path / "o.zarr")
    # the source pixels are what the file decodes to (JPEG is lossy)
    np.testing.assert_array_equal(vol.values, as_cyx(tifffile.imread(src)))
    assert vol.attrs["vstain"]["import"]["levels_from_file"] == [1, 2]
    assert vol.attrs["vstain"]["import"]["format"] == "Aperio SVS slide.svs (3 levels)"
    with tifffile.TiffFile(src) as tif:
        np.testing.assert_array_equal(
            open_volume(tmp_path / "o.zarr", level=2).values,
            as_cyx(tif.series[0].levels[2].asarray()),
        )


def test_jpeg_tiles_without_the_codecs_name_the_extra(tmp_path, rgb):
    pytest.importorskip("imagecodecs", reason="writing JPEG tiles needs imagecodecs")
    src = tmp_path / "slide.svs"
    _svs(src, file_levels(rgb, 2), compression="jpeg")
    out = tmp_path / "o.zarr"
    # tifffile falls back to its own few decoders when imagecodecs cannot be imported
    hide = "import sys; sys.modules['imagecodecs'] = None; from vstain_dask.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", hide, "import", str(src), str(out)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {src}: cannot decode region")
    assert err.endswith("the codecs for it are not installed: pip install 'vstain-dask[wsi]'")
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("unit", "per_unit", "source"),
    [("INCH", 25_400 / 0.25, "inch"), ("CENTIMETER", 10_000 / 0.25, "centimeter")],
)
def test_tiff_resolution_tags(tmp_path, rgb, unit, per_unit, source):
    src = tmp_path / "section.tif"
    tifffile.imwrite(src, rgb, photometric="rgb", resolution=(per_unit, per_unit),
                     resolutionunit=unit)  # fmt: skip
    r = run("import", src, tmp_path / "o.zarr")
    assert r.exit_code == 0, r.output
    assert f"pixel size 0.25 µm from the TIFF resolution tags (pixels per {source})" in r.stdout
    vol = open_volume(tmp_path / "o.zarr")
    assert vol.attrs["scale"]["y"] == pytest.approx(0.25)
    np.testing.assert_array_equal(vol.values, as_cyx(rgb))


def test_placeholder_resolutions_state_no_size(tmp_path, rgb):
    # 72 pixels per inch is what writers put in when they know no size, not a 353 µm pixel
    src = tmp_path / "screen.tif"
    tifffile.imwrite(src, rgb, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    assert_one_line_error(run("import", src, tmp_path / "o.zarr"), "states no pixel size")
    # and tifffile's default (1 pixel per no unit)
    tifffile.imwrite(src, rgb, photometric="rgb")
    assert_one_line_error(run("import", src, tmp_path / "o.zarr"), "states no pixel size")


def test_png_keeps_working_and_needs_a_voxel_size(tmp_path, rgb):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "section.png", rgb)
    out = tmp_path / "o.zarr"
    assert_one_line_error(
        run("import", tmp_path / "section.png", out), "section.png states no pixel size",
        "--voxel-size (one number or Y,X",
    )  # fmt: skip
    assert not out.exists()
    r = run("import", tmp_path / "section.png", out, "--voxel-size", "0.88")
    assert r.exit_code == 0, r.output
    vol = open_volume(out)
    assert vol.attrs["scale"]["x"] == 0.88 and vol.attrs["kind"] == "rgb"
    np.testing.assert_array_equal(vol.values, as_cyx(rgb))


# --------------------------------------------------------------------------------------------
# CT stacks: the voxel size from their metadata too


def test_imagej_stack_states_its_voxel_size(tmp_path):
    vol = np.random.default_rng(1).integers(0, 4000, (6, 20, 24), dtype=np.uint16)
    src = tmp_path / "ct.tif"
    tifffile.imwrite(src, vol, imagej=True, resolution=(1 / 2.5, 1 / 2.5),
                     metadata={"unit": "micron", "spacing": 5.0, "axes": "ZYX"})  # fmt: skip
    r = run("import", src, tmp_path / "o.zarr", "--chunks", "3,7,6")
    assert r.exit_code == 0, r.output
    assert "voxel size 5,2.5,2.5 µm from the ImageJ metadata" in r.stdout
    out = open_volume(tmp_path / "o.zarr")
    assert out.attrs["scale"] == {"z": 5.0, "y": 2.5, "x": 2.5}
    np.testing.assert_array_equal(out.values, vol)
    # the same in millimetres: converted, so it agrees
    r = run("import", src, tmp_path / "mm.zarr", "--voxel-size", "0.005,0.0025,0.0025",
            "--unit", "mm")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert open_volume(tmp_path / "mm.zarr").attrs["scale"]["x"] == 0.0025


def test_slice_folder_with_resolution_tags_needs_the_z_spacing(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in range(4):
        tifffile.imwrite(folder / f"s{i}.tif", np.full((8, 8), i, np.uint16),
                         resolution=(10_000 / 5, 10_000 / 5), resolutionunit="CENTIMETER")  # fmt: skip
    out = tmp_path / "o.zarr"
    assert_one_line_error(run("import", folder, out), "gives the Y,X pixel size", "no Z spacing",
                          "--voxel-size (Z,Y,X)")  # fmt: skip
    assert run("import", folder, out, "--voxel-size", "5").exit_code == 0
    assert open_volume(out).attrs["scale"] == {"z": 5.0, "y": 5.0, "x": 5.0}
    assert_one_line_error(run("import", folder, tmp_path / "p.zarr", "--voxel-size", "2"),
                          "--voxel-size 2 µm was given but slices says 5 µm")  # fmt: skip


def test_ome_zarr_source_keeps_its_scale(tmp_path):
    from vstain_dask.ngff import write_volume

    src = write_volume(np.zeros((4, 6, 6), np.uint16), tmp_path / "a.zarr", scale=(2, 1, 1),
                       units="millimeter")  # fmt: skip
    r = run("import", src, tmp_path / "b.zarr")
    assert r.exit_code == 0, r.output
    assert "voxel size 2000,1000,1000 µm from the OME-Zarr scale" in r.stdout


# --------------------------------------------------------------------------------------------
# refusals, as one line with exit 2


@pytest.fixture
def ome(tmp_path, rgb):
    src = tmp_path / "slide.ome.tif"
    md = {"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    write_pyramid_tiff(src, file_levels(rgb, 2), subifds=True, metadata=md)
    return src


def test_a_given_size_that_disagrees_with_the_file_is_refused(tmp_path, ome):
    out = tmp_path / "o.zarr"
    assert_one_line_error(
        run("import", ome, out, "--voxel-size", "0.506"),
        "--voxel-size 0.506 µm was given but slide.ome.tif says 0.5 µm (the OME metadata)",
        "--voxel-size-override",
    )
    assert not out.exists()
    # within 1 %: the given size is used, and said to agree
    r = run("import", ome, out, "--voxel-size", "0.504")
    assert r.exit_code == 0, r.output
    assert "pixel size 0.504 µm from the command line (agrees with the OME metadata)" in r.stdout
    r = run("import", ome, out, "--voxel-size", "0.6", "--voxel-size-override", "--overwrite")
    assert r.exit_code == 0, r.output
    assert "pixel size 0.6 µm from the command line (forced)" in r.stdout
    assert open_volume(out).attrs["scale"]["x"] == 0.6
    assert_one_line_error(run("import", ome, tmp_path / "p.zarr", "--voxel-size-override"),
                          "--voxel-size-override", "needs --voxel-size")  # fmt: skip


@pytest.mark.parametrize(
    "content",
    [b"not a tiff at all", b"II*\x00" + b"\xff" * 12],
    ids=["garbage", "broken-header"],
)
def test_an_unreadable_file_is_refused(tmp_path, content):
    src = tmp_path / "slide.svs"
    src.write_bytes(content)
    assert_one_line_error(run("import", src, tmp_path / "o.zarr", "--voxel-size", "1"),
                          "slide.svs is not a readable TIFF file")  # fmt: skip
    assert not (tmp_path / "o.zarr").exists()


def test_formats_no_reader_handles_are_refused_with_what_to_do(tmp_path):
    (tmp_path / "slide.vsi").write_bytes(b"x")
    assert_one_line_error(run("import", tmp_path / "slide.vsi", tmp_path / "o.zarr"),
                          "Olympus VSI", "convert it to OME-TIFF")  # fmt: skip


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vstain_dask.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_a_failed_import_is_never_passed_off_as_complete(tmp_path, rgb, model_path):
    """A slide whose last tile is damaged: the first tile decodes, so the import starts; it
    stops with one line and leaves a store that info and stain refuse."""
    src = tmp_path / "slide.tif"
    write_pyramid_tiff(src, file_levels(rgb, 2), subifds=True)
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[-1], page.databytecounts[-1]
    with open(src, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * count)
    out = tmp_path / "slide.ome.zarr"
    r = _cli("import", src, out, "--voxel-size", "0.5", "--chunks", CHUNKS)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {src}: cannot decode region")
    assert "of level 0" in err and "the file is damaged or truncated" in err
    assert open_volume(out, allow_incomplete=True).attrs["vstain"]["complete"] is False
    redo = f"is incomplete: its import from {src} did not finish; run the `vstain-dask import`"
    info = _cli("info", out)
    assert info.returncode == 2 and info.stderr.strip().startswith(f"error: {out} {redo}")
    stain = _cli("stain", out, "--model", model_path, "-o", tmp_path / "s.zarr")
    assert stain.returncode == 2 and stain.stderr.strip().startswith(f"error: {out} {redo}")
    assert not (tmp_path / "s.zarr").exists()


# --------------------------------------------------------------------------------------------
# the optional OpenSlide reader


def test_vendor_formats_without_the_extra_name_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide raises ImportError
    (tmp_path / "slide.mrxs").write_bytes(b"x")
    assert_one_line_error(run("import", tmp_path / "slide.mrxs", tmp_path / "o.zarr"),
                          "slide.mrxs is a .mrxs slide", "pip install 'vstain-dask[wsi]'")  # fmt: skip


def test_vendor_formats_through_openslide(tmp_path, rgb):
    """OpenSlide recognises files by content: a generic tiled TIFF under a vendor suffix takes
    the OpenSlide path end to end."""
    pytest.importorskip("openslide", reason="the wsi extra is not installed")
    src = tmp_path / "slide.czi"
    # even sizes: OpenSlide reads a level exactly only where its downsample is exactly 2
    rgb = rgb[:512, :600]
    with tifffile.TiffWriter(src) as tw:  # uncompressed: exact pixels through OpenSlide
        tw.write(rgb, tile=(32, 32), photometric="rgb", metadata=None)
        tw.write(rgb[::2, ::2], tile=(32, 32), photometric="rgb", subfiletype=1, metadata=None)
    out = tmp_path / "o.zarr"
    assert_one_line_error(run("import", src, out), "slide.czi states no pixel size")
    r = run("import", src, out, "--voxel-size", "0.25", "--chunks", CHUNKS)
    assert r.exit_code == 0, r.output
    vol = open_volume(out)
    assert vol.attrs["vstain"]["import"]["format"].endswith("slide.czi via OpenSlide (2 levels)")
    assert vol.attrs["vstain"]["import"]["levels_from_file"] == [1]
    np.testing.assert_array_equal(vol.values, as_cyx(rgb))
    np.testing.assert_array_equal(open_volume(out, level=1).values, as_cyx(rgb[::2, ::2]))


# --------------------------------------------------------------------------------------------
# bounded memory on a real 20k x 20k slide

_BIG = 20_000
_BIG_TILE = 512

_MEMORY_CHILD = textwrap.dedent(
    """
    import sys, time
    from vstain_dask.cli import main

    t = time.perf_counter()
    try:
        main(["import", *sys.argv[1:]], standalone_mode=False)
    finally:
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        print(f"PEAK {peak * 1024} SECONDS {time.perf_counter() - t:.1f}", file=sys.stderr)
    """
)


def _big_tile(y: int, x: int) -> np.ndarray:
    yy = np.arange(y, y + _BIG_TILE)[:, None, None]
    xx = np.arange(x, x + _BIG_TILE)[None, :, None]
    return ((yy * 3 + xx * 5 + np.array([0, 85, 170])) % 251).astype(np.uint8)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_20k_slide_imports_in_bounded_memory(tmp_path):
    """A 20000 x 20000 RGB pyramidal BigTIFF (1.1 GiB of pixels) imports with a peak resident
    size well under 1 GB, and its pixels arrive exactly."""
    src = tmp_path / "big.tif"
    n = -(-_BIG // _BIG_TILE)
    tiles = (_big_tile(j * _BIG_TILE, i * _BIG_TILE) for j in range(n) for i in range(n))
    with tifffile.TiffWriter(src, bigtiff=True) as tw:
        tw.write(tiles, shape=(_BIG, _BIG, 3), dtype=np.uint8, tile=(_BIG_TILE, _BIG_TILE),
                 photometric="rgb", compression="zlib", resolution=(20_000, 20_000),
                 resolutionunit="CENTIMETER")  # fmt: skip
    out = tmp_path / "big.ome.zarr"
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(src), str(out)],
                          capture_output=True, text=True, env=env, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stderr.split("PEAK ")[1].split()[0])
    print(proc.stderr.strip().splitlines()[-1])
    assert peak < 700 * 2**20, f"peak resident memory {peak / 2**20:.0f} MiB"
    vol = open_volume(out)
    assert vol.shape == (3, _BIG, _BIG) and vol.attrs["scale"]["x"] == pytest.approx(0.5)
    for y, x in [(0, 0), (9728, 10240), (_BIG - _BIG_TILE, _BIG - _BIG_TILE)]:
        got = vol.data[:, y : y + _BIG_TILE, x : x + _BIG_TILE].compute()
        np.testing.assert_array_equal(got, as_cyx(_big_tile(y, x)))
