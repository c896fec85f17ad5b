"""`metapt pretrain`: the episode loop of Algorithm 1 and of the baseline schedulers.

Per episode: (meta) `select_task` samples the target batches once, scores every source task's M inner
steps on them and lets the policy choose, then `step_target_heads` gives the aware target heads one
head-only step; (baselines) the scheduler draws the task; then `train_task` takes N AdamW steps on the
chosen task. `setup` assembles the run from metapt/builders.py. One JSON line per episode goes to
OUTPUT_DIR/metrics.jsonl; the screen is reached only through `callback(event, data)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import torch

from metapt import (
    checkpoint,
    distributed,
    fitting,
    heldout,
    mixture,
    outdir,
    pointless,
    policies,
    probes,
    resuming,
    selection,
)
from metapt.builders import build_encoder, build_model, build_optimizers, build_streams
from metapt.catalog import KINDS
from metapt.data.pipeline import (
    BatchStream,
    TaskData,
    load_task,
    stable_seed,
    tokenizer_hash,
    train_size,
)
from metapt.data.tokenizer import load_tokenizer, train_wordpiece
from metapt.device import autocast_for, pick_device
from metapt.errors import MetaptError, TrainingError
from metapt.flops import FlopCounter, tokens
from metapt.interrupts import interrupts
from metapt.model import MultiTaskModel, batch_to
from metapt.schedulers import BASELINES
from metapt.spec import RunSpec
from metapt.train import Optimization, accumulate

Callback = Callable[[str, dict[str, Any]], None]
TOKENIZER_SAMPLE = 100_000  # records of a streamed source read to build a vocabulary


@dataclass
class Run:
    """Everything an episode reads and updates; built by `setup`, saved by `save`."""

    spec: RunSpec
    out: Path
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    tokenizer: Any
    model: MultiTaskModel
    tasks: dict[str, TaskData]
    sources: list[str]
    targets: list[str]
    streams: dict[str, dict[str, BatchStream]]  # "train" | "support" | "target" -> task -> stream
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    head_optimizer: torch.optim.Optimizer | None
    explore: torch.Generator
    flops: FlopCounter
    policy: Any = None  # metapt.policies: turns a selection's estimates into the task (meta scheduler)
    episode: int = 0
    history: list[str] = field(default_factory=list)
    totals: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("selection_seconds", "train_seconds", "selection_flops", "train_flops", "tokens"), 0.0
        )
    )
    rank: int = 0  # under torchrun: this process's rank of `world`; only rank 0 writes
    world: int = 1
    notes: list[str] = field(default_factory=list)  # resume: settings kept or changed, for the log
    # reuse_training: the chosen task's last training gradients, the next selection's probes of it
    reused: dict[str, list[probes.Probe]] | None = None
    keep_training: bool = False  # keep them even when the spec does not reuse them (bench variants)

    @property
    def optimization(self) -> Optimization:
        """The training optimizer with its schedule and the spec's clipping, as `train_task` takes it."""
        return Optimization(self.optimizer, self.schedule, self.spec.meta.max_grad_norm)


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


def _tokenizer(spec: RunSpec, resume_dir: Path | None, sources: list[TaskData]) -> Any:
    if resume_dir is not None:
        return load_tokenizer(str(resume_dir))
    if spec.tokenizer.pretrained or spec.model.pretrained:
        return load_tokenizer(spec.tokenizer.pretrained or spec.model.pretrained)
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
    resume_dir = checkpoint.resolve(out) if resume else None
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
        spec.run.episodes * spec.meta.train_batches,
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
        policy=policies.POLICIES[spec.meta.policy](spec.meta.epsilon, spec.meta.discount),
        rank=rank,
        world=world,
        notes=notes,
    )
    if resume_dir is not None:  # the checkpoint's state, with the run spec's learning rates
        rates = resuming.rates(run.optimizer, head_optimizer)
        _restore(run, resume_dir)
        resuming.reapply(rates, run.schedule, run.optimizer, head_optimizer)
    if world > 1:  # as DDP does: every rank starts from rank 0's weights
        distributed.broadcast_parameters([model])
    run.notes += [w for t in tasks.values() for w in t.warnings]
    run.notes += pointless.run_warnings(spec, {n: train_size(t) for n, t in tasks.items()}, run.episode)
    return run


