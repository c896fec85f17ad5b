"""Checkpoints (metapt/checkpoint.py): an output directory is a Hugging Face encoder folder, a write
that dies midway leaves the previous checkpoint current and loadable, and a corrupt checkpoint is a
CheckpointError (exit code 2 from `metapt pretrain --resume`)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from metapt import checkpoint, engine, outdir, runsetup
from metapt.cli import app
from metapt.errors import CheckpointError
from metapt.resolve import parse_run
from metapt.runspec import override
from metapt.spec import RunSpec

RUNS = Path(__file__).parent / "fixtures" / "runs"
AGNOSTIC = RUNS / "agnostic.toml"
SRL = Path(__file__).parent / "fixtures" / "compare" / "tasks" / "srl.toml"


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out: Path, episodes: int, checkpoint_every: int = 2) -> RunSpec:
    spec = override(parse_run(AGNOSTIC), output_dir=out, episodes=episodes)
    return dataclasses.replace(spec, run=dataclasses.replace(spec.run, checkpoint_every=checkpoint_every))


def episodes_in(out: Path) -> list[int]:
    return [json.loads(line)["episode"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of a complete 2-episode run (checkpoints after episodes 1 and 2)."""
    out = tmp_path_factory.mktemp("checkpoint") / "out"
    engine.pretrain(tiny(out, episodes=2, checkpoint_every=1))
    return out


