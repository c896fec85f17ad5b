"""The meta step of Algorithm 1: how much one inner update on a source task lowers the target losses.

Everything here is a pure function of a parameter dict, evaluated with `torch.func.functional_call`;
the live model's weights are read, never written. Parameters that get no gradient in an inner step
are passed through as the same tensors, not copied. The caller puts the model in eval mode, so
dropout is off and every candidate is scored on the same target batches (DESIGN.md section 1).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch.func import functional_call

from metapt.model import MultiTaskModel

Params = dict[str, torch.Tensor]
Batch = dict[str, torch.Tensor]
TargetBatches = list[tuple[str, Batch]]  # (target task, batch), shared by every candidate
Autocast = Callable[[], AbstractContextManager]


def detached(model: MultiTaskModel) -> Params:
    """The model's parameters as plain tensors sharing its storage (no copies, no autograd history)."""
    return {n: p.detach() for n, p in model.named_parameters()}


def trainable(model: MultiTaskModel, task: str) -> list[str]:
    """Names of the parameters an inner step on `task` updates: the encoder and the task's head."""
    return [*model.encoder_parameters(), *model.head_parameters(task)]


def loss_at(
    model: MultiTaskModel, params: Params, task: str, batch: Batch, autocast: Autocast
) -> torch.Tensor:
    """L_task(params; batch)."""
    with autocast():
        return functional_call(model, params, (task, batch))[0].float()


def inner_step(
    model: MultiTaskModel,
    params: Params,
    names: list[str],
    task: str,
    batch: Batch,
    alpha: float,
    autocast: Autocast,
) -> tuple[Params, torch.Tensor]:
    """theta' = theta - alpha * grad L_task(theta; batch) for `names`; every other entry passed through."""
    leaves = {n: params[n].detach().requires_grad_() for n in names}
    loss = loss_at(model, {**params, **leaves}, task, batch, autocast)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    stepped = {n: leaves[n].detach() - alpha * g for (n, g) in zip(names, grads) if g is not None}
    return {**params, **stepped}, loss.detach()


@torch.no_grad()
def target_losses(
    model: MultiTaskModel, params: Params, targets: TargetBatches, autocast: Autocast
) -> torch.Tensor:
    """(len(targets),) losses of every target batch at `params`."""
    return torch.stack([loss_at(model, params, t, b, autocast) for t, b in targets])


def _task_sums(losses: torch.Tensor, targets: TargetBatches) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for (t, _), value in zip(targets, losses):
        out[t] = out.get(t, 0.0) + value
    return out


def gain(base: torch.Tensor, after: torch.Tensor, targets: TargetBatches, normalize: str) -> float:
    """One inner step's utility: -sum of target losses after it (Algorithm 1), or with `relative`,
    the sum over targets of each target's relative loss decrease (so no target dominates by scale)."""
    if normalize == "none":
        return -float(after.sum())
    before, now = _task_sums(base, targets), _task_sums(after, targets)
    return float(sum((before[t] - now[t]) / before[t] for t in before))


def exact_utilities(
    model: MultiTaskModel,
    support: dict[str, list[Batch]],
    targets: TargetBatches,
    base: torch.Tensor,
    alpha: float,
    normalize: str,
    autocast: Autocast,
) -> dict[str, float]:
    """u(s) = sum over s's support batches of gain(theta - alpha * grad L_s(theta; batch))."""
    params = detached(model)
    utilities = {}
    for source, batches in support.items():
        names = trainable(model, source)
        u = 0.0
        for batch in batches:
            stepped, _ = inner_step(model, params, names, source, batch, alpha, autocast)
            u += gain(base, target_losses(model, stepped, targets, autocast), targets, normalize)
        utilities[source] = u
    return utilities


def target_gradient(
    model: MultiTaskModel,
    params: Params,
    targets: TargetBatches,
    base: torch.Tensor,
    normalize: str,
    autocast: Autocast,
) -> Params:
    """grad of sum_t w_t L_t at theta, with w_t = 1 (none) or 1 / L_t(theta) summed per target (relative)."""
    leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
    sums = _task_sums(base, targets)
    total = 0.0
    for t, batch in targets:
        weight = 1.0 if normalize == "none" else 1.0 / float(sums[t])
        total = total + weight * loss_at(model, leaves, t, batch, autocast)
    grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
    return {n: g for n, g in zip(leaves, grads) if g is not None}


def first_order_utilities(
    model: MultiTaskModel,
    support: dict[str, list[Batch]],
    targets: TargetBatches,
    base: torch.Tensor,
    alpha: float,
    normalize: str,
    autocast: Autocast,
    g_target: Params | None = None,
) -> dict[str, float]:
    """The first-order estimate of `exact_utilities`: L_T(theta - alpha g_s) ~ L_T(theta) - alpha g_s . g_T,
    in the same units. One backward pass per support batch and one for the targets; no scoring forwards."""
    params = detached(model)
    if g_target is None:
        g_target = target_gradient(model, params, targets, base, normalize, autocast)
    constant = -float(base.sum()) if normalize == "none" else 0.0
    utilities = {}
    for source, batches in support.items():
        names = [n for n in trainable(model, source) if n in g_target]
        u = 0.0
        for batch in batches:
            leaves = {n: params[n].detach().requires_grad_() for n in names}
            loss = loss_at(model, {**params, **leaves}, source, batch, autocast)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            dot = sum(float((g * g_target[n]).sum()) for n, g in zip(names, grads) if g is not None)
            u += constant + alpha * dot
        utilities[source] = u
    return utilities


def choose(utilities: dict[str, float], epsilon: float, generator: torch.Generator) -> tuple[str, bool]:
    """Epsilon-greedy: the argmax (first on ties), or with probability epsilon a uniformly random task."""
    names = list(utilities)
    draw = float(torch.rand((), generator=generator))
    pick = int(torch.randint(len(names), (), generator=generator))  # drawn always: the RNG stays aligned
    if draw < epsilon:
        return names[pick], True
    return max(names, key=lambda n: (utilities[n], -names.index(n))), False
