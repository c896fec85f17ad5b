"""A run's state (`Run`, assembled by runsetup.setup) and its checkpoint: what `save` writes after an
episode (through checkpoint.py, atomically) and `restore` loads into a freshly set-up run, so that a
resumed run continues bitwise: the heads, both optimizers and the schedule, every batch stream's
position, every RNG (each rank's under torchrun), the policy's state, the probes kept for
reuse_training, the episode count and totals."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metapt import __version__, checkpoint, distributed, filecheck, mixture, probes, resuming
from metapt.data.batches import BatchStream
from metapt.data.pipeline import TaskData
from metapt.errors import CheckpointError
from metapt.flops import FlopCounter
from metapt.model import MultiTaskModel
from metapt.spec import RunSpec
from metapt.train import Optimization


@dataclass
class Run:
    """Everything an episode reads and updates; built by `runsetup.setup`, saved by `save`."""

    spec: RunSpec
    out: Path
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    tokenizer: Any
    model: MultiTaskModel
    tasks: dict[str, TaskData]
    sources: list[str]
    targets: list[str]
    streams: dict[str, dict[str, BatchStream]]  # "train" | "support" | "target" -> task -> stream
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    head_optimizer: torch.optim.Optimizer | None
    explore: torch.Generator
    flops: FlopCounter
    policy: Any = None  # metapt.policies: turns a selection's estimates into the task (meta scheduler)
    episode: int = 0
    history: list[str] = field(default_factory=list)
    totals: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("selection_seconds", "train_seconds", "selection_flops", "train_flops", "tokens"), 0.0
        )
    )
    rank: int = 0  # under torchrun: this process's rank of `world`; only rank 0 writes
    world: int = 1
    notes: list[str] = field(default_factory=list)  # resume: settings kept or changed, for the log
    # reuse_training: the chosen task's last training gradients, the next selection's probes of it
    reused: dict[str, list[probes.Probe]] | None = None
    keep_training: bool = False  # keep them even when the spec does not reuse them (bench variants)

    @property
    def optimization(self) -> Optimization:
        """The training optimizer with its schedule and the spec's clipping, as `train_task` takes it."""
        return Optimization(self.optimizer, self.schedule, self.spec.meta.max_grad_norm)


def restore(run: Run, folder: Path) -> None:
    """Load a checkpoint folder's state into a set-up run: heads, optimizers, streams, RNGs, policy,
    kept probes, episode count and totals (the encoder was loaded by `setup`). A file that loads but
    does not fit the run (tampered, or another tool's) is a CheckpointError naming it."""
    _, heads, _, state = checkpoint.load_state(folder)
    with _fitting(folder / checkpoint.HEADS):
        run.model.heads.load_state_dict({k: v.to(run.device) for k, v in heads.items()})
    with _fitting(folder / checkpoint.STATE):
        _restore_state(run, state)


@contextlib.contextmanager
def _fitting(path: Path) -> Iterator[None]:
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as e:
        raise CheckpointError(
            f"{path}: does not fit this run ({type(e).__name__}: {e}); {filecheck.unusable(path.parent)}"
        ) from None


def _restore_state(run: Run, state: dict[str, Any]) -> None:
    """training_state.pt's optimizers, streams, RNGs, policy, probes and counts into `run`."""
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    if run.head_optimizer is not None:
        run.head_optimizer.load_state_dict(state["head_optimizer"])
    for group, streams in run.streams.items():
        for name, s in streams.items():
            s.load_state_dict(state["streams"][group][name])
    run.explore.set_state(state["explore"])
    run.policy.load_state_dict(state.get("policy", {}))
    run.reused = probes.from_state(state.get("reused", {}), run.device)
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and "cuda_rng" in state:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    ranks = state.get("rank_rng", [])
    if run.world > 1 and len(ranks) == run.world:  # each rank's own dropout RNG (same world size only)
        torch.set_rng_state(ranks[run.rank]["torch"])
        if "cuda" in ranks[run.rank] and run.device.type == "cuda":
            torch.cuda.set_rng_state(ranks[run.rank]["cuda"], run.device)
    run.episode, run.history, run.totals = state["episode"], list(state["history"]), dict(state["totals"])


def save(run: Run) -> Path:
    """Checkpoint the run after `run.episode` completed episodes. Every rank calls it; rank 0 writes
    (with every rank's RNG state), and the others wait until the checkpoint is complete."""
    rng = {"torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    ranks = distributed.gather(rng)
    if run.rank != 0:
        distributed.barrier("waiting for rank 0 to write the checkpoint")
        return run.out / f"checkpoint-{run.episode:06d}"
    state = {
        "episode": run.episode,
        "history": run.history,
        "totals": run.totals,
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "head_optimizer": run.head_optimizer.state_dict() if run.head_optimizer else {},
        "streams": {g: {n: s.state_dict() for n, s in ss.items()} for g, ss in run.streams.items()},
        "explore": run.explore.get_state(),
        "policy": run.policy.state_dict(),
        "reused": probes.state_of(run.reused),
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if run.world > 1:
        state["rank_rng"] = ranks
    heads_info = {
        n: {
            "kind": t.spec.kind,
            "spec": t.spec.path,
            "info": t.info,
            "role": "source" if n in run.sources else "target",
        }
        for n, t in run.tasks.items()
    }
    manifest = {
        "metapt_version": __version__,  # what wrote it, as config.json's transformers_version
        "run_spec": run.spec.path,
        "setting": run.spec.meta.setting,
        "scheduler": run.spec.meta.scheduler,
        "seed": run.spec.run.seed,
        "episodes": run.spec.run.episodes,
        "spec": resuming.fingerprint(run.spec),  # what --resume compares the run spec with
    }
    records = mixture.read_records(run.out / "metrics.jsonl", run.episode)
    mix = {mixture.FILE: json.dumps(mixture.summarise(run.sources, run.history, records), indent=2)}
    folder = checkpoint.save(
        run.out,
        run.episode,
        run.model.encoder,
        run.tokenizer,
        run.model.heads,
        heads_info,
        state,
        manifest,
        mix,
    )
    distributed.barrier("writing the checkpoint")
    return folder
