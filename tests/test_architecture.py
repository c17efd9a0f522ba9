"""The house rules, checked: stages import one way (import-linter contract in pyproject.toml), ruff is clean, and no
module grows past ~400 lines. ``make check`` runs the two linters alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: install the dev extras (pip install -e '.[dev]')")
    return found


def test_import_contracts_hold():
    res = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_a_backward_import_breaks_the_contract(tmp_path):
    """The contract can fail: a foundation module importing a stage is reported."""
    import importlinter  # noqa: F401  (the dev extra that the check above runs)

    probe = ROOT / "lm_diff" / "_probe_backward.py"
    probe.write_text("from lm_diff.run import pipeline  # noqa: F401\n")
    cfg = tmp_path / "contract.ini"
    cfg.write_text("[importlinter]\nroot_package = lm_diff\n\n[importlinter:contract:1]\nname = probe\n"
                   "type = forbidden\nsource_modules = lm_diff._probe_backward\nforbidden_modules = lm_diff.run\n")
    try:
        res = subprocess.run([_tool("lint-imports"), "--no-cache", "--config", str(cfg)], cwd=ROOT,
                             capture_output=True, text=True)
    finally:
        probe.unlink()
    assert res.returncode != 0 and "BROKEN" in res.stdout


def test_ruff_is_clean():
    res = subprocess.run([_tool("ruff"), "check", "lm_diff", "tests", "benchmarks"], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout[-4000:]


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "lm_diff").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (> {MAX_LINES} lines): {long}"
