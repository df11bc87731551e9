"""Layers point one way, and no import cycle hides inside functions.

An AST pass over the package: every internal import (module level and inside functions; importing a.b.c counts as
importing a and a.b too, since Python runs their __init__; `if TYPE_CHECKING:` blocks do not run and are skipped)
becomes an edge. Then: no lower layer imports a higher one, the graph has no cycle, and every function-level import
says why on its line or the line above.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train", "val", "detect", "export", "benchmark", "demo", "prune")
# lowest first: models + checkpoint I/O + small helpers (0) < engines (1) < sparsity, export, trainer, benchmark (2)
# < scripts (3). Anything under utils/ not named here is a layer-0 helper.
LAYERS = {"utils.engines": 1, "utils.sparsity": 2, "utils.export": 2, "utils.trainer": 2, "utils.benchmark": 2,
          "utils.callbacks": 2, "utils.loggers": 2, "utils.val_outputs": 2, "utils.evaluate": 2, "utils.predict": 2}
# Modules whose job is to pick an optional heavy package at call time; their imports need no further comment.
HEAVY = ("openvino", "deepsparse", "sparseml", "sparsezoo", "onnxsim", "onnxruntime", "matplotlib", "pycocotools",
         "tensorboard", "torch.distributed", "scipy")


def module_files() -> dict[str, Path]:
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for d in ("utils", "models") for p in (ROOT / d).rglob("*.py")}
    files.update({s: ROOT / f"{s}.py" for s in SCRIPTS if (ROOT / f"{s}.py").is_file()})
    return files


def layer(module: str) -> int:
    if module in SCRIPTS:
        return 3
    hits = [rank for prefix, rank in LAYERS.items() if module == prefix or module.startswith(prefix + ".")]
    return max(hits, default=0)


def _absolute(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _enclosing(node: ast.AST, parents: dict) -> tuple[bool, bool]:
    """(inside a function, inside an `if TYPE_CHECKING:` block)."""
    in_fn = in_tc = False
    while node in parents:
        node = parents[node]
        in_fn |= isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        in_tc |= isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
    return in_fn, in_tc


def _targets(node: ast.AST, module: str, is_pkg: bool, known: set[str]) -> tuple[list[str], str]:
    """Internal modules an import statement runs (with their parent packages) and the top-level name it imports."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = _absolute(node, module, is_pkg)
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    out = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in known)
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return sorted(out - {module} - ancestors), names[0]  # a package is initialised before its submodules run


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str, str]]]:
    """(edges, function-level imports as (module, line, imported name, source line))."""
    files = module_files()
    known = set(files)
    edges: dict[str, set[str]] = defaultdict(set)
    local = []
    for module, path in files.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        parents = _parents(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            in_fn, in_tc = _enclosing(node, parents)
            if in_tc:
                continue
            targets, name = _targets(node, module, path.name == "__init__.py", known)
            edges[module].update(targets)
            if in_fn:
                local.append((module, node.lineno, name, lines[node.lineno - 1]
                              + " " + (lines[node.lineno - 2] if node.lineno > 1 else "")))
    return edges, local


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_no_lower_layer_imports_a_higher_one(graph) -> None:
    edges, _ = graph
    bad = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})" for a, bs in edges.items() for b in bs
           if layer(b) > layer(a)]
    assert not bad, "\n".join(bad)


def test_checkpoint_io_knows_nothing_of_sparsity(graph) -> None:
    """Loading a .pt must not import SparseML: structure rebuilds register into the loader from above."""
    edges, _ = graph
    assert not {b for b in edges["utils.checkpoint"] if b.startswith(("utils.sparsity", "utils.engines"))}
    assert not {b for b in edges["utils.compat"] if b.startswith(("utils.", "models"))} - {"utils", "utils.recipe_eval"}


def test_every_script_registers_the_checkpoint_rebuilds(graph) -> None:
    """Scripts load sparse/QAT/channel checkpoints: each must import the rebuild hooks itself (the tests' conftest
    does, so a script that forgot would pass every in-process test: benchmark.py did)."""
    edges, _ = graph
    assert [s for s in SCRIPTS if "utils.sparsity.rebuild" not in edges[s]] == []


def test_no_import_cycle_counting_function_level_imports(graph) -> None:
    edges, _ = graph
    assert cycles(edges) == []


def test_function_level_imports_say_why(graph) -> None:
    _, local = graph
    bad = [f"{m}:{line}: {name}" for m, line, name, src in local
           if "#" not in src and not name.startswith(HEAVY)]
    assert not bad, "function-level imports without a reason comment:\n" + "\n".join(bad)


def test_the_checker_sees_a_planted_cycle_and_an_upward_import() -> None:
    """The pass itself: a cycle through a function-level import and a layer-0 module importing an engine are found."""
    edges = {"utils.a": {"utils.b"}, "utils.b": {"utils.a"}, "utils.engines": set()}
    assert cycles(edges) == [["utils.a", "utils.b"]]
    assert layer("utils.boxes") < layer("utils.engines.torch_engine") < layer("utils.sparsity.tasks") < layer("val")
    tree = ast.parse("def f():\n    from utils.trainer import Trainer\n")
    node = tree.body[0].body[0]
    assert _enclosing(node, _parents(tree)) == (True, False)
