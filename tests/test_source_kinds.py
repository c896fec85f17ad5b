"""The source kinds end to end on a tiny corpus: encode -> collate -> encoder -> head -> loss, plus
what each batch claims (masking rates, permutations, sentence distances, the diagonal, answer spans)."""

from __future__ import annotations

import itertools
import logging
import math
import zlib
from types import ModuleType
from typing import Any

import datasets
import pytest
import torch
from transformers import BertConfig, BertModel

from metapt.catalog import KINDS
from metapt.data.tokenizer import train_wordpiece
from metapt.kinds import masked_lm, response_selection, sentence_distance, sentence_reordering, span_selection
from metapt.kinds.base import Kind
from metapt.kinds.common import pad
from metapt.kinds.losses import LOSSES
from metapt.spec import BatchSpec, TaskSpec

SENTENCES = [
    [
        "Alice Walker moved to Paris in 1990.",
        "She wrote novels about Georgia.",
        "Paris welcomed Alice Walker warmly.",
        "Her books sold in many countries.",
        "Critics praised her style.",
    ],
    [
        "The river Thames flows through London.",
        "London bridges cross the Thames at many points.",
        "Boats sail there every morning.",
        "Tourists admire the view.",
    ],
    [
        "Marie Curie studied radium in Warsaw.",
        "Radium glows faintly in the dark.",
        "Curie won two Nobel prizes.",
        "Her daughter also studied chemistry.",
        "Warsaw honours Marie Curie today.",
    ],
    [
        "The Amazon forest covers Brazil.",
        "Brazil protects parts of the Amazon.",
        "Many species live in the canopy.",
        "Rain falls almost daily.",
    ],
    [
        "Kenji Tanaka opened a bakery in Osaka.",
        "The bakery sells melon bread.",
        "Osaka residents queue before dawn.",
        "Tanaka bakes 500 loaves each day.",
    ],
    [
        "Volcanoes shape Iceland.",
        "Iceland has geysers and glaciers.",
        "Reykjavik is the capital.",
        "Fishing supports the economy.",
        "Winters are long and dark.",
    ],
]
RECORDS = [{"id": f"d{i}", "text": " ".join(s), "sentences": s} for i, s in enumerate(SENTENCES)]
DIALOGUES = [
    {"id": "a", "turns": ["Hello there.", "Hi, how are you?", "Fine, thanks. And you?", "Great, thank you."]},
    {
        "id": "b",
        "turns": ["Where is the station?", "Turn left at the bank.", "Is it far?", "Ten minutes walk."],
    },
    {"id": "c", "turns": ["Do you like tea?", "I prefer coffee.", "Why coffee?"]},
]


@pytest.fixture(scope="module")
def tok() -> Any:
    texts = [r["text"] for r in RECORDS] + [t for d in DIALOGUES for t in d["turns"]] + ["[BLANK]"]
    return train_wordpiece(texts, vocab_size=400)


def make_spec(kind: str, max_length: int = 64, **options) -> TaskSpec:
    return TaskSpec(kind=kind, name=kind, batch=BatchSpec(size=4, max_length=max_length), options=options)


def encode(
    module: ModuleType, spec: TaskSpec, tok: Any, records: list[dict]
) -> tuple[datasets.Dataset, dict]:
    info = module.prepare(spec, None)
    if spec.kind == "masked_lm":
        info["vocab_size"] = len(tok)  # what the caller adds; prepare does not see the tokenizer
    return module.encode(datasets.Dataset.from_list(records), tok, spec, info), info


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def content(ids: torch.Tensor, tok: Any) -> list[int]:
    """A single sequence's ids between [CLS] and the last [SEP], padding removed."""
    ids = [i for i in ids.tolist() if i != tok.pad_token_id]
    return ids[1:-1]


