"""Cheap selection (metapt/probes.py, issue #14): the sketch by hand and in expectation, which
parameters `selection_params` covers, the store's inner products by hand, and the shared and
first-order estimates with sketches and top layers against hand-computed gradients. Tiny models."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
import torch

from metapt import probes, runsetup, selection
from metapt.kinds.heads import MLMHead
from metapt.model import MultiTaskModel, new_encoder
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.runstate import Run
from metapt.spec import ModelSpec

RUNS = Path(__file__).parent / "fixtures" / "runs"
NO_AUTOCAST = contextlib.nullcontext


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """An untrained agnostic run (mlm, mlm_shuffled; 1 layer, 32 wide) in eval mode."""
    spec = override(parse_run(RUNS / "agnostic.toml"), output_dir=tmp_path_factory.mktemp("probes") / "out")
    meta = dataclasses.replace(spec.meta, utility="first_order", support_batches=3)
    out = runsetup.setup(dataclasses.replace(spec, meta=meta), resume=False)
    out.model.eval()
    return out


def grads_of(model: torch.nn.Module, task: str, batch: dict, names: list[str]) -> dict[str, torch.Tensor]:
    """float64 gradients of `names` from the live model's backward."""
    loss = model(task, batch)[0]
    loss.backward()
    live = dict(model.named_parameters())
    out = {n: live[n].grad.double().clone() for n in names if live[n].grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def dot(a: dict, b: dict) -> float:
    return sum(float((a[n] * b[n]).sum()) for n in a if n in b)


# ---------------------------------------------------------------------------------------- sketch
def test_a_sketch_folds_signed_numbers_by_hand() -> None:
    sketch = probes.Sketch(5, 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    sketch.signs = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0])
    out = torch.empty(2)
    sketch.fold(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), out)
    # signed: 1, -2, 3, 4, -5; folded by 2: (1 + 3 - 5, -2 + 4) = (-1, 2)
    assert out.tolist() == [-1.0, 2.0]
    assert probes.Sketch(5, 5, None, torch.device("cpu")).dim == 0  # as wide as the vector: kept as is
    assert probes.Sketch(5, 0, None, torch.device("cpu")).width == 5


def test_sketched_inner_products_are_unbiased_with_an_error_of_one_over_sqrt_d() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4000, generator=g)
    b = 0.3 * a + torch.randn(4000, generator=g)
    exact, draws = float(a @ b), []
    for k in range(400):
        sketch = probes.Sketch(4000, 100, torch.Generator().manual_seed(k), torch.device("cpu"))
        sa, sb = torch.empty(100), torch.empty(100)
        sketch.fold(a.clone(), sa)
        sketch.fold(b.clone(), sb)
        draws.append(float(sa @ sb))
    draws_t = torch.tensor(draws)
    expected_sd = float(a.norm() * b.norm()) / 100**0.5  # ~ |a| |b| / sqrt(d)
    assert abs(float(draws_t.mean()) - exact) < 4 * expected_sd / 400**0.5
    assert 0.7 * expected_sd < float(draws_t.std()) < 1.3 * expected_sd


# ------------------------------------------------------------------------------ selection_params
def test_top_k_covers_the_top_layers_and_the_head_never_the_embeddings() -> None:
    spec = ModelSpec(hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32, max_length=16)
    model = MultiTaskModel(
        new_encoder(spec, 50, 0), {"mlm": MLMHead(16, 50)}, {"mlm": ("cross_entropy", 0.0)}
    )
    every = list(model.encoder_parameters())
    assert probes.shared_names(model, "all") == every
    top1 = probes.shared_names(model, "top:1")
    assert top1 and all(".layer.2." in n for n in top1)
    assert len(top1) == sum(".layer.2." in n for n in every)  # the whole top layer
    top2 = probes.shared_names(model, "top:2")
    assert {n.split(".layer.")[1].split(".")[0] for n in top2} == {"1", "2"}
    assert not any("embeddings" in n for n in probes.shared_names(model, "top:3"))
    assert probes.selected(model, "mlm", "top:1") == [*top1, *model.head_parameters("mlm")]
    for bad in ("top", "top:0", "top:x", "bottom:1", "ALL"):
        with pytest.raises(ValueError, match="expected 'all' or 'top:K'"):
            probes.top_layers(bad)


