"""What a spec may name: task kinds, data formats, heads, losses, schedulers. Plain data, no torch.

The kind implementations (metapt/kinds/) import torch; validation only needs these tables, so
`metapt validate` and `metapt inspect-tasks` stay fast and model-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Option:
    """One key of a task spec's `[options]` table: its default (and so its type) and allowed values;
    metapt/validation.py checks a value against them."""

    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None


@dataclass(frozen=True)
class KindInfo:
    """What a task kind is: the role it plays, the heads/losses it accepts (first = default), its
    metrics (first = main metric), the record fields its data must provide, its options, the record
    fields holding the text a WordPiece is trained on, and the suffix of its prediction files."""

    role: str  # "source": a pretraining objective; "target": a labelled downstream task
    heads: tuple[str, ...]
    losses: tuple[str, ...]
    metrics: tuple[str, ...]
    fields: tuple[str, ...]  # required record fields, after `[data.columns]` renaming
    options: dict[str, Option] = field(default_factory=dict)
    help: str = ""
    micro_batches: bool = True  # False when examples interact (in-batch negatives): never split
    # Checks across options, (the spec's [options] table) -> problems "[options].key: why".
    check: Callable[[dict[str, Any]], list[str]] | None = None
    # Sources: the record fields with the text a trained WordPiece reads, the first one a record has
    # (a document's `text` is its `sentences` joined). Targets: none; the tokenizer never reads them.
    text: tuple[str, ...] = ()
    suffix: str = "jsonl"  # of the prediction files: predictions/SPLIT.SUFFIX in the field's own format
    # Targets: the fields of `fields` holding the gold answer, which a test split may lack or leave null.
    labels: tuple[str, ...] = ()
    # Record fields the kind reads when a record has them: absent or null is fine, another type is not.
    optional: tuple[str, ...] = ()


MASKING = ("token", "whole_word", "phrase", "entity")


def masking_of(options: dict[str, Any]) -> str:
    """masked_lm's effective masking: `masking` when given, else its older alias `whole_word_mask`."""
    if "masking" in options:
        return options["masking"]
    return "whole_word" if options.get("whole_word_mask") is True else "token"


def _check_masking(options: dict[str, Any]) -> list[str]:
    """`masking` and its alias `whole_word_mask` may both be given only when they agree."""
    masking, alias = options.get("masking"), options.get("whole_word_mask")
    if masking not in MASKING or not isinstance(alias, bool) or alias == (masking != "token"):
        return []
    return [
        f"[options].whole_word_mask: {str(alias).lower()} contradicts masking = {masking!r} "
        "(whole_word_mask is the older alias: true means whole words, false means single tokens); "
        "give `masking` alone"
    ]


def _check_blank(options: dict[str, Any]) -> list[str]:
    """span_selection's blank must be a visible word: an empty one deletes the term from the query
    and leaves no mark of where it was."""
    blank = options.get("blank_token")
    if not isinstance(blank, str) or blank.strip():
        return []
    return [f"[options].blank_token: {blank!r} is empty; allowed: a non-empty word such as '[BLANK]'"]


# Per-token binary tagging kinds: heads, losses, metrics, fields.
_WORD_TAGS = (("token_classification",), ("cross_entropy",), ("f1", "accuracy"), ("text",))
DOCUMENT = ("text", "sentences")  # a corpus kind's text: the record's `text`, else its `sentences`
_REPLACEMENTS = ("uniform", "unigram", "bigram")
_LABELS = Option([], "label names in order; empty: the sorted labels found in the train split")
_MAIN = Option("", "metric used to pick the best epoch; empty: the kind's first metric")

