"""Show that training learns: the paper's Table 1 ordering on held-out phantom pairs.

Trains ``mod-cyclegan``, ``cyclegan`` and ``pix2pix`` (and, with ``--all``,
``cyclegan-invct``) with one configuration and budget: the settings of the bundled model's recipe
(``vstain_dask.train.default``) with the paper's augmentation (flips, no 90° rotations), 8
epochs of 8 patches per pair, on the 24 pairs of ``vstain-dask phantom-pairs --n 24 --seed 2024
--size 384,384`` (without the recipe's extra axial sections); only the variant changes. ``--mod-cyclegan-run`` scores an existing run of exactly that configuration
instead of training one. Every model is scored on phantom pairs that no model has seen (another
seed, other specimens):

- SSIM: ``skimage.metrics.structural_similarity`` on uint8 RGB (``channel_axis=-1``,
  ``data_range=255``), its map averaged inside each pair's correspondence mask;
- PSNR and mean absolute error inside the mask;
- the raw-CT baseline scores the normalized CT shown as grey RGB.

Predictions are whole-plane (no tiling), targets are the normalized histology. Writes
``learning.md`` (the table), ``learning.json`` and ``panels.png`` to ``--out``.

Run from the repository root::

    python benchmarks/learning_table.py --out learning-run --mod-cyclegan-run default-run/run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = ("mod-cyclegan", "cyclegan", "pix2pix")


def _evaluate(models: dict, pairs_path: Path) -> tuple[dict, dict]:
    """Per-model lists of per-pair metrics, and a few predictions for the panels."""
    import torch

    from vstain_dask.train.dataset import scan_pairs
    from vstain_dask.train.metrics import ct_as_rgb, masked_psnr, masked_ssim, normalized_pair

    torch.set_grad_enabled(False)
    import zarr

    root = zarr.open_group(str(pairs_path), mode="r")
    infos = scan_pairs(pairs_path)
    scores: dict[str, list[dict]] = {name: [] for name in ["raw CT", *models]}
    panels: dict[str, list] = {name: [] for name in ["CT", "histology", *models]}
    for k, p in enumerate(infos):
        g = root[p.id]
        ct, target, mask = normalized_pair((g["ct"], g["histology"], g["mask"]), p.levels)
        preds = {"raw CT": ct_as_rgb(ct, next(iter(models.values())).normalization)}
        for name, m in models.items():
            preds[name] = np.moveaxis(m.predict(ct)[0], 0, -1)
        for name, pred in preds.items():
            err = np.abs(pred.astype(np.float64) - target)[mask].mean()
            scores[name].append(
                {
                    "pair": p.id,
                    "material": p.material,
                    "ssim": masked_ssim(pred, target, mask),
                    "psnr": masked_psnr(pred, target, mask),
                    "l1": float(err),
                }
            )
        if k < 4:
            panels["CT"].append(preds["raw CT"])
            panels["histology"].append(target)
            for name in models:
                panels[name].append(preds[name])
    return scores, panels


def _table(scores: dict, budget: str, command: str) -> str:
    lines = [
        "| model | SSIM (masked) | PSNR dB (masked) | L1 (0-255, masked) | SSIM Mg / Ti / PEEK |",
        "|---|---|---|---|---|",
    ]
    for name, rows in scores.items():
        ssim = np.array([r["ssim"] for r in rows])
        psnr = np.array([r["psnr"] for r in rows])
        l1 = np.array([r["l1"] for r in rows])
        per = []
        for m in ("mg", "ti", "peek"):
            v = [r["ssim"] for r in rows if r["material"] == m]
            per.append(f"{np.mean(v):.3f}" if v else "-")
        lines.append(
            f"| {name} | {ssim.mean():.3f} ± {ssim.std():.3f} | {psnr.mean():.2f} ± "
            f"{psnr.std():.2f} | {l1.mean():.1f} | {' / '.join(per)} |"
        )
    n = len(next(iter(scores.values())))
    return "\n".join(
        [*lines, "", f"{n} held-out phantom pairs; {budget}", "", f"Command: `{command}`", ""]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--out", default="learning-run", help="work directory [learning-run]")
    parser.add_argument(
        "--mod-cyclegan-run", help="run directory of the default recipe (its model.pt is scored)"
    )
    parser.add_argument("--all", action="store_true", help="also train cyclegan-invct")
    parser.add_argument("--test-pairs", type=int, default=10, help="held-out pairs [10]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    parser.add_argument(
        "--only-evaluate",
        action="store_true",
        help="score the runs already in --out, train nothing",
    )
    args = parser.parse_args(argv)

    import torch

    from vstain_dask.models import load_model
    from vstain_dask.phantom import write_phantom_pairs
    from vstain_dask.train import AugmentConfig, Provenance, TrainConfig, train
    from vstain_dask.train.default import DEFAULT_CONFIG, DEFAULT_PAIRS, make_default_pairs

    # the bundled model's settings with the paper's augmentation, on the 24 phantom-pairs only
    config = dataclasses.replace(
        DEFAULT_CONFIG, augment=AugmentConfig(), epochs=8, patches_per_pair=8
    )

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_pairs = out / "pairs.zarr"
    test_pairs = out / "test-pairs.zarr"
    if not train_pairs.exists():
        make_default_pairs(train_pairs, axial=False)
    if not test_pairs.exists():
        write_phantom_pairs(
            test_pairs,
            n=args.test_pairs,
            seed=DEFAULT_PAIRS["seed"] + 1,
            size=DEFAULT_PAIRS["size"],
            voxel_size=DEFAULT_PAIRS["voxel_size"],
        )
    variants = [*VARIANTS, "cyclegan-invct"] if args.all else list(VARIANTS)
    runs = {}
    seconds = {}
    for v in variants:
        run = out / v
        if v == "mod-cyclegan" and args.mod_cyclegan_run:
            run = Path(args.mod_cyclegan_run)
        runs[v] = run
        given = v == "mod-cyclegan" and args.mod_cyclegan_run
        if given or (run / "config.json").exists():
            saved = json.loads((run / "config.json").read_text())["config"]
            saved = TrainConfig.from_dict(saved).to_dict()  # fields added since get defaults
            want = config.with_variant(v).to_dict()
            differ = {k: (saved.get(k), want[k]) for k in want if saved.get(k) != want[k]}
            if set(differ) - {"workers", "device"}:
                parser.error(f"{run} was trained with other settings: {differ}; remove it")
        if given or args.only_evaluate or (run / "model.pt").exists():
            continue  # a given run is only scored, never trained (or overwritten) here
        t0 = time.perf_counter()
        train(
            train_pairs,
            run,
            config.with_variant(v),
            overwrite=True,
            provenance=Provenance(command=" ".join(["python", *sys.argv])),
        )
        seconds[v] = time.perf_counter() - t0
        print(f"{v}: trained in {seconds[v] / 60:.1f} min", flush=True)
    missing = [str(r / "model.pt") for r in runs.values() if not (r / "model.pt").exists()]
    if missing:
        parser.error(f"no model to score: {', '.join(missing)} (is that run finished?)")
    models = {v: load_model(r / "model.pt") for v, r in runs.items()}
    for v, m in models.items():
        assert m.variant.value == v, (v, m.variant)
    scores, panels = _evaluate(models, test_pairs)
    cfg = config
    steps = cfg.epochs * DEFAULT_PAIRS["n"] * cfg.patches_per_pair // cfg.batch_size
    budget = (
        f"every model: {cfg.epochs} epochs x {DEFAULT_PAIRS['n']} pairs x "
        f"{cfg.patches_per_pair} patches of {cfg.patch_size} px = {steps} steps of batch "
        f"{cfg.batch_size}; ngf {cfg.generator.ngf}, {cfg.generator.n_blocks} residual blocks "
        f"(U-Net depth {cfg.with_variant('pix2pix').generator.depth} for pix2pix), "
        f"ndf {cfg.discriminator.ndf}; lr {cfg.lr:g}; mask_l1={cfg.mask_l1}"
    )
    command = " ".join(["python", *sys.argv])
    text = _table(scores, budget, command)
    (out / "learning.md").write_text(text, encoding="utf-8")
    (out / "learning.json").write_text(
        json.dumps({"scores": scores, "budget": budget, "train_seconds": seconds}, indent=1)
    )
    print(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(panels)
    n = len(panels["CT"])
    fig, axes = plt.subplots(n, len(cols), figsize=(2.6 * len(cols), 2.6 * n), squeeze=False)
    for c, name in enumerate(cols):
        for r in range(n):
            axes[r, c].imshow(panels[name][r])
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "panels.png", dpi=80)
    print(f"panels: {out / 'panels.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
