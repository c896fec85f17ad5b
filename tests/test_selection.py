"""The meta step (metapt/selection.py) against references computed without it: exact utilities from a
hand-made theta' = theta - alpha * grad in a copy of the model, the first-order estimate in the limit
of a small alpha, and epsilon-greedy choice. Tiny 1-layer encoders on the synthetic corpora."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from metapt import engine, selection
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.spec import RunSpec

RUNS = Path(__file__).parent / "fixtures" / "runs"
NO_AUTOCAST = contextlib.nullcontext


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread, also for the module-scoped runs (bitwise comparisons need the same
    count throughout; and on a busy 2-core machine two threads wait on each other for every op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(tmp_path: Path, name: str = "agnostic.toml", **meta: object) -> RunSpec:
    """A tiny run spec from tests/fixtures/runs, writing under tmp_path, with [meta] changes."""
    spec = override(parse_run(RUNS / name), output_dir=tmp_path / "out")
    return dataclasses.replace(spec, meta=dataclasses.replace(spec.meta, **meta)) if meta else spec


@pytest.fixture(scope="module")
def agnostic(tmp_path_factory: pytest.TempPathFactory) -> engine.Run:
    """A set-up (untrained) agnostic run: sources = targets = mlm, mlm_shuffled."""
    run = engine.setup(tiny(tmp_path_factory.mktemp("selection")), resume=False)
    run.model.eval()
    return run


def draw(run: engine.Run, per_task: int = 2) -> tuple[dict, list]:
    """Support batches of every source and target batches of every target, as `engine._select` draws."""
    support = {s: [run.streams["support"][s].next() for _ in range(per_task)] for s in run.sources}
    targets = [(t, run.streams["target"][t].next()) for t in run.targets for _ in range(per_task)]
    return support, targets


def reference(model: torch.nn.Module, support: dict, targets: list, alpha: float) -> dict[str, dict]:
    """Algorithm 1's utilities computed by hand: a gradient step applied to a deep copy of the model.

    Returns {"none": {source: -sum of target losses}, "relative": {source: sum over target tasks of
    (before - after) / before}}, both summed over the source's support batches."""
    with torch.no_grad():
        before: dict[str, float] = {}
        for t, batch in targets:
            before[t] = before.get(t, 0.0) + float(model(t, batch)[0])
    out: dict[str, dict] = {"none": {}, "relative": {}}
    for source, batches in support.items():
        out["none"][source] = out["relative"][source] = 0.0
        for batch in batches:
            params = [
                (n, p)
                for n, p in model.named_parameters()
                if n.startswith("encoder.") or n.startswith(f"heads.{source}.")
            ]
            grads = torch.autograd.grad(model(source, batch)[0], [p for _, p in params], allow_unused=True)
            stepped = copy.deepcopy(model)
            live = dict(stepped.named_parameters())
            with torch.no_grad():
                for (n, p), g in zip(params, grads):
                    if g is not None:
                        live[n].copy_(p - alpha * g)
                after: dict[str, float] = {}
                for t, target_batch in targets:
                    after[t] = after.get(t, 0.0) + float(stepped(t, target_batch)[0])
            out["none"][source] += -sum(after.values())
            out["relative"][source] += sum((before[t] - after[t]) / before[t] for t in before)
    return out


def test_exact_utilities_equal_a_hand_made_inner_step(agnostic: engine.Run) -> None:
    run, alpha = agnostic, 0.05
    support, targets = draw(run)
    expected = reference(run.model, support, targets, alpha)
    base = selection.target_losses(run.model, selection.detached(run.model), targets, NO_AUTOCAST)
    assert base.shape == (4,)  # 2 target tasks x 2 batches
    for normalize in ("none", "relative"):
        got = selection.exact_utilities(run.model, support, targets, base, alpha, normalize, NO_AUTOCAST)
        assert list(got) == ["mlm", "mlm_shuffled"]
        for source, value in expected[normalize].items():
            assert got[source] == pytest.approx(value, rel=1e-5, abs=1e-6), (normalize, source)
    # The sources' utilities differ, so the comparison above is not trivially true.
    assert expected["none"]["mlm"] != pytest.approx(expected["none"]["mlm_shuffled"], abs=1e-6)
    assert all(v < 0 for v in expected["none"].values())  # -(sum of 4 positive MLM losses)


