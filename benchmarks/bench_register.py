"""Registration: how well and how fast ``register`` finds phantom sections cut on known planes.

A phantom volume is written once; sections are cut from it on planes drawn from the seed (tilts
of up to ``--max-tilt`` degrees about each in-plane axis, any in-plane rotation, mirrored or not,
shear up to 3 %, compression up to 2 %, every other one a partial field of view of 70 %) and
written as pyramidal OME-TIFFs, the way ``vstain-dask phantom-section`` writes them. Each is
registered with ``--axis y`` (the cuts' axis) and scored against its true ``section_to_ct``:
the mean and max distance over the section's pixels, in µm and in CT voxels, and the mean split
into its part along the true plane (which CT pixel each section pixel is paired with) and across
it (the plane's depth and tilt). Refusals (no trusted plane, exit 3 on the command line) are
counted, not scored; a plane found with a mean error over 5 voxels is counted as wrong.

Reported per section: the cut, the outcome, the errors, how far across the plane ``register``
says another pose scores as well (``doubt``), the final mutual information and the best on the
coarse level (which refuses the section below the final's minimum), the margin over another
pose, the seconds and the peak RSS of the registration; then the errors of those found, how many are within 2 voxels (in
all and along the plane), the refusals and the wrong ones.

Default: a 96 × 192 × 192 phantom at 5 µm, 6 sections at 2 µm (a few minutes on 2 cores).
``--full``: 256 × 768 × 768, 12 sections at 0.88 µm::

    python benchmarks/bench_register.py --json register.json
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0], "\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--shape", type=C.shape3, help="phantom Z,Y,X [96,192,192; 256,768,768 full]")
    p.add_argument("--sections", type=int, help="sections to cut and register [6; 12 full]")
    p.add_argument("--pixel-size", type=float, help="section pixel size, µm [2; 0.88 full]")
    p.add_argument("--max-tilt", type=float, default=12.0, help="largest tilt, degrees [12]")
    p.add_argument("--seed", type=int, default=0, help="seeds the cuts [0]")
    args = p.parse_args(argv)
    shape = args.shape or ((256, 768, 768) if args.full else (96, 192, 192))
    n = args.sections or (12 if args.full else 6)
    pixel = args.pixel_size or (0.88 if args.full else 2.0)
    head = C.header("cpu")
    C.print_header("Registration of phantom sections: error against the truth, time, memory", head)
    with C.workdir(args.workdir) as work:
        volume = work / f"register-{'x'.join(map(str, shape))}.ome.zarr"
        if not volume.exists():
            from vstain_dask.phantom import write_phantom

            write_phantom(volume, shape=shape, material="mg", seed=3)
        rows = []
        for k, cut in enumerate(_cuts(n, args.seed, args.max_tilt, pixel)):
            rows.append(_one(volume, work / f"section-{k}.ome.tif", cut))
            print(f"section {k}: " + ", ".join(f"{key} {C.fmt(v)}" for key, v in rows[-1].items()))
            C.save_partial("bench_register", head, args, {"sections": rows})
    results = {"sections": rows, "summary": _summary(rows)}
    print(C.table(rows, _COLUMNS))
    print(C.table([results["summary"]]))
    C.finish("bench_register", head, args, results, [f"phantom {shape} at 5 µm, axis y"])
    return 0


_COLUMNS = ("tilt", "rotate", "flip", "shear", "fov", "outcome", "mean_voxels", "in_plane_voxels",
            "off_plane_voxels", "doubt_voxels", "max_um", "mi", "coarse_mi", "margin", "seconds",
            "peak_rss_mib")  # fmt: skip
#: an accepted plane further off than this (mean, CT voxels) is a wrong answer
WRONG_VOXELS = 5.0


def _cuts(n: int, seed: int, max_tilt: float, pixel: float):
    from vstain_dask.phantom._section import SectionCut

    rng = np.random.default_rng([seed, 17])
    for k in range(n):
        yield SectionCut(
            axis="y",
            tilt=tuple(float(t) for t in np.round(rng.uniform(-max_tilt, max_tilt, 2), 1)),
            rotate=float(np.round(rng.uniform(0, 360), 1)),
            flip=bool(rng.random() < 0.5),
            shear=float(np.round(rng.uniform(-0.03, 0.03), 3)),
            compression=float(np.round(rng.uniform(0, 0.02), 3)),
            fov=0.7 if k % 2 else 1.0,
            pixel_size=pixel,
            seed=k,
        )


def _one(volume: Path, path: Path, cut) -> dict:
    from vstain_dask.phantom._section import write_phantom_section
    from vstain_dask.register import (
        RegisterConfig,
        RegistrationError,
        plane_errors,
        register_section,
        score_against_truth,
    )

    truth = write_phantom_section(volume, path, cut, overwrite=True)
    row = {
        "tilt": f"{cut.tilt[0]:g},{cut.tilt[1]:g}",
        "rotate": cut.rotate,
        "flip": cut.flip,
        "shear": cut.shear,
        "fov": cut.fov,
    }
    t0 = time.perf_counter()
    with C.process_memory() as mem:
        try:
            record = register_section(volume, path, RegisterConfig(axis="y"))
        except RegistrationError as e:
            record = None
            row["outcome"] = "refused"
            row["why"] = str(e)[:60]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["peak_rss_mib"] = round(mem.get("peak_rss_mib", 0.0))
    if record is not None:
        mean, worst = score_against_truth(record, truth["section_to_ct"])
        within, across = plane_errors(record, truth["section_to_ct"])
        voxel = record["ct_voxel_size"]
        conf = record["confidence"]
        row.update(outcome="found", mean_um=round(mean, 1), max_um=round(worst, 1),
                   mean_voxels=round(mean / voxel, 2), in_plane_voxels=round(within / voxel, 2),
                   off_plane_voxels=round(across / voxel, 2),
                   doubt_voxels=round(conf["off_plane_um"] / voxel, 1),
                   mi=round(-record["metric"], 3), coarse_mi=round(record["coarse_mi"], 3),
                   margin=round(conf["margin"], 3))  # fmt: skip
    return row


def _summary(rows: list[dict]) -> dict:
    found = [r for r in rows if r["outcome"] == "found"]
    errors = sorted(r["mean_voxels"] for r in found)
    return {
        "sections": len(rows),
        "found": len(found),
        "refused": len(rows) - len(found),
        "wrong": sum(e > WRONG_VOXELS for e in errors),
        "mean_voxels_found": " ".join(f"{e:.2f}" for e in errors),
        "median_mean_voxels": round(statistics.median(errors), 2) if errors else None,
        "within_2_voxels": sum(e <= 2 for e in errors),
        "in_plane_within_2_voxels": sum(r["in_plane_voxels"] <= 2 for r in found),
        "in_plane_voxels_found": " ".join(f"{r['in_plane_voxels']:.2f}" for r in found),
        "median_seconds": statistics.median(r["seconds"] for r in rows),
        "max_peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
    }


if __name__ == "__main__":
    raise SystemExit(main())
