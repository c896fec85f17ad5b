"""`metapt bench --sources 4,8,16`: how a selection's time and memory grow with the number of sources.
The run spec's sources are replicated under new names (`mlm`, then `mlm-2`, ... : the same data and
kind, their own heads and batch streams) up to each count; each count is a fresh run of the spec's
model in the same process, measured as the bench measures the spec: selection and training of a few
engine episodes timed side by side, and peak memory of a selection against a plain training step."""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable

from metapt import peaks, runsetup, runsteps, study
from metapt.plain import plain_steps, replay
from metapt.runstate import Run
from metapt.spec import RunSpec

EPISODES = 3  # timed episodes per count, after one untimed


def replicate(spec: RunSpec, count: int) -> RunSpec:
    """The spec with `count` sources: its own, then copies named NAME-2, NAME-3, ... in turn."""
    base, out = spec.sources, []
    for k in range(count):
        task, copy = base[k % len(base)], k // len(base) + 1
        out.append(task if copy == 1 else dataclasses.replace(task, name=f"{task.name}-{copy}"))
    names = tuple(t.name for t in out)
    targets = spec.targets if spec.meta.setting == "aware" else ()
    meta = dataclasses.replace(spec.meta, sources=names)
    return dataclasses.replace(spec, meta=meta, sources=tuple(out), targets=targets)


def _episodes(run: Run, n: int) -> tuple[float, float]:
    """Mean seconds of a selection and of an episode's training over `n` engine episodes."""
    sel = train = 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        picked, _ = runsteps.select_step(run)
        t1 = time.perf_counter()
        runsteps.train_chosen(run, picked.chosen, picked.gradient)
        t2 = time.perf_counter()
        run.episode += 1
        sel, train = sel + t1 - t0, train + t2 - t1
        del picked
    return sel / n, train / n


def growth(
    spec: RunSpec, counts: list[int], say: Callable[[str], None], episodes: int = EPISODES
) -> list[dict]:
    """Per source count: selection and training seconds per episode, the selection's share, and the
    peak memory of a selection and of a plain training step (as `peaks.memory`)."""
    out = []
    for count in counts:
        say(f"sources: {count}")
        run = runsetup.setup(replicate(spec, count), resume=False)
        _episodes(run, 1)  # warm-up
        sel, train = _episodes(run, episodes)
        meta = run.spec.meta

        def train_step(s: str, run: Run = run) -> None:
            batch = replay(run.streams["train"][s], 1)
            clip = run.spec.meta.max_grad_norm
            plain_steps(run.model, run.optimizer, s, batch, run.device, run.autocast, clip)

        mem = peaks.memory(run, {"spec": study.view(run, meta, "growth")}, train_step)
        picked = mem["selections"].get("spec", {})
        out.append(
            {
                "sources": count,
                "selection_seconds": sel,
                "train_seconds": train,
                "selection_share": sel / (sel + train),
                "selection_peak_bytes": picked.get("peak_bytes"),
                "train_peak_bytes": mem["train_peak_bytes"],
                "memory_ratio": picked.get("memory_ratio"),
                "selection_extra_bytes": picked.get("extra_bytes"),
                "train_extra_bytes": mem["train_extra_bytes"],
            }
        )
        del run, mem
        gc.collect()
    return out
