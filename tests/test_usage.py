"""Usage errors and what the command line prints, through the real `metapt` console script: a bad or
missing option, argument or command exits 2 with the usage line and a did-you-mean (never "internal
error"); help and error text is printed as written (no rich markup or emoji eats it); every option
has help text; `inspect-tasks` exits 2 when a listed spec is invalid and prints whole words."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SPECS, write
from typer.testing import CliRunner

from metapt.boundary import usage_error
from metapt.cli import app

SCRIPT = Path(sys.executable).with_name("metapt")  # the console script of this environment


def metapt(*args: str, cwd: Path | None = None, columns: int = 80) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("METAPT_DEBUG", "COLUMNS")}
    env["COLUMNS"] = str(columns)
    assert SCRIPT.is_file(), f"no console script at {SCRIPT}: install the package (pip install .)"
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    ("args", "usage", "message"),
    [
        (["pretrain"], "metapt pretrain [OPTIONS]", "Missing argument 'RUN.toml'"),  # as the docs name it
        (["pretrain", "agnostic", "--bogus"], "metapt pretrain [OPTIONS]", "No such option: --bogus"),
        (["pretrain", "agnostic", "--episods", "3"], "metapt pretrain [OPTIONS]", "--episodes"),
        (["pretrain", "agnostic", "--episodes", "abc"], "metapt pretrain [OPTIONS]", "'--episodes'"),
        (["pretrain", "agnostic", "--episodes", "-1"], "metapt pretrain [OPTIONS]", "'--episodes'"),
        (["frobnicate"], "metapt [OPTIONS] COMMAND", "No such command 'frobnicate'."),
        (["pretrainn"], "metapt [OPTIONS] COMMAND", "Did you mean 'pretrain'?"),
        (["finetune", "ckpt"], "metapt finetune [OPTIONS]", "Missing option '--task'"),
        (["pretrain", "agnostic", "--seed", str(2**64)], "metapt pretrain [OPTIONS]", "'--seed'"),
        (
            ["finetune", "--task", "mlm", "ckpt", "--seed", str(2**64)],
            "metapt finetune [OPTIONS]",
            "'--seed'",
        ),
    ],
)
def test_usage_errors_exit_2_with_the_usage_line(
    args: list[str], usage: str, message: str, tmp_path: Path
) -> None:
    result = metapt(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"Usage: {usage}"), result.stderr
    assert message in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_a_seed_torch_cannot_take_exits_2(tmp_path: Path, runner: CliRunner) -> None:
    # before: a seed of 2**64 passed every check and ended in "internal error: ValueError: Overflow"
    spec = write(tmp_path, "run.toml", (REPO / "tasks" / "agnostic.toml").read_text())
    spec.write_text(spec.read_text().replace("\nseed = 0\n", f"\nseed = {2**64}\n", 1))
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2, result.output
    assert f"[run].seed: {2**64} is out of range; allowed: between 0 and {2**63 - 1}" in result.stderr
    result = runner.invoke(app, ["compare", "agnostic", "--seeds", f"1,{2**64}", "--episodes", "1"])
    assert result.exit_code == 2, result.output
    assert f"--seeds '1,{2**64}': expected distinct non-negative integers up to {2**63 - 1}" in result.stderr


def test_a_mistyped_option_gets_a_did_you_mean(tmp_path: Path) -> None:
    result = metapt("pretrain", "agnostic", "--episods", "3", cwd=tmp_path)
    # click >= 8.2 says "(Possible options: --episodes)", older ones "Did you mean --episodes?"
    assert "No such option: --episods" in result.stderr
    assert "Possible options: --episodes" in result.stderr or "Did you mean --episodes?" in result.stderr


def test_usage_errors_of_typers_click_are_recognised() -> None:
    import typer

    assert usage_error(typer.BadParameter("x"))
    assert not usage_error(ValueError("x"))


# ---------------------------------------------------------------------------- text as written
def test_help_keeps_bracketed_keys() -> None:
    result = metapt("pretrain", "--help", columns=200)
    assert result.returncode == 0
    assert "Override [run].episodes (0: save the initial" in result.stdout
    assert "Override [run].output_dir." in result.stdout


@pytest.mark.parametrize("command", ["finetune", "evaluate", "bench", "pretrain", "compare", "report"])
def test_every_option_has_help_text(command: str) -> None:
    from typer.main import get_command

    click_command = get_command(app).commands[command]
    for param in click_command.params:
        if param.param_type_name == "option":
            assert (param.help or "").strip(), f"{command} {param.opts}: no help text"


def test_an_error_message_prints_a_file_name_as_written(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "a:x:[bold]b.toml", 'kind = "masked_lm"\n[data]\nformat = "nope"\n')
    result = metapt("validate", str(path), cwd=tmp_path, columns=400)
    assert result.returncode == 2
    assert f"{path}: [data].format: 'nope' is not allowed" in result.stderr
    assert "❌" not in result.stderr


# ------------------------------------------------------------------------------ inspect-tasks
def test_inspect_tasks_exits_2_when_a_listed_spec_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text((SPECS / "task_unknown_kind.toml").read_text())
    write(tmp_path, "fine.toml", 'kind = "masked_lm"\n[data]\nformat = "synthetic"\ncorpus = "shuffled"\n')
    result = metapt("inspect-tasks", "--json", str(tmp_path))
    assert result.returncode == 2
    rows = {r["name"]: r for r in json.loads(result.stdout)}  # the rows are still printed
    assert set(rows) == {"broken", "fine"}
    assert "1 of 2 task specs is invalid" in result.stderr
    table = metapt("inspect-tasks", str(tmp_path))
    assert table.returncode == 2 and "broken" in table.stdout


def test_inspect_tasks_with_missing_data_exits_0_and_broken_data_exits_2(tmp_path: Path) -> None:
    def task(name: str, train: str) -> None:
        write(
            tmp_path,
            f"{name}.toml",
            f'kind = "classification"\n[data]\nformat = "jsonl"\ntrain = "{train}"\n',
        )

    task("absent", "gone.jsonl")
    write(tmp_path, "bad.jsonl", '{"text": "a", "label": 1}\n{"text": \n')
    assert metapt("inspect-tasks", "--count", "--json", str(tmp_path)).returncode == 0  # absent only
    task("broken", "bad.jsonl")
    result = metapt("inspect-tasks", "--count", "--json", str(tmp_path))
    assert result.returncode == 2
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert "bad.jsonl:2: not valid JSON" in rows["broken"]["error"]
    assert rows["absent"]["error"].startswith("data unavailable: ")


def test_inspect_tasks_piped_prints_one_line_per_task_with_whole_words(tmp_path: Path) -> None:
    long = "a-task-with-a-rather-long-name-that-would-not-fit-a-column"
    write(tmp_path, f"{long}.toml", 'kind = "srl"\n[data]\nformat = "synthetic"\ncorpus = "conll2012"\n')
    result = metapt("inspect-tasks", str(tmp_path), columns=40)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["name", "kind", "roles", "data", "head", "loss"]
    assert lines[1].split("\t") == [
        long,
        "srl",
        "target (aware), downstream",
        "synthetic: conll2012 (size 2000, seed 0)",
        "predicate_tagger",
        "cross_entropy",
    ]
    assert len(lines) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["pretrain", "agnostc"],
            "agnostc: no such file or spec name (did you mean 'agnostic', 'paper/agnostic' or 'public/agnostic'?)",
        ),
        (["validate", "rtee"], "rtee: no such file or spec name (did you mean 'rte'?)"),
        (
            ["validate", "paper/agnostc"],
            "paper/agnostc: no such file (did you mean 'paper/agnostic', 'paper/agnostic-roberta' or 'agnostic'?)",
        ),
        (["finetune", "--task", "rtee", "ckpt"], "unknown task 'rtee' (did you mean 'rte'?)"),
        (
            ["finetune", "--task", "specs/rtee.toml", "ckpt"],
            "specs/rtee.toml: no such file (did you mean 'specs/rte.toml' or 'rte'?)",
        ),
        (
            ["finetune", "--task", "nowhere/rtee.toml", "ckpt"],
            "nowhere/rtee.toml: no such file (did you mean 'rte'?)",
        ),
        (["validate", "zzzq"], "zzzq: no such file or spec name\n"),  # nothing close: no hint
    ],
)
def test_an_unknown_run_or_task_name_gets_the_close_names(
    args: list[str], message: str, runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # They said "agnostc: no such file", "rtee: no such file", "specs/rtee.toml: no such file".
    monkeypatch.chdir(tmp_path)  # no ./tasks: the built-in names; specs/ holds rte.toml and mrpc.toml
    write(tmp_path / "specs", "rte.toml", 'kind = "classification"\n')
    write(tmp_path / "specs", "mrpc.toml", 'kind = "classification"\n')
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
