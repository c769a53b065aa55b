"""The import rules of docs/architecture.md: components never import recipes, and no import
(at module level or inside a function) closes a circle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "aigc"
RECIPES = {"aigc.demo", "aigc.gan.train", "aigc.gan.sample", "aigc.gan.evaluate", "aigc.gan.restore_command",
           "aigc.gan.guide_command", "aigc.gpt.train",
           "aigc.gpt.finetune", "aigc.gpt.evaluate", "aigc.gpt.task_eval", "aigc.gpt.merge", "aigc.gpt.hf",
           "aigc.textgan.train", "aigc.compress.command"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The aigc modules that ``path`` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imports(path, modules) - {name} for name, path in paths.items()}


def test_recipes_are_real_modules():
    assert RECIPES <= set(import_graph())


def test_components_never_import_recipes():
    graph = import_graph()
    offenders = {name: sorted(targets & RECIPES) for name, targets in graph.items()
                 if name not in RECIPES and name != "aigc.cli" and targets & RECIPES}
    assert not offenders


def test_no_import_circles():
    graph = import_graph()
    # Packages import nothing here, so an edge into a package's __init__ is not a path through it.
    state: dict[str, str] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles
