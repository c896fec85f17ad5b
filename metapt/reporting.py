"""`report_to`: every pretraining episode's and finetuning epoch's scalars to TensorBoard and Weights &
Biases. Fed by the `callback(event, data)` that `engine.pretrain` and `finetune.finetune_one` call;
the engine never imports a backend. Only rank 0 logs under torchrun.

Tags (README, Logging): a number of a metrics.jsonl record is logged under its field name (true/false as
1/0), a table of numbers under FIELD/KEY (`utilities/mlm`), and `counts/TASK` is how often each source
has been chosen so far; the step is the episode. Finetuning logs `train_loss` (the epoch's mean) and
`validation/METRIC` per epoch. Where they go: OUT/tensorboard/ (event files) and OUT/wandb/ (W&B's
own files; run_id is the id a `--resume` continues).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import secrets
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from metapt import outdir
from metapt.catalog import REPORT_TO
from metapt.errors import MetaptError, suggest
from metapt.spec import RunSpec, TaskSpec

Callback = Callable[[str, dict[str, Any]], None]


@dataclasses.dataclass(frozen=True)
class Target:
    """One run to log (a pretraining, or one finetuning): its folder, what it is, how it is named."""

    folder: Path
    job: str  # "pretrain" | "finetune"
    step: str  # the x axis: "episode" | "epoch"
    name: str
    group: str | None
    config: dict[str, Any]


class Writer(Protocol):
    """What a backend does with a run's scalars."""

    def log(self, values: dict[str, float], step: int) -> None: ...

    def close(self, failed: bool) -> None: ...


class TensorBoard:
    """Event files in FOLDER/tensorboard. `purge_step`: TensorBoard drops what an earlier process
    logged from `first_step` on (episodes after the checkpoint a resume restarts from, or all of an
    earlier run a fresh one replaces), so the folder holds one curve per tag."""

    def __init__(self, target: Target, resume: bool, first_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(target.folder / "tensorboard"), purge_step=first_step)
        if first_step == 1:
            self.writer.add_text("config", f"```\n{json.dumps(target.config, indent=2)}\n```", 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # an episode takes seconds: show it now, not after flush_secs

    def close(self, failed: bool) -> None:
        self.writer.close()


class Wandb:
    """A W&B run with its files in FOLDER/wandb; WANDB_MODE=offline writes it there without network.
    Its id is kept in FOLDER/wandb/run_id so a resumed run continues the same W&B run. The x axis is
    the episode (or epoch) as a metric of its own, so W&B's internal step never refuses a value."""

    def __init__(self, target: Target, resume: bool, first_step: int) -> None:
        import wandb

        folder = target.folder / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "run_id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else secrets.token_hex(4)
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "metapt",
                id=run_id,
                resume="allow",
                dir=str(target.folder),
                name=target.name,
                group=target.group,
                job_type=target.job,
                config=target.config,
            )
        except Exception as e:  # no login, no network, a bad setting: wandb raises many kinds
            raise MetaptError(
                f"report_to 'wandb': W&B could not start a run ({type(e).__name__}: {e}); log in with "
                f"`wandb login`, or set WANDB_MODE=offline to write the run to {folder} (`wandb sync` "
                "uploads it later)"
            ) from None
        id_file.write_text(run_id + "\n")
        self.step = target.step
        self.run.define_metric(self.step)
        self.run.define_metric("*", step_metric=self.step)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log({self.step: step, **values})

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


BACKENDS: dict[str, Callable[[Target, bool, int], Writer]] = {"tensorboard": TensorBoard, "wandb": Wandb}


def parse(text: str) -> tuple[str, ...]:
    """`--report-to`: comma-separated backends (tensorboard, wandb), or none."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if names == ("none",):
        return ()
    for name in names:
        if name not in REPORT_TO:
            raise MetaptError(
                f"--report-to: {name!r} is not allowed{suggest(name, REPORT_TO)}; allowed: "
                f"{', '.join(REPORT_TO)}, or none"
            )
    return names


def require(names: tuple[str, ...]) -> None:
    """Raise a MetaptError naming the extra to install when a backend's package is missing."""
    for name in names:
        try:
            importlib.import_module(name)  # the package is named like the backend (and its extra)
        except ImportError:
            raise MetaptError(
                f"report_to {name!r}: the {name} package is not installed; install it with: "
                f'pip install "metapt[{name}]"'
            ) from None


