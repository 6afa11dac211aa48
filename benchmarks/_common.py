"""Shared helpers of the benchmark scripts: run header, timing, memory sampling, models, data.

Every script prints a header (machine, versions, date) and a small table, and with ``--json OUT``
writes ``{"benchmark", "header", "args", "results", "notes"}`` to ``OUT``. Figures meant to be
compared are measured in the same run, so a busy machine shifts them together.

Not part of the package: the scripts put this folder on ``sys.path`` and import it as
``_common``. Its functions run on dask workers too (peak-RSS sampling); they are pickled by value
so that workers need not import this folder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

# functions of this module are sent to workers by value (the workers need not find this folder)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

GIB = 1024**3
MIB = 1024**2

#: model presets: name -> GeneratorConfig fields. ``paper`` is the paper's ResNet-9 generator
#: (64 base features, 3-channel input); ``small`` the size of the bundled default model;
#: ``tiny`` the size the tests use; ``identity`` the cheapest generator the config allows (one
#: feature, no residual block), for I/O measurements.
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "paper": {"in_channels": 3, "ngf": 64, "n_blocks": 9},
    "small": {"in_channels": 1, "ngf": 16, "n_blocks": 3},
    "tiny": {"in_channels": 1, "ngf": 8, "n_blocks": 2},
    "identity": {"in_channels": 1, "ngf": 1, "n_blocks": 0},
}


# -- command line ------------------------------------------------------------------------------


def parser(description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark shares."""
    p = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="the issue's full-size run (meant for a GPU machine; hours on a 2-core CPU)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device for the model: cpu, cuda, cuda:1, ... [cpu]",
    )
    p.add_argument("--json", metavar="OUT", type=Path, help="write the figures to OUT as JSON")
    p.add_argument(
        "--workdir",
        type=Path,
        help="where phantoms, models and outputs go (reused between runs) [a temporary folder]",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="timed repetitions of each measurement [3]"
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="use a running dask scheduler instead of starting the local cluster",
    )
    return p


def shape3(text: str) -> tuple[int, int, int]:
    """``Z,Y,X`` (or ``ZxYxX``) from the command line: three positive integers."""
    parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p]
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"expected Z,Y,X, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def check_device(device: str) -> str:
    """Fail early, in one line, when the asked device is not there."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: CUDA is not available on this machine")
    return str(dev)


@contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    """``path`` (created), or a temporary folder removed at the end."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vstain-bench-") as tmp:
        yield Path(tmp)


# -- run header --------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _git() -> dict[str, Any] | None:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "vstain_dask"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit or None, "package_modified": bool(dirty)} if commit else None


def header(device: str = "cpu") -> dict[str, Any]:
    """Machine, versions, date and command of this run."""
    import psutil
    import torch

    gpu = None
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / GIB, 1)}
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {
            "cpu": _cpu_model(),
            "cores": _cores(),
            "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
            "load_1min_at_start": round(os.getloadavg()[0], 2),
            "gpu": gpu,
            "device": device,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": _version("numpy"),
            "dask": _version("dask"),
            "distributed": _version("distributed"),
            "zarr": _version("zarr"),
            "monai": _version("monai"),
            "vstain-dask": _version("vstain-dask"),
            "git": _git(),
        },
    }


def print_header(title: str, head: dict[str, Any]) -> None:
    m, v = head["machine"], head["versions"]
    gpu = f", GPU {m['gpu']['name']} ({m['gpu']['memory_gib']} GiB)" if m["gpu"] else ""
    git = v["git"] or {}
    print(f"# {title}")
    print(f"date     {head['date']}")
    print(f"command  {head['command']}")
    print(
        f"machine  {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM{gpu}; "
        f"load {m['load_1min_at_start']} at start; device {m['device']}"
    )
    print(
        f"versions python {v['python']}, torch {v['torch']}, dask {v['dask']}, "
        f"distributed {v['distributed']}, zarr {v['zarr']}"
        + (f", monai {v['monai']}" if v["monai"] else "")
        + (f", vstain-dask {v['vstain-dask']}" if v["vstain-dask"] else "")
        + (f" @ {git['commit']}" if git.get("commit") else "")
        + (" (package modified)" if git.get("package_modified") else "")
    )
    print(flush=True)


def finish(
    name: str,
    head: dict[str, Any],
    args: argparse.Namespace,
    results: Any,
    notes: Sequence[str] = (),
) -> None:
    """Print the notes and, with ``--json``, write everything to the file."""
    for note in notes:
        print(f"note: {note}")
    if args.json is not None:
        _write_json(name, head, args, results, notes, complete=True)
        print(f"figures written to {args.json}")


