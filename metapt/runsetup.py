"""What a run is made of, assembled: `setup` reads and encodes the tasks (training a WordPiece on the
sources' text unless a tokenizer is given), builds the model, optimizers and streams from
metapt/builders.py, and on --resume loads the checkpoint into them. The episode loop (engine.py) and
the bench start from the `Run` it returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import torch

from metapt import checkpoint, distributed, pointless, policies, resuming, runstate
from metapt.builders import build_encoder, build_model, build_optimizers, build_streams
from metapt.catalog import KINDS
from metapt.data.batches import train_size
from metapt.data.pipeline import TaskData, load_task, tokenizer_hash
from metapt.data.tokenizer import check_special, load_tokenizer, train_wordpiece
from metapt.device import autocast_for, pick_device
from metapt.flops import FlopCounter
from metapt.runstate import Run
from metapt.spec import RunSpec

TOKENIZER_SAMPLE = 100_000  # records of a streamed source read to build a vocabulary


def _corpus_texts(tasks: list[TaskData]) -> list[str]:
    """The source tasks' training text, for training a WordPiece."""
    out: list[str] = []
    for task in tasks:
        # A stream is sampled (its first records), not read whole, to build the vocabulary.
        records = task.records["train"]
        rows = records.take(TOKENIZER_SAMPLE) if isinstance(records, datasets.IterableDataset) else records
        fields = KINDS[task.spec.kind].text
        for row in rows:
            if (name := next((f for f in fields if row.get(f)), None)) is not None:
                out.extend(row[name] if isinstance(row[name], list) else [row[name]])
            # a document's title is text of it too (and the query of ir_relevance)
            out += [row["title"]] if isinstance(row.get("title"), str) else []
    return out


def _tokenizer(spec: RunSpec, resume_dir: Path | None, sources: list[TaskData], tasks: list[TaskData]) -> Any:
    if resume_dir is not None:
        return load_tokenizer(str(resume_dir))
    if spec.tokenizer.pretrained or spec.model.pretrained:
        key = "[tokenizer].pretrained" if spec.tokenizer.pretrained else "[model].pretrained"
        name = spec.tokenizer.pretrained or spec.model.pretrained
        tokenizer = load_tokenizer(name)
        # a new encoder may as well train its own WordPiece; a pretrained one needs its own tokenizer
        also = "" if spec.model.pretrained else ", or leave [tokenizer].pretrained empty to train a WordPiece"
        check_special(tokenizer, f"{key} {name!r}", {t.name: t.spec.kind for t in tasks}, also)
        return tokenizer
    return train_wordpiece(_corpus_texts(sources), spec.tokenizer.vocab_size, spec.tokenizer.lowercase)


def setup(spec: RunSpec, resume: bool, rank: int = 0, world: int = 1, checked: Path | None = None) -> Run:
    """Read and encode the tasks, build the model, optimizers and streams, and load the checkpoint on
    resume: `checked` when the caller has it from `checkpoint.resolve_output` (files checked), else
    the output folder's, resolved here.

    With `world` > 1 (torchrun) the process joins the group first, every rank builds the same run,
    and the training streams deal each rank its share of every global batch."""
    out = Path(spec.run.output_dir)
    device = pick_device(spec.run.device)
    if world > 1:
        device = distributed.init(device)
    resume_dir = (checked or checkpoint.resolve_output(out)) if resume else None
    notes: list[str] = []
    if resume_dir is not None:  # every rank reads the checkpoint rank 0 wrote (a shared filesystem)
        distributed.same_everywhere(resume_dir.name, f"the checkpoint to resume in {out}")
        spec, notes = resuming.reconcile(spec, resume_dir)  # before anything is read or loaded
    tokenizer, tasks = _tasks(spec, resume_dir, world)
    # Seeded after the data: encoding a task for the first time draws from the global RNG (a cache
    # file name), and the weights must not depend on whether the feature cache was warm.
    torch.manual_seed(spec.run.seed)
    encoder = build_encoder(spec.model, tokenizer, resume_dir)
    # train(): from_pretrained (a resume, a pretrained encoder) returns eval mode, i.e. dropout off
    model = build_model(encoder, tasks).to(device).train()
    sources, targets = _roles(spec)
    training, head_optimizer = build_optimizers(
        model,
        [n for n in targets if n not in sources],
        spec.meta,
        schedule_steps(spec),
    )
    run = Run(
        spec=spec,
        out=out,
        device=device,
        autocast=autocast_for(device, spec.run.precision),
        tokenizer=tokenizer,
        model=model,
        tasks=tasks,
        sources=sources,
        targets=targets,
        streams=build_streams(
            tasks, tokenizer, spec.run.seed, sources, targets, rank, world, spec.meta.support_batch_size
        ),
        optimizer=training.optimizer,
        schedule=training.schedule,
        head_optimizer=head_optimizer,
        explore=torch.Generator().manual_seed(spec.run.seed),
        flops=FlopCounter(model),
        policy=policies.POLICIES[spec.meta.policy](
            spec.meta.epsilon, spec.meta.discount, spec.meta.bandit_score
        ),
        rank=rank,
        world=world,
        notes=notes,
    )
    if resume_dir is not None:  # the checkpoint's state, with the run spec's learning rates
        rates = resuming.rates(run.optimizer, head_optimizer)
        runstate.restore(run, resume_dir)
        resuming.reapply(rates, run.schedule, run.optimizer, head_optimizer)
    if world > 1:  # as DDP does: every rank starts from rank 0's weights
        distributed.broadcast_parameters([model])
    run.notes += [w for t in tasks.values() for w in t.warnings]
    run.notes += pointless.run_warnings(spec, {n: train_size(t) for n, t in tasks.items()})
    return run


def _tasks(spec: RunSpec, resume_dir: Path | None, world: int) -> tuple[Any, dict[str, TaskData]]:
    """(the tokenizer, every source and target read and encoded with it). The records come first: a
    trained tokenizer needs the sources' text before anything is encoded."""
    raw = {t.name: load_task(t, None, ("train",), encode=False) for t in (*spec.sources, *spec.targets)}
    tokenizer = _tokenizer(spec, resume_dir, [raw[t.name] for t in spec.sources], list(raw.values()))
    if world > 1:
        distributed.same_everywhere(tokenizer_hash(tokenizer), "the tokenizer (a hash of it)")
    tasks = {name: load_task(t.spec, tokenizer, ("train",), records=t.records) for name, t in raw.items()}
    if resume_dir is not None:
        resuming.check_heads(resume_dir, tasks)
    return tokenizer, tasks


def _roles(spec: RunSpec) -> tuple[list[str], list[str]]:
    """(the sources, the targets: the aware targets, else the sources themselves). The single
    scheduler trains the first source, so `single_task` goes first."""
    meta = spec.meta
    sources = [t.name for t in spec.sources]
    if meta.scheduler == "single" and meta.single_task:
        sources.remove(meta.single_task)
        sources.insert(0, meta.single_task)
    targets = [t.name for t in spec.targets] if meta.setting == "aware" else list(sources)
    return sources, targets


def schedule_steps(spec: RunSpec) -> int:
    """The LR schedule's length: N training steps in each of the run's episodes."""
    return spec.run.episodes * spec.meta.train_batches
