"""Evaluating models on the pairs store: whole-slice inference, masking, patch metrics.

For each pair (optionally only those in one split), every model stains the whole CT slice with
overlapping tiles exactly as ``vstain-dask stain`` does (one-slice :func:`~vstain_dask.stain.
stain_block`: tile 256, step 64, mean blend by default); outside the correspondence mask the
stain and the real histology are set to the histology's mean background colour; then SSIM,
PSNR and LPIPS are measured on 256 × 256 patches drawn from the slice, skipping patches that the
mask covers less than half. The same patches are used for every model of a pair, and for the
raw-CT baseline (the greyscale CT slice shown as RGB, no generation), as the paper reports.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask._validate import check_float, check_int, check_int_fields, int_field
from vstain_dask.errors import InputError, as_enum
from vstain_dask.evaluate._metrics import (
    Metric,
    background_colour,
    load_lpips,
    mask_to_background,
    patch_coverage,
    patch_metrics,
    sample_patches,
)
from vstain_dask.pairs import Role, list_pairs, read_pair
from vstain_dask.runtime import resolve_device
from vstain_dask.tiling import BlendMode, Tiling

__all__ = [
    "BASELINE",
    "UNASSIGNED",
    "CTLevelsMode",
    "EvalConfig",
    "EvaluationResult",
    "PairImages",
    "ct_baseline",
    "stain_slice",
    "evaluate_models",
]

#: name of the raw-CT baseline in tables and plots
BASELINE = "raw CT"
#: split label of pairs that neither the store nor a model assigns to a split
UNASSIGNED = "unassigned"
#: smallest patch side: SSIM's 7 x 7 window
_MIN_SIDE = 7
_SPLIT_ORDER = (Role.TRAIN.value, Role.VAL.value, Role.TEST.value, UNASSIGNED)
#: tile, step and blend of the whole-slice inference when not given: the paper's, as stain's
_TILING = Tiling()


class CTLevelsMode(enum.StrEnum):
    """How the CT of a pair is normalized before a model sees it.

    ``auto``
        Models that expect normalized CT (``InputNormalization.ct_normalized``) get the slice
        scaled so that bone and background means become 30000 and 10000, with the levels that
        training uses: those recorded in the pair's ``normalization`` attribute (as
        ``vstain-dask pairs add`` writes it) or, without one, estimated from the slice
        (:func:`vstain_dask.train.prepare.pair_levels`).
    ``none``
        The raw slice is used as it is.
    """

    AUTO = "auto"
    NONE = "none"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Parameters of an evaluation; written into the report.

    Parameters
    ----------
    patch_size : int
        Side of the metric patches, pixels (paper: 256). Clipped to slices smaller than that.
    patches_per_pair : int
        Patches drawn per pair.
    min_coverage : float
        Patches covered by the correspondence mask on less than this fraction are skipped
        (paper: 0.5).
    seed : int
        Seeds the patch positions (each pair draws from ``(seed, pair id)``).
    tile, step : int
        Tiles of the whole-slice inference, pixels (paper: 256 and 64).
    blend : BlendMode
        Blend of overlapping tiles (paper: mean). The three are checked, and have their
        defaults, as :class:`~vstain_dask.tiling.Tiling` (:attr:`tiling`).
    batch_size : int
        Tiles per model call.
    split : Role or None
        Evaluate only pairs in this split (``train``, ``val``, ``test``); None: all pairs.
    lpips : bool
        Measure LPIPS (needs torchvision's ImageNet SqueezeNet weights).
    baseline : bool
        Also score the raw CT slice against the histology.
    ct_levels : CTLevelsMode
        How pair CT is normalized for models that expect normalized CT.
    histology_normalization : bool
        Compare with the histology white-balanced and stretched as training sees it (the
        paper's normalization, recorded in the pair or estimated); False: as stored.
    device : str or None
        Torch device for the models and LPIPS; None: CUDA when present, else CPU.
    autocast : bool or None
        bf16 autocast of the generators; None: on for CUDA, off on CPU (as stain).
    """

    patch_size: int = int_field(256, _MIN_SIDE)
    patches_per_pair: int = int_field(50, 1)
    min_coverage: float = 0.5
    seed: int = 0
    tile: int = _TILING.tile
    step: int = _TILING.step
    blend: BlendMode = _TILING.blend
    batch_size: int = int_field(8, 1)
    split: Role | None = None
    lpips: bool = True
    baseline: bool = True
    ct_levels: CTLevelsMode = CTLevelsMode.AUTO
    histology_normalization: bool = True
    device: str | None = None
    autocast: bool | None = None

    def __post_init__(self) -> None:
        check_int_fields(self)
        tiling = Tiling(tile=self.tile, step=self.step, blend=self.blend)
        for name in ("tile", "step", "blend"):
            object.__setattr__(self, name, getattr(tiling, name))
        coverage = check_float(self.min_coverage, "min_coverage", minimum=0, maximum=1)
        object.__setattr__(self, "min_coverage", coverage)
        object.__setattr__(self, "seed", check_int(self.seed, "seed"))
        object.__setattr__(self, "ct_levels", as_enum(CTLevelsMode, self.ct_levels, "ct_levels"))
        object.__setattr__(self, "split", as_enum(Role, self.split, "split", allow_none=True))

    @property
    def tiling(self) -> Tiling:
        """Tile, step and blend of the whole-slice inference as one
        :class:`~vstain_dask.tiling.Tiling`."""
        return Tiling(tile=self.tile, step=self.step, blend=self.blend)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form for the JSON report."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, enum.Enum):
                d[k] = v.value
        return d


