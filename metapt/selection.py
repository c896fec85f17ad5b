"""The meta step of Algorithm 1: how much one inner update on a source task lowers the target losses,
as an estimate with an error bar.

Everything here is a pure function of a parameter dict, evaluated with `torch.func.functional_call`;
the live model's weights are read, never written. Parameters that get no gradient in an inner step
are passed through as the same tensors, not copied. The caller puts the model in eval mode, so
dropout is off and every candidate is scored on the same target batches (DESIGN.md section 1).

Every utility is a sum of per-batch terms, one per (support batch i, target batch j):

    u(s) = M * offset + sum_ij X_s[i, j]

with X_s[i, j] = w_j (L_j(theta) - L_j(theta'_i)) (exact) or alpha w_j g_s^i . g_j (first order),
w_j = 1 (`none`) or 1 / (target j's task's summed losses at theta) (`relative`), and offset =
-sum_j L_j(theta) for `none` (0 for `relative`): the part every source shares. The terms give the
standard errors (`Estimate.se`, `Estimate.gap_se`, in estimate.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch.func import functional_call

from metapt import probes
from metapt.estimate import Estimate
from metapt.model import MultiTaskModel

Params = dict[str, torch.Tensor]
Batch = dict[str, torch.Tensor]
TargetBatches = list[tuple[str, Batch]]  # (target task, batch), shared by every candidate
Autocast = Callable[[], AbstractContextManager]
FP32_EPS = torch.finfo(torch.float32).eps
INNER_STEPS = ("sgd", "normalized")


# ----------------------------------------------------------------------------- pure functions
def detached(model: MultiTaskModel) -> Params:
    """The model's parameters as plain tensors sharing its storage (no copies, no autograd history)."""
    return {n: p.detach() for n, p in model.named_parameters()}


def trainable(model: MultiTaskModel, task: str, rule: str = "all") -> list[str]:
    """Names of the parameters an inner step on `task` updates: the encoder (`all`, or its top K
    layers for `top:K`) and the task's head."""
    return probes.selected(model, task, rule)


def loss_at(
    model: MultiTaskModel, params: Params, task: str, batch: Batch, autocast: Autocast
) -> torch.Tensor:
    """L_task(params; batch)."""
    with autocast():
        return functional_call(model, params, (task, batch))[0].float()


def encoder_norm(grads: Params) -> float:
    """|g| over the encoder's parameters, the ones every task shares (in float64)."""
    return (
        float(
            sum(torch.sum(g * g, dtype=torch.float64) for n, g in grads.items() if n.startswith("encoder."))
        )
        ** 0.5
    )


def inner_step(
    model: MultiTaskModel,
    params: Params,
    names: list[str],
    task: str,
    batch: Batch,
    alpha: float,
    autocast: Autocast,
    step: str = "sgd",
) -> tuple[Params, torch.Tensor]:
    """theta' = theta - alpha * g (`sgd`) or theta - alpha * g / |g_encoder| (`normalized`: every task
    moves the shared encoder by the same distance alpha), g = grad L_task(theta; batch), for `names`;
    every other entry passed through. theta' is written over the gradients: no third copy."""
    leaves = {n: params[n].detach().requires_grad_() for n in names}
    loss = loss_at(model, {**params, **leaves}, task, batch, autocast)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    got = {n: g for n, g in zip(names, grads) if g is not None}
    scale = alpha / max(encoder_norm(got), 1e-30) if step == "normalized" else alpha
    stepped = {
        n: (g if g.is_contiguous() else g.clone()).mul_(-scale).add_(leaves[n].detach())
        for n, g in got.items()
    }
    return {**params, **stepped}, loss.detach()


@torch.no_grad()
def target_losses(
    model: MultiTaskModel, params: Params, targets: TargetBatches, autocast: Autocast = nullcontext
) -> torch.Tensor:
    """(len(targets),) losses of every target batch at `params`."""
    return torch.stack([loss_at(model, params, t, b, autocast) for t, b in targets])


def _weights(base: torch.Tensor, columns: list[str], normalize: str) -> torch.Tensor:
    """(J,) float64 w_j: 1, or 1 / (the summed losses at theta of target j's task) for `relative`; 0
    for a task whose losses are all 0 (nothing left to lower: its gradients, hence its terms, are 0)."""
    if normalize == "none":
        return torch.ones(len(columns), dtype=torch.float64)
    sums: dict[str, float] = {}
    for t, v in zip(columns, base.tolist()):
        sums[t] = sums.get(t, 0.0) + v
    return torch.tensor([1.0 / sums[t] if sums[t] else 0.0 for t in columns], dtype=torch.float64)


