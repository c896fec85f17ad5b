"""Readers: exact record counts and spot-checked records from the small files in tests/fixtures/data."""

from __future__ import annotations

import gzip
import logging
import re
import shutil
from pathlib import Path

import datasets
import pytest

from metapt.brackets import bio_to_brackets, brackets_to_bio
from metapt.data.locate import resolve_files
from metapt.data.readers import read_split
from metapt.errors import DataError
from metapt.spec import DataSpec

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def read(fmt: str, train: str, **fields) -> datasets.Dataset:
    return read_split(DataSpec(format=fmt, train=train, base_dir=str(FIXTURES), **fields), "train")


# ------------------------------------------------------------------------------------ generic
def test_tsv_glue_keeps_quotes_and_drops_the_bom():
    ds = read("tsv", "tsv/train.tsv")
    assert len(ds) == 3
    assert ds.column_names == ["index", "sentence1", "sentence2", "label"]
    assert ds[1] == {
        "index": "1",
        "sentence1": 'She said "no" twice.',
        "sentence2": "She agreed at once.",
        "label": "not_entailment",
    }


def test_tsv_without_header_names_columns_by_position():
    ds = read("tsv", "tsv/cola.tsv", header=False)
    assert len(ds) == 3
    assert ds[1] == {"0": "gj04", "1": "0", "2": "*", "3": "Dog the loudly barked."}
    assert ds[2]["3"] == 'Who did you say "hello" to?'


def test_tsv_row_with_wrong_cell_count_names_file_and_line():
    with pytest.raises(DataError, match=r"bad\.tsv:3: 2 cells \(expected 3"):
        read("tsv", "tsv/bad.tsv")


def test_csv_unquotes_cells_and_keeps_strings():
    ds = read("csv", "csv/train.csv")
    assert len(ds) == 3
    assert ds[0] == {"id": "q1", "question": "Where is Paris, exactly?", "answer": "France"}
    assert ds[2]["question"] == 'Who wrote "Hamlet"?'
    assert ds[1]["answer"] == "4"


def test_jsonl_and_json():
    ds = read("jsonl", "jsonl/train.jsonl")
    assert len(ds) == 3
    assert ds[2] == {"sentence": "An ordinary afternoon.", "label": 1, "score": 2.5}
    ds = read("json", "json/train.json")
    assert len(ds) == 2
    assert ds[1] == {
        "premise": "The shop was closed.",
        "hypothesis": "Anyone could buy bread there.",
        "label": 1,
    }


def test_malformed_jsonl_line_names_file_and_line():
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        read("jsonl", "jsonl/bad.jsonl")


def test_parquet(tmp_path: Path):
    rows = [{"text": "one", "label": 0}, {"text": "two", "label": 1}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "part.parquet"))
    ds = read_split(DataSpec(format="parquet", train="part.parquet", base_dir=str(tmp_path)), "train")
    assert len(ds) == 2
    assert ds[1] == {"text": "two", "label": 1}


def test_text_documents_split_on_blank_and_whitespace_lines():
    ds = read("text", "text/corpus.txt")
    assert len(ds) == 3
    assert ds[0] == {
        "id": "corpus.txt:0",
        "text": "The river runs north. It floods every spring.",
        "sentences": ["The river runs north.", "It floods every spring."],
    }
    assert ds[1]["sentences"] == ["A second document starts here."]
    assert len(ds[2]["sentences"]) == 3


def test_text_reads_gzip_files(tmp_path: Path):
    with gzip.open(tmp_path / "corpus.txt.gz", "wt", encoding="utf-8") as f:
        f.write((FIXTURES / "text" / "corpus.txt").read_text())
    ds = read_split(DataSpec(format="text", train="corpus.txt.gz", base_dir=str(tmp_path)), "train")
    assert [r["text"] for r in ds] == [r["text"] for r in read("text", "text/corpus.txt")]


