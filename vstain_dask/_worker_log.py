"""A dask worker preload for the command line's jobs: each local worker process writes its
stderr (distributed's log, warnings, tracebacks of failed tasks) to the job's log file instead
of the terminal, and leaves Ctrl-C to the process that started it, which stops the cluster.

Used by :func:`vstain_dask.stain.job_log`, which names the file in dask's configuration (key
``vstain.worker-log``) that the nanny passes on to the worker processes it starts.
"""

from __future__ import annotations

import os
import signal


def dask_setup(worker) -> None:  # noqa: ARG001  (the preload protocol passes the worker)
    import dask

    path = dask.config.get("vstain.worker-log", None)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    # the terminal sends Ctrl-C to the whole process group: the job's own process stops the
    # cluster, so a worker has nothing to do with it but print tracebacks
    signal.signal(signal.SIGINT, signal.SIG_IGN)
