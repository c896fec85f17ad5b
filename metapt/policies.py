"""How the meta scheduler turns a selection's utility estimates into the episode's task.

- `greedy`: Algorithm 1 as written: the argmax of this selection's utilities (first on ties), or with
  probability epsilon a uniformly random task.
- `bandit`: discounted Thompson sampling (Raj & Kalyani 2017, "Taming non-stationary bandits: a
  Bayesian approach"; the discount as in Garivier & Moulines 2011's discounted UCB). Every selection
  scores every source, so the evidence is full-information: each source keeps a discounted mean and
  variance of its utility (centred on the selection's mean over sources, which removes what every
  source shares, e.g. the target loss at theta, and its drift), the posterior of its mean is
  N(mean, variance / n_eff), one draw per source is made and the largest draw wins. A clear leader is
  chosen almost always; sources within noise of each other share the episodes in proportion to how
  likely each is the best, so evidence accumulates instead of a coin flip deciding. The discount
  forgets old selections (the effective window is (1 + discount) / (1 - discount) selections), so the
  choice follows utilities that change as training proceeds. With `score = "rank"` each selection's
  utilities enter as their ranks among the sources (centred), so that one selection's spike cannot
  outweigh many selections' order. The first selection, before any source
  has an error bar, takes its values' leader (as greedy would). Epsilon stays as a floor on
  exploration.

A policy is a small object with `choose(values, generator) -> Choice` and `state_dict()` /
`load_state_dict()` (saved in checkpoints: a resumed run makes the same choices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Choice:
    chosen: str
    explored: bool  # epsilon exploration, or (bandit) a draw that was not the leader by the mean
    scores: dict[str, float]  # what the policy ranked by: this selection's utilities, or the bandit's means
    score_se: dict[str, float | None]  # the bandit's standard errors of its means (greedy: empty)


def _epsilon(names: list[str], epsilon: float, generator: torch.Generator) -> str | None:
    """A uniformly random task with probability epsilon, else None. Both numbers are drawn always,
    so the generator stays aligned whatever epsilon is."""
    draw = float(torch.rand((), generator=generator))
    pick = int(torch.randint(len(names), (), generator=generator))
    return names[pick] if draw < epsilon else None


def argmax(values: dict[str, float]) -> str:
    """The largest value's key, the first on ties."""
    names = list(values)
    return max(names, key=lambda n: (values[n], -names.index(n)))


class Greedy:
    """Algorithm 1: epsilon-greedy on this selection's utilities; no state."""

    def __init__(self, epsilon: float, discount: float = 0.0, score: str = "value"):
        self.epsilon = epsilon

    def choose(self, values: dict[str, float], generator: torch.Generator) -> Choice:
        names = list(values)
        random = _epsilon(names, self.epsilon, generator)
        if random is not None:
            return Choice(random, True, dict(values), {})
        return Choice(argmax(values), False, dict(values), {})

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Bandit:
    """Discounted Gaussian Thompson sampling over the sources' centred utilities (module docstring)."""

    def __init__(self, epsilon: float, discount: float = 0.95, score: str = "value"):
        self.epsilon, self.discount, self.score = epsilon, discount, score
        # per source: discounted weight n, squared weight q, sum of values s1 and of squares s2
        self.stats: dict[str, list[float]] = {}

    def observe(self, values: dict[str, float]) -> None:
        """Decay every source's evidence and add this selection's (centred) utilities, or their ranks."""
        if self.score == "rank":
            values = ranks(values)
        centre = math.fsum(values.values()) / len(values)
        g = self.discount
        for name in self.stats.keys() | values.keys():
            n, q, s1, s2 = self.stats.get(name, [0.0, 0.0, 0.0, 0.0])
            n, q, s1, s2 = g * n, g * g * q, g * s1, g * s2
            if name in values:
                y = values[name] - centre
                n, q, s1, s2 = n + 1, q + 1, s1 + y, s2 + y * y
            self.stats[name] = [n, q, s1, s2]

    def posterior(self, name: str) -> tuple[float, float | None]:
        """(discounted mean, its standard error); the error is None before two observations."""
        n, q, s1, s2 = self.stats.get(name, [0.0, 0.0, 0.0, 0.0])
        if n <= 0:
            return 0.0, None
        mean = s1 / n
        n_eff = n * n / q  # the number of equally weighted observations with the same variance of a mean
        if n_eff < 1.5:
            return mean, None
        var = max(s2 / n - mean * mean, 0.0) * n_eff / (n_eff - 1)  # unbiased for the weighted sample
        return mean, math.sqrt(var / n_eff)

    def choose(self, values: dict[str, float], generator: torch.Generator) -> Choice:
        self.observe(values)
        names = list(values)
        noise = torch.randn(len(names), generator=generator, dtype=torch.float64).tolist()
        random = _epsilon(names, self.epsilon, generator)
        means, ses = {}, {}
        for name in names:
            means[name], ses[name] = self.posterior(name)
        bars = [s for s in ses.values() if s is not None]
        # a source with too little evidence for an error bar draws with the widest one seen: it is
        # as uncertain as anything. When none has one yet (the first selection), this selection's
        # values are all the evidence there is, so their leader is chosen (a unit-width draw would be
        # a blind one: the utilities are far smaller than 1)
        spread = max(bars, default=0.0)
        draws = {
            n: means[n] + (ses[n] if ses[n] is not None else spread or 1.0) * z for n, z in zip(names, noise)
        }
        leader = argmax(means)
        if random is not None:
            return Choice(random, True, means, ses)
        chosen = argmax(draws) if bars else leader
        return Choice(chosen, chosen != leader, means, ses)

    def state_dict(self) -> dict[str, Any]:
        return {"stats": {k: list(v) for k, v in self.stats.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats = {k: list(v) for k, v in state.get("stats", {}).items()}


POLICIES = {"greedy": Greedy, "bandit": Bandit}
SCORES = ("value", "rank")  # what the bandit accumulates: each selection's utilities, or their ranks


def ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value's rank among `values` (0 = the smallest; ties share the mean of their ranks)."""
    order = sorted(values.values())
    return {n: (order.index(v) + len(order) - 1 - order[::-1].index(v)) / 2 for n, v in values.items()}


def lead(scores: dict[str, float], errors: dict[str, float | None], chosen: str) -> float | None:
    """How far the chosen task leads the best other one, in standard errors of their difference
    (negative when it trails: an exploration); None without errors or with one task."""
    others = [n for n in scores if n != chosen]
    if not others:
        return None
    runner = argmax({n: scores[n] for n in others})
    a, b = errors.get(chosen), errors.get(runner)
    if a is None or b is None or a == b == 0:
        return None
    return (scores[chosen] - scores[runner]) / math.hypot(a, b)