KINDS: dict[str, KindInfo] = {
    "masked_lm": KindInfo(
        "source",
        ("mlm",),
        ("cross_entropy",),
        ("accuracy", "loss"),
        ("text",),
        {
            "mask_probability": Option(0.15, "share of tokens selected for prediction", low=0.01, high=0.9),
            "masking": Option(
                "token",
                "the masked unit: a token, a whole word, or a phrase / entity span with every sub-word",
                choices=MASKING,
            ),
            "whole_word_mask": Option(False, 'older alias: true means masking = "whole_word"'),
        },
        "masked language modelling with dynamic 80/10/10 masking; ERNIE knowledge masking",
        check=_check_masking,
        text=DOCUMENT,
    ),
    "sentence_reordering": KindInfo(
        "source",
        ("sequence_classification",),
        ("cross_entropy",),
        ("accuracy",),
        ("sentences",),
        {
            # m = 1 would be one class (every document unshuffled): nothing to learn
            "max_segments": Option(
                3, "split a paragraph into 1..m segments (sum of k! classes; m >= 2)", low=2, high=4
            )
        },
        "ERNIE 2.0 sentence reordering: classify the permutation of shuffled segments",
        text=DOCUMENT,
    ),
    "sentence_distance": KindInfo(
        "source",
        ("sequence_classification",),
        ("cross_entropy",),
        ("accuracy",),
        ("sentences",),
        {},
        "ERNIE 2.0 sentence distance: adjacent / same document / other document",
        text=DOCUMENT,
    ),
    "response_selection": KindInfo(
        "source",
        ("dual_encoder",),
        ("contrastive",),
        ("recall@1",),
        ("turns",),
        {"max_context_turns": Option(3, "dialogue turns kept as the context", low=1, high=32)},
        "dialogue context vs. the true next turn, in-batch negatives",
        micro_batches=False,
        text=("turns",),
    ),
    "span_selection": KindInfo(
        "source",
        ("span_pointer",),
        ("span_cross_entropy",),
        ("f1", "exact_match"),
        ("sentences",),
        {
            "blank_token": Option("[BLANK]", "the word that replaces the answer term in the query"),
            "passage": Option(
                "nearby",
                "where the passage comes from: nearby (sentences of the query's own document) or bm25 "
                "(retrieved from a pool of 100 documents)",
                choices=("nearby", "bm25"),
            ),
        },
        "masked passage retrieval (Glass et al. 2020): find the blanked term's span in a passage",
        check=_check_blank,
        text=DOCUMENT,
    ),
    "capitalization_prediction": KindInfo(
        "source",
        *_WORD_TAGS,
        {},
        "ERNIE 2.0 word-aware: from lowercased text, predict per word whether it was capitalised",
        text=DOCUMENT,
    ),
    "token_document_relation": KindInfo(
        "source",
        *_WORD_TAGS,
        {
            "segment_sentences": Option(1, "sentences per segment (one sequence each)", low=1, high=64),
            "ignore_stopwords": Option(True, "stop words get no label (punctuation never has one)"),
        },
        "ERNIE 2.0 word-aware: per word of a segment, does it occur in another segment of the document?",
        text=DOCUMENT,
    ),
    "ir_relevance": KindInfo(
        "source",
        ("sequence_classification",),
        ("cross_entropy",),
        ("accuracy",),
        ("text",),
        {"passage_sentences": Option(2, "sentences per passage", low=1, high=64)},
        "ERNIE 2.0 semantic-aware: title (or first sentence) vs passage: strong / weak / no relevance",
        text=DOCUMENT,
    ),
    "replaced_token_detection": KindInfo(
        "source",
        *_WORD_TAGS,
        {
            "replace_probability": Option(0.15, "share of tokens replaced", low=0.01, high=0.9),
            "replacement": Option("uniform", "where replacements come from", choices=_REPLACEMENTS),
        },
        "ELECTRA-style: per token, was it replaced? (replacements without a generator network)",
        text=DOCUMENT,
    ),
    "classification": KindInfo(
        "target",
        ("sequence_classification",),
        ("cross_entropy",),
        ("accuracy", "f1", "macro_f1", "mcc", "f1a", "exact_match"),
        ("text", "label"),
        {"labels": _LABELS, "main_metric": _MAIN},
        "single sentences or pairs (GLUE, SuperGLUE)",
        suffix="tsv",
        labels=("label",),
        optional=("text_pair",),
    ),
    "regression": KindInfo(
        "target",
        ("regression",),
        ("mse",),
        ("pearson", "spearman"),
        ("text", "label"),
        {"main_metric": _MAIN},
        "a real-valued score for a sentence or pair (STS-B)",
        suffix="tsv",
        labels=("label",),
        optional=("text_pair",),
    ),
    "token_classification": KindInfo(
        "target",
        ("token_classification",),
        ("cross_entropy",),
        ("f1", "precision", "recall"),
        ("tokens", "tags"),
        {"labels": _LABELS, "main_metric": _MAIN},
        "BIO tagging, entity-level F1 (NER)",
        labels=("tags",),
    ),
    "srl": KindInfo(
        "target",
        ("predicate_tagger",),
        ("cross_entropy",),
        ("f1", "precision", "recall"),
        ("tokens", "predicate_indices", "srl_tags"),
        {"labels": _LABELS, "main_metric": _MAIN},
        "semantic role labelling, one instance per predicate, span F1 without the V",
        suffix="props",
        labels=("srl_tags",),
    ),
    "relation_extraction": KindInfo(
        "target",
        ("entity_pair",),
        ("cross_entropy",),
        ("f1", "precision", "recall"),
        ("tokens", "entities", "relations"),
        {"labels": _LABELS, "main_metric": _MAIN},
        "entity-pair classification over typed entity markers, micro F1 over triples",
        labels=("relations",),
    ),
    "extractive_qa": KindInfo(
        "target",
        ("span_pointer",),
        ("span_cross_entropy",),
        ("f1", "exact_match"),
        ("context", "question", "answers"),
        {
            "version_2_with_negative": Option(False, "questions may have no answer (SQuAD 2.0)"),
            "max_answer_length": Option(30, "longest answer span in tokens", low=1, high=512),
            "main_metric": _MAIN,
        },
        "start/end pointer with document stride (SQuAD, Natural Questions)",
        suffix="json",
        labels=("answers",),
    ),
    "multiple_choice": KindInfo(
        "target",
        ("multiple_choice",),
        ("cross_entropy",),
        ("accuracy", "exact_match", "f1"),
        ("context", "choices"),
        {"main_metric": _MAIN},
        "one score per (context, candidate), softmax over candidates (COPA, ReCoRD)",
        optional=("question", "answers", "label"),
    ),
}

