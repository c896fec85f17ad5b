"""`metapt pretrain`: the episode loop of Algorithm 1 and of the baseline schedulers.

Per episode: (meta) `runsteps.select_step` draws the target batches once and `steps.select_task`
scores every source task's M inner steps on them and lets the policy choose, then
`steps.step_target_heads` gives the aware target heads one head-only step; (baselines) the scheduler
draws the task; then `steps.train_task` takes N AdamW steps on the chosen task
(`runsteps.train_chosen`). `runsetup.setup` assembles the run from metapt/builders.py. One JSON line
per episode goes to OUTPUT_DIR/metrics.jsonl (episodelog.py); the screen is reached only through
`callback(event, data)`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metapt import (
    checkpoint,
    distributed,
    episodelog,
    fitting,
    heldout,
    mixture,
    outdir,
    pointless,
    resuming,
    runsetup,
    runspec,
    runstate,
    runsteps,
    train,
)
from metapt.data.batches import train_size
from metapt.interrupts import interrupts
from metapt.runstate import Run
from metapt.schedulers import BASELINES
from metapt.spec import RunSpec
from metapt.steps import Selection, TrainStats

Callback = Callable[[str, dict[str, Any]], None]


def selects(run: Run, last: str | None) -> bool:
    """Whether the meta scheduler's episode `run.episode` selects: the first one (nothing chosen yet,
    `last` None), then every `select_every`-th; in between it keeps `last`."""
    return last is None or run.episode % run.spec.meta.select_every == 0


def pretrain(
    spec: RunSpec,
    resume: bool = False,
    callback: Callback | None = None,
    max_flops: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the episodes of a run spec; returns a summary. Ctrl-C or SIGTERM finishes the episode,
    saves, and stops. With `max_flops`, the run also stops after the episode in which selection +
    training FLOPs reach it (equal-compute comparisons: the meta scheduler's selection counts), and
    the LR schedule follows the FLOPs: before each episode's training it is put at the share of the
    budget spent, so it decays to 0 at the budget however many episodes that takes (the episode count
    is a cap, and the schedule's resolution).

    The output folder must be empty or absent unless `resume` (continue its checkpoint) or
    `overwrite` (remove metapt's own files there first); rank 0 holds its lock while the run writes.
    Under torchrun every rank runs the loop and calls `callback`; the ranks agree on every episode's
    task and on when to stop, and only rank 0 writes metrics.jsonl and checkpoints."""
    callback = callback or (lambda event, data: None)
    if distributed.rank() != 0:
        return _train(spec, resume, callback, max_flops)
    folder = Path(spec.run.output_dir)
    inputs = runspec.inputs(spec)
    with outdir.run_folder(folder, "pretrain", "metapt pretrain", resume, overwrite, inputs) as lock:
        if lock.warning:
            callback("warning", {"message": lock.warning})
        return _train(spec, resume, callback, max_flops)


def _train(spec: RunSpec, resume: bool, callback: Callback, max_flops: float | None) -> dict[str, Any]:
    """`_episodes`, unless the checkpoint to resume already has the run's episodes (then nothing runs).
    The checkpoint is found, and its files checked, once here (its sums read a GB-sized one for a second)."""
    folder = checkpoint.resolve_output(Path(spec.run.output_dir)) if resume else None
    done = _already_done(spec, folder, callback) if folder is not None else None
    return done if done is not None else _episodes(spec, folder, callback, max_flops)


