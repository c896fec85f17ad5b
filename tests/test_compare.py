"""`metapt compare` and `metapt report` on a tiny agnostic run (1-layer, 32-wide BERT, two 40-example
masked-LM sources, 2 episodes of 1 batch) with a tiny synthetic CoNLL-2012 SRL task downstream."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import write
from typer.testing import CliRunner

from metapt import stats
from metapt.cli import app
from metapt.errors import MetaptError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "compare"
RUN = FIXTURES / "run.toml"
SRL = FIXTURES / "tasks" / "srl.toml"
SOURCES = ["mlm", "mlm_shuffled"]
PRETRAIN_KEYS = {"selection_flops", "train_flops", "total_flops", "wall_seconds", "episodes", "counts"}


def _assert_drawn(path: Path) -> None:
    """A real PNG with content: big enough, and not one flat colour."""
    from matplotlib.image import imread

    pixels = imread(path)  # (H, W, 3 or 4), floats in [0, 1]
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert pixels[..., :3].std() > 0.05


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`metapt compare` with meta and uniform, two seeds, 2 episodes each, finetuned on SRL."""
    out = tmp_path_factory.mktemp("compare") / "out"
    result = CliRunner(env={"METAPT_DEBUG": "0", "COLUMNS": "400"}).invoke(
        app,
        ["compare", str(RUN), "--schedulers", "meta,uniform", "--seeds", "1,2"]
        + ["--downstream", str(SRL), "--output-dir", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert "| meta | 2 |" in result.stdout
    return out


def test_compare_writes_results_json_with_every_field(compared: Path) -> None:
    results = json.loads((compared / "results.json").read_text())
    assert list(results["schedulers"]) == ["meta", "uniform"]
    assert results["downstream_tasks"] == ["srl-tiny"] and results["sources"] == SOURCES
    assert results["episodes"] == 2 and results["budget"] is None and results["seeds"] == [1, 2]
    for name, entry in results["schedulers"].items():
        assert entry["seeds"] == [1, 2]
        pre = entry["pretrain"]
        assert PRETRAIN_KEYS <= set(pre)
        assert pre["train_flops"] > 0 and pre["wall_seconds"] > 0
        assert pre["total_flops"] == pre["selection_flops"] + pre["train_flops"]
        assert pre["episodes"] == 2 and sum(pre["counts"].values()) == 2
        assert set(pre["counts"]) == set(SOURCES)
        assert entry["main_metric"] == {"srl-tiny": "f1"}
        srl = entry["downstream"]["srl-tiny"]
        assert set(srl) == {"validation", "test"}  # synthetic data has a labelled test split
        for split in srl.values():
            assert set(split) == {"precision", "recall", "f1"}
            for score in split.values():
                assert set(score) == {"mean", "std", "values"}
                assert len(score["values"]) == 2
                assert score["mean"] == pytest.approx(sum(score["values"]) / 2)
                assert score["std"] == pytest.approx(abs(score["values"][0] - score["values"][1]) / 2**0.5)
        for k, seed in enumerate((1, 2)):
            run = compared / name / f"seed-{seed}"
            finetuned = json.loads((run / "finetune" / "srl-tiny" / "results.json").read_text())
            assert finetuned["metrics"]["test"]["f1"] == srl["test"]["f1"]["values"][k]  # per-seed values
            assert (run / "metrics.jsonl").is_file() and (run / "report.png").is_file()
    meta, uniform = results["schedulers"]["meta"]["pretrain"], results["schedulers"]["uniform"]["pretrain"]
    assert meta["selection_flops"] > 0 and uniform["selection_flops"] == 0
    # Same seed, same data, same first batches: training FLOPs are identical when the same tasks ran.
    assert meta["total_flops"] > uniform["total_flops"]


def test_compare_writes_paired_differences_and_time_to_threshold(compared: Path) -> None:
    results = json.loads((compared / "results.json").read_text())
    assert results["reference"] == "uniform"
    meta, uniform = results["schedulers"]["meta"], results["schedulers"]["uniform"]
    row = meta["vs_uniform"]["srl-tiny"]
    assert row["metric"] == "f1" and row["split"] == "validation" and row["n"] == 2
    mine, theirs = (e["downstream"]["srl-tiny"]["validation"]["f1"]["values"] for e in (meta, uniform))
    assert row["diffs"] == pytest.approx([a - b for a, b in zip(mine, theirs)])
    assert row["wins"] == sum(a > b for a, b in zip(mine, theirs))
    half = 12.7062047 * stats.std(row["diffs"]) / 2**0.5  # t(0.975, 1 degree of freedom)
    assert row["ci95"] == pytest.approx([row["mean_diff"] - half, row["mean_diff"] + half], abs=1e-4)
    assert set(row["test"]) >= {"mean_diff", "ci95", "wins"}
    assert uniform["vs_uniform"] is None
    for entry in (meta, uniform):
        # 2 episodes, eval_every 10: one held-out evaluation per run, at its end
        assert [len(r["heldout_curve"]) for r in entry["runs"]] == [1, 1]
        for r in entry["runs"]:
            flops, loss = r["heldout_curve"][0]
            assert flops == r["total_flops"] and loss == r["heldout_final"]
        assert entry["heldout"]["final"]["values"] == [r["heldout_final"] for r in entry["runs"]]
        assert "flops_to_uniform" in entry and "speedup_vs_uniform" in entry
    threshold = stats.mean(uniform["heldout"]["final"]["values"])
    assert uniform["heldout"]["threshold"] == pytest.approx(threshold)
    timing = stats.time_to_threshold(
        [r["heldout_curve"] for r in meta["runs"]],
        [r["heldout_curve"] for r in uniform["runs"]],
        uniform["pretrain"]["total_flops"],
    )
    assert meta["flops_to_uniform"] == timing["flops_to_uniform"]
    assert meta["speedup_vs_uniform"] == timing["speedup_vs_uniform"]
    text = (compared / "results.md").read_text()
    assert "## Against uniform, paired over seeds" in text and "## Per seed" in text
    assert "| meta | srl-tiny | f1 |" in text
    assert "| scheduler | task | split | seed 1 | seed 2 | mean ± std |" in text


def test_compare_writes_a_markdown_table_and_a_plot(compared: Path) -> None:
    text = (compared / "results.md").read_text()
    assert "| scheduler | episodes | selection FLOPs | training FLOPs | total FLOPs |" in text
    assert "srl-tiny f1 (validation)" in text and "srl-tiny f1 (test)" in text
    rows = [line for line in text.splitlines() if line.startswith(("| meta | 2 |", "| uniform | 2 |"))]
    chosen = [
        line for line in text.splitlines() if line.startswith(("| meta |", "| uniform |")) and "%)" in line
    ]
    assert len(rows) == 2 and len(chosen) == 2  # the scores table and the chosen-tasks table
    assert "| uniform | 2 | 0 |" in text
    header = next(line for line in text.splitlines() if line.startswith("| scheduler | episodes |"))
    assert "| held-out loss (final) | FLOPs to uniform's held-out loss (speedup) |" in header
    _assert_drawn(compared / "compare.png")


def test_schedulers_start_from_the_same_weights_and_vocabulary() -> None:
    """The comparison is fair only if the run seed alone fixes the initial encoder and WordPiece."""
    from metapt.compare_plan import with_scheduler
    from metapt.resolve import parse_run
    from metapt.runsetup import setup
    from metapt.runspec import override

    spec = parse_run(RUN)

    def initial(scheduler: str, seed: int) -> tuple[dict, dict]:
        run = setup(override(with_scheduler(spec, scheduler), seed=seed), resume=False)
        return run.model.encoder.state_dict(), run.tokenizer.get_vocab()

    meta_weights, meta_vocab = initial("meta", 0)
    for scheduler in ("uniform", "single"):
        weights, vocab = initial(scheduler, 0)
        assert vocab == meta_vocab
        assert weights.keys() == meta_weights.keys()
        assert all(weights[k].equal(meta_weights[k]) for k in weights)
    other, _ = initial("meta", 1)
    assert not other["embeddings.word_embeddings.weight"].equal(
        meta_weights["embeddings.word_embeddings.weight"]
    )


def test_a_budget_stops_every_scheduler_at_about_the_same_flops(compared: Path, tmp_path: Path) -> None:
    from metapt.compare import compare
    from metapt.resolve import parse_run

    first, second = (
        json.loads(line)
        for line in (compared / "meta" / "seed-1" / "metrics.jsonl").read_text().splitlines()[:2]
    )
    # the first episode also pays for fitting the heads before the first selection
    meta_episode = second["selection_flops"] + second["train_flops"]
    budget = first["selection_flops"] + first["train_flops"] + 1.5 * meta_episode
    results = compare(parse_run(RUN), ["meta", "uniform"], [1], [], tmp_path / "out", budget=budget)
    meta, uniform = (results["schedulers"][s]["pretrain"] for s in ("meta", "uniform"))
    assert results["budget"] == budget and results["episodes"] is None
    # The engine stops after the episode that reaches the budget: each total is in [budget, +1 episode).
    assert budget <= meta["total_flops"] < budget + meta_episode
    assert budget <= uniform["total_flops"] < budget + first["train_flops"] * 1.5
    assert meta["episodes"] == 3  # selection counts: the first and 1.5 meta episodes of budget buy 3
    assert uniform["episodes"] > 2 * meta["episodes"]
    assert sum(uniform["counts"].values()) == uniform["episodes"]
    for entry in results["schedulers"].values():
        assert entry["runs"][0]["budget_reached"] and entry["downstream"] == {}
    assert not (tmp_path / "out" / ".probe").exists()
    assert "a budget of" in (tmp_path / "out" / "results.md").read_text()


def test_report_writes_a_png_and_an_html_page(compared: Path, runner: CliRunner, tmp_path: Path) -> None:
    run = compared / "meta" / "seed-1"
    png = tmp_path / "meta.png"
    result = runner.invoke(app, ["report", str(run), "--output", str(png)])
    assert result.exit_code == 0, result.output
    _assert_drawn(png)
    page = tmp_path / "meta.html"
    result = runner.invoke(app, ["report", str(run), "--output", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert "data:image/png;base64," in html
    counts = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["counts"]
    for task in SOURCES:
        assert f"<tr><td>{task}</td><td>{counts.get(task, 0)}</td>" in html


def test_report_title_says_when_a_run_has_fewer_episodes_than_asked(
    compared: Path, runner: CliRunner, tmp_path: Path
) -> None:
    # A run stopped by Ctrl-C read "279 episodes", as if that had been all of it.
    run = tmp_path / "run"
    shutil.copytree(compared / "meta" / "seed-1", run, symlinks=True)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    asked = json.loads((run / "metapt.json").read_text())["episodes"]
    assert len(lines) == asked >= 2
    page = tmp_path / "full.html"
    assert runner.invoke(app, ["report", str(run), "--output", str(page)]).exit_code == 0
    assert f": {asked} episodes (" in page.read_text()
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert runner.invoke(app, ["report", str(run), "--output", str(page)]).exit_code == 0
    assert f": {asked - 1} of the {asked} episodes asked for (" in page.read_text()


def test_report_defaults_to_run_dir_report_png(compared: Path, runner: CliRunner, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text((compared / "uniform" / "seed-1" / "metrics.jsonl").read_text())
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    _assert_drawn(run / "report.png")


def test_report_without_metrics_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "no metrics.jsonl" in result.stderr and "Traceback" not in result.output


def test_report_on_a_malformed_line_names_it(runner: CliRunner, tmp_path: Path) -> None:
    write(tmp_path, "metrics.jsonl", '{"episode": 1, "chosen": "mlm", "train_loss": 1.0}\nnot json\n')
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path / 'metrics.jsonl'}:2: not an episode record" in result.stderr


def test_report_on_a_record_without_a_training_loss_names_it(runner: CliRunner, tmp_path: Path) -> None:
    good = '{"episode": 1, "chosen": "mlm", "train_loss": 1.0}\n'
    for bad in ('{"episode": 2, "chosen": "mlm"}', '{"episode": 2, "chosen": 5, "train_loss": 1.0}'):
        write(tmp_path, "metrics.jsonl", f"{good}{bad}\n")
        result = runner.invoke(app, ["report", str(tmp_path)])
        assert result.exit_code == 2, result.output  # was 1: internal error: KeyError: 'train_loss'
        assert f"{tmp_path / 'metrics.jsonl'}:2: not an episode record" in result.stderr


def test_report_refuses_an_unknown_format(runner: CliRunner, tmp_path: Path) -> None:
    write(tmp_path, "metrics.jsonl", '{"episode": 1, "chosen": "mlm", "train_loss": 1.0}\n')
    result = runner.invoke(app, ["report", str(tmp_path), "--output", str(tmp_path / "r.pdf")])
    assert result.exit_code == 2
    assert "unknown format '.pdf'; allowed: .png, .html" in result.stderr


def test_report_without_matplotlib_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from metapt.report import report

    write(tmp_path, "metrics.jsonl", '{"episode": 1, "chosen": "mlm", "train_loss": 1.0}\n')
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(MetaptError, match=r'pip install "metapt\[plot\]"'):
        report(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--schedulers", "meta,unifrom"],
            "unknown scheduler 'unifrom' (did you mean 'uniform'?); allowed: meta",
        ),
        (["--schedulers", "meta,meta"], "each scheduler may appear once"),
        (
            ["--schedulers", "meta:bandti"],
            "unknown scheduler 'meta:bandti' (did you mean 'meta:bandit'?)",
        ),
        (["--schedulers", "uniform:bandit"], "unknown scheduler 'uniform:bandit'"),
        (["--schedulers", "meta:"], "unknown scheduler 'meta:'"),
        (["--seeds", "1,x"], "--seeds '1,x': expected comma-separated integers"),
        (["--seeds", "2,2"], "expected distinct non-negative integers"),
        (["--budget", "1e9", "--episodes", "2"], "--budget and --episodes both given"),
        (["--budget", "0"], "--budget 0.0: expected a positive number of FLOPs"),
        (
            ["--downstream", str(FIXTURES / "tasks" / "mlm.toml")],
            "'mlm' is a masked_lm task, a pretraining objective",
        ),
        (["--downstream", "no-such-task"], "unknown task 'no-such-task'"),
    ],
)
def test_compare_bad_input_exits_2(runner: CliRunner, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["compare", str(RUN), "--output-dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "meta").exists()  # refused before any pretraining


def test_compare_a_budget_below_one_episode_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "compare",
            str(RUN),
            "--schedulers",
            "meta,uniform",
            "--budget",
            "1e6",
            "--output-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "--budget 1e+06 FLOPs is smaller than one episode (meta needs" in result.stderr
    assert "uniform needs" in result.stderr and "or use --episodes" in result.stderr


def test_markdown_bolds_every_scheduler_tied_on_validation_only() -> None:
    from metapt.verdict import best_by_validation, markdown

    def entry(val: float, test: float) -> dict:
        pre = {"selection_flops": 0.0, "train_flops": 1e6, "total_flops": 1e6, "wall_seconds": 1.0}
        pre |= {"selection_seconds": 0.0, "train_seconds": 1.0, "episodes": 2, "counts": {"a": 2}}
        scores = {"validation": {"f1": {"mean": val, "std": 0.5, "values": []}}}
        scores["test"] = {"f1": {"mean": test, "std": 0.0, "values": []}}
        return {"pretrain": pre, "downstream": {"t": scores}, "main_metric": {"t": "f1"}, "runs": []}

    results = {
        "run_spec": "run.toml",
        "setting": "agnostic",
        "sources": ["a"],
        "seeds": [1, 2],
        "budget": None,
        "episodes": 2,
        "downstream_tasks": ["t"],
        "schedulers": {"meta": entry(70.0, 10.0), "uniform": entry(70.0, 90.0), "single": entry(60.0, 99.0)},
    }
    results["best"] = best_by_validation(results)
    assert results["best"] == {"t": ["meta", "uniform"]}  # the test score of single plays no part
    text = markdown(results)
    assert (
        "| meta | 2 | 0 | 1e+06 | 1e+06 | 1.0 (0.0 + 1.0) | - | - | **70.00 ± 0.50** | 10.00 ± 0.00 |" in text
    )
    assert (
        "| single | 2 | 0 | 1e+06 | 1e+06 | 1.0 (0.0 + 1.0) | - | - | 60.00 ± 0.50 | 99.00 ± 0.00 |" in text
    )
    assert "| meta | 2 (100%) |" in text


def test_a_meta_policy_variant_is_the_meta_scheduler_with_that_policy() -> None:
    from metapt.compare_plan import folder, parse_schedulers, with_scheduler
    from metapt.resolve import parse_run

    assert parse_schedulers("meta:greedy, meta:bandit,uniform") == ["meta:greedy", "meta:bandit", "uniform"]
    spec = parse_run(RUN)
    bandit = with_scheduler(spec, "meta:bandit").meta
    assert (bandit.scheduler, bandit.policy) == ("meta", "bandit")
    plain = with_scheduler(spec, "meta").meta
    assert (plain.scheduler, plain.policy) == ("meta", spec.meta.policy)
    assert folder("meta:bandit") == "meta-bandit"


def test_markdown_with_one_seed_prints_no_standard_deviation() -> None:
    """One seed: a sample std does not exist, so no cell claims "± 0.00"; two seeds keep mean ± std."""
    from metapt.verdict import markdown

    def entry(val: float, loss: float) -> dict:
        pre = {"selection_flops": 0.0, "train_flops": 1e6, "total_flops": 1e6, "wall_seconds": 1.0}
        pre |= {"selection_seconds": 0.0, "train_seconds": 1.0, "episodes": 2, "counts": {"a": 2}}
        scores = {"validation": {"f1": {"mean": val, "std": 0.0, "values": [val]}}}
        heldout = {"final": {"mean": loss, "std": 0.0, "values": [loss]}}
        return {"pretrain": pre, "downstream": {"t": scores}, "main_metric": {"t": "f1"}, "runs": []} | {
            "heldout": heldout
        }

    results = {
        "run_spec": "run.toml",
        "setting": "agnostic",
        "sources": ["a"],
        "seeds": [1],
        "budget": None,
        "episodes": 2,
        "downstream_tasks": ["t"],
        "reference": None,
        "best": {"t": ["meta"]},
        "schedulers": {"meta": entry(6.0, 5.5444)},
    }
    text = markdown(results)
    assert "± 0" not in text
    assert (
        "| meta | 2 | 0 | 1e+06 | 1e+06 | 1.0 (0.0 + 1.0) | 5.544 (1 seed) | - | **6.00 (1 seed)** | - |"
        in text
    )
    assert "| meta | t | validation | 6.00 | 6.00 (1 seed) |" in text
    assert "| meta | held-out loss | final | 5.544 | 5.544 (1 seed) |" in text
    # two seeds: 5 and 7 -> mean 6.00, sample std sqrt(2) = 1.41
    results["seeds"] = [1, 2]
    results["schedulers"]["meta"]["downstream"]["t"]["validation"]["f1"] = {
        "mean": 6.0,
        "std": 2**0.5,
        "values": [5.0, 7.0],
    }
    assert "| meta | t | validation | 5.00 | 7.00 | 6.00 ± 1.41 |" in markdown(results)
    # mean episode counts over seeds to two decimals (they printed as 1.66667 (83%))
    results["sources"] = ["a", "b"]
    results["schedulers"]["meta"]["pretrain"]["counts"] = {"a": 5 / 3, "b": 1 / 3}
    assert "| meta | 1.67 (83%) | 0.33 (17%) |" in markdown(results)


def _one_seed_entry() -> dict:
    """compare's summarise of one seed's run and finetuning."""
    from metapt.compare import summarise

    run = {k: 1.0 for k in PRETRAIN_KEYS - {"counts"}} | {"setup_seconds": 0.0, "selection_seconds": 0.0}
    run |= {"train_seconds": 1.0, "total_flops": 3e6, "seed": 1, "counts": {"mlm": 1}}
    run["heldout_curve"] = [[1e6, 5.5], [3e6, 5.0]]
    finetuned = [{"t": {"main_metric": "f1", "metrics": {"validation": {"f1": 6.0}}}}]
    return summarise([run], finetuned, ["t"])


def test_one_seed_summary_has_null_stds() -> None:
    """compare with one seed: results.json's downstream, held-out and FLOPs stds are null (they were
    0.0, a claimed spread of none), and results.md says "(1 seed)"."""
    from metapt.verdict import spread

    entry = _one_seed_entry()
    assert entry["pretrain"]["total_flops_std"] is None
    assert entry["downstream"]["t"]["validation"]["f1"] == {"mean": 6.0, "std": None, "values": [6.0]}
    assert entry["heldout"]["final"] == {"mean": 5.0, "std": None, "values": [5.0]}
    assert entry["heldout"]["curve"] == [[1e6, 5.5, None], [3e6, 5.0, None]]
    assert json.loads(json.dumps(entry))["downstream"]["t"]["validation"]["f1"]["std"] is None
    assert spread({"mean": 6.0, "std": None, "values": [6.0]}, 2) == "6.00 (1 seed)"


def test_compare_plot_of_one_seed_draws_the_curve_without_a_band() -> None:
    """One seed's held-out curve has no std: no ± band (None - None was a TypeError), the line stays."""
    pytest.importorskip("matplotlib")  # the plot extra
    from metapt.report import figure
    from metapt.verdict import _heldout_panel

    ax = figure(4, 4).subplots()
    _heldout_panel(ax, {"schedulers": {"meta": _one_seed_entry()}, "reference": None})
    assert len(ax.get_lines()) == 1 and not ax.collections  # the curve, and no fill_between band


def test_compare_plot_draws_a_held_out_curve_of_one_point() -> None:
    """Every run evaluating once (at its end) gives a one-point mean curve; a line without a marker
    draws nothing there, so the scheduler vanished from compare.png's held-out panel."""
    from metapt.report import figure
    from metapt.verdict import _heldout_panel

    entry = {"heldout": {"curve": [[2.79e8, 5.573, 0.030]], "threshold": None}, "flops_to_uniform": None}
    ax = figure(4, 4).subplots()
    _heldout_panel(ax, {"schedulers": {"meta": entry}, "reference": None})
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [2.79e8] and list(line.get_ydata()) == [5.573]
    assert line.get_marker() not in ("None", "", " ", None)


def test_the_paired_wins_cell_counts_tied_seeds() -> None:
    # All three seeds equal read "+0.00 [+0.00, +0.00] 0/3", as if uniform had won all three.
    from metapt.verdict import _interval

    row = {"mean_diff": 0.0, "ci95": [0.0, 0.0], "wins": 0, "ties": 3, "n": 3}
    assert _interval(row) == ["+0.00", "[+0.00, +0.00]", "0/3 (3 tied)"]
    assert _interval({**row, "wins": 2, "ties": 0})[2] == "2/3"


def test_compare_sums_each_pretrained_checkpoint_once_for_all_its_tasks(
    tmp_path: Path, summed: list[Path]
) -> None:
    again = write(tmp_path, "srl-again.toml", SRL.read_text().replace('"srl-tiny"', '"srl-again"'))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["compare", str(RUN), "--schedulers", "uniform", "--seeds", "1", "--downstream", f"{SRL},{again}"]
        + ["--output-dir", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())["downstream_tasks"] == ["srl-tiny", "srl-again"]
    # the run's checkpoint is checked once before its two finetunings (was: once in each); the
    # checkpoint's and the finetuned models' files summed as they are written are not counted here
    checked = sorted("/".join(p.parts[-3:]) for p in summed if p.parent.name.startswith("checkpoint-"))
    weights = ("heads.safetensors", "model.safetensors", "training_state.pt")
    assert checked == [f"seed-1/checkpoint-000002/{name}" for name in weights]


def test_compare_plot_has_one_legend_under_all_panels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A legend inside the held-out panel covered meta:greedy's band in docs/results-public.png.
    pytest.importorskip("matplotlib")
    from metapt import verdict
    from metapt.report import png_bytes

    def entry(shift: float) -> dict:
        curve = [[x * 1e11, 5.0 - 0.1 * x + shift, 0.3] for x in range(1, 6)]
        score = {"mean": 80.0 + shift, "values": [79.0 + shift, 81.0 + shift]}
        return {
            "heldout": {"curve": curve, "threshold": 4.6},
            "flops_to_uniform": None,
            "main_metric": {"t": "f1"},
            "pretrain": {"total_flops": 5e11 + shift * 1e10},
            "downstream": {"t": {"validation": {"f1": score}, "test": {"f1": score}}},
        }

    names = ["meta:greedy", "meta:bandit", "uniform"]
    results = {
        "schedulers": {name: entry(0.2 * i) for i, name in enumerate(names)},
        "reference": "uniform",
        "downstream_tasks": ["t"],
    }
    drawn = []
    monkeypatch.setattr(verdict, "png_bytes", lambda fig: drawn.append(fig) or png_bytes(fig))
    assert verdict.compare_plot(results, tmp_path / "compare.png").stat().st_size > 10_000
    (fig,) = drawn
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [*names, "uniform's final loss"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    assert all(not box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
