"""Every registry pair agrees. A spec is checked against torch-free name lists (metapt/catalog.py, the
spec's own choices) so `metapt validate` needs no model; each list has one name and its twin, the
registry beside what it lists, another. A new entry on one side only fails here, not in a user's run."""

from __future__ import annotations

import dataclasses

import pytest

from metapt import catalog, policies, reporting, schedulers
from metapt.data import readers, synthetic
from metapt.kinds import IMPLEMENTATIONS, heads, losses
from metapt.spec import MetaSpec

# (what, the names a spec may use, the names the implementing registry has)
PAIRS = [
    ("kinds", list(catalog.KINDS), list(IMPLEMENTATIONS)),
    ("schedulers", sorted(catalog.SCHEDULERS), sorted(["meta", *schedulers.BASELINES])),
    ("heads", sorted(catalog.HEAD_TYPES), sorted(heads.HEADS)),
    ("losses", sorted(catalog.LOSS_TYPES), sorted(losses.LOSSES)),
    ("report_to backends", sorted(catalog.REPORT_TO), sorted(reporting.BACKENDS)),
    ("local data formats", sorted(set(catalog.FORMATS) - {"hf", "synthetic"}), sorted(readers.READERS)),
    ("synthetic corpora (formats)", sorted(catalog.SYNTHETIC_CORPORA), sorted(synthetic.CORPUS_FORMATS)),
    ("synthetic corpora (writers)", sorted(catalog.SYNTHETIC_CORPORA), sorted(synthetic.WRITERS)),
    (
        "policies",
        sorted({f.name: f for f in dataclasses.fields(MetaSpec)}["policy"].metadata["choices"]),
        sorted(policies.POLICIES),
    ),
]


@pytest.mark.parametrize(("what", "named", "implemented"), PAIRS, ids=[p[0] for p in PAIRS])
def test_registry_pair_agrees(what: str, named: list[str], implemented: list[str]) -> None:
    assert named == implemented, f"{what}: the spec's names and the registry differ"


def test_every_kind_names_only_heads_and_losses_that_exist() -> None:
    for name, info in catalog.KINDS.items():
        assert set(info.heads) <= set(heads.HEADS) and set(info.losses) <= set(losses.LOSSES), name


def test_every_source_kind_says_where_its_text_is() -> None:
    """The WordPiece reads a source's text from the fields its entry names; targets are never read."""
    for name, info in catalog.KINDS.items():
        if info.role == "source":
            assert info.text and set(info.text) <= {*info.fields, "text", "sentences"}, name
        else:
            assert info.text == (), name
    assert {k: v.suffix for k, v in catalog.KINDS.items() if v.suffix != "jsonl"} == {
        "classification": "tsv",
        "regression": "tsv",
        "srl": "props",
        "extractive_qa": "json",
    }


def test_a_kind_is_its_modules_functions_by_name() -> None:
    """Kind.of reads the contract's functions off a module; a module missing one is refused by name."""
    from types import ModuleType

    from metapt.kinds import word_tags
    from metapt.kinds.base import Kind

    implementation = IMPLEMENTATIONS["capitalization_prediction"]
    assert (implementation.collate, implementation.score) == (word_tags.collate, word_tags.score)
    partial = ModuleType("partial_kind")
    partial.prepare = partial.encode = lambda *a: None
    with pytest.raises(
        TypeError, match="partial_kind lacks the kind function.s. collate, head, predict, score"
    ):
        Kind.of(partial)
