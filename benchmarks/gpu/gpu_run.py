"""The whole GPU run in one command: checks and figures, most valuable first, within a budget.

Steps, in this order (``--only``/``--skip`` take comma-separated names):

- ``env``: machine, driver, CUDA, versions;
- ``tests``: ``pytest -m gpu`` (CUDA stain against the CPU stain, bf16 training, dask-cuda);
- ``ceilings``: a bf16 matmul (8192³), a device-to-device copy, and the bare paper generator
  on a batch of tiles (no tiling, blending or I/O);
- ``profile``: where the generator's time goes: the bare paper generator in several forms
  (memory format, cuDNN autotuning, instance norm kept channels-last, ``torch.compile``) and the
  CUDA kernels of one forward pass by total time (``torch.profiler``);
- ``input``: the volumes: a 64 × 1536² phantom slab written by the phantom generator, repeated
  24 times along z into a 1536³ OME-Zarr (and 4 times into a 256 × 1536² slab) with the same
  chunks (64 × 256 × 256) and codec, so reading costs what a phantom of that size costs; and a
  512³ phantom cube for fusion;
- ``fast-z``: one axis of the 1536³ volume at the fast setting (step 192, gaussian), end to
  end OME-Zarr to OME-Zarr with the pyramid, on the product's default cluster for the device;
- ``paper-slab``: the paper setting (step 64, mean) on the 256-plane slab, extrapolated to 1536³;
- ``fusion``: ``axes="zyx"`` against ``axes="z"`` on the 512³ cube, paper setting;
- ``monai``: MONAI's sliding window against ``predict_plane`` on the same GPU and planes;
- ``train``: the patch stream alone, then the paper-size mod-cyclegan, patches/s over 60 s
  after a warm-up epoch;
- ``sweeps``: tiles per model call and ``torch.compile`` for in-process tiled inference.

Each step is its own process with a time cap (and the run's deadline); a step that fails or is
stopped keeps what it wrote, and the next one starts. Everything goes to ``--out``: three files,
``summary.json`` (every step's status, seconds and figures), ``run.log`` (everything printed)
and ``details.tar.gz`` (each step's JSON and log, the junit XML of the tests). The last thing
printed is a table of the headline figures against the goals.

``--small --device cpu`` runs every step at toy sizes on a CPU in a minute or two: the test
suite does this, so the command cannot rot between the rare runs on a GPU::

    python benchmarks/gpu/gpu_run.py --out gpu-results            # on the GPU machine
    python benchmarks/gpu/gpu_run.py --out /tmp/g --device cpu --small
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/_common.py, benchmarks/suite.py

import suite  # noqa: E402  (the process-group runner and the log lines the suite uses)
from suite import _say  # noqa: E402

#: name -> (seconds at most with the full sizes, with --small)
STEPS: dict[str, tuple[float, float]] = {
    "env": (30, 30),
    "tests": (170, 240),
    "ceilings": (45, 60),
    "profile": (120, 90),
    "input": (100, 60),
    "fast-z": (150, 90),
    "paper-slab": (110, 90),
    "fusion": (100, 90),
    "monai": (60, 90),
    "train": (130, 120),
    "sweeps": (120, 90),
}
#: a step is not started with less than this many seconds of the run's budget left
MIN_START_S = 15.0
#: goals of the GPU issue (seconds, ratios, rates) for the closing table
GOALS = {
    "paper_1536_s": 180.0,
    "fast_1536_s": 30.0,
    "fusion_ratio": 3.0,
    "train_patches_per_s": 150.0,
    "monai_ratio": 1.1,
}
#: the stain's tile side (generator FLOPs are counted per tile, benchmarks/_common.tile_flops);
#: the toy run (--small) tiles 64² planes with 64² tiles, the same steps per tile
TILE = 256
SMALL_TILE = 64


# ---------------------------------------------------------------------------------------------
# the run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="\n".join(__doc__.split("\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the three result files")
    p.add_argument("--device", default="cuda", help="torch device [cuda]")
    p.add_argument("--small", action="store_true", help="toy sizes (a CPU smoke run)")
    p.add_argument("--budget", type=float, default=520.0, help="seconds for the whole run [520]")
    p.add_argument("--only", help=f"comma-separated steps [{','.join(STEPS)}]")
    p.add_argument("--skip", help="comma-separated steps to leave out")
    p.add_argument("--work", type=Path, help="scratch folder for volumes [a temporary one]")
    p.add_argument(
        "--cap",
        action="append",
        default=[],
        metavar="STEP=SECONDS",
        help="another time limit for a step (repeatable), e.g. --cap train=300",
    )
    p.add_argument(
        "--paper-planes",
        type=int,
        default=256,
        help="planes of 1536² for the paper-setting slab, a multiple of 64 [256]",
    )
    p.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    args = p.parse_args(argv)
    if args.step:
        return _run_step(args)

    names = _select(p, args.only, args.skip)
    caps = _caps(p, args.cap, small=args.small)
    if args.budget <= 0:
        p.error(f"--budget must be > 0 seconds, got {args.budget:g}")
    args.out.mkdir(parents=True, exist_ok=True)
    own_work = args.work is None
    work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"vstain-gpu-{os.getpid()}"
    details = work / "details"
    details.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    log = (args.out / "run.log").open("w", buffering=1)
    steps: list[dict] = []
    try:
        _say(log, f"vstain-dask GPU run: device {args.device}, {'small' if args.small else 'full'}"
                  f" sizes, budget {args.budget:.0f} s, steps {','.join(names)}")  # fmt: skip
        for name in names:
            left = deadline - time.monotonic()
            cap = caps[name]
            if left < MIN_START_S:
                steps.append({"step": name, "status": "not run: budget spent"})
                _say(log, f"== {name}: not run, {left:.0f} s of the budget left")
                continue
            limit = min(cap, left)
            _say(log, f"== {name} (at most {limit:.0f} s)")
            t0 = time.monotonic()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name,
                   "--paper-planes", str(args.paper_planes), "--only", ",".join(names),
                   "--out", str(details), "--work", str(work), "--device", args.device,
                   *(["--small"] if args.small else [])]  # fmt: skip
            rc, stopped = _run(cmd, details / f"{name}.log", log, timeout=limit)
            seconds = time.monotonic() - t0
            status = "stopped at its time limit" if stopped else ("ok" if rc == 0 else "failed")
            figures = _read(details / f"{name}.json")
            steps.append({"step": name, "status": status, "returncode": rc,
                          "seconds": round(seconds, 1), "figures": figures})  # fmt: skip
            _say(log, f"== {name}: {status} (exit {rc}) after {seconds:.0f} s; "
                      f"{_headline(name, figures)}")  # fmt: skip
            _save(args, steps, details)  # what is done survives a stop of the whole run
    finally:
        _save(args, steps, details)
        table = _table(steps)
        _say(log, "\n" + table)
        log.close()
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(s["status"] == "ok" for s in steps) else 1


def _select(p: argparse.ArgumentParser, only: str | None, skip: str | None) -> list[str]:
    def names(text: str | None) -> list[str]:
        return [n.strip() for n in (text or "").split(",") if n.strip()]

    for flag, text in (("--only", only), ("--skip", skip)):
        bad = [n for n in names(text) if n not in STEPS]
        if bad:
            p.error(f"{flag}: unknown step(s) {', '.join(bad)}; steps: {', '.join(STEPS)}")
    chosen = names(only) or list(STEPS)
    return [n for n in STEPS if n in chosen and n not in names(skip)]


def _caps(p: argparse.ArgumentParser, given: list[str], *, small: bool) -> dict[str, float]:
    caps = {name: limits[1 if small else 0] for name, limits in STEPS.items()}
    for text in given:
        name, _, seconds = text.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if name not in STEPS or value <= 0:
            p.error(f"--cap: expected STEP=SECONDS with a step of {', '.join(STEPS)} and "
                    f"seconds > 0, got {text!r}")  # fmt: skip
        caps[name] = value
    return caps


def _run(cmd: list[str], step_log: Path, log, *, timeout: float) -> tuple[int, bool]:
    """Run one step in its own process group (its dask workers and loader processes too), its
    output into its own log and the run's; stopped whole at ``timeout``."""
    with step_log.open("w") as f:

        def on_line(line: str) -> None:
            f.write(line + "\n")
            f.flush()
            log.write("   " + line + "\n")

        return suite.run_stopping_group(cmd, on_line, timeout=timeout, cwd=ROOT)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save(args, steps: list[dict], details: Path) -> None:
    summary = {"steps": steps, "goals": GOALS, "small": args.small, "device": args.device,
               "budget_s": args.budget, "headline": _headlines(steps)}  # fmt: skip
    tmp = args.out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    tmp.replace(args.out / "summary.json")
    tmp = args.out / "details.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for f in sorted(details.iterdir()):
            if f.is_file():
                tar.add(f, arcname=f"details/{f.name}")
    tmp.replace(args.out / "details.tar.gz")


