"""The plain PyTorch training loop `metapt bench` measures the engine and the meta step against, and a
batch stream's next batches drawn without moving it (so both loops see the same batches)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch

from metapt.model import MultiTaskModel, batch_to


def replay(stream: Any, n: int) -> list[dict]:
    """The next `n` batches `stream` will yield, drawn from a copy (the stream itself does not move)."""
    twin = copy.copy(stream)
    twin.load_state_dict(stream.state_dict())
    return [twin.next() for _ in range(n)]


def plain_steps(
    model: MultiTaskModel,
    optimizer: torch.optim.Optimizer,
    task: str,
    batches: list[dict],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    max_grad_norm: float,
) -> None:
    """The reference: a plain PyTorch loop (forward, backward, clip as the spec does, AdamW step)."""
    model.train()
    for batch in batches:
        batch = batch_to(batch, device)
        with autocast():
            loss = model(task, batch)[0]
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
