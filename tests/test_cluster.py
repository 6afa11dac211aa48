"""The product's own local cluster: worker resources, threads and allocator environment."""

from __future__ import annotations

import os

import pytest

from vstain_dask.cluster import COMPUTE_RESOURCE, ClusterConfig, connect
from vstain_dask.errors import InputError


def _env() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


@pytest.mark.parametrize("malloc_trim", [False, True])
def test_local_workers_environment(malloc_trim):
    from distributed import LocalCluster

    # a default distributed cluster started first leaves MALLOC_TRIM_THRESHOLD_ in os.environ
    with LocalCluster(
        n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ):
        pass
    config = ClusterConfig(
        workers=1, threads_per_worker=1, dashboard=False, malloc_trim=malloc_trim
    )
    with connect(config) as client:
        (info,) = client.scheduler_info()["workers"].values()
        assert info["resources"] == {COMPUTE_RESOURCE: 1}
        assert info["host"] == "127.0.0.1"
        (env,) = client.run(_env).values()
        # distributed sets MALLOC_TRIM_THRESHOLD_=65536 for workers; vstain-dask leaves it out
        # unless asked to keep it (page faults: benchmarks/RESULTS.md, "Findings")
        assert env == {
            "MALLOC_TRIM_THRESHOLD_": "65536" if malloc_trim else None,
            "OMP_NUM_THREADS": "1",
        }


def test_cluster_config_rejects_bad_values():
    with pytest.raises(InputError, match="workers"):
        ClusterConfig(workers=0)
    with pytest.raises(
        InputError,
        match="cluster must be one of 'local', 'cuda', 'slurm' or a scheduler address, got 'pbs'",
    ):
        ClusterConfig(kind="pbs")


def test_a_local_stain_on_cuda_gets_one_worker_unless_told_otherwise():
    """Local workers all share one GPU: a stain on CUDA starts one of them, not one per core.
    A size given, another kind of cluster, or a scheduler address is left as it is."""
    from vstain_dask.stain import _local_gpu_workers

    assert _local_gpu_workers(None, "cuda").workers == 1
    assert _local_gpu_workers(ClusterConfig(dashboard=False), "cuda:1") == ClusterConfig(
        workers=1, dashboard=False
    )
    assert _local_gpu_workers(None, "cpu") == ClusterConfig()
    for given in (
        ClusterConfig(workers=3),
        ClusterConfig(kind="cuda"),
        ClusterConfig(kind="slurm"),
        ClusterConfig(scheduler="tcp://127.0.0.1:8786"),
    ):
        assert _local_gpu_workers(given, "cuda") == given