def _tasks(spec: RunSpec, resume_dir: Path | None, world: int) -> tuple[Any, dict[str, TaskData]]:
    """(the tokenizer, every source and target read and encoded with it). The records come first: a
    trained tokenizer needs the sources' text before anything is encoded."""
    raw = {t.name: load_task(t, None, ("train",), encode=False) for t in (*spec.sources, *spec.targets)}
    tokenizer = _tokenizer(spec, resume_dir, [raw[t.name] for t in spec.sources])
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


def _restore(run: Run, folder: Path) -> None:
    _, heads, _, state = checkpoint.load_state(folder)
    run.model.heads.load_state_dict({k: v.to(run.device) for k, v in heads.items()})
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    if run.head_optimizer is not None:
        run.head_optimizer.load_state_dict(state["head_optimizer"])
    for group, streams in run.streams.items():
        for name, s in streams.items():
            s.load_state_dict(state["streams"][group][name])
    run.explore.set_state(state["explore"])
    run.policy.load_state_dict(state.get("policy", {}))
    run.reused = probes.from_state(state.get("reused", {}), run.device)
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and "cuda_rng" in state:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    ranks = state.get("rank_rng", [])
    if run.world > 1 and len(ranks) == run.world:  # each rank's own dropout RNG (same world size only)
        torch.set_rng_state(ranks[run.rank]["torch"])
        if "cuda" in ranks[run.rank] and run.device.type == "cuda":
            torch.cuda.set_rng_state(ranks[run.rank]["cuda"], run.device)
    run.episode, run.history, run.totals = state["episode"], list(state["history"]), dict(state["totals"])


