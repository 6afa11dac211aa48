"""The QC figure of automatic CT levels: what :func:`vstain_dask.preprocess.estimate_ct_levels`
saw and which classes gave the two levels.

Left, the histogram of the sampled (denoised) grey values, on a log scale, each class in the
colour of its role, with the bone and background levels marked; right, the middle sampled
plane in grey with the classes coloured by role (bone, medium, holder wall, air, metal).
matplotlib (Agg) is imported only when a figure is drawn.

``pairs add`` and ``register`` draw the figure before the pair's id is settled (the id is
chosen when the pair is written) and must not replace the figure of a pair that is kept: the
figure goes to a temporary folder first (:func:`pending_figure`) and gets its name,
:func:`pair_levels_qc_path`, once the pair is written (:func:`keep_figure`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LEVEL_ROLES",
    "ROLE_COLOURS",
    "write_levels_qc",
    "pair_levels_qc_path",
    "pending_figure",
    "keep_figure",
]

#: the roles an automatic estimate gives the classes (index = the role's code in its evidence)
LEVEL_ROLES = ("outside", "air", "holder wall", "medium", "other", "bone", "metal")

#: colour of each role, RGBA
ROLE_COLOURS = {
    "outside": (0.0, 0.0, 0.0, 0.0),
    "air": (0.35, 0.55, 1.0, 0.45),
    "holder wall": (1.0, 0.85, 0.1, 0.6),
    "medium": (0.1, 0.8, 0.9, 0.45),
    "other": (0.0, 0.0, 0.0, 0.0),
    "bone": (1.0, 0.25, 0.2, 0.55),
    "metal": (0.8, 0.3, 1.0, 0.7),
}


def write_levels_qc(path: str | os.PathLike, evidence: Any) -> Path:
    """Draw the QC figure of an automatic level estimate to ``path`` (PNG).

    Parameters
    ----------
    path : path of the PNG (its folder must exist)
    evidence : the estimate's evidence (what ``estimate_ct_levels(..., qc=path)`` passes):
        its sampled ``planes`` (``values``, ``denoised``, ``valid``, ``z``, ``factor``), the
        ``roles`` of their pixels (codes into :data:`LEVEL_ROLES`) and the ``levels``

    Returns
    -------
    pathlib.Path
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (hist_ax, plane_ax) = plt.subplots(1, 2, figsize=(11, 4.6))
    try:
        _histogram(hist_ax, evidence)
        _plane(plane_ax, evidence)
        levels = evidence.levels
        fig.suptitle(
            f"{levels.describe()}; "
            + ", ".join(f"{k} {v:.2f}" for k, v in levels.basis["parts"].items()),
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return path


def pair_levels_qc_path(folder: str | os.PathLike, pair_id: str) -> Path:
    """Where the QC figure of a pair's CT levels is kept: ``<pair id>.levels.png`` in
    ``folder`` (beside the pairs store, or beside ``register``'s QC picture); pair ids are
    unique in a store, so the figures of its pairs do not collide."""
    return Path(folder) / f"{pair_id}.levels.png"


@contextlib.contextmanager
def pending_figure() -> Iterator[Path]:
    """A path in a new temporary folder to draw a figure to before the name it keeps is known;
    the folder, and the figure unless :func:`keep_figure` moved it, go when the block ends."""
    with tempfile.TemporaryDirectory(prefix="vstain-levels-qc-") as folder:
        yield Path(folder) / "levels.png"


def keep_figure(pending: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """Move the figure drawn to ``pending`` to ``path`` (its folder created; a figure there is
    replaced); None, and nothing moved, where none was drawn."""
    pending, path = Path(pending), Path(path)
    if not pending.is_file():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(pending, path)
    return path


def _histogram(ax, evidence) -> None:
    planes, roles, levels = evidence.planes, evidence.roles, evidence.levels
    values = planes.denoised[planes.valid]
    edges = np.histogram_bin_edges(values, bins=256)
    for code, name in enumerate(LEVEL_ROLES):
        if name == "outside":
            continue
        part = planes.denoised[planes.valid & (roles == code)]
        if part.size:
            colour = ROLE_COLOURS[name][:3] if name != "other" else (0.55, 0.55, 0.55)
            ax.hist(part, bins=edges, color=colour, alpha=0.8, label=name, log=True)
    for value, name, style in ((levels.bone, "bone", "-"), (levels.background, "background",
                                                            "--")):  # fmt: skip
        ax.axvline(value, color="k", linestyle=style, linewidth=1.2)
        ax.annotate(f"{name} {value:.6g}", (value, 1), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=8)  # fmt: skip
    ax.set_xlabel("grey value (3x3 median of the sampled planes)")
    ax.set_ylabel("pixels")
    ax.legend(fontsize=7, loc="upper right")


def _plane(ax, evidence) -> None:
    planes, roles = evidence.planes, evidence.roles
    mid = len(planes.z) // 2
    grey = np.where(planes.valid[mid], planes.values[mid], np.nan)
    finite = grey[np.isfinite(grey)]
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    ax.imshow(grey, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    overlay = np.zeros((*grey.shape, 4))
    for code, name in enumerate(LEVEL_ROLES):
        overlay[roles[mid] == code] = ROLE_COLOURS[name]
    ax.imshow(overlay, interpolation="nearest")
    ax.set_title(
        f"plane {planes.axis} = {planes.z[mid]} (every {planes.factor} px), classes by role",
        fontsize=9,
    )
    ax.set_axis_off()
