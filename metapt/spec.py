"""The TOML contract as frozen dataclasses: task specs and run specs, every key with its default. No torch.

A dataclass field's type says what TOML value it takes; `field(metadata=...)` adds the allowed
`choices` and the inclusive `low`/`high` bounds. metapt/validation.py builds these from TOML and
holds every rule, reporting every problem in a file at once.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metapt.catalog import (
    FORMATS,
    HEAD_TYPES,
    KINDS,
    LOSS_TYPES,
    MAX_SEED,
    REPORT_TO,
    SCHEDULERS,
    SYNTHETIC_CORPORA,
)
from metapt.policies import SCORES

LOCAL_FORMATS = tuple(f for f in FORMATS if f not in ("hf", "synthetic"))
SPLITS = ("train", "validation", "test")


def _f(
    default: Any,
    *,
    choices: Collection[str] = (),
    low: float | None = None,
    high: float | None = None,
    help: str = "",
    required: bool = False,
) -> Any:
    """A dataclass field with its allowed values (a registry itself, so that an entry added at run
    time is allowed too); `required` strings may not be empty."""
    meta = {"choices": choices, "low": low, "high": high, "help": help, "required": required}
    if isinstance(default, (dict, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------- task specs
@dataclass(frozen=True)
class DataSpec:
    format: str = _f("", choices=FORMATS, help="how the data is stored", required=True)
    train: str = _f(
        "",
        help="local: file, folder or glob relative to the spec; hf: split name; "
        "synthetic: the generated split that serves as train (default train)",
    )
    validation: str = _f("", help="as train")
    test: str = _f("", help="as train")
    dataset: str = _f("", help="hf: hub id, e.g. nyu-mll/glue")
    subset: str = _f("", help="hf: config name; superglue: the task")
    columns: dict[str, str | list[str]] = _f(
        {}, help="record field -> column name in the data (or a list of names: the first present wins)"
    )
    streaming: bool = _f(False, help="read as an iterable dataset (corpus-based source kinds)")
    shuffle_words: bool = _f(
        False,
        help="a control corpus: every sentence's words replaced by seeded draws from the split's words "
        "(same vocabulary, counts and lengths; no syntax, no facts)",
    )
    header: bool = _f(True, help="csv/tsv: the first row names the columns (else columns are 0, 1, ...)")
    corpus: str = _f("", choices=SYNTHETIC_CORPORA, help="synthetic: which generated corpus")
    size: int = _f(2000, low=1, high=10_000_000, help="synthetic: train examples (validation, test: size/5)")
    eval_size: int = _f(0, low=0, high=10_000_000, help="synthetic: validation and test examples (0: size/5)")
    seed: int = _f(0, low=0, help="synthetic: seed of the generated world")
    obtain: str = _f("", help="how to get data that cannot be downloaded (shown when it is missing)")
    base_dir: str = field(default=".", metadata={"internal": True})

    def location(self, split: str) -> str:
        """Where a split lives: a hub split name, or a path resolved against the spec file.
        `${METAPT_DATA}` stands for that environment variable, or ./data when it is unset; a relative
        one is a folder of the working directory, not of the spec's."""
        value = getattr(self, split)
        if not value or self.format in ("hf", "synthetic"):
            return value
        root = os.path.abspath(os.path.expanduser(os.environ.get("METAPT_DATA", "data")))
        value = value.replace("${METAPT_DATA}", root)
        return str(Path(self.base_dir, os.path.expanduser(value)))

    def synthetic_split(self, split: str) -> str:
        """synthetic: the generated split that serves as `split` ([data].train = "validation" makes a
        task of held-out documents of the same world)."""
        return getattr(self, split) or split

    def splits(self) -> tuple[str, ...]:
        """The splits this spec names (synthetic data always has all three)."""
        if self.format == "synthetic":
            return SPLITS
        return tuple(s for s in SPLITS if getattr(self, s))


@dataclass(frozen=True)
class HeadSpec:
    type: str = _f("", choices=HEAD_TYPES, help="head module; empty: the kind's default")
    dropout: float = _f(0.1, low=0.0, high=0.9, help="dropout before the head's classifier")


@dataclass(frozen=True)
class LossSpec:
    type: str = _f("", choices=LOSS_TYPES, help="loss function; empty: the kind's default")
    label_smoothing: float = _f(0.0, low=0.0, high=0.5, help="cross-entropy label smoothing")


@dataclass(frozen=True)
class BatchSpec:
    size: int = _f(32, low=1, high=65536, help="examples per batch")
    max_length: int = _f(128, low=8, high=8192, help="tokens per sequence (longer: truncated or strided)")
    stride: int = _f(32, low=0, high=4096, help="tokens shared by consecutive windows of a long context")