# ---------------------------------------------------------------------------------------------
# summary


def _get(figures: dict | None, *keys, default=None):
    value = figures
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            return default
        value = value[k]
    return value


def _headline(name: str, f: dict | None) -> str:
    if not f:
        return "no figures"
    if name == "tests":
        return f"{f.get('passed', 0)} passed, {len(f.get('failed', []))} failed, " \
               f"{len(f.get('skipped', []))} skipped"  # fmt: skip
    if name == "ceilings":
        return (f"matmul {_n(f.get('matmul_tflops'))} TFLOP/s, copy {_n(f.get('copy_tb_s'))} "
                f"TB/s, generator {_n(_get(f, 'generator', 'tiles_per_s'))} tiles/s")  # fmt: skip
    if name in ("fast-z", "paper-slab"):
        return (
            f"{_n(f.get('stain_s'))} s, {_n(f.get('tiles_per_s'))} tiles/s, "
            f"{_pct(f.get('peak_fraction'))} of peak, GPU busy {_pct(f.get('gpu_busy'))}"
            + (f", 1536³ est. {_n(f.get('est_1536_s'))} s" if "est_1536_s" in f else "")
        )
    if name == "fusion":
        return f"zyx / z = {_n(f.get('wall_ratio'))} (wall), {_n(f.get('tiles_ratio'))} (tiles)"
    if name == "monai":
        rows = _get(f, "results", "rows", default=[]) or []
        return ", ".join(f"{r['setting']} {_n(r['ratio_vstain_over_monai'])}×" for r in rows)
    if name == "train":
        return (
            f"{_n(_get(f, 'train', 'patches_per_s'))} patches/s, data wait "
            f"{_pct(_get(f, 'train', 'data_wait'))}; stream "
            + ", ".join(f"{_n(r['patches_per_s'])}" for r in f.get("stream", []))
        )
    if name == "sweeps":
        return ", ".join(f"{r['what']} {_n(r.get('tiles_per_s'))}" for r in f.get("rows", []))
    if name == "profile":
        return "; ".join(f"{r['variant']} {_n(r['tiles_per_s'])}" for r in f.get("rows", []))
    if name == "input":
        return ", ".join(f"{k} {_n(v)} s" for k, v in f.get("seconds", {}).items())
    if name == "env":
        return f"{f.get('gpu') or 'no GPU'}, torch {f.get('torch')}, CUDA {f.get('cuda')}"
    return ""


def _n(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f} %"


