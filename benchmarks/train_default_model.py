"""Train the bundled default model exactly as it was made, and look at what it does.

The recipe is ``vstain_dask.train.default``: phantom pairs (``DEFAULT_PAIRS``) and the
``mod-cyclegan`` settings of ``DEFAULT_CONFIG`` (16 base features, 3 residual blocks, 128-pixel
patches, a few minutes of two CPU cores). The script

1. writes the phantom pairs (skipped when they exist),
2. trains (``--resume`` continues an interrupted run),
3. stains a 64 x 256 x 256 phantom volume with the result (as ``vstain-dask demo`` does: step
   128, Gaussian blend) and writes orthogonal views of CT and stain to ``views.png``,
4. with ``--install``, copies the model to ``vstain_dask/data/default_model.pt`` and writes its
   card ``default_model.md`` beside it.

Run from the repository root::

    python benchmarks/train_default_model.py --out default-run --install
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--out", default="default-run", help="work directory [default-run]")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--patches-per-pair", type=int, help="override the recipe")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads [1: on a busy 2-core machine more threads are slower]",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--skip-train", action="store_true", help="only stain and view")
    parser.add_argument(
        "--install",
        action="store_true",
        help="copy the model into vstain_dask/data (the bundled model)",
    )
    args = parser.parse_args(argv)

    import torch

    from vstain_dask.train.default import DEFAULT_CONFIG, make_default_pairs, train_default_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = out / "pairs.zarr"
    if not pairs.exists():
        t0 = time.perf_counter()
        make_default_pairs(pairs)
        print(f"pairs: {pairs} in {time.perf_counter() - t0:.0f} s", flush=True)
    changes = {}
    if args.epochs:
        changes["epochs"] = args.epochs
    if args.patches_per_pair:
        changes["patches_per_pair"] = args.patches_per_pair
    config = dataclasses.replace(DEFAULT_CONFIG, **changes)
    run = out / "run"
    model = run / "model.pt"
    if not args.skip_train:
        t0 = time.perf_counter()
        result = train_default_model(
            pairs,
            run,
            config=config,
            overwrite=not args.resume,
            resume=args.resume,
            command=" ".join(["python", *sys.argv]),
        )
        dt = time.perf_counter() - t0
        h = result.history[-1]
        print(
            f"trained {result.epochs} epochs in {dt / 60:.1f} min "
            f"({h['samples_per_s']:.2f} samples/s in the last epoch); model {model} "
            f"({model.stat().st_size / 1e6:.2f} MB)",
            flush=True,
        )

    from vstain_dask.phantom import write_phantom
    from vstain_dask.stain import StainConfig, run_stain
    from vstain_dask.views import save_views

    t0 = time.perf_counter()
    volume = write_phantom(
        out / "phantom.ome.zarr", shape=(64, 256, 256), material="mg", seed=0, overwrite=True
    )
    from vstain_dask.cluster import ClusterConfig

    stained = out / "phantom.stained.ome.zarr"
    run_stain(
        volume,
        stained,
        model=model,
        config=StainConfig(axes="z", step=128, blend="gaussian"),
        cluster=ClusterConfig(workers=1, threads_per_worker=args.threads, dashboard=False),
        overwrite=True,
        progress=False,
    )
    views = save_views([volume, stained], out / "views.png", titles=["CT phantom", "stained"])
    print(f"stained the demo phantom in {time.perf_counter() - t0:.0f} s; views: {views}")

    if args.install:
        from vstain_dask.models import load_model, save_model
        from vstain_dask.stain import default_model_path
        from vstain_dask.train.default import DEFAULT_NOTES

        target = default_model_path()
        m = load_model(model)
        card = m.card
        # the bundled card names no local paths: the recipe's command, and the whole run's time
        # (a resumed run continues exactly, so it is the same model as one uninterrupted run)
        history = json.loads((run / "losses.json").read_text(encoding="utf-8"))
        metrics = {k: v for k, v in card["metrics"].items() if k != "seconds_this_call"}
        metrics["train_seconds"] = round(sum(h["seconds"] for h in history), 1)
        changed = "".join(f" --{k.replace('_', '-')} {v}" for k, v in changes.items())
        command = f"python benchmarks/train_default_model.py --install{changed}"
        # saved again under its bundled name, so that the card (default_model.md) names it
        save_model(
            target,
            generator=m.generator,
            normalization=m.normalization,
            variant=m.variant,
            config=m.config,
            training=card["training"],
            seed=card["seed"],
            split=card["split"],
            metrics=metrics,
            hardware=card["hardware"],
            command=command,
            notes=DEFAULT_NOTES,
            overwrite=True,
        )
        print(
            f"installed {target} ({target.stat().st_size / 1e6:.2f} MB) and its card "
            f"{target.with_suffix('.md')}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
