"""The staining engine: exactness against whole-plane inference, block/worker invariance, axis
fusion, the lazy API, resume, refusal to overwrite, and the command line.

The model is a real (tiny, randomly initialised) ResNet generator saved as a real checkpoint; the
volumes are real OME-Zarr stores on disk; blocks run on a real two-worker LocalCluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from scipy import ndimage

from vstain_dask import ngff
from vstain_dask.cli import main
from vstain_dask.errors import InputError, OutputExistsError
from vstain_dask.models import load_model
from vstain_dask.stain import (
    StainConfig,
    _Ledger,
    default_batch_size,
    plan_blocks,
    stain,
    stain_to_zarr,
)
from vstain_dask.tiling import TileGrid, predict_region

TILE, STEP, BATCH = 16, 8, 4
SHAPE = (10, 40, 36)  # the `ct` fixture of conftest.py
CHUNKS = (2, 16, 16)


def _config(**kw):
    return StainConfig(tile=TILE, step=STEP, batch_size=BATCH, **kw)


def _reference(vol: np.ndarray, model_path, axis: str) -> np.ndarray:
    """Whole-plane tiled inference along one axis: (3, Z, Y, X) float32 in [-1, 1]."""
    m = load_model(model_path)
    a = "zyx".index(axis)
    planes = np.moveaxis(vol.astype(np.float32), a, 0)
    grid = TileGrid(extent=planes.shape[1:], tile=TILE, step=STEP)
    out = np.empty((3, *planes.shape), np.float32)
    for i, plane in enumerate(planes):
        out[:, i] = predict_region(
            plane[None, None],
            lambda t: m.generator(m.to_input(t)),
            grid=grid,
            batch_size=BATCH,
            out_channels=3,
        )[0]
    return np.moveaxis(out, 1, 1 + a)


def _u8(pred: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((pred + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _stained(path) -> np.ndarray:
    return np.asarray(zarr.open_array(store=str(path), path="0", mode="r")[...])


def test_single_axis_equals_whole_plane_inference(client, ct, model_path, tmp_path):
    src, vol = ct
    report = stain_to_zarr(
        src, tmp_path / "out.ome.zarr", model=model_path, config=_config(), client=client,
        chunks=CHUNKS, progress=False,
    )  # fmt: skip
    out = ngff.open_volume(report.output)
    assert out.dims == ("c", "z", "y", "x")
    assert out.dtype == np.uint8 and out.shape == (3, *SHAPE)
    assert out.attrs["scale"]["z"] == 5.0 and out.attrs["units"]["x"] == "micrometer"
    assert out.attrs["vstain"]["complete"] is True
    assert out.attrs["vstain"]["model"]["sha256"] == load_model(model_path).sha256
    assert out.attrs["n_levels"] >= 1
    np.testing.assert_array_equal(_stained(report.output), _u8(_reference(vol, model_path, "z")))
    # the tiles computed are exactly the grid's tiles (no tile computed twice for one axis)
    assert report.tiles == SHAPE[0] * TileGrid(extent=SHAPE[1:], tile=TILE, step=STEP).n_tiles


def test_block_shape_and_worker_count_do_not_change_bytes(client, ct, model_path, tmp_path):
    from distributed import Client, LocalCluster

    src, _ = ct
    runs = {}
    for name, block in (("planes", None), ("cubes", (2, 16, 16)), ("slabs", (4, 32, 16))):
        cfg = _config(block=block)
        stain_to_zarr(src, tmp_path / f"{name}.zarr", model=model_path, config=cfg,
                      client=client, chunks=CHUNKS, progress=False)  # fmt: skip
        runs[name] = _stained(tmp_path / f"{name}.zarr")
    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as one, Client(one) as c1:  # fmt: skip
        stain_to_zarr(src, tmp_path / "one.zarr", model=model_path, config=_config(block=(2, 16, 16)),
                      client=c1, chunks=CHUNKS, progress=False)  # fmt: skip
        runs["one worker"] = _stained(tmp_path / "one.zarr")
    for name, arr in runs.items():
        np.testing.assert_array_equal(arr, runs["planes"], err_msg=name)


def test_fused_passes_is_mean_of_single_axis_runs(client, ct, model_path, tmp_path):
    """The default fusion: one slab pass per axis, then the rounded mean of the 8-bit runs."""
    src, vol = ct
    cfg = _config(axes="zyx", uncertainty=True, alpha=True)
    report = stain_to_zarr(src, tmp_path / "passes.zarr", model=model_path, config=cfg,
                           client=client, chunks=CHUNKS, progress=False)  # fmt: skip
    runs = np.stack([_u8(_reference(vol, model_path, a)) for a in "zyx"]).astype(np.float32)
    expected = np.rint(runs.mean(axis=0, dtype=np.float32)).astype(np.uint8)
    got = _stained(report.output)
    np.testing.assert_array_equal(got[:3], expected)
    alpha = np.rint(255.0 - expected.astype(np.float32).mean(axis=0, dtype=np.float32))
    np.testing.assert_array_equal(got[3], alpha.astype(np.uint8))
    spread = np.asarray(zarr.open_array(store=str(report.output / "uncertainty"), path="0")[...])
    expect_spread = np.rint(runs.std(axis=0, dtype=np.float32).mean(axis=0, dtype=np.float32))
    assert np.abs(spread.astype(int) - expect_spread).max() <= 1  # float32 std: order of sums
    # each slab pass computed every tile of its axis exactly once
    n_tiles = sum(
        SHAPE["zyx".index(a)] * TileGrid(extent=[SHAPE[d] for d in range(3) if d != "zyx".index(a)],
                                         tile=TILE, step=STEP).n_tiles
        for a in "zyx"
    )  # fmt: skip
    assert report.tiles == n_tiles
    assert not (tmp_path / "passes.zarr.vstain-job").exists()  # passes cleaned up


def test_fused_blocks_is_mean_of_single_axis_predictions(client, ct, model_path, tmp_path):
    src, vol = ct
    cfg = _config(axes="zyx", uncertainty=True, block=(4, 16, 16), fusion="blocks")
    report = stain_to_zarr(src, tmp_path / "fused.zarr", model=model_path, config=cfg,
                           client=client, chunks=CHUNKS, progress=False)  # fmt: skip
    preds = np.stack([_reference(vol, model_path, a) for a in "zyx"])
    expected = _u8(preds.mean(axis=0, dtype=np.float64).astype(np.float32))
    got = _stained(report.output)
    np.testing.assert_array_equal(got, expected)
    # fused really differs from a single axis (the axes disagree), and the spread says so
    assert np.mean(got != _u8(preds[0])) > 0.01
    spread = np.asarray(zarr.open_array(store=str(report.output / "uncertainty"), path="0")[...])
    expect_spread = np.clip(
        np.rint((preds.std(axis=0, dtype=np.float64) * 127.5).mean(axis=0)), 0, 255
    )
    np.testing.assert_array_equal(spread, expect_spread.astype(np.uint8))


def test_prefilter_alpha_and_blocks(client, ct, model_path, tmp_path):
    src, vol = ct
    smooth = ndimage.gaussian_filter(vol.astype(np.float32), 1.0, mode="reflect", truncate=4.0)
    expected = _u8(_reference(smooth, model_path, "z"))
    for block in (None, (2, 16, 16)):
        cfg = _config(prefilter_sigma=1.0, alpha=True, block=block)
        out = tmp_path / f"pf-{block}.zarr"
        stain_to_zarr(src, out, model=model_path, config=cfg, client=client, chunks=CHUNKS,
                      progress=False)  # fmt: skip
        got = _stained(out)
        assert got.shape == (4, *SHAPE)
        np.testing.assert_array_equal(got[:3], expected)
        alpha = np.rint(255.0 - expected.mean(axis=0, dtype=np.float32)).astype(np.uint8)
        np.testing.assert_array_equal(got[3], alpha)


def test_mask_paints_outside_the_sample(client, ct, model_path, tmp_path):
    from vstain_dask.preprocess import ct_tissue_mask

    _, smooth = ct
    # a bone ring (bright) around a dark centre, on background, with the fixture's texture
    zz, yy, xx = np.indices(SHAPE)
    r = np.hypot(yy - 20, xx - 17)
    vol = np.where((r > 5) & (r < 12), 3000, 600).astype(np.float32)
    vol = (vol + (smooth.astype(np.float32) - smooth.mean()) * 0.2).astype(np.uint16)
    src = tmp_path / "ring.ome.zarr"
    ngff.write_volume(vol, src, axes="zyx", chunks=(5, 16, 16))
    cfg = _config(mask=True, mask_colour=(250, 240, 230), block=(2, 16, 16))
    report = stain_to_zarr(src, tmp_path / "masked.zarr", model=model_path, config=cfg,
                           client=client, chunks=CHUNKS, progress=False)  # fmt: skip
    expected_mask = np.stack([ct_tissue_mask(p) for p in vol])
    assert 0.05 < expected_mask.mean() < 0.95
    labels = ngff.open_volume(report.output / "labels" / "sample")
    np.testing.assert_array_equal(np.asarray(labels.data), expected_mask.astype(np.uint8))
    got = _stained(report.output)
    plain = _u8(_reference(vol, model_path, "z"))
    outside = ~expected_mask
    assert (got[:, outside] == np.array([250, 240, 230], np.uint8)[:, None]).all()
    np.testing.assert_array_equal(got[:, expected_mask], plain[:, expected_mask])


@pytest.mark.parametrize(("axes", "fusion"), [("z", "passes"), ("zy", "blocks")])
def test_bf16_autocast_stain_stays_close_to_float32(client, ct, model_path, tmp_path, axes,
                                                    fusion):  # fmt: skip
    """The precision CUDA runs by default (bf16 autocast, channels-last), on the CPU workers.

    One axis goes to 8-bit inside the blend (the device-side conversion); block fusion keeps
    float predictions. Both must stay within bf16's rounding of the float32 stain.
    """
    src, vol = ct
    ref = np.mean([_reference(vol, model_path, a) for a in axes], axis=0, dtype=np.float64)
    expected = _u8(ref.astype(np.float32)).astype(int)
    cfg = _config(axes=axes, fusion=fusion, autocast=True, channels_last=True)
    report = stain_to_zarr(src, tmp_path / "bf16.zarr", model=model_path, config=cfg,
                           client=client, chunks=CHUNKS, progress=False)  # fmt: skip
    got = _stained(report.output).astype(int)
    assert got.shape == expected.shape
    diff = np.abs(got - expected)
    assert diff.max() <= 3 and diff.mean() < 0.4, (diff.max(), diff.mean())
    assert diff.any()  # bf16 really ran: a float32 run would match byte for byte
    params = ngff.open_volume(report.output).attrs["vstain"]["parameters"]
    assert params["autocast"] is True


def test_lazy_api_matches_runner(client, ct, model_path, tmp_path):
    src, vol = ct
    lazy = stain(ngff.open_volume(src), model_path, config=_config(), chunks=CHUNKS)
    assert lazy.dims == ("c", "z", "y", "x") and lazy.shape == (3, *SHAPE)
    assert lazy.dtype == np.uint8
    np.testing.assert_array_equal(lazy.data.compute(), _u8(_reference(vol, model_path, "z")))


def test_lazy_api_refuses_what_it_cannot_honour(ct, model_path):
    """The lazy stain fuses in blocks (its default as options) and says so when asked for
    passes, a mask or the uncertainty, which only the runner writes."""
    src, _ = ct
    vol = ngff.open_volume(src)
    lazy = stain(vol, model_path, axes="zyx", tile=TILE, step=STEP, chunks=CHUNKS)
    assert lazy.shape == (3, *SHAPE)  # nothing computed
    with pytest.raises(InputError, match="fuses several axes in blocks only .* run_stain"):
        stain(vol, model_path, config=_config(axes="zyx"), chunks=CHUNKS)
    with pytest.raises(InputError, match="got fusion='passes'"):
        stain(vol, model_path, axes="zyx", fusion="passes", tile=TILE, step=STEP)
    for option in ("mask", "uncertainty"):
        with pytest.raises(InputError, match=f"RGB\\(A\\) stain only, got {option}=True"):
            stain(vol, model_path, config=_config(axes="zyx", fusion="blocks", **{option: True}))


def test_single_slice_gives_a_2d_image(client, ct, model_path, tmp_path):
    _, vol = ct
    ngff.write_volume(vol[3], tmp_path / "slice.zarr", axes="yx", scale=(5.0, 5.0))
    report = stain_to_zarr(tmp_path / "slice.zarr", tmp_path / "slice.stained.zarr",
                           model=model_path, config=_config(), client=client, progress=False)  # fmt: skip
    out = ngff.open_volume(report.output)
    assert out.dims == ("c", "y", "x")
    np.testing.assert_array_equal(
        _stained(report.output), _u8(_reference(vol[3:4], model_path, "z"))[:, 0]
    )


def test_existing_output_is_refused_and_untouched(client, ct, model_path, tmp_path):
    src, _ = ct
    out = tmp_path / "exists.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        stain_to_zarr(src, out, model=model_path, config=_config(), client=client, progress=False)
    assert (out / "precious.txt").read_text() == "keep me"
    with pytest.raises(InputError, match="inside the input"):
        stain_to_zarr(src, src / "out.zarr", model=model_path, config=_config(), client=client)


def test_second_job_on_same_output_is_refused(client, ct, model_path, tmp_path):
    import json
    import socket

    src, _ = ct
    out = tmp_path / "locked.zarr"
    stain_to_zarr(src, out, model=model_path, config=_config(), client=client, chunks=CHUNKS,
                  progress=False)  # fmt: skip
    # a live job holds the lock: this test process stands in for it (its pid is alive)
    lock = out.with_name(out.name + ".vstain-job") / "lock.json"
    lock.parent.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(OutputExistsError, match=f"pid {other.pid}"):
            stain_to_zarr(src, out, model=model_path, config=_config(), client=client,
                          chunks=CHUNKS, resume=True, progress=False)  # fmt: skip
    finally:
        other.kill()
        other.wait()
    # once that process is gone the stale lock is taken over and resume finishes
    report = stain_to_zarr(src, out, model=model_path, config=_config(), client=client,
                           chunks=CHUNKS, resume=True, progress=False)  # fmt: skip
    assert report.blocks_skipped == report.blocks


def test_plan_counts_blocks_and_validates():
    blocks = plan_blocks((1536, 1536, 1536), (64, 256, 256), StainConfig())
    assert len(blocks) == 24  # whole planes, 64 slices each
    cubes = plan_blocks((1536, 1536, 1536), (64, 256, 256), StainConfig(axes="zyx"))
    assert len(cubes) == 6 * 6 * 6
    with pytest.raises(InputError, match="multiple of the chunk"):
        plan_blocks((10, 40, 36), (2, 16, 16), StainConfig(block=(3, 16, 16)))
    with pytest.raises(InputError, match="step must be an integer in 1..256, got 0"):
        StainConfig(step=0)
    with pytest.raises(InputError, match="axes must be letters from z, y, x"):
        StainConfig(axes="q")
    with pytest.raises(InputError, match="batch_size must be an integer >= 1, got 0"):
        StainConfig(batch_size=0)
    # tiles per model call follow the device the worker runs the model on, unless given
    assert StainConfig().batch_size is None
    assert [default_batch_size(d) for d in ("cpu", "cuda", "cuda:1")] == [8, 32, 32]


def test_ledger_records_only_finished_blocks(tmp_path):
    """A marker appears in one step; stray hidden files (an older version's temporaries) are
    never read as finished blocks."""
    ledger = _Ledger(tmp_path / "out.zarr")
    assert ledger.done() == set()
    ledger.mark("block-0-0-0")
    (ledger.done_dir / ".block-1-0-0.tmp").write_text("")
    assert ledger.done() == {"block-0-0-0"}
    assert sorted(p.name for p in ledger.done_dir.iterdir()) == [".block-1-0-0.tmp", "block-0-0-0"]


def _run_cli(args, **kw):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "vstain_dask.cli", *args], env=env, **kw)


@pytest.mark.slow
def test_cli_stain_and_resume_after_kill(ct, model_path, tmp_path):
    """The whole job killed with SIGKILL mid-run, then --resume: same bytes as a clean run."""
    src, vol = ct
    args = ["stain", str(src), "--model", str(model_path), "--tile", "16", "--step", "8",
            "--batch-size", "4", "--chunks", "1,16,16", "--workers", "1", "--ct-levels", "none"]  # fmt: skip
    clean = tmp_path / "clean.zarr"
    proc = subprocess.run(
        [sys.executable, "-m", "vstain_dask.cli", *args, "-o", str(clean)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "dashboard: http://127.0.0.1:" in proc.stderr
    assert "wrote" in proc.stdout and "voxels/s" in proc.stdout

    killed = tmp_path / "killed.zarr"
    p = _run_cli([*args, "-o", str(killed)], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    ledger = _Ledger(killed)  # the job's record of finished blocks
    deadline = time.time() + 240
    while time.time() < deadline and len(ledger.done()) < 2:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    n_done = len(ledger.done())
    assert 2 <= n_done < SHAPE[0], "the job should have been killed mid-run"
    assert ngff.open_volume(killed, allow_incomplete=True).attrs["vstain"]["complete"] is False

    refused = subprocess.run([sys.executable, "-m", "vstain_dask.cli", *args, "-o", str(killed)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2 and "--resume" in refused.stderr
    assert "Traceback" not in refused.stderr

    resumed = subprocess.run(
        [sys.executable, "-m", "vstain_dask.cli", *args, "-o", str(killed), "--resume"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"({n_done} resumed)" in resumed.stdout or f"({n_done + 1} resumed)" in resumed.stdout
    np.testing.assert_array_equal(_stained(killed), _stained(clean))
    assert ngff.open_volume(killed).attrs["vstain"]["complete"] is True


def test_cli_bad_options_one_line(ct, model_path, tmp_path):
    src, _ = ct
    runner = CliRunner()
    for args, msg in (
        (["--step", "0"], "step must be an integer in 1..256"),
        (["--axes", "zq"], "axes must be letters"),
        (["--blend", "max"], "blend must be one of 'mean', 'gaussian', 'cosine'"),
        (["--cluster", "kubernetes"], "cluster must be one of 'local', 'cuda', 'slurm'"),
    ):
        r = runner.invoke(main, ["stain", str(src), "--model", str(model_path), *args])
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.output and "Traceback" not in r.output


def _blocks_in_flight(stream) -> int:
    """Most blocks held at once: from the start of a block's read to the end of its write."""
    spans: dict[str, list[float]] = {}
    for task in stream:
        kind, _, block = str(task["key"]).partition("-")
        for s in task["startstops"]:
            if s["action"] == "compute" and kind in ("read", "write"):
                span = spans.setdefault(block.split("-", 1)[1], [float("inf"), float("-inf")])
                span[0] = min(span[0], s["start"]) if kind == "read" else span[0]
                span[1] = max(span[1], s["stop"]) if kind == "write" else span[1]
    events = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values()])
    most = held = 0
    for _, step in events:
        held += step
        most = max(most, held)
    return most


