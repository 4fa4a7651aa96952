"""Lint, format and strict typing are part of the test suite: any finding fails the build."""

from __future__ import annotations

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
