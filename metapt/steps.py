"""The two steps of an episode of Algorithm 1, with everything they read passed in:

- `select_task`: every source's utility on the same target batches (one inner step per support
  batch), and the policy's choice -> a `Selection`;
- `train_task`: N optimizer steps on the chosen task -> `TrainStats`;

and `step_target_heads`, the aware target heads' head-only step between them. The live model is
changed only by `train_task` and `step_target_heads`. engine.py draws the batches and passes a run's
pieces in (`runsteps.select_step`, `runsteps.train_chosen`); bench and tests call these directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from metapt import distributed, policies, probes, selection
from metapt.catalog import KINDS
from metapt.data.batches import BatchStream
from metapt.estimate import Estimate
from metapt.flops import FlopCounter, tokens
from metapt.model import MultiTaskModel, batch_to
from metapt.train import Optimization, accumulate

Batch = selection.Batch
Check = Callable[[float, str], None]  # check(value, what) raises on a non-finite value
ESTIMATORS = ("exact", "first_order", "shared")


class Policy(Protocol):
    def choose(self, values: dict[str, float], generator: torch.Generator) -> policies.Choice: ...


class InnerStep(NamedTuple):
    """theta' = theta - lr * step(g) and how gains are weighted: the settings every estimator takes
    (in the order selection.exact / first_order / shared take them)."""

    lr: float
    normalize: str  # none | relative
    autocast: selection.Autocast
    rule: str = "sgd"  # selection.INNER_STEPS


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
    targets: selection.TargetBatches  # the target batches every candidate was scored on


def select_task(
    model: MultiTaskModel,
    support: dict[str, list[Batch]],
    targets: selection.TargetBatches,
    policy: Policy,
    *,
    estimator: str,
    inner: InnerStep,
    probing: selection.Probing,
    explore: torch.Generator,
    counter: FlopCounter,
    check: Check,
) -> Selection:
    """The meta step: every source's utility from its `support` batches (none for a source whose
    probes are `probing.given`) on the same `targets` (none for the `shared` estimator, whose support
    batches are the targets), then `policy.choose` with the `explore` generator. `estimator`: one of
    ESTIMATORS. The model's weights are not changed; with `probing.sums` the chosen task's mean
    support gradient comes back in `Selection.gradient` (its first training step)."""
    estimate, flops = _estimate(model, support, targets, estimator, inner, probing, counter)
    for u in estimate.values.values():
        check(u, "a task utility")
    # torchrun: every rank scored the same batches; the average makes the policies' inputs identical
    values = distributed.average(estimate.values)
    choice = policy.choose(values, explore)
    gradient = None
    if probing.sums and choice.chosen in estimate.gradients:
        m = len(support[choice.chosen])
        gradient = {n: g.div_(m) for n, g in estimate.gradients[choice.chosen].items()}
    return Selection(
        choice.chosen,
        choice.explored,
        values,
        {s: estimate.se(s) for s in values},
        _lead(estimate, values, choice),
        choice.scores,
        estimate.floor,
        estimate.target_loss,
        flops,
        gradient,
        targets,
    )


def _estimate(
    model: MultiTaskModel,
    support: dict[str, list[Batch]],
    targets: selection.TargetBatches,
    estimator: str,
    inner: InnerStep,
    probing: selection.Probing,
    counter: FlopCounter,
) -> tuple[Estimate, int]:
    """Score every source with dropout off: (the estimate, its FLOPs)."""
    target_fwd = sum(counter.forward(t, b) for t, b in targets)
    support_train = sum(counter.train(s, b) for s, bs in support.items() for b in bs)
    model.eval()  # dropout off: otherwise the utilities are noise (DESIGN.md section 1)
    try:
        if estimator == "exact":
            estimate = selection.exact(model, support, targets, *inner, probing.rule)
            return estimate, target_fwd + support_train + target_fwd * sum(len(b) for b in support.values())
        if estimator == "shared":
            return selection.shared(model, support, *inner, probing), support_train
        if estimator == "first_order":  # the target losses at theta come with the target gradients' forwards
            return selection.first_order(
                model, support, targets, *inner, probing
            ), 3 * target_fwd + support_train
        raise ValueError(f"estimator {estimator!r} is not one of {', '.join(ESTIMATORS)}")
    finally:
        model.train()


def _lead(estimate: Estimate, values: dict[str, float], choice: policies.Choice) -> float | None:
    """How far the chosen task leads the runner-up in standard errors: of this selection's gap
    (greedy, which ranks by the utilities), or of the policy's running means (bandit)."""
    if choice.score_se:
        return policies.lead(choice.scores, choice.score_se, choice.chosen)
    others = {s: v for s, v in values.items() if s != choice.chosen}
    if not others:
        return None
    runner = policies.argmax(others)
    gap = estimate.gap_se(choice.chosen, runner)
    return None if gap is None or gap == 0 else (values[choice.chosen] - values[runner]) / gap


