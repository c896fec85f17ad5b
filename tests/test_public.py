"""The small public-data setting (tasks/public): the WikiText reader on a hand-written file in the
wiki.*.tokens layout, and the specs' files under $METAPT_DATA with an `obtain` line when missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metapt.cli import app
from metapt.data.readers import read_split
from metapt.errors import DataError, MissingDataError
from metapt.localdata import with_local_data
from metapt.resolve import load_task, parse_run
from metapt.spec import DataSpec
from metapt.validation import missing_data

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ROOT / "tasks" / "public"
WIKI = Path(__file__).resolve().parent / "fixtures" / "data" / "wikitext" / "wiki.test.tokens"


def test_wikitext_articles_start_at_level_one_headings_and_split_into_sentences() -> None:
    records = read_split(DataSpec(format="wikitext", train=str(WIKI)), "train")
    assert records["title"] == ["Alpha river", "Beta town"]
    assert records["id"] == ["wiki.test.tokens:0", "wiki.test.tokens:1"]
    # Section headings (= = History = =, = = = Later = = =) are dropped; paragraphs of one article join.
    assert records[0]["sentences"] == [
        "The Alpha river is a river in the north .",
        "It flows-fast through three towns .",  # the tokenized separators joined back
        "The river was named in 1820 .",
        'Its name means " white " ?',
        "Nobody knows !",
        "Boats came in 1901 .",
    ]
    assert records[0]["text"] == " ".join(records[0]["sentences"])
    assert records[1]["sentences"] == ["Beta is a small town ."]
    streamed = read_split(DataSpec(format="wikitext", train=str(WIKI), streaming=True), "train")
    assert [r["title"] for r in streamed] == ["Alpha river", "Beta town"]


def test_public_run_specs_name_the_documented_sources_and_targets() -> None:
    agnostic, aware = parse_run(PUBLIC / "agnostic.toml"), parse_run(PUBLIC / "aware.toml")
    sources = ["wikitext2_mlm", "wikitext2_reordering", "shakespeare_mlm", "dailydialog_files"]
    assert [t.name for t in agnostic.sources] == sources == [t.name for t in aware.sources]
    assert [t.kind for t in agnostic.sources] == [
        "masked_lm",
        "sentence_reordering",
        "masked_lm",
        "response_selection",
    ]
    assert [t.name for t in aware.targets] == ["sst2_files", "conll04_spert"]
    assert agnostic.run.eval_every == aware.run.eval_every == 4  # a held-out curve of 7+ points per run


def test_the_public_ernie_run_covers_ernie_2_0s_tasks_on_wikitext_2() -> None:
    ernie = parse_run(PUBLIC / "ernie.toml")
    assert [t.kind for t in ernie.sources] == [
        "masked_lm",
        "capitalization_prediction",
        "token_document_relation",
        "sentence_reordering",
        "sentence_distance",
        "ir_relevance",
        "replaced_token_detection",
    ]
    assert ernie.sources[0].options["masking"] == "entity"
    assert {t.data.format for t in ernie.sources} == {"wikitext"}
    assert all("$METAPT_DATA" in t.data.obtain for t in ernie.sources)


def test_public_tasks_read_their_files_under_metapt_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAPT_DATA", "/data")
    expected = {
        "wikitext2_mlm": ("raw_text/wikitext-2/valid.txt", "raw_text/wikitext-2/test.txt"),
        "wikitext2_span_selection": ("raw_text/wikitext-2/valid.txt", "raw_text/wikitext-2/test.txt"),
        "shakespeare_mlm": ("raw_text/tinyshakespeare/input.txt", None),
        "dailydialog_files": (
            "dailydialog/ijcnlp_dailydialog/validation",
            "dailydialog/ijcnlp_dailydialog/test",
        ),
        "sst2_files": ("glue/SST-2/train.tsv", "glue/SST-2/dev.tsv"),
        "mrpc_files": ("glue/MRPC/train.tsv", "glue/MRPC/dev.tsv"),
        "cola_files": ("glue/CoLA/train.tsv", "glue/CoLA/dev.tsv"),
        "conll04_spert": ("conll04/spert/conll04_train.json", "conll04/spert/conll04_dev.json"),
    }
    for name, (train, validation) in expected.items():
        data = load_task(str(PUBLIC / f"{name}.toml")).data
        assert data.location("train") == f"/data/{train}"
        assert data.location("validation") == (f"/data/{validation}" if validation else "")
        assert data.obtain and "$METAPT_DATA" in data.obtain
        assert missing_data(data) == list(data.splits())  # nothing at /data here
    assert load_task(str(PUBLIC / "wikitext2_span_selection.toml")).options["passage"] == "bm25"
    with pytest.raises(DataError, match="pytorch/examples"):  # the message says where files come from
        read_split(load_task(str(PUBLIC / "wikitext2_mlm.toml")).data, "train")


def test_the_paper_reads_dailydialog_in_the_release_layout_as_the_public_spec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ijcnlp_dailydialog.zip unpacks to ijcnlp_dailydialog/ with train/, validation/, test/ inside;
    # the paper spec read dailydialog/train, so a copy laid out for the public spec was not found
    monkeypatch.setenv("METAPT_DATA", "/data")
    paper = load_task(str(ROOT / "tasks" / "paper" / "sources" / "dailydialog_response.toml")).data
    public = load_task(str(PUBLIC / "dailydialog_files.toml")).data
    assert paper.location("train") == "/data/dailydialog/ijcnlp_dailydialog/train"
    assert paper.location("validation") == public.location("train")
    assert "$METAPT_DATA/dailydialog/ijcnlp_dailydialog/train/" in paper.obtain


def test_metapt_data_is_relative_to_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `METAPT_DATA=../shared/data metapt ...` and the unset default ./data name folders from where the
    # command runs, as the docs say, not from the spec file's folder (an installed spec's is site-packages)
    monkeypatch.chdir(tmp_path)
    spec = str(PUBLIC / "mrpc_files.toml")
    monkeypatch.setenv("METAPT_DATA", "../shared/data")
    assert load_task(spec).data.location("train") == str(tmp_path.parent / "shared/data/glue/MRPC/train.tsv")
    monkeypatch.delenv("METAPT_DATA")
    assert load_task(spec).data.location("train") == str(tmp_path / "data/glue/MRPC/train.tsv")


def test_cola_files_read_glues_headerless_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # GLUE's CoLA TSVs have no header: source, label, the original mark, sentence. With a header row
    # assumed, the first sentence became the column names and no "sentence" column was found.
    monkeypatch.setenv("METAPT_DATA", str(Path(__file__).resolve().parent / "fixtures" / "data"))
    data = load_task(str(PUBLIC / "cola_files.toml")).data
    train, dev = read_split(data, "train"), read_split(data, "validation")
    assert (len(train), len(dev)) == (5, 2)
    assert (train[1]["text"], train[1]["label"]) == ("The cat the mat on sat.", "0")
    assert [r["label"] for r in dev] == ["0", "1"]


def test_the_hub_cola_spec_on_the_headerless_files_points_to_cola_files(tmp_path: Path) -> None:
    # `finetune --task cola --data glue/CoLA` reads the first row as the header; the error now says
    # the row is data and names the spec that reads these files
    fixture = Path(__file__).resolve().parent / "fixtures" / "data" / "glue" / "CoLA"
    spec = with_local_data(load_task("cola"), fixture)
    with pytest.raises(DataError) as info:
        read_split(spec.data, "train")
    message = str(info.value)
    assert "names column 'sentence', which is not there" in message
    assert "the first row looks like data, not a header" in message and "--task cola_files" in message


# ------------------------------------------- the built-in specs on $METAPT_DATA in the distributions' layout
# tests/fixtures/metapt_data holds tiny files of our own, laid out as the upstream downloads unpack
# (conll04/spert/ as SpERT's fetch script names its files, conll2005/conll05st-release/, the NQ files
# as the download page saves them); /work/shared/data mirrors the same layout.
LAYOUT = Path(__file__).resolve().parent / "fixtures" / "metapt_data"
SCRIPT = Path(sys.executable).with_name("metapt")  # the installed console script


def metapt(*args: str, data: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("METAPT_DEBUG", "COLUMNS")}
    env |= {"METAPT_DATA": str(data), "COLUMNS": "400"}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_builtin_specs_name_the_distributions_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    # What docs/public-data.md lists per task; the splits a download lacks are not shipped in the fixtures.
    monkeypatch.setenv("METAPT_DATA", "/data")
    expected = {
        "conll04": ["conll04/spert/conll04_train.json", "conll04/spert/conll04_dev.json"],
        "conll2005": ["conll2005/conll05st-release/" + s for s in ("train", "devel", "test.wsj")],
        "conll2012": [
            "conll2012/conll-formatted-ontonotes-5.0/data/" + s for s in ("train", "development", "test")
        ],
        "ace2005": [f"ace2005/processed-data/json/{s}.json" for s in ("train", "dev", "test")],
        "natural_questions": [
            "natural_questions/v1.0-simplified_simplified-nq-train.jsonl.gz",
            "natural_questions/nq-dev-sample.jsonl.gz",
        ],
    }
    for name, paths in expected.items():
        data = load_task(name).data
        assert [data.location(s) for s in data.splits()][: len(paths)] == [f"/data/{p}" for p in paths]
    assert load_task("conll04").data.location("test") == "/data/conll04/spert/conll04_test.json"


def test_inspect_tasks_counts_the_builtin_tasks_from_metapt_data_without_data_option() -> None:
    result = metapt(
        "inspect-tasks", "--count", "--json", "conll04", "conll2005", "natural_questions", data=LAYOUT
    )
    assert result.returncode == 0, result.stderr
    counts = {r["name"]: r.get("counts", r.get("error")) for r in json.loads(result.stdout)}
    assert counts == {
        "conll04": {"train": 3, "validation": 2},  # no conll04_test.json: left out, as finetune does
        "conll2005": {"train": 3, "validation": 1, "test": 1},  # sentences, one without a verb
        "natural_questions": {"train": 2, "validation": 2},  # 7002 has no long answer: skipped
    }


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer, 32-wide BERT with a WordPiece over the fixtures' words, as an HF folder."""
    from transformers import BertConfig, BertModel

    from metapt.data.tokenizer import train_wordpiece

    words = [
        " ".join(d["tokens"])
        for f in (LAYOUT / "conll04/spert").glob("*.json")
        for d in json.loads(f.read_text())
    ]
    tok = train_wordpiece(words, vocab_size=120)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    folder = tmp_path_factory.mktemp("encoder")
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_finetune_reads_conll04_from_metapt_data_and_scores_validation_without_its_test_file(
    encoder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ft"
    result = metapt(
        "finetune", "--task", "conll04", str(encoder), "--output-dir", str(out), "-q", data=LAYOUT
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert list(results["metrics"]) == ["validation"]
    missing = LAYOUT / "conll04/spert/conll04_test.json"
    assert f"no test split: nothing at {missing}; scored on validation only" in results["warnings"]
    lines = (out / results["predictions"]["validation"]).read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["21", "22"]  # the two dev documents' orig_id


def test_missing_data_names_every_split_tried_and_what_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The older layout (release folders straight under conll2005/): the message lists the three paths
    # tried and what conll2005/ holds instead, so the mismatch is plain to see.
    (tmp_path / "conll2005" / "train").mkdir(parents=True)
    (tmp_path / "conll2005" / "devel").mkdir()
    monkeypatch.setenv("METAPT_DATA", str(tmp_path))
    release = tmp_path / "conll2005" / "conll05st-release"
    with pytest.raises(MissingDataError) as e:
        read_split(load_task("conll2005").data, "train")
    assert str(e.value).startswith(
        f"task data: split 'train' of format 'conll2005': nothing at {release / 'train'}. Also missing: "
        f"validation at {release / 'devel'}; test at {release / 'test.wsj'}. "
        f"{tmp_path / 'conll2005'}/ holds devel/, train/. "
    )
    # The spec's obtain line offers --data PATH: the message says so once (it said it twice).
    assert str(e.value).endswith(
        "(METAPT_DATA defaults to ./data), or pass --data PATH. Or edit [data].train."
    )
    assert str(e.value).count("--data") == 1


def test_a_missing_split_offers_data_once_with_any_obtain_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAPT_DATA", "/nonexistent")
    for task in (
        "conll04",
        "conll2005",
        "conll2012",
        "ace2005",
        "natural_questions",
        str(PUBLIC / "sst2_files.toml"),
    ):
        with pytest.raises(MissingDataError) as e:
            read_split(load_task(task).data, "train")
        assert str(e.value).count("--data PATH") == 1, str(e.value)
    assert str(e.value).endswith(
        " Pass --data PATH or edit [data].train."
    )  # sst2_files' line names no --data


def test_nq_open_is_named_as_such_not_read_as_natural_questions(tmp_path: Path, runner: CliRunner) -> None:
    # NQ-open has questions and answer strings but no passage: exit 2 saying so, not a KeyError.
    nq_open = LAYOUT / "nq_open" / "NQ-open.dev.jsonl"
    spec = tmp_path / "nq_open.toml"
    spec.write_text(
        f'kind = "extractive_qa"\n[data]\nformat = "nq"\ntrain = "{nq_open}"\nvalidation = "{nq_open}"\n'
    )
    result = runner.invoke(app, ["inspect-tasks", "--count", str(spec)])
    assert result.exit_code == 2
    assert (
        f"data unreadable: {nq_open}:1: an NQ-open record (a question and answer strings, no passage), "
        "not a Natural Questions example" in result.stdout
    )
    assert "Traceback" not in result.output
    for data in (nq_open, nq_open.parent):  # --data with the file, or its folder (no train file there)
        args = ["finetune", "--task", "natural_questions", str(tmp_path), "--data", str(data)]
        result = runner.invoke(app, [*args, "--output-dir", str(tmp_path / "out")])
        assert result.exit_code == 2
        assert f"{nq_open}:1: an NQ-open record" in " ".join(result.stderr.split())


def test_nq_reads_the_original_format_as_the_simplified_one() -> None:
    # The dev sample comes in the original format (document_tokens); joined by spaces they are the
    # simplified format's document_text, so examples 7001 and 7003 read the same from both files.
    folder = LAYOUT / "natural_questions"
    simplified = read_split(
        DataSpec(format="nq", train=str(folder / "v1.0-simplified_simplified-nq-train.jsonl.gz")), "train"
    )
    original = read_split(DataSpec(format="nq", train=str(folder / "nq-dev-sample.jsonl.gz")), "train")
    assert original.to_list() == simplified.to_list()
    assert original[0]["context"] == "A fjord is a long narrow inlet ."
    assert original[0]["answers"] == {"text": ["long narrow inlet"], "answer_start": [13]}


def test_validate_takes_a_task_name_from_a_subfolder(runner: CliRunner) -> None:
    # `finetune --task rte` finds tasks/glue/rte.toml; `validate rte` said "rte: no such file".
    result = runner.invoke(app, ["validate", "rte"])
    assert result.exit_code == 0, result.output
    assert "glue/rte.toml (task 'rte')" in result.stdout
