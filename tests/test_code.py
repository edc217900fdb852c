import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import need_module


def test_package_is_mypy_clean():
    need_module("mypy")
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
