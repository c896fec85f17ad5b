"""The steps of metapt/steps.py taken on a `Run`: each reads its batches from the run's streams, its
settings from the run spec's [meta], and keeps what the next step needs on the run (`run.reused`).
The episode loop (engine.py), the bench and the study take their steps through these."""

from __future__ import annotations

from typing import Any

import torch

from metapt import distributed, fitting, probes, selection
from metapt.data.batches import stable_seed
from metapt.errors import TrainingError
from metapt.model import batch_to
from metapt.runstate import Run
from metapt.steps import InnerStep, Selection, TrainStats, select_task, step_target_heads, train_task


def _check(value: float, what: str, run: Run) -> None:
    if value != value or value in (float("inf"), float("-inf")):
        saved = (run.out / "current").exists()
        state = f"the last checkpoint in {run.out} is intact" if saved else "no checkpoint was written yet"
        raise TrainingError(
            f"episode {run.episode + 1}: {what} is {value}; {state}. Lower [meta].lr or [meta].inner_lr "
            f"(or look for extreme values in the data) and {'--resume' if saved else 'run again'}."
        )


def shares_targets(run: Run) -> bool:
    """The run selects with the shared estimate (`MetaSpec.shares_targets`, and its targets are its
    sources)."""
    return run.spec.meta.shares_targets and run.targets == run.sources


def reuses_support(run: Run) -> bool:
    """First-order selection leaves the chosen task's mean support gradient on the weights as its
    first training step (one training batch fewer). Not under torchrun, where a training gradient must
    be the ranks' average, nor with a single training batch (the episode would have no fresh one)."""
    meta = run.spec.meta
    whole = meta.selection_params == "all" and meta.sketch == 0  # a gradient of every parameter, kept
    return meta.utility == "first_order" and meta.train_batches > 1 and run.world == 1 and whole


def reuses_training(run: Run) -> bool:
    """reuse_training: the agnostic shared estimate takes the chosen task's last M training gradients
    as that task's support probes at the next selection (M >= 2 of them, as its own term needs; only
    when the meta scheduler selects: a baseline keeps nothing)."""
    meta = run.spec.meta
    enough = min(meta.train_batches, meta.support_batches) >= 2
    return meta.reuse_training and meta.scheduler == "meta" and shares_targets(run) and enough


def draw_batches(run: Run, shared: bool, given: Any = ()) -> tuple[selection.TargetBatches, dict[str, list]]:
    """This selection's target batches (M of every target, shared by every candidate) and M support
    batches of every source (none of a `given` one: its probes were kept from training)."""
    m, dev = run.spec.meta.support_batches, run.device
    j = run.spec.meta.target_batches or m
    targets = [
        (t, batch_to(run.streams["target"][t].next(), dev))
        for t in ([] if shared else run.targets)
        for _ in range(j)
    ]
    support = {
        s: [batch_to(run.streams["support"][s].next(), dev) for _ in range(0 if s in given else m)]
        for s in run.sources
    }
    return targets, support


def _signs(run: Run) -> torch.Generator | None:
    """The sketch's random signs for this selection: fresh every episode (so sketch errors average out
    over selections) and a function of the seed and the episode (so a resumed run draws the same)."""
    if run.spec.meta.sketch == 0:
        return None
    return torch.Generator().manual_seed(stable_seed(run.spec.run.seed, "sketch", run.episode))


def select_run(run: Run) -> Selection:
    """`steps.select_task` on the run: its model and policy, this selection's batches from its
    streams, the probes its last training kept (reuse_training), its [meta] settings."""
    meta = run.spec.meta
    estimator = "shared" if shares_targets(run) else meta.utility
    given = (run.reused or {}) if reuses_training(run) else {}
    targets, support = draw_batches(run, estimator == "shared", given)
    return select_task(
        run.model,
        support,
        targets,
        run.policy,
        estimator=estimator,
        inner=InnerStep(meta.inner_lr, meta.normalize, run.autocast, meta.inner_step),
        probing=selection.Probing(
            meta.selection_params, meta.sketch, _signs(run), reuses_support(run), given
        ),
        explore=run.explore,
        counter=run.flops,
        check=lambda value, what: _check(value, what, run),
    )


def select_step(run: Run) -> tuple[Selection, int]:
    """The episode's meta step: `select_run`, then (aware) the target heads' head-only step on the
    batches it scored; (the selection, that step's FLOPs)."""
    picked = select_run(run)
    if run.head_optimizer is None:
        return picked, 0
    flops = step_target_heads(run.model, run.head_optimizer, picked.targets, run.flops)
    if run.world > 1:
        # Every rank stepped its copy of the target heads on the same batches; rank 0's copy wins, so
        # per-rank dropout or CUDA kernels cannot make the copies drift apart.
        distributed.broadcast_parameters([run.model.heads[t] for t in run.targets])
    return picked, flops


def train_chosen(run: Run, task: str, gradient: selection.Params | None = None) -> TrainStats:
    """`train_task` on `task` with the run's model, training stream and optimizer; under
    reuse_training the last M training gradients become `run.reused`, the next selection's probes."""
    meta = run.spec.meta
    keep = meta.support_batches if reuses_training(run) or run.keep_training else 0
    kept: list[probes.Probe] = []
    stats = train_task(
        run.model,
        run.streams["train"][task],
        run.optimization,
        meta.train_batches,
        gradient=gradient,
        grad_accumulation=meta.grad_accumulation,
        device=run.device,
        autocast=run.autocast,
        counter=run.flops,
        check=lambda value, what: _check(value, what, run),
        keep=keep,
        kept=kept,
        selection_params=meta.selection_params,
    )
    if keep:
        run.reused = {task: kept} if len(kept) >= 2 else None
    return stats


def fit_run_heads(run: Run) -> dict[str, Any]:
    """`fitting.fit_all_heads` with the run's model, fitting streams, heads and settings."""
    meta = run.spec.meta
    return fitting.fit_all_heads(
        run.model,
        run.streams["fit"],
        run.sources,
        [n for n in run.targets if n not in run.sources],
        run.head_optimizer,
        meta.head_lr,
        meta.head_fit_steps,
        run.device,
        run.flops,
    )
