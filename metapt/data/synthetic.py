"""Seeded synthetic corpora about one small world, written once in real file formats and cached.

Every corpus of the same seed describes the same world (metapt/data/world.py): `documents`, `articles`
(the documents with titles and entity spans), `dialogues`, `squad`, `pairs`, `conll04` and `conll2012`
state its facts, `shuffled` has its words but no facts, and `claims` asks whether facts are true without
stating them (knowledge only the sources give), and `types` asks what kind of thing a word of the world
is (metapt/data/lexicon.py).
The files are read back by the same readers as real data, so the synthetic path tests them too.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from metapt.data import lexicon, sums
from metapt.data import world as W
from metapt.data.world import Ent, Sentence, Stated, World, render
from metapt.errors import DataError

log = logging.getLogger("metapt")
GENERATOR_VERSION = 2  # bump whenever the bytes written change: it is part of the cache path
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class _Job:
    """What one corpus split needs: the world, its own Random, how many examples, and where to start."""

    world: World
    rng: random.Random
    seed: int
    corpus: str
    split: str
    size: int
    count: int
    eval_count: int  # examples in validation (and in test): test starts after them

    def cycle(self, n: int) -> Iterator[int]:
        """Indices 0..n-1 in a per-corpus order; splits start at different places so they mostly differ."""
        order = list(range(n))
        random.Random(f"metapt:{self.seed}:{self.corpus}:order").shuffle(order)
        start = {"train": 0, "validation": self.size, "test": self.size + self.eval_count}[self.split]
        for k in itertools.count(start):
            yield order[k % n]


# ------------------------------------------------------------------------- documents, dialogues
def _subject_documents(job: _Job) -> list[tuple[tuple[str, int], list[Stated]]]:
    """(the entity it is about, the document) for entities taken in the split's order (each entity
    many times when size is large)."""
    pool = W.entity_pool(job.world)
    picks = job.cycle(len(pool))
    subjects = [pool[next(picks)] for _ in range(job.count)]
    return [(subject, W.document(job.world, *subject, job.rng)) for subject in subjects]


def _documents(job: _Job) -> list[list[Stated]]:
    """Documents about entities taken in the split's order (each entity many times when size is large)."""
    return [doc for _, doc in _subject_documents(job)]


def _write_documents(job: _Job) -> str:
    """One sentence per line, a blank line between documents."""
    docs = _documents(job)
    return "\n\n".join("\n".join(s.sentence.text for s in doc) for doc in docs) + "\n"


def _write_shuffled(job: _Job) -> str:
    """The documents' layout and words, each sentence a random word sequence: no knowledge."""
    docs = [[s.sentence.text.split()[:-1] for s in doc] for doc in _documents(job)]
    # Unigram draws keep the documents' words and sentence lengths but none of their facts.
    words = [w for doc in docs for sent in doc for w in sent]
    return (
        "\n\n".join(
            "\n".join(" ".join([*job.rng.choices(words, k=len(s)), "."]) for s in doc) for doc in docs
        )
        + "\n"
    )


