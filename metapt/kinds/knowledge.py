"""ERNIE knowledge masking for masked_lm: which character spans are one masking unit (a phrase or an
entity), from the records' span field or from a built-in rule on the raw text, and where those units
begin among a document's tokens.

The rules run on the raw text, before the tokenizer lowercases it (capital letters are the evidence):
- entity: a maximal run of capitalised words (first letter upper case, two or more characters, not
  a stop word) separated by single spaces, as "Alice Walker" or "Royal Court Theatre". A run of one
  word at the start of a sentence counts only when the same word is also capitalised somewhere
  else in the text, not at a sentence start (else "Critics" in "Critics praised ..." would be one).
- phrase: a maximal run of two or more content words (not stop words) with single spaces between
  them and no punctuation, as keyphrase extractors (RAKE) take candidates, that does not mix
  capitalised and lower-case words (so a name and the verb after it are two units: "Alice Walker" |
  "moved"); runs longer than MAX_PHRASE_WORDS are cut into consecutive chunks, and a one-word
  remainder is no phrase.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

from metapt.errors import DataError
from metapt.kinds.corpus import STOPWORDS

MAX_PHRASE_WORDS = 4
_WORD = re.compile(r"\w+(?:[-']\w+)*")
_SENTENCE_END = re.compile(r"[.!?]")
SPAN_FIELDS = {"phrase": "phrase_spans", "entity": "entity_spans"}  # masking -> record field


def _words(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _WORD.finditer(text)]


def _runs(text: str, words: list[tuple[int, int]], member: list[bool]) -> list[tuple[int, int]]:
    """(first, last) word indices of maximal runs of member words joined by single spaces."""
    runs, k = [], 0
    while k < len(words):
        if not member[k]:
            k += 1
            continue
        j = k
        while j + 1 < len(words) and member[j + 1] and text[words[j][1] : words[j + 1][0]] == " ":
            j += 1
        runs.append((k, j))
        k = j + 1
    return runs


def entity_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the capitalised-run entities of `text` (the rule in the module docstring)."""
    words = _words(text)
    texts = [text[a:b] for a, b in words]
    caps = [w[0].isupper() and len(w) > 1 and w.lower() not in STOPWORDS for w in texts]
    initial = [
        k == 0 or bool(_SENTENCE_END.search(text[words[k - 1][1] : a])) for k, (a, _) in enumerate(words)
    ]
    inside = {w for w, c, i in zip(texts, caps, initial, strict=True) if c and not i}
    out = []
    for first, last in _runs(text, words, caps):
        if first == last and initial[first] and texts[first] not in inside:
            continue  # capitalised only because it opens a sentence
        out.append((words[first][0], words[last][1]))
    return out


def phrase_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the content-word phrases of `text` (the rule in the module docstring)."""
    words = _words(text)
    content = [text[a:b].lower() not in STOPWORDS for a, b in words]
    upper = [text[a].isupper() for a, _ in words]
    out = []
    for first, last in _runs(text, words, content):
        cuts = [k for k in range(first + 1, last + 1) if upper[k] != upper[k - 1]]
        for lo, hi in zip([first, *cuts], [c - 1 for c in cuts] + [last], strict=True):
            for a in range(lo, hi + 1, MAX_PHRASE_WORDS):
                b = min(a + MAX_PHRASE_WORDS - 1, hi)
                if b > a:
                    out.append((words[a][0], words[b][1]))
    return out


RULES = {"phrase": phrase_spans, "entity": entity_spans}


def spans_for(masking: str, text: str, given: Any, where: str) -> list[tuple[int, int]]:
    """The record's spans (field value `given`: a list of [start, end, ...] character offsets into
    `text`) when it has them, else the built-in rule's; sorted, overlapping ones dropped."""
    if given is None:
        spans = RULES[masking](text)
    else:
        spans = []
        for span in given:
            ok = isinstance(span, (list, tuple)) and len(span) >= 2
            ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in span[:2])
            if not ok or not 0 <= span[0] < span[1] <= len(text):
                raise DataError(
                    f"{where}: {SPAN_FIELDS[masking]} item {span!r} is not [start, end] with "
                    f"0 <= start < end <= {len(text)} (character offsets into the record's text)"
                )
            spans.append((span[0], span[1]))
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if not out or a >= out[-1][1]:  # the first of overlapping spans wins
            out.append((a, b))
    return out


def unit_starts(
    word_starts: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    """Per token, 1 where a masking unit begins: the first token of each span, and outside spans
    the first token of each word (so words outside phrases and entities are masked whole)."""
    starts = [a for a, _ in spans]
    out, previous = [], -1
    for flag, (a, _) in zip(word_starts, offsets, strict=True):
        k = bisect.bisect_right(starts, a) - 1
        span = k if k >= 0 and a < spans[k][1] else -1
        out.append(int(span != previous) if span >= 0 else flag)
        previous = span
    return out
