"""The evaluation report: tables (Markdown, CSV, JSON), box plots and per-pair panels.

Layout of a report folder::

    metrics.md     medians per model and split (the paper's Table 1), with the settings
    metrics.csv    the same numbers, one row per model and split, with quartiles
    metrics.json   settings, models, pairs, the table and per-pair medians
    patches.csv    every patch score (pair, model, split, position, coverage, SSIM, PSNR, LPIPS)
    boxplots.png   distributions per model and split (the paper's Fig. 7)
    panels/<pair>.png
                   CT, real histology and each model's output, with an ROI zoom, RGB histograms
                   and an intensity profile (the paper's Fig. 5)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask.errors import OutputExistsError
from vstain_dask.evaluate._metrics import Metric
from vstain_dask.evaluate._run import (
    BASELINE,
    EvalConfig,
    EvaluationResult,
    PairImages,
    evaluate_models,
)
from vstain_dask.runtime import resolve_device

__all__ = [
    "format_table",
    "write_tables",
    "plot_boxplots",
    "plot_pair_panel",
    "write_report",
    "run_evaluation",
    "REPORT_FILES",
]

#: files every report holds (panels go to ``panels/``)
REPORT_FILES = ("metrics.md", "metrics.csv", "metrics.json", "patches.csv", "boxplots.png")

_ARROW = {True: "↑", False: "↓"}
#: split colours in the box plots (colour-blind safe: Okabe-Ito)
_SPLIT_COLOURS = {"train": "#999999", "val": "#0072B2", "test": "#D55E00", "unassigned": "#009E73"}
#: line colours of the compared images in histograms and profiles
_IMAGE_COLOURS = ["#000000", "#7f7f7f", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00",
                  "#56B4E9", "#F0E442"]  # fmt: skip


def _fmt(v: float, metric: Metric) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if math.isinf(v):
        return "inf"
    return f"{v:.2f}" if metric is Metric.PSNR else f"{v:.3f}"


def format_table(result: EvaluationResult) -> str:
    """The table of medians as Markdown: one row per model and split, quartiles in brackets."""
    metrics = result.metrics
    head = ["Model", "Split", "Pairs", "Patches"] + [
        f"{m.label} {_ARROW[m.higher_is_better]}" for m in metrics
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|",
    ]
    for row in result.table():
        cells = [f"{row['model']}", row["split"], str(row["pairs"]), str(row["patches"])]
        for m in metrics:
            k = m.value
            cells.append(f"{_fmt(row[f'{k}_median'], m)} [{_fmt(row[f'{k}_q1'], m)}, "
                         f"{_fmt(row[f'{k}_q3'], m)}]")  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.generic):
        return _json_safe(v.item())
    return v


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        if not rows:
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(
                {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            )


def _settings_text(result: EvaluationResult) -> list[str]:
    c = result.config
    lines = [
        f"- Pairs store: `{result.source}`" + (f", split `{c.split.value}`" if c.split else ""),
        f"- Whole-slice inference: tiles {c.tile} px, step {c.step} px, {c.blend.value} blend; "
        "outside the correspondence mask, outputs and histology set to the histology's mean "
        "background colour",
        "- Histology: "
        + ("white-balanced and stretched as in training (the pair's recorded or estimated "
           "normalization)" if c.histology_normalization else "as stored")
        + "; CT: " + ("normalized to bone 30000 / background 10000 for models that expect it"
                      if c.ct_levels.value == "auto" else "raw"),
        f"- Metrics on up to {c.patches_per_pair} patches of {c.patch_size}×{c.patch_size} px per "
        f"pair (seed {c.seed}), patches covered < {c.min_coverage:.0%} by the mask skipped; "
        "values are medians [first quartile, third quartile] over all patches",
        "- SSIM: scikit-image, RGB (`channel_axis=-1`), data range 255; PSNR: 8-bit, dB; "
        + ("LPIPS: `lpips` package, SqueezeNet trunk" if c.lpips else "LPIPS: not measured"),
        f"- `{BASELINE}`: the CT slice as a greyscale RGB image, no generation"
        + (" (normalized to bone 30000 / background 10000, then ÷ 257)"
           if c.ct_levels.value == "auto" else " (raw values ÷ 257 for uint16)"),
    ]  # fmt: skip
    for m in result.models:
        lines.append(f"- `{m['name']}`: {m['variant']} model `{m['path']}` (sha256 "
                     f"{str(m['sha256'])[:12]}…)")  # fmt: skip
    skipped = [p for p in result.pairs if p.get("skipped")]
    if skipped:
        lines.append(
            "- Pairs without scores: " + "; ".join(f"`{p['id']}` ({p['skipped']})" for p in skipped)
        )
    return lines


def write_tables(result: EvaluationResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``metrics.md``, ``metrics.csv``, ``metrics.json`` and ``patches.csv``.

    Returns
    -------
    dict
        File kind -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = result.table()
    md = out / "metrics.md"
    md.write_text(
        "# Evaluation\n\n" + format_table(result) + "\n\n" + "\n".join(_settings_text(result))
        + "\n\nPer-patch scores: `patches.csv`; distributions: `boxplots.png`; "
        "per-pair panels: `panels/`.\n",
        encoding="utf-8",
    )  # fmt: skip
    _write_csv(out / "metrics.csv", table)
    _write_csv(out / "patches.csv", result.records)
    doc = {
        "source": result.source,
        "config": result.config.to_dict(),
        "metrics": [m.value for m in result.metrics],
        "models": result.models,
        "pairs": result.pairs,
        "table": table,
        "per_pair": result.per_pair(),
    }
    (out / "metrics.json").write_text(
        json.dumps(_json_safe(doc), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    return {"md": md, "csv": out / "metrics.csv", "json": out / "metrics.json",
            "patches": out / "patches.csv"}  # fmt: skip


# -- pictures ----------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_boxplots(result: EvaluationResult, out: str | os.PathLike) -> Path:
    """Box plots of the patch scores, one panel per metric, a box per model and split.

    Boxes span the quartiles with the median marked; whiskers reach 1.5 × IQR; points beyond
    are drawn. Like the paper's Fig. 7.
    """
    plt = _plt()
    metrics = result.metrics
    models = result.model_names
    splits = result.splits
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 1.1 * len(models) + 1.5) * len(metrics), 4.6),
                             squeeze=False)  # fmt: skip
    for ax, metric in zip(axes[0], metrics, strict=True):
        _metric_boxes(ax, result, metric)
    n = len({r["pair"] for r in result.records})
    fig.suptitle(
        f"{result.config.patch_size}×{result.config.patch_size} px patches from {n} pair"
        f"{'s' if n != 1 else ''} ({len(result.records)} patch scores)",
        fontsize=10,
    )
    if splits:
        axes[0][-1].legend(title="split", fontsize=8, title_fontsize=8, loc="best")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _metric_boxes(ax: Any, result: EvaluationResult, metric: Metric) -> None:
    """One metric's panel of the box plots: per model, a box for each split side by side."""
    models = result.model_names
    splits = result.splits
    width = 0.8 / max(1, len(splits))
    for j, split in enumerate(splits):
        data, pos = [], []
        for i, model in enumerate(models):
            v = result.values(model, split, metric)
            v = v[np.isfinite(v)]
            if v.size:
                data.append(v)
                pos.append(i + (j - (len(splits) - 1) / 2) * width)
        if not data:
            continue
        colour = _SPLIT_COLOURS.get(split, "#444444")
        ax.boxplot(
            data, positions=pos, widths=width * 0.85, patch_artist=True,
            boxprops={"facecolor": colour, "alpha": 0.35, "edgecolor": colour},
            medianprops={"color": colour, "linewidth": 2},
            whiskerprops={"color": colour}, capprops={"color": colour},
            flierprops={"marker": ".", "markersize": 3, "markeredgecolor": colour},
        )  # fmt: skip
        ax.plot([], [], color=colour, linewidth=6, alpha=0.5, label=split)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(
        models,
        rotation=20 if len(models) > 3 else 0,
        ha="right" if len(models) > 3 else "center",
    )
    ax.set_xlim(-0.6, len(models) - 0.4)
    if models and models[0] == BASELINE and len(models) > 1:
        ax.axvline(0.5, color="0.6", linestyle=":", linewidth=1)  # baseline | models
    better = "higher is better" if metric.higher_is_better else "lower is better"
    ax.set_title(f"{metric.label} ({better} {_ARROW[metric.higher_is_better]})")
    ax.grid(axis="y", alpha=0.3)
    if metric is Metric.SSIM:
        ax.set_ylabel("per-patch score")


