"""`metapt report`: plot a run's metrics.jsonl (choices, utilities, losses, selection time) as one PNG
or a self-contained HTML page; and what `metapt compare` shows: compare.png and results.md.

matplotlib is an optional extra: it is imported inside the drawing functions, and figures are drawn
on an Agg canvas directly (no pyplot), so nothing here touches a global backend or opens a window.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from metapt import outdir, stats
from metapt.errors import MetaptError

FORMATS = (".png", ".html")


def require_matplotlib() -> None:
    """MetaptError when the `plot` extra (matplotlib) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MetaptError(
            'plots need matplotlib, which is not installed; install it with: pip install "metapt[plot]"'
        ) from None


def figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The episode records of RUN_DIR/metrics.jsonl, in episode order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        what = "no such folder" if not Path(run_dir).is_dir() else "no metrics.jsonl in it"
        raise MetaptError(
            f"{run_dir}: {what}; give the output folder of `metapt pretrain` (it holds metrics.jsonl)"
        )
    records: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("episode"), int)
            or not isinstance(record.get("chosen"), str)
            or not isinstance(record.get("train_loss"), (int, float))  # every plot reads these three
        ):
            raise MetaptError(
                f"{path}:{number}: not an episode record (expected a JSON object with episode, chosen "
                "and train_loss)"
            )
        if records and not record["episode"] > records[-1]["episode"]:  # two runs wrote one file
            raise MetaptError(
                f"{path}:{number}: episode {record['episode']} after episode {records[-1]['episode']}; "
                "the episodes of one run increase line by line, so two runs wrote this file. Keep one "
                "run's lines, or rerun into separate --output-dir folders."
            )
        records.append(record)
    if not records:
        raise MetaptError(f"{path}: no episodes recorded yet")
    return records


