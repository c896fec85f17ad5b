"""`metapt bench`'s selection study (issue #14): the run spec's selection and variants of it, each
against a reference selection on the same weights, episode by episode, in one process.

Before every engine episode (so on the weights that episode selects on), the study
- scores a *reference*: exact Algorithm 1 with many more support and target batches (`REFERENCE`
  of each, training-sized), whose leader is *sure* when it leads the runner-up by more than `SURE`
  standard errors of their gap (`Estimate.gap_se`);
- runs every *variant* (the run spec with [meta] keys changed, e.g. `support_batch_size=8`) through
  `runsteps.select_run` on a view of the run: its own support and target streams, its own policy (with
  epsilon 0: exploration is a choice not to agree) and no target-head step, so the live model and
  the run's streams, RNG and policy are untouched and the engine's trajectory is `pretrain`'s. Each
  variant is timed, and its choice compared with the reference's leader.
Variants with the same probe size and schedule draw the same batches in the same episode. A variant
with select_every = k > 1 selects where `engine.selects` says, as the engine does: in the warm-up
episode (`start`, untimed and not scored), then in every k-th; in between it keeps its last choice at
no cost (with k = 1 it selects in every timed episode, the warm-up skipped). So its
agreement is that of the choice in effect, and its share is its selections' time over all the timed
episodes' time. The weights are still the engine's run's, not those of a run that held its choices.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from metapt import engine, policies, probes, runsteps, selection, validation
from metapt.data.batches import stream_for
from metapt.errors import MetaptError
from metapt.model import batch_to
from metapt.runstate import Run
from metapt.spec import MetaSpec, TaskSpec

REFERENCE = 8  # support batches per source and target batches per target of the reference
SURE = 2.0  # the reference is sure when its leader leads by more than this many standard errors
# what the study runs besides the run spec itself: [meta] changes, relative to the spec
VARIANTS = (
    "support_batch_size=0,sketch=0,reuse_training=false,policy=greedy",  # the default before #14
    "policy=greedy",
    "support_batch_size=0",
    "support_batch_size=8",
    "support_batch_size=2",
    "selection_params=top:1",
    "sketch=0",
    "sketch=16384",
    "support_batches=4",
    "reuse_training=false",
)


def again(m: int) -> str:
    """The reference as a variant on batches of its own (`bench --reference-check`): how often this
    second, independent reference agrees with a sure one is the ceiling of any estimate's agreement."""
    return (
        f"utility=exact,support_batches={m},target_batches={m},support_batch_size=0,selection_params=all,"
        "policy=greedy,select_every=1"
    )


_KINDS = {int: "an integer", float: "a number", str: "a string"}


def parse_variant(text: str, base: MetaSpec, sources: Iterable[TaskSpec] = ()) -> MetaSpec:
    """`key=value[,key=value]` over [meta] keys -> the changed MetaSpec (MetaptError when invalid,
    also for a probe size that `sources` cannot be probed with)."""
    fields = {f.name: f for f in dataclasses.fields(MetaSpec)}
    changes: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, raw = part.partition("=")
        if not eq or key not in fields:
            raise MetaptError(
                f"--variant: {part!r} is not KEY=VALUE over a [meta] key; allowed keys: " + ", ".join(fields)
            )
        kind = type(getattr(base, key))
        try:
            value = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
        except ValueError:
            raise MetaptError(
                f"--variant: {part!r}: {raw!r} is not {_KINDS.get(kind, kind.__name__)}"
            ) from None
        meta = fields[key].metadata
        _, wrong = validation.check(value, kind, meta.get("choices", ()), meta.get("low"), meta.get("high"))
        if key == "selection_params":
            try:
                probes.top_layers(value)
            except ValueError as e:
                wrong = [str(e)]
        if key == "support_batch_size":
            wrong = wrong or validation.probe_size_problems(value, sources)
        if wrong:
            raise MetaptError(f"--variant: {part!r}: {wrong[0]}")
        changes[key] = value
    return dataclasses.replace(base, **changes)


