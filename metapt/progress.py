"""What `metapt pretrain` shows while it runs: a rich live view on a terminal, plain lines otherwise."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from metapt.spec import RunSpec

Callback = Callable[[str, dict[str, Any]], None]


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class PretrainView:
    """Keeps the latest episode and renders it; rank > 0 and --quiet show nothing."""

    def __init__(self, console: Console, spec: RunSpec):
        self.console, self.spec = console, spec
        self.start = time.perf_counter()
        self.first_episode, self.total = 0, spec.run.episodes
        self.last: dict[str, Any] = {}
        self.sources: list[str] = []

    def eta(self) -> str:
        done = self.last.get("episode", self.first_episode) - self.first_episode
        if done <= 0:
            return "?"
        per = (time.perf_counter() - self.start) / done
        return _eta(per * (self.total - self.last["episode"]))

    def line(self, r: dict[str, Any]) -> str:
        """One plain line per episode (logs, CI, pipes)."""
        how = " (explored)" if r["explored"] else " (reused)" if r["reused"] else ""
        errors = r.get("utility_se") or {}
        utils = " ".join(
            f"{k}={v:.4g}" + (f"+-{errors[k]:.2g}" if errors.get(k) is not None else "")
            for k, v in r["utilities"].items()
        )
        # The bandit chooses by its running estimates, not by this selection's utilities: show them
        # (the live view's "policy" column), or a choice with the lowest utility looks like a bug.
        scores = r.get("policy_scores") or {}
        policy = " ".join(f"{k}={v:.4g}" for k, v in scores.items()) if scores != r["utilities"] else ""
        target = f" target_loss {r['target_loss']:.4f}" if r["target_loss"] is not None else ""
        lead = f" lead {r['lead_z']:.1f}se" if r.get("lead_z") is not None else ""
        return (
            f"episode {r['episode']}/{self.total} chose {r['chosen']}{how}{lead} train_loss {r['train_loss']:.4f}"
            f"{target}{' utilities ' + utils if utils else ''}{' policy ' + policy if policy else ''}"
            f" select {r['selection_seconds']:.2f}s "
            f"train {r['train_seconds']:.2f}s eta {self.eta()}"
        )

    def render(self) -> Group:
        r = self.last
        head = Text.from_markup(
            f"[bold]metapt pretrain[/] {escape(self.spec.path)}  episode {r.get('episode', self.first_episode)}"
            f"/{self.total}  eta {self.eta()}"
        )
        if not r:
            return Group(head, Text("preparing the first episode ..."))
        how = " [yellow](explored)[/]" if r["explored"] else " [dim](reused)[/]" if r["reused"] else ""
        chose = Text.from_markup(
            f"chose [bold cyan]{escape(r['chosen'])}[/]{how}   train loss "
            f"{r['train_loss']:.4f}"
            + (f"   target loss {r['target_loss']:.4f}" if r["target_loss"] is not None else "")
        )
        if r.get("lead_z") is not None:
            chose.append(f"   leads the runner-up by {r['lead_z']:.1f} standard errors")
        table = Table(box=None, pad_edge=False)
        for col in ("source task", "utility", "+- se", "policy", "chosen", "share"):
            table.add_column(col, justify="left" if col == "source task" else "right")
        n = max(1, r["episode"])
        best = max(r["utilities"], key=r["utilities"].get) if r["utilities"] else None
        errors, scores = r.get("utility_se") or {}, r.get("policy_scores") or {}
        for s in self.sources:
            u, se, score = r["utilities"].get(s), errors.get(s), scores.get(s)
            mark = "[bold green]" if s == best else ""
            table.add_row(
                f"{mark}{escape(s)}",
                "-" if u is None else f"{u:.5g}",
                "-" if se is None else f"{se:.2g}",
                "-" if score is None or score == u else f"{score:.3g}",
                str(r["counts"].get(s, 0)),
                f"{100 * r['counts'].get(s, 0) / n:.0f}%",
            )
        sel, tr = r["selection_seconds"], r["train_seconds"]
        share = 100 * sel / max(1e-9, sel + tr)
        times = Text(
            f"selection {sel:.2f}s  training {tr:.2f}s  (selection {share:.0f}% of the episode)  "
            f"lr {r['lr']:.2e}"
        )
        return Group(head, chose, table, times)


def _say(console: Console, text: str) -> None:
    """Plain text as written: no markup, no highlighting, no wrap at the console's width."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _plain_line(event: str, data: dict[str, Any], view: PretrainView) -> str | None:
    """The line an event prints when there is no live view (piped, CI), or None."""
    if event == "start":
        return (
            f"pretraining {', '.join(data['sources'])} ({data['setting']}, scheduler {data['scheduler']}) "
            f"on {data['device']}, episodes {data['start'] + 1}-{data['episodes']}"
        )
    if event == "episode":
        return view.line(data)  # one line per episode, however long
    if event == "checkpoint":
        return f"checkpoint after episode {data['episode']} in {data['path']}"
    return None


@contextlib.contextmanager
def pretrain_reporter(
    console: Console, spec: RunSpec, quiet: bool = False, rank: int = 0, errors: Console | None = None
) -> Iterator[Callback]:
    """A callback for `engine.pretrain` that draws the live view (or prints lines) on `console`, and
    its warnings on `errors` (stderr; default: `console`)."""
    errors = errors or console
    view = PretrainView(console, spec)
    live = (
        Live(view.render(), console=console, refresh_per_second=4, transient=False)
        if console.is_terminal and not quiet and rank == 0
        else None
    )

    def callback(event: str, data: dict[str, Any]) -> None:
        if rank != 0:
            return
        if event == "warning":  # shown even with --quiet, as the libraries' warnings are
            _say(errors, f"warning: {data['message']}")
            return
        if quiet:
            return
        if event == "start":
            view.sources, view.first_episode = data["sources"], data["start"]
            view.start = time.perf_counter()
        elif event == "episode":
            view.last = data
        if live is not None:
            live.update(view.render())
        elif (line := _plain_line(event, data, view)) is not None:
            _say(console, line)

    if live is None:
        yield callback
        return
    with live:
        yield callback


@contextlib.contextmanager
def finetune_reporter(
    console: Console, quiet: bool = False, errors: Console | None = None
) -> Iterator[Callback]:
    """A callback for `finetune.finetune_one`: a progress bar per epoch and a line of metrics after it
    on `console`; warnings on `errors` (stderr; default: `console`)."""
    errors = errors or console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    )
    state: dict[str, Any] = {}

    def callback(event: str, data: dict[str, Any]) -> None:
        if event == "warning":  # shown even with --quiet
            _say(errors, f"warning: {data['message']}")
            return
        if quiet:
            return
        if event == "start":
            state.update(data)
            console.print(
                f"finetuning {data['task']}: {data['examples']} training features, {data['epochs']} "
                f"epochs of {data['steps']} steps",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        elif event == "step":
            if data["step"] == 1:
                state["bar"] = bar.add_task(
                    f"epoch {data['epoch']}/{state['epochs']}", total=state["steps"], loss="-"
                )
            bar.update(state["bar"], completed=data["step"], loss=f"{data['loss']:.4f}")
        elif event == "epoch":
            if "bar" in state:
                bar.remove_task(state.pop("bar"))
            shown = "  ".join(f"{k} {v:.2f}" for k, v in data["metrics"].items())
            console.print(
                f"epoch {data['epoch']}: validation {shown}  (main: {data['main']})",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    with bar:
        yield callback
