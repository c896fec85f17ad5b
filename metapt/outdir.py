"""Output folders: what metapt wrote in them, never writing over anything else, one process at a time.

Every command that writes a folder (pretrain, finetune, compare) records the top-level entries it
creates in FOLDER/.metapt-owned.json before it creates them. A fresh run into a folder that is not
empty refuses and says how to go on; `--overwrite` removes only the recorded entries and still
refuses when something metapt did not write has a name the run would write. A run holds the
folder's lock (lock.py) while it writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from metapt.catalog import SCHEDULERS
from metapt.errors import MetaptError
from metapt.lock import LOCK, Lock

RECORD = ".metapt-owned.json"
# metapt's own temporary names (a checkpoint being written, the `current` link being switched).
_TEMPORARY = re.compile(r"\.checkpoint-\d{6}\.partial|\.current\.tmp|\.metrics\.jsonl\.tmp")
# Top-level names each kind of run writes: a file of one of these names that metapt did not write
# blocks even --overwrite. Pretraining links every checkpoint file (Hugging Face's names) to the top.
_HF_FILES = (
    "config.json model.safetensors tokenizer.json tokenizer_config.json special_tokens_map.json "
    "vocab.txt vocab.json merges.txt added_tokens.json generation_config.json"
).split()
WRITES = {
    "pretrain": re.compile(
        "|".join(
            [r"checkpoint-\d{6}", "current", r"metrics\.jsonl", r"report\.(png|html)", "finetune"]
            + [re.escape(n) for n in _HF_FILES]
            + [r"heads\.(safetensors|json)", r"training_state\.pt", r"metapt\.json", r"mixture\.json"]
        )
    ),
    "finetune": re.compile(r"results\.json|predictions|model|seed-\d+|evaluation-\w+\.json"),
    "compare": re.compile("|".join([r"results\.(json|md)", r"compare\.png", r"\.probe", *SCHEDULERS])),
}


def _read(folder: Path) -> dict:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _legacy(folder: Path) -> set[str]:
    """What a pretraining folder written before the record existed holds of metapt's own."""
    if not (folder / "current" / "metapt.json").is_file():
        return set()
    ours = {"current", "metrics.jsonl", "report.png", "report.html", "finetune"}
    for p in folder.iterdir():
        if p.name.startswith("checkpoint-") and (p / "metapt.json").is_file():
            ours.add(p.name)
        elif p.is_symlink() and os.readlink(p).startswith("current/"):
            ours.add(p.name)
    return ours


def owned(folder: Path) -> set[str]:
    """Top-level names in `folder` that metapt wrote (recorded, or recognised in an older run)."""
    record = _read(folder)
    names = set(record.get("entries", [])) if record else _legacy(folder)
    return names | {RECORD, LOCK}


def _update(folder: Path, change: Callable[[dict], dict]) -> None:
    """Read, change and rewrite the record under a lock on the record file itself, so two processes
    that write one folder (a run and `metapt report`) never lose each other's entries. A record cut
    short by a crash reads as absent, and an older run's entries are then recognised again."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / RECORD, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(ImportError, OSError):
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed
        try:
            record = json.loads(os.pread(fd, 1 << 20, 0) or b"{}")
        except ValueError:
            record = {}
        if not record:
            record = {"kind": "", "entries": sorted(_legacy(folder))}
        new = change(dict(record))
        if new != record or not os.fstat(fd).st_size:
            data = json.dumps(new, indent=1).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def claim(folder: Path, *names: str, kind: str = "") -> None:
    """Record `names` as metapt's own in `folder`, before they are created."""
    record = _read(folder)
    if record and set(names) <= set(record.get("entries", [])) and (record.get("kind") or not kind):
        return
    _update(
        folder,
        lambda r: {"kind": r.get("kind") or kind, "entries": sorted({*r.get("entries", []), *names})},
    )


def claim_if_ours(folder: Path, *names: str) -> None:
    """Record `names` in a folder metapt already writes (one with a record or an older run's)."""
    if (folder / RECORD).is_file() or _legacy(folder):
        claim(folder, *names)