def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Tag -> value of a record's numbers: FIELD for a number (true/false as 1/0), FIELD/KEY for a
    table of numbers (recursively); strings, lists and nulls are not scalars."""
    out: dict[str, float] = {}
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, (bool, int, float)):
            out[tag] = float(value)
        elif isinstance(value, dict):
            out.update(scalars(value, f"{tag}/"))
    return out


def episode_scalars(record: dict[str, Any], sources: list[str]) -> dict[str, float]:
    """An episode's tags: its record's numbers (`scalars`) and counts/TASK for every source (0 for
    those never chosen yet, so each source has a curve from the first episode)."""
    values = scalars({k: v for k, v in record.items() if k not in ("episode", "counts")})
    counts = record.get("counts", {})
    return {**values, **{f"counts/{s}": float(counts.get(s, 0)) for s in sources}}


class Writers:
    """The writers of one run: opened at its first event (rank 0 only), closed once."""

    def __init__(self, names: tuple[str, ...], target: Target, resume: bool) -> None:
        self.names, self.target, self.resume = names, target, resume
        self.open: list[Writer] = []

    def start(self, first_step: int) -> None:
        for n in self.names:  # one by one: if W&B cannot start, `closing` still closes TensorBoard
            outdir.claim(self.target.folder, n)  # OUT/tensorboard, OUT/wandb: metapt's, for --overwrite
            self.open.append(BACKENDS[n](self.target, self.resume, first_step))

    def log(self, values: dict[str, float], step: int) -> None:
        for w in self.open:
            w.log(values, step)

    @contextlib.contextmanager
    def closing(self) -> Iterator[Writers]:
        failed = True
        try:
            yield self
            failed = False
        finally:
            for w in self.open:
                w.close(failed)


def _quiet() -> Callback:
    return lambda event, data: None


def run_config(spec: RunSpec) -> dict[str, Any]:
    """A run spec as the config a W&B run (and TensorBoard's text tab) records."""
    sections = ("run", "model", "tokenizer", "meta")
    return {"run_spec": spec.path, **{s: dataclasses.asdict(getattr(spec, s)) for s in sections}}


def finetune_config(checkpoint: str, spec: TaskSpec, seed: int) -> dict[str, Any]:
    """A finetuning run's settings as the config W&B records."""
    settings = {s: dataclasses.asdict(getattr(spec, s)) for s in ("finetune", "batch")}
    return {"checkpoint": checkpoint, "task": spec.name, "kind": spec.kind, "seed": seed, **settings}


@contextlib.contextmanager
def pretrain_logger(
    spec: RunSpec, resume: bool, rank: int = 0, name: str | None = None, group: str | None = None
) -> Iterator[Callback]:
    """A callback for `engine.pretrain` logging to the run's [run].report_to backends."""
    out = Path(spec.run.output_dir)
    target = Target(out, "pretrain", "episode", name or out.name, group, run_config(spec))
    writers, sources = Writers(spec.run.report_to, target, resume), []
    if rank != 0 or not writers.names:
        yield _quiet()
        return

    def callback(event: str, data: dict[str, Any]) -> None:
        if event == "start":
            sources[:] = data["sources"]
            writers.start(data["start"] + 1)  # a fresh run starts at episode 0
        elif event == "episode":
            writers.log(episode_scalars(data, sources), data["episode"])

    with writers.closing():
        yield callback


@contextlib.contextmanager
def finetune_logger(
    names: tuple[str, ...],
    out: Path,
    config: dict[str, Any],
    rank: int = 0,
    name: str | None = None,
    group: str | None = None,
) -> Iterator[Callback]:
    """A callback for `finetune.finetune_one` logging each epoch's mean training loss and
    validation metrics (step: the epoch)."""
    writers = Writers(names, Target(out, "finetune", "epoch", name or out.name, group, config), False)
    losses: list[float] = []
    if rank != 0 or not names:
        yield _quiet()
        return

    def callback(event: str, data: dict[str, Any]) -> None:
        if event == "start":
            writers.start(1)
        elif event == "step":
            losses.append(data["loss"])
        elif event == "epoch":
            values = scalars({"validation": data["metrics"]})
            if losses:
                values["train_loss"] = statistics.fmean(losses)
            losses.clear()
            writers.log(values, data["epoch"])

    with writers.closing():
        yield callback


def chain(*callbacks: Callback) -> Callback:
    """One callback that calls each of `callbacks` in turn."""

    def callback(event: str, data: dict[str, Any]) -> None:
        for c in callbacks:
            c(event, data)

    return callback
