"""`metapt pretrain`: the episode loop of Algorithm 1 and of the baseline schedulers.

Per episode: (meta) sample M target batches once, score every source task's M inner steps on them,
pick the argmax or explore; (baselines) draw the task; then N AdamW steps on the chosen task. One
JSON line per episode goes to OUTPUT_DIR/metrics.jsonl; the screen is reached only through
`callback(event, data)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch

from metapt import (
    checkpoint,
    distributed,
    heldout,
    mixture,
    outdir,
    pointless,
    policies,
    probes,
    resuming,
    selection,
)
from metapt.catalog import KINDS
from metapt.data.pipeline import (
    BatchStream,
    TaskData,
    kind_of,
    load_task,
    stable_seed,
    stream_for,
    tokenizer_hash,
    train_size,
)
from metapt.data.tokenizer import load_tokenizer, train_wordpiece
from metapt.device import autocast_for, pick_device
from metapt.errors import MetaptError, TrainingError
from metapt.flops import FlopCounter, tokens
from metapt.model import MultiTaskModel, batch_to, load_encoder, new_encoder
from metapt.schedulers import BASELINES
from metapt.spec import RunSpec
from metapt.train import accumulate, adamw, warmup_linear

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


# issue 16, second part: split into builders (model, optimizers, streams) that finetune reuses
def setup(spec: RunSpec, resume: bool, rank: int = 0, world: int = 1) -> Run:  # noqa: C901, PLR0915
    """Read and encode the tasks, build the model and optimizers, and load the checkpoint on resume.

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
    meta = spec.meta
    # Records first: a trained tokenizer needs the sources' text before anything is encoded.
    raw = {t.name: load_task(t, None, ("train",), encode=False) for t in (*spec.sources, *spec.targets)}
    tokenizer = _tokenizer(spec, resume_dir, [raw[t.name] for t in spec.sources])
    if world > 1:
        distributed.same_everywhere(tokenizer_hash(tokenizer), "the tokenizer (a hash of it)")
    tasks = {name: load_task(t.spec, tokenizer, ("train",), records=t.records) for name, t in raw.items()}
    if resume_dir is not None:
        resuming.check_heads(resume_dir, tasks)
    # Seeded after the data: encoding a task for the first time draws from the global RNG (a cache
    # file name), and the weights must not depend on whether the feature cache was warm.
    torch.manual_seed(spec.run.seed)
    if resume_dir is not None:
        encoder = load_encoder(str(resume_dir))
    elif spec.model.pretrained:
        encoder = load_encoder(spec.model.pretrained)
    else:
        encoder = new_encoder(spec.model, len(tokenizer), tokenizer.pad_token_id)
    hidden = encoder.config.hidden_size
    heads = {n: kind_of(t.spec).head(hidden, t.spec, t.info) for n, t in tasks.items()}
    losses = {
        n: (t.spec.loss.type or KINDS[t.spec.kind].losses[0], t.spec.loss.label_smoothing)
        for n, t in tasks.items()
    }
    # train(): from_pretrained (a resume, a pretrained encoder) returns eval mode, i.e. dropout off
    model = MultiTaskModel(encoder, heads, losses).to(device).train()
    sources = [t.name for t in spec.sources]
    if meta.scheduler == "single" and meta.single_task:  # the single scheduler trains the first source
        sources.remove(meta.single_task)
        sources.insert(0, meta.single_task)
    targets = [t.name for t in spec.targets] if meta.setting == "aware" else list(sources)
    target_heads = [p for n in targets if n not in sources for p in model.heads[n].parameters()]
    trained = [(n, p) for n, p in model.named_parameters() if not any(p is q for q in target_heads)]
    optimizer = adamw(trained, meta.lr, meta.weight_decay)
    schedule = warmup_linear(optimizer, spec.run.episodes * meta.train_batches, meta.warmup_ratio)
    head_optimizer = torch.optim.AdamW(target_heads, lr=meta.head_lr) if target_heads else None

    def stream(name: str, salt: str, shares: int = 1, size: int = 0) -> BatchStream:
        r = rank if shares > 1 else 0
        size = size or tasks[name].spec.batch.size
        return stream_for(tasks[name], tokenizer, size, spec.run.seed, salt, r, shares)

    # Training batches are split between the ranks; the meta step scores whole batches on every rank:
    # a utility is nonlinear in the support batch's gradient (theta - alpha g), so averaging utilities
    # of per-rank shares would score something else than one process does, and choose differently.
    streams = {
        "train": {n: stream(n, "train", world) for n in sources},
        "support": {n: stream(n, "support", size=meta.support_batch_size) for n in sources},
        "target": {n: stream(n, "target") for n in targets},
        # fitting the target heads draws its own batches, so the scoring batches stay the same
        "fit": {n: stream(n, "fit") for n in dict.fromkeys([*targets, *sources])},
    }
    explore = torch.Generator().manual_seed(spec.run.seed)
    run = Run(
        spec,
        out,
        device,
        autocast_for(device, spec.run.precision),
        tokenizer,
        model,
        tasks,
        sources,
        targets,
        streams,
        optimizer,
        schedule,
        head_optimizer,
        explore,
        FlopCounter(model),
        policies.POLICIES[meta.policy](meta.epsilon, meta.discount),
        rank=rank,
        world=world,
    )
    run.notes = notes
    if resume_dir is not None:  # the checkpoint's state, with the run spec's learning rates
        rates = resuming.rates(optimizer, head_optimizer)
        _restore(run, resume_dir)
        resuming.reapply(rates, schedule, optimizer, head_optimizer)
    if world > 1:  # as DDP does: every rank starts from rank 0's weights
        distributed.broadcast_parameters([model])
    run.notes += [w for t in tasks.values() for w in t.warnings]
    run.notes += pointless.run_warnings(spec, {n: train_size(t) for n, t in tasks.items()}, run.episode)
    return run


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