# -- the images compared -----------------------------------------------------------------------


def _levels_tuple(levels: Any) -> tuple[float, float] | None:
    if levels is None:
        return None
    if hasattr(levels, "bone"):
        return (float(levels.bone), float(levels.background))
    if isinstance(levels, Mapping):
        return (float(levels["bone"]), float(levels["background"]))
    bone, background = levels
    return (float(bone), float(background))


def stain_slice(
    ct: Any,
    model: Any,
    *,
    levels: Any = None,
    tile: int = _TILING.tile,
    step: int = _TILING.step,
    blend: BlendMode | str = _TILING.blend,
    batch_size: int = 8,
    autocast: bool | None = None,
) -> np.ndarray:
    """Stain one whole CT slice with overlapping tiles, exactly as ``stain`` stains a plane.

    Parameters
    ----------
    ct : (Y, X) array
        Raw CT values.
    model : StainModel
        A loaded model (:func:`vstain_dask.models.load_model`).
    levels : (bone, background), CTLevels or None
        Raw CT means mapped to 30000 and 10000 before the model's own input mapping; None uses
        the slice as it is.
    tile, step : int
        Tile size and step in pixels (paper: 256 and 64).
    blend : BlendMode
    batch_size : int
    autocast : bool or None

    Returns
    -------
    (Y, X, 3) uint8
        R, G, B.
    """
    from vstain_dask.stain import StainConfig, stain_block

    a = np.asarray(ct)
    if a.ndim != 2:
        raise InputError(f"ct must be a 2D (Y, X) slice, got shape {a.shape}")
    config = StainConfig(
        axes="z", tile=tile, step=step, blend=blend, batch_size=batch_size,
        ct_levels=_levels_tuple(levels), autocast=autocast,
    )  # fmt: skip
    box = ((0, 1), (0, a.shape[0]), (0, a.shape[1]))
    rgb, _ = stain_block(
        a[None], raw_box=box, tile_box=box, vol_shape=(1, *a.shape), box=box, model=model,
        config=config,
    )  # fmt: skip
    return np.ascontiguousarray(np.moveaxis(rgb[:3, 0], 0, -1))


