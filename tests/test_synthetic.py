"""The synthetic world: deterministic bytes, exact counts in each real format, a working cache, and
corpora that carry (or, for `shuffled`, do not carry) the world's facts."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from metapt.data import synthetic, synthetic_text
from metapt.data.synthetic import CORPUS_FORMATS, generate
from metapt.data.world import build_world, holds
from metapt.errors import DataError

CORPORA = tuple(CORPUS_FORMATS)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes to its own cache folder."""
    monkeypatch.setenv("METAPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _text(corpus: str, size: int = 20, split: str = "train", seed: int = 0) -> str:
    return generate(corpus, size, seed, split)[1].read_text(encoding="utf-8")


def _conll2012_sentences(text: str) -> list[list[list[str]]]:
    """Sentences of a *_gold_conll file as lists of whitespace-split token lines."""
    blocks = re.split(r"\n\s*\n", re.sub(r"^#(begin|end) document.*$", "", text, flags=re.M))
    return [[line.split() for line in b.strip().splitlines()] for b in blocks if b.strip()]


def _conll04_sentences(text: str) -> list[tuple[list[list[str]], list[list[str]]]]:
    """Sentences of a .corp file as (token lines, relation lines), each line split on tabs."""
    sentences = []
    for line in text.splitlines():
        cells = line.split("\t")
        if len(cells) == 9:
            if not sentences or sentences[-1][0][-1][0] != cells[0]:
                sentences.append(([], []))
            sentences[-1][0].append(cells)
        elif len(cells) == 3:
            sentences[-1][1].append(cells)
    return sentences


def _count(corpus: str, text: str) -> int:
    """Examples in a file, by the plainest parse of its format."""
    if corpus in ("documents", "shuffled"):
        return len([d for d in text.split("\n\n") if d.strip()])
    if corpus == "dialogues":
        return len([line for line in text.splitlines() if line.endswith(" __eou__")])
    if corpus == "conll04":
        return len(_conll04_sentences(text))
    if corpus == "conll2012":
        return len(_conll2012_sentences(text))
    if corpus in ("pairs", "claims", "types"):
        return len(text.splitlines()) - 1
    return text.count('"id"')


@pytest.mark.parametrize("corpus", CORPORA)
def test_same_seed_same_bytes_different_seed_different_bytes(
    corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        monkeypatch.setenv("METAPT_CACHE", str(tmp_path / name))
        files.append(generate(corpus, 20, seed, "validation")[1].read_bytes())
    assert files[0] == files[1]
    assert files[0] != files[2]


def test_bytes_do_not_depend_on_the_process(tmp_path: Path) -> None:
    """Another interpreter with another hash seed writes the same bytes (no hash() or set order leaks)."""
    code = f"from metapt.data.synthetic import generate\nfor c in {CORPORA!r}: generate(c, 30, 1, 'train')"
    for name, hash_seed in (("p1", "1"), ("p2", "2")):
        env = {**os.environ, "METAPT_CACHE": str(tmp_path / name), "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=Path(__file__).parents[1])
    for corpus in CORPORA:
        (a,) = (tmp_path / "p1").rglob(f"{corpus}-*")
        assert a.read_bytes() == (tmp_path / "p2" / a.relative_to(tmp_path / "p1")).read_bytes()


@pytest.mark.parametrize("corpus", CORPORA)
def test_exact_counts_per_split(corpus: str) -> None:
    counts = {split: _count(corpus, _text(corpus, 20, split)) for split in ("train", "validation", "test")}
    assert counts == {"train": 20, "validation": 4, "test": 4}
    assert _count(corpus, _text(corpus, 3, "test")) == 1  # at least one example


def test_file_names_carry_the_cache_key(cache: Path) -> None:
    fmt, path = generate("conll2012", 20, 7, "test")
    assert fmt == "conll2012"
    assert (
        path
        == cache / "synthetic" / f"v{synthetic.GENERATOR_VERSION}" / "conll2012-seed7-size20-test.gold_conll"
    )
    formats = [generate(c, 20, 0, "train")[0] for c in CORPORA]
    assert formats == [
        "text",
        "text",
        "dailydialog",
        "conll04",
        "conll2012",
        "tsv",
        "squad",
        "jsonl",
        "tsv",
        "tsv",
    ]


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert synthetic.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("METAPT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert synthetic.cache_dir() == tmp_path / "xdg" / "metapt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert synthetic.cache_dir() == tmp_path / "home" / ".cache" / "metapt"


def test_text_layout() -> None:
    for corpus in ("documents", "shuffled"):
        docs = _text(corpus, 50).rstrip("\n").split("\n\n")
        assert all(4 <= len(d.splitlines()) <= 8 for d in docs)
        assert all(line.endswith(" .") for d in docs for line in d.splitlines())
    turns = [line.split(" __eou__ ") for line in _text("dialogues", 50).splitlines()]
    assert all(4 <= len(t) <= 8 and t[-1].endswith(" __eou__") for t in turns)


def test_squad_answer_offsets_and_ids() -> None:
    data = json.loads(_text("squad", 200))
    assert data["version"] == "1.1"
    qas = [(p["context"], qa) for article in data["data"] for p in article["paragraphs"] for qa in p["qas"]]
    assert len(qas) == 200
    assert len({qa["id"] for _, qa in qas}) == 200
    for context, qa in qas:
        (answer,) = qa["answers"]
        start = answer["answer_start"]
        assert context[start : start + len(answer["text"])] == answer["text"]


def test_conll2012_columns_match_the_predicates() -> None:
    text = _text("conll2012", 200)
    assert text.count("#begin document") == text.count("#end document") == 20
    sentences = _conll2012_sentences(text)
    two = 0
    for rows in sentences:
        n_preds = sum(row[6] != "-" for row in rows)  # predicate lemma column
        assert n_preds >= 1 and {len(row) for row in rows} == {12 + n_preds}
        for col in range(11, 11 + n_preds):
            cells = [row[col] for row in rows]
            assert sum(c.count("(") for c in cells) == sum(c.count(")") for c in cells)
            assert cells.count("(V*)") == 1
        two += n_preds == 2
    assert 0 < two < len(sentences)  # some sentences have two predicates, most one


def test_conll04_relations_are_true_and_some_sentences_have_none() -> None:
    world = build_world(0)
    names = {p.name for p in world.people}
    sentences = _conll04_sentences(_text("conll04", 200))
    assert len(sentences) == 200
    for tokens, relations in sentences:
        assert [int(t[2]) for t in tokens] == list(range(len(tokens)))
        for head, tail, rel in relations:
            h, t = (tokens[int(i)][5].replace("/", " ") for i in (head, tail))
            if rel == "Work_For":
                assert holds(world, "work", {"p": (h, ""), "o": (t, "")})
            if rel == "Live_In":
                assert holds(world, "live", {"p": (h, ""), "c": (t, "")})
            if rel == "Kill":
                assert h in names and t in names
    n_relations = [len(r) for _, r in sentences]
    assert min(n_relations) == 0 and max(n_relations) == 2


def test_pairs_labels_follow_the_world() -> None:
    world = build_world(0)
    rows = [line.split("\t") for line in _text("pairs", 200).splitlines()]
    assert rows[0] == ["index", "sentence1", "sentence2", "label"]
    labels = [r[3] for r in rows[1:]]
    assert 70 <= labels.count("entailment") <= 130 and set(labels) == {"entailment", "not_entailment"}
    for _, _, hypothesis, label in rows[1:]:
        found = re.fullmatch(r"(.+) (?:works for|is employed by) (.+) \.", hypothesis)
        if found:
            values = {"p": (found[1], ""), "o": (found[2], "")}
            assert holds(world, "work", values) == (label == "entailment")


def test_claims_are_labelled_by_the_world_about_subjects_no_other_split_has() -> None:
    world = build_world(0)
    countries = dict(world.cities)
    subjects = {}
    for split in ("train", "validation", "test"):
        text = generate("claims", 200, 0, split, eval_size=200)[1].read_text(encoding="utf-8")
        rows = [line.split("\t") for line in text.splitlines()]
        assert rows[0] == ["index", "sentence", "label"]
        labels = [r[2] for r in rows[1:]]
        assert 70 <= labels.count("true") <= 130 and set(labels) == {"true", "false"}
        seen, kinds = set(), set()
        for _, claim, label in rows[1:]:
            if found := re.fullmatch(r"(.+) is a city in (.+) \.", claim):
                kinds.add("loc")
                seen.add(found[1])
                assert (countries[found[1]] == found[2]) == (label == "true")
            elif found := re.fullmatch(r"(.+) is based in (.+) \.", claim):
                kinds.add("based")
                seen.add(found[1])
                assert holds(world, "based", {"o": (found[1], ""), "c": (found[2], "")}) == (label == "true")
            else:
                found = re.fullmatch(r"(.+) works for (.+) \.", claim)
                kinds.add("work")
                seen.add(found[1])
                assert holds(world, "work", {"p": (found[1], ""), "o": (found[2], "")}) == (label == "true")
        assert kinds == {"loc", "based", "work"}
        subjects[split] = seen
        pools = synthetic_text.claim_subjects(world, 0, split)
        names = {world.cities[i][0] for i in pools["cities"]} | {world.orgs[i].name for i in pools["orgs"]}
        assert seen <= names | {world.people[i].name for i in pools["people"]}
    # Finetuning on the train claims can teach no fact that validation or test scores.
    assert not subjects["train"] & subjects["validation"] and not subjects["train"] & subjects["test"]
    assert not subjects["validation"] & subjects["test"]
    sizes = {s: {k: len(v) for k, v in synthetic_text.claim_subjects(world, 0, s).items()} for s in subjects}
    assert sizes["train"] == {"cities": 8, "orgs": 12, "people": 40}
    assert sizes["validation"] == sizes["test"] == {"cities": 16, "orgs": 24, "people": 80}


def test_documents_carry_the_facts_squad_asks_and_shuffled_carries_none() -> None:
    """Every employer that squad's test split asks about is stated in the documents' train split."""
    docs = _text("documents", 2000)
    work = r"(?:Where does (.+) work|Who does (.+) work for|Which company employs (.+)) \?"
    asked = [
        (next(filter(None, m.groups())), qa["answers"][0]["text"])
        for article in json.loads(_text("squad", 500, "test"))["data"]
        for qa in article["paragraphs"][0]["qas"]
        if (m := re.fullmatch(work, qa["question"]))
    ]
    assert len(asked) >= 20
    stated = r"^{} (works for|is an? \w+ at|has a job at) {} \.$"
    assert all(re.search(stated.format(p, org), docs, re.M) for p, org in asked)
    shuffled = _text("shuffled", 200).splitlines()
    assert not set(shuffled) & set(docs.splitlines()) - {""}
    assert set(" ".join(shuffled).split()) <= set(docs.split())


def test_the_cache_is_reused_and_regenerated(cache: Path) -> None:
    _, path = generate("squad", 20, 0, "train")
    before, stamp = path.read_bytes(), path.stat().st_mtime_ns
    assert generate("squad", 20, 0, "train")[1] == path and path.stat().st_mtime_ns == stamp
    path.unlink()
    assert generate("squad", 20, 0, "train")[1].read_bytes() == before
    left = sorted(p.name for p in path.parent.iterdir())
    assert left == [f".{path.name}.sha256", path.name]  # its sum, and no temporary file left behind


def test_bad_arguments_are_data_errors() -> None:
    with pytest.raises(DataError, match="unknown synthetic corpus 'novels'.*documents"):
        generate("novels", 20, 0, "train")
    with pytest.raises(DataError, match="split='dev'"):
        generate("documents", 20, 0, "dev")


# ---------------------------------------------------------------- read back by the real readers
@pytest.mark.parametrize("corpus", CORPORA)
def test_readers_read_every_corpus_back(corpus: str) -> None:
    from metapt.data.readers import read_split
    from metapt.spec import DataSpec

    data = DataSpec(format="synthetic", corpus=corpus, size=20, seed=0)
    for split, n in (("train", 20), ("validation", 4), ("test", 4)):
        records = read_split(data, split)
        assert len(records) == n
        text = _text(corpus, 20, split)
        if corpus == "conll04":
            own = _conll04_sentences(text)
            assert [len(r) for r in records["relations"]] == [len(rels) for _, rels in own]
            assert [len(t) for t in records["tokens"]] == [
                sum(len(t[5].split("/")) for t in tok) for tok, _ in own
            ]
        if corpus == "conll2012":
            own = _conll2012_sentences(text)
            assert [len(p) for p in records["predicate_indices"]] == [
                sum(r[6] != "-" for r in s) for s in own
            ]
        if corpus == "dialogues":
            assert all(4 <= len(turns) <= 8 for turns in records["turns"])
        if corpus == "squad":
            context, answers = records[0]["context"], records[0]["answers"]
            start = answers["answer_start"][0]
            assert context[start : start + len(answers["text"][0])] == answers["text"][0]
        if corpus in ("documents", "shuffled"):
            assert all(4 <= len(s) <= 8 for s in records["sentences"])


def flip(path: Path, at: int) -> None:
    """Flip every bit of one byte, as a bad disk or a broken copy does, keeping the size."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "cut"])
def test_a_damaged_cache_file_is_rebuilt_with_a_warning(
    cache: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    _, path = generate("documents", 20, 0, "train")
    clean = path.read_bytes()
    if damage == "flip":
        flip(path, 100)
    else:
        path.write_bytes(clean[: len(clean) // 2])
    with caplog.at_level("WARNING", logger="metapt"):
        assert generate("documents", 20, 0, "train")[1].read_bytes() == clean  # was: the damaged bytes
    assert caplog.messages == [f"metapt: cache entry {path} was damaged; rebuilt"]
    caplog.clear()
    assert generate("documents", 20, 0, "train")[1].read_bytes() == clean and caplog.messages == []


def test_a_cache_file_without_its_sum_is_rebuilt_quietly(
    cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, path = generate("documents", 20, 0, "train")
    clean = path.read_bytes()
    sum_file = path.with_name(f".{path.name}.sha256")
    assert sum_file.read_text() == f"{hashlib.sha256(clean).hexdigest()}\n"
    sum_file.unlink()  # as an older metapt, or a crash between the file and its sum, left it
    path.write_bytes(clean[:-10])
    with caplog.at_level("WARNING", logger="metapt"):
        assert generate("documents", 20, 0, "train")[1].read_bytes() == clean
    assert caplog.messages == [] and sum_file.is_file()  # nothing known to be damaged: no warning
