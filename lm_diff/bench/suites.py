"""lm-eval task suites shipped with lm_diff (``diff_demo``, ``diff_gemma``) and the helpers their YAML points at.

Layout: ``tasks/<suite>/`` holds code-free YAML. The top group (e.g. ``diff_demo``) lists one subgroup per capability
category (``diff_demo_<category>``, own file, the category declared once in its ``metadata.category``), which lists the
leaf tasks. Data is package data under ``lm_diff/data/`` loaded through ``custom_dataset: !function
lm_diff.bench.suites.load_split``; generation tasks are scored by ``process_results: !function lm_diff.bench.suites.process_generation``.

The wheel ships the YAML twice: ``lm_diff/_tasks`` (what :func:`tasks_dir` returns) and ``lm_eval/tasks/diff_*`` (so a
stock ``lm_eval --tasks diff_demo`` finds it with no flags). In a source checkout :func:`tasks_dir` is the repo's
``tasks/``.

``python -m lm_diff.bench.suites write-yamls [--check]`` regenerates ``tasks/diff_demo`` from
``lm_diff/data/diff_demo/index.json``; ``python -m lm_diff.bench.suites path`` prints :func:`tasks_dir`.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from lm_diff.errors import UserError
from lm_diff.io import read_jsonl

log = logging.getLogger(__name__)

_PKG_DIR = Path(__file__).resolve().parent.parent
DATA_ENV = "LM_DIFF_DATA_DIR"
"""Environment variable: a directory that replaces ``lm_diff/data`` as the root of ``data_file`` (development, tests)."""

SUITES = ("diff_demo", "diff_gemma")


# ----------------------------------------------------------------------------------------------------------------------
# Paths and the task manager


def tasks_dir() -> Path:
    """The directory holding lm_diff's task YAML: ``lm_diff/_tasks`` in an installed wheel, else the repo's ``tasks/``."""
    inside = _PKG_DIR / "_tasks"
    if inside.is_dir():
        return inside
    repo = _PKG_DIR.parent / "tasks"
    if repo.is_dir():
        return repo
    raise UserError(f"lm_diff's task YAML is missing (looked in {inside} and {repo}); reinstall lm_diff")


def data_root() -> Path:
    """Root of ``dataset_kwargs.data_file`` paths: ``$LM_DIFF_DATA_DIR`` if set, else the package's ``lm_diff/data``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    import importlib.resources

    return Path(str(importlib.resources.files("lm_diff") / "data"))


