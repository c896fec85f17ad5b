"""`--resume` checks what it resumes (metapt/resuming.py): a run spec that cannot continue the
checkpoint exits 2 listing every difference, before any state is loaded; what may change is logged
with the value that wins; a last metrics.jsonl line cut by a kill does not block resuming."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import Crash, crash_after
from safetensors.torch import load_file
from typer.testing import CliRunner

from metapt import checkpoint, engine, resuming, runsetup
from metapt.cli import app
from metapt.errors import CheckpointError, MetaptError
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.spec import RunSpec

RUNS = Path(__file__).parent / "fixtures" / "runs"
AGNOSTIC = RUNS / "agnostic.toml"


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out: Path, episodes: int = 4, **meta: object) -> RunSpec:
    spec = override(parse_run(AGNOSTIC), output_dir=out, episodes=episodes)
    return dataclasses.replace(spec, meta=dataclasses.replace(spec.meta, **meta)) if meta else spec


@pytest.fixture(scope="module")
def halfway(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 2 episodes (checkpoint after episode 2); copy it before resuming."""
    out = tmp_path_factory.mktemp("resume") / "run"
    engine.pretrain(tiny(out, episodes=2))
    return out


def copy(halfway: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(halfway, out, symlinks=True)
    return out


def write_spec(tmp_path: Path, old: str, new: str) -> Path:
    text = AGNOSTIC.read_text()
    assert old in text
    path = tmp_path / "changed.toml"
    path.write_text(text.replace(old, new))
    (tmp_path / "tasks").exists() or shutil.copytree(RUNS / "tasks", tmp_path / "tasks")
    return path


def test_the_manifest_records_the_run_spec(halfway: Path) -> None:
    manifest = json.loads((checkpoint.resolve(halfway) / "metapt.json").read_text())
    saved = manifest["spec"]
    assert saved["sources"] == ["mlm", "mlm_shuffled"] and saved["targets"] == []
    assert saved["model"]["hidden_size"] == 32 and saved["tokenizer"]["vocab_size"] == 300
    assert saved["meta"]["lr"] == 1e-3 and saved["run"] == {"seed": 0, "episodes": 2}


@pytest.mark.parametrize(
    ("old", "new", "difference"),
    [
        (
            'sources = ["tasks/mlm.toml", "tasks/mlm_shuffled.toml"]',
            'sources = ["tasks/mlm.toml", "tasks/span_selection.toml"]',
            "[meta].sources: checkpoint ['mlm', 'mlm_shuffled'], run spec ['mlm', 'span_selection']",
        ),
        ("hidden_size = 32", "hidden_size = 64", "[model].hidden_size: checkpoint 32, run spec 64"),
        ("vocab_size = 300", "vocab_size = 400", "[tokenizer].vocab_size: checkpoint 300, run spec 400"),
    ],
)
def test_a_run_spec_that_cannot_continue_exits_2_listing_the_difference(
    halfway: Path, tmp_path: Path, runner: CliRunner, old: str, new: str, difference: str
) -> None:
    out = copy(halfway, tmp_path)
    spec = write_spec(tmp_path, old, new)
    result = runner.invoke(app, ["pretrain", str(spec), "--output-dir", str(out), "--resume", "-q"])
    assert result.exit_code == 2, result.output
    assert f"cannot resume this checkpoint with {spec}; it differs in:\n  {difference}\n" in result.stderr
    assert "Resume with the run spec that wrote it" in result.stderr
    assert "Traceback" not in result.output and "state_dict" not in result.stderr
    assert checkpoint.resolve(out).name == "checkpoint-000002"


def test_every_difference_is_listed_at_once(halfway: Path, tmp_path: Path) -> None:
    out = copy(halfway, tmp_path)
    spec = tiny(out)
    spec = dataclasses.replace(
        spec, model=dataclasses.replace(spec.model, hidden_size=64, num_layers=2, intermediate_size=128)
    )
    with pytest.raises(CheckpointError) as caught:
        resuming.reconcile(spec, checkpoint.resolve(out))
    listed = [line.split(":")[0].strip() for line in str(caught.value).splitlines()[1:-1]]
    assert listed == ["[model].hidden_size", "[model].num_layers", "[model].intermediate_size"]


def test_changed_settings_are_logged_and_the_run_spec_wins(halfway: Path, tmp_path: Path) -> None:
    out = copy(halfway, tmp_path)
    spec = override(tiny(out, lr=5e-3, epsilon=0.5), seed=7)
    events: list[tuple[str, dict]] = []
    summary = engine.pretrain(spec, resume=True, callback=lambda e, d: events.append((e, d)))
    assert summary["complete"] and summary["episodes"] == 4
    notes = [d["message"] for e, d in events if e == "warning"]
    assert (
        "--resume: seed 7 ignored; the checkpoint's seed 0 is kept (its random states and data order continue)"
        in notes
    )
    assert "--resume: [meta].lr 0.001 -> 0.005: the run spec's value is used from episode 3" in notes
    assert "--resume: [meta].epsilon 0.0 -> 0.5: the run spec's value is used from episode 3" in notes
    assert "--resume: [run].episodes 2 -> 4: the run spec's value is used from episode 3" in notes
    manifest = json.loads((checkpoint.resolve(out) / "metapt.json").read_text())
    assert manifest["seed"] == 0 and manifest["spec"]["meta"]["lr"] == 5e-3


def test_the_run_specs_learning_rate_is_applied_at_the_schedules_position(
    halfway: Path, tmp_path: Path
) -> None:
    out = copy(halfway, tmp_path)
    run = runsetup.setup(tiny(out, lr=5e-3), resume=True)
    # 2 episodes x 2 training batches done: the schedule is at step 4 of 4 x 2 = 8; warmup 6% = 0 steps,
    # so the factor is (8 - 4) / 8 = 0.5, now of the new base rate.
    assert run.schedule.last_epoch == 4
    assert run.schedule.base_lrs == [5e-3] * len(run.optimizer.param_groups)
    assert [g["lr"] for g in run.optimizer.param_groups] == [5e-3 * 0.5] * len(run.optimizer.param_groups)
    assert run.optimizer.state  # Adam's moments came from the checkpoint
    same = runsetup.setup(tiny(out), resume=True)
    assert [g["lr"] for g in same.optimizer.param_groups] == [1e-3 * 0.5] * len(same.optimizer.param_groups)


def test_a_changed_label_set_is_refused(halfway: Path) -> None:
    class Task:  # what check_heads reads of a TaskData
        def __init__(self, kind: str, info: dict) -> None:
            self.spec, self.info = type("S", (), {"kind": kind})(), info

    folder = checkpoint.resolve(halfway)
    heads = json.loads((folder / "heads.json").read_text())
    resuming.check_heads(folder, {"mlm": Task("masked_lm", heads["mlm"]["info"])})  # the same: fine
    with pytest.raises(CheckpointError, match=r"task 'mlm': vocab_size: checkpoint 300, now 301"):
        resuming.check_heads(folder, {"mlm": Task("masked_lm", {**heads["mlm"]["info"], "vocab_size": 301})})
    with pytest.raises(CheckpointError, match=r"task 'mlm': kind: checkpoint 'masked_lm', now 'srl'"):
        resuming.check_heads(folder, {"mlm": Task("srl", heads["mlm"]["info"])})


def test_a_truncated_last_metrics_line_does_not_block_resume(halfway: Path, tmp_path: Path) -> None:
    out = copy(halfway, tmp_path)
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines) + '\n{"episode": 3, "chosen": "ml')  # killed mid-write
    summary = engine.pretrain(tiny(out), resume=True)
    assert summary["complete"]
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["episode"] for r in records] == [1, 2, 3, 4]
    assert [json.dumps(r) for r in records[:2]] == lines


