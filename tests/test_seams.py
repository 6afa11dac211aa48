"""Stripe and seam measures: exact against numpy on small volumes with awkward blocks, known
answers on synthetic stains (smooth; per-slice offsets; offsets per tile cell), bounded reads,
real stains of a small CT with tiny models, and the ``seams`` command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage

from vstain_dask import ngff
from vstain_dask.cli import main
from vstain_dask.errors import InputError
from vstain_dask.evaluate import compare_seams, format_seams, seam_metrics
from vstain_dask.tiling import tile_starts

SHAPE = (12, 48, 40)  # z, y, x


def _rgb_store(path: Path, rgb: np.ndarray, *, attrs=None, chunks=(3, 5, 16, 16)) -> Path:
    ngff.write_volume(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), path, axes="czyx",
                      kind="rgb", chunks=chunks, scale=(5.0, 5.0, 5.0), attrs=attrs)  # fmt: skip
    return path


def _smooth(seed: int = 0, shape=SHAPE, sigma: float = 2.5) -> np.ndarray:
    """(3, Z, Y, X) smooth isotropic colour field, 40-210."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(3):
        f = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
        out.append(40 + (f - f.min()) / np.ptp(f) * 170)
    return np.stack(out)


def _direct(v: np.ndarray, axis: int, borders: dict[int, np.ndarray]):
    """Whole-volume numpy reference: mean |Δ| per axis and border/interior means."""
    v = v.astype(np.float64)
    diff = [np.abs(np.diff(v, axis=1 + a)).mean() for a in range(3)]
    on, off = [], []
    for a, b in borders.items():
        d = np.moveaxis(np.abs(np.diff(v, axis=1 + a)), 1 + a, -1)  # right-hand pixel p = i + 1
        is_border = np.isin(np.arange(1, v.shape[1 + a]), b)
        on.append(d[..., is_border].ravel())
        off.append(d[..., ~is_border].ravel())
    return diff, np.concatenate(on).mean(), np.concatenate(off).mean()


def test_measures_equal_numpy_on_the_whole_volume(tmp_path):
    rgb = np.clip(np.rint(_smooth(1) + np.random.default_rng(2).normal(0, 6, (3, *SHAPE))), 0, 255)
    path = _rgb_store(tmp_path / "s.ome.zarr", rgb)
    # awkward blocks, all of them read: every neighbour pair is counted exactly once
    r = seam_metrics(path, tile=16, step=8, block=(5, 7, 6), max_blocks=10_000)
    borders = {a: np.union1d(tile_starts(n, tile=16, step=8), tile_starts(n, tile=16, step=8) + 16)
               for a, n in ((1, SHAPE[1]), (2, SHAPE[2]))}  # fmt: skip
    diff, on, off = _direct(rgb, 0, borders)
    assert [r.diff[d] for d in "zyx"] == pytest.approx(diff, rel=1e-9)
    assert r.stripe_index == pytest.approx(diff[0] / np.mean(diff[1:]), rel=1e-9)
    assert r.seam_border == pytest.approx(on, rel=1e-9)
    assert r.seam_interior == pytest.approx(off, rel=1e-9)
    assert r.seam_index == pytest.approx(on / off, rel=1e-9)
    # flicker with one block holding the whole volume
    one = seam_metrics(path, tile=16, step=8, block=SHAPE, max_blocks=1)
    shift = np.diff(rgb.astype(np.float64).mean(axis=(2, 3)), axis=1)
    jumps = np.abs(shift - np.median(shift, axis=1, keepdims=True))
    assert one.flicker == pytest.approx(jumps.mean(axis=0).mean(), rel=1e-6)
    assert one.blocks == 1 and one.voxels == int(np.prod(SHAPE))


