"""Shared fixtures: a real two-worker distributed cluster and small on-disk stores."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cluster():
    """A real LocalCluster with 2 worker processes, 1 thread each, on loopback."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        memory_limit="4GiB",
    ) as cl:
        yield cl


@pytest.fixture
def client(cluster):
    """A client on the shared two-worker cluster."""
    from distributed import Client

    with Client(cluster) as c:
        yield c
