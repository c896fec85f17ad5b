"""Spec validation: every malformed fixture fails with its specific message, every problem of a file is
reported at once, the documented defaults hold, and every shipped spec parses.

Each fixture under tests/fixtures/specs/ says in its header comment what it must produce:
`# expect: TEXT` (each must appear in the SpecError message), `# problems: N` (the exact count),
`# parse: run` (parse with parse_run, as `metapt pretrain` does) and `# bug: WHY` (a known bug: xfail).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import REPO, SPECS, write

from metapt.catalog import KINDS
from metapt.errors import SpecError
from metapt.resolve import find_task, parse_any, parse_run, task_files
from metapt.spec import RunSpec, TaskSpec
from metapt.validation import parse_task


def _header(path: Path) -> dict[str, list[str]]:
    """`# key: value` lines of a fixture's header comment, by key."""
    out: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(": ")
        if sep and key in ("expect", "problems", "parse", "bug"):
            out.setdefault(key, []).append(value)
    return out


def _fixtures() -> list:
    params = []
    for path in sorted(SPECS.glob("*.toml")):
        bug = _header(path).get("bug")
        marks = [pytest.mark.xfail(reason=f"BUG: {bug[0]}", strict=True)] if bug else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


FIXTURES = _fixtures()


def test_there_are_enough_fixtures() -> None:
    headers = [_header(p.values[0]) for p in FIXTURES]
    assert len(FIXTURES) >= 20
    assert all(h.get("expect") and h.get("problems") for h in headers), "each fixture states what it expects"


