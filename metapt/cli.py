"""The `metapt` command line: thin typer commands behind one error boundary. Only this module prints
and exits (with progress.py, which it drives)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from metapt.errors import MetaptError, TrainingError

console = Console()
err = Console(stderr=True)
REPORT_TO_HELP = "Also log scalars to: tensorboard, wandb (comma-separated), or none."


def _debug() -> bool:
    return os.environ.get("METAPT_DEBUG", "") not in ("", "0")


class Boundary(TyperGroup):
    """The one place errors become messages: bad input exits 2, anything else 1; a traceback only
    with --debug or METAPT_DEBUG=1."""

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except MetaptError as e:
            if _debug():
                raise
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except TrainingError as e:
            if _debug():
                raise
            err.print(f"[bold red]training stopped:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # a bug: say what, and how to see where
            if _debug() or not isinstance(e, Exception) or type(e).__module__.startswith("click"):
                raise
            err.print(
                f"[bold red]internal error:[/] {type(e).__name__}: {escape(str(e))} "
                "(run with --debug or METAPT_DEBUG=1 for the traceback)",
                highlight=False,
            )
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=Boundary,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Meta-learned multi-task pretraining of transformer encoders (Luo et al. 2021).",
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks.")) -> None:
    if debug:
        os.environ["METAPT_DEBUG"] = "1"


def _quiet_libraries() -> None:
    """Hide the libraries' own progress bars and load reports; metapt reports what matters."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="Run specs or task specs.")) -> None:
    """Check specs (and every task a run spec references) without loading any model."""
    from metapt.errors import SpecError
    from metapt.resolve import parse_any
    from metapt.spec import RunSpec, missing_data

    problems = []
    for path in files:
        try:
            spec = parse_any(path)
        except SpecError as e:
            problems += e.problems
            continue
        tasks = list(spec.tasks().values()) if isinstance(spec, RunSpec) else [spec]
        for t in tasks:
            if t.data.obtain and (gone := missing_data(t.data)):
                console.print(
                    f"[yellow]note:[/] {t.name}: data for {', '.join(gone)} not present; "
                    f"{escape(t.data.obtain)}",
                    highlight=False,
                )
        what = f"run spec, {len(tasks)} tasks" if isinstance(spec, RunSpec) else f"task {spec.name!r}"
        console.print(f"[green]ok[/] {escape(str(path))} ({escape(what)})", highlight=False, soft_wrap=True)
    if problems:
        raise SpecError(problems)


