"""`metapt bench`'s selection study (metapt/study.py, growth.py, ghost.py; issue #14): the reference's
sure rule and the agreement counts by hand, variants parsed from the command line, the bench leaving
the run's trajectory as `pretrain` makes it, the ghost inner product against materialised gradients,
and the replicated sources of `--sources`. Tiny runs; no timing is asserted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import MLM_TASK, TINY_MODEL, write

from metapt import bench, engine, ghost, growth, pointless, runsetup, selection, study
from metapt.cli import app
from metapt.errors import MetaptError
from metapt.estimate import Estimate
from metapt.model import batch_to
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.spec import MetaSpec

RUN = (
    """[run]
output_dir = "ckpt"
episodes = 4
device = "cpu"
"""
    + TINY_MODEL
    + """[meta]
setting = "agnostic"
sources = ["docs.toml", "shuffled.toml"]
utility = "first_order"
normalize = "relative"
inner_lr = 1e-3
support_batches = 2
support_batch_size = 2
train_batches = 3
policy = "bandit"
sketch = 1000
epsilon = 0.1
"""
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study-specs")
    for name, corpus in (("docs", "documents"), ("shuffled", "shuffled")):
        write(folder, f"{name}.toml", MLM_TASK.format(corpus=corpus))
    return write(folder, "run.toml", RUN)


def estimate(values: dict[str, float], terms: dict[str, list]) -> Estimate:
    tensors = {s: torch.tensor(t, dtype=torch.float64) for s, t in terms.items()}
    return Estimate(values, tensors, ["x", "x"], 1.0)


def test_the_reference_is_sure_when_its_leader_leads_by_more_than_two_standard_errors(
    spec_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a - b = [[1, 3], [3, 5]]: rows sum to 4, 8 (M var = 2 * 8 = 16), columns to 4, 8 (J var = 16),
    # an additive matrix (no interaction): gap SE = sqrt(32) = 5.657
    run = runsetup.setup(override(parse_run(spec_path), output_dir=tmp_path / "out"), resume=False)
    streams = study._streams(run, run.spec.meta, "reference")
    terms = {"docs": [[1.0, 3.0], [3.0, 5.0]], "shuffled": [[0.0, 0.0], [0.0, 0.0]]}
    for lead, sure in ((12.0, True), (10.0, False)):
        monkeypatch.setattr(
            selection, "exact", lambda *a, lead=lead, **k: estimate({"docs": lead, "shuffled": 0.0}, terms)
        )
        ref = study.reference(run, streams, 2)
        assert ref["leader"] == "docs" and ref["sure"] is sure
        assert ref["z"] == pytest.approx(lead / 32**0.5)


def test_agreement_counts_only_the_sure_episodes_by_hand() -> None:
    ref = [("a", True), ("a", True), ("b", False), ("b", True)]
    chosen = [["a", "b"], ["a", "a"], ["a", "b"], ["b", "b"]]  # per episode: variant 0, variant 1
    leaders = [["a", "a"], ["b", "a"], ["b", "b"], ["b", "a"]]
    records = [
        {
            "reference": {"leader": leader, "sure": sure},
            "train_seconds": 1.0,
            "variants": [
                {"chosen": c, "estimate_leader": e, "policy_leader": c, "seconds": 0.25 * (k + 1)}
                for k, (c, e) in enumerate(zip(cs, es))
            ],
        }
        for (leader, sure), cs, es in zip(ref, chosen, leaders)
    ]
    rows = study.rows(records, ["spec", "other"], [{}, {}])
    # variant 0 chose a, a, b in the 3 sure episodes (leaders a, a, b): 3/3; over all 4: a, a, a, b vs
    # a, a, b, b: 3/4; its estimate led a, b, b: 2/3
    assert (rows[0]["agreement_sure"], rows[0]["agreement_all"], rows[0]["estimate_agreement_sure"]) == (
        1.0,
        0.75,
        pytest.approx(2 / 3),
    )
    # variant 1: b, a, b in the sure ones -> 2/3; all: b, a, b, b -> 3/4; estimate a, a, a -> 2/3
    assert (rows[1]["agreement_sure"], rows[1]["agreement_all"]) == (pytest.approx(2 / 3), 0.75)
    assert rows[1]["estimate_agreement_sure"] == pytest.approx(2 / 3)
    assert rows[0]["policy_agreement_sure"] == 1.0 and rows[1]["policy_agreement_sure"] == pytest.approx(
        2 / 3
    )
    assert rows[0]["selection_share"] == pytest.approx(0.25 / 1.25)
    assert rows[1]["selection_share"] == pytest.approx(0.5 / 1.5)


def test_a_held_choice_costs_nothing_and_counts_against_each_episodes_reference_by_hand() -> None:
    # select_every = 2: chosen in episodes 1 and 3 (0.5 s each), held in 2 and 4 (0 s); training 1 s
    refs = [("a", True), ("b", True), ("b", True), ("b", False)]
    picks = [("a", True), ("a", False), ("b", True), ("b", False)]
    records = [
        {
            "reference": {"leader": leader, "sure": sure},
            "train_seconds": 1.0,
            "variants": [
                {
                    "chosen": c,
                    "estimate_leader": c,
                    "policy_leader": c,
                    "seconds": 0.5 if made else 0.0,
                    "selected": made,
                }
            ],
        }
        for (leader, sure), (c, made) in zip(refs, picks)
    ]
    (row,) = study.rows(records, ["select_every=2"], [{}])
    assert row["selections"] == 2 and row["selection_seconds"] == 0.5  # per selection made
    assert row["selection_share"] == pytest.approx(1.0 / (1.0 + 4.0))  # over all 4 episodes' time
    # the choice in effect a, a, b against the sure leaders a, b, b: episode 2's held a misses
    assert row["agreement_sure"] == pytest.approx(2 / 3) and row["agreement_all"] == 0.75
    # a variant that held the warm-up's choice through every timed episode: no selection to time
    for r in records:
        r["variants"][0].update(seconds=0.0, selected=False)
    (row,) = study.rows(records, ["select_every=12"], [{}])
    assert (row["selections"], row["selection_seconds"], row["selection_share"]) == (0, None, 0.0)


def test_variants_parse_meta_keys_and_refuse_unknown_ones() -> None:
    base = MetaSpec()
    got = study.parse_variant("support_batch_size=8, policy=greedy,reuse_training=true,sketch=0", base)
    assert (got.support_batch_size, got.policy, got.reuse_training, got.sketch) == (8, "greedy", True, 0)
    assert study.parse_variant("", base) == base
    with pytest.raises(MetaptError, match="'nokey=1' is not KEY=VALUE over a \\[meta\\] key"):
        study.parse_variant("nokey=1", base)
    with pytest.raises(
        MetaptError, match="--variant: 'policy=best': 'best' is not allowed; allowed: bandit, greedy"
    ):
        study.parse_variant("policy=best", base)
    with pytest.raises(MetaptError, match="--variant: 'support_batch_size=-1': -1 is out of range"):
        study.parse_variant("support_batch_size=-1", base)
    with pytest.raises(MetaptError, match="--variant: 'sketch=x': 'x' is not an integer"):
        study.parse_variant("sketch=x", base)


def test_the_bench_leaves_the_trajectory_as_pretrain_makes_it(spec_path: Path, tmp_path: Path) -> None:
    # fitted heads, one untimed episode, then the timed ones: the study, the comparisons and the
    # plain twin draw from their own streams and RNGs, so the engine's choices are pretrain's
    spec = override(parse_run(spec_path), output_dir=tmp_path / "out")
    variants = ["policy=greedy", "sketch=0", "select_every=2"]
    result = bench.bench(spec, episodes=3, variants=variants, reference=2, sources=[1, 3], check=True)
    engine.pretrain(spec)
    made = [
        json.loads(line)["chosen"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    ]
    assert result["choices"] == made[1:4]
    names = [row["name"] for row in result["variants"]]
    assert names == ["spec", *variants, study.again(2)]
    # select_every = 2 selects as the engine would: in the warm-up episode 0 (untimed), then in
    # episode 2 of the timed 1, 2, 3, holding the warm-up's choice in 1 and episode 2's in 3; the others
    # (the second reference too, whatever the spec's select_every) select in all three
    assert [row["selections"] for row in result["variants"]] == [3, 3, 3, 1, 3]
    held = result["variants"][3]
    assert held["select_every"] == 2 and held["choices"][2] == held["choices"][1]
    second = result["variants"][-1]  # --reference-check: the reference again, on its own batches
    assert (
        second["estimator"] == "exact" and second["policy"] == "greedy" and second["support_batch_size"] == 0
    )
    sure = [i for i, z in enumerate(result["reference_z"]) if z is not None and z > study.SURE]
    hits = sum(second["choices"][i] == result["reference_leaders"][i] for i in sure)
    assert result["reference_self_agreement"] == (hits / len(sure) if sure else None)
    assert result["variants"][0]["estimator"] == "shared" and result["variants"][0]["sketch"] == 1000
    assert result["reference_episodes"] == 3 and len(result["reference_z"]) == 3
    assert 0.0 <= result["reference_sure_share"] <= 1.0
    for row in result["variants"]:
        assert 0.0 < row["selection_share"] < 1.0 and len(row["choices"]) == 3
        assert row["memory_ratio"] is None or row["memory_ratio"] > 0
    assert [g["sources"] for g in result["sources"]] == [1, 3]
    assert set(result["targets"]) == set(bench.TARGETS)
    assert [g["batch_size"] for g in result["ghost"]] == [1, 2, 4]  # 1 example, the probe, the batch


def test_the_second_reference_scores_batches_of_its_own(spec_path: Path, tmp_path: Path) -> None:
    # the ceiling is only a ceiling if the second reference is an independent draw of the first
    run = runsetup.setup(override(parse_run(spec_path), output_dir=tmp_path / "out"), resume=False)
    lab = study.Study(run, [study.again(2)], 2)
    meta = lab.views[1].spec.meta
    assert (meta.utility, meta.support_batches, meta.target_batches, meta.policy) == ("exact", 2, 2, "greedy")
    holding = dataclasses.replace(run.spec.meta, select_every=4)  # the ceiling is scored every episode
    assert study.parse_variant(study.again(2), holding).select_every == 1
    for group in ("support", "target"):
        for task in run.sources:
            mine, reference = lab.views[1].streams[group][task].next(), lab.ref_streams[group][task].next()
            assert mine["input_ids"].shape == reference["input_ids"].shape  # training-sized, both
            assert not torch.equal(mine["input_ids"], reference["input_ids"])


def test_a_ghost_inner_product_is_the_materialised_one(spec_path: Path, tmp_path: Path) -> None:
    run = runsetup.setup(override(parse_run(spec_path), output_dir=tmp_path / "out"), resume=False)
    stream = run.streams["train"]["docs"]
    first, second = (batch_to(stream.next(), run.device) for _ in range(2))
    got = ghost.measure(run.model, "docs", first, second)
    assert got["ghost_value"] == pytest.approx(got["materialised_value"], rel=1e-5)
    assert got["ghost_max_error"] < 1e-5
    # 1 layer: query, key, value, attention output (32 -> 32), intermediate (32 -> 64), output (64 -> 32)
    assert got["ghost_layers"] == 6
    tokens = int(first["attention_mask"].sum())
    assert got["ghost_tokens"] == tokens
    assert got["ghost_factor_bytes"] == 4 * tokens * (4 * 64 + 96 + 96)
    assert got["ghost_gradient_bytes"] == 4 * (4 * 32 * 32 + 2 * 32 * 64)
    assert got["ghost_breakeven_tokens"] == pytest.approx(32 * 64 / 96)
    assert all(p.grad is None for p in run.model.parameters())


def test_sources_are_replicated_under_new_names(spec_path: Path) -> None:
    spec = parse_run(spec_path)
    five = growth.replicate(spec, 5)
    assert [t.name for t in five.sources] == ["docs", "shuffled", "docs-2", "shuffled-2", "docs-3"]
    assert five.meta.sources == ("docs", "shuffled", "docs-2", "shuffled-2", "docs-3")
    assert dataclasses.replace(five.sources[2], name="docs") == spec.sources[0]  # the same task otherwise


def test_bad_bench_options_exit_2(runner, spec_path: Path) -> None:
    result = runner.invoke(app, ["bench", str(spec_path), "--sources", "4,x"])
    assert result.exit_code == 2 and "--sources '4,x': expected comma-separated counts >= 1" in result.output
    result = runner.invoke(app, ["bench", str(spec_path), "--variant", "nokey=1", "--episodes", "1"])
    assert result.exit_code == 2 and "'nokey=1' is not KEY=VALUE" in result.output
    assert "setting up the run" not in result.output  # told before anything is built
    result = runner.invoke(app, ["bench", str(spec_path), "--variant", "select_every=0"])
    assert result.exit_code == 2 and "'select_every=0': 0 is out of range" in result.output
    result = runner.invoke(app, ["bench", str(spec_path), "--reference", "0", "--reference-check"])
    assert result.exit_code == 2 and "--reference-check compares two references" in result.output
    # the default's response selection has in-batch negatives: one example per probe leaves none
    result = runner.invoke(app, ["bench", "agnostic", "--variant", "support_batch_size=1,policy=greedy"])
    assert (
        result.exit_code == 2
        and "'support_batch_size=1': 1 leaves source 'response_selection'" in result.output
    )
    assert "setting up the run" not in result.output


def _warns(spec_path: Path, key: str, **meta: object) -> bool:
    """Whether the run spec with these [meta] changes is warned about, naming `key`."""
    spec = parse_run(spec_path)
    changed = dataclasses.replace(spec, meta=dataclasses.replace(spec.meta, **meta))
    return any(key in w for w in pointless.run_warnings(changed, {}))


def test_target_batches_are_said_to_do_nothing_for_the_shared_estimate(spec_path: Path) -> None:
    # agnostic first order with M >= 2 takes the shared estimate: it draws no target batches
    assert _warns(spec_path, "target_batches", target_batches=8)
    assert not _warns(spec_path, "target_batches", target_batches=0)
    assert not _warns(spec_path, "target_batches", target_batches=8, utility="exact")
    assert not _warns(spec_path, "target_batches", target_batches=8, support_batches=1)


def test_refit_heads_every_without_fitting_steps_is_said_to_do_nothing(spec_path: Path) -> None:
    assert _warns(spec_path, "refit_heads_every", refit_heads_every=2, head_fit_steps=0)
    assert not _warns(spec_path, "refit_heads_every", refit_heads_every=2)
    assert not _warns(spec_path, "refit_heads_every", refit_heads_every=0, head_fit_steps=0)
