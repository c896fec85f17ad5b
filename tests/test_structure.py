"""The seams between modules, read from the package's own imports (nothing is run): no module reaches
into another's private names, and imports run down the layers (kinds/ below data/, finetuning beside
pretraining, not on top of it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "metapt"

# Private names still reached across modules, each with the reason it is still there. Remove an entry
# when its reason goes; a new use anywhere else fails the test.
KNOWN: dict[tuple[str, str], str] = {}


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent / dotted.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _from_imports(tree: ast.AST) -> tuple[dict[str, str], set[str]]:
    """(local name -> the metapt module it stands for, private names imported from metapt modules)."""
    modules: dict[str, str] = {}
    private: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("metapt"):
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                if _private(alias.name):
                    private.add(dotted)
                elif _is_module(dotted):
                    modules[alias.asname or alias.name] = dotted
        elif isinstance(node, ast.Import):
            modules |= {a.asname: a.name for a in node.names if a.name.startswith("metapt") and a.asname}
    return modules, private


def private_uses(path: Path) -> set[str]:
    """Private names of other metapt modules that `path` imports (`from metapt.x import _y`) or reads
    as attributes of a module it imported (`x._y`), as "metapt.x._y"."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules, found = _from_imports(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            if node.value.id in modules:
                found.add(f"{modules[node.value.id]}.{node.attr}")
    return found


def _imports(path: Path) -> set[str]:
    """Every metapt module or name `path` imports, dotted."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("metapt"):
            out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("metapt")}
    return out


def test_the_checker_finds_both_ways_in(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from metapt import engine\nfrom metapt.spec import _suggest, RunSpec\n"
        "from metapt.kinds import word_tags as tags\n\n"
        "def f():\n    from metapt.data.pipeline import _seed\n    return engine._train, tags._cut, engine.setup\n"
    )
    assert private_uses(planted) == {
        "metapt.spec._suggest",
        "metapt.data.pipeline._seed",
        "metapt.engine._train",
        "metapt.kinds.word_tags._cut",
    }


def test_no_module_uses_another_modules_private_names() -> None:
    found = {
        (str(path.relative_to(PACKAGE)), name)
        for path in sorted(PACKAGE.rglob("*.py"))
        for name in private_uses(path)
    }
    assert found - set(KNOWN) == set(), "a module reaches into another's private names"
    assert set(KNOWN) - found == set(), "a KNOWN exception is gone: remove it"


def test_imports_run_down_the_layers() -> None:
    """kinds/ is below data/ (the pipeline calls the kinds, not the other way round); finetuning and the
    pretraining engine share device.py and model.py, neither imports the other."""
    rules = [
        ("kinds/", "metapt.data", "a kind reads records it is given; data/ calls the kinds"),
        ("data/", "metapt.engine", "data/ serves the engine"),
        ("data/", "metapt.finetune", "data/ serves finetuning"),
        ("data/", "metapt.finetuned", "data/ serves finetuning"),
        ("finetune.py", "metapt.engine", "finetuning does not need the pretraining engine"),
        ("finetuned.py", "metapt.engine", "a finetuned model does not need the pretraining engine"),
        ("finetuned.py", "metapt.finetune", "a finetuned model is below the finetuning that writes it"),
        ("engine.py", "metapt.finetune", "pretraining does not need finetuning"),
        ("engine.py", "metapt.finetuned", "pretraining does not need finetuning"),
        ("runsetup.py", "metapt.finetune", "pretraining does not need finetuning"),
        ("runsteps.py", "metapt.finetune", "pretraining does not need finetuning"),
        ("runsteps.py", "metapt.engine", "the loop takes these steps; a step does not need the loop"),
        (
            "runsetup.py",
            "metapt.engine",
            "the loop starts from the run setup builds, not the other way round",
        ),
    ]
    broken = [
        f"{path.relative_to(PACKAGE)} imports {name}: {why}"
        for place, forbidden, why in rules
        for path in sorted(PACKAGE.glob(f"{place}**/*.py" if place.endswith("/") else place))
        for name in sorted(_imports(path))
        if name == forbidden or name.startswith(forbidden + ".")
    ]
    assert broken == []