@app.command("inspect-tasks")
def inspect_tasks(
    paths: list[Path] = typer.Argument(
        None, help="Spec files or folders (default: ./tasks and the built-in specs)."
    ),
    count: bool = typer.Option(
        False, "--count", help="Load each split through its reader and count examples."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List every task spec found: name, kind, roles, data, head, loss (and example counts)."""
    from metapt.inspect import describe_tasks, table

    if count:
        _quiet_libraries()
    rows = describe_tasks(paths or None, count=count)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        console.print(table(rows, count))


@app.command()
def pretrain(
    run_spec: str = typer.Argument(..., help="A run spec (TOML file, or a built-in name such as agnostic)."),
    episodes: int = typer.Option(
        None, "--episodes", min=0, help="Override [run].episodes (0: save the initial weights only)."
    ),
    output_dir: Path = typer.Option(None, "--output-dir", help="Override [run].output_dir."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in the output dir."),
    seed: int = typer.Option(None, "--seed", min=0, help="Override [run].seed."),
    device: str = typer.Option(None, "--device", help="Override [run].device (auto, cpu, cuda, cuda:N)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the final summary."),
    report_to: str = typer.Option(None, "--report-to", help=REPORT_TO_HELP + " Overrides [run].report_to."),
) -> None:
    """Pretrain an encoder, choosing the task of every episode (Algorithm 1 or a baseline)."""
    _quiet_libraries()
    from metapt import distributed, reporting
    from metapt.engine import pretrain as run_pretrain
    from metapt.progress import pretrain_reporter
    from metapt.resolve import find_run, parse_run
    from metapt.runspec import override

    spec = override(
        parse_run(find_run(run_spec)),
        episodes=episodes,
        output_dir=output_dir,
        seed=seed,
        device=device,
        report_to=None if report_to is None else reporting.parse(report_to),
    )
    reporting.require(spec.run.report_to)
    # Under torchrun every rank runs the loop; rank 0 alone shows and logs it.
    rank = distributed.rank()
    with (  # the logger outside: W&B's closing summary prints after the live view ends
        reporting.pretrain_logger(spec, resume, rank) as log,
        pretrain_reporter(console, spec, quiet=quiet, rank=rank) as report,
    ):
        summary = run_pretrain(spec, resume=resume, callback=reporting.chain(report, log))
    if summary.get("rank", 0) == 0:
        console.print(summary["message"], highlight=False)


@app.command()
def finetune(
    checkpoint: str = typer.Argument(..., help="A metapt checkpoint, Hugging Face encoder folder or hub id."),
    task: str = typer.Option(..., "--task", help="A task name or task spec file."),
    data: Path = typer.Option(None, "--data", help="A local copy of the task's data (file or folder)."),
    epochs: int = typer.Option(None, "--epochs", min=1),
    lr: float = typer.Option(None, "--lr", min=0.0),
    batch_size: int = typer.Option(None, "--batch-size", min=1),
    max_length: int = typer.Option(None, "--max-length", min=8),
    seed: int = typer.Option(0, "--seed", min=0),
    seeds: str = typer.Option(None, "--seeds", help="Several seeds, e.g. 1,2,3: mean and std are reported."),
    output_dir: Path = typer.Option(None, "--output-dir", help="Default: CKPT/finetune/TASK."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    report_to: str = typer.Option(None, "--report-to", help=REPORT_TO_HELP),
) -> None:
    """Finetune a pretrained encoder on a downstream task and score it with the task's metric."""
    _quiet_libraries()
    from metapt import distributed, reporting
    from metapt.finetune import aggregate, finetune_one, task_spec
    from metapt.progress import finetune_reporter

    names = reporting.parse(report_to) if report_to is not None else ()
    reporting.require(names)
    spec = task_spec(task, data, {"epochs": epochs, "lr": lr, "size": batch_size, "max_length": max_length})
    seed_list = _seeds(seeds) if seeds else [seed]
    out = output_dir or Path(checkpoint) / "finetune" / spec.name
    runs = []
    rank = distributed.rank()
    lead = rank == 0  # under torchrun every rank trains; rank 0 alone prints and writes
    for s in seed_list:
        where = out / f"seed-{s}" if len(seed_list) > 1 else out
        name = f"{spec.name}/seed-{s}" if len(seed_list) > 1 else spec.name
        config = reporting.finetune_config(checkpoint, spec, s)
        with (
            reporting.finetune_logger(names, where, config, rank, name) as log,
            finetune_reporter(console, quiet or not lead) as report,
        ):
            runs.append(finetune_one(checkpoint, spec, s, where, callback=reporting.chain(report, log)))
        if lead:
            _print_results(runs[-1], where)
    if len(seed_list) > 1 and lead:
        summary = {
            "task": spec.name,
            "seeds": seed_list,
            "main_metric": runs[0]["main_metric"],
            "metrics": aggregate(runs),
            "runs": [str(out / f"seed-{s}") for s in seed_list],
        }
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(summary, indent=2))
        for split, metrics in summary["metrics"].items():
            shown = "  ".join(f"{k} {v['mean']:.2f} ± {v['std']:.2f}" for k, v in metrics.items())
            console.print(f"{split} over {len(seed_list)} seeds: {shown}", highlight=False)
        console.print(f"results: {out / 'results.json'}", highlight=False)


def _seeds(text: str) -> list[int]:
    from metapt.errors import MetaptError

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MetaptError(f"--seeds {text!r}: expected comma-separated integers such as 1,2,3") from None
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise MetaptError(f"--seeds {text!r}: expected distinct non-negative integers such as 1,2,3")
    return values


def _print_results(results: dict, where: Path) -> None:
    for split, metrics in results["metrics"].items():
        shown = "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())
        console.print(f"{split}: {shown}", highlight=False)
    console.print(
        f"best epoch {results['best_epoch']}, main metric {results['main_metric']}; wrote {where}",
        highlight=False,
    )


@app.command()
def evaluate(
    finetuned_dir: Path = typer.Argument(..., help="A folder written by `metapt finetune`."),
    task: str = typer.Option(..., "--task", help="A task name or task spec file."),
    split: str = typer.Option("validation", "--split"),
    data: Path = typer.Option(None, "--data"),
) -> None:
    """Re-score a finetuned model on a split and write its metrics and predictions."""
    _quiet_libraries()
    from metapt.finetune import evaluate as run_evaluate
    from metapt.finetune import task_spec

    spec = task_spec(task, data, {})
    result = run_evaluate(finetuned_dir, spec, split)
    shown = "  ".join(f"{k} {v:.2f}" for k, v in result["metrics"].items()) or "no labels: predictions only"
    console.print(f"{split}: {shown}", highlight=False)
    console.print(f"predictions: {result['predictions']}", highlight=False)


@app.command()
def bench(
    run_spec: str = typer.Argument("agnostic", help="A run spec (TOML file, or a built-in name)."),
    episodes: int = typer.Option(
        None, "--episodes", min=1, help="Episodes to time (default: 2 x select_every, 4 to the run's)."
    ),
    device: str = typer.Option(
        None, "--device", help="Instead of the run spec's device (auto, cpu, cuda, cuda:N)."
    ),
    threads: int = typer.Option(
        None, "--threads", min=1, help="torch intra-op threads (default: torch's; 1 steadies a busy machine)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object for scripts."),
) -> None:
    """Measure selection cost, training throughput, first-order agreement, peak memory and MFU."""
    _quiet_libraries()
    import torch

    from metapt.bench import bench as run_bench
    from metapt.bench import table
    from metapt.resolve import find_run, parse_run
    from metapt.runspec import override

    spec = override(parse_run(find_run(run_spec)), device=device)
    if threads is not None:
        torch.set_num_threads(threads)
    result = run_bench(spec, episodes, say=lambda message: err.print(message, highlight=False))
    if as_json:
        print(json.dumps(result))
    else:
        console.print(table(result))


@app.command()
def compare(
    run_spec: str = typer.Argument(..., help="A run spec (TOML file, or a built-in name such as agnostic)."),
    schedulers: str = typer.Option(
        "meta,uniform,proportional,temperature,sequential,single",
        "--schedulers",
        help="Comma-separated schedulers to compare.",
    ),
    budget: float = typer.Option(
        None, "--budget", help="FLOPs per run, e.g. 2e12; the meta scheduler's selection counts against it."
    ),
    episodes: int = typer.Option(None, "--episodes", min=1, help="Episodes per run instead of a budget."),
    seeds: str = typer.Option(None, "--seeds", help="Seeds, e.g. 1,2,3 (default: the run spec's seed)."),
    downstream: str = typer.Option(
        None,
        "--downstream",
        help="Comma-separated tasks to finetune on (default: the targets of an aware run, else "
        "conll2012-synthetic,claims-synthetic).",
    ),
    output_dir: Path = typer.Option(
        None, "--output-dir", help="Default: the run spec's output_dir + '-compare'."
    ),
    device: str = typer.Option(
        None, "--device", help="Instead of the run spec's device (auto, cpu, cuda, cuda:N)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the final summary."),
    report_to: str = typer.Option(
        None,
        "--report-to",
        help=REPORT_TO_HELP + " For every pretraining and finetuning; overrides [run].report_to.",
    ),
) -> None:
    """Pretrain with several schedulers at equal compute, finetune each, and write a results table."""
    _quiet_libraries()
    from metapt import reporting
    from metapt.compare import compare as run_compare
    from metapt.compare import describe, downstream_tasks, parse_schedulers
    from metapt.resolve import find_run, parse_run
    from metapt.runspec import override

    names = parse_schedulers(schedulers)
    backends = None if report_to is None else reporting.parse(report_to)
    spec = override(parse_run(find_run(run_spec)), device=device, report_to=backends)
    reporting.require(spec.run.report_to)
    seed_list = _seeds(seeds) if seeds is not None else [spec.run.seed]
    tasks = downstream_tasks(spec, downstream)
    out = output_dir or Path(f"{spec.run.output_dir}-compare")

    def show(event: str, data: dict) -> None:
        line = None if quiet else describe(event, data)
        if line:
            console.print(line, highlight=False, soft_wrap=True)

    run_compare(spec, names, seed_list, tasks, out, budget=budget, episodes=episodes, callback=show)
    console.print((out / "results.md").read_text(), highlight=False, markup=False, soft_wrap=True)
    console.print(
        f"wrote {out / 'results.md'}, {out / 'results.json'} and {out / 'compare.png'}", highlight=False
    )


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A pretraining output folder (it holds metrics.jsonl)."),
    output: Path = typer.Option(
        None, "--output", "-o", help="FILE.png or FILE.html (default: RUN_DIR/report.png)."
    ),
) -> None:
    """Plot a run's metrics.jsonl: choices, utilities, losses and selection time."""
    from metapt.report import report as draw

    console.print(f"wrote {draw(run_dir, output)}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="metapt")


if __name__ == "__main__":
    sys.exit(main())
