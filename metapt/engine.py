"""`metapt pretrain`: the episode loop of Algorithm 1 and of the baseline schedulers.

Per episode: (meta) `select_step` draws the target batches once and `steps.select_task` scores every
source task's M inner steps on them and lets the policy choose, then `steps.step_target_heads` gives
the aware target heads one head-only step; (baselines) the scheduler draws the task; then
`steps.train_task` takes N AdamW steps on the chosen task (`train_chosen`). `setup` assembles the run
from metapt/builders.py. One JSON line per episode goes to OUTPUT_DIR/metrics.jsonl (episodelog.py);
the screen is reached only through `callback(event, data)`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import torch

from metapt import (
    checkpoint,
    distributed,
    episodelog,
    fitting,
    heldout,
    mixture,
    outdir,
    pointless,
    policies,
    probes,
    resuming,
    runspec,
    runstate,
    selection,
    train,
)
from metapt.builders import build_encoder, build_model, build_optimizers, build_streams
from metapt.catalog import KINDS
from metapt.data.batches import stable_seed, train_size
from metapt.data.pipeline import TaskData, load_task, tokenizer_hash
from metapt.data.tokenizer import check_special, load_tokenizer, train_wordpiece
from metapt.device import autocast_for, pick_device
from metapt.errors import TrainingError
from metapt.flops import FlopCounter
from metapt.interrupts import interrupts
from metapt.model import batch_to
from metapt.runstate import Run
from metapt.schedulers import BASELINES
from metapt.spec import RunSpec
from metapt.steps import InnerStep, Selection, TrainStats, select_task, step_target_heads, train_task

Callback = Callable[[str, dict[str, Any]], None]
TOKENIZER_SAMPLE = 100_000  # records of a streamed source read to build a vocabulary


def _corpus_texts(tasks: list[TaskData]) -> list[str]:
    """The source tasks' training text, for training a WordPiece."""
    out: list[str] = []
    for task in tasks:
        # A stream is sampled (its first records), not read whole, to build the vocabulary.
        records = task.records["train"]
        rows = records.take(TOKENIZER_SAMPLE) if isinstance(records, datasets.IterableDataset) else records
        fields = KINDS[task.spec.kind].text
        for row in rows:
            if (name := next((f for f in fields if row.get(f)), None)) is not None:
                out.extend(row[name] if isinstance(row[name], list) else [row[name]])
            # a document's title is text of it too (and the query of ir_relevance)
            out += [row["title"]] if isinstance(row.get("title"), str) else []
    return out


def _tokenizer(spec: RunSpec, resume_dir: Path | None, sources: list[TaskData], tasks: list[TaskData]) -> Any:
    if resume_dir is not None:
        return load_tokenizer(str(resume_dir))
    if spec.tokenizer.pretrained or spec.model.pretrained:
        key = "[tokenizer].pretrained" if spec.tokenizer.pretrained else "[model].pretrained"
        name = spec.tokenizer.pretrained or spec.model.pretrained
        tokenizer = load_tokenizer(name)
        # a new encoder may as well train its own WordPiece; a pretrained one needs its own tokenizer
        also = "" if spec.model.pretrained else ", or leave [tokenizer].pretrained empty to train a WordPiece"
        check_special(tokenizer, f"{key} {name!r}", {t.name: t.spec.kind for t in tasks}, also)
        return tokenizer
    return train_wordpiece(_corpus_texts(sources), spec.tokenizer.vocab_size, spec.tokenizer.lowercase)


