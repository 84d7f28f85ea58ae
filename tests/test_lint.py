"""The lint scripts/test.sh runs, also as a test so the suite engineers run before landing catches it:
``ruff check .`` with the ``[tool.ruff]`` rules of pyproject.toml (pyflakes, pycodestyle, import order)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                    reason="ruff is not installed: pip install -e '.[dev]' (scripts/setup.sh does)")
def test_ruff_passes():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, f"ruff check . found (fix, or `ruff check --fix .` for imports):\n{out.stdout}"
