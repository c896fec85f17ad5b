"""`metapt finetune`: train a head (and the encoder) on a downstream task, keep the best epoch by the
task's main metric on validation, score test when it has labels, and write results, predictions in
the field's own format, and the finetuned model (finetuned.py), once per seed."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from metapt import __version__, distributed, outdir, pointless, stats
from metapt.catalog import KINDS
from metapt.checkpoint import HEADS, HEADS_INFO, STATE, broken_current, lost_current
from metapt.data.batches import stable_seed
from metapt.data.pipeline import TaskData, kind_of, load_task
from metapt.data.tokenizer import check_special, load_tokenizer
from metapt.device import autocast_for, pick_device
from metapt.errors import CheckpointError, MetaptError
from metapt.filecheck import MANIFEST, check_files
from metapt.finetuned import build, load_finetuned, main_metric, save_model, score, write_outputs
from metapt.localdata import with_local_data, without_missing_test
from metapt.model import MultiTaskModel, batch_to, load_encoder
from metapt.resolve import load_task as load_task_spec
from metapt.spec import BatchSpec, TaskSpec
from metapt.train import Optimization, accumulate, optimization

Callback = Callable[[str, dict[str, Any]], None]


def encoder_source(checkpoint: str) -> str:
    """The folder (or hub id) holding the encoder: a metapt output dir's current checkpoint, or as given."""
    path = Path(checkpoint)
    if (path / "current").is_dir():
        # the encoder files alone would load, but `current` on a checkpoint that is not whole is a
        # damaged folder: say so and name the intact ones, as pretrain --resume would refuse it
        if why := broken_current(path):
            raise CheckpointError(why)
        return str((path / "current").resolve())
    if (path / MANIFEST).is_file():  # a metapt checkpoint: every file as metapt wrote it
        # finetuning reads only the encoder: a copy without the training state may leave it out
        check_files(path, missing_ok=(STATE, HEADS, HEADS_INFO, "mixture.json"))
        return str(path)
    if why := lost_current(path):  # a metapt output dir without its current checkpoint
        raise CheckpointError(why)
    if path.exists() and not (path / "config.json").is_file():
        raise MetaptError(
            f"{checkpoint}: not an encoder folder (no config.json); give a metapt checkpoint, "
            "a Hugging Face model folder, or a hub id"
        )
    return checkpoint


def task_spec(task: str, data: Path | None, overrides: dict[str, Any]) -> TaskSpec:
    """The task's spec with --data and the CLI's finetune/batch overrides applied."""
    spec = load_task_spec(task)
    if data is not None:
        spec = with_local_data(spec, data)
    if overrides.get("size") is not None:
        spec = dataclasses.replace(spec, batch=dataclasses.replace(spec.batch, size=overrides["size"]))
    if overrides.get("max_length") is not None:
        spec = with_max_length(spec, overrides["max_length"])
    ft = {k: v for k, v in overrides.items() if k in ("epochs", "lr") and v is not None}
    return dataclasses.replace(spec, finetune=dataclasses.replace(spec.finetune, **ft))


def with_max_length(spec: TaskSpec, max_length: int) -> TaskSpec:
    """The spec with [batch].max_length set; a shorter one scales [batch].stride with it (SQuAD's
    384 / 128 at 128 positions: 42), so the windows keep their overlap ratio and room for the question."""
    batch = spec.batch
    stride = batch.stride * max_length // batch.max_length if max_length < batch.max_length else batch.stride
    return dataclasses.replace(spec, batch=dataclasses.replace(batch, max_length=max_length, stride=stride))


def _splits(spec: TaskSpec) -> tuple[str, ...]:
    splits = spec.data.splits()
    if "train" not in splits:
        raise MetaptError(f"task {spec.name!r} has no train split; set [data].train or pass --data")
    if "validation" not in splits:
        raise MetaptError(
            f"task {spec.name!r} has no validation split to choose the best epoch; set "
            "[data].validation or pass --data with a folder holding train and dev/validation files"
        )
    return splits


