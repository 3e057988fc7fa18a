"""The tools' own configuration files, edited without losing anything: Docker's daemon.json, pip.conf,
containerd's hosts.toml and the environment file PAM reads (/etc/environment).

Each file belongs to the user and holds more than bundler's keys. An edit keeps every other key,
refuses a file it cannot parse (naming the line) without touching it, copies the old file to a
timestamped backup beside it, and replaces it atomically: a temp file in the same folder, renamed
over it. Writing what the file already says changes nothing: no write, no backup. Both sides use
it: the mirror catalog's configuration on the connected side (build/mirrorconfig.py), a node's
configuration for the site on the air-gapped one (restore/siteconfig.py).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from bundler.errors import DiskError, InputError, OperationalError
from bundler.yamlfile import read_text

try:   # the edit of a hosts.toml is checked by reading both files back where Python has a TOML reader
    import tomllib
except ImportError:   # CPython before 3.11
    tomllib = None

DAEMON_JSON = Path("/etc/docker/daemon.json")
REGISTRY_MIRRORS = "registry-mirrors"
INSECURE_REGISTRIES = "insecure-registries"


@dataclass(frozen=True)
class ConfigPlan:
    """What a configuration file should say, against what it says now (built by keyword)."""

    path: Path
    text: str | None                 # the whole new file; None when there is nothing to configure
    original: str | None = None      # the file as read; None when it does not exist
    changed: bool = False            # writing would change what the file means
    reason: str = ""                 # why there is nothing to configure
    notes: tuple[str, ...] = ()


def read_config(path: Path) -> str | None:
    """The file's text, or None when there is no such file."""
    if not path.exists():
        return None
    return read_text(path, InputError)


# ---- daemon.json -----------------------------------------------------------------------------

def parse_json_object(text: str, path: Path) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno}); "
                         "fix it by hand, it was left as it is") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}:1: expected a JSON object ({{...}}), found {type(data).__name__}; "
                         "it was left as it is")
    return data


def plan_json(path: Path, edit: Callable[[dict], dict], notes: tuple[str, ...] = ()) -> ConfigPlan:
    """The JSON object in ``path`` as ``edit`` turns it (``edit`` takes the object, {} for a missing or
    empty file, and returns the whole new one); unchanged when it means the same."""
    original = read_config(path)
    data = parse_json_object(original, path) if original is not None and original.strip() else {}
    merged = edit(data)
    text = json.dumps(merged, indent=2, ensure_ascii=False) + "\n"
    return ConfigPlan(path=path, text=text, original=original, changed=original is None or merged != data, notes=notes)


# ---- pip.conf --------------------------------------------------------------------------------

_SECTION = re.compile(r"\[(?P<name>[^]]+)\]\s*\Z")


def _section(line: str) -> str | None:
    """The section a line opens, if it is a header (an indented line continues a value)."""
    if line[:1].isspace():
        return None
    found = _SECTION.match(line.strip())
    return found.group("name") if found else None


def _key(line: str) -> str | None:
    """The (pip-normalised) key a line sets, if it starts a key."""
    text = line.strip()
    if not text or line[:1].isspace() or text.startswith(("#", ";")) or _section(line) is not None:
        return None
    name = re.split(r"[=:]", text, maxsplit=1)[0]
    return name.strip().lower().replace("_", "-")


def _merge_global(text: str, settings: dict[str, list[str]], owned: Collection[str]) -> str:
    """``text`` with ``settings`` at the top of [global] (created if absent), the other ``owned`` keys
    gone from it, and every other line kept as it was."""
    lines = text.splitlines()
    block = ["[global]"]
    for key, values in settings.items():
        block += [f"{key} = {values[0]}"] if len(values) == 1 else [f"{key} ="] + [f"    {v}" for v in values]
    start = next((i for i, line in enumerate(lines) if _section(line) == "global"), None)
    if start is None:
        merged = block + ([""] if lines else []) + lines
    else:
        end = next((i for i in range(start + 1, len(lines)) if _section(lines[i]) is not None), len(lines))
        merged = lines[:start] + block + _without(lines[start + 1:end], set(settings) | set(owned)) + lines[end:]
    return "\n".join(merged) + "\n"


