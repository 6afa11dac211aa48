"""The command-line front door: version, help, unknown commands, one-line errors."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from vstain_dask import __version__
from vstain_dask.cli import _COMMANDS, main


def test_version_and_help():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output
    r = CliRunner().invoke(main, ["-h"])
    assert r.exit_code == 0
    for name in _COMMANDS:
        assert name in r.output, name
    for name in _COMMANDS:
        r = CliRunner().invoke(main, [name, "-h"])
        assert r.exit_code == 0, (name, r.output)
        assert "Usage:" in r.output


def test_stain_and_train_take_the_same_cluster_options():
    cluster = {"--cluster", "--scheduler", "--jobs", "--threads-per-worker", "--memory", "--cores",
               "--walltime", "--gpus-per-job", "--queue", "--account", "--interface",
               "--cluster-timeout"}  # fmt: skip
    for name in ("stain", "train"):
        r = CliRunner().invoke(main, [name, "-h"], terminal_width=200)
        assert r.exit_code == 0, r.output
        listed = {ln.split()[0] for ln in r.output.splitlines() if ln.lstrip().startswith("--")}
        assert cluster <= listed, (name, cluster - listed)
        assert "--cluster [local|cuda|slurm]" in r.output


def test_unknown_command_is_a_usage_error():
    r = CliRunner().invoke(main, ["paint"])
    assert r.exit_code == 2
    assert "No such command 'paint'" in r.output


def test_entry_point_one_line_error_and_debug_traceback(tmp_path):
    missing = str(tmp_path / "missing.zarr")
    plain = subprocess.run(["vstain-dask", "info", missing], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert plain.returncode == 2
    assert plain.stderr.count("\n") == 1 and plain.stderr.startswith("error: ")
    assert missing in plain.stderr and "Traceback" not in plain.stderr
    debug = subprocess.run([sys.executable, "-m", "vstain_dask.cli", "--debug", "info", missing],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_stain_fusion_option_reaches_the_engine(ct, model_path, tmp_path):
    """`--fusion blocks` stains in floating point inside cubes (recorded in the provenance); a
    fusion that does not exist is one line and exit 2."""
    from vstain_dask import ngff

    src, _ = ct
    base = ["stain", str(src), "--model", str(model_path), "--axes", "zyx", "--tile", "16",
            "--step", "8", "--batch-size", "4", "--workers", "1", "--threads-per-worker", "1",
            "--ct-levels", "none", "--no-progress"]  # fmt: skip
    r = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "blocks.zarr"), "--fusion", "blocks"])
    assert r.exit_code == 0, r.output
    params = ngff.open_volume(tmp_path / "blocks.zarr").attrs["vstain"]["parameters"]
    assert params["fusion"] == "blocks" and params["axes"] == "zyx"
    r = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "x.zarr"), "--fusion", "cubes"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith("error: fusion must be one of")
    assert not (tmp_path / "x.zarr").exists()


# Ctrl-C while zarr I/O is in flight: a coroutine that was created but never started is freed
# after the command's last line and Python warns about it. The script reproduces that order.
_INTERRUPTED_IO = """
import sys
import click
from vstain_dask.cli._options import exit_interrupted

async def read_chunk():
    return b""

def command(quiet):
    pending = read_chunk()  # the interrupt lands before this is awaited
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        if quiet:
            exit_interrupted("interrupted: out.zarr is incomplete")
        click.echo("interrupted: out.zarr is incomplete", err=True)
        sys.exit(130)

command(sys.argv[1] == "quiet")
"""


def test_ctrl_c_message_is_the_last_line_even_with_io_cut_off():
    def run(mode):
        return subprocess.run([sys.executable, "-c", _INTERRUPTED_IO, mode], capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    plain = run("plain")  # what the commands printed before
    assert plain.returncode == 130
    assert "was never awaited" in plain.stderr
    assert not plain.stderr.strip().splitlines()[-1].startswith("interrupted")
    quiet = run("quiet")
    assert quiet.returncode == 130
    assert quiet.stderr == "interrupted: out.zarr is incomplete\n"
