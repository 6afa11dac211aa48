"""The prepared GPU run (``benchmarks/gpu/``), exercised on the CPU so that it cannot rot
between the rare runs on a GPU: the whole command at toy sizes, its time limits, and the check
that the wheels carried to the GPU machine are complete."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "benchmarks" / "gpu"
STEPS = ["env", "tests", "ceilings", "profile", "input", "fast-z", "paper-slab", "fusion", "monai", "train",
         "sweeps"]  # fmt: skip


def _run(*args, timeout=900):
    return subprocess.run(
        ["bash", str(GPU / "run.sh"), *args], capture_output=True, text=True, timeout=timeout,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable,
             "HOME": str(Path.home())},
    )  # fmt: skip


@pytest.mark.slow
def test_the_whole_gpu_run_at_toy_sizes_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    proc = _run("--out", str(out), "--device", "cpu", "--small", "--work", str(tmp_path / "w"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # three files come back, whatever the number of steps
    assert sorted(p.name for p in out.iterdir()) == ["details.tar.gz", "run.log", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert {s["status"] for s in summary["steps"]} == {"ok"}, summary["steps"]
    f = {s["step"]: s["figures"] for s in summary["steps"]}
    # the GPU tests were collected and, with no GPU here, skipped with their reason
    assert f["tests"]["passed"] == 0 and not f["tests"]["failed"]
    assert any("needs a CUDA device" in s for s in f["tests"]["skipped"])
    assert len(f["tests"]["skipped"]) >= 5
    assert f["ceilings"]["matmul_tflops"] > 0 and f["ceilings"]["copy_tb_s"] > 0
    # the stains ran end to end on the volumes the input step made
    # 64² planes in 64² tiles at the toy size: one tile a plane, as 256² ones were before
    assert f["fast-z"]["shape"] == [8, 64, 64] and f["fast-z"]["tiles"] == 8
    assert f["fast-z"]["config"]["tile"] == 64 and f["fast-z"]["config"]["step"] == 48
    assert f["paper-slab"]["tiles"] == 4 * 1 and f["paper-slab"]["est_1536_s"] > 0
    assert f["fusion"]["tiles_ratio"] == pytest.approx(3.0)
    assert f["train"]["train"]["patches_per_s"] > 0 and len(f["train"]["stream"]) == 2
    assert [r["batch"] for r in f["sweeps"]["rows"]] == [8, 32, 32, 32]
    if f["monai"].get("results"):  # MONAI is the optional [bench] extra
        assert f["monai"]["results"]["rows"][0]["setting"] == "fast"
    with tarfile.open(out / "details.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"details/{s}.json" for s in STEPS} <= names
    assert {f"details/{s}.log" for s in STEPS} <= names and "details/junit.xml" in names
    # the closing table is the last thing printed
    tail = proc.stdout.strip().splitlines()[-11:]
    assert tail[0].startswith("what") and "training mod-cyclegan" in "\n".join(tail)
    assert tail[-1].startswith("env: ok")


def test_a_step_past_its_limit_is_stopped_and_the_run_goes_on(tmp_path):
    """A step that runs past its limit is stopped with its process group (its loader and dask
    processes too); what it wrote stays, and the next step runs."""
    out = tmp_path / "out"
    proc = _run("--out", str(out), "--device", "cpu", "--small", "--only", "env,input,train,sweeps",
                "--cap", "train=4", "--work", str(tmp_path / "w"), timeout=300)  # fmt: skip
    assert proc.returncode == 1
    summary = json.loads((out / "summary.json").read_text())
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {"env": "ok", "input": "ok", "train": "stopped at its time limit",
                      "sweeps": "ok"}  # fmt: skip
    assert "== train: stopped at its time limit" in (out / "run.log").read_text()


def test_no_budget_left_runs_nothing_and_says_so(tmp_path):
    proc = _run("--out", str(tmp_path), "--device", "cpu", "--budget", "1", timeout=60)
    assert proc.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {s["status"] for s in summary["steps"]} == {"not run: budget spent"}
    assert "== env: not run, 1 s of the budget left" in proc.stdout


def test_bad_options_fail_in_one_line(tmp_path):
    proc = _run("--out", str(tmp_path), "--only", "tests,nope", timeout=60)
    assert proc.returncode == 2
    assert "--only: unknown step(s) nope; steps: env, tests, ceilings" in proc.stderr
    proc = _run("--out", str(tmp_path), "--cap", "train=soon", timeout=60)
    assert proc.returncode == 2
    assert "--cap: expected STEP=SECONDS" in proc.stderr and "'train=soon'" in proc.stderr
    proc = _run("--wheels", str(tmp_path / "none"), "--out", str(tmp_path), timeout=60)
    assert proc.returncode == 2
    assert "no wheels in" in proc.stderr and "fetch_wheels.sh" in proc.stderr


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    dist = f"{name.replace('-', '_')}-{version}"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", meta)


def _pins() -> dict[str, str]:
    pins = {}
    for line in (GPU / "wheels.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name] = version
    return pins


def _check(folder: Path):
    return subprocess.run(
        ["bash", str(GPU / "fetch_wheels.sh"), "--check", str(folder)],
        capture_output=True, text=True, timeout=60, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )  # fmt: skip


def test_wheel_check_finds_what_is_missing(tmp_path):
    pins = _pins()
    assert {"dask", "distributed", "zarr", "numcodecs", "lpips", "dask-cuda", "monai"} <= set(pins)
    # a complete set (what the GPU machine has, plus every pin): passes
    for name, version in pins.items():
        _wheel(tmp_path, name, version, ["numpy>=1.26", "torch; extra == 'gpu'",
                                         "importlib-metadata; python_version < '3.12'"])  # fmt: skip
    ok = _check(tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "complete" in ok.stdout
    # a requirement neither carried nor on the machine; a second version; a missing pin
    _wheel(tmp_path, "zarr", pins["zarr"], ["numpy", "not-on-the-gpu-machine>=1"])
    _wheel(tmp_path, "dask", "1.0", [])
    (tmp_path / f"lpips-{pins['lpips']}-py3-none-any.whl").unlink()
    bad = _check(tmp_path)
    assert bad.returncode == 1
    assert (
        "zarr needs not-on-the-gpu-machine>=1: neither carried nor on the GPU machine" in bad.stderr
    )
    assert "two wheels of dask" in bad.stderr
    assert f"no wheel for lpips=={pins['lpips']}" in bad.stderr
