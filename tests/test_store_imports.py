"""No import cycles inside edgeslm (issue #10: catalog.py and download.py imported each other).

Every import counts, also those inside functions (a lazy import still ties the two modules
together); only ``if TYPE_CHECKING:`` blocks are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The edgeslm modules that ``path`` imports (the most specific module each import names)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                if f"{target}.{a.name}" in modules:
                    out.add(f"{target}.{a.name}")
                elif target in modules:
                    out.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    out.discard(name)
    # importing a package's own submodule from its __init__ is how packages are built, not a cycle
    return {m for m in out if not (path.name == "__init__.py" and m.startswith(name + "."))}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def _graph() -> dict[str, set[str]]:
    files = sorted((SRC / "edgeslm").rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


# No cycle is tolerated anywhere (api.model <-> api.tool_use was the last, gone with api.generation).
KNOWN_OUTSIDE_STORE: list[list[str]] = []


def test_store_modules_import_in_layers() -> None:
    """paths/files -> catalog -> cache -> download -> resolve: each knows only those before it."""
    g = _graph()
    order = ["paths", "files", "catalog", "validate", "bundled", "cache", "download", "resolve"]
    for i, mod in enumerate(order):
        later = {f"edgeslm.store.{m}" for m in order[i + 1 :]}
        assert not g[f"edgeslm.store.{mod}"] & later, (mod, g[f"edgeslm.store.{mod}"] & later)
    assert "edgeslm.store.catalog" in g["edgeslm.store.download"]


def test_no_import_cycles_in_edgeslm() -> None:
    cycles = _cycles(_graph())
    assert [c for c in cycles if any(m.startswith("edgeslm.store") for m in c)] == []
    assert [c for c in cycles if c not in KNOWN_OUTSIDE_STORE] == []


def test_decoding_imports_no_upper_layer() -> None:
    """decoding/ is below api/, store/ and tools/: it imports none of them."""
    g = _graph()
    bad = {m: sorted(d for d in deps if d.split(".")[1] in ("api", "store", "tools"))
           for m, deps in g.items() if m.startswith("edgeslm.decoding")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_nothing_outside_backends_touches_a_backend_private_attribute() -> None:
    """Code outside backends/ uses only what backends/base.py declares: no ``engine._x``."""
    import ast

    engine_names = {"engine", "backend", "eng", "_engine"}
    found = []
    for f in sorted((SRC / "edgeslm").rglob("*.py")):
        if "backends" in f.parts:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            v = node.value
            owner = v.id if isinstance(v, ast.Name) else v.attr if isinstance(v, ast.Attribute) else None
            if owner in engine_names:
                found.append(f"{f.relative_to(SRC)}:{node.lineno}: {owner}.{node.attr}")
    assert found == []


def test_runtime_and_escalation_import_no_api() -> None:
    """runtime/ (hardware, planner, batching policy, self-check) and escalation/ sit below api/ (#25)."""
    g = _graph()
    bad = {m: sorted(d for d in deps if d.split(".")[1] in ("api", "cli", "server", "bench"))
           for m, deps in g.items() if m.split(".")[1:2] in (["runtime"], ["escalation"])}
    assert {m: d for m, d in bad.items() if d} == {}


def test_a_module_over_450_lines_says_why_in_its_docstring() -> None:
    """One job per module (#25): a long one carries the reason it is not split."""
    import ast

    long = []
    for f in sorted((SRC / "edgeslm").rglob("*.py")):
        text = f.read_text(encoding="utf-8")
        if text.count("\n") > 450 and "Over ~450 lines" not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(str(f.relative_to(SRC)))
    assert long == []
