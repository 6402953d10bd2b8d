"""The bundled kernels as a list, without importing them: `harness kernels` answers in a blink.

Importing the kernel modules imports torch and onnxruntime (seconds on a laptop, far more on a Pi), all
to print a table of names. `catalog.json` beside this file is that table, generated from the registry
itself (`python -m kernels.catalog` rewrites it; `tests/test_kernels.py` fails when it is stale, as
`harness.schemas` does for the JSON Schemas). Kernels that come from elsewhere (users' plugins) are not
in it: list them from the registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CATALOG = Path(__file__).with_name("catalog.json")


def describe(kernels: Any) -> list[dict[str, Any]]:
    """Records of registered kernels (`registry.all_kernels()`), sorted by key: variant, precision,
    backend, scope, what each needs and what it computes."""
    out = []
    for key, k in sorted(kernels.items(), key=lambda kv: str(kv[0])):
        out.append({"variant": key.variant, "precision": key.precision, "backend": key.backend, "scope": key.scope,
                    "needs": list(k.requires.modules + k.requires.torch_ops), "computes": k.description})
    return out


def generate() -> list[dict[str, Any]]:
    """The catalog from the registry itself (imports every bundled kernel module)."""
    from kernels.registry import all_kernels

    return describe(all_kernels())


def builtin_kernels() -> list[dict[str, Any]]:
    """The bundled kernels, read from `catalog.json` (no kernel module imported)."""
    return json.loads(CATALOG.read_text())


def main() -> None:
    CATALOG.write_text(json.dumps(generate(), indent=1) + "\n")
    print(f"wrote {CATALOG}")


if __name__ == "__main__":
    main()
