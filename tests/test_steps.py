"""An episode's steps called with explicit arguments (metapt/steps.py), not through a run: the choice
is the policy's on the estimator's utilities for the batches passed, the weights stay as they were,
the FLOPs are counted as documented, the reused support gradient comes back as a value and goes
into `train_task` as an argument, and the aware heads' step moves only the heads."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from conftest import tiny_run

from metapt import runsetup, selection, steps
from metapt.policies import Greedy

NO_AUTOCAST = contextlib.nullcontext

pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class Checks(list):
    """A `check` that records what it was asked to check (the engine's raises on a non-finite value)."""

    def __call__(self, value: float, what: str) -> None:
        self.append((what, value))


@pytest.mark.parametrize("estimator", ["exact", "first_order"])
def test_select_task_chooses_the_argmax_of_the_utilities_of_the_batches_it_is_given(
    tmp_path: Path, estimator: str
) -> None:
    run = runsetup.setup(tiny_run(tmp_path, support_batches=2), resume=False)
    support = {s: [run.streams["support"][s].next() for _ in range(2)] for s in run.sources}
    targets = [(t, run.streams["target"][t].next()) for t in run.targets for _ in range(2)]
    before, checks = _weights(run.model), Checks()
    picked = steps.select_task(
        run.model,
        support,
        targets,
        Greedy(0.0),
        estimator=estimator,
        inner=steps.InnerStep(1e-2, "none", NO_AUTOCAST),
        probing=selection.Probing(sums=False),
        explore=torch.Generator().manual_seed(0),
        counter=run.flops,
        check=checks,
    )
    # the same estimate made by hand on the same batches, dropout off
    run.model.eval()
    score = selection.exact if estimator == "exact" else selection.first_order
    want = score(run.model, support, targets, 1e-2, "none", NO_AUTOCAST).values
    run.model.train()
    assert picked.utilities == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert picked.chosen == max(want, key=want.get) and not picked.explored
    assert checks == [("a task utility", u) for u in picked.utilities.values()]  # every utility checked
    assert picked.targets is targets and picked.gradient is None
    assert all(torch.equal(p, before[n]) for n, p in run.model.named_parameters())  # theta untouched
    assert run.model.training  # back in train mode for the training steps
    fwd = sum(run.flops.forward(t, b) for t, b in targets)
    trained = sum(run.flops.train(s, b) for s, bs in support.items() for b in bs)
    assert picked.flops == (fwd + trained + fwd * 4 if estimator == "exact" else 3 * fwd + trained)


def test_the_reused_support_gradient_is_a_value_in_and_out(tmp_path: Path) -> None:
    # probing.sums: the chosen task's mean support gradient comes back in Selection.gradient, equal to
    # the mean of its support batches' gradients computed by hand; train_task takes it as its first
    # step: the optimizer steps N times while N - 1 batches are drawn.
    run = runsetup.setup(tiny_run(tmp_path, support_batches=2, utility="first_order"), resume=False)
    support = {s: [run.streams["support"][s].next() for _ in range(2)] for s in run.sources}
    targets = [(t, run.streams["target"][t].next()) for t in run.targets]
    picked = steps.select_task(
        run.model,
        support,
        targets,
        Greedy(0.0),
        estimator="first_order",
        inner=steps.InnerStep(1e-2, "none", NO_AUTOCAST),
        probing=selection.Probing(sums=True),
        explore=torch.Generator().manual_seed(0),
        counter=run.flops,
        check=Checks(),
    )
    run.model.eval()
    params = selection.detached(run.model)
    names = selection.trainable(run.model, picked.chosen)
    grads = [
        selection.batch_gradient(run.model, params, names, picked.chosen, b, NO_AUTOCAST)[0]
        for b in support[picked.chosen]
    ]
    run.model.train()
    assert picked.gradient is not None and set(picked.gradient) == set(grads[0])
    for n, g in picked.gradient.items():
        torch.testing.assert_close(g, (grads[0][n] + grads[1][n]) / 2, rtol=1e-5, atol=1e-7)
    stream = run.streams["train"][picked.chosen]
    drawn = stream.state_dict()["count"]
    stats = steps.train_task(
        run.model,
        stream,
        run.optimization,
        3,
        gradient=picked.gradient,
        grad_accumulation=1,
        device=run.device,
        autocast=NO_AUTOCAST,
        counter=run.flops,
        check=Checks(),
    )
    assert stream.state_dict()["count"] - drawn == 2  # the first of the 3 steps used the given gradient
    assert run.schedule.last_epoch == 3
    assert stats.flops > 0 and stats.tokens > 0


def test_select_task_refuses_an_unknown_estimator(tmp_path: Path) -> None:
    run = runsetup.setup(tiny_run(tmp_path), resume=False)
    support = {s: [run.streams["support"][s].next()] for s in run.sources}
    with pytest.raises(ValueError, match="estimator 'exactly' is not one of exact, first_order, shared"):
        steps.select_task(
            run.model,
            support,
            [],
            Greedy(0.0),
            estimator="exactly",
            inner=steps.InnerStep(1e-2, "none", NO_AUTOCAST),
            probing=selection.Probing(),
            explore=torch.Generator(),
            counter=run.flops,
            check=Checks(),
        )
    assert run.model.training


def test_the_target_heads_step_moves_only_the_target_heads(tmp_path: Path) -> None:
    run = runsetup.setup(tiny_run(tmp_path, "aware.toml"), resume=False)
    assert run.head_optimizer is not None
    aware = [t for t in run.targets if t not in run.sources]
    targets = [(t, run.streams["target"][t].next()) for t in aware]
    before = _weights(run.model)
    flops = steps.step_target_heads(run.model, run.head_optimizer, targets, run.flops)
    assert flops == sum(run.flops.forward(t, b) for t, b in targets)
    moved = {n for n, p in run.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(any(n.startswith(f"heads.{t}.") for t in aware) for n in moved)
    assert all(p.grad is None for p in run.model.parameters())  # nothing reaches the training step
