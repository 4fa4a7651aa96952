"""Lint, format and strict typing are part of the test suite: any finding fails the build."""

from __future__ import annotations

import ast
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],  # strict, on uploadmeter/ (pyproject.toml)
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_tool_is_clean(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contract_is_kept() -> None:
    """The layers, the core's and the stores' forbidden imports, the feature arrows and no
    cycles: the contracts in pyproject.toml ``[tool.importlinter]``."""
    lint_imports = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    # This checkout's package, not whichever copy is installed.
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    )
    result = subprocess.run(
        [lint_imports, "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# werkzeug modules with no server I/O: parsers, data structures, HTTP exception classes.
SANS_IO_WERKZEUG = ("werkzeug.http", "werkzeug.datastructures", "werkzeug.exceptions")


def test_core_uses_only_sans_io_werkzeug() -> None:
    """import-linter sees werkzeug whole; the core (and the exceptions it raises) may use its
    sans-IO helpers only -- never wrappers, serving, wsgi or test."""
    sources = glob.glob(os.path.join(ROOT, "uploadmeter", "core", "*.py"))
    sources.append(os.path.join(ROOT, "uploadmeter", "exceptions.py"))
    imported = set()
    for source in sources:
        with open(source, encoding="utf-8") as f:
            tree = ast.parse(f.read(), source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update((source, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add((source, node.module))
    werkzeug = {(s, m) for s, m in imported if m == "werkzeug" or m.startswith("werkzeug.")}
    assert werkzeug, "the core no longer uses werkzeug: drop its exemption in pyproject.toml"
    not_sans_io = sorted(
        (os.path.relpath(s, ROOT), m)
        for s, m in werkzeug
        if not (m in SANS_IO_WERKZEUG or m.startswith("werkzeug.sansio."))
    )
    assert not_sans_io == []


def _occurrences(needle: str, suffix: str) -> list[str]:
    found = []
    for folder, _dirs, files in os.walk(os.path.join(ROOT, "uploadmeter")):
        for name in files:
            if name.endswith(suffix):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    found += [os.path.relpath(path, ROOT)] * f.read().count(needle)
    return found


@pytest.mark.parametrize(
    ("needle", "suffix"),
    [
        ("PackageLoader(", ".py"),  # one Jinja environment: uploadmeter.ui.template_environment
        ("parse_accept_header(", ".py"),  # one Accept negotiation: wsgi._responses.negotiate
        ("function formatBytes(", ".js"),  # one byte formatter: static/uploadmeter-format.js
    ],
)
def test_policy_is_written_once(needle: str, suffix: str) -> None:
    assert len(_occurrences(needle, suffix)) == 1, _occurrences(needle, suffix)


def test_wsgi_types_come_from_typeshed() -> None:
    """No hand-written WSGI aliases: signatures use ``_typeshed.wsgi``'s types."""
    assert _occurrences("Callable[[dict[str, Any], Callable", ".py") == []
    assert _occurrences("start_response: Any", ".py") == []
    assert _occurrences("start_response: Callable[..., Any]", ".py") == []
