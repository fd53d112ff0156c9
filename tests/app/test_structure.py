"""The package's import graph has no cycles, counting imports inside functions.

Every vitdemo module is parsed with `ast` (no import runs): each `import vitdemo...` and
`from vitdemo... import ...`, at module level or inside a function, is an edge; imports under
`if TYPE_CHECKING:` never run and do not count. Importing `vitdemo.a.b` also runs
`vitdemo/a/__init__.py`, so the edge goes to each package on the way too (except the
importer's own packages, which are already loading when it runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

from vitdemo.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "vitdemo"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the tree except the bodies of `if TYPE_CHECKING:` (their `else` runs)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if _is_type_checking(node):
            todo += [node.test, *node.orelse]
        else:
            todo += list(ast.iter_child_nodes(node))
    return nodes


def imported_names(tree: ast.AST, importer: str, is_package: bool) -> set[str]:
    """Every dotted name an `import` or `from` statement that can run asks for."""
    names: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importer's package
                base = importer.split(".") if is_package else importer.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names.add(stem)
            # `from pkg import mod` imports the submodule pkg.mod when there is one
            names.update(f"{stem}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        own_packages = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
        edges: set[str] = set()
        for target in imported_names(tree, name, path.name == "__init__.py"):
            parts = target.split(".")
            for k in range(1, len(parts) + 1):
                step = ".".join(parts[:k])
                if step in modules and step != name and step not in own_packages:
                    edges.add(step)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path: list[str] = [root]
        stack = [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def all_cycles(graph: dict[str, set[str]], limit: int = 20) -> list[list[str]]:
    """Cycles found one at a time, dropping each one's closing edge, so a report lists them all."""
    graph = {name: set(edges) for name, edges in graph.items()}
    cycles: list[list[str]] = []
    while len(cycles) < limit and (cycle := find_cycle(graph)):
        cycles.append(cycle)
        graph[cycle[-2]].discard(cycle[-1])
    return cycles


def package_of(module: str) -> str:
    """vitdemo.attention.maps -> vitdemo.attention; top-level modules stand for themselves."""
    return ".".join(module.split(".")[:2])


def test_the_graph_sees_function_level_imports_and_cycles():
    assert len(import_graph()) > 40
    tree = ast.parse("def f():\n    from vitdemo.learn import contrastive\n")
    assert imported_names(tree, "vitdemo.classroom.evaluate", False) >= {"vitdemo.learn.contrastive"}
    typing_only = ast.parse("if TYPE_CHECKING:\n    import vitdemo.a\nelse:\n    import vitdemo.b\n")
    assert imported_names(typing_only, "vitdemo.c", False) == {"vitdemo.b"}
    cyclic = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.w": {"a.x"}}
    assert find_cycle(cyclic) == ["a.x", "a.y", "a.z", "a.x"]
    assert find_cycle({"a.x": {"a.y"}, "a.y": set()}) is None
    assert len(all_cycles({"a": {"b", "c"}, "b": {"a"}, "c": {"a"}})) == 2


def test_no_import_cycles():
    cycles = all_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_cycles_between_packages_and_only_the_entry_points_import_the_ui():
    packages: dict[str, set[str]] = {}
    for module, edges in import_graph().items():
        own = package_of(module)
        packages.setdefault(own, set()).update(package_of(e) for e in edges if package_of(e) != own)
    cycles = all_cycles(packages)
    assert not cycles, "package cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
    ui_users = {p for p, edges in packages.items() if "vitdemo.ui" in edges}
    assert ui_users <= {"vitdemo.__main__"}, f"only the entry point may import vitdemo.ui: {sorted(ui_users)}"


def _trees(*folders: str) -> dict[str, ast.AST]:
    paths = [p for folder in folders for p in sorted((REPO_ROOT / folder).rglob("*.py"))]
    return {str(p.relative_to(REPO_ROOT)): ast.parse(p.read_text(), filename=str(p)) for p in paths}


def test_one_image_opener():
    """vitdemo.core.images.open_image is the only one, and every caller takes it from there."""
    defined, imported_elsewhere = [], []
    for path, tree in _trees("vitdemo", "bench", "research").items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "open_image" in node.name:
                defined.append(f"{path}:{node.lineno} {node.name}")
            if isinstance(node, ast.ImportFrom) and any(a.name == "open_image" for a in node.names) \
                    and node.module != "vitdemo.core.images":
                imported_elsewhere.append(f"{path}:{node.lineno} from {node.module}")
    assert len(defined) == 1 and defined[0].startswith("vitdemo/core/images.py:"), defined
    assert not imported_elsewhere, imported_elsewhere


def test_class_names_are_not_shared_by_two_modules():
    """Two classes of one name in two modules are two versions of one concept, or a name that
    does not say which thing it is."""
    where: dict[str, list[str]] = {}
    for path, tree in _trees("vitdemo").items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                where.setdefault(node.name, []).append(path)
    shared = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not shared, shared


def test_engine_and_settings_parameters_have_their_real_types():
    """A parameter named engine or settings is an Engine or Settings, not Any: the boundary
    between the tabs and the logic says what crosses it."""
    loose = []
    for path, tree in _trees("vitdemo").items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                loose += [f"{path}:{node.lineno} {node.name}({a.arg})" for a in args
                          if a.arg in ("engine", "settings") and isinstance(a.annotation, ast.Name)
                          and a.annotation.id == "Any"]
    assert not loose, loose
