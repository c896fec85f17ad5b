"""The small public-data setting (tasks/public): the WikiText reader on a hand-written file in the
wiki.*.tokens layout, and the specs' files under $METAPT_DATA with an `obtain` line when missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from metapt.data.readers import read_split
from metapt.errors import DataError
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
    with pytest.raises(DataError, match="pytorch/examples"):  # the message says where files come from
        read_split(load_task(str(PUBLIC / "wikitext2_mlm.toml")).data, "train")


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
