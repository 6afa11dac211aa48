"""One small exception hierarchy.

Every error a user can cause derives from :class:`VStainError` and from the built-in exception
that describes it, so library callers can catch either. The command line turns any
``VStainError`` into one line on stderr and exits with ``exit_code``; anything else is a bug
and shows a traceback only with ``--debug``.

:func:`as_enum` turns a choice given as a string into its enum member, with the one message
every choice in vstain-dask gives when the value is not one of the members.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

__all__ = [
    "VStainError",
    "InputError",
    "VolumeFormatError",
    "CheckpointError",
    "OutputExistsError",
    "JobError",
    "ClusterError",
    "as_enum",
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


E = TypeVar("E", bound=Enum)


def as_enum(enum_cls: type[E], value: object, name: str) -> E:
    """``value`` as a member of ``enum_cls``, or an :class:`InputError` that lists the members.

    Parameters
    ----------
    enum_cls : type[Enum]
        The choices.
    value : object
        A member of ``enum_cls`` (returned as it is) or a member's value, such as ``"mean"``.
    name : str
        The parameter as the caller knows it (``"blend"``, ``"CTLevels.source"``), for the
        message.

    Returns
    -------
    Enum
        The member of ``enum_cls`` whose value is ``value``.

    Raises
    ------
    InputError
        One line: ``blend must be one of 'mean', 'gaussian', 'cosine', got 'max'``.
    """
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError as e:
        members = ", ".join(repr(m.value) for m in enum_cls)
        raise InputError(f"{name} must be one of {members}, got {value!r}") from e
