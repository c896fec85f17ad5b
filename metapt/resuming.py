"""What `--resume` may change: the run spec is compared with the checkpoint's before anything is loaded.

Cannot change (exit 2, every difference listed): the setting, the sources and targets, the encoder's
shape or pretrained weights, the tokenizer settings, and each task's kind and label set (its head).
May change, and is logged: the checkpoint's seed is kept (its RNG states and data order continue);
for every other setting the run spec wins, e.g. `episodes` (the LR schedule decays towards the new
end), `[meta].lr`, `weight_decay`, `head_lr` (re-applied after the optimizer state is loaded: Adam's
moments and the schedule's position carry over), `epsilon`, `scheduler`, `train_batches`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from metapt import train
from metapt.errors import CheckpointError
from metapt.spec import RunSpec

# [model] fields -> the config.json key that holds them (new encoders only).
_CONFIG = {
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
}


def _task_hash(task: Any) -> str:
    fields = {k: v for k, v in dataclasses.asdict(task).items() if k not in ("path", "base_dir")}
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(spec: RunSpec) -> dict[str, Any]:
    """What a checkpoint's manifest records of the run spec that wrote it."""
    return {
        "setting": spec.meta.setting,
        "sources": [t.name for t in spec.sources],
        "targets": [t.name for t in spec.targets] if spec.meta.setting == "aware" else [],
        "model": dataclasses.asdict(spec.model),
        "tokenizer": dataclasses.asdict(spec.tokenizer),
        "run": {"seed": spec.run.seed, "episodes": spec.run.episodes},
        "meta": dataclasses.asdict(spec.meta),
        "tasks": {t.name: _task_hash(t) for t in (*spec.sources, *spec.targets)},
    }


def _read(folder: Path, name: str) -> dict[str, Any]:
    try:
        value = json.loads((folder / name).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / name}: unreadable ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{folder / name}: unreadable (a JSON {type(value).__name__}, not an object)")
    return value


def _fixed(spec: RunSpec, folder: Path, saved: dict[str, Any]) -> list[str]:
    """The differences that forbid resuming: (key, checkpoint's value, spec's value) as text."""
    now, out = fingerprint(spec), []
    heads = _read(folder, "heads.json")
    roles = {r: sorted(n for n, h in heads.items() if h.get("role") == r) for r in ("source", "target")}

    def differ(key: str, before: Any, after: Any) -> None:
        if before != after:
            out.append(f"{key}: checkpoint {before!r}, run spec {after!r}")

    differ("[meta].sources", roles["source"], sorted(now["sources"]))
    differ("[meta].targets", roles["target"], sorted(now["targets"]))
    if "setting" in saved:
        differ("[meta].setting", saved["setting"], now["setting"])
    model = saved.get("model", {})
    differ("[model].pretrained", model.get("pretrained", spec.model.pretrained), spec.model.pretrained)
    if not spec.model.pretrained:  # a new encoder: its shape is in the checkpoint's config.json
        config = _read(folder, "config.json")
        differ("[model].architecture", config.get("model_type"), spec.model.architecture)
        for key, name in _CONFIG.items():
            differ(f"[model].{key}", config.get(name), getattr(spec.model, key))
        if "max_length" in model:
            differ("[model].max_length", model["max_length"], spec.model.max_length)
    for key, value in saved.get("tokenizer", {}).items():
        differ(f"[tokenizer].{key}", value, now["tokenizer"].get(key))
    return out


