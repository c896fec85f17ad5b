"""`metapt pretrain`: the episode loop of Algorithm 1 and of the baseline schedulers.

Per episode: (meta) sample M target batches once, score every source task's M inner steps on them,
pick the argmax or explore; (baselines) draw the task; then N AdamW steps on the chosen task. One
JSON line per episode goes to OUTPUT_DIR/metrics.jsonl; the screen is reached only through
`callback(event, data)`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch

from metapt import checkpoint, distributed, heldout, mixture, selection
from metapt.catalog import KINDS
from metapt.data.pipeline import (
    BatchStream,
    TaskData,
    _tokenizer_hash,
    kind_of,
    load_task,
    stream_for,
    train_size,
)
from metapt.data.tokenizer import load_tokenizer, train_wordpiece
from metapt.errors import MetaptError, TrainingError
from metapt.flops import FlopCounter, tokens
from metapt.model import MultiTaskModel, batch_to, load_encoder, new_encoder
from metapt.schedulers import SCHEDULERS
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
    episode: int = 0
    history: list[str] = field(default_factory=list)
    totals: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("selection_seconds", "train_seconds", "selection_flops", "train_flops", "tokens"), 0.0
        )
    )
    rank: int = 0  # under torchrun: this process's rank of `world`; only rank 0 writes
    world: int = 1


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MetaptError(f"[run].device = {name!r} but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on CUDA by default; fp32 elsewhere unless asked."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise MetaptError("[run].precision = 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _corpus_texts(tasks: list[TaskData]) -> list[str]:
    """The source tasks' training text, for training a WordPiece."""
    out: list[str] = []
    for task in tasks:
        # A stream is sampled (its first records), not read whole, to build the vocabulary.
        records = task.records["train"]
        rows = records.take(TOKENIZER_SAMPLE) if isinstance(records, datasets.IterableDataset) else records
        for row in rows:
            for name in ("text", "turns", "tokens", "context"):
                if name in row:
                    out.extend(row[name] if isinstance(row[name], list) else [row[name]])
                    break
    return out


def _tokenizer(spec: RunSpec, resume_dir: Path | None, sources: list[TaskData]) -> Any:
    if resume_dir is not None:
        return load_tokenizer(str(resume_dir))
    if spec.tokenizer.pretrained or spec.model.pretrained:
        return load_tokenizer(spec.tokenizer.pretrained or spec.model.pretrained)
    return train_wordpiece(_corpus_texts(sources), spec.tokenizer.vocab_size, spec.tokenizer.lowercase)


def setup(spec: RunSpec, resume: bool, rank: int = 0, world: int = 1) -> Run:
    """Read and encode the tasks, build the model and optimizers, and load the checkpoint on resume.

    With `world` > 1 (torchrun) the process joins the group first, every rank builds the same run,
    and the training streams deal each rank its share of every global batch."""
    out = Path(spec.run.output_dir)
    device = pick_device(spec.run.device)
    if world > 1:
        device = distributed.init(device)
    resume_dir = checkpoint.resolve(out) if resume else None
    if resume_dir is not None:  # every rank reads the checkpoint rank 0 wrote (a shared filesystem)
        distributed.same_everywhere(resume_dir.name, f"the checkpoint to resume in {out}")
    meta = spec.meta
    # Records first: a trained tokenizer needs the sources' text before anything is encoded.
    raw = {t.name: load_task(t, None, ("train",), encode=False) for t in (*spec.sources, *spec.targets)}
    tokenizer = _tokenizer(spec, resume_dir, [raw[t.name] for t in spec.sources])
    if world > 1:
        distributed.same_everywhere(_tokenizer_hash(tokenizer), "the tokenizer (a hash of it)")
    tasks = {name: load_task(t.spec, tokenizer, ("train",), records=t.records) for name, t in raw.items()}
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

    def stream(name: str, salt: str, shares: int = 1) -> BatchStream:
        r = rank if shares > 1 else 0
        return stream_for(tasks[name], tokenizer, tasks[name].spec.batch.size, spec.run.seed, salt, r, shares)

    # Training batches are split between the ranks; the meta step scores whole batches on every rank:
    # a utility is nonlinear in the support batch's gradient (theta - alpha g), so averaging utilities
    # of per-rank shares would score something else than one process does, and choose differently.
    streams = {
        "train": {n: stream(n, "train", world) for n in sources},
        "support": {n: stream(n, "support") for n in sources},
        "target": {n: stream(n, "target") for n in targets},
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
        rank=rank,
        world=world,
    )
    if resume_dir is not None:
        _restore(run, resume_dir)
    if world > 1:  # as DDP does: every rank starts from rank 0's weights
        distributed.broadcast_parameters([model])
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
        raise TrainingError(
            f"episode {run.episode + 1}: {what} is {value}; the last checkpoint in {run.out} "
            "is intact. Lower [meta].lr or [meta].inner_lr and --resume."
        )


