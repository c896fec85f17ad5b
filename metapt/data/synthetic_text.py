"""The synthetic corpora that state the world's facts in running text and questions: `documents`,
`shuffled` (its words, no facts), `articles`, `dialogues`, `squad`, `pairs`, `claims` and `types`, each
written by one function of a Job (what one corpus split needs). synthetic.py lists and caches them:
a change to the bytes written needs synthetic.GENERATOR_VERSION bumped."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

from metapt.data import lexicon
from metapt.data import world as W
from metapt.data.sentences import Sentence, Stated, document, render
from metapt.data.world import Ent, World


@dataclass(frozen=True)
class Job:
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
def _subject_documents(job: Job) -> list[tuple[tuple[str, int], list[Stated]]]:
    """(the entity it is about, the document) for entities taken in the split's order (each entity
    many times when size is large)."""
    pool = W.entity_pool(job.world)
    picks = job.cycle(len(pool))
    subjects = [pool[next(picks)] for _ in range(job.count)]
    return [(subject, document(job.world, *subject, job.rng)) for subject in subjects]


def _documents(job: Job) -> list[list[Stated]]:
    """Documents about entities taken in the split's order (each entity many times when size is large)."""
    return [doc for _, doc in _subject_documents(job)]


def write_documents(job: Job) -> str:
    """One sentence per line, a blank line between documents."""
    docs = _documents(job)
    return "\n\n".join("\n".join(s.sentence.text for s in doc) for doc in docs) + "\n"


def write_shuffled(job: Job) -> str:
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


def write_articles(job: Job) -> str:
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


def write_dialogues(job: Job) -> str:
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


def write_squad(job: Job) -> str:
    """SQuAD v1.1 JSON: one paragraph per document, 2-4 questions each, exactly `count` questions."""
    pool, data, n = W.entity_pool(job.world), [], 0
    picks = job.cycle(len(pool))
    while n < job.count:
        kind, i = pool[next(picks)]
        doc = document(job.world, kind, i, job.rng)
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


def random_values(w: World, rng: random.Random, source: str) -> dict[str, Ent]:
    """Slot values of a random person, organisation, kill, or other event."""
    if source == "person":
        return W.person_values(w, rng.randrange(len(w.people)))
    if source == "org":
        return W.org_values(w, rng.randrange(len(w.orgs)))
    events = [e for e in w.events if (e.verb == "killed") == (source == "kill")]
    return W.event_values(w, rng.choice(events))


def write_pairs(job: Job) -> str:
    """RTE-style TSV; a negative hypothesis swaps one entity so that it is false in the world."""
    rows = ["index\tsentence1\tsentence2\tlabel"]
    for k in range(job.count):
        source, premise, hypotheses = job.rng.choice(PAIRS)
        values = random_values(job.world, job.rng, source)
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


def write_claims(job: Job) -> str:
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


def write_types(job: Job) -> str:
    """TSV of words in neutral frames (index, sentence, label: the word's type), words disjoint across splits."""
    return lexicon.write_types(job.world, job.seed, job.split, job.count)
