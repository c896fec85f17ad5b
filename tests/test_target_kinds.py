"""The labelled target kinds end to end on hand-written records: encode -> collate -> encoder -> head ->
loss -> backward, then predict -> score -> write_predictions, with hand-computed values."""

from __future__ import annotations

import gzip
import json
import logging

import datasets
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from metapt.catalog import KINDS as CATALOG
from metapt.data.tokenizer import train_wordpiece
from metapt.kinds import (
    classification,
    extractive_qa,
    multiple_choice,
    regression,
    relation_extraction,
    srl,
    token_classification,
)
from metapt.kinds.base import Kind
from metapt.kinds.losses import LOSSES
from metapt.spec import BatchSpec, TaskSpec

PAIRS = [
    {"id": "a", "text": "The cat sat on the mat .", "text_pair": "A cat is sitting .", "label": 1},
    {"id": "b", "text": "Alice Moreau works for Acme Corp .", "text_pair": "Nobody works .", "label": 0},
    {"id": "c", "text": "It rained in Paris all day .", "text_pair": "", "label": 0},
    {"id": "d", "text": "Bob visited Berlin in spring .", "text_pair": "Bob was in Berlin .", "label": 1},
]
NER = [
    {
        "tokens": ["Alice", "Moreau", "works", "for", "Acme", "Corporation", "."],
        "tags": ["B-PER", "I-PER", "O", "O", "B-ORG", "I-ORG", "O"],
    },
    {"tokens": ["Bob", "visited", "Berlin", "yesterday", "."], "tags": ["B-PER", "O", "B-LOC", "O", "O"]},
]
SRL = [
    {
        "id": "s1",
        "tokens": ["Alice", "bought", "a", "house", "and", "sold", "it", "."],
        "predicate_indices": [1, 5],
        "srl_tags": [
            ["B-A0", "B-V", "B-A1", "I-A1", "O", "O", "O", "O"],
            ["B-A0", "O", "O", "O", "O", "B-V", "B-A1", "O"],
        ],
    },
    {
        "id": "s2",
        "tokens": ["The", "cat", "slept", "."],
        "predicate_indices": [2],
        "srl_tags": [["B-A0", "I-A0", "B-V", "O"]],
    },
]
RE = [
    {
        "id": "r1",
        "tokens": ["Alice", "Moreau", "works", "for", "Acme", "Corp", "in", "Paris", "."],
        "entities": [
            {"start": 0, "end": 2, "type": "Person"},
            {"start": 4, "end": 6, "type": "Organization"},
            {"start": 7, "end": 8, "type": "Location"},
        ],
        "relations": [
            {"head": 0, "tail": 1, "type": "Work_For"},
            {"head": 1, "tail": 2, "type": "OrgBased_In"},
        ],
    },
    {
        "id": "r2",
        "tokens": ["Bob", "lives", "in", "Berlin", "."],
        "entities": [{"start": 0, "end": 1, "type": "Person"}, {"start": 3, "end": 4, "type": "Location"}],
        "relations": [{"head": 0, "tail": 1, "type": "Live_In"}],
    },
]
CONTEXT = (
    "The old harbour town grew slowly over many centuries . Fishermen sold their catch at the market "
    "every morning . In the spring of that year the council built a new stone bridge across the river "
    "so that carts could reach the northern fields . Later the bridge was painted green ."
)
QA = [
    {
        "id": "q1",
        "context": CONTEXT,
        "question": "What did the council build ?",
        "answers": {"text": ["a new stone bridge"], "answer_start": [CONTEXT.index("a new stone bridge")]},
    },
    {
        "id": "q2",
        "context": "Fishermen sold their catch at the market .",
        "question": "Who sold the catch ?",
        "answers": {"text": ["Fishermen"], "answer_start": [0]},
    },
]
CHOICE = [
    {
        "id": "m1",
        "context": "The man broke his toe .",
        "question": "What was the cause ?",
        "choices": ["He dropped a hammer on his foot .", "He got a hole in his sock ."],
        "label": 0,
    },
    {
        "id": "m2",
        "context": "The sun was rising .",
        "question": "",
        "choices": ["It got dark .", "It got light .", "The moon sang ."],
        "label": 1,
    },
]
RECORD = [
    {
        "id": "x1",
        "context": "Alice Moreau met Bob in Paris before moving to Berlin .",
        "question": "@placeholder later moved to Berlin .",
        "choices": ["Bob", "Alice Moreau", "Paris"],
        "answers": ["Alice Moreau"],
    },
    {
        "id": "x2",
        "context": "Acme Corp opened an office in Berlin .",
        "question": "The office is in @placeholder .",
        "choices": ["Acme Corp", "Berlin"],
        "answers": ["Berlin"],
    },
]