def test_streaming_text_is_iterable_with_the_same_records():
    ds = read("text", "text/corpus.txt", streaming=True)
    assert isinstance(ds, datasets.IterableDataset)
    assert list(ds) == list(read("text", "text/corpus.txt"))


def test_streaming_jsonl_renames_columns():
    ds = read("jsonl", "jsonl/train.jsonl", streaming=True, columns={"text": "sentence"})
    assert isinstance(ds, datasets.IterableDataset)
    assert [r["text"] for r in ds] == ["A bright morning.", "A gloomy evening.", "An ordinary afternoon."]


# ------------------------------------------------------------------------- columns and errors
def test_columns_rename_source_columns_to_fields():
    ds = read(
        "tsv", "tsv/train.tsv", columns={"text": "sentence1", "text_pair": "sentence2", "label": "label"}
    )
    assert ds.column_names == ["index", "text", "text_pair", "label"]
    assert ds[0]["text"] == "The cat sat on the mat."


def test_missing_column_names_the_column_and_the_ones_available():
    with pytest.raises(DataError) as e:
        read("tsv", "tsv/train.tsv", columns={"text": "sentence"})
    assert "train.tsv" in str(e.value)
    assert "[data.columns].text names column 'sentence'" in str(e.value)
    assert "columns available: index, sentence1, sentence2, label" in str(e.value)


def test_missing_split_location_says_how_to_fix():
    data = DataSpec(
        format="conll2005", train="nowhere/train", base_dir=str(FIXTURES), obtain="Get it from LDC."
    )
    with pytest.raises(DataError) as e:
        read_split(data, "train")
    message = str(e.value)
    assert f"split 'train' of format 'conll2005': nothing at {FIXTURES / 'nowhere/train'}" in message
    assert "Get it from LDC." in message
    assert "--data PATH or edit [data].train" in message


def test_resolve_files_folder_glob_and_nothing():
    assert [p.name for p in resolve_files(str(FIXTURES / "dailydialog"))] == [
        "dialogues_act_train.txt",
        "dialogues_train.txt",
    ]
    assert [p.name for p in resolve_files(str(FIXTURES / "superglue" / "*" / "val.jsonl"))] == [
        "val.jsonl"
    ] * 2
    with pytest.raises(DataError, match="nothing at"):
        resolve_files(str(FIXTURES / "no-such-*.tsv"))


