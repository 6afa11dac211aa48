"""The benchmark scripts run: ``--help`` works, and the smallest run of each prints its figures
and writes them as JSON. Speed itself is measured by the scripts, never asserted here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = [
    "bench_stain",
    "bench_limit",
    "bench_overhead",
    "bench_monai",
    "bench_quality",
    "bench_io",
    "bench_register",
]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name):
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    for option in ("--full", "--device", "--json"):
        assert option in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One work folder for all scripts: phantoms and models are written once and reused."""
    return tmp_path_factory.mktemp("bench")


def _run(name, argv, tmp_path, capsys, workdir) -> tuple[str, dict]:
    out = tmp_path / f"{name}.json"
    code = _load(name).main([*argv, "--workdir", str(workdir), "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "machine " in text and "versions " in text  # the run header
    return text, json.loads(out.read_text())


def _check_header(data: dict, name: str) -> None:
    assert data["benchmark"] == name
    assert data["complete"] is True
    head = data["header"]
    assert head["machine"]["cores"] >= 1
    assert head["versions"]["torch"] and head["versions"]["zarr"]


@pytest.mark.slow
def test_bench_stain_smallest(cluster, tmp_path, capsys, workdir):
    text, data = _run(
        "bench_stain",
        ["--scheduler", cluster.scheduler_address, "--shape", "2,256,256", "--chunks",
         "1,256,256", "--fusion-shape", "4,4,4", "--fusion-chunks", "4,4,4",
         "--cases", "paper-z,fast-zyx", "--no-paper-probe"],
        tmp_path,
        capsys,
        workdir,
    )  # fmt: skip
    _check_header(data, "bench_stain")
    runs = {r["case"]: r for r in data["results"]["runs"]}
    # the fusion case brings its one-axis counterpart on the same volume
    assert set(runs) == {"paper-z", "fast-z@fusion", "fast-zyx"}
    assert runs["paper-z"]["tiles"] == 2  # one 256² tile per plane
    assert runs["fast-z@fusion"]["tiles"] == 4
    assert runs["fast-zyx"]["tiles"] == 12  # 4 planes per axis, one padded tile each
    (fusion,) = data["results"]["fusion"]
    assert fusion["tiles_ratio"] == 3
    for r in runs.values():
        assert r["voxels_per_s"] > 0 and r["tiles_per_s"] > 0
        assert r["peak_rss_mib"] > 10
        assert r["compute_s"] > 0
    extra = {e["case"]: e for e in data["results"]["extrapolation_1536"]}
    assert extra["paper-z"]["tiles_needed_1536"] == 1536 * 21 * 21
    assert extra["paper-z"]["tiles_planned_1536"] == 1536 * 21 * 21
    assert "paper-z" in text and "tiles_per_s" in text and "extrapolated" in text


def test_bench_limit_smallest(cluster, tmp_path, capsys, workdir):
    text, data = _run(
        "bench_limit",
        ["--scheduler", cluster.scheduler_address, "--model", "tiny", "--batch", "1",
         "--plane", "256", "--slab", "1", "--matmul", "256", "--repeats", "1"],
        tmp_path,
        capsys,
        workdir,
    )  # fmt: skip
    _check_header(data, "bench_limit")
    res = data["results"]
    assert res["peak"]["flop_per_s"] > 0
    assert [r["what"] for r in res["rows"]] == ["forward", "predict_plane", "stain path"]
    for r in res["rows"]:
        assert r["of_peak"] > 0 and r["gflop_per_s"] > 0
    assert "of_peak" in text


def test_bench_limit_counts_the_paper_model():
    _load("bench_limit")  # puts the benchmarks folder on sys.path
    import _common

    flops = _common.tile_flops(_common.generator_config("paper"))
    # hand count of the ResNet-9 convolutions on a 256² tile (2 FLOPs per multiply-add)
    mac = (
        49 * 3 * 64 * 256**2  # stem 7×7
        + 9 * 64 * 128 * 128**2  # down 1
        + 9 * 128 * 256 * 64**2  # down 2
        + 18 * 9 * 256 * 256 * 64**2  # 9 residual blocks, 2 convs each
        + 9 * 256 * 128 * 128**2  # up 1 (after nearest upsampling)
        + 9 * 128 * 64 * 256**2  # up 2
        + 49 * 64 * 3 * 256**2  # head 7×7
    )
    assert flops == pytest.approx(2 * mac, rel=1e-3)


def test_bench_overhead_smallest(cluster, tmp_path, capsys, workdir):
    text, data = _run(
        "bench_overhead",
        ["--scheduler", cluster.scheduler_address, "--side", "256", "--depth", "1",
         "--memory-depths", "1,2", "--repeats", "1"],
        tmp_path,
        capsys,
        workdir,
    )  # fmt: skip
    _check_header(data, "bench_overhead")
    res = data["results"]
    paths = [r["path"] for r in res["rows"]]
    assert paths[0] == "loop 1 thread" and paths[-1].startswith("dask ")
    assert res["ratios"]["dask_over_loop_same_cores"]["best"] > 0
    assert [m["depth"] for m in res["memory"]] == [1, 2]
    assert "dask_over_loop_same_cores" in text


def test_bench_monai_smallest_or_skip(tmp_path, capsys, workdir):
    try:
        import monai  # noqa: F401
    except ImportError:
        code = _load("bench_monai").main(["--workdir", str(tmp_path)])
        assert code == 0
        assert "MONAI is not installed" in capsys.readouterr().out
        return
    text, data = _run(
        "bench_monai",
        ["--k", "1", "--settings", "fast", "--repeats", "1"],
        tmp_path,
        capsys,
        workdir,
    )
    _check_header(data, "bench_monai")
    (row,) = data["results"]["rows"]
    assert row["plane"] == "448x448" and row["tiles"] == 4  # 1·192 + 256: grids coincide
    assert row["max_abs_diff"] < 1e-3  # same tiles, same model: rounding only
    assert row["ratio_vstain_over_monai"] > 0
    assert "ratio_vstain_over_monai" in text


def test_bench_quality_smallest(tmp_path, capsys, workdir):
    text, data = _run(
        "bench_quality", ["--side", "256", "--repeats", "1"], tmp_path, capsys, workdir
    )
    _check_header(data, "bench_quality")
    rows = data["results"]["rows"]
    assert rows[0]["ssim"] == pytest.approx(1.0)  # the reference against itself
    # on a 256² plane every tiled setting runs the same single tile as the reference
    assert all(r["ssim"] == pytest.approx(1.0) for r in rows if r["tiles"] == 1)
    assert rows[-1]["setting"] == "whole slice" and "ssim" in text


def test_bench_io_smallest(cluster, tmp_path, capsys, workdir):
    text, data = _run(
        "bench_io",
        ["--scheduler", cluster.scheduler_address, "--shape", "2,256,256", "--chunks",
         "1,256,256", "--repeats", "1"],
        tmp_path,
        capsys,
        workdir,
    )  # fmt: skip
    _check_header(data, "bench_io")
    res = data["results"]
    assert res["in_mb"] == pytest.approx(2 * 256 * 256 * 2 / 1e6)
    assert res["stain_over_copy"] > 0
    assert "plain dask copy" in text


@pytest.mark.slow
def test_bench_register_smallest(tmp_path, capsys, workdir):
    # a 32³ phantom: its one level is the coarse one, searched as a larger CT's is
    text, data = _run("bench_register", ["--shape", "32,32,32", "--sections", "1"], tmp_path,
                      capsys, workdir)  # fmt: skip
    _check_header(data, "bench_register")
    (row,) = data["results"]["sections"]
    assert row["outcome"] in ("found", "refused") and row["seconds"] > 0
    assert row["peak_rss_mib"] > 0
    summary = data["results"]["summary"]
    assert summary["found"] + summary["refused"] == 1
    if row["outcome"] == "found":
        assert row["mean_voxels"] >= 0 and summary["median_mean_voxels"] == row["mean_voxels"]
    assert "sections  found  refused" in text


def test_bench_train_smallest(tmp_path, capsys, workdir):
    text, data = _run(
        "bench_train",
        ["--variants", "mod-cyclegan", "--patch", "32", "--ngf", "4", "--n-blocks", "1",
         "--ndf", "4", "--steps", "1", "--pairs", "3", "--loader-workers", "0",
         "--stream-batches", "2"],
        tmp_path,
        capsys,
        workdir,
    )  # fmt: skip
    _check_header(data, "bench_train")
    res = data["results"]
    assert [r["loader_workers"] for r in res["stream"]] == [0]
    assert [r["variant"] for r in res["train"]] == ["mod-cyclegan"]
    for r in res["train"]:
        assert r["patches_per_s"] > 0 and r["fold_hours"] > 0
    assert "fold_hours" in text


@pytest.mark.slow
def test_bench_train_stopped_by_a_time_limit_keeps_its_finished_rows(tmp_path):
    """A run stopped as ``timeout`` stops it (SIGTERM) leaves the rows it finished in its JSON,
    marked incomplete; the file is never half written."""
    import signal
    import time

    out = tmp_path / "train.json"
    argv = [
        sys.executable, str(BENCH / "bench_train.py"), "--patch", "32", "--ngf", "4",
        "--n-blocks", "1", "--ndf", "4", "--steps", "3", "--pairs", "3",
        "--loader-workers", "0", "--stream-batches", "2", "--workdir", str(tmp_path / "work"),
        "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.exists(), "no partial figures were written"
        proc.send_signal(signal.SIGTERM)  # while the four variants train
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM
    data = json.loads(out.read_text())
    assert data["benchmark"] == "bench_train" and data["complete"] is False
    assert [r["loader_workers"] for r in data["results"]["stream"]] == [0]
    assert data["results"]["stream"][0]["patches_per_s"] > 0
    assert len(data["results"].get("train", [])) < 4
    assert not list(tmp_path.glob("*.tmp"))


def test_suite_runs_steps_into_one_json(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "suite.py"), "--only", "quality,train", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["suite.json", "suite.log"]  # work removed
    data = json.loads((out / "suite.json").read_text())
    assert [s["step"] for s in data["steps"]] == ["quality", "train"]
    for step in data["steps"]:
        assert step["status"] == "ok" and step["returncode"] == 0 and step["seconds"] > 0
        assert step["command"].startswith(f"python benchmarks/bench_{step['step']}.py ")
        assert step["figures"]["complete"] is True
        assert step["figures"]["benchmark"] == f"bench_{step['step']}"
    assert data["steps"][1]["figures"]["results"]["train"][0]["patches_per_s"] > 0
    log = (out / "suite.log").read_text()
    assert "== quality: ok (exit 0)" in log and "fold_hours" in log  # the scripts' own output
    assert "2 of 2 steps ok" in proc.stdout


def test_suite_with_no_budget_left_runs_nothing_and_says_so(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH / "suite.py"), "--only", "limit", "--budget", "5",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    (step,) = json.loads((tmp_path / "suite.json").read_text())["steps"]
    assert step["status"] == "not run: budget spent" and "figures" not in step
    assert "0 of 1 steps ok" in proc.stdout


def test_suite_stops_a_step_and_its_children_at_the_deadline(tmp_path):
    """A step still running at the deadline gets SIGTERM, with the processes it started."""
    import os
    import time

    suite = _load("suite")
    pid_file = tmp_path / "grandchild.pid"
    child = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen(['sleep', '120'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "print('working', flush=True)\n"
        "time.sleep(120)\n"
    )
    t0 = time.monotonic()
    with (tmp_path / "log").open("w") as log:
        rc, stopped = suite._run([sys.executable, "-c", child], log, timeout=3)
    assert stopped and rc == -15
    assert time.monotonic() - t0 < 3 + suite.GRACE_S
    assert "working" in (tmp_path / "log").read_text()
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # reaped by init once killed
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's own child {grandchild} outlived the stop")
