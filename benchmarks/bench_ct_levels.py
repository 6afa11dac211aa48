"""Automatic CT levels: how often ``estimate_ct_levels`` is right, wrong or refuses on phantoms.

Each phantom (``vstain_dask.phantom``, Mg, Ti and PEEK screws, one per seed) is sampled three
ways, with no material hint: in its own slices (the screw seen end-on) and transposed so that
the sampled planes run along the screw (``along-y``, ``along-x``: a screw set across the bone,
as the slices of a scan show it). An estimate is right when bone and background are both within
5 % of the truth (the mean of cortical bone and of the embedding, eroded by one voxel in each
slice of the phantom, as an ROI away from the edges would measure them); refusals (a one-line
error) are counted apart; anything else is wrong: a level a stain would silently use.

Default: 64³ and 96³ phantoms, seeds 1–6 (108 estimates, a minute or two on 2 cores).
``--full``: 64³, 96³ and 128³, seeds 1–12::

    python benchmarks/bench_ct_levels.py --json ct_levels.json
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

#: how the phantom is sampled: the axis order of the planes read (the first axis is sampled)
VIEWS = {"end-on": (0, 1, 2), "along-y": (1, 0, 2), "along-x": (2, 1, 0)}
MATERIALS = ("ti", "mg", "peek")
TOLERANCE = 0.05


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0], "\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--sizes", help="phantom sides, comma-separated [64,96; 64,96,128 full]")
    p.add_argument("--seeds", type=int, help="phantom seeds 1..N [6; 12 full]")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
        [64, 96, 128] if args.full else [64, 96])  # fmt: skip
    seeds = args.seeds or (12 if args.full else 6)
    head = C.header("cpu")
    C.print_header("Automatic CT levels on phantoms: right, wrong or refused", head)
    rows = [row for size in sizes for seed in range(1, seeds + 1) for material in MATERIALS
            for row in _phantom(size, seed, material)]  # fmt: skip
    summary = _summary(rows)
    print(C.table(summary))
    wrong = [r for r in rows if r["outcome"] == "wrong"]
    if wrong:
        print("wrong:")
        print(C.table(wrong, ("size", "seed", "material", "view", "bone_error", "background_error",
                              "confidence", "container")))  # fmt: skip
    C.finish("bench_ct_levels", head, args, {"estimates": rows, "summary": summary},
             [f"phantoms {sizes}, seeds 1-{seeds}, no material hint"])  # fmt: skip
    return 0


def _phantom(size: int, seed: int, material: str) -> list[dict]:
    from scipy import ndimage as ndi

    from vstain_dask.phantom import phantom_volume
    from vstain_dask.phantom._anatomy import Tissue

    ct, labels = phantom_volume((size,) * 3, material=material, seed=seed, chunks=(32, size, size))
    raw, labels = np.asarray(ct), np.asarray(labels)
    in_slice = np.zeros((3, 3, 3), bool)
    in_slice[1] = True
    truth = [float(raw[ndi.binary_erosion(labels == t, in_slice)].astype(np.float64).mean())
             for t in (Tissue.CORTICAL_BONE, Tissue.EMBEDDING)]  # fmt: skip
    return [
        {
            "size": size,
            "seed": seed,
            "material": material,
            "view": view,
            **_estimate(np.ascontiguousarray(raw.transpose(order)), truth),
        }
        for view, order in VIEWS.items()
    ]


def _estimate(ct: np.ndarray, truth: list[float]) -> dict:
    from vstain_dask.errors import InputError
    from vstain_dask.preprocess import estimate_ct_levels

    try:
        levels = estimate_ct_levels(ct)
    except InputError as e:
        return {"outcome": "refused", "reason": str(e)}
    errors = [levels.bone / truth[0] - 1, levels.background / truth[1] - 1]
    right = max(abs(e) for e in errors) < TOLERANCE
    return {
        "outcome": "right" if right else "wrong",
        "bone_error": round(errors[0], 4),
        "background_error": round(errors[1], 4),
        "confidence": levels.confidence,
        "container": levels.basis["container"],
        "metal": levels.metal_threshold is not None,
    }


def _summary(rows: list[dict]) -> list[dict]:
    """Counts per view and material, and in all."""
    groups: dict[tuple[str, str], collections.Counter] = collections.defaultdict(
        collections.Counter
    )
    for r in rows:
        groups[(r["view"], r["material"])][r["outcome"]] += 1
        groups[("all", "all")][r["outcome"]] += 1
    return [
        {
            "view": view,
            "material": material,
            "estimates": sum(c.values()),
            "right": c["right"],
            "wrong": c["wrong"],
            "refused": c["refused"],
        }
        for (view, material), c in sorted(groups.items(), key=lambda g: g[0] == ("all", "all"))
    ]


if __name__ == "__main__":
    raise SystemExit(main())
