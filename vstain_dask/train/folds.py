"""Cross-validation folds trained in parallel on a dask cluster (:func:`train_folds`).

The split itself (the test set and the stratified folds) is made by
:func:`~vstain_dask.train.split.make_split`, which the trainer uses too.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path
from typing import Any

from vstain_dask.errors import InputError

__all__ = ["train_folds"]


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
    from vstain_dask.train.trainer import TrainConfig, train

    return train(
        pairs,
        out_dir,
        TrainConfig.from_dict(config),
        progress=False,
        command=command,
        resume=resume,
        overwrite=overwrite,
    )


def train_folds(
    pairs: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: Any,
    *,
    cluster: Any = None,
    client: Any = None,
    overwrite: bool = False,
    resume: bool = False,
    command: str | None = None,
    on_start: Any = None,
    on_done: Any = None,
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
    cluster : ClusterConfig, optional
        Where to run (default a local cluster); ignored when ``client`` is given.
    client : distributed.Client, optional
        An existing client.
    overwrite, resume : bool
        As for :func:`~vstain_dask.train.trainer.train`, per fold.
    on_start : callable, optional
        Called with the client once workers are up.
    on_done : callable, optional
        Called with each :class:`TrainResult` as its fold finishes.

    Returns
    -------
    list of TrainResult, by fold
    """
    from vstain_dask.cluster import connect
    from vstain_dask.errors import JobError, OutputExistsError

    if config.folds < 2:
        raise InputError(f"train_folds needs folds >= 2, got {config.folds}")
    out = Path(out_dir)
    runs = [out / f"fold{k}" for k in range(config.folds)]
    if not (overwrite or resume):
        existing = [str(r) for r in runs if r.exists()]
        if existing:
            raise OutputExistsError(
                f"fold outputs {existing} exist; pass --overwrite to replace them or --resume "
                "to continue"
            )
    pairs = str(Path(pairs).expanduser().resolve())

    def run(c: Any) -> list[Any]:
        from distributed import as_completed

        if on_start is not None:
            on_start(c)
        futures = []
        for k, r in enumerate(runs):
            cfg = dataclasses.replace(config, fold=k)
            futures.append(
                c.submit(
                    _train_fold,
                    pairs,
                    str(r.resolve()),
                    cfg.to_dict(),
                    command,
                    resume,
                    overwrite,
                    key=f"train-fold{k}-{uuid.uuid4().hex[:12]}",
                    pure=False,
                )
            )
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
            raise JobError(f"{len(errors)} of {len(runs)} folds failed: {'; '.join(errors)}")
        return [results[k] for k in range(len(runs))]

    if client is not None:
        return run(client)
    with connect(cluster) as c:
        return run(c)
