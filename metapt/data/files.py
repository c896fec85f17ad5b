"""Reading text files as the readers need them: UTF-8 (a byte-order mark dropped), gzipped or not, with
line numbers for messages; whole JSON files and JSON lines. A file that cannot be read is a DataError
naming it (and the line or byte)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from metapt.errors import DataError


def open_text(path: Path, newline: str | None = None) -> IO[str]:
    """A UTF-8 text file, gunzipped when its name ends in .gz; a byte-order mark is dropped."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return open(path, encoding="utf-8-sig", newline=newline)


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, the line without its end) for a text or .gz file."""
    try:
        with open_text(path) as f:
            for n, line in enumerate(f, 1):
                yield n, line.rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read ({e})") from None


def load_json(path: Path) -> object:
    """A whole JSON file; a syntax error names the file and line, bytes that are not UTF-8 their offset."""
    try:
        with open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); is it a JSON file?"
        ) from None
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read ({e})") from None


def json_records(path: Path) -> list[dict]:
    """The records of a JSON file: a list of objects, or an object with exactly one list-valued key
    (such as "data")."""
    root = load_json(path)
    if isinstance(root, dict):
        lists = [k for k, v in root.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(
                f"{path}: an object with {len(lists)} list-valued keys {lists} "
                "(expected a list of records, or an object with one list such as 'data')"
            )
        root = root[lists[0]]
    if not isinstance(root, list) or not all(isinstance(r, dict) for r in root):
        raise DataError(f"{path}: expected a list of JSON objects")
    return root


def json_lines(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, value) for each non-blank line of a JSON-lines file."""
    for n, line in numbered_lines(path):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno})") from None
