"""A profile's ``models:``: Hugging Face and ModelScope repositories, as the profile names them.

    models:
      - hf: ORG/NAME                 # or modelscope: ORG/NAME
        revision: main               # a branch, tag or commit (default: main; ModelScope: master)
        include: ["*.json", "*.safetensors"]   # allow_patterns: only the files these match
        exclude: ["*.bin"]           # ignore_patterns
        repo_type: model             # or dataset

Every complaint names the file and line, like the rest of the profile.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bundler.format.models import HUGGINGFACE, MODELSCOPE, REPO_TYPES, repo_id_problem, revision_problem
from bundler.yamlfile import Doc, LocatedDict, LocatedList, describe

HUB_KEYS = {"hf": HUGGINGFACE, "modelscope": MODELSCOPE}
DEFAULT_REVISION = {HUGGINGFACE: "main", MODELSCOPE: "master"}
_KEYS = {*HUB_KEYS, "revision", "include", "exclude", "repo_type"}


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    hub: str                          # huggingface | modelscope
    repo: str                         # ORG/NAME
    revision: str
    repo_type: str = "model"
    include: tuple[str, ...] = ()     # empty: every file
    exclude: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.hub, self.repo_type, self.repo, self.revision)

    def __str__(self) -> str:
        prefix = "hf" if self.hub == HUGGINGFACE else "ms"
        kind = "datasets/" if self.repo_type == "dataset" else ""
        return f"{prefix}:{kind}{self.repo}@{self.revision}"

    def wants(self, path: str) -> bool:
        """Whether a file of the repository is bundled (huggingface_hub's allow/ignore_patterns rules)."""
        return (not self.include or _matches(path, self.include)) and not _matches(path, self.exclude)


def _matches(path: str, patterns: Iterable[str]) -> bool:
    # as huggingface_hub's filter_repo_objects: a pattern ending in "/" means everything below that folder
    return any(fnmatch.fnmatch(path, p + "*" if p.endswith("/") else p) for p in patterns)


def parse_models(doc: Doc, value: Any, line: int) -> tuple[ModelSpec, ...]:
    if not isinstance(value, LocatedList):
        raise doc.fail(line, "models", f"expected a list, got {describe(value)}")
    specs: list[ModelSpec] = []
    for index, (item, item_line) in enumerate(zip(value, value.lines)):
        key = f"models[{index}]"
        if not isinstance(item, LocatedDict):
            raise doc.fail(item_line, key, f"expected a mapping with hf: or modelscope:, got {describe(item)}")
        entry = doc.mapping(item, key, item_line, allowed=_KEYS)
        hubs = [k for k in HUB_KEYS if k in entry]
        if len(hubs) != 1:
            raise doc.fail(entry.line or item_line, key, "takes exactly one of hf: ORG/NAME, modelscope: ORG/NAME")
        hub = HUB_KEYS[hubs[0]]
        repo = doc.string(entry[hubs[0]], f"{key}.{hubs[0]}", entry.lines[hubs[0]])
        problem = repo_id_problem(repo)
        if problem:
            raise doc.fail(entry.lines[hubs[0]], f"{key}.{hubs[0]}", f"{repo!r}: {problem}")
        revision = DEFAULT_REVISION[hub]
        if "revision" in entry:
            revision = _revision(doc, entry["revision"], f"{key}.revision", line=entry.lines["revision"])
        repo_type = "model"
        if "repo_type" in entry:
            repo_type = doc.string(entry["repo_type"], f"{key}.repo_type", entry.lines["repo_type"])
            if repo_type not in REPO_TYPES:
                raise doc.fail(entry.lines["repo_type"], f"{key}.repo_type",
                               f"{repo_type!r} is not one of {', '.join(REPO_TYPES)}")
        patterns = {name: _patterns(doc, entry[name], f"{key}.{name}", line=entry.lines[name])
                    for name in ("include", "exclude") if name in entry}
        spec = ModelSpec(hub=hub, repo=repo, revision=revision, repo_type=repo_type,
                         include=patterns.get("include", ()), exclude=patterns.get("exclude", ()))
        if any(s.key == spec.key for s in specs):
            raise doc.fail(item_line, key, f"{spec} is listed twice")
        specs.append(spec)
    return tuple(specs)


def _revision(doc: Doc, value: Any, key: str, *, line: int) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise doc.fail(line, key, f"{value} was read as a number; quote it: revision: \"{value}\"")
    revision = doc.string(value, key, line)
    problem = revision_problem(revision)
    if problem:
        raise doc.fail(line, key, f"{revision!r}: {problem}")
    return revision


def _patterns(doc: Doc, value: Any, key: str, *, line: int) -> tuple[str, ...]:
    if isinstance(value, str):
        value = LocatedList([value])
        value.lines = [line]
    items = doc.string_list(value, key, line)
    if not items:
        raise doc.fail(line, key, "empty list: leave the key out to take every file")
    return tuple(pattern for pattern, _ in items)
