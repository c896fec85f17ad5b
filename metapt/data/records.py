"""Record checks of the readers, run on what they read: a record without a value for a field its kind
needs, and a value whose type differs from the records before it, are DataErrors naming the record's
file and line. A good split costs one Arrow pass; the files are read again only to name a bad record."""

from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from metapt.data.origins import DELIMITED, record_place
from metapt.errors import DataError
from metapt.spec import DataSpec

_JSON_TYPES = {
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    list: "a list",
    dict: "an object",
}


def _shown(value: object) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _fits(values: list, n: int) -> bool:
    """Whether the first `n` values make one Arrow column (as `datasets` converts them)."""
    try:
        datasets.Dataset.from_dict({"v": values[:n]})
    except (ValueError, TypeError):
        return False
    return True


def schema_error(
    records: list[dict], keys: list[str], files: list[Path], data: DataSpec, e: Exception
) -> DataError:
    """The first record (file and line) whose value of a column does not fit the type of the records
    before it. Only on failure: columns are tried one by one, each by halving to the shortest prefix
    that no longer converts, so a good split is converted once."""
    first: dict[str, int] = {}  # column -> index of its first misfit
    for key in keys:
        values = [r.get(key) for r in records]
        if _fits(values, len(values)):
            continue
        lo, hi = 1, len(values)  # values[:hi] fails
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if _fits(values, mid) else (lo, mid)
        first[key] = hi - 1
    if not first:  # every column converts alone
        return DataError(f"{files[0]}: records do not share one schema ({e})")
    i = min(first.values())
    place = record_place(files, data, i, str(files[0]))[0]
    parts, places = [], {}  # record index -> where it came from (each costs a read of the files)
    for key in [k for k in first if first[k] == i]:
        value = records[i].get(key)
        # The records before i convert together, so the first of them with a value sets the type.
        # Naming it shows the odd one out when that first record is the odd one.
        j = next((j for j in range(i) if records[j].get(key) is not None), None)
        if j is None:  # the value alone does not convert: its parts mix types
            why = " of mixed types" if isinstance(value, list | dict) else ""
        else:
            if j not in places:
                places[j] = record_place(files, data, j, str(files[0]))[0]
            earlier, there = records[j].get(key), places[j]
            if type(earlier) is type(value):
                why = f", whose parts differ in type from those at {there}"
            else:
                why = f", where {there} has {_shown(earlier)}"
        parts.append(f"column {key!r} is {_shown(value)} ({str(value)[:40]}){why}")
    return DataError(f"{place}: {'; '.join(parts)}; every record must have one type per column ({e})")


def lacking(record: dict | None, columns: tuple[str, ...], split: str, value: object = None) -> str:
    """What a record lacks of `columns` (a group of alternatives), for a message."""
    if value == "":
        what = f"{columns[0]!r} is an empty cell"
    elif record is None:
        what = f"{' and '.join(map(repr, columns))} missing or null"
    else:
        what = " and ".join(f"{c!r} is null" if c in record else f"no {c!r}" for c in columns)
    return f"{what}; every {split} record needs a value for {' or '.join(map(repr, columns))}"


# What each record field a kind needs (catalog.record_fields) must hold, as Python values. An Arrow
# column of local records has one type (schema_error), but a stream is never converted, and a hub
# dataset's `datasets.Json` column holds any mix: both are checked against this.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("text", "question", "context"), (str,)),
    **dict.fromkeys(("sentences", "turns", "tokens", "tags", "srl_tags", "predicate_indices"), (list,)),
    **dict.fromkeys(("entities", "relations", "choices"), (list,)),
    "answers": (dict, list),  # SQuAD's {"text": [...], "answer_start": [...]}, ReCoRD's list
    "label": (str, int, float),  # a label name or index, or a regression target (bool is an int)
    "text_pair": (str,),
}
# What every element of a list field must be (a null element is wrong too): a tokenizer given a
# number among the tokens, or a tagger given tag ids, failed with an internal error.
ELEMENT_TYPES: dict[str, type] = {
    **dict.fromkeys(("sentences", "turns", "tokens", "tags", "choices"), str),
    "predicate_indices": int,
    "srl_tags": list,  # one column of tags per predicate
    **dict.fromkeys(("entities", "relations"), dict),
}
# What every element of each element of a list of lists must be: srl's tag ids failed in the tagger.
INNER_TYPES: dict[str, type] = {"srl_tags": str}
_PLURAL = {str: "strings", int: "numbers", list: "lists", dict: "objects"}