# Algorithm 1 reads top to bottom in one function (STYLE.md 1): its length is the episode's.
def _episodes(  # noqa: PLR0915
    spec: RunSpec, folder: Path | None, callback: Callback, max_flops: float | None
) -> dict[str, Any]:
    """The episode loop of `pretrain`, in a folder that is checked (and locked on rank 0), continuing
    the checkpoint `folder` (None: a fresh run)."""
    run = runsetup.setup(spec, folder is not None, distributed.rank(), distributed.world(), folder)
    for note in run.notes:  # what --resume kept from the checkpoint, and what changed
        callback("warning", {"message": note})
    meta, total = spec.meta, spec.run.episodes
    sizes = [train_size(run.tasks[s]) for s in run.sources]
    shares = mixture.shares_for(spec.path, meta, run.sources)  # the mixture scheduler's; else None
    # The fixed held-out batches every scheduler is scored on (metapt/heldout.py); 0: no evaluation.
    held = (
        heldout.prepare(run.tasks, run.tokenizer, run.targets, run.sources, spec.run)
        if spec.run.eval_every and run.episode < total
        else None
    )
    metrics_path = episodelog.open_metrics(run.out, run.rank, run.episode)
    watch = pointless.Divergence.from_metrics(metrics_path)

    def spent() -> float:
        return run.totals["selection_flops"] + run.totals["train_flops"]

    stopping = False  # stop.asked as every rank agreed on it after the last episode
    with interrupts() as stop:  # Ctrl-C / SIGTERM: finish the episode, save, stop
        callback("start", _start_event(run))
        last: str | None = run.history[-1] if run.history else None
        # Before the first selection the heads are fitted on the frozen encoder; charged to that selection.
        fit_seconds, fit_flops = _fit_heads_first(run, callback) if meta.scheduler == "meta" else (0.0, 0)
        while run.episode < total and not stopping and (max_flops is None or spent() < max_flops):
            t0 = time.perf_counter() - fit_seconds
            picked: Selection | None = None
            if meta.scheduler != "meta":  # a baseline draws the task without looking at any target
                i = BASELINES[meta.scheduler](
                    run.episode, total, sizes, run.explore, meta.temperature, shares
                )
                chosen, explored, reused = run.sources[i], False, False
            elif not selects(run, last):  # between selections: keep the last task
                chosen, explored, reused = last, False, True
            else:  # Algorithm 1: every source's utility on the same target batches, the policy's choice
                fit_flops += _refit_source_heads(run)  # every [meta].refit_heads_every-th selection
                picked, head_flops = runsteps.select_step(run)
                chosen, explored, reused = picked.chosen, picked.explored, False
                fit_flops += head_flops
            utilities = picked.utilities if picked else {}
            chosen, explored, utilities = distributed.agree(chosen, explored, utilities, run.sources)
            _follow_budget(run, spent() + (picked.flops if picked else 0) + fit_flops, max_flops)
            t1 = time.perf_counter()
            stats = runsteps.train_chosen(run, chosen, picked.gradient if picked else None)  # N steps on it
            # FLOPs and tokens of the whole global batch (each rank counted its share)
            counts = distributed.sum_counts(
                (stats.flops, stats.tokens), replicated=not run.streams["train"][chosen].sharded
            )
            stats = TrainStats(stats.loss, *counts)
            t2 = time.perf_counter()
            run.episode += 1
            run.history.append(chosen)
            last = chosen
            cost = episodelog.Cost(
                t1 - t0, t2 - t1, (picked.flops if picked else 0) + fit_flops, stats.flops, stats.tokens
            )
            fit_seconds, fit_flops = 0.0, 0
            episodelog.account(run.totals, cost, picked)
            lr = run.schedule.get_last_lr()[0]
            record = episodelog.record(
                run.episode, chosen, (explored, reused), utilities, picked, stats, cost, lr, run.history
            )
            final = run.episode == total or stop.asked or (max_flops is not None and spent() >= max_flops)
            if held is not None and heldout.due(run.episode, spec.run.eval_every, final):
                # measured, not charged: evaluation FLOPs are not in `spent()`
                record |= heldout.evaluate(run.model, run.tasks, held, run.flops, run.autocast, spec.run)
            episodelog.append(metrics_path, record, run.rank)
            callback("episode", record)
            if warning := watch.observe(chosen, run.episode, stats.loss, meta.lr, meta.max_grad_norm):
                callback("warning", {"message": warning})
            stopping = distributed.any_rank(stop.asked)
            out_of_budget = max_flops is not None and spent() >= max_flops
            if (
                run.episode % spec.run.checkpoint_every == 0
                or run.episode == total
                or stopping
                or out_of_budget
            ):
                runstate.save(run)
                callback("checkpoint", {"episode": run.episode, "path": str(run.out)})
    if total == 0 and folder is None:  # `--episodes 0`: the initial weights, a baseline for finetuning
        runstate.save(run)
    summary = _summary(run, total, stop.signal)
    callback("end", summary)
    return summary


