"""`--data FOLDER`: which entries of a folder become a task's train, validation and test splits (the
words Hugging Face datasets reads in split file names, shards read together, duplicates and other
variants refused; SQuAD 2.0 files for the v1.1 task), on tiny fixtures in the real layouts
(tests/fixtures/localdata) and empty files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metapt.cli import app
from metapt.data.pipeline import load_task
from metapt.data.readers import read_split
from metapt.errors import MetaptError
from metapt.finetune import task_spec

FX = Path(__file__).resolve().parent / "fixtures" / "localdata"


def _folder(folder: Path, *names: str) -> Path:
    """A folder of empty files (or, for names ending in /, folders): only the names matter here."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name.endswith("/"):
            (folder / name).mkdir()
        else:
            (folder / name).write_text("")
    return folder


def _splits(task: str, folder: Path) -> tuple[str, str, str]:
    data = task_spec(task, folder, {}).data
    return tuple(Path(p).name if p else "" for p in (data.train, data.validation, data.test))


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (("train.tsv", "dev.tsv"), ("train.tsv", "dev.tsv", "")),
        (
            ("training.jsonl", "validation.jsonl", "testing.jsonl"),
            ("training.jsonl", "validation.jsonl", "testing.jsonl"),
        ),
        (
            ("squad-train-v2.0.json", "squad-dev-v2.0.json"),
            ("squad-train-v2.0.json", "squad-dev-v2.0.json", ""),
        ),
        (
            ("train data.csv", "eval.csv"),
            ("train data.csv", "", "eval.csv"),
        ),  # datasets' separators and words
        (("train.tsv", "dev.tsv", "devil.txt", "contest.txt", "test.py"), ("train.tsv", "dev.tsv", "")),
    ],
)
def test_split_files_are_the_names_with_a_split_word(
    names: tuple[str, ...], expected: tuple[str, str, str], tmp_path: Path
) -> None:
    # The old prefixes lacked training/testing/eval and a space as a separator.
    assert _splits("rte", _folder(tmp_path, *names)) == expected


def test_parquet_shards_of_a_split_are_read_together() -> None:
    # The hub's layout of nyu-mll/glue rte: train in two shards, validation in one.
    data = task_spec("rte", FX / "rte-parquet", {}).data
    assert data.train == str(FX / "rte-parquet" / "train-[0-9][0-9][0-9][0-9][0-9]-of-00002.parquet")
    train = read_split(data, "train")
    assert train["text"] == ["Omega is in Rome.", "The bridge is green.", "Ann wrote a book."]
    assert len(read_split(data, "validation")) == 1


@pytest.mark.parametrize("inside", ["data", "rte"])
def test_a_clone_of_a_hub_repository_is_read_from_its_data_or_subset_folder(
    inside: str, tmp_path: Path
) -> None:
    # `git clone` of a hub dataset keeps the parquet files in data/ (one configuration) or in a
    # folder per subset (nyu-mll/glue: rte/), beside a README.md; the whole clone was the train split
    shutil.copytree(FX / "rte-parquet", tmp_path / "clone" / inside)
    (tmp_path / "clone" / "README.md").write_text("---\ndataset_info: ...\n---\n")
    data = task_spec("rte", tmp_path / "clone", {}).data
    assert read_split(data, "train")["text"] == [
        "Omega is in Rome.",
        "The bridge is green.",
        "Ann wrote a book.",
    ]
    assert len(read_split(data, "validation")) == 1


def test_shards_are_told_from_versions(tmp_path: Path) -> None:
    # nq-dev-00 ... nq-dev-02 are one split; dev-v1.1.json and dev-v2.0.json are two SQuAD versions.
    folder = _folder(tmp_path, "nq-train-00.jsonl", "nq-dev-00.jsonl", "nq-dev-01.jsonl", "nq-dev-02.jsonl")
    data = task_spec("natural_questions", folder, {}).data
    assert data.validation == str(folder / "nq-dev-[0-9][0-9].jsonl")
    squad = _folder(tmp_path / "squad", "train-v1.1.json", "dev-v1.1.json", "dev-v2.0.json")
    with pytest.raises(MetaptError) as e:
        task_spec("squad", squad, {})
    assert str(e.value) == (
        f"--data {squad}: dev-v1.1.json and dev-v2.0.json both name the validation split of task "
        "'squad'; keep one of them in the folder, or write a task spec whose [data].validation names "
        "the file to read"
    )
    # Counters that are not zero-padded are years, not shards: they were globbed as one split.
    years = _folder(tmp_path / "years", "train-2019.jsonl", "dev-2019.jsonl", "dev-2020.jsonl")
    with pytest.raises(MetaptError, match=r"dev-2019\.jsonl and dev-2020\.jsonl both name the validation"):
        task_spec("natural_questions", years, {})


def test_two_files_for_one_split_exit_naming_both(tmp_path: Path) -> None:
    # The old rule globbed their common prefix (here "*": every file of the folder) as one split.
    folder = _folder(tmp_path, "train.tsv", "dev.tsv", "validation.tsv")
    with pytest.raises(MetaptError, match=r"dev\.tsv and validation\.tsv both name the validation split"):
        task_spec("rte", folder, {})


