"""What `metapt compare` reports: results.md (the scores table with the best validation mean in
bold, the paired and per-seed sections, the held-out columns, the sources chosen) and compare.png
(held-out loss against FLOPs per scheduler beside each downstream task's score with its 95%
interval). The numbers come from metapt/stats.py.

matplotlib is imported only by the drawing (through report.figure, on an Agg canvas).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metapt import stats
from metapt.report import figure, png_bytes


def _half_width(values: list[float]) -> float:
    """Half the 95% t interval of a mean over seeds (0 for one seed)."""
    n = len(values)
    return stats.t_quantile(0.975, n - 1) * (stats.std(values) or 0.0) / n**0.5 if n > 1 else 0.0


COLORS = [f"C{i}" for i in range(10)]
FLOPS = "pretraining FLOPs (selection + training)"


def compare_plot(results: dict[str, Any], output: Path) -> Path:
    """compare.png: held-out loss against pretraining FLOPs per scheduler (mean over seeds, band ±
    one std), then per downstream task the main score (mean with its 95% t interval over seeds)
    against the run's total FLOPs; filled markers validation, hollow markers test."""

    tasks = results["downstream_tasks"]
    fig = figure(5.5 * (1 + len(tasks)), 5.2)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(1, 1 + len(tasks), squeeze=False)[0]
    _heldout_panel(axes[0], results)
    for ax, task in zip(axes[1:], tasks):
        _score_panel(ax, results, task)
    # one legend under all panels (each scheduler keeps its colour in every panel): a legend inside a
    # panel covered the bands and error bars it sat on
    labelled: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labelled.setdefault(label, handle)
    if labelled:
        fig.legend(
            labelled.values(),
            labelled.keys(),
            loc="outside lower center",
            ncol=len(labelled),
            fontsize="small",
        )
    fig.suptitle(
        "held-out loss and downstream score against pretraining compute, over seeds "
        "(downstream: filled validation, hollow test)",
        fontsize="medium",
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(png_bytes(fig))
    return output


def _heldout_panel(ax: Any, results: dict[str, Any]) -> None:
    """Each scheduler's mean held-out curve with a ± one std band; uniform's final loss dashed, and
    where each other scheduler first reaches it dotted."""
    for i, (name, entry) in enumerate(results["schedulers"].items()):
        curve, color = (entry.get("heldout") or {}).get("curve") or [], COLORS[i % 10]
        if not curve:
            continue
        x, y, sd = zip(*curve)
        ax.plot(x, y, color=color, marker=".", label=name)  # a marker: a one-point curve shows too
        if None not in sd:  # one seed: no std, so no band (a zero-width one would claim no spread)
            ax.fill_between(
                x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)], color=color, alpha=0.2
            )
        if entry.get("flops_to_uniform") is not None and name != results.get("reference"):
            ax.axvline(entry["flops_to_uniform"], color=color, linestyle=":", linewidth=1)
    reference = results["schedulers"].get(results.get("reference") or "", {})
    threshold = (reference.get("heldout") or {}).get("threshold")
    if threshold is not None:
        ax.axhline(threshold, color="gray", linestyle="--", linewidth=1, label="uniform's final loss")
    ax.set(title="held-out loss (mean ± std over seeds)", xlabel=FLOPS, ylabel="loss")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    if not ax.get_legend_handles_labels()[0]:
        ax.text(0.5, 0.5, "no held-out evaluations", ha="center", transform=ax.transAxes)


def _score_panel(ax: Any, results: dict[str, Any], task: str) -> None:
    """One downstream task: each scheduler's mean main score at its total FLOPs, 95% interval bars."""
    metric = None
    for i, (name, entry) in enumerate(results["schedulers"].items()):
        metric, x = entry["main_metric"][task], entry["pretrain"]["total_flops"]
        for split, face in (("validation", COLORS[i % 10]), ("test", "none")):
            score = entry["downstream"][task].get(split, {}).get(metric)
            if score is not None:
                ax.errorbar(
                    x,
                    score["mean"],
                    yerr=_half_width(score["values"]),
                    fmt="o",
                    color=COLORS[i % 10],
                    markerfacecolor=face,
                    capsize=3,
                    label=name if split == "validation" else None,
                )
    ax.set(title=f"{task}: {metric} (95% interval)", xlabel=FLOPS, ylabel=metric or "score")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))


