"""Read one split of a task's data into records: `read_split(data, split)`.

A reader takes the resolved files of a split and returns a `datasets.Dataset` of records in the
format's canonical schema; `READERS` maps each local format to its reader. `hf` loads from the hub,
`synthetic` writes a file in a real format and reads it back. `[data.columns]` renaming comes last.
"""

from __future__ import annotations

import csv
import itertools
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets

from metapt.data import conll, qa, wikitext
from metapt.data.files import json_lines, json_records, numbered_lines, open_text
from metapt.data.locate import split_files
from metapt.data.origins import DELIMITED
from metapt.data.records import (
    check_records,
    checked_stream,
    record_problem,
    schema_error,
    source_fields,
    source_groups,
)
from metapt.errors import DataError, MissingDataError
from metapt.spec import DataSpec

Reader = Callable[[list[Path], DataSpec], datasets.Dataset]


# ---------------------------------------------------------------------------------- text, json
def _text_documents(files: list[str]) -> Iterator[dict]:
    """Documents of plain-text files: one sentence per line, blank (or whitespace) lines between them."""
    for name in files:
        path, sentences, k = Path(name), [], 0
        for _, line in itertools.chain(
            numbered_lines(path), [(0, "")]
        ):  # a blank line at the end closes the last one
            if line.strip():
                sentences.append(line.strip())
            elif sentences:
                yield {"id": f"{path.name}:{k}", "text": " ".join(sentences), "sentences": sentences}
                sentences, k = [], k + 1


def _jsonl_records(
    files: list[str],
    needs: tuple[tuple[str, ...], ...] = (),
    split: str = "",
    fields: dict[str, str] | None = None,
    optional: tuple[str, ...] = (),
) -> Iterator[dict]:
    """The objects of JSON-lines files; a stream checks each against `needs` (column groups, see
    `check_records`) and the types of their `fields` (column -> field) and `optional` columns as it
    goes, since it is never held whole (nor converted to one Arrow schema)."""
    for name in files:
        for n, record in json_lines(Path(name)):
            if not isinstance(record, dict):
                raise DataError(f"{name}:{n}: a JSON {type(record).__name__} (expected an object per line)")
            if why := record_problem(record, needs, split, fields or {}, optional):
                raise DataError(f"{name}:{n}: {why}")
            yield record


def _records(records: list[dict], where: list[Path], data: DataSpec) -> datasets.Dataset:
    """An in-memory dataset with every key any record has (absent: None); clashing types: DataError."""
    keys = dict.fromkeys(k for r in records for k in r)  # from_list would keep the first record's keys only
    try:
        return datasets.Dataset.from_dict({k: [r.get(k) for r in records] for k in keys})
    except (ValueError, TypeError) as e:  # pyarrow's ArrowInvalid / ArrowTypeError are among these
        raise schema_error(records, list(keys), where, data, e) from None


def read_text(files: list[Path], data: DataSpec) -> datasets.Dataset:
    return datasets.Dataset.from_list(list(_text_documents([str(f) for f in files])))


def read_jsonl(files: list[Path], data: DataSpec) -> datasets.Dataset:
    return _records(list(_jsonl_records([str(f) for f in files])), files, data)


def read_json(files: list[Path], data: DataSpec) -> datasets.Dataset:
    """A list of records, or an object with exactly one list-valued key (such as "data")."""
    return _records([r for path in files for r in json_records(path)], files, data)


def read_parquet(files: list[Path], data: DataSpec) -> datasets.Dataset:
    import pyarrow.parquet as pq

    try:
        tables = [pq.read_table(f) for f in files]
    except Exception as e:  # pyarrow raises its own error types for a file that is not Parquet
        raise DataError(f"{files[0]}: cannot be read as Parquet ({e})") from None
    return _records([r for t in tables for r in t.to_pylist()], files, data)


# -------------------------------------------------------------------------------------- csv, tsv
def _delimited(files: list[Path], data: DataSpec, delimiter: str, quoting: int) -> datasets.Dataset:
    """Rows of delimited files, all values kept as strings; `header = false` names columns 0, 1, ..."""
    records, names = [], None
    for path in files:
        try:
            with open_text(path, newline="") as f:
                rows = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
                header, first = (next(rows, None), 1) if data.header else (None, 0)
                for row in rows:
                    if not row:
                        continue  # a blank line, e.g. at the end of a file
                    header = header or [str(i) for i in range(len(row))]
                    if len(row) != len(header):
                        raise DataError(
                            f"{path}:{rows.line_num}: {len(row)} cells (expected {len(header)}, "
                            f"as {'the header on line 1' if first else 'the first row'})"
                        )
                    records.append(dict(zip(header, row, strict=True)))
        except csv.Error as e:
            raise DataError(f"{path}:{rows.line_num}: {e}") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if names is not None and header is not None and header != names:
            raise DataError(f"{path}: columns {header} differ from {names} in {files[0]}")
        names = names or header
    return datasets.Dataset.from_list(records)


def read_csv(files: list[Path], data: DataSpec) -> datasets.Dataset:
    return _delimited(files, data, *DELIMITED["csv"])


def read_tsv(files: list[Path], data: DataSpec) -> datasets.Dataset:
    return _delimited(files, data, *DELIMITED["tsv"])


READERS: dict[str, Reader] = {
    "json": read_json,
    "jsonl": read_jsonl,
    "csv": read_csv,
    "tsv": read_tsv,
    "parquet": read_parquet,
    "text": read_text,
    "wikitext": wikitext.read_wikitext,
    "squad": qa.read_squad,
    "nq": qa.read_nq,
    "superglue": qa.read_superglue,
    "dailydialog": qa.read_dailydialog,
    "conll2005": conll.read_conll2005,
    "conll2012": conll.read_conll2012,
    "conll04": conll.read_conll04,
    "spert": conll.read_spert,
    "dygie": conll.read_dygie,
}
# Formats that can stream from disk.
_STREAMS = {"text": _text_documents, "jsonl": _jsonl_records, "wikitext": wikitext.documents}


# ------------------------------------------------------------------------------------ the entry
def read_split(
    data: DataSpec, split: str, needs: tuple[tuple[str, ...], ...] = (), optional: tuple[str, ...] = ()
) -> datasets.Dataset | datasets.IterableDataset:
    """Records of one split ("train" | "validation" | "test"), with fields renamed per data.columns.
    Each record needs a value (not null, nor an empty cell) for one field of each `needs` group
    (`catalog.record_fields`), and the values of these fields and of the `optional` ones it has
    (`catalog.optional_fields`) need their types; the first that has not is a DataError naming its
    file and line."""
    files: list[Path] = []
    singles = tuple((f,) for f in optional)
    fields = source_fields(needs + singles, data.columns)  # the data's columns -> record fields
    needs_columns = source_groups(needs, data.columns)
    optional_columns = tuple(c for group in source_groups(singles, data.columns) for c in group)
    if data.format == "hf":
        if not getattr(data, split):
            raise DataError(
                f"task data: split {split!r} of format 'hf': [data].{split} names no hub split. "
                f"Set [data].{split} (e.g. {split!r}) or pass --data PATH."
            )
        ds, where = _from_hub(data, split), data.dataset
    elif data.format == "synthetic":
        from metapt.data.synthetic import generate

        fmt, path = generate(data.corpus, data.size, data.seed, data.synthetic_split(split), data.eval_size)
        ds, where = READERS[fmt]([Path(path)], data), str(path)
    elif data.format in READERS:
        files, where = split_files(data, split), data.location(split)
        if data.streaming and data.format in _STREAMS:
            gen_kwargs: dict = {"files": [str(f) for f in files]}
            if data.format == "jsonl":  # the other streams make their records' fields themselves
                gen_kwargs |= {"needs": needs_columns, "split": split}
                gen_kwargs |= {"fields": fields, "optional": optional_columns}
            ds = datasets.IterableDataset.from_generator(_STREAMS[data.format], gen_kwargs=gen_kwargs)
        else:
            ds = READERS[data.format](files, data)
    else:
        raise DataError(
            f"[data].format: {data.format!r} has no reader; allowed: hf, synthetic, " + ", ".join(READERS)
        )
    if isinstance(ds, datasets.Dataset) and len(ds) == 0:
        raise DataError(
            f"{where}: no records in the {split} split (an empty file, or none in the {data.format} "
            "format); check the file, or [data].format"
        )
    names = ds.column_names
    if data.format == "hf" and isinstance(ds, datasets.IterableDataset):  # in the hub's column names
        ds = checked_stream(ds, needs_columns, split, where, fields, optional_columns)
    ds = rename_columns(ds, data.columns, where)
    if isinstance(ds, datasets.Dataset):
        check_records(ds, needs, names, data, files, split, where, optional)
    return word_salad(ds, data.seed, split) if data.shuffle_words else ds


