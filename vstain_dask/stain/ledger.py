"""The ledger of a stain job and its lock, in ``<output>.vstain-job/`` beside the output.

One empty file per finished block (``done/``) lets an interrupted job resume; the records count
only for the output whose job identity (``job``) they carry. ``lock.json`` refuses a second job
on the same output while the first one runs; a lock left by a job that died is taken over
(on the same host, where that can be seen) or broken with ``--break-lock``.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

from vstain_dask.errors import OutputExistsError

_LEDGER = ".vstain-job"
_LOCK = "lock.json"
#: in the ledger: the identity of the output the finished-block records belong to
_JOB = "job"


class _Ledger:
    """Finished blocks, one empty file each, in ``<output>.vstain-job/done/``, and a lock file
    there that keeps a second job off the same output. The folder goes when the job completes."""

    def __init__(self, output: Path) -> None:
        # beside the store, not in it, so the store stays plain OME-Zarr; removed on completion
        self.output = output
        self.root = output.with_name(output.name + _LEDGER)
        self.done_dir = self.root / "done"
        self.lock_path = self.root / _LOCK

    def done(self) -> set[str]:
        if not self.done_dir.is_dir():
            return set()
        return {p.name for p in self.done_dir.iterdir() if not p.name.startswith(".")}

    def job(self) -> str | None:
        """The job (the output's identity) the finished-block records belong to."""
        try:
            return (self.root / _JOB).read_text().strip() or None
        except OSError:
            return None

    def bind(self, job: str, output: Path) -> None:
        """Make ``job`` the owner of the records: any record of another job, or of none, is
        discarded first (with a warning), so no record ever counts for an output it was not
        written into."""
        import shutil

        stale = self.done()
        stale_passes = sorted(self.root.glob("axis-*.zarr"))
        if self.job() != job and (stale or stale_passes):
            why = (
                f"{output} no longer exists"
                if not output.exists()
                else f"they were not written into {output}"
            )
            warnings.warn(
                f"discarded {len(stale)} finished-block record(s) in {self.done_dir}: {why}; "
                "every block is stained again",
                RuntimeWarning,
                stacklevel=3,
            )
            shutil.rmtree(self.done_dir, ignore_errors=True)
            for p in stale_passes:
                shutil.rmtree(p, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{_JOB}.{os.getpid()}.tmp"
        tmp.write_text(job + "\n")
        tmp.replace(self.root / _JOB)

    def mark(self, name: str) -> None:
        # an empty file whose name is the record: creating it is atomic, so a kill leaves
        # either the marker or nothing (no temporary file to be mistaken for a finished block)
        self.done_dir.mkdir(parents=True, exist_ok=True)
        (self.done_dir / name).touch()

    def acquire(self, *, fingerprint: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "process_started": _process_started(os.getpid())}  # fmt: skip
        while True:
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read_lock()
                if other and _alive(other):
                    raise OutputExistsError(self.held_by(other)) from None
                # a stale lock from a job that died: take it over
                self.lock_path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({**info, "fingerprint": fingerprint}, f)
            return

    def held_by(self, lock: dict) -> str:
        """Why the output is locked, naming the lock file and how to clear it, in one line."""
        host = lock.get("host")
        since = lock.get("started")
        when = (
            f", started {time.strftime('%Y-%m-%d %H:%M', time.localtime(since))}"
            if isinstance(since, int | float)
            else ""
        )
        here = host == socket.gethostname()
        how = (
            "wait for it or stop it first"
            if here
            else "wait for it or stop it first; if it no longer runs (its node went down), "
            "rerun with --break-lock"
        )
        return (
            f"another job (pid {lock.get('pid')} on {host}{when}) is writing "
            f"{self.output}; its lock is "
            f"{self.lock_path}: {how}"
        )

    def break_lock(self) -> dict | None:
        """Remove the lock of a job that no longer runs (one on another host is taken at the
        user's word); refuse while a live job on this host holds it. Returns the lock broken."""
        other = self._read_lock()
        if other is None:
            return None
        if other.get("host") == socket.gethostname() and _alive(other):
            raise OutputExistsError(
                f"--break-lock refused: pid {other.get('pid')} on this host still runs and holds "
                f"{self.lock_path}; stop it first"
            )
        self.lock_path.unlink(missing_ok=True)
        return other

    def _read_lock(self) -> dict | None:
        try:
            return json.loads(self.lock_path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        other = self._read_lock()
        if other and other.get("pid") == os.getpid() and other.get("host") == socket.gethostname():
            self.lock_path.unlink(missing_ok=True)

    def remove(self) -> None:
        """Forget the job (after it completed): the ledger and our lock."""
        import shutil

        shutil.rmtree(self.done_dir, ignore_errors=True)
        for p in self.root.glob("axis-*.zarr"):
            shutil.rmtree(p, ignore_errors=True)
        (self.root / _JOB).unlink(missing_ok=True)
        job_log_path(self.output).unlink(missing_ok=True)
        self.release()
        try:
            self.root.rmdir()
        except OSError:
            pass


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if it does not run."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _alive(lock: dict) -> bool:
    """Whether the job that holds a lock still runs. Only knowable on the same host, where the
    process must exist and have started when the lock says (a pid reused by another process
    does not count); a lock from another host is taken as alive."""
    if lock.get("host") != socket.gethostname():
        return True
    try:
        pid = int(lock["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    started = _process_started(pid)
    if started is None:
        import psutil

        return psutil.pid_exists(pid)  # exists, but its start time cannot be read: alive
    recorded = lock.get("process_started")
    if isinstance(recorded, int | float):
        return abs(started - recorded) < 1.0
    # a lock without the process's start time: alive unless the process started after it
    since = lock.get("started")
    return not (isinstance(since, int | float) and started > since + 1.0)


def job_log_path(output: str | os.PathLike) -> Path:
    """Where a job on ``output`` logs what its cluster says: beside the output, in the job's
    folder (removed with it when the job completes)."""
    return _Ledger(Path(output)).root / "cluster.log"