def _count(mean: float) -> str:
    """A mean episode count over seeds to two decimals, without trailing zeros (28, 1.67, 0.5)."""
    return f"{mean:.2f}".rstrip("0").rstrip(".")


def spread(values: dict[str, Any], digits: int) -> str:
    """`mean ± std` over seeds; with one seed the value alone, marked so: a sample standard deviation
    of one value does not exist, and "± 0.00" would claim a spread of none."""
    if values.get("std") is None or len(values.get("values", ())) == 1:
        return f"{values['mean']:.{digits}f} (1 seed)"
    return f"{values['mean']:.{digits}f} ± {values['std']:.{digits}f}"


def heldout_cells(entry: dict[str, Any], has_reference: bool) -> list[str]:
    """The final held-out loss (mean ± std over seeds) and the FLOPs to uniform's final loss."""
    final = (entry.get("heldout") or {}).get("final")
    loss = "-" if final is None else spread(final, 3)
    flops, speedup = entry.get("flops_to_uniform"), entry.get("speedup_vs_uniform")
    reached = "never" if flops is None else f"{flops:.3g} ({speedup:.2f}x)"
    return [loss, reached if final is not None and has_reference else "-"]


def _interval(row: dict[str, Any]) -> list[str]:
    ci = "-" if row["ci95"] is None else f"[{row['ci95'][0]:+.2f}, {row['ci95'][1]:+.2f}]"
    ties = row.get("ties") or 0  # seeds where the two score the same: neither ahead
    wins = f"{row['wins']}/{row['n']}" + (f" ({ties} tied)" if ties else "")
    return [f"{row['mean_diff']:+.2f}", ci, wins]


