"""Torch runtime helpers shared by staining, training and evaluation.

Which device a job runs on when none is named, whether a setting that helps on a GPU (bf16
autocast, channels-last memory, ``torch.compile``) is on by default, and the per-process cache
of compiled models. torch is imported inside the functions, so that importing this module (and
``vstain-dask --help``) does not import it.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vstain_dask.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["CompiledOrEager", "compiled", "compiled_or_eager", "default_device", "on_for_cuda",
           "resolve_device"]  # fmt: skip


def default_device() -> str:
    """``"cuda"`` when a CUDA device is present, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device a job runs on.

    Parameters
    ----------
    device : str, torch.device or None
        ``None`` or ``"auto"``: CUDA when present, else the CPU; otherwise a torch device such as
        ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.

    Raises
    ------
    InputError
        When ``device`` is not a device name, or names CUDA where there is none.
    """
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device(default_device())
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(
            "device must be a torch device such as 'cpu', 'cuda' or 'cuda:1' (or 'auto'), "
            f"got {device!r}"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {str(device)!r} was asked for but CUDA is not available; use --device cpu "
            "(device='cpu')"
        )
    return dev


def on_for_cuda(value: bool | None, device: str | torch.device) -> bool:
    """``value`` when given, else whether ``device`` is a CUDA device: the default of the
    settings that pay on a GPU and cost on a CPU (bf16 autocast, channels-last memory,
    ``torch.compile``)."""
    if value is not None:
        return bool(value)
    import torch

    return torch.device(device).type == "cuda"


# -- compiled models ----------------------------------------------------------------------------

#: key -> (model, wrapper): the last few compiled models of this process, so that a model is
#: compiled once per process (per worker); bounded because the entries keep their models alive,
#: and keeping the model also keeps its id from being reused by another object
_COMPILED: OrderedDict[tuple[Any, ...], tuple[Any, Any]] = OrderedDict()
_COMPILED_MAX = 4
_COMPILED_LOCK = threading.RLock()  # compiled_or_eager makes its compiled model inside


def _cached(key: tuple[Any, ...], model: Any, make: Callable[[], Any]) -> Any:
    with _COMPILED_LOCK:
        entry = _COMPILED.get(key)
        if entry is None:
            entry = (model, make())
            _COMPILED[key] = entry
            while len(_COMPILED) > _COMPILED_MAX:
                _COMPILED.popitem(last=False)
        _COMPILED.move_to_end(key)
        return entry[1]


def compiled(model: Callable, backend: str = "inductor") -> Callable:
    """``torch.compile(model, backend=backend)``, made once per model and process.

    Raises
    ------
    InputError
        When ``backend`` is not one of torch.compile's backends.
    """
    import torch

    def make() -> Callable:
        try:
            return torch.compile(model, backend=backend)
        except torch._dynamo.exc.InvalidBackend as e:
            raise InputError(
                f"compile must be True, False or a torch.compile backend name "
                f"({', '.join(torch._dynamo.list_backends())}), got {backend!r}"
            ) from e

    return _cached(("compiled", id(model), backend), model, make)


class CompiledOrEager:
    """The compiled generator, or the eager one for good if compiling fails: the default on
    CUDA, where a node without what the compiler needs (a C compiler for Triton, say) should
    stain at the eager speed rather than not at all. Only the first call can fail to compile
    (the batch shape never changes within a job); an error that is not the compiler's is
    raised again by the eager call."""

    def __init__(self, generator: Callable, compiled: Callable) -> None:
        self.generator = generator
        self.compiled = compiled
        self.failed: str | None = None
        self._lock = threading.Lock()
        self._checked = False

    def __call__(self, x):
        if self._checked:
            return self.generator(x) if self.failed else self.compiled(x)
        with self._lock:
            if not self._checked:
                try:
                    y = self.compiled(x)
                except Exception as e:
                    first = (str(e).splitlines() or [""])[0][:300]
                    self.failed = f"{type(e).__name__}: {first}"
                    warnings.warn(
                        f"torch.compile failed ({self.failed}); staining with the eager "
                        "generator, about 3x slower on a GPU (--no-compile skips the attempt)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    y = self.generator(x)
                self._checked = True
                return y
        return self(x)


def compiled_or_eager(generator: Callable) -> CompiledOrEager:
    """The :class:`CompiledOrEager` of ``generator``, made once per generator and process."""
    return _cached(
        ("compiled-or-eager", id(generator)),
        generator,
        lambda: CompiledOrEager(generator, compiled(generator)),
    )
