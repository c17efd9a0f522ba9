"""Task -> capability category: the built-in ``lm_diff_task_categories`` mapping and the resolver over a task index.

Precedence, most specific first: ``benchmarks.task_categories`` (the config's overrides; task or group names) >
``metadata.category`` declared on the task or its nearest enclosing group > the ``lm_diff_task_categories`` plugin
mapping (keys are task/group names or ``fnmatch`` patterns) for the task or its nearest mapped enclosing group.
:func:`lm_diff.bench.suites.task_categories` is the one entry point; :func:`categories_from_index` does the work on
an lm-eval task index.

Errors are raised, never swallowed: a requested task that is neither in the index nor in the results file (a typo, a
missing include path, or a YAML lm-eval could not parse and skipped), a group listing a task the index lacks, and a task
mapped to a category outside the taxonomy are each one :class:`~lm_diff.errors.UserError` naming the task. A known task
that no source categorises is only logged (its score gap is reported as ``uncategorized``).
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from lm_diff.errors import UserError
from lm_diff.plugins.hookspecs import hookimpl
from lm_diff.plugins.manager import hook, merged_by_name, merged_mapping

log = logging.getLogger(__name__)

UPSTREAM_TASK_CATEGORIES: dict[str, str] = {
    # instruction following
    "ifeval": "instruction_following",
    "ifeval_*": "instruction_following",
    "leaderboard_ifeval": "instruction_following",
    # hallucination / truthfulness
    "truthfulqa": "hallucination",
    "truthfulqa_*": "hallucination",
    "truthfulqa-multi": "hallucination",
    "nq_open": "factual_verification",
    "triviaqa": "factual_verification",
    # multilingual
    "belebele": "multilingual",
    "belebele_*": "multilingual",
    "xnli": "multilingual",
    "xnli_*": "multilingual",
    "global_mmlu*": "multilingual",
    "xcopa*": "multilingual",
    "xstorycloze*": "multilingual",
    "xwinograd*": "multilingual",
    "paws-x*": "multilingual",
    "paws_*": "multilingual",
    "lambada_openai_mt*": "multilingual",
    "openai_mmmlu*": "multilingual",
    "mmlu_prox*": "multilingual",
    # code
    "mbpp": "code",
    "mbpp_*": "code",
    "humaneval": "code",
    "humaneval_*": "code",
    "humaneval_infilling": "code",
    "cruxeval*": "code",
    # math
    "gsm8k": "math",
    "gsm8k_*": "math",
    "gsm8k_platinum*": "math",
    "gsm_plus*": "math",
    "mgsm_*": "math",
    "minerva_math*": "math",
    "hendrycks_math*": "math",
    "mathqa": "math",
    "asdiv": "math",
    "arithmetic*": "math",
    "aime*": "math",
    # safety
    "toxigen": "safety",
    "realtoxicityprompts": "safety",
    "wmdp": "safety",
    "wmdp_*": "safety",
    "bbq": "safety",
    "crows_pairs*": "safety",
    "simple_cooccurrence_bias*": "safety",
    "discrim_eval*": "safety",
    # structured output
    "jsonschema_bench*": "structured_output",
}


@hookimpl
def lm_diff_task_categories():
    """Categories of common upstream lm-eval tasks (exact names and ``fnmatch`` patterns)."""
    return dict(UPSTREAM_TASK_CATEGORIES)


# ----------------------------------------------------------------------------------------------------------------------
# Lookups


def plugin_task_categories() -> dict[str, str]:
    """Merged ``lm_diff_task_categories`` hook results; a plugin called earlier (third-party) wins over built-ins.

    Keys are task/group names or ``fnmatch`` patterns (``belebele_*``).
    """
    return {k: str(v) for k, v in merged_mapping(hook().lm_diff_task_categories()).items()}


def lookup_category(name: str, mapping: Mapping[str, str]) -> Optional[str]:
    """Category of task/group ``name`` (or its ``parent::child`` leaf) in ``mapping``; keys may be fnmatch patterns."""
    if not mapping:
        return None
    base = name.split("::")[-1]
    for n in (name, base):
        if n in mapping:
            return mapping[n]
    for pat, cat in mapping.items():
        if any(ch in pat for ch in "*?[") and (fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(base, pat)):
            return cat
    return None


def group_children(group: str, cfg: dict, idx: Mapping[str, Any]) -> list:
    """Children of a group config as ``str`` names or ``(name, inline_cfg, kind)`` tuples for inline definitions
    (lm-eval names an inline child ``group::child``)."""
    out: list = []
    items = cfg.get("task") or []
    if isinstance(items, str):
        items = [items]
    for item in items:
        if isinstance(item, str):
            out.append(item if item in idx else f"{group}::{item}")
        elif isinstance(item, dict) and "group" in item:
            name = item["group"]
            out.append(name if name in idx else (f"{group}::{name}", item, "GROUP"))
        elif isinstance(item, dict) and "task" in item:
            name = item["task"]
            out.append(name if name in idx else (f"{group}::{name}", item, "TASK"))
    return out


def _declared(cfg: Optional[dict]) -> Optional[str]:
    meta = (cfg or {}).get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("category"), str):
        return meta["category"]
    return None


def taxonomy_names(taxonomy: Optional[Iterable[Any]] = None) -> list[str]:
    """Category names of ``taxonomy`` (names or ``Category`` objects); None = every ``lm_diff_taxonomy`` hook's
    categories for no config (the packaged taxonomy plus plugins)."""
    if taxonomy is None:
        taxonomy = merged_by_name(hook().lm_diff_taxonomy(config=None))
    return list(dict.fromkeys(c if isinstance(c, str) else c.name for c in taxonomy))


# ----------------------------------------------------------------------------------------------------------------------
# The resolver


def _load_task_yaml(path: Path) -> tuple[dict, str]:
    """(config, kind) of a task/group YAML given to ``--tasks`` by path."""
    from lm_eval.tasks._index import TaskIndex  # noqa: PLC0415 - heavy (lm-eval's task stack); only for a YAML path
    from lm_eval.tasks._yaml_loader import load_yaml  # noqa: PLC0415 - as above

    try:
        cfg = load_yaml(path, resolve_func=False)
        return cfg, TaskIndex._kind_of(cfg).name
    except Exception as exc:  # noqa: BLE001 - lm-eval's loader raises anything from yaml, OSError to ValueError
        raise UserError(f"task YAML {path} cannot be read ({exc}); fix the file or the name in benchmarks.tasks") from None


def categories_from_index(
    task_names: Iterable[str],
    idx: Mapping[str, Any],
    overrides: Optional[Mapping[str, str]] = None,
    *,
    results: Optional[Mapping[str, Any]] = None,
    taxonomy: Optional[Iterable[Any]] = None,
    searched: str = "",
) -> dict[str, str]:
    """Map every leaf task under ``task_names`` to its category using the lm-eval task index ``idx`` (no task is built).

    ``results``: an lm-eval results dict; a requested task missing from the index is known through its
    ``configs`` entry (whose ``metadata.category`` counts as declared), and ``group_subtasks`` names its enclosing
    groups (for overrides and the plugin mapping). ``taxonomy``: the valid categories (names or ``Category``
    objects; default :func:`taxonomy_names`). ``searched`` describes the index in error messages. Leaf names are the
    names lm-eval reports in results (``parent::child`` for inline children). See the module docstring for precedence
    and errors.
    """
    plugin_map = plugin_task_categories()
    overrides = dict(overrides or {})
    configs = dict((results or {}).get("configs") or {})
    enclosing: dict[str, list[str]] = {}
    for g, subs in ((results or {}).get("group_subtasks") or {}).items():
        for s in subs or []:
            enclosing.setdefault(s, []).append(g)
    out: dict[str, tuple[str, str]] = {}
    uncategorised: list[str] = []
    missing: list[str] = []
    visiting: set[str] = set()
    parents: dict[str, tuple[str, str]] = {}

    def declared_by_parent() -> dict[str, tuple[str, str]]:
        """{task: (category, source)} from every indexed group that declares one (for leaves requested by name)."""
        if not parents:
            for gname, entry in idx.items():
                if entry.kind.name == "GROUP" and (cat := _declared(entry.cfg)):
                    for child in group_children(gname, entry.cfg or {}, idx):
                        if isinstance(child, str):
                            parents.setdefault(child, (cat, f"metadata.category of group {gname}"))
            parents.setdefault("\0", ("", ""))  # computed marker
        return parents

    def first(names: list[str], mapping: Mapping[str, str], source: str) -> Optional[tuple[str, str]]:
        for n in names:
            if cat := lookup_category(n, mapping):
                return cat, source
        return None

    def walk(node, declared, mapped, forced, sink: dict, top: bool = False) -> None:
        if isinstance(node, tuple):
            name, cfg, kind = node
        elif (entry := idx.get(node)) is not None:
            name, cfg, kind = node, entry.cfg, entry.kind.name
        elif not top:  # a string child of a group that the index lacks: lm-eval could not build it
            raise UserError(f"a task group lists {node.split('::')[-1]!r}, which is not in the lm-eval task index"
                            f"{searched}; fix the group's task list or add the task's directory to benchmarks.include_path")
        elif Path(node).is_file():  # a YAML path given to --tasks
            cfg, kind = _load_task_yaml(Path(node))
            name = cfg.get("group") or cfg.get("task")
        elif node in configs:  # a task known from the results file only
            name, cfg, kind = node, configs[node], "TASK"
        elif "::" in node and node.rsplit("::", 1)[0] in idx:  # an inline child of an indexed group
            scratch: dict = {}
            walk(node.rsplit("::", 1)[0], declared, mapped, forced, scratch)
            if node in scratch:
                sink[node] = scratch[node]
            else:
                uncategorised.append(node)
            return
        else:
            missing.append(node)
            return
        if name in visiting:
            return
        names = [name, *enclosing.get(name, [])]
        forced = first(names, overrides, "benchmarks.task_categories") or forced
        if cat := _declared(cfg):
            declared = (cat, f"metadata.category of {name}")
        mapped = first(names, plugin_map, "an lm_diff_task_categories plugin") or mapped
        if kind in ("TAG", "GROUP"):
            visiting.add(name)
            children = sorted(idx[name].tags) if kind == "TAG" else group_children(name, cfg or {}, idx)
            for child in children:
                walk(child, declared, mapped, forced, sink)
            visiting.discard(name)
        elif got := forced or declared or declared_by_parent().get(name) or mapped:
            sink[name] = got
        else:
            uncategorised.append(name)

    for n in task_names:
        walk(n, None, None, None, out, top=True)
    if missing:
        raise UserError(
            f"unknown task{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}: not in the lm-eval task "
            f"index{searched}{' nor in the results file' if results else ''}; check the name in benchmarks.tasks, add its "
            "directory to benchmarks.include_path, or fix its YAML (lm-eval skips a YAML it cannot parse)"
        )
    valid = set(taxonomy_names(taxonomy))
    for task, (cat, source) in out.items():
        if cat not in valid:
            raise UserError(
                f"task {task!r} is mapped to category {cat!r} (by {source}), which is not in the taxonomy "
                f"(valid: {', '.join(sorted(valid))}); fix the mapping or add {cat!r} to categories.taxonomy"
            )
    if uncategorised:
        log.warning("no capability category for %d task(s): %s", len(uncategorised), ", ".join(sorted(uncategorised)[:10]))
    return {task: cat for task, (cat, _) in out.items()}
