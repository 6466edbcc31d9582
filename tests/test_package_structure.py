"""The package's shape: no import cycle between orthokern's modules (module-level and function-level imports
alike), and the dispatch the only module that knows which implementations exist."""
from __future__ import annotations

import ast
import pathlib

import orthokern

ROOT = pathlib.Path(orthokern.__file__).resolve().parent
# The Triton kernels install as orthokern.triton_kernels; in a checkout they sit at the top level.
TRITON = ROOT / "triton_kernels" if (ROOT / "triton_kernels").is_dir() else ROOT.parent / "triton_kernels"


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for base, prefix in ((ROOT, "orthokern"), (TRITON, "orthokern.triton_kernels")):
        for path in base.rglob("*.py"):
            if base == ROOT and TRITON in path.parents:
                continue
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([prefix, *parts])] = path
    return mods


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """orthokern modules that ``name`` imports anywhere in its source (including inside functions)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1 if node.level else 0):
                base = base.rpartition(".")[0]
            mod = (base + "." + node.module if node.module else base) if node.level else node.module
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            # the module itself, or the longest known prefix (``from . import x`` names a module or an attribute)
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                out.add(t)
    return out


def _graph():
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_references_register_nothing_and_only_dispatch_knows_the_backends():
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("orthokern.reference"):
            assert all(d.startswith(("orthokern.reference", "orthokern.ns_schedule")) for d in deps), (name, deps)
    importers_of_compiled = {n for n, deps in graph.items() if "orthokern.compiled" in deps}
    assert importers_of_compiled <= {"orthokern.dispatch"}, importers_of_compiled
