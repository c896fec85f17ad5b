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
    """theta' = theta - alpha * grad L_task(theta; batch) for `names`; every other entry passed through.
    theta' is written over the gradients (the same floats as theta - alpha * g): no third copy."""
    leaves = {n: params[n].detach().requires_grad_() for n in names}
    loss = loss_at(model, {**params, **leaves}, task, batch, autocast)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    stepped = {
        n: (g if g.is_contiguous() else g.clone()).mul_(-alpha).add_(leaves[n].detach())
        for n, g in zip(names, grads)
        if g is not None
    }
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
            del stepped  # before the next inner step: one theta' alive at a time
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


def _dot(a: Params, b: Params) -> float:
    """sum over the names of `a` that `b` also holds of <a[n], b[n]>, accumulated in float64."""
    return float(sum(torch.sum(a[n] * b[n], dtype=torch.float64) for n in a if n in b))


def _add(total: Params, grads: Params, weight: float = 1.0, fresh: bool = False) -> None:
    """total += weight * grads, in place. A missing entry starts as a new tensor, or as the gradient
    itself when `fresh` says nothing else holds it (autograd's output): no copy."""
    for n, g in grads.items():
        if n in total:
            total[n].add_(g, alpha=weight)
        elif weight != 1.0:
            total[n] = g * weight
        else:
            total[n] = g if fresh and g.is_contiguous() else g.clone()  # (an expanded grad is shared)


def target_gradient_and_losses(
    model: MultiTaskModel, params: Params, targets: TargetBatches, normalize: str, autocast: Autocast
) -> tuple[Params, torch.Tensor]:
    """`target_gradient` and `target_losses` from the same passes: one forward and backward per target
    batch, so the losses at theta cost no forwards of their own. A task's batches are summed, then
    weighted once its last batch is in (the weight needs all of them), so the engine's order (a task's
    batches together) holds one task's gradient at a time."""
    leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
    last = {t: i for i, (t, _) in enumerate(targets)}
    losses, open_tasks, total = [], {}, {}
    for i, (t, batch) in enumerate(targets):
        loss = loss_at(model, leaves, t, batch, autocast)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        grads = {n: g for n, g in zip(leaves, grads) if g is not None}
        _add(open_tasks.setdefault(t, {}), grads, fresh=True)
        losses.append(loss.detach())
        if last[t] == i:  # t's weight as `target_gradient` computes it
            weight = 1.0 if normalize == "none" else 1.0 / float(_task_sums(torch.stack(losses), targets)[t])
            _add(total, open_tasks.pop(t), weight, fresh=True)
    return total, torch.stack(losses)


def support_gradient(
    model: MultiTaskModel, params: Params, source: str, batches: list[Batch], autocast: Autocast
) -> tuple[Params, float, torch.Tensor]:
    """For one source's support batches at theta: (sum_i g_i over the parameters an inner step updates,
    sum_i |g_i|^2, (len(batches),) losses), with g_i = grad L_source(theta; batch_i)."""
    names = trainable(model, source)
    summed: Params = {}
    squares, losses = 0.0, []
    for batch in batches:
        leaves = {n: params[n].detach().requires_grad_() for n in names}
        loss = loss_at(model, {**params, **leaves}, source, batch, autocast)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        g = {n: d for n, d in zip(names, grads) if d is not None}
        squares += _dot(g, g)
        _add(summed, g, fresh=True)
        losses.append(loss.detach())
    return summed, squares, torch.stack(losses)


def first_order_scores(
    model: MultiTaskModel,
    support: dict[str, list[Batch]],
    targets: TargetBatches,
    base: torch.Tensor,
    alpha: float,
    normalize: str,
    autocast: Autocast,
    g_target: Params | None = None,
) -> tuple[dict[str, float], dict[str, Params]]:
    """`first_order_utilities` and every source's summed support gradient (sum_i g_i, which a caller
    may reuse as a training step). The sum over batches of g_i . g_T is (sum_i g_i) . g_T."""
    params = detached(model)
    if g_target is None:
        g_target = target_gradient(model, params, targets, base, normalize, autocast)
    gradients = {s: support_gradient(model, params, s, bs, autocast)[0] for s, bs in support.items()}
    counts = {s: len(bs) for s, bs in support.items()}
    return first_order_from(gradients, counts, g_target, base, alpha, normalize), gradients


