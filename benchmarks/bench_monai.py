"""Against a peer: MONAI's ``sliding_window_inference`` and ``vstain_dask.tiling.predict_plane``.

Both run the same model on the same plane with the same tiles: tile (MONAI's ``roi_size``) 256,
overlap ``1 - step / tile``, batch of tiles 8 (MONAI's ``sw_batch_size``), on the same device
with the same torch threads. The planes are ``k · step + tile`` pixels wide, where MONAI's grid
(steps of ``tile · (1 - overlap)`` from 0) and ours (anchored at 0, the last tile aligned to the
edge) coincide, so the two outputs should agree to rounding. Blends: ``mean`` against MONAI's
``mode="constant"`` (paper setting, step 64), and ``gaussian`` against ``mode="gaussian"``
(fast setting, step 192; both use sigma = tile / 8, but the weight floors differ).

Reported per setting: tiles/s of each (best of ``--repeats``, the two alternated so that a busy
machine slows both alike), the ratio ``vstain ÷ MONAI``, and the largest difference of the two
outputs (generator output in [-1, 1], and in 8-bit steps after the model card's conversion).

MONAI is the optional ``bench`` dependency (``pip install 'vstain-dask[bench]'``); without it the
script says so and exits 0. Default: the ``tiny`` model, planes of 512 (paper) and 640 (fast)
pixels (about a minute on 2 busy cores). ``--full``: the paper model on 1536- and 1600-pixel
planes::

    python benchmarks/bench_monai.py --full --device cuda --json monai.json
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SETTINGS = {
    "paper": {"step": 64, "blend": "mean", "monai_mode": "constant"},
    "fast": {"step": 192, "blend": "gaussian", "monai_mode": "gaussian"},
}
TILE = 256


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0], "\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--model", help="paper, small, tiny or a .pt file [tiny; paper with --full]")
    p.add_argument(
        "--k", type=int, help="plane side = k·step + 256 [4 paper / 2 fast; 20 / 7 with --full]"
    )
    p.add_argument("--batch", type=int, default=8, help="tiles per forward pass [8]")
    p.add_argument("--settings", default="paper,fast", help="paper, fast or both [paper,fast]")
    args = p.parse_args(argv)
    try:
        import monai
        from monai.inferers import sliding_window_inference  # noqa: F401
    except ImportError:
        print(
            "bench_monai: MONAI is not installed, nothing measured; install the optional "
            "benchmark dependency with  pip install 'vstain-dask[bench]'  (or pip install monai)"
        )
        return 0
    device = C.check_device(args.device)
    head = C.header(device)
    C.print_header(f"against a peer: MONAI {monai.__version__} sliding_window_inference", head)
    with C.workdir(args.workdir) as work:
        results = _run(args, work, device)
    C.finish("bench_monai", head, args, results, results.pop("notes"))
    return 0


def _run(args, work: Path, device: str) -> dict:
    import torch

    from vstain_dask.models import load_model

    cuda = device.startswith("cuda")
    model_name = args.model or ("paper" if args.full else "tiny")
    model = load_model(C.model_file(model_name, work / "models"), device=device)
    gen = model.generator
    if cuda:
        gen = gen.to(memory_format=torch.channels_last)
    torch.set_num_threads(C._cores())

    def predict(t: torch.Tensor) -> torch.Tensor:
        return gen(model.to_input(t))

    rows = []
    for name in [s.strip() for s in args.settings.split(",") if s.strip()]:
        if name not in SETTINGS:
            raise SystemExit(f"--settings: expected paper and/or fast, got {name!r}")
        k = args.k or (
            (20 if name == "paper" else 7) if args.full else (4 if name == "paper" else 2)
        )
        row = _compare(name, k, predict, work, device, args)
        rows.append(row)
        print(C.table([row], _COLUMNS), flush=True)
    notes = [
        f"model '{model_name}' (random weights); batch {args.batch}; torch threads "
        f"{torch.get_num_threads()}; device {device}",
        "ratio > 1: vstain-dask is faster; both runs on one plane (N = 1) in this process; "
        "ratios from the best of the alternated runs, and from their medians",
        "vstain runs every forward pass with the same number of tiles (pad_batch, for "
        "bit-identical blocks): a plane's tiles split evenly, the last pass padded; 'unpadded' "
        "is the same call with pad_batch=False",
        "vstain accumulates in float64 and MONAI in float32, hence differences of ~1e-7",
    ]
    return {"model": model_name, "rows": rows, "notes": notes}


_COLUMNS = ["setting", "plane", "tiles", "vstain_tiles_per_s", "monai_tiles_per_s",
            "ratio_vstain_over_monai", "ratio_unpadded_over_monai", "ratio_median",
            "ratio_unpadded_median", "max_abs_diff",
            "max_u8_diff"]  # fmt: skip


def _compare(name: str, k: int, predict, work: Path, device: str, args) -> dict:
    """One setting: time both (alternated) and compare their outputs."""
    import time

    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from vstain_dask.tiling import TileGrid, predict_plane

    cuda = device.startswith("cuda")
    s = SETTINGS[name]
    step = s["step"]
    side = k * step + TILE
    grid = TileGrid(extent=(side, side), tile=TILE, step=step)
    source = C.phantom(work / "data", (1, side, side), chunks=(1, 256, 256))
    x = torch.from_numpy(C.read_planes(source, slice(0, 1))[:, None]).to(device)  # (1, 1, H, W)
    overlap = 1.0 - step / TILE

    def ours(pad_batch: bool = True) -> np.ndarray:
        return predict_plane(
            x, predict, tile=TILE, step=step, blend=s["blend"], batch_size=args.batch,
            device=device, autocast=cuda, channels_last=cuda, pad_batch=pad_batch,
        )  # fmt: skip

    def theirs() -> np.ndarray:
        with (
            torch.inference_mode(),
            torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cuda),
        ):
            out = sliding_window_inference(
                x, roi_size=(TILE, TILE), sw_batch_size=args.batch, predictor=predict,
                overlap=overlap, mode=s["monai_mode"], sigma_scale=0.125,
            )  # fmt: skip
        return out.float().cpu().numpy()

    a, b = ours(), theirs()  # warm-up, and the outputs to compare
    ours(pad_batch=False)
    runs = {"vstain": ours, "vstain_unpadded": lambda: ours(pad_batch=False), "monai": theirs}
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(args.repeats):  # alternated, so that load from others hits all alike
        for key, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - t0)
    best = {key: min(t) for key, t in times.items()}
    med = {key: statistics.median(t) for key, t in times.items()}
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    u8 = np.abs(_u8(a) - _u8(b))
    n = grid.n_tiles
    return {
        "setting": name,
        "plane": f"{side}x{side}",
        "step": step,
        "overlap": overlap,
        "blend": f"{s['blend']} / {s['monai_mode']}",
        "tiles": n,
        # pad_batch repeats the last tile so that every forward pass has the same shape
        "vstain_tiles_run": -(-n // args.batch) * args.batch if n > args.batch else n,
        "vstain_s": best["vstain"],
        "vstain_unpadded_s": best["vstain_unpadded"],
        "monai_s": best["monai"],
        "vstain_tiles_per_s": n / best["vstain"],
        "monai_tiles_per_s": n / best["monai"],
        "ratio_vstain_over_monai": best["monai"] / best["vstain"],
        "ratio_unpadded_over_monai": best["monai"] / best["vstain_unpadded"],
        "ratio_median": med["monai"] / med["vstain"],
        "ratio_unpadded_median": med["monai"] / med["vstain_unpadded"],
        "max_abs_diff": float(diff.max()),
        "max_u8_diff": int(u8.max()),
        "u8_voxels_differing": float((u8 > 0).mean()),
        "times": times,
    }


def _u8(pred):
    import numpy as np

    return np.clip(np.rint((pred + 1.0) * 127.5), 0, 255).astype(np.int16)


if __name__ == "__main__":
    sys.exit(main())
