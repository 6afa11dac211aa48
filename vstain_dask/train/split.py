"""Data splits: a held-out test set and cross-validation folds stratified by implant material.

Pairs cut from one sample always land in the same part (sections of one specimen are not
independent). Samples are stratified by material so that every part keeps roughly the data set's
mix (7 : 1 : 2 Mg : Ti : PEEK in the paper):

1. **Test set.** Pairs whose role is ``"test"`` are test pairs. When none has that role,
   ``round(test_fraction * samples)`` samples are drawn (seeded), shared out among the materials
   by largest remainder, never taking a material's last sample. The test set is kept out of
   every fold.
2. **Folds.** With ``folds = k > 1`` the other samples are shuffled per material (seeded) and
   dealt round-robin into ``k`` folds, one material after the other, continuing the deal, so
   folds differ in size by at most one sample and each material is spread evenly. Fold ``K``
   (0-based) is the validation set, the other folds train.
3. Without folds, pairs whose role is ``"val"`` validate and the rest train.

"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vstain_dask.errors import InputError

__all__ = ["Split", "make_split"]

_ORDER = ("mg", "ti", "peek")


@dataclasses.dataclass(frozen=True)
class Split:
    """Pair ids of the training, validation and test sets.

    Attributes
    ----------
    train, val, test : tuple of str
    folds : int
        Number of cross-validation folds (1: none).
    fold : int or None
        The fold validated on (0-based).
    seed : int
    test_fraction : float
    stratify : str
        ``"material"``.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    folds: int = 1
    fold: int | None = None
    seed: int = 0
    test_fraction: float = 0.0
    stratify: str = "material"

    def to_dict(self) -> dict[str, Any]:
        """Plain form, as stored in checkpoints."""
        d = dataclasses.asdict(self)
        for k in ("train", "val", "test"):
            d[k] = list(d[k])
        return d


def _largest_remainder(quotas: Mapping[str, float], total: int, caps: Mapping[str, int]) -> dict:
    counts = {m: min(int(math.floor(q)), caps[m]) for m, q in quotas.items()}
    order = sorted(quotas, key=lambda m: (-(quotas[m] - math.floor(quotas[m])), -quotas[m], m))
    left = total - sum(counts.values())
    while left > 0:
        progressed = False
        for m in order:
            if left and counts[m] < caps[m]:
                counts[m] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return counts


def _material_key(m: str) -> tuple[int, str]:
    return (_ORDER.index(m) if m in _ORDER else len(_ORDER), m)


def make_split(
    pairs: Sequence[Mapping[str, Any]],
    *,
    folds: int = 1,
    fold: int | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
) -> Split:
    """Split pairs into train, validation and test ids (see the module docstring).

    Parameters
    ----------
    pairs : sequence of mappings
        ``id``, ``material``, ``sample`` and ``role`` of each pair (as
        :func:`vstain_dask.pairs.list_pairs` returns them, or :class:`PairInfo`-like dicts).
    folds : int
        Cross-validation folds (1: none).
    fold : int or None
        The validation fold, 0-based; required when ``folds > 1``.
    test_fraction : float or None
        Fraction of samples held out for testing when no pair has the role ``"test"``.
        Default: 0.2 with folds, 0 without.
    seed : int

    Returns
    -------
    Split
    """
    test_fraction = _check_split(folds, fold, test_fraction)
    if not pairs:
        raise InputError("there are no pairs to split")
    samples, roles = _samples(pairs)
    test: set[str] = {pid for pid, r in roles.items() if r == "test"}
    by_material = _shuffled_by_material(samples, test, np.random.default_rng([int(seed), 11]))
    if not test and test_fraction > 0:
        test = _hold_out(samples, by_material, test_fraction)
    if folds > 1:
        train, val = _deal_folds(samples, by_material, folds, fold)
    else:
        left = {pid for keys in by_material.values() for key in keys for pid in samples[key]}
        val = {pid for pid in left if roles[pid] == "val"}
        train = left - val
    if not train:
        raise InputError("the split leaves no pairs to train on; add pairs or change the roles")
    return Split(
        train=tuple(sorted(train)),
        val=tuple(sorted(val)),
        test=tuple(sorted(test)),
        folds=folds,
        fold=fold if folds > 1 else None,
        seed=int(seed),
        test_fraction=float(test_fraction),
    )


