"""Settings that make a run pointless, and a training loss that runs away: said out loud, as warnings
the engine passes to its callback (only the CLI prints them).

"Far above its starting value" (`Divergence`): a task's mean training loss in an episode is more than
FACTOR times, and at least MARGIN above, the first one recorded for that task in the run. An
untrained encoder starts near chance level (masked LM: ln(vocab) ~ 5.7 for 300 words), and a run
that learns only goes down from there, with episode-to-episode noise of a few tenths: twice the
start is worse than guessing by a wide margin, which happens only when the steps are too large.
"""

from __future__ import annotations

import json
from pathlib import Path

from metapt.spec import RunSpec

FACTOR = 2.0
MARGIN = 1.0


class Divergence:
    """Remembers each task's first training loss and warns once per task when one rises far above it."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[int, float]] = {}
        self.warned: set[str] = set()

    @classmethod
    def from_metrics(cls, path: Path) -> Divergence:
        """Seeded with the first losses already in a resumed run's metrics.jsonl."""
        watch = cls()
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    r = json.loads(line)
                    watch.first.setdefault(r["chosen"], (int(r["episode"]), float(r["train_loss"])))
                except (ValueError, KeyError, TypeError):
                    continue  # episodelog.truncate has already refused or dropped such lines
        return watch

    def observe(self, task: str, episode: int, loss: float, lr: float, clip: float) -> str | None:
        """A warning when `loss` is far above the task's first loss (once per task), else None."""
        start_episode, start = self.first.setdefault(task, (episode, loss))
        if task in self.warned or not (loss > FACTOR * start and loss - start >= MARGIN):
            return None
        self.warned.add(task)
        clipping = f"[meta].max_grad_norm (now {clip:g})" if clip > 0 else "[meta].max_grad_norm (now off)"
        return (
            f"episode {episode}: the training loss of {task!r} is {loss:.4g}, {loss / start:.1f}x its "
            f"first value {start:.4g} (episode {start_episode}); training is diverging. Lower [meta].lr "
            f"(now {lr:g}) or clip gradients with {clipping}."
        )


def run_warnings(spec: RunSpec, sizes: dict[str, int]) -> list[str]:
    """What in a run spec makes (part of) the run do nothing useful; `sizes`: train examples per task.
    No "nothing to train" case: a resume whose checkpoint has all the run's episodes is answered by
    engine._already_done (resuming.nothing_to_train) before runsetup.setup, which calls this."""
    meta, episodes, out = spec.meta, spec.run.episodes, []
    steps = episodes * meta.train_batches
    if meta.lr == 0:
        out.append("[meta].lr = 0: AdamW never moves the weights; the run trains nothing")
    if 0 < steps <= int(steps * meta.warmup_ratio):
        out.append(
            f"[meta].warmup_ratio = {meta.warmup_ratio:g}: the warmup lasts all {steps} training steps, so "
            "the learning rate reaches [meta].lr only at the last step and never decays"
        )
    if meta.scheduler == "meta":
        out += _meta_warnings(spec)
    for t in (*spec.sources, *spec.targets):
        if 0 < sizes.get(t.name, t.batch.size) < t.batch.size:
            out.append(
                f"task {t.name!r}: [batch].size = {t.batch.size} is more than its {sizes[t.name]} training "
                "examples, so every batch repeats examples"
            )
    return out


def _meta_warnings(spec: RunSpec) -> list[str]:
    """The meta scheduler's settings that make its selection pointless."""
    meta, episodes, out = spec.meta, spec.run.episodes, []
    if len(spec.sources) == 1:
        out.append("one source task: the meta step always chooses it and only costs time")
    if meta.epsilon == 1:
        out.append(
            "[meta].epsilon = 1: every episode explores a random task, so the meta step's utilities are "
            "never used; scheduler = 'uniform' makes the same kind of choice without selection cost"
        )
    if meta.inner_lr == 0:
        out.append("[meta].inner_lr = 0: the inner step does not move, so every source scores the same")
    if meta.shares_targets and meta.target_batches:
        out.append(
            f"[meta].target_batches = {meta.target_batches} has no effect: agnostic first-order selection scores "
            "the sources' support batches against each other (the shared estimate, no target batches)"
        )
    if meta.refit_heads_every and meta.head_fit_steps == 0:
        out.append(
            f"[meta].refit_heads_every = {meta.refit_heads_every} does nothing: [meta].head_fit_steps = 0 "
            "allows no fitting steps"
        )
    if episodes > 1 and meta.select_every >= episodes:
        out.append(f"[meta].select_every = {meta.select_every}: the meta step chooses once for the whole run")
    return out


def finetune_warnings(lr: float, steps: int, warmup_ratio: float) -> list[str]:
    """The same for one finetuning of `steps` optimizer steps."""
    out = []
    if lr == 0:
        out.append("--lr 0: AdamW never moves the weights; finetuning trains nothing")
    if 0 < steps <= int(steps * warmup_ratio):
        out.append(
            f"[finetune].warmup_ratio = {warmup_ratio:g}: the warmup lasts all {steps} steps, so the learning "
            "rate reaches its peak only at the last step"
        )
    return out