def test_scoring_never_writes_the_live_model(agnostic: engine.Run) -> None:
    run = agnostic
    support, targets = draw(run, per_task=1)
    before = {n: p.detach().clone() for n, p in run.model.state_dict().items()}
    base = selection.target_losses(run.model, selection.detached(run.model), targets, NO_AUTOCAST)
    selection.exact_utilities(run.model, support, targets, base, 0.5, "none", NO_AUTOCAST)
    selection.first_order_utilities(run.model, support, targets, base, 0.5, "relative", NO_AUTOCAST)
    after = run.model.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    assert all(p.grad is None for p in run.model.parameters())  # no gradient left on the live weights


def test_inner_step_passes_untouched_parameters_through(agnostic: engine.Run) -> None:
    run = agnostic
    params = selection.detached(run.model)
    names = selection.trainable(run.model, "mlm")
    batch = run.streams["support"]["mlm"].next()
    stepped, loss = selection.inner_step(run.model, params, names, "mlm", batch, 0.1, NO_AUTOCAST)
    assert stepped.keys() == params.keys()
    other = [n for n in params if n.startswith("heads.mlm_shuffled.")]
    assert other and all(stepped[n] is params[n] for n in other)  # the same tensor objects, not copies
    assert not any(n.startswith("heads.mlm_shuffled.") for n in names)
    changed = [n for n in names if not torch.equal(stepped[n], params[n])]
    # Every encoder weight and the mlm head get a gradient (the word embeddings twice: input and tied decoder).
    assert "encoder.embeddings.word_embeddings.weight" in changed
    assert "heads.mlm.dense.weight" in changed and "heads.mlm.bias" in changed
    assert len(changed) >= len(names) - 2  # at most a couple of exactly-zero gradients
    with torch.no_grad():
        assert not loss.requires_grad and float(loss) == pytest.approx(float(run.model("mlm", batch)[0]))


@pytest.mark.parametrize("normalize", ["none", "relative"])
def test_first_order_matches_exact_for_a_small_alpha(agnostic: engine.Run, normalize: str) -> None:
    # L_T(theta - alpha g_s) = L_T(theta) - alpha g_s.g_T + O(alpha^2). Measured over 12 seeds at
    # alpha = 1e-3: the estimates differ by at most 1.6% of the sources' summed gains (and by ~100%
    # at alpha = 0.1); below 1e-3 the float32 losses' resolution takes over.
    run, alpha = agnostic, 1e-3
    support, targets = draw(run)  # M = 2 support batches per source, 2 batches per target
    base = selection.target_losses(run.model, selection.detached(run.model), targets, NO_AUTOCAST)
    args = (run.model, support, targets, base, alpha, normalize, NO_AUTOCAST)
    exact, first = selection.exact_utilities(*args), selection.first_order_utilities(*args)
    constant = -2 * float(base.sum()) if normalize == "none" else 0.0  # u = M * (-L_T(theta)) + gains
    gains = {s: exact[s] - constant for s in run.sources}
    scale = sum(abs(g) for g in gains.values())
    assert scale > 1e-4  # real gains, far above float32 noise
    for source in run.sources:
        assert abs(first[source] - exact[source]) < 0.05 * scale, source
    gap_exact = exact["mlm"] - exact["mlm_shuffled"]
    gap_first = first["mlm"] - first["mlm_shuffled"]
    assert abs(gap_first - gap_exact) < 0.05 * scale
    if abs(gap_exact) > 0.1 * scale:  # a clear gap: the same task wins
        assert (gap_first > 0) == (gap_exact > 0)


