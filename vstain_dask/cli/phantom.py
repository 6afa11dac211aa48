"""``vstain-dask phantom`` and ``vstain-dask phantom-pairs``: synthetic data."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import click

from vstain_dask.cli._options import IntTuple

_MATERIALS = ("mg", "ti", "peek")


def _progress_callback(desc: str):
    """A dask local-scheduler callback that drives one tqdm bar across several computes."""
    from dask.callbacks import Callback
    from tqdm.auto import tqdm

    class _Bar(Callback):
        def __init__(self) -> None:
            super().__init__()
            self.bar = None  # created on the first compute, so early errors print no bar

        def _start_state(self, dsk, state):
            n = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
            if self.bar is None:
                self.bar = tqdm(total=0, desc=desc, unit="task", file=sys.stderr)
            self.bar.total += n
            self.bar.refresh()

        def _posttask(self, key, result, dsk, state, worker_id):
            self.bar.update(1)

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()

    return _Bar()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out", metavar="OUT.zarr", type=click.Path(path_type=Path))
@click.option("--shape", type=IntTuple(3), required=True, help="Volume size Z,Y,X in voxels.")
@click.option(
    "--material",
    type=click.Choice(_MATERIALS, case_sensitive=False),
    default="mg",
    show_default=True,
    help="Screw material (mg: the paper's most common implant).",
)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), required=True, help="Random seed.")
@click.option("--voxel-size", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Voxel size in µm.")  # fmt: skip
@click.option("--chunks", type=IntTuple(3), default=None,
              help="Chunks Z,Y,X  [default: 256 per axis, clipped to the shape]")  # fmt: skip
@click.option("--ngff-version", type=click.Choice(["0.4", "0.5"]), default="0.5",
              show_default=True, help="0.5 writes zarr v3; 0.4 writes zarr v2.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace OUT.zarr if it exists.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def phantom(out, shape, material, seed, voxel_size, chunks, ngff_version, overwrite, progress):
    """Write a synthetic bone-implant µCT volume (OME-Zarr) with its tissue labels.

    The same seed gives the same bytes for any chunking. Labels are written as NGFF labels
    'tissue' inside OUT.zarr.
    """
    import contextlib

    from vstain_dask.phantom import write_phantom

    t0 = time.perf_counter()
    cb = _progress_callback("phantom") if progress else contextlib.nullcontext()
    try:
        with cb:
            path = write_phantom(
                out,
                shape=shape,
                material=material.lower(),
                seed=seed,
                voxel_size=voxel_size,
                chunks=chunks,
                ngff_version=ngff_version,
                overwrite=overwrite,
            )
    finally:
        if progress:
            cb.close()
    dt = time.perf_counter() - t0
    n = shape[0] * shape[1] * shape[2]
    click.echo(
        f"wrote {path}: {material.lower()} phantom {'x'.join(map(str, shape))} at {voxel_size:g} µm "
        f"(seed {seed}), labels in {path}/labels/tissue; {dt:.1f} s, {n / max(dt, 1e-9):,.0f} voxels/s"
    )


@click.command("phantom-pairs", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out", metavar="PAIRS.zarr", type=click.Path(path_type=Path))
@click.option("--n", "n", type=click.IntRange(min=1), default=12, show_default=True,
              help="Number of pairs (7:1:2 Mg:Ti:PEEK).")  # fmt: skip
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), required=True, help="Random seed.")
@click.option("--size", type=IntTuple(2, "Y,X"), default="512,512", show_default=True,
              help="Image size Y,X in pixels.")  # fmt: skip
@click.option("--voxel-size", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Pixel size in µm.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace PAIRS.zarr if it exists.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def phantom_pairs(out, n, seed, size, voxel_size, overwrite, progress):
    """Write synthetic CT/histology pairs (toluidine-blue-like) to a pairs store."""
    from tqdm.auto import tqdm

    from vstain_dask.phantom import write_phantom_pairs

    t0 = time.perf_counter()
    done: list[dict] = []
    bars: list = []  # created with the first pair, so early errors print no bar

    def on_pair(info: dict) -> None:
        done.append(info)
        if not bars:
            bars.append(tqdm(total=n, desc="pairs", unit="pair", disable=not progress,
                             file=sys.stderr))  # fmt: skip
        bars[0].update(1)

    try:
        path = write_phantom_pairs(
            out,
            n=n,
            seed=seed,
            size=size,
            voxel_size=voxel_size,
            overwrite=overwrite,
            on_pair=on_pair,
        )
    finally:
        for bar in bars:
            bar.close()
    mats = Counter(d["material"] for d in done)
    samples = len({d["sample"] for d in done})
    mix = ", ".join(f"{mats[m]} {m}" for m in _MATERIALS if mats[m])
    click.echo(
        f"wrote {path}: {len(done)} pairs of {size[0]}x{size[1]} px at {voxel_size:g} µm "
        f"({mix}; {samples} samples) in {time.perf_counter() - t0:.1f} s"
    )