def step_target_heads(
    model: MultiTaskModel,
    head_optimizer: torch.optim.Optimizer,
    targets: selection.TargetBatches,
    counter: FlopCounter,
) -> int:
    """One head-only AdamW step of the aware target heads (the encoder frozen) on a selection's
    target batches, so they keep up with the encoder; the next selection scores with them, on other
    batches. Returns its FLOPs."""
    flops = 0
    for t, batch in targets:
        loss, _ = model(t, batch, detach_encoder=True)
        loss.backward()
        flops += counter.forward(t, batch)
    head_optimizer.step()
    model.zero_grad(set_to_none=True)  # nothing of the target update reaches the training step
    return flops


class TrainStats(NamedTuple):
    """What `train_task` did: the mean loss, the FLOPs and the tokens of the batches it drew."""

    loss: float
    flops: int
    tokens: int


def train_task(
    model: MultiTaskModel,
    stream: BatchStream,
    optimization: Optimization,
    steps: int,
    *,
    gradient: selection.Params | None,
    grad_accumulation: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    counter: FlopCounter,
    check: Check,
    keep: int = 0,
    kept: list[probes.Probe] | None = None,
    selection_params: str = "all",
) -> TrainStats:
    """N = `steps` optimizer steps on the stream's task, each on a fresh batch (split into
    `grad_accumulation` micro-batches unless the kind's examples interact; under torchrun the ranks'
    gradients averaged). With `gradient` (first-order selection's mean support gradient of this task)
    the first step is taken with it and N - 1 batches are drawn: its FLOPs were counted by selection,
    its loss and tokens are not in the result. `check(loss, what)` raises on a non-finite loss. With
    `keep` = K > 0 (reuse_training), the gradients of the last K batches are appended to `kept`."""
    task = stream.task.name
    parts = grad_accumulation if KINDS[stream.task.spec.kind].micro_batches else 1
    losses, flops, n_tokens = [], 0, 0
    model.zero_grad(set_to_none=True)
    if gradient is not None:
        for name, p in model.named_parameters():
            if name in gradient:
                p.grad = gradient[name]
        optimization.step(model)
        steps -= 1
    for i, batch in enumerate(prefetched(stream, steps)):
        batch = batch_to(batch, device)
        loss = accumulate(lambda b: model(task, b)[0], batch, parts, autocast)
        loss = distributed.average_gradients(model, loss, batch)  # torchrun: the global batch's mean
        check(float(loss), f"the training loss of {task!r}")
        if kept is not None and i >= steps - keep:  # reuse_training: before clipping, as a selection does
            kept.append(probes.capture(model, task, selection_params, float(loss)))
        optimization.step(model)
        losses.append(float(loss))
        flops += counter.train(task, batch)
        n_tokens += tokens(batch)
    return TrainStats(sum(losses) / max(1, len(losses)), flops, n_tokens)


def prefetched(stream: BatchStream, n: int) -> Iterator[Any]:
    """A generator of the stream's next `n` batches, each collated in a background thread while the
    one before it trains (on CPU collation is ~4% of a step). It never draws more than `n`, so the
    stream ends where drawing them one by one leaves it, with the same batches."""
    if n <= 0:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(stream.next)
        for i in range(n):
            batch = upcoming.result()
            if i + 1 < n:
                upcoming = pool.submit(stream.next)
            yield batch