@pytest.mark.parametrize("utility", ["exact", "first_order"])
def test_a_source_whose_support_batch_is_the_target_batch_wins(agnostic: engine.Run, utility: str) -> None:
    # Support batch == target batch (same task, same head): the inner step is gradient descent on the
    # target loss itself, which beats a step on shuffled words through another head by a wide margin.
    run = agnostic
    target = run.streams["target"]["mlm"].next()
    support = {"mlm_shuffled": [run.streams["support"]["mlm_shuffled"].next()], "mlm": [target]}
    targets = [("mlm", target)]
    base = selection.target_losses(run.model, selection.detached(run.model), targets, NO_AUTOCAST)
    score = selection.exact_utilities if utility == "exact" else selection.first_order_utilities
    u = score(run.model, support, targets, base, 1e-2, "relative", NO_AUTOCAST)
    assert u["mlm"] > 0 and u["mlm"] > 3 * abs(u["mlm_shuffled"])
    assert selection.choose(u, 0.0, torch.Generator().manual_seed(0)) == ("mlm", False)


def test_first_order_and_exact_pick_the_same_task(agnostic: engine.Run) -> None:
    run = agnostic
    target = run.streams["target"]["mlm"].next()
    support = {"mlm_shuffled": [run.streams["support"]["mlm_shuffled"].next()], "mlm": [target]}
    targets = [("mlm", target), ("mlm_shuffled", run.streams["target"]["mlm_shuffled"].next())]
    base = selection.target_losses(run.model, selection.detached(run.model), targets, NO_AUTOCAST)
    args = (run.model, support, targets, base, 1e-2, "none", NO_AUTOCAST)
    exact, first = selection.exact_utilities(*args), selection.first_order_utilities(*args)
    assert max(exact, key=exact.get) == max(first, key=first.get) == "mlm"


def test_the_engine_scores_with_dropout_off_on_batches_shared_by_every_source(tmp_path: Path) -> None:
    # engine._select against a replay on a second, identical setup: the same batches scored in eval
    # mode give the same utilities to the last bit (with dropout on they would not).
    spec = tiny(tmp_path)
    run, replay = engine.setup(spec, resume=False), engine.setup(spec, resume=False)
    assert spec.model.dropout > 0 and run.model.training
    scored: list[list] = []
    exact = selection.exact_utilities

    def spy(model: torch.nn.Module, support: dict, targets: list, *args: object) -> dict[str, float]:
        scored.append([model.training, targets])
        return exact(model, support, targets, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(selection, "exact_utilities", spy)
        _, explored, utilities, target_loss, _ = engine._select(run)
    assert run.model.training and not explored  # back to train mode for the training steps
    assert scored[0][0] is False
    assert [t for t, _ in scored[0][1]] == ["mlm", "mlm_shuffled"]  # one batch per target, M = 1
    support, targets = draw(replay, per_task=1)
    replay.model.eval()
    base = selection.target_losses(replay.model, selection.detached(replay.model), targets, NO_AUTOCAST)
    args = (spec.meta.inner_lr, "none", NO_AUTOCAST)
    assert utilities == selection.exact_utilities(replay.model, support, targets, base, *args)
    assert target_loss == float(base.mean())


# ------------------------------------------------------------------------------------------ choose
def test_choose_without_exploration_is_the_argmax() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        assert selection.choose({"a": -3.0, "b": 2.5, "c": 2.0}, 0.0, g) == ("b", False)


def test_choose_always_explores_at_epsilon_one() -> None:
    g = torch.Generator().manual_seed(0)
    picks = [selection.choose({"a": 0.0, "b": 9.0, "c": 1.0}, 1.0, g) for _ in range(300)]
    assert all(explored for _, explored in picks)
    counts = {t: sum(p == t for p, _ in picks) for t in "abc"}
    assert all(70 <= n <= 130 for n in counts.values()), counts  # uniform: 100 each


def test_choose_breaks_ties_by_the_first_task() -> None:
    g = torch.Generator().manual_seed(0)
    assert selection.choose({"a": 1.0, "b": 1.0}, 0.0, g) == ("a", False)
    assert selection.choose({"x": 0.0, "b": 2.0, "a": 2.0}, 0.0, g) == ("b", False)


def test_choose_draws_the_same_random_numbers_whatever_epsilon() -> None:
    # A resumed run must see the same exploration draws whether or not earlier episodes explored.
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(5):
        selection.choose({"a": 0.0, "b": 1.0}, 0.0, g0)
        selection.choose({"a": 0.0, "b": 1.0}, 1.0, g1)
    assert torch.equal(g0.get_state(), g1.get_state())
