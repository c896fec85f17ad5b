"""Metrics for every task kind, computed as the official scripts do, each returned as a 0-100 percentage.

Sources followed: sklearn (F1, macro F1, multiclass MCC), scipy (Pearson, Spearman with averaged
ties), the SQuAD v1.1/v2.0 and SuperGLUE ReCoRD evaluation scripts, conlleval (BIO chunks) and the
CoNLL-2005 srl-eval.pl (argument P/R/F1 without V, continuation pieces joined into one argument).
Empty inputs and undefined statistics give 0.0 instead of raising or returning NaN, so a run can
always compare epochs.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np


def _same_length(a: Sequence, b: Sequence, names: str = "preds, labels") -> None:
    """Raise ValueError unless a and b are equally long (a silent zip would drop examples)."""
    if len(a) != len(b):
        raise ValueError(f"{names}: lengths differ ({len(a)} vs {len(b)})")


def _prf(correct: int, predicted: int, gold: int) -> dict[str, float]:
    """Precision, recall and F1 x100 from counts, as conlleval and srl-eval.pl compute them."""
    p = 100.0 * correct / predicted if predicted else 0.0
    r = 100.0 * correct / gold if gold else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1}


# --- classification ------------------------------------------------------------------------------


def accuracy(preds: Sequence, labels: Sequence) -> float:
    """Share of predictions equal to their label, x100."""
    _same_length(preds, labels)
    if not labels:
        return 0.0
    return 100.0 * sum(p == y for p, y in zip(preds, labels, strict=True)) / len(labels)


def _f1_of(preds: Sequence, labels: Sequence, positive: Any) -> float:
    """F1 in [0, 1] of one class; 0 when it is neither predicted nor gold (sklearn's zero_division)."""
    tp = sum(p == positive and y == positive for p, y in zip(preds, labels, strict=True))
    fp = sum(p == positive and y != positive for p, y in zip(preds, labels, strict=True))
    fn = sum(p != positive and y == positive for p, y in zip(preds, labels, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def binary_f1(preds: Sequence, labels: Sequence, positive: Any = 1) -> float:
    """F1 of the `positive` class, x100 (sklearn f1_score with pos_label)."""
    _same_length(preds, labels)
    return 100.0 * _f1_of(preds, labels, positive)


def macro_f1(preds: Sequence, labels: Sequence) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or preds, x100."""
    _same_length(preds, labels)
    classes = set(labels) | set(preds)
    if not classes:
        return 0.0
    return 100.0 * sum(_f1_of(preds, labels, c) for c in classes) / len(classes)


def matthews_corrcoef(preds: Sequence, labels: Sequence) -> float:
    """Multiclass MCC (Gorodkin's R_K, as sklearn computes it) x100; 0 when undefined."""
    _same_length(preds, labels)
    n = len(labels)
    true_counts, pred_counts = Counter(labels), Counter(preds)
    correct = sum(p == y for p, y in zip(preds, labels, strict=True))
    # Python ints: the products below overflow int64 on large splits.
    cov_tp = correct * n - sum(true_counts[k] * pred_counts[k] for k in true_counts)
    cov_pp = n * n - sum(c * c for c in pred_counts.values())
    cov_tt = n * n - sum(c * c for c in true_counts.values())
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return 100.0 * cov_tp / (cov_tt * cov_pp) ** 0.5


_CLASSIFICATION = {"accuracy": accuracy, "f1": binary_f1, "macro_f1": macro_f1, "mcc": matthews_corrcoef}


def classification_scores(preds: Sequence, labels: Sequence, metrics: Sequence[str]) -> dict[str, float]:
    """{name: value} for each requested name among accuracy, f1 (positive class 1), macro_f1, mcc."""
    unknown = [m for m in metrics if m not in _CLASSIFICATION]
    if unknown:
        raise ValueError(f"unknown classification metric(s) {unknown}; allowed: {', '.join(_CLASSIFICATION)}")
    return {m: _CLASSIFICATION[m](preds, labels) for m in metrics}


# --- regression ----------------------------------------------------------------------------------


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r x100 (scipy.stats.pearsonr); 0 for fewer than 2 points or a constant input."""
    _same_length(x, y, "x, y")
    if len(x) < 2:
        return 0.0
    xm = np.asarray(x, dtype=np.float64) - np.mean(x)
    ym = np.asarray(y, dtype=np.float64) - np.mean(y)
    denominator = np.sqrt(np.dot(xm, xm) * np.dot(ym, ym))
    if denominator == 0:
        return 0.0
    # Clipped as scipy does: rounding can push |r| a hair past 1.
    return 100.0 * float(np.clip(np.dot(xm, ym) / denominator, -1.0, 1.0))


def _average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (scipy.stats.rankdata 'average')."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=np.float64)
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1  # mean of ranks i+1 .. j+1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rho x100: Pearson r of the average ranks (scipy.stats.spearmanr)."""
    _same_length(x, y, "x, y")
    return pearson(_average_ranks(x), _average_ranks(y))


def regression_scores(preds: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """{"pearson", "spearman"} x100 between predictions and gold scores."""
    return {"pearson": pearson(preds, labels), "spearman": spearman(preds, labels)}


# --- extractive QA (SQuAD, ReCoRD) ---------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace (SQuAD)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _golds(golds: Sequence[str]) -> list[str]:
    """SQuAD v2.0 gold list: answers that normalise to nothing are dropped; none left means no-answer."""
    kept = [g for g in golds if normalize_answer(g)]
    return kept or [""]


def _token_f1(prediction: str, gold: str, empty_rule: bool) -> float:
    """Bag-of-tokens F1 in [0, 1]; with empty_rule (v2.0) an empty side scores 1 iff both are empty."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if empty_rule and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_exact(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the prediction equals any gold answer after normalisation, else 0.0 (SQuAD v2.0 golds)."""
    return max(float(normalize_answer(prediction) == normalize_answer(g)) for g in _golds(golds))


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    """Best token F1 in [0, 1] over the gold answers, with the SQuAD v2.0 no-answer rule."""
    return max(_token_f1(prediction, g, empty_rule=True) for g in _golds(golds))


def squad_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """{"exact_match", "f1"} x100 averaged over every reference id; a missing prediction counts as ""."""
    if not references:
        return {"exact_match": 0.0, "f1": 0.0}
    em = sum(squad_exact(predictions.get(qid, ""), golds) for qid, golds in references.items())
    f1 = sum(squad_f1(predictions.get(qid, ""), golds) for qid, golds in references.items())
    return {"exact_match": 100.0 * em / len(references), "f1": 100.0 * f1 / len(references)}


def record_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """ReCoRD {"exact_match", "f1"} x100: best over gold answers, SQuAD v1.1 F1, a missing prediction 0."""
    em = f1 = 0.0
    for qid, golds in references.items():
        if qid not in predictions or not golds:  # the official script scores an unanswered query 0
            continue
        pred = normalize_answer(predictions[qid])
        em += max(float(pred == normalize_answer(g)) for g in golds)
        f1 += max(_token_f1(predictions[qid], g, empty_rule=False) for g in golds)
    n = len(references)
    return {"exact_match": 100.0 * em / n if n else 0.0, "f1": 100.0 * f1 / n if n else 0.0}


# --- spans: NER, SRL, relations ------------------------------------------------------------------


def bio_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(label, start, end_exclusive) chunks of a BIO sequence, read as conlleval reads them."""
    spans: list[tuple[str, int, int]] = []
    label, start = None, 0  # the open chunk, if any
    for i, tag in enumerate(tags):
        if tag == "O":
            prefix, kind = "O", None
        elif tag[:2] in ("B-", "I-"):
            prefix, kind = tag[0], tag[2:]
        else:
            raise ValueError(f"tag {tag!r} at position {i} is not 'O', 'B-<label>' or 'I-<label>'")
        # conlleval: B always starts a chunk; I starts one after O or after a chunk of another type.
        if label is not None and (prefix != "I" or kind != label):
            spans.append((label, start, i))
            label = None
        if kind is not None and label is None:
            label, start = kind, i
    if label is not None:
        spans.append((label, start, len(tags)))
    return spans


def span_prf(pred: Sequence[set], gold: Sequence[set]) -> dict[str, float]:
    """Micro {"precision", "recall", "f1"} x100 over per-example sets of hashable items."""
    _same_length(pred, gold, "pred, gold")
    correct = sum(len(p & g) for p, g in zip(pred, gold, strict=True))
    return _prf(correct, sum(map(len, pred)), sum(map(len, gold)))


def entity_scores(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """conlleval entity-level {"precision", "recall", "f1"} x100: a chunk counts only if type and bounds match."""
    _same_length(pred_tags, gold_tags, "pred_tags, gold_tags")
    return span_prf([set(bio_spans(t)) for t in pred_tags], [set(bio_spans(t)) for t in gold_tags])


def _srl_arguments(tags: Sequence[str]) -> set[tuple[str, tuple[tuple[int, int], ...]]]:
    """One proposition's arguments as (role, pieces), V excluded, as srl-eval.pl builds them."""
    args: list[tuple[str, list[tuple[int, int]]]] = []
    latest: dict[str, int] = {}  # role -> index in args of its last argument
    for role, start, end in bio_spans(tags):
        # srl-eval.pl joins a C-X piece to the latest X argument (one discontinuous argument, right only
        # if every piece is); a C-X with no X before it becomes a plain X argument.
        base = role[2:] if role.startswith("C-") else role
        if role.startswith("C-") and base in latest:
            args[latest[base]][1].append((start, end))
        else:
            latest[base] = len(args)
            args.append((base, [(start, end)]))
    return {(role, tuple(pieces)) for role, pieces in args if role != "V"}


def srl_scores(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """CoNLL srl-eval.pl {"precision", "recall", "f1"} x100 over arguments (not V), one tag list per predicate."""
    _same_length(pred_tags, gold_tags, "pred_tags, gold_tags")
    return span_prf([_srl_arguments(t) for t in pred_tags], [_srl_arguments(t) for t in gold_tags])


def relation_scores(pred: Sequence[set[tuple]], gold: Sequence[set[tuple]]) -> dict[str, float]:
    """Micro {"precision", "recall", "f1"} x100 over per-sentence relation triples, whole-tuple match."""
    return span_prf(pred, gold)


# --- SuperGLUE MultiRC and ranking ---------------------------------------------------------------


def multirc_scores(
    preds: Sequence[int], labels: Sequence[int], groups: Sequence[Hashable]
) -> dict[str, float]:
    """{"f1a": F1 of class 1 over all answer options, "exact_match": % of groups with every option right}."""
    _same_length(preds, labels)
    _same_length(preds, groups, "preds, groups")
    all_right: dict[Hashable, bool] = {}
    for p, y, g in zip(preds, labels, groups, strict=True):
        all_right[g] = all_right.get(g, True) and p == y
    em = 100.0 * sum(all_right.values()) / len(all_right) if all_right else 0.0
    return {"f1a": binary_f1(preds, labels, 1), "exact_match": em}


def recall_at_1(scores: np.ndarray | Sequence[Sequence[float]]) -> float:
    """% of rows (queries) whose highest score is in their own column i; ties go to the first column."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return 0.0
    if s.ndim != 2 or s.shape[1] < s.shape[0]:
        raise ValueError(f"scores must be (queries, candidates) with candidates >= queries, got {s.shape}")
    return 100.0 * float(np.mean(s.argmax(axis=1) == np.arange(s.shape[0])))
