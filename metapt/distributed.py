"""Several processes under torchrun: the process group and the few collectives the engine needs.

Data parallelism without DistributedDataParallel: the meta step evaluates the model through
`torch.func.functional_call` on plain parameter dicts, which a DDP wrapper does not expose, so the
model stays a plain module and `average_gradients` all-reduces its gradients once per batch, after
the (micro-batch) backward passes and before clipping. Each rank's gradient is weighted by its share
of the batch's loss terms (`train.items`), which makes the result the gradient of the global batch's
mean loss, exactly as one process computes it (up to the order of the float additions).

Every collective runs under the process group's timeout (METAPT_DIST_TIMEOUT seconds, default 600),
so a rank that failed or stalls makes the others raise a TrainingError instead of waiting forever.
Without torchrun (WORLD_SIZE unset or 1) every function here is a no-op for the one process.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from metapt.errors import MetaptError, TrainingError, first_line
from metapt.train import items

Batch = dict[str, torch.Tensor]
TIMEOUT_ENV = "METAPT_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
log = logging.getLogger("metapt")


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    """How many processes the job has (torchrun's WORLD_SIZE; 1 without torchrun)."""
    return dist.get_world_size() if _active() else int(os.environ.get("WORLD_SIZE") or 1)


def rank() -> int:
    """This process's rank (torchrun's RANK; 0 without torchrun). Only rank 0 prints and writes."""
    return dist.get_rank() if _active() else int(os.environ.get("RANK") or 0)


def timeout() -> float:
    """Seconds a collective may wait for the other ranks (METAPT_DIST_TIMEOUT, default 600)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = -1.0
    if not value > 0:
        raise MetaptError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds, e.g. 600")
    return value


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (once per process); returns this rank's device:
    cuda:LOCAL_RANK on CUDA (nccl for tensors there, gloo for the rest), else `device` (gloo)."""
    if world() <= 1:
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK") or 0)
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not _active():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout()))
        except ValueError as e:  # WORLD_SIZE set by hand without MASTER_ADDR/MASTER_PORT ...
            raise MetaptError(
                f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} but the process group cannot start ({e}); "
                "launch with torchrun --nproc_per_node K -m metapt ..."
            ) from None
        except RuntimeError as e:
            raise TrainingError(f"rank {rank()}: cannot reach the other ranks ({first_line(e)})") from e
        atexit.register(_teardown)
    return device


