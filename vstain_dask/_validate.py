"""Checks of parameter values, shared by every config.

Each check names the parameter, what was expected and what was got, in one wording for the
whole package: ``tile must be an integer >= 1, got 0``, ``step must be an integer in 1..8,
got 9``, ``timeout must be a positive number (seconds), got 0``. Choices are enums, checked
by :func:`vstain_dask.errors.as_enum`.

A dataclass states an integer field's range once, in the field (:func:`int_field`); its
``__post_init__`` checks all such fields with :func:`check_int_fields`, and a command line can
offer the same range (``click.IntRange(field.metadata["min"], field.metadata["max"])``).
"""

from __future__ import annotations

import dataclasses
import math
from numbers import Integral, Real
from typing import Any

from vstain_dask.errors import InputError

__all__ = [
    "check_bool",
    "check_float",
    "check_int",
    "check_int_fields",
    "int_field",
    "keyword_bundles",
    "refuse_unknown_keywords",
]


def _shown(value: Any) -> str:
    """``value`` as a message shows it: numbers plainly (``0``, not ``np.int64(0)``)."""
    if isinstance(value, Real) and not isinstance(value, bool):
        return str(int(value) if isinstance(value, Integral) else float(value))
    return repr(value)


def _within(value: Real, minimum: Real | None, maximum: Real | None) -> bool:
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def _expected(noun: str, minimum: Real | None, maximum: Real | None, *, real: bool) -> str:
    """``an integer in 1..8``, ``a number in [0, 1]``, ``an integer >= 1``, ``a number``."""
    if minimum is not None and maximum is not None:
        return (
            f"{noun} in [{minimum:g}, {maximum:g}]" if real else f"{noun} in {minimum}..{maximum}"
        )
    if minimum is not None:
        return f"{noun} >= {minimum:g}" if real else f"{noun} >= {minimum}"
    if maximum is not None:
        return f"{noun} <= {maximum:g}" if real else f"{noun} <= {maximum}"
    return noun


def check_int(
    value: Any,
    name: str,
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    hint: str | None = None,
) -> int:
    """``value`` as an ``int`` in ``minimum..maximum`` (either bound optional), else an
    :class:`InputError`.

    Python and numpy integers are accepted; bools and floats (even ``8.0``) are not. ``hint``
    is added to the message in parentheses (why the range is what it is).
    """
    is_int = isinstance(value, Integral) and not isinstance(value, bool)
    if not (is_int and _within(value, minimum, maximum)):
        extra = f" ({hint})" if hint else ""
        expected = _expected("an integer", minimum, maximum, real=False)
        raise InputError(f"{name} must be {expected}, got {_shown(value)}{extra}")
    return int(value)


def check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    unit: str | None = None,
) -> float:
    """``value`` as a finite ``float`` (``> 0`` with ``positive``; in ``[minimum, maximum]``
    where given), else an :class:`InputError`. ``unit`` is named in the message.

    Numbers are accepted (not bools, not strings); NaN and infinities are not.
    """
    is_real = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (is_real and (not positive or value > 0) and _within(value, minimum, maximum)):
        if positive:
            expected = "a positive number"
        else:
            finite = "a number" if (minimum, maximum) != (None, None) else "a finite number"
            expected = _expected(finite, minimum, maximum, real=True)
        if unit:
            expected += f" ({unit})"
        raise InputError(f"{name} must be {expected}, got {_shown(value)}")
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool, else an :class:`InputError` (``1`` and ``"yes"`` are not)."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, got {value!r}")
    return value


def int_field(default: int | None, minimum: int, maximum: int | None = None) -> Any:
    """A dataclass field holding an integer in ``minimum..maximum``, its range stated in the
    field's ``metadata`` (``"min"``, ``"max"``) for :func:`check_int_fields` and the command
    line. A field whose default is None may be None."""
    return dataclasses.field(default=default, metadata={"min": minimum, "max": maximum})


def check_int_fields(obj: Any) -> None:
    """Check every :func:`int_field` of the frozen dataclass instance ``obj`` and store it as an
    ``int`` (a None left as it is where the field's default is None); call from
    ``__post_init__``."""
    for f in dataclasses.fields(obj):
        if "min" not in f.metadata:
            continue
        value = getattr(obj, f.name)
        if value is None and f.default is None:
            continue
        checked = check_int(value, f.name, f.metadata["min"], f.metadata["max"])
        object.__setattr__(obj, f.name, checked)


def _names(known: Any) -> set[str]:
    return (
        {f.name for f in dataclasses.fields(known)}
        if dataclasses.is_dataclass(known)
        else set(known)
    )


def refuse_unknown_keywords(function: str, keywords: Any, *known: Any) -> None:
    """Refuse a keyword that none of ``known`` (dataclasses, or collections of names) has, in
    the words Python uses for a keyword argument ``function`` does not take (a ``TypeError``)."""
    names = set().union(*(_names(k) for k in known))
    for key in keywords:
        if key not in names:
            raise TypeError(f"{function}() got an unexpected keyword argument '{key}'")


def keyword_bundles(function: str, keywords: Any, *bundles: type) -> list[Any]:
    """``keywords`` split by field name into the dataclasses ``bundles`` (their defaults for the
    fields not given), after :func:`refuse_unknown_keywords`."""
    refuse_unknown_keywords(function, keywords, *bundles)
    return [
        bundle(**{k: v for k, v in keywords.items() if k in _names(bundle)}) for bundle in bundles
    ]
