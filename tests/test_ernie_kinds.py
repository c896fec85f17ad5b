"""ERNIE 2.0's word-, structure- and semantic-aware sources and ELECTRA's replaced token detection:
labels computed by hand on a few sentences (entity and phrase spans, capitalised words, recurring
words, strong / weak / no relevance, replaced tokens), a few training steps that lower each loss on a
tiny encoder, the WikiText reader and the synthetic articles, and a 2-episode agnostic run over all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from conftest import write
from transformers import BertConfig, BertModel

from metapt import engine
from metapt.catalog import KINDS, masking_of
from metapt.data.readers import read_split
from metapt.data.synthetic import generate
from metapt.data.tokenizer import train_wordpiece
from metapt.errors import DataError, SpecError
from metapt.kinds import (
    IMPLEMENTATIONS,
    capitalization_prediction,
    ir_relevance,
    knowledge,
    masked_lm,
    replaced_token_detection,
    token_document_relation,
)
from metapt.kinds.losses import LOSSES
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.spec import BatchSpec, DataSpec, TaskSpec
from metapt.validation import parse_task

FIXTURES = Path(__file__).parent / "fixtures"
DOCS = [
    {
        "id": "a",
        "title": "Alice Walker",
        "sentences": [
            "Alice Walker moved to Paris in 1990.",
            "She wrote novels about Georgia.",
            "Paris welcomed Alice Walker warmly.",
            "Critics praised her style.",
        ],
    },
    {
        "id": "b",
        "title": "Thames",
        "sentences": [
            "The river Thames flows through London.",
            "London bridges cross the Thames.",
            "Boats sail there every morning.",
        ],
    },
    {
        "id": "c",
        "title": None,  # no title: the first sentence is the query
        "sentences": [
            "Marie Curie studied radium in Warsaw.",
            "Radium glows faintly.",
            "Curie won two Nobel prizes.",
            "Warsaw honours Marie Curie today.",
            "Her daughter studied chemistry.",
        ],
    },
]
RECORDS = [{**d, "text": " ".join(d["sentences"])} for d in DOCS]


@pytest.fixture(scope="module")
def tok() -> Any:
    return train_wordpiece([r["text"] for r in RECORDS], vocab_size=400)


def spec_of(kind: str, max_length: int = 64, **options: Any) -> TaskSpec:
    return TaskSpec(kind=kind, name=kind, batch=BatchSpec(size=4, max_length=max_length), options=options)


def encode(spec: TaskSpec, tok: Any, records: list[dict]) -> tuple[list[dict], dict]:
    kind = IMPLEMENTATIONS[spec.kind]
    info = {**kind.prepare(spec, None), "vocab_size": len(tok)}
    return list(kind.encode(datasets.Dataset.from_list(records), tok, spec, info)), info


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tagged(tok: Any, row: dict) -> list[tuple[str, int]]:
    """(token, label) at a row's labelled tokens."""
    return [(tok.convert_ids_to_tokens(i), y) for i, y in zip(row["input_ids"], row["labels"]) if y != -100]


# A hand-written WordPiece vocabulary: "Walker" is two pieces, wal ##ker, so a word or an entity
# has several sub-words; ids 0-4 are the special tokens.
PIECES = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "alice", "wal", "##ker", "moved", "to", "paris", "."]
ALICE = "Alice Walker moved to Paris."  # -> [CLS] alice wal ##ker moved to paris . [SEP] = 2 5 6 ... 11 3


def pieces_tokenizer() -> Any:
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab={w: i for i, w in enumerate(PIECES)}, do_lower_case=True)


# ----------------------------------------------------------------------------- knowledge masking
def test_entity_and_phrase_rules_on_raw_text() -> None:
    texts = [r["text"] for r in RECORDS]
    found = [[t[a:b] for a, b in knowledge.entity_spans(t)] for t in texts]
    # "Critics", "Boats", "Radium" open a sentence and are capitalised nowhere else: no entities.
    # "London", "Curie", "Warsaw" also open sentences, but occur capitalised inside one.
    assert found == [
        ["Alice Walker", "Paris", "Georgia", "Paris", "Alice Walker"],
        ["Thames", "London", "London", "Thames"],
        ["Marie Curie", "Warsaw", "Curie", "Nobel", "Warsaw", "Marie Curie"],
    ]
    phrases = [[t[a:b] for a, b in knowledge.phrase_spans(t)] for t in texts]
    # Runs of 2+ content words, not mixing capitalised and lower-case words ("Alice Walker" | "moved").
    assert phrases == [
        ["Alice Walker", "wrote novels", "Alice Walker"],
        ["bridges cross", "every morning"],  # "river" | "Thames" | "flows": the case changes
        ["Marie Curie", "studied radium", "glows faintly", "Marie Curie", "daughter studied chemistry"],
    ]