def _headlines(steps: list[dict]) -> dict:
    f = {s["step"]: s.get("figures") or {} for s in steps}
    monai = {r["setting"]: r for r in _get(f, "monai", "results", "rows", default=[]) or []}
    shape = _get(f, "fast-z", "shape") or _get(f, "paper-slab", "shape") or ["?"] * 3
    return {
        "volume": "x".join(map(str, shape)),
        "side": shape[-1],
        # the steps the stains ran with (the toy run's are smaller, with its tile)
        "fast_step": _get(f, "fast-z", "config", "step", default=192),
        "paper_step": _get(f, "paper-slab", "config", "step", default=64),
        "paper_planes": (_get(f, "paper-slab", "shape") or ["?"])[0],
        "paper_1536_s_est": _get(f, "paper-slab", "est_1536_s"),
        "fast_1536_s": _get(f, "fast-z", "stain_s"),
        "fast_1536_s_with_cluster_start": _get(f, "fast-z", "wall_s"),
        "fusion_ratio": _get(f, "fusion", "wall_ratio"),
        "train_patches_per_s": _get(f, "train", "train", "patches_per_s"),
        "monai_ratio_paper": _get(monai, "paper", "ratio_vstain_over_monai"),
        "monai_ratio_fast": _get(monai, "fast", "ratio_vstain_over_monai"),
        "matmul_tflops": _get(f, "ceilings", "matmul_tflops"),
        "copy_tb_s": _get(f, "ceilings", "copy_tb_s"),
        "tests_passed": _get(f, "tests", "passed"),
        "tests_failed": len(_get(f, "tests", "failed", default=[]) or []),
    }


def _table(steps: list[dict]) -> str:
    h = _headlines(steps)
    rows = [
        ("GPU tests", f"{_n(h['tests_passed'])} passed, {h['tests_failed']} failed", "all pass"),
        ("bf16 matmul 8192³", f"{_n(h['matmul_tflops'])} TFLOP/s", "-"),
        ("device copy", f"{_n(h['copy_tb_s'])} TB/s", "-"),
        (f"{h['volume']} fast (z, step {h['fast_step']})", f"{_n(h['fast_1536_s'])} s",
         f"≤ {GOALS['fast_1536_s']:.0f} s at 1536³"),
        (f"{h['side']}³ paper (z, step {h['paper_step']})", f"{_n(h['paper_1536_s_est'])} s (from "
         f"{h['paper_planes']} planes)", f"≤ {GOALS['paper_1536_s']:.0f} s at 1536³"),
        ("fusion zyx / z", f"{_n(h['fusion_ratio'])}×", f"≤ {GOALS['fusion_ratio']:.0f}×"),
        ("vs MONAI (paper, fast)",
         f"{_n(h['monai_ratio_paper'])}×, {_n(h['monai_ratio_fast'])}×",
         f"≥ {GOALS['monai_ratio']}×"),
        ("training mod-cyclegan", f"{_n(h['train_patches_per_s'])} patches/s",
         f"≥ {GOALS['train_patches_per_s']:.0f}"),
    ]  # fmt: skip
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{'what':<{w0}}  {'measured':<{w1}}  goal", "-" * (w0 + w1 + 12)]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    status = "  ".join(f"{s['step']}: {s['status']}" for s in steps)
    return "\n".join(lines) + "\n" + status


# ---------------------------------------------------------------------------------------------
# one step, in its own process


