"""The patch stream: random, augmented crops read straight from a pairs store.

Each epoch draws ``patches_per_pair`` patches from every pair. A patch is a pure function of
``(seed, epoch, index)``: its pair is ``index // patches_per_pair`` and its crop, rescale, flips
and jitter come from ``numpy.random.default_rng([seed, 1, epoch, index])``. The order of the
patches within an epoch is a seeded permutation. So the stream is the same for any number of
worker processes, and a resumed run sees exactly the patches the interrupted one would have.

Only the window a patch needs is read (``zarr_array[y0:y1, x0:x1]``, which touches only the
chunks it overlaps); with ``cache=True`` each worker process keeps whole pairs in memory after
their first use instead, which is faster for small data sets.

A sample is a dict of tensors::

    ct         (1, P, P) float32 in [-1, 1]   normalized CT in network units (see below)
    histology  (3, P, P) float32 in [-1, 1]   normalized R, G, B
    mask       (1, P, P) float32, 0 or 1      correspondence mask
    pair       () int64                       index of the pair in the dataset
    key        () int64                       epoch * len(dataset) + index

CT in network units: the raw crop is normalized as the paper does (bone and background means to
30000 and 10000, clipped to 0-65535) and then mapped by the model's
:class:`~vstain_dask.models.InputNormalization` (``low``, ``high``, ``invert``); the trainer
repeats it to the model's channels. The stain engine feeds volumes through the same two steps.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vstain_dask import intensity
from vstain_dask.errors import InputError, VolumeFormatError
from vstain_dask.models.config import InputNormalization
from vstain_dask.train.augment import (
    AugmentConfig,
    draw_geometry,
    draw_jitter,
    jitter_ct,
    jitter_histology,
    resample,
)
from vstain_dask.train.prepare import PairLevels, pair_levels

__all__ = [
    "PairInfo",
    "scan_pairs",
    "PatchDataset",
    "EpochBatches",
    "make_loader",
    "measure_stream",
]


@dataclasses.dataclass(frozen=True)
class PairInfo:
    """One pair of a store, with the normalization it is trained with.

    Attributes
    ----------
    id, material, sample : str
    role : str or None
    shape : (Y, X)
    voxel_size : float, µm
    levels : PairLevels
    """

    id: str
    material: str
    sample: str
    role: str | None
    shape: tuple[int, int]
    voxel_size: float
    levels: PairLevels


def _open_root(source: Any):
    """The root group of a pairs store given as a path or as a zarr store object."""
    import zarr

    if isinstance(source, str | os.PathLike):
        from vstain_dask.pairs import list_pairs

        list_pairs(source)  # validates the store and says what is wrong with it
        return zarr.open_group(str(Path(source).expanduser()), mode="r")
    try:
        root = zarr.open_group(store=source, mode="r")
    except Exception as e:  # zarr raises several kinds for "not a group"
        raise VolumeFormatError(f"{source!r} is not a zarr group of pairs: {e}") from e
    if "vstain_pairs" not in root.attrs:
        raise VolumeFormatError(f"{source!r} is a zarr group but not a pairs store")
    return root


def scan_pairs(
    source: Any,
    *,
    ids: Sequence[str] | None = None,
    histology_normalization: bool = True,
) -> list[PairInfo]:
    """Describe the pairs of a store and find their normalization.

    Levels recorded in a pair's attributes are used as they are; for other pairs (phantom
    pairs, for one) they are estimated here, which reads that pair's images once.

    Parameters
    ----------
    source : path or zarr store
        The pairs store.
    ids : sequence of str, optional
        Only these pairs, in this order (default: all, sorted by id).
    histology_normalization : bool
        Normalize histology as the paper does (white balance and stretch).

    Returns
    -------
    list of PairInfo
    """
    root = _open_root(source)
    available = sorted(root.group_keys())
    if ids is None:
        ids = available
    missing = [i for i in ids if i not in available]
    if missing:
        raise InputError(f"pairs {missing} are not in the store; it holds {available}")
    out = []
    for pid in ids:
        g = root[pid]
        attrs = dict(g.attrs)
        levels = pair_levels(
            g["ct"],
            g["histology"],
            attrs=attrs,
            material=attrs.get("material"),
            histology_normalization=histology_normalization,
        )
        if not histology_normalization:
            levels = PairLevels(ct=levels.ct, histology=None)
        shape = tuple(int(n) for n in g["ct"].shape)
        out.append(
            PairInfo(
                id=pid,
                material=str(attrs.get("material")),
                sample=str(attrs.get("sample")),
                role=attrs.get("role"),
                shape=(shape[0], shape[1]),
                voxel_size=float(attrs.get("voxel_size", 0.0)),
                levels=levels,
            )
        )
    return out


def _normalize_ct(raw: np.ndarray, levels: PairLevels, norm: InputNormalization) -> np.ndarray:
    """Raw CT values -> network units, as the stain engine computes them (float32)."""
    ct = raw.astype(np.float32, copy=False)
    v = intensity.ct_to_paper_units(ct, levels.ct.bone, levels.ct.background)
    return intensity.network_input(v, low=norm.low, high=norm.high, invert=norm.invert)


def _normalize_histology(rgb: np.ndarray, levels: PairLevels) -> np.ndarray:
    """Raw (3, H, W) RGB (0-255) -> [0, 1], white-balanced and stretched as recorded."""
    h = levels.histology
    f = np.asarray(rgb, dtype=np.float32)
    if h is not None:
        gains = np.asarray(h.gains, dtype=np.float32)[:, None, None]
        f = (f * gains - np.float32(h.lower)) * np.float32(255.0 / (h.upper - h.lower))
    else:
        f = f.copy()
    np.clip(f, 0.0, 255.0, out=f)
    f *= np.float32(1.0 / 255.0)
    return f


class PatchDataset(Dataset):
    """Augmented random patches of the pairs of a store (see the module docstring).

    ``len(dataset)`` is the number of patches per epoch; item ``epoch * len(dataset) + index``
    is patch ``index`` of ``epoch`` (:class:`EpochBatches` yields such keys).

    Parameters
    ----------
    source : path or zarr store
        The pairs store.
    pairs : sequence of PairInfo
        The pairs to draw from (from :func:`scan_pairs`).
    patch_size : int
        Side of the square patches, pixels.
    patches_per_pair : int
        Patches drawn from each pair per epoch.
    normalization : InputNormalization
        Mapping of normalized CT to network units (``channels`` is ignored: samples have one
        CT channel).
    augment : AugmentConfig
    seed : int
    cache : bool
        Keep whole pairs in memory (per process) after their first use instead of reading
        windows.
    """

    def __init__(
        self,
        source: Any,
        pairs: Sequence[PairInfo],
        *,
        patch_size: int = 256,
        patches_per_pair: int = 100,
        normalization: InputNormalization | None = None,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        if not pairs:
            raise InputError("the dataset needs at least one pair; the split left none to train on")
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 8:
            raise InputError(f"patch_size must be an integer >= 8 pixels, got {patch_size!r}")
        if (
            isinstance(patches_per_pair, bool)
            or not isinstance(patches_per_pair, int)
            or patches_per_pair < 1
        ):
            raise InputError(
                f"patches_per_pair must be a positive integer, got {patches_per_pair!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        small = [p.id for p in pairs if min(p.shape) < patch_size]
        if small:
            raise InputError(
                f"patch_size {patch_size} is larger than pair(s) {small[:5]}; use a smaller "
                "--patch-size (patch_size=)"
            )
        self.source = source
        self.pairs = list(pairs)
        self.patch_size = patch_size
        self.patches_per_pair = patches_per_pair
        self.normalization = normalization or InputNormalization()
        self.augment = augment or AugmentConfig()
        self.seed = seed
        self.cache = bool(cache)
        self._arrays: dict[int, tuple[Any, Any, Any]] | None = None
        self._memory: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.pairs) * self.patches_per_pair

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = None  # zarr handles are opened again in each process
        state["_memory"] = {}
        return state

    def _pair_arrays(self, i: int) -> tuple[Any, Any, Any]:
        if self._arrays is None:
            self._arrays = {}
            root = _open_root_quiet(self.source)
            for k, p in enumerate(self.pairs):
                g = root[p.id]
                self._arrays[k] = (g["ct"], g["histology"], g["mask"])
        return self._arrays[i]

    def _window(self, i: int, rows: slice, cols: slice) -> tuple[np.ndarray, ...]:
        if self.cache:
            if i not in self._memory:
                self._memory[i] = tuple(np.asarray(a[...]) for a in self._pair_arrays(i))
            ct, hist, mask = self._memory[i]
            return ct[rows, cols], hist[rows, cols], mask[rows, cols]
        ct, hist, mask = self._pair_arrays(i)
        return ct[rows, cols], hist[rows, cols, :], mask[rows, cols]

    def sample(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        """Patch ``index`` (0 <= index < len) of ``epoch``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index must be in 0..{len(self) - 1}, got {index}")
        i = index // self.patches_per_pair
        pair = self.pairs[i]
        rng = np.random.default_rng([self.seed, 1, int(epoch), int(index)])
        geo = draw_geometry(rng, pair.shape, self.patch_size, self.augment)
        jit = draw_jitter(rng, self.augment)
        rows, cols = geo.slices
        ct, hist, mask = self._window(i, rows, cols)
        # CT and histology share one bilinear resampling: 4 channels, channels first
        stack = np.empty((4, geo.window, geo.window), dtype=np.float32)
        stack[0] = ct
        stack[1:] = np.moveaxis(np.asarray(hist), -1, 0)
        stack = resample(stack, geo)
        x = jitter_ct(_normalize_ct(stack[0], pair.levels, self.normalization), jit)
        rgb = jitter_histology(_normalize_histology(stack[1:], pair.levels), jit)
        m = resample(np.asarray(mask, dtype=bool), geo, nearest=True)
        return {
            "ct": torch.from_numpy(x)[None],
            "histology": torch.from_numpy(rgb * np.float32(2.0) - np.float32(1.0)),
            "mask": torch.from_numpy(m.astype(np.float32))[None],
            "pair": torch.tensor(i, dtype=torch.int64),
            "key": torch.tensor(int(epoch) * len(self) + int(index), dtype=torch.int64),
        }

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        epoch, index = divmod(int(key), len(self))
        return self.sample(epoch, index)


