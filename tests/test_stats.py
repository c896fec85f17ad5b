"""The statistics of `metapt compare` (metapt/stats.py) against values computed by hand: Student's t
quantiles, paired differences with their 95% interval, and the FLOPs at which a mean held-out curve
reaches uniform's final loss, on a fixture of metrics.jsonl lines (tests/fixtures/compare/curves:
two seeds of uniform and of meta, 4 episodes, evaluated at episodes 2 and 4)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from metapt import stats
from metapt.report import read_metrics

CURVES = Path(__file__).resolve().parent / "fixtures" / "compare" / "curves"


def curve(scheduler: str, seed: int) -> list[stats.Point]:
    return stats.heldout_curve(read_metrics(CURVES / scheduler / f"seed-{seed}"))


@pytest.mark.parametrize(
    ("dof", "expected"),
    # Two-sided 95% critical values of Student's t as printed in statistics tables.
    [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (29, 2.0452), (100, 1.9840)],
)
def test_t_quantile_matches_the_tables(dof: int, expected: float) -> None:
    assert stats.t_quantile(0.975, dof) == pytest.approx(expected, abs=1e-4)
    assert stats.t_quantile(0.025, dof) == pytest.approx(-expected, abs=1e-4)


def test_t_quantile_rejects_what_has_no_quantile() -> None:
    with pytest.raises(ValueError, match="dof >= 1"):
        stats.t_quantile(0.975, 0)
    with pytest.raises(ValueError, match="0 < p < 1"):
        stats.t_quantile(1.0, 3)


def test_paired_difference_interval_and_wins_by_hand() -> None:
    # diffs 3, 4, -1: mean 2; sample sd sqrt((1 + 4 + 9) / 2) = sqrt(7); half width t(0.975, 2) sqrt(7) / sqrt(3).
    row = stats.paired([53.0, 56.0, 50.0], [50.0, 52.0, 51.0])
    half = 4.302652729749464 * math.sqrt(7) / math.sqrt(3)
    assert row["mean_diff"] == pytest.approx(2.0)
    assert row["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert row["ci95"] == pytest.approx([-4.5724, 8.5724], abs=1e-4)
    assert (row["wins"], row["ties"], row["losses"], row["n"]) == (2, 0, 1, 3)
    assert row["diffs"] == [3.0, 4.0, -1.0]
    one = stats.paired([1.0], [0.5])
    assert one["ci95"] is None and one["mean_diff"] == 0.5 and one["wins"] == 1
    assert stats.std([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3))
    with pytest.raises(ValueError, match="equally long"):
        stats.paired([1.0, 2.0], [1.0])


def test_one_seed_has_no_standard_deviation_null_in_json() -> None:
    """A sample std of one value does not exist: None (JSON null), not 0.0, which claims no spread."""
    import json

    assert stats.std([5.0]) is None and stats.std([]) is None
    assert stats.std([5.0, 7.0]) == pytest.approx(math.sqrt(2))
    one = stats.heldout_summary([curve("uniform", 1)])
    assert one["final"] == {"mean": 4.0, "std": None, "values": [4.0]}
    assert [row[2] for row in one["curve"]] == [None, None]
    assert '"std": null' in json.dumps(one)


def test_heldout_curve_counts_selection_and_training_flops_only() -> None:
    # uniform seed 2 trains 10, 10, 10, 12 FLOPs and evaluates at episodes 2 and 4 (eval FLOPs: not counted)
    assert curve("uniform", 2) == [(20.0, 5.2), (42.0, 4.2)]
    # meta spends 2 selection + 8 training FLOPs per episode
    assert curve("meta", 1) == [(20.0, 4.6), (40.0, 3.6)]


def test_mean_curve_interpolates_and_holds_a_finished_run_at_its_last_value() -> None:
    rows = stats.mean_curve([curve("uniform", 1), curve("uniform", 2)])
    # at 40, seed 2 is between (20, 5.2) and (42, 4.2): 5.2 - 20/22; at 42 seed 1 has ended at 4.0
    seed2_at_40 = 5.2 - 1.0 * 20 / 22
    assert [r[0] for r in rows] == [20.0, 40.0, 42.0]
    assert rows[0][1] == pytest.approx(5.1) and rows[0][2] == pytest.approx(math.sqrt(0.02))
    assert rows[1][1] == pytest.approx((4.0 + seed2_at_40) / 2)
    assert rows[2][1] == pytest.approx(4.1)


def test_time_to_threshold_by_hand() -> None:
    uniform = [curve("uniform", 1), curve("uniform", 2)]
    meta = [curve("meta", 1), curve("meta", 2)]
    # threshold: uniform's final losses 4.0 and 4.2 -> 4.1. Meta's mean curve: (20, 4.5), (40, 3.7);
    # it crosses 4.1 half-way: 30 FLOPs. Uniform's total FLOPs: (40 + 42) / 2 = 41.
    timing = stats.time_to_threshold(meta, uniform, 41.0)
    assert timing["threshold"] == pytest.approx(4.1)
    assert timing["flops_to_uniform"] == pytest.approx(30.0)
    assert timing["speedup_vs_uniform"] == pytest.approx(41.0 / 30.0)
    # Uniform against itself reaches its final mean only where its last seed ends (42 FLOPs).
    assert stats.time_to_threshold(uniform, uniform, 41.0)["flops_to_uniform"] == pytest.approx(42.0)
    # A curve that never gets as low: null, and so is the speedup.
    never = stats.time_to_threshold([[(10.0, 6.0), (50.0, 5.0)]], uniform, 41.0)
    assert never["flops_to_uniform"] is None and never["speedup_vs_uniform"] is None
    assert stats.time_to_threshold([[]], uniform, 41.0)["flops_to_uniform"] is None


def _entry(name: str, values: list[float], test: list[float]) -> dict:
    runs = [{"heldout_curve": curve(name, s)} for s in (1, 2)]
    score = {"validation": {"f1": {"values": values}}, "test": {"f1": {"values": test}}}
    total = stats.mean([c["heldout_curve"][-1][0] for c in runs])
    return {
        "downstream": {"t": score},
        "main_metric": {"t": "f1"},
        "runs": runs,
        "pretrain": {"total_flops": total},
        "heldout": stats.heldout_summary([r["heldout_curve"] for r in runs]),
    }


def test_against_uniform_writes_the_results_fields() -> None:
    entries = {
        "meta": _entry("meta", [53.0, 56.0], [50.0, 49.0]),
        "uniform": _entry("uniform", [50.0, 52.0], [50.0, 50.0]),
    }
    stats.against(entries, ["t"])
    meta, uniform = entries["meta"], entries["uniform"]
    row = meta["vs_uniform"]["t"]
    # diffs 3 and 4: mean 3.5, sd sqrt(0.5), t(0.975, 1) = 12.7062: half width 12.7062 * sqrt(0.5) / sqrt(2)
    half = 12.706204736174707 * math.sqrt(0.5) / math.sqrt(2)
    assert row["metric"] == "f1" and row["split"] == "validation"
    assert row["mean_diff"] == pytest.approx(3.5) and row["ci95"] == pytest.approx([3.5 - half, 3.5 + half])
    assert row["wins"] == 2
    assert row["test"]["mean_diff"] == pytest.approx(-0.5) and row["test"]["losses"] == 1
    assert meta["flops_to_uniform"] == pytest.approx(30.0)
    assert meta["speedup_vs_uniform"] == pytest.approx(41.0 / 30.0)
    assert uniform["vs_uniform"] is None and uniform["flops_to_uniform"] == pytest.approx(42.0)
    assert meta["heldout"]["final"] == {
        "mean": pytest.approx(3.7),
        "std": pytest.approx(math.sqrt(0.02)),
        "values": [3.6, 3.8],
    }
    alone = {"meta": _entry("meta", [53.0, 56.0], [50.0, 49.0])}
    stats.against(alone, ["t"])
    assert alone["meta"]["vs_uniform"] is None and alone["meta"]["speedup_vs_uniform"] is None