class Ctx:
    """What a step needs: sizes, folders, device, and a way to save its figures as it goes."""

    def __init__(self, args) -> None:
        self.small = args.small
        self.device = args.device
        self.cuda = args.device.startswith("cuda")
        self.details = args.out
        self.work = args.work
        self.name = args.step
        self.figures: dict = {}
        # sizes: the full run and the smoke run
        self.tile = SMALL_TILE if self.small else TILE
        self.side = SMALL_TILE if self.small else 1536
        self.slab_planes = 4 if self.small else 64
        self.copies = 2 if self.small else 24  # the "1536³" volume: slab × copies
        # the paper-setting slab: 256 planes by default
        self.paper_copies = 1 if self.small else max(1, args.paper_planes // self.slab_planes)
        self.steps = (args.only or "").split(",")
        self.cube = 16 if self.small else 512
        self.chunks = (min(64, self.slab_planes), min(256, self.side), min(256, self.side))
        self.model_name = "tiny" if self.small else "paper"

    def save(self, **figures) -> None:
        self.figures.update(figures)
        path = self.details / f"{self.name}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.figures, indent=1, default=_json_default) + "\n")
        tmp.replace(path)

    def path(self, name: str) -> Path:
        return self.work / name

    def model(self) -> Path:
        import _common as C

        return C.model_file(self.model_name, self.work / "models")

    def setting(self, name: str) -> dict:
        """A stain setting's tile, step and blend at this run's tile: paper steps a quarter of
        a tile (64 of 256), fast three quarters (192)."""
        return {"tile": self.tile, "step": self.tile * SETTINGS[name]["steps"] // 4,
                "blend": SETTINGS[name]["blend"]}  # fmt: skip

    def flops(self, config) -> float:
        import _common as C

        return C.tile_flops(config, self.tile)

    def peak_tflops(self) -> float | None:
        return _get(_read(self.details / "ceilings.json"), "matmul_tflops")


def _json_default(v):
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def _run_step(args) -> int:
    ctx = Ctx(args)
    ctx.work.mkdir(parents=True, exist_ok=True)
    fn = globals()["step_" + args.step.replace("-", "_")]
    if ctx.cuda:
        import torch

        if not torch.cuda.is_available():
            ctx.save(error="CUDA is not available on this machine")
            print(f"--device {ctx.device}: CUDA is not available on this machine")
            return 1
    return int(fn(ctx) or 0)


class GpuSampler:
    """GPU utilisation (% of time a kernel ran, NVML) and memory in use, sampled every
    ``interval`` seconds in a thread; ``busy(t0, t1)`` is the mean over that window."""

    def __init__(self, interval: float = 0.1) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            self._nvml = None
        self.interval = interval

    def __enter__(self):
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        nv, h = self._nvml, self._handle
        while not self._stop.is_set():
            try:
                u = nv.nvmlDeviceGetUtilizationRates(h).gpu
                m = nv.nvmlDeviceGetMemoryInfo(h).used
                self.samples.append((time.perf_counter(), int(u), int(m)))
            except Exception:
                pass
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def busy(self, t0: float, t1: float) -> float | None:
        u = [s[1] for s in self.samples if t0 <= s[0] <= t1]
        return sum(u) / len(u) / 100.0 if u else None

    def peak_memory_gib(self) -> float | None:
        return max(s[2] for s in self.samples) / 2**30 if self.samples else None


# -- env ----------------------------------------------------------------------------------------


def step_env(ctx: Ctx) -> int:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def v(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = (
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
        )
    smi = shutil.which("nvidia-smi")
    smi_text = None
    if smi:
        smi_text = subprocess.run([smi], capture_output=True, text=True, timeout=20).stdout
        (ctx.details / "nvidia-smi.txt").write_text(smi_text)
    import _common as C
    import psutil

    pkgs = ["numpy", "scipy", "dask", "distributed", "zarr", "numcodecs", "xarray",
            "scikit-image", "tifffile", "lpips", "monai", "dask-cuda", "torchvision", "pytest"]  # fmt: skip
    ctx.save(
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        gpu=gpu,
        gpus=torch.cuda.device_count(),
        cpu=C._cpu_model(),
        cores=len(os.sched_getaffinity(0)),
        ram_gib=round(psutil.virtual_memory().total / 2**30, 1),
        disk_free_gib=round(shutil.disk_usage(ctx.work).free / 2**30, 1),
        packages={p: v(p) for p in pkgs},
        commit=os.environ.get("VSTAIN_GIT_COMMIT") or _git_commit(),
        driver=_driver(smi_text),
    )
    print(json.dumps(ctx.figures, indent=1))
    return 0


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _driver(smi_text: str | None) -> str | None:
    for line in (smi_text or "").splitlines():
        if "Driver Version" in line:
            return line.split("Driver Version:")[1].split()[0]
    return None


# -- tests --------------------------------------------------------------------------------------


def step_tests(ctx: Ctx) -> int:
    junit = ctx.details / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider",
           "-o", "junit_family=xunit1", f"--junitxml={junit}", "-rA", "-q",
           "tests/test_gpu.py", "tests/test_tiling.py", "tests/test_train.py"]  # fmt: skip
    print("+ " + " ".join(cmd[1:]), flush=True)
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    ctx.save(command=" ".join(["python", *cmd[1:]]), returncode=rc, **_junit(junit))
    # pytest's 5 means nothing was selected: the gpu tests went missing
    return rc


def _junit(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    if not path.exists():
        return {"passed": 0, "failed": ["no junit XML written"], "skipped": []}
    passed, failed, skipped, props, seconds = 0, [], [], {}, {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        seconds[name] = float(case.get("time") or 0)
        p = {e.get("name"): e.get("value") for e in case.iter("property")}
        if p:
            props[name] = p
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            failed.append(f"{name}: {(bad.get('message') or '')[:400]}")
        elif skip is not None:
            skipped.append(f"{name}: {skip.get('message') or ''}")
        else:
            passed += 1
    return {"passed": passed, "failed": failed, "skipped": skipped, "properties": props,
            "seconds": seconds}  # fmt: skip


# -- ceilings -----------------------------------------------------------------------------------


def _timed(fn, *, repeats: int, warmup: int, cuda: bool) -> float:
    """Seconds per call: the mean of ``repeats`` calls after ``warmup`` (CUDA events on GPU)."""
    import torch

    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def step_ceilings(ctx: Ctx) -> int:
    import torch

    cuda = ctx.cuda
    dev = torch.device(ctx.device)
    n = 8192 if cuda and not ctx.small else 1024
    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=dev, dtype=dtype, generator=g)
    s = _timed(lambda: a @ b, repeats=10, warmup=3, cuda=cuda)
    ctx.save(matmul_n=n, matmul_dtype=str(dtype), matmul_tflops=2 * n**3 / s / 1e12)
    print(f"matmul {n}³ {dtype}: {ctx.figures['matmul_tflops']:.1f} TFLOP/s", flush=True)
    a = b = None  # free the memory for the next measurement

    nbytes = (2 if ctx.small else 4) * 2**30 if cuda else 64 * 2**20
    x = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    x.fill_(1)
    s = _timed(lambda: y.copy_(x), repeats=10, warmup=2, cuda=cuda)
    ctx.save(copy_gib=nbytes / 2**30, copy_tb_s=2 * nbytes / s / 1e12)  # read + write
    print(f"copy {nbytes / 2**30:.2f} GiB: {ctx.figures['copy_tb_s']:.2f} TB/s", flush=True)
    x = y = None

    # the bare generator on one batch of tiles, as the stain calls it (bf16, channels-last)

    from vstain_dask.models import load_model

    model = load_model(ctx.model(), device=ctx.device)
    flops = ctx.flops(model.config)
    rows = []
    for batch in [2] if ctx.small else [32, 64]:
        t = torch.rand(batch, 1, ctx.tile, ctx.tile, device=dev) * 40000
        fmt = torch.channels_last if cuda else torch.contiguous_format
        gen = model.generator.to(memory_format=fmt)
        t = t.contiguous(memory_format=fmt)

        def forward(gen=gen, t=t):
            with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16, enabled=cuda):
                gen(model.to_input(t))

        torch.backends.cudnn.benchmark = False  # as the stain runs it
        s = _timed(forward, repeats=5 if cuda else 1, warmup=2 if cuda else 1, cuda=cuda)
        peak = ctx.figures["matmul_tflops"]
        rows.append({"batch": batch, "tiles_per_s": batch / s,
                     "tflops": batch * flops / s / 1e12,
                     "peak_fraction": batch * flops / s / 1e12 / peak})  # fmt: skip
        print(f"generator ({ctx.model_name}, {flops / 1e9:.1f} GFLOP/tile), batch {batch}: "
              f"{batch / s:,.0f} tiles/s, {rows[-1]['tflops']:.1f} TFLOP/s", flush=True)  # fmt: skip
    ctx.save(generator={**rows[0], "gflop_per_tile": flops / 1e9, "model": ctx.model_name},
             generator_batches=rows)  # fmt: skip
    return 0


# -- profile ------------------------------------------------------------------------------------


def _channels_last_instance_norm(module):
    """``module`` with every ``InstanceNorm2d`` (no affine, no running stats) replaced by one
    reduction that keeps the input's memory format: ``F.instance_norm`` makes a contiguous copy
    of a channels-last input and returns NCHW, so every layer after it converts back."""
    import torch

    class Norm(torch.nn.Module):
        def __init__(self, eps: float) -> None:
            super().__init__()
            self.eps = eps

        def forward(self, x):
            x32 = x.float()
            var, mean = torch.var_mean(x32, dim=(2, 3), keepdim=True, correction=0)
            return ((x32 - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)

    for name, child in list(module.named_modules()):
        if isinstance(child, torch.nn.InstanceNorm2d):
            parent, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent), attr, Norm(child.eps))
    return module