@pytest.mark.parametrize("where", ["tmp", "repo"])
@pytest.mark.parametrize("path", FIXTURES)
def test_malformed_spec_names_the_problem(
    path: Path, where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From a bare folder, task names resolve to the specs shipped with the package; from the repo
    # root, to ./tasks. Both must give the same answer.
    monkeypatch.chdir(tmp_path if where == "tmp" else REPO)
    header = _header(path)
    parse = parse_run if header.get("parse") == ["run"] else parse_any
    with pytest.raises(SpecError) as info:
        parse(path)
    message = str(info.value)
    for text in header["expect"]:
        assert text in message, f"{text!r} not in:\n{message}"
    n = int(header["problems"][0])
    assert len(info.value.problems) == n, message
    assert message.splitlines()[0] == f"{n} problem{'s' if n != 1 else ''} found:"
    # every problem names a file
    assert all(p.file for p in info.value.problems)


def test_toml_syntax_error_names_the_line() -> None:
    path = SPECS / "task_toml_syntax.toml"
    with pytest.raises(SpecError) as info:
        parse_any(path)
    (problem,) = info.value.problems
    assert problem.line == 6
    assert problem.file == str(path)
    assert str(problem).startswith(f"{path}:6: TOML syntax error")


def test_multi_problem_files_report_every_problem_at_once() -> None:
    with pytest.raises(SpecError) as info:
        parse_any(SPECS / "task_multi.toml")
    keys = sorted(p.key for p in info.value.problems)
    assert keys == ["[batch].size", "[data].train", "[finetune].lr", "descripton", "kind"]
    with pytest.raises(SpecError) as info:
        parse_run(SPECS / "run_multi.toml")
    keys = sorted(p.key for p in info.value.problems)
    assert keys == [
        "[meta].epsilon",
        "[meta].scheduler",
        "[meta].sources",
        "[model].num_heads",
        "[run].device",
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(SpecError) as info:
        parse_any(path)
    assert str(info.value) == f"1 problem found:\n  {path}: no such file"


def test_run_spec_position_refuses_a_task_spec() -> None:
    """`metapt pretrain` on a task spec: parse_run says what the file is, parse_any accepts it as a task."""
    path = REPO / "tasks" / "synthetic" / "mlm.toml"
    with pytest.raises(SpecError) as info:
        parse_run(path)
    assert "kind: this is a task spec; `metapt pretrain` takes a run spec" in str(info.value)
    assert isinstance(parse_any(path), TaskSpec)


# ----------------------------------------------------------------------------------- defaults
MINIMAL = 'kind = "srl"\n[data]\nformat = "jsonl"\ntrain = "data/train.jsonl"\n'


def test_minimal_task_spec_gets_the_documented_defaults(tmp_path: Path) -> None:
    write(tmp_path, "data/train.jsonl", '{"tokens": ["a"]}\n')
    spec = parse_task(write(tmp_path, "my-srl.toml", MINIMAL))
    assert spec.name == "my-srl"  # the file stem
    assert spec.description == ""
    assert (spec.batch.size, spec.batch.max_length, spec.batch.stride) == (32, 128, 32)
    assert (spec.finetune.epochs, spec.finetune.lr) == (3, 5e-5)
    assert (spec.finetune.warmup_ratio, spec.finetune.weight_decay) == (0.1, 0.01)
    # head and loss stay empty in the spec, meaning "the kind's default": the first of the kind's list
    assert (spec.head.type, spec.loss.type) == ("", "")
    assert (KINDS["srl"].heads[0], KINDS["srl"].losses[0]) == ("predicate_tagger", "cross_entropy")
    assert spec.head.dropout == 0.1 and spec.loss.label_smoothing == 0.0
    assert spec.options == {} and spec.data.columns == {}
    assert spec.option("labels") == []  # a kind option falls back to the kind's default
    assert spec.data.splits() == ("train",)
    assert spec.path == str(tmp_path / "my-srl.toml")


def test_explicit_name_wins_over_the_stem(tmp_path: Path) -> None:
    write(tmp_path, "data/train.jsonl", "{}\n")
    spec = parse_task(write(tmp_path, "file-stem.toml", 'name = "given"\n' + MINIMAL))
    assert spec.name == "given"


def test_minimal_run_spec_gets_the_documented_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = parse_run(write(tmp_path, "run.toml", '[meta]\nsources = ["mlm"]\n'))
    assert isinstance(spec, RunSpec)
    run, model, meta = spec.run, spec.model, spec.meta
    assert (run.output_dir, run.seed, run.episodes, run.device, run.precision, run.checkpoint_every) == (
        "ckpt",
        0,
        100,
        "auto",
        "auto",
        10,
    )
    assert (model.pretrained, model.architecture, model.hidden_size, model.num_layers) == ("", "bert", 128, 2)
    assert (model.num_heads, model.intermediate_size, model.max_length) == (2, 512, 128)
    assert (spec.tokenizer.pretrained, spec.tokenizer.vocab_size) == ("", 8000)
    assert (meta.setting, meta.targets, meta.scheduler, meta.utility, meta.normalize) == (
        "agnostic",
        (),
        "meta",
        "exact",
        "none",
    )
    assert (meta.inner_lr, meta.lr, meta.support_batches, meta.train_batches) == (1e-3, 1e-4, 2, 16)
    assert (meta.epsilon, meta.grad_accumulation) == (0.1, 1)
    assert [t.name for t in spec.sources] == ["mlm"] and spec.targets == ()
    assert spec.sources[0].kind == "masked_lm"


def test_data_paths_are_relative_to_the_spec_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "specs/data/train.jsonl", "{}\n")
    write(tmp_path, "specs/data/dev.jsonl", "{}\n")
    text = MINIMAL + 'validation = "data/dev.jsonl"\n'
    path = write(tmp_path, "specs/t.toml", text)
    monkeypatch.chdir(tmp_path)  # not the spec's folder: the relative paths must not depend on it
    spec = parse_task(Path("specs/t.toml"))
    assert spec.data.train == "data/train.jsonl"  # as written
    assert Path(spec.data.location("train")).resolve() == (tmp_path / "specs/data/train.jsonl").resolve()
    assert Path(spec.data.location("validation")).resolve() == (tmp_path / "specs/data/dev.jsonl").resolve()
    assert spec.data.location("test") == ""
    assert parse_task(path).data.location("train") == str(tmp_path / "specs/data/train.jsonl")


def test_run_spec_source_paths_are_relative_to_the_run_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = 'kind = "masked_lm"\n[data]\nformat = "synthetic"\ncorpus = "shuffled"\nsize = 10\n'
    write(tmp_path, "exp/local/noise.toml", task)
    run = write(tmp_path, "exp/run.toml", '[meta]\nsources = ["mlm", "local/noise.toml"]\n')
    monkeypatch.chdir(tmp_path)
    spec = parse_run(run)
    assert [t.name for t in spec.sources] == ["mlm", "noise"]
    assert spec.sources[1].data.size == 10


def test_local_tasks_folder_shadows_the_builtin_specs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        "tasks/deep/mlm.toml",
        'kind = "masked_lm"\n[data]\nformat = "synthetic"\ncorpus = "shuffled"\n',
    )
    monkeypatch.chdir(tmp_path)
    assert find_task("mlm") == Path.cwd() / "tasks" / "deep" / "mlm.toml"
    assert find_task("span_selection") == REPO / "tasks" / "synthetic" / "span_selection.toml"