def _streams(run: Run, meta: MetaSpec, salt: str) -> dict[str, dict[str, Any]]:
    """Support streams at the variant's probe size and target streams, on their own salts."""
    seed, tok = run.spec.run.seed, run.tokenizer

    def make(name: str, size: int, group: str) -> Any:
        return stream_for(
            run.tasks[name], tok, size or run.tasks[name].spec.batch.size, seed, f"{salt}-{group}"
        )

    return {
        "support": {s: make(s, meta.support_batch_size, "support") for s in run.sources},
        "target": {t: make(t, 0, "target") for t in run.targets},
    }


def view(run: Run, meta: MetaSpec, salt: str) -> Run:
    """A run that shares `run`'s model and everything it reads, with its own streams, policy and
    generators: `runsteps.select_run` on it leaves `run` as it was."""
    meta = dataclasses.replace(meta, epsilon=0.0)
    return dataclasses.replace(
        run,
        spec=dataclasses.replace(run.spec, meta=meta),
        streams=_streams(run, meta, salt),
        policy=policies.POLICIES[meta.policy](0.0, meta.discount, meta.bandit_score),
        explore=torch.Generator().manual_seed(run.spec.run.seed + 1),
        head_optimizer=None,
        history=list(run.history),
    )


def reference(run: Run, streams: dict, m: int) -> dict[str, Any]:
    """Exact Algorithm 1 with m support batches of every source and m target batches of every
    target (training-sized): its leader, the runner-up and how sure it is."""
    meta, model = run.spec.meta, run.model
    support = {s: [batch_to(streams["support"][s].next(), run.device) for _ in range(m)] for s in run.sources}
    targets = [(t, batch_to(streams["target"][t].next(), run.device)) for t in run.targets for _ in range(m)]
    model.eval()
    try:
        args = (meta.inner_lr, meta.normalize, run.autocast, meta.inner_step)
        estimate = selection.exact(model, support, targets, *args)
    finally:
        model.train()
    values = estimate.values
    leader = policies.argmax(values)
    out: dict[str, Any] = {"values": values, "leader": leader, "z": None, "sure": False}
    others = {s: v for s, v in values.items() if s != leader}
    if others:
        runner = policies.argmax(others)
        se = estimate.gap_se(leader, runner)
        out["z"] = (values[leader] - values[runner]) / se if se else None
        out["sure"] = out["z"] is not None and out["z"] > SURE
    return out


class Study:
    """The reference and the variants of one bench, fed one episode at a time (module docstring)."""

    def __init__(self, run: Run, variants: list[str], m: int = REFERENCE):
        self.m, self.names = m, ["spec", *variants]
        self.metas = [run.spec.meta, *(parse_variant(v, run.spec.meta, run.spec.sources) for v in variants)]
        # reuse_training variants take the gradients the run's training kept (with the run's
        # selection_params; a variant with other ones takes its probes itself)
        run.keep_training = any(m.reuse_training for m in self.metas)
        self.views = [view(run, meta, "bench") for meta in self.metas]
        self.ref_streams = _streams(
            run, dataclasses.replace(run.spec.meta, support_batch_size=0), "reference"
        )
        self.records: list[dict[str, Any]] = []
        self.held: list[dict[str, Any] | None] = [None] * len(self.views)  # each one's last selection

    def start(self, run: Run) -> None:
        """The warm-up episode's selection (before the engine's own, on the same weights) of every
        variant with select_every > 1: the choice it holds until its next selection. A variant that
        selects every episode needs no held choice and skips it."""
        for k, v in enumerate(self.views):
            if v.spec.meta.select_every > 1:
                v.episode, v.model = run.episode, run.model
                self.held[k] = _picked(runsteps.select_run(v), 0.0)

    def episode(self, run: Run, sync: Callable[[], None]) -> dict[str, Any]:
        """Score the reference and every variant on the run's current weights."""
        record: dict[str, Any] = {"reference": reference(run, self.ref_streams, self.m) if self.m else None}
        record["variants"] = []
        for k, v in enumerate(self.views):
            v.episode, v.model = run.episode, run.model
            held = self.held[k]
            if held is not None and not engine.selects(v, held["chosen"]):
                record["variants"].append({**held, "seconds": 0.0, "selected": False})
                continue
            sync()
            picked, seconds = timed(lambda v=v: runsteps.select_run(v), sync)
            self.held[k] = _picked(picked, seconds)
            record["variants"].append(self.held[k])
            picked = None
        self.records.append(record)
        return record

    def trained(self, run: Run, task: str, train_seconds: float, explored: bool) -> None:
        """What the engine chose and trained after the last `episode`, and for how long."""
        self.records[-1].update(train_seconds=train_seconds, trained=task, explored=explored)
        for v in self.views:
            v.history.append(task)
            same = v.spec.meta.selection_params == run.spec.meta.selection_params
            v.reused = run.reused if same else None


