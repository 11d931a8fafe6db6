"""The package's layout rules: modules a reader can take in at one sitting, imports that flow one
way, comments that cite the papers rather than documents outside the repository."""

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tl_vpd"
MODULES = sorted(PKG.rglob("*.py"))
MAX_LINES = 400


def _name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """tl_vpd modules imported when ``path`` is imported: module-level statements, not those under
    ``if TYPE_CHECKING:`` or inside functions."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in [node] if not isinstance(node, (ast.If, ast.Try)) else ast.walk(node):
            if isinstance(sub, ast.Import):
                out |= {a.name for a in sub.names if a.name.startswith("tl_vpd")}
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("tl_vpd"):
                out.add(sub.module)
                out |= {f"{sub.module}.{a.name}" for a in sub.names}
    known = {_name(p) for p in MODULES}
    return {m for m in out if m in known}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_module_is_short(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PKG)} has {n} lines (at most {MAX_LINES})"


def test_no_import_cycles():
    graph = {_name(p): _top_level_imports(p) for p in MODULES}
    # A package's __init__ re-exporting its submodules is not a cycle of its own.
    for mod, deps in graph.items():
        graph[mod] = {d for d in deps if not mod.startswith(d + ".")}
    state: dict[str, int] = {}

    def visit(mod: str, stack: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep] if dep in stack else [mod, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])


OUTSIDE_DOCS = re.compile(r"digest §|ALGORITHM\.md|DESIGN\.md|STYLE\.md|seed 0\d\d|issue \d+|"
                          r"shared/references|integration study")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_reference_to_documents_outside_the_repository(path):
    hits = [f"{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
            if OUTSIDE_DOCS.search(line)]
    assert not hits, f"{path.relative_to(PKG)} cites documents outside the repository: {hits}"
