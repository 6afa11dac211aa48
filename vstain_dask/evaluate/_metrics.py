"""Image metrics of the paper (SSIM, PSNR, LPIPS), patch sampling and masking.

SSIM and PSNR are scikit-image's, on 8-bit RGB (``data_range=255``, SSIM over the colour axis
with ``channel_axis=-1``). LPIPS is the ``lpips`` package with the SqueezeNet trunk, as in the
paper; its linear layers ship inside the package, its ImageNet trunk weights come from
torchvision's download cache (the torch hub ``checkpoints`` folder).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vstain_dask._validate import check_float, check_int
from vstain_dask.errors import CheckpointError, InputError
from vstain_dask.metrics import psnr, ssim

if TYPE_CHECKING:
    import torch

__all__ = [
    "Metric",
    "sample_patches",
    "patch_coverage",
    "image_metrics",
    "lpips_distance",
    "load_lpips",
    "lpips_weights_path",
    "background_colour",
    "mask_to_background",
]

#: patches per LPIPS forward pass
_LPIPS_BATCH = 16


class Metric(enum.StrEnum):
    """The paper's image-similarity metrics, and which way is better."""

    SSIM = "ssim"  #: structural similarity, higher is better (1 = identical)
    PSNR = "psnr"  #: peak signal-to-noise ratio in dB, higher is better
    LPIPS = "lpips"  #: learned perceptual distance, lower is better (0 = identical)

    @property
    def higher_is_better(self) -> bool:
        return self is not Metric.LPIPS

    @property
    def label(self) -> str:
        return {"ssim": "SSIM", "psnr": "PSNR (dB)", "lpips": "LPIPS"}[self.value]


# -- patches -----------------------------------------------------------------------------------


def _as_mask(mask: Any) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"mask must be a 2D (Y, X) array, got shape {m.shape}")
    if m.dtype != np.bool_:
        if m.dtype.kind not in "biu":
            raise InputError(f"mask must be bool (or 0/1 integers), got {m.dtype}")
        m = m != 0
    return m


def _patch_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    return (min(size, shape[0]), min(size, shape[1]))


def _integral(mask: np.ndarray) -> np.ndarray:
    s = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=s[1:, 1:])
    return s


def _box_sums(s: np.ndarray, ys: np.ndarray, xs: np.ndarray, ph: int, pw: int) -> np.ndarray:
    return s[ys + ph, xs + pw] - s[ys, xs + pw] - s[ys + ph, xs] + s[ys, xs]


def patch_coverage(mask: Any, positions: Any, *, size: int = 256) -> np.ndarray:
    """Fraction of each patch that the mask covers.

    Parameters
    ----------
    mask : (Y, X) bool
    positions : (k, 2) int
        Top-left corners ``(y0, x0)`` in pixels.
    size : int
        Patch side in pixels (clipped to the image, as in :func:`sample_patches`).

    Returns
    -------
    (k,) float64 in [0, 1]
    """
    m = _as_mask(mask)
    ph, pw = _patch_shape(m.shape, int(size))
    pos = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    if len(pos) == 0:
        return np.zeros(0)
    if (
        (pos < 0).any()
        or (pos[:, 0] + ph > m.shape[0]).any()
        or (pos[:, 1] + pw > m.shape[1]).any()
    ):
        raise InputError(f"positions must keep {ph}x{pw} patches inside the {m.shape} mask")
    return _box_sums(_integral(m), pos[:, 0], pos[:, 1], ph, pw) / float(ph * pw)


def _seed_sequence(seed: int | Sequence[int] | str) -> list[int]:
    if isinstance(seed, str):
        return [zlib.crc32(seed.encode())]
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        return [int(seed)]
    if isinstance(seed, Sequence):
        out = []
        for s in seed:
            out += _seed_sequence(s)
        return out
    raise InputError(f"seed must be an integer, a string or a sequence of them, got {seed!r}")