# ---------------------------------------------------------------------------------------- store
def test_a_store_adds_the_heads_only_for_the_same_task(run: Run) -> None:
    model = run.model
    g = torch.Generator().manual_seed(0)
    shapes = dict(model.named_parameters())

    def fake(task: str) -> dict[str, torch.Tensor]:
        return {n: torch.randn(shapes[n].shape, generator=g) for n in probes.selected(model, task)}

    grads = [("mlm", fake("mlm")), ("mlm", fake("mlm")), ("mlm_shuffled", fake("mlm_shuffled"))]
    store = probes.Store(model, "all", 3)
    for task, grad in grads:
        store.add(task, grad, 1.0)
    gram = store.gram()
    encoder = list(model.encoder_parameters())
    for i, (ti, a) in enumerate(grads):
        for j, (tj, b) in enumerate(grads):
            want = dot({n: a[n].double() for n in encoder}, {n: b[n].double() for n in encoder})
            if ti == tj:
                heads = list(model.head_parameters(ti))
                want += dot({n: a[n].double() for n in heads}, {n: b[n].double() for n in heads})
            assert float(gram[i, j]) == pytest.approx(want, rel=1e-5), (i, j)
    # a probe that is not kept: its inner products with the kept ones, the same numbers up to float32
    # rounding (a matrix-vector product against the Gram's matrix product: seen 1.2e-6 apart, relative);
    # a head term added or left out would move an entry by about |head grad|^2, far more than this
    probe = store.add("mlm", grads[0][1], 1.0, keep=False)
    assert len(store.probes) == 3
    rounding = 1e-6 * float(gram.diagonal().max())
    torch.testing.assert_close(store.dots(probe), gram[0], rtol=1e-5, atol=rounding)


# ------------------------------------------------------------------------------------ estimates
def test_top_layer_shared_terms_are_dot_products_of_the_top_layer_and_the_head(run: Run) -> None:
    model, alpha, m = run.model, 1e-2, 2
    support = {s: [run.streams["support"][s].next() for _ in range(m)] for s in run.sources}
    rule = "top:1"
    grads = {
        s: [grads_of(model, s, b, probes.selected(model, s, rule)) for b in bs] for s, bs in support.items()
    }
    got = selection.shared(model, support, alpha, "none", NO_AUTOCAST, probing=selection.Probing(rule))
    columns = [(t, h) for t in run.sources for h in grads[t]]
    for s in run.sources:
        for i, g in enumerate(grads[s]):
            for j, (t, h) in enumerate(columns):
                own = t == s
                want = 0.0 if (own and j == m * run.sources.index(s) + i) else alpha * dot(g, h)
                want *= m / (m - 1) if own else 1.0
                assert float(got.terms[s][i, j]) == pytest.approx(want, rel=1e-4, abs=1e-10), (s, i, j)
    assert not any("embeddings" in n for n in probes.selected(model, "mlm", rule))


def test_a_wide_sketch_is_the_exact_estimate_and_a_narrow_one_is_near_it(run: Run) -> None:
    model = run.model
    support = {s: [run.streams["support"][s].next() for _ in range(3)] for s in run.sources}
    numel = sum(p.numel() for p in model.encoder.parameters())
    args = (model, support, 1e-2, "none", NO_AUTOCAST)
    plain = selection.shared(*args)
    wide = selection.shared(*args, probing=selection.Probing(sketch=numel, generator=torch.Generator()))
    assert wide.values == plain.values  # bitwise: no folding at all
    errors, scale = [], 0.0
    for k in range(6):
        sketched = selection.shared(
            *args, probing=selection.Probing(sketch=numel // 8, generator=torch.Generator().manual_seed(k))
        )
        assert sketched.columns == plain.columns
        errors.append(torch.cat([sketched.terms[s] - plain.terms[s] for s in run.sources]))
        scale = max(scale, max(float(plain.terms[s].abs().max()) for s in run.sources))
    errors_t = torch.stack(errors)  # (6, 6, 6): the same batches, fresh signs
    assert float(errors_t.abs().max()) > 0  # folding changes them ...
    # ... by a random error that averages out over fresh signs (1/sqrt(d) of the norms, each draw)
    assert float(errors_t.mean(0).abs().max()) < float(errors_t.abs().max())
    assert float(errors_t.abs().max()) < scale


def test_first_order_with_a_sketch_keeps_only_its_target_probes(run: Run) -> None:
    model = run.model
    support = {s: [run.streams["support"][s].next() for _ in range(2)] for s in run.sources}
    targets = [(t, run.streams["target"][t].next()) for t in run.targets for _ in range(2)]
    plain = selection.first_order(model, support, targets, 1e-2, "relative", NO_AUTOCAST)
    numel = sum(p.numel() for p in model.encoder.parameters())
    probing = selection.Probing(sketch=numel + 1, sums=False)
    same = selection.first_order(model, support, targets, 1e-2, "relative", NO_AUTOCAST, probing=probing)
    assert same.values == plain.values and same.gradients == {} and set(plain.gradients) == set(run.sources)