@dataclass(frozen=True)
class FinetuneSpec:
    epochs: int = _f(3, low=1, high=1000, help="passes over the train split")
    lr: float = _f(5e-5, low=0.0, high=1.0, help="AdamW learning rate")
    warmup_ratio: float = _f(0.1, low=0.0, high=1.0, help="share of steps with linear warmup")
    weight_decay: float = _f(0.01, low=0.0, high=1.0, help="AdamW weight decay")


@dataclass(frozen=True)
class TaskSpec:
    kind: str = _f("", choices=KINDS, help="task kind (see `metapt inspect-tasks`)", required=True)
    name: str = _f("", help="task name; default: the file stem")
    description: str = _f("", help="one line shown by inspect-tasks")
    data: DataSpec = field(default_factory=DataSpec)
    head: HeadSpec = field(default_factory=HeadSpec)
    loss: LossSpec = field(default_factory=LossSpec)
    batch: BatchSpec = field(default_factory=BatchSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    options: dict[str, Any] = _f({}, help="kind-specific options (see the kind table)")
    path: str = field(default="", metadata={"internal": True})

    def option(self, key: str) -> Any:
        """A kind option's value, falling back to the kind's default."""
        return self.options.get(key, KINDS[self.kind].options[key].default)

    def loss_name(self) -> str:
        """The task's loss: its [loss].type, else its kind's default."""
        return self.loss.type or KINDS[self.kind].losses[0]


# ----------------------------------------------------------------------------------- run specs
@dataclass(frozen=True)
class RunSection:
    output_dir: str = _f("ckpt", help="checkpoints and metrics.jsonl (relative to the working directory)")
    seed: int = _f(0, low=0, high=MAX_SEED, help="seed of weights, data order, masking and exploration")
    episodes: int = _f(100, low=1, help="episodes to run")
    device: str = _f("auto", help="auto | cpu | cuda | cuda:N | mps")
    precision: str = _f("auto", choices=("auto", "fp32", "bf16", "fp16"), help="auto: bf16 on CUDA")
    checkpoint_every: int = _f(10, low=1, help="episodes between checkpoints (and one at the end)")
    report_to: tuple[str, ...] = _f(
        (), choices=REPORT_TO, help="also log every episode's scalars to these (see Logging)"
    )
    eval_every: int = _f(
        10, low=0, help="episodes between held-out evaluations (and one at the end; 0: none)"
    )
    eval_batches: int = _f(8, low=1, high=10_000, help="fixed held-out batches scored per task")
    eval_head_steps: int = _f(
        100, low=0, high=100_000, help="aware: head-only steps fitting a fresh target head before scoring"
    )
    eval_head_lr: float = _f(1e-2, low=0.0, high=1.0, help="aware: AdamW lr of that fit")


@dataclass(frozen=True)
class ModelSpec:
    # A relative dir is the working directory's, as [run].output_dir (which a later run's pretrained
    # names), not the spec file's: joining it to the spec's folder would break such a pair and make
    # a hub id ambiguous with a folder of that name beside the spec.
    pretrained: str = _f(
        "",
        help="hub id or local dir (relative to the working directory); empty: a new encoder from the fields below",
    )
    architecture: str = _f("bert", choices=("bert", "roberta"), help="encoder family")
    hidden_size: int = _f(128, low=8, high=16384, help="hidden width")
    num_layers: int = _f(2, low=1, high=96, help="transformer layers")
    num_heads: int = _f(2, low=1, high=128, help="attention heads (must divide hidden_size)")
    intermediate_size: int = _f(512, low=8, high=65536, help="feed-forward width")
    max_length: int = _f(128, low=8, high=8192, help="position embeddings")
    dropout: float = _f(0.1, low=0.0, high=0.9, help="hidden and attention dropout")


@dataclass(frozen=True)
class TokenizerSpec:
    pretrained: str = _f(
        "",
        help="hub id or local dir (relative to the working directory); empty: WordPiece trained on the sources' text",
    )
    vocab_size: int = _f(
        8000, low=100, high=1_000_000, help="WordPiece vocabulary when trained (the most it holds)"
    )
    lowercase: bool = _f(True, help="lowercase text when a WordPiece is trained")


@dataclass(frozen=True)
class MetaSpec:
    setting: str = _f(
        "agnostic", choices=("agnostic", "aware"), help="targets = sources, or labelled targets"
    )
    sources: tuple[str, ...] = _f((), help="source task names, or spec paths relative to this file")
    targets: tuple[str, ...] = _f((), help="target task names (required when setting = aware)")
    scheduler: str = _f("meta", choices=SCHEDULERS, help="how the next task is chosen")
    utility: str = _f(
        "exact", choices=("exact", "first_order"), help="meta: scored loss or gradient dot product"
    )
    normalize: str = _f("none", choices=("none", "relative"), help="relative: each target's gain / its loss")
    inner_lr: float = _f(1e-3, low=0.0, high=10.0, help="alpha, the inner SGD step")
    lr: float = _f(1e-4, low=0.0, high=1.0, help="lambda, the AdamW learning rate")
    support_batches: int = _f(2, low=1, high=1024, help="M: support batches per source and target batches")
    target_batches: int = _f(
        0,
        low=0,
        high=1024,
        help="batches of every target per selection, shared by all sources (0: M, as Algorithm 1)",
    )
    train_batches: int = _f(16, low=1, high=100_000, help="N: training batches per episode")
    epsilon: float = _f(0.1, low=0.0, high=1.0, help="probability of exploring a random task")
    grad_accumulation: int = _f(1, low=1, high=1024, help="micro-batches per batch")
    warmup_ratio: float = _f(0.06, low=0.0, high=1.0, help="share of training steps with linear warmup")
    weight_decay: float = _f(0.01, low=0.0, high=1.0, help="AdamW weight decay")
    max_grad_norm: float = _f(1.0, low=0.0, high=1e6, help="gradient clipping (0: off)")
    temperature: float = _f(2.0, low=0.01, high=1000.0, help="temperature scheduler: p ~ size^(1/T)")
    single_task: str = _f("", help="single scheduler: the task to train (default: the first source)")
    select_every: int = _f(1, low=1, high=100_000, help="meta: re-select every k episodes")
    head_lr: float = _f(1e-3, low=0.0, high=1.0, help="aware: lr of the head-only target update")
    head_fit_steps: int = _f(
        200,
        low=0,
        high=100_000,
        help="aware: at most this many head-only steps fit the target heads on the frozen encoder "
        "before the first selection (stops early when the loss stops falling; 0: none)",
    )
    refit_heads_every: int = _f(
        0,
        low=0,
        high=100_000,
        help="meta: fit the sources' heads again on the frozen encoder, as before the first selection, "
        "before every k-th selection after it (an unchosen source's head is otherwise the one fitted "
        "to the initial encoder; 0: never again)",
    )
    policy: str = _f(
        "greedy",
        choices=("greedy", "bandit"),
        help="meta: greedy (Algorithm 1: argmax of each selection) or bandit (discounted Thompson sampling)",
    )
    discount: float = _f(
        0.95, low=0.0, high=0.9999, help="bandit: weight of the evidence of the selection before"
    )
    bandit_score: str = _f(
        "value",
        choices=SCORES,
        help="bandit: what it accumulates, each selection's utilities or their ranks among the sources",
    )
    inner_step: str = _f(
        "sgd",
        choices=("sgd", "normalized"),
        help="theta - alpha g, or theta - alpha g / |g_encoder| (every task steps the same distance)",
    )
    support_batch_size: int = _f(
        0,
        low=0,
        high=65_536,
        help="meta: examples per support batch (a probe), 0: each source's [batch] size; not 1 with a "
        "contrastive source (no in-batch negatives)",
    )
    selection_params: str = _f(
        "all",
        help="meta: the parameters selection differentiates: all, or top:K (the top K encoder layers and "
        "the heads; not the embeddings)",
    )
    sketch: int = _f(
        0,
        low=0,
        high=1 << 30,
        help="first order: keep each support gradient's encoder part as a random-sign sketch of this "
        "many numbers (0: exactly)",
    )
    reuse_training: bool = _f(
        False,
        help="agnostic first order: the chosen task's last M training gradients stand in for its support "
        "batches at the next selection",
    )
    mixture: str = _f("", help="mixture scheduler: a mixture.json to replay (relative to this file)")
    mixture_phases: bool = _f(False, help="mixture: replay each phase's shares, not the overall ones")

    @property
    def shares_targets(self) -> bool:
        """Agnostic first-order selection with M >= 2 scores the sources' support gradients against each
        other (the shared estimate, `selection.shared`): it draws no target batches."""
        return self.utility == "first_order" and self.setting == "agnostic" and self.support_batches >= 2


@dataclass(frozen=True)
class RunSpec:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSpec = field(default_factory=ModelSpec)
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    meta: MetaSpec = field(default_factory=MetaSpec)
    path: str = field(default="", metadata={"internal": True})
    sources: tuple[TaskSpec, ...] = field(default=(), metadata={"internal": True})
    targets: tuple[TaskSpec, ...] = field(default=(), metadata={"internal": True})

    def tasks(self) -> dict[str, TaskSpec]:
        """Every task of the run by name, sources first."""
        return {t.name: t for t in (*self.sources, *self.targets)}