def _teardown() -> None:
    with contextlib.suppress(Exception):  # the other ranks may be gone already
        if _active():
            dist.destroy_process_group()


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a failed or timed-out collective into one clear TrainingError."""
    try:
        yield
    except RuntimeError as e:  # gloo/nccl errors and timeouts (torch.distributed.DistError included)
        raise TrainingError(
            f"rank {rank()} of {world()}: {what} with the other ranks failed ({first_line(e)}). "
            "Another rank probably stopped with an error (see its message) or did not get there within "
            f"{TIMEOUT_ENV}={timeout():g} seconds. The last checkpoint is intact: fix the cause "
            "and rerun with --resume."
        ) from e


def shard(batch: Batch, rank: int, world: int) -> Batch:
    """Rank `rank`'s contiguous share of a collated batch's B examples, cut as `train.split_batch` cuts
    micro-batches: a tensor's first dimension is B or m * B (B * C candidates), sliced at the same
    example boundaries. A rank past the last example gets empty tensors (and no loss terms)."""
    b = min(v.shape[0] for v in batch.values() if v.dim() > 0)
    lo, hi = rank * b // world, (rank + 1) * b // world
    out = {}
    for key, value in batch.items():
        m = value.shape[0] // b if value.dim() > 0 else 0
        out[key] = value[lo * m : hi * m] if m else value
    return out


def average_gradients(model: nn.Module, loss: torch.Tensor, batch: Batch) -> torch.Tensor:
    """All-reduce a batch's gradients into those of the global batch's mean loss; returns that loss.

    A rank holds the gradient g_r of its share's mean loss over n_r terms; sum_r n_r g_r / sum_r n_r is
    the one-process gradient. A parameter with no gradient on any rank keeps none (AdamW skips it, as
    in one process); one without a gradient on this rank only (no terms in its share) counts as zeros.
    """
    if world() == 1:
        return loss
    params = list(model.parameters())
    device = params[0].device
    n = items(batch)
    head = torch.tensor(
        [n, n * float(loss), *(p.grad is not None for p in params)], dtype=torch.float64, device=device
    )
    with _collective("averaging the gradients"):
        dist.all_reduce(head)
    total, has = float(head[0]), head[2:] > 0
    if total == 0:  # no loss terms anywhere (e.g. nothing masked): nothing to learn from this batch
        return loss
    used = [p for p, h in zip(params, has.tolist()) if h]
    flat = torch.zeros(sum(p.numel() for p in used), dtype=torch.float32, device=device)  # one all-reduce
    at = 0
    for p in used:
        if p.grad is not None:  # else zeros: no terms in this rank's share
            flat[at : at + p.numel()] = p.grad.reshape(-1) * (n / total)
        at += p.numel()
    with _collective("averaging the gradients"):
        dist.all_reduce(flat)
    at = 0
    for p in used:
        chunk = flat[at : at + p.numel()].view_as(p).to(p.dtype)
        at += p.numel()
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
    return torch.tensor(float(head[1]) / total)


def agree(
    chosen: str, explored: bool, utilities: dict[str, float], names: Sequence[str]
) -> tuple[str, bool, dict[str, float]]:
    """Every rank's utilities averaged, and rank 0's choice for all: every rank trains the same task.

    The ranks score the same batches with the same exploration RNG, so they agree anyway; this makes
    sure of it (e.g. against nondeterministic CUDA kernels breaking a near tie differently)."""
    if world() == 1:
        return chosen, explored, utilities
    keys = list(utilities)
    lead = rank() == 0
    values = [utilities[k] for k in keys] + [names.index(chosen) if lead else 0, float(explored and lead)]
    tensor = torch.tensor(values, dtype=torch.float64)
    with _collective("agreeing on the episode's task"):
        dist.all_reduce(tensor)
    mean = {k: float(v) / world() for k, v in zip(keys, tensor.tolist())}
    decided, was_explored = names[int(tensor[-2])], bool(tensor[-1] > 0)
    if decided != chosen:
        log.warning("rank %d chose %s but rank 0 chose %s; following rank 0", rank(), chosen, decided)
    return decided, was_explored, mean


def average(values: dict[str, float]) -> dict[str, float]:
    """Every rank's values averaged (the same keys in the same order on every rank)."""
    if world() == 1 or not values:
        return dict(values)
    tensor = torch.tensor(list(values.values()), dtype=torch.float64)
    with _collective("averaging the utilities"):
        dist.all_reduce(tensor)
    return {k: float(v) / world() for k, v in zip(values, tensor.tolist())}


def sum_counts(values: Sequence[int], replicated: bool = False) -> list[int]:
    """Per-rank counts (FLOPs, tokens) summed over the ranks; `replicated` counts (every rank did the
    same work) are rank 0's, so the totals read as one process's."""
    if world() == 1:
        return list(values)
    tensor = torch.tensor([0 if replicated and rank() else int(v) for v in values], dtype=torch.int64)
    with _collective("summing the episode's counts"):
        dist.all_reduce(tensor)
    return [int(v) for v in tensor.tolist()]


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (a Ctrl-C seen by one rank stops all of them)."""
    if world() == 1:
        return flag
    tensor = torch.tensor([int(flag)])
    with _collective("checking for a stop request"):
        dist.all_reduce(tensor)
    return bool(tensor.item())


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (on every rank)."""
    if world() == 1:
        return [obj]
    out: list[Any] = [None] * world()
    with _collective("gathering state"):
        dist.all_gather_object(out, obj)
    return out


def same_everywhere(value: str, what: str) -> None:
    """Raise on every rank unless `value` (a name, a hash) is the same on all of them."""
    values = gather(value)
    if len(set(values)) > 1:
        differ = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values) if v != values[0])
        raise MetaptError(
            f"{what} differs between ranks (rank 0: {values[0]}; {differ}); every node needs the same "
            "data, tokenizer and output directory (a shared filesystem)"
        )


def barrier(what: str) -> None:
    """Wait until every rank gets here."""
    if world() == 1:
        return
    with _collective(what):
        dist.barrier()


def broadcast_parameters(modules: Sequence[nn.Module]) -> None:
    """Copy rank 0's parameters and buffers into every rank's (as DDP does when it wraps a model)."""
    if world() == 1:
        return
    with _collective("copying rank 0's weights"), torch.no_grad():
        for module in modules:
            for t in (*module.parameters(), *module.buffers()):
                dist.broadcast(t.data, src=0)
