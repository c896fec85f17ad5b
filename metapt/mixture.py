"""The learned mixture as data: OUTPUT_DIR/mixture.json, written with every checkpoint, and the
shares the `mixture` scheduler reads back from such a file. No torch.

mixture.json says, over the episodes completed so far and per phase (each tenth of them):

    {"format": "metapt-mixture/1", "episodes": 40, "sources": ["mlm", "span_selection"],
     "counts": {"mlm": 12, "span_selection": 28},        episodes that trained the source
     "explored": {...},                                   of which epsilon-greedy explorations
     "tokens": {...}, "train_flops": {...},              training tokens and FLOPs spent on it
     "episode_shares": {...}, "token_shares": {...}, "flop_shares": {...},     each sums to 1
     "selection_flops": 1.2e11,                           spent on choosing (on no one source)
     "phases": [{"first_episode": 1, "last_episode": 4, "counts": ..., "..._shares": ...}, ...]}

The scheduler replays episode shares: a phase's (or the file's) `counts`, or its `episode_shares`
when a hand-written file gives no counts. Integer counts keep the replay exact. `metapt compare`
replays each seed's meta run (`run_order`, `replaying`).
"""

from __future__ import annotations

import dataclasses
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

from metapt.errors import MetaptError
from metapt.spec import MetaSpec, RunSpec

FORMAT = "metapt-mixture/1"
FILE = "mixture.json"
PHASES = 10  # the run is cut into tenths (fewer when it has fewer episodes)
Shares = tuple[tuple[Fraction, ...], ...]  # per phase, per source (in the run's source order)


def location(run_spec: str, value: str) -> Path:
    """Where `[meta].mixture` points: relative to the run spec's folder (absolute stays as is)."""
    return Path(run_spec).parent / Path(value).expanduser()


