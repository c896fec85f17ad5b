"""Held-out evaluation during pretraining: every scheduler scored the same way on the same batches.

Every `[run].eval_every` episodes and at the end, the engine scores the targets (aware) or the sources
(agnostic) on `[run].eval_batches` fixed batches per task that selection and training never draw: the
task's validation split when it has one, else a separate seeded stream of its train split (other masks
and pairings of the same examples). They are drawn once per run from the run seed, so a resumed run
scores the very same batches.

Aware targets are scored through a head fitted on the frozen encoder: a fresh head, seeded by the run
seed and the task (so every scheduler and every evaluation starts from the same one), takes
`eval_head_steps` AdamW steps on the encoder states of fixed train batches, computed once. A loss
through the run's own target head would measure how long that head has trained (a baseline never
trains it), not the encoder. Nothing here changes the run: its weights, heads, optimizers, batch
streams and the global RNG state are as they were, so evaluating changes no later episode.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from torch import nn

from metapt.data.batches import BatchStream, StreamingBatchStream, stable_seed
from metapt.data.pipeline import TaskData, kind_of, load_task
from metapt.flops import FlopCounter
from metapt.kinds.losses import LOSSES
from metapt.model import Batch, MultiTaskModel, batch_to
from metapt.spec import RunSection

FIELDS = ("heldout_loss", "heldout_loss_mean", "eval_flops", "eval_seconds")
EMPTY: dict[str, Any] = dict.fromkeys(FIELDS)  # the record fields of an episode that did not evaluate


@dataclass
class HeldOut:
    """The fixed batches of one run: what is scored, and (aware targets) what fits their heads."""

    score: dict[str, list[Batch]]  # task -> held-out batches, in scoring order
    fit: dict[str, list[Batch]]  # target without a trained head -> train batches that fit a fresh one
    origin: dict[str, str]  # task -> "validation" | "train" (a separate stream of it)
    seed: int


def _stream(task: TaskData, tokenizer: Any, seed: int, salt: str, split: str) -> BatchStream:
    streamed = isinstance(task.features[split], datasets.IterableDataset)
    cls = StreamingBatchStream if streamed else BatchStream
    return cls(task, tokenizer, task.spec.batch.size, seed, salt, split=split)


def prepare(
    tasks: dict[str, TaskData], tokenizer: Any, scored: list[str], trained: list[str], run: RunSection
) -> HeldOut:
    """Draw `run.eval_batches` held-out batches of every scored task, and as many fitting batches of
    every scored task whose head the run does not train (aware targets), seeded by `run.seed`.
    Batches stay on the CPU. Torch's global RNG is restored: a split encoded for the first time may
    draw from it, and the weights must not depend on whether the feature cache was warm."""
    score, fit, origin = {}, {}, {}
    with torch.random.fork_rng(devices=[]):
        for name in scored:
            task = tasks[name]
            if "validation" in task.spec.data.splits():
                # The train split's label vocabulary (`info`), so held-out labels mean what the head learns.
                held = load_task(task.spec, tokenizer, ("validation",), info=task.info)
                stream, origin[name] = (
                    _stream(held, tokenizer, run.seed, "heldout", "validation"),
                    "validation",
                )
            else:
                stream, origin[name] = _stream(task, tokenizer, run.seed, "heldout", "train"), "train"
            score[name] = [stream.next() for _ in range(run.eval_batches)]
            if name not in trained:
                fitting = _stream(task, tokenizer, run.seed, "heldout-fit", "train")
                fit[name] = [fitting.next() for _ in range(run.eval_batches)]
    return HeldOut(score, fit, origin, run.seed)


def due(episode: int, every: int, final: bool) -> bool:
    """Whether this episode evaluates: every `every` episodes, and the run's last one (0: never)."""
    return every > 0 and (episode % every == 0 or final)


def fresh_head(model: MultiTaskModel, task: TaskData, seed: int) -> nn.Module:
    """A new head for `task`, initialised from (seed, task) alone; the global RNG is restored."""
    device = next(model.parameters()).device
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(stable_seed(seed, task.name, "heldout-head"))
        return kind_of(task.spec).head(model.encoder.config.hidden_size, task.spec, task.info).to(device)


def fit_on_states(
    head: nn.Module,
    loss: tuple[str, float],
    embedding: torch.Tensor,
    hidden: list[torch.Tensor],
    batches: list[Batch],
    steps: int,
    optimizer: torch.optim.Optimizer,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> None:
    """`steps` optimizer steps of `head` alone on cached encoder states (N, T, H) of `batches`,
    cycled in order; `loss` is the task's (loss type, label smoothing). The encoder is not involved:
    each step costs the head's forward and backward only."""
    loss_type, smoothing = loss
    for step in range(steps):
        k = step % len(batches)
        with autocast():
            value = LOSSES[loss_type](head(hidden[k], batches[k], embedding), batches[k], smoothing)
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def evaluate(
    model: MultiTaskModel,
    tasks: dict[str, TaskData],
    heldout: HeldOut,
    flops: FlopCounter,
    autocast: Callable[[], contextlib.AbstractContextManager],
    run: RunSection,
) -> dict[str, Any]:
    """The record fields of an evaluation: mean held-out loss per task, their mean, its FLOPs and
    seconds (`run`: the eval_head_* settings). The model is left in train mode, as the loop keeps it."""
    start, spent, losses = time.perf_counter(), 0, {}
    device, steps = next(model.parameters()).device, run.eval_head_steps
    model.eval()  # dropout off: a measurement, not a training step
    embedding = model.encoder.get_input_embeddings().weight.detach()  # (V, H)
    for name, batches in heldout.score.items():
        head = model.heads[name]
        if name in heldout.fit:  # aware target: its own fitted head, on the frozen encoder
            fitting = [batch_to(b, device) for b in heldout.fit[name]]
            with torch.no_grad(), autocast():
                hidden = [model.encode(b).float() for b in fitting]  # each (N, T, H)
            spent += sum(flops.forward(name, b) for b in fitting)
            spent += sum(3 * flops.head(name, fitting[k % len(fitting)]) for k in range(steps))
            head = fresh_head(model, tasks[name], heldout.seed).eval()  # dropout off
            optimizer = torch.optim.AdamW(head.parameters(), lr=run.eval_head_lr)
            fit_on_states(head, model.losses[name], embedding, hidden, fitting, steps, optimizer, autocast)
        loss_type, smoothing = model.losses[name]
        total = 0.0
        with torch.no_grad(), autocast():
            for batch in batches:
                batch = batch_to(batch, device)
                logits = head(model.encode(batch), batch, embedding)
                total += float(LOSSES[loss_type](logits, batch, smoothing))
                spent += flops.forward(name, batch)
        losses[name] = total / len(batches)
    model.train()
    return {
        "heldout_loss": losses,
        "heldout_loss_mean": sum(losses.values()) / len(losses),
        "eval_flops": spent,
        "eval_seconds": time.perf_counter() - start,
    }
