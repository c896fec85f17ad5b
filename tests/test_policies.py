"""The meta scheduler's policies (metapt/policies.py) on simulated utilities with a known truth:
greedy follows each selection's noise, the bandit accumulates evidence, follows a change, and
resumes from its state with the same choices."""

from __future__ import annotations

import math

import pytest
import torch

from metapt.policies import Bandit, Greedy, lead, ranks


def noisy(means: dict[str, float], sd: float, g: torch.Generator) -> dict[str, float]:
    """One selection's utilities: the true means plus independent noise, plus a shared offset that
    moves every selection (as -L_T(theta) does) and says nothing about which source is better."""
    shared = float(torch.randn((), generator=g, dtype=torch.float64)) * 100
    return {
        k: m + shared + sd * float(torch.randn((), generator=g, dtype=torch.float64))
        for k, m in means.items()
    }


def shares(
    policy: Greedy | Bandit, means: dict[str, float], n: int, seed: int = 0, sd: float = 4.0
) -> list[str]:
    noise, draws = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 100)
    return [policy.choose(noisy(means, sd, noise), draws).chosen for _ in range(n)]


def test_the_bandit_accumulates_evidence_that_one_selection_lacks() -> None:
    # The better source leads by 1 with noise 4 per selection (z = 0.18 for the gap of one selection):
    # greedy is barely better than a coin; the bandit's discounted means separate after ~40 selections.
    means = {"real": 1.0, "junk": 0.0}
    greedy = shares(Greedy(0.0), means, 200)
    bandit = shares(Bandit(0.0, discount=0.98), means, 200)
    greedy_share = greedy[50:].count("junk") / 150
    bandit_share = bandit[50:].count("junk") / 150
    assert 0.35 < greedy_share < 0.5  # Phi(-1 / (4 sqrt 2)) = 0.43
    assert bandit_share < 0.15, bandit_share


def test_the_bandit_follows_a_change_within_its_window() -> None:
    # junk is better for the first 60 selections, real after: a 0.9 discount (window ~19) switches.
    noise, draws = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    bandit, picks = Bandit(0.0, discount=0.9), []
    for k in range(160):
        means = {"real": 0.0, "junk": 3.0} if k < 60 else {"real": 3.0, "junk": 0.0}
        picks.append(bandit.choose(noisy(means, 2.0, noise), draws).chosen)
    assert picks[20:60].count("junk") >= 36  # sure of the first truth
    assert picks[100:].count("real") >= 54  # and of the second, 40 selections after the change


def test_a_restored_bandit_makes_the_same_choices() -> None:
    noise, draws = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
    means = {"a": 0.5, "b": 0.0, "c": -0.5}
    first = Bandit(0.1, discount=0.95)
    for _ in range(30):
        first.choose(noisy(means, 2.0, noise), draws)
    second = Bandit(0.1, discount=0.95)
    second.load_state_dict(first.state_dict())
    noise_state, draws_state = noise.get_state(), draws.get_state()
    a = [first.choose(noisy(means, 2.0, noise), draws) for _ in range(20)]
    noise.set_state(noise_state), draws.set_state(draws_state)
    b = [second.choose(noisy(means, 2.0, noise), draws) for _ in range(20)]
    assert a == b


