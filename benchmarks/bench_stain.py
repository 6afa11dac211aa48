"""Stain end to end: OME-Zarr CT in, OME-Zarr RGB out with its pyramid, on a local dask cluster.

For each case (a setting and a set of axes) the script runs ``vstain_dask.stain.stain_to_zarr``
on a phantom and reports voxels/s and tiles/s (wall clock of the whole stain, pyramid included),
the time split summed over block tasks (read / compute / write; compute = model + blend), the
time of the pyramid alone (re-run on the finished output), and the peak RSS of each worker
process (sampled every 20 ms in a thread on the worker).

Settings: ``paper`` = tile 256, step 64, mean blend (the paper); ``fast`` = tile 256, step 192,
Gaussian blend. Cases are ``<setting>-<axes>``, e.g. ``paper-z`` (slice by slice, as the paper)
and ``paper-zyx`` (three-axis fusion). A fusion case runs on its own volume together with its
single-axis counterpart (``paper-z@fusion``), so that the fusion/one-axis ratio is measured on
the same volume in the same run.

Besides the runs, the script measures the blend's share of compute (the tiled inference of one
plane with the model against the same with a model that costs nothing), the paper model's
seconds per tile in-process, and extrapolates to a 1536³ volume: tiles the stain plan computes
for 1536³ (exact, from ``plan_blocks``) × measured compute seconds per tile / workers.

Default (CPU, about 2-3 minutes on 2 busy cores): the ``tiny`` model (8 base features, 2 residual
blocks), single-axis cases on a 4 × 512 × 512 slab (chunks 2 × 256 × 256) and the fusion case on
a 64³ cube (chunks 32³; every plane is one padded tile there, so the cube measures the per-tile
cost of fusion, not the tile counts of large volumes). ``--full``: the paper model on a 1536³
phantom (chunks 64 × 256 × 256), all four cases; meant for a GPU::

    python benchmarks/bench_stain.py --full --device cuda --json stain.json
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SETTINGS = {
    "paper": {"tile": 256, "step": 64, "blend": "mean"},
    "fast": {"tile": 256, "step": 192, "blend": "gaussian"},
}
FULL_SHAPE = (1536, 1536, 1536)
FULL_CHUNKS = (64, 256, 256)


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0], "\n".join(__doc__.split("\n")[2:]))
    p.set_defaults(repeats=1)
    p.add_argument("--model", help="paper, small, tiny or a .pt file [tiny; paper with --full]")
    p.add_argument(
        "--cases", help="comma-separated cases [paper-z,fast-z,paper-zyx; all with --full]"
    )
    p.add_argument("--shape", type=C.shape3, help="Z,Y,X of the single-axis volume [4,512,512]")
    p.add_argument("--chunks", type=C.shape3, help="Z,Y,X chunks of input and output [2,256,256]")
    p.add_argument("--fusion-shape", type=C.shape3, help="Z,Y,X of the fusion volume [64,64,64]")
    p.add_argument("--fusion-chunks", type=C.shape3, help="its chunks [32,32,32]")
    p.add_argument("--workers", type=int, help="worker processes [the product's default]")
    p.add_argument("--threads", type=int, help="torch threads per worker [cores / workers]")
    p.add_argument("--batch-size", type=int, help="tiles per forward pass [StainConfig's default]")
    p.add_argument("--compile", action="store_true", help="torch.compile the generator")
    p.add_argument(
        "--fusion",
        choices=["passes", "blocks"],
        help="how fused stains are organised [StainConfig's default]",
    )
    p.add_argument(
        "--no-paper-probe",
        action="store_true",
        help="skip timing the paper model per tile in-process (about 15 s on a CPU)",
    )
    args = p.parse_args(argv)
    device = C.check_device(args.device)
    full = args.full
    model_name = args.model or ("paper" if full else "tiny")
    shape = args.shape or (FULL_SHAPE if full else (4, 512, 512))
    chunks = args.chunks or (FULL_CHUNKS if full else (2, 256, 256))
    fshape = args.fusion_shape or (FULL_SHAPE if full else (64, 64, 64))
    fchunks = args.fusion_chunks or (FULL_CHUNKS if full else (32, 32, 32))
    default_cases = "paper-z,fast-z,paper-zyx,fast-zyx" if full else "paper-z,fast-z,paper-zyx"
    cases = [c.strip() for c in (args.cases or default_cases).split(",") if c.strip()]
    for case in cases:
        setting, _, axes = case.partition("-")
        if setting not in SETTINGS or not axes or set(axes) - set("zyx"):
            raise SystemExit(f"--cases: expected <paper|fast>-<axes> such as paper-z, got {case!r}")

    head = C.header(device)
    C.print_header("stain, end to end (zarr in -> zarr out with pyramid)", head)
    with C.workdir(args.workdir) as work:
        results = _run(
            args, work, device, model_name, cases, shape, chunks, fshape, fchunks,
            save=lambda r: C.save_partial("bench_stain", head, args, r),
        )  # fmt: skip
    notes = results.pop("notes")
    C.finish("bench_stain", head, args, results, notes)
    return 0


def _run(
    args, work: Path, device, model_name, cases, shape, chunks, fshape, fchunks, *, save
) -> dict:
    from vstain_dask.models import load_model
    from vstain_dask.stain import StainConfig, stain_to_zarr
    from vstain_dask.tiling import count_tiles

    model = C.model_file(model_name, work / "models")
    gconf = load_model(model).config
    flops = C.tile_flops(gconf)
    print(
        f"model {model_name}: ngf {gconf.ngf}, {gconf.n_blocks} residual blocks, "
        f"{gconf.in_channels}-channel input, {flops / 1e9:.3g} GFLOP per 256² tile",
        flush=True,
    )
    # (label, setting, axes, shape, chunks): single-axis cases on the slab, fusion cases on the
    # fusion volume, each with its single-axis counterpart on that same volume for the ratio
    runs = []
    for case in cases:
        setting, _, axes = case.partition("-")
        if len(axes) == 1:
            runs.append((case, setting, axes, shape, chunks))
            continue
        same = (fshape, fchunks) == (shape, chunks) and f"{setting}-z" in cases
        if not same:
            runs.append((f"{setting}-z@fusion", setting, "z", fshape, fchunks))
        runs.append((case, setting, axes, fshape, fchunks))
    volumes = {}
    for _, _, _, vshape, vchunks in runs:
        if (vshape, vchunks) not in volumes:
            t0 = time.perf_counter()
            volumes[(vshape, vchunks)] = C.phantom(work / "data", vshape, chunks=vchunks)
            print(f"phantom {vshape} ready in {time.perf_counter() - t0:.1f} s", flush=True)

    rows = []
    with C.local_client(
        workers=args.workers, threads=args.threads, device=device, scheduler=args.scheduler
    ) as client:
        n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
        base = {"device": device, "compile": args.compile}
        if args.fusion:
            base["fusion"] = args.fusion
        if args.batch_size:
            base["batch_size"] = args.batch_size
        # load the model on every worker (and set its threads) before anything is timed
        warm_shape = (n_workers, 256, 256)
        warm = C.phantom(work / "data", warm_shape, chunks=(1, 256, 256))
        stain_to_zarr(
            warm, work / "warm.ome.zarr", model=model, client=client, progress=False,
            config=StainConfig(axes="z", **SETTINGS["fast"], **base), overwrite=True,
            chunks=(1, 256, 256),
        )  # fmt: skip
        threads = C.worker_threads(client)
        print(f"{n_workers} workers, torch threads per worker: {sorted(set(threads.values()))}")
        print(flush=True)
        for case, setting, axes, vshape, vchunks in runs:
            source = volumes[(vshape, vchunks)]
            config = StainConfig(axes=axes, **SETTINGS[setting], **base)
            out = work / f"out-{case.replace('@', '-')}.ome.zarr"
            for rep in range(args.repeats):
                with C.worker_memory(client) as mem:
                    report = stain_to_zarr(
                        source, out, model=model, config=config, client=client,
                        progress=False, overwrite=True, chunks=vchunks,
                    )  # fmt: skip
                t0 = time.perf_counter()
                from vstain_dask import ngff

                ngff.write_pyramid(out)
                pyramid_s = time.perf_counter() - t0
                peak = max(m["peak_rss_mib"] for m in mem.values())
                cuda = [m["peak_cuda_mib"] for m in mem.values() if "peak_cuda_mib" in m]
                row = {
                    "case": case,
                    "rep": rep,
                    "shape": "x".join(map(str, vshape)),
                    "blocks": report.blocks,
                    "tiles": report.tiles,
                    "tiles_needed": count_tiles(vshape, tile=256, step=config.step, axes=axes),
                    "wall_s": report.seconds,
                    "voxels_per_s": report.voxels_per_s,
                    "tiles_per_s": report.tiles_per_s,
                    "read_s": report.timings["read"],
                    "compute_s": report.timings["compute"],
                    "write_s": report.timings["write"],
                    "compute_s_per_tile": report.timings["compute"] / max(report.tiles, 1),
                    "pyramid_s": pyramid_s,
                    "peak_rss_mib": peak,
                    "peak_cuda_mib": max(cuda) if cuda else None,
                    "worker_memory": mem,
                }
                rows.append(row)
                save({"runs": rows})
                print(
                    C.table(
                        [row],
                        [
                            "case",
                            "shape",
                            "tiles",
                            "wall_s",
                            "voxels_per_s",
                            "tiles_per_s",
                            "read_s",
                            "compute_s",
                            "write_s",
                            "pyramid_s",
                            "peak_rss_mib",
                        ],
                    ),  # fmt: skip
                    flush=True,
                )
            if args.workdir is None or args.full:
                shutil.rmtree(out, ignore_errors=True)

    # blend share: the same tiled inference of one plane with the model and with a free model
    blend = _blend_share(model, shape, device, args)
    print()
    print(
        f"blend share of compute (one {shape[1]}x{shape[2]} plane, paper setting, in-process): "
        f"model+blend {blend['with_model_s']:.3g} s, blend alone {blend['free_model_s']:.3g} s "
        f"-> {100 * blend['share']:.1f} %"
    )
    paper_s_per_tile = None
    if not args.no_paper_probe:
        paper_s_per_tile = _paper_probe(device, rows, args)
        print(
            f"paper model in-process: {paper_s_per_tile['s_per_tile']:.3g} s per tile "
            f"(batch {paper_s_per_tile['batch']}, {paper_s_per_tile['threads']} torch threads)"
        )

    # extrapolation to 1536³: exact tile counts of the stain plan x measured seconds per tile
    best = {}
    for r in rows:
        if r["case"] not in best or r["wall_s"] < best[r["case"]]["wall_s"]:
            best[r["case"]] = r
    extra = []
    n_workers = len(next(iter(rows))["worker_memory"]) if rows else 1
    fusion_mode = StainConfig(fusion=args.fusion).fusion if args.fusion else StainConfig().fusion
    for case, r in best.items():
        if "@" in case:
            continue
        setting, _, axes = case.partition("-")
        config = StainConfig(axes=axes, **SETTINGS[setting])
        plans = _plans_1536(config)
        planned = plans["passes" if len(axes) > 1 and fusion_mode.value == "passes" else "blocks"]
        needed = count_tiles(FULL_SHAPE, tile=256, step=config.step, axes=axes)
        e = {
            "case": case,
            "tiles_needed_1536": needed,
            "tiles_planned_1536": planned,
            "planned_over_needed": planned / needed,
            "blocks_mode_tiles_1536": plans["blocks"] if len(axes) > 1 else None,
            "model": model_name,
            "est_s_this_model": planned * r["compute_s_per_tile"] / n_workers,
        }
        if paper_s_per_tile is not None:
            e["est_s_paper_model"] = planned * paper_s_per_tile["s_per_tile"] / n_workers
        extra.append(e)
    z_planned = {e["case"].partition("-")[0]: e for e in extra if e["case"].endswith("-z")}
    for e in extra:
        one = z_planned.get(e["case"].partition("-")[0])
        e["planned_vs_one_axis"] = (
            e["tiles_planned_1536"] / one["tiles_planned_1536"] if one else None
        )
    # three-axis fusion against one axis, measured on the same volume in this run
    fusion = []
    for case, r in best.items():
        setting, _, axes = case.partition("-")
        if "@" in axes or len(axes) < 2:
            continue
        one = best.get(f"{setting}-z@fusion") or best.get(f"{setting}-z")
        if one is None or one["shape"] != r["shape"]:
            continue
        fusion.append(
            {"case": case, "shape": r["shape"], "tiles_ratio": r["tiles"] / one["tiles"],
             "wall_ratio": r["wall_s"] / one["wall_s"],
             "compute_ratio": r["compute_s"] / one["compute_s"],
             "blocks": f"{r['blocks']} vs {one['blocks']}"}
        )  # fmt: skip
    if fusion:
        print()
        print("three-axis fusion over one axis, same volume, same run:")
        print(C.table(fusion))
    print()
    print("extrapolated to a 1536³ volume on this machine (compute only, all workers busy):")
    print(
        C.table(
            extra,
            [
                "case",
                "tiles_needed_1536",
                "tiles_planned_1536",
                "planned_over_needed",
                "planned_vs_one_axis",
                "blocks_mode_tiles_1536",
                "est_s_this_model",
                "est_s_paper_model",
            ],
        )  # fmt: skip
    )
    notes = [
        f"model '{model_name}' ({flops / 1e9:.3g} GFLOP/tile, random weights; speed does not "
        "depend on the weights)",
        "wall_s is the whole stain_to_zarr call (blocks, then the pyramid); read/compute/write "
        "are task-seconds summed over blocks (they overlap between workers); compute = model + "
        "blend; pyramid_s re-runs write_pyramid alone on the finished output",
        "tiles counts the tiles the plan computes; tiles_needed the tiles of whole-plane "
        "inference (a block recomputes the tiles it shares with its neighbours)",
        "extrapolation: tiles planned for 1536³ × measured compute seconds per tile / workers; "
        "reading, writing and the pyramid are not included",
        f"fused stains ran with fusion='{fusion_mode.value}' (one slab pass per axis, then a "
        "fusion pass over 8-bit results, for 'passes'); blocks_mode_tiles_1536 is what "
        "fusion='blocks' (3D blocks with halos) would compute",
    ]
    if fusion and fshape[1] <= 256:
        notes.append(
            f"fusion volume {fshape}: planes no larger than a tile (one padded tile per plane), "
            "so its blocks share no tiles and compute_ratio is about the tile ratio 3; the "
            "planned_vs_one_axis column gives the tile ratio the plan has at 1536³"
        )
    return {
        "model": {"name": model_name, "config": gconf.to_dict(), "gflop_per_tile": flops / 1e9},
        "workers": n_workers,
        "runs": rows,
        "blend": blend,
        "paper_probe": paper_s_per_tile,
        "fusion": fusion,
        "fusion_mode": fusion_mode.value,
        "extrapolation_1536": extra,
        "notes": notes,
    }


def _plans_1536(config) -> dict:
    """Tiles the stain plan computes for 1536³ with the default chunks, in both fusion modes."""
    import dataclasses

    from vstain_dask.stain import plan_blocks

    passes = 0
    for axis in config.axes:
        one = dataclasses.replace(config, axes=axis)
        passes += sum(b.n_tiles for b in plan_blocks(FULL_SHAPE, FULL_CHUNKS, one))
    blocks = sum(b.n_tiles for b in plan_blocks(FULL_SHAPE, FULL_CHUNKS, config))
    return {"passes": passes, "blocks": blocks}


def _blend_share(model_path, shape, device, args) -> dict:
    """Tiled inference of one plane, paper setting, with the model and with a free model."""
    import numpy as np
    import torch

    from vstain_dask.models import load_model
    from vstain_dask.tiling import predict_plane

    model = load_model(model_path, device=device)
    threads = args.threads or max(1, C._cores() // (args.workers or C._cores()))
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    plane = rng.uniform(0, 40000, size=(1, min(shape[1], 512), min(shape[2], 512)))
    plane = plane.astype(np.float32)
    kw = {"tile": 256, "step": 64, "blend": "mean", "device": device, "batch_size": 8}

    def with_model() -> None:
        predict_plane(plane, lambda t: model.generator(model.to_input(t)), **kw)

    def free(t):
        return t[:, :1].expand(-1, 3, -1, -1)

    def without() -> None:
        predict_plane(plane, free, **kw)

    a = min(C.timeit(with_model, repeats=1, warmup=1))
    b = min(C.timeit(without, repeats=3, warmup=1))
    return {"with_model_s": a, "free_model_s": b, "share": b / a, "threads": threads}


def _paper_probe(device, rows, args) -> dict:
    """Seconds per 256² tile of the paper model, in this process, with a worker's threads."""
    import torch

    from vstain_dask.models import build_generator

    config = C.generator_config("paper")
    gen = build_generator(config, seed=0).eval().to(device)
    batch = 8 if device.startswith("cuda") else 2
    x = torch.randn(batch, 3, 256, 256, device=device)
    autocast = device.startswith("cuda")
    if autocast:
        gen = gen.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast),
        ):
            gen(x)
        if autocast:
            torch.cuda.synchronize()

    times = C.timeit(run, repeats=1 if not autocast else 5, warmup=1)
    return {
        "s_per_tile": min(times) / batch,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "bf16_autocast": autocast,
    }


if __name__ == "__main__":
    sys.exit(main())