def test_blocks_in_flight_per_worker_are_bounded_whatever_the_threads(ct, model_path, tmp_path):
    """A worker with many threads (as on a GPU node) still holds at most 3 blocks at a time:
    the reading does not run ahead of the staining through the whole volume."""
    from distributed import get_task_stream

    from vstain_dask.cluster import ClusterConfig, connect
    from vstain_dask.stain import BLOCKS_IN_FLIGHT_PER_WORKER

    src, vol = ct
    with connect(ClusterConfig(workers=1, threads_per_worker=6, dashboard=False)) as client:
        assert list(client.nthreads().values()) == [6]  # dask threads follow the torch threads
        with get_task_stream(client) as ts:
            report = stain_to_zarr(
                src, tmp_path / "out.ome.zarr", model=model_path, client=client,
                config=_config(), chunks=(1, 64, 64), progress=False,
            )  # fmt: skip
    assert BLOCKS_IN_FLIGHT_PER_WORKER == 3
    assert report.blocks == SHAPE[0] == 10
    held = _blocks_in_flight(ts.data)
    assert 2 <= held <= 3, f"{held} blocks held at once"
    np.testing.assert_array_equal(_stained(report.output), _u8(_reference(vol, model_path, "z")))


def test_default_compile_falls_back_to_the_eager_generator_once(recwarn):
    """On CUDA the generator is compiled by default; where compiling fails (no C compiler for
    Triton, say) the stain goes on with the eager generator, says so once, and never retries."""
    import torch

    from vstain_dask.runtime import CompiledOrEager

    calls = []

    def broken(x):
        calls.append("compiled")
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    net = torch.nn.Conv2d(1, 3, 1)
    wrapped = CompiledOrEager(net, broken)
    x = torch.ones(2, 1, 4, 4)
    with torch.inference_mode():
        for _ in range(3):
            assert torch.equal(wrapped(x), net(x))
    assert calls == ["compiled"]
    (w,) = [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert str(w.message).startswith(
        "torch.compile failed (RuntimeError: Failed to find C compiler"
    )
    assert "eager generator" in str(w.message) and "--no-compile" in str(w.message)
    # a working compiled callable is used from then on
    ok = CompiledOrEager(net, lambda t: net(t) + 1)
    with torch.inference_mode():
        assert torch.equal(ok(x), net(x) + 1) and torch.equal(ok(x), net(x) + 1)
    assert ok.failed is None


@pytest.mark.parametrize(
    "first",
    ["import vstain_dask as vd", "import vstain_dask.stain.job", "from vstain_dask import stain"],
)
def test_vd_stain_works_whatever_was_imported_first(first, model_path):
    """``vd.stain`` is the lazy stain and ``vstain_dask.stain`` the package: the same object,
    a callable module, whichever import came first (the import system sets the attribute to the
    module when it is first imported)."""
    code = f"""{first}
import numpy as np
import vstain_dask as vd
import vstain_dask.stain as package
assert vd.stain is package and package.run_stain and package.StainConfig
lazy = vd.stain(np.full((2, 24, 24), 1000, np.uint16), {str(model_path)!r}, tile=16, step=8)
print(lazy.shape, lazy.dtype, int(lazy.compute(scheduler="sync").max()) > 0)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(3, 2, 24, 24) uint8 True"
