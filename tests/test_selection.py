"""The meta step (metapt/selection.py) against references computed without it: exact utilities from a
hand-made theta' = theta - alpha * grad in a copy of the model, the first-order estimate in the limit
of a small alpha, standard errors by hand and against the spread of repeated draws, bf16 against
float64. Tiny 1-layer encoders on the synthetic corpora."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
import torch
from conftest import tiny_run

from metapt import runsetup, runsteps, selection
from metapt.estimate import Estimate
from metapt.policies import Greedy
from metapt.runstate import Run

NO_AUTOCAST = contextlib.nullcontext


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def agnostic(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A set-up (untrained) agnostic run: sources = targets = mlm, mlm_shuffled."""
    run = runsetup.setup(tiny_run(tmp_path_factory.mktemp("selection")), resume=False)
    run.model.eval()
    return run


def draw(run: Run, per_task: int = 2) -> tuple[dict, list]:
    """Support batches of every source and target batches of every target, as `runsteps.draw_batches` draws."""
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


def constant(targets: list, normalize: str, run: Run, m: int) -> float:
    """The part of u(s) every source shares: M * (-sum of target losses at theta) for `none`."""
    if normalize == "relative":
        return 0.0
    return -m * float(selection.target_losses(run.model, selection.detached(run.model), targets).sum())


def test_exact_utilities_equal_a_hand_made_inner_step(agnostic: Run) -> None:
    run, alpha = agnostic, 0.05
    support, targets = draw(run)
    expected = reference(run.model, support, targets, alpha)
    for normalize in ("none", "relative"):
        got = selection.exact(run.model, support, targets, alpha, normalize, NO_AUTOCAST)
        assert list(got.values) == ["mlm", "mlm_shuffled"]
        assert got.columns == ["mlm", "mlm", "mlm_shuffled", "mlm_shuffled"]
        for source, value in expected[normalize].items():
            assert got.values[source] == pytest.approx(value, rel=1e-5, abs=1e-6), (normalize, source)
            # the per-batch terms add up to the utility: 2 support batches x 4 target batches
            assert got.terms[source].shape == (2, 4)
            total = constant(targets, normalize, run, 2) + float(got.terms[source].sum())
            assert total == pytest.approx(value, rel=1e-6, abs=1e-7)
    # The sources' utilities differ, so the comparison above is not trivially true.
    assert expected["none"]["mlm"] != pytest.approx(expected["none"]["mlm_shuffled"], abs=1e-6)
    assert all(v < 0 for v in expected["none"].values())  # -(sum of 4 positive MLM losses)


def test_scoring_never_writes_the_live_model(agnostic: Run) -> None:
    run = agnostic
    support, targets = draw(run, per_task=2)
    before = {n: p.detach().clone() for n, p in run.model.state_dict().items()}
    for step in selection.INNER_STEPS:
        selection.exact(run.model, support, targets, 0.5, "none", NO_AUTOCAST, step)
        selection.first_order(run.model, support, targets, 0.5, "relative", NO_AUTOCAST, step)
        selection.shared(run.model, support, 0.5, "relative", NO_AUTOCAST, step)
    after = run.model.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    assert all(p.grad is None for p in run.model.parameters())  # no gradient left on the live weights


def test_inner_step_passes_untouched_parameters_through(agnostic: Run) -> None:
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


def test_a_normalized_inner_step_moves_the_encoder_by_alpha(agnostic: Run) -> None:
    # theta' = theta - alpha g / |g_encoder|: every source moves the shared encoder the same distance,
    # whatever the size of its gradient; the plain SGD step moves it alpha |g_encoder|.
    run = agnostic
    params = selection.detached(run.model)
    lengths = {}
    for source in run.sources:
        names = selection.trainable(run.model, source)
        batch = run.streams["support"][source].next()
        for step in selection.INNER_STEPS:
            stepped, _ = selection.inner_step(
                run.model, params, names, source, batch, 0.01, NO_AUTOCAST, step
            )
            moved = {n: stepped[n] - params[n] for n in names if n.startswith("encoder.")}
            lengths[source, step] = selection.encoder_norm(moved)
    assert lengths["mlm", "normalized"] == pytest.approx(0.01, rel=1e-4)
    assert lengths["mlm_shuffled", "normalized"] == pytest.approx(0.01, rel=1e-4)
    assert lengths["mlm", "sgd"] != pytest.approx(lengths["mlm_shuffled", "sgd"], rel=1e-3)


