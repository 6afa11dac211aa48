"""One small exception hierarchy.

Every error a user can cause derives from :class:`VStainError` and from the built-in exception
that describes it, so library callers can catch either. The command line turns any
``VStainError`` into one line on stderr and exits with ``exit_code``; anything else is a bug
and shows a traceback only with ``--debug``.
"""

from __future__ import annotations

__all__ = [
    "VStainError",
    "InputError",
    "VolumeFormatError",
    "CheckpointError",
    "OutputExistsError",
    "JobError",
    "ClusterError",
]


class VStainError(Exception):
    """Base of all errors raised on purpose by vstain-dask."""

    #: process exit status used by the command line
    exit_code: int = 1


class InputError(VStainError, ValueError):
    """A parameter or an input value is not acceptable (bad option, bad shape, bad dtype)."""

    exit_code = 2


class VolumeFormatError(VStainError, ValueError):
    """A path is not the volume, store or image it should be (missing, not NGFF, corrupt)."""

    exit_code = 2


class CheckpointError(VStainError, RuntimeError):
    """A model file is missing, truncated, corrupted, foreign or does not match its architecture."""

    exit_code = 2


class OutputExistsError(VStainError, FileExistsError):
    """The output exists (or is locked by another job) and overwriting was not asked for."""

    exit_code = 2


class JobError(VStainError, RuntimeError):
    """A distributed job ended with failed blocks or could not run to completion."""

    exit_code = 1


class ClusterError(VStainError, ConnectionError):
    """A cluster could not be started or a scheduler could not be reached."""

    exit_code = 1
