"""All the benchmarks in one command, within a time budget, into one JSON file and one log.

Runs the scripts of this folder one after the other, most telling first, each as its own
process with a shared ``--workdir`` (so a phantom is written once for all of them), and stops
when the budget is spent: a script still running at the deadline gets SIGTERM (then SIGKILL),
keeps the rows it had finished (``"complete": false`` in its figures), and the scripts after it
are listed as not run. Meant for a machine one has for a limited time, such as a GPU node::

    python benchmarks/suite.py --full --device cuda --budget 540 --out results/

writes ``results/suite.json`` (every script's figures, its command, exit status and seconds)
and ``results/suite.log`` (everything the scripts printed). Without ``--full`` every script
runs its smallest case (a minute or two in all on a CPU), to check that the suite runs.

Steps (``--only`` takes a comma-separated subset, in this order):

- ``limit``: model FLOP/s against the device's measured peak (``bench_limit.py``);
- ``stain-fast``: end to end, fast setting, one axis (``bench_stain.py --cases fast-z``);
- ``stain-paper``: end to end, paper setting, one axis (``--cases paper-z``);
- ``train``: patch stream and training steps (``bench_train.py``);
- ``monai``: against MONAI's sliding window (``bench_monai.py``);
- ``quality``: SSIM of cheaper settings (``bench_quality.py``);
- ``io``: the stain path against a plain copy (``bench_io.py``);
- ``fusion``: three axes against one, on a 768³ volume with ``--full`` (``bench_stain.py``);
- ``overhead``: the dask path against a plain loop (``bench_overhead.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> (script, arguments with --full, arguments of the smallest run)
STEPS: dict[str, tuple[str, list[str], list[str]]] = {
    "limit": (
        "bench_limit.py",
        [],
        [
            "--model",
            "tiny",
            "--batch",
            "1",
            "--plane",
            "256",
            "--slab",
            "1",
            "--matmul",
            "256",
            "--repeats",
            "1",
        ],
    ),  # fmt: skip
    "stain-fast": (
        "bench_stain.py",
        ["--cases", "fast-z"],
        ["--cases", "fast-z", "--shape", "2,256,256", "--chunks", "1,256,256", "--no-paper-probe"],
    ),  # fmt: skip
    "stain-paper": (
        "bench_stain.py",
        ["--cases", "paper-z"],
        ["--cases", "paper-z", "--shape", "2,256,256", "--chunks", "1,256,256", "--no-paper-probe"],
    ),  # fmt: skip
    "train": (
        "bench_train.py",
        [],
        [
            "--variants",
            "mod-cyclegan",
            "--patch",
            "32",
            "--ngf",
            "4",
            "--n-blocks",
            "1",
            "--ndf",
            "4",
            "--steps",
            "1",
            "--pairs",
            "3",
            "--loader-workers",
            "0",
            "--stream-batches",
            "2",
        ],
    ),  # fmt: skip
    "monai": ("bench_monai.py", [], ["--k", "1", "--settings", "fast", "--repeats", "1"]),
    "quality": ("bench_quality.py", [], ["--side", "256", "--repeats", "1"]),
    "io": (
        "bench_io.py",
        [],
        ["--shape", "2,256,256", "--chunks", "1,256,256", "--repeats", "1"],
    ),
    "fusion": (
        "bench_stain.py",
        ["--cases", "paper-zyx", "--fusion-shape", "768,768,768", "--fusion-chunks", "64,256,256"],
        [
            "--cases",
            "fast-zyx",
            "--fusion-shape",
            "4,4,4",
            "--fusion-chunks",
            "4,4,4",
            "--no-paper-probe",
        ],
    ),  # fmt: skip
    "overhead": (
        "bench_overhead.py",
        [],
        ["--side", "256", "--depth", "1", "--repeats", "1", "--skip-memory", "--skip-scaling"],
    ),
}

#: seconds a stopped script gets between SIGTERM and SIGKILL
GRACE_S = 10.0
#: a script is not started with less than this left of the budget
MIN_START_S = 20.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="\n".join(__doc__.split("\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--full", action="store_true", help="each script's full-size run")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ... [cpu]")
    p.add_argument("--out", type=Path, required=True, help="folder for suite.json and suite.log")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole suite [540]")
    p.add_argument("--only", help=f"comma-separated steps, run in this order [{','.join(STEPS)}]")
    p.add_argument(
        "--workdir",
        type=Path,
        help="shared folder for phantoms and models [OUT/work, removed at the end]",
    )
    args = p.parse_args(argv)
    names = [n.strip() for n in (args.only or ",".join(STEPS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        p.error(f"--only: unknown step(s) {', '.join(unknown)}; steps: {', '.join(STEPS)}")
    if args.budget <= 0:
        p.error(f"--budget must be > 0 seconds, got {args.budget:g}")

    args.out.mkdir(parents=True, exist_ok=True)
    own_work = args.workdir is None
    work = args.workdir or args.out / "work"
    figures = work / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    steps: list[dict] = []
    log_path = args.out / "suite.log"
    with log_path.open("w") as log:
        for name in names:
            left = deadline - time.monotonic()
            script, full_args, small_args = STEPS[name]
            cmd = [sys.executable, str(HERE / script), *(full_args if args.full else small_args)]
            cmd += ["--device", args.device, "--workdir", str(work)]
            cmd += ["--full"] if args.full else []
            step = {"step": name, "command": _shown(cmd)}
            if left < MIN_START_S:
                steps.append({**step, "status": "not run: budget spent"})
                _say(log, f"== {name}: not run, {left:.0f} s of the budget left")
                continue
            out = figures / f"{name}.json"
            out.unlink(missing_ok=True)
            _say(log, f"== {name}: {step['command']}  (at most {left:.0f} s)")
            t0 = time.monotonic()
            rc, stopped = _run(cmd + ["--json", str(out)], log, timeout=left)
            seconds = time.monotonic() - t0
            status = "stopped at the budget" if stopped else ("ok" if rc == 0 else "failed")
            step.update({"status": status, "returncode": rc, "seconds": round(seconds, 1)})
            if out.exists():
                step["figures"] = json.loads(out.read_text())
            steps.append(step)
            _say(log, f"== {name}: {status} (exit {rc}) after {seconds:.0f} s")
            _write(args, steps)  # what is done so far survives a stop of the suite itself
    _write(args, steps)
    if own_work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"suite: {sum(s['status'] == 'ok' for s in steps)} of {len(steps)} steps ok; "
          f"figures in {args.out / 'suite.json'}, log in {log_path}")  # fmt: skip
    return 0 if all(s["status"] == "ok" for s in steps) else 1


def _run(cmd: list[str], log, *, timeout: float) -> tuple[int, bool]:
    """Run one script, its output to the log and to stdout (see ``run_stopping_group``)."""
    return run_stopping_group(cmd, lambda line: _say(log, line), timeout=timeout)


def run_stopping_group(
    cmd: list[str], on_line: Callable[[str], None], *, timeout: float, cwd: Path | None = None
) -> tuple[int, bool]:
    """Run ``cmd`` in its own process group, each line of its output to ``on_line``; stop the
    whole group at ``timeout`` seconds (SIGTERM, then SIGKILL after ``GRACE_S``). Returns
    (exit status, stopped). The GPU run (``gpu/gpu_run.py``) runs its steps with it too."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
        start_new_session=True,  # the script's own workers are stopped with it
    )  # fmt: skip

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    stopped = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stopped = True
        _signal(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()
    except BaseException:
        _signal(proc, signal.SIGKILL)
        proc.wait()
        raise
    reader.join(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode, stopped


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _say(log, line: str) -> None:
    print(line, flush=True)
    log.write(line + "\n")
    log.flush()


def _shown(cmd: list[str]) -> str:
    parts = [Path(cmd[1]).relative_to(HERE.parent).as_posix() if i == 1 else c
             for i, c in enumerate(cmd)]  # fmt: skip
    parts[0] = "python"
    return shlex.join(parts)


def _write(args, steps: list[dict]) -> None:
    payload = {
        "suite": "vstain-dask benchmarks",
        "full": args.full,
        "device": args.device,
        "budget_s": args.budget,
        "steps": steps,
    }
    tmp = args.out / "suite.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(args.out / "suite.json")


if __name__ == "__main__":
    raise SystemExit(main())
