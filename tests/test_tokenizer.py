"""Tokenizers (metapt/data/tokenizer.py): a pretrained one must have the special tokens the tasks
build batches with, a folder that is not there says so, and two tokenizers that differ only in their
special tokens never share feature cache entries."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from conftest import RUNS, tiny_run, write
from typer.testing import CliRunner

from metapt import runsetup
from metapt.cli import app
from metapt.data import pipeline
from metapt.data.tokenizer import load_tokenizer, train_wordpiece
from metapt.errors import MetaptError
from metapt.finetune import task_spec


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WordPiece (ids: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, [BLANK] 5) saved as a folder."""
    folder = tmp_path_factory.mktemp("tokenizer") / "wordpiece"
    train_wordpiece(["ann met bob", "bob met ann"], vocab_size=100).save_pretrained(folder)
    return folder


def edited(saved: Path, where: Path, **config: str | None) -> Path:
    """A copy of `saved` whose tokenizer_config.json sets (or, with None, drops) special tokens."""
    shutil.copytree(saved, where)
    path = where / "tokenizer_config.json"
    text = {**json.loads(path.read_text()), **config}
    path.write_text(json.dumps({k: v for k, v in text.items() if v is not None}))
    return where


def test_tokenizers_differing_only_in_special_tokens_do_not_share_cache_entries(
    saved: Path, tmp_path: Path
) -> None:
    write(tmp_path, "train.txt", "ann met\n\nbob\n")  # two documents, joined with [SEP]
    spec_file = write(
        tmp_path,
        "tok-cache.toml",  # a name no other test cached
        'kind = "masked_lm"\n[data]\nformat = "text"\ntrain = "train.txt"\n[batch]\nmax_length = 16\n',
    )
    spec = task_spec(str(spec_file), None, {})
    plain = load_tokenizer(str(saved))
    other = load_tokenizer(str(edited(saved, tmp_path / "sep", sep_token="[BLANK]")))
    assert other.backend_tokenizer.to_str() == plain.backend_tokenizer.to_str()  # what the key hashed
    assert (plain.sep_token_id, other.sep_token_id) == (3, 5)
    assert pipeline.tokenizer_hash(plain) != pipeline.tokenizer_hash(other)
    first = pipeline.load_task(spec, plain, ("train",)).features["train"]["input_ids"]
    second = pipeline.load_task(spec, other, ("train",)).features["train"]["input_ids"]
    ann, met, bob = (plain.convert_tokens_to_ids(w) for w in ("ann", "met", "bob"))
    assert first == [[2, ann, met, 3, bob, 3]]
    assert second == [[2, ann, met, 5, bob, 5]]  # was the first tokenizer's cached [SEP], 3
    assert len(list(pipeline.features_dir().glob("tok-cache-train-*"))) == 2


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("mask_token", "no mask token (tasks 'mlm' (masked_lm), 'mlm_shuffled' (masked_lm) need one)"),
        ("pad_token", "no pad token (every task needs one)"),
        ("cls_token", "no cls token (every task needs one)"),
        ("sep_token", "no sep token (every task needs one)"),
    ],
)
def test_a_pretrained_tokenizer_without_a_needed_special_token_exits_2(
    saved: Path, tmp_path: Path, token: str, message: str
) -> None:
    folder = edited(saved, tmp_path / "tok", **{token: None})
    spec = tiny_run(tmp_path)
    spec = dataclasses.replace(spec, tokenizer=dataclasses.replace(spec.tokenizer, pretrained=str(folder)))
    with pytest.raises(MetaptError) as caught:  # was TypeError on None deep inside a batch: exit 1
        runsetup.setup(spec, resume=False)
    assert str(caught.value) == (
        f"[tokenizer].pretrained {str(folder)!r}: its tokenizer has {message}; give a tokenizer that has "
        "them (BERT's and RoBERTa's have all), or leave [tokenizer].pretrained empty to train a WordPiece"
    )


def test_the_cli_names_the_folder_and_the_missing_token(
    saved: Path, tmp_path: Path, runner: CliRunner
) -> None:
    folder = edited(saved, tmp_path / "no-mask", mask_token=None)
    text = (RUNS / "agnostic.toml").read_text().replace("tasks/", f"{RUNS / 'tasks'}/")
    run = write(tmp_path, "run.toml", text.replace("vocab_size = 300", f'pretrained = "{folder}"'))
    result = runner.invoke(app, ["pretrain", str(run), "--output-dir", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 2, result.output  # was 1: "internal error: TypeError: masked_fill() ..."
    assert result.stderr.startswith(f"error: [tokenizer].pretrained '{folder}': its tokenizer has no mask")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("name", ["/no/such/folder", "./no-such-folder", "models/bert/tokenizer"])
def test_a_pretrained_folder_that_is_not_there_says_so(name: str) -> None:
    with pytest.raises(MetaptError) as caught:  # was "Repo id must be in the form 'repo_name' ..."
        load_tokenizer(name)
    assert str(caught.value) == (
        f"cannot load a tokenizer from {name!r}: no such folder. Give a local folder with tokenizer "
        "files, or a hub id while online."
    )


def test_a_hub_id_that_is_not_a_folder_either_says_both() -> None:
    with pytest.raises(MetaptError) as caught:  # the hub is offline in every test
        load_tokenizer("no-such-org/no-such-tokenizer")
    message = str(caught.value)
    assert message.startswith(
        "cannot load a tokenizer from 'no-such-org/no-such-tokenizer': no such folder, and the hub did "
        "not provide it ("
    )
    assert "\n" not in message and ".." not in message


def test_a_pretrained_folder_under_home_is_read_with_a_tilde(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # runspec.inputs reads "~/tok" as HOME/tok (what --overwrite must not clear); loading did not,
    # and took it for a malformed hub id
    from transformers import BertConfig, BertModel

    from metapt.model import load_encoder

    shutil.copytree(saved, tmp_path / "tok")
    config = BertConfig(
        vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "enc")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_tokenizer("~/tok").vocab_size == load_tokenizer(str(saved)).vocab_size
    assert load_encoder("~/enc").config.hidden_size == 8


def test_a_trained_wordpiece_never_exceeds_vocab_size(caplog: pytest.LogCaptureFixture):
    """Every character went in, alone and as ##piece, whatever vocab_size said: 60 distinct
    characters made a 126-entry vocabulary for vocab_size 100, silently."""
    rare = "".join(chr(0x3B1 + i) for i in range(20))  # 20 Greek letters, each once
    text = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?()-+ " * 5 + " ".join(rare)
    tok = train_wordpiece([text], vocab_size=100)
    assert len(tok) == 100
    kept = [c for c in rare if c in tok.get_vocab()]
    assert len(kept) == (100 - 6) // 2 - 46  # 46 common characters first, then the rare alphabetically
    assert kept == sorted(rare)[: len(kept)]
    assert tok.tokenize(rare[-1]) == ["[UNK]"]
    assert "66 distinct characters, but vocab_size 100 holds 47" in caplog.text
    assert "to 138 to keep them all" in caplog.text
    caplog.clear()
    assert len(train_wordpiece([text], vocab_size=138)) == 138 and not caplog.text
