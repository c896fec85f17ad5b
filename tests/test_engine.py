"""The episode loop (metapt/engine.py) end to end on tiny runs: metrics.jsonl lines, the meta step's
argmax, baseline schedulers, reproducibility and resume (bitwise), NaN and Ctrl-C stops, and
gradient accumulation. Specs live in tests/fixtures/runs (1-layer, 32-wide BERT, 48-example tasks)."""

from __future__ import annotations

import dataclasses
import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Crash, crash_after, stop_after
from safetensors.torch import load_file
from torch.optim.lr_scheduler import LambdaLR

from metapt import checkpoint, engine, episodelog, runsetup, runsteps, schedulers, train
from metapt.errors import TrainingError
from metapt.model import MultiTaskModel
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.runstate import Run
from metapt.spec import RunSpec
from metapt.train import accumulate, split_batch

RUNS = Path(__file__).parent / "fixtures" / "runs"
FIELDS = {
    "episode",
    "chosen",
    "explored",
    "utility_se",
    "lead_z",
    "policy_scores",
    "utility_floor",
    "utilities",
    "train_loss",
    "target_loss",
    "selection_seconds",
    "train_seconds",
    "selection_flops",
    "train_flops",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(
    out: Path, name: str = "agnostic.toml", episodes: int | None = None, seed: int | None = None, **meta: Any
) -> RunSpec:
    """A tiny run spec from tests/fixtures/runs writing to `out`, with [meta] changes."""
    spec = override(parse_run(RUNS / name), output_dir=out, episodes=episodes, seed=seed)
    return dataclasses.replace(spec, meta=dataclasses.replace(spec.meta, **meta)) if meta else spec


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def chosen(out: Path) -> list[str]:
    return [r["chosen"] for r in lines(out)]


def assert_same_weights(a: Path, b: Path) -> None:
    """Bitwise-equal encoder and heads in two output directories."""
    for name in ("model.safetensors", "heads.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{name}: {key}"


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    """4 episodes of the tiny agnostic run (exact utilities, epsilon 0, a checkpoint every 2)."""
    out = tmp_path_factory.mktemp("engine") / "meta"
    events: list = []
    summary = engine.pretrain(tiny(out), callback=lambda e, d: events.append((e, d)))
    return out, summary, events


# ------------------------------------------------------------------------------ metrics.jsonl
def test_one_metrics_line_per_episode_with_the_documented_fields(meta_run: tuple) -> None:
    out, summary, events = meta_run
    records = lines(out)
    assert [r["episode"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert FIELDS <= r.keys()
        assert (
            set(r["utilities"]) == set(r["utility_se"]) == set(r["policy_scores"]) == {"mlm", "mlm_shuffled"}
        )
        assert r["policy_scores"] == r["utilities"]  # greedy ranks by this selection's utilities
        assert r["utility_se"] == {"mlm": None, "mlm_shuffled": None} and r["lead_z"] is None  # M = 1
        assert 0 < r["utility_floor"] < 1e-4  # exact: fp32 scoring
        assert r["selection_flops"] > 0 and r["train_flops"] > 0
        assert r["selection_seconds"] > 0 and r["train_seconds"] > 0
        assert r["train_loss"] > 0 and r["target_loss"] > 0
        # Untrained MLM over a 300-word vocabulary: a loss near ln(300) = 5.7.
        assert 4.5 < r["target_loss"] < 7.0
    assert summary["complete"] is True and summary["episodes"] == 4
    assert summary["noise"].startswith("4 of 4 selections had no standard error")
    assert summary["counts"] == dict(Counter(chosen(out)))
    assert summary["totals"]["train_flops"] == sum(r["train_flops"] for r in records)
    assert [e for e, _ in events].count("episode") == 4
    assert [d["episode"] for e, d in events if e == "checkpoint"] == [2, 4]
    assert checkpoint.resolve(out).name == "checkpoint-000004"


def test_meta_without_exploration_chooses_the_argmax(meta_run: tuple) -> None:
    out, _, _ = meta_run
    for r in lines(out):
        names = list(r["utilities"])
        best = max(names, key=lambda n: (r["utilities"][n], -names.index(n)))
        assert r["chosen"] == best and r["explored"] is False


def test_flops_are_counted_on_the_batches_the_episode_used(meta_run: tuple, tmp_path: Path) -> None:
    # Episode 1 replayed on a fresh setup of the same spec (same seeds, so the same batches):
    # training = 3 x forward per batch; exact selection (M = 1) = the target forwards at theta, one
    # training step per support batch, and the target forwards again at each stepped theta.
    first = lines(meta_run[0])[0]
    run = runsetup.setup(tiny(tmp_path / "replay"), resume=False)
    fc, task = run.flops, first["chosen"]
    targets = [(t, run.streams["target"][t].next()) for t in run.targets]
    support = [(s, run.streams["support"][s].next()) for s in run.sources]
    forward = sum(fc.forward(t, b) for t, b in targets)
    # ... plus, charged to the first selection, fitting the heads on the frozen encoder before it
    fit = [d for e, d in meta_run[2] if e == "heads"]
    assert len(fit) == 1 and fit[0]["source_steps"] > 0 and fit[0]["flops"] > 0
    selecting = forward + sum(fc.train(s, b) for s, b in support) + 2 * forward
    assert first["selection_flops"] == fit[0]["flops"] + selecting
    train = [run.streams["train"][task].next() for _ in range(2)]
    assert first["train_flops"] == sum(fc.train(task, b) for b in train) > 0
    assert first["tokens"] == sum(int(b["attention_mask"].sum()) for b in train)


def test_an_aware_run_trains_its_target_head_beside_the_sources(tmp_path: Path) -> None:
    out = tmp_path / "aware"
    initial = runsetup.setup(tiny(out, "aware.toml"), resume=False).model.heads["squad-synthetic"]
    events: list = []
    engine.pretrain(tiny(out, "aware.toml", episodes=2), callback=lambda e, d: events.append((e, d)))
    fitted = [d for e, d in events if e == "heads"]
    assert len(fitted) == 1 and 1 <= fitted[0]["steps"] <= 200  # before the first selection
    assert fitted[0]["loss"] > 0 and fitted[0]["source_steps"] >= 1
    records = lines(out)
    assert all(set(r["utilities"]) == {"span_selection", "mlm_shuffled"} for r in records)
    assert all(r["chosen"] in ("span_selection", "mlm_shuffled") for r in records)
    folder = checkpoint.resolve(out)
    _, heads, info, state = checkpoint.load_state(folder)
    assert {n: i["role"] for n, i in info.items()} == {
        "span_selection": "source",
        "mlm_shuffled": "source",
        "squad-synthetic": "target",
    }
    assert state["head_optimizer"]["state"]  # Adam moments of the target head
    # The fitting steps and one AdamW step (head_lr 1e-3) per episode moved every weight of the target
    # head, each step by at most about 1e-3: it started from the seeded initialisation of a fresh setup.
    steps = fitted[0]["steps"] + 2
    for name, value in initial.state_dict().items():
        moved = (heads[f"squad-synthetic.{name}"] - value).abs()
        assert 0 < float(moved.min()) and float(moved.max()) < 1.5e-3 * steps, name
    first = records[0]
    assert first["selection_flops"] > fitted[0]["flops"] > 0  # fitting is charged to selection


# ------------------------------------------------------------------------------ baselines
def test_round_robin_cycles_the_sources() -> None:
    g = torch.Generator().manual_seed(0)
    assert [schedulers.round_robin(e, 7, [5, 5, 5], g, 2.0) for e in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_single_always_trains_the_first_source() -> None:
    g = torch.Generator().manual_seed(0)
    assert {schedulers.single(e, 10, [1, 100], g, 2.0) for e in range(10)} == {0}


def test_sequential_stages_add_one_task_at_a_time() -> None:
    g = torch.Generator().manual_seed(0)
    seen = {e: {schedulers.sequential(e, 9, [10, 10, 10], g, 2.0) for _ in range(200)} for e in range(9)}
    assert all(seen[e] == {0} for e in range(0, 3))
    assert all(seen[e] == {0, 1} for e in range(3, 6))
    assert all(seen[e] == {0, 1, 2} for e in range(6, 9))


def frequencies(fn: Any, sizes: list[int], draws: int, temperature: float = 2.0) -> list[float]:
    g = torch.Generator().manual_seed(0)
    counts = Counter(fn(0, 10, sizes, g, temperature) for _ in range(draws))
    return [counts[i] / draws for i in range(len(sizes))]


def test_proportional_draws_by_size() -> None:
    got = frequencies(schedulers.proportional, [10, 30, 60], 20000)
    assert got == pytest.approx([0.1, 0.3, 0.6], abs=0.02)


def test_temperature_one_is_proportional_and_a_high_one_is_uniform() -> None:
    sizes = [10, 30, 60]
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    same = [schedulers.temperature_sampling(0, 1, sizes, g1, 1.0) for _ in range(500)]
    assert same == [schedulers.proportional(0, 1, sizes, g2, 1.0) for _ in range(500)]
    hot = frequencies(schedulers.temperature_sampling, sizes, 10000, temperature=1000.0)
    assert hot == pytest.approx([1 / 3] * 3, abs=0.02)
    warm = frequencies(schedulers.temperature_sampling, sizes, 10000, temperature=2.0)
    total = sum(s**0.5 for s in sizes)
    assert warm == pytest.approx([s**0.5 / total for s in sizes], abs=0.02)  # between the two


def test_uniform_draws_every_task_equally() -> None:
    assert frequencies(schedulers.uniform, [1, 1000, 50, 7], 10000) == pytest.approx([0.25] * 4, abs=0.02)


@pytest.mark.parametrize(
    ("scheduler", "single_task", "expected"),
    [
        ("round_robin", "", ["mlm", "mlm_shuffled", "mlm"]),
        ("single", "mlm_shuffled", ["mlm_shuffled"] * 3),
    ],
)
def test_a_baseline_run_trains_its_schedule_without_selection(
    tmp_path: Path, scheduler: str, single_task: str, expected: list[str]
) -> None:
    out = tmp_path / "out"
    summary = engine.pretrain(tiny(out, episodes=3, scheduler=scheduler, single_task=single_task))
    records = lines(out)
    assert [r["chosen"] for r in records] == expected
    for r in records:
        assert r["selection_flops"] == 0 and r["train_flops"] > 0
        assert r["utilities"] == {} and r["explored"] is False and r["target_loss"] is None
    assert summary["totals"]["selection_flops"] == 0


# ------------------------------------------------------------------------- reproducibility
def test_the_same_seed_gives_the_same_run_bitwise(meta_run: tuple, tmp_path: Path) -> None:
    first, _, _ = meta_run
    again = tmp_path / "again"
    engine.pretrain(tiny(again))
    assert chosen(again) == chosen(first)
    assert [r["utilities"] for r in lines(again)] == [r["utilities"] for r in lines(first)]
    assert_same_weights(first, again)
    other = tmp_path / "seed1"
    engine.pretrain(tiny(other, episodes=1, seed=1))
    a, b = load_file(first / "model.safetensors"), load_file(other / "model.safetensors")
    assert not torch.equal(a["embeddings.word_embeddings.weight"], b["embeddings.word_embeddings.weight"])


def test_resume_after_a_crash_matches_the_uninterrupted_run(meta_run: tuple, tmp_path: Path) -> None:
    # The run is cut after the episode-2 checkpoint of the same 4-episode spec. (Running --episodes 2
    # and then resuming with 4 cannot match bitwise: the LR schedule decays to zero over the episodes
    # the first run was given.)
    first, _, _ = meta_run
    out = tmp_path / "out"

    die = crash_after(2)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(Crash):
        engine.pretrain(tiny(out), callback=die)
    assert signal.getsignal(signal.SIGINT) is handler
    assert checkpoint.resolve(out).name == "checkpoint-000002"
    summary = engine.pretrain(tiny(out), resume=True)
    assert summary["complete"] and summary["episodes"] == 4
    assert [r["episode"] for r in lines(out)] == [1, 2, 3, 4]
    assert chosen(out) == chosen(first)
    assert_same_weights(first, out)


def test_extending_a_finished_run_differs_only_by_its_lr_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--episodes 2` then `--resume --episodes 4` cannot equal one 4-episode run: warmup_linear spreads
    # its decay over the episodes each run was given. With a constant LR both ways, everything else
    # (weights, optimizer moments, RNG, batch streams, exploration) carries over bitwise.
    # epsilon 0.5, so that the exploration generator's state matters too.
    monkeypatch.setattr(train, "warmup_linear", lambda opt, steps, ratio: LambdaLR(opt, lambda _: 1.0))
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    engine.pretrain(tiny(whole, episodes=4, epsilon=0.5))
    engine.pretrain(tiny(parts, episodes=2, epsilon=0.5))
    assert checkpoint.resolve(parts).name == "checkpoint-000002"
    engine.pretrain(tiny(parts, episodes=4, epsilon=0.5), resume=True)
    assert [(r["chosen"], r["explored"]) for r in lines(parts)] == [
        (r["chosen"], r["explored"]) for r in lines(whole)
    ]
    assert any(r["explored"] for r in lines(whole)[2:])  # the resumed half explored at least once
    assert_same_weights(whole, parts)


def _budget_for(meta_run: tuple, episodes: float) -> float:
    """FLOPs for about `episodes` episodes of the tiny meta run (its first one also fits the heads)."""
    records = lines(meta_run[0])
    mean = sum(r["selection_flops"] + r["train_flops"] for r in records[1:]) / (len(records) - 1)
    return records[0]["selection_flops"] + records[0]["train_flops"] + (episodes - 1) * mean


def test_under_a_budget_the_lr_follows_the_flops_not_the_episode_cap(meta_run: tuple, tmp_path: Path) -> None:
    budget = _budget_for(meta_run, 5.5)
    runs = {}
    for cap in (10, 30):
        summary = engine.pretrain(tiny(tmp_path / str(cap), episodes=cap), max_flops=budget)
        runs[cap] = lines(tmp_path / str(cap))
        # the budget stopped the run, not the cap: after the episode that reached it
        spent = [sum(r["selection_flops"] + r["train_flops"] for r in runs[cap][:e]) for e in (-1, None)]
        assert summary["episodes"] < cap and spent[0] < budget <= spent[1]
    assert chosen(tmp_path / "10") == chosen(tmp_path / "30")  # the cap changes the LR only
    n, base, warmup_ratio = 2, 1e-3, 0.06  # train_batches, [meta].lr, [meta].warmup_ratio (default)
    for cap, records in runs.items():
        steps = cap * n
        warmup = int(steps * warmup_ratio)
        before = 0.0
        for r in records:
            # put at the share of the budget spent when its training starts, then N steps on
            at = min(steps, round(steps * (before + r["selection_flops"]) / budget)) + n
            factor = (at + 1) / (warmup + 1) if at < warmup else max(0.0, (steps - at) / (steps - warmup))
            assert r["lr"] == pytest.approx(base * factor, rel=1e-9)
            before += r["selection_flops"] + r["train_flops"]
        # decayed to near 0 at the budget; by the step count a 30-episode cap would still be above 0.8
        assert records[-1]["lr"] < 0.25 * base
    # the two caps agree to within one episode's share of the shorter schedule's decay
    steps, warmup = 10 * n, int(10 * n * warmup_ratio)
    for a, b in zip(runs[10], runs[30]):
        assert abs(a["lr"] - b["lr"]) <= base * n / (steps - warmup)


def test_a_budget_run_resumes_bitwise(meta_run: tuple, tmp_path: Path) -> None:
    budget = _budget_for(meta_run, 4.5)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert engine.pretrain(tiny(whole, episodes=12), max_flops=budget)["episodes"] == 5
    assert (
        engine.pretrain(tiny(parts, episodes=12), callback=stop_after(2), max_flops=budget)["episodes"] == 2
    )
    engine.pretrain(tiny(parts, episodes=12), resume=True, max_flops=budget)
    assert [(r["chosen"], r["lr"]) for r in lines(parts)] == [(r["chosen"], r["lr"]) for r in lines(whole)]
    assert_same_weights(whole, parts)


def test_refit_heads_every_fits_the_source_heads_again_before_those_selections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fits: list[tuple[int, list[str], int]] = []  # (episodes done, tasks fitted, FLOPs)
    done: list[int] = []
    real = engine.fitting.fit_heads

    def spy(model: MultiTaskModel, streams: dict, fitted: list[str], *args: Any) -> tuple[int, int, float]:
        out = real(model, streams, fitted, *args)
        fits.append((len(done), list(fitted), out[1]))
        return out

    monkeypatch.setattr(engine.fitting, "fit_heads", spy)
    count = lambda event, data: done.append(1) if event == "episode" else None  # noqa: E731
    plain, refit = tmp_path / "plain", tmp_path / "refit"
    engine.pretrain(tiny(plain, episodes=6, select_every=2), callback=count)
    assert [(e, f) for e, f, _ in fits if f] == [(0, ["mlm", "mlm_shuffled"])]  # once, before the first
    fits.clear()
    done.clear()
    engine.pretrain(tiny(refit, episodes=6, select_every=2, refit_heads_every=1), callback=count)
    # selections before episodes 1, 3 and 5: the sources' heads again before the 2nd and the 3rd
    assert [(e, f) for e, f, _ in fits if f] == [
        (0, ["mlm", "mlm_shuffled"]),
        (2, ["mlm", "mlm_shuffled"]),
        (4, ["mlm", "mlm_shuffled"]),
    ]
    extra = {e: flops for e, f, flops in fits if f and e}
    # charged to that episode's selection: the same batches were scored, plus the fitting
    for e, (a, b) in enumerate(zip(lines(plain), lines(refit))):
        assert b["selection_flops"] - a["selection_flops"] == extra.get(e, 0)
    heads = load_file(plain / "heads.safetensors"), load_file(refit / "heads.safetensors")
    assert not all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


def test_a_run_that_refits_heads_resumes_bitwise(tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    spec = lambda out: tiny(out, episodes=5, refit_heads_every=2)  # noqa: E731
    engine.pretrain(spec(whole))
    engine.pretrain(spec(parts), callback=stop_after(3))
    engine.pretrain(spec(parts), resume=True)
    assert [(r["chosen"], r["selection_flops"]) for r in lines(parts)] == [
        (r["chosen"], r["selection_flops"]) for r in lines(whole)
    ]
    assert_same_weights(whole, parts)


def test_ctrl_c_finishes_the_episode_saves_and_resumes(meta_run: tuple, tmp_path: Path) -> None:
    first, _, _ = meta_run
    out = tmp_path / "out"
    handler = signal.getsignal(signal.SIGINT)

    def interrupt(event: str, data: dict) -> None:
        if event == "episode" and data["episode"] == 1:
            signal.raise_signal(signal.SIGINT)  # the engine's handler only sets its stop flag

    summary = engine.pretrain(tiny(out), callback=interrupt)
    assert summary["complete"] is False and summary["episodes"] == 1
    assert summary["message"].startswith("stopped after 1/4 episodes")
    assert signal.getsignal(signal.SIGINT) is handler  # the previous handler is back
    folder = checkpoint.resolve(out)
    assert folder.name == "checkpoint-000001"
    assert json.loads((folder / "metapt.json").read_text())["episode"] == 1
    assert len(lines(out)) == 1
    summary = engine.pretrain(tiny(out), resume=True)
    assert summary["complete"] is True and summary["episodes"] == 4
    assert summary["noise"].startswith("4 of 4 selections had no standard error")
    assert chosen(out) == chosen(first)
    assert_same_weights(first, out)


# --------------------------------------------------------------- target heads and the policy
# (Planted relevance and planted junk, with fitted heads from a warm start: tests/test_planted.py.)
def test_a_masked_lm_target_leaves_no_gradient_for_training(tmp_path: Path) -> None:
    # The MLM head is tied to the word embeddings; its head-only target update must not leave a
    # gradient there that the training step would take for a reused support gradient (exact mode
    # reuses nothing: N fresh batches are drawn and nothing of the target reaches the encoder).
    run = runsetup.setup(tiny(tmp_path / "out", "planted.toml"), resume=False)
    assert run.spec.meta.utility == "exact" and run.head_optimizer is not None
    before = {n: p.detach().clone() for n, p in run.model.encoder.named_parameters()}
    picked = runsteps.select_run(run)
    assert picked.gradient is None
    assert all(p.grad is None for p in run.model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in run.model.encoder.named_parameters())
    stream = run.streams["train"][picked.chosen]
    count = stream.state_dict()["count"]
    runsteps.train_chosen(run, picked.chosen, picked.gradient)
    assert stream.state_dict()["count"] == count + run.spec.meta.train_batches


def test_a_bandit_run_logs_its_estimates_and_resumes_bitwise(tmp_path: Path) -> None:
    spec = tiny(tmp_path / "full", "planted.toml", 6, policy="bandit", support_batches=2, epsilon=0.1)
    summary = engine.pretrain(spec)
    records = lines(tmp_path / "full")
    assert all(r["policy_scores"].keys() == r["utilities"].keys() for r in records)
    assert records[0]["lead_z"] is None  # one selection: no spread yet
    assert all(r["policy_scores"] != r["utilities"] for r in records)  # the bandit's discounted means
    assert all(
        set(r["utility_se"]) == {"mlm", "mlm_shuffled"} and None not in r["utility_se"].values()
        for r in records
    )
    assert isinstance(summary["noise"], (str, type(None)))
    # the process dies after the episode-3 checkpoint; the resumed run makes the same choices from
    # the same bandit state, and ends with the same weights
    half = dataclasses.replace(
        spec, run=dataclasses.replace(spec.run, output_dir=str(tmp_path / "half"), checkpoint_every=3)
    )

    die = crash_after(3)
    with pytest.raises(Crash):
        engine.pretrain(half, callback=die)
    engine.pretrain(half, resume=True)
    assert [r["chosen"] for r in lines(tmp_path / "half")] == [r["chosen"] for r in records]
    assert [r["policy_scores"] for r in lines(tmp_path / "half")] == [r["policy_scores"] for r in records]
    # `metapt report` draws the utilities with their standard-error bands and the bandit's means
    from metapt import report

    png = report.report(tmp_path / "full", tmp_path / "report.png")
    assert png.stat().st_size > 20_000
    assert_same_weights(tmp_path / "full", tmp_path / "half")


def test_most_choices_within_noise_say_so() -> None:
    totals = {"selections": 10, "selections_within_noise": 6}
    assert episodelog.noise_verdict(totals, "greedy").startswith(
        "6 of 10 selections chose within 2 standard errors"
    )
    assert episodelog.noise_verdict({"selections": 10, "selections_within_noise": 5}, "greedy") is None
    assert "no standard error" in episodelog.noise_verdict(
        {"selections": 4, "selections_without_se": 3}, "greedy"
    )
    assert episodelog.noise_verdict({}, "bandit") is None
    # a one-episode bandit run: its only selection has no running error bar yet, and the advice is not
    # to use the bandit it already uses
    one = episodelog.noise_verdict({"selections": 1, "selections_without_se": 1}, "bandit")
    assert one.startswith("1 of 1 selections had no standard error") and 'policy = "bandit"' not in one
    assert one.endswith("the bandit's running estimates have them from its second selection on")


# ------------------------------------------------------------------------------- NaN stops
@pytest.mark.parametrize(
    ("scheduler", "what"),
    [("meta", "a task utility is nan"), ("round_robin", "the training loss of 'mlm' is nan")],
)
def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(
    meta_run: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheduler: str, what: str
) -> None:
    from transformers import AutoModel

    out = tmp_path / "out"
    forward, handler = MultiTaskModel.forward, signal.getsignal(signal.SIGINT)

    def nan_forward(self: MultiTaskModel, task: str, batch: dict, detach_encoder: bool = False) -> Any:
        loss, logits = forward(self, task, batch, detach_encoder)
        return loss * float("nan"), logits

    def poison(event: str, data: dict) -> None:  # from episode 3 on, every loss is NaN
        if event == "checkpoint" and data["episode"] == 2:
            monkeypatch.setattr(MultiTaskModel, "forward", nan_forward)

    with pytest.raises(TrainingError) as caught:
        engine.pretrain(tiny(out, scheduler=scheduler), callback=poison)
    message = str(caught.value)
    assert message.startswith(f"episode 3: {what};") and str(out) in message
    saved = load_file(out / "current" / "model.safetensors")
    assert checkpoint.resolve(out).name == "checkpoint-000002"
    encoder = AutoModel.from_pretrained(out)
    for name, value in encoder.state_dict().items():
        if name in saved:
            assert torch.equal(value, saved[name]), name
    assert [r["episode"] for r in lines(out)] == [1, 2]  # episode 3 failed before its line
    assert signal.getsignal(signal.SIGINT) is handler  # the engine's Ctrl-C handler is gone again
    monkeypatch.undo()
    summary = engine.pretrain(tiny(out, scheduler=scheduler), resume=True)
    assert summary["complete"] and [r["episode"] for r in lines(out)] == [1, 2, 3, 4]
    if scheduler == "meta":  # the failed episode left no trace: the resumed run is the clean one
        assert_same_weights(meta_run[0], out)


# ------------------------------------------------------------------------ gradient accumulation
@pytest.fixture(scope="module")
def two_kinds(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = runsetup.setup(tiny(tmp_path_factory.mktemp("accumulate") / "out", "accumulate.toml"), resume=False)
    run.model.eval()  # dropout off, so every split computes the same function
    return run


@pytest.mark.parametrize(("task", "group"), [("mlm", "train"), ("pairs-synthetic", "target")])
def test_accumulation_gives_the_full_batch_gradient(two_kinds: Run, task: str, group: str) -> None:
    model = two_kinds.model
    batch = two_kinds.streams[group][task].next()
    assert batch["input_ids"].shape[0] == 4
    results = []
    for parts in (1, 2, 3):
        model.zero_grad(set_to_none=True)
        loss = accumulate(lambda b: model(task, b)[0], batch, parts)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((float(loss), grads))
    model.zero_grad(set_to_none=True)
    (loss1, grads1) = results[0]
    assert (
        any(n.startswith(f"heads.{task}.") for n in grads1)
        and "encoder.embeddings.word_embeddings.weight" in grads1
    )
    for loss, grads in results[1:]:
        assert loss == pytest.approx(loss1, rel=1e-6)
        assert grads.keys() == grads1.keys()
        for n, g in grads.items():
            torch.testing.assert_close(g, grads1[n], atol=1e-6, rtol=1e-5, msg=n)


def test_split_batch_keeps_candidates_with_their_example() -> None:
    b, c, t = 3, 2, 5
    ids = torch.tensor([[10 * i + k] * t for i in range(b) for k in range(c)])  # (B*C, T): row = 10*ex + cand
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones(b * c, t, dtype=torch.long),
        "labels": torch.tensor([1, 0, 1]),  # (B,)
        "choice_mask": torch.tensor([[True, True], [True, False], [True, True]]),  # (B, C)
    }
    for parts, sizes in ((2, [2, 1]), (3, [1, 1, 1])):
        micro = split_batch(batch, parts)
        assert [len(m["labels"]) for m in micro] == sizes
        start = 0
        for m, size in zip(micro, sizes):
            examples = range(start, start + size)
            assert m["input_ids"][:, 0].tolist() == [10 * i + k for i in examples for k in range(c)]
            assert m["input_ids"].shape == (size * c, t) and m["attention_mask"].shape == (size * c, t)
            assert torch.equal(m["labels"], batch["labels"][start : start + size])
            assert torch.equal(m["choice_mask"], batch["choice_mask"][start : start + size])
            start += size


def test_the_wordpiece_reads_each_source_kinds_own_text_fields() -> None:
    """The fields come from the kind's entry ([catalog] KindInfo.text): sentence kinds read `text`, else
    `sentences` (records with sentences only were skipped before); dialogues their turns; titles too."""
    import datasets

    from metapt.data.pipeline import TaskData
    from metapt.spec import TaskSpec

    def task(kind: str, rows: list[dict]) -> TaskData:
        return TaskData(TaskSpec(kind=kind, name=kind), {}, {}, {"train": datasets.Dataset.from_list(rows)})

    texts = runsetup._corpus_texts(
        [
            task("sentence_reordering", [{"sentences": ["One here.", "Two there."]}]),
            task("span_selection", [{"text": "A b. C d.", "sentences": ["A b.", "C d."], "title": "Ab"}]),
            task("response_selection", [{"turns": ["hi", "hello"]}]),
        ]
    )
    assert texts == ["One here.", "Two there.", "A b. C d.", "Ab", "hi", "hello"]
