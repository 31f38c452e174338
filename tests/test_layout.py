"""Imports flow one way, in the order data flows (docs/ARCHITECTURE.md):

    errors, choices, folders -> config -> run_record, data -> templates -> models
        -> training | use | tools -> cli

Checked on the source (every import, including those inside functions), so a cycle or a
backwards import fails here before it confuses anyone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lora_finetune

PACKAGE = Path(lora_finetune.__file__).parent

LAYER = {
    "errors": 0,
    "choices": 0,
    "folders": 0,
    "allocator": 0,
    "config": 1,
    "run_record": 2,
    "data": 2,
    "templates": 3,
    "models": 4,
    "training": 5,
    "use": 5,
    "tools": 5,
    "serve": 5,
    "export": 5,
    "webui": 5,
    "cli": 9,
    "__init__": 10,
    "__main__": 10,
}
# Same layer, still never: using an adapter needs nothing from training.
FORBIDDEN = {("use", "training"), ("training", "use"), ("tools", "training"), ("tools", "use")}
FORBIDDEN |= {("serve", "training"), ("export", "training"), ("training", "export"), ("use", "export")}
# The web UI runs training as a separate process (`lora-finetune train`), never in-process.
FORBIDDEN |= {("webui", "training"), ("training", "webui")}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = ["lora_finetune", *rel.parts]
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        name = ".".join(parts)
        here = parts if is_pkg else parts[:-1]
        found = edges.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("lora_finetune"):
                    found.add(target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("lora_finetune"))
    return edges


def test_imports_flow_one_way():
    wrong = []
    for module, targets in _imports().items():
        src = _top(module)
        for target in targets:
            dst = _top(target)
            if dst == src:
                continue
            if LAYER[dst] > LAYER[src] or (src, dst) in FORBIDDEN:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_every_top_level_part_has_a_layer():
    tops = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").is_file())
    }
    assert tops <= set(LAYER), tops - set(LAYER)


def test_no_import_cycles():
    """Not even through imports inside functions: a cycle means two modules share a concern."""
    edges = _imports()
    graph = {m: {t for t in targets if t in edges and t != m} for m, targets in edges.items()}
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)
