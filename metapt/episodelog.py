"""An episode's record: its line of OUTPUT_DIR/metrics.jsonl (DESIGN.md section 6), what it cost, the
run's running totals, and the end-of-run warning when most selections were within noise."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from metapt import heldout, outdir
from metapt.errors import MetaptError
from metapt.steps import Selection, TrainStats

FILE = "metrics.jsonl"


def open_metrics(out: Path, rank: int, episodes_done: int) -> Path:
    """OUTPUT_DIR/metrics.jsonl, claimed by rank 0 and cut back to the checkpoint's episodes."""
    path = out / FILE
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        outdir.claim(out, path.name)
        truncate(path, episodes_done)
    return path


def append(path: Path, record: dict[str, Any], rank: int) -> None:
    """One JSON line (rank 0 alone writes)."""
    if rank == 0:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class Cost(NamedTuple):
    """What an episode spent: seconds and FLOPs of selecting and of training, and training tokens."""

    selection_seconds: float
    train_seconds: float
    selection_flops: int
    train_flops: int
    tokens: int


def account(totals: dict[str, float], cost: Cost, picked: Selection | None) -> None:
    """Add an episode's cost to the run's totals, and count a selection's lead against its noise."""
    for key, value in cost._asdict().items():
        totals[key] += value
    if picked is not None:
        _count_noise(totals, picked.lead_z)


def record(
    episode: int,
    chosen: str,
    how: tuple[bool, bool],
    utilities: dict[str, float],
    picked: Selection | None,
    stats: TrainStats,
    cost: Cost,
    lr: float,
    history: list[str],
) -> dict[str, Any]:
    """The episode's metrics line; `how` = (explored, reused: kept from the last selection); the
    selection's fields are empty when the episode did not select."""
    explored, reused = how
    return {
        "episode": episode,
        "chosen": chosen,
        "explored": explored,
        "reused": reused,
        "utilities": utilities,
        "utility_se": picked.utility_se if picked else {},
        "lead_z": picked.lead_z if picked else None,
        "policy_scores": picked.policy_scores if picked else {},
        "utility_floor": picked.floor if picked else None,
        "train_loss": stats.loss,
        "target_loss": picked.target_loss if picked else None,
        "lr": lr,
        **cost._asdict(),
        "counts": dict(Counter(history)),
        **heldout.EMPTY,  # filled in on the episodes that evaluate
    }


SURE = 2.0  # a choice is above noise when it leads the runner-up by more than this many standard errors


def _count_noise(totals: dict[str, float], lead: float | None) -> None:
    """Count a selection, and whether its lead was within noise or had no error bar."""
    totals["selections"] = totals.get("selections", 0) + 1
    if lead is None:
        totals["selections_without_se"] = totals.get("selections_without_se", 0) + 1
    elif abs(lead) <= SURE:
        totals["selections_within_noise"] = totals.get("selections_within_noise", 0) + 1


def noise_verdict(totals: dict[str, float], policy: str) -> str | None:
    """A one-line warning when most selections could not tell their tasks apart, else None."""
    n = int(totals.get("selections", 0))
    within, unknown = (
        int(totals.get("selections_within_noise", 0)),
        int(totals.get("selections_without_se", 0)),
    )
    if n == 0:
        return None
    if unknown * 2 > n:
        # the bandit's running estimates have error bars from its second selection on, so under it
        # this is a run of one selection, and pointing at the bandit would be no advice
        fix = (
            "the bandit's running estimates have them from its second selection on"
            if policy == "bandit"
            else 'use support_batches >= 2 (>= 3 for the shared estimate) or policy = "bandit"'
        )
        return (
            f"{unknown} of {n} selections had no standard error (one support batch per source, or two "
            f"with the agnostic shared estimate): nothing shows whether the choices beat noise; {fix}"
        )
    if within * 2 > n:
        what = "its running estimates" if policy == "bandit" else "the utilities"
        return (
            f"{within} of {n} selections chose within {SURE:g} standard errors of the runner-up by {what}: "
            "most choices were not distinguishable from noise"
        )
    return None


def truncate(path: Path, episodes_done: int) -> None:
    """Drop metric lines of episodes after the checkpoint being resumed (their work was lost), and a
    last line cut short by a kill mid-write. The file is replaced atomically."""
    if not path.exists():
        return
    if episodes_done == 0:
        path.unlink()
        return
    lines = path.read_text(errors="replace").splitlines()
    keep = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            episode = json.loads(line)["episode"]
            if not isinstance(episode, int) or isinstance(episode, bool):  # "2", null: not a count
                raise TypeError(episode)
        except (ValueError, KeyError, TypeError):
            if number == len(lines):  # the line being written when the process died
                continue
            raise MetaptError(
                f"{path}:{number}: not an episode record; metapt writes one JSON object per line. "
                "Remove or fix that line, then --resume again."
            ) from None
        if episode <= episodes_done:
            keep.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
