"""What `metapt compare` runs: the schedulers (`meta:POLICY` included) and their folders, the
downstream tasks, and under a FLOPs budget each run's episode cap, sized from one probe episode."""

from __future__ import annotations

import dataclasses
import math
import shutil
import signal
from pathlib import Path

from metapt.catalog import DEFAULT_DOWNSTREAM, KINDS, SCHEDULERS
from metapt.engine import pretrain
from metapt.errors import MetaptError, suggest
from metapt.finetune import task_spec
from metapt.interrupts import Stopped
from metapt.policies import POLICIES
from metapt.runspec import override
from metapt.spec import RunSpec, TaskSpec

# With a budget the budget stops the run and sets the LR schedule (engine.pretrain); the episode count
# is a cap, estimated from one probe episode with room for episodes cheaper than the probe's (a meta
# run picks its tasks, and they can cost 30% less than the probe's). Schedulers whose choices follow
# the episode count (sequential's stages, a replayed mixture's phases) spread them over the cap, so
# theirs stays close to the estimate: their last stage or phase can be cut short.
CAP_SLACK = 2.0
PLANNED_SLACK = 1.25
PLANNED = ("sequential", "mixture")


def slack(scheduler: str) -> float:
    """How far past the probe's estimate a scheduler's episode cap is set under a budget."""
    return PLANNED_SLACK if scheduler in PLANNED else CAP_SLACK


def parse_schedulers(text: str) -> list[str]:
    """Comma-separated scheduler names, checked against the known ones; `meta:POLICY` is the meta
    scheduler with that [meta].policy (e.g. meta:greedy,meta:bandit compares the two policies)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    known = [*SCHEDULERS, *(f"meta:{p}" for p in POLICIES)]
    allowed = ", ".join(known)
    if not names:
        raise MetaptError(f"--schedulers {text!r}: name at least one scheduler; allowed: {allowed}")
    for name in names:
        if name not in known:
            raise MetaptError(
                f"--schedulers: unknown scheduler {name!r}{suggest(name, known)}; allowed: {allowed}"
            )
    if len(set(names)) != len(names):
        raise MetaptError(f"--schedulers {text!r}: each scheduler may appear once")
    return names


def folder(name: str) -> str:
    """A scheduler's folder under the compare's output (meta:bandit -> meta-bandit)."""
    return name.replace(":", "-")


def downstream_tasks(spec: RunSpec, names: str | None) -> list[TaskSpec]:
    """The --downstream tasks (names or spec files); default: an aware run's targets, else
    `DEFAULT_DOWNSTREAM`. Each needs a labelled train and validation split."""
    if names is not None:
        tasks = [task_spec(n.strip(), None, {}) for n in names.split(",") if n.strip()]
        if not tasks:
            raise MetaptError(f"--downstream {names!r}: name at least one task")
    elif spec.meta.setting == "aware":
        tasks = list(spec.targets)
    else:
        tasks = [task_spec(name, None, {}) for name in DEFAULT_DOWNSTREAM]
    for t in tasks:
        if KINDS[t.kind].role == "source":
            raise MetaptError(
                f"--downstream: {t.name!r} is a {t.kind} task, a pretraining objective; "
                "name labelled tasks (see `metapt inspect-tasks`)"
            )
        missing = [s for s in ("train", "validation") if s not in t.data.splits()]
        if missing:
            raise MetaptError(
                f"--downstream: task {t.name!r} has no {' or '.join(missing)} split; finetuning keeps the "
                "best epoch by validation, so both are needed"
            )
    if len({t.name for t in tasks}) != len(tasks):
        raise MetaptError("--downstream: each task may appear once")
    return tasks


def with_scheduler(spec: RunSpec, scheduler: str) -> RunSpec:
    """The run spec with another [meta].scheduler (and for `meta:POLICY`, that [meta].policy)."""
    base, _, policy = scheduler.partition(":")
    meta = dataclasses.replace(spec.meta, scheduler=base, policy=policy or spec.meta.policy)
    return dataclasses.replace(spec, meta=meta)


def episode_caps(
    spec: RunSpec, schedulers: list[str], seed: int, budget: float, out: Path, device: str | None
) -> dict[str, dict[str, float]]:
    """Run one probe episode per scheduler: refuse a budget smaller than any first episode, and size
    each run's episode cap from the episodes the budget buys (selection spread over select_every)."""
    probes: dict[str, dict[str, float]] = {}
    try:
        for s in schedulers:
            where = out / ".probe" / folder(s)
            fitting: list[float] = []  # the meta scheduler fits its heads once, before the first selection
            summary = pretrain(
                override(with_scheduler(spec, s), episodes=1, output_dir=where, seed=seed, device=device),
                callback=lambda e, d, fitting=fitting: fitting.append(d["flops"]) if e == "heads" else None,
            )
            if not summary["complete"]:
                raise Stopped(summary["signal"] or signal.SIGINT)  # Ctrl-C or SIGTERM during the probe
            sel, train = summary["totals"]["selection_flops"], summary["totals"]["train_flops"]
            once = sum(fitting)
            per_episode = train + (sel - once) / (spec.meta.select_every if s.startswith("meta") else 1)
            probes[s] = {
                "first_episode_flops": sel + train,
                "cap": max(1, math.ceil(slack(s) * (budget - once) / per_episode)),
            }
    finally:
        shutil.rmtree(out / ".probe", ignore_errors=True)
    short = {s: p["first_episode_flops"] for s, p in probes.items() if p["first_episode_flops"] > budget}
    if short:
        needs = ", ".join(f"{s} needs {v:.3g}" for s, v in short.items())
        least = max(p["first_episode_flops"] for p in probes.values())
        raise MetaptError(
            f"--budget {budget:.3g} FLOPs is smaller than one episode ({needs}); "
            f"give at least {least:.3g}, or use --episodes"
        )
    return probes


def episode_cap(
    caps: dict[str, dict[str, float]], scheduler: str, meta_run: dict | None, budget: float
) -> int:
    """A run's episode cap under a budget: its probe's, or for a replay of meta's mixture (not
    probed: the file did not exist yet) what meta's training FLOPs per episode make of the budget."""
    if scheduler in caps:
        return int(caps[scheduler]["cap"])
    assert meta_run is not None, "a replay runs after its seed's meta run"
    per_episode = meta_run["train_flops"] / max(1, meta_run["episodes"])
    return max(1, math.ceil(slack(scheduler) * budget / per_episode))