def ct_baseline(ct: Any, *, levels: Any = None) -> np.ndarray:
    """The raw-CT baseline: the CT slice as a greyscale RGB image, no generation.

    Parameters
    ----------
    ct : (Y, X) array
        Raw CT values.
    levels : (bone, background), CTLevels or None
        When given, the slice is first normalized as the models see it (bone mean 30000,
        background 10000, clipped to uint16), then mapped to 8 bits as ``v / 257``. Without
        levels, integer slices are mapped from their dtype's range (uint16 ``/ 257``, uint8 as
        is) and float slices from their own minimum and maximum.

    Returns
    -------
    (Y, X, 3) uint8, R = G = B
    """
    a = np.asarray(ct)
    if a.ndim != 2:
        raise InputError(f"ct must be a 2D (Y, X) slice, got shape {a.shape}")
    lv = _levels_tuple(levels)
    if lv is not None:
        from vstain_dask import intensity

        grey = intensity.ct_to_paper_units(a, *lv, dtype=np.float64) / 257.0
    elif a.dtype.kind in "iu":
        info = np.iinfo(a.dtype)
        grey = (a.astype(np.float64) - info.min) * (255.0 / (float(info.max) - info.min))
    else:
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        grey = (a.astype(np.float64) - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
    g = np.clip(np.rint(np.nan_to_num(grey)), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


# -- models ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Model:
    name: str
    model: Any  # StainModel
    split: dict[str, str]  # pair id -> role, from the model's recorded data split

    def info(self) -> dict[str, Any]:
        m = self.model
        return {
            "name": self.name,
            "path": str(m.path) if getattr(m, "path", None) else None,
            "sha256": getattr(m, "sha256", None),
            "variant": getattr(getattr(m, "variant", None), "value", None),
        }


def _recorded_split(card: Mapping[str, Any]) -> dict[str, str]:
    split = card.get("split") if isinstance(card, Mapping) else None
    out: dict[str, str] = {}
    if isinstance(split, Mapping):
        for role in Role:
            ids = split.get(role.value)
            if isinstance(ids, list | tuple):
                for pid in ids:
                    out[str(pid)] = role.value
    return out


def _model_names(paths: Sequence[Path]) -> list[str]:
    """File stems; stems that clash get their folder's name, then a number."""
    stems = [p.stem for p in paths]
    names = [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 and p.parent.name else p.stem
             for p in paths]  # fmt: skip
    count: dict[str, int] = {}
    out = []
    for n in names:
        if names.count(n) > 1:
            count[n] = count.get(n, 0) + 1
            n = f"{n} ({count[n]})"
        out.append(n)
    return out


def _load_models(models: Any, device: str) -> list[_Model]:
    from vstain_dask.models import StainModel, load_model

    if models is None:
        return []
    if isinstance(models, str | os.PathLike | StainModel):
        models = [models]
    if isinstance(models, Mapping):
        items = [(str(k), v) for k, v in models.items()]
    else:
        items = list(models)
        paths = [
            Path(m)
            if isinstance(m, str | os.PathLike)
            else Path(str(getattr(m, "path", None) or f"model{i}"))
            for i, m in enumerate(items)
        ]
        items = list(zip(_model_names(paths), items, strict=True))
    out = []
    for name, m in items:
        if name == BASELINE:
            raise InputError(f"a model must not be named {BASELINE!r} (the baseline's name)")
        if isinstance(m, str | os.PathLike):
            loaded = load_model(m, device=device)
        elif isinstance(m, StainModel):
            loaded = m
        else:
            raise InputError(
                f"models must be checkpoint paths or loaded StainModels, got {type(m).__name__}"
            )
        out.append(_Model(name=name, model=loaded, split=_recorded_split(loaded.card)))
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"model names must be unique, got {', '.join(dup)} more than once")
    return out


# -- the evaluation ------------------------------------------------------------------------------


@dataclasses.dataclass
class PairImages:
    """The images of one evaluated pair (for panels), all (Y, X, 3) uint8 except ``ct``.

    Attributes
    ----------
    pair : dict
        The pair's id and attributes (from :func:`vstain_dask.pairs.list_pairs`).
    ct : (Y, X) raw CT
    histology : real histology, masked (outside the mask: ``colour``)
    mask : (Y, X) bool
    outputs : dict name -> image
        Masked model outputs and, when asked, the baseline under :data:`BASELINE`.
    positions : (k, 2) int
        Metric patches (top-left corners).
    patch_shape : (h, w)
    colour : (3,) float
        Fill colour outside the mask.
    metrics : dict name -> dict metric -> (k,) float
    """

    pair: dict[str, Any]
    ct: np.ndarray
    histology: np.ndarray
    mask: np.ndarray
    outputs: dict[str, np.ndarray]
    positions: np.ndarray
    patch_shape: tuple[int, int]
    colour: np.ndarray
    metrics: dict[str, dict[str, np.ndarray]]


@dataclasses.dataclass
class EvaluationResult:
    """What an evaluation measured.

    Attributes
    ----------
    records : list of dict
        One per (pair, model, split, patch): ``pair``, ``material``, ``sample``, ``split``,
        ``model``, ``patch``, ``y0``, ``x0``, ``height``, ``width``, ``coverage``, ``ssim``,
        ``psnr`` (dB), ``lpips`` (NaN when not measured).
    models : list of dict
        ``name``, ``path``, ``sha256``, ``variant`` of each model, in the order given.
    pairs : list of dict
        ``id``, ``material``, ``sample``, ``splits`` (where it was evaluated), ``patches`` and,
        for pairs without any patch, ``skipped`` (why).
    config : EvalConfig
    source : str
        The pairs store.
    """

    records: list[dict[str, Any]]
    models: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    config: EvalConfig
    source: str

    @property
    def model_names(self) -> list[str]:
        """Baseline first (when measured), then the models in the order given."""
        names = [m["name"] for m in self.models]
        if any(r["model"] == BASELINE for r in self.records):
            names = [BASELINE, *names]
        return names

    @property
    def splits(self) -> list[str]:
        present = {r["split"] for r in self.records}
        return [s for s in _SPLIT_ORDER if s in present]

    @property
    def metrics(self) -> list[Metric]:
        """Metrics measured (LPIPS only when it was)."""
        out = [Metric.SSIM, Metric.PSNR]
        if self.config.lpips:
            out.append(Metric.LPIPS)
        return out

    def values(self, model: str, split: str, metric: Metric | str) -> np.ndarray:
        """Patch values of one model in one split."""
        key = as_enum(Metric, metric, "metric").value
        return np.array(
            [r[key] for r in self.records if r["model"] == model and r["split"] == split],
            dtype=np.float64,
        )

    def table(self) -> list[dict[str, Any]]:
        """Medians (and quartiles) per model and split, like the paper's Table 1.

        Returns
        -------
        list of dict
            ``model``, ``split``, ``pairs``, ``patches`` and, per metric ``m``,
            ``m_median``, ``m_q1``, ``m_q3``; baseline rows first.
        """
        rows = []
        for split in self.splits:
            for model in self.model_names:
                sel = [r for r in self.records if r["model"] == model and r["split"] == split]
                if not sel:
                    continue
                row: dict[str, Any] = {
                    "model": model,
                    "split": split,
                    "pairs": len({r["pair"] for r in sel}),
                    "patches": len(sel),
                }
                for m in self.metrics:
                    v = np.array([r[m.value] for r in sel], dtype=np.float64)
                    q1, med, q3 = _quantiles(v)
                    row[f"{m.value}_median"] = med
                    row[f"{m.value}_q1"] = q1
                    row[f"{m.value}_q3"] = q3
                rows.append(row)
        return rows

    def per_pair(self) -> list[dict[str, Any]]:
        """Medians per pair, model and split."""
        rows = []
        keys: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for r in self.records:
            keys.setdefault((r["pair"], r["split"], r["model"]), []).append(r)
        order = {n: i for i, n in enumerate(self.model_names)}
        for (pair, split, model), sel in sorted(
            keys.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 0))
        ):
            row = {"pair": pair, "material": sel[0]["material"], "split": split, "model": model,
                   "patches": len(sel)}  # fmt: skip
            for m in self.metrics:
                row[f"{m.value}_median"] = _quantiles(
                    np.array([r[m.value] for r in sel], dtype=np.float64)
                )[1]
            rows.append(row)
        return rows


