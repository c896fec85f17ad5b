"""Every rule a task or run spec must satisfy, in one place; every problem in a file is reported at once.

The dataclasses of metapt/spec.py are the contract: a field's type says what TOML value it takes, its
metadata the allowed `choices` and the inclusive `low`/`high` bounds. `build` walks a TOML table against
one of them, collecting problems instead of stopping at the first; `check` is the one test of a single
value, for spec fields and a kind's `[options]` alike, so the same mistake reads the same everywhere.
`parse_task` adds the rules across a task's keys, `build_run` and `run_problems` those across a run
spec and the tasks it names (metapt/resolve.py finds them). No torch.
"""

from __future__ import annotations

import dataclasses
import glob
import re
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any

import tomli

from metapt import mixture
from metapt.catalog import FORMATS, KINDS, SYNTHETIC_CORPORA
from metapt.errors import Problem, SpecError, suggest
from metapt.spec import LOCAL_FORMATS, SPLITS, DataSpec, MetaSpec, RunSpec, TaskSpec

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _allowed(options: typing.Iterable[str]) -> str:
    return ", ".join(sorted(options))


# ------------------------------------------------------------------------------ one value
def check(
    value: Any,
    want: type,
    choices: Collection[str] = (),
    low: float | None = None,
    high: float | None = None,
    required: bool = False,
) -> tuple[Any, list[str]]:
    """(the value, []) when it is allowed (an integer widened where a number is wanted; a list of
    strings as `want`), else (None, what is wrong). `required` strings may not be empty."""
    if want in (list, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, [f"expected a list of strings, got {value!r}"]
        bad = [v for v in value if choices and v not in choices]
        return (None, [_not_allowed(v, choices) for v in bad]) if bad else (want(value), [])
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
        return None, [f"expected {_TYPE_NAMES.get(want, want.__name__)}, got {value!r}"]
    if value != value:  # NaN passes every comparison below
        return None, ["nan is not a number"]
    if choices and value not in choices and not (value == "" and not required):
        return None, [_not_allowed(value, choices)]
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        return None, [f"{value!r} is out of range; allowed: {bounds}"]
    return value, []


def _not_allowed(value: Any, choices: Collection[str]) -> str:
    return f"{value!r} is not allowed{suggest(str(value), choices)}; allowed: {_allowed(choices)}"


def device_problem(name: str) -> str | None:
    """What is wrong with a device name ([run].device, --device), or None."""
    if name in ("auto", "cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit()):
        return None
    return f"{name!r} is not allowed; allowed: auto, cpu, cuda, cuda:N, mps"


# ------------------------------------------------------------------------------ one table
def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix.endswith("]") else (f"[{prefix}].{name}" if prefix else name)


def _table(prefix: str, name: str) -> str:
    inner = f"{prefix.strip('[]').split(']')[0]}.{name}" if prefix else name
    return f"[{inner}]"


def _columns(value: dict, key: str) -> list[str]:
    """[data.columns]: each role maps to a column name or a non-empty list of them."""
    table = key.replace("].", ".", 1) + "]" if key.startswith("[") else f"[{key}]"
    return [
        f"{table}.{k}: expected a column name or a list of them, got {v!r}"
        for k, v in value.items()
        if not isinstance(v, str) and not (isinstance(v, list) and v and all(isinstance(x, str) for x in v))
    ]


def _field(value: Any, hint: Any, meta: dict, key: str, problems: list[str]) -> Any:
    """One field's value checked against its type hint and metadata; None (reported) when wrong."""
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table, got {value!r}")
            return None
        if typing.get_args(hint)[1] is not Any:  # column names: a string or a list of strings
            problems += _columns(value, key)
        return dict(value)
    want = tuple if origin is tuple else hint
    checked, wrong = check(
        value, want, meta.get("choices") or (), meta.get("low"), meta.get("high"), meta.get("required", False)
    )
    problems += [f"{key}: {w}" for w in wrong]
    return checked


def build(cls: type, table: dict, prefix: str, problems: list[str]) -> Any:
    """Build dataclass `cls` from a TOML table; bad values fall back to defaults and are reported."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values: dict[str, Any] = {}
    for name, value in table.items():
        if name not in fields:
            where = _key(prefix, name)
            problems.append(f"{where}: unknown key{suggest(name, fields)}; allowed: {_allowed(fields)}")
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                problems.append(f"{_table(prefix, name)}: expected a table, got {value!r}")
                continue
            values[name] = build(hint, value, _table(prefix, name), problems)
            continue
        checked = _field(value, hint, fields[name].metadata, _key(prefix, name), problems)
        if checked is not None:
            values[name] = checked
    return cls(**values)


def _split(problem: str) -> tuple[str, str]:
    key, _, message = problem.partition(": ")
    return key, message


# ---------------------------------------------------------------------------------- files
def read_toml(path: Path) -> dict:
    """Parse one TOML file; a missing file or a syntax error is a SpecError naming the line."""
    if path.is_dir():  # it exists: "no such file" would send the user looking for it
        raise SpecError([Problem(str(path), "", "a folder, not a spec file; name a .toml file in it")])
    if not path.is_file():
        raise SpecError([Problem(str(path), "", "no such file")])
    try:
        return tomli.loads(path.read_text(encoding="utf-8"))
    except tomli.TOMLDecodeError as e:
        line = getattr(e, "lineno", None)
        msg = getattr(e, "msg", str(e))
        raise SpecError([Problem(str(path), "", f"TOML syntax error: {msg}", line=line)]) from None
    except UnicodeDecodeError as e:
        raise SpecError([Problem(str(path), "", f"not UTF-8 text ({e.reason})")]) from None


def is_run_spec(table: dict) -> bool:
    """A run spec has a [run] or [meta] table; a task spec has a `kind`."""
    return "kind" not in table and any(k in table for k in ("run", "meta", "model", "tokenizer"))


# ---------------------------------------------------------------------------------- task specs
def parse_task(path: Path, table: dict | None = None, check_data: bool = True) -> TaskSpec:
    """Build and validate a task spec file; raise SpecError listing every problem."""
    path = Path(path)
    table = read_toml(path) if table is None else table
    problems: list[str] = []
    spec = build(TaskSpec, table, "", problems)
    if "kind" not in table:
        problems.append(f"kind: missing; allowed: {_allowed(KINDS)}")
    if "data" not in table:
        problems.append("[data]: missing; every task needs a [data] table with a `format`")
    data = dataclasses.replace(spec.data, base_dir=str(path.parent))
    spec = dataclasses.replace(spec, name=spec.name or path.stem, data=data, path=str(path))
    if spec.kind:
        problems += _kind_problems(spec, table)
    if isinstance(table.get("data"), dict) and "format" in table["data"]:
        problems += _data_problems(spec.data, check_data, table["data"])
    elif "data" in table:
        problems.append(f"[data].format: missing; allowed: {_allowed(FORMATS)}")
    if problems:
        raise SpecError([Problem(str(path), *_split(p)) for p in problems])
    return spec


def _option_problems(spec: TaskSpec, options: dict) -> list[str]:
    """[options]: every key one of the kind's, every value as its Option allows."""
    info, problems = KINDS[spec.kind], []
    for key, value in options.items():
        if key not in info.options:
            allowed = _allowed(info.options) or "none for this kind"
            problems.append(
                f"[options].{key}: unknown option for kind {spec.kind!r}"
                f"{suggest(key, info.options)}; allowed: {allowed}"
            )
            continue
        option = info.options[key]
        _, wrong = check(value, type(option.default), option.choices, option.low, option.high, required=True)
        problems += [f"[options].{key}: {w}" for w in wrong]
    if info.check is not None:  # options that must agree with each other
        problems += info.check(options)
    return problems


def _kind_problems(spec: TaskSpec, table: dict) -> list[str]:
    """The head, loss, options and main metric must fit the task's kind."""
    info, problems = KINDS[spec.kind], []
    for what, given, allowed in (("head", spec.head.type, info.heads), ("loss", spec.loss.type, info.losses)):
        if given and given not in allowed:
            problems.append(
                f"[{what}].type: {given!r} does not fit kind {spec.kind!r}; allowed: {_allowed(allowed)}"
            )
    if isinstance(options := table.get("options", {}), dict):
        problems += _option_problems(spec, options)
    if spec.loss_name() == "contrastive" and spec.batch.size < 2:
        problems.append(
            f"[batch].size: {spec.batch.size} leaves the contrastive loss no in-batch negatives (its loss is "
            "0 on every batch, so the task trains nothing); use at least 2"
        )
    main = spec.options.get("main_metric", "")
    if isinstance(main, str) and main and main not in info.metrics:
        problems.append(
            f"[options].main_metric: {main!r} is not a metric of kind {spec.kind!r}; "
            f"allowed: {_allowed(info.metrics)}"
        )
    return problems


def probe_size_problems(support_batch_size: int, sources: typing.Iterable[TaskSpec]) -> list[str]:
    """A source with in-batch negatives (the contrastive loss) needs two examples in every probe: with
    one its loss is 0 and its gradient nothing, and `relative` normalisation would divide by it."""
    if support_batch_size != 1:
        return []
    return [
        f"1 leaves source {t.name!r} (contrastive loss) no in-batch negatives, so its loss is 0 on every "
        "probe; use at least 2, or 0 for its training batches"
        for t in sources
        if t.loss_name() == "contrastive"
    ]


def _synthetic_problems(data: DataSpec, raw: dict) -> list[str]:
    problems = []
    if not data.corpus and not raw.get("corpus"):
        problems.append(
            f"[data].corpus: missing; format = 'synthetic' needs one of {_allowed(SYNTHETIC_CORPORA)}"
        )
    for split in SPLITS:
        if getattr(data, split) and getattr(data, split) not in SPLITS:
            problems.append(
                f"[data].{split}: {getattr(data, split)!r} is not a generated split; "
                f"synthetic data allows {_allowed(SPLITS)}"
            )
    return problems


def _local_problems(data: DataSpec, check_files: bool) -> list[str]:
    if not data.splits():
        return ["[data].train: missing; a local format needs at least one of train, validation, test"]
    return [
        f"[data].{split}: {getattr(data, split)!r} matches no file (looked for {data.location(split)})"
        for split in (data.splits() if check_files and not data.obtain else ())
        if not _exists(data.location(split))
    ]


def _data_problems(data: DataSpec, check_files: bool, raw: dict) -> list[str]:
    if not data.format:  # an invalid format was reported already
        return []
    problems: list[str] = []
    if data.format == "hf" and not data.dataset:
        problems.append("[data].dataset: missing; format = 'hf' needs a hub id such as 'nyu-mll/glue'")
    if data.format == "synthetic":
        problems += _synthetic_problems(data, raw)
    if data.shuffle_words and data.streaming:
        problems.append(
            "[data].shuffle_words: needs the whole split; it cannot be combined with streaming = true"
        )
    if data.format == "superglue" and not data.subset:
        problems.append("[data].subset: missing; format = 'superglue' needs the task, e.g. 'boolq'")
    if data.format in LOCAL_FORMATS:
        problems += _local_problems(data, check_files)
    return problems


def _exists(location: str) -> bool:
    return Path(location).exists() or bool(glob.glob(location, recursive=True))


def missing_data(data: DataSpec) -> list[str]:
    """Local splits whose files are not there (for specs that say how to `obtain` them)."""
    if data.format not in LOCAL_FORMATS:
        return []
    return [s for s in data.splits() if not _exists(data.location(s))]


# ----------------------------------------------------------------------------------- run specs
def build_run(table: dict, path: Path) -> tuple[RunSpec, list[Problem]]:
    """A run spec from its TOML table (its tasks not yet read), with what is wrong in the file itself."""
    text: list[str] = []
    if "kind" in table:
        why = "this is a task spec; `metapt pretrain` takes a run spec with [run] and [meta]"
        if not {"run", "meta"} & table.keys():  # a whole task spec: its keys' problems would be noise
            return build(RunSpec, {}, "", []), [Problem(str(path), "kind", why)]
        text.append(f"kind: {why}")
    spec = build(RunSpec, {k: v for k, v in table.items() if k != "kind"}, "", text)
    setting_ok = not any(p.startswith("[meta].setting") for p in text)  # a bad one was reported
    meta, model = spec.meta, spec.model
    found: list[tuple[str, str]] = []
    if not meta.sources:
        found.append(("[meta].sources", "missing; name at least one source task"))
    if setting_ok and meta.setting == "aware" and not meta.targets:
        found.append(
            ("[meta].targets", "an aware run needs target tasks; set targets or use setting = 'agnostic'")
        )
    if setting_ok and meta.setting == "agnostic" and meta.targets:
        why = "an agnostic run scores the sources themselves; leave targets empty or use setting = 'aware'"
        found.append(("[meta].targets", why))
    if model.hidden_size % model.num_heads:
        found.append(
            ("[model].num_heads", f"{model.num_heads} does not divide hidden_size = {model.hidden_size}")
        )
    if not spec.run.output_dir.strip():  # "" would be the working folder, whatever is in it
        found.append(("[run].output_dir", 'empty; name a folder such as "ckpt" (or "." for this one)'))
    if (wrong := device_problem(spec.run.device)) is not None:
        found.append(("[run].device", wrong))
    problems = [Problem(str(path), *_split(p)) for p in text]
    return spec, problems + [Problem(str(path), key, message) for key, message in found]


def run_problems(
    spec: RunSpec, path: Path, sources: list[TaskSpec], targets: list[TaskSpec]
) -> list[Problem]:
    """What is wrong between a run spec and the tasks it names (those that could be read)."""
    meta, found = spec.meta, []
    for t in sources:
        if KINDS[t.kind].role != "source":
            why = f"{t.name!r} is a {t.kind} task, not a pretraining objective; put labelled tasks in targets"
            found.append(("[meta].sources", why))
    for t in (*sources, *targets) if not spec.model.pretrained else ():
        if t.batch.max_length > spec.model.max_length:
            length = t.batch.max_length
            why = f"is shorter than task {t.name!r}'s [batch].max_length = {length}; raise it to at least"
            found.append(
                (
                    "[model].max_length",
                    f"{spec.model.max_length} {why} {length} or shorten the task's batches",
                )
            )
    names = [t.name for t in (*sources, *targets)]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        found.append(("[meta]", f"duplicate task name {dup!r}; each task may appear once"))
    if meta.scheduler == "single" and meta.single_task and meta.single_task not in [t.name for t in sources]:
        why = f"{meta.single_task!r} is not a source; allowed: {', '.join(meta.sources)}"
        found.append(("[meta].single_task", why))
    found += [("[meta].selection_params", m) for m in _params_problems(spec)]
    if meta.scheduler == "meta":  # only the meta step probes
        found += [
            ("[meta].support_batch_size", m) for m in probe_size_problems(meta.support_batch_size, sources)
        ]
    if meta.scheduler == "mixture" and len(sources) == len(meta.sources):  # names known: check the file
        found += [("[meta].mixture", m) for m in _mixture_problems(path, meta, sources)]
    return [Problem(str(path), key, message) for key, message in found]


def _params_problems(spec: RunSpec) -> list[str]:
    """`all`, or `top:K` with 1 <= K (and K <= [model].num_layers for a new encoder)."""
    rule = spec.meta.selection_params
    match = re.fullmatch(r"top:(\d+)", rule)
    if rule != "all" and (match is None or int(match.group(1)) < 1):
        return [f"{rule!r} is not allowed; allowed: 'all', or 'top:K' with K >= 1 (e.g. 'top:1')"]
    if match and not spec.model.pretrained and int(match.group(1)) > spec.model.num_layers:
        return [
            f"{rule!r} asks for more layers than [model].num_layers = {spec.model.num_layers}; "
            f"allowed: top:1 to top:{spec.model.num_layers}, or 'all'"
        ]
    return []


def _mixture_problems(path: Path, meta: MetaSpec, sources: list[TaskSpec]) -> list[str]:
    """What keeps the mixture scheduler from replaying [meta].mixture over these sources."""
    if not meta.mixture:
        return [
            "missing; scheduler = 'mixture' replays the shares of a mixture.json, e.g. the "
            "OUTPUT_DIR/mixture.json of a meta run"
        ]
    where = mixture.location(str(path), meta.mixture)
    return mixture.load(where, [t.name for t in sources], meta.mixture_phases)[1]