def _shares_targets(run: Run) -> bool:
    """Agnostic first-order selection scores the sources' support gradients against each other
    (`selection.shared_utilities`): no target batches. It needs M >= 2 support batches per source."""
    meta = run.spec.meta
    return (
        meta.utility == "first_order"
        and meta.setting == "agnostic"
        and meta.support_batches >= 2
        and run.targets == run.sources
    )


def _reuses_support(run: Run) -> bool:
    """First-order selection leaves the chosen task's mean support gradient on the weights as its
    first training step (one training batch fewer). Not under torchrun, where a training gradient must
    be the ranks' average, nor with a single training batch (the episode would have no fresh one)."""
    return run.spec.meta.utility == "first_order" and run.spec.meta.train_batches > 1 and run.world == 1


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


def _select(run: Run) -> tuple[str, bool, dict[str, float], float | None, int]:
    """The meta step: (chosen task, explored, utilities, target loss at theta, FLOPs spent).

    First-order selection may leave the chosen task's support gradient on the weights for `_train`."""
    meta, model, dev = run.spec.meta, run.model, run.device
    shared = _shares_targets(run)  # agnostic first-order: the support batches are the target batches
    targets = [
        (t, batch_to(run.streams["target"][t].next(), dev))
        for t in ([] if shared else run.targets)
        for _ in range(meta.support_batches)
    ]
    support = {
        s: [batch_to(run.streams["support"][s].next(), dev) for _ in range(meta.support_batches)]
        for s in run.sources
    }
    model.eval()  # dropout off: otherwise the utilities are noise (DESIGN.md section 1)
    target_fwd = sum(run.flops.forward(t, b) for t, b in targets)
    support_train = sum(run.flops.train(s, b) for s, bs in support.items() for b in bs)
    gradients: dict[str, selection.Params] = {}  # source -> summed support gradient (first-order)
    if meta.utility == "exact":
        base = selection.target_losses(model, selection.detached(model), targets, run.autocast)
        utilities = selection.exact_utilities(
            model, support, targets, base, meta.inner_lr, meta.normalize, run.autocast
        )
        flops = target_fwd + support_train + target_fwd * sum(len(b) for b in support.values())
    elif shared:
        utilities, base, gradients = selection.shared_utilities(
            model, support, meta.inner_lr, meta.normalize, run.autocast
        )
        flops = support_train
    else:  # the target losses at theta come with the target gradient's forwards
        g_target, base = selection.target_gradient_and_losses(
            model, selection.detached(model), targets, meta.normalize, run.autocast
        )
        utilities, gradients = selection.first_order_scores(
            model, support, targets, base, meta.inner_lr, meta.normalize, run.autocast, g_target
        )
        flops = 3 * target_fwd + support_train
    model.train()
    for u in utilities.values():
        _check(u, "a task utility", run)
    chosen, explored = selection.choose(utilities, meta.epsilon, run.explore)
    if run.head_optimizer is not None:  # aware: target heads learn on the target batches, encoder frozen
        for t, batch in targets:
            loss, _ = model(t, batch, detach_encoder=True)
            loss.backward()
            flops += run.flops.forward(t, batch)
        run.head_optimizer.step()
        run.head_optimizer.zero_grad(set_to_none=True)
    if _reuses_support(run):  # the gradient of the chosen task's mean support loss (dropout off)
        for name, p in model.named_parameters():
            if name in gradients[chosen]:
                p.grad = gradients[chosen][name].div_(meta.support_batches)
    return chosen, explored, utilities, float(base.mean()), flops


def _train(run: Run, task: str) -> tuple[float, int, int]:
    """N AdamW steps on `task`: (mean loss, FLOPs, tokens) of the batches it draws.

    A gradient already on the weights is the support gradient `_select` left: it is the first step
    and N - 1 batches are drawn (its FLOPs are counted in selection; its loss and tokens are not here)."""
    meta, model = run.spec.meta, run.model
    parts = meta.grad_accumulation if KINDS[run.tasks[task].spec.kind].micro_batches else 1
    losses, flops, n_tokens = [], 0, 0
    steps = meta.train_batches
    if any(p.grad is not None for p in model.parameters()):
        _step(run)
        steps -= 1
    for batch in _prefetched(run.streams["train"][task], steps):
        batch = batch_to(batch, run.device)
        loss = accumulate(lambda b: model(task, b)[0], batch, parts, run.autocast)
        loss = distributed.average_gradients(model, loss, batch)  # torchrun: the global batch's mean
        _check(float(loss), f"the training loss of {task!r}", run)
        _step(run)
        losses.append(float(loss))
        flops += run.flops.train(task, batch)
        n_tokens += tokens(batch)
    return sum(losses) / max(1, len(losses)), flops, n_tokens


def pretrain(
    spec: RunSpec, resume: bool = False, callback: Callback | None = None, max_flops: float | None = None
) -> dict[str, Any]:
    """Run the episodes of a run spec; returns a summary. Ctrl-C finishes the episode, saves, and stops.
    With `max_flops`, the run also stops after the episode in which selection + training FLOPs reach it
    (equal-compute comparisons: the meta scheduler's selection counts against its budget).

    Under torchrun every rank runs this loop and calls `callback`; the ranks agree on every episode's
    task and on when to stop, and only rank 0 writes metrics.jsonl and checkpoints."""
    callback = callback or (lambda event, data: None)
    run = setup(spec, resume, distributed.rank(), distributed.world())
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
        _truncate_metrics(metrics_path, run.episode)
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

        while run.episode < total and not stopping and (max_flops is None or spent() < max_flops):
            t0 = time.perf_counter()
            utilities: dict[str, float] = {}
            target_loss, sel_flops, explored, reused = None, 0, False, False
            if meta.scheduler != "meta":
                chosen = run.sources[
                    SCHEDULERS[meta.scheduler](
                        run.episode, total, sizes, run.explore, meta.temperature, shares
                    )
                ]
            elif last_choice is not None and run.episode % meta.select_every:
                chosen, reused = last_choice, True
            else:
                chosen, explored, utilities, target_loss, sel_flops = _select(run)
                if run.head_optimizer is not None and run.world > 1:
                    # Every rank stepped its copy of the target heads on the same batches; rank 0's copy
                    # wins, so per-rank dropout or CUDA kernels cannot make the copies drift apart.
                    distributed.broadcast_parameters([run.model.heads[t] for t in run.targets])
            chosen, explored, utilities = distributed.agree(chosen, explored, utilities, run.sources)
            t1 = time.perf_counter()
            train_loss, train_flops, n_tokens = _train(run, chosen)
            # FLOPs and tokens of the whole global batch (each rank counted its share)
            train_flops, n_tokens = distributed.sum_counts(
                (train_flops, n_tokens), replicated=not run.streams["train"][chosen].sharded
            )
            t2 = time.perf_counter()
            run.episode += 1
            run.history.append(chosen)
            last_choice = chosen
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
                "train_loss": train_loss,
                "target_loss": target_loss,
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
    summary = {
        "episodes": run.episode,
        "complete": done,
        "output_dir": str(run.out),
        "counts": dict(Counter(run.history)),
        "totals": run.totals,
        "message": message,
        "rank": run.rank,
    }
    callback("end", summary)
    return summary


def _truncate_metrics(path: Path, episodes_done: int) -> None:
    """Drop metric lines of episodes after the checkpoint being resumed (their work was lost)."""
    if not path.exists():
        return
    if episodes_done == 0:
        path.unlink()
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line and json.loads(line)["episode"] <= episodes_done
    ]
    path.write_text("".join(line + "\n" for line in keep))


def _interrupt_flag() -> dict[str, Any]:
    """The first Ctrl-C asks the loop to finish its episode and save; a second one stops at once."""
    flag: dict[str, Any] = {"set": False, "restore": lambda: None}
    try:
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            flag["set"] = True
            signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, handler)
        flag["restore"] = lambda: signal.signal(signal.SIGINT, previous)
    except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
        pass
    return flag