def step_profile(ctx: Ctx) -> int:
    import copy

    import torch

    from vstain_dask.models import load_model

    cuda = ctx.cuda
    dev = torch.device(ctx.device)
    model = load_model(ctx.model(), device=ctx.device)
    flops = ctx.flops(model.config)
    batch = 1 if ctx.small else 32
    x = torch.rand(batch, 1, ctx.tile, ctx.tile, device=dev) * 40000
    rows = []

    def variant(name, gen, *, fmt, benchmark=False, autocast=True, compile_=False):
        torch.backends.cudnn.benchmark = benchmark
        gen = gen.to(memory_format=fmt)
        t = x.contiguous(memory_format=fmt)
        net = torch.compile(gen) if compile_ else gen

        def forward():
            with (
                torch.inference_mode(),
                torch.autocast(dev.type, torch.bfloat16, enabled=autocast and cuda),
            ):
                net(model.to_input(t))  # fmt: skip

        t0 = time.perf_counter()
        forward()
        first = time.perf_counter() - t0
        s = _timed(forward, repeats=1 if ctx.small else 10, warmup=0 if ctx.small else 3,
                   cuda=cuda)  # fmt: skip
        rows.append({"variant": name, "tiles_per_s": batch / s, "ms_per_batch": 1e3 * s,
                     "tflops": batch * flops / s / 1e12, "first_call_s": first})  # fmt: skip
        ctx.save(batch=batch, rows=rows)
        print(f"{name}: {batch / s:,.0f} tiles/s ({1e3 * s:.1f} ms per batch of {batch}, "
              f"{batch * flops / s / 1e12:.1f} TFLOP/s; first call {first:.1f} s)", flush=True)  # fmt: skip
        return net, forward

    cl, nchw = torch.channels_last, torch.contiguous_format
    base = model.generator
    _, fwd = variant("as the stain runs it (channels-last, bf16 autocast)", base, fmt=cl)
    ctx.save(kernels=_kernels(fwd, cuda))
    variant("+ cudnn.benchmark", base, fmt=cl, benchmark=True)
    variant("NCHW, bf16 autocast", base, fmt=nchw)
    swapped = _channels_last_instance_norm(copy.deepcopy(base))
    _, fwd = variant("channels-last instance norm", swapped, fmt=cl)
    ctx.save(kernels_channels_last_norm=_kernels(fwd, cuda))
    variant("channels-last instance norm + cudnn.benchmark", swapped, fmt=cl, benchmark=True)
    variant("torch.compile (inductor)", base, fmt=cl, compile_=cuda)
    return 0


