"""The seeded examples in the producers' docstrings run and hold (CI runs no --doctest-modules)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "producers.records",
    "producers.ordering",
    "producers.parsers",
    "producers.formats",
    "producers.pacing",
    "producers.sinks",
    "producers.emitter",
    "producers.synthetic",
    "producers.__main__",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
