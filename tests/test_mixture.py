"""The learned mixture as data: mixture.json at every checkpoint matches the choices, tokens and FLOPs of
metrics.jsonl (overall and per tenth of the run); the `mixture` scheduler reproduces the shares it is
given (exact counts, per phase, resumable); `metapt compare` replays that seed's meta run."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import stop_after
from typer.testing import CliRunner

from metapt import engine, mixture, schedulers
from metapt.cli import app
from metapt.compare import compare
from metapt.errors import MetaptError
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.spec import RunSpec

RUN = Path(__file__).parent / "fixtures" / "runs" / "agnostic.toml"  # a checkpoint every 2 episodes
COMPARE_RUN = Path(__file__).parent / "fixtures" / "compare" / "run.toml"
SOURCES = ["mlm", "mlm_shuffled"]


def tiny(out: Path, episodes: int, **meta: Any) -> RunSpec:
    spec = override(parse_run(RUN), output_dir=out, episodes=episodes)
    return dataclasses.replace(spec, meta=dataclasses.replace(spec.meta, **meta))


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def read(out: Path) -> dict:
    return json.loads((out / "mixture.json").read_text())


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A meta run with exploration (epsilon 0.5): 2 episodes, then resumed to 6; (folder, the
    mixture.json of the checkpoint at episode 2)."""
    out = tmp_path_factory.mktemp("mixture") / "meta"
    engine.pretrain(tiny(out, 2, epsilon=0.5))
    at_two = read(out)
    engine.pretrain(tiny(out, 6, epsilon=0.5), resume=True)
    return out, at_two


def test_mixture_json_matches_the_counts_tokens_and_flops_of_metrics_jsonl(meta_run: tuple) -> None:
    out, at_two = meta_run
    records, found = lines(out), read(out)
    assert (out / "mixture.json").resolve() == (out / "current" / "mixture.json").resolve()
    counts = Counter(r["chosen"] for r in records)
    assert found["episodes"] == 6 and found["sources"] == SOURCES
    assert found["counts"] == {s: counts[s] for s in SOURCES}
    assert found["explored"] == {s: sum(r["explored"] for r in records if r["chosen"] == s) for s in SOURCES}
    for field in ("tokens", "train_flops"):
        assert found[field] == {s: sum(r[field] for r in records if r["chosen"] == s) for s in SOURCES}
    assert found["selection_flops"] == sum(r["selection_flops"] for r in records)
    assert found["episode_shares"] == {s: counts[s] / 6 for s in SOURCES}
    total = sum(r["tokens"] for r in records)
    assert found["token_shares"] == pytest.approx({s: found["tokens"][s] / total for s in SOURCES})
    # 6 episodes: 6 phases of one episode, each all on that episode's task
    assert [(p["first_episode"], p["last_episode"]) for p in found["phases"]] == [(e, e) for e in range(1, 7)]
    for phase, record in zip(found["phases"], records):
        assert phase["counts"] == {s: int(s == record["chosen"]) for s in SOURCES}
        assert phase["tokens"][record["chosen"]] == record["tokens"]
    # the checkpoint at episode 2 described episodes 1-2 only
    assert at_two["episodes"] == 2
    assert at_two["counts"] == {s: sum(r["chosen"] == s for r in records[:2]) for s in SOURCES}


def test_summarise_cuts_the_run_into_tenths() -> None:
    history = ["a"] * 10 + ["b"] * 15
    records = {e: {"tokens": 10, "train_flops": 2.0, "explored": e == 1} for e in range(1, 26)}
    found = mixture.summarise(["a", "b", "c"], history, records)
    bounds = [(1, 3), (4, 5), (6, 8), (9, 10), (11, 13), (14, 15), (16, 18), (19, 20), (21, 23), (24, 25)]
    assert [(p["first_episode"], p["last_episode"]) for p in found["phases"]] == bounds
    assert found["counts"] == {"a": 10, "b": 15, "c": 0} and found["explored"] == {"a": 1, "b": 0, "c": 0}
    assert found["episode_shares"] == {"a": 0.4, "b": 0.6, "c": 0.0}
    assert found["tokens"] == {"a": 100, "b": 150, "c": 0}
    assert [p["counts"]["a"] for p in found["phases"]] == [3, 2, 3, 2, 0, 0, 0, 0, 0, 0]
    assert mixture.summarise(["a"], [], {})["phases"] == []  # --episodes 0


