"""The architecture contracts in ``.importlinter`` hold (docs/architecture.md): the admin UI and the
JSON API are independent siblings, the accounts room and the shared services (mdm.devices, mdm.ddm)
import neither of them, the protocol core imports neither nor the DDM room, the rooms are layered
(ui/api above ddm above enrollment and the protocol core), and mdm.ddm reads top to bottom (its spine
above its stages). import-linter reads every import, function-local ones included, so a circle hidden
in a function still breaks a contract; and grimp finds no import cycle between any two modules of mdm."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".importlinter"


def _lint_imports() -> str:
    beside_python = Path(sys.executable).parent / "lint-imports"
    found = str(beside_python) if beside_python.exists() else shutil.which("lint-imports")
    assert found, "lint-imports is missing: pip install -r requirements-test.txt (import-linter)"
    return found


def test_import_contracts_hold():
    result = subprocess.run([_lint_imports(), "--no-cache", str(CONFIG)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_broken_contract_is_reported(tmp_path):
    """The check can fail: a contract the code breaks (the UI does import the accounts room) is reported."""
    config = tmp_path / "broken.ini"
    config.write_text("[importlinter]\nroot_package = mdm\n\n"
                      "[importlinter:contract:probe]\nname = probe\ntype = forbidden\n"
                      "source_modules =\n    mdm.ui\nforbidden_modules =\n    mdm.accounts\n")
    result = subprocess.run([_lint_imports(), "--no-cache", str(config)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "mdm.ui is not allowed to import mdm.accounts" in result.stdout


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_anywhere_in_mdm(monkeypatch):
    """Module by module (packages included, function-local imports included): no circle at all."""
    monkeypatch.syspath_prepend(str(ROOT))
    graph = grimp.build_graph("mdm", cache_dir=None)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