def test_masking_alias_and_conflict(tmp_path: Path) -> None:
    assert masking_of({}) == "token" and masking_of({"whole_word_mask": True}) == "whole_word"
    assert masking_of({"masking": "entity", "whole_word_mask": True}) == "entity"
    ok = write(
        tmp_path,
        "ok.toml",
        'kind = "masked_lm"\n[data]\nformat = "synthetic"\ncorpus = "articles"\n'
        '[options]\nmasking = "entity"\nwhole_word_mask = true\n',
    )
    assert parse_task(ok).option("masking") == "entity"
    bad = write(
        tmp_path,
        "bad.toml",
        'kind = "masked_lm"\n[data]\nformat = "synthetic"\ncorpus = "articles"\n'
        '[options]\nmasking = "token"\nwhole_word_mask = true\n',
    )
    with pytest.raises(SpecError) as info:
        parse_task(bad)
    (problem,) = info.value.problems
    assert problem.key == "[options].whole_word_mask"
    assert (
        "true contradicts masking = 'token'" in problem.message and "give `masking` alone" in problem.message
    )


def _units(tok: Any, row: dict) -> list[str]:
    """A block's masking units as text: tokens joined from each unit start to the next."""
    units: list[list[str]] = []
    for i, start in zip(row["input_ids"][1:-1], row["word_starts"][1:-1]):
        piece = tok.convert_ids_to_tokens(i)
        if start:
            units.append([piece])
        else:
            units[-1].append(piece)
    return [" ".join(u) for u in units]


def test_entity_masking_units_from_the_rule_and_from_the_records(tok: Any) -> None:
    record = {"id": "a", "text": RECORDS[0]["text"]}
    (row,), _ = encode(spec_of("masked_lm", masking="entity"), tok, [record])
    assert _units(tok, row)[:8] == ["alice walker", "moved", "to", "paris", "in", "1990", ".", "she"]
    # A span field wins over the rule: here only "Walker" (characters 6-12) is an entity.
    (row,), _ = encode(spec_of("masked_lm", masking="entity"), tok, [{**record, "entity_spans": [[6, 12]]}])
    assert _units(tok, row)[:3] == ["alice", "walker", "moved"]
    (row,), _ = encode(spec_of("masked_lm", masking="phrase"), tok, [record])
    assert _units(tok, row)[7:11] == ["she", "wrote novels", "about", "georgia"]
    with pytest.raises(DataError, match=r"record 'a': entity_spans item \[6, 999\] is not \[start, end\]"):
        encode(spec_of("masked_lm", masking="entity"), tok, [{**record, "entity_spans": [[6, 999]]}])


def test_an_entity_is_masked_whole(tok: Any) -> None:
    spec = spec_of("masked_lm", masking="entity", mask_probability=0.5)
    rows, info = encode(spec, tok, RECORDS)
    walker = tok.convert_tokens_to_ids("walker")
    covered = 0
    for seed in range(6):
        batch = masked_lm.collate(rows, tok, spec, info, gen(seed))
        selected = batch["labels"] != -100
        for i, row in enumerate(rows):
            for t, token in enumerate(row["input_ids"]):
                if token == walker:  # "walker" is always the second token of the entity "alice walker"
                    assert selected[i, t] == selected[i, t - 1]
                    covered += int(selected[i, t])
    assert covered > 0


def test_entity_masking_takes_every_piece_of_an_entity_or_none() -> None:
    # ERNIE 1.0 (Sun et al. 2019, sec. 3.2.3): an entity is one masking unit. "Alice Walker" is
    # cols 1-3 (alice wal ##ker); the other units are moved, to, paris, . (cols 4-7).
    tok = pieces_tokenizer()
    by = {}
    for masking in ("entity", "whole_word", "token"):
        spec = spec_of("masked_lm", masking=masking, mask_probability=0.5)
        (row,), info = encode(spec, tok, [{"text": ALICE}])
        assert row["input_ids"] == [2, 5, 6, 7, 8, 9, 10, 11, 3]
        by[masking] = row, spec, info
    assert by["entity"][0]["word_starts"] == [
        1,
        1,
        0,
        0,
        1,
        1,
        1,
        1,
        1,
    ]  # a unit starts at 1 (entity), 4, 5, ...
    assert by["whole_word"][0]["word_starts"] == [1, 1, 1, 0, 1, 1, 1, 1, 1]  # ##ker continues walker

    def labels(masking: str, seed: int) -> list[int]:
        row, spec, info = by[masking]
        return masked_lm.collate([row], tok, spec, info, gen(seed))["labels"][0].tolist()

    # Seed 0 picks (< 0.5 at a unit start): .4963 .7682 .0885 .1320 .3074 .6341 .4901 .8964 .4556.
    # Entity: col 1 (.7682) is not picked, so none of alice wal ##ker, whatever cols 2-3 drew; col 4
    # moved and col 6 paris are. Whole words: col 2 starts "walker" (.0885): wal ##ker together.
    assert labels("entity", 0) == [-100, -100, -100, -100, 8, -100, 10, -100, -100]
    assert labels("whole_word", 0) == [-100, -100, 6, 7, 8, -100, 10, -100, -100]
    # Seed 1 picks: .7576 .2793 .4031 .7347 .0293 .7999 .3971 .7544 .5695. Entity: col 1 (.2793)
    # takes all three pieces, though ##ker drew .7347; single tokens leave ##ker out.
    assert labels("entity", 1) == [-100, 5, 6, 7, 8, -100, 10, -100, -100]
    assert labels("token", 1) == [-100, 5, 6, -100, 8, -100, 10, -100, -100]


def test_capitalization_label_sits_on_the_first_piece() -> None:
    # ERNIE 2.0 (Sun et al. 2020, sec. 4.2.1) predicts per word whether it is capitalised; the paper
    # says nothing of sub-words. metapt labels a word's first piece and leaves the rest unlabelled:
    # Alice -> alice 1; Walker -> wal 1, ##ker -100; moved 0; to 0; Paris -> paris 1; "." -100.
    tok = pieces_tokenizer()
    (row,), _ = encode(spec_of("capitalization_prediction"), tok, [{"text": ALICE}])
    assert row["input_ids"] == [2, 5, 6, 7, 8, 9, 10, 11, 3]
    assert row["labels"] == [-100, 1, 1, -100, 0, 0, 1, -100, -100]


# --------------------------------------------------------------------- capitalization prediction
def test_capitalization_labels_from_raw_text_on_lowercased_input() -> None:
    # A cased vocabulary that knows the lowercased words, so each word is one token here.
    texts = [r["text"] for r in RECORDS]
    cased = train_wordpiece(texts + [t.lower() for t in texts], vocab_size=400, lowercase=False)
    rows, _ = encode(spec_of("capitalization_prediction"), cased, RECORDS[:1])
    assert len(rows) == 1  # the document's four sentences fit one sequence
    assert tagged(cased, rows[0])[:9] == [
        ("alice", 1),
        ("walker", 1),
        ("moved", 0),
        ("to", 0),
        ("paris", 1),
        ("in", 0),  # not 1990, "."
        ("she", 1),
        ("wrote", 0),
        ("novels", 0),
    ]
    assert cased.decode(rows[0]["input_ids"][1:-1]) == RECORDS[0]["text"].lower()
    # "2nd" has cased letters but is not capitalised; "," and "." have none.
    assert capitalization_prediction.capitalised("NASA's 2nd probe, iPhone.") == [1, 0, 0, -100, 0, -100]


# ---------------------------------------------------------------------- token-document relation
def test_token_document_relation_labels(tok: Any) -> None:
    rows, _ = encode(spec_of("token_document_relation"), tok, RECORDS[:1])
    assert [tagged(tok, r) for r in rows] == [
        [("alice", 1), ("walker", 1), ("moved", 0), ("paris", 1), ("1990", 0)],  # "to", "in": stop words
        [("wrote", 0), ("novels", 0), ("georgia", 0)],
        [("paris", 1), ("welcomed", 0), ("alice", 1), ("walker", 1), ("warmly", 0)],
        [("critics", 0), ("praised", 0), ("style", 0)],
    ]
    pairs = token_document_relation.recurring(
        token_document_relation.segments_of(DOCS[1]["sentences"], 2), ignore_stopwords=False
    )
    # "The river Thames flows through London. London bridges cross the Thames." | "Boats sail ..."
    assert pairs == [[0, 0, 0, 0, 0, 0, -100, 0, 0, 0, 0, 0, -100], [0, 0, 0, 0, 0, -100]]
    assert token_document_relation.recurring(["The Thames .", "the thames"], False) == [[1, 1, -100], [1, 1]]
    # A document of one segment has no other segment to compare with.
    assert encode(spec_of("token_document_relation", segment_sentences=8), tok, RECORDS)[0] == []


