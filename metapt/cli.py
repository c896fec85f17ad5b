"""The `metapt` command line: thin typer commands behind one error boundary (boundary.py). Only these
two modules print and exit (with progress.py, which they drive)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from metapt import outdir
from metapt.boundary import Boundary, console, err
from metapt.catalog import DEFAULT_DOWNSTREAM, MAX_SEED
from metapt.errors import MetaptError

REPORT_TO_HELP = "Also log scalars to: tensorboard, wandb (comma-separated), or none."


def _say(text: str) -> None:
    """Print plain text as written: no markup, emoji or highlighting, no wrap at the width."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


app = typer.Typer(
    cls=Boundary,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Meta-learned multi-task pretraining of transformer encoders (Luo et al. 2021).",
)


def _version(shown: bool) -> None:
    if shown:
        from metapt import __version__

        console.print(f"metapt {__version__}", markup=False, highlight=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print metapt's version and exit."
    ),
) -> None:
    if debug:
        os.environ["METAPT_DEBUG"] = "1"


def _natural_width(renderable: object, on: Console = console) -> int:
    """The width a table takes when nothing has to fold."""
    from rich.measure import Measurement

    return Measurement.get(on, on.options.update_width(1 << 20), renderable).maximum


def print_wide(on: Console, tables: object) -> None:
    """Print rich tables; piped, at their natural width, so that no name or figure is folded or cut
    to the 80 columns rich assumes there (a terminal folds cells to its width)."""
    if on.is_terminal:
        on.print(tables)
        return
    width = on.width  # print(width=) cannot go past the console's own: widen it while printing
    on.width = max(width, _natural_width(tables, on))
    try:
        on.print(tables)
    finally:
        on.width = width


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
def validate(
    files: list[Path] = typer.Argument(
        ..., metavar="FILE|NAME", help="Run specs or task specs (files or built-in names)."
    ),
) -> None:
    """Check specs (and every task a run spec references) without loading any model."""
    from metapt.errors import SpecError
    from metapt.resolve import find_run, parse_any
    from metapt.spec import RunSpec
    from metapt.validation import missing_data

    problems = []
    for path in files:
        try:
            path = find_run(str(path))  # a file, or a built-in name as pretrain takes (`agnostic`, `squad`)
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
                    soft_wrap=True,
                )
        what = f"run spec, {len(tasks)} tasks" if isinstance(spec, RunSpec) else f"task {spec.name!r}"
        console.print(f"[green]ok[/] {escape(str(path))} ({escape(what)})", highlight=False, soft_wrap=True)
    if problems:
        raise SpecError(problems)