def test_known_stripes_and_seams(tmp_path):
    base = _smooth(3)
    smooth = seam_metrics(_rgb_store(tmp_path / "smooth.zarr", base), tile=16, step=8,
                          block=(6, 24, 24))  # fmt: skip
    assert 0.85 < smooth.stripe_index < 1.15
    assert 0.85 < smooth.seam_index < 1.15

    # every slice shifted by its own colour offset: stripes
    offsets = np.random.default_rng(4).normal(0, 8, (3, SHAPE[0], 1, 1))
    striped = seam_metrics(_rgb_store(tmp_path / "striped.zarr", base + offsets), tile=16,
                           step=8, block=(6, 24, 24))  # fmt: skip
    assert striped.stripe_index > 2.0 * smooth.stripe_index
    assert striped.flicker > 4.0 * smooth.flicker
    assert 0.85 < striped.seam_index < 1.15  # no seams were added

    # each cell of the tile grid's borders shifted by its own offset: seams
    edges = {a: np.union1d(tile_starts(n, tile=16, step=8), tile_starts(n, tile=16, step=8) + 16)
             for a, n in ((1, SHAPE[1]), (2, SHAPE[2]))}  # fmt: skip
    cy = np.searchsorted(edges[1], np.arange(SHAPE[1]), side="right")
    cx = np.searchsorted(edges[2], np.arange(SHAPE[2]), side="right")
    cell = np.random.default_rng(5).normal(0, 12, (3, cy.max() + 1, cx.max() + 1))
    seamed = base + cell[:, cy][:, :, cx][:, None]
    r = seam_metrics(_rgb_store(tmp_path / "seamed.zarr", seamed), tile=16, step=8,
                     block=(6, 24, 24))  # fmt: skip
    assert r.seam_index > 2.0
    assert r.stripe_index < smooth.stripe_index  # the same in every slice: no stripes
    # on another grid the seams do not line up
    assert (
        seam_metrics(tmp_path / "seamed.zarr", tile=12, step=12, block=(6, 24, 24)).seam_index
        < r.seam_index
    )


def test_reads_are_bounded_and_seeded(tmp_path):
    path = _rgb_store(tmp_path / "s.zarr", _smooth(6))
    a = seam_metrics(path, block=(4, 16, 16), max_blocks=2, seed=1, tile=16, step=8)
    assert a.blocks == 2 and a.voxels <= 2 * 5 * 17 * 17
    assert a == seam_metrics(path, block=(4, 16, 16), max_blocks=2, seed=1, tile=16, step=8)
    other = seam_metrics(path, block=(4, 16, 16), max_blocks=2, seed=2, tile=16, step=8)
    assert other.diff != a.diff


def test_bad_inputs_name_the_problem(tmp_path, ct):
    path = _rgb_store(tmp_path / "s.zarr", _smooth(7))
    with pytest.raises(InputError, match="axis must be one of 'z', 'y', 'x'"):
        seam_metrics(path, axis="t")
    with pytest.raises(InputError, match=r"must be a stained volume with axes \(c, z, y, x\)"):
        seam_metrics(ct[0])
    with pytest.raises(InputError, match=r"step must be an integer in 1\.\.8, got 16"):
        seam_metrics(path, tile=8, step=16)
    with pytest.raises(InputError, match="labels must name each"):
        compare_seams([path, path], labels=["one"])