# ------------------------------------------------------------------------------- IR relevance
def test_ir_queries_and_passages() -> None:
    a, b, c = ([*r["sentences"]] for r in DOCS)
    assert ir_relevance.query_and_passages("Alice Walker", a, 2) == (
        "Alice Walker",
        [f"{a[0]} {a[1]}", f"{a[2]} {a[3]}"],
    )
    assert ir_relevance.query_and_passages(None, c, 2) == (c[0], [f"{c[1]} {c[2]}", f"{c[3]} {c[4]}"])
    assert ir_relevance.query_and_passages(" ", b, 3) == (b[0], [f"{b[1]} {b[2]}"])


def test_ir_pairs_are_strong_weak_or_none(tok: Any) -> None:
    spec = spec_of("ir_relevance", passage_sentences=2)
    short = {"id": "d", "title": "Short", "sentences": ["One line.", "Two lines."]}  # one passage: dropped
    rows, info = encode(spec, tok, [*RECORDS, {**short, "text": "One line. Two lines."}])
    assert len(rows) == 3
    queries = [tok.decode(r["query"]) for r in rows]
    assert queries == ["alice walker", "thames", DOCS[2]["sentences"][0].lower()]
    passages = [[tok.decode(p) for p in r["passages"]] for r in rows]
    seen = set()
    for seed in range(6):
        batch = ir_relevance.collate(rows, tok, spec, info, gen(seed))
        assert sorted(batch["labels"].tolist()) == [0, 1, 2]
        for ids, types, label in zip(batch["input_ids"], batch["token_type_ids"], batch["labels"].tolist()):
            n = int((ids != tok.pad_token_id).sum())
            query = tok.decode(ids[:n][types[:n] == 0][1:-1])
            passage = tok.decode(ids[:n][types[:n] == 1][:-1])
            d = queries.index(query)
            if label == ir_relevance.STRONG:
                assert passage == passages[d][0]
            elif label == ir_relevance.WEAK:
                assert passage in passages[d][1:]
            else:
                assert passage not in passages[d] and any(passage in p for p in passages)
            seen.add(label)
    assert seen == {0, 1, 2}


# --------------------------------------------------------------------- replaced token detection
def _rows(ids: list[list[int]], tok: Any) -> list[dict]:
    return [
        {"input_ids": [tok.cls_token_id, *r, tok.sep_token_id], "word_starts": [1] * (len(r) + 2)}
        for r in ids
    ]


def test_replaced_tokens_are_the_labels(tok: Any) -> None:
    g = torch.Generator().manual_seed(1)
    ids = (20 + torch.randint(len(tok) - 20, (100, 50), generator=g)).tolist()
    rows = _rows(ids, tok)
    for mode in ("bigram", "unigram", "uniform"):
        spec = spec_of("replaced_token_detection", replace_probability=0.15, replacement=mode)
        batch = replaced_token_detection.collate(rows, tok, spec, {}, gen(0))
        original = torch.tensor([r["input_ids"] for r in rows])
        labels = batch["labels"]
        assert (labels[:, 0] == -100).all() and (labels[:, -1] == -100).all()  # [CLS], [SEP]
        assert torch.equal(labels[:, 1:-1] == 1, batch["input_ids"][:, 1:-1] != original[:, 1:-1])
        assert abs(int((labels == 1).sum()) / 5000 - 0.15) < 0.02, mode
        assert not torch.isin(batch["input_ids"][:, 1:-1], torch.tensor(tok.all_special_ids)).any()


def test_bigram_replacements_follow_the_same_token_in_the_batch(tok: Any) -> None:
    # Token 30 is followed by 40 and 41, token 31 by 42 only, token 32 by 50 only.
    rows = _rows([[30, 40, 31, 42, 30, 41, 32, 50]] * 4, tok)
    spec = spec_of("replaced_token_detection", replace_probability=0.5, replacement="bigram")
    original = torch.tensor([r["input_ids"] for r in rows])
    followers = {30: {40, 41}, 31: {42}, 32: {50}}
    checked = 0
    for seed in range(10):
        batch = replaced_token_detection.collate(rows, tok, spec, {}, gen(seed))
        for i, t in (batch["labels"] == 1).nonzero().tolist():
            old, new, previous = int(original[i, t]), int(batch["input_ids"][i, t]), int(original[i, t - 1])
            others = followers.get(previous, set()) - {old}
            if others:  # 40 <-> 41 after 30
                assert new in others
                checked += 1
            else:  # no other follower: any other token of the batch
                assert new in {30, 31, 32, 40, 41, 42, 50} - {old}
    assert checked > 0


