"""Reading files the user wrote (matrices, inventories, import files) without trusting them.

One reader for every input file, so every boundary refuses the same things before anything is parsed
further or written: a path that is not a regular file (`/dev/zero`, a FIFO, a directory), a file over a
size cap, text that is not UTF-8. `read_text` does that with one bounded read of an already opened file
descriptor, so a file swapped between the check and the read changes nothing.

`load_yaml` parses YAML with PyYAML's SafeLoader plus the limits a hostile file needs, all enforced while
the document is composed, before a single value is built:
- aliases: at most `max_aliases`, and the document with its aliases expanded at most `max_nodes` nodes
  deep `max_depth` (a 558-byte "billion laughs" is refused at once, not after gigabytes); an alias that
  contains itself is refused too;
- nesting deeper than `max_depth` (PyYAML composes recursively: a deep `[[[[...` would otherwise end in a
  RecursionError);
- duplicate mapping keys, with both lines (YAML says keys are unique; PyYAML keeps the last one silently);
- `.nan`, `.inf` and numbers that overflow to infinity; integers beyond int64, which neither SQLite nor
  PostgreSQL store.
Every refusal is a `ConfigError` naming the file and the line.

The line of every key and item is returned with the data (`Located`), for messages about values that
parse but are wrong. PyYAML is imported only when a YAML file is loaded: the device-side bundle carries
this package and never needs it.
"""

from __future__ import annotations

import functools
import math
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

YAML_MAX_BYTES = 1_000_000
MAX_ALIASES = 50
MAX_NODES = 100_000
MAX_DEPTH = 32
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
# Longest integer literal looked at: int64 has 19 digits (plus sign, underscores, a 0x/0o/0b prefix).
_MAX_INT_LITERAL = 80


def human_bytes(n: int) -> str:
    """1500000 -> '1.5 MB' (decimal units, as file managers show sizes)."""
    for unit, size in (("GB", 10 ** 9), ("MB", 10 ** 6), ("kB", 10 ** 3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def read_bytes(path: str, *, max_bytes: int, what: str, missing_hint: str = "") -> bytes:
    """The bytes of a regular file of at most `max_bytes`; ConfigError naming the file otherwise."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOCTTY: a terminal device is not ours.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ConfigError(f"no such file{'; ' + missing_hint if missing_hint else ''}", file=path) from None
    except IsADirectoryError:
        raise ConfigError(f"is a directory; give the {what} file itself", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"is a directory; give the {what} file itself", file=path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"is not a regular file (a device, pipe or socket); give the {what} as a file",
                              file=path)
        if st.st_size > max_bytes:
            raise ConfigError(f"is {human_bytes(st.st_size)}, over the {human_bytes(max_bytes)} limit for a "
                              f"{what}", file=path)
        chunks = []
        left = max_bytes + 1
        while left > 0:
            try:
                chunk = os.read(fd, min(left, 1 << 20))
            except BlockingIOError:  # cannot happen on a regular file; be safe rather than spin
                break
            except OSError as exc:
                raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:  # it grew since fstat
            raise ConfigError(f"is over the {human_bytes(max_bytes)} limit for a {what}", file=path)
        return data
    finally:
        os.close(fd)


def decode_utf8(data: bytes, path: str) -> str:
    """UTF-8 text (a leading BOM dropped); ConfigError with the line and byte of the first bad sequence."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at column {col}); save it as UTF-8",
                          file=path, line=line) from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: str, *, max_bytes: int = YAML_MAX_BYTES, what: str = "file", missing_hint: str = "") -> str:
    """`read_bytes` then `decode_utf8`."""
    return decode_utf8(read_bytes(path, max_bytes=max_bytes, what=what, missing_hint=missing_hint), path)


@dataclass
class Located:
    """Line numbers (1-based) of every mapping key and sequence item, by path of keys and indexes."""

    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def line(self, *path: Any) -> int | None:
        """The line of the deepest known prefix of `path` (the entry itself, else what holds it)."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None


class _Refused(Exception):
    """Raised inside the loader; carries the message and the YAML mark where it applies."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.mark = mark


