"""The architecture contracts in ``.importlinter`` hold (docs/architecture.md): the admin UI and the
JSON API are independent siblings, the accounts room and the shared services (mdm.devices, mdm.ddm)
import neither of them, and the protocol core imports neither. import-linter reads every import,
function-local ones included, so a circle hidden in a function still breaks a contract."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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