@pytest.mark.parametrize("episode", ["null", '"2"', "true"])
def test_a_metrics_line_whose_episode_is_not_a_number_is_not_a_record(
    halfway: Path, tmp_path: Path, episode: str
) -> None:
    out = copy(halfway, tmp_path)
    metrics = out / "metrics.jsonl"
    first, second = metrics.read_text().splitlines()
    metrics.write_text(f'{first}\n{{"episode": {episode}, "chosen": "mlm"}}\n{second}\n')
    with pytest.raises(MetaptError, match=r"metrics\.jsonl:2: not an episode record"):  # was a TypeError
        engine.pretrain(tiny(out), resume=True)
    metrics.write_text(f'{first}\n{second}\n{{"episode": {episode}}}\n')  # the last line: dropped
    assert engine.pretrain(tiny(out, episodes=3), resume=True)["complete"]
    assert [json.loads(x)["episode"] for x in metrics.read_text().splitlines()] == [1, 2, 3]


def test_a_corrupt_metrics_line_before_the_last_exits_2(halfway: Path, tmp_path: Path) -> None:
    out = copy(halfway, tmp_path)
    metrics = out / "metrics.jsonl"
    first, second = metrics.read_text().splitlines()
    metrics.write_text(f"{first}\nnot json\n{second}\n")
    with pytest.raises(MetaptError, match=r"metrics\.jsonl:2: not an episode record"):
        engine.pretrain(tiny(out), resume=True)
    assert metrics.read_text() == f"{first}\nnot json\n{second}\n"  # left as it was