def _follow_budget(run: Run, spent: float, max_flops: float | None) -> None:
    """Under a budget, before an episode trains: put the LR schedule at the budget's share spent
    (selection included), so it warms up and decays to 0 over the FLOPs, not over the episode cap."""
    if max_flops is not None:
        steps = runsetup.schedule_steps(run.spec)
        train.seek(run.schedule, min(steps, round(steps * spent / max_flops)))


def _start_event(run: Run) -> dict[str, Any]:
    """What the callback's "start" event says about the run."""
    meta = run.spec.meta
    return {
        "sources": run.sources,
        "targets": run.targets,
        "episodes": run.spec.run.episodes,
        "start": run.episode,
        "device": str(run.device),
        "scheduler": meta.scheduler,
        "setting": meta.setting,
        "world": run.world,
    }


def _fit_heads_first(run: Run, callback: Callback) -> tuple[float, int]:
    """`fit_all_heads` once, before a fresh run's first selection (every rank then holds rank 0's
    heads); (seconds, FLOPs) it took, which the first selection is charged with."""
    if run.episode != 0:
        return 0.0, 0
    t = time.perf_counter()
    fitted = runsteps.fit_run_heads(run)
    seconds = time.perf_counter() - t
    if run.world > 1:
        distributed.broadcast_parameters([run.model.heads])
    callback("heads", {**fitted, "seconds": seconds})
    return seconds, fitted["flops"]


def _refit_source_heads(run: Run) -> int:
    """Before every `refit_heads_every`-th selection after the first (0: none): the sources' heads
    fitted again on the frozen encoder, as `fit_all_heads` fits them, so that a source the policy has
    not chosen lately is scored through a head that fits today's encoder, not the first one. Its
    FLOPs, charged to the selection."""
    meta = run.spec.meta
    selection = run.episode // meta.select_every  # the selection about to be made (0: the first)
    if not meta.refit_heads_every or selection == 0 or selection % meta.refit_heads_every:
        return 0
    _, flops, _ = fitting.fit_source_heads(
        run.model, run.streams["fit"], run.sources, meta.head_lr, meta.head_fit_steps, run.device, run.flops
    )
    if run.world > 1:  # rank 0's heads for every rank, as after the first fit
        distributed.broadcast_parameters([run.model.heads[s] for s in run.sources])
    return flops


def _already_done(spec: RunSpec, folder: Path, callback: Callback) -> dict[str, Any] | None:
    """The summary of a resume whose checkpoint already has the run's episodes, which trains and
    writes nothing (no data is read, no model built); None when there are episodes to train. A run
    spec that cannot continue the checkpoint `folder` (`checkpoint.resolve_output`'s) is refused all
    the same."""
    out = Path(spec.run.output_dir)
    spec, _ = resuming.reconcile(spec, folder)  # its notes are about episodes that will not run
    episode = resuming.episode_of(folder)
    if episode < spec.run.episodes:
        return None
    _, _, _, state = checkpoint.load_state(folder)  # for the summary's counts and totals
    message = resuming.nothing_to_train(out, episode, spec.run.episodes)
    if episode > spec.run.episodes:  # fewer episodes than done: most likely a mistake
        callback("warning", {"message": message})
        message = f"nothing trained; the checkpoint in {out} is left at episode {episode}"
    summary = {
        "noise": None,  # no selection was made in this run
        "episodes": episode,
        "complete": True,
        "output_dir": str(out),
        "counts": dict(Counter(state["history"])),
        "totals": dict(state["totals"]),
        "message": message,
        "rank": distributed.rank(),
        "signal": 0,
    }
    callback("end", summary)
    return summary


def _summary(run: Run, total: int, stopped_by: int) -> dict[str, Any]:
    """What `pretrain` returns (and the callback's "end" event): episodes done, counts, totals, a message."""
    done = run.episode >= total
    message = (
        f"{'finished' if done else 'stopped after'} {run.episode}/{total} episodes; checkpoint: {run.out} "
        f"(selection {run.totals['selection_seconds']:.1f}s, training {run.totals['train_seconds']:.1f}s)"
    )
    return {
        "noise": episodelog.noise_verdict(run.totals, run.spec.meta.policy),
        "episodes": run.episode,
        "complete": done,
        "output_dir": str(run.out),
        "counts": dict(Counter(run.history)),
        "totals": run.totals,
        "message": message,
        "rank": run.rank,
        "signal": stopped_by,  # the signal that stopped the run early (0: none)
    }
