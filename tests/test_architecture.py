"""The import rules of docs/architecture.md, checked from the code's own imports (every `import` statement,
at module level or inside a function, read with `ast`)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "watchers", "bots", "db")


def _module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (annotations only, never run)."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            guarded.update(id(child) for child in ast.walk(node))
    return guarded


def _imports(path: Path, *, runtime_only: bool = False) -> set[str]:
    """Every module of ours that `path` imports (resolved to the longest known module name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree) if runtime_only else set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    ours = {name for name in names if name.split(".")[0] in PACKAGES}
    resolved = set()
    for name in ours:
        parts = name.split(".")
        while parts and ".".join(parts) not in MODULES:
            parts.pop()
        if parts:
            resolved.add(".".join(parts))
    return resolved


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}
# What runs: an import cycle is one Python would execute (annotation-only imports cannot form one).
RUNTIME = {name: _imports(path, runtime_only=True) - {name} for name, path in MODULES.items()}


def _importers(prefix: str) -> list[str]:
    return [name for name in GRAPH if name == prefix or name.startswith(prefix + ".")]


def _offences(importers: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{name} imports {target}"
        for name in importers
        for target in GRAPH[name]
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    )


def test_only_the_composition_root_of_the_spine_knows_the_adapters() -> None:
    spine = [name for name in _importers("service") if name != "service.composition"]
    assert _offences(spine, ("watchers", "bots")) == []
    assert _offences(_importers("db"), ("watchers", "bots", "service.http")) == []


@pytest.mark.parametrize("adapter", ["watchers", "bots"])
def test_sources_talk_to_the_spine_only(adapter: str) -> None:
    other = "bots" if adapter == "watchers" else "watchers"
    assert _offences(_importers(adapter), ("db", "service.http", other)) == []


def test_the_http_layer_does_not_know_the_application() -> None:
    assert _offences(_importers("service.http"), ("service.app", "service.composition")) == []


def test_there_is_no_import_cycle() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(RUNTIME.get(name, ())):
            if state[target] == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif state[target] == 0:
                visit(target)
        stack.pop()
        state[name] = 2

    for module in sorted(RUNTIME):
        if state[module] == 0:
            visit(module)
    assert cycles == []


def test_nothing_shipped_or_measured_imports_the_tests() -> None:
    # bench/ holds the shared fixtures (rendered scans, the tiny GLM-4V); tests import them, never the
    # reverse, so a benchmark runs from a checkout without the test suite's conftest machinery.
    offenders = []
    for folder in (*PACKAGES, "bench"):
        for path in (REPO / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                bad = [name for name in names if name.split(".")[0] == "tests"]
                offenders += [f"{path.relative_to(REPO)} imports {name}" for name in bad]
    assert offenders == []


def test_the_rules_see_the_code() -> None:
    # The checks above would pass on an empty graph: make sure they read the real one.
    assert "service.composition" in GRAPH and "watchers.folder" in GRAPH["service.composition"]
    assert "service.queue" in GRAPH["watchers.intake"]


@pytest.mark.parametrize("path", sorted(MODULES.values()), ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").count("\n")
    if path.name != "messages.py":  # the message catalogue is one long table by design
        assert lines <= 400, f"{path.relative_to(REPO)} has {lines} lines"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"  # type: ignore[operator]
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80  # type: ignore[operator]
    ]
    assert long == []


@pytest.mark.parametrize("path", sorted(MODULES.values()), ids=lambda p: str(p.relative_to(REPO)))
def test_logger_names_follow_the_modules(path: Path) -> None:
    # `tuwen.` + the module, or one of the two names people filter on (README, "Running as a system service").
    text = path.read_text(encoding="utf-8")
    names = re.findall(r'getLogger\((f?"[^"]*"|__name__)\)', text)
    assert all(name in ('f"tuwen.{__name__}"', '"tuwen.vision"', '"tuwen.generate"') for name in names), names
