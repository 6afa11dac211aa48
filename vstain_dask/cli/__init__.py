"""The ``vstain-dask`` command line: a click group of thin commands.

Each command parses its options, builds a config, calls one library function and prints the
result. Heavy imports (torch, dask, zarr) happen inside the commands so that ``--help`` is quick.
Nothing in the package imports this module.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings

import click

from vstain_dask.cli._options import silence_interrupted_io
from vstain_dask.errors import VStainError

__all__ = ["main"]

# command name -> "module:attribute", loaded on first use so ``--help`` stays fast and a broken
# optional dependency only breaks the command that needs it.
_COMMANDS: dict[str, str] = {
    "demo": "vstain_dask.cli.demo:demo",
    "import": "vstain_dask.cli.volumes:import_",
    "info": "vstain_dask.cli.volumes:info",
    "phantom": "vstain_dask.cli.phantom:phantom",
    "phantom-pairs": "vstain_dask.cli.phantom:phantom_pairs",
    "phantom-section": "vstain_dask.cli.register:phantom_section",
    "register": "vstain_dask.cli.register:register",
    "model": "vstain_dask.cli.model:model",
    "stain": "vstain_dask.cli.stain:stain",
    "pairs": "vstain_dask.cli.pairs:pairs",
    "train": "vstain_dask.cli.train:train",
    "evaluate": "vstain_dask.cli.evaluate:evaluate",
    "preview": "vstain_dask.cli.evaluate:preview",
    "seams": "vstain_dask.cli.evaluate:seams",
    "render": "vstain_dask.cli.render:render",
    "view": "vstain_dask.cli.view:view",
}


_ARGV_KEY = "vstain_dask.argv"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


class _Group(click.Group):
    """A group that loads its commands lazily and turns user errors into one line."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        # the command line as given, for the provenance that outputs record (sys.argv is the
        # caller's when the group is invoked from Python, e.g. by a test runner)
        argv = list(args)
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta[_ARGV_KEY] = argv
        return ctx

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except VStainError as exc:
            if debug:
                raise
            click.echo(f"error: {_one_line(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            if debug:
                raise
            silence_interrupted_io()
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except OSError as exc:
            # permissions, full disks, vanished files: the user's environment, not our bug
            if debug:
                raise
            click.echo(f"error: {_one_line(exc)}", err=True)
            ctx.exit(1)
        except Exception as exc:
            if debug:
                raise
            click.echo(
                f"internal error: {type(exc).__name__}: {_one_line(exc)} "
                "(rerun with --debug for the traceback and please report it)",
                err=True,
            )
            ctx.exit(1)


def _version() -> str:
    from vstain_dask import __version__

    return __version__


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=_version(), prog_name="vstain-dask")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logging.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Virtual histological staining of 3D X-ray micro-CT volumes, on dask.

    Start with `vstain-dask demo`; every command has -h.
    """
    # the handler's level, not only the root's: libraries such as distributed give their own
    # loggers INFO levels, whose records would otherwise reach this handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])
    if not debug:
        warnings.showwarning = _show_warning
    ctx.obj = {"debug": debug}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, without source locations (those are for --debug)."""
    click.echo(f"warning: {_one_line(message)}", err=True)