def _write_articles(job: _Job) -> str:
    """JSON lines {"id", "title": the entity the document is about, "text", "sentences",
    "entity_spans": [start, end] character offsets in text of every entity the world typed}."""
    lines = []
    for k, ((kind, i), doc) in enumerate(_subject_documents(job)):
        sentences, spans, offset = [s.sentence.text for s in doc], [], 0
        for stated in doc:
            for text, etype, _ in stated.sentence.segs:
                if etype:
                    spans.append([offset, offset + len(text)])
                offset += len(text) + 1  # segments, and sentences, are joined by single spaces
        record = {
            "id": f"synthetic-{job.seed}-{job.split}-{k:06d}",
            "title": W.entity_name(job.world, kind, i),
            "text": " ".join(sentences),
            "sentences": sentences,
            "entity_spans": spans,
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def _answer(sent: Sentence, slot: str) -> tuple[int, int] | None:
    """Character span of `slot` in the sentence text, or None when it was replaced by a pronoun."""
    offset, span = 0, None
    for text, _, name in sent.segs:
        if name == slot:
            span = (span[0] if span else offset, offset + len(text))
        offset += len(text) + 1
    return span


def _write_dialogues(job: _Job) -> str:
    """DailyDialog lines: 4-8 turns of questions about one entity and their answers."""
    lines = []
    for doc in _documents(job):
        n_turns = job.rng.randint(4, 8)
        turns: list[str] = []
        for stated in job.rng.sample(doc, min(n_turns // 2, len(doc))):
            sent, (question, slot) = stated.sentence, job.rng.choice(stated.asked())
            span, style, text = _answer(sent, slot), job.rng.random(), sent.text
            if span and style < 0.3:  # a short answer: just the answer words
                answer = text[span[0]].upper() + text[span[0] + 1 : span[1]] + " ."
            elif style > 0.8:
                answer = "I believe " + (text if sent.segs[0][1] else text[0].lower() + text[1:])
            else:
                answer = text
            turns += [question, answer]
        if n_turns % 2:
            turns.append(job.rng.choice(["Thanks , that helps .", "Great , thank you .", "I see , thanks ."]))
        lines.append(" __eou__ ".join(turns) + " __eou__")
    return "\n".join(lines) + "\n"


def _write_squad(job: _Job) -> str:
    """SQuAD v1.1 JSON: one paragraph per document, 2-4 questions each, exactly `count` questions."""
    pool, data, n = W.entity_pool(job.world), [], 0
    picks = job.cycle(len(pool))
    while n < job.count:
        kind, i = pool[next(picks)]
        doc = W.document(job.world, kind, i, job.rng)
        context, qas, offset, cands = " ".join(s.sentence.text for s in doc), [], 0, []
        for stated in doc:
            sent = stated.sentence
            for question, slot in stated.asked():
                span = _answer(sent, slot)
                if span:
                    cands.append((question, offset + span[0], offset + span[1]))
            offset += len(sent.text) + 1
        # A question asked twice in one context could have two answers: drop it.
        texts = [q for q, _, _ in cands]
        cands = [c for c in cands if texts.count(c[0]) == 1]
        k = min(job.rng.randint(2, 4), len(cands), job.count - n)
        for question, start, end in job.rng.sample(cands, k):
            qid = f"synthetic-{job.seed}-{job.split}-{n:06d}"
            qas.append(
                {
                    "id": qid,
                    "question": question,
                    "answers": [{"text": context[start:end], "answer_start": start}],
                }
            )
            n += 1
        if qas:
            title = W.entity_name(job.world, kind, i).replace(" ", "_")
            data.append({"title": title, "paragraphs": [{"context": context, "qas": qas}]})
    return json.dumps({"version": "1.1", "data": data}, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------- pairs
# (premise source, premise template, [(hypothesis fact kind, hypothesis template, swappable slots)])
# fmt: off
PAIRS: tuple[tuple[str, str, tuple[tuple[str, str, str], ...]], ...] = (
    ("person", "{p} , who lives in {c} , works for {o} .",
     (("live", "{p} lives in {c} .", "pc"), ("work", "{p} works for {o} .", "po"))),
    ("person", "{p} lives in {c} , a city in {n} .",
     (("live_country", "{p} lives in {n} .", "pn"), ("live", "{p} has a home in {c} .", "pc"))),
    ("person", "{p} , {ja} {j} , has worked at {o} for years .",
     (("work", "{p} is employed by {o} .", "po"),)),
    ("org", "{o} , which was founded in {y} , is based in {c} .",
     (("based", "{o} is based in {c} .", "oc"), ("founded", "{o} was founded in {y} .", "oy"))),
    ("event", "{a} {v} {b} in {c} {tp} {t} .", (("event", "{a} {v} {b} .", "ab"),)),
    ("event", "{TP} {t} , {b} was {v} by {a} in {c} .", (("event", "{a} {v} {b} .", "ab"),)),
)
# fmt: on


def _random_values(w: World, rng: random.Random, source: str) -> dict[str, Ent]:
    """Slot values of a random person, organisation, kill, or other event."""
    if source == "person":
        return W.person_values(w, rng.randrange(len(w.people)))
    if source == "org":
        return W.org_values(w, rng.randrange(len(w.orgs)))
    events = [e for e in w.events if (e.verb == "killed") == (source == "kill")]
    return W.event_values(w, rng.choice(events))


def _write_pairs(job: _Job) -> str:
    """RTE-style TSV; a negative hypothesis swaps one entity so that it is false in the world."""
    rows = ["index\tsentence1\tsentence2\tlabel"]
    for k in range(job.count):
        source, premise, hypotheses = job.rng.choice(PAIRS)
        values = _random_values(job.world, job.rng, source)
        kind, template, slots = job.rng.choice(hypotheses)
        entail = job.rng.random() < 0.5
        hyp = values if entail else W.falsify(job.world, job.rng, kind, values, slots)
        label = "entailment" if entail else "not_entailment"
        rows.append(f"{k}\t{render(premise, values).text}\t{render(template, hyp).text}\t{label}")
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------------- claims
# Closed-book fact verification: is a claim about a city, an organisation or a person true in the world?
# The input says nothing about it, and the subjects of the train, validation and test splits are
# disjoint (SUBJECT_SHARES of the cities, organisations and people each), so finetuning on the train
# claims teaches the format but no fact that is scored: only the source corpora (documents, dialogues)
# state them. The fact kinds are the ones the documents state most often per subject (a city's
# country opens each of its documents and recurs in headquarters sentences).
# fact kind -> (claim template, the slot a false claim replaces, subject pool, weight)
CLAIMS: dict[str, tuple[str, str, str, int]] = {
    "loc": ("{c} is a city in {n} .", "n", "cities", 2),
    "based": ("{o} is based in {c} .", "c", "orgs", 2),
    "work": ("{p} works for {o} .", "o", "people", 1),
}
SUBJECT_SHARES = {"train": (0.0, 0.2), "validation": (0.2, 0.6), "test": (0.6, 1.0)}


def claim_subjects(w: World, seed: int, split: str) -> dict[str, list[int]]:
    """The cities, organisations and people a split's claims are about (disjoint between splits)."""
    low, high = SUBJECT_SHARES[split]
    out = {}
    for pool, n in (("cities", len(w.cities)), ("orgs", len(w.orgs)), ("people", len(w.people))):
        order = list(range(n))
        random.Random(f"metapt:{seed}:claims:{pool}").shuffle(order)
        out[pool] = sorted(order[round(low * n) : round(high * n)])
    return out


def _claim_values(w: World, pool: str, i: int) -> dict[str, Ent]:
    if pool == "cities":
        return {"c": (w.cities[i][0], "Loc"), "n": (w.cities[i][1], "Loc")}
    return W.org_values(w, i) if pool == "orgs" else W.person_values(w, i)


def _false_claim(
    w: World, rng: random.Random, kind: str, values: dict[str, Ent], slot: str
) -> dict[str, Ent]:
    if kind != "loc":
        return W.falsify(w, rng, kind, values, slot)
    countries = sorted({n for _, n in w.cities} - {values["n"][0]})  # a city lies in one country
    return {**values, "n": (rng.choice(countries), "Loc")}


def _write_claims(job: _Job) -> str:
    """TSV of claims (index, sentence, label true/false), half of them true in the world."""
    subjects, kinds = claim_subjects(job.world, job.seed, job.split), list(CLAIMS)
    rows = ["index\tsentence\tlabel"]
    for k in range(job.count):
        kind = job.rng.choices(kinds, weights=[CLAIMS[x][3] for x in kinds])[0]
        template, slot, pool, _ = CLAIMS[kind]
        values = _claim_values(job.world, pool, job.rng.choice(subjects[pool]))
        true = job.rng.random() < 0.5
        claim = values if true else _false_claim(job.world, job.rng, kind, values, slot)
        rows.append(f"{k}\t{render(template, claim).text}\t{'true' if true else 'false'}")
    return "\n".join(rows) + "\n"


def _write_types(job: _Job) -> str:
    """TSV of words in neutral frames (index, sentence, label: the word's type), words disjoint across splits."""
    return lexicon.write_types(job.world, job.seed, job.split, job.count)


# ------------------------------------------------------------------------------------- CoNLL
POS = dict(
    x.split(":")
    for x in (
        "in:IN on:IN for:IN at:IN by:IN of:IN that:IN a:DT an:DT the:DT ,:, .:. is:VBZ was:VBD works:VBZ "
        "lives:VBZ who:WP and:CC ready:JJ busy:JJ strong:JJ welcomed:VBD won:VBD sales:NNS"
    ).split()
)
NE = {"Peop": "PERSON", "Org": "ORG", "Loc": "GPE", "Other": "DATE"}


def _pos(word: str, etype: str, prev: str) -> str:
    """A plausible Penn Treebank tag: entities are proper nouns or numbers; past forms after "was" are VBN."""
    if etype:
        return "CD" if word.isdigit() else "NNP"
    if word in W.LEMMAS:
        return "VBN" if prev == "was" else "VBD"
    return POS.get(word.lower(), "NN")


# value source -> [(template, [(head slot, tail slot, relation)])]. Event sentences name entities with no
# relation between them (negatives), or only the city's Located_In.
# fmt: off
CONLL04: dict[str, list[tuple[str, list[tuple[str, str, str]]]]] = {
    "person": [("{p} works for {o} .", [("p", "o", "Work_For")]),
               ("{o} {j} {p} said the plan was ready .", [("p", "o", "Work_For")]),
               ("{p} , {ja} {j} at {o} , welcomed the news .", [("p", "o", "Work_For")]),
               ("{p} lives in {c} .", [("p", "c", "Live_In")]),
               ("{p} , a resident of {c} , won the award .", [("p", "c", "Live_In")]),
               ("{p} , who lives in {c} , works for {o} .", [("p", "c", "Live_In"), ("p", "o", "Work_For")]),
               ("{c} is a city in {n} .", [("c", "n", "Located_In")])],
    "org": [("{o} is based in {c} .", [("o", "c", "OrgBased_In")]),
            ("{o} , {ia} {i} company in {c} , reported strong sales .", [("o", "c", "OrgBased_In")]),
            ("{o} is based in {c} , {n} .", [("o", "c", "OrgBased_In"), ("c", "n", "Located_In")])],
    "kill": [("{a} killed {b} in {c} {tp} {t} .", [("a", "b", "Kill")]),
             ("{b} was killed by {a} in {c} .", [("a", "b", "Kill")])],
    "event": [("{a} {v} {b} in {c} {tp} {t} .", []), ("{TP} {t} , {a} {v} {b} in {c} .", []),
              ("{c} , {n} , is where {a} {v} {b} .", [("c", "n", "Located_In")])],
}
# fmt: on
_C04_WEIGHTS = {"person": 7, "org": 3, "kill": 1, "event": 3}  # about one sentence in seven has no relation


def _write_conll04(job: _Job) -> str:
    """Roth & Yih .corp sentences stating 0-2 relations of the world."""
    blocks = []
    for k in range(job.count):
        source = job.rng.choices(list(_C04_WEIGHTS), weights=list(_C04_WEIGHTS.values()))[0]
        template, rels = job.rng.choice(CONLL04[source])
        sent = render(template, _random_values(job.world, job.rng, source))
        lines, prev = [], ""
        for i, (text, etype, _) in enumerate(sent.segs):
            words = text.split()
            pos = "/".join(_pos(x, etype, prev) for x in words)
            word = "/".join("COMMA" if x == "," else x for x in words)  # as the Roth & Yih files write it
            lines.append(f"{k}\t{etype or 'O'}\t{i}\tO\t{pos}\t{word}\tO\tO\tO")
            prev = words[-1]
        rel_lines = [f"{sent.index(h)}\t{sent.index(t)}\t{r}" for h, t, r in rels]
        # Token lines, a blank line, then the relation lines and a blank line (just the blank if none).
        blocks.append("\n".join(lines) + "\n\n" + ("\n".join(rel_lines) + "\n\n" if rel_lines else "\n"))
    return "".join(blocks)


# Role spans `<k:ROLE ... >` of predicate k; the reporting frame puts a whole event in its ARG1.
CONLL2012 = (
    "<0:ARG0 {a} > <0:V {v} > <0:ARG1 {b} > <0:ARGM-LOC in {c} > <0:ARGM-TMP {tp} {t} > .",
    "<0:ARGM-TMP {TP} {t} > , <0:ARG0 {a} > <0:V {v} > <0:ARG1 {b} > <0:ARGM-LOC in {c} > .",
    "<0:ARGM-LOC In {c} > , <0:ARG0 {a} > <0:V {v} > <0:ARG1 {b} > <0:ARGM-TMP {tp} {t} > .",
    "<0:ARG1 {b} > was <0:V {v} > <0:ARG0 by {a} > <0:ARGM-LOC in {c} > .",
    "<0:ARG0 {r} > <0:V {rv} > <0:ARG1 that <1:ARG0 {a} > <1:V {v} > <1:ARG1 {b} > <1:ARGM-LOC in {c} > "
    "<1:ARGM-TMP {tp} {t} > > .",
)


def _mark(column: list[str], start: int, end: int, label: str, single: str) -> None:
    """Bracket words start..end of a column: "(L*" ... "*)", or `single` for a one-word span."""
    if start == end:
        column[start] = single
    else:
        column[start], column[end] = f"({label}*", "*)"


def _conll2012_sentence(doc_id: str, sent: Sentence) -> str:
    """One sentence in *_gold_conll columns, one SRL column per predicate."""
    words: list[tuple[str, str]] = []
    seg_words = []  # segment -> (first word, last word)
    for text, etype, _ in sent.segs:
        seg_words.append((len(words), len(words) + len(text.split()) - 1))
        words += [(x, etype) for x in text.split()]
    ne = ["*"] * len(words)
    for (_, etype, _), (a, b) in zip(sent.segs, seg_words, strict=True):
        if etype:
            _mark(ne, a, b, NE[etype], f"({NE[etype]})")
    srl = [["*"] * len(words) for _ in range(1 + max(p for p, *_ in sent.roles))]  # one column per predicate
    for p, role, a, b in sent.roles:
        _mark(srl[p], seg_words[a][0], seg_words[b][1], role, f"({role}*)")
    verbs = {seg_words[a][0] for _, role, a, _ in sent.roles if role == "V"}  # predicate words get a lemma
    rows = []
    for i, (word, etype) in enumerate(words):
        parse = "(TOP(S*" if i == 0 else "*))" if i == len(words) - 1 else "*"  # a flat, well-formed tree
        lemma, frame = (W.LEMMAS[word], "01") if i in verbs else ("-", "-")
        pos = _pos(word, etype, words[i - 1][0] if i else "")
        rows.append(
            [doc_id, "0", str(i), word, pos, parse, lemma, frame, "-", "-", ne[i], *(c[i] for c in srl), "-"]
        )
    # Right-aligned columns, as the OntoNotes files are laid out; readers split on whitespace.
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ("   ".join(cell.rjust(wd) for cell, wd in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(lines) + "\n"


def _write_conll2012(job: _Job) -> str:
    """Event sentences with their frames, ten per `#begin document` block."""
    w, out = job.world, []
    picks = job.cycle(len(w.events))
    staff = {o: [p for p, per in enumerate(w.people) if per.org == o] for o in range(len(w.orgs))}
    for k in range(job.count):
        doc_id = f"synthetic/world/{k // 10:04d}"  # ten sentences per document
        if k % 10 == 0:
            out.append(("#end document\n" if k else "") + f"#begin document ({doc_id}); part 000\n")
        event = w.events[next(picks)]
        # The reporter is a colleague of the agent when there is one: a plausible source.
        colleagues = [p for p in staff[w.people[event.agent].org] if p not in (event.agent, event.patient)]
        reporter = job.rng.choice(colleagues or [p for p in range(len(w.people)) if p != event.agent])
        reporting = job.rng.choice(list(W.REPORTING))
        values = {**W.event_values(w, event), "r": (w.people[reporter].name, "Peop"), "rv": (reporting, "")}
        template = job.rng.choices(CONLL2012, weights=(3, 2, 2, 2, 3))[0]
        out.append(_conll2012_sentence(doc_id, render(template, values)) + "\n")
    return "".join(out) + "#end document\n"


# ---------------------------------------------------------------------------- registry, cache
# fmt: off
WRITERS: dict[str, Callable[[_Job], str]] = {
    "documents": _write_documents, "shuffled": _write_shuffled, "dialogues": _write_dialogues,
    "conll04": _write_conll04, "conll2012": _write_conll2012, "pairs": _write_pairs, "squad": _write_squad,
    "articles": _write_articles,
    "claims": _write_claims, "types": _write_types,
}
# corpus -> (format name the readers know, file extension)
CORPUS_FORMATS: dict[str, tuple[str, str]] = {
    "documents": ("text", "txt"), "shuffled": ("text", "txt"), "dialogues": ("dailydialog", "txt"),
    "conll04": ("conll04", "corp"), "conll2012": ("conll2012", "gold_conll"), "pairs": ("tsv", "tsv"),
    "squad": ("squad", "json"), "articles": ("jsonl", "jsonl"), "claims": ("tsv", "tsv"),
    "types": ("tsv", "tsv"),
}
# fmt: on


def cache_dir() -> Path:
    """$METAPT_CACHE if set, else $XDG_CACHE_HOME/metapt, else ~/.cache/metapt."""
    if os.environ.get("METAPT_CACHE"):
        return Path(os.environ["METAPT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg, "metapt") if xdg else Path.home() / ".cache" / "metapt"


def split_count(size: int, split: str, eval_size: int = 0) -> int:
    """Examples in a split: `size` for train; `eval_size`, or a fifth of `size` (at least one), for
    validation and test."""
    return size if split == "train" else eval_size or max(1, size // 5)


def generate(corpus: str, size: int, seed: int, split: str, eval_size: int = 0) -> tuple[str, Path]:
    """Write (once; cached) the corpus split in its real format and return (format name, file path)."""
    if corpus not in CORPUS_FORMATS:
        raise DataError(f"unknown synthetic corpus {corpus!r}; allowed: {', '.join(CORPUS_FORMATS)}")
    if split not in SPLITS or size < 1 or seed < 0:
        raise DataError(
            f"synthetic {corpus}: need split in {SPLITS}, size >= 1 and seed >= 0; "
            f"got split={split!r}, size={size}, seed={seed}"
        )
    fmt, ext = CORPUS_FORMATS[corpus]
    path = (
        cache_dir()
        / "synthetic"
        / f"v{GENERATOR_VERSION}"
        / f"{corpus}-seed{seed}-size{size}{f'-eval{eval_size}' if eval_size else ''}-{split}.{ext}"
    )
    intact = sums.file_intact(path) if path.exists() else None  # None: unsealed (older metapt, a crash)
    if intact:
        return fmt, path
    rng = random.Random(f"metapt:{seed}:{corpus}:{split}")
    count, eval_count = split_count(size, split, eval_size), split_count(size, "validation", eval_size)
    job = _Job(W.build_world(seed), rng, seed, corpus, split, size, count, eval_count)
    data = WRITERS[corpus](job).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    sums.write_atomically(path, data)
    sums.seal_file(path)  # after the file: a file without its sum is rebuilt, never trusted
    if intact is False:
        log.warning("metapt: cache entry %s was damaged; rebuilt", path)
    return fmt, path