def _open_root_quiet(source: Any):
    import zarr

    if isinstance(source, str | os.PathLike):
        return zarr.open_group(str(Path(source).expanduser()), mode="r")
    return zarr.open_group(store=source, mode="r")


class EpochBatches(Sampler):
    """Batches of dataset keys for epochs ``start .. stop - 1``, shuffled per epoch (seeded).

    Epoch ``e`` is a permutation (``default_rng([seed, 2, e])``) of ``0 .. n - 1`` cut into
    batches of ``batch_size`` (the last one may be shorter); each index ``i`` is yielded as the
    key ``e * n + i``.
    """

    def __init__(self, n: int, *, batch_size: int, seed: int, start: int, stop: int) -> None:
        if n < 1 or batch_size < 1 or stop < start:
            raise InputError(f"bad epoch batches: n={n}, batch_size={batch_size}, {start}..{stop}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop = start, stop

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        perm = np.random.default_rng([self.seed, 2, int(epoch)]).permutation(self.n)
        keys = perm + epoch * self.n
        return [
            [int(k) for k in keys[i : i + self.batch_size]]
            for i in range(0, self.n, self.batch_size)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        for e in range(self.start, self.stop):
            yield from self.epoch_batches(e)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.batches_per_epoch


def _worker_init(_: int) -> None:
    # one thread per loader process: the processes are the parallelism
    torch.set_num_threads(1)


def _can_fork_workers() -> bool:
    # daemonic processes (dask worker processes, by default) may not start children
    return not multiprocessing.current_process().daemon


def make_loader(
    dataset: PatchDataset,
    *,
    batch_size: int = 4,
    workers: int = 2,
    start_epoch: int = 0,
    epochs: int = 1,
    pin_memory: bool = False,
    prefetch: int = 4,
) -> DataLoader:
    """A DataLoader over epochs ``start_epoch .. epochs - 1`` of ``dataset``.

    One loader (and one set of worker processes) serves all epochs; batches never cross an
    epoch boundary. In a daemonic process (a dask worker) loader processes cannot be started
    and the patches are read in the calling process.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputError(f"workers must be an integer >= 0, got {workers!r}")
    if workers and not _can_fork_workers():
        workers = 0
    sampler = EpochBatches(
        len(dataset), batch_size=batch_size, seed=dataset.seed, start=start_epoch, stop=epochs
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=prefetch if workers else None,
        persistent_workers=False,
        # the loader's own generator: creating an iterator must not draw from the global RNG,
        # or a resumed run's dropout masks would differ from an uninterrupted run's
        generator=torch.Generator().manual_seed(dataset.seed),
    )


def measure_stream(
    dataset: PatchDataset,
    *,
    batch_size: int = 4,
    workers: int = 2,
    batches: int = 50,
) -> dict[str, float]:
    """Samples per second of the patch stream alone (no network), after a warm-up batch.

    Returns
    -------
    dict
        ``samples_per_s``, ``batches``, ``seconds``, ``workers``.
    """
    n_epochs = max(1, math.ceil((batches + 1) * batch_size / len(dataset)) + 1)
    loader = make_loader(dataset, batch_size=batch_size, workers=workers, epochs=n_epochs)
    it = iter(loader)
    next(it)  # start-up of the worker processes is not throughput
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        n += int(batch["ct"].shape[0])
    dt = time.perf_counter() - t0
    del it
    return {
        "samples_per_s": n / dt if dt > 0 else float("inf"),
        "batches": batches,
        "seconds": dt,
        "workers": workers,
    }