@contextlib.contextmanager
def claimed_if_ours(folder: Path, name: str) -> Iterator[None]:
    """`claim_if_ours(folder, name)` for a block that creates `name`. A block that fails before
    `name` exists (run_folder removes a folder it made and left empty) takes a new entry back out,
    so a run that never started (a bad checkpoint, bad data) leaves the record as it was."""
    new = name not in owned(folder)
    claim_if_ours(folder, name)  # before `name` is made: a kill in between never leaves it unrecorded
    try:
        yield
    except BaseException:
        if new and not (folder / name).exists() and not (folder / name).is_symlink():
            disown(folder, name)
        raise


def disown(folder: Path, *names: str) -> None:
    """Forget entries metapt has removed."""
    record = _read(folder)
    if record and set(names) & set(record.get("entries", [])):
        _update(folder, lambda r: {**r, "entries": sorted(set(r.get("entries", [])) - set(names))})


def split(folder: Path) -> tuple[list[str], list[str]]:
    """(metapt's entries, everyone else's) in `folder`, without the record and the lock."""
    if not folder.is_dir():
        return [], []
    ours = owned(folder)
    names = sorted(p.name for p in folder.iterdir() if p.name not in (RECORD, LOCK))
    mine = [n for n in names if n in ours or _TEMPORARY.fullmatch(n)]
    return mine, [n for n in names if n not in mine]


