"""Statistics of a comparison over seeds, in the form papers report them. Plain Python, no torch.

- mean and sample standard deviation (n - 1 in the denominator) over seeds;
- a paired comparison against a reference on the same seeds: the mean difference, its two-sided 95%
  interval from Student's t with n - 1 degrees of freedom, and on how many seeds it is ahead;
- time to threshold: held-out loss curves (loss against cumulative selection + training FLOPs),
  their mean over seeds, and the FLOPs at which that mean first reaches a loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Point = tuple[float, float]  # (cumulative FLOPs, loss)


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean."""
    return math.fsum(values) / len(values)


def std(values: Sequence[float]) -> float | None:
    """The sample standard deviation (n - 1); None below two values: it does not exist for one, and
    0.0 would claim a spread of none (results.json writes null, the text "(1 seed)")."""
    if len(values) < 2:
        return None
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes 6.4)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use the symmetry
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: int) -> float:
    """P(T <= t) for Student's t with `dof` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with `dof` >= 1 degrees of freedom (bisection on t_cdf)."""
    if not 0.0 < p < 1.0 or dof < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and dof >= 1, got p={p}, dof={dof}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    low, high = 0.0, 1.0
    while t_cdf(high, dof) < p:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        low, high = (middle, high) if t_cdf(middle, dof) < p else (low, middle)
    return (low + high) / 2.0


def paired(values: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """`values` - `reference`, seed by seed (same order): the mean difference, its 95% t interval
    (null with one seed), and how many seeds are ahead (> 0), tied, behind."""
    if len(values) != len(reference) or not values:
        raise ValueError(
            f"paired needs two equally long, non-empty lists; got {len(values)} and {len(reference)}"
        )
    diffs = [v - r for v, r in zip(values, reference, strict=True)]
    n, m = len(diffs), mean(diffs)
    ci = None
    if n > 1:
        half = t_quantile(0.975, n - 1) * (std(diffs) or 0.0) / math.sqrt(n)
        ci = [m - half, m + half]
    return {
        "mean_diff": m,
        "ci95": ci,
        "wins": sum(d > 0 for d in diffs),
        "ties": sum(d == 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs),
        "n": n,
        "diffs": diffs,
    }


def heldout_curve(records: Sequence[dict[str, Any]]) -> list[Point]:
    """(cumulative selection + training FLOPs, held-out mean loss) at every evaluated episode of a
    run's metrics.jsonl records (in episode order). Evaluation FLOPs are not counted."""
    spent, out = 0.0, []
    for r in records:
        spent += float(r.get("selection_flops", 0)) + float(r.get("train_flops", 0))
        if r.get("heldout_loss_mean") is not None:
            out.append((spent, float(r["heldout_loss_mean"])))
    return out


def at(curve: Sequence[Point], x: float) -> float:
    """The curve at FLOPs `x`: linear between its points, its last value after its end (a run that
    stopped keeps its final loss), its first value before its start."""
    if x <= curve[0][0]:
        return curve[0][1]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return curve[-1][1]


def mean_curve(curves: Sequence[Sequence[Point]]) -> list[tuple[float, float, float | None]]:
    """(FLOPs, mean, sample std or None with one seed) over seeds at every point of any seed's curve from the last seed's
    first point on (where every curve has started). Empty when a curve is."""
    if not curves or any(not c for c in curves):
        return []
    start = max(c[0][0] for c in curves)
    grid = sorted({x for c in curves for x, _ in c if x >= start})
    return [(x, mean(ys := [at(c, x) for c in curves]), std(ys)) for x in grid]


def first_reaching(curve: Sequence[tuple[float, ...]], threshold: float) -> float | None:
    """The FLOPs at which `curve` ((FLOPs, loss, ...) points) first reaches `threshold` or below,
    linear between the points around the crossing; None when it never does."""
    if not curve:
        return None
    if curve[0][1] <= threshold:
        return curve[0][0]
    for (x0, y0, *_), (x1, y1, *_) in zip(curve, curve[1:]):
        if y1 <= threshold < y0:
            return x0 + (x1 - x0) * (y0 - threshold) / (y0 - y1)
    return None


def time_to_threshold(
    curves: Sequence[Sequence[Point]], reference: Sequence[Sequence[Point]], reference_flops: float
) -> dict[str, float | None]:
    """`flops_to_uniform`: where the mean of `curves` first reaches the reference's final held-out
    loss (the mean over its seeds of each seed's last value); `speedup_vs_uniform`: the reference's
    total FLOPs over that (None when never reached or there are no curves)."""
    if not curves or not reference or any(not c for c in (*curves, *reference)):
        return {"flops_to_uniform": None, "speedup_vs_uniform": None, "threshold": None}
    threshold = mean([c[-1][1] for c in reference])
    flops = first_reaching(mean_curve(curves), threshold)
    speedup = reference_flops / flops if flops else None
    return {"flops_to_uniform": flops, "speedup_vs_uniform": speedup, "threshold": threshold}


def _split_scores(entry: dict[str, Any], task: str, split: str) -> list[float] | None:
    score = entry["downstream"][task].get(split, {}).get(entry["main_metric"][task])
    return None if score is None else list(score["values"])


def against(entries: dict[str, dict[str, Any]], tasks: Sequence[str], reference: str = "uniform") -> None:
    """Add to each scheduler's results entry (in place), against `reference` on the same seeds:
    `vs_uniform` {task: paired main-metric differences on validation, and on test under "test"}
    (null for the reference itself), `flops_to_uniform` and `speedup_vs_uniform` (`time_to_threshold`
    of the held-out curves). Without the reference in `entries`, all three are null."""
    ref = entries.get(reference)
    for name, entry in entries.items():
        entry["vs_uniform"] = None
        entry.update({"flops_to_uniform": None, "speedup_vs_uniform": None})
        if ref is None:
            continue
        if name != reference:
            entry["vs_uniform"] = {}
            for task in tasks:
                mine, theirs = (
                    _split_scores(entry, task, "validation"),
                    _split_scores(ref, task, "validation"),
                )
                if mine is None or theirs is None:
                    continue
                row = {"metric": entry["main_metric"][task], "split": "validation", **paired(mine, theirs)}
                mine_test, theirs_test = _split_scores(entry, task, "test"), _split_scores(ref, task, "test")
                if mine_test is not None and theirs_test is not None:
                    row["test"] = paired(mine_test, theirs_test)
                entry["vs_uniform"][task] = row
        curves = [r.get("heldout_curve") or [] for r in entry["runs"]]
        reference_curves = [r.get("heldout_curve") or [] for r in ref["runs"]]
        timing = time_to_threshold(curves, reference_curves, ref["pretrain"]["total_flops"])
        entry["flops_to_uniform"] = timing["flops_to_uniform"]
        entry["speedup_vs_uniform"] = timing["speedup_vs_uniform"]
        entry["heldout"]["threshold"] = timing["threshold"]


def heldout_summary(curves: Sequence[Sequence[Point]]) -> dict[str, Any]:
    """A scheduler's held-out loss over its seeds: the mean curve ([FLOPs, mean, std] rows) and the
    final value (each seed's last evaluation): mean, std, values. Null fields without evaluations."""
    finals = [c[-1][1] for c in curves if c]
    final = {"mean": mean(finals), "std": std(finals), "values": finals} if finals else None
    return {"curve": [list(p) for p in mean_curve(curves)], "final": final}
