"""`metapt bench`: what the meta step costs against training, measured in one process on one model
and the same batches (issue #7). Timings on a shared machine are noisy, so the figures to read are
ratios of things measured side by side: selection vs training time in the same episodes, the engine's
training loop vs a plain one on the same batches (alternating which runs first), training FLOP/s vs
a large matrix product timed between the episodes.

Phases: the heads fitted and a warm-up episode; E engine episodes with the spec's `select_every`
(timed; the meta step runs whatever [meta].scheduler says), each preceded by the selection study
(study.py: an exact reference and the variants on the same weights) and followed by the utility
comparison on fresh batches (agreement.py: exact, first-order, the shared estimate; epsilon 0);
engine vs plain training on every source; peak memory of every variant's selection vs a plain
training step (peaks.py); with `sources`, the growth with the number of sources (growth.py); ghost
inner products (ghost.py). Nothing is written to the run's output folder.
"""

from __future__ import annotations

import copy
import gc
import statistics
from collections.abc import Callable
from typing import Any

import torch

from metapt import engine, ghost, growth, peaks, runsetup, runsteps, selection, study
from metapt.agreement import agreements, argmax, compare_utilities, spearman  # noqa: F401 (tests)
from metapt.benchview import table  # noqa: F401  (the CLI prints bench.table)
from metapt.data.batches import stream_for
from metapt.flops import tokens
from metapt.model import batch_to
from metapt.plain import plain_steps, replay
from metapt.runstate import Run
from metapt.spec import RunSpec

Say = Callable[[str], None]
# issues #7 and #14's targets at the shipped default run spec: figure -> (comparison, bound)
TARGETS = {
    "selection_share": ("<=", 0.10),
    "throughput_ratio": (">=", 0.95),
    "reference_agreement": (">=", 0.90),
    "memory_ratio": ("<=", 1.1),
    "sources_memory_ratio": ("<=", 1.1),
}


_sync, _timed = study.sync_for, study.timed


# ------------------------------------------------------------------------------------ throughput
def throughput(
    run: Run, plain: tuple, sync: Callable[[], None], say: Say, rounds: int = 2
) -> dict[str, float]:
    """`steps.train_task` vs `plain_steps` on the same N batches, for every source and `rounds` times,
    alternating which goes first: a load spike on a shared machine then hurts both alike."""
    meta = run.spec.meta
    totals = dict.fromkeys(("engine_s", "plain_s", "tokens", "flops", "steps"), 0.0)
    for r in range(rounds):
        for i, task in enumerate(run.sources):
            say(f"throughput, round {r + 1}/{rounds}: {task}")
            batches = replay(run.streams["train"][task], meta.train_batches)

            def ours(task: str = task) -> tuple[float, int, int]:
                return runsteps.train_chosen(run, task)

            def theirs(task: str = task, batches: list = batches) -> None:
                plain_steps(*plain, task, batches, run.device, run.autocast, meta.max_grad_norm)

            plain_first = (i + r) % 2 == 1
            if plain_first:
                _, plain_s = _timed(theirs, sync)
            (_, flops, n_tokens), engine_s = _timed(ours, sync)
            if not plain_first:
                _, plain_s = _timed(theirs, sync)
            assert n_tokens == sum(tokens(b) for b in batches)  # the same batches
            for key, value in zip(totals, (engine_s, plain_s, n_tokens, flops, len(batches))):
                totals[key] += value
    return totals


# ------------------------------------------------------------------------------------------- MFU
def matmul_rate(device: torch.device, sync: Callable[[], None], repeats: int = 3) -> tuple[float, int, str]:
    """FLOP/s of a large matrix product on `device` (CUDA: bf16, 8192^2; CPU: fp32, 2048^2)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    a @ b  # warm-up
    _, seconds = _timed(lambda: [a @ b for _ in range(repeats)], sync)
    return 2 * n**3 * repeats / seconds, n, str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------------------- bench
def untouched_parameters_shared(run: Run) -> bool:
    """An inner step passes every parameter it does not update through as the same tensor, and the
    scored parameter dict shares the live weights' storage: no copies of what gets no gradient."""
    model, source = run.model, run.sources[-1]
    params = selection.detached(model)
    batch = batch_to(run.streams["support"][source].next(), run.device)
    names = selection.trainable(model, source)
    model.eval()
    stepped, _ = selection.inner_step(model, params, names, source, batch, 1e-3, run.autocast)
    model.train()
    live = dict(model.named_parameters())
    same_storage = all(params[n].data_ptr() == live[n].data_ptr() for n in params)
    passed = all(stepped[n] is params[n] for n in params if n not in names)
    return same_storage and passed


