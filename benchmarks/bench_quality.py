"""Quality against cost: how much cheaper tilings change the stain, and what each costs.

The reference is the paper's setting: tile 256, step 64, mean blend. Each cheaper setting (steps
128 and 192, Gaussian blend, and whole-slice inference without tiling, which changes the
InstanceNorm statistics the generator sees) stains the same phantom planes; the script reports
the SSIM of its 8-bit RGB output against the reference (``skimage.metrics.structural_similarity``,
``channel_axis`` over R, G, B, data range 255), the largest 8-bit difference, the tiles it runs
and its time (best of ``--repeats``, in this process, all cores).

Default: the ``tiny`` model (random weights) on one 640 × 640 phantom plane (about a minute on 2
busy cores). Use ``--model FILE.pt`` with a trained model for figures that mean something about a
real stain: a random generator is a stand-in whose sensitivity to context is not a trained
one's. ``--full``: the paper model on four 1536 × 1536 planes::

    python benchmarks/bench_quality.py --full --device cuda --model model.pt --json quality.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

#: name -> (step, blend); None = whole-slice inference
SETTINGS: dict[str, tuple[int, str] | None] = {
    "mean-64 (paper, reference)": (64, "mean"),
    "mean-128": (128, "mean"),
    "mean-192": (192, "mean"),
    "gaussian-64": (64, "gaussian"),
    "gaussian-128": (128, "gaussian"),
    "gaussian-192 (fast)": (192, "gaussian"),
    "whole slice": None,
}


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0], "\n".join(__doc__.split("\n")[2:]))
    p.set_defaults(repeats=1)
    p.add_argument("--model", help="paper, small, tiny or a .pt file [tiny; paper with --full]")
    p.add_argument("--side", type=int, help="plane side in pixels [640; 1536 with --full]")
    p.add_argument("--planes", type=int, help="phantom planes (spread along z) [1; 4 --full]")
    p.add_argument("--batch", type=int, default=8, help="tiles per forward pass [8]")
    args = p.parse_args(argv)
    device = C.check_device(args.device)
    head = C.header(device)
    C.print_header("quality against cost: SSIM to the paper's tiling, and time", head)
    with C.workdir(args.workdir) as work:
        results = _run(args, work, device)
    C.finish("bench_quality", head, args, results, results.pop("notes"))
    return 0


def _run(args, work: Path, device: str) -> dict:
    import time

    import numpy as np
    import torch
    from skimage.metrics import structural_similarity

    from vstain_dask import intensity
    from vstain_dask.models import load_model
    from vstain_dask.stain import resolve_ct_levels
    from vstain_dask.tiling import TileGrid, predict_plane

    cuda = device.startswith("cuda")
    model_name = args.model or ("paper" if args.full else "tiny")
    model_file = C.model_file(model_name, work / "models")
    model = load_model(model_file, device=device)
    gen = model.generator
    if cuda:
        gen = gen.to(memory_format=torch.channels_last)
    torch.set_num_threads(C._cores())
    side = args.side or (1536 if args.full else 640)
    n_planes = args.planes or (4 if args.full else 1)
    depth = max(n_planes * 8, 1) if n_planes > 1 else 1
    source = C.phantom(work / "data", (depth, side, side), chunks=(min(depth, 8), 256, 256))
    zs = [int(z) for z in np.linspace(0, depth - 1, n_planes).round()]
    planes = C.read_planes(source, zs)[:, None]  # (N, 1, side, side)
    # a trained model sees the CT normalized as it was in training, as `stain` feeds it
    levels = resolve_ct_levels(source, model_file, "auto")
    if levels is not None:
        planes = intensity.ct_to_paper_units(planes.astype(np.float32), *levels)
    x = torch.from_numpy(planes).to(device)

    def predict(t: torch.Tensor) -> torch.Tensor:
        return gen(model.to_input(t))

    def run(setting) -> np.ndarray:
        if setting is None:
            with (
                torch.inference_mode(),
                torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cuda),
            ):
                out = torch.cat([predict(x[i : i + 1]).float() for i in range(len(x))])
            return out.cpu().numpy()
        step, blend = setting
        return predict_plane(
            x, predict, tile=256, step=step, blend=blend, batch_size=args.batch,
            device=device, autocast=cuda, channels_last=cuda,
        )  # fmt: skip

    def u8(pred: np.ndarray) -> np.ndarray:
        return np.clip(np.rint((pred + 1.0) * 127.5), 0, 255).astype(np.uint8)

    run((192, "gaussian"))  # warm-up
    rows = []
    reference = None
    for name, setting in SETTINGS.items():
        times = []
        out = None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = run(setting)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        rgb = u8(out)
        if reference is None:
            reference = rgb
        ssim = [
            structural_similarity(reference[i], rgb[i], channel_axis=0, data_range=255)
            for i in range(len(rgb))
        ]
        tiles = (
            len(x) * TileGrid(extent=(side, side), tile=256, step=setting[0]).n_tiles
            if setting
            else None  # one pass per whole plane
        )
        rows.append(
            {
                "setting": name,
                "tiles": tiles,
                "seconds": min(times),
                "cost_vs_paper": None,
                "ssim": float(np.mean(ssim)),
                "ssim_min": float(np.min(ssim)),
                "max_u8_diff": int(np.abs(reference.astype(np.int16) - rgb.astype(np.int16)).max()),
                "mean_u8_diff": float(
                    np.abs(reference.astype(np.int16) - rgb.astype(np.int16)).mean()
                ),
            }
        )
        print(C.table(rows[-1:], _COLUMNS), flush=True)
    for r in rows:
        r["cost_vs_paper"] = r["seconds"] / rows[0]["seconds"]
        r["tiles_vs_paper"] = r["tiles"] / rows[0]["tiles"] if r["tiles"] else None
    print()
    print(C.table(rows, _COLUMNS))
    notes = [
        "input: "
        + (
            f"CT normalized as `stain --ct-levels auto` does (bone {levels[0]:.0f}, background "
            f"{levels[1]:.0f} -> 30000, 10000)"
            if levels is not None
            else "raw CT (the model does not expect normalized CT)"
        ),
        f"model '{model_name}'" + (" (random weights)" if not model_name.endswith(".pt") else ""),
        f"{len(x)} phantom plane(s) of {side} × {side} (z = {zs}); SSIM per plane over R, G, B "
        "(channel_axis), data range 255, averaged",
        "whole slice: one generator pass per plane, no tiles (instance-norm statistics of the "
        "whole plane instead of each tile's)",
        "cost_vs_paper: measured seconds ÷ the reference's (noisy on a shared machine); "
        "tiles_vs_paper: the tile-count ratio, which is what the cost follows when the model "
        "dominates",
    ]
    return {"model": model_name, "side": side, "planes": zs, "rows": rows, "notes": notes}


_COLUMNS = ["setting", "tiles", "tiles_vs_paper", "seconds", "cost_vs_paper", "ssim", "ssim_min", "max_u8_diff",
            "mean_u8_diff"]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