class _OwnOverrideFilter(logging.Filter):
    """Drop lm-eval's 'Task X overrides existing task' warnings when both copies are lm_diff's own suites.

    In a wheel install the suites exist in ``lm_eval/tasks/diff_*`` (zero-flag route) and in ``lm_diff/_tasks``
    (include path); the include-path copy wins, which is what we want, so the warning is noise.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "overrides existing task" not in msg:
            return True
        return not any(f"{os.sep}{s}{os.sep}" in msg and f"lm_eval{os.sep}tasks{os.sep}{s}" in msg for s in SUITES)


class _CustomDatasetNoteFilter(logging.Filter):
    """Drop lm-eval's per-task note that custom kwargs can go to ``--metadata``: every task using ``custom_dataset``
    (all of lm_diff's) logs it on every build, and it asks nothing of the user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


def quiet_own_overrides() -> None:
    """Install lm_diff's log filters on lm-eval's loggers (idempotent)."""
    for name, cls in (("lm_eval.tasks._index", _OwnOverrideFilter), ("lm_eval.api.task", _CustomDatasetNoteFilter)):
        lg = logging.getLogger(name)
        if not any(isinstance(f, cls) for f in lg.filters):
            lg.addFilter(cls())


def task_manager(extra: Optional[Iterable[str | os.PathLike]] = None, include_defaults: bool = False, metadata=None):
    """A ``TaskManager`` over lm_diff's tasks plus ``extra`` directories (later ones override earlier ones).

    ``include_defaults=False`` (the default) skips indexing lm-eval's ~14,700 built-in tasks (~10-15 s); pass True
    for suites that reference upstream tasks (``diff_gemma``).
    """
    from lm_eval.tasks import TaskManager

    quiet_own_overrides()
    paths: list[str] = [str(tasks_dir())]
    for p in extra or ():
        p = str(Path(p).expanduser())
        if not Path(p).is_dir():
            raise UserError(f"include path {p} is not a directory; fix benchmarks.include_path")
        if p not in paths:
            paths.append(p)
    return TaskManager(include_path=paths, include_defaults=include_defaults, metadata=metadata)


def needs_defaults(task_names: Iterable[str], extra: Optional[Iterable[str]] = None) -> bool:
    """True if some requested name (or a child it references) is not defined in lm_diff's or ``extra`` task dirs."""
    tm = task_manager(extra, include_defaults=False)
    idx = tm.task_index
    seen: set[str] = set()

    def missing(name: str) -> bool:
        if name in seen:
            return False
        seen.add(name)
        entry = idx.get(name)
        if entry is None:
            return not Path(name).is_file()
        kind = entry.kind.name
        if kind == "TAG":
            return any(missing(t) for t in entry.tags)
        if kind == "GROUP":
            return any(missing(c) for c in _group_children(name, entry.cfg or {}, idx) if isinstance(c, str))
        return False

    return any(missing(n) for n in task_names)


# ----------------------------------------------------------------------------------------------------------------------
# Functions referenced from task YAML (!function lm_diff.bench.suites.*)


def resolve_data_file(data_file: str | os.PathLike) -> Path:
    p = Path(data_file)
    if not p.is_absolute():
        p = data_root() / p
    if not p.is_file():
        raise UserError(
            f"task data file {p} not found; reinstall lm_diff, or set {DATA_ENV} to a directory holding {data_file}"
        )
    return p


def load_split(data_file: str, split: str = "test", **_: Any):
    """``custom_dataset`` loader: a ``DatasetDict`` with one split read from a JSONL file under ``lm_diff/data``.

    lm-eval calls it as ``custom_dataset(**metadata, **dataset_kwargs)``; metadata carries the CLI ``model_args`` and
    ``version``, hence ``**_``. Dict-valued fields (e.g. a generation row's ``check``) are stored as JSON strings so rows
    with differently-shaped dicts do not get merged into one Arrow struct (which would add ``None`` keys);
    :func:`process_generation` decodes them again. No Arrow cache is written.
    """
    import datasets

    rows = read_jsonl(resolve_data_file(data_file))
    if not rows:
        raise UserError(f"task data file {data_file} has no rows")
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    dict_cols = {k for k in keys if any(isinstance(r.get(k), dict) for r in rows)}
    cols = {
        k: [json.dumps(r.get(k), sort_keys=True, ensure_ascii=False) if k in dict_cols else r.get(k) for r in rows]
        for k in keys
    }
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(cols)})


def decode_row(doc: dict) -> dict:
    """The original JSONL row for a logged or in-task ``doc`` (undoes :func:`load_split`'s JSON encoding of dicts)."""
    row = dict(doc)
    for k in ("check",):
        v = row.get(k)
        if isinstance(v, str) and v[:1] in "{[":
            try:
                row[k] = json.loads(v)
            except json.JSONDecodeError:
                pass
    return row


def process_generation(doc: dict, results: list) -> dict[str, float]:
    """``process_results`` for generation tasks: ``{"acc": 1.0 if the row's check passes on the output else 0.0}``.

    ``results[0]`` is the generated string; the check is ``lm_diff.organisms.checks.check(row, text) -> bool``.
    """
    from lm_diff.organisms.checks import check

    text = results[0] if results else ""
    if not isinstance(text, str):  # repeats > 1 or a filter that returns a list
        text = text[0] if text else ""
    return {"acc": float(bool(check(decode_row(doc), text)))}


