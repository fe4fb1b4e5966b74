"""The shape of the library, read from its source: no import circles, rewards reached through the
registry only, the report independent of models and rewards, and modules of one concept each.

The import graph counts every import statement a module of `pipeline/` holds: at the top level,
inside functions, and under `if TYPE_CHECKING:`. A cycle closed by a function-level (lazy) import
still ties the two modules together, it only moves the failure to run time; so it counts. Relative
imports are resolved; `from package import name` is an edge to the submodule `name` when there is
one, else to the package. Importing a submodule also runs its parent packages' `__init__`, but
that is Python's doing, not the design's, so it is not an edge (a package whose `__init__` imports
its own submodules would otherwise always be a cycle).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"
MAX_LINES = 300  # "a module that grows past ~300 lines is two concepts" (docs/design.md)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _owner(name: str) -> str | None:
    """The project module `name` denotes, or the nearest enclosing one (`pipeline.x.attr` -> `pipeline.x`)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """Project modules that `module` imports anywhere in its source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(owner for owner in map(_owner, targets) if owner is not None)
    found.discard(module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan), each as
    a closed path through the component so the message shows who imports whom."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path(graph, component) for component in components]


def _path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest circle from the component's first module back to itself (breadth first)."""
    start, members = component[0], set(component)
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return list(reversed(path)) + [start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    return component


def closure(module: str) -> set[str]:
    """`module` and every project module it reaches through imports."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(GRAPH[current])
    return seen


def test_the_graph_sees_the_imports_it_must():
    """The parser itself: a relative import, a lazy import in a function, `from package import module`."""
    assert "pipeline.world.scene" in GRAPH["pipeline.world.detect"]  # from .scene import PromptSpec
    assert "pipeline.runtime" in GRAPH["pipeline.models.loading"]  # inside _placed()
    assert "pipeline.tracking_client" in GRAPH["pipeline.tracking"]  # from pipeline import tracking_client
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_library_imports_a_module_that_imports_it_back():
    cycles = _cycles(GRAPH)
    assert not cycles, "import circles in pipeline/: " + "; ".join(" -> ".join(c) for c in cycles)


REWARD_IMPLEMENTATIONS = {m for m in MODULES if m.startswith("pipeline.rewards.")} - {"pipeline.rewards.registry"}


def test_evaluation_and_the_report_reach_rewards_only_through_the_registry():
    """A reward module holds a reward; evaluation builds rewards by name (pipeline.rewards.registry)."""
    offenders = {module: sorted(GRAPH[module] & (REWARD_IMPLEMENTATIONS | {"pipeline.rewards"}))
                 for module in MODULES if module.startswith(("pipeline.evaluation", "pipeline.report"))}
    offenders = {module: found for module, found in offenders.items() if found}
    assert not offenders, f"modules importing a reward implementation directly: {offenders}"


def test_the_report_depends_on_files_io_and_samples_only():
    """Editing a reward, a model or the sampler must not re-render the report (dvc.yaml lists these deps)."""
    allowed = {"pipeline", "pipeline.samples", "pipeline.io", "pipeline.errors", "pipeline.keys", "pipeline.corpora",
               "pipeline.verdict"}
    reached = set().union(*(closure(m) for m in MODULES if m.startswith("pipeline.report")))
    outside = sorted(m for m in reached if not m.startswith("pipeline.report") and m not in allowed)
    assert not outside, f"the report reaches {outside}"


def test_no_module_of_the_library_is_over_300_lines():
    long = {str(path.relative_to(ROOT)): n for path in MODULES.values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"
