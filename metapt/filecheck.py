"""What metapt wrote in a checkpoint, file by file: the size and sha256 of every file its manifest
records when the checkpoint is written, and the check that names a file that is missing, cut short
(a full disk, a broken copy) or changed in place (a flipped byte, a bad disk) before anything loads
it. The manifest itself is checkpoint.py's."""

from __future__ import annotations

import json
import shlex
from collections.abc import Collection
from pathlib import Path

from metapt.data.sums import sha256
from metapt.errors import CheckpointError, first_line

MANIFEST = "metapt.json"  # written last; its "files" hold the sizes, its "sha256" the sums


def unusable(folder: Path) -> str:
    """How to go on from a damaged checkpoint `folder` (the end of its one-line message)."""
    return (
        "the checkpoint is not usable: restore it from a copy, make another intact checkpoint current "
        f"(ln -sfn checkpoint-N {shlex.quote(str(folder.parent / 'current'))}), or pretrain again"
    )


def sizes(folder: Path) -> dict[str, int]:
    """The size in bytes of every file in `folder` but the manifest (which records them)."""
    return {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file() and f.name != MANIFEST}


def digests(folder: Path, names: Collection[str]) -> dict[str, str]:
    """The sha256 of every file of `names` in `folder` but the .json ones (people edit those, below)."""
    return {name: sha256(folder / name) for name in sorted(names) if not name.endswith(".json")}


def damaged(
    folder: Path, recorded: object, missing_ok: Collection[str] = (), recorded_sums: object = None
) -> list[str]:
    """'FILE: damaged (...)' for every file of `recorded` (name -> size metapt wrote) that is missing
    (unless in `missing_ok`), of another size, or of the same size with another sha256 than
    `recorded_sums` holds (name -> hex; files it does not list, and manifests written before sums
    were kept, are sized only). A .json file is only parsed, never sized or summed: people hand-edit
    a Hugging Face folder's config.json and tokenizer_config.json, and may."""
    out: list[str] = []
    wanted = recorded_sums if isinstance(recorded_sums, dict) else {}
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
        elif isinstance(want := wanted.get(name), str) and (why := _changed(path, want)):
            out.append(f"{path}: damaged ({why})")
    return out


def _changed(path: Path, want: str) -> str | None:
    """Why a file's bytes are not the ones metapt recorded (`want`, their sha256); None when they are."""
    try:
        have = sha256(path)
    except OSError as e:
        return f"unreadable: {first_line(e)}"
    return None if have == want else f"its bytes changed: sha256 {have[:12]}..., metapt wrote {want[:12]}..."


def check_files(folder: Path, missing_ok: Collection[str] = ()) -> None:
    """CheckpointError naming every file of a checkpoint folder that is not as metapt wrote it (its
    manifest's "files" and "sha256"); a checkpoint written before sizes were recorded is not checked."""
    try:
        meta = json.loads((folder / MANIFEST).read_bytes())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{folder / MANIFEST}: corrupt manifest ({first_line(e)}); {unusable(folder)}"
        ) from None
    meta = meta if isinstance(meta, dict) else {}
    if bad := damaged(folder, meta.get("files"), missing_ok, meta.get("sha256")):
        raise CheckpointError(f"{'; '.join(bad)}; {unusable(folder)}")