def test_the_first_selection_takes_its_values_leader() -> None:
    # No source has an error bar yet: the utilities (far smaller than 1) are all the evidence, so
    # the bandit picks their leader for every seed instead of a unit-width (blind) draw, and draws
    # exactly what any later selection draws (n normals, the epsilon pair): resumes stay aligned.
    values = {"a": 0.001, "b": 0.003, "c": -0.002}
    for seed in range(20):
        draws = torch.Generator().manual_seed(seed)
        choice = Bandit(0.0).choose(values, draws)
        assert (choice.chosen, choice.explored) == ("b", False)
        same = torch.Generator().manual_seed(seed)
        torch.randn(3, generator=same, dtype=torch.float64), torch.rand((), generator=same)
        torch.randint(3, (), generator=same)
        assert torch.equal(draws.get_state(), same.get_state())
    # ties: the first, as greedy; epsilon still explores at the first selection
    assert Bandit(0.0).choose({"a": 0.0, "b": 0.0}, torch.Generator().manual_seed(0)).chosen == "a"
    explored = [Bandit(1.0).choose(values, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(c.explored for c in explored) and {c.chosen for c in explored} == set(values)


def test_a_checkpointed_bandit_state_still_loads() -> None:
    # the state format of checkpoints written before the first-selection rule: {"stats": {name:
    # [n, q, s1, s2]}}; it loads as it was and the choice follows its means.
    state = {"stats": {"a": [1.95, 1.9025, 0.195, 0.0401], "b": [1.95, 1.9025, -0.195, 0.0401]}}
    bandit = Bandit(0.0)
    bandit.load_state_dict(state)
    assert bandit.state_dict() == state
    choice = bandit.choose({"a": 0.1, "b": -0.1}, torch.Generator().manual_seed(0))
    assert choice.chosen == "a" and choice.scores["a"] > 0 > choice.scores["b"]


def test_the_bandit_posterior_by_hand() -> None:
    # discount 0.5, centred values for "a": +1, then +3 -> n = 1.5, q = 1.25, s1 = 3.5, s2 = 9.5:
    # mean 7/3, n_eff = 2.25 / 1.25 = 1.8, weighted variance 9.5/1.5 - 49/9 = 8/9 scaled by
    # 1.8 / 0.8, so the standard error is sqrt(2 / 1.8).
    bandit = Bandit(0.0, discount=0.5)
    bandit.observe({"a": 1.0, "b": -1.0})
    bandit.observe({"a": 13.0, "b": 7.0})  # centre 10
    mean, se = bandit.posterior("a")
    assert mean == pytest.approx(7 / 3)
    assert se == pytest.approx(math.sqrt((8 / 9) * (1.8 / 0.8) / 1.8))
    assert bandit.posterior("c") == (0.0, None)


def test_ranks_by_hand_ties_share_their_mean_rank() -> None:
    assert ranks({"a": 3.0, "b": 1.0, "c": 3.0, "d": -5.0}) == {"a": 2.5, "b": 1.0, "c": 2.5, "d": 0.0}


def test_a_rank_bandit_is_not_carried_by_one_spike() -> None:
    # b leads a by a little in 9 selections; a has one spike 100x larger. By value the spike wins
    # the discounted mean; by rank b is ahead in 9 of 10 selections and leads.
    history = [{"a": 0.0, "b": 0.01}] * 4 + [{"a": 1.0, "b": 0.0}] + [{"a": 0.0, "b": 0.01}] * 5
    by_value, by_rank = Bandit(0.0, 0.95), Bandit(0.0, 0.95, "rank")
    for values in history:
        by_value.observe(values)
        by_rank.observe(values)
    assert by_value.posterior("a")[0] > by_value.posterior("b")[0]
    assert by_rank.posterior("b")[0] > by_rank.posterior("a")[0]
    # centred ranks of two sources are -0.5 / +0.5: b's discounted mean by hand
    weights = [0.95**k for k in range(10)][::-1]  # the last selection has weight 1
    b = [0.5 if v["b"] > v["a"] else -0.5 for v in history]
    want = sum(w * x for w, x in zip(weights, b)) / sum(weights)
    assert by_rank.posterior("b")[0] == pytest.approx(want)


def test_lead_is_the_gap_in_standard_errors() -> None:
    assert lead({"a": 3.0, "b": 1.0, "c": 0.0}, {"a": 0.6, "b": 0.8, "c": 0.1}, "a") == pytest.approx(2.0)
    assert lead({"a": 3.0, "b": 1.0}, {"a": 0.6, "b": 0.8}, "b") == pytest.approx(-2.0)
    assert lead({"a": 3.0, "b": 1.0}, {"a": None, "b": 0.8}, "a") is None
    assert lead({"a": 3.0}, {"a": 1.0}, "a") is None
