"""Interactive viewers of vstain-dask volumes and stains.

- :mod:`.napari`: the napari plugin (an npe2 reader declared in ``napari.yaml``) and
  :func:`~vstain_dask.viewers.napari.open_in_napari`;
- :mod:`.neuroglancer`: neuroglancer states and a local server (``vstain-dask view --neuroglancer``).

Each viewer is imported lazily by its module: importing this package needs neither napari nor a
Qt binding.
"""