@pytest.mark.slow
def test_real_stains_of_a_small_ct(client, ct, model_path, tmp_path):
    """A ``--axes z`` stain, a fused one, blend modes, and slices alternating between two
    models (a stain with known stripes), of the shared small CT with tiny random models."""
    import torch

    from vstain_dask.models import GeneratorConfig, InputNormalization, build_generator, save_model
    from vstain_dask.stain import StainConfig, stain_to_zarr

    torch.set_num_threads(1)
    src, vol = ct
    other = tmp_path / "other.pt"
    save_model(other, generator=build_generator(GeneratorConfig(in_channels=1, ngf=4, n_blocks=1), seed=7),
               normalization=InputNormalization(low=0.0, high=4000.0, channels=1, ct_normalized=False),
               variant="mod-cyclegan")  # fmt: skip
    runs = {"z": ({"axes": "z"}, model_path), "zyx": ({"axes": "zyx"}, model_path),
            "gaussian": ({"blend": "gaussian"}, model_path),
            "no-overlap": ({"step": 16}, model_path), "other": ({}, other)}  # fmt: skip
    paths = {}
    for name, (options, model) in runs.items():
        config = StainConfig(tile=16, step=options.pop("step", 8), batch_size=4, **options)
        paths[name] = stain_to_zarr(src, tmp_path / f"{name}.ome.zarr", model=model, config=config,
                                    client=client, chunks=(2, 16, 16), progress=False).output  # fmt: skip
    # slices alternating between the two models
    a = ngff.open_volume(paths["z"]).data.compute()
    b = ngff.open_volume(paths["other"]).data.compute()
    mixed = a.copy()
    mixed[:, 1::2] = b[:, 1::2]
    paths["alternating"] = _rgb_store(tmp_path / "alternating.ome.zarr", mixed,
                                      attrs={"input": {"path": str(src)}})  # fmt: skip
    names = ["z", "zyx", "gaussian", "no-overlap", "alternating"]
    reports = dict(zip(names, compare_seams([paths[n] for n in names], labels=names,
                                            block=(5, 16, 16), reference="auto"), strict=True))  # fmt: skip
    # the input CT on the same blocks: one reference for all
    ct_index = {r.ct_stripe_index for r in reports.values()}
    assert len(ct_index) == 1 and 0.8 < ct_index.pop() < 1.2
    # each stain's own tile grid comes from its provenance
    assert reports["no-overlap"].step == 16 and reports["z"].step == 8 and reports["z"].tile == 16
    # known stripes stand out
    assert reports["alternating"].stripe_index > 1.5 * reports["z"].stripe_index
    assert reports["alternating"].flicker > reports["z"].flicker
    # tiles that do not overlap leave seams; overlapping tiles blend them away
    assert reports["no-overlap"].seam_index > 1.2
    assert reports["no-overlap"].seam_index > reports["z"].seam_index
    assert reports["no-overlap"].seam_index > reports["gaussian"].seam_index
    # fusing three axes averages away part of the slice-to-slice change of a z stain
    assert reports["zyx"].diff["z"] < reports["z"].diff["z"]
    table = format_seams(list(reports.values()))
    assert table.count("\n") == 1 + len(names) and "| alternating | z |" in table


def test_cli_seams(tmp_path):
    a = _rgb_store(tmp_path / "a.zarr", _smooth(8))
    b = _rgb_store(
        tmp_path / "b.zarr", _smooth(8) + np.random.default_rng(9).normal(0, 8, (3, SHAPE[0], 1, 1))
    )
    out = tmp_path / "seams.json"
    exe = Path(sys.executable).with_name("vstain-dask")
    proc = subprocess.run(
        [str(exe), "seams", str(a), str(b), "--tile", "16", "--step", "8", "--block", "6,24,24",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "| a.zarr | z |" in proc.stdout and "| b.zarr | z |" in proc.stdout
    doc = json.loads(out.read_text())
    direct = compare_seams([a, b], tile=16, step=8, block=(6, 24, 24))
    assert [d["stripe_index"] for d in doc] == pytest.approx([r.stripe_index for r in direct])
    assert doc[1]["stripe_index"] > doc[0]["stripe_index"]
    assert doc[0]["ct_stripe_index"] is None  # no CT recorded
    runner = CliRunner()
    r = runner.invoke(main, ["seams", str(tmp_path / "missing.zarr")])
    assert r.exit_code == 2 and "missing.zarr does not exist" in r.output
    r = runner.invoke(main, ["seams", str(a), "--tile", "8", "--step", "16"])
    assert r.exit_code == 2 and "step must be an integer in 1..8, got 16" in r.output