def test_the_output_directory_is_a_hugging_face_model_folder(finished: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = checkpoint.resolve(finished)
    assert folder == (finished / "checkpoint-000002").resolve()
    assert sorted(p.name for p in finished.glob("checkpoint-*")) == ["checkpoint-000002"]  # older removed
    assert not list(finished.glob(".*partial"))
    encoder = AutoModel.from_pretrained(finished)
    saved = load_file(folder / "model.safetensors")
    for name, value in encoder.state_dict().items():
        if name in saved:
            assert torch.equal(value, saved[name]), name
    assert "embeddings.word_embeddings.weight" in saved and encoder.config.hidden_size == 32
    tokenizer = AutoTokenizer.from_pretrained(finished)
    assert len(tokenizer) == saved["embeddings.word_embeddings.weight"].shape[0] == 300
    ids = tokenizer("the capital")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    manifest, heads, info, state = checkpoint.load_state(folder)
    assert manifest["episode"] == 2 and manifest["complete"] is True and manifest["scheduler"] == "meta"
    assert manifest["metapt_version"] == importlib.metadata.version("metapt")  # what wrote it
    assert {n: i["role"] for n, i in info.items()} == {"mlm": "source", "mlm_shuffled": "source"}
    assert {k.split(".")[0] for k in heads} == {"mlm", "mlm_shuffled"}
    assert state["episode"] == 2 and len(state["history"]) == 2
    assert {"optimizer", "schedule", "streams", "explore", "torch_rng"} <= state.keys()


def kill_torch_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies while writing training_state.pt (the temp folder is half written)."""

    save = torch.save

    def die(obj: object, path: Path, *args: object, **kwargs: object) -> None:
        if not Path(path).parent.name.endswith(".partial"):
            return save(obj, path, *args, **kwargs)
        Path(path).write_bytes(b"\x80half")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", die)


def kill_symlink(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies after the new folder is in place, before `current` is switched."""

    def die(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_atomic_symlink", die)


@pytest.mark.parametrize("kill", [kill_torch_save, kill_symlink])
def test_a_write_killed_midway_leaves_the_last_checkpoint(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill: object
) -> None:
    from transformers import AutoModel

    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    before = load_file(out / "model.safetensors")
    kill(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        engine.pretrain(tiny(out, episodes=4), resume=True)  # trains 3 and 4, dies saving 4
    assert checkpoint.resolve(out) == (out / "checkpoint-000002").resolve()
    # What the dead write left: a half temp folder (no manifest), or a finished folder not yet current.
    left = out / (".checkpoint-000004.partial" if kill is kill_torch_save else "checkpoint-000004")
    assert (left / "model.safetensors").is_file()
    assert (left / checkpoint.MANIFEST).exists() == (kill is kill_symlink)
    encoder = AutoModel.from_pretrained(out)
    for name, value in encoder.state_dict().items():
        if name in before:
            assert torch.equal(value, before[name]), name
    assert checkpoint.load_state(checkpoint.resolve(out))[3]["episode"] == 2
    monkeypatch.undo()
    summary = engine.pretrain(tiny(out, episodes=4), resume=True)
    assert summary["complete"] and summary["episodes"] == 4
    assert checkpoint.resolve(out) == (out / "checkpoint-000004").resolve()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-000004"]
    assert not list(out.glob(".*partial"))
    assert episodes_in(out) == [1, 2, 3, 4]  # the lost episodes' lines were dropped, then rewritten


def truncate_state(folder: Path) -> None:
    path = folder / checkpoint.STATE
    path.write_bytes(path.read_bytes()[:200])


def delete_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def garble_manifest(folder: Path) -> None:
    (folder / checkpoint.MANIFEST).write_text("{not json")


def unfinished_manifest(folder: Path) -> None:
    path = folder / checkpoint.MANIFEST
    path.write_text(json.dumps({**json.loads(path.read_text()), "complete": False}))


def list_in(name: str) -> object:
    """A corruption that leaves valid JSON of the wrong shape in `name`: `[]` instead of an object."""

    def corrupt(folder: Path) -> None:
        (folder / name).write_text("[]")

    return corrupt


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (list_in(checkpoint.MANIFEST), "metapt.json: corrupt manifest (a JSON list, not an object)"),
        (list_in(checkpoint.HEADS_INFO), "heads.json: unreadable (a JSON list, not an object)"),
        (list_in("config.json"), "config.json: unreadable (a JSON list, not an object)"),
        (truncate_state, "training_state.pt: damaged (200 bytes, metapt wrote "),
        (delete_weights, "incomplete checkpoint (missing model.safetensors)"),
        (garble_manifest, "corrupt manifest"),
        (unfinished_manifest, "incomplete checkpoint (missing completion mark)"),
    ],
)
def test_a_corrupt_checkpoint_is_a_checkpoint_error(
    finished: Path, tmp_path: Path, runner: CliRunner, corrupt: object, message: str
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    corrupt(out / "checkpoint-000002")
    with pytest.raises(CheckpointError) as caught:
        runsetup.setup(tiny(out, episodes=4), resume=True)
    assert message in str(caught.value) and "checkpoint-000002" in str(caught.value)
    result = runner.invoke(app, ["pretrain", str(AGNOSTIC), "--output-dir", str(out), "--resume", "-q"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_tokenizer_config_of_the_wrong_shape_exits_2(
    finished: Path, tmp_path: Path, runner: CliRunner
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    list_in("tokenizer_config.json")(out / "checkpoint-000002")
    for args in (
        ["pretrain", str(AGNOSTIC), "--output-dir", str(out), "--resume", "-q"],
        ["finetune", "--task", "conll2012-synthetic", str(out), "--epochs", "1", "-q"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output  # was 1: "internal error: AttributeError"
        assert f"cannot load a tokenizer from '{(out / 'checkpoint-000002').resolve()}'" in result.stderr
    assert not (out / "finetune").exists()


def test_resume_without_a_checkpoint_is_a_checkpoint_error(tmp_path: Path, runner: CliRunner) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        runsetup.setup(tiny(tmp_path / "nothing", episodes=1), resume=True)
    (tmp_path / "empty").mkdir()
    result = runner.invoke(
        app, ["pretrain", str(AGNOSTIC), "--output-dir", str(tmp_path / "empty"), "--resume", "-q"]
    )
    assert result.exit_code == 2 and "not a metapt checkpoint" in result.stderr


def load_report(folder: Path) -> tuple[str, torch.nn.Module]:
    """(everything transformers logs or warns, the model) while AutoModel.from_pretrained loads `folder`."""
    import io
    import logging
    import warnings

    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = hf_logging.get_logger("transformers")  # the library's root logger; it does not propagate
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # the CLI sets error, which would hide the report
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = AutoModel.from_pretrained(folder)
    finally:
        logger.removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
    return stream.getvalue() + "".join(str(w.message) for w in caught), model


@pytest.fixture(scope="module")
def finetuned(finished: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch srl finetuning of `finished` (its model/ is what `metapt evaluate` reads)."""
    from metapt.finetune import finetune_one, task_spec

    out = tmp_path_factory.mktemp("finetuned") / "ft"
    finetune_one(str(finished), task_spec(str(SRL), None, {}), 0, out)
    return out


def test_checkpoints_and_finetuned_models_load_without_a_load_report(finished: Path, finetuned: Path) -> None:
    report, model = load_report(finished)
    assert report == "" and model.pooler is not None
    # the pooler is the architecture's untrained one: normal(0, 0.02) weights, zero bias
    assert abs(float(model.pooler.dense.weight.detach().std()) - 0.02) < 0.004
    assert torch.equal(model.pooler.dense.bias, torch.zeros(32))
    report, tuned = load_report(finetuned / "model")
    assert report == ""
    assert torch.equal(tuned.pooler.dense.weight, model.pooler.dense.weight)  # carried through, untouched


def test_a_checkpoint_without_a_pooler_still_resumes_and_gets_one(finished: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    old = tmp_path / "old"
    shutil.copytree(finished, old, symlinks=True)
    weights = old / "current" / "model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if not k.startswith("pooler.")}, weights)
    old_manifest(old / "current")  # such checkpoints did not record their files' sizes either
    report, _ = load_report(old)
    assert "pooler.dense.weight" in report and "MISSING" in report  # what checkpoints printed before
    summary = engine.pretrain(tiny(old, episodes=3), resume=True)
    assert summary["episodes"] == 3 and episodes_in(old) == [1, 2, 3]
    assert load_report(old)[0] == ""


def test_a_pretrained_pooler_is_saved_back_unchanged(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    from metapt.model import load_encoder, new_encoder, saved_state
    from metapt.spec import ModelSpec

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    original = BertModel(config)  # with a pooler, as hub BERTs have
    original.save_pretrained(tmp_path / "bert")
    encoder = load_encoder(str(tmp_path / "bert"))
    assert encoder.pooler is None  # metapt's heads pool themselves
    state = saved_state(encoder)
    assert torch.equal(state["pooler.dense.weight"], original.pooler.dense.weight)
    roberta = new_encoder(
        ModelSpec(architecture="roberta", hidden_size=32, num_heads=2, num_layers=1), 300, 1
    )
    roberta.save_pretrained(tmp_path / "roberta", state_dict=saved_state(roberta))
    report, loaded = load_report(tmp_path / "roberta")
    assert report == "" and loaded.pooler.dense.weight.shape == (32, 32)


@pytest.mark.parametrize("lose", ["link", "folder"])
def test_a_lost_current_link_names_the_intact_checkpoints_and_how_to_go_on(
    finished: Path, tmp_path: Path, runner: CliRunner, lose: str
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    if lose == "link":  # `current` deleted: checkpoint-000002 is intact
        (out / "current").unlink()
        why, said = "its `current` link is missing", "metapt wrote checkpoint-000002/ (after episode 2)"
    else:  # the folder `current` points to deleted; an older intact one metapt recorded is left
        shutil.copytree(out / "checkpoint-000002", out / "checkpoint-000001", symlinks=True)
        manifest = out / "checkpoint-000001" / checkpoint.MANIFEST
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "episode": 1}))
        outdir.claim(out, "checkpoint-000001")
        shutil.copytree(out / "checkpoint-000002", out / "checkpoint-000003", symlinks=True)  # not metapt's
        shutil.rmtree(out / "checkpoint-000002")
        why = "its `current` link points to checkpoint-000002, which is gone"
        said = "metapt wrote checkpoint-000001/ (after episode 1)"
    latest = "checkpoint-000002" if lose == "link" else "checkpoint-000001"
    expected = (
        f"{out}: {why}, so no checkpoint is current; {said} there and it is intact. metapt does not "
        f"pick one itself; to go on from {latest}, run\n  ln -sfn {latest} {out / 'current'}\n"
        "and run the command again (pretrain: with --resume)"
    )
    with pytest.raises(CheckpointError) as caught:
        checkpoint.resolve(out)
    assert str(caught.value) == expected  # was "not a metapt checkpoint (no metapt.json)"
    for args in (
        ["pretrain", str(AGNOSTIC), "--output-dir", str(out), "--resume", "--episodes", "3", "-q"],
        ["finetune", "--task", "conll2012-synthetic", str(out), "--epochs", "1", "-q"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert result.stderr == f"error: {expected}\n"
    assert not (out / "current").exists() and not (out / "finetune").exists()  # nothing guessed or written
    (out / "current").unlink(missing_ok=True)
    (out / "current").symlink_to(latest)  # as the message says
    assert checkpoint.resolve(out) == (out / latest).resolve()


def test_a_lost_current_checkpoint_with_none_left_says_so(finished: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    shutil.rmtree(out / "checkpoint-000002")
    with pytest.raises(CheckpointError) as caught:
        checkpoint.resolve(out)
    assert str(caught.value) == (
        f"{out}: its `current` link points to checkpoint-000002, which is gone, and no intact "
        "checkpoint metapt wrote is left there; pretrain again (--overwrite starts again in this folder)"
    )


def delete_heads_info(folder: Path) -> None:
    (folder / checkpoint.HEADS_INFO).unlink()


@pytest.mark.parametrize(
    ("corrupt", "why"),
    [(delete_heads_info, "missing heads.json"), (unfinished_manifest, "missing completion mark")],
)
def test_finetune_on_an_incomplete_current_checkpoint_exits_2_naming_the_intact_ones(
    finished: Path, tmp_path: Path, runner: CliRunner, corrupt: object, why: str
) -> None:
    """finetune followed `current` to the encoder files alone and trained from a checkpoint that
    is not whole (exit 0); now it refuses as lost_current does, and CKPT's record is left as it was."""
    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    older = out / "checkpoint-000001"  # an intact earlier checkpoint metapt recorded there
    shutil.copytree(out / "checkpoint-000002", older)
    manifest = json.loads((older / checkpoint.MANIFEST).read_text())
    (older / checkpoint.MANIFEST).write_text(json.dumps({**manifest, "episode": 1}))
    outdir.claim(out, older.name)
    corrupt(out / "checkpoint-000002")
    record = (out / outdir.RECORD).read_bytes()
    finetune = ["finetune", "--task", "conll2012-synthetic", str(out), "--epochs", "1", "-q"]
    resume = ["pretrain", str(AGNOSTIC), "--output-dir", str(out), "--resume", "--episodes", "3", "-q"]
    for args in (finetune, resume):  # resume said only "incomplete checkpoint (...)"
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        message = " ".join(result.stderr.split())
        assert (
            f"{out / 'checkpoint-000002'}: incomplete checkpoint ({why}); {out / 'current'} points to it"
            in message
        )
        assert f"metapt also wrote checkpoint-000001/ (after episode 1) in {out} and it is intact" in message
        assert f"ln -sfn checkpoint-000001 {out / 'current'}" in message
        assert "Traceback" not in result.stderr
    assert not (out / "finetune").exists() and (out / outdir.RECORD).read_bytes() == record
    assert episodes_in(out) == [1, 2]


def test_finetune_on_weights_that_do_not_load_leaves_the_record_as_it_was(
    finished: Path, tmp_path: Path, runner: CliRunner
) -> None:
    """The encoder loads after CKPT/finetune is claimed: the claim is taken back when nothing was
    written (it stayed, naming a folder that was never made)."""
    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    weights = out / "checkpoint-000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    record = (out / outdir.RECORD).read_bytes()
    assert "finetune" not in json.loads(record)["entries"]
    result = runner.invoke(
        app, ["finetune", "--task", "conll2012-synthetic", str(out), "--epochs", "1", "-q"]
    )
    assert result.exit_code == 2, result.output
    assert "model.safetensors" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "finetune").exists() and (out / outdir.RECORD).read_bytes() == record


# ------------------------------------------------------------- damaged files: sizes in the manifest
def cut(path: Path, count: int = 8) -> int:
    """Cut the last `count` bytes off a file (a full disk, a broken copy); its new size."""
    path.write_bytes(path.read_bytes()[:-count])
    return path.stat().st_size


def flip(path: Path) -> str:
    """Flip the bits of one byte near the end of a file, in place (a bad disk, a bad copy): its size
    stays. The detail of the message that names it, with both sums (sha256 by hashlib)."""
    data = bytearray(wrote := path.read_bytes())
    data[-20] ^= 0xFF  # inside the last tensor of a safetensors file, the pickled state of the .pt
    path.write_bytes(bytes(data))
    have, want = hashlib.sha256(bytes(data)).hexdigest(), hashlib.sha256(wrote).hexdigest()
    return f"its bytes changed: sha256 {have[:12]}..., metapt wrote {want[:12]}..."


def old_manifest(folder: Path, keep_sizes: bool = False) -> None:
    """The manifest as metapt wrote it before it recorded its files' sums (`keep_sizes`), or before
    it recorded their sizes too."""
    path = folder / checkpoint.MANIFEST
    dropped = {"sha256"} if keep_sizes else {"files", "sha256"}
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k not in dropped}))


def test_the_manifest_records_every_file_s_size(finished: Path) -> None:
    folder = checkpoint.resolve(finished)
    files = json.loads((folder / checkpoint.MANIFEST).read_text())["files"]
    on_disk = {f.name: f.stat().st_size for f in folder.iterdir() if f.name != checkpoint.MANIFEST}
    assert files == on_disk  # the encoder's and tokenizer's files too, whatever save_pretrained wrote
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= files.keys()
    assert files["model.safetensors"] == 87816  # 1-layer, 32-wide BERT over 300 words, fp32


def test_the_manifest_records_every_file_s_sha256_but_the_json_ones(finished: Path) -> None:
    folder = checkpoint.resolve(finished)
    sums = json.loads((folder / checkpoint.MANIFEST).read_text())["sha256"]
    on_disk = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in folder.iterdir()
        if f.name != checkpoint.MANIFEST and f.suffix != ".json"  # config.json & co. are hand-edited
    }
    assert sums == on_disk and {"model.safetensors", checkpoint.HEADS, checkpoint.STATE} <= sums.keys()


@pytest.mark.parametrize("damage", ["cut", "flip"])
@pytest.mark.parametrize("name", ["model.safetensors", checkpoint.HEADS, checkpoint.STATE])
def test_a_file_cut_short_or_changed_is_named_by_resume_and_finetune(
    finished: Path, tmp_path: Path, runner: CliRunner, name: str, damage: str
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    folder = (out / "checkpoint-000002").resolve()
    wrote = (folder / name).stat().st_size
    if damage == "cut":
        detail = f"{cut(folder / name)} bytes, metapt wrote {wrote}"
    else:  # the same size: only the sums see it
        detail = flip(folder / name)
        if name != checkpoint.STATE:  # safetensors loads it without a word: the weights would be wrong
            assert load_file(folder / name).keys() == load_file(finished / "current" / name).keys()
    expected = (
        f"error: {folder / name}: damaged ({detail}); the checkpoint is not "
        f"usable: restore it from a copy, make another intact checkpoint current (ln -sfn checkpoint-N "
        f"{out / 'current'}), or pretrain again\n"
    )
    # a checkpoint folder itself gets the one line; an output folder names the other intact ones
    with pytest.raises(CheckpointError) as info:
        checkpoint.resolve(folder)
    assert f"error: {info.value}\n" == expected
    for args in (  # resume: was "corrupt checkpoint (SafetensorError: ..."; finetune: was exit 0
        ["pretrain", str(AGNOSTIC), "--output-dir", str(out), "--resume", "--episodes", "3", "-q"],
        ["finetune", "--task", str(SRL), str(out), "--epochs", "1", "-q"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert result.stderr == (
            f"error: {folder / name}: damaged ({detail}); {out / 'current'} "
            f"points to it, and no other intact checkpoint metapt wrote is left in {out}; pretrain "
            "again (--overwrite starts again in this folder)\n"
        )
    assert not (out / "finetune").exists() and episodes_in(out) == [1, 2]


def test_a_finetuned_model_cut_short_or_changed_is_named_by_evaluate(
    finetuned: Path, tmp_path: Path, runner: CliRunner
) -> None:
    for name, damage in itertools.product(("model.safetensors", "head.safetensors"), ("cut", "flip")):
        copy = tmp_path / f"{name}-{damage}"
        shutil.copytree(finetuned, copy)
        wrote = (copy / "model" / name).stat().st_size
        if damage == "cut":
            detail = f"{cut(copy / 'model' / name)} bytes, metapt wrote {wrote}"
        else:
            detail = flip(copy / "model" / name)
        result = runner.invoke(app, ["evaluate", "--task", str(SRL), str(copy)])
        assert result.exit_code == 2, result.output  # head.safetensors: was "corrupt or mismatched head"
        assert result.stderr == (
            f"error: {copy / 'model' / name}: damaged ({detail}); the finetuned "
            "model is not usable: finetune again to rewrite it\n"
        )
        assert not (copy / "evaluation-validation.json").exists()


def test_hand_edited_json_files_still_load_and_old_manifests_are_not_sized(
    finished: Path, tmp_path: Path
) -> None:
    from metapt.finetune import encoder_source
    from metapt.model import load_encoder

    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    folder = (out / "checkpoint-000002").resolve()
    for name in ("config.json", "tokenizer_config.json"):  # a key added by hand: another size
        path = folder / name
        path.write_text(json.dumps({**json.loads(path.read_text()), "note": "edited by hand"}, indent=4))
    run = runsetup.setup(tiny(out, episodes=4), resume=True)
    assert run.episode == 2 and run.model.encoder.config.note == "edited by hand"
    assert load_encoder(encoder_source(str(out))).config.note == "edited by hand"
    (folder / "tokenizer_config.json").write_text("{cut")  # JSON is parsed, so this is named
    with pytest.raises(CheckpointError, match=r"tokenizer_config.json: damaged \(not JSON: Expecting"):
        checkpoint.resolve(out)
    old_manifest(folder)  # before sizes were recorded: not sized, and loads as it did
    shutil.copy(finished / "tokenizer_config.json", folder / "tokenizer_config.json")
    assert checkpoint.resolve(out) == folder
    assert runsetup.setup(tiny(out, episodes=4), resume=True).episode == 2
    cut(folder / checkpoint.STATE)  # unsized, so found by the loader, which names the file
    with pytest.raises(CheckpointError) as caught:
        runsetup.setup(tiny(out, episodes=4), resume=True)
    assert str(caught.value).startswith(
        f"{folder / checkpoint.STATE}: corrupt (RuntimeError: PytorchStreamReader failed reading zip "
        "archive: failed finding central directory); the checkpoint is not usable"
    )


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({}, "not the training state metapt writes (no episode, history, totals, optimizer, schedule, "),
        ([1, 2], "not the training state metapt writes (no episode, "),
        ("streams", "does not fit this run (KeyError: 'mlm')"),
    ],
)
def test_a_training_state_of_the_wrong_structure_exits_2(
    finished: Path, tmp_path: Path, runner: CliRunner, state: object, message: str
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    path = (out / "current" / checkpoint.STATE).resolve()
    if state == "streams":  # every key there, but the streams of other tasks
        state = torch.load(path, weights_only=True)
        state["streams"] = {group: {} for group in state["streams"]}
    torch.save(state, path)
    old_manifest(path.parent)  # so that the size check does not find it first
    result = runner.invoke(app, ["pretrain", str(AGNOSTIC), "--output-dir", str(out), "--resume", "-q"])
    assert result.exit_code == 2, result.output  # was 1: "internal error: KeyError: 'optimizer'"
    assert result.stderr.startswith(f"error: {path}: {message}") and result.stderr.count("\n") == 1


def test_a_damaged_checkpoint_is_not_offered_as_intact(finished: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    (out / "current").unlink()
    cut(out / "checkpoint-000002" / "model.safetensors")
    with pytest.raises(CheckpointError, match="and no intact checkpoint metapt wrote is left there"):
        checkpoint.resolve(out)


def test_finetune_takes_a_copy_without_the_training_state_but_not_without_weights(
    finished: Path, tmp_path: Path
) -> None:
    from metapt.finetune import encoder_source

    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    folder = (out / "checkpoint-000002").resolve()
    for name in (checkpoint.STATE, checkpoint.HEADS, checkpoint.HEADS_INFO, "mixture.json"):
        (folder / name).unlink()  # what finetuning never reads, left out of a copy to save space
    assert encoder_source(str(folder)) == str(folder)  # the checkpoint folder itself, copied
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):  # an output folder's current
        encoder_source(str(out))  # must be whole (test_finetune_on_an_incomplete_current_checkpoint_...)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer.json: missing \(metapt wrote 8571 bytes\)"):
        encoder_source(str(folder))


def test_a_manifest_from_before_sums_is_sized_only(finished: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    folder = (out / "checkpoint-000002").resolve()
    old_manifest(folder, keep_sizes=True)  # as metapt wrote it before it recorded sha256 sums
    flip(folder / "model.safetensors")
    assert checkpoint.resolve(out) == folder  # nothing recorded to compare the bytes with
    wrote = (folder / checkpoint.HEADS).stat().st_size
    now = cut(folder / checkpoint.HEADS)
    with pytest.raises(
        CheckpointError, match=rf"heads.safetensors: damaged \({now} bytes, metapt wrote {wrote}\)"
    ):
        checkpoint.resolve(out)  # the sizes are still checked


def test_resume_sums_the_checkpoint_once(finished: Path, tmp_path: Path, summed: list[Path]) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    assert engine.pretrain(tiny(out, episodes=3), resume=True)["episodes"] == 3
    weights = ("model.safetensors", checkpoint.HEADS, checkpoint.STATE)
    # each file of checkpoint-000002 once before anything loads (was: twice, by _already_done and
    # again by setup); checkpoint-000003's once as it is written, before its rename
    folders = ("checkpoint-000002", ".checkpoint-000003.partial")
    read = sorted(f"{path.parent.name}/{path.name}" for path in summed)
    assert read == sorted(f"{folder}/{name}" for folder in folders for name in weights)


def test_finetune_sums_the_checkpoint_once_for_every_seed(
    finished: Path, tmp_path: Path, summed: list[Path]
) -> None:
    out = tmp_path / "ft"
    args = ["finetune", "--task", str(SRL), str(finished), "--seeds", "1,2", "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, "--output-dir", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert (out / "seed-2" / "results.json").is_file()
    # the CLI checks checkpoint-000002 and hands the folder to each seed (was: once more per seed);
    # the finetuned models' own files, summed as they are written, are not counted here
    ours = sorted(f"{p.parent.name}/{p.name}" for p in summed if p.parent.name.startswith("checkpoint-"))
    weights = ("model.safetensors", checkpoint.HEADS, checkpoint.STATE)
    assert ours == sorted(f"checkpoint-000002/{name}" for name in weights)
