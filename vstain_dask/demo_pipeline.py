"""``vstain-dask demo --pipeline``: the whole chain a user runs, on a phantom.

A phantom CT volume; histology sections cut from it on known planes and written as pyramidal
OME-TIFF whole-slide images; their import; the registration of each section to the CT (the
pairs store); a short training; a stain of the CT with the trained model; and the evaluation
report. Each step calls the library function its command calls, and keeps its output in the
demo folder::

    pipeline/01-phantom.ome.zarr   pipeline/04-pairs.zarr (+ 04-pairs.qc/)
    pipeline/02-sections/          pipeline/05-model/
    pipeline/03-imported/          pipeline/06-stained.ome.zarr
                                   pipeline/07-evaluation/

Sections the registration refuses are reported and left out; the chain goes on with the
pairs it has, and stops with a one-line error naming the step when a step fails.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vstain_dask._validate import check_int_fields, int_field
from vstain_dask.errors import InputError, JobError, OutputExistsError, VStainError

__all__ = [
    "SECTION_POSES",
    "PipelineConfig",
    "PipelineResult",
    "PipelineStepError",
    "SectionPose",
    "SectionRecord",
    "StepRecord",
    "format_pipeline",
    "run_pipeline",
]

#: the outputs of the steps, in order, inside the pipeline folder
STEPS = (
    "01-phantom.ome.zarr",
    "02-sections",
    "03-imported",
    "04-pairs.zarr",
    "05-model",
    "06-stained.ome.zarr",
    "07-evaluation",
)
#: the registration's QC pictures, one per registered section
QC_FOLDER = "04-pairs.qc"
#: the CT axis the demo's sections are cut (roughly) normal to: along the screw
CUT_AXIS = "y"
#: the CT's voxel size, µm (the paper's)
VOXEL_SIZE = 5.0
SAMPLE = "demo"


@dataclasses.dataclass(frozen=True)
class SectionPose:
    """Where and how a demo section is cut and mounted (see
    :class:`vstain_dask.phantom._section.SectionCut`).

    Attributes
    ----------
    depth : float
        Position of the cut along y, as a fraction of the CT's extent (0–1).
    tilt : (float, float)
        Tilts of the cutting plane, degrees.
    rotate : float
        In-plane rotation on the slide, degrees.
    flip : bool
        Mounted face down.
    shear : float
        Sectioning shear (0.01 = 1 %).
    seed : int
        Seeds the section's staining and artefacts (added to the demo's seed).
    """

    depth: float
    tilt: tuple[float, float] = (0.0, 0.0)
    rotate: float = 0.0
    flip: bool = False
    shear: float = 0.0
    seed: int = 0

    def describe(self, extent: float) -> str:
        """One line: where the cut lies (``extent``: the CT's along y, µm) and how it is
        mounted."""
        return (
            f"y = {self.depth * extent:.0f} µm, tilt {self.tilt[0]:g},{self.tilt[1]:g}°, "
            f"rotated {self.rotate:g}°{', mirrored' if self.flip else ''}"
            f"{f', shear {self.shear:.0%}' if self.shear else ''}"
        )


#: the demo's sections: modest tilts, rotated, mirrored or not; poses that ``register`` finds
#: on the default phantom within two CT voxels (about half of random cuts with steeper tilts
#: are refused, see benchmarks/RESULTS.md)
SECTION_POSES = (
    SectionPose(depth=0.47, tilt=(3.0, 0.0), rotate=20.0, seed=3),
    SectionPose(depth=0.625, tilt=(1.0, -1.0), rotate=180.0, flip=True, seed=2),
    SectionPose(depth=0.55, rotate=90.0, seed=1),
)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The size of the pipeline demo.

    Attributes
    ----------
    shape : (Z, Y, X)
        Phantom size in voxels (5 µm).
    sections : int
        Sections cut, registered and paired (the first of :data:`SECTION_POSES`).
    epochs : int
        Training epochs (the bundled model's recipe otherwise, ``train.default``).
    patch_size : int
        Training and evaluation patch side, pixels (at most the pairs' smaller side).
    patches_per_pair : int
        Training patches drawn per pair and epoch, and evaluation patches per pair.
    section_pixel_size : float
        The sections' pixel size, µm.
    material : str
        Implant material of the phantom.
    seed : int
        Seeds the phantom, the sections' staining and the training.
    """

    shape: tuple[int, int, int] = (96, 128, 128)
    sections: int = int_field(3, 1, len(SECTION_POSES))
    epochs: int = int_field(3, 1)
    patch_size: int = int_field(64, 16)
    patches_per_pair: int = int_field(24, 1)
    section_pixel_size: float = 2.0
    material: str = "mg"
    seed: int = int_field(0, 0)

    def __post_init__(self) -> None:
        check_int_fields(self)
        if len(self.shape) != 3 or not all(isinstance(s, int) and s >= 32 for s in self.shape):
            raise InputError(f"shape must be three sizes Z,Y,X of at least 32, got {self.shape}")
        ps = self.section_pixel_size
        if not (math.isfinite(ps) and 0 < ps <= VOXEL_SIZE):
            raise InputError(f"section pixel size must be in (0, {VOXEL_SIZE:g}] µm, got {ps}")


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One step: its output (inside the pipeline folder), what it holds, and its time."""

    name: str
    action: str
    path: Path
    wrote: str
    seconds: float


@dataclasses.dataclass(frozen=True)
class SectionRecord:
    """One section: its pose, and what its registration found.

    ``error``/``max_error``: mean and largest distance (µm) between where the found and the
    true ``section_to_ct`` put the section's pixels; None when the section was refused
    (``message`` says why).
    """

    name: str
    pose: SectionPose
    registered: bool
    error: float | None
    max_error: float | None
    message: str
    seconds: float


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    """What :func:`run_pipeline` wrote."""

    folder: Path
    steps: tuple[StepRecord, ...]
    sections: tuple[SectionRecord, ...]
    extent: float  # the CT's extent along the cutting axis, µm
    voxel_size: float
    table: str  # the evaluation's table of medians (Markdown)


class PipelineStepError(VStainError):
    """A step of the pipeline demo failed; the message names it, the exit code is its
    cause's."""

    def __init__(self, step: str, cause: BaseException):
        if isinstance(cause, VStainError):
            detail = str(cause)
        else:
            detail = f"{type(cause).__name__}: {cause} (rerun with --debug for the traceback)"
        super().__init__(f"pipeline step {step} failed: {detail}")
        self.exit_code = getattr(cause, "exit_code", 1)


@dataclasses.dataclass
class _Run:
    """The pipeline's state as its steps go: settings, where things are, what was found."""

    config: PipelineConfig
    folder: Path
    stain_options: dict[str, Any]
    say: Callable[[str], None]
    progress: bool
    truths: list[dict] = dataclasses.field(default_factory=list)
    sections: list[SectionRecord] = dataclasses.field(default_factory=list)
    model: Path | None = None
    table: str = ""

    def path(self, step: int) -> Path:
        return self.folder / STEPS[step - 1]

    def names(self) -> list[str]:
        return [f"section-{k + 1}" for k in range(self.config.sections)]

    @property
    def extent(self) -> float:
        return self.config.shape["zyx".index(CUT_AXIS)] * VOXEL_SIZE


def run_pipeline(
    out_dir: str | os.PathLike = "vstain-demo",
    config: PipelineConfig | None = None,
    *,
    overwrite: bool = False,
    cluster=None,
    progress: bool = True,
    cluster_log: bool = False,
    say: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Run the whole chain on a phantom into ``out_dir/pipeline`` (see the module docstring).

    Parameters
    ----------
    out_dir : path
        The demo folder; the steps write into its ``pipeline`` folder.
    config : PipelineConfig
        The demo's size (default: three sections, three epochs, a 96×128×128 phantom).
    overwrite : bool
        Replace the outputs of an earlier pipeline demo (only those).
    cluster : ClusterConfig, optional
        Where to stain; default a local cluster.
    progress : bool
        Progress bars of training and stain.
    cluster_log : bool
        The stain's cluster logs to a file beside it rather than the terminal.
    say : callable, optional
        Called with a line as each step starts and as each section is registered.

    Raises
    ------
    PipelineStepError
        A step failed (among them: no section registered); the message names the step.
    """
    config = config or PipelineConfig()
    folder = Path(out_dir) / "pipeline"
    _clear(folder, overwrite=overwrite)
    stain_options = {"cluster": cluster, "progress": progress, "cluster_log": cluster_log}
    run = _Run(config, folder, stain_options, say or (lambda _line: None), progress)
    steps = []
    for number, (action, step) in enumerate(_STEPS, start=1):
        name = STEPS[number - 1] + ("/" if not STEPS[number - 1].endswith(".zarr") else "")
        run.say(f"{name}: {action}")
        t0 = time.perf_counter()
        try:
            wrote = step(run)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            raise PipelineStepError(f"{name} ({action})", exc) from exc
        steps.append(StepRecord(name, action, run.path(number), wrote, time.perf_counter() - t0))
    return PipelineResult(
        folder, tuple(steps), tuple(run.sections), run.extent, VOXEL_SIZE, run.table
    )


def _clear(folder: Path, *, overwrite: bool) -> None:
    """Refuse an earlier pipeline demo in ``folder`` unless ``overwrite``; then remove its
    outputs (the steps' names only: nothing else in the folder is touched)."""
    import shutil

    from vstain_dask.stain.run import levels_qc_path

    names = (*STEPS, QC_FOLDER, levels_qc_path(folder / STEPS[5]).name)
    earlier = [folder / n for n in names if (folder / n).exists()]
    if earlier and not overwrite:
        raise OutputExistsError(
            f"{folder} holds an earlier pipeline demo ({earlier[0].name}, ...); use --overwrite "
            "to replace it, or --out-dir another folder"
        )
    for p in earlier:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    folder.mkdir(parents=True, exist_ok=True)


# -- the steps: each writes its output and says what it holds ----------------------------------


def _phantom(run: _Run) -> str:
    from vstain_dask.phantom import write_phantom

    c = run.config
    write_phantom(run.path(1), shape=c.shape, material=c.material, seed=c.seed,
                  voxel_size=VOXEL_SIZE)  # fmt: skip
    z, y, x = c.shape
    return f"CT {z}×{y}×{x} at {VOXEL_SIZE:g} µm ({c.material} implant), tissue labels"


def _sections(run: _Run) -> str:
    from vstain_dask.phantom._section import SectionCut, write_phantom_section

    c = run.config
    run.path(2).mkdir()
    shapes = []
    for k, name in enumerate(run.names()):
        pose = SECTION_POSES[k]
        cut = SectionCut(
            axis=CUT_AXIS, depth=pose.depth * run.extent, tilt=pose.tilt, rotate=pose.rotate,
            flip=pose.flip, shear=pose.shear, pixel_size=c.section_pixel_size,
            seed=c.seed + pose.seed,
        )  # fmt: skip
        truth = write_phantom_section(run.path(1), run.path(2) / f"{name}.ome.tif", cut)
        run.truths.append(truth)
        shapes.append("×".join(str(s) for s in truth["shape"]))
    return (
        f"{len(shapes)} pyramidal OME-TIFF section(s) at {c.section_pixel_size:g} µm "
        f"({', '.join(shapes)} px), each with its true section_to_ct"
    )


def _import(run: _Run) -> str:
    from vstain_dask import ngff

    run.path(3).mkdir()
    for name in run.names():
        ngff.import_volume(run.path(2) / f"{name}.ome.tif", run.path(3) / f"{name}.ome.zarr")
    size = ngff.open_volume(run.path(3) / f"{run.names()[0]}.ome.zarr").attrs["scale"]["x"]
    return f"{len(run.names())} RGB OME-Zarr section(s), pixel size from the files ({size:g} µm)"


def _register(run: _Run) -> str:
    from vstain_dask.register import RegisterConfig, score_against_truth
    from vstain_dask.register._pairs import add_registered_pair

    (run.folder / QC_FOLDER).mkdir()
    for k, name in enumerate(run.names()):
        pose = SECTION_POSES[k]
        t0 = time.perf_counter()
        try:
            record = add_registered_pair(
                run.path(1), run.path(3) / f"{name}.ome.zarr", run.path(4),
                config=RegisterConfig(axis=CUT_AXIS), material=run.config.material,
                sample=SAMPLE, pair_id=name, qc=run.folder / QC_FOLDER / f"{name}.png",
            )  # fmt: skip
        except VStainError as exc:
            # refused (no plane trusted), or its pair could not be made: left out, said why
            seconds = time.perf_counter() - t0
            run.sections.append(SectionRecord(name, pose, False, None, None, str(exc), seconds))
            run.say(f"  {name}: left out ({exc}), {seconds:.0f} s")
            continue
        mean, largest = score_against_truth(record, run.truths[k]["section_to_ct"])
        seconds = time.perf_counter() - t0
        message = f"pair {record['pair']}, {record['shape'][0]}×{record['shape'][1]} px"
        run.sections.append(SectionRecord(name, pose, True, mean, largest, message, seconds))
        run.say(f"  {name}: registered, error {mean / VOXEL_SIZE:.2f} voxels, {seconds:.0f} s")
    found = [s.name for s in run.sections if s.registered]
    if not found:
        raise JobError(
            f"no section gave a pair, there is nothing to train on ({run.sections[0].name}: "
            f"{run.sections[0].message})"
        )
    left = len(run.sections) - len(found)
    return (
        f"{len(found)} registered pair(s) ({', '.join(found)}) with their registration "
        f"record; {left} section(s) left out; QC pictures in {QC_FOLDER}/"
    )


def _train(run: _Run) -> str:
    from vstain_dask.train.default import DEFAULT_CONFIG
    from vstain_dask.train.trainer import Provenance, train

    c = run.config
    config = dataclasses.replace(
        DEFAULT_CONFIG, epochs=c.epochs, patch_size=c.patch_size,
        patches_per_pair=c.patches_per_pair, seed=c.seed,
    )  # fmt: skip
    result = train(
        run.path(4), run.path(5), config, progress=run.progress,
        provenance=Provenance(command="vstain-dask demo --pipeline"),
    )  # fmt: skip
    run.model = result.model
    return (
        f"{result.model.name} ({config.variant.value}, {result.epochs} epoch(s) on "
        f"{len(result.split['train'])} pair(s)), losses.csv, loss_curve.png"
    )


def _stain(run: _Run) -> str:
    from vstain_dask.stain import StainConfig, job_log_path, run_stain

    o = run.stain_options
    out = run.path(6)
    run_stain(
        run.path(1), out, model=run.model, config=StainConfig(axes="z", step=128),
        cluster=o["cluster"], progress=o["progress"],
        log_file=job_log_path(out) if o["cluster_log"] else None,
    )  # fmt: skip
    z, y, x = run.config.shape
    return f"RGB stain 3×{z}×{y}×{x} of the CT with the trained model, along z"


def _evaluate(run: _Run) -> str:
    from vstain_dask.evaluate import EvalConfig, format_table, run_evaluation

    c = run.config
    config = EvalConfig(patch_size=c.patch_size, patches_per_pair=c.patches_per_pair,
                        seed=c.seed, lpips=False)  # fmt: skip
    result, files = run_evaluation(run.path(4), {"demo": run.model}, run.path(7), config=config,
                                   progress=run.progress)  # fmt: skip
    run.table = format_table(result)
    n = len(result.records)
    return f"{files['md'].name} (SSIM and PSNR: {n} patch scores), box plots, panels per pair"


_STEPS: tuple[tuple[str, Callable[[_Run], str]], ...] = (
    ("phantom", _phantom),
    ("phantom-section", _sections),
    ("import", _import),
    ("register", _register),
    ("train", _train),
    ("stain", _stain),
    ("evaluate", _evaluate),
)


def format_pipeline(result: PipelineResult) -> str:
    """The pipeline's summary: each step's output and time, each section's registration
    error against its truth, and the evaluation's table."""
    total = sum(s.seconds for s in result.steps)
    lines = [f"pipeline demo in {result.folder} ({total:.0f} s):"]
    width = max(len(s.name) for s in result.steps)
    for s in result.steps:
        lines.append(f"  {s.name:<{width}}  {s.action:<15} {s.seconds:5.0f} s  {s.wrote}")
    v = result.voxel_size
    lines.append(
        f"sections (cut normal to {CUT_AXIS}); registration error against the true "
        f"section_to_ct, mean / largest over the section's pixels:"
    )
    for sec in result.sections:
        where = sec.pose.describe(result.extent)
        if sec.registered:
            assert sec.error is not None and sec.max_error is not None
            found = (
                f"registered: {sec.error / v:.2f} / {sec.max_error / v:.2f} CT voxels "
                f"({sec.error:.1f} / {sec.max_error:.1f} µm)"
            )
        else:
            found = f"left out: {sec.message}"
        lines.append(f"  {sec.name}  {where}: {found}; {sec.seconds:.0f} s")
    if result.table:
        lines += ["evaluation (medians [quartiles]):", result.table]
    return "\n".join(lines)