def test_the_specs_split_name_picks_mnli_dev_matched() -> None:
    # tasks/glue/mnli.toml reads validation_matched: GLUE's dev_matched.tsv, not dev_mismatched.tsv
    # too (the old glob dev_m* read both, 5 records); rte's plain "validation" picks neither.
    data = task_spec("mnli", FX / "MNLI", {}).data
    assert (Path(data.train).name, Path(data.validation).name) == ("train.tsv", "dev_matched.tsv")
    dev = read_split(data, "validation")
    assert (dev["text"], dev["label"]) == (["The dog slept.", "She sang."], ["entailment", "contradiction"])
    with pytest.raises(MetaptError, match="dev_matched.tsv and dev_mismatched.tsv both name the validation"):
        task_spec("rte", FX / "MNLI", {})


def test_a_lone_other_variant_is_not_taken(tmp_path: Path) -> None:
    # Only dev_mismatched.tsv for MNLI's validation_matched, only test.brown/ for CoNLL-2005's
    # test.wsj: the old rule took the one entry there without a word.
    mnli = _folder(tmp_path / "MNLI", "train.tsv", "dev_mismatched.tsv")
    with pytest.raises(MetaptError) as e:
        task_spec("mnli", mnli, {})
    assert str(e.value) == (
        f"--data {mnli}: task 'mnli' reads 'validation_matched' as its validation split, but the "
        "folder has only dev_mismatched.tsv for it, another variant; add validation_matched, or "
        "write a task spec whose [data].validation names the file to read"
    )
    release = _folder(tmp_path / "release", "train/", "devel/", "test.brown/")
    with pytest.raises(
        MetaptError, match="reads 'test.wsj' as its test split, but the folder has only test.brown"
    ):
        task_spec("conll2005", release, {})


def test_an_entry_with_other_words_is_still_taken(tmp_path: Path) -> None:
    # conll04's spec names conll04_dev.json; a folder's plain dev.json is no other variant of it.
    folder = _folder(tmp_path, "train.json", "dev.json")
    assert _splits("conll04", folder) == ("train.json", "dev.json", "")


def test_a_copy_of_another_datasets_files_is_named_as_such() -> None:
    # SuperGLUE's RTE (JSON lines: premise, hypothesis) for GLUE's rte (TSV: sentence1, sentence2):
    # the error was "[data.columns].text names column 'sentence1', which is not there".
    folder = FX / "superglue-RTE"
    with pytest.raises(MetaptError) as e:
        task_spec("rte", folder, {})
    assert str(e.value) == (
        f"--data {folder}: task 'rte' reads GLUE's TSV files (train.tsv, dev.tsv, as "
        "download_glue_data.py writes them); the folder has train.jsonl, val.jsonl (JSON lines, with "
        "the columns premise, hypothesis, label, idx) instead. Point --data at such files, or write a "
        "task spec whose [data] names these files, their format and [data.columns]"
    )
    with pytest.raises(MetaptError, match=r"task 'boolq' reads SuperGLUE's JSON lines files .* \(TSV, with"):
        task_spec("boolq", FX.parent / "finetune" / "rte", {})
    assert task_spec("rte", FX / "rte-parquet", {}).data.format == "parquet"  # the hub's own files


def test_glue_in_json_lines_with_the_hubs_columns_is_read(tmp_path: Path) -> None:
    # `datasets.Dataset.to_json` of nyu-mll/glue rte: other files than GLUE's, the same columns.
    for name, rows in (("train.jsonl", 2), ("validation.jsonl", 1)):
        line = '{"sentence1": "A b.", "sentence2": "A.", "label": 0, "idx": 0}\n'
        (tmp_path / name).write_text(line * rows)
    data = task_spec("rte", tmp_path, {}).data
    assert data.format == "jsonl"
    assert [len(read_split(data, s)) for s in ("train", "validation")] == [2, 1]


# ------------------------------------------------------------------ SQuAD 2.0 files for a v1.1 task
@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer, 32-wide BERT with a WordPiece over the SQuAD fixtures' words, as an HF folder."""
    from transformers import BertConfig, BertModel

    from metapt.data.tokenizer import train_wordpiece

    tok = train_wordpiece([f.read_text() for f in (FX / "squad2").iterdir()], vocab_size=150)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    folder = tmp_path_factory.mktemp("encoder")
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_squad_v1_task_on_squad_2_files_exits_2_naming_squad_v2(
    encoder: Path, runner: CliRunner, tmp_path: Path
) -> None:
    # train-v2.0.json's one is_impossible question is its last; it was read as a question with no
    # answer, trained to point at [CLS] and left out of the v1.1 scores, without a word.
    args = ["finetune", "--task", "squad", str(encoder), "--data", str(FX / "squad2")]
    result = runner.invoke(app, [*args, "--output-dir", str(tmp_path / "out"), "--epochs", "1"])
    assert result.exit_code == 2, result.output
    assert " ".join(result.stderr.split()) == (
        f"error: {FX / 'squad2' / 'train-v2.0.json'}: 1 of 4 questions have no answer (SQuAD 2.0's "
        "is_impossible), but task 'squad' reads SQuAD v1.1, where every question has one; use --task "
        "squad_v2 for SQuAD 2.0 files (in a spec of your own: [options].version_2_with_negative = true)"
    )
    assert not (tmp_path / "out" / "results.json").exists()


def test_squad_files_of_their_own_version_are_read() -> None:
    v2 = task_spec("squad_v2", FX / "squad2", {})
    task = load_task(v2, None, ("train", "validation"), encode=False)
    assert [r["id"] for r in task.records["validation"]] == ["d1", "d2"]
    assert task.records["validation"][1]["answers"] == {"text": [], "answer_start": []}
    v1 = task_spec("squad", FX.parent / "finetune" / "squad", {})
    assert len(load_task(v1, None, ("train", "validation"), encode=False).records["train"]) == 6