def test_the_mixture_scheduler_reproduces_the_shares_it_is_given() -> None:
    g = torch.Generator().manual_seed(0)
    shares = ((Fraction(3), Fraction(1), Fraction(0)),)
    # deficits w_i (n + 1) - c_i * 4 of tasks 0, 1 by hand: (3, 1), (2, 2: a tie, the first), (1, 3), (4, 0)
    picks = [schedulers.mixture(e, 8, [1, 1, 1], g, 2.0, shares) for e in range(8)]
    assert picks == [0, 0, 1, 0, 0, 0, 1, 0]
    assert [schedulers.mixture(e, 8, [1, 1, 1], g, 2.0, shares) for e in reversed(range(8))] == picks[::-1]
    # shares of a hand-written file: every prefix within about one episode, exact when they come out whole
    odd = ((Fraction("0.5"), Fraction("0.3"), Fraction("0.2")),)
    picks = [schedulers.mixture(e, 100, [1, 1, 1], g, 2.0, odd) for e in range(100)]
    for n in range(1, 101):
        counts = Counter(picks[:n])
        assert all(abs(counts[i] - float(odd[0][i]) * n) < 1.5 for i in range(3))
    assert Counter(picks[:10]) == {0: 5, 1: 3, 2: 2} and Counter(picks) == {0: 50, 1: 30, 2: 20}
    phased = ((Fraction(1), Fraction(0)), (Fraction(1), Fraction(3)))
    assert [schedulers.mixture(e, 8, [1, 1], g, 2.0, phased) for e in range(8)] == [0, 0, 0, 0, 1, 0, 1, 1]


def test_a_mixture_run_replays_the_counts_of_a_meta_run(meta_run: tuple, tmp_path: Path) -> None:
    source = meta_run[0] / "mixture.json"
    meta_choices = [r["chosen"] for r in lines(meta_run[0])]
    engine.pretrain(tiny(tmp_path / "overall", 6, scheduler="mixture", mixture=str(source)))
    replay = [r["chosen"] for r in lines(tmp_path / "overall")]
    assert Counter(replay) == Counter(meta_choices)
    # per phase: 6 phases of one episode each give back meta's sequence itself, also across a resume
    # (SIGTERM stops the run after its first episode, with a checkpoint)
    phased = tiny(tmp_path / "phased", 6, scheduler="mixture", mixture=str(source), mixture_phases=True)
    assert engine.pretrain(phased, callback=stop_after(1))["episodes"] == 1
    engine.pretrain(phased, resume=True)
    assert [r["chosen"] for r in lines(tmp_path / "phased")] == meta_choices


def test_compare_replays_each_seeds_meta_run_after_it(tmp_path: Path) -> None:
    spec = parse_run(COMPARE_RUN)
    two = engine.pretrain(override(spec, episodes=2, output_dir=tmp_path / "two"))["totals"]
    one = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    # the first meta episode also pays for fitting the heads: then 1.5 more episodes -> 3 meta episodes
    budget = sum(one[0][k] for k in ("selection_flops", "train_flops")) + 1.5 * sum(
        one[1][k] for k in ("selection_flops", "train_flops")
    )
    assert two["selection_flops"] > 0
    results = compare(spec, ["mixture", "meta"], [1], [], tmp_path / "out", budget=budget)
    assert list(results["schedulers"]) == ["meta", "mixture"]  # mixture waits for meta's file
    meta, replay = (results["schedulers"][s]["runs"][0] for s in ("meta", "mixture"))
    assert replay["mixture"] == str((tmp_path / "out" / "meta" / "seed-1" / "mixture.json").resolve())
    # no selection to pay for: more episodes in the same budget, with meta's shares of them
    assert replay["total_flops"] >= budget and replay["selection_flops"] == 0
    assert replay["episodes"] > meta["episodes"] == 3
    for task, count in replay["counts"].items():
        assert abs(count - meta["counts"][task] / meta["episodes"] * replay["episodes"]) < 1.5
    with pytest.raises(MetaptError, match="add meta to --schedulers"):
        compare(spec, ["mixture", "uniform"], [1], [], tmp_path / "none", episodes=2)


def test_compare_without_a_meta_run_to_replay_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    args = ["compare", str(COMPARE_RUN), "--schedulers", "mixture,uniform", "--output-dir", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "--schedulers mixture replays the shares of that seed's meta run: add meta" in result.stderr
