"""Plugin manager: built-in default plugins plus third-party ones from the ``lm_diff`` entry-point group.

``LM_DIFF_LOAD_PLUGINS`` restricts which third-party plugins load: a comma-separated list of entry-point names
(empty string = none). Default plugins always load.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
from typing import Any, Iterable, Mapping, Optional

import pluggy

from lm_diff.plugins import hookspecs

DEFAULT_PLUGINS = (
    "lm_diff.categorize.taxonomy",
    "lm_diff.models",
    "lm_diff.categorize.prompts",
    "lm_diff.categorize.annotate",
    "lm_diff.report.writers",
    "lm_diff.bench.categories",
)

_pm: pluggy.PluginManager | None = None
_VERSIONS: dict[str, str | None] = {}


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("lm_diff")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    allowed = os.environ.get("LM_DIFF_LOAD_PLUGINS")
    allow = None if allowed is None else {s.strip() for s in allowed.split(",") if s.strip()}
    for ep in md.entry_points(group="lm_diff"):
        if allow is not None and ep.name not in allow:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        pm.register(ep.load(), name=ep.name)
        _VERSIONS[ep.name] = getattr(ep.dist, "version", None) if ep.dist else None
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (created on first use)."""
    global _pm
    if _pm is None:
        _pm = _new_manager()
    return _pm


def reset_plugin_manager() -> None:
    """Forget the plugin manager (tests, or after changing LM_DIFF_LOAD_PLUGINS)."""
    global _pm
    _pm = None


def hook() -> Any:
    """The hook relay: ``hook().lm_diff_<name>(...)`` calls every plugin's implementation (third-party first)."""
    return get_plugin_manager().hook


def merged_mapping(results: Iterable[Optional[Mapping[Any, Any]]]) -> dict[str, Any]:
    """One mapping from the results of a hook whose implementations return mappings (``hook().lm_diff_x()``): on a
    key that several plugins define, the one called first wins, i.e. a third-party plugin over the built-ins."""
    merged: dict[str, Any] = {}
    for result in results:
        for k, v in (result or {}).items():
            merged.setdefault(str(k), v)
    return merged


def merged_by_name(results: Iterable[Optional[Iterable[Any]]]) -> list[Any]:
    """One list from the results of a hook whose implementations return lists of objects with a ``name`` (e.g.
    ``lm_diff_taxonomy``): the first definition of a name wins, in the order the plugins are called."""
    merged: dict[str, Any] = {}
    for result in results:
        for item in result or []:
            merged.setdefault(item.name, item)
    return list(merged.values())


def list_plugins() -> list[dict[str, Any]]:
    """Each registered plugin with its name, whether it is built in, its version and the hooks it implements."""
    pm = get_plugin_manager()
    rows = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append({"name": name, "builtin": name in DEFAULT_PLUGINS, "version": _VERSIONS.get(name), "hooks": hooks})
    return rows