def _roi(images: PairImages, side: int) -> tuple[int, int, int]:
    """(y0, x0, side) of the most structured window inside the mask (the histology's widest
    spread of brightness), preferring windows the mask covers fully."""
    h, w = images.mask.shape
    side = max(8, min(side, h, w))
    lum = images.histology.astype(np.float32).mean(axis=-1)
    stride = max(1, side // 4)
    windows = [
        (y, x) for y in range(0, h - side + 1, stride) for x in range(0, w - side + 1, stride)
    ]

    def spread(y: int, x: int) -> float:
        win = (slice(y, y + side), slice(x, x + side))
        return float(lum[win][images.mask[win]].std())

    cover = {(y, x): images.mask[y : y + side, x : x + side].mean() for y, x in windows}
    for need in (0.98, 0.9, 0.5):
        scored = [(spread(y, x), y, x) for y, x in windows if cover[(y, x)] >= need]
        if scored:
            _, y, x = max(scored)
            return y, x, side
    return max(0, (h - side) // 2), max(0, (w - side) // 2), side


def _luminance(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32).mean(axis=-1)


def _median(v: np.ndarray) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(np.median(v)) if v.size else math.nan


#: colours of the panel's overlays
_MASK_COLOUR, _ROI_COLOUR, _LINE_COLOUR, _PATCH_COLOUR = "#009E73", "#D55E00", "#56B4E9", "white"


def plot_pair_panel(images: PairImages, out: str | os.PathLike, *, roi: int | None = None) -> Path:
    """A side-by-side panel of one pair, like the paper's Fig. 5.

    Columns: CT, real histology, then each output (baseline and models), titled with their
    median scores on this pair. Rows: the whole slice (mask outlined, ROI boxed, profile line
    dashed; on the histology, the centres of the metric patches dotted), the ROI zoomed, the R, G, B
    histograms inside the mask (the real histology's dotted in the other columns), and below,
    the intensity profile (mean of R, G, B) along the line for all images.

    Parameters
    ----------
    images : PairImages
    out : path of the PNG
    roi : int, optional
        ROI side in pixels (default a third of the shorter side, at most 256).
    """
    plt = _plt()
    panel = _panel(images, roi)
    h, w = images.mask.shape
    cols = [("CT", None), ("histology (real)", images.histology)] + [
        (name, img) for name, img in images.outputs.items()
    ]
    ncol = len(cols)
    img_h = 2.9 * min(1.6, max(0.4, h / w))
    fig = plt.figure(figsize=(2.9 * ncol, img_h + 2.9 + 1.6 + 2.4 + 1.2))
    gs = fig.add_gridspec(4, ncol, height_ratios=[img_h, 2.9, 1.6, 2.4], hspace=0.42, wspace=0.08)
    ax_prof = fig.add_subplot(gs[3, :])
    for c, (name, img) in enumerate(cols):
        _draw_slice(fig.add_subplot(gs[0, c]), panel, c, img, _column_title(panel, name, img))
        _draw_zoom(fig.add_subplot(gs[1, c]), panel, c, img)
        _draw_histograms(fig.add_subplot(gs[2, c]), panel, c, img)
        _draw_profile(ax_prof, panel, c, name, img)
    _finish_profile(ax_prof, panel, ncol)
    ph, pw = images.patch_shape
    p = images.pair
    fig.suptitle(
        f"pair {p['id']} · {p.get('material', '?')} · sample {p.get('sample', '?')} · "
        f"{h}×{w} px · {len(images.positions)} metric patches of {ph}×{pw} px\n"
        "green: correspondence mask · white dots: centres of the metric patches · orange: ROI · "
        "blue dashed: profile line",
        fontsize=9,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


@dataclasses.dataclass(frozen=True)
class _Panel:
    """What the columns of a pair panel share: the CT and its display window (``lo``..``hi``),
    the ROI (top-left ``ry``, ``rx``, ``side``) and the profile line's row."""

    images: PairImages
    ct: np.ndarray
    lo: float
    hi: float
    ry: int
    rx: int
    side: int

    @property
    def line_y(self) -> int:
        return self.ry + self.side // 2

    def to_grey(self, v: np.ndarray) -> np.ndarray:
        """CT values through the display window to 0..255."""
        return np.clip((v - self.lo) / (self.hi - self.lo) * 255, 0, 255)


def _panel(images: PairImages, roi: int | None) -> _Panel:
    h, w = images.mask.shape
    side = roi or max(16, min(256, min(h, w) // 3))
    ry, rx, side = _roi(images, side)
    ct = images.ct.astype(np.float64)
    lo, hi = np.percentile(ct[images.mask] if images.mask.any() else ct, [0.5, 99.5])
    hi = hi if hi > lo else lo + 1
    return _Panel(images=images, ct=ct, lo=lo, hi=hi, ry=ry, rx=rx, side=side)


def _column_title(panel: _Panel, name: str, img: np.ndarray | None) -> str:
    """The name, with the median scores on this pair (the CT: its display window)."""
    images = panel.images
    if img is not None and name in images.metrics and len(images.positions):
        med = {k: _median(v) for k, v in images.metrics[name].items()}
        second = f"medians of {len(images.positions)} patches"
        if not math.isnan(med["lpips"]):
            second = f"LPIPS {med['lpips']:.3f} ({second})"
        return f"{name}\nSSIM {med['ssim']:.3f} · PSNR {med['psnr']:.1f} dB\n{second}"
    if img is None:
        return f"{name}\n(display window {panel.lo:.0f}–{panel.hi:.0f})"
    return name


def _draw_slice(ax: Any, panel: _Panel, c: int, img: np.ndarray | None, title: str) -> None:
    """The whole slice: mask outlined, ROI boxed, profile line dashed; on the histology
    (column 1) the centres of the metric patches."""
    from matplotlib.patches import Rectangle

    images = panel.images
    if img is None:
        ax.imshow(panel.ct, cmap="gray", vmin=panel.lo, vmax=panel.hi, interpolation="antialiased")
    else:
        ax.imshow(img, interpolation="antialiased")
    if images.mask.any() and not images.mask.all():
        ax.contour(images.mask, levels=[0.5], colors=_MASK_COLOUR, linewidths=1.0)
    if c == 1 and len(images.positions):
        centres = images.positions + np.array(images.patch_shape) / 2.0 - 0.5
        ax.scatter(centres[:, 1], centres[:, 0], s=9, c=_PATCH_COLOUR, edgecolors="black",
                   linewidths=0.5, zorder=3)  # fmt: skip
    ax.add_patch(Rectangle((panel.rx - 0.5, panel.ry - 0.5), panel.side, panel.side, fill=False,
                           edgecolor=_ROI_COLOUR, linewidth=1.6))  # fmt: skip
    ax.axhline(panel.line_y, color=_LINE_COLOUR, linestyle="--", linewidth=1)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_zoom(az: Any, panel: _Panel, c: int, img: np.ndarray | None) -> None:
    """The ROI, enlarged, framed in the ROI's colour."""
    sl = (slice(panel.ry, panel.ry + panel.side), slice(panel.rx, panel.rx + panel.side))
    if img is None:
        az.imshow(panel.ct[sl], cmap="gray", vmin=panel.lo, vmax=panel.hi, interpolation="nearest")
    else:
        az.imshow(img[sl], interpolation="nearest")
    az.axhline(panel.line_y - panel.ry, color=_LINE_COLOUR, linestyle="--", linewidth=1)
    for spine in az.spines.values():
        spine.set_edgecolor(_ROI_COLOUR)
        spine.set_linewidth(1.6)
    az.set_xticks([])
    az.set_yticks([])
    if c == 0:
        az.set_ylabel(f"ROI zoom, {panel.side}×{panel.side} px", fontsize=8)


def _draw_histograms(ah: Any, panel: _Panel, c: int, img: np.ndarray | None) -> None:
    """Histograms inside the mask: the CT's grey, or R, G, B (from column 2 on, with the real
    histology's dotted)."""
    mask = panel.images.mask
    bins = np.arange(0, 257, 4)
    if img is None:
        vals = panel.to_grey(panel.ct[mask])
        ah.hist(vals, bins=bins, color="0.3", histtype="stepfilled", alpha=0.6)
        ah.set_title("CT grey in mask (window)", fontsize=8)
        shown = [vals]
    else:
        for ch, colour in enumerate(("#d62728", "#2ca02c", "#1f77b4")):
            sel = img[..., ch][mask]
            ah.hist(sel, bins=bins, color=colour, histtype="step", linewidth=1.2)
            if c > 1:
                ah.hist(panel.images.histology[..., ch][mask], bins=bins, color=colour,
                        histtype="step", linewidth=0.8, linestyle=":")  # fmt: skip
        ah.set_title("R, G, B in mask" + (" (dotted: real)" if c > 1 else ""), fontsize=8)
        shown = [img[..., ch][mask] for ch in range(3)]
    # spikes at 0 and 255 (an opaque implant, white slide) would flatten the rest: scale to
    # the interior bins and let the end bins run off the top
    top = max(float(np.histogram(v, bins=bins)[0][1:-1].max()) for v in shown)
    if top > 0:
        ah.set_ylim(0, top * 1.15)
    ah.set_xlim(0, 255)
    ah.set_xticks([0, 128, 255])
    ah.tick_params(labelsize=7)
    ah.set_yticks([])


def _draw_profile(ax_prof: Any, panel: _Panel, c: int, name: str, img: np.ndarray | None) -> None:
    """One image's intensity (mean of R, G, B; the CT through its window) along the line."""
    xs = np.arange(panel.images.mask.shape[1])
    colour = _IMAGE_COLOURS[c % len(_IMAGE_COLOURS)]
    if img is None:
        prof = panel.to_grey(panel.ct[panel.line_y])
        ax_prof.plot(xs, prof, color=colour, linewidth=0.8, alpha=0.5,
                     label="CT (display window)")  # fmt: skip
    else:
        prof = _luminance(img)[panel.line_y]
        ax_prof.plot(xs, prof, color=colour, linewidth=2.2 if c == 1 else 1.2, label=name)


def _finish_profile(ax_prof: Any, panel: _Panel, ncol: int) -> None:
    """The profile's background (outside the mask, the ROI), axes and legend."""
    w = panel.images.mask.shape[1]
    xs = np.arange(w)
    line_y = panel.line_y
    outside = ~panel.images.mask[line_y]
    if outside.any():
        ax_prof.fill_between(xs, 0, 255, where=outside, color="0.92", step="mid",
                             label="outside mask")  # fmt: skip
    ax_prof.axvspan(panel.rx - 0.5, panel.rx + panel.side - 0.5, color=_ROI_COLOUR, alpha=0.08,
                    label="ROI")  # fmt: skip
    ax_prof.set_xlim(0, w - 1)
    ax_prof.set_ylim(0, 255)
    ax_prof.set_xlabel(f"x (pixels) along the dashed line, row y = {line_y}")
    ax_prof.set_ylabel("mean of R, G, B")
    ax_prof.set_title("Intensity profile", fontsize=9)
    ax_prof.legend(fontsize=7, ncol=min(ncol + 2, 7), loc="upper center",
                   bbox_to_anchor=(0.5, -0.3), frameon=False)  # fmt: skip
    ax_prof.grid(alpha=0.3)


def write_report(result: EvaluationResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the tables and the box plots of an evaluation into ``out_dir``."""
    files = write_tables(result, out_dir)
    files["boxplots"] = plot_boxplots(result, Path(out_dir) / "boxplots.png")
    return files


def _prepare(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise OutputExistsError(
                f"report folder {out_dir} exists and is not empty; use --overwrite "
                "(overwrite=True) to replace it or choose another -o"
            )
        if out_dir.is_dir():
            shutil.rmtree(out_dir)
        else:
            out_dir.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def run_evaluation(
    pairs: str | os.PathLike,
    models: Any = None,
    out_dir: str | os.PathLike = "evaluation",
    *,
    config: EvalConfig | None = None,
    panels: bool = True,
    overwrite: bool = False,
    lpips_model: Any | None = None,
    progress: bool = True,
) -> tuple[EvaluationResult, dict[str, Path]]:
    """Evaluate models on a pairs store and write the whole report: what ``vstain-dask evaluate``
    runs.

    Parameters
    ----------
    pairs : path
        Pairs store.
    models : see :func:`evaluate_models`
    out_dir : path
        Report folder (created; must be empty or absent unless ``overwrite``).
    config : EvalConfig
    panels : bool
        Draw a panel per pair (``panels/<pair>.png``).
    overwrite : bool
        Replace an existing report folder.
    lpips_model, progress : see :func:`evaluate_models`

    Returns
    -------
    (EvaluationResult, dict of written files)
    """
    config = config or EvalConfig()
    out = Path(out_dir)
    if config.lpips and lpips_model is None:
        from vstain_dask.evaluate._metrics import load_lpips

        # before touching the output, so a missing download fails first
        lpips_model = load_lpips(device=resolve_device(config.device))
    _prepare(out, overwrite)  # refuses (or clears) before any work is done
    panel_files: list[Path] = []

    def on_pair(images: PairImages) -> None:
        panel_files.append(plot_pair_panel(images, out / "panels" / f"{images.pair['id']}.png"))

    result = evaluate_models(
        pairs, models, config=config, lpips_model=lpips_model,
        on_pair=on_pair if panels else None, progress=progress,
    )  # fmt: skip
    files = write_report(result, out)
    if panel_files:
        files["panels"] = out / "panels"
    return result, files