def test_hf_format_calls_load_dataset(monkeypatch: pytest.MonkeyPatch):
    calls = []

    def fake(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        return datasets.Dataset.from_list([{"sentence1": "a", "sentence2": "b", "label": 1}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = DataSpec(
        format="hf", dataset="nyu-mll/glue", subset="rte", train="train", columns={"text": "sentence1"}
    )
    ds = read_split(data, "train")
    assert calls == [("nyu-mll/glue", "rte", "train", False)]
    assert ds[0] == {"text": "a", "sentence2": "b", "label": 1}


def test_hf_super_glue_gets_the_kind_fields(monkeypatch: pytest.MonkeyPatch):
    row = {"premise": "p", "choice1": "c1", "choice2": "c2", "question": "effect", "idx": 0, "label": 1}
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list([row]))
    ds = read_split(
        DataSpec(format="hf", dataset="aps/super_glue", subset="copa", validation="validation"), "validation"
    )
    assert ds[0]["context"] == "p What happened as a result?"
    assert ds[0]["choices"] == ["c1", "c2"]


def test_hf_failure_becomes_data_error(monkeypatch: pytest.MonkeyPatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        read_split(DataSpec(format="hf", dataset="nyu-mll/glue", subset="rte", train="train"), "train")
    assert "could not be loaded from the hub" in str(e.value)
    assert "HF_HUB_OFFLINE" in str(e.value) and "--data PATH" in str(e.value)


# ------------------------------------------------------------------------------------------ SRL
def test_conll2005_release_words_and_props_gz():
    ds = read("conll2005", "conll2005/release/train")
    assert len(ds) == 3
    assert sum(len(p) for p in ds["predicate_indices"]) == 3
    assert ds[1] == {
        "id": "train.01:1",
        "tokens": ["Investors", "said", "prices", "would", "rise", "."],
        "predicate_indices": [1, 4],
        "predicate_lemmas": ["say", "rise"],  # the props' verb column: srl-eval.pl matches on it
        "srl_tags": [
            ["B-A0", "B-V", "B-A1", "I-A1", "I-A1", "O"],
            ["O", "O", "B-A1", "B-AM-MOD", "B-V", "O"],
        ],
    }
    assert ds[2]["predicate_indices"] == [] and ds[2]["srl_tags"] == []
    # A spec may also point at the props file: its words are found beside it.
    by_props = read("conll2005", "conll2005/release/train/props/train.01.props.gz")
    assert list(by_props) == list(ds)


def test_conll2005_pasted_file_matches_the_release_layout():
    ds = read("conll2005", "conll2005/combined.txt")
    assert len(ds) == 3
    assert ds[0]["tokens"][:3] == ["The", "committee", "approved"]
    assert ds[0]["predicate_indices"] == [2]
    assert ds[0]["srl_tags"] == [["B-A0", "I-A0", "B-V", "B-A1", "I-A1", "B-AM-TMP", "I-AM-TMP", "O"]]
    assert ds["srl_tags"] == read("conll2005", "conll2005/release/train")["srl_tags"]


def test_conll2005_bad_bracket_names_file_and_line():
    with pytest.raises(DataError, match=r"bad\.txt:12: column 4: 'A1\*\)' is not a Start-End cell"):
        read("conll2005", "conll2005/bad.txt")


def test_conll2005_props_without_words(tmp_path: Path):
    shutil.copy(FIXTURES / "conll2005/release/train/props/train.01.props.gz", tmp_path)
    with pytest.raises(DataError, match="no words file"):
        read_split(DataSpec(format="conll2005", train=".", base_dir=str(tmp_path)), "train")


def test_conll2012_two_documents():
    ds = read("conll2012", "conll2012/demo.gold_conll")
    assert len(ds) == 3
    assert ds[0] == {
        "id": "nw/demo/00/demo_0001:0:0",
        "document_id": "nw/demo/00/demo_0001",
        "part": 0,
        "tokens": ["Mary", "wanted", "to", "visit", "Paris", "."],
        "predicate_indices": [1, 3],
        "predicate_lemmas": ["want", "visit"],  # column 7, the predicate lemma
        "srl_tags": [
            ["B-ARG0", "B-V", "B-ARG1", "I-ARG1", "I-ARG1", "O"],
            ["O", "O", "O", "B-V", "B-ARG1", "O"],
        ],
    }
    assert ds[1]["tokens"] == ["Good", "news", "."] and ds[1]["predicate_indices"] == []
    assert ds[2]["document_id"] == "nw/demo/00/demo_0002"
    assert ds[2]["srl_tags"] == [["B-ARG0", "B-V", "B-ARGM-TMP", "O"]]


def test_brackets_round_trip_on_a_prop_column():
    column = ["(A0*", "*", "*)", "(V*)", "(A1*", "*", "*", "*)", "(AM-TMP*)", "*", "(C-A1*", "*)", "*"]
    tags = brackets_to_bio(column)
    assert tags == [
        "B-A0",
        "I-A0",
        "I-A0",
        "B-V",
        "B-A1",
        "I-A1",
        "I-A1",
        "I-A1",
        "B-AM-TMP",
        "O",
        "B-C-A1",
        "I-C-A1",
        "O",
    ]
    assert bio_to_brackets(tags) == column


def test_brackets_old_style_and_nesting():
    assert brackets_to_bio(["(A1*", "*A1)", "(V*V)"]) == ["B-A1", "I-A1", "B-V"]
    # BIO cannot nest: the inner span is dropped, the outer kept.
    assert brackets_to_bio(["(A2(R-A1*)", "*", "*)", "(V*)"]) == ["B-A2", "I-A2", "I-A2", "B-V"]
    with pytest.raises(ValueError, match="never closed"):
        brackets_to_bio(["(A0*", "*"])


# ------------------------------------------------------------------------- relation extraction
def test_conll04_corp_splits_multiwords_and_maps_relations():
    ds = read("conll04", "conll04/sample.corp")
    assert len(ds) == 3
    assert sum(len(r) for r in ds["relations"]) == 2
    assert ds[0] == {
        "id": "10",
        "tokens": ["John", "Smith", "works", "for", "Acme", "Corp", "in", "New", "York", "."],
        "entities": [
            {"start": 0, "end": 2, "type": "Peop"},
            {"start": 4, "end": 6, "type": "Org"},
            {"start": 7, "end": 9, "type": "Loc"},
        ],
        "relations": [
            {"head": 0, "tail": 1, "type": "Work_For"},
            {"head": 1, "tail": 2, "type": "OrgBased_In"},
        ],
    }
    assert ds[1]["tokens"][1] == ","
    assert ds[1]["relations"] == []


def test_conll04_relation_to_a_non_entity_names_the_line():
    with pytest.raises(DataError, match=r"bad\.corp:9: relation Work_For joins token lines 0 and 4"):
        read("conll04", "conll04/bad.corp")


def test_spert():
    ds = read("spert", "spert/train.json")
    assert len(ds) == 3
    assert ds[1]["id"] == "102"
    assert ds[1]["entities"][0] == {"start": 0, "end": 2, "type": "Org"}
    assert ds[1]["relations"] == [
        {"head": 0, "tail": 1, "type": "OrgBased_In"},
        {"head": 1, "tail": 2, "type": "Located_In"},
    ]


def test_dygie_sentences_get_sentence_offsets_and_exclusive_ends():
    ds = read("dygie", "dygie/train.json")
    assert len(ds) == 3
    assert ds[1] == {
        "id": "demo_doc_1:1",
        "tokens": ["She", "works", "for", "the", "city", "council", "."],
        "entities": [{"start": 0, "end": 1, "type": "PER"}, {"start": 3, "end": 6, "type": "ORG"}],
        "relations": [{"head": 0, "tail": 1, "type": "ORG-AFF"}],
    }
    assert ds[2]["relations"] == [{"head": 0, "tail": 1, "type": "PHYS"}]


# ------------------------------------------------------------------------------ QA and dialogue
def test_squad_v1():
    ds = read("squad", "squad/v1.json")
    assert len(ds) == 3
    assert ds[0] == {
        "id": "q1",
        "title": "Lighthouse",
        "context": "The lighthouse was built in 1874 on a rocky island.",
        "question": "When was the lighthouse built?",
        "answers": {"text": ["1874", "in 1874"], "answer_start": [28, 25]},
    }


def test_squad_v2_impossible_questions_have_no_answers():
    ds = read("squad", "squad/v2.json")
    assert len(ds) == 2
    assert ds[0]["answers"] == {"text": ["six"], "answer_start": [65]}
    assert ds[1]["answers"] == {"text": [], "answer_start": []}
    assert "plausible_answers" not in ds.column_names


def test_nq_scores_its_no_short_answer_questions_as_it_trains_them() -> None:
    # Such records have no answer text; they train as no-answer ([CLS]) and, without this option,
    # were left out of the score, so predicting "no answer" for them could never be credited.
    from metapt.resolve import load_task

    assert load_task("natural_questions").options["version_2_with_negative"] is True


def test_nq_long_answer_context_and_short_answer_offsets(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="metapt"):
        ds = read("nq", "nq/dev.jsonl")
    assert len(ds) == 2
    assert "skipped 1 of 3" in caplog.text
    assert ds[0] == {
        "id": "1001",
        "title": "Moon",
        "context": "The Moon is Earth 's only natural satellite .",
        "question": "what is the moon",
        "answers": {"text": ["natural satellite"], "answer_start": [26]},
    }
    record = ds[1]
    start = record["answers"]["answer_start"][0]
    assert record["context"][start : start + len("384,400 km")] == "384,400 km"


def test_dailydialog_skips_label_files_and_empty_turns():
    ds = read("dailydialog", "dailydialog")
    assert len(ds) == 3
    assert ds[0] == {
        "id": "dialogues_train:1",
        "turns": ["Hello , how are you ?", "Fine , thanks . And you ?", "Not bad ."],
    }
    assert ds[2]["turns"] == ["Where is the station ?", "It is next to the bank .", "Thank you !"]


# ------------------------------------------------------------------------------------ SuperGLUE
def test_superglue_boolq_and_unlabelled_test():
    ds = read("superglue", "superglue/boolq/train.jsonl", subset="boolq")
    assert len(ds) == 2
    assert ds[0]["label"] == 1 and ds[1]["label"] == 0
    assert ds[1]["text"] == "is the canal older than the river"
    assert ds[1]["text_pair"] == "Canal -- The canal was dug in 1820."
    test = read("superglue", "superglue/boolq/test.jsonl", subset="boolq")
    assert test[0]["label"] == -1


def test_superglue_cb_string_labels_follow_the_class_order():
    ds = read("superglue", "superglue/cb/val.jsonl", subset="cb")
    assert ds["label"] == [1, 2, 0]
    assert ds[0]["text"] == "I doubt that he left." and ds[0]["text_pair"] == "he left"


def test_superglue_copa_is_multiple_choice():
    ds = read("superglue", "superglue/copa/val.jsonl", subset="copa")
    assert len(ds) == 2
    assert ds[0]["context"] == "The man broke his toe. What was the cause?"
    assert ds[1]["context"] == "I tipped the bottle. What happened as a result?"
    assert ds[1]["choices"] == ["The liquid in the bottle froze.", "The liquid in the bottle poured out."]
    assert ds["label"] == [0, 1]


def test_superglue_multirc_one_record_per_answer():
    ds = read("superglue", "superglue/multirc/train.jsonl", subset="multirc")
    assert len(ds) == 4
    assert ds[3]["idx"] == {"paragraph": 0, "question": 1, "answer": 3}
    assert ds[3]["text_pair"] == "Where does she sell bread? At home"
    assert ds[3]["text"].startswith("Anna bakes bread")
    assert ds["group"] == ["0-0", "0-0", "0-1", "0-1"]
    assert ds["label"] == [1, 0, 1, 0]


def test_superglue_record_one_record_per_query():
    ds = read("superglue", "superglue/record/train.jsonl", subset="record")
    assert len(ds) == 2
    assert ds[0]["choices"] == ["Oslo", "CNN", "Norway"]
    assert ds[0]["entities"] == ["Oslo", "CNN", "Norway"]
    assert ds[0]["answers"] == ["Oslo"]
    assert ds[1]["question"] == "@placeholder is the capital of Norway."
    assert ds[1]["idx"] == {"passage": 0, "query": 1}
    assert ds[1]["context"].startswith("Oslo (CNN)")


def test_superglue_wsc_and_wic_texts():
    wsc = read("superglue", "superglue/wsc/train.jsonl", subset="wsc")
    assert wsc[0]["text"] == (
        "*Mark* told Pete many lies about himself, which Pete included in his book. "
        "#He# should have been more truthful."
    )
    assert wsc[0]["label"] == 1 and wsc[0]["span1_text"] == "Mark"
    wic = read("superglue", "superglue/wic/train.jsonl", subset="wic")
    assert wic[0]["text"] == "bank: He sat on the bank of the river."
    assert wic[0]["text_pair"] == "She works at a bank." and wic[0]["label"] == 0


# ------------------------------------------------------------------ records lacking a field
def needs_of(kind: str, split: str = "train") -> tuple[tuple[str, ...], ...]:
    from metapt.catalog import record_fields

    return record_fields(kind, split)


def test_record_fields_are_the_kinds_fields_with_documents_as_alternatives():
    assert needs_of("classification") == (("text",), ("label",))
    assert needs_of("classification", "test") == (("text",),)  # a test split may be unlabelled
    assert needs_of("masked_lm") == (("text", "sentences"),)
    assert needs_of("sentence_reordering") == (("text", "sentences"),)
    assert needs_of("extractive_qa", "test") == (("context",), ("question",))
    assert needs_of("response_selection") == (("turns",),)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (
            '{"sentenc": "c d", "label": "y"}',
            "no 'sentence'; every train record needs a value for 'sentence' ([data.columns].text = 'sentence')",
        ),
        (
            '{"sentence": null, "label": "y"}',
            "'sentence' is null; every train record needs a value for 'sentence' ([data.columns].text = 'sentence')",
        ),
        (
            '{"sentence": "c d", "label": null}',
            "'label' is null; every train record needs a value for 'label'",
        ),
        ('{"sentence": "c d"}', "no 'label'; every train record needs a value for 'label'"),
    ],
)
def test_a_jsonl_record_lacking_a_field_names_its_line_and_column(tmp_path: Path, second: str, message: str):
    path = tmp_path / "train.jsonl"
    path.write_text('{"sentence": "a b", "label": "x"}\n\n' + second + "\n")  # the blank line 2 is no record
    data = DataSpec(format="jsonl", train=str(path), columns={"text": "sentence"})
    with pytest.raises(DataError) as e:
        read_split(data, "train", needs_of("classification"))
    assert str(e.value) == f"{path}:3: {message}"
    streamed = DataSpec(format="jsonl", train=str(path), columns={"text": "sentence"}, streaming=True)
    with pytest.raises(DataError) as e:  # a stream says so when it reaches the record
        list(read_split(streamed, "train", needs_of("classification")))
    assert str(e.value).startswith(f"{path}:3: ")


def test_a_csv_empty_cell_and_a_json_record_lacking_a_field_are_named(tmp_path: Path):
    csv_file = tmp_path / "train.csv"
    csv_file.write_text('sentence,label\na b,x\n"c\nd",y\ne f,\n')  # record 3 starts on line 5
    with pytest.raises(DataError) as e:
        read_split(DataSpec(format="csv", train=str(csv_file)), "train", (("sentence",), ("label",)))
    assert (
        str(e.value)
        == f"{csv_file}:5: 'label' is an empty cell; every train record needs a value for 'label'"
    )
    json_file = tmp_path / "dev.json"
    json_file.write_text('{"data": [{"text": "a", "label": "x"}, {"label": "y"}]}')
    with pytest.raises(DataError) as e:
        read_split(
            DataSpec(format="json", validation=str(json_file)), "validation", needs_of("classification")
        )
    assert (
        str(e.value) == f"{json_file}: record 2: no 'text'; every validation record needs a value for 'text'"
    )


def test_optional_fields_and_test_labels_may_be_null(tmp_path: Path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"s": "a b", "text_pair": "c", "label": null}\n{"s": "d", "text_pair": null}\n')
    data = DataSpec(format="jsonl", test=str(path), columns={"text": "s"})
    ds = read_split(data, "test", needs_of("classification", "test"))
    assert ds.to_list() == [
        {"text": "a b", "text_pair": "c", "label": None},
        {"text": "d", "text_pair": None, "label": None},
    ]
    corpus = tmp_path / "corpus.jsonl"  # a document is its text or its sentences
    corpus.write_text('{"text": "A b. C d."}\n{"sentences": ["E f."]}\n')
    ds = read_split(DataSpec(format="jsonl", train=str(corpus)), "train", needs_of("masked_lm"))
    assert ds.to_list() == [{"text": "A b. C d.", "sentences": None}, {"text": None, "sentences": ["E f."]}]


def test_a_record_of_another_type_names_its_line_and_columns(tmp_path: Path):
    path = tmp_path / "train.jsonl"
    good = '{"sentence": "a b", "label": "x"}\n'
    path.write_text(good * 4 + "\n" + '{"sentence": 5, "label": ["y"]}\n' + good)  # line 6
    with pytest.raises(DataError) as e:
        read_split(DataSpec(format="jsonl", train=str(path)), "train")
    assert str(e.value) == (
        f"{path}:6: column 'sentence' is a number (5), where {path}:1 has a string; "
        f"column 'label' is a list (['y']), where {path}:1 has a string; "
        "every record must have one type per column (Expected bytes, got a 'int' object)"
    )
    listed = tmp_path / "train.json"
    listed.write_text('[{"id": 1}, {"id": 2}, {"id": {"n": 3}}]')
    with pytest.raises(DataError, match=rf"^{re.escape(str(listed))}: record 3: column 'id' is an object"):
        read_split(DataSpec(format="json", train=str(listed)), "train")
    # When the first record is the odd one, the message names it beside the second.
    path.write_text('{"id": {"n": 1}}\n{"id": 2}\n{"id": 3}\n')
    with pytest.raises(DataError) as e:
        read_split(DataSpec(format="jsonl", train=str(path)), "train")
    assert str(e.value).startswith(f"{path}:2: column 'id' is a number (2), where {path}:1 has an object;")
    path.write_text('{"id": [1, 2]}\n{"id": ["a"]}\n')
    with pytest.raises(DataError) as e:
        read_split(DataSpec(format="jsonl", train=str(path)), "train")
    message = str(e.value)
    assert f"column 'id' is a list (['a']), whose parts differ in type from those at {path}:1;" in message


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (
            '{"sentence": 5, "label": "y"}',
            "'sentence' is a number (5); every train record needs a string there",
        ),
        (
            '{"sentence": "c d", "label": ["y"]}',
            "'label' is a list (['y']); every train record needs a string or a number there",
        ),
    ],
)
def test_a_streamed_jsonl_record_of_the_wrong_type_names_its_line(tmp_path: Path, second: str, message: str):
    """A stream is never one Arrow table, so schema_error never saw it: a number for the text trained
    on until the tokenizer failed ("internal error: TypeError", exit 1)."""
    path = tmp_path / "train.jsonl"
    path.write_text('{"sentence": "a b", "label": "x"}\n\n' + second + "\n")
    streamed = DataSpec(format="jsonl", train=str(path), columns={"text": "sentence"}, streaming=True)
    with pytest.raises(DataError) as e:
        list(read_split(streamed, "train", needs_of("classification")))
    assert str(e.value) == f"{path}:3: {message}"