def setup(spec: RunSpec, resume: bool, rank: int = 0, world: int = 1) -> Run:
    """Read and encode the tasks, build the model, optimizers and streams, and load the checkpoint on
    resume.

    With `world` > 1 (torchrun) the process joins the group first, every rank builds the same run,
    and the training streams deal each rank its share of every global batch."""
    out = Path(spec.run.output_dir)
    device = pick_device(spec.run.device)
    if world > 1:
        device = distributed.init(device)
    resume_dir = checkpoint.resolve_output(out) if resume else None
    notes: list[str] = []
    if resume_dir is not None:  # every rank reads the checkpoint rank 0 wrote (a shared filesystem)
        distributed.same_everywhere(resume_dir.name, f"the checkpoint to resume in {out}")
        spec, notes = resuming.reconcile(spec, resume_dir)  # before anything is read or loaded
    tokenizer, tasks = _tasks(spec, resume_dir, world)
    # Seeded after the data: encoding a task for the first time draws from the global RNG (a cache
    # file name), and the weights must not depend on whether the feature cache was warm.
    torch.manual_seed(spec.run.seed)
    encoder = build_encoder(spec.model, tokenizer, resume_dir)
    # train(): from_pretrained (a resume, a pretrained encoder) returns eval mode, i.e. dropout off
    model = build_model(encoder, tasks).to(device).train()
    sources, targets = _roles(spec)
    training, head_optimizer = build_optimizers(
        model,
        [n for n in targets if n not in sources],
        spec.meta,
        schedule_steps(spec),
    )
    run = Run(
        spec=spec,
        out=out,
        device=device,
        autocast=autocast_for(device, spec.run.precision),
        tokenizer=tokenizer,
        model=model,
        tasks=tasks,
        sources=sources,
        targets=targets,
        streams=build_streams(
            tasks, tokenizer, spec.run.seed, sources, targets, rank, world, spec.meta.support_batch_size
        ),
        optimizer=training.optimizer,
        schedule=training.schedule,
        head_optimizer=head_optimizer,
        explore=torch.Generator().manual_seed(spec.run.seed),
        flops=FlopCounter(model),
        policy=policies.POLICIES[spec.meta.policy](
            spec.meta.epsilon, spec.meta.discount, spec.meta.bandit_score
        ),
        rank=rank,
        world=world,
        notes=notes,
    )
    if resume_dir is not None:  # the checkpoint's state, with the run spec's learning rates
        rates = resuming.rates(run.optimizer, head_optimizer)
        runstate.restore(run, resume_dir)
        resuming.reapply(rates, run.schedule, run.optimizer, head_optimizer)
    if world > 1:  # as DDP does: every rank starts from rank 0's weights
        distributed.broadcast_parameters([model])
    run.notes += [w for t in tasks.values() for w in t.warnings]
    run.notes += pointless.run_warnings(spec, {n: train_size(t) for n, t in tasks.items()})
    return run


def _tasks(spec: RunSpec, resume_dir: Path | None, world: int) -> tuple[Any, dict[str, TaskData]]:
    """(the tokenizer, every source and target read and encoded with it). The records come first: a
    trained tokenizer needs the sources' text before anything is encoded."""
    raw = {t.name: load_task(t, None, ("train",), encode=False) for t in (*spec.sources, *spec.targets)}
    tokenizer = _tokenizer(spec, resume_dir, [raw[t.name] for t in spec.sources], list(raw.values()))
    if world > 1:
        distributed.same_everywhere(tokenizer_hash(tokenizer), "the tokenizer (a hash of it)")
    tasks = {name: load_task(t.spec, tokenizer, ("train",), records=t.records) for name, t in raw.items()}
    if resume_dir is not None:
        resuming.check_heads(resume_dir, tasks)
    return tokenizer, tasks


def _roles(spec: RunSpec) -> tuple[list[str], list[str]]:
    """(the sources, the targets: the aware targets, else the sources themselves). The single
    scheduler trains the first source, so `single_task` goes first."""
    meta = spec.meta
    sources = [t.name for t in spec.sources]
    if meta.scheduler == "single" and meta.single_task:
        sources.remove(meta.single_task)
        sources.insert(0, meta.single_task)
    targets = [t.name for t in spec.targets] if meta.setting == "aware" else list(sources)
    return sources, targets


def _check(value: float, what: str, run: Run) -> None:
    if value != value or value in (float("inf"), float("-inf")):
        saved = (run.out / "current").exists()
        state = f"the last checkpoint in {run.out} is intact" if saved else "no checkpoint was written yet"
        raise TrainingError(
            f"episode {run.episode + 1}: {what} is {value}; {state}. Lower [meta].lr or [meta].inner_lr "
            f"(or look for extreme values in the data) and {'--resume' if saved else 'run again'}."
        )


