"""Typed errors. Library code raises these; only the CLI turns them into messages and exit codes."""

from __future__ import annotations

from dataclasses import dataclass


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
