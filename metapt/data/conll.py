"""Column formats: SRL (CoNLL-2005, OntoNotes CoNLL-2012) and relation extraction (CoNLL04, SpERT, DyGIE++).

SRL records: {"id", "tokens", "predicate_indices", "predicate_lemmas", "srl_tags"} with one BIO tag list
per proposition; a predicate's lemma is the file's verb column at its row (its word where that is "-").
Relation records: {"id", "tokens", "entities": [{start, end (exclusive), type}],
"relations": [{head, tail (entity indices), type}]}.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import datasets

from metapt.brackets import BracketError, brackets_to_bio
from metapt.data.files import json_lines, load_json, numbered_lines
from metapt.errors import DataError
from metapt.spec import DataSpec

log = logging.getLogger("metapt")
Rows = list[tuple[int, list[str]]]  # one sentence: (line number, cells) per token

# The .corp files write some punctuation as Penn Treebank names; SpERT's JSON has the characters.
_PTB = {"COMMA": ",", "-LRB-": "(", "-RRB-": ")", "-LCB-": "{", "-RCB-": "}", "-LSB-": "[", "-RSB-": "]"}


def blocks(path: Path) -> Iterator[Rows]:
    """Sentences of a column file: runs of non-blank lines split on whitespace. gold_conll's
    `#begin document` / `#end document` lines are skipped; a `#` token (WSJ's pound sign) is kept."""
    rows: Rows = []
    for n, line in numbered_lines(path):
        if line.startswith(("#begin", "#end")):
            continue
        if line.strip():
            rows.append((n, line.split()))
        elif rows:
            yield rows
            rows = []
    if rows:
        yield rows


def _srl(rows: Rows, path: Path, words: list[str], lemma_col: int, first_prop: int) -> dict:
    """tokens, predicate_indices, predicate_lemmas and srl_tags of one sentence whose rows all have the
    same cells."""
    width = len(rows[0][1])
    for n, cells in rows:
        if len(cells) != width:
            raise DataError(f"{path}:{n}: {len(cells)} columns (expected {width}, as on line {rows[0][0]})")
    lemma_rows = [i for i, (_, cells) in enumerate(rows) if cells[lemma_col] != "-"]
    predicates, columns = [], []
    for k in range(first_prop, width):
        try:
            tags = brackets_to_bio([cells[k] for _, cells in rows])
        except BracketError as e:
            raise DataError(f"{path}:{rows[e.index][0]}: column {k + 1}: {e.message}") from None
        verb = tags.index("B-V") if "B-V" in tags else None
        if verb is None and len(lemma_rows) <= k - first_prop:
            raise DataError(f"{path}:{rows[0][0]}: column {k + 1} has no (V*) span and no predicate row")
        predicates.append(lemma_rows[k - first_prop] if verb is None else verb)
        columns.append(tags)
    # srl-eval.pl skips a predicted proposition whose verb differs from the gold file's (the lemma in
    # CoNLL-2005 props), so the predictions file needs the lemma, not the word.
    lemmas = [rows[p][1][lemma_col] if rows[p][1][lemma_col] != "-" else words[p] for p in predicates]
    return {"tokens": words, "predicate_indices": predicates, "predicate_lemmas": lemmas, "srl_tags": columns}


def _conll2005_file(path: Path) -> Iterator[dict]:
    """One file of `word lemma prop1 prop2 ...` rows (the release's words and props pasted)."""
    name = path.name.split(".")[0]
    for k, rows in enumerate(blocks(path)):
        if len(rows[0][1]) < 2:
            raise DataError(f"{path}:{rows[0][0]}: expected at least 2 columns (word, verb lemma or -)")
        yield {"id": f"{name}:{k}", **_srl(rows, path, [c[0] for _, c in rows], 1, 2)}


def _paste(words: Path, props: Path) -> Iterator[dict]:
    """Sentences of a release words file and its props file, read side by side line by line."""
    name, rows, k = props.name.split(".props")[0], [], 0
    pairs = itertools.zip_longest(numbered_lines(words), numbered_lines(props), fillvalue=(0, None))
    for (_, word), (n, prop) in itertools.chain(pairs, [((0, ""), (0, ""))]):  # a blank pair ends the last
        if word is None or prop is None:
            raise DataError(f"{words}, {props}: one file ends at line {n} before the other does")
        if bool(word.strip()) != bool(prop.strip()):
            raise DataError(f"{props}:{n}: out of step with {words}:{n} (one is blank, the other is not)")
        if prop.strip():
            rows.append((n, [word.strip(), *prop.split()]))
        elif rows:
            yield {"id": f"{name}:{k}", **_srl(rows, props, [c[0] for _, c in rows], 1, 2)}
            rows, k = [], k + 1


def read_conll2005(files: list[Path], data: DataSpec) -> datasets.Dataset:
    """CoNLL-2005 SRL: pasted words+props files, or the release's parallel words/ and props/ files."""
    props = [f for f in files if ".props" in f.name]
    if not props:
        return datasets.Dataset.from_list([r for f in files for r in _conll2005_file(f)])
    given = {f.name: f for f in files if ".words" in f.name}
    records = []
    for p in props:
        name = p.name.replace(".props", ".words")
        words = given.get(name, p.parent.parent / "words" / name)
        if not words.is_file():
            msg = "the release ships words separately, from the Penn Treebank (see its README)"
            raise DataError(f"{p}: no words file for it (looked for {words}); {msg}")
        records += _paste(words, p)
    return datasets.Dataset.from_list(records)


def read_conll2012(files: list[Path], data: DataSpec) -> datasets.Dataset:
    """OntoNotes *_gold_conll: SRL per sentence plus document_id and part (sentences without verbs kept)."""
    records, counts = [], {}
    for path in files:
        for rows in blocks(path):
            n, first = rows[0]
            if len(first) < 12:
                raise DataError(
                    f"{path}:{n}: {len(first)} columns (expected at least 12: document, part, "
                    "index, word, POS, parse, lemma, frameset, sense, speaker, NE, coref)"
                )
            if not first[1].isdigit():
                raise DataError(f"{path}:{n}: part {first[1]!r} is not a number (column 2)")
            for m, cells in rows:  # the words (column 4) are read before _srl checks the widths
                if len(cells) != len(first):
                    raise DataError(
                        f"{path}:{m}: {len(cells)} columns (expected {len(first)}, as on line {n})"
                    )
            doc, part = first[0], int(first[1])
            k = counts[doc, part] = counts.get((doc, part), -1) + 1
            # SRL columns sit between the NE column (11th) and the coreference column (last).
            srl = _srl([(n, c[:-1]) for n, c in rows], path, [c[3] for _, c in rows], 6, 11)
            records.append({"id": f"{doc}:{part}:{k}", "document_id": doc, "part": part, **srl})
    return datasets.Dataset.from_list(records)


def _corp_sentences(path: Path) -> Iterator[tuple[int, list[list[str]], list[tuple[int, list[str]]]]]:
    """(first line, token lines' cells, relation lines) per sentence of a .corp file."""
    tokens, relations, gap, first = [], [], False, 0
    for n, line in numbered_lines(path):
        cells = line.split("\t") if line.strip() else []
        if len(cells) == 9:
            if tokens and gap:
                yield first, tokens, relations
                tokens, relations = [], []
            if not tokens:
                first = n
            tokens.append(cells)
            gap = False
        elif len(cells) == 3 and tokens:
            relations.append((n, cells))
        elif cells:
            raise DataError(
                f"{path}:{n}: {len(cells)} tab-separated cells (expected 9 for a token line, "
                "or 3 for a relation line after a sentence's token lines)"
            )
        else:
            gap = bool(tokens)
    if tokens:
        yield first, tokens, relations


def read_conll04(files: list[Path], data: DataSpec) -> datasets.Dataset:
    """Roth & Yih .corp: 9-column token lines, a blank line, `head tail relation` lines, a blank line."""
    records = []
    for path in files:
        for first, lines, relation_lines in _corp_sentences(path):
            tokens, entities, entity_of_line = [], [], {}
            for cells in lines:  # sent_id, entity type, token line, O, POS, words joined by '/', O, O, O
                words = [_PTB.get(w, w) for w in cells[5].split("/")]
                if cells[1] != "O":
                    entity_of_line[cells[2]] = len(entities)
                    entities.append({"start": len(tokens), "end": len(tokens) + len(words), "type": cells[1]})
                tokens += words
            relations = []
            for n, (head, tail, kind) in relation_lines:
                if head not in entity_of_line or tail not in entity_of_line:
                    raise DataError(
                        f"{path}:{n}: relation {kind} joins token lines {head} and {tail}, but "
                        f"the sentence above (line {first}) has no entity on one of them"
                    )
                relations.append({"head": entity_of_line[head], "tail": entity_of_line[tail], "type": kind})
            records.append(
                {"id": lines[0][0], "tokens": tokens, "entities": entities, "relations": relations}
            )
    return datasets.Dataset.from_list(records)


def read_spert(files: list[Path], data: DataSpec) -> datasets.Dataset:
    """SpERT JSON: a list of {tokens, entities [{type, start, end}], relations [{type, head, tail}], orig_id}."""
    records = []
    for path in files:
        for k, doc in enumerate(load_json(path)):
            try:
                entities = [
                    {"start": e["start"], "end": e["end"], "type": e["type"]} for e in doc["entities"]
                ]
                pairs = [{"head": r["head"], "tail": r["tail"], "type": r["type"]} for r in doc["relations"]]
                rid, tokens = str(doc.get("orig_id", f"{path.stem}:{k}")), list(doc["tokens"])
            except (KeyError, TypeError, AttributeError) as e:
                raise DataError(
                    f"{path}: record {k}: missing or malformed {e} (expected tokens, entities "
                    "[{type, start, end}], relations [{type, head, tail}])"
                ) from None
            record = {"id": rid, "tokens": tokens, "entities": entities, "relations": pairs}
            if problem := check_relations(record):
                raise DataError(f"{path}: record {k} ({rid}): {problem}")
            records.append(record)
    return datasets.Dataset.from_list(records)


def check_relations(record: dict) -> str:
    """What is wrong with a relation record's indices ("" when nothing): entity spans inside the
    sentence (start < end <= len(tokens)), relation ends naming existing entities."""
    n, entities = len(record["tokens"]), record["entities"]
    for i, e in enumerate(entities):
        s, t = e["start"], e["end"]
        if not (isinstance(s, int) and isinstance(t, int) and 0 <= s < t <= n):
            return f"entity {i} spans tokens [{s}, {t}) but the sentence has {n} tokens (0 <= start < end <= {n})"
    for i, r in enumerate(record["relations"]):
        for end in ("head", "tail"):
            if not (isinstance(r[end], int) and 0 <= r[end] < len(entities)):
                return f"relation {i}: {end} = {r[end]!r} but there are {len(entities)} entities (0..{len(entities) - 1})"
    return ""


def _dygie_sentences(doc: dict) -> Iterator[tuple[dict, int]]:
    """(record, relations dropped) per sentence of a DyGIE++ document."""
    sentences, offset = doc["sentences"], 0
    ner = doc.get("ner") or [[] for _ in sentences]
    relations = doc.get("relations") or [[] for _ in sentences]
    for k, (tokens, spans, pairs) in enumerate(zip(sentences, ner, relations, strict=True)):
        entities = [{"start": s - offset, "end": e + 1 - offset, "type": t} for s, e, t in spans]
        index = {(s, e): i for i, (s, e, _) in enumerate(spans)}  # relation arguments are NER spans
        ends = [(index.get((s1, e1)), index.get((s2, e2)), t) for s1, e1, s2, e2, t in pairs]
        kept = [{"head": h, "tail": t, "type": x} for h, t, x in ends if h is not None and t is not None]
        record = {
            "id": f"{doc['doc_key']}:{k}",
            "tokens": list(tokens),
            "entities": entities,
            "relations": kept,
        }
        if problem := check_relations(record):  # document offsets outside this sentence
            raise ValueError(f"sentence {k}: {problem}")
        yield record, len(ends) - len(kept)
        offset += len(tokens)


def read_dygie(files: list[Path], data: DataSpec) -> datasets.Dataset:
    """DyGIE++ JSON lines (document offsets, inclusive ends) -> one record per sentence, end exclusive."""
    records, dropped = [], 0
    for path in files:
        for n, doc in json_lines(path):
            try:
                for record, lost in _dygie_sentences(doc):
                    records.append(record)
                    dropped += lost
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(
                    f"{path}:{n}: malformed DyGIE++ document ({type(e).__name__}: {e}; expected "
                    "doc_key, sentences, ner and relations with one list per sentence)"
                ) from None
    if dropped:
        log.warning("dygie: skipped %d relations whose arguments are not NER spans of the sentence", dropped)
    return datasets.Dataset.from_list(records)
