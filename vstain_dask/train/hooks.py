"""What a training run does around its steps: the hooks of :func:`~vstain_dask.train.trainer.fit`.

The loop calls each hook, in the order given, at defined points::

    on_fit_start(run)
    for each epoch:  on_epoch_start(run, epoch)
        for each step:  [on_log(run, epoch, step, losses) every log_every steps]  on_step_end(run)
        on_epoch_end(run, row)        row: the epoch's entry of run.history
    on_fit_end(run)                   also when the loop stops with an error

``epoch`` and ``step`` are 0-based; ``losses`` are the last step's ``[*components, G, D]``.
A hook may add to ``row`` (validation does) for the hooks after it. The hooks of a run, in
order: :class:`ProgressBar`, :class:`StepLog`, :class:`Validation`, :class:`MinimumCheckpoints`,
:class:`LastCheckpoint` (also what ``--resume`` restores), :class:`LossLog`, :class:`LossPlot`
and :class:`EpochCallback`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vstain_dask.train.config import TrainConfig

__all__ = [
    "Run",
    "Hook",
    "ProgressBar",
    "StepLog",
    "Validation",
    "MinimumCheckpoints",
    "LastCheckpoint",
    "LossLog",
    "LossPlot",
    "EpochCallback",
]

LAST = "last.pt"


@dataclasses.dataclass
class Run:
    """The state of a training run that the loop and its hooks share.

    Attributes
    ----------
    config : TrainConfig
    trainer
        The networks, optimizers, schedulers and buffers, and their step
        (``vstain_dask.train.trainer._Trainer``).
    run_dir : Path
    split : dict
        The run's split (:meth:`Split.to_dict`).
    n_batches : int
        Steps per epoch.
    command : str or None
        Command line, stored in the models.
    pixel_size : float or None
        µm: the pixel size of the pairs, stored in the models (None where the pairs record
        none).
    prefilter : dict or None
        The prefilter ``stain`` applies with the models (``sigma``, ``reason``; from the
        pairs, see :func:`vstain_dask.train.trainer.pairs_prefilter`).
    history : list of dict
        Per-epoch rows of the loss log, resumed runs included.
    best : dict
        Loss term -> ``{"value", "epoch"}`` of its lowest epoch mean.
    start_epoch : int
        Epochs done before this call (a resumed run's).
    """

    config: TrainConfig
    trainer: Any
    run_dir: Path
    split: dict[str, Any]
    n_batches: int
    command: str | None = None
    pixel_size: float | None = None
    prefilter: dict[str, Any] | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best: dict[str, Any] = dataclasses.field(default_factory=dict)
    start_epoch: int = 0

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def names(self) -> list[str]:
        """The logged losses: the generator terms, the generator total G and the
        discriminators' D."""
        return [*self.trainer.components, "G", "D"]

    def is_last(self, epoch: int) -> bool:
        return epoch + 1 == self.config.epochs

    def save_generator(self, path: Path, *, metrics: Mapping[str, Any], notes: str | None) -> Path:
        """Save the CT -> stain generator as a model file with its card."""
        from vstain_dask.models.checkpoint import save_model

        config = self.config
        return save_model(
            path,
            generator=self.trainer.nets["generator"],
            normalization=config.input,
            variant=config.variant,
            training=training_meta(config, self.trainer),
            seed=config.seed,
            split=self.split,
            metrics=metrics,
            command=self.command,
            notes=notes,
            pixel_size=self.pixel_size,
            prefilter=self.prefilter,
            overwrite=True,
        )


class Hook:
    """A training callback; every method does nothing unless a hook overrides it."""

    def on_fit_start(self, run: Run) -> None:
        pass

    def on_epoch_start(self, run: Run, epoch: int) -> None:
        pass

    def on_log(self, run: Run, epoch: int, step: int, losses: list[float]) -> None:
        pass

    def on_step_end(self, run: Run) -> None:
        pass

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        pass

    def on_fit_end(self, run: Run) -> None:
        pass


class ProgressBar(Hook):
    """A progress bar on stderr with the live losses."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def on_fit_start(self, run: Run) -> None:
        from tqdm import tqdm

        todo = run.config.epochs - run.start_epoch
        self.bar = tqdm(
            total=todo * run.n_batches,
            disable=not self.enabled or todo <= 0,
            file=sys.stderr,
            unit="step",
            dynamic_ncols=True,
        )

    def on_epoch_start(self, run: Run, epoch: int) -> None:
        self.bar.set_description(f"epoch {epoch + 1}/{run.config.epochs}")

    def on_log(self, run: Run, epoch: int, step: int, losses: list[float]) -> None:
        shown = {n: f"{v:.3f}" for n, v in zip(run.names, losses, strict=True)}
        self.bar.set_postfix(shown, refresh=False)

    def on_step_end(self, run: Run) -> None:
        self.bar.update(1)

    def on_fit_end(self, run: Run) -> None:
        if self.bar is not None:
            self.bar.close()


class StepLog(Hook):
    """``steps.csv``: the losses every ``log_every`` steps, appended at the end of each epoch."""

    def __init__(self) -> None:
        self.rows: list[str] = []

    def on_fit_start(self, run: Run) -> None:
        path = run.run_dir / "steps.csv"
        if run.start_epoch:
            _truncate_steps(run.run_dir, run.start_epoch)  # rows an interrupted run left
        if not path.exists():
            path.write_text(",".join(["epoch", "step", "fraction", *run.names]) + "\n")

    def on_epoch_start(self, run: Run, epoch: int) -> None:
        self.rows = []

    def on_log(self, run: Run, epoch: int, step: int, losses: list[float]) -> None:
        fraction = f"{(step + 1) / run.n_batches:.6f}"
        values = (f"{v:.6g}" for v in losses)
        self.rows.append(",".join([str(epoch + 1), str(step + 1), fraction, *values]))

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        with open(run.run_dir / "steps.csv", "a", encoding="utf-8") as f:
            f.write("\n".join(self.rows) + "\n")


class Validation(Hook):
    """Masked SSIM/PSNR of the generator on the validation pairs, every ``val_every`` epochs
    and after the last, added to the epoch's row as ``val_*``."""

    def __init__(self, pairs: Path, val_pairs: Sequence[Any], device: torch.device) -> None:
        self.pairs, self.val_pairs, self.device = pairs, list(val_pairs), device

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        from vstain_dask.train.metrics import evaluate_generator

        every, epoch = run.config.val_every, row["epoch"] - 1
        if not (self.val_pairs and every and ((epoch + 1) % every == 0 or run.is_last(epoch))):
            return
        m = evaluate_generator(
            run.trainer.nets["generator"],
            self.pairs,
            self.val_pairs,
            run.config.input,
            device=self.device,
        )
        row.update({f"val_{k}": v for k, v in m.items()})


class MinimumCheckpoints(Hook):
    """``checkpoints/min_<term>.pt``: the generator at the lowest epoch mean of each generator
    loss term and of the total ``G``, as the paper kept them."""

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        epoch = row["epoch"]
        for name in [*run.trainer.components, "G"]:
            if name in run.best and row[name] >= run.best[name]["value"]:
                continue
            run.best[name] = {"value": row[name], "epoch": epoch}
            run.save_generator(
                run.checkpoints / f"min_{name}.pt",
                metrics={f"min_{name}": row[name], "epoch": epoch},
                notes=f"Generator at the epoch ({epoch}) of the lowest mean {name} loss.",
            )


class LastCheckpoint(Hook):
    """``checkpoints/last.pt`` after every epoch: networks, optimizers, schedulers, image
    buffers, RNG states, history and minima, so that :meth:`restore` continues exactly."""

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        from vstain_dask.models.checkpoint import save_training_checkpoint

        config, trainer = run.config, run.trainer
        extra = {
            **trainer.state(),
            "epoch": row["epoch"],
            "rng": _rng_state(),
            "best": dict(run.best),
            "history": json.dumps(run.history),
            "config": json.dumps(config.to_dict()),
        }
        save_training_checkpoint(
            run.checkpoints / LAST,
            networks=trainer.nets,
            normalization=config.input,
            variant=config.variant,
            extra=extra,
            training=training_meta(config, trainer),
            seed=config.seed,
            split=run.split,
            metrics=final_metrics(run.history),
            command=run.command,
            pixel_size=run.pixel_size,
            prefilter=run.prefilter,
            card=False,
            overwrite=True,
        )

    @staticmethod
    def restore(run: Run, device: torch.device) -> None:
        """Load ``checkpoints/last.pt`` into ``run``: its trainer's state, the history, the
        minima, the epoch and the global RNG states."""
        from vstain_dask.models.checkpoint import load_training_checkpoint

        ckpt = load_training_checkpoint(run.checkpoints / LAST, device=device)
        run.trainer.load_state(ckpt.networks, ckpt.extra)
        run.start_epoch = int(ckpt.extra["epoch"])
        run.history = json.loads(ckpt.extra["history"])
        run.best = dict(ckpt.extra["best"])
        _set_rng_state(ckpt.extra["rng"])


class LossLog(Hook):
    """``losses.json`` and ``losses.csv``: the per-epoch rows of the whole run."""

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        (run.run_dir / "losses.json").write_text(
            json.dumps(run.history, indent=1), encoding="utf-8"
        )
        keys: list[str] = []
        for r in run.history:
            keys += [k for k in r if k not in keys]
        with open(run.run_dir / "losses.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(run.history)


class LossPlot(Hook):
    """``loss_curve.png``, redrawn at most every ``interval`` seconds (drawing costs about a
    second) and after the last epoch."""

    def __init__(self, *, interval: float = 60.0) -> None:
        self.interval = interval
        self.last = time.perf_counter()

    def on_fit_start(self, run: Run) -> None:
        self.last = time.perf_counter()

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        if run.is_last(row["epoch"] - 1) or time.perf_counter() - self.last > self.interval:
            plot_losses(run.run_dir, run.history, run.trainer.components)
            self.last = time.perf_counter()


class EpochCallback(Hook):
    """Calls ``fn(row)`` with each epoch's row (the ``on_epoch`` of :func:`train`)."""

    def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        self.fn(row)


# -- what the models record ------------------------------------------------------------------------


#: what the L1 terms are, by TrainConfig.l1_normalization, for the card
_L1_TEXT = {
    "pixels": "every L1 term is multiplied by the correspondence mask and averaged over all "
    "pixels (the paper's)",
    "mask": "every L1 term is multiplied by the correspondence mask and divided by the mask's "
    "area (1 / coverage times the paper's)",
}


def training_meta(config: TrainConfig, trainer: Any) -> dict[str, Any]:
    """How a model was trained, for its checkpoint and card."""
    meta = config.to_dict()
    meta["weights"] = trainer.weights.to_dict()
    meta["loss_terms"] = list(trainer.components)
    meta["optimizer"] = f"Adam(lr={config.lr:g}, betas={tuple(config.betas)})"
    meta["device"] = str(trainer.device)
    meta["autocast_bf16"] = trainer.use_autocast
    meta["channels_last"] = trainer.channels_last
    meta["masked_l1"] = (
        _L1_TEXT[config.l1_normalization.value]
        if config.mask_l1
        else "L1 terms over whole patches (mask_l1=False)"
    )
    return meta


def final_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's losses (``final_*``) and the best validation SSIM and its epoch."""
    if not history:
        return {}
    last = history[-1]
    out = {f"final_{k}": v for k, v in last.items() if k not in ("epoch",)}
    vals = [r for r in history if "val_ssim" in r]
    if vals:
        best = max(vals, key=lambda r: r["val_ssim"])
        out["best_val_ssim"] = best["val_ssim"]
        out["best_val_ssim_epoch"] = best["epoch"]
    return out


# -- RNG state -------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global state is restored)
    out = {
        "python": json.dumps([py[0], list(py[1]), py[2]]),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def _set_rng_state(state: Mapping[str, Any]) -> None:
    v, internal, gauss = json.loads(state["python"])
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# -- the loss curves -------------------------------------------------------------------------------


def plot_losses(run_dir: Path, history: list[dict[str, Any]], components: list[str]) -> None:
    """``loss_curve.png``: the losses of every logged step, and the epoch means with the
    validation SSIM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = _read_steps(run_dir)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for name in [*components, "G", "D"]:
        if steps and name in steps[0]:
            x = [float(r["epoch"]) - 1 + float(r["fraction"]) for r in steps]
            ax.plot(x, [float(r[name]) for r in steps], lw=0.8, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (every log step)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax = axes[1]
    epochs = [r["epoch"] for r in history]
    for name in ["G", "D", *components]:
        if history and name in history[0]:
            ax.plot(epochs, [r[name] for r in history], marker="o", ms=3, label=name)
    if history and "val_ssim" in history[-1]:
        ax2 = ax.twinx()
        pts = [(r["epoch"], r["val_ssim"]) for r in history if "val_ssim" in r]
        ax2.plot(*zip(*pts, strict=True), "k--", marker="s", ms=3, label="val SSIM")
        ax2.set_ylabel("validation SSIM (masked)")
        ax2.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("epoch mean loss")
    ax.set_yscale("log")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "loss_curve.png", dpi=90)
    plt.close(fig)


def _read_steps(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "steps.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _truncate_steps(run_dir: Path, epoch: int) -> None:
    """Drop step rows of epochs after ``epoch`` (left by an interrupted run)."""
    rows = _read_steps(run_dir)
    if not rows:
        return
    keep = [r for r in rows if int(r["epoch"]) <= epoch]
    with open(run_dir / "steps.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