def _quantiles(v: np.ndarray) -> tuple[float, float, float]:
    v = v[~np.isnan(v)]
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    # numpy's default (linear) quantiles, as the box plots draw them; with an infinite PSNR (a
    # patch identical to its reference) "nearest" keeps inf out of the interpolation
    method = "linear" if np.isfinite(v).all() else "nearest"
    q1, med, q3 = (float(np.quantile(v, q, method=method)) for q in (0.25, 0.5, 0.75))
    return q1, med, q3


def _roles(pair: Mapping[str, Any], models: list[_Model]) -> dict[str | None, str]:
    """model name (None: the baseline) -> split label of this pair."""
    own = pair.get("role") or None
    out: dict[str | None, str] = {}
    for m in models:
        out[m.name] = m.split.get(pair["id"]) or own or UNASSIGNED
    return out


def evaluate_models(
    pairs: str | os.PathLike,
    models: Any = None,
    *,
    config: EvalConfig | None = None,
    lpips_model: Any | None = None,
    on_pair: Callable[[PairImages], None] | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Score models (and the raw-CT baseline) on the pairs of a pairs store.

    Parameters
    ----------
    pairs : path
        A pairs store (:mod:`vstain_dask.pairs`).
    models : path, StainModel, a sequence of them, or a mapping name -> either
        Checkpoints to compare; names default to the file stems. None (or empty): only the
        baseline.
    config : EvalConfig
    lpips_model : lpips.LPIPS, optional
        Used instead of :func:`~vstain_dask.evaluate.load_lpips` (when ``config.lpips``).
    on_pair : callable, optional
        Called with each pair's :class:`PairImages` once it is scored (e.g. to draw a panel);
        the images are not kept otherwise, so memory stays at one pair.
    progress : bool
        Show a progress bar over the pairs (stderr).

    Returns
    -------
    EvaluationResult

    Notes
    -----
    A pair's split, per model, is the one the model's checkpoint records for it (its data
    split), else the pair's own ``role``, else ``unassigned``. The baseline is reported in every
    split in which some model scores the pair (or the pair's own role when there are no
    models). With ``config.split``, only (pair, model) combinations in that split are scored.
    """
    config = config or EvalConfig()
    entries = _entries(pairs, models, config)
    device = str(resolve_device(config.device))
    loaded = _load_models(models, device)
    plan = _plan(pairs, entries, loaded, config)
    if config.lpips and lpips_model is None:
        lpips_model = load_lpips(device=device)
    lp = lpips_model if config.lpips else None
    records, pair_info = _score(pairs, plan, loaded, config, lp, on_pair, progress)
    return EvaluationResult(
        records=records,
        models=[m.info() for m in loaded],
        pairs=pair_info,
        config=config,
        source=str(pairs),
    )


def _entries(pairs: str | os.PathLike, models: Any, config: EvalConfig) -> list[dict[str, Any]]:
    """The pairs of the store; refuses an evaluation without anything to score."""
    if not config.baseline and not models:
        raise InputError("nothing to evaluate: give at least one model, or keep the baseline on")
    entries = list_pairs(pairs)
    if not entries:
        raise InputError(
            f"the pairs store {pairs} holds no pairs; add some with `vstain-dask pairs add`"
        )
    return entries


def _plan(
    pairs: str | os.PathLike,
    entries: list[dict[str, Any]],
    loaded: list[_Model],
    config: EvalConfig,
) -> list[tuple[dict[str, Any], dict[str | None, str], list[str]]]:
    """(pair, model name -> split, the pair's splits) of each pair to score; refuses a
    ``config.split`` that leaves none."""
    plan = []
    for entry in entries:
        roles = _roles(entry, loaded)
        if loaded:
            splits = sorted(set(roles.values()), key=_SPLIT_ORDER.index)
        else:
            splits = [entry.get("role") or UNASSIGNED]
        if config.split is not None:
            splits = [s for s in splits if s == config.split.value]
            roles = {k: v for k, v in roles.items() if v == config.split.value}
        if splits:
            plan.append((entry, roles, splits))
    if not plan:
        present = sorted({s for e in entries for s in _roles(e, loaded).values()} |
                         {e.get("role") or UNASSIGNED for e in entries}, key=_SPLIT_ORDER.index)  # fmt: skip
        raise InputError(
            f"no pairs in split {config.split.value!r} in {pairs} (splits present: "
            f"{', '.join(present)}); choose another --split (split=) or assign roles to the "
            "pairs"
        )
    return plan


def _score(
    store, plan, loaded: list[_Model], config: EvalConfig, lp: Any, on_pair, progress: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The patch records and the pair summaries of each pair of the ``plan``, in order."""
    records: list[dict[str, Any]] = []
    pair_info: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), unit="pair", desc="evaluate")
    try:
        for entry, roles, splits in plan:
            images = _evaluate_pair(store, entry, roles, loaded, config, lp)
            pair_info.append({
                "id": entry["id"], "material": entry.get("material"), "sample": entry.get("sample"),
                "splits": splits, "patches": int(len(images.positions)),
                **({} if len(images.positions) else {"skipped": _why_skipped(images, config)}),
            })  # fmt: skip
            records += _records(entry, images, roles, splits, config)
            if on_pair is not None:
                on_pair(images)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return records, pair_info