def _wanted(types: tuple[type, ...]) -> str:
    return " or ".join(dict.fromkeys(_JSON_TYPES[t] for t in types))


def misfit(value: object, column: str, field: str, split: str) -> str | None:
    """What is wrong with the non-null `value` of `column` (record field `field`), or an element of
    it, for a message; None when nothing."""
    wanted = FIELD_TYPES.get(field)
    if value is None or wanted is None:
        return None
    needs = f"every {split} record needs"
    if not isinstance(value, wanted):
        return f"{column!r} is {_shown(value)} ({str(value)[:40]}); {needs} {_wanted(wanted)} there"
    element = ELEMENT_TYPES.get(field)
    if element is None or not isinstance(value, list):
        return None
    if (bad := _first_misfit(value, element)) is not None:
        return f"{column!r} has {_element(value[bad])} at position {bad}; {needs} a list of {_PLURAL[element]} there"
    inner = INNER_TYPES.get(field)
    if inner is None:
        return None
    for k, part in enumerate(value):
        if (bad := _first_misfit(part, inner)) is not None:
            where = f"at position {bad} of its list {k}"
            return f"{column!r} has {_element(part[bad])} {where}; {needs} lists of {_PLURAL[inner]} there"
    return None


def _first_misfit(values: list, wanted: type) -> int | None:
    """The position of the first element of `values` that is not a `wanted` (None when all are)."""
    return next((k for k, e in enumerate(values) if not isinstance(e, wanted)), None)


def _element(value: object) -> str:
    return "null" if value is None else f"{_shown(value)} ({str(value)[:40]})"


def record_problem(
    record: dict,
    needs: tuple[tuple[str, ...], ...],
    split: str,
    fields: dict[str, str],
    optional: tuple[str, ...] = (),
) -> str | None:
    """What one record lacks of `needs` (column groups) or holds of the wrong type, also in its
    `optional` columns (absent or null is fine there), or None; `fields`: column -> the record field
    it becomes (a column not in it is its own field)."""
    for group in needs:
        if all(record.get(c) is None for c in group):
            return lacking(record, group, split)
        for c in group:
            if why := misfit(record.get(c), c, fields.get(c, c), split):
                return why
    for c in optional:
        if why := misfit(record.get(c), c, fields.get(c, c), split):
            return why
    return None


def checked_stream(
    ds: datasets.IterableDataset,
    needs: tuple[tuple[str, ...], ...],
    split: str,
    where: str,
    fields: dict[str, str],
    optional: tuple[str, ...] = (),
) -> datasets.IterableDataset:
    """A hub stream whose records are checked as they are read (it is never held whole, and has no
    file and line to name) against `needs`, `fields` and `optional` as `record_problem` takes them:
    the first bad one is a DataError naming "WHERE: record k"."""

    def check(record: dict, k: int) -> dict:
        if why := record_problem(record, needs, split, fields, optional):
            raise DataError(f"{where}: record {k + 1}: {why}")
        return record

    return ds.map(check, with_indices=True, features=ds.features)


def source_fields(needs: tuple[tuple[str, ...], ...], columns: dict[str, str | list[str]]) -> dict[str, str]:
    """Each of the data's own columns that can become a field of `needs`, and that field."""
    out = {}
    for field in (f for group in needs for f in group):
        options = columns.get(field, field)
        out |= dict.fromkeys([options] if isinstance(options, str) else options, field)
    return out


def _source(field: str, columns: dict[str, str | list[str]], names: list[str]) -> str:
    """The column of the data that became record field `field` (its [data.columns] choice, or itself)."""
    options = columns.get(field, field)
    options = [options] if isinstance(options, str) else options
    return next((o for o in options if o in names), options[0])


