"""Question answering, SuperGLUE and dialogue files -> the records the task kinds read.

squad, nq: {"id", "title", "context", "question", "answers": {"text": [...], "answer_start": [...]}}.
superglue: Hugging Face's super_glue records plus the fields of the task's kind (text/text_pair/label,
or context/choices/label). dailydialog: {"id", "turns"}.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from metapt.data.files import json_lines, load_json, numbered_lines
from metapt.errors import DataError
from metapt.spec import DataSpec, TaskSpec

log = logging.getLogger("metapt")


def read_squad(files: list[Path], data: DataSpec) -> datasets.Dataset:
    """SQuAD v1.1 / v2.0: one record per question; v2.0 unanswerable questions get empty answers."""
    records = []
    for path in files:
        root = load_json(path)
        try:
            for article in root["data"]:
                for paragraph in article["paragraphs"]:
                    for qa in paragraph["qas"]:
                        answers = [] if qa.get("is_impossible") else qa["answers"]
                        _check_answers(path, str(qa["id"]), paragraph["context"], answers)
                        records.append(
                            {
                                "id": str(qa["id"]),
                                "title": article.get("title", ""),
                                "context": paragraph["context"],
                                "question": qa["question"],
                                "answers": {
                                    "text": [a["text"] for a in answers],
                                    "answer_start": [int(a["answer_start"]) for a in answers],
                                },
                            }
                        )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(
                f"{path}: not SQuAD JSON ({type(e).__name__}: {e}; expected "
                "{data: [{title, paragraphs: [{context, qas: [{id, question, answers}]}]}]})"
            ) from None
    return datasets.Dataset.from_list(records)


def no_squad_v2(spec: TaskSpec, records: dict[str, Any]) -> None:
    """DataError when a SQuAD v1.1 task (extractive_qa on squad files, without
    version_2_with_negative) reads SQuAD 2.0 files: read_squad gives their is_impossible questions no
    answers, which v1.1 never has; they would train the pointer on [CLS] and never be scored. Decided
    from the parsed records, so a file whose first impossible question comes late is caught too."""
    if spec.kind != "extractive_qa" or spec.data.format != "squad" or spec.option("version_2_with_negative"):
        return
    for split, ds in records.items():
        if not isinstance(ds, datasets.Dataset):  # a stream: not a SQuAD file
            continue
        if unanswered := sum(1 for a in ds["answers"] if not a["text"]):
            raise DataError(
                f"{spec.data.location(split)}: {unanswered} of {len(ds)} questions have no answer "
                f"(SQuAD 2.0's is_impossible), but task {spec.name!r} reads SQuAD v1.1, where every "
                "question has one; use --task squad_v2 for SQuAD 2.0 files (in a spec of your own: "
                "[options].version_2_with_negative = true)"
            )


def _check_answers(path: Path, qid: str, context: str, answers: list[dict]) -> None:
    """DataError unless every answer's text sits in the context at its answer_start (SQuAD's own
    files always agree; a mismatch would train the pointer on the wrong span)."""
    for a in answers:
        start, text = int(a["answer_start"]), a["text"]
        if context[start : start + len(text)] != text:
            found = context.find(text)
            hint = f"; the text first occurs at {found}" if found >= 0 else "; the text is not in the context"
            raise DataError(
                f"{path}: question {qid}: answer_start {start} points at "
                f"{context[start : start + len(text)]!r}, not the answer text {text!r}{hint}"
            )


def _is_html(token: str) -> bool:
    return token.startswith("<") and token.endswith(">")


def _nq_record(example: dict) -> dict | None:
    """An NQ example -> a SQuAD record over its long answer, or None when it has none. The original
    format's document_tokens joined by spaces are the simplified format's document_text (as the NQ
    repository's simplify_nq_example makes it), so both read alike."""
    if "document_text" in example:
        tokens = example["document_text"].split(" ")
    else:
        tokens = [t["token"] for t in example["document_tokens"]]
    annotations = [a for a in example["annotations"] if a["long_answer"]["start_token"] >= 0]
    if not annotations:
        return None
    long = annotations[0]["long_answer"]
    start, end = long["start_token"], long["end_token"]
    offsets, pieces, length = {}, [], 0  # document token index -> char offset in the context
    for i in range(start, end):
        if not _is_html(tokens[i]):
            offsets[i] = length + (1 if pieces else 0)
            length = offsets[i] + len(tokens[i])
            pieces.append(tokens[i])
    context = " ".join(pieces)
    texts, starts = [], []
    for a in annotations:  # every annotator who chose the same long answer contributes short answers
        if a["long_answer"]["start_token"] != start:
            continue
        for short in a["short_answers"]:
            kept = [i for i in range(short["start_token"], short["end_token"]) if i in offsets]
            if kept and (text := " ".join(tokens[i] for i in kept)) not in texts:
                texts.append(text)
                starts.append(offsets[kept[0]])
    query = urllib.parse.urlparse(example.get("document_url", "")).query
    title = urllib.parse.parse_qs(query).get("title", [""])[0].replace("_", " ")
    return {
        "id": str(example["example_id"]),
        "title": title,
        "context": context,
        "question": example["question_text"],
        "answers": {"text": texts, "answer_start": starts},
    }


# NQ-open (google-research-datasets/natural-questions, nq_open/): a question and its answer strings.
NQ_OPEN = {"question", "answer"}


def not_nq_open(path: Path, n: int, example: object) -> None:
    """DataError when a line of an `nq` file is an NQ-open record: a different dataset, with no passage."""
    if isinstance(example, dict) and "question" in example and set(example) <= NQ_OPEN | {"id"}:
        raise DataError(
            f"{path}:{n}: an NQ-open record (a question and answer strings, no passage), not a "
            "Natural Questions example; extractive QA needs the passage, which NQ-open does not "
            "have, and no metapt format reads NQ-open. Use the simplified NQ files "
            "(example_id, question_text, document_text, annotations)"
        )


def read_nq(files: list[Path], data: DataSpec) -> datasets.Dataset:
    """Natural Questions jsonl (simplified, or the original format) -> SQuAD records; examples without
    a long answer are skipped."""
    records, skipped = [], 0
    for path in files:
        for n, example in json_lines(path):
            not_nq_open(path, n, example)
            try:
                record = _nq_record(example)
            except (KeyError, TypeError, IndexError) as e:
                raise DataError(
                    f"{path}:{n}: not a Natural Questions example ({type(e).__name__}: {e}; expected "
                    "example_id, question_text, document_text or document_tokens, annotations)"
                ) from None
            skipped += record is None
            records += [record] if record else []
    if skipped:
        log.warning("nq: skipped %d of %d examples that have no long answer", skipped, skipped + len(records))
    return datasets.Dataset.from_list(records)


def read_dailydialog(files: list[Path], data: DataSpec) -> datasets.Dataset:
    """DailyDialog: one dialogue per line, turns separated by __eou__ (act/emotion label files ignored)."""
    records = []
    for path in files:
        if path.name.startswith(("dialogues_act", "dialogues_emotion")) or path.name.lower().startswith(
            "readme"
        ):
            continue
        for n, line in numbered_lines(path):
            turns = [t.strip() for t in line.split("__eou__")]
            while turns and not turns[-1]:
                turns.pop()
            if turns:
                records.append({"id": f"{path.stem}:{n}", "turns": turns})
    return datasets.Dataset.from_list(records)


# ---------------------------------------------------------------------------------------- SuperGLUE
# Hugging Face super_glue class order per task; booleans and 0/1 map to False/True.
LABELS = {
    "cb": ("entailment", "contradiction", "neutral"),
    "rte": ("entailment", "not_entailment"),
    "axb": ("entailment", "not_entailment"),
    "axg": ("entailment", "not_entailment"),
}
TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc", "axb", "axg")
_PAIRS = {
    "boolq": ("question", "passage"),
    "cb": ("premise", "hypothesis"),
    "rte": ("premise", "hypothesis"),
    "axb": ("sentence1", "sentence2"),
    "axg": ("premise", "hypothesis"),
}


def _label(task: str, value: Any) -> int:
    if value is None:
        return -1
    if isinstance(value, str) and task in LABELS:
        return LABELS[task].index(value)
    if isinstance(value, str):
        return {"false": 0, "true": 1}[value.lower()]
    return int(value)


def _flatten(task: str, row: dict) -> Iterator[dict]:
    """One SuperGLUE jsonl row -> Hugging Face super_glue record(s)."""
    if task == "multirc":
        passage = row["passage"]
        for q in passage["questions"]:
            for a in q["answers"]:
                idx = {"paragraph": row["idx"], "question": q["idx"], "answer": a["idx"]}
                yield {
                    "paragraph": passage["text"],
                    "question": q["question"],
                    "answer": a["text"],
                    "idx": idx,
                    "label": _label(task, a.get("label")),
                }
    elif task == "record":
        text = row["passage"]["text"]
        spans = sorted(row["passage"]["entities"], key=lambda e: e["start"])
        entities = list(dict.fromkeys(text[e["start"] : e["end"] + 1] for e in spans))  # inclusive ends
        for qa in row["qas"]:
            yield {
                "passage": text,
                "query": qa["query"],
                "entities": entities,
                "answers": sorted({a["text"] for a in qa.get("answers", [])}),
                "idx": {"passage": row["idx"], "query": qa["idx"]},
            }
    else:
        record = {**row, **row.get("target", {})}
        record.pop("target", None)
        record["label"] = _label(task, record.get("label"))
        yield record


def superglue_fields(task: str, r: dict) -> dict:
    """The fields the task's kind reads, from a Hugging Face super_glue record."""
    if task in _PAIRS:
        a, b = _PAIRS[task]
        return {"text": r[a], "text_pair": r[b]}
    if task == "wic":
        return {"text": f"{r['word']}: {r['sentence1']}", "text_pair": r["sentence2"]}
    if task == "wsc":
        words = r["text"].split(" ")
        for index, span, mark in (
            (r["span1_index"], r["span1_text"], "*"),
            (r["span2_index"], r["span2_text"], "#"),
        ):
            last = min(index + len(span.split()), len(words)) - 1
            words[index] = mark + words[index]
            words[last] += mark  # the same word when the span is one word long
        return {"text": " ".join(words), "text_pair": ""}
    if task == "multirc":
        group = f"{r['idx']['paragraph']}-{r['idx']['question']}"
        return {"text": r["paragraph"], "text_pair": f"{r['question']} {r['answer']}", "group": group}
    if task == "copa":
        ask = " What was the cause?" if r["question"] == "cause" else " What happened as a result?"
        # The question is folded into the context; the multiple-choice kind reads "question" too.
        return {"context": r["premise"] + ask, "question": "", "choices": [r["choice1"], r["choice2"]]}
    if task == "record":
        spans = r.get("entity_spans") or {"text": r["entities"]}  # the hub's entities are an unordered set
        return {
            "context": r["passage"],
            "question": r["query"],
            "choices": list(dict.fromkeys(spans["text"])),
        }
    raise DataError(f"superglue: unknown task {task!r}; allowed: {', '.join(TASKS)}")


def read_superglue(files: list[Path], data: DataSpec) -> datasets.Dataset:
    """SuperGLUE release jsonl, flattened as Hugging Face's super_glue, plus the kind's fields."""
    task = data.subset.lower().split(".")[0]  # the hub names the corrected WSC "wsc.fixed"
    if task not in TASKS:
        raise DataError(
            f"[data].subset: {data.subset!r} is not a SuperGLUE task; allowed: {', '.join(TASKS)}"
        )
    records = []
    for path in files:
        for n, row in json_lines(path):
            try:
                records += [{**r, **superglue_fields(task, r)} for r in _flatten(task, row)]
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise DataError(
                    f"{path}:{n}: not a SuperGLUE {task} record ({type(e).__name__}: {e})"
                ) from None
    return datasets.Dataset.from_list(records)