def _shown(folder: Path, names: list[str], most: int = 8) -> str:
    """Names as `ls -F` shows folders, the first `most` of them."""
    shown = [n + ("/" if (folder / n).is_dir() and not (folder / n).is_symlink() else "") for n in names]
    more = f" and {len(shown) - most} more" if len(shown) > most else ""
    return ", ".join(shown[:most]) + more


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def check_writable(folder: Path) -> None:
    """MetaptError unless `folder` is (or can become) a writable folder."""
    if folder.exists() and not folder.is_dir():
        raise MetaptError(f"{folder}: output folder is a file; give a folder with --output-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MetaptError(f"{folder}: cannot create the output folder ({e.strerror})") from None
    if not _writable(folder):
        raise MetaptError(f"{folder}: the output folder is not writable; give another with --output-dir")


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def _describe(folder: Path) -> str:
    """What metapt's entries in a folder are, in words (a pretraining run's progress when known)."""
    try:
        manifest = json.loads((folder / "current" / "metapt.json").read_text())
        return f"run (a checkpoint after episode {manifest['episode']} of {manifest['episodes']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "output"


def check(folder: Path, kind: str, overwrite: bool) -> None:
    """MetaptError unless a fresh run of `kind` (pretrain | finetune | compare) may write `folder`:
    it is absent or empty, or `overwrite` is given, what metapt wrote there is a `kind` run's, and
    nothing metapt did not write has a name the run writes. The message lists what is there and how
    to go on."""
    if folder.exists() and not folder.is_dir():
        raise MetaptError(f"{folder}: the output folder is a file; give a folder with --output-dir")
    mine, theirs = split(folder)
    clash = [n for n in theirs if WRITES[kind].fullmatch(n)]
    if clash:
        raise MetaptError(
            f"{folder} holds {_shown(folder, clash)}, which metapt did not write and a {kind} run "
            "writes; metapt never replaces those. Choose another folder with --output-dir, or move "
            "them away."
        )
    was = _read(folder).get("kind") or ("pretrain" if _legacy(folder) else "")
    if overwrite and mine and was and was != kind:
        # --overwrite starts a run of the same kind again; a pretraining checkpoint (hours of work)
        # is not removed by a compare or finetune run pointed at its folder by mistake.
        raise MetaptError(
            f"{folder} holds metapt's {was} {_describe(folder)}: {_shown(folder, mine, 4)}. A {kind} run "
            f"does not overwrite it (--overwrite starts only a {was} run there again): write elsewhere "
            "with --output-dir, or remove that folder yourself first."
        )
    if overwrite or not (mine or theirs):
        return
    held = [f"metapt's {_describe(folder)}: {_shown(folder, mine, 4)}"] if mine else []
    held += [f"{_entries(len(theirs))} metapt did not write: {_shown(folder, theirs, 12)}"] if theirs else []
    ways = ["continue the run:  --resume"] if kind == "pretrain" and mine else []
    keep = f"; keeps {_shown(folder, theirs, 12)}" if theirs else ""
    ways += [
        "write elsewhere:   --output-dir DIR",
        f"start again here:  --overwrite (removes metapt's {_entries(len(mine))} only{keep})",
    ]
    raise MetaptError(
        f"{folder} is not empty. It holds:\n  "
        + "\n  ".join(held)
        + f"\nA fresh {kind} run would write over it. To go on:\n  "
        + "\n  ".join(ways)
    )


def check_inputs(folder: Path, inputs: tuple[Path, ...]) -> None:
    """MetaptError when a file or folder the run reads (the checkpoint to finetune, a mixture.json,
    a pretrained encoder) lies in one of metapt's entries of `folder`, which a fresh run there
    would remove before reading it."""
    if not folder.is_dir():
        return
    ours = owned(folder)
    for path in inputs:
        if not path.exists():  # a hub id, or a file the run reports missing itself
            continue
        try:
            inside = path.resolve().relative_to(folder.resolve()).parts
        except ValueError:  # elsewhere
            continue
        holds = inside[0] in ours if inside else bool(split(folder)[0])  # in an entry, or is the folder
        if holds:
            raise MetaptError(
                f"{folder} holds {path}, which this run reads; a fresh run there would remove it "
                "first. Write elsewhere with --output-dir"
            )


def clear(folder: Path) -> list[str]:
    """Remove metapt's own entries from `folder` (nothing else); returns their names."""
    mine, _ = split(folder)
    for name in mine:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    disown(folder, *mine)
    return mine


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write of `path` into a MetaptError saying how much space is left: a full disk
    surfaces as OSError, or as torch's and safetensors' own errors."""
    try:
        yield
    except MetaptError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        where = next((p for p in (path, *path.parents) if p.exists()), Path("."))
        free = shutil.disk_usage(where).free / 2**20
        raise MetaptError(
            f"{path}: cannot write it ({type(e).__name__}: {first}); {free:.0f} MiB free on that disk"
        ) from None


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of `folder`'s path that does not exist yet (None: it exists)."""
    missing = None
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing = p
    return missing


@contextlib.contextmanager
def run_folder(
    folder: Path, kind: str, command: str, resume: bool, overwrite: bool, inputs: tuple[Path, ...] = ()
) -> Iterator[Lock]:
    """Check, lock and (a fresh run with `overwrite`) clear `folder`; the lock is held in the block.
    A fresh run is refused when one of its `inputs` lies in what it would clear.

    The folder is checked before anything is written into it, and again under the lock, so a
    second process that raced the first finds the folder in use, or no longer empty. Folders made
    here are removed again when the block fails before writing anything into them."""
    if resume and overwrite:
        raise MetaptError("--resume and --overwrite: choose one (continue the run, or start it again)")
    if resume and not folder.is_dir():
        raise MetaptError(f"{folder}: no such folder to resume; run without --resume to start there")
    Lock(folder, command).probe()  # a run in progress: say so, rather than that the folder is used
    if not resume:
        check_inputs(folder, inputs)
        check(folder, kind, overwrite)
    made = _first_missing(folder)
    check_writable(folder)
    try:
        with Lock(folder, command) as lock:
            if not resume:
                check(folder, kind, overwrite)
                clear(folder)
            claim(folder, kind=kind)  # a folder of an older metapt gets its record now
            yield lock
    except BaseException:
        if made is not None and all(p.is_dir() or p.name in (RECORD, LOCK) for p in made.rglob("*")):
            shutil.rmtree(made, ignore_errors=True)
        raise
