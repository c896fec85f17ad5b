"""CoNLL Start-End bracket cells ("(A0*", "*", "*)", "(V*)") <-> BIO tags, for one proposition's column.

The CoNLL-2005 / CoNLL-2012 readers (metapt/data/conll.py) turn the files' cells into BIO tags; the SRL
kind (metapt/kinds/srl.py) writes its predictions back as cells, so srl-eval.pl can score them.
"""

from __future__ import annotations

import re

# A Start-End cell: opening brackets, the token's "*", closing brackets ("*)" or the older "*A1)").
_CELL = re.compile(r"((?:\([^()*\s]+)*)\*((?:[^()*\s]*\))*)")
_ONE = re.compile(r"\(([^()*\s]+)\)")  # "(ORG)": a one-token span written without the star


class BracketError(ValueError):
    """A cell that is not a well-formed Start-End cell; `index` is its token, `message` says why."""

    def __init__(self, index: int, message: str):
        super().__init__(f"token {index}: {message}")
        self.index, self.message = index, message


def brackets_to_bio(column: list[str]) -> list[str]:
    """Start-End cells of one proposition ("(A0*", "*", "*)", "(V*)", "(A1*A1)") -> BIO tags.

    BIO cannot nest: a span inside another (rare in OntoNotes) is dropped and the outer one kept."""
    tags, covering = [], []  # labels of the spans open at this token, outermost first
    for i, cell in enumerate(column):
        if (m := _CELL.fullmatch(cell)) is not None:
            starts, ends = re.findall(r"\(([^()*\s]+)", m[1]), m[2].count(")")
        elif (m := _ONE.fullmatch(cell)) is not None:
            starts, ends = [m[1]], 1
        else:
            raise BracketError(
                i, f"{cell!r} is not a Start-End cell (expected e.g. '(A0*', '*', '*)', '(V*)')"
            )
        tags.append(f"I-{covering[0]}" if covering else f"B-{starts[0]}" if starts else "O")
        covering += starts
        if ends > len(covering):
            raise BracketError(i, f"{cell!r} closes a span that is not open")
        del covering[len(covering) - ends :]
    if covering:
        raise BracketError(len(column) - 1, f"span {covering[-1]!r} is never closed (expected a ')')")
    return tags


def bio_to_brackets(tags: list[str]) -> list[str]:
    """BIO tags -> Start-End cells, the inverse of `brackets_to_bio` for spans that do not nest."""
    cells = []
    for i, tag in enumerate(tags):
        if tag != "O" and tag[:2] not in ("B-", "I-"):
            raise ValueError(f"token {i}: {tag!r} is not a BIO tag (expected 'O', 'B-X' or 'I-X')")
        label = tag[2:]
        starts = tag[:2] == "B-" or tag[:2] == "I-" and (i == 0 or tags[i - 1] not in (f"B-{label}", tag))
        ends = tag != "O" and (i + 1 == len(tags) or tags[i + 1] != f"I-{label}")
        cells.append(("(" + label if starts else "") + "*" + (")" if ends else ""))
    return cells
