"""Training pieces shared by pretraining and finetuning: AdamW with warmup and linear decay (an
`Optimization`: optimizer, schedule, clipping, and its step), and a backward pass that splits a batch
into micro-batches (gradient accumulation) with the same result."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


def adamw(params: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights, as BERT is trained."""
    decay, no_decay = [], []
    for name, p in params:
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def warmup_linear(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over warmup_ratio of the steps, then linear decay to zero."""
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seek(schedule: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put the schedule at `step` and its optimizer's learning rates at the rates it gives there (base
    rate x factor), as if it had stepped that far: a resume, or a budget's FLOPs setting the position."""
    schedule.last_epoch = step
    groups = schedule.optimizer.param_groups
    for g, base, factor in zip(groups, schedule.base_lrs, schedule.lr_lambdas):
        g["lr"] = base * factor(step)
    schedule._last_lr = [g["lr"] for g in groups]


def items(batch: Batch) -> int:
    """How many terms a batch's loss averages: non-ignored labels, else examples."""
    if "labels" in batch:
        return int((batch["labels"] != -100).sum())
    return int(batch["input_ids"].shape[0])


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    """Cut a batch into `parts` micro-batches along the example dimension.

    A tensor's first dimension is either B (examples) or a multiple m * B (e.g. B * C candidate
    sequences in multiple choice); both are cut at the same example boundaries.
    """
    b = min(v.shape[0] for v in batch.values() if v.dim() > 0)
    sizes = [len(c) for c in torch.arange(b).tensor_split(parts) if len(c)]
    out: list[Batch] = [{} for _ in sizes]
    for key, value in batch.items():
        m = value.shape[0] // b
        for i, chunk in enumerate(value.split([s * m for s in sizes])):
            out[i][key] = chunk
    return out


def accumulate(
    forward: Callable[[Batch], torch.Tensor],
    batch: Batch,
    parts: int,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Backward of the batch's mean loss, computed over micro-batches; returns that loss (detached).

    Each micro-batch's mean loss is weighted by its share of the batch's terms, so the gradient
    equals the full batch's within float tolerance.
    """
    micro = split_batch(batch, parts) if parts > 1 else [batch]
    total = max(1, items(batch))
    loss_sum = torch.zeros(())
    for part in micro:
        n = items(part)
        if n == 0:
            continue
        with autocast():
            loss = forward(part).float()
        (loss * (n / total)).backward()
        loss_sum = loss_sum + loss.detach().cpu() * (n / total)
    return loss_sum


@dataclass(frozen=True)
class Optimization:
    """An optimizer, its learning-rate schedule and the gradient clipping of every step."""

    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    max_grad_norm: float  # 0: no clipping

    def step(self, model: nn.Module) -> None:
        """One step with the gradients on `model`'s weights (clipped first), then clear them."""
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)


def optimization(
    params: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    total_steps: int,
    warmup_ratio: float,
    max_grad_norm: float,
) -> Optimization:
    """`adamw` over the named parameters with `warmup_linear` over `total_steps`, clipped at `max_grad_norm`."""
    optimizer = adamw(params, lr, weight_decay)
    return Optimization(optimizer, warmup_linear(optimizer, total_steps, warmup_ratio), max_grad_norm)
