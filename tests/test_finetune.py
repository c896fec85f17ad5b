"""`metapt finetune` and `metapt evaluate` end to end on tiny made-up files in each field's real format
(tests/fixtures/finetune): results.json, predictions re-scored from the written files with the metric
functions, the saved model, --data for shipped specs, multi-seed aggregation, best-epoch choice, and a
pretrained metapt checkpoint as the encoder. A 1-layer, 32-wide BERT keeps the whole module fast."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write
from transformers import BertConfig, BertModel
from typer.testing import CliRunner

from metapt.brackets import brackets_to_bio
from metapt.cli import app
from metapt.data.conll import blocks
from metapt.data.readers import read_split
from metapt.data.tokenizer import train_wordpiece
from metapt.finetune import finetune_one, task_spec
from metapt.metrics import (
    accuracy,
    classification_scores,
    entity_scores,
    regression_scores,
    relation_scores,
    squad_scores,
    srl_scores,
)
from metapt.resolve import parse_run
from metapt.spec import DataSpec

FX = Path(__file__).parent / "fixtures" / "finetune"
RTE_LABELS = ["entailment", "not_entailment"]  # sorted train labels = the classifier's label ids

# kind -> ([data] table body, lr, epochs, extra [batch] lines); absolute paths: specs live anywhere.
KINDS: dict[str, tuple[str, float, int, str]] = {
    "classification": (
        f'format = "tsv"\ntrain = "{FX.as_posix()}/rte/train.tsv"\n'
        f'validation = "{FX.as_posix()}/rte/dev.tsv"\n'
        '[data.columns]\ntext = "sentence1"\ntext_pair = "sentence2"\n',
        1e-3,
        2,
        "",
    ),
    "regression": (
        f'format = "tsv"\ntrain = "{FX.as_posix()}/stsb/train.tsv"\n'
        f'validation = "{FX.as_posix()}/stsb/dev.tsv"\n'
        '[data.columns]\ntext = "sentence1"\ntext_pair = "sentence2"\nlabel = "score"\n',
        1e-3,
        2,
        "",
    ),
    "token_classification": (
        f'format = "jsonl"\ntrain = "{FX.as_posix()}/ner/train.jsonl"\n'
        f'validation = "{FX.as_posix()}/ner/dev.jsonl"\n',
        1e-2,
        2,
        "",
    ),
    "srl": (
        f'format = "conll2012"\ntrain = "{FX.as_posix()}/conll2012/train"\n'
        f'validation = "{FX.as_posix()}/conll2012/development"\n',
        1e-2,
        2,
        "",
    ),
    "relation_extraction": (
        f'format = "spert"\ntrain = "{FX.as_posix()}/spert/train.json"\n'
        f'validation = "{FX.as_posix()}/spert/dev.json"\n',
        1e-2,
        5,  # no_relation dominates: fewer epochs predict no relation at all
        "",
    ),
    "extractive_qa": (
        f'format = "squad"\ntrain = "{FX.as_posix()}/squad/train-v1.1.json"\n'
        f'validation = "{FX.as_posix()}/squad/dev-v1.1.json"\n',
        1e-3,
        2,
        "stride = 16\n",
    ),
    "multiple_choice": (
        f'format = "superglue"\nsubset = "copa"\ntrain = "{FX.as_posix()}/copa/train.jsonl"\n'
        f'validation = "{FX.as_posix()}/copa/val.jsonl"\n',
        1e-3,
        2,
        "",
    ),
}
EXTENSIONS = {
    "classification": "tsv",
    "regression": "tsv",
    "token_classification": "jsonl",
    "srl": "props",
    "relation_extraction": "jsonl",
    "extractive_qa": "json",
    "multiple_choice": "jsonl",
}


def _spec(folder: Path, name: str, kind: str, data: str, lr: float, epochs: int, batch: str = "") -> Path:
    """A tiny task spec: batches of 4 up to 64 tokens, `epochs` at `lr`."""
    text = (
        f'kind = "{kind}"\n[data]\n{data}[batch]\nsize = 4\nmax_length = 64\n{batch}'
        f"[finetune]\nepochs = {epochs}\nlr = {lr}\n"
    )
    return write(folder, f"{name}.toml", text)


def _cli() -> CliRunner:
    return CliRunner(env={"METAPT_DEBUG": "0", "COLUMNS": "400"})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer, 32-wide BERT and a WordPiece over every word of the fixtures, as an HF folder."""
    texts = [re.sub(r"\s+", " ", f.read_text()) for f in sorted(FX.rglob("*")) if f.is_file()]
    tok = train_wordpiece(texts, vocab_size=400)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    folder = tmp_path_factory.mktemp("encoder")
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def finetuned(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """kind -> (spec file, output dir, results, predictions text), each kind finetuned once via the CLI."""
    done: dict[str, tuple[Path, Path, dict, str]] = {}
    root = tmp_path_factory.mktemp("finetuned")

    def get(kind: str) -> tuple[Path, Path, dict, str]:
        if kind not in done:
            data, lr, epochs, batch = KINDS[kind]
            spec = _spec(root, f"tiny_{kind}", kind, data, lr, epochs, batch)
            out = root / kind
            args = ["finetune", "--task", str(spec), str(ckpt), "--output-dir", str(out), "-q"]
            result = _cli().invoke(app, args)
            assert result.exit_code == 0, result.output
            results = json.loads((out / "results.json").read_text())
            done[kind] = (spec, out, results, (out / results["predictions"]["validation"]).read_text())
        return done[kind]

    return get


# ------------------------------------------------------------------------- reading written files
def _tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _bio(spans: list[list], n: int) -> list[str]:
    """BIO tags of n words from [label, start, end_exclusive] spans."""
    tags = ["O"] * n
    for label, start, end in spans:
        tags[start:end] = [f"B-{label}"] + [f"I-{label}"] * (end - start - 1)
    return tags


def _props(path: Path) -> list[list[list[str]]]:
    """Sentences of a props file: per token, its tab-separated cells (no line is a comment here)."""
    sentences, rows = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            rows.append(line.split("\t"))
        elif rows:
            sentences.append(rows)
            rows = []
    return sentences + ([rows] if rows else [])


def _gold_srl(path: Path) -> list[tuple[list[str], list[int], list[list[str]]]]:
    """(verb column: lemma on predicate rows, "-" elsewhere; predicate positions; BIO per predicate)
    per sentence of a *_gold_conll file."""
    out = []
    for rows in blocks(path):
        cells = [c for _, c in rows]
        predicates = [i for i, c in enumerate(cells) if c[6] != "-"]
        columns = [brackets_to_bio([c[k] for c in cells]) for k in range(11, len(cells[0]) - 1)]
        out.append(([c[6] for c in cells], predicates, columns))
    return out


def _triple(x: dict) -> tuple:
    return (tuple(x["head"]), tuple(x["tail"]), x["type"])


def _spert_gold(path: Path) -> list[set[tuple]]:
    gold = []
    for doc in json.loads(path.read_text()):
        spans = [(e["start"], e["end"], e["type"]) for e in doc["entities"]]
        gold.append({(spans[r["head"]], spans[r["tail"]], r["type"]) for r in doc["relations"]})
    return gold


def _classification(path: Path) -> dict[str, float]:
    rows, gold = _tsv(path), _tsv(FX / "rte" / "dev.tsv")
    assert [r["index"] for r in rows] == ["0", "1", "2", "3"]
    preds = [RTE_LABELS.index(r["prediction"]) for r in rows]
    labels = [RTE_LABELS.index(r["label"]) for r in gold]
    return classification_scores(preds, labels, ["accuracy", "f1", "macro_f1", "mcc"])


def _regression(path: Path) -> dict[str, float]:
    rows, gold = _tsv(path), _tsv(FX / "stsb" / "dev.tsv")
    assert [r["index"] for r in rows] == ["0", "1", "2", "3"]
    return regression_scores([float(r["prediction"]) for r in rows], [float(r["score"]) for r in gold])


def _ner(path: Path) -> dict[str, float]:
    rows, gold = _jsonl(path), _jsonl(FX / "ner" / "dev.jsonl")
    assert [r["id"] for r in rows] == ["d1", "d2", "d3", "d4"]
    assert [r["tokens"] for r in rows] == [g["tokens"] for g in gold]
    return entity_scores([_bio(r["spans"], len(r["tokens"])) for r in rows], [g["tags"] for g in gold])


def _srl(path: Path) -> dict[str, float]:
    sentences = _props(path)
    gold = _gold_srl(FX / "conll2012" / "development" / "nw_demo_0002.gold_conll")
    assert len(sentences) == len(gold) == 3
    pred_flat, gold_flat = [], []
    for rows, (verbs, _, columns) in zip(sentences, gold, strict=True):
        assert [r[0] for r in rows] == verbs  # the predicate's lemma on its row (srl-eval.pl), "-" elsewhere
        assert all(len(r) == 1 + len(columns) for r in rows)
        pred_flat += [brackets_to_bio([r[k] for r in rows]) for k in range(1, 1 + len(columns))]
        gold_flat += columns
    return srl_scores(pred_flat, gold_flat)


def _relations(path: Path) -> dict[str, float]:
    rows = _jsonl(path)
    assert [r["id"] for r in rows] == ["11", "12", "13"]  # SpERT's orig_id
    pred = [{_triple(x) for x in r["relations"]} for r in rows]
    return relation_scores(pred, _spert_gold(FX / "spert" / "dev.json"))


def _squad(path: Path) -> dict[str, float]:
    answers = json.loads(path.read_text())
    root = json.loads((FX / "squad" / "dev-v1.1.json").read_text())
    references = {
        q["id"]: [a["text"] for a in q["answers"]]
        for article in root["data"]
        for paragraph in article["paragraphs"]
        for q in paragraph["qas"]
    }
    assert sorted(answers) == sorted(references) == ["v1", "v2", "v3", "v4"]
    assert all(isinstance(a, str) for a in answers.values())
    return squad_scores(answers, references)


def _copa(path: Path) -> dict[str, float]:
    rows, gold = _jsonl(path), _jsonl(FX / "copa" / "val.jsonl")
    assert [r["id"] for r in rows] == ["0", "1", "2", "3"]
    assert {r["prediction"] for r in rows} <= {0, 1}
    return {"accuracy": accuracy([r["prediction"] for r in rows], [g["label"] for g in gold])}


# kind -> the metrics of its written validation predictions against the fixture's gold.
RESCORE = {
    "classification": _classification,
    "regression": _regression,
    "token_classification": _ner,
    "srl": _srl,
    "relation_extraction": _relations,
    "extractive_qa": _squad,
    "multiple_choice": _copa,
}


# ------------------------------------------------------------------------ 1. every kind end to end
METRICS = {
    "classification": ["accuracy", "f1", "macro_f1", "mcc"],
    "regression": ["pearson", "spearman"],
    "token_classification": ["precision", "recall", "f1"],
    "srl": ["precision", "recall", "f1"],
    "relation_extraction": ["precision", "recall", "f1"],
    "extractive_qa": ["exact_match", "f1"],
    "multiple_choice": ["accuracy"],
}
MAIN = {  # the catalog's first metric of each kind
    "classification": "accuracy",
    "regression": "pearson",
    "token_classification": "f1",
    "srl": "f1",
    "relation_extraction": "f1",
    "extractive_qa": "f1",
    "multiple_choice": "accuracy",
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_finetune_writes_results_and_model(kind: str, finetuned: Any, ckpt: Path) -> None:
    spec, out, results, _ = finetuned(kind)
    epochs = KINDS[kind][2]
    assert results["task"] == spec.stem and results["kind"] == kind
    assert (results["seed"], results["epochs"], results["checkpoint"]) == (0, epochs, str(ckpt))
    assert results["main_metric"] == MAIN[kind]
    assert list(results["metrics"]) == ["validation"]  # no test split in these specs
    assert sorted(results["metrics"]["validation"]) == sorted(METRICS[kind])
    assert results["predictions"] == {"validation": f"predictions/validation.{EXTENSIONS[kind]}"}
    assert results["wall_seconds"] > 0
    assert [h["epoch"] for h in results["history"]] == list(range(1, epochs + 1))
    # The reloaded best epoch scores validation exactly as it did during training.
    best = results["history"][results["best_epoch"] - 1]
    assert results["metrics"]["validation"] == pytest.approx({k: best[k] for k in METRICS[kind]})
    files = {p.name for p in (out / "model").iterdir()}
    wanted = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert wanted | {"head.safetensors", "head.json"} <= files
    head = json.loads((out / "model" / "head.json").read_text())
    assert (head["task"], head["kind"], head["spec"]) == (spec.stem, kind, str(spec))
    assert head["info"]["vocab_size"] == len(
        json.loads((ckpt / "tokenizer.json").read_text())["model"]["vocab"]
    )
    if kind == "classification":
        assert head["info"]["labels"] == RTE_LABELS


ROUNDTRIP = list(KINDS)


@pytest.mark.parametrize("kind", ROUNDTRIP)
def test_written_predictions_rescore_to_the_reported_metrics(kind: str, finetuned: Any) -> None:
    _, out, results, _ = finetuned(kind)
    written = RESCORE[kind](out / results["predictions"]["validation"])
    assert written == pytest.approx(results["metrics"]["validation"])


def test_regression_predictions_are_the_glue_submission_tsv(finetuned: Any) -> None:
    _, out, results, _ = finetuned("regression")
    lines = (out / "predictions" / "validation.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 5
    assert [line.split("\t")[0] for line in lines[1:]] == ["0", "1", "2", "3"]
    cells = [line.split("\t")[1] for line in lines[1:]]
    assert cells == [repr(float(c)) for c in cells]  # full precision: rounding would create ties


# ----------------------------------------------------------------------------------- 2. evaluate
@pytest.mark.parametrize("kind", list(KINDS))
def test_evaluate_reproduces_the_validation_numbers(kind: str, finetuned: Any, runner: CliRunner) -> None:
    spec, out, results, predictions = finetuned(kind)
    args = ["evaluate", "--task", str(spec), str(out), "--split", "validation"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "evaluation-validation.json").read_text())
    assert (evaluation["task"], evaluation["split"]) == (spec.stem, "validation")
    assert evaluation["metrics"] == pytest.approx(results["metrics"]["validation"])
    assert evaluation["main_metric"] == results["main_metric"]
    assert evaluation["metapt_version"] == results["metapt_version"] == importlib.metadata.version("metapt")
    path = out / "predictions" / f"validation.{EXTENSIONS[kind]}"
    assert evaluation["predictions"] == str(path)
    assert path.read_text() == predictions


def test_evaluate_bad_split_or_folder_exits_2(finetuned: Any, runner: CliRunner, tmp_path: Path) -> None:
    spec, out, _, _ = finetuned("classification")
    result = runner.invoke(app, ["evaluate", "--task", str(spec), str(out), "--split", "test"])
    assert result.exit_code == 2
    assert "has no test split; allowed: train, validation" in result.stderr
    result = runner.invoke(app, ["evaluate", "--task", str(spec), str(tmp_path)])
    assert result.exit_code == 2
    assert "not a finetuned model (expected head.safetensors and head.json" in result.stderr
    # a --seeds folder holds one model per seed/: the message names one (it said only "not a model")
    shutil.copytree(out / "model", tmp_path / "seeds" / "seed-2" / "model")
    result = runner.invoke(app, ["evaluate", "--task", str(spec), str(tmp_path / "seeds")])
    assert result.exit_code == 2
    assert f"one per seed, e.g. {tmp_path / 'seeds' / 'seed-2'}" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [(b"\x87garbage", "head.json: unreadable ("), (b"[]", "head.json: not the head facts")],
)
def test_evaluate_with_a_corrupt_head_json_exits_2(
    finetuned: Any, runner: CliRunner, tmp_path: Path, text: bytes, message: str
) -> None:
    spec, out, _, _ = finetuned("classification")
    copy = tmp_path / "ft"
    shutil.copytree(out, copy)
    (copy / "model" / "head.json").write_bytes(text)
    result = runner.invoke(app, ["evaluate", "--task", str(spec), str(copy)])
    assert result.exit_code == 2, result.output  # was 1: internal error: UnicodeDecodeError / TypeError
    assert f"{copy / 'model' / message}" in result.stderr


# ------------------------------------------------------------------ 3. --data and input errors
def test_data_points_a_shipped_hub_task_at_local_glue_files(
    ckpt: Path, runner: CliRunner, tmp_path: Path
) -> None:
    spec = task_spec("rte", FX / "rte", {})
    assert (spec.data.format, spec.data.columns) == ("tsv", {"text": "sentence1", "text_pair": "sentence2"})
    out = tmp_path / "out"
    args = ["finetune", "--task", "rte", str(ckpt), "--data", str(FX / "rte"), "--output-dir", str(out)]
    args += ["--epochs", "1", "--batch-size", "4", "--max-length", "64", "--lr", "1e-3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "finetuning rte: 8 training features, 1 epochs of 2 steps" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert (results["task"], results["epochs"], results["best_epoch"]) == ("rte", 1, 1)
    rows = _tsv(out / "predictions" / "validation.tsv")
    assert [r["index"] for r in rows] == ["0", "1", "2", "3"]
    assert {r["prediction"] for r in rows} <= set(RTE_LABELS)


@pytest.mark.parametrize(
    ("task", "folder", "kind", "counts"),
    [
        ("conll2012", "conll2012", "srl", (6, 3)),  # the CoNLL-2012 layout: train/ and development/
        ("squad", "squad", "extractive_qa", (6, 4)),  # train-v1.1.json, dev-v1.1.json
        ("copa", "copa", "multiple_choice", (6, 4)),  # SuperGLUE train.jsonl, val.jsonl
    ],
)
def test_data_reads_a_local_copy_in_the_fields_format(
    task: str, folder: str, kind: str, counts: tuple[int, int], ckpt: Path, tmp_path: Path
) -> None:
    spec = task_spec(task, FX / folder, {"epochs": 1, "size": 4, "max_length": 64, "lr": 1e-3})
    assert (spec.data.format, spec.data.dataset) == (FORMAT[task], "")
    assert tuple(len(read_split(spec.data, s)) for s in ("train", "validation")) == counts
    results = finetune_one(str(ckpt), spec, 0, tmp_path)
    assert (results["task"], results["kind"]) == (task, kind)
    assert sorted(results["metrics"]["validation"]) == sorted(METRICS[kind])
    written = tmp_path / results["predictions"]["validation"]
    if kind == "srl":
        assert len(_props(written)) == counts[1]
    elif kind == "extractive_qa":
        assert sorted(json.loads(written.read_text())) == ["v1", "v2", "v3", "v4"]
    else:
        assert len(written.read_text().splitlines()) == counts[1]


FORMAT = {"conll2012": "conll2012", "squad": "squad", "copa": "superglue"}


def test_a_shorter_max_length_scales_the_stride_with_it(ckpt: Path, tmp_path: Path) -> None:
    # SQuAD's spec (384 tokens, stride 128) on an encoder of 128 positions: the windows keep their
    # overlap ratio, 128 * 128 // 384 = 42, and room for the question (a stride of 128 left none).
    spec = task_spec("squad", FX / "squad", {"epochs": 1, "size": 4, "lr": 1e-3})
    assert (spec.batch.max_length, spec.batch.stride) == (384, 128)
    assert task_spec("squad", None, {"max_length": 96}).batch.stride == 128 * 96 // 384
    assert task_spec("squad", None, {"max_length": 512}).batch.stride == 128  # longer: kept
    results = finetune_one(str(ckpt), spec, 0, tmp_path)
    assert (
        "[batch].max_length = 384 cut to the encoder's 128 positions (stride 128 -> 42)"
        in results["warnings"]
    )


def test_data_reads_local_glue_stsb_files(ckpt: Path, runner: CliRunner, tmp_path: Path) -> None:
    args = [
        "finetune",
        "--task",
        "stsb",
        str(ckpt),
        "--data",
        str(FX / "stsb"),
        "--output-dir",
        str(tmp_path),
    ]
    result = runner.invoke(app, [*args, "--epochs", "1", "--batch-size", "4", "--max-length", "64", "-q"])
    assert result.exit_code == 0, result.output


def test_data_format_comes_from_the_split_files_not_a_licence_beside_them(tmp_path: Path) -> None:
    # GLUE's STS-B folder ships LICENSE.txt and readme.txt next to train.tsv and dev.tsv; the first
    # file with a known extension (LICENSE.txt) used to make the format "text", so the reader found
    # no label column.
    shutil.copytree(FX / "stsb", tmp_path / "STS-B")
    (tmp_path / "STS-B" / "LICENSE.txt").write_text("Licence terms.\n")
    (tmp_path / "STS-B" / "readme.txt").write_text("STS Benchmark.\n")
    spec = task_spec("stsb", tmp_path / "STS-B", {})
    assert spec.data.format == "tsv"
    assert spec.data.train.endswith("train.tsv") and spec.data.validation.endswith("dev.tsv")
    assert (
        len(read_split(spec.data, "train")) == len((FX / "stsb" / "train.tsv").read_text().splitlines()) - 1
    )


def test_data_on_the_conll2005_release_takes_the_specs_test_wsj_not_test_brown_too(tmp_path: Path) -> None:
    # The release folder has test.wsj/ and test.brown/ side by side; both name the test split, and
    # the glob test.* read them as one test set (2842 sentences on the real release), while CoNLL-2005
    # reports WSJ and Brown apart and tasks/conll2005.toml reads test.wsj.
    release = Path(__file__).parent / "fixtures" / "data" / "conll2005" / "release" / "train"
    for split in ("train", "devel", "test.wsj", "test.brown"):
        shutil.copytree(release, tmp_path / split)
    spec = task_spec("conll2005", tmp_path, {})
    assert (spec.data.train, spec.data.validation) == (str(tmp_path / "train"), str(tmp_path / "devel"))
    assert spec.data.test == str(tmp_path / "test.wsj")
    assert len(read_split(spec.data, "test")) == len(read_split(spec.data, "train"))


def test_data_reads_a_local_superglue_wsc_file() -> None:
    spec = task_spec(
        "wsc", Path(__file__).parent / "fixtures" / "data" / "superglue" / "wsc" / "train.jsonl", {}
    )
    assert (spec.data.format, spec.data.subset) == ("superglue", "wsc.fixed")
    assert "text" in read_split(spec.data, "train").column_names


def test_conll2005_pasted_file_keeps_a_hash_token(tmp_path: Path) -> None:
    rows = ["It - (A1*)", "cost cost (V*)", "# - (A2*", "5 - *", "million - *)", ". - *"]
    path = write(tmp_path, "train.txt", "\n".join(rows) + "\n")
    records = read_split(DataSpec(format="conll2005", train=str(path)), "train")
    assert records[0]["tokens"] == ["It", "cost", "#", "5", "million", "."]
    assert records[0]["srl_tags"] == [["B-A1", "B-V", "B-A2", "I-A2", "I-A2", "O"]]


def test_licensed_data_missing_exits_2_saying_where_and_how(
    ckpt: Path, runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METAPT_DATA", str(tmp_path / "data"))
    result = runner.invoke(app, ["finetune", "--task", "conll2012", str(ckpt), "--output-dir", str(tmp_path)])
    assert result.exit_code == 2
    message = result.stderr
    assert f"nothing at {tmp_path / 'data/conll2012/conll-formatted-ontonotes-5.0/data/train'}" in message
    assert "licensed by the LDC (LDC2013T19)" in message and "--data PATH" in message
    assert "Traceback" not in result.output


def test_hub_task_offline_exits_2_pointing_at_data(ckpt: Path, runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["finetune", "--task", "squad", str(ckpt), "--output-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "rajpurkar/squad: split 'train' could not be loaded from the hub" in result.stderr
    assert "--data PATH" in result.stderr


def test_unknown_task_exits_2_with_did_you_mean(ckpt: Path, runner: CliRunner) -> None:
    result = runner.invoke(app, ["finetune", "--task", "rtee", str(ckpt)])
    assert result.exit_code == 2
    assert "unknown task 'rtee' (did you mean 'rte'?)" in result.stderr


def test_checkpoint_that_is_not_an_encoder_exits_2(ckpt: Path, runner: CliRunner, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "tiny", "classification", *KINDS["classification"][:3])
    missing = tmp_path / "no-such-checkpoint"
    result = runner.invoke(app, ["finetune", "--task", str(spec), str(missing)])
    assert result.exit_code == 2
    assert f"cannot load a tokenizer from '{missing}'" in result.stderr
    result = runner.invoke(app, ["finetune", "--task", str(spec), str(FX)])
    assert result.exit_code == 2
    assert f"{FX}: not an encoder folder (no config.json)" in result.stderr
    weightless = tmp_path / "weightless"  # config and tokenizer, but no weights
    shutil.copytree(ckpt, weightless, ignore=shutil.ignore_patterns("*.safetensors"))
    result = runner.invoke(app, ["finetune", "--task", str(spec), str(weightless)])
    assert result.exit_code == 2
    assert f"cannot load an encoder from '{weightless}'" in result.stderr
    assert not (weightless / "finetune").exists()


# ---------------------------------------------------------------------------------- 4. seeds
def test_seeds_write_one_run_each_and_their_mean_and_std(
    ckpt: Path, runner: CliRunner, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, "sts", "regression", *KINDS["regression"][:3])
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["finetune", "--task", str(spec), str(ckpt), "--seeds", "1,2", "--output-dir", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    runs = [json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (1, 2)]
    assert [r["seed"] for r in runs] == [1, 2]
    assert (out / "seed-1" / "predictions" / "validation.tsv").is_file()
    summary = json.loads((out / "results.json").read_text())
    assert (summary["task"], summary["seeds"], summary["main_metric"]) == ("sts", [1, 2], "pearson")
    assert summary["runs"] == [str(out / "seed-1"), str(out / "seed-2")]
    assert list(summary["metrics"]) == ["validation"]
    for metric in ("pearson", "spearman"):
        a, b = (r["metrics"]["validation"][metric] for r in runs)
        got = summary["metrics"]["validation"][metric]
        assert got["values"] == [a, b]
        assert got["mean"] == pytest.approx((a + b) / 2)
        assert got["std"] == pytest.approx(abs(a - b) / math.sqrt(2))  # sample std of two values
    assert runs[0]["metrics"] != runs[1]["metrics"]  # the seeds really differ


def test_the_seed_summary_is_computed_by_the_library(tmp_path: Path) -> None:
    """`metapt finetune --seeds` only prints it: finetune.summarise_seeds computes and writes it."""
    from metapt.finetune import seed_folder, summarise_seeds
    from metapt.spec import TaskSpec

    runs = [
        {
            "main_metric": "accuracy",
            "metrics": {"validation": {"accuracy": 50.0}, "test": {"accuracy": 40.0}},
        },
        {"main_metric": "accuracy", "metrics": {"validation": {"accuracy": 70.0}}},
    ]
    summary = summarise_seeds(TaskSpec(kind="classification", name="t"), [3, 4], runs, tmp_path)
    assert summary == json.loads((tmp_path / "results.json").read_text())
    assert summary["runs"] == [str(tmp_path / "seed-3"), str(tmp_path / "seed-4")]
    assert summary["metrics"]["validation"]["accuracy"] == {
        "mean": 60.0,
        "std": pytest.approx(math.sqrt(200)),
        "values": [50.0, 70.0],
    }
    # one seed scored test: its std does not exist (null; it was 0.0, a claimed spread of none)
    assert summary["metrics"]["test"]["accuracy"] == {"mean": 40.0, "std": None, "values": [40.0]}
    assert (
        seed_folder(tmp_path, 3, [3]) == tmp_path and seed_folder(tmp_path, 3, [3, 4]) == tmp_path / "seed-3"
    )


@pytest.mark.parametrize("seeds", ["1,x", "1,1", "-1"])
def test_bad_seeds_exit_2(seeds: str, ckpt: Path, runner: CliRunner, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "sts", "regression", *KINDS["regression"][:3])
    result = runner.invoke(
        app,
        ["finetune", "--task", str(spec), str(ckpt), f"--seeds={seeds}", "--output-dir", str(tmp_path / "o")],
    )
    assert result.exit_code == 2
    assert f"--seeds {seeds!r}: expected" in result.stderr
    assert not (tmp_path / "o").exists()


def test_same_seed_same_results_with_a_cold_or_warm_feature_cache(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METAPT_CACHE", str(tmp_path / "cache"))  # cold: this spec is encoded afresh
    spec = task_spec(str(_spec(tmp_path, "sts", "regression", *KINDS["regression"][:3])), None, {})
    cold = finetune_one(str(ckpt), spec, 3, tmp_path / "cold")
    warm = finetune_one(str(ckpt), spec, 3, tmp_path / "warm")
    assert cold["history"] == warm["history"]
    cold_tsv = (tmp_path / "cold" / "predictions" / "validation.tsv").read_text()
    assert cold_tsv == (tmp_path / "warm" / "predictions" / "validation.tsv").read_text()


# ------------------------------------------------------------- 5. best epoch and unlabelled test
def test_best_epoch_is_the_argmax_of_the_validation_main_metric(ckpt: Path, tmp_path: Path) -> None:
    data = KINDS["regression"][0] + '[options]\nmain_metric = "spearman"\n'
    spec = task_spec(str(_spec(tmp_path, "sts", "regression", data, 1e-2, 4)), None, {})
    results = finetune_one(str(ckpt), spec, 0, tmp_path / "out")
    history = results["history"]
    assert results["main_metric"] == "spearman"
    assert all(set(h) == {"epoch", "pearson", "spearman"} for h in history)  # validation only
    scores = [h["spearman"] for h in history]
    assert results["best_epoch"] == scores.index(max(scores)) + 1  # the first best on ties
    best = history[results["best_epoch"] - 1]
    assert results["metrics"]["validation"] == pytest.approx(
        {"pearson": best["pearson"], "spearman": best["spearman"]}
    )


def test_unlabelled_test_split_gets_predictions_but_no_metrics(
    ckpt: Path, runner: CliRunner, tmp_path: Path
) -> None:
    rows = _tsv(FX / "rte-test" / "test.tsv")  # the hub's GLUE test split labels every record -1
    lines = ["index\tsentence1\tsentence2\tlabel"] + [
        f"{r['index']}\t{r['sentence1']}\t{r['sentence2']}\t-1" for r in rows
    ]
    test = write(tmp_path, "test.tsv", "\n".join(lines) + "\n")
    data = KINDS["classification"][0].replace("[data.columns]", f'test = "{test.as_posix()}"\n[data.columns]')
    spec_path = _spec(tmp_path, "rte_tiny", "classification", data, 1e-3, 1)
    results = finetune_one(str(ckpt), task_spec(str(spec_path), None, {}), 0, tmp_path / "out")
    assert list(results["metrics"]) == ["validation"]
    assert results["predictions"] == {
        "validation": "predictions/validation.tsv",
        "test": "predictions/test.tsv",
    }
    written = _tsv(tmp_path / "out" / "predictions" / "test.tsv")
    assert [r["index"] for r in written] == ["0", "1", "2"]
    assert {r["prediction"] for r in written} <= set(RTE_LABELS)
    result = runner.invoke(
        app, ["evaluate", "--task", str(spec_path), str(tmp_path / "out"), "--split", "test"]
    )
    assert result.exit_code == 0, result.output
    assert "test: no labels: predictions only" in result.stdout
    assert json.loads((tmp_path / "out" / "evaluation-test.json").read_text())["metrics"] == {}


def test_glue_test_file_without_a_label_column_is_unlabelled(ckpt: Path, tmp_path: Path) -> None:
    folder = tmp_path / "RTE"  # the GLUE release layout: train.tsv, dev.tsv, test.tsv
    shutil.copytree(FX / "rte", folder)
    shutil.copy(FX / "rte-test" / "test.tsv", folder / "test.tsv")
    spec = task_spec("rte", folder, {"epochs": 1, "size": 4, "max_length": 64})
    results = finetune_one(str(ckpt), spec, 0, tmp_path / "out")
    assert "test" not in results["metrics"] and "test" in results["predictions"]


# ----------------------------------------------------------- 6. a pretrained metapt checkpoint
def test_finetune_from_a_pretrained_metapt_checkpoint(tmp_path: Path) -> None:
    from metapt.engine import pretrain

    write(
        tmp_path,
        "mlm.toml",
        'kind = "masked_lm"\n[data]\nformat = "synthetic"\ncorpus = "documents"\nsize = 40\n'
        "[batch]\nsize = 4\nmax_length = 32\n",
    )
    run = write(
        tmp_path,
        "run.toml",
        f'[run]\noutput_dir = "{(tmp_path / "pre").as_posix()}"\nepisodes = 1\n'
        "[model]\nhidden_size = 32\nnum_layers = 1\nnum_heads = 2\nintermediate_size = 64\nmax_length = 64\n"
        '[tokenizer]\nvocab_size = 300\n[meta]\nsources = ["mlm.toml"]\ntrain_batches = 1\nsupport_batches = 1\n',
    )
    pretrain(parse_run(run))
    current = (tmp_path / "pre" / "current").resolve()
    spec = task_spec(
        str(_spec(tmp_path, "rte_tiny", "classification", *KINDS["classification"][:3])), None, {}
    )
    results = finetune_one(str(tmp_path / "pre"), spec, 0, tmp_path / "out")
    assert results["checkpoint"] == str(current)
    assert sorted(results["metrics"]["validation"]) == sorted(METRICS["classification"])
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["max_position_embeddings"]) == (
        32,
        1,
        64,
    )
    vocab = json.loads((current / "tokenizer.json").read_text())["model"]["vocab"]
    assert json.loads((tmp_path / "out" / "model" / "head.json").read_text())["info"]["vocab_size"] == len(
        vocab
    )