def _without(lines: list[str], keys: set[str]) -> list[str]:
    """``lines`` less the ones that set ``keys``, with their continuation lines."""
    kept: list[str] = []
    index = 0
    while index < len(lines):
        if _key(lines[index]) not in keys:
            kept.append(lines[index])
            index += 1
            continue
        index += 1
        while index < len(lines):
            following = next((j for j in range(index, len(lines)) if lines[j].strip()), len(lines))
            if following < len(lines) and lines[following][:1].isspace():
                index = following + 1   # a continuation, maybe after blank lines
            else:
                break
    return kept


def parse_pip_conf(text: str, path: Path) -> dict[str, dict[str, str]]:
    """The file as pip reads it (configparser, no interpolation); every complaint names the line."""
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as exc:
        raise InputError(f"{path}:{exc.lineno}: not a valid pip config: {exc.line.strip()!r} comes before any "
                         "[section] header; it was left as it is") from None
    except configparser.ParsingError as exc:
        line = exc.errors[0][0]
        content = text.splitlines()[line - 1].strip()
        raise InputError(f"{path}:{line}: not a valid pip config: cannot parse {content!r}; "
                         "it was left as it is") from None
    except (configparser.DuplicateOptionError, configparser.DuplicateSectionError) as exc:
        what = f"option {exc.option!r} in [{exc.section}]" if isinstance(exc, configparser.DuplicateOptionError) \
            else f"section [{exc.section}]"
        raise InputError(f"{path}:{exc.lineno}: not a valid pip config: {what} appears twice; "
                         "it was left as it is") from None
    except configparser.Error as exc:
        raise InputError(f"{path}: not a valid pip config: {exc.message}; it was left as it is") from None
    return {name: {key.replace("_", "-"): value for key, value in parser.items(name)} for name in parser.sections()}


def _check_merge(before: dict, after: dict, settings: dict[str, list[str]], *, path: Path,
                 owned: Collection[str]) -> None:
    """The edit changed the owned keys in [global] and nothing else; a layout it misread would show here."""
    def others(config: dict) -> dict:
        return {name: {k: v for k, v in keys.items() if name != "global" or k not in owned}
                for name, keys in config.items()}

    expected = {"global": {}, **others(before)}
    ours = {key: value.split() for key, value in after.get("global", {}).items() if key in owned}
    if others(after) != expected or ours != settings:
        raise OperationalError(f"{path}: could not be edited safely (its [global] section is laid out in a way "
                               f"this tool misreads); set {', '.join(settings)} there by hand")


def plan_pip_conf_keys(path: Path, settings: dict[str, list[str]], *, owned: Collection[str],
                       notes: tuple[str, ...] = ()) -> ConfigPlan:
    """pip.conf with ``settings`` in [global]: the keys of ``owned`` it does not set are removed from
    [global], every other line is kept; a file pip cannot read is refused, naming the line."""
    original = read_config(path)
    before = parse_pip_conf(original or "", path)
    text = _merge_global(original or "", settings, owned)
    after = parse_pip_conf(text, path)
    _check_merge(before, after, settings, path=path, owned=owned)
    return ConfigPlan(path=path, text=text, original=original, changed=text != original, notes=notes)


# ---- /etc/environment --------------------------------------------------------------------------

_ENV_LINE = re.compile(r"(?:export\s+)?(?P<name>[A-Za-z0-9_]+)=(?P<value>.*)\Z")


def _env_value(raw: str) -> str:
    """A value as pam_env reads it: up to a ``#``, less the quotes around it."""
    value = raw.split("#", 1)[0].rstrip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return value


def parse_environment(text: str, path: Path) -> list[tuple[str, str] | None]:
    """Each line's (name, value), None for a blank or comment line; a line pam_env would not read as
    ``NAME=VALUE`` is refused, naming it."""
    found: list[tuple[str, str] | None] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            found.append(None)
            continue
        match = _ENV_LINE.match(stripped)
        if match is None:
            raise InputError(f"{path}:{number}: not a NAME=VALUE line: {stripped!r}; fix it by hand, "
                             "it was left as it is")
        found.append((match.group("name"), _env_value(match.group("value"))))
    return found


