"""Training: patches/s of the patch stream alone and of each variant's training, and the hours
one paper fold (500 epochs × 40 pairs × 100 patches = 2·10⁶ patches) would take at that rate.

1. ``stream``: ``vstain_dask.train.measure_stream`` on a phantom pairs store (no network), with
   0 and 2 loader processes.
2. ``train``: ``vstain_dask.train.train`` for each variant, two epochs with validation off; the
   second epoch's row of the loss log gives patches/s (whole epoch: data wait included) and the
   step-only rate (the epoch's time less the time spent waiting for batches).

The paper reports about 100 h per fold on a V100; the issue's target is under 4 h on one H200
(≥ 150 patches/s for ``mod-cyclegan`` at paper size).

Default (CPU, about 6 minutes on 2 busy cores): the bundled default model's size (16 base
features, 3 residual blocks, 32-feature discriminator, 128-pixel patches), batch 4, two steps
per epoch; the fold hours are then those of that small network, not of the paper's. ``--full``
(GPU): the paper's networks (64 features, 9 blocks, 256-pixel patches), 50 steps per epoch::

    python benchmarks/bench_train.py --full --device cuda --json train.json
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

VARIANTS = ["mod-cyclegan", "cyclegan", "cyclegan-invct", "pix2pix"]
FOLD_PATCHES = 500 * 40 * 100


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0], "\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated [all four]")
    p.add_argument("--patch", type=int, help="patch side [128; 256 with --full]")
    p.add_argument("--ngf", type=int, help="generator base features [16; 64 with --full]")
    p.add_argument("--n-blocks", type=int, help="residual blocks [3; 9 with --full]")
    p.add_argument("--ndf", type=int, help="discriminator base features [32; 64 with --full]")
    p.add_argument("--batch", type=int, default=4, help="patches per step [4, the paper's]")
    p.add_argument("--steps", type=int, help="steps per timed epoch [2; 50 with --full]")
    p.add_argument("--pairs", type=int, help="phantom pairs in the store [6; 12 with --full]")
    p.add_argument("--loader-workers", type=int, default=2, help="DataLoader processes [2]")
    p.add_argument(
        "--stream-batches",
        type=int,
        help="batches timed for the stream (more than the loader prefetches) [40; 100 --full]",
    )
    p.add_argument("--stream-only", action="store_true", help="measure the patch stream only")
    args = p.parse_args(argv)
    device = C.check_device(args.device)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"--variants: expected some of {', '.join(VARIANTS)}, got {bad}")
    head = C.header(device)
    C.print_header("training: patch stream and training steps, patches/s", head)
    with C.workdir(args.workdir) as work:
        results = _run(
            args, work, device, variants,
            save=lambda r: C.save_partial("bench_train", head, args, r),
        )  # fmt: skip
    C.finish("bench_train", head, args, results, results.pop("notes"))
    return 0


def _run(args, work: Path, device: str, variants: list[str], *, save) -> dict:
    import time

    from vstain_dask.models import InputNormalization
    from vstain_dask.models.config import DiscriminatorConfig
    from vstain_dask.phantom import write_phantom_pairs
    from vstain_dask.train import (
        PatchDataset,
        TrainConfig,
        generator_for,
        measure_stream,
        scan_pairs,
        train,
    )

    full = args.full
    patch = args.patch or (256 if full else 128)
    ngf = args.ngf or (64 if full else 16)
    n_blocks = args.n_blocks if args.n_blocks is not None else (9 if full else 3)
    ndf = args.ndf or (64 if full else 32)
    steps = args.steps or (50 if full else 2)
    n_pairs = args.pairs or (12 if full else 6)
    side = max(2 * patch, 256)
    store = work / f"pairs-{n_pairs}x{side}.zarr"
    if not store.exists():
        t0 = time.perf_counter()
        write_phantom_pairs(store, n=n_pairs, seed=0, size=(side, side), overwrite=True)
        print(f"pairs store: {n_pairs} pairs of {side}² in {time.perf_counter() - t0:.1f} s")

    # 1. the patch stream alone
    infos = scan_pairs(store)
    dataset = PatchDataset(
        store,
        infos,
        patch_size=patch,
        patches_per_pair=max(1, math.ceil(200 / len(infos))),
        normalization=InputNormalization(low=0.0, high=50000.0, channels=1),
    )
    stream_rows = []
    batches = args.stream_batches or (100 if full else 40)
    for workers in sorted({0, args.loader_workers}):
        r = measure_stream(dataset, batch_size=args.batch, workers=workers, batches=batches)
        stream_rows.append(
            {"what": "patch stream", "loader_workers": workers, "patch": patch,
             "patches_per_s": r["samples_per_s"], "seconds": r["seconds"],
             "fold_hours": FOLD_PATCHES / r["samples_per_s"] / 3600}
        )  # fmt: skip
        save({"stream": stream_rows})
        print(C.table(stream_rows[-1:]), flush=True)

    # 2. each variant's training, two epochs, the second one timed
    rows = []
    from vstain_dask.pairs import list_pairs
    from vstain_dask.train import make_split

    # patches per pair such that an epoch over the training pairs has about `steps` steps
    n_train = len(make_split(list_pairs(store), seed=0).train)
    per_pair = max(1, math.ceil(steps * args.batch / max(n_train, 1)))
    for variant in [] if args.stream_only else variants:
        config = TrainConfig(
            variant=variant,
            epochs=2,
            batch_size=args.batch,
            patch_size=patch,
            patches_per_pair=per_pair,
            workers=args.loader_workers,
            device=device,
            generator=generator_for(variant, patch_size=patch, ngf=ngf, n_blocks=n_blocks),
            discriminator=DiscriminatorConfig(ndf=ndf),
            val_every=0,
            cache=True,
            seed=0,
        )
        result = train(store, work / f"train-{variant}", config, overwrite=True, progress=False)
        row = result.history[-1]
        seconds = float(row["seconds"])
        rate = float(row["samples_per_s"])
        wait = float(row["data_wait_fraction"] or 0.0)
        samples = rate * seconds
        step_rate = samples / (seconds * (1.0 - wait)) if wait < 1 else float("nan")
        rows.append(
            {"variant": variant, "patch": patch, "ngf": ngf, "n_blocks": n_blocks,
             "patches": round(samples), "patches_per_s": rate, "step_only_per_s": step_rate,
             "data_wait": wait, "fold_hours": FOLD_PATCHES / rate / 3600,
             "paper_v100_hours": 100}
        )  # fmt: skip
        save({"stream": stream_rows, "train": rows})
        print(C.table(rows[-1:]), flush=True)
    print()
    print(C.table(stream_rows))
    if rows:
        print()
        print(C.table(rows))
    notes = [
        f"fold = 500 epochs × 40 pairs × 100 patches = {FOLD_PATCHES:,} patches; fold_hours = "
        "that / patches_per_s",
        "training rows: second epoch of train() (first epoch = warm-up), validation off, "
        f"{args.loader_workers} loader processes, cache on, batch {args.batch}",
        "step_only_per_s: the same epoch less the time spent waiting for batches",
        "patch stream: measure_stream after one warm-up batch; loader processes prefetch, so "
        "few timed batches overstate the rate",
    ]
    if not full:
        notes.append(
            f"small networks (ngf {ngf}, {n_blocks} blocks, ndf {ndf}, {patch}-pixel patches): "
            "these fold hours are not the paper's networks' (use --full on a GPU)"
        )
    return {
        "config": {"patch": patch, "ngf": ngf, "n_blocks": n_blocks, "ndf": ndf},
        "stream": stream_rows,
        "train": rows,
        "notes": notes,
    }


if __name__ == "__main__":
    sys.exit(main())
