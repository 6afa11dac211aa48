"""Counter-based hashing and procedural noise evaluated from global coordinates.

Everything here is a pure function of its inputs (coordinates, integer keys): there is no random
state, so any block of a phantom can be generated alone and gives the same values as the same
voxels generated inside any other block.

Coordinates are passed as a tuple of float arrays that broadcast against each other. When they
form an *open grid* (each array varies along one distinct axis, as with ``np.ix_``), the noise is
evaluated separably, which is what makes 256³ blocks cheap; any other layout (for example the
points of an oblique plane) is evaluated point by point. Both give the same field.
"""

from __future__ import annotations

import numpy as np

__all__: list[str] = []

_M64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN = 0x9E3779B97F4A7C15
# standard deviation of a cubic B-spline interpolation of i.i.d. uniform[-1, 1] lattice values:
# mean over a cell of sum(w_t**2) is 151/315 per axis, and var(uniform[-1, 1]) = 1/3
_BSPLINE_VAR_1D = 151.0 / 315.0


def mix64(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on a uint64 array (wrapping arithmetic, a new array)."""
    h = np.array(h, dtype=np.uint64, ndmin=1, copy=True)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def derive_key(*parts: int) -> int:
    """A 64-bit key from integers (seed, stream numbers), as a Python int."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = int(mix64(np.array([(h + _GOLDEN + (int(p) & _M64)) & _M64], dtype=np.uint64))[0])
    return h


def hash_ints(key: int, *ints: np.ndarray) -> np.ndarray:
    """Hash integer arrays (broadcast together) with a key into uint64 values."""
    h = np.array([key & _M64], dtype=np.uint64)
    for i in ints:
        a = np.asarray(i)
        if a.dtype != np.int64:
            a = a.astype(np.int64)
        h = mix64(h + a.astype(np.uint64) + np.uint64(_GOLDEN))
    return h


def uniform(h: np.ndarray, k: int = 0) -> np.ndarray:
    """The ``k``-th (0..3) 16-bit slice of a uint64 hash as float32 uniform in [0, 1)."""
    v = (h >> np.uint64(16 * k)) & np.uint64(0xFFFF)
    return v.astype(np.float32) * np.float32(1.0 / 65536.0)


def _bspline_weights(f: np.ndarray) -> list[np.ndarray]:
    """Cubic B-spline weights for lattice offsets -1, 0, 1, 2 at fractional position ``f``."""
    f2 = f * f
    f3 = f2 * f
    return [
        ((1.0 - f) ** 3 / 6.0).astype(np.float32),
        ((3.0 * f3 - 6.0 * f2 + 4.0) / 6.0).astype(np.float32),
        ((-3.0 * f3 + 3.0 * f2 + 3.0 * f + 1.0) / 6.0).astype(np.float32),
        (f3 / 6.0).astype(np.float32),
    ]


def _varying_axis(a: np.ndarray) -> int | None:
    axes = [i for i, n in enumerate(a.shape) if n > 1]
    if len(axes) > 1:
        return -1
    return axes[0] if axes else None


def is_open_grid(coords: tuple[np.ndarray, ...]) -> bool:
    """True when each coordinate array varies along at most one axis, all distinct."""
    ndim = max(np.ndim(c) for c in coords)
    seen: set[int] = set()
    for c in coords:
        if np.ndim(c) != ndim:
            return False
        ax = _varying_axis(np.asarray(c))
        if ax == -1 or (ax is not None and ax in seen):
            return False
        if ax is not None:
            seen.add(ax)
    return True


def _lattice(key: int, idx: list[np.ndarray]) -> np.ndarray:
    """Uniform [-1, 1) float32 lattice values on the open grid of integer indices ``idx``."""
    d = len(idx)
    grids = [i.reshape([-1 if a == k else 1 for a in range(d)]) for k, i in enumerate(idx)]
    h = hash_ints(key, *grids)
    return ((h >> np.uint64(40)).astype(np.float32) * np.float32(2.0 / (1 << 24))) - np.float32(1.0)


def value_noise(coords: tuple[np.ndarray, ...], *, cell: float, key: int) -> np.ndarray:
    """Smooth random field of about unit standard deviation, zero mean.

    Cubic B-spline interpolation of hashed lattice values (lattice spacing ``cell``, same unit as
    ``coords``).

    Parameters
    ----------
    coords : tuple of d float arrays (d = 1, 2 or 3) that broadcast together
        Positions, any unit.
    cell : float
        Lattice spacing in the unit of ``coords``; features are about ``cell`` wide.
    key : int
        Stream key (from :func:`derive_key`); different keys give independent fields.

    Returns
    -------
    np.ndarray of float32, the broadcast shape of ``coords``.
    """
    coords = tuple(np.asarray(c, dtype=np.float64) for c in coords)
    shape = np.broadcast_shapes(*(c.shape for c in coords))
    scale = np.float32(1.0 / np.sqrt(_BSPLINE_VAR_1D ** len(coords) / 3.0))
    if is_open_grid(coords) and len(shape) >= 1:
        out = _value_noise_grid(coords, cell, key, shape)
    else:
        out = _value_noise_points(coords, cell, key, shape)
    out *= scale
    return out


def _value_noise_grid(coords, cell, key, shape) -> np.ndarray:
    d = len(coords)
    axes = [_varying_axis(c) for c in coords]
    starts, offsets, weights, flat = [], [], [], []
    for c in coords:
        u = c.reshape(-1) / cell
        fl = np.floor(u)
        i0 = fl.astype(np.int64) - 1
        lo = int(i0.min())
        starts.append(lo)
        offsets.append(i0 - lo)
        weights.append(_bspline_weights(u - fl))
        flat.append(int(i0.max()) - lo + 4)
    values = _lattice(
        key, [np.arange(s, s + n, dtype=np.int64) for s, n in zip(starts, flat, strict=True)]
    )
    # contract one lattice axis at a time; the order of operations at each output voxel depends
    # only on its global position, so any block gives the same bytes
    last = 1 if d >= 2 else 0
    for k in reversed(range(last, d)):
        off, w = offsets[k], weights[k]
        bshape = [1] * d
        bshape[k] = -1
        acc = np.take(values, off, axis=k)
        acc *= w[0].reshape(bshape)
        for t in range(1, 4):
            term = np.take(values, off + t, axis=k)
            term *= w[t].reshape(bshape)
            acc += term
        values = acc
    if last == 1:
        # the largest contraction, plane by plane: no gathers of full-size arrays
        off, w = offsets[0], weights[0]
        out = np.empty((off.size,) + values.shape[1:], dtype=np.float32)
        tmp = np.empty(values.shape[1:], dtype=np.float32)
        for i in range(off.size):
            j = int(off[i])
            o = out[i]
            np.multiply(values[j], w[0][i], out=o)
            for t in range(1, 4):
                np.multiply(values[j + t], w[t][i], out=tmp)
                o += tmp
        values = out
    # `values` has one axis per coordinate (length 1 for a constant one); move each varying
    # one to the output axis it varies along
    keep = [k for k in range(d) if axes[k] is not None]
    values = values.reshape([values.shape[k] for k in keep])
    order = sorted(range(len(keep)), key=lambda i: axes[keep[i]])
    values = np.transpose(values, order)
    full = [1] * len(shape)
    for k in keep:
        full[axes[k]] = shape[axes[k]]
    values = values.reshape(full)
    if values.shape == tuple(shape):
        return np.ascontiguousarray(values, dtype=np.float32)
    return np.array(np.broadcast_to(values, shape), dtype=np.float32)


# above this many lattice values the point path hashes corners directly instead of tabulating
_MAX_TABLE = 4_000_000


def _value_noise_points(coords, cell, key, shape) -> np.ndarray:
    d = len(coords)
    cs = [np.broadcast_to(c, shape).reshape(-1) for c in coords]
    i0s, ws = [], []
    for c in cs:
        u = c / cell
        fl = np.floor(u)
        i0s.append(fl.astype(np.int64) - 1)
        ws.append(_bspline_weights(u - fl))
    los = [int(i.min()) if i.size else 0 for i in i0s]
    ns = [int(i.max()) - lo + 4 if i.size else 4 for i, lo in zip(i0s, los, strict=True)]
    table = None
    if int(np.prod(ns)) <= _MAX_TABLE:
        table = _lattice(
            key, [np.arange(lo, lo + n, dtype=np.int64) for lo, n in zip(los, ns, strict=True)]
        )
    out = np.zeros(cs[0].shape, dtype=np.float32)
    if table is not None:
        # flat index of each point's first corner; every tap is a constant offset from it
        strides = [int(np.prod(ns[k + 1 :])) for k in range(d)]
        base = np.zeros(cs[0].shape, dtype=np.int64)
        for k in range(d):
            base += (i0s[k] - los[k]) * strides[k]
        flat = table.reshape(-1)
        outer = list(np.ndindex(*([4] * (d - 1))))
        for taps in outer:
            off = sum(t * strides[k] for k, t in enumerate(taps))
            part = np.zeros(cs[0].shape, dtype=np.float32)
            for t in range(4):
                v = np.take(flat, base + (off + t * strides[d - 1]))
                v *= ws[d - 1][t]
                part += v
            for k, t in enumerate(taps):
                part *= ws[k][t]
            out += part
        return out.reshape(shape)
    for taps in np.ndindex(*([4] * d)):
        w = ws[0][taps[0]].copy()
        for k in range(1, d):
            w *= ws[k][taps[k]]
        h = hash_ints(key, *[i0s[k] + taps[k] for k in range(d)])
        v = ((h >> np.uint64(40)).astype(np.float32) * np.float32(2.0 / (1 << 24))) - 1.0
        w *= v
        out += w
    return out.reshape(shape)


def fbm(
    coords: tuple[np.ndarray, ...], *, cell: float, key: int, octaves: int = 2, gain: float = 0.5
) -> np.ndarray:
    """Sum of ``octaves`` value-noise fields at halving cell sizes, normalized to unit std."""
    out = value_noise(coords, cell=cell, key=key)
    norm = 1.0
    amp = 1.0
    for o in range(1, octaves):
        amp *= gain
        out += np.float32(amp) * value_noise(coords, cell=cell / 2**o, key=derive_key(key, o))
        norm += amp * amp
    out *= np.float32(1.0 / np.sqrt(norm))
    return out


def gaussian_white(key: int, *idx: np.ndarray) -> np.ndarray:
    """Approximately standard normal white noise from integer voxel indices (open grid allowed).

    Each axis index is hashed alone (cheap, 1D), the per-axis hashes are combined and mixed once
    more per voxel in 32-bit arithmetic, and four bytes of the result are summed (Irwin–Hall).
    """
    parts = []
    for k, i in enumerate(idx):
        h = hash_ints(derive_key(key, k), np.asarray(i))
        parts.append((h & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    h32 = parts[0]
    for p in parts[1:]:
        h32 = h32 ^ p
        h32 *= np.uint32(0x9E3779B1)
    full = np.broadcast_shapes(*(p.shape for p in parts))
    h32 = np.array(np.broadcast_to(h32, full), dtype=np.uint32, copy=True)
    h32 ^= h32 >> np.uint32(16)
    h32 *= np.uint32(0x7FEB352D)
    h32 ^= h32 >> np.uint32(15)
    h32 *= np.uint32(0x846CA68B)
    h32 ^= h32 >> np.uint32(16)
    b = h32.view(np.uint8).reshape(h32.shape + (4,))
    s = b[..., 0].astype(np.float32)
    s += b[..., 1]
    s += b[..., 2]
    s += b[..., 3]
    # sum of four uniform {0..255}: mean 510, variance 4 * (256**2 - 1) / 12
    s -= np.float32(510.0)
    s *= np.float32(1.0 / np.sqrt(4 * (256**2 - 1) / 12.0))
    return s
