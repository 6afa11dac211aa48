"""``--scheduler`` never hangs, table-driven: whatever is (or is not) at the address, the real
command line ends within the cluster timeout and a few seconds, with one ``error:`` line on
stderr and no traceback. A malformed address exits with 2 before anything is connected to; an
address where no dask scheduler answers exits with 1 (a ClusterError), at once where nothing
listens.

The servers that stand in for "something else" listen on 127.0.0.1 only, in threads of this
process, and are stopped by their fixture. A real scheduler, plain and with TLS credentials from
dask's configuration, shows the same path still stains; a tls:// address without credentials
exits with 2 before connecting.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

STAIN = ["--tile", "16", "--step", "8", "--batch-size", "4", "--ct-levels", "none",
         "--no-progress"]  # fmt: skip
#: seconds the CLI may take beyond its start-up and the time it was told to wait (a loaded
#: 2-core machine included)
SLACK = 8.0


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("vstain-dask")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "vstain_dask.cli"]


def _stain(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 180):
    """Run ``vstain-dask stain ARGS``; (completed process, seconds it took)."""
    start = time.monotonic()
    proc = subprocess.run([*_cli(), "stain", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip
    return proc, time.monotonic() - start


# -- stand-ins for something other than a dask scheduler ----------------------------------------


def _silent(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait()


def _garbage(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"\xff\xfe garbage \x00\x01" * 64)
    stop.wait()


def _http(conn: socket.socket, stop: threading.Event) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    stop.wait()


def _hang_up(conn: socket.socket, stop: threading.Event) -> None:
    pass  # closed as soon as accepted


@contextlib.contextmanager
def _listener(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that answers each connection with ``handle``; yields its port
    and stops (closing every connection) on exit."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve_one(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            handle(conn, stop)
        conn.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()
        for conn in conns:
            conn.close()


def _closed_port() -> int:
    """A loopback port where nothing listens (just released by a socket of this process)."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


# -- the table ----------------------------------------------------------------------------------

MALFORMED = {
    "no port": ("nonsense", "(no port)"),
    "port not a number": ("tcp://host:notaport", "PORT in 1..65535"),
    "port 0": ("tcp://127.0.0.1:0", "PORT in 1..65535"),
    "port too large": ("127.0.0.1:65536", "PORT in 1..65535"),
    "no host": ("tcp://:8786", "(host '')"),
    "http scheme": ("http://x", "'tcp', 'tls', 'inproc', 'ucx', got 'http'"),
    "empty": ("", "got ''"),
    "a path after the port": ("tcp://127.0.0.1:8786/status", "PORT in 1..65535"),
}

#: name -> (server handler or None for a closed port, --cluster-timeout, message part, waits)
#: where ``waits``: the run may take the whole timeout (something accepted and stayed quiet)
UNREACHABLE = {
    "closed port": (None, 30, "connection refused: nothing listens there", False),
    "silent listener": (_silent, 3, "did not answer as a dask scheduler within 3 s", True),
    "garbage listener": (_garbage, 30, "something other than dask's protocol", False),
    "HTTP server": (_http, 30, "something other than dask's protocol", False),
    "accepts and hangs up": (_hang_up, 30, "closed the connection", False),
}


@pytest.fixture(scope="module")
def job(ct, model_path, tmp_path_factory):
    """A valid input and model, so that a run gets as far as the cluster, and a baseline: the
    seconds the command takes to get there (start-up, input and model checks), as a run that
    is refused there without connecting anywhere (a tls:// address and no credentials)."""
    src, _ = ct
    out = tmp_path_factory.mktemp("never-hung")
    args = [str(src), "--model", str(model_path), *STAIN]
    proc, seconds = _stain([*args, "-o", str(out / "t.zarr"), "--scheduler", "tls://127.0.0.1:9"])
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc)
    assert "needs TLS credentials" in line and "distributed.comm.tls.ca-file" in line, line
    return args, out, seconds


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_address_exits_2_before_connecting(job, case):
    args, out, baseline = job
    address, message = MALFORMED[case]
    proc, seconds = _stain([*args, "-o", str(out / "m.zarr"), "--scheduler", address])
    assert proc.returncode == 2, (case, proc.stderr)
    line = _one_error_line(proc)
    assert line.startswith("error: ") and message in line, line
    assert seconds < baseline + SLACK, (case, seconds, baseline)  # (refused as it is parsed)
    assert not (out / "m.zarr").exists()