def _picked(picked: engine.Selection, seconds: float) -> dict[str, Any]:
    """What the study keeps of one variant's selection."""
    return {
        "chosen": picked.chosen,
        "estimate_leader": policies.argmax(picked.utilities),
        # the bandit's mean leader (its evidence so far; greedy: the estimate's)
        "policy_leader": policies.argmax(picked.policy_scores or picked.utilities),
        "seconds": seconds,
        "selected": True,
    }


def sync_for(device: torch.device) -> Callable[[], None]:
    """Wait for queued kernels before reading the clock (CUDA runs asynchronously)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[Any, float]:
    """(fn(), its wall seconds, the device synchronised before and after)."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def settings(meta: MetaSpec, shared: bool) -> dict[str, Any]:
    """What a variant is, in the study table's columns."""
    estimator = "shared" if shared and meta.utility == "first_order" else meta.utility
    return {
        "estimator": estimator,
        "policy": meta.policy,
        "support_batches": meta.support_batches,
        "support_batch_size": meta.support_batch_size,
        "selection_params": meta.selection_params,
        "sketch": meta.sketch,
        "reuse_training": meta.reuse_training,
        "select_every": meta.select_every,
    }


def summarise(study: Study) -> list[dict[str, Any]]:
    """Per variant: its settings, seconds per selection and share of the episodes' time, and agreement
    with the reference (its choices, and its estimate's leader) in the sure episodes and in all."""
    kinds = [settings(v.spec.meta, runsteps.shares_targets(v)) for v in study.views]
    return rows(study.records, study.names, kinds)


def rows(records: list[dict], names: list[str], kinds: list[dict]) -> list[dict[str, Any]]:
    """`summarise` on the records of `Study.episode` and `Study.trained`."""
    refs = [r["reference"] for r in records]
    sure = [i for i, r in enumerate(refs) if r is not None and r["sure"]]
    scored = [i for i, r in enumerate(refs) if r is not None]
    train = sum(r["train_seconds"] for r in records)
    out = []
    for k, (name, kind) in enumerate(zip(names, kinds)):
        made = [r["variants"][k]["seconds"] for r in records if r["variants"][k].get("selected", True)]

        def agree(key: str, episodes: list[int], k: int = k) -> float | None:
            if not episodes:
                return None
            hits = sum(records[i]["variants"][k][key] == refs[i]["leader"] for i in episodes)
            return hits / len(episodes)

        out.append(
            {
                "name": name,
                **kind,
                "selections": len(made),  # 0: held the warm-up's choice through every timed episode
                "selection_seconds": statistics.mean(made) if made else None,
                "selection_share": sum(made) / (sum(made) + train),
                "agreement_sure": agree("chosen", sure),
                "agreement_all": agree("chosen", scored),
                "estimate_agreement_sure": agree("estimate_leader", sure),
                "policy_agreement_sure": agree("policy_leader", sure),
                "choices": [r["variants"][k]["chosen"] for r in records],
            }
        )
    return out


def reference_summary(study: Study) -> dict[str, Any]:
    """How often the reference was sure, its leaders and its z."""
    refs = [r["reference"] for r in study.records if r["reference"] is not None]
    return {
        "reference_batches": study.m,
        "reference_episodes": len(refs),
        "reference_sure_share": sum(r["sure"] for r in refs) / len(refs) if refs else None,
        "reference_leaders": [r["leader"] for r in refs],
        "reference_z": [r["z"] for r in refs],
    }


def engine_agreement(study: Study) -> float | None:
    """How often the engine's own choices (epsilon exploration included) were the sure reference's
    leader."""
    sure = [r for r in study.records if r["reference"] is not None and r["reference"]["sure"]]
    return sum(r["trained"] == r["reference"]["leader"] for r in sure) / len(sure) if sure else None
