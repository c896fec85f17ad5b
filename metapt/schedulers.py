"""Baseline task schedulers: which source task trains in an episode when no meta step chooses.

Each is a pure function of (episode, total episodes, task sizes, generator, temperature, shares) so a
resumed run makes the same choices; `shares` (per phase, per task) is what the mixture scheduler
replays from a mixture.json, None for the others. The meta scheduler's choice lives in
metapt/selection.py.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import torch

from metapt.mixture import Shares, phase_of


def _draw(weights: list[float], g: torch.Generator) -> int:
    return int(torch.multinomial(torch.tensor(weights, dtype=torch.float64), 1, generator=g).item())


def uniform(
    episode: int,
    episodes: int,
    sizes: list[int],
    g: torch.Generator,
    temperature: float,
    shares: Shares | None = None,
) -> int:
    """Every task equally likely."""
    return _draw([1.0] * len(sizes), g)


def proportional(
    episode: int,
    episodes: int,
    sizes: list[int],
    g: torch.Generator,
    temperature: float,
    shares: Shares | None = None,
) -> int:
    """Tasks drawn in proportion to their number of training examples."""
    return _draw([float(s) for s in sizes], g)


def temperature_sampling(
    episode: int,
    episodes: int,
    sizes: list[int],
    g: torch.Generator,
    temperature: float,
    shares: Shares | None = None,
) -> int:
    """p ~ size^(1/T): T = 1 is proportional, large T approaches uniform (as in multilingual BERT)."""
    return _draw([float(s) ** (1.0 / temperature) for s in sizes], g)


def sequential(
    episode: int,
    episodes: int,
    sizes: list[int],
    g: torch.Generator,
    temperature: float,
    shares: Shares | None = None,
) -> int:
    """ERNIE 2.0 continual multi-task learning: the run is cut into K equal stages and stage k
    (1-based) trains tasks 1..k, drawn uniformly, so earlier tasks keep being revisited."""
    k = len(sizes)
    stage = min(k, episode * k // episodes + 1)
    return _draw([1.0] * stage + [0.0] * (k - stage), g)


def round_robin(
    episode: int,
    episodes: int,
    sizes: list[int],
    g: torch.Generator,
    temperature: float,
    shares: Shares | None = None,
) -> int:
    """Tasks in turn: episode e trains task e mod K."""
    return episode % len(sizes)


def single(
    episode: int,
    episodes: int,
    sizes: list[int],
    g: torch.Generator,
    temperature: float,
    shares: Shares | None = None,
) -> int:
    """Always the first task (the engine puts [meta].single_task first)."""
    return 0


def mixture(
    episode: int,
    episodes: int,
    sizes: list[int],
    g: torch.Generator,
    temperature: float,
    shares: Shares | None = None,
) -> int:
    """Replays fixed shares (`[meta].mixture`), without randomness: each episode trains the task
    furthest below its share of the episodes so far in its phase, so a file's counts come back
    exactly and any prefix of the run (a FLOPs budget stops early) keeps the shares within ~1
    episode per task. One phase: the whole run; P phases: episode e is in phase e * P // episodes."""
    if not shares:
        raise ValueError("the mixture scheduler needs the shares of a mixture.json")
    return _replay(shares, episodes)[episode]


@lru_cache(maxsize=8)
def _replay(shares: Shares, episodes: int) -> tuple[int, ...]:
    """The task of every episode of a mixture run (computed once per run: O(episodes x tasks))."""
    out: list[int] = []
    counts, phase = [0] * len(shares[0]), -1
    for e in range(episodes):
        if (p := phase_of(e, episodes, len(shares))) != phase:
            phase, n, counts = p, 0, [0] * len(shares[0])
        weights = shares[phase]
        total = sum(weights, Fraction(0))
        # deficit of task i after n episodes of the phase: w_i (n + 1) / total - counts_i (ties: first)
        task = max(range(len(weights)), key=lambda i: (weights[i] * (n + 1) - counts[i] * total, -i))
        counts[task] += 1
        n += 1
        out.append(task)
    return tuple(out)


# [meta].scheduler -> its choice function; catalog.SCHEDULERS is these names and "meta" (selection.py).
BASELINES = {
    "uniform": uniform,
    "proportional": proportional,
    "temperature": temperature_sampling,
    "sequential": sequential,
    "round_robin": round_robin,
    "single": single,
    "mixture": mixture,
}