def _texts() -> list[str]:
    out = [r["text"] + " " + r["text_pair"] for r in PAIRS]
    out += [" ".join(r["tokens"]) for r in NER + SRL + RE]
    out += [r["context"] + " " + r["question"] for r in QA + CHOICE + RECORD]
    out += [" ".join(r["choices"]) for r in CHOICE + RECORD]
    return out + ["@ * # ^ person organization location"]


@pytest.fixture(scope="module")
def tok():
    return train_wordpiece(_texts(), vocab_size=110)


def _spec(kind: str, max_length: int = 64, stride: int = 16, **options) -> TaskSpec:
    return TaskSpec(
        kind=kind, name=f"t_{kind}", batch=BatchSpec(max_length=max_length, stride=stride), options=options
    )


def _train_step(kind: Kind, spec: TaskSpec, tok, records: list[dict]):
    """prepare, encode, collate, encoder -> head -> loss, backward; returns (info, features, batch, logits)."""
    torch.manual_seed(0)
    data = datasets.Dataset.from_list(records)
    info = kind.prepare(spec, data)
    features = kind.encode(data, tok, spec, info)
    batch = kind.collate(list(features), tok, spec, info, torch.Generator().manual_seed(0))
    encoder = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
        add_pooling_layer=False,
    )
    head = kind.head(32, spec, info)
    hidden = encoder(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
    ).last_hidden_state
    logits = head(hidden, batch, encoder.get_input_embeddings().weight)
    loss = LOSSES[CATALOG[spec.kind].losses[0]](logits, batch, 0.0)
    assert torch.isfinite(loss)
    loss.backward()
    for module in (encoder, head):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    return info, features, batch, logits.detach()


def _end_to_end(kind: Kind, spec: TaskSpec, features, records: list[dict], info, predictions, path):
    metrics, per_record = kind.score(predictions, features, datasets.Dataset.from_list(records), spec, info)
    kind.write_predictions(path, per_record, datasets.Dataset.from_list(records), info)
    return metrics, per_record


