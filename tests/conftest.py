"""Shared fixtures: a real two-worker distributed cluster and small on-disk stores."""

from __future__ import annotations

import signal

import pytest

# Several tests press Ctrl-C on a command they start (SIGINT to the child). A shell that starts
# pytest as a background job without job control makes it ignore SIGINT, and children inherit
# that, so the command would never see the Ctrl-C: give the children the normal behaviour back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def cluster():
    """A real LocalCluster with 2 worker processes, 1 thread each, on loopback."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        memory_limit="4GiB",
    ) as cl:
        yield cl


@pytest.fixture
def client(cluster):
    """A client on the shared two-worker cluster."""
    from distributed import Client

    with Client(cluster) as c:
        yield c


@pytest.fixture(scope="session")
def slurm():
    """A real single-node SLURM (munge, slurmctld, slurmd on 127.0.0.1), started for the tests.

    Skips with the reason when it cannot run here: not root, or SLURM not installed (``.ci/run``
    installs it with apt). Stops only the daemons it started itself.
    """
    import os
    import shutil
    import subprocess
    from pathlib import Path

    if os.geteuid() != 0:
        pytest.skip("single-node SLURM needs root to start munged/slurmctld/slurmd")
    if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed (apt-get install slurmctld slurmd slurm-client munge)")
    here = Path(__file__).parent / "slurm"
    already = subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
    proc = subprocess.run(
        ["bash", str(here / "start_slurm.sh")], capture_output=True, text=True, timeout=120
    )
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, f"SLURM did not start: {proc.stderr}"
    yield {"queue": "debug", "interface": "lo"}
    if not already:
        subprocess.run(["bash", str(here / "stop_slurm.sh")], capture_output=True, timeout=60)


# -- a tiny real model and a small CT volume, shared by the stain tests ----------------------------

TINY_SHAPE = (10, 40, 36)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    """A real checkpoint of a tiny, randomly initialised 1-channel ResNet generator."""
    import torch

    from vstain_dask.models import GeneratorConfig, InputNormalization, build_generator, save_model

    torch.manual_seed(0)
    gen = build_generator(GeneratorConfig(in_channels=1, ngf=4, n_blocks=1), seed=0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(
        path,
        generator=gen,
        normalization=InputNormalization(low=0.0, high=4000.0, channels=1, ct_normalized=False),
        variant="mod-cyclegan",
        pixel_size=5.0,  # the `ct` volume's voxel size
    )
    return path


@pytest.fixture(scope="session")
def ct(tmp_path_factory):
    """A smooth random uint16 volume with structure at several scales, as OME-Zarr."""
    import numpy as np
    from scipy import ndimage

    from vstain_dask import ngff

    rng = np.random.default_rng(1)
    vol = ndimage.gaussian_filter(rng.normal(size=TINY_SHAPE), 2.0)
    vol = (vol - vol.min()) / np.ptp(vol) * 3000 + 500 + rng.normal(0, 30, TINY_SHAPE)
    vol = vol.astype(np.uint16)
    path = tmp_path_factory.mktemp("ct") / "ct.ome.zarr"
    ngff.write_volume(
        vol, path, axes="zyx", scale=(5.0, 5.0, 5.0), units="micrometer", chunks=(5, 16, 16)
    )
    return path, vol


# -- the stain's own record of finished blocks -------------------------------------------------


@pytest.fixture
def stain_ledger():
    """``records(output) -> set[str]``: the finished-block records of the stain job writing
    ``output``, read as the stain reads them when it resumes (empty before the job starts and
    after it completed, when the ledger is removed)."""
    from pathlib import Path

    from vstain_dask.stain import _Ledger

    def records(output) -> set[str]:
        return _Ledger(Path(output)).done()

    return records
