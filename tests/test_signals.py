"""Signals, exit codes and runaway losses: SIGTERM (torchrun, Slurm) stops `metapt pretrain` as the
first Ctrl-C does (finish the episode, save, exit) with exit code 128 + the signal's number; a
training loss that rises far above its starting value is warned about through the callback; and
a run whose loss overflows (no mock: real forwards) reaches the NaN/inf stop."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write
from typer.testing import CliRunner

from metapt import checkpoint, engine, pointless
from metapt.cli import app
from metapt.errors import TrainingError
from metapt.interrupts import Stopped, interrupts, terminate_as_interrupt
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.spec import RunSpec

RUNS = Path(__file__).parent / "fixtures" / "runs"
AGNOSTIC = RUNS / "agnostic.toml"
SCRIPT = Path(sys.executable).with_name("metapt")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out: Path, episodes: int = 4, **meta: object) -> RunSpec:
    spec = override(parse_run(AGNOSTIC), output_dir=out, episodes=episodes)
    return dataclasses.replace(spec, meta=dataclasses.replace(spec.meta, **meta)) if meta else spec


def lines(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def test_sigterm_outside_the_pretraining_loop_stops_as_ctrl_c_does() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stopped, terminate_as_interrupt():
        signal.raise_signal(signal.SIGTERM)
    assert isinstance(stopped.value, KeyboardInterrupt) and stopped.value.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous


def test_sigterm_during_finetuning_exits_143_without_a_traceback(tmp_path: Path) -> None:
    # It was the default kill (a process status of -15, no cleanup, no message).
    env = {k: v for k, v in os.environ.items() if k != "METAPT_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    ckpt = tmp_path / "ckpt"
    engine.pretrain(tiny(ckpt, episodes=0))
    out = tmp_path / "ft"
    cmd = [str(SCRIPT), "finetune", "--task", "conll2012-synthetic", str(ckpt), "--epochs", "500"]
    process = subprocess.Popen(
        [*cmd, "--output-dir", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 120
    while not (out / "model").is_dir():  # the first epoch is scored and saved
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not (out / "results.json").exists()  # not finished, so nothing says it was


def test_sigterm_and_ctrl_c_stop_after_the_episode_save_and_exit_128_plus_the_signal(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "METAPT_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    runs = {}
    episodes = 1000  # far more than the 120 s below can train: each run is still going when signalled
    for sig in (signal.SIGTERM, signal.SIGINT):  # side by side: one process each
        out = tmp_path / sig.name
        cmd = [str(SCRIPT), "pretrain", str(AGNOSTIC), "--episodes", str(episodes), "--output-dir", str(out)]
        runs[sig] = (
            out,
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
        )
    # Each process is signalled as soon as its own first episode is done (the loop runs with its
    # handler in place), not after the other's: waiting for one let the other finish (a status of -2).
    waiting, deadline = dict(runs), time.monotonic() + 120
    while waiting:
        for sig, (out, process) in list(waiting.items()):
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()
            if lines(out):
                process.send_signal(sig)
                del waiting[sig]
        time.sleep(0.05)
    for sig, (out, process) in runs.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 128 + sig, (sig, stdout, stderr)  # 143 and 130
        done = len(lines(out))
        assert 1 <= done < episodes
        assert f"stopped after {done}/{episodes} episodes" in stdout
        assert "stopped early; continue with --resume" in stderr and "Traceback" not in stderr
        assert checkpoint.resolve(out).name == f"checkpoint-{done:06d}"  # saved at the episode it stopped


def test_sigterm_in_process_stops_after_the_episode(tmp_path: Path) -> None:
    def twice(event: str, data: dict) -> None:
        if event == "episode" and data["episode"] == 1:
            signal.raise_signal(signal.SIGTERM)  # the engine's handler: finish the episode and save

    handler = signal.getsignal(signal.SIGTERM)
    summary = engine.pretrain(tiny(tmp_path / "run"), callback=twice)
    assert summary["complete"] is False and summary["signal"] == signal.SIGTERM and summary["episodes"] == 1
    assert signal.getsignal(signal.SIGTERM) is handler  # the previous handler is back


# ---------------------------------------------------------------------------------- divergence
def test_a_diverging_loss_is_warned_about_once_per_task(tmp_path: Path) -> None:
    """lr = 1 without clipping: the training loss runs away (the issue's 6 -> 284)."""
    out = tmp_path / "run"
    events: list[tuple[str, dict]] = []
    spec = tiny(out, 4, lr=1.0, max_grad_norm=0.0, warmup_ratio=0.0, scheduler="round_robin")
    engine.pretrain(spec, callback=lambda e, d: events.append((e, d)))
    warned = [d["message"] for e, d in events if e == "warning" and "diverging" in d["message"]]
    first: dict[str, tuple[int, float]] = {}
    expected = []
    for r in lines(out):  # the rule, applied by hand to what the run logged
        e0, l0 = first.setdefault(r["chosen"], (r["episode"], r["train_loss"]))
        if (
            r["train_loss"] > 2 * l0
            and r["train_loss"] - l0 >= 1
            and r["chosen"] not in {t for t, *_ in expected}
        ):
            expected.append((r["chosen"], r["episode"], r["train_loss"], l0))
    assert expected, [r["train_loss"] for r in lines(out)]  # the run did diverge
    assert len(warned) == len(expected)
    for message, (task, episode, loss, start) in zip(warned, expected):
        assert message.startswith(f"episode {episode}: the training loss of {task!r} is {loss:.4g}, ")
        assert f"its first value {start:.4g}" in message
        assert message.endswith(
            "Lower [meta].lr (now 1) or clip gradients with [meta].max_grad_norm (now off)."
        )


def test_a_healthy_loss_is_not_warned_about() -> None:
    watch = pointless.Divergence()
    losses = [5.7, 5.9, 6.3, 5.5, 11.3, 12.0]  # noise up to 2x (5.7 -> 11.3) but not 2x and +1 above
    assert [watch.observe("mlm", e, x, 1e-3, 1.0) for e, x in enumerate(losses[:4], 1)] == [None] * 4
    assert watch.observe("mlm", 5, 11.3, 1e-3, 1.0) is None  # 1.98x
    assert watch.observe("mlm", 6, 12.0, 1e-3, 1.0).startswith("episode 6: the training loss of 'mlm' is 12")
    assert watch.observe("mlm", 7, 50.0, 1e-3, 1.0) is None  # once per task
    assert (
        watch.observe("tiny", 1, 0.1, 1e-3, 1.0) is None and watch.observe("tiny", 2, 0.9, 1e-3, 1.0) is None
    )


# -------------------------------------------------------------------------------------- NaN
def test_an_overflowing_loss_reaches_the_nan_stop(tmp_path: Path, runner: CliRunner) -> None:
    """An aware run whose regression target has labels of 1e20: the squared error overflows float32 to
    inf in the real forward pass, and the run stops before it writes anything."""
    rows = "".join(
        json.dumps({"text": f"the city of {w} is big", "label": 1e20 * k}) + "\n"
        for k, w in enumerate("abcdefgh", 1)
    )
    write(tmp_path, "tasks/price.jsonl", rows)
    write(
        tmp_path,
        "tasks/price.toml",
        'kind = "regression"\n[data]\nformat = "jsonl"\ntrain = "price.jsonl"\n[batch]\nsize = 4\nmax_length = 16\n',
    )
    write(tmp_path, "tasks/mlm.toml", (RUNS / "tasks" / "mlm.toml").read_text())
    text = AGNOSTIC.read_text().replace('setting = "agnostic"', 'setting = "aware"')
    text = text.replace(
        'sources = ["tasks/mlm.toml", "tasks/mlm_shuffled.toml"]',
        'sources = ["tasks/mlm.toml"]\ntargets = ["tasks/price.toml"]',
    )
    spec = write(tmp_path, "run.toml", text)
    out = tmp_path / "out"
    with pytest.raises(
        TrainingError,
        match=r"^episode 1: a task utility is (-inf|nan); no checkpoint was written yet\. .* and run again\.$",
    ):
        engine.pretrain(override(parse_run(spec), output_dir=out))
    result = runner.invoke(app, ["pretrain", str(spec), "--output-dir", str(out)])
    assert result.exit_code == 1
    assert re.search("training stopped: episode 1: a task utility is (-inf|nan)", result.stderr)
    assert not out.exists()  # nothing was written, so nothing is left


def test_interrupts_catches_the_first_signal_and_gives_the_second_back() -> None:
    """The first SIGTERM is only recorded; by then the previous handler is back for a second one; and
    it is back after the block however it ends."""
    caught: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    try:
        with pytest.raises(RuntimeError), interrupts() as stop:
            assert (stop.asked, stop.signal) == (False, 0)
            signal.raise_signal(signal.SIGTERM)
            assert (stop.asked, stop.signal, caught) == (True, signal.SIGTERM, [])
            signal.raise_signal(signal.SIGTERM)  # the second: the handler that was there before
            assert caught == [signal.SIGTERM] and stop.signal == signal.SIGTERM
            raise RuntimeError("the block fails")
        signal.raise_signal(signal.SIGTERM)
        assert caught == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
