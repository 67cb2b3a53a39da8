"""The documentation that is generated from code stays in step with the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

from stream.__main__ import settings_table
from stream.events import json_schemas
from stream.settings import StreamSettings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_readme_settings_table_is_current() -> None:
    table = _between(README, "<!-- settings-table:start -->", "<!-- settings-table:end -->")
    assert table == settings_table(), "run: python -m stream settings --markdown (paste in README)"


def test_every_setting_is_one_row_of_the_table() -> None:
    rows = settings_table().splitlines()
    assert len(rows) == len(StreamSettings.model_fields) + 2  # header and rule
    assert all(r.startswith("| ") and r.endswith(" |") for r in rows[2:])


def test_every_setting_is_documented() -> None:
    for name, field in StreamSettings.model_fields.items():
        assert field.description, f"STREAM_{name.upper()} has no description"
        assert f"`STREAM_{name.upper()}`" in README


def test_committed_json_schemas_are_current() -> None:
    for name, schema in json_schemas().items():
        path = ROOT / "docs" / "schemas" / f"{name}.schema.json"
        assert json.loads(path.read_text(encoding="utf-8")) == schema, (
            "run: python -m stream schema --output docs/schemas"
        )


def test_quick_start_is_two_commands_and_ci_runs_the_test_one() -> None:
    section = _between(README, "## Quick start", "\n## ")
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test$", ci, re.M)


def test_readme_has_no_unfilled_placeholders() -> None:
    assert not re.search(r"\bFIGURES_[A-Z_]+\b|\bTODO\b|\bTBD\b", README)
