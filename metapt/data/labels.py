"""Labels a head cannot learn or predict, counted before anything trains: a train label outside a
spec's `[options].labels`, or a validation/test label that the train split never has.

Such labels are a warning, not an error: the loss ignores them and the metrics count them as
misses, and real data has them legitimately (a rare CoNLL-2012 role absent from a small train
sample). The warning carries the count, and `finetune` also writes it into results.json.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import datasets

from metapt.kinds.labelled import UNLABELLED, label_str
from metapt.spec import TaskSpec


def _flat(rows: Iterable[Iterable[Any]]) -> Iterable[str]:
    return (label_str(v) for row in rows for v in row)


# kind -> the label strings of a split's records (a column read once, not record by record)
LABELS: dict[str, Callable[[datasets.Dataset], Iterable[str]]] = {
    "classification": lambda ds: (label_str(v) for v in ds["label"] if v not in UNLABELLED),
    "token_classification": lambda ds: _flat(ds["tags"]),
    "srl": lambda ds: (t for row in ds["srl_tags"] for column in row for t in column),
    "relation_extraction": lambda ds: (r["type"] for row in ds["relations"] for r in row),
}


def unknown_labels(spec: TaskSpec, info: dict[str, Any], records: dict[str, Any]) -> list[str]:
    """One warning per split whose labels fall outside the head's label set, with their count."""
    read = LABELS.get(spec.kind)
    names = set(info.get("labels", []))
    given = bool(spec.options.get("labels"))
    out = []
    for split, ds in records.items():
        if read is None or not names or not isinstance(ds, datasets.Dataset) or not len(ds):
            continue
        try:
            counts = Counter(v for v in read(ds) if v not in names)
        except (KeyError, ValueError):  # an unlabelled split (a test split without the label column)
            continue
        if not counts:
            continue
        where = "[options].labels" if given else "the train split's labels"
        shown = ", ".join(f"{v!r} x{n}" for v, n in counts.most_common(5))
        more = f" and {len(counts) - 5} more" if len(counts) > 5 else ""
        out.append(
            f"task {spec.name!r}: {sum(counts.values())} {split} labels are not in {where} "
            f"({shown}{more}); the loss ignores them and the metrics count them as misses"
        )
    return out
