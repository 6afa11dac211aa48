"""Byte references for restructuring: the same commands must give the same bytes.

Runs a fixed set of commands on fixed inputs (a phantom, the bundled model, a tiny training run
and its evaluation) and records a SHA-256 of what each wrote: the decoded arrays of every
OME-Zarr level, labels and uncertainty included, the generator's weights, and the evaluation's
numbers. Record before a change, check after it, on the same machine and library versions
(floating-point results may differ in their last bits between torch builds, so the reference
is not portable; the file records the versions it was made with and the check says when they
differ).

    python benchmarks/golden.py --record benchmarks/golden-reference.json
    python benchmarks/golden.py --check benchmarks/golden-reference.json

Takes about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

STAIN = ["--workers", "1", "--no-progress", "--step", "128", "--chunks", "16,64,64"]

#: name -> the stain's extra options (the phantom and the bundled model are the same for all)
STAINS = {
    "stain-z": ["--axes", "z"],
    "stain-zyx-passes": ["--axes", "zyx", "--fusion", "passes"],
    "stain-zyx-blocks": ["--axes", "zyx", "--fusion", "blocks"],
    "stain-mask-alpha-uncertainty": ["--axes", "zyx", "--mask", "--alpha", "--uncertainty"],
    "stain-prefilter-gaussian": ["--axes", "z", "--prefilter-sigma", "1", "--blend", "gaussian"],
}

TRAIN = ["--epochs", "1", "--batch-size", "2", "--patch-size", "32", "--patches-per-pair", "4",
         "--workers", "0", "--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--disc-layers", "2",
         "--device", "cpu", "--seed", "0", "--threads", "1", "--no-progress"]  # fmt: skip


def _cli(*args) -> None:
    cmd = [sys.executable, "-m", "vstain_dask.cli", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd[2:])} failed ({r.returncode}):\n{r.stderr}")


def _hash_array(arr) -> str:
    a = np.ascontiguousarray(np.asarray(arr[...]))
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


def _hash_store(path: Path) -> dict[str, str]:
    """SHA-256 of the decoded contents of every array under a zarr store, by its path."""
    import zarr

    root = zarr.open_group(store=str(path), mode="r")
    out = {}
    for name, arr in sorted(root.arrays(), key=lambda kv: kv[0]):
        out[name] = _hash_array(arr)
    for name in sorted(root.group_keys()):
        for sub, digest in _hash_store(path / name).items():
            out[f"{name}/{sub}"] = digest
    return out


def _hash_weights(model: Path) -> str:
    from vstain_dask.models import load_model

    state = load_model(model).generator.state_dict()
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _hash_table(path: Path) -> str:
    """The evaluation's numbers: its summary table and per-pair rows (not the paths and file
    hashes beside them, which name this run's temporary folder and the checkpoint's date)."""
    report = json.loads(path.read_text())
    rows = {k: report.get(k) for k in ("metrics", "table", "per_pair")}
    text = json.dumps(rows, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run(work: Path) -> dict[str, object]:
    ct = work / "phantom.ome.zarr"
    _cli("phantom", ct, "--shape", "32,96,96", "--material", "mg", "--seed", "3",
         "--chunks", "16,64,64", "--no-progress")  # fmt: skip
    digests: dict[str, object] = {}
    for name, extra in STAINS.items():
        out = work / f"{name}.ome.zarr"
        _cli("stain", ct, "-o", out, *STAIN, *extra)
        digests[name] = _hash_store(out)
    pairs = work / "pairs.zarr"
    _cli("phantom-pairs", pairs, "--n", "4", "--seed", "1", "--size", "64,64", "--no-progress")
    run_dir = work / "run"
    _cli("train", pairs, "-o", run_dir, *TRAIN)
    model = run_dir / "model.pt"
    digests["train-1-epoch-weights"] = _hash_weights(model)
    report = work / "report"
    _cli("evaluate", pairs, "-m", f"tiny={model}", "-o", report, "--patches", "3",
         "--patch-size", "32", "--tile", "32", "--step", "16", "--no-lpips", "--no-panels",
         "--no-progress", "--device", "cpu")  # fmt: skip
    tables = sorted(report.glob("*.json"))
    if not tables:
        raise SystemExit(f"evaluate wrote no JSON table in {report}")
    digests["evaluate-table"] = {t.name: _hash_table(t) for t in tables}
    return digests


def _versions() -> dict[str, str]:
    import dask
    import torch
    import zarr

    return {"python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, "dask": dask.__version__,
            "zarr": zarr.__version__, "machine": platform.machine()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path, help="write the reference JSON here")
    mode.add_argument("--check", type=Path, help="compare with this reference JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        digests = run(Path(tmp))
    if args.record:
        args.record.write_text(
            json.dumps({"versions": _versions(), "digests": digests}, indent=1) + "\n"
        )
        print(f"recorded {len(digests)} references in {args.record}")
        return
    ref = json.loads(args.check.read_text())
    if ref["versions"] != _versions():
        print(f"note: recorded with {ref['versions']}, checked with {_versions()}")
    differ = [k for k in ref["digests"] if ref["digests"][k] != digests.get(k)]
    for k in differ:
        was, now = ref["digests"][k], digests.get(k)
        if isinstance(was, dict) and isinstance(now, dict):
            parts = [p for p in was if was[p] != now.get(p)]
            print(f"DIFFERENT {k}: {', '.join(parts)}")
        else:
            print(f"DIFFERENT {k}")
    same = len(ref["digests"]) - len(differ)
    print(f"{same} of {len(ref['digests'])} references give the same bytes")
    raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()