def _offset(base: torch.Tensor, normalize: str) -> float:
    return -float(base.double().sum()) if normalize == "none" else 0.0


def _values(terms: dict[str, torch.Tensor], offset: float) -> dict[str, float]:
    return {s: x.shape[0] * offset + float(x.sum()) for s, x in terms.items()}


def exact(
    model: MultiTaskModel,
    support: dict[str, list[Batch]],
    targets: TargetBatches,
    alpha: float,
    normalize: str,
    autocast: Autocast,
    step: str = "sgd",
    rule: str = "all",
) -> Estimate:
    """Algorithm 1 as written: for every support batch, theta' by one inner step, then the target
    losses at theta'. The inner gradients follow `autocast`; the scoring forwards run in fp32,
    because a gain is a small difference of two large losses (bf16 would round it away). `rule`: the
    parameters the inner step moves (`all`, or `top:K`: the top K layers and the head)."""
    params = detached(model)
    columns = [t for t, _ in targets]
    base = target_losses(model, params, targets)  # (J,) fp32
    w = _weights(base, columns, normalize)
    terms, floor = {}, 0.0
    for source, batches in support.items():
        names, rows = trainable(model, source, rule), []
        for batch in batches:
            stepped, _ = inner_step(model, params, names, source, batch, alpha, autocast, step)
            after = target_losses(model, stepped, targets)
            rows.append(w * (base.double() - after.double()))
            floor = max(floor, FP32_EPS * float((w * (base.abs() + after.abs()).double()).sum()))
            del stepped  # before the next inner step: one theta' alive at a time
        terms[source] = torch.stack(rows)
    floor *= max(len(b) for b in support.values())
    return Estimate(_values(terms, _offset(base, normalize)), terms, columns, float(base.mean()), floor)


def _add(total: Params, grads: Params) -> None:
    """total += grads, in place; a missing entry starts as the gradient itself (autograd's output)."""
    for n, g in grads.items():
        if n in total:
            total[n].add_(g)
        else:
            total[n] = g if g.is_contiguous() else g.clone()  # (an expanded grad is shared)


def batch_gradient(
    model: MultiTaskModel, params: Params, names: list[str], task: str, batch: Batch, autocast: Autocast
) -> tuple[Params, torch.Tensor]:
    """(grad L_task(theta; batch) over `names`, the loss)."""
    leaves = {n: params[n].detach().requires_grad_() for n in names}
    loss = loss_at(model, {**params, **leaves}, task, batch, autocast)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {n: g for n, g in zip(names, grads) if g is not None}, loss.detach()


def _scale(probe: probes.Probe, step: str, alpha: float) -> float:
    """alpha, or alpha / |g_encoder| for `normalized` (the covered encoder part)."""
    return alpha / max(probe.norm, 1e-30) if step == "normalized" else alpha


@dataclass
class Probing:
    """How a first-order selection takes its gradients: which parameters (`rule`: all | top:K), how it
    keeps them (`sketch`: 0 exactly, else folded into that many numbers with signs from `generator`),
    whether it keeps every source's summed support gradient (`sums`, for support reuse), and
    gradients computed before (`given`: task -> probes, e.g. the last training batches')."""

    rule: str = "all"
    sketch: int = 0
    generator: torch.Generator | None = None
    sums: bool = True
    given: dict[str, list[probes.Probe]] = field(default_factory=dict)


def _store(model: MultiTaskModel, probing: Probing, rows: int, step: str) -> probes.Store:
    return probes.Store(model, probing.rule, rows, probing.sketch, probing.generator, step == "normalized")


def _probe(
    model: MultiTaskModel,
    params: Params,
    store: probes.Store,
    task: str,
    batch: Batch,
    autocast: Autocast,
    probing: Probing,
    keep: bool,
    total: Params | None,
) -> probes.Probe:
    """One batch's gradient as a probe (kept in `store` or not); added to `total` when given."""
    g, loss = batch_gradient(model, params, store.selected(task), task, batch, autocast)
    if total is not None:
        _add(total, g)
    return store.add(task, g, float(loss), keep)


