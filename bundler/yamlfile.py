"""YAML documents that remember where each key and item was written.

Profiles, mirror files and lock files are validated against a schema, and every complaint names
the file and the line. PyYAML's node marks carry the lines; this module keeps them on the values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bundler.errors import InputError


class LocatedDict(dict):
    """A mapping from a YAML file, with the line of the mapping and of each key."""

    line: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines: dict[Any, int] = {}


class LocatedList(list):
    """A sequence from a YAML file, with the line of the sequence and of each item."""

    line: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines: list[int] = []


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    mapping = LocatedDict()
    mapping.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise _KeyProblem(line, f"a key must be a plain name, not {type(key).__name__}")
        if key in mapping:
            raise _KeyProblem(line, f"duplicate key {key!r} (first at line {mapping.lines[key]})")
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.lines[key] = line
    return mapping


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    sequence = LocatedList()
    sequence.line = node.start_mark.line + 1
    for item in node.value:
        sequence.append(loader.construct_object(item, deep=True))
        sequence.lines.append(item.start_mark.line + 1)
    return sequence


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


class _KeyProblem(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class Doc:
    """Validation helpers bound to one file, raising ``error`` with ``file:line: key: problem``."""

    def __init__(self, path: Path | str, error: type[InputError] = InputError) -> None:
        self.path = str(path)
        self.error = error

    def fail(self, line: int | None, key: str, problem: str) -> InputError:
        """The error for ``key`` at ``line``: one line, whatever characters the key holds."""
        key = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(key))
        problem = " ".join(problem.split())
        where = f"{self.path}:{line}" if line else self.path
        return self.error(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")

    def load_text(self, text: str) -> Any:
        try:
            return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
        except _KeyProblem as exc:
            raise self.fail(exc.line, "", str(exc)) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            problem = " ".join(p for p in (exc.context, exc.problem) if p)
            problem = " ".join(problem.split())
            raise self.fail(line, "", f"not valid YAML: {problem}") from None
        except yaml.reader.ReaderError as exc:
            line = text[: exc.position].count("\n") + 1 if isinstance(exc.position, int) else None
            raise self.fail(line, "", f"not valid YAML: character {exc.character!r} is not allowed") from None
        except yaml.YAMLError as exc:
            raise self.fail(None, "", f"not valid YAML: {str(exc).splitlines()[0]}") from None

    def mapping(self, value: Any, key: str, line: int | None, *, allowed: set[str],
                required: set[str] = frozenset()) -> LocatedDict:
        """Check that ``value`` is a mapping with only ``allowed`` keys and every ``required`` one."""
        if not isinstance(value, LocatedDict):
            raise self.fail(line, key or "document", f"expected a mapping, got {describe(value)}")
        prefix = f"{key}." if key else ""
        for name in value:
            if name not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail(value.lines[name], f"{prefix}{name}", f"unknown key (known keys: {known})")
        for name in sorted(required):
            if name not in value:
                raise self.fail(value.line or line, f"{prefix}{name}", "required key is missing")
        return value

    def string(self, value: Any, key: str, line: int | None) -> str:
        if not isinstance(value, str):
            raise self.fail(line, key, f"expected a string, got {describe(value)}")
        return value

    def string_list(self, value: Any, key: str, line: int | None) -> list[tuple[str, int]]:
        """A list of strings, each with its line."""
        if not isinstance(value, LocatedList):
            raise self.fail(line, key, f"expected a list, got {describe(value)}")
        items = []
        for index, (item, item_line) in enumerate(zip(value, value.lines)):
            items.append((self.string(item, f"{key}[{index}]", item_line), item_line))
        return items


def describe(value: Any) -> str:
    """Name a YAML value's type the way a user wrote it."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def read_text(path: Path, error: type[InputError]) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
