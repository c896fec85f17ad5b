"""Bad inputs end in exit 2 with a message naming the file (and line or byte), never "internal error":
corrupt or empty data files, a truncated checkpoint or encoder, a full disk while writing; and bad
data accepted in silence before: out-of-range entity indices, an answer_start that misses its text,
labels the head cannot learn (a warning with a count, also in results.json), a folder's README."""

from __future__ import annotations

import dataclasses
import errno
import json
import re
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from conftest import write
from transformers import BertConfig, BertModel
from typer.testing import CliRunner

from metapt import checkpoint, engine, finetune
from metapt.cli import app
from metapt.data import pipeline
from metapt.data.labels import unknown_labels
from metapt.data.readers import read_split
from metapt.data.tokenizer import train_wordpiece
from metapt.errors import CheckpointError, DataError, MetaptError
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.spec import DataSpec, TaskSpec

FIXTURES = Path(__file__).parent / "fixtures"
DATA = FIXTURES / "data"
AGNOSTIC = FIXTURES / "runs" / "agnostic.toml"
BINARY = bytes(range(256))


pytestmark = pytest.mark.usefixtures("one_thread")


def read(fmt: str, path: Path, **data: object) -> object:
    return read_split(DataSpec(format=fmt, train=str(path), **data), "train")


# --------------------------------------------------------------------------------- data files
@pytest.mark.parametrize("fmt", ["json", "squad", "spert", "jsonl", "dygie", "nq"])
def test_binary_json_names_the_file_and_byte(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_bytes(b'{"a": 1}' + BINARY)  # byte 8 (0x00) is valid UTF-8; 0x80 at byte 136 is not
    with pytest.raises(DataError) as caught:
        read(fmt, path)
    message = str(caught.value)
    assert message.startswith(f"{path}") and ("at byte 136" in message or "not valid JSON" in message)


def test_latin1_json_names_the_byte(tmp_path: Path) -> None:
    path = write(tmp_path, "squad.json", "")
    path.write_bytes('{"data": [{"title": "Caf\u00e9"}]}'.encode("latin-1"))
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}: not UTF-8 text \(invalid continuation byte at byte 24\)"
    ):
        read("squad", path)


def test_a_conll2012_line_with_3_columns_names_its_line(tmp_path: Path) -> None:
    lines = (DATA / "conll2012" / "demo.gold_conll").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    lines.insert(first + 1, "doc 0 1")  # inside the first sentence, after a full row
    path = write(tmp_path, "bad.gold_conll", "\n".join(lines) + "\n")
    with pytest.raises(
        DataError,
        match=rf"^{re.escape(str(path))}:{first + 2}: 3 columns \(expected \d+, as on line {first + 1}\)",
    ):
        read("conll2012", path)


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("conll2012", "x.gold_conll"),
        ("conll04", "x.corp"),
        ("tsv", "x.tsv"),
        ("jsonl", "x.jsonl"),
        ("text", "x.txt"),
    ],
)
def test_an_empty_data_file_has_no_records(fmt: str, name: str, tmp_path: Path) -> None:
    path = write(tmp_path, name, "\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: no records in the train split"):
        read(fmt, path)


@pytest.mark.parametrize("passage", ["nearby", "bm25"])
def test_records_that_make_no_examples_are_an_error_not_a_crash(passage: str, tmp_path: Path) -> None:
    """One-sentence documents of their own words give span selection nothing to point into. Its
    filter met datasets' empty map output (the record columns, not the features') with a
    ValueError, and an empty split saved to the feature cache failed to load (IndexError)."""
    # every word of a document is its own (a digit in each), so no other passage repeats one either
    path = write(tmp_path, "docs.txt", "".join(f"Word{i} stands{i} alone{i}.\n\n" for i in range(5)))
    spec = TaskSpec(
        kind="span_selection",
        name="ss",
        data=DataSpec(format="text", train=str(path)),
        options={"passage": passage},
    )
    tokenizer = train_wordpiece(["Word stands alone here."], vocab_size=100)
    for _ in range(2):  # and again: nothing was cached
        with pytest.raises(
            MetaptError, match=r"^task 'ss': the train split has no usable examples after encoding"
        ):
            pipeline.load_task(spec, tokenizer)
    assert not list(pipeline.features_dir().glob("ss-*"))


def test_a_folder_split_reads_only_files_of_its_format(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "finetune" / "rte" / "train.tsv", tmp_path / "train.tsv")
    write(tmp_path, "README.md", "# RTE\nnot\ta\ttsv\trow\tat all\n")
    write(tmp_path, "LICENSE", "some licence")
    assert len(read("tsv", tmp_path)) == 8  # the 8 rows of train.tsv alone
    only = tmp_path / "docs"
    write(only, "README.md", "# nothing here")
    with pytest.raises(DataError, match=r"docs: no tsv files in this folder .*; it holds README\.md"):
        read("tsv", only)