def shares_targets(run: Run) -> bool:
    """The run selects with the shared estimate (`MetaSpec.shares_targets`, and its targets are its
    sources)."""
    return run.spec.meta.shares_targets and run.targets == run.sources


def reuses_support(run: Run) -> bool:
    """First-order selection leaves the chosen task's mean support gradient on the weights as its
    first training step (one training batch fewer). Not under torchrun, where a training gradient must
    be the ranks' average, nor with a single training batch (the episode would have no fresh one)."""
    meta = run.spec.meta
    whole = meta.selection_params == "all" and meta.sketch == 0  # a gradient of every parameter, kept
    return meta.utility == "first_order" and meta.train_batches > 1 and run.world == 1 and whole


def reuses_training(run: Run) -> bool:
    """reuse_training: the agnostic shared estimate takes the chosen task's last M training gradients
    as that task's support probes at the next selection (M >= 2 of them, as its own term needs; only
    when the meta scheduler selects: a baseline keeps nothing)."""
    meta = run.spec.meta
    enough = min(meta.train_batches, meta.support_batches) >= 2
    return meta.reuse_training and meta.scheduler == "meta" and shares_targets(run) and enough


def draw_batches(run: Run, shared: bool, given: Any = ()) -> tuple[selection.TargetBatches, dict[str, list]]:
    """This selection's target batches (M of every target, shared by every candidate) and M support
    batches of every source (none of a `given` one: its probes were kept from training)."""
    m, dev = run.spec.meta.support_batches, run.device
    j = run.spec.meta.target_batches or m
    targets = [
        (t, batch_to(run.streams["target"][t].next(), dev))
        for t in ([] if shared else run.targets)
        for _ in range(j)
    ]
    support = {
        s: [batch_to(run.streams["support"][s].next(), dev) for _ in range(0 if s in given else m)]
        for s in run.sources
    }
    return targets, support


def _signs(run: Run) -> torch.Generator | None:
    """The sketch's random signs for this selection: fresh every episode (so sketch errors average out
    over selections) and a function of the seed and the episode (so a resumed run draws the same)."""
    if run.spec.meta.sketch == 0:
        return None
    return torch.Generator().manual_seed(stable_seed(run.spec.run.seed, "sketch", run.episode))


def select_run(run: Run) -> Selection:
    """`steps.select_task` on the run: its model and policy, this selection's batches from its
    streams, the probes its last training kept (reuse_training), its [meta] settings."""
    meta = run.spec.meta
    estimator = "shared" if shares_targets(run) else meta.utility
    given = (run.reused or {}) if reuses_training(run) else {}
    targets, support = draw_batches(run, estimator == "shared", given)
    return select_task(
        run.model,
        support,
        targets,
        run.policy,
        estimator=estimator,
        inner=InnerStep(meta.inner_lr, meta.normalize, run.autocast, meta.inner_step),
        probing=selection.Probing(
            meta.selection_params, meta.sketch, _signs(run), reuses_support(run), given
        ),
        explore=run.explore,
        counter=run.flops,
        check=lambda value, what: _check(value, what, run),
    )


def selects(run: Run, last: str | None) -> bool:
    """Whether the meta scheduler's episode `run.episode` selects: the first one (nothing chosen yet,
    `last` None), then every `select_every`-th; in between it keeps `last`."""
    return last is None or run.episode % run.spec.meta.select_every == 0


def select_step(run: Run) -> tuple[Selection, int]:
    """The episode's meta step: `select_run`, then (aware) the target heads' head-only step on the
    batches it scored; (the selection, that step's FLOPs)."""
    picked = select_run(run)
    if run.head_optimizer is None:
        return picked, 0
    flops = step_target_heads(run.model, run.head_optimizer, picked.targets, run.flops)
    if run.world > 1:
        # Every rank stepped its copy of the target heads on the same batches; rank 0's copy wins, so
        # per-rank dropout or CUDA kernels cannot make the copies drift apart.
        distributed.broadcast_parameters([run.model.heads[t] for t in run.targets])
    return picked, flops