def plan_environment(path: Path, values: Mapping[str, str], notes: tuple[str, ...] = ()) -> ConfigPlan:
    """An environment file that sets ``values``: each name's first line replaced, later ones dropped
    (the last one set wins), a new name appended; unchanged when every name already has its value."""
    original = read_config(path)
    lines = (original or "").splitlines()
    parsed = parse_environment(original or "", path)
    now = dict(entry for entry in parsed if entry is not None)
    merged, placed = [], set()
    for line, entry in zip(lines, parsed):
        name = entry[0] if entry else None
        if name not in values:
            merged.append(line)
        elif name not in placed:
            merged.append(f"{name}={values[name]}")
            placed.add(name)
    merged += [f"{name}={value}" for name, value in values.items() if name not in placed]
    changed = any(now.get(name) != value for name, value in values.items())
    return ConfigPlan(path=path, text="\n".join(merged) + "\n", original=original, changed=changed, notes=notes)


# ---- hosts.toml ------------------------------------------------------------------------------

_TOML_KEY_PART = r'\s*(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')\s*'
_TOML_TABLE = re.compile(rf"\[(?P<key>{_TOML_KEY_PART}(?:\.{_TOML_KEY_PART})*)\]\s*(?:#.*)?\Z")
_TOML_PART = re.compile(_TOML_KEY_PART)


def _table_key(line: str) -> tuple[str, ...] | None:
    """The dotted key of a ``[table]`` header line, parts unquoted; None for any other line."""
    found = _TOML_TABLE.match(line.strip())
    if found is None:
        return None
    parts = []
    for part in (m.group(0).strip() for m in _TOML_PART.finditer(found.group("key"))):
        parts.append(json.loads(part) if part.startswith('"') else part.strip("'"))
    return tuple(parts)


def _open_brackets(line: str) -> int:
    """How many ``[`` a value line leaves open (strings and comments skipped): a multi-line array."""
    depth, quote, escaped = 0, "", False
    for char in line:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#":
            break
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
    return depth


def _tables(lines: list[str], path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """(line index, key) of each table header, lines inside a multi-line array left out."""
    tables, depth = [], 0
    for index, line in enumerate(lines):
        stripped = line.strip()
        if '"""' in line or "'''" in line:
            raise OperationalError(f"{path}:{index + 1}: holds a multi-line string, which this tool does not edit; "
                                   "edit the file by hand")
        if depth:
            depth = max(0, depth + _open_brackets(line))
        elif stripped.startswith("[["):
            raise OperationalError(f"{path}:{index + 1}: holds an array of tables, which hosts.toml does not use; "
                                   "edit the file by hand")
        elif (key := _table_key(line)) is not None:
            tables.append((index, key))
        elif stripped and not stripped.startswith("#"):
            depth = max(0, _open_brackets(line.split("=", 1)[1] if "=" in line else line))
    return tables


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))   # a TOML basic string: the escapes JSON writes mean the same there


def _load_toml(text: str, path: Path) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.fullmatch(r"(?P<msg>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)", str(exc))
        where = f"{path}:{found['line']}" if found else str(path)
        what = f"{found['msg']} (column {found['column']})" if found else str(exc)
        raise InputError(f"{where}: not valid TOML: {what}; fix it by hand, it was left as it is") from None


def plan_hosts_toml(path: Path, *, server: str, host: str, settings: Mapping[str, object]) -> ConfigPlan:
    """containerd's hosts.toml for one registry: ``server = SERVER``, and the table ``[host."HOST"]``
    setting ``settings``, first among the hosts (containerd tries them in order). Other keys, other
    hosts, HOST's other keys and subtables, and comments are kept. Where Python reads TOML (3.11+),
    both files are read back and compared, so a layout the line edit misreads is refused rather
    than written."""
    original = read_config(path)
    before = _load_toml(original or "", path) if tomllib is not None else None
    lines = [f"  {name} = {_toml_value(value)}" for name, value in settings.items()]
    text = _edit_hosts(original or "", f"server = {_toml_value(server)}", lines, host=host, path=path)
    if before is None:
        return ConfigPlan(path=path, text=text, original=original, changed=text != original)
    try:
        after = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        after = {}
    hosts = before.get("host") if isinstance(before.get("host"), dict) else {}
    ours = hosts.get(host) if isinstance(hosts.get(host), dict) else {}
    expected = {**before, "server": server,
                "host": {host: {**ours, **settings}, **{k: v for k, v in hosts.items() if k != host}}}
    if after != expected or list(after["host"]) != list(expected["host"]):
        raise OperationalError(f"{path}: could not be edited safely (it is laid out in a way this tool misreads); "
                               f"set server and [host.\"{host}\"] there by hand")
    return ConfigPlan(path=path, text=text, original=original,
                      changed=before != after or list(hosts) != list(after["host"]))


