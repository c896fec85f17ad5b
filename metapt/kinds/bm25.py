"""Okapi BM25 (Robertson et al. 1994) over a fixed list of passages, for span selection's retrieval.

Lucene's form and defaults: k1 = 1.2, b = 0.75, idf = ln(1 + (N - df + 0.5) / (df + 0.5)), and a
word given twice in the query counts twice. Words are lower-cased runs of letters and digits.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The lower-cased words of `text`, in order."""
    return _WORD.findall(text.lower())


class BM25:
    """An inverted index of `passages` and each passage's BM25 weight per word (a score's terms)."""

    def __init__(self, passages: list[str], k1: float = 1.2, b: float = 0.75) -> None:
        counts = [Counter(words(p)) for p in passages]
        lengths = [sum(c.values()) for c in counts]
        mean = sum(lengths) / len(lengths) if sum(lengths) else 1.0
        self.postings: dict[str, list[int]] = defaultdict(list)  # word -> the passages holding it
        for p, c in enumerate(counts):
            for word in c:
                self.postings[word].append(p)
        n = len(passages)
        idf = {w: math.log(1 + (n - len(ps) + 0.5) / (len(ps) + 0.5)) for w, ps in self.postings.items()}
        self.weights = [  # per passage, each of its words' share of a score
            {w: idf[w] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / mean)) for w, tf in c.items()}
            for c, length in zip(counts, lengths, strict=True)
        ]

    def score(self, query: list[str], p: int) -> float:
        """Passage p's BM25 score for the query words (0.0 when it holds none of them)."""
        weights = self.weights[p]
        return sum(weights.get(word, 0.0) for word in query)
