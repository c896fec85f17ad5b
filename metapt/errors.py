"""Typed errors. Library code raises these; only the CLI turns them into messages and exit codes."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


def suggest(word: str, options: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" for the closest of `options`, or "" when none is close."""
    return did_you_mean(difflib.get_close_matches(word, list(options), n=1, cutoff=0.6))


def did_you_mean(close: list[str]) -> str:
    """ " (did you mean 'a', 'b' or 'c'?)" for these close names, or "" for none."""
    if not close:
        return ""
    quoted = [repr(o) for o in close]
    return f" (did you mean {' or '.join(filter(None, [', '.join(quoted[:-1]), quoted[-1]]))}?)"


def first_line(e: BaseException) -> str:
    """An exception's first line (torch's and transformers' messages run on), or its type's name."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class MetaptError(Exception):
    """Bad input from the user (spec, option, data, checkpoint): the CLI exits with code 2."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file: where, which key, the bad value and what is allowed."""

    file: str
    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class SpecError(MetaptError):
    """Every problem found in one or more spec files, reported at once."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        n = len(problems)
        head = f"{n} problem{'s' if n != 1 else ''} found:"
        super().__init__("\n".join([head, *(f"  {p}" for p in problems)]))


class DataError(MetaptError):
    """Data that is missing or malformed; the message names the file (and line) and how to fix it."""


class MissingDataError(DataError):
    """Data that is not there (not downloaded, not obtained yet, offline), as opposed to malformed."""


class CheckpointError(MetaptError):
    """A checkpoint directory that is missing, incomplete or corrupt."""


class TrainingError(Exception):
    """Training cannot go on (e.g. a NaN loss); the CLI exits with code 1 after saving what is safe."""