# Data formats: name -> one line of help. Readers live in metapt/data/.
FORMATS: dict[str, str] = {
    "hf": "datasets.load_dataset(dataset, subset, split=...) (needs the hub or its cache)",
    "json": "a JSON file: a list of records, or {field: [records]}",
    "jsonl": "one JSON record per line",
    "csv": "comma-separated with a header row",
    "tsv": "tab-separated (GLUE files, no quoting)",
    "parquet": "Apache Parquet",
    "text": "plain text: one sentence per line, documents separated by blank lines",
    "wikitext": "WikiText files: articles with titles from their ` = Title = ` headings",
    "squad": "SQuAD v1.1 / v2.0 JSON",
    "conll2005": "CoNLL-2005 words + props columns (or the release's words/ and props/ files)",
    "conll2012": "OntoNotes 5.0 *_gold_conll files",
    "conll04": "Roth & Yih conll04.corp: token lines, then relation lines",
    "spert": "SpERT JSON: tokens, entities {type,start,end}, relations {type,head,tail}",
    "dygie": "DyGIE++ JSON lines: sentences, ner, relations with document offsets",
    "dailydialog": "DailyDialog: one dialogue per line, turns separated by __eou__",
    "superglue": "SuperGLUE jsonl; `subset` names the task (boolq, cb, copa, multirc, record, wic, wsc, ...)",
    "nq": "Natural Questions simplified jsonl (document_text, annotations)",
    "synthetic": "the built-in synthetic world, written in a real format and read back through its reader",
}

SYNTHETIC_CORPORA: tuple[str, ...] = (
    "documents",
    "shuffled",
    "dialogues",
    "conll04",
    "conll2012",
    "pairs",
    "squad",
    "articles",
    "claims",
    "types",
)

HEAD_TYPES: tuple[str, ...] = tuple(dict.fromkeys(h for k in KINDS.values() for h in k.heads))
LOSS_TYPES: tuple[str, ...] = tuple(dict.fromkeys(x for k in KINDS.values() for x in k.losses))

# compare's downstream tasks for agnostic runs: the synthetic world's few-shot SRL, closed-book claims
# that only the sources' facts decide, and closed-book word typing, whose scored words only the
# sources place (it rises with pretraining).
DEFAULT_DOWNSTREAM: tuple[str, ...] = ("conll2012-synthetic", "claims-synthetic", "types-synthetic")
# The largest seed: torch.manual_seed takes 64 bits, and a run seeds its exploration with seed + 1.
MAX_SEED = 2**63 - 1

SCHEDULERS: tuple[str, ...] = (
    "meta",
    "uniform",
    "proportional",
    "temperature",
    "sequential",
    "round_robin",
    "single",
    "mixture",
)
REPORT_TO: tuple[str, ...] = ("tensorboard", "wandb")  # metapt/reporting.py's BACKENDS
SOURCE_KINDS: tuple[str, ...] = tuple(k for k, v in KINDS.items() if v.role == "source")


def record_fields(kind: str, split: str) -> tuple[tuple[str, ...], ...]:
    """What every record of a split needs a value (not null) for: one field of each group. A corpus
    kind's document is its `text` or its `sentences`; a test split may be unlabelled (GLUE's test files)."""
    info, groups = KINDS[kind], []
    for name in info.fields:
        if split == "test" and name in info.labels:
            continue
        group = DOCUMENT if info.text == DOCUMENT and name in DOCUMENT else (name,)
        if group not in groups:
            groups.append(group)
    return tuple(groups)


def optional_fields(kind: str, split: str) -> tuple[str, ...]:
    """The fields a record of a split may have, whose values the kind reads when it has them: its
    kind's optional ones, and in a test split its labels (`record_fields` needs none there)."""
    info = KINDS[kind]
    return info.optional + (info.labels if split == "test" else ())


def roles(kind: str) -> tuple[str, ...]:
    """The parts a task of this kind can play in a run."""
    if KINDS[kind].role == "source":
        return ("source", "target (agnostic)")
    return ("target (aware)", "downstream")
