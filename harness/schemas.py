"""The published JSON Schemas of the user's files: `python -m harness.schemas` writes them to schemas/.

They are generated from the definitions the loaders check against (`workloads.matrix.matrix_schema`,
`devices.inventory.inventory_schema`), so the files only need regenerating when those change; a test fails
when they are stale. Editors that read a `# yaml-language-server: $schema=...` line validate and complete
matrices and inventories from them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def schemas() -> dict[str, Callable[[], dict[str, Any]]]:
    """File name -> the function that builds its schema."""
    from devices.inventory import inventory_schema
    from workloads.matrix import matrix_schema

    return {"matrix.schema.json": matrix_schema, "inventory.schema.json": inventory_schema}


def render(build: Callable[[], dict[str, Any]]) -> str:
    """The file text of one schema (stable: sorted keys, two-space indent, final newline)."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in schemas().items():
        path = directory / name
        path.write_text(render(build))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """`python -m harness.schemas [--plugin PATH ...] [DIR]`: the published schemas (to schemas/ by default);
    with plugins, a matrix schema that also knows their variants, backends and knobs (give a DIR of your
    own for it: the published one describes the bundled kernels only)."""
    plugins: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--plugin":
            plugins.append(next(args, ""))
        else:
            rest.append(arg)
    directory = Path(rest[0]) if rest else SCHEMA_DIR
    if not plugins:
        for p in write_all(directory):
            print(p)
        return 0
    from functools import partial

    from harness.plugins import load, resolve_plugins
    from workloads.matrix import matrix_schema

    found = load(resolve_plugins(plugins))
    for line in found.messages():
        print(f"plugin error: {line}", file=sys.stderr)
    if found.failed:
        return 2
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "matrix.schema.json"
    path.write_text(render(partial(matrix_schema, with_plugins=True)))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