# ----------------------------------------------------------------- bad data accepted in silence
SPERT = [
    {
        "tokens": ["Ann", "met", "Bob"],
        "entities": [{"type": "Peop", "start": 0, "end": 1}, {"type": "Peop", "start": 2, "end": 3}],
        "relations": [{"type": "Knows", "head": 0, "tail": 1}],
    }
]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"entities": [{"type": "Peop", "start": 0, "end": 1}, {"type": "Peop", "start": 2, "end": 9}]},
            "entity 1 spans tokens [2, 9) but the sentence has 3 tokens",
        ),
        (
            {"relations": [{"type": "Knows", "head": 0, "tail": 2}]},
            "relation 0: tail = 2 but there are 2 entities (0..1)",
        ),
    ],
)
def test_spert_indices_out_of_range_are_errors(change: dict, message: str, tmp_path: Path) -> None:
    path = write(tmp_path, "train.json", json.dumps([{**SPERT[0], **change}]))
    assert len(read("spert", write(tmp_path, "good.json", json.dumps(SPERT)))) == 1
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}: record 0 \(train:0\): {re.escape(message)}"
    ):
        read("spert", path)


def test_dygie_spans_outside_their_sentence_are_errors(tmp_path: Path) -> None:
    doc = {
        "doc_key": "d",
        "sentences": [["Ann", "met"], ["Bob"]],
        "ner": [[[0, 0, "PER"]], [[3, 3, "PER"]]],
        "relations": [[], []],
    }
    path = write(tmp_path, "train.json", json.dumps(doc) + "\n")
    with pytest.raises(
        DataError,
        match=rf"^{re.escape(str(path))}:1: .*sentence 1: entity 0 spans tokens \[1, 2\) but the sentence has 1 tokens",
    ):
        read("dygie", path)


def test_an_answer_start_that_misses_its_text_is_an_error(tmp_path: Path) -> None:
    squad = json.loads((DATA / "squad" / "v1.json").read_text())
    qa = squad["data"][0]["paragraphs"][0]["qas"][0]
    answer = qa["answers"][0]
    answer["answer_start"] += 1
    path = write(tmp_path, "squad.json", json.dumps(squad))
    with pytest.raises(
        DataError,
        match=rf"question {re.escape(str(qa['id']))}: answer_start {answer['answer_start']} points at .*, not the answer text {re.escape(repr(answer['text']))}; the text first occurs at {answer['answer_start'] - 1}",
    ):
        read("squad", path)


def task(tmp_path: Path, labels: list[str] | None = None) -> TaskSpec:
    """A tiny classification task: train labels a, b; dev labels a, b, c, c."""
    rows = lambda pairs: "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in pairs)  # noqa: E731
    write(tmp_path, "train.jsonl", rows([("ann met bob", "a"), ("bob met ann", "b")] * 4))
    write(
        tmp_path,
        "dev.jsonl",
        rows([("ann met bob", "a"), ("bob met ann", "b"), ("ann ann", "c"), ("bob bob", "c")]),
    )
    options = f"labels = {json.dumps(labels)}\n" if labels else ""
    spec_file = write(
        tmp_path,
        "tiny.toml",
        f'kind = "classification"\n[options]\n{options}[data]\nformat = "jsonl"\ntrain = "train.jsonl"\nvalidation = "dev.jsonl"\n[batch]\nsize = 4\nmax_length = 16\n[finetune]\nepochs = 1\n',
    )
    return finetune.task_spec(str(spec_file), None, {})


