"""Where each record of a split came from ("file:line", "file: record k", "file: row k") and its raw
form, for the formats whose records are their files' records one for one: read again only to name a
bad record, so that a good split is read once."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from pathlib import Path

from metapt.data.files import json_lines, json_records, open_text
from metapt.spec import DataSpec

# (delimiter, quoting) per delimited format. GLUE's TSV files do not quote: a '"' inside a cell is literal.
DELIMITED: dict[str, tuple[str, int]] = {"csv": (",", csv.QUOTE_MINIMAL), "tsv": ("\t", csv.QUOTE_NONE)}


def _origins(files: list[Path], data: DataSpec) -> Iterator[tuple[str, dict | None]]:
    """Where each record came from ("file:line", or "file: record k") and its raw form, in reading
    order, for the formats whose records are their files' records one for one. Read again only to
    name a bad record, so that a good split is read once."""
    for path in files:
        if data.format in _ORIGINS:
            yield from _ORIGINS[data.format](path, data)


def _jsonl_origins(path: Path, data: DataSpec) -> Iterator[tuple[str, dict | None]]:
    for n, record in json_lines(path):
        yield f"{path}:{n}", record if isinstance(record, dict) else None


def _json_origins(path: Path, data: DataSpec) -> Iterator[tuple[str, dict | None]]:
    for k, record in enumerate(json_records(path), 1):
        yield f"{path}: record {k}", record


def _delimited_origins(path: Path, data: DataSpec) -> Iterator[tuple[str, dict | None]]:
    delimiter, quoting = DELIMITED[data.format]
    with open_text(path, newline="") as f:
        rows = csv.reader(f, delimiter=delimiter, quoting=quoting)
        if data.header:
            next(rows, None)
        for row in rows:
            if row:  # blank lines make no record
                yield f"{path}:{rows.line_num}", None


def _parquet_origins(path: Path, data: DataSpec) -> Iterator[tuple[str, dict | None]]:
    import pyarrow.parquet as pq

    for k in range(pq.ParquetFile(path).metadata.num_rows):
        yield f"{path}: row {k + 1}", None


_ORIGINS = {
    "jsonl": _jsonl_origins,
    "json": _json_origins,
    "csv": _delimited_origins,
    "tsv": _delimited_origins,
    "parquet": _parquet_origins,
}


def record_place(files: list[Path], data: DataSpec, index: int, where: str) -> tuple[str, dict | None]:
    """Where record `index` (from 0) came from, and its raw form when the format keeps one."""
    found = next(itertools.islice(_origins(files, data), index, None), None)
    return found or (f"{where}: record {index + 1}", None)
