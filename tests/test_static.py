"""
The static checks, run by the README's test command (and so by CI): mypy and
ruff, configured in pyproject.toml, must report nothing.

Both come with the C{test} extra. Each runs as a module of the interpreter that
runs the tests, so a missing one fails here (it is never skipped).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_mypy_reports_nothing() -> None:
    """
    mypy, with the files and strictness pyproject.toml gives it, finds no error.
    """
    result = _run("mypy", "--cache-dir", "/dev/null")
    assert result.returncode == 0, f"mypy:\n{result.stdout}{result.stderr}"
    assert "Success: no issues found" in result.stdout, result.stdout


def test_ruff_reports_nothing() -> None:
    """
    ruff, with the rules pyproject.toml selects, finds nothing in the package,
    the plugin or the tests.
    """
    result = _run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, f"ruff:\n{result.stdout}{result.stderr}"
    assert "All checks passed!" in result.stdout, result.stdout
