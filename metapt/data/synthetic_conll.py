"""The synthetic corpora in CoNLL formats: `conll04` (Roth & Yih .corp, entities and relations) and
`conll2012` (OntoNotes *_gold_conll columns, SRL frames and named entities), from the same world.
A change to the bytes written needs synthetic.GENERATOR_VERSION bumped."""

from __future__ import annotations

from metapt.data import world as W
from metapt.data.sentences import Sentence, render
from metapt.data.synthetic_text import Job, random_values

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


def write_conll04(job: Job) -> str:
    """Roth & Yih .corp sentences stating 0-2 relations of the world."""
    blocks = []
    for k in range(job.count):
        source = job.rng.choices(list(_C04_WEIGHTS), weights=list(_C04_WEIGHTS.values()))[0]
        template, rels = job.rng.choice(CONLL04[source])
        sent = render(template, random_values(job.world, job.rng, source))
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


def write_conll2012(job: Job) -> str:
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
