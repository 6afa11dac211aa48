"""Does the trainer wait for data? Patches/s of the patch stream alone and of training.

1. The stream alone (``measure_stream``): reading 256 x 256 crops from the pairs store,
   augmenting and batching, for several numbers of loader processes, with and without the
   in-memory cache.
2. Training: a short run of the chosen model size; ``losses.csv`` records patches/s and the
   fraction of the epoch spent waiting for the next batch (``data_wait_fraction``).

If the stream delivers several times the training rate and the wait fraction is near zero, the
GPU (or CPU) never waits for data. Run from the repository root, e.g. on a GPU machine::

    python benchmarks/train_throughput.py --out tp --device cuda --ngf 64 --n-blocks 9 \
        --workers 0 2 4 8 --train-workers 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--out", default="throughput-run", help="work directory")
    parser.add_argument("--pairs", type=int, default=8, help="phantom pairs (512 x 512) [8]")
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="loader processes to measure the stream with [0 1 2]",
    )
    parser.add_argument("--batches", type=int, default=40, help="batches per stream measurement")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--n-blocks", type=int, default=9)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--train-workers", type=int, default=2)
    parser.add_argument("--train-patches", type=int, default=10, help="patches per pair [10]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--stream-only", action="store_true", help="skip the training run")
    args = parser.parse_args(argv)

    import torch

    from vstain_dask.models import InputNormalization
    from vstain_dask.models.config import DiscriminatorConfig, GeneratorConfig
    from vstain_dask.phantom import write_phantom_pairs
    from vstain_dask.train import PatchDataset, TrainConfig, measure_stream, scan_pairs, train

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = out / "pairs.zarr"
    if not pairs.exists():
        write_phantom_pairs(pairs, n=args.pairs, seed=5, size=(512, 512))
    infos = scan_pairs(pairs)
    results: dict = {"stream": [], "train": None}
    for cache in (False, True):
        ds = PatchDataset(
            pairs,
            infos,
            patch_size=args.patch_size,
            patches_per_pair=100,
            normalization=InputNormalization(low=0, high=50000, channels=1),
            cache=cache,
        )
        for w in args.workers:
            r = measure_stream(ds, batch_size=args.batch_size, workers=w, batches=args.batches)
            r["cache"] = cache
            results["stream"].append(r)
            print(
                f"stream: {w} loader processes, cache {cache}: {r['samples_per_s']:.1f} patches/s",
                flush=True,
            )
    if args.stream_only:
        (out / "throughput.json").write_text(json.dumps(results, indent=1))
        return 0
    cfg = TrainConfig(
        epochs=2,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        patches_per_pair=args.train_patches,
        workers=args.train_workers,
        device=args.device,
        generator=GeneratorConfig(ngf=args.ngf, n_blocks=args.n_blocks),
        discriminator=DiscriminatorConfig(ndf=args.ndf),
        val_every=0,
    )
    t0 = time.perf_counter()
    r = train(pairs, out / "run", cfg, overwrite=True, progress=False)
    h = r.history[-1]  # the second epoch: warmed up
    results["train"] = {
        "samples_per_s": h["samples_per_s"],
        "data_wait_fraction": h["data_wait_fraction"],
        "device": cfg.device,
        "seconds": time.perf_counter() - t0,
        "config": cfg.to_dict(),
    }
    print(
        f"training ({cfg.device}, ngf {cfg.generator.ngf}, {cfg.generator.n_blocks} blocks, {cfg.workers} loader "
        f"processes): {h['samples_per_s']:.1f} patches/s, waiting for data "
        f"{100 * h['data_wait_fraction']:.1f} % of the time"
    )
    (out / "throughput.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