@pytest.mark.parametrize("case", list(UNREACHABLE))
def test_no_scheduler_at_the_address_fails_in_bounded_time(job, case):
    args, out, baseline = job
    handle, timeout, message, waits = UNREACHABLE[case]
    with contextlib.ExitStack() as stack:
        port = _closed_port() if handle is None else stack.enter_context(_listener(handle))
        address = f"tcp://127.0.0.1:{port}"
        cmd = [*args, "-o", str(out / "u.zarr"), "--scheduler", address,
               "--cluster-timeout", str(timeout)]  # fmt: skip
        proc, seconds = _stain(cmd, timeout=baseline + timeout + 60)
    assert proc.returncode == 1, (case, proc.stderr)
    line = _one_error_line(proc)
    assert line.startswith("error: ") and address in line and message in line, line
    # ends within the timeout and a little; where something answered or nothing listens, at
    # once, not after the timeout
    assert seconds < baseline + (timeout if waits else 0) + SLACK, (case, seconds, baseline)


# -- a real scheduler at the address still stains, over TCP and over TLS ---------------------------


def tls_credentials(folder: Path) -> dict[str, str]:
    """Credentials for every role written as files into ``folder``, and dask's
    configuration naming them (``distributed.comm.tls.*`` keys). Also used by
    test_cluster.py."""
    from distributed.security import Security

    made = Security.temporary()
    (folder / "ca.pem").write_text(made.tls_ca_file)
    (folder / "cert.pem").write_text(made.tls_scheduler_cert)
    (folder / "key.pem").write_text(made.tls_scheduler_key)
    config = {"distributed.comm.tls.ca-file": str(folder / "ca.pem")}
    for role in ("scheduler", "worker", "client"):
        config[f"distributed.comm.tls.{role}.cert"] = str(folder / "cert.pem")
        config[f"distributed.comm.tls.{role}.key"] = str(folder / "key.pem")
    return config


def _as_environment(config: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in config.items():
        env["DASK_" + key.upper().replace(".", "__").replace("-", "_")] = value
    return env


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_running_scheduler_still_stains(job, tls, tmp_path):
    import dask
    from distributed import LocalCluster
    from distributed.security import Security

    args, _, _ = job
    config = tls_credentials(tmp_path) if tls else {}
    with dask.config.set(config):
        security = Security() if tls else None
    env = _as_environment(config) if tls else None
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", protocol="tls" if tls else "tcp",
                      security=security) as cluster:  # fmt: skip
        address = cluster.scheduler_address
        assert address.startswith("tls://" if tls else "tcp://")
        proc, _ = _stain([*args, "-o", str(tmp_path / "out.zarr"), "--scheduler", address,
                          "--cluster-timeout", "30"], env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout


def test_a_dask_server_that_is_no_scheduler_for_this_address(job, tmp_path):
    """A worker's address, and a TLS scheduler addressed as tcp://: dask answers (or hangs up),
    but not as a scheduler this client can use; refused within the timeout, exit 1."""
    import dask
    from distributed import LocalCluster
    from distributed.security import Security

    args, out, baseline = job
    with dask.config.set(tls_credentials(tmp_path)):
        security = Security()
    with LocalCluster(n_workers=1, processes=False, host="127.0.0.1", protocol="tcp",
                      dashboard_address="127.0.0.1:0") as plain, \
         LocalCluster(n_workers=0, processes=False, host="127.0.0.1", protocol="tls",
                      dashboard_address="127.0.0.1:0", security=security) as secured:  # fmt: skip
        (worker,) = plain.scheduler_info["workers"]
        tls_as_tcp = secured.scheduler_address.replace("tls://", "tcp://")
        for address, message in ((worker, "it answered as Worker"),
                                 (tls_as_tcp, "wants TLS")):  # fmt: skip
            cmd = [*args, "-o", str(out / "w.zarr"), "--scheduler", address,
                   "--cluster-timeout", "5"]  # fmt: skip
            proc, seconds = _stain(cmd)
            assert proc.returncode == 1, (address, proc.stderr)
            line = _one_error_line(proc)
            assert address in line and message in line, line
            assert seconds < baseline + 5 + SLACK, (address, seconds, baseline)