def _check_split(folds: Any, fold: Any, test_fraction: float | None) -> float:
    """Check the split's settings; returns the test fraction (its default where None)."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise InputError(f"folds must be an integer >= 1, got {folds!r}")
    if folds > 1:
        if fold is None or isinstance(fold, bool) or not isinstance(fold, int):
            raise InputError(
                f"fold must be an integer in 0..{folds - 1} with folds={folds}, got {fold!r}"
            )
        if not 0 <= fold < folds:
            raise InputError(f"fold must be in 0..{folds - 1} (0-based), got {fold}")
    elif fold not in (None, 0):
        raise InputError(f"fold {fold} needs folds > 1 (--folds)")
    if test_fraction is None:
        test_fraction = 0.2 if folds > 1 else 0.0
    if not 0.0 <= float(test_fraction) < 1.0:
        raise InputError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    return test_fraction


def _samples(
    pairs: Sequence[Mapping[str, Any]],
) -> tuple[dict[tuple[str, str], list[str]], dict[str, str | None]]:
    """The pair ids of each sample, keyed by ``(material, sample)``, and each pair's role."""
    samples: dict[tuple[str, str], list[str]] = {}
    roles: dict[str, str | None] = {}
    for p in pairs:
        pid = str(p["id"])
        key = (str(p.get("material")), str(p.get("sample")))
        samples.setdefault(key, []).append(pid)
        roles[pid] = p.get("role")
    return samples, roles


def _shuffled_by_material(
    samples: Mapping[tuple[str, str], list[str]], test: set[str], rng: np.random.Generator
) -> dict[str, list[tuple[str, str]]]:
    """The samples with no test pair, by material (in the order of ``_ORDER``), each
    material's shuffled by ``rng``, independently of the others."""
    rest = {k: v for k, v in samples.items() if not set(v) & test}
    by_material: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(rest):
        by_material.setdefault(key[0], []).append(key)
    shuffled = {}
    for m in sorted(by_material, key=_material_key):
        keys = by_material[m]
        shuffled[m] = [keys[i] for i in rng.permutation(len(keys))]
    return shuffled


def _hold_out(
    samples: Mapping[tuple[str, str], list[str]],
    by_material: dict[str, list[tuple[str, str]]],
    test_fraction: float,
) -> set[str]:
    """The pairs of ``round(test_fraction * samples)`` samples, shared out among the
    materials by largest remainder (never a material's last sample) and taken off the front of
    ``by_material``."""
    n_samples = sum(len(v) for v in by_material.values())
    total = int(round(test_fraction * n_samples))
    quotas = {m: test_fraction * len(keys) for m, keys in by_material.items()}
    caps = {m: len(keys) - 1 for m, keys in by_material.items()}
    counts = _largest_remainder(quotas, total, caps)
    test: set[str] = set()
    for m in by_material:
        chosen, by_material[m] = by_material[m][: counts[m]], by_material[m][counts[m] :]
        for key in chosen:
            test.update(samples[key])
    return test


def _deal_folds(
    samples: Mapping[tuple[str, str], list[str]],
    by_material: Mapping[str, list[tuple[str, str]]],
    folds: int,
    fold: int,
) -> tuple[set[str], set[str]]:
    """``(train, val)`` pair ids: the samples dealt round-robin into ``folds`` folds, the
    largest material first; fold ``fold`` validates."""
    n_left = sum(len(v) for v in by_material.values())
    if n_left < folds:
        raise InputError(
            f"folds={folds} needs at least {folds} samples outside the test set, got {n_left}; "
            "use fewer folds or a smaller test_fraction"
        )
    assignment: dict[tuple[str, str], int] = {}
    deal = 0
    for m in sorted(by_material, key=lambda m: (-len(by_material[m]), _material_key(m))):
        for key in by_material[m]:
            assignment[key] = deal % folds
            deal += 1
    val = {pid for key, f in assignment.items() if f == fold for pid in samples[key]}
    train = {pid for key, f in assignment.items() if f != fold for pid in samples[key]}
    return train, val
