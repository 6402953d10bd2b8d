"""The one exception hierarchy of attn-harness.

Device-side code may raise these too, so this module imports only the standard library. The CLI catches
`HarnessError` once, prints its message and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HarnessError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(HarnessError):
    """Bad input in a file the user wrote (matrix, inventory): names file, line and key."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.detail = message
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        keypart = f"key '{key}': " if key else ""
        super().__init__(f"{where}{keypart}{message}")


class NotRegisteredError(HarnessError):
    """A (variant, precision, backend, scope) that no kernel implements."""


class PluginError(HarnessError):
    """A user's kernel plugin could not be loaded or registered something it may not (names file and line)."""


class StoreError(HarnessError):
    """The results database refused or does not hold what was asked for."""


class DatabaseError(StoreError):
    """The results database failed (disk full, read-only, unreachable, damaged): says what it means."""


class DeviceError(HarnessError):
    """A device could not be reached, trusted or used."""
