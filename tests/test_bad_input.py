"""Bad input, table-driven: every case gives one clear line on stderr, a non-zero exit, no
traceback, and leaves existing files as they were.

Cases go through the real command line (click's runner on the same ``main`` the entry point
runs), on real stores written to a temporary folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from vstain_dask import ngff
from vstain_dask.cli import main

# plain zarr arrays (no NGFF metadata) are opened with a warning that no voxel size is known;
# here that warning is expected, and the case is about what comes after it
pytestmark = pytest.mark.filterwarnings("ignore::vstain_dask.ngff.MissingScaleWarning")

STAIN = ["--tile", "16", "--step", "8", "--batch-size", "4", "--workers", "1", "--no-progress",
         "--ct-levels", "none"]  # fmt: skip


def _snapshot(root: Path) -> dict[str, str]:
    """Hash of every file under ``root``, by relative path: to show nothing was touched."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def bad(tmp_path_factory, ct, model_path):
    """Builds every bad input once; returns name -> (args, expected exit, message part)."""
    d = tmp_path_factory.mktemp("bad")
    src, vol = ct

    (d / "file.txt").write_text("not a store")
    grp = zarr.open_group(store=str(d / "group.zarr"), mode="w")  # no NGFF metadata, no image
    grp.attrs["description"] = "some other tool's group"
    grp.create_group("tables")
    rgb = np.zeros((3, 4, 8, 8), np.uint8)
    ngff.write_volume(rgb, d / "rgb.ome.zarr", axes="czyx", kind="rgb")
    g = zarr.open_group(store=str(d / "empty.zarr"), mode="w")
    g.create_array("0", shape=(0, 8, 8), dtype="u2")
    for name, dtype in (("complex", "c8"), ("bool", "bool")):
        zarr.create_array(store=str(d / f"{name}.zarr"), shape=(4, 8, 8), dtype=dtype)
    nan = np.ones((4, 16, 16), np.float32)
    nan[1, 3, 3] = np.nan
    ngff.write_volume(nan, d / "nan.ome.zarr", axes="zyx")
    ngff.write_volume(vol[:4, :16, :16], d / "corrupt.ome.zarr", axes="zyx", chunks=(2, 8, 8))
    chunk = next(
        p
        for p in (d / "corrupt.ome.zarr" / "0").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(b"\x00garbage" * 3)
    ngff.write_volume(vol[:4, :16, :16], d / "badjson.ome.zarr", axes="zyx")
    (d / "badjson.ome.zarr" / "0" / "zarr.json").write_text('{"zarr_format": 3, "shape": [4,')

    blob = Path(model_path).read_bytes()
    (d / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    (d / "foreign.pt").write_bytes(b"PK\x03\x04 this is no checkpoint")
    import torch

    torch.save({"model.0.weight": torch.zeros(3, 3, 7, 7)}, d / "bare.pth")

    out_exists = d / "exists.ome.zarr"
    out_exists.mkdir()
    (out_exists / "keep.txt").write_text("precious")

    locked = d / "locked.ome.zarr"
    job = locked.with_name(locked.name + ".vstain-job")
    job.mkdir()
    (job / "lock.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))

    m = ["--model", str(model_path)]
    return {
        "missing path": ([str(d / "nope.zarr"), *m], 2, "does not exist"),
        "file, not a store": ([str(d / "file.txt"), *m], 2, "file.txt"),
        "group without NGFF": ([str(d / "group.zarr"), *m], 2, "group.zarr"),
        "RGB input": ([str(d / "rgb.ome.zarr"), *m], 2, "greyscale"),
        "empty array": ([str(d / "empty.zarr"), *m], 2, "empty"),
        "complex dtype": ([str(d / "complex.zarr"), *m], 2, "complex"),
        "bool dtype": ([str(d / "bool.zarr"), *m], 2, "bool"),
        "NaN voxels": (
            [str(d / "nan.ome.zarr"), *m, "-o", str(d / "nan-out.zarr")],
            2,
            "1 NaN or infinite voxel(s) in block-0-0-0, the first nan at (z, y, x) = (1, 3, 3)",
        ),  # fmt: skip
        "corrupt chunk": (
            [str(d / "corrupt.ome.zarr"), *m, "-o", str(d / "c-out.zarr")],
            2,
            f"the input chunk {chunk} cannot be read",
        ),  # fmt: skip
        "corrupt array metadata": (
            [str(d / "badjson.ome.zarr"), *m],
            2,
            f"{d / 'badjson.ome.zarr' / '0' / 'zarr.json'} is corrupt",
        ),  # fmt: skip
        "block not a multiple of the chunks": (
            [str(src), *m, "--chunks", "4,16,16", "--block", "3,16,16"],
            2,
            "block size along z must be a multiple of the chunk size 4, got 3",
        ),  # fmt: skip
        "block recomputing every tile": (
            [str(src), *m, "--chunks", "1,1,1", "--block", "1,1,1"],
            2,
            "makes every tile be computed",
        ),  # fmt: skip
        "tile beyond memory": (
            [str(src), *m, "--tile", "100000", "--step", "64"],
            2,
            "--tile 100000 (tile=) needs about",
        ),
        "truncated checkpoint": ([str(src), "--model", str(d / "truncated.pt")], 2, "truncated.pt"),
        "foreign file as checkpoint": (
            [str(src), "--model", str(d / "foreign.pt")],
            2,
            "foreign.pt",
        ),
        "bare state dict": ([str(src), "--model", str(d / "bare.pth")], 2, "model import"),
        "missing checkpoint": ([str(src), "--model", str(d / "none.pt")], 2, "does not exist"),
        "output exists": ([str(src), *m, "-o", str(out_exists)], 2, "--overwrite"),
        "output inside input": ([str(src), *m, "-o", str(src / "out.zarr")], 2, "inside the input"),
        "output folder missing": (
            [str(src), *m, "-o", str(d / "file.txt" / "out.zarr")],
            2,
            "output folder",
        ),  # fmt: skip
        "step 0": ([str(src), *m, "--step", "0"], 2, "step must be an integer in 1..16"),
        "step > tile": ([str(src), *m, "--step", "17"], 2, "step must be an integer in 1..16"),
        "unknown axis": ([str(src), *m, "--axes", "zw"], 2, "axes must be letters from z, y, x"),
        "unknown blend": ([str(src), *m, "--blend", "max"], 2, "'mean', 'gaussian', 'cosine'"),
        "unknown cluster": ([str(src), *m, "--cluster", "k8s"], 2, "'local', 'cuda', 'slurm'"),
        "unreachable scheduler": (
            [
                str(src),
                *m,
                "-o",
                str(d / "u.zarr"),
                "--scheduler",
                "tcp://127.0.0.1:9",
                "--cluster-timeout",
                "3",
            ],
            1,
            "could not reach the scheduler",
        ),  # fmt: skip
        "second job on output": (
            [str(src), *m, "-o", str(locked), "--resume"],
            2,
            f"pid {os.getpid()}",
        ),  # fmt: skip
        "--resume with --overwrite": (
            [str(src), *m, "-o", str(out_exists), "--resume", "--overwrite"],
            2,
            "either --resume or --overwrite",
        ),  # fmt: skip
        "cuda cluster without a GPU": (
            [str(src), *m, "-o", str(d / "cuda.zarr"), "--cluster", "cuda"],
            1,
            # the test extra has no dask-cuda; with it, dask-cuda finds no GPU
            "needs dask-cuda: pip install 'vstain-dask[cuda]'"
            if importlib.util.find_spec("dask_cuda") is None
            else "could not start a CUDA cluster",
        ),  # fmt: skip
    }, d


CASES = [
    "missing path", "file, not a store", "group without NGFF", "RGB input", "empty array",
    "complex dtype", "bool dtype", "NaN voxels", "corrupt chunk", "corrupt array metadata",
    "block not a multiple of the chunks", "block recomputing every tile", "tile beyond memory",
    "truncated checkpoint",
    "foreign file as checkpoint", "bare state dict", "missing checkpoint", "output exists",
    "output inside input", "output folder missing", "step 0", "step > tile", "unknown axis",
    "unknown blend", "unknown cluster", "unreachable scheduler", "second job on output",
    "--resume with --overwrite", "cuda cluster without a GPU",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_nonzero_nothing_lost(bad, case):
    cases, root = bad
    args, code, message = cases[case]
    if case == "cuda cluster without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    before = _snapshot(root)
    result = CliRunner().invoke(main, ["stain", args[0], *STAIN, *args[1:]])  # case options last
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error")]
    assert result.exit_code == code, (case, result.output)
    assert "Traceback" not in result.output
    # one error line, the last thing said (a job that started has printed its dashboard line)
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), (case, result.stderr)
    assert message in errors[0], (case, errors[0])
    # nothing that existed before was changed or removed (a failed job may add its own files)
    after = _snapshot(root)
    assert [k for k, v in before.items() if after.get(k) != v] == []


def test_tile_larger_than_volume_works_by_padding(ct, model_path, tmp_path):
    src, vol = ct
    out = tmp_path / "big-tile.zarr"
    result = CliRunner().invoke(
        main, ["stain", str(src), "--model", str(model_path), "-o", str(out), "--tile", "64",
               "--step", "32", "--workers", "1", "--no-progress", "--ct-levels", "none"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert ngff.open_volume(out).shape == (3, *vol.shape)
