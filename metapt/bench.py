"""`metapt bench`: what the meta step costs against training, measured in one process on one model
and the same batches (issue #7). Timings on a shared machine are noisy, so the figures to read are
ratios of things measured side by side: selection vs training time in the same episodes, the engine's
training loop vs a plain one on the same batches (alternating which runs first), training FLOP/s vs
a large matrix product timed between the episodes.

Phases: a warm-up episode; E engine episodes with the spec's utility and `select_every` (timed;
the meta step runs whatever [meta].scheduler says), each followed by the utility comparison on
fresh batches (exact, first-order, the agnostic shared estimate; epsilon 0); engine vs plain
training on every source; peak memory of an exact selection vs a plain training step. Nothing is
written to the run's output folder.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from metapt import engine, selection
from metapt.flops import tokens
from metapt.model import MultiTaskModel, batch_to
from metapt.spec import RunSpec

Say = Callable[[str], None]
# issue #7's targets at the shipped default run spec: figure -> (comparison, bound)
TARGETS = {
    "selection_share": ("<=", 0.10),
    "throughput_ratio": (">=", 0.95),
    "first_order_agreement": (">=", 0.90),
    "memory_ratio": ("<=", 1.3),
}


def _sync(device: torch.device) -> Callable[[], None]:
    """Wait for queued kernels before reading the clock (CUDA runs asynchronously)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _timed(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[Any, float]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def argmax(utilities: dict[str, float]) -> str:
    """The greedy choice (epsilon 0; first on ties), as the greedy policy makes it."""
    names = list(utilities)
    return max(names, key=lambda n: (utilities[n], -names.index(n)))


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):  # ties share their average rank
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Spearman rank correlation of two utilities over the same tasks (None when one is constant)."""
    ra, rb = _ranks([a[k] for k in a]), _ranks([b[k] for k in a])
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var > 0 else None


# ------------------------------------------------------------------------------------- utilities
def _draw(run: engine.Run, group: str, names: list[str], m: int) -> list[tuple[str, dict]]:
    return [(n, batch_to(run.streams[group][n].next(), run.device)) for n in names for _ in range(m)]


def compare_utilities(run: engine.Run, sync: Callable[[], None]) -> dict[str, Any]:
    """One episode's utilities on the same fresh support and target batches: exact, first-order, the
    agnostic shared estimate (support batches only), and first-order on independent target batches
    (how much a fresh draw of targets alone changes)."""
    meta, model, autocast = run.spec.meta, run.model, run.autocast
    m, alpha, norm = meta.support_batches, meta.inner_lr, meta.normalize
    support: dict[str, list] = {}
    for s, batch in _draw(run, "support", run.sources, m):
        support.setdefault(s, []).append(batch)
    targets = _draw(run, "target", run.targets, meta.target_batches or m)
    model.eval()
    args = (alpha, norm, autocast, meta.inner_step)

    out: dict[str, Any] = {"seconds": {}}
    exact, out["seconds"]["exact"] = _timed(lambda: selection.exact(model, support, targets, *args), sync)
    first, out["seconds"]["first_order"] = _timed(
        lambda: selection.first_order(model, support, targets, *args), sync
    )
    out["exact"], out["first_order"] = exact.values, first.values
    if engine._shares_targets(run):
        shared, out["seconds"]["shared"] = _timed(lambda: selection.shared(model, support, *args), sync)
        out["shared"] = shared.values
    fresh = _draw(run, "target", run.targets, meta.target_batches or m)
    out["resampled"] = selection.first_order(model, support, fresh, *args).values
    model.train()
    return out


def agreements(records: list[dict]) -> dict[str, Any]:
    """Each estimate's agreement with exact (argmax and Spearman) and every utility's mean seconds."""
    out: dict[str, Any] = {}
    for key, name in (("first_order", "first_order"), ("shared", "shared"), ("resampled", "resampled")):
        agree, rho = _agreement(records, key)
        out[f"{name}_agreement"] = agree
        out["utility_spearman" if key == "first_order" else f"{name}_spearman"] = rho
    out["selection_call_seconds"] = {
        k: statistics.mean(r["seconds"][k] for r in records) for k in records[0]["seconds"]
    }
    return out


def _agreement(records: list[dict], key: str) -> tuple[float | None, float | None]:
    """(share of episodes where `key` picks exact's argmax, mean Spearman with exact)."""
    pairs = [(r["exact"], r[key]) for r in records if key in r]
    if not pairs:
        return None, None
    agree = sum(argmax(a) == argmax(b) for a, b in pairs) / len(pairs)
    rhos = [rho for a, b in pairs if (rho := spearman(a, b)) is not None]
    return agree, (sum(rhos) / len(rhos) if rhos else None)


# ------------------------------------------------------------------------------------ throughput
def _replay(stream: Any, n: int) -> list[dict]:
    """The next `n` batches `stream` will yield, drawn from a copy (the stream itself does not move)."""
    twin = copy.copy(stream)
    twin.load_state_dict(stream.state_dict())
    return [twin.next() for _ in range(n)]


def plain_steps(
    model: MultiTaskModel,
    optimizer: torch.optim.Optimizer,
    task: str,
    batches: list[dict],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    max_grad_norm: float,
) -> None:
    """The reference: a plain PyTorch loop (forward, backward, clip as the spec does, AdamW step)."""
    model.train()
    for batch in batches:
        batch = batch_to(batch, device)
        with autocast():
            loss = model(task, batch)[0]
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def throughput(
    run: engine.Run, plain: tuple, sync: Callable[[], None], say: Say, rounds: int = 2
) -> dict[str, float]:
    """`engine._train` vs `plain_steps` on the same N batches, for every source and `rounds` times,
    alternating which goes first: a load spike on a shared machine then hurts both alike."""
    meta = run.spec.meta
    totals = dict.fromkeys(("engine_s", "plain_s", "tokens", "flops", "steps"), 0.0)
    for r in range(rounds):
        for i, task in enumerate(run.sources):
            say(f"throughput, round {r + 1}/{rounds}: {task}")
            batches = _replay(run.streams["train"][task], meta.train_batches)

            def ours(task: str = task) -> tuple[float, int, int]:
                return engine._train(run, task)

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


# ---------------------------------------------------------------------------------------- memory
def _status(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise OSError(f"no {field} in /proc/self/status")
    return int(match.group(1)) * 1024


def _reset_rss_peak() -> int:
    """Return freed memory to the system, reset VmHWM to VmRSS, and return that baseline."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_probe(device: torch.device) -> tuple[Callable[[], int] | None, Callable[[], int] | None, str]:
    """(reset -> baseline bytes, read peak bytes, method) for `device`; (None, None, why) when this
    machine cannot measure it. On CPU: Linux peak RSS (VmHWM), reset by writing 5 to clear_refs;
    checked here by freeing 256 MiB and seeing the peak come back down."""
    if device.type == "cuda":

        def reset() -> int:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            return torch.cuda.memory_allocated(device)

        return reset, lambda: torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    try:
        _reset_rss_peak()
        block = torch.ones(64 * 1024 * 1024)  # 256 MiB, written
        raised = _status("VmHWM")
        del block
        after = _reset_rss_peak()
        if _status("VmHWM") > raised - 128 * 1024 * 1024 or after > raised - 128 * 1024 * 1024:
            return None, None, "VmHWM did not come back down after writing 5 to /proc/self/clear_refs"
    except OSError as e:
        return None, None, f"cannot reset the peak RSS here: {e}"
    return _reset_rss_peak, lambda: _status("VmHWM"), "VmHWM (/proc/self/status), reset via clear_refs"


def memory(run: engine.Run, rounds: int = 2) -> dict[str, Any]:
    """Peak memory of an exact-mode selection (all sources, the spec's M) and of plain training steps
    (one per source, the run's model and AdamW), each from a reset peak; the larger of `rounds`
    alternations. `*_extra_bytes`: above the memory held before (weights, optimizer state)."""
    reset, peak, method = peak_probe(run.device)
    out: dict[str, Any] = {"memory_method": method if reset else None}
    if reset is None or peak is None:
        out.update(
            dict.fromkeys(("selection_peak_bytes", "train_peak_bytes", "memory_ratio"), None),
            memory_reason=method,
        )
        return out
    meta, model, autocast = run.spec.meta, run.model, run.autocast
    sel, train, sel_extra, train_extra = 0, 0, 0, 0
    for _ in range(rounds):
        batches = {s: _replay(run.streams["train"][s], 1) for s in run.sources}
        base_mem = reset()
        for s, b in batches.items():
            plain_steps(model, run.optimizer, s, b, run.device, autocast, meta.max_grad_norm)
        train, train_extra = max(train, peak()), max(train_extra, peak() - base_mem)
        support = {s: [b for _, b in _draw(run, "support", [s], meta.support_batches)] for s in run.sources}
        targets = _draw(run, "target", run.targets, meta.target_batches or meta.support_batches)
        base_mem = reset()
        model.eval()
        selection.exact(model, support, targets, meta.inner_lr, meta.normalize, autocast, meta.inner_step)
        model.train()
        sel, sel_extra = max(sel, peak()), max(sel_extra, peak() - base_mem)
        del support, targets
    out.update(
        selection_peak_bytes=sel,
        train_peak_bytes=train,
        memory_ratio=sel / train,
        selection_extra_bytes=sel_extra,  # above the memory held before the step
        train_extra_bytes=train_extra,
        memory_extra_ratio=sel_extra / train_extra if train_extra > 0 else None,
    )
    return out


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
def untouched_parameters_shared(run: engine.Run) -> bool:
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


def run_episodes(run: engine.Run, n: int, sync: Callable[[], None], say: Say) -> dict[str, Any]:
    """`n` engine episodes (selection every `select_every`, as `engine.pretrain` decides), each
    followed by an untimed utility comparison and a timed matrix product."""
    every = run.spec.meta.select_every
    out: dict[str, Any] = {"selection_s": 0.0, "train_s": 0.0, "selections": 0, "choices": []}
    out["records"], out["rates"], last, gradient = [], [], None, None
    for e in range(n):
        if last is None or e % every == 0:
            picked, seconds = _timed(lambda: engine.select_task(run), sync)
            last, gradient = picked.chosen, picked.gradient
            out["selection_s"] += seconds
            out["selections"] += 1
        _, seconds = _timed(lambda task=last, g=gradient: engine._train(run, task, g), sync)
        gradient = None
        out["train_s"] += seconds
        run.episode += 1
        out["choices"].append(last)
        say(f"episode {e + 1}/{n}: {last}; comparing utilities")
        out["records"].append(compare_utilities(run, sync))
        out["rates"].append(matmul_rate(run.device, sync)[0])
    return out


def bench(spec: RunSpec, episodes: int | None = None, say: Say | None = None) -> dict[str, Any]:
    """Measure the spec's meta step and training in one process; returns the figures (README, bench)."""
    say = say or (lambda message: None)
    meta = spec.meta
    n_episodes = episodes_for(spec, episodes)
    say("setting up the run (data, tokenizer, model)")
    run = engine.setup(spec, resume=False)
    sync = _sync(run.device)
    twin = copy.deepcopy(run.model)
    plain = (twin, torch.optim.AdamW(twin.parameters(), lr=meta.lr, weight_decay=meta.weight_decay))

    say("warming up: one episode, one comparison, one plain step per source")
    picked = engine.select_task(run)
    engine._train(run, picked.chosen, picked.gradient)
    compare_utilities(run, sync)
    for s in run.sources:
        batch = _replay(run.streams["train"][s], 1)
        plain_steps(*plain, s, batch, run.device, run.autocast, meta.max_grad_norm)
    matmul_rate(run.device, sync)

    ep = run_episodes(run, n_episodes, sync, say)
    totals = throughput(run, plain, sync, say)
    rate, size, dtype = matmul_rate(run.device, sync)
    rates = [*ep["rates"], rate]
    say("peak memory")
    del twin, plain  # only the run's model and optimizer stay resident for the memory figures
    mem = memory(run)
    train_rate = totals["flops"] / totals["engine_s"]
    result: dict[str, Any] = {
        "device": str(run.device),
        "threads": torch.get_num_threads(),
        "episodes": n_episodes,
        "utility": meta.utility,
        "setting": meta.setting,
        "support_batches": meta.support_batches,
        "train_batches": meta.train_batches,
        "select_every": meta.select_every,
        "shared_targets": engine._shares_targets(run),
        "support_reuse": engine._reuses_support(run),
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
        **mem,
        "train_flops_per_s": train_rate,
        "matmul_flops_per_s": statistics.median(rates),
        "matmul": f"{size}x{size} {dtype}, median of {len(rates)}",
        "mfu": train_rate / statistics.median(rates),
        "untouched_parameters_shared": untouched_parameters_shared(run),
    }
    result["targets"] = {
        key: {"value": result[key], "target": f"{op} {bound}", "met": _met(result[key], op, bound)}
        for key, (op, bound) in TARGETS.items()
    }
    return result


def _met(value: float | None, op: str, bound: float) -> bool | None:
    if value is None:
        return None
    return value <= bound if op == "<=" else value >= bound


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if key.endswith("_bytes"):
        return f"{value / 2**20:.1f} MiB"
    if key.endswith("flops_per_s"):
        return f"{value / 1e9:.1f} GFLOP/s"
    if key.endswith("tokens_per_s"):
        return f"{value:,.0f} tok/s"
    if key in ("selection_share", "mfu") or key.endswith("agreement"):
        return f"{100 * value:.1f}%"
    if key.endswith("ratio"):
        return f"{value:.2f}x"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


ROWS = (
    ("selection_share", "selection share of episode time"),
    ("engine_tokens_per_s", "engine training throughput"),
    ("plain_tokens_per_s", "plain PyTorch loop throughput"),
    ("throughput_ratio", "engine / plain throughput"),
    ("first_order_agreement", "first-order picks exact's task"),
    ("utility_spearman", "Spearman(first-order, exact)"),
    ("shared_agreement", "shared (agnostic) picks exact's task"),
    ("shared_spearman", "Spearman(shared, exact)"),
    ("resampled_agreement", "first-order, other target batches, picks exact's"),
    ("resampled_spearman", "Spearman(first-order other targets, exact)"),
    ("selection_peak_bytes", "peak memory, exact selection"),
    ("train_peak_bytes", "peak memory, plain training step"),
    ("memory_ratio", "selection / training peak"),
    ("memory_extra_ratio", "same, above the memory held before"),
    ("train_flops_per_s", "training FLOP/s (estimate / time)"),
    ("matmul_flops_per_s", "matrix product FLOP/s"),
    ("mfu", "model FLOPs utilisation"),
)


def table(result: dict[str, Any]) -> Any:
    """The figures as a rich Table (the CLI prints it)."""
    from rich.table import Table

    title = (
        f"metapt bench: {result['utility']} utility, {result['episodes']} episodes "
        f"(select every {result['select_every']}), {result['device']}, {result['threads']} threads"
    )
    out = Table(title=title, title_justify="left")
    for name, justify in (("figure", "left"), ("value", "right"), ("target", "left"), ("met", "left")):
        out.add_column(name, justify=justify)
    for key, label in ROWS:
        if key not in result:
            continue
        target = result["targets"].get(key, {})
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[target.get("met")]
        out.add_row(label, _fmt(key, result[key]), target.get("target", ""), met)
    for name, seconds in result["selection_call_seconds"].items():
        out.add_row(f"utilities, {name.replace('_', ' ')}", f"{seconds:.3f} s / selection", "", "")
    out.add_row("training step", f"{result['train_step_seconds']:.3f} s", "", "")
    if result.get("memory_reason"):
        out.add_row("memory", result["memory_reason"], "", "")
    return out