@pytest.mark.parametrize("normalize", ["none", "relative"])
@pytest.mark.parametrize("step", selection.INNER_STEPS)
def test_first_order_matches_exact_for_a_small_alpha(agnostic: Run, normalize: str, step: str) -> None:
    # L_T(theta - alpha g_s) = L_T(theta) - alpha g_s.g_T + O(alpha^2). Measured over 12 seeds at
    # alpha = 1e-3: the estimates differ by at most 1.6% of the sources' summed gains (and by ~100%
    # at alpha = 0.1); below 1e-3 the float32 losses' resolution takes over.
    run = agnostic
    alpha = 1e-3 if step == "sgd" else 1e-3 * 3  # a normalized step is alpha long; sgd's ~alpha |g|
    support, targets = draw(run)  # M = 2 support batches per source, 2 batches per target
    args = (run.model, support, targets, alpha, normalize, NO_AUTOCAST, step)
    exact, first = selection.exact(*args), selection.first_order(*args)
    gains = {s: float(exact.terms[s].sum()) for s in run.sources}
    scale = sum(abs(g) for g in gains.values())
    assert scale > 1e-4  # real gains, far above float32 noise
    for source in run.sources:
        assert abs(first.values[source] - exact.values[source]) < 0.05 * scale, source
        # term by term too: every (support batch, target batch) pair
        assert torch.allclose(first.terms[source], exact.terms[source], atol=0.05 * scale / 4)
    gap_exact = exact.values["mlm"] - exact.values["mlm_shuffled"]
    gap_first = first.values["mlm"] - first.values["mlm_shuffled"]
    assert abs(gap_first - gap_exact) < 0.05 * scale
    if abs(gap_exact) > 0.1 * scale:  # a clear gap: the same task wins
        assert (gap_first > 0) == (gap_exact > 0)


@pytest.mark.parametrize("utility", ["exact", "first_order"])
def test_a_source_whose_support_batch_is_the_target_batch_wins(agnostic: Run, utility: str) -> None:
    # Support batch == target batch (same task, same head): the inner step is gradient descent on the
    # target loss itself, which beats a step on shuffled words through another head by a wide margin.
    run = agnostic
    target = run.streams["target"]["mlm"].next()
    support = {"mlm_shuffled": [run.streams["support"]["mlm_shuffled"].next()], "mlm": [target]}
    targets = [("mlm", target)]
    score = selection.exact if utility == "exact" else selection.first_order
    u = score(run.model, support, targets, 1e-2, "relative", NO_AUTOCAST).values
    assert u["mlm"] > 0 and u["mlm"] > 3 * abs(u["mlm_shuffled"])
    assert Greedy(0.0).choose(u, torch.Generator().manual_seed(0)).chosen == "mlm"


def test_first_order_and_exact_pick_the_same_task(agnostic: Run) -> None:
    run = agnostic
    target = run.streams["target"]["mlm"].next()
    support = {"mlm_shuffled": [run.streams["support"]["mlm_shuffled"].next()], "mlm": [target]}
    targets = [("mlm", target), ("mlm_shuffled", run.streams["target"]["mlm_shuffled"].next())]
    args = (run.model, support, targets, 1e-2, "none", NO_AUTOCAST)
    exact, first = selection.exact(*args).values, selection.first_order(*args).values
    assert max(exact, key=exact.get) == max(first, key=first.get) == "mlm"


