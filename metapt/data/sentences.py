"""How the synthetic world is said: a sentence is rendered from a template whose `{slot}`s are filled
with entities, and `<k:ROLE ... >` marks the span of semantic role ROLE of the k-th predicate (used by
the CoNLL-2012 writer); each fact kind has its statements and the questions they answer, and a
document states some facts of one entity."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from metapt.data.world import Ent, Fact, World, entity_facts


@dataclass(frozen=True)
class Sentence:
    """A rendered sentence: segments (text, type, slot) and role spans (predicate, role, first, last seg)."""

    segs: tuple[tuple[str, str, str], ...]
    roles: tuple[tuple[int, str, int, int], ...] = ()

    @property
    def text(self) -> str:
        """The words joined by single spaces (so character offsets are easy to compute)."""
        return " ".join(s[0] for s in self.segs)

    def index(self, slot: str) -> int:
        """The segment holding `slot`."""
        return next(k for k, s in enumerate(self.segs) if s[2] == slot)


@lru_cache(maxsize=512)
def _parse(template: str) -> tuple[tuple[str, str], ...]:
    """A template as (op, arg) steps: open "k:ROLE", close, slot name, or literal word."""
    ops = {"<": "open", ">": "close", "{": "slot"}
    return tuple((ops.get(t[0], "word"), t.strip("<{}")) for t in template.split())


def render(template: str, values: dict[str, Ent]) -> Sentence:
    """Fill a template: `{slot}` becomes one segment; `<k:ROLE` ... `>` records a role span of predicate k."""
    segs: list[tuple[str, str, str]] = []
    roles: list[tuple[int, str, int, int]] = []
    open_: list[tuple[int, str, int]] = []
    for op, arg in _parse(template):
        if op == "open":
            pred, role = arg.split(":")
            open_.append((int(pred), role, len(segs)))
        elif op == "close":
            pred, role, start = open_.pop()
            roles.append((pred, role, start, len(segs) - 1))
        elif op == "slot":
            text, kind = values[arg]
            if kind:
                segs.append((text, kind, arg))
            else:  # plain words stay one segment per word, as literal words do
                segs.extend((word, "", arg) for word in text.split())
        else:
            segs.append((arg, "", ""))
    return Sentence(tuple(segs), tuple(sorted(roles)))


# Fact kind -> [(sentence template, [(question template, answer slot)])]: how documents state a fact
# and how QA and dialogues ask about it.
# fmt: off
STATEMENTS: dict[str, list[tuple[str, list[tuple[str, str]]]]] = {
    "work": [("{p} works for {o} .", [("Who does {p} work for ?", "o"), ("Where does {p} work ?", "o")]),
             ("{p} is {ja} {j} at {o} .",
              [("Where does {p} work ?", "o"), ("What is the job of {p} ?", "j")]),
             ("{p} has a job at {o} .", [("Which company employs {p} ?", "o")])],
    "job": [("{p} works as {ja} {j} .", [("What does {p} do for a living ?", "j")]),
            ("By profession , {p} is {ja} {j} .", [("What is the profession of {p} ?", "j")])],
    "live": [("{p} lives in {c} .", [("Where does {p} live ?", "c")]),
             ("{p} has a home in {c} .", [("In which city does {p} live ?", "c")]),
             ("{p} moved to {c} years ago .", [("Where does {p} live ?", "c")])],
    "born": [("{p} was born in {y} .", [("When was {p} born ?", "y")]),
             ("{p} was born in the year {y} .", [("In which year was {p} born ?", "y")])],
    "event": [("{a} {v} {b} in {c} {tp} {t} .",
               [("Who {v} {b} in {c} ?", "a"), ("Where did {a} {l} {b} ?", "c")]),
              ("{TP} {t} , {a} {v} {b} in {c} .",
               [("When did {a} {l} {b} ?", "t"), ("Who did {a} {l} in {c} ?", "b")]),
              ("{b} was {v} by {a} in {c} {tp} {t} .",
               [("Who {v} {b} ?", "a"), ("Where was {b} {v} by {a} ?", "c")])],
    "based": [("{o} is based in {c} .", [("Where is {o} based ?", "c")]),
              ("{o} has its headquarters in {c} , {n} .", [("Where are the headquarters of {o} ?", "c")]),
              ("The offices of {o} are in {c} .", [("In which city are the offices of {o} ?", "c")])],
    "founded": [("{o} was founded in {y} .", [("When was {o} founded ?", "y")]),
                ("{o} opened its doors in {y} .", [("In which year did {o} open ?", "y")])],
    "industry": [("{o} is {ia} {i} company .", [("What business is {o} in ?", "i")]),
                 ("{o} works in the {i} business .", [("In which business does {o} work ?", "i")])],
    "lead": [("{p} leads {o} .", [("Who leads {o} ?", "p")]),
             ("{p} is the head of {o} .", [("Who is the head of {o} ?", "p")])],
    "loc": [("{c} is a city in {n} .", [("In which country is {c} ?", "n")]),
            ("{c} lies in {n} .", [("Where does {c} lie ?", "n")]),
            ("{c} is located in {n} .", [("Where is {c} located ?", "n")])],
}
# fmt: on


@dataclass(frozen=True)
class Stated:
    """A sentence stating a fact and the questions it answers (rendered on demand: most corpora need none)."""

    sentence: Sentence
    values: dict[str, Ent]
    questions: tuple[tuple[str, str], ...]  # (question template, answer slot)

    def asked(self) -> list[tuple[str, str]]:
        """The questions as text, each with the slot of its answer."""
        return [(render(q, self.values).text, slot) for q, slot in self.questions]


def state(fact: Fact, rng: random.Random, pronoun: bool = False) -> Stated:
    """One sentence stating `fact` with a random template; `pronoun` replaces a leading subject name."""
    kind, values, subj = fact
    template, questions = rng.choice(STATEMENTS[kind])
    sent = render(template, values)
    if pronoun and sent.segs[0][2] == subj:  # why: varied surface forms, and QA that needs coreference
        sent = Sentence(((values["pr"][0], "", "pr"), *sent.segs[1:]), sent.roles)
    return Stated(sent, values, tuple(questions))


def document(w: World, kind: str, i: int, rng: random.Random) -> list[Stated]:
    """A 4-8 sentence document about one entity: its introducing fact, then a random sample of others."""
    facts = entity_facts(w, kind, i)
    n = rng.randint(4, 8)
    chosen = [facts[0], *rng.sample(facts[1:], min(n, len(facts)) - 1)]
    return [state(f, rng, pronoun=k > 0 and rng.random() < 0.3) for k, f in enumerate(chosen)]
