"""Small parsing helpers shared by the commands."""

from __future__ import annotations

import shlex

import click


def command_line() -> str:
    """The running command as a shell line (``vstain-dask stain ...``), for provenance."""
    ctx = click.get_current_context(silent=True)
    argv = None if ctx is None else ctx.meta.get("vstain_dask.argv")
    if argv is None:
        import sys

        argv = sys.argv[1:]
    return shlex.join(["vstain-dask", *map(str, argv)])


class IntTuple(click.ParamType):
    """A comma-separated tuple of positive integers, such as ``64,256,256``."""

    name = "Z,Y,X"

    def __init__(
        self, length: int | None = None, name: str | None = None, *, minimum: int = 1
    ) -> None:
        self.length = length
        self.minimum = minimum
        if name:
            self.name = name

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            parts = tuple(int(p) for p in str(value).replace("x", ",").split(",") if p.strip())
        except ValueError:
            self.fail(
                f"expected comma-separated integers like {self.name}, got {value!r}", param, ctx
            )
        if self.length is not None and len(parts) != self.length:
            self.fail(f"expected {self.length} integers ({self.name}), got {value!r}", param, ctx)
        if any(p < self.minimum for p in parts):
            what = "positive integers" if self.minimum == 1 else f"integers >= {self.minimum}"
            self.fail(f"expected {what}, got {value!r}", param, ctx)
        return parts
