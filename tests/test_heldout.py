"""Held-out evaluation during pretraining (metapt/heldout.py) on the tiny engine runs of
tests/fixtures/runs: logged every `eval_every` episodes and at the end for a baseline scheduler too,
its FLOPs counted on the fixed batches and never charged to the run, no effect on training, the same
batches after a resume, and aware targets scored through a head fitted on the frozen encoder."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Crash, crash_after
from safetensors.torch import load_file

from metapt import checkpoint, engine, heldout, runsetup
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.spec import RunSpec

RUNS = Path(__file__).parent / "fixtures" / "runs"


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out: Path, name: str = "agnostic.toml", episodes: int = 4, **run: Any) -> RunSpec:
    """A tiny uniform run of tests/fixtures/runs writing to `out`, with [run] changes."""
    spec = override(parse_run(RUNS / name), output_dir=out, episodes=episodes)
    return dataclasses.replace(
        spec,
        run=dataclasses.replace(spec.run, **run),
        meta=dataclasses.replace(spec.meta, scheduler="uniform"),
    )


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_baseline_logs_heldout_loss_every_eval_every_episodes_and_at_the_end(tmp_path: Path) -> None:
    spec = tiny(tmp_path / "out", episodes=5, eval_every=2, eval_batches=2)
    summary = engine.pretrain(spec)
    records = lines(tmp_path / "out")
    evaluated = [r["episode"] for r in records if r["heldout_loss"] is not None]
    assert evaluated == [2, 4, 5]  # every 2 episodes, and the last one
    for r in records:
        if r["episode"] in evaluated:
            assert set(r["heldout_loss"]) == {"mlm", "mlm_shuffled"}  # agnostic: the sources
            assert r["heldout_loss_mean"] == pytest.approx(sum(r["heldout_loss"].values()) / 2)
            assert 4.0 < r["heldout_loss_mean"] < 7.0  # near ln(300) for a barely trained MLM
            assert r["eval_seconds"] > 0
        else:
            assert all(r[f] is None for f in heldout.FIELDS)
    # The FLOPs are the forwards of the fixed batches, the same at every evaluation, and are not
    # charged: the run's totals are its selection and training FLOPs alone.
    run = runsetup.setup(spec, resume=False)
    held = heldout.prepare(run.tasks, run.tokenizer, run.targets, run.sources, spec.run)
    assert held.origin == {"mlm": "validation", "mlm_shuffled": "validation"}
    assert [len(b) for b in held.score.values()] == [2, 2] and held.fit == {}
    expected = sum(run.flops.forward(t, b) for t, bs in held.score.items() for b in bs)
    assert {r["eval_flops"] for r in records if r["eval_flops"] is not None} == {expected}
    charged = summary["totals"]["selection_flops"] + summary["totals"]["train_flops"]
    assert charged == sum(r["selection_flops"] + r["train_flops"] for r in records)


def test_evaluating_changes_no_later_episode(tmp_path: Path) -> None:
    engine.pretrain(tiny(tmp_path / "every", eval_every=1))
    engine.pretrain(tiny(tmp_path / "never", eval_every=0))
    every, never = lines(tmp_path / "every"), lines(tmp_path / "never")
    assert all(r["heldout_loss"] is not None for r in every)
    assert all(r[f] is None for r in never for f in heldout.FIELDS)
    assert [(r["chosen"], r["train_loss"]) for r in every] == [(r["chosen"], r["train_loss"]) for r in never]
    for name in ("model.safetensors", "heads.safetensors"):
        a, b = load_file(tmp_path / "every" / name), load_file(tmp_path / "never" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_run_scores_the_same_heldout_batches(tmp_path: Path) -> None:
    """Also the resume of a baseline scheduler is bitwise (weights included)."""
    engine.pretrain(tiny(tmp_path / "whole", eval_every=1, checkpoint_every=2))

    die = crash_after(2)
    with pytest.raises(Crash):
        engine.pretrain(tiny(tmp_path / "parts", eval_every=1, checkpoint_every=2), callback=die)
    assert checkpoint.resolve(tmp_path / "parts").name == "checkpoint-000002"
    engine.pretrain(tiny(tmp_path / "parts", eval_every=1, checkpoint_every=2), resume=True)
    whole, parts = lines(tmp_path / "whole"), lines(tmp_path / "parts")
    assert [r["heldout_loss"] for r in parts] == [r["heldout_loss"] for r in whole]  # bitwise
    assert [r["eval_flops"] for r in parts] == [r["eval_flops"] for r in whole]
    # A baseline never switches the model to train mode itself: the resumed encoder (from_pretrained
    # returns eval mode) must train with dropout as the uninterrupted one did.
    a, b = (
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(tmp_path / "parts" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_aware_targets_are_scored_through_a_head_fitted_on_the_frozen_encoder(tmp_path: Path) -> None:
    out = tmp_path / "aware"
    spec = tiny(out, "aware.toml", episodes=2, eval_every=1, eval_batches=2, eval_head_steps=30)
    initial = runsetup.setup(spec, resume=False).model.heads["squad-synthetic"].state_dict()
    engine.pretrain(spec)
    records = lines(out)
    assert [set(r["heldout_loss"]) for r in records] == [{"squad-synthetic"}] * 2  # aware: the targets
    # A baseline never trains its target head, and the evaluation fitted a copy: the run's is untouched.
    saved = load_file(out / "heads.safetensors")
    assert all(torch.equal(saved[f"squad-synthetic.{k}"], v) for k, v in initial.items())
    # The fitted head scores lower than the run's random head on the same batches and encoder, the
    # same on every call (seeded), and the fit's cost is counted.
    run = runsetup.setup(spec, resume=True)
    held = heldout.prepare(run.tasks, run.tokenizer, run.targets, run.sources, spec.run)
    assert set(held.fit) == {"squad-synthetic"} and len(held.fit["squad-synthetic"]) == 2

    def score(steps: int) -> dict:
        r = dataclasses.replace(spec.run, eval_head_steps=steps)
        return heldout.evaluate(run.model, run.tasks, held, run.flops, run.autocast, r)

    fitted, random_head = score(30), score(0)
    assert fitted["heldout_loss"] == records[-1]["heldout_loss"] == score(30)["heldout_loss"]
    assert fitted["heldout_loss_mean"] < random_head["heldout_loss_mean"]
    head_flops = sum(
        3 * run.flops.head("squad-synthetic", held.fit["squad-synthetic"][k % 2]) for k in range(30)
    )
    assert fitted["eval_flops"] - random_head["eval_flops"] == head_flops
    assert math.isfinite(fitted["heldout_loss_mean"])
