"""A finetuned model on disk and its scores: save and load a model folder (encoder, tokenizer, head
and its label facts), score a split, write its predictions in the field's format, and `metapt
evaluate`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from metapt import __version__, outdir
from metapt.builders import build_model
from metapt.catalog import KINDS
from metapt.data.batches import eval_batches
from metapt.data.pipeline import TaskData, kind_of, load_task
from metapt.data.tokenizer import load_tokenizer
from metapt.device import autocast_for, pick_device
from metapt.errors import MetaptError
from metapt.filecheck import damaged, digests, sizes
from metapt.model import MultiTaskModel, batch_to, load_encoder, saved_state
from metapt.spec import TaskSpec


def main_metric(spec: TaskSpec, metrics: dict[str, float]) -> str:
    """The metric the task's benchmark reports (option main_metric, else the kind's first present)."""
    wanted = spec.options.get("main_metric") or KINDS[spec.kind].metrics[0]
    if wanted in metrics or not metrics:
        return wanted
    return next((m for m in KINDS[spec.kind].metrics if m in metrics), next(iter(metrics)))


@torch.no_grad()
def score(
    model: MultiTaskModel,
    task: TaskData,
    tokenizer: Any,
    split: str,
    device: torch.device,
    autocast: Callable,
) -> tuple[dict[str, float], list[Any]]:
    """(metrics, per-record predictions) of the model on one split; metrics are empty without labels."""
    model.eval()
    kind, predictions = kind_of(task.spec), []
    for _, batch in eval_batches(task, tokenizer, split, task.spec.batch.size):
        batch = batch_to(batch, device)
        with autocast():
            _, logits = model(task.name, batch)
        predictions += kind.predict(logits.float(), batch, task.info)
    return kind.score(predictions, task.features[split], task.records[split], task.spec, task.info)


def write_outputs(out: Path, task: TaskData, split: str, record_predictions: list[Any]) -> Path:
    """Predictions of one split in the field's format: predictions/SPLIT.EXT."""
    path = out / "predictions" / f"{split}.{KINDS[task.spec.kind].suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    kind_of(task.spec).write_predictions(path, record_predictions, task.records[split], task.info)
    return path


def save_model(folder: Path, model: MultiTaskModel, tokenizer: Any, task: TaskData) -> None:
    """A Hugging Face encoder folder plus head.safetensors and head.json (kind, spec, label facts)."""
    with outdir.writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        model.encoder.save_pretrained(folder, state_dict=saved_state(model.encoder))
        tokenizer.save_pretrained(folder)
        head = model.heads[task.name].state_dict()
        save_file({k: v.detach().contiguous().cpu() for k, v in head.items()}, folder / "head.safetensors")
    facts = {"task": task.name, "kind": task.spec.kind, "spec": task.spec.path, "info": task.info}
    files = {n: b for n, b in sizes(folder).items() if n != "head.json"}  # head.json comes last
    (folder / "head.json").write_text(
        json.dumps({**facts, "files": files, "sha256": digests(folder, files)}, indent=2)
    )


def build(encoder: torch.nn.Module, task: TaskData) -> MultiTaskModel:
    """The encoder with the task's head and loss (as pretraining builds its model)."""
    return build_model(encoder, {task.name: task})


def load_finetuned(
    folder: Path, spec: TaskSpec, splits: tuple[str, ...]
) -> tuple[Any, MultiTaskModel, TaskData]:
    """(tokenizer, model, task data) of a folder written by `save_model`; the head's saved label facts
    are reused so predictions map to the labels it was trained with."""
    head_file, info_file = folder / "head.safetensors", folder / "head.json"
    if not head_file.is_file() or not info_file.is_file():
        seeds = sorted(p.parent for p in folder.glob("seed-*/model") if p.is_dir())
        hint = f"; a --seeds finetuning keeps one per seed, e.g. {seeds[0]}" if seeds else ""
        raise MetaptError(
            f"{folder}: not a finetuned model (expected head.safetensors and head.json from "
            f"`metapt finetune`){hint}"
        )
    try:
        saved = json.loads(info_file.read_text())
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise MetaptError(f"{info_file}: unreadable ({e}); finetune again to rewrite it") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("kind"), str) or "info" not in saved:
        raise MetaptError(
            f"{info_file}: not the head facts `metapt finetune` writes (a JSON object with kind and "
            "info); finetune again to rewrite it"
        )
    if bad := damaged(folder, saved.get("files"), (), saved.get("sha256")):  # older folders: fewer checks
        raise MetaptError(
            f"{'; '.join(bad)}; the finetuned model is not usable: finetune again to rewrite it"
        )
    if saved["kind"] != spec.kind:
        raise MetaptError(f"{folder} holds a {saved['kind']} head, but task {spec.name!r} is {spec.kind}")
    tokenizer = load_tokenizer(str(folder))
    task = load_task(spec, tokenizer, splits, info=saved["info"])
    model = build(load_encoder(str(folder)), task)
    try:
        model.heads[spec.name].load_state_dict(load_file(head_file))
    except Exception as e:
        raise MetaptError(f"{head_file}: corrupt or mismatched head ({e})") from None
    return tokenizer, model, task


def evaluate(folder: Path, spec: TaskSpec, split: str, device_name: str = "auto") -> dict[str, Any]:
    """Re-score a finetuned model (FOLDER or FOLDER/model) on a split; writes evaluation-SPLIT.json."""
    folder = Path(folder)
    model_dir = folder / "model" if (folder / "model" / "head.json").is_file() else folder
    if split not in spec.data.splits():
        raise MetaptError(
            f"task {spec.name!r} has no {split} split; allowed: {', '.join(spec.data.splits())}"
        )
    tokenizer, model, task = load_finetuned(model_dir, spec, (split,))
    device = pick_device(device_name)
    metrics, record_predictions = score(
        model.to(device), task, tokenizer, split, device, autocast_for(device, "auto")
    )
    out = model_dir.parent if model_dir.name == "model" else model_dir
    outdir.claim_if_ours(out, "predictions", f"evaluation-{split}.json")
    path = write_outputs(out, task, split, record_predictions)
    result = {
        "task": spec.name,
        "split": split,
        "metrics": metrics,
        "main_metric": main_metric(spec, metrics),
        "predictions": str(path),
        "warnings": task.warnings,
        "metapt_version": __version__,  # what scored it
    }
    (out / f"evaluation-{split}.json").write_text(json.dumps(result, indent=2))
    return result
