"""Command-line overrides of a parsed run spec (the CLI options win over the file)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from metapt.errors import Problem, SpecError
from metapt.spec import RunSpec
from metapt.validation import device_problem


def override(
    spec: RunSpec,
    *,
    episodes: int | None = None,
    output_dir: Path | None = None,
    seed: int | None = None,
    device: str | None = None,
    report_to: tuple[str, ...] | None = None,
) -> RunSpec:
    """A copy of `spec` with the given [run] values replaced."""
    if device is not None and (wrong := device_problem(device)) is not None:
        raise SpecError([Problem("--device", "", wrong)])
    changes = {
        k: v
        for k, v in {"episodes": episodes, "seed": seed, "device": device, "report_to": report_to}.items()
        if v is not None
    }
    if output_dir is not None:
        changes["output_dir"] = str(output_dir)
    return dataclasses.replace(spec, run=dataclasses.replace(spec.run, **changes))


def inputs(spec: RunSpec) -> tuple[Path, ...]:
    """The local files and folders a run reads besides its tasks: the mixture it replays and a
    pretrained encoder or tokenizer (a hub id is no local path and is skipped where it is used)."""
    from metapt.mixture import location

    found = [location(spec.path, spec.meta.mixture)] if spec.meta.mixture else []
    found += [Path(p).expanduser() for p in (spec.model.pretrained, spec.tokenizer.pretrained) if p]
    return tuple(found)
