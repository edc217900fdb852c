"""The code itself: typed (mypy --strict), lint-clean (ruff, configured in pyproject.toml), and the public API
exactly what each package's ``__all__`` says (as httpx asserts its own)."""

import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ..conftest import need_module

REPO = Path(__file__).resolve().parents[2]


def test_package_is_mypy_clean():
    need_module("mypy")
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_ruff_clean():
    need_module("ruff")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "bench"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


PACKAGES = ["clipseek", "clipseek.models", "clipseek.server"]


@pytest.mark.parametrize("name", PACKAGES)
def test_package_exports_exactly_its_all(name):
    """Every public name a package binds is in its ``__all__`` and the other way round (httpx's test of itself):
    a name added or dropped is a decision, made in ``__all__``."""
    module = importlib.import_module(name)
    helpers = ("annotations", "TYPE_CHECKING")  # from __future__ and typing: not API
    bound = {n for n, v in vars(module).items()
             if not n.startswith("_") and not isinstance(v, types.ModuleType) and n not in helpers}
    assert sorted(module.__all__) == sorted(bound)
    assert len(module.__all__) == len(set(module.__all__))


def test_top_level_api():
    import clipseek

    assert sorted(clipseek.__all__) == sorted([
        "ClipseekError", "Collection", "Document", "Encoder", "Filter", "ModelSpec", "SearchResult", "Tokenizer",
        "available_models", "get_spec", "load_model"])


def test_module_all_names_what_it_has():
    for name in ["clipseek.collection", "clipseek.query", "clipseek.server.app", "clipseek.server.state",
                 "clipseek.models.registry"]:
        module = importlib.import_module(name)
        missing = [attr for attr in module.__all__ if not hasattr(module, attr)]
        assert not missing, f"{name}.__all__ names {missing}, which it does not have"
