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
from typing import Literal, TypeVar, overload

__all__ = [
    "VStainError",
    "InputError",
    "VolumeFormatError",
    "CheckpointError",
    "OutputExistsError",
    "JobError",
    "ClusterError",
    "DivergenceError",
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


class DivergenceError(VStainError, FloatingPointError):
    """Training diverged: a loss became non-finite (NaN or infinite)."""

    exit_code = 1


E = TypeVar("E", bound=Enum)


@overload
def as_enum(
    enum_cls: type[E],
    value: object,
    name: str,
    *,
    case_insensitive: bool = ...,
    allow_none: Literal[False] = ...,
    alternative: str | None = ...,
) -> E: ...


@overload
def as_enum(
    enum_cls: type[E],
    value: object,
    name: str,
    *,
    case_insensitive: bool = ...,
    allow_none: bool,
    alternative: str | None = ...,
) -> E | None: ...


def as_enum(
    enum_cls: type[E],
    value: object,
    name: str,
    *,
    case_insensitive: bool = False,
    allow_none: bool = False,
    alternative: str | None = None,
) -> E | None:
    """``value`` as a member of ``enum_cls``, or an :class:`InputError` that lists the members.

    Parameters
    ----------
    enum_cls : type[Enum]
        The choices.
    value : object
        A member of ``enum_cls`` (returned as it is) or a member's value, such as ``"mean"``.
        A member of another enum stands for its value.
    name : str
        The parameter as the caller knows it (``"blend"``, ``"CTLevels.source"``), for the
        message.
    case_insensitive : bool
        Match a string in lower case (``"Mg"`` is ``"mg"``); for enums whose values are lower
        case.
    allow_none : bool
        Return ``None`` for ``None`` (an optional choice); the message then ends the list of
        members with ``or None``.
    alternative : str, optional
        What else the caller accepts in place of a member (``"a scheduler address"``), named at
        the end of the list of members in the message; the lookup itself takes members only.

    Returns
    -------
    Enum or None
        The member of ``enum_cls`` whose value is ``value`` (``None`` only with ``allow_none``).

    Raises
    ------
    InputError
        One line: ``blend must be one of 'mean', 'gaussian', 'cosine', got 'max'``, or with
        ``allow_none``: ``role must be one of 'train', 'val', 'test' or None, got 'x'``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, enum_cls):
        return value
    key = value.value if isinstance(value, Enum) else value
    if case_insensitive and isinstance(key, str):
        key = key.lower()
    try:
        return enum_cls(key)
    except ValueError as e:
        members = ", ".join(repr(m.value) for m in enum_cls)
        extra = "".join(f" or {a}" for a in ("None" if allow_none else None, alternative) if a)
        raise InputError(f"{name} must be one of {members}{extra}, got {value!r}") from e
