"""`report_to`: TensorBoard event files (read back with tensorboard's own event reader) and an offline
W&B run (read back from its .wandb log) hold the documented tags with the values of metrics.jsonl and of
finetuning's per-epoch results; a resumed run continues the same TensorBoard folder and W&B run id; a
backend that is not installed (simulated) or unknown exits 2; only rank 0 logs."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import write
from typer.testing import CliRunner

from metapt import reporting
from metapt.cli import app
from metapt.errors import MetaptError
from metapt.resolve import parse_run
from metapt.runspec import override

RUNS = Path(__file__).parent / "fixtures" / "runs"
RUN = RUNS / "agnostic.toml"  # 2 sources (mlm, mlm_shuffled), meta scheduler, a checkpoint every 2
SRL = Path(__file__).parent / "fixtures" / "compare" / "tasks" / "srl.toml"
# The documented pretraining tags of this run: metrics.jsonl's numbers, its {task: value} tables as
# FIELD/TASK, true/false fields as 1/0, and counts/TASK for every source.
TAGS = {
    "train_loss",
    "target_loss",
    "lr",
    "selection_seconds",
    "train_seconds",
    "selection_flops",
    "train_flops",
    "tokens",
    "explored",
    "reused",
    "utilities/mlm",
    "utilities/mlm_shuffled",
    "policy_scores/mlm",
    "policy_scores/mlm_shuffled",
    "utility_floor",
    "counts/mlm",
    "counts/mlm_shuffled",
}
# The held-out evaluation's tags, logged on the episodes that evaluate (here the last of each command:
# episode 2, and 4 after the resume; eval_every is 10).
HELDOUT = {"heldout_loss/mlm", "heldout_loss/mlm_shuffled", "heldout_loss_mean", "eval_flops", "eval_seconds"}


def expected(record: dict[str, Any], tag: str) -> float:
    """A tag's value by the README's rule, from one metrics.jsonl record."""
    field, _, key = tag.partition("/")
    value = record[field].get(key, 0) if key else record[field]
    return float(value)


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows the folder (its own event reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}


def wandb_history(run_file: Path) -> list[dict[str, Any]]:
    """The history rows of an offline W&B run file (a LevelDB-style log of protobuf records: a 7-byte
    file header, then 32 KiB blocks of records with a 7-byte header: crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, part, rows = run_file.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if (left := 32768 - pos % 32768) < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        part += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(part)
            part = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                )
    return rows


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """2 episodes logged to TensorBoard and offline W&B; then a stale TensorBoard value at episode 3 (as
    a process killed after logging it would leave), and `--resume` to 4 episodes."""
    out = tmp_path_factory.mktemp("logged") / "out"
    runner = CliRunner(env={"METAPT_DEBUG": "0", "COLUMNS": "400"})
    with pytest.MonkeyPatch.context() as mp:
        for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing in ~
            mp.setenv(key, str(out.parent / key.lower()))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_CONSOLE", "off")
        args = ["pretrain", str(RUN), "--output-dir", str(out), "--quiet", "--report-to", "tensorboard,wandb"]
        result = runner.invoke(app, [*args, "--episodes", "2"])
        assert result.exit_code == 0, result.output
        from torch.utils.tensorboard import SummaryWriter

        stale = SummaryWriter(str(out / "tensorboard"))
        stale.add_scalar("train_loss", 999.0, 3)
        stale.close()
        result = runner.invoke(app, [*args, "--episodes", "4", "--resume"])
        assert result.exit_code == 0, result.output
        yield out


def test_tensorboard_holds_the_documented_tags_with_the_values_of_metrics_jsonl(logged: Path) -> None:
    records = lines(logged)
    assert [r["episode"] for r in records] == [1, 2, 3, 4]
    shown = scalars(logged / "tensorboard")
    assert set(shown) == TAGS | HELDOUT
    for tag, points in shown.items():
        steps = [2, 4] if tag in HELDOUT else [1, 2, 3, 4]  # once per episode: the stale 3 is gone
        assert [step for step, _ in points] == steps, tag
        want = [expected(records[step - 1], tag) for step in steps]
        assert [v for _, v in points] == pytest.approx(want, rel=1e-6), tag
    assert shown["counts/mlm"][-1][1] + shown["counts/mlm_shuffled"][-1][1] == 4


def test_a_resumed_run_appends_to_the_same_tensorboard_folder_from_the_next_episode(logged: Path) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = sorted((logged / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 3  # the first run, the stale writer, the resumed run
    starts = [e.step for e in EventFileLoader(str(files[-1])).Load() if e.HasField("session_log")]
    assert starts == [3]  # the resumed writer purges what was logged from episode 3 on


def test_offline_wandb_writes_the_run_and_a_resume_continues_its_id(logged: Path) -> None:
    run_id = (logged / "wandb" / "run_id").read_text().strip()
    runs = sorted((logged / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)
    first, resumed = (wandb_history(r / f"run-{run_id}.wandb") for r in runs)
    records = lines(logged)
    assert [row["episode"] for row in first] == [1, 2]
    assert [row["episode"] for row in resumed] == [3, 4]
    for row in first + resumed:
        record = records[row["episode"] - 1]
        tags = TAGS | (HELDOUT if record["heldout_loss"] is not None else set())
        assert set(row) - {"_step", "_runtime", "_timestamp", "episode"} == tags
        for tag in tags:
            assert row[tag] == pytest.approx(expected(record, tag), rel=1e-12), tag


def test_finetune_logs_each_epochs_validation_metrics_and_mean_training_loss(
    logged: Path, runner: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "ft"
    args = ["finetune", "--task", str(SRL), str(logged), "--epochs", "2", "--output-dir", str(out)]
    result = runner.invoke(app, [*args, "--quiet", "--report-to", "tensorboard"])
    assert result.exit_code == 0, result.output
    history = json.loads((out / "results.json").read_text())["history"]
    shown = scalars(out / "tensorboard")
    assert set(shown) == {"train_loss", "validation/f1", "validation/precision", "validation/recall"}
    for tag, points in shown.items():
        assert [step for step, _ in points] == [h["epoch"] for h in history] == [1, 2], tag
    for metric in ("f1", "precision", "recall"):
        assert [v for _, v in shown[f"validation/{metric}"]] == pytest.approx([h[metric] for h in history])


def test_scalars_take_every_number_and_table_of_numbers_of_a_record() -> None:
    record = {
        "episode": 7,
        "chosen": "mlm",
        "explored": True,
        "utilities": {"mlm": -1.5, "span": 2},
        "utility_se": {"mlm": 0.25},
        "heldout_loss": {"mlm": 3.0, "mean": 3.5},
        "eval_flops": 12,
        "target_loss": None,
        "counts": {"mlm": 5},
        "history": [1, 2],
    }
    assert reporting.episode_scalars(record, ["mlm", "span"]) == {
        "explored": 1.0,
        "utilities/mlm": -1.5,
        "utilities/span": 2.0,
        "utility_se/mlm": 0.25,
        "heldout_loss/mlm": 3.0,
        "heldout_loss/mean": 3.5,
        "eval_flops": 12.0,
        "counts/mlm": 5.0,
        "counts/span": 0.0,
    }


@pytest.mark.parametrize("backend", ["tensorboard", "wandb"])
def test_a_backend_that_is_not_installed_exits_2_before_training(
    backend: str, runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, backend, None)  # `import backend` now raises ImportError
    out = tmp_path / "out"
    result = runner.invoke(app, ["pretrain", str(RUN), "--output-dir", str(out), "--report-to", backend])
    assert result.exit_code == 2
    assert f'the {backend} package is not installed; install it with: pip install "metapt[{backend}]"' in (
        result.stderr
    )
    assert not out.exists()
    spec = write(
        tmp_path, "run.toml", f'[run]\nreport_to = ["{backend}"]\n' + RUN.read_text().split("[run]")[1]
    )
    spec.with_name("tasks").symlink_to(RUNS / "tasks")
    result = runner.invoke(app, ["pretrain", str(spec), "--output-dir", str(out), "--episodes", "1"])
    assert result.exit_code == 2 and "is not installed" in result.stderr and not out.exists()


def test_an_unknown_backend_exits_2_naming_the_allowed_ones(runner: CliRunner, tmp_path: Path) -> None:
    for command in (["pretrain", str(RUN)], ["finetune", "--task", str(SRL), str(tmp_path)]):
        result = runner.invoke(app, [*command, "--report-to", "tensorbord"])
        assert result.exit_code == 2
        assert (
            "--report-to: 'tensorbord' is not allowed (did you mean 'tensorboard'?); allowed: "
            "tensorboard, wandb, or none" in result.stderr
        )
    assert reporting.parse("none") == () and reporting.parse("wandb, tensorboard,wandb") == (
        "wandb",
        "tensorboard",
    )


def test_only_rank_0_logs(tmp_path: Path) -> None:
    spec = override(parse_run(RUN), output_dir=tmp_path / "out", report_to=("tensorboard",))
    record = {"episode": 1, "train_loss": 1.0, "counts": {"mlm": 1}}
    for rank, logs in ((1, False), (0, True)):
        with reporting.pretrain_logger(spec, False, rank) as log:
            log("start", {"sources": ["mlm", "mlm_shuffled"], "start": 0})
            log("episode", record)
        assert (tmp_path / "out" / "tensorboard").exists() is logs
    assert scalars(tmp_path / "out" / "tensorboard")["train_loss"] == [(1, 1.0)]


def test_a_wandb_run_that_cannot_start_says_how_to_log_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    def refuse(**kwargs: Any) -> None:
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", refuse)
    target = reporting.Target(tmp_path, "pretrain", "episode", "run", None, {})
    with pytest.raises(MetaptError) as info:
        reporting.Wandb(target, False, 1)
    assert "W&B could not start a run (UsageError: api_key not configured (no-tty)); log in with" in str(
        info.value
    )
    assert "set WANDB_MODE=offline" in str(info.value)


def test_finetune_logger_logs_the_mean_training_loss_of_each_epoch(tmp_path: Path) -> None:
    with reporting.finetune_logger(("tensorboard",), tmp_path, {}) as log:
        log("start", {"task": "t", "epochs": 2, "steps": 2, "examples": 4})
        for epoch, losses in ((1, (1.0, 3.0)), (2, (0.5, 0.25))):
            for step, loss in enumerate(losses, start=1):
                log("step", {"epoch": epoch, "step": step, "loss": loss})
            log("epoch", {"epoch": epoch, "metrics": {"accuracy": 50.0 * epoch}, "main": "accuracy"})
    shown = scalars(tmp_path / "tensorboard")
    assert shown == {"train_loss": [(1, 2.0), (2, 0.375)], "validation/accuracy": [(1, 50.0), (2, 100.0)]}


@pytest.mark.parametrize(("se", "title"), [(None, "utility - mean over sources"), (0.1, "(band: 1 s.e.)")])
def test_the_utilities_panel_claims_a_band_only_where_one_is_drawn(se: float | None, title: str) -> None:
    # With no standard error (support_batches = 1) no band is drawn, and the title said "band: 1 s.e."
    pytest.importorskip("matplotlib")
    from metapt.report import _draw_utilities, figure

    fig = figure(4, 3)
    ax = fig.add_subplot()
    utility_se = {"a": se, "b": se} if se else None
    scored = [{"episode": 1, "utilities": {"a": 1.0, "b": 0.5}, "utility_se": utility_se}]
    _draw_utilities(ax, scored, ["a", "b"])
    assert ax.get_title().endswith(title) and ("s.e." in ax.get_title()) == bool(se)
    assert len(ax.collections) == (2 if se else 0)  # one filled band per task


@pytest.mark.parametrize("n_tasks", [4, 16])
def test_the_per_task_legends_sit_under_their_panels_and_cover_no_line(n_tasks: int) -> None:
    # Inside the panel, the per-task held-out legend hid span_selection's line in the default run's
    # report: the tasks' losses (1.5 to 4.8) fill the whole height.
    pytest.importorskip("matplotlib")
    from metapt.report import draw_run

    tasks = [f"task_{i}" for i in range(n_tasks)]
    records = [
        {
            "episode": e,
            "chosen": tasks[e % n_tasks],
            "utilities": {t: 0.01 * ((e + i) % 3) for i, t in enumerate(tasks)},
            "utility_se": {t: 0.001 for t in tasks},
            "policy_scores": {t: 0.0 for t in tasks},
            "train_loss": 2.0,
            "target_loss": 3.0,
            "selection_seconds": 0.1,
            "train_seconds": 1.0,
            "selection_flops": 1e9,
            "train_flops": 1e10,
            "heldout_loss": {t: 1.5 + 3.3 * i / n_tasks for i, t in enumerate(tasks)},
            "heldout_loss_mean": 3.0,
        }
        for e in range(1, 9)
    ]
    fig = draw_run(records, "title", tasks)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = fig.axes
    by_title = {ax.get_title().split("\n")[0]: ax for ax in panels}
    for title in ("utility - mean over sources", "held-out loss per task"):
        ax = by_title[title]
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == tasks
        box = legend.get_window_extent(renderer)
        assert not box.overlaps(ax.get_window_extent(renderer))  # below the plotting area
        assert all(not box.overlaps(other.get_window_extent(renderer)) for other in panels)
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
    for ax in panels:  # the utilities' title, with its notes, was cut at the figure's edge
        box = ax.title.get_window_extent(renderer)
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