# ----------------------------------------------------------------------------------------------------------------------
# Categories


def _group_children(group: str, cfg: dict, idx: dict) -> list:
    """Children of a group config as ``str`` names or ``(name, inline_cfg, kind)`` tuples for inline definitions."""
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


def plugin_task_categories() -> dict[str, str]:
    """Merged ``lm_diff_task_categories`` hook results; a plugin called earlier (third-party) wins over built-ins.

    Keys are task/group names or ``fnmatch`` patterns (``belebele_*``).
    """
    from lm_diff.plugins.manager import hook

    merged: dict[str, str] = {}
    for result in hook().lm_diff_task_categories():
        for k, v in (result or {}).items():
            merged.setdefault(str(k), str(v))
    return merged


def lookup_category(name: str, mapping: dict[str, str]) -> Optional[str]:
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


def bench_task_manager(cfg: Any):
    """lm-eval TaskManager for the configured suite: lm_diff's tasks + include_path, built-ins only if needed."""
    extra = [str(cfg.resolve_path(p)) for p in cfg.benchmarks.include_path]
    return task_manager(extra or None, include_defaults=needs_defaults(cfg.benchmarks.tasks, extra))


def task_categories(
    task_names: Iterable[str], task_manager=None, overrides: Optional[dict[str, str]] = None
) -> dict[str, str]:
    """Map every leaf task under ``task_names`` to its capability category, without building any task.

    Precedence, most specific first: ``overrides`` (e.g. ``benchmarks.task_categories``; task or group names) >
    ``metadata.category`` declared on the task or its nearest enclosing group > the ``lm_diff_task_categories``
    plugin mapping for the task or its nearest mapped enclosing group. A leaf requested by its own name (e.g. task
    names from a results file) also finds the category declared by an indexed group listing it. Leaves with no
    category are left out (and logged). Leaf names are the names lm-eval reports in results (``parent::child`` for inline children).
    """
    tm = task_manager if task_manager is not None else globals()["task_manager"]()
    idx = tm.task_index
    plugin_map = plugin_task_categories()
    overrides = dict(overrides or {})
    out: dict[str, str] = {}
    unknown: list[str] = []
    visiting: set[str] = set()
    parents: dict[str, str] = {}

    def declared_by_parent() -> dict[str, str]:
        """{task: category} from every indexed group that declares one (for leaves requested by name)."""
        if not parents:
            for gname, entry in idx.items():
                if entry.kind.name == "GROUP" and (cat := _declared(entry.cfg)):
                    for child in _group_children(gname, entry.cfg or {}, idx):
                        if isinstance(child, str):
                            parents.setdefault(child, cat)
            parents.setdefault("\0", "")  # computed marker
        return parents

    def walk(node, declared: Optional[str], mapped: Optional[str], forced: Optional[str]) -> None:
        if isinstance(node, tuple):
            name, cfg, kind = node
        else:
            name = node
            entry = idx.get(name)
            if entry is None:
                if Path(name).is_file():  # a YAML path given to --tasks
                    from lm_eval.tasks._index import TaskIndex
                    from lm_eval.tasks._yaml_loader import load_yaml

                    cfg = load_yaml(Path(name), resolve_func=False)
                    kind = TaskIndex._kind_of(cfg).name
                    name = cfg.get("group") or cfg.get("task")
                else:
                    cfg, kind = None, "TASK"
            else:
                cfg, kind = entry.cfg, entry.kind.name
        if name in visiting:
            return
        forced = lookup_category(name, overrides) or forced
        declared = _declared(cfg) or declared
        mapped = lookup_category(name, plugin_map) or mapped
        if kind == "TAG":
            visiting.add(name)
            for t in sorted(idx[name].tags):
                walk(t, declared, mapped, forced)
            visiting.discard(name)
        elif kind == "GROUP":
            visiting.add(name)
            for child in _group_children(name, cfg or {}, idx):
                walk(child, declared, mapped, forced)
            visiting.discard(name)
        else:
            cat = forced or declared or declared_by_parent().get(name) or mapped
            if cat:
                out[name] = cat
            else:
                unknown.append(name)

    for n in task_names:
        walk(n, None, None, None)
    if unknown:
        log.warning("no capability category for %d task(s): %s", len(unknown), ", ".join(sorted(unknown)[:10]))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Prompts (for activation capture)