CASES = {
    "masked_lm": (masked_lm, RECORDS),
    "sentence_reordering": (sentence_reordering, RECORDS),
    "sentence_distance": (sentence_distance, RECORDS),
    "response_selection": (response_selection, DIALOGUES),
    "span_selection": (span_selection, RECORDS),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_step_backpropagates_into_encoder_and_is_seeded(kind: str, tok: Any) -> None:
    module, records = CASES[kind]
    spec = make_spec(kind)
    features, info = encode(module, spec, tok, records)
    rows = list(features)[:4]
    batch = module.collate(rows, tok, spec, info, gen(3))
    again = module.collate(rows, tok, spec, info, gen(3))
    assert batch.keys() == again.keys() and all(torch.equal(batch[k], again[k]) for k in batch)

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    encoder = BertModel(config, add_pooling_layer=False)
    head = module.head(32, spec, info)
    hidden = encoder(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
    ).last_hidden_state
    logits = head(hidden, batch, encoder.embeddings.word_embeddings.weight)
    loss = LOSSES[KINDS[kind].losses[0]](logits, batch, 0.0)
    assert torch.isfinite(loss)
    loss.backward()
    grad = encoder.encoder.layer[0].attention.self.query.weight.grad
    assert grad is not None and grad.abs().sum() > 0

    predictions = Kind.of(module).predict(logits.detach(), batch, info)
    metrics, per_example = Kind.of(module).score(
        predictions, features.select(range(len(rows))), None, spec, info
    )
    assert set(metrics) == set(KINDS[kind].metrics)
    assert all(0.0 <= v <= 100.0 for k, v in metrics.items() if k != "loss")
    assert len(per_example) == len(rows)


@pytest.mark.parametrize("kind", list(CASES))
def test_streaming_records_encode_alike(kind: str, tok: Any) -> None:
    module, records = CASES[kind]
    spec = make_spec(kind)
    features, info = encode(module, spec, tok, records)
    stream = datasets.IterableDataset.from_generator(lambda: iter(records))  # features unknown up front
    assert list(module.encode(stream, tok, spec, info)) == list(features)


# ------------------------------------------------------------------------------------- masked_lm
def test_masked_lm_blocks_are_the_concatenated_documents(tok: Any) -> None:
    spec = make_spec("masked_lm", max_length=16)
    features, _ = encode(masked_lm, spec, tok, RECORDS)
    docs = tok([r["text"] for r in RECORDS], add_special_tokens=False)["input_ids"]
    stream = [t for i, d in enumerate(docs) for t in ([tok.sep_token_id] if i else []) + d]
    assert len(features) == math.ceil(len(stream) / 14)
    rows = list(features)
    assert all(r["input_ids"][0] == tok.cls_token_id and r["input_ids"][-1] == tok.sep_token_id for r in rows)
    assert [t for r in rows for t in r["input_ids"][1:-1]] == stream
    assert all(len(r["word_starts"]) == len(r["input_ids"]) <= 16 for r in rows)


def test_masked_lm_labels_mark_only_selected_tokens(tok: Any) -> None:
    spec = make_spec("masked_lm")
    features, info = encode(masked_lm, spec, tok, RECORDS)
    rows = list(features)
    batch = masked_lm.collate(rows, tok, spec, info, gen(0))
    original = torch.full_like(batch["input_ids"], tok.pad_token_id)
    for i, r in enumerate(rows):
        original[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
    selected = batch["labels"] != -100
    assert torch.equal(batch["labels"][selected], original[selected])
    assert torch.equal(batch["input_ids"][~selected], original[~selected])  # only selected tokens change
    special = torch.isin(original, torch.tensor(tok.all_special_ids))
    assert not (selected & special).any()
    assert 0.05 < int(selected.sum()) / int((~special).sum()) < 0.25


def test_masked_lm_pinned_selection(tok: Any) -> None:
    # Fixed ids, not tokenised text: the trained WordPiece vocabulary can differ between processes
    # (huggingface/tokenizers#1794), the selection must not.
    spec = make_spec("masked_lm")
    rows = [
        {"input_ids": [tok.cls_token_id, *range(10, 10 + n), tok.sep_token_id], "word_starts": [1] * (n + 2)}
        for n in (40, 25, 60)
    ]
    batch = masked_lm.collate(rows, tok, spec, {"vocab_size": len(tok)}, gen(0))
    selected = batch["labels"] != -100
    assert int(selected.sum()) == 21  # of 125 candidates, for seed 0
    assert not selected[:, 0].any() and not selected[0, 41:].any()  # [CLS], [SEP], padding
    assert torch.equal(selected, masked_lm.collate(rows, tok, spec, {}, gen(0))["labels"] != -100)


class StubTokenizer:
    """What masked LM's collate reads of a tokenizer: special ids 0-4, ordinary ids 5 .. size-1."""

    pad_token_id, unk_token_id, cls_token_id, sep_token_id, mask_token_id = 0, 1, 2, 3, 4
    all_special_ids = [0, 1, 2, 3, 4]

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 3 if pair else 2  # [CLS] a [SEP] b [SEP], as BERT


def test_masked_lm_exact_ids_on_a_small_input() -> None:
    # Seed 32 draws, for the (1, 8) row [CLS] 5 6 7 8 9 10 [SEP]:
    #   pick = .8757 .2721 .4141 .7857 .1130 .5793 .6481 .0229 -> < 0.5 at cols 1, 2, 4 (col 7 is [SEP])
    #   roll = .5874 .3254 .9485 .5219 .8782 .7254 .6929 .0259 -> col 1 < .8: [MASK]; col 2 >= .9:
    #          unchanged; col 4 in [.8, .9): a random token
    #   randint(12) = 8 11 9 11 5 10 3 4 -> col 4 draws 5 (any id of the vocabulary of 12)
    tok = StubTokenizer(12)
    spec = make_spec("masked_lm", mask_probability=0.5)
    rows = [{"input_ids": [2, 5, 6, 7, 8, 9, 10, 3], "word_starts": [1] * 8}]
    batch = masked_lm.collate(rows, tok, spec, {}, gen(32))
    assert batch["input_ids"].tolist() == [[2, 4, 6, 7, 5, 9, 10, 3]]
    assert batch["labels"].tolist() == [[-100, 5, 6, -100, 8, -100, -100, -100]]


def test_masked_lm_80_10_10_within_three_standard_errors() -> None:
    # 200 rows of 80 or 120 ordinary tokens (20,000 candidates; the short rows padded by 40), a
    # vocabulary of 1000 ids (995 ordinary). Expected: 15% selected, s.e. sqrt(.15 * .85 / 20000) =
    # .0025; of the n selected 80% [MASK] (s.e. sqrt(.8 * .2 / n)), 10% a random id of all 1000 (as
    # BERT and Hugging Face draw it), and a random draw equal to the original or to [MASK] (1 in
    # 1000 each) looks unchanged or masked: masked .8 + .1/1000, changed .1 * 998/1000, unchanged
    # .1 + .1/1000.
    tok = StubTokenizer(1000)
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(200):
        words = (5 + torch.randint(995, (80 if i % 2 else 120,), generator=g)).tolist()
        rows.append({"input_ids": [2, *words, 3], "word_starts": [1] * (len(words) + 2)})
    batch = masked_lm.collate(rows, tok, make_spec("masked_lm"), {}, gen(0))
    original = pad([r["input_ids"] for r in rows], 0)
    selected = batch["labels"] != -100
    special = original < 5  # [CLS], [SEP] and the padding
    assert not (selected & special).any() and int((~special).sum()) == 20_000
    n, new = int(selected.sum()), batch["input_ids"]
    assert abs(n / 20_000 - 0.15) < 3 * math.sqrt(0.15 * 0.85 / 20_000)
    masked = selected & (new == 4)
    kept = selected & (new == original)
    swapped = selected & ~masked & ~kept
    for count, p in ((masked, 0.8 + 1e-4), (swapped, 0.1 * 0.998), (kept, 0.1 + 1e-4)):
        assert abs(int(count.sum()) / n - p) < 3 * math.sqrt(p * (1 - p) / n), (int(count.sum()), n, p)
    assert int(new[swapped].max()) < 1000
    assert torch.equal(new[~selected], original[~selected])


def test_masked_lm_whole_words() -> None:
    # A vocabulary of little more than the characters, so most words have several pieces.
    tok = train_wordpiece([s for r in RECORDS for s in r["sentences"]], vocab_size=80)
    spec = make_spec("masked_lm", whole_word_mask=True, mask_probability=0.4)
    features, info = encode(masked_lm, spec, tok, RECORDS)
    rows = list(features)
    batch = masked_lm.collate(rows, tok, spec, info, gen(0))
    selected = (batch["labels"] != -100).tolist()
    multi = 0
    for r, sel in zip(rows, selected, strict=True):
        starts = r["word_starts"] + [1]
        bounds = [i for i, s in enumerate(starts) if s]
        for a, b in itertools.pairwise(bounds):
            assert len(set(sel[a:b])) == 1, (a, b)  # a word is selected whole or not at all
            multi += b - a > 1 and sel[a]
    assert multi > 0  # some selected words really had several pieces


def test_masked_lm_always_selects_one(tok: Any) -> None:
    spec = make_spec("masked_lm", mask_probability=0.01)
    rows = [{"input_ids": [tok.cls_token_id, 7, 8, tok.sep_token_id], "word_starts": [1, 1, 1, 1]}]
    for seed in range(5):
        batch = masked_lm.collate(rows, tok, spec, {"vocab_size": len(tok)}, gen(seed))
        assert int((batch["labels"] != -100).sum()) >= 1


# --------------------------------------------------------------------------- sentence_reordering
def test_reordering_classes() -> None:
    assert sentence_reordering.num_classes(3) == 9 and sentence_reordering.num_classes(4) == 33
    perms = sentence_reordering.permutations(3)
    assert perms[:4] == ((0,), (0, 1), (1, 0), (0, 1, 2)) and len(set(perms)) == 9


def test_reordering_label_decodes_to_the_applied_permutation(tok: Any) -> None:
    spec = make_spec("sentence_reordering", max_length=128)
    features, info = encode(sentence_reordering, spec, tok, RECORDS)
    rows = list(features)
    assert info == {"num_labels": 9} and len(rows) == len(RECORDS)  # each document fits one sequence
    seen = set()
    for seed in range(4):
        batch = sentence_reordering.collate(rows, tok, spec, info, gen(seed))
        for row, ids, label in zip(rows, batch["input_ids"], batch["labels"].tolist(), strict=True):
            perm = sentence_reordering.permutations(3)[label]
            shown, n = content(ids, tok), len(row["sentences"])
            found = False  # some cut into len(perm) segments, shown in `perm` order, gives the input
            for cuts in itertools.combinations(range(1, n), len(perm) - 1):
                bounds = [0, *cuts, n]
                segments = [
                    [t for s in row["sentences"][a:b] for t in s] for a, b in itertools.pairwise(bounds)
                ]
                found |= [t for j in perm for t in segments[j]] == shown
            assert found, (label, perm)
            seen.add(len(perm))
    assert seen == {1, 2, 3}


def test_reordering_exact_segments_and_labels() -> None:
    # ERNIE 2.0 (Sun et al. 2020, sec. 4.2.2): 1..m segments, k = sum of n! classes (9 for m = 3).
    # Four one-token sentences 10 11 12 13; per seed k = 1 + randint(3), the cuts 1 + randperm(3)[:k-1],
    # then the permutation randperm(k).
    sents = [[10], [11], [12], [13]]
    # Seed 0: k = 3, cuts 1 + {0, 2} = {1, 3}: [10] [11 12] [13]; perm (0, 2, 1) -> 10 13 11 12;
    # label 1! + 2! + rank of (0, 2, 1) among the 3! = 3 + 1 = 4.
    assert sentence_reordering.shuffle_segments(sents, 3, gen(0)) == ([10, 13, 11, 12], (0, 2, 1))
    # Seed 3: k = 2, cut 1 + 2 = 3: [10 11 12] [13]; perm (1, 0) -> 13 10 11 12; label 1 + 1 = 2.
    assert sentence_reordering.shuffle_segments(sents, 3, gen(3)) == ([13, 10, 11, 12], (1, 0))
    assert [sentence_reordering._labels(3)[p] for p in ((0, 2, 1), (1, 0))] == [4, 2]
    # As the paper counts classes, an unshuffled document has one label per k (0, 1, 3): seeds 2, 1
    # and 5 show the same input 10 11 12 13 as k = 1, 2 and 3 (docs/task-kinds.md says so).
    same = [sentence_reordering.shuffle_segments(sents, 3, gen(seed)) for seed in (2, 1, 5)]
    assert [ids for ids, _ in same] == [[10, 11, 12, 13]] * 3
    assert [sentence_reordering._labels(3)[p] for _, p in same] == [0, 1, 3]


# ----------------------------------------------------------------------------- sentence_distance
def test_distance_classes_are_what_they_claim(tok: Any) -> None:
    spec = make_spec("sentence_distance", max_length=128)
    features, info = encode(sentence_distance, spec, tok, RECORDS)
    rows = list(features)
    where = {tuple(s): (d, j) for d, r in enumerate(rows) for j, s in enumerate(r["sentences"])}
    for seed in range(5):
        batch = sentence_distance.collate(rows, tok, spec, info, gen(seed))
        labels = batch["labels"].tolist()
        assert sorted(labels) == [0, 0, 1, 1, 2, 2]  # balanced: every document has >= 3 sentences
        for ids, types, label in zip(batch["input_ids"], batch["token_type_ids"], labels, strict=True):
            n = int((ids != tok.pad_token_id).sum())
            ids, types = ids[:n], types[:n]
            a, b = ids[types == 0].tolist()[1:-1], ids[types == 1].tolist()[:-1]
            (da, ja), (db, jb) = where[tuple(a)], where[tuple(b)]
            if label == 0:
                assert da == db and jb == ja + 1
            elif label == 1:
                assert da == db and jb >= ja + 2
            else:
                assert da != db


def test_distance_other_document_is_never_a_piece_of_the_same_document(tok: Any) -> None:
    # 40 copies of a sentence of n tokens and max_length 8: sentence_features keeps pieces of
    # 8 * 8 = 64 tokens, so the one document becomes rows of 64 // n sentences, all with one id.
    sentences = ["Boats sail there every morning."] * 40
    n = len(tok(sentences[0], add_special_tokens=False)["input_ids"])
    spec = make_spec("sentence_distance", max_length=8)
    features, _ = encode(sentence_distance, spec, tok, [{"text": " ".join(sentences)}])
    per_row = 64 // n
    assert [len(s) for s in features["sentences"]] == [per_row] * (40 // per_row) + [40 % per_row] * (
        40 % per_row > 1
    )
    assert len(features) >= 2
    assert features["document"] == [zlib.crc32("\n".join(sentences).encode())] * len(features)
    # Two pieces of document 7 and one of document 8 (token ids stand for sentences).
    a1, a2 = {"sentences": [[10], [11]], "document": 7}, {"sentences": [[20], [21]], "document": 7}
    b = {"sentences": [[30], [31]], "document": 8}
    for seed in range(8):
        # Only b is another document: "other" pairs a sentence of a1 with one of b.
        first, second, label = sentence_distance.pair([a1, a2, b], 0, 2, gen(seed))
        assert label == 2 and first in ([10], [11]) and second in ([30], [31])
        # No other document in the batch: adjacent instead, a1's only adjacent pair (10, 11).
        assert sentence_distance.pair([a1, a2], 0, 2, gen(seed)) == ([10], [11], 0)


# ---------------------------------------------------------------------------- response_selection
def test_response_selection_batch(tok: Any) -> None:
    spec = make_spec("response_selection", max_context_turns=2)
    features, info = encode(response_selection, spec, tok, DIALOGUES)
    assert features["id"] == ["a-1", "a-2", "a-3", "b-1", "b-2", "b-3", "c-1", "c-2"]
    rows = list(features)[:5]
    batch = response_selection.collate(rows, tok, spec, info, gen(0))
    assert batch["input_ids"].shape[0] == 10 and torch.equal(batch["labels"], torch.arange(5))
    turns = DIALOGUES[0]["turns"]
    # a-3: the two turns before turn 3, joined by [SEP]; then its response turn 3 at row 5 + 2.
    assert tok.decode(content(batch["input_ids"][2], tok)) == tok.decode(
        tok(turns[1], turns[2], add_special_tokens=True)["input_ids"][1:-1]
    )
    assert tok.decode(content(batch["input_ids"][7], tok)) == turns[3].lower()
    scores = torch.eye(5)
    scores[1, 3] = 2.0  # context 1 prefers another response
    predictions = response_selection.predict(scores, batch, info)
    # A last evaluation batch of one example has no negatives: collated, but not counted.
    single = response_selection.collate(list(features)[5:6], tok, spec, info, gen(0))
    assert single["input_ids"].shape[0] == 2
    predictions += response_selection.predict(torch.zeros(1, 1), single, info)
    metrics, out = response_selection.score(predictions, features.select(range(6)), None, spec, info)
    assert metrics == {"recall@1": 80.0}
    assert [p["id"] for p in out] == ["a-1", "a-2", "a-3", "b-1", "b-2", "b-3"]


def test_response_selection_a_copy_of_the_true_response_is_no_negative() -> None:
    # Rows 0 and 2 answer with the same turn (ids 7 8): each is the other's true response, so it
    # must not be scored as a negative of the other. same_response marks [0, 2] and [2, 0].
    rows = [
        {"context": [5], "response": [7, 8]},
        {"context": [6], "response": [9]},
        {"context": [10], "response": [7, 8]},
    ]
    spec = make_spec("response_selection")
    batch = response_selection.collate(rows, StubTokenizer(12), spec, {}, gen(0))
    assert batch["same_response"].tolist() == [
        [False, False, True],
        [False, False, False],
        [True, False, False],
    ]
    scores = torch.tensor([[2.0, 0.0, 5.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # Row 0 over columns 0, 1 only: log(e^2 + 1) = 2.126928, nll 0.126928, smoothing's mean NLL
    # (0.126928 + 2.126928) / 2 = 1.126928, so 0.9 * 0.126928 + 0.1 * 1.126928 = 0.226928.
    # Row 1, all three columns: log 3 = 1.098612. Row 2 over columns 1, 2: log 2 = 0.693147.
    loss = LOSSES["contrastive"](scores, batch, 0.1)
    assert loss.item() == pytest.approx((0.226928 + 1.098612 + 0.693147) / 3, abs=1e-6)
    # Without same_response the loss would be log(e^2 + 1 + e^5) - 2 for row 0, and row 0's best
    # column would be its copy, 2: a miss. With it, row 0 picks 0; rows 1 and 2 tie, first allowed.
    predictions = response_selection.predict(scores, batch, {})
    assert [(p["predicted"], p["candidates"]) for p in predictions] == [(0, 2), (0, 3), (1, 2)]
    assert LOSSES["contrastive"](torch.zeros(3, 3), {}, 0.0).item() == pytest.approx(math.log(3))


# -------------------------------------------------------------------------------- span_selection
def test_terms_prefer_names_that_occur_in_the_passage() -> None:
    sentence = "Alice Walker moved to Paris in 1990."
    names, numbers, content = span_selection.terms(sentence)
    assert [sentence[a:b] for a, b in names] == ["Alice", "Alice Walker", "Walker", "Paris"]
    assert [sentence[a:b] for a, b in numbers + content] == ["1990", "moved"]
    passage = "Paris welcomed Alice Walker warmly."
    # Repeated maximal names: "Alice Walker" and "Paris"; crc32("d") % 2 == 0, crc32("a") % 2 == 1.
    assert span_selection.choose_term(sentence, passage, "d") == (0, 12, 15)
    assert span_selection.choose_term(sentence, passage, "a") == (22, 27, 0)
    assert span_selection.choose_term(sentence, "It was 1990 and she moved.", "a") == (31, 35, 7)
    assert span_selection.choose_term(sentence, "She moved away.", "a") == (13, 18, 4)
    assert span_selection.choose_term(sentence, "Nothing in common here.", "a") is None


def test_a_first_word_written_lowercase_elsewhere_is_no_name(tok: Any) -> None:
    docs = [
        ["However, Paris froze in 1990.", "However, nobody in Paris left."],
        ["The ships however sailed on.", "They sailed however slowly."],
    ]
    # Past each sentence's first word: "however" twice lower-case, "Paris" twice capitalised; "They"
    # only opens a sentence
    common = span_selection.lowercase(docs)
    assert {"however", "sailed", "nobody"} <= common and not {"paris", "they"} & common
    sentence = docs[0][0]
    names, numbers, content = span_selection.terms(sentence, common)
    assert [sentence[a:b] for a, b in names] == ["Paris"]
    assert [sentence[a:b] for a, b in numbers + content] == ["1990", "However", "froze"]
    assert [sentence[a:b] for a, b in span_selection.terms(sentence)[0]] == ["However", "Paris"]
    # Each x sentence's nearby passage is the other one, which repeats both "However" and "Paris";
    # crc32("a-0") % 2 == crc32("a-1") % 2 == 0 would pick "However" if it counted as a name.
    records = [{"id": n, "text": " ".join(d), "sentences": d} for n, d in zip("ab", docs, strict=True)]
    features, _ = encode(span_selection, make_spec("span_selection"), tok, records)
    assert {r["id"]: r["answer"] for r in features if r["id"].startswith("a")} == {
        "a-0": "Paris",
        "a-1": "Paris",
    }


def test_span_positions_decode_to_the_blanked_term(tok: Any) -> None:
    spec = make_spec("span_selection")
    features, info = encode(span_selection, spec, tok, RECORDS)
    rows = list(features)
    assert len(rows) >= len(RECORDS)
    for r in rows:
        span = r["input_ids"][r["start_positions"] : r["end_positions"] + 1]
        assert tok.decode(span) == r["answer"].lower()
        query = r["input_ids"][1 : r["input_ids"].index(tok.sep_token_id)]
        assert "[BLANK]" in tok.decode(query)  # one special token, not [ blank ] pieces
        assert r["passage_start"] <= r["start_positions"] <= r["end_positions"]
    first = next(r for r in rows if r["id"] == "d0-0")
    assert first["answer"] == "Paris"  # of "Alice Walker" and "Paris", by crc32("d0-0") % 2 == 1

    batch = span_selection.collate(rows, tok, spec, info, gen(0))
    T = batch["input_ids"].shape[1]
    logits = torch.zeros(len(rows), T, 2)
    logits[torch.arange(len(rows)), batch["start_positions"], 0] = 10.0
    logits[torch.arange(len(rows)), batch["end_positions"], 1] = 10.0
    predictions = span_selection.predict(logits, batch, info)
    metrics, out = span_selection.score(predictions, features, None, spec, info)
    assert metrics == {"f1": 100.0, "exact_match": 100.0}
    assert out[0]["predicted"] == out[0]["answer"]


def test_bm25_scores_are_lucenes_by_hand() -> None:
    from metapt.kinds.bm25 import BM25

    index = BM25(["The cat sat.", "the cat, cat ran far away", "a dog"])
    # "cat": N = 3, df = 2, idf = ln(1 + 1.5 / 2.5); lengths 3, 6, 2 (mean 11/3); k1 = 1.2, b = 0.75
    idf = math.log(1.6)
    norm = [1.2 * (0.25 + 0.75 * n / (11 / 3)) for n in (3, 6, 2)]
    assert index.score(["cat"], 0) == pytest.approx(idf * 1 * 2.2 / (1 + norm[0]))
    assert index.score(["cat"], 1) == pytest.approx(idf * 2 * 2.2 / (2 + norm[1]))
    assert index.score(["cat", "cat"], 0) == pytest.approx(2 * idf * 2.2 / (1 + norm[0]))
    dog = math.log(1 + 2.5 / 1.5) * 2.2 / (1 + norm[2])  # df = 1
    assert index.score(["dog", "cat", "unseen"], 2) == pytest.approx(dog)
    assert index.score(["unseen"], 0) == 0.0
    assert index.postings["cat"] == [0, 1]


BM25_RECORDS = [
    {"id": "q", "sentences": ["Marie Curie studied radium in Warsaw."]},
    {"id": "shares", "sentences": ["Radium research made Marie Curie famous."]},
    {"id": "term-only", "sentences": ["Curie liked long walks."]},
    {"id": "city", "sentences": ["Warsaw is a city with radium studies."]},
]


def test_span_selection_bm25_retrieves_the_passage_from_other_documents(tok: Any) -> None:
    spec = make_spec("span_selection", passage="bm25")
    records = [{**r, "text": " ".join(r["sentences"])} for r in BM25_RECORDS]
    features, _ = encode(span_selection, spec, tok, records)
    rows = {r["id"]: r for r in features}
    # q-0's maximal names are "Marie Curie" and "Warsaw". The query without "Marie Curie" (studied,
    # radium, warsaw) retrieves `shares` (radium); without "Warsaw" (marie, curie, studied, radium)
    # it retrieves `city`, not q's own passage. crc32("q-0") % 2 picks one of the two.
    retrieved = [("Marie Curie", BM25_RECORDS[1]), ("Warsaw", BM25_RECORDS[3])][zlib.crc32(b"q-0") % 2]
    assert (rows["q-0"]["answer"], rows["q-0"]["passage"]) == (retrieved[0], retrieved[1]["sentences"][0])
    # term-only-0's "Curie" is in q's and shares' passages, which share no other word with it (BM25
    # 0 for liked, long, walks): not retrieved, so no example
    assert "term-only-0" not in rows
    for r in rows.values():
        sentence = next(s for x in records for s in x["sentences"] if r["id"] == f"{x['id']}-0")
        assert sentence not in r["passage"]  # never the query's own sentence
        span = r["input_ids"][r["start_positions"] : r["end_positions"] + 1]
        assert tok.decode(span) == r["answer"].lower()
    nearby, _ = encode(span_selection, make_spec("span_selection"), tok, records)
    assert len(nearby) == 0  # one-sentence documents have no nearby sentences
    stream = datasets.IterableDataset.from_generator(lambda: iter(records))  # one map batch, as above
    assert list(span_selection.encode(stream, tok, spec, {})) == list(features)


def test_span_selection_bm25_retrieves_within_a_pool_of_documents(
    tok: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec("span_selection", passage="bm25")
    records = [{**r, "text": " ".join(r["sentences"])} for r in BM25_RECORDS]
    # city-0's "Warsaw" (query: city, radium, studies) is retrieved from q, three documents back
    assert {r["id"]: r["passage"] for r in encode(span_selection, spec, tok, records)[0]}["city-0"] == (
        BM25_RECORDS[0]["sentences"][0]
    )
    monkeypatch.setattr(span_selection, "POOL", 2)  # pools [q, shares] and [term-only, city]
    ids = encode(span_selection, spec, tok, records)[0]["id"]
    assert "city-0" not in ids and "q-0" in ids


def test_span_selection_drops_and_counts_answers_past_max_length(
    tok: Any, caplog: pytest.LogCaptureFixture
) -> None:
    long = "Critics in many countries praised her books and her style and her novels about Georgia."
    record = {"id": "x", "text": "", "sentences": ["Georgia welcomed her.", long]}
    spec = make_spec("span_selection", max_length=16)
    with caplog.at_level(logging.INFO, logger="metapt"):
        features, _ = encode(span_selection, spec, tok, [record])
    # Query 0's term "Georgia" is the passage's last word, cut off; query 1 blanks "Georgia" too and
    # finds it at the start of sentence 0, which fits.
    assert features["id"] == ["x-1"]
    assert "dropped 1 of 2" in caplog.text
