"""I/O: zarr read and write throughput of the stain path, against a plain copy of the same bytes.

``stain`` runs ``stain_to_zarr`` with the cheapest generator the model config allows (``identity``
preset: one feature, no residual block, about 0.03 GFLOP per tile) and tiles that do not overlap
(tile 256, step 256), so what is left is reading, tiling, blending, conversion and writing.
``copy`` does only the I/O with dask on the same cluster: read the same input zarr and store the
same output bytes (a 3-channel uint8 array from the CT's high byte) into an OME-Zarr level of the
same shape, chunks and codec, made by ``vstain_dask.ngff.create_volume``. Neither row includes
the pyramid (the stain's is timed alone and taken off; it is shown on its own).

Reported: wall seconds, input MB/s read (uncompressed bytes of the CT) and output MB/s written
(uncompressed RGB bytes), and the stain path's task-seconds for read / compute / write; the
ratio ``stain ÷ copy`` of throughput.

Default: a 32 × 1024 × 1024 uint16 phantom (64 MiB in, 96 MiB out), chunks 16 × 256 × 256 (about
a minute on 2 busy cores). ``--full``: 1536³ (6.75 GiB in, 10 GiB out), chunks 64 × 256 × 256::

    python benchmarks/bench_io.py --full --device cuda --json io.json
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0], "\n".join(__doc__.split("\n")[2:]))
    p.set_defaults(repeats=2)
    p.add_argument("--shape", type=C.shape3, help="Z,Y,X [32,1024,1024; 1536³ with --full]")
    p.add_argument("--chunks", type=C.shape3, help="Z,Y,X [16,256,256; 64,256,256 with --full]")
    p.add_argument("--workers", type=int, help="worker processes [the product's default]")
    args = p.parse_args(argv)
    device = C.check_device(args.device)
    head = C.header(device)
    C.print_header("I/O: stain path with an identity-like model vs a plain copy", head)
    with C.workdir(args.workdir) as work:
        results = _run(args, work, device, save=lambda r: C.save_partial("bench_io", head, args, r))
    C.finish("bench_io", head, args, results, results.pop("notes"))
    return 0


def _to_rgb(block):
    import numpy as np

    hi = (block >> 8).astype(np.uint8)
    return np.stack([hi, hi, hi])


def _copy(source: Path, out: Path, chunks) -> float:
    """Read the CT with dask and store 3-channel uint8 of the same shape into an OME-Zarr level."""
    import dask.array as da
    import numpy as np

    from vstain_dask import ngff

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    src = da.from_zarr(ngff.level_array(source))
    Z, Y, X = src.shape
    target = ngff.create_volume(
        out, shape=(3, Z, Y, X), dtype="uint8", chunks=(3, *chunks), axes="czyx", kind="rgb",
        n_levels=1, overwrite=True,
    )  # fmt: skip
    src = src.rechunk(chunks) if src.chunksize != tuple(chunks) else src
    rgb = src.map_blocks(
        _to_rgb, dtype=np.uint8, new_axis=0, chunks=((3,), *src.chunks),
        meta=np.empty((0, 0, 0, 0), np.uint8),
    )  # fmt: skip
    da.store(rgb, target, lock=False)
    return time.perf_counter() - t0


def _run(args, work: Path, device: str, *, save) -> dict:
    import numpy as np

    from vstain_dask import ngff
    from vstain_dask.stain import StainConfig, stain_to_zarr

    shape = args.shape or ((1536,) * 3 if args.full else (32, 1024, 1024))
    chunks = args.chunks or ((64, 256, 256) if args.full else (16, 256, 256))
    source = C.phantom(work / "data", shape, chunks=chunks)
    model = C.model_file("identity", work / "models")
    voxels = int(np.prod(shape))
    in_mb = voxels * 2 / 1e6
    out_mb = voxels * 3 / 1e6
    stored = sum(f.stat().st_size for f in (source / "0").rglob("*") if f.is_file()) / 1e6
    print(
        f"volume {shape} uint16, chunks {chunks}: {in_mb:.0f} MB in ({stored:.0f} MB stored), "
        f"{out_mb:.0f} MB out",
        flush=True,
    )
    config = StainConfig(axes="z", tile=256, step=256, blend="mean", device=device)
    rows = []
    with C.local_client(workers=args.workers, device=device, scheduler=args.scheduler) as client:
        n = len(client.scheduler_info(n_workers=-1)["workers"])
        # warm-up: model on every worker, imports, first zarr opens
        stain_to_zarr(
            source, work / "io-stain.ome.zarr", model=model, config=config, client=client,
            progress=False, overwrite=True, chunks=chunks,
        )  # fmt: skip
        _copy(source, work / "io-copy.ome.zarr", chunks)
        stains, copies = [], []
        for _ in range(args.repeats):  # alternated, so that load from others hits both
            report = stain_to_zarr(
                source, work / "io-stain.ome.zarr", model=model, config=config, client=client,
                progress=False, overwrite=True, chunks=chunks,
            )  # fmt: skip
            t0 = time.perf_counter()
            ngff.write_pyramid(work / "io-stain.ome.zarr")
            pyramid = time.perf_counter() - t0
            stains.append((report.seconds - pyramid, pyramid, report))
            copies.append(_copy(source, work / "io-copy.ome.zarr", chunks))
            save(
                {
                    "stain_s": [r[0] for r in stains],
                    "copy_s": copies,
                    "pyramid_s": [r[1] for r in stains],
                }
            )
    s_seconds, pyramid, report = min(stains, key=lambda r: r[0])
    c_seconds = min(copies)
    t = report.timings
    rows.append(
        {"path": "stain (identity model)", "seconds": s_seconds,
         "read_mb_per_s": in_mb / s_seconds, "write_mb_per_s": out_mb / s_seconds,
         "read_task_s": t["read"], "compute_task_s": t["compute"], "write_task_s": t["write"]}
    )  # fmt: skip
    rows.append(
        {"path": "plain dask copy", "seconds": c_seconds,
         "read_mb_per_s": in_mb / c_seconds, "write_mb_per_s": out_mb / c_seconds}
    )  # fmt: skip
    print()
    print(C.table(rows))
    ratio = c_seconds / s_seconds
    print(f"\nstain ÷ copy throughput: {ratio:.3f};  pyramid alone: {pyramid:.3g} s;  {n} workers")
    per_worker = {
        "read_mb_per_task_s": in_mb / max(t["read"], 1e-9),
        "write_mb_per_task_s": out_mb / max(t["write"], 1e-9),
    }
    print(
        f"stain path per busy task-second: read {per_worker['read_mb_per_task_s']:.0f} MB/s, "
        f"write {per_worker['write_mb_per_task_s']:.0f} MB/s (uncompressed)"
    )
    for p in ("io-stain.ome.zarr", "io-copy.ome.zarr"):
        shutil.rmtree(work / p, ignore_errors=True)
    notes = [
        "MB = 10^6 bytes of uncompressed data (uint16 CT in, uint8 RGB out); stored with zstd",
        "stain rows: stain_to_zarr minus its pyramid (re-run alone); task seconds are summed "
        "over blocks",
        f"all stain and copy runs alternate ({args.repeats} each); the best of each is shown",
    ]
    return {
        "shape": shape,
        "chunks": chunks,
        "workers": n,
        "in_mb": in_mb,
        "out_mb": out_mb,
        "stored_in_mb": stored,
        "rows": rows,
        "stain_over_copy": ratio,
        "pyramid_s": pyramid,
        "per_task_second": per_worker,
        "all_stain_s": [s[0] for s in stains],
        "all_copy_s": copies,
        "notes": notes,
    }


if __name__ == "__main__":
    sys.exit(main())
