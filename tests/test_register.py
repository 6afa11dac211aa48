"""``vstain-dask phantom-section`` and ``vstain-dask register``: sections found in the CT.

Sections are cut from a phantom volume on known planes and written as pyramidal OME-TIFFs the
way slide scanners write them; the registration is scored against the true ``section_to_ct``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from test_pairs_cli import _assert_levels_figure

from vstain_dask import ngff
from vstain_dask.cli import main
from vstain_dask.phantom import Tissue
from vstain_dask.phantom._section import read_section_truth
from vstain_dask.preprocess import estimate_ct_levels
from vstain_dask.register import score_against_truth


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    out = tmp_path_factory.mktemp("reg") / "vol.ome.zarr"
    r = _run("phantom", out, "--shape", "96,128,128", "--material", "mg", "--seed", 3,
             "--no-progress")  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


def _section(volume, path, *extra):
    r = _run("phantom-section", volume, path, "--pixel-size", 2, *extra)
    assert r.exit_code == 0, r.output
    return path


def test_phantom_section_is_a_pyramidal_ome_tiff_with_its_truth(volume, tmp_path):
    from vstain_dask import ngff
    from vstain_dask.register._geometry import apply

    sec = _section(volume, tmp_path / "s.ome.tif", "--tilt", "6,-3", "--rotate", 70, "--flip",
                   "--shear", 0.01, "--seed", 2)  # fmt: skip
    with tifffile.TiffFile(sec) as tif:
        page = tif.series[0]
        assert tif.is_ome and page.levels and len(page.levels) >= 2
        assert tif.pages[0].is_tiled
        rgb = page.asarray()
    truth = read_section_truth(sec)
    assert truth["flip"] and truth["tilt"] == [6.0, -3.0] and truth["pixel_size"] == 2.0
    # the truth is right: section pixels as dark as the screw land on screw voxels
    m = np.array(truth["section_to_ct"])
    dark = np.argwhere(rgb.mean(axis=-1) < 40)[::7]
    labels = ngff.open_volume(volume / "labels" / "tissue")
    idx = np.rint(apply(m, dark.astype(float)) / 5.0).astype(int)
    ok = np.all((idx >= 0) & (idx < np.array(labels.shape)), axis=1)
    lab = np.asarray(labels.data.vindex[tuple(idx[ok].T)])
    assert ok.mean() > 0.9 and (lab == int(Tissue.SCREW)).mean() > 0.8
    # the file states its pixel size: import takes it without --voxel-size
    out = tmp_path / "s.ome.zarr"
    r = _run("import", sec, out)
    assert r.exit_code == 0, r.output
    assert ngff.open_volume(out).attrs["scale"]["x"] == pytest.approx(2.0)


def test_phantom_section_refuses_bad_cuts(volume, tmp_path):
    r = CliRunner().invoke(main, ["phantom-section", str(volume), str(tmp_path / "s.tif"),
                                  "--fov", "1.5"])  # fmt: skip
    assert r.exit_code == 2 and "--fov must be in (0, 1]" in r.output
    r = CliRunner().invoke(main, ["phantom-section", str(volume), str(tmp_path / "s.tif"),
                                  "--tilt", "a,b"])  # fmt: skip
    assert r.exit_code == 2 and "--tilt takes two angles" in r.output
    assert not (tmp_path / "s.tif").exists()


def test_register_finds_a_rotated_mirrored_sheared_section(volume, tmp_path):
    import zarr

    from vstain_dask.pairs import list_pairs

    sec = _section(volume, tmp_path / "s.ome.tif", "--rotate", 130, "--flip", "--shear", 0.01,
                   "--seed", 1)  # fmt: skip
    store = tmp_path / "pairs.zarr"
    r = _run("register", volume, sec, "-o", store, "--material", "mg", "--sample", "S1",
             "--axis", "y", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert record["flip"] is True and record["axis"] == "y"
    mean, _ = score_against_truth(record, read_section_truth(sec)["section_to_ct"])
    # the target is 2 CT voxels; this small phantom measures about 2 (see benchmarks/RESULTS.md)
    assert mean <= 3 * 5.0, f"mean error {mean:.1f} µm"
    pairs = list_pairs(store)
    assert [p["id"] for p in pairs] == ["S1-000"] and pairs[0]["voxel_size"] == 5.0
    g = zarr.open_group(store / "S1-000", mode="r")
    assert g.attrs["registration"]["section_to_ct"] == record["section_to_ct"]
    assert g["ct"].dtype == np.uint16 and g["histology"].shape[:2] == g["ct"].shape
    # the pair is normalized with the scan's levels, those stain estimates on the same volume
    scan = estimate_ct_levels(ngff.open_volume(volume).data, material="mg")
    recorded = g.attrs["normalization"]["ct_levels"]
    assert recorded["source"] == "auto" and recorded["confidence"] == scan.confidence
    assert (recorded["bone"], recorded["background"]) == (scan.bone, scan.background)
    assert record["ct_levels"] == recorded
    assert (tmp_path / "S1-000.register-qc.png").stat().st_size > 10_000
    # the scan's levels said on stderr, their QC figure beside the QC picture, its path recorded
    figure = tmp_path / "S1-000.levels.png"
    assert r.stderr == (
        f"CT levels: bone {scan.bone:.6g}, background {scan.background:.6g} "
        f"(auto, confidence {scan.confidence:.2f}); QC figure {figure}\n"
    )
    assert g.attrs["normalization"]["ct_levels_qc"] == record["ct_levels_qc"] == str(figure)
    _assert_levels_figure(figure)
    # the same pair id again is refused before any work, and the pair is kept
    again = CliRunner().invoke(main, ["register", str(volume), str(sec), "-o", str(store),
                                      "--material", "mg", "--sample", "S1", "--pair", "S1-000"])  # fmt: skip
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert len(list_pairs(store)) == 1


def test_register_refuses_a_section_of_nothing_in_the_ct(volume, tmp_path):
    rng = np.random.default_rng(0)
    # 300 µm of noise, about half the CT's width: a partial field of view is searched as a
    # whole one is; no pose matches it even on the coarse level, where the search stops
    noise = rng.integers(60, 200, (150, 150, 3), dtype=np.uint8)
    sec = tmp_path / "noise.ome.tif"
    tifffile.imwrite(sec, noise, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 2.0, "PhysicalSizeY": 2.0})  # fmt: skip
    store = tmp_path / "pairs.zarr"
    r = CliRunner().invoke(main, ["register", str(volume), str(sec), "-o", str(store),
                                  "--material", "mg", "--sample", "S1", "--axis", "y"])  # fmt: skip
    assert r.exit_code == 3, r.output
    assert "no plane of the CT matches the section" in r.output
    assert "best pose on the coarse level reaches mutual information" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not store.exists()


def test_register_refuses_a_section_wider_than_the_ct_in_one_line(volume, tmp_path):
    # 1 mm² of noise, all of it tissue, against a CT of 0.48 × 0.64 × 0.64 mm: no cut through
    # the CT could keep 70 % of it inside, refused before any search
    noise = np.random.default_rng(1).integers(60, 200, (500, 500, 3), dtype=np.uint8)
    sec = tmp_path / "wide.ome.tif"
    tifffile.imwrite(sec, noise, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 2.0, "PhysicalSizeY": 2.0})  # fmt: skip
    store = tmp_path / "pairs.zarr"
    r = CliRunner().invoke(main, ["register", str(volume), str(sec), "-o", str(store),
                                  "--material", "mg", "--sample", "S1", "--axis", "y",
                                  "--flip", "no"])  # fmt: skip
    assert r.exit_code == 3, r.output
    assert "larger than the CT's field of view" in r.output
    assert "its tissue covers 1 mm², no cut through the CT more than 0.626 mm²" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not store.exists()


def test_register_refuses_a_scan_without_trustworthy_levels_before_searching(tmp_path):
    flat = tmp_path / "flat.ome.zarr"
    ngff.write_volume(np.full((16, 80, 80), 7000, np.uint16), flat, axes="zyx",
                      scale=(5.0, 5.0, 5.0), units="micrometer")  # fmt: skip
    sec = tmp_path / "s.ome.tif"
    tifffile.imwrite(sec, np.full((200, 200, 3), 200, np.uint8), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 2.0, "PhysicalSizeY": 2.0})  # fmt: skip
    store = tmp_path / "pairs.zarr"
    r = CliRunner().invoke(main, ["register", str(flat), str(sec), "-o", str(store),
                                  "--material", "mg", "--sample", "S1"])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "could not estimate the CT levels" in r.output and "--ct-levels" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not store.exists()
    assert not list(tmp_path.glob("*.png"))


def test_register_says_what_is_missing(volume, tmp_path):
    r = CliRunner().invoke(main, ["register", str(volume), str(tmp_path / "none.tif"), "-o",
                                  str(tmp_path / "p.zarr"), "--material", "mg", "--sample", "S"])  # fmt: skip
    assert r.exit_code == 2 and "does not exist" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_an_unfinished_import_is_refused_by_register_and_pairs_add(volume, tmp_path):
    import shutil

    from vstain_dask import ngff

    sec = _section(volume, tmp_path / "s.ome.tif", "--seed", 1)
    section = tmp_path / "s.ome.zarr"
    assert _run("import", sec, section).exit_code == 0
    ct = tmp_path / "ct.ome.zarr"
    shutil.copytree(volume, ct)
    # what an interrupted import leaves: the completeness marker still false
    ngff.update_provenance(ct, complete=False, **{"import": {"source": "scan.h5"}})
    ngff.update_provenance(section, complete=False)
    store = tmp_path / "pairs.zarr"
    for args in (
        ["register", ct, sec, "-o", store, "--material", "mg", "--sample", "S"],
        ["register", volume, section, "-o", store, "--material", "mg", "--sample", "S"],
        [
            "pairs",
            "add",
            store,
            "--ct",
            ct,
            "--histology",
            sec,
            "--material",
            "mg",
            "--sample",
            "S",
        ],
    ):
        r = CliRunner().invoke(main, [str(a) for a in args])
        assert r.exit_code == 2, r.output
        assert "is incomplete" in r.output and "--overwrite" in r.output
        assert len(r.output.strip().splitlines()) == 1
    assert not store.exists()