@pytest.mark.parametrize(
    ("episodes", "said", "warned"),
    [
        (
            1,
            "nothing trained; the checkpoint in {out} is left at episode 2\n",
            "warning: nothing to train: the checkpoint in {out} is already at episode 2, past the 1 episode "
            "this run asks for (--episodes or [run].episodes); it is left as it was. To train on, resume "
            "with --episodes above 2 (or raise [run].episodes).\n",
        ),
        (
            2,
            "{out} is already finished: its checkpoint has all 2 episodes; nothing to train. To train on, "
            "resume with --episodes above 2 (or raise [run].episodes).\n",
            "",
        ),
    ],
)
def test_resuming_a_run_that_has_its_episodes_says_so_and_trains_nothing(
    halfway: Path,
    tmp_path: Path,
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    episodes: int,
    said: str,
    warned: str,
) -> None:
    out = copy(halfway, tmp_path)

    def no_setup(*args: object, **kwargs: object) -> None:
        raise AssertionError("runsetup.setup ran")

    # No run is set up (so pointless.run_warnings needs no "nothing to train" case of its own).
    monkeypatch.setattr(runsetup, "setup", no_setup)
    metrics = (out / "metrics.jsonl").read_text()
    state = (out / "current" / "training_state.pt").read_bytes()
    args = ["pretrain", str(AGNOSTIC), "--output-dir", str(out), "--resume", "--episodes", str(episodes)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == said.format(out=out)  # no "finished 2/1 episodes", no episode lines
    # on stderr only the warning, not the earlier selections' noise warning: this run made none
    assert result.stderr == warned.format(out=out)
    assert checkpoint.resolve(out).name == "checkpoint-000002"
    assert (out / "metrics.jsonl").read_text() == metrics
    assert (out / "current" / "training_state.pt").read_bytes() == state


def test_a_finished_run_is_still_checked_against_the_run_spec(halfway: Path, tmp_path: Path) -> None:
    out = copy(halfway, tmp_path)
    spec = tiny(out, episodes=2)
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, hidden_size=64))
    with pytest.raises(CheckpointError, match=r"\[model\]\.hidden_size: checkpoint 32, run spec 64"):
        engine.pretrain(spec, resume=True)
    summary = engine.pretrain(tiny(out, episodes=2), resume=True)
    assert summary["complete"] and summary["episodes"] == 2 and sum(summary["counts"].values()) == 2


@pytest.mark.parametrize(
    "meta",
    [
        {"scheduler": "temperature"},  # draws from the scheduler's generator
        {"scheduler": "sequential"},  # its stages follow [run].episodes
        {"select_every": 3, "epsilon": 0.3},  # cut between the selections of episodes 1 and 4
        {"grad_accumulation": 2},
    ],
    ids=["temperature", "sequential", "select_every", "grad_accumulation"],
)
def test_a_run_cut_after_a_checkpoint_resumes_bitwise(tmp_path: Path, meta: dict) -> None:
    def run(out: Path) -> RunSpec:
        spec = tiny(out, episodes=5, **meta)
        return dataclasses.replace(spec, run=dataclasses.replace(spec.run, checkpoint_every=1))

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    engine.pretrain(run(whole))
    with pytest.raises(Crash):
        engine.pretrain(run(cut), callback=crash_after(2))
    engine.pretrain(run(cut), resume=True)
    timings = ("selection_seconds", "train_seconds", "eval_seconds")

    def records(out: Path) -> list[dict]:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in timings} for x in lines]

    assert len(records(whole)) == 5 and records(cut) == records(whole)  # choices, losses, utilities
    for name in ("model.safetensors", "heads.safetensors"):
        a, b = load_file(whole / name), load_file(cut / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