def read_records(path: Path, episodes: int) -> dict[int, dict[str, Any]]:
    """The metrics.jsonl records of episodes 1..`episodes` by episode (missing file: none)."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if record["episode"] <= episodes:
                out[record["episode"]] = record
    return out


def _shares(values: dict[str, float]) -> dict[str, float]:
    total = sum(values.values())
    return {k: (v / total if total else 0.0) for k, v in values.items()}


def _part(sources: list[str], history: list[str], records: dict[int, dict], first: int) -> dict[str, Any]:
    """Counts, tokens, FLOPs and their shares of the episodes `first`.. first + len(history) - 1."""
    counts, explored = dict.fromkeys(sources, 0), dict.fromkeys(sources, 0)
    n_tokens, flops = dict.fromkeys(sources, 0), dict.fromkeys(sources, 0.0)
    for episode, task in enumerate(history, start=first):
        record = records.get(episode, {})  # tokens and FLOPs are known from metrics.jsonl only
        counts[task] += 1
        explored[task] += int(bool(record.get("explored", False)))
        n_tokens[task] += int(record.get("tokens", 0))
        flops[task] += float(record.get("train_flops", 0))
    return {
        "counts": counts,
        "explored": explored,
        "tokens": n_tokens,
        "train_flops": flops,
        "episode_shares": _shares(counts),
        "token_shares": _shares(n_tokens),
        "flop_shares": _shares(flops),
    }


def summarise(sources: list[str], history: list[str], records: dict[int, dict]) -> dict[str, Any]:
    """mixture.json's content for a run whose episode e (1-based) trained history[e - 1]."""
    n = len(history)
    phases, count = [], min(PHASES, n)
    for k in range(count):
        lo, hi = -(-k * n // count), -(-(k + 1) * n // count)  # episode indices [lo, hi) of phase k
        phases.append(
            {"first_episode": lo + 1, "last_episode": hi, **_part(sources, history[lo:hi], records, lo + 1)}
        )
    selection = sum(float(records.get(e, {}).get("selection_flops", 0)) for e in range(1, n + 1))
    return {
        "format": FORMAT,
        "episodes": n,
        "sources": list(sources),
        **_part(sources, history, records, 1),
        "selection_flops": selection,
        "phases": phases,
    }


def phase_of(episode: int, episodes: int, phases: int) -> int:
    """The phase (0-based) of episode index `episode` (0-based) in a run of `episodes`."""
    return episode * phases // max(1, episodes)


def _weights(table: Any, sources: list[str], where: str) -> tuple[tuple[Fraction, ...] | None, list[str]]:
    """A phase's (or the file's) replay weights in `sources` order, or the problems with them."""
    values = table.get("counts", table.get("episode_shares")) if isinstance(table, dict) else None
    if not isinstance(values, dict):
        return None, [f"{where}: no counts or episode_shares table of source -> episodes"]
    problems = []
    if unknown := [k for k in values if k not in sources]:
        problems.append(
            f"{where}: {', '.join(map(repr, unknown))} not a source of this run; sources: {', '.join(sources)}"
        )
    if missing := [s for s in sources if s not in values]:
        problems.append(
            f"{where}: no share for {', '.join(map(repr, missing))}; the shares must cover every source "
            f"of the run ({', '.join(sources)}; 0 for a source never to train)"
        )
    bad = {k: v for k, v in values.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0}
    problems += [f"{where}: {k!r} = {v!r}; expected a number >= 0" for k, v in bad.items()]
    if problems:
        return None, problems
    weights = tuple(Fraction(str(values[s])) for s in sources)  # str: the decimal as written, exactly
    if sum(weights) == 0:
        return None, [f"{where}: every share is 0; at least one source must train"]
    return weights, []


def load(path: Path, sources: list[str], phases: bool) -> tuple[Shares | None, list[str]]:
    """(shares per phase, problems) of a mixture file for a run over `sources`; with `phases` one
    entry per phase of the file, else one overall entry."""
    if not path.is_file():
        return None, [f"{str(path)!r}: no such file; give the mixture.json a run wrote in its output_dir"]
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, [f"{path}: not JSON ({e})"]
    if not isinstance(table, dict):
        return None, [f"{path}: expected a JSON object like the mixture.json metapt writes"]
    if not phases:
        weights, problems = _weights(table, sources, str(path))
        return ((weights,) if weights else None), problems
    if not isinstance(table.get("phases"), list) or not table["phases"]:
        return None, [f"{path}: no phases list; mixture_phases = true replays per-phase shares"]
    out, problems = [], []
    for k, phase in enumerate(table["phases"]):
        weights, found = _weights(phase, sources, f"{path}: phases[{k}]")
        out.append(weights)
        problems += found
    return (None if problems else tuple(out)), problems


def replay_shares(path: Path, sources: list[str], phases: bool) -> Shares:
    """The shares to replay; a MetaptError names every problem with the file."""
    shares, problems = load(path, sources, phases)
    if problems or shares is None:
        raise MetaptError("; ".join(problems))
    return shares


def shares_for(run_spec: str, meta: MetaSpec, sources: list[str]) -> Shares | None:
    """What a run's scheduler replays: the shares of [meta].mixture under the mixture scheduler,
    else None."""
    if meta.scheduler != "mixture":
        return None
    return replay_shares(location(run_spec, meta.mixture), sources, meta.mixture_phases)


def run_order(schedulers: list[str], spec: RunSpec) -> list[str]:
    """The order `metapt compare` runs schedulers in: `mixture` replays the mixture.json of that
    seed's meta run, so it runs after meta; without meta in the list, the run spec's [meta].mixture."""
    if "mixture" not in schedulers:
        return schedulers
    if "meta" not in schedulers:
        if not spec.meta.mixture:
            raise MetaptError(
                "--schedulers mixture replays the shares of that seed's meta run: add meta to "
                "--schedulers (it runs first), or set [meta].mixture in the run spec"
            )
        return schedulers
    if schedulers.index("mixture") > schedulers.index("meta"):
        return schedulers
    rest = [s for s in schedulers if s != "mixture"]
    return [*rest[: rest.index("meta") + 1], "mixture", *rest[rest.index("meta") + 1 :]]


def replaying(spec: RunSpec, meta_dir: Path) -> RunSpec:
    """The run spec with [meta].mixture set to a meta run's mixture.json (checked before it runs)."""
    path = (meta_dir / FILE).resolve()
    replay_shares(path, [t.name for t in spec.sources], spec.meta.mixture_phases)
    return dataclasses.replace(spec, meta=dataclasses.replace(spec.meta, mixture=str(path)))