# -------------------------------------------------------------------- a step lowers each loss
CASES = {
    "mlm_entity": spec_of("masked_lm", masking="entity"),
    "mlm_phrase": spec_of("masked_lm", masking="phrase"),
    "capitalization_prediction": spec_of("capitalization_prediction"),
    "token_document_relation": spec_of("token_document_relation"),
    "ir_relevance": spec_of("ir_relevance"),
    "replaced_token_detection": spec_of("replaced_token_detection"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_steps_lower_the_loss(case: str, tok: Any) -> None:
    spec = CASES[case]
    rows, info = encode(spec, tok, RECORDS)
    kind = IMPLEMENTATIONS[spec.kind]
    batch = kind.collate(rows[:8], tok, spec, info, gen(0))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    encoder, head = BertModel(config, add_pooling_layer=False), kind.head(32, spec, info)
    head.eval()  # no dropout: the same batch gives the same loss
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    loss_fn = LOSSES[KINDS[spec.kind].losses[0]]
    losses = []
    for _ in range(8):
        hidden = encoder(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        ).last_hidden_state
        loss = loss_fn(head(hidden, batch, encoder.embeddings.word_embeddings.weight), batch, 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    metrics, _ = kind.score(
        kind.predict(head(hidden, batch, encoder.embeddings.word_embeddings.weight).detach(), batch, info),
        None,
        None,
        spec,
        info,
    )
    assert set(metrics) == set(KINDS[spec.kind].metrics)


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_records_encode_alike(case: str, tok: Any) -> None:
    spec = CASES[case]
    rows, info = encode(spec, tok, RECORDS)
    stream = datasets.IterableDataset.from_generator(lambda: iter(RECORDS))
    assert list(IMPLEMENTATIONS[spec.kind].encode(stream, tok, spec, info)) == rows


# --------------------------------------------------------------------- data: WikiText, articles
def test_wikitext_articles_take_their_titles_from_the_headings() -> None:
    data = DataSpec(format="wikitext", train=str(FIXTURES / "data" / "wikitext" / "wiki.tokens"))
    records = list(read_split(data, "train"))
    assert [r["title"] for r in records] == ["Ada Lovelace", "Mount Kenya"]
    ada, kenya = (r["sentences"] for r in records)
    assert ada[:2] == [
        "Ada Lovelace was an English mathematician .",
        "She worked with Charles Babbage on the Analytical Engine .",
    ]
    # The section heading is dropped; separators are joined; a formula line between text lines is text.
    assert ada[3] == "Lovelace was born in London in 1815 ."
    assert ada[5] == "The engine would compute 1,000 numbers in a well-known way ."
    assert ada[-2:] == ["= 1 <unk> and C =", "2 ."] and len(ada) == 9
    assert kenya[2] == "The mountain has two rainy seasons ." and len(kenya) == 4
    assert records[0]["text"] == " ".join(ada)
    streamed = read_split(DataSpec(format="wikitext", train=data.train, streaming=True), "train")
    assert isinstance(streamed, datasets.IterableDataset) and list(streamed) == records


def test_synthetic_articles_carry_titles_and_entity_spans() -> None:
    _, path = generate("articles", 12, 0, "train")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 12
    for r in records:
        assert r["text"] == " ".join(r["sentences"])
        spans = [r["text"][a:b] for a, b in r["entity_spans"]]
        assert spans[0] == r["title"]  # every document opens with the fact that introduces its subject
        assert all(s.strip() == s and s for s in spans)


# ------------------------------------------------------------------------- the agnostic run
def test_an_agnostic_run_over_every_new_source(tmp_path: Path) -> None:
    spec = override(parse_run(FIXTURES / "runs" / "ernie.toml"), output_dir=tmp_path / "out")
    summary = engine.pretrain(spec)
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    names = {
        "mlm_entity",
        "mlm_phrase",
        "capitalization_prediction",
        "token_document_relation",
        "ir_relevance",
        "ir_wikitext",
        "replaced_token_detection",
    }
    assert summary["complete"] is True and [r["episode"] for r in lines] == [1, 2]
    for r in lines:
        assert set(r["utilities"]) == names and r["chosen"] in names
        assert all(v == v for v in r["utilities"].values()) and r["train_loss"] > 0
