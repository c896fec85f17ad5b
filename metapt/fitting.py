"""Heads fitted on the frozen encoder before the first selection. A loss through a random head measures
the head, not the encoder: an aware target's loss would say how random its head is, and a source's
utility (the effect of one step through its own head) would follow the head's initialisation, so the
first choices would lock in whichever source it favoured."""

from __future__ import annotations

from typing import Any

import torch

from metapt.data.batches import BatchStream
from metapt.flops import FlopCounter
from metapt.model import MultiTaskModel, batch_to

FIT_BATCHES = 16  # batches of every target the heads are fitted on; the last FIT_HELD check progress
FIT_HELD = 4
FIT_GAIN = 0.001  # fitting stops when a pass lowers the held-out batches' loss by less than this share


def fit_all_heads(
    model: MultiTaskModel,
    streams: dict[str, BatchStream],
    sources: list[str],
    head_only: list[str],
    head_optimizer: torch.optim.Optimizer | None,
    head_lr: float,
    limit: int,
    device: torch.device,
    counter: FlopCounter,
) -> dict[str, Any]:
    """The aware target heads (`head_only`, with their own `head_optimizer`), then the sources' heads,
    each fitted by `fit_heads` on the batches of their "fit" `streams`. The sources' heads are fitted
    with a separate AdamW (`head_lr`), so the training optimizer's state starts as without fitting.
    Returns the steps and held-out losses of both fits, and their FLOPs together."""
    steps, flops, loss = fit_heads(model, streams, head_only, head_optimizer, limit, device, counter)
    s_steps, s_flops, s_loss = fit_source_heads(model, streams, sources, head_lr, limit, device, counter)
    return {
        "steps": steps,
        "loss": loss,
        "source_steps": s_steps,
        "source_loss": s_loss,
        "flops": flops + s_flops,
    }


def fit_source_heads(
    model: MultiTaskModel,
    streams: dict[str, BatchStream],
    sources: list[str],
    head_lr: float,
    limit: int,
    device: torch.device,
    counter: FlopCounter,
) -> tuple[int, int, float]:
    """`fit_heads` on the sources' heads with an AdamW of their own (`head_lr`), so the training
    optimizer's state is as without fitting: before the first selection, and at every refit."""
    heads = [p for s in sources for p in model.heads[s].parameters()]
    optimizer = torch.optim.AdamW(heads, lr=head_lr)
    return fit_heads(model, streams, sources, optimizer, limit, device, counter)


def fit_heads(
    model: MultiTaskModel,
    streams: dict[str, BatchStream],
    fitted: list[str],
    optimizer: torch.optim.Optimizer | None,
    limit: int,
    device: torch.device,
    counter: FlopCounter,
) -> tuple[int, int, float]:
    """Fit the `fitted` tasks' heads on the frozen encoder, so that a task's loss says how well the
    encoder serves it, not how random its head is. The encoder's hidden states of FIT_BATCHES batches
    of every task (from its own stream) are computed once; head-only steps of `optimizer` go over the
    first FIT_BATCHES - FIT_HELD, one batch of every task per step, and after
    each pass the summed loss of the last FIT_HELD decides: fitting stops when a pass lowers it by less
    than FIT_GAIN (or raises it), or after `limit` (`head_fit_steps`) steps. Returns (steps, FLOPs,
    held-out loss)."""
    if not fitted or limit == 0 or optimizer is None:
        return 0, 0, float("nan")
    flops = 0
    model.eval()  # as in scoring: dropout off
    try:
        cached: dict[str, list] = {}
        with torch.no_grad():
            for t in fitted:
                batches = [batch_to(streams[t].next(), device) for _ in range(FIT_BATCHES)]
                cached[t] = [(b, model.encode(b)) for b in batches]  # (batch, hidden (N, T, H))
                flops += sum(counter.forward(t, b) for b in batches)

        def held() -> float:
            with torch.no_grad():
                return sum(float(model(t, b, hidden=h)[0]) for t in fitted for b, h in cached[t][-FIT_HELD:])

        steps, best = 0, held()
        while steps < limit:
            for i in range(FIT_BATCHES - FIT_HELD):
                for t in fitted:
                    batch, hidden = cached[t][i]
                    model(t, batch, hidden=hidden)[0].backward()
                    flops += 3 * counter.head(t, batch)
                optimizer.step()
                model.zero_grad(set_to_none=True)
                steps += 1
                if steps == limit:
                    break
            now = held()
            flops += sum(counter.head(t, b) for t in fitted for b, _ in cached[t][-FIT_HELD:])
            if now > best * (1 - FIT_GAIN):
                best = min(best, now)
                break
            best = now
    finally:
        model.train()
    return steps, flops, best / (FIT_HELD * len(fitted))
