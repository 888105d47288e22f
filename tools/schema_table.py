"""The workflow's config options as a Markdown table, generated from its JSON Schema.

    python tools/schema_table.py                      # print the table
    python tools/schema_table.py --write README.md    # replace the table between the markers
    python tools/schema_table.py --check README.md    # exit 1 when the table there is stale

The table sits between ``<!-- config-table:start -->`` and ``<!-- config-table:end -->`` in
the target file, so it never drifts from ``workflow/schemas/config.schema.yaml``; the test
``tests/test_schema_table.py`` checks it. One row per option (sections first, then their
keys as ``section.key``), with its type, default and description.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"


def _type(spec: dict) -> str:
    if "enum" in spec:
        return " or ".join(f"`{json.dumps(v)}`" for v in spec["enum"])
    kinds = spec.get("type", "")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    text = " or ".join(k for k in kinds if k)
    if "items" in spec:
        text += f" of {spec['items'].get('type', 'any')}"
    bounds = [f">= {spec['minimum']}" if "minimum" in spec else "",
              f"> {spec['exclusiveMinimum']}" if "exclusiveMinimum" in spec else ""]
    return " ".join([text, *[b for b in bounds if b]])


def _cell(text: str) -> str:
    """One line; ``|`` escaped for the table, ``<`` for Markdown renderers (``<name>`` would
    be read as an HTML tag)."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;")


def schema_rows(schema: dict, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(option, type, default, description)`` for every property, depth first."""
    rows = []
    for key, spec in schema.get("properties", {}).items():
        name = f"{prefix}{key}"
        if spec.get("type") == "object" and "properties" in spec:
            rows.append((f"**`{name}`**", "section", "", _cell(spec.get("description", ""))))
            rows += schema_rows(spec, f"{name}.")
        else:
            default = json.dumps(spec.get("default")) if "default" in spec else ""
            rows.append((f"`{name}`", _cell(_type(spec)), f"`{default}`" if default else "",
                         _cell(spec.get("description", ""))))
    return rows


def schema_table(path: Path = SCHEMA) -> str:
    """The Markdown table of the schema at `path`."""
    schema = yaml.safe_load(path.read_text())
    lines = ["| option | type | default | description |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in schema_rows(schema)]
    return "\n".join(lines)


def replace_block(text: str, table: str) -> str:
    """`text` with the block between the markers replaced by `table`."""
    if START not in text or END not in text:
        msg = f"no {START} ... {END} block"
        raise ValueError(msg)
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="FILE", help="update the table in FILE")
    group.add_argument("--check", type=Path, metavar="FILE", help="fail if FILE's is stale")
    args = parser.parse_args()
    table = schema_table()
    if args.write:
        args.write.write_text(replace_block(args.write.read_text(), table))
    elif args.check:
        text = args.check.read_text()
        if replace_block(text, table) != text:
            print(f"{args.check}: config table differs from {SCHEMA.relative_to(ROOT)}; run "
                  f"python tools/schema_table.py --write {args.check}", file=sys.stderr)
            return 1
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
