"""The seeded examples in the models' docstrings run and hold (CI runs no --doctest-modules)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "stream.models._ranking",
    "stream.models.base",
    "stream.models.popularity",
    "stream.models.knn",
    "stream.models.mf",
    "stream.models.blend",
    "stream.models.fusion",
    "stream.models.bpr",
    "stream.models.rebuilt",
    "stream.models.svd",
    "stream.models.ease",
    "stream.models.userknn",
    "stream.models.registry",
    "stream.retrieval",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