def _edit_hosts(text: str, server_line: str, setting_lines: list[str], *, host: str, path: Path) -> str:
    """The line edit of plan_hosts_toml: the server line replaced where it was (else put first), and
    HOST's table, with its subtables, moved before the first other host, its settings replaced."""
    lines = text.splitlines()
    tables = _tables(lines, path)
    sections = [(start, tables[number + 1][0] if number + 1 < len(tables) else len(lines), key)
                for number, (start, key) in enumerate(tables)]
    servers = [i for i in range(tables[0][0] if tables else len(lines)) if re.match(r"\s*server\s*=", lines[i])]
    ours = [(start, end, key) for start, end, key in sections if key[:2] == ("host", host)]
    dropped = set(servers) | {i for start, end, _ in ours for i in range(start, end)}
    block = [f"[host.{_toml_value(host)}]", *setting_lines]
    names = {line.split("=", 1)[0].strip() for line in setting_lines}
    for start, end, key in ours:
        block += _without_keys(lines[start + 1:end], names) if key == ("host", host) else lines[start:end]
    while block and not block[-1].strip():
        block.pop()
    first_host = next((start for start, _, key in sections if key[:1] == ("host",) and start not in dropped), None)
    merged = [] if lines else [server_line]
    for index, line in enumerate(lines):
        if index == (servers[0] if servers else 0):
            merged.append(server_line)
        if index == first_host:
            merged += [*block, ""]
        if index not in dropped:
            merged.append(line)
    while merged and not merged[-1].strip():
        merged.pop()
    if first_host is None:
        merged += ["", *block]
    return "\n".join(merged) + "\n"


_TOML_SETS = re.compile(r"\s*(?P<key>[A-Za-z0-9_-]+|\"[^\"\\]*\"|'[^']*')\s*=")


def _without_keys(lines: list[str], names: set[str]) -> list[str]:
    """A table's body less the lines that set ``names`` (a multi-line value with all its lines)."""
    kept, depth, dropping = [], 0, False
    for line in lines:
        if depth:
            depth = max(0, depth + _open_brackets(line))
        else:
            found = _TOML_SETS.match(line)
            dropping = found is not None and found["key"].strip("\"'") in names
            depth = max(0, _open_brackets(line.split("=", 1)[1])) if found else 0
        if not dropping:
            kept.append(line)
    return kept


# ---- writing ---------------------------------------------------------------------------------

def write_config(plan: ConfigPlan) -> Path | None:
    """Replace the file with ``plan.text`` atomically, after copying it to a backup; the backup's path.

    Nothing happens when the plan changes nothing. A symlink is followed: its target is replaced.
    """
    if plan.text is None or not plan.changed:
        return None
    target = Path(os.path.realpath(plan.path))
    if read_config(target) != plan.original:
        raise OperationalError(f"{plan.path}: changed while bundler was editing it; run the command again")
    backup = tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if plan.original is not None:
            backup = _backup_path(target)
            shutil.copy2(target, backup)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(plan.text)
            out.flush()
            os.fsync(out.fileno())
        _copy_owner_and_mode(target if plan.original is not None else None, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise DiskError(f"{exc.filename or target}: cannot write: {exc.strerror}") from None
    return backup


def _backup_path(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    count = 1
    while candidate.exists():
        count += 1
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{count}")
    return candidate


def _copy_owner_and_mode(original: Path | None, tmp: str) -> None:
    if original is None:
        os.chmod(tmp, 0o644)   # mkstemp's 0600 would hide a new file from the user's other tools
        return
    info = original.stat()
    os.chmod(tmp, stat.S_IMODE(info.st_mode))
    if hasattr(os, "chown") and os.geteuid() == 0:
        os.chown(tmp, info.st_uid, info.st_gid)   # root editing a user's file leaves it the user's