def first_order(
    model: MultiTaskModel,
    support: dict[str, list[Batch]],
    targets: TargetBatches,
    alpha: float,
    normalize: str,
    autocast: Autocast,
    step: str = "sgd",
    probing: Probing | None = None,
) -> Estimate:
    """L_j(theta - alpha g) ~ L_j(theta) - alpha g . g_j: one backward per support and per target
    batch, no scoring forwards. Keeps one probe per target batch (they pair with every support batch)
    and, with `probing.sums`, every source's summed support gradient (the engine may train on it)."""
    probing = probing or Probing()
    params = detached(model)
    columns = [t for t, _ in targets]
    store = _store(model, probing, len(targets), step)
    for t, batch in targets:
        _probe(model, params, store, t, batch, autocast, probing, True, None)
    base = torch.tensor([p.loss for p in store.probes])
    w = _weights(base, columns, normalize)
    terms, summed = {}, {}
    for source, batches in support.items():
        total: Params | None = {} if probing.sums else None
        rows = []
        for batch in batches:
            probe = _probe(model, params, store, source, batch, autocast, probing, False, total)
            rows.append(w * _scale(probe, step, alpha) * store.dots(probe))
        terms[source] = torch.stack(rows)
        if total is not None:
            summed[source] = total
    values = _values(terms, _offset(base, normalize))
    return Estimate(values, terms, columns, float(base.mean()), None, summed)


def shared(
    model: MultiTaskModel,
    support: dict[str, list[Batch]],
    alpha: float,
    normalize: str,
    autocast: Autocast,
    step: str = "sgd",
    probing: Probing | None = None,
) -> Estimate:
    """Downstream-agnostic first-order utilities without target batches: the sources' support batches
    double as the target batches. With targets = sources, u(s) needs target batches of every t
    independent of s's batch i. For t != s, t's own M support batches are. For t = s, batch i must not
    score itself (E[g.g] = |E g|^2 + variance: a bias towards noisy tasks), so the other M - 1
    support batches of s stand in for M, scaled by M / (M - 1): the diagonal terms are 0. Each term
    has the expectation of the target-batch estimate's; it needs M >= 2 and one backward per batch
    (none for a source whose probes are `probing.given`)."""
    probing = probing or Probing()
    params = detached(model)
    counts = {s: len(probing.given.get(s, batches)) for s, batches in support.items()}
    for source, m in counts.items():
        if m < 2:
            raise ValueError(f"shared utilities need at least 2 support batches of {source!r}")
    store = _store(model, probing, sum(counts.values()), step)
    summed: dict[str, Params] = {}
    for source, batches in support.items():
        total: Params | None = {} if probing.sums and source not in probing.given else None
        if source in probing.given:  # computed before (flat): folded like the others
            for p in probing.given[source]:
                store.add_given(p)
        for batch in batches if source not in probing.given else ():
            _probe(model, params, store, source, batch, autocast, probing, True, total)
        if total is not None:
            summed[source] = total
    columns = [p.task for p in store.probes]
    base = torch.tensor([p.loss for p in store.probes])
    w = _weights(base, columns, normalize)
    gram = store.gram()  # (K, K)
    index = torch.tensor([i for m in counts.values() for i in range(m)])  # (K,)
    terms, replicates, k = {}, {}, 0
    for source, m in counts.items():
        own = torch.tensor([t == source for t in columns])
        scales = torch.tensor(
            [_scale(store.probes[k + i], step, alpha) for i in range(m)], dtype=torch.float64
        )
        pairs = w * scales[:, None] * gram[k : k + m]  # (M, K)
        pairs[torch.arange(m), k + torch.arange(m)] = 0.0  # a batch never scores itself
        terms[source] = torch.where(own, pairs * m / (m - 1), pairs)
        if m >= 3 and len(set(counts.values())) == 1:
            replicates[source] = _leave_one_out(pairs, own, index, m)
        k += m
    values = _values(terms, _offset(base, normalize))
    return Estimate(values, terms, columns, float(base.mean()), None, summed, replicates)


def _leave_one_out(pairs: torch.Tensor, own: torch.Tensor, index: torch.Tensor, m: int) -> torch.Tensor:
    """(M,) the shared estimate's terms without the m-th support batch of every source, scaled to M
    batches: the cross terms by (M / (M-1))^2, the own pairs by M^2 / ((M-1)(M-2)), as the full
    estimate scales its M(M-1) own pairs by M / (M-1)."""
    out = []
    for drop in range(m):
        keep = (index != drop).double()  # (K,) the columns left
        kept = pairs[torch.arange(m) != drop] * keep  # (M-1, K)
        cross, mine = kept[:, ~own].sum(), kept[:, own].sum()
        out.append(cross * (m / (m - 1)) ** 2 + mine * m * m / ((m - 1) * (m - 2)))
    return torch.stack(out)
