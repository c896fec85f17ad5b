"""The pieces a training run is assembled from: the encoder, the model (the encoder with every task's head
and loss), the optimizers and the batch streams. `runsetup.setup` builds a pretraining run from all four;
`finetune` builds its one-task model with `build_model` and its optimizer with `train.optimization`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from metapt.data.batches import BatchStream, stream_for
from metapt.data.pipeline import TaskData, kind_of
from metapt.model import MultiTaskModel, load_encoder, new_encoder
from metapt.spec import MetaSpec, ModelSpec
from metapt.train import Optimization, optimization

Streams = dict[str, dict[str, BatchStream]]  # "train" | "support" | "target" | "fit" -> task -> stream


def build_encoder(spec: ModelSpec, tokenizer: Any, checkpoint: Path | None = None) -> nn.Module:
    """A checkpoint's encoder (resume), else `[model].pretrained`, else a new one of `[model]`'s shape
    (drawn from torch's global RNG: seed it first)."""
    if checkpoint is not None:
        return load_encoder(str(checkpoint))
    if spec.pretrained:
        return load_encoder(spec.pretrained)
    return new_encoder(spec, len(tokenizer), tokenizer.pad_token_id)


def build_model(encoder: nn.Module, tasks: dict[str, TaskData]) -> MultiTaskModel:
    """The encoder with every task's head (its kind's, in the order of `tasks`: heads draw their
    initial weights from torch's global RNG) and loss (the spec's, else the kind's first)."""
    hidden = encoder.config.hidden_size
    heads = {n: kind_of(t.spec).head(hidden, t.spec, t.info) for n, t in tasks.items()}
    losses = {n: (t.spec.loss_name(), t.spec.loss.label_smoothing) for n, t in tasks.items()}
    return MultiTaskModel(encoder, heads, losses)


def build_optimizers(
    model: MultiTaskModel, head_only: list[str], meta: MetaSpec, total_steps: int
) -> tuple[Optimization, torch.optim.Optimizer | None]:
    """(the training AdamW over every parameter but the `head_only` tasks' heads, with warmup + linear
    decay over `total_steps` and `max_grad_norm` clipping; those heads' own AdamW at `head_lr`, or None
    when there are none). The aware targets' heads train only on the frozen encoder, never in a
    training step."""
    heads = [p for n in head_only for p in model.heads[n].parameters()]
    trained = [(n, p) for n, p in model.named_parameters() if not any(p is q for q in heads)]
    main = optimization(
        trained, meta.lr, meta.weight_decay, total_steps, meta.warmup_ratio, meta.max_grad_norm
    )
    return main, torch.optim.AdamW(heads, lr=meta.head_lr) if heads else None


def build_streams(
    tasks: dict[str, TaskData],
    tokenizer: Any,
    seed: int,
    sources: list[str],
    targets: list[str],
    rank: int = 0,
    world: int = 1,
    support_size: int = 0,
) -> Streams:
    """The batch streams of a pretraining run, each in its own seeded order (a salt per use), so drawing
    from one never shifts another: the sources' training batches (each rank its share of every global
    batch), their support batches (of `support_size` examples; 0: the task's batch size), the targets'
    scoring batches, and the batches heads are fitted on."""

    def stream(name: str, salt: str, shares: int = 1, size: int = 0) -> BatchStream:
        r = rank if shares > 1 else 0
        size = size or tasks[name].spec.batch.size
        return stream_for(tasks[name], tokenizer, size, seed, salt, r, shares)

    # Training batches are split between the ranks; the meta step scores whole batches on every rank:
    # a utility is nonlinear in the support batch's gradient (theta - alpha g), so averaging utilities
    # of per-rank shares would score something else than one process does, and choose differently.
    return {
        "train": {n: stream(n, "train", world) for n in sources},
        "support": {n: stream(n, "support", size=support_size) for n in sources},
        "target": {n: stream(n, "target") for n in targets},
        # fitting the target heads draws its own batches, so the scoring batches stay the same
        "fit": {n: stream(n, "fit") for n in dict.fromkeys([*targets, *sources])},
    }