def task_prompts(
    task_names: Iterable[str],
    task_manager=None,
    limit: Optional[int] = None,
    *,
    num_fewshot: Optional[int] = None,
    fewshot_seed: int = 1234,
    apply_chat_template: bool = False,
    tokenizer=None,
    system_instruction: Optional[str] = None,
    categories: Optional[dict[str, str]] = None,
) -> list[dict]:
    """The prompt contexts lm-eval builds for each document: ``[{"text", "task", "category", "doc_id"}]``.

    Mirrors ``simple_evaluate``'s defaults (fewshot seed 1234, ``num_fewshot`` override unless a task fixes 0) and
    ``Task.build_all_requests`` (``doc_iterator`` + ``fewshot_context``), so ``text`` equals the logged
    ``arguments.gen_args_0.arg_0`` of a run with the same settings. Chat templates need ``tokenizer``.
    """
    tm = task_manager if task_manager is not None else globals()["task_manager"]()
    names = list(task_names)
    cats = categories if categories is not None else task_categories(names, tm)
    loaded = tm.load(names)
    chat_template = None
    if apply_chat_template:
        if tokenizer is None:
            raise UserError("task_prompts(apply_chat_template=True) needs the model's tokenizer")

        def chat_template(history, add_generation_prompt=True):
            return tokenizer.apply_chat_template(
                history,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
            )

    out: list[dict] = []
    for task_name, task in loaded["tasks"].items():
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=fewshot_seed)
        n_shot = task.config.num_fewshot or 0
        for doc_id, doc in task.doc_iterator(rank=0, limit=limit, world_size=1):
            ctx = task.fewshot_context(
                doc,
                num_fewshot=n_shot,
                system_instruction=system_instruction,
                apply_chat_template=apply_chat_template,
                fewshot_as_multiturn=False,
                chat_template=chat_template,
                gen_prefix=task.doc_to_prefix(doc),
            )
            out.append({"text": ctx, "task": task_name, "category": cats.get(task_name), "doc_id": int(doc_id)})
    return out


# ----------------------------------------------------------------------------------------------------------------------
# diff_demo YAML generation

_HEADER = "# Generated by `python -m lm_diff.bench.suites write-yamls` from lm_diff/data/diff_demo/index.json. Do not edit.\n"
_OUTPUT_TEMPLATES = {"multiple_choice": "_mc_template_yaml", "generate_until": "_gen_template_yaml"}


_MC_TEMPLATE = """\
output_type: multiple_choice
custom_dataset: !function lm_diff.bench.suites.load_split
test_split: test
doc_to_text: query
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_GEN_TEMPLATE = """\
output_type: generate_until
custom_dataset: !function lm_diff.bench.suites.load_split
test_split: test
doc_to_text: prompt
doc_to_target: check
generation_kwargs:
  until: ["<|end|>", "<|user|>", "\\n\\n"]
  max_gen_toks: 32
  do_sample: false
process_results: !function lm_diff.bench.suites.process_generation
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _dump(obj: dict) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=120)