def test_the_engine_scores_with_dropout_off_on_batches_shared_by_every_source(tmp_path: Path) -> None:
    # engine.select_task against a replay on a second, identical setup: the same batches scored in eval
    # mode give the same utilities to the last bit (with dropout on they would not).
    spec = tiny_run(tmp_path)
    run, replay = runsetup.setup(spec, resume=False), runsetup.setup(spec, resume=False)
    assert spec.model.dropout > 0 and run.model.training
    scored: list[list] = []
    exact = selection.exact

    def spy(model: torch.nn.Module, support: dict, targets: list, *args: object) -> Estimate:
        scored.append([model.training, targets])
        return exact(model, support, targets, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(selection, "exact", spy)
        picked = runsteps.select_run(run)
    assert run.model.training and not picked.explored  # back to train mode for the training steps
    assert scored[0][0] is False
    assert [t for t, _ in scored[0][1]] == ["mlm", "mlm_shuffled"]  # one batch per target, M = 1
    support, targets = draw(replay, per_task=1)
    replay.model.eval()
    replayed = selection.exact(replay.model, support, targets, spec.meta.inner_lr, "none", NO_AUTOCAST)
    assert picked.utilities == replayed.values
    assert picked.target_loss == replayed.target_loss
    assert picked.utility_se == {"mlm": None, "mlm_shuffled": None}  # one support batch: no error bar


# ------------------------------------------------------------------------------ standard errors
def test_the_standard_error_of_a_two_by_two_matrix_by_hand() -> None:
    # rows (support batches) sum to 3, 9: M var = 2 * 18 = 36; columns (target batches of one task)
    # to 4, 8: J var = 2 * 8 = 16; the additive fit's residuals are +-0.5: sigma_e^2 = 1, M J sigma_e^2
    # = 4. Var(u) = 36 + 16 - 4 = 48.
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]], dtype=torch.float64)
    estimate = Estimate({"a": 12.0}, {"a": x}, ["t", "t"], 0.0)
    assert estimate.se("a") == pytest.approx(48**0.5)
    # Two target tasks of one batch each: no target-side spread within a task, the support side only.
    estimate = Estimate({"a": 12.0}, {"a": x}, ["t", "u"], 0.0)
    assert estimate.se("a") == pytest.approx(36**0.5)
    # One support batch: nothing says how the next one would differ.
    assert Estimate({"a": 3.0}, {"a": x[:1]}, ["t", "t"], 0.0).se("a") is None


def test_relative_weights_by_hand_and_a_task_at_loss_zero_weighs_nothing() -> None:
    # w_j = 1 / (summed losses of column j's task); a task whose losses are all 0 has nothing to
    # lower and weighs 0 (it divided by zero: ZeroDivisionError).
    base = torch.tensor([1.0, 3.0, 0.0, 0.0, 2.0])
    columns = ["a", "a", "b", "b", "c"]
    w = selection._weights(base, columns, "relative")
    assert w.tolist() == [0.25, 0.25, 0.0, 0.0, 0.5]
    assert selection._weights(base, columns, "none").tolist() == [1.0] * 5


def test_a_gap_over_shared_target_batches_pairs_their_columns() -> None:
    # Both sources gain the same extra 10 on target batch 2: a target-batch effect that the
    # difference cancels, so the gap's error is far below the two errors combined.
    a = torch.tensor([[1.0, 11.0], [2.0, 12.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 10.0], [0.5, 10.5]], dtype=torch.float64)
    estimate = Estimate({"a": 26.0, "b": 21.0}, {"a": a, "b": b}, ["t", "t"], 0.0)
    # rows: a sums 12, 14 (M var 4), b 10, 11 (M var 1); column differences 2.5, 2.5 (var 0)
    assert estimate.gap_se("a", "b") == pytest.approx(5**0.5)
    assert estimate.gap_se("a", "b") < 0.1 * (estimate.se("a") ** 2 + estimate.se("b") ** 2) ** 0.5


@pytest.mark.parametrize("utility", ["exact", "first_order"])
def test_the_standard_error_predicts_the_spread_of_fresh_draws(agnostic: Run, utility: str) -> None:
    # 24 independent selections on the same weights, M = 4 support and 4 x 2 target batches each: the
    # mean reported standard error should match the standard deviation of the utilities themselves.
    run = agnostic
    score = selection.exact if utility == "exact" else selection.first_order
    values, errors = [], []
    for _ in range(24):
        support, targets = draw(run, per_task=4)
        estimate = score(run.model, support, targets, 1e-2, "relative", NO_AUTOCAST)
        values.append(estimate.values["mlm"])
        errors.append(estimate.se("mlm"))
    spread = torch.tensor(values).std().item()
    mean_error = sum(errors) / len(errors)
    assert 0.6 < mean_error / spread < 1.6, (mean_error, spread)