def source_groups(
    needs: tuple[tuple[str, ...], ...], columns: dict[str, str | list[str]]
) -> tuple[tuple[str, ...], ...]:
    """`needs` in the data's own column names (every [data.columns] alternative), for a stream's records."""
    out = []
    for group in needs:
        options = [columns.get(f, f) for f in group]
        out.append(tuple(c for o in options for c in ([o] if isinstance(o, str) else o)))
    return tuple(out)


def check_records(
    ds: datasets.Dataset,
    needs: tuple[tuple[str, ...], ...],
    names: list[str],
    data: DataSpec,
    files: list[Path],
    split: str,
    where: str,
    optional: tuple[str, ...] = (),
) -> None:
    """Every record has a value for one field of each `needs` group, and the fields of `needs` and
    `optional` have values of their types. Arrow finds the first that does not (no pass in Python);
    only then are the files read again, to name its line."""

    for group in needs:
        present = [f for f in group if f in ds.column_names]
        if not present:
            continue  # no such column at all: the kind's own check (pipeline.load_task) says so
        empty = None
        for f in present:
            column = ds.data.column(f)
            none = pc.is_null(column)
            if data.format in DELIMITED and pa.types.is_string(column.type):  # a cell is never null
                none = pc.fill_null(pc.or_kleene(none, pc.equal(column, "")), True)
            empty = none if empty is None else pc.and_(empty, none)
        if not pc.any(empty).as_py():
            continue
        i = pc.index(empty, True).as_py()
        place, raw = record_place(files, data, i, where)
        sources = tuple(_source(f, data.columns, names) for f in present)
        mapped = [f"[data.columns].{f} = {s!r}" for f, s in zip(present, sources, strict=True) if f != s]
        note = f" ({', '.join(mapped)})" if mapped else ""
        raise DataError(f"{place}: {lacking(raw, sources, split, ds[i][present[0]])}{note}")
    for field in dict.fromkeys([f for group in needs for f in group] + list(optional)):
        if field in ds.column_names:
            _check_type(ds, field, names, data, files, split, where)


_ARROW_CHECKS = {
    str: lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    list: lambda t: pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t),
    dict: pa.types.is_struct,
    int: lambda t: pa.types.is_integer(t) or pa.types.is_boolean(t),
    float: pa.types.is_floating,
}


def _arrow_fits(column: pa.ChunkedArray, field: str) -> bool:
    """Whether an Arrow column holds only values of the field's types, and, for a list field, only
    non-null elements of its element type: then no record needs reading in Python."""
    kind, element = column.type, ELEMENT_TYPES.get(field)
    if not any(_ARROW_CHECKS[t](kind) for t in FIELD_TYPES[field]):
        return False
    if element is None or not _ARROW_CHECKS[list](kind):
        return True
    if not _ARROW_CHECKS[element](kind.value_type) or (flat := pc.list_flatten(column)).null_count:
        return False
    inner = INNER_TYPES.get(field)
    if inner is None:
        return True
    return _ARROW_CHECKS[inner](kind.value_type.value_type) and pc.list_flatten(flat).null_count == 0


def _check_type(
    ds: datasets.Dataset,
    field: str,
    names: list[str],
    data: DataSpec,
    files: list[Path],
    split: str,
    where: str,
) -> None:
    """A DataError naming the first record whose `field` has a value of the wrong type. Read in
    Python only when the column's Arrow type is not one of the field's (a hub dataset's Json column
    of mixed values, a column of numbers where text belongs, a list with a null element)."""
    if field not in FIELD_TYPES or _arrow_fits(ds.data.column(field), field):
        return
    source = _source(field, data.columns, names)
    for i, value in enumerate(ds[field]):
        if why := misfit(value, source, field, split):
            note = f" ([data.columns].{field} = {source!r})" if source != field else ""
            raise DataError(f"{record_place(files, data, i, where)[0]}: {why}{note}")