def sample_patches(
    mask: Any,
    *,
    size: int = 256,
    n: int = 50,
    min_coverage: float = 0.5,
    seed: int | Sequence[int | str] = 0,
    max_tries: int | None = None,
) -> np.ndarray:
    """Random patch positions in a slice, keeping those the mask covers enough.

    Positions are drawn uniformly over all places where a ``size`` × ``size`` patch fits in the
    slice (patches are clipped to the slice when it is smaller); a drawn patch covered by the
    mask on less than ``min_coverage`` of its pixels is skipped (the paper: 50 %). Distinct
    positions only; deterministic for a given ``seed``.

    Parameters
    ----------
    mask : (Y, X) bool
        Correspondence mask of the slice.
    size : int
        Patch side in pixels (paper: 256).
    n : int
        Number of patches wanted.
    min_coverage : float
        Smallest accepted covered fraction, in [0, 1].
    seed : int, str or a sequence of them
        Seeds the draw; e.g. ``(seed, pair_id)`` gives each pair its own reproducible patches.
    max_tries : int, optional
        Draws before giving up (default ``100 * n``); fewer than ``n`` patches come back when
        the mask leaves few places.

    Returns
    -------
    (k, 2) int64
        Top-left corners ``(y0, x0)`` in pixels, ``k <= n``, in the order drawn.
    """
    m = _as_mask(mask)
    size = check_int(size, "size", 1)
    n = check_int(n, "n", 0)
    check_float(min_coverage, "min_coverage", minimum=0, maximum=1)
    tries = 100 * int(n) if max_tries is None else int(max_tries)
    rng = np.random.default_rng(_seed_sequence(seed))
    ph, pw = _patch_shape(m.shape, int(size))
    places = _Places(_integral(m), ph, pw, float(min_coverage) * ph * pw)
    if places.count <= max(4 * tries, 4096):
        return places.draw_without_replacement(rng, tries, n)
    return places.draw(rng, tries, n)


