"""The config table of the README (and of docs/readme-sections.md) matches the schema."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from schema_table import END, START, replace_block, schema_table  # noqa: E402


@pytest.mark.parametrize("document", ["README.md", "docs/readme-sections.md"])
def test_config_table_matches_the_schema(document):
    text = (REPO / document).read_text()
    if START not in text:
        pytest.skip(f"{document} has no config table yet")
    assert replace_block(text, schema_table()) == text, (
        f"{document}: run python tools/schema_table.py --write {document}")


def test_every_schema_option_is_a_row():
    table = schema_table()
    for option in ("`inputs`", "`denoise.preset`", "`output.ngff_version`", "`report.enabled`",
                   "**`demo`**"):
        assert f"| {option} |" in table
    assert START not in table and END not in table