@functools.lru_cache(maxsize=None)
def _loader_class() -> type:
    import yaml
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode

    class BoundedSafeLoader(yaml.SafeLoader):
        """SafeLoader that counts while composing: aliases, nodes, depth; and refuses duplicate keys."""

        max_aliases = MAX_ALIASES
        max_nodes = MAX_NODES
        max_depth = MAX_DEPTH

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._aliases = 0
            self._nodes = 0
            self._depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                self._aliases += 1
                if self._aliases > self.max_aliases:
                    raise _Refused(f"more than {self.max_aliases} YAML aliases (*name); write the values out "
                                   "instead", event.start_mark)
                return super().compose_node(parent, index)
            self._nodes += 1
            if self._nodes > self.max_nodes:
                raise _Refused(f"more than {self.max_nodes:,} YAML values; this is not a file the harness "
                               "reads", self.peek_event().start_mark)
            self._depth += 1
            if self._depth > self.max_depth:
                raise _Refused(f"nested more than {self.max_depth} levels deep", self.peek_event().start_mark)
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def compose_mapping_node(self, anchor: Any) -> Any:
            node = super().compose_mapping_node(anchor)
            seen: dict[tuple[str, str], int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                ident = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if ident in seen:
                    raise _Refused(f"key '{key_node.value}' appears twice (lines {seen[ident]} and {line}); "
                                   "YAML keys must be unique: keep one", key_node.start_mark)
                seen[ident] = line
            return node

        def construct_yaml_int(self, node: Any) -> int:
            if len(str(node.value)) > _MAX_INT_LITERAL:
                raise _Refused(f"integer {str(node.value)[:24]}... is too long; integers must fit in 64 bits",
                               node.start_mark)
            value = super().construct_yaml_int(node)
            if not INT64_MIN <= value <= INT64_MAX:
                raise _Refused(f"integer {node.value} is beyond 64 bits (at most {INT64_MAX})", node.start_mark)
            return value

        def construct_yaml_float(self, node: Any) -> float:
            value = super().construct_yaml_float(node)
            if not math.isfinite(value):
                raise _Refused(f"{node.value!r} is not a finite number", node.start_mark)
            return value

    BoundedSafeLoader.add_constructor("tag:yaml.org,2002:int", BoundedSafeLoader.construct_yaml_int)
    BoundedSafeLoader.add_constructor("tag:yaml.org,2002:float", BoundedSafeLoader.construct_yaml_float)
    BoundedSafeLoader.node_types = (MappingNode, ScalarNode, SequenceNode)  # type: ignore[attr-defined]
    return BoundedSafeLoader


def _expanded_size(root: Any, max_nodes: int, max_depth: int) -> None:
    """Refuse a node graph that, with aliases expanded, holds more than `max_nodes` nodes or nests deeper
    than `max_depth`, or contains itself. Memoized per node: linear in the composed (unexpanded) graph."""
    from yaml.nodes import MappingNode, SequenceNode

    sizes: dict[int, tuple[int, int]] = {}
    active: set[int] = set()

    def visit(node: Any) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _Refused("an alias refers to a value that contains it (a recursive structure)", node.start_mark)
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            sizes[key] = (1, 1)
            return sizes[key]
        active.add(key)
        total, depth = 1, 1
        for child in children:
            n, d = visit(child)
            total += n
            depth = max(depth, d + 1)
            if total > max_nodes:
                raise _Refused(f"its aliases expand to more than {max_nodes:,} values (a YAML bomb?); write the "
                               "values out instead", node.start_mark)
            if depth > max_depth:
                raise _Refused(f"its aliases nest more than {max_depth} levels deep", node.start_mark)
        active.discard(key)
        sizes[key] = (total, depth)
        return sizes[key]

    # The composed graph is at most MAX_DEPTH deep, so this recursion is bounded too.
    visit(root)


def _walk(node: Any, path: tuple[Any, ...], located: Located) -> None:
    from yaml.nodes import MappingNode, SequenceNode

    located.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            located.lines[path + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, path + (key,), located)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            located.lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), located)


def load_yaml(text: str, file: str, *, max_aliases: int = MAX_ALIASES, max_nodes: int = MAX_NODES,
              max_depth: int = MAX_DEPTH) -> tuple[Any, Located]:
    """Parse one YAML document within the limits; ConfigError naming the file and line otherwise."""
    import yaml

    cls = _loader_class()
    located = Located()
    loader = None
    try:
        loader = cls(text)  # the reader refuses unprintable characters (NUL, ...) here already
        loader.max_aliases, loader.max_nodes, loader.max_depth = max_aliases, max_nodes, max_depth
        node = loader.get_single_node()
        if node is None:
            return None, located
        _expanded_size(node, max_nodes, max_depth)
        data = loader.construct_document(node)
    except _Refused as exc:
        line = exc.mark.line + 1 if exc.mark is not None else None
        raise ConfigError(str(exc), file=file, line=line) from None
    except yaml.reader.ReaderError as exc:  # an unprintable character: no mark, a position
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"holds a character YAML does not allow ({exc.reason}, #x{exc.character:04x})"
                          if isinstance(exc.character, int) else f"not valid YAML: {exc.reason}",
                          file=file, line=line) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"not valid YAML: {problem}; fix the syntax at this line", file=file,
                          line=line) from None
    except (ValueError, OverflowError) as exc:  # PyYAML's scanner on an escape beyond Unicode ("\U00110000")
        line = getattr(loader, "line", None)
        raise ConfigError(f"not valid YAML: {exc}; fix the escape sequence at this line", file=file,
                          line=line + 1 if isinstance(line, int) else None) from None
    except RecursionError:  # belt and braces: the depth limit should have stopped it first
        raise ConfigError(f"nested too deeply (more than {max_depth} levels)", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()
    _walk(node, (), located)
    return data, located