def finetune_one(
    checkpoint: str,
    spec: TaskSpec,
    seed: int,
    out: Path,
    device_name: str = "auto",
    callback: Callback | None = None,
    checked: str | None = None,
) -> dict[str, Any]:
    """Finetune one seed; write results.json, predictions/ and model/ under `out`.

    `checked`: the encoder folder when the caller has it from `encoder_source(checkpoint)` (its files
    checked: summing reads a GB-sized checkpoint for a second), so several seeds or tasks check it once.

    Under torchrun the ranks train data-parallel: each collates the global batch and keeps its share
    (the whole batch for kinds whose examples interact), and gradients are averaged as one process
    would compute them. Every rank scores validation; rank 0 alone writes and scores the best epoch."""
    callback = callback or (lambda event, data: None)
    rank = distributed.rank()
    start = time.perf_counter()
    if rank == 0:  # the callers check the folder first (metapt finetune, compare)
        outdir.claim(out, "model", "predictions", "results.json", kind="finetune")
    source = checked or encoder_source(checkpoint)
    spec, no_test = without_missing_test(spec)
    asked = spec.batch
    tokenizer, encoder, spec = _encoder(source, spec)
    task = load_task(spec, tokenizer, _splits(spec))
    # Seeded after load_task: a cold feature cache draws from torch's global RNG (pipeline.encode_split).
    torch.manual_seed(seed)
    device = distributed.init(pick_device(device_name))
    autocast = autocast_for(device, "auto")
    model = build(encoder, task).to(device)
    distributed.broadcast_parameters([model])
    ft, train = spec.finetune, task.features["train"]
    steps_per_epoch = -(-len(train) // spec.batch.size)
    # clipped at 1.0 as Hugging Face Trainer's max_grad_norm default
    training = optimization(
        model.named_parameters(), ft.lr, ft.weight_decay, ft.epochs * steps_per_epoch, ft.warmup_ratio, 1.0
    )
    history, best = [], None
    callback(
        "start", {"task": spec.name, "epochs": ft.epochs, "steps": steps_per_epoch, "examples": len(train)}
    )
    warnings = _warnings(task, asked, ft.epochs * steps_per_epoch, no_test)
    for warning in warnings if rank == 0 else []:  # also in results.json
        callback("warning", {"message": warning})
    for epoch in range(ft.epochs):
        _train_epoch(model, task, tokenizer, training, seed, epoch, device, autocast, callback)
        metrics, _ = score(model, task, tokenizer, "validation", device, autocast)
        main = main_metric(spec, metrics)
        history.append({"epoch": epoch + 1, **metrics})
        callback("epoch", {"epoch": epoch + 1, "metrics": metrics, "main": main})
        if best is None or metrics.get(main, float("-inf")) > best[1]:
            best = (epoch + 1, metrics.get(main, float("-inf")))
            if rank == 0:
                save_model(out / "model", model, tokenizer, task)
    if rank != 0:  # rank 0 reloads the best epoch, scores it and writes; the others wait for it
        distributed.barrier("waiting for rank 0's final evaluation")
        return {"task": spec.name, "seed": seed, "rank": rank, "best_epoch": best[0], "history": history}
    results = _final(out, source, spec, seed, history, best, device, start, warnings)
    distributed.barrier("the final evaluation")
    return results


def _warnings(task: TaskData, asked: BatchSpec, steps: int, no_test: str) -> list[str]:
    """What a finetuning run warns of (also in results.json): the task's data, a pointless schedule,
    a test split left out, and a [batch].max_length (`asked`) cut to the encoder's positions."""
    spec, ft = task.spec, task.spec.finetune
    warnings = task.warnings + pointless.finetune_warnings(ft.lr, steps, ft.warmup_ratio)
    warnings += [no_test] if no_test else []
    if spec.batch.max_length < asked.max_length:
        warnings.append(
            f"[batch].max_length = {asked.max_length} cut to the encoder's {spec.batch.max_length} "
            f"positions (stride {asked.stride} -> {spec.batch.stride})"
        )
    return warnings


def _encoder(source: str, spec: TaskSpec) -> tuple[Any, torch.nn.Module, TaskSpec]:
    """(tokenizer, encoder, the spec with [batch].max_length cut to the encoder's positions, and its
    stride with it)."""
    tokenizer = load_tokenizer(source)
    check_special(tokenizer, source, {spec.name: spec.kind})
    encoder = load_encoder(source)
    limit = encoder.config.max_position_embeddings - (2 if encoder.config.model_type == "roberta" else 0)
    if spec.batch.max_length > limit:
        spec = with_max_length(spec, limit)
    return tokenizer, encoder, spec


def _train_epoch(
    model: MultiTaskModel,
    task: TaskData,
    tokenizer: Any,
    training: Optimization,
    seed: int,
    epoch: int,
    device: torch.device,
    autocast: Callable,
    callback: Callback,
) -> None:
    """One pass over the train split in a seeded order. Every rank collates the global batch and keeps
    its share (the whole batch for kinds whose examples interact); gradients are averaged."""
    spec, train = task.spec, task.features["train"]
    rank, world = distributed.rank(), distributed.world()
    sharded = world > 1 and KINDS[spec.kind].micro_batches
    kind, size = kind_of(spec), spec.batch.size
    model.train()
    order = torch.randperm(
        len(train), generator=torch.Generator().manual_seed(stable_seed(seed, epoch))
    ).tolist()
    for step in range(-(-len(train) // size)):
        cols = train[order[step * size : (step + 1) * size]]
        rows = [dict(zip(cols, values)) for values in zip(*cols.values())]
        g = torch.Generator().manual_seed(stable_seed(seed, epoch, step))
        batch = kind.collate(rows, tokenizer, spec, task.info, g)  # the global batch, on every rank
        batch = batch_to(distributed.shard(batch, rank, world) if sharded else batch, device)
        loss = accumulate(lambda b: model(spec.name, b)[0], batch, 1, autocast)
        loss = distributed.average_gradients(model, loss, batch)
        if not torch.isfinite(loss):
            raise MetaptError(
                f"task {spec.name!r}: the training loss became {float(loss)} at epoch "
                f"{epoch + 1}, step {step + 1}; lower --lr"
            )
        training.step(model)
        callback("step", {"epoch": epoch + 1, "step": step + 1, "loss": float(loss)})


def _final(
    out: Path,
    source: str,
    spec: TaskSpec,
    seed: int,
    history: list[dict],
    best: tuple[int, float],
    device: torch.device,
    start: float,
    warnings: list[str],
) -> dict[str, Any]:
    """Reload the best epoch, score validation (and test) with it, and write results and predictions."""
    tokenizer, model, task = load_finetuned(out / "model", spec, spec.data.splits())
    model.to(device)
    autocast = autocast_for(device, "auto")
    results: dict[str, Any] = {
        "task": spec.name,
        "kind": spec.kind,
        "checkpoint": source,
        "seed": seed,
        "epochs": spec.finetune.epochs,
        "best_epoch": best[0],
        "history": history,
        "metrics": {},
        "predictions": {},
        "warnings": warnings,  # labels the head cannot learn, pointless settings
        "metapt_version": __version__,  # what scored it
    }
    for split in ("validation", "test"):
        if split not in task.features:
            continue
        metrics, record_predictions = score(model, task, tokenizer, split, device, autocast)
        results["predictions"][split] = str(
            write_outputs(out, task, split, record_predictions).relative_to(out)
        )
        if metrics:  # an unlabelled test split gets predictions only
            results["metrics"][split] = metrics
    results["main_metric"] = main_metric(spec, results["metrics"].get("validation", {}))
    results["wall_seconds"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (None for one value) over seeds of every metric of every split."""
    out: dict[str, Any] = {}
    for split in ("validation", "test"):
        names = sorted({m for r in runs for m in r["metrics"].get(split, {})})
        for m in names:
            values = [r["metrics"][split][m] for r in runs if m in r["metrics"].get(split, {})]
            sd = stats.std(values)  # None (null) with one value: no spread to report
            out.setdefault(split, {})[m] = {"mean": statistics.fmean(values), "std": sd, "values": values}
    return out


def seed_folder(out: Path, seed: int, seeds: list[int]) -> Path:
    """Where one seed's finetuning goes: `out` itself, or out/seed-N/ when there are several seeds."""
    return out / f"seed-{seed}" if len(seeds) > 1 else out


def summarise_seeds(
    spec: TaskSpec, seeds: list[int], runs: list[dict[str, Any]], out: Path
) -> dict[str, Any]:
    """Write out/results.json for several seeds' `runs` (mean, std and values of every metric, and where
    each seed's own results are) and return it."""
    summary = {
        "task": spec.name,
        "seeds": seeds,
        "main_metric": runs[0]["main_metric"],
        "metrics": aggregate(runs),
        "runs": [str(seed_folder(out, s, seeds)) for s in seeds],
    }
    outdir.claim(out, "results.json")
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary
