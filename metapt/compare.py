"""`metapt compare`: pretrain one encoder per scheduler (and seed) from the same initialisation under the
same compute, finetune each on the downstream tasks, and write results.md, results.json and plots.

Same initialisation: a run seeds torch before it builds the encoder and trains its WordPiece on the
same sources, so every scheduler of one seed starts from identical weights and vocabulary. Equal
compute: with a FLOPs budget every run stops after the episode in which selection + training FLOPs
reach it, so the meta scheduler pays for its selection out of the budget it trains with. Model
selection (the best finetuning epoch) uses validation only; test scores are reported, never used.

Layout: OUT/<scheduler>/seed-<s>/ is a pretraining output dir with report.png and finetune/<task>/.
"""

from __future__ import annotations

import json
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metapt import distributed, mixture, outdir, report, reporting, runspec, stats, verdict
from metapt.compare_plan import episode_cap, episode_caps, folder, with_scheduler
from metapt.engine import pretrain
from metapt.errors import MetaptError
from metapt.finetune import aggregate, encoder_source, finetune_one
from metapt.interrupts import Stopped
from metapt.runspec import override
from metapt.spec import RunSpec, TaskSpec

Callback = Callable[[str, dict[str, Any]], None]


def pretrain_run(
    spec: RunSpec,
    scheduler: str,
    seed: int,
    run_dir: Path,
    episodes: int,
    budget: float | None,
    device: str | None,
    callback: Callback,
) -> dict[str, Any]:
    """Pretrain one (scheduler, seed) into run_dir and return its costs and task counts."""

    def forward(event: str, data: dict[str, Any]) -> None:
        if event == "episode":
            callback("episode", {**data, "scheduler": scheduler, "seed": seed, "episodes": episodes})

    run_spec = override(
        with_scheduler(spec, scheduler), episodes=episodes, output_dir=run_dir, seed=seed, device=device
    )
    start = time.perf_counter()
    name, rank = f"{scheduler}/seed-{seed}", distributed.rank()
    with reporting.pretrain_logger(run_spec, False, rank, name, run_dir.parent.parent.name) as log:
        summary = pretrain(run_spec, callback=reporting.chain(forward, log), max_flops=budget)
    totals = summary["totals"]
    loop = totals["selection_seconds"] + totals["train_seconds"]
    setup = time.perf_counter() - start - loop
    total = totals["selection_flops"] + totals["train_flops"]
    if not summary["complete"] and (budget is None or total < budget):
        raise Stopped(summary["signal"] or signal.SIGINT)  # stopped early: do not go on to the next run
    curve = stats.heldout_curve(report.read_metrics(run_dir))  # (FLOPs so far, held-out mean loss)
    return {
        "seed": seed,
        "dir": str(run_dir),
        "episodes": summary["episodes"],
        "episode_cap": episodes,
        "selection_flops": totals["selection_flops"],
        "train_flops": totals["train_flops"],
        "total_flops": total,
        "selection_seconds": totals["selection_seconds"],
        "train_seconds": totals["train_seconds"],
        "wall_seconds": loop,
        "setup_seconds": setup,
        "tokens": totals["tokens"],
        "counts": {t.name: summary["counts"].get(t.name, 0) for t in spec.sources},
        "budget_reached": budget is None or total >= budget,
        "heldout_curve": [list(point) for point in curve],
        "heldout_final": curve[-1][1] if curve else None,
    }


def finetune_run(
    run_dir: Path,
    tasks: list[TaskSpec],
    seed: int,
    device: str,
    callback: Callback,
    report_to: tuple[str, ...] = (),
) -> dict[str, dict[str, Any]]:
    """Finetune the encoder in run_dir on every downstream task: task -> finetune results."""
    out = {}
    outdir.claim(run_dir, "finetune")
    source = encoder_source(str(run_dir))  # checked once for all the tasks
    for t in tasks:
        where, config = run_dir / "finetune" / t.name, reporting.finetune_config(str(run_dir), t, seed)
        name = f"{run_dir.parent.name}/{run_dir.name}/{t.name}"  # scheduler/seed-S/task
        with reporting.finetune_logger(
            report_to, where, config, distributed.rank(), name, run_dir.parent.parent.name
        ) as log:
            out[t.name] = r = finetune_one(
                str(run_dir), t, seed, where, device_name=device, callback=log, checked=source
            )
        callback(
            "finetuned",
            {"seed": seed, "task": t.name, "main_metric": r["main_metric"], "metrics": r["metrics"]},
        )
    return out


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def summarise(
    runs: list[dict[str, Any]], finetuned: list[dict[str, dict]], tasks: list[str]
) -> dict[str, Any]:
    """One scheduler's entry of results.json: pretraining means over seeds and downstream mean/std."""
    keys = (
        "selection_flops",
        "train_flops",
        "total_flops",
        "selection_seconds",
        "train_seconds",
        "wall_seconds",
        "setup_seconds",
    )
    pre: dict[str, Any] = {k: _mean([r[k] for r in runs]) for k in keys}
    pre["total_flops_std"] = stats.std([r["total_flops"] for r in runs])
    pre["episodes"] = _mean([r["episodes"] for r in runs])
    pre["counts"] = {t: _mean([r["counts"][t] for r in runs]) for t in runs[0]["counts"]}
    return {
        "seeds": [r["seed"] for r in runs],
        "pretrain": pre,
        "downstream": {t: aggregate([f[t] for f in finetuned]) for t in tasks},
        "main_metric": {t: finetuned[0][t]["main_metric"] for t in tasks},
        "heldout": stats.heldout_summary([r["heldout_curve"] for r in runs]),
        "runs": runs,
    }


def compare(
    spec: RunSpec,
    schedulers: list[str],
    seeds: list[int],
    tasks: list[TaskSpec],
    out: Path,
    budget: float | None = None,
    episodes: int | None = None,
    device: str | None = None,
    callback: Callback | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Pretrain, finetune and report every (scheduler, seed); write OUT/results.{md,json} and plots.
    OUT must be empty or absent, or `overwrite` removes metapt's own files there first."""
    callback = callback or (lambda event, data: None)
    if budget is not None and episodes is not None:
        raise MetaptError("--budget and --episodes both given; choose one (equal FLOPs or equal episodes)")
    if budget is not None and not budget > 0:
        raise MetaptError(f"--budget {budget}: expected a positive number of FLOPs such as 2e12")
    report.require_matplotlib()
    out = Path(out)
    schedulers = mixture.run_order(schedulers, spec)
    with outdir.run_folder(out, "compare", "metapt compare", False, overwrite, runspec.inputs(spec)):
        outdir.claim(out, ".probe", *map(folder, schedulers), "results.json", "results.md", "compare.png")
        return _compare(spec, schedulers, seeds, tasks, out, budget, episodes, device, callback)


def _compare(
    spec: RunSpec,
    schedulers: list[str],
    seeds: list[int],
    tasks: list[TaskSpec],
    out: Path,
    budget: float | None,
    episodes: int | None,
    device: str | None,
    callback: Callback,
) -> dict[str, Any]:
    """The body of `compare`, in a folder that is checked and locked."""
    replays = "mixture" in schedulers and "meta" in schedulers  # that seed's meta run's mixture.json
    probed = [s for s in schedulers if not (replays and s == "mixture")]  # its cap follows meta's run
    caps = episode_caps(spec, probed, seeds[0], budget, out, device) if budget is not None else {}
    for s, probe in caps.items():
        callback("probe", {"scheduler": s, **probe})
    results: dict[str, Any] = {
        "run_spec": spec.path,
        "setting": spec.meta.setting,
        "sources": [t.name for t in spec.sources],
        "seeds": seeds,
        "budget": budget,
        "episodes": None if budget is not None else episodes or spec.run.episodes,
        "downstream_tasks": [t.name for t in tasks],
        "model_selection": "best finetuning epoch by the validation main metric; test is reported only",
        "schedulers": {},
    }
    total, index, meta_runs = len(schedulers) * len(seeds), 0, {}
    for s in schedulers:
        runs, finetuned = [], []
        for seed in seeds:
            index += 1
            run_dir = out / folder(s) / f"seed-{seed}"
            replay = replays and s == "mixture"
            base = mixture.replaying(spec, out / "meta" / f"seed-{seed}") if replay else spec
            n = results["episodes"] if budget is None else episode_cap(caps, s, meta_runs.get(seed), budget)
            callback(
                "run", {"scheduler": s, "seed": seed, "index": index, "total": total, "dir": str(run_dir)}
            )
            runs.append(pretrain_run(base, s, seed, run_dir, n, budget, device, callback))
            if s == "meta":
                meta_runs[seed] = runs[-1]
            if s == "mixture":
                runs[-1]["mixture"] = str(mixture.location(spec.path, base.meta.mixture))
            callback("pretrained", {"scheduler": s, **runs[-1]})
            report.report(run_dir)
            finetuned.append(
                finetune_run(run_dir, tasks, seed, device or spec.run.device, callback, spec.run.report_to)
            )
            runs[-1]["finetune"] = {t.name: str(run_dir / "finetune" / t.name) for t in tasks}
        results["schedulers"][s] = summarise(runs, finetuned, [t.name for t in tasks])
    results["best"] = verdict.best_by_validation(results)
    results["reference"] = "uniform" if "uniform" in schedulers else None  # paired differences, speedups
    stats.against(results["schedulers"], [t.name for t in tasks])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(verdict.markdown(results))
    verdict.compare_plot(results, out / "compare.png")
    callback("done", {"dir": str(out)})
    return results


def describe(event: str, data: dict[str, Any]) -> str | None:
    """One progress line for the CLI (None: nothing worth a line)."""
    if event == "probe":
        return (
            f"probe {data['scheduler']}: first episode {data['first_episode_flops']:.3g} FLOPs, "
            f"episode cap {int(data['cap'])} (the budget stops the run and sets the LR schedule)"
        )
    if event == "run":
        return (
            f"[{data['index']}/{data['total']}] pretraining {data['scheduler']}, seed {data['seed']} "
            f"-> {data['dir']}"
        )
    if event == "pretrained":
        return (
            f"  {_episodes(data['episodes'])}, {data['total_flops']:.3g} FLOPs (selection "
            f"{data['selection_flops']:.3g}), {data['wall_seconds']:.1f}s; chosen "
            + ", ".join(f"{t} {c}" for t, c in data["counts"].items())
        )
    if event == "finetuned":
        shown = "  ".join(
            f"{split} {data['main_metric']} {m[data['main_metric']]:.2f}"
            for split, m in data["metrics"].items()
            if data["main_metric"] in m
        )
        return f"  finetuned {data['task']}: {shown}"
    return None


def _episodes(n: float) -> str:
    return f"{n:g} episode{'' if n == 1 else 's'}"