def _one_hot(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Logits that pick `labels` (ignored positions pick class 0)."""
    return F.one_hot(labels.clamp(min=0), n).float() * 10


# --------------------------------------------------------------------------------- classification
def test_classification_pairs_metrics_and_tsv(tok, tmp_path):
    spec = _spec("classification")
    info, features, batch, logits = _train_step(Kind.of(classification), spec, tok, PAIRS)
    assert info == {"labels": ["0", "1"]}
    assert batch["labels"].tolist() == [1, 0, 0, 1]
    types = features[0]["token_type_ids"]
    assert types[0] == 0 and types[-1] == 1  # a pair: the second segment has type 1
    assert set(features[2]["token_type_ids"]) == {0}  # empty text_pair: a single sequence
    assert len(Kind.of(classification).predict(logits, batch, info)) == 4

    perfect, _ = _end_to_end(
        Kind.of(classification), spec, features, PAIRS, info, [1, 0, 0, 1], tmp_path / "p.tsv"
    )
    assert perfect == pytest.approx({"accuracy": 100.0, "f1": 100.0, "macro_f1": 100.0, "mcc": 100.0})
    # gold 1 0 0 1, predicted 1 0 0 0: accuracy 3/4; F1 of "1" = 2*1/(2*1+0+1); macro = (4/5 + 2/3)/2;
    # MCC = (3*4 - (2*3 + 2*1)) / sqrt((16 - 8) * (16 - 10)) = 4 / sqrt(48)
    wrong, written = _end_to_end(
        Kind.of(classification), spec, features, PAIRS, info, [1, 0, 0, 0], tmp_path / "p.tsv"
    )
    assert wrong == pytest.approx(
        {"accuracy": 75.0, "f1": 200 / 3, "macro_f1": 100 * (0.8 + 2 / 3) / 2, "mcc": 100 * 4 / 48**0.5}
    )
    lines = (tmp_path / "p.tsv").read_text().splitlines()
    assert lines == ["index\tprediction", "a\t1", "b\t0", "c\t0", "d\t0"]
    assert written == ["1", "0", "0", "0"]


def test_classification_names_unlabelled_and_multirc(tok, tmp_path):
    spec = _spec("classification")
    named = [{"text": r["text"], "label": ["yes", "no", "no", "yes"][i]} for i, r in enumerate(PAIRS)]
    info, features, _, _ = _train_step(Kind.of(classification), spec, tok, named)
    assert info == {"labels": ["no", "yes"]}
    assert features["labels"] == [1, 0, 0, 1]
    unlabelled = [{**r, "label": -1} for r in PAIRS]
    feats = classification.encode(datasets.Dataset.from_list(unlabelled), tok, spec, {"labels": ["0", "1"]})
    assert feats["labels"] == [-100] * 4
    metrics, _ = _end_to_end(
        Kind.of(classification),
        spec,
        feats,
        unlabelled,
        {"labels": ["0", "1"]},
        [0, 1, 0, 1],
        tmp_path / "u.tsv",
    )
    assert metrics == {}
    # MultiRC: two questions (groups); group g1 all right, g2 one option wrong
    multirc = [{**r, "group": g} for r, g in zip(PAIRS, ["g1", "g1", "g2", "g2"], strict=True)]
    metrics, _ = _end_to_end(
        Kind.of(classification),
        spec,
        feats,
        multirc,
        {"labels": ["0", "1"]},
        [1, 0, 0, 0],
        tmp_path / "m.tsv",
    )
    assert metrics["f1a"] == pytest.approx(200 / 3)
    assert metrics["exact_match"] == pytest.approx(50.0)


def test_regression(tok, tmp_path):
    spec = _spec("regression")
    records = [
        {"text": r["text"], "text_pair": r["text_pair"], "label": float(i)} for i, r in enumerate(PAIRS)
    ]
    info, features, batch, logits = _train_step(Kind.of(regression), spec, tok, records)
    assert batch["labels"].dtype == torch.float and logits.shape == (4,)
    metrics, _ = _end_to_end(
        Kind.of(regression),
        spec,
        features,
        records,
        info,
        [0.0, 2.0, 4.0, 6.0],
        tmp_path / "r.tsv",
    )
    assert metrics == pytest.approx({"pearson": 100.0, "spearman": 100.0})
    # ranks of (0, 2, 1, 3) against (0, 1, 2, 3): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    metrics, _ = _end_to_end(
        Kind.of(regression),
        spec,
        features,
        records,
        info,
        [0.0, 2.0, 1.0, 3.0],
        tmp_path / "r.tsv",
    )
    assert metrics["spearman"] == pytest.approx(80.0)
    assert (tmp_path / "r.tsv").read_text().splitlines()[:2] == ["index\tprediction", "0\t0.0"]


# --------------------------------------------------------------------------- token classification
def test_token_classification_alignment_and_entity_f1(tok, tmp_path, caplog):
    spec = _spec("token_classification")
    info, features, batch, logits = _train_step(Kind.of(token_classification), spec, tok, NER)
    names = info["labels"]
    assert names == ["B-LOC", "B-ORG", "B-PER", "I-ORG", "I-PER", "O"]
    enc = tok(NER[0]["tokens"], is_split_into_words=True)
    words = enc.word_ids()
    assert len(words) > len(NER[0]["tokens"]) + 2  # some word was split into several sub-words
    expected = [
        -100 if w is None or (k > 0 and words[k - 1] == w) else names.index(NER[0]["tags"][w])
        for k, w in enumerate(words)
    ]
    assert features[0]["labels"] == expected
    assert len(Kind.of(token_classification).predict(logits, batch, info)) == 2

    gold = Kind.of(token_classification).predict(_one_hot(batch["labels"], len(names)), batch, info)
    assert gold == [r["tags"] for r in NER]
    perfect, _ = _end_to_end(
        Kind.of(token_classification), spec, features, NER, info, gold, tmp_path / "t.jsonl"
    )
    assert perfect == pytest.approx({"precision": 100.0, "recall": 100.0, "f1": 100.0})
    # drop the ORG entity and mislabel Berlin: 2 of 3 predicted right, 2 of 4 gold found; F1 = 4/7
    wrong = [["B-PER", "I-PER", "O", "O", "O", "O", "O"], ["B-PER", "O", "B-ORG", "O", "O"]]
    metrics, _ = _end_to_end(
        Kind.of(token_classification), spec, features, NER, info, wrong, tmp_path / "t.jsonl"
    )
    assert metrics == pytest.approx({"precision": 200 / 3, "recall": 50.0, "f1": 400 / 7})
    rows = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert rows[1] == {"id": "1", "tokens": NER[1]["tokens"], "spans": [["PER", 0, 1], ["ORG", 2, 3]]}

    # a short max_length cuts words: counted, logged and predicted as O
    short = _spec("token_classification", max_length=8)
    with caplog.at_level(logging.WARNING, logger="metapt"):
        cut = token_classification.encode(datasets.Dataset.from_list(NER), tok, short, info)
    encodings = [tok(r["tokens"], is_split_into_words=True, truncation=True, max_length=8) for r in NER]
    kept = [len({w for w in e.word_ids() if w is not None}) for e in encodings]
    assert cut["words_cut"] == [len(r["tokens"]) - k for r, k in zip(NER, kept, strict=True)]
    assert "were cut" in caplog.text
    b = token_classification.collate(list(cut), tok, short, info, torch.Generator())
    tags = token_classification.predict(_one_hot(b["labels"], len(names)), b, info)
    assert tags[0] == NER[0]["tags"][: kept[0]] + ["O"] * (7 - kept[0])


# ------------------------------------------------------------------------------------------- SRL
def test_srl_one_instance_per_predicate(tok, tmp_path):
    spec = _spec("srl")
    info, features, batch, logits = _train_step(Kind.of(srl), spec, tok, SRL)
    assert len(features) == 3
    assert features["record_index"] == [0, 0, 1] and features["predicate"] == [1, 5, 2]
    assert batch["predicate_mask"].shape == batch["input_ids"].shape
    for row, record, p in ((0, SRL[0], 1), (1, SRL[0], 5), (2, SRL[1], 2)):
        enc = tok(record["tokens"], [record["tokens"][p]], is_split_into_words=True)
        marked = [
            k
            for k, (w, s) in enumerate(zip(enc.word_ids(), enc.sequence_ids(), strict=True))
            if w == p and s == 0
        ]
        assert [k for k, m in enumerate(features[row]["predicate_mask"]) if m] == marked
        assert features[row]["input_ids"] == enc["input_ids"]  # the predicate word is the second segment
    assert len(Kind.of(srl).predict(logits, batch, info)) == 3

    gold = Kind.of(srl).predict(_one_hot(batch["labels"], len(info["labels"])), batch, info)
    perfect, per_record = _end_to_end(Kind.of(srl), spec, features, SRL, info, gold, tmp_path / "props")
    assert perfect == pytest.approx({"precision": 100.0, "recall": 100.0, "f1": 100.0})
    assert per_record == [SRL[0]["srl_tags"], SRL[1]["srl_tags"]]
    # 5 gold arguments (V excluded); the prediction finds A0 of "bought", A0+A1 of "sold" and a wrong
    # A1 span of "slept": 3 of 4 predicted right, 3 of 5 found
    wrong = [
        ["B-A0", "B-V", "O", "O", "O", "O", "O", "O"],
        SRL[0]["srl_tags"][1],
        ["B-A1", "I-A1", "B-V", "O"],
    ]
    metrics, _ = _end_to_end(Kind.of(srl), spec, features, SRL, info, wrong, tmp_path / "props")
    assert metrics == pytest.approx({"precision": 75.0, "recall": 60.0, "f1": 2 * 75 * 60 / 135})
    blocks = (tmp_path / "props").read_text().split("\n\n")
    first = [line.split("\t") for line in blocks[0].splitlines()]
    assert first[0] == ["-", "(A0*)", "(A0*)"]
    assert first[1] == ["bought", "(V*)", "*"]
    assert first[5] == ["sold", "*", "(V*)"]
    assert [line.split("\t") for line in blocks[1].splitlines()][:2] == [["-", "(A1*"], ["-", "*)"]]


def test_srl_props_name_the_gold_lemma(tmp_path):
    # srl-eval.pl skips a proposition whose verb differs from the gold props' (the lemma "say", not
    # the word "said"), counting its gold arguments as missed; written gold tags must reproduce the
    # gold props file cell for cell.
    from pathlib import Path

    from metapt.data.readers import read_split
    from metapt.spec import DataSpec

    fixtures = Path(__file__).parent / "fixtures" / "data"
    records = read_split(
        DataSpec(format="conll2005", train="conll2005/release/train", base_dir=str(fixtures)), "train"
    )
    srl.write_predictions(tmp_path / "props", records["srl_tags"], records, {})
    gold = gzip.open(fixtures / "conll2005/release/train/props/train.01.props.gz", "rt").read()
    assert [line.split() for line in (tmp_path / "props").read_text().splitlines()] == [
        line.split() for line in gold.splitlines()
    ]


def test_srl_repairs_bio():
    assert srl.predict(
        torch.eye(3)[[2, 1, 0, 1]].unsqueeze(0),
        {"word_index": torch.tensor([[0, 1, 2, 3]]), "num_words": torch.tensor([4])},
        {"labels": ["B-A0", "I-A0", "O"]},
    ) == [["O", "B-A0", "B-A0", "I-A0"]]


# --------------------------------------------------------------------------- relation extraction
def test_relation_extraction_markers_and_triples(tok, tmp_path, caplog):
    spec = _spec("relation_extraction")
    info, features, batch, logits = _train_step(Kind.of(relation_extraction), spec, tok, RE)
    assert info == {"labels": ["no_relation", "Live_In", "OrgBased_In", "Work_For"]}
    assert len(features) == 3 * 2 + 2 * 1  # n * (n - 1) ordered pairs per sentence
    tokens = [tok.convert_ids_to_tokens(ids) for ids in batch["input_ids"].tolist()]
    rows = range(len(tokens))
    assert all(tokens[k][batch["head_positions"][k]] == "@" for k in rows)
    assert all(tokens[k][batch["tail_positions"][k]] == "#" for k in rows)
    words, h, t = relation_extraction.mark(RE[0]["tokens"], RE[0]["entities"][0], RE[0]["entities"][1])
    assert " ".join(words[:16]) == "@ * person * Alice Moreau @ works for # ^ organization ^ Acme Corp #"
    assert (h, t) == (0, 9)
    names = info["labels"]
    assert [names[x] for x in features["label"][:3]] == ["Work_For", "no_relation", "no_relation"]
    assert len(Kind.of(relation_extraction).predict(logits, batch, info)) == 8

    gold = Kind.of(relation_extraction).predict(_one_hot(batch["labels"], len(names)), batch, info)
    perfect, _ = _end_to_end(
        Kind.of(relation_extraction), spec, features, RE, info, gold, tmp_path / "r.jsonl"
    )
    assert perfect == pytest.approx({"precision": 100.0, "recall": 100.0, "f1": 100.0})
    wrong = list(gold)
    wrong[features["label"].index(names.index("OrgBased_In"))] = "no_relation"  # miss one of 3 gold triples
    metrics, _ = _end_to_end(
        Kind.of(relation_extraction), spec, features, RE, info, wrong, tmp_path / "r.jsonl"
    )
    assert metrics == pytest.approx({"precision": 100.0, "recall": 200 / 3, "f1": 80.0})
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert rows[1] == {
        "id": "r2",
        "relations": [{"head": [0, 1, "Person"], "tail": [3, 4, "Location"], "type": "Live_In"}],
    }

    # at 20 tokens the (Acme Corp, Paris) pairs lose their second marker: dropped, counted, and the
    # gold OrgBased_In triple among them is missed by an otherwise perfect prediction
    short_spec = _spec("relation_extraction", max_length=20)
    with caplog.at_level(logging.WARNING, logger="metapt"):
        short = relation_extraction.encode(datasets.Dataset.from_list(RE), tok, short_spec, info)
    assert "2 of 8 entity pairs dropped" in caplog.text
    kept = list(zip(short["record_index"], short["head_entity"], short["tail_entity"], strict=True))
    assert kept == [(0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 2, 0), (1, 0, 1), (1, 1, 0)]
    gold = [names[x] for x in short["label"]]
    metrics, _ = _end_to_end(
        Kind.of(relation_extraction), short_spec, short, RE, info, gold, tmp_path / "r.jsonl"
    )
    assert metrics == pytest.approx({"precision": 100.0, "recall": 200 / 3, "f1": 80.0})


# ---------------------------------------------------------------------------------- extractive QA
def test_extractive_qa_windows_and_squad_scores(tok, tmp_path):
    spec = _spec("extractive_qa", max_length=32, stride=8)
    info, features, batch, logits = _train_step(Kind.of(extractive_qa), spec, tok, QA)
    windows = [k for k, e in enumerate(features["example_index"]) if e == 0]
    assert len(windows) >= 3 and features["example_index"][-1] == 1
    with_answer = [k for k in windows if features[k]["start_positions"] != 0]
    assert with_answer and len(with_answer) < len(windows)
    for k in windows:
        f = features[k]
        if k in with_answer:
            offsets = f["offset_mapping"]
            assert (
                CONTEXT[offsets[f["start_positions"]][0] : offsets[f["end_positions"]][1]]
                == "a new stone bridge"
            )
        else:
            assert (f["start_positions"], f["end_positions"]) == (0, 0)  # the answer is not in this window
    first, second = features[windows[0]]["input_ids"], features[windows[1]]["input_ids"]
    question = len(tok(QA[0]["question"])["input_ids"])  # [CLS] question [SEP]
    assert first[-1 - 8 : -1] == second[question : question + 8]  # consecutive windows share `stride` tokens
    assert len(Kind.of(extractive_qa).predict(logits, batch, info)) == len(features)

    # logits at the gold start/end (the [CLS] of windows without the answer)
    gold = torch.full(logits.shape, -5.0)
    rows = torch.arange(len(features))
    gold[rows, batch["start_positions"], 0] = 5.0
    gold[rows, batch["end_positions"], 1] = 5.0
    predictions = Kind.of(extractive_qa).predict(gold, batch, info)
    perfect, answers = _end_to_end(
        Kind.of(extractive_qa), spec, features, QA, info, predictions, tmp_path / "p.json"
    )
    assert answers == ["a new stone bridge", "Fishermen"]
    assert perfect == pytest.approx({"exact_match": 100.0, "f1": 100.0})
    # q1 answered "stone bridge": no exact match, token F1 = 2 * 1 * (2/3) / (1 + 2/3) = 0.8 (articles dropped)
    offsets = features[with_answer[0]]["offset_mapping"]
    start = next(k for k, o in enumerate(offsets) if o and o[0] == CONTEXT.index("stone"))
    predictions[with_answer[0]]["start"] = [[start, 9.0]]
    metrics, answers = _end_to_end(
        Kind.of(extractive_qa), spec, features, QA, info, predictions, tmp_path / "p.json"
    )
    assert answers[0] == "stone bridge"
    assert metrics == pytest.approx({"exact_match": 50.0, "f1": 90.0})
    assert json.loads((tmp_path / "p.json").read_text()) == {"q1": "stone bridge", "q2": "Fishermen"}


def test_extractive_qa_no_answer(tok, tmp_path):
    spec = _spec("extractive_qa", max_length=32, stride=8, version_2_with_negative=True)
    records = [{**QA[1], "id": "q0", "answers": {"text": [], "answer_start": []}}, QA[1]]
    info, features, batch, logits = _train_step(Kind.of(extractive_qa), spec, tok, records)
    assert features["start_positions"][0] == 0 and features["end_positions"][0] == 0
    gold = torch.zeros(logits.shape)
    gold[torch.arange(2), batch["start_positions"], 0] = 5.0
    gold[torch.arange(2), batch["end_positions"], 1] = 5.0
    metrics, answers = _end_to_end(
        Kind.of(extractive_qa),
        spec,
        features,
        records,
        info,
        extractive_qa.predict(gold, batch, info),
        tmp_path / "p.json",
    )
    assert answers == ["", "Fishermen"] and metrics == pytest.approx({"exact_match": 100.0, "f1": 100.0})


# -------------------------------------------------------------------------------- multiple choice
def test_multiple_choice_padding_and_accuracy(tok, tmp_path):
    spec = _spec("multiple_choice")
    info, features, batch, logits = _train_step(Kind.of(multiple_choice), spec, tok, CHOICE)
    assert batch["input_ids"].shape[0] == 2 * 3 and logits.shape == (2, 3)
    assert batch["choice_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["labels"].tolist() == [0, 1]
    second = tok.decode(features[0]["input_ids"][1])
    assert "what was the cause? he got a hole in his sock." in second
    assert logits[0, 2] == torch.finfo(logits.dtype).min

    perfect, _ = _end_to_end(
        Kind.of(multiple_choice), spec, features, CHOICE, info, [0, 1], tmp_path / "c.jsonl"
    )
    assert perfect == {"accuracy": 100.0}
    wrong, _ = _end_to_end(
        Kind.of(multiple_choice), spec, features, CHOICE, info, [0, 2], tmp_path / "c.jsonl"
    )
    assert wrong == {"accuracy": 50.0}
    rows = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert rows == [{"id": "m1", "prediction": 0}, {"id": "m2", "prediction": 2}]


def test_multiple_choice_record(tok, tmp_path):
    spec = _spec("multiple_choice")
    info, features, batch, logits = _train_step(Kind.of(multiple_choice), spec, tok, RECORD)
    assert batch["labels"].tolist() == [1, 1]
    assert "alice moreau later moved to berlin." in tok.decode(features[0]["input_ids"][1])
    perfect, texts = _end_to_end(
        Kind.of(multiple_choice), spec, features, RECORD, info, [1, 1], tmp_path / "x.jsonl"
    )
    assert texts == ["Alice Moreau", "Berlin"]
    assert perfect == pytest.approx({"accuracy": 100.0, "exact_match": 100.0, "f1": 100.0})
    # x1 answered "Bob": EM 0 and F1 0; x2 right
    wrong, _ = _end_to_end(
        Kind.of(multiple_choice), spec, features, RECORD, info, [0, 1], tmp_path / "x.jsonl"
    )
    assert wrong == pytest.approx({"accuracy": 50.0, "exact_match": 50.0, "f1": 50.0})
    rows = [json.loads(x) for x in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert rows == [{"id": "x1", "prediction": "Bob"}, {"id": "x2", "prediction": "Berlin"}]