def episodes_for(spec: RunSpec, episodes: int | None) -> int:
    """Default: two selection periods, at least 4 episodes, at most the run's own."""
    if episodes is not None:
        return episodes
    return max(1, min(spec.run.episodes, max(4, 2 * spec.meta.select_every)))


def run_episodes(
    run: Run, n: int, sync: Callable[[], None], say: Say, lab: study.Study, compare: Run
) -> dict[str, Any]:
    """`n` engine episodes (selecting when `engine.selects`, as `engine.pretrain` does), each
    preceded by the study on the weights it selects on and followed by an untimed utility comparison
    and a timed matrix product. The study and the comparison draw from their own streams."""
    out: dict[str, Any] = {"selection_s": 0.0, "train_s": 0.0, "selections": 0, "choices": []}
    out["records"], out["rates"], last, gradient = [], [], run.history[-1] if run.history else None, None
    out["explored"] = []
    for e in range(n):
        say(f"episode {e + 1}/{n}: reference and {len(lab.views)} variants")
        lab.episode(run, sync)
        explored = False
        if engine.selects(run, last):
            picked, seconds = _timed(lambda: runsteps.select_step(run)[0], sync)
            last, gradient, explored = picked.chosen, picked.gradient, picked.explored
            out["selection_s"] += seconds
            out["selections"] += 1
            del picked
        _, seconds = _timed(lambda task=last, g=gradient: runsteps.train_chosen(run, task, g), sync)
        gradient = None
        out["train_s"] += seconds
        lab.trained(run, last, seconds, explored)
        run.episode += 1
        run.history.append(last)
        out["choices"].append(last)
        out["explored"].append(explored)
        say(f"episode {e + 1}/{n}: {last}; comparing utilities")
        out["records"].append(compare_utilities(compare, sync))
        out["rates"].append(matmul_rate(run.device, sync)[0])
    return out


def _warm_up(run: Run, lab: study.Study, compare: Run, plain: tuple, sync: Any) -> float:
    """As `pretrain` starts: the heads fitted, then one episode (untimed), the variants selecting
    beside it; one comparison, one plain step per source. Returns the head fitting's seconds."""
    fitted, fit_seconds = _timed(lambda: runsteps.fit_run_heads(run), sync)
    lab.start(run)  # the variants' warm-up selections, on the weights the engine's selects on
    picked, _ = runsteps.select_step(run)
    runsteps.train_chosen(run, picked.chosen, picked.gradient)
    run.episode += 1
    run.history.append(picked.chosen)
    for v in lab.views:
        v.history.append(picked.chosen)
    compare_utilities(compare, sync)
    cuda = [run.device.index or 0] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # the twin's dropout must not move the run's RNG
        for s in run.sources:
            batch = replay(run.streams["train"][s], 1)
            plain_steps(*plain, s, batch, run.device, run.autocast, run.spec.meta.max_grad_norm)
    matmul_rate(run.device, sync)
    return fit_seconds


def _ghost(run: Run) -> list[dict[str, Any]]:
    """Ghost vs materialised inner products of the first source's gradients, on pairs of batches of
    1 example, of the spec's probe size and of its training size."""
    source = run.sources[0]
    task, sizes = run.tasks[source], [1, run.spec.meta.support_batch_size, run.tasks[source].spec.batch.size]
    out = []
    for size in dict.fromkeys(s for s in sizes if s):
        stream = stream_for(task, run.tokenizer, size, run.spec.run.seed, "ghost")
        first, second = (batch_to(stream.next(), run.device) for _ in range(2))
        out.append({"task": source, "batch_size": size, **ghost.measure(run.model, source, first, second)})
    return out


def bench(
    spec: RunSpec,
    episodes: int | None = None,
    say: Say | None = None,
    variants: list[str] | None = None,
    reference: int = study.REFERENCE,
    sources: list[int] | None = None,
    check: bool = False,
) -> dict[str, Any]:
    """Measure the spec's meta step and training in one process; returns the figures (README, bench).
    `variants`: [meta] changes the study runs beside the spec (default study.VARIANTS); `reference`:
    the reference's batches (0: none); `sources`: source counts for the growth measurement; `check`:
    also a second reference on its own batches (`reference_self_agreement`, the ceiling)."""
    say = say or (lambda message: None)
    chosen = list(study.VARIANTS if variants is None else variants)
    second = study.again(reference) if check and reference else None
    result = _measure(
        spec, episodes_for(spec, episodes), say, chosen + ([second] if second else []), reference
    )
    if second:
        result["reference_self_agreement"] = result["variants"][-1]["agreement_sure"]
    gc.collect()  # the measured run is gone before the growth runs' memory is read
    if sources:
        result["sources"] = growth.growth(spec, sources, say)
        ratios = [g["memory_ratio"] for g in result["sources"] if g["memory_ratio"] is not None]
        result["sources_memory_ratio"] = max(ratios) if ratios else None
    result["targets"] = {
        key: {"value": result[key], "target": f"{op} {bound}", "met": _met(result[key], op, bound)}
        for key, (op, bound) in TARGETS.items()
        if key in result
    }
    return result


