"""Capability categories: loaded from a taxonomy YAML and extended by plugins (hook ``lm_diff_taxonomy``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from lm_diff.config import packaged_configs_dir
from lm_diff.errors import ConfigError
from lm_diff.plugins.hookspecs import hookimpl
from lm_diff.plugins.manager import hook, merged_by_name

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Category:
    name: str
    """snake_case identifier used in task metadata, tables and reports."""
    description: str
    """One-line description (also shown to LLM annotators)."""
    parent: Optional[str] = None
    """Optional parent group (e.g. ``technical`` for code and math)."""


def category_names(taxonomy: Optional[Iterable[Any]]) -> list[str]:
    """Names of a taxonomy given as ``Category`` objects or plain names (None = no categories)."""
    return [c if isinstance(c, str) else c.name for c in (taxonomy or [])]


def load_taxonomy_file(path: str | Path) -> list[Category]:
    """Read a taxonomy YAML: ``categories: [{name, description, parent?}]``; errors name the file and entry."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: taxonomy file not found; set categories.taxonomy to an existing YAML file")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    items = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: expected a top-level 'categories:' list of {{name, description}} entries")
    out: list[Category] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: categories[{i}] must be a mapping with name and description")
        unknown = set(item) - {"name", "description", "parent"}
        if unknown:
            raise ConfigError(f"{path}: categories[{i}].{sorted(unknown)[0]} is not a key; valid keys: name, description, parent")
        name, desc = item.get("name"), item.get("description")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{path}: categories[{i}].name must be a snake_case string, got {name!r}")
        if not isinstance(desc, str) or not desc.strip():
            raise ConfigError(f"{path}: categories[{i}].description must be a non-empty string")
        if name in seen:
            raise ConfigError(f"{path}: categories[{i}].name {name!r} is listed twice")
        seen.add(name)
        out.append(Category(name, desc.strip(), item.get("parent")))
    return out


def get_taxonomy(config=None) -> list[Category]:
    """All categories from every ``lm_diff_taxonomy`` hook, first definition of a name wins."""
    return merged_by_name(hook().lm_diff_taxonomy(config=config))


@hookimpl
def lm_diff_taxonomy(config):
    """The categories of the configured taxonomy file."""
    if config is None:
        return load_taxonomy_file(packaged_configs_dir() / "taxonomy.yaml")
    return load_taxonomy_file(config.resolve_path(config.categories.taxonomy))