def _step(run: Run) -> None:
    """One AdamW step with the gradients on the weights, then clear them."""
    if run.spec.meta.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.spec.meta.max_grad_norm)
    run.optimizer.step()
    run.schedule.step()
    run.optimizer.zero_grad(set_to_none=True)


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
    """The meta step: estimate every source's utility, let the policy choose, and keep the aware
    target heads fitted on this selection's target batches (the encoder frozen)."""
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
    if run.head_optimizer is not None:
        flops += _head_step(run, targets)
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
    )


def _head_step(run: Run, targets: selection.TargetBatches) -> int:
    """One head-only AdamW step of the aware target heads on `targets`; returns its FLOPs."""
    flops = 0
    for t, batch in targets:
        loss, _ = run.model(t, batch, detach_encoder=True)
        loss.backward()
        flops += run.flops.forward(t, batch)
    run.head_optimizer.step()
    run.model.zero_grad(set_to_none=True)  # nothing of the target update reaches the training step
    return flops


FIT_BATCHES = 16  # batches of every target the heads are fitted on; the last FIT_HELD check progress
FIT_HELD = 4
FIT_GAIN = 0.001  # fitting stops when a pass lowers the held-out batches' loss by less than this share


def fit_target_heads(run: Run) -> tuple[int, int, float]:
    """`fit_heads` for the aware targets' own heads."""
    return fit_heads(run, [t for t in run.targets if t not in run.sources], run.head_optimizer)


def fit_all_heads(run: Run) -> dict[str, Any]:
    """Before the first selection: the aware target heads, then the sources' heads, each fitted on the
    frozen encoder. A source's utility is the effect of a step through its own head: with a random
    head (a warm-started encoder brings none, and an unchosen source's head never trains) that step
    follows the head's initialisation, and the first choices lock in whichever source it favoured.
    The sources' heads are fitted with a separate AdamW (`head_lr`), so the training optimizer's state
    starts as without fitting."""
    steps, flops, loss = fit_target_heads(run)
    heads = [p for s in run.sources for p in run.model.heads[s].parameters()]
    s_steps, s_flops, s_loss = fit_heads(run, run.sources, torch.optim.AdamW(heads, lr=run.spec.meta.head_lr))
    return {
        "steps": steps,
        "loss": loss,
        "source_steps": s_steps,
        "source_loss": s_loss,
        "flops": flops + s_flops,
    }


def fit_heads(run: Run, fitted: list[str], optimizer: torch.optim.Optimizer | None) -> tuple[int, int, float]:
    """Fit the aware target heads on the frozen encoder before the first selection, so that a target's
    loss says how well the encoder serves it, not how random its head is. The encoder's hidden states
    of FIT_BATCHES batches of every target (their own stream) are computed once; head-only AdamW steps
    (`head_lr`) go over the first FIT_BATCHES - FIT_HELD, one batch of every target per step, and after
    each pass the summed loss of the last FIT_HELD decides: fitting stops when a pass lowers it by less
    than FIT_GAIN (or raises it), or after `head_fit_steps` steps. Returns (steps, FLOPs, held-out loss)."""
    limit = run.spec.meta.head_fit_steps
    if not fitted or limit == 0 or optimizer is None:
        return 0, 0, float("nan")
    model, flops = run.model, 0
    model.eval()  # as in scoring: dropout off
    try:
        cached: dict[str, list] = {}
        with torch.no_grad():
            for t in fitted:
                batches = [batch_to(run.streams["fit"][t].next(), run.device) for _ in range(FIT_BATCHES)]
                cached[t] = [(b, model.encode(b)) for b in batches]  # (batch, hidden (N, T, H))
                flops += sum(run.flops.forward(t, b) for b in batches)

        def held() -> float:
            with torch.no_grad():
                return sum(float(model(t, b, hidden=h)[0]) for t in fitted for b, h in cached[t][-FIT_HELD:])

        steps, best = 0, held()
        while steps < limit:
            for i in range(FIT_BATCHES - FIT_HELD):
                for t in fitted:
                    batch, hidden = cached[t][i]
                    model(t, batch, hidden=hidden)[0].backward()
                    flops += 3 * run.flops.head(t, batch)
                optimizer.step()
                model.zero_grad(set_to_none=True)
                steps += 1
                if steps == limit:
                    break
            now = held()
            flops += sum(run.flops.head(t, b) for t in fitted for b, _ in cached[t][-FIT_HELD:])
            if now > best * (1 - FIT_GAIN):
                best = min(best, now)
                break
            best = now
    finally:
        model.train()
    return steps, flops, best / (FIT_HELD * len(fitted))