def test_labels_the_head_cannot_learn_are_counted(tmp_path: Path) -> None:
    spec = task(tmp_path)
    records = {s: read_split(spec.data, s) for s in ("train", "validation")}
    assert unknown_labels(spec, {"labels": ["a", "b"]}, records) == [
        "task 'tiny': 2 validation labels are not in the train split's labels ('c' x2); the loss ignores "
        "them and the metrics count them as misses"
    ]
    given = task(tmp_path / "given", labels=["a"])
    records = {s: read_split(given.data, s) for s in ("train",)}
    assert unknown_labels(given, {"labels": ["a"]}, records) == [
        "task 'tiny': 4 train labels are not in [options].labels ('b' x4); the loss ignores them and the "
        "metrics count them as misses"
    ]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer, 32-wide BERT with a WordPiece over the words of `task`."""
    tok = train_wordpiece(["ann met bob", "bob met ann", "ann ann", "bob bob"], vocab_size=100)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    folder = tmp_path_factory.mktemp("encoder")
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_finetune_writes_the_label_warning_into_results(
    encoder: Path, tmp_path: Path, runner: CliRunner
) -> None:
    spec_file = Path(task(tmp_path).path)
    result = runner.invoke(
        app, ["finetune", "--task", str(spec_file), str(encoder), "--output-dir", str(tmp_path / "out"), "-q"]
    )
    assert result.exit_code == 0, result.output
    warning = "task 'tiny': 2 validation labels are not in the train split's labels ('c' x2)"
    assert f"warning: {warning}" in result.stderr  # warnings on stderr: `-q > log` keeps them in view
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results["warnings"]) == 1 and results["warnings"][0].startswith(warning)


def test_a_train_record_without_its_mapped_column_exits_2(
    encoder: Path, tmp_path: Path, runner: CliRunner
) -> None:
    spec_file = Path(task(tmp_path).path)
    spec_file.write_text(spec_file.read_text() + '[data.columns]\ntext = "sentence"\n')
    for name in ("train.jsonl", "dev.jsonl"):  # the text under "sentence"; train's 9th record misspells it
        path = tmp_path / name
        path.write_text(path.read_text().replace('"text"', '"sentence"'))
    with (tmp_path / "train.jsonl").open("a") as f:
        f.write('{"sentenc": "bob", "label": "a"}\n')
    message = f"{tmp_path / 'train.jsonl'}:9: no 'sentence'; every train record needs a value for 'sentence'"
    result = runner.invoke(
        app, ["finetune", "--task", str(spec_file), str(encoder), "--output-dir", str(tmp_path / "out"), "-q"]
    )
    assert result.exit_code == 2, result.output  # it exited 0
    assert result.stderr.startswith(f"error: {message}") and "Traceback" not in result.output
    result = runner.invoke(app, ["inspect-tasks", str(spec_file), "--count"])  # it counted train 9
    assert result.exit_code == 2, result.output
    assert f"data unreadable: {message}" in result.stdout


def test_a_validation_split_without_the_label_column_exits_2(
    encoder: Path, tmp_path: Path, runner: CliRunner
) -> None:
    # It trained, chose "best epoch 1" on no metrics at all, and exited 0.
    spec_file = Path(task(tmp_path).path)
    dev = tmp_path / "dev.jsonl"
    dev.write_text(
        "".join(json.dumps({"text": json.loads(x)["text"]}) + "\n" for x in dev.read_text().splitlines())
    )
    result = runner.invoke(
        app, ["finetune", "--task", str(spec_file), str(encoder), "--output-dir", str(tmp_path / "out"), "-q"]
    )
    assert result.exit_code == 2, result.output
    assert "its classification records need the field(s) label, but the validation split has the columns" in (
        result.stderr
    )
    assert not (tmp_path / "out" / "results.json").exists()


# ------------------------------------------------------------------------ checkpoints, encoders
def truncate(path: Path) -> None:
    path = path.resolve()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "run"
    engine.pretrain(override(parse_run(AGNOSTIC), output_dir=out, episodes=2))
    return out


def test_a_truncated_model_safetensors_exits_2_on_resume_and_finetune(
    finished: Path, tmp_path: Path, runner: CliRunner
) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished, out, symlinks=True)
    truncate(out / "model.safetensors")
    weights = (out / "current" / "model.safetensors").resolve()
    result = runner.invoke(app, ["pretrain", str(AGNOSTIC), "--output-dir", str(out), "--resume", "-q"])
    assert result.exit_code == 2, result.output
    assert f"{weights}: damaged (" in result.stderr  # the manifest's size, before anything loads
    result = runner.invoke(
        app, ["finetune", "--task", "conll2012-synthetic", str(out), "--epochs", "1", "-q"]
    )
    assert result.exit_code == 2, result.output
    assert f"{weights}: damaged (" in result.stderr
    assert not (out / "finetune").exists()
    manifest = out / "current" / "metapt.json"  # written before sizes were kept: the loader finds it
    manifest.write_text(
        json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "files"})
    )
    result = runner.invoke(app, ["pretrain", str(AGNOSTIC), "--output-dir", str(out), "--resume", "-q"])
    assert result.exit_code == 2, result.output
    assert "its weights are corrupt or truncated (SafetensorError" in result.stderr


def test_a_full_disk_while_writing_a_checkpoint(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished, out, symlinks=True)

    def full(obj: object, path: Path, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"\x80half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint.torch, "save", full)
    spec = override(parse_run(AGNOSTIC), output_dir=out, episodes=3)
    with pytest.raises(CheckpointError) as caught:
        engine.pretrain(spec, resume=True)
    message = str(caught.value)
    assert message.startswith(
        f"{out}: cannot write checkpoint-000003 (OSError: [Errno 28] No space left on device"
    )
    assert "MiB free on that disk. Nothing was lost: the previous checkpoint is still current." in message
    assert not list(out.glob(".*partial"))  # the half-written folder is gone
    assert checkpoint.resolve(out).name == "checkpoint-000002"
    monkeypatch.undo()
    assert engine.pretrain(spec, resume=True)["complete"]


def test_a_full_disk_while_caching_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: object, path: str, *args: object, **kwargs: object) -> None:
        # As the real save_to_disk does, make the missing folders: features/ may not exist yet when
        # this test runs alone (other tests create it by caching features first).
        Path(path).mkdir(parents=True)
        (Path(path) / "data.arrow").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline.datasets.Dataset, "save_to_disk", full)
    spec = dataclasses.replace(task(tmp_path), name="tiny-full")  # a name no other test cached
    tok = train_wordpiece(["ann met bob"], vocab_size=100)
    with pytest.raises(
        MetaptError, match=r"cannot write it \(OSError: \[Errno 28\] No space left on device\); \d+ MiB free"
    ):
        pipeline.load_task(spec, tok, ("train",))
    assert not list(pipeline.features_dir().glob("tiny-full-*"))


def test_an_unreadable_feature_cache_entry_is_rebuilt(tmp_path: Path) -> None:
    spec = dataclasses.replace(task(tmp_path), name="tiny-cache")  # a name no other test cached
    tok = train_wordpiece(["ann met bob"], vocab_size=100)
    first = pipeline.load_task(spec, tok, ("train",)).features["train"]
    (entry,) = pipeline.features_dir().glob("tiny-cache-train-*")
    (entry / "state.json").write_text("[")  # cut short, as by a crash or a full disk
    again = pipeline.load_task(spec, tok, ("train",)).features["train"]  # was: JSONDecodeError
    assert again.to_list() == first.to_list()
    assert datasets.load_from_disk(str(entry)).to_list() == first.to_list()  # the entry was rewritten


@pytest.mark.parametrize("damage", ["flip", "cut", "unsealed"])
def test_a_damaged_feature_cache_entry_is_rebuilt_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    spec = dataclasses.replace(task(tmp_path), name=f"tiny-{damage}")  # a name no other test cached
    tok = train_wordpiece(["ann met bob"], vocab_size=100)
    first = pipeline.load_task(spec, tok, ("train",)).features["train"].to_list()
    (entry,) = pipeline.features_dir().glob(f"tiny-{damage}-train-*")
    sums = json.loads((entry / "metapt-sha256.json").read_text())
    assert sorted(sums) == ["data-00000-of-00001.arrow", "dataset_info.json", "state.json"]
    arrow = entry / "data-00000-of-00001.arrow"
    data = bytearray(arrow.read_bytes())
    if damage == "flip":  # one bit pattern of a token id changed: the file still loads, wrongly
        at = data.index(bytes([tok.convert_tokens_to_ids("bob"), 0, 0, 0]))
        data[at] ^= 0x01
    elif damage == "cut":
        data = data[: len(data) // 2]
    else:  # as an older metapt wrote it: no sums, rebuilt without a warning (nothing known damaged)
        (entry / "metapt-sha256.json").unlink()
    arrow.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="metapt"):
        again = pipeline.load_task(spec, tok, ("train",)).features["train"].to_list()
    assert again == first  # flip: was a silently changed token id
    warned = [f"metapt: cache entry {entry} was damaged; rebuilt"] if damage != "unsealed" else []
    assert caplog.messages == warned
    assert json.loads((entry / "metapt-sha256.json").read_text()) == sums  # rebuilt and sealed again
    assert not list(entry.parent.glob(f"{entry.name}.tmp*"))


def test_a_file_datasets_puts_beside_a_feature_entry_is_not_damage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = dataclasses.replace(task(tmp_path), name="tiny-beside")  # a name no other test cached
    tok = train_wordpiece(["ann met bob"], vocab_size=100)
    first = pipeline.load_task(spec, tok, ("train",)).features["train"].to_list()
    (entry,) = pipeline.features_dir().glob("tiny-beside-train-*")
    (entry / "cache-0123456789abcdef.arrow").write_bytes(b"a map's cache")  # as datasets' .map() writes
    stamp = (entry / "data-00000-of-00001.arrow").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="metapt"):
        assert pipeline.load_task(spec, tok, ("train",)).features["train"].to_list() == first
    assert caplog.messages == [] and (entry / "data-00000-of-00001.arrow").stat().st_mtime_ns == stamp


def test_an_os_error_on_a_named_file_exits_2(finished: Path, tmp_path: Path, runner: CliRunner) -> None:
    write(tmp_path, "blocker", "a file")
    target = tmp_path / "blocker" / "report.png"
    result = runner.invoke(app, ["report", str(finished), "--output", str(target)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {tmp_path / 'blocker'}: ")
    assert "internal error" not in result.stderr