def save_partial(name: str, head: dict[str, Any], args: argparse.Namespace, results: Any) -> None:
    """With ``--json``, write the figures measured so far, marked ``"complete": false``.

    The long runs call this after each row, so that a run stopped by a time limit (``timeout``
    sends SIGTERM, then SIGKILL) still leaves its finished rows on disk; ``finish`` overwrites
    the file with the complete figures."""
    if args.json is not None:
        _write_json(name, head, args, results, (), complete=False)


def _write_json(name, head, args, results, notes, *, complete: bool) -> None:
    payload = {
        "benchmark": name,
        "complete": complete,
        "header": head,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
        "notes": list(notes),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(args.json.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    tmp.replace(args.json)  # a reader never sees half a file


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


# -- tables and numbers ------------------------------------------------------------------------


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain fixed-width table of ``rows`` (dicts) with the given column keys."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def fmt(value: Any) -> str:
    """Numbers with three significant digits (more for large ones), the rest as text."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def timeit(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summary(times: Sequence[float]) -> dict[str, float]:
    """min / median / max of a list of seconds (min is the figure least disturbed by others)."""
    return {
        "min_s": min(times),
        "median_s": statistics.median(times),
        "max_s": max(times),
        "n": len(times),
    }


# -- memory ------------------------------------------------------------------------------------


@dataclass
class _Sampler:
    thread: threading.Thread
    stop: threading.Event
    peak: int
    start: int


def _sampler_start(interval: float) -> _Sampler:
    """Sample this process's RSS every ``interval`` seconds in a daemon thread."""
    import psutil

    proc = psutil.Process()
    rss = proc.memory_info().rss
    sampler = _Sampler(thread=None, stop=threading.Event(), peak=rss, start=rss)  # type: ignore[arg-type]

    def loop() -> None:
        while not sampler.stop.is_set():
            sampler.peak = max(sampler.peak, proc.memory_info().rss)
            sampler.stop.wait(interval)

    sampler.thread = threading.Thread(target=loop, name="bench-rss", daemon=True)
    sampler.thread.start()
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
    except Exception:
        pass
    return sampler


def _sampler_stop(sampler: _Sampler | None) -> dict[str, float]:
    """Peak and start RSS (MiB), and peak CUDA memory when CUDA was used."""
    import psutil

    if sampler is None:
        return {}
    sampler.stop.set()
    sampler.thread.join()
    sampler.peak = max(sampler.peak, psutil.Process().memory_info().rss)
    out = {"peak_rss_mib": sampler.peak / MIB, "start_rss_mib": sampler.start / MIB}
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / MIB
    except Exception:
        pass
    return out


# the sampler lives on the worker object: functions sent by value get fresh module globals
def _worker_start(interval: float, dask_worker=None) -> None:
    old = getattr(dask_worker, "_bench_rss", None)
    if old is not None:
        _sampler_stop(old)
    dask_worker._bench_rss = _sampler_start(interval)


def _worker_stop(dask_worker=None) -> dict[str, float]:
    sampler = getattr(dask_worker, "_bench_rss", None)
    dask_worker._bench_rss = None
    return _sampler_stop(sampler)


@contextmanager
def worker_memory(client, interval: float = 0.02) -> Iterator[dict[str, dict[str, float]]]:
    """Sample the RSS of every worker process while the block runs.

    Yields a dict that is filled on exit: worker address -> ``peak_rss_mib``,
    ``start_rss_mib`` (and ``peak_cuda_mib`` on GPUs).
    """
    found: dict[str, dict[str, float]] = {}
    client.run(_worker_start, interval)
    try:
        yield found
    finally:
        found.update(client.run(_worker_stop))


@contextmanager
def process_memory(interval: float = 0.02) -> Iterator[dict[str, float]]:
    """Sample this process's RSS while the block runs (filled on exit, as ``worker_memory``)."""
    found: dict[str, float] = {}
    sampler = _sampler_start(interval)
    try:
        yield found
    finally:
        found.update(_sampler_stop(sampler))


# -- models ------------------------------------------------------------------------------------


def generator_config(preset: str):
    """The :class:`GeneratorConfig` of a preset (see ``MODEL_PRESETS``)."""
    from vstain_dask.models import GeneratorConfig

    if preset not in MODEL_PRESETS:
        raise SystemExit(
            f"model must be one of {', '.join(MODEL_PRESETS)} or a .pt file, got {preset!r}"
        )
    return GeneratorConfig(**MODEL_PRESETS[preset])


def model_file(preset_or_path: str, folder: Path, *, seed: int = 0) -> Path:
    """A checkpoint: an existing ``.pt`` file as given, or a randomly initialised preset written
    to ``folder`` (reused when already there). Speed does not depend on the weights."""
    p = Path(preset_or_path)
    if p.suffix == ".pt":
        if not p.is_file():
            raise SystemExit(f"--model {p}: no such file")
        return p
    from vstain_dask.models import InputNormalization, build_generator, save_model

    config = generator_config(preset_or_path)
    path = folder / f"model-{preset_or_path}-seed{seed}.pt"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        save_model(
            path,
            generator=build_generator(config, seed=seed),
            normalization=InputNormalization(
                low=0.0, high=65535.0, channels=config.in_channels, ct_normalized=False
            ),
            variant="mod-cyclegan",
            notes=f"benchmark model '{preset_or_path}': random weights (seed {seed})",
            card=False,
        )
    return path


def tile_flops(config, tile: int = 256) -> float:
    """FLOPs of one generator pass on a ``tile``² input (2 per multiply-add), counted by
    ``torch.utils.flop_counter``.

    Every layer's output area is proportional to the input's (same-padded convolutions, exact
    halvings and doublings), so for tiles that are multiples of 32 the count is made on a 32²
    input on the CPU and scaled by ``(tile / 32)²`` (exact, and far quicker than a full pass);
    other sizes are counted at full size on the meta device (nothing computed).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vstain_dask.models.networks import build_generator

    small = 32
    if tile % small == 0:
        net = build_generator(config, seed=0).eval()
        x = torch.zeros(1, config.in_channels, small, small)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            net(x)
        return float(counter.get_total_flops()) * (tile // small) ** 2
    with torch.device("meta"):
        net = build_generator(config)
        x = torch.empty(1, config.in_channels, tile, tile)
        with FlopCounterMode(display=False) as counter:
            net(x)
    return float(counter.get_total_flops())


# -- data --------------------------------------------------------------------------------------


def phantom(
    folder: Path,
    shape: Sequence[int],
    *,
    chunks: Sequence[int] | None = None,
    material: str = "ti",
    seed: int = 0,
) -> Path:
    """A phantom CT OME-Zarr of ``shape`` in ``folder``; written once, then reused."""
    from vstain_dask.phantom import write_phantom

    shape = tuple(int(s) for s in shape)
    chunks = tuple(int(c) for c in (chunks or [min(s, 256) for s in shape]))
    name = "phantom-{}-c{}-{}-s{}.ome.zarr".format(
        "x".join(map(str, shape)), "x".join(map(str, chunks)), material, seed
    )
    path = folder / name
    done = folder / (name + ".done")
    if not done.exists():
        t0 = time.perf_counter()
        write_phantom(
            path, shape=shape, material=material, seed=seed, chunks=chunks, overwrite=True
        )
        done.write_text(f"{time.perf_counter() - t0:.1f} s\n")
    return path


def read_planes(path: Path, z: Sequence[int] | slice) -> Any:
    """Level-0 planes of a phantom store as a float32 numpy array (N, Y, X)."""
    import numpy as np

    from vstain_dask import ngff

    arr = ngff.level_array(path)
    return np.asarray(arr[z], dtype=np.float32)


@contextmanager
def local_client(
    *,
    workers: int | None = None,
    threads: int | None = None,
    device: str = "cpu",
    scheduler: str | None = None,
    malloc_trim: bool = False,
) -> Iterator[Any]:
    """A client on the product's own local cluster (``vstain_dask.cluster.connect``), or on the
    running ``scheduler`` when one is given (then ``workers`` and ``threads`` are its own).
    ``malloc_trim`` keeps distributed's ``MALLOC_TRIM_THRESHOLD_`` in the workers (see
    ``ClusterConfig.malloc_trim``).

    With a CUDA device the default is one worker per GPU (the design's one worker process per
    GPU), with ``workers`` processes on CPU otherwise.
    """
    from vstain_dask.cluster import ClusterConfig, connect

    if workers is None and device.startswith("cuda"):
        import torch

        workers = torch.cuda.device_count() if device == "cuda" else 1
    config = ClusterConfig(
        scheduler=scheduler,
        workers=workers,
        threads_per_worker=threads,
        dashboard=False,
        malloc_trim=malloc_trim,
    )
    with connect(config) as client:
        yield client


def worker_threads(client) -> dict[str, int]:
    """torch threads each worker uses (after its first task loaded a model)."""

    def threads() -> int:
        import torch

        return torch.get_num_threads()

    return client.run(threads)