def train_task(run: Run, task: str, gradient: selection.Params | None = None) -> tuple[float, int, int]:
    """N AdamW steps on `task`: (mean loss, FLOPs, tokens) of the batches it draws.

    With `gradient` (the chosen task's mean support gradient from first-order selection) that is the
    first step and N - 1 batches are drawn (its FLOPs are counted in selection; its loss and tokens
    are not here)."""
    meta, model = run.spec.meta, run.model
    parts = meta.grad_accumulation if KINDS[run.tasks[task].spec.kind].micro_batches else 1
    losses, flops, n_tokens = [], 0, 0
    steps = meta.train_batches
    keep = meta.support_batches if reuses_training(run) or run.keep_training else 0
    kept: list[probes.Probe] = []
    model.zero_grad(set_to_none=True)
    if gradient is not None:
        for name, p in model.named_parameters():
            if name in gradient:
                p.grad = gradient[name]
        _step(run)
        steps -= 1
    for i, batch in enumerate(_prefetched(run.streams["train"][task], steps)):
        batch = batch_to(batch, run.device)
        loss = accumulate(lambda b: model(task, b)[0], batch, parts, run.autocast)
        loss = distributed.average_gradients(model, loss, batch)  # torchrun: the global batch's mean
        _check(float(loss), f"the training loss of {task!r}", run)
        if i >= steps - keep:  # reuse_training: before clipping, as a selection takes a gradient
            kept.append(probes.capture(model, task, meta.selection_params, float(loss)))
        _step(run)
        losses.append(float(loss))
        flops += run.flops.train(task, batch)
        n_tokens += tokens(batch)
    if keep:
        run.reused = {task: kept} if len(kept) >= 2 else None
    return sum(losses) / max(1, len(losses)), flops, n_tokens


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
def _episodes(spec: RunSpec, resume: bool, callback: Callback, max_flops: float | None) -> dict[str, Any]:  # noqa: C901, PLR0912, PLR0915
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
    metrics_path = run.out / "metrics.jsonl"
    if run.rank == 0:
        run.out.mkdir(parents=True, exist_ok=True)
        outdir.claim(run.out, metrics_path.name)
        _truncate_metrics(metrics_path, run.episode)
    watch = pointless.Divergence.from_metrics(metrics_path)
    stop = _interrupt_flag()
    stopping = False  # stop["set"] as every rank agreed on it after the last episode
    try:  # the previous SIGINT handler comes back however the loop ends (a NaN, a crash)
        callback(
            "start",
            {
                "sources": run.sources,
                "targets": run.targets,
                "episodes": total,
                "start": run.episode,
                "device": str(run.device),
                "scheduler": meta.scheduler,
                "setting": meta.setting,
                "world": run.world,
            },
        )
        last_choice: str | None = run.history[-1] if run.history else None

        def spent() -> float:
            return run.totals["selection_flops"] + run.totals["train_flops"]

        fit_seconds, fit_flops = 0.0, 0  # charged to the first selection
        if meta.scheduler == "meta" and run.episode == 0:
            t = time.perf_counter()
            fitted = fit_all_heads(run)
            fit_seconds, fit_flops = time.perf_counter() - t, fitted["flops"]
            if run.world > 1:
                distributed.broadcast_parameters([run.model.heads])
            callback("heads", {**fitted, "seconds": fit_seconds})

        while run.episode < total and not stopping and (max_flops is None or spent() < max_flops):
            t0 = time.perf_counter() - fit_seconds
            picked: Selection | None = None
            explored, reused = False, False
            if meta.scheduler != "meta":
                chosen = run.sources[
                    BASELINES[meta.scheduler](
                        run.episode, total, sizes, run.explore, meta.temperature, shares
                    )
                ]
            elif last_choice is not None and run.episode % meta.select_every:
                chosen, reused = last_choice, True
            else:
                picked = select_task(run)
                chosen, explored = picked.chosen, picked.explored
                if run.head_optimizer is not None and run.world > 1:
                    # Every rank stepped its copy of the target heads on the same batches; rank 0's copy
                    # wins, so per-rank dropout or CUDA kernels cannot make the copies drift apart.
                    distributed.broadcast_parameters([run.model.heads[t] for t in run.targets])
            utilities = picked.utilities if picked else {}
            chosen, explored, utilities = distributed.agree(chosen, explored, utilities, run.sources)
            sel_flops = (picked.flops if picked else 0) + fit_flops
            fit_seconds, fit_flops = 0.0, 0
            t1 = time.perf_counter()
            train_loss, train_flops, n_tokens = train_task(run, chosen, picked.gradient if picked else None)
            # FLOPs and tokens of the whole global batch (each rank counted its share)
            train_flops, n_tokens = distributed.sum_counts(
                (train_flops, n_tokens), replicated=not run.streams["train"][chosen].sharded
            )
            t2 = time.perf_counter()
            run.episode += 1
            run.history.append(chosen)
            last_choice = chosen
            if picked is not None:
                _count_noise(run.totals, picked.lead_z)
            for key, value in (
                ("selection_seconds", t1 - t0),
                ("train_seconds", t2 - t1),
                ("selection_flops", sel_flops),
                ("train_flops", train_flops),
                ("tokens", n_tokens),
            ):
                run.totals[key] += value
            scores = heldout.EMPTY  # measured, not charged: eval FLOPs are not in `spent()`
            final = run.episode == total or stop["set"] or (max_flops is not None and spent() >= max_flops)
            if held is not None and heldout.due(run.episode, spec.run.eval_every, final):
                scores = heldout.evaluate(run.model, run.tasks, held, run.flops, run.autocast, spec.run)
            record = {
                "episode": run.episode,
                "chosen": chosen,
                "explored": explored,
                "reused": reused,
                "utilities": utilities,
                "utility_se": picked.utility_se if picked else {},
                "lead_z": picked.lead_z if picked else None,
                "policy_scores": picked.policy_scores if picked else {},
                "utility_floor": picked.floor if picked else None,
                "train_loss": train_loss,
                "target_loss": picked.target_loss if picked else None,
                "lr": run.schedule.get_last_lr()[0],
                "selection_seconds": t1 - t0,
                "train_seconds": t2 - t1,
                "selection_flops": sel_flops,
                "train_flops": train_flops,
                "tokens": n_tokens,
                "counts": dict(Counter(run.history)),
                **scores,
            }
            if run.rank == 0:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            callback("episode", record)
            if warning := watch.observe(chosen, run.episode, train_loss, meta.lr, meta.max_grad_norm):
                callback("warning", {"message": warning})
            stopping = distributed.any_rank(stop["set"])
            out_of_budget = max_flops is not None and spent() >= max_flops
            if (
                run.episode % spec.run.checkpoint_every == 0
                or run.episode == total
                or stopping
                or out_of_budget
            ):
                save(run)
                callback("checkpoint", {"episode": run.episode, "path": str(run.out)})
    finally:
        stop["restore"]()
    if total == 0 and not resume:  # `--episodes 0`: the initial weights, a baseline for finetuning
        save(run)
    done = run.episode >= total
    message = (
        f"{'finished' if done else 'stopped after'} {run.episode}/{total} episodes; checkpoint: {run.out} "
        f"(selection {run.totals['selection_seconds']:.1f}s, training {run.totals['train_seconds']:.1f}s)"
    )
    noise = noise_verdict(run.totals, meta.policy)
    summary = {
        "noise": noise,
        "episodes": run.episode,
        "complete": done,
        "output_dir": str(run.out),
        "counts": dict(Counter(run.history)),
        "totals": run.totals,
        "message": message,
        "rank": run.rank,
        "signal": stop["signal"],  # the signal that stopped the run early (0: none)
    }
    callback("end", summary)
    return summary


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


def _interrupt_flag() -> dict[str, Any]:
    """The first Ctrl-C or SIGTERM (what torchrun and Slurm send) asks the loop to finish its episode
    and save; a second one stops at once. flag["signal"] is the number of the first one."""
    flag: dict[str, Any] = {"set": False, "signal": 0, "restore": lambda: None}
    try:
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, frame: Any) -> None:
            flag["set"], flag["signal"] = True, flag["signal"] or signum
            signal.signal(signum, previous[signum])

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        for s in previous:
            signal.signal(s, handler)
        flag["restore"] = restore
    except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
        pass
    return flag