def _run_facts(run_dir: Path) -> tuple[str, list[str], int | None]:
    """(a title, the source tasks, the episodes the run was asked for) from the checkpoint's
    metapt.json and heads.json when present, so a baseline's plot lists the tasks it never chose too
    and the title of a run with fewer episodes than asked says so."""
    title, sources, planned = run_dir.resolve().name, [], None
    try:
        manifest = json.loads((run_dir / "metapt.json").read_text())
        title = f"{manifest['scheduler']} scheduler, {manifest['setting']}, seed {manifest['seed']}"
        planned = manifest["episodes"] if isinstance(manifest.get("episodes"), int) else None
        heads = json.loads((run_dir / "heads.json").read_text())
        sources = [name for name, head in heads.items() if head.get("role") == "source"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # metrics.jsonl alone is enough to draw
    return title, sources, planned


def _tasks(records: list[dict[str, Any]], known: list[str] = ()) -> list[str]:
    """Source tasks: the known ones, then any others in order of first appearance."""
    seen: dict[str, None] = dict.fromkeys(known)
    for r in records:
        for name in (*r.get("utilities", {}), r["chosen"]):
            seen.setdefault(name, None)
    return list(seen)


def draw_run(records: list[dict[str, Any]], title: str, sources: list[str] = ()) -> Any:
    """One figure, four panels: choices over episodes, utilities, losses, and time spent selecting."""
    from matplotlib.ticker import MaxNLocator

    fig = figure(12, 12.5)
    (choice, utility), (loss, share), (held, per_task) = fig.subplots(3, 2)
    episodes = [r["episode"] for r in records]
    for ax in (choice, utility, loss, share):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(episodes[0] - 0.5, episodes[-1] + 0.5)
    tasks = _tasks(records, sources)
    _draw_choices(choice, records, tasks)

    scored = [r for r in records if r.get("utilities")]
    if scored:
        _draw_utilities(utility, scored, tasks)
    else:
        utility.text(0.5, 0.5, "no utilities: a baseline scheduler", ha="center", transform=utility.transAxes)
        utility.set_xticks([])
        utility.set_yticks([])
        utility.set(title="utility of each source task", xlabel="episode", ylabel="utility")

    loss.plot(episodes, [r["train_loss"] for r in records], marker=".", label="training loss (chosen task)")
    targets = [(r["episode"], r["target_loss"]) for r in records if r.get("target_loss") is not None]
    if targets:
        loss.plot(*zip(*targets), marker=".", label="target loss (before the step)")
    loss.set(title="losses", xlabel="episode", ylabel="loss")
    loss.legend(fontsize="small")

    _draw_share(share, records, episodes)

    draw_heldout(held, per_task, records)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _draw_choices(choice: Any, records: list[dict[str, Any]], tasks: list[str]) -> None:
    """The task chosen (explored, or reused without selection) in each episode, one row per task."""
    row = {t: i for i, t in enumerate(tasks)}
    for kind, color, marker, label in (
        ("chosen", "tab:blue", "s", "chosen"),
        ("explored", "tab:red", "X", "explored"),
        ("reused", "tab:gray", "s", "reused (no selection)"),
    ):
        picked = [r for r in records if _how(r) == kind]
        if picked:
            choice.scatter(
                [r["episode"] for r in picked],
                [row[r["chosen"]] for r in picked],
                c=color,
                marker=marker,
                s=30,
                label=label,
            )
    choice.set_yticks(range(len(tasks)), tasks)
    choice.set_ylim(-0.5, len(tasks) - 0.5 + 0.6)  # headroom for the legend above the top task
    choice.set(title="task chosen per episode", xlabel="episode")
    choice.legend(loc="upper center", ncol=3, fontsize="small")


def _draw_share(share: Any, records: list[dict[str, Any]], episodes: list[int]) -> None:
    """The share of wall time spent selecting: per episode, and cumulative."""
    sel = [r.get("selection_seconds", 0.0) for r in records]
    train = [r.get("train_seconds", 0.0) for r in records]
    per_episode = [s / max(1e-12, s + t) for s, t in zip(sel, train)]
    cumulative, s_sum, t_sum = [], 0.0, 0.0
    for s, t in zip(sel, train):
        s_sum, t_sum = s_sum + s, t_sum + t
        cumulative.append(s_sum / max(1e-12, s_sum + t_sum))
    share.bar(episodes, per_episode, color="tab:orange", alpha=0.6, label="per episode")
    share.plot(episodes, cumulative, color="black", marker=".", label="cumulative")
    share.set_ylim(0, 1)
    share.set(title="share of wall time spent selecting", xlabel="episode", ylabel="selection / total")
    share.legend(fontsize="small")


def legend_below(ax: Any) -> None:
    """A legend of one entry per task, under the axes: placed inside, it can hide a task's line
    (the per-task held-out losses span the whole height when their scales differ)."""
    count = len(ax.get_legend_handles_labels()[1])
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=min(4, max(1, count)),
        fontsize="small",
        frameon=False,
    )


def draw_heldout(mean_ax: Any, task_ax: Any, records: list[dict[str, Any]]) -> None:
    """Held-out loss against cumulative selection + training FLOPs: the mean over the scored tasks,
    and each task on its own (the episodes that evaluated; see `[run].eval_every`)."""
    curve = stats.heldout_curve(records)
    if not curve:
        for ax in (mean_ax, task_ax):
            ax.text(
                0.5, 0.5, "no held-out evaluations ([run].eval_every)", ha="center", transform=ax.transAxes
            )
            ax.set_xticks([])
            ax.set_yticks([])
    else:
        mean_ax.plot(*zip(*curve), marker=".", color="black", label="mean over tasks")
        mean_ax.legend(fontsize="small")
        spent, points = 0.0, {}
        for r in records:
            spent += float(r.get("selection_flops", 0)) + float(r.get("train_flops", 0))
            for task, value in (r.get("heldout_loss") or {}).items():
                points.setdefault(task, []).append((spent, value))
        for task, pts in points.items():
            task_ax.plot(*zip(*pts), marker=".", label=task)
        legend_below(task_ax)
    for ax, what in ((mean_ax, "held-out loss, mean over tasks"), (task_ax, "held-out loss per task")):
        ax.set(title=what, xlabel="FLOPs (selection + training)", ylabel="loss")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))