def paired_lines(results: dict[str, Any]) -> list[str]:
    """results.md's paired section: each scheduler minus uniform on the same seeds."""
    if results.get("reference") is None:
        return ["", "No `uniform` run: no paired differences and no speedups."]
    if len(results["schedulers"]) == 1:
        return ["", "Only `uniform` ran: nothing to pair with it."]
    lines = [
        "",
        "## Against uniform, paired over seeds",
        "",
        "Scheduler minus uniform on the same seed, main metric: mean difference, its 95% interval "
        "(Student's t, n - 1 degrees of freedom) and the seeds on which the scheduler is ahead (and tied). "
        "FLOPs to uniform's held-out loss: where the scheduler's mean held-out curve first reaches "
        "uniform's final held-out loss; speedup = uniform's total FLOPs / that.",
        "",
        "| scheduler | task | metric | validation: mean diff | 95% interval | wins | test: mean diff "
        "| 95% interval | wins |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results["schedulers"].items():
        for task, row in (entry.get("vs_uniform") or {}).items():
            test = _interval(row["test"]) if "test" in row else ["-", "-", "-"]
            lines.append("| " + " | ".join([name, task, row["metric"], *_interval(row), *test]) + " |")
    return lines


def per_seed_lines(results: dict[str, Any]) -> list[str]:
    """results.md's per-seed section: every seed's main score, then mean ± sample std."""
    seeds = results["seeds"]
    lines = [
        "",
        "## Per seed",
        "",
        "| scheduler | task | split | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
        "|" + "---|" * (4 + len(seeds)),
    ]
    for name, entry in results["schedulers"].items():
        final = (entry.get("heldout") or {}).get("final")
        if final is not None and len(final["values"]) == len(seeds):
            lines.append(_seed_row(name, "held-out loss", "final", final, 3))
        for task in results["downstream_tasks"]:
            for split in ("validation", "test"):
                score = entry["downstream"][task].get(split, {}).get(entry["main_metric"][task])
                if score is not None and len(score["values"]) == len(seeds):
                    lines.append(_seed_row(name, task, split, score, 2))
    return lines


def _seed_row(name: str, what: str, split: str, values: dict[str, Any], digits: int) -> str:
    """One per-seed table row: the values, then mean ± std, at `digits` decimals."""
    cells = " | ".join(f"{v:.{digits}f}" for v in values["values"])
    return f"| {name} | {what} | {split} | {cells} | {spread(values, digits)} |"


def best_by_validation(results: dict[str, Any]) -> dict[str, list[str]]:
    """Per downstream task, the schedulers with the highest validation mean of the main metric (ties
    share it). Test scores play no part."""
    best = {}
    for t in results["downstream_tasks"]:
        scores = {}
        for s, entry in results["schedulers"].items():
            v = entry["downstream"][t].get("validation", {}).get(entry["main_metric"][t])
            if v is not None:
                scores[s] = v["mean"]
        if scores:
            best[t] = [s for s, v in scores.items() if v == max(scores.values())]
    return best


def _score(entry: dict[str, Any], task: str, split: str) -> str:
    v = entry["downstream"][task].get(split, {}).get(entry["main_metric"][task])
    return "-" if v is None else spread(v, 2)


def _table(results: dict[str, Any]) -> list[str]:
    """The comparison table, one row per scheduler, and a note for each run stopped by its cap."""
    schedulers, tasks = results["schedulers"], results["downstream_tasks"]
    first = next(iter(schedulers.values()))
    header = [
        "scheduler",
        "episodes",
        "selection FLOPs",
        "training FLOPs",
        "total FLOPs",
        "wall s (selection + training)",
        "held-out loss (final)",
        "FLOPs to uniform's held-out loss (speedup)",
    ]
    for t in tasks:
        metric = first["main_metric"][t]
        header += [f"{t} {metric} (validation)", f"{t} {metric} (test)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s, e in schedulers.items():
        p = e["pretrain"]
        row = [s, f"{p['episodes']:g}", f"{p['selection_flops']:.3g}", f"{p['train_flops']:.3g}"]
        row += [
            f"{p['total_flops']:.3g}",
            f"{p['wall_seconds']:.1f} ({p['selection_seconds']:.1f} + {p['train_seconds']:.1f})",
            *heldout_cells(e, results.get("reference") is not None),
        ]
        for t in tasks:
            val = _score(e, t, "validation")
            row += [f"**{val}**" if s in results["best"].get(t, ()) else val, _score(e, t, "test")]
        lines.append("| " + " | ".join(row) + " |")
    for s, e in schedulers.items():
        for r in e["runs"]:
            if not r["budget_reached"]:
                lines.append(
                    f"\nNote: {s}, seed {r['seed']} reached its episode cap ({r['episode_cap']}) with "
                    f"{r['total_flops']:.3g} FLOPs, before the budget."
                )
    return lines


def _chosen(results: dict[str, Any]) -> list[str]:
    """How often each scheduler chose each source (episodes, mean over seeds)."""
    lines = ["", "## Source tasks chosen (episodes, mean over seeds)", ""]
    sources = results["sources"]
    lines += ["| scheduler | " + " | ".join(sources) + " |", "|" + "---|" * (len(sources) + 1)]
    for s, e in results["schedulers"].items():
        counts, n = e["pretrain"]["counts"], max(1e-12, e["pretrain"]["episodes"])
        lines.append(
            f"| {s} | "
            + " | ".join(f"{_count(counts[t])} ({100 * counts[t] / n:.0f}%)" for t in sources)
            + " |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    """results.md: the comparison table, how often each source was chosen, and what was run."""
    compute = (
        f"a budget of {results['budget']:.3g} FLOPs per run (selection FLOPs count against it)"
        if results["budget"] is not None
        else f"{results['episodes']} episode{'' if results['episodes'] == 1 else 's'} per run"
    )
    lines = [
        f"# Scheduler comparison: {results['run_spec']}",
        "",
        f"Setting {results['setting']}; sources {', '.join(results['sources'])}; seeds "
        f"{', '.join(map(str, results['seeds']))}; {compute}. Scores are mean ± standard deviation over "
        "seeds (with one seed, the value alone: no standard deviation). Each finetuning run keeps its "
        "best epoch by the validation main metric; test scores are reported, never used to choose. "
        "**Bold**: best validation mean per task.",
        "",
    ]
    lines += _table(results) + paired_lines(results) + per_seed_lines(results) + _chosen(results)
    lines += [
        "",
        "Files: `<scheduler>/seed-<s>/` is each pretraining run (metrics.jsonl, report.png, checkpoint) "
        "with `finetune/<task>/` inside; `compare.png` plots the held-out loss and the downstream score "
        "against pretraining FLOPs.",
        "",
    ]
    return "\n".join(lines)