def _kernels(forward, cuda: bool, top: int = 15) -> list[dict]:
    """The operators of one forward pass by total device (or CPU) time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        forward()
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
    total = sum(getattr(e, key, 0) for e in events) or 1
    rows = [{"op": e.key, "calls": e.count, "ms": getattr(e, key, 0) / 1e3,
             "share": getattr(e, key, 0) / total} for e in events[:top]]  # fmt: skip
    for r in rows:
        print(f"  {100 * r['share']:5.1f} %  {r['ms']:8.2f} ms  {r['calls']:5d}×  {r['op'][:90]}")
    return rows


# -- input --------------------------------------------------------------------------------------


def step_input(ctx: Ctx) -> int:
    import dask.array as da

    from vstain_dask import ngff
    from vstain_dask.phantom import write_phantom

    seconds = {}
    t0 = time.perf_counter()
    slab = write_phantom(ctx.path("slab.ome.zarr"), shape=(ctx.slab_planes, ctx.side, ctx.side),
                         material="ti", seed=0, chunks=ctx.chunks, overwrite=True)  # fmt: skip
    seconds["slab"] = time.perf_counter() - t0
    ctx.save(seconds=seconds)
    print(f"phantom slab {ctx.slab_planes}x{ctx.side}²: {seconds['slab']:.1f} s", flush=True)
    level0 = da.from_zarr(ngff.level_array(slab))
    for name, copies in (("paper", ctx.paper_copies), ("volume", ctx.copies)):
        t0 = time.perf_counter()
        data = da.concatenate([level0] * copies, axis=0)
        ngff.write_volume(data, ctx.path(f"{name}.ome.zarr"), scale=5.0, units="micrometer",
                          chunks=ctx.chunks, overwrite=True)  # fmt: skip
        seconds[name] = time.perf_counter() - t0
        ctx.save(seconds=seconds)
        print(f"{name} {tuple(data.shape)}: {seconds[name]:.1f} s", flush=True)
    if "fusion" in ctx.steps:
        t0 = time.perf_counter()
        write_phantom(ctx.path("cube.ome.zarr"), shape=(ctx.cube,) * 3, material="ti", seed=1,
                      chunks=(min(64, ctx.cube), min(256, ctx.cube), min(256, ctx.cube)),
                      overwrite=True)  # fmt: skip
        seconds["cube"] = time.perf_counter() - t0
    stored = {n: _du(ctx.path(f"{n}.ome.zarr")) / 2**30 for n in ("slab", "volume", "paper")}
    ctx.save(seconds=seconds, stored_gib=stored,
             made_of="the phantom slab repeated along z, same chunks and codec")  # fmt: skip
    print(f"seconds {seconds}; stored GiB {stored}", flush=True)
    return 0


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- stains -------------------------------------------------------------------------------------

#: each setting's step in quarters of the tile, and its blend
SETTINGS = {
    "paper": {"steps": 1, "blend": "mean"},
    "fast": {"steps": 3, "blend": "gaussian"},
}


class BlockClock:
    """When each block of a stain finished: the job's ledger of finished blocks, read every
    ``interval`` seconds in a thread (the ledger goes when the job completes). Saved as the
    step's ``progress`` as it goes, so a stain stopped at its time limit still says how far it
    got and at what rate."""

    def __init__(self, ctx: Ctx, output: Path, label: str, interval: float = 0.5) -> None:
        from vstain_dask.stain import _Ledger

        self.ledger = _Ledger(output)
        self.ctx, self.label, self.interval = ctx, label, interval
        self.t0 = time.perf_counter()
        self.done_at: list[float] = []  # seconds after t0 at which the 1st, 2nd, ... block was seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        last_save = 0.0
        while not self._stop.wait(self.interval):
            n = len(self.ledger.done())
            now = time.perf_counter() - self.t0
            self.done_at += [now] * max(0, n - len(self.done_at))
            if now - last_save > 5:
                progress = dict(self.ctx.figures.get("progress", {}))
                progress[self.label] = {"seconds": round(now, 1), "blocks_done_at": self.done_at}
                self.ctx.save(progress=progress)
                last_save = now

    def phases(self, end: float, blocks: int) -> dict:
        """First block (start-up, compilation), the steady blocks, and the rest (the pyramid,
        marking complete), in seconds since the stain began."""
        t = self.done_at[:blocks]
        if not t:
            return {}
        steady = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else None
        return {"first_block_s": t[0], "last_block_s": t[-1], "after_last_block_s": end - t[-1],
                "steady_blocks_per_s": steady, "blocks_done_at": t}  # fmt: skip


def _stain(ctx: Ctx, source: Path, setting: str, axes: str, *, client=None, **config) -> dict:
    """One stain, OME-Zarr to OME-Zarr with the pyramid, as ``run_stain`` runs it (the product's
    default cluster for the device, started here unless ``client`` is given); its figures."""
    import contextlib

    from vstain_dask.cluster import ClusterConfig, connect
    from vstain_dask.models import load_model
    from vstain_dask.stain import StainConfig, _local_gpu_workers, stain_to_zarr

    model = ctx.model()
    flops = ctx.flops(load_model(model).config)
    cfg = StainConfig(axes=axes, device=ctx.device, **ctx.setting(setting), **config)
    out = ctx.path(f"out-{setting}-{axes}.ome.zarr")
    with contextlib.ExitStack() as stack:
        t_start = time.perf_counter()
        if client is None:
            cluster = _local_gpu_workers(ClusterConfig(dashboard=False), ctx.device)
            client = stack.enter_context(connect(cluster))
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        ctx.save(cluster_start_s=time.perf_counter() - t_start)
        gpu = stack.enter_context(GpuSampler())
        clock = stack.enter_context(BlockClock(ctx, out, f"{setting}-{axes}"))
        t0 = time.perf_counter()
        report = stain_to_zarr(source, out, model=model, config=cfg, client=client,
                               overwrite=True, progress=False)  # fmt: skip
        t1 = time.perf_counter()
    peak = ctx.peak_tflops()
    achieved = report.tiles * flops / report.seconds / 1e12
    phases = clock.phases(t1 - clock.t0, report.blocks)
    if phases:  # GPU busy in each phase: where it waits
        for name, a, b in (("first_block", 0, phases["first_block_s"]),
                           ("steady", phases["first_block_s"], phases["last_block_s"]),
                           ("after_last_block", phases["last_block_s"], t1 - clock.t0)):  # fmt: skip
            phases[f"gpu_busy_{name}"] = gpu.busy(clock.t0 + a, clock.t0 + b)
        if phases["steady_blocks_per_s"]:
            tiles_per_block = report.tiles / report.blocks
            phases["steady_tiles_per_s"] = phases["steady_blocks_per_s"] * tiles_per_block
    fig = {
        "setting": setting, "axes": axes, "shape": list(_shape(source)),
        "config": cfg.to_dict(), "workers": workers, "cluster_start_s": t0 - t_start,
        "wall_s": t1 - t_start, "stain_s": report.seconds, "blocks": report.blocks,
        "tiles": report.tiles, "tiles_per_s": report.tiles_per_s,
        "voxels_per_s": report.voxels_per_s, "task_seconds": report.timings,
        "tflops": achieved, "peak_tflops": peak,
        "peak_fraction": achieved / peak if peak else None,
        "gpu_busy": gpu.busy(t0, t1), "gpu_memory_peak_gib": gpu.peak_memory_gib(),
        "output_gib": _du(out) / 2**30, "phases": phases,
    }  # fmt: skip
    print(f"{setting}-{axes} {fig['shape']}: {report.seconds:.1f} s ({t1 - t_start:.1f} s with "
          f"the cluster's start), {report.tiles} tiles, {report.tiles_per_s:,.0f} tiles/s, "
          f"{achieved:.1f} TFLOP/s, GPU busy {_pct(fig['gpu_busy'])}, {workers} worker(s), "
          f"task-s {report.timings}; phases {phases}", flush=True)  # fmt: skip
    fig["output"] = str(out)
    return fig


def _shape(path: Path) -> tuple[int, ...]:
    from vstain_dask import ngff

    return tuple(ngff.level_array(path).shape)


def step_fast_z(ctx: Ctx) -> int:
    fig = _stain(ctx, ctx.path("volume.ome.zarr"), "fast", "z")
    ctx.save(**fig)
    shutil.rmtree(fig["output"], ignore_errors=True)
    return 0


def step_paper_slab(ctx: Ctx) -> int:
    from vstain_dask.tiling import count_tiles

    fig = _stain(ctx, ctx.path("paper.ome.zarr"), "paper", "z")
    full = (ctx.side,) * 3
    tiles_full = count_tiles(full, tile=ctx.tile, step=ctx.setting("paper")["step"], axes="z")
    scale = tiles_full / fig["tiles"]
    ph = fig["phases"]
    # the first block carries the fixed costs (model load, compilation); the steady rate
    # carries the rest, and what follows the last block (the pyramid) grows with the volume
    est_steady = None
    if ph.get("steady_tiles_per_s"):
        tiles_first = fig["tiles"] / fig["blocks"]
        est_steady = (ph["first_block_s"] + (tiles_full - tiles_first) / ph["steady_tiles_per_s"]
                      + ph["after_last_block_s"] * scale)  # fmt: skip
    ctx.save(**fig, tiles_1536=tiles_full, est_1536_s=est_steady or fig["stain_s"] * scale,
             est_1536_s_proportional=fig["stain_s"] * scale, est_1536_s_steady=est_steady,
             extrapolation="first block + remaining tiles at the steady rate between the first "
             "and the last block + the time after the last block scaled by the tile ratio "
             "(proportional: stain seconds × tile ratio, fixed costs scaled too)")  # fmt: skip
    print(f"paper setting, 1536³ one axis: {ctx.figures['est_1536_s']:.0f} s estimated "
          f"({fig['stain_s'] * scale:.0f} s proportionally)", flush=True)  # fmt: skip
    shutil.rmtree(fig["output"], ignore_errors=True)
    return 0


def step_fusion(ctx: Ctx) -> int:
    from vstain_dask.cluster import ClusterConfig, connect
    from vstain_dask.stain import _local_gpu_workers

    source = ctx.path("cube.ome.zarr")
    runs = {}
    with connect(_local_gpu_workers(ClusterConfig(dashboard=False), ctx.device)) as client:
        for axes in ("z", "zyx"):
            runs[axes] = _stain(ctx, source, "paper", axes, client=client)
            shutil.rmtree(runs[axes]["output"], ignore_errors=True)
            ctx.save(runs=runs)
    z, zyx = runs["z"], runs["zyx"]
    ctx.save(wall_ratio=zyx["stain_s"] / z["stain_s"], tiles_ratio=zyx["tiles"] / z["tiles"],
             compute_ratio=zyx["task_seconds"]["compute"] / z["task_seconds"]["compute"])  # fmt: skip
    return 0


# -- monai --------------------------------------------------------------------------------------


def step_monai(ctx: Ctx) -> int:
    import bench_monai

    out = ctx.details / "monai-bench.json"
    argv = ["--device", ctx.device, "--workdir", str(ctx.work), "--json", str(out)]
    argv += ["--k", "1", "--settings", "fast", "--repeats", "1"] if ctx.small else \
        ["--full", "--batch", "32", "--repeats", "5"]  # fmt: skip
    rc = bench_monai.main(argv)
    found = _read(out)
    if found is None:
        ctx.save(note="MONAI is not installed: nothing measured")
        return 0
    ctx.save(**found)
    out.unlink()
    return rc


# -- train --------------------------------------------------------------------------------------


class _Enough(Exception):
    """Raised from the epoch callback once the timed window is full."""


def step_train(ctx: Ctx) -> int:
    from vstain_dask.models import InputNormalization
    from vstain_dask.models.config import DiscriminatorConfig, GeneratorConfig
    from vstain_dask.pairs import list_pairs
    from vstain_dask.phantom import write_phantom_pairs
    from vstain_dask.train import PatchDataset, TrainConfig, make_split, measure_stream, scan_pairs
    from vstain_dask.train import train as run_train

    small = ctx.small
    patch = 32 if small else 256
    store = ctx.path("pairs.zarr")
    n_pairs = 4 if small else 12
    write_phantom_pairs(store, n=n_pairs, seed=0, size=(64, 64) if small else (512, 512),
                        overwrite=True)  # fmt: skip
    infos = scan_pairs(store)
    dataset = PatchDataset(store, infos, patch_size=patch, patches_per_pair=100,
                           normalization=InputNormalization(low=0.0, high=50000.0, channels=1))  # fmt: skip
    stream = []
    for workers in (0, 2) if small else (0, 2, 8):
        r = measure_stream(dataset, batch_size=4, workers=workers, batches=4 if small else 60)
        stream.append({"loader_workers": workers, "patches_per_s": r["samples_per_s"]})
        ctx.save(stream=stream)
        print(f"patch stream, {workers} loader processes: {r['samples_per_s']:.0f} patches/s",
              flush=True)  # fmt: skip

    window = 1.0 if small else 60.0
    n_train = len(make_split(list_pairs(store), seed=0).train)
    epoch_patches = 8 if small else 600
    config = TrainConfig(
        variant="mod-cyclegan", epochs=10_000, patch_size=patch,
        patches_per_pair=max(1, math.ceil(epoch_patches / n_train)), device=ctx.device,
        val_every=0, seed=0,
        **({"generator": GeneratorConfig(ngf=4, n_blocks=1),
            "discriminator": DiscriminatorConfig(ndf=4, n_layers=2), "workers": 0}
           if small else {}),
    )  # fmt: skip
    rows: list[dict] = []

    def on_epoch(row: dict) -> None:
        rows.append(row)
        timed = rows[1:]  # the first epoch is the warm-up (cuDNN autotuning, loader start)
        seconds = sum(r["seconds"] for r in timed)
        if timed:
            patches = sum(r["samples_per_s"] * r["seconds"] for r in timed)
            wait = sum(r["data_wait_fraction"] * r["seconds"] for r in timed) / seconds
            ctx.save(train={"patches_per_s": patches / seconds, "seconds": seconds,
                            "epochs": len(timed), "data_wait": wait, "batch": config.batch_size,
                            "loader_workers": config.workers, "patch": patch,
                            "warmup_epoch_s": rows[0]["seconds"], "config": config.to_dict()})  # fmt: skip
            print(f"epoch {row['epoch']}: {row['samples_per_s']:.1f} patches/s, data wait "
                  f"{100 * row['data_wait_fraction']:.1f} %", flush=True)  # fmt: skip
        if seconds >= window:
            raise _Enough

    with GpuSampler() as gpu:
        t0 = time.perf_counter()
        try:
            run_train(store, ctx.path("train-run"), config, overwrite=True, progress=False,
                      on_epoch=on_epoch)  # fmt: skip
        except _Enough:
            pass
        t1 = time.perf_counter()
    warm = rows[0]["seconds"] if rows else 0.0
    ctx.save(gpu_busy=gpu.busy(t0 + warm, t1), gpu_memory_peak_gib=gpu.peak_memory_gib())
    tr = ctx.figures.get("train", {})
    print(f"training mod-cyclegan ({'paper size' if not small else 'tiny'}), batch "
          f"{config.batch_size}: {tr.get('patches_per_s', float('nan')):.1f} patches/s over "
          f"{tr.get('seconds', 0):.0f} s, GPU busy {_pct(ctx.figures['gpu_busy'])}", flush=True)  # fmt: skip
    return 0


# -- sweeps -------------------------------------------------------------------------------------


def step_sweeps(ctx: Ctx) -> int:
    """In-process tiled inference of a stack of planes (paper setting): tiles per call, then
    ``torch.compile``. Each row is saved as it is measured."""
    import numpy as np
    import torch

    from vstain_dask import ngff
    from vstain_dask.models import load_model
    from vstain_dask.tiling import TileGrid, predict_region

    model = load_model(ctx.model(), device=ctx.device)
    fmt = torch.channels_last if ctx.cuda else torch.contiguous_format
    gen = model.generator.to(memory_format=fmt)
    n = 1 if ctx.small else 8
    tries = 1 if ctx.small else 2  # best of
    planes = np.asarray(ngff.level_array(ctx.path("paper.ome.zarr"))[:n], np.float32)[:, None]
    x = torch.from_numpy(planes).to(ctx.device)
    grid = TileGrid(extent=planes.shape[-2:], tile=ctx.tile, step=ctx.setting("paper")["step"])
    tiles = n * grid.n_tiles

    def run(batch: int, compile_: bool = False, to_uint8: bool = True) -> float:
        t0 = time.perf_counter()
        predict_region(x, lambda t: gen(model.to_input(t)), grid=grid, blend="mean",
                       batch_size=batch, compile=compile_, to_uint8=to_uint8)  # fmt: skip
        if ctx.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    rows = []
    batches = [8, 32] if ctx.small else [16, 32, 64, 128]
    for batch in batches:
        run(batch)  # warm-up (cuDNN picks its kernels per shape)
        s = min(run(batch) for _ in range(tries))
        rows.append({"what": f"batch {batch}", "batch": batch, "tiles_per_s": tiles / s})
        ctx.save(rows=rows, planes=n, plane=list(planes.shape[-2:]), tiles=tiles)
        print(f"predict_region, {n} planes, batch {batch}: {tiles / s:,.0f} tiles/s", flush=True)
    s = min(run(32, to_uint8=False) for _ in range(tries))
    rows.append({"what": "batch 32 float32 out", "batch": 32, "tiles_per_s": tiles / s})
    ctx.save(rows=rows)
    print(f"predict_region, batch 32, float32 result to the host: {tiles / s:,.0f} tiles/s",
          flush=True)  # fmt: skip
    backend = "eager" if ctx.small else True
    t0 = time.perf_counter()
    run(32, compile_=backend)
    first = time.perf_counter() - t0
    s = min(run(32, compile_=backend) for _ in range(tries))
    rows.append({"what": f"batch 32 compile={backend}", "batch": 32, "tiles_per_s": tiles / s,
                 "first_call_s": first})  # fmt: skip
    ctx.save(rows=rows)
    print(f"predict_region, batch 32, torch.compile ({backend}): {tiles / s:,.0f} tiles/s "
          f"(first call {first:.1f} s)", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