def word_salad(records: datasets.Dataset, seed: int, split: str) -> datasets.Dataset:
    """`[data].shuffle_words`: each sentence (or text) keeps its length in words, but its words are
    seeded draws from all words of the split, so the corpus keeps its vocabulary and unigram
    frequencies and loses its syntax and facts (a junk control source, like the synthetic `shuffled`)."""
    fields = [f for f in ("sentences", "text") if f in records.column_names]
    if not fields:
        raise DataError(
            f"[data].shuffle_words: the records have no text or sentences field to shuffle "
            f"(columns: {', '.join(records.column_names)})"
        )
    pool = [
        w
        for text in records[fields[0]]
        for s in (text if fields[0] == "sentences" else [text])
        for w in s.split()
    ]
    rng = random.Random(f"salad/{seed}/{split}")

    def salad(text: str) -> str:
        return " ".join(rng.choices(pool, k=len(text.split())))

    def row(record: dict) -> dict:
        if "sentences" in record:
            sentences = [salad(s) for s in record["sentences"]]
            return {"sentences": sentences, **({"text": " ".join(sentences)} if "text" in record else {})}
        return {"text": salad(record["text"])}

    return datasets.Dataset.from_list([{**r, **row(r)} for r in records]) if pool else records


def _from_hub(data: DataSpec, split: str) -> datasets.Dataset | datasets.IterableDataset:
    name = data.dataset + (f" ({data.subset})" if data.subset else "")
    try:
        ds = datasets.load_dataset(
            data.dataset, data.subset or None, split=getattr(data, split), streaming=data.streaming
        )
    except Exception as e:  # offline, unknown id or config, missing split: all mean "not available"
        raise MissingDataError(
            f"{name}: split {getattr(data, split)!r} could not be loaded from the hub "
            f"({type(e).__name__}: {e}). metapt runs offline unless HF_HUB_OFFLINE is unset; "
            "unset it to download, or pass --data PATH with a local copy."
        ) from None
    task = data.subset.lower().split(".")[0]  # the hub names the corrected WSC "wsc.fixed"
    if data.dataset.rsplit("/", 1)[-1] == "super_glue" and task in qa.TASKS:
        ds = ds.map(lambda r: qa.superglue_fields(task, r))
    return ds


def _headerless_hint(names: list[str]) -> str:
    """A hint when the "column names" read like a row of data (an empty one, or one with spaces)."""
    if not any(not n.strip() or " " in n.strip() for n in names):
        return ""
    return (
        "; the first row looks like data, not a header: a file without a header row needs "
        '[data].header = false and columns named by position ("0", "1", ...); for GLUE\'s CoLA, '
        "--task cola_files does that"
    )


def rename_columns(
    ds: datasets.Dataset | datasets.IterableDataset, columns: dict[str, str | list[str]], where: str
) -> datasets.Dataset | datasets.IterableDataset:
    """Rename source column -> record field for each `field = "column"` of [data.columns]; a list
    of columns names alternatives (the hub's and the release files' names), the first present wins."""
    names = ds.column_names
    if names is None:  # a stream built from a generator: look at its first record
        names = list(next(iter(ds), {}))
    chosen: dict[str, str] = {}
    for field, source in columns.items():
        options = [source] if isinstance(source, str) else list(source)
        present = [o for o in options if o in names]
        if not present:
            raise DataError(
                f"{where}: [data.columns].{field} names column {' or '.join(map(repr, options))}, which is "
                f"not there; columns available: {', '.join(names)}{_headerless_hint(names)}"
            )
        chosen[field] = present[0]
    renames = {source: field for field, source in chosen.items() if source != field}
    if not renames:
        return ds
    # An explicit mapping wins over a field of the same name that the reader already made.
    clash = [f for f in renames.values() if f in names and f not in renames]
    if clash:
        ds = ds.remove_columns(clash)
    return ds.rename_columns(renames)
