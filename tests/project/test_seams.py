"""The seams stay closed (issue: "the seams leak at the edges"), read from the source: no
import cycle between modules (lazy imports included), the Redis key layout spelled in one
module, one LRU, no `getattr` reaching for a private or implicit attribute of a store, an
app or another object, and the artifact backends' raw seam called only by its public name."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from support import REPO

PACKAGES = ("mfm_dist", "workers")


def _sources() -> Iterator[tuple[str, Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path, ast.parse(path.read_text(encoding="utf-8"))


def _import_graph() -> dict[str, set[str]]:
    """module → the project modules it imports, anywhere in its body (functions, and
    `TYPE_CHECKING` blocks too: a cycle through them is still a cycle for a reader)."""
    modules = {name: (path, tree) for name, path, tree in _sources()}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, tree) in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for alias in node.names:
                    leaf = f"{base}.{alias.name}"
                    if (REPO / (leaf.replace(".", "/") + ".c")).exists():
                        continue  # a compiled extension module: a leaf
                    targets.append(leaf if leaf in modules else base)
            for target in targets:
                found = resolve(target)
                if found is not None and found != name:
                    graph[name].add(found)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_import_cycles() -> None:
    graph = _import_graph()
    assert "workers.tasks" in graph and "workers.submit" in graph["workers.tasks"]
    assert _cycles(graph) == []


def test_a_cycle_would_be_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _string_constants(tree: ast.Module) -> Iterator[tuple[int, str]]:
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in docstrings:
            value = node.value
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if isinstance(text, str):
                yield node.lineno, text


# Strings that start like a Redis key but name something else: the snapshot-link record key
# (an artifact key); fact keys (`mfm:<kind>|run:…`) hold a `|`.
NOT_REDIS = ("mfm:snapshot-link:",)


def test_the_redis_key_layout_is_spelled_in_one_module() -> None:
    spelled = []
    for name, _, tree in _sources():
        if name == "mfm_dist.stores.redis_keys":
            continue
        for line, text in _string_constants(tree):
            if (
                text.startswith("mfm:")
                and text != "mfm:"
                and "|" not in text
                and not text.startswith(NOT_REDIS)
            ):
                spelled.append(f"{name}:{line}: {text!r}")
    assert spelled == []


def _uses(names: set[str], *, outside: str = "") -> list[str]:
    """Where a module other than `outside` names one of `names` (an attribute, a function
    it defines, or a bare name)."""
    return [
        f"{module}:{node.lineno}"
        for module, _, tree in _sources()
        if module != outside
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr in names)
        or (isinstance(node, ast.FunctionDef) and node.name in names)
        or (isinstance(node, ast.Name) and node.id in names)
    ]


def test_one_lru() -> None:
    lru_parts = {"move_to_end", "popitem", "OrderedDict"}
    assert _uses(lru_parts, outside="mfm_dist.engine.lru") == []


def test_no_getattr_for_private_or_implicit_attributes() -> None:
    """`getattr(obj, "_private")` across objects, or on a store, an app or `self` (whose
    attributes are declared), hides a seam that should be typed."""
    found = []
    for name, _, tree in _sources():
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                continue
            target = ast.unparse(node.args[0])
            attribute = str(node.args[1].value)
            if attribute.startswith("_") or target == "self" or target.endswith(
                (".events", ".artifacts", "_stores", ".app", "app")
            ):
                found.append(f"{name}:{node.lineno}: getattr({target}, {attribute!r})")
    assert found == []


def test_the_raw_artifact_seam_is_public() -> None:
    assert _uses({"_put_raw", "_get_raw"}) == []
