"""The package layout keeps its rules: parts in subpackages, no import circles, a gateway apart.

These read the source with ``ast`` (nothing is imported), so that the rules of
docs/architecture.md keep holding as modules are added:
- at most 14 modules at the top level; every subpackage says in its ``__init__``
  docstring what it is for and what it may import;
- no import circle between modules (imports under ``TYPE_CHECKING`` and inside
  functions count: a circle is a circle even when Python tolerates it);
- nothing under ``gateway/`` imports, even indirectly, the actors or the runtimes,
  and it calls no writing method of the store;
- the store interface imports no backend;
- no module over 450 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sessionactors"
MAX_TOP_LEVEL = 14
MAX_LINES = 450
STORE_WRITERS = {"append", "create_sessions", "update_session", "delete_session"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The sessionactors modules that ``path`` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from pkg import mod`` imports the submodule mod; ``from mod import name`` the module
            subs = {f"{target}.{alias.name}" for alias in node.names} & known
            found.update(subs or {target})
    return {m for m in found if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo.extend(graph[mod])
    return seen


def test_the_graph_sees_the_imports(graph: dict[str, set[str]]) -> None:
    """The reader itself must find known edges, or every rule below would pass vacuously."""
    assert "sessionactors.actors.session" in graph["sessionactors.actors.lifecycle"]
    assert "sessionactors.store" in graph["sessionactors.gateway.rest"]
    assert "sessionactors.store.sqlite" in graph["sessionactors.store"]  # a lazy import counts
    assert "sessionactors.messages" in graph["sessionactors.daemon"]


def test_top_level_holds_at_most_fourteen_modules() -> None:
    top = [p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= MAX_TOP_LEVEL, sorted(top)


def test_every_subpackage_says_what_it_is_for_and_may_import() -> None:
    packages = [p for p in PACKAGE.iterdir() if p.is_dir() and any(p.glob("*.py"))]
    assert packages
    for pkg in packages:
        init = pkg / "__init__.py"
        assert init.exists(), f"{pkg.name}/ has no __init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "for" in doc and "import" in doc, (
            f"{pkg.name}/__init__.py must say what it is for and may import"
        )


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    circles = []
    for name in graph:
        for dep in graph[name]:
            if name in reachable(graph, dep) or dep == name:
                circles.append((name, dep))
    assert not circles, f"import circles through: {sorted(circles)}"


def test_the_gateway_reaches_neither_actors_nor_runtimes(graph: dict[str, set[str]]) -> None:
    gateway = [m for m in graph if m == "sessionactors.gateway" or m.startswith("sessionactors.gateway.")]
    assert len(gateway) >= 4
    for mod in gateway:
        bad = {
            m
            for m in reachable(graph, mod)
            if m.startswith(("sessionactors.actors", "sessionactors.runtimes"))
            or m == "sessionactors.runtime"
        }
        assert not bad, f"{mod} reaches {sorted(bad)}"


def test_the_gateway_only_reads_the_store() -> None:
    for path in (PACKAGE / "gateway").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = ast.unparse(node.func.value)
                if "store" in receiver.lower():
                    assert node.func.attr not in STORE_WRITERS, f"{path.name}:{node.lineno} writes the store"


def test_the_store_interface_imports_no_backend(graph: dict[str, set[str]]) -> None:
    assert not {
        m for m in reachable(graph, "sessionactors.store.base") if m.startswith("sessionactors.store")
    }


def test_no_module_over_450_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_the_plugin_api_keeps_its_public_path() -> None:
    import sessionactors.runtime as api
    from sessionactors.runtimes import base

    for name in ("Runtime", "RuntimeContext", "Output", "Status", "Event", "observation", "agent_message"):
        assert getattr(api, name) is getattr(base, name)
    from sessionactors.errors import RuntimeStartError

    assert api.RuntimeStartError is RuntimeStartError
