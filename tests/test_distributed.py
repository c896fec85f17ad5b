"""Several processes (metapt/distributed.py): a 2-process gloo run on CPU chooses and trains as one
process does, resumes, writes only from rank 0, and stops with a clear error when a rank fails.

Ranks are spawned processes on 127.0.0.1 and a free port with the environment torchrun sets (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); each writes what it saw to a JSON file. Dropout is
off in the tiny spec: dropout masks are drawn per process, so only without it can the runs be equal.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import MLM_TASK, write
from safetensors.torch import load_file

from metapt import checkpoint, distributed, engine
from metapt.finetune import finetune_one, task_spec
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.train import split_batch

RUN = """\
[run]
seed = 1
episodes = 3
device = "cpu"
checkpoint_every = 1
[model]
hidden_size = 32
num_layers = 1
num_heads = 2
intermediate_size = 64
max_length = 64
dropout = 0.0
[tokenizer]
vocab_size = 300
[meta]
sources = ["tasks/docs.toml", "tasks/shuffled.toml"]
scheduler = "meta"
utility = "exact"
inner_lr = 1e-2
lr = 1e-3
support_batches = 1
train_batches = 2
epsilon = 0.3
"""
PAIRS = """\
kind = "classification"
[data]
format = "synthetic"
corpus = "pairs"
size = 24
eval_size = 8
[data.columns]
text = "sentence1"
text_pair = "sentence2"
[head]
dropout = 0.0
[batch]
size = 4
max_length = 32
[finetune]
epochs = 1
lr = 1e-3
"""


class Crash(Exception):
    """Stands for both processes dying right after a checkpoint."""


def _worker(rank: int, world: int, port: int, jobs: list[dict], where: str, env: dict[str, str]) -> None:
    """One rank: run the jobs in order and write what each saw to WHERE/NAME-rankR.json."""
    os.environ.update(
        env,
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    saves: list[int] = []
    save = checkpoint.save
    checkpoint.save = lambda out, episode, *a: saves.append(episode) or save(out, episode, *a)
    for job in jobs:
        seen: list[dict] = []
        result = _run(job, _recorder(job, rank, seen))
        record = {"episodes": seen, "saves": saves[:], **result}
        Path(where, f"{job['name']}-rank{rank}.json").write_text(json.dumps(record))
        saves.clear()
        if "error" in result:
            raise SystemExit(1)


def _recorder(job: dict, rank: int, seen: list[dict]) -> Callable[[str, dict], None]:
    """The engine callback of one job: records every episode; fails, stalls or crashes where asked."""

    def callback(event: str, data: dict) -> None:
        if event == "episode":
            seen.append({k: data[k] for k in ("chosen", "explored", "utilities", "train_loss", "lr")})
            if job.get("fail") == (rank, data["episode"]):
                raise RuntimeError(f"rank {rank} failed on purpose")
            if job.get("stall") == (rank, data["episode"]):
                time.sleep(300)
        if event == "checkpoint" and data["episode"] == job.get("crash"):
            raise Crash

    return callback


def _run(job: dict, callback: Callable[[str, dict], None]) -> dict[str, Any]:
    """Run one finetuning or pretraining job: {} when it finished, else how it ended."""
    try:
        if job["kind"] == "finetune":
            spec = task_spec(job["task"], None, {})
            finetune_one(job["checkpoint"], spec, 0, Path(job["out"]), "cpu")
        else:
            spec = override(parse_run(job["spec"]), output_dir=Path(job["out"]))
            engine.pretrain(
                spec, resume=job.get("resume", False), callback=callback, max_flops=job.get("max_flops")
            )
    except Crash:
        return {"crashed": True}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(
    jobs: list[dict],
    where: Path,
    env: dict[str, str] | None = None,
    limit: float = 240,
    teardown: bool = True,
) -> list[int]:
    """Start 2 ranks running `jobs`; returns their exit codes. With `teardown`, as torchrun does, the
    first rank to fail ends the other (SIGKILL here: exit code -9); `limit` ends both."""
    ctx, port = mp.get_context("spawn"), free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, jobs, str(where), env or {})) for r in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + limit
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        if teardown and any(p.exitcode not in (None, 0) for p in procs):
            break
        time.sleep(0.2)
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    return [p.exitcode for p in procs]


def seen(where: Path, name: str, rank: int) -> dict:
    return json.loads((where / f"{name}-rank{rank}.json").read_text())


def chosen(out: Path) -> list[tuple[str, bool]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [(r["chosen"], r["explored"]) for r in map(json.loads, lines)]


def max_diff(a: Path, b: Path) -> float:
    """The largest difference between two folders' weights (encoder and heads)."""
    worst = 0.0
    for name in ("model.safetensors", "heads.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys()
        worst = max([worst, *((wa[k] - wb[k]).abs().max().item() for k in wa)])
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One process, then 2 ranks: the same 3 episodes; a run cut after its episode-2 checkpoint and
    resumed; finetuning of the one-process checkpoint (also in one process)."""
    tmp = tmp_path_factory.mktemp("distributed")
    spec = write(tmp, "run.toml", RUN)
    bandit = write(
        tmp, "bandit.toml", RUN.replace("support_batches = 1", 'support_batches = 2\npolicy = "bandit"')
    )
    # the shipped default's cheap selection (tasks/agnostic.toml): the shared agnostic estimate on
    # small probes, the chosen task's last training gradients reused, sketches, the bandit
    cheap = RUN.replace('utility = "exact"', 'utility = "first_order"').replace(
        "support_batches = 1",
        'support_batches = 2\nsupport_batch_size = 2\nreuse_training = true\nsketch = 1024\npolicy = "bandit"',
    )
    agnostic = write(tmp, "agnostic.toml", cheap.replace("episodes = 3", "episodes = 4"))
    for name, corpus in (("docs", "documents"), ("shuffled", "shuffled")):
        write(tmp, f"tasks/{name}.toml", MLM_TASK.format(corpus=corpus))
    pairs = write(tmp, "pairs.toml", PAIRS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine.pretrain(override(parse_run(spec), output_dir=tmp / "one"))
        engine.pretrain(override(parse_run(bandit), output_dir=tmp / "one-bandit"))
        engine.pretrain(override(parse_run(agnostic), output_dir=tmp / "one-agnostic"))
        # a budget that the third episode reaches (the ranks must agree on where the LR is, and stop)
        flops = [
            r["selection_flops"] + r["train_flops"]
            for r in map(json.loads, (tmp / "one-agnostic" / "metrics.jsonl").open())
        ]
        budget = flops[0] + flops[1] + flops[2] / 2
        engine.pretrain(override(parse_run(agnostic), output_dir=tmp / "one-budget"), max_flops=budget)
        finetune_one(str(tmp / "one"), task_spec(str(pairs), None, {}), 0, tmp / "ft-one", "cpu")
    finally:
        torch.set_num_threads(threads)
    jobs = [
        {"name": "two", "spec": str(spec), "out": str(tmp / "two"), "kind": "pretrain"},
        {"name": "bandit", "spec": str(bandit), "out": str(tmp / "two-bandit"), "kind": "pretrain"},
        {"name": "agnostic", "spec": str(agnostic), "out": str(tmp / "two-agnostic"), "kind": "pretrain"},
        {
            "name": "budget",
            "spec": str(agnostic),
            "out": str(tmp / "two-budget"),
            "kind": "pretrain",
            "max_flops": budget,
        },
        {"name": "cut", "spec": str(spec), "out": str(tmp / "cut"), "kind": "pretrain", "crash": 2},
        {"name": "resumed", "spec": str(spec), "out": str(tmp / "cut"), "kind": "pretrain", "resume": True},
        {
            "name": "ft",
            "kind": "finetune",
            "task": str(pairs),
            "checkpoint": str(tmp / "one"),
            "out": str(tmp / "ft-two"),
        },
    ]
    codes = spawn(jobs, tmp)
    assert codes == [0, 0], [f.read_text()[-400:] for f in tmp.glob("*-rank*.json")]
    return {"tmp": tmp, "spec": spec, "pairs": pairs}


def test_two_ranks_choose_and_train_as_one_process(runs: dict[str, Path]) -> None:
    tmp = runs["tmp"]
    one = chosen(tmp / "one")
    assert len(one) == 3 and any(explored for _, explored in one)  # epsilon 0.3 explored at least once
    ranks = [seen(tmp, "two", r)["episodes"] for r in (0, 1)]
    assert [(e["chosen"], e["explored"]) for e in ranks[0]] == one
    assert ranks[0] == ranks[1]  # the same choices, utilities and (global) losses on both ranks
    assert chosen(tmp / "two") == one
    # The same examples and masks, gradients averaged over the two shares: the weights differ only by
    # the order of float additions.
    assert max_diff(tmp / "one", tmp / "two") < 1e-4
    one_losses = [json.loads(line)["train_loss"] for line in (tmp / "one" / "metrics.jsonl").open()]
    assert [e["train_loss"] for e in ranks[0]] == pytest.approx(one_losses, rel=1e-5)


def test_two_ranks_make_the_bandits_choices_as_one_process(runs: dict[str, Path]) -> None:
    # The bandit's state is fed the ranks' averaged utilities and its draws come from the same
    # exploration generator on every rank: the same choices and running means as one process.
    tmp = runs["tmp"]
    one = [json.loads(line) for line in (tmp / "one-bandit" / "metrics.jsonl").open()]
    two = [json.loads(line) for line in (tmp / "two-bandit" / "metrics.jsonl").open()]
    assert [r["chosen"] for r in two] == [r["chosen"] for r in one] and len(one) == 3
    for a, b in zip(one, two):
        assert b["policy_scores"] == pytest.approx(a["policy_scores"], rel=1e-3)  # float order


def test_two_ranks_make_the_cheap_selections_choices_as_one_process(runs: dict[str, Path]) -> None:
    # reuse_training keeps the training gradients after they are averaged over the ranks, so every
    # rank's reused probes are the one process's; the sketch's signs are a function of the seed and
    # the episode: the same choices and running means as one process.
    tmp = runs["tmp"]
    one = [json.loads(line) for line in (tmp / "one-agnostic" / "metrics.jsonl").open()]
    two = [json.loads(line) for line in (tmp / "two-agnostic" / "metrics.jsonl").open()]
    assert len(one) == 4 and [r["chosen"] for r in two] == [r["chosen"] for r in one]
    # from episode 2 on the chosen task's probes are its kept training gradients: no support batches
    # of it are drawn, so a selection costs less than the first one
    assert all(r["selection_flops"] < one[0]["selection_flops"] for r in one[1:])
    assert [r["explored"] for r in two] == [r["explored"] for r in one]
    for a, b in zip(one, two):
        assert b["utilities"] == pytest.approx(a["utilities"], rel=1e-3, abs=1e-9)  # float order
        assert b["policy_scores"] == pytest.approx(a["policy_scores"], rel=1e-3, abs=1e-9)


def test_two_ranks_under_a_budget_stop_and_set_the_lr_as_one_process(runs: dict[str, Path]) -> None:
    tmp = runs["tmp"]
    one = [json.loads(line) for line in (tmp / "one-budget" / "metrics.jsonl").open()]
    assert len(one) == 3  # the budget stopped the 4-episode run in its third episode
    ranks = [seen(tmp, "budget", r)["episodes"] for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the same choices and learning rates on both ranks
    assert [e["chosen"] for e in ranks[0]] == [r["chosen"] for r in one]
    # the summed FLOPs read as one process's, so the LR is put at the same share of the budget
    assert [e["lr"] for e in ranks[0]] == pytest.approx([r["lr"] for r in one], rel=1e-12)
    assert max_diff(tmp / "one-budget", tmp / "two-budget") < 1e-4


def test_only_rank_0_writes(runs: dict[str, Path]) -> None:
    tmp = runs["tmp"]
    assert seen(tmp, "two", 0)["saves"] == [1, 2, 3]
    assert seen(tmp, "two", 1)["saves"] == []
    assert [json.loads(line)["episode"] for line in (tmp / "two" / "metrics.jsonl").open()] == [1, 2, 3]
    assert checkpoint.resolve(tmp / "two").name == "checkpoint-000003"


def test_two_ranks_resume_from_the_same_checkpoint(runs: dict[str, Path]) -> None:
    tmp = runs["tmp"]
    assert seen(tmp, "cut", 0)["crashed"] and seen(tmp, "cut", 1)["crashed"]
    assert seen(tmp, "resumed", 0)["saves"] == [3]
    assert [e["chosen"] for e in seen(tmp, "resumed", 1)["episodes"]] == [c for c, _ in chosen(tmp / "two")][
        2:
    ]
    assert chosen(tmp / "cut") == chosen(tmp / "two")
    assert max_diff(tmp / "cut", tmp / "two") == 0.0  # the same ranks, the same sums: bitwise


def test_two_ranks_finetune_as_one_process(runs: dict[str, Path]) -> None:
    tmp = runs["tmp"]
    one, two = tmp / "ft-one", tmp / "ft-two"
    assert (two / "results.json").is_file()
    metrics = [json.loads((d / "results.json").read_text())["metrics"] for d in (one, two)]
    for split in ("validation", "test"):
        assert metrics[1][split] == pytest.approx(metrics[0][split])
    for name in ("model.safetensors", "head.safetensors"):
        a, b = load_file(one / "model" / name), load_file(two / "model" / name)
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_a_failing_rank_stops_the_job_with_a_clear_error(runs: dict[str, Path], tmp_path: Path) -> None:
    # Rank 1 fails in episode 2. Rank 0 stops on its own, without a launcher to end it: its next
    # collective finds rank 1 gone (at the latest after the short timeout).
    job = {"name": "fail", "spec": str(runs["spec"]), "out": str(tmp_path / "out"), "kind": "pretrain"}
    start = time.monotonic()
    env = {distributed.TIMEOUT_ENV: "20"}
    codes = spawn([{**job, "fail": (1, 2)}], tmp_path, env, limit=90, teardown=False)
    assert time.monotonic() - start < 60
    # The failing rank records its error before it exits; on its way out gloo may abort it (SIGABRT)
    # when the survivor's socket closes under it (seen once on a loaded machine): its error stands.
    assert codes[1] in (1, -signal.SIGABRT)
    assert seen(tmp_path, "fail", 1)["error"] == "RuntimeError: rank 1 failed on purpose"
    # The survivor either raises our TrainingError or, when gloo's socket to the dead peer closes in
    # the middle of a collective, is aborted by gloo itself (SIGABRT): either way it does not hang.
    assert codes[0] in (1, -signal.SIGABRT)
    if codes[0] == 1:
        error = seen(tmp_path, "fail", 0)["error"]
        assert error.startswith("TrainingError: rank 0 of 2: ") and "--resume" in error
    assert checkpoint.resolve(tmp_path / "out").name == "checkpoint-000001"  # loadable


@pytest.mark.slow
def test_a_stalled_rank_times_out(runs: dict[str, Path], tmp_path: Path) -> None:
    job = {"name": "stall", "spec": str(runs["spec"]), "out": str(tmp_path / "out"), "kind": "pretrain"}
    start = time.monotonic()
    spawn([{**job, "stall": (1, 2)}], tmp_path, {distributed.TIMEOUT_ENV: "5"}, limit=60)
    assert time.monotonic() - start < 50
    error = seen(tmp_path, "stall", 0)["error"]
    assert "METAPT_DIST_TIMEOUT=5 seconds" in error


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m metapt ARGS` on 127.0.0.1."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "metapt", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)


@pytest.mark.slow
def test_torchrun_runs_the_cli_on_two_processes(runs: dict[str, Path], tmp_path: Path) -> None:
    out, tuned = tmp_path / "out", tmp_path / "tuned"
    done = torchrun("pretrain", str(runs["spec"]), "--output-dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("episode 1/3 chose") == 1  # printed by rank 0 only
    assert done.stdout.count("finished 3/3 episodes") == 1
    assert chosen(out) == chosen(runs["tmp"] / "two")
    done = torchrun("finetune", str(out), "--task", str(runs["pairs"]), "--output-dir", str(tuned))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best epoch 1") == 1
    assert json.loads((tuned / "results.json").read_text())["best_epoch"] == 1


def test_a_shard_is_a_contiguous_share_of_the_examples() -> None:
    batch = {"input_ids": torch.arange(12).view(6, 2), "labels": torch.arange(3), "scalar": torch.tensor(7)}
    a, b = distributed.shard(batch, 0, 2), distributed.shard(batch, 1, 2)
    assert a["labels"].tolist() == [0] and b["labels"].tolist() == [1, 2]
    assert a["input_ids"].tolist() == [[0, 1], [2, 3]]  # two sequences per example (B * C layout)
    assert torch.equal(torch.cat([a["input_ids"], b["input_ids"]]), batch["input_ids"])
    assert a["scalar"] == 7
    assert distributed.shard(batch, 0, 4)["labels"].numel() == 0  # more ranks than examples
    halves = split_batch({k: v for k, v in batch.items() if k != "scalar"}, 2)
    assert halves[0]["labels"].tolist() == [0, 1]  # (split_batch cuts the other way round)


@pytest.mark.parametrize(
    ("world", "local_rank", "shown"), [("2", "0", True), ("2", "1", False), ("two", "1", True)]
)
def test_a_bad_spec_under_torchrun_is_said_once_per_machine(
    monkeypatch: pytest.MonkeyPatch, world: str, local_rank: str, shown: bool
) -> None:
    """Every rank reads the same spec before the ranks join, so each printed the same error: the
    machine's first rank alone says it now; every rank still exits 2. A WORLD_SIZE that is not a
    number is no torchrun job: the error is said (reading it must not fail in the error path)."""
    from typer.testing import CliRunner

    from metapt.cli import app

    bad = Path(__file__).parent / "fixtures" / "specs" / "run_epsilon.toml"
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", local_rank)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    done = CliRunner().invoke(app, ["pretrain", str(bad)])
    assert done.exit_code == 2
    assert ("[meta].epsilon: 1.5 is out of range" in done.output) is shown
