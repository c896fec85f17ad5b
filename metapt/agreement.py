"""Equally noisy estimates on the same batches, for `metapt bench` (issue #7): exact, first-order and
the agnostic shared estimate of one episode on the same fresh support and target batches, and
first-order on other target batches (what a fresh draw of targets alone changes); how often each
picks exact's task, and their Spearman correlation with it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metapt import runsteps, selection
from metapt.model import batch_to
from metapt.runstate import Run
from metapt.study import timed as _timed


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


def _draw(run: Run, group: str, names: list[str], m: int) -> list[tuple[str, dict]]:
    return [(n, batch_to(run.streams[group][n].next(), run.device)) for n in names for _ in range(m)]


def compare_utilities(run: Run, sync: Callable[[], None]) -> dict[str, Any]:
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
    if runsteps.shares_targets(run):
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
        k: sum(r["seconds"][k] for r in records) / len(records) for k in records[0]["seconds"]
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