def _measure(spec: RunSpec, n_episodes: int, say: Say, variants: list[str], reference: int) -> dict[str, Any]:
    """Everything `bench` measures on the spec's own run."""
    meta = spec.meta
    say("setting up the run (data, tokenizer, model)")
    run = runsetup.setup(spec, resume=False)
    sync = _sync(run.device)
    lab = study.Study(run, variants, reference)
    compare = study.view(run, meta, "compare")
    twin = copy.deepcopy(run.model)
    plain = (twin, torch.optim.AdamW(twin.parameters(), lr=meta.lr, weight_decay=meta.weight_decay))

    say("fitting the heads and warming up: one episode, one comparison, one plain step per source")
    fit_seconds = _warm_up(run, lab, compare, plain, sync)
    ep = run_episodes(run, n_episodes, sync, say, lab, compare)
    totals = throughput(run, plain, sync, say)
    rate, size, dtype = matmul_rate(run.device, sync)
    rates = [*ep["rates"], rate]
    say("peak memory")
    del twin, plain  # only the run's model and optimizer stay resident for the memory figures
    mem = _memory(run, lab)
    table_rows = study.summarise(lab)
    for row in table_rows:
        row.update(mem["selections"].get(row["name"], {}))
    train_rate = totals["flops"] / totals["engine_s"]
    return {
        **_settings(run),
        "episodes": n_episodes,
        "head_fit_seconds": fit_seconds,
        "selections": ep["selections"],
        "choices": ep["choices"],
        "selection_seconds": ep["selection_s"],
        "train_seconds": ep["train_s"],
        "selection_share": ep["selection_s"] / (ep["selection_s"] + ep["train_s"]),
        "engine_tokens_per_s": totals["tokens"] / totals["engine_s"],
        "plain_tokens_per_s": totals["tokens"] / totals["plain_s"],
        "throughput_ratio": totals["plain_s"] / totals["engine_s"],
        "train_step_seconds": totals["engine_s"] / totals["steps"],
        **agreements(ep["records"]),
        **study.reference_summary(lab),
        "reference_agreement": table_rows[0]["agreement_sure"],
        "engine_agreement_sure": study.engine_agreement(lab),
        **_spec_memory(mem),
        "variants": table_rows,
        "train_flops_per_s": train_rate,
        "matmul_flops_per_s": statistics.median(rates),
        "matmul": f"{size}x{size} {dtype}, median of {len(rates)}",
        "mfu": train_rate / statistics.median(rates),
        "untouched_parameters_shared": untouched_parameters_shared(run),
        "ghost": _ghost(run),
    }


def _settings(run: Run) -> dict[str, Any]:
    meta = run.spec.meta
    keys = ("utility", "setting", "policy", "support_batches", "support_batch_size", "selection_params")
    keys += ("sketch", "reuse_training", "train_batches", "select_every")
    return {
        "device": str(run.device),
        "threads": torch.get_num_threads(),
        **{k: getattr(meta, k) for k in keys},
        "shared_targets": runsteps.shares_targets(run),
        "support_reuse": runsteps.reuses_support(run),
    }


def _memory(run: Run, lab: study.Study) -> dict[str, Any]:
    """`peaks.memory` of the spec's selection and every variant's against a plain training step."""

    def train_step(s: str) -> None:
        batches = replay(run.streams["train"][s], 1)
        plain_steps(
            run.model, run.optimizer, s, batches, run.device, run.autocast, run.spec.meta.max_grad_norm
        )

    return peaks.memory(run, dict(zip(lab.names, lab.views)), train_step)


def _spec_memory(mem: dict[str, Any]) -> dict[str, Any]:
    spec = mem["selections"].get("spec", {})
    return {
        "memory_method": mem["memory_method"],
        "memory_reason": mem.get("memory_reason"),
        "selection_peak_bytes": spec.get("peak_bytes"),
        "train_peak_bytes": mem["train_peak_bytes"],
        "memory_ratio": spec.get("memory_ratio"),
        "selection_extra_bytes": spec.get("extra_bytes"),
        "train_extra_bytes": mem["train_extra_bytes"],
        "memory_extra_ratio": spec.get("memory_extra_ratio"),
    }


def _met(value: float | None, op: str, bound: float) -> bool | None:
    if value is None:
        return None
    return value <= bound if op == "<=" else value >= bound
