"""What metapt wrote in a checkpoint, file by file: the sizes its manifest records when the
checkpoint is written, and the check that names a file that is missing or cut short (a full disk, a
broken copy) before anything loads it. The manifest itself is checkpoint.py's."""

from __future__ import annotations

import json
import shlex
from collections.abc import Collection
from pathlib import Path

from metapt.errors import CheckpointError, first_line

MANIFEST = "metapt.json"  # written last; its "files" hold the sizes


def unusable(folder: Path) -> str:
    """How to go on from a damaged checkpoint `folder` (the end of its one-line message)."""
    return (
        "the checkpoint is not usable: restore it from a copy, make another intact checkpoint current "
        f"(ln -sfn checkpoint-N {shlex.quote(str(folder.parent / 'current'))}), or pretrain again"
    )


def sizes(folder: Path) -> dict[str, int]:
    """The size in bytes of every file in `folder` but the manifest (which records them)."""
    return {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file() and f.name != MANIFEST}


def damaged(folder: Path, recorded: object, missing_ok: Collection[str] = ()) -> list[str]:
    """'FILE: damaged (...)' for every file of `recorded` (name -> size metapt wrote) that is missing
    (unless in `missing_ok`) or of another size. A .json file is only parsed, never sized: people
    hand-edit a Hugging Face folder's config.json and tokenizer_config.json, and may."""
    out: list[str] = []
    for name, size in (recorded if isinstance(recorded, dict) else {}).items():
        path = folder / name
        if not isinstance(size, int) or (name in missing_ok and not path.exists()):
            continue
        if not path.is_file():
            out.append(f"{path}: missing (metapt wrote {size} bytes)")
        elif name.endswith(".json"):
            try:
                json.loads(path.read_bytes())
            except ValueError as e:  # UnicodeDecodeError is one
                out.append(f"{path}: damaged (not JSON: {first_line(e)})")
        elif (now := path.stat().st_size) != size:
            out.append(f"{path}: damaged ({now} bytes, metapt wrote {size})")
    return out


def check_files(folder: Path, missing_ok: Collection[str] = ()) -> None:
    """CheckpointError naming every file of a checkpoint folder that is not as metapt wrote it (its
    manifest's "files"); a checkpoint written before sizes were recorded is not checked."""
    try:
        meta = json.loads((folder / MANIFEST).read_bytes())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{folder / MANIFEST}: corrupt manifest ({first_line(e)}); {unusable(folder)}"
        ) from None
    if bad := damaged(folder, meta.get("files") if isinstance(meta, dict) else None, missing_ok):
        raise CheckpointError(f"{'; '.join(bad)}; {unusable(folder)}")