def reconcile(spec: RunSpec, folder: Path) -> tuple[RunSpec, list[str]]:
    """The run spec to resume `folder` with (the checkpoint's seed) and notes on what changed;
    CheckpointError listing every difference that cannot continue."""
    manifest = _read(folder, "metapt.json")
    saved = manifest.get("spec", {})
    refused = _fixed(spec, folder, saved)
    if refused:
        wrote = f" ({manifest['run_spec']})" if manifest.get("run_spec") else ""
        raise CheckpointError(
            f"{folder}: cannot resume this checkpoint with {spec.path or 'this run spec'}; it differs in:\n  "
            + "\n  ".join(refused)
            + f"\nResume with the run spec that wrote it{wrote}, or start a fresh run elsewhere with "
            "--output-dir."
        )
    notes = []
    seed = manifest.get("seed", spec.run.seed)
    if seed != spec.run.seed:
        notes.append(
            f"--resume: seed {spec.run.seed} ignored; the checkpoint's seed {seed} is kept (its random "
            "states and data order continue)"
        )
        spec = dataclasses.replace(spec, run=dataclasses.replace(spec.run, seed=seed))
    episode = manifest.get("episode", 0)
    model = saved.get("model", {})
    if "dropout" in model and model["dropout"] != spec.model.dropout:
        notes.append(
            f"--resume: [model].dropout {spec.model.dropout!r} ignored; the checkpoint's encoder keeps "
            f"{model['dropout']!r}"
        )
    before = {**saved.get("meta", {}), "episodes": manifest.get("episodes")}
    after = json.loads(json.dumps({**dataclasses.asdict(spec.meta), "episodes": spec.run.episodes}))
    fixed = ("setting", "sources", "targets")  # compared above, by task name
    for key in sorted(k for k in after if k in before and k not in fixed and before[k] != after[k]):
        name = "[run].episodes" if key == "episodes" else f"[meta].{key}"
        notes.append(
            f"--resume: {name} {before[key]!r} -> {after[key]!r}: the run spec's value is used from "
            f"episode {episode + 1}"
        )
    changed = [n for n, h in fingerprint(spec)["tasks"].items() if saved.get("tasks", {}).get(n, h) != h]
    for name in changed:
        notes.append(
            f"--resume: task {name!r} has changed since the checkpoint; its data position carries over"
        )
    return spec, notes


def episode_of(folder: Path) -> int:
    """The episodes a checkpoint folder (from `checkpoint.resolve`) has done."""
    return _read(folder, "metapt.json").get("episode", 0)


def _episodes(n: int) -> str:
    return f"{n} episode{'' if n == 1 else 's'}"


def nothing_to_train(out: Path, episode: int, episodes: int) -> str:
    """What a resume says when the checkpoint in `out`, after `episode` episodes, already has the
    run's `episodes` (all of them, or more)."""
    more = f"To train on, resume with --episodes above {episode} (or raise [run].episodes)."
    if episode == episodes:
        return f"{out} is already finished: its checkpoint has all {_episodes(episodes)}; nothing to train. {more}"
    return (
        f"nothing to train: the checkpoint in {out} is already at episode {episode}, past the "
        f"{_episodes(episodes)} this run asks for (--episodes or [run].episodes); it is left as it "
        f"was. {more}"
    )


def check_heads(folder: Path, tasks: dict[str, Any]) -> None:
    """CheckpointError when a task's kind or labels (its head's shape) differ from the checkpoint's."""
    heads, out = _read(folder, "heads.json"), []
    for name, task in tasks.items():
        head = heads.get(name, {})
        info = json.loads(json.dumps(task.info))
        if head.get("kind", task.spec.kind) != task.spec.kind:
            out.append(f"task {name!r}: kind: checkpoint {head['kind']!r}, now {task.spec.kind!r}")
        elif head.get("info", info) != info:
            keys = sorted(k for k in {*head["info"], *info} if head["info"].get(k) != info.get(k))
            shown = "; ".join(f"{k}: checkpoint {head['info'].get(k)!r}, now {info.get(k)!r}" for k in keys)
            out.append(f"task {name!r}: {shown}")
    if out:
        raise CheckpointError(
            f"{folder}: cannot resume: a task's head no longer fits its data:\n  " + "\n  ".join(out)
        )


def rates(*optimizers: torch.optim.Optimizer | None) -> list[list[dict[str, float]]]:
    """Each optimizer's per-group lr and weight decay as the run spec sets them (before loading)."""
    keys = ("lr", "initial_lr", "weight_decay")
    return [[{k: g[k] for k in keys if k in g} for g in o.param_groups] if o else [] for o in optimizers]


def reapply(
    saved: list[list[dict[str, float]]],
    schedule: torch.optim.lr_scheduler.LambdaLR,
    *optimizers: torch.optim.Optimizer | None,
) -> None:
    """Put the run spec's lr and weight decay back after a checkpoint's optimizer state was loaded;
    the LR schedule keeps its position (its base rates become the spec's)."""
    for groups, optimizer in zip(saved, optimizers):
        for i, (g, values) in enumerate(zip(optimizer.param_groups if optimizer else [], groups)):
            g.update(values)
            if optimizer is schedule.optimizer:
                schedule.base_lrs[i] = values["initial_lr"]
    train.seek(schedule, schedule.last_epoch)  # the scheduled rates at the schedule's position
