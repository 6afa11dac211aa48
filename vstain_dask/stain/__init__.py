"""Staining a CT volume: blocks -> tiles -> model -> blend -> fuse -> write.

The volume is cut into coarse 3D blocks. Each block is one task: it reads its input with the halo
that the global tile grid needs (plus the Gaussian prefilter's halo), runs the model over every
tile of every plane that touches the block, along each requested axis, blends (on the global tile
grid, so a block returns exactly what whole-plane inference would), fuses the axes, and writes the
output chunks that it alone owns. The model is loaded once per worker process
(:func:`vstain_dask.cluster.worker_model`), never captured in the graph.

A ledger of finished blocks beside the output lets an interrupted job resume; a lock file refuses
a second job on the same output; the output is marked complete only after every block and the
pyramid are written.

Modules: ``params`` (:class:`StainConfig`: the parameters that define a result apart from the
runtime settings), ``plan`` (blocks, stages, the checks of a plan), ``block`` (the per-block
computation and a block's tasks), ``ledger`` (finished blocks and the lock), ``job`` (the
:class:`~vstain_dask.stain.job.Job` and the checks before any work), ``execute``
(:func:`stain_to_zarr`), ``run`` (:func:`run_stain` on a cluster), ``lazy`` (:func:`stain`).
"""

import sys
import types

from vstain_dask.stain.block import stain_block
from vstain_dask.stain.execute import (
    BLOCKS_IN_FLIGHT_PER_WORKER,
    StainOptions,
    StainReport,
    stain_to_zarr,
)
from vstain_dask.stain.job import check_inputs, check_resume, default_output
from vstain_dask.stain.lazy import stain
from vstain_dask.stain.ledger import _Ledger as _Ledger  # noqa: F401  (tests, benchmarks)
from vstain_dask.stain.ledger import job_log_path
from vstain_dask.stain.params import Axis, FuseMode, Fusion, StainConfig, default_batch_size
from vstain_dask.stain.plan import (
    MAX_RECOMPUTE,
    WARN_RECOMPUTE,
    Block,
    check_memory,
    plan_blocks,
    recompute_factor,
    task_memory,
)
from vstain_dask.stain.run import (
    _local_gpu_workers as _local_gpu_workers,  # tests, benchmarks
)
from vstain_dask.stain.run import (
    default_model_path,
    job_log,
    resolve_ct_levels,
    run_stain,
)

__all__ = [
    "Axis",
    "FuseMode",
    "Fusion",
    "StainConfig",
    "StainOptions",
    "StainReport",
    "Block",
    "plan_blocks",
    "stain",
    "stain_block",
    "stain_to_zarr",
    "run_stain",
    "default_model_path",
    "default_output",
    "default_batch_size",
    "check_inputs",
    "check_resume",
    "job_log",
    "job_log_path",
    "resolve_ct_levels",
    "recompute_factor",
    "task_memory",
    "check_memory",
    "BLOCKS_IN_FLIGHT_PER_WORKER",
    "MAX_RECOMPUTE",
    "WARN_RECOMPUTE",
]


class _CallableModule(types.ModuleType):
    """``vstain_dask.stain`` is both this package and the lazy staining function that
    ``import vstain_dask as vd; vd.stain(ct, model)`` promises: Python sets the package's
    ``stain`` attribute to this module when it is first imported, whoever imports it, so the
    module itself calls :func:`~vstain_dask.stain.lazy.stain`."""

    def __call__(self, volume, model, **kwargs):
        return stain(volume, model, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
