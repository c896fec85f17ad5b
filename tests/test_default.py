"""The offline embedded default end to end, on a reduced size: pretrain 2 episodes, finetune 1 epoch."""

from __future__ import annotations

import importlib.metadata
import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from conftest import stop_after
from safetensors.torch import load_file as safetensors_load
from transformers import AutoModel, AutoTokenizer

from metapt.cli import app

ROOT = Path(__file__).resolve().parent.parent


def _reduced(tmp_path: Path, name: str) -> Path:
    """The shipped run spec with a tiny model and short episodes (same sources, targets, scheduler)."""
    text = (ROOT / "tasks" / name).read_text()
    for key, value in {
        "hidden_size": 32,
        "num_layers": 1,
        "intermediate_size": 64,
        "train_batches": 2,
        "support_batches": 1,
        "vocab_size": 600,
        "select_every": 1,  # every episode selects, so every line has utilities
    }.items():
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
        if not n:
            text = text.replace("[meta]\n", f"[meta]\n{key} = {value}\n")
    path = tmp_path / name
    path.write_text(text)
    return path


def test_default_pretrain_then_finetune(runner, tmp_path: Path) -> None:
    run = _reduced(tmp_path, "agnostic.toml")
    out = tmp_path / "ckpt"
    result = runner.invoke(app, ["pretrain", str(run), "--episodes", "2", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "episode 2/2 chose" in result.stdout  # plain lines when not a terminal
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in lines] == [1, 2]
    sources = {"mlm", "span_selection", "response_selection", "mlm_shuffled"}
    assert all(set(r["utilities"]) == sources and r["chosen"] in sources for r in lines)
    # The bandit chooses by its running estimates: a plain line shows them after this selection's
    # utilities when they differ (from the second selection on), and not when they are the same.
    printed = [x for x in result.stdout.splitlines() if x.startswith("episode ")]
    assert len(printed) == 2
    for r, text in zip(lines, printed, strict=True):
        policy = " policy " + " ".join(f"{k}={v:.4g}" for k, v in r["policy_scores"].items()) + " select "
        assert (policy in text) == (r["policy_scores"] != r["utilities"]), (text, r["policy_scores"])
    assert lines[1]["policy_scores"] != lines[1]["utilities"]
    assert AutoModel.from_pretrained(out).config.hidden_size == 32
    assert len(AutoTokenizer.from_pretrained(out)) <= 600

    result = runner.invoke(
        app, ["finetune", "--task", "conll2012-synthetic", str(out), "--epochs", "1", "-q"]
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "finetune" / "conll2012-synthetic" / "results.json").read_text())
    assert results["kind"] == "srl" and results["main_metric"] == "f1"
    assert results["metapt_version"] == importlib.metadata.version("metapt")  # what scored it
    assert set(results["metrics"]) == {"validation", "test"}
    assert 0.0 <= results["metrics"]["validation"]["f1"] <= 100.0
    assert (out / "finetune" / "conll2012-synthetic" / "predictions" / "validation.props").is_file()


def test_default_aware_run_trains_target_heads(runner, tmp_path: Path) -> None:
    run = _reduced(tmp_path, "aware.toml")
    out = tmp_path / "ckpt-aware"
    result = runner.invoke(app, ["pretrain", str(run), "--episodes", "1", "--output-dir", str(out), "-q"])
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert line["target_loss"] > 0 and line["selection_flops"] > 0
    heads = json.loads((out / "heads.json").read_text())
    targets = {"conll04-synthetic", "conll2012-synthetic", "claims-synthetic", "squad-synthetic"}
    assert {n for n, h in heads.items() if h["role"] == "target"} == targets


def test_a_streamed_corpus_trains_and_resumes_like_an_uninterrupted_run(tmp_path: Path) -> None:
    from metapt import engine
    from metapt.resolve import parse_run
    from metapt.runspec import override

    text = "\n\n".join(
        f"Sentence {i} of document {d} is about item {i * d} .\n" * 3 for d in range(30) for i in (1,)
    )
    (tmp_path / "corpus.txt").write_text(text)
    (tmp_path / "stream.toml").write_text(
        'kind = "masked_lm"\n[data]\nformat = "text"\ntrain = "corpus.txt"\nstreaming = true\n'
        "[batch]\nsize = 4\nmax_length = 32\n"
    )
    (tmp_path / "run.toml").write_text(
        "[run]\nseed = 3\n[model]\nhidden_size = 32\nnum_layers = 1\nintermediate_size = 64\nmax_length = 64\n"
        '[tokenizer]\nvocab_size = 300\n[meta]\nsources = ["stream.toml", "mlm"]\nepsilon = 0.5\n'
        "train_batches = 2\nsupport_batches = 1\n"
    )
    spec = parse_run(tmp_path / "run.toml")

    def run(out: str, resume: bool = False, callback: Callable | None = None) -> list[str]:
        engine.pretrain(
            override(spec, episodes=3, output_dir=tmp_path / out), resume=resume, callback=callback
        )
        return [json.loads(x)["chosen"] for x in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]

    whole = run("whole")
    # Stop after episode 1 (SIGTERM: finish it and save), then resume: the stream must skip what it
    # consumed, so the rest of the run is the uninterrupted one.
    assert len(run("parts", callback=stop_after(1))) == 1
    assert run("parts", resume=True) == whole
    a, b = (safetensors_load(tmp_path / d / "model.safetensors") for d in ("whole", "parts"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((tmp_path / "whole" / "heads.json").read_text())
    assert state["stream"]["kind"] == "masked_lm"
