"""Against the limit: achieved model FLOP/s divided by the device's measured peak, same run.

The generator's FLOPs per 256² tile are counted with ``torch.utils.flop_counter`` (2 FLOPs per
multiply-add; about 114 GFLOP for the paper's ResNet-9 generator with 3 input channels). The
peak is measured in the same run: a large fp32 matmul on a CPU (all the cores the process may
use), a large bf16 matmul on a GPU. Three achieved rates are compared with it:

1. ``forward``: the bare generator on a batch of tiles (no tiling, no blending);
2. ``predict_plane``: tiled inference of whole planes (paper setting: tile 256, step 64, mean
   blend), in this process, with the engine's defaults for the device;
3. ``stain path``: ``stain_to_zarr`` on a local cluster, FLOPs of the tiles it computed divided
   by its compute task-seconds per worker (reading and writing excluded).

On a CPU the peak and rates 1-2 use all the process's cores; rate 3 uses the product's cluster
(workers × threads = cores). On a GPU: bf16 autocast and channels-last, as the engine does.
Default: the paper model, batch 2, one 256² plane and a 2 × 256 × 256 slab (about 2 minutes on
2 CPU cores). ``--full`` (GPU): batch 32, a 1536² plane, a 16 × 1536 × 1536 slab::

    python benchmarks/bench_limit.py --full --device cuda --json limit.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0], "\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--model", default="paper", help="paper, small, tiny or a .pt file [paper]")
    p.add_argument("--batch", type=int, help="tiles per forward pass [2 on CPU, 32 on GPU]")
    p.add_argument("--plane", type=int, help="side of the predict_plane plane [256; 1536 --full]")
    p.add_argument("--slab", type=int, help="planes of the stain-path slab [2; 16 with --full]")
    p.add_argument("--matmul", type=int, help="matmul size n (n×n @ n×n) [2048 CPU, 8192 GPU]")
    p.add_argument("--skip-stain", action="store_true", help="skip the stain-path measurement")
    args = p.parse_args(argv)
    device = C.check_device(args.device)
    head = C.header(device)
    C.print_header("against the limit: model FLOP/s over measured peak", head)
    with C.workdir(args.workdir) as work:
        results = _run(args, work, device)
    C.finish("bench_limit", head, args, results, results.pop("notes"))
    return 0


def _peak(device: str, n: int, repeats: int) -> dict:
    import torch

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    inner = 20 if cuda else 1

    def run() -> None:
        for _ in range(inner):
            a @ b
        if cuda:
            torch.cuda.synchronize()

    times = C.timeit(run, repeats=max(repeats, 3), warmup=1)
    flop = 2.0 * n**3 * inner
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "n": n,
        "flop_per_s": flop / min(times),
        "threads": torch.get_num_threads(),
    }


def _run(args, work: Path, device: str) -> dict:
    import numpy as np
    import torch

    from vstain_dask.models import load_model
    from vstain_dask.tiling import TileGrid, predict_plane

    cuda = device.startswith("cuda")
    batch = args.batch or (32 if cuda else 2)
    plane_side = args.plane or (1536 if args.full else 256)
    slab = args.slab or (16 if args.full else 2)
    n = args.matmul or (8192 if cuda else 2048)

    model_path = C.model_file(args.model, work / "models")
    model = load_model(model_path, device=device)
    flops = C.tile_flops(model.config)
    print(f"model {args.model}: {flops / 1e9:.4g} GFLOP per 256² tile", flush=True)
    rows = []

    peak = _peak(device, n, args.repeats)
    print(
        f"peak: {peak['dtype']} matmul {n}³ -> {peak['flop_per_s'] / 1e9:.4g} GFLOP/s "
        f"({peak['threads']} threads)",
        flush=True,
    )

    # 1. bare forward
    gen = model.generator
    if cuda:
        gen = gen.to(memory_format=torch.channels_last)
    x = torch.randn(batch, model.config.in_channels, 256, 256, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)

    def forward() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cuda),
        ):
            gen(x)
        if cuda:
            torch.cuda.synchronize()

    times = C.timeit(forward, repeats=args.repeats if cuda else 1, warmup=1)
    rows.append(_row("forward", batch, flops, min(times), peak))
    print(C.table(rows[-1:], _COLUMNS), flush=True)

    # 2. tiled inference of a plane, in-process
    rng = np.random.default_rng(0)
    plane = rng.uniform(0, 40000, size=(1, plane_side, plane_side)).astype(np.float32)
    grid = TileGrid(extent=(plane_side, plane_side), tile=256, step=64)
    tiles = grid.n_tiles

    def tiled() -> None:
        predict_plane(
            plane,
            lambda t: gen(model.to_input(t)),
            tile=256,
            step=64,
            blend="mean",
            batch_size=batch,
            device=device,
        )
        if cuda:
            torch.cuda.synchronize()

    times = C.timeit(tiled, repeats=args.repeats if cuda else 1, warmup=1 if cuda else 0)
    # pad_batch runs whole batches: count the forward passes actually made
    padded = -(-tiles // batch) * batch if tiles > batch else tiles
    rows.append(_row("predict_plane", tiles, flops, min(times), peak, computed=padded))
    print(C.table(rows[-1:], _COLUMNS), flush=True)

    # 3. the stain path on a local cluster
    stain = None
    if not args.skip_stain:
        stain = _stain_path(args, work, device, model_path, plane_side, slab, flops, peak)
        rows.append(stain)
        print(C.table(rows[-1:], _COLUMNS), flush=True)

    print()
    print(C.table(rows, _COLUMNS))
    notes = [
        f"FLOPs per tile counted by torch.utils.flop_counter: {flops / 1e9:.4g} GFLOP "
        "(convolutions only, 2 per multiply-add)",
        "tiles = tiles of the work; forward passes are padded to whole batches (pad_batch), "
        "and achieved FLOP/s counts the tiles actually run",
        "stain path: FLOPs of the computed tiles / (compute task-seconds / workers): model, "
        "blend and the block's own conversions, no reading or writing",
    ]
    if not cuda:
        notes.append(
            "CPU: the generator's convolutions run through oneDNN in fp32; the peak is an fp32 "
            "matmul with the same thread count (the stain path uses the cluster's threads)"
        )
    return {
        "model": {"name": args.model, "gflop_per_tile": flops / 1e9},
        "peak": peak,
        "rows": rows,
        "notes": notes,
    }


_COLUMNS = ["what", "tiles", "seconds", "tiles_per_s", "gflop_per_s", "of_peak"]


def _row(what, tiles, flops, seconds, peak, computed=None) -> dict:
    ran = computed if computed is not None else tiles
    rate = ran * flops / seconds
    return {
        "what": what,
        "tiles": tiles,
        "tiles_run": ran,
        "seconds": seconds,
        "tiles_per_s": tiles / seconds,
        "gflop_per_s": rate / 1e9,
        "of_peak": rate / peak["flop_per_s"],
    }


def _stain_path(args, work, device, model_path, side, slab, flops, peak) -> dict:
    from vstain_dask.stain import StainConfig, stain_to_zarr

    source = C.phantom(
        work / "data", (slab, side, side), chunks=(1, min(side, 256), min(side, 256))
    )
    config = StainConfig(axes="z", tile=256, step=64, blend="mean", device=device)
    if args.batch:
        import dataclasses

        config = dataclasses.replace(config, batch_size=args.batch)
    with C.local_client(device=device, scheduler=args.scheduler) as client:
        n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
        # warm-up: loads the model on every worker
        stain_to_zarr(
            source, work / "limit-warm.ome.zarr", model=model_path, config=config,
            client=client, progress=False, overwrite=True, chunks=(1, 256, 256),
        )  # fmt: skip
        best = None
        for _ in range(args.repeats if device.startswith("cuda") else 1):
            report = stain_to_zarr(
                source, work / "limit-out.ome.zarr", model=model_path, config=config,
                client=client, progress=False, overwrite=True, chunks=(1, 256, 256),
            )  # fmt: skip
            if best is None or report.timings["compute"] < best.timings["compute"]:
                best = report
    per_worker = best.timings["compute"] / n_workers
    row = _row("stain path", best.tiles, flops, per_worker, peak)
    row["workers"] = n_workers
    row["wall_s"] = best.seconds
    return row


if __name__ == "__main__":
    sys.exit(main())
