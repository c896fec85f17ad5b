"""Output folders (metapt/outdir.py): a fresh run never deletes or replaces what metapt did not write,
refuses a used folder with exit 2 and how to go on, `--overwrite` removes only metapt's own entries,
one process per folder (a lock that a killed process does not leave behind), and `report` refuses a
metrics.jsonl that two runs wrote."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write
from typer.testing import CliRunner

from metapt import engine, outdir
from metapt.cli import app
from metapt.errors import MetaptError
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.spec import RunSpec

RUNS = Path(__file__).parent / "fixtures" / "runs"
AGNOSTIC = RUNS / "agnostic.toml"
SCRIPT = Path(sys.executable).with_name("metapt")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out: Path, episodes: int = 2) -> RunSpec:
    spec = override(parse_run(AGNOSTIC), output_dir=out, episodes=episodes)
    return dataclasses.replace(spec, run=dataclasses.replace(spec.run, checkpoint_every=1))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-episode run (copy it before changing it)."""
    out = tmp_path_factory.mktemp("outdir") / "run"
    engine.pretrain(tiny(out))
    return out


def used(finished: Path, tmp_path: Path) -> Path:
    """The finished run plus a Hugging Face Trainer checkpoint and a note of the user's."""
    out = tmp_path / "run"
    shutil.copytree(finished, out, symlinks=True)
    write(out, "checkpoint-500/trainer_state.json", '{"global_step": 500}')
    write(out, "notes.txt", "my notes")
    return out


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder`: a file's bytes, a link's target."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = os.readlink(p)
        elif p.is_file():
            out[key] = p.read_bytes()
    return out


# ------------------------------------------------------------------------------- a used folder
def test_the_record_lists_what_the_run_wrote(finished: Path) -> None:
    record = json.loads((finished / outdir.RECORD).read_text())
    assert record["kind"] == "pretrain"
    on_disk = sorted(p.name for p in finished.iterdir() if p.name not in (outdir.RECORD, outdir.LOCK))
    assert record["entries"] == on_disk  # the older checkpoint-000001 was removed and forgotten
    assert "checkpoint-000002" in on_disk and "checkpoint-000001" not in on_disk


def test_a_fresh_run_into_a_used_folder_exits_2_and_changes_nothing(
    finished: Path, tmp_path: Path, runner: CliRunner
) -> None:
    out = used(finished, tmp_path)
    before = snapshot(out)
    result = runner.invoke(app, ["pretrain", str(AGNOSTIC), "--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert f"error: {out} is not empty. It holds:" in message
    assert "metapt's run (a checkpoint after episode 2 of 2)" in message
    assert "2 entries metapt did not write: checkpoint-500/, notes.txt" in message
    assert "--resume" in message and "--output-dir DIR" in message
    assert "--overwrite (removes metapt's 12 entries only; keeps checkpoint-500/, notes.txt)" in message
    assert snapshot(out) == before


def test_overwrite_removes_only_metapts_entries(finished: Path, tmp_path: Path) -> None:
    out = used(finished, tmp_path)
    old_metrics = (out / "metrics.jsonl").read_text()
    summary = engine.pretrain(tiny(out, episodes=1), overwrite=True)
    assert summary["complete"] and summary["episodes"] == 1
    assert (out / "checkpoint-500" / "trainer_state.json").read_text() == '{"global_step": 500}'
    assert (out / "notes.txt").read_text() == "my notes"
    assert [json.loads(x)["episode"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (out / "metrics.jsonl").read_text() != old_metrics
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-000001", "checkpoint-500"]


@pytest.mark.parametrize("record", [True, False])  # False: a folder of an older metapt, no record
def test_overwrite_by_another_kind_of_run_keeps_the_pretraining_checkpoint(
    finished: Path, tmp_path: Path, runner: CliRunner, record: bool
) -> None:
    # `compare --overwrite` (or finetune) pointed at a pretraining folder by mistake removed its
    # checkpoint: --overwrite starts a run of the kind that wrote the folder again, no other.
    out = tmp_path / "run"
    shutil.copytree(finished, out, symlinks=True)
    if not record:
        (out / outdir.RECORD).unlink()
    before = snapshot(out)
    with pytest.raises(
        MetaptError, match=r"holds metapt's pretrain run \(a checkpoint after episode 2 of 2\)"
    ):
        outdir.check(out, "compare", overwrite=True)
    with pytest.raises(MetaptError, match="A finetune run does not overwrite it"):
        outdir.check(out, "finetune", overwrite=True)
    outdir.check(out, "pretrain", overwrite=True)  # the same kind may start again
    assert snapshot(out) == before


def test_a_file_metapt_would_write_blocks_even_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    write(out, "config.json", '{"mine": true}')
    with pytest.raises(MetaptError, match=r"holds config\.json, which metapt did not write"):
        engine.pretrain(tiny(out), overwrite=True)
    assert (out / "config.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # not even a lock file was left


def test_a_mixture_json_of_the_users_blocks_overwrite_and_is_never_recorded(
    finished: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    write(out, "mixture.json", '{"mine": true}')  # e.g. a mixture written for the mixture scheduler
    with pytest.raises(MetaptError, match=r"holds mixture\.json, which metapt did not write"):
        engine.pretrain(tiny(out), overwrite=True)  # before: it trained, then failed at the checkpoint
    run = tmp_path / "run"
    shutil.copytree(finished, run, symlinks=True)
    (run / "mixture.json").unlink()  # the user replaces metapt's link with a file of their own
    write(run, "mixture.json", '{"mine": true}')
    with pytest.raises(MetaptError, match=r"mixture\.json: metapt did not write this file"):
        engine.pretrain(tiny(run, episodes=3), resume=True)
    assert "mixture.json" not in outdir.owned(run)  # before: recorded, so --overwrite removed it
    with pytest.raises(MetaptError, match=r"holds mixture\.json, which metapt did not write"):
        engine.pretrain(tiny(run), overwrite=True)
    assert (run / "mixture.json").read_text() == '{"mine": true}'


def test_a_run_that_fails_leaves_no_folder_behind(tmp_path: Path) -> None:
    spec = tiny(tmp_path / "new" / "run")
    data = dataclasses.replace(spec.sources[0].data, format="jsonl", train=str(tmp_path / "gone.jsonl"))
    broken = dataclasses.replace(spec.sources[0], data=data)
    with pytest.raises(MetaptError, match="gone.jsonl"):
        engine.pretrain(dataclasses.replace(spec, sources=(broken, *spec.sources[1:])))
    assert not (tmp_path / "new").exists()


def test_an_older_run_without_a_record_is_recognised(finished: Path, tmp_path: Path) -> None:
    out = used(finished, tmp_path)
    (out / outdir.RECORD).unlink()  # as metapt wrote folders before the record existed
    mine, theirs = outdir.split(out)
    assert theirs == ["checkpoint-500", "notes.txt"]
    assert "checkpoint-000002" in mine and "current" in mine and "metrics.jsonl" in mine
    summary = engine.pretrain(tiny(out, episodes=3), resume=True)
    assert summary["episodes"] == 3
    record = json.loads((out / outdir.RECORD).read_text())
    assert "checkpoint-000003" in record["entries"] and "notes.txt" not in record["entries"]
    assert (out / "checkpoint-500" / "trainer_state.json").is_file()


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only"])
def test_an_output_folder_that_cannot_be_written_exits_2(
    case: str, tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = {"a file": tmp_path / "f", "under a file": tmp_path / "f" / "run", "read-only": tmp_path / "ro"}[
        case
    ]
    write(tmp_path, "f", "a file")
    if case == "read-only":
        target.mkdir()
        target.chmod(0o500)
        if os.geteuid() == 0:  # root writes anywhere: let the check see what a user would
            monkeypatch.setattr(outdir, "_writable", lambda folder: False)
    result = runner.invoke(app, ["pretrain", str(AGNOSTIC), "--output-dir", str(target)])
    target.chmod(0o700) if case == "read-only" else None
    assert result.exit_code == 2, result.output
    expected = {
        "a file": "the output folder is a file",
        "under a file": "cannot create the output folder",
        "read-only": "the output folder is not writable",
    }[case]
    assert f"{target}" in result.stderr and expected in result.stderr
    assert "Traceback" not in result.output


def test_an_empty_output_dir_in_a_run_spec_is_refused(tmp_path: Path, runner: CliRunner) -> None:
    spec = write(tmp_path, "run.toml", AGNOSTIC.read_text().replace('output_dir = "ckpt"', 'output_dir = ""'))
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert f'{spec}: [run].output_dir: empty; name a folder such as "ckpt"' in result.stderr


def test_finetune_refuses_its_earlier_output_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ft"
    write(out, "results.json", "{}")
    outdir.claim(out, "results.json", kind="finetune")
    with pytest.raises(MetaptError, match="start again here:  --overwrite"):
        outdir.check(out, "finetune", overwrite=False)
    outdir.check(out, "finetune", overwrite=True)
    write(tmp_path, "theirs/results.json", "{}")
    with pytest.raises(MetaptError, match="holds results.json, which metapt did not write"):
        outdir.check(tmp_path / "theirs", "finetune", overwrite=True)


def test_finetune_into_the_checkpoint_it_reads_is_refused_even_with_overwrite(
    finished: Path, tmp_path: Path, runner: CliRunner
) -> None:
    out = used(finished, tmp_path)
    before = snapshot(out)
    args = ["finetune", "--task", "conll2012-synthetic", str(out), "--output-dir", str(out)]
    result = runner.invoke(app, [*args, "--epochs", "1", "-q", "--overwrite"])
    assert result.exit_code == 2, result.output
    assert f"{out} holds {(out / 'current').resolve()}, which this run reads" in result.stderr
    assert snapshot(out) == before  # before: --overwrite removed the checkpoint, then failed to load it


def test_overwrite_refuses_to_remove_the_mixture_or_encoder_the_run_reads(
    finished: Path, tmp_path: Path
) -> None:
    out = used(finished, tmp_path)
    before = snapshot(out)
    spec = tiny(out)
    replay = dataclasses.replace(spec.meta, scheduler="mixture", mixture=str(out / "mixture.json"))
    warm = dataclasses.replace(spec.model, pretrained=str(out))
    for changed in (dataclasses.replace(spec, meta=replay), dataclasses.replace(spec, model=warm)):
        with pytest.raises(MetaptError, match="which this run reads; a fresh run there would remove it"):
            engine.pretrain(changed, overwrite=True)  # before: removed it, then could not read it
    assert snapshot(out) == before


def test_compare_refuses_a_used_folder_before_it_trains(tmp_path: Path, runner: CliRunner) -> None:
    out = tmp_path / "cmp"
    write(out, "results.md", "my table")
    spec = Path(__file__).parent / "fixtures" / "compare" / "run.toml"
    args = ["compare", str(spec), "--episodes", "1", "--seeds", "1", "--output-dir", str(out), "-q"]
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 2, result.output
    assert "holds results.md, which metapt did not write and a compare run writes" in result.stderr
    (out / "results.md").unlink()
    write(out, "notes.txt", "mine")
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "1 entry metapt did not write: notes.txt" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ----------------------------------------------------------------------------------- the lock
HOLD = """
import sys, time
from pathlib import Path
from metapt.lock import Lock
with Lock(Path(sys.argv[1]), "metapt pretrain"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_locked_folder_exits_2_naming_the_holder_and_a_killed_holder_leaves_no_lock(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MetaptError) as caught:
            engine.pretrain(tiny(out))
        assert f"{out} is in use by metapt pretrain (pid {holder.pid} on " in str(caught.value)
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel releases it
        holder.wait()
    summary = engine.pretrain(tiny(out, episodes=1))
    assert summary["complete"]


def test_two_pretrain_processes_on_one_folder(tmp_path: Path) -> None:
    """The second exits 2 saying who holds the folder; the first writes its episodes alone. The first
    asks for far more episodes than it can run while the second starts (a short run, even one of 40
    episodes, has finished first under load) and is stopped by SIGTERM once the second has been
    refused and its own first episode is logged (its handler is in place by then)."""
    env = {k: v for k, v in os.environ.items() if k != "METAPT_DEBUG"}
    out, total = tmp_path / "run", 100_000
    cmd = [str(SCRIPT), "pretrain", str(AGNOSTIC), "--episodes", str(total), "--output-dir", str(out), "-q"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def stopped() -> tuple[str, str]:
        """The first run's output for a failed assertion, once it is ended (it would run for hours)."""
        if first.poll() is None:
            first.kill()
        return first.communicate()

    def wait_for(ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 120
        while not ready():
            assert time.monotonic() < deadline and first.poll() is None, stopped()
            time.sleep(0.05)

    try:
        wait_for(lambda: (out / outdir.LOCK).is_file() and bool((out / outdir.LOCK).read_text()))
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"{out} is in use by metapt pretrain (pid {first.pid}" in second.stderr
        metrics = out / "metrics.jsonl"
        wait_for(lambda: metrics.is_file() and bool(metrics.read_text().strip()))
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=300) == 128 + signal.SIGTERM, stopped()
    finally:
        stopped()  # never left running after a failure
    episodes = [json.loads(x)["episode"] for x in metrics.read_text().splitlines()]
    assert 1 <= len(episodes) < total and episodes == list(range(1, len(episodes) + 1))


# ------------------------------------------------------------------------------------- report
def test_report_refuses_interleaved_episodes(tmp_path: Path, runner: CliRunner) -> None:
    lines = [{"episode": e, "chosen": "mlm", "train_loss": 1.0} for e in (1, 2, 1, 3)]
    write(tmp_path, "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path / 'metrics.jsonl'}:3: episode 1 after episode 2" in result.stderr
    assert not (tmp_path / "report.png").exists()
