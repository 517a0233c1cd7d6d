"""The package and its recipes pass the linter configured in pyproject.toml (``[tool.ruff]``), so CI runs it with the
tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import textdiff

ROOT = Path(textdiff.__file__).resolve().parents[1]


def test_ruff_passes_on_the_package_and_the_recipes():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a test dependency: pip install -e '.[test]'"
    result = subprocess.run([ruff, "check", "--no-cache", "textdiff", "recipes"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