@app.command("inspect-tasks")
def inspect_tasks(
    paths: list[Path] = typer.Argument(
        None, metavar="PATH", help="Spec files or folders (default: ./tasks and the built-in specs)."
    ),
    count: bool = typer.Option(
        False, "--count", help="Load each split through its reader and count examples."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List every task spec found: name, kind, roles, data, head, loss (and example counts)."""
    from metapt.inspect import describe_tasks, invalid, plain_lines, table

    if count:
        _quiet_libraries()
    rows = describe_tasks(paths or None, count=count)
    if as_json:
        print(json.dumps(rows, indent=2))
    elif console.is_terminal and _natural_width(shown := table(rows, count)) <= console.width:
        console.print(shown)
    else:  # piped, or a terminal too narrow for the table: whole lines, no word broken by a fold
        print("\n".join(plain_lines(rows, count)))
    if bad := invalid(rows):
        names = ", ".join(r["name"] for r in bad)
        err.print(
            f"error: {len(bad)} of {len(rows)} task specs {'is' if len(bad) == 1 else 'are'} invalid "
            f"or {'has' if len(bad) == 1 else 'have'} unreadable data: {escape(names)}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)


@app.command()
def pretrain(
    run_spec: str = typer.Argument(
        ..., metavar="RUN.toml", help="A run spec (TOML file, or a built-in name such as agnostic)."
    ),
    episodes: int = typer.Option(
        None, "--episodes", min=0, help="Override [run].episodes (0: save the initial weights only)."
    ),
    output_dir: Path = typer.Option(None, "--output-dir", help="Override [run].output_dir."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in the output dir."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start again in a used output dir: removes only metapt's own files there."
    ),
    seed: int = typer.Option(None, "--seed", min=0, max=MAX_SEED, help="Override [run].seed."),
    device: str = typer.Option(
        None, "--device", help="Override [run].device (auto, cpu, cuda, cuda:N, mps)."
    ),
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
        pretrain_reporter(console, spec, quiet=quiet, rank=rank, errors=err) as report,
    ):
        summary = run_pretrain(
            spec, resume=resume, callback=reporting.chain(report, log), overwrite=overwrite
        )
    if summary.get("rank", 0) == 0:
        _say(summary["message"])
        if summary.get("noise"):
            err.print(f"warning: {summary['noise']}", markup=False, highlight=False, soft_wrap=True)
    if not summary["complete"]:  # stopped early by a signal: 128 + its number, as a shell reports it
        if summary.get("rank", 0) == 0:
            err.print("stopped early; continue with --resume", markup=False, highlight=False)
        raise typer.Exit(128 + (summary.get("signal") or 2))


@app.command()
def finetune(
    checkpoint: str = typer.Argument(
        ..., metavar="CKPT", help="A metapt checkpoint, Hugging Face encoder folder or hub id."
    ),
    task: str = typer.Option(..., "--task", help="A task name or task spec file."),
    data: Path = typer.Option(None, "--data", help="A local copy of the task's data (file or folder)."),
    epochs: int = typer.Option(
        None, "--epochs", min=1, help="Passes over the train split (default: the spec's [finetune].epochs)."
    ),
    lr: float = typer.Option(
        None, "--lr", min=0.0, help="AdamW learning rate (default: the spec's [finetune].lr)."
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", min=1, help="Examples per batch (default: the spec's [batch].size)."
    ),
    max_length: int = typer.Option(
        None, "--max-length", min=8, help="Tokens per sequence (default: the spec's [batch].max_length)."
    ),
    seed: int = typer.Option(
        0, "--seed", min=0, max=MAX_SEED, help="Seed of the head's initialisation, data order and dropout."
    ),
    seeds: str = typer.Option(None, "--seeds", help="Several seeds, e.g. 1,2,3: mean and std are reported."),
    output_dir: Path = typer.Option(None, "--output-dir", help="Default: CKPT/finetune/TASK."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier finetuning in the output dir (only metapt's files)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the final metrics."),
    report_to: str = typer.Option(None, "--report-to", help=REPORT_TO_HELP),
) -> None:
    """Finetune a pretrained encoder on a downstream task and score it with the task's metric."""
    _quiet_libraries()
    from metapt import distributed, reporting
    from metapt.data.tokenizer import load_tokenizer
    from metapt.finetune import encoder_source, task_spec

    names = reporting.parse(report_to) if report_to is not None else ()
    reporting.require(names)
    spec = task_spec(task, data, {"epochs": epochs, "lr": lr, "size": batch_size, "max_length": max_length})
    seed_list = _seeds(seeds) if seeds else [seed]
    out = output_dir or Path(checkpoint) / "finetune" / spec.name
    lead = distributed.rank() == 0  # under torchrun every rank trains; rank 0 alone prints and writes
    source = encoder_source(checkpoint)
    load_tokenizer(source)  # a bad CKPT fails before any folder is made in it
    # CKPT/finetune is recorded as metapt's before it is made, and taken out again when the run
    # fails before writing there (an encoder that does not load): CKPT's record stays as it was.
    claim = (
        outdir.claimed_if_ours(Path(checkpoint), "finetune")
        if lead and output_dir is None
        else contextlib.nullcontext()
    )
    guard = (
        outdir.run_folder(out, "finetune", "metapt finetune", False, overwrite, (Path(source),))
        if lead
        else None
    )
    with claim, guard or contextlib.nullcontext() as lock:
        if lock is not None and lock.warning:
            _say(f"warning: {lock.warning}")
        _finetune_seeds(checkpoint, source, spec, seed_list, out, quiet, lead, names)


def _finetune_seeds(
    checkpoint: str,
    source: str,
    spec: Any,
    seed_list: list[int],
    out: Path,
    quiet: bool,
    lead: bool,
    names: tuple[str, ...],
) -> None:
    """Finetune every seed into `out` (seed-N/ each when there are several, and their summary),
    logging to the `names` backends; `source` is `checkpoint`'s encoder folder, already checked."""
    from metapt import distributed, reporting
    from metapt.finetune import finetune_one, seed_folder, summarise_seeds
    from metapt.progress import finetune_reporter
    from metapt.verdict import spread

    runs = []
    rank = distributed.rank()
    for s in seed_list:
        where = seed_folder(out, s, seed_list)
        if lead and where != out:
            outdir.claim(out, where.name)
        name = f"{spec.name}/seed-{s}" if len(seed_list) > 1 else spec.name
        config = reporting.finetune_config(checkpoint, spec, s)
        with (
            reporting.finetune_logger(names, where, config, rank, name) as log,
            finetune_reporter(console, quiet or not lead, errors=err) as report,
        ):
            runs.append(
                finetune_one(
                    checkpoint, spec, s, where, callback=reporting.chain(report, log), checked=source
                )
            )
        if lead:
            _print_results(runs[-1], where)
    if len(seed_list) > 1 and lead:
        summary = summarise_seeds(spec, seed_list, runs, out)
        for split, metrics in summary["metrics"].items():
            shown = "  ".join(f"{k} {spread(v, 2)}" for k, v in metrics.items())
            _say(f"{split} over {len(seed_list)} seeds: {shown}")
        _say(f"results: {out / 'results.json'}")


def _seeds(text: str) -> list[int]:
    from metapt.errors import MetaptError

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MetaptError(f"--seeds {text!r}: expected comma-separated integers such as 1,2,3") from None
    if not values or any(not 0 <= v <= MAX_SEED for v in values) or len(set(values)) != len(values):
        raise MetaptError(
            f"--seeds {text!r}: expected distinct non-negative integers up to {MAX_SEED} such as 1,2,3"
        )
    return values


def _print_results(results: dict, where: Path) -> None:
    for split, metrics in results["metrics"].items():
        shown = "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())
        _say(f"{split}: {shown}")
    _say(f"best epoch {results['best_epoch']}, main metric {results['main_metric']}; wrote {where}")


@app.command()
def evaluate(
    finetuned_dir: Path = typer.Argument(
        ..., metavar="FINETUNED_DIR", help="A folder written by `metapt finetune`."
    ),
    task: str = typer.Option(..., "--task", help="A task name or task spec file."),
    split: str = typer.Option("validation", "--split", help="The split to score: validation or test."),
    data: Path = typer.Option(None, "--data", help="A local copy of the task's data (file or folder)."),
) -> None:
    """Re-score a finetuned model on a split and write its metrics and predictions."""
    _quiet_libraries()
    from metapt.finetune import task_spec
    from metapt.finetuned import evaluate as run_evaluate

    spec = task_spec(task, data, {})
    result = run_evaluate(finetuned_dir, spec, split)
    shown = "  ".join(f"{k} {v:.2f}" for k, v in result["metrics"].items()) or "no labels: predictions only"
    _say(f"{split}: {shown}")
    _say(f"predictions: {result['predictions']}")


@app.command()
def bench(
    run_spec: str = typer.Argument(
        "agnostic", metavar="RUN.toml", help="A run spec (TOML file, or a built-in name)."
    ),
    episodes: int = typer.Option(
        None, "--episodes", min=1, help="Episodes to time (default: 2 x select_every, 4 to the run's)."
    ),
    device: str = typer.Option(
        None, "--device", help="Instead of the run spec's device (auto, cpu, cuda, cuda:N, mps)."
    ),
    threads: int = typer.Option(
        None, "--threads", min=1, help="torch intra-op threads (default: torch's; 1 steadies a busy machine)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object for scripts."),
    variant: list[str] = typer.Option(
        None,
        "--variant",
        help="[meta] changes to measure beside the spec, e.g. support_batch_size=8,policy=greedy "
        "(repeatable; default: the built-in list; 'none' for none).",
    ),
    reference: int = typer.Option(
        8, "--reference", min=0, help="Support and target batches of the exact reference (0: none)."
    ),
    reference_check: bool = typer.Option(
        False,
        "--reference-check",
        help="Also score a second reference on its own batches: how often it agrees with a sure one "
        "is the ceiling of any estimate's agreement (doubles the reference's time).",
    ),
    sources: str = typer.Option(
        None, "--sources", help="Source counts for the growth measurement, e.g. 4,8,16 (sources replicated)."
    ),
) -> None:
    """Measure selection cost against a reference, training throughput, peak memory and MFU."""
    _quiet_libraries()
    import torch

    from metapt.bench import bench as run_bench
    from metapt.bench import table
    from metapt.resolve import find_run, parse_run
    from metapt.runspec import override
    from metapt.study import parse_variant

    spec = override(parse_run(find_run(run_spec)), device=device)
    if threads is not None:
        torch.set_num_threads(threads)
    counts = _counts(sources) if sources else None
    if reference_check and reference == 0:
        raise MetaptError("--reference-check compares two references: it needs --reference M with M >= 1")
    variants = None if not variant else [] if variant == ["none"] else list(variant)
    for text in variants or ():  # a usage mistake is told before the run is set up
        parse_variant(text, spec.meta, spec.sources)
    result = run_bench(
        spec,
        episodes,
        say=lambda message: err.print(message, highlight=False, soft_wrap=True),
        variants=variants,
        reference=reference,
        sources=counts,
        check=reference_check,
    )
    if as_json:
        print(json.dumps(result))
    else:
        print_wide(console, table(result))


def _counts(text: str) -> list[int]:
    """`--sources 4,8,16` -> [4, 8, 16]; exit 2 naming the bad part."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise MetaptError(f"--sources {text!r}: expected comma-separated counts >= 1, e.g. 4,8,16")
    return [int(p) for p in parts]


@app.command()
def compare(
    run_spec: str = typer.Argument(
        ..., metavar="RUN.toml", help="A run spec (TOML file, or a built-in name such as agnostic)."
    ),
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
        f"{','.join(DEFAULT_DOWNSTREAM)}).",
    ),
    output_dir: Path = typer.Option(
        None, "--output-dir", help="Default: the run spec's output_dir + '-compare'."
    ),
    device: str = typer.Option(
        None, "--device", help="Instead of the run spec's device (auto, cpu, cuda, cuda:N, mps)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier comparison in the output dir (only metapt's files)."
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
    from metapt.compare import describe
    from metapt.compare_plan import downstream_tasks, parse_schedulers
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
            _say(line)

    run_compare(
        spec,
        names,
        seed_list,
        tasks,
        out,
        budget=budget,
        episodes=episodes,
        callback=show,
        overwrite=overwrite,
    )
    _say((out / "results.md").read_text())
    _say(f"wrote {out / 'results.md'}, {out / 'results.json'} and {out / 'compare.png'}")


@app.command()
def report(
    run_dir: Path = typer.Argument(
        ..., metavar="RUN_DIR", help="A pretraining output folder (it holds metrics.jsonl)."
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="FILE.png or FILE.html (default: RUN_DIR/report.png)."
    ),
) -> None:
    """Plot a run's metrics.jsonl: choices, utilities, losses and selection time."""
    from metapt.report import report as draw

    _say(f"wrote {draw(run_dir, output)}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="metapt")


if __name__ == "__main__":
    sys.exit(main())
