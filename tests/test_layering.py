"""The layering of the design notes (docs/design.md section 1), read from the imports themselves:
`ahm_core` runs with no framework, `config.py` is the ground floor, the report writers are
siblings over scoring, and no module imports itself back through another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("flwr", "ray", "hydra", "omegaconf", "prometheus_client")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The modules `path` imports (`from a.b import c` counts as a.b, or a.b.c where that is a
    module of the project)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if f"{node.module}.{alias.name}" in MODULES
            )
    return found


FILES = sorted((ROOT / "ahm_core").rglob("*.py"))
MODULES = {_module(path): path for path in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_ahm_core_imports_no_framework(path):
    frameworks = {m for m in _imports(path, False) if m.split(".")[0] in FRAMEWORKS}
    assert not frameworks, f"{path.name} imports {frameworks}"


def test_config_is_the_ground_floor():
    project = {m for m in _imports(ROOT / "ahm_core/config.py", False) if m.startswith("ahm_core")}
    assert project <= {"ahm_core.errors", "ahm_core.io", "ahm_core.freq"}, project


def test_the_report_writers_are_siblings_over_scoring():
    writers = {"ahm_core.paper", "ahm_core.report", "ahm_core.threat"}
    for writer in writers:
        imports = _imports(MODULES[writer], False)
        assert "ahm_core.scoring" in imports, writer
        assert not imports & (writers - {writer}), f"{writer} imports {imports & writers}"


def test_no_import_cycle_in_ahm_core():
    graph = {
        name: {m for m in _imports(path, True) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            cycle = stack[stack.index(name) :]
            # a package's __init__ re-exporting its children is not a cycle of the code
            if not all(m.startswith(cycle[0] + ".") or cycle[0].startswith(m) for m in cycle):
                raise AssertionError(" -> ".join([*cycle, name]))
            return
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
