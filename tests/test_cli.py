"""The command line through CliRunner and the installed entry points: commands, exit codes 0/2/1, one
message on stderr without a traceback (unless --debug), and `inspect-tasks` rows and exact counts."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli
from conftest import REPO, SPECS, write
from typer.testing import CliRunner

from metapt.cli import app
from metapt.errors import SpecError

GOOD_TASK = REPO / "tasks" / "synthetic" / "conll2012-synthetic.toml"
BAD_TASK = SPECS / "task_option_range.toml"
BAD_MESSAGE = "[options].mask_probability: 2.0 is out of range; allowed: between 0.01 and 0.9"

SYNTHETIC_KINDS = {
    "conll04-synthetic": "relation_extraction",
    "conll2012-synthetic": "srl",
    "mlm": "masked_lm",
    "mlm_shuffled": "masked_lm",
    "pairs-synthetic": "classification",
    "response_selection": "response_selection",
    "sentence_distance": "sentence_distance",
    "sentence_reordering": "sentence_reordering",
    "span_selection": "span_selection",
    "squad-synthetic": "extractive_qa",
    "mlm_entity": "masked_lm",
    "capitalization_prediction": "capitalization_prediction",
    "token_document_relation": "token_document_relation",
    "ir_relevance": "ir_relevance",
    "replaced_token_detection": "replaced_token_detection",
}


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("pretrain", "finetune", "evaluate", "inspect-tasks", "validate"):
        assert command in result.stdout


def test_version_is_the_installed_distributions(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    declared = tomli.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert result.stdout == f"metapt {declared}\n"
    assert importlib.metadata.version("metapt") == declared  # the package pip installed, not a stale copy


# ----------------------------------------------------------------------------------- validate
def test_validate_a_good_task_spec(runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", str(GOOD_TASK)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"ok {GOOD_TASK} (task 'conll2012-synthetic')"
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("kind", "option", "value", "allowed"),
    [
        ("masked_lm", "mask_probability", "0.0", "0.0 is out of range; allowed: between 0.01 and 0.9"),
        ("masked_lm", "mask_probability", "1.0", "1.0 is out of range; allowed: between 0.01 and 0.9"),
        (
            "replaced_token_detection",
            "replace_probability",
            "1",
            "1.0 is out of range; allowed: between 0.01 and 0.9",
        ),
        ("sentence_reordering", "max_segments", "1", "1 is out of range; allowed: between 2 and 4"),
        ("response_selection", "max_context_turns", "0", "0 is out of range; allowed: between 1 and 32"),
        ("token_document_relation", "segment_sentences", "0", "0 is out of range; allowed: between 1 and 64"),
        ("ir_relevance", "passage_sentences", "-1", "-1 is out of range; allowed: between 1 and 64"),
        ("span_selection", "blank_token", '" "', "' ' is empty; allowed: a non-empty word such as '[BLANK]'"),
        (
            "span_selection",
            "passage",
            '"near"',
            "'near' is not allowed (did you mean 'nearby'?); allowed: bm25, nearby",
        ),
    ],
)
def test_validate_rejects_a_source_option_out_of_range(
    runner: CliRunner, tmp_path: Path, kind: str, option: str, value: str, allowed: str
) -> None:
    # Exit 2 and one line naming the file, the key, the value and what is allowed.
    spec = f'kind = "{kind}"\n[data]\nformat = "synthetic"\ncorpus = "documents"\n[options]\n{option} = {value}\n'
    path = write(tmp_path, "bad.toml", spec)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}: [options].{option}: {allowed}" in result.stderr


@pytest.mark.parametrize(("name", "tasks"), [("agnostic", 4), ("aware", 8)])
def test_validate_a_shipped_run_spec_from_another_folder(
    runner: CliRunner, name: str, tasks: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = REPO / "tasks" / f"{name}.toml"
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"ok {path} (run spec, {tasks} tasks)"


def test_validate_takes_built_in_names_as_pretrain_does(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./tasks here: the names resolve to the built-in specs
    result = runner.invoke(app, ["validate", "agnostic", "squad"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("ok ") and lines[0].endswith("agnostic.toml (run spec, 4 tasks)")
    assert lines[1].endswith("squad.toml (task 'squad')")
    missing = runner.invoke(app, ["validate", "no-such-spec"])
    assert missing.exit_code == 2 and "no-such-spec: no such file" in missing.stderr


def test_validate_a_bad_spec_exits_2_with_one_message(runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", str(BAD_TASK)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"error: 1 problem found:\n  {BAD_TASK}: {BAD_MESSAGE}\n"
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # typer.Exit(2), not the SpecError


def test_validate_reports_every_file(runner: CliRunner) -> None:
    """Good files are confirmed; the problems of all the bad ones come in one message."""
    run_bad = SPECS / "run_epsilon.toml"
    result = runner.invoke(app, ["validate", str(GOOD_TASK), str(BAD_TASK), str(run_bad)])
    assert result.exit_code == 2
    assert result.stdout.strip() == f"ok {GOOD_TASK} (task 'conll2012-synthetic')"
    assert result.stderr.startswith("error: 2 problems found:\n")
    assert BAD_MESSAGE in result.stderr
    assert "[meta].epsilon: 1.5 is out of range; allowed: between 0.0 and 1.0" in result.stderr


def test_validate_a_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "absent.toml")])
    assert result.exit_code == 2
    assert result.stderr == f"error: 1 problem found:\n  {tmp_path / 'absent.toml'}: no such file\n"


def test_a_folder_given_as_a_spec_file_is_named_a_folder(runner: CliRunner, tmp_path: Path) -> None:
    for args in (
        ["validate", str(tmp_path)],
        ["pretrain", str(tmp_path)],
        ["finetune", "--task", str(tmp_path), "x"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert (
            f"{tmp_path}: a folder, not a spec file; name a .toml file in it" in result.stderr
        )  # was "no such file"


def test_validate_a_syntax_error_names_the_line(runner: CliRunner) -> None:
    path = SPECS / "task_toml_syntax.toml"
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}:6: TOML syntax error" in result.stderr
    assert "Traceback" not in result.output


def test_debug_flag_lets_the_error_propagate(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--debug", "validate", str(BAD_TASK)])
    assert isinstance(result.exception, SpecError)
    assert BAD_MESSAGE in str(result.exception)
    assert result.exit_code == 1
    assert os.environ.get("METAPT_DEBUG") != "1"  # the runner put it back


def test_debug_environment_variable_lets_the_error_propagate(runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", str(BAD_TASK)], env={"METAPT_DEBUG": "1"})
    assert isinstance(result.exception, SpecError)


def test_pretrain_on_a_task_spec_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["pretrain", str(GOOD_TASK)])
    assert result.exit_code == 2, result.output
    assert "kind: this is a task spec; `metapt pretrain` takes a run spec" in result.stderr
    assert "1 problem found" in result.stderr  # not the task's keys, unknown to a run spec
    assert "Traceback" not in result.output


def test_validate_options_not_a_table_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", str(SPECS / "task_options_not_table.toml")])
    assert result.exit_code == 2
    assert "options: expected a table, got 'fast'" in result.stderr


def test_validate_ok_line_is_not_folded(runner: CliRunner, tmp_path: Path) -> None:
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "task.toml"
    deep.parent.mkdir(parents=True)
    shutil.copy(REPO / "tasks" / "synthetic" / "mlm.toml", deep)
    result = runner.invoke(app, ["validate", str(deep)], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"ok {deep} (task 'task')"]


def test_validate_note_on_missing_data_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    # The note with the spec's obtain line (~200 characters) was folded at 80 columns when piped.
    spec = REPO / "tasks" / "public" / "wikitext2_mlm.toml"
    result = runner.invoke(app, ["validate", str(spec)], env={"COLUMNS": "80", "METAPT_DATA": str(tmp_path)})
    assert result.exit_code == 0, result.output
    note, ok = result.stdout.splitlines()
    assert note.startswith("note: wikitext2_mlm: data for train, validation not present; ") and len(note) > 80
    assert ok == f"ok {spec} (task 'wikitext2_mlm')"


# ------------------------------------------------------------------------------ inspect-tasks
def _rows(runner: CliRunner, *args: str, code: int = 0) -> list[dict]:
    result = runner.invoke(app, ["inspect-tasks", "--json", *args])
    assert result.exit_code == code, result.output  # 2: a listed spec is invalid
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows)
    return rows


def test_inspect_tasks_json_lists_the_builtin_tasks(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./tasks: the specs shipped with the package
    rows = {r["name"]: r for r in _rows(runner)}
    for row in rows.values():
        assert {"name", "kind", "format", "head", "loss", "path"} <= set(row), row
    for name, kind in SYNTHETIC_KINDS.items():
        assert rows[name]["kind"] == kind
        assert rows[name]["format"] == "synthetic"
        assert Path(rows[name]["path"]) == REPO / "tasks" / "synthetic" / f"{name}.toml"
    srl = rows["conll2012-synthetic"]
    assert (srl["head"], srl["loss"], srl["metric"]) == ("predicate_tagger", "cross_entropy", "f1")
    assert srl["roles"] == ["target (aware)", "downstream"]
    assert rows["mlm"]["roles"] == ["source", "target (agnostic)"]
    assert rows["mlm"]["location"] == "documents (size 600, seed 0)"
    assert "counts" not in srl  # only with --count
    assert not {"agnostic", "aware"} & set(rows)  # run specs are not tasks


def _small_task(folder: Path, name: str = "tiny", train: str = "data/train.jsonl") -> Path:
    return write(
        folder,
        f"{name}.toml",
        f'kind = "classification"\ndescription = "three and two"\n[data]\nformat = "jsonl"\n'
        f'train = "{train}"\nvalidation = "data/dev.jsonl"\n',
    )


def _records(n: int) -> str:
    return "".join(json.dumps({"text": f"sentence {i}", "label": i % 2}) + "\n" for i in range(n))


def test_inspect_tasks_count_gives_exact_counts(runner: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "specs"
    write(folder, "data/train.jsonl", _records(3))
    write(folder, "data/dev.jsonl", _records(2))
    spec = _small_task(folder)
    (row,) = _rows(runner, "--count", str(folder))
    assert row["counts"] == {"train": 3, "validation": 2}
    assert (row["name"], row["kind"], row["format"], row["path"]) == (
        "tiny",
        "classification",
        "jsonl",
        str(spec),
    )
    assert (row["head"], row["loss"], row["metric"]) == (
        "sequence_classification",
        "cross_entropy",
        "accuracy",
    )
    assert row["description"] == "three and two"
    assert "error" not in row


def test_inspect_tasks_count_lists_missing_data_as_an_error(runner: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "specs"
    write(folder, "data/train.jsonl", _records(3))
    write(folder, "data/dev.jsonl", _records(2))
    _small_task(folder, "present")
    _small_task(folder, "absent", train="data/gone.jsonl")
    rows = {r["name"]: r for r in _rows(runner, "--count", str(folder))}
    assert set(rows) == {"present", "absent"}
    assert rows["present"]["counts"] == {"train": 3, "validation": 2}
    assert "counts" not in rows["absent"]
    assert rows["absent"]["error"].startswith("data unavailable: ")
    assert "gone.jsonl" in rows["absent"]["error"]
    assert rows["absent"]["kind"] == "classification"  # the spec itself is fine


def test_inspect_tasks_lists_an_invalid_spec_with_its_error(runner: CliRunner, tmp_path: Path) -> None:
    shutil.copy(SPECS / "task_unknown_kind.toml", tmp_path / "broken.toml")
    shutil.copy(GOOD_TASK, tmp_path / "fine.toml")
    rows = {r["name"]: r for r in _rows(runner, str(tmp_path), code=2)}
    assert set(rows) == {"broken", "fine"}
    assert "kind" not in rows["broken"]
    assert "kind: 'srll' is not allowed (did you mean 'srl'?)" in rows["broken"]["error"]
    assert rows["broken"]["path"] == str(tmp_path / "broken.toml")


def test_inspect_tasks_path_lists_only_that_folder(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # ./tasks and the built-in specs are there, but only the folder counts
    folder = tmp_path / "mine"
    for name in ("alpha", "beta"):
        write(
            folder, f"{name}.toml", 'kind = "masked_lm"\n[data]\nformat = "synthetic"\ncorpus = "shuffled"\n'
        )
    write(
        folder,
        "nested/gamma.toml",
        'kind = "span_selection"\n[data]\nformat = "synthetic"\ncorpus = "documents"\n',
    )
    write(folder, "run.toml", '[meta]\nsources = ["alpha"]\n')  # a run spec: not a task
    rows = _rows(runner, str(folder))
    assert sorted(r["name"] for r in rows) == ["alpha", "beta", "gamma"]
    assert {r["kind"] for r in rows} == {"masked_lm", "span_selection"}
    # a single spec file works too
    (row,) = _rows(runner, str(GOOD_TASK))
    assert row["name"] == "conll2012-synthetic"


def test_inspect_tasks_of_a_run_spec_lists_its_tasks_with_their_roles(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # where the names of tasks/aware.toml resolve as pretrain resolves them
    run = REPO / "tests" / "fixtures" / "runs" / "agnostic.toml"
    rows = _rows(runner, str(run))  # was []: a run spec is not a task, so nothing was listed
    assert [(r["name"], r["path"], r["runs"]) for r in rows] == [
        (name, str(run.parent / "tasks" / f"{name}.toml"), [{"run": str(run), "role": "source"}])
        for name in ("mlm", "mlm_shuffled")
    ]
    assert rows[0]["kind"] == "masked_lm" and rows[0]["location"] == "documents (size 48, seed 0)"
    aware = {r["name"]: r["runs"] for r in _rows(runner, "tasks/aware.toml")}
    assert [n for n, used in aware.items() if used[0]["role"] == "target"] == [
        "conll04-synthetic",
        "conll2012-synthetic",
        "claims-synthetic",
        "squad-synthetic",
    ]
    assert len(aware) == 8 and aware["mlm"] == [{"run": "tasks/aware.toml", "role": "source"}]
    result = runner.invoke(app, ["inspect-tasks", "--count", str(run)])
    assert result.exit_code == 0, result.output
    assert [line.split("\t") for line in result.stdout.splitlines()[1:]] == [
        ["mlm", "masked_lm", f"source in {run}", "synthetic: documents (size 48, seed 0)", "mlm"]
        + ["cross_entropy", "train 48, validation 9, test 9"],
        ["mlm_shuffled", "masked_lm", f"source in {run}", "synthetic: shuffled (size 48, seed 0)", "mlm"]
        + ["cross_entropy", "train 48, validation 9, test 9"],
    ]


def test_inspect_tasks_takes_built_in_names_as_pretrain_does(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./tasks: `agnostic` and `squad` are the built-in specs
    rows = _rows(runner, "agnostic", "squad")
    assert [r["name"] for r in rows] == [
        "mlm",
        "span_selection",
        "response_selection",
        "mlm_shuffled",
        "squad",
    ]
    assert rows[0]["runs"][0]["role"] == "source" and rows[0]["runs"][0]["run"].endswith("agnostic.toml")
    assert [r["name"] for r in _rows(runner, "no-such-spec", code=2)] == ["no-such-spec"]


def test_inspect_tasks_of_a_run_spec_lists_a_reference_to_no_spec_as_invalid(
    runner: CliRunner, tmp_path: Path
) -> None:
    run = write(tmp_path, "run.toml", '[meta]\nsources = ["mlm", "nosuch", "gone.toml"]\n')
    bad = write(tmp_path, "bad.toml", '[meta]\nsources = "mlm"\n')
    rows = _rows(runner, str(run), str(bad), code=2)
    assert [(r["name"], "kind" in r, r.get("runs")) for r in rows] == [
        ("mlm", True, [{"run": str(run), "role": "source"}]),
        ("nosuch", False, [{"run": str(run), "role": "source"}]),
        ("gone", False, [{"run": str(run), "role": "source"}]),
        ("bad", False, None),
    ]
    assert f"{run}: [meta].sources: unknown task 'nosuch'" in rows[1]["error"]
    assert rows[2]["error"] == f"1 problem found:\n  {tmp_path / 'gone.toml'}: no such file"
    assert rows[3]["error"] == (
        f"1 problem found:\n  {bad}: [meta].sources: expected a list of task names or spec files"
    )


def test_inspect_tasks_table(runner: CliRunner, tmp_path: Path) -> None:
    write(tmp_path, "alpha.toml", 'kind = "masked_lm"\n[data]\nformat = "synthetic"\ncorpus = "shuffled"\n')
    result = runner.invoke(app, ["inspect-tasks", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split("\t")[:2] == ["alpha", "masked_lm"]  # piped: plain lines
    from rich.console import Console

    from metapt.inspect import describe_tasks, table

    terminal = Console(width=200, force_terminal=True, record=True)
    terminal.print(table(describe_tasks([tmp_path], count=False), False))
    shown = terminal.export_text()
    assert "1 tasks" in shown and "alpha" in shown and "masked_lm" in shown and "mlm" in shown


def test_inspect_tasks_survives_an_empty_kind(runner: CliRunner, tmp_path: Path) -> None:
    shutil.copy(SPECS / "task_kind_empty.toml", tmp_path / "empty.toml")
    rows = _rows(runner, str(tmp_path), code=2)
    assert [r["name"] for r in rows] == ["empty"]
    assert "kind" in rows[0]["error"]


# -------------------------------------------------------------------- the installed entry points
def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "METAPT_DEBUG"}
    env["COLUMNS"] = "400"
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)


def test_console_script_and_module_exit_codes() -> None:
    script = shutil.which("metapt")
    if script is None:
        pytest.skip("the metapt console script is not on PATH")
    good = _run(script, "validate", str(GOOD_TASK))
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("ok ")
    bad = _run(script, "validate", str(BAD_TASK))
    assert bad.returncode == 2
    assert BAD_MESSAGE in bad.stderr and "Traceback" not in bad.stderr
    debug = _run(script, "--debug", "validate", str(BAD_TASK))
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "SpecError" in debug.stderr
    helped = _run(sys.executable, "-m", "metapt", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "inspect-tasks" in helped.stdout and "validate" in helped.stdout
    module_bad = _run(sys.executable, "-m", "metapt", "validate", str(BAD_TASK))
    assert module_bad.returncode == 2
