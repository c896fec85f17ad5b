"""Span selection pre-training (masked passage retrieval, Glass et al. 2020): a sentence with one term
replaced by a blank word is the query; the passage contains the term: the nearby sentences of its
document ([options].passage = "nearby") or the passage BM25 retrieves from a pool of documents
("bm25"); a pointer finds the term's first occurrence in the passage.

The term is chosen deterministically in encode (see choose_term): capitalised (entity-like) n-grams
first, then numbers, then content words of 4+ characters; only terms that also occur as whole words
in the passage. A word that opens a sentence is no name when the map batch's sentences, past their
first word, write it lower-case more often than capitalised ("However", "Following": see
lowercase). Every example has an answer. The blank is a plain word (default "[BLANK]"), so no
vocabulary is added.
"""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from metapt.kinds.base import Batch, Info
from metapt.kinds.bm25 import BM25, words
from metapt.kinds.common import feature_inputs, join
from metapt.kinds.corpus import (
    STOPWORDS,
    build_head,
    chunk_sentences,
    documents,
    map_records,
    tokenize_nested,
    write_rows,
)
from metapt.metrics import squad_exact, squad_f1
from metapt.spec import TaskSpec

log = logging.getLogger("metapt")

MAX_ANSWER_TOKENS = 30
# passage = "bm25" retrieves among the passages of this many consecutive documents: retrieval's cost
# grows with the square of the pool (docs/task-kinds.md)
POOL = 100
_WORD = re.compile(r"\w+(?:[-']\w+)*")


def lowercase(docs: list[list[str]]) -> frozenset[str]:
    """The words that the documents' sentences, past their first word, write lower-case more often
    than capitalised: a sentence's first word among them is capitalised only by its place."""
    lower: dict[str, int] = {}
    for sentence in (s for sents in docs for s in sents):
        for m in list(_WORD.finditer(sentence))[1:]:
            w = m.group()
            if w[0].isalpha():
                lower[w.lower()] = lower.get(w.lower(), 0) + (1 if w[0].islower() else -1)
    return frozenset(w for w, n in lower.items() if n > 0)