def save(run: Run) -> Path:
    """Checkpoint the run after `run.episode` completed episodes. Every rank calls it; rank 0 writes
    (with every rank's RNG state), and the others wait until the checkpoint is complete."""
    rng = {"torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    ranks = distributed.gather(rng)
    if run.rank != 0:
        distributed.barrier("waiting for rank 0 to write the checkpoint")
        return run.out / f"checkpoint-{run.episode:06d}"
    state = {
        "episode": run.episode,
        "history": run.history,
        "totals": run.totals,
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "head_optimizer": run.head_optimizer.state_dict() if run.head_optimizer else {},
        "streams": {g: {n: s.state_dict() for n, s in ss.items()} for g, ss in run.streams.items()},
        "explore": run.explore.get_state(),
        "policy": run.policy.state_dict(),
        "reused": probes.state_of(run.reused),
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if run.world > 1:
        state["rank_rng"] = ranks
    heads_info = {
        n: {
            "kind": t.spec.kind,
            "spec": t.spec.path,
            "info": t.info,
            "role": "source" if n in run.sources else "target",
        }
        for n, t in run.tasks.items()
    }
    manifest = {
        "run_spec": run.spec.path,
        "setting": run.spec.meta.setting,
        "scheduler": run.spec.meta.scheduler,
        "seed": run.spec.run.seed,
        "episodes": run.spec.run.episodes,
        "spec": resuming.fingerprint(run.spec),  # what --resume compares the run spec with
    }
    records = mixture.read_records(run.out / "metrics.jsonl", run.episode)
    mix = {mixture.FILE: json.dumps(mixture.summarise(run.sources, run.history, records), indent=2)}
    folder = checkpoint.save(
        run.out,
        run.episode,
        run.model.encoder,
        run.tokenizer,
        run.model.heads,
        heads_info,
        state,
        manifest,
        mix,
    )
    distributed.barrier("writing the checkpoint")
    return folder


def _check(value: float, what: str, run: Run) -> None:
    if value != value or value in (float("inf"), float("-inf")):
        saved = (run.out / "current").exists()
        state = f"the last checkpoint in {run.out} is intact" if saved else "no checkpoint was written yet"
        raise TrainingError(
            f"episode {run.episode + 1}: {what} is {value}; {state}. Lower [meta].lr or [meta].inner_lr "
            f"(or look for extreme values in the data) and {'--resume' if saved else 'run again'}."
        )


def shares_targets(run: Run) -> bool:
    """Agnostic first-order selection scores the sources' support gradients against each other
    (`selection.shared_utilities`): no target batches. It needs M >= 2 support batches per source."""
    meta = run.spec.meta
    return (
        meta.utility == "first_order"
        and meta.setting == "agnostic"
        and meta.support_batches >= 2
        and run.targets == run.sources
    )


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


def _prefetched(stream: BatchStream, n: int) -> Any:
    """A generator of the stream's next `n` batches, each collated in a background thread while the
    one before it trains (on CPU collation is ~4% of a step). It never draws more than `n`, so the
    stream ends where drawing them one by one leaves it, with the same batches."""
    from concurrent.futures import ThreadPoolExecutor

    if n <= 0:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(stream.next)
        for i in range(n):
            batch = upcoming.result()
            if i + 1 < n:
                upcoming = pool.submit(stream.next)
            yield batch


@dataclass
class Selection:
    """One meta step: the task chosen, the evidence it was chosen on, and what it cost."""

    chosen: str
    explored: bool
    utilities: dict[str, float]  # u(s) as Algorithm 1 sums them
    utility_se: dict[str, float | None]  # their standard errors (None with one support batch)
    lead_z: float | None  # how far the chosen task leads the runner-up, in standard errors
    policy_scores: dict[str, float]  # what the policy ranked by (greedy: the utilities)
    floor: float | None  # rounding resolution of a utility (exact)
    target_loss: float  # mean target loss at theta
    flops: int
    gradient: selection.Params | None  # the chosen task's mean support gradient (first-order reuse)
    targets: selection.TargetBatches  # the target batches every candidate was scored on


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


def estimate_utilities(run: Run) -> tuple[selection.Estimate, selection.TargetBatches, int]:
    """Score every source (dropout off): (the estimate, the target batches it used, its FLOPs)."""
    meta, model = run.spec.meta, run.model
    shared = shares_targets(run)  # agnostic first-order: the support batches are the target batches
    given = (run.reused or {}) if reuses_training(run) else {}
    targets, support = draw_batches(run, shared, given)
    target_fwd = sum(run.flops.forward(t, b) for t, b in targets)
    support_train = sum(run.flops.train(s, b) for s, bs in support.items() for b in bs)
    args = (meta.inner_lr, meta.normalize, run.autocast, meta.inner_step)
    probing = selection.Probing(meta.selection_params, meta.sketch, _signs(run), reuses_support(run), given)
    model.eval()  # dropout off: otherwise the utilities are noise (DESIGN.md section 1)
    try:
        if meta.utility == "exact":
            estimate = selection.exact(model, support, targets, *args, meta.selection_params)
            flops = target_fwd + support_train + target_fwd * sum(len(b) for b in support.values())
        elif shared:
            estimate = selection.shared(model, support, *args, probing)
            flops = support_train
        else:  # the target losses at theta come with the target gradients' forwards
            estimate = selection.first_order(model, support, targets, *args, probing)
            flops = 3 * target_fwd + support_train
    finally:
        model.train()
    return estimate, targets, flops


def _signs(run: Run) -> torch.Generator | None:
    """The sketch's random signs for this selection: fresh every episode (so sketch errors average out
    over selections) and a function of the seed and the episode (so a resumed run draws the same)."""
    if run.spec.meta.sketch == 0:
        return None
    return torch.Generator().manual_seed(stable_seed(run.spec.run.seed, "sketch", run.episode))


def select_task(run: Run) -> Selection:
    """The meta step: estimate every source's utility on the same target batches, and let the policy
    choose. The live model is not changed (the aware target heads step after it: `step_target_heads`)."""
    meta = run.spec.meta
    estimate, targets, flops = estimate_utilities(run)
    for u in estimate.values.values():
        _check(u, "a task utility", run)
    # torchrun: every rank scored the same batches; the average makes the policies' inputs identical
    values = distributed.average(estimate.values)
    choice = run.policy.choose(values, run.explore)
    se = {s: estimate.se(s) for s in values}
    if meta.policy == "greedy":
        runner = (
            policies.argmax({s: v for s, v in values.items() if s != choice.chosen})
            if len(values) > 1
            else None
        )
        gap = None if runner is None else estimate.gap_se(choice.chosen, runner)
        lead = None if gap is None or gap == 0 else (values[choice.chosen] - values[runner]) / gap
    else:
        lead = policies.lead(choice.scores, choice.score_se, choice.chosen)
    gradient = None
    # the gradient of the chosen task's mean support loss (dropout off); none when its probes were
    # kept from training (reuse_training)
    if reuses_support(run) and choice.chosen in estimate.gradients:
        gradient = {n: g.div_(meta.support_batches) for n, g in estimate.gradients[choice.chosen].items()}
    return Selection(
        choice.chosen,
        choice.explored,
        values,
        se,
        lead,
        choice.scores,
        estimate.floor,
        estimate.target_loss,
        flops,
        gradient,
        targets,
    )


def step_target_heads(run: Run, targets: selection.TargetBatches) -> int:
    """One head-only AdamW step (`head_lr`, the encoder frozen) of the aware target heads on a
    selection's target batches, so they keep up with the encoder; the next selection scores with
    them, on other batches. Returns its FLOPs (0 without aware target heads)."""
    if run.head_optimizer is None:
        return 0
    flops = 0
    for t, batch in targets:
        loss, _ = run.model(t, batch, detach_encoder=True)
        loss.backward()
        flops += run.flops.forward(t, batch)
    run.head_optimizer.step()
    run.model.zero_grad(set_to_none=True)  # nothing of the target update reaches the training step
    if run.world > 1:
        # Every rank stepped its copy of the target heads on the same batches; rank 0's copy wins, so
        # per-rank dropout or CUDA kernels cannot make the copies drift apart.
        distributed.broadcast_parameters([run.model.heads[t] for t in run.targets])
    return flops


class TrainStats(NamedTuple):
    """What `train_task` did: the mean loss, the FLOPs and the tokens of the batches it drew."""

    loss: float
    flops: int
    tokens: int


def select_step(run: Run) -> tuple[Selection, int]:
    """The episode's meta step: `select_task`, then (aware) the target heads' head-only step on the
    batches it scored; (the selection, that step's FLOPs)."""
    picked = select_task(run)
    return picked, step_target_heads(run, picked.targets)


def train_task(
    model: MultiTaskModel,
    stream: BatchStream,
    optimization: Optimization,
    steps: int,
    *,
    gradient: selection.Params | None,
    grad_accumulation: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    counter: FlopCounter,
    check: Callable[[float, str], None],
    keep: int = 0,
    kept: list[probes.Probe] | None = None,
    selection_params: str = "all",
) -> TrainStats:
    """N = `steps` optimizer steps on the stream's task, each on a fresh batch (split into
    `grad_accumulation` micro-batches unless the kind's examples interact; under torchrun the ranks'
    gradients averaged). With `gradient` (first-order selection's mean support gradient of this task)
    the first step is taken with it and N - 1 batches are drawn: its FLOPs were counted by selection,
    its loss and tokens are not in the result. `check(loss, what)` raises on a non-finite loss. With
    `keep` = K > 0 (reuse_training), the gradients of the last K batches are appended to `kept`."""
    task = stream.task.name
    parts = grad_accumulation if KINDS[stream.task.spec.kind].micro_batches else 1
    losses, flops, n_tokens = [], 0, 0
    model.zero_grad(set_to_none=True)
    if gradient is not None:
        for name, p in model.named_parameters():
            if name in gradient:
                p.grad = gradient[name]
        optimization.step(model)
        steps -= 1
    for i, batch in enumerate(_prefetched(stream, steps)):
        batch = batch_to(batch, device)
        loss = accumulate(lambda b: model(task, b)[0], batch, parts, autocast)
        loss = distributed.average_gradients(model, loss, batch)  # torchrun: the global batch's mean
        check(float(loss), f"the training loss of {task!r}")
        if kept is not None and i >= steps - keep:  # reuse_training: before clipping, as a selection does
            kept.append(probes.capture(model, task, selection_params, float(loss)))
        optimization.step(model)
        losses.append(float(loss))
        flops += counter.train(task, batch)
        n_tokens += tokens(batch)
    return TrainStats(sum(losses) / max(1, len(losses)), flops, n_tokens)


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
    training FLOPs reach it (equal-compute comparisons: the meta scheduler's selection counts).

    The output folder must be empty or absent unless `resume` (continue its checkpoint) or
    `overwrite` (remove metapt's own files there first); rank 0 holds its lock while the run writes.
    Under torchrun every rank runs the loop and calls `callback`; the ranks agree on every episode's
    task and on when to stop, and only rank 0 writes metrics.jsonl and checkpoints."""
    callback = callback or (lambda event, data: None)
    if distributed.rank() != 0:
        return _episodes(spec, resume, callback, max_flops)
    folder = Path(spec.run.output_dir)
    with outdir.run_folder(folder, "pretrain", "metapt pretrain", resume, overwrite) as lock:
        if lock.warning:
            callback("warning", {"message": lock.warning})
        return _episodes(spec, resume, callback, max_flops)


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
    metrics_path = _metrics_file(run)
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
            elif last is not None and run.episode % meta.select_every:  # between selections: keep it
                chosen, explored, reused = last, False, True
            else:  # Algorithm 1: every source's utility on the same target batches, the policy's choice
                picked, head_flops = select_step(run)
                chosen, explored, reused = picked.chosen, picked.explored, False
                fit_flops += head_flops
            utilities = picked.utilities if picked else {}
            chosen, explored, utilities = distributed.agree(chosen, explored, utilities, run.sources)
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
            cost = Cost(
                t1 - t0, t2 - t1, (picked.flops if picked else 0) + fit_flops, stats.flops, stats.tokens
            )
            fit_seconds, fit_flops = 0.0, 0
            _account(run.totals, cost, picked)
            record = _record(run, chosen, explored, reused, utilities, picked, stats, cost)
            final = run.episode == total or stop.asked or (max_flops is not None and spent() >= max_flops)
            if held is not None and heldout.due(run.episode, spec.run.eval_every, final):
                # measured, not charged: evaluation FLOPs are not in `spent()`
                record |= heldout.evaluate(run.model, run.tasks, held, run.flops, run.autocast, spec.run)
            _append(metrics_path, record, run.rank)
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
                save(run)
                callback("checkpoint", {"episode": run.episode, "path": str(run.out)})
    if total == 0 and not resume:  # `--episodes 0`: the initial weights, a baseline for finetuning
        save(run)
    summary = _summary(run, total, stop.signal)
    callback("end", summary)
    return summary


def _metrics_file(run: Run) -> Path:
    """OUTPUT_DIR/metrics.jsonl, claimed by rank 0 and cut back to the checkpoint's episodes."""
    path = run.out / "metrics.jsonl"
    if run.rank == 0:
        run.out.mkdir(parents=True, exist_ok=True)
        outdir.claim(run.out, path.name)
        _truncate_metrics(path, run.episode)
    return path


def _append(path: Path, record: dict[str, Any], rank: int) -> None:
    """One JSON line (rank 0 alone writes)."""
    if rank == 0:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")


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


class Cost(NamedTuple):
    """What an episode spent: seconds and FLOPs of selecting and of training, and training tokens."""

    selection_seconds: float
    train_seconds: float
    selection_flops: int
    train_flops: int
    tokens: int


def _account(totals: dict[str, float], cost: Cost, picked: Selection | None) -> None:
    """Add an episode's cost to the run's totals, and count a selection's lead against its noise."""
    for key, value in cost._asdict().items():
        totals[key] += value
    if picked is not None:
        _count_noise(totals, picked.lead_z)


def _record(
    run: Run,
    chosen: str,
    explored: bool,
    reused: bool,
    utilities: dict[str, float],
    picked: Selection | None,
    stats: TrainStats,
    cost: Cost,
) -> dict[str, Any]:
    """The episode's metrics.jsonl line (DESIGN.md section 6); the selection's fields are empty when the
    episode did not select."""
    return {
        "episode": run.episode,
        "chosen": chosen,
        "explored": explored,
        "reused": reused,
        "utilities": utilities,
        "utility_se": picked.utility_se if picked else {},
        "lead_z": picked.lead_z if picked else None,
        "policy_scores": picked.policy_scores if picked else {},
        "utility_floor": picked.floor if picked else None,
        "train_loss": stats.loss,
        "target_loss": picked.target_loss if picked else None,
        "lr": run.schedule.get_last_lr()[0],
        **cost._asdict(),
        "counts": dict(Counter(run.history)),
        **heldout.EMPTY,  # filled in on the episodes that evaluate
    }


def _summary(run: Run, total: int, stopped_by: int) -> dict[str, Any]:
    """What `pretrain` returns (and the callback's "end" event): episodes done, counts, totals, a message."""
    done = run.episode >= total
    message = (
        f"{'finished' if done else 'stopped after'} {run.episode}/{total} episodes; checkpoint: {run.out} "
        f"(selection {run.totals['selection_seconds']:.1f}s, training {run.totals['train_seconds']:.1f}s)"
    )
    return {
        "noise": noise_verdict(run.totals, run.spec.meta.policy),
        "episodes": run.episode,
        "complete": done,
        "output_dir": str(run.out),
        "counts": dict(Counter(run.history)),
        "totals": run.totals,
        "message": message,
        "rank": run.rank,
        "signal": stopped_by,  # the signal that stopped the run early (0: none)
    }


SURE = 2.0  # a choice is above noise when it leads the runner-up by more than this many standard errors


def _count_noise(totals: dict[str, float], lead: float | None) -> None:
    """Count a selection, and whether its lead was within noise or had no error bar."""
    totals["selections"] = totals.get("selections", 0) + 1
    if lead is None:
        totals["selections_without_se"] = totals.get("selections_without_se", 0) + 1
    elif abs(lead) <= SURE:
        totals["selections_within_noise"] = totals.get("selections_within_noise", 0) + 1


def noise_verdict(totals: dict[str, float], policy: str) -> str | None:
    """A one-line warning when most selections could not tell their tasks apart, else None."""
    n = int(totals.get("selections", 0))
    within, unknown = (
        int(totals.get("selections_within_noise", 0)),
        int(totals.get("selections_without_se", 0)),
    )
    if n == 0:
        return None
    if unknown * 2 > n:
        return (
            f"{unknown} of {n} selections had no standard error (one support batch per source, or two "
            "with the agnostic shared estimate): nothing shows whether the choices beat noise; use "
            'support_batches >= 2 (>= 3 for the shared estimate) or policy = "bandit"'
        )
    if within * 2 > n:
        what = "its running estimates" if policy == "bandit" else "the utilities"
        return (
            f"{within} of {n} selections chose within {SURE:g} standard errors of the runner-up by {what}: "
            "most choices were not distinguishable from noise"
        )
    return None


def _truncate_metrics(path: Path, episodes_done: int) -> None:
    """Drop metric lines of episodes after the checkpoint being resumed (their work was lost), and a
    last line cut short by a kill mid-write. The file is replaced atomically."""
    if not path.exists():
        return
    if episodes_done == 0:
        path.unlink()
        return
    lines = path.read_text(errors="replace").splitlines()
    keep = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            episode = json.loads(line)["episode"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):  # the line being written when the process died
                continue
            raise MetaptError(
                f"{path}:{number}: not an episode record; metapt writes one JSON object per line. "
                "Remove or fix that line, then --resume again."
            ) from None
        if episode <= episodes_done:
            keep.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