def _evaluate_pair(store, entry, roles, loaded, config, lp) -> PairImages:
    pid = entry["id"]
    data = read_pair(store, pid)
    ct = np.asarray(data["ct"][...])
    hist = raw_hist = np.asarray(data["histology"][...])
    mask = np.asarray(data["mask"][...], dtype=bool)
    cached: list[Any] = []

    def pair_levels() -> Any:
        # the normalization training uses for this pair: recorded, else estimated (once)
        from vstain_dask.train.prepare import pair_levels as _levels

        if not cached:
            cached.append(_levels(ct, raw_hist, attrs=data["attrs"], material=entry.get("material"),
                                  histology_normalization=config.histology_normalization))  # fmt: skip
        return cached[0]

    def levels() -> tuple[float, float] | None:
        if config.ct_levels is CTLevelsMode.NONE:
            return None
        lv = pair_levels().ct
        return (float(lv.bone), float(lv.background))

    if config.histology_normalization and pair_levels().histology is not None:
        from vstain_dask.preprocess import normalize_histology

        hist = normalize_histology(hist, levels=pair_levels().histology)
    colour = background_colour(hist, mask)
    real = mask_to_background(hist, mask, colour)
    positions = sample_patches(
        mask, size=config.patch_size, n=config.patches_per_pair,
        min_coverage=config.min_coverage, seed=(config.seed, pid),
    )  # fmt: skip
    ph, pw = min(config.patch_size, ct.shape[0]), min(config.patch_size, ct.shape[1])
    if min(ph, pw) < _MIN_SIDE:
        positions = positions[:0]  # SSIM's 7x7 window does not fit

    outputs: dict[str, np.ndarray] = {}
    if config.baseline:
        outputs[BASELINE] = mask_to_background(ct_baseline(ct, levels=levels()), mask, colour)
    for m in loaded:
        if m.name not in roles:
            continue
        lv = levels() if m.model.normalization.ct_normalized else None
        rgb = stain_slice(
            ct, m.model, levels=lv, tile=config.tile, step=config.step, blend=config.blend,
            batch_size=config.batch_size, autocast=config.autocast,
        )  # fmt: skip
        outputs[m.name] = mask_to_background(rgb, mask, colour)
    metrics = {
        name: patch_metrics(real, img, positions, size=config.patch_size, lpips_model=lp)
        for name, img in outputs.items()
    }
    return PairImages(
        pair=dict(entry), ct=ct, histology=real, mask=mask, outputs=outputs, positions=positions,
        patch_shape=(ph, pw), colour=colour, metrics=metrics,
    )  # fmt: skip


def _why_skipped(images: PairImages, config: EvalConfig) -> str:
    ph, pw = images.patch_shape
    if min(ph, pw) < _MIN_SIDE:
        return f"the slice is smaller than SSIM's {_MIN_SIDE}x{_MIN_SIDE} window"
    return f"no {ph}x{pw} patch is covered >= {config.min_coverage:.0%} by the mask"


def _records(entry, images: PairImages, roles, splits, config) -> list[dict[str, Any]]:
    if not len(images.positions):
        return []
    cov = patch_coverage(images.mask, images.positions, size=config.patch_size)
    out = []
    for name, vals in images.metrics.items():
        model_splits = splits if name == BASELINE else [roles[name]]
        for split in model_splits:
            for k, (y0, x0) in enumerate(images.positions.tolist()):
                out.append({
                    "pair": entry["id"], "material": entry.get("material"),
                    "sample": entry.get("sample"), "split": split, "model": name, "patch": k,
                    "y0": y0, "x0": x0, "height": images.patch_shape[0],
                    "width": images.patch_shape[1], "coverage": float(cov[k]),
                    **{m.value: float(vals[m.value][k]) for m in Metric},
                })  # fmt: skip
    return out
