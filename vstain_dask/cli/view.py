"""``vstain-dask view``: look at a stain in napari, or in neuroglancer in a browser."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vstain_dask.viewers.neuroglancer import DEFAULT_PORT


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--neuroglancer", "use_neuroglancer", is_flag=True,
              help="Serve OUT on 127.0.0.1 and print a neuroglancer URL, instead of napari.")  # fmt: skip
@click.option("--ct", type=click.Path(path_type=Path),
              help="The CT to show under the stain [the stain's recorded input, if it is there].")  # fmt: skip
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port on 127.0.0.1; 0 picks a free one.")  # fmt: skip
@click.option("--print-state", is_flag=True,
              help="Print neuroglancer's JSON state (URLs on --port) and exit without serving.")  # fmt: skip
@click.option("--client-url", metavar="URL",
              help="A neuroglancer client to open the state in, e.g. "
                   "https://neuroglancer-demo.appspot.com/ (needs internet) [the client of the "
                   "neuroglancer package, served with the data: works offline].")  # fmt: skip
def view(out, use_neuroglancer, ct, port, print_state, client_url):
    """Show OUT, a stain (or a volume), with its CT, labels and uncertainty.

    In napari by default. With --neuroglancer: serves OUT (and the CT) over HTTP on 127.0.0.1
    with neuroglancer's own client and prints the URL to open; Ctrl-C stops the server. Through
    SSH: `ssh -L PORT:127.0.0.1:PORT HOST`, then open the URL on your machine.
    """
    from vstain_dask.viewers.neuroglancer import plan_view

    use_neuroglancer = use_neuroglancer or print_state or client_url is not None
    if not use_neuroglancer:
        _check_napari_options(ct=ct)
    plan = plan_view(out, ct=ct)
    if use_neuroglancer:
        _neuroglancer(plan, port=port, print_state=print_state, client_url=client_url)
    else:
        _napari(out)


def _check_napari_options(*, ct) -> None:
    """Refuse the options napari would ignore, rather than ignore them."""
    from click.core import ParameterSource

    from vstain_dask.errors import InputError

    ctx = click.get_current_context()
    given = [
        f"--{n}"
        for n in ("ct", "port")
        if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE
    ]
    if given:
        raise InputError(
            f"{' and '.join(given)} {'are' if len(given) > 1 else 'is'} for --neuroglancer; "
            "napari opens OUT with its own labels and uncertainty (open a CT beside it with "
            "File > Open)"
        )


def _napari(path: Path) -> None:
    from vstain_dask.viewers.napari import open_in_napari

    open_in_napari(path)


def _neuroglancer(plan, *, port: int, print_state: bool, client_url: str | None) -> None:
    from vstain_dask.cli._options import stop_on_sigterm
    from vstain_dask.errors import InputError
    from vstain_dask.viewers.neuroglancer import serve

    if print_state:
        if port == 0:
            raise InputError(
                "--print-state needs the port the data will be served on; give --port N"
            )
        click.echo(json.dumps(plan.state(f"http://127.0.0.1:{port}"), indent=1))
        return
    served = []

    def ready(url: str, base: str) -> None:
        served.append(base)
        click.echo(url)
        if plan.ct_note:
            click.echo(plan.ct_note, err=True)
        click.echo(f"serving {', '.join(plan.stores)} on {base}; Ctrl-C stops it", err=True)

    with stop_on_sigterm():
        serve(plan, port=port, client_url=client_url, on_ready=ready)
    click.echo(f"stopped serving on {served[0] if served else f'port {port}'}", err=True)
