"""The synthetic world: people, organisations and places, the facts between them, and events.

Everything here depends only on the world seed, so every synthetic corpus built with the same seed
talks about the same world: a fact stated in `documents` is the fact that `squad` asks about.
How the facts are said, in sentences and questions, is in sentences.py.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from functools import lru_cache

# fmt: off
FIRST_NAMES = tuple(tuple(x.split(":")) for x in (
    "Alice:f Bob:m Carla:f David:m Elena:f Farid:m Grace:f Hugo:m Ines:f Jonas:m Karin:f Liam:m Maya:f "
    "Nikolai:m Olivia:f Pedro:m Rosa:f Samuel:m Tara:f Victor:m Wendy:f Yusuf:m Zoe:f Omar:m Hana:f Ivan:m "
    "Lucia:f Marco:m Nadia:f Oscar:m").split())
SURNAMES = tuple(
    "Moreau Tanaka Weber Garcia Okafor Novak Larsen Rossi Kowalski Silva Chen Murphy Haddad Ivanova Jensen "
    "Kim Lopez Mendes Nakamura Olsen Patel Quinn Schmidt Dubois Fischer Bianchi Costa Horvat Sato "
    "Walsh".split())
ORG_STEMS = tuple(
    "Acme Zenith Orion Beacon Summit Harbor Vertex Nimbus Falcon Granite Meridian Cobalt Aurora Pioneer "
    "Sterling Atlas Crescent Evergreen Keystone Lumen Northwind Quartz Redwood Silverline Titan Unity "
    "Vanguard Willow".split())
ORG_SUFFIXES = ("Corp", "Group", "Labs", "Bank", "Press", "Motors", "Systems", "Partners")
# (city, country): real names, a few of two words (one CoNLL04 token, several CoNLL-2012 words).
CITIES = tuple(tuple(x.replace("_", " ").split(":")) for x in (
    "Lyon:France Paris:France Marseille:France Berlin:Germany Munich:Germany Hamburg:Germany Madrid:Spain "
    "Seville:Spain Valencia:Spain Rome:Italy Milan:Italy Naples:Italy Lisbon:Portugal Porto:Portugal "
    "Dublin:Ireland Cork:Ireland Oslo:Norway Bergen:Norway Warsaw:Poland Krakow:Poland Tokyo:Japan "
    "Osaka:Japan Kyoto:Japan Toronto:Canada Montreal:Canada Vancouver:Canada Santiago:Chile "
    "Valparaiso:Chile Nairobi:Kenya Mombasa:Kenya Cape_Town:South_Africa Durban:South_Africa "
    "Lagos:Nigeria Abuja:Nigeria Mumbai:India Delhi:India Buenos_Aires:Argentina Cordoba:Argentina "
    "Auckland:New_Zealand Wellington:New_Zealand").split())
JOBS = tuple("engineer lawyer doctor teacher reporter chemist designer banker pilot nurse architect "
             "accountant editor analyst economist".split())
INDUSTRIES = tuple("software banking shipping media energy food retail insurance mining travel".split())
# Event times: a day, a month or a year.
DAYS = tuple("Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split())
MONTHS = tuple("January February March April May June July August September October November "
               "December".split())
YEARS = tuple(str(y) for y in range(2000, 2021))
# Past form -> lemma. "killed" events become the Kill relation of CoNLL04.
VERBS = dict(x.split(":") for x in (
    "hired:hire met:meet called:call visited:visit interviewed:interview praised:praise paid:pay "
    "thanked:thank helped:help sued:sue invited:invite warned:warn killed:kill").split())
# fmt: on
REPORTING = {"said": "say", "reported": "report", "announced": "announce", "confirmed": "confirm"}
LEMMAS = {**VERBS, **REPORTING}

Ent = tuple[str, str]  # (text, type): type is Peop, Org, Loc, Other for entities, "" for plain words
Fact = tuple[str, dict[str, Ent], str]  # (fact kind, slot values, the slot naming the entity it is about)


@dataclass(frozen=True)
class Person:
    name: str
    gender: str
    job: str
    org: int
    city: int
    born: int


@dataclass(frozen=True)
class Org:
    name: str
    industry: str
    city: int
    founded: int
    leader: int


@dataclass(frozen=True)
class Event:
    agent: int
    patient: int
    verb: str
    city: int
    time: str


@dataclass(frozen=True)
class World:
    people: tuple[Person, ...]
    orgs: tuple[Org, ...]
    cities: tuple[tuple[str, str], ...]
    events: tuple[Event, ...]
    truths: frozenset[tuple[str, ...]] = frozenset()  # (fact kind, *names) of every true fact, see holds()
    # A cache of entity_facts(): documents revisit the same entities many times.
    facts: dict[tuple[str, int], list[Fact]] = field(default_factory=dict, compare=False, repr=False)


def article(word: str) -> str:
    """The indefinite article before `word`."""
    return "an" if word[0] in "aeiou" else "a"


@lru_cache(maxsize=8)
def build_world(seed: int, n_people: int = 200, n_orgs: int = 60, n_events: int = 800) -> World:
    """The world of `seed`: people, organisations, the 40 cities and events, all drawn from one Random."""
    rng = random.Random(f"metapt-world:{seed}")
    names = [(f"{f} {s}", g) for f, g in FIRST_NAMES for s in SURNAMES]
    stems = [f"{a} {b}" for a in ORG_STEMS for b in ORG_SUFFIXES]
    people_names, org_names = rng.sample(names, n_people), rng.sample(stems, n_orgs)
    # Every organisation gets at least one employee, so its documents can name one.
    org_of = [i % n_orgs if i < n_orgs else rng.randrange(n_orgs) for i in range(n_people)]
    people = tuple(
        Person(name, g, rng.choice(JOBS), org_of[i], rng.randrange(len(CITIES)), rng.randint(1950, 2000))
        for i, (name, g) in enumerate(people_names)
    )
    staff = [[p for p in range(n_people) if people[p].org == o] for o in range(n_orgs)]
    orgs = tuple(
        Org(
            name,
            rng.choice(INDUSTRIES),
            rng.randrange(len(CITIES)),
            rng.randint(1850, 2015),
            rng.choice(staff[o]),
        )
        for o, name in enumerate(org_names)
    )
    events: list[Event] = []
    seen: set[tuple] = set()
    plain = [v for v in VERBS if v != "killed"]
    while len(events) < n_events:
        i = len(events)
        a, b = rng.sample(range(n_people), 2)
        verb = "killed" if i % 20 == 0 else rng.choice(plain)  # a few kills, so Kill is never empty
        city = i % len(CITIES) if i < 4 * len(CITIES) else rng.randrange(len(CITIES))  # >= 4 per city
        time = rng.choice(DAYS) if rng.random() < 0.6 else rng.choice(MONTHS + YEARS)
        # (verb, patient) and (agent, verb, city) are unique, so every question about an event
        # ("who hired B?", "who did A hire in C?") has exactly one answer.
        if (verb, b) not in seen and (a, verb, city) not in seen:
            seen.update([(verb, b), (a, verb, city)])
            events.append(Event(a, b, verb, city, time))
    world = World(people, orgs, CITIES, tuple(events))
    return dataclasses.replace(world, truths=_truths(world))


def person_values(w: World, p: int) -> dict[str, Ent]:
    """Slot values of a person: name, pronoun, job, employer, city and country, birth year."""
    per = w.people[p]
    city, country = w.cities[per.city]
    return {
        "p": (per.name, "Peop"),
        "pr": ("She" if per.gender == "f" else "He", ""),
        "j": (per.job, ""),
        "ja": (article(per.job), ""),
        "o": (w.orgs[per.org].name, "Org"),
        "c": (city, "Loc"),
        "n": (country, "Loc"),
        "y": (str(per.born), "Other"),
    }


def org_values(w: World, o: int) -> dict[str, Ent]:
    """Slot values of an organisation: name, industry, city and country, founding year, leader."""
    org = w.orgs[o]
    city, country = w.cities[org.city]
    return {
        "o": (org.name, "Org"),
        "pr": ("It", ""),
        "i": (org.industry, ""),
        "ia": (article(org.industry), ""),
        "c": (city, "Loc"),
        "n": (country, "Loc"),
        "y": (str(org.founded), "Other"),
        "p": (w.people[org.leader].name, "Peop"),
    }


def event_values(w: World, e: Event) -> dict[str, Ent]:
    """Slot values of an event: agent a, patient b, verb v and lemma l, city c, time t with preposition."""
    prep = "on" if e.time in DAYS else "in"
    return {
        "a": (w.people[e.agent].name, "Peop"),
        "b": (w.people[e.patient].name, "Peop"),
        "v": (e.verb, ""),
        "l": (VERBS[e.verb], ""),
        "c": (w.cities[e.city][0], "Loc"),
        "n": (w.cities[e.city][1], "Loc"),
        "t": (e.time, "Other"),
        "tp": (prep, ""),
        "TP": (prep.title(), ""),
    }


def entity_facts(w: World, kind: str, i: int) -> list[Fact]:
    """The facts about one person, organisation or city; the first one introduces it."""
    if (kind, i) not in w.facts:
        w.facts[kind, i] = _entity_facts(w, kind, i)
    return w.facts[kind, i]


def _entity_facts(w: World, kind: str, i: int) -> list[Fact]:
    """entity_facts() without the cache."""
    if kind == "person":
        v = person_values(w, i)
        events = [
            ("event", {**event_values(w, e), "pr": v["pr"]}, "a" if e.agent == i else "b")
            for e in w.events
            if i in (e.agent, e.patient)
        ]
        return [("work", v, "p"), ("job", v, "p"), ("live", v, "p"), ("born", v, "p"), *events]
    if kind == "org":
        v = org_values(w, i)
        staff = [("work", person_values(w, p), "o") for p, per in enumerate(w.people) if per.org == i]
        return [("based", v, "o"), ("founded", v, "o"), ("industry", v, "o"), ("lead", v, "o"), *staff]
    city, country = w.cities[i]
    v = {"c": (city, "Loc"), "n": (country, "Loc"), "pr": ("It", "")}
    residents = [("live", person_values(w, p), "c") for p, per in enumerate(w.people) if per.city == i]
    based = [("based", org_values(w, o), "c") for o, org in enumerate(w.orgs) if org.city == i]
    events = [("event", event_values(w, e), "c") for e in w.events if e.city == i]
    return [("loc", v, "c"), *residents, *based, *events]


# Fact kind -> the slots whose texts identify a fact of that kind in World.truths.
KEYS = {"work": "po", "live": "pc", "live_country": "pn", "based": "oc", "founded": "oy", "event": "avb"}


def holds(w: World, kind: str, v: dict[str, Ent]) -> bool:
    """Whether a fact of `kind` with slot values `v` is true in the world."""
    return (kind, *(v[s][0] for s in KEYS[kind])) in w.truths


def _truths(w: World) -> frozenset[tuple[str, ...]]:
    """Every true fact as (kind, *slot texts): all facts about people (events included) and organisations."""
    facts = [
        f
        for kind, n in (("person", len(w.people)), ("org", len(w.orgs)))
        for i in range(n)
        for f in entity_facts(w, kind, i)
    ]
    facts += [("live_country", v, s) for kind, v, s in facts if kind == "live"]
    return frozenset((kind, *(v[s][0] for s in KEYS[kind])) for kind, v, _ in facts if kind in KEYS)


def falsify(w: World, rng: random.Random, kind: str, values: dict[str, Ent], slots: str) -> dict[str, Ent]:
    """Replace one slot with another entity of the same type so that the fact becomes false."""
    while True:
        slot = rng.choice(slots)
        old_text, etype = values[slot]
        if slot in "pab":
            text = rng.choice(w.people).name
        elif slot == "o":
            text = rng.choice(w.orgs).name
        elif slot in "cn":
            text = rng.choice(w.cities)["cn".index(slot)]
        else:
            text = str(rng.randint(1850, 2015))
        new = {**values, slot: (text, etype)}
        if text != old_text and not holds(w, kind, new):
            return new


ENTITIES = ("person", "org", "place")


def entity_pool(w: World) -> list[tuple[str, int]]:
    """Every entity a document can be about, as (kind, index)."""
    sizes = (len(w.people), len(w.orgs), len(w.cities))
    return [(kind, i) for kind, n in zip(ENTITIES, sizes, strict=True) for i in range(n)]


def entity_name(w: World, kind: str, i: int) -> str:
    """The name of entity `i` of `kind`."""
    return w.people[i].name if kind == "person" else w.orgs[i].name if kind == "org" else w.cities[i][0]
