"""``python -m vstain_dask.cli`` runs the command line (same as ``vstain-dask``)."""

from vstain_dask.cli import main

main()