def _hub_folder(tmp_path: Path, records: list[str]) -> Path:
    """A folder `datasets.load_dataset` reads as a hub dataset would be (offline), with a train split."""
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(r + "\n" for r in records))
    return folder


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(
    ("third", "message"),
    [
        (
            '{"sentence": 7, "label": 1}',
            "'sentence' is a number (7); every train record needs a string there",
        ),
        ('{"sentence": "c", "question": 3, "label": 1}', None),  # not a field classification needs
        ('{"sentence": "c", "label": {"y": 1}}', "'label' is an object ({'y': 1}); every train record needs"),
        ('{"sentence": "c", "label": null}', "'label' "),
    ],
)
def test_a_hub_record_of_the_wrong_type_or_null_is_named_by_its_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streaming: bool, third: str, message: str | None
):
    """Hub records (load_dataset, here of a local folder) have no file and line: "record k". A Json
    column held the number, and streams were not checked at all (a null or a number reached training)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    good = '{"sentence": "a b", "label": 0}'
    folder = _hub_folder(tmp_path, [good, good, third, good])
    data = DataSpec(
        format="hf", dataset=str(folder), train="train", columns={"text": "sentence"}, streaming=streaming
    )
    if message is None:
        assert [r["text"] for r in read_split(data, "train", needs_of("classification"))] == [
            "a b",
            "a b",
            "c",
            "a b",
        ]
        return
    with pytest.raises(DataError) as e:  # a stream says so when it reaches the record
        list(read_split(data, "train", needs_of("classification")))
    assert str(e.value).startswith(f"{folder}: record 3: {message}")
    assert "every train record needs" in str(e.value)


# A field a kind reads when present (classification's text_pair), and a list field's elements: a
# number among the tokens, or tag ids for tags, reached the tokenizer or the tagger and failed as an
# internal error (exit 1) instead of naming the record.
_TYPED = [  # kind, a good record, a bad one, what is said of the bad one
    (
        "classification",
        {"text": "a b", "text_pair": "c", "label": "x"},
        {"text": "a b", "text_pair": 5, "label": "x"},
        "'text_pair' is a number (5); every train record needs a string there",
    ),
    (
        "token_classification",
        {"tokens": ["a", "b"], "tags": ["O", "O"]},
        {"tokens": [1, 2], "tags": ["O", "O"]},
        "'tokens' has a number (1) at position 0; every train record needs a list of strings there",
    ),
    (
        "token_classification",
        {"tokens": ["a", "b"], "tags": ["O", "O"]},
        {"tokens": ["a", "b"], "tags": ["O", None]},
        "'tags' has null at position 1; every train record needs a list of strings there",
    ),
    (
        "srl",
        {"tokens": ["a", "b"], "predicate_indices": [1], "srl_tags": [["O", "B-V"]]},
        {"tokens": ["a", "b"], "predicate_indices": ["1"], "srl_tags": [["O", "B-V"]]},
        "'predicate_indices' has a string (1) at position 0; every train record needs a list of numbers there",
    ),
    (
        "srl",
        {"tokens": ["a", "b"], "predicate_indices": [1], "srl_tags": [["O", "B-V"]]},
        {"tokens": ["a", "b"], "predicate_indices": [1], "srl_tags": [[0, 1]]},  # tag ids
        "'srl_tags' has a number (0) at position 0 of its list 0; every train record needs lists of strings there",
    ),
]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(("kind", "good", "bad", "message"), _TYPED)
def test_an_optional_field_or_a_list_element_of_the_wrong_type_names_its_line(
    tmp_path: Path, streaming: bool, kind: str, good: dict, bad: dict, message: str
):
    import json

    from metapt.catalog import optional_fields

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (bad, bad)))  # one Arrow type: no schema error
    data = DataSpec(format="jsonl", train=str(path), streaming=streaming)
    with pytest.raises(DataError) as e:
        list(read_split(data, "train", needs_of(kind), optional_fields(kind, "train")))
    assert str(e.value) == f"{path}:1: {message}"
    path.write_text(json.dumps(good) + "\n")
    assert list(read_split(data, "train", needs_of(kind), optional_fields(kind, "train"))) == [good]


def test_a_test_split_label_of_the_wrong_type_is_named_though_it_may_be_absent(tmp_path: Path):
    from metapt.catalog import optional_fields

    path = tmp_path / "test.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b", "label": {"y": 1}}\n')
    data = DataSpec(format="jsonl", test=str(path))
    with pytest.raises(DataError, match=r":2: 'label' is an object \(\{'y': 1\}\); every test record needs"):
        read_split(
            data, "test", needs_of("classification", "test"), optional_fields("classification", "test")
        )


def test_a_hub_column_of_numbers_where_text_belongs_names_the_first_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """One Arrow type for the whole column (int64): no schema clash, but not text either."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = _hub_folder(tmp_path, ['{"q": 1, "label": 0}', '{"q": 2, "label": 1}'])
    data = DataSpec(format="hf", dataset=str(folder), train="train", columns={"text": "q"})
    with pytest.raises(DataError) as e:
        read_split(data, "train", needs_of("classification"))
    assert str(e.value) == (
        f"{folder}: record 1: 'q' is a number (1); every train record needs a string there ([data.columns].text = 'q')"
    )