@dataclasses.dataclass(frozen=True)
class _Places:
    """The places of a ``ph`` x ``pw`` patch in a slice, and which the mask covers enough
    (``need`` pixels, counted on the mask's integral image ``s``)."""

    s: np.ndarray
    ph: int
    pw: int
    need: float

    @property
    def shape(self) -> tuple[int, int]:
        """Places along y and x."""
        return self.s.shape[0] - self.ph, self.s.shape[1] - self.pw

    @property
    def count(self) -> int:
        ny, nx = self.shape
        return ny * nx

    def covered(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return _box_sums(self.s, ys, xs, self.ph, self.pw) >= self.need - 1e-9

    def draw_without_replacement(self, rng: np.random.Generator, tries: int, n: int) -> np.ndarray:
        """Few places: test them all and draw without replacement."""
        nx = self.shape[1]
        yy, xx = np.divmod(np.arange(self.count), nx)
        ok = self.covered(yy, xx)
        idx = rng.permutation(self.count)[:tries]
        idx = idx[ok[idx]][:n]
        return np.stack([yy[idx], xx[idx]], axis=1).astype(np.int64)

    def draw(self, rng: np.random.Generator, tries: int, n: int) -> np.ndarray:
        """Many places: draw in batches of up to 1024, keep new covered ones, ``tries`` draws
        at most."""
        ny, nx = self.shape
        seen: set[tuple[int, int]] = set()
        out: list[tuple[int, int]] = []
        drawn = 0
        while len(out) < n and drawn < tries:
            k = min(1024, tries - drawn)
            ys = rng.integers(0, ny, size=k)
            xs = rng.integers(0, nx, size=k)
            drawn += k
            ok = self.covered(ys, xs)
            for y, x, good in zip(ys.tolist(), xs.tolist(), ok.tolist(), strict=True):
                if good and (y, x) not in seen:
                    seen.add((y, x))
                    out.append((y, x))
                    if len(out) == n:
                        break
        return np.asarray(out, dtype=np.int64).reshape(-1, 2)


# -- masking -----------------------------------------------------------------------------------


def background_colour(histology: Any, mask: Any | None = None) -> np.ndarray:
    """Mean (R, G, B) background colour of a histology image, for filling outside the mask.

    The slide background is found as :func:`vstain_dask.preprocess.mean_background_colour`
    finds it; when there is none (tissue everywhere), the mean colour outside ``mask``, and
    failing that mid grey.

    Returns
    -------
    (3,) float64, 0-255 units
    """
    from vstain_dask.preprocess import mean_background_colour

    rgb = np.asarray(histology)
    try:
        return mean_background_colour(rgb)
    except InputError:
        if mask is not None:
            outside = ~_as_mask(mask)
            if outside.any():
                return rgb[outside].astype(np.float64).mean(axis=0)
        return np.full(3, 127.5)


def mask_to_background(rgb: Any, mask: Any, colour: Any) -> np.ndarray:
    """``rgb`` with the pixels outside ``mask`` set to ``colour`` (rounded to 8 bits).

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
    mask : (Y, X) bool
    colour : (3,) float, 0-255

    Returns
    -------
    (Y, X, 3) uint8, a new array
    """
    a = np.array(rgb, dtype=np.uint8, copy=True)
    m = _as_mask(mask)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[:2] != m.shape:
        raise InputError(f"rgb must be (Y, X, 3) with the mask's shape {m.shape}, got {a.shape}")
    fill = np.clip(np.rint(np.asarray(colour, dtype=np.float64)), 0, 255).astype(np.uint8)
    a[~m] = fill
    return a


# -- metrics -----------------------------------------------------------------------------------


def _rgb8(name: str, a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise InputError(f"{name} must be a (Y, X, 3) RGB image, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise InputError(f"{name} must be uint8 (8-bit RGB), got {a.dtype}")
    return a


def _to_lpips_input(batch: np.ndarray, device) -> torch.Tensor:
    import torch

    # lpips.im2tensor's mapping: 8-bit -> [-1, 1]
    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    x = x.permute(0, 3, 1, 2) / (255.0 / 2.0) - 1.0
    return x.to(device)


def lpips_distance(
    real: Any, fake: Any, lpips_model: Any, *, batch_size: int = _LPIPS_BATCH
) -> np.ndarray:
    """LPIPS between image pairs.

    Parameters
    ----------
    real, fake : (Y, X, 3) or (N, Y, X, 3) uint8
    lpips_model : lpips.LPIPS
        From :func:`load_lpips`.
    batch_size : int
        Pairs per forward pass.

    Returns
    -------
    (N,) float64
        Distances (0 for identical images), as ``lpips_model(a, b)`` with the images mapped to
        [-1, 1] as ``lpips.im2tensor`` does.
    """
    import torch

    r, f = np.asarray(real), np.asarray(fake)
    if r.ndim == 3:
        r, f = r[None], f[None]
    if r.shape != f.shape or r.ndim != 4 or r.shape[-1] != 3:
        raise InputError(
            f"real and fake must be (N, Y, X, 3) of one shape, got {r.shape}, {f.shape}"
        )
    device = next(lpips_model.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(r), batch_size):
            d = lpips_model(_to_lpips_input(r[i : i + batch_size], device),
                            _to_lpips_input(f[i : i + batch_size], device))  # fmt: skip
            out.append(d.reshape(-1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def image_metrics(real: Any, fake: Any, *, lpips_model: Any | None = None) -> dict[str, float]:
    """SSIM, PSNR and LPIPS of one image against its reference.

    Parameters
    ----------
    real, fake : (Y, X, 3) uint8
        Reference (histology) and test image (virtual stain), same shape.
    lpips_model : lpips.LPIPS, optional
        From :func:`load_lpips`; LPIPS is NaN without one.

    Returns
    -------
    dict
        ``ssim`` (skimage ``structural_similarity(real, fake, channel_axis=-1,
        data_range=255)``), ``psnr`` (skimage ``peak_signal_noise_ratio(real, fake,
        data_range=255)``, dB; inf for identical images) and ``lpips``.
    """
    r, f = _rgb8("real", real), _rgb8("fake", fake)
    if r.shape != f.shape:
        raise InputError(f"real and fake must have one shape, got {r.shape} and {f.shape}")
    return {
        Metric.SSIM.value: ssim(r, f),
        Metric.PSNR.value: psnr(r, f),
        Metric.LPIPS.value: (
            float(lpips_distance(r, f, lpips_model)[0]) if lpips_model is not None else float("nan")
        ),
    }


def patch_metrics(
    real: np.ndarray,
    fake: np.ndarray,
    positions: np.ndarray,
    *,
    size: int = 256,
    lpips_model: Any | None = None,
) -> dict[str, np.ndarray]:
    """SSIM, PSNR and LPIPS on each patch of an image pair.

    Parameters
    ----------
    real, fake : (Y, X, 3) uint8
    positions : (k, 2) int
        Top-left corners ``(y0, x0)`` (from :func:`sample_patches`).
    size : int
        Patch side, clipped to the image as in :func:`sample_patches`.
    lpips_model : lpips.LPIPS, optional

    Returns
    -------
    dict of (k,) float64 arrays, keyed ``ssim``, ``psnr``, ``lpips`` (NaN without a model)
    """
    r, f = _rgb8("real", real), _rgb8("fake", fake)
    ph, pw = _patch_shape(r.shape[:2], size)
    pos = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    rp = (
        np.stack([r[y : y + ph, x : x + pw] for y, x in pos])
        if len(pos)
        else np.zeros((0, ph, pw, 3), np.uint8)
    )
    fp = (
        np.stack([f[y : y + ph, x : x + pw] for y, x in pos])
        if len(pos)
        else np.zeros((0, ph, pw, 3), np.uint8)
    )
    out = {
        Metric.SSIM.value: np.array([ssim(a, b) for a, b in zip(rp, fp, strict=True)]),
        Metric.PSNR.value: np.array([psnr(a, b) for a, b in zip(rp, fp, strict=True)]),
    }
    if lpips_model is not None and len(pos):
        out[Metric.LPIPS.value] = lpips_distance(rp, fp, lpips_model)
    else:
        out[Metric.LPIPS.value] = np.full(len(pos), np.nan)
    return out


# -- LPIPS -------------------------------------------------------------------------------------


def lpips_weights_path() -> tuple[Path, str]:
    """Where torchvision keeps the ImageNet SqueezeNet 1.1 weights that LPIPS needs.

    Returns
    -------
    (pathlib.Path, str)
        The file in the torch hub cache (``$TORCH_HOME/hub/checkpoints/``, by default
        ``~/.cache/torch/hub/checkpoints/``) and the URL torchvision downloads it from.
    """
    import torch
    from torchvision.models import SqueezeNet1_1_Weights

    url = SqueezeNet1_1_Weights.IMAGENET1K_V1.url
    name = os.path.basename(url.split("?")[0])
    return Path(torch.hub.get_dir()) / "checkpoints" / name, url


def _missing_message(path: Path, url: str) -> str:
    return (
        f"LPIPS needs torchvision's ImageNet SqueezeNet weights, which are not in the torch hub "
        f"cache and could not be downloaded: put {path.name} (from {url}) into {path.parent}/ "
        "(the folder follows TORCH_HOME), or skip LPIPS (--no-lpips; EvalConfig(lpips=False) in Python)"
    )


def load_lpips(
    *,
    device: str | torch.device = "cpu",
    random_backbone: bool = False,
    download: bool = True,
) -> Any:
    """The LPIPS metric with the SqueezeNet trunk, as in the paper.

    The linear layers (``lpips/weights/v0.1/squeeze.pth``) ship inside the ``lpips`` package; the
    SqueezeNet trunk's ImageNet weights are torchvision's, read from the torch hub cache (and
    downloaded there by torchvision when missing and ``download`` is True).

    Parameters
    ----------
    device : torch device
    random_backbone : bool
        Use a randomly initialised trunk with the real linear layers (``pnet_rand=True``):
        for tests on machines without the ImageNet weights; the values are not LPIPS.
    download : bool
        Let torchvision download missing weights; when False, missing weights fail at once.

    Returns
    -------
    lpips.LPIPS
        In eval mode on ``device``.

    Raises
    ------
    CheckpointError
        The trunk weights are missing (saying which file to put where) or damaged.
    """
    import lpips

    path, url = lpips_weights_path()
    if not random_backbone and not path.exists() and not download:
        raise CheckpointError(_missing_message(path, url))
    with warnings.catch_warnings():
        # lpips builds torchvision's SqueezeNet with the old ``pretrained=`` argument; the
        # deprecation notices are about lpips' code and tell a user nothing
        warnings.filterwarnings(
            "ignore", message="The parameter 'pretrained' is deprecated", category=UserWarning
        )
        warnings.filterwarnings(
            "ignore", message="Arguments other than a weight enum", category=UserWarning
        )
        try:
            model = lpips.LPIPS(net="squeeze", pnet_rand=bool(random_backbone), verbose=False)
        except OSError as e:  # urllib's URLError is an OSError: no network, no proxy
            raise CheckpointError(_missing_message(path, url)) from e
        except RuntimeError as e:
            raise CheckpointError(
                f"the SqueezeNet weights {path} could not be read ({' '.join(str(e).split())}); "
                f"delete the file and put a fresh copy from {url} there, or skip LPIPS with "
                "--no-lpips (lpips=False)"
            ) from e
    return model.eval().requires_grad_(False).to(device)
