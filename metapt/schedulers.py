"""Baseline task schedulers: which source task trains in an episode when no meta step chooses.

Each is a pure function of (episode, total episodes, task sizes, generator) so a resumed run makes
the same choices. The meta scheduler's choice lives in metapt/selection.py.
"""

from __future__ import annotations

import torch


def _draw(weights: list[float], g: torch.Generator) -> int:
    return int(torch.multinomial(torch.tensor(weights, dtype=torch.float64), 1, generator=g).item())


def uniform(episode: int, episodes: int, sizes: list[int], g: torch.Generator, temperature: float) -> int:
    """Every task equally likely."""
    return _draw([1.0] * len(sizes), g)


def proportional(
    episode: int, episodes: int, sizes: list[int], g: torch.Generator, temperature: float
) -> int:
    """Tasks drawn in proportion to their number of training examples."""
    return _draw([float(s) for s in sizes], g)


def temperature_sampling(
    episode: int, episodes: int, sizes: list[int], g: torch.Generator, temperature: float
) -> int:
    """p ~ size^(1/T): T = 1 is proportional, large T approaches uniform (as in multilingual BERT)."""
    return _draw([float(s) ** (1.0 / temperature) for s in sizes], g)


def sequential(episode: int, episodes: int, sizes: list[int], g: torch.Generator, temperature: float) -> int:
    """ERNIE 2.0 continual multi-task learning: the run is cut into K equal stages and stage k
    (1-based) trains tasks 1..k, drawn uniformly, so earlier tasks keep being revisited."""
    k = len(sizes)
    stage = min(k, episode * k // episodes + 1)
    return _draw([1.0] * stage + [0.0] * (k - stage), g)


def round_robin(episode: int, episodes: int, sizes: list[int], g: torch.Generator, temperature: float) -> int:
    """Tasks in turn: episode e trains task e mod K."""
    return episode % len(sizes)


def single(episode: int, episodes: int, sizes: list[int], g: torch.Generator, temperature: float) -> int:
    """Always the first task (the engine puts [meta].single_task first)."""
    return 0


SCHEDULERS = {
    "uniform": uniform,
    "proportional": proportional,
    "temperature": temperature_sampling,
    "sequential": sequential,
    "round_robin": round_robin,
    "single": single,
}
