"""pyproject.toml: what installing the project prints and pulls in."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _floor(requirements: list[str], name: str) -> tuple[int, ...]:
    for req in requirements:
        match = re.match(rf"^{re.escape(name)}\s*>=\s*([0-9.]+)", req)
        if match:
            return tuple(int(p) for p in match.group(1).split("."))
    raise AssertionError(f"{name} has no >= floor in {requirements}")


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it() -> None:
    # The table form ({text = ...}) makes setuptools print a deprecation box on every install;
    # the SPDX string needs setuptools >= 77 to be understood at all.
    config = _pyproject()
    assert config["project"]["license"] == "Apache-2.0"
    assert _floor(config["build-system"]["requires"], "setuptools") >= (77,)


def test_every_kafka_codec_is_a_dependency_and_installed() -> None:
    import kafka.codec

    deps = _pyproject()["project"]["dependencies"]
    for library in ("python-snappy", "lz4", "zstandard"):
        _floor(deps, library)
    assert kafka.codec.has_gzip() and kafka.codec.has_snappy()
    assert kafka.codec.has_lz4() and kafka.codec.has_zstd()
    payload = b"stream-reco " * 200
    for encode, decode in (
        (kafka.codec.snappy_encode, kafka.codec.snappy_decode),
        (kafka.codec.lz4_encode, kafka.codec.lz4_decode),
        (kafka.codec.zstd_encode, kafka.codec.zstd_decode),
    ):
        assert decode(encode(payload)) == payload