def test_an_empty_name_resolves_by_the_stem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(
        tmp_path,
        "tasks/noise.toml",
        'name = ""\nkind = "masked_lm"\n[data]\nformat = "synthetic"\ncorpus = "shuffled"\n',
    )
    monkeypatch.chdir(tmp_path)
    assert parse_task(tmp_path / "tasks/noise.toml").name == "noise"
    assert find_task("noise") == Path.cwd() / "tasks" / "noise.toml"


def test_typed_values() -> None:
    """Integers are accepted where a number is expected; lists become tuples."""
    spec = parse_task(REPO / "tasks" / "synthetic" / "span_selection.toml")
    assert isinstance(spec.finetune.lr, float)
    run = parse_run(REPO / "tasks" / "agnostic.toml")
    assert isinstance(run.meta.sources, tuple)


# ----------------------------------------------------------------------------- shipped specs
SHIPPED = sorted((REPO / "tasks").rglob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO / "tasks")) for p in SHIPPED])
def test_every_shipped_spec_parses(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    spec = parse_any(path)
    if isinstance(spec, RunSpec):
        assert spec.sources, path
        for task in spec.tasks().values():
            assert task.kind in KINDS
        if spec.meta.setting == "aware":
            assert spec.targets
    else:
        assert spec.kind in KINDS
        assert find_task(spec.name) == path  # each shipped task resolves by its name


def test_shipped_specs_exist_and_names_are_unique() -> None:
    assert {"agnostic.toml", "aware.toml"} <= {p.name for p in SHIPPED}
    names = [parse_task(p, check_data=False).name for p in task_files([REPO / "tasks"])]
    assert len(names) >= 10
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize("name", ["agnostic", "aware"])
def test_shipped_run_specs_resolve_from_any_folder(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./tasks here: names resolve to the specs shipped with the package
    spec = parse_run(REPO / "tasks" / f"{name}.toml")
    assert [t.name for t in spec.sources] == ["mlm", "span_selection", "response_selection", "mlm_shuffled"]
    if name == "aware":
        kinds = {t.name: t.kind for t in spec.targets}
        assert kinds == {
            "conll04-synthetic": "relation_extraction",
            "conll2012-synthetic": "srl",
            "claims-synthetic": "classification",
            "squad-synthetic": "extractive_qa",
        }
    else:
        assert spec.targets == ()


# --------------------------------------------------------------------------------- immutability
def test_specs_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    task = parse_task(REPO / "tasks" / "synthetic" / "conll2012-synthetic.toml")
    run = parse_run(REPO / "tasks" / "aware.toml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.kind = "masked_lm"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.batch.size = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.data.train = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.meta.epsilon = 0.5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.run.episodes = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.sources[0].head.dropout = 0.0  # type: ignore[misc]
    assert isinstance(run.meta.sources, tuple) and isinstance(run.sources, tuple)


def test_replace_builds_a_new_spec() -> None:
    task = parse_task(REPO / "tasks" / "synthetic" / "mlm.toml")
    changed = dataclasses.replace(task, batch=dataclasses.replace(task.batch, size=4))
    assert (task.batch.size, changed.batch.size) == (16, 4)


def test_one_value_check_words_spec_keys_and_kind_options_alike(tmp_path: Path) -> None:
    """A key of a spec table and a kind's [options] key go through the same check: same words."""
    text = (
        'kind = "masked_lm"\n[data]\nformat = "synthetic"\ncorpus = "documents"\n'
        "[batch]\nsize = 0\nmax_length = true\n"
        '[options]\nmask_probability = 0\nwhole_word_mask = 1\nmasking = "entities"\n'
    )
    with pytest.raises(SpecError) as e:
        parse_task(write(tmp_path, "t.toml", text))
    assert {p.key: p.message for p in e.value.problems} == {
        "[batch].size": "0 is out of range; allowed: between 1 and 65536",
        "[options].mask_probability": "0.0 is out of range; allowed: between 0.01 and 0.9",
        "[batch].max_length": "expected an integer, got True",
        "[options].whole_word_mask": "expected true or false, got 1",
        "[options].masking": "'entities' is not allowed (did you mean 'entity'?); "
        "allowed: entity, phrase, token, whole_word",
    }


def test_mps_is_a_device_for_the_spec_and_the_option_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[run].device and --device follow one rule (mps was valid in the file, refused as an option)."""
    from metapt.runspec import override

    monkeypatch.chdir(tmp_path)
    spec = parse_run(write(tmp_path, "run.toml", '[run]\ndevice = "mps"\n[meta]\nsources = ["mlm"]\n'))
    assert spec.run.device == "mps" and override(spec, device="mps").run.device == "mps"
    assert override(spec, device="cuda:1").run.device == "cuda:1"
    with pytest.raises(SpecError) as option:
        override(spec, device="cuda:x")
    with pytest.raises(SpecError) as file:
        parse_run(write(tmp_path, "bad.toml", '[run]\ndevice = "cuda:x"\n[meta]\nsources = ["mlm"]\n'))
    expected = "'cuda:x' is not allowed; allowed: auto, cpu, cuda, cuda:N, mps"
    assert (
        [p.message for p in option.value.problems] == [p.message for p in file.value.problems] == [expected]
    )


def test_pretrained_paths_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[model].pretrained` and `[tokenizer].pretrained` name a folder from where metapt runs, as
    `[run].output_dir` does (an earlier run's output), not from the spec file's folder; reference.md
    said every path was the spec file's."""
    from transformers import BertConfig, BertModel

    from metapt import builders, runspec
    from metapt.data.tokenizer import load_tokenizer, train_wordpiece

    warm = tmp_path / "work" / "warm"
    config = BertConfig(
        vocab_size=120, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16
    )
    BertModel(config).save_pretrained(warm)
    train_wordpiece(["a b c d e f g"] * 20, 100).save_pretrained(warm)
    text = '[model]\npretrained = "warm"\n[tokenizer]\npretrained = "warm"\n[meta]\nsources = ["mlm"]\n'
    run = write(tmp_path, "specs/run.toml", text)  # no warm/ beside it
    monkeypatch.chdir(tmp_path / "work")
    spec = parse_run(run)
    assert (spec.model.pretrained, spec.tokenizer.pretrained) == ("warm", "warm")  # as written
    assert builders.build_encoder(spec.model, None).config.hidden_size == 8
    assert (
        load_tokenizer(spec.tokenizer.pretrained).vocab_size
        == train_wordpiece(["a b c d e f g"] * 20, 100).vocab_size
    )
    assert warm.resolve() in [p.resolve() for p in runspec.inputs(spec)]  # what --overwrite must not clear
    reference = " ".join((REPO / "docs" / "reference.md").read_text().split())
    assert (
        "except `[run].output_dir`, `[model].pretrained` and `[tokenizer].pretrained`, which are relative "
        "to the working directory" in reference
    )


def test_a_contrastive_task_needs_two_examples_in_a_batch_and_in_a_probe(tmp_path: Path) -> None:
    # In-batch negatives: with one example the loss is 0 on every batch, and `relative` normalisation
    # divided by it (bench --variant support_batch_size=1 ended in ZeroDivisionError, exit 1).
    dialogue = '[data]\nformat = "synthetic"\ncorpus = "dialogues"\nsize = 20\n'
    one = write(tmp_path, "one.toml", f'kind = "response_selection"\n{dialogue}[batch]\nsize = 1\n')
    with pytest.raises(
        SpecError, match=r"\[batch\].size: 1 leaves the contrastive loss no in-batch negatives"
    ):
        parse_task(one)
    write(tmp_path, "talk.toml", f'kind = "response_selection"\n{dialogue}[batch]\nsize = 4\n')
    write(tmp_path, "docs.toml", 'kind = "masked_lm"\n[data]\nformat = "synthetic"\ncorpus = "documents"\n')
    run = '[meta]\nsetting = "agnostic"\nsources = ["talk.toml", "docs.toml"]\nsupport_batch_size = {}\n'
    with pytest.raises(SpecError) as bad:
        parse_run(write(tmp_path, "run1.toml", run.format(1)))
    assert [p.key for p in bad.value.problems] == ["[meta].support_batch_size"]  # talk, not docs
    assert "source 'talk' (contrastive loss) no in-batch negatives" in str(bad.value)
    assert parse_run(write(tmp_path, "run2.toml", run.format(2))).meta.support_batch_size == 2
    uniform = run.format(1) + 'scheduler = "uniform"\n'  # a baseline never probes: nothing to refuse
    assert parse_run(write(tmp_path, "run3.toml", uniform)).meta.scheduler == "uniform"