def train_chosen(run: Run, task: str, gradient: selection.Params | None = None) -> TrainStats:
    """`train_task` on `task` with the run's model, training stream and optimizer; under
    reuse_training the last M training gradients become `run.reused`, the next selection's probes."""
    meta = run.spec.meta
    keep = meta.support_batches if reuses_training(run) or run.keep_training else 0
    kept: list[probes.Probe] = []
    stats = train_task(
        run.model,
        run.streams["train"][task],
        run.optimization,
        meta.train_batches,
        gradient=gradient,
        grad_accumulation=meta.grad_accumulation,
        device=run.device,
        autocast=run.autocast,
        counter=run.flops,
        check=lambda value, what: _check(value, what, run),
        keep=keep,
        kept=kept,
        selection_params=meta.selection_params,
    )
    if keep:
        run.reused = {task: kept} if len(kept) >= 2 else None
    return stats


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
    """`_episodes`, unless the checkpoint to resume already has the run's episodes (then nothing runs)."""
    done = _already_done(spec, callback) if resume else None
    return done if done is not None else _episodes(spec, resume, callback, max_flops)


# Algorithm 1 reads top to bottom in one function (STYLE.md 1): its length is the episode's.
def _episodes(spec: RunSpec, resume: bool, callback: Callback, max_flops: float | None) -> dict[str, Any]:  # noqa: PLR0915
    """The episode loop of `pretrain`, in a folder that is checked (and locked on rank 0)."""
    run = setup(spec, resume, distributed.rank(), distributed.world())
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
                picked, head_flops = select_step(run)
                chosen, explored, reused = picked.chosen, picked.explored, False
                fit_flops += head_flops
            utilities = picked.utilities if picked else {}
            chosen, explored, utilities = distributed.agree(chosen, explored, utilities, run.sources)
            _follow_budget(run, spent() + (picked.flops if picked else 0) + fit_flops, max_flops)
            t1 = time.perf_counter()
            stats = train_chosen(run, chosen, picked.gradient if picked else None)  # N steps on it
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
    if total == 0 and not resume:  # `--episodes 0`: the initial weights, a baseline for finetuning
        runstate.save(run)
    summary = _summary(run, total, stop.signal)
    callback("end", summary)
    return summary


def schedule_steps(spec: RunSpec) -> int:
    """The LR schedule's length: N training steps in each of the run's episodes."""
    return spec.run.episodes * spec.meta.train_batches


def _follow_budget(run: Run, spent: float, max_flops: float | None) -> None:
    """Under a budget, before an episode trains: put the LR schedule at the budget's share spent
    (selection included), so it warms up and decays to 0 over the FLOPs, not over the episode cap."""
    if max_flops is not None:
        steps = schedule_steps(run.spec)
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


def fit_run_heads(run: Run) -> dict[str, Any]:
    """`fitting.fit_all_heads` with the run's model, fitting streams, heads and settings."""
    meta = run.spec.meta
    return fitting.fit_all_heads(
        run.model,
        run.streams["fit"],
        run.sources,
        [n for n in run.targets if n not in run.sources],
        run.head_optimizer,
        meta.head_lr,
        meta.head_fit_steps,
        run.device,
        run.flops,
    )


def _fit_heads_first(run: Run, callback: Callback) -> tuple[float, int]:
    """`fit_all_heads` once, before a fresh run's first selection (every rank then holds rank 0's
    heads); (seconds, FLOPs) it took, which the first selection is charged with."""
    if run.episode != 0:
        return 0.0, 0
    t = time.perf_counter()
    fitted = fit_run_heads(run)
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


def _already_done(spec: RunSpec, callback: Callback) -> dict[str, Any] | None:
    """The summary of a resume whose checkpoint already has the run's episodes, which trains and
    writes nothing (no data is read, no model built); None when there are episodes to train. A run
    spec that cannot continue the checkpoint is refused all the same."""
    out = Path(spec.run.output_dir)
    folder = checkpoint.resolve_output(out)
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
