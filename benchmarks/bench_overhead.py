"""Against the simplest alternative: dask overhead, worker scaling, memory per worker.

1. The same tiles two ways, measured in the same run:
   - ``loop``: a plain in-process loop, no dask: read a block of planes from the input zarr,
     ``predict_plane`` them (the engine's batch size and memory format), convert to 8-bit, write
     them to a zarr array of the output's shape and chunks; with one torch thread, and with all
     the cores;
   - ``dask``: ``stain_to_zarr`` on the product's local cluster (2 workers × 1 torch thread on
     2 cores), whose wall time includes the pyramid: the pyramid's time (re-run alone) is taken
     off for the comparison.
   The dask overhead is ``dask tiles/s ÷ loop tiles/s`` on the same cores (target ≥ 0.9 on a
   2-core CPU), and 1 worker ÷ the 1-thread loop. Every way runs once per round, rounds
   repeat (``--repeats``), so that load from other users hits all of them alike.
2. Scaling: the dask path with 1 worker and with 2 workers, 1 torch thread each (target ≥ 1.7×).
3. Memory per worker: the dask path on two volumes of different depth with the same block
   shape; the peak RSS of each worker should not grow with the volume.

Default: the ``tiny`` model, paper setting (tile 256, step 64, mean) on a 4 × 512 × 512 phantom
with 1 × 256 × 256 chunks (4 blocks of 25 tiles), memory check at depths 4 and 16 with the fast
setting (about 3 minutes on 2 busy cores). ``--full``: the paper model on 16 × 1536 × 1536,
memory at depths 16 and 64 (meant for a GPU, where the loop uses the GPU and the cluster one
worker per GPU, so the scaling part is skipped)::

    python benchmarks/bench_overhead.py --full --device cuda --json overhead.json
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0], "\n".join(__doc__.split("\n")[2:]))
    p.set_defaults(repeats=3)
    p.add_argument("--model", help="paper, small, tiny or a .pt file [tiny; paper with --full]")
    p.add_argument("--side", type=int, help="plane side in pixels [512; 1536 with --full]")
    p.add_argument("--depth", type=int, help="planes of the overhead volume [4; 16 with --full]")
    p.add_argument(
        "--memory-depths", help="two depths for the memory check [4,16; 16,64 with --full]"
    )
    p.add_argument("--block-planes", type=int, default=1, help="planes per block (z chunk) [1]")
    p.add_argument("--skip-scaling", action="store_true", help="skip 1 vs 2 workers")
    p.add_argument("--skip-memory", action="store_true", help="skip the memory check")
    p.add_argument(
        "--malloc",
        choices=["dask", "glibc"],
        default="glibc",
        help="worker allocator setting: 'glibc' leaves MALLOC_TRIM_THRESHOLD_ unset (glibc's "
        "adaptive default; what vstain-dask's local workers get); 'dask' keeps distributed's "
        "MALLOC_TRIM_THRESHOLD_=65536 (ClusterConfig.malloc_trim) [glibc]",
    )
    args = p.parse_args(argv)
    device = C.check_device(args.device)
    head = C.header(device)
    C.print_header("dask overhead, worker scaling, memory per worker", head)
    with C.workdir(args.workdir) as work:
        results = _run(args, work, device)
    C.finish("bench_overhead", head, args, results, results.pop("notes"))
    return 0


def _loop(source: Path, out: Path, model, config, device: str) -> dict:
    """The plain loop: read, predict_plane, to 8-bit, write; no dask anywhere."""
    import numpy as np
    import torch
    import zarr

    from vstain_dask import ngff
    from vstain_dask.stain import default_batch_size
    from vstain_dask.tiling import predict_plane

    src = ngff.level_array(source)
    Z, Y, X = src.shape
    cz = config.block[0]
    shutil.rmtree(out, ignore_errors=True)
    dst = zarr.create_array(
        store=str(out), shape=(3, Z, Y, X), chunks=(3, cz, min(Y, 256), min(X, 256)), dtype="uint8"
    )
    cuda = device.startswith("cuda")

    def predict(t):
        return model.generator(model.to_input(t))

    t0 = time.perf_counter()
    for z0 in range(0, Z, cz):
        planes = np.asarray(src[z0 : z0 + cz], dtype=np.float32)[:, None]
        pred = predict_plane(
            planes,
            predict,
            tile=config.tile,
            step=config.step,
            blend=config.blend,
            batch_size=config.batch_size or default_batch_size(device),
            device=device,
            channels_last=config.channels_last,
            autocast=cuda,
        )
        rgb = np.clip(np.rint((pred + 1.0) * 127.5), 0, 255).astype(np.uint8)
        dst[:, z0 : z0 + cz] = np.moveaxis(rgb, 1, 0)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "threads": torch.get_num_threads()}


def _dask(client, source, out, model_path, config, chunks) -> dict:
    from vstain_dask import ngff
    from vstain_dask.stain import stain_to_zarr

    with C.worker_memory(client) as mem:
        report = stain_to_zarr(
            source, out, model=model_path, config=config, client=client,
            progress=False, overwrite=True, chunks=chunks,
        )  # fmt: skip
    t0 = time.perf_counter()
    ngff.write_pyramid(out)
    pyramid = time.perf_counter() - t0
    return {
        "seconds": report.seconds,
        "pyramid_s": pyramid,
        "seconds_no_pyramid": max(report.seconds - pyramid, 1e-9),
        "tiles": report.tiles,
        "timings": report.timings,
        "peak_rss_mib": {k: v["peak_rss_mib"] for k, v in mem.items()},
        "start_rss_mib": {k: v["start_rss_mib"] for k, v in mem.items()},
        "peak_cuda_mib": {k: v.get("peak_cuda_mib") for k, v in mem.items()},
    }


def _run(args, work: Path, device: str) -> dict:
    import torch

    from vstain_dask.models import load_model
    from vstain_dask.stain import StainConfig
    from vstain_dask.tiling import count_tiles

    cuda = device.startswith("cuda")
    full = args.full
    model_name = args.model or ("paper" if full else "tiny")
    side = args.side or (1536 if full else 512)
    depth = args.depth or (16 if full else 4)
    mem_depths = [int(d) for d in (args.memory_depths or ("16,64" if full else "4,16")).split(",")]
    cz = args.block_planes
    chunks = (cz, min(side, 256), min(side, 256))
    model_path = C.model_file(model_name, work / "models")
    paper = StainConfig(
        axes="z", tile=256, step=64, blend="mean", device=device, block=(cz, side, side)
    )
    fast = StainConfig(
        axes="z", tile=256, step=192, blend="gaussian", device=device, block=(cz, side, side)
    )
    shape = (depth, side, side)
    source = C.phantom(work / "data", shape, chunks=chunks)
    tiles = count_tiles(shape, tile=256, step=64, axes="z")
    print(f"model {model_name}; volume {shape}, chunks {chunks}: {tiles} tiles (paper setting)")
    print(flush=True)

    cores = C._cores()
    loop_out = work / "loop-out.zarr"
    model = load_model(model_path, device=device)
    scaling = not cuda and not args.skip_scaling and not args.scheduler
    mem_rows = []
    with contextlib.ExitStack() as stack:
        two_client = stack.enter_context(
            C.local_client(
                workers=None if cuda else 2,
                threads=1,
                device=device,
                scheduler=args.scheduler,
                malloc_trim=args.malloc == "dask",
            )
        )
        n = len(two_client.scheduler_info(n_workers=-1)["workers"])
        one_client = None
        if scaling:
            one_client = stack.enter_context(
                C.local_client(
                    workers=1, threads=1, device=device, malloc_trim=args.malloc == "dask"
                )
            )

        # every way of running the same tiles, each measured once per round; rounds alternate
        # the ways so that load from other users of the machine hits them alike
        def loop(threads: int):
            def run() -> float:
                torch.set_num_threads(threads)
                try:
                    return _loop(source, loop_out, model, paper, device)["seconds"]
                finally:
                    torch.set_num_threads(1)

            return run

        def dask(client):
            def run() -> float:
                r = _dask(client, source, work / "dask-out.ome.zarr", model_path, paper, chunks)
                results.append(r)
                return r["seconds_no_pyramid"]

            return run

        results: list[dict] = []
        ways = {}
        if cuda:
            ways["loop"] = loop(cores)
        else:
            ways["loop 1 thread"] = loop(1)
            if cores > 1:
                ways[f"loop {cores} threads"] = loop(cores)
        ways[f"dask {n} workers"] = dask(two_client)
        if one_client is not None:
            ways["dask 1 worker"] = dask(one_client)
        # warm-up: model loads, first kernels, first zarr opens
        torch.set_num_threads(1)
        _loop(source, loop_out, model, fast, device)
        for client in (two_client, one_client):
            if client is not None:
                _dask(client, source, work / "warm.ome.zarr", model_path, fast, chunks)
        times: dict[str, list[float]] = {k: [] for k in ways}
        for rnd in range(args.repeats):
            for name, run in ways.items():
                times[name].append(run())
            print(
                f"round {rnd + 1}: "
                + ", ".join(f"{k} {tiles / v[-1]:.3g} tiles/s" for k, v in times.items()),
                flush=True,
            )
        shutil.rmtree(loop_out, ignore_errors=True)

        if not args.skip_memory:
            for d in mem_depths:
                mshape = (d, side, side)
                msource = C.phantom(work / "data", mshape, chunks=chunks)
                r = _dask(two_client, msource, work / "mem-out.ome.zarr", model_path, fast, chunks)
                mem_rows.append(
                    {"depth": d, "shape": "x".join(map(str, mshape)), "block": f"{cz}x{side}x{side}",
                     "workers": n, "seconds": r["seconds"],
                     "peak_rss_mib_max": max(r["peak_rss_mib"].values()),
                     "peak_rss_mib_min": min(r["peak_rss_mib"].values()),
                     "start_rss_mib_max": max(r["start_rss_mib"].values()),
                     "peak_cuda_mib": max((v or 0) for v in r["peak_cuda_mib"].values()) or None}
                )  # fmt: skip

    rows = []
    for name, t in times.items():
        rows.append(
            {"path": name, "tiles": tiles, "seconds": min(t), "tiles_per_s": tiles / min(t),
             "median_tiles_per_s": tiles / statistics.median(t), "all_seconds": t}
        )  # fmt: skip
    rate = {r["path"]: r["tiles_per_s"] for r in rows}

    def ratio(a: str, b: str) -> dict | None:
        if a not in times or b not in times:
            return None
        paired = [tb / ta for ta, tb in zip(times[a], times[b], strict=True)]
        return {"best": rate[a] / rate[b], "median_paired": statistics.median(paired)}

    all_loop = f"loop {cores} threads" if cores > 1 else "loop 1 thread"
    ratios = {
        "dask_over_loop_same_cores": ratio(f"dask {n} workers", "loop" if cuda else all_loop),
        "one_worker_over_one_thread_loop": ratio("dask 1 worker", "loop 1 thread"),
        "two_over_one_worker": ratio(f"dask {n} workers", "dask 1 worker"),
    }
    ratios = {k: v for k, v in ratios.items() if v is not None}
    if len(mem_rows) == 2:
        ratios["peak_rss_deep_over_shallow"] = {
            "best": mem_rows[1]["peak_rss_mib_max"] / mem_rows[0]["peak_rss_mib_max"]
        }
    print()
    print(C.table(rows, _COLUMNS))
    if mem_rows:
        print()
        print(C.table(mem_rows))
    print()
    for k, v in ratios.items():
        extra = (
            f"  (median of paired rounds {v['median_paired']:.3f})" if "median_paired" in v else ""
        )
        print(f"{k:34s} {v['best']:.3f}{extra}")
    notes = [
        f"model '{model_name}' (random weights), tile 256, step 64, mean blend for the "
        "overhead and scaling rows; the memory rows use the fast setting (step 192, gaussian)",
        "dask rows: stain_to_zarr wall time minus the pyramid (re-run alone); the loop writes "
        "a plain zarr array without pyramid",
        f"{args.repeats} rounds, each running every way once in turn; tiles_per_s from the best "
        "round, ratios 'best' from those and 'median_paired' as the median over rounds of the "
        "ratio within a round",
        "loop rows: 1 torch thread, and all the cores; dask: 1 torch thread per worker (plus "
        "one reading thread); dask_over_loop = cluster ÷ all-core loop, "
        "one_worker_over_one_thread_loop = 1 worker ÷ 1-thread loop (the same resources)",
    ]
    if args.scheduler:
        notes.append("ran on a given scheduler: its own workers and threads; no scaling rows")
    notes.append(
        "worker allocator: "
        + (
            "distributed's default MALLOC_TRIM_THRESHOLD_=65536"
            if args.malloc == "dask"
            else "MALLOC_TRIM_THRESHOLD_ unset (glibc's adaptive mmap threshold)"
        )
    )
    return {
        "model": model_name,
        "shape": shape,
        "chunks": chunks,
        "rows": rows,
        "memory": mem_rows,
        "ratios": ratios,
        "notes": notes,
    }


_COLUMNS = ["path", "tiles", "seconds", "tiles_per_s", "median_tiles_per_s"]


if __name__ == "__main__":
    sys.exit(main())
