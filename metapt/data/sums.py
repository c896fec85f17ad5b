"""sha256 sums of metapt's cache entries, so that a damaged entry is rebuilt instead of being used.

An entry is a file (a synthetic corpus split: its sum beside it in .FILE.sha256) or a folder (a
feature cache entry: the sums of its files in FOLDER/metapt-sha256.json). The sum is written after
the entry, atomically, so an entry without one was cut short while it was written, or written by an
older metapt; either way it is rebuilt. Hashing costs about 1 ms per MiB (10 ms for the default run's 9 MiB), small beside re-encoding.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

FOLDER_SUMS = "metapt-sha256.json"


def sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            h.update(chunk)
    return h.hexdigest()


def _folder_sums(folder: Path) -> dict[str, str]:
    return {f.name: sha256(f) for f in sorted(folder.iterdir()) if f.is_file() and f.name != FOLDER_SUMS}


def write_atomically(path: Path, data: bytes) -> None:
    """`data` into `path` through a temporary file and a rename: a concurrent or interrupted run
    never leaves a half-written file behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a cache file is as readable as any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sidecar(path: Path) -> Path:
    """Where a cache file's sum is kept: hidden beside it, so a folder listing shows the data alone."""
    return path.with_name(f".{path.name}.sha256")


def seal_file(path: Path) -> None:
    """Record the sum of a cache file just written (in .NAME.sha256 beside it)."""
    write_atomically(_sidecar(path), f"{sha256(path)}\n".encode())


def seal_folder(folder: Path) -> None:
    """Record the sums of every file of a cache folder just written (in FOLDER/metapt-sha256.json)."""
    write_atomically(folder / FOLDER_SUMS, json.dumps(_folder_sums(folder), indent=1).encode())


def file_intact(path: Path) -> bool | None:
    """Whether a cache file matches its recorded sum; None when it has none (unsealed)."""
    try:
        recorded = _sidecar(path).read_text().strip()
    except OSError:
        return None
    try:
        return sha256(path) == recorded
    except OSError:
        return False


def folder_intact(folder: Path) -> bool | None:
    """Whether every file of a cache folder's recorded sums is there and matches; None when it has
    no sums (unsealed). Files it does not list are not looked at: `datasets` may put its own
    cache-*.arrow beside a loaded dataset's files, and load_from_disk reads only those of state.json."""
    try:
        recorded = json.loads((folder / FOLDER_SUMS).read_text())
    except OSError:
        return None
    except ValueError:  # the sums themselves damaged
        return False
    if not isinstance(recorded, dict) or not recorded:
        return False
    try:
        return all(sha256(folder / name) == digest for name, digest in recorded.items())
    except OSError:  # a listed file gone
        return False
