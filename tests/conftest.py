"""Shared fixtures: every test runs offline, with metapt's cache in a per-session temporary folder."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.spec import RunSpec

REPO = Path(__file__).resolve().parent.parent
SPECS = Path(__file__).resolve().parent / "fixtures" / "specs"
RUNS = Path(__file__).resolve().parent / "fixtures" / "runs"
# The [model] and [tokenizer] tables of a tiny run spec: a 1-layer, 32-wide BERT over a 300-word WordPiece.
TINY_MODEL = """[model]
hidden_size = 32
num_layers = 1
num_heads = 2
intermediate_size = 64
max_length = 64
[tokenizer]
vocab_size = 300
"""
# A small synthetic masked-LM source over `{corpus}` (documents, shuffled, ...): 40 records, batches of 4.
MLM_TASK = """kind = "masked_lm"
[data]
format = "synthetic"
corpus = "{corpus}"
size = 40
[batch]
size = 4
max_length = 32
"""

# Set before any test module imports `datasets` / `huggingface_hub`, which read these at import time.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
os.environ.update(OFFLINE)


@pytest.fixture(autouse=True, scope="session")
def _offline_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """METAPT_CACHE in a session tmp dir and the hub offline, so no test touches ~/.cache or the network."""
    cache = tmp_path_factory.mktemp("metapt-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAPT_CACHE", str(cache))
        for key, value in OFFLINE.items():
            mp.setenv(key, value)
        yield cache


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for a test module (`pytestmark = pytest.mark.usefixtures(...)`),
    module-scoped runs included: bitwise comparisons need the same thread count throughout, and on a
    busy 2-core machine two threads wait on each other for every op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def runner() -> CliRunner:
    """A CliRunner (typer 0.29: stdout and stderr are kept apart as result.stdout / result.stderr).

    METAPT_DEBUG=0 is set for each invoke and restored afterwards, because `--debug` sets
    METAPT_DEBUG=1 in os.environ and would otherwise leak tracebacks into later tests. A wide
    COLUMNS keeps rich from folding long tmp paths in the output.
    """
    return CliRunner(env={"METAPT_DEBUG": "0", "COLUMNS": "400"})


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write `text` to tmp_path/name (creating folders) and return the path."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def tiny_run(tmp_path: Path, name: str = "agnostic.toml", **meta: object) -> RunSpec:
    """A tiny run spec from tests/fixtures/runs, writing under tmp_path/out, with [meta] changes."""
    spec = override(parse_run(RUNS / name), output_dir=tmp_path / "out")
    return dataclasses.replace(spec, meta=dataclasses.replace(spec.meta, **meta)) if meta else spec


class Crash(Exception):
    """Stands for the process dying right after a checkpoint."""


def crash_after(episode: int) -> Callable[[str, dict], None]:
    """A `pretrain` callback that raises Crash once the checkpoint after `episode` is written."""

    def die(event: str, data: dict) -> None:
        if event == "checkpoint" and data["episode"] == episode:
            raise Crash

    return die


def stop_after(episode: int) -> Callable[[str, dict], None]:
    """A `pretrain` callback that sends SIGTERM once `episode` is logged: the engine finishes that
    episode, saves a checkpoint and stops, as under Slurm or torchrun."""

    def stop(event: str, data: dict) -> None:
        if event == "episode" and data["episode"] == episode:
            signal.raise_signal(signal.SIGTERM)

    return stop


@pytest.fixture
def summed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files whose sha256 metapt.filecheck computes during the test, in order (one per read)."""
    from metapt import filecheck
    from metapt.data import sums

    read: list[Path] = []

    def counted(path: Path) -> str:
        read.append(Path(path))
        return sums.sha256(path)

    monkeypatch.setattr(filecheck, "sha256", counted)
    return read
