"""Packages whose public names are imported on first use.

So that ``import vstain_dask`` and the quick commands (``vstain-dask info``, ``--help``) do not
import torch, a package lists its public names with the module that defines each, and gets its
``__getattr__``, ``__dir__`` and ``__all__`` from :func:`lazy_exports`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose ``exports`` map each public
    name to the module that defines it. A name is imported when first asked for, then kept in
    the package's namespace."""
    names = sorted(exports)

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = importlib.import_module(module)
        if module != f"{package}.{name}":
            value = getattr(value, name)
        # a name that is also a submodule (vstain_dask.stain) stays the submodule, as the import
        # system makes it anyway once it is imported; that module is then callable itself
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return list(names)

    return __getattr__, __dir__, names
