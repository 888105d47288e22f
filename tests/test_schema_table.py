"""The config table of the README matches the schema."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from schema_table import END, START, replace_block, schema_table  # noqa: E402


@pytest.mark.parametrize("name", ["README.md", "config/README.md"])
def test_config_table_matches_the_schema(name):
    text = (REPO / name).read_text()
    assert START in text and END in text, f"{name} lost its config-table markers"
    assert replace_block(text, schema_table()) == text, (
        f"{name}: run python tools/schema_table.py --write {name}")


def test_every_schema_option_is_a_row():
    table = schema_table()
    for option in ("`inputs`", "`denoise.preset`", "`output.ngff_version`", "`report.enabled`",
                   "**`demo`**"):
        assert f"| {option} |" in table
    assert START not in table and END not in table