def test_the_shared_estimate_jackknifes_its_standard_error(tmp_path: Path) -> None:
    # The agnostic shared estimate scores support batches against each other, so rows and columns are
    # the same draws and the two-way decomposition would be far too small (measured: 0.02-0.35 of the
    # spread at M = 2 on the shipped default). A delete-one jackknife over the support batches is
    # calibrated from M = 3 (measured on the default: 0.8-1.2); with M = 2 there is no standard error.
    run = runsetup.setup(tiny_run(tmp_path), resume=False)  # its own streams: the same draws in any order
    run.model.eval()
    values, errors, gaps, gap_errors = [], [], [], []
    for _ in range(32):
        support, _ = draw(run, per_task=4)
        estimate = selection.shared(run.model, support, 1e-2, "relative", NO_AUTOCAST)
        values.append(estimate.values["mlm"])
        errors.append(estimate.se("mlm"))
        gaps.append(estimate.values["mlm"] - estimate.values["mlm_shuffled"])
        gap_errors.append(estimate.gap_se("mlm", "mlm_shuffled"))
    ratios = (
        sum(errors) / len(errors) / torch.tensor(values).std().item(),
        sum(gap_errors) / len(gap_errors) / torch.tensor(gaps).std().item(),
    )
    assert all(0.5 < r < 2.0 for r in ratios), ratios  # measured here: 1.49 and 1.11
    support, _ = draw(run, per_task=2)
    two = selection.shared(run.model, support, 1e-2, "relative", NO_AUTOCAST)
    assert two.se("mlm") is None and two.gap_se("mlm", "mlm_shuffled") is None


def test_exact_gains_under_bf16_autocast_match_float64(tmp_path: Path) -> None:
    # The scoring forwards run in fp32 whatever the autocast: a gain is a difference of two losses
    # ~1e4 times larger, which bf16 (8 bits of mantissa) would round away. Reference: the same
    # estimate with the whole model in float64.
    run = runsetup.setup(tiny_run(tmp_path), resume=False)
    run.model.eval()
    support, targets = draw(run, per_task=2)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    got = selection.exact(run.model, support, targets, 1e-2, "none", bf16)
    exact32 = selection.exact(run.model, support, targets, 1e-2, "none", NO_AUTOCAST)
    run.model.double()
    try:
        want = selection.exact(run.model, support, targets, 1e-2, "none", NO_AUTOCAST)
    finally:
        run.model.float()
    for source in run.sources:
        gain, reference_gain = float(exact32.terms[source].sum()), float(want.terms[source].sum())
        assert abs(gain - reference_gain) <= exact32.floor + 1e-3 * abs(reference_gain), source
        # the bf16 inner gradient points almost the same way: within 10% of the gain
        assert float(got.terms[source].sum()) == pytest.approx(reference_gain, rel=0.1), source
    assert 0 < exact32.floor < 1e-4


# ------------------------------------------------------------------------------------------ greedy
def choose(values: dict[str, float], epsilon: float, g: torch.Generator) -> tuple[str, bool]:
    picked = Greedy(epsilon).choose(values, g)
    return picked.chosen, picked.explored


def test_choose_without_exploration_is_the_argmax() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        assert choose({"a": -3.0, "b": 2.5, "c": 2.0}, 0.0, g) == ("b", False)


def test_choose_always_explores_at_epsilon_one() -> None:
    g = torch.Generator().manual_seed(0)
    picks = [choose({"a": 0.0, "b": 9.0, "c": 1.0}, 1.0, g) for _ in range(300)]
    assert all(explored for _, explored in picks)
    counts = {t: sum(p == t for p, _ in picks) for t in "abc"}
    assert all(70 <= n <= 130 for n in counts.values()), counts  # uniform: 100 each


def test_choose_breaks_ties_by_the_first_task() -> None:
    g = torch.Generator().manual_seed(0)
    assert choose({"a": 1.0, "b": 1.0}, 0.0, g) == ("a", False)
    assert choose({"x": 0.0, "b": 2.0, "a": 2.0}, 0.0, g) == ("b", False)


def test_choose_draws_the_same_random_numbers_whatever_epsilon() -> None:
    # A resumed run must see the same exploration draws whether or not earlier episodes explored.
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(5):
        choose({"a": 0.0, "b": 1.0}, 0.0, g0)
        choose({"a": 0.0, "b": 1.0}, 1.0, g1)
    assert torch.equal(g0.get_state(), g1.get_state())