def first_order_from(
    gradients: dict[str, Params],
    counts: dict[str, int],
    g_target: Params,
    base: torch.Tensor,
    alpha: float,
    normalize: str,
) -> dict[str, float]:
    """First-order utilities from every source's summed support gradient (over `counts[s]` batches)
    and a target gradient: sum_i [c + alpha g_s^i . g_T] = M c + alpha (sum_i g_s^i) . g_T."""
    constant = -float(base.sum()) if normalize == "none" else 0.0
    return {s: counts[s] * constant + alpha * _dot(a, g_target) for s, a in gradients.items()}


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
    return first_order_scores(model, support, targets, base, alpha, normalize, autocast, g_target)[0]


def shared_utilities(
    model: MultiTaskModel, support: dict[str, list[Batch]], alpha: float, normalize: str, autocast: Autocast
) -> tuple[dict[str, float], torch.Tensor, dict[str, Params]]:
    """Downstream-agnostic first-order utilities without target batches: the sources' support
    gradients double as the target gradient. Returns (utilities, the support losses at theta, every
    source's summed support gradient).

    With targets = sources, first-order u(s) = sum_i [c + alpha g_s^i . sum_t w_t sum_j g_t^j] needs M
    batches of every t independent of s's batch i. For t != s, t's own M support batches are. For
    t = s, batch i must not score itself (E[g.g] = |E g|^2 + variance: a bias towards noisy tasks), so
    the other M - 1 support batches of s stand in for M, scaled by M / (M - 1):

        u(s) = M c + alpha [A_s . sum_{t != s} w_t A_t + w_s M / (M - 1) (|A_s|^2 - sum_i |g_s^i|^2)]

    with A_s = sum_i g_s^i (sum_i g_s^i . sum_{j != i} g_s^j = |A_s|^2 - sum_i |g_s^i|^2), w_t = 1 or
    1 / (t's summed support losses) for `relative`, and c = -(all support losses) for `none`. Each term
    has the expectation of the target-batch estimate's, so choices are the same in expectation; it
    needs M >= 2 and costs one backward per support batch and nothing else.
    """
    params = detached(model)
    summed, squares, losses = {}, {}, {}
    for source, batches in support.items():
        if len(batches) < 2:
            raise ValueError(f"shared utilities need at least 2 support batches of {source!r}")
        summed[source], squares[source], losses[source] = support_gradient(
            model, params, source, batches, autocast
        )
    weight = {t: 1.0 if normalize == "none" else 1.0 / float(v.sum()) for t, v in losses.items()}
    constant = -float(sum(float(v.sum()) for v in losses.values())) if normalize == "none" else 0.0
    g_all: Params = {}
    for t, g in summed.items():
        _add(g_all, g, weight[t])
    utilities = {}
    for s, a in summed.items():
        m = len(support[s])
        own = _dot(a, a)
        cross = _dot(a, g_all) - weight[s] * own  # A_s . sum_{t != s} w_t A_t
        utilities[s] = m * constant + alpha * (cross + weight[s] * m / (m - 1) * (own - squares[s]))
    return utilities, torch.cat(list(losses.values())), summed


def choose(utilities: dict[str, float], epsilon: float, generator: torch.Generator) -> tuple[str, bool]:
    """Epsilon-greedy: the argmax (first on ties), or with probability epsilon a uniformly random task."""
    names = list(utilities)
    draw = float(torch.rand((), generator=generator))
    pick = int(torch.randint(len(names), (), generator=generator))  # drawn always: the RNG stays aligned
    if draw < epsilon:
        return names[pick], True
    return max(names, key=lambda n: (utilities[n], -names.index(n))), False
