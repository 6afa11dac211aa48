"""Evaluation: the paper's metrics, tables and pictures, for any set of models.

- :mod:`~vstain_dask.evaluate._metrics`: SSIM, PSNR, LPIPS, patch sampling under the 50 % mask
  rule, masking to the mean background colour;
- :mod:`~vstain_dask.evaluate._run`: whole-slice inference of each pair as ``stain`` does it,
  the raw-CT baseline, :func:`evaluate_models`;
- :mod:`~vstain_dask.evaluate._report`: Markdown/CSV/JSON tables of medians, box plots and
  per-pair panels, :func:`run_evaluation`;
- :mod:`~vstain_dask.evaluate._seams`: stripes across slices and seams on the tile grid of a
  stained volume.

torch and lpips are imported only by the functions that need them.
"""

from __future__ import annotations

from vstain_dask.evaluate._metrics import (
    Metric,
    background_colour,
    image_metrics,
    load_lpips,
    lpips_distance,
    lpips_weights_path,
    mask_to_background,
    patch_coverage,
    patch_metrics,
    sample_patches,
)
from vstain_dask.evaluate._report import (
    REPORT_FILES,
    format_table,
    plot_boxplots,
    plot_pair_panel,
    run_evaluation,
    write_report,
    write_tables,
)
from vstain_dask.evaluate._run import (
    BASELINE,
    UNASSIGNED,
    CTLevelsMode,
    EvalConfig,
    EvaluationResult,
    PairImages,
    ct_baseline,
    evaluate_models,
    stain_slice,
)
from vstain_dask.evaluate._seams import SeamReport, compare_seams, format_seams, seam_metrics

__all__ = [
    "BASELINE",
    "UNASSIGNED",
    "REPORT_FILES",
    "Metric",
    "CTLevelsMode",
    "EvalConfig",
    "EvaluationResult",
    "PairImages",
    "SeamReport",
    "background_colour",
    "compare_seams",
    "ct_baseline",
    "evaluate_models",
    "format_seams",
    "format_table",
    "image_metrics",
    "load_lpips",
    "lpips_distance",
    "lpips_weights_path",
    "mask_to_background",
    "patch_coverage",
    "patch_metrics",
    "plot_boxplots",
    "plot_pair_panel",
    "run_evaluation",
    "sample_patches",
    "seam_metrics",
    "stain_slice",
    "write_report",
    "write_tables",
]
