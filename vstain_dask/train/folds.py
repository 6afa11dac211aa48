"""Cross-validation folds trained in parallel on a dask cluster (:func:`train_folds`).

The split itself (the test set and the stratified folds) is made by
:func:`~vstain_dask.train.split.make_split`, which the trainer uses too.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vstain_dask.errors import InputError

__all__ = ["FoldCallbacks", "train_folds"]


@dataclasses.dataclass(frozen=True)
class FoldCallbacks:
    """What :func:`train_folds` calls as the folds train.

    Attributes
    ----------
    on_start : callable, optional
        Called with the ``distributed.Client`` once workers are up.
    on_done : callable, optional
        Called with each :class:`~vstain_dask.train.config.TrainResult` as its fold finishes.
    """

    on_start: Callable[[Any], None] | None = None
    on_done: Callable[[Any], None] | None = None


def _train_fold(
    pairs: str,
    out_dir: str,
    config: dict[str, Any],
    command: str | None,
    resume: bool,
    overwrite: bool,
) -> Any:
    """One fold, inside a dask worker process."""
    import torch

    threads = os.environ.get("VSTAIN_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    from vstain_dask.train.trainer import Provenance, TrainConfig, train

    return train(
        pairs,
        out_dir,
        TrainConfig.from_dict(config),
        progress=False,
        provenance=Provenance(command=command),
        resume=resume,
        overwrite=overwrite,
    )


def train_folds(
    pairs: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: Any,
    *,
    cluster: Any = None,
    overwrite: bool = False,
    resume: bool = False,
    command: str | None = None,
    callbacks: FoldCallbacks | None = None,
) -> list[Any]:
    """Train every fold of a cross-validation in parallel on a dask cluster, one fold per task.

    Fold ``K`` is written to ``out_dir / f"fold{K}"``. Worker processes run one task at a time
    (one thread each), so each fold has a worker (and on a CUDA or SLURM GPU cluster, a GPU)
    to itself; more folds than workers queue.

    Parameters
    ----------
    pairs : path of the pairs store (shared storage for SLURM workers)
    out_dir : path
    config : TrainConfig
        With ``folds > 1``; its ``fold`` is ignored.
    cluster : ClusterConfig or distributed.Client, optional
        Where to run: a cluster to start or reach (default a local cluster), or the client of
        a running one.
    overwrite, resume : bool
        As for :func:`~vstain_dask.train.trainer.train`, per fold.
    command : str, optional
        The command line each fold's model records.
    callbacks : FoldCallbacks, optional
        Called once workers are up and as each fold finishes.

    Returns
    -------
    list of TrainResult, by fold
    """
    from vstain_dask.cluster import ClusterConfig, connect

    if config.folds < 2:
        raise InputError(f"train_folds needs folds >= 2, got {config.folds}")
    runs = [Path(out_dir) / f"fold{k}" for k in range(config.folds)]
    if not (overwrite or resume):
        _refuse_existing(runs)
    pairs = str(Path(pairs).expanduser().resolve())
    train_fold = functools.partial(_train_fold, command=command, resume=resume, overwrite=overwrite)
    callbacks = callbacks or FoldCallbacks()
    if cluster is not None and not isinstance(cluster, ClusterConfig):
        if not hasattr(cluster, "submit"):
            raise InputError(
                "cluster must be a ClusterConfig or a distributed.Client, got "
                f"{type(cluster).__name__}"
            )
        return _run_folds(cluster, train_fold, pairs, runs, config, callbacks)
    with connect(cluster) as client:
        return _run_folds(client, train_fold, pairs, runs, config, callbacks)


def _refuse_existing(runs: list[Path]) -> None:
    from vstain_dask.errors import OutputExistsError

    existing = [str(r) for r in runs if r.exists()]
    if existing:
        raise OutputExistsError(
            f"fold outputs {existing} exist; pass --overwrite (overwrite=True) to replace them "
            "or --resume (resume=True) to continue"
        )


def _run_folds(
    client: Any,
    train_fold: Callable[..., Any],
    pairs: str,
    runs: list[Path],
    config: Any,
    callbacks: FoldCallbacks,
) -> list[Any]:
    """Submit ``train_fold(pairs, run, config)`` for each fold and gather the results, by
    fold."""
    if callbacks.on_start is not None:
        callbacks.on_start(client)
    futures = [
        client.submit(
            train_fold,
            pairs,
            str(r.resolve()),
            dataclasses.replace(config, fold=k).to_dict(),
            key=f"train-fold{k}-{uuid.uuid4().hex[:12]}",
            pure=False,
        )
        for k, r in enumerate(runs)
    ]
    return _gather(futures, callbacks.on_done)


def _gather(futures: list[Any], on_done: Callable[[Any], None] | None) -> list[Any]:
    """The folds' results as they finish; a failed fold is reported with the others."""
    from distributed import as_completed

    from vstain_dask.errors import JobError

    results: dict[int, Any] = {}
    errors = []
    for fut in as_completed(futures):
        k = futures.index(fut)
        try:
            results[k] = fut.result()
        except Exception as e:  # a failed fold is reported with the others
            errors.append(f"fold {k}: {type(e).__name__}: {e}")
            continue
        if on_done is not None:
            on_done(results[k])
    if errors:
        raise JobError(f"{len(errors)} of {len(futures)} folds failed: {'; '.join(errors)}")
    return [results[k] for k in range(len(futures))]