def terms(sentence: str, common: frozenset[str] = frozenset()) -> tuple[list[tuple[int, int]], ...]:
    """Character spans of the sentence's candidate terms in groups, best group first: capitalised
    n-grams (up to 4 words), numbers, content words of 4+ characters; each group in sentence order.
    A first word whose lower-case form is in `common` (see lowercase) is taken as lower-case."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(sentence)]
    text = [sentence[a:b] for a, b in words]
    names, numbers, content = [], [], []
    i = 0
    while i < len(words):
        if (
            text[i][0].isupper()
            and len(text[i]) > 1
            and text[i].lower() not in STOPWORDS
            and not (i == 0 and text[i].lower() in common)
        ):
            j = i  # a run of capitalised words separated by single spaces, as "New York City"
            while (
                j + 1 < len(words)
                and text[j + 1][0].isupper()
                and sentence[words[j][1] : words[j + 1][0]] == " "
            ):
                j += 1
            names += [
                (words[a][0], words[b][1]) for a in range(i, j + 1) for b in range(a, min(j, a + 3) + 1)
            ]
            i = j + 1
            continue
        if any(c.isdigit() for c in text[i]):
            numbers.append(words[i])
        elif len(text[i]) >= 4 and text[i].lower() not in STOPWORDS:
            content.append(words[i])
        i += 1
    return sorted(names), numbers, content


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


def find_word(term: str, text: str) -> int:
    """Start of the first occurrence of `term` in `text` not inside a longer word, or -1."""
    i = text.find(term)
    while i >= 0:
        end = i + len(term)
        if not (i and _is_word(text[i - 1])) and not (end < len(text) and _is_word(text[end])):
            return i
        i = text.find(term, i + 1)
    return -1


def choose_term(
    sentence: str, passage: str, salt: str, common: frozenset[str] = frozenset()
) -> tuple[int, int, int] | None:
    """(term start, term end) in the sentence and the term's first whole-word start in the passage.

    From the best group with a term that the passage repeats, one of the longest such terms (none
    inside another) is picked by a hash of `salt`, so answers vary yet encode stays deterministic."""
    for group in terms(sentence, common):
        found: list[tuple[int, int, int]] = []
        for a, b in sorted(group, key=lambda span: span[0] - span[1]):  # longest first
            if any(fa <= a and b <= fb for fa, fb, _ in found):
                continue  # inside a repeated longer term
            if (at := find_word(sentence[a:b], passage)) >= 0:
                found.append((a, b, at))
        if found:
            return sorted(found)[zlib.crc32(salt.encode()) % len(found)]
    return None


def _neighbours(lengths: list[int], q: int, budget: int) -> list[int]:
    """Sentences nearest to q (after, before, two after, ...) while their tokens fit `budget`."""
    chosen, used = [], 0
    for j in sorted((j for j in range(len(lengths)) if j != q), key=lambda j: (abs(j - q), j < q)):
        if chosen and used + lengths[j] > budget:
            break
        chosen.append(j)
        used += lengths[j]
    return sorted(chosen)


def prepare(spec: TaskSpec, train: datasets.Dataset | None) -> Info:
    """Nothing to learn from the records."""
    return {}


def _examples(batch: dict[str, list], tokenizer: Any, spec: TaskSpec) -> list[dict]:
    """(id, query, passage, answer, answer start) for every sentence that has a term in its passage."""
    blank, L = spec.option("blank_token"), spec.batch.max_length
    room = L - tokenizer.num_special_tokens_to_add(pair=True)
    docs = documents(batch)
    names = batch.get("id") or list(range(len(docs)))
    toks = tokenize_nested(tokenizer, docs)
    bm25 = spec.option("passage") == "bm25"
    common = lowercase(docs)
    out = []
    for d, (name, sents, tok) in enumerate(zip(names, docs, toks, strict=True)):
        if bm25 and d % POOL == 0:
            index = _Passages(docs[d : d + POOL], toks[d : d + POOL], room - room // 2)
        lengths = [len(t) for t in tok]
        for q, sentence in enumerate(sents):
            salt = f"{name}-{q}"
            if bm25:
                found = index.retrieve(sentence, salt, common)
            else:
                others = _neighbours(lengths, q, room - min(lengths[q] + 2, room // 2))
                passage = " ".join(sents[j] for j in others)
                term = choose_term(sentence, passage, salt, common) if others else None
                found = (*term, passage) if term else None
            if found is None:
                continue
            a, b, start, passage = found
            out.append(
                {
                    "id": salt,
                    "query": sentence[:a] + blank + sentence[b:],
                    "blank": a,
                    "passage": passage,
                    "answer": sentence[a:b],
                    "answer_start": start,
                }
            )
    return out


class _Passages:
    """The passages of a pool of documents, runs of consecutive sentences while their tokens fit
    `budget`, indexed for BM25 retrieval (Glass et al. 2020 retrieve from the whole corpus)."""

    def __init__(self, docs: list[list[str]], toks: list[list[list[int]]], budget: int) -> None:
        self.texts = []
        for sents, tok in zip(docs, toks, strict=True):
            first = 0
            for chunk in chunk_sentences(tok, budget):
                self.texts.append(" ".join(sents[first : first + len(chunk)]))
                first += len(chunk)
        self.index = BM25(self.texts)

    def retrieve(self, sentence: str, salt: str, common: frozenset[str]) -> tuple[int, int, int, str] | None:
        """(term start, term end, its start in the passage, the passage) for the sentence's term
        tried as in choose_term: the best group with a retrieved term, the longest terms, one picked
        by a hash of `salt`."""
        for group in terms(sentence, common):
            found: list[tuple[int, int, int]] = []
            for a, b in sorted(group, key=lambda span: span[0] - span[1]):  # longest first
                if any(fa <= a and b <= fb for fa, fb, _ in found):
                    continue
                if (p := self._retrieved(sentence, a, b)) is not None:
                    found.append((a, b, p))
            if found:
                a, b, p = sorted(found)[zlib.crc32(salt.encode()) % len(found)]
                return a, b, find_word(sentence[a:b], self.texts[p]), self.texts[p]
        return None

    def _retrieved(self, sentence: str, a: int, b: int) -> int | None:
        """The passage that BM25 ranks first for the sentence without the term sentence[a:b] (its
        content words), among those that hold the term as a word and not the sentence, if it shares
        a word with that query (a score above 0); ties go to the earlier passage."""
        query = [w for w in words(sentence[:a] + " " + sentence[b:]) if w not in STOPWORDS]
        term, best, chosen = sentence[a:b], 0.0, None
        for p in self.index.postings.get(words(term)[0], ()):
            score = self.index.score(query, p)
            if score > best and sentence not in self.texts[p] and find_word(term, self.texts[p]) >= 0:
                best, chosen = score, p
        return chosen


def _features(examples: list[dict], tokenizer: Any, L: int) -> dict[str, list]:
    """Tokenise queries and passages in two calls; place the answer by the passage's char offsets."""
    cols = [
        "id",
        "input_ids",
        "token_type_ids",
        "start_positions",
        "end_positions",
        "answer",
        "passage",
        "passage_offsets",
        "passage_start",
        "fits",
    ]
    out: dict[str, list] = {c: [] for c in cols}
    if not examples:
        return out
    room = L - tokenizer.num_special_tokens_to_add(pair=True)
    queries = tokenizer([e["query"] for e in examples], add_special_tokens=False)
    passages = tokenizer(
        [e["passage"] for e in examples], add_special_tokens=False, return_offsets_mapping=True
    )
    for k, e in enumerate(examples):
        q = queries["input_ids"][k]
        if len(q) > room // 2:  # a window of the query around the blank
            at = queries.char_to_token(k, e["blank"]) or 0
            first = min(max(at - room // 4, 0), len(q) - room // 2)
            q = q[first : first + room // 2]
        p, offsets = passages["input_ids"][k][: room - len(q)], passages["offset_mapping"][k]
        start = passages.char_to_token(k, e["answer_start"])
        end = passages.char_to_token(k, e["answer_start"] + len(e["answer"]) - 1)
        ids, types = join(tokenizer, q, p, L)
        shift = len(ids) - 1 - len(p)  # where the passage begins in the sequence
        out["fits"].append(start is not None and end is not None and end < len(p))
        for c, v in (
            ("id", e["id"]),
            ("input_ids", ids),
            ("token_type_ids", types),
            ("start_positions", shift + (start or 0)),
            ("end_positions", shift + (end or 0)),
            ("answer", e["answer"]),
            ("passage", e["passage"]),
            ("passage_offsets", [list(o) for o in offsets[: len(p)]]),
            ("passage_start", shift),
        ):
            out[c].append(v)
    return out


def encode(dataset: datasets.Dataset, tokenizer: Any, spec: TaskSpec, info: Info) -> datasets.Dataset:
    """Documents -> one row per query sentence: input_ids/token_type_ids ([CLS] query [SEP] passage
    [SEP]), start_positions/end_positions (the answer's tokens), and id, answer, passage,
    passage_offsets, passage_start for scoring. Rows whose answer lies past max_length are dropped
    and counted in the log."""
    L = spec.batch.max_length
    rows = map_records(dataset, lambda batch: _features(_examples(batch, tokenizer, spec), tokenizer, L))
    if isinstance(rows, datasets.Dataset) and not len(rows):  # no examples: load_task says so
        return rows  # (with the record columns: datasets keeps them when no batch has a row)
    kept = rows.filter(lambda fits: fits, input_columns="fits", batched=True).remove_columns("fits")
    if isinstance(rows, datasets.Dataset):
        dropped = len(rows) - len(kept)
        log.info(
            "%s: span_selection dropped %d of %d examples whose answer lies beyond max_length %d",
            spec.name or "span_selection",
            dropped,
            len(rows),
            L,
        )
    return kept


def collate(
    rows: list[dict], tokenizer: Any, spec: TaskSpec, info: Info, generator: torch.Generator
) -> Batch:
    """input_ids, token_type_ids, attention_mask, context_mask (B, T: the passage tokens);
    start_positions, end_positions (B,). No randomness: the examples are fixed by encode."""
    batch = feature_inputs(rows, tokenizer.pad_token_id)
    context = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)  # (B, T)
    for i, r in enumerate(rows):
        context[i, r["passage_start"] : r["passage_start"] + len(r["passage_offsets"])] = True
    batch["context_mask"] = context
    batch["start_positions"] = torch.tensor([r["start_positions"] for r in rows])
    batch["end_positions"] = torch.tensor([r["end_positions"] for r in rows])
    return batch


def head(hidden_size: int, spec: TaskSpec, info: Info) -> nn.Module:
    """A start/end pointer."""
    return build_head(hidden_size, spec, 2)


def predict(logits: torch.Tensor, batch: Batch, info: Info) -> list[tuple[int, int]]:
    """Per example the best (start, end) passage positions with start <= end < start + 30."""
    start, end = logits.float().unbind(-1)  # (B, T) each
    T = start.shape[1]
    pairs = start.unsqueeze(2) + end.unsqueeze(1)  # (B, T, T): [b, i, j] scores the span i..j
    steps = torch.arange(T, device=start.device)
    offset = steps.unsqueeze(0) - steps.unsqueeze(1)  # (T, T): j - i
    context = batch["context_mask"].to(start.device)
    allowed = (offset >= 0) & (offset < MAX_ANSWER_TOKENS) & context.unsqueeze(2) & context.unsqueeze(1)
    best = pairs.masked_fill(~allowed, float("-inf")).flatten(1).argmax(1).tolist()
    return [(b // T, b % T) for b in best]


def score(
    predictions: list[tuple[int, int]],
    features: datasets.Dataset,
    records: datasets.Dataset,
    spec: TaskSpec,
    info: Info,
) -> tuple[dict[str, float], list[dict]]:
    """{"f1", "exact_match"}: SQuAD token F1 and exact match (%) of the predicted span's text."""
    out, em, f1 = [], 0.0, 0.0
    rows = features.select_columns(["id", "answer", "passage", "passage_offsets", "passage_start"])
    for (s, e), row in zip(predictions, rows, strict=True):
        offsets, shift = row["passage_offsets"], row["passage_start"]
        text = row["passage"][offsets[s - shift][0] : offsets[e - shift][1]]
        em += squad_exact(text, [row["answer"]])
        f1 += squad_f1(text, [row["answer"]])
        out.append({"id": row["id"], "predicted": text, "answer": row["answer"]})
    n = max(len(out), 1)
    return {"f1": 100.0 * f1 / n, "exact_match": 100.0 * em / n}, out


def write_predictions(path: Path, predictions: list[dict], records: datasets.Dataset, info: Info) -> None:
    """One JSON line per query: its id, the predicted span text and the blanked term."""
    write_rows(path, predictions, records, info)