def _draw_utilities(ax: Any, scored: list[dict[str, Any]], tasks: list[str]) -> None:
    """Each source's utility minus the selection's mean over sources (what the choice compares; the
    part all sources share, e.g. -L_T(theta), drops out), with a band of one standard error where
    the selection had one; a bandit's running means dashed in the same colour."""
    bandit = any(r.get("policy_scores") and r["policy_scores"] != r["utilities"] for r in scored)
    banded = False
    for i, t in enumerate(tasks):
        rows = [r for r in scored if t in r["utilities"]]
        if not rows:
            continue
        color = f"C{i % 10}"
        x = [r["episode"] for r in rows]
        centre = [sum(r["utilities"].values()) / len(r["utilities"]) for r in rows]
        y = [r["utilities"][t] - c for r, c in zip(rows, centre)]
        ax.plot(x, y, marker=".", color=color, label=t, linewidth=0.8)
        band = [
            (e, v, se)
            for e, v, r in zip(x, y, rows)
            if (se := (r.get("utility_se") or {}).get(t)) is not None
        ]
        if band:
            banded = True
            e, v, se = zip(*band)
            ax.fill_between(
                e, [a - b for a, b in zip(v, se)], [a + b for a, b in zip(v, se)], color=color, alpha=0.2
            )
        if bandit:
            ax.plot(x, [r["policy_scores"][t] for r in rows], linestyle="--", color=color, linewidth=1.2)
    ax.axhline(0.0, color="gray", linewidth=0.5)
    legend_below(ax)
    notes = ["band: 1 s.e."] if banded else []  # no band is drawn where no selection had one
    notes += ["dashed: bandit's mean"] if bandit else []
    ax.set(
        title="utility - mean over sources" + (f"\n({'; '.join(notes)})" if notes else ""),
        xlabel="episode",
        ylabel="utility",
    )


def _how(record: dict[str, Any]) -> str:
    return "explored" if record.get("explored") else "reused" if record.get("reused") else "chosen"


def png_bytes(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def counts_table(records: list[dict[str, Any]], sources: list[str] = ()) -> list[dict[str, Any]]:
    """Per source task: episodes chosen, of which explored, and the share of all episodes."""
    rows = []
    for t in _tasks(records, sources):
        mine = [r for r in records if r["chosen"] == t]
        rows.append(
            {
                "task": t,
                "chosen": len(mine),
                "explored": sum(1 for r in mine if r.get("explored")),
                "share": len(mine) / len(records),
            }
        )
    return rows


def _html(png: bytes, title: str, rows: list[dict[str, Any]]) -> str:
    body = "\n".join(
        f"<tr><td>{html.escape(r['task'])}</td><td>{r['chosen']}</td><td>{r['explored']}</td>"
        f"<td>{100 * r['share']:.0f}%</td></tr>"
        for r in rows
    )
    image = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}td:first-child{{text-align:left}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<img alt="choices, utilities, losses and selection time" src="data:image/png;base64,{image}">
<h2>How often each source task was chosen</h2>
<table><tr><th>task</th><th>episodes</th><th>explored</th><th>share</th></tr>
{body}
</table>
</body></html>
"""


def report(run_dir: Path, output: Path | None = None) -> Path:
    """Draw RUN_DIR/metrics.jsonl to OUTPUT (.png or .html; default RUN_DIR/report.png)."""
    run_dir = Path(run_dir)
    if output is None:  # the default file: never one that metapt did not write
        output = run_dir / "report.png"
        if output.exists() and output.name in outdir.split(run_dir)[1]:
            raise MetaptError(
                f"{output}: metapt did not write this file and will not replace it; "
                "give another file with --output"
            )
    output = Path(output)
    if output.suffix.lower() not in FORMATS:
        raise MetaptError(f"--output {output}: unknown format {output.suffix!r}; allowed: .png, .html")
    records = read_metrics(run_dir)
    if output.parent == run_dir and output.name == "report.png":
        outdir.claim(run_dir, output.name)
    title, sources, planned = _run_facts(run_dir)
    done = f"{len(records)} episode{'' if len(records) == 1 else 's'}"
    if planned is not None and len(records) < planned:  # stopped (a signal, compare's budget) or running
        done = f"{len(records)} of the {planned} episodes asked for"
    title = f"{title}: {done} ({run_dir})"
    png = png_bytes(draw_run(records, title, sources))
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".png":
        output.write_bytes(png)
    else:
        output.write_text(_html(png, title, counts_table(records, sources)), encoding="utf-8")
    return output
