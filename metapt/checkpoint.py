"""Checkpoints that are Hugging Face encoder folders and never half-written.

Layout of an output directory:

    OUTPUT_DIR/
      checkpoint-000010/    config.json, model.safetensors, tokenizer files, heads.safetensors,
                            heads.json, training_state.pt, mixture.json, metapt.json (written last,
                            with every other file's size and sha256: `check_files` finds a
                            truncated or changed one)
      current -> checkpoint-000010        (a symlink, replaced atomically)
      config.json -> current/config.json  (and every other file: so OUTPUT_DIR itself loads with
                                           AutoModel.from_pretrained / AutoTokenizer.from_pretrained)
      metrics.jsonl
      .metapt-owned.json, .metapt.lock    (what metapt wrote here: metapt/outdir.py; the run's lock: metapt/lock.py)

A new checkpoint is written to a temporary folder, renamed into place, and only then is `current`
switched with one atomic rename; a crash at any point leaves the previous checkpoint as it was.
Only checkpoints metapt recorded as its own are ever removed, and no file it did not write is replaced.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from metapt import outdir
from metapt.errors import CheckpointError, first_line
from metapt.filecheck import MANIFEST, check_files, damaged, digests, sizes, unusable
from metapt.model import saved_state

STATE = "training_state.pt"
HEADS = "heads.safetensors"
HEADS_INFO = "heads.json"
_FILES = ("config.json", "model.safetensors", HEADS, HEADS_INFO, STATE)  # besides the manifest
# What a resume reads of the training state (runstate.restore; engine's summary of a finished run).
STATE_KEYS = ("episode", "history", "totals", "optimizer", "schedule", "streams", "explore", "torch_rng")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_symlink(target: str, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def save(
    output_dir: Path,
    episode: int,
    encoder: Any,
    tokenizer: Any,
    heads: torch.nn.ModuleDict,
    heads_info: dict[str, Any],
    state: dict[str, Any],
    manifest: dict[str, Any],
    files: dict[str, str] | None = None,
) -> Path:
    """Write checkpoint-<episode> and make it current; older checkpoints metapt wrote are removed
    afterwards. `files` (name -> text, e.g. mixture.json) are written into it too. A write that fails
    (a full disk) removes its temporary folder and raises a CheckpointError; the previous checkpoint
    stays current."""
    output_dir.mkdir(parents=True, exist_ok=True)
    name = f"checkpoint-{episode:06d}"
    final, tmp = output_dir / name, output_dir / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, encoder, tokenizer, heads, heads_info, state, {**manifest, "episode": episode}, files)
    except Exception as e:  # ENOSPC surfaces as OSError, or as torch's / safetensors' own errors
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(output_dir).free
        raise CheckpointError(
            f"{output_dir}: cannot write {name} ({type(e).__name__}: {first_line(e)}); "
            f"{free / 2**20:.0f} MiB free on that disk. Nothing was lost: the previous checkpoint "
            "is still current. Free some space and run again with --resume."
        ) from None
    links = [f.name for f in tmp.iterdir()]
    # A top-level file of one of these names that is not metapt's link (someone's own mixture.json)
    # is never recorded as metapt's, so that no later --overwrite removes it.
    theirs = [f for f in links if (output_dir / f).exists() and not (output_dir / f).is_symlink()]
    outdir.claim(output_dir, name, "current", *(f for f in links if f not in theirs))
    outdir.disown(output_dir, *theirs)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _atomic_symlink(name, output_dir / "current")
    for f in links:  # stable top-level links so OUTPUT_DIR itself is a model folder
        link = output_dir / f
        if link.is_symlink():
            continue
        if link.exists():  # outdir.check refuses such a folder before a run starts
            raise CheckpointError(f"{link}: metapt did not write this file and will not replace it")
        os.symlink(Path("current") / f, link)
    _fsync_dir(output_dir)
    mine = outdir.owned(output_dir)
    for old in output_dir.glob("checkpoint-*"):
        if old.name != name and old.name in mine:  # never a checkpoint-500/ of another tool
            shutil.rmtree(old, ignore_errors=True)
            outdir.disown(output_dir, old.name)
    return final


def _write(
    tmp: Path,
    encoder: Any,
    tokenizer: Any,
    heads: torch.nn.ModuleDict,
    heads_info: dict[str, Any],
    state: dict[str, Any],
    manifest: dict[str, Any],
    files: dict[str, str] | None = None,
) -> None:
    """Every file of a checkpoint into `tmp` (with `files`: name -> text), the manifest last, all fsynced."""
    tmp.mkdir()
    encoder.save_pretrained(tmp, safe_serialization=True, state_dict=saved_state(encoder))
    tokenizer.save_pretrained(tmp)
    save_file({k: v.detach().contiguous().cpu() for k, v in heads.state_dict().items()}, tmp / HEADS)
    (tmp / HEADS_INFO).write_text(json.dumps(heads_info, indent=2))
    torch.save(state, tmp / STATE)
    for file, text in (files or {}).items():
        (tmp / file).write_text(text)
    files = sizes(tmp)  # what save_pretrained wrote too
    done = {**manifest, "complete": True, "files": files, "sha256": digests(tmp, files)}
    (tmp / MANIFEST).write_text(json.dumps(done, indent=2))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)


def _episode_if_intact(folder: Path) -> int | None:
    """The episode of a complete checkpoint folder (every file as written, the completion mark), else None."""
    try:
        meta = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    whole = isinstance(meta, dict) and meta.get("complete") and isinstance(meta.get("episode"), int)
    whole = (
        whole
        and all((folder / f).is_file() for f in _FILES)
        and not damaged(folder, meta.get("files"), (), meta.get("sha256"))
    )
    return meta["episode"] if whole else None


def lost_current(path: Path) -> str | None:
    """Why `path`, a metapt output folder whose `current` link is missing or points to nothing, has
    no current checkpoint, naming the intact checkpoints metapt recorded there and how to make one
    current; None when `current` is there or `path` is not such a folder. metapt never picks one
    itself: which checkpoint a run continues is the user's choice."""
    link = path / "current"
    if link.exists() or not path.is_dir():
        return None
    mine = outdir.owned(path)
    found = {
        p.name: e
        for p in sorted(path.glob("checkpoint-[0-9]*"))
        if p.name in mine and p.is_dir() and (e := _episode_if_intact(p)) is not None
    }
    if not found and "current" not in mine:
        return None  # not an output folder of metapt's
    why = (
        f"its `current` link points to {os.readlink(link)}, which is gone"
        if link.is_symlink()
        else "its `current` link is missing"
    )
    if not found:
        return (
            f"{path}: {why}, and no intact checkpoint metapt wrote is left there; pretrain again "
            "(--overwrite starts again in this folder)"
        )
    listed, these, advice = _go_on(found, link)
    return f"{path}: {why}, so no checkpoint is current; metapt wrote {listed} there and {these} intact. {advice}"


