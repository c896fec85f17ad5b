"""The `types` corpus (closed-book word typing): every word labelled with its type in the world, the
splits' words disjoint, every type the world uses taught in train, and every word weighted alike."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from conftest import REPO

from metapt.data import lexicon
from metapt.data.world import CITIES, build_world
from metapt.validation import parse_task

# A fixture-sized world: 4 people, 2 organisations, 6 events (the 40 cities are the world's constant).
# Read off by hand from build_world(5, 4, 2, 6): Ivan Horvat (chemist), Liam Kim (banker), Karin Okafor
# (economist), David Kim (pilot); Evergreen Press (insurance), Lumen Press (retail); event times
# 2020, Thursday, 2018, 2012, 2020, Wednesday (years are no type: no months, two days).
HAND = {
    **{w: "first_name" for w in ("Ivan", "Liam", "Karin", "David")},
    **{w: "surname" for w in ("Horvat", "Kim", "Okafor")},
    "Evergreen": "org_name", "Lumen": "org_name", "Press": "org_suffix",
    **{w: "job" for w in ("chemist", "banker", "economist", "pilot")},
    "insurance": "industry", "retail": "industry", "Thursday": "day", "Wednesday": "day",
    **{c: "city" for c, _ in CITIES}, **{n: "country" for _, n in CITIES},
}  # fmt: skip


def _rows(split: str, count: int) -> list[tuple[str, str, str]]:
    """(sentence, word, label) rows of the fixture world's split."""
    text = lexicon.write_types(build_world(5, 4, 2, 6), 5, split, count)
    lines = [line.split("\t") for line in text.splitlines()]
    assert lines[0] == ["index", "sentence", "label"]
    assert [int(i) for i, _, _ in lines[1:]] == list(range(count))
    # The frames are "W .", "W ?" and "It is W ."
    return [(s, re.fullmatch(r"(?:It is )?(.+) [.?]", s)[1], label) for _, s, label in lines[1:]]


def test_types_label_each_word_by_the_world_in_disjoint_splits() -> None:
    # Split sizes per type: 40 cities 16/12/12, 17 countries 7/5/5, 4 first names and 4 jobs 2/1/1,
    # 3 surnames 1/1/1; types of 1-2 words only in train (validation and test get as many as each other).
    sizes = {"train": 16 + 7 + 2 + 1 + 2 + 1 + 2 + 2 + 2, "validation": 12 + 5 + 1 + 1 + 1, "test": 20}
    assert sizes["train"] == 35
    seen = {}
    for split, n in sizes.items():
        rows = _rows(split, 3 * n)  # three frames per word: each (frame, word) once
        assert len({s for s, _, _ in rows}) == 3 * n
        words = Counter(w for _, w, _ in rows)
        assert len(words) == n and set(words.values()) == {3}
        assert all(label == HAND[w] for _, w, label in rows), rows
        seen[split] = set(words)
    assert not seen["train"] & seen["validation"] and not seen["train"] & seen["test"]
    assert not seen["validation"] & seen["test"]
    assert seen["train"] | seen["validation"] | seen["test"] == set(HAND)
    train_types = {HAND[w] for w in seen["train"]}
    assert train_types == set(lexicon.TYPES) - {"month"}  # every type the world uses; it has no month
    assert {HAND[w] for w in seen["validation"]} == {"city", "country", "first_name", "surname", "job"}


def test_the_shipped_spec_weights_every_word_of_the_default_world_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    spec = parse_task(REPO / "tasks" / "synthetic" / "types-synthetic.toml", check_data=False)
    assert spec.kind == "classification" and list(spec.options["labels"]) == list(lexicon.TYPES)
    every = [w for words in lexicon.lexicon(build_world(0)).values() for w in words]
    assert len(every) == len(set(every)) == 196  # no word has two types: every label is unambiguous
    words = {s: sum(map(len, lexicon.split_words(build_world(0), 0, s).values())) for s in ("train", "test")}
    assert words == {"train": 80, "test": 58}
    n_frames = len(lexicon.TEMPLATES)
    assert (spec.data.size, spec.data.eval_size) == (n_frames * 80, n_frames * 58)
