"""The cheap-selection keys in the engine (issue #14): support probes smaller than training batches
(`support_batch_size`), sketched probes (`sketch`), the chosen task's training gradients reused as
its next probes (`reuse_training`), and `selection_params`: what they draw, keep and resume, and what
the validator rejects. Tiny agnostic runs (tests/fixtures/runs/agnostic.toml: 1 layer, 32 wide)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Crash, crash_after, write
from safetensors.torch import load_file

from metapt import engine, probes, runsetup, runsteps, selection
from metapt.errors import SpecError
from metapt.estimate import Estimate
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.spec import RunSpec
from metapt.train import Optimization

RUNS = Path(__file__).parent / "fixtures" / "runs"
CHEAP = dict(utility="first_order", normalize="relative", support_batches=2, train_batches=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out: Path, episodes: int | None = None, **meta: Any) -> RunSpec:
    spec = override(parse_run(RUNS / "agnostic.toml"), output_dir=out, episodes=episodes)
    return dataclasses.replace(spec, meta=dataclasses.replace(spec.meta, **{**CHEAP, **meta}))


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_support_probes_have_the_probe_size_and_their_flops_are_counted(tmp_path: Path) -> None:
    run = runsetup.setup(tiny(tmp_path / "out", support_batch_size=2), resume=False)
    seen: list[dict] = []
    shared = selection.shared

    def spy(model: torch.nn.Module, support: dict, *args: Any, **kwargs: Any) -> Estimate:
        seen.append(support)
        return shared(model, support, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(selection, "shared", spy)
        picked = runsteps.select_run(run)
    support = seen[0]
    assert {s: [b["input_ids"].shape[0] for b in bs] for s, bs in support.items()} == {
        "mlm": [2, 2],
        "mlm_shuffled": [2, 2],
    }
    assert run.streams["train"]["mlm"].next()["input_ids"].shape[0] == 4  # training batches keep [batch]
    assert picked.flops == sum(run.flops.train(s, b) for s, bs in support.items() for b in bs)


def test_a_sketch_keeps_d_numbers_per_probe_and_no_sums(tmp_path: Path) -> None:
    run = runsetup.setup(tiny(tmp_path / "out", sketch=1000), resume=False)
    stores: list[probes.Store] = []
    store = selection._store

    def spy(*args: Any) -> probes.Store:
        stores.append(store(*args))
        return stores[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(selection, "_store", spy)
        picked = runsteps.select_run(run)
    assert stores[0].matrix.shape == (4, 1000)  # 2 sources x M = 2 probes, 1000 numbers each
    assert not runsteps.reuses_support(run) and picked.gradient is None  # no model-sized sums kept
    assert runsteps.reuses_support(runsetup.setup(tiny(tmp_path / "b"), resume=False))


def test_reuse_training_keeps_the_last_m_training_gradients_before_clipping(tmp_path: Path) -> None:
    run = runsetup.setup(tiny(tmp_path / "out", reuse_training=True, max_grad_norm=1e-3), resume=False)
    seen: list[torch.Tensor] = []
    step = Optimization.step
    live = dict(run.model.named_parameters())
    names = probes.shared_names(run.model, "all")

    def spy(
        self: Optimization, model: torch.nn.Module
    ) -> None:  # the gradient as the step begins (unclipped)
        seen.append(torch.cat([live[n].grad.reshape(-1) for n in names]).clone())
        step(self, model)

    picked = runsteps.select_run(run)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Optimization, "step", spy)
        runsteps.train_chosen(run, picked.chosen, picked.gradient)
    kept = run.reused[picked.chosen]
    assert len(seen) == 3 and len(kept) == 2  # N = 3 steps (the first the support gradient), M = 2 kept
    for probe, want in zip(kept, seen[1:]):
        assert torch.equal(probe.shared, want) and probe.task == picked.chosen
    assert float(seen[-1].norm()) > 10 * 1e-3  # so clipping to 1e-3 would have changed it

    # the next selection takes them: the chosen task's support stream does not move, the other's does
    counts = {s: run.streams["support"][s].state_dict()["count"] for s in run.sources}
    other = next(s for s in run.sources if s != picked.chosen)
    runsteps.select_run(run)
    after = {s: run.streams["support"][s].state_dict()["count"] for s in run.sources}
    assert after == {picked.chosen: counts[picked.chosen], other: counts[other] + 2}


def test_a_baseline_scheduler_keeps_no_training_gradients(tmp_path: Path) -> None:
    # compare runs the baselines on the same spec: with reuse_training they must not copy gradients
    run = runsetup.setup(tiny(tmp_path / "out", reuse_training=True, scheduler="uniform"), resume=False)
    assert not runsteps.reuses_training(run)
    runsteps.train_chosen(run, run.sources[0])
    assert run.reused is None
    meta = runsetup.setup(tiny(tmp_path / "meta", reuse_training=True), resume=False)
    assert runsteps.reuses_training(meta)


def test_cheap_selection_resumes_bitwise(tmp_path: Path) -> None:
    # probes of 2 examples, sketched, the bandit, the training gradients reused: a run that dies after
    # its episode-2 checkpoint and resumes makes the same choices with the same utilities and weights
    meta = dict(support_batch_size=2, sketch=1000, policy="bandit", reuse_training=True, epsilon=0.1)
    full = tiny(tmp_path / "full", 4, **meta)
    engine.pretrain(full)
    half = dataclasses.replace(full, run=dataclasses.replace(full.run, output_dir=str(tmp_path / "half")))

    die = crash_after(2)
    with pytest.raises(Crash):
        engine.pretrain(half, callback=die)
    engine.pretrain(half, resume=True)
    a, b = lines(tmp_path / "full"), lines(tmp_path / "half")
    assert [r["utilities"] for r in a] == [r["utilities"] for r in b]
    assert [r["chosen"] for r in a] == [r["chosen"] for r in b]
    for name in ("model.safetensors", "heads.safetensors"):
        wa, wb = load_file(tmp_path / "full" / name), load_file(tmp_path / "half" / name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_selection_params_are_rejected_with_what_is_allowed(tmp_path: Path) -> None:
    text = (RUNS / "agnostic.toml").read_text().replace('"tasks/', f'"{RUNS}/tasks/')
    text = text.replace('utility = "exact"', 'utility = "exact"\nselection_params = "{}"')
    for value, message in (
        ("top", "'top' is not allowed; allowed: 'all', or 'top:K' with K >= 1"),
        ("top:0", "'top:0' is not allowed"),
        ("top:2", "'top:2' asks for more layers than [model].num_layers = 1; allowed: top:1 to top:1"),
    ):
        path = write(tmp_path, f"bad-{value.replace(':', '')}.toml", text.replace("{}", value))
        with pytest.raises(SpecError) as e:
            parse_run(path)
        assert any(p.key == "[meta].selection_params" and message in p.message for p in e.value.problems), (
            value,
            [str(p) for p in e.value.problems],
        )