def _go_on(found: dict[str, int], link: Path) -> tuple[str, str, str]:
    """The intact checkpoints `found` (name -> episode) as a phrase, "it is" or "they are", and how
    to make the latest one current: metapt never picks one itself (the user chooses what continues)."""
    latest = max(found, key=found.__getitem__)
    listed = ", ".join(f"{n}/ (after episode {e})" for n, e in found.items())
    these = "it is" if len(found) == 1 else "they are"
    return (
        listed,
        these,
        (
            f"metapt does not pick one itself; to go on from {latest}, run\n"
            f"  ln -sfn {latest} {shlex.quote(str(link))}\n"
            "and run the command again (pretrain: with --resume)"
        ),
    )


def resolve_output(path: Path) -> Path:
    """`resolve` for a run's output folder (pretrain --resume): a `current` on a checkpoint that is
    not whole names the other intact checkpoints metapt wrote there, as finetune does."""
    try:
        return resolve(path)  # every file read once to check it: a GB-sized checkpoint takes a second
    except CheckpointError:
        if why := broken_current(path):
            raise CheckpointError(why) from None
        raise


def broken_current(path: Path) -> str | None:
    """Why the checkpoint that `current` points to in `path`, a metapt output folder, cannot be used
    (resolve's checks: incomplete, corrupt manifest), naming the other intact checkpoints metapt
    wrote there and how to make one current, in lost_current's words; None when it is usable or
    `path` is not such a folder. For readers that take only the encoder (finetune)."""
    link = path / "current"
    if not link.is_dir() or not ("current" in outdir.owned(path) or (link / MANIFEST).is_file()):
        return None
    try:
        resolve(path)
        return None
    except CheckpointError as e:  # a damaged file's own advice gives way to the intact ones named here
        why = str(e).removesuffix(f"; {unusable(link.resolve())}")
    name, mine = link.resolve().name, outdir.owned(path)
    found = {
        p.name: e
        for p in sorted(path.glob("checkpoint-[0-9]*"))
        if p.name != name and p.name in mine and p.is_dir() and (e := _episode_if_intact(p)) is not None
    }
    if not found:
        return (
            f"{why}; {link} points to it, and no other intact checkpoint metapt wrote is left in "
            f"{path}; pretrain again (--overwrite starts again in this folder)"
        )
    listed, these, advice = _go_on(found, link)
    return f"{why}; {link} points to it. metapt also wrote {listed} in {path} and {these} intact. {advice}"


def resolve(path: Path) -> Path:
    """The checkpoint folder behind an output directory (or the folder itself); errors say what is wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if why := lost_current(path):
        raise CheckpointError(why)
    folder = (path / "current").resolve() if (path / "current").exists() else path
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(
            f"{path}: not a metapt checkpoint (no {MANIFEST}); run `metapt pretrain` "
            "first, or pass a Hugging Face encoder folder to `metapt finetune`"
        )
    try:
        meta = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{manifest}: corrupt manifest ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{manifest}: corrupt manifest (a JSON {type(meta).__name__}, not an object)")
    missing = [f for f in _FILES if not (folder / f).is_file()]
    if missing or not meta.get("complete"):
        raise CheckpointError(
            f"{folder}: incomplete checkpoint (missing {', '.join(missing) or 'completion mark'})"
        )
    check_files(folder)  # a file cut short (a full disk, a broken copy) is named before anything loads
    return folder


def load_state(
    folder: Path,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(manifest, head tensors, heads info, training state) of a checkpoint folder from `resolve`."""
    manifest = _load(folder / MANIFEST, lambda p: json.loads(p.read_text()))
    heads = _load(folder / HEADS, load_file)
    heads_info = _load(folder / HEADS_INFO, lambda p: json.loads(p.read_text()))
    state = _load(folder / STATE, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:  # e.g. torch.save({}) by another tool: a KeyError in the middle of a resume otherwise
        raise CheckpointError(
            f"{folder / STATE}: not the training state metapt writes (no {', '.join(missing)}); {unusable(folder)}"
        )
    return manifest, heads, heads_info, state


def _load(path: Path, read: Any) -> Any:
    """read(path), or a CheckpointError naming the file (a corrupt or tampered file: never half-load)."""
    try:
        return read(path)
    except Exception as e:  # safetensors' and torch's own errors for a file that is not theirs
        first = first_line(e).split(". ")[0]  # torch's zip errors go on for several sentences
        raise CheckpointError(
            f"{path}: corrupt ({type(e).__name__}: {first}); {unusable(path.parent)}"
        ) from None