def demo_index(index_path: Optional[Path] = None) -> list[dict]:
    """Entries of ``lm_diff/data/diff_demo/index.json`` (validated)."""
    path = Path(index_path) if index_path else data_root() / "diff_demo" / "index.json"
    if not path.is_file():
        raise UserError(f"{path} not found; build the demo data first (lm_diff.organisms) or pass --index")
    entries = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: expected a non-empty JSON list of {{file, task, category, output_type}}")
    seen = set()
    for i, e in enumerate(entries):
        missing = {"file", "task", "category", "output_type"} - set(e)
        if missing:
            raise UserError(f"{path}[{i}]: missing {sorted(missing)}")
        if e["output_type"] not in _OUTPUT_TEMPLATES:
            raise UserError(f"{path}[{i}]: output_type {e['output_type']!r} is not one of {sorted(_OUTPUT_TEMPLATES)}")
        if not e["task"].startswith(f"diff_demo_{e['category']}_"):
            raise UserError(f"{path}[{i}]: task {e['task']!r} must be named diff_demo_{e['category']}_<name>")
        if e["task"] in seen:
            raise UserError(f"{path}[{i}]: task {e['task']!r} is listed twice")
        seen.add(e["task"])
    return entries


def render_demo_yamls(entries: list[dict]) -> dict[str, str]:
    """File name -> YAML text for the whole ``tasks/diff_demo`` directory."""
    categories: dict[str, list[str]] = {}
    for e in entries:
        categories.setdefault(e["category"], []).append(e["task"])
    agg = [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}]
    files: dict[str, str] = {}
    files["_mc_template_yaml"] = _HEADER + _MC_TEMPLATE
    files["_gen_template_yaml"] = _HEADER + _GEN_TEMPLATE
    files["diff_demo.yaml"] = _HEADER + _dump(
        {
            "group": "diff_demo",
            "group_alias": "diff_demo (all categories)",
            "task": [f"diff_demo_{c}" for c in categories],
            "aggregate_metric_list": agg,
            "metadata": {"version": 1.0},
        }
    )
    for cat, tasks in categories.items():
        files[f"diff_demo_{cat}.yaml"] = _HEADER + _dump(
            {
                "group": f"diff_demo_{cat}",
                "group_alias": cat,
                "task": tasks,
                "aggregate_metric_list": agg,
                "metadata": {"version": 1.0, "category": cat},
            }
        )
    for e in entries:
        files[f"{e['task']}.yaml"] = _HEADER + _dump(
            {
                "include": _OUTPUT_TEMPLATES[e["output_type"]],
                "task": e["task"],
                "task_alias": e["task"][len(f"diff_demo_{e['category']}_") :],
                "dataset_kwargs": {"data_file": f"diff_demo/{e['file']}"},
            }
        )
    return files


def write_demo_yamls(out_dir: Optional[Path] = None, index_path: Optional[Path] = None, check: bool = False) -> list[str]:
    """Write (or with ``check``, compare) ``tasks/diff_demo``; returns the names of files that changed/differ."""
    from lm_diff.io import write_text

    out = Path(out_dir) if out_dir else _PKG_DIR.parent / "tasks" / "diff_demo"
    files = render_demo_yamls(demo_index(index_path))
    changed = []
    for name, text in files.items():
        p = out / name
        if not p.exists() or p.read_text(encoding="utf-8") != text:
            changed.append(name)
            if not check:
                write_text(p, text)
    stale = sorted(p.name for p in out.glob("*yaml") if p.name not in files) if out.is_dir() else []
    for name in stale:
        changed.append(name)
        if not check:
            (out / name).unlink()
    return changed


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m lm_diff.bench.suites", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-yamls", help="regenerate tasks/diff_demo from lm_diff/data/diff_demo/index.json")
    w.add_argument("--index", type=Path, default=None)
    w.add_argument("--out", type=Path, default=None)
    w.add_argument("--check", action="store_true", help="exit 1 if the committed YAML differs from the index")
    sub.add_parser("path", help="print the task directory (for lm_eval --include_path)")
    args = p.parse_args(argv)
    if args.cmd == "path":
        print(tasks_dir())
        return 0
    try:
        changed = write_demo_yamls(args.out, args.index, check=args.check)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if changed:
            print("out of date: " + ", ".join(changed) + " (run python -m lm_diff.bench.suites write-yamls)", file=sys.stderr)
            return 1
        print("tasks/diff_demo is up to date")
        return 0
    print(f"wrote {len(changed)} file(s)" + (": " + ", ".join(changed) if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
