"""The `types` corpus: closed-book word typing. What kind of thing is a word of the world: a city, a
country, a first name, a surname, an organisation's name or suffix, a job, an industry, a month, a day?

The input is the word alone in a neutral template ("Lyon ."), and the words of the train, validation
and test splits are disjoint (every type has words in train), so finetuning on the train words
teaches which types exist but not the type of any word it scores: a test word's type is what the
source corpora say about it ("Lyon is a city in France .", "... works as a lawyer .", "... is a
mining company ."). A random encoder has never placed the word anywhere; pretraining puts it among
the words that share its contexts.
"""

from __future__ import annotations

import random

from metapt.data import world as W
from metapt.data.world import World

# The label names, in the order a spec lists them.
TYPES = (
    "city",
    "country",
    "first_name",
    "surname",
    "org_name",
    "org_suffix",
    "job",
    "industry",
    "month",
    "day",
)
# Neutral frames: the same few words around every word, so only the word tells its type.
TEMPLATES = ("{w} .", "{w} ?", "It is {w} .")
EVAL_SHARE = 0.3  # of each type's words, in validation and as many in test; the rest train


def lexicon(w: World) -> dict[str, list[str]]:
    """type -> the world's words of that type, as the corpora spell them (only words the world uses)."""
    first = [p.name.split(" ", 1) for p in w.people]
    orgs = [o.name.split(" ", 1) for o in w.orgs]
    times = {e.time for e in w.events}
    words = {
        "city": [c for c, _ in w.cities],
        "country": [n for _, n in w.cities],
        "first_name": [f for f, _ in first],
        "surname": [s for _, s in first],
        "org_name": [stem for stem, _ in orgs],
        "org_suffix": [suffix for _, suffix in orgs],
        "job": [p.job for p in w.people],
        "industry": [o.industry for o in w.orgs],
        "month": [m for m in W.MONTHS if m in times],
        "day": [d for d in W.DAYS if d in times],
    }
    return {t: sorted(set(words[t])) for t in TYPES}


def split_words(w: World, seed: int, split: str) -> dict[str, list[str]]:
    """type -> the words of `split`: per type a seeded order, validation and test the same number
    (EVAL_SHARE each, fewer when the type is small) and train the rest, never none."""
    out = {}
    for t, words in lexicon(w).items():
        order = list(words)
        random.Random(f"metapt:{seed}:types:{t}").shuffle(order)
        n_eval = min(round(EVAL_SHARE * len(order)), (len(order) - 1) // 2)
        n_train = len(order) - 2 * n_eval
        bounds = {
            "train": (0, n_train),
            "validation": (n_train, n_train + n_eval),
            "test": (n_train + n_eval, None),
        }
        low, high = bounds[split]
        out[t] = sorted(order[low:high])
    return out


def write_types(w: World, seed: int, split: str, count: int) -> str:
    """TSV (index, sentence, label): `count` rows cycling over the split's (template, word) pairs,
    so every word has as many rows as any other, give or take one."""
    words = split_words(w, seed, split)
    items = [(word, t) for t in TYPES for word in words[t]]
    random.Random(f"metapt:{seed}:types:{split}:order").shuffle(items)
    rows = ["index\tsentence\tlabel"]
    for k in range(count):
        word, label = items[k % len(items)]
        template = TEMPLATES[(k // len(items)) % len(TEMPLATES)]
        rows.append(f"{k}\t{template.format(w=word)}\t{label}")
    return "\n".join(rows) + "\n"
